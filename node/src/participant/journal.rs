//! A small durable journal of per-transaction states, shared by the adapters
//! ([`super::tcc`], [`super::compensation`]): what they need to stay idempotent by
//! transaction id across crashes.
//!
//! # Layout
//! A directory holding one append-only file, [`JOURNAL_FILE_NAME`], of text lines
//! `CCCCCCCC {json}\n`: the CRC32C of the JSON text in 8 lowercase hex digits, one space,
//! then one record `{"txn":"t1.2","state":"reserved",...}` saying the transaction's state
//! from then on. Text lines so that an operator can read and grep the file; a checksum
//! because a flipped byte inside JSON often still parses (a digit of a transaction id), and
//! a silently misread record would break idempotency. A lock file, [`LOCK_FILE_NAME`],
//! keeps a second process from opening the same journal.
//!
//! # Appends
//! [`Journal::record`] writes one line with one `write_all` and returns only after
//! `sync_data` returned, and the next append starts only after that (the journal is
//! `&mut`): at most the last line of the file was never acknowledged. A failed write or
//! fsync leaves the file in an unknown state, so the journal refuses every later append
//! ([`JournalRecordError::Broken`]) until it is opened again, which reads what the disk
//! holds.
//!
//! # Torn tail or damage
//! Open reads every line. A crash in the middle of an append leaves evidence in the last
//! line: a process crash cuts it short (no trailing newline); a power loss keeps any
//! subset of the unsynced sectors, and a sector that never reached the disk reads as zeros
//! (or lies past the end of the file). A record never contains a NUL byte (JSON escapes
//! it). So a bad last line with no newline or with a NUL byte is a torn append, never
//! acknowledged: it is cut (the file is truncated to the last good line and synced). Any
//! other bad line, including a complete last line whose checksum fails (a flipped byte,
//! not a crash), refuses to open with [`JournalOpenError::Damaged`] naming the file and
//! the byte offset: the journal never drops what it cannot prove was never acknowledged.
//!
//! # Compaction
//! After an append that takes the file past a threshold (twice the size of the last
//! compacted file, at least [`JournalOptions::compaction_bytes_min`]), the journal writes
//! one line per remembered transaction to [`TEMPORARY_FILE_NAME`], syncs it, renames it
//! over the journal and syncs the directory. A crash before the rename leaves the old file
//! (the temporary one is removed at open); after it, the new one, which holds the same
//! states. A failure after the rename breaks the journal (as a failed append does).
//!
//! # What is remembered, and the bound
//! Every transaction not in a final state (see [`JournalState::is_final`]) is kept; there
//! are at most [`JournalOptions::open_max`] of them, and a record that would start one more
//! fails with [`JournalRecordError::Full`] (backpressure: the adapter refuses the prepare).
//! Transactions in a final state are remembered so that a repeated or late call is
//! answered the same (a late prepare after a rollback is refused, not reserved): the
//! latest [`JournalOptions::finished_remembered_max`] of them, in the order they reached
//! their final state. Past the bound the oldest is forgotten (counted in
//! [`Journal::forgotten_total`]); a call about a forgotten transaction is treated as one
//! about an unknown transaction: a duplicate prepare arriving after its transaction was
//! forgotten would act again. Set the bound above the number of transactions that finish
//! during the longest time a duplicate or late call can still arrive (the data node asks
//! prepare at most once per incarnation and retries for seconds, so the default of
//! 100,000 covers minutes at thousands of transactions per second).

use dtx_protocol::TxnId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The journal's file inside its directory.
pub const JOURNAL_FILE_NAME: &str = "journal.jsonl";
/// The file a compaction writes before renaming it over the journal.
pub const TEMPORARY_FILE_NAME: &str = "journal.jsonl.tmp";
/// The file locked while a journal is open (one process per journal).
pub const LOCK_FILE_NAME: &str = "journal.lock";

/// Longest line accepted when reading (bytes): a record is a transaction id, a state and at
/// most a refusal reason of [`dtx_protocol::REFUSAL_TEXT_MAX_BYTES`] (escaped).
pub const LINE_BYTES_MAX: usize = 16 * 1024;

/// A transaction's state as a journal keeps it.
pub trait JournalState:
    Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + 'static
{
    /// True once nothing is held for the transaction and no call can change its state
    /// except to another final one: it is remembered only to answer repeated or late calls,
    /// within [`JournalOptions::finished_remembered_max`].
    fn is_final(&self) -> bool;
}

/// The bounds of a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// Most transactions in a non-final state at once; one more is
    /// [`JournalRecordError::Full`].
    pub open_max: usize,
    /// Most transactions in a final state remembered; past it the oldest is forgotten.
    pub finished_remembered_max: usize,
    /// The file is compacted when it passes twice its size after the last compaction, and
    /// at least this size (bytes).
    pub compaction_bytes_min: u64,
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            open_max: 100_000,
            finished_remembered_max: 100_000,
            compaction_bytes_min: 4 * 1024 * 1024,
        }
    }
}

/// Why a journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalOpenError {
    /// Reading, creating, truncating or syncing a file failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another journal (in this or another process) has the directory open.
    #[error("journal {path} is open elsewhere (its lock is held)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A line that a crash cannot explain is bad: refused rather than dropped.
    #[error("journal {path} is damaged at byte {offset}: {detail}")]
    Damaged {
        /// The journal file.
        path: PathBuf,
        /// Where the bad line starts (bytes from the start of the file).
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
}

/// Why a state could not be recorded (nothing was recorded).
#[derive(Debug, thiserror::Error)]
pub enum JournalRecordError {
    /// [`JournalOptions::open_max`] transactions are already open.
    #[error("journal full: {open_max} transactions open")]
    Full {
        /// The bound.
        open_max: usize,
    },
    /// Writing or syncing failed; the journal refuses appends until it is opened again.
    #[error("journal {path}: {detail}")]
    Broken {
        /// The journal file.
        path: PathBuf,
        /// The first failure.
        detail: String,
    },
}

/// One transaction's entry in memory.
#[derive(Clone, Debug)]
struct Entry<S> {
    state: S,
    /// Its place in the finished order, once final.
    finished_sequence: Option<u64>,
}

/// One line of the file.
#[derive(Serialize, Deserialize)]
struct Record<S> {
    txn: String,
    #[serde(flatten)]
    state: S,
}

/// The journal: per-transaction states, durable, bounded. See the module docs.
#[derive(Debug)]
pub struct Journal<S: JournalState> {
    directory: PathBuf,
    path: PathBuf,
    options: JournalOptions,
    file: File,
    /// Held while open; the lock goes with the handle.
    _lock: File,
    file_bytes: u64,
    compacted_bytes: u64,
    entries: BTreeMap<TxnId, Entry<S>>,
    /// Final transactions by the order they became final (oldest first).
    finished_order: BTreeMap<u64, TxnId>,
    finished_sequence_next: u64,
    open_count: usize,
    forgotten_total: u64,
    torn_bytes_cut: u64,
    broken: Option<String>,
}

impl<S: JournalState> Journal<S> {
    /// Opens (or creates) the journal in `directory`: cuts a torn last line, refuses a
    /// damaged one, removes a compaction's leftover temporary file.
    pub fn open(directory: &Path, options: JournalOptions) -> Result<Journal<S>, JournalOpenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalOpenError::Io { path, source }
        };
        std::fs::create_dir_all(directory).map_err(io(directory))?;
        let lock_path = directory.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalOpenError::Locked { path: lock_path })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(JournalOpenError::Io {
                    path: lock_path,
                    source,
                })
            }
        }
        let temporary = directory.join(TEMPORARY_FILE_NAME);
        match std::fs::remove_file(&temporary) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(&temporary)(error)),
        }
        let path = directory.join(JOURNAL_FILE_NAME);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        let mut journal = Journal {
            directory: directory.to_path_buf(),
            path: path.clone(),
            options,
            file,
            _lock: lock,
            file_bytes: 0,
            compacted_bytes: 0,
            entries: BTreeMap::new(),
            finished_order: BTreeMap::new(),
            finished_sequence_next: 0,
            open_count: 0,
            forgotten_total: 0,
            torn_bytes_cut: 0,
            broken: None,
        };
        let good_bytes = journal.replay(&bytes)?;
        if good_bytes < bytes.len() {
            // A torn append: never acknowledged, so cut it before anything follows it.
            journal.file.set_len(good_bytes as u64).map_err(io(&path))?;
            journal.torn_bytes_cut = (bytes.len() - good_bytes) as u64;
            tracing::warn!(
                path = %path.display(),
                bytes = journal.torn_bytes_cut,
                "participant journal: cut a torn last line"
            );
        }
        // What a process crash left in the page cache unsynced was never acknowledged,
        // but is acted on from now: make it durable first, with the directory entry.
        journal.file.sync_all().map_err(io(&path))?;
        sync_directory(directory).map_err(io(directory))?;
        journal.file_bytes = good_bytes as u64;
        journal.compacted_bytes = good_bytes as u64;
        Ok(journal)
    }

    /// Applies every good line of `bytes`; returns how many bytes are good (the rest is a
    /// torn last line).
    fn replay(&mut self, bytes: &[u8]) -> Result<usize, JournalOpenError> {
        let mut offset = 0;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            let Some(end) = rest.iter().position(|&byte| byte == b'\n') else {
                // No newline: the last append stopped short.
                return Ok(offset);
            };
            let line = &rest[..end];
            let is_last = offset + end + 1 == bytes.len();
            match parse_line::<S>(line) {
                Ok((txn, state)) => self.apply(txn, state),
                Err(_) if is_last && line.contains(&0) => return Ok(offset),
                Err(detail) => {
                    return Err(JournalOpenError::Damaged {
                        path: self.path.clone(),
                        offset: offset as u64,
                        detail,
                    })
                }
            }
            offset += end + 1;
        }
        Ok(offset)
    }

    /// The state of `txn`, if it is remembered.
    pub fn get(&self, txn: TxnId) -> Option<&S> {
        self.entries.get(&txn).map(|entry| &entry.state)
    }

    /// Every remembered transaction not in a final state, in id order.
    pub fn open_transactions(&self) -> Vec<(TxnId, S)> {
        self.entries
            .iter()
            .filter(|(_, entry)| !entry.state.is_final())
            .map(|(txn, entry)| (*txn, entry.state.clone()))
            .collect()
    }

    /// How many transactions are in a non-final state.
    pub fn open_count(&self) -> usize {
        self.open_count
    }

    /// How many final transactions are remembered.
    pub fn finished_count(&self) -> usize {
        self.finished_order.len()
    }

    /// How many final transactions were forgotten since open (past
    /// [`JournalOptions::finished_remembered_max`]).
    pub fn forgotten_total(&self) -> u64 {
        self.forgotten_total
    }

    /// How many bytes of a torn last line open cut (0 if none).
    pub fn torn_bytes_cut(&self) -> u64 {
        self.torn_bytes_cut
    }

    /// The journal file's size (bytes).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `state` the state of `txn`, durably: returns once the line is synced.
    /// Compacts the file afterwards if it grew past its threshold.
    pub fn record(&mut self, txn: TxnId, state: S) -> Result<(), JournalRecordError> {
        if let Some(detail) = &self.broken {
            return Err(JournalRecordError::Broken {
                path: self.path.clone(),
                detail: detail.clone(),
            });
        }
        let was_open = self
            .entries
            .get(&txn)
            .is_some_and(|entry| !entry.state.is_final());
        if !state.is_final() && !was_open && self.open_count >= self.options.open_max {
            return Err(JournalRecordError::Full {
                open_max: self.options.open_max,
            });
        }
        let line = format_line(txn, &state);
        if let Err(error) = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            return Err(self.break_with(format!("append failed: {error}")));
        }
        self.file_bytes += line.len() as u64;
        self.apply(txn, state);
        let threshold = self
            .options
            .compaction_bytes_min
            .max(self.compacted_bytes.saturating_mul(2));
        if self.file_bytes > threshold {
            // The record is durable whatever happens to the compaction (it is in the old
            // file, synced, and in the new one, synced before the rename); a failure after
            // the rename breaks the journal for the appends that follow.
            let _ = self.compact();
        }
        Ok(())
    }

    /// Marks the journal broken (every later append fails) and says so.
    fn break_with(&mut self, detail: String) -> JournalRecordError {
        tracing::error!(path = %self.path.display(), %detail, "participant journal broken");
        self.broken = Some(detail.clone());
        JournalRecordError::Broken {
            path: self.path.clone(),
            detail,
        }
    }

    /// The in-memory effect of one record (at open and after an append).
    fn apply(&mut self, txn: TxnId, state: S) {
        let previous = self.entries.remove(&txn);
        if let Some(previous) = &previous {
            if !previous.state.is_final() {
                self.open_count -= 1;
            }
            if let Some(sequence) = previous.finished_sequence {
                self.finished_order.remove(&sequence);
            }
        }
        let finished_sequence = if state.is_final() {
            let sequence = self.finished_sequence_next;
            self.finished_sequence_next += 1;
            self.finished_order.insert(sequence, txn);
            Some(sequence)
        } else {
            self.open_count += 1;
            None
        };
        self.entries.insert(
            txn,
            Entry {
                state,
                finished_sequence,
            },
        );
        while self.finished_order.len() > self.options.finished_remembered_max {
            let Some((_, oldest)) = self.finished_order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.forgotten_total += 1;
        }
    }

    /// Rewrites the file as one line per remembered transaction (open ones, then final ones
    /// oldest first, so that a reopen forgets in the same order). See the module docs.
    fn compact(&mut self) -> Result<(), JournalRecordError> {
        let temporary = self.directory.join(TEMPORARY_FILE_NAME);
        let mut bytes = Vec::new();
        for (txn, entry) in &self.entries {
            if !entry.state.is_final() {
                bytes.extend_from_slice(&format_line(*txn, &entry.state));
            }
        }
        for txn in self.finished_order.values() {
            if let Some(entry) = self.entries.get(txn) {
                bytes.extend_from_slice(&format_line(*txn, &entry.state));
            }
        }
        let written = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&temporary)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()?;
                Ok(file)
            });
        let new_file = match written {
            Ok(file) => file,
            Err(error) => {
                // The old file is whole: keep appending to it and try again later.
                tracing::warn!(%error, "participant journal: compaction failed before the rename");
                let _ = std::fs::remove_file(&temporary);
                self.compacted_bytes = self.file_bytes;
                return Ok(());
            }
        };
        if let Err(error) =
            std::fs::rename(&temporary, &self.path).and_then(|()| sync_directory(&self.directory))
        {
            return Err(self.break_with(format!("compaction rename failed: {error}")));
        }
        // Appends go to the end of the new file: the handle's offset is its end.
        self.file = new_file;
        self.file_bytes = bytes.len() as u64;
        self.compacted_bytes = self.file_bytes;
        Ok(())
    }
}

/// One line: checksum, space, JSON, newline.
fn format_line<S: JournalState>(txn: TxnId, state: &S) -> Vec<u8> {
    let record = Record {
        txn: txn.to_string(),
        state: state.clone(),
    };
    // Serializing a struct of strings and a derived enum to JSON cannot fail.
    let json = serde_json::to_vec(&record).unwrap_or_default();
    let mut line = format!("{:08x} ", crc32c::crc32c(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// The transaction and state of one line (without its newline), or what is wrong with it.
fn parse_line<S: JournalState>(line: &[u8]) -> Result<(TxnId, S), String> {
    if line.len() > LINE_BYTES_MAX {
        return Err(format!("line longer than {LINE_BYTES_MAX} bytes"));
    }
    if line.len() < 10 || line[8] != b' ' {
        return Err("not `CHECKSUM JSON`".to_string());
    }
    let checksum_text =
        std::str::from_utf8(&line[..8]).map_err(|_| "checksum is not hex".to_string())?;
    let checksum =
        u32::from_str_radix(checksum_text, 16).map_err(|_| "checksum is not hex".to_string())?;
    let json = &line[9..];
    if crc32c::crc32c(json) != checksum {
        return Err("checksum mismatch".to_string());
    }
    let record: Record<S> =
        serde_json::from_slice(json).map_err(|error| format!("bad record: {error}"))?;
    let txn = record
        .txn
        .parse::<TxnId>()
        .map_err(|error| error.to_string())?;
    Ok((txn, record.state))
}

/// Makes a rename or creation in `directory` durable.
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dtx_protocol::NodeId;

    /// A fresh, empty directory for one test.
    pub(crate) fn test_directory(name: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("dtx-participant-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        directory
    }

    /// A transaction id for tests.
    pub(crate) fn txn(sequence: u64) -> TxnId {
        TxnId {
            client: NodeId(7),
            sequence,
        }
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "state", rename_all = "snake_case")]
    enum TestState {
        Held,
        Done { note: String },
    }

    impl JournalState for TestState {
        fn is_final(&self) -> bool {
            matches!(self, TestState::Done { .. })
        }
    }

    fn done(note: &str) -> TestState {
        TestState::Done {
            note: note.to_string(),
        }
    }

    fn open(directory: &Path, options: JournalOptions) -> Journal<TestState> {
        Journal::open(directory, options).unwrap()
    }

    #[test]
    fn states_survive_reopen() {
        let directory = test_directory("journal-reopen");
        let mut journal = open(&directory, JournalOptions::default());
        journal.record(txn(1), TestState::Held).unwrap();
        journal.record(txn(2), TestState::Held).unwrap();
        journal.record(txn(2), done("x")).unwrap();
        drop(journal);
        let journal = open(&directory, JournalOptions::default());
        assert_eq!(journal.get(txn(1)), Some(&TestState::Held));
        assert_eq!(journal.get(txn(2)), Some(&done("x")));
        assert_eq!(journal.get(txn(3)), None);
        assert_eq!(journal.open_transactions(), vec![(txn(1), TestState::Held)]);
        assert_eq!(journal.torn_bytes_cut(), 0);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let directory = test_directory("journal-lock");
        let journal = open(&directory, JournalOptions::default());
        let second = Journal::<TestState>::open(&directory, JournalOptions::default());
        assert!(matches!(second, Err(JournalOpenError::Locked { .. })));
        drop(journal);
        open(&directory, JournalOptions::default());
    }

    #[test]
    fn a_torn_last_line_without_newline_is_cut_and_appends_continue() {
        let directory = test_directory("journal-torn");
        let mut journal = open(&directory, JournalOptions::default());
        journal.record(txn(1), TestState::Held).unwrap();
        drop(journal);
        let path = directory.join(JOURNAL_FILE_NAME);
        let whole = std::fs::read(&path).unwrap();
        // Half of a second line, as a crash mid-append leaves it.
        let second = format_line(txn(2), &TestState::Held);
        let mut torn = whole.clone();
        torn.extend_from_slice(&second[..second.len() / 2]);
        std::fs::write(&path, &torn).unwrap();
        let mut journal = open(&directory, JournalOptions::default());
        assert_eq!(journal.torn_bytes_cut(), (second.len() / 2) as u64);
        assert_eq!(journal.get(txn(2)), None);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        journal.record(txn(3), TestState::Held).unwrap();
        drop(journal);
        let journal = open(&directory, JournalOptions::default());
        assert_eq!(journal.get(txn(1)), Some(&TestState::Held));
        assert_eq!(journal.get(txn(3)), Some(&TestState::Held));
    }

    #[test]
    fn a_last_line_with_a_sector_of_zeros_is_cut() {
        let directory = test_directory("journal-zeros");
        let mut journal = open(&directory, JournalOptions::default());
        journal.record(txn(1), TestState::Held).unwrap();
        drop(journal);
        let path = directory.join(JOURNAL_FILE_NAME);
        let whole = std::fs::read(&path).unwrap();
        let mut second = format_line(txn(2), &TestState::Held);
        // The start of the line never reached the disk; its end (with the newline) did.
        second[..12].fill(0);
        let mut torn = whole.clone();
        torn.extend_from_slice(&second);
        std::fs::write(&path, &torn).unwrap();
        let journal = open(&directory, JournalOptions::default());
        assert_eq!(journal.torn_bytes_cut(), second.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
    }

    #[test]
    fn a_flipped_byte_before_the_end_is_reported_with_file_and_offset() {
        let directory = test_directory("journal-flip");
        let mut journal = open(&directory, JournalOptions::default());
        journal.record(txn(1), TestState::Held).unwrap();
        journal.record(txn(12), TestState::Held).unwrap();
        journal.record(txn(3), TestState::Held).unwrap();
        drop(journal);
        let path = directory.join(JOURNAL_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let first_line_bytes = bytes.iter().position(|&byte| byte == b'\n').unwrap() + 1;
        // Turn t7.12 into t7.13 in the second line: still valid JSON, still an id.
        let second_line = &bytes[first_line_bytes..];
        let digit = second_line
            .windows(4)
            .position(|window| window == b".12\"")
            .unwrap();
        bytes[first_line_bytes + digit + 2] = b'3';
        std::fs::write(&path, &bytes).unwrap();
        match Journal::<TestState>::open(&directory, JournalOptions::default()) {
            Err(JournalOpenError::Damaged {
                path: damaged,
                offset,
                detail,
            }) => {
                assert_eq!(damaged, path);
                assert_eq!(offset, first_line_bytes as u64);
                assert!(detail.contains("checksum"), "{detail}");
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
        // Nothing was cut: the damaged file is as it was.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_flipped_byte_in_a_complete_last_line_is_damage_not_a_torn_tail() {
        let directory = test_directory("journal-flip-last");
        let mut journal = open(&directory, JournalOptions::default());
        journal.record(txn(1), TestState::Held).unwrap();
        journal.record(txn(2), TestState::Held).unwrap();
        drop(journal);
        let path = directory.join(JOURNAL_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let opened = Journal::<TestState>::open(&directory, JournalOptions::default());
        assert!(
            matches!(opened, Err(JournalOpenError::Damaged { .. })),
            "{opened:?}"
        );
    }

    #[test]
    fn compaction_keeps_every_state_and_bounds_the_file() {
        let directory = test_directory("journal-compact");
        let options = JournalOptions {
            finished_remembered_max: 50,
            compaction_bytes_min: 2_000,
            ..JournalOptions::default()
        };
        let mut journal = open(&directory, options);
        journal.record(txn(1000), TestState::Held).unwrap();
        let mut appended_bytes = 0;
        let mut largest_bytes = 0;
        for sequence in 0..200 {
            for state in [TestState::Held, done("ok")] {
                appended_bytes += format_line(txn(sequence), &state).len() as u64;
                journal.record(txn(sequence), state).unwrap();
                largest_bytes = largest_bytes.max(journal.file_bytes());
            }
        }
        // At most 51 remembered lines (about 2.7 KB) after each compaction, so the file
        // stays under twice that, whatever was appended (about 20 KB).
        assert!(appended_bytes > 18_000, "{appended_bytes}");
        assert!(largest_bytes < 6_000, "{largest_bytes}");
        let written = std::fs::read(directory.join(JOURNAL_FILE_NAME)).unwrap();
        assert_eq!(written.len() as u64, journal.file_bytes());
        drop(journal);
        let journal = open(&directory, options);
        assert_eq!(journal.get(txn(1000)), Some(&TestState::Held));
        for sequence in 150..200 {
            assert_eq!(journal.get(txn(sequence)), Some(&done("ok")), "{sequence}");
        }
        assert_eq!(journal.get(txn(149)), None);
        assert_eq!(journal.finished_count(), 50);
        assert!(!directory.join(TEMPORARY_FILE_NAME).exists());
    }

    #[test]
    fn a_leftover_temporary_file_is_removed_and_ignored() {
        let directory = test_directory("journal-temporary");
        let mut journal = open(&directory, JournalOptions::default());
        journal.record(txn(1), TestState::Held).unwrap();
        drop(journal);
        std::fs::write(directory.join(TEMPORARY_FILE_NAME), b"half a compaction").unwrap();
        let journal = open(&directory, JournalOptions::default());
        assert_eq!(journal.get(txn(1)), Some(&TestState::Held));
        assert!(!directory.join(TEMPORARY_FILE_NAME).exists());
    }

    #[test]
    fn past_the_bound_the_oldest_finished_is_forgotten_in_the_same_order_after_reopen() {
        let directory = test_directory("journal-forget");
        let options = JournalOptions {
            finished_remembered_max: 3,
            compaction_bytes_min: 300,
            ..JournalOptions::default()
        };
        let mut journal = open(&directory, options);
        for sequence in 1..=5 {
            journal.record(txn(sequence), done("ok")).unwrap();
        }
        assert_eq!(journal.finished_count(), 3);
        assert_eq!(journal.forgotten_total(), 2);
        assert_eq!(journal.get(txn(2)), None);
        assert_eq!(journal.get(txn(3)), Some(&done("ok")));
        // Becoming final again moves a transaction to the young end.
        journal.record(txn(3), done("again")).unwrap();
        journal.record(txn(6), done("ok")).unwrap();
        assert_eq!(journal.get(txn(4)), None);
        assert_eq!(journal.get(txn(3)), Some(&done("again")));
        drop(journal);
        let mut journal = open(&directory, options);
        assert_eq!(journal.finished_count(), 3);
        journal.record(txn(7), done("ok")).unwrap();
        assert_eq!(journal.get(txn(5)), None);
        assert_eq!(journal.get(txn(3)), Some(&done("again")));
    }

    #[test]
    fn a_record_past_the_open_bound_is_full_and_changes_nothing() {
        let directory = test_directory("journal-full");
        let options = JournalOptions {
            open_max: 2,
            ..JournalOptions::default()
        };
        let mut journal = open(&directory, options);
        journal.record(txn(1), TestState::Held).unwrap();
        journal.record(txn(2), TestState::Held).unwrap();
        // Re-recording an open one is not a new one.
        journal.record(txn(2), TestState::Held).unwrap();
        let bytes = journal.file_bytes();
        assert!(matches!(
            journal.record(txn(3), TestState::Held),
            Err(JournalRecordError::Full { open_max: 2 })
        ));
        assert_eq!(journal.file_bytes(), bytes);
        assert_eq!(journal.get(txn(3)), None);
        // Finishing one makes room.
        journal.record(txn(1), done("ok")).unwrap();
        journal.record(txn(3), TestState::Held).unwrap();
        assert_eq!(journal.open_count(), 2);
    }
}
