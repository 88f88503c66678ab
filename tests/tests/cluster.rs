//! Real 3- and 5-node clusters on 127.0.0.1 under concurrent clients.

mod common;

use common::*;
use dtx_cli::bench::{self, BenchOptions, Progress, Workload};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_transfers_under_contention_conserve_money() {
    let cluster = start_cluster("interactive", 3, 1);
    let client = Client::connect(&cluster.config).await.expect("connect");
    // Five hot accounts spread over the nodes: waits, and deadlocks broken by the nodes.
    let accounts: Vec<String> = (0..5)
        .map(|index| format!("n{}/acct-{index}", index % 3 + 1))
        .collect();
    let values = accounts.iter().map(|key| (key.clone(), 100)).collect();
    bench::load(&client, values).await.expect("load");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let client = client.clone();
        let accounts = accounts.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = dtx_protocol::Rng::new(worker + 1);
            let mut committed = 0;
            while std::time::Instant::now() < deadline {
                let from = &accounts[rng.below(5) as usize];
                let to = &accounts[rng.below(5) as usize];
                if from == to {
                    continue;
                }
                let result: Result<(), dtx_node::client::CommitError> = async {
                    let mut txn = client.begin_interactive().await?;
                    let from_balance = balance(&txn.read(from.as_str()).await?);
                    let to_balance = balance(&txn.read(to.as_str()).await?);
                    txn.write(from.as_str(), (from_balance - 1).to_string())
                        .await?;
                    txn.write(to.as_str(), (to_balance + 1).to_string()).await?;
                    txn.commit().await?;
                    Ok(())
                }
                .await;
                if result.is_ok() {
                    committed += 1;
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for worker in workers {
        committed += worker.await.expect("worker");
    }
    assert!(committed > 0);
    let total = bench::total(&client, &accounts).await.expect("total");
    assert_eq!(total, 500, "money not conserved");
    finish(cluster);
}

fn balance(read: &dtx_protocol::ReadResult) -> i64 {
    read.value
        .as_ref()
        .and_then(|value| value.as_text())
        .and_then(|text| text.parse().ok())
        .expect("a number")
}

/// Without `--config`, a command finds the cluster from `$DTX_CONFIG`, else from
/// `cluster.toml` in the current directory, and names all three when neither is there.
/// (`dtx user list` reads the files only: no node needs to run.)
#[test]
fn commands_find_the_config_from_the_environment_or_the_current_directory() {
    let cluster = create_cluster("config-lookup", 3, 1);
    let elsewhere = cluster.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("create a directory without a config");
    let user_list = |dir: &std::path::Path, config_env: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(executable());
        command
            .args(["user", "list"])
            .current_dir(dir)
            .env_remove("DTX_CONFIG");
        if let Some(path) = config_env {
            command.env("DTX_CONFIG", path);
        }
        command.output().expect("run dtx user list")
    };
    let in_cluster_dir = user_list(&cluster.dir, None);
    assert!(in_cluster_dir.status.success(), "{in_cluster_dir:?}");
    assert!(String::from_utf8_lossy(&in_cluster_dir.stdout).contains("admin"));
    let from_env = user_list(&elsewhere, Some(&cluster.config_path));
    assert!(from_env.status.success(), "{from_env:?}");
    assert!(String::from_utf8_lossy(&from_env.stdout).contains("admin"));
    let nowhere = user_list(&elsewhere, None);
    assert!(!nowhere.status.success());
    let stderr = String::from_utf8_lossy(&nowhere.stderr);
    for named in ["--config", "DTX_CONFIG", "cluster.toml"] {
        assert!(stderr.contains(named), "{stderr:?} does not name {named}");
    }
    finish(cluster);
}
