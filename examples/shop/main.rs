//! The shop example (seeds 002 and 003): inventory, payment and shipping are three services,
//! each keeping its data in its own real PostgreSQL database, each a participant of dtx
//! transactions through PostgreSQL's prepared transactions (`dtx node --participant
//! postgres://... --actions examples/shop/<service>.toml`, no service code at all). One
//! order is one dtx transaction: inventory `reserve` (take the stock, record the order),
//! payment `charge` (take the money, record the charge), shipping `create` (record the
//! shipment). Some items sell out and some customers run out of money, so refusals happen
//! and must abort whole orders.
//!
//! Two PostgreSQL instances on 127.0.0.1, each from a temporary data directory: one holds
//! database `inventory`, the other holds `payment` and `shipping` (two databases of one
//! instance on purpose: their prepared transactions share one `pg_prepared_xacts`, their
//! gids differ by database). Three data nodes hold the votes' decisions.
//!
//! Mid-run the inventory service's dtx node gets SIGKILL and restarts; later the payment
//! instance's PostgreSQL crashes (`pg_ctl -m immediate stop`: no checkpoint, WAL recovery at
//! the next start) and starts again; the orders go on meanwhile. Then the audit, with plain
//! SQL as the only evidence: every order in all three databases or in none, every order the
//! client saw commit in all three and every one it saw abort in none, stock never negative
//! and conserved, money conserved, `pg_prepared_xacts` empty on both instances.
//!
//! Run it with `bash examples/shop/run.sh` (it builds `dtx` and this example, and installs
//! PostgreSQL when missing), or:
//!
//! ```text
//! cargo build --release -p dtx-cli --bin dtx --example shop
//! target/release/examples/shop [--workers 8] [--seconds 20] [--no-faults] [--keep] [--bench]
//! ```
//!
//! `--bench`: no faults, a large catalog (no refusals), the report as one JSON line last
//! (`examples/shop/bench.sh` puts it next to PostgreSQL-native 2PC and dtx's own store).
//!
//! Exit code 0 when the audit passes, 1 when it finds a violation, 2 when the example could
//! not run (PostgreSQL missing, a process that would not start).

use dtx_cli::local::{temporary_dir, LocalCluster};
use dtx_cli::local_postgres::{LocalPostgres, LocalPostgresError};
use dtx_node::client::{Client, CommitError};
use dtx_protocol::{AbortReason, Key, Operation, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for every prepared transaction to be finished after the run.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Time between SIGKILL of the inventory node (or the crash of PostgreSQL) and its restart.
const DOWN_TIME: Duration = Duration::from_secs(2);
/// Items of the normal run: name, stock, price. The last two are scarce: they sell out
/// early and their orders are refused from then on ("out of stock: truffle").
const ITEMS: [(&str, i64, i64); 12] = [
    ("apple", 100_000, 2),
    ("bread", 100_000, 3),
    ("cheese", 100_000, 9),
    ("dates", 100_000, 6),
    ("eggs", 100_000, 4),
    ("flour", 100_000, 2),
    ("grapes", 100_000, 5),
    ("honey", 100_000, 8),
    ("ink", 100_000, 7),
    ("jam", 100_000, 4),
    ("truffle", 40, 20),
    ("saffron", 40, 15),
];
/// Customers of the normal run: name, balance. The last two are poor: they run out of
/// money early and their orders are refused ("insufficient funds: dora").
const CUSTOMERS: [(&str, i64); 10] = [
    ("alice", 10_000_000),
    ("bob", 10_000_000),
    ("carol", 10_000_000),
    ("erin", 10_000_000),
    ("frank", 10_000_000),
    ("grace", 10_000_000),
    ("heidi", 10_000_000),
    ("ivan", 10_000_000),
    ("dora", 300),
    ("mallory", 300),
];
/// Items and customers of a `--bench` run (each plentiful, so nothing is refused and few
/// orders wait for one another's row locks, as in the PostgreSQL-native 2PC baseline).
const BENCH_ITEMS: usize = 256;
const BENCH_CUSTOMERS: usize = 256;
const BENCH_STOCK: i64 = 100_000_000;
const BENCH_BALANCE: i64 = 1_000_000_000;
/// Pause of a worker after an order that failed for a fault (not a refusal) or whose
/// outcome it could not learn. Without it, a database outage turns every worker into a
/// tight loop of orders that abort at once at the unreachable service while each still
/// queues a prepare at the other services (measured: 1,700 in 2 s, which the inventory
/// service then took 100 s to work through).
const FAULT_PAUSE: Duration = Duration::from_millis(250);
/// The most units of one item an order takes.
const QUANTITY_MAX: u64 = 3;

/// Why the example could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error("{0}")]
    Setup(String),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] LocalPostgresError),
    #[error(transparent)]
    Cluster(#[from] dtx_cli::local::LocalClusterError),
    #[error("cannot connect the shop's client: {0}")]
    Connect(String),
}

struct Options {
    workers: usize,
    duration: Duration,
    faults: bool,
    keep: bool,
    bench: bool,
    dtx: PathBuf,
}

/// What the shop sells and to whom, with the starting stock and balances.
struct Catalog {
    /// Item → (stock, price).
    items: BTreeMap<String, (i64, i64)>,
    /// Customer → balance.
    customers: BTreeMap<String, i64>,
}

impl Catalog {
    fn new(bench: bool) -> Catalog {
        if bench {
            Catalog {
                items: (0..BENCH_ITEMS)
                    .map(|index| (format!("item{index}"), (BENCH_STOCK, 1 + index as i64 % 9)))
                    .collect(),
                customers: (0..BENCH_CUSTOMERS)
                    .map(|index| (format!("customer{index}"), BENCH_BALANCE))
                    .collect(),
            }
        } else {
            Catalog {
                items: ITEMS
                    .iter()
                    .map(|(name, stock, price)| (name.to_string(), (*stock, *price)))
                    .collect(),
                customers: CUSTOMERS
                    .iter()
                    .map(|(name, balance)| (name.to_string(), *balance))
                    .collect(),
            }
        }
    }
}

/// One order as the client placed it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Order {
    sku: String,
    quantity: i64,
    customer: String,
    amount: i64,
}

/// What the ordering workers saw.
#[derive(Default)]
struct Orders {
    /// Every order placed, by id.
    placed: BTreeMap<String, Order>,
    committed: BTreeSet<String>,
    /// Order id → the reason the client was given.
    aborted: BTreeMap<String, String>,
    unknown: BTreeSet<String>,
    /// Why outcomes were unknown: the error's kind → count.
    unknown_errors: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

/// The two PostgreSQL instances.
struct Instances {
    /// Database `inventory`.
    stock: LocalPostgres,
    /// Databases `payment` and `shipping`.
    money: LocalPostgres,
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("shop: {message}");
            std::process::exit(2);
        }
    };
    match run(options) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("shop: {error}");
            std::process::exit(2);
        }
    }
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        workers: 8,
        duration: Duration::from_secs(20),
        faults: true,
        keep: false,
        bench: false,
        dtx: default_dtx(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--workers" => {
                options.workers = value("--workers")?
                    .parse()
                    .ok()
                    .filter(|workers| (1..=64).contains(workers))
                    .ok_or("--workers must be 1..=64")?
            }
            "--seconds" => {
                let seconds: u64 = value("--seconds")?
                    .parse()
                    .ok()
                    .filter(|seconds| (3..=3600).contains(seconds))
                    .ok_or("--seconds must be 3..=3600")?;
                options.duration = Duration::from_secs(seconds);
            }
            "--no-faults" => options.faults = false,
            "--keep" => options.keep = true,
            "--bench" => {
                options.bench = true;
                options.faults = false;
            }
            "--dtx" => options.dtx = PathBuf::from(value("--dtx")?),
            "--help" | "-h" => {
                println!(
                    "usage: shop [--workers N] [--seconds S] [--no-faults] [--keep] [--bench] [--dtx PATH]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if !options.dtx.exists() {
        return Err(format!(
            "no dtx binary at {} (build it: cargo build --release -p dtx-cli, or pass --dtx)",
            options.dtx.display()
        ));
    }
    Ok(options)
}

/// `dtx` next to this example's directory (target/release/examples/shop → target/release/dtx).
fn default_dtx() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("dtx")))
        .unwrap_or_else(|| PathBuf::from("target/release/dtx"))
}

fn actions_file(service: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/shop/{service}.toml"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A text as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn run(options: Options) -> Result<bool, ShopError> {
    let catalog = Catalog::new(options.bench);
    let say = |line: String| {
        if !options.bench {
            println!("{line}");
        }
    };
    let dir = temporary_dir("dtx-shop");
    say("shop: 2 PostgreSQL instances, 3 service nodes (inventory, payment, shipping), 3 data nodes, F=1".to_string());
    say(format!("  directory: {}", dir.display()));
    let instances = Arc::new(start_databases(&catalog, options.keep)?);
    say(format!(
        "  PostgreSQL on 127.0.0.1:{} (inventory) and 127.0.0.1:{} (payment, shipping), fsync on",
        instances.stock.port(),
        instances.money.port()
    ));
    let names = ["n1", "n2", "n3"].map(String::from).to_vec();
    let mut cluster = LocalCluster::create(options.dtx.clone(), dir.clone(), names, 1)?;
    cluster.remove_on_drop(!options.keep);
    let services = [
        ("inventory", instances.stock.url("inventory")),
        ("payment", instances.money.url("payment")),
        ("shipping", instances.money.url("shipping")),
    ];
    for (name, _) in &services {
        dtx_node::config::add_node(&cluster.config_path, name, "service")
            .map_err(|error| ShopError::Setup(format!("adding {name}: {error}")))?;
    }
    cluster.reload()?;
    for (name, url) in &services {
        let actions = actions_file(name);
        let actions = actions.to_string_lossy();
        cluster.set_args(name, &["--participant", url, "--actions", &actions]);
        say(format!(
            "  {name:<9} dtx node --participant {url} --actions {actions}"
        ));
    }
    cluster.start_all()?;
    say("  6 dtx nodes up".to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| ShopError::Setup(format!("cannot start the async runtime: {error}")))?;
    let client = runtime
        .block_on(Client::connect(&cluster.config))
        .map_err(|error| ShopError::Connect(error.to_string()))?;
    let cluster = Arc::new(Mutex::new(cluster));
    say(format!(
        "placing orders for {:?} with {} workers{}",
        options.duration,
        options.workers,
        if options.faults {
            "; SIGKILL of the inventory node at 1/4 (restart 2 s later), crash of the payment instance's PostgreSQL at 11/20 (restart 2 s later)"
        } else {
            ""
        }
    ));
    let chaos = {
        let cluster = Arc::clone(&cluster);
        let instances = Arc::clone(&instances);
        let duration = options.duration;
        let faults = options.faults;
        std::thread::spawn(move || chaos(&cluster, &instances, duration, faults))
    };
    let started = Instant::now();
    let orders = runtime.block_on(place_orders(
        &client,
        &catalog,
        options.workers,
        started + options.duration,
        !options.bench,
    ));
    let elapsed = started.elapsed();
    let chaos = chaos
        .join()
        .map_err(|_| ShopError::Setup("the fault thread panicked".to_string()))??;
    chaos.iter().for_each(|line| say(format!("  {line}")));
    say("run over; waiting until no prepared transaction is left...".to_string());
    let settled = wait_settled(&instances, !options.bench);
    let passed = audit(&instances, &catalog, &orders, settled, !options.bench);
    report(&orders, elapsed, options.bench, options.workers, passed);
    drop(client);
    drop(runtime);
    lock(&cluster).stop_all();
    if !options.bench {
        println!("audit {}", if passed { "PASSED" } else { "FAILED" });
    }
    Ok(passed)
}

/// Starts both instances and creates the databases, tables and starting rows.
fn start_databases(catalog: &Catalog, keep: bool) -> Result<Instances, ShopError> {
    let mut stock = LocalPostgres::start("shop-inventory")?;
    stock.keep(keep);
    let mut money = LocalPostgres::start("shop-money")?;
    money.keep(keep);
    stock.create_database("inventory")?;
    money.create_database("payment")?;
    money.create_database("shipping")?;
    let items = catalog
        .items
        .iter()
        .map(|(sku, (quantity, _))| format!("({}, {quantity})", literal(sku)))
        .collect::<Vec<_>>()
        .join(", ");
    stock.sql(
        "inventory",
        &format!(
            "CREATE TABLE stock (sku text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0));
             CREATE TABLE orders (order_id text PRIMARY KEY, sku text NOT NULL, qty int NOT NULL);
             CREATE TABLE initial_stock (sku text PRIMARY KEY, qty int NOT NULL);
             INSERT INTO stock VALUES {items};
             INSERT INTO initial_stock VALUES {items};"
        ),
    )?;
    let customers = catalog
        .customers
        .iter()
        .map(|(customer, balance)| format!("({}, {balance})", literal(customer)))
        .collect::<Vec<_>>()
        .join(", ");
    money.sql(
        "payment",
        &format!(
            "CREATE TABLE accounts (customer text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
             CREATE TABLE charges (order_id text PRIMARY KEY, customer text NOT NULL, amount bigint NOT NULL);
             CREATE TABLE initial_accounts (customer text PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts VALUES {customers};
             INSERT INTO initial_accounts VALUES {customers};"
        ),
    )?;
    money.sql(
        "shipping",
        "CREATE TABLE shipments (order_id text PRIMARY KEY, address text NOT NULL);",
    )?;
    Ok(Instances { stock, money })
}

/// The faults, timed from the start of the run: SIGKILL of the inventory node at a quarter
/// and its restart, then the crash of the payment instance at 11/20 and its restart.
fn chaos(
    cluster: &Mutex<LocalCluster>,
    instances: &Instances,
    duration: Duration,
    faults: bool,
) -> Result<Vec<String>, ShopError> {
    let mut lines = Vec::new();
    if !faults {
        return Ok(lines);
    }
    let started = Instant::now();
    let at = |fraction: f64| started + duration.mul_f64(fraction);
    sleep_until(at(0.25));
    lock(cluster).kill("inventory")?;
    lines.push(format!(
        "inventory dtx node SIGKILLed at {:.1?}",
        started.elapsed()
    ));
    std::thread::sleep(DOWN_TIME);
    let ready = lock(cluster).start("inventory")?;
    lines.push(format!(
        "inventory dtx node restarted at {:.1?}: {}",
        started.elapsed(),
        ready.split(" ready:").nth(1).unwrap_or("").trim()
    ));
    sleep_until(at(0.55));
    let prepared = instances.money.sql(
        "postgres",
        "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'dtx-%'",
    )?;
    instances.money.crash()?;
    lines.push(format!(
        "payment instance's PostgreSQL crashed (pg_ctl -m immediate stop) at {:.1?} with {prepared} prepared transactions",
        started.elapsed()
    ));
    std::thread::sleep(DOWN_TIME);
    instances.money.start_again()?;
    let prepared = instances.money.sql(
        "postgres",
        "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'dtx-%'",
    )?;
    lines.push(format!(
        "payment instance's PostgreSQL started again at {:.1?} (WAL recovery; {prepared} prepared transactions after it)",
        started.elapsed()
    ));
    Ok(lines)
}

fn sleep_until(instant: Instant) {
    let now = Instant::now();
    if instant > now {
        std::thread::sleep(instant - now);
    }
}

/// Places orders from `workers` workers until `deadline`; prints progress when `verbose`.
async fn place_orders(
    client: &Client,
    catalog: &Catalog,
    workers: usize,
    deadline: Instant,
    verbose: bool,
) -> Orders {
    let orders = Arc::new(Mutex::new(Orders::default()));
    let done = Arc::new(AtomicU64::new(0));
    let items: Arc<Vec<(String, i64)>> = Arc::new(
        catalog
            .items
            .iter()
            .map(|(sku, (_, price))| (sku.clone(), *price))
            .collect(),
    );
    let customers: Arc<Vec<String>> = Arc::new(catalog.customers.keys().cloned().collect());
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let client = client.clone();
        let orders = Arc::clone(&orders);
        let done = Arc::clone(&done);
        let items = Arc::clone(&items);
        let customers = Arc::clone(&customers);
        tasks.push(tokio::spawn(async move {
            order_loop(worker, client, &items, &customers, deadline, orders, done).await
        }));
    }
    let started = Instant::now();
    let mut last_print = Instant::now();
    while tasks.iter().any(|task| !task.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if verbose && last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let orders = lock(&orders);
            println!(
                "  t={:>4.1}s  orders finished: {} ({} committed, {} aborted, {} unknown)",
                started.elapsed().as_secs_f64(),
                done.load(Ordering::Relaxed),
                orders.committed.len(),
                orders.aborted.len(),
                orders.unknown.len()
            );
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let placed = std::mem::take(&mut *lock(&orders));
    placed
}

/// One worker: an order at a time, each one dtx transaction of three calls.
async fn order_loop(
    worker: usize,
    client: Client,
    items: &[(String, i64)],
    customers: &[String],
    deadline: Instant,
    orders: Arc<Mutex<Orders>>,
    done: Arc<AtomicU64>,
) {
    let mut random =
        0x9E37_79B9_7F4A_7C15_u64 ^ (worker as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut next = move |below: usize| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below as u64
    };
    let mut sequence = 0;
    while Instant::now() < deadline {
        sequence += 1;
        let order_id = format!("w{worker}-{sequence}");
        let (sku, price) = &items[next(items.len()) as usize];
        let quantity = 1 + next(QUANTITY_MAX as usize) as i64;
        let customer = &customers[next(customers.len()) as usize];
        let order = Order {
            sku: sku.clone(),
            quantity,
            customer: customer.clone(),
            amount: quantity * price,
        };
        let address = format!("{} Market Street, door {}", 1 + next(999), worker);
        let calls = [
            (
                format!("inventory/{sku}"),
                "reserve",
                serde_json::json!({ "order": order_id, "sku": sku, "qty": quantity }),
            ),
            (
                format!("payment/{customer}"),
                "charge",
                serde_json::json!({ "order": order_id, "customer": customer, "amount": order.amount }),
            ),
            (
                format!("shipping/{order_id}"),
                "create",
                serde_json::json!({ "order": order_id, "address": address }),
            ),
        ];
        let mut txn = client.begin();
        for (target, action, args) in calls {
            txn.push(Operation::Call {
                target: Key::new(target),
                action: action.to_string(),
                args: Value::new(args.to_string().into_bytes()),
            });
        }
        lock(&orders).placed.insert(order_id.clone(), order);
        let began = Instant::now();
        let result = txn.commit().await;
        let latency_us = began.elapsed().as_micros() as u64;
        let pause = {
            let mut orders = lock(&orders);
            match result {
                Ok(_) => {
                    orders.committed.insert(order_id);
                    orders.latencies_us.push(latency_us);
                    false
                }
                Err(CommitError::Aborted { reason, .. }) => {
                    // A refusal is the shop's business (sold out, no money): go on at once.
                    // Anything else (a service or its database unreachable, a node
                    // recovering) is a fault: back off like a real client would, rather
                    // than flood the other services with orders that cannot commit.
                    let fault = !matches!(reason, Some(AbortReason::ServiceRefused { .. }));
                    let reason = reason
                        .map(|reason| reason.to_string())
                        .unwrap_or_else(|| "no reason given".to_string());
                    orders.aborted.insert(order_id, reason);
                    fault
                }
                // Nothing was sent: not placed, so in no database (audited as aborted).
                Err(CommitError::Begin(error)) => {
                    orders
                        .aborted
                        .insert(order_id, format!("cannot begin: {error}"));
                    true
                }
                Err(error) => {
                    orders.unknown.insert(order_id);
                    *orders.unknown_errors.entry(error_kind(&error)).or_default() += 1;
                    true
                }
            }
        };
        if pause {
            tokio::time::sleep(FAULT_PAUSE).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// The kind of an error with no outcome, for the report (its text without the transaction id).
fn error_kind(error: &CommitError) -> String {
    match error {
        CommitError::Unknown { .. } => "outcome unknown (the client gave up waiting)".to_string(),
        CommitError::Refused { refusal, .. } => format!("refused by a node: {refusal}"),
        other => other.to_string(),
    }
}

/// Prepared transactions on both instances (all databases), or None if one is unreadable.
fn prepared_count(instances: &Instances) -> Option<u64> {
    let mut count = 0;
    for instance in [&instances.stock, &instances.money] {
        count += instance
            .sql("postgres", "SELECT count(*) FROM pg_prepared_xacts")
            .ok()?
            .parse::<u64>()
            .ok()?;
    }
    Some(count)
}

/// Waits until neither instance lists a prepared transaction (twice in a row, a second
/// apart, so a straggler prepared just after a look is seen).
fn wait_settled(instances: &Instances, verbose: bool) -> bool {
    let started = Instant::now();
    let mut empty_looks = 0;
    loop {
        let count = prepared_count(instances);
        if count == Some(0) {
            empty_looks += 1;
            if empty_looks == 2 {
                if verbose {
                    println!("  settled after {:.1?}", started.elapsed());
                }
                return true;
            }
        } else {
            empty_looks = 0;
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            println!("  still {count:?} prepared after {SETTLE_TIMEOUT:?}:");
            for instance in [&instances.stock, &instances.money] {
                if let Ok(text) = instance.sql(
                    "postgres",
                    "SELECT gid, prepared FROM pg_prepared_xacts ORDER BY prepared",
                ) {
                    text.lines().for_each(|line| println!("    {line}"));
                }
            }
            return false;
        }
        std::thread::sleep(if empty_looks > 0 {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        });
    }
}

/// `text` (psql's unaligned output) as rows of `|`-separated columns.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.split('|').map(str::to_string).collect())
        .collect()
}

/// Two-column rows as a map (the second column a number).
fn number_map(text: &str) -> BTreeMap<String, i64> {
    rows(text)
        .into_iter()
        .filter_map(|row| Some((row.first()?.clone(), row.get(1)?.parse().ok()?)))
        .collect()
}

/// The audit, with plain SQL against the services' databases as the only evidence.
fn audit(
    instances: &Instances,
    catalog: &Catalog,
    orders: &Orders,
    settled: bool,
    verbose: bool,
) -> bool {
    let mut passed = true;
    let mut check = |holds: bool, what: String| {
        if verbose || !holds {
            println!("  {} {what}", if holds { "ok  " } else { "FAIL" });
        }
        passed &= holds;
    };
    check(
        settled,
        "every prepared transaction finished (pg_prepared_xacts empty on both instances)"
            .to_string(),
    );
    let query = |instance: &LocalPostgres, database: &str, text: &str| {
        instance
            .sql(database, text)
            .map_err(|error| error.to_string())
    };
    let read = || -> Result<_, String> {
        Ok((
            query(
                &instances.stock,
                "inventory",
                "SELECT order_id, sku, qty FROM orders",
            )?,
            query(
                &instances.money,
                "payment",
                "SELECT order_id, customer, amount FROM charges",
            )?,
            query(
                &instances.money,
                "shipping",
                "SELECT order_id FROM shipments",
            )?,
            query(&instances.stock, "inventory", "SELECT sku, qty FROM stock")?,
            query(
                &instances.money,
                "payment",
                "SELECT customer, balance FROM accounts",
            )?,
            query(
                &instances.stock,
                "postgres",
                "SELECT count(*) FROM pg_prepared_xacts",
            )?,
            query(
                &instances.money,
                "postgres",
                "SELECT count(*) FROM pg_prepared_xacts",
            )?,
        ))
    };
    let (
        orders_text,
        charges_text,
        shipments_text,
        stock_text,
        accounts_text,
        stock_prepared,
        money_prepared,
    ) = match read() {
        Ok(texts) => texts,
        Err(error) => {
            check(false, format!("the databases are readable: {error}"));
            return passed;
        }
    };
    check(
        stock_prepared == "0" && money_prepared == "0",
        format!(
            "pg_prepared_xacts empty (inventory instance {stock_prepared}, payment/shipping instance {money_prepared})"
        ),
    );
    let order_rows = rows(&orders_text);
    let charge_rows = rows(&charges_text);
    let in_orders: BTreeSet<String> = order_rows.iter().map(|row| row[0].clone()).collect();
    let in_charges: BTreeSet<String> = charge_rows.iter().map(|row| row[0].clone()).collect();
    let in_shipments: BTreeSet<String> = rows(&shipments_text)
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    let everywhere: BTreeSet<&String> = in_orders
        .iter()
        .chain(&in_charges)
        .chain(&in_shipments)
        .collect();
    let partial: Vec<&&String> = everywhere
        .iter()
        .filter(|order| {
            !(in_orders.contains(**order)
                && in_charges.contains(**order)
                && in_shipments.contains(**order))
        })
        .collect();
    check(
        partial.is_empty(),
        format!(
            "every order in orders, charges and shipments or in none ({} orders, {} partial{})",
            in_orders.len(),
            partial.len(),
            partial
                .first()
                .map(|order| format!(", e.g. {order}"))
                .unwrap_or_default()
        ),
    );
    let missing: Vec<&String> = orders
        .committed
        .iter()
        .filter(|order| {
            !(in_orders.contains(*order)
                && in_charges.contains(*order)
                && in_shipments.contains(*order))
        })
        .collect();
    check(
        missing.is_empty(),
        format!(
            "every order the client saw commit is in all three ({} of {} missing)",
            missing.len(),
            orders.committed.len()
        ),
    );
    let leaked: Vec<&String> = orders
        .aborted
        .keys()
        .filter(|order| everywhere.contains(*order))
        .collect();
    check(
        leaked.is_empty(),
        format!(
            "every order the client saw abort is in none ({} of {} present)",
            leaked.len(),
            orders.aborted.len()
        ),
    );
    let unknown_committed = orders
        .unknown
        .iter()
        .filter(|order| in_orders.contains(*order))
        .count();
    let strangers: Vec<&&String> = everywhere
        .iter()
        .filter(|order| !orders.placed.contains_key(**order))
        .collect();
    check(
        strangers.is_empty(),
        format!(
            "no order the client did not place ({} strangers; of {} with unknown outcome, {} committed)",
            strangers.len(),
            orders.unknown.len(),
            unknown_committed
        ),
    );
    let mismatched = order_rows
        .iter()
        .filter(|row| {
            orders.placed.get(&row[0]).is_none_or(|order| {
                row.get(1) != Some(&order.sku)
                    || row.get(2).and_then(|qty| qty.parse().ok()) != Some(order.quantity)
            })
        })
        .count()
        + charge_rows
            .iter()
            .filter(|row| {
                orders.placed.get(&row[0]).is_none_or(|order| {
                    row.get(1) != Some(&order.customer)
                        || row.get(2).and_then(|amount| amount.parse().ok()) != Some(order.amount)
                })
            })
            .count();
    check(
        mismatched == 0,
        format!("every order row and charge row is what the client asked ({mismatched} differ)"),
    );
    let stock = number_map(&stock_text);
    let mut sold: BTreeMap<String, i64> = BTreeMap::new();
    for row in &order_rows {
        if let (Some(sku), Some(quantity)) =
            (row.get(1), row.get(2).and_then(|q| q.parse::<i64>().ok()))
        {
            *sold.entry(sku.clone()).or_default() += quantity;
        }
    }
    let negative: Vec<(&String, &i64)> = stock.iter().filter(|(_, qty)| **qty < 0).collect();
    check(
        negative.is_empty() && stock.len() == catalog.items.len(),
        format!("no stock negative ({negative:?})"),
    );
    let stock_wrong: Vec<String> = catalog
        .items
        .iter()
        .filter(|(sku, (initial, _))| {
            stock.get(*sku) != Some(&(initial - sold.get(*sku).copied().unwrap_or(0)))
        })
        .map(|(sku, (initial, _))| {
            format!(
                "{sku}: {initial} - {} != {:?}",
                sold.get(sku).copied().unwrap_or(0),
                stock.get(sku)
            )
        })
        .collect();
    let sold_out: Vec<&String> = stock
        .iter()
        .filter(|(_, qty)| **qty < QUANTITY_MAX as i64)
        .map(|(sku, _)| sku)
        .collect();
    check(
        stock_wrong.is_empty(),
        format!(
            "stock conserved: initial - sum(orders.qty) = stock for every sku {stock_wrong:?} (nearly sold out: {sold_out:?})"
        ),
    );
    let balances = number_map(&accounts_text);
    let mut charged: BTreeMap<String, i64> = BTreeMap::new();
    for row in &charge_rows {
        if let (Some(customer), Some(amount)) =
            (row.get(1), row.get(2).and_then(|a| a.parse::<i64>().ok()))
        {
            *charged.entry(customer.clone()).or_default() += amount;
        }
    }
    let money_wrong: Vec<String> = catalog
        .customers
        .iter()
        .filter(|(customer, initial)| {
            balances.get(*customer)
                != Some(&(*initial - charged.get(*customer).copied().unwrap_or(0)))
        })
        .map(|(customer, initial)| {
            format!(
                "{customer}: {initial} - {} != {:?}",
                charged.get(customer).copied().unwrap_or(0),
                balances.get(customer)
            )
        })
        .collect();
    let negative_balances = balances.values().filter(|balance| **balance < 0).count();
    check(
        money_wrong.is_empty() && negative_balances == 0,
        format!(
            "money conserved: initial - sum(charges.amount) = balance for every customer, none negative {money_wrong:?}"
        ),
    );
    passed
}

fn report(orders: &Orders, elapsed: Duration, bench: bool, workers: usize, passed: bool) {
    let mut latencies = orders.latencies_us.clone();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[index] as f64 / 1000.0
    };
    let per_second = orders.committed.len() as f64 / elapsed.as_secs_f64();
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for reason in orders.aborted.values() {
        *reasons.entry(reason.as_str()).or_default() += 1;
    }
    if bench {
        let line = serde_json::json!({
            "example": "shop",
            "clients": workers,
            "duration_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "committed": orders.committed.len(),
            "aborted": orders.aborted.len(),
            "aborts_by_reason": reasons,
            "unknown": orders.unknown.len(),
            "orders_per_s": (per_second * 10.0).round() / 10.0,
            "p50_ms": (percentile(0.5) * 100.0).round() / 100.0,
            "p99_ms": (percentile(0.99) * 100.0).round() / 100.0,
            "audit": if passed { "passed" } else { "failed" },
        });
        println!("{line}");
        return;
    }
    println!(
        "orders: {} committed ({:.1}/s), {} aborted, {} unknown in {:.1?}; committed latency p50 {:.1} ms, p99 {:.1} ms",
        orders.committed.len(),
        per_second,
        orders.aborted.len(),
        orders.unknown.len(),
        elapsed,
        percentile(0.5),
        percentile(0.99),
    );
    let mut reasons: Vec<(&str, u64)> = reasons.into_iter().collect();
    reasons.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    for (reason, count) in reasons.iter().take(8) {
        println!("  aborted {count:>5}x: {reason}");
    }
    if reasons.len() > 8 {
        println!("  ... and {} other reasons", reasons.len() - 8);
    }
    for (kind, count) in &orders.unknown_errors {
        println!("  unknown {count:>5}x: {kind}");
    }
}
