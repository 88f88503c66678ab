//! A data node: resource manager (RM), acceptor, learner and recovery leader in one sans-IO
//! state machine.
//!
//! # Driving a node
//! The runtime (daemon or simulator) owns the node and loops:
//! 1. `node.handle(now, input)` with a received message, a timeout, or a completed persist;
//! 2. drain `node.poll_output()`: write every [`Output::Persist`] to the log (the runtime may
//!    cover many with one fsync) and report it back with [`Input::Persisted`] in token
//!    order; send every [`Output::Send`] now;
//! 3. drain `node.poll_event()` into the audit log;
//! 4. arm a timer for `node.poll_timeout()` and call `handle(now, Input::Timeout)` then.
//!
//! Persist before send: a `Send` is only ever yielded once every `Persist` yielded before
//! it has been reported durable, so no message can reveal state a crash could lose (Gray &
//! Lamport's stable-storage rule; raft-rs `persisted_messages`). The node holds such sends
//! itself, so a runtime cannot get the order wrong.

use crate::acceptor::{AcceptResult, AcceptorState, PromiseResult};
use crate::access::AccessPolicy;
use crate::bugs::{Bug, Bugs};
use crate::cluster::Cluster;
use crate::invariants;
use crate::learner::Tally;
use crate::message::{
    AbortReason, Envelope, InstanceReport, Message, MessageKind, Operation, ReadResult,
};
use crate::record::{locks_for, LockMode, Record};
use crate::reject::{RejectKind, RejectReason, ReplayProblem};
use crate::rng::Rng;
use crate::store::{LockTable, Store};
use crate::types::{
    next_round, Ballot, Key, NodeId, Outcome, Time, TxnDescriptor, TxnId, Value, Vote,
    LEADER_ROUND_MAX, ROUND_MAX,
};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod drain;
mod execution;
mod fence;
mod suspicion;

use crate::detector::{DetectorConfig, FailureDetector};

/// Bounds and limits of one node. Every queue and map has one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Longest key accepted.
    pub key_bytes_max: usize,
    /// Longest value accepted.
    pub value_bytes_max: usize,
    /// Most operations one RM executes for one transaction.
    pub operations_max: usize,
    /// Most transactions open (undecided) at this node; beyond it Prepare votes Aborted
    /// and other messages for new transactions are dropped (backpressure).
    pub open_transactions_max: usize,
    /// Compact outcome records kept in memory. A message about a transaction older than
    /// this window is answered as if new, so the window must exceed any retry window.
    pub outcomes_kept_max: usize,
    /// Phase2b messages buffered for transactions this node has not heard of yet.
    pub early_phase2b_max: usize,
    /// Most transactions on one deadlock probe's path.
    pub probe_path_max: usize,
    /// Probes remembered for duplicate suppression.
    pub probes_remembered_max: usize,
    /// Most waiters queued on one key.
    pub lock_queue_length_max: usize,
    /// Most transactions one client (not a data node) may have open at this node; beyond
    /// it a new Prepare votes Aborted with [`AbortReason::ClientQuota`] (unrecorded, like
    /// backpressure), a new Execute is answered with it and a Resolve that would open one
    /// is rejected. Counted over the node's open transactions and executions, which are
    /// bounded themselves, so it needs no map of its own.
    pub open_transactions_per_client_max: usize,
    /// Most recovery ballots this node leads at once; beyond it a due recovery waits a
    /// randomized backoff and tries again (recoveries back off under load).
    pub recoveries_led_max: usize,
    /// Bytes of committed keys and values plus prepared writes this RM may hold; a
    /// Prepare whose writes would grow past it votes Aborted with
    /// [`AbortReason::StorageFull`]. Deletes, reads and decided commits always run.
    /// `None`: no quota.
    pub store_bytes_max: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 1024,
            value_bytes_max: 64 * 1024,
            operations_max: 1024,
            open_transactions_max: 100_000,
            outcomes_kept_max: 1_000_000,
            early_phase2b_max: 10_000,
            probe_path_max: 16,
            probes_remembered_max: 100_000,
            lock_queue_length_max: crate::store::LOCK_QUEUE_LENGTH_MAX,
            open_transactions_per_client_max: 1_000,
            recoveries_led_max: 1_000,
            store_bytes_max: None,
        }
    }
}

/// Configuration of one data node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// This node's id (must be a cluster member).
    pub id: NodeId,
    /// The cluster.
    pub cluster: Cluster,
    /// Seed of the node's PRNG (recovery backoff jitter).
    pub seed: u64,
    /// How long an RM waits for the decision after voting before it leads recovery;
    /// acceptor-only nodes wait twice as long.
    pub decision_timeout: Duration,
    /// Cap of the randomized exponential backoff between recovery attempts.
    pub recovery_backoff_max: Duration,
    /// Bounds.
    pub limits: Limits,
    /// Send ballot-0 Phase2a to only the first F+1 acceptors (the paper's message count);
    /// retries and recovery use all 2F+1. Off: every vote goes to all 2F+1, so one slow or
    /// lost acceptor costs nothing but messages.
    pub thrifty: bool,
    /// How waiting transactions are kept from deadlocking for good.
    pub deadlock: DeadlockPolicy,
    /// Longest a lock wait may last before the waiter is aborted (a backstop: deadlocks
    /// are normally broken by the detector long before).
    pub lock_wait_timeout: Duration,
    /// Longest an interactive transaction may sit idle at an RM (no operation, no
    /// prepare) before the RM aborts it and releases its locks: its client is presumed dead.
    pub execution_idle_timeout: Duration,
    /// How long a lock wait lasts before it sends a deadlock probe (short waits that end on
    /// their own cost no probes); also the interval between re-probes of a long wait.
    pub probe_delay: Duration,
    /// How long a deadlock's verification lap may pin the waits it checked (see
    /// `execution::verify_cycle`); a lap slower than this aborts no one.
    pub deadlock_verify_timeout: Duration,
    /// Gossip heartbeats and phi-accrual suspicion (`None`: no failure detector; recovery
    /// then waits for the decision timeout).
    pub detector: Option<DetectorConfig>,
    /// Time between the fence queries of a node in acceptor quarantine (see
    /// [`Node::reinitialized`]).
    pub fence_query_interval: Duration,
    /// Deliberate bugs (only in `bugs` builds).
    pub bugs: Bugs,
}

/// How a node keeps lock waits from deadlocking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadlockPolicy {
    /// Detect deadlocks by edge chasing (Chandy–Misra–Haas) and abort the youngest
    /// transaction on each cycle.
    EdgeChasing,
    /// Prevent them (Rosenkrantz et al.): an older requester wounds (aborts) a younger
    /// holder that has not voted; a younger requester waits.
    WoundWait,
}

impl NodeConfig {
    /// A configuration with default timeouts and limits.
    pub fn new(id: NodeId, cluster: Cluster, seed: u64) -> NodeConfig {
        NodeConfig {
            id,
            cluster,
            seed,
            decision_timeout: Duration::from_millis(200),
            recovery_backoff_max: Duration::from_secs(2),
            limits: Limits::default(),
            thrifty: true,
            deadlock: DeadlockPolicy::EdgeChasing,
            lock_wait_timeout: Duration::from_secs(5),
            execution_idle_timeout: Duration::from_secs(30),
            probe_delay: Duration::from_millis(2),
            deadlock_verify_timeout: Duration::from_millis(100),
            detector: Some(DetectorConfig::default()),
            fence_query_interval: Duration::from_secs(1),
            bugs: Bugs::none(),
        }
    }
}

/// Identifies one `Output::Persist`; tokens increase by one.
pub type PersistToken = u64;

/// Something that happened to the node.
#[derive(Clone, Debug)]
pub enum Input {
    /// Messages from an authenticated peer.
    Receive {
        /// The sender, as authenticated by the transport.
        from: NodeId,
        /// The messages of one frame.
        messages: Vec<Message>,
    },
    /// Every `Persist` up to and including `token` is durable.
    Persisted {
        /// The highest durable token.
        token: PersistToken,
    },
    /// The time from `poll_timeout` has come.
    Timeout,
}

/// Something the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// Append these records to the log and make them durable, then report
    /// `Input::Persisted { token }`.
    Persist {
        /// Its token.
        token: PersistToken,
        /// The records, in order.
        records: Vec<Record>,
    },
    /// Send these messages; everything they depend on is durable.
    Send(Envelope),
}

/// An audit event: what the node did and why (seed 003 asks for a log of key events).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The RM voted.
    Voted {
        /// The transaction.
        txn: TxnId,
        /// The vote.
        vote: Vote,
        /// Why Aborted.
        reason: Option<AbortReason>,
    },
    /// The node learned the outcome.
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
        /// Whether this node is a participant RM (and so applied it).
        as_participant: bool,
    },
    /// The node became a recovery leader.
    RecoveryStarted {
        /// The transaction.
        txn: TxnId,
        /// Its ballot.
        ballot: Ballot,
    },
    /// An interactive operation started waiting for a lock.
    LockWaitStarted {
        /// The waiting transaction.
        txn: TxnId,
        /// The key.
        key: Key,
    },
    /// A lock wait hit the lock-wait timeout and its transaction was aborted.
    LockWaitTimedOut {
        /// The transaction.
        txn: TxnId,
        /// The key.
        key: Key,
    },
    /// A deadlock was found and its victim aborted here.
    DeadlockVictim {
        /// The victim (youngest on the cycle).
        victim: TxnId,
        /// The cycle as found (each transaction and where it waited).
        cycle: Vec<crate::message::ProbeHop>,
        /// This node's wait-for edges just before the abort (for soundness checks).
        local_edges: Vec<(TxnId, TxnId)>,
    },
    /// Wound-wait: an older transaction wounded a younger one here.
    Wounded {
        /// The aborted transaction.
        victim: TxnId,
        /// The older transaction that wanted its lock.
        by: TxnId,
    },
    /// The failure detector started or stopped suspecting a member.
    Suspicion {
        /// The member.
        node: NodeId,
        /// True: now suspected; false: trusted again.
        suspected: bool,
    },
    /// A peer's message was rejected (and counted in [`Node::rejected_counts`]).
    Rejected {
        /// The peer.
        from: NodeId,
        /// Why.
        reason: RejectReason,
    },
    /// This node has no recovery round left (its leader round reached
    /// [`crate::types::ROUND_MAX`]): it leads no recovery, here for `txn` (or, with no
    /// transaction, at a restart). Others still can; an operator should look at how the
    /// rounds were used up.
    RecoveryRoundsExhausted {
        /// The transaction it could not recover, if any.
        txn: Option<TxnId>,
        /// The node's leader round.
        leader_round: u32,
    },
    /// A record of the node's own log could not be replayed as written (see
    /// [`ReplayProblem`] for what replay did instead).
    ReplayAnomaly {
        /// What was wrong and what replay did.
        problem: ReplayProblem,
    },
    /// Every other member confirmed that no undecided transaction names this node: its
    /// acceptor quarantine ended (see [`Node::reinitialized`]).
    AcceptorFenceCleared,
}

/// What a Prepare asks the RM to vote on.
#[derive(Clone, Debug)]
enum PrepareKind {
    /// One-shot: run these operations now (locks taken at prepare, never waiting).
    OneShot(Vec<Operation>),
    /// Interactive: the operations already ran here; this many were sent. Then the writes
    /// buffered until prepare, and whether read-only RMs may release now.
    Executed {
        operations: u32,
        at_prepare: Vec<Operation>,
        lock_point_passed: bool,
    },
}

/// This RM's part in a transaction, once it voted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RmPart {
    vote: Vote,
    reason: Option<AbortReason>,
    writes: Vec<(Key, Option<Value>)>,
    locks: Vec<(Key, LockMode)>,
    /// `None` after a restart: read results are not durable.
    reads: Option<Vec<ReadResult>>,
    /// The client already has the reads (interactive: each came with its operation), so
    /// the VoteNotice need not repeat them.
    client_has_reads: bool,
}

/// A recovery this node leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeaderPart {
    ballot: Ballot,
    promises: BTreeMap<NodeId, Vec<InstanceReport>>,
    proposed: bool,
}

/// Everything this node knows about one undecided transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TxnEntry {
    descriptor: TxnDescriptor,
    rm: Option<RmPart>,
    acceptor: BTreeMap<NodeId, AcceptorState>,
    tally: Tally,
    leader: Option<LeaderPart>,
    deadline: Time,
    recovery_attempts: u32,
    waiters: BTreeSet<NodeId>,
}

/// What the node keeps after a decision: the outcome and, at an RM, its read results.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Kept {
    outcome: Outcome,
    reads: Option<Vec<ReadResult>>,
}

/// A data node. See the module docs for the calling order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    config: NodeConfig,
    rng: Rng,
    store: Store,
    locks: LockTable,
    txns: BTreeMap<TxnId, TxnEntry>,
    deadlines: BTreeSet<(Time, TxnId)>,
    outcomes: BTreeMap<TxnId, Kept>,
    outcome_order: VecDeque<TxnId>,
    early_phase2b: BTreeMap<TxnId, Vec<(NodeId, NodeId, Ballot, Vote)>>,
    early_order: VecDeque<TxnId>,
    leader_round: u32,
    round_seen: u32,
    executions: BTreeMap<TxnId, execution::Execution>,
    execution_deadlines: BTreeSet<(Time, TxnId)>,
    probes_seen: BTreeMap<(TxnId, TxnId), Time>,
    pins: BTreeMap<TxnId, (TxnId, Time)>,
    detector: Option<FailureDetector>,
    suspected: BTreeSet<NodeId>,
    draining: bool,
    probes_seen_order: VecDeque<(TxnId, TxnId)>,
    staged_records: Vec<Record>,
    staged_sends: BTreeMap<NodeId, Vec<Message>>,
    local: VecDeque<Message>,
    staged_local_durable: Vec<Message>,
    issued_token: PersistToken,
    persisted_token: PersistToken,
    held: VecDeque<(PersistToken, Held)>,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    /// Rejected messages per kind of reason (bounded by [`RejectKind`]).
    rejected: BTreeMap<RejectKind, u64>,
    /// Who may touch which keys (`None`: everyone, everything).
    access: Option<AccessPolicy>,
    /// Transactions whose recovery this node leads now (entries with a `leader`).
    leading: usize,
    /// Bytes the writes of Prepared votes may add when they commit (see
    /// `reserved_bytes`): the storage quota's in-flight part.
    prepared_bytes: u64,
    /// Acceptor quarantine after a wiped data directory (see `fence`).
    quarantine: Option<fence::Quarantine>,
}

/// Something waiting for a persist to complete.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Held {
    /// A message to a peer.
    Remote(Envelope),
    /// A message to this node itself whose effect (a decision) must rest on durable state.
    Local(Message),
}

/// Most self-addressed messages processed in one `handle` call (a loop bound).
const LOCAL_MESSAGES_MAX: usize = 1 << 16;

impl Node {
    /// A node with empty state.
    pub fn new(config: NodeConfig) -> Node {
        assert!(
            config.cluster.is_member(config.id),
            "node {} is not a cluster member",
            config.id
        );
        let lock_queue_length_max = config.limits.lock_queue_length_max;
        let mut node = Node {
            rng: Rng::new(config.seed ^ config.id.0.rotate_left(32)),
            config,
            store: Store::default(),
            locks: LockTable::new(lock_queue_length_max),
            txns: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            outcomes: BTreeMap::new(),
            outcome_order: VecDeque::new(),
            early_phase2b: BTreeMap::new(),
            early_order: VecDeque::new(),
            leader_round: 0,
            round_seen: 0,
            executions: BTreeMap::new(),
            execution_deadlines: BTreeSet::new(),
            probes_seen: BTreeMap::new(),
            pins: BTreeMap::new(),
            detector: None,
            suspected: BTreeSet::new(),
            draining: false,
            probes_seen_order: VecDeque::new(),
            staged_records: Vec::new(),
            staged_sends: BTreeMap::new(),
            local: VecDeque::new(),
            staged_local_durable: Vec::new(),
            issued_token: 0,
            persisted_token: 0,
            held: VecDeque::new(),
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            rejected: BTreeMap::new(),
            access: None,
            leading: 0,
            prepared_bytes: 0,
            quarantine: None,
        };
        node.start_detector(Time::ZERO, 0);
        node
    }

    /// Rebuilds a node from the records its log kept, exactly as the daemon does at start:
    /// committed data, prepared transactions (with their locks re-acquired before anything
    /// else is served), acceptor promises and votes, and the highest ballot round used.
    ///
    /// Never panics on what the log says: a CRC-valid record that no correct run writes
    /// (corruption that kept its checksum, or a log an older version wrote under attack)
    /// is capped or skipped with an [`Event::ReplayAnomaly`] saying which and why (see
    /// [`ReplayProblem`]). A restart takes the next leader round as its incarnation; past
    /// [`ROUND_MAX`] the node leads no recovery ([`Event::RecoveryRoundsExhausted`]), and
    /// at [`LEADER_ROUND_MAX`] its incarnation stops growing too.
    pub fn recover(
        config: NodeConfig,
        now: Time,
        records: impl IntoIterator<Item = Record>,
    ) -> Node {
        let mut node = Node::replay_log(config, records);
        node.restart(now);
        node
    }

    /// The state a log states, before the restart step of [`Node::recover`] (no fresh
    /// leader round, no re-acquired locks, no deadlines): what [`Node::checkpoint_records`]
    /// restates. Not meant to be driven; use `recover` to run a node.
    pub fn replay_log(config: NodeConfig, records: impl IntoIterator<Item = Record>) -> Node {
        let mut node = Node::new(config);
        for record in records {
            node.replay(record);
        }
        node
    }

    /// The checkpoint of a durable log: the records of [`Node::checkpoint_records`] for the
    /// node that `records` replay to with an outcome window of `outcomes_kept_max`, which
    /// must be the node's own `Limits::outcomes_kept_max`. (Another window keeps another
    /// set of outcomes, and a vote the node wrote after forgetting an old outcome would be
    /// skipped by one replay and kept by the other.)
    ///
    /// Replay reads no identity, membership, clock or randomness, only the outcome window,
    /// so this needs no `NodeConfig`: a runtime's log compactor can call it without
    /// knowing the cluster. `recover(config, now, checkpoint_log(records, window))` equals
    /// `recover(config, now, records)`, and records appended after the checkpoint replay
    /// on it as they would after `records`.
    pub fn checkpoint_log(
        records: impl IntoIterator<Item = Record>,
        outcomes_kept_max: usize,
    ) -> Vec<Record> {
        let member = crate::cluster::Member {
            id: NodeId(1),
            name: "checkpoint".to_string(),
        };
        // One member, F=0: always a valid cluster.
        let cluster = Cluster::new(vec![member], 0).expect("a one-member cluster is valid");
        let mut config = NodeConfig::new(NodeId(1), cluster, 0);
        config.limits.outcomes_kept_max = outcomes_kept_max;
        config.detector = None;
        Node::replay_log(config, records).checkpoint_records()
    }

    /// Records that, replayed by [`Node::recover`] alone, rebuild this node's replayed
    /// state: committed rows with their versions and the commit sequence (`Snapshot`),
    /// the compact outcome window in order (`Outcomes`), the highest leader round, and
    /// for each undecided transaction the RM's vote (with its redo writes and locks) and
    /// the acceptor state of each instance. Its size follows the data and the open
    /// state, not the number of transactions ever run (the outcome window is bounded by
    /// `Limits::outcomes_kept_max`).
    ///
    /// Call it on a node built by [`Node::replay_log`] from what a log holds durably (as
    /// [`Node::checkpoint_log`] does). A live node's state also reflects records whose
    /// `Persist` may still be in flight and outcomes it learned without a record;
    /// checkpointing it would make durable what was never acknowledged as durable.
    pub fn checkpoint_records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        if self.quarantine.is_some() {
            records.push(Record::AcceptorFence { cleared: false });
        }
        if self.leader_round > 0 {
            records.push(Record::LeaderRound {
                round: self.leader_round,
            });
        }
        self.checkpoint_rows(&mut records);
        let order: Vec<(TxnId, Outcome)> = self
            .outcome_order
            .iter()
            .filter_map(|txn| Some((*txn, self.outcomes.get(txn)?.outcome)))
            .collect();
        for chunk in order.chunks(crate::record::OUTCOMES_PER_RECORD_MAX) {
            records.push(Record::Outcomes {
                outcomes: chunk.to_vec(),
            });
        }
        for entry in self.txns.values() {
            if let Some(rm) = &entry.rm {
                records.push(Record::Vote {
                    descriptor: entry.descriptor.clone(),
                    vote: rm.vote,
                    reason: rm.reason.clone(),
                    writes: rm.writes.clone(),
                    locks: rm.locks.clone(),
                    // Not replayed (the log's audit trail keeps them; a restart reports
                    // reads lost).
                    read_versions: Vec::new(),
                });
            }
            for (rm, state) in &entry.acceptor {
                records.push(Record::Acceptor {
                    descriptor: entry.descriptor.clone(),
                    rm: *rm,
                    state: *state,
                });
            }
        }
        records
    }

    /// The store as `Snapshot` records of about `SNAPSHOT_RECORD_BYTES_TARGET` each.
    fn checkpoint_rows(&self, records: &mut Vec<Record>) {
        /// Encoded bytes of a row besides its key and value (tags, lengths, version).
        const ROW_OVERHEAD_BYTES: usize = 16;
        let commit_sequence = self.store.commit_sequence();
        let mut rows = Vec::new();
        let mut rows_bytes = 0;
        for (key, row) in self.store.rows() {
            let row_bytes = key.as_str().len() + row.value.0.len() + ROW_OVERHEAD_BYTES;
            if !rows.is_empty()
                && rows_bytes + row_bytes > crate::record::SNAPSHOT_RECORD_BYTES_TARGET
            {
                records.push(Record::Snapshot {
                    commit_sequence,
                    rows: core::mem::take(&mut rows),
                });
                rows_bytes = 0;
            }
            rows.push((key.clone(), row.value.clone(), row.version));
            rows_bytes += row_bytes;
        }
        if !rows.is_empty() || commit_sequence > 0 {
            records.push(Record::Snapshot {
                commit_sequence,
                rows,
            });
        }
    }

    /// The restart step of [`Node::recover`].
    fn restart(&mut self, now: Time) {
        // A restart takes a fresh leader round and uses it as the failure detector's
        // incarnation: both only need to grow across restarts, and one record serves both.
        // Rounds above ROUND_MAX serve only as incarnations (no ballot uses them).
        match self
            .leader_round
            .checked_add(1)
            .filter(|round| *round <= LEADER_ROUND_MAX)
        {
            Some(round) => {
                self.leader_round = round;
                self.staged_records.push(Record::LeaderRound { round });
            }
            None => self.events.push_back(Event::RecoveryRoundsExhausted {
                txn: None,
                leader_round: self.leader_round,
            }),
        }
        if self.leader_round > ROUND_MAX && self.leader_round < LEADER_ROUND_MAX {
            self.events.push_back(Event::RecoveryRoundsExhausted {
                txn: None,
                leader_round: self.leader_round,
            });
        }
        let incarnation = u64::from(self.leader_round);
        self.start_detector(now, incarnation);
        if self.quarantine.is_some() {
            self.enter_quarantine(now);
        }
        let timeout = self.config.decision_timeout;
        let mut relock = Vec::new();
        for (txn, entry) in &self.txns {
            if let Some(rm) = &entry.rm {
                if rm.vote == Vote::Prepared {
                    relock.push((*txn, rm.locks.clone()));
                }
            }
        }
        for (txn, locks) in relock {
            if self.locks.try_acquire_all(txn, &locks).is_ok() {
                continue;
            }
            // Only a corrupt log lists two prepared transactions with conflicting locks:
            // keep every lock anyway (see `ReplayProblem::ConflictingPreparedLocks`).
            for (key, mode) in locks {
                if !self.locks.hold_despite_conflicts(txn, &key, mode) {
                    self.events.push_back(Event::ReplayAnomaly {
                        problem: ReplayProblem::ConflictingPreparedLocks { txn, key },
                    });
                }
            }
        }
        let txns: Vec<(TxnId, bool)> = self
            .txns
            .iter()
            .map(|(txn, entry)| (*txn, entry.descriptor.is_participant(self.config.id)))
            .collect();
        for (txn, participant) in txns {
            let wait = if participant {
                timeout
            } else {
                timeout.saturating_mul(2)
            };
            let jitter = self.jitter(wait);
            self.set_deadline(txn, now.saturating_add(jitter));
        }
    }

    fn replay(&mut self, record: Record) {
        match record {
            Record::Vote {
                descriptor,
                vote,
                reason,
                writes,
                locks,
                read_versions: _,
            } => {
                let txn = descriptor.txn;
                if self.outcomes.contains_key(&txn) || !self.replayable(&descriptor) {
                    return;
                }
                let rm = RmPart {
                    vote,
                    reason,
                    writes,
                    locks,
                    reads: None,
                    client_has_reads: false,
                };
                let added = reserved_bytes(&rm);
                let entry = self.entry_for_replay(descriptor);
                let replaced = entry.rm.replace(rm).map_or(0, |old| reserved_bytes(&old));
                self.prepared_bytes = self
                    .prepared_bytes
                    .saturating_add(added)
                    .saturating_sub(replaced);
            }
            Record::Acceptor {
                descriptor,
                rm,
                state,
            } => {
                let txn = descriptor.txn;
                if self.outcomes.contains_key(&txn) || !self.replayable(&descriptor) {
                    return;
                }
                if !invariants::acceptor_state_well_formed(&state) {
                    let problem = ReplayProblem::AcceptorStateMalformed { txn, rm };
                    return self.events.push_back(Event::ReplayAnomaly { problem });
                }
                let entry = self.entry_for_replay(descriptor);
                let slot = entry.acceptor.entry(rm).or_default();
                if !invariants::acceptor_step_monotonic(slot, &state) {
                    let problem = ReplayProblem::AcceptorStateRegressed { txn, rm };
                    return self.events.push_back(Event::ReplayAnomaly { problem });
                }
                *slot = state;
            }
            Record::LeaderRound { round } => {
                let round = if round > LEADER_ROUND_MAX {
                    let problem = ReplayProblem::LeaderRoundCapped { round };
                    self.events.push_back(Event::ReplayAnomaly { problem });
                    ROUND_MAX
                } else {
                    round
                };
                self.leader_round = self.leader_round.max(round);
            }
            Record::Outcome { txn, outcome } => self.replay_outcome(txn, outcome),
            Record::Snapshot {
                commit_sequence,
                rows,
            } => self.store.restore(commit_sequence, rows),
            Record::Outcomes { outcomes } => {
                for (txn, outcome) in outcomes {
                    self.replay_outcome(txn, outcome);
                }
            }
            Record::AcceptorFence { cleared } => {
                // Its time is set by the restart step.
                self.quarantine = (!cleared).then(|| fence::Quarantine::new(Time::ZERO));
            }
        }
    }

    fn replay_outcome(&mut self, txn: TxnId, outcome: Outcome) {
        let entry = self.txns.remove(&txn);
        if let Some(rm) = entry.and_then(|entry| entry.rm) {
            self.prepared_bytes = self.prepared_bytes.saturating_sub(reserved_bytes(&rm));
            if outcome == Outcome::Commit {
                if rm.vote == Vote::Prepared {
                    self.store.apply(&rm.writes);
                } else {
                    let problem = ReplayProblem::CommitOfAbortedVote { txn };
                    self.events.push_back(Event::ReplayAnomaly { problem });
                }
            }
        }
        // Read results are not durable: after a restart they are reported lost.
        self.keep_outcome(txn, outcome, None);
    }

    /// True if a replayed record's descriptor has a shape a live message could have had;
    /// otherwise reports it (see `ReplayProblem::MalformedDescriptor`).
    fn replayable(&mut self, descriptor: &TxnDescriptor) -> bool {
        let Err(problem) = descriptor.validate() else {
            return true;
        };
        let txn = descriptor.txn;
        let problem = ReplayProblem::MalformedDescriptor { txn, problem };
        self.events.push_back(Event::ReplayAnomaly { problem });
        false
    }

    fn entry_for_replay(&mut self, descriptor: TxnDescriptor) -> &mut TxnEntry {
        self.txns
            .entry(descriptor.txn)
            .or_insert_with(|| TxnEntry::new(descriptor, Time::ZERO))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Committed data (for reads, checks and status).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Bytes of committed keys and values at this RM (what the storage quota counts).
    pub fn store_bytes(&self) -> u64 {
        self.store.bytes()
    }

    /// Bytes the writes of this RM's Prepared, undecided transactions may still add.
    pub fn prepared_bytes(&self) -> u64 {
        self.prepared_bytes
    }

    /// True while a storage quota is set and committed plus prepared bytes reach it: the
    /// alarm an operator sees (new writes that grow the data are refused).
    pub fn storage_full(&self) -> bool {
        self.config
            .limits
            .store_bytes_max
            .is_some_and(|limit| self.store_bytes().saturating_add(self.prepared_bytes) >= limit)
    }

    /// Messages rejected so far, per kind of reason (see [`RejectReason`]): what the
    /// runtime exports as a counter. Bounded by [`RejectKind`]'s variants.
    pub fn rejected_counts(&self) -> &BTreeMap<RejectKind, u64> {
        &self.rejected
    }

    /// The outcome this node knows for `txn`, if any.
    pub fn known_outcome(&self, txn: TxnId) -> Option<Outcome> {
        self.outcomes.get(&txn).map(|kept| kept.outcome)
    }

    /// This node's acceptor state for instance `rm` of `txn`, if it holds one.
    pub fn acceptor_state(&self, txn: TxnId, rm: NodeId) -> Option<AcceptorState> {
        self.txns.get(&txn)?.acceptor.get(&rm).copied()
    }

    /// Transactions this node holds undecided, with their descriptors.
    pub fn undecided(&self) -> impl Iterator<Item = &TxnDescriptor> {
        self.txns.values().map(|entry| &entry.descriptor)
    }

    /// Transactions this RM voted Prepared for and still holds locks for.
    pub fn in_doubt(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.txns
            .iter()
            .filter(|(_, entry)| matches!(&entry.rm, Some(rm) if rm.vote == Vote::Prepared))
            .map(|(txn, _)| *txn)
    }

    /// The earliest time `handle(now, Input::Timeout)` must be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let recovery = self.deadlines.first().map(|(time, _)| *time);
        let execution = self.execution_deadlines.first().map(|(time, _)| *time);
        let heartbeat = self.detector.as_ref().map(FailureDetector::poll_timeout);
        let fence = self.fence_timeout();
        [recovery, execution, heartbeat, fence]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing the runtime must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next audit event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Feeds one input. See the module docs for the calling order.
    pub fn handle(&mut self, now: Time, input: Input) {
        let mut work = 1;
        match input {
            Input::Receive { from, messages } => {
                work += messages.len();
                for message in messages {
                    self.on_message(now, from, message);
                }
            }
            Input::Persisted { token } => self.on_persisted(token),
            Input::Timeout => self.on_timeout(now),
        }
        // Each received message, and each held message a persist released, may cause a
        // bounded number of self-addressed ones; more is a loop (an internal bug).
        let local_messages_max = LOCAL_MESSAGES_MAX
            .saturating_mul(work.saturating_add(self.local.len()))
            .max(LOCAL_MESSAGES_MAX);
        let mut processed: usize = 0;
        loop {
            while let Some(message) = self.local.pop_front() {
                processed += 1;
                assert!(
                    processed <= local_messages_max,
                    "self-addressed message loop"
                );
                let me = self.config.id;
                self.on_message(now, me, message);
            }
            self.flush();
            if self.local.is_empty() {
                break;
            }
        }
    }

    fn on_persisted(&mut self, token: PersistToken) {
        assert!(token <= self.issued_token, "persisted a token never issued");
        self.persisted_token = self.persisted_token.max(token);
        while let Some((needed, _)) = self.held.front() {
            if *needed > self.persisted_token {
                break;
            }
            match self.held.pop_front() {
                Some((_, Held::Remote(envelope))) => self.outputs.push_back(Output::Send(envelope)),
                Some((_, Held::Local(message))) => self.local.push_back(message),
                None => {}
            }
        }
    }

    fn on_timeout(&mut self, now: Time) {
        let due: Vec<TxnId> = self
            .deadlines
            .iter()
            .take_while(|(time, _)| *time <= now)
            .map(|(_, txn)| *txn)
            .collect();
        for txn in due {
            self.start_recovery(now, txn);
        }
        self.on_execution_timeouts(now);
        self.on_heartbeat_round(now);
        self.on_fence_timeout(now);
    }

    fn on_message(&mut self, now: Time, from: NodeId, message: Message) {
        let kind = message.kind();
        if let Some(round) = message.out_of_range_round() {
            let reason = RejectReason::BallotOutOfRange {
                message: kind,
                round,
            };
            return self.reject(from, reason);
        }
        if self.refused_in_quarantine(from, &message) {
            return;
        }
        match message {
            Message::Prepare {
                descriptor,
                operations,
            } => self.on_prepare(now, from, descriptor, PrepareKind::OneShot(operations)),
            Message::PrepareExecuted {
                descriptor,
                operations,
                at_prepare,
                lock_point_passed,
            } => self.on_prepare(
                now,
                from,
                descriptor,
                PrepareKind::Executed {
                    operations,
                    at_prepare,
                    lock_point_passed,
                },
            ),
            Message::Execute {
                txn,
                start_time,
                sequence,
                operation,
            } => self.on_execute(now, from, txn, start_time, sequence, operation),
            Message::AbortExecution { txn } => self.on_abort_execution(now, from, txn),
            Message::Probe {
                initiator,
                target,
                path,
            } => self.on_probe(now, from, initiator, target, path),
            Message::Victim {
                victim,
                cycle,
                verified,
            } => self.on_victim(now, from, victim, cycle, verified),
            Message::Unpin { victim, waiters } => self.on_unpin(from, victim, waiters),
            Message::Gossip { heartbeats } => self.on_gossip(now, from, heartbeats),
            Message::FenceQuery { round } => self.on_fence_query(from, round),
            Message::FenceAnswer {
                round,
                clear,
                incarnation,
            } => self.on_fence_answer(from, round, clear, incarnation),
            Message::Executed { .. } | Message::ExecutionAborted { .. } => {
                self.reject(from, RejectReason::MeantForClients { message: kind })
            }
            Message::Phase2a {
                descriptor,
                rm,
                ballot,
                value,
            } => self.on_phase2a(now, from, descriptor, rm, ballot, value),
            Message::Phase2b {
                txn,
                rm,
                ballot,
                value,
            } => self.on_phase2b(now, from, txn, rm, ballot, value),
            Message::Phase1a { descriptor, ballot } => {
                self.on_phase1a(now, from, descriptor, ballot)
            }
            Message::Phase1b {
                txn,
                ballot,
                reports,
            } => self.on_phase1b(now, from, txn, ballot, reports),
            Message::Reject { txn, promised } => self.on_reject(now, from, txn, promised),
            Message::Decision { txn, outcome, .. } => self.on_decision(now, from, txn, outcome),
            Message::Resolve { descriptor } => self.on_resolve(now, from, descriptor),
            Message::VoteNotice { .. } => {
                self.reject(from, RejectReason::MeantForClients { message: kind })
            }
            Message::Refused { reason, .. } => {
                self.reject(from, RejectReason::PeerRefused { refusal: reason })
            }
        }
    }

    // ----- RM: prepare and vote -------------------------------------------------------

    fn on_prepare(
        &mut self,
        now: Time,
        from: NodeId,
        descriptor: TxnDescriptor,
        kind: PrepareKind,
    ) {
        let me = self.config.id;
        if from != descriptor.client() {
            return self.reject(
                from,
                RejectReason::NotFromClient {
                    message: MessageKind::Prepare,
                },
            );
        }
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Prepare, problem));
        }
        if !descriptor.is_participant(me) {
            return self.reject(
                from,
                RejectReason::NotInRole {
                    message: MessageKind::Prepare,
                },
            );
        }
        let txn = descriptor.txn;
        if let Some(kept) = self.outcomes.get(&txn) {
            let decision = Message::Decision {
                txn,
                outcome: kept.outcome,
                reads: kept.reads.clone(),
            };
            return self.send(from, decision);
        }
        if let Some(entry) = self.txns.get(&txn) {
            if entry.descriptor != descriptor {
                return self.reject(
                    from,
                    bad_descriptor(MessageKind::Prepare, DESCRIPTOR_DIFFERS.to_string()),
                );
            }
            if let Some(rm) = entry.rm.clone() {
                // A retry: repeat the vote (acceptors treat it as a duplicate).
                return self.announce_vote(&descriptor, &rm, false);
            }
        } else if self.draining && !self.executions.contains_key(&txn) {
            return self.refuse_while_draining(from, txn);
        } else if self.txns.len() >= self.config.limits.open_transactions_max {
            let reason = AbortReason::Overloaded {
                open: self.txns.len() as u64,
            };
            let notice = Message::VoteNotice {
                txn,
                vote: Vote::Aborted,
                reason: Some(reason),
                reads: Vec::new(),
            };
            // Not recorded: the client sees the notice and aborts; a retry votes again.
            return self.send(from, notice);
        } else if let Some(open) = self.over_client_quota(txn) {
            let reason = AbortReason::ClientQuota {
                client: txn.client,
                open,
            };
            if self.executions.contains_key(&txn) {
                self.abort_execution(now, txn, reason.clone());
                self.remove_execution(txn);
            }
            let notice = Message::VoteNotice {
                txn,
                vote: Vote::Aborted,
                reason: Some(reason),
                reads: Vec::new(),
            };
            // Not recorded, as backpressure: no Phase2a left this node, so its instance
            // can only choose Aborted, and a flood over the quota writes nothing.
            return self.send(from, notice);
        }
        let rm = match kind {
            PrepareKind::OneShot(operations) => self.execute(now, &descriptor, &operations),
            PrepareKind::Executed {
                operations,
                at_prepare,
                lock_point_passed,
            } => self.prepare_executed(now, txn, operations, &at_prepare, lock_point_passed),
        };
        self.events.push_back(Event::Voted {
            txn,
            vote: rm.vote,
            reason: rm.reason.clone(),
        });
        self.staged_records.push(Record::Vote {
            descriptor: descriptor.clone(),
            vote: rm.vote,
            reason: rm.reason.clone(),
            writes: rm.writes.clone(),
            locks: rm.locks.clone(),
            read_versions: rm
                .reads
                .iter()
                .flatten()
                .map(|read| (read.key.clone(), read.version))
                .collect(),
        });
        let wait = self.jitter(self.config.decision_timeout);
        self.prepared_bytes = self.prepared_bytes.saturating_add(reserved_bytes(&rm));
        self.entry(now, &descriptor).rm = Some(rm.clone());
        self.set_deadline(txn, now.saturating_add(wait));
        self.announce_vote(&descriptor, &rm, true);
        if rm.vote == Vote::Aborted {
            // Only Aborted can ever be chosen for this instance (ballot 0 proposed it and a
            // leader proposes an accepted value or Aborted), so Abort is certain once the
            // vote is durable.
            self.send(
                me,
                Message::Decision {
                    txn,
                    outcome: Outcome::Abort,
                    reads: None,
                },
            );
        }
    }

    /// Sends the RM's ballot-0 Phase2a to every acceptor and, when there is something to
    /// report, a VoteNotice to the client.
    fn announce_vote(&mut self, descriptor: &TxnDescriptor, rm: &RmPart, first_time: bool) {
        let me = self.config.id;
        // Thrifty (Gray & Lamport section 4): in the normal case F+1 acceptors suffice, and
        // every RM picks the same F+1 (the descriptor's first), so only they send Phase2b.
        // A retry widens to all 2F+1, and a recovery leader always uses all of them.
        let fanout = if self.config.thrifty && first_time && rm.vote == Vote::Prepared {
            descriptor.quorum()
        } else {
            descriptor.acceptors.len()
        };
        for acceptor in descriptor.acceptors.iter().take(fanout).copied() {
            self.send(
                acceptor,
                Message::Phase2a {
                    descriptor: descriptor.clone(),
                    rm: me,
                    ballot: Ballot::ZERO,
                    value: rm.vote,
                },
            );
        }
        let reads = if rm.client_has_reads {
            Vec::new()
        } else {
            rm.reads.clone().unwrap_or_default()
        };
        if !reads.is_empty() || rm.vote == Vote::Aborted {
            self.send(
                descriptor.client(),
                Message::VoteNotice {
                    txn: descriptor.txn,
                    vote: rm.vote,
                    reason: rm.reason.clone(),
                    reads,
                },
            );
        }
    }

    /// Validates and executes the RM's operations under locks; the result is its vote.
    fn execute(
        &mut self,
        now: Time,
        descriptor: &TxnDescriptor,
        operations: &[Operation],
    ) -> RmPart {
        let aborted = |reason| RmPart {
            vote: Vote::Aborted,
            reason: Some(reason),
            writes: Vec::new(),
            locks: Vec::new(),
            reads: Some(Vec::new()),
            client_has_reads: false,
        };
        if let Err(reason) = self.authorize(descriptor.client(), operations) {
            return aborted(reason);
        }
        if let Err(reason) = self.validate_operations(operations) {
            return aborted(reason);
        }
        let locks = locks_for(operations);
        if let Err(key) = self.locks.try_acquire_all(descriptor.txn, &locks) {
            return aborted(AbortReason::LockConflict { key });
        }
        let result = self.run_operations(operations).and_then(|(writes, reads)| {
            let growth = self
                .store
                .growth_bytes(writes.iter().map(|(key, value)| (key, value)));
            self.check_storage(growth)?;
            Ok((writes, reads))
        });
        match result {
            Ok((writes, reads)) => {
                let mut locks = locks;
                if writes.is_empty() && self.config.bugs.has(Bug::ReleaseLocksAtPrepare) {
                    // The bug: a one-shot read-only participant lets go of its shared locks
                    // at prepare, although prepare is where this transaction took them.
                    let keys = locks.drain(..).map(|(key, _)| key).collect::<Vec<_>>();
                    self.release_locks(now, descriptor.txn, keys);
                }
                RmPart {
                    vote: Vote::Prepared,
                    reason: None,
                    writes,
                    locks,
                    reads: Some(reads),
                    client_has_reads: false,
                }
            }
            Err(reason) => {
                let keys = locks.into_iter().map(|(key, _)| key).collect::<Vec<_>>();
                self.release_locks(now, descriptor.txn, keys);
                aborted(reason)
            }
        }
    }

    /// Installs (or, with `None`, removes) the access policy: with one, a client may run
    /// only the operations its [`crate::Permissions`] cover, and a client without an entry
    /// none (the runtime drops unauthenticated peers before this; this is defence in
    /// depth). Data nodes are always allowed. A refused Prepare votes Aborted with
    /// [`AbortReason::Unauthorized`] (recorded and announced like any Aborted vote, so the
    /// transaction aborts everywhere at once); a refused Execute is answered with that
    /// error and aborts the execution. Without a policy (the default, and always in the
    /// simulator) everyone may do everything.
    pub fn set_access(&mut self, policy: Option<AccessPolicy>) {
        self.access = policy;
    }

    /// The access policy installed, if any.
    pub fn access(&self) -> Option<&AccessPolicy> {
        self.access.as_ref()
    }

    /// The access policy installed, to grant or revoke one client at a time (a runtime
    /// serving thousands of clients would otherwise rebuild it for each).
    pub fn access_mut(&mut self) -> Option<&mut AccessPolicy> {
        self.access.as_mut()
    }

    /// Checks `operations` against `client`'s permissions; `Err` names the first key
    /// refused.
    pub(super) fn authorize(
        &self,
        client: NodeId,
        operations: &[Operation],
    ) -> Result<(), AbortReason> {
        let Some(policy) = &self.access else {
            return Ok(());
        };
        if self.config.cluster.is_member(client) {
            return Ok(());
        }
        let permissions = policy.get(client);
        for operation in operations {
            let key = operation.key();
            let allowed = permissions.is_some_and(|permissions| {
                if operation.is_write() {
                    permissions.allows_write(key)
                } else {
                    permissions.allows_read(key)
                }
            });
            if !allowed {
                return Err(AbortReason::Unauthorized { key: key.clone() });
            }
        }
        Ok(())
    }

    /// `Err(StorageFull)` if writes growing the data by `growth_bytes` would take it past
    /// the quota. Writes that grow nothing always pass (deletes, shrinking updates).
    pub(super) fn check_storage(&self, growth_bytes: u64) -> Result<(), AbortReason> {
        let Some(limit_bytes) = self.config.limits.store_bytes_max else {
            return Ok(());
        };
        let used_bytes = self.store_bytes().saturating_add(self.prepared_bytes);
        if growth_bytes > 0 && used_bytes.saturating_add(growth_bytes) > limit_bytes {
            return Err(AbortReason::StorageFull {
                used_bytes,
                limit_bytes,
            });
        }
        Ok(())
    }

    /// If `txn`'s client (not a data node) has its quota of transactions open here
    /// besides `txn`, how many.
    pub(super) fn over_client_quota(&self, txn: TxnId) -> Option<u64> {
        let client = txn.client;
        if self.config.cluster.is_member(client) {
            return None;
        }
        let limit = self.config.limits.open_transactions_per_client_max;
        let range = TxnId {
            client,
            sequence: 0,
        }..=TxnId {
            client,
            sequence: u64::MAX,
        };
        // A client's transactions are adjacent in both maps: counting costs the quota.
        let undecided = self
            .txns
            .range(range.clone())
            .filter(|(open, _)| **open != txn)
            .take(limit)
            .count();
        let executing = self
            .executions
            .range(range)
            .filter(|(open, _)| **open != txn)
            .take(limit)
            .count();
        let open = undecided.saturating_add(executing);
        (open >= limit).then_some(open as u64)
    }

    fn validate_operations(&self, operations: &[Operation]) -> Result<(), AbortReason> {
        let limits = &self.config.limits;
        if operations.len() > limits.operations_max {
            return Err(AbortReason::TooManyOperations {
                count: operations.len() as u64,
                limit: limits.operations_max as u64,
            });
        }
        for operation in operations {
            let key = operation.key();
            if key.as_str().len() > limits.key_bytes_max {
                return Err(AbortReason::KeyTooLarge {
                    length_bytes: key.as_str().len() as u64,
                    limit_bytes: limits.key_bytes_max as u64,
                });
            }
            if self.config.cluster.owner(key) != self.config.id {
                return Err(AbortReason::KeyNotOwned { key: key.clone() });
            }
            if let Operation::Write { value, .. } | Operation::Update { value, .. } = operation {
                if value.0.len() > limits.value_bytes_max {
                    return Err(AbortReason::ValueTooLarge {
                        key: key.clone(),
                        length_bytes: value.0.len() as u64,
                        limit_bytes: limits.value_bytes_max as u64,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs the operations in order against the committed data plus this transaction's
    /// own earlier writes; returns the final write set and the reads.
    #[allow(clippy::type_complexity)]
    fn run_operations(
        &self,
        operations: &[Operation],
    ) -> Result<(Vec<(Key, Option<Value>)>, Vec<ReadResult>), AbortReason> {
        let mut overlay: BTreeMap<Key, Option<Value>> = BTreeMap::new();
        let mut reads = Vec::new();
        for operation in operations {
            match operation {
                Operation::Write { key, value } => {
                    overlay.insert(key.clone(), Some(value.clone()));
                }
                Operation::Update { key, value } => {
                    let exists = match overlay.get(key) {
                        Some(pending) => pending.is_some(),
                        None => self.store.get(key).0.is_some(),
                    };
                    if !exists {
                        return Err(AbortReason::UpdateOfMissingKey { key: key.clone() });
                    }
                    overlay.insert(key.clone(), Some(value.clone()));
                }
                Operation::Delete { key } => {
                    overlay.insert(key.clone(), None);
                }
                Operation::Read { key, expected } => {
                    let (committed, version) = self.store.get(key);
                    if let Some(expected) = expected {
                        if *expected != version {
                            return Err(AbortReason::VersionMismatch {
                                key: key.clone(),
                                expected: expected.0,
                                actual: version.0,
                            });
                        }
                    }
                    let value = match overlay.get(key) {
                        Some(pending) => pending.clone(),
                        None => committed.cloned(),
                    };
                    reads.push(ReadResult {
                        key: key.clone(),
                        value,
                        version,
                    });
                }
            }
        }
        Ok((overlay.into_iter().collect(), reads))
    }

    // ----- Acceptor ------------------------------------------------------------------

    fn on_phase2a(
        &mut self,
        now: Time,
        from: NodeId,
        descriptor: TxnDescriptor,
        rm: NodeId,
        ballot: Ballot,
        value: Vote,
    ) {
        let me = self.config.id;
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Phase2a, problem));
        }
        if !descriptor.is_acceptor(me) || !descriptor.is_participant(rm) {
            return self.reject(
                from,
                RejectReason::NotInRole {
                    message: MessageKind::Phase2a,
                },
            );
        }
        let owner_of_ballot = if ballot.is_zero() { rm } else { ballot.leader };
        if !self.config.cluster.is_member(from) {
            // Participants are members (the descriptor check), so this only refuses a
            // recovery ballot led by a client: see `on_phase1a`.
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Phase2a,
                },
            );
        }
        if from != owner_of_ballot {
            // Ballot 0 belongs to the RM, a recovery ballot to its leader: nobody else
            // may propose in them (the sender is authenticated by the transport).
            return self.reject(
                from,
                RejectReason::NotBallotOwner {
                    message: MessageKind::Phase2a,
                },
            );
        }
        let txn = descriptor.txn;
        if self.answer_if_decided(from, txn) {
            return;
        }
        if !self.admit(from, &descriptor) {
            return;
        }
        let entry = self.entry(now, &descriptor);
        let state = entry.acceptor.entry(rm).or_default();
        let before = *state;
        let result = state.accept(ballot, value);
        let after = *state;
        assert!(invariants::acceptor_state_well_formed(&after));
        assert!(invariants::acceptor_step_monotonic(&before, &after));
        match result {
            AcceptResult::Accepted => {
                self.persist_acceptor(&descriptor, rm, after);
                self.announce_accepted(txn, rm, ballot, value);
            }
            AcceptResult::Duplicate => self.announce_accepted(txn, rm, ballot, value),
            AcceptResult::Stale => {
                if !ballot.is_zero() {
                    self.send(
                        from,
                        Message::Reject {
                            txn,
                            promised: after.promised,
                        },
                    );
                }
            }
            AcceptResult::Conflicting => {
                self.reject(from, RejectReason::ConflictingPhase2a);
            }
        }
    }

    fn persist_acceptor(&mut self, descriptor: &TxnDescriptor, rm: NodeId, state: AcceptorState) {
        if self.config.bugs.has(Bug::AcceptorSkipsPersist) {
            return;
        }
        self.staged_records.push(Record::Acceptor {
            descriptor: descriptor.clone(),
            rm,
            state,
        });
    }

    /// Faster Paxos Commit: the acceptor tells every RM and the client directly (and the
    /// recovery leader whose ballot it is). Aborted goes out at once, since it alone decides
    /// Abort; Prepared waits until this acceptor has accepted a value for every instance,
    /// then one message per learner carries all of them. Learners need every instance
    /// before they can commit, so the wait costs no latency and bundles the 2b's as in the
    /// paper's message count.
    fn announce_accepted(&mut self, txn: TxnId, rm: NodeId, ballot: Ballot, value: Vote) {
        let Some(entry) = self.txns.get(&txn) else {
            return;
        };
        let descriptor = &entry.descriptor;
        let mut learners: BTreeSet<NodeId> = descriptor.participants.iter().copied().collect();
        learners.insert(descriptor.client());
        if !ballot.is_zero() {
            learners.insert(ballot.leader);
        }
        let mut phase2bs = Vec::new();
        if value == Vote::Aborted {
            phase2bs.push(Message::Phase2b {
                txn,
                rm,
                ballot,
                value,
            });
        } else {
            for instance in &descriptor.participants {
                let state = entry.acceptor.get(instance).copied().unwrap_or_default();
                let (Some(ballot), Some(value)) = (state.accepted_ballot, state.accepted_value)
                else {
                    return;
                };
                phase2bs.push(Message::Phase2b {
                    txn,
                    rm: *instance,
                    ballot,
                    value,
                });
            }
        }
        for learner in learners {
            for phase2b in &phase2bs {
                self.send(learner, phase2b.clone());
            }
        }
    }

    fn on_phase1a(&mut self, now: Time, from: NodeId, descriptor: TxnDescriptor, ballot: Ballot) {
        let me = self.config.id;
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Phase1a, problem));
        }
        if !descriptor.is_acceptor(me) {
            return self.reject(
                from,
                RejectReason::NotInRole {
                    message: MessageKind::Phase1a,
                },
            );
        }
        if !self.config.cluster.is_member(from) {
            // Only data nodes lead recovery: a client leading a ballot could propose
            // Aborted without heeding Phase1b and un-choose a Prepared instance.
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Phase1a,
                },
            );
        }
        if ballot.is_zero() || ballot.leader != from {
            return self.reject(
                from,
                RejectReason::NotBallotOwner {
                    message: MessageKind::Phase1a,
                },
            );
        }
        let txn = descriptor.txn;
        self.round_seen = self.round_seen.max(ballot.round);
        if self.answer_if_decided(from, txn) {
            return;
        }
        if !self.admit(from, &descriptor) {
            return;
        }
        let mut reports = Vec::new();
        let mut changed = Vec::new();
        let mut highest_promise = Ballot::ZERO;
        let mut stale = false;
        let entry = self.entry(now, &descriptor);
        for rm in descriptor.participants.iter().copied() {
            let state = entry.acceptor.entry(rm).or_default();
            let before = *state;
            match state.promise(ballot) {
                PromiseResult::Promised => changed.push((rm, *state)),
                PromiseResult::AlreadyPromised => {}
                PromiseResult::Stale => stale = true,
            }
            assert!(invariants::acceptor_step_monotonic(&before, state));
            highest_promise = highest_promise.max(state.promised);
            reports.push(InstanceReport {
                rm,
                accepted_ballot: state.accepted_ballot,
                accepted_value: state.accepted_value,
            });
        }
        for (rm, state) in changed {
            self.persist_acceptor(&descriptor, rm, state);
        }
        let reply = if stale {
            Message::Reject {
                txn,
                promised: highest_promise,
            }
        } else {
            Message::Phase1b {
                txn,
                ballot,
                reports,
            }
        };
        self.send(from, reply);
    }

    // ----- Learner -------------------------------------------------------------------

    fn on_phase2b(
        &mut self,
        now: Time,
        from: NodeId,
        txn: TxnId,
        rm: NodeId,
        ballot: Ballot,
        value: Vote,
    ) {
        if !self.config.cluster.is_member(from) {
            // Acceptors are data nodes; anyone else could only fill the early buffer.
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Phase2b,
                },
            );
        }
        if self.outcomes.contains_key(&txn) {
            return;
        }
        let me = self.config.id;
        let Some(entry) = self.txns.get_mut(&txn) else {
            self.buffer_early_phase2b(txn, (from, rm, ballot, value));
            return;
        };
        let Some(chosen) = entry
            .tally
            .record(&entry.descriptor, from, rm, ballot, value)
        else {
            return;
        };
        if self.config.bugs.has(Bug::RmCommitsOnOwnVote) && rm == me && chosen == Vote::Prepared {
            return self.decide(now, from, txn, Outcome::Commit);
        }
        if let Some(outcome) = entry.tally.outcome(&entry.descriptor) {
            self.decide(now, from, txn, outcome);
        }
    }

    fn buffer_early_phase2b(&mut self, txn: TxnId, phase2b: (NodeId, NodeId, Ballot, Vote)) {
        if !self.early_phase2b.contains_key(&txn) {
            if self.early_order.len() >= self.config.limits.early_phase2b_max {
                if let Some(oldest) = self.early_order.pop_front() {
                    self.early_phase2b.remove(&oldest);
                }
            }
            self.early_order.push_back(txn);
        }
        let buffered = self.early_phase2b.entry(txn).or_default();
        if buffered.len() < 4 * crate::cluster::MEMBERS_MAX {
            buffered.push(phase2b);
        }
    }

    fn on_decision(&mut self, now: Time, from: NodeId, txn: TxnId, outcome: Outcome) {
        if !self.config.cluster.is_member(from) {
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Decision,
                },
            );
        }
        if self.txns.contains_key(&txn) || self.outcomes.contains_key(&txn) {
            self.decide(now, from, txn, outcome);
        } else {
            // Never took part: remember it so a late Prepare or 2a is answered, not acted on.
            self.keep_outcome(txn, outcome, None);
        }
    }

    /// Resolve: finish the transaction (leading recovery if needed) and tell the asker.
    /// Only with a reason: the asker is the transaction's client or a data node, and this
    /// node is a participant or acceptor of it (only they hold anything to recover); a
    /// client's Resolve that would open a transaction counts against its quota. Anything
    /// else is rejected and counted, so a flood of Resolves starts no recoveries.
    fn on_resolve(&mut self, now: Time, from: NodeId, descriptor: TxnDescriptor) {
        let me = self.config.id;
        let from_client = from == descriptor.client();
        if !from_client && !self.config.cluster.is_member(from) {
            let problem = "the asker is neither its client nor a data node";
            return self.reject(from, RejectReason::NoReasonToResolve { problem });
        }
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Resolve, problem));
        }
        if !descriptor.is_participant(me) && !descriptor.is_acceptor(me) {
            let problem = "this node is neither a participant nor an acceptor";
            return self.reject(from, RejectReason::NoReasonToResolve { problem });
        }
        let txn = descriptor.txn;
        if self.answer_if_decided(from, txn) {
            return;
        }
        if !self.admit(from, &descriptor) {
            return;
        }
        if from_client && !self.txns.contains_key(&txn) {
            if let Some(open) = self.over_client_quota(txn) {
                let client = txn.client;
                return self.reject(from, RejectReason::ClientQuota { client, open });
            }
        }
        let entry = self.entry(now, &descriptor);
        entry.waiters.insert(from);
        if entry.leader.is_none() {
            self.start_recovery(now, txn);
        }
    }

    // ----- Recovery leader -----------------------------------------------------------

    /// Becomes the leader of a fresh ballot for every instance of `txn` (the paper's
    /// "leader that times out"): Phase1a to all acceptors of the descriptor.
    fn start_recovery(&mut self, now: Time, txn: TxnId) {
        let me = self.config.id;
        let Some(entry) = self.txns.get(&txn) else {
            return;
        };
        if self.quarantine.is_some() {
            // No ballots in quarantine (see `fence`): look again later.
            let backoff = self.backoff(entry.recovery_attempts.max(1));
            return self.set_deadline(txn, now.saturating_add(backoff));
        }
        if entry.leader.is_none() && self.leading >= self.config.limits.recoveries_led_max {
            // Enough ballots in flight: this one waits its turn, with backoff.
            let attempts = entry.recovery_attempts.max(1);
            let backoff = self.backoff(attempts);
            return self.set_deadline(txn, now.saturating_add(backoff));
        }
        let descriptor = entry.descriptor.clone();
        let attempts = entry.recovery_attempts.saturating_add(1);
        let Some(round) = next_round(self.leader_round.max(self.round_seen)) else {
            // Out of rounds (only ever reached by spending a billion ballots or from a
            // capped log): stand down for good here; the other nodes with a part in the
            // transaction still recover it, and their Decision reaches this one.
            if let Some(entry) = self.txns.get_mut(&txn) {
                if entry.leader.take().is_some() {
                    self.leading = self.leading.saturating_sub(1);
                }
                self.deadlines.remove(&(entry.deadline, txn));
            }
            let leader_round = self.leader_round;
            self.events.push_back(Event::RecoveryRoundsExhausted {
                txn: Some(txn),
                leader_round,
            });
            return;
        };
        self.leader_round = round;
        self.staged_records.push(Record::LeaderRound { round });
        let ballot = Ballot { round, leader: me };
        let backoff = self.backoff(attempts);
        if let Some(entry) = self.txns.get_mut(&txn) {
            entry.recovery_attempts = attempts;
            if entry.leader.is_none() {
                self.leading = self.leading.saturating_add(1);
            }
            entry.leader = Some(LeaderPart {
                ballot,
                promises: BTreeMap::new(),
                proposed: false,
            });
        }
        self.set_deadline(txn, now.saturating_add(backoff));
        self.events
            .push_back(Event::RecoveryStarted { txn, ballot });
        for acceptor in descriptor.acceptors.clone() {
            self.send(
                acceptor,
                Message::Phase1a {
                    descriptor: descriptor.clone(),
                    ballot,
                },
            );
        }
    }

    fn on_phase1b(
        &mut self,
        _now: Time,
        from: NodeId,
        txn: TxnId,
        ballot: Ballot,
        reports: Vec<InstanceReport>,
    ) {
        let ignores_accepted = self.config.bugs.has(Bug::RecoveryIgnoresAccepted);
        let Some(entry) = self.txns.get_mut(&txn) else {
            return;
        };
        if !entry.descriptor.is_acceptor(from) {
            return self.reject(
                from,
                RejectReason::NotFromAcceptor {
                    message: MessageKind::Phase1b,
                },
            );
        }
        let Some(leader) = entry.leader.as_mut() else {
            return;
        };
        if leader.ballot != ballot || leader.proposed {
            return;
        }
        leader.promises.insert(from, reports);
        if leader.promises.len() < entry.descriptor.quorum() {
            return;
        }
        leader.proposed = true;
        let descriptor = entry.descriptor.clone();
        let mut proposals = Vec::new();
        for rm in descriptor.participants.iter().copied() {
            let highest = leader
                .promises
                .values()
                .flatten()
                .filter(|report| report.rm == rm)
                .filter_map(|report| Some((report.accepted_ballot?, report.accepted_value?)))
                .max_by_key(|(accepted_ballot, _)| *accepted_ballot);
            // Paxos Commit: the highest-ballot accepted value, else Aborted (the RM never
            // got its vote to a quorum, so no one can have chosen Prepared).
            let value = match highest {
                Some((_, value)) if !ignores_accepted => value,
                _ => Vote::Aborted,
            };
            proposals.push((rm, value));
        }
        for acceptor in descriptor.acceptors.clone() {
            for (rm, value) in &proposals {
                self.send(
                    acceptor,
                    Message::Phase2a {
                        descriptor: descriptor.clone(),
                        rm: *rm,
                        ballot,
                        value: *value,
                    },
                );
            }
        }
    }

    fn on_reject(&mut self, now: Time, from: NodeId, txn: TxnId, promised: Ballot) {
        self.round_seen = self.round_seen.max(promised.round);
        let Some(entry) = self.txns.get_mut(&txn) else {
            return;
        };
        if !entry.descriptor.is_acceptor(from) {
            return self.reject(
                from,
                RejectReason::NotFromAcceptor {
                    message: MessageKind::Reject,
                },
            );
        }
        let Some(leader) = entry.leader.as_ref() else {
            return;
        };
        if leader.ballot < promised {
            // A competing leader is ahead: stand down and retry after a random backoff
            // unless its ballot decides first.
            entry.leader = None;
            self.leading = self.leading.saturating_sub(1);
            let attempts = entry.recovery_attempts;
            let backoff = self.backoff(attempts);
            self.set_deadline(txn, now.saturating_add(backoff));
        }
    }

    // ----- Decision ------------------------------------------------------------------

    /// Learns the outcome: applies it if this node is an RM that voted, persists it (which
    /// also retires the acceptor state), answers whoever asked.
    ///
    /// `from` is whoever made the outcome known (a Decision's sender, the acceptor whose
    /// Phase2b completed a quorum, or this node): an outcome that contradicts what this
    /// node knows is rejected and counted, never applied.
    fn decide(&mut self, now: Time, from: NodeId, txn: TxnId, outcome: Outcome) {
        let me = self.config.id;
        if let Some(kept) = self.outcomes.get(&txn) {
            if kept.outcome != outcome {
                let known = kept.outcome;
                let reason = RejectReason::ContradictsKnownOutcome {
                    txn,
                    outcome,
                    known,
                };
                self.reject(from, reason);
            }
            return;
        }
        let voted_aborted = self
            .txns
            .get(&txn)
            .is_some_and(|entry| entry.rm.as_ref().is_some_and(|rm| rm.vote == Vote::Aborted));
        if outcome == Outcome::Commit && voted_aborted {
            // PaxosCommit.tla: chosen Prepared implies the RM prepared. Whoever says
            // Commit is wrong (or lying); the RM keeps waiting for the real outcome.
            return self.reject(from, RejectReason::ContradictsOwnVote { txn });
        }
        let Some(entry) = self.txns.remove(&txn) else {
            return;
        };
        self.deadlines.remove(&(entry.deadline, txn));
        if entry.leader.is_some() {
            self.leading = self.leading.saturating_sub(1);
        }
        let descriptor = entry.descriptor;
        let mut reads = None;
        if let Some(rm) = entry.rm {
            self.prepared_bytes = self.prepared_bytes.saturating_sub(reserved_bytes(&rm));
            if outcome == Outcome::Commit {
                // Checked above: this RM voted Prepared.
                self.store.apply(&rm.writes);
            }
            let keys = rm
                .locks
                .iter()
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>();
            self.release_locks(now, txn, keys);
            reads = rm.reads;
        }
        self.staged_records.push(Record::Outcome { txn, outcome });
        self.events.push_back(Event::Decided {
            txn,
            outcome,
            as_participant: descriptor.is_participant(me),
        });
        for waiter in entry.waiters {
            self.send(
                waiter,
                Message::Decision {
                    txn,
                    outcome,
                    reads: reads.clone(),
                },
            );
        }
        // Acceptors that are not participants learn nothing from Phase2b: the first
        // participant tells them, so they can retire their state.
        if descriptor.participants.first() == Some(&me) {
            // Thrifty Prepared votes reach only the first F+1 acceptors; any other
            // acceptor that holds state (after a retry or recovery) times out and learns
            // by asking. An Aborted vote goes to all 2F+1, so Abort is told to all too
            // (otherwise the last acceptor kept its state until a recovery round).
            let reached = if self.config.thrifty && outcome == Outcome::Commit {
                descriptor.quorum()
            } else {
                descriptor.acceptors.len()
            };
            for acceptor in descriptor.acceptors.iter().take(reached).copied() {
                if !descriptor.is_participant(acceptor) {
                    self.send(
                        acceptor,
                        Message::Decision {
                            txn,
                            outcome,
                            reads: None,
                        },
                    );
                }
            }
        }
        self.keep_outcome(txn, outcome, reads);
    }

    fn keep_outcome(&mut self, txn: TxnId, outcome: Outcome, reads: Option<Vec<ReadResult>>) {
        self.early_phase2b.remove(&txn);
        if self.outcomes.insert(txn, Kept { outcome, reads }).is_none() {
            self.outcome_order.push_back(txn);
        }
        while self.outcome_order.len() > self.config.limits.outcomes_kept_max {
            if let Some(oldest) = self.outcome_order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }

    /// If `txn` is decided here, tells `asker` and returns true.
    fn answer_if_decided(&mut self, asker: NodeId, txn: TxnId) -> bool {
        let Some(kept) = self.outcomes.get(&txn) else {
            return false;
        };
        if asker != self.config.id {
            let decision = Message::Decision {
                txn,
                outcome: kept.outcome,
                reads: kept.reads.clone(),
            };
            self.send(asker, decision);
        }
        true
    }

    // ----- Plumbing ------------------------------------------------------------------

    fn check_descriptor(&self, descriptor: &TxnDescriptor) -> Result<(), String> {
        descriptor.validate().map_err(str::to_string)?;
        let cluster = &self.config.cluster;
        if descriptor.f != cluster.f() {
            return Err(format!(
                "F={} but the cluster runs F={}",
                descriptor.f,
                cluster.f()
            ));
        }
        let strangers = descriptor
            .participants
            .iter()
            .chain(&descriptor.acceptors)
            .find(|node| !cluster.is_member(**node));
        if let Some(stranger) = strangers {
            return Err(format!("{stranger} is not a data node"));
        }
        if let Some(entry) = self.txns.get(&descriptor.txn) {
            if entry.descriptor != *descriptor {
                return Err(DESCRIPTOR_DIFFERS.to_string());
            }
        }
        Ok(())
    }

    /// Admits a message that may create state for a new transaction (bounded).
    fn admit(&mut self, from: NodeId, descriptor: &TxnDescriptor) -> bool {
        if self.txns.contains_key(&descriptor.txn)
            || self.txns.len() < self.config.limits.open_transactions_max
        {
            return true;
        }
        let open = self.txns.len() as u64;
        self.reject(from, RejectReason::Overloaded { open });
        false
    }

    fn entry(&mut self, now: Time, descriptor: &TxnDescriptor) -> &mut TxnEntry {
        let txn = descriptor.txn;
        if !self.txns.contains_key(&txn) {
            let mut entry = TxnEntry::new(descriptor.clone(), now);
            for (from, rm, ballot, value) in self.early_phase2b.remove(&txn).unwrap_or_default() {
                entry.tally.record(descriptor, from, rm, ballot, value);
            }
            self.txns.insert(txn, entry);
            let participant = descriptor.is_participant(self.config.id);
            let base = self.config.decision_timeout;
            let wait = self.jitter(if participant {
                base
            } else {
                base.saturating_mul(2)
            });
            self.set_deadline(txn, now.saturating_add(wait));
        }
        // Inserted just above if it was missing.
        self.txns.get_mut(&txn).expect("entry exists")
    }

    fn set_deadline(&mut self, txn: TxnId, deadline: Time) {
        if let Some(entry) = self.txns.get_mut(&txn) {
            self.deadlines.remove(&(entry.deadline, txn));
            entry.deadline = deadline;
            self.deadlines.insert((deadline, txn));
        }
    }

    /// `base` stretched by a random factor in [1, 1.5): desynchronizes would-be leaders.
    fn jitter(&mut self, base: Duration) -> Duration {
        let micros = u64::try_from(base.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(micros.saturating_add(self.rng.below(micros / 2 + 1)))
    }

    /// Randomized exponential backoff for recovery attempt `attempts`.
    fn backoff(&mut self, attempts: u32) -> Duration {
        let base = self.config.decision_timeout;
        let grown = base.saturating_mul(1 << attempts.min(8));
        let capped = grown.min(self.config.recovery_backoff_max.max(base));
        let micros = capped.as_micros() as u64;
        Duration::from_micros(micros / 2 + self.rng.below(micros / 2 + 1))
    }

    fn reject(&mut self, from: NodeId, reason: RejectReason) {
        let count = self.rejected.entry(reason.kind()).or_default();
        *count = count.saturating_add(1);
        self.events.push_back(Event::Rejected { from, reason });
    }

    fn send(&mut self, to: NodeId, message: Message) {
        if to != self.config.id {
            self.staged_sends.entry(to).or_default().push(message);
        } else if matches!(message, Message::Phase2b { .. } | Message::Decision { .. }) {
            // A node learning from itself obeys persist-before-send too: its own acceptor's
            // Phase2b counts toward a quorum only once that acceptance is durable, or a crash
            // could un-choose a value this node already acted on.
            self.staged_local_durable.push(message);
        } else {
            // Proposals and promises between roles of one node: their effects reach others
            // only through sends that wait for the same log, so they may go at once.
            self.local.push_back(message);
        }
    }

    /// Turns what this step staged into outputs: one Persist for its records, and sends
    /// held back until every Persist issued so far is durable.
    fn flush(&mut self) {
        if !self.staged_records.is_empty() {
            self.issued_token += 1;
            let records = core::mem::take(&mut self.staged_records);
            self.outputs.push_back(Output::Persist {
                token: self.issued_token,
                records,
            });
        }
        let durable = self.persisted_token >= self.issued_token;
        for message in core::mem::take(&mut self.staged_local_durable) {
            if durable {
                self.local.push_back(message);
            } else {
                self.held
                    .push_back((self.issued_token, Held::Local(message)));
            }
        }
        for (to, messages) in core::mem::take(&mut self.staged_sends) {
            let envelope = Envelope { to, messages };
            if durable {
                self.outputs.push_back(Output::Send(envelope));
            } else {
                self.held
                    .push_back((self.issued_token, Held::Remote(envelope)));
            }
        }
    }
}

/// Bytes a vote's writes may add to the store when it commits: every write counted whole
/// (an upper bound that depends on the vote alone, so live and replayed nodes agree).
fn reserved_bytes(rm: &RmPart) -> u64 {
    if rm.vote != Vote::Prepared {
        return 0;
    }
    rm.writes
        .iter()
        .filter_map(|(key, value)| Some(crate::store::row_bytes(key, value.as_ref()?)))
        .fold(0, u64::saturating_add)
}

/// The problem of a descriptor that differs from the one already known for its transaction.
const DESCRIPTOR_DIFFERS: &str = "descriptor differs from the one already known";

fn bad_descriptor(message: MessageKind, problem: String) -> RejectReason {
    RejectReason::BadDescriptor { message, problem }
}

pub(crate) fn malformed(message: MessageKind, problem: &'static str) -> RejectReason {
    RejectReason::Malformed { message, problem }
}

impl TxnEntry {
    fn new(descriptor: TxnDescriptor, deadline: Time) -> TxnEntry {
        TxnEntry {
            descriptor,
            rm: None,
            acceptor: BTreeMap::new(),
            tally: Tally::default(),
            leader: None,
            deadline,
            recovery_attempts: 0,
            waiters: BTreeSet::new(),
        }
    }
}
