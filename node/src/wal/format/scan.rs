//! Reading one whole file: its header against the expected identity, then its batches in
//! order, stopping at the first problem, which [`super::tail`] classifies.

use super::batch::{read_batch, BatchRead};
use super::tail::classify;
use super::{
    Classification, CorruptionReason, Damage, FileHeader, FileKind, Finding, FILE_HEADER_BYTES,
};
use dtx_protocol::Record;

/// What reading one file found.
#[derive(Debug)]
pub struct FileScan {
    /// The header, if it decoded.
    pub header: Option<FileHeader>,
    /// The records of the good batches, in order.
    pub records: Vec<Record>,
    /// Good batches.
    pub batches: u64,
    /// Payload bytes of the good batches (the records' frames, without headers and padding).
    pub payload_bytes: u64,
    /// Sequence numbers of the first and last good batch.
    pub sequences: Option<(u64, u64)>,
    /// The sequence number of the batch after the last good one.
    pub next_sequence: u64,
    /// The first problem, if any (reading stops there).
    pub finding: Option<Finding>,
}

/// What a file must be to belong to the log being read.
#[derive(Clone, Copy, Debug)]
pub struct Expectation<'a> {
    /// Segment or checkpoint (from the name).
    pub kind: FileKind,
    /// The number in the name.
    pub number: u64,
    /// The log's cluster id.
    pub cluster_id: &'a str,
    /// The log's node id.
    pub node_id: u64,
    /// The sequence number the log continues with (segments; `None` for checkpoints and
    /// for the first file read without a checkpoint before it).
    pub log_sequence: Option<u64>,
    /// Whether this is the newest segment: only there can a batch be torn.
    pub log_tail: bool,
}

/// Reads one file: its header against `expected`, then its batches, stopping at the first
/// problem, which it classifies. Pure: the caller decides what to do.
pub fn scan_file(bytes: &[u8], expected: &Expectation<'_>) -> FileScan {
    let mut scan = FileScan {
        header: None,
        records: Vec::new(),
        batches: 0,
        payload_bytes: 0,
        sequences: None,
        next_sequence: expected.log_sequence.unwrap_or(1),
        finding: None,
    };
    let header = match FileHeader::decode(bytes, expected.kind) {
        Ok(header) => header,
        Err(damage) => {
            scan.finding = Some(file_finding(damage, CorruptionReason::NotTheLogTail));
            return scan;
        }
    };
    scan.header = Some(header.clone());
    if let Some(damage) = identity_damage(&header, expected) {
        scan.finding = Some(file_finding(damage, CorruptionReason::ForeignFile));
        return scan;
    }
    let first_sequence = match expected.kind {
        FileKind::Segment => header.log_sequence,
        FileKind::Checkpoint => 1,
    };
    if let Some(due) = expected.log_sequence {
        if expected.kind == FileKind::Segment && header.log_sequence != due {
            let damage = Damage::SequenceGap {
                expected: due,
                found: header.log_sequence,
            };
            scan.finding = Some(file_finding(damage, CorruptionReason::NotTheLogTail));
            return scan;
        }
    }
    scan.next_sequence = first_sequence;
    let mut offset = FILE_HEADER_BYTES;
    while offset < bytes.len() {
        match read_batch(bytes, offset, scan.next_sequence) {
            Ok(BatchRead::End) => break,
            Ok(BatchRead::Batch(batch)) => {
                scan.records.extend(batch.records);
                scan.batches += 1;
                scan.payload_bytes += batch.payload_bytes;
                let first = scan.sequences.map_or(batch.sequence, |(first, _)| first);
                scan.sequences = Some((first, batch.sequence));
                // A good batch carries the due sequence number, so it is below u64::MAX
                // only if the header was hostile; saturate instead of overflowing.
                scan.next_sequence = batch.sequence.saturating_add(1);
                offset = batch.next_offset;
            }
            Err(damage) => {
                let classification = if expected.log_tail {
                    classify(bytes, offset, &damage, scan.next_sequence)
                } else {
                    Classification::Corruption(CorruptionReason::NotTheLogTail)
                };
                scan.finding = Some(Finding {
                    offset_bytes: offset as u64,
                    damage,
                    classification,
                });
                break;
            }
        }
    }
    scan
}

fn file_finding(damage: Damage, reason: CorruptionReason) -> Finding {
    Finding {
        offset_bytes: 0,
        damage,
        classification: Classification::Corruption(reason),
    }
}

fn identity_damage(header: &FileHeader, expected: &Expectation<'_>) -> Option<Damage> {
    if header.cluster_id != expected.cluster_id {
        return Some(Damage::ForeignCluster {
            expected: expected.cluster_id.to_string(),
            found: header.cluster_id.clone(),
        });
    }
    if header.node_id != expected.node_id {
        return Some(Damage::ForeignNode {
            expected: expected.node_id,
            found: header.node_id,
        });
    }
    if header.number != expected.number {
        return Some(Damage::Renamed {
            name_number: expected.number,
            header_number: header.number,
        });
    }
    None
}
