//! [`PostgresParticipant`]: a service's own PostgreSQL database as a participant, through
//! PostgreSQL's prepared transactions, with the service's actions declared in a TOML file
//! (or built with [`Actions`] in Rust).
//!
//! - **prepare**: every `Call` of the transaction runs its action's statements in one local
//!   transaction, each statement's row count is checked, then
//!   `PREPARE TRANSACTION 'dtx-<txn>@<database>'`. The vote is Prepared only after
//!   PostgreSQL accepted that (it is durable there: PostgreSQL fsyncs it). A failed row
//!   count, a constraint violation, a lock wait past `lock_timeout`, a deadlock, any error
//!   the database reports about the statements: Refused, with the database's reason.
//! - **commit / rollback**: `COMMIT PREPARED` / `ROLLBACK PREPARED`, from any connection.
//!   An unknown gid counts as done: the node asks commit only of a transaction it voted
//!   Prepared on (so PostgreSQL had it, and only a finish removes it), and rollback of a
//!   transaction never prepared must succeed (the contract). A rolled-back transaction is
//!   remembered (bounded), so a late prepare of it is refused.
//! - **prepared**: `pg_prepared_xacts` of this database with the `dtx-` prefix. After a
//!   restart the node rolls back those it holds no durable vote for and finishes or leaves
//!   in doubt the rest (the node's resource recovery), so no prepared transaction of dtx's
//!   outlives a restart of the node, of PostgreSQL or of both.
//!
//! Availability versus refusal: a database that cannot be reached, is shutting down, or
//! runs out of connections or resources (SQLSTATE classes 08, 53, 57P, 58) makes a call
//! fail with a [`ParticipantError`] (the node retries finishes; a prepare then votes
//! `ServiceUnavailable`); every other database error is a refusal.
//!
//! The gid carries the database's name because gids are unique per PostgreSQL instance,
//! not per database: two service nodes whose databases share an instance prepare the same
//! transaction under two gids. One dtx service node per database: the node rolls back every
//! `dtx-` gid of its database that its log holds no vote for.

use super::{Participant, ParticipantError, PrepareAnswer};
use crate::duration::parse_duration;
use dtx_protocol::{cut_text, Operation, Outcome, TxnId, REFUSAL_TEXT_MAX_BYTES};
use futures::future::BoxFuture;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

/// Whether a gid is prepared (a repeated prepare answers Prepared again).
const PREPARED_CHECK: &str = "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1";

/// The prefix of every gid dtx prepares (`dtx-<txn>@<database>`).
pub const GID_PREFIX: &str = "dtx-";
/// Default connections to the database (each prepare, commit and rollback holds one).
pub const CONNECTIONS_DEFAULT: usize = 16;
/// Most connections a service may ask for.
pub const CONNECTIONS_MAX: usize = 1024;
/// Default `lock_timeout`: a statement waiting this long for a row lock is cancelled and
/// the transaction refused (it also breaks deadlocks PostgreSQL cannot see because they
/// span two databases).
pub const LOCK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default `statement_timeout` of every statement dtx runs.
pub const STATEMENT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default wait for the database at start (a node started with its database, or just
/// before it, waits rather than failing at once).
pub const STARTUP_WAIT_DEFAULT: Duration = Duration::from_secs(10);
/// Longest wait for one connection to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most rolled-back transactions remembered (so a late prepare of them is refused); past
/// it the oldest is forgotten.
pub const ROLLED_BACK_REMEMBERED_MAX: usize = 65_536;
/// Most actions in one file.
pub const ACTIONS_MAX: usize = 1024;
/// Most statements of one action.
pub const STEPS_PER_ACTION_MAX: usize = 64;
/// Most named parameters of one statement.
pub const PARAMETERS_PER_STEP_MAX: usize = 256;

/// Why a set of actions is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    /// The file could not be read.
    #[error("cannot read actions file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not the expected shape.
    #[error("actions file: {0}")]
    Toml(String),
    /// A setting's value is invalid.
    #[error("actions file, [settings] {name}: {detail}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// Why.
        detail: String,
    },
    /// An action is invalid.
    #[error("action {action:?}: {detail}")]
    Action {
        /// The action.
        action: String,
        /// Why.
        detail: String,
    },
    /// A statement's text cannot be used.
    #[error("statement {sql:?}: {detail}")]
    Statement {
        /// The statement, cut to 200 bytes.
        sql: String,
        /// Why.
        detail: String,
    },
}

/// How a [`PostgresParticipant`] uses its database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresSettings {
    /// Connections to open at most.
    pub connections: usize,
    /// `lock_timeout` of every statement.
    pub lock_timeout: Duration,
    /// `statement_timeout` of every statement.
    pub statement_timeout: Duration,
    /// How long [`PostgresParticipant::connect`] waits for a database that refuses
    /// connections.
    pub startup_wait: Duration,
}

impl Default for PostgresSettings {
    fn default() -> PostgresSettings {
        PostgresSettings {
            connections: CONNECTIONS_DEFAULT,
            lock_timeout: LOCK_TIMEOUT_DEFAULT,
            statement_timeout: STATEMENT_TIMEOUT_DEFAULT,
            startup_wait: STARTUP_WAIT_DEFAULT,
        }
    }
}

/// One statement of an action: SQL with named parameters (`$sku`), the number of rows it
/// must change (if any), and the refusal to give when it changes another number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The text as written.
    sql: String,
    /// The text with `$1..$n` in place of the names.
    positional: String,
    /// The names, in the order of their numbers.
    parameters: Vec<String>,
    rows: Option<u64>,
    refuse: Option<String>,
}

impl Step {
    /// A statement; its named parameters (`$name`) are taken from the call's arguments.
    pub fn new(sql: &str) -> Result<Step, ActionsError> {
        let (positional, parameters) = name_parameters(sql)?;
        Ok(Step {
            sql: sql.to_string(),
            positional,
            parameters,
            rows: None,
            refuse: None,
        })
    }

    /// The statement must change exactly `rows` rows, or the transaction is refused.
    pub fn rows(mut self, rows: u64) -> Step {
        self.rows = Some(rows);
        self
    }

    /// The refusal when the row count is not met (`$name` is replaced by the argument).
    pub fn refuse(mut self, text: &str) -> Step {
        self.refuse = Some(text.to_string());
        self
    }

    /// The SQL as written.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// What a service can be asked to do: named actions, each a list of statements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    actions: BTreeMap<String, Vec<Step>>,
    settings: PostgresSettings,
}

/// The TOML shape of an actions file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionsFile {
    #[serde(default)]
    settings: SettingsFile,
    #[serde(default)]
    actions: BTreeMap<String, ActionFile>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    connections: Option<usize>,
    lock_timeout: Option<String>,
    statement_timeout: Option<String>,
    startup_wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionFile {
    sql: Option<String>,
    rows: Option<u64>,
    refuse: Option<String>,
    steps: Option<Vec<StepFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    sql: String,
    rows: Option<u64>,
    refuse: Option<String>,
}

impl Actions {
    /// No actions, default settings.
    pub fn new() -> Actions {
        Actions::default()
    }

    /// Reads an actions file (see [`Actions::parse`]).
    pub fn load(path: &Path) -> Result<Actions, ActionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ActionsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Actions::parse(&text)
    }

    /// Parses an actions file:
    ///
    /// ```toml
    /// [settings]                 # all optional
    /// connections = 16
    /// lock_timeout = "2s"
    /// statement_timeout = "10s"
    /// startup_wait = "10s"
    ///
    /// [actions.reserve]          # one statement
    /// sql = "UPDATE stock SET qty = qty - $qty WHERE sku = $sku AND qty >= $qty"
    /// rows = 1
    /// refuse = "not enough $sku in stock"
    ///
    /// [[actions.place.steps]]    # several, in order
    /// sql = "INSERT INTO orders (id, sku) VALUES ($order, $sku)"
    /// ```
    pub fn parse(text: &str) -> Result<Actions, ActionsError> {
        let file: ActionsFile =
            toml::from_str(text).map_err(|error| ActionsError::Toml(error.to_string()))?;
        let mut actions = Actions::new();
        if let Some(connections) = file.settings.connections {
            if connections == 0 || connections > CONNECTIONS_MAX {
                return Err(ActionsError::Setting {
                    name: "connections",
                    detail: format!("{connections} is not in 1..={CONNECTIONS_MAX}"),
                });
            }
            actions.settings.connections = connections;
        }
        let duration = |name: &'static str, text: &Option<String>, into: &mut Duration| {
            if let Some(text) = text {
                *into = parse_duration(text)
                    .map_err(|detail| ActionsError::Setting { name, detail })?;
            }
            Ok::<(), ActionsError>(())
        };
        duration(
            "lock_timeout",
            &file.settings.lock_timeout,
            &mut actions.settings.lock_timeout,
        )?;
        duration(
            "statement_timeout",
            &file.settings.statement_timeout,
            &mut actions.settings.statement_timeout,
        )?;
        duration(
            "startup_wait",
            &file.settings.startup_wait,
            &mut actions.settings.startup_wait,
        )?;
        for (name, action) in file.actions {
            let invalid = |detail: &str| ActionsError::Action {
                action: name.clone(),
                detail: detail.to_string(),
            };
            let steps = match (action.sql, action.steps) {
                (Some(sql), None) => {
                    let mut step = Step::new(&sql)?;
                    step.rows = action.rows;
                    step.refuse = action.refuse;
                    vec![step]
                }
                (None, Some(steps)) => {
                    if action.rows.is_some() || action.refuse.is_some() {
                        return Err(invalid(
                            "rows and refuse belong to each of its steps, not to the action",
                        ));
                    }
                    steps
                        .into_iter()
                        .map(|step| {
                            let mut built = Step::new(&step.sql)?;
                            built.rows = step.rows;
                            built.refuse = step.refuse;
                            Ok(built)
                        })
                        .collect::<Result<Vec<Step>, ActionsError>>()?
                }
                (Some(_), Some(_)) => return Err(invalid("has both sql and steps: use one")),
                (None, None) => return Err(invalid("has neither sql nor steps")),
            };
            actions = actions.with_action(&name, steps)?;
        }
        if actions.actions.is_empty() {
            return Err(ActionsError::Toml(
                "no actions: declare at least one [actions.NAME] with sql = \"...\"".to_string(),
            ));
        }
        Ok(actions)
    }

    /// Adds (or replaces) the action `name`.
    pub fn with_action(mut self, name: &str, steps: Vec<Step>) -> Result<Actions, ActionsError> {
        let invalid = |detail: String| ActionsError::Action {
            action: name.to_string(),
            detail,
        };
        if name.is_empty() || name.len() > 128 {
            return Err(invalid("names are 1 to 128 bytes".to_string()));
        }
        if steps.is_empty() || steps.len() > STEPS_PER_ACTION_MAX {
            return Err(invalid(format!(
                "has {} statements; an action has 1 to {STEPS_PER_ACTION_MAX}",
                steps.len()
            )));
        }
        if !self.actions.contains_key(name) && self.actions.len() >= ACTIONS_MAX {
            return Err(invalid(format!("more than {ACTIONS_MAX} actions")));
        }
        self.actions.insert(name.to_string(), steps);
        Ok(self)
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: PostgresSettings) -> Actions {
        self.settings = settings;
        self
    }

    /// The settings in force.
    pub fn settings(&self) -> &PostgresSettings {
        &self.settings
    }

    /// The names of the actions.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }
}

/// Replaces the named parameters of `sql` (`$sku`) by PostgreSQL's positional ones (`$1`),
/// the same name getting the same number. String literals, quoted identifiers and comments
/// are left alone; dollar-quoted strings and positional parameters are refused.
fn name_parameters(sql: &str) -> Result<(String, Vec<String>), ActionsError> {
    let refuse = |detail: &str| ActionsError::Statement {
        sql: cut_text(sql, 200),
        detail: detail.to_string(),
    };
    let mut positional = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let characters: Vec<char> = sql.chars().collect();
    let mut index = 0;
    while index < characters.len() {
        let character = characters[index];
        match character {
            '\'' | '"' => {
                // A literal or quoted identifier: copied as is up to its closing quote (a
                // doubled quote inside is two toggles); `E'...'` also escapes with `\`.
                let escapes =
                    character == '\'' && index > 0 && matches!(characters[index - 1], 'E' | 'e');
                positional.push(character);
                index += 1;
                loop {
                    let Some(&inner) = characters.get(index) else {
                        return Err(refuse("a quote is not closed"));
                    };
                    positional.push(inner);
                    index += 1;
                    if escapes && inner == '\\' {
                        if let Some(&escaped) = characters.get(index) {
                            positional.push(escaped);
                            index += 1;
                        }
                        continue;
                    }
                    if inner == character {
                        break;
                    }
                }
            }
            '-' if characters.get(index + 1) == Some(&'-') => {
                while index < characters.len() && characters[index] != '\n' {
                    positional.push(characters[index]);
                    index += 1;
                }
            }
            '/' if characters.get(index + 1) == Some(&'*') => {
                let mut depth = 0usize;
                loop {
                    match (characters.get(index), characters.get(index + 1)) {
                        (Some('/'), Some('*')) => {
                            depth += 1;
                            positional.push_str("/*");
                            index += 2;
                        }
                        (Some('*'), Some('/')) => {
                            depth -= 1;
                            positional.push_str("*/");
                            index += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(&inner), _) => {
                            positional.push(inner);
                            index += 1;
                        }
                        (None, _) => return Err(refuse("a /* comment is not closed")),
                    }
                }
            }
            '$' => {
                let start = index + 1;
                let mut end = start;
                while end < characters.len()
                    && (characters[end].is_ascii_alphanumeric() || characters[end] == '_')
                {
                    end += 1;
                }
                let name: String = characters[start..end].iter().collect();
                if name.is_empty() {
                    return Err(refuse(
                        "a $ names no parameter (dollar-quoted strings are not supported)",
                    ));
                }
                if name.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(refuse(
                        "positional parameters ($1) are not supported: name them ($qty)",
                    ));
                }
                if characters.get(end) == Some(&'$') {
                    return Err(refuse("dollar-quoted strings are not supported"));
                }
                let number = match names.iter().position(|known| *known == name) {
                    Some(position) => position + 1,
                    None => {
                        if names.len() >= PARAMETERS_PER_STEP_MAX {
                            return Err(refuse("too many parameters"));
                        }
                        names.push(name);
                        names.len()
                    }
                };
                positional.push('$');
                positional.push_str(&number.to_string());
                index = end;
            }
            _ => {
                positional.push(character);
                index += 1;
            }
        }
    }
    Ok((positional, names))
}

/// A parameter sent in PostgreSQL's text format, so that the server parses it as whatever
/// type it inferred for the parameter (integer, numeric, text, date, jsonb...) with the
/// same input functions as a literal in SQL.
#[derive(Debug)]
struct TextParameter(Option<String>);

impl ToSql for TextParameter {
    fn to_sql(
        &self,
        _type: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_type: &Type) -> bool {
        true
    }

    fn encode_format(&self, _type: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A call's argument as a parameter: strings as they are, numbers and booleans in their
/// JSON spelling (which PostgreSQL's input functions read), null as NULL, arrays and
/// objects as JSON text (for json/jsonb columns).
fn parameter_of(value: &serde_json::Value) -> TextParameter {
    TextParameter(match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    })
}

/// Why [`PostgresParticipant::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSetupError {
    /// The URL is not a PostgreSQL connection string.
    #[error("not a PostgreSQL URL ({detail}); expected postgres://USER@HOST:PORT/DATABASE")]
    Url {
        /// Why.
        detail: String,
    },
    /// The database refused connections for the whole startup wait.
    #[error("cannot connect to PostgreSQL at {database} (waited {waited_ms} ms): {detail}")]
    Connect {
        /// Host, port and database (no password).
        database: String,
        /// How long it was tried.
        waited_ms: u64,
        /// The last error.
        detail: String,
    },
    /// Prepared transactions are off in this server.
    #[error(
        "PostgreSQL at {database} has max_prepared_transactions = 0, so PREPARE TRANSACTION \
         is disabled: set max_prepared_transactions (at least the {connections} connections \
         dtx opens) in postgresql.conf and restart PostgreSQL"
    )]
    PreparedTransactionsOff {
        /// Host, port and database.
        database: String,
        /// The connections dtx opens.
        connections: usize,
    },
    /// A statement of an action does not fit the database (a missing table or column, a
    /// syntax error, a parameter whose type PostgreSQL cannot infer).
    #[error("action {action:?}, statement {number} ({sql:?}): PostgreSQL says: {detail}")]
    Action {
        /// The action.
        action: String,
        /// Which statement, from 1.
        number: usize,
        /// Its text.
        sql: String,
        /// The database's error.
        detail: String,
    },
    /// A setup query failed.
    #[error("PostgreSQL at {database}: {detail}")]
    Query {
        /// Host, port and database.
        database: String,
        /// The error.
        detail: String,
    },
}

/// One open connection and the statements prepared on it.
struct Connection {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// The connections: at most `settings.connections` open, idle ones reused. Prepares may
/// hold all but a quarter of them (at least one when there are two or more): a prepare
/// can wait for rows that a prepared transaction holds until its commit, so if prepares
/// could take every connection, that commit would wait behind them.
struct Pool {
    config: tokio_postgres::Config,
    settings: PostgresSettings,
    idle: Mutex<Vec<Connection>>,
    places: Semaphore,
    prepare_places: Semaphore,
}

/// What a connection is leased for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// A prepare (may wait for rows; bounded to leave places for finishes).
    Prepare,
    /// A commit, a rollback or the prepared list.
    Finish,
}

/// Connections that only finishes may use, of `connections`.
fn reserved_for_finishes(connections: usize) -> usize {
    if connections < 2 {
        0
    } else {
        (connections / 4).max(1)
    }
}

/// A connection lent out, with its place; [`Pool::give_back`] ends the lease.
struct Lease<'a> {
    connection: Connection,
    _place: tokio::sync::SemaphorePermit<'a>,
    _prepare_place: Option<tokio::sync::SemaphorePermit<'a>>,
}

/// Whether a connection may be used again after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Idle, outside any transaction.
    Good,
    /// Closed or in an unknown state: it is dropped (which closes it).
    Broken,
}

impl Pool {
    async fn open(&self) -> Result<Connection, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection ended");
            }
        });
        client
            .batch_execute(&format!(
                "SET lock_timeout = {}; SET statement_timeout = {}; \
                 SET application_name = 'dtx'",
                self.settings.lock_timeout.as_millis(),
                self.settings.statement_timeout.as_millis()
            ))
            .await?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }

    async fn lease(&self, usage: Use) -> Result<Lease<'_>, ParticipantError> {
        let closed = |_| ParticipantError::new("the participant is shutting down");
        let prepare_place = match usage {
            Use::Prepare => Some(self.prepare_places.acquire().await.map_err(closed)?),
            Use::Finish => None,
        };
        let place = self.places.acquire().await.map_err(closed)?;
        let reused = {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            loop {
                match idle.pop() {
                    Some(connection) if connection.client.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let connection = match reused {
            Some(connection) => connection,
            None => self.open().await.map_err(|error| {
                ParticipantError::new(format!("cannot connect to PostgreSQL: {error}"))
            })?,
        };
        Ok(Lease {
            connection,
            _place: place,
            _prepare_place: prepare_place,
        })
    }

    /// Ends a lease: a good connection waits for the next call, a broken one is closed.
    fn give_back(&self, lease: Lease<'_>, health: Health) {
        if health == Health::Good && !lease.connection.client.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .push(lease.connection);
        }
    }
}

impl Connection {
    /// The statement for `sql`, prepared once per connection.
    async fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// How a database error counts.
enum Failure {
    /// The transaction is refused, with this reason.
    Refused(String),
    /// The database could not answer now.
    Unavailable(String),
}

fn classify(action: &str, error: &tokio_postgres::Error) -> Failure {
    let Some(database_error) = error.as_db_error() else {
        return Failure::Unavailable(format!("PostgreSQL: {error}"));
    };
    let code = database_error.code().code();
    if ["08", "53", "57P", "58"]
        .iter()
        .any(|class| code.starts_with(class))
    {
        return Failure::Unavailable(format!("PostgreSQL: {} ({code})", database_error.message()));
    }
    let mut reason = format!("{action}: {}", database_error.message());
    if let Some(detail) = database_error.detail() {
        reason.push_str(" (");
        reason.push_str(detail);
        reason.push(')');
    }
    if *database_error.code() == SqlState::LOCK_NOT_AVAILABLE {
        reason.push_str(" [a row it needs is held by another transaction]");
    }
    Failure::Refused(cut_text(&reason, REFUSAL_TEXT_MAX_BYTES))
}

/// The SQL literal of `text` (standard_conforming_strings: only `'` is doubled).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The gids' suffix for a database, and the gid of a transaction.
fn gid(txn: TxnId, database: &str) -> String {
    format!("{GID_PREFIX}{txn}@{database}")
}

/// The transaction of a gid of this database, if it is one of dtx's.
fn txn_of_gid(gid: &str, database: &str) -> Option<TxnId> {
    let rest = gid.strip_prefix(GID_PREFIX)?;
    let (txn, of) = rest.split_once('@')?;
    if of != database {
        return None;
    }
    TxnId::from_str(txn).ok()
}

/// Transactions rolled back here, remembered so that a late prepare of one is refused.
#[derive(Default)]
struct RolledBack {
    set: HashSet<TxnId>,
    order: VecDeque<TxnId>,
}

impl RolledBack {
    fn insert(&mut self, txn: TxnId) {
        if self.set.insert(txn) {
            self.order.push_back(txn);
            if self.order.len() > ROLLED_BACK_REMEMBERED_MAX {
                if let Some(oldest) = self.order.pop_front() {
                    self.set.remove(&oldest);
                }
            }
        }
    }
}

/// A service's PostgreSQL database as a dtx participant (see the module doc).
pub struct PostgresParticipant {
    pool: Pool,
    actions: Actions,
    /// `current_database()`, part of every gid.
    database: String,
    /// Host, port and database, for messages.
    describe: String,
    rolled_back: Mutex<RolledBack>,
    /// One turn per transaction: a finish waits for a prepare of the same transaction
    /// under way, so that a rollback never runs before the PREPARE it must undo.
    turns: Mutex<HashMap<TxnId, Arc<tokio::sync::Mutex<()>>>>,
}

/// One call of a prepare, resolved before the database is touched.
struct Planned<'a> {
    action: &'a str,
    step: &'a Step,
    arguments: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl PostgresParticipant {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`),
    /// waiting up to `actions.settings().startup_wait` for it to accept connections, checks
    /// that prepared transactions are on and that every statement of every action prepares
    /// (the tables and columns it names exist, its parameters' types can be inferred).
    pub async fn connect(
        url: &str,
        actions: Actions,
    ) -> Result<PostgresParticipant, PostgresSetupError> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|error| PostgresSetupError::Url {
                detail: error.to_string(),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        let describe = describe(&config);
        let settings = actions.settings().clone();
        let pool = Pool {
            config,
            settings: settings.clone(),
            idle: Mutex::new(Vec::new()),
            places: Semaphore::new(settings.connections),
            prepare_places: Semaphore::new(
                settings.connections - reserved_for_finishes(settings.connections),
            ),
        };
        let started = Instant::now();
        let mut connection = loop {
            match pool.open().await {
                Ok(connection) => break connection,
                Err(error) => {
                    if started.elapsed() >= settings.startup_wait {
                        return Err(PostgresSetupError::Connect {
                            database: describe,
                            waited_ms: u64::try_from(started.elapsed().as_millis())
                                .unwrap_or(u64::MAX),
                            detail: error.to_string(),
                        });
                    }
                    tracing::info!(database = %describe, %error, "waiting for PostgreSQL");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let query_error = |error: tokio_postgres::Error| PostgresSetupError::Query {
            database: describe.clone(),
            detail: error.to_string(),
        };
        let row = connection
            .client
            .query_one(
                "SELECT current_database(), current_setting('max_prepared_transactions')",
                &[],
            )
            .await
            .map_err(query_error)?;
        let database: String = row.try_get(0).map_err(query_error)?;
        let prepared_max: String = row.try_get(1).map_err(query_error)?;
        if prepared_max.trim() == "0" {
            return Err(PostgresSetupError::PreparedTransactionsOff {
                database: describe,
                connections: settings.connections,
            });
        }
        for (action, steps) in &actions.actions {
            for (index, step) in steps.iter().enumerate() {
                if let Err(error) = connection.client.prepare(&step.positional).await {
                    let detail = match error.as_db_error() {
                        Some(database_error) => database_error.message().to_string(),
                        None => error.to_string(),
                    };
                    return Err(PostgresSetupError::Action {
                        action: action.clone(),
                        number: index + 1,
                        sql: step.sql.clone(),
                        detail,
                    });
                }
            }
        }
        connection.statements.clear();
        pool.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(connection);
        tracing::info!(database = %describe, actions = actions.actions.len(), "PostgreSQL participant ready");
        Ok(PostgresParticipant {
            pool,
            actions,
            database,
            describe,
            rolled_back: Mutex::new(RolledBack::default()),
            turns: Mutex::new(HashMap::new()),
        })
    }

    /// Host, port and database (no password).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The database's name (`current_database()`).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The gid this participant prepares `txn` under.
    pub fn gid(&self, txn: TxnId) -> String {
        gid(txn, &self.database)
    }

    /// Waits for `txn`'s turn (see `turns`); the turn ends when the guard drops.
    async fn turn(&self, txn: TxnId) -> TurnGuard<'_> {
        let lock = {
            let mut turns = self
                .turns
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            Arc::clone(turns.entry(txn).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        TurnGuard {
            participant: self,
            txn,
            lock,
            guard: Some(guard),
        }
    }

    /// The calls of `operations`, checked against the actions, or the refusal.
    fn plan<'a>(&'a self, operations: &'a [Operation]) -> Result<Vec<Planned<'a>>, String> {
        let mut planned = Vec::new();
        for operation in operations {
            let Operation::Call { action, args, .. } = operation else {
                return Err(format!(
                    "a PostgreSQL participant runs calls only, not {} of {}",
                    operation_kind(operation),
                    operation.key().as_str()
                ));
            };
            let Some(steps) = self.actions.actions.get(action) else {
                let known: Vec<&str> = self.actions.names().collect();
                return Err(format!(
                    "no action {action:?} here (actions: {})",
                    known.join(", ")
                ));
            };
            let arguments = match serde_json::from_slice::<serde_json::Value>(&args.0) {
                Ok(serde_json::Value::Object(map)) => Arc::new(map),
                Ok(_) | Err(_) => {
                    return Err(format!("{action}: the arguments are not a JSON object"))
                }
            };
            for step in steps {
                if let Some(missing) = step
                    .parameters
                    .iter()
                    .find(|name| !arguments.contains_key(name.as_str()))
                {
                    return Err(format!("{action}: argument {missing:?} is missing"));
                }
                planned.push(Planned {
                    action,
                    step,
                    arguments: Arc::clone(&arguments),
                });
            }
        }
        Ok(planned)
    }

    async fn prepare_transaction(
        &self,
        txn: TxnId,
        operations: &[Operation],
    ) -> Result<PrepareAnswer, ParticipantError> {
        let _turn = self.turn(txn).await;
        if self.aborted(txn) {
            return Ok(refused(format!("{txn} was aborted before it was prepared")));
        }
        let planned = match self.plan(operations) {
            Ok(planned) => planned,
            Err(reason) => return Ok(refused(reason)),
        };
        let mut lease = self.pool.lease(Use::Prepare).await?;
        // The wait for a connection may be long under load: a transaction decided
        // meanwhile (its rollback is marked before it waits for this turn) is not run.
        if self.aborted(txn) {
            self.pool.give_back(lease, Health::Good);
            return Ok(refused(format!("{txn} was aborted before it was prepared")));
        }
        let (answer, health) = self
            .prepare_on(&mut lease.connection, &self.gid(txn), &planned)
            .await;
        self.pool.give_back(lease, health);
        answer
    }

    /// Runs the planned calls in one local transaction on `connection` and prepares it as
    /// `gid`.
    async fn prepare_on(
        &self,
        connection: &mut Connection,
        gid: &str,
        planned: &[Planned<'_>],
    ) -> (Result<PrepareAnswer, ParticipantError>, Health) {
        let unavailable = |detail: String| (Err(ParticipantError::new(detail)), Health::Broken);
        // Every statement prepared first (once per connection), so that the check, BEGIN and
        // all the calls' statements go out in one flight: one round trip, then PREPARE.
        let check = match connection.statement(PREPARED_CHECK).await {
            Ok(statement) => statement,
            Err(error) => return unavailable(format!("PostgreSQL: {error}")),
        };
        let mut statements = Vec::with_capacity(planned.len());
        for call in planned {
            match connection.statement(&call.step.positional).await {
                Ok(statement) => statements.push(statement),
                Err(error) => {
                    return match classify(call.action, &error) {
                        Failure::Refused(reason) => (Ok(refused(reason)), Health::Good),
                        Failure::Unavailable(detail) => unavailable(detail),
                    }
                }
            }
        }
        let parameters: Vec<Vec<TextParameter>> = planned
            .iter()
            .map(|call| {
                call.step
                    .parameters
                    .iter()
                    .map(|name| {
                        parameter_of(
                            call.arguments
                                .get(name.as_str())
                                .unwrap_or(&serde_json::Value::Null),
                        )
                    })
                    .collect()
            })
            .collect();
        let references: Vec<Vec<&(dyn ToSql + Sync)>> = parameters
            .iter()
            .map(|call| {
                call.iter()
                    .map(|parameter| parameter as &(dyn ToSql + Sync))
                    .collect()
            })
            .collect();
        let client = &connection.client;
        // Futures send their request when first polled, and `join` polls them in order:
        // the server runs the check, BEGIN, then the statements, in this order.
        let (checked, (begun, executed)) = futures::future::join(
            client.query_one(&check, &[&gid]),
            futures::future::join(
                client.batch_execute("BEGIN"),
                futures::future::join_all(
                    statements
                        .iter()
                        .zip(&references)
                        .map(|(statement, parameters)| client.execute(statement, parameters)),
                ),
            ),
        )
        .await;
        match checked.and_then(|row| row.try_get::<_, i64>(0)) {
            // A repeated prepare answers the same again (its statements, run again here,
            // are rolled back).
            Ok(count) if count > 0 => {
                let health = roll_back(connection).await;
                return (Ok(PrepareAnswer::Prepared), health);
            }
            Ok(_) => {}
            Err(error) => return unavailable(format!("PostgreSQL: {error}")),
        }
        if let Err(error) = begun {
            return unavailable(format!("PostgreSQL: {error}"));
        }
        for (call, outcome) in planned.iter().zip(executed) {
            let refusal = match outcome {
                Ok(rows) => match call.step.rows {
                    Some(expected) if rows != expected => match &call.step.refuse {
                        Some(text) => fill(text, &call.arguments),
                        None => format!(
                            "{}: {rows} rows changed where {expected} must be ({})",
                            call.action,
                            cut_text(&call.step.sql, 120)
                        ),
                    },
                    _ => continue,
                },
                // The first failure; the statements after it fail as "transaction aborted".
                Err(error) => match classify(call.action, &error) {
                    Failure::Refused(reason) => reason,
                    Failure::Unavailable(detail) => return unavailable(detail),
                },
            };
            let health = roll_back(connection).await;
            return (Ok(refused(refusal)), health);
        }
        match connection
            .client
            .batch_execute(&format!("PREPARE TRANSACTION {}", literal(gid)))
            .await
        {
            Ok(()) => (Ok(PrepareAnswer::Prepared), Health::Good),
            Err(error) => match classify("prepare", &error) {
                // A failed PREPARE TRANSACTION rolls the transaction back.
                Failure::Refused(reason) => (Ok(refused(reason)), Health::Good),
                // Whether PostgreSQL prepared it is unknown: the node votes Aborted and asks
                // rollback, which removes it if it was.
                Failure::Unavailable(detail) => unavailable(detail),
            },
        }
    }

    async fn finish_transaction(
        &self,
        txn: TxnId,
        outcome: Outcome,
    ) -> Result<(), ParticipantError> {
        if outcome == Outcome::Abort {
            // Marked before the turn: a prepare of it still waiting for a connection
            // refuses instead of running (see `prepare_transaction`).
            self.rolled_back
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(txn);
        }
        let _turn = self.turn(txn).await;
        let lease = self.pool.lease(Use::Finish).await?;
        let command = match outcome {
            Outcome::Commit => "COMMIT PREPARED",
            Outcome::Abort => "ROLLBACK PREPARED",
        };
        let sql = format!("{command} {}", literal(&self.gid(txn)));
        let result = lease.connection.client.batch_execute(&sql).await;
        let health = match &result {
            Err(error) if error.as_db_error().is_none() => Health::Broken,
            _ => Health::Good,
        };
        self.pool.give_back(lease, health);
        match result {
            Ok(()) => {}
            // Finished before (or, for a rollback, never prepared).
            Err(error) if error.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
            Err(error) => {
                return Err(ParticipantError::new(format!(
                    "{command} of {txn} at {}: {error}",
                    self.describe
                )))
            }
        }
        Ok(())
    }

    /// True once `txn` is known to be aborted here (its rollback was asked).
    fn aborted(&self, txn: TxnId) -> bool {
        self.rolled_back
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .set
            .contains(&txn)
    }

    async fn list_prepared(&self) -> Result<Vec<TxnId>, ParticipantError> {
        let lease = self.pool.lease(Use::Finish).await?;
        let result = lease
            .connection
            .client
            .query(
                "SELECT gid FROM pg_prepared_xacts \
                 WHERE database = current_database() AND starts_with(gid, $1)",
                &[&GID_PREFIX],
            )
            .await;
        let health = match &result {
            Err(error) if error.as_db_error().is_none() => Health::Broken,
            _ => Health::Good,
        };
        self.pool.give_back(lease, health);
        let rows = result.map_err(|error| ParticipantError::new(format!("PostgreSQL: {error}")))?;
        let mut prepared = Vec::with_capacity(rows.len());
        for row in rows {
            let Ok(gid) = row.try_get::<_, String>(0) else {
                continue;
            };
            match txn_of_gid(&gid, &self.database) {
                Some(txn) => prepared.push(txn),
                None => tracing::warn!(
                    %gid,
                    "a prepared transaction with dtx's prefix that is not dtx's: left alone"
                ),
            }
        }
        Ok(prepared)
    }
}

/// Ends the connection's open transaction; a connection that cannot is broken.
async fn roll_back(connection: &Connection) -> Health {
    match connection.client.batch_execute("ROLLBACK").await {
        Ok(()) => Health::Good,
        Err(_) => Health::Broken,
    }
}

/// A refusal, cut to what reaches the client.
fn refused(reason: String) -> PrepareAnswer {
    PrepareAnswer::Refused {
        reason: cut_text(&reason, REFUSAL_TEXT_MAX_BYTES),
    }
}

/// A transaction's turn; the entry leaves the map with its last user.
struct TurnGuard<'a> {
    participant: &'a PostgresParticipant,
    txn: TxnId,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.guard = None;
        let mut turns = self
            .participant
            .turns
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // The map's reference and ours: nobody else waits for this turn.
        if Arc::strong_count(&self.lock) == 2 {
            turns.remove(&self.txn);
        }
    }
}

/// `text` with each `$name` replaced by that argument (strings without quotes).
fn fill(text: &str, arguments: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        filled.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        let length = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        match arguments.get(&after[..length]) {
            Some(serde_json::Value::String(value)) if length > 0 => filled.push_str(value),
            Some(value) if length > 0 => filled.push_str(&value.to_string()),
            _ => filled.push_str(&rest[position..position + 1 + length]),
        }
        rest = &after[length..];
    }
    filled.push_str(rest);
    filled
}

fn operation_kind(operation: &Operation) -> &'static str {
    match operation {
        Operation::Read { .. } => "a read",
        Operation::ReadForUpdate { .. } => "a read for update",
        Operation::Write { .. } => "a write",
        Operation::Update { .. } => "an update",
        Operation::Delete { .. } => "a delete",
        Operation::Call { .. } => "a call",
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

impl Participant for PostgresParticipant {
    fn prepare<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<PrepareAnswer, ParticipantError>> {
        Box::pin(self.prepare_transaction(txn, operations))
    }

    fn finish(&self, txn: TxnId, outcome: Outcome) -> BoxFuture<'_, Result<(), ParticipantError>> {
        Box::pin(self.finish_transaction(txn, outcome))
    }

    fn prepared(&self) -> BoxFuture<'_, Result<Vec<TxnId>, ParticipantError>> {
        Box::pin(self.list_prepared())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_become_positional_and_repeat_their_number() {
        let (sql, names) =
            name_parameters("UPDATE stock SET qty = qty - $qty WHERE sku = $sku AND qty >= $qty")
                .unwrap();
        assert_eq!(
            sql,
            "UPDATE stock SET qty = qty - $1 WHERE sku = $2 AND qty >= $1"
        );
        assert_eq!(names, vec!["qty", "sku"]);
    }

    #[test]
    fn literals_identifiers_and_comments_keep_their_dollars() {
        let (sql, names) = name_parameters(
            "SELECT '$a', \"$b\", E'it\\'s $c', 'x''$d' -- $e\n /* $f /* $g */ */ , $h",
        )
        .unwrap();
        assert_eq!(names, vec!["h"]);
        assert!(sql.ends_with(", $1"), "{sql}");
        assert!(sql.contains("'$a'") && sql.contains("-- $e"));
    }

    #[test]
    fn positional_parameters_dollar_quotes_and_open_quotes_are_refused() {
        for bad in [
            "SELECT $1",
            "SELECT $tag$x$tag$",
            "SELECT $",
            "SELECT 'open",
            "SELECT /* open",
        ] {
            assert!(name_parameters(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_actions_file_parses_both_shapes_and_settings() {
        let actions = Actions::parse(
            r#"
            [settings]
            connections = 4
            lock_timeout = "500ms"

            [actions.reserve]
            sql = "UPDATE stock SET qty = qty - $qty WHERE sku = $sku AND qty >= $qty"
            rows = 1
            refuse = "not enough $sku"

            [[actions.place.steps]]
            sql = "INSERT INTO orders (id) VALUES ($order)"
            [[actions.place.steps]]
            sql = "UPDATE totals SET n = n + 1"
            rows = 1
            "#,
        )
        .unwrap();
        assert_eq!(actions.settings().connections, 4);
        assert_eq!(actions.settings().lock_timeout, Duration::from_millis(500));
        assert_eq!(
            actions.names().collect::<Vec<_>>(),
            vec!["place", "reserve"]
        );
        assert_eq!(actions.actions["place"].len(), 2);
        assert_eq!(actions.actions["reserve"][0].rows, Some(1));
    }

    #[test]
    fn bad_actions_files_say_what_is_wrong() {
        let cases = [
            ("", "no actions"),
            ("[actions.a]\nrows = 1", "neither sql nor steps"),
            (
                "[actions.a]\nsql = \"SELECT 1\"\nsteps = [{ sql = \"SELECT 2\" }]",
                "both",
            ),
            ("[actions.a]\nsql = \"SELECT $1\"", "positional"),
            (
                "[actions.a]\nsql = \"SELECT 1\"\ncolour = 3",
                "unknown field",
            ),
            (
                "[settings]\nconnections = 0\n[actions.a]\nsql = \"SELECT 1\"",
                "connections",
            ),
            (
                "[settings]\nlock_timeout = \"soon\"\n[actions.a]\nsql = \"SELECT 1\"",
                "lock_timeout",
            ),
        ];
        for (text, expected) in cases {
            let error = Actions::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn refusals_fill_in_the_arguments() {
        let arguments: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"sku": "apple", "qty": 3}"#).unwrap();
        assert_eq!(
            fill("only $qty of $sku? $none $", &arguments),
            "only 3 of apple? $none $"
        );
    }

    #[test]
    fn finishes_keep_a_quarter_of_the_connections() {
        assert_eq!(reserved_for_finishes(1), 0);
        assert_eq!(reserved_for_finishes(2), 1);
        assert_eq!(reserved_for_finishes(16), 4);
        assert_eq!(reserved_for_finishes(40), 10);
    }

    #[test]
    fn gids_name_the_transaction_and_the_database() {
        let txn = TxnId::from_str("t7.42").unwrap();
        let gid = gid(txn, "shop");
        assert_eq!(gid, "dtx-t7.42@shop");
        assert_eq!(txn_of_gid(&gid, "shop"), Some(txn));
        assert_eq!(txn_of_gid(&gid, "other"), None);
        assert_eq!(txn_of_gid("dtx-nonsense@shop", "shop"), None);
        assert_eq!(literal("a'b"), "'a''b'");
    }

    #[test]
    fn arguments_become_text_parameters() {
        assert_eq!(parameter_of(&serde_json::json!(3)).0.as_deref(), Some("3"));
        assert_eq!(
            parameter_of(&serde_json::json!("x'y")).0.as_deref(),
            Some("x'y")
        );
        assert_eq!(parameter_of(&serde_json::json!(null)).0, None);
        assert_eq!(
            parameter_of(&serde_json::json!({"a": 1})).0.as_deref(),
            Some("{\"a\":1}")
        );
    }
}
