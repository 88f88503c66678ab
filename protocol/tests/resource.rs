//! The RM with an external resource (a service as a participant): the node asks its
//! resource to prepare and votes what it answers, after the vote record is durable; asks
//! commit or rollback after the decision until acknowledged, and records the
//! acknowledgment; after a restart rolls back every prepare it holds no vote for and
//! settles what the resource lists as prepared.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use std::time::Duration;

/// Node index of the service (n3: owns the `n3/` namespace).
const SERVICE: usize = 2;

/// A harness whose n3 has an external resource.
fn harness() -> Harness {
    let mut harness = Harness::new(3);
    let cluster = cluster(3);
    let mut service = config(3, &cluster);
    service.resource = ResourceKind::External;
    harness.nodes[SERVICE] = Node::new(service);
    harness
}

fn call(target: &str, action: &str) -> Operation {
    Operation::Call {
        target: Key::new(target),
        action: action.to_string(),
        args: Value::new(br#"{"seats":1}"#.to_vec()),
    }
}

/// The service's requests so far, taken from the harness.
fn requests(harness: &mut Harness) -> Vec<ResourceRequest> {
    harness
        .resource_requests
        .drain(..)
        .map(|(index, request)| {
            assert_eq!(index, SERVICE, "only n3 has a resource");
            request
        })
        .collect()
}

/// Begins a transaction writing `n1/a` and calling the service; delivers it; returns the
/// txn and checks that the service was asked to prepare exactly the call.
fn begin_booking(harness: &mut Harness) -> TxnId {
    let txn = harness.begin(vec![write("n1/a", "1"), call("n3/LH400", "reserve")]);
    harness.settle();
    assert_eq!(
        requests(harness),
        vec![ResourceRequest::Prepare {
            txn,
            operations: vec![call("n3/LH400", "reserve")],
        }]
    );
    assert!(harness.result(txn).is_none(), "no outcome before the vote");
    txn
}

#[test]
fn a_prepared_service_commits_with_the_transaction_and_its_acknowledgment_is_recorded() {
    let mut harness = harness();
    let txn = begin_booking(&mut harness);
    // The prepare rests on a durable record naming it.
    assert!(harness.logs[SERVICE].contains(&Record::ResourcePrepare { txn }));
    harness.feed(SERVICE, Input::ResourceVoted { txn, vote: Ok(()) });
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    assert!(harness.nodes[0].store().get(&Key::new("n1/a")).0.is_some());
    assert_eq!(
        requests(&mut harness),
        vec![ResourceRequest::Finish {
            txn,
            outcome: Outcome::Commit,
        }]
    );
    assert_eq!(harness.nodes[SERVICE].resource_status().unacknowledged, 1);
    harness.feed(
        SERVICE,
        Input::ResourceDone {
            txn,
            outcome: Outcome::Commit,
        },
    );
    assert!(harness.logs[SERVICE].contains(&Record::ResourceDone { txn }));
    assert_eq!(harness.nodes[SERVICE].resource_status().unacknowledged, 0);
    // A duplicate acknowledgment changes nothing and asks nothing.
    harness.feed(
        SERVICE,
        Input::ResourceDone {
            txn,
            outcome: Outcome::Commit,
        },
    );
    harness.advance(Duration::from_secs(10));
    assert!(requests(&mut harness).is_empty());
}

#[test]
fn a_service_refusal_aborts_the_transaction_everywhere_and_the_service_is_told_to_roll_back() {
    let mut harness = harness();
    let txn = begin_booking(&mut harness);
    let reason = AbortReason::ServiceRefused {
        reason: "no seats left on LH400".to_string(),
    };
    harness.feed(
        SERVICE,
        Input::ResourceVoted {
            txn,
            vote: Err(reason.clone()),
        },
    );
    assert!(
        matches!(harness.result(txn), Some(TxnResult::Aborted { .. })),
        "{:?}",
        harness.result(txn)
    );
    assert!(harness.nodes[0].store().get(&Key::new("n1/a")).0.is_none());
    // The vote record carries the service's words.
    assert!(harness.logs[SERVICE].iter().any(|record| matches!(
        record,
        Record::Vote { vote: Vote::Aborted, reason: Some(logged), .. } if *logged == reason
    )));
    // Rolled back even though it refused: its answer may have raced a late prepare.
    assert_eq!(
        requests(&mut harness),
        vec![ResourceRequest::Finish {
            txn,
            outcome: Outcome::Abort,
        }]
    );
}

#[test]
fn no_phase2a_leaves_the_service_node_before_its_resource_answers() {
    // Paxos Commit, with one participant too (one-phase sends no Phase2a at all).
    let mut harness = harness().paxos_commit_only();
    let txn = harness.begin(vec![call("n3/LH400", "reserve")]);
    // Deliver the Prepare to n3 alone and look at what it sends.
    let (from, envelope) = harness.mail.pop_front().unwrap();
    assert_eq!(envelope.to, NodeId(3));
    let drained = receive(
        &mut harness.nodes[SERVICE],
        Time::ZERO,
        from,
        envelope.messages,
    );
    assert!(drained.sent.is_empty(), "{:?}", drained.sent);
    assert!(drained.records.contains(&Record::ResourcePrepare { txn }));
    assert_eq!(drained.resource.len(), 1);
    harness.nodes[SERVICE].handle(Time::ZERO, Input::ResourceVoted { txn, vote: Ok(()) });
    let drained = drain(&mut harness.nodes[SERVICE], Time::ZERO);
    let vote_at = drained
        .records
        .iter()
        .position(|record| matches!(record, Record::Vote { .. }))
        .unwrap();
    assert!(vote_at < drained.records.len());
    assert!(drained
        .sent
        .iter()
        .any(|(_, message)| matches!(message, Message::Phase2a { .. })));
}

#[test]
fn an_unacknowledged_outcome_is_asked_again_with_backoff_until_acknowledged() {
    let mut harness = harness();
    let txn = begin_booking(&mut harness);
    harness.feed(SERVICE, Input::ResourceVoted { txn, vote: Ok(()) });
    let finish = ResourceRequest::Finish {
        txn,
        outcome: Outcome::Commit,
    };
    assert_eq!(requests(&mut harness), vec![finish.clone()]);
    let mut asks = 0;
    for _ in 0..100 {
        harness.advance(Duration::from_millis(100));
        asks += requests(&mut harness)
            .into_iter()
            .filter(|request| *request == finish)
            .count();
    }
    // Ten seconds of 100 ms, 200 ms, ... capped at 5 s: a handful of asks, not a flood.
    assert!((3..=8).contains(&asks), "{asks} asks");
    harness.feed(
        SERVICE,
        Input::ResourceDone {
            txn,
            outcome: Outcome::Commit,
        },
    );
    harness.advance(Duration::from_secs(20));
    assert!(requests(&mut harness).is_empty());
}

#[test]
fn a_decision_before_the_resource_answered_rolls_it_back_and_its_late_vote_is_ignored() {
    let mut harness = harness();
    let txn = begin_booking(&mut harness);
    // The service never answers: the decision timeout runs out, a recovery leader finds
    // no vote for n3's instance and aborts.
    for _ in 0..40 {
        harness.advance(Duration::from_millis(50));
    }
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Aborted { .. })
    ));
    assert_eq!(
        harness.nodes[SERVICE].known_outcome(txn),
        Some(Outcome::Abort)
    );
    let asked = requests(&mut harness);
    assert!(asked.contains(&ResourceRequest::Finish {
        txn,
        outcome: Outcome::Abort,
    }));
    // The service's late yes changes nothing: no vote, no Phase2a.
    let before = harness.logs[SERVICE].len();
    harness.feed(SERVICE, Input::ResourceVoted { txn, vote: Ok(()) });
    assert!(!harness.logs[SERVICE][before..]
        .iter()
        .any(|record| matches!(record, Record::Vote { .. })));
}

#[test]
fn a_restart_rolls_back_unvoted_prepares_and_settles_what_the_service_lists() {
    // Paxos Commit, so that the single-participant `in_doubt` is in doubt after the crash.
    let mut harness = harness().paxos_commit_only();
    // t1: asked, never answered (the node crashes while the service prepares).
    let unvoted = begin_booking(&mut harness);
    // t2: prepared and voted, undecided (in doubt) when the node crashes.
    let in_doubt = harness.begin(vec![call("n3/LH401", "reserve")]);
    harness.drop_to.push(NodeId(1));
    harness.drop_to.push(NodeId(2));
    harness.settle();
    requests(&mut harness);
    harness.feed(
        SERVICE,
        Input::ResourceVoted {
            txn: in_doubt,
            vote: Ok(()),
        },
    );
    let log = harness.logs[SERVICE].clone();
    let cluster = cluster(3);
    let mut service = config(3, &cluster);
    service.resource = ResourceKind::External;
    let mut node = Node::recover(service, Time::ZERO, log);
    assert!(node.resource_status().settling);
    // What is owed is due at once: the runtime's first timeout asks it.
    assert_eq!(node.poll_timeout(), Some(Time::ZERO));
    node.handle(Time::ZERO, Input::Timeout);
    let drained = drain(&mut node, Time::ZERO);
    assert!(drained.resource.contains(&ResourceRequest::Finish {
        txn: unvoted,
        outcome: Outcome::Abort,
    }));
    assert!(drained.resource.contains(&ResourceRequest::ListPrepared));
    // New prepares wait until the list is in.
    let newcomer = TxnDescriptor {
        txn: TxnId {
            client: CLIENT,
            sequence: 99,
        },
        participants: vec![NodeId(3)],
        acceptors: vec![NodeId(3), NodeId(1), NodeId(2)],
        f: 1,
        start_time: Time::ZERO,
    };
    let refused = receive(
        &mut node,
        Time::ZERO,
        CLIENT,
        vec![Message::Prepare {
            descriptor: newcomer,
            operations: vec![call("n3/LH402", "reserve")],
        }],
    );
    assert!(refused.sent.iter().any(|(_, message)| matches!(
        message,
        Message::VoteNotice {
            reason: Some(AbortReason::ResourceRecovering),
            ..
        }
    )));
    // The service lists the in-doubt one, the unvoted one and a stranger it prepared
    // for a request this node never recorded (impossible for a conforming service, but
    // the node must not leave it held).
    let stranger = TxnId {
        client: NodeId(77),
        sequence: 1,
    };
    node.handle(
        Time::ZERO,
        Input::ResourceHolds {
            prepared: vec![unvoted, in_doubt, stranger],
        },
    );
    let drained = drain(&mut node, Time::ZERO);
    assert!(!node.resource_status().settling);
    assert!(drained.resource.contains(&ResourceRequest::Finish {
        txn: stranger,
        outcome: Outcome::Abort,
    }));
    assert!(!drained
        .resource
        .iter()
        .any(|request| matches!(request, ResourceRequest::Finish { txn, .. } if *txn == in_doubt)));
    assert!(node.in_doubt().any(|txn| txn == in_doubt));
}

#[test]
fn a_checkpoint_keeps_what_is_owed_to_the_service_and_what_it_was_asked() {
    let mut harness = harness();
    let committed = begin_booking(&mut harness);
    harness.feed(
        SERVICE,
        Input::ResourceVoted {
            txn: committed,
            vote: Ok(()),
        },
    );
    let asked = harness.begin(vec![call("n3/LH401", "reserve")]);
    harness.settle();
    let log = harness.logs[SERVICE].clone();
    // A small outcome window: the owed outcome must outlive it.
    let checkpoint = Node::checkpoint_log(log.clone(), 1);
    assert!(checkpoint.contains(&Record::ResourceOwed {
        outcomes: vec![(committed, Outcome::Commit)],
    }));
    assert!(checkpoint.contains(&Record::ResourcePrepare { txn: asked }));
    let cluster = cluster(3);
    let mut service = config(3, &cluster);
    service.resource = ResourceKind::External;
    let mut node = Node::recover(service, Time::ZERO, checkpoint);
    node.handle(Time::ZERO, Input::Timeout);
    let drained = drain(&mut node, Time::ZERO);
    assert!(drained.resource.contains(&ResourceRequest::Finish {
        txn: committed,
        outcome: Outcome::Commit,
    }));
    assert!(drained.resource.contains(&ResourceRequest::Finish {
        txn: asked,
        outcome: Outcome::Abort,
    }));
}

#[test]
fn a_call_at_a_key_value_node_votes_aborted_with_no_service() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![call("n2/x", "reserve")]);
    harness.settle();
    assert_eq!(harness.nodes[1].known_outcome(txn), Some(Outcome::Abort));
    assert!(harness.logs[1].iter().any(|record| matches!(
        record,
        Record::Vote {
            reason: Some(AbortReason::NoService { .. }),
            ..
        }
    )));
}

#[test]
fn an_interactive_operation_at_a_service_node_is_refused() {
    let mut harness = harness();
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    harness
        .client
        .execute(harness.now, txn, call("n3/LH400", "reserve"))
        .unwrap();
    harness.collect_client();
    harness.settle();
    assert!(
        matches!(
            harness.result(txn),
            Some(TxnResult::Aborted {
                reason: Some(AbortReason::NotInteractive { .. })
            })
        ),
        "{:?}",
        harness.result(txn)
    );
}

/// A harness whose n3 is a service member (namespace-only, as `role = "service"` in
/// cluster.toml makes it) with an external resource.
fn service_member_harness() -> Harness {
    let mut harness = Harness::new(3);
    let cluster = cluster(3).with_namespace_only([NodeId(3)]);
    for index in 0..3 {
        let mut node = config(index as u64 + 1, &cluster);
        if index == SERVICE {
            node.resource = ResourceKind::External;
        }
        harness.nodes[index] = Node::new(node);
    }
    harness
}

/// Steps time by 100 ms, `steps` times (each step fires what is due).
fn wait(harness: &mut Harness, steps: u32) {
    for _ in 0..steps {
        harness.advance(Duration::from_millis(100));
    }
}

#[test]
fn a_slow_service_vote_is_waited_for_not_recovered_at_the_decision_timeout() {
    let mut harness = service_member_harness();
    let txn = begin_booking(&mut harness);
    // 5 s: a hundred decision timeouts (50 ms here) while the service's prepare waits for
    // its own locks.
    wait(&mut harness, 50);
    assert!(
        harness.result(txn).is_none(),
        "recovered while the service was preparing: {:?}",
        harness.result(txn)
    );
    harness.feed(SERVICE, Input::ResourceVoted { txn, vote: Ok(()) });
    wait(&mut harness, 5);
    assert!(
        matches!(harness.result(txn), Some(TxnResult::Committed { .. })),
        "{:?}",
        harness.result(txn)
    );
}

#[test]
fn a_service_vote_missing_past_the_service_vote_timeout_is_recovered_and_aborts() {
    let mut harness = service_member_harness();
    let txn = begin_booking(&mut harness);
    // 15 s by default, then recovery decides Abort for the silent instance.
    wait(&mut harness, 170);
    assert!(
        matches!(harness.result(txn), Some(TxnResult::Aborted { .. })),
        "{:?}",
        harness.result(txn)
    );
    // The late vote changes nothing; the service is told to roll back.
    harness.feed(SERVICE, Input::ResourceVoted { txn, vote: Ok(()) });
    assert!(requests(&mut harness).contains(&ResourceRequest::Finish {
        txn,
        outcome: Outcome::Abort,
    }));
}

#[test]
fn without_the_service_role_a_slow_vote_is_recovered_at_the_decision_timeout() {
    // The same slow service on a member not declared a service: the decision timeout
    // applies (what the grace above changes).
    let mut harness = harness();
    let txn = begin_booking(&mut harness);
    wait(&mut harness, 10);
    assert!(
        matches!(harness.result(txn), Some(TxnResult::Aborted { .. })),
        "{:?}",
        harness.result(txn)
    );
}

#[test]
fn a_service_node_asked_about_a_transaction_it_is_not_preparing_recovers_it_at_once() {
    // A restarted service node rolled back a prepare it had not voted on; when the
    // client asks it, no vote is coming from it, so it must not wait for its own vote
    // (which would hold the other participants' locks for the whole grace).
    let (mut node, descriptor) = two_services_node_and_txn(7);
    let asked = receive(
        &mut node,
        Time::ZERO,
        CLIENT,
        vec![Message::Resolve { descriptor }],
    );
    assert!(
        asked
            .sent
            .iter()
            .any(|(_, message)| matches!(message, Message::Phase1a { .. })),
        "recovery started: {:?}",
        asked.sent
    );
}

#[test]
fn during_the_grace_a_node_asks_the_other_participants_for_the_decision() {
    // Votes this node misses may have been cast and the decision made without it hearing
    // (a lost Phase2b or Decision): while it waits out the grace it asks the other
    // participants, so a decided one answers rather than leaving its rows held 15 s.
    let (mut node, descriptor) = two_services_node_and_txn(8);
    receive(
        &mut node,
        Time::ZERO,
        CLIENT,
        vec![Message::Prepare {
            descriptor,
            operations: vec![call("n3/b", "reserve")],
        }],
    );
    let later = Time::ZERO.saturating_add(Duration::from_secs(1));
    node.handle(later, Input::Timeout);
    let drained = drain(&mut node, later);
    assert!(
        drained
            .sent
            .iter()
            .any(|(to, message)| *to == NodeId(2) && matches!(message, Message::Resolve { .. })),
        "asked n2: {:?}",
        drained.sent
    );
    assert!(
        !drained
            .sent
            .iter()
            .any(|(_, message)| matches!(message, Message::Phase1a { .. })),
        "no recovery during the grace"
    );
}

/// n3 with an external resource in a cluster whose n2 and n3 are services, and a
/// transaction `sequence` with both services as its participants.
fn two_services_node_and_txn(sequence: u64) -> (Node, TxnDescriptor) {
    let cluster = cluster(3).with_namespace_only([NodeId(2), NodeId(3)]);
    let mut service = config(3, &cluster);
    service.resource = ResourceKind::External;
    let descriptor = TxnDescriptor {
        txn: TxnId {
            client: CLIENT,
            sequence,
        },
        participants: vec![NodeId(2), NodeId(3)],
        acceptors: vec![NodeId(3), NodeId(1), NodeId(2)],
        f: 1,
        start_time: Time::ZERO,
    };
    (Node::new(service), descriptor)
}
