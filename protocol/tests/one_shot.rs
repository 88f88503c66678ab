//! One-shot transactions through real `Node`s and a `Client`, driven by a tiny synchronous
//! runtime: votes and their reasons, idempotent retries, recovery without the client,
//! restart from the log, and hostile input.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use proptest::prelude::*;
use std::time::Duration;

#[test]
fn commit_across_three_nodes_is_visible_to_a_later_read() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![
        write("n1/a", "1"),
        write("n2/b", "2"),
        write("n3/c", "3"),
    ]);
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    let check = harness.begin(vec![read("n1/a"), read("n3/c")]);
    harness.settle();
    let Some(TxnResult::Committed { reads, .. }) = harness.result(check) else {
        panic!("read-only transaction did not commit");
    };
    let values: Vec<_> = reads
        .iter()
        .map(|read| read.value.clone().unwrap().0)
        .collect();
    assert_eq!(values, vec![b"1".to_vec(), b"3".to_vec()]);
    for node in &harness.nodes {
        assert_eq!(node.undecided().count(), 0);
    }
}

#[test]
fn update_of_a_missing_key_votes_aborted_with_the_reason() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![
        write("n1/a", "1"),
        Operation::Update {
            key: Key::new("n2/missing"),
            value: Value::new(b"x".to_vec()),
        },
    ]);
    harness.settle();
    assert_eq!(
        harness.result(txn),
        Some(&TxnResult::Aborted {
            reason: Some(AbortReason::UpdateOfMissingKey {
                key: Key::new("n2/missing")
            })
        })
    );
    assert_eq!(
        harness.nodes[0].store().get(&Key::new("n1/a")).0,
        None,
        "no partial commit"
    );
}

#[test]
fn stale_expected_version_votes_aborted() {
    let mut harness = Harness::new(3);
    let first = harness.begin(vec![write("n1/a", "1")]);
    harness.settle();
    assert!(matches!(
        harness.result(first),
        Some(TxnResult::Committed { .. })
    ));
    let stale = harness.begin(vec![
        Operation::Read {
            key: Key::new("n1/a"),
            expected: Some(Version(0)),
        },
        write("n2/b", "2"),
    ]);
    harness.settle();
    assert!(matches!(
        harness.result(stale),
        Some(TxnResult::Aborted {
            reason: Some(AbortReason::VersionMismatch { .. })
        })
    ));
}

#[test]
fn oversized_value_votes_aborted() {
    let mut harness = Harness::new(3);
    let huge = "x".repeat(Limits::default().value_bytes_max + 1);
    let txn = harness.begin(vec![write("n1/a", &huge)]);
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Aborted {
            reason: Some(AbortReason::ValueTooLarge { .. })
        })
    ));
}

#[test]
fn lock_conflict_votes_aborted_without_waiting() {
    let mut harness = Harness::new(3);
    let first = harness
        .client
        .begin(harness.now, vec![write("n1/a", "1"), write("n2/b", "1")])
        .unwrap();
    // Deliver only the Prepare to n1, keep n2's Prepare back: n1 holds the lock.
    harness.collect_client();
    let (to_n1, rest): (Vec<_>, Vec<_>) = harness
        .mail
        .drain(..)
        .partition(|(_, envelope)| envelope.to == NodeId(1));
    harness.mail.extend(to_n1);
    harness.settle();
    let second = harness.begin(vec![write("n1/a", "2")]);
    harness.settle();
    assert!(matches!(
        harness.result(second),
        Some(TxnResult::Aborted {
            reason: Some(AbortReason::LockConflict { .. })
        })
    ));
    harness.mail.extend(rest);
    harness.settle();
    harness.advance(Duration::from_secs(1));
    assert!(matches!(
        harness.result(first),
        Some(TxnResult::Committed { .. })
    ));
    assert!(harness
        .nodes
        .iter()
        .all(|node| node.undecided().count() == 0));
}

#[test]
fn a_client_that_dies_after_one_prepare_leaves_nothing_locked() {
    let mut harness = Harness::new(3);
    let txn = harness
        .client
        .begin(harness.now, vec![write("n1/a", "1"), write("n2/b", "2")])
        .unwrap();
    harness.collect_client();
    // The client dies: only n1's Prepare leaves, and nothing reaches the client again.
    harness
        .mail
        .retain(|(_, envelope)| envelope.to == NodeId(1));
    harness.drop_to = vec![CLIENT];
    harness.settle();
    assert_eq!(harness.nodes[0].in_doubt().count(), 1);
    for _ in 0..20 {
        harness.advance(Duration::from_millis(100));
    }
    // Recovery (no coordinator) found no vote from n2 and chose Aborted for its instance.
    assert_eq!(harness.nodes[0].known_outcome(txn), Some(Outcome::Abort));
    assert_eq!(harness.nodes[0].in_doubt().count(), 0);
    assert!(harness
        .nodes
        .iter()
        .all(|node| node.undecided().count() == 0));
}

#[test]
fn duplicate_prepare_after_commit_is_answered_not_re_executed() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1"), write("n2/b", "1")]);
    let replay: Vec<(NodeId, Envelope)> = harness.mail.iter().cloned().collect();
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    let version_before = harness.nodes[0].store().get(&Key::new("n1/a")).1;
    harness.mail.extend(replay);
    harness.settle();
    assert_eq!(
        harness.nodes[0].store().get(&Key::new("n1/a")).1,
        version_before
    );
    assert_eq!(harness.nodes[0].undecided().count(), 0);
}

#[test]
fn restart_from_the_log_keeps_prepared_locks_and_resolves_them() {
    let mut harness = Harness::new(3);
    let txn = harness
        .client
        .begin(harness.now, vec![write("n1/a", "1"), write("n2/b", "2")])
        .unwrap();
    harness.collect_client();
    // n1 prepares, then crashes before hearing anything back.
    harness
        .mail
        .retain(|(_, envelope)| envelope.to == NodeId(1));
    harness.drop_to = vec![NodeId(2), NodeId(3), CLIENT];
    harness.settle();
    let cluster = cluster(3);
    let records = harness.logs[0].clone();
    harness.nodes[0] = Node::recover(config(1, &cluster), harness.now, records);
    assert_eq!(harness.nodes[0].in_doubt().collect::<Vec<_>>(), vec![txn]);
    harness.drop_to.clear();
    for _ in 0..20 {
        harness.advance(Duration::from_millis(100));
    }
    assert_eq!(harness.nodes[0].known_outcome(txn), Some(Outcome::Abort));
    assert_eq!(harness.nodes[0].in_doubt().count(), 0);
    let retry = harness.begin(vec![write("n1/a", "3")]);
    harness.settle();
    assert!(
        matches!(harness.result(retry), Some(TxnResult::Committed { .. })),
        "lock was released"
    );
}

#[test]
fn a_committed_transaction_survives_restart_of_every_node() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1"), write("n3/c", "3")]);
    harness.settle();
    assert!(matches!(
        harness.result(txn),
        Some(TxnResult::Committed { .. })
    ));
    let cluster = cluster(3);
    for index in 0..3 {
        let records = harness.logs[index].clone();
        harness.nodes[index] =
            Node::recover(config(index as u64 + 1, &cluster), harness.now, records);
    }
    assert_eq!(
        harness.nodes[0].store().get(&Key::new("n1/a")).0,
        Some(&Value::new(b"1".to_vec()))
    );
    assert_eq!(
        harness.nodes[2].store().get(&Key::new("n3/c")).0,
        Some(&Value::new(b"3".to_vec()))
    );
    assert_eq!(harness.nodes[0].known_outcome(txn), Some(Outcome::Commit));
}

#[test]
fn prepare_from_someone_other_than_the_client_is_rejected() {
    let mut harness = Harness::new(3);
    let descriptor = TxnDescriptor {
        txn: TxnId {
            client: CLIENT,
            sequence: 1,
        },
        participants: vec![NodeId(1)],
        acceptors: vec![NodeId(1), NodeId(2), NodeId(3)],
        f: 1,
        start_time: Time::ZERO,
    };
    harness.nodes[0].handle(
        Time::ZERO,
        Input::Receive {
            from: NodeId(66),
            messages: vec![Message::Prepare {
                descriptor,
                operations: vec![write("n1/a", "evil")],
            }],
        },
    );
    assert_eq!(
        harness.nodes[0].poll_event(),
        Some(Event::Rejected {
            from: NodeId(66),
            reason: RejectReason::NotFromClient {
                message: MessageKind::Prepare
            },
        })
    );
    assert!(harness.nodes[0].poll_output().is_none());
}

#[test]
fn wire_frames_round_trip() {
    let messages = vec![Message::Decision {
        txn: TxnId {
            client: CLIENT,
            sequence: 9,
        },
        outcome: Outcome::Commit,
        reads: None,
    }];
    let frame = encode(&messages).unwrap();
    assert_eq!(frame[0], dtx_protocol::message::WIRE_VERSION);
    assert_eq!(decode(&frame).unwrap(), messages);
    assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
    assert!(matches!(decode(&[9, 0]), Err(DecodeError::Version(9))));
    let oversized = vec![1u8; dtx_protocol::message::FRAME_SIZE_MAX_BYTES + 1];
    assert!(matches!(
        decode(&oversized),
        Err(DecodeError::TooLarge { .. })
    ));
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
        let mut framed = vec![1u8];
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed);
    }
}
