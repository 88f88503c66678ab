//! A peer's word and the disk's word never panic a node: hostile ballots, contradicting
//! decisions and impossible log records are rejected, counted, capped or skipped.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::types::LEADER_ROUND_MAX;
use dtx_protocol::*;
use std::time::Duration;

fn descriptor(sequence: u64, participants: &[u64]) -> TxnDescriptor {
    TxnDescriptor {
        txn: TxnId {
            client: CLIENT,
            sequence,
        },
        participants: participants.iter().copied().map(NodeId).collect(),
        acceptors: vec![NodeId(1), NodeId(2), NodeId(3)],
        f: 1,
        start_time: Time::ZERO,
    }
}

fn ballot(round: u32, leader: u64) -> Ballot {
    Ballot {
        round,
        leader: NodeId(leader),
    }
}

fn rejections(drained: &Drained) -> Vec<RejectReason> {
    drained
        .events
        .iter()
        .filter_map(|event| match event {
            Event::Rejected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn anomalies(drained: &Drained) -> Vec<ReplayProblem> {
    drained
        .events
        .iter()
        .filter_map(|event| match event {
            Event::ReplayAnomaly { problem } => Some(problem.clone()),
            _ => None,
        })
        .collect()
}

fn exhausted(drained: &Drained) -> bool {
    drained
        .events
        .iter()
        .any(|event| matches!(event, Event::RecoveryRoundsExhausted { .. }))
}

fn node_config(index: u64) -> NodeConfig {
    config(index, &cluster(3))
}

/// The Prepare a client sends n1 for a one-shot write of `n1/{key}`.
fn prepare(sequence: u64, key: &str) -> Message {
    Message::Prepare {
        descriptor: descriptor(sequence, &[1]),
        operations: vec![write(&format!("n1/{key}"), "1")],
    }
}

#[test]
fn a_log_holding_the_maximum_leader_round_recovers_and_restarts_twice_without_panicking() {
    let now = Time::ZERO;
    let mut log = vec![Record::LeaderRound { round: u32::MAX }];
    for restart in 0..2 {
        let mut node = Node::recover(node_config(1), now, log.clone());
        let drained = drain(&mut node, now);
        assert!(
            anomalies(&drained).contains(&ReplayProblem::LeaderRoundCapped { round: u32::MAX }),
            "restart {restart}: {:?}",
            drained.events
        );
        assert!(exhausted(&drained), "restart {restart}: the node says so");
        log.extend(drained.records);
        // It still serves as an RM: a Prepare is voted on and the vote persisted.
        let voted = receive(&mut node, now, CLIENT, vec![prepare(1 + restart, "a")]);
        assert!(voted
            .records
            .iter()
            .any(|record| matches!(record, Record::Vote { .. })));
        log.extend(voted.records);
        // A recovery it would lead stands down with an event instead of overflowing.
        let resolve = Message::Resolve {
            descriptor: descriptor(50 + restart, &[1, 2]),
        };
        let resolved = receive(&mut node, now, CLIENT, vec![resolve]);
        assert!(exhausted(&resolved), "{:?}", resolved.events);
        assert!(!resolved
            .sent
            .iter()
            .any(|(_, message)| matches!(message, Message::Phase1a { .. })));
        log.extend(resolved.records);
    }
    // Restarts keep raising the incarnation above the capped round.
    let rounds: Vec<u32> = log
        .iter()
        .filter_map(|record| match record {
            Record::LeaderRound { round } => Some(*round),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, vec![u32::MAX, ROUND_MAX + 1, ROUND_MAX + 2]);
}

#[test]
fn a_node_past_the_last_round_leads_no_recovery_and_says_so() {
    let now = Time::ZERO;
    let mut node = Node::recover(
        node_config(1),
        now,
        vec![Record::LeaderRound { round: ROUND_MAX }],
    );
    assert!(exhausted(&drain(&mut node, now)));
    let resolve = Message::Resolve {
        descriptor: descriptor(7, &[1, 2]),
    };
    let resolved = receive(&mut node, now, CLIENT, vec![resolve]);
    assert!(exhausted(&resolved));
    // Only the restart's incarnation is written, no ballot round.
    assert_eq!(
        resolved.records,
        vec![Record::LeaderRound {
            round: ROUND_MAX + 1
        }]
    );
    // At the last incarnation a restart writes nothing and says so.
    let mut node = Node::recover(
        node_config(1),
        now,
        vec![Record::LeaderRound {
            round: LEADER_ROUND_MAX,
        }],
    );
    let restarted = drain(&mut node, now);
    assert!(exhausted(&restarted) && anomalies(&restarted).is_empty());
    let voted = receive(&mut node, now, CLIENT, vec![prepare(1, "a")]);
    assert!(!voted
        .records
        .iter()
        .any(|record| matches!(record, Record::LeaderRound { .. })));
}

#[test]
fn a_phase1a_with_the_maximum_round_is_rejected_and_nothing_is_persisted() {
    let now = Time::ZERO;
    let mut node = Node::new(node_config(1));
    drain(&mut node, now);
    let phase1a = Message::Phase1a {
        descriptor: descriptor(1, &[2]),
        ballot: ballot(u32::MAX, 2),
    };
    let drained = receive(&mut node, now, NodeId(2), vec![phase1a]);
    assert_eq!(
        rejections(&drained),
        vec![RejectReason::BallotOutOfRange {
            message: MessageKind::Phase1a,
            round: u32::MAX,
        }]
    );
    assert!(drained.records.is_empty(), "{:?}", drained.records);
    assert!(drained.sent.is_empty(), "{:?}", drained.sent);
    assert_eq!(node.undecided().count(), 0);
    assert_eq!(
        node.rejected_counts().get(&RejectKind::BallotOutOfRange),
        Some(&1)
    );
    // The node's own next recovery uses an ordinary round.
    let resolve = Message::Resolve {
        descriptor: descriptor(2, &[1, 2]),
    };
    let resolved = receive(&mut node, now, CLIENT, vec![resolve]);
    assert!(resolved.sent.iter().any(|(_, message)| matches!(
        message,
        Message::Phase1a { ballot, .. } if ballot.round == 1
    )));
}

#[test]
fn every_ballot_carrying_message_above_the_limit_is_rejected_before_it_touches_state() {
    let now = Time::ZERO;
    let txn = descriptor(1, &[1, 2]).txn;
    let out_of_range = ballot(ROUND_MAX + 1, 2);
    let report = dtx_protocol::message::InstanceReport {
        rm: NodeId(1),
        accepted_ballot: Some(out_of_range),
        accepted_value: Some(Vote::Aborted),
    };
    let messages = vec![
        Message::Phase2a {
            descriptor: descriptor(1, &[1, 2]),
            rm: NodeId(2),
            ballot: out_of_range,
            value: Vote::Aborted,
        },
        Message::Phase2b {
            txn,
            rm: NodeId(2),
            ballot: out_of_range,
            value: Vote::Aborted,
        },
        Message::Phase1b {
            txn,
            ballot: ballot(1, 1),
            reports: vec![report],
        },
        Message::Reject {
            txn,
            promised: out_of_range,
        },
    ];
    for message in messages {
        let mut node = Node::new(node_config(1));
        drain(&mut node, now);
        let kind = message.kind();
        let drained = receive(&mut node, now, NodeId(2), vec![message]);
        assert!(
            matches!(
                rejections(&drained)[..],
                [RejectReason::BallotOutOfRange { message, .. }] if message == kind
            ),
            "{kind}: {:?}",
            drained.events
        );
        assert!(
            drained.records.is_empty() && drained.sent.is_empty(),
            "{kind}"
        );
    }
    // ROUND_MAX itself is a legal round.
    assert!(ballot(ROUND_MAX, 2).is_in_range());
}

#[test]
fn a_reject_with_the_maximum_promised_round_overflows_nothing() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1"), write("n2/b", "2")]);
    // n2 never gets its Prepare: n1 votes and, at its timeout, leads recovery.
    harness.drop_to = vec![NodeId(2)];
    harness.settle();
    harness.drop_to.clear();
    harness.now = harness.now.saturating_add(Duration::from_secs(1));
    harness.nodes[0].handle(harness.now, Input::Timeout);
    let led = drain(&mut harness.nodes[0], harness.now);
    assert!(led
        .sent
        .iter()
        .any(|(_, message)| matches!(message, Message::Phase1a { .. })));
    let hostile = Message::Reject {
        txn,
        promised: ballot(u32::MAX, 3),
    };
    let drained = receive(&mut harness.nodes[0], harness.now, NodeId(3), vec![hostile]);
    assert!(matches!(
        rejections(&drained)[..],
        [RejectReason::BallotOutOfRange { .. }]
    ));
    // Its next attempt picks an ordinary round and the transaction is decided.
    for (to, message) in led.sent {
        harness.mail.push_back((
            NodeId(1),
            Envelope {
                to,
                messages: vec![message],
            },
        ));
    }
    for _ in 0..20 {
        harness.advance(Duration::from_millis(200));
    }
    assert!(harness.nodes[0].known_outcome(txn).is_some());
}

#[test]
fn a_log_with_an_absurd_promise_replays_and_answers_without_panicking() {
    let now = Time::ZERO;
    let state = AcceptorState {
        promised: ballot(u32::MAX, 9),
        accepted_ballot: Some(ballot(u32::MAX, 9)),
        accepted_value: Some(Vote::Aborted),
    };
    let log = vec![Record::Acceptor {
        descriptor: descriptor(1, &[2]),
        rm: NodeId(2),
        state,
    }];
    let mut node = Node::recover(node_config(1), now, log);
    drain(&mut node, now);
    // A leader's Phase1a is answered with a Reject naming the promise (an old log's
    // value is kept: forgetting an accepted value could un-choose it).
    let phase1a = Message::Phase1a {
        descriptor: descriptor(1, &[2]),
        ballot: ballot(1, 2),
    };
    let drained = receive(&mut node, now, NodeId(2), vec![phase1a]);
    assert!(drained
        .sent
        .iter()
        .any(|(_, message)| matches!(message, Message::Reject { .. })));
    // The node's own recovery of it stands down safely when its leader receives such a
    // Reject; and the node itself leads with an ordinary round.
    node.handle(now.saturating_add(Duration::from_secs(5)), Input::Timeout);
    let led = drain(&mut node, now.saturating_add(Duration::from_secs(5)));
    assert!(!exhausted(&led));
}

#[test]
fn impossible_acceptor_and_descriptor_records_are_skipped_with_a_reason() {
    let now = Time::ZERO;
    let promised = AcceptorState {
        promised: ballot(3, 2),
        ..AcceptorState::default()
    };
    let malformed_state = AcceptorState {
        promised: Ballot::ZERO,
        accepted_ballot: Some(ballot(5, 2)),
        accepted_value: Some(Vote::Prepared),
    };
    let mut bad_shape = descriptor(2, &[2]);
    bad_shape.f = 9; // 19 acceptors wanted, 3 listed: thrifty slicing would panic.
    let txn = descriptor(1, &[2]).txn;
    let log = vec![
        Record::Acceptor {
            descriptor: descriptor(1, &[2]),
            rm: NodeId(2),
            state: promised,
        },
        Record::Acceptor {
            descriptor: descriptor(1, &[2]),
            rm: NodeId(2),
            state: AcceptorState::default(),
        },
        Record::Acceptor {
            descriptor: descriptor(1, &[2]),
            rm: NodeId(2),
            state: malformed_state,
        },
        Record::Vote {
            descriptor: bad_shape.clone(),
            vote: Vote::Prepared,
            reason: None,
            writes: Vec::new(),
            locks: Vec::new(),
            read_versions: Vec::new(),
        },
    ];
    let mut node = Node::recover(node_config(1), now, log);
    let drained = drain(&mut node, now);
    assert_eq!(
        anomalies(&drained),
        vec![
            ReplayProblem::AcceptorStateRegressed { txn, rm: NodeId(2) },
            ReplayProblem::AcceptorStateMalformed { txn, rm: NodeId(2) },
            ReplayProblem::MalformedDescriptor {
                txn: bad_shape.txn,
                problem: DescriptorProblem::AcceptorCount,
            },
        ]
    );
    assert_eq!(node.acceptor_state(txn, NodeId(2)), Some(promised));
    assert_eq!(node.undecided().count(), 1);
}

#[test]
fn conflicting_prepared_votes_in_a_log_keep_both_locks_without_panicking() {
    let now = Time::ZERO;
    let vote = |sequence| Record::Vote {
        descriptor: descriptor(sequence, &[1]),
        vote: Vote::Prepared,
        reason: None,
        writes: vec![(Key::new("n1/a"), Some(Value::new(b"1".to_vec())))],
        locks: vec![(Key::new("n1/a"), LockMode::Exclusive)],
        read_versions: Vec::new(),
    };
    let mut node = Node::recover(node_config(1), now, vec![vote(1), vote(2)]);
    let drained = drain(&mut node, now);
    assert_eq!(
        anomalies(&drained),
        vec![ReplayProblem::ConflictingPreparedLocks {
            txn: descriptor(2, &[1]).txn,
            key: Key::new("n1/a"),
        }]
    );
    assert_eq!(node.in_doubt().count(), 2);
    // A new transaction cannot take the key while either holds it.
    let voted = receive(&mut node, now, CLIENT, vec![prepare(3, "a")]);
    assert!(voted.events.iter().any(|event| matches!(
        event,
        Event::Voted {
            vote: Vote::Aborted,
            reason: Some(AbortReason::LockConflict { .. }),
            ..
        }
    )));
}

#[test]
fn a_commit_decision_for_a_transaction_this_rm_voted_aborted_is_rejected_and_counted() {
    let now = Time::ZERO;
    let mut node = Node::new(node_config(1));
    drain(&mut node, now);
    let update_of_missing = Message::Prepare {
        descriptor: descriptor(1, &[1, 2]),
        operations: vec![Operation::Update {
            key: Key::new("n1/missing"),
            value: Value::new(b"1".to_vec()),
        }],
    };
    // Held back: the node decides Abort only once its vote is durable, so the hostile
    // Decision arrives while it is still undecided.
    node.handle(
        now,
        Input::Receive {
            from: CLIENT,
            messages: vec![update_of_missing],
        },
    );
    let txn = descriptor(1, &[1, 2]).txn;
    let commit = Message::Decision {
        txn,
        outcome: Outcome::Commit,
        reads: None,
    };
    let drained = receive(&mut node, now, NodeId(2), vec![commit.clone()]);
    assert!(rejections(&drained).contains(&RejectReason::ContradictsOwnVote { txn }));
    assert_eq!(node.known_outcome(txn), Some(Outcome::Abort));
    // Once the outcome is known, another contradicting Decision is rejected too.
    let again = receive(&mut node, now, NodeId(3), vec![commit]);
    assert_eq!(
        rejections(&again),
        vec![RejectReason::ContradictsKnownOutcome {
            txn,
            outcome: Outcome::Commit,
            known: Outcome::Abort,
        }]
    );
    assert_eq!(
        node.rejected_counts()
            .get(&RejectKind::ContradictsKnownOutcome),
        Some(&1)
    );
    assert_eq!(
        node.rejected_counts().get(&RejectKind::ContradictsOwnVote),
        Some(&1)
    );
    assert!(node.store().rows().is_empty());
}

#[test]
fn a_commit_record_for_an_aborted_vote_replays_without_applying() {
    let now = Time::ZERO;
    let descriptor = descriptor(1, &[1]);
    let txn = descriptor.txn;
    let log = vec![
        Record::Vote {
            descriptor,
            vote: Vote::Aborted,
            reason: None,
            writes: Vec::new(),
            locks: Vec::new(),
            read_versions: Vec::new(),
        },
        Record::Outcome {
            txn,
            outcome: Outcome::Commit,
        },
    ];
    let mut node = Node::recover(node_config(1), now, log);
    let drained = drain(&mut node, now);
    assert_eq!(
        anomalies(&drained),
        vec![ReplayProblem::CommitOfAbortedVote { txn }]
    );
    assert_eq!(node.store().commit_sequence(), 0);
}

#[test]
fn a_client_cannot_lead_a_recovery_ballot() {
    let now = Time::ZERO;
    let mut node = Node::new(node_config(1));
    drain(&mut node, now);
    let phase1a = Message::Phase1a {
        descriptor: descriptor(1, &[2]),
        ballot: ballot(1, CLIENT.0),
    };
    let phase2a = Message::Phase2a {
        descriptor: descriptor(1, &[2]),
        rm: NodeId(2),
        ballot: ballot(1, CLIENT.0),
        value: Vote::Aborted,
    };
    let drained = receive(&mut node, now, CLIENT, vec![phase1a, phase2a]);
    assert_eq!(
        rejections(&drained),
        vec![
            RejectReason::NotFromMember {
                message: MessageKind::Phase1a
            },
            RejectReason::NotFromMember {
                message: MessageKind::Phase2a
            },
        ]
    );
    assert!(drained.records.is_empty() && drained.sent.is_empty());
}

/// A frame of Resolves makes each recovery send Phase1a and Phase1b to the node itself;
/// the bound on self-addressed messages grows with the frame, so a large frame is served,
/// not a panic.
#[test]
fn a_frame_of_many_resolves_does_not_trip_the_self_message_loop_bound() {
    let now = Time::ZERO;
    let mut node = Node::new(node_config(1));
    drain(&mut node, now);
    let resolves: Vec<Message> = (1..=40_000)
        .map(|sequence| Message::Resolve {
            descriptor: descriptor(sequence, &[1, 2]),
        })
        .collect();
    node.handle(
        now,
        Input::Receive {
            from: CLIENT,
            messages: resolves,
        },
    );
    drain(&mut node, now);
}

#[test]
fn phase2b_for_unknown_transactions_is_buffered_only_from_members() {
    let now = Time::ZERO;
    let mut node = Node::new(node_config(1));
    drain(&mut node, now);
    let phase2b = Message::Phase2b {
        txn: descriptor(1, &[1]).txn,
        rm: NodeId(1),
        ballot: Ballot::ZERO,
        value: Vote::Prepared,
    };
    let drained = receive(&mut node, now, CLIENT, vec![phase2b]);
    assert_eq!(
        rejections(&drained),
        vec![RejectReason::NotFromMember {
            message: MessageKind::Phase2b
        }]
    );
}
