//! The acceptor amnesia fence: a node started from a wiped data directory answers no
//! Phase1a or Phase2a until every other member confirms that no undecided transaction
//! names it, and a restart during that quarantine stays in it.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
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

/// A harness whose n1 was just started from a wiped data directory.
fn with_wiped_n1() -> Harness {
    let mut harness = Harness::new(3);
    harness.nodes[0] = Node::reinitialized(config(1, &cluster(3)), harness.now);
    harness.collect_node(0);
    assert_eq!(
        harness.logs[0],
        vec![Record::AcceptorFence { cleared: false }]
    );
    harness
}

#[test]
fn a_quarantined_node_never_answers_phase1a_or_phase2a() {
    let mut node = Node::reinitialized(config(1, &cluster(3)), Time::ZERO);
    drain(&mut node, Time::ZERO);
    assert!(node.is_quarantined());
    let messages = vec![
        Message::Phase1a {
            descriptor: descriptor(1, &[2]),
            ballot: Ballot {
                round: 1,
                leader: NodeId(2),
            },
        },
        Message::Phase2a {
            descriptor: descriptor(2, &[2]),
            rm: NodeId(2),
            ballot: Ballot::ZERO,
            value: Vote::Prepared,
        },
    ];
    let drained = receive(&mut node, Time::ZERO, NodeId(2), messages);
    assert!(
        drained.records.is_empty(),
        "persisted {:?}",
        drained.records
    );
    assert!(
        drained
            .sent
            .iter()
            .all(|(_, message)| matches!(message, Message::FenceQuery { .. })),
        "{:?}",
        drained.sent
    );
    assert_eq!(
        node.rejected_counts().get(&RejectKind::Quarantined),
        Some(&2)
    );
    assert_eq!(node.undecided().count(), 0);
}

#[test]
fn it_says_quarantined_in_its_heartbeats_and_clients_leave_it_out_of_acceptor_sets() {
    let mut config = config(4, &cluster(4));
    config.detector = Some(DetectorConfig::default());
    let mut node = Node::reinitialized(config, Time::ZERO);
    node.handle(Time::ZERO, Input::Timeout);
    let mut gossip = None;
    for (_, message) in drain(&mut node, Time::ZERO).sent {
        if let Message::Gossip { heartbeats } = message {
            gossip = Some(heartbeats);
        }
    }
    let heartbeats = gossip.unwrap();
    assert_eq!(heartbeats[0].role, Role::Quarantined);
    // The role survives the wire.
    let frame = encode(&[Message::Gossip {
        heartbeats: heartbeats.clone(),
    }])
    .unwrap();
    assert!(decode(&frame).is_ok());
    let mut client = Client::new(ClientConfig::new(CLIENT, cluster(4), 1));
    client.handle(
        Time::ZERO,
        Input::Receive {
            from: NodeId(4),
            messages: vec![Message::Gossip { heartbeats }],
        },
    );
    client.handle(Time::ZERO, Input::Timeout);
    assert!(client.quarantined().contains(&NodeId(4)));
    for sequence in 0..50 {
        let txn = client
            .begin(
                Time::ZERO,
                vec![
                    write(&format!("n1/k{sequence}"), "1"),
                    write(&format!("n2/k{sequence}"), "1"),
                ],
            )
            .unwrap();
        let acceptors = &client.descriptor(txn).unwrap().acceptors;
        assert!(!acceptors.contains(&NodeId(4)), "{acceptors:?}");
    }
}

#[test]
fn it_clears_once_every_other_member_answers_clear_and_then_serves_again() {
    let mut harness = with_wiped_n1();
    harness.advance(Duration::from_millis(10));
    assert!(!harness.nodes[0].is_quarantined());
    let now = harness.now;
    assert!(drain(&mut harness.nodes[0], now)
        .events
        .contains(&Event::AcceptorFenceCleared));
    assert_eq!(
        harness.logs[0].last(),
        Some(&Record::AcceptorFence { cleared: true })
    );
    let txn = harness.begin(vec![write("n1/a", "1"), write("n2/b", "1")]);
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
}

#[test]
fn it_does_not_clear_while_a_member_holds_an_undecided_transaction_naming_it() {
    let mut harness = with_wiped_n1();
    // n2 holds a prepared transaction with n1 among its acceptors; n3 never votes.
    let txn = harness.begin(vec![write("n2/a", "1"), write("n3/b", "1")]);
    harness.drop_to = vec![NodeId(3), CLIENT];
    harness.settle();
    assert_eq!(harness.nodes[1].in_doubt().collect::<Vec<_>>(), vec![txn]);
    assert!(harness
        .client
        .descriptor(txn)
        .unwrap()
        .is_acceptor(NodeId(1)));
    // Fence rounds come and go: n2 answers not clear.
    for _ in 0..3 {
        harness.now = harness.now.saturating_add(Duration::from_secs(1));
        harness.nodes[0].handle(harness.now, Input::Timeout);
        harness.collect_node(0);
        harness.settle();
        assert!(harness.nodes[0].is_quarantined());
    }
    // Once it is decided (n2 and n3 recover it without n1), the next round clears.
    harness.drop_to.clear();
    for _ in 0..30 {
        harness.advance(Duration::from_millis(200));
    }
    assert_eq!(harness.nodes[1].known_outcome(txn), Some(Outcome::Abort));
    assert!(!harness.nodes[0].is_quarantined());
}

#[test]
fn a_restart_during_quarantine_stays_quarantined() {
    let mut harness = with_wiped_n1();
    // n2 and n3 answer, but not in time: n1 restarts first.
    let records = harness.logs[0].clone();
    let restarted = Node::recover(config(1, &cluster(3)), harness.now, records.clone());
    assert!(restarted.is_quarantined());
    // So does a checkpoint of that log.
    let checkpoint = Node::checkpoint_log(records, config(1, &cluster(3)).limits.outcomes_kept_max);
    assert!(checkpoint.contains(&Record::AcceptorFence { cleared: false }));
    let from_checkpoint = Node::recover(config(1, &cluster(3)), harness.now, checkpoint);
    assert!(from_checkpoint.is_quarantined());
    // A cleared fence replays as cleared.
    harness.nodes[0] = restarted;
    harness.advance(Duration::from_millis(10));
    assert!(!harness.nodes[0].is_quarantined());
    let again = Node::recover(config(1, &cluster(3)), harness.now, harness.logs[0].clone());
    assert!(!again.is_quarantined());
}

#[test]
fn a_fence_answer_raises_the_incarnation_above_the_one_the_member_knew() {
    let mut node = Node::reinitialized(config(1, &cluster(3)), Time::ZERO);
    drain(&mut node, Time::ZERO);
    let answer = Message::FenceAnswer {
        round: 0,
        clear: false,
        incarnation: Some(57),
    };
    let drained = receive(&mut node, Time::ZERO, NodeId(2), vec![answer]);
    assert_eq!(drained.records, vec![Record::LeaderRound { round: 58 }]);
    assert!(
        node.is_quarantined(),
        "an answer of another round clears nothing"
    );
    // From a stranger, nothing.
    node.handle(
        Time::ZERO,
        Input::Receive {
            from: CLIENT,
            messages: vec![Message::FenceAnswer {
                round: 1,
                clear: true,
                incarnation: Some(1_000),
            }],
        },
    );
    assert!(node.poll_output().is_none());
}
