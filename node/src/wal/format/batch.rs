//! One batch on disk: encoding a payload into a header and stamped sectors, and decoding
//! it back with every check (magic, checksums, stamps, sequence, records).

use super::{
    align_up, read_u32, read_u64, Damage, BATCH_HEADER_BYTES, BATCH_MAGIC,
    FIRST_SECTOR_PAYLOAD_BYTES, FORMAT_VERSION, SECTOR_BYTES, SECTOR_PAYLOAD_BYTES,
    SECTOR_STAMP_BYTES, STAMP_MARKER,
};
use dtx_protocol::{decode_log, Record};

/// Bytes a batch with `payload_bytes` of payload occupies from its first byte to its last
/// (the zeros up to the next sector boundary excluded).
pub fn batch_extent_bytes(payload_bytes: u64) -> u64 {
    let first = FIRST_SECTOR_PAYLOAD_BYTES as u64;
    if payload_bytes <= first {
        return BATCH_HEADER_BYTES as u64 + payload_bytes;
    }
    let rest = payload_bytes - first;
    let full_sectors = rest / SECTOR_PAYLOAD_BYTES as u64;
    let partial = rest % SECTOR_PAYLOAD_BYTES as u64;
    let partial_bytes = if partial == 0 {
        0
    } else {
        SECTOR_STAMP_BYTES as u64 + partial
    };
    SECTOR_BYTES as u64 + full_sectors * SECTOR_BYTES as u64 + partial_bytes
}

fn stamp(sequence: u64) -> [u8; SECTOR_STAMP_BYTES] {
    let mut stamp = sequence.to_le_bytes();
    stamp.copy_within(0..7, 1);
    stamp[0] = STAMP_MARKER;
    stamp
}

/// A payload longer than a batch header can state.
#[derive(Debug, thiserror::Error)]
#[error(
    "batch payload of {length_bytes} bytes exceeds the limit of {} bytes",
    u32::MAX
)]
pub struct BatchTooLarge {
    /// Its length.
    pub length_bytes: usize,
}

/// Appends one batch (header, then `payload` spread over stamped sectors) to `out`, which
/// the caller writes at a sector-aligned offset. Appends [`batch_extent_bytes`] bytes.
pub fn encode_batch(sequence: u64, payload: &[u8], out: &mut Vec<u8>) -> Result<(), BatchTooLarge> {
    let length = u32::try_from(payload.len()).map_err(|_| BatchTooLarge {
        length_bytes: payload.len(),
    })?;
    let start = out.len();
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_checksum = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&header_checksum.to_le_bytes());
    let (first, rest) = payload.split_at(payload.len().min(FIRST_SECTOR_PAYLOAD_BYTES));
    out.extend_from_slice(first);
    let stamp = stamp(sequence);
    for chunk in rest.chunks(SECTOR_PAYLOAD_BYTES) {
        out.extend_from_slice(&stamp);
        out.extend_from_slice(chunk);
    }
    debug_assert_eq!(
        (out.len() - start) as u64,
        batch_extent_bytes(u64::from(length))
    );
    Ok(())
}

pub(super) enum BatchRead {
    /// Zeros from here to the end of the file: the log ends cleanly.
    End,
    Batch(GoodBatch),
}

pub(super) struct GoodBatch {
    pub(super) sequence: u64,
    pub(super) records: Vec<Record>,
    pub(super) payload_bytes: u64,
    /// The sector boundary after the batch.
    pub(super) next_offset: usize,
}

pub(super) struct BatchHeader {
    pub(super) payload_bytes: usize,
    pub(super) sequence: u64,
    pub(super) payload_checksum: u32,
}

pub(super) fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|byte| *byte == 0)
}

/// The sector starting at `offset`, shortened by the end of the file.
pub(super) fn sector_at(bytes: &[u8], offset: usize) -> &[u8] {
    &bytes[offset.min(bytes.len())..offset.saturating_add(SECTOR_BYTES).min(bytes.len())]
}

pub(super) fn decode_batch_header(bytes: &[u8], offset: usize) -> Result<BatchHeader, Damage> {
    let Some(header) = bytes.get(offset..offset.saturating_add(BATCH_HEADER_BYTES)) else {
        return Err(Damage::BatchHeaderTruncated);
    };
    if header[0..8] != BATCH_MAGIC {
        return Err(Damage::BatchMagic);
    }
    if crc32c::crc32c(&header[..28]) != read_u32(header, 28) {
        return Err(Damage::BatchHeaderChecksum);
    }
    let version = read_u32(header, 8);
    if version != FORMAT_VERSION {
        return Err(Damage::UnsupportedVersion { version });
    }
    Ok(BatchHeader {
        // u32 into usize: lossless on the 64-bit targets this runs on.
        payload_bytes: read_u32(header, 12) as usize,
        sequence: read_u64(header, 16),
        payload_checksum: read_u32(header, 24),
    })
}

/// Where the batch at `offset` with this header ends, if inside the file.
pub(super) fn batch_end(
    bytes: &[u8],
    offset: usize,
    header: &BatchHeader,
) -> Result<usize, Damage> {
    let extent = batch_extent_bytes(header.payload_bytes as u64);
    let end = (offset as u64).saturating_add(extent);
    if end > bytes.len() as u64 {
        return Err(Damage::PastEndOfFile {
            end_bytes: end,
            file_bytes: bytes.len() as u64,
        });
    }
    // Fits: at most bytes.len().
    Ok(end as usize)
}

/// The payload of the batch at `offset..end`, its stamps checked.
fn gather_payload(
    bytes: &[u8],
    offset: usize,
    end: usize,
    header: &BatchHeader,
) -> Result<Vec<u8>, Damage> {
    let mut payload = Vec::with_capacity(header.payload_bytes);
    let first_end = end.min(offset + SECTOR_BYTES);
    payload.extend_from_slice(&bytes[offset + BATCH_HEADER_BYTES..first_end]);
    let expected_stamp = stamp(header.sequence);
    let mut sector = offset + SECTOR_BYTES;
    while sector < end {
        let sector_end = end.min(sector + SECTOR_BYTES);
        let contents = &bytes[sector..sector_end];
        if all_zero(sector_at(bytes, sector)) {
            return Err(Damage::ZeroSector {
                sector_offset_bytes: sector as u64,
            });
        }
        if contents.get(..SECTOR_STAMP_BYTES) != Some(&expected_stamp[..]) {
            return Err(Damage::StampMismatch {
                sector_offset_bytes: sector as u64,
            });
        }
        payload.extend_from_slice(&contents[SECTOR_STAMP_BYTES..]);
        sector += SECTOR_BYTES;
    }
    Ok(payload)
}

/// The end and the payload of the batch at `offset` with this header: within the file,
/// every sector stamped, the payload checksum matching.
pub(super) fn checked_payload(
    bytes: &[u8],
    offset: usize,
    header: &BatchHeader,
) -> Result<(usize, Vec<u8>), Damage> {
    let end = batch_end(bytes, offset, header)?;
    let payload = gather_payload(bytes, offset, end, header)?;
    if crc32c::crc32c(&payload) != header.payload_checksum {
        return Err(Damage::PayloadChecksum);
    }
    Ok((end, payload))
}

pub(super) fn read_batch(bytes: &[u8], offset: usize, due: u64) -> Result<BatchRead, Damage> {
    if all_zero(sector_at(bytes, offset)) {
        return if all_zero(&bytes[offset..]) {
            Ok(BatchRead::End)
        } else {
            Err(Damage::UnwrittenHeader)
        };
    }
    let header = decode_batch_header(bytes, offset)?;
    let (end, payload) = checked_payload(bytes, offset, &header)?;
    if header.sequence != due {
        return Err(Damage::BatchSequence {
            expected: due,
            found: header.sequence,
        });
    }
    let contents = decode_log(&payload);
    if let Some(reason) = contents.tail_problem {
        return Err(Damage::Undecodable {
            reason: reason.to_string(),
        });
    }
    if contents.valid_length_bytes != payload.len() {
        return Err(Damage::Undecodable {
            reason: format!(
                "{} payload bytes after the last record",
                payload.len() - contents.valid_length_bytes
            ),
        });
    }
    Ok(BatchRead::Batch(GoodBatch {
        sequence: header.sequence,
        records: contents.records,
        payload_bytes: payload.len() as u64,
        // Fits: end is at most the file's length, aligning adds less than a sector.
        next_offset: align_up(end as u64) as usize,
    }))
}
