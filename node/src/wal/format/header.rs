//! The file header: the first sector of every log file, saying what the file is (segment
//! or checkpoint, format version, number) and whose (cluster id, node id).

use super::{
    read_u32, read_u64, Damage, CHECKPOINT_MAGIC, CLUSTER_ID_AT, CLUSTER_ID_BYTES_MAX,
    FILE_HEADER_BYTES, FILE_HEADER_CHECKSUM_AT, FORMAT_VERSION, SEGMENT_MAGIC,
};
use serde::Serialize;
use std::fmt;

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
