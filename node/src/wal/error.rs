//! The errors of the log's operations: opening it, handing it a batch.

use super::format::ClusterIdTooLong;
use super::{CorruptionReason, Damage};
use std::io;
use std::path::{Path, PathBuf};

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WalOpenError {
    /// The file system refused.
    #[error("log directory {dir}: {cause}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// Acknowledged data is damaged: opening would lose it.
    #[error(
        "corrupt log file {} at byte {offset_bytes}: {damage} ({reason}); refusing to \
         start rather than lose acknowledged data; run: dtx wal verify {}",
        .file.display(), log_dir(.file).display()
    )]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Where in the file.
        offset_bytes: u64,
        /// What is wrong.
        damage: Damage,
        /// Why it cannot be a torn tail.
        reason: CorruptionReason,
    },
    /// A file of another cluster or node, or renamed: not this log's.
    #[error(
        "log file {} is not part of this node's log: {damage}; refusing to start; \
         run: dtx wal verify {}",
        .file.display(), log_dir(.file).display()
    )]
    Foreign {
        /// The file.
        file: PathBuf,
        /// Which identity does not match, and how.
        damage: Damage,
    },
    /// [`WalOptions::cluster_id`] does not fit a file header.
    #[error("log directory {dir}: {cause}")]
    ClusterIdTooLong {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        cause: ClusterIdTooLong,
    },
}

/// Why a batch could not be handed to the writer.
#[derive(Debug, thiserror::Error)]
pub enum WalAppendError {
    /// The writer thread stopped (after an I/O error, reported on the events channel).
    #[error("the log writer has stopped")]
    Stopped,
}

/// The log directory of a log file (for the hint in errors).
pub(super) fn log_dir(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("."))
}
