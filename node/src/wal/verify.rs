//! `dtx wal verify DIR`: reads every checkpoint and segment of a log directory without
//! changing anything (no cleanup, no cut) and reports, per file, its header, its batches,
//! records and sequence range, and the first problem with its byte offset and what it
//! means: a torn tail (which [`super::Wal::open`] would cut) or corruption (which makes
//! it refuse to start). The rules are the ones `open` applies ([`super::format`]).

use super::directory::{file_name, list_without_cleanup, read_file};
use super::format::{
    scan_file, Classification, Expectation, FileHeader, FileKind, Finding, SECTOR_BYTES,
};
use serde::Serialize;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Bytes a hexdump shows at most (a bound on what an operator's request can read).
pub const HEXDUMP_BYTES_MAX: u64 = 64 * 1024;

/// What `open` does with a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FileRole {
    /// Read at open: the newest checkpoint or a segment after it.
    Live,
    /// The newest segment: the only place a torn tail can be cut.
    LogTail,
    /// Covered by the newest checkpoint: deleted at open without being read.
    Superseded,
}

/// What verification found in one file.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// The file's name.
    pub name: String,
    /// Segment or checkpoint.
    pub kind: FileKind,
    /// The number in its name.
    pub number: u64,
    /// Its length.
    pub size_bytes: u64,
    /// What `open` does with it.
    pub role: FileRole,
    /// Its header, if it decoded.
    pub header: Option<FileHeader>,
    /// Good batches.
    pub batches: u64,
    /// Records in the good batches.
    pub records: u64,
    /// Record bytes in the good batches.
    pub payload_bytes: u64,
    /// Sequence number of the first good batch.
    pub first_sequence: Option<u64>,
    /// Sequence number of the last good batch.
    pub last_sequence: Option<u64>,
    /// The first problem, if any.
    pub problem: Option<Finding>,
    /// Why the file could not be read, if it could not.
    pub read_error: Option<String>,
}

impl FileReport {
    /// Whether `open` would accept this file (a torn tail is cut, a superseded file is
    /// deleted: both are fine).
    pub fn is_healthy(&self) -> bool {
        if self.role == FileRole::Superseded {
            return true;
        }
        self.read_error.is_none()
            && self
                .problem
                .as_ref()
                .is_none_or(|problem| matches!(problem.classification, Classification::TornTail(_)))
    }
}

/// What verification found in a log directory.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// The log directory.
    pub dir: PathBuf,
    /// The cluster id files are checked against: the first live file's (the base of
    /// the log), since the directory itself does not say.
    pub cluster_id: Option<String>,
    /// The node id files are checked against (as `cluster_id`).
    pub node_id: Option<u64>,
    /// Every checkpoint and segment, in the order `open` reads them (superseded first).
    pub files: Vec<FileReport>,
    /// `.tmp` files (unfinished checkpoints or segments, removed at open).
    pub temporaries: Vec<String>,
}

impl VerifyReport {
    /// Whether `open` would start on this directory: no corruption, no foreign file (a
    /// torn tail counts as healthy: it would be cut).
    pub fn is_healthy(&self) -> bool {
        self.files.iter().all(FileReport::is_healthy)
    }

    /// Records `open` would recover (the live files' good batches).
    pub fn live_records(&self) -> u64 {
        self.files
            .iter()
            .filter(|file| file.role != FileRole::Superseded)
            .map(|file| file.records)
            .sum()
    }
}

/// Reads every checkpoint and segment in `dir` and reports what `open` would find,
/// without modifying anything.
pub fn verify(dir: &Path) -> Result<VerifyReport, io::Error> {
    let listing = list_without_cleanup(dir)?;
    let newest_checkpoint = listing.checkpoints.last().copied();
    // (kind, number, role) in the order open reads them, superseded files first.
    let mut files: Vec<(FileKind, u64, FileRole)> = Vec::new();
    for number in &listing.checkpoints {
        let role = if Some(*number) == newest_checkpoint {
            FileRole::Live
        } else {
            FileRole::Superseded
        };
        files.push((FileKind::Checkpoint, *number, role));
    }
    let live_segments = listing.live_segments();
    for number in &listing.segments {
        let role = if live_segments.last() == Some(number) {
            FileRole::LogTail
        } else if live_segments.contains(number) {
            FileRole::Live
        } else {
            FileRole::Superseded
        };
        files.push((FileKind::Segment, *number, role));
    }
    files.sort_by_key(|(kind, number, role)| {
        (
            *role != FileRole::Superseded,
            *kind == FileKind::Segment,
            *number,
        )
    });
    let contents: Vec<(PathBuf, io::Result<Vec<u8>>)> = files
        .iter()
        .map(|(kind, number, _)| {
            let path = dir.join(file_name(*kind, *number));
            let bytes = read_file(&path);
            (path, bytes)
        })
        .collect();
    let reference = files
        .iter()
        .zip(&contents)
        .filter(|((_, _, role), _)| *role != FileRole::Superseded)
        .find_map(|((kind, _, _), (_, bytes))| {
            FileHeader::decode(bytes.as_ref().ok()?, *kind).ok()
        });
    let cluster_id = reference.as_ref().map(|header| header.cluster_id.clone());
    let node_id = reference.as_ref().map(|header| header.node_id);
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        cluster_id: cluster_id.clone(),
        node_id,
        files: Vec::new(),
        temporaries: listing.temporaries,
    };
    // The sequence number the next live segment must start at (unknown after a problem,
    // so that one problem is reported once, not again as a gap at every later file).
    let mut due: Option<u64> = if newest_checkpoint.is_none() {
        Some(1)
    } else {
        None
    };
    for ((kind, number, role), (path, bytes)) in files.into_iter().zip(contents) {
        let name = file_name(kind, number);
        let mut file = FileReport {
            name,
            kind,
            number,
            size_bytes: 0,
            role,
            header: None,
            batches: 0,
            records: 0,
            payload_bytes: 0,
            first_sequence: None,
            last_sequence: None,
            problem: None,
            read_error: None,
        };
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                file.read_error = Some(format!("{}: {error}", path.display()));
                due = None;
                report.files.push(file);
                continue;
            }
        };
        file.size_bytes = bytes.len() as u64;
        let expected = Expectation {
            kind,
            number,
            cluster_id: cluster_id.as_deref().unwrap_or_default(),
            node_id: node_id.unwrap_or_default(),
            log_sequence: if kind == FileKind::Segment && role != FileRole::Superseded {
                due
            } else {
                None
            },
            log_tail: role == FileRole::LogTail,
        };
        let scan = scan_file(&bytes, &expected);
        if role != FileRole::Superseded {
            due = match (&scan.finding, kind, &scan.header) {
                (Some(_), _, _) | (None, _, None) => None,
                (None, FileKind::Checkpoint, Some(header)) => Some(header.log_sequence),
                (None, FileKind::Segment, Some(_)) => Some(scan.next_sequence),
            };
        }
        file.header = scan.header;
        file.batches = scan.batches;
        file.records = scan.records.len() as u64;
        file.payload_bytes = scan.payload_bytes;
        file.first_sequence = scan.sequences.map(|(first, _)| first);
        file.last_sequence = scan.sequences.map(|(_, last)| last);
        file.problem = scan.finding;
        report.files.push(file);
    }
    Ok(report)
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_healthy() {
            "healthy (a torn tail, if any, is cut at the next start)"
        } else {
            "NOT healthy: the node refuses to start on this log"
        };
        writeln!(formatter, "log directory {}: {verdict}", self.dir.display())?;
        match (&self.cluster_id, self.node_id) {
            (Some(cluster_id), Some(node_id)) => writeln!(
                formatter,
                "identity (from the first live file): cluster {cluster_id:?}, node id {node_id}"
            )?,
            _ => writeln!(formatter, "identity: no live file with a readable header")?,
        }
        writeln!(
            formatter,
            "{:<34} {:<10} {:>12} {:>8} {:>9} {:>23}  state",
            "file", "role", "bytes", "batches", "records", "sequences"
        )?;
        for file in &self.files {
            let sequences = match (file.first_sequence, file.last_sequence) {
                (Some(first), Some(last)) => format!("{first}..={last}"),
                _ => "-".to_string(),
            };
            let role = match file.role {
                FileRole::Live => "live",
                FileRole::LogTail => "log tail",
                FileRole::Superseded => "superseded",
            };
            let state = match (&file.read_error, &file.problem) {
                (Some(_), _) => "UNREADABLE",
                (None, None) => "ok",
                (None, Some(problem)) => match problem.classification {
                    Classification::TornTail(_) => "torn tail (cut at start)",
                    Classification::Corruption(_) if file.role == FileRole::Superseded => {
                        "damaged (deleted at start)"
                    }
                    Classification::Corruption(_) => "CORRUPT",
                },
            };
            writeln!(
                formatter,
                "{:<34} {:<10} {:>12} {:>8} {:>9} {:>23}  {state}",
                file.name, role, file.size_bytes, file.batches, file.records, sequences
            )?;
            if let Some(error) = &file.read_error {
                writeln!(formatter, "    cannot read: {error}")?;
            }
            if let Some(problem) = &file.problem {
                writeln!(
                    formatter,
                    "    at byte {}: {}\n    {}",
                    problem.offset_bytes, problem.damage, problem.classification
                )?;
            }
        }
        for name in &self.temporaries {
            writeln!(
                formatter,
                "{name}: unfinished write (never replaced anything; removed at start)"
            )?;
        }
        writeln!(
            formatter,
            "{} records would be recovered from the live files",
            self.live_records()
        )?;
        if !self.is_healthy() {
            writeln!(
                formatter,
                "Acknowledged data is damaged or a file is not this node's. Restore the file \
                 from a backup, or rebuild the node: move the data directory aside and start \
                 it with --reinit (it rejoins without its promises)."
            )?;
        }
        Ok(())
    }
}

/// A hexdump of `path` around `offset_bytes`: `context_bytes` before and after (at most
/// [`HEXDUMP_BYTES_MAX`] in all), 16 bytes a line, the line holding the offset marked.
pub fn hexdump(path: &Path, offset_bytes: u64, context_bytes: u64) -> io::Result<String> {
    let context = context_bytes.min(HEXDUMP_BYTES_MAX / 2);
    let start = offset_bytes.saturating_sub(context) / 16 * 16;
    let end = offset_bytes.saturating_add(context).saturating_add(1);
    let file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let end = end.min(length);
    let mut window = vec![0u8; end.saturating_sub(start) as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut window, start)?;
    Ok(hexdump_bytes(&window, start, offset_bytes))
}

/// Formats `bytes`, which start at file offset `start`, marking the line with `mark`.
pub fn hexdump_bytes(bytes: &[u8], start: u64, mark: u64) -> String {
    let mut out = String::new();
    for (index, line) in bytes.chunks(16).enumerate() {
        let at = start + index as u64 * 16;
        let marker = if (at..at + 16).contains(&mark) {
            '>'
        } else {
            ' '
        };
        let hex: Vec<String> = line.iter().map(|byte| format!("{byte:02x}")).collect();
        let text: String = line
            .iter()
            .map(|byte| {
                if byte.is_ascii_graphic() || *byte == b' ' {
                    char::from(*byte)
                } else {
                    '.'
                }
            })
            .collect();
        let sector_start = if at.is_multiple_of(SECTOR_BYTES as u64) {
            " (sector)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{marker}{at:>12}  {:<47}  |{text}|{sector_start}\n",
            hex.join(" ")
        ));
    }
    out
}
