//! A minority partition can neither block nor split a decision.

mod common;

use common::*;
use dtx_node::client::Client;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_cannot_block_or_split_decisions() {
    let cluster = start_cluster("partition", 5, 1);
    let names = names(&cluster);
    let client = Client::connect(&cluster.config).await.expect("connect");
    // Isolate n1 from the other data nodes (both directions); clients still reach it.
    cluster
        .partition("n1", &["n2", "n3", "n4", "n5"])
        .await
        .expect("partition");
    for other in &names[1..] {
        cluster.partition(other, &["n1"]).await.expect("partition");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let majority: Vec<String> = names[1..].to_vec();
    // Transactions among the majority keep committing: the minority cannot block them.
    let during = inserts(&client, &majority, 4, Duration::from_secs(3), "majority").await;
    let committed_during = during
        .iter()
        .filter(|insert| insert.committed == Some(true))
        .count();
    assert!(committed_during > 0, "the majority made no progress");
    // Transactions touching n1 cannot commit (n1's vote reaches no quorum) but are
    // decided by the majority side: aborted, never left hanging for the client.
    let across = inserts(&client, &names, 2, Duration::from_secs(3), "across").await;
    let touching_n1: Vec<&Insert> = across
        .iter()
        .filter(|insert| insert.keys.iter().any(|key| key.starts_with("n1/")))
        .collect();
    assert!(!touching_n1.is_empty());
    assert!(
        touching_n1
            .iter()
            .all(|insert| insert.committed != Some(true)),
        "a transaction with an isolated participant committed"
    );
    // Heal; n1 learns the outcomes it missed. Nothing is split: every transaction is
    // all-or-nothing on every node, acknowledged commits present, aborts absent.
    for name in &names {
        cluster.partition(name, &[]).await.expect("heal");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: Vec<Insert> = during.into_iter().chain(across).collect();
    audit_inserts(&client, &all).await;
    finish(cluster);
}
