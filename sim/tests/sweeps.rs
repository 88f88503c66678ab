//! Seed sweeps with every fault on: the protocol must show no violation and nothing left
//! undecided after healing. Each failing seed is printed so it can be replayed with
//! `dtx-sim run --seed N`.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_sim::{sweep, Faults, RunConfig, SweepSummary, WorkloadKind};

fn sweep_all_faults(workload: WorkloadKind, seeds: std::ops::Range<u64>) -> SweepSummary {
    let base = RunConfig::new(0, 5, 1, 200, workload, Faults::ALL);
    sweep(&base, seeds, 2, &|_, _, _| {})
}

#[test]
fn register_workload_survives_200_seeds_of_all_faults() {
    let summary = sweep_all_faults(WorkloadKind::Register, 1..201);
    assert_eq!(summary.seeds, 200);
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
    assert!(
        summary.committed > 10_000,
        "too few commits to mean anything: {summary:?}"
    );
    assert!(summary.crashes > 1_000 && summary.partitions > 1_000 && summary.client_crashes > 100);
}

#[test]
fn bank_workload_conserves_money_over_200_seeds_of_all_faults() {
    let summary = sweep_all_faults(WorkloadKind::Bank, 1001..1201);
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
    assert!(
        summary.audits_checked > 100,
        "audits must actually run: {summary:?}"
    );
}

#[test]
fn logs_compacted_mid_run_lose_nothing_under_every_fault() {
    // Seeds with bit 1 set compact every disk's durable prefix into its checkpoint each
    // time it doubles past 16 KiB, between fsyncs, with unsynced records behind it; later
    // crashes (torn tails included) restart from that checkpoint plus the tail. The
    // durability, atomicity and conservation checks must hold as on any seed, and on even
    // ones the restart compares the checkpoint's replay with the full log's.
    let base = RunConfig::new(0, 5, 1, 200, WorkloadKind::Bank, Faults::ALL);
    // Half of these seeds compact (bit 1 set); the other half are the usual control.
    let summary = sweep(&base, 2001..2081, 2, &|_, _, _| {});
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
    assert!(
        summary.log_compactions >= 40 && summary.crashes > 1_000,
        "compaction must happen, and crashes after it: {} compactions, {} crashes",
        summary.log_compactions,
        summary.crashes
    );
}

#[test]
fn f2_on_seven_nodes_survives_all_faults() {
    let base = RunConfig::new(0, 7, 2, 150, WorkloadKind::Register, Faults::ALL);
    let summary = sweep(&base, 1..41, 2, &|_, _, _| {});
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
}

#[test]
fn f0_degenerates_to_two_phase_commit_and_stays_safe() {
    // F=0: one acceptor, no fault tolerance for liveness, but safety must still hold.
    let base = RunConfig::new(0, 3, 0, 150, WorkloadKind::Bank, Faults::ALL);
    let summary = sweep(&base, 1..41, 2, &|_, _, _| {});
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
}

#[test]
fn same_seed_replays_exactly() {
    let config = RunConfig::new(42, 5, 1, 300, WorkloadKind::Bank, Faults::ALL);
    let first = serde_json::to_string(&dtx_sim::run(&config)).unwrap();
    let second = serde_json::to_string(&dtx_sim::run(&config)).unwrap();
    assert_eq!(first, second);
}

#[test]
fn gossip_failure_detector_on_every_seed_keeps_all_faults_safe() {
    let mut base = RunConfig::new(0, 5, 1, 200, WorkloadKind::Bank, Faults::ALL);
    base.detector = Some(true);
    let summary = sweep(&base, 2001..2101, 2, &|_, _, _| {});
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
}
