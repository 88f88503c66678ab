//! Exhaustive model checking of the protocol core with stateright.
//!
//! The production [`dtx_protocol::Node`] and [`dtx_protocol::Client`] run as stateright
//! actors ([`actors`]) over an unordered, duplicating, optionally lossy network, with node
//! crashes that keep only what was persisted ([`system`]). The checker explores every
//! interleaving up to the configured bounds and checks the invariants of PaxosCommit.tla
//! and TCommit.tla with the same pure functions the core asserts
//! ([`dtx_protocol::invariants`]):
//!
//! | property | TLA+ / paper |
//! |---|---|
//! | `TCConsistent` | TCommit.tla `TCConsistent` |
//! | one value chosen per instance | Paxos agreement (PaxosCommit.tla refines TCommit) |
//! | decisions stable | TCommit.tla: committed/aborted are terminal |
//! | acceptor ballots monotonic | PaxosCommit.tla `TypeOK`, `mbal` never decreases, across crashes too |
//! | core assertions hold | the core's own assertions |
//! | sometimes committed / aborted | both outcomes are reachable (non-vacuity) |
//! | every run decides | without loss and crashes, every quiescent state is decided |
//!
//! The liveness property is checked in a separate run without loss and crashes when the
//! configuration has either. A found violation prints a numbered, readable trace
//! ([`trace`]).
//!
//! # Bounds
//! One transaction, one client; at most `crashes` node crashes over a run (each may be
//! followed by a restart from the node's log, or not); at most `timeouts` recovery
//! timeouts over a run, all nodes together; no ballot round above `rounds` (states in
//! which a node wrote a higher `LeaderRound` are outside the model); at most
//! `client_retries` client retries.
//!
//! # Reductions (sound: merged states have the same future behaviour)
//! * stateright 0.31's duplicating network remembers the last delivered message; it is
//!   cleared ([`system`]).
//! * Two disks are one state when a restart rebuilds the same node from them
//!   ([`actors::Disk`]); a crashed node's lost volatile state is one value
//!   ([`actors::ActorState::Down`]).
//! * Frames that can never change anything again are dropped from the network
//!   ([`system`]): to the finished client, and Phase2b/Decision (or requests whose only
//!   answer would be such a frame) to a node whose log holds the outcome.
//! * Deliveries that change nothing and only resend frames already in flight are left out.
//!
//! One abstraction is not a pure reduction: the node's early-Phase2b buffer takes
//! duplicates, so a duplicating network could grow it (and the state space) to its bound;
//! the model delivers each such frame once while it is buffered (see
//! [`actors::NodeState::early_phase2b`]). Every actor step is cached per thread
//! ([`memo`]): a speed-up only, steps are deterministic.
//!
//! Reference: Gray & Lamport, "Consensus on Transaction Commit", ACM TODS 2006; TLC on
//! PaxosCommit.cfg (2 RMs, 3 acceptors, ballots {0, 1}) explores 1,321,761 distinct states.

pub mod actors;
pub mod cached;
pub mod config;
pub mod memo;
mod panics;
pub mod system;
pub mod trace;

pub use config::{parse_bug, ModelConfig, ModelConfigError};
pub use system::CommitModel;

use serde::Serialize;
use stateright::report::{ReportData, ReportDiscovery, Reporter};
use stateright::{Checker, Expectation, HasDiscoveries, Model, Property};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Command-line arguments of `dtx-sim check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// RMs (participants) of the checked transaction.
    #[arg(long, default_value_t = 2)]
    pub rms: usize,
    /// Acceptors of the transaction (2F+1); acceptor-only nodes are added when there are
    /// fewer RMs.
    #[arg(long, default_value_t = 3)]
    pub acceptors: usize,
    /// Most node crashes over a run (a crashed node may restart from its log).
    #[arg(long, default_value_t = 1)]
    pub crashes: usize,
    /// Highest recovery ballot round explored (0: no recovery at all).
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Most recovery timeouts over a run, all nodes together (default: one per round).
    #[arg(long)]
    pub timeouts: Option<u32>,
    /// Switch a deliberate bug on in every node (needs `--features bugs`):
    /// acceptor-skips-persist, recovery-ignores-accepted, rm-commits-on-own-vote (this one
    /// shows with 5 acceptors and --aborting-rm; with 3 the protocol masks it).
    #[arg(long)]
    pub bug: Option<String>,
    /// Let the network also lose messages. Safety verdicts do not change: the network
    /// duplicates and never consumes messages, so a lost message is one never delivered,
    /// which the lossless model already explores; loss multiplies the states only.
    #[arg(long)]
    pub lossy: bool,
    /// Send ballot-0 Phase2a to all 2F+1 acceptors instead of the production default, the
    /// first F+1 (`NodeConfig::thrifty`).
    #[arg(long)]
    pub full_phase2a: bool,
    /// Retry timeouts the client may take (resend Prepare, then ask nodes to resolve).
    #[arg(long, default_value_t = 0)]
    pub client_retries: u32,
    /// Let the client choose, nondeterministically, to make the last RM vote Aborted.
    #[arg(long)]
    pub aborting_rm: bool,
    /// Make the last RM a service participant: its external resource answers each
    /// request as a model step of its own and may refuse a prepare.
    #[arg(long)]
    pub external_resource: bool,
    /// One-phase commit (`ClientConfig::one_phase`): with `--rms 1` the transaction has no
    /// acceptors and its RM decides alone; the acceptor-only nodes must never hear of it.
    #[arg(long)]
    pub one_phase: bool,
    /// Skip the separate liveness check (without loss and crashes).
    #[arg(long)]
    pub skip_liveness: bool,
    /// Keep exploring after a property fails (default: stop at the first failure).
    #[arg(long)]
    pub keep_going: bool,
    /// Explore breadth first: the reported depth is then the diameter (shortest distance
    /// to the farthest state), but the frontier needs about 2 KB per state of memory. The
    /// default, depth first, keeps only 8-byte fingerprints and reports the longest path.
    #[arg(long)]
    pub breadth_first: bool,
    /// Checker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many seconds (the result is then marked incomplete).
    #[arg(long)]
    pub timeout_seconds: Option<u64>,
}

impl CheckArgs {
    /// The model configuration the arguments describe.
    pub fn model_config(&self) -> Result<ModelConfig, ModelConfigError> {
        let bug = self.bug.as_deref().map(parse_bug).transpose()?;
        let config = ModelConfig {
            rms: self.rms,
            acceptors: self.acceptors,
            crashes: self.crashes,
            rounds: self.rounds,
            timeouts: self.timeouts.unwrap_or(self.rounds),
            lossy: self.lossy,
            thrifty: !self.full_phase2a,
            client_retries: self.client_retries,
            aborting_rm: self.aborting_rm,
            bug,
            check_liveness: !self.lossy && self.crashes == 0,
            external_resource: self.external_resource,
            one_phase: self.one_phase,
        };
        config.validate()?;
        Ok(config)
    }

    /// The checker options the arguments describe.
    pub fn options(&self) -> CheckOptions {
        CheckOptions {
            threads: self.threads.unwrap_or_else(default_threads),
            timeout: self.timeout_seconds.map(Duration::from_secs),
            stop_at_first_failure: !self.keep_going,
            depth_first: !self.breadth_first,
            progress: true,
        }
    }
}

/// How to run the checker.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Worker threads.
    pub threads: usize,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Stop as soon as an `always` property fails.
    pub stop_at_first_failure: bool,
    /// Depth-first (little memory) instead of breadth-first (depth = diameter) search.
    pub depth_first: bool,
    /// Print a progress line to stderr every few seconds.
    pub progress: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            threads: default_threads(),
            timeout: None,
            stop_at_first_failure: true,
            depth_first: true,
            progress: false,
        }
    }
}

/// The verdict on one property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// `always`: no reachable state violates it.
    Holds,
    /// `always`: a counterexample was found.
    Violated,
    /// `sometimes`: an example was found.
    ExampleFound,
    /// `sometimes`: no reachable state satisfies it.
    NoExample,
    /// The exploration stopped before it could tell.
    Unknown,
}

impl Verdict {
    /// True for the verdicts a correct protocol should get.
    pub fn is_good(self) -> bool {
        matches!(self, Verdict::Holds | Verdict::ExampleFound)
    }
}

/// The result for one property.
#[derive(Clone, Debug, Serialize)]
pub struct PropertyReport {
    /// The property's name.
    pub name: &'static str,
    /// Its verdict.
    pub verdict: Verdict,
    /// Steps of the counterexample or example, if one was found.
    pub trace_length: Option<usize>,
    /// The readable trace, if one was found.
    #[serde(skip)]
    pub trace: Option<String>,
}

/// The result of one exhaustive check.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// What was checked.
    pub config: ModelConfig,
    /// `depth_first` or `breadth_first`.
    pub search: &'static str,
    /// Distinct states explored.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub total_states: usize,
    /// The deepest state's distance from the initial state.
    pub max_depth: usize,
    /// Wall-clock time.
    pub seconds: f64,
    /// True if the whole reachable state space was explored (no time limit hit, no early
    /// stop at a failure).
    pub complete: bool,
    /// Per-property results, in the model's order.
    pub properties: Vec<PropertyReport>,
}

impl CheckReport {
    /// True if every property got a good verdict.
    pub fn all_hold(&self) -> bool {
        self.properties
            .iter()
            .all(|property| property.verdict.is_good())
    }

    /// The report on the property called `name`.
    pub fn property(&self, name: &str) -> Option<&PropertyReport> {
        self.properties
            .iter()
            .find(|property| property.name == name)
    }

    /// The names of the `always` properties that were violated.
    pub fn violated(&self) -> Vec<&'static str> {
        self.properties
            .iter()
            .filter(|property| property.verdict == Verdict::Violated)
            .map(|property| property.name)
            .collect()
    }
}

/// Explores the model of `config` exhaustively; traces are shortened before they are
/// rendered.
pub fn check(
    config: &ModelConfig,
    options: &CheckOptions,
) -> Result<CheckReport, ModelConfigError> {
    let model = CommitModel::new(config.clone())?;
    let properties = model.properties();
    let mut builder = model.checker().threads(options.threads.max(1));
    if let Some(timeout) = options.timeout {
        builder = builder.timeout(timeout);
    }
    if options.stop_at_first_failure {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let started = Instant::now();
    if options.depth_first {
        let checker = finish(builder.spawn_dfs(), options);
        return Ok(summarize(
            config,
            options,
            &properties,
            &checker,
            started.elapsed(),
        ));
    }
    let checker = finish(builder.spawn_bfs(), options);
    Ok(summarize(
        config,
        options,
        &properties,
        &checker,
        started.elapsed(),
    ))
}

/// Waits for the checker, printing progress if asked to.
fn finish<C>(checker: C, options: &CheckOptions) -> C
where
    C: Checker<CommitModel> + Send + Sync,
{
    if options.progress {
        checker.join_and_report(&mut Progress {
            printed: Duration::ZERO,
        })
    } else {
        checker.join()
    }
}

/// Prints a progress line to stderr every ten seconds.
struct Progress {
    /// When the last line was printed (since the start).
    printed: Duration,
}

impl Reporter<CommitModel> for Progress {
    fn report_checking(&mut self, data: ReportData) {
        if !data.done && data.duration >= self.printed + PROGRESS_INTERVAL {
            self.printed = data.duration;
            eprintln!(
                "   ... {} unique states ({} generated), depth {}, {} s",
                data.unique_states,
                data.total_states,
                data.max_depth,
                data.duration.as_secs()
            );
        }
    }

    fn report_discoveries(
        &mut self,
        _model: &CommitModel,
        _discoveries: BTreeMap<&'static str, ReportDiscovery<CommitModel>>,
    ) {
        // The report prints shortened, readable traces instead.
    }

    fn delay(&self) -> Duration {
        PROGRESS_POLL
    }
}

/// How often progress is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// How often the reporter looks at the checker (bounds the time lost after it is done).
const PROGRESS_POLL: Duration = Duration::from_millis(100);

/// Turns a finished checker into a report, with shortened, rendered traces.
fn summarize(
    config: &ModelConfig,
    options: &CheckOptions,
    properties: &[Property<CommitModel>],
    checker: &impl Checker<CommitModel>,
    elapsed: Duration,
) -> CheckReport {
    let discoveries = checker.discoveries();
    let failed = properties.iter().any(|property| {
        property.expectation != Expectation::Sometimes && discoveries.contains_key(property.name)
    });
    let timed_out = options.timeout.is_some_and(|timeout| elapsed >= timeout);
    let stopped_early = failed && options.stop_at_first_failure;
    let complete = !timed_out && !stopped_early;
    let model = checker.model();
    let reports = properties
        .iter()
        .map(|property| {
            let found = discoveries
                .get(property.name)
                .map(|path| trace::shorten(model, property, path));
            let found = found.as_ref();
            let verdict = match (&property.expectation, found.is_some(), complete) {
                (Expectation::Sometimes, true, _) => Verdict::ExampleFound,
                (Expectation::Sometimes, false, true) => Verdict::NoExample,
                (_, true, _) => Verdict::Violated,
                (_, false, true) => Verdict::Holds,
                (_, false, false) => Verdict::Unknown,
            };
            PropertyReport {
                name: property.name,
                verdict,
                trace_length: found.map(trace::path_length),
                trace: found.map(|path| trace::render(model, path)),
            }
        })
        .collect();
    CheckReport {
        config: config.clone(),
        search: if options.depth_first {
            "depth_first"
        } else {
            "breadth_first"
        },
        unique_states: checker.unique_state_count(),
        total_states: checker.state_count(),
        max_depth: checker.max_depth(),
        seconds: elapsed.as_secs_f64(),
        complete,
        properties: reports,
    }
}

/// Runs `dtx-sim check`: the configured model, then (unless the configuration is already
/// lossless and crash-free, or `--skip-liveness`) the liveness check. Prints each result
/// and, last, one JSON line. Returns true if every property holds.
pub fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    let config = args.model_config()?;
    let options = args.options();
    let report = check(&config, &options)?;
    print_report("safety", &report);
    let liveness = if config.check_liveness || args.skip_liveness {
        None
    } else {
        let liveness = check(&config.liveness_variant(), &options)?;
        print_report("liveness (no loss, no crash)", &liveness);
        Some(liveness)
    };
    let all_hold = report.all_hold() && liveness.as_ref().is_none_or(CheckReport::all_hold);
    let summary = serde_json::json!({
        "configuration": &report.config,
        "search": report.search,
        "unique_states": report.unique_states,
        "total_states": report.total_states,
        "max_depth": report.max_depth,
        "seconds": report.seconds,
        "complete": report.complete,
        "properties": verdicts(&report),
        "trace_lengths": trace_lengths(&report),
        "liveness": liveness.as_ref().map(|liveness| serde_json::json!({
            "unique_states": liveness.unique_states,
            "max_depth": liveness.max_depth,
            "seconds": liveness.seconds,
            "complete": liveness.complete,
            "properties": verdicts(liveness),
        })),
        "all_hold": all_hold,
    });
    println!("{summary}");
    Ok(all_hold)
}

fn verdicts(report: &CheckReport) -> BTreeMap<&'static str, Verdict> {
    report
        .properties
        .iter()
        .map(|property| (property.name, property.verdict))
        .collect()
}

fn trace_lengths(report: &CheckReport) -> BTreeMap<&'static str, usize> {
    report
        .properties
        .iter()
        .filter_map(|property| Some((property.name, property.trace_length?)))
        .collect()
}

/// Prints a report for people: figures, verdicts, and the trace of every violation.
pub fn print_report(title: &str, report: &CheckReport) {
    println!("== {title}: {}", report.config.describe());
    let depth = if report.search == "depth_first" {
        "longest path"
    } else {
        "diameter"
    };
    println!(
        "   {} unique states ({} generated), max depth {} ({depth}), {:.1} s, {}",
        report.unique_states,
        report.total_states,
        report.max_depth,
        report.seconds,
        if report.complete {
            "complete"
        } else {
            "INCOMPLETE (stopped early)"
        }
    );
    for property in &report.properties {
        let length = property
            .trace_length
            .map_or(String::new(), |length| format!(" ({length} steps)"));
        println!("   {:<30} {:?}{length}", property.name, property.verdict);
    }
    for property in &report.properties {
        if property.verdict == Verdict::Violated {
            if let Some(trace) = &property.trace {
                println!("-- counterexample for \"{}\":", property.name);
                print!("{trace}");
            }
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
