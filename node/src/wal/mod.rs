//! The write-ahead log: append-only segment files of checksummed batches, group commit on
//! a dedicated thread, a recovery that cuts only a tail it can prove was never
//! acknowledged, and checkpoints that keep recovery bounded.
//!
//! Layout of the log directory (the byte layout of a file is in [`format`]):
//! * `segment-NNNNNNNNNNNNNNNN.log`: a file header, then one *batch* per group commit,
//!   each starting at a 512-byte sector boundary: a batch header (magic, version,
//!   sequence number, payload length, payload CRC32C, header CRC32C), then the payload,
//!   the records framed by [`dtx_protocol::encode_record`]. A new segment starts at every
//!   open and whenever the current one passes [`WalOptions::segment_bytes_max`]; it is
//!   written as a `.tmp` with its header and first zeros, fsynced and renamed into place,
//!   so a segment file always has a complete header;
//! * `checkpoint-NNNNNNNNNNNNNNNN.log`: the same file header and batches, holding the
//!   protocol's snapshot (`Node::checkpoint_log`) of the previous checkpoint plus every
//!   segment numbered up to N (see [`compact`]): rows with their versions, the outcome
//!   window, open votes and acceptor state. Its size follows the data, not the history.
//!   Written to a `.tmp` file, fsynced, renamed, directory fsynced; only then are the
//!   segments it covers and the previous checkpoint deleted. A crash at any point leaves
//!   either the old checkpoint with all its segments or the new one (whose covered
//!   segments, if still there, are deleted at open); a `.tmp` left by a crash never
//!   replaced anything and is removed at open.
//!
//! # Torn tail or corruption
//! Recovery reads the newest checkpoint and the segments after it. It must cut what a
//! crash left half-written (never acknowledged: the node acts on a batch only after its
//! fsync returned) and must refuse to lose anything else. A bad checksum alone cannot tell
//! the two apart; the format is built so that the bytes can.
//!
//! * A process crash (kill -9, abort, OOM kill) leaves the page cache intact: everything
//!   the process handed to `write(2)` reaches the file, even without the fsync. A group
//!   commit is one `write(2)`; a fatal signal stops it between pages, so what is missing
//!   is whole pages of the batch (still the preallocated zeros), or the end of a batch
//!   that grew the file.
//! * A power loss keeps any subset of the unsynced sectors, in any order, but each
//!   512-byte sector is written atomically: old or new, never half (the devices we target
//!   guarantee this). An unfinished batch keeps at least one sector of preallocated zeros,
//!   or ends past the end of the file (its growth never reached the disk).
//!
//! So an unfinished batch always carries evidence: a sector of its extent that is all
//! zeros, or an extent past the end of the file. Every sector a batch writes is nonzero
//! (its header, or an 8-byte stamp at the start of each later sector), so an all-zero
//! sector proves it was never written, whatever the records inside hold. A bad batch
//! without that evidence was written completely and damaged afterwards (bit rot, a bad
//! sector, a stray write, an editor): corruption.
//!
//! Sector alignment: every batch starts at a sector boundary, so its header lies in one
//! sector and is either absent (zeros) or whole and checkable, never half old and half
//! new; and no two batches share a sector, so writing one never rewrites (and cannot
//! tear) a sector of an acknowledged one.
//!
//! Sequence numbers: each batch carries the next number, across segments (a segment's
//! header states its first, a checkpoint's the one the log continues with). A group
//! commit starts only after the previous one's fsync returned, so a bad batch followed by
//! a valid one with a later number was acknowledged: corruption, whatever zeros it holds.
//! The numbers also expose a missing or misplaced segment (a gap) and a stale batch.
//!
//! The rule, per bad batch of the newest segment: corruption if a valid batch with a later
//! number starts at a later sector boundary; otherwise a torn tail if it carries evidence
//! of never being completely written (cut, with everything after it, and reported as a
//! [`TailProblem`]); otherwise corruption. Anything bad in an older segment or a
//! checkpoint is corruption: each was complete before anything after it was written.
//! Corruption refuses to open ([`WalOpenError::Corrupt`]) with the file, the offset and the
//! command that shows the rest (`dtx wal verify DIR`, see [`verify`]): the log never
//! truncates what it cannot prove was never acknowledged.
//!
//! Identity: every file header names the cluster id and node id of [`WalOptions`] and the
//! number in the file's name. A file copied from another node or cluster, or renamed, is
//! refused at open ([`WalOpenError::Foreign`]).
//!
//! # Group commit
//! The event loop hands each `Output::Persist` to the writer thread through a bounded
//! channel. The thread takes everything queued, writes it as one batch with one
//! `write_all`, calls `sync_data` once and reports the highest token durable. Whatever
//! arrives while that fsync runs waits in the channel and goes out with the next one.
//!
//! # Preallocation
//! A segment is filled with zeros ahead of its batches, [`PREALLOCATE_BYTES`] at a time,
//! and batches overwrite those zeros in place. An `fdatasync` of a file that grew must also
//! write its inode (new size, newly allocated blocks); one that only overwrote allocated,
//! initialized blocks writes just the data, and on this machine's ext4 it takes about 30 %
//! less time (PostgreSQL zero-fills its WAL segments for the same reason). The zeros after
//! the last batch read as the end of the log; they are also what makes an unwritten
//! sector recognisable.
//!
//! # Where each part lives
//! `options.rs` ([`WalOptions`]), `error.rs` (the errors of open, append, the writer
//! thread and a checkpoint), `directory.rs` (file names, listing, durable renames),
//! `recovery.rs` (reading the checkpoint and segments at open, cutting a torn tail),
//! `writer.rs` (the writer thread: group commit, preallocation, segment rotation),
//! `checkpoint.rs` (the background checkpoint job); the byte layout and the tail rule in
//! [`format`].

mod checkpoint;
pub mod compact;
mod directory;
mod error;
pub mod format;
mod options;
mod recovery;
pub mod verify;
mod writer;

pub use error::{
    CheckpointError, Exhausted, WalAppendError, WalFailure, WalOpenError, WalOperation,
};
pub use format::{Classification, CorruptionReason, Damage, FileKind, TailProblem};
pub use options::WalOptions;
pub use recovery::Recovered;

use dtx_protocol::{PersistToken, Record};
use tokio::sync::mpsc;
use writer::Writer;

/// Batches queued for the writer thread at most (backpressure on the event loop).
pub const QUEUED_BATCHES_MAX: usize = 4096;

/// Payload bytes of one group commit at most (the rest waits for the next fsync); also
/// the payload of one checkpoint batch at most.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Zeros written ahead of the batches at a time (at most `segment_bytes_max`). Topping
/// up happens when the writer is idle and less than half a chunk is left, so group
/// commits rarely wait for it.
pub const PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// What the writer thread reports to the event loop.
#[derive(Debug)]
pub enum WalEvent {
    /// Every batch up to this token is durable.
    Durable(PersistToken),
    /// Writing or syncing failed; nothing more will become durable. The node must stop:
    /// after a failed fsync the file's state is unknown.
    Failed(WalFailure),
}

/// One `Output::Persist` on its way to the writer thread.
struct Batch {
    token: PersistToken,
    records: Vec<Record>,
}

/// A handle to the writer thread.
pub struct Wal {
    batches: mpsc::Sender<Batch>,
}

impl Wal {
    /// Opens (or creates) the log: reads the newest checkpoint and the segments after it,
    /// cuts a provably torn tail off the last segment, refuses corruption and foreign
    /// files, removes files a checkpoint superseded, and starts the writer thread on a
    /// fresh segment. Durable tokens and failures arrive on `events`.
    pub fn open(
        options: WalOptions,
        events: mpsc::Sender<WalEvent>,
    ) -> Result<(Wal, Recovered), WalOpenError> {
        let dir = options.dir.clone();
        let (recovered, next_segment) = recovery::recover(&options)?;
        let writer =
            Writer::start(options, next_segment, recovered.next_sequence).map_err(|cause| {
                WalOpenError::Start {
                    dir: dir.clone(),
                    cause,
                }
            })?;
        let (batches, receiver) = mpsc::channel(QUEUED_BATCHES_MAX);
        std::thread::Builder::new()
            .name("dtx-wal".to_string())
            .spawn(move || writer.run(receiver, events))
            .map_err(|cause| WalOpenError::Io { dir, cause })?;
        Ok((Wal { batches }, recovered))
    }

    /// Queues one `Output::Persist` for the next group commit. Waits while
    /// [`QUEUED_BATCHES_MAX`] batches are queued (backpressure).
    pub async fn append(
        &self,
        token: PersistToken,
        records: Vec<Record>,
    ) -> Result<(), WalAppendError> {
        self.batches
            .send(Batch { token, records })
            .await
            .map_err(|_| WalAppendError::Stopped)
    }
}

#[cfg(test)]
mod tests;
