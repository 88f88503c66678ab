//! Every checker must be able to fail: each deliberately broken protocol is caught by a
//! sweep of 200 seeds, and by the checker meant for it.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::{Bug, Bugs};
use dtx_sim::{sweep, Faults, RunConfig, Violation, WorkloadKind};

fn caught(bug: Bug, workload: WorkloadKind) -> dtx_sim::SweepSummary {
    caught_with(bug, workload, Faults::ALL)
}

fn caught_with(bug: Bug, workload: WorkloadKind, faults: Faults) -> dtx_sim::SweepSummary {
    let mut base = RunConfig::new(0, 5, 1, 200, workload, faults);
    base.bugs = Bugs::none().with(bug);
    sweep(&base, 1..201, 2, &|_, _, _| {})
}

#[test]
fn acceptor_skips_persist_is_caught_by_ballot_monotonicity_across_crashes() {
    let summary = caught(Bug::AcceptorSkipsPersist, WorkloadKind::Register);
    assert!(summary.violations > 0);
    assert!(
        summary
            .examples
            .values()
            .any(|example| matches!(example, Violation::AcceptorBallotsMonotonic { .. })),
        "{:?}",
        summary.examples
    );
}

#[test]
fn recovery_ignoring_accepted_values_is_caught_as_two_chosen_values() {
    let summary = caught(Bug::RecoveryIgnoresAccepted, WorkloadKind::Register);
    assert!(summary.violations > 0);
    assert!(
        summary
            .examples
            .values()
            .any(|example| matches!(example, Violation::OneValueChosen { .. })),
        "{:?}",
        summary.examples
    );
}

#[test]
fn rm_committing_on_its_own_vote_is_caught_as_an_atomicity_violation() {
    let summary = caught(Bug::RmCommitsOnOwnVote, WorkloadKind::Bank);
    assert!(summary.violations > 0);
    assert!(
        summary
            .examples
            .values()
            .any(|example| matches!(example, Violation::TcConsistent { .. })),
        "{:?}",
        summary.examples
    );
}

#[test]
fn releasing_locks_at_prepare_breaks_serializability_of_interactive_transfers() {
    let summary = caught_with(
        Bug::ReleaseLocksAtPrepare,
        WorkloadKind::Transfer,
        Faults::default(),
    );
    assert!(summary.violations > 0);
    assert!(
        summary
            .examples
            .values()
            .any(|example| matches!(example, Violation::Serializability { .. })),
        "{:?}",
        summary.examples
    );
}

/// Why one-shot read-only participants must keep their shared locks until the decision:
/// in one-shot mode prepare is where the locks are taken, so the transaction's lock point
/// is not behind it. Released early, a bank audit can read one account before a transfer
/// and the other after it. (With the correct protocol the same sweep is clean: see
/// `sweeps.rs`.)
#[test]
fn one_shot_read_only_participants_releasing_at_prepare_breaks_serializability() {
    let summary = caught_with(
        Bug::ReleaseLocksAtPrepare,
        WorkloadKind::Bank,
        "reorder".parse().unwrap(),
    );
    assert!(summary.violations > 0, "{summary:?}");
    assert!(
        summary
            .examples
            .values()
            .any(|example| matches!(example, Violation::Serializability { .. })),
        "{:?}",
        summary.examples
    );
    let clean = {
        let base = RunConfig::new(0, 5, 1, 200, WorkloadKind::Bank, "reorder".parse().unwrap());
        sweep(&base, 1..201, 2, &|_, _, _| {})
    };
    assert_eq!(clean.violations, 0, "{:?}", clean.examples);
}

#[test]
fn without_deadlock_detection_deadlocks_end_only_by_timeout() {
    let mut base = RunConfig::new(0, 5, 1, 200, WorkloadKind::Contention, Faults::default());
    base.bugs = Bugs::none().with(Bug::NoDeadlockDetection);
    let summary = sweep(&base, 1..21, 2, &|_, _, _| {});
    assert_eq!(summary.deadlocks_detected, 0);
    assert!(
        summary.lock_wait_timeouts > 100,
        "deadlocks must show up as timeouts: {summary:?}"
    );
}
