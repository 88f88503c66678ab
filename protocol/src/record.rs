//! Durable records and their on-disk framing.
//!
//! A node's disk is a log of [`Record`]s. The runtime appends the records of each
//! `Output::Persist` and fsyncs them (group commit: one fsync may cover many batches);
//! on restart it hands the decoded records back to `Node::recover`. Framing: `u32` length
//! (little endian), `u32` CRC32C of the payload, then the payload in postcard (positional,
//! like the wire since `WIRE_VERSION` 2; until WAL format version 2 it was CBOR with field
//! names). A torn or corrupt tail is detected and cut by [`decode_log`].
//!
//! Postcard has no field names, so a change to [`Record`] or any type inside it changes
//! the bytes: it must come with a new WAL format version (`dtx_node::wal::format`), which
//! makes a node refuse older logs instead of misreading them. The node's
//! `wal/format/pin_tests.rs` pins the bytes of one record of every kind as a tripwire.

use crate::acceptor::AcceptorState;
use crate::message::{AbortReason, Operation};
use crate::types::{Key, NodeId, Outcome, TxnDescriptor, TxnId, Value, Version, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest record payload accepted (bytes).
pub const RECORD_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of framing before each payload: length and checksum.
pub const RECORD_HEADER_BYTES: usize = 8;

/// A lock an RM holds for a prepared transaction (re-acquired on restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockMode {
    /// Shared, for reads.
    Shared,
    /// Exclusive, for writes.
    Exclusive,
}

impl LockMode {
    /// The mode `operation` needs under strict two-phase locking: shared for a plain read,
    /// exclusive for everything else (writes, calls, a read for update). The one rule both
    /// a one-shot Prepare and an interactive `Execute` lock by, and the one access checks
    /// follow: an exclusive lock keeps writers out, so it needs write permission.
    pub fn required_by(operation: &Operation) -> LockMode {
        match operation {
            Operation::Read { .. } => LockMode::Shared,
            _ => LockMode::Exclusive,
        }
    }

    /// Records that `key` is held in `mode`, keeping the stronger mode if it was already
    /// held (exclusive wins over shared: an upgrade never turns back into a shared lock).
    pub fn hold(held: &mut BTreeMap<Key, LockMode>, key: Key, mode: LockMode) {
        let entry = held.entry(key).or_insert(mode);
        *entry = (*entry).max(mode);
    }
}

/// One unit of durable state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Record {
    /// The RM's vote for its own instance, with the redo data to apply on Commit.
    /// Written before the RM sends its Phase2a (stable storage rule).
    Vote {
        /// The transaction.
        descriptor: TxnDescriptor,
        /// The vote.
        vote: Vote,
        /// Why Aborted.
        reason: Option<AbortReason>,
        /// Final effect per key: `Some` writes, `None` deletes.
        writes: Vec<(Key, Option<Value>)>,
        /// Locks held until the decision.
        locks: Vec<(Key, LockMode)>,
        /// The version each read saw (the audit trail serializability checks rely on).
        read_versions: Vec<(Key, Version)>,
    },
    /// An acceptor's state for one instance, written before Phase1b or Phase2b.
    Acceptor {
        /// The transaction (needed to lead recovery after a restart).
        descriptor: TxnDescriptor,
        /// The instance.
        rm: NodeId,
        /// The state.
        state: AcceptorState,
    },
    /// The highest recovery round this node has used as a leader: ballots never repeat.
    LeaderRound {
        /// The round.
        round: u32,
    },
    /// The transaction's outcome as learned by this node; at an RM, applying it (Commit
    /// installs the Vote record's writes). Replaces acceptor state: the outcome is answered
    /// to any later Phase1a, so it can never be re-decided.
    Outcome {
        /// The transaction.
        txn: TxnId,
        /// Its outcome.
        outcome: Outcome,
    },
    /// Part of a checkpoint: committed rows with the versions they carry, and the RM's
    /// commit sequence (the last version handed out). Replay installs the rows as stated
    /// and raises the commit sequence to `commit_sequence`, so versions are never reused
    /// once the log that produced them is deleted (a reused version could let a stale
    /// validating read pass). Written only by `Node::checkpoint_records`, at the head of a
    /// checkpoint; a large store takes several of these records, each with the same
    /// `commit_sequence`.
    Snapshot {
        /// The RM's commit sequence.
        commit_sequence: u64,
        /// Committed rows: key, value, the version that wrote it.
        rows: Vec<(Key, Value, Version)>,
    },
    /// The node's acceptor quarantine (see `node::fence`): `cleared: false` is written
    /// when a wiped node starts again (`Node::reinitialized`), `cleared: true` once every
    /// other member confirmed that no undecided transaction names it. Replay keeps the
    /// last one, so a restart during quarantine stays quarantined.
    AcceptorFence {
        /// True once the quarantine ended.
        cleared: bool,
    },
    /// The RM asked its external resource to prepare `txn` (written before the request
    /// leaves): after a crash, a transaction with this record and no durable vote is
    /// rolled back at the resource, since no vote of it can have left the node.
    ResourcePrepare {
        /// The transaction.
        txn: TxnId,
    },
    /// The external resource acknowledged `txn`'s commit or rollback: nothing more is
    /// owed to it.
    ResourceDone {
        /// The transaction.
        txn: TxnId,
    },
    /// Part of a checkpoint: decided transactions whose commit or rollback the external
    /// resource has not acknowledged yet (asked again after a restart).
    ResourceOwed {
        /// Each transaction and its outcome.
        outcomes: Vec<(TxnId, Outcome)>,
    },
    /// Part of a checkpoint: a run of the node's compact outcome window, oldest first.
    /// Replays exactly like one `Outcome` record per entry (late Prepare, Phase1a and
    /// Resolve are answered with the kept outcome, never re-decided).
    Outcomes {
        /// Transactions and their outcomes, in the order the node learned them.
        outcomes: Vec<(TxnId, Outcome)>,
    },
}

/// Payload bytes a checkpoint's `Snapshot` record aims to stay under (far below
/// [`RECORD_SIZE_MAX_BYTES`]: a row is at most a key and a value the limits admitted).
pub const SNAPSHOT_RECORD_BYTES_TARGET: usize = 1024 * 1024;

/// Entries per checkpoint `Outcomes` record at most (about 32 bytes each encoded).
pub const OUTCOMES_PER_RECORD_MAX: usize = 16 * 1024;

/// Why a record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordEncodeError {
    /// Larger than [`RECORD_SIZE_MAX_BYTES`].
    #[error("record of {length_bytes} bytes exceeds the limit of {limit_bytes}")]
    TooLarge {
        /// Its length.
        length_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// Serialization failed.
    #[error("cannot encode record: {0}")]
    Serialize(String),
}

/// Appends one framed record to `out` (nothing, on an error).
pub fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), RecordEncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    if let Err(error) = postcard::to_extend(record, Appender(out)) {
        out.truncate(start);
        return Err(RecordEncodeError::Serialize(error.to_string()));
    }
    let payload_start = start + RECORD_HEADER_BYTES;
    let payload_bytes = out.len() - payload_start;
    if payload_bytes > RECORD_SIZE_MAX_BYTES {
        out.truncate(start);
        return Err(RecordEncodeError::TooLarge {
            length_bytes: payload_bytes,
            limit_bytes: RECORD_SIZE_MAX_BYTES,
        });
    }
    // Fits: bounded by RECORD_SIZE_MAX_BYTES above.
    let length = payload_bytes as u32;
    let checksum = crc32c::crc32c(&out[payload_start..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..payload_start].copy_from_slice(&checksum.to_le_bytes());
    Ok(())
}

/// Lets postcard append to a borrowed buffer (its `to_extend` takes the writer by value).
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// The records recovered from a log, and where the valid prefix ends.
#[derive(Debug, Default)]
pub struct LogContents {
    /// Records of the valid prefix, in order.
    pub records: Vec<Record>,
    /// Bytes of the valid prefix; the runtime truncates the log here.
    pub valid_length_bytes: usize,
    /// Why decoding stopped before the end, if it did (torn or corrupt tail).
    pub tail_problem: Option<LogTailProblem>,
}

/// Why [`decode_log`] stopped before the end of its bytes, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset_bytes}: {problem}")]
pub struct LogTailProblem {
    /// Where the valid prefix ends (the first byte not decoded).
    pub offset_bytes: usize,
    /// What is wrong there.
    pub problem: RecordDecodeError,
}

/// Why the record at some offset of a log could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    /// An all-zero header followed by nonzero bytes: preallocated space that a write
    /// reached past an unwritten header.
    #[error("torn write (an unwritten header followed by data)")]
    TornWrite,
    /// Fewer bytes left than a header.
    #[error("torn header ({present_bytes} bytes)")]
    TornHeader {
        /// The bytes left.
        present_bytes: usize,
    },
    /// The header's length exceeds [`RECORD_SIZE_MAX_BYTES`].
    #[error("record length {length_bytes} exceeds the limit")]
    TooLarge {
        /// The length the header claims.
        length_bytes: usize,
    },
    /// Fewer bytes left than the header's length.
    #[error("torn record: {present_bytes} of {length_bytes} bytes")]
    TornRecord {
        /// The payload bytes present.
        present_bytes: usize,
        /// The length the header claims.
        length_bytes: usize,
    },
    /// The payload does not match the header's CRC32C.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// The checksum matches but the payload is no record this version knows.
    #[error("undecodable record: {detail}")]
    Undecodable {
        /// The decoder's words (or the count of bytes left after a whole record).
        detail: String,
    },
}

/// Decodes a log, stopping at the first torn, oversized or corrupt record. Zeros from a
/// record boundary to the end are preallocated space that was never written: the log
/// ends there, cleanly (no header is all zero: a record has at least one byte). Zeros
/// followed by anything else are a torn write.
pub fn decode_log(bytes: &[u8]) -> LogContents {
    let mut contents = LogContents::default();
    let mut offset = 0;
    while offset < bytes.len() {
        let header = &bytes[offset..bytes.len().min(offset + RECORD_HEADER_BYTES)];
        if header.iter().all(|byte| *byte == 0) {
            if bytes[offset..].iter().any(|byte| *byte != 0) {
                contents.tail_problem = Some(LogTailProblem {
                    offset_bytes: offset,
                    problem: RecordDecodeError::TornWrite,
                });
            }
            break;
        }
        match decode_one(&bytes[offset..]) {
            Ok((record, used)) => {
                contents.records.push(record);
                offset += used;
            }
            Err(problem) => {
                contents.tail_problem = Some(LogTailProblem {
                    offset_bytes: offset,
                    problem,
                });
                break;
            }
        }
    }
    contents.valid_length_bytes = offset;
    contents
}

fn decode_one(bytes: &[u8]) -> Result<(Record, usize), RecordDecodeError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(RecordDecodeError::TornHeader {
            present_bytes: bytes.len(),
        });
    }
    let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let checksum = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if length > RECORD_SIZE_MAX_BYTES {
        return Err(RecordDecodeError::TooLarge {
            length_bytes: length,
        });
    }
    let end = RECORD_HEADER_BYTES + length;
    if bytes.len() < end {
        return Err(RecordDecodeError::TornRecord {
            present_bytes: bytes.len() - RECORD_HEADER_BYTES,
            length_bytes: length,
        });
    }
    let payload = &bytes[RECORD_HEADER_BYTES..end];
    if crc32c::crc32c(payload) != checksum {
        return Err(RecordDecodeError::ChecksumMismatch);
    }
    let (record, rest): (Record, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|error| RecordDecodeError::Undecodable {
            detail: error.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(RecordDecodeError::Undecodable {
            detail: format!("{} bytes after the record", rest.len()),
        });
    }
    Ok((record, end))
}

/// Keys and lock modes an operation list needs (exclusive wins over shared).
pub fn locks_for(operations: &[Operation]) -> Vec<(Key, LockMode)> {
    let mut locks = BTreeMap::new();
    for operation in operations {
        LockMode::hold(
            &mut locks,
            operation.key().clone(),
            LockMode::required_by(operation),
        );
    }
    locks.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Time, Vote};
    use proptest::prelude::*;

    fn sample(round: u32) -> Record {
        Record::LeaderRound { round }
    }

    fn descriptor() -> TxnDescriptor {
        TxnDescriptor {
            txn: TxnId {
                client: NodeId(9),
                sequence: 1,
            },
            participants: vec![NodeId(1)],
            acceptors: vec![NodeId(1), NodeId(2), NodeId(3)],
            f: 1,
            start_time: Time(5),
        }
    }

    #[test]
    fn log_round_trips_and_cuts_a_torn_tail() {
        let mut bytes = Vec::new();
        encode_record(&sample(1), &mut bytes).unwrap();
        encode_record(
            &Record::Vote {
                descriptor: descriptor(),
                vote: Vote::Prepared,
                reason: None,
                writes: vec![(Key::new("a"), Some(Value::new(b"1".to_vec())))],
                locks: vec![(Key::new("a"), LockMode::Exclusive)],
                read_versions: Vec::new(),
            },
            &mut bytes,
        )
        .unwrap();
        let whole = bytes.len();
        encode_record(&sample(3), &mut bytes).unwrap();
        bytes.truncate(bytes.len() - 2);
        let contents = decode_log(&bytes);
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.valid_length_bytes, whole);
        assert!(matches!(
            contents.tail_problem.unwrap().problem,
            RecordDecodeError::TornRecord { .. }
        ));
    }

    #[test]
    fn checkpoint_records_round_trip_through_the_log_framing() {
        let txn = descriptor().txn;
        let records = vec![
            Record::Snapshot {
                commit_sequence: 7,
                rows: vec![(Key::new("a"), Value::new(b"1".to_vec()), Version(7))],
            },
            Record::Outcomes {
                outcomes: vec![(txn, Outcome::Commit)],
            },
        ];
        let mut bytes = Vec::new();
        for record in &records {
            encode_record(record, &mut bytes).unwrap();
        }
        let contents = decode_log(&bytes);
        assert_eq!(contents.records, records);
        assert!(contents.tail_problem.is_none());
    }

    #[test]
    fn bytes_after_a_whole_record_are_refused() {
        // A payload whose checksum matches but that holds more than one record: written by
        // no build of dtx, so refused rather than half read.
        let mut payload = Vec::new();
        postcard::to_extend(&sample(1), Appender(&mut payload)).unwrap();
        payload.push(0);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let contents = decode_log(&bytes);
        assert!(contents.records.is_empty());
        assert!(matches!(
            contents.tail_problem.unwrap().problem,
            RecordDecodeError::Undecodable { detail } if detail == "1 bytes after the record"
        ));
    }

    #[test]
    fn corrupt_byte_is_detected_by_checksum() {
        let mut bytes = Vec::new();
        encode_record(&sample(1), &mut bytes).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let contents = decode_log(&bytes);
        assert!(contents.records.is_empty());
        assert_eq!(
            contents.tail_problem.unwrap().problem,
            RecordDecodeError::ChecksumMismatch
        );
    }

    #[test]
    fn zeros_after_the_last_record_end_the_log_cleanly() {
        let mut bytes = Vec::new();
        encode_record(&sample(1), &mut bytes).unwrap();
        encode_record(&sample(2), &mut bytes).unwrap();
        let whole = bytes.len();
        bytes.resize(whole + 4096, 0);
        let contents = decode_log(&bytes);
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.valid_length_bytes, whole);
        assert!(contents.tail_problem.is_none());
        // A torn write into preallocated space: the header never arrived, later bytes did.
        bytes[whole + 100] = 7;
        let contents = decode_log(&bytes);
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.valid_length_bytes, whole);
        assert_eq!(
            contents.tail_problem.unwrap().problem,
            RecordDecodeError::TornWrite
        );
        // Half a record followed by zeros: cut at the record's start.
        let mut bytes = Vec::new();
        encode_record(&sample(1), &mut bytes).unwrap();
        let first = bytes.len();
        encode_record(&sample(2), &mut bytes).unwrap();
        bytes.truncate(bytes.len() - 3);
        bytes.resize(first + 4096, 0);
        let contents = decode_log(&bytes);
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.valid_length_bytes, first);
        assert!(contents.tail_problem.is_some());
    }

    proptest! {
        #[test]
        fn decode_log_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let contents = decode_log(&bytes);
            prop_assert!(contents.valid_length_bytes <= bytes.len());
        }

        #[test]
        fn any_prefix_of_a_log_decodes_to_a_prefix_of_its_records(rounds in proptest::collection::vec(any::<u32>(), 1..20), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            for round in &rounds {
                encode_record(&sample(*round), &mut bytes).unwrap();
            }
            let cut = cut.index(bytes.len() + 1);
            let contents = decode_log(&bytes[..cut]);
            let expected: Vec<Record> = rounds.iter().map(|round| sample(*round)).collect();
            prop_assert_eq!(&contents.records[..], &expected[..contents.records.len()]);
        }
    }
}
