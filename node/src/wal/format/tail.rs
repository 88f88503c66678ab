//! The tail rule (see the module doc of [`crate::wal`]): a bad batch of the newest segment
//! is a torn tail only if it carries evidence of never being completely written and no
//! valid later batch follows it; otherwise it is corruption.

use super::batch::{all_zero, batch_end, checked_payload, decode_batch_header, sector_at};
use super::{
    Classification, CorruptionReason, Damage, TailProblem, BATCH_HEADER_BYTES, BATCH_MAGIC,
    SECTOR_BYTES,
};

/// The first batch after `bad` (at a sector boundary) with a good header and payload and a
/// sequence number of at least `due`: proof that a later group commit completed.
fn later_valid_batch(bytes: &[u8], bad: usize, due: u64) -> Option<(usize, u64)> {
    let mut offset = bad + SECTOR_BYTES;
    while offset < bytes.len() {
        if bytes.get(offset..offset + BATCH_MAGIC.len()) == Some(&BATCH_MAGIC[..]) {
            let valid = decode_batch_header(bytes, offset)
                .ok()
                .filter(|header| header.sequence >= due)
                .and_then(|header| {
                    checked_payload(bytes, offset, &header)
                        .ok()
                        .map(|_| header.sequence)
                });
            if let Some(sequence) = valid {
                return Some((offset, sequence));
            }
        }
        offset += SECTOR_BYTES;
    }
    None
}

/// The rule for a bad batch in the newest segment (see the module doc of [`crate::wal`]).
pub(super) fn classify(bytes: &[u8], offset: usize, damage: &Damage, due: u64) -> Classification {
    if let Some((later, sequence)) = later_valid_batch(bytes, offset, due) {
        return Classification::Corruption(CorruptionReason::FollowedByValidBatch {
            offset_bytes: later as u64,
            sequence,
        });
    }
    match torn_evidence(bytes, offset, damage) {
        Some(problem) => Classification::TornTail(problem),
        None => Classification::Corruption(CorruptionReason::CompletelyWritten),
    }
}

/// Evidence that the batch at `offset` was never completely written, if there is any.
fn torn_evidence(bytes: &[u8], offset: usize, damage: &Damage) -> Option<TailProblem> {
    let offset_bytes = offset as u64;
    match damage {
        Damage::UnwrittenHeader => return Some(TailProblem::UnwrittenHeader { offset_bytes }),
        Damage::BatchHeaderTruncated => {
            return Some(TailProblem::PastEndOfFile {
                offset_bytes,
                end_bytes: offset_bytes + BATCH_HEADER_BYTES as u64,
                file_bytes: bytes.len() as u64,
            })
        }
        _ => {}
    }
    // Without a header that checks, the batch's extent is unknown: no evidence.
    let header = decode_batch_header(bytes, offset).ok()?;
    let end = match batch_end(bytes, offset, &header) {
        Ok(end) => end,
        Err(Damage::PastEndOfFile {
            end_bytes,
            file_bytes,
        }) => {
            return Some(TailProblem::PastEndOfFile {
                offset_bytes,
                end_bytes,
                file_bytes,
            })
        }
        Err(_) => return None,
    };
    let mut sector = offset + SECTOR_BYTES;
    while sector < end {
        if all_zero(sector_at(bytes, sector)) {
            return Some(TailProblem::UnwrittenSector {
                offset_bytes,
                sector_offset_bytes: sector as u64,
            });
        }
        sector += SECTOR_BYTES;
    }
    None
}
