//! `users.toml`: the clients a cluster serves and what each may touch, plus `dtx user add`
//! and `dtx user remove`.
//!
//! ```toml
//! [[users]]
//! name = "admin"
//! user_id = "12D3KooW..."   # the peer id of the user's ed25519 key (its public key)
//! read_write = [""]         # key prefixes it may read and write ("" is every key)
//! read_only = []            # key prefixes it may only read
//! key_file = "admin.key"    # where `dtx` finds the key (0600); read by clients only
//! ```
//!
//! The file is the cluster's allow-list of client identities (as `cluster.toml` is of data
//! nodes). Data nodes re-read it when it changes: a removed user's sessions end at once,
//! without a restart. A client proves that its per-process libp2p identity acts for a user
//! with a signature of that user's key (see [`crate::auth`]).

use crate::secret::{read_secret, write_secret, SecretError};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The users file's name, next to `cluster.toml`.
pub const USERS_FILE_NAME: &str = "users.toml";

/// Users one file may declare.
pub const USERS_MAX: usize = 10_000;

/// Key prefixes one user may hold (both lists together).
pub const PREFIXES_PER_USER_MAX: usize = 64;

/// Longest key prefix in a permission (the protocol's key limit).
pub const PREFIX_BYTES_MAX: usize = 1024;

/// Longest user name.
pub const USER_NAME_BYTES_MAX: usize = 64;

/// The user `dtx` commands act as unless `--user` or `DTX_USER` says otherwise; `dtx init`
/// creates it with every permission.
pub const DEFAULT_USER: &str = "admin";

/// Environment variable naming the user `dtx` client commands act as.
pub const USER_ENV: &str = "DTX_USER";

/// One `[[users]]` entry as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The user's name (letters, digits, `-`, `_`).
    pub name: String,
    /// The peer id of the user's key (base58).
    pub user_id: String,
    /// Key prefixes the user may read and write.
    #[serde(default)]
    pub read_write: Vec<String>,
    /// Key prefixes the user may only read.
    #[serde(default)]
    pub read_only: Vec<String>,
    /// The user's key file, relative to the users file (clients only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// The file as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The users.
    #[serde(default)]
    pub users: Vec<UserEntry>,
}

/// A validated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// The identity of the user's key.
    pub user_id: PeerId,
    /// Read-write prefixes.
    pub read_write: Vec<String>,
    /// Read-only prefixes.
    pub read_only: Vec<String>,
    /// The key file, resolved against the users file's directory.
    pub key_file: Option<PathBuf>,
}

/// A validated users file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    users: Vec<User>,
    by_id: BTreeMap<PeerId, usize>,
}

/// Why a users file is unusable or could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("cannot {action} users file {path}: {cause}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Not valid TOML of the expected shape.
    #[error("users file {path} is malformed: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An entry is invalid.
    #[error("user {name:?}: {problem}")]
    Invalid {
        /// The user.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Too many users.
    #[error("{count} users exceed the limit of {USERS_MAX}")]
    TooMany {
        /// Users declared.
        count: usize,
    },
    /// No such user.
    #[error("no user named {0:?} in the users file")]
    Unknown(String),
    /// A user of that name exists.
    #[error("a user named {0:?} exists")]
    Exists(String),
    /// A key file.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A key file does not hold a key, or not the user's.
    #[error("key file {path}: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl Users {
    /// Reads and validates a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let file = read_file(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Users::from_file(file, base)
    }

    /// Validates a parsed file; key files resolve against `base`.
    pub fn from_file(file: UsersFile, base: &Path) -> Result<Users, UsersError> {
        if file.users.len() > USERS_MAX {
            return Err(UsersError::TooMany {
                count: file.users.len(),
            });
        }
        let mut users = Users::default();
        for entry in file.users {
            let invalid = |problem: String| UsersError::Invalid {
                name: entry.name.clone(),
                problem,
            };
            validate_name(&entry.name).map_err(invalid)?;
            let user_id: PeerId = entry
                .user_id
                .parse()
                .map_err(|_| invalid(format!("invalid user_id {:?}", entry.user_id)))?;
            validate_prefixes(&entry.read_write, &entry.read_only).map_err(invalid)?;
            if users.named(&entry.name).is_some() {
                return Err(invalid("declared twice".to_string()));
            }
            if users.by_id.contains_key(&user_id) {
                return Err(invalid(format!("user_id {user_id} is declared twice")));
            }
            users.by_id.insert(user_id, users.users.len());
            users.users.push(User {
                name: entry.name,
                user_id,
                read_write: entry.read_write,
                read_only: entry.read_only,
                key_file: entry.key_file.map(|file| base.join(file)),
            });
        }
        Ok(users)
    }

    /// Every user, in file order.
    pub fn all(&self) -> &[User] {
        &self.users
    }

    /// The user whose key has identity `user_id`.
    pub fn by_user_id(&self, user_id: &PeerId) -> Option<&User> {
        self.by_id.get(user_id).map(|index| &self.users[*index])
    }

    /// The user called `name`.
    pub fn named(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|user| user.name == name)
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True without users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl User {
    /// True if the user may read `key`.
    pub fn may_read(&self, key: &[u8]) -> bool {
        self.may_write(key)
            || self
                .read_only
                .iter()
                .any(|prefix| key.starts_with(prefix.as_bytes()))
    }

    /// True if the user may write `key`.
    pub fn may_write(&self, key: &[u8]) -> bool {
        self.read_write
            .iter()
            .any(|prefix| key.starts_with(prefix.as_bytes()))
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= USER_NAME_BYTES_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a user name is 1 to {USER_NAME_BYTES_MAX} letters, digits, '-' or '_'"
        ))
    }
}

fn validate_prefixes(read_write: &[String], read_only: &[String]) -> Result<(), String> {
    if read_write.len() + read_only.len() > PREFIXES_PER_USER_MAX {
        return Err(format!(
            "{} prefixes exceed the limit of {PREFIXES_PER_USER_MAX}",
            read_write.len() + read_only.len()
        ));
    }
    if let Some(long) = read_write
        .iter()
        .chain(read_only)
        .find(|prefix| prefix.len() > PREFIX_BYTES_MAX)
    {
        return Err(format!(
            "prefix of {} bytes exceeds the limit of {PREFIX_BYTES_MAX}",
            long.len()
        ));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<UsersFile, UsersError> {
    let text = std::fs::read_to_string(path).map_err(|cause| UsersError::Io {
        action: "read",
        path: path.to_path_buf(),
        cause,
    })?;
    toml::from_str(&text).map_err(|error| UsersError::Parse {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

/// Validates `file` and writes it whole through a temporary file and a rename, so a node
/// re-reading it never sees half of it.
fn write_file(path: &Path, file: &UsersFile) -> Result<(), UsersError> {
    let base = path.parent().unwrap_or(Path::new("."));
    Users::from_file(file.clone(), base)?;
    let io_error = |cause| UsersError::Io {
        action: "write",
        path: path.to_path_buf(),
        cause,
    };
    let header = "# Clients this cluster serves and the key prefixes each may use (dtx user add / remove).\n# Data nodes re-read this file when it changes.\n";
    let body = toml::to_string_pretty(file).map_err(|error| UsersError::Parse {
        path: path.to_path_buf(),
        message: error.to_string(),
    })?;
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(&temporary, format!("{header}{body}")).map_err(io_error)?;
    std::fs::rename(&temporary, path).map_err(io_error)
}

/// Creates a user: a fresh ed25519 key written to `NAME.key` (0600) next to the users
/// file, and an entry with its permissions appended to the file (created if missing).
pub fn add_user(
    users_path: &Path,
    name: &str,
    read_write: Vec<String>,
    read_only: Vec<String>,
) -> Result<User, UsersError> {
    let mut file = if users_path.exists() {
        read_file(users_path)?
    } else {
        UsersFile::default()
    };
    if file.users.iter().any(|user| user.name == name) {
        return Err(UsersError::Exists(name.to_string()));
    }
    validate_name(name).map_err(|problem| UsersError::Invalid {
        name: name.to_string(),
        problem,
    })?;
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|error| UsersError::Invalid {
            name: name.to_string(),
            problem: format!("cannot encode its key: {error}"),
        })?;
    let dir = users_path.parent().unwrap_or(Path::new("."));
    let key_file = format!("{name}.key");
    let key_path = dir.join(&key_file);
    let entry = UserEntry {
        name: name.to_string(),
        user_id: keypair.public().to_peer_id().to_string(),
        read_write,
        read_only,
        key_file: Some(key_file),
    };
    file.users.push(entry);
    // Validate before anything is written.
    let users = Users::from_file(file.clone(), dir)?;
    write_secret(&key_path, &bytes)?;
    write_file(users_path, &file)?;
    users
        .named(name)
        .cloned()
        .ok_or_else(|| UsersError::Unknown(name.to_string()))
}

/// Removes the user called `name` from the users file (its key file stays, useless to
/// this cluster). Running data nodes end its sessions when they re-read the file.
pub fn remove_user(users_path: &Path, name: &str) -> Result<(), UsersError> {
    let mut file = read_file(users_path)?;
    let before = file.users.len();
    file.users.retain(|user| user.name != name);
    if file.users.len() == before {
        return Err(UsersError::Unknown(name.to_string()));
    }
    write_file(users_path, &file)
}

/// What a client process authenticates with: a user's name and key.
#[derive(Clone, Debug)]
pub struct Credential {
    /// The user.
    pub user: String,
    /// The user's key (not the process's libp2p identity, which is fresh per process).
    pub keypair: Keypair,
}

impl Credential {
    /// Loads the key of user `name` as the users file at `users_path` names it. The key
    /// file must be private (0600) and hold the key the file declares for the user.
    pub fn load(users_path: &Path, name: &str) -> Result<Credential, UsersError> {
        let users = Users::load(users_path)?;
        let user = users
            .named(name)
            .ok_or_else(|| UsersError::Unknown(name.to_string()))?;
        let path = user.key_file.clone().ok_or_else(|| UsersError::Invalid {
            name: name.to_string(),
            problem: "has no key_file in the users file".to_string(),
        })?;
        let bytes = read_secret(&path)?;
        let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|error| UsersError::Key {
            path: path.clone(),
            problem: format!("not a protobuf-encoded keypair: {error}"),
        })?;
        if keypair.public().to_peer_id() != user.user_id {
            return Err(UsersError::Key {
                path,
                problem: format!("does not hold the key of user {name:?}"),
            });
        }
        Ok(Credential {
            user: name.to_string(),
            keypair,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dtx-users-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn users_are_added_with_private_keys_loaded_and_removed() {
        let dir = temp_dir("add");
        let path = dir.join(USERS_FILE_NAME);
        let alice = add_user(&path, "alice", vec!["n1/alice/".into()], vec!["n2/".into()]).unwrap();
        assert!(alice.may_write(b"n1/alice/x"));
        assert!(!alice.may_write(b"n1/bob"));
        assert!(alice.may_read(b"n2/anything"));
        assert!(!alice.may_write(b"n2/anything"));
        assert!(matches!(
            add_user(&path, "alice", vec![], vec![]),
            Err(UsersError::Exists(_))
        ));
        let credential = Credential::load(&path, "alice").unwrap();
        assert_eq!(credential.keypair.public().to_peer_id(), alice.user_id);
        let users = Users::load(&path).unwrap();
        assert_eq!(users.by_user_id(&alice.user_id).unwrap().name, "alice");
        remove_user(&path, "alice").unwrap();
        assert!(Users::load(&path).unwrap().is_empty());
        assert!(matches!(
            remove_user(&path, "alice"),
            Err(UsersError::Unknown(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_entries_are_clear_errors() {
        let dir = temp_dir("bad");
        let path = dir.join(USERS_FILE_NAME);
        std::fs::write(&path, "[[users]]\nname = \"a b\"\nuser_id = \"x\"\n").unwrap();
        let error = Users::load(&path).unwrap_err();
        assert!(error.to_string().contains("letters, digits"), "{error}");
        let id = Keypair::generate_ed25519().public().to_peer_id();
        std::fs::write(
            &path,
            format!("[[users]]\nname = \"a\"\nuser_id = \"{id}\"\n[[users]]\nname = \"b\"\nuser_id = \"{id}\"\n"),
        )
        .unwrap();
        let error = Users::load(&path).unwrap_err();
        assert!(error.to_string().contains("declared twice"), "{error}");
        std::fs::write(&path, "users = 3").unwrap();
        assert!(matches!(Users::load(&path), Err(UsersError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_credential_whose_key_is_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("exposed");
        let path = dir.join(USERS_FILE_NAME);
        add_user(&path, "carol", vec![String::new()], vec![]).unwrap();
        std::fs::set_permissions(
            dir.join("carol.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let error = Credential::load(&path, "carol").unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
