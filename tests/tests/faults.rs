//! Fault injection on real processes (`dtx node --fault-injection`, `POST /faults`): a
//! node without the flag refuses plans; a bad plan is refused with its reason and the
//! node keeps serving; a one-direction drop is one-directional (the dropping node
//! suspects its peers, the peers still trust it); delay and duplication move their
//! counters while transactions still commit, all-or-nothing; healing restores commits.

mod common;

use common::*;
use dtx_cli::local::LocalCluster;
use dtx_node::client::Client;
use dtx_node::control::{self, ControlError};
use dtx_node::faults::{Direction, FaultPlan, FaultRule, PeerSelector, Traffic};
use dtx_protocol::{Key, Operation, Value};
use std::time::Duration;

fn token(cluster: &LocalCluster) -> String {
    control::read_token_file(&cluster.config.control_token_path()).expect("control token")
}

fn address(cluster: &LocalCluster, name: &str) -> std::net::SocketAddr {
    cluster.control_address(name).expect("control address")
}

/// The sample of counter `name` with `direction` in node `node`'s `/metrics`.
async fn metric(cluster: &LocalCluster, node: &str, name: &str, direction: &str) -> u64 {
    let (status, text) = control::request(address(cluster, node), "GET", "/metrics", None)
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    let label = format!("direction=\"{direction}\"");
    text.lines()
        .find(|line| line.starts_with(name) && line.contains(&label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} {label} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_fault_injection_refuses_fault_plans_with_the_reason() {
    let mut cluster = create_cluster("faults-off", 1, 0);
    cluster.start_all().expect("start");
    let plan = FaultPlan::healed().with_rule(FaultRule::partition(PeerSelector::Every));
    match control::set_faults(address(&cluster, "n1"), &token(&cluster), &plan).await {
        Err(ControlError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 403, "{message}");
            assert!(
                message.contains("not started with --fault-injection"),
                "{message}"
            );
        }
        other => panic!("a node without the flag took a plan: {other:?}"),
    }
    assert!(matches!(
        control::get_faults(address(&cluster, "n1")).await,
        Err(ControlError::Refused { status: 403, .. })
    ));
    let report = status(&cluster, "n1").await;
    assert!(!report.fault_injection && !report.faults_active);
    finish(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_plans_drop_one_way_delay_duplicate_and_heal_on_real_nodes() {
    let cluster = start_cluster("faults", 3, 1);
    let names = names(&cluster);
    let token = token(&cluster);
    let n1 = address(&cluster, "n1");

    // (b) Hostile plans are refused with the reason; the node keeps serving.
    let (status_code, body) = control::request_with_body(
        n1,
        "POST",
        "/faults",
        Some(&token),
        Some(b"{\"rules\": [".to_vec()),
    )
    .await
    .expect("answer");
    assert_eq!(status_code, 400, "{body}");
    assert!(body.contains("not a fault plan"), "{body}");
    for (plan, reason) in [
        (
            FaultPlan::healed().with_rule(FaultRule::partition(PeerSelector::node("n9"))),
            "no node named \"n9\"",
        ),
        (
            FaultPlan::healed().with_rule(FaultRule::lossy(PeerSelector::Every, 1.5)),
            "drop must be a probability between 0 and 1, not 1.5",
        ),
    ] {
        match control::set_faults(n1, &token, &plan).await {
            Err(ControlError::Refused {
                status: 400,
                message,
                ..
            }) => assert!(message.contains(reason), "{message}"),
            other => panic!("{plan:?} answered {other:?}"),
        }
    }
    let report = control::get_faults(n1).await.expect("still serving");
    assert!(report.plan.is_healed());
    assert!(status(&cluster, "n1").await.fault_injection);

    // (c) n1 drops everything it receives, sends as usual: n1 suspects n2, while n2 (which
    // hears n1's heartbeats) still trusts n1. Only n1 counts drops, inbound only.
    wait_trusted(&cluster, &["n1"], "n2", Duration::from_secs(30)).await;
    wait_trusted(&cluster, &["n2"], "n1", Duration::from_secs(30)).await;
    let deaf = FaultPlan::healed()
        .with_rule(FaultRule::partition(PeerSelector::Every).with_direction(Direction::In))
        .with_seed(1);
    let in_force = control::set_faults(n1, &token, &deaf)
        .await
        .expect("deaf n1");
    assert_eq!(in_force.plan, deaf);
    wait_member(
        &cluster,
        &["n1"],
        "n2",
        Duration::from_secs(15),
        "suspected",
        |seen| seen.suspected,
    )
    .await;
    let n2_view = status(&cluster, "n2").await;
    let n1_seen = n2_view.member("n1").expect("n1 in n2's view");
    assert!(
        n1_seen.phi.is_some() && !n1_seen.suspected,
        "n2 must still trust n1 (only n1's inbound is cut): {}",
        n2_view.render()
    );
    assert!(status(&cluster, "n1").await.faults_active);
    assert!(!n2_view.faults_active);
    assert!(metric(&cluster, "n1", "dtx_fault_dropped_total", "in").await > 0);
    assert_eq!(
        metric(&cluster, "n1", "dtx_fault_dropped_total", "out").await,
        0
    );
    assert_eq!(
        metric(&cluster, "n2", "dtx_fault_dropped_total", "in").await,
        0
    );
    cluster.partition("n1", &[]).await.expect("heal n1");
    wait_trusted(&cluster, &["n1"], "n2", Duration::from_secs(15)).await;

    // (d) n2 delays its protocol messages both ways by 10-40 ms and duplicates a third of
    // them: transactions still commit, all-or-nothing, and the counters move.
    let slow = FaultPlan::healed()
        .with_rule(
            FaultRule::delayed(PeerSelector::Every, 10, 30)
                .with_duplicate(0.3)
                .with_traffic(Traffic::Protocol),
        )
        .with_seed(42);
    cluster.set_faults("n2", &slow).await.expect("slow n2");
    let client = Client::connect(&cluster.config).await.expect("connect");
    let done = inserts(&client, &names, 2, Duration::from_secs(3), "slow").await;
    let (committed, _, _) = audit_inserts(&client, &done).await;
    assert!(
        committed > 0,
        "nothing committed under delay and duplication"
    );
    let counters = control::get_faults(address(&cluster, "n2"))
        .await
        .expect("n2 faults")
        .counters;
    assert!(
        counters.delayed_in > 0 && counters.delayed_out > 0,
        "{counters:?}"
    );
    assert!(
        counters.duplicated_in > 0 && counters.duplicated_out > 0,
        "{counters:?}"
    );
    assert_eq!(
        counters.dropped_in + counters.dropped_out,
        0,
        "{counters:?}"
    );
    assert!(metric(&cluster, "n2", "dtx_fault_delayed_total", "out").await > 0);
    assert!(metric(&cluster, "n2", "dtx_fault_duplicated_total", "in").await > 0);

    // (e) n2 cut off both ways: what touches it cannot commit; the empty plan heals it and
    // commits on n2 resume.
    cluster.partition("n2", &["*"]).await.expect("cut n2");
    let cut = inserts(&client, &names, 1, Duration::from_secs(2), "cut").await;
    assert!(
        cut.iter()
            .filter(|insert| insert.keys.iter().any(|key| key.starts_with("n2/")))
            .all(|insert| insert.committed != Some(true)),
        "a transaction with a cut-off participant committed"
    );
    cluster
        .set_faults("n2", &FaultPlan::healed())
        .await
        .expect("heal n2");
    retry_until_committed(
        &client,
        vec![
            Operation::Write {
                key: Key::new("n1/healed"),
                value: Value::new(b"1".to_vec()),
            },
            Operation::Write {
                key: Key::new("n2/healed"),
                value: Value::new(b"1".to_vec()),
            },
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(!status(&cluster, "n2").await.faults_active);
    audit_inserts(&client, &cut).await;
    finish(cluster);
}
