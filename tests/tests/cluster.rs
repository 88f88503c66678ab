//! Real 3- and 5-node clusters on 127.0.0.1 under concurrent clients.

mod common;

use common::*;
use dtx_node::bench::{self, BenchOptions, Progress, Workload};
use dtx_node::client::Client;
use dtx_node::links::TransportKind;
use dtx_protocol::{ClientConfig, NodeId};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_serves_concurrent_bank_transfers_and_conserves_money() {
    let cluster = start_cluster("bank3", 3, 1);
    let client = Client::connect(&cluster.config).await.expect("connect");
    let mut options = BenchOptions::new(Workload::Bank);
    options.clients = 8;
    options.keys = 50;
    options.duration = Duration::from_secs(4);
    let report = bench::run(
        &client,
        &cluster.config,
        &options,
        Arc::new(Progress::default()),
    )
    .await
    .expect("bench");
    assert!(report.committed > 0, "{report:?}");
    assert_eq!(report.total_before, Some(50 * bench::BANK_INITIAL_BALANCE));
    assert_eq!(
        report.total_before, report.total_after,
        "money not conserved"
    );
    finish(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_cluster_with_f2_commits_concurrent_inserts_atomically() {
    let cluster = start_cluster("inserts5", 5, 2);
    let names = names(&cluster);
    // Two client peers: separate identities, concurrent; the second sends its frames as
    // request-response requests instead of on streams (nodes accept both).
    let first = Client::connect(&cluster.config).await.expect("connect");
    let protocol = ClientConfig::new(NodeId(0), cluster.config.cluster.clone(), 0);
    let second = Client::connect_with(&cluster.config, protocol, TransportKind::RequestResponse)
        .await
        .expect("connect");
    assert_ne!(
        first.id(),
        second.id(),
        "every client incarnation has its own id"
    );
    let (a, b) = tokio::join!(
        inserts(&first, &names, 4, Duration::from_secs(3), "a"),
        inserts(&second, &names, 4, Duration::from_secs(3), "b"),
    );
    let done: Vec<Insert> = a.into_iter().chain(b).collect();
    let (committed, _aborted, unknown) = audit_inserts(&first, &done).await;
    assert!(committed > 0);
    assert_eq!(unknown, 0, "no faults: every outcome is learned");
    finish(cluster);
}
