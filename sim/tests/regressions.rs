//! Seeds that once found protocol bugs, kept so the bugs stay fixed.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_sim::{run, Faults, RunConfig, WorkloadKind};

fn assert_clean(seed: u64, workload: WorkloadKind, txns: usize) {
    let report = run(&RunConfig::new(seed, 5, 1, txns, workload, Faults::ALL));
    assert_eq!(
        report.violation_count, 0,
        "seed {seed}: {:?}",
        report.violations
    );
    assert_eq!(report.undecided_after_heal, 0);
}

/// A node counted its own acceptor's Phase2b toward a quorum before that acceptance was
/// durable, decided Commit, crashed, and a recovery leader then chose Aborted (atomicity
/// violated). Fixed: self-addressed Phase2b and Decision wait for durability.
#[test]
fn seed_150_bank_self_acceptance_must_be_durable_before_it_counts() {
    assert_clean(150, WorkloadKind::Bank, 200);
}

/// An RM that voted Aborted decided Abort before its vote was durable; after a crash a
/// retried Prepare voted Prepared and the same node later decided Commit.
#[test]
fn seed_155_register_own_abort_must_be_durable_before_it_counts() {
    assert_clean(155, WorkloadKind::Register, 200);
}
