//! The log directory: file names, listing, reading a whole file, and the directory fsync
//! that makes a create, rename or delete durable.

use super::error::{WalFailure, WalOperation};
use super::FileKind;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub(super) fn segment_name(number: u64) -> String {
    format!("segment-{number:016}.log")
}

pub(super) fn checkpoint_name(number: u64) -> String {
    format!("checkpoint-{number:016}.log")
}

pub(super) fn parse_number(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The files of a log directory, sorted by number.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub(super) checkpoints: Vec<u64>,
    pub(super) segments: Vec<u64>,
    /// Names of `.tmp` files (unfinished checkpoints or segments).
    pub(super) temporaries: Vec<String>,
}

impl Listing {
    /// The segments the newest checkpoint does not cover (all of them without one), in
    /// order: the ones open reads after the checkpoint.
    pub(super) fn live_segments(&self) -> Vec<u64> {
        let newest_checkpoint = self.checkpoints.last().copied();
        self.segments
            .iter()
            .copied()
            .filter(|number| newest_checkpoint.is_none_or(|covered| *number > covered))
            .collect()
    }
}

pub(super) fn list_without_cleanup(dir: &Path) -> io::Result<Listing> {
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
pub(super) fn list(dir: &Path) -> io::Result<Listing> {
    let mut listing = list_without_cleanup(dir)?;
    for name in listing.temporaries.drain(..) {
        match fs::remove_file(dir.join(name)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(listing)
}

pub(super) fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The name of checkpoint or segment `number`.
pub(super) fn file_name(kind: FileKind, number: u64) -> String {
    match kind {
        FileKind::Segment => segment_name(number),
        FileKind::Checkpoint => checkpoint_name(number),
    }
}

/// Where a new file is written before [`rename_into_place`] makes it `final_path`.
pub(super) fn temporary_path(final_path: &Path) -> PathBuf {
    final_path.with_extension("log.tmp")
}

/// Makes a completely written and synced `temporary` file the file `final_path` of `dir`:
/// renames it into place and fsyncs the directory, so that after a crash the name holds
/// either nothing (or the file it replaced) or the whole new file.
pub(super) fn rename_into_place(
    temporary: &Path,
    final_path: &Path,
    dir: &Path,
) -> Result<(), WalFailure> {
    fs::rename(temporary, final_path).map_err(WalFailure::io(WalOperation::Rename))?;
    sync_dir(dir).map_err(WalFailure::io(WalOperation::DirectoryFsync))
}
