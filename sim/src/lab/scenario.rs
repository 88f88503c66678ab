//! Lab scenario files: a cluster, a workload and a nemesis schedule, in TOML.
//!
//! ```toml
//! name = "minority-partition"
//! description = "Two of five nodes are cut off for 8 s, then healed."
//!
//! [cluster]
//! nodes = 5
//! f = 1
//!
//! [workload]
//! kind = "register"      # register | bank | orders | transfer
//! clients = 8            # concurrent closed-loop workers
//! rate = 0               # total transactions/s; 0 = closed loop (as fast as they finish)
//! keys = 16
//! duration = "25s"
//!
//! [[nemesis]]
//! kind = "halves"        # see NemesisKind
//! at = "5s"              # from the workload's start
//! duration = "8s"        # healed after this long
//! ```
//!
//! [`Scenario::schedule`] expands the nemeses into a timeline of primitive steps
//! ([`Step`]): the full set of network faults in force from that instant, and process
//! faults (kill, restart, pause, resume). Both the real-process lab (`dtx lab run`) and the
//! simulator (`dtx-sim lab`) play the same timeline, so a seed means the same faults in both.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Most data nodes a lab cluster may have (every node is a process on this machine).
pub const NODES_MAX: usize = 9;
/// Most concurrent workload clients.
pub const CLIENTS_MAX: usize = 256;
/// Longest workload a scenario may ask for.
pub const DURATION_MAX: Duration = Duration::from_secs(3600);
/// Most nemesis entries in one scenario.
pub const NEMESES_MAX: usize = 64;
/// Most steps one flapping nemesis may expand into.
const FLAPS_MAX: usize = 1000;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type or unknown.
    #[error("scenario {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Well-formed but impossible (a node that does not exist, a fault after the end...).
    #[error("scenario {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, in a sentence.
        message: String,
    },
}

/// A whole scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (used in file and report titles).
    pub name: String,
    /// What the scenario shows, in a sentence or two.
    #[serde(default)]
    pub description: String,
    /// The cluster.
    pub cluster: ClusterSpec,
    /// What the clients do.
    pub workload: WorkloadSpec,
    /// After the workload ends and every fault is healed: how long to wait for every
    /// transaction to be decided before judging (default 30 s).
    #[serde(default = "default_settle", with = "humantime")]
    pub settle: Duration,
    /// Protocol bug switches the nodes run with (needs a `dtx` built with `--features
    /// bugs`); a scenario with bugs is expected to end in a violation verdict.
    #[serde(default)]
    pub bugs: Vec<String>,
    /// The faults, in any order.
    #[serde(default)]
    pub nemesis: Vec<NemesisSpec>,
}

fn default_settle() -> Duration {
    Duration::from_secs(30)
}

/// Cluster size and fault tolerance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Data nodes, named `n1` .. `nN`; each is also an acceptor.
    pub nodes: usize,
    /// Acceptor failures tolerated (decisions need F+1 of 2F+1 acceptors).
    pub f: u32,
}

/// The workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabWorkload {
    /// Two registers per transaction, each read or blindly written with a unique value:
    /// the history is checked for serializability (Elle's rw-register).
    Register,
    /// Interactive transfers between accounts: the total must be conserved.
    Bank,
    /// Orders across inventory, payment and shipping: no partial order.
    Orders,
    /// One-shot transfers with version checks (the simulator's `transfer`).
    Transfer,
}

impl LabWorkload {
    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LabWorkload::Register => "register",
            LabWorkload::Bank => "bank",
            LabWorkload::Orders => "orders",
            LabWorkload::Transfer => "transfer",
        }
    }
}

/// What the clients do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Which workload.
    pub kind: LabWorkload,
    /// Concurrent workers (one client peer).
    #[serde(default = "default_clients")]
    pub clients: usize,
    /// Total transactions per second over all workers; 0 runs closed loop.
    #[serde(default)]
    pub rate: f64,
    /// Registers or accounts.
    #[serde(default = "default_keys")]
    pub keys: usize,
    /// How long the workload runs.
    #[serde(with = "humantime")]
    pub duration: Duration,
    /// Interactive transfers read their accounts under shared locks (upgraded at commit,
    /// refused at once on a conflict) instead of for update (exclusive locks, waiting).
    #[serde(default)]
    pub shared_reads: bool,
}

fn default_clients() -> usize {
    8
}

fn default_keys() -> usize {
    16
}

/// One nemesis entry of the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisSpec {
    /// What fault.
    pub kind: NemesisKind,
    /// When it starts, from the workload's start.
    #[serde(with = "humantime")]
    pub at: Duration,
    /// How long it lasts; without it, until the workload ends (or a `heal`).
    #[serde(default, with = "humantime_option")]
    pub duration: Option<Duration>,
    /// The nodes it applies to (isolate, kill, pause, cut-clients, lossy, slow, duplicate);
    /// without it, chosen with the seed.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// `asymmetric`: the node whose messages are lost...
    #[serde(default)]
    pub from: Option<String>,
    /// ...on their way to this node (`from` still hears `to`).
    #[serde(default)]
    pub to: Option<String>,
    /// `lossy`: the fraction of messages dropped (default 0.2).
    #[serde(default)]
    pub drop: Option<f64>,
    /// `slow`: added delay (default 50 ms).
    #[serde(default, with = "humantime_option")]
    pub delay: Option<Duration>,
    /// `slow`: up to this much more, uniformly (default 0).
    #[serde(default, with = "humantime_option")]
    pub jitter: Option<Duration>,
    /// `duplicate`: the fraction of messages delivered twice (default 0.2).
    #[serde(default)]
    pub duplicate: Option<f64>,
    /// `flapping`: the mean length of each partition and of each quiet gap (default 2 s).
    #[serde(default, with = "humantime_option")]
    pub period: Option<Duration>,
}

/// The kinds of fault a scenario can schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// One node cut off from every other node (clients still reach it).
    Isolate,
    /// The nodes split into a majority and a minority that cannot talk.
    Halves,
    /// Two halves that share one node, which hears both.
    Bridge,
    /// Each node hears only its two neighbours on a ring.
    Ring,
    /// The clients cannot reach the given nodes (nor they the clients).
    CutClients,
    /// `from`'s messages to `to` are lost; `to`'s messages to `from` arrive.
    Asymmetric,
    /// Partitions (random halves or an isolated node) that come and go, seeded.
    Flapping,
    /// SIGKILL, restarted when the nemesis ends.
    Kill,
    /// SIGSTOP, SIGCONT when the nemesis ends.
    Pause,
    /// Links to and from the nodes drop a fraction of messages.
    Lossy,
    /// Links from the nodes are delayed.
    Slow,
    /// Links from the nodes deliver a fraction of messages twice.
    Duplicate,
    /// Ends every fault in force: network healed, paused nodes resumed, killed restarted.
    Heal,
}

impl NemesisKind {
    /// The name used in files.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Isolate => "isolate",
            NemesisKind::Halves => "halves",
            NemesisKind::Bridge => "bridge",
            NemesisKind::Ring => "ring",
            NemesisKind::CutClients => "cut-clients",
            NemesisKind::Asymmetric => "asymmetric",
            NemesisKind::Flapping => "flapping",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Lossy => "lossy",
            NemesisKind::Slow => "slow",
            NemesisKind::Duplicate => "duplicate",
            NemesisKind::Heal => "heal",
        }
    }

    fn is_network(self) -> bool {
        !matches!(
            self,
            NemesisKind::Kill | NemesisKind::Pause | NemesisKind::Heal
        )
    }
}

/// One end of a link: a data node or the clients.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// Data node by name (`n1` ..).
    Node(String),
    /// Every client peer.
    Clients,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Node(name) => f.write_str(name),
            Endpoint::Clients => f.write_str("clients"),
        }
    }
}

/// A fault on the messages that `from` sends to `to` (one direction).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkFault {
    /// Sender.
    pub from: Endpoint,
    /// Receiver.
    pub to: Endpoint,
    /// Probability a message is lost (1 = cut).
    pub drop: f64,
    /// Added delay.
    pub delay: Duration,
    /// Up to this much more delay, uniformly.
    pub jitter: Duration,
    /// Probability a message arrives twice.
    pub duplicate: f64,
}

impl LinkFault {
    /// `from` → `to` cut.
    pub fn cut(from: Endpoint, to: Endpoint) -> LinkFault {
        LinkFault {
            from,
            to,
            drop: 1.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate: 0.0,
        }
    }

    fn merge(&mut self, other: &LinkFault) {
        self.drop = self.drop.max(other.drop);
        self.delay = self.delay.max(other.delay);
        self.jitter = self.jitter.max(other.jitter);
        self.duplicate = self.duplicate.max(other.duplicate);
    }
}

/// One primitive step of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// From now on exactly these link faults are in force (empty: the network is healed).
    Network {
        /// Every faulty link, each direction separately; at most one entry per pair.
        links: Vec<LinkFault>,
    },
    /// SIGKILL the node.
    Kill {
        /// Node name.
        node: String,
    },
    /// Start the killed node again (same data directory).
    Restart {
        /// Node name.
        node: String,
    },
    /// SIGSTOP the node.
    Pause {
        /// Node name.
        node: String,
    },
    /// SIGCONT the node.
    Resume {
        /// Node name.
        node: String,
    },
}

/// An instant of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// From the workload's start.
    #[serde(with = "humantime")]
    pub at: Duration,
    /// What happens.
    pub action: Action,
}

/// A fault as the report shades it: from `start` to `end`, with what it did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The nemesis kind's name.
    pub name: String,
    /// Which nodes, which halves: a short human description.
    pub detail: String,
    /// Start, seconds from the workload's start.
    pub start_s: f64,
    /// End, seconds from the workload's start.
    pub end_s: f64,
}

/// The expanded nemesis schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Steps in time order; the last ones heal everything at the workload's end.
    pub steps: Vec<Step>,
    /// One interval per fault, for the report and the recovery times.
    pub intervals: Vec<Interval>,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ScenarioError::Read {
            path: shown.clone(),
            cause,
        })?;
        Scenario::parse(&text, &shown)
    }

    /// Parses and validates scenario text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|error| ScenarioError::Syntax {
            path: path.to_string(),
            message: error.to_string(),
        })?;
        scenario
            .validate()
            .map_err(|message| ScenarioError::Invalid {
                path: path.to_string(),
                message,
            })?;
        Ok(scenario)
    }

    /// The node names, `n1` .. `nN`.
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.cluster.nodes).map(|i| format!("n{i}")).collect()
    }

    fn validate(&self) -> Result<(), String> {
        let cluster = &self.cluster;
        if cluster.nodes == 0 || cluster.nodes > NODES_MAX {
            return Err(format!(
                "cluster.nodes is {}: it must be between 1 and {NODES_MAX}",
                cluster.nodes
            ));
        }
        let acceptors = 2 * u64::from(cluster.f) + 1;
        if acceptors > cluster.nodes as u64 {
            return Err(format!(
                "cluster.f = {} needs {acceptors} acceptors but there are {} nodes",
                cluster.f, cluster.nodes
            ));
        }
        let workload = &self.workload;
        if workload.clients == 0 || workload.clients > CLIENTS_MAX {
            return Err(format!(
                "workload.clients is {}: it must be between 1 and {CLIENTS_MAX}",
                workload.clients
            ));
        }
        if !workload.rate.is_finite() || workload.rate < 0.0 {
            return Err(format!(
                "workload.rate is {}: it must be 0 (closed loop) or a positive number of transactions per second",
                workload.rate
            ));
        }
        if workload.keys < 2 || workload.keys > 1_000_000 {
            return Err(format!(
                "workload.keys is {}: it must be between 2 and 1000000",
                workload.keys
            ));
        }
        if workload.duration.is_zero() || workload.duration > DURATION_MAX {
            return Err(format!(
                "workload.duration must be more than 0 and at most {} s",
                DURATION_MAX.as_secs()
            ));
        }
        if self.settle > DURATION_MAX {
            return Err(format!(
                "settle must be at most {} s",
                DURATION_MAX.as_secs()
            ));
        }
        if self.nemesis.len() > NEMESES_MAX {
            return Err(format!(
                "{} nemesis entries: at most {NEMESES_MAX}",
                self.nemesis.len()
            ));
        }
        let names: BTreeSet<String> = self.node_names().into_iter().collect();
        for (index, nemesis) in self.nemesis.iter().enumerate() {
            let at = |message: String| {
                format!(
                    "nemesis {} ({}, at {:?}): {message}",
                    index + 1,
                    nemesis.kind.name(),
                    nemesis.at
                )
            };
            if nemesis.at >= workload.duration {
                return Err(at(format!(
                    "starts after the workload ends ({:?})",
                    workload.duration
                )));
            }
            if nemesis.duration.is_some_and(|duration| duration.is_zero()) {
                return Err(at("duration must be more than 0".to_string()));
            }
            for node in nemesis
                .nodes
                .iter()
                .chain(nemesis.from.iter())
                .chain(nemesis.to.iter())
            {
                if !names.contains(node) {
                    return Err(at(format!(
                        "no node named {node:?} (the nodes are n1 .. n{})",
                        cluster.nodes
                    )));
                }
            }
            for (field, value) in [("drop", nemesis.drop), ("duplicate", nemesis.duplicate)] {
                if let Some(value) = value {
                    if !(0.0..=1.0).contains(&value) {
                        return Err(at(format!("{field} = {value}: it must be between 0 and 1")));
                    }
                }
            }
            for (field, value) in [("delay", nemesis.delay), ("jitter", nemesis.jitter)] {
                if value.is_some_and(|value| value > Duration::from_secs(60)) {
                    return Err(at(format!("{field} must be at most 60 s")));
                }
            }
            if nemesis
                .period
                .is_some_and(|period| period < Duration::from_millis(100))
            {
                return Err(at("period must be at least 100 ms".to_string()));
            }
            let wants_one = matches!(nemesis.kind, NemesisKind::Isolate);
            if wants_one && nemesis.nodes.len() > 1 {
                return Err(at("isolate takes one node".to_string()));
            }
            let needs_two = matches!(
                nemesis.kind,
                NemesisKind::Halves
                    | NemesisKind::Bridge
                    | NemesisKind::Ring
                    | NemesisKind::Asymmetric
                    | NemesisKind::Isolate
                    | NemesisKind::Flapping
            );
            if needs_two && cluster.nodes < 2 {
                return Err(at("needs at least 2 nodes".to_string()));
            }
            if nemesis.kind == NemesisKind::Bridge && cluster.nodes < 3 {
                return Err(at("bridge needs at least 3 nodes".to_string()));
            }
            if nemesis.kind == NemesisKind::Ring && cluster.nodes < 4 {
                return Err(at("ring needs at least 4 nodes".to_string()));
            }
            if nemesis.kind == NemesisKind::Asymmetric
                && nemesis.from.is_some() != nemesis.to.is_some()
            {
                return Err(at(
                    "asymmetric takes both from and to, or neither".to_string()
                ));
            }
            if nemesis.from.is_some() && nemesis.from == nemesis.to {
                return Err(at("from and to are the same node".to_string()));
            }
            if nemesis.kind != NemesisKind::Asymmetric
                && (nemesis.from.is_some() || nemesis.to.is_some())
            {
                return Err(at("from and to belong to asymmetric".to_string()));
            }
        }
        Ok(())
    }

    /// Expands the nemeses into the timeline, drawing unspecified nodes and halves from
    /// `seed`. Every fault ends by the workload's end at the latest.
    pub fn schedule(&self, seed: u64) -> Schedule {
        let mut rng = SplitMix(seed ^ 0x6c61_6221);
        let names = self.node_names();
        let end = self.workload.duration;
        // Each fault as (start, end, effect); network effects are sets of link faults.
        let mut faults: Vec<Fault> = Vec::new();
        let mut heals: Vec<Duration> = Vec::new();
        let mut sorted: Vec<&NemesisSpec> = self.nemesis.iter().collect();
        sorted.sort_by_key(|nemesis| nemesis.at);
        for nemesis in sorted {
            let stop = nemesis
                .duration
                .map_or(end, |duration| (nemesis.at + duration).min(end));
            let chosen = |rng: &mut SplitMix| -> Vec<String> {
                if nemesis.nodes.is_empty() {
                    vec![names[rng.below(names.len())].clone()]
                } else {
                    nemesis.nodes.clone()
                }
            };
            let start = nemesis.at;
            match nemesis.kind {
                NemesisKind::Heal => heals.push(start),
                NemesisKind::Kill | NemesisKind::Pause => {
                    for node in chosen(&mut rng) {
                        faults.push(Fault {
                            name: nemesis.kind.name(),
                            detail: node.clone(),
                            start,
                            end: stop,
                            effect: if nemesis.kind == NemesisKind::Kill {
                                Effect::Kill(node)
                            } else {
                                Effect::Pause(node)
                            },
                        });
                    }
                }
                NemesisKind::Flapping => {
                    let period = nemesis.period.unwrap_or(Duration::from_secs(2));
                    let mut now = start;
                    let mut flaps = 0;
                    while now < stop && flaps < FLAPS_MAX {
                        let on = rng.around(period);
                        let off = rng.around(period);
                        let (links, detail) = if rng.below(2) == 0 {
                            let node = names[rng.below(names.len())].clone();
                            (isolate(&names, &node), format!("{node} isolated"))
                        } else {
                            halves(&names, &mut rng)
                        };
                        let flap_end = (now + on).min(stop);
                        faults.push(Fault {
                            name: "flapping",
                            detail,
                            start: now,
                            end: flap_end,
                            effect: Effect::Network(links),
                        });
                        now = flap_end + off;
                        flaps += 1;
                    }
                }
                kind => {
                    let (links, detail) = network_links(kind, nemesis, &names, &mut rng);
                    debug_assert!(kind.is_network());
                    faults.push(Fault {
                        name: kind.name(),
                        detail,
                        start,
                        end: stop,
                        effect: Effect::Network(links),
                    });
                }
            }
        }
        // A heal ends every fault in force at that instant.
        for heal in &heals {
            for fault in &mut faults {
                if fault.start <= *heal && *heal < fault.end {
                    fault.end = *heal;
                }
            }
        }
        faults.retain(|fault| fault.end > fault.start);
        build_schedule(&faults, &heals, end)
    }
}

/// One fault with its life span.
struct Fault {
    name: &'static str,
    detail: String,
    start: Duration,
    end: Duration,
    effect: Effect,
}

enum Effect {
    Network(Vec<LinkFault>),
    Kill(String),
    Pause(String),
}

fn build_schedule(faults: &[Fault], heals: &[Duration], end: Duration) -> Schedule {
    let mut schedule = Schedule::default();
    // Instants at which the network state may change.
    let mut instants: BTreeSet<Duration> = BTreeSet::new();
    let mut steps: Vec<(Duration, u8, Action)> = Vec::new();
    for fault in faults {
        schedule.intervals.push(Interval {
            name: fault.name.to_string(),
            detail: fault.detail.clone(),
            start_s: fault.start.as_secs_f64(),
            end_s: fault.end.as_secs_f64(),
        });
        match &fault.effect {
            Effect::Network(_) => {
                instants.insert(fault.start);
                instants.insert(fault.end);
            }
            // Process faults end before network changes at the same instant, and a restart
            // comes after any resume.
            Effect::Kill(node) => {
                steps.push((fault.start, 1, Action::Kill { node: node.clone() }));
                steps.push((fault.end, 0, Action::Restart { node: node.clone() }));
            }
            Effect::Pause(node) => {
                steps.push((fault.start, 1, Action::Pause { node: node.clone() }));
                steps.push((fault.end, 0, Action::Resume { node: node.clone() }));
            }
        }
    }
    for heal in heals {
        instants.insert(*heal);
    }
    instants.insert(end);
    let mut previous: Vec<LinkFault> = Vec::new();
    for instant in instants {
        let mut links: Vec<LinkFault> = Vec::new();
        for fault in faults {
            let Effect::Network(fault_links) = &fault.effect else {
                continue;
            };
            if fault.start <= instant && instant < fault.end {
                for link in fault_links {
                    match links
                        .iter_mut()
                        .find(|known| known.from == link.from && known.to == link.to)
                    {
                        Some(known) => known.merge(link),
                        None => links.push(link.clone()),
                    }
                }
            }
        }
        links.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        if links != previous {
            steps.push((
                instant,
                2,
                Action::Network {
                    links: links.clone(),
                },
            ));
            previous = links;
        }
    }
    steps.sort_by_key(|step| (step.0, step.1));
    schedule.steps = steps
        .into_iter()
        .map(|(at, _, action)| Step { at, action })
        .collect();
    schedule
        .intervals
        .sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    schedule
}

fn both_ways(a: &str, b: &str, links: &mut Vec<LinkFault>) {
    links.push(LinkFault::cut(
        Endpoint::Node(a.into()),
        Endpoint::Node(b.into()),
    ));
    links.push(LinkFault::cut(
        Endpoint::Node(b.into()),
        Endpoint::Node(a.into()),
    ));
}

fn isolate(names: &[String], node: &str) -> Vec<LinkFault> {
    let mut links = Vec::new();
    for other in names.iter().filter(|other| *other != node) {
        both_ways(node, other, &mut links);
    }
    links
}

fn cut_between(first: &[String], second: &[String]) -> Vec<LinkFault> {
    let mut links = Vec::new();
    for a in first {
        for b in second.iter().filter(|b| *b != a) {
            if !first.contains(b) {
                both_ways(a, b, &mut links);
            }
        }
    }
    links
}

/// A seeded split into a minority (⌊n/2⌋ nodes) and a majority.
fn halves(names: &[String], rng: &mut SplitMix) -> (Vec<LinkFault>, String) {
    let shuffled = rng.shuffled(names);
    let (minority, majority) = shuffled.split_at(names.len() / 2);
    (
        cut_between(minority, majority),
        format!("{} | {}", minority.join(" "), majority.join(" ")),
    )
}

fn network_links(
    kind: NemesisKind,
    nemesis: &NemesisSpec,
    names: &[String],
    rng: &mut SplitMix,
) -> (Vec<LinkFault>, String) {
    let pick = |rng: &mut SplitMix| -> Vec<String> {
        if nemesis.nodes.is_empty() {
            vec![names[rng.below(names.len())].clone()]
        } else {
            nemesis.nodes.clone()
        }
    };
    match kind {
        NemesisKind::Isolate => {
            let node = pick(rng).remove(0);
            (isolate(names, &node), format!("{node} isolated"))
        }
        NemesisKind::Halves => halves(names, rng),
        NemesisKind::Bridge => {
            let shuffled = rng.shuffled(names);
            let (bridge, rest) = shuffled.split_at(1);
            let (first, second) = rest.split_at(rest.len() / 2);
            (
                cut_between(first, second),
                format!(
                    "{} | {} | {} (bridge {})",
                    first.join(" "),
                    bridge[0],
                    second.join(" "),
                    bridge[0]
                ),
            )
        }
        NemesisKind::Ring => {
            let ring = rng.shuffled(names);
            let count = ring.len();
            let mut links = Vec::new();
            for (i, a) in ring.iter().enumerate() {
                for (j, b) in ring.iter().enumerate() {
                    let distance = (i + count - j) % count;
                    if i != j && distance != 1 && distance != count - 1 {
                        links.push(LinkFault::cut(
                            Endpoint::Node(a.clone()),
                            Endpoint::Node(b.clone()),
                        ));
                    }
                }
            }
            (links, format!("ring {}", ring.join(" - ")))
        }
        NemesisKind::CutClients => {
            let nodes = pick(rng);
            let mut links = Vec::new();
            for node in &nodes {
                links.push(LinkFault::cut(
                    Endpoint::Clients,
                    Endpoint::Node(node.clone()),
                ));
                links.push(LinkFault::cut(
                    Endpoint::Node(node.clone()),
                    Endpoint::Clients,
                ));
            }
            (links, format!("clients cut from {}", nodes.join(" ")))
        }
        NemesisKind::Asymmetric => {
            let (from, to) = match (&nemesis.from, &nemesis.to) {
                (Some(from), Some(to)) => (from.clone(), to.clone()),
                _ => {
                    let shuffled = rng.shuffled(names);
                    (shuffled[0].clone(), shuffled[1].clone())
                }
            };
            (
                vec![LinkFault::cut(
                    Endpoint::Node(from.clone()),
                    Endpoint::Node(to.clone()),
                )],
                format!("{to} does not hear {from}"),
            )
        }
        NemesisKind::Lossy | NemesisKind::Slow | NemesisKind::Duplicate => {
            let nodes = pick(rng);
            let mut links = Vec::new();
            for node in &nodes {
                for other in names.iter().filter(|other| *other != node) {
                    for (from, to) in [(node, other), (other, node)] {
                        let mut link = LinkFault::cut(
                            Endpoint::Node(from.clone()),
                            Endpoint::Node(to.clone()),
                        );
                        link.drop = 0.0;
                        match kind {
                            NemesisKind::Lossy => link.drop = nemesis.drop.unwrap_or(0.2),
                            NemesisKind::Slow => {
                                link.delay = nemesis.delay.unwrap_or(Duration::from_millis(50));
                                link.jitter = nemesis.jitter.unwrap_or(Duration::ZERO);
                            }
                            _ => link.duplicate = nemesis.duplicate.unwrap_or(0.2),
                        }
                        links.push(link);
                    }
                }
            }
            let what = match kind {
                NemesisKind::Lossy => format!("drop {}", nemesis.drop.unwrap_or(0.2)),
                NemesisKind::Slow => {
                    format!("+{:?}", nemesis.delay.unwrap_or(Duration::from_millis(50)))
                }
                _ => format!("duplicate {}", nemesis.duplicate.unwrap_or(0.2)),
            };
            (links, format!("{} links of {}", what, nodes.join(" ")))
        }
        NemesisKind::Flapping | NemesisKind::Kill | NemesisKind::Pause | NemesisKind::Heal => {
            (Vec::new(), String::new())
        }
    }
}

/// SplitMix64: the schedule's own seeded generator (no dependency, stable across versions).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in [period/2, 3·period/2).
    fn around(&mut self, period: Duration) -> Duration {
        let micros = period.as_micros().min(u128::from(u64::MAX)) as u64;
        let half = micros / 2;
        Duration::from_micros(half + self.next() % micros.max(1))
    }

    fn shuffled(&mut self, names: &[String]) -> Vec<String> {
        let mut out = names.to_vec();
        for i in (1..out.len()).rev() {
            let j = self.below(i + 1);
            out.swap(i, j);
        }
        out
    }
}

/// Durations written as `"250ms"`, `"5s"`, `"2m"` (or a number of seconds).
mod humantime {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let raw = Raw::deserialize(deserializer)?;
        raw.duration().map_err(serde::de::Error::custom)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Raw {
        Seconds(f64),
        Text(String),
    }

    impl Raw {
        pub(super) fn duration(&self) -> Result<Duration, String> {
            match self {
                Raw::Seconds(seconds)
                    if seconds.is_finite() && *seconds >= 0.0 && *seconds <= 1e9 =>
                {
                    Ok(Duration::from_secs_f64(*seconds))
                }
                Raw::Seconds(seconds) => Err(format!("{seconds} is not a duration in seconds")),
                Raw::Text(text) => super::parse_duration(text),
            }
        }
    }
}

mod humantime_option {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_str(&super::format_duration(*value)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let raw = Option::<super::humantime::Raw>::deserialize(deserializer)?;
        raw.map(|raw| raw.duration())
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `"250ms"`, `"1.5s"`, `"2m"`, `"100us"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("{text:?} is not a duration (write e.g. \"250ms\", \"5s\", \"2m\")")
    })?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "" => 1.0,
        "m" | "min" => 60.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use us, ms, s or m)"
            ))
        }
    };
    let seconds = value * scale;
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `Duration` as the files write it (`"250ms"`, `"5s"`).
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}us", duration.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASIC: &str = r#"
name = "t"
[cluster]
nodes = 5
f = 1
[workload]
kind = "register"
duration = "20s"
[[nemesis]]
kind = "halves"
at = "5s"
duration = "5s"
[[nemesis]]
kind = "kill"
nodes = ["n2"]
at = "12s"
duration = "3s"
"#;

    #[test]
    fn a_scenario_expands_into_steps_that_heal_and_restart() {
        let scenario = Scenario::parse(BASIC, "basic.toml").expect("valid");
        assert_eq!(scenario.settle, Duration::from_secs(30));
        assert_eq!(scenario.workload.clients, 8);
        let schedule = scenario.schedule(7);
        let kinds: Vec<(u64, &str)> = schedule
            .steps
            .iter()
            .map(|step| {
                let name = match &step.action {
                    Action::Network { links } if links.is_empty() => "heal",
                    Action::Network { .. } => "network",
                    Action::Kill { .. } => "kill",
                    Action::Restart { .. } => "restart",
                    Action::Pause { .. } => "pause",
                    Action::Resume { .. } => "resume",
                };
                (step.at.as_secs(), name)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![(5, "network"), (10, "heal"), (12, "kill"), (15, "restart")]
        );
        let Action::Network { links } = &schedule.steps[0].action else {
            panic!("network first");
        };
        // 2 | 3 nodes: 2·3 pairs, both ways.
        assert_eq!(links.len(), 12);
        assert_eq!(schedule.intervals.len(), 2);
        assert_eq!(
            scenario.schedule(7),
            schedule,
            "the seed fixes the schedule"
        );
    }

    #[test]
    fn transfers_read_for_update_unless_the_scenario_says_shared_reads() {
        let scenario = Scenario::parse(BASIC, "basic.toml").expect("valid");
        assert!(!scenario.workload.shared_reads);
        let shared = BASIC.replace(
            "duration = \"20s\"",
            "duration = \"20s\"\nshared_reads = true",
        );
        let scenario = Scenario::parse(&shared, "shared.toml").expect("valid");
        assert!(scenario.workload.shared_reads);
        let typo = BASIC.replace(
            "duration = \"20s\"",
            "duration = \"20s\"\nshared_read = true",
        );
        assert!(
            Scenario::parse(&typo, "typo.toml").is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn overlapping_faults_merge_and_heal_ends_them() {
        let text = r#"
name = "t"
[cluster]
nodes = 3
f = 1
[workload]
kind = "bank"
duration = "30s"
[[nemesis]]
kind = "isolate"
nodes = ["n1"]
at = "2s"
[[nemesis]]
kind = "slow"
nodes = ["n1"]
delay = "20ms"
at = "4s"
[[nemesis]]
kind = "pause"
nodes = ["n3"]
at = "5s"
[[nemesis]]
kind = "heal"
at = "8s"
"#;
        let schedule = Scenario::parse(text, "t").expect("valid").schedule(1);
        let at = |secs: u64| {
            schedule
                .steps
                .iter()
                .filter(|step| step.at == Duration::from_secs(secs))
                .map(|step| step.action.clone())
                .collect::<Vec<_>>()
        };
        let Action::Network { links } = &at(4)[0] else {
            panic!("network at 4 s");
        };
        let n1_n2 = links
            .iter()
            .find(|link| {
                link.from == Endpoint::Node("n1".into()) && link.to == Endpoint::Node("n2".into())
            })
            .expect("n1 -> n2");
        assert_eq!((n1_n2.drop, n1_n2.delay), (1.0, Duration::from_millis(20)));
        assert_eq!(
            at(8),
            vec![
                Action::Resume { node: "n3".into() },
                Action::Network { links: vec![] }
            ]
        );
        assert!(schedule
            .steps
            .iter()
            .all(|step| step.at <= Duration::from_secs(8)));
    }

    #[test]
    fn ring_bridge_asymmetric_and_flapping_make_the_links_they_promise() {
        let text = r#"
name = "t"
[cluster]
nodes = 5
f = 2
[workload]
kind = "register"
duration = "40s"
[[nemesis]]
kind = "ring"
at = "1s"
duration = "2s"
[[nemesis]]
kind = "bridge"
at = "4s"
duration = "2s"
[[nemesis]]
kind = "asymmetric"
from = "n1"
to = "n2"
at = "7s"
duration = "2s"
[[nemesis]]
kind = "flapping"
at = "10s"
duration = "20s"
period = "1s"
"#;
        let schedule = Scenario::parse(text, "t").expect("valid").schedule(3);
        let links_at = |secs: u64| -> Vec<LinkFault> {
            match schedule
                .steps
                .iter()
                .find(|step| step.at == Duration::from_secs(secs))
                .map(|step| &step.action)
            {
                Some(Action::Network { links }) => links.clone(),
                other => panic!("no network step at {secs}: {other:?}"),
            }
        };
        // Ring of 5: each node hears 2 of 4 others, so 5·2 directed links are cut.
        assert_eq!(links_at(1).len(), 10);
        // Bridge of 5: halves of 2 and 2 around the bridge: 2·2 pairs both ways.
        assert_eq!(links_at(4).len(), 8);
        assert_eq!(
            links_at(7),
            vec![LinkFault::cut(
                Endpoint::Node("n1".into()),
                Endpoint::Node("n2".into())
            )]
        );
        let flaps = schedule
            .intervals
            .iter()
            .filter(|interval| interval.name == "flapping")
            .count();
        assert!(
            (4..=20).contains(&flaps),
            "{flaps} flaps in 20 s at a 1 s period"
        );
        assert!(schedule
            .intervals
            .iter()
            .all(|interval| interval.end_s <= 30.0 && interval.start_s < interval.end_s));
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_sentence() {
        let cases = [
            ("name = \"t\"", "missing field"),
            (
                "name='t'\n[cluster]\nnodes=3\nf=2\n[workload]\nkind='register'\nduration='5s'",
                "needs 5 acceptors",
            ),
            (
                "name='t'\n[cluster]\nnodes=3\nf=1\n[workload]\nkind='register'\nduration='5s'\n[[nemesis]]\nkind='kill'\nnodes=['n9']\nat='1s'",
                "no node named \"n9\"",
            ),
            (
                "name='t'\n[cluster]\nnodes=3\nf=1\n[workload]\nkind='register'\nduration='5s'\n[[nemesis]]\nkind='lossy'\ndrop=1.5\nat='1s'",
                "between 0 and 1",
            ),
            (
                "name='t'\n[cluster]\nnodes=3\nf=1\n[workload]\nkind='register'\nduration='5s'\n[[nemesis]]\nkind='kill'\nat='9s'",
                "starts after the workload ends",
            ),
            (
                "name='t'\n[cluster]\nnodes=3\nf=1\n[workload]\nkind='register'\nduration='5 fortnights'",
                "unknown unit",
            ),
            (
                "name='t'\nsurprise=1\n[cluster]\nnodes=3\nf=1\n[workload]\nkind='register'\nduration='5s'",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = Scenario::parse(text, "bad.toml")
                .expect_err(text)
                .to_string();
            assert!(
                error.contains(expected),
                "{error:?} should say {expected:?}"
            );
            assert!(error.starts_with("scenario bad.toml"), "{error}");
        }
    }

    #[test]
    fn durations_read_and_write_in_the_files_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e300s").is_err());
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    }
}
