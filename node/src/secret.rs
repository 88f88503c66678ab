//! Secret files: node and user keys, the control token. Written with mode 0600 (whole,
//! through a temporary file and a rename, so a reader never sees half of one), and refused
//! when group or others may read them: a key another local user could read is a key that
//! user holds (with a member's key, one forged heartbeat once made the others treat a live
//! node as departed).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Permission bits a secret file may not have: any access by group or others.
pub const SECRET_FORBIDDEN_MODE_BITS: u32 = 0o077;

/// Why a secret file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file system refused.
    #[error("cannot {action} secret file {path}: {cause}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Group or others may access it.
    #[error("secret file {path} is accessible by other users (mode {mode:04o}); refusing to use it: run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Reads a secret file, refusing it if group or others may access it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let io_error = |cause| SecretError::Io {
        action: "read",
        path: path.to_path_buf(),
        cause,
    };
    let metadata = fs::metadata(path).map_err(io_error)?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & SECRET_FORBIDDEN_MODE_BITS != 0 {
        return Err(SecretError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map_err(io_error)
}

/// Writes a secret file with mode 0600: to a temporary file created 0600, synced, then
/// renamed over `path`.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let io_error = |cause| SecretError::Io {
        action: "write",
        path: path.to_path_buf(),
        cause,
    };
    let temporary = path.with_extension("secret.tmp");
    let _ = fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error)?;
    // The mode above is filtered by the umask; 0600 only loses bits, but be explicit.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_error)?;
    file.write_all(bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    fs::rename(&temporary, path).map_err(io_error)
}

/// `count` random bytes from the operating system.
pub fn random_bytes(count: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut bytes = vec![0u8; count];
    getrandom::fill(&mut bytes).map_err(|error| std::io::Error::other(error.to_string()))?;
    Ok(bytes)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_written_0600_and_exposed_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("dtx-secret-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.key");
        write_secret(&path, b"secret").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret(&path).unwrap(), b"secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_secret(&path).unwrap_err();
        assert!(
            matches!(error, SecretError::Exposed { mode: 0o644, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
        // Rewriting fixes the mode.
        write_secret(&path, b"again").unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"again");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn random_bytes_differ_and_hex_is_lower_case() {
        let first = random_bytes(16).unwrap();
        let second = random_bytes(16).unwrap();
        assert_ne!(first, second);
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
