//! What can be wrong at an offset of a log file ([`Damage`]), and what it means for the
//! log: a provably torn tail that open cuts ([`TailProblem`]) or corruption that makes it
//! refuse to start ([`CorruptionReason`]).

use super::{FileKind, FILE_HEADER_BYTES, FORMAT_VERSION};
use serde::Serialize;
use std::fmt;

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
