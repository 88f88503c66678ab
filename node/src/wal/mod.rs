//! The write-ahead log: append-only segment files of framed records, group commit on a
//! dedicated thread, torn-tail repair at open, and checkpoints that keep recovery bounded.
//!
//! Layout of the log directory:
//! * `segment-NNNNNNNNNNNNNNNN.log`: records framed by [`dtx_protocol::encode_record`]
//!   (u32 length, u32 CRC32C, CBOR), appended in order; a new segment starts at every open
//!   and whenever the current one passes [`WalOptions::segment_bytes_max`];
//! * `checkpoint-NNNNNNNNNNNNNNNN.log`: the protocol's snapshot (`Node::checkpoint_log`) of
//!   the previous checkpoint plus every segment numbered up to N (see [`compact`]): rows
//!   with their versions, the outcome window, open votes and acceptor state. Its size
//!   follows the data, not the history. Written to a `.tmp` file, fsynced, renamed,
//!   directory fsynced; only then are the segments it covers and the previous checkpoint
//!   deleted. A crash at any point leaves either the old checkpoint with all its segments
//!   or the new one (whose covered segments, if still there, are deleted at open); a
//!   `.tmp` left by a crash never replaced anything and is removed at open.
//!
//! Recovery reads the newest checkpoint and the segments after it. Only the last segment
//! can end in a torn record (a segment is sealed only after its last fsync); that tail is
//! cut. A bad record anywhere else is corruption of acknowledged data, and opening fails
//! with the file and offset rather than silently losing it.
//!
//! Group commit: the event loop hands each `Output::Persist` to the writer thread through
//! a bounded channel. The thread takes everything queued, writes it with one `write_all`,
//! calls `sync_data` once and reports the highest token durable. Whatever arrives while
//! that fsync runs waits in the channel and goes out with the next one.
//!
//! Preallocation: a segment is filled with zeros ahead of its records, [`PREALLOCATE_BYTES`]
//! at a time, and records overwrite those zeros in place. An `fdatasync` of a file that
//! grew must also write its inode (new size, newly allocated blocks); one that only
//! overwrote allocated, initialized blocks writes just the data, and on this machine's
//! ext4 it takes about 30 % less time (PostgreSQL zero-fills its WAL segments for the
//! same reason). The zeros after the last record read as the end of the log: a record's
//! header is never all zero (its length is at least one byte).

pub mod compact;

use dtx_protocol::{decode_log, encode_record, PersistToken, Record};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Batches queued for the writer thread at most (backpressure on the event loop).
pub const QUEUED_BATCHES_MAX: usize = 4096;

/// Bytes written by one group commit at most (the rest waits for the next fsync).
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Zeros written ahead of the records at a time (at most `segment_bytes_max`). Topping
/// up happens when the writer is idle and less than half a chunk is left, so group
/// commits rarely wait for it.
pub const PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// How the log behaves.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The log directory (created if missing).
    pub dir: PathBuf,
    /// A segment past this size is sealed and a new one started.
    pub segment_bytes_max: u64,
    /// Bytes appended since the last checkpoint that trigger the next one.
    pub checkpoint_after_bytes: u64,
    /// Outcomes a checkpoint keeps: must equal the node's `Limits::outcomes_kept_max`
    /// (see [`compact::compact`]).
    pub outcomes_window: usize,
    /// Call `sync_data` (off only for experiments: acknowledged data could be lost).
    pub fsync: bool,
    /// Test hook: at this group commit (1-based), write all but its last bytes and abort the process
    /// before the fsync, leaving a torn tail (models a crash in the middle of group commit).
    pub crash_at_group_commit: Option<u64>,
}

impl WalOptions {
    /// Defaults for a data node's log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> WalOptions {
        WalOptions {
            dir: dir.into(),
            segment_bytes_max: 64 * 1024 * 1024,
            checkpoint_after_bytes: 256 * 1024 * 1024,
            outcomes_window: 1_000_000,
            fsync: true,
            crash_at_group_commit: None,
        }
    }
}

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
    /// A record before the end of the log is bad: acknowledged data would be lost.
    #[error(
        "corrupt log file {file} {problem}; refusing to start (acknowledged data would be lost)"
    )]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong, with the byte offset.
        problem: String,
    },
}

/// Why a batch could not be handed to the writer.
#[derive(Debug, thiserror::Error)]
pub enum WalAppendError {
    /// The writer thread stopped (after an I/O error, reported on the events channel).
    #[error("the log writer has stopped")]
    Stopped,
}

/// What the writer thread reports to the event loop.
#[derive(Debug)]
pub enum WalEvent {
    /// Every batch up to this token is durable.
    Durable(PersistToken),
    /// Writing or syncing failed; nothing more will become durable. The node must stop:
    /// after a failed fsync the file's state is unknown.
    Failed(String),
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The records to hand to `Node::recover`, in order.
    pub records: Vec<Record>,
    /// Bytes cut from the end of the last segment (torn or corrupt tail).
    pub cut_bytes: u64,
    /// Why the tail was cut, if it was.
    pub tail_problem: Option<String>,
    /// Files read.
    pub files_read: usize,
}

struct Batch {
    token: PersistToken,
    records: Vec<Record>,
}

/// A handle to the writer thread.
pub struct Wal {
    batches: mpsc::Sender<Batch>,
}

fn segment_name(number: u64) -> String {
    format!("segment-{number:016}.log")
}

fn checkpoint_name(number: u64) -> String {
    format!("checkpoint-{number:016}.log")
}

fn parse_number(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The files of a log directory, sorted by number.
#[derive(Debug, Default)]
struct Listing {
    checkpoints: Vec<u64>,
    segments: Vec<u64>,
}

fn list(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            // An unfinished checkpoint: it never replaced anything.
            fs::remove_file(dir.join(name))?;
        } else if let Some(number) = parse_number(name, "segment-") {
            listing.segments.push(number);
        } else if let Some(number) = parse_number(name, "checkpoint-") {
            listing.checkpoints.push(number);
        }
    }
    listing.checkpoints.sort();
    listing.segments.sort();
    Ok(listing)
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log: reads the newest checkpoint and the segments after it,
    /// cuts a torn tail off the last segment, removes files a checkpoint superseded, and
    /// starts the writer thread on a fresh segment. Durable tokens and failures arrive on
    /// `events`.
    pub fn open(
        options: WalOptions,
        events: mpsc::Sender<WalEvent>,
    ) -> Result<(Wal, Recovered), WalOpenError> {
        let dir = options.dir.clone();
        let io_error = |cause| WalOpenError::Io {
            dir: dir.clone(),
            cause,
        };
        fs::create_dir_all(&dir).map_err(io_error)?;
        let listing = list(&dir).map_err(io_error)?;
        let mut recovered = Recovered::default();
        let checkpoint = listing.checkpoints.last().copied();
        if let Some(number) = checkpoint {
            let path = dir.join(checkpoint_name(number));
            let bytes = read_file(&path).map_err(io_error)?;
            let contents = decode_log(&bytes);
            if let Some(problem) = contents.tail_problem {
                return Err(WalOpenError::Corrupt {
                    file: path,
                    problem,
                });
            }
            recovered.records.extend(contents.records);
            recovered.files_read += 1;
            for older in &listing.checkpoints[..listing.checkpoints.len() - 1] {
                fs::remove_file(dir.join(checkpoint_name(*older))).map_err(io_error)?;
            }
        }
        let covered = checkpoint.unwrap_or(0);
        let live: Vec<u64> = listing
            .segments
            .iter()
            .copied()
            .filter(|number| checkpoint.is_none() || *number > covered)
            .collect();
        for number in listing
            .segments
            .iter()
            .filter(|number| !live.contains(number))
        {
            fs::remove_file(dir.join(segment_name(*number))).map_err(io_error)?;
        }
        for (index, number) in live.iter().enumerate() {
            let path = dir.join(segment_name(*number));
            let bytes = read_file(&path).map_err(io_error)?;
            let contents = decode_log(&bytes);
            recovered.files_read += 1;
            recovered.records.extend(contents.records);
            if let Some(problem) = contents.tail_problem {
                if index + 1 != live.len() {
                    return Err(WalOpenError::Corrupt {
                        file: path,
                        problem,
                    });
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error)?;
                file.set_len(contents.valid_length_bytes as u64)
                    .map_err(io_error)?;
                file.sync_all().map_err(io_error)?;
                recovered.cut_bytes = (bytes.len() - contents.valid_length_bytes) as u64;
                recovered.tail_problem = Some(problem);
            }
        }
        let next_segment = live.last().copied().unwrap_or(covered).max(covered) + 1;
        let writer = Writer::start(options, next_segment).map_err(io_error)?;
        let (batches, receiver) = mpsc::channel(QUEUED_BATCHES_MAX);
        std::thread::Builder::new()
            .name("dtx-wal".to_string())
            .spawn(move || writer.run(receiver, events))
            .map_err(io_error)?;
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

/// The writer thread's state.
struct Writer {
    options: WalOptions,
    file: File,
    segment: u64,
    /// Bytes of records in the current segment: where the next group commit writes.
    segment_bytes: u64,
    /// Bytes of the current segment already zero-filled (records included).
    allocated: u64,
    bytes_since_checkpoint: u64,
    compacting: Arc<AtomicBool>,
    group_commits: u64,
}

impl Writer {
    fn start(options: WalOptions, segment: u64) -> io::Result<Writer> {
        let file = create_segment(&options.dir, segment)?;
        let mut writer = Writer {
            options,
            file,
            segment,
            segment_bytes: 0,
            allocated: 0,
            bytes_since_checkpoint: 0,
            compacting: Arc::new(AtomicBool::new(false)),
            group_commits: 0,
        };
        writer.preallocate(writer.chunk())?;
        writer.sync()?;
        Ok(writer)
    }

    /// The preallocation step for this log.
    fn chunk(&self) -> u64 {
        PREALLOCATE_BYTES.min(self.options.segment_bytes_max).max(1)
    }

    /// Zero-fills the current segment up to at least `end` (a whole number of chunks);
    /// not synced here.
    fn preallocate(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let chunk = self.chunk();
        let target = end.div_ceil(chunk) * chunk;
        let zeros = vec![0u8; (target - self.allocated).min(64 * 1024) as usize];
        while self.allocated < target {
            let length = (target - self.allocated).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..length], self.allocated)?;
            self.allocated += length as u64;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if self.options.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn run(mut self, mut batches: mpsc::Receiver<Batch>, events: mpsc::Sender<WalEvent>) {
        let mut buffer = Vec::new();
        while let Some(first) = batches.blocking_recv() {
            buffer.clear();
            let mut token = first.token;
            let mut result = encode_batch(&first.records, &mut buffer);
            while result.is_ok() && buffer.len() < GROUP_COMMIT_BYTES_MAX {
                let Ok(more) = batches.try_recv() else { break };
                token = token.max(more.token);
                result = encode_batch(&more.records, &mut buffer);
            }
            let result = result.and_then(|()| self.commit(&buffer));
            let event = match result {
                Ok(()) => WalEvent::Durable(token),
                Err(error) => WalEvent::Failed(error.to_string()),
            };
            let failed = matches!(event, WalEvent::Failed(_));
            if events.blocking_send(event).is_err() || failed {
                return;
            }
            if let Err(error) = self.maybe_roll().and_then(|()| self.top_up(&batches)) {
                let _ = events.blocking_send(WalEvent::Failed(error.to_string()));
                return;
            }
        }
    }

    /// While nothing waits, zero-fills the next chunk once less than half a chunk is left.
    fn top_up(&mut self, batches: &mpsc::Receiver<Batch>) -> io::Result<()> {
        let chunk = self.chunk();
        if self.allocated.saturating_sub(self.segment_bytes) >= chunk / 2 || !batches.is_empty() {
            return Ok(());
        }
        self.preallocate(self.allocated + chunk)?;
        self.sync()
    }

    /// One group commit: one write, one fsync. The write lands in preallocated space
    /// unless the batch outgrew it (then the same fsync also covers the new zeros).
    fn commit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.group_commits += 1;
        let end = self.segment_bytes + bytes.len() as u64;
        self.preallocate(end)?;
        if self.options.crash_at_group_commit == Some(self.group_commits) {
            // Test hook: a crash in the middle of group commit. All but the last 3 bytes
            // reach the file, so the last record is always torn (every record has an
            // 8-byte header).
            let _ = self
                .file
                .write_all_at(&bytes[..bytes.len().saturating_sub(3)], self.segment_bytes);
            std::process::abort();
        }
        self.file.write_all_at(bytes, self.segment_bytes)?;
        self.sync()?;
        self.segment_bytes += bytes.len() as u64;
        self.bytes_since_checkpoint += bytes.len() as u64;
        Ok(())
    }

    /// Seals the segment when it is full or a checkpoint is due, and starts a checkpoint
    /// of everything sealed on a background thread.
    fn maybe_roll(&mut self) -> io::Result<()> {
        let checkpoint_due = self.bytes_since_checkpoint >= self.options.checkpoint_after_bytes
            && !self.compacting.load(Ordering::Acquire);
        if self.segment_bytes < self.options.segment_bytes_max && !checkpoint_due {
            return Ok(());
        }
        let sealed = self.segment;
        self.segment += 1;
        self.file = create_segment(&self.options.dir, self.segment)?;
        self.segment_bytes = 0;
        self.allocated = 0;
        self.preallocate(self.chunk())?;
        self.sync()?;
        if checkpoint_due {
            self.bytes_since_checkpoint = 0;
            self.compacting.store(true, Ordering::Release);
            let job = CheckpointJob {
                dir: self.options.dir.clone(),
                through_segment: sealed,
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
                })?;
        }
        Ok(())
    }
}

fn encode_batch(records: &[Record], buffer: &mut Vec<u8>) -> io::Result<()> {
    for record in records {
        encode_record(record, buffer)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
    }
    Ok(())
}

fn create_segment(dir: &Path, number: u64) -> io::Result<File> {
    // Written at explicit offsets (preallocated zeros ahead), so not in append mode; a
    // leftover file of this number (never the case: numbers only grow) is overwritten.
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join(segment_name(number)))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Compacts the previous checkpoint and the sealed segments into a new checkpoint.
struct CheckpointJob {
    dir: PathBuf,
    through_segment: u64,
    outcomes_window: usize,
}

impl CheckpointJob {
    fn run(&self) -> io::Result<()> {
        let listing = list_without_cleanup(&self.dir)?;
        // The newest checkpoint on disk (a failed job leaves the previous one in place).
        let previous = listing.checkpoints.last().copied();
        let covered: Vec<u64> = listing
            .segments
            .iter()
            .copied()
            .filter(|number| *number <= self.through_segment)
            .filter(|number| previous.is_none_or(|previous| *number > previous))
            .collect();
        let mut paths: Vec<PathBuf> = Vec::new();
        if let Some(previous) = previous {
            paths.push(self.dir.join(checkpoint_name(previous)));
        }
        paths.extend(
            covered
                .iter()
                .map(|number| self.dir.join(segment_name(*number))),
        );
        // Replayed file by file: only one file's records are decoded at a time.
        let mut failure = None;
        let records = paths
            .iter()
            .map_while(|path| match read_whole(path) {
                Ok(records) => Some(records),
                Err(error) => {
                    failure = Some(error);
                    None
                }
            })
            .flatten();
        let compacted = compact::compact(records, self.outcomes_window);
        if let Some(error) = failure {
            return Err(error);
        }
        let mut bytes = Vec::new();
        encode_batch(&compacted, &mut bytes)?;
        let final_path = self.dir.join(checkpoint_name(self.through_segment));
        let temporary = final_path.with_extension("log.tmp");
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, &final_path)?;
        sync_dir(&self.dir)?;
        for number in covered {
            fs::remove_file(self.dir.join(segment_name(number)))?;
        }
        if let Some(previous) = previous {
            fs::remove_file(self.dir.join(checkpoint_name(previous)))?;
        }
        tracing::info!(
            checkpoint = %final_path.display(),
            records = compacted.len(),
            bytes = bytes.len(),
            "checkpoint written"
        );
        Ok(())
    }
}

fn list_without_cleanup(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = parse_number(name, "segment-") {
            listing.segments.push(number);
        } else if let Some(number) = parse_number(name, "checkpoint-") {
            listing.checkpoints.push(number);
        }
    }
    listing.checkpoints.sort();
    listing.segments.sort();
    Ok(listing)
}

/// Reads a sealed file, which must decode completely.
fn read_whole(path: &Path) -> io::Result<Vec<Record>> {
    let contents = decode_log(&read_file(path)?);
    match contents.tail_problem {
        None => Ok(contents.records),
        Some(problem) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {problem}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests;
