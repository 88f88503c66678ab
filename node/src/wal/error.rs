//! The errors of the log's operations: opening it, handing it a batch, the writer thread's
//! failure, a checkpoint's failure.

use super::format::{BatchTooLarge, ClusterIdTooLong};
use super::{CorruptionReason, Damage};
use dtx_protocol::record::RecordEncodeError;
use std::fmt;
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
    /// [`super::WalOptions::cluster_id`] does not fit a file header.
    #[error("log directory {dir}: {cause}")]
    ClusterIdTooLong {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        cause: ClusterIdTooLong,
    },
    /// The writer could not start on a fresh segment.
    #[error("log directory {dir}: {cause}")]
    Start {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        cause: WalFailure,
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

/// Which file-system step of the log failed (the [`io::Error`] says how).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalOperation {
    /// Creating a new segment or checkpoint file (its `.tmp`).
    Create,
    /// Reading a sealed file back (a checkpoint reads its predecessor and segments).
    Read,
    /// Writing a batch or a file header.
    Write,
    /// Writing the preallocated zeros ahead of the batches.
    Preallocate,
    /// `fdatasync`/`fsync` of a log file.
    Fsync,
    /// Renaming a `.tmp` into place.
    Rename,
    /// Fsync of the log directory, making a create, rename or delete durable.
    DirectoryFsync,
    /// Listing the log directory.
    List,
    /// Deleting a file a checkpoint covers.
    Remove,
    /// Starting the checkpoint thread.
    SpawnCheckpoint,
}

/// A number the log counts with that has no successor left (`u64::MAX` reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// Batch sequence numbers.
    BatchSequence,
    /// Segment file numbers.
    Segment,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Exhausted::BatchSequence => "batch sequence numbers exhausted (u64)",
            Exhausted::Segment => "segment numbers exhausted (u64)",
        })
    }
}

/// Why the writer thread stopped (reported as [`super::WalEvent::Failed`]): nothing more
/// will become durable, and after a failed fsync the file's state is unknown.
#[derive(Debug, thiserror::Error)]
pub enum WalFailure {
    /// A file-system step failed.
    #[error("{cause}")]
    Io {
        /// Which step.
        operation: WalOperation,
        /// The cause (its kind: [`io::Error::kind`]).
        cause: io::Error,
    },
    /// A record of a batch could not be encoded.
    #[error(transparent)]
    Record(#[from] RecordEncodeError),
    /// A group commit's payload does not fit a batch.
    #[error(transparent)]
    BatchTooLarge(#[from] BatchTooLarge),
    /// [`super::WalOptions::cluster_id`] does not fit a file header.
    #[error(transparent)]
    ClusterIdTooLong(#[from] ClusterIdTooLong),
    /// A counter ran out.
    #[error("{0}")]
    Exhausted(Exhausted),
}

impl WalFailure {
    /// The adapter for `map_err`: `operation` failed with the [`io::Error`] it is given.
    pub(super) fn io(operation: WalOperation) -> impl FnOnce(io::Error) -> WalFailure {
        move |cause| WalFailure::Io { operation, cause }
    }
}

/// Why a checkpoint could not be written (logged; the log keeps its segments and the
/// next checkpoint tries again).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file-system step failed, or encoding (see [`WalFailure`]).
    #[error(transparent)]
    Write(#[from] WalFailure),
    /// A sealed file (the previous checkpoint or a covered segment) does not check
    /// completely: it was durable before anything after it was written.
    #[error("{} at byte {offset_bytes}: {damage}", .file.display())]
    Damaged {
        /// The file.
        file: PathBuf,
        /// Where in the file.
        offset_bytes: u64,
        /// What is wrong.
        damage: Damage,
    },
}
