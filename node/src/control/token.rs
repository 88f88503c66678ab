//! The control token: the file `dtx init` writes (0600, never replaced) and a node reads
//! at start; `POST` requests must present its content.

use super::ControlError;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Random bytes in a token [`create_token_file`] writes (hex-encoded: twice as many
/// characters), as many as a 256-bit key.
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// Characters a control token has at least (a token written by hand must not be guessable).
pub const TOKEN_CHARACTERS_MIN: usize = 32;

/// Characters a control token has at most (it travels in one header line).
pub const TOKEN_CHARACTERS_MAX: usize = 1024;

/// Bytes of a token file read at most (a token, a line end and some slack).
pub const TOKEN_FILE_MAX_BYTES: u64 = 4096;

/// True if `token` can be a control token: [`TOKEN_CHARACTERS_MIN`] to
/// [`TOKEN_CHARACTERS_MAX`] visible ASCII characters (it travels in a header line, so no
/// space, control character or line break).
pub(super) fn is_well_formed_token(token: &str) -> bool {
    (TOKEN_CHARACTERS_MIN..=TOKEN_CHARACTERS_MAX).contains(&token.len())
        && token.bytes().all(|byte| byte.is_ascii_graphic())
}

/// Creates a control token file at `path`: [`TOKEN_RANDOM_BYTES`] random bytes from the
/// operating system, hex-encoded, one line. Created with mode 0600 and never over an
/// existing file (`create_new`), so that a token is never replaced behind a running
/// node's back and never readable by other users, not even for a moment.
pub fn create_token_file(path: &Path) -> Result<(), ControlError> {
    let mut random = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|error| ControlError::Random(error.to_string()))?;
    let mut line: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    line.push('\n');
    let file_error = |cause| ControlError::TokenFile {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error)?;
    if let Err(cause) = file
        .write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
    {
        // A partial token would be refused as malformed at every start: leave no file.
        let _ = std::fs::remove_file(path);
        return Err(file_error(cause));
    }
    Ok(())
}

/// Reads the control token from the file at `path`. Refuses a file that group or others
/// may access in any way (`mode & 0o077 != 0`), as ssh does with private keys: a token
/// others could read authenticates no one, and silently using it would hide that. The
/// mode is read from the opened file, not the path, so a swap in between changes nothing.
pub fn read_token_file(path: &Path) -> Result<String, ControlError> {
    let file_error = |cause| ControlError::TokenFile {
        path: path.to_path_buf(),
        cause,
    };
    let malformed = || ControlError::TokenMalformed {
        path: path.to_path_buf(),
    };
    let file = std::fs::File::open(path).map_err(file_error)?;
    let metadata = file.metadata().map_err(file_error)?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ControlError::TokenFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !metadata.is_file() {
        return Err(malformed());
    }
    let mut bytes = Vec::new();
    file.take(TOKEN_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(file_error)?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let token = text.trim_end_matches(['\n', '\r']);
    if !is_well_formed_token(token) {
        return Err(malformed());
    }
    Ok(token.to_string())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(in crate::control) const TOKEN: &str =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A fresh path in the temporary directory for a test file.
    fn scratch_path(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("dtx-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_created_token_file_is_private_fresh_and_read_back() {
        let path = scratch_path("created");
        create_token_file(&path).expect("create");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = read_token_file(&path).expect("read");
        assert_eq!(token.len(), 2 * TOKEN_RANDOM_BYTES);
        assert!(token.bytes().all(|byte| byte.is_ascii_hexdigit()));
        // Never over an existing file: a running node's token is not replaced.
        assert!(matches!(
            create_token_file(&path),
            Err(ControlError::TokenFile { .. })
        ));
        assert_eq!(read_token_file(&path).expect("read again"), token);
        let other = scratch_path("created-other");
        create_token_file(&other).expect("create another");
        assert_ne!(read_token_file(&other).expect("read"), token);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&other);
    }

    #[test]
    fn a_token_file_others_may_read_is_refused_with_the_chmod_to_run() {
        let path = scratch_path("readable");
        std::fs::write(&path, format!("{TOKEN}\n")).expect("write");
        for mode in [0o644, 0o640, 0o604, 0o601, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let error = read_token_file(&path).expect_err("a readable token file is refused");
            assert!(
                matches!(error, ControlError::TokenFilePermissions { .. }),
                "{error}"
            );
            assert!(
                error
                    .to_string()
                    .contains(&format!("chmod 600 {}", path.display())),
                "{error}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token_file(&path).expect("0600 is accepted"), TOKEN);
        // Too short, a space inside, two lines: not a token.
        for content in [
            "short\n",
            "0123456789abcdef 0123456789abcdef0123456789abcdef\n",
            &format!("{TOKEN}\n{TOKEN}\n"),
        ] {
            std::fs::write(&path, content).expect("write");
            assert!(matches!(
                read_token_file(&path),
                Err(ControlError::TokenMalformed { .. })
            ));
        }
        let _ = std::fs::remove_file(&path);
    }
}
