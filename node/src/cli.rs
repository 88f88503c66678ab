//! The `dtx` command line. It lives in the library so that test crates can build the very
//! same CLI into their own binary (`dtx-tests` does); `src/bin/dtx.rs` only calls [`main`].
//! As binary code it reports errors with `anyhow`.

use crate::bench::{self, BenchOptions, Progress, Workload};
use crate::client::{Client, CommitError};
use crate::config::{add_node, init, parse_control, ClusterConfig};
use crate::control::{self, ControlError, StatusReport};
use crate::daemon::{
    self, DaemonOptions, CRASH_AT_GROUP_COMMIT_ENV, DRAIN_TIMEOUT, FAULT_FILE_ENV,
};
use crate::datadir::{OpenMode, WAL_DIR};
use crate::demo::{self, DemoOptions};
use crate::links::{ClientBudget, TransportKind};
use crate::ops::parse_operation;
use crate::users::{add_user, remove_user, Users};
use crate::wal::verify::{hexdump as hexdump_file, verify};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dtx_protocol::{ClientConfig, DetectorConfig, Key, NodeId, Operation, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// dtx: decentralized transactions with Faster Paxos Commit.
#[derive(Debug, Parser)]
#[command(name = "dtx", version, about)]
pub struct Cli {
    /// Act as this user of users.toml (client commands; default: $DTX_USER, else admin).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `dtx wal ...`.
#[derive(Debug, Subcommand)]
pub enum WalAction {
    /// Check every checkpoint and segment of a data directory's log (read only): headers,
    /// batches, records, and the first problem of each file with its offset and whether it
    /// is a torn tail (cut at the next start) or corruption (the node refuses to start).
    /// Exit code 0 healthy, 1 corrupt.
    Verify {
        /// The data directory (or its `wal` directory).
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also print the bytes around this offset of FILE (a file name in the log).
        #[arg(long, value_names = ["FILE", "OFFSET"], num_args = 2)]
        hexdump: Option<Vec<String>>,
    },
}

/// `dtx user ...`.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user: a key NAME.key (0600) next to the config and an entry in users.toml.
    /// Running nodes pick it up at once.
    Add {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// The user's name.
        name: String,
        /// A key prefix the user may read and write (repeat; "" allows every key).
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// A key prefix the user may only read (repeat).
        #[arg(long = "read")]
        read: Vec<String>,
    },
    /// Remove a user: running nodes end its sessions at once.
    Remove {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// The user's name.
        name: String,
    },
    /// List the users and their permissions.
    List {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
    },
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write node keys and a cluster.toml for a local cluster on 127.0.0.1.
    Init {
        /// Number of data nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
        /// Failures tolerated per transaction (2F+1 acceptors).
        #[arg(long, default_value_t = 1)]
        f: u32,
        /// Node names, comma-separated (default n1..nN).
        #[arg(long, value_delimiter = ',')]
        names: Option<Vec<String>>,
    },
    /// Run a data node.
    Node {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// This node's name in the config.
        #[arg(long)]
        name: String,
        /// Directory for the write-ahead log.
        #[arg(long)]
        data_dir: PathBuf,
        /// Do not fsync the log (experiments only: acknowledged data can be lost).
        #[arg(long)]
        no_fsync: bool,
        /// Checkpoint the log after this many appended bytes.
        #[arg(long)]
        checkpoint_bytes: Option<u64>,
        /// How to send frames to peers (the node accepts both).
        #[arg(long, value_enum, default_value_t = TransportKind::Stream)]
        transport: TransportKind,
        /// Serve /metrics (Prometheus), /status and /drain here (loopback only; default:
        /// the node's `control` address in the config, if any).
        #[arg(long)]
        metrics: Option<String>,
        /// Discover peers on the LAN with mDNS (only in builds with the `mdns` feature).
        #[arg(long)]
        mdns: bool,
        /// Failure detector: time between heartbeats (e.g. 100ms).
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        heartbeat_interval: Duration,
        /// Failure detector: suspect a member once phi exceeds this.
        #[arg(long, default_value_t = 8.0)]
        phi_threshold: f64,
        /// Run without the failure detector (recovery then waits for timeouts).
        #[arg(long)]
        no_detector: bool,
        /// How long an RM waits for a decision before it leads recovery (default 200ms).
        #[arg(long, value_parser = parse_duration)]
        decision_timeout: Option<Duration>,
        /// Listen here instead of at the config's address (e.g. /ip4/127.0.0.1/tcp/0 if
        /// the configured port is taken): the others learn it from this node's
        /// heartbeats.
        #[arg(long)]
        listen: Option<libp2p::Multiaddr>,
        /// Serve every peer as a client with every permission, without users.toml
        /// (experiments only: anyone who can reach the port can write anything).
        #[arg(long)]
        insecure: bool,
        /// Messages per second one client may send this node (a token bucket).
        #[arg(long, default_value_t = 20_000)]
        client_rate: u32,
        /// Messages one client may send at once after a quiet spell.
        #[arg(long, default_value_t = 40_000)]
        client_burst: u32,
        /// First start of this node with this data directory (it must be empty or
        /// missing; `dtx init` prepares the default ones, so this is for others).
        #[arg(long, conflicts_with = "reinit")]
        new: bool,
        /// Start afresh after this node's data was lost (a wiped, damaged or replaced data
        /// directory): what is there is moved aside, the node's committed rows are gone,
        /// and it takes no acceptor duty until the other data nodes confirm that no
        /// transaction it may have voted on is still open.
        #[arg(long)]
        reinit: bool,
        /// Most bytes of committed rows this node may hold (e.g. 10GiB, 512MiB; default: no
        /// quota). Past it, writes that would grow the data abort with StorageFull; reads,
        /// deletes and commits of prepared transactions still work.
        #[arg(long, value_parser = parse_bytes)]
        storage_quota: Option<u64>,
    },
    /// Inspect a node's write-ahead log without changing it.
    Wal {
        /// What to do.
        #[command(subcommand)]
        action: WalAction,
    },
    /// Manage the users that may use the cluster (users.toml).
    User {
        /// What to do.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the cluster as one node sees it: members, roles, phi, suspicion, in-doubt
    /// transactions and their age.
    Status {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// The node to ask (default: the first that answers).
        #[arg(long)]
        name: Option<String>,
        /// Print the JSON report instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Append a service or acceptor-only node to cluster.toml (key, ports, next id), to
    /// join the running cluster: start it with `dtx node`; running nodes re-read the file.
    AddNode {
        /// The cluster config to append to.
        #[arg(long)]
        config: PathBuf,
        /// The new node's name (a service node owns every key `NAME/...`).
        #[arg(long)]
        name: String,
        /// `service` or `acceptor` (both own only their own namespace).
        #[arg(long, default_value = "service")]
        role: String,
    },
    /// Ask node NAME to stop taking new transactions, finish its open ones and exit.
    Drain {
        /// The node to drain.
        name: String,
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// Return once the node has started draining, without waiting for it to exit.
        #[arg(long)]
        no_wait: bool,
    },
    /// Write one key (a one-key transaction).
    Put {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Read one key (a one-shot read transaction).
    Get {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// The key.
        key: String,
    },
    /// Delete one key.
    Delete {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// The key.
        key: String,
    },
    /// Run one transaction: 'write KEY VALUE', 'update KEY VALUE', 'delete KEY', 'read KEY'.
    Txn {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// The operations, in order.
        #[arg(required = true)]
        operations: Vec<String>,
    },
    /// Closed-loop load; the last line is a JSON summary with --json.
    Bench {
        /// The cluster config.
        #[arg(long)]
        config: PathBuf,
        /// Concurrent closed-loop workers.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// How long to run (e.g. 20s, 500ms, 2m).
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// The workload.
        #[arg(long, value_enum, default_value_t = Workload::Bank)]
        workload: Workload,
        /// Print a JSON summary as the last line.
        #[arg(long)]
        json: bool,
        /// Write a Jepsen/Elle JSON-lines history (register workload).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Accounts (bank) or keys (register).
        #[arg(long)]
        keys: Option<usize>,
        /// Skip loading initial data.
        #[arg(long)]
        no_setup: bool,
        /// How the client sends frames.
        #[arg(long, value_enum, default_value_t = TransportKind::Stream)]
        transport: TransportKind,
    },
    /// A 5-node local cluster, orders and transfers, a node killed and restarted, audits.
    Demo {
        /// How long the workload runs.
        #[arg(long, default_value = "12s", value_parser = parse_duration)]
        duration: Duration,
        /// Closed-loop workers per workload.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Keep the cluster directory (logs, keys) afterwards.
        #[arg(long)]
        keep: bool,
    },
}

/// Parses `20s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (try 20s, 500ms or 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s or m)"
            ))
        }
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Environment variable: tokio worker threads per process (0 or unset: one thread, the
/// current-thread runtime; on a small machine running several nodes, fewer threads mean
/// fewer context switches).
pub const WORKER_THREADS_ENV: &str = "DTX_WORKER_THREADS";

fn runtime_builder() -> tokio::runtime::Builder {
    let threads: usize = std::env::var(WORKER_THREADS_ENV)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    }
}

/// Entry point of the `dtx` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Node { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute_as(cli.command, cli.user)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn connect(config: &Path, user: Option<&str>) -> anyhow::Result<(ClusterConfig, Client)> {
    let cluster = ClusterConfig::load(config)?;
    let client = connect_with(&cluster, user, TransportKind::default()).await?;
    Ok((cluster, client))
}

async fn connect_with(
    cluster: &ClusterConfig,
    user: Option<&str>,
    transport: TransportKind,
) -> anyhow::Result<Client> {
    let credential = cluster.credential(user)?;
    if credential.is_none() {
        tracing::warn!("no user key found next to the config: connecting without a user (a secure cluster will refuse)");
    }
    let protocol = ClientConfig::new(NodeId(0), cluster.cluster.clone(), 0);
    Client::connect_as(cluster, credential, protocol, transport)
        .await
        .context("cannot join the cluster")
}

/// Runs one subcommand as the default user.
pub async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    execute_as(command, None).await
}

/// Runs one subcommand; client commands act as `user` (default: `$DTX_USER`, else
/// `admin`).
pub async fn execute_as(command: Command, user: Option<String>) -> anyhow::Result<ExitCode> {
    let user = user.as_deref();
    match command {
        Command::Init {
            nodes,
            dir,
            f,
            names,
        } => {
            let path = init(&dir, nodes, names, f)?;
            println!("wrote {} ({nodes} nodes, F={f})", path.display());
            let config = ClusterConfig::load(&path)?;
            for node in &config.nodes {
                println!(
                    "  dtx node --config {} --name {} --data-dir {}",
                    path.display(),
                    node.name,
                    dir.join(&node.name).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Node {
            config,
            name,
            data_dir,
            no_fsync,
            checkpoint_bytes,
            transport,
            metrics,
            mdns,
            heartbeat_interval,
            phi_threshold,
            no_detector,
            decision_timeout,
            listen,
            insecure,
            client_rate,
            client_burst,
            new,
            reinit,
            storage_quota,
        } => {
            let config_path = config;
            let config = ClusterConfig::load(&config_path)?;
            let control = match metrics {
                Some(text) => Some(parse_control(&name, &text)?),
                None => config.node_named(&name).and_then(|node| node.control),
            };
            if heartbeat_interval.is_zero() || !(phi_threshold > 0.0 && phi_threshold.is_finite()) {
                bail!(
                    "--heartbeat-interval must be positive and --phi-threshold a positive number"
                );
            }
            let detector = (!no_detector).then(|| DetectorConfig {
                interval: heartbeat_interval,
                phi_threshold,
                ..DetectorConfig::default()
            });
            let crash_at_group_commit = match std::env::var(CRASH_AT_GROUP_COMMIT_ENV) {
                Ok(text) => Some(text.parse().with_context(|| {
                    format!("{CRASH_AT_GROUP_COMMIT_ENV}={text:?} is not a number")
                })?),
                Err(_) => None,
            };
            daemon::run(DaemonOptions {
                config_path: Some(config_path),
                config,
                name,
                data_dir,
                fsync: !no_fsync,
                checkpoint_after_bytes: checkpoint_bytes,
                fault_file: std::env::var_os(FAULT_FILE_ENV).map(PathBuf::from),
                crash_at_group_commit,
                transport,
                control,
                mdns,
                detector,
                decision_timeout,
                listen,
                insecure,
                client_budget: ClientBudget {
                    messages_per_second: f64::from(client_rate.max(1)),
                    burst_messages: f64::from(client_burst.max(1)),
                },
                storage_quota_bytes: storage_quota,
                data_dir_mode: if reinit {
                    OpenMode::Reinit
                } else if new {
                    OpenMode::New
                } else {
                    OpenMode::Existing
                },
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AddNode { config, name, role } => {
            let entry = add_node(&config, &name, &role)?;
            println!(
                "added {} (id {}, {}, {}) to {}",
                entry.name,
                entry.id,
                role,
                entry.address,
                config.display()
            );
            println!(
                "  start it: dtx node --config {} --name {} --data-dir DIR",
                config.display(),
                entry.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, name, json } => {
            let cluster = ClusterConfig::load(&config)?;
            let report = status_of(&cluster, name.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain {
            name,
            config,
            no_wait,
        } => {
            let cluster = ClusterConfig::load(&config)?;
            let address = control_address(&cluster, &name)?;
            let token_path = cluster.control_token_path();
            let token = control::read_token_file(&token_path).with_context(|| {
                format!(
                    "POST /drain needs the control token {} (written by dtx init)",
                    token_path.display()
                )
            })?;
            let report = control::start_drain(address, &token).await?;
            println!(
                "{name} is draining: {} transactions open",
                report.open_transactions
            );
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            // The node exits once its open transactions are finished; its endpoint then
            // stops answering.
            let deadline = std::time::Instant::now() + DRAIN_TIMEOUT + Duration::from_secs(10);
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match control::fetch_status(address).await {
                    Ok(report) => {
                        if std::time::Instant::now() > deadline {
                            bail!(
                                "{name} still has {} transactions open after {:?}",
                                report.open_transactions,
                                DRAIN_TIMEOUT
                            );
                        }
                    }
                    Err(ControlError::Unreachable { .. }) => {
                        println!("{name} drained and left");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Command::Put { config, key, value } => {
            let operation = Operation::Write {
                key: Key::new(key),
                value: Value::new(value.into_bytes()),
            };
            run_transaction(&config, user, vec![operation]).await
        }
        Command::Get { config, key } => {
            let operation = Operation::Read {
                key: Key::new(key),
                expected: None,
            };
            run_transaction(&config, user, vec![operation]).await
        }
        Command::Delete { config, key } => {
            run_transaction(
                &config,
                user,
                vec![Operation::Delete { key: Key::new(key) }],
            )
            .await
        }
        Command::Txn { config, operations } => {
            let operations = operations
                .iter()
                .map(|text| parse_operation(text))
                .collect::<Result<Vec<_>, _>>()?;
            run_transaction(&config, user, operations).await
        }
        Command::Bench {
            config,
            clients,
            duration,
            workload,
            json,
            history,
            keys,
            no_setup,
            transport,
        } => {
            let cluster = ClusterConfig::load(&config)?;
            let client = connect_with(&cluster, user, transport).await?;
            let mut options = BenchOptions::new(workload);
            options.clients = clients;
            options.duration = duration;
            options.history = history;
            options.setup = !no_setup;
            if let Some(keys) = keys {
                options.keys = keys;
            }
            let report =
                bench::run(&client, &cluster, &options, Arc::new(Progress::default())).await?;
            println!(
                "{:?} with {} clients for {:.1}s: {} committed, {} aborted, {} unknown; {:.0} tps; p50 {:.2} ms, p99 {:.2} ms",
                report.workload, report.clients, report.duration_s, report.committed,
                report.aborted, report.errors, report.tps, report.p50_ms, report.p99_ms
            );
            if let (Some(before), Some(after)) = (report.total_before, report.total_after) {
                println!("money: total before {before}, after {after}");
                if before != after {
                    eprintln!("error: money was not conserved");
                    return Ok(ExitCode::from(1));
                }
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::User { action } => user_command(action),
        Command::Wal { action } => wal_command(action),
        Command::Demo {
            duration,
            workers,
            keep,
        } => {
            if workers == 0 {
                bail!("--workers must be at least 1");
            }
            let executable = std::env::current_exe().context("cannot locate the dtx executable")?;
            let checks = demo::run(DemoOptions {
                executable,
                duration,
                workers,
                keep,
            })
            .await?;
            let all = checks.iter().all(|check| check.holds);
            Ok(if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Parses a byte count: a number with an optional unit (B, KiB, MiB, GiB, TiB; also
/// KB/MB/GB/TB as powers of 1000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count like 512MiB or 10GiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `dtx wal verify`.
fn wal_command(action: WalAction) -> anyhow::Result<ExitCode> {
    let WalAction::Verify { dir, json, hexdump } = action;
    let wal_dir = if dir.join(WAL_DIR).is_dir() {
        dir.join(WAL_DIR)
    } else {
        dir
    };
    let report = verify(&wal_dir)
        .with_context(|| format!("cannot read the log in {}", wal_dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if let Some(arguments) = hexdump {
        let (file, offset) = match arguments.as_slice() {
            [file, offset] => (file, offset),
            _ => bail!("--hexdump takes FILE OFFSET"),
        };
        let offset: u64 = offset
            .parse()
            .with_context(|| format!("--hexdump offset {offset:?} is not a number"))?;
        print!("{}", hexdump_file(&wal_dir.join(file), offset, 256)?);
    }
    Ok(if report.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `dtx user add | remove | list`.
fn user_command(action: UserAction) -> anyhow::Result<ExitCode> {
    match action {
        UserAction::Add {
            config,
            name,
            allow,
            read,
        } => {
            let cluster = ClusterConfig::load(&config)?;
            if allow.is_empty() && read.is_empty() {
                bail!("give the user at least one --allow PREFIX or --read PREFIX (\"\" is every key)");
            }
            let user = add_user(&cluster.users_path(), &name, allow, read)?;
            println!(
                "added user {} ({}); key {}",
                user.name,
                user.user_id,
                user.key_file
                    .as_ref()
                    .map(|path| path.display().to_string())
                    .unwrap_or_default()
            );
            println!(
                "  use it: dtx --user {} put --config {} KEY VALUE",
                user.name,
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserAction::Remove { config, name } => {
            let cluster = ClusterConfig::load(&config)?;
            remove_user(&cluster.users_path(), &name)?;
            println!("removed user {name}: running nodes end its sessions now");
            Ok(ExitCode::SUCCESS)
        }
        UserAction::List { config } => {
            let cluster = ClusterConfig::load(&config)?;
            let users = Users::load(&cluster.users_path())?;
            for user in users.all() {
                let show = |prefixes: &[String]| {
                    prefixes
                        .iter()
                        .map(|prefix| format!("{prefix:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!(
                    "{:<16} read-write [{}] read-only [{}]",
                    user.name,
                    show(&user.read_write),
                    show(&user.read_only)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The control endpoint of node `name`.
fn control_address(cluster: &ClusterConfig, name: &str) -> anyhow::Result<std::net::SocketAddr> {
    let node = cluster
        .node_named(name)
        .with_context(|| format!("no node named {name:?} in the cluster config"))?;
    node.control.with_context(|| {
        format!("node {name:?} has no control address in the cluster config (add control = \"127.0.0.1:PORT\")")
    })
}

/// The status report of node `name`, or of the first node that answers.
async fn status_of(cluster: &ClusterConfig, name: Option<&str>) -> anyhow::Result<StatusReport> {
    if let Some(name) = name {
        let address = control_address(cluster, name)?;
        return Ok(control::fetch_status(address).await?);
    }
    let mut last = None;
    for node in &cluster.nodes {
        let Some(address) = node.control else {
            continue;
        };
        match control::fetch_status(address).await {
            Ok(report) => return Ok(report),
            Err(error) => last = Some(error),
        }
    }
    match last {
        Some(error) => Err(anyhow::anyhow!("no node answered; last error: {error}")),
        None => bail!("no node has a control address in the cluster config"),
    }
}

async fn run_transaction(
    config: &Path,
    user: Option<&str>,
    operations: Vec<Operation>,
) -> anyhow::Result<ExitCode> {
    let (_, client) = connect(config, user).await?;
    match client.run(operations).await {
        Ok(committed) => {
            println!("committed {}", committed.txn);
            for read in &committed.reads {
                match &read.value {
                    Some(value) => println!(
                        "  {} = {} (version {})",
                        read.key,
                        String::from_utf8_lossy(&value.0),
                        read.version.0
                    ),
                    None => println!("  {} is absent", read.key),
                }
            }
            if committed.reads_lost {
                println!("  (a participant restarted after deciding: some read results were lost)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ CommitError::Aborted { .. }) => {
            println!("{error}");
            Ok(ExitCode::from(1))
        }
        Err(error @ CommitError::Unknown { .. }) => {
            println!("{error}");
            Ok(ExitCode::from(2))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_units_and_overflow_is_an_error() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_bytes("42"), Ok(42));
        assert!(parse_bytes("1furlong").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
