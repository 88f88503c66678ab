//! Commands that talk to a running cluster: `put`, `get`, `delete`, `txn` (one
//! transaction each), `bench`, `status` and `drain`.

use crate::bench::{self, BenchOptions, Progress, Workload};
use anyhow::{bail, Context};
use dtx_node::client::{Client, CommitError};
use dtx_node::config::ClusterConfig;
use dtx_node::control::{self, ControlError, StatusReport};
use dtx_node::daemon::DRAIN_TIMEOUT;
use dtx_node::links::TransportKind;
use dtx_protocol::{ClientConfig, NodeId, Operation};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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

pub(crate) async fn run_transaction(
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

/// `dtx status`.
pub(crate) async fn status_command(
    config: &Path,
    name: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let cluster = ClusterConfig::load(config)?;
    let report = status_of(&cluster, name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// `dtx drain`.
pub(crate) async fn drain_command(
    name: &str,
    config: &Path,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    let cluster = ClusterConfig::load(config)?;
    let address = control_address(&cluster, name)?;
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

/// What `dtx bench` was asked to run.
pub(crate) struct BenchCommand {
    pub(crate) config: PathBuf,
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
    pub(crate) workload: Workload,
    pub(crate) json: bool,
    pub(crate) history: Option<PathBuf>,
    pub(crate) keys: Option<usize>,
    pub(crate) no_setup: bool,
    pub(crate) transport: TransportKind,
    pub(crate) shared_reads: bool,
}

/// `dtx bench`.
pub(crate) async fn bench_command(
    command: BenchCommand,
    user: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let BenchCommand {
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
    } = command;
    let cluster = ClusterConfig::load(&config)?;
    let client = connect_with(&cluster, user, transport).await?;
    let mut options = BenchOptions::new(workload);
    options.clients = clients;
    options.duration = duration;
    options.history = history;
    options.setup = !no_setup;
    options.shared_reads = shared_reads;
    if let Some(keys) = keys {
        options.keys = keys;
    }
    let report = bench::run(&client, &cluster, &options, Arc::new(Progress::default())).await?;
    println!(
        "{:?} with {} clients for {:.1}s: {} committed, {} aborted, {} unknown; {:.0} tps; p50 {:.2} ms, p99 {:.2} ms",
        report.workload, report.clients, report.duration_s, report.committed,
        report.aborted, report.errors, report.tps, report.p50_ms, report.p99_ms
    );
    println!("{}", report.costs.describe());
    if !report.aborts_by_reason.is_empty() {
        let counts: Vec<String> = report
            .aborts_by_reason
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        println!("aborts by reason: {}", counts.join(", "));
    }
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
