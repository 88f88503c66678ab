#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

//! Interactive transactions: waiting locks, deadlock detection and wound-wait, checked by
//! the simulator (serializability, conservation, deadlock soundness, no endless waits).

use dtx_protocol::DeadlockPolicy;
use dtx_sim::{sweep, Faults, RunConfig, SweepSummary, WorkloadKind};

fn run_sweep(
    workload: WorkloadKind,
    faults: Faults,
    seeds: std::ops::Range<u64>,
    configure: impl Fn(&mut RunConfig),
) -> SweepSummary {
    let mut base = RunConfig::new(0, 5, 1, 200, workload, faults);
    configure(&mut base);
    sweep(&base, seeds, 2, &|_, _, _| {})
}

#[test]
fn interactive_transfers_conserve_money_through_all_faults() {
    let summary = run_sweep(WorkloadKind::Transfer, Faults::ALL, 1..201, |_| {});
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
    assert!(summary.audits_checked > 100, "{summary:?}");
    assert!(
        summary.lock_waits > 1_000,
        "transfers must really wait for locks: {summary:?}"
    );
}

#[test]
fn contention_deadlocks_are_found_by_the_detector_with_no_phantoms() {
    let summary = run_sweep(
        WorkloadKind::Contention,
        Faults::default(),
        1..61,
        |config| config.clients = 8,
    );
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert!(summary.deadlocks_detected > 1_000, "{summary:?}");
    assert_eq!(summary.phantom_aborts, 0);
    let resolved = summary.deadlocks_detected as f64
        / (summary.deadlocks_detected + summary.lock_wait_timeouts) as f64;
    assert!(
        resolved >= 0.99,
        "only {resolved} of deadlocks resolved before the lock-wait timeout: {summary:?}"
    );
}

#[test]
fn contention_survives_all_faults_with_edge_chasing() {
    let summary = run_sweep(WorkloadKind::Contention, Faults::ALL, 1..101, |_| {});
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
    assert!(summary.deadlocks_detected > 0);
}

#[test]
fn wound_wait_prevents_deadlocks_without_probes() {
    let summary = run_sweep(WorkloadKind::Contention, Faults::ALL, 1..101, |config| {
        config.deadlock = DeadlockPolicy::WoundWait;
    });
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.deadlocks_detected, 0);
    assert_eq!(summary.probes, 0);
    assert!(summary.wounds > 100, "{summary:?}");
}

/// Transfers reading their accounts for update (exclusive locks at the read): the checkers
/// hold through every fault, and without faults the transfers commit more often than the
/// same seeds reading under shared locks (where two transfers of one account can both
/// read and then neither upgrade, so both abort or deadlock).
#[test]
fn transfers_reading_for_update_stay_correct_and_abort_less() {
    let summary = run_sweep(WorkloadKind::Transfer, Faults::ALL, 301..401, |config| {
        config.reads_for_update = Some(true)
    });
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
    assert!(summary.audits_checked > 50, "{summary:?}");
    let fault_free = |reads_for_update| {
        run_sweep(WorkloadKind::Transfer, Faults::default(), 1..41, |config| {
            config.reads_for_update = Some(reads_for_update)
        })
    };
    let (locking, shared) = (fault_free(true), fault_free(false));
    for summary in [&locking, &shared] {
        assert_eq!(summary.violations, 0, "{summary:?}");
    }
    assert!(
        locking.aborted * 2 < shared.aborted,
        "reads for update: {} aborted, shared reads: {} aborted",
        locking.aborted,
        shared.aborted
    );
}
