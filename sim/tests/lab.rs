//! `dtx-sim lab`: a lab scenario played in the simulator. The timeline's faults do what
//! they promise (a cut link carries nothing, a paused or killed node receives nothing), a
//! deliberate protocol bug under a partition ends in a violation verdict while the same
//! scenario without it passes, and a seed replays exactly.

use dtx_sim::lab::scenario::{Action, Endpoint};
use dtx_sim::lab::{simulate, LabOutcome, Scenario};
use dtx_sim::world::{run_lab, LabPlan, LabRecord, LinkEnd};
use std::collections::BTreeSet;
use std::process::Command;

/// A small scenario: `nodes` nodes, F=1, 4 clients for `duration`, then `nemeses` (TOML
/// `[[nemesis]]` tables).
fn scenario(nodes: usize, kind: &str, duration: &str, extra: &str, nemeses: &str) -> Scenario {
    let text = format!(
        "name = \"t\"\n{extra}\n[cluster]\nnodes = {nodes}\nf = 1\n[workload]\nkind = \"{kind}\"\n\
         clients = 4\nduration = \"{duration}\"\n{nemeses}"
    );
    Scenario::parse(&text, "t.toml").expect("a valid scenario")
}

fn simulate_record(scenario: &Scenario, seed: u64) -> (LabPlan, LabRecord) {
    let config = simulate::run_config(scenario, seed).expect("runs in the simulator");
    let plan = simulate::plan(scenario, seed);
    let (report, record) = run_lab(&config, plan.clone());
    assert_eq!(
        report.violation_count, 0,
        "the fault-free protocol holds: {:?}",
        report.violations
    );
    (plan, record)
}

fn end(endpoint: &Endpoint) -> LinkEnd {
    match endpoint {
        Endpoint::Clients => LinkEnd::Clients,
        Endpoint::Node(name) => {
            let number: usize = name[1..].parse().expect("nK");
            LinkEnd::Node(number - 1)
        }
    }
}

/// The window after the first step whose action matches `wanted`.
fn window_after(plan: &LabPlan, wanted: impl Fn(&Action) -> bool) -> usize {
    plan.steps
        .iter()
        .position(|step| wanted(&step.action))
        .expect("the step is in the plan")
        + 1
}

fn passed(record: &LabRecord, window: usize, from: LinkEnd, to: LinkEnd) -> u64 {
    record.passed.get(&(window, from, to)).copied().unwrap_or(0)
}

fn received(record: &LabRecord, window: usize, to: LinkEnd) -> u64 {
    record
        .received
        .iter()
        .filter(|((w, _, receiver), _)| *w == window && *receiver == to)
        .map(|(_, count)| count)
        .sum()
}

/// During the first network fault's window, every directed node pair carries frames if
/// and only if the fault does not cut it.
fn assert_cuts_hold(scenario: &Scenario) {
    let (plan, record) = simulate_record(scenario, 5);
    let window = window_after(
        &plan,
        |action| matches!(action, Action::Network { links } if !links.is_empty()),
    );
    let Action::Network { links } = &plan.steps[window - 1].action else {
        unreachable!("window_after found a network step");
    };
    let cut: BTreeSet<(LinkEnd, LinkEnd)> = links
        .iter()
        .filter(|link| link.drop >= 1.0)
        .map(|link| (end(&link.from), end(&link.to)))
        .collect();
    assert!(!cut.is_empty());
    let nodes = scenario.cluster.nodes;
    for a in 0..nodes {
        for b in 0..nodes {
            if a == b {
                continue;
            }
            let pair = (LinkEnd::Node(a), LinkEnd::Node(b));
            let count = passed(&record, window, pair.0, pair.1);
            if cut.contains(&pair) {
                assert_eq!(
                    count,
                    0,
                    "n{} -> n{} is cut but carried frames",
                    a + 1,
                    b + 1
                );
            } else {
                assert!(
                    count > 0,
                    "n{} -> n{} is not cut but carried nothing",
                    a + 1,
                    b + 1
                );
            }
        }
    }
}

#[test]
fn a_ring_cuts_exactly_the_links_between_non_neighbours() {
    assert_cuts_hold(&scenario(
        5,
        "register",
        "3s",
        "",
        "[[nemesis]]\nkind = \"ring\"\nat = \"1s\"\nduration = \"1500ms\"",
    ));
}

#[test]
fn a_bridge_cuts_the_two_halves_apart_but_not_from_the_bridge() {
    assert_cuts_hold(&scenario(
        5,
        "bank",
        "3s",
        "",
        "[[nemesis]]\nkind = \"bridge\"\nat = \"1s\"\nduration = \"1500ms\"",
    ));
}

#[test]
fn an_asymmetric_fault_cuts_one_direction_only() {
    let scenario = scenario(
        3,
        "register",
        "3s",
        "",
        "[[nemesis]]\nkind = \"asymmetric\"\nfrom = \"n1\"\nto = \"n2\"\nat = \"1s\"\nduration = \"1500ms\"",
    );
    assert_cuts_hold(&scenario);
    let (plan, record) = simulate_record(&scenario, 5);
    let window = window_after(&plan, |action| matches!(action, Action::Network { .. }));
    assert_eq!(
        passed(&record, window, LinkEnd::Node(0), LinkEnd::Node(1)),
        0
    );
    assert!(passed(&record, window, LinkEnd::Node(1), LinkEnd::Node(0)) > 0);
}

#[test]
fn an_isolated_node_hears_no_node_but_still_its_clients() {
    let (plan, record) = simulate_record(
        &scenario(
            3,
            "register",
            "3s",
            "",
            "[[nemesis]]\nkind = \"isolate\"\nnodes = [\"n2\"]\nat = \"1s\"\nduration = \"1s\"",
        ),
        2,
    );
    let during = window_after(
        &plan,
        |action| matches!(action, Action::Network { links } if !links.is_empty()),
    );
    let n2 = LinkEnd::Node(1);
    for other in [LinkEnd::Node(0), LinkEnd::Node(2)] {
        assert_eq!(passed(&record, during, other, n2), 0);
        assert_eq!(passed(&record, during, n2, other), 0);
        assert!(
            passed(&record, 0, other, n2) > 0,
            "before the fault they talk"
        );
        assert!(
            passed(&record, during + 1, other, n2) > 0,
            "after the heal again"
        );
    }
    assert!(passed(&record, during, LinkEnd::Clients, n2) > 0);
    assert!(record.frames_dropped > 0);
}

#[test]
fn a_paused_node_receives_and_sends_nothing_until_it_resumes() {
    let (plan, record) = simulate_record(
        &scenario(
            3,
            "bank",
            "3s",
            "",
            "[[nemesis]]\nkind = \"pause\"\nnodes = [\"n3\"]\nat = \"1s\"\nduration = \"1s\"",
        ),
        4,
    );
    let paused = window_after(&plan, |action| matches!(action, Action::Pause { .. }));
    let resumed = window_after(&plan, |action| matches!(action, Action::Resume { .. }));
    let n3 = LinkEnd::Node(2);
    assert_eq!(received(&record, paused, n3), 0);
    let sent: u64 = record
        .passed
        .iter()
        .filter(|((window, from, _), _)| *window == paused && *from == n3)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(sent, 0, "a stopped process sends nothing");
    assert!(received(&record, resumed, n3) > 0);
    assert!(
        record.events_held > 0,
        "what came for it was held, not lost"
    );
    let down: Vec<f64> = record
        .samples
        .iter()
        .filter(|sample| sample.index == 2 && !sample.up)
        .map(|sample| sample.time_micros as f64 / 1e6)
        .collect();
    assert!(!down.is_empty() && down.iter().all(|time| (1.0..2.0).contains(time)));
}

#[test]
fn a_killed_node_is_down_receives_nothing_and_comes_back() {
    let (plan, record) = simulate_record(
        &scenario(
            3,
            "register",
            "3s",
            "",
            "[[nemesis]]\nkind = \"kill\"\nnodes = [\"n1\"]\nat = \"1s\"\nduration = \"1s\"",
        ),
        6,
    );
    let killed = window_after(&plan, |action| matches!(action, Action::Kill { .. }));
    let restarted = window_after(&plan, |action| matches!(action, Action::Restart { .. }));
    let n1 = LinkEnd::Node(0);
    assert_eq!(received(&record, killed, n1), 0);
    assert!(received(&record, restarted, n1) > 0);
    let n1_samples: Vec<(f64, bool)> = record
        .samples
        .iter()
        .filter(|sample| sample.index == 0)
        .map(|sample| (sample.time_micros as f64 / 1e6, sample.up))
        .collect();
    assert!(n1_samples
        .iter()
        .all(|(time, up)| *up != (1.0..2.0).contains(time)));
}

/// Two of three nodes apart, then one isolated: recovery must respect what acceptors
/// accepted.
fn partitions(bugs: &str) -> Scenario {
    scenario(
        3,
        "register",
        "4s",
        bugs,
        "[[nemesis]]\nkind = \"halves\"\nat = \"1s\"\nduration = \"1s\"\n\
         [[nemesis]]\nkind = \"isolate\"\nat = \"2500ms\"\nduration = \"1s\"",
    )
}

/// The outcome without its wall-clock figure (everything else is simulated).
fn simulated_part(outcome: &LabOutcome) -> serde_json::Value {
    let mut outcome = outcome.clone();
    outcome.summary.retain(|(name, _)| name != "wall seconds");
    serde_json::to_value(&outcome).expect("serializes")
}

#[test]
fn recovery_ignoring_accepted_values_under_partitions_is_a_violation() {
    let outcome =
        simulate::run(&partitions("bugs = [\"recovery-ignores-accepted\"]"), 1).expect("runs");
    assert!(!outcome.passed(), "{:#?}", outcome.checks);
    let atomicity = outcome
        .checks
        .iter()
        .find(|check| check.name.starts_with("atomicity"))
        .expect("an atomicity check");
    assert!(!atomicity.holds, "{atomicity:?}");
}

#[test]
fn the_same_partitions_without_the_bug_pass_and_a_seed_replays_exactly() {
    let first = simulate::run(&partitions(""), 1).expect("runs");
    assert!(first.passed(), "{:#?}", first.checks);
    assert!(first.checks.len() >= 8, "{:#?}", first.checks);
    let (committed, _, _) = dtx_sim::lab::checks::outcome_counts(&first.history);
    assert!(committed > 100, "{committed} committed");
    assert!(first.samples.iter().any(|sample| sample.suspected > 0));
    assert_eq!(first.intervals.len(), 2);
    let again = simulate::run(&partitions(""), 1).expect("runs");
    assert_eq!(simulated_part(&first), simulated_part(&again));
    let other = simulate::run(&partitions(""), 2).expect("runs");
    assert_ne!(simulated_part(&first), simulated_part(&other));
}

#[test]
fn the_lab_command_writes_the_artifacts_and_a_verdict() {
    let dir = std::env::temp_dir().join(format!("dtx-sim-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("lossy.toml");
    std::fs::write(
        &file,
        "name = \"lossy\"\nsettle = \"10s\"\n[cluster]\nnodes = 3\nf = 1\n[workload]\nkind = \"bank\"\n\
         clients = 3\nduration = \"2s\"\nrate = 100\n[[nemesis]]\nkind = \"lossy\"\n\
         drop = 0.3\nat = \"500ms\"\nduration = \"1s\"\n",
    )
    .expect("scenario written");
    let out = dir.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dtx-sim"))
        .args([
            "lab",
            file.to_str().expect("utf-8 path"),
            "--seed",
            "3",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("dtx-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("verdict: PASS"), "{stdout}");
    let outcome: LabOutcome =
        serde_json::from_slice(&std::fs::read(out.join("outcome.json")).expect("outcome.json"))
            .expect("a LabOutcome");
    let history =
        dtx_sim::lab::outcome::read_history(&out.join("history.jsonl")).expect("history.jsonl");
    assert_eq!(outcome.history, history);
    // Paced at 100 transactions/s in all for 2 s: the paced ones are the read-only
    // first halves of transfers and the audits (a transfer's write half follows at once).
    // At most 2 s · 100/s plus one per client; closed loop, this seed begins 319.
    let paced = history
        .iter()
        .filter(|op| op.kind == dtx_sim::lab::OpType::Invoke)
        .filter(|op| {
            op.value
                .as_array()
                .is_some_and(|micro_ops| micro_ops.iter().all(|micro_op| micro_op[0] == "r"))
        })
        .count();
    // The setup transaction writes, so it is not among them.
    assert!(
        (100..=203).contains(&paced),
        "{paced} paced transactions at 100/s for 2 s"
    );
    for name in ["nemesis.json", "samples.jsonl"] {
        assert!(out.join(name).is_file(), "{name} written");
    }

    std::fs::write(&file, "name = \"broken\"\n[cluster]\nnodes = 3\n").expect("written");
    let output = Command::new(env!("CARGO_BIN_EXE_dtx-sim"))
        .args(["lab", file.to_str().expect("utf-8 path")])
        .output()
        .expect("dtx-sim runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lossy.toml"), "names the file: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
