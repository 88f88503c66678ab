//! A real PostgreSQL server of the tests' own (`dtx_cli::local_postgres`), and what
//! PostgreSQL's native two-phase commit does when its coordinator dies: the baseline that
//! a dtx-driven PostgreSQL participant is compared with.
//!
//! PostgreSQL 15 or later must be installed (`.ci/run` installs it): without it these tests
//! fail with a message saying how to install it; they never skip.

use dtx_cli::local_postgres::{LocalPostgres, LocalPostgresError};
use std::io::Write;
use std::process::{Child, ChildStdin, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The database of the bank the tests use.
const DATABASE: &str = "bank";

/// Each account's balance at the start.
const INITIAL_BALANCE: i64 = 100;

/// How long a coordinator may take to prepare, or its session to end after SIGKILL.
const PATIENCE: Duration = Duration::from_secs(30);

/// How often a wait polls the server.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The application name of the native coordinator's session, to find it in
/// `pg_stat_activity`.
const COORDINATOR_APPLICATION: &str = "native-coordinator";

fn start(name: &str) -> LocalPostgres {
    LocalPostgres::start(name).unwrap_or_else(|error| panic!("{error}"))
}

/// Creates `DATABASE` with `accounts(id, balance)`: accounts 1 and 2 at `INITIAL_BALANCE`.
fn create_bank(postgres: &LocalPostgres) {
    postgres.create_database(DATABASE).expect("create database");
    postgres
        .sql(
            DATABASE,
            &format!(
                "CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint NOT NULL); \
                 INSERT INTO accounts VALUES (1, {INITIAL_BALANCE}), (2, {INITIAL_BALANCE});"
            ),
        )
        .expect("create accounts");
}

fn balance(postgres: &LocalPostgres, id: u32) -> i64 {
    let text = postgres
        .sql(
            DATABASE,
            &format!("SELECT balance FROM accounts WHERE id = {id}"),
        )
        .expect("read balance");
    text.parse()
        .unwrap_or_else(|_| panic!("balance of {id}: {text:?}"))
}

/// A coordinator of PostgreSQL-native 2PC in its own process: `psql` that has prepared a
/// transaction moving 10 out of account 1 under `gid` and now waits (its standard input
/// stays open) for the decision it will never send.
struct NativeCoordinator {
    child: Child,
    /// Held open: psql waits for more script while this lives.
    _script: ChildStdin,
}

impl NativeCoordinator {
    fn spawn(postgres: &LocalPostgres, database: &str, gid: &str) -> NativeCoordinator {
        let mut child = postgres
            .psql_command(database)
            .env("PGAPPNAME", COORDINATOR_APPLICATION)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn psql as the coordinator");
        let mut script = child.stdin.take().expect("psql's standard input");
        writeln!(
            script,
            "BEGIN;\n\
             UPDATE accounts SET balance = balance - 10 WHERE id = 1;\n\
             PREPARE TRANSACTION '{gid}';"
        )
        .and_then(|()| script.flush())
        .expect("write the coordinator's script");
        NativeCoordinator {
            child,
            _script: script,
        }
    }

    /// SIGKILL (std's kill on Unix), then reap.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the coordinator");
        self.child.wait().expect("reap the coordinator");
    }
}

impl Drop for NativeCoordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `pg_prepared_xacts` until `gid` is there; panics if `coordinator` exits first or
/// `PATIENCE` runs out.
fn wait_for_prepared(
    postgres: &LocalPostgres,
    database: &str,
    gid: &str,
    coordinator: &mut NativeCoordinator,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let gids = postgres.prepared_gids(database).expect("list prepared");
        if gids.iter().any(|prepared| prepared == gid) {
            return;
        }
        if let Some(status) = coordinator.child.try_wait().expect("coordinator status") {
            panic!("the coordinator exited ({status}) before preparing {gid}");
        }
        assert!(
            Instant::now() < deadline,
            "{gid} not prepared after {PATIENCE:?}"
        );
        sleep(POLL_INTERVAL);
    }
}

/// Polls `pg_stat_activity` until no session of `application` is left: its backend has
/// seen the client go and ended.
fn wait_for_no_session(postgres: &LocalPostgres, application: &str) {
    let deadline = Instant::now() + PATIENCE;
    let query =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'");
    loop {
        let count = postgres.sql("postgres", &query).expect("count sessions");
        if count == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} sessions of {application} still open after {PATIENCE:?}"
        );
        sleep(POLL_INTERVAL);
    }
}

/// Tries to update account `id` with a 500 ms `lock_timeout`: `Ok` if the update went
/// through (and committed), the error otherwise.
fn try_update_with_lock_timeout(postgres: &LocalPostgres, id: u32) -> Result<(), String> {
    postgres
        .sql(
            DATABASE,
            &format!(
                "SET lock_timeout = '500ms'; \
                 UPDATE accounts SET balance = balance + 1 WHERE id = {id};"
            ),
        )
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Asserts that account 1 is held by a row lock nobody will release: an update waits past
/// its lock timeout. Account 2, which the prepared transaction did not touch, updates.
fn assert_account_1_locked(postgres: &LocalPostgres, when: &str) {
    match try_update_with_lock_timeout(postgres, 1) {
        Ok(()) => panic!("{when}: account 1 updated: its row lock is gone"),
        Err(error) => assert!(
            error.contains("lock timeout"),
            "{when}: the update failed, but not on its lock timeout: {error}"
        ),
    }
    try_update_with_lock_timeout(postgres, 2)
        .unwrap_or_else(|error| panic!("{when}: account 2 (not prepared) refused: {error}"));
}

#[test]
fn local_postgres_runs_sql_and_keeps_committed_rows_across_a_crash() {
    let postgres = start("basics");
    assert!(postgres.is_running());
    assert_eq!(
        postgres.url(DATABASE),
        format!(
            "postgres://postgres@127.0.0.1:{}/{DATABASE}",
            postgres.port()
        )
    );
    let setting = |name: &str| {
        postgres
            .sql("postgres", &format!("SHOW {name}"))
            .expect(name)
    };
    assert_eq!(setting("max_prepared_transactions"), "200");
    assert_eq!(setting("fsync"), "on");
    assert_eq!(setting("listen_addresses"), "127.0.0.1");

    postgres.create_database(DATABASE).expect("create database");
    postgres
        .sql(
            DATABASE,
            "CREATE TABLE notes (id integer PRIMARY KEY, text text NOT NULL); \
             INSERT INTO notes VALUES (1, 'kept');",
        )
        .expect("create and insert");
    let read_back = || postgres.sql(DATABASE, "SELECT id, text FROM notes ORDER BY id");
    assert_eq!(read_back().expect("read back"), "1|kept");

    // A failing statement is an error with PostgreSQL's message, and changes nothing.
    match postgres.sql(DATABASE, "INSERT INTO notes VALUES (1, 'again')") {
        Err(LocalPostgresError::Sql { database, message }) => {
            assert_eq!(database, DATABASE);
            assert!(message.contains("duplicate key"), "{message}");
        }
        other => panic!("a duplicate key was not an SQL error: {other:?}"),
    }

    postgres.crash().expect("crash");
    assert!(!postgres.is_running(), "still running after the crash");
    assert!(read_back().is_err(), "answered while crashed");
    postgres.start_again().expect("start again");
    assert!(postgres.is_running());
    assert_eq!(read_back().expect("read back after recovery"), "1|kept");
}

#[test]
fn native_2pc_coordinator_death_leaves_an_orphan_holding_locks_across_restart() {
    let postgres = start("orphan");
    create_bank(&postgres);
    let mut coordinator = NativeCoordinator::spawn(&postgres, DATABASE, "native-1");
    wait_for_prepared(&postgres, DATABASE, "native-1", &mut coordinator);

    // The coordinator dies between PREPARE TRANSACTION and COMMIT PREPARED.
    coordinator.kill9();
    wait_for_no_session(&postgres, COORDINATOR_APPLICATION);

    // Nobody is left to decide: the prepared transaction stays, neither applied nor undone,
    // and keeps its row lock.
    assert_eq!(
        postgres.prepared_gids(DATABASE).expect("list prepared"),
        ["native-1"]
    );
    assert_eq!(balance(&postgres, 1), INITIAL_BALANCE);
    assert_account_1_locked(&postgres, "after the coordinator died");

    // A restart (crash and WAL recovery) brings it back as it was: still an orphan.
    postgres.crash().expect("crash");
    postgres.start_again().expect("start again");
    assert_eq!(
        postgres.prepared_gids(DATABASE).expect("list prepared"),
        ["native-1"]
    );
    assert_eq!(balance(&postgres, 1), INITIAL_BALANCE);
    assert_account_1_locked(&postgres, "after PostgreSQL restarted");
}
