//! `dtx lab run` end to end: a real cluster, a partition, a kill, a heal, the verdict and
//! the output files; and a node build with a protocol bug switched on must be caught.

mod common;

use common::executable;
use dtx_cli::local::temporary_dir;
use dtx_sim::lab::{LabOutcome, OpType};
use std::path::{Path, PathBuf};
use std::process::Command;

const SHORT_SCENARIO: &str = r#"
name = "short"
description = "A partition, a kill, a heal: the test suite's lab run."
settle = "20s"

[cluster]
nodes = 3
f = 1

[workload]
kind = "register"
clients = 4
keys = 16
duration = "10s"

[[nemesis]]
kind = "halves"
at = "2s"
duration = "3s"

[[nemesis]]
kind = "kill"
nodes = ["n2"]
at = "6s"
duration = "2s"
"#;

fn run_lab(scenario: &Path, out: &Path) -> (Option<i32>, String) {
    let output = Command::new(executable())
        .args(["lab", "run"])
        .arg(scenario)
        .args(["--seed", "3", "--out"])
        .arg(out)
        .output()
        .expect("dtx lab run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn a_short_scenario_runs_end_to_end_and_writes_every_output() {
    let dir = temporary_dir("dtx-test-lab");
    std::fs::create_dir_all(&dir).expect("dir");
    let scenario = dir.join("short.toml");
    std::fs::write(&scenario, SHORT_SCENARIO).expect("scenario");
    let out = dir.join("out");
    let (code, text) = run_lab(&scenario, &out);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("verdict: PASS"), "{text}");
    assert!(
        text.contains("kill     n2"),
        "the kill is reported live: {text}"
    );

    // The history: Elle JSON lines, invocations completed, some commits.
    let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history");
    let mut oks = 0;
    for line in history.lines() {
        let op: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        for field in ["type", "process", "time", "value", "index", "f"] {
            assert!(op.get(field).is_some(), "{field} missing in {line}");
        }
        oks += usize::from(op["type"] == "ok");
    }
    assert!(oks > 20, "only {oks} commits in 10 s");

    // The outcome: the same history, the faults, samples of every node, the checks.
    let outcome: LabOutcome =
        serde_json::from_str(&std::fs::read_to_string(out.join("outcome.json")).expect("outcome"))
            .expect("outcome.json parses");
    assert!(outcome.passed());
    assert_eq!(
        outcome
            .history
            .iter()
            .filter(|op| op.kind == OpType::Ok)
            .count(),
        oks
    );
    let names: Vec<&str> = outcome.intervals.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["halves", "kill"]);
    for node in ["n1", "n2", "n3"] {
        assert!(outcome.samples.iter().any(|s| s.node == node && s.up));
    }
    assert!(
        outcome.samples.iter().any(|s| s.node == "n2" && !s.up),
        "n2 was seen down while killed"
    );
    let checks: Vec<&str> = outcome.checks.iter().map(|c| c.name.as_str()).collect();
    for expected in [
        "strict-serializable",
        "no acknowledged write lost",
        "nothing in doubt",
    ] {
        assert!(
            checks.iter().any(|name| name.contains(expected)),
            "{expected} missing from {checks:?}"
        );
    }

    // The nemesis log: every step applied.
    let nemesis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("nemesis.json")).expect("nemesis"))
            .expect("nemesis.json parses");
    let applied = nemesis["applied"].as_array().expect("applied steps");
    let actions: Vec<&str> = applied
        .iter()
        .filter_map(|s| s["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["network", "network", "kill", "restart"],
        "{nemesis}"
    );
    assert!(applied.iter().all(|step| step["ok"] == true), "{nemesis}");

    // Samples, per-node logs and metrics, the report with its plots.
    assert!(
        std::fs::read_to_string(out.join("samples.jsonl"))
            .expect("samples")
            .lines()
            .count()
            > 30
    );
    assert!(out.join("cluster/n2.log").exists());
    let metrics = std::fs::read_to_string(out.join("metrics/n1.prom")).expect("metrics");
    assert!(metrics.contains("dtx_"), "{metrics}");
    let report = std::fs::read_to_string(out.join("report.html")).expect("report");
    assert!(report.starts_with("<!DOCTYPE html>"));
    assert!(report.matches("<svg").count() >= 3, "three plots");
    assert!(report.contains("halves") && report.contains("PASS"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_build_with_a_protocol_bug_gets_a_violation_verdict() {
    let dir = temporary_dir("dtx-test-lab-bug");
    let out = dir.join("out");
    let scenario = repository_file("lab/scenarios/bug-release-locks-at-prepare.toml");
    let (code, text) = run_lab(&scenario, &out);
    assert_eq!(code, Some(1), "the bug must be caught: {text}");
    assert!(text.contains("verdict: VIOLATION"), "{text}");
    assert!(
        text.contains("[VIOLATION] money conserved"),
        "the half-applied transfers break conservation: {text}"
    );
    assert!(out.join("report.html").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_scenario_is_refused_with_its_file_and_reason() {
    let dir = temporary_dir("dtx-test-lab-bad");
    std::fs::create_dir_all(&dir).expect("dir");
    let scenario = dir.join("bad.toml");
    std::fs::write(
        &scenario,
        "name='bad'\n[cluster]\nnodes=3\nf=1\n[workload]\nkind='register'\nduration='5s'\n[[nemesis]]\nkind='kill'\nnodes=['n7']\nat='1s'\n",
    )
    .expect("scenario");
    let (code, text) = run_lab(&scenario, &dir.join("out"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("bad.toml") && text.contains("no node named \"n7\""),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
