//! `dtx lab run --netns` end to end: every node in its own network namespace, an isolated
//! node cut off by blackhole routes (it must suspect the others while cut), the verdict,
//! and nothing of the lab's left in the kernel afterwards, also after a lab that was
//! killed half-way (the next run removes what it left). Needs root and iproute2: without
//! them this test fails and says so (CI runs as root; .ci/run installs iproute2).

mod common;

use common::executable;
use dtx_cli::local::temporary_dir;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCENARIO: &str = r#"
name = "netns-short"
description = "One node isolated for 3 s by kernel blackhole routes."
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
kind = "isolate"
nodes = ["n1"]
at = "2s"
duration = "3s"
"#;

/// What the lab leaves in the kernel: namespaces and links named `dtxlab...`.
fn lab_objects() -> Vec<String> {
    let mut found = Vec::new();
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        let output = Command::new("ip").args(args).output().expect("ip runs");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if line.contains("dtxlab") {
                found.push(line.to_string());
            }
        }
    }
    found
}

fn require_root_and_ip() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0");
    assert!(
        root,
        "lab_netns needs root (network namespaces, veth pairs, a bridge): run the tests as root"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|output| output.status.success()),
        "lab_netns needs the `ip` command: apt-get install -y iproute2"
    );
}

/// Starts a `--netns` lab, waits until its nodes are up, and SIGKILLs it: its namespaces,
/// veths, bridge and node processes stay behind.
fn kill_a_lab_half_way(scenario: &Path, out: &Path) {
    let mut child = Command::new(executable())
        .args(["lab", "run"])
        .arg(scenario)
        .arg("--netns")
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dtx lab run");
    let stdout = child.stdout.take().expect("stdout");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = BufReader::new(stdout).lines();
    let mut up = false;
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) if line.contains("nodes up") => {
                up = true;
                break;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    child.kill().expect("SIGKILL the lab");
    let _ = child.wait();
    assert!(up, "the first lab never brought its nodes up");
    assert!(
        !lab_objects().is_empty(),
        "a lab killed half-way leaves its namespaces (else this test shows nothing)"
    );
}

#[test]
fn an_isolated_node_in_its_own_namespace_suspects_the_others_and_nothing_is_left() {
    require_root_and_ip();
    let dir = temporary_dir("dtx-test-lab-netns");
    std::fs::create_dir_all(&dir).expect("dir");
    let scenario = dir.join("netns.toml");
    std::fs::write(&scenario, SCENARIO).expect("scenario");

    kill_a_lab_half_way(&scenario, &dir.join("killed"));

    let out = dir.join("out");
    let output = Command::new(executable())
        .args(["lab", "run"])
        .arg(&scenario)
        .args(["--seed", "2", "--netns", "--out"])
        .arg(&out)
        .output()
        .expect("dtx lab run --netns");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("verdict: PASS"), "{text}");
    assert!(
        text.contains("removed what a killed earlier lab left"),
        "the stale objects of the killed lab are removed first: {text}"
    );
    assert!(
        text.contains("faults injected by: kernel (network namespaces)"),
        "{text}"
    );
    assert!(
        text.contains("kernel: 4 blackhole routes"),
        "the isolation is two blackholes in n1 and one in each other node: {text}"
    );

    // The nodes listened on the lab's private subnet, not on 127.0.0.1.
    let config = std::fs::read_to_string(out.join("cluster/cluster.toml")).expect("config");
    assert!(config.contains("/ip4/10.213."), "{config}");
    assert!(!config.contains("127.0.0.1"), "{config}");

    let nemesis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("nemesis.json")).expect("nemesis"))
            .expect("nemesis.json");
    assert!(
        nemesis["faults_injected_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("kernel (network namespaces)")),
        "{nemesis}"
    );

    // While cut off (2 s .. 5 s), n1 suspects the others; before, it suspects nobody.
    let samples = std::fs::read_to_string(out.join("samples.jsonl")).expect("samples");
    let mut suspected_during = 0;
    let mut suspected_before = 0;
    for line in samples.lines() {
        let sample: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if sample["node"] != "n1" {
            continue;
        }
        let time_s = sample["time_s"].as_f64().expect("time_s");
        let suspected = sample["suspected"].as_u64().expect("suspected");
        if (2.5..=5.0).contains(&time_s) {
            suspected_during = suspected_during.max(suspected);
        }
        if time_s < 1.5 {
            suspected_before = suspected_before.max(suspected);
        }
    }
    assert!(
        suspected_during > 0,
        "n1 suspects the others while its namespace blackholes them: {samples}"
    );
    assert_eq!(suspected_before, 0, "{samples}");

    let left = lab_objects();
    assert!(
        left.is_empty(),
        "the lab deletes its namespaces, veths and bridge: {left:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
