//! `dtx demo`: a 5-node cluster of real `dtx node` processes on loopback, an e-commerce
//! workload (seed 003) and bank transfers, one node SIGKILLed and restarted mid-run, then
//! audits of what must hold.

use crate::bench::{self, BenchOptions, BenchReport, Progress, UnitOutcome, Workload};
use crate::local::{temporary_dir, LocalCluster, LocalClusterError};
use dtx_node::client::Client;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The demo cluster's node names: three services own their namespaces; bank accounts
/// spread over all five.
pub const NODE_NAMES: [&str; 5] = ["inventory", "payment", "shipping", "ledger-a", "ledger-b"];

/// The node the demo kills.
pub const VICTIM: &str = "payment";

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The `dtx` executable for the node processes.
    pub executable: PathBuf,
    /// How long the workload runs.
    pub duration: Duration,
    /// Closed-loop workers per workload.
    pub workers: usize,
    /// Keep the cluster directory afterwards.
    pub keep: bool,
}

/// Why the demo could not run (an invariant violation is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The local cluster.
    #[error(transparent)]
    Cluster(#[from] LocalClusterError),
    /// The client could not join.
    #[error(transparent)]
    Connect(#[from] dtx_node::client::ConnectError),
    /// A workload failed.
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
}

/// One checked invariant.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it holds.
    pub holds: bool,
    /// The figures behind it.
    pub detail: String,
}

/// Runs the demo, printing progress; returns the checks.
pub async fn run(options: DemoOptions) -> Result<Vec<Check>, DemoError> {
    let dir = temporary_dir("dtx-demo");
    println!(
        "dtx demo: a 5-node cluster on 127.0.0.1, F=1 (every decision needs 2 of 3 acceptors)"
    );
    let names = NODE_NAMES.iter().map(|name| name.to_string()).collect();
    let mut cluster = LocalCluster::create(options.executable.clone(), dir.clone(), names, 1)?;
    cluster.remove_on_drop(!options.keep);
    println!("  cluster directory: {}", dir.display());
    for node in &cluster.config.nodes {
        println!("  {:<10} {}  {}", node.name, node.address, node.peer_id);
    }
    cluster.start_all()?;
    println!(
        "  all 5 nodes are up (each a separate `dtx node` process with its own write-ahead log)"
    );
    let config = cluster.config.clone();
    let client = Client::connect(&config).await?;
    let cluster = Arc::new(Mutex::new(cluster));

    let mut orders = BenchOptions::new(Workload::Orders);
    let mut bank_options = BenchOptions::new(Workload::Bank);
    for workload in [&mut orders, &mut bank_options] {
        workload.clients = options.workers;
        workload.duration = options.duration;
        workload.setup = false;
    }
    bank_options.keys = 100;
    println!(
        "loading data: 50 products x {} units, 50 customers, 100 bank accounts x {}",
        bench::INITIAL_STOCK,
        bench::BANK_INITIAL_BALANCE
    );
    bench::setup(&client, &orders).await?;
    bench::setup(&client, &bank_options).await?;
    println!(
        "running for {:?}: {} order workers (reserve inventory + charge payment + create shipment)\n\
         and {} transfer workers; node {VICTIM:?} gets SIGKILL at 1/3 and restarts at 1/2",
        options.duration, options.workers, options.workers
    );

    let order_progress = Arc::new(Progress::default());
    let bank_progress = Arc::new(Progress::default());
    let started = Instant::now();
    let chaos = spawn_chaos(Arc::clone(&cluster), options.duration);
    let printer = spawn_printer(
        Arc::clone(&order_progress),
        Arc::clone(&bank_progress),
        started,
        options.duration,
    );
    let (order_report, bank_report) = tokio::join!(
        bench::run(&client, &config, &orders, Arc::clone(&order_progress)),
        bench::run(&client, &config, &bank_options, Arc::clone(&bank_progress)),
    );
    printer.abort();
    let chaos_result = chaos.join();
    let order_report = order_report?;
    let bank_report = bank_report?;
    let mut checks = Vec::new();
    match chaos_result {
        Ok(Ok(lines)) => {
            for line in lines {
                println!("  {line}");
            }
        }
        Ok(Err(error)) => checks.push(Check {
            name: format!("kill -9 and restart of {VICTIM}"),
            holds: false,
            detail: error.to_string(),
        }),
        Err(_) => checks.push(Check {
            name: format!("kill -9 and restart of {VICTIM}"),
            holds: false,
            detail: "the chaos thread panicked".to_string(),
        }),
    }
    println!("workload finished; auditing the data through new read transactions...");
    checks.extend(audit(&client, &order_report, &bank_report).await?);
    report(&order_report, &bank_report, &checks);
    drop(cluster);
    Ok(checks)
}

fn spawn_chaos(
    cluster: Arc<Mutex<LocalCluster>>,
    duration: Duration,
) -> std::thread::JoinHandle<Result<Vec<String>, LocalClusterError>> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut lines = Vec::new();
        std::thread::sleep(duration / 3);
        {
            let mut cluster = cluster.lock().unwrap_or_else(|poison| poison.into_inner());
            cluster.kill(VICTIM)?;
        }
        let killed_at = started.elapsed();
        println!(
            "  !! {:>5.1}s  SIGKILL {VICTIM}: its in-flight transactions are in doubt",
            killed_at.as_secs_f64()
        );
        lines.push(format!(
            "{VICTIM} killed at {:.1}s",
            killed_at.as_secs_f64()
        ));
        std::thread::sleep((duration / 2).saturating_sub(started.elapsed()));
        let ready = {
            let mut cluster = cluster.lock().unwrap_or_else(|poison| poison.into_inner());
            cluster.start(VICTIM)?
        };
        let restarted_at = started.elapsed();
        let recovered = ready
            .split_once('(')
            .map(|(_, rest)| rest.trim_end_matches(')'))
            .unwrap_or("");
        println!(
            "  !! {:>5.1}s  {VICTIM} restarted from its write-ahead log ({recovered}); in-doubt transactions resolve through their acceptors",
            restarted_at.as_secs_f64()
        );
        lines.push(format!(
            "{VICTIM} restarted at {:.1}s from its write-ahead log",
            restarted_at.as_secs_f64()
        ));
        Ok(lines)
    })
}

fn spawn_printer(
    orders: Arc<Progress>,
    bank: Arc<Progress>,
    started: Instant,
    duration: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let elapsed = started.elapsed();
            if elapsed > duration + Duration::from_secs(30) {
                return;
            }
            println!(
                "  {:>5.1}s  orders {:>6} committed {:>5} aborted {:>3} unknown | transfers {:>6} committed {:>5} aborted {:>3} unknown",
                elapsed.as_secs_f64(),
                orders.committed.load(Ordering::Relaxed),
                orders.aborted.load(Ordering::Relaxed),
                orders.unknown.load(Ordering::Relaxed),
                bank.committed.load(Ordering::Relaxed),
                bank.aborted.load(Ordering::Relaxed),
                bank.unknown.load(Ordering::Relaxed),
            );
        }
    })
}

/// Checks money conservation, that no order is partial, and that no acknowledged commit
/// was lost.
async fn audit(
    client: &Client,
    orders: &BenchReport,
    bank_report: &BenchReport,
) -> Result<Vec<Check>, DemoError> {
    let before = bank_report.total_before.unwrap_or(0);
    let after = bank_report.total_after.unwrap_or(i64::MIN);
    let mut checks = vec![Check {
        name: "money conserved (bank)".to_string(),
        holds: before == after,
        detail: format!("total before {before}, after {after}"),
    }];
    checks.extend(audit_orders(client, orders).await?);
    Ok(checks)
}

/// The orders workload's audit (also `dtx lab`'s): no order is partial (stock reserved,
/// money charged and shipments created agree) and no acknowledged order was lost.
pub(crate) async fn audit_orders(
    client: &Client,
    orders: &BenchReport,
) -> Result<Vec<Check>, bench::BenchError> {
    let mut checks = Vec::new();
    let products: Vec<String> = (0..bench::PRODUCTS)
        .map(|index| format!("inventory/sku-{index}"))
        .collect();
    let customers: Vec<String> = (0..bench::CUSTOMERS)
        .map(|index| format!("payment/cust-{index}"))
        .collect();
    let shipments: Vec<String> = orders
        .orders
        .iter()
        .map(|order| order.shipment_key.clone())
        .collect();
    let stock = bench::read_all(client, &products).await?;
    let balances = bench::read_all(client, &customers).await?;
    let shipped = bench::read_all(client, &shipments).await?;
    let mut units_reserved = 0i64;
    for (key, value) in &stock {
        units_reserved += bench::INITIAL_STOCK - bench::number(key, value)?;
    }
    let mut money_charged = 0i64;
    for (key, value) in &balances {
        money_charged += bench::INITIAL_CUSTOMER_BALANCE - bench::number(key, value)?;
    }
    let shipment_count = shipped.len() as i64;
    checks.push(Check {
        name: "no partial order (inventory, payment, shipping agree)".to_string(),
        holds: units_reserved == shipment_count && money_charged == shipment_count * bench::PRICE,
        detail: format!(
            "{units_reserved} units reserved, {money_charged} charged ({} orders' worth), {shipment_count} shipments",
            money_charged / bench::PRICE
        ),
    });
    let mut lost = 0usize;
    let mut phantom = 0usize;
    let mut acknowledged = 0usize;
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for order in &orders.orders {
        let present = shipped.contains_key(&order.shipment_key);
        match order.outcome {
            Some(UnitOutcome::Committed) => {
                acknowledged += 1;
                if !present {
                    lost += 1;
                }
            }
            Some(UnitOutcome::Aborted) if present => phantom += 1,
            Some(UnitOutcome::Unknown) => {
                *by_outcome
                    .entry(if present { "committed" } else { "aborted" })
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    checks.push(Check {
        name: "no acknowledged commit lost, no aborted order applied".to_string(),
        holds: lost == 0 && phantom == 0,
        detail: format!(
            "{acknowledged} acknowledged orders all present: {}; aborted but present: {phantom}; unknown to the client then found {by_outcome:?}",
            lost == 0
        ),
    });
    Ok(checks)
}

fn report(orders: &BenchReport, bank: &BenchReport, checks: &[Check]) {
    println!();
    println!("report");
    for (name, report) in [("orders", orders), ("transfers", bank)] {
        println!(
            "  {name:<10} committed {:>6}  aborted {:>5}  unknown {:>3}  {:>7.1}/s  latency p50 {:.2} ms  p99 {:.2} ms",
            report.committed, report.aborted, report.errors, report.tps, report.p50_ms, report.p99_ms
        );
    }
    println!("  (an order is a read transaction, then one transaction over inventory, payment and");
    println!("   shipping whose reads validate the versions seen; a transfer is one interactive");
    println!("   transaction; aborts are version conflicts, deadlock victims, and work that");
    println!("   touched {VICTIM} while it was down)");
    println!("invariants");
    for check in checks {
        let mark = if check.holds { "ok  " } else { "FAIL" };
        println!("  [{mark}] {}: {}", check.name, check.detail);
    }
    let all = checks.iter().all(|check| check.holds);
    println!(
        "result: {}",
        if all {
            "OK - every invariant holds"
        } else {
            "VIOLATION"
        }
    );
}
