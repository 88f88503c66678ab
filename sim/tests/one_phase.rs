//! One-phase commit in the model checker: a transaction with one participant has no
//! acceptors and its RM decides alone. The production `Node` and `Client` are explored
//! exhaustively with crashes (restart from the log), a duplicating network and client
//! retries (Prepare again, then Resolve at the RM); the acceptor-only nodes must never hear
//! of the transaction. Exact state counts, as in `model_check.rs`.

use dtx_protocol::{Bug, Bugs};
use dtx_sim::model::system::{
    DECIDED_WHEN_QUIESCENT, ONE_PHASE_AT_ITS_RM_ONLY, RESOURCE_CONSISTENT, TC_CONSISTENT,
};
use dtx_sim::model::{check, CheckOptions, CheckReport, ModelConfig, Verdict};
use dtx_sim::{sweep, Faults, RunConfig, Violation, WorkloadKind};

fn options() -> CheckOptions {
    CheckOptions {
        threads: 2,
        ..CheckOptions::default()
    }
}

/// One RM and two acceptor-only nodes, one-phase, the client retrying `client_retries`
/// times, at most `crashes` crashes, and a recovery timeout allowed (none may start one).
fn one_phase(crashes: usize, client_retries: u32) -> ModelConfig {
    ModelConfig {
        crashes,
        rounds: 1,
        timeouts: 1,
        client_retries,
        aborting_rm: true,
        one_phase: true,
        ..ModelConfig::new(1, 3)
    }
}

fn verdict(report: &CheckReport, name: &str) -> Verdict {
    report
        .property(name)
        .map(|property| property.verdict)
        .expect("the model has the property")
}

fn assert_all_hold(report: &CheckReport) {
    for property in &report.properties {
        assert!(
            property.verdict.is_good(),
            "{}: {:?}\n{}",
            property.name,
            property.verdict,
            property.trace.as_deref().unwrap_or("")
        );
    }
    assert!(report.complete, "the exploration must be exhaustive");
    assert_eq!(verdict(report, ONE_PHASE_AT_ITS_RM_ONLY), Verdict::Holds);
}

#[test]
fn one_phase_with_two_crashes_and_client_retries_satisfies_every_property() {
    let report = check(&one_phase(2, 4), &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(report.unique_states, 3_149);
}

#[test]
fn one_phase_always_decides_without_loss_or_crash() {
    let config = ModelConfig {
        check_liveness: true,
        ..one_phase(0, 2)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(verdict(&report, DECIDED_WHEN_QUIESCENT), Verdict::Holds);
    assert_eq!(report.unique_states, 37);
}

/// A service as the only participant: the resource's vote, then the one durable decision;
/// the RM may crash while the service prepares.
#[test]
fn one_phase_at_a_service_keeps_its_resource_consistent_with_the_outcome() {
    let config = ModelConfig {
        external_resource: true,
        ..one_phase(1, 2)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(verdict(&report, RESOURCE_CONSISTENT), Verdict::Holds);
    assert_eq!(report.unique_states, 2_965);
}

/// The RM answers a Resolve of a transaction it never prepared with Aborted but does not
/// record it: the duplicating network delivers the Prepare afterwards and the RM commits a
/// transaction its client reported aborted.
#[test]
fn an_unrecorded_one_phase_abort_is_caught_as_a_broken_atomicity() {
    let mut config = ModelConfig {
        aborting_rm: false,
        ..one_phase(0, 2)
    };
    config.bug = Some(Bug::OnePhaseUnrecordedAbort);
    let options = CheckOptions {
        depth_first: false,
        ..options()
    };
    let report = check(&config, &options).expect("valid configuration");
    let found = report
        .property(TC_CONSISTENT)
        .expect("the model has the property");
    assert_eq!(found.verdict, Verdict::Violated, "{:?}", report.violated());
    let trace = found
        .trace
        .as_deref()
        .expect("a counterexample has a trace");
    println!("one-phase-unrecorded-abort breaks TCConsistent:\n{trace}");
    assert!(trace.contains("Resolve"));
    assert_eq!(found.trace_length, Some(5));
}

/// 200 seeds of all faults with one-phase on for every seed (the default draws it for
/// half): no violation, everything decided after healing.
#[test]
fn one_phase_on_every_seed_survives_200_seeds_of_all_faults() {
    for workload in [WorkloadKind::Register, WorkloadKind::Bank] {
        let mut base = RunConfig::new(0, 5, 1, 200, workload, Faults::ALL);
        base.one_phase = Some(true);
        let summary = sweep(&base, 1..201, 2, &|_, _, _| {});
        assert_eq!(
            summary.violations, 0,
            "{workload:?}: failing seeds {:?}: {:?}",
            summary.failing_seeds, summary.examples
        );
        assert_eq!(summary.undecided_after_heal, 0);
        assert!(summary.committed > 10_000, "{summary:?}");
    }
}

/// The simulator catches a one-phase RM that answers before its write is durable: a crash
/// loses a commit its client was told about (the durability check of the final logs).
#[test]
fn a_one_phase_answer_before_the_write_is_durable_is_caught_as_lost_durability() {
    let mut base = RunConfig::new(0, 5, 1, 200, WorkloadKind::Register, Faults::ALL);
    base.one_phase = Some(true);
    base.bugs = Bugs::none().with(Bug::OnePhaseAnswersBeforeDurable);
    let summary = sweep(&base, 1..201, 2, &|_, _, _| {});
    assert!(summary.violations > 0, "{summary:?}");
    assert!(
        summary
            .examples
            .values()
            .any(|example| matches!(example, Violation::Durability { .. })),
        "{:?}",
        summary.examples
    );
}
