//! The travel example (seed 004): flights, hotels and cars are three separate provider
//! services, each with its own durable inventory, each a participant of dtx transactions
//! through the HTTP contract (`examples/travel/provider.py`, Python standard library only,
//! beside a `dtx node --participant URL` sidecar). A booking client books trips (one
//! flight seat + one hotel room + one car, and a trip record in dtx's own store) from
//! several workers at once; mid-run the flights provider is killed with SIGKILL and
//! restarted. Then the audit, with the providers' own state as the only evidence:
//! every trip is sold at all three providers or at none, no unit is sold twice or beyond
//! its inventory, nothing is left held, and every trip the client saw commit is there.
//!
//! Run it with `bash examples/travel/run.sh` (it builds `dtx` and this example), or:
//!
//! ```text
//! cargo build --release -p dtx-cli --bin dtx --example travel
//! target/release/examples/travel [--workers 8] [--seconds 20] [--no-kill] [--keep]
//! ```
//!
//! Exit code 0 when the audit passes, 1 when it finds a violation, 2 when the example
//! could not run (python3 missing, a process that would not start).

use dtx_cli::local::{temporary_dir, LocalCluster};
use dtx_node::client::{Client, CommitError};
use dtx_protocol::{Key, Operation, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The three providers: name (also the dtx node's name and the call targets' namespace),
/// and inventory (item = units). One small item at each sells out early in a run, so
/// refusals ("no seats left on AF1234") happen and must abort whole trips; the rest lasts
/// a 20-second run.
const PROVIDERS: [(&str, &str); 3] = [
    ("flights", "LH400=300,LH401=300,BA117=300,AF1234=40"),
    ("hotels", "ADLON=400,SAVOY=400,RITZ=60"),
    ("cars", "COMPACT=400,SEDAN=400,VAN=60"),
];

/// Longest wait for the providers to settle every transaction after the run.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the example could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
enum TravelError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Cluster(#[from] dtx_cli::local::LocalClusterError),
    #[error("cannot connect the booking client: {0}")]
    Connect(String),
}

struct Options {
    workers: usize,
    duration: Duration,
    kill: bool,
    keep: bool,
    dtx: PathBuf,
}

/// One running provider process.
struct Provider {
    name: &'static str,
    address: SocketAddr,
    state_file: PathBuf,
    child: Child,
}

/// What the booking workers saw.
#[derive(Default)]
struct Bookings {
    committed: BTreeSet<String>,
    aborted: BTreeMap<String, u64>,
    unknown: BTreeSet<String>,
    latencies_us: Vec<u64>,
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("travel: {message}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("travel: cannot start the async runtime: {error}");
            std::process::exit(2);
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("travel: {error}");
            std::process::exit(2);
        }
    }
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        workers: 8,
        duration: Duration::from_secs(20),
        kill: true,
        keep: false,
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
                    .filter(|workers| (1..=256).contains(workers))
                    .ok_or("--workers must be 1..=256")?
            }
            "--seconds" => {
                let seconds: u64 = value("--seconds")?
                    .parse()
                    .ok()
                    .filter(|seconds| (3..=3600).contains(seconds))
                    .ok_or("--seconds must be 3..=3600")?;
                options.duration = Duration::from_secs(seconds);
            }
            "--no-kill" => options.kill = false,
            "--keep" => options.keep = true,
            "--dtx" => options.dtx = PathBuf::from(value("--dtx")?),
            "--help" | "-h" => {
                println!(
                    "usage: travel [--workers N] [--seconds S] [--no-kill] [--keep] [--dtx PATH]"
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

/// `dtx` next to this example's directory (target/release/examples/travel → target/release/dtx).
fn default_dtx() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("dtx")))
        .unwrap_or_else(|| PathBuf::from("target/release/dtx"))
}

fn provider_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/travel/provider.py")
}

async fn run(options: Options) -> Result<bool, TravelError> {
    let dir = temporary_dir("dtx-travel");
    println!("travel: 3 data nodes + 3 provider services (Python, HTTP contract), F=1");
    println!("  directory: {}", dir.display());
    let names = ["n1", "n2", "n3"].map(String::from).to_vec();
    let mut cluster = LocalCluster::create(options.dtx.clone(), dir.clone(), names, 1)?;
    cluster.remove_on_drop(!options.keep);
    let mut providers = Vec::new();
    for (name, inventory) in PROVIDERS {
        dtx_node::config::add_node(&cluster.config_path, name, "service")
            .map_err(|error| TravelError::Setup(format!("adding {name}: {error}")))?;
        let state_file = dir.join(format!("{name}.json"));
        let provider = start_provider(name, &state_file, Some(inventory), None)?;
        println!(
            "  {name:<8} provider.py on http://{} (state {})",
            provider.address,
            state_file.display()
        );
        providers.push(provider);
    }
    cluster.reload()?;
    for provider in &providers {
        let url = format!("http://{}", provider.address);
        cluster.set_args(provider.name, &["--participant", &url]);
    }
    cluster.start_all()?;
    println!("  6 dtx nodes up; the 3 service nodes are sidecars of their providers");
    let client = Client::connect(&cluster.config)
        .await
        .map_err(|error| TravelError::Connect(error.to_string()))?;
    let providers = Arc::new(Mutex::new(providers));
    let bookings = Arc::new(Mutex::new(Bookings::default()));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    println!(
        "booking trips for {:?} with {} workers{}",
        options.duration,
        options.workers,
        if options.kill {
            "; the flights provider gets SIGKILL at 1/3 and restarts 2 s later"
        } else {
            ""
        }
    );
    let mut workers = Vec::new();
    for worker in 0..options.workers {
        let client = client.clone();
        let bookings = Arc::clone(&bookings);
        let done = Arc::clone(&done);
        let deadline = started + options.duration;
        workers.push(tokio::spawn(async move {
            book_trips(worker, client, deadline, bookings, done).await
        }));
    }
    let chaos = {
        let providers = Arc::clone(&providers);
        let duration = options.duration;
        let kill = options.kill;
        tokio::task::spawn_blocking(move || chaos(providers, duration, kill))
    };
    let mut last_print = Instant::now();
    while workers.iter().any(|worker| !worker.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            println!(
                "  t={:>4.1}s  trips finished: {}",
                started.elapsed().as_secs_f64(),
                done.load(Ordering::Relaxed)
            );
        }
    }
    let elapsed = started.elapsed();
    for worker in workers {
        let _ = worker.await;
    }
    match chaos.await {
        Ok(Ok(lines)) => lines.iter().for_each(|line| println!("  {line}")),
        Ok(Err(error)) => return Err(error),
        Err(error) => return Err(TravelError::Setup(format!("chaos task: {error}"))),
    }
    println!("run over; waiting for every provider to finish every transaction...");
    let addresses: Vec<(&'static str, SocketAddr)> = lock(&providers)
        .iter()
        .map(|provider| (provider.name, provider.address))
        .collect();
    let settled = wait_settled(&addresses).await;
    let bookings = std::mem::take(&mut *lock(&bookings));
    let trips_present = read_trips(&client, &bookings).await;
    let passed = audit(&addresses, &bookings, &trips_present, settled);
    report(&bookings, elapsed);
    for provider in lock(&providers).iter_mut() {
        let _ = provider.child.kill();
        let _ = provider.child.wait();
    }
    drop(cluster);
    if passed {
        println!("audit PASSED");
    } else {
        println!("audit FAILED");
    }
    Ok(passed)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts provider.py for `name` (on `port`, or a free one) and waits for its first line.
fn start_provider(
    name: &'static str,
    state_file: &Path,
    inventory: Option<&str>,
    port: Option<u16>,
) -> Result<Provider, TravelError> {
    let mut command = Command::new("python3");
    command
        .arg(provider_script())
        .args(["--kind", name, "--state"])
        .arg(state_file)
        .args(["--port", &port.unwrap_or(0).to_string()]);
    if let Some(inventory) = inventory {
        command.args(["--inventory", inventory]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| {
            TravelError::Setup(format!(
                "cannot start python3 (the providers need Python 3): {error}"
            ))
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| TravelError::Setup("provider has no stdout".to_string()))?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|error| TravelError::Setup(format!("{name} provider: {error}")))?;
    let address = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|address| address.parse().ok())
        .ok_or_else(|| {
            TravelError::Setup(format!("{name} provider did not start: {:?}", line.trim()))
        })?;
    Ok(Provider {
        name,
        address,
        state_file: state_file.to_path_buf(),
        child,
    })
}

/// SIGKILL the flights provider at a third of the run, restart it 2 s later on its port.
fn chaos(
    providers: Arc<Mutex<Vec<Provider>>>,
    duration: Duration,
    kill: bool,
) -> Result<Vec<String>, TravelError> {
    if !kill {
        return Ok(Vec::new());
    }
    let mut lines = Vec::new();
    std::thread::sleep(duration / 3);
    let (address, state_file) = {
        let mut providers = lock(&providers);
        let provider = &mut providers[0];
        provider
            .child
            .kill()
            .map_err(|error| TravelError::Setup(format!("SIGKILL flights: {error}")))?;
        let _ = provider.child.wait();
        (provider.address, provider.state_file.clone())
    };
    lines.push(format!("flights provider SIGKILLed at {:?}", duration / 3));
    std::thread::sleep(Duration::from_secs(2));
    let restarted = start_provider("flights", &state_file, None, Some(address.port()))?;
    lines.push("flights provider restarted from its state file".to_string());
    lock(&providers)[0] = restarted;
    Ok(lines)
}

/// Books trips until `deadline`: each trip one transaction of a trip record and three
/// reservations.
async fn book_trips(
    worker: usize,
    client: Client,
    deadline: Instant,
    bookings: Arc<Mutex<Bookings>>,
    done: Arc<AtomicU64>,
) {
    let mut random =
        0x9E37_79B9_7F4A_7C15_u64 ^ (worker as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut sequence = 0;
    while Instant::now() < deadline {
        sequence += 1;
        let trip = format!("w{worker}-{sequence}");
        let mut choose = |inventory: &str| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let items: Vec<&str> = inventory
                .split(',')
                .filter_map(|entry| entry.split('=').next())
                .collect();
            items[(random % items.len() as u64) as usize].to_string()
        };
        let chosen: Vec<(&str, String)> = PROVIDERS
            .iter()
            .map(|(name, inventory)| (*name, choose(inventory)))
            .collect();
        let mut txn = client.begin();
        let summary = chosen
            .iter()
            .map(|(_, item)| item.as_str())
            .collect::<Vec<_>>()
            .join(",");
        txn.push(Operation::Write {
            key: Key::new(format!("trips/{trip}")),
            value: Value::new(summary.into_bytes()),
        });
        for (provider, item) in &chosen {
            let args = serde_json::json!({ "item": item, "trip": trip });
            txn.push(Operation::Call {
                target: Key::new(format!("{provider}/{item}")),
                action: "reserve".to_string(),
                args: Value::new(args.to_string().into_bytes()),
            });
        }
        let began = Instant::now();
        let result = txn.commit().await;
        let latency_us = began.elapsed().as_micros() as u64;
        let mut bookings = lock(&bookings);
        match result {
            Ok(_) => {
                bookings.committed.insert(trip);
                bookings.latencies_us.push(latency_us);
            }
            Err(CommitError::Aborted { reason, .. }) => {
                let reason = reason
                    .map(|reason| reason.to_string())
                    .unwrap_or_else(|| "no reason given".to_string());
                *bookings.aborted.entry(reason).or_default() += 1;
            }
            Err(_) => {
                bookings.unknown.insert(trip);
            }
        }
        drop(bookings);
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// `GET path` on a provider; the body as JSON.
fn http_get(address: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|error| error.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| error.to_string())?;
    let mut response = String::new();
    stream
        .take(64 * 1024 * 1024)
        .read_to_string(&mut response)
        .map_err(|error| error.to_string())?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or("no HTTP body")?;
    serde_json::from_str(body).map_err(|error| error.to_string())
}

/// Waits until no provider lists a prepared transaction (the nodes finished them all).
async fn wait_settled(providers: &[(&'static str, SocketAddr)]) -> bool {
    let started = Instant::now();
    loop {
        let mut held = 0;
        for (_, address) in providers {
            match http_get(*address, "/dtx/prepared") {
                Ok(body) => held += body["prepared"].as_array().map_or(0, Vec::len),
                Err(_) => held += 1,
            }
        }
        if held == 0 {
            println!("  settled after {:.1?}", started.elapsed());
            return true;
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            println!("  still {held} prepared after {SETTLE_TIMEOUT:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Which trips' records exist in dtx (read back for every trip the client saw commit or
/// could not learn the outcome of).
async fn read_trips(client: &Client, bookings: &Bookings) -> BTreeSet<String> {
    let mut present = BTreeSet::new();
    let trips: Vec<&String> = bookings.committed.iter().chain(&bookings.unknown).collect();
    for chunk in trips.chunks(64) {
        let operations = chunk
            .iter()
            .map(|trip| Operation::Read {
                key: Key::new(format!("trips/{trip}")),
                expected: None,
            })
            .collect();
        for _attempt in 0..20 {
            match client.run(Vec::clone(&operations)).await {
                Ok(committed) => {
                    for trip in chunk {
                        if committed.value(&format!("trips/{trip}")).is_some() {
                            present.insert((*trip).clone());
                        }
                    }
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    present
}

/// The audit, from the providers' own state: all three or none for every trip, nothing
/// over-sold or held, every committed trip sold.
fn audit(
    providers: &[(&'static str, SocketAddr)],
    bookings: &Bookings,
    trips_present: &BTreeSet<String>,
    settled: bool,
) -> bool {
    let mut passed = true;
    let mut check = |holds: bool, what: String| {
        println!("  {} {what}", if holds { "ok  " } else { "FAIL" });
        passed &= holds;
    };
    check(
        settled,
        "every provider finished every transaction (none left prepared)".to_string(),
    );
    let mut sold_trips: Vec<BTreeSet<String>> = Vec::new();
    for (name, address) in providers {
        let state = match http_get(*address, "/dtx/state") {
            Ok(state) => state,
            Err(error) => {
                check(false, format!("{name}: state unreadable: {error}"));
                continue;
            }
        };
        let held = state["held"].as_array().map_or(0, Vec::len);
        check(
            held == 0,
            format!("{name}: nothing held ({held} units held)"),
        );
        let mut trips = BTreeSet::new();
        let mut per_item: BTreeMap<String, u64> = BTreeMap::new();
        let mut twice = 0;
        for unit in state["sold"].as_array().into_iter().flatten() {
            let trip = unit["trip"].as_str().unwrap_or_default().to_string();
            if !trips.insert(trip) {
                twice += 1;
            }
            *per_item
                .entry(unit["item"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
        check(
            twice == 0,
            format!("{name}: no trip sold twice ({twice} repeats)"),
        );
        let oversold: Vec<String> = per_item
            .iter()
            .filter(|(item, sold)| **sold > state["inventory"][item.as_str()].as_u64().unwrap_or(0))
            .map(|(item, sold)| format!("{item}: {sold}"))
            .collect();
        check(
            oversold.is_empty(),
            format!("{name}: no item sold beyond its inventory {oversold:?}"),
        );
        sold_trips.push(trips);
    }
    if sold_trips.len() == providers.len() {
        let everywhere: BTreeSet<&String> = sold_trips.iter().flatten().collect();
        let partial: Vec<&&String> = everywhere
            .iter()
            .filter(|trip| !sold_trips.iter().all(|sold| sold.contains(**trip)))
            .collect();
        check(
            partial.is_empty(),
            format!(
                "every trip sold at all three providers or at none ({} partial{})",
                partial.len(),
                partial
                    .first()
                    .map(|trip| format!(", e.g. {trip}"))
                    .unwrap_or_default()
            ),
        );
        let missing: Vec<&String> = bookings
            .committed
            .iter()
            .filter(|trip| !sold_trips[0].contains(*trip) || !trips_present.contains(*trip))
            .collect();
        check(
            missing.is_empty(),
            format!(
                "every trip the client saw commit is sold and recorded ({} missing)",
                missing.len()
            ),
        );
        let unrecorded: Vec<&&String> = everywhere
            .iter()
            .filter(|trip| !trips_present.contains(**trip))
            .collect();
        check(
            unrecorded.is_empty(),
            format!(
                "every sold trip has its dtx trip record ({} without)",
                unrecorded.len()
            ),
        );
    }
    passed
}

fn report(bookings: &Bookings, elapsed: Duration) {
    let mut latencies = bookings.latencies_us.clone();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[index] as f64 / 1000.0
    };
    let aborted: u64 = bookings.aborted.values().sum();
    println!(
        "trips: {} committed ({:.1}/s), {} aborted, {} unknown in {:.1?}; committed latency p50 {:.1} ms, p99 {:.1} ms",
        bookings.committed.len(),
        bookings.committed.len() as f64 / elapsed.as_secs_f64(),
        aborted,
        bookings.unknown.len(),
        elapsed,
        percentile(0.5),
        percentile(0.99),
    );
    let mut reasons: Vec<(&String, &u64)> = bookings.aborted.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    for (reason, count) in reasons.iter().take(8) {
        println!("  aborted {count:>5}x: {reason}");
    }
}
