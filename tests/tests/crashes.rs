//! kill -9 of a participant between its vote and the decision, of a client after it sent
//! Prepare, and of a node in the middle of a group commit: after restart every in-doubt
//! transaction is resolved and nothing acknowledged is lost.

mod common;

use common::*;
use dtx_node::client::{Client, CommitError};
use dtx_node::daemon::CRASH_AT_GROUP_COMMIT_ENV;
use dtx_protocol::{Key, Operation, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

fn write(key: &str, value: &str) -> Operation {
    Operation::Write {
        key: Key::new(key),
        value: Value::new(value.as_bytes().to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_between_vote_and_decision_resolves_after_restart() {
    let mut cluster = start_cluster("in-doubt", 3, 1);
    // n2 hears only from the client: it votes, but no Phase2a/Phase2b reaches it or
    // leaves it, so it stays prepared and undecided.
    cluster
        .partition("n2", &["n1", "n3"])
        .await
        .expect("partition");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = Client::connect(&cluster.config).await.expect("connect");
    let txn = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .run(vec![write("n1/a", "1"), write("n2/b", "2")])
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill("n2").expect("kill n2");
    // n1 and n3 decide without n2: n2's vote never reached a quorum, so a recovery
    // leader chooses Aborted for its instance.
    let result = txn.await.expect("join");
    assert!(
        matches!(result, Err(CommitError::Aborted { .. })),
        "{result:?}"
    );
    // The plan lived in the killed process: n2 restarts healed.
    let ready = cluster.start("n2").expect("restart n2");
    assert!(
        ready.contains("1 in doubt"),
        "n2 recovered its prepared vote: {ready}"
    );
    // Once resolved, n2 releases the lock on n2/b: a new write commits, and the aborted
    // transaction's write is not there.
    let committed = retry_until_committed(
        &client,
        vec![
            Operation::Read {
                key: Key::new("n2/b"),
                expected: None,
            },
            write("n2/b", "3"),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(committed.reads[0].value, None, "aborted write applied");
    finish(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_after_sending_prepare_leaves_nothing_locked() {
    let cluster = start_cluster("client-kill", 3, 1);
    // n2 ignores clients: the client's Prepare reaches n1 only, and the client then dies.
    cluster
        .partition("n2", &["clients"])
        .await
        .expect("partition");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = Command::new(executable())
        .arg("txn")
        .arg("--config")
        .arg(&cluster.config_path)
        .arg("write n1/x 1")
        .arg("write n2/y 2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn client");
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.kill().expect("kill -9 the client");
    let _ = child.wait();
    cluster.partition("n2", &[]).await.expect("heal");
    // n1 prepared and holds the lock on n1/x; with its client gone it times out, leads
    // recovery, finds no vote for n2's instance and aborts: the lock goes.
    let client = Client::connect(&cluster.config).await.expect("connect");
    let committed = retry_until_committed(
        &client,
        vec![
            Operation::Read {
                key: Key::new("n1/x"),
                expected: None,
            },
            Operation::Read {
                key: Key::new("n2/y"),
                expected: None,
            },
            write("n1/x", "later"),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(committed.reads[0].value, None);
    assert_eq!(committed.reads[1].value, None);
    finish(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_in_middle_of_group_commit_loses_nothing_acknowledged() {
    let mut cluster = start_cluster("group-commit", 3, 1);
    let names = names(&cluster);
    // Restart n1 with the hook: it aborts half-way through writing its 40th group commit.
    // Tiny checkpoints, so that recovery also goes through checkpoint + later segments.
    cluster.kill("n1").expect("kill");
    cluster.set_args("n1", &["--checkpoint-bytes", "8192"]);
    cluster.set_env("n1", CRASH_AT_GROUP_COMMIT_ENV, "40");
    cluster.start("n1").expect("start with crash hook");
    let client = Client::connect(&cluster.config).await.expect("connect");
    let before = inserts(&client, &names, 8, Duration::from_secs(3), "pre").await;
    assert!(
        cluster.wait_exit("n1", Duration::from_secs(60)),
        "n1 should have crashed in its 40th group commit"
    );
    cluster.clear_env("n1");
    let ready = cluster.start("n1").expect("restart n1");
    assert!(ready.contains("ready"), "{ready}");
    assert!(
        node_log(&cluster, "n1").contains("cut a torn log tail"),
        "recovery found and cut the torn record"
    );
    let after = inserts(&client, &names, 4, Duration::from_secs(2), "post").await;
    // One more kill -9 and restart: recovery from the checkpoints written meanwhile.
    cluster.kill("n1").expect("kill");
    let ready = cluster.start("n1").expect("restart n1 again");
    assert!(ready.contains("ready"), "{ready}");
    let checkpoints = std::fs::read_dir(cluster.data_dir("n1").join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .count();
    assert_eq!(checkpoints, 1, "checkpoints replace each other");
    let all: Vec<Insert> = before.into_iter().chain(after).collect();
    let (committed, _, _) = audit_inserts(&client, &all).await;
    assert!(committed > 0);
    finish(cluster);
}
