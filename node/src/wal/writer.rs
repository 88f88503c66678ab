//! The writer thread: group commit (one batch, one write, one fsync), preallocation of
//! zeros ahead of the batches, and segment rotation that starts a checkpoint when due.

use super::checkpoint::CheckpointJob;
use super::directory::{rename_into_place, segment_name, temporary_path};
use super::error::{Exhausted, WalFailure, WalOperation};
use super::format::{
    align_up, encode_batch, FileHeader, FileKind, FILE_HEADER_BYTES, FORMAT_VERSION,
};
use super::{Batch, WalEvent, WalOptions, GROUP_COMMIT_BYTES_MAX, PREALLOCATE_BYTES};
use dtx_protocol::{encode_record, Record};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The writer thread's state.
pub(super) struct Writer {
    options: WalOptions,
    file: File,
    segment: u64,
    /// Where the next batch starts in the current segment (a sector boundary).
    segment_bytes: u64,
    /// Bytes of the current segment already zero-filled (header and batches included).
    allocated: u64,
    /// The sequence number of the next batch.
    next_sequence: u64,
    /// Record bytes appended since the last checkpoint started.
    bytes_since_checkpoint: u64,
    compacting: Arc<AtomicBool>,
    /// Group commits so far (for the crash test hook).
    #[cfg(feature = "test-hooks")]
    group_commits: u64,
    /// The batch being written (reused).
    framed: Vec<u8>,
}

impl Writer {
    pub(super) fn start(
        options: WalOptions,
        segment: u64,
        next_sequence: u64,
    ) -> Result<Writer, WalFailure> {
        let chunk = chunk(&options);
        let file = create_segment(&options, segment, next_sequence, chunk)?;
        Ok(Writer {
            options,
            file,
            segment,
            segment_bytes: FILE_HEADER_BYTES as u64,
            allocated: chunk,
            next_sequence,
            bytes_since_checkpoint: 0,
            compacting: Arc::new(AtomicBool::new(false)),
            #[cfg(feature = "test-hooks")]
            group_commits: 0,
            framed: Vec::new(),
        })
    }

    /// Zero-fills the current segment up to at least `end` (a whole number of chunks);
    /// not synced here.
    fn preallocate(&mut self, end: u64) -> Result<(), WalFailure> {
        if end <= self.allocated {
            return Ok(());
        }
        let chunk = chunk(&self.options);
        let target = end.div_ceil(chunk) * chunk;
        write_zeros(&self.file, self.allocated, target)?;
        self.allocated = target;
        Ok(())
    }

    fn sync(&self) -> Result<(), WalFailure> {
        if self.options.fsync {
            self.file
                .sync_data()
                .map_err(WalFailure::io(WalOperation::Fsync))?;
        }
        Ok(())
    }

    pub(super) fn run(
        mut self,
        mut batches: mpsc::Receiver<Batch>,
        events: mpsc::Sender<WalEvent>,
    ) {
        let mut payload = Vec::new();
        while let Some(first) = batches.blocking_recv() {
            payload.clear();
            let mut token = first.token;
            let mut result = encode_records(&first.records, &mut payload);
            while result.is_ok() && payload.len() < GROUP_COMMIT_BYTES_MAX {
                let Ok(more) = batches.try_recv() else { break };
                token = token.max(more.token);
                result = encode_records(&more.records, &mut payload);
            }
            let result = result.and_then(|()| self.commit(&payload));
            let event = match result {
                Ok(()) => WalEvent::Durable(token),
                Err(error) => WalEvent::Failed(error),
            };
            let failed = matches!(event, WalEvent::Failed(_));
            if events.blocking_send(event).is_err() || failed {
                return;
            }
            if let Err(error) = self.maybe_roll().and_then(|()| self.top_up(&batches)) {
                let _ = events.blocking_send(WalEvent::Failed(error));
                return;
            }
        }
    }

    /// While nothing waits, zero-fills the next chunk once less than half a chunk is left.
    fn top_up(&mut self, batches: &mpsc::Receiver<Batch>) -> Result<(), WalFailure> {
        let chunk = chunk(&self.options);
        if self.allocated.saturating_sub(self.segment_bytes) >= chunk / 2 || !batches.is_empty() {
            return Ok(());
        }
        self.preallocate(self.allocated + chunk)?;
        self.sync()
    }

    /// One group commit: one batch, one write, one fsync. The write lands in preallocated
    /// space unless the batch outgrew it (then the same fsync also covers the new zeros).
    fn commit(&mut self, payload: &[u8]) -> Result<(), WalFailure> {
        if payload.is_empty() {
            // Nothing to write: every earlier batch is durable already.
            return Ok(());
        }
        self.framed.clear();
        encode_batch(self.next_sequence, payload, &mut self.framed)?;
        let offset = self.segment_bytes;
        let end = offset + self.framed.len() as u64;
        self.preallocate(end)?;
        #[cfg(feature = "test-hooks")]
        self.crash_if_asked(offset);
        self.file
            .write_all_at(&self.framed, offset)
            .map_err(WalFailure::io(WalOperation::Write))?;
        self.sync()?;
        self.segment_bytes = align_up(end);
        self.next_sequence = self
            .next_sequence
            .checked_add(1)
            .ok_or(WalFailure::Exhausted(Exhausted::BatchSequence))?;
        self.bytes_since_checkpoint += payload.len() as u64;
        Ok(())
    }

    /// Seals the segment when it is full or a checkpoint is due, and starts a checkpoint
    /// of everything sealed on a background thread.
    fn maybe_roll(&mut self) -> Result<(), WalFailure> {
        let checkpoint_due = self.bytes_since_checkpoint >= self.options.checkpoint_after_bytes
            && !self.compacting.load(Ordering::Acquire);
        if self.segment_bytes < self.options.segment_bytes_max && !checkpoint_due {
            return Ok(());
        }
        let sealed = self.segment;
        let next = sealed
            .checked_add(1)
            .ok_or(WalFailure::Exhausted(Exhausted::Segment))?;
        let chunk = chunk(&self.options);
        self.file = create_segment(&self.options, next, self.next_sequence, chunk)?;
        self.segment = next;
        self.segment_bytes = FILE_HEADER_BYTES as u64;
        self.allocated = chunk;
        if checkpoint_due {
            self.bytes_since_checkpoint = 0;
            self.compacting.store(true, Ordering::Release);
            let job = CheckpointJob {
                dir: self.options.dir.clone(),
                cluster_id: self.options.cluster_id.clone(),
                node_id: self.options.node_id,
                through_segment: sealed,
                log_sequence: self.next_sequence,
                outcomes_window: self.options.outcomes_window,
            };
            let compacting = Arc::clone(&self.compacting);
            std::thread::Builder::new()
                .name("dtx-checkpoint".to_string())
                .spawn(move || {
                    if let Err(error) = job.run() {
                        tracing::error!(%error, "checkpoint failed; the log keeps its segments");
                    }
                    compacting.store(false, Ordering::Release);
                })
                .map_err(WalFailure::io(WalOperation::SpawnCheckpoint))?;
        }
        Ok(())
    }

    /// Test hook ([`WalOptions::crash_at_group_commit`]): at that group commit, a crash
    /// in the middle of a write that grew the file. All but the batch's last 3 bytes reach
    /// the file and the file ends there: the batch runs past the end of the file,
    /// provably never acknowledged.
    #[cfg(feature = "test-hooks")]
    fn crash_if_asked(&mut self, offset: u64) {
        self.group_commits += 1;
        if self.options.crash_at_group_commit == Some(self.group_commits) {
            let kept = self.framed.len().saturating_sub(3);
            let _ = self.file.write_all_at(&self.framed[..kept], offset);
            let _ = self.file.set_len(offset + kept as u64);
            std::process::abort();
        }
    }
}

/// The preallocation step for a log: at least the file header, so that a new segment's
/// first chunk holds it.
pub(super) fn chunk(options: &WalOptions) -> u64 {
    PREALLOCATE_BYTES
        .min(options.segment_bytes_max)
        .max(FILE_HEADER_BYTES as u64)
}

/// Writes zeros over `from..to` of `file`, 64 KiB at a time.
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> Result<(), WalFailure> {
    let zeros = vec![0u8; to.saturating_sub(from).min(64 * 1024) as usize];
    let mut at = from;
    while at < to {
        let length = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..length], at)
            .map_err(WalFailure::io(WalOperation::Preallocate))?;
        at += length as u64;
    }
    Ok(())
}

/// Appends the frames of `records` to `buffer`.
pub(super) fn encode_records(records: &[Record], buffer: &mut Vec<u8>) -> Result<(), WalFailure> {
    for record in records {
        encode_record(record, buffer)?;
    }
    Ok(())
}

/// Creates segment `number` whose first batch will carry `log_sequence`: header and
/// `allocated` bytes of zeros written to a `.tmp`, synced, renamed into place, directory
/// synced. A segment file therefore always has a complete header.
pub(super) fn create_segment(
    options: &WalOptions,
    number: u64,
    log_sequence: u64,
    allocated: u64,
) -> Result<File, WalFailure> {
    let header = FileHeader {
        kind: FileKind::Segment,
        format_version: FORMAT_VERSION,
        cluster_id: options.cluster_id.clone(),
        node_id: options.node_id,
        number,
        log_sequence,
    }
    .encode()?;
    let final_path = options.dir.join(segment_name(number));
    let temporary = temporary_path(&final_path);
    // Written at explicit offsets (preallocated zeros ahead), so not in append mode.
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&temporary)
        .map_err(WalFailure::io(WalOperation::Create))?;
    file.write_all_at(&header, 0)
        .map_err(WalFailure::io(WalOperation::Write))?;
    write_zeros(&file, header.len() as u64, allocated)?;
    file.sync_all()
        .map_err(WalFailure::io(WalOperation::Fsync))?;
    rename_into_place(&temporary, &final_path, &options.dir)?;
    Ok(file)
}
