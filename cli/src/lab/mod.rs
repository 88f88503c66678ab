//! `dtx lab run SCENARIO`: a scenario (cluster, workload, nemesis schedule; see
//! [`dtx_sim::lab::scenario`]) played against real `dtx node` processes on 127.0.0.1.
//!
//! The run: a fresh cluster with fault injection switched on, the workload's data loaded,
//! then at once the workload (recording an Elle history), the nemesis timeline (network
//! faults through each node's `/faults` control endpoint, SIGKILL and restart, SIGSTOP and
//! SIGCONT) and a sampler of every node's `/status` and `/metrics`. At the end everything
//! is healed, the lab waits until no node holds a transaction in doubt, audits the data
//! through new transactions, and judges: isolation of the history (Elle rw-register),
//! conservation, no acknowledged commit lost, nothing in doubt, every fault applied. The
//! output directory gets the history, the nemesis log, the samples, the node logs, the
//! outcome as JSON and `report.html`.

mod audit;
mod nemesis;
pub mod netns;
mod sampler;

use crate::bench::{self, BenchOptions, Progress, Workload};
use crate::local::{LocalCluster, LocalClusterError};
use dtx_node::client::Client;
use dtx_sim::lab::scenario::{format_duration, LabWorkload, ScenarioError};
use dtx_sim::lab::{checks, outcome, Check, LabOutcome, Scenario, Source};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often every node is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Seed of the schedule's random choices (nodes, halves, flaps) and of the workload.
    pub seed: u64,
    /// Output directory (default `lab-out/<scenario>-<seed>`); replaced if it exists.
    pub out: Option<PathBuf>,
    /// The `dtx` executable for the node processes.
    pub executable: PathBuf,
    /// Each node in its own network namespace, link faults in the kernel (`--netns`,
    /// root only; see [`netns`]).
    pub netns: bool,
}

/// Why a lab run could not be carried out (a violation is a verdict, not an error).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The scenario file.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The local cluster.
    #[error(transparent)]
    Cluster(#[from] LocalClusterError),
    /// The workload's client could not join.
    #[error(transparent)]
    Connect(#[from] dtx_node::client::ConnectError),
    /// Loading or auditing the data failed.
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    /// The network namespaces of `--netns`.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// An output file.
    #[error("lab output {path}: {cause}")]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |cause| LabError::Output {
        path: path.to_path_buf(),
        cause,
    }
}

/// Runs the scenario; prints progress and returns the outcome (also written to the output
/// directory with the report).
pub async fn run(options: &LabOptions) -> Result<(LabOutcome, PathBuf), LabError> {
    let scenario = Scenario::load(&options.scenario)?;
    // --netns: made first (and dropped last, after the cluster's processes), so that
    // without root or `ip` nothing else starts.
    let kernel = if options.netns {
        Some(Arc::new(netns::KernelNetwork::create(
            &scenario.node_names(),
        )?))
    } else {
        None
    };
    let schedule = scenario.schedule(options.seed);
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| outcome::default_out(&scenario, Source::Real, options.seed));
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(output_error(&out))?;
    }
    std::fs::create_dir_all(&out).map_err(output_error(&out))?;
    let workload = bench_workload(scenario.workload.kind);
    println!(
        "dtx lab: {} (seed {}): {} nodes, F={}, {} workload, {} clients{}, {}",
        scenario.name,
        options.seed,
        scenario.cluster.nodes,
        scenario.cluster.f,
        scenario.workload.kind.name(),
        scenario.workload.clients,
        if scenario.workload.rate > 0.0 {
            format!(" at {} txn/s", scenario.workload.rate)
        } else {
            " (closed loop)".to_string()
        },
        format_duration(scenario.workload.duration)
    );
    if !scenario.description.is_empty() {
        println!("  {}", scenario.description.trim());
    }
    println!("  output: {}", out.display());
    println!("  faults:");
    for interval in &schedule.intervals {
        println!(
            "    {:>6.1}s - {:>6.1}s  {:<12} {}",
            interval.start_s, interval.end_s, interval.name, interval.detail
        );
    }
    if schedule.intervals.is_empty() {
        println!("    none");
    }
    let names = scenario.node_names();
    let mut cluster = LocalCluster::create(
        options.executable.clone(),
        out.join("cluster"),
        names.clone(),
        scenario.cluster.f,
    )?;
    cluster.set_fault_injection(true);
    if let Some(kernel) = &kernel {
        for name in &names {
            if let (Some(ip), Some(namespace)) = (kernel.node_ip(name), kernel.namespace(name)) {
                cluster.set_node_ip(name, ip)?;
                cluster.set_netns(name, namespace);
            }
        }
        println!(
            "  --netns: each node in its own network namespace on {}, the lab on the bridge (.254); partitions are blackhole routes{}",
            kernel.subnet(),
            if kernel.has_netem() {
                ", loss/delay/duplication tc netem"
            } else {
                "; no netem here (sch_netem missing): loss/delay/duplication stay in-node"
            }
        );
    }
    for name in &names {
        let mut args: Vec<&str> = Vec::new();
        for bug in &scenario.bugs {
            args.extend(["--bug", bug.as_str()]);
        }
        cluster.set_args(name, &args);
    }
    if !scenario.bugs.is_empty() {
        println!(
            "  the nodes run with protocol bug switches on: {} (a violation is expected)",
            scenario.bugs.join(", ")
        );
    }
    cluster.start_all()?;
    println!("  {} nodes up; loading data...", names.len());
    let config = cluster.config.clone();
    let nodes = nemesis::NodeHandles::of(&cluster)?;
    let client = Client::connect(&config).await?;
    let raw_history = out.join("history.raw.jsonl");
    let mut bench_options = BenchOptions::new(workload);
    bench_options.clients = scenario.workload.clients;
    bench_options.duration = scenario.workload.duration;
    bench_options.keys = scenario.workload.keys;
    bench_options.history = Some(raw_history.clone());
    bench_options.seed = options.seed;
    bench_options.shared_reads = scenario.workload.shared_reads;
    bench_options.rate = (scenario.workload.rate > 0.0).then_some(scenario.workload.rate);
    bench::setup(&client, &bench_options).await?;
    bench_options.setup = false;

    let cluster = Arc::new(Mutex::new(cluster));
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let sampler = sampler::Sampler::start(
        nodes.clone(),
        started,
        SAMPLE_EVERY,
        out.join("metrics"),
        Arc::clone(&progress),
    );
    let driver = tokio::spawn(nemesis::drive(
        schedule.steps.clone(),
        Arc::clone(&cluster),
        nodes.clone(),
        started,
        options.seed,
        sampler.state(),
        kernel.clone(),
    ));
    let bench_report = bench::run(&client, &config, &bench_options, Arc::clone(&progress)).await;
    let log = match driver.await {
        Ok(log) => log,
        Err(error) => vec![nemesis::LogLine::failed(
            started.elapsed(),
            "nemesis",
            format!("the nemesis task ended abnormally: {error}"),
        )],
    };
    let bench_report = bench_report?;
    let workload_end = started.elapsed();
    println!(
        "  workload done at {:.1}s: {} committed, {} aborted, {} unknown; every fault healed; waiting for every transaction to be decided (up to {})...",
        workload_end.as_secs_f64(),
        bench_report.committed,
        bench_report.aborted,
        bench_report.errors,
        format_duration(scenario.settle)
    );
    let settled_after = sampler.wait_settled(scenario.settle).await;
    match settled_after {
        Some(after) => println!("  settled {:.1}s after the workload", after.as_secs_f64()),
        None => println!("  NOT settled within {}", format_duration(scenario.settle)),
    }
    let samples = sampler.stop().await;

    let mut history = outcome::read_history(&raw_history).map_err(output_error(&raw_history))?;
    let mut checks_made: Vec<Check> = Vec::new();
    let audit = audit::audit(
        &client,
        &scenario,
        &bench_report,
        &mut history,
        started.elapsed(),
    )
    .await?;
    checks_made.extend(audit);
    if scenario.workload.kind == LabWorkload::Register {
        checks_made.push(checks::isolation(&history, "strict-serializable"));
    }
    checks_made.push(checks::nothing_in_doubt(&samples));
    let failed_steps: Vec<String> = log
        .iter()
        .filter(|line| !line.ok)
        .map(|line| format!("{:.1}s {}: {}", line.time_s, line.action, line.detail))
        .collect();
    checks_made.push(Check::new(
        "every fault applied and healed",
        failed_steps.is_empty(),
        if failed_steps.is_empty() {
            format!("{} nemesis steps", log.len())
        } else {
            failed_steps.join("; ")
        },
    ));

    let run_s = workload_end.as_secs_f64();
    let (ok, failed, unknown) = checks::outcome_counts(&history);
    let (during, outside) = checks::commit_rates(&history, &schedule.intervals, run_s);
    let injected_by = injected_by(kernel.as_deref());
    let mut summary = vec![
        (
            "source".to_string(),
            match &kernel {
                Some(kernel) => format!(
                    "real dtx node processes, each in its own network namespace on {}",
                    kernel.subnet()
                ),
                None => "real dtx node processes on 127.0.0.1".to_string(),
            },
        ),
        ("faults injected by".to_string(), injected_by.clone()),
        ("committed".to_string(), ok.to_string()),
        (
            "failed (certainly not committed)".to_string(),
            failed.to_string(),
        ),
        ("unknown outcome".to_string(), unknown.to_string()),
        (
            "throughput".to_string(),
            format!("{:.1} commits/s over {:.1}s", bench_report.tps, run_s),
        ),
        (
            "commits/s during faults / without".to_string(),
            format!("{during:.1} / {outside:.1}"),
        ),
        (
            "latency p50 / p99 (committed)".to_string(),
            format!(
                "{:.2} ms / {:.2} ms",
                bench_report.p50_ms, bench_report.p99_ms
            ),
        ),
        (
            "settled after the workload".to_string(),
            settled_after.map_or("not within the settle time".to_string(), |after| {
                format!("{:.2}s", after.as_secs_f64())
            }),
        ),
    ];
    if !bench_report.aborts_by_reason.is_empty() {
        let reasons: Vec<String> = bench_report
            .aborts_by_reason
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        summary.push(("aborts by reason".to_string(), reasons.join(", ")));
    }
    for (interval, recovery) in checks::recovery_times(&history, &schedule.intervals) {
        summary.push((
            format!(
                "recovery after {} ({}) ended at {:.1}s",
                interval.name, interval.detail, interval.end_s
            ),
            recovery.map_or("no commit after it".to_string(), |seconds| {
                format!("first commit {:.3}s later", seconds)
            }),
        ));
    }
    let outcome = LabOutcome {
        scenario: scenario.clone(),
        seed: options.seed,
        source: Source::Real,
        history,
        intervals: schedule.intervals.clone(),
        samples,
        checks: checks_made,
        summary,
    };
    write_outputs(&out, &outcome, &schedule, &log, &injected_by)?;
    std::fs::remove_file(&raw_history).map_err(output_error(&raw_history))?;
    if let Ok(mut cluster) = cluster.lock() {
        cluster.stop_all();
    }
    print_verdict(&outcome, &out);
    Ok((outcome, out))
}

/// Who injected the link faults, for the summary and `nemesis.json`.
fn injected_by(kernel: Option<&netns::KernelNetwork>) -> String {
    match kernel {
        None => "in-node (/faults)".to_string(),
        Some(kernel) if kernel.has_netem() => {
            "kernel (network namespaces): two-way cuts between nodes as blackhole routes, loss/delay/duplication as netem; one-way cuts and cuts from/to the clients in-node (/faults)".to_string()
        }
        Some(_) => "kernel (network namespaces): two-way cuts between nodes as blackhole routes; one-way cuts, cuts from/to the clients and loss/delay/duplication in-node (/faults)".to_string(),
    }
}

fn bench_workload(kind: LabWorkload) -> Workload {
    match kind {
        LabWorkload::Register => Workload::Register,
        LabWorkload::Bank => Workload::Bank,
        LabWorkload::Orders => Workload::Orders,
        LabWorkload::Transfer => Workload::Transfer,
    }
}

/// Writes history.jsonl, nemesis.json (with `faults_injected_by`), samples.jsonl,
/// outcome.json and report.html.
pub fn write_outputs(
    out: &Path,
    outcome: &LabOutcome,
    schedule: &dtx_sim::lab::Schedule,
    log: &[nemesis::LogLine],
    injected_by: &str,
) -> Result<(), LabError> {
    let nemesis = serde_json::json!({
        "intervals": schedule.intervals,
        "steps": schedule.steps,
        "applied": log,
        "faults_injected_by": injected_by,
    });
    outcome::write_artifacts(out, outcome, &nemesis).map_err(output_error(out))?;
    dtx_sim::lab::report::write(out, outcome).map_err(|error| LabError::Output {
        path: out.join("report.html"),
        cause: std::io::Error::other(error.to_string()),
    })?;
    Ok(())
}

/// Prints the checks and the verdict line.
pub fn print_verdict(outcome: &LabOutcome, out: &Path) {
    println!();
    println!("summary");
    for (name, value) in &outcome.summary {
        println!("  {name}: {value}");
    }
    println!();
    println!("checks");
    for check in &outcome.checks {
        println!(
            "  [{}] {}: {}",
            if check.holds { "ok" } else { "VIOLATION" },
            check.name,
            check.detail
        );
    }
    println!();
    println!("report: {}", out.join("report.html").display());
    if outcome.passed() {
        println!("verdict: PASS");
    } else {
        println!("verdict: VIOLATION");
    }
}
