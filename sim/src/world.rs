//! The simulated world: data nodes, clients, a faulty network and disks, on virtual time.
//!
//! One seeded PRNG drives everything, so a seed replays exactly. A run has four phases:
//! 1. setup — the workload's initial data, no faults;
//! 2. safety — clients run the workload while faults are injected;
//! 3. liveness — every fault heals (crashed nodes restart, partitions end, no loss); every
//!    transaction must then be decided everywhere;
//! 4. final — a power cut on every node (only synced bytes survive), restart, settle, and
//!    the durable logs are checked for durability and serializability.

use crate::checker::{ClusterHistory, Observer};
use crate::config::{Params, RunConfig};
use crate::history::History;
use crate::simulated_address;
use crate::workload::{parse_balance, Planned, Step, Workload};
use dtx_protocol::{
    decode_log, encode_record, Client, ClientConfig, Cluster, Envelope, Event, Finished, Input,
    Key, Member, MessageKind, Node, NodeConfig, NodeId, Output, PersistToken, ReadResult, Record,
    Rng, Time, TxnId, TxnResult, Value,
};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

/// Most events one run may process before it is declared stuck.
const EVENTS_MAX: u64 = 50_000_000;
/// Longest virtual time the safety phase may take.
const SAFETY_PHASE_MAX_MICROS: u64 = 3_600_000_000;
/// Longest virtual time the liveness (and final) phase may take to settle.
const SETTLE_MAX_MICROS: u64 = 300_000_000;
/// How often the settle check runs.
const TICK_MICROS: u64 = 5_000;
/// Client ids start here (data nodes are 1..=nodes).
const CLIENT_ID_BASE: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Setup,
    Safety,
    Liveness,
    Final,
    Done,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Deliver {
        from: NodeId,
        to: NodeId,
        messages: Vec<dtx_protocol::Message>,
    },
    NodeTimer {
        index: usize,
        incarnation: u64,
    },
    Synced {
        index: usize,
        incarnation: u64,
        token: PersistToken,
        length: usize,
    },
    ClientTimer {
        index: usize,
        incarnation: u64,
    },
    ClientNext {
        index: usize,
        incarnation: u64,
    },
    ClientCrash {
        index: usize,
        incarnation: u64,
    },
    Crash,
    Restart {
        index: usize,
    },
    Partition,
    Heal {
        partition: u64,
    },
    Tick,
    RetrySetup,
}

#[derive(Debug, Default)]
struct Disk {
    bytes: Vec<u8>,
    synced: usize,
    pending: Option<(PersistToken, usize)>,
    syncing: bool,
    /// Records at the head of `bytes` that are a checkpoint (see `checkpoints_on`).
    checkpoint_records: usize,
    /// The records checkpoints compacted away: not read by recovery, kept so that the
    /// checkers still see the whole durable history.
    archive: Vec<Record>,
}

/// Seeds on which every restart first compacts the node's disk to
/// `Node::checkpoint_log` of what it holds (as the daemon's log compactor does) and
/// recovers from that, so the snapshot path runs under every fault. A per-seed flag
/// drawn without the run's PRNG: the other seeds replay exactly as before.
fn checkpoints_on(seed: u64) -> bool {
    seed.is_multiple_of(2)
}

#[derive(Debug)]
struct Host {
    config: NodeConfig,
    node: Option<Node>,
    incarnation: u64,
    disk: Disk,
    timer_armed: Option<Time>,
}

#[derive(Debug)]
struct Busy {
    txn: TxnId,
    planned: Planned,
    /// Interactive: operations issued so far, and the reads they returned.
    issued: Vec<dtx_protocol::Operation>,
    reads: Vec<ReadResult>,
    /// Interactive: writes held back to travel with the prepares (`commit_with`).
    buffered: Vec<dtx_protocol::Operation>,
}

impl Busy {
    fn operations(&self) -> &[dtx_protocol::Operation] {
        if self.planned.step.is_interactive() {
            &self.issued
        } else {
            &self.planned.operations
        }
    }
}

#[derive(Debug)]
struct ClientHost {
    client: Client,
    incarnation: u64,
    busy: Option<Busy>,
    timer_armed: Option<Time>,
}

/// Statistics of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Transactions begun (excluding setup).
    pub txns: u64,
    /// Of those, committed as the client saw it.
    pub committed: u64,
    /// Aborted as the client saw it.
    pub aborted: u64,
    /// Outcome unknown to the client (it crashed or gave up, or read results were lost).
    pub unknown: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Client crashes.
    pub client_crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Recovery ballots started.
    pub recoveries: u64,
    /// Protocol messages sent.
    pub messages: u64,
    /// Frames (envelopes) sent.
    pub frames: u64,
    /// Frames lost (loss or partition).
    pub frames_lost: u64,
    /// fsyncs.
    pub fsyncs: u64,
    /// Messages rejected by a receiver (with honest peers this should stay 0).
    pub rejected: u64,
    /// Audits whose total was checked.
    pub audits_checked: u64,
    /// Simulated events processed.
    pub events: u64,
    /// Lock waits begun (interactive operations queued for a lock).
    pub lock_waits: u64,
    /// Lock waits that hit the lock-wait timeout.
    pub lock_wait_timeouts: u64,
    /// Deadlocks found and broken by the detector (victims aborted).
    pub deadlocks_detected: u64,
    /// Victims that were on no real wait-for cycle when aborted.
    pub phantom_aborts: u64,
    /// Wound-wait aborts.
    pub wounds: u64,
    /// Deadlock probe messages sent.
    pub probes: u64,
    /// Suspicions of nodes that were up, with no partition in force.
    pub false_suspicions: u64,
    /// Suspicions of nodes that were up but cut off by a partition.
    pub partition_suspicions: u64,
    /// Suspicions of a node restarted less than 20 heartbeat intervals before, whose new
    /// incarnation had not yet reached the suspecting node (stale, not false).
    pub stale_suspicions: u64,
    /// Gossip heartbeat messages sent.
    pub gossip_messages: u64,
    /// Bytes of those messages, encoded as on the wire (one message per frame).
    pub gossip_bytes: u64,
    /// Transactions refused at once because a participant was suspected.
    pub failed_fast: u64,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Counters.
    #[serde(flatten)]
    pub stats: Stats,
    /// Violations found (at most 50 in full).
    pub violations: Vec<String>,
    /// Number of violations.
    pub violation_count: u64,
    /// Transactions still undecided somewhere after the liveness phase.
    pub undecided_after_heal: u64,
    /// Median commit latency (virtual microseconds).
    pub latency_p50_micros: u64,
    /// 99th percentile commit latency (virtual microseconds).
    pub latency_p99_micros: u64,
    /// Virtual time simulated.
    pub virtual_millis: u64,
    /// Message accounting: per committed transaction, frames per txn by participant count.
    pub frames_per_commit: BTreeMap<usize, f64>,
    /// Messages per committed transaction by kind (all participant counts together).
    pub messages_per_commit_by_kind: BTreeMap<String, f64>,
    /// Deadlock probes per deadlock found.
    pub probes_per_deadlock: f64,
    /// Median time from a cycle's last wait to its victim's abort (virtual microseconds).
    pub deadlock_latency_p50_micros: u64,
    /// 99th percentile of the same.
    pub deadlock_latency_p99_micros: u64,
    /// Median time from a node's crash to a live node suspecting it (virtual microseconds).
    pub detection_p50_micros: u64,
    /// 99th percentile of the same.
    pub detection_p99_micros: u64,
    /// Median time from a client's crash to its transaction being decided by a node.
    pub orphan_decided_p50_micros: u64,
    /// Median time from a data node's crash to the first decision of a transaction it
    /// participated in that was undecided when it crashed.
    pub stranded_decided_p50_micros: u64,
    /// The raw samples behind the two medians above, for aggregation over seeds.
    #[serde(skip)]
    pub recovery_samples: RecoverySamples,
    /// The client-observed history, if recorded.
    #[serde(skip)]
    pub history: Option<History>,
}

/// Crash-to-decision times (virtual microseconds) of transactions a crash left behind.
#[derive(Clone, Debug, Default)]
pub struct RecoverySamples {
    /// A client died during the transaction.
    pub client_crash: Vec<u64>,
    /// A participant (data node) died while the transaction was undecided.
    pub participant_crash: Vec<u64>,
}

/// A simulation in progress.
pub struct Simulation {
    config: RunConfig,
    params: Params,
    rng: Rng,
    now: Time,
    queue: BinaryHeap<Reverse<(Time, u64, Action)>>,
    sequence: u64,
    phase: Phase,
    phase_started: Time,
    cluster: Cluster,
    hosts: Vec<Host>,
    clients: Vec<ClientHost>,
    client_by_id: BTreeMap<NodeId, usize>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    partition_id: u64,
    workload: Workload,
    observer: Observer,
    history: Option<History>,
    stats: Stats,
    participants: BTreeMap<TxnId, Vec<NodeId>>,
    client_reads: Vec<(TxnId, Vec<ReadResult>)>,
    latencies: Vec<u64>,
    frames_by_txn: BTreeMap<TxnId, u64>,
    kinds_by_txn: BTreeMap<TxnId, BTreeMap<MessageKind, u64>>,
    undecided_after_heal: u64,
    extra_violations: Vec<String>,
    final_snapshot: Option<Vec<BTreeMap<Key, Value>>>,
    /// `DTX_SIM_TRACE=t1000000.23` prints everything that happens to that transaction.
    trace: Option<String>,
    wait_started: BTreeMap<TxnId, Time>,
    deadlock_latencies: Vec<u64>,
    crashed_at: BTreeMap<NodeId, Time>,
    restarted_at: BTreeMap<NodeId, Time>,
    detected: BTreeSet<(NodeId, NodeId, Time)>,
    detection_latencies: Vec<u64>,
    orphaned: BTreeMap<TxnId, Time>,
    orphan_recoveries: Vec<u64>,
    stranded: BTreeMap<TxnId, Time>,
    stranded_recoveries: Vec<u64>,
}

/// Runs one seed to completion.
pub fn run(config: &RunConfig) -> RunReport {
    let mut simulation = Simulation::new(config.clone());
    simulation.run();
    simulation.report()
}

impl Simulation {
    /// Builds the world for a run.
    pub fn new(config: RunConfig) -> Simulation {
        let mut rng = Rng::new(config.seed);
        let params = Params::draw(&config, &mut rng);
        let members: Vec<Member> = (1..=config.nodes as u64)
            .map(|index| Member {
                id: NodeId(index),
                name: format!("n{index}"),
            })
            .collect();
        let cluster = match Cluster::new(members, config.f) {
            Ok(cluster) => cluster,
            Err(error) => panic!("invalid simulated cluster: {error}"),
        };
        let hosts = (1..=config.nodes as u64)
            .map(|index| {
                let mut node_config =
                    NodeConfig::new(NodeId(index), cluster.clone(), rng.next_u64());
                node_config.decision_timeout =
                    Duration::from_micros(params.decision_timeout_micros);
                node_config.recovery_backoff_max =
                    Duration::from_micros(params.decision_timeout_micros * 16);
                node_config.bugs = config.bugs.clone();
                node_config.thrifty = params.thrifty;
                node_config.deadlock = config.deadlock;
                node_config.lock_wait_timeout =
                    Duration::from_micros(params.lock_wait_timeout_micros);
                node_config.probe_delay = Duration::from_micros(params.probe_delay_micros);
                node_config.execution_idle_timeout =
                    Duration::from_micros(params.execution_idle_micros);
                // Nodes and clients run the detector together or not at all.
                node_config.detector = params
                    .heartbeat_interval_micros
                    .map(|interval| detector_config(interval, config.timing.is_some()));
                let mut node = Node::new(node_config.clone());
                node.set_addresses(vec![simulated_address(node_config.id)]);
                Host {
                    node: Some(node),
                    config: node_config,
                    incarnation: 0,
                    disk: Disk::default(),
                    timer_armed: None,
                }
            })
            .collect();
        let client_count = if config.accounting {
            1
        } else {
            config.clients.max(1)
        };
        let mut simulation = Simulation {
            workload: {
                let mut workload = Workload::new(config.workload, config.nodes, config.accounting);
                workload.set_hot_keys(config.hot_keys);
                workload
            },
            observer: Observer::new(config.f),
            history: config.record_history.then(History::default),
            params,
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            sequence: 0,
            phase: Phase::Setup,
            phase_started: Time::ZERO,
            cluster,
            hosts,
            clients: Vec::new(),
            client_by_id: BTreeMap::new(),
            blocked: BTreeSet::new(),
            partition_id: 0,
            stats: Stats::default(),
            participants: BTreeMap::new(),
            client_reads: Vec::new(),
            latencies: Vec::new(),
            frames_by_txn: BTreeMap::new(),
            kinds_by_txn: BTreeMap::new(),
            undecided_after_heal: 0,
            extra_violations: Vec::new(),
            final_snapshot: None,
            trace: std::env::var("DTX_SIM_TRACE").ok(),
            wait_started: BTreeMap::new(),
            deadlock_latencies: Vec::new(),
            crashed_at: BTreeMap::new(),
            restarted_at: BTreeMap::new(),
            detected: BTreeSet::new(),
            detection_latencies: Vec::new(),
            orphaned: BTreeMap::new(),
            orphan_recoveries: Vec::new(),
            stranded: BTreeMap::new(),
            stranded_recoveries: Vec::new(),
            config,
        };
        for index in 0..client_count {
            let client = simulation.new_client(index, 0);
            simulation.clients.push(client);
        }
        simulation
    }

    fn new_client(&mut self, index: usize, incarnation: u64) -> ClientHost {
        let id = NodeId(CLIENT_ID_BASE + index as u64 * 1_000 + incarnation);
        let mut client_config = ClientConfig::new(id, self.cluster.clone(), self.rng.next_u64());
        client_config.retry_timeout = Duration::from_micros(self.params.client_retry_micros);
        client_config.retry_timeout_max =
            Duration::from_micros(self.params.client_retry_micros * 8);
        client_config.retries_max = 10_000;
        client_config.detector = self
            .params
            .heartbeat_interval_micros
            .map(|interval| detector_config(interval, self.config.timing.is_some()));
        self.client_by_id.insert(id, index);
        ClientHost {
            client: Client::new(client_config),
            incarnation,
            busy: None,
            timer_armed: None,
        }
    }

    fn schedule(&mut self, at: Time, action: Action) {
        self.sequence += 1;
        self.queue
            .push(Reverse((at.max(self.now), self.sequence, action)));
    }

    fn after(&mut self, micros: u64, action: Action) {
        let at = self.now.saturating_add(Duration::from_micros(micros));
        self.schedule(at, action);
    }

    /// Runs all phases.
    pub fn run(&mut self) {
        match self.workload.setup() {
            Some(planned) => self.begin(0, planned),
            None => self.start_safety(),
        }
        while self.phase != Phase::Done {
            let Some(Reverse((at, _, action))) = self.queue.pop() else {
                self.extra_violations
                    .push(format!("event queue ran dry in phase {:?}", self.phase));
                break;
            };
            self.now = at;
            self.stats.events += 1;
            if self.stats.events > EVENTS_MAX {
                self.extra_violations.push(format!(
                    "event budget of {EVENTS_MAX} exhausted in phase {:?}",
                    self.phase
                ));
                break;
            }
            self.dispatch(action);
        }
    }

    fn dispatch(&mut self, action: Action) {
        match action {
            Action::Deliver { from, to, messages } => self.deliver(from, to, messages),
            Action::NodeTimer { index, incarnation } => self.on_node_timer(index, incarnation),
            Action::Synced {
                index,
                incarnation,
                token,
                length,
            } => self.on_synced(index, incarnation, token, length),
            Action::ClientTimer { index, incarnation } => self.on_client_timer(index, incarnation),
            Action::ClientNext { index, incarnation } => self.on_client_next(index, incarnation),
            Action::ClientCrash { index, incarnation } => self.crash_client(index, incarnation),
            Action::Crash => self.on_crash_fault(),
            Action::Restart { index } => self.restart(index),
            Action::Partition => self.on_partition(),
            Action::Heal { partition } => {
                if partition == self.partition_id {
                    self.blocked.clear();
                    if self.phase == Phase::Safety {
                        let wait = self.rng.between(1, self.params.partition_interval_micros);
                        self.after(wait, Action::Partition);
                    }
                }
            }
            Action::Tick => self.on_tick(),
            Action::RetrySetup => {
                if let Some(planned) = self.workload.setup() {
                    self.begin(0, planned);
                }
            }
        }
    }

    // ----- Phases --------------------------------------------------------------------

    fn start_safety(&mut self) {
        self.phase = Phase::Safety;
        self.phase_started = self.now;
        let faults = self.config.faults;
        if faults.crashes {
            let wait = self.rng.between(1, self.params.crash_interval_micros);
            self.after(wait, Action::Crash);
        }
        if faults.partitions {
            let wait = self.rng.between(1, self.params.partition_interval_micros);
            self.after(wait, Action::Partition);
        }
        for index in 0..self.clients.len() {
            let incarnation = self.clients[index].incarnation;
            self.after(0, Action::ClientNext { index, incarnation });
        }
        self.after(TICK_MICROS, Action::Tick);
    }

    fn start_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.phase_started = self.now;
        self.blocked.clear();
        self.params.loss_chance = 0.0;
        self.params.duplication_chance = 0.0;
        self.params.delay_tail_chance = 0.0;
        for index in 0..self.hosts.len() {
            self.restart(index);
        }
    }

    fn start_final(&mut self) {
        self.phase = Phase::Final;
        self.phase_started = self.now;
        let before: Vec<BTreeMap<Key, Value>> = self.hosts.iter().map(store_values).collect();
        for index in 0..self.hosts.len() {
            self.power_cut(index, false);
            self.restart(index);
        }
        self.final_snapshot = Some(before);
    }

    fn on_tick(&mut self) {
        let elapsed = self.now.since(self.phase_started).as_micros() as u64;
        match self.phase {
            Phase::Setup | Phase::Done => {}
            Phase::Safety => {
                let issued_all = self.stats.txns >= self.config.txns as u64;
                let idle = self.clients.iter().all(|client| client.busy.is_none());
                if (issued_all && idle) || elapsed > SAFETY_PHASE_MAX_MICROS {
                    self.start_liveness();
                }
            }
            Phase::Liveness => {
                if self.settled() {
                    self.start_final();
                } else if elapsed > SETTLE_MAX_MICROS {
                    self.undecided_after_heal = self.undecided_count();
                    self.start_final();
                }
            }
            Phase::Final => {
                if self.settled() || elapsed > SETTLE_MAX_MICROS {
                    if !self.settled() {
                        self.extra_violations.push(format!(
                            "{} transactions undecided after the final power cut and recovery",
                            self.undecided_count()
                        ));
                    }
                    self.finish_checks();
                    self.phase = Phase::Done;
                    return;
                }
            }
        }
        self.after(TICK_MICROS, Action::Tick);
    }

    fn settled(&self) -> bool {
        self.undecided_count() == 0
    }

    fn undecided_count(&self) -> u64 {
        let mut undecided: BTreeSet<TxnId> = BTreeSet::new();
        let mut executing = 0;
        for host in &self.hosts {
            if let Some(node) = &host.node {
                undecided.extend(node.undecided().map(|descriptor| descriptor.txn));
                executing += node.executions().0 as u64;
            }
        }
        let undecided_count = undecided.len() as u64 + executing;
        let mut undecided: BTreeSet<TxnId> = BTreeSet::new();
        for client in &self.clients {
            if let Some(busy) = &client.busy {
                undecided.insert(busy.txn);
            }
        }
        undecided_count + undecided.len() as u64
    }

    // ----- Nodes ---------------------------------------------------------------------

    fn node_input(&mut self, index: usize, input: Input) {
        let now = self.now;
        let Some(node) = self.hosts[index].node.as_mut() else {
            return;
        };
        node.handle(now, input);
        self.drain_node(index);
    }

    fn drain_node(&mut self, index: usize) {
        let Some(node) = self.hosts[index].node.as_mut() else {
            return;
        };
        let id = node.id();
        let mut outputs = Vec::new();
        while let Some(output) = node.poll_output() {
            outputs.push(output);
        }
        let mut events = Vec::new();
        while let Some(event) = node.poll_event() {
            events.push(event);
        }
        for output in outputs {
            match output {
                Output::Persist { token, records } => self.disk_write(index, token, &records),
                Output::Send(envelope) => self.transmit(id, envelope),
            }
        }
        for event in events {
            if let Event::Decided { txn, .. }
            | Event::Voted { txn, .. }
            | Event::RecoveryStarted { txn, .. } = &event
            {
                if self.traced(*txn) {
                    eprintln!("{:>10} event at {id}: {event:?}", self.now.as_micros());
                }
            }
            match event {
                Event::Decided { txn, outcome, .. } => {
                    self.observer.on_decided(id, txn, outcome);
                    if let Some(crashed) = self.orphaned.remove(&txn) {
                        self.orphan_recoveries
                            .push(self.now.since(crashed).as_micros() as u64);
                    }
                    if let Some(crashed) = self.stranded.remove(&txn) {
                        self.stranded_recoveries
                            .push(self.now.since(crashed).as_micros() as u64);
                    }
                }
                Event::RecoveryStarted { .. } => self.stats.recoveries += 1,
                Event::Rejected { from, reason } => {
                    self.stats.rejected += 1;
                    if reason == dtx_protocol::RejectReason::ConflictingPhase2a {
                        self.observer
                            .violation(format!("{id} got conflicting Phase2a from {from}"));
                    }
                }
                Event::Voted { .. } | Event::AcceptorFenceCleared => {}
                // Honest logs and a few thousand ballots: neither can happen here.
                Event::RecoveryRoundsExhausted { .. } | Event::ReplayAnomaly { .. } => {
                    self.observer.violation(format!("{id}: {event:?}"));
                }
                Event::LockWaitStarted { txn, .. } => {
                    self.stats.lock_waits += 1;
                    self.wait_started.insert(txn, self.now);
                }
                Event::LockWaitTimedOut { .. } => self.stats.lock_wait_timeouts += 1,
                Event::Wounded { .. } => self.stats.wounds += 1,
                Event::Suspicion { node, suspected } => self.on_suspicion(id, node, suspected),
                Event::DeadlockVictim {
                    victim,
                    cycle,
                    local_edges,
                } => {
                    self.on_deadlock_victim(index, victim, &cycle, local_edges);
                }
            }
        }
        self.arm_node_timer(index);
    }

    /// Failure detection: time from a crash to each live node's suspicion, and suspicions of
    /// nodes that were up (false, or caused by a partition).
    fn on_suspicion(&mut self, observer: NodeId, node: NodeId, suspected: bool) {
        if !suspected {
            return;
        }
        if !self.cluster.is_member(node) {
            return;
        }
        let down = self.hosts[(node.0 - 1) as usize].node.is_none();
        let crashed_at = self.crashed_at.get(&node).copied();
        match (down, crashed_at) {
            (true, Some(at)) => {
                let first = self.detected.insert((observer, node, at));
                if first {
                    self.detection_latencies
                        .push(self.now.since(at).as_micros() as u64);
                }
            }
            (false, Some(at))
                if self.restarted_at.get(&node).is_some_and(|restarted| {
                    *restarted >= at
                        && self.now.since(*restarted).as_micros() as u64
                            <= 20 * self.params.heartbeat_interval_micros.unwrap_or(0)
                }) =>
            {
                self.stats.stale_suspicions += 1;
            }
            _ if self.blocked.is_empty() => self.stats.false_suspicions += 1,
            _ => self.stats.partition_suspicions += 1,
        }
    }

    /// Deadlock soundness: the victim must be on a real cycle of the global wait-for graph
    /// (the simulator sees every node) at the moment it is aborted.
    fn on_deadlock_victim(
        &mut self,
        index: usize,
        victim: TxnId,
        cycle: &[dtx_protocol::ProbeHop],
        local_edges: Vec<(TxnId, TxnId)>,
    ) {
        self.stats.deadlocks_detected += 1;
        let mut edges: BTreeMap<TxnId, BTreeSet<TxnId>> = BTreeMap::new();
        for (waiter, blocker) in local_edges {
            edges.entry(waiter).or_default().insert(blocker);
        }
        for (other, host) in self.hosts.iter().enumerate() {
            if other == index {
                continue;
            }
            if let Some(node) = &host.node {
                for (waiter, blocker) in node.wait_for_edges() {
                    edges.entry(waiter).or_default().insert(blocker);
                }
            }
        }
        if !reaches(&edges, victim, victim) {
            self.stats.phantom_aborts += 1;
            if self.config.faults.is_none() {
                self.observer.violation(format!(
                    "phantom deadlock: {victim} aborted but is on no wait-for cycle (cycle claimed: {:?})",
                    cycle.iter().map(|hop| hop.txn.to_string()).collect::<Vec<_>>()
                ));
            }
        }
        let formed = cycle
            .iter()
            .filter_map(|hop| self.wait_started.get(&hop.txn))
            .max()
            .copied();
        if let Some(formed) = formed {
            self.deadlock_latencies
                .push(self.now.since(formed).as_micros() as u64);
        }
    }

    fn arm_node_timer(&mut self, index: usize) {
        let host = &self.hosts[index];
        let Some(due) = host.node.as_ref().and_then(Node::poll_timeout) else {
            return;
        };
        if host.timer_armed.is_some_and(|armed| armed <= due) {
            return;
        }
        let incarnation = host.incarnation;
        self.hosts[index].timer_armed = Some(due);
        self.schedule(due, Action::NodeTimer { index, incarnation });
    }

    fn on_node_timer(&mut self, index: usize, incarnation: u64) {
        if self.hosts[index].incarnation != incarnation {
            return;
        }
        self.hosts[index].timer_armed = None;
        let due = self.hosts[index].node.as_ref().and_then(Node::poll_timeout);
        if due.is_some_and(|due| due <= self.now) {
            self.node_input(index, Input::Timeout);
        } else {
            self.arm_node_timer(index);
        }
    }

    fn disk_write(&mut self, index: usize, token: PersistToken, records: &[Record]) {
        let disk = &mut self.hosts[index].disk;
        for record in records {
            if let Err(error) = encode_record(record, &mut disk.bytes) {
                panic!("record does not encode: {error}");
            }
        }
        disk.pending = Some((token, disk.bytes.len()));
        if !disk.syncing {
            self.start_sync(index);
        }
    }

    /// Group commit: one fsync covers everything written while the previous one ran.
    fn start_sync(&mut self, index: usize) {
        let Some((token, length)) = self.hosts[index].disk.pending.take() else {
            return;
        };
        self.hosts[index].disk.syncing = true;
        self.stats.fsyncs += 1;
        let incarnation = self.hosts[index].incarnation;
        let latency = self.rng.between(
            self.params.fsync_min_micros,
            self.params
                .fsync_max_micros
                .max(self.params.fsync_min_micros),
        );
        self.after(
            latency,
            Action::Synced {
                index,
                incarnation,
                token,
                length,
            },
        );
    }

    fn on_synced(&mut self, index: usize, incarnation: u64, token: PersistToken, length: usize) {
        if self.hosts[index].incarnation != incarnation {
            return;
        }
        let disk = &mut self.hosts[index].disk;
        disk.synced = disk.synced.max(length);
        disk.syncing = false;
        self.node_input(index, Input::Persisted { token });
        self.start_sync(index);
    }

    fn on_crash_fault(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let up: Vec<usize> = (0..self.hosts.len())
            .filter(|index| self.hosts[*index].node.is_some())
            .collect();
        // Deployment-like timing measures recovery from one crash: one node down at a
        // time, for long enough that the survivors, not its restart, decide.
        let deployed = self.config.timing.is_some();
        if !up.is_empty() && (!deployed || up.len() == self.hosts.len()) {
            let index = *self.rng.pick(&up);
            let torn = self.config.faults.torn_writes;
            self.power_cut(index, torn);
            let shortest = if deployed {
                self.params.downtime_max_micros / 2
            } else {
                1
            };
            let downtime = self.rng.between(shortest, self.params.downtime_max_micros);
            self.after(downtime, Action::Restart { index });
        }
        let wait = self.rng.between(1, 2 * self.params.crash_interval_micros);
        self.after(wait, Action::Crash);
    }

    /// Crashes a node like a power loss: synced bytes survive; with `torn`, a random part of
    /// the unsynced tail survives too, its last record possibly torn or corrupted.
    fn power_cut(&mut self, index: usize, torn: bool) {
        if self.trace.is_some() {
            eprintln!("{:>10} power cut n{}", self.now.as_micros(), index + 1);
        }
        let crashed = self.hosts[index].config.id;
        if self.phase == Phase::Safety && self.hosts[index].node.is_some() {
            // Transactions of this participant still undecided somewhere: how long until
            // someone decides them is the recovery time it causes.
            for host in &self.hosts {
                let Some(node) = &host.node else { continue };
                for descriptor in node.undecided() {
                    if descriptor.participants.contains(&crashed) {
                        self.stranded.entry(descriptor.txn).or_insert(self.now);
                    }
                }
            }
        }
        let host = &mut self.hosts[index];
        if host.node.take().is_none() {
            return;
        }
        self.stats.crashes += u64::from(self.phase == Phase::Safety);
        self.crashed_at.insert(host.config.id, self.now);
        host.incarnation += 1;
        host.timer_armed = None;
        let disk = &mut host.disk;
        let unsynced = disk.bytes.len() - disk.synced;
        let kept = if torn && unsynced > 0 {
            self.rng.below(unsynced as u64 + 1) as usize
        } else {
            0
        };
        disk.bytes.truncate(disk.synced + kept);
        if kept > 0 && self.rng.chance(0.3) {
            let offset = disk.synced + self.rng.below(kept as u64) as usize;
            disk.bytes[offset] ^= 0x5a;
        }
        disk.pending = None;
        disk.syncing = false;
    }

    /// Restarts a crashed node from what its disk kept, through `Node::recover`.
    fn restart(&mut self, index: usize) {
        if self.hosts[index].node.is_some() {
            return;
        }
        let now = self.now;
        self.restarted_at.insert(self.hosts[index].config.id, now);
        let host = &mut self.hosts[index];
        let contents = decode_log(&host.disk.bytes);
        host.disk.bytes.truncate(contents.valid_length_bytes);
        host.disk.synced = host.disk.bytes.len();
        if self.trace.is_some() {
            eprintln!(
                "{:>10} restart n{} from {} records ({:?})",
                now.as_micros(),
                index + 1,
                contents.records.len(),
                contents.tail_problem
            );
        }
        let mut node = if checkpoints_on(self.config.seed) {
            self.restart_from_checkpoint(index, contents.records)
        } else {
            Node::recover(host.config.clone(), now, contents.records)
        };
        node.set_addresses(vec![simulated_address(node.id())]);
        self.observer.after_restart(&node);
        self.hosts[index].node = Some(node);
        self.drain_node(index);
    }

    /// Compacts the disk of host `index` (which holds exactly `records`, all durable) to
    /// their checkpoint and recovers from it; recovering from the records themselves must
    /// give the same node.
    fn restart_from_checkpoint(&mut self, index: usize, records: Vec<Record>) -> Node {
        let now = self.now;
        let host = &mut self.hosts[index];
        let window = host.config.limits.outcomes_kept_max;
        let checkpoint = Node::checkpoint_log(records.clone(), window);
        let disk = &mut host.disk;
        let compacted = records.len().saturating_sub(disk.checkpoint_records);
        disk.archive
            .extend(records.iter().skip(disk.checkpoint_records).cloned());
        disk.bytes.clear();
        for record in &checkpoint {
            if let Err(error) = encode_record(record, &mut disk.bytes) {
                panic!("checkpoint record does not encode: {error}");
            }
        }
        disk.synced = disk.bytes.len();
        disk.checkpoint_records = checkpoint.len();
        if self.trace.is_some() {
            eprintln!(
                "{:>10} checkpoint n{}: {} records compacted into {}",
                now.as_micros(),
                index + 1,
                compacted,
                checkpoint.len()
            );
        }
        let from_checkpoint = Node::recover(host.config.clone(), now, checkpoint);
        if from_checkpoint != Node::recover(host.config.clone(), now, records) {
            self.extra_violations.push(format!(
                "n{} recovered from its checkpoint differs from n{} recovered from its log",
                index + 1,
                index + 1
            ));
        }
        from_checkpoint
    }

    // ----- Network -------------------------------------------------------------------

    fn transmit(&mut self, from: NodeId, envelope: Envelope) {
        let Envelope { to, messages } = envelope;
        self.stats.frames += 1;
        self.stats.messages += messages.len() as u64;
        let mut txns_in_frame = BTreeSet::new();
        for message in &messages {
            if self.cluster.is_member(from) {
                self.observer.on_send(from, message);
            }
            match message {
                dtx_protocol::Message::Probe { .. } => self.stats.probes += 1,
                dtx_protocol::Message::Gossip { .. } => {
                    self.stats.gossip_messages += 1;
                    self.stats.gossip_bytes += dtx_protocol::encode(std::slice::from_ref(message))
                        .map_or(0, |frame| frame.len() as u64);
                }
                _ => {}
            }
            let txn = message.txn();
            txns_in_frame.insert(txn);
            *self
                .kinds_by_txn
                .entry(txn)
                .or_default()
                .entry(message.kind())
                .or_default() += 1;
        }
        for txn in txns_in_frame {
            *self.frames_by_txn.entry(txn).or_default() += 1;
        }
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.params.loss_chance) {
            self.stats.frames_lost += 1;
            return;
        }
        if self.rng.chance(self.params.duplication_chance) {
            let delay = self.sample_delay();
            self.after(
                delay,
                Action::Deliver {
                    from,
                    to,
                    messages: messages.clone(),
                },
            );
        }
        let delay = self.sample_delay();
        self.after(delay, Action::Deliver { from, to, messages });
    }

    fn sample_delay(&mut self) -> u64 {
        let params = &self.params;
        let (low, high, tail_chance, tail_max) = (
            params.delay_min_micros,
            params.delay_max_micros,
            params.delay_tail_chance,
            params.delay_tail_max_micros,
        );
        if self.rng.chance(tail_chance) {
            self.rng.between(high, tail_max.max(high))
        } else {
            self.rng.between(low, high)
        }
    }

    fn traced(&self, txn: TxnId) -> bool {
        self.trace
            .as_deref()
            .is_some_and(|wanted| wanted == txn.to_string())
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, messages: Vec<dtx_protocol::Message>) {
        for message in &messages {
            if self.traced(message.txn()) {
                eprintln!(
                    "{:>10} deliver {from} -> {to}: {message:?}",
                    self.now.as_micros()
                );
            }
        }
        let input = Input::Receive { from, messages };
        if self.cluster.is_member(to) {
            self.node_input((to.0 - 1) as usize, input);
        } else if let Some(index) = self.client_by_id.get(&to).copied() {
            if self.clients[index].client.id() == to {
                self.client_input(index, input);
            }
        }
    }

    fn on_partition(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        self.stats.partitions += 1;
        self.partition_id += 1;
        let mut nodes: Vec<NodeId> = self
            .cluster
            .members()
            .iter()
            .map(|member| member.id)
            .collect();
        self.rng.shuffle(&mut nodes);
        let clients: Vec<NodeId> = self
            .clients
            .iter()
            .map(|client| client.client.id())
            .collect();
        let kind = self.rng.below(4);
        // Kind 3 (bridge): nodes[0] stays connected to both sides.
        let (mut side_a, mut side_b): (Vec<NodeId>, Vec<NodeId>) = match kind {
            0 => (nodes[..1].to_vec(), nodes[1..].to_vec()),
            3 if nodes.len() >= 3 => {
                let cut = 1 + self.rng.below(nodes.len() as u64 - 2) as usize;
                (nodes[1..=cut].to_vec(), nodes[cut + 1..].to_vec())
            }
            _ => {
                let cut = 1 + self.rng.below(nodes.len() as u64 - 1) as usize;
                (nodes[..cut].to_vec(), nodes[cut..].to_vec())
            }
        };
        for client in clients {
            if self.rng.chance(0.5) {
                side_a.push(client);
            } else {
                side_b.push(client);
            }
        }
        let one_way = kind == 2;
        self.blocked.clear();
        for a in &side_a {
            for b in &side_b {
                self.blocked.insert((*a, *b));
                if !one_way {
                    self.blocked.insert((*b, *a));
                }
            }
        }
        let duration = self
            .rng
            .between(1, self.params.partition_duration_max_micros);
        let partition = self.partition_id;
        self.after(duration, Action::Heal { partition });
    }

    // ----- Clients -------------------------------------------------------------------

    fn begin(&mut self, index: usize, planned: Planned) {
        let now = self.now;
        let host = &mut self.clients[index];
        let begun = if planned.step.is_interactive() {
            host.client.begin_interactive(now)
        } else {
            host.client.begin(now, planned.operations.clone())
        };
        let txn = match begun {
            Ok(txn) => txn,
            Err(dtx_protocol::BeginError::ParticipantSuspected { .. }) => {
                // Fail fast: a participant is suspected. Try again (another plan) later.
                self.stats.failed_fast += 1;
                let incarnation = host.incarnation;
                if planned.step != Step::Setup {
                    self.workload.drop_follow_up(index);
                }
                let wait = self.params.heartbeat_interval_micros.unwrap_or(1_000) * 5;
                let retry = if planned.step == Step::Setup {
                    Action::RetrySetup
                } else {
                    Action::ClientNext { index, incarnation }
                };
                self.after(wait, retry);
                return;
            }
            Err(error) => panic!("workload produced an invalid transaction: {error}"),
        };
        if let Some(descriptor) = host.client.descriptor(txn) {
            self.participants
                .insert(txn, descriptor.participants.clone());
        }
        if planned.step != Step::Setup {
            self.stats.txns += 1;
        }
        if let Some(history) = self.history.as_mut() {
            history.invoke(index, now.as_micros(), &planned.operations);
        }
        let incarnation = host.incarnation;
        let interactive = planned.step.is_interactive();
        host.busy = Some(Busy {
            txn,
            planned,
            issued: Vec::new(),
            reads: Vec::new(),
            buffered: Vec::new(),
        });
        let crash = self.phase == Phase::Safety && self.rng.chance(self.params.client_crash_chance);
        if crash && !interactive && self.rng.chance(0.5) {
            // Dies while sending its Prepares: only some of them leave.
            let mut envelopes = Vec::new();
            while let Some(envelope) = self.clients[index].client.poll_output() {
                envelopes.push(envelope);
            }
            let sent = self.rng.below(envelopes.len() as u64 + 1) as usize;
            let id = self.clients[index].client.id();
            for envelope in envelopes.into_iter().take(sent) {
                self.transmit(id, envelope);
            }
            self.crash_client(index, incarnation);
            return;
        }
        if crash {
            let when = self.rng.between(0, 20 * self.params.delay_max_micros);
            self.after(when, Action::ClientCrash { index, incarnation });
        }
        if interactive {
            self.advance_interactive(index);
        }
        self.drain_client(index);
    }

    /// Issues the next operation of the client's interactive transaction, or commits it.
    /// Half of the interactive transfers (even sequence numbers: no draw from the seeded
    /// generator, so runs stay comparable) buffer their writes until commit, where they
    /// travel with the prepares; the workloads issue reads before writes, so a buffered
    /// write is never one a later read should see.
    fn advance_interactive(&mut self, index: usize) {
        let now = self.now;
        let Some(busy) = self.clients[index].busy.as_ref() else {
            return;
        };
        let txn = busy.txn;
        let buffering =
            matches!(busy.planned.step, Step::InteractiveTransfer { .. }) && txn.sequence % 2 == 0;
        let mut next =
            self.workload
                .next_operation(&busy.planned.step, busy.issued.len(), &busy.reads);
        while let Some(operation) = next.as_ref().filter(|op| buffering && op.is_write()) {
            let Some(busy) = self.clients[index].busy.as_mut() else {
                return;
            };
            busy.issued.push(operation.clone());
            busy.buffered.push(operation.clone());
            next = self
                .workload
                .next_operation(&busy.planned.step, busy.issued.len(), &busy.reads);
        }
        let host = &mut self.clients[index];
        match next {
            Some(operation) => {
                match host.client.execute(now, txn, operation.clone()) {
                    Ok(()) => {}
                    // Aborted meanwhile: its Finished event is on its way.
                    Err(dtx_protocol::ExecuteError::NotExecuting(_)) => return,
                    Err(dtx_protocol::ExecuteError::OwnerSuspected { .. }) => {
                        self.stats.failed_fast += 1;
                        let _ = host.client.abort(now, txn);
                        return;
                    }
                    Err(error) => panic!("interactive operation refused: {error}"),
                }
                if let Some(busy) = host.busy.as_mut() {
                    busy.issued.push(operation);
                }
            }
            None => {
                let buffered = host
                    .busy
                    .as_mut()
                    .map(|busy| std::mem::take(&mut busy.buffered))
                    .unwrap_or_default();
                match host.client.commit_with(now, txn, buffered) {
                    Ok(()) => {}
                    Err(dtx_protocol::ExecuteError::NotExecuting(_)) => return,
                    Err(dtx_protocol::ExecuteError::OwnerSuspected { .. }) => {
                        self.stats.failed_fast += 1;
                        let _ = host.client.abort(now, txn);
                        return;
                    }
                    Err(error) => panic!("interactive commit refused: {error}"),
                }
                if let Some(descriptor) = host.client.descriptor(txn) {
                    self.participants
                        .insert(txn, descriptor.participants.clone());
                }
            }
        }
    }

    fn client_input(&mut self, index: usize, input: Input) {
        let now = self.now;
        self.clients[index].client.handle(now, input);
        self.drain_client(index);
    }

    fn drain_client(&mut self, index: usize) {
        let id = self.clients[index].client.id();
        loop {
            let mut envelopes = Vec::new();
            while let Some(envelope) = self.clients[index].client.poll_output() {
                envelopes.push(envelope);
            }
            let mut executed = Vec::new();
            while let Some(done) = self.clients[index].client.poll_executed() {
                executed.push(done);
            }
            let mut finished = Vec::new();
            while let Some(event) = self.clients[index].client.poll_event() {
                finished.push(event);
            }
            if envelopes.is_empty() && executed.is_empty() && finished.is_empty() {
                break;
            }
            for envelope in envelopes {
                self.transmit(id, envelope);
            }
            for done in executed {
                let current = self.clients[index]
                    .busy
                    .as_mut()
                    .filter(|busy| busy.txn == done.txn);
                if let Some(busy) = current {
                    busy.reads.extend(done.read);
                    self.advance_interactive(index);
                }
            }
            for event in finished {
                self.on_finished(index, event);
            }
        }
        let host = &self.clients[index];
        if let Some(due) = host.client.poll_timeout() {
            if host.timer_armed.is_none_or(|armed| armed > due) {
                let incarnation = host.incarnation;
                self.clients[index].timer_armed = Some(due);
                self.schedule(due, Action::ClientTimer { index, incarnation });
            }
        }
    }

    fn on_client_timer(&mut self, index: usize, incarnation: u64) {
        if self.clients[index].incarnation != incarnation {
            return;
        }
        self.clients[index].timer_armed = None;
        let due = self.clients[index].client.poll_timeout();
        if due.is_some_and(|due| due <= self.now) {
            self.client_input(index, Input::Timeout);
        } else {
            self.drain_client(index);
        }
    }

    fn on_finished(&mut self, index: usize, finished: Finished) {
        let id = self.clients[index].client.id();
        let Some(busy) = self.clients[index].busy.take() else {
            return;
        };
        assert_eq!(
            busy.txn, finished.txn,
            "client finished a transaction it was not running"
        );
        self.observer
            .on_client_finished(id, finished.txn, &finished.result);
        if let Some(history) = self.history.as_mut() {
            history.complete(
                index,
                self.now.as_micros(),
                &busy.planned.operations,
                Some(&finished.result),
            );
        }
        let is_setup = busy.planned.step == Step::Setup;
        match &finished.result {
            TxnResult::Committed { reads, reads_lost } => {
                if !is_setup {
                    self.stats.committed += 1;
                    self.latencies
                        .push(finished.finished.since(finished.started).as_micros() as u64);
                }
                if *reads_lost {
                    self.stats.unknown += u64::from(!is_setup);
                } else if !reads.is_empty() {
                    self.client_reads.push((finished.txn, reads.clone()));
                }
            }
            TxnResult::Aborted { .. } | TxnResult::Refused(_) => {
                self.stats.aborted += u64::from(!is_setup)
            }
            TxnResult::Unknown => self.stats.unknown += u64::from(!is_setup),
        }
        let mut rng = self.rng.fork();
        self.workload
            .on_finished(index, &busy.planned.step, &finished.result, &mut rng);
        if is_setup {
            if matches!(finished.result, TxnResult::Committed { .. }) {
                self.start_safety();
            } else if let Some(planned) = self.workload.setup() {
                self.begin(0, planned);
            }
            return;
        }
        let incarnation = self.clients[index].incarnation;
        let think = if self.workload.has_follow_up(index) {
            0
        } else {
            self.rng.between(0, self.params.think_time_max_micros)
        };
        self.after(think, Action::ClientNext { index, incarnation });
    }

    fn on_client_next(&mut self, index: usize, incarnation: u64) {
        let host = &self.clients[index];
        if host.incarnation != incarnation || host.busy.is_some() || self.phase != Phase::Safety {
            return;
        }
        if self.stats.txns >= self.config.txns as u64 {
            self.workload.drop_follow_up(index);
            return;
        }
        let mut rng = self.rng.fork();
        let planned = self.workload.next(index, &mut rng);
        self.begin(index, planned);
    }

    /// The client dies: its state is gone; its transactions are left to the data nodes.
    fn crash_client(&mut self, index: usize, incarnation: u64) {
        if self.clients[index].incarnation != incarnation {
            return;
        }
        self.stats.client_crashes += 1;
        if let Some(busy) = self.clients[index].busy.take() {
            self.stats.unknown += 1;
            self.orphaned.insert(busy.txn, self.now);
            if let Some(history) = self.history.as_mut() {
                history.complete(index, self.now.as_micros(), busy.operations(), None);
            }
        }
        self.workload.drop_follow_up(index);
        let replacement = self.new_client(index, incarnation + 1);
        self.clients[index] = replacement;
        self.after(
            0,
            Action::ClientNext {
                index,
                incarnation: incarnation + 1,
            },
        );
    }

    // ----- Final checks --------------------------------------------------------------

    fn finish_checks(&mut self) {
        if let Some(before) = self.final_snapshot.take() {
            for (index, values) in before.iter().enumerate() {
                let after = store_values(&self.hosts[index]);
                if *values != after {
                    let lost: Vec<&Key> = values
                        .iter()
                        .filter(|(key, value)| after.get(*key) != Some(value))
                        .map(|(key, _)| key)
                        .take(5)
                        .collect();
                    self.extra_violations.push(format!(
                        "n{} lost or changed data across the final power cut: keys {lost:?}",
                        index + 1
                    ));
                }
            }
        }
        let logs: BTreeMap<NodeId, Vec<Record>> = self
            .hosts
            .iter()
            .map(|host| {
                let disk = &host.disk;
                let mut records = disk.archive.clone();
                records.extend(
                    decode_log(&disk.bytes)
                        .records
                        .into_iter()
                        .skip(disk.checkpoint_records),
                );
                (host.config.id, records)
            })
            .collect();
        let history = ClusterHistory::build(&logs);
        let report = history.check(&self.observer.committed(), &self.participants);
        self.extra_violations.extend(report.violations);
        for (txn, reads) in &self.client_reads {
            for read in reads {
                match history.value_at(&read.key, read.version) {
                    Some(value) if value == read.value.as_ref() => {}
                    other => self.extra_violations.push(format!(
                        "client of {txn} read {} = {:?} at version {}, but that version holds {other:?}",
                        read.key, read.value, read.version.0
                    )),
                }
            }
        }
        if self.config.workload.is_bank() {
            let finals = history.final_values();
            let mut total = 0;
            for key in self.workload.keys() {
                match finals.get(key).copied().flatten().and_then(parse_balance) {
                    Some(balance) => total += balance,
                    None => self
                        .extra_violations
                        .push(format!("bank account {key} is missing at the end")),
                }
            }
            if total != self.workload.bank_total() {
                self.extra_violations.push(format!(
                    "bank total is {total} at the end, expected {}",
                    self.workload.bank_total()
                ));
            }
        }
        self.extra_violations.append(&mut self.workload.violations);
        self.stats.audits_checked = self.workload.audits_checked;
    }

    /// The report of a finished run.
    pub fn report(mut self) -> RunReport {
        let mut violations: Vec<String> = self.observer.violations().to_vec();
        let violation_count = self.observer.violation_count() + self.extra_violations.len() as u64;
        violations.extend(self.extra_violations.iter().take(50).cloned());
        if self.undecided_after_heal > 0 {
            violations.push(format!(
                "{} transactions undecided after healing",
                self.undecided_after_heal
            ));
        }
        let latency_p50_micros = percentile_of(&mut self.latencies, 0.5);
        let latency_p99_micros = percentile_of(&mut self.latencies, 0.99);
        let (frames_per_commit, messages_per_commit_by_kind) = self.accounting();
        let deadlock_latency_p50_micros = percentile_of(&mut self.deadlock_latencies, 0.5);
        let deadlock_latency_p99_micros = percentile_of(&mut self.deadlock_latencies, 0.99);
        let probes_per_deadlock =
            self.stats.probes as f64 / self.stats.deadlocks_detected.max(1) as f64;
        let detection_p50_micros = percentile_of(&mut self.detection_latencies, 0.5);
        let detection_p99_micros = percentile_of(&mut self.detection_latencies, 0.99);
        let orphan_decided_p50_micros = percentile_of(&mut self.orphan_recoveries, 0.5);
        let stranded_decided_p50_micros = percentile_of(&mut self.stranded_recoveries, 0.5);
        RunReport {
            seed: self.config.seed,
            latency_p50_micros,
            latency_p99_micros,
            virtual_millis: self.now.as_micros() / 1000,
            stats: self.stats.clone(),
            violations,
            violation_count: violation_count + u64::from(self.undecided_after_heal > 0),
            undecided_after_heal: self.undecided_after_heal,
            frames_per_commit,
            messages_per_commit_by_kind,
            probes_per_deadlock,
            deadlock_latency_p50_micros,
            deadlock_latency_p99_micros,
            detection_p50_micros,
            detection_p99_micros,
            orphan_decided_p50_micros,
            stranded_decided_p50_micros,
            recovery_samples: RecoverySamples {
                client_crash: std::mem::take(&mut self.orphan_recoveries),
                participant_crash: std::mem::take(&mut self.stranded_recoveries),
            },
            history: self.history.take(),
        }
    }

    fn accounting(&self) -> (BTreeMap<usize, f64>, BTreeMap<String, f64>) {
        let committed = self.observer.committed();
        let mut frames: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let mut counted = 0u64;
        for txn in &committed {
            let Some(participants) = self.participants.get(txn) else {
                continue;
            };
            let entry = frames.entry(participants.len()).or_default();
            entry.0 += self.frames_by_txn.get(txn).copied().unwrap_or(0);
            entry.1 += 1;
            counted += 1;
            for (kind, count) in self.kinds_by_txn.get(txn).into_iter().flatten() {
                *kinds.entry(kind.to_string()).or_default() += count;
            }
        }
        let frames = frames
            .into_iter()
            .map(|(participants, (total, count))| {
                (participants, total as f64 / count.max(1) as f64)
            })
            .collect();
        let kinds = kinds
            .into_iter()
            .map(|(kind, total)| (kind, total as f64 / counted.max(1) as f64))
            .collect();
        (frames, kinds)
    }
}

/// The failure detector's tuning for a heartbeat interval: pauses of a few intervals and a
/// deviation floor of one interval keep gossip jitter from looking like death.
fn detector_config(interval_micros: u64, deployed: bool) -> dtx_protocol::DetectorConfig {
    if deployed {
        // The daemon's settings, only the interval chosen.
        return dtx_protocol::DetectorConfig {
            interval: Duration::from_micros(interval_micros),
            ..dtx_protocol::DetectorConfig::default()
        };
    }
    dtx_protocol::DetectorConfig {
        interval: Duration::from_micros(interval_micros),
        std_deviation_min: Duration::from_micros(interval_micros),
        acceptable_pause: Duration::from_micros(2 * interval_micros),
        ..dtx_protocol::DetectorConfig::default()
    }
}

/// True if `to` is reachable from `from` by at least one edge.
fn reaches(edges: &BTreeMap<TxnId, BTreeSet<TxnId>>, from: TxnId, to: TxnId) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<TxnId> = edges.get(&from).into_iter().flatten().copied().collect();
    while let Some(next) = stack.pop() {
        if next == to {
            return true;
        }
        if seen.insert(next) {
            stack.extend(edges.get(&next).into_iter().flatten().copied());
        }
    }
    false
}

/// The `fraction` percentile of `samples` (sorted in place; 0 when empty).
pub fn percentile_of(samples: &mut [u64], fraction: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let rank = ((samples.len() - 1) as f64 * fraction).round() as usize;
    samples[rank]
}

fn store_values(host: &Host) -> BTreeMap<Key, Value> {
    host.node
        .as_ref()
        .map(|node| {
            node.store()
                .rows()
                .iter()
                .map(|(key, row)| (key.clone(), row.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}
