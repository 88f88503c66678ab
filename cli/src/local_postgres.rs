//! A throwaway PostgreSQL server on 127.0.0.1 for the tests and the examples: its own data
//! directory in a temporary directory, its own free port, its own Unix socket directory, so
//! that it never touches a system cluster and several can run side by side.
//!
//! Everything goes through PostgreSQL's own programs (`initdb`, `pg_ctl`, `psql`) as child
//! processes, so this module adds no dependency. PostgreSQL refuses to run as root: when this
//! process is root, the server programs run as the `postgres` user (`runuser -u postgres`)
//! and the temporary directory is given to that user. `psql` connects over TCP with `trust`
//! authentication and runs as whoever we are.
//!
//! The server keeps `fsync` on: the tests measure durability, and [`LocalPostgres::crash`]
//! followed by [`LocalPostgres::start_again`] is PostgreSQL's own crash simulation (an
//! immediate shutdown writes no checkpoint, so the next start replays the WAL).
//!
//! PostgreSQL missing is an error that says how to install it, never a silent skip.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Seconds `pg_ctl` waits for the server to start or stop (`-t`).
pub const PG_CTL_TIMEOUT_SECONDS: u32 = 60;

/// How many fresh ports a start tries when another process took the one picked.
const START_ATTEMPTS_MAX: u32 = 3;

/// Longest instance name: it is part of the socket path, which Unix limits to 107 bytes.
const NAME_MAX_BYTES: usize = 32;

/// How much of the server log an error carries.
const LOG_TAIL_MAX_BYTES: usize = 4096;

/// The superuser `initdb` creates; every connection logs in as it.
pub const SUPERUSER: &str = "postgres";

/// Why a local PostgreSQL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    /// No PostgreSQL server programs on this machine.
    #[error(
        "PostgreSQL is not installed (no initdb/pg_ctl in {searched}): install it, \
         e.g. `apt-get install postgresql` on Debian/Ubuntu (`.ci/run` does this), then rerun"
    )]
    NotInstalled {
        /// Where we looked.
        searched: String,
    },
    /// We are root and cannot run the server as the `postgres` user.
    #[error(
        "running as root, but PostgreSQL refuses root and the `postgres` user is unusable \
         ({detail}); the postgresql package creates it, or run as a normal user"
    )]
    NoPostgresUser {
        /// What failed.
        detail: String,
    },
    /// The instance name is empty, too long or has characters other than `[A-Za-z0-9_-]`.
    #[error("instance name {0:?}: use 1 to 32 of A-Z a-z 0-9 _ -")]
    InvalidName(String),
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A PostgreSQL program could not be run or exited with failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Program {
        /// The command line.
        command: String,
        /// Its exit status, or why it did not run.
        status: String,
        /// Its standard error (and output), trimmed.
        stderr: String,
    },
    /// The server did not start.
    #[error("PostgreSQL {name} did not start: {detail}\n--- end of {log} ---\n{log_tail}")]
    Start {
        /// The instance name.
        name: String,
        /// `pg_ctl`'s complaint.
        detail: String,
        /// The server log's path.
        log: PathBuf,
        /// The end of the server log.
        log_tail: String,
    },
    /// `psql` reported an error: a failed statement (a constraint, a lock timeout...) or a
    /// server that refused the connection.
    #[error("SQL on database {database} failed: {message}")]
    Sql {
        /// The database.
        database: String,
        /// psql's standard error (`ERROR:  ...`), trimmed.
        message: String,
    },
}

/// Where the PostgreSQL programs of this machine are.
#[derive(Debug, Clone)]
pub struct PostgresBinaries {
    /// `initdb`.
    pub initdb: PathBuf,
    /// `pg_ctl`.
    pub pg_ctl: PathBuf,
    /// `psql` (the one next to the server programs if there is one, else from PATH).
    pub psql: PathBuf,
}

impl PostgresBinaries {
    /// Finds them: the highest `/usr/lib/postgresql/<version>/bin` (Debian's layout, where
    /// `initdb` is not in PATH), else `pg_config --bindir`, else PATH.
    pub fn find() -> Result<PostgresBinaries, LocalPostgresError> {
        let mut searched = vec!["/usr/lib/postgresql/*/bin".to_string()];
        let mut candidates: Vec<PathBuf> = debian_bin_dirs();
        if let Some(bin_dir) = pg_config_bindir() {
            candidates.push(bin_dir);
        }
        searched.push("pg_config --bindir".to_string());
        for dir in std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            candidates.push(dir);
        }
        searched.push("PATH".to_string());
        PostgresBinaries::find_in(candidates, searched.join(", "))
    }

    /// The first of `candidates` that holds `initdb` and `pg_ctl`; `searched` says where
    /// they came from, for the error.
    fn find_in(
        candidates: Vec<PathBuf>,
        searched: String,
    ) -> Result<PostgresBinaries, LocalPostgresError> {
        let bin_dir = candidates
            .into_iter()
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
            .ok_or(LocalPostgresError::NotInstalled { searched })?;
        let psql = if bin_dir.join("psql").is_file() {
            bin_dir.join("psql")
        } else {
            PathBuf::from("psql")
        };
        Ok(PostgresBinaries {
            initdb: bin_dir.join("initdb"),
            pg_ctl: bin_dir.join("pg_ctl"),
            psql,
        })
    }
}

/// `/usr/lib/postgresql/<version>/bin` directories, highest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(text.trim()))
}

/// A PostgreSQL server of our own on 127.0.0.1; dropping it stops the server (immediately)
/// and removes its directory (unless [`LocalPostgres::keep`]).
#[derive(Debug)]
pub struct LocalPostgres {
    name: String,
    binaries: PostgresBinaries,
    /// The temporary directory: data directory, log and socket.
    base_dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    /// True when we are root: the server programs then run as the `postgres` user.
    as_postgres_user: bool,
    keep: bool,
}

impl LocalPostgres {
    /// Creates a fresh cluster in a temporary directory and starts it on a free port of
    /// 127.0.0.1, with `max_prepared_transactions = 200` (two-phase commit on) and fsync on.
    pub fn start(name: &str) -> Result<LocalPostgres, LocalPostgresError> {
        let name_is_valid = !name.is_empty()
            && name.len() <= NAME_MAX_BYTES
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        if !name_is_valid {
            return Err(LocalPostgresError::InvalidName(name.to_string()));
        }
        let binaries = PostgresBinaries::find()?;
        let base_dir = crate::local::temporary_dir(&format!("dtx-postgres-{name}"));
        fs::create_dir_all(&base_dir).map_err(|source| LocalPostgresError::Io {
            action: "create",
            path: base_dir.clone(),
            source,
        })?;
        // From here on, dropping `postgres` removes the directory (and stops a server).
        let mut postgres = LocalPostgres {
            name: name.to_string(),
            binaries,
            data_dir: base_dir.join("data"),
            log_path: base_dir.join("postgresql.log"),
            base_dir,
            port: 0,
            as_postgres_user: false,
            keep: false,
        };
        postgres.as_postgres_user = postgres.owner_is_root()?;
        if postgres.as_postgres_user {
            postgres.give_to_postgres_user()?;
        }
        postgres.initdb()?;
        postgres.start_on_a_free_port()?;
        Ok(postgres)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` (trust authentication, no password).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{port}/{database}",
            port = self.port
        )
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (`pg_ctl -l`); start errors quote its end.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Keeps the directory after drop (to read the log of a failed test); the server is
    /// stopped all the same.
    pub fn keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// Creates database `name` (owned by the superuser).
    pub fn create_database(&self, name: &str) -> Result<(), LocalPostgresError> {
        self.sql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_identifier(name)),
        )
        .map(|_| ())
    }

    /// Runs `text` (one or more statements) in `database` through psql, stopping at the
    /// first error; returns what it printed, unaligned and without headers, trimmed (one
    /// row a line, columns separated by `|`).
    pub fn sql(&self, database: &str, text: &str) -> Result<String, LocalPostgresError> {
        let mut command = self.psql_command(database);
        command.arg("-c").arg(text).stdin(Stdio::null());
        let output = command
            .output()
            .map_err(|error| program_error(&command, error.to_string(), String::new()))?;
        if !output.status.success() {
            return Err(LocalPostgresError::Sql {
                database: database.to_string(),
                message: output_text(&output),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// A `psql` command for `database` with this module's flags (no psqlrc, unaligned,
    /// tuples only, quiet, stop at the first error, never prompt for a password), to run
    /// a script on its standard input or to add `-c`. The tests use it to play a
    /// coordinator process that can be killed.
    pub fn psql_command(&self, database: &str) -> Command {
        let mut command = Command::new(&self.binaries.psql);
        command
            .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", database])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE");
        command
    }

    /// The global ids of the prepared transactions of `database` (`pg_prepared_xacts`), in
    /// order: what a coordinator left prepared.
    pub fn prepared_gids(&self, database: &str) -> Result<Vec<String>, LocalPostgresError> {
        let text = self.sql(
            database,
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
        )?;
        Ok(text
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Kills the server the way a crash would: `pg_ctl -m immediate stop` ends every server
    /// process at once without a checkpoint, so [`LocalPostgres::start_again`] runs WAL
    /// recovery. This is PostgreSQL's own crash simulation; what was committed survives
    /// (fsync is on), and prepared transactions survive too.
    pub fn crash(&self) -> Result<(), LocalPostgresError> {
        self.pg_ctl_stop("immediate")
    }

    /// Stops the server cleanly (`pg_ctl -m fast stop`: a checkpoint, then exit).
    pub fn stop(&self) -> Result<(), LocalPostgresError> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the stopped (or crashed) server again on the same port and data directory.
    pub fn start_again(&self) -> Result<(), LocalPostgresError> {
        self.pg_ctl_start()
    }

    /// True if `pg_ctl status` finds the server running (false as well if pg_ctl fails).
    pub fn is_running(&self) -> bool {
        let mut command = self.server_command(&self.binaries.pg_ctl);
        command.arg("status").arg("-D").arg(&self.data_dir);
        command
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false)
    }

    /// A command for a server program, as the `postgres` user when we are root.
    fn server_command(&self, program: &Path) -> Command {
        let mut command = if self.as_postgres_user {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        // The postgres user may not be allowed into our working directory.
        command.current_dir(&self.base_dir).stdin(Stdio::null());
        command
    }

    fn owner_is_root(&self) -> Result<bool, LocalPostgresError> {
        // The directory we just created belongs to our effective user.
        let metadata = fs::metadata(&self.base_dir).map_err(|source| LocalPostgresError::Io {
            action: "stat",
            path: self.base_dir.clone(),
            source,
        })?;
        Ok(metadata.uid() == 0)
    }

    fn give_to_postgres_user(&self) -> Result<(), LocalPostgresError> {
        let user_id = postgres_id("-u")?;
        let group_id = postgres_id("-g")?;
        std::os::unix::fs::chown(&self.base_dir, Some(user_id), Some(group_id)).map_err(|source| {
            LocalPostgresError::Io {
                action: "chown to postgres",
                path: self.base_dir.clone(),
                source,
            }
        })
    }

    fn initdb(&self) -> Result<(), LocalPostgresError> {
        let mut command = self.server_command(&self.binaries.initdb);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["--no-sync", "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
            // A fixed locale: the machine's may not exist, and C sorts the same everywhere.
            .arg("--locale=C");
        run(&mut command)?;
        let settings = format!(
            "\n# Written by dtx's LocalPostgres.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_prepared_transactions = 200\n\
             max_connections = 100\n\
             shared_buffers = 16MB\n\
             logging_collector = off\n\
             fsync = on\n",
            socket_dir = self.base_dir.display()
        );
        self.append_to_config(&settings)
    }

    fn append_to_config(&self, text: &str) -> Result<(), LocalPostgresError> {
        let path = self.data_dir.join("postgresql.conf");
        let io_error = |source| LocalPostgresError::Io {
            action: "append to",
            path: path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error)?;
        file.write_all(text.as_bytes()).map_err(io_error)
    }

    /// Picks a free port, writes it (the last `port` line wins) and starts; if another
    /// process took the port in between, tries a fresh one.
    fn start_on_a_free_port(&mut self) -> Result<(), LocalPostgresError> {
        let mut attempt = 1;
        loop {
            self.port = dtx_node::ports::free_port().map_err(|source| LocalPostgresError::Io {
                action: "bind a free port on",
                path: PathBuf::from("127.0.0.1:0"),
                source,
            })?;
            self.append_to_config(&format!("port = {}\n", self.port))?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(LocalPostgresError::Start { log_tail, .. })
                    if attempt < START_ATTEMPTS_MAX
                        && log_tail.contains("could not bind IPv4 address") =>
                {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<(), LocalPostgresError> {
        let mut command = self.server_command(&self.binaries.pg_ctl);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", &PG_CTL_TIMEOUT_SECONDS.to_string(), "start"]);
        run(&mut command).map_err(|error| LocalPostgresError::Start {
            name: self.name.clone(),
            detail: error.to_string(),
            log: self.log_path.clone(),
            log_tail: self.log_tail(),
        })
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), LocalPostgresError> {
        let mut command = self.server_command(&self.binaries.pg_ctl);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", &PG_CTL_TIMEOUT_SECONDS.to_string()])
            .arg("stop");
        run(&mut command)
    }

    fn log_tail(&self) -> String {
        let text = fs::read(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(LOG_TAIL_MAX_BYTES);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // postmaster.pid exists while a server may be running (also after a failed start).
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self.pg_ctl_stop("immediate");
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.base_dir);
        }
    }
}

/// The `postgres` user's id (`-u`) or group id (`-g`), from `id`.
fn postgres_id(which: &str) -> Result<u32, LocalPostgresError> {
    let output = Command::new("id")
        .args([which, "postgres"])
        .output()
        .map_err(|error| LocalPostgresError::NoPostgresUser {
            detail: format!("id {which} postgres: {error}"),
        })?;
    if !output.status.success() {
        return Err(LocalPostgresError::NoPostgresUser {
            detail: output_text(&output),
        });
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|error| LocalPostgresError::NoPostgresUser {
            detail: format!("id {which} postgres: {error}"),
        })
}

/// Runs `command` to completion; a failure carries its output.
fn run(command: &mut Command) -> Result<(), LocalPostgresError> {
    let output = command
        .output()
        .map_err(|error| program_error(command, error.to_string(), String::new()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(program_error(
        command,
        output.status.to_string(),
        output_text(&output),
    ))
}

fn program_error(command: &Command, status: String, stderr: String) -> LocalPostgresError {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for argument in command.get_args() {
        line.push(' ');
        line.push_str(&argument.to_string_lossy());
    }
    LocalPostgresError::Program {
        command: line,
        status,
        stderr,
    }
}

/// Standard error, then standard output (pg_ctl says some failures there), trimmed.
fn output_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    [stderr.trim(), stdout.trim()]
        .iter()
        .filter(|text| !text.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// `name` as a double-quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_postgresql_is_an_error_that_says_how_to_install_it() {
        let empty = crate::local::temporary_dir("dtx-postgres-missing");
        fs::create_dir_all(&empty).unwrap();
        let error = PostgresBinaries::find_in(vec![empty.clone()], "here".to_string())
            .expect_err("found PostgreSQL in an empty directory");
        fs::remove_dir_all(&empty).unwrap();
        assert!(matches!(error, LocalPostgresError::NotInstalled { .. }));
        assert!(
            error.to_string().contains("apt-get install postgresql"),
            "{error}"
        );
    }

    #[test]
    fn binaries_are_taken_from_the_first_directory_with_initdb_and_pg_ctl() {
        let base = crate::local::temporary_dir("dtx-postgres-find");
        let half = base.join("half");
        let full = base.join("full");
        fs::create_dir_all(&half).unwrap();
        fs::create_dir_all(&full).unwrap();
        fs::write(half.join("initdb"), "").unwrap();
        for program in ["initdb", "pg_ctl"] {
            fs::write(full.join(program), "").unwrap();
        }
        let found = PostgresBinaries::find_in(vec![half, full.clone()], String::new()).unwrap();
        fs::remove_dir_all(&base).unwrap();
        assert_eq!(found.initdb, full.join("initdb"));
        assert_eq!(found.pg_ctl, full.join("pg_ctl"));
        assert_eq!(found.psql, PathBuf::from("psql"));
    }

    #[test]
    fn instance_names_that_would_break_the_socket_path_are_refused() {
        for name in ["", "a/b", "x".repeat(NAME_MAX_BYTES + 1).as_str()] {
            assert!(matches!(
                LocalPostgres::start(name),
                Err(LocalPostgresError::InvalidName(_))
            ));
        }
    }
}
