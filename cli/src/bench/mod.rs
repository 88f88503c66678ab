//! Closed-loop workloads over a running cluster, shared by `dtx bench` and `dtx demo`.
//!
//! * `register`: each transaction touches two keys owned by two different data nodes,
//!   reading or writing each (writes carry unique values, so the history can be checked
//!   by Elle-style rw-register checkers).
//! * `bank`: a transfer is one interactive transaction over two accounts on two
//!   different nodes: read both (in parallel, under shared locks), write both, commit.
//!   Money must be conserved: `total_before == total_after`.
//! * `orders` (seed 003's e-commerce): an order reads stock and balance, then one
//!   transaction reserves stock on `inventory`, charges `payment` and creates the shipment
//!   on `shipping`. No order may be partial.
//! * `transfer`: a one-shot transfer: read both balances, then one transaction that
//!   writes both only if neither version changed since (no locks held between the two).
//!   Money must be conserved.
//!
//! Every workload can record a Jepsen/Elle history (`--history`); only `register`'s
//! carries the values read and written (the others record each unit's outcome and time).

pub mod cpu;
mod history;
pub mod plot;

use self::cpu::Costs;
use self::history::{history_line, write_history};
use dtx_node::client::{Client, CommitError, Committed};
use dtx_node::config::ClusterConfig;
use dtx_protocol::{BeginError, ExecuteError, Key, NodeId, Operation, Rng, Value, Version};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Accounts the bank workload uses by default.
pub const BANK_ACCOUNTS_DEFAULT: usize = 1000;
/// Initial balance of each account.
pub const BANK_INITIAL_BALANCE: i64 = 1000;
/// Keys of the register workload.
pub const REGISTER_KEYS_DEFAULT: usize = 1000;
/// Products of the orders workload.
pub const PRODUCTS: usize = 50;
/// Customers of the orders workload.
pub const CUSTOMERS: usize = 50;
/// Initial stock per product.
pub const INITIAL_STOCK: i64 = 1_000_000;
/// Initial balance per customer.
pub const INITIAL_CUSTOMER_BALANCE: i64 = 1_000_000_000;
/// Price of every product.
pub const PRICE: i64 = 10;
/// Keys per transaction when loading or auditing data.
pub const KEYS_PER_AUDIT_TXN: usize = 200;
/// Most concurrent workers.
pub const CLIENTS_MAX: usize = 4096;
/// Longest latency the histogram tells apart (an hour); longer ones count as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits of every recorded latency (0.1 % resolution: the
/// histogram's memory stays about 180 KiB whatever the run's length).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Money transfers between two accounts on two nodes.
    Bank,
    /// Reads and unique writes of two keys on two nodes.
    Register,
    /// Orders over inventory, payment and shipping.
    Orders,
    /// One-shot transfers with version checks (optimistic, no locks between read and
    /// write).
    Transfer,
}

/// Why a benchmark failed to run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setup or audit transactions kept failing.
    #[error("{stage} failed: {cause}")]
    Transaction {
        /// What was being done.
        stage: &'static str,
        /// The last error.
        cause: CommitError,
    },
    /// A stored value is not what the workload wrote.
    #[error("key {key} holds {value:?}, not a number")]
    NotANumber {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// The history file could not be written.
    #[error("cannot write history {path}: {cause}")]
    History {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

/// Live counters, readable while the workload runs (the demo prints them).
#[derive(Debug, Default)]
pub struct Progress {
    /// Units committed.
    pub committed: AtomicU64,
    /// Units aborted.
    pub aborted: AtomicU64,
    /// Units whose outcome the client could not learn.
    pub unknown: AtomicU64,
    /// Units aborted, by the kind of their reason (see [`abort_kind`]): a bounded map,
    /// one entry per kind.
    pub aborts_by_reason: Mutex<BTreeMap<&'static str, u64>>,
}

impl Progress {
    /// Counts one aborted unit of kind `kind`.
    fn count_abort(&self, kind: &'static str) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
        let mut counts = self
            .aborts_by_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(kind).or_default();
        *count = count.saturating_add(1);
    }
}

/// The kind of an abort whose reason did not reach the client.
pub const ABORT_UNEXPLAINED: &str = "unexplained";

/// The workload itself gave up the unit (insufficient funds, out of stock): the same
/// label as a client's own abort.
pub const ABORT_BY_WORKLOAD: &str = "client_aborted";

/// The short label an abort is counted under in [`BenchReport::aborts_by_reason`]: the
/// reason's [`dtx_protocol::AbortReason::kind`] when the cluster gave one, otherwise why
/// the client could not start or continue the transaction.
pub fn abort_kind(error: &CommitError) -> &'static str {
    match error {
        CommitError::Aborted {
            reason: Some(reason),
            ..
        } => reason.kind(),
        CommitError::Aborted { reason: None, .. } => ABORT_UNEXPLAINED,
        CommitError::Begin(BeginError::ParticipantSuspected { .. })
        | CommitError::Execute(ExecuteError::OwnerSuspected { .. }) => "participant_suspected",
        CommitError::Begin(BeginError::ParticipantLeft { .. })
        | CommitError::Execute(ExecuteError::OwnerLeft { .. }) => "participant_left",
        CommitError::Begin(_) => "begin_refused",
        CommitError::Execute(_) => "execute_refused",
        CommitError::Refused { .. } => "refused",
        CommitError::Unknown { .. } | CommitError::Stopped | CommitError::Membership(_) => {
            ABORT_UNEXPLAINED
        }
    }
}

/// How one unit of work ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitOutcome {
    /// Committed.
    Committed,
    /// Aborted (nothing written).
    Aborted,
    /// Unknown outcome.
    Unknown,
}

/// An order a worker attempted: its shipment key and how it ended.
#[derive(Clone, Debug)]
pub struct OrderAttempt {
    /// `shipping/order-...`.
    pub shipment_key: String,
    /// Product key.
    pub product_key: String,
    /// Customer key.
    pub customer_key: String,
    /// How the order transaction ended (`None`: it was never sent).
    pub outcome: Option<UnitOutcome>,
}

/// What one workload run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The workload.
    pub workload: Workload,
    /// Concurrent closed-loop workers.
    pub clients: usize,
    /// Measured duration (seconds).
    pub duration_s: f64,
    /// Units committed.
    pub committed: u64,
    /// Units aborted.
    pub aborted: u64,
    /// Units whose outcome is unknown.
    pub errors: u64,
    /// Units aborted, by the kind of their reason (see [`abort_kind`]).
    pub aborts_by_reason: BTreeMap<String, u64>,
    /// Committed units per second.
    pub tps: f64,
    /// Median latency of a unit (milliseconds).
    pub p50_ms: f64,
    /// 99th percentile latency (milliseconds).
    pub p99_ms: f64,
    /// CPU time, messages and fsyncs per committed unit over the measured window (see
    /// [`cpu`]).
    #[serde(flatten)]
    pub costs: Costs,
    /// Bank: the sum of balances before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_before: Option<i64>,
    /// Bank: the sum of balances after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_after: Option<i64>,
    /// Orders attempted (orders workload; for audits).
    #[serde(skip)]
    pub orders: Vec<OrderAttempt>,
}

/// How to run a workload.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The workload.
    pub workload: Workload,
    /// Concurrent closed-loop workers.
    pub clients: usize,
    /// How long to run.
    pub duration: Duration,
    /// Write a Jepsen/Elle JSON-lines history here.
    pub history: Option<PathBuf>,
    /// Accounts (bank) or keys (register).
    pub keys: usize,
    /// Load initial data first.
    pub setup: bool,
    /// Seed for key choice.
    pub seed: u64,
    /// Total units per second over all workers (paced); `None` runs closed loop.
    pub rate: Option<f64>,
    /// Bank: read the two balances under shared locks (upgraded at commit) instead of for
    /// update (exclusive locks taken at the read, as PostgreSQL's `UPDATE` takes them).
    pub shared_reads: bool,
}

impl BenchOptions {
    /// Defaults for `workload`.
    pub fn new(workload: Workload) -> BenchOptions {
        BenchOptions {
            workload,
            clients: 8,
            duration: Duration::from_secs(10),
            history: None,
            keys: match workload {
                Workload::Register => REGISTER_KEYS_DEFAULT,
                _ => BANK_ACCOUNTS_DEFAULT,
            },
            setup: true,
            seed: 1,
            rate: None,
            shared_reads: false,
        }
    }
}

/// Account key `index` of the bank workload.
pub fn account_key(index: usize) -> String {
    format!("acct-{index}")
}

fn product_key(index: usize) -> String {
    format!("inventory/sku-{index}")
}

fn customer_key(index: usize) -> String {
    format!("payment/cust-{index}")
}

/// Runs a transaction until it commits (setup and audits); aborts from lock conflicts
/// with the workload's stragglers are retried.
async fn run_until_committed(
    client: &Client,
    operations: Vec<Operation>,
    stage: &'static str,
) -> Result<Committed, BenchError> {
    let mut last = None;
    for attempt in 0..50u64 {
        match client.run(operations.clone()).await {
            Ok(committed) => return Ok(committed),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(20 * (attempt + 1).min(10))).await;
    }
    Err(BenchError::Transaction {
        stage,
        cause: last.unwrap_or(CommitError::Stopped),
    })
}

/// Writes `values` in chunks.
pub async fn load(client: &Client, values: Vec<(String, i64)>) -> Result<(), BenchError> {
    for chunk in values.chunks(KEYS_PER_AUDIT_TXN) {
        let operations = chunk
            .iter()
            .map(|(key, value)| Operation::Write {
                key: Key::new(key.clone()),
                value: Value::new(value.to_string().into_bytes()),
            })
            .collect();
        run_until_committed(client, operations, "loading initial data").await?;
    }
    Ok(())
}

/// Reads `keys` in chunks; absent keys are missing from the map.
pub async fn read_all(
    client: &Client,
    keys: &[String],
) -> Result<BTreeMap<String, String>, BenchError> {
    let mut values = BTreeMap::new();
    for chunk in keys.chunks(KEYS_PER_AUDIT_TXN) {
        let operations = chunk
            .iter()
            .map(|key| Operation::Read {
                key: Key::new(key.clone()),
                expected: None,
            })
            .collect();
        let committed = run_until_committed(client, operations, "reading data").await?;
        for read in committed.reads {
            if let Some(value) = read.value {
                values.insert(read.key.0, String::from_utf8_lossy(&value.0).into_owned());
            }
        }
    }
    Ok(values)
}

/// Parses a stored integer.
pub fn number(key: &str, value: &str) -> Result<i64, BenchError> {
    value.trim().parse().map_err(|_| BenchError::NotANumber {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Sums integer values of `keys` (absent keys count 0).
pub async fn total(client: &Client, keys: &[String]) -> Result<i64, BenchError> {
    let values = read_all(client, keys).await?;
    let mut sum = 0i64;
    for (key, value) in &values {
        sum += number(key, value)?;
    }
    Ok(sum)
}

/// Loads the workload's initial data.
pub async fn setup(client: &Client, options: &BenchOptions) -> Result<(), BenchError> {
    match options.workload {
        Workload::Bank | Workload::Transfer => {
            let values = (0..options.keys)
                .map(|index| (account_key(index), BANK_INITIAL_BALANCE))
                .collect();
            load(client, values).await
        }
        Workload::Register => Ok(()),
        Workload::Orders => {
            let mut values: Vec<(String, i64)> = (0..PRODUCTS)
                .map(|index| (product_key(index), INITIAL_STOCK))
                .collect();
            values.extend(
                (0..CUSTOMERS).map(|index| (customer_key(index), INITIAL_CUSTOMER_BALANCE)),
            );
            load(client, values).await
        }
    }
}

/// Runs the workload with `options.clients` closed-loop workers over one client peer.
pub async fn run(
    client: &Client,
    config: &ClusterConfig,
    options: &BenchOptions,
    progress: Arc<Progress>,
) -> Result<BenchReport, BenchError> {
    if options.clients == 0 || options.clients > CLIENTS_MAX {
        return Err(BenchError::Options(format!(
            "--clients must be between 1 and {CLIENTS_MAX}"
        )));
    }
    if options.keys < 2 {
        return Err(BenchError::Options(
            "at least 2 keys are needed".to_string(),
        ));
    }
    if options.setup {
        setup(client, options).await?;
    }
    let accounts: Vec<String> = (0..options.keys).map(account_key).collect();
    let total_before = match options.workload {
        Workload::Bank | Workload::Transfer => Some(total(client, &accounts).await?),
        _ => None,
    };
    let pace = match options.rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => Some(Duration::from_secs_f64(
            (options.clients as f64 / rate).min(3600.0),
        )),
        Some(rate) if rate != 0.0 => {
            return Err(BenchError::Options(format!(
                "the rate must be a positive number of units per second, not {rate}"
            )))
        }
        _ => None,
    };
    // One histogram for every worker: bounded memory however long the run, instead of
    // a list of every latency.
    let latencies = Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .map_err(|error| BenchError::Options(format!("latency histogram: {error}")))?;
    let latencies = Arc::new(Mutex::new(latencies));
    let counters_before = cpu::sample(config).await;
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut workers = Vec::new();
    for worker in 0..options.clients {
        let context = Worker {
            client: client.clone(),
            owners: Owners::new(config),
            workload: options.workload,
            keys: options.keys,
            rng: Rng::new(options.seed.wrapping_mul(0x9e37_79b9) ^ worker as u64),
            worker,
            progress: Arc::clone(&progress),
            latencies: Arc::clone(&latencies),
            started,
            record_history: options.history.is_some(),
            abort_kind: None,
            abort_reason: None,
            pace,
            shared_reads: options.shared_reads,
        };
        workers.push(tokio::spawn(context.run(deadline)));
    }
    let mut results = Vec::new();
    for handle in workers {
        match handle.await {
            Ok(result) => results.push(result),
            Err(error) => tracing::error!(%error, "a workload worker failed"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counters_after = cpu::sample(config).await;
    let (p50_ms, p99_ms) = {
        let latencies = latencies.lock().unwrap_or_else(PoisonError::into_inner);
        (
            percentile_ms(&latencies, 0.50),
            percentile_ms(&latencies, 0.99),
        )
    };
    let committed = progress.committed.load(Ordering::Relaxed);
    let total_after = match options.workload {
        Workload::Bank | Workload::Transfer => Some(total(client, &accounts).await?),
        _ => None,
    };
    if let Some(path) = &options.history {
        write_history(path, &results)?;
    }
    Ok(BenchReport {
        workload: options.workload,
        clients: options.clients,
        duration_s: elapsed,
        committed,
        aborted: progress.aborted.load(Ordering::Relaxed),
        errors: progress.unknown.load(Ordering::Relaxed),
        aborts_by_reason: progress
            .aborts_by_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(kind, count)| ((*kind).to_string(), *count))
            .collect(),
        tps: committed as f64 / elapsed.max(1e-9),
        p50_ms,
        p99_ms,
        costs: Costs::between(&counters_before, &counters_after, committed),
        total_before,
        total_after,
        orders: results
            .into_iter()
            .flat_map(|result| result.orders)
            .collect(),
    })
}

/// The `quantile` of a histogram of microsecond latencies, in milliseconds (0 if empty).
pub fn percentile_ms(latencies_us: &Histogram<u64>, quantile: f64) -> f64 {
    if latencies_us.is_empty() {
        return 0.0;
    }
    latencies_us.value_at_quantile(quantile) as f64 / 1000.0
}

/// Key choice that guarantees two distinct owners.
#[derive(Clone)]
struct Owners {
    config: ClusterConfig,
}

impl Owners {
    fn new(config: &ClusterConfig) -> Owners {
        Owners {
            config: config.clone(),
        }
    }

    fn owner(&self, key: &str) -> NodeId {
        self.config.cluster.owner(&Key::new(key))
    }

    /// Two key indexes below `count` whose keys (`name(i)`) live on different nodes.
    fn pair(&self, rng: &mut Rng, count: usize, name: fn(usize) -> String) -> (usize, usize) {
        let first = rng.below(count as u64) as usize;
        for _ in 0..64 {
            let second = rng.below(count as u64) as usize;
            if second != first && self.owner(&name(first)) != self.owner(&name(second)) {
                return (first, second);
            }
        }
        // A one-node cluster: any other key.
        (first, (first + 1) % count)
    }
}

fn register_key(index: usize) -> String {
    format!("reg-{index}")
}

struct Worker {
    client: Client,
    owners: Owners,
    workload: Workload,
    keys: usize,
    rng: Rng,
    worker: usize,
    progress: Arc<Progress>,
    /// Latencies of committed units (microseconds), shared by every worker of the run.
    latencies: Arc<Mutex<Histogram<u64>>>,
    started: Instant,
    record_history: bool,
    /// Why the unit that just returned [`UnitOutcome::Aborted`] aborted (see
    /// [`abort_kind`]); taken when it is counted.
    abort_kind: Option<&'static str>,
    /// The error that ended the last unit without a commit (for the history).
    abort_reason: Option<String>,
    /// Paced: one unit per this long per worker.
    pace: Option<Duration>,
    /// Bank: shared-lock reads instead of reads for update.
    shared_reads: bool,
}

#[derive(Default)]
struct WorkerResult {
    orders: Vec<OrderAttempt>,
    history: Vec<serde_json::Value>,
}

fn outcome_of<T>(result: &Result<T, CommitError>) -> UnitOutcome {
    match result {
        Ok(_) => UnitOutcome::Committed,
        // Refused before anything was sent (e.g. a participant is suspected: fail fast):
        // certainly not committed, so it counts as aborted, not as unknown.
        Err(CommitError::Aborted { .. } | CommitError::Begin(_) | CommitError::Execute(_)) => {
            UnitOutcome::Aborted
        }
        Err(_) => UnitOutcome::Unknown,
    }
}

impl Worker {
    async fn run(mut self, deadline: Instant) -> WorkerResult {
        let mut result = WorkerResult::default();
        let mut sequence = 0u64;
        // Paced workers start spread over one period, not all at once.
        let mut next_start = Instant::now()
            + self.pace.map_or(Duration::ZERO, |pace| {
                pace.mul_f64(self.rng.below(1000) as f64 / 1000.0)
            });
        while Instant::now() < deadline {
            if let Some(pace) = self.pace {
                if next_start >= deadline {
                    break;
                }
                tokio::time::sleep_until(next_start.into()).await;
                next_start += pace;
            }
            sequence += 1;
            let began = Instant::now();
            // Register records its own lines (with the values read).
            let generic_history = self.record_history && self.workload != Workload::Register;
            if generic_history {
                let invoke = history_line("invoke", self.worker, self.now_ns(), &[], None);
                result.history.push(invoke);
            }
            let outcome = match self.workload {
                Workload::Register => self.register(sequence, &mut result).await,
                Workload::Bank => self.transfer().await,
                Workload::Orders => self.order(sequence, &mut result).await,
                Workload::Transfer => self.one_shot_transfer().await,
            };
            let reason = self.abort_reason.take();
            if generic_history {
                let kind = match outcome {
                    UnitOutcome::Committed => "ok",
                    UnitOutcome::Aborted => "fail",
                    UnitOutcome::Unknown => "info",
                };
                let mut line = history_line(kind, self.worker, self.now_ns(), &[], None);
                if let Some(reason) = reason {
                    line["error"] = serde_json::Value::String(reason);
                }
                result.history.push(line);
            }
            let kind = self.abort_kind.take();
            match outcome {
                UnitOutcome::Committed => {
                    let latency_us = began.elapsed().as_micros() as u64;
                    self.latencies
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .saturating_record(latency_us);
                    self.progress.committed.fetch_add(1, Ordering::Relaxed);
                }
                UnitOutcome::Aborted => {
                    self.progress.count_abort(kind.unwrap_or(ABORT_UNEXPLAINED))
                }
                UnitOutcome::Unknown => {
                    self.progress.unknown.fetch_add(1, Ordering::Relaxed);
                }
            }
            if outcome != UnitOutcome::Committed && began.elapsed() < Duration::from_millis(1) {
                // Refused at once (a participant is down and suspected): back off instead
                // of spinning on refusals until the detector trusts it again.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        result
    }

    /// How `result` ends the unit, noting an abort's kind for the count.
    fn judge<T>(&mut self, result: &Result<T, CommitError>) -> UnitOutcome {
        let outcome = outcome_of(result);
        if let (UnitOutcome::Aborted, Err(error)) = (outcome, result) {
            self.abort_kind = Some(abort_kind(error));
        }
        if let Err(error) = result {
            self.abort_reason = Some(error.to_string());
        }
        outcome
    }

    /// The workload gave up the unit itself.
    fn give_up(&mut self) -> UnitOutcome {
        self.abort_kind = Some(ABORT_BY_WORKLOAD);
        self.abort_reason = Some("given up by the workload (insufficient funds or stock)".into());
        UnitOutcome::Aborted
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    async fn register(&mut self, sequence: u64, result: &mut WorkerResult) -> UnitOutcome {
        let (first, second) = self.owners.pair(&mut self.rng, self.keys, register_key);
        let mut operations = Vec::new();
        for index in [first, second] {
            let key = Key::new(register_key(index));
            if self.rng.chance(0.5) {
                operations.push(Operation::Read {
                    key,
                    expected: None,
                });
            } else {
                let value = format!("{}-{sequence}", self.worker);
                operations.push(Operation::Write {
                    key,
                    value: Value::new(value.into_bytes()),
                });
            }
        }
        if self.record_history {
            let invoke = history_line("invoke", self.worker, self.now_ns(), &operations, None);
            result.history.push(invoke);
        }
        let outcome = self.client.run(operations.clone()).await;
        if self.record_history {
            let (kind, committed) = match (&outcome, outcome_of(&outcome)) {
                (Ok(committed), _) if !committed.reads_lost => ("ok", Some(committed)),
                // Aborted, or refused before anything was sent: certainly not committed.
                (Err(_), UnitOutcome::Aborted) => ("fail", None),
                _ => ("info", None),
            };
            let mut line = history_line(kind, self.worker, self.now_ns(), &operations, committed);
            if let Err(error) = &outcome {
                line["error"] = serde_json::Value::String(error.to_string());
            }
            result.history.push(line);
        }
        self.judge(&outcome)
    }

    /// Reads two keys; returns their numeric values and versions.
    async fn read_two(
        &mut self,
        first: &str,
        second: &str,
    ) -> Result<[(i64, Version); 2], UnitOutcome> {
        let mut txn = self.client.begin();
        txn.read(first).read(second);
        let committed = match txn.commit().await {
            Ok(committed) => committed,
            Err(error) => return Err(self.judge::<()>(&Err(error))),
        };
        let mut out = [(0, Version(0)); 2];
        for (slot, key) in out.iter_mut().zip([first, second]) {
            let read = committed.read(key).ok_or(UnitOutcome::Unknown)?;
            let text = read
                .value
                .as_ref()
                .and_then(|value| value.as_text())
                .unwrap_or("0");
            *slot = (text.trim().parse().unwrap_or(0), read.version);
        }
        Ok(out)
    }

    /// One interactive transaction: read both balances (in parallel, under shared locks
    /// at their owners), then commit with both writes buffered into the prepares (each
    /// upgraded to exclusive there; a conflicting holder aborts the transfer).
    async fn transfer(&mut self) -> UnitOutcome {
        let (first, second) = self.owners.pair(&mut self.rng, self.keys, account_key);
        let (from, to) = (account_key(first), account_key(second));
        let amount = 1 + self.rng.below(10) as i64;
        let result: Result<bool, CommitError> = async {
            let mut txn = self.client.begin_interactive().await?;
            // Both balances read at once, under the exclusive locks the writes will need
            // (`--shared-reads`: shared locks, which two transfers of one account can hold
            // together and then neither upgrade at commit, so both abort).
            let read = |key: &str| {
                if self.shared_reads {
                    read_operation(key)
                } else {
                    Operation::ReadForUpdate { key: Key::new(key) }
                }
            };
            let reads = txn.execute_many(vec![read(&from), read(&to)]).await?;
            let balances: Vec<i64> = reads.iter().map(read_number).collect();
            let (Some(from_balance), Some(to_balance)) = (balances.first(), balances.get(1)) else {
                txn.abort().await?;
                return Ok(false);
            };
            if *from_balance < amount {
                txn.abort().await?;
                return Ok(false);
            }
            // The writes travel with the prepares (one round trip instead of two).
            txn.commit_with(vec![
                write_operation(&from, from_balance - amount),
                write_operation(&to, to_balance + amount),
            ])
            .await?;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => UnitOutcome::Committed,
            Ok(false) => self.give_up(),
            Err(error) => self.judge::<()>(&Err(error)),
        }
    }

    /// A one-shot transfer: read both balances, then write both in one transaction that
    /// commits only if neither version changed since the read.
    async fn one_shot_transfer(&mut self) -> UnitOutcome {
        let (first, second) = self.owners.pair(&mut self.rng, self.keys, account_key);
        let (from, to) = (account_key(first), account_key(second));
        let amount = 1 + self.rng.below(10) as i64;
        let [(from_balance, from_version), (to_balance, to_version)] =
            match self.read_two(&from, &to).await {
                Ok(values) => values,
                Err(outcome) => return outcome,
            };
        if from_balance < amount {
            return self.give_up();
        }
        let mut txn = self.client.begin();
        txn.read_expecting(from.as_str(), from_version)
            .read_expecting(to.as_str(), to_version)
            .write(from.as_str(), (from_balance - amount).to_string())
            .write(to.as_str(), (to_balance + amount).to_string());
        let committed = txn.commit().await;
        self.judge(&committed)
    }

    async fn order(&mut self, sequence: u64, result: &mut WorkerResult) -> UnitOutcome {
        let product = product_key(self.rng.below(PRODUCTS as u64) as usize);
        let customer = customer_key(self.rng.below(CUSTOMERS as u64) as usize);
        let shipment = format!(
            "shipping/order-{}-{}-{sequence}",
            self.client.id().0,
            self.worker
        );
        let mut attempt = OrderAttempt {
            shipment_key: shipment.clone(),
            product_key: product.clone(),
            customer_key: customer.clone(),
            outcome: None,
        };
        let [(stock, stock_version), (balance, balance_version)] =
            match self.read_two(&product, &customer).await {
                Ok(values) => values,
                Err(outcome) => return outcome,
            };
        if stock < 1 || balance < PRICE {
            return self.give_up();
        }
        let mut txn = self.client.begin();
        txn.read_expecting(product.as_str(), stock_version)
            .read_expecting(customer.as_str(), balance_version)
            .write(product.as_str(), (stock - 1).to_string())
            .write(customer.as_str(), (balance - PRICE).to_string())
            .write(shipment.as_str(), format!("{product} {customer} {PRICE}"));
        let committed = txn.commit().await;
        let outcome = self.judge(&committed);
        attempt.outcome = Some(outcome);
        result.orders.push(attempt);
        outcome
    }
}

fn read_operation(key: &str) -> Operation {
    Operation::Read {
        key: Key::new(key),
        expected: None,
    }
}

fn write_operation(key: &str, value: i64) -> Operation {
    Operation::Write {
        key: Key::new(key),
        value: Value::new(value.to_string().into_bytes()),
    }
}

/// A read's numeric value: absent counts 0, anything else unparsable counts as none.
fn read_number(read: &Option<dtx_protocol::ReadResult>) -> i64 {
    read.as_ref()
        .and_then(|read| read.value.as_ref())
        .and_then(|value| value.as_text())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_within_its_resolution() {
        let mut latencies =
            Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("histogram bounds");
        assert_eq!(percentile_ms(&latencies, 0.5), 0.0);
        for latency_us in 1..=1000u64 {
            latencies.saturating_record(latency_us * 1000);
        }
        latencies.saturating_record(LATENCY_US_MAX * 10);
        let p50 = percentile_ms(&latencies, 0.50);
        let p99 = percentile_ms(&latencies, 0.99);
        assert!((p50 - 501.0).abs() <= 501.0 * 0.001, "p50 {p50}");
        assert!((p99 - 991.0).abs() <= 991.0 * 0.001, "p99 {p99}");
    }
}
