//! The data directory: a durable identity (which cluster and node its contents belong to)
//! and a lock that keeps a second process out.
//!
//! Why: a node that starts on an empty directory has forgotten every promise it made as an
//! acceptor, and a node that starts on another node's directory serves that node's data as
//! its own. Both look like a clean start. `IDENTITY` makes them a refusal:
//! * [`OpenMode::Existing`] (a plain `dtx node`) requires the identity of this node;
//! * [`OpenMode::New`] (first start) requires an empty directory and writes the identity;
//! * [`OpenMode::Reinit`] (a deliberate fresh start after data loss) sets whatever is there
//!   aside in `lost+found-<unix time>/` (never deleting it), writes a new identity with
//!   `reinit_count + 1`, and tells the caller, which must then keep the node out of acceptor
//!   duty until it cannot contradict a promise it forgot.
//!
//! `LOCK` is held with an exclusive `flock` (`File::try_lock`) for the life of the
//! [`DataDir`]; the kernel releases it when the process dies, so a stale lock file never
//! blocks a restart. It holds the holder's pid, for the message a second process gets.

use crate::wal::verify;
use serde::{Deserialize, Serialize};
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "IDENTITY";

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// The log directory's name in the data directory.
pub const WAL_DIR: &str = "wal";

/// The identity file format this build writes and reads.
pub const IDENTITY_FORMAT_VERSION: u32 = 1;

/// Bytes of an identity file read at most (it is a few hundred: a bound on a hostile file).
pub const IDENTITY_BYTES_MAX: u64 = 64 * 1024;

/// Attempts at a fresh `lost+found-<time>[-n]` name (two reinits within a second).
pub const LOST_AND_FOUND_ATTEMPTS_MAX: u32 = 100;

/// The prefix of the directories a reinit moves old contents into.
pub const LOST_AND_FOUND_PREFIX: &str = "lost+found-";

/// What a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The format of the identity file.
    pub format_version: u32,
    /// The cluster.
    pub cluster_id: String,
    /// The node's name.
    pub node_name: String,
    /// The node's protocol id.
    pub node_id: u64,
    /// The node's libp2p peer id (base58).
    pub peer_id: String,
    /// When the directory was initialized (or last reinitialized), unix seconds.
    pub created_at_unix_seconds: u64,
    /// How many times the directory was deliberately reinitialized after data loss.
    pub reinit_count: u64,
}

impl Identity {
    /// The identity a node expects: `created_at_unix_seconds` and `reinit_count` are
    /// filled in when it is written and not compared.
    pub fn new(
        cluster_id: impl Into<String>,
        node_name: impl Into<String>,
        node_id: u64,
        peer_id: impl Into<String>,
    ) -> Identity {
        Identity {
            format_version: IDENTITY_FORMAT_VERSION,
            cluster_id: cluster_id.into(),
            node_name: node_name.into(),
            node_id,
            peer_id: peer_id.into(),
            created_at_unix_seconds: 0,
            reinit_count: 0,
        }
    }

    /// The first field in which `self` (found) differs from `expected`, if any:
    /// (field, expected, found).
    fn mismatch(&self, expected: &Identity) -> Option<(&'static str, String, String)> {
        let fields = [
            ("cluster id", &expected.cluster_id, &self.cluster_id),
            ("node name", &expected.node_name, &self.node_name),
            ("peer id", &expected.peer_id, &self.peer_id),
        ];
        if let Some((field, wanted, found)) = fields.into_iter().find(|(_, a, b)| a != b) {
            return Some((field, wanted.clone(), found.clone()));
        }
        (self.node_id != expected.node_id).then(|| {
            (
                "node id",
                expected.node_id.to_string(),
                self.node_id.to_string(),
            )
        })
    }
}

/// The identity file: the identity and a CRC32C of its compact JSON encoding.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    identity: Identity,
    crc32c: u32,
}

/// How to open a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// A restart (the default): the directory must hold this node's identity.
    Existing,
    /// A first start: the directory must be empty or missing.
    New,
    /// A deliberate fresh start after data loss: old contents are set aside.
    Reinit,
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The file system refused.
    #[error("data directory: {path}: {cause}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "data directory {dir} is in use by another process ({}): one process per data \
         directory; stop it first", holder.map_or("pid unknown".to_string(), |pid| format!("pid {pid}"))
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it into the lock file.
        holder: Option<u32>,
    },
    /// No identity: a first start, a wiped directory, or one of an older build.
    #[error("{}", no_identity_message(dir, *holds_log))]
    NoIdentity {
        /// The directory.
        dir: PathBuf,
        /// Whether a log directory is there (an older build's or a damaged directory).
        holds_log: bool,
    },
    /// The identity is another node's or cluster's.
    #[error(
        "data directory {dir} belongs to another node or cluster: its {field} is {found:?}, \
         this node's is {expected:?}; point --data-dir at this node's own directory (or \
         start with --reinit to set this one aside)"
    )]
    Foreign {
        /// The directory.
        dir: PathBuf,
        /// The field that differs.
        field: &'static str,
        /// This node's value.
        expected: String,
        /// The directory's.
        found: String,
    },
    /// The identity file cannot be read back.
    #[error(
        "identity file {path} is damaged ({reason}); restore it, or start with --reinit to set \
         the directory aside and rejoin empty"
    )]
    CorruptIdentity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `New` on a directory that holds something.
    #[error(
        "data directory {dir} is not empty (holds {entries}); --new is for a first start: \
         start without it to use this directory, or with --reinit to set its contents aside"
    )]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
        /// Some of what it holds.
        entries: String,
    },
    /// `Reinit` on a directory whose data is intact.
    #[error(
        "refusing --reinit of {dir}: it holds this node's identity and a healthy log of \
         {records} records, so nothing was lost; start without --reinit"
    )]
    NothingLost {
        /// The directory.
        dir: PathBuf,
        /// Records in its log.
        records: u64,
    },
}

fn no_identity_message(dir: &Path, holds_log: bool) -> String {
    let situation = if holds_log {
        "holds a log but no IDENTITY file (written by an older build, or damaged)"
    } else {
        "has no IDENTITY file"
    };
    format!(
        "data directory {} {situation}; first start of this node? pass --new; its data lost \
         and it must rejoin empty? pass --reinit",
        dir.display()
    )
}

/// An open data directory: its identity, and the lock held until this is dropped.
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    identity: Identity,
    reinitialized: bool,
    moved_aside: Option<PathBuf>,
    /// Held for the lock; released by the kernel when closed (or the process dies).
    _lock: File,
}

impl DataDir {
    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log directory inside it.
    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join(WAL_DIR)
    }

    /// The identity it holds.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether this open reinitialized it: the node starts with no history and must not
    /// act as an acceptor on promises it forgot.
    pub fn reinitialized(&self) -> bool {
        self.reinitialized
    }

    /// Where a reinit moved the old contents, if it moved any.
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> DataDirError + '_ {
    move |cause| DataDirError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Opens (locking it) the data directory `dir` of the node `expected` describes, as `mode`
/// says. See the module doc. The log in [`DataDir::wal_dir`] is judged (for
/// [`OpenMode::Reinit`]) as the log of `expected.node_id` in `expected.cluster_id`: pass the
/// same two values as `WalOptions::cluster_id` and `WalOptions::node_id`.
pub fn open(dir: &Path, expected: &Identity, mode: OpenMode) -> Result<DataDir, DataDirError> {
    if mode == OpenMode::Existing && !dir.exists() {
        return Err(DataDirError::NoIdentity {
            dir: dir.to_path_buf(),
            holds_log: false,
        });
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))?;
    let lock = lock(dir)?;
    let found = read_identity(dir);
    let mut data_dir = DataDir {
        dir: dir.to_path_buf(),
        identity: expected.clone(),
        reinitialized: false,
        moved_aside: None,
        _lock: lock,
    };
    match mode {
        OpenMode::Existing => {
            let Some(found) = found? else {
                return Err(DataDirError::NoIdentity {
                    dir: dir.to_path_buf(),
                    holds_log: dir.join(WAL_DIR).exists(),
                });
            };
            if let Some((field, expected, found)) = found.mismatch(expected) {
                return Err(DataDirError::Foreign {
                    dir: dir.to_path_buf(),
                    field,
                    expected,
                    found,
                });
            }
            data_dir.identity = found;
        }
        OpenMode::New => {
            found?;
            let entries = contents(dir)?;
            if !entries.is_empty() {
                return Err(DataDirError::NotEmpty {
                    dir: dir.to_path_buf(),
                    entries: summary(&entries),
                });
            }
            data_dir.identity = stamped(expected, 0);
            write_identity(dir, &data_dir.identity)?;
        }
        OpenMode::Reinit => {
            // A damaged identity is data loss too: set it aside with the rest.
            let same_node = match found {
                Ok(Some(found)) => found.mismatch(expected).is_none().then_some(found),
                Ok(None) | Err(DataDirError::CorruptIdentity { .. }) => None,
                Err(error) => return Err(error),
            };
            if same_node.is_some() {
                refuse_if_nothing_lost(dir, expected)?;
            }
            let reinit_count = same_node.map_or(0, |found| found.reinit_count);
            data_dir.moved_aside = move_aside(dir)?;
            data_dir.identity = stamped(expected, reinit_count.saturating_add(1));
            write_identity(dir, &data_dir.identity)?;
            data_dir.reinitialized = true;
        }
    }
    Ok(data_dir)
}

/// `expected` as written: this format, the current time, `reinit_count`.
fn stamped(expected: &Identity, reinit_count: u64) -> Identity {
    Identity {
        format_version: IDENTITY_FORMAT_VERSION,
        created_at_unix_seconds: unix_seconds(),
        reinit_count,
        ..expected.clone()
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Takes the lock, or says who holds it.
fn lock(dir: &Path) -> Result<File, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = (&mut file)
                .take(32)
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(DataDirError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(cause)) => return Err(DataDirError::Io { path, cause }),
    }
    file.set_len(0).map_err(io_error(&path))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_error(&path))?;
    Ok(file)
}

/// The identity in `dir`: `None` if there is no file.
fn read_identity(dir: &Path) -> Result<Option<Identity>, DataDirError> {
    let path = dir.join(IDENTITY_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(DataDirError::Io { path, cause }),
    };
    let corrupt = |reason: String| DataDirError::CorruptIdentity {
        path: path.clone(),
        reason,
    };
    let mut bytes = Vec::new();
    file.take(IDENTITY_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(&path))?;
    if bytes.len() as u64 > IDENTITY_BYTES_MAX {
        return Err(corrupt(format!("longer than {IDENTITY_BYTES_MAX} bytes")));
    }
    let contents: IdentityFile =
        serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
    if checksum(&contents.identity).map_err(corrupt)? != contents.crc32c {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    if contents.identity.format_version != IDENTITY_FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this build reads {IDENTITY_FORMAT_VERSION})",
            contents.identity.format_version
        )));
    }
    Ok(Some(contents.identity))
}

fn checksum(identity: &Identity) -> Result<u32, String> {
    let bytes = serde_json::to_vec(identity).map_err(|error| error.to_string())?;
    Ok(crc32c::crc32c(&bytes))
}

/// Writes the identity atomically: a 0600 `.tmp`, fsync, rename, directory fsync.
fn write_identity(dir: &Path, identity: &Identity) -> Result<(), DataDirError> {
    let final_path = dir.join(IDENTITY_FILE);
    let temporary = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let contents = IdentityFile {
        identity: identity.clone(),
        crc32c: checksum(identity).map_err(|reason| DataDirError::CorruptIdentity {
            path: final_path.clone(),
            reason,
        })?,
    };
    let mut text =
        serde_json::to_string_pretty(&contents).map_err(|error| DataDirError::CorruptIdentity {
            path: final_path.clone(),
            reason: error.to_string(),
        })?;
    text.push('\n');
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        // A leftover .tmp keeps its old mode; the identity is always 0600.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &final_path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(io_error(&final_path))
}

/// Names in `dir` other than the lock file, sorted.
fn contents(dir: &Path) -> Result<Vec<String>, DataDirError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let name = entry.map_err(io_error(dir))?.file_name();
        let name = name.to_string_lossy().into_owned();
        if name != LOCK_FILE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn summary(entries: &[String]) -> String {
    let shown: Vec<&str> = entries.iter().take(5).map(String::as_str).collect();
    let more = entries.len().saturating_sub(shown.len());
    if more == 0 {
        shown.join(", ")
    } else {
        format!("{} and {more} more", shown.join(", "))
    }
}

/// Refuses a reinit of a directory whose log is healthy, this node's, and holds records.
fn refuse_if_nothing_lost(dir: &Path, expected: &Identity) -> Result<(), DataDirError> {
    let wal = dir.join(WAL_DIR);
    if !wal.exists() {
        return Ok(());
    }
    let report = verify::verify(&wal).map_err(io_error(&wal))?;
    let records = report.live_records();
    let own = report.node_id == Some(expected.node_id)
        && report.cluster_id.as_deref() == Some(expected.cluster_id.as_str());
    if report.is_healthy() && own && records > 0 {
        return Err(DataDirError::NothingLost {
            dir: dir.to_path_buf(),
            records,
        });
    }
    Ok(())
}

/// Moves everything but the lock and earlier `lost+found-*` directories into a new
/// `lost+found-<unix time>/`; returns it, or `None` if there was nothing to move.
fn move_aside(dir: &Path) -> Result<Option<PathBuf>, DataDirError> {
    let entries: Vec<String> = contents(dir)?
        .into_iter()
        .filter(|name| !name.starts_with(LOST_AND_FOUND_PREFIX))
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let now = unix_seconds();
    let mut target = None;
    for attempt in 1..=LOST_AND_FOUND_ATTEMPTS_MAX {
        let name = if attempt == 1 {
            format!("{LOST_AND_FOUND_PREFIX}{now}")
        } else {
            format!("{LOST_AND_FOUND_PREFIX}{now}-{attempt}")
        };
        let candidate = dir.join(name);
        match DirBuilder::new().mode(0o700).create(&candidate) {
            Ok(()) => {
                target = Some(candidate);
                break;
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(cause) => {
                return Err(DataDirError::Io {
                    path: candidate,
                    cause,
                })
            }
        }
    }
    let Some(target) = target else {
        return Err(DataDirError::Io {
            path: dir.join(format!("{LOST_AND_FOUND_PREFIX}{now}")),
            cause: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "no free lost+found name for this second",
            ),
        });
    };
    for name in &entries {
        fs::rename(dir.join(name), target.join(name)).map_err(io_error(&dir.join(name)))?;
    }
    File::open(&target)
        .and_then(|file| file.sync_all())
        .map_err(io_error(&target))?;
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error(dir))?;
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Wal, WalEvent, WalOptions};
    use dtx_protocol::Record;

    fn temporary_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dtx-datadir-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn identity() -> Identity {
        Identity::new("cluster-a", "n1", 1, "12D3KooWPeer1")
    }

    /// Writes `count` records into the log of `data_dir` as node 1 of cluster-a.
    fn write_log(data_dir: &Path, count: u32) {
        write_log_as(data_dir, count, 1);
    }

    /// Writes `count` records into the log of `data_dir` as node `node_id` of cluster-a.
    fn write_log_as(data_dir: &Path, count: u32, node_id: u64) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (events, mut receiver) = tokio::sync::mpsc::channel(16);
            let options = WalOptions::new(data_dir.join(WAL_DIR), "cluster-a", node_id);
            let (wal, _) = Wal::open(options, events).unwrap();
            for round in 0..count {
                let token = u64::from(round) + 1;
                wal.append(token, vec![Record::LeaderRound { round }])
                    .await
                    .unwrap();
                while !matches!(receiver.recv().await, Some(WalEvent::Durable(durable)) if durable >= token)
                {}
            }
        });
    }

    #[test]
    fn new_writes_an_identity_that_existing_accepts_and_the_lock_is_released_on_drop() {
        let dir = temporary_dir("new-existing");
        let created = open(&dir, &identity(), OpenMode::New).unwrap();
        assert!(!created.reinitialized());
        assert_eq!(created.identity().reinit_count, 0);
        assert!(created.identity().created_at_unix_seconds > 0);
        assert_eq!(created.wal_dir(), dir.join("wal"));
        let mode = fs::metadata(dir.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let written = created.identity().clone();
        drop(created);
        let reopened = open(&dir, &identity(), OpenMode::Existing).unwrap();
        assert_eq!(reopened.identity(), &written);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn second_open_of_a_locked_dir_fails_with_the_holders_pid() {
        let dir = temporary_dir("locked");
        let first = open(&dir, &identity(), OpenMode::New).unwrap();
        let error = open(&dir, &identity(), OpenMode::Existing).unwrap_err();
        assert!(
            matches!(
                &error,
                DataDirError::Locked { dir: locked, holder: Some(pid) }
                    if *locked == dir && *pid == std::process::id()
            ),
            "{error}"
        );
        assert!(error.to_string().contains("in use by another process"));
        drop(first);
        open(&dir, &identity(), OpenMode::Existing).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn new_on_a_non_empty_dir_fails() {
        let dir = temporary_dir("new-non-empty");
        fs::create_dir_all(dir.join(WAL_DIR)).unwrap();
        let error = open(&dir, &identity(), OpenMode::New).unwrap_err();
        assert!(
            matches!(&error, DataDirError::NotEmpty { entries, .. } if entries == "wal"),
            "{error}"
        );
        assert!(!dir.join(IDENTITY_FILE).exists());
        // Nor on one that already has an identity.
        let _ = fs::remove_dir_all(&dir);
        drop(open(&dir, &identity(), OpenMode::New).unwrap());
        let error = open(&dir, &identity(), OpenMode::New).unwrap_err();
        assert!(matches!(error, DataDirError::NotEmpty { .. }), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn existing_without_identity_fails_with_no_identity() {
        let dir = temporary_dir("no-identity");
        // Missing: refused, and not created.
        let error = open(&dir, &identity(), OpenMode::Existing).unwrap_err();
        assert!(
            matches!(
                error,
                DataDirError::NoIdentity {
                    holds_log: false,
                    ..
                }
            ),
            "{error}"
        );
        assert!(!dir.exists());
        assert!(error.to_string().contains("--new"), "{error}");
        // Empty (a wiped directory).
        fs::create_dir_all(&dir).unwrap();
        let error = open(&dir, &identity(), OpenMode::Existing).unwrap_err();
        assert!(
            matches!(
                error,
                DataDirError::NoIdentity {
                    holds_log: false,
                    ..
                }
            ),
            "{error}"
        );
        // A log without an identity (an older build's directory).
        write_log(&dir, 3);
        let error = open(&dir, &identity(), OpenMode::Existing).unwrap_err();
        assert!(
            matches!(
                error,
                DataDirError::NoIdentity {
                    holds_log: true,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("--reinit"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn foreign_identity_fails_naming_the_field() {
        let dir = temporary_dir("foreign");
        drop(open(&dir, &identity(), OpenMode::New).unwrap());
        let others = [
            (
                "cluster id",
                Identity::new("cluster-b", "n1", 1, "12D3KooWPeer1"),
            ),
            (
                "node name",
                Identity::new("cluster-a", "n2", 1, "12D3KooWPeer1"),
            ),
            (
                "node id",
                Identity::new("cluster-a", "n1", 2, "12D3KooWPeer1"),
            ),
            (
                "peer id",
                Identity::new("cluster-a", "n1", 1, "12D3KooWPeer2"),
            ),
        ];
        for (expected_field, other) in others {
            let error = open(&dir, &other, OpenMode::Existing).unwrap_err();
            assert!(
                matches!(&error, DataDirError::Foreign { field, .. } if *field == expected_field),
                "{error}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_identity_fails_as_corrupt() {
        let dir = temporary_dir("corrupt-identity");
        drop(open(&dir, &identity(), OpenMode::New).unwrap());
        let path = dir.join(IDENTITY_FILE);
        let text = fs::read_to_string(&path).unwrap();
        // One digit of the node id changed: still valid JSON, wrong checksum.
        fs::write(&path, text.replace("\"node_id\": 1", "\"node_id\": 3")).unwrap();
        let error = open(&dir, &identity(), OpenMode::Existing).unwrap_err();
        assert!(
            matches!(&error, DataDirError::CorruptIdentity { reason, .. } if reason.contains("checksum")),
            "{error}"
        );
        fs::write(&path, b"\x00garbage").unwrap();
        let error = open(&dir, &identity(), OpenMode::Existing).unwrap_err();
        assert!(
            matches!(error, DataDirError::CorruptIdentity { .. }),
            "{error}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn reinit_moves_the_old_files_aside_and_counts() {
        let dir = temporary_dir("reinit");
        // A wiped node: its log is gone, its identity remains.
        drop(open(&dir, &identity(), OpenMode::New).unwrap());
        fs::write(dir.join("stray"), b"kept").unwrap();
        let reinit = open(&dir, &identity(), OpenMode::Reinit).unwrap();
        assert!(reinit.reinitialized());
        assert_eq!(reinit.identity().reinit_count, 1);
        let aside = reinit.moved_aside().unwrap().to_path_buf();
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(LOST_AND_FOUND_PREFIX));
        assert_eq!(fs::read(aside.join("stray")).unwrap(), b"kept");
        assert!(aside.join(IDENTITY_FILE).exists());
        assert!(!dir.join("stray").exists());
        drop(reinit);
        // Again, within the same second: a second lost+found, the count goes on.
        let again = open(&dir, &identity(), OpenMode::Reinit).unwrap();
        assert_eq!(again.identity().reinit_count, 2);
        assert_ne!(again.moved_aside().unwrap(), aside);
        assert!(aside.join("stray").exists(), "earlier lost+found kept");
        drop(again);
        let existing = open(&dir, &identity(), OpenMode::Existing).unwrap();
        assert_eq!(existing.identity().reinit_count, 2);
        drop(existing);
        // Another node's directory: set aside, count starts over.
        let other = Identity::new("cluster-a", "n2", 2, "12D3KooWPeer2");
        let taken = open(&dir, &other, OpenMode::Reinit).unwrap();
        assert_eq!(taken.identity().reinit_count, 1);
        assert_eq!(taken.identity().node_name, "n2");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn reinit_refuses_when_nothing_was_lost() {
        let dir = temporary_dir("reinit-nothing-lost");
        drop(open(&dir, &identity(), OpenMode::New).unwrap());
        write_log(&dir, 4);
        let error = open(&dir, &identity(), OpenMode::Reinit).unwrap_err();
        assert!(
            matches!(error, DataDirError::NothingLost { records: 4, .. }),
            "{error}"
        );
        assert!(dir.join(WAL_DIR).exists(), "nothing moved");
        // This node's identity over another node's log (a swapped wal/): its own data is
        // lost, the reinit goes ahead.
        fs::remove_dir_all(dir.join(WAL_DIR)).unwrap();
        write_log_as(&dir, 4, 7);
        let reinit = open(&dir, &identity(), OpenMode::Reinit).unwrap();
        assert!(reinit.moved_aside().unwrap().join(WAL_DIR).exists());
        drop(reinit);
        write_log(&dir, 4);
        // The identity lost (a damaged directory): the reinit goes ahead.
        fs::remove_file(dir.join(IDENTITY_FILE)).unwrap();
        let reinit = open(&dir, &identity(), OpenMode::Reinit).unwrap();
        assert!(reinit
            .moved_aside()
            .unwrap()
            .join(WAL_DIR)
            .join("segment-0000000000000001.log")
            .exists());
        assert!(!dir.join(WAL_DIR).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
