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

pub mod compact;
pub mod format;
pub mod verify;

pub use format::{Classification, CorruptionReason, Damage, FileKind, TailProblem};

use dtx_protocol::{encode_record, PersistToken, Record};
use format::{
    align_up, encode_batch, scan_file, ClusterIdTooLong, Expectation, FileHeader, Finding,
    CLUSTER_ID_BYTES_MAX, FILE_HEADER_BYTES, FORMAT_VERSION,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Batches queued for the writer thread at most (backpressure on the event loop).
pub const QUEUED_BATCHES_MAX: usize = 4096;

/// Payload bytes of one group commit at most (the rest waits for the next fsync); also
/// the payload of one checkpoint batch at most.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Zeros written ahead of the batches at a time (at most `segment_bytes_max`). Topping
/// up happens when the writer is idle and less than half a chunk is left, so group
/// commits rarely wait for it.
pub const PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// How the log behaves.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The log directory (created if missing).
    pub dir: PathBuf,
    /// The cluster this log belongs to, written into every file header and checked at
    /// open (at most [`format::CLUSTER_ID_BYTES_MAX`] bytes).
    pub cluster_id: String,
    /// The node this log belongs to, written into every file header and checked at open.
    pub node_id: u64,
    /// A segment past this size is sealed and a new one started.
    pub segment_bytes_max: u64,
    /// Record bytes appended since the last checkpoint (padding and headers not counted)
    /// that trigger the next one.
    pub checkpoint_after_bytes: u64,
    /// Outcomes a checkpoint keeps: must equal the node's `Limits::outcomes_kept_max`
    /// (see [`compact::compact`]).
    pub outcomes_window: usize,
    /// Call `sync_data` (off only for experiments: acknowledged data could be lost).
    pub fsync: bool,
    /// Test hook: at this group commit (1-based), write all but the batch's last 3 bytes,
    /// cut the file there and abort the process before the fsync: a batch that grew the
    /// file and lost its end in a crash, a provable torn tail.
    pub crash_at_group_commit: Option<u64>,
}

impl WalOptions {
    /// Defaults for the log in `dir` of node `node_id` in cluster `cluster_id`.
    pub fn new(dir: impl Into<PathBuf>, cluster_id: impl Into<String>, node_id: u64) -> WalOptions {
        WalOptions {
            dir: dir.into(),
            cluster_id: cluster_id.into(),
            node_id,
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
    /// Bytes cut from the end of the last segment (a provably torn tail).
    pub cut_bytes: u64,
    /// Why the tail was cut, if it was: the evidence that it was never acknowledged.
    pub tail_problem: Option<TailProblem>,
    /// The segment the tail was cut from, if one was.
    pub cut_file: Option<PathBuf>,
    /// Files read.
    pub files_read: usize,
    /// The sequence number the next batch carries.
    pub next_sequence: u64,
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
    /// Names of `.tmp` files (unfinished checkpoints or segments).
    temporaries: Vec<String>,
}

fn list_without_cleanup(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            listing.temporaries.push(name.to_string());
        } else if let Some(number) = parse_number(name, "segment-") {
            listing.segments.push(number);
        } else if let Some(number) = parse_number(name, "checkpoint-") {
            listing.checkpoints.push(number);
        }
    }
    listing.checkpoints.sort();
    listing.segments.sort();
    listing.temporaries.sort();
    Ok(listing)
}

/// Lists the directory and removes `.tmp` files: an unfinished checkpoint or segment never
/// replaced anything.
fn list(dir: &Path) -> io::Result<Listing> {
    let mut listing = list_without_cleanup(dir)?;
    for name in listing.temporaries.drain(..) {
        match fs::remove_file(dir.join(name)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
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

fn exhausted(what: &str) -> io::Error {
    io::Error::other(format!("{what} exhausted (u64)"))
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
        let io_error = |cause| WalOpenError::Io {
            dir: dir.clone(),
            cause,
        };
        if options.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(WalOpenError::ClusterIdTooLong {
                dir,
                cause: ClusterIdTooLong {
                    length_bytes: options.cluster_id.len(),
                },
            });
        }
        fs::create_dir_all(&dir).map_err(io_error)?;
        let listing = list(&dir).map_err(io_error)?;
        let mut recovered = Recovered {
            next_sequence: 1,
            ..Recovered::default()
        };
        let checkpoint = listing.checkpoints.last().copied();
        let mut expected = Expectation {
            kind: FileKind::Checkpoint,
            number: 0,
            cluster_id: &options.cluster_id,
            node_id: options.node_id,
            log_sequence: None,
            log_tail: false,
        };
        if let Some(number) = checkpoint {
            let path = dir.join(checkpoint_name(number));
            let bytes = read_file(&path).map_err(io_error)?;
            expected.number = number;
            let scan = scan_file(&bytes, &expected);
            if let Some(finding) = scan.finding {
                return Err(refusal(path, finding));
            }
            recovered.next_sequence = scan
                .header
                .map_or(recovered.next_sequence, |header| header.log_sequence);
            recovered.records.extend(scan.records);
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
            expected.kind = FileKind::Segment;
            expected.number = *number;
            expected.log_sequence = Some(recovered.next_sequence);
            expected.log_tail = index + 1 == live.len();
            let scan = scan_file(&bytes, &expected);
            recovered.files_read += 1;
            recovered.records.extend(scan.records);
            recovered.next_sequence = scan.next_sequence;
            match scan.finding {
                None => {}
                Some(Finding {
                    classification: Classification::TornTail(problem),
                    ..
                }) => {
                    let cut = problem.offset_bytes();
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_error)?;
                    file.set_len(cut).map_err(io_error)?;
                    file.sync_all().map_err(io_error)?;
                    recovered.cut_bytes = (bytes.len() as u64).saturating_sub(cut);
                    recovered.tail_problem = Some(problem);
                    recovered.cut_file = Some(path);
                }
                Some(finding) => return Err(refusal(path, finding)),
            }
        }
        let next_segment = live
            .last()
            .copied()
            .unwrap_or(covered)
            .max(covered)
            .checked_add(1)
            .ok_or_else(|| io_error(exhausted("segment numbers")))?;
        let writer =
            Writer::start(options, next_segment, recovered.next_sequence).map_err(io_error)?;
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

/// The log directory of a log file (for the hint in errors).
fn log_dir(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("."))
}

/// The error for a problem found at open that is not a torn tail.
fn refusal(file: PathBuf, finding: Finding) -> WalOpenError {
    let reason = match finding.classification {
        Classification::Corruption(reason) => reason,
        // Not reached: a torn tail is cut, not refused. Refusing is the safe side.
        Classification::TornTail(_) => CorruptionReason::NotTheLogTail,
    };
    if reason == CorruptionReason::ForeignFile {
        return WalOpenError::Foreign {
            file,
            damage: finding.damage,
        };
    }
    WalOpenError::Corrupt {
        file,
        offset_bytes: finding.offset_bytes,
        damage: finding.damage,
        reason,
    }
}

/// The writer thread's state.
struct Writer {
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
    group_commits: u64,
    /// The batch being written (reused).
    framed: Vec<u8>,
}

impl Writer {
    fn start(options: WalOptions, segment: u64, next_sequence: u64) -> io::Result<Writer> {
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
            group_commits: 0,
            framed: Vec::new(),
        })
    }

    /// Zero-fills the current segment up to at least `end` (a whole number of chunks);
    /// not synced here.
    fn preallocate(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let chunk = chunk(&self.options);
        let target = end.div_ceil(chunk) * chunk;
        write_zeros(&self.file, self.allocated, target)?;
        self.allocated = target;
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if self.options.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn run(mut self, mut batches: mpsc::Receiver<Batch>, events: mpsc::Sender<WalEvent>) {
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
        let chunk = chunk(&self.options);
        if self.allocated.saturating_sub(self.segment_bytes) >= chunk / 2 || !batches.is_empty() {
            return Ok(());
        }
        self.preallocate(self.allocated + chunk)?;
        self.sync()
    }

    /// One group commit: one batch, one write, one fsync. The write lands in preallocated
    /// space unless the batch outgrew it (then the same fsync also covers the new zeros).
    fn commit(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.is_empty() {
            // Nothing to write: every earlier batch is durable already.
            return Ok(());
        }
        self.group_commits += 1;
        self.framed.clear();
        encode_batch(self.next_sequence, payload, &mut self.framed)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        let offset = self.segment_bytes;
        let end = offset + self.framed.len() as u64;
        self.preallocate(end)?;
        if self.options.crash_at_group_commit == Some(self.group_commits) {
            // Test hook: a crash in the middle of a group commit that grew the file. All
            // but the batch's last 3 bytes reach the file and the file ends there: the
            // batch runs past the end of the file, provably never acknowledged.
            let kept = self.framed.len().saturating_sub(3);
            let _ = self.file.write_all_at(&self.framed[..kept], offset);
            let _ = self.file.set_len(offset + kept as u64);
            std::process::abort();
        }
        self.file.write_all_at(&self.framed, offset)?;
        self.sync()?;
        self.segment_bytes = align_up(end);
        self.next_sequence = self
            .next_sequence
            .checked_add(1)
            .ok_or_else(|| exhausted("batch sequence numbers"))?;
        self.bytes_since_checkpoint += payload.len() as u64;
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
        let next = sealed
            .checked_add(1)
            .ok_or_else(|| exhausted("segment numbers"))?;
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
                })?;
        }
        Ok(())
    }
}

/// The preallocation step for a log: at least the file header, so that a new segment's
/// first chunk holds it.
fn chunk(options: &WalOptions) -> u64 {
    PREALLOCATE_BYTES
        .min(options.segment_bytes_max)
        .max(FILE_HEADER_BYTES as u64)
}

fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; to.saturating_sub(from).min(64 * 1024) as usize];
    let mut at = from;
    while at < to {
        let length = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..length], at)?;
        at += length as u64;
    }
    Ok(())
}

fn encode_records(records: &[Record], buffer: &mut Vec<u8>) -> io::Result<()> {
    for record in records {
        encode_record(record, buffer)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
    }
    Ok(())
}

fn header_bytes(header: &FileHeader) -> io::Result<[u8; FILE_HEADER_BYTES]> {
    header
        .encode()
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))
}

/// Creates segment `number` whose first batch will carry `log_sequence`: header and
/// `allocated` bytes of zeros written to a `.tmp`, synced, renamed into place, directory
/// synced. A segment file therefore always has a complete header.
fn create_segment(
    options: &WalOptions,
    number: u64,
    log_sequence: u64,
    allocated: u64,
) -> io::Result<File> {
    let header = header_bytes(&FileHeader {
        kind: FileKind::Segment,
        format_version: FORMAT_VERSION,
        cluster_id: options.cluster_id.clone(),
        node_id: options.node_id,
        number,
        log_sequence,
    })?;
    let final_path = options.dir.join(segment_name(number));
    let temporary = final_path.with_extension("log.tmp");
    // Written at explicit offsets (preallocated zeros ahead), so not in append mode.
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&temporary)?;
    file.write_all_at(&header, 0)?;
    write_zeros(&file, header.len() as u64, allocated)?;
    file.sync_all()?;
    fs::rename(&temporary, &final_path)?;
    sync_dir(&options.dir)?;
    Ok(file)
}

/// Compacts the previous checkpoint and the sealed segments into a new checkpoint.
struct CheckpointJob {
    dir: PathBuf,
    cluster_id: String,
    node_id: u64,
    through_segment: u64,
    /// The sequence number of the first batch after the sealed segments.
    log_sequence: u64,
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
        let mut files: Vec<(FileKind, u64)> = Vec::new();
        if let Some(previous) = previous {
            files.push((FileKind::Checkpoint, previous));
        }
        files.extend(covered.iter().map(|number| (FileKind::Segment, *number)));
        // Replayed file by file: only one file's records are decoded at a time.
        let mut failure = None;
        let records = files
            .iter()
            .map_while(|(kind, number)| match self.read_whole(*kind, *number) {
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
        let bytes = self.encode(&compacted)?;
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

    /// The checkpoint file: header, then the records in batches of at most
    /// [`GROUP_COMMIT_BYTES_MAX`] payload bytes, numbered from 1, each padded to a sector.
    fn encode(&self, records: &[Record]) -> io::Result<Vec<u8>> {
        let header = header_bytes(&FileHeader {
            kind: FileKind::Checkpoint,
            format_version: FORMAT_VERSION,
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            number: self.through_segment,
            log_sequence: self.log_sequence,
        })?;
        let mut bytes = header.to_vec();
        let mut payload = Vec::new();
        let mut sequence = 1u64;
        for (index, record) in records.iter().enumerate() {
            encode_records(std::slice::from_ref(record), &mut payload)?;
            if payload.len() >= GROUP_COMMIT_BYTES_MAX || index + 1 == records.len() {
                encode_batch(sequence, &payload, &mut bytes)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                // Fits: the buffer is in memory.
                bytes.resize(align_up(bytes.len() as u64) as usize, 0);
                payload.clear();
                sequence += 1;
            }
        }
        Ok(bytes)
    }

    /// Reads a sealed file, which must check completely.
    fn read_whole(&self, kind: FileKind, number: u64) -> io::Result<Vec<Record>> {
        let path = self.dir.join(match kind {
            FileKind::Segment => segment_name(number),
            FileKind::Checkpoint => checkpoint_name(number),
        });
        read_sealed(&path, kind, number, &self.cluster_id, self.node_id)
    }
}

/// Reads a sealed file (a checkpoint or a segment before the newest), which must check
/// completely.
fn read_sealed(
    path: &Path,
    kind: FileKind,
    number: u64,
    cluster_id: &str,
    node_id: u64,
) -> io::Result<Vec<Record>> {
    let bytes = read_file(path)?;
    let scan = scan_file(
        &bytes,
        &Expectation {
            kind,
            number,
            cluster_id,
            node_id,
            log_sequence: None,
            log_tail: false,
        },
    );
    match scan.finding {
        None => Ok(scan.records),
        Some(finding) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} at byte {}: {}",
                path.display(),
                finding.offset_bytes,
                finding.damage
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
