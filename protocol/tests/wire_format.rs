//! A tripwire for the wire format. Frames are postcard (positional, not self-describing):
//! a build that adds a field, reorders fields or inserts a variant would be misread by an
//! older build instead of refused. So the encoding of a few messages is pinned here; when
//! this test fails because a type changed, bump `WIRE_VERSION` (frames of another version
//! are refused whole) and then update the pinned bytes. It samples the common types
//! (ids, ballots, votes, outcomes, refusals), not every message kind.

use dtx_protocol::message::WIRE_VERSION;
use dtx_protocol::*;

fn sample() -> Vec<Message> {
    let txn = TxnId {
        client: NodeId(1 << 40),
        sequence: 300,
    };
    vec![
        Message::Decision {
            txn,
            outcome: Outcome::Commit,
            reads: None,
        },
        Message::Phase2b {
            txn,
            rm: NodeId(2),
            ballot: Ballot {
                round: 1,
                leader: NodeId(3),
            },
            value: Vote::Aborted,
        },
        Message::Refused {
            txn,
            reason: Refusal::RateLimited,
        },
        Message::Execute {
            txn,
            start_time: Time(7),
            sequence: 1,
            operation: Operation::ReadForUpdate { key: Key::new("k") },
        },
    ]
}

#[test]
fn the_wire_format_changes_only_with_its_version() {
    let frame = encode(&sample()).expect("encode");
    assert_eq!(
        (WIRE_VERSION, frame.clone()),
        (3, PINNED.to_vec()),
        "the encoding changed: bump WIRE_VERSION, then update PINNED (got {frame:?})"
    );
    assert_eq!(decode(&frame).expect("decode"), sample());
}

#[test]
fn a_frame_with_trailing_bytes_is_refused() {
    let mut frame = encode(&sample()).expect("encode");
    frame.push(0);
    assert!(matches!(decode(&frame), Err(DecodeError::Malformed(_))));
}

const PINNED: &[u8] = &[
    3, 4, 7, 128, 128, 128, 128, 128, 32, 172, 2, 0, 0, 3, 128, 128, 128, 128, 128, 32, 172, 2, 2,
    1, 3, 1, 20, 128, 128, 128, 128, 128, 32, 172, 2, 1, 9, 128, 128, 128, 128, 128, 32, 172, 2, 7,
    1, 5, 1, 107,
];
