//! The simulated world: data nodes, clients, a faulty network and disks, on virtual time.
//!
//! One seeded PRNG drives everything, so a seed replays exactly. A run has four phases:
//! 1. setup — the workload's initial data, no faults;
//! 2. safety — clients run the workload while faults are injected;
//! 3. liveness — every fault heals (crashed nodes restart, partitions end, no loss); every
//!    transaction must then be decided everywhere;
//! 4. final — a power cut on every node (only synced bytes survive), restart, settle, and
//!    the durable logs are checked for durability and serializability.
//!
//! The world runs; the [`checker`](crate::checker) judges: online through its `Observer`,
//! and at the end from the evidence the world hands to `judge_end_of_run`.

use crate::checker::{judge_end_of_run, judge_resources, Bank, EndOfRun, Observer, Violation};
use crate::config::{Params, RunConfig};
use crate::history::History;
use crate::simulated_address;
use crate::workload::Workload;
use dtx_protocol::{
    Cluster, Key, Member, Node, NodeConfig, NodeId, PersistToken, ReadResult, ResourceKind, Rng,
    Time, TxnId, Value,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

mod clients;
mod disk;
mod lab;
mod measurements;
mod network;
mod nodes;
mod report;
mod resources;

use clients::ClientHost;
use disk::{store_values, Disk};
use lab::LabState;
pub use lab::{LabPlan, LabRecord, LinkEnd, NodeSample, HELD_EVENTS_MAX};
use measurements::Measurements;
pub use measurements::Stats;
use nodes::Host;
pub use report::{percentile_of, RecoverySamples, RunReport};
use resources::Services;

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

/// The phases of a run, in order (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The workload's initial data, no faults.
    Setup,
    /// Clients run the workload while faults are injected.
    Safety,
    /// Every fault heals; every transaction must then be decided.
    Liveness,
    /// A power cut on every node, restart, settle, final checks.
    Final,
    /// Finished.
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
    ServiceFlight {
        flight: u64,
    },
    ServiceDown {
        service: usize,
        crash: bool,
    },
    ServiceUp {
        service: usize,
        downs: u64,
    },
    LabStep {
        index: usize,
    },
    LabWorkloadEnd,
    LabSample,
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
    measured: Measurements,
    participants: BTreeMap<TxnId, Vec<NodeId>>,
    client_reads: Vec<(TxnId, Vec<ReadResult>)>,
    extra_violations: Vec<Violation>,
    final_snapshot: Option<Vec<BTreeMap<Key, Value>>>,
    /// `DTX_SIM_TRACE=t1000000.23` prints everything that happens to that transaction.
    trace: Option<String>,
    /// The simulated services of the service participants.
    services: Services,
    /// A lab scenario's timeline, if this run plays one (`world::lab`).
    lab: Option<Box<LabState>>,
    /// Buffers `drain_node` reuses for a node's outputs and events (no allocation per
    /// drained step; a nested drain finds them taken and uses fresh ones).
    scratch_outputs: Vec<dtx_protocol::Output>,
    scratch_events: Vec<dtx_protocol::Event>,
}

/// Runs one seed to completion.
pub fn run(config: &RunConfig) -> RunReport {
    let mut simulation = Simulation::new(config.clone());
    simulation.run();
    simulation.report()
}

/// Runs one seed playing a lab plan: the plan's faults instead of the simulator's random
/// ones (`config.faults` should be none), the workload for the plan's duration (not
/// `config.txns`), samples of every node. Returns the simulator's report (its checkers'
/// verdicts, the history if `config.record_history`) and what the lab recorded.
pub fn run_lab(config: &RunConfig, plan: LabPlan) -> (RunReport, LabRecord) {
    let mut simulation = Simulation::new(config.clone());
    simulation.lab = Some(Box::new(LabState::new(plan)));
    simulation.run();
    let record = simulation.take_lab_record();
    (simulation.report(), record)
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
        let services = Services::new(&config, config.nodes);
        let cluster = cluster.with_namespace_only(
            (1..=config.nodes as u64)
                .filter(|id| services.is_service(*id as usize - 1))
                .map(NodeId),
        );
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
                if services.is_service(index as usize - 1) {
                    node_config.resource = ResourceKind::External;
                    node_config.resource_retry = Duration::from_millis(10);
                    node_config.resource_retry_max = Duration::from_millis(200);
                }
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
                workload.set_reads_for_update(params.reads_for_update);
                workload.set_services(
                    (1..=config.nodes)
                        .filter(|index| services.is_service(index - 1))
                        .map(|index| format!("n{index}"))
                        .collect(),
                );
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
            measured: Measurements::default(),
            participants: BTreeMap::new(),
            client_reads: Vec::new(),
            extra_violations: Vec::new(),
            final_snapshot: None,
            trace: std::env::var("DTX_SIM_TRACE").ok(),
            scratch_outputs: Vec::new(),
            scratch_events: Vec::new(),
            services,
            config,
            lab: None,
        };
        for index in 0..client_count {
            let client = simulation.new_client(index, 0);
            simulation.clients.push(client);
        }
        simulation
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
                    .push(Violation::EventQueueRanDry { phase: self.phase });
                break;
            };
            self.now = at;
            self.measured.stats.events += 1;
            if self.measured.stats.events > EVENTS_MAX {
                self.extra_violations.push(Violation::EventBudgetExhausted {
                    events_max: EVENTS_MAX,
                    phase: self.phase,
                });
                break;
            }
            self.dispatch(action);
        }
    }

    fn dispatch(&mut self, action: Action) {
        let action = if self.lab.is_some() {
            match self.lab_hold(action) {
                Some(action) => action,
                None => return,
            }
        } else {
            action
        };
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
            Action::Heal { partition } => self.on_heal(partition),
            Action::Tick => self.on_tick(),
            Action::RetrySetup => {
                if let Some(planned) = self.workload.setup() {
                    self.begin(0, planned);
                }
            }
            Action::ServiceFlight { flight } => self.on_service_flight(flight),
            Action::ServiceDown { service, crash } => self.on_service_down(service, crash),
            Action::ServiceUp { service, downs } => self.on_service_up(service, downs),
            Action::LabStep { index } => self.on_lab_step(index),
            Action::LabWorkloadEnd => self.on_lab_workload_end(),
            Action::LabSample => self.on_lab_sample(),
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
        if faults.resources {
            self.start_service_faults();
        }
        for index in 0..self.clients.len() {
            let incarnation = self.clients[index].incarnation;
            self.after(0, Action::ClientNext { index, incarnation });
        }
        self.after(TICK_MICROS, Action::Tick);
        if self.lab.is_some() {
            self.lab_start();
        }
    }

    fn start_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.phase_started = self.now;
        self.blocked.clear();
        self.params.loss_chance = 0.0;
        self.params.duplication_chance = 0.0;
        self.params.delay_tail_chance = 0.0;
        self.heal_services();
        if self.lab.is_some() {
            self.lab_heal();
        }
        for index in 0..self.hosts.len() {
            self.restart(index);
        }
    }

    fn start_final(&mut self) {
        if self.measured.undecided_after_heal == 0 && self.services.quiet() {
            // Judged now: the final restarts would settle what a service holds wrongly.
            let evidence = self.services.evidence(|host| self.hosts[host].config.id);
            let found = judge_resources(&evidence, &self.observer.committed(), &self.participants);
            self.extra_violations.extend(found);
        }
        if self.lab.is_some() {
            self.lab_last_sample();
        }
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
                let issued_all = self.measured.stats.txns >= self.config.txns as u64;
                let idle = self.clients.iter().all(|client| client.busy.is_none());
                if (issued_all && idle) || elapsed > SAFETY_PHASE_MAX_MICROS {
                    self.start_liveness();
                }
            }
            Phase::Liveness => {
                let settle_max = self
                    .lab
                    .as_ref()
                    .map_or(SETTLE_MAX_MICROS, |lab| lab.settle_micros());
                if self.settled() {
                    self.start_final();
                } else if elapsed > settle_max {
                    self.measured.undecided_after_heal = self.undecided_count();
                    self.start_final();
                }
            }
            Phase::Final => {
                if self.settled() || elapsed > SETTLE_MAX_MICROS {
                    self.finish();
                    self.phase = Phase::Done;
                    return;
                }
            }
        }
        self.after(TICK_MICROS, Action::Tick);
    }

    fn settled(&self) -> bool {
        self.undecided_count() == 0 && self.services.quiet()
    }

    fn undecided_count(&self) -> u64 {
        let mut undecided: BTreeSet<TxnId> = BTreeSet::new();
        let mut executing = 0;
        for host in &self.hosts {
            if let Some(node) = &host.node {
                undecided.extend(node.undecided().map(|descriptor| descriptor.txn));
                executing += node.executions().0 as u64;
                // A service participant is settled once its service holds every outcome.
                let resource = node.resource_status();
                executing += (resource.preparing + resource.unacknowledged) as u64
                    + u64::from(resource.settling);
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

    fn traced(&self, txn: TxnId) -> bool {
        self.trace
            .as_deref()
            .is_some_and(|wanted| wanted == txn.to_string())
    }

    /// Ends the run: hands the checker what the world holds and keeps what it judged,
    /// then the workload's own findings.
    fn finish(&mut self) {
        let bank = self.config.workload.is_bank().then(|| Bank {
            accounts: self.workload.keys(),
            total: self.workload.bank_total(),
        });
        let end = EndOfRun {
            undecided: self.undecided_count(),
            stores_before_power_cut: self.final_snapshot.take(),
            stores_after_recovery: self.hosts.iter().map(store_values).collect(),
            histories: self
                .hosts
                .iter_mut()
                .map(|host| (host.config.id, host.disk.take_history()))
                .collect(),
            committed: self.observer.committed(),
            participants: &self.participants,
            client_reads: &self.client_reads,
            bank,
        };
        let found = judge_end_of_run(end);
        self.extra_violations.extend(found);
        self.extra_violations.append(&mut self.workload.violations);
        self.measured.stats.audits_checked = self.workload.audits_checked;
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
