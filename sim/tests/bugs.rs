//! Every checker must be able to fail: each deliberately broken protocol is caught by a
//! sweep of 200 seeds, and by the checker meant for it.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::{Bug, Bugs};
use dtx_sim::{sweep, Faults, RunConfig, WorkloadKind};

fn caught(bug: Bug, workload: WorkloadKind) -> dtx_sim::SweepSummary {
    let mut base = RunConfig::new(0, 5, 1, 200, workload, Faults::ALL);
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
            .any(|example| example.contains("went backwards across a crash")),
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
            .any(|example| example.contains("chose both Prepared and Aborted")),
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
            .any(|example| example.contains("atomicity violated")),
        "{:?}",
        summary.examples
    );
}
