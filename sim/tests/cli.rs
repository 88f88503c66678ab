//! The command line works as the README shows it (the first command a newcomer runs).

use std::process::Command;

fn dtx_sim(arguments: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dtx-sim"))
        .args(arguments)
        .output()
        .expect("dtx-sim runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn readme_run_command_reports_ok() {
    let (success, stdout) = dtx_sim(&[
        "run",
        "--seed",
        "7",
        "--nodes",
        "5",
        "--f",
        "1",
        "--txns",
        "300",
        "--faults",
        "all",
        "--workload",
        "bank",
    ]);
    assert!(success, "{stdout}");
    assert!(stdout.contains("result: OK"), "{stdout}");
}

#[test]
fn sweep_json_last_line_has_the_summary_fields() {
    let (success, stdout) = dtx_sim(&[
        "sweep",
        "--seeds",
        "1..5",
        "--faults",
        "all",
        "--workload",
        "register",
        "--json",
        "--detector",
        "on",
    ]);
    assert!(success, "{stdout}");
    let last = stdout.lines().last().expect("some output");
    let summary: serde_json::Value = serde_json::from_str(last).expect("JSON last line");
    for field in [
        "seeds",
        "txns",
        "committed",
        "aborted",
        "violations",
        "undecided_after_heal",
        "failing_seeds",
    ] {
        assert!(summary.get(field).is_some(), "missing {field} in {last}");
    }
}

#[test]
fn bad_arguments_get_a_clear_error_not_a_panic() {
    let output = Command::new(env!("CARGO_BIN_EXE_dtx-sim"))
        .args(["run", "--nodes", "2", "--f", "1"])
        .output()
        .expect("dtx-sim runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs at least 3 nodes"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn check_prints_verdicts_and_a_json_last_line() {
    let (success, stdout) = dtx_sim(&[
        "check",
        "--rms",
        "2",
        "--acceptors",
        "3",
        "--crashes",
        "0",
        "--rounds",
        "0",
        "--aborting-rm",
        "--threads",
        "2",
    ]);
    assert!(success, "{stdout}");
    assert!(stdout.contains("TCConsistent"), "{stdout}");
    let last = stdout.lines().last().expect("some output");
    let summary: serde_json::Value = serde_json::from_str(last).expect("JSON last line");
    assert_eq!(summary["all_hold"], true, "{last}");
    assert_eq!(summary["complete"], true, "{last}");
    assert!(summary["unique_states"].as_u64().unwrap_or(0) > 0, "{last}");
}

#[test]
fn check_rejects_an_impossible_configuration_clearly() {
    let output = Command::new(env!("CARGO_BIN_EXE_dtx-sim"))
        .args(["check", "--rms", "0"])
        .output()
        .expect("dtx-sim runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("RM"), "{stderr}");
}
