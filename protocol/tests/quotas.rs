//! Quotas: open transactions per client, Resolve only with a reason, recoveries led at
//! once, and the storage quota (writes that grow the data refused; deletes, reads and
//! decided commits always served).
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use std::time::Duration;

fn descriptor(client: NodeId, sequence: u64, participants: &[u64]) -> TxnDescriptor {
    TxnDescriptor {
        txn: TxnId { client, sequence },
        participants: participants.iter().copied().map(NodeId).collect(),
        acceptors: vec![NodeId(1), NodeId(2), NodeId(3)],
        f: 1,
        start_time: Time::ZERO,
    }
}

/// Messages sent and records persisted (acknowledged at once), events reported.
fn run(
    node: &mut Node,
    from: NodeId,
    messages: Vec<Message>,
) -> (Vec<Record>, Vec<Message>, Vec<Event>) {
    receive(node, Time::ZERO, from, messages).into_parts()
}

fn node_with(limits: impl FnOnce(&mut Limits)) -> Node {
    let mut config = config(1, &cluster(3));
    limits(&mut config.limits);
    let mut node = Node::new(config);
    drain(&mut node, Time::ZERO);
    node
}

fn prepare(client: NodeId, sequence: u64, key: &str) -> Message {
    Message::Prepare {
        // Two participants: n2 never answers, so the transaction stays open at n1.
        descriptor: descriptor(client, sequence, &[1, 2]),
        operations: vec![write(key, "1")],
    }
}

#[test]
fn a_client_at_its_quota_is_refused_new_transactions_and_nothing_is_recorded() {
    let mut node = node_with(|limits| limits.open_transactions_per_client_max = 2);
    for sequence in 1..=2 {
        let (records, _, _) = run(
            &mut node,
            CLIENT,
            vec![prepare(CLIENT, sequence, &format!("n1/{sequence}"))],
        );
        assert!(records
            .iter()
            .any(|record| matches!(record, Record::Vote { .. })));
    }
    let (records, sent, _) = run(&mut node, CLIENT, vec![prepare(CLIENT, 3, "n1/3")]);
    assert!(records.is_empty(), "{records:?}");
    assert!(
        sent.iter().any(|message| matches!(
            message,
            Message::VoteNotice {
                vote: Vote::Aborted,
                reason: Some(AbortReason::ClientQuota {
                    client: CLIENT,
                    open: 2
                }),
                ..
            }
        )),
        "{sent:?}"
    );
    // A retry of an open one still gets its vote again.
    let (_, sent, _) = run(&mut node, CLIENT, vec![prepare(CLIENT, 1, "n1/1")]);
    assert!(sent
        .iter()
        .any(|message| matches!(message, Message::Phase2a { .. })));
    // A new Execute and a Resolve that would open a transaction are refused too.
    let execute = Message::Execute {
        txn: TxnId {
            client: CLIENT,
            sequence: 4,
        },
        start_time: Time::ZERO,
        sequence: 0,
        operation: write("n1/4", "1"),
    };
    let (_, sent, _) = run(&mut node, CLIENT, vec![execute]);
    assert!(sent.iter().any(|message| matches!(
        message,
        Message::Executed {
            result: Err(AbortReason::ClientQuota { .. }),
            ..
        }
    )));
    assert_eq!(node.executions(), (0, 0));
    let resolve = Message::Resolve {
        descriptor: descriptor(CLIENT, 5, &[1, 2]),
    };
    let (records, _, _) = run(&mut node, CLIENT, vec![resolve]);
    assert!(records.is_empty());
    assert_eq!(
        node.rejected_counts().get(&RejectKind::ClientQuota),
        Some(&1)
    );
    // Another client, and a data node acting as a client, are not affected.
    let other = NodeId(101);
    let (_, _, events) = run(&mut node, other, vec![prepare(other, 1, "n1/other")]);
    assert!(events.iter().any(|event| matches!(
        event,
        Event::Voted {
            vote: Vote::Prepared,
            ..
        }
    )));
    for sequence in 1..=3 {
        let (_, _, events) = run(
            &mut node,
            NodeId(3),
            vec![prepare(NodeId(3), sequence, &format!("n1/m{sequence}"))],
        );
        assert!(events.iter().any(|event| matches!(
            event,
            Event::Voted {
                vote: Vote::Prepared,
                ..
            }
        )));
    }
}

#[test]
fn resolve_is_served_only_with_a_reason() {
    let mut node = node_with(|_| {});
    // From a peer that is neither the client nor a data node.
    let resolve = Message::Resolve {
        descriptor: descriptor(CLIENT, 1, &[1, 2]),
    };
    let (records, sent, events) = run(&mut node, NodeId(66), vec![resolve]);
    assert!(records.is_empty() && sent.is_empty());
    assert!(matches!(
        events[..],
        [Event::Rejected {
            reason: RejectReason::NoReasonToResolve { .. },
            ..
        }]
    ));
    // For a transaction this node has no part in.
    let mut elsewhere = descriptor(CLIENT, 2, &[2]);
    elsewhere.acceptors = vec![NodeId(2), NodeId(3), NodeId(4)];
    let mut four = config(1, &cluster(4));
    four.detector = None;
    let mut node4 = Node::new(four);
    drain(&mut node4, Time::ZERO);
    let (records, sent, events) = run(
        &mut node4,
        CLIENT,
        vec![Message::Resolve {
            descriptor: elsewhere,
        }],
    );
    assert!(records.is_empty() && sent.is_empty());
    assert!(matches!(
        events[..],
        [Event::Rejected {
            reason: RejectReason::NoReasonToResolve { .. },
            ..
        }]
    ));
    assert_eq!(node4.undecided().count(), 0);
    // From a data node, for a transaction it shares: the asker is noted (it asks to
    // learn a decision it may have missed) and no recovery starts on its word; this
    // node's own deadline starts it.
    let resolve = Message::Resolve {
        descriptor: descriptor(CLIENT, 3, &[1, 2]),
    };
    let (_, sent, _) = run(&mut node, NodeId(2), vec![resolve]);
    assert!(!sent
        .iter()
        .any(|message| matches!(message, Message::Phase1a { .. })));
    let later = Time::ZERO.saturating_add(std::time::Duration::from_secs(1));
    node.handle(later, Input::Timeout);
    let (_, sent, _) = drain(&mut node, later).into_parts();
    assert!(sent
        .iter()
        .any(|message| matches!(message, Message::Phase1a { .. })));
}

fn led(sent: &[Message]) -> std::collections::BTreeSet<TxnId> {
    sent.iter()
        .filter_map(|message| match message {
            Message::Phase1a { descriptor, .. } => Some(descriptor.txn),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_leads_at_most_recoveries_led_max_ballots_and_the_rest_wait_their_turn() {
    let mut node = node_with(|limits| limits.recoveries_led_max = 2);
    let resolves = (1..=5)
        .map(|sequence| Message::Resolve {
            descriptor: descriptor(CLIENT, sequence, &[1, 2]),
        })
        .collect();
    let (_, sent, _) = run(&mut node, CLIENT, resolves);
    let first = led(&sent);
    assert_eq!(first.len(), 2, "{first:?}");
    // Later timeouts re-drive the two (same ballots' retries), the rest still wait.
    let mut now = Time::ZERO;
    for _ in 0..5 {
        now = now.saturating_add(Duration::from_secs(1));
        node.handle(now, Input::Timeout);
        let (_, sent, _) = drain(&mut node, now).into_parts();
        assert!(led(&sent).is_subset(&first), "{:?}", led(&sent));
    }
    // One of them decides: a slot frees and a waiting one starts.
    let decided = *first.iter().next().unwrap();
    let decision = Message::Decision {
        txn: decided,
        outcome: Outcome::Abort,
        reads: None,
    };
    node.handle(
        now,
        Input::Receive {
            from: NodeId(2),
            messages: vec![decision],
        },
    );
    drain(&mut node, now);
    let mut started = std::collections::BTreeSet::new();
    for _ in 0..5 {
        now = now.saturating_add(Duration::from_secs(1));
        node.handle(now, Input::Timeout);
        let (_, sent, _) = drain(&mut node, now).into_parts();
        started.extend(led(&sent).difference(&first).copied());
    }
    assert_eq!(started.len(), 1, "{started:?}");
}

/// A harness whose nodes all have a storage quota of `limit` bytes.
fn with_storage_quota(limit: u64) -> Harness {
    let mut harness = Harness::new(3);
    let cluster = cluster(3);
    for index in 0..3 {
        let mut config = config(index as u64 + 1, &cluster);
        config.limits.store_bytes_max = Some(limit);
        harness.nodes[index] = Node::new(config);
    }
    harness
}

fn run_txn(harness: &mut Harness, operations: Vec<Operation>) -> TxnResult {
    let txn = harness.begin(operations);
    harness.settle();
    harness.result(txn).unwrap().clone()
}

fn storage_full(result: &TxnResult) -> bool {
    matches!(
        result,
        TxnResult::Aborted {
            reason: Some(AbortReason::StorageFull { .. })
        }
    )
}

#[test]
fn the_storage_quota_refuses_growing_writes_but_serves_deletes_reads_and_decided_commits() {
    let mut harness = with_storage_quota(100);
    let value = |bytes: usize| "x".repeat(bytes);
    // n1/a: 4 + 60 bytes.
    let committed = run_txn(&mut harness, vec![write("n1/a", &value(60))]);
    assert!(matches!(committed, TxnResult::Committed { .. }));
    assert_eq!(harness.nodes[0].store_bytes(), 64);
    assert!(!harness.nodes[0].storage_full());
    // A prepared write of 4 + 32 bytes takes n1 to the quota exactly: allowed, and held
    // prepared (n2's Prepare is lost, so the transaction waits).
    let held = harness.begin(vec![write("n1/b", &value(32)), write("n2/b", "1")]);
    harness
        .mail
        .retain(|(_, envelope)| envelope.to != NodeId(2));
    harness.drop_to = vec![NodeId(2)];
    harness.settle();
    harness.drop_to.clear();
    assert_eq!(harness.nodes[0].prepared_bytes(), 36);
    assert!(harness.nodes[0].storage_full());
    // Past it: a write that grows the data is refused, with the figures.
    let refused = run_txn(&mut harness, vec![write("n1/c", "1")]);
    assert!(
        matches!(
            &refused,
            TxnResult::Aborted {
                reason: Some(AbortReason::StorageFull {
                    used_bytes: 100,
                    limit_bytes: 100
                })
            }
        ),
        "{refused:?}"
    );
    // A write that does not grow the data, a read and a delete are served.
    let shrink = run_txn(&mut harness, vec![write("n1/a", &value(10))]);
    assert!(matches!(shrink, TxnResult::Committed { .. }), "{shrink:?}");
    let read = run_txn(&mut harness, vec![testing::read("n1/a")]);
    assert!(matches!(read, TxnResult::Committed { .. }));
    // The held transaction, once decided Commit, is applied whatever the quota says.
    harness.client.handle(harness.now, Input::Timeout);
    harness.collect_client();
    for _ in 0..30 {
        harness.advance(Duration::from_millis(100));
    }
    assert!(
        harness.nodes[0].store().get(&Key::new("n1/b")).0.is_some()
            || harness.nodes[0].known_outcome(held) == Some(Outcome::Abort)
    );
    assert_eq!(harness.nodes[0].prepared_bytes(), 0);
    let delete = run_txn(
        &mut harness,
        vec![Operation::Delete {
            key: Key::new("n1/a"),
        }],
    );
    assert!(matches!(delete, TxnResult::Committed { .. }));
    assert_eq!(
        harness.nodes[0].store_bytes(),
        harness.nodes[0]
            .store()
            .get(&Key::new("n1/b"))
            .0
            .map_or(0, |value| 4 + value.0.len() as u64)
    );
    // An interactive write that would grow past the quota votes Aborted at prepare.
    let big = harness.client.begin_interactive(harness.now).unwrap();
    harness
        .client
        .execute(harness.now, big, write("n1/big", &value(200)))
        .unwrap();
    harness.collect_client();
    harness.settle();
    harness.client.commit(harness.now, big).unwrap();
    harness.collect_client();
    harness.settle();
    assert!(
        storage_full(harness.result(big).unwrap()),
        "{:?}",
        harness.result(big)
    );
}

#[test]
fn a_decided_commit_of_a_prepared_write_is_applied_and_releases_its_reservation() {
    let mut node = node_with(|limits| limits.store_bytes_max = Some(50));
    let (_, _, events) = run(&mut node, CLIENT, vec![prepare(CLIENT, 1, "n1/a")]);
    assert!(events.iter().any(|event| matches!(
        event,
        Event::Voted {
            vote: Vote::Prepared,
            ..
        }
    )));
    let txn = descriptor(CLIENT, 1, &[1, 2]).txn;
    let decision = Message::Decision {
        txn,
        outcome: Outcome::Commit,
        reads: None,
    };
    run(&mut node, NodeId(2), vec![decision]);
    assert_eq!(node.known_outcome(txn), Some(Outcome::Commit));
    assert_eq!(node.store_bytes(), 5);
    assert_eq!(node.prepared_bytes(), 0);
}
