//! What a simulated run is: its seed, size, workload and faults, and the parameters drawn
//! from the seed (swarm testing: every seed explores a different corner).

use dtx_protocol::{Bug, Bugs, DeadlockPolicy, Rng, BUGS_AVAILABLE};
use std::fmt;
use std::str::FromStr;

/// The workload clients run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Transfers between accounts on different nodes: read both balances, then one
    /// transaction that checks the versions read and writes both; plus audits reading all.
    Bank,
    /// Reads and unique writes on a few registers, for serializability checking.
    Register,
    /// Interactive read-modify-write bank transfers (read both balances under shared
    /// locks, write both under upgraded exclusive locks, commit), plus interactive audits.
    Transfer,
    /// Interactive transactions writing a few hot keys in random order: real deadlocks
    /// across nodes.
    Contention,
    /// Orders: each transaction writes a key or two and calls `reserve` on one or two
    /// service participants (`RunConfig::services`), whose stock is bounded.
    Orders,
}

impl WorkloadKind {
    /// True for workloads whose transactions run interactively (execution phase, waits).
    pub fn is_interactive(self) -> bool {
        matches!(self, WorkloadKind::Transfer | WorkloadKind::Contention)
    }

    /// True for workloads that move money between accounts (conservation is checked).
    pub fn is_bank(self) -> bool {
        matches!(self, WorkloadKind::Bank | WorkloadKind::Transfer)
    }
}

impl FromStr for WorkloadKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "bank" => Ok(WorkloadKind::Bank),
            "register" => Ok(WorkloadKind::Register),
            "transfer" => Ok(WorkloadKind::Transfer),
            "contention" => Ok(WorkloadKind::Contention),
            "orders" => Ok(WorkloadKind::Orders),
            other => Err(format!(
                "unknown workload {other:?}: expected bank, register, transfer, contention or \
                 orders"
            )),
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadKind::Bank => write!(f, "bank"),
            WorkloadKind::Register => write!(f, "register"),
            WorkloadKind::Transfer => write!(f, "transfer"),
            WorkloadKind::Contention => write!(f, "contention"),
            WorkloadKind::Orders => write!(f, "orders"),
        }
    }
}

/// Which faults the safety phase injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Messages lost.
    pub loss: bool,
    /// Messages delivered twice.
    pub duplication: bool,
    /// Widely varying delays, so messages overtake each other.
    pub reorder: bool,
    /// Network partitions: isolate-one, majority/minority, asymmetric, bridge.
    pub partitions: bool,
    /// Data node crashes (power loss: unsynced writes lost) and restarts.
    pub crashes: bool,
    /// A crash may keep part of the unsynced tail, possibly torn mid-record.
    pub torn_writes: bool,
    /// Clients die mid-transaction (their transactions are left to the data nodes).
    pub client_crashes: bool,
    /// Service participants misbehave: slow, crashing, answering twice or late, refusing,
    /// unavailable for a while (only with `RunConfig::services`).
    pub resources: bool,
}

impl Faults {
    /// Every fault.
    pub const ALL: Faults = Faults {
        loss: true,
        duplication: true,
        reorder: true,
        partitions: true,
        crashes: true,
        torn_writes: true,
        client_crashes: true,
        resources: true,
    };

    /// True if no fault is on.
    pub fn is_none(&self) -> bool {
        *self == Faults::default()
    }
}

impl FromStr for Faults {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut faults = Faults::default();
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match name {
                "all" => faults = Faults::ALL,
                "none" => {}
                "loss" => faults.loss = true,
                "duplication" => faults.duplication = true,
                "reorder" => faults.reorder = true,
                "partitions" => faults.partitions = true,
                "crashes" => faults.crashes = true,
                "torn-writes" => faults.torn_writes = true,
                "client-crashes" => faults.client_crashes = true,
                "resources" => faults.resources = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: expected all, none or a comma list of loss, \
                         duplication, reorder, partitions, crashes, torn-writes, \
                         client-crashes, resources"
                    ))
                }
            }
        }
        Ok(faults)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.loss, "loss"),
            (self.duplication, "duplication"),
            (self.reorder, "reorder"),
            (self.partitions, "partitions"),
            (self.crashes, "crashes"),
            (self.torn_writes, "torn-writes"),
            (self.client_crashes, "client-crashes"),
            (self.resources, "resources"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name)
        .collect();
        if names.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", names.join(","))
        }
    }
}

/// Parses a list of bug names into switches; fails if this build cannot switch bugs on.
pub fn parse_bugs(names: &[String]) -> Result<Bugs, String> {
    if names.is_empty() {
        return Ok(Bugs::none());
    }
    if !BUGS_AVAILABLE {
        return Err("--bug needs a build with `--features bugs`".to_string());
    }
    let mut bugs = Bugs::none();
    for name in names {
        let bug = Bug::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
            format!("unknown bug {name:?}: expected one of {}", known.join(", "))
        })?;
        bugs = bugs.with(bug);
    }
    Ok(bugs)
}

/// Everything that defines one simulated run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The seed: every random choice of the run derives from it.
    pub seed: u64,
    /// Data nodes.
    pub nodes: usize,
    /// Failures tolerated per transaction.
    pub f: u32,
    /// Transactions the clients begin (after any setup).
    pub txns: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// The workload.
    pub workload: WorkloadKind,
    /// Faults of the safety phase.
    pub faults: Faults,
    /// Deliberate protocol bugs.
    pub bugs: Bugs,
    /// Keep the client-observed history (Jepsen/Elle JSON lines).
    pub record_history: bool,
    /// Message accounting mode: one client writing 1..=nodes service keys, fixed timing.
    pub accounting: bool,
    /// Every message takes exactly 1 ms and fsync is instant, so latencies read as message
    /// delays.
    pub fixed_timing: bool,
    /// Thrifty Phase2a: `None` draws it from the seed (both variants get tested).
    pub thrifty: Option<bool>,
    /// One-phase commit for single-participant transactions (`ClientConfig::one_phase`):
    /// `None` draws it from the seed (both variants get tested).
    pub one_phase: Option<bool>,
    /// The interactive transfer reads its two accounts for update (exclusive locks) instead
    /// of under shared locks: `None` draws it from the seed (both variants get tested).
    pub reads_for_update: Option<bool>,
    /// How lock waits are kept from deadlocking.
    pub deadlock: DeadlockPolicy,
    /// Keys of the workload instead of its default per node (contention: hot keys, fewer
    /// means more conflicts; register: registers; bank, transfer: accounts); 0: the default.
    pub hot_keys: usize,
    /// Gossip heartbeats and phi-accrual suspicion: `None` draws it from the seed.
    pub detector: Option<bool>,
    /// Deployment-like timing instead of the seed's (the recovery-time experiment).
    pub timing: Option<TimingOverride>,
    /// The last `services` members are namespace-only service participants
    /// (`ResourceKind::External`) over simulated services (`world::resources`).
    pub services: usize,
    /// Deliberate bugs of the simulated services (not of the protocol).
    pub service_bugs: ServiceBugs,
}

/// Deliberately broken simulated services, for proving the resource checker can fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceBugs {
    /// `resource-forgets-rollback`: a rollback of a transaction the service does not know
    /// is acknowledged but not remembered, so a prepare arriving after it holds a
    /// reservation forever.
    pub forgets_rollback: bool,
}

impl ServiceBugs {
    /// The command-line name of the only service bug.
    pub const FORGETS_ROLLBACK: &'static str = "resource-forgets-rollback";

    /// Splits `names` into the service bugs and the remaining (protocol) bug names.
    pub fn take_from(names: &[String]) -> (ServiceBugs, Vec<String>) {
        let mut bugs = ServiceBugs::default();
        let mut rest = Vec::new();
        for name in names {
            if name == Self::FORGETS_ROLLBACK {
                bugs.forgets_rollback = true;
            } else {
                rest.push(name.clone());
            }
        }
        (bugs, rest)
    }
}

/// Deployment-like timing: loopback delays, the daemon's failure detector settings, a
/// chosen decision timeout; node crashes one at a time (about every 2 s, each node down
/// for 2-4 decision timeouts, at least 2 s) so that survivors must finish what a crash
/// leaves. Other fault parameters are still drawn from the seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimingOverride {
    /// Data nodes' decision timeout (recovery starts after it without a detector).
    pub decision_timeout_micros: u64,
    /// Heartbeat interval of the detector (the rest of `DetectorConfig::default()`).
    pub heartbeat_interval_micros: u64,
}

impl RunConfig {
    /// A run with the given basics and no history.
    pub fn new(
        seed: u64,
        nodes: usize,
        f: u32,
        txns: usize,
        workload: WorkloadKind,
        faults: Faults,
    ) -> RunConfig {
        RunConfig {
            seed,
            nodes,
            f,
            txns,
            clients: 4,
            workload,
            faults,
            bugs: Bugs::none(),
            record_history: false,
            accounting: false,
            fixed_timing: false,
            thrifty: None,
            one_phase: None,
            reads_for_update: None,
            deadlock: DeadlockPolicy::EdgeChasing,
            hot_keys: 0,
            detector: None,
            timing: None,
            services: 0,
            service_bugs: ServiceBugs::default(),
        }
    }
}

/// Timing and fault parameters, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Params {
    /// Shortest one-way message delay.
    pub delay_min_micros: u64,
    /// Longest ordinary one-way message delay.
    pub delay_max_micros: u64,
    /// Chance that a message takes a long detour (reordering).
    pub delay_tail_chance: f64,
    /// Longest detour.
    pub delay_tail_max_micros: u64,
    /// Chance a message is lost.
    pub loss_chance: f64,
    /// Chance a message is delivered twice.
    pub duplication_chance: f64,
    /// Shortest fsync.
    pub fsync_min_micros: u64,
    /// Longest fsync.
    pub fsync_max_micros: u64,
    /// Mean time between node crashes.
    pub crash_interval_micros: u64,
    /// Longest time a crashed node stays down.
    pub downtime_max_micros: u64,
    /// Mean time between partitions.
    pub partition_interval_micros: u64,
    /// Longest partition.
    pub partition_duration_max_micros: u64,
    /// Chance a client dies during a transaction.
    pub client_crash_chance: f64,
    /// Data nodes' decision timeout.
    pub decision_timeout_micros: u64,
    /// Clients' first retry timeout.
    pub client_retry_micros: u64,
    /// Longest pause between a client's transactions.
    pub think_time_max_micros: u64,
    /// Thrifty Phase2a (F+1 acceptors in the fast path).
    pub thrifty: bool,
    /// One-phase commit for single-participant transactions.
    pub one_phase: bool,
    /// The interactive transfer reads for update.
    pub reads_for_update: bool,
    /// Lock-wait timeout (the deadlock backstop).
    pub lock_wait_timeout_micros: u64,
    /// How long a wait lasts before it probes.
    pub probe_delay_micros: u64,
    /// Idle time after which an RM aborts an executing transaction.
    pub execution_idle_micros: u64,
    /// Heartbeat interval, if the failure detector runs.
    pub heartbeat_interval_micros: Option<u64>,
}

impl Params {
    /// Draws the parameters for a run.
    pub fn draw(config: &RunConfig, rng: &mut Rng) -> Params {
        let faults = config.faults;
        let delay_min = rng.between(30, 300);
        let delay_max = delay_min + rng.between(100, 3_000);
        let decision_timeout = rng.between(10_000, 100_000);
        let mut params = Params {
            delay_min_micros: delay_min,
            delay_max_micros: delay_max,
            delay_tail_chance: if faults.reorder {
                rng.unit() * 0.05
            } else {
                0.0
            },
            delay_tail_max_micros: rng.between(5_000, 60_000),
            loss_chance: if faults.loss { rng.unit() * 0.08 } else { 0.0 },
            duplication_chance: if faults.duplication {
                rng.unit() * 0.05
            } else {
                0.0
            },
            fsync_min_micros: rng.between(10, 200),
            fsync_max_micros: rng.between(300, 4_000),
            crash_interval_micros: rng.between(20_000, 400_000),
            downtime_max_micros: rng.between(5_000, 300_000),
            partition_interval_micros: rng.between(20_000, 400_000),
            partition_duration_max_micros: rng.between(5_000, 400_000),
            client_crash_chance: if faults.client_crashes {
                rng.unit() * 0.02
            } else {
                0.0
            },
            decision_timeout_micros: decision_timeout,
            client_retry_micros: decision_timeout + rng.between(10_000, 200_000),
            think_time_max_micros: rng.between(0, 2_000),
            thrifty: config.thrifty.unwrap_or_else(|| rng.chance(0.5)),
            // Drawn apart from `rng` so that every other parameter of a seed stays what
            // it was before this switch existed (named regression seeds keep replaying).
            one_phase: config
                .one_phase
                .unwrap_or_else(|| one_phase_of_seed(config.seed)),
            reads_for_update: config
                .reads_for_update
                .unwrap_or_else(|| reads_for_update_of_seed(config.seed)),
            lock_wait_timeout_micros: rng.between(500_000, 2_000_000),
            probe_delay_micros: rng.between(500, 5_000),
            execution_idle_micros: rng.between(1_000_000, 3_000_000),
            heartbeat_interval_micros: config
                .detector
                .unwrap_or_else(|| rng.chance(0.5))
                .then(|| rng.between(2_000, 20_000)),
        };
        if config.accounting || config.fixed_timing {
            // Message accounting compares with the paper's Paxos Commit formulas, for one
            // participant too: one-phase only when asked for.
            params.one_phase = config.one_phase.unwrap_or(false);
            params.delay_min_micros = 1_000;
            params.delay_max_micros = 1_000;
            params.fsync_min_micros = 0;
            params.fsync_max_micros = 0;
            params.think_time_max_micros = 0;
            params.decision_timeout_micros = 1_000_000;
            params.client_retry_micros = 2_000_000;
            params.probe_delay_micros = 1_000;
            if config.accounting {
                params.heartbeat_interval_micros = None;
            }
            params.lock_wait_timeout_micros = 10_000_000;
        }
        if let Some(timing) = config.timing {
            params.delay_min_micros = 100;
            params.delay_max_micros = 1_000;
            params.delay_tail_chance = 0.0;
            params.decision_timeout_micros = timing.decision_timeout_micros;
            params.client_retry_micros = timing.decision_timeout_micros + 100_000;
            params.heartbeat_interval_micros = params
                .heartbeat_interval_micros
                .map(|_| timing.heartbeat_interval_micros);
            params.crash_interval_micros = 2_000_000;
            params.downtime_max_micros = 4 * timing.decision_timeout_micros.max(1_000_000);
        }
        params
    }
}

/// The seed's one-phase switch: half of the seeds, from a hash of the seed alone.
fn one_phase_of_seed(seed: u64) -> bool {
    Rng::new(seed ^ 0x6f6e_655f_7068_6173).chance(0.5)
}

/// The seed's read-for-update switch: half of the seeds, from a hash of the seed alone.
fn reads_for_update_of_seed(seed: u64) -> bool {
    Rng::new(seed ^ 0x666f_725f_7570_6474).chance(0.5)
}
