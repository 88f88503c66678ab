//! The report of a finished run: counters, latency percentiles, message accounting.

use super::{Simulation, Stats};
use crate::checker::Violation;
use crate::history::History;
use serde::Serialize;
use std::collections::BTreeMap;

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Counters.
    #[serde(flatten)]
    pub stats: Stats,
    /// Violations found (at most 50 in full).
    pub violations: Vec<Violation>,
    /// Number of violations.
    pub violation_count: u64,
    /// Transactions still undecided somewhere after the liveness phase.
    pub undecided_after_heal: u64,
    /// Median commit latency (virtual microseconds).
    pub latency_p50_micros: u64,
    /// 99th percentile commit latency (virtual microseconds).
    pub latency_p99_micros: u64,
    /// Virtual time simulated.
    pub virtual_millis: u64,
    /// Message accounting: per committed transaction, frames per txn by participant count.
    pub frames_per_commit: BTreeMap<usize, f64>,
    /// Messages per committed transaction by kind (all participant counts together).
    pub messages_per_commit_by_kind: BTreeMap<String, f64>,
    /// Deadlock probes per deadlock found.
    pub probes_per_deadlock: f64,
    /// Median time from a cycle's last wait to its victim's abort (virtual microseconds).
    pub deadlock_latency_p50_micros: u64,
    /// 99th percentile of the same.
    pub deadlock_latency_p99_micros: u64,
    /// Median time from a node's crash to a live node suspecting it (virtual microseconds).
    pub detection_p50_micros: u64,
    /// 99th percentile of the same.
    pub detection_p99_micros: u64,
    /// Median time from a client's crash to its transaction being decided by a node.
    pub orphan_decided_p50_micros: u64,
    /// Median time from a data node's crash to the first decision of a transaction it
    /// participated in that was undecided when it crashed.
    pub stranded_decided_p50_micros: u64,
    /// The raw samples behind the two medians above, for aggregation over seeds.
    #[serde(skip)]
    pub recovery_samples: RecoverySamples,
    /// The client-observed history, if recorded.
    #[serde(skip)]
    pub history: Option<History>,
}

/// Crash-to-decision times (virtual microseconds) of transactions a crash left behind.
#[derive(Clone, Debug, Default)]
pub struct RecoverySamples {
    /// A client died during the transaction.
    pub client_crash: Vec<u64>,
    /// A participant (data node) died while the transaction was undecided.
    pub participant_crash: Vec<u64>,
}

impl Simulation {
    /// The report of a finished run.
    pub fn report(mut self) -> RunReport {
        let mut violations: Vec<Violation> = self.observer.violations().to_vec();
        let violation_count = self.observer.violation_count() + self.extra_violations.len() as u64;
        violations.extend(self.extra_violations.iter().take(50).cloned());
        if self.measured.undecided_after_heal > 0 {
            violations.push(Violation::UndecidedAfterHeal {
                count: self.measured.undecided_after_heal,
            });
        }
        let latency_p50_micros = percentile_of(&mut self.measured.latencies, 0.5);
        let latency_p99_micros = percentile_of(&mut self.measured.latencies, 0.99);
        let (frames_per_commit, messages_per_commit_by_kind) = self.accounting();
        let deadlock_latency_p50_micros = percentile_of(&mut self.measured.deadlock_latencies, 0.5);
        let deadlock_latency_p99_micros =
            percentile_of(&mut self.measured.deadlock_latencies, 0.99);
        let probes_per_deadlock = self.measured.stats.probes as f64
            / self.measured.stats.deadlocks_detected.max(1) as f64;
        let detection_p50_micros = percentile_of(&mut self.measured.detection_latencies, 0.5);
        let detection_p99_micros = percentile_of(&mut self.measured.detection_latencies, 0.99);
        let orphan_decided_p50_micros = percentile_of(&mut self.measured.orphan_recoveries, 0.5);
        let stranded_decided_p50_micros =
            percentile_of(&mut self.measured.stranded_recoveries, 0.5);
        RunReport {
            seed: self.config.seed,
            latency_p50_micros,
            latency_p99_micros,
            virtual_millis: self.now.as_micros() / 1000,
            stats: self.measured.stats.clone(),
            violations,
            violation_count: violation_count + u64::from(self.measured.undecided_after_heal > 0),
            undecided_after_heal: self.measured.undecided_after_heal,
            frames_per_commit,
            messages_per_commit_by_kind,
            probes_per_deadlock,
            deadlock_latency_p50_micros,
            deadlock_latency_p99_micros,
            detection_p50_micros,
            detection_p99_micros,
            orphan_decided_p50_micros,
            stranded_decided_p50_micros,
            recovery_samples: RecoverySamples {
                client_crash: std::mem::take(&mut self.measured.orphan_recoveries),
                participant_crash: std::mem::take(&mut self.measured.stranded_recoveries),
            },
            history: self.history.take(),
        }
    }

    pub(super) fn accounting(&self) -> (BTreeMap<usize, f64>, BTreeMap<String, f64>) {
        let committed = self.observer.committed();
        let mut frames: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let mut counted = 0u64;
        for txn in &committed {
            let Some(participants) = self.participants.get(txn) else {
                continue;
            };
            let entry = frames.entry(participants.len()).or_default();
            let traffic = self.measured.traffic_by_txn.get(txn);
            entry.0 += traffic.map_or(0, |traffic| traffic.frames);
            entry.1 += 1;
            counted += 1;
            for (kind, count) in traffic.into_iter().flat_map(|traffic| &traffic.kinds) {
                *kinds.entry(kind.to_string()).or_default() += count;
            }
        }
        let frames = frames
            .into_iter()
            .map(|(participants, (total, count))| {
                (participants, total as f64 / count.max(1) as f64)
            })
            .collect();
        let kinds = kinds
            .into_iter()
            .map(|(kind, total)| (kind, total as f64 / counted.max(1) as f64))
            .collect();
        (frames, kinds)
    }
}

/// The `fraction` percentile of `samples` (sorted in place; 0 when empty).
pub fn percentile_of(samples: &mut [u64], fraction: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let rank = ((samples.len() - 1) as f64 * fraction).round() as usize;
    samples[rank]
}
