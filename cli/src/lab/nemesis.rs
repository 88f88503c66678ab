//! Plays a scenario's fault timeline against the running nodes: link faults through each
//! node's `/faults` control endpoint (the node was started with `--fault-injection`),
//! SIGKILL and restart through the local cluster, SIGSTOP and SIGCONT.

use super::netns::KernelNetwork;
use super::sampler::NodeStates;
use crate::local::{LocalCluster, LocalClusterError};
use dtx_node::control::set_faults;
use dtx_node::faults::{Direction, FaultPlan, FaultRule, PeerSelector};
use dtx_sim::lab::{Action, Endpoint, LinkFault, Step};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long one `/faults` request may take before the step counts as failed.
const FAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Where to reach each node's control endpoint, and the cluster's control token.
#[derive(Clone, Debug)]
pub struct NodeHandles {
    /// Node name -> control address.
    pub control: BTreeMap<String, SocketAddr>,
    /// The token POST requests need.
    pub token: String,
}

impl NodeHandles {
    /// The handles of `cluster`'s nodes.
    pub fn of(cluster: &LocalCluster) -> Result<NodeHandles, LocalClusterError> {
        let mut control = BTreeMap::new();
        for node in &cluster.config.nodes {
            let address = node.control.ok_or_else(|| LocalClusterError::Process {
                name: node.name.clone(),
                message: "has no control endpoint in cluster.toml".to_string(),
            })?;
            control.insert(node.name.clone(), address);
        }
        let token = dtx_node::control::read_token_file(&cluster.config.control_token_path())
            .map_err(|error| LocalClusterError::Process {
                name: "cluster".to_string(),
                message: format!("the control token: {error}"),
            })?;
        Ok(NodeHandles { control, token })
    }
}

/// One applied step, as `nemesis.json` records it.
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    /// When it was applied, seconds from the workload's start.
    pub time_s: f64,
    /// `network`, `kill`, `restart`, `pause`, `resume`.
    pub action: String,
    /// Which links or node, or what went wrong.
    pub detail: String,
    /// False if it could not be applied.
    pub ok: bool,
}

impl LogLine {
    /// A step that failed.
    pub fn failed(at: Duration, action: &str, detail: String) -> LogLine {
        LogLine {
            time_s: at.as_secs_f64(),
            action: action.to_string(),
            detail,
            ok: false,
        }
    }
}

/// Plays `steps` (sorted by time) from `started`; returns what was applied. The nodes'
/// up/paused state is shared with the sampler so it does not wait on stopped processes.
pub async fn drive(
    steps: Vec<Step>,
    cluster: Arc<Mutex<LocalCluster>>,
    nodes: NodeHandles,
    started: Instant,
    seed: u64,
    states: NodeStates,
    kernel: Option<Arc<KernelNetwork>>,
) -> Vec<LogLine> {
    let mut log = Vec::new();
    let mut links: Vec<LinkFault> = Vec::new();
    for step in steps {
        tokio::time::sleep_until((started + step.at).into()).await;
        let at = started.elapsed();
        let (action, detail, result) = match &step.action {
            Action::Network { links: now } => {
                // --netns: the kernel takes what it can; `links` keeps the in-node rest,
                // which is what a restarted or resumed node gets again.
                let (kernel_result, kernel_detail) = match &kernel {
                    Some(kernel) => apply_kernel(kernel, now, &mut links).await,
                    None => {
                        links = now.clone();
                        (Ok(()), String::new())
                    }
                };
                let result = apply_network(&nodes, &links, seed, &states).await;
                let result = match (kernel_result, result) {
                    (Ok(()), result) => result,
                    (Err(error), Ok(())) => Err(error),
                    (Err(kernel), Err(in_node)) => Err(format!("{kernel}; {in_node}")),
                };
                (
                    "network",
                    format!("{}{kernel_detail}", describe(now)),
                    result,
                )
            }
            Action::Kill { node } => {
                states.set_down(node, true);
                let result = with_cluster(&cluster, node, |cluster, node| cluster.kill(node)).await;
                ("kill", node.clone(), result)
            }
            Action::Restart { node } => {
                let mut result = with_cluster(&cluster, node, |cluster, node| {
                    cluster.start(node).map(|_| ())
                })
                .await;
                states.set_down(node, false);
                if result.is_ok() {
                    result = apply_one(&nodes, node, &links, seed).await;
                }
                ("restart", node.clone(), result)
            }
            Action::Pause { node } => {
                states.set_down(node, true);
                ("pause", node.clone(), signal(&cluster, node, "-STOP"))
            }
            Action::Resume { node } => {
                let mut result = signal(&cluster, node, "-CONT");
                states.set_down(node, false);
                if result.is_ok() {
                    result = apply_one(&nodes, node, &links, seed).await;
                }
                ("resume", node.clone(), result)
            }
        };
        let line = match result {
            Ok(()) => LogLine {
                time_s: at.as_secs_f64(),
                action: action.to_string(),
                detail,
                ok: true,
            },
            Err(error) => LogLine::failed(at, action, format!("{detail}: {error}")),
        };
        println!(
            "  [{:>6.1}s] {:<8} {}{}",
            line.time_s,
            line.action,
            line.detail,
            if line.ok { "" } else { "  (FAILED)" }
        );
        log.push(line);
    }
    log
}

/// --netns: puts `now` into the kernel and leaves in `links` what stays in-node; returns
/// the kernel's result and a description to append to the log line.
async fn apply_kernel(
    kernel: &Arc<KernelNetwork>,
    now: &[LinkFault],
    links: &mut Vec<LinkFault>,
) -> (Result<(), String>, String) {
    let kernel = Arc::clone(kernel);
    let wanted = now.to_vec();
    match tokio::task::spawn_blocking(move || kernel.apply(&wanted)).await {
        Ok(Ok((in_node, detail))) => {
            *links = in_node;
            (Ok(()), format!(" ({detail})"))
        }
        Ok(Err(error)) => {
            // Keep the in-node injection of everything, so the fault still happens.
            *links = now.to_vec();
            (
                Err(error.to_string()),
                " (kernel failed: all in-node)".to_string(),
            )
        }
        Err(error) => {
            *links = now.to_vec();
            (Err(format!("kernel task failed: {error}")), String::new())
        }
    }
}

/// A short description of the links in force.
fn describe(links: &[LinkFault]) -> String {
    if links.is_empty() {
        return "healed".to_string();
    }
    let cuts = links.iter().filter(|link| link.drop >= 1.0).count();
    let other = links.len() - cuts;
    let mut parts = Vec::new();
    if cuts > 0 {
        parts.push(format!("{cuts} directed links cut"));
    }
    if other > 0 {
        parts.push(format!("{other} lossy/slow/duplicating"));
    }
    parts.join(", ")
}

async fn with_cluster(
    cluster: &Arc<Mutex<LocalCluster>>,
    node: &str,
    work: impl FnOnce(&mut LocalCluster, &str) -> Result<(), LocalClusterError> + Send + 'static,
) -> Result<(), String> {
    let cluster = Arc::clone(cluster);
    let node = node.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cluster = cluster.lock().unwrap_or_else(PoisonError::into_inner);
        work(&mut cluster, &node).map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| format!("task failed: {error}"))?
}

fn signal(cluster: &Arc<Mutex<LocalCluster>>, node: &str, signal: &str) -> Result<(), String> {
    let pid = cluster
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pid(node)
        .ok_or_else(|| format!("{node} is not running"))?;
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .map_err(|error| format!("kill {signal} {pid}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill {signal} {pid} exited with {status}"))
    }
}

async fn apply_network(
    nodes: &NodeHandles,
    links: &[LinkFault],
    seed: u64,
    states: &NodeStates,
) -> Result<(), String> {
    let mut errors = Vec::new();
    for name in nodes.control.keys() {
        // A stopped node gets its plan when it comes back.
        if states.is_down(name) {
            continue;
        }
        if let Err(error) = apply_one(nodes, name, links, seed).await {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

async fn apply_one(
    nodes: &NodeHandles,
    name: &str,
    links: &[LinkFault],
    seed: u64,
) -> Result<(), String> {
    let address = nodes
        .control
        .get(name)
        .ok_or_else(|| format!("no node {name}"))?;
    let plan = plan_for(name, links, seed);
    match tokio::time::timeout(
        FAULT_REQUEST_TIMEOUT,
        set_faults(*address, &nodes.token, &plan),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("{name}: {error}")),
        Err(_) => Err(format!(
            "{name}: no answer within {FAULT_REQUEST_TIMEOUT:?}"
        )),
    }
}

fn selector(endpoint: &Endpoint) -> PeerSelector {
    match endpoint {
        Endpoint::Node(name) => PeerSelector::Node(name.clone()),
        Endpoint::Clients => PeerSelector::Clients,
    }
}

/// Node `name`'s share of the link faults: losses are applied where the message arrives
/// (so one direction can be cut alone), except towards the clients, which run no fault
/// injection (applied as the node sends); delays and duplicates where it leaves.
pub fn plan_for(name: &str, links: &[LinkFault], seed: u64) -> FaultPlan {
    let me = Endpoint::Node(name.to_string());
    let mut rules = Vec::new();
    for link in links {
        if link.to == me && link.drop > 0.0 {
            rules.push(
                FaultRule::new(selector(&link.from))
                    .with_direction(Direction::In)
                    .with_drop(link.drop),
            );
        }
        if link.from == me {
            let drop = if link.to == Endpoint::Clients {
                link.drop
            } else {
                0.0
            };
            if drop > 0.0 || !link.delay.is_zero() || link.duplicate > 0.0 {
                rules.push(
                    FaultRule::new(selector(&link.to))
                        .with_direction(Direction::Out)
                        .with_drop(drop)
                        .with_delay(millis(link.delay), millis(link.jitter))
                        .with_duplicate(link.duplicate),
                );
            }
        }
    }
    let node_salt = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    FaultPlan::new(rules, seed ^ node_salt)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}
