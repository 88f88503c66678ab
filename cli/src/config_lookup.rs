//! Where commands find the cluster config when `--config` is absent: `$DTX_CONFIG`, else
//! `cluster.toml` in the current directory (as etcdctl finds its endpoints), so that a
//! user who ran `dtx init` can work from the cluster directory without repeating the path.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable naming the cluster config, used when `--config` is absent.
pub const CONFIG_ENV: &str = "DTX_CONFIG";

/// The config file looked for in the current directory, as `dtx init` names it.
pub const CONFIG_FILE_NAME: &str = "cluster.toml";

/// Why no cluster config was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigLookupError {
    /// Neither `--config`, nor `$DTX_CONFIG`, nor `./cluster.toml`.
    #[error("no cluster config: pass --config PATH, set {CONFIG_ENV}=PATH, or run from a directory holding {CONFIG_FILE_NAME} (`dtx init --dir DIR` writes one)")]
    NotFound,
}

/// The config to use: `explicit` (`--config`), else `$DTX_CONFIG`, else `./cluster.toml`.
pub fn find_config(explicit: Option<PathBuf>) -> Result<PathBuf, ConfigLookupError> {
    let current_dir = std::env::current_dir().ok();
    lookup_config(
        explicit,
        std::env::var_os(CONFIG_ENV),
        current_dir.as_deref(),
    )
}

/// The lookup itself, with the environment and the current directory as arguments:
/// `explicit` wins, then a non-empty `from_env`, then `CONFIG_FILE_NAME` if it is a file
/// in `current_dir`.
pub fn lookup_config(
    explicit: Option<PathBuf>,
    from_env: Option<OsString>,
    current_dir: Option<&Path>,
) -> Result<PathBuf, ConfigLookupError> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    if let Some(path) = from_env.filter(|path| !path.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if let Some(dir) = current_dir {
        let candidate = dir.join(CONFIG_FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(ConfigLookupError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_comes_from_the_flag_then_the_environment_then_the_current_directory() {
        let dir = std::env::temp_dir().join(format!("dtx-config-lookup-{}", std::process::id()));
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).expect("create dirs");
        let here = dir.join(CONFIG_FILE_NAME);
        std::fs::write(&here, "").expect("write config");
        let flag = PathBuf::from("/flag/cluster.toml");
        let env = OsString::from("/env/cluster.toml");

        let found = |explicit: Option<&PathBuf>, from_env: Option<&OsString>, cwd: &Path| {
            lookup_config(explicit.cloned(), from_env.cloned(), Some(cwd))
        };
        assert_eq!(
            found(Some(&flag), Some(&env), &dir).ok(),
            Some(flag.clone())
        );
        assert_eq!(
            found(None, Some(&env), &dir).ok(),
            Some(PathBuf::from(&env))
        );
        assert_eq!(found(None, None, &dir).ok(), Some(here.clone()));
        // An empty variable counts as unset.
        assert_eq!(found(None, Some(&OsString::new()), &dir).ok(), Some(here));
        let error = found(None, None, &empty).expect_err("nothing to find");
        let message = error.to_string();
        for named in ["--config", CONFIG_ENV, CONFIG_FILE_NAME] {
            assert!(message.contains(named), "{message:?} does not name {named}");
        }
        assert!(lookup_config(None, None, None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
