//! Shared helpers: start a local cluster of real `dtx node` processes, run workloads
//! through the client library, audit what the cluster holds.
#![allow(dead_code)]

pub mod hostile;

use dtx_cli::local::{temporary_dir, LocalCluster};
use dtx_node::client::{Client, CommitError};
use dtx_protocol::{Key, Operation, Rng, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The CLI under test.
pub fn executable() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dtx-under-test"))
}

/// A started cluster of `nodes` processes named n1..nN, with `--fault-injection` (so that
/// `cluster.partition(..)` and `cluster.set_faults(..)` work).
pub fn start_cluster(test: &str, nodes: usize, f: u32) -> LocalCluster {
    let names = (1..=nodes).map(|index| format!("n{index}")).collect();
    let dir = temporary_dir(&format!("dtx-test-{test}"));
    let mut cluster = LocalCluster::create(executable(), dir, names, f).expect("init");
    cluster.set_fault_injection(true);
    // Keep the directory (logs) if the test fails; remove it on success via `finish`.
    cluster.start_all().expect("start");
    cluster
}

/// A cluster of `nodes` processes named n1..nN, written but not started (set arguments
/// with `set_args`, then `start_all`).
pub fn create_cluster(test: &str, nodes: usize, f: u32) -> LocalCluster {
    let names = (1..=nodes).map(|index| format!("n{index}")).collect();
    let dir = temporary_dir(&format!("dtx-test-{test}"));
    LocalCluster::create(executable(), dir, names, f).expect("init")
}

/// Node `name`'s view of the cluster, from its control endpoint.
pub async fn status(cluster: &LocalCluster, name: &str) -> dtx_node::control::StatusReport {
    let address = cluster.control_address(name).expect("control address");
    dtx_node::control::fetch_status(address)
        .await
        .unwrap_or_else(|error| panic!("status of {name}: {error}"))
}

/// Waits until each of `observers` has heard from `member` and does not suspect it.
pub async fn wait_trusted(
    cluster: &LocalCluster,
    observers: &[&str],
    member: &str,
    patience: Duration,
) {
    wait_member(cluster, observers, member, patience, "trusted", |seen| {
        seen.phi.is_some() && !seen.suspected
    })
    .await;
}

/// Waits until each of `observers` sees `member` as `holds` says (`what` names it in the
/// failure message, with the observer's whole view).
pub async fn wait_member(
    cluster: &LocalCluster,
    observers: &[&str],
    member: &str,
    patience: Duration,
    what: &str,
    holds: impl Fn(&dtx_node::control::MemberStatus) -> bool,
) {
    let deadline = Instant::now() + patience;
    for observer in observers {
        loop {
            let report = status(cluster, observer).await;
            if report.member(member).is_some_and(&holds) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{observer} never saw {member} {what}: {}",
                report.render()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops the cluster and removes its directory (call at the end of a passing test).
pub fn finish(mut cluster: LocalCluster) {
    cluster.stop_all();
    cluster.remove_on_drop(true);
}

/// How one insert transaction ended.
#[derive(Clone, Debug)]
pub struct Insert {
    /// The keys it wrote (on different nodes).
    pub keys: Vec<String>,
    /// `Some(true)` committed, `Some(false)` aborted, `None` unknown.
    pub committed: Option<bool>,
}

/// Closed-loop inserts of fresh keys on two random distinct nodes among `names`, by
/// `workers` concurrent workers, for `duration`.
pub async fn inserts(
    client: &Client,
    names: &[String],
    workers: usize,
    duration: Duration,
    tag: &str,
) -> Vec<Insert> {
    let deadline = Instant::now() + duration;
    let mut handles = Vec::new();
    for worker in 0..workers {
        let client = client.clone();
        let names = names.to_vec();
        let tag = tag.to_string();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(worker as u64 + 1);
            let mut done = Vec::new();
            let mut sequence = 0;
            while Instant::now() < deadline {
                sequence += 1;
                let first = rng.below(names.len() as u64) as usize;
                let mut second = rng.below(names.len() as u64) as usize;
                if second == first {
                    second = (first + 1) % names.len();
                }
                let keys: Vec<String> = [first, second]
                    .iter()
                    .map(|index| {
                        format!(
                            "{}/{tag}-{}-{worker}-{sequence}",
                            names[*index],
                            client.id().0
                        )
                    })
                    .collect();
                let operations = keys
                    .iter()
                    .map(|key| Operation::Write {
                        key: Key::new(key.clone()),
                        value: Value::new(b"x".to_vec()),
                    })
                    .collect();
                let committed = match client.run(operations).await {
                    Ok(_) => Some(true),
                    Err(CommitError::Aborted { .. }) => Some(false),
                    Err(_) => None,
                };
                done.push(Insert { keys, committed });
            }
            done
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("worker"));
    }
    all
}

/// Reads `keys` until the reads commit (retrying aborts from locks still held by
/// transactions being resolved); returns the keys present.
pub async fn present(client: &Client, keys: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for chunk in keys.chunks(100) {
        let operations: Vec<Operation> = chunk
            .iter()
            .map(|key| Operation::Read {
                key: Key::new(key.clone()),
                expected: None,
            })
            .collect();
        let committed = retry_until_committed(client, operations, Duration::from_secs(120)).await;
        for read in committed.reads {
            if read.value.is_some() {
                found.insert(read.key.0);
            }
        }
    }
    found
}

/// Runs a transaction until it commits or `patience` runs out (then panics).
pub async fn retry_until_committed(
    client: &Client,
    operations: Vec<Operation>,
    patience: Duration,
) -> dtx_node::client::Committed {
    let deadline = Instant::now() + patience;
    let mut last = None;
    while Instant::now() < deadline {
        match client.run(operations.clone()).await {
            Ok(committed) => return committed,
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("transaction never committed: {last:?}");
}

/// Checks atomicity and durability of inserts: each is all-or-nothing, every committed
/// one is present, every aborted one absent. Returns (committed, aborted, unknown).
pub async fn audit_inserts(client: &Client, done: &[Insert]) -> (usize, usize, usize) {
    let keys: Vec<String> = done.iter().flat_map(|insert| insert.keys.clone()).collect();
    let found = present(client, &keys).await;
    let mut counts = (0, 0, 0);
    for insert in done {
        let here: Vec<bool> = insert.keys.iter().map(|key| found.contains(key)).collect();
        assert!(
            here.iter().all(|present| *present) || here.iter().all(|present| !*present),
            "partial transaction: {insert:?} present {here:?}"
        );
        match insert.committed {
            Some(true) => {
                counts.0 += 1;
                assert!(here[0], "acknowledged commit lost: {insert:?}");
            }
            Some(false) => {
                counts.1 += 1;
                assert!(!here[0], "aborted transaction applied: {insert:?}");
            }
            None => counts.2 += 1,
        }
    }
    counts
}

/// Node names of a cluster.
pub fn names(cluster: &LocalCluster) -> Vec<String> {
    cluster
        .config
        .nodes
        .iter()
        .map(|node| node.name.clone())
        .collect()
}

/// The text of node `name`'s log (its stderr).
pub fn node_log(cluster: &LocalCluster, name: &str) -> String {
    std::fs::read_to_string(cluster.dir.join(format!("{name}.log"))).unwrap_or_default()
}
