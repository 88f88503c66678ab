//! CPU per committed transaction, through real `dtx` processes: every node exports the
//! standard Prometheus process metrics on `/metrics` with values that are its own, and
//! `dtx bench --json` turns them into `cpu_us_per_txn`, `msgs_per_txn` and
//! `fsyncs_per_txn`.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use dtx_node::client::Client;
use dtx_node::process_metrics::{parse_boot_time, parse_stat, USER_HZ};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The value of the sample of `name` labelled with node `node` in a `/metrics` text.
fn sample(metrics: &str, name: &str, node: &str) -> f64 {
    let prefix = format!("{name}{{node=\"{node}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix:?} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_exports_its_own_process_metrics() {
    let cluster = start_cluster("process-metrics", 3, 1);
    // Some work, so that every node has spent measurable CPU.
    let client = Client::connect(&cluster.config).await.expect("connect");
    let done = inserts(&client, &names(&cluster), 2, Duration::from_secs(1), "cpu").await;
    assert!(
        done.iter().any(|insert| insert.committed == Some(true)),
        "some inserts commit"
    );
    let now_seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let boot_time = parse_boot_time(&std::fs::read_to_string("/proc/stat").expect("/proc/stat"))
        .expect("btime");
    for name in names(&cluster) {
        let address = cluster.control_address(&name).expect("control address");
        let (status, metrics) = dtx_node::control::request(address, "GET", "/metrics", None)
            .await
            .expect("metrics");
        assert_eq!(status, 200, "{metrics}");
        for family in [
            "process_cpu_seconds",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(
                metrics.contains(&format!("# HELP {family} ")),
                "{name}: no HELP line for {family}:\n{metrics}"
            );
        }
        assert!(
            metrics.contains("# TYPE process_cpu_seconds counter"),
            "{metrics}"
        );
        assert!(
            metrics.contains("# TYPE process_threads gauge"),
            "{metrics}"
        );
        let cpu_seconds = sample(&metrics, "process_cpu_seconds_total", &name);
        let resident = sample(&metrics, "process_resident_memory_bytes", &name);
        let virtual_bytes = sample(&metrics, "process_virtual_memory_bytes", &name);
        let open_fds = sample(&metrics, "process_open_fds", &name);
        let max_fds = sample(&metrics, "process_max_fds", &name);
        let start_time = sample(&metrics, "process_start_time_seconds", &name);
        let threads = sample(&metrics, "process_threads", &name);
        // The values are the node process's own, as the kernel reports them to us.
        let pid = cluster.pid(&name).expect("a running node");
        let stat = parse_stat(
            &std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the node's stat"),
        )
        .expect("a valid stat line");
        let expected_start = boot_time as f64 + stat.start_ticks_after_boot as f64 / USER_HZ as f64;
        assert!(
            (start_time - expected_start).abs() < 0.011,
            "{name}: started at {start_time}, the kernel says {expected_start}"
        );
        assert!(
            start_time <= now_seconds && now_seconds - start_time < 600.0,
            "{name}: started at {start_time}, now is {now_seconds}"
        );
        assert!(
            cpu_seconds > 0.0 && cpu_seconds <= stat.cpu_seconds(),
            "{name}: {cpu_seconds} s of CPU, the kernel says {} s now",
            stat.cpu_seconds()
        );
        assert!(
            resident > 1_000_000.0 && resident < 4e9,
            "{name}: resident {resident}"
        );
        assert!(virtual_bytes >= resident, "{name}: virtual {virtual_bytes}");
        assert!(
            open_fds >= 3.0 && open_fds < max_fds,
            "{name}: fds {open_fds} of {max_fds}"
        );
        // A tokio runtime with worker threads and the write-ahead log's thread.
        assert!(
            (2.0..10_000.0).contains(&threads),
            "{name}: {threads} threads"
        );
    }
    drop(client);
    finish(cluster);
}

#[test]
fn dtx_bench_json_reports_cpu_messages_and_fsyncs_per_transaction() {
    let cluster = start_cluster("process-metrics-bench", 3, 1);
    let output = Command::new(executable())
        .args(["bench", "--workload", "bank", "--clients", "4"])
        .args(["--duration", "3s", "--json", "--config"])
        .arg(&cluster.config_path)
        .output()
        .expect("run dtx bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("per committed transaction: "),
        "the human-readable report shows the costs: {stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON summary line"))
            .expect("the summary is JSON");
    let figure = |field: &str| {
        json[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} is a number: {json}\n{stderr}"))
    };
    assert!(figure("committed") > 0.0, "{json}");
    let cpu_us = figure("cpu_us_per_txn");
    let client_cpu_us = figure("client_cpu_us_per_txn");
    // A transfer of two nodes costs tens to thousands of microseconds of CPU, not 0 and
    // not seconds.
    assert!(
        cpu_us > 1.0 && cpu_us < 1e6,
        "cpu_us_per_txn {cpu_us}: {json}"
    );
    assert!(
        client_cpu_us > 0.0 && client_cpu_us < cpu_us,
        "the client's share {client_cpu_us} of {cpu_us}: {json}"
    );
    // At least a prepare and a decision per participant, both nodes' votes durable.
    assert!(figure("msgs_per_txn") >= 2.0, "{json}");
    assert!(figure("fsyncs_per_txn") > 0.0, "{json}");
    // Every transport write carries at least one message; never more than the batch cap.
    let per_write = figure("msgs_per_write");
    assert!(
        (1.0..=4096.0).contains(&per_write),
        "msgs_per_write {per_write}: {json}"
    );

    // A node whose metrics cannot be read makes the figures unknown, not the bench fail.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let text = std::fs::read_to_string(&cluster.config_path).expect("cluster.toml");
    let n1_control = cluster.control_address("n1").expect("control address");
    assert!(text.contains(&n1_control.to_string()), "{text}");
    let blind = text.replace(&n1_control.to_string(), &format!("127.0.0.1:{closed_port}"));
    let blind_path = cluster.config_path.with_file_name("blind.toml");
    std::fs::write(&blind_path, blind).expect("write blind.toml");
    let output = Command::new(executable())
        .args(["bench", "--workload", "bank", "--clients", "2"])
        .args(["--duration", "1s", "--json", "--config"])
        .arg(&blind_path)
        .output()
        .expect("run dtx bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("cannot read the node's metrics"),
        "{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON summary line"))
            .expect("the summary is JSON");
    for field in [
        "cpu_us_per_txn",
        "msgs_per_txn",
        "fsyncs_per_txn",
        "msgs_per_write",
    ] {
        assert!(json[field].is_null(), "{field} unknown: {json}");
    }
    assert!(
        json["committed"]
            .as_u64()
            .is_some_and(|committed| committed > 0),
        "{json}"
    );
    finish(cluster);
}
