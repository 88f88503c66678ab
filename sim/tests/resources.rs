//! Service participants in the simulator: the orders workload calls simulated services
//! (`--services`) that fail in their own ways; the resource checker must find a service
//! holding anything but the cluster's decision, and each deliberate bug, protocol-side
//! (`vote-before-resource`) or service-side (`resource-forgets-rollback`), must be caught.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::{Bug, Bugs};
use dtx_sim::{sweep, Faults, RunConfig, ServiceBugs, SweepSummary, Violation, WorkloadKind};

/// Five nodes, the last two service participants, 200 orders per seed.
fn orders(faults: &str) -> RunConfig {
    let mut config = RunConfig::new(0, 5, 1, 200, WorkloadKind::Orders, faults.parse().unwrap());
    config.services = 2;
    config
}

fn any(summary: &SweepSummary, wanted: fn(&Violation) -> bool) -> bool {
    summary.examples.values().any(wanted)
}

/// Every fault, service faults and node crashes included.
#[test]
fn orders_with_service_faults_keep_every_service_consistent_over_50_seeds() {
    let base = orders("all");
    let summary = sweep(&base, 1..51, 2, &|_, _, _| {});
    assert_eq!(
        summary.violations, 0,
        "failing seeds {:?}: {:?}",
        summary.failing_seeds, summary.examples
    );
    assert_eq!(summary.undecided_after_heal, 0);
    assert!(summary.committed > 1_000, "{summary:?}");
    assert!(summary.aborted > 100, "refusals must happen: {summary:?}");
}

#[test]
fn vote_before_resource_is_caught_as_a_service_holding_another_outcome() {
    let mut base = orders("resources");
    base.bugs = Bugs::none().with(Bug::VoteBeforeResource);
    let summary = sweep(&base, 1..51, 2, &|_, _, _| {});
    assert!(summary.violations > 0, "{summary:?}");
    assert!(
        any(&summary, |example| matches!(
            example,
            Violation::ResourceOutcome { .. }
        )),
        "{:?}",
        summary.examples
    );
}

#[test]
fn a_service_forgetting_rollbacks_is_caught_holding_a_late_prepare() {
    let mut base = orders("resources");
    base.service_bugs = ServiceBugs {
        forgets_rollback: true,
    };
    let summary = sweep(&base, 1..51, 2, &|_, _, _| {});
    assert!(summary.violations > 0, "{summary:?}");
    assert!(
        any(&summary, |example| matches!(
            example,
            Violation::ResourceStillPrepared { .. }
        )),
        "{:?}",
        summary.examples
    );
    // The same seeds with a service that remembers its rollbacks are clean.
    let clean = sweep(&orders("resources"), 1..51, 2, &|_, _, _| {});
    assert_eq!(clean.violations, 0, "{:?}", clean.examples);
}

/// Regression (seed 29, `dtx-sim run --seed 29 --workload orders --services 2`): a
/// service's node restarting refused prepares until its resource listed what it holds
/// (`ResourceRecovering`) with a VoteNotice only (nothing recorded, no Phase2a); the client
/// aborted on the notice, but its retried Prepare, arriving after the list came, was asked
/// of the service and voted Prepared: the instances chose Commit while the client reported
/// Abort. Fixed by making such a refusal the RM's durable Aborted vote (`finish_vote` in
/// `prepare_at_resource`).
#[test]
fn after_a_restart_a_refusal_while_the_resource_settles_stays_a_refusal() {
    let mut config = orders("all");
    config.seed = 29;
    let report = dtx_sim::run(&config);
    assert_eq!(report.violations, Vec::new());
}

#[test]
fn faults_all_includes_service_faults_and_parses_them() {
    assert!(Faults::ALL.to_string().ends_with(",resources"));
    let faults: Faults = "resources".parse().unwrap();
    assert!(faults.resources && !faults.crashes);
    assert_eq!(faults.to_string(), "resources");
}
