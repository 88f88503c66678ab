//! `dtx-sim`: run simulated dtx clusters through faults and check them.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use dtx_protocol::DeadlockPolicy;
use dtx_sim::{
    parse_bugs, run_caught, sweep, Faults, RunConfig, RunReport, ServiceBugs, WorkloadKind,
};
use std::io::Write;
use std::ops::Range;
use std::time::Instant;

/// Deterministic simulator for dtx: Paxos Commit under network and disk faults.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed and print what happened.
    Run(RunArgs),
    /// Run many seeds on all cores; the last line is a JSON summary.
    Sweep(SweepArgs),
    /// Count messages and message delays per transaction in fault-free runs and compare them
    /// with Gray & Lamport's formulas.
    Accounting(AccountingArgs),
    /// Failure detection alone: members gossip heartbeats, one crashes; measure how fast
    /// the others suspect it, false suspicions, and the gossip's cost.
    Heartbeats(HeartbeatArgs),
    /// Model-check the production protocol core exhaustively (stateright): every
    /// interleaving of one transaction over a duplicating network with crashes, up to the
    /// given bounds. Prints states, depth, time and a verdict per property; the last line
    /// is one JSON object.
    Check(dtx_sim::model::CheckArgs),
    /// Recovery time after crashes, with and without the failure detector: from a client's
    /// or a participant's crash to the decision of the transactions it left undecided, with
    /// deployment-like timing (loopback delays, the daemon's detector settings).
    Recovery(RecoveryArgs),
    /// Run a lab scenario file (the one `dtx lab run` runs with real processes) in the
    /// simulator: the scenario's faults on simulated time, the same artifacts and checks.
    /// Exits 1 on a violation, 2 on a bad scenario file.
    Lab(LabArgs),
}

#[derive(Args)]
struct LabArgs {
    /// The scenario file (TOML).
    scenario: std::path::PathBuf,
    /// The seed: fixes the schedule's unspecified choices and every choice of the simulator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the artifacts go (default lab-out/<scenario-name>-sim-<seed>).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct RecoveryArgs {
    /// Seeds per configuration: START..END (end exclusive) or a count.
    #[arg(long, default_value = "1..41", value_parser = parse_seeds)]
    seeds: Range<u64>,
    /// Transactions per seed.
    #[arg(long, default_value_t = 300)]
    txns: usize,
    /// Data nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Decision timeouts to compare, in milliseconds (comma list).
    #[arg(long, default_value = "200,2000", value_delimiter = ',')]
    decision_timeout_ms: Vec<u64>,
    /// Heartbeat interval of the detector in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct HeartbeatArgs {
    /// Members (comma list runs each size).
    #[arg(long, default_value = "5,50,500", value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Peers per gossip round.
    #[arg(long, default_value_t = 3)]
    fanout: usize,
    /// Phi threshold.
    #[arg(long, default_value_t = 8.0)]
    phi: f64,
    /// Longest one-way delay in milliseconds (shortest is a tenth of it).
    #[arg(long, default_value_t = 5)]
    delay_max_ms: u64,
    /// Chance a gossip message is lost.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Seconds simulated before and after the crash.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip counting false suspicions (quadratic in members; for scale runs).
    #[arg(long)]
    no_false_positives: bool,
    /// One JSON object per size.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct Common {
    /// Data nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Failures tolerated per transaction (2F+1 acceptors).
    #[arg(long, default_value_t = 1)]
    f: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Faults: all, none, or a comma list of loss, duplication, reorder, partitions,
    /// crashes, torn-writes, client-crashes, resources (service faults).
    #[arg(long, default_value = "all")]
    faults: Faults,
    /// Workload: bank, register, transfer, contention or orders (calls services).
    #[arg(long, default_value = "bank")]
    workload: WorkloadKind,
    /// The last K members are namespace-only service participants over simulated
    /// services (the orders workload calls them; it needs at least one).
    #[arg(long, default_value_t = 0)]
    services: usize,
    /// Switch on a deliberate protocol bug (build with --features bugs), or the simulated
    /// services' `resource-forgets-rollback`.
    #[arg(long = "bug")]
    bugs: Vec<String>,
    /// Deadlock handling for interactive workloads: edge-chasing or wound-wait.
    #[arg(long, default_value = "edge-chasing", value_parser = parse_deadlock)]
    deadlock: DeadlockPolicy,
    /// Keys of the workload (contention: hot keys, fewer means more conflicts; register:
    /// registers; bank, transfer: accounts); 0: the default per node.
    #[arg(long, default_value_t = 0)]
    hot_keys: usize,
    /// Every message takes exactly 1 ms and fsync is instant (latencies read as message
    /// delays).
    #[arg(long)]
    fixed_timing: bool,
    /// Gossip heartbeats with phi-accrual failure detection: on, off, or (default) drawn
    /// from each seed.
    #[arg(long, value_enum, default_value_t = DetectorSetting::Seed)]
    detector: DetectorSetting,
    /// Deployment-like timing instead of the seed's: loopback delays, the daemon's
    /// detector settings with this heartbeat interval, one node crash at a time.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Decision timeout with `--heartbeat-ms` (default: the daemon's, 200 ms).
    #[arg(long, requires = "heartbeat_ms")]
    decision_timeout_ms: Option<u64>,
    /// One-phase commit for single-participant transactions: on, off, or (default) drawn
    /// from each seed.
    #[arg(long, value_enum, default_value_t = DetectorSetting::Seed)]
    one_phase: DetectorSetting,
}

/// A switch of the simulated cluster: whether simulated nodes run the gossip failure
/// detector (`--detector`), whether clients use one-phase commit (`--one-phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DetectorSetting {
    /// Always.
    On,
    /// Never.
    Off,
    /// Drawn from each seed.
    Seed,
}

fn parse_deadlock(text: &str) -> Result<DeadlockPolicy, String> {
    match text {
        "edge-chasing" => Ok(DeadlockPolicy::EdgeChasing),
        "wound-wait" => Ok(DeadlockPolicy::WoundWait),
        other => Err(format!(
            "unknown deadlock policy {other:?}: expected edge-chasing or wound-wait"
        )),
    }
}

#[derive(Args)]
struct RunArgs {
    /// The seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Transactions to begin.
    #[arg(long, default_value_t = 2000)]
    txns: usize,
    #[command(flatten)]
    common: Common,
    /// Write the client-observed history (Jepsen/Elle JSON lines) here.
    #[arg(long)]
    history: Option<std::path::PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SweepArgs {
    /// Seeds, as START..END (END exclusive) or a single number N for 1..N+1.
    #[arg(long, default_value = "1..101", value_parser = parse_seeds)]
    seeds: Range<u64>,
    /// Transactions per seed.
    #[arg(long, default_value_t = 200)]
    txns: usize,
    #[command(flatten)]
    common: Common,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AccountingArgs {
    /// Data nodes (transactions touch 1..=nodes of them).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// F.
    #[arg(long, default_value_t = 1)]
    f: u32,
    /// Transactions per participant count.
    #[arg(long, default_value_t = 20)]
    txns_per_size: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    if let Some((start, end)) = text.split_once("..") {
        let start: u64 = start
            .trim()
            .parse()
            .map_err(|_| format!("bad seed range start in {text:?}"))?;
        let end: u64 = end
            .trim()
            .parse()
            .map_err(|_| format!("bad seed range end in {text:?}"))?;
        if end <= start {
            return Err(format!("empty seed range {text:?}"));
        }
        return Ok(start..end);
    }
    let count: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("seeds must be START..END or a count, got {text:?}"))?;
    Ok(1..count + 1)
}

fn base_config(common: &Common, seed: u64, txns: usize) -> Result<RunConfig> {
    if common.nodes == 0 || common.nodes > 4096 {
        bail!("--nodes must be between 1 and 4096, got {}", common.nodes);
    }
    if common.nodes < 2 * common.f as usize + 1 {
        bail!(
            "--f {} needs at least {} nodes, got {}",
            common.f,
            2 * common.f + 1,
            common.nodes
        );
    }
    if common.clients == 0 || common.clients > 1024 {
        bail!(
            "--clients must be between 1 and 1024, got {}",
            common.clients
        );
    }
    let (service_bugs, protocol_bugs) = ServiceBugs::take_from(&common.bugs);
    let bugs = parse_bugs(&protocol_bugs).map_err(anyhow::Error::msg)?;
    let services = if common.workload == WorkloadKind::Orders {
        common.services.max(1)
    } else {
        common.services
    };
    if services >= common.nodes {
        bail!(
            "--services {services} must leave at least one key-value node of {}",
            common.nodes
        );
    }
    let mut config = RunConfig::new(
        seed,
        common.nodes,
        common.f,
        txns,
        common.workload,
        common.faults,
    );
    config.clients = common.clients;
    config.bugs = bugs;
    config.services = services;
    config.service_bugs = service_bugs;
    config.deadlock = common.deadlock;
    config.hot_keys = common.hot_keys;
    config.fixed_timing = common.fixed_timing;
    config.detector = match common.detector {
        DetectorSetting::On => Some(true),
        DetectorSetting::Off => Some(false),
        DetectorSetting::Seed => None,
    };
    config.one_phase = match common.one_phase {
        DetectorSetting::On => Some(true),
        DetectorSetting::Off => Some(false),
        DetectorSetting::Seed => None,
    };
    if let Some(heartbeat_ms) = common.heartbeat_ms {
        let decision_timeout_ms = common.decision_timeout_ms.unwrap_or(200);
        if !(1..=60_000).contains(&heartbeat_ms) || !(1..=600_000).contains(&decision_timeout_ms) {
            bail!("--heartbeat-ms must be 1..=60000 and --decision-timeout-ms 1..=600000");
        }
        config.timing = Some(dtx_sim::TimingOverride {
            decision_timeout_micros: decision_timeout_ms * 1_000,
            heartbeat_interval_micros: heartbeat_ms * 1_000,
        });
    }
    Ok(config)
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => command_run(args),
        Command::Sweep(args) => command_sweep(args),
        Command::Accounting(args) => command_accounting(args),
        Command::Heartbeats(args) => command_heartbeats(args),
        Command::Check(args) => dtx_sim::model::run(&args),
        Command::Recovery(args) => command_recovery(args),
        Command::Lab(args) => command_lab(args),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    }
}

fn command_run(args: RunArgs) -> Result<bool> {
    let mut config = base_config(&args.common, args.seed, args.txns)?;
    config.record_history = args.history.is_some();
    let started = Instant::now();
    let report = run_caught(&config);
    let wall = started.elapsed();
    if let (Some(path), Some(history)) = (&args.history, &report.history) {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        history
            .write_to(&mut out)
            .with_context(|| format!("cannot write {}", path.display()))?;
        out.flush()?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_run(
            &config,
            &report,
            wall.as_secs_f64(),
            args.history.as_deref(),
        );
    }
    Ok(report.violation_count == 0)
}

fn print_run(
    config: &RunConfig,
    report: &RunReport,
    wall_seconds: f64,
    history: Option<&std::path::Path>,
) {
    let stats = &report.stats;
    println!(
        "dtx-sim run: seed {} | {} nodes, F={} | {} clients | workload {} | faults {}",
        config.seed, config.nodes, config.f, config.clients, config.workload, config.faults
    );
    println!(
        "transactions: {} begun, {} committed, {} aborted, {} unknown to their client",
        stats.txns, stats.committed, stats.aborted, stats.unknown
    );
    println!(
        "faults injected: {} node crashes, {} client crashes, {} partitions, {} of {} frames lost; {} recovery ballots",
        stats.crashes, stats.client_crashes, stats.partitions, stats.frames_lost, stats.frames, stats.recoveries
    );
    println!(
        "commit latency (virtual): p50 {:.2} ms, p99 {:.2} ms; {} fsyncs; {:.1} s simulated in {:.2} s",
        report.latency_p50_micros as f64 / 1000.0,
        report.latency_p99_micros as f64 / 1000.0,
        stats.fsyncs,
        report.virtual_millis as f64 / 1000.0,
        wall_seconds
    );
    if stats.gossip_messages > 0 {
        let simulated = (report.virtual_millis as f64 / 1000.0).max(1e-9);
        println!(
            "failure detector: {} gossip messages, {:.0} gossip bytes per node per simulated s; {:.3} wall s per simulated s; crash -> suspicion p50 {:.0} ms, p99 {:.0} ms; {} suspicions of live nodes outside partitions, {} stale (a restart not yet heard of)",
            stats.gossip_messages,
            stats.gossip_bytes as f64 / config.nodes as f64 / simulated,
            wall_seconds / simulated,
            report.detection_p50_micros as f64 / 1000.0,
            report.detection_p99_micros as f64 / 1000.0,
            stats.false_suspicions,
            stats.stale_suspicions
        );
    }
    if config.workload.is_bank() {
        println!("bank: {} audits saw the full total", stats.audits_checked);
    }
    if config.workload.is_interactive() {
        println!(
            "locks: {} waits, {} deadlocks broken by the detector ({} phantom), {} wound-wait aborts, {} lock-wait timeouts; {} probes ({:.1} per deadlock); detection latency p50 {:.2} ms, p99 {:.2} ms",
            stats.lock_waits,
            stats.deadlocks_detected,
            stats.phantom_aborts,
            stats.wounds,
            stats.lock_wait_timeouts,
            stats.probes,
            report.probes_per_deadlock,
            report.deadlock_latency_p50_micros as f64 / 1000.0,
            report.deadlock_latency_p99_micros as f64 / 1000.0
        );
    }
    println!(
        "checked: atomicity, one value per instance, stable decisions, acceptor ballots across crashes, \
         durability after a power cut, serializability{}, liveness after heal",
        if config.workload.is_bank() { ", money conserved" } else { "" }
    );
    if let Some(path) = history {
        println!("history written to {}", path.display());
    }
    if report.violation_count == 0 {
        println!("result: OK — 0 violations, 0 undecided after heal");
    } else {
        println!(
            "result: {} VIOLATIONS (replay with --seed {}):",
            report.violation_count, config.seed
        );
        for violation in &report.violations {
            println!("  - {violation}");
        }
    }
}

fn command_sweep(args: SweepArgs) -> Result<bool> {
    let base = base_config(&args.common, 0, args.txns)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    eprintln!(
        "dtx-sim sweep: seeds {}..{} | {} txns each | {} nodes, F={} | workload {} | faults {} | {} threads",
        args.seeds.start, args.seeds.end, args.txns, base.nodes, base.f, base.workload, base.faults, threads
    );
    let step = ((args.seeds.end - args.seeds.start) / 20).max(1);
    let progress = |done: u64, total: u64, summary: &dtx_sim::SweepSummary| {
        if done.is_multiple_of(step) || done == total {
            eprintln!(
                "  {done}/{total} seeds, {} txns, {} violations, failing seeds so far: {:?}",
                summary.txns,
                summary.violations,
                summary.failing_seeds.iter().take(10).collect::<Vec<_>>()
            );
        }
    };
    let summary = sweep(&base, args.seeds.clone(), threads, &progress);
    if !args.json {
        println!(
            "{} seeds in {:.1} s: {} txns, {} committed, {} aborted, {} violations, {} undecided after heal",
            summary.seeds, summary.wall_seconds, summary.txns, summary.committed, summary.aborted,
            summary.violations, summary.undecided_after_heal
        );
        for (seed, example) in &summary.examples {
            println!("  seed {seed}: {example}");
        }
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(summary.violations == 0)
}

fn command_lab(args: LabArgs) -> Result<bool> {
    use dtx_sim::lab::{simulate, Scenario};
    let scenario = Scenario::load(&args.scenario)?;
    let dir = args.out.clone().unwrap_or_else(|| {
        dtx_sim::lab::outcome::default_out(&scenario, dtx_sim::lab::Source::Simulated, args.seed)
    });
    let schedule = scenario.schedule(args.seed);
    eprintln!(
        "dtx-sim lab: {} (seed {}) | {} nodes, F={} | {} {} clients for {:?}{} | {} faults",
        scenario.name,
        args.seed,
        scenario.cluster.nodes,
        scenario.cluster.f,
        scenario.workload.clients,
        scenario.workload.kind.name(),
        scenario.workload.duration,
        if scenario.workload.rate > 0.0 {
            format!(" at {} txn/s", scenario.workload.rate)
        } else {
            String::new()
        },
        schedule.intervals.len()
    );
    for interval in &schedule.intervals {
        eprintln!(
            "  {:>7.2} s .. {:>7.2} s  {} {}",
            interval.start_s, interval.end_s, interval.name, interval.detail
        );
    }
    eprintln!("  simulating...");
    let outcome = simulate::run(&scenario, args.seed)?;
    eprintln!("  simulated; writing {}", dir.display());
    simulate::write_artifacts(&dir, &outcome)
        .with_context(|| format!("cannot write the artifacts into {}", dir.display()))?;
    let report = dtx_sim::lab::report::write(&dir, &outcome)
        .with_context(|| format!("cannot write the report into {}", dir.display()))?;
    for (name, value) in &outcome.summary {
        println!("{name}: {value}");
    }
    for check in &outcome.checks {
        println!(
            "[{}] {}: {}",
            if check.holds { "ok" } else { "VIOLATION" },
            check.name,
            check.detail
        );
    }
    println!("artifacts: {}", dir.display());
    println!("report: {}", report.display());
    let passed = outcome.passed();
    println!("verdict: {}", if passed { "PASS" } else { "VIOLATION" });
    Ok(passed)
}

fn command_recovery(args: RecoveryArgs) -> Result<bool> {
    if args
        .decision_timeout_ms
        .iter()
        .any(|ms| *ms == 0 || *ms > 600_000)
        || args.heartbeat_ms == 0
        || args.heartbeat_ms > 60_000
    {
        bail!("--decision-timeout-ms and --heartbeat-ms must be between 1 and 600000 / 60000");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut rows = Vec::new();
    let mut violations = 0;
    for (fault, label) in [
        ("client-crashes", "client crash"),
        ("crashes", "participant crash"),
    ] {
        for timeout in &args.decision_timeout_ms {
            for detector in [false, true] {
                let common = Common {
                    nodes: args.nodes,
                    f: 1,
                    clients: 4,
                    faults: fault.parse().map_err(anyhow::Error::msg)?,
                    workload: WorkloadKind::Bank,
                    services: 0,
                    bugs: Vec::new(),
                    deadlock: DeadlockPolicy::EdgeChasing,
                    hot_keys: 0,
                    fixed_timing: false,
                    detector: if detector {
                        DetectorSetting::On
                    } else {
                        DetectorSetting::Off
                    },
                    heartbeat_ms: Some(args.heartbeat_ms),
                    decision_timeout_ms: Some(*timeout),
                    // Recovery is what this measures: every transaction runs Paxos Commit.
                    one_phase: DetectorSetting::Off,
                };
                let base = base_config(&common, 0, args.txns)?;
                let summary = sweep(&base, args.seeds.clone(), threads, &|_, _, _| {});
                violations += summary.violations + summary.undecided_after_heal;
                let mut samples = if fault == "crashes" {
                    summary.recovery_samples.participant_crash.clone()
                } else {
                    summary.recovery_samples.client_crash.clone()
                };
                let count = samples.len();
                let [p50, p99, max] = [0.5, 0.99, 1.0].map(|fraction| {
                    dtx_sim::world::percentile_of(&mut samples, fraction) as f64 / 1_000.0
                });
                let row = serde_json::json!({
                    "crash": label,
                    "decision_timeout_ms": timeout,
                    "detector": detector,
                    "transactions": count,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "max_ms": max,
                    "recoveries": summary.recoveries,
                    "violations": summary.violations,
                    "undecided_after_heal": summary.undecided_after_heal,
                    "wall_seconds": summary.wall_seconds,
                });
                println!(
                    "{label:<17} timeout {timeout:>5} ms, detector {:<3}: {:>5} txns left undecided, decided after p50 {:>6.1} ms, p99 {:>6.1} ms, max {:>6.1} ms; {} recovery ballots; {} violations",
                    if detector { "on" } else { "off" },
                    count, p50, p99, max, summary.recoveries,
                    summary.violations + summary.undecided_after_heal
                );
                rows.push(row);
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "rows": rows, "violations": violations, "seeds": args.seeds.end - args.seeds.start })
    );
    Ok(violations == 0)
}

fn command_accounting(args: AccountingArgs) -> Result<bool> {
    let common = Common {
        nodes: args.nodes,
        f: args.f,
        clients: 1,
        faults: Faults::default(),
        workload: WorkloadKind::Register,
        services: 0,
        bugs: Vec::new(),
        deadlock: DeadlockPolicy::EdgeChasing,
        hot_keys: 0,
        fixed_timing: true,
        detector: DetectorSetting::Off,
        heartbeat_ms: None,
        decision_timeout_ms: None,
        // The paper's formulas count Paxos Commit, one participant too.
        one_phase: DetectorSetting::Off,
    };
    let mut rows = Vec::new();
    let mut delays = Vec::new();
    for thrifty in [true, false] {
        let mut config = base_config(&common, 1, args.txns_per_size * args.nodes)?;
        config.accounting = true;
        config.thrifty = Some(thrifty);
        let report = run_caught(&config);
        if report.violation_count > 0 {
            let texts: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
            bail!("accounting run had violations: {texts:?}");
        }
        delays.push((thrifty, report.latency_p50_micros as f64 / 1000.0));
        for (participants, measured) in &report.frames_per_commit {
            let (n, f) = (*participants as u64, u64::from(args.f));
            rows.push(serde_json::json!({
                "participants": n,
                "f": f,
                "thrifty": thrifty,
                "measured_messages": measured,
                "dtx_formula": dtx_messages(n, f, thrifty),
                "paper_faster_paxos_commit": n.saturating_sub(1) * (2 * f + 3),
                "paper_paxos_commit": n * (f + 3) - 3,
                "paper_two_phase_commit": 3 * n - 3,
            }));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rows": rows, "message_delays": delays})
        );
        return Ok(true);
    }
    println!(
        "message accounting: fault-free, one client, 1 ms per message, instant fsync, F={}",
        args.f
    );
    println!(
        "{:>3} {:>8} {:>9} {:>12} {:>15} {:>9} {:>5}",
        "N", "thrifty", "measured", "dtx formula", "paper FasterPC", "paper PC", "2PC"
    );
    for row in &rows {
        let number = |name: &str| row[name].as_u64().unwrap_or(0);
        println!(
            "{:>3} {:>8} {:>9.2} {:>12} {:>15} {:>9} {:>5}",
            number("participants"),
            row["thrifty"].as_bool().unwrap_or(false),
            row["measured_messages"].as_f64().unwrap_or(0.0),
            number("dtx_formula"),
            number("paper_faster_paxos_commit"),
            number("paper_paxos_commit"),
            number("paper_two_phase_commit")
        );
    }
    for (thrifty, delay) in delays {
        println!("thrifty={thrifty}: message delays from the client's Prepare to its decision: {delay:.2} (median)");
    }
    Ok(true)
}

/// Messages per committed transaction that dtx sends, derived from the protocol: Prepare
/// from the client to the N RMs; ballot-0 Phase2a from each RM to the acceptors it uses
/// (F+1 thrifty, else 2F+1) except its own; one bundled Phase2b from each of those acceptors
/// to every RM and the client except itself; a Decision from the first RM to each of those
/// acceptors that is not a participant.
fn dtx_messages(n: u64, f: u64, thrifty: bool) -> u64 {
    let used = if thrifty { f + 1 } else { 2 * f + 1 };
    let colocated = n.min(used);
    let prepare = n;
    let phase2a = n * used - colocated;
    let phase2b = colocated * n + (used - colocated) * (n + 1);
    let decision = used - colocated;
    prepare + phase2a + phase2b + decision
}

fn command_heartbeats(args: HeartbeatArgs) -> Result<bool> {
    if args
        .nodes
        .iter()
        .any(|nodes| *nodes < 2 || *nodes > 100_000)
    {
        bail!("--nodes must list sizes between 2 and 100000");
    }
    if !(0.0..1.0).contains(&args.loss) || args.interval_ms == 0 || args.fanout == 0 {
        bail!("need 0 <= --loss < 1, --interval-ms > 0 and --fanout > 0");
    }
    let interval = std::time::Duration::from_millis(args.interval_ms);
    for nodes in &args.nodes {
        let experiment = dtx_sim::heartbeats::HeartbeatExperiment {
            seed: args.seed,
            nodes: *nodes,
            detector: dtx_protocol::DetectorConfig {
                interval,
                fanout: args.fanout,
                phi_threshold: args.phi,
                std_deviation_min: interval / 4,
                acceptable_pause: interval,
                ..dtx_protocol::DetectorConfig::default()
            },
            delay_min_micros: args.delay_max_ms * 100,
            delay_max_micros: args.delay_max_ms * 1000,
            loss: args.loss,
            warmup_micros: args.seconds * 1_000_000,
            after_crash_micros: args.seconds * 1_000_000,
            count_false_suspicions: !args.no_false_positives,
        };
        let report = dtx_sim::heartbeats::run_heartbeats(&experiment);
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{} members: crash detected p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (model {:.0} ms), {} never; false suspicions {} of {} checks; {:.0} gossip bytes/member/s; {:.3} wall s per simulated s",
                report.nodes, report.detection_p50_ms, report.detection_p99_ms, report.detection_max_ms,
                report.expected_detection_ms, report.undetected, report.false_suspicions,
                report.false_suspicion_checks, report.bytes_per_node_per_second,
                report.wall_seconds_per_simulated_second
            );
        }
    }
    Ok(true)
}
