//! The entry point of `dtx` and the dispatch of its subcommands: the tokio runtime, logging,
//! `dtx node` (which starts the daemon) and `dtx demo`; the other commands live in
//! `admin` (files) and `client_commands` (a running cluster).
//!
//! This is binary code: errors are reported with `anyhow`.

use crate::admin::{add_node_command, init_command, user_command, wal_command};
use crate::args::{Cli, Command, LabAction, ParticipantAction};
use crate::client_commands::{
    bench_command, drain_command, run_transaction, status_command, BenchCommand,
};
use crate::config_lookup::find_config;
use crate::demo::{self, DemoOptions};
use crate::participant_check;
use crate::test_hooks;
use anyhow::{bail, Context};
use clap::Parser;
use dtx_node::config::{parse_control, ClusterConfig};
use dtx_node::daemon::{self, DaemonOptions};
use dtx_node::datadir::OpenMode;
use dtx_node::links::ClientBudget;
use dtx_node::ops::parse_operation;
use dtx_node::participant::http::{HttpOptions, HttpParticipant};
use dtx_node::participant::postgres::{Actions, PostgresParticipant};
use dtx_node::participant::Participant;
use dtx_protocol::{DetectorConfig, Key, Operation, Value};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
        } => init_command(nodes, &dir, f, names),
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
            service_vote_timeout,
            listen,
            insecure,
            client_rate,
            client_burst,
            new,
            reinit,
            storage_quota,
            fault_injection,
            bugs,
            participant,
            participant_timeout,
            actions,
        } => {
            let config_path = find_config(config)?;
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
            let mut options = DaemonOptions {
                config_path: Some(config_path),
                config,
                name,
                data_dir,
                fsync: !no_fsync,
                checkpoint_after_bytes: checkpoint_bytes,
                #[cfg(feature = "test-hooks")]
                crash_at_group_commit: None,
                transport,
                control,
                mdns,
                detector,
                decision_timeout,
                service_vote_timeout,
                listen,
                insecure,
                client_budget: ClientBudget {
                    messages_per_second: f64::from(client_rate.max(1)),
                    burst_messages: f64::from(client_burst.max(1)),
                },
                storage_quota_bytes: storage_quota,
                fault_injection,
                bugs: dtx_sim::parse_bugs(&bugs)
                    .map_err(|error| anyhow::anyhow!("--bug: {error}"))?,
                data_dir_mode: if reinit {
                    OpenMode::Reinit
                } else if new {
                    OpenMode::New
                } else {
                    OpenMode::Existing
                },
            };
            test_hooks::apply(&mut options)?;
            let participant = match participant {
                Some(url) => {
                    Some(participant_of(&url, participant_timeout, actions.as_deref()).await?)
                }
                None => None,
            };
            daemon::run_with_participant(options, participant).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AddNode { config, name, role } => {
            add_node_command(&find_config(config)?, &name, &role)
        }
        Command::Status { config, name, json } => {
            status_command(&find_config(config)?, name.as_deref(), json).await
        }
        Command::Drain {
            name,
            config,
            no_wait,
        } => drain_command(&name, &find_config(config)?, no_wait).await,
        Command::Put { config, key, value } => {
            let operation = Operation::Write {
                key: Key::new(key),
                value: Value::new(value.into_bytes()),
            };
            run_transaction(&find_config(config)?, user, vec![operation]).await
        }
        Command::Get { config, key } => {
            let operation = Operation::Read {
                key: Key::new(key),
                expected: None,
            };
            run_transaction(&find_config(config)?, user, vec![operation]).await
        }
        Command::Delete { config, key } => {
            run_transaction(
                &find_config(config)?,
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
            run_transaction(&find_config(config)?, user, operations).await
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
            shared_reads,
        } => {
            let command = BenchCommand {
                config: find_config(config)?,
                clients,
                duration,
                workload,
                json,
                history,
                keys,
                no_setup,
                transport,
                shared_reads,
            };
            bench_command(command, user).await
        }
        Command::User { action } => user_command(action),
        Command::Participant {
            action:
                ParticipantAction::Check {
                    url,
                    operations,
                    restart_command,
                    timeout,
                    restart_wait,
                },
        } => Ok(participant_check::run(participant_check::CheckOptions {
            url,
            operations,
            restart_command,
            call_timeout: timeout,
            restart_wait,
        })
        .await),
        Command::Wal { action } => wal_command(action),
        Command::Lab {
            action:
                LabAction::Run {
                    scenario,
                    seed,
                    out,
                    netns,
                },
        } => {
            let executable = std::env::current_exe().context("cannot locate the dtx executable")?;
            let (outcome, _) = crate::lab::run(&crate::lab::LabOptions {
                scenario,
                seed,
                out,
                executable,
                netns,
            })
            .await?;
            Ok(if outcome.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::BenchPlot { results, out } => {
            println!("{}", crate::bench::plot::plot_file(&results, &out)?);
            Ok(ExitCode::SUCCESS)
        }
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

/// The participant a `dtx node --participant URL` drives: PostgreSQL for postgres:// and
/// postgresql:// URLs (with its actions file), else the HTTP contract.
async fn participant_of(
    url: &str,
    timeout: Option<Duration>,
    actions: Option<&Path>,
) -> anyhow::Result<Arc<dyn Participant>> {
    let is_postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_postgres {
        let Some(actions) = actions else {
            bail!("a PostgreSQL --participant needs --actions FILE (the SQL of each action)");
        };
        if timeout.is_some() {
            bail!(
                "--participant-timeout is for HTTP participants; a PostgreSQL participant \
                 takes lock_timeout and statement_timeout from its actions file"
            );
        }
        let actions = Actions::load(actions)?;
        let participant = PostgresParticipant::connect(url, actions).await?;
        return Ok(Arc::new(participant));
    }
    if actions.is_some() {
        bail!("--actions is for PostgreSQL participants (postgres://...)");
    }
    let mut http_options = HttpOptions::default();
    if let Some(timeout) = timeout {
        http_options.call_timeout = timeout;
    }
    Ok(Arc::new(HttpParticipant::new(url, http_options)?))
}
