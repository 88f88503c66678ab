//! An embedded participant in real processes on 127.0.0.1: the inventory service of
//! `node/examples/embedded_participant.rs` (a Rust service hosting its own dtx data node,
//! with the try-confirm-cancel adapter and a durable stock file) joins a cluster of three
//! `dtx node` processes. Its stock file is the evidence: what it sold agrees with the
//! transactions that committed, across a kill -9 of the service (which is its own data
//! node) in the middle of a stream of orders, and nothing is left held.

mod common;

use common::{create_cluster, executable, finish, status};
use dtx_node::client::{call, Client, CommitError};
use dtx_protocol::{BeginError, Key, Operation, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Concurrent order workers, orders each, and the widgets in stock (more than all orders).
const WORKERS: u32 = 4;
const ORDERS_PER_WORKER: u32 = 150;
const STOCK: u64 = 1000;

/// How long the cluster may take to settle what a crash left open.
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

fn embedded_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_embedded-participant"))
}

/// The service's durable stock (`stock.json` in its service directory).
fn stock(cluster: &dtx_cli::local::LocalCluster) -> serde_json::Value {
    let mut path = cluster.data_dir("inventory").into_os_string();
    path.push(".service");
    let path = PathBuf::from(path).join("stock.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_slice(&bytes).expect("stock.json is JSON")
}

/// One order: one widget reserved and the order's record written, atomically.
fn order(number: u32) -> Vec<Operation> {
    vec![
        call(
            "inventory/widget",
            "reserve",
            &serde_json::json!({ "count": 1 }),
        ),
        Operation::Write {
            key: Key::new(format!("orders/{number}")),
            value: Value::new(b"placed".to_vec()),
        },
    ]
}

/// Waits until the service's node owes its participant nothing and holds nothing open.
async fn wait_settled(cluster: &dtx_cli::local::LocalCluster) {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    loop {
        let resource = status(cluster, "inventory").await.resource;
        if resource
            .as_ref()
            .is_some_and(|r| r.unacknowledged == 0 && r.preparing == 0 && !r.settling)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled in {SETTLE_PATIENCE:?}: {resource:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn order_present(client: &Client, number: u32) -> bool {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    loop {
        let read = Operation::Read {
            key: Key::new(format!("orders/{number}")),
            expected: None,
        };
        match client.run(vec![read]).await {
            Ok(committed) => return committed.reads[0].value.is_some(),
            Err(error) if Instant::now() < deadline => {
                eprintln!("read orders/{number} retried: {error:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("read orders/{number}: {error:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_service_sells_exactly_what_committed_across_a_kill_9_of_itself() {
    let mut cluster = create_cluster("embedded", 3, 1);
    let added = Command::new(executable())
        .args(["add-node", "--name", "inventory", "--config"])
        .arg(&cluster.config_path)
        .output()
        .expect("dtx add-node");
    assert!(added.status.success(), "add-node: {added:?}");
    cluster.reload().expect("reload the config");
    cluster.set_program("inventory", embedded_program());
    cluster.set_args("inventory", &["--stock", &format!("widget={STOCK}")]);
    cluster
        .start_all()
        .expect("start the cluster and the embedded service");
    let client = Client::connect(&cluster.config).await.expect("connect");

    // Orders stream in from four workers; the service (its own data node) is killed
    // with -9 while they run, so some orders are between prepare and commit there, and
    // restarted; the workers go on.
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for index in 0..ORDERS_PER_WORKER {
                let number = worker * ORDERS_PER_WORKER + index + 1;
                // While the client suspects the killed service it refuses to begin (no
                // transaction exists yet): a shop would wait, and so do the workers, so
                // that the run does not end inside the outage.
                let deadline = Instant::now() + Duration::from_secs(30);
                let outcome = loop {
                    match client.run(order(number)).await {
                        Err(CommitError::Begin(BeginError::ParticipantSuspected { .. }))
                            if Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        outcome => break outcome,
                    }
                };
                outcomes.push((number, outcome));
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .kill("inventory")
        .expect("kill -9 the embedded service");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster
        .start("inventory")
        .expect("restart the embedded service");
    let mut committed = 0;
    let mut other = Vec::new();
    for worker in workers {
        for (number, outcome) in worker.await.expect("worker") {
            match outcome {
                Ok(_) => committed += 1,
                Err(error) => other.push((number, error.to_string())),
            }
        }
    }
    assert!(
        committed >= 100,
        "{committed} committed; the others: {other:?}"
    );

    // A refusal in the service's own words, once the stock is gone.
    let big = vec![call(
        "inventory/widget",
        "reserve",
        &serde_json::json!({ "count": 1000 }),
    )];
    // The client may still suspect the restarted service for a moment (its own failure
    // detector): it then refuses to begin, which is right; ask again until it trusts it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match client.run(big.clone()).await {
            Err(CommitError::Begin(BeginError::ParticipantSuspected { .. }))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => break answer,
        }
    };
    match answer {
        Err(CommitError::Aborted { reason, by, .. }) => {
            let reason = reason.map(|reason| reason.to_string()).unwrap_or_default();
            assert!(reason.contains("widget left"), "reason {reason:?}");
            assert_eq!(by.as_deref(), Some("inventory"));
        }
        other => panic!("an over-large reservation: {other:?}"),
    }

    wait_settled(&cluster).await;
    let mut placed = 0;
    for number in 1..=WORKERS * ORDERS_PER_WORKER {
        if order_present(&client, number).await {
            placed += 1;
        }
    }
    let stock = stock(&cluster);
    let sold = stock["sold"]["widget"].as_u64().unwrap_or(0);
    let available = stock["available"]["widget"].as_u64().unwrap_or(0);
    let held = stock["held"].as_object().map_or(0, |held| held.len());
    eprintln!("committed {committed}, placed {placed}, stock {stock}; not committed: {other:?}");
    assert_eq!(
        sold, placed,
        "sold {sold} widgets for {placed} placed orders: {stock}"
    );
    assert_eq!(sold + available, STOCK, "stock does not add up: {stock}");
    assert_eq!(held, 0, "reservations left held: {stock}");
    assert!(
        placed >= committed,
        "an order the client saw commit is missing"
    );
    finish(cluster);
}
