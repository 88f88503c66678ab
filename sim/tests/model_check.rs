//! Exhaustive model checks of the production protocol core (`dtx_sim::model`, stateright).
//!
//! The exact unique-state counts are asserted on purpose: a change to the protocol's state
//! space (a new field, a message split or bundled differently) shows up here and should be
//! explained in the change that causes it. Reference: Gray & Lamport, "Consensus on
//! Transaction Commit" (2006); PaxosCommit.tla and TCommit.tla for the properties.

use dtx_protocol::Bug;
use dtx_sim::model::system::{
    ACCEPTOR_BALLOTS_MONOTONIC, DECIDED_WHEN_QUIESCENT, ONE_VALUE_CHOSEN, RESOURCE_CONSISTENT,
    TC_CONSISTENT,
};
use dtx_sim::model::{check, CheckOptions, CheckReport, ModelConfig, Verdict};

fn options() -> CheckOptions {
    CheckOptions {
        threads: 2,
        ..CheckOptions::default()
    }
}

fn config(rms: usize, crashes: usize, rounds: u32) -> ModelConfig {
    ModelConfig {
        crashes,
        rounds,
        timeouts: rounds,
        ..ModelConfig::new(rms, 3)
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
}

/// Checks `config` with `bug` on and returns the counterexample for `property`, printed.
/// Breadth first: the search stops at the first violation, which is then a short one.
fn counterexample(mut config: ModelConfig, bug: Bug, property: &str) -> usize {
    config.bug = Some(bug);
    let options = CheckOptions {
        depth_first: false,
        ..options()
    };
    let report = check(&config, &options).expect("valid configuration");
    let found = report
        .property(property)
        .expect("the model has the property");
    assert_eq!(
        found.verdict,
        Verdict::Violated,
        "{} must break \"{property}\"; violated instead: {:?}",
        bug.name(),
        report.violated()
    );
    let trace = found
        .trace
        .as_deref()
        .expect("a counterexample has a trace");
    println!("{} breaks \"{property}\":\n{trace}", bug.name());
    found.trace_length.expect("a counterexample has a length")
}

#[test]
fn two_rms_with_a_crash_and_an_aborting_rm_satisfy_every_property() {
    let config = ModelConfig {
        aborting_rm: true,
        ..config(2, 1, 0)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(report.unique_states, 22_930);
}

#[test]
fn three_rms_with_a_crash_and_an_aborting_rm_satisfy_every_property() {
    let config = ModelConfig {
        aborting_rm: true,
        ..config(3, 1, 0)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(report.unique_states, 398_533);
}

/// One RM with two acceptor-only nodes: a recovery leader (any of the three) runs Phase 1
/// and Phase 2 in round 1 while a node may crash and restart from its log.
#[test]
fn one_rm_with_recovery_and_a_crash_satisfies_every_property() {
    let config = ModelConfig {
        aborting_rm: true,
        ..config(1, 1, 1)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(report.unique_states, 603_244);
}

#[test]
fn one_rm_with_recovery_always_decides_without_loss_or_crash() {
    let config = ModelConfig {
        aborting_rm: true,
        check_liveness: true,
        ..config(1, 0, 1)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(verdict(&report, DECIDED_WHEN_QUIESCENT), Verdict::Holds);
    assert_eq!(report.unique_states, 39_466);
}

#[test]
fn three_rms_always_decide_without_loss_or_crash() {
    let config = ModelConfig {
        aborting_rm: true,
        check_liveness: true,
        ..config(3, 0, 0)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(verdict(&report, DECIDED_WHEN_QUIESCENT), Verdict::Holds);
    assert_eq!(report.unique_states, 71_527);
}

/// The liveness check is not vacuous: without recovery timeouts or client retries, a lost
/// Prepare leaves its RM, and so the transaction, undecided forever.
#[test]
fn liveness_check_catches_a_lost_prepare() {
    let config = ModelConfig {
        lossy: true,
        check_liveness: true,
        ..config(2, 0, 0)
    };
    let options = CheckOptions {
        depth_first: false,
        ..options()
    };
    let report = check(&config, &options).expect("valid configuration");
    assert_eq!(verdict(&report, DECIDED_WHEN_QUIESCENT), Verdict::Violated);
    let trace = report
        .property(DECIDED_WHEN_QUIESCENT)
        .and_then(|property| property.trace.as_deref())
        .expect("a counterexample has a trace");
    println!("a lost Prepare leaves the transaction undecided:\n{trace}");
    assert!(trace.contains("network loses"));
}

#[test]
fn acceptor_skipping_persist_is_caught_after_a_crash() {
    let steps = counterexample(
        config(2, 1, 0),
        Bug::AcceptorSkipsPersist,
        ACCEPTOR_BALLOTS_MONOTONIC,
    );
    assert!(steps > 0);
}

#[test]
fn recovery_ignoring_accepted_values_chooses_two_values() {
    let steps = counterexample(
        config(2, 0, 1),
        Bug::RecoveryIgnoresAccepted,
        ONE_VALUE_CHOSEN,
    );
    assert!(steps > 0);
}

/// With 3 acceptors this bug cannot show: an RM that votes Aborted decides at once and
/// stops accepting, and every other acceptor that could report the other RM's Prepared
/// has seen the Aborted vote too. With 5 acceptors (F=2) three acceptors can bundle
/// "Prepared for n1" before n1 hears of n2's Aborted.
#[test]
fn rm_committing_on_its_own_vote_breaks_atomicity() {
    let config = ModelConfig {
        aborting_rm: true,
        ..ModelConfig::new(2, 5)
    };
    let config = ModelConfig {
        crashes: 0,
        rounds: 0,
        timeouts: 0,
        ..config
    };
    let steps = counterexample(config, Bug::RmCommitsOnOwnVote, TC_CONSISTENT);
    assert!(steps > 0);
}

/// A service participant: the last RM's resource is external and answers each request
/// (prepare, commit or rollback, the restart's prepared list) as a model step of its own,
/// possibly refusing the prepare; the RM may crash and restart while it prepares. The
/// resource never holds the opposite of a decision.
#[test]
fn a_service_rm_with_a_crash_keeps_its_resource_consistent_with_the_outcome() {
    let config = ModelConfig {
        external_resource: true,
        ..config(2, 1, 0)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(verdict(&report, RESOURCE_CONSISTENT), Verdict::Holds);
    // 32,080 before the client held an Abort for its reason (the abort-reasons merge).
    assert_eq!(report.unique_states, 38_318);
}

/// Without loss or crashes every run decides, and the resource ends holding the decided
/// outcome (committed, or rolled back / refused), nothing prepared.
#[test]
fn a_service_rm_always_decides_and_settles_its_resource_without_loss_or_crash() {
    let config = ModelConfig {
        external_resource: true,
        check_liveness: true,
        ..config(2, 0, 0)
    };
    let report = check(&config, &options()).expect("valid configuration");
    assert_all_hold(&report);
    assert_eq!(verdict(&report, DECIDED_WHEN_QUIESCENT), Verdict::Holds);
    assert_eq!(verdict(&report, RESOURCE_CONSISTENT), Verdict::Holds);
    // 5,380 before the client held an Abort for its reason (the abort-reasons merge).
    assert_eq!(report.unique_states, 6_618);
}

#[test]
fn voting_before_the_resource_answers_is_caught_as_an_inconsistent_resource() {
    let config = ModelConfig {
        external_resource: true,
        ..config(2, 0, 0)
    };
    let steps = counterexample(config, Bug::VoteBeforeResource, RESOURCE_CONSISTENT);
    assert!(steps > 0);
}
