//! Kernel-level link faults for `dtx lab run --netns`: every node in its own network
//! namespace, joined to the lab by a veth pair and one bridge, partitions as blackhole
//! routes, loss, delay and duplication as `tc netem` qdiscs.
//!
//! The layout, for a lab process with pid P (hex) and a free subnet 10.213.X.0/24:
//! - bridge `dtxlabP-b` in the root namespace with 10.213.X.254/24: the lab's own client
//!   and sampler reach every node through it, and the nodes see the clients as .254;
//! - namespace `dtxlabP-NAME` per node, with `lo` and `eth0` = 10.213.X.N/24 (node N of
//!   the scenario's order gets .N), the other end of the pair (`dtxlabP-N`) on the bridge.
//!
//! No address outside those namespaces and the bridge is used. Everything is deleted when
//! the [`KernelNetwork`] is dropped (also when the run fails), and a new lab first deletes
//! what a killed earlier lab left (objects named `dtxlab<pid>-...` whose pid is gone).
//!
//! Faults ([`KernelNetwork::apply`] replaces the whole state at each step):
//! - a cut in both directions between two nodes: a blackhole route for the other's /32 in
//!   each namespace. A cut in one direction only stays in-node (`/faults`): TCP needs both
//!   directions, so a kernel drop of one direction would stall the connection both ways.
//!   Cuts between a node and the clients stay in-node too: the lab's own control requests
//!   (`/status`, `/faults`) come from the bridge address .254 like the clients' traffic, so
//!   a blackhole of .254 would cut the lab off the node as well;
//! - loss, delay and duplication (`lossy`, `slow`, `duplicate`): `netem` on the node's
//!   `eth0` (what it sends: delay, duplication, loss towards the clients) and on its bridge
//!   port (what it receives: loss). They apply to all of the node's links, which is what
//!   those nemeses mean. Without the `sch_netem` kernel module they stay in-node.

use dtx_sim::lab::{Endpoint, LinkFault};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Every object the lab creates starts with this.
pub const PREFIX: &str = "dtxlab";

/// The first two octets of the lab's subnets (10.213.X.0/24).
const SUBNET_BASE: [u8; 2] = [10, 213];

/// The bridge's host number in the subnet.
const BRIDGE_HOST: u8 = 254;

/// Nodes a kernel network holds at most (hosts .1 ..= .64, interface names <= 15 bytes).
pub const NODES_MAX: usize = 64;

/// Why the kernel network could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Not root.
    #[error("--netns needs root (network namespaces, veth pairs and a bridge): run the lab as root, or without --netns")]
    NotRoot,
    /// `ip` is missing.
    #[error("--netns needs the `ip` command of iproute2 ({0}): install iproute2, or run without --netns")]
    NoIp(String),
    /// Too many nodes.
    #[error("--netns supports at most {NODES_MAX} nodes, the scenario has {0}")]
    TooManyNodes(usize),
    /// Every 10.213.X.0/24 is in use.
    #[error("no free subnet 10.213.X.0/24 for --netns (every one is routed already)")]
    NoSubnet,
    /// An `ip` or `tc` command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr or why it did not run.
        message: String,
    },
}

/// One node's place in the kernel network.
#[derive(Clone, Debug)]
struct NodeNet {
    namespace: String,
    host_veth: String,
    ip: Ipv4Addr,
}

/// What is in force: blackholes per namespace, netem arguments per (namespace or root,
/// device).
#[derive(Clone, Debug, Default, PartialEq)]
struct KernelState {
    blackholes: BTreeSet<(String, Ipv4Addr)>,
    netem: BTreeMap<(Option<String>, String), String>,
}

/// The namespaces, veths and bridge of one lab run; deleted on drop.
#[derive(Debug)]
pub struct KernelNetwork {
    bridge: String,
    bridge_ip: Ipv4Addr,
    subnet: u8,
    nodes: BTreeMap<String, NodeNet>,
    netem: bool,
    state: Mutex<KernelState>,
}

/// Runs `program args`, returning its stdout; an error names the command and its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let output =
        Command::new(program)
            .args(args)
            .output()
            .map_err(|error| NetnsError::Command {
                command: command.clone(),
                message: error.to_string(),
            })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetnsError::Command {
            command,
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run("ip", args)
}

/// True if this process runs as root (uid 0, from /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The lab pid a `dtxlab<hex pid>-...` name carries.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    u32::from_str_radix(pid, 16).ok()
}

/// Deletes namespaces and links named `dtxlab<pid>-...` whose lab process is gone (a lab
/// killed before it could clean up), killing any node process left in them.
pub fn remove_stale() -> Result<Vec<String>, NetnsError> {
    let is_stale = |name: &str| {
        owner_pid(name).is_some_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
    };
    let mut removed = Vec::new();
    for line in ip(&["-o", "link", "show"])?.lines() {
        // "7: dtxlab1f2e-1@if2: <BROADCAST,...> ..."
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if is_stale(name) && ip(&["link", "delete", name]).is_ok() {
            removed.push(name.to_string());
        }
    }
    for line in ip(&["netns", "list"])?.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if is_stale(name) {
            kill_processes_in(name);
            if ip(&["netns", "delete", name]).is_ok() {
                removed.push(name.to_string());
            }
        }
    }
    Ok(removed)
}

/// SIGKILLs every process in namespace `namespace` (nodes a killed lab left behind).
fn kill_processes_in(namespace: &str) {
    let Ok(pids) = ip(&["netns", "pids", namespace]) else {
        return;
    };
    for pid in pids.split_whitespace() {
        let _ = run("kill", &["-KILL", pid]);
    }
}

/// A subnet number X such that nothing in the root namespace routes or holds an address
/// in 10.213.X.0/24 (another lab's bridge would), starting at a pid-dependent X so
/// that labs started together rarely race for one.
fn free_subnet() -> Result<u8, NetnsError> {
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    let addresses = ip(&["-4", "-o", "address", "show"])?;
    let start = (std::process::id() % 250) as u8;
    for offset in 0..=255u8 {
        let subnet = start.wrapping_add(offset);
        let needle = format!("{}.{}.{subnet}.", SUBNET_BASE[0], SUBNET_BASE[1]);
        if !routes.contains(&needle) && !addresses.contains(&needle) {
            return Ok(subnet);
        }
    }
    Err(NetnsError::NoSubnet)
}

impl KernelNetwork {
    /// Checks root and `ip`, removes stale objects of killed labs, and creates the bridge and
    /// one namespace per node of `names` (in that order: .1, .2, ...). Fails at once,
    /// before creating anything, without root or `ip`; a failure half-way deletes what was
    /// made.
    pub fn create(names: &[String]) -> Result<KernelNetwork, NetnsError> {
        if !is_root() {
            return Err(NetnsError::NotRoot);
        }
        ip(&["-V"]).map_err(|error| NetnsError::NoIp(error.to_string()))?;
        if names.len() > NODES_MAX {
            return Err(NetnsError::TooManyNodes(names.len()));
        }
        let removed = remove_stale()?;
        if !removed.is_empty() {
            println!(
                "  removed what a killed earlier lab left: {}",
                removed.join(", ")
            );
        }
        let subnet = free_subnet()?;
        let prefix = format!("{PREFIX}{:x}", std::process::id());
        let address = |host: u8| Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], subnet, host);
        let mut nodes = BTreeMap::new();
        for (index, name) in names.iter().enumerate() {
            // At most NODES_MAX (checked above), so the host number fits.
            let host =
                u8::try_from(index + 1).map_err(|_| NetnsError::TooManyNodes(names.len()))?;
            nodes.insert(
                name.clone(),
                NodeNet {
                    namespace: format!("{prefix}-{name}"),
                    host_veth: format!("{prefix}-{host}"),
                    ip: address(host),
                },
            );
        }
        let network = KernelNetwork {
            bridge: format!("{prefix}-b"),
            bridge_ip: address(BRIDGE_HOST),
            subnet,
            nodes,
            netem: false,
            state: Mutex::new(KernelState::default()),
        };
        // From here on, dropping `network` deletes whatever was made.
        network.build()
    }

    fn build(mut self) -> Result<KernelNetwork, NetnsError> {
        let bridge = self.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "address",
            "add",
            &format!("{}/24", self.bridge_ip),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for node in self.nodes.values() {
            let namespace = node.namespace.as_str();
            ip(&["netns", "add", namespace])?;
            ip(&[
                "link",
                "add",
                &node.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                namespace,
            ])?;
            ip(&["link", "set", &node.host_veth, "master", &bridge])?;
            ip(&["link", "set", &node.host_veth, "up"])?;
            ip(&[
                "-n",
                namespace,
                "address",
                "add",
                &format!("{}/24", node.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", namespace, "link", "set", "lo", "up"])?;
        }
        self.netem = self.probe_netem();
        Ok(self)
    }

    /// True if `tc ... netem` works here (it needs the `sch_netem` kernel module).
    fn probe_netem(&self) -> bool {
        let Some(node) = self.nodes.values().next() else {
            return false;
        };
        let added = run(
            "tc",
            &[
                "-n",
                &node.namespace,
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                "1ms",
            ],
        );
        let _ = run(
            "tc",
            &["-n", &node.namespace, "qdisc", "del", "dev", "eth0", "root"],
        );
        added.is_ok()
    }

    /// The namespace node `name` runs in.
    pub fn namespace(&self, name: &str) -> Option<&str> {
        self.nodes.get(name).map(|node| node.namespace.as_str())
    }

    /// Node `name`'s address.
    pub fn node_ip(&self, name: &str) -> Option<Ipv4Addr> {
        self.nodes.get(name).map(|node| node.ip)
    }

    /// The subnet, e.g. `10.213.7.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}.{}.{}.0/24", SUBNET_BASE[0], SUBNET_BASE[1], self.subnet)
    }

    /// True if loss, delay and duplication are applied in the kernel (`netem` works here);
    /// else they stay in-node.
    pub fn has_netem(&self) -> bool {
        self.netem
    }

    /// Puts `links` (the full set of directed link faults in force) into the kernel,
    /// removing what is no longer in force; returns the faults it leaves to the nodes'
    /// `/faults` (one-way cuts, and loss/delay/duplication without netem) and a short
    /// description of the kernel state.
    pub fn apply(&self, links: &[LinkFault]) -> Result<(Vec<LinkFault>, String), NetnsError> {
        let (wanted, in_node) = self.plan(links);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut errors = Vec::new();
        for (namespace, target) in state.blackholes.difference(&wanted.blackholes) {
            let route = format!("{target}/32");
            if let Err(error) = ip(&["-n", namespace, "route", "del", "blackhole", &route]) {
                errors.push(error.to_string());
            }
        }
        for (namespace, target) in wanted.blackholes.difference(&state.blackholes) {
            let route = format!("{target}/32");
            if let Err(error) = ip(&["-n", namespace, "route", "add", "blackhole", &route]) {
                errors.push(error.to_string());
            }
        }
        for device in state.netem.keys() {
            if !wanted.netem.contains_key(device) {
                if let Err(error) = netem(device, None) {
                    errors.push(error.to_string());
                }
            }
        }
        for (device, arguments_wanted) in &wanted.netem {
            if state.netem.get(device) != Some(arguments_wanted) {
                if let Err(error) = netem(device, Some(arguments_wanted)) {
                    errors.push(error.to_string());
                }
            }
        }
        let description = format!(
            "kernel: {} blackhole routes, {} netem qdiscs; in-node: {} links",
            wanted.blackholes.len(),
            wanted.netem.len(),
            in_node.len()
        );
        *state = wanted;
        if errors.is_empty() {
            Ok((in_node, description))
        } else {
            Err(NetnsError::Command {
                command: "apply link faults".to_string(),
                message: errors.join("; "),
            })
        }
    }

    /// The kernel state `links` call for, and the faults left to the nodes.
    fn plan(&self, links: &[LinkFault]) -> (KernelState, Vec<LinkFault>) {
        let cut = |from: &Endpoint, to: &Endpoint| {
            links
                .iter()
                .any(|link| &link.from == from && &link.to == to && link.drop >= 1.0)
        };
        let mut state = KernelState::default();
        let mut in_node = Vec::new();
        // Per node: (loss out to the clients, delay, jitter, duplicate) and loss in.
        let mut egress: BTreeMap<String, (f64, Duration, Duration, f64)> = BTreeMap::new();
        let mut ingress: BTreeMap<String, f64> = BTreeMap::new();
        for link in links {
            if link.drop >= 1.0 {
                // Both directions between two nodes cut: a blackhole in the sender's
                // namespace (the other direction adds its own). Else in-node.
                let blackhole = match (&link.from, &link.to) {
                    (Endpoint::Node(from), Endpoint::Node(to)) if cut(&link.to, &link.from) => {
                        self.namespace(from).zip(self.node_ip(to))
                    }
                    _ => None,
                };
                match blackhole {
                    Some((namespace, target)) => {
                        state.blackholes.insert((namespace.to_string(), target));
                    }
                    None => in_node.push(link.clone()),
                }
                continue;
            }
            if !self.netem {
                in_node.push(link.clone());
                continue;
            }
            if let Endpoint::Node(from) = &link.from {
                let entry = egress.entry(from.clone()).or_default();
                if link.to == Endpoint::Clients {
                    entry.0 = entry.0.max(link.drop);
                }
                entry.1 = entry.1.max(link.delay);
                entry.2 = entry.2.max(link.jitter);
                entry.3 = entry.3.max(link.duplicate);
            }
            if let Endpoint::Node(to) = &link.to {
                if link.drop > 0.0 {
                    let entry = ingress.entry(to.clone()).or_default();
                    *entry = entry.max(link.drop);
                }
            }
        }
        for (name, (loss, delay, jitter, duplicate)) in egress {
            let Some(node) = self.nodes.get(&name) else {
                continue;
            };
            if let Some(arguments) = netem_arguments(loss, delay, jitter, duplicate) {
                state.netem.insert(
                    (Some(node.namespace.clone()), "eth0".to_string()),
                    arguments,
                );
            }
        }
        for (name, loss) in ingress {
            let Some(node) = self.nodes.get(&name) else {
                continue;
            };
            if let Some(arguments) = netem_arguments(loss, Duration::ZERO, Duration::ZERO, 0.0) {
                state
                    .netem
                    .insert((None, node.host_veth.clone()), arguments);
            }
        }
        (state, in_node)
    }
}

/// `netem` arguments for a loss, delay (+ jitter) and duplication; `None` if all are zero.
fn netem_arguments(loss: f64, delay: Duration, jitter: Duration, duplicate: f64) -> Option<String> {
    let mut parts = Vec::new();
    if !delay.is_zero() || !jitter.is_zero() {
        parts.push(format!("delay {}us", delay.as_micros()));
        if !jitter.is_zero() {
            parts.push(format!("{}us", jitter.as_micros()));
        }
    }
    if loss > 0.0 {
        parts.push(format!("loss {:.4}%", loss * 100.0));
    }
    if duplicate > 0.0 {
        parts.push(format!("duplicate {:.4}%", duplicate * 100.0));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// Sets (`Some`) or removes (`None`) the root netem qdisc of `device` (in a namespace or
/// the root namespace).
fn netem(device: &(Option<String>, String), arguments: Option<&String>) -> Result<(), NetnsError> {
    let (namespace, name) = device;
    let mut args: Vec<&str> = Vec::new();
    if let Some(namespace) = namespace {
        args.extend(["-n", namespace.as_str()]);
    }
    match arguments {
        Some(arguments) => {
            args.extend(["qdisc", "replace", "dev", name.as_str(), "root", "netem"]);
            args.extend(arguments.split(' '));
        }
        None => args.extend(["qdisc", "del", "dev", name.as_str(), "root"]),
    }
    run("tc", &args).map(|_| ())
}

impl Drop for KernelNetwork {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            kill_processes_in(&node.namespace);
            let _ = ip(&["link", "delete", &node.host_veth]);
        }
        let _ = ip(&["link", "delete", &self.bridge]);
        for node in self.nodes.values() {
            let _ = ip(&["netns", "delete", &node.namespace]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_pid_is_read_from_the_prefix_only() {
        assert_eq!(owner_pid("dtxlab1f2e-b"), Some(0x1f2e));
        assert_eq!(owner_pid("dtxlab1f2e-n1"), Some(0x1f2e));
        assert_eq!(owner_pid("dtxlabzz-n1"), None);
        assert_eq!(owner_pid("dtxlab1f2e"), None);
        assert_eq!(owner_pid("eth0"), None);
    }

    #[test]
    fn netem_arguments_name_only_what_is_set() {
        assert_eq!(
            netem_arguments(0.0, Duration::ZERO, Duration::ZERO, 0.0),
            None
        );
        assert_eq!(
            netem_arguments(0.2, Duration::from_millis(50), Duration::ZERO, 0.0).as_deref(),
            Some("delay 50000us loss 20.0000%")
        );
    }

    #[test]
    fn two_way_cuts_between_nodes_become_blackholes_and_the_rest_stays_in_node() {
        let node = |name: &str| Endpoint::Node(name.to_string());
        let names = ["a", "b", "c"];
        let network = KernelNetwork {
            bridge: "dtxlabtest-b".to_string(),
            bridge_ip: Ipv4Addr::new(10, 213, 9, 254),
            subnet: 9,
            nodes: names
                .iter()
                .zip(1u8..)
                .map(|(name, host)| {
                    let net = NodeNet {
                        namespace: format!("dtxlabtest-{name}"),
                        host_veth: format!("dtxlabtest-{host}"),
                        ip: Ipv4Addr::new(10, 213, 9, host),
                    };
                    (name.to_string(), net)
                })
                .collect(),
            netem: true,
            state: Mutex::new(KernelState::default()),
        };
        let mut slow = LinkFault::cut(node("c"), node("a"));
        slow.drop = 0.0;
        slow.delay = Duration::from_millis(50);
        let links = vec![
            LinkFault::cut(node("a"), node("b")),
            LinkFault::cut(node("b"), node("a")),
            LinkFault::cut(node("a"), node("c")),
            LinkFault::cut(node("b"), Endpoint::Clients),
            LinkFault::cut(Endpoint::Clients, node("b")),
            slow,
        ];
        let (state, in_node) = network.plan(&links);
        let blackholes: Vec<(String, Ipv4Addr)> = state.blackholes.into_iter().collect();
        assert_eq!(
            blackholes,
            vec![
                ("dtxlabtest-a".to_string(), Ipv4Addr::new(10, 213, 9, 2)),
                ("dtxlabtest-b".to_string(), Ipv4Addr::new(10, 213, 9, 1)),
            ]
        );
        // One-way cuts and cuts from or to the clients (the lab's control path) in-node.
        assert_eq!(
            in_node,
            vec![
                LinkFault::cut(node("a"), node("c")),
                LinkFault::cut(node("b"), Endpoint::Clients),
                LinkFault::cut(Endpoint::Clients, node("b")),
            ]
        );
        assert_eq!(
            state
                .netem
                .get(&(Some("dtxlabtest-c".to_string()), "eth0".to_string())),
            Some(&"delay 50000us".to_string())
        );
        assert_eq!(state.netem.len(), 1);
    }
}
