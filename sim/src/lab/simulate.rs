//! The simulator's lab runner (`dtx-sim lab`): one run of a scenario in the deterministic
//! simulator, producing the same [`LabOutcome`] as `dtx lab run` does with real processes,
//! so the two can be compared side by side.
//!
//! How the scenario maps onto the simulator:
//! - cluster: `cluster.nodes` data nodes, F = `cluster.f`; node `nK` is the simulator's
//!   `NodeId(K)`. For the orders workload the last node, `nN`, is the service participant
//!   (the simulator's `--services 1`) and the others hold the keys.
//! - timing: deployment-like, as `dtx-sim --heartbeat-ms 100` gives it: loopback delays of
//!   0.1-1 ms, the daemon's decision timeout (200 ms) and failure detector (gossip every
//!   100 ms, the daemon's phi settings), fsyncs drawn from the seed.
//! - workload: register, bank, orders and transfer are the simulator's workloads of those
//!   names; `clients` closed-loop workers begin transactions for `duration` of simulated
//!   time (not a transaction count), each as soon as the last finished, or paced to
//!   `rate` transactions per second in total when the rate is set. `keys` sets the number
//!   of registers or accounts (orders keeps the simulator's own keys). The simulator's
//!   register transactions touch 1-4 registers (the real lab's: 2, on 2 nodes) and 8 % of
//!   its bank transactions are audits of every account.
//! - faults: none of the simulator's own; exactly `scenario.schedule(seed)`, played by
//!   `world::lab` (link faults per direction, kill = the simulator's crash, a power loss
//!   that keeps only synced bytes; restart; pause holds everything for the node until
//!   resume). At the workload's end everything heals and the run waits up to `settle` for
//!   every transaction to be decided; then the simulator's final phase cuts power on every
//!   node, restarts them and checks the durable logs.
//! - verdicts: the simulator's checkers grouped into checks (atomicity, consensus,
//!   durability, serializability of the durable history, liveness, bank conservation or
//!   the services' outcomes), plus the shared checks: the history's isolation (register:
//!   strict serializability by Elle's rw-register analysis) and nothing in doubt.

use super::checks;
use super::outcome::{Check, HistoryOp, LabOutcome, Sample, Source};
use super::scenario::{LabWorkload, Scenario};
use crate::checker::Violation;
use crate::config::{parse_bugs, Faults, RunConfig, ServiceBugs, TimingOverride, WorkloadKind};
use crate::world::{run_lab, LabPlan, LabRecord, RunReport};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often every node is sampled (simulated time).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// The daemon's decision timeout, used by simulated lab runs.
pub const DECISION_TIMEOUT: Duration = Duration::from_millis(200);
/// The daemon's heartbeat interval, used by simulated lab runs.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Most violations quoted in one check's detail.
const QUOTED_VIOLATIONS_MAX: usize = 3;

/// Why a scenario cannot run in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimLabError {
    /// A bug name is unknown, or this build cannot switch bugs on.
    #[error("scenario {scenario:?}: {message}")]
    Bugs {
        /// The scenario's name.
        scenario: String,
        /// What is wrong.
        message: String,
    },
    /// The scenario asks for something the simulator cannot model.
    #[error("scenario {scenario:?}: {message}")]
    Unsupported {
        /// The scenario's name.
        scenario: String,
        /// What is wrong.
        message: String,
    },
    /// The history the simulator recorded could not be read back (a simulator bug).
    #[error("the simulated history is unreadable: {0}")]
    History(String),
}

/// The simulator's configuration for `scenario` with `seed`.
pub fn run_config(scenario: &Scenario, seed: u64) -> Result<RunConfig, SimLabError> {
    let workload = match scenario.workload.kind {
        LabWorkload::Register => WorkloadKind::Register,
        LabWorkload::Bank => WorkloadKind::Bank,
        LabWorkload::Orders => WorkloadKind::Orders,
        LabWorkload::Transfer => WorkloadKind::Transfer,
    };
    let nodes = scenario.cluster.nodes;
    let services = usize::from(workload == WorkloadKind::Orders);
    if services >= nodes {
        return Err(SimLabError::Unsupported {
            scenario: scenario.name.clone(),
            message: "the orders workload needs at least 2 nodes (one service participant and \
                      one holding keys)"
                .to_string(),
        });
    }
    let (service_bugs, protocol_bugs) = ServiceBugs::take_from(&scenario.bugs);
    let bugs = parse_bugs(&protocol_bugs).map_err(|message| SimLabError::Bugs {
        scenario: scenario.name.clone(),
        message,
    })?;
    let mut config = RunConfig::new(
        seed,
        nodes,
        scenario.cluster.f,
        usize::MAX,
        workload,
        Faults::default(),
    );
    config.clients = scenario.workload.clients;
    if workload != WorkloadKind::Orders {
        config.hot_keys = scenario.workload.keys;
    }
    // Interactive transfers (the simulator's `transfer`) read for update unless the
    // scenario asks for shared reads, as the real lab's bank workload does.
    config.reads_for_update = Some(!scenario.workload.shared_reads);
    config.bugs = bugs;
    config.service_bugs = service_bugs;
    config.services = services;
    config.record_history = true;
    config.detector = Some(true);
    config.timing = Some(TimingOverride {
        decision_timeout_micros: DECISION_TIMEOUT.as_micros() as u64,
        heartbeat_interval_micros: HEARTBEAT_INTERVAL.as_micros() as u64,
    });
    Ok(config)
}

/// The plan the world plays for `scenario` with `seed`.
pub fn plan(scenario: &Scenario, seed: u64) -> LabPlan {
    LabPlan {
        steps: scenario.schedule(seed).steps,
        duration: scenario.workload.duration,
        settle: scenario.settle,
        rate: scenario.workload.rate,
        sample_interval: SAMPLE_INTERVAL,
    }
}

/// One simulated run of `scenario` with `seed` (which fixes the schedule and every choice
/// of the simulator).
pub fn run(scenario: &Scenario, seed: u64) -> Result<LabOutcome, SimLabError> {
    let config = run_config(scenario, seed)?;
    let started = Instant::now();
    let plan = plan(scenario, seed);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_lab(&config, plan)));
    let wall_seconds = started.elapsed().as_secs_f64();
    let (report, record) = match ran {
        Ok(done) => done,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            return Ok(panicked(scenario, seed, &message, wall_seconds));
        }
    };
    outcome(scenario, seed, &report, &record, wall_seconds)
}

/// The outcome of a run that panicked: one failed check says why.
fn panicked(scenario: &Scenario, seed: u64, message: &str, wall_seconds: f64) -> LabOutcome {
    LabOutcome {
        scenario: scenario.clone(),
        seed,
        source: Source::Simulated,
        history: Vec::new(),
        intervals: scenario.schedule(seed).intervals,
        samples: Vec::new(),
        checks: vec![Check::new(
            "the simulation ran to its end",
            false,
            format!("panic: {message}"),
        )],
        summary: vec![("wall seconds".to_string(), format!("{wall_seconds:.2}"))],
    }
}

fn outcome(
    scenario: &Scenario,
    seed: u64,
    report: &RunReport,
    record: &LabRecord,
    wall_seconds: f64,
) -> Result<LabOutcome, SimLabError> {
    let schedule = scenario.schedule(seed);
    let history = history(report, record.workload_start_micros)?;
    let names = scenario.node_names();
    let samples: Vec<Sample> = record
        .samples
        .iter()
        .map(|sample| Sample {
            time_s: sample.time_micros as f64 / 1e6,
            node: names
                .get(sample.index)
                .cloned()
                .unwrap_or_else(|| format!("n{}", sample.index + 1)),
            up: sample.up,
            in_doubt: sample.in_doubt,
            suspected: sample.suspected,
        })
        .collect();
    let mut checks = simulator_checks(scenario.workload.kind, report);
    if scenario.workload.kind == LabWorkload::Register {
        checks.push(checks::isolation(&history, "strict-serializable"));
    }
    checks.push(checks::nothing_in_doubt(&samples));
    let run_s = scenario.workload.duration.as_secs_f64();
    let (committed, failed, unknown) = checks::outcome_counts(&history);
    let (during, outside) = checks::commit_rates(&history, &schedule.intervals, run_s);
    let mut summary = vec![
        ("committed".to_string(), committed.to_string()),
        ("failed".to_string(), failed.to_string()),
        ("unknown".to_string(), unknown.to_string()),
        (
            "commits/s during faults".to_string(),
            format!("{during:.1}"),
        ),
        (
            "commits/s outside faults".to_string(),
            format!("{outside:.1}"),
        ),
    ];
    for (interval, recovery) in checks::recovery_times(&history, &schedule.intervals) {
        summary.push((
            format!(
                "recovery after {} ({}) ending at {:.2} s",
                interval.name, interval.detail, interval.end_s
            ),
            recovery.map_or("no commit after it".to_string(), |seconds| {
                format!("{seconds:.3} s")
            }),
        ));
    }
    let simulated_s = record
        .end_micros
        .saturating_sub(record.workload_start_micros) as f64
        / 1e6;
    summary.extend([
        (
            "simulated seconds (workload, settle, final check)".to_string(),
            format!("{simulated_s:.2}"),
        ),
        ("wall seconds".to_string(), format!("{wall_seconds:.2}")),
        (
            "timing".to_string(),
            format!(
                "simulated: delays 0.1-1 ms, decision timeout {} ms, heartbeats every {} ms",
                DECISION_TIMEOUT.as_millis(),
                HEARTBEAT_INTERVAL.as_millis()
            ),
        ),
        (
            "frames dropped / duplicated by link faults".to_string(),
            format!("{} / {}", record.frames_dropped, record.frames_duplicated),
        ),
        (
            "events held for paused nodes".to_string(),
            record.events_held.to_string(),
        ),
        (
            "simulated events".to_string(),
            report.stats.events.to_string(),
        ),
    ]);
    Ok(LabOutcome {
        scenario: scenario.clone(),
        seed,
        source: Source::Simulated,
        history,
        intervals: schedule.intervals,
        samples,
        checks,
        summary,
    })
}

/// The simulator's client history as lab operations, times from the workload's start
/// (the bank's setup transaction, before it, at 0).
fn history(report: &RunReport, start_micros: u64) -> Result<Vec<HistoryOp>, SimLabError> {
    let Some(recorded) = report.history.as_ref() else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    recorded
        .write_to(&mut bytes)
        .map_err(|error| SimLabError::History(error.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|error| SimLabError::History(error.to_string()))?;
    let start_nanos = start_micros.saturating_mul(1000);
    text.lines()
        .map(|line| {
            let mut op: HistoryOp = serde_json::from_str(line)
                .map_err(|error| SimLabError::History(format!("{error}: {line}")))?;
            op.time = op.time.saturating_sub(start_nanos);
            Ok(op)
        })
        .collect()
}

/// A group of the simulator's checks: its name and the violation kinds that break it.
struct CheckGroup {
    name: &'static str,
    kinds: &'static [&'static str],
}

const GROUPS: [CheckGroup; 5] = [
    CheckGroup {
        name: "atomicity: no node or client committed while another aborted (TCConsistent)",
        kinds: &["TcConsistent", "DurableTcConsistent"],
    },
    CheckGroup {
        name: "consensus: one value per ballot and instance, stable decisions, acceptor state \
               kept across crashes",
        kinds: &[
            "OneValuePerBallot",
            "OneValueChosen",
            "DecisionStable",
            "AcceptorBallotsMonotonic",
            "ConflictingPhase2a",
        ],
    },
    CheckGroup {
        name: "durability: acknowledged commits survive a power cut on every node",
        kinds: &["PowerCutDurability", "Durability", "CheckpointEquivalence"],
    },
    CheckGroup {
        name: "serializability of the durable history and of the clients' reads",
        kinds: &[
            "Serializability",
            "ReadUncommittedVersion",
            "ClientReadValue",
        ],
    },
    CheckGroup {
        name: "liveness: every transaction decided after the heal and after the final restart",
        kinds: &["UndecidedAfterHeal", "UndecidedAfterFinalRecovery"],
    },
];

const BANK: CheckGroup = CheckGroup {
    name: "bank: money conserved, every audit saw the full total",
    kinds: &[
        "BankAccountMissing",
        "BankConservation",
        "TransferReadIncomplete",
        "AuditReadMissing",
        "AuditTotal",
        "NotABalance",
    ],
};

const SERVICES: CheckGroup = CheckGroup {
    name: "orders: services hold exactly the committed reservations (no partial order)",
    kinds: &[
        "ResourceOutcome",
        "ResourceStillPrepared",
        "ResourceInventory",
        "ResourceContract",
    ],
};

/// The simulator's verdicts as checks: one per group of its checkers, and one for anything
/// else it found (a stuck run, an unexpected event).
fn simulator_checks(workload: LabWorkload, report: &RunReport) -> Vec<Check> {
    let mut groups: Vec<&CheckGroup> = GROUPS.iter().collect();
    match workload {
        LabWorkload::Bank | LabWorkload::Transfer => groups.push(&BANK),
        LabWorkload::Orders => groups.push(&SERVICES),
        LabWorkload::Register => {}
    }
    let mut checks: Vec<Check> = groups
        .iter()
        .map(|group| {
            group_check(group.name, &report.violations, |v| {
                group.kinds.contains(&v.kind())
            })
        })
        .collect();
    let grouped = |violation: &Violation| {
        groups
            .iter()
            .any(|group| group.kinds.contains(&violation.kind()))
    };
    checks.push(group_check(
        "the simulator found nothing else (no stuck run, no unexpected event, no panic)",
        &report.violations,
        |violation| !grouped(violation),
    ));
    if report.violation_count > report.violations.len() as u64 {
        if let Some(check) = checks.last_mut() {
            check.detail.push_str(&format!(
                "; {} violations in all, {} listed",
                report.violation_count,
                report.violations.len()
            ));
        }
    }
    checks
}

fn group_check(
    name: &str,
    violations: &[Violation],
    belongs: impl Fn(&Violation) -> bool,
) -> Check {
    let found: Vec<&Violation> = violations.iter().filter(|v| belongs(v)).collect();
    if found.is_empty() {
        return Check::new(name, true, "no violation");
    }
    let mut detail = format!("{} violations: ", found.len());
    let quoted: Vec<String> = found
        .iter()
        .take(QUOTED_VIOLATIONS_MAX)
        .map(|violation| format!("{} ({})", violation, violation.kind()))
        .collect();
    detail.push_str(&quoted.join("; "));
    Check::new(name, false, detail)
}

/// Writes the run's artifacts into `dir` (see [`super::outcome::write_artifacts`]), with
/// the intervals and the planned steps as `nemesis.json`.
pub fn write_artifacts(dir: &Path, outcome: &LabOutcome) -> std::io::Result<()> {
    let schedule = outcome.scenario.schedule(outcome.seed);
    let nemesis = serde_json::json!({
        "intervals": outcome.intervals,
        "steps": schedule.steps,
    });
    super::outcome::write_artifacts(dir, outcome, &nemesis)
}
