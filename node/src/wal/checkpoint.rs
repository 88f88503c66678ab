//! The background checkpoint job: compacts the previous checkpoint and the sealed segments
//! into a new checkpoint file (see [`super::compact`]), then deletes what it covers.

use super::compact;
use super::directory::{
    checkpoint_name, file_name, list_without_cleanup, read_file, rename_into_place, segment_name,
    temporary_path,
};
use super::error::{CheckpointError, WalFailure, WalOperation};
use super::format::{
    align_up, encode_batch, scan_file, Expectation, FileHeader, FileKind, FORMAT_VERSION,
};
use super::writer::encode_records;
use super::GROUP_COMMIT_BYTES_MAX;
use dtx_protocol::Record;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Compacts the previous checkpoint and the sealed segments into a new checkpoint.
pub(super) struct CheckpointJob {
    pub(super) dir: PathBuf,
    pub(super) cluster_id: String,
    pub(super) node_id: u64,
    pub(super) through_segment: u64,
    /// The sequence number of the first batch after the sealed segments.
    pub(super) log_sequence: u64,
    pub(super) outcomes_window: usize,
}

impl CheckpointJob {
    pub(super) fn run(&self) -> Result<(), CheckpointError> {
        let listing =
            list_without_cleanup(&self.dir).map_err(WalFailure::io(WalOperation::List))?;
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
        let temporary = temporary_path(&final_path);
        let mut file = File::create(&temporary).map_err(WalFailure::io(WalOperation::Create))?;
        file.write_all(&bytes)
            .map_err(WalFailure::io(WalOperation::Write))?;
        file.sync_all()
            .map_err(WalFailure::io(WalOperation::Fsync))?;
        rename_into_place(&temporary, &final_path, &self.dir)?;
        let superseded = covered
            .iter()
            .map(|number| segment_name(*number))
            .chain(previous.map(checkpoint_name));
        for name in superseded {
            fs::remove_file(self.dir.join(name)).map_err(WalFailure::io(WalOperation::Remove))?;
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
    fn encode(&self, records: &[Record]) -> Result<Vec<u8>, WalFailure> {
        let header = FileHeader {
            kind: FileKind::Checkpoint,
            format_version: FORMAT_VERSION,
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            number: self.through_segment,
            log_sequence: self.log_sequence,
        }
        .encode()?;
        let mut bytes = header.to_vec();
        let mut payload = Vec::new();
        let mut sequence = 1u64;
        for (index, record) in records.iter().enumerate() {
            encode_records(std::slice::from_ref(record), &mut payload)?;
            if payload.len() >= GROUP_COMMIT_BYTES_MAX || index + 1 == records.len() {
                encode_batch(sequence, &payload, &mut bytes)?;
                // Fits: the buffer is in memory.
                bytes.resize(align_up(bytes.len() as u64) as usize, 0);
                payload.clear();
                sequence += 1;
            }
        }
        Ok(bytes)
    }

    /// Reads a sealed file, which must check completely.
    fn read_whole(&self, kind: FileKind, number: u64) -> Result<Vec<Record>, CheckpointError> {
        let path = self.dir.join(file_name(kind, number));
        read_sealed(&path, kind, number, &self.cluster_id, self.node_id)
    }
}

/// Reads a sealed file (a checkpoint or a segment before the newest), which must check
/// completely.
pub(super) fn read_sealed(
    path: &Path,
    kind: FileKind,
    number: u64,
    cluster_id: &str,
    node_id: u64,
) -> Result<Vec<Record>, CheckpointError> {
    let bytes = read_file(path).map_err(WalFailure::io(WalOperation::Read))?;
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
        Some(finding) => Err(CheckpointError::Damaged {
            file: path.to_path_buf(),
            offset_bytes: finding.offset_bytes,
            damage: finding.damage,
        }),
    }
}
