//! Recovery at open: reads the newest checkpoint and the segments after it, cuts a
//! provably torn tail off the newest segment, refuses corruption and foreign files, and
//! removes the files a checkpoint superseded.

use super::directory::{checkpoint_name, list, read_file, segment_name};
use super::error::{Exhausted, WalFailure};
use super::format::{
    scan_file, Classification, ClusterIdTooLong, CorruptionReason, Expectation, FileKind, Finding,
    TailProblem, CLUSTER_ID_BYTES_MAX,
};
use super::{WalOpenError, WalOptions};
use dtx_protocol::Record;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;

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

/// Recovers the log in `options.dir` (see [`super::Wal::open`]); returns what it found and
/// the number of the segment the writer starts.
pub(super) fn recover(options: &WalOptions) -> Result<(Recovered, u64), WalOpenError> {
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
    let live = listing.live_segments();
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
        .ok_or_else(|| WalOpenError::Start {
            dir: dir.clone(),
            cause: WalFailure::Exhausted(Exhausted::Segment),
        })?;
    Ok((recovered, next_segment))
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
