//! One-phase commit: a transaction with one participant has no acceptors, its RM decides
//! alone with one durable write, and nobody ever recovers it. These tests drive real
//! `Node`s and a `Client` (see `testing::Harness`): the write and what waits for it, the
//! reason of an abort, a Resolve that comes before the Prepare, restarts, services, and
//! interactive transactions.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use std::time::Duration;

/// The single Prepare the client queued, taken out of the mail undelivered.
fn take_prepare(harness: &mut Harness) -> (NodeId, Message) {
    let (_, envelope) = harness.mail.pop_front().unwrap();
    assert!(harness.mail.is_empty());
    let [prepare] = <[Message; 1]>::try_from(envelope.messages).unwrap();
    (envelope.to, prepare)
}

fn descriptor_of(message: &Message) -> TxnDescriptor {
    match message {
        Message::Prepare { descriptor, .. } | Message::PrepareExecuted { descriptor, .. } => {
            descriptor.clone()
        }
        other => panic!("not a prepare: {other:?}"),
    }
}

#[test]
fn a_single_participant_commits_with_one_write_and_no_acceptor_round() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1")]);
    let (to, prepare) = take_prepare(&mut harness);
    assert_eq!(to, NodeId(1));
    let descriptor = descriptor_of(&prepare);
    assert!(descriptor.is_one_phase());
    assert!(descriptor.acceptors.is_empty());
    // Drive n1 by hand: one Persist holding the vote and the outcome, nothing sent before
    // it is durable, then the Decision to the client.
    let node = &mut harness.nodes[0];
    node.handle(
        Time::ZERO,
        Input::Receive {
            from: CLIENT,
            messages: vec![prepare],
        },
    );
    let mut persists = Vec::new();
    while let Some(output) = node.poll_output() {
        match output {
            Output::Persist { token, records } => persists.push((token, records)),
            other => panic!("output before the write is durable: {other:?}"),
        }
    }
    assert_eq!(persists.len(), 1, "one durable write");
    let (token, records) = persists.pop().unwrap();
    assert!(matches!(
        records.as_slice(),
        [
            Record::Vote {
                vote: Vote::Prepared,
                ..
            },
            Record::Outcome {
                outcome: Outcome::Commit,
                ..
            }
        ]
    ));
    // Applied at once (the log orders it as the store did), announced only once durable.
    assert!(node.store().get(&Key::new("n1/a")).0.is_some());
    let mut early_events = Vec::new();
    while let Some(event) = node.poll_event() {
        early_events.push(event);
    }
    assert!(
        !early_events
            .iter()
            .any(|event| matches!(event, Event::Decided { .. })),
        "{early_events:?}"
    );
    node.handle(Time::ZERO, Input::Persisted { token });
    let mut events = Vec::new();
    while let Some(event) = node.poll_event() {
        events.push(event);
    }
    assert!(events.contains(&Event::Decided {
        txn,
        outcome: Outcome::Commit,
        as_participant: true
    }));
    let mut sent = Vec::new();
    while let Some(output) = node.poll_output() {
        match output {
            Output::Send(envelope) => sent.push(envelope),
            other => panic!("a second write: {other:?}"),
        }
    }
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, CLIENT);
    assert!(matches!(
        sent[0].messages.as_slice(),
        [Message::Decision {
            outcome: Outcome::Commit,
            ..
        }]
    ));
    assert!(node.store().get(&Key::new("n1/a")).0.is_some());
    assert_eq!(node.undecided().count(), 0);
    assert_eq!(node.known_outcome(txn), Some(Outcome::Commit));
    harness.mail.push_back((NodeId(1), sent.pop().unwrap()));
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    assert!(harness.logs[1].is_empty() && harness.logs[2].is_empty());
}

#[test]
fn a_one_phase_read_returns_its_value_with_the_decision() {
    let mut harness = Harness::new(3);
    let first = harness.begin(vec![write("n2/a", "7")]);
    harness.settle();
    assert!(matches!(
        harness.result(first),
        Some(TxnResult::Committed { .. })
    ));
    let txn = harness.begin(vec![read("n2/a")]);
    harness.settle();
    let Some(TxnResult::Committed { reads, reads_lost }) = harness.result(txn) else {
        panic!("{:?}", harness.result(txn));
    };
    assert!(!reads_lost);
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].value, Some(Value::new(b"7".to_vec())));
}

#[test]
fn a_one_phase_abort_is_recorded_and_the_client_gets_its_reason() {
    let mut harness = Harness::new(3);
    let missing = Operation::Update {
        key: Key::new("n1/missing"),
        value: Value::new(b"x".to_vec()),
    };
    let txn = harness.begin(vec![missing]);
    harness.settle();
    assert_eq!(
        harness.result(txn),
        Some(&TxnResult::Aborted {
            reason: Some(AbortReason::UpdateOfMissingKey {
                key: Key::new("n1/missing")
            })
        })
    );
    assert!(harness.logs[0].contains(&Record::Outcome {
        txn,
        outcome: Outcome::Abort
    }));
}

#[test]
fn a_resolve_before_the_prepare_records_abort_and_the_late_prepare_cannot_commit() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1")]);
    let (_, prepare) = take_prepare(&mut harness);
    let descriptor = descriptor_of(&prepare);
    // The client asks before the RM got the Prepare (lost or slow).
    let resolve = Message::Resolve {
        descriptor: descriptor.clone(),
    };
    let drained = receive(&mut harness.nodes[0], Time::ZERO, CLIENT, vec![resolve]);
    let aborted_at = drained
        .records
        .iter()
        .position(|record| {
            *record
                == Record::Outcome {
                    txn,
                    outcome: Outcome::Abort,
                }
        })
        .expect("the abort is recorded before it is told");
    assert!(matches!(
        drained.records[..aborted_at].last(),
        Some(Record::Vote {
            vote: Vote::Aborted,
            reason: Some(AbortReason::NotPrepared),
            ..
        })
    ));
    assert!(drained.sent.iter().any(|(to, message)| *to == CLIENT
        && matches!(
            message,
            Message::Decision {
                outcome: Outcome::Abort,
                ..
            }
        )));
    // The Prepare arrives late, even after a restart: answered, never executed.
    let log = harness.logs[0]
        .iter()
        .cloned()
        .chain(drained.records)
        .collect::<Vec<_>>();
    let cluster = cluster(3);
    let mut node = Node::recover(config(1, &cluster), Time::ZERO, log);
    let _ = drain(&mut node, Time::ZERO);
    let late = receive(&mut node, Time::ZERO, CLIENT, vec![prepare]);
    assert!(!late
        .records
        .iter()
        .any(|record| matches!(record, Record::Vote { .. })));
    assert!(late.sent.iter().any(|(_, message)| matches!(
        message,
        Message::Decision {
            outcome: Outcome::Abort,
            ..
        }
    )));
    assert_eq!(node.store().get(&Key::new("n1/a")).0, None);
}

#[test]
fn a_client_that_hears_nothing_asks_the_rm_only_and_learns_the_outcome() {
    let mut harness = Harness::new(3);
    // The RM's first answer is lost: the client re-sends the Prepare, then asks n1 alone.
    harness.drop_to.push(CLIENT);
    let txn = harness.begin(vec![write("n1/a", "1")]);
    harness.settle();
    harness.drop_to.clear();
    let mut asked = Vec::new();
    for _ in 0..20 {
        harness.now = harness.now.saturating_add(Duration::from_millis(500));
        if harness
            .client
            .poll_timeout()
            .is_some_and(|due| due <= harness.now)
        {
            harness.client.handle(harness.now, Input::Timeout);
            harness.collect_client();
        }
        asked.extend(harness.mail.iter().map(|(_, envelope)| envelope.to));
        harness.settle();
        if harness.result(txn).is_some() {
            break;
        }
    }
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|to| *to == NodeId(1)), "{asked:?}");
}

#[test]
fn a_restarted_rm_answers_from_its_log() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1")]);
    let (_, prepare) = take_prepare(&mut harness);
    harness.mail.push_back((
        CLIENT,
        Envelope {
            to: NodeId(1),
            messages: vec![prepare.clone()],
        },
    ));
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    let cluster = cluster(3);
    let mut node = Node::recover(config(1, &cluster), Time::ZERO, harness.logs[0].clone());
    let _ = drain(&mut node, Time::ZERO);
    assert_eq!(node.known_outcome(txn), Some(Outcome::Commit));
    let again = receive(&mut node, Time::ZERO, CLIENT, vec![prepare]);
    assert!(!again
        .records
        .iter()
        .any(|record| matches!(record, Record::Vote { .. })));
    assert!(again.sent.iter().any(|(_, message)| matches!(
        message,
        Message::Decision {
            outcome: Outcome::Commit,
            ..
        }
    )));
}

#[test]
fn a_vote_torn_from_its_outcome_record_decides_at_restart() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1")]);
    harness.settle();
    let mut log = harness.logs[0].clone();
    assert!(matches!(log.last(), Some(Record::Outcome { .. })));
    log.pop();
    let cluster = cluster(3);
    let mut node = Node::recover(config(1, &cluster), Time::ZERO, log);
    // The restart's records leave with the node's first step.
    let restarted = receive(&mut node, Time::ZERO, CLIENT, Vec::new());
    assert!(restarted.records.contains(&Record::Outcome {
        txn,
        outcome: Outcome::Commit
    }));
    assert_eq!(node.known_outcome(txn), Some(Outcome::Commit));
    assert_eq!(node.undecided().count(), 0);
    assert_eq!(
        node.store().get(&Key::new("n1/a")).0,
        Some(&Value::new(b"1".to_vec()))
    );
}

#[test]
fn nobody_recovers_a_one_phase_transaction_while_its_service_prepares() {
    let mut harness = Harness::new(3);
    let cluster = cluster(3);
    let mut service = config(3, &cluster);
    service.resource = ResourceKind::External;
    harness.nodes[2] = Node::new(service);
    let call = Operation::Call {
        target: Key::new("n3/LH400"),
        action: "reserve".to_string(),
        args: Value::new(b"{}".to_vec()),
    };
    let txn = harness.begin(vec![call]);
    harness.settle();
    assert!(harness.logs[2].contains(&Record::ResourcePrepare { txn }));
    let before = harness.resource_requests.len();
    assert_eq!(before, 1);
    // Long past every timeout: no ballot, no acceptor hears of it.
    let mut sent_kinds = Vec::new();
    for _ in 0..40 {
        harness.now = harness.now.saturating_add(Duration::from_millis(100));
        for index in 0..3 {
            if harness.nodes[index]
                .poll_timeout()
                .is_some_and(|due| due <= harness.now)
            {
                harness.nodes[index].handle(harness.now, Input::Timeout);
                harness.collect_node(index);
            }
        }
        if harness
            .client
            .poll_timeout()
            .is_some_and(|due| due <= harness.now)
        {
            harness.client.handle(harness.now, Input::Timeout);
            harness.collect_client();
        }
        sent_kinds.extend(
            harness
                .mail
                .iter()
                .flat_map(|(_, envelope)| envelope.messages.iter().map(Message::kind)),
        );
        harness.settle();
    }
    assert!(harness.result(txn).is_none());
    assert!(!sent_kinds.iter().any(|kind| matches!(
        kind,
        MessageKind::Phase1a | MessageKind::Phase2a | MessageKind::Phase1b | MessageKind::Phase2b
    )));
    // The service says yes: the vote decides, the service is told to commit.
    harness.feed(2, Input::ResourceVoted { txn, vote: Ok(()) });
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    assert!(harness.resource_requests.iter().any(|(_, request)| *request
        == ResourceRequest::Finish {
            txn,
            outcome: Outcome::Commit
        }));
}

#[test]
fn an_interactive_transaction_on_one_rm_commits_in_one_phase() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    harness
        .client
        .execute(harness.now, txn, write("n1/a", "1"))
        .unwrap();
    harness.collect_client();
    harness.settle();
    harness.client.commit(harness.now, txn).unwrap();
    harness.collect_client();
    let descriptor = harness
        .mail
        .iter()
        .flat_map(|(_, envelope)| envelope.messages.iter())
        .find_map(|message| match message {
            Message::PrepareExecuted { descriptor, .. } => Some(descriptor.clone()),
            _ => None,
        })
        .unwrap();
    assert!(descriptor.is_one_phase());
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    assert!(harness.logs[1].is_empty() && harness.logs[2].is_empty());
    assert!(harness.nodes[0].store().get(&Key::new("n1/a")).0.is_some());
}

#[test]
fn with_one_phase_off_a_single_participant_runs_paxos_commit() {
    let mut harness = Harness::new(3).paxos_commit_only();
    let txn = harness.begin(vec![write("n1/a", "1")]);
    let (_, prepare) = take_prepare(&mut harness);
    assert!(!descriptor_of(&prepare).is_one_phase());
    harness.mail.push_back((
        CLIENT,
        Envelope {
            to: NodeId(1),
            messages: vec![prepare],
        },
    ));
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    assert!(harness.logs[1]
        .iter()
        .chain(&harness.logs[2])
        .any(|record| matches!(record, Record::Acceptor { .. })));
}

#[test]
fn acceptor_messages_and_foreign_decisions_for_a_one_phase_transaction_are_rejected() {
    let mut harness = Harness::new(3);
    let _txn = harness.begin(vec![write("n1/a", "1")]);
    let (_, prepare) = take_prepare(&mut harness);
    let descriptor = descriptor_of(&prepare);
    // A Phase2a or Phase1a naming no acceptor: nobody takes it.
    for index in 0..3 {
        let phase2a = Message::Phase2a {
            descriptor: descriptor.clone(),
            rm: NodeId(1),
            ballot: Ballot::ZERO,
            value: Vote::Prepared,
        };
        let phase1a = Message::Phase1a {
            descriptor: descriptor.clone(),
            ballot: Ballot {
                round: 1,
                leader: NodeId(2),
            },
        };
        let drained = receive(
            &mut harness.nodes[index],
            Time::ZERO,
            NodeId(1),
            vec![phase2a, phase1a],
        );
        assert!(drained.records.is_empty());
        assert!(drained.sent.is_empty());
    }
    // Two participants and no acceptors is no valid descriptor.
    let mut two = descriptor.clone();
    two.participants = vec![NodeId(1), NodeId(2)];
    assert_eq!(two.validate(), Err(DescriptorProblem::OnePhaseParticipants));
    // Another member's Resolve of a one-phase transaction starts nothing.
    let resolve = Message::Resolve { descriptor };
    let drained = receive(&mut harness.nodes[0], Time::ZERO, NodeId(2), vec![resolve]);
    assert!(drained.records.is_empty() && drained.sent.is_empty());
}
