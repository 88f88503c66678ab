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

use dtx_protocol::{decode_log, Record};
use serde::Serialize;
use std::fmt;

/// The unit of atomic writes assumed of the device, and the alignment of every batch.
pub const SECTOR_BYTES: usize = 512;

/// The version of this format, in every file and batch header.
pub const FORMAT_VERSION: u32 = 1;

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

/// The two kinds of log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FileKind {
    /// `segment-N.log`: batches appended by group commit.
    Segment,
    /// `checkpoint-N.log`: the compacted log through segment N.
    Checkpoint,
}

impl FileKind {
    fn magic(self) -> [u8; 8] {
        match self {
            FileKind::Segment => SEGMENT_MAGIC,
            FileKind::Checkpoint => CHECKPOINT_MAGIC,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            FileKind::Segment => "segment",
            FileKind::Checkpoint => "checkpoint",
        })
    }
}

/// The first sector of every log file: what it is and whose it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileHeader {
    /// Segment or checkpoint.
    pub kind: FileKind,
    /// The format version.
    pub format_version: u32,
    /// The cluster the log belongs to.
    pub cluster_id: String,
    /// The node the log belongs to.
    pub node_id: u64,
    /// The number in the file's name (a renamed file no longer matches it).
    pub number: u64,
    /// Segment: the sequence number of its first batch. Checkpoint: the sequence number of
    /// the first batch of the log after it (a checkpoint's own batches count from 1).
    pub log_sequence: u64,
}

impl FileHeader {
    /// Encodes the header as one sector.
    pub fn encode(&self) -> Result<[u8; FILE_HEADER_BYTES], ClusterIdTooLong> {
        let cluster_id = self.cluster_id.as_bytes();
        if cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(ClusterIdTooLong {
                length_bytes: cluster_id.len(),
            });
        }
        let mut sector = [0u8; FILE_HEADER_BYTES];
        sector[0..8].copy_from_slice(&self.kind.magic());
        sector[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        sector[12..20].copy_from_slice(&self.node_id.to_le_bytes());
        sector[20..28].copy_from_slice(&self.number.to_le_bytes());
        sector[28..36].copy_from_slice(&self.log_sequence.to_le_bytes());
        // Fits: at most CLUSTER_ID_BYTES_MAX, checked above.
        sector[36..38].copy_from_slice(&(cluster_id.len() as u16).to_le_bytes());
        sector[CLUSTER_ID_AT..CLUSTER_ID_AT + cluster_id.len()].copy_from_slice(cluster_id);
        let checksum = crc32c::crc32c(&sector[..FILE_HEADER_CHECKSUM_AT]);
        sector[FILE_HEADER_CHECKSUM_AT..].copy_from_slice(&checksum.to_le_bytes());
        Ok(sector)
    }

    /// Decodes the header at the start of `bytes`, which must be a file of `kind`.
    pub fn decode(bytes: &[u8], kind: FileKind) -> Result<FileHeader, Damage> {
        let Some(sector) = bytes.get(..FILE_HEADER_BYTES) else {
            return Err(Damage::FileHeaderTruncated {
                file_bytes: bytes.len() as u64,
            });
        };
        let magic = &sector[0..8];
        if magic != kind.magic() {
            let other = match kind {
                FileKind::Segment => FileKind::Checkpoint,
                FileKind::Checkpoint => FileKind::Segment,
            };
            return Err(if magic == other.magic() {
                Damage::WrongKind {
                    name_kind: kind,
                    header_kind: other,
                }
            } else {
                Damage::FileHeaderMagic
            });
        }
        let checksum = read_u32(sector, FILE_HEADER_CHECKSUM_AT);
        if crc32c::crc32c(&sector[..FILE_HEADER_CHECKSUM_AT]) != checksum {
            return Err(Damage::FileHeaderChecksum);
        }
        let format_version = read_u32(sector, 8);
        if format_version != FORMAT_VERSION {
            return Err(Damage::UnsupportedVersion {
                version: format_version,
            });
        }
        let cluster_id_bytes = usize::from(u16::from_le_bytes([sector[36], sector[37]]));
        if cluster_id_bytes > CLUSTER_ID_BYTES_MAX {
            return Err(Damage::FileHeaderClusterId);
        }
        let cluster_id = std::str::from_utf8(&sector[CLUSTER_ID_AT..][..cluster_id_bytes])
            .map_err(|_| Damage::FileHeaderClusterId)?
            .to_string();
        Ok(FileHeader {
            kind,
            format_version,
            cluster_id,
            node_id: read_u64(sector, 12),
            number: read_u64(sector, 20),
            log_sequence: read_u64(sector, 28),
        })
    }
}

/// A cluster id longer than [`CLUSTER_ID_BYTES_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("cluster id of {length_bytes} bytes exceeds the limit of {CLUSTER_ID_BYTES_MAX}")]
pub struct ClusterIdTooLong {
    /// Its length.
    pub length_bytes: usize,
}

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

/// What is wrong at one offset of a log file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Damage {
    /// The file is shorter than its header.
    FileHeaderTruncated {
        /// The file's length.
        file_bytes: u64,
    },
    /// The file does not start with a log file magic.
    FileHeaderMagic,
    /// The header is of the other kind of log file (a renamed file).
    WrongKind {
        /// What the file's name says.
        name_kind: FileKind,
        /// What its header says.
        header_kind: FileKind,
    },
    /// The file header's checksum does not match.
    FileHeaderChecksum,
    /// A header of a format version this build does not read.
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The file header's cluster id is too long or not UTF-8.
    FileHeaderClusterId,
    /// The file belongs to another cluster.
    ForeignCluster {
        /// This log's cluster id.
        expected: String,
        /// The file's.
        found: String,
    },
    /// The file belongs to another node.
    ForeignNode {
        /// This log's node id.
        expected: u64,
        /// The file's.
        found: u64,
    },
    /// The file's header states another number than its name (a renamed file).
    Renamed {
        /// The number in the name.
        name_number: u64,
        /// The number in the header.
        header_number: u64,
    },
    /// The file does not continue the log where the previous file ended: a file is
    /// missing or out of place.
    SequenceGap {
        /// The sequence number the log continues with.
        expected: u64,
        /// The one the file starts with.
        found: u64,
    },
    /// A batch's header sector is all zeros, with data after it.
    UnwrittenHeader,
    /// The file ends inside a batch header.
    BatchHeaderTruncated,
    /// No batch magic where a batch must start.
    BatchMagic,
    /// A batch header's checksum does not match.
    BatchHeaderChecksum,
    /// The batch runs past the end of the file.
    PastEndOfFile {
        /// Where the batch would end.
        end_bytes: u64,
        /// The file's length.
        file_bytes: u64,
    },
    /// A sector inside the batch is all zeros.
    ZeroSector {
        /// The sector's offset.
        sector_offset_bytes: u64,
    },
    /// A sector inside the batch carries another batch's stamp.
    StampMismatch {
        /// The sector's offset.
        sector_offset_bytes: u64,
    },
    /// The payload's checksum does not match.
    PayloadChecksum,
    /// A batch out of sequence (a batch lost or repeated).
    BatchSequence {
        /// The sequence number due.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The payload's checksum matches but its records do not decode.
    Undecodable {
        /// The decoder's reason.
        reason: String,
    },
}

impl fmt::Display for Damage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::FileHeaderTruncated { file_bytes } => write!(
                formatter,
                "file of {file_bytes} bytes is shorter than its {FILE_HEADER_BYTES}-byte header"
            ),
            Damage::FileHeaderMagic => formatter.write_str("not a dtx log file (bad magic)"),
            Damage::WrongKind {
                name_kind,
                header_kind,
            } => write!(
                formatter,
                "named as a {name_kind} but its header is a {header_kind}'s (renamed?)"
            ),
            Damage::FileHeaderChecksum => formatter.write_str("file header checksum mismatch"),
            Damage::UnsupportedVersion { version } => write!(
                formatter,
                "format version {version} (this build reads version {FORMAT_VERSION})"
            ),
            Damage::FileHeaderClusterId => {
                formatter.write_str("file header holds an invalid cluster id")
            }
            Damage::ForeignCluster { expected, found } => write!(
                formatter,
                "belongs to cluster {found:?}, this node is in cluster {expected:?} (copied from another cluster?)"
            ),
            Damage::ForeignNode { expected, found } => write!(
                formatter,
                "belongs to node id {found}, this node is {expected} (copied from another node?)"
            ),
            Damage::Renamed {
                name_number,
                header_number,
            } => write!(
                formatter,
                "named number {name_number} but its header says {header_number} (renamed?)"
            ),
            Damage::SequenceGap { expected, found } => write!(
                formatter,
                "starts at batch sequence {found}, the log continues at {expected} (a file is missing or out of place)"
            ),
            Damage::UnwrittenHeader => {
                formatter.write_str("batch header sector is all zeros but data follows it")
            }
            Damage::BatchHeaderTruncated => {
                formatter.write_str("the file ends inside a batch header")
            }
            Damage::BatchMagic => formatter.write_str("no batch header where a batch must start"),
            Damage::BatchHeaderChecksum => formatter.write_str("batch header checksum mismatch"),
            Damage::PastEndOfFile {
                end_bytes,
                file_bytes,
            } => write!(
                formatter,
                "batch ends at byte {end_bytes}, past the end of the {file_bytes}-byte file"
            ),
            Damage::ZeroSector {
                sector_offset_bytes,
            } => write!(
                formatter,
                "sector at byte {sector_offset_bytes} inside the batch is all zeros"
            ),
            Damage::StampMismatch {
                sector_offset_bytes,
            } => write!(
                formatter,
                "sector at byte {sector_offset_bytes} carries another batch's stamp"
            ),
            Damage::PayloadChecksum => formatter.write_str("batch payload checksum mismatch"),
            Damage::BatchSequence { expected, found } => write!(
                formatter,
                "batch sequence {found} where {expected} is due"
            ),
            Damage::Undecodable { reason } => {
                write!(formatter, "batch payload does not decode: {reason}")
            }
        }
    }
}

/// The evidence that a bad last batch was never completely written, so that no one was
/// told it was durable: the only case in which the log cuts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TailProblem {
    /// The batch's header sector is all zeros and later bytes are not: its later sectors
    /// reached the disk, its first did not (a power loss mid-write).
    UnwrittenHeader {
        /// Where the batch starts (the cut).
        offset_bytes: u64,
    },
    /// The batch runs past the end of the file: the write that grew the file was cut.
    PastEndOfFile {
        /// Where the batch starts (the cut).
        offset_bytes: u64,
        /// Where the batch would end.
        end_bytes: u64,
        /// The file's length.
        file_bytes: u64,
    },
    /// A sector inside the batch is all zeros: every written sector of a batch carries a
    /// nonzero header or stamp, so this one was never written.
    UnwrittenSector {
        /// Where the batch starts (the cut).
        offset_bytes: u64,
        /// The unwritten sector.
        sector_offset_bytes: u64,
    },
}

impl TailProblem {
    /// Where the torn batch starts: the log is cut here.
    pub fn offset_bytes(&self) -> u64 {
        match self {
            TailProblem::UnwrittenHeader { offset_bytes }
            | TailProblem::PastEndOfFile { offset_bytes, .. }
            | TailProblem::UnwrittenSector { offset_bytes, .. } => *offset_bytes,
        }
    }
}

impl fmt::Display for TailProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailProblem::UnwrittenHeader { offset_bytes } => write!(
                formatter,
                "torn batch at byte {offset_bytes}: its header sector was never written"
            ),
            TailProblem::PastEndOfFile {
                offset_bytes,
                end_bytes,
                file_bytes,
            } => write!(
                formatter,
                "torn batch at byte {offset_bytes}: it ends at byte {end_bytes}, past the end of the {file_bytes}-byte file"
            ),
            TailProblem::UnwrittenSector {
                offset_bytes,
                sector_offset_bytes,
            } => write!(
                formatter,
                "torn batch at byte {offset_bytes}: its sector at byte {sector_offset_bytes} was never written"
            ),
        }
    }
}

/// Why a bad batch or file cannot be a torn tail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CorruptionReason {
    /// A valid batch with a later sequence number starts after it: that batch's fsync
    /// came after this one's, so this one was acknowledged.
    FollowedByValidBatch {
        /// Where the later batch starts.
        offset_bytes: u64,
        /// Its sequence number.
        sequence: u64,
    },
    /// The batch was written completely (within the file, no unwritten sector): neither
    /// a process crash nor a power loss leaves a complete batch that does not check.
    CompletelyWritten,
    /// Not in the log's tail: a sealed segment, a checkpoint or a file header, all durable
    /// before anything after them was written.
    NotTheLogTail,
    /// The file belongs to another cluster, node or position in the log.
    ForeignFile,
}

impl fmt::Display for CorruptionReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionReason::FollowedByValidBatch {
                offset_bytes,
                sequence,
            } => write!(
                formatter,
                "a valid later batch (sequence {sequence}) starts at byte {offset_bytes}, so this one was acknowledged"
            ),
            CorruptionReason::CompletelyWritten => formatter.write_str(
                "the batch was completely written, so a crash cannot explain it",
            ),
            CorruptionReason::NotTheLogTail => {
                formatter.write_str("it is not the log's tail: it was durable before later writes")
            }
            CorruptionReason::ForeignFile => {
                formatter.write_str("the file does not belong to this log")
            }
        }
    }
}

/// What a problem means for the log: cut at open, or refuse to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Classification {
    /// The last batch was never completely written: it is cut at open.
    TornTail(TailProblem),
    /// Acknowledged data is damaged (or the file is not this log's): opening refuses.
    Corruption(CorruptionReason),
}

impl fmt::Display for Classification {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classification::TornTail(problem) => write!(formatter, "torn tail: {problem}"),
            Classification::Corruption(reason) => write!(formatter, "corruption: {reason}"),
        }
    }
}

/// A problem found in a file: where, what, and what it means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Where in the file.
    pub offset_bytes: u64,
    /// What is wrong.
    pub damage: Damage,
    /// Torn tail or corruption.
    pub classification: Classification,
}

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

enum BatchRead {
    /// Zeros from here to the end of the file: the log ends cleanly.
    End,
    Batch(GoodBatch),
}

struct GoodBatch {
    sequence: u64,
    records: Vec<Record>,
    payload_bytes: u64,
    /// The sector boundary after the batch.
    next_offset: usize,
}

struct BatchHeader {
    payload_bytes: usize,
    sequence: u64,
    payload_checksum: u32,
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|byte| *byte == 0)
}

/// The sector starting at `offset`, shortened by the end of the file.
fn sector_at(bytes: &[u8], offset: usize) -> &[u8] {
    &bytes[offset.min(bytes.len())..offset.saturating_add(SECTOR_BYTES).min(bytes.len())]
}

fn decode_batch_header(bytes: &[u8], offset: usize) -> Result<BatchHeader, Damage> {
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
fn batch_end(bytes: &[u8], offset: usize, header: &BatchHeader) -> Result<usize, Damage> {
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

fn read_batch(bytes: &[u8], offset: usize, due: u64) -> Result<BatchRead, Damage> {
    if all_zero(sector_at(bytes, offset)) {
        return if all_zero(&bytes[offset..]) {
            Ok(BatchRead::End)
        } else {
            Err(Damage::UnwrittenHeader)
        };
    }
    let header = decode_batch_header(bytes, offset)?;
    let end = batch_end(bytes, offset, &header)?;
    let payload = gather_payload(bytes, offset, end, &header)?;
    if crc32c::crc32c(&payload) != header.payload_checksum {
        return Err(Damage::PayloadChecksum);
    }
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
                    let end = batch_end(bytes, offset, &header).ok()?;
                    let payload = gather_payload(bytes, offset, end, &header).ok()?;
                    (crc32c::crc32c(&payload) == header.payload_checksum).then_some(header.sequence)
                });
            if let Some(sequence) = valid {
                return Some((offset, sequence));
            }
        }
        offset += SECTOR_BYTES;
    }
    None
}

/// The rule for a bad batch in the newest segment (see the module doc of [`super`]).
fn classify(bytes: &[u8], offset: usize, damage: &Damage, due: u64) -> Classification {
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
