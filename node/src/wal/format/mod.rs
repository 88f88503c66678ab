//! The on-disk format of log files, and the pure rules that read it back: which batches are
//! good, and whether a bad one is a provably torn tail or corruption of acknowledged data.
//! Shared by [`super::Wal::open`] (which acts on the verdict) and [`super::verify`] (which
//! only reports it). The crash-safety argument is in the module doc of [`super`].
//!
//! A file is a [`FileHeader`] in its first sector, then batches, each starting at a
//! sector-aligned offset:
//!
//! ```text
//! file header (sector 0, 512 bytes):
//!   0..8 magic (b"DTXWALSG" segment, b"DTXWALCP" checkpoint) | 8..12 format version u32
//!   12..20 node id u64 | 20..28 file number u64 | 28..36 log sequence u64
//!   36..38 cluster id length u16 | 38.. cluster id (UTF-8, at most CLUSTER_ID_BYTES_MAX)
//!   508..512 CRC32C of bytes 0..508 (the rest is zero)
//! batch, first sector:
//!   0..8 b"DTXBATCH" | 8..12 format version u32 | 12..16 payload length u32
//!   16..24 sequence u64 | 24..28 payload CRC32C | 28..32 CRC32C of bytes 0..28
//!   32..512 the first 480 payload bytes
//! batch, every further sector:
//!   0..8 stamp: 0xB5 then the sequence's low 7 bytes | 8..512 the next 504 payload bytes
//! ```
//!
//! Integers are little endian. The payload is a run of [`dtx_protocol::encode_record`]
//! frames. The stamp makes every written sector of a batch nonzero (so an all-zero sector
//! inside a batch can only be one that was never written, whatever the records hold), and
//! no sector inside a batch can begin with the batch magic (so a record's bytes can never
//! pass for a later batch).
//!
//! The parts: `header.rs` (the file header and identity), `batch.rs` (encoding and
//! decoding one batch), `damage.rs` (what can be wrong and what it means), `scan.rs`
//! (reading a whole file), `tail.rs` (the rule that tells a torn tail from corruption).

mod batch;
mod damage;
mod header;
mod scan;
mod tail;

pub use batch::{batch_extent_bytes, encode_batch, BatchTooLarge};
pub use damage::{Classification, CorruptionReason, Damage, Finding, TailProblem};
pub use header::{ClusterIdTooLong, FileHeader, FileKind};
pub use scan::{scan_file, Expectation, FileScan};

#[cfg(test)]
mod pin_tests;

/// The unit of atomic writes assumed of the device, and the alignment of every batch.
pub const SECTOR_BYTES: usize = 512;

/// The version of this format, in every file and batch header. 1: records in CBOR (field
/// names); 2: records in postcard (positional; see `dtx_protocol::record`). A file or batch
/// of another version is refused, never read: a node of this build does not start on an
/// older log (`pin_tests.rs` fails when the record bytes change without a new version).
pub const FORMAT_VERSION: u32 = 2;

/// Bytes of the file header (its whole first sector).
pub const FILE_HEADER_BYTES: usize = SECTOR_BYTES;

/// Bytes of a batch header.
pub const BATCH_HEADER_BYTES: usize = 32;

/// Bytes of the stamp at the start of every batch sector after the first.
pub const SECTOR_STAMP_BYTES: usize = 8;

/// Longest cluster id a file header holds (bytes of UTF-8).
pub const CLUSTER_ID_BYTES_MAX: usize = 256;

const SEGMENT_MAGIC: [u8; 8] = *b"DTXWALSG";
const CHECKPOINT_MAGIC: [u8; 8] = *b"DTXWALCP";
const BATCH_MAGIC: [u8; 8] = *b"DTXBATCH";
const STAMP_MARKER: u8 = 0xB5;
const FILE_HEADER_CHECKSUM_AT: usize = FILE_HEADER_BYTES - 4;
const CLUSTER_ID_AT: usize = 38;
const FIRST_SECTOR_PAYLOAD_BYTES: usize = SECTOR_BYTES - BATCH_HEADER_BYTES;
const SECTOR_PAYLOAD_BYTES: usize = SECTOR_BYTES - SECTOR_STAMP_BYTES;

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The next sector boundary at or after `offset`.
pub fn align_up(offset: u64) -> u64 {
    offset.div_ceil(SECTOR_BYTES as u64) * SECTOR_BYTES as u64
}
