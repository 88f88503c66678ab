//! Many seeds across all cores, each run caught so a panic becomes a reported violation.

use crate::checker::Violation;
use crate::config::RunConfig;
use crate::world::{run, RecoverySamples, RunReport, Stats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Instant;

/// Thread-name prefix of sweep workers: their panics are reported, not printed.
const WORKER_PREFIX: &str = "dtx-sim-seed";

/// Runs one seed; a panic (a broken assertion in the protocol or simulator) becomes a
/// violation in the report instead of tearing the process down.
pub fn run_caught(config: &RunConfig) -> RunReport {
    install_quiet_panic_hook();
    match panic::catch_unwind(AssertUnwindSafe(|| run(config))) {
        Ok(report) => report,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            RunReport {
                seed: config.seed,
                stats: Stats::default(),
                violations: vec![Violation::Panic { message }],
                violation_count: 1,
                undecided_after_heal: 0,
                latency_p50_micros: 0,
                latency_p99_micros: 0,
                virtual_millis: 0,
                frames_per_commit: BTreeMap::new(),
                messages_per_commit_by_kind: BTreeMap::new(),
                probes_per_deadlock: 0.0,
                deadlock_latency_p50_micros: 0,
                deadlock_latency_p99_micros: 0,
                detection_p50_micros: 0,
                detection_p99_micros: 0,
                orphan_decided_p50_micros: 0,
                stranded_decided_p50_micros: 0,
                recovery_samples: RecoverySamples::default(),
                history: None,
            }
        }
    }
}

fn install_quiet_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let quiet = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with(WORKER_PREFIX));
            if !quiet {
                previous(info);
            }
        }));
    });
}

/// Totals over a sweep. The last line of `dtx-sim sweep --json` is this object.
#[derive(Debug, Default, Serialize)]
pub struct SweepSummary {
    /// Seeds run.
    pub seeds: u64,
    /// Transactions begun.
    pub txns: u64,
    /// Committed (client view).
    pub committed: u64,
    /// Aborted (client view).
    pub aborted: u64,
    /// Unknown to the client.
    pub unknown: u64,
    /// Violations over all seeds.
    pub violations: u64,
    /// Transactions undecided after healing, over all seeds.
    pub undecided_after_heal: u64,
    /// Seeds with any violation, ascending.
    pub failing_seeds: Vec<u64>,
    /// The first violation of up to 10 failing seeds.
    pub examples: BTreeMap<u64, Violation>,
    /// Node crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Client crashes injected.
    pub client_crashes: u64,
    /// Recovery ballots started.
    pub recoveries: u64,
    /// Durable log prefixes replaced by their checkpoint mid-run.
    pub log_compactions: u64,
    /// Bank audits checked.
    pub audits_checked: u64,
    /// Deadlocks found and broken by the detector.
    pub deadlocks_detected: u64,
    /// Deadlock victims aborted (each detected deadlock aborts one).
    pub deadlock_aborts: u64,
    /// Victims that were on no real cycle when aborted.
    pub phantom_aborts: u64,
    /// Lock waits that hit the lock-wait timeout.
    pub lock_wait_timeouts: u64,
    /// Lock waits begun.
    pub lock_waits: u64,
    /// Wound-wait aborts.
    pub wounds: u64,
    /// Probe messages sent.
    pub probes: u64,
    /// Probes per detected deadlock.
    pub probes_per_deadlock: f64,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Worker threads used.
    pub threads: usize,
    /// Crash-to-decision samples of every seed (see [`RecoverySamples`]).
    #[serde(skip)]
    pub recovery_samples: RecoverySamples,
}

impl SweepSummary {
    fn add(&mut self, report: &RunReport) {
        self.seeds += 1;
        self.txns += report.stats.txns;
        self.committed += report.stats.committed;
        self.aborted += report.stats.aborted;
        self.unknown += report.stats.unknown;
        self.violations += report.violation_count;
        self.undecided_after_heal += report.undecided_after_heal;
        self.crashes += report.stats.crashes;
        self.partitions += report.stats.partitions;
        self.client_crashes += report.stats.client_crashes;
        self.recoveries += report.stats.recoveries;
        self.log_compactions += report.stats.log_compactions;
        self.audits_checked += report.stats.audits_checked;
        self.deadlocks_detected += report.stats.deadlocks_detected;
        self.deadlock_aborts += report.stats.deadlocks_detected;
        self.phantom_aborts += report.stats.phantom_aborts;
        self.lock_wait_timeouts += report.stats.lock_wait_timeouts;
        self.lock_waits += report.stats.lock_waits;
        self.wounds += report.stats.wounds;
        self.probes += report.stats.probes;
        self.probes_per_deadlock = self.probes as f64 / self.deadlocks_detected.max(1) as f64;
        let samples = &report.recovery_samples;
        self.recovery_samples
            .client_crash
            .extend_from_slice(&samples.client_crash);
        self.recovery_samples
            .participant_crash
            .extend_from_slice(&samples.participant_crash);
        if report.violation_count > 0 {
            self.failing_seeds.push(report.seed);
            if self.examples.len() < 10 {
                if let Some(first) = report.violations.first() {
                    self.examples.insert(report.seed, first.clone());
                }
            }
        }
    }
}

/// Runs `base` for every seed in `seeds` on `threads` workers; `progress` is called after
/// each seed with (done, total, summary so far).
pub fn sweep(
    base: &RunConfig,
    seeds: std::ops::Range<u64>,
    threads: usize,
    progress: &(dyn Fn(u64, u64, &SweepSummary) + Sync),
) -> SweepSummary {
    let started = Instant::now();
    let total = seeds.end.saturating_sub(seeds.start);
    let next = AtomicU64::new(seeds.start);
    let summary = Mutex::new(SweepSummary::default());
    let threads = threads.max(1);
    std::thread::scope(|scope| {
        for worker in 0..threads {
            let (next, summary, seeds) = (&next, &summary, &seeds);
            let builder = std::thread::Builder::new().name(format!("{WORKER_PREFIX}-{worker}"));
            let spawned = builder.spawn_scoped(scope, move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let mut config = base.clone();
                config.seed = seed;
                let report = run_caught(&config);
                let mut summary = summary.lock().unwrap_or_else(|poison| poison.into_inner());
                summary.add(&report);
                progress(summary.seeds, total, &summary);
            });
            if let Err(error) = spawned {
                panic!("cannot start a sweep worker: {error}");
            }
        }
    });
    let mut summary = summary
        .into_inner()
        .unwrap_or_else(|poison| poison.into_inner());
    summary.failing_seeds.sort_unstable();
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.threads = threads;
    summary
}
