//! Every abort says why, through real `dtx` processes: the CLI prints which participant
//! aborted a transaction and why, every time (the reason must not lose the race with the
//! acceptors' Phase2b), the participant's `/metrics` counts its Aborted votes by reason,
//! and `dtx bench --json` counts aborts by reason.

mod common;

use common::*;
use dtx_protocol::Key;
use std::process::Command;

/// Runs `dtx txn OPERATION` against `cluster`; returns its exit code and standard output.
fn txn(cluster: &dtx_cli::local::LocalCluster, operation: &str) -> (Option<i32>, String) {
    let output = Command::new(executable())
        .arg("txn")
        .arg("--config")
        .arg(&cluster.config_path)
        .arg(operation)
        .output()
        .expect("run dtx txn");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtx_txn_prints_the_participant_and_the_reason_of_every_abort() {
    let cluster = start_cluster("abort-reasons", 3, 1);
    let owner_id = cluster.config.cluster.owner(&Key::new("zz"));
    let owner = cluster
        .config
        .node(owner_id)
        .expect("the owner is a member")
        .name
        .clone();
    let expected = format!("aborted by {owner}: update of missing key zz");
    for attempt in 1..=5 {
        let (code, stdout) = txn(&cluster, "update zz 2");
        assert_eq!(code, Some(1), "attempt {attempt}: {stdout}");
        assert!(
            stdout.contains(&expected),
            "attempt {attempt}: expected {expected:?} in {stdout:?}"
        );
    }
    let address = cluster.control_address(&owner).expect("control address");
    let (_, metrics) = dtx_node::control::request(address, "GET", "/metrics", None)
        .await
        .expect("metrics");
    let counted = metrics.lines().any(|line| {
        line.starts_with("dtx_aborted_votes_total")
            && line.contains("reason=\"update_of_missing_key\"")
            && line.ends_with(" 5")
    });
    assert!(
        counted,
        "{owner} counts its 5 Aborted votes by reason:\n{metrics}"
    );
    // Committed work still says nothing of aborts.
    let (code, stdout) = txn(&cluster, "write zz 1");
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout) = txn(&cluster, "read-for-update zz");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("zz"), "the read is printed: {stdout}");
    finish(cluster);
}

#[test]
fn dtx_bench_json_counts_aborts_by_reason() {
    let cluster = start_cluster("abort-reasons-bench", 3, 1);
    let output = Command::new(executable())
        .args([
            "bench",
            "--workload",
            "bank",
            "--clients",
            "8",
            "--keys",
            "4",
            // Shared-lock reads, upgraded at commit: transfers of one account abort.
            "--shared-reads",
        ])
        .args(["--duration", "3s", "--json", "--config"])
        .arg(&cluster.config_path)
        .output()
        .expect("run dtx bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = stdout.lines().last().expect("a JSON summary line");
    let aborted = json_count(json, "aborted").expect("aborted");
    let by_reason = json_object(json, "aborts_by_reason").expect("aborts_by_reason");
    let counted: u64 = by_reason.iter().map(|(_, count)| count).sum();
    assert_eq!(
        counted, aborted,
        "every abort is counted under a reason: {json}"
    );
    // Eight clients moving money among four accounts conflict: some abort for a lock.
    assert!(aborted > 0, "{json}");
    assert!(
        by_reason
            .iter()
            .any(|(kind, _)| kind.contains("lock") || kind == "deadlock" || kind == "wounded"),
        "{json}"
    );
    finish(cluster);
}

/// The whole number at top-level field `field` of the flat JSON object `json`.
fn json_count(json: &str, field: &str) -> Option<u64> {
    let start = json.find(&format!("\"{field}\":"))? + field.len() + 3;
    let digits: String = json[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The (name, count) pairs of the object of whole numbers at field `field` of `json`
/// (the bench summary's maps hold short snake-case names only).
fn json_object(json: &str, field: &str) -> Option<Vec<(String, u64)>> {
    let start = json.find(&format!("\"{field}\":{{"))? + field.len() + 4;
    let end = start + json[start..].find('}')?;
    let body = &json[start..end];
    if body.trim().is_empty() {
        return Some(Vec::new());
    }
    body.split(',')
        .map(|pair| {
            let (name, count) = pair.split_once(':')?;
            Some((name.trim_matches('"').to_string(), count.parse().ok()?))
        })
        .collect()
}
