//! A tripwire for the log's record format. Records are postcard (positional, not
//! self-describing): a build that adds a field, reorders fields or inserts a variant would
//! misread an older log instead of refusing it. So the bytes of one record of every kind
//! are pinned here, next to [`FORMAT_VERSION`]; when this test fails because a type
//! changed, bump `FORMAT_VERSION` (files and batches of another version are refused whole)
//! and then update the pinned bytes.

use super::FORMAT_VERSION;
use dtx_protocol::{
    decode_log, encode_record, AbortReason, AcceptorState, Ballot, Key, LockMode, NodeId, Outcome,
    Record, Time, TxnDescriptor, TxnId, Value, Version, Vote,
};

fn sample() -> Vec<Record> {
    let txn = TxnId {
        client: NodeId(1 << 40),
        sequence: 300,
    };
    let descriptor = TxnDescriptor {
        txn,
        participants: vec![NodeId(1), NodeId(2)],
        acceptors: vec![NodeId(1), NodeId(2), NodeId(3)],
        f: 1,
        start_time: Time(1_000_000),
    };
    vec![
        Record::Vote {
            descriptor: descriptor.clone(),
            vote: Vote::Aborted,
            reason: Some(AbortReason::LockConflict {
                key: Key::new("k"),
                holder: Some(txn),
            }),
            writes: vec![
                (Key::new("a"), Some(Value::new(b"1".to_vec()))),
                (Key::new("b"), None),
            ],
            locks: vec![(Key::new("a"), LockMode::Exclusive)],
            read_versions: vec![(Key::new("c"), Version(7))],
        },
        Record::Acceptor {
            descriptor,
            rm: NodeId(2),
            state: AcceptorState {
                promised: Ballot {
                    round: 1,
                    leader: NodeId(3),
                },
                accepted_ballot: Some(Ballot {
                    round: 0,
                    leader: NodeId(0),
                }),
                accepted_value: Some(Vote::Prepared),
            },
        },
        Record::LeaderRound { round: 5 },
        Record::Outcome {
            txn,
            outcome: Outcome::Commit,
        },
        Record::Snapshot {
            commit_sequence: 9,
            rows: vec![(Key::new("a"), Value::new(b"1".to_vec()), Version(9))],
        },
        Record::AcceptorFence { cleared: true },
        Record::ResourcePrepare { txn },
        Record::ResourceDone { txn },
        Record::ResourceOwed {
            outcomes: vec![(txn, Outcome::Abort)],
        },
        Record::Outcomes {
            outcomes: vec![(txn, Outcome::Commit)],
        },
    ]
}

#[test]
fn the_record_format_changes_only_with_the_log_format_version() {
    let mut payloads = Vec::new();
    for record in sample() {
        let mut framed = Vec::new();
        encode_record(&record, &mut framed).expect("encode");
        // The payload without the length and checksum in front of it.
        payloads.push(framed[dtx_protocol::record::RECORD_HEADER_BYTES..].to_vec());
    }
    let pinned: Vec<Vec<u8>> = PINNED.iter().map(|bytes| bytes.to_vec()).collect();
    assert_eq!(
        (FORMAT_VERSION, &payloads),
        (2, &pinned),
        "the record encoding changed: bump FORMAT_VERSION, then update PINNED (got {payloads:?})"
    );
}

#[test]
fn every_pinned_record_decodes_to_its_sample() {
    let mut log = Vec::new();
    for record in sample() {
        encode_record(&record, &mut log).expect("encode");
    }
    let contents = decode_log(&log);
    assert!(contents.tail_problem.is_none());
    assert_eq!(contents.records, sample());
}

const PINNED: &[&[u8]] = &[
    // Vote
    &[
        0, 128, 128, 128, 128, 128, 32, 172, 2, 2, 1, 2, 3, 1, 2, 3, 1, 192, 132, 61, 1, 1, 0, 1,
        107, 1, 128, 128, 128, 128, 128, 32, 172, 2, 2, 1, 97, 1, 1, 49, 1, 98, 0, 1, 1, 97, 1, 1,
        1, 99, 7,
    ],
    // Acceptor
    &[
        1, 128, 128, 128, 128, 128, 32, 172, 2, 2, 1, 2, 3, 1, 2, 3, 1, 192, 132, 61, 2, 1, 3, 1,
        0, 0, 1, 0,
    ],
    // LeaderRound
    &[2, 5],
    // Outcome
    &[3, 128, 128, 128, 128, 128, 32, 172, 2, 0],
    // Snapshot
    &[4, 9, 1, 1, 97, 1, 49, 9],
    // AcceptorFence
    &[5, 1],
    // ResourcePrepare
    &[6, 128, 128, 128, 128, 128, 32, 172, 2],
    // ResourceDone
    &[7, 128, 128, 128, 128, 128, 32, 172, 2],
    // ResourceOwed
    &[8, 1, 128, 128, 128, 128, 128, 32, 172, 2, 1],
    // Outcomes
    &[9, 1, 128, 128, 128, 128, 128, 32, 172, 2, 0],
];
