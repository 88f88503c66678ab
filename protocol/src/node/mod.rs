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
//!
//! # Files
//! This file holds the node's state, its inputs and outputs, and the dispatch of each
//! message to its role; each role's handlers live in their own file as more `impl Node`:
//! `rm` (Prepare and the vote), `execution` and `deadlock` (interactive execution),
//! `operation` (the one interpreter of operations both run),
//! `acceptor` (Phase1a/2a), `decision` (learner and decision), `leader` (recovery leader),
//! `recovery` (log replay, restart, checkpoint), `outbox` (persist before send),
//! `suspicion`, `fence` and `drain` (failure detector, acceptor quarantine, draining), and
//! `config` (configuration and limits).
//!
//! At about 700 lines this is the longest role-free file on purpose: the `Node` struct's
//! fields (each documented with its bound), `handle` and the dispatch table belong
//! together, so a reader sees every piece of state and every entry point in one place.

use crate::acceptor::AcceptorState;
use crate::access::AccessPolicy;
use crate::learner::Tally;
use crate::message::{
    AbortReason, Envelope, InstanceReport, Message, MessageKind, Operation, ReadResult,
};
use crate::record::{LockMode, Record};
use crate::reject::{DeadlockMessageProblem, RejectKind, RejectReason, ReplayProblem};
use crate::rng::Rng;
use crate::store::{LockTable, Store};
use crate::types::{
    due_by, Ballot, DescriptorProblem, Key, NodeId, Outcome, Time, TxnDescriptor, TxnId, Value,
    Vote,
};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod acceptor;
mod config;
mod deadlock;
mod decision;
mod drain;
mod execution;
mod fence;
mod leader;
mod operation;
mod outbox;
mod recovery;
mod resource;
mod rm;
mod suspicion;

use crate::detector::FailureDetector;
pub use config::{DeadlockPolicy, Limits, NodeConfig};
use outbox::Held;
pub use resource::{ResourceKind, ResourceRequest, ResourceStatus};

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
    /// The external resource's answer to [`ResourceRequest::Prepare`]: `Ok` = prepared
    /// (the tentative change is durable at the resource), `Err` = refused, and why.
    /// Answers for a transaction not waiting for one (duplicates, late ones) are ignored.
    ResourceVoted {
        /// The transaction.
        txn: TxnId,
        /// The resource's vote.
        vote: Result<(), AbortReason>,
    },
    /// The external resource acknowledged [`ResourceRequest::Finish`].
    ResourceDone {
        /// The transaction.
        txn: TxnId,
        /// The outcome it applied.
        outcome: Outcome,
    },
    /// The external resource's answer to [`ResourceRequest::ListPrepared`].
    ResourceHolds {
        /// Every transaction it holds prepared.
        prepared: Vec<TxnId>,
    },
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
    /// Ask the external resource (only with [`ResourceKind::External`]); everything the
    /// request depends on is durable.
    Resource(ResourceRequest),
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

impl RmPart {
    /// An Aborted vote for `reason`: nothing written, locked or read.
    fn aborted(reason: AbortReason, client_has_reads: bool) -> RmPart {
        RmPart {
            vote: Vote::Aborted,
            reason: Some(reason),
            writes: Vec::new(),
            locks: Vec::new(),
            reads: Some(Vec::new()),
            client_has_reads,
        }
    }
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
    /// True while this RM waits for its external resource's vote (see `resource`).
    resource_preparing: bool,
    /// When this node first heard of the transaction (since its start).
    since: Time,
}

/// What the node keeps after a decision: the outcome and, at an RM, its read results and
/// the reason it voted Aborted (repeated to a client that asks: its notice may be lost).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Kept {
    outcome: Outcome,
    reads: Option<Vec<ReadResult>>,
    reason: Option<AbortReason>,
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
    /// Interactive transactions their client aborted here, remembered (bounded, for the
    /// idle timeout) so an Execute that arrives after the abort opens nothing.
    ended_executions: execution::Ended,
    probes_seen: BTreeMap<(TxnId, TxnId), Time>,
    pins: BTreeMap<TxnId, (TxnId, Time)>,
    detector: Option<FailureDetector>,
    suspected: BTreeSet<NodeId>,
    draining: bool,
    probes_seen_order: VecDeque<(TxnId, TxnId)>,
    staged_records: Vec<outbox::StagedRecord>,
    staged_sends: BTreeMap<NodeId, Vec<Message>>,
    local: VecDeque<Message>,
    staged_local_durable: Vec<Message>,
    issued_token: PersistToken,
    /// The last issued token whose records gate sends (see `outbox::Gates`): what a send
    /// staged now waits for.
    gating_token: PersistToken,
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
    /// What is asked of, and owed to, an external resource (see `resource`).
    resource: resource::ResourceState,
    /// One-phase transactions decided here whose write is not durable yet: their
    /// `Decided` event waits for it (see `rm::decide_one_phase`). Each leaves when its
    /// Decision to this node is released, so it holds at most the transactions of the
    /// persists in flight.
    one_phase_unannounced: BTreeSet<TxnId>,
}

/// Most self-addressed messages processed in one `handle` call (a loop bound).
const LOCAL_MESSAGES_MAX: usize = 1 << 16;

impl Node {
    /// A node with empty state.
    pub fn new(config: NodeConfig) -> Node {
        // The driver's own configuration, never a peer's word.
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
            ended_executions: execution::Ended::default(),
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
            gating_token: 0,
            persisted_token: 0,
            held: VecDeque::new(),
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            rejected: BTreeMap::new(),
            access: None,
            leading: 0,
            prepared_bytes: 0,
            quarantine: None,
            resource: resource::ResourceState::default(),
            one_phase_unannounced: BTreeSet::new(),
        };
        node.start_detector(Time::ZERO, 0);
        node
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
        let resource = self.resource_timeout();
        [recovery, execution, heartbeat, fence, resource]
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
            Input::ResourceVoted { txn, vote } => self.on_resource_voted(now, txn, vote),
            Input::ResourceDone { txn, outcome } => self.on_resource_done(txn, outcome),
            Input::ResourceHolds { prepared } => self.on_resource_holds(prepared),
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
                // Bounded by the work the inputs brought (each local message is a
                // bounded fan-out of one), so no peer's message can reach this: only a
                // loop between this node's own roles, an internal bug.
                assert!(
                    processed <= local_messages_max,
                    "self-addressed message loop"
                );
                let me = self.config.id;
                self.on_message(now, me, message);
            }
            self.ask_resource_due(now);
            self.flush();
            if self.local.is_empty() {
                break;
            }
        }
    }

    fn on_timeout(&mut self, now: Time) {
        let due = due_by(&self.deadlines, now);
        for txn in due {
            match self.service_vote_grace(now, txn) {
                Some(next_look) => {
                    self.set_deadline(txn, next_look);
                    self.ask_participants_for_the_decision(txn);
                }
                None => self.start_recovery(now, txn),
            }
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

    // ----- Plumbing ------------------------------------------------------------------

    fn check_descriptor(&self, descriptor: &TxnDescriptor) -> Result<(), DescriptorProblem> {
        descriptor.validate()?;
        let cluster = &self.config.cluster;
        if descriptor.f != cluster.f() {
            return Err(DescriptorProblem::FaultToleranceDiffers {
                descriptor: descriptor.f,
                cluster: cluster.f(),
            });
        }
        let strangers = descriptor
            .participants
            .iter()
            .chain(&descriptor.acceptors)
            .find(|node| !cluster.is_member(**node));
        if let Some(stranger) = strangers {
            return Err(DescriptorProblem::NotADataNode { node: *stranger });
        }
        if let Some(entry) = self.txns.get(&descriptor.txn) {
            if entry.descriptor != *descriptor {
                return Err(DescriptorProblem::DiffersFromKnown);
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

    /// A service's prepare may wait for its own locks or a slow call: a transaction whose
    /// only missing votes are those of service (namespace-only) members that nobody
    /// suspects is not recovered (which would abort it) until `service_vote_timeout` after
    /// this node first heard of it. Returns when to look again, or `None` to recover now.
    /// A service node that crashes is suspected and recovered at once, as any RM.
    pub(super) fn service_vote_grace(&self, now: Time, txn: TxnId) -> Option<Time> {
        let entry = self.txns.get(&txn)?;
        if entry.leader.is_some() || entry.recovery_attempts > 0 {
            return None;
        }
        let me = self.config.id;
        let mut missing = false;
        for rm in &entry.descriptor.participants {
            let accepted_here = entry
                .acceptor
                .get(rm)
                .is_some_and(|state| state.accepted_value.is_some());
            if entry.tally.heard_from(*rm) || accepted_here || (*rm == me && entry.rm.is_some()) {
                continue;
            }
            if !self.config.cluster.is_namespace_only(*rm) || self.suspected.contains(rm) {
                return None;
            }
            if *rm == me && !entry.resource_preparing {
                // The missing vote is this node's own and its resource is not preparing
                // it (it restarted and rolled the prepare back, or never got it): no vote
                // is coming, so waiting would only hold the others' locks.
                return None;
            }
            missing = true;
        }
        let until = entry.since.saturating_add(self.config.service_vote_timeout);
        if !missing || now >= until {
            return None;
        }
        Some(until.min(now.saturating_add(self.config.decision_timeout)))
    }

    /// During the grace, the votes this node misses may have been cast and the decision
    /// made without this node hearing it (a lost Phase2b or Decision): it asks the other
    /// participants with a `Resolve`, which one that decided answers with the Decision and
    /// one that did not takes as a request to tell it later (starting no recovery while
    /// the grace holds there too).
    fn ask_participants_for_the_decision(&mut self, txn: TxnId) {
        let Some(entry) = self.txns.get(&txn) else {
            return;
        };
        let me = self.config.id;
        let descriptor = entry.descriptor.clone();
        for participant in descriptor.participants.clone() {
            if participant != me {
                self.send(
                    participant,
                    Message::Resolve {
                        descriptor: descriptor.clone(),
                    },
                );
            }
        }
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
        // `below`'s bound is at least 1 (`micros / 2 + 1` cannot overflow): its assert is
        // unreachable, here and in `backoff`, whatever a peer sends.
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

fn bad_descriptor(message: MessageKind, problem: DescriptorProblem) -> RejectReason {
    RejectReason::BadDescriptor { message, problem }
}

pub(crate) fn malformed(message: MessageKind, problem: DeadlockMessageProblem) -> RejectReason {
    RejectReason::Malformed { message, problem }
}

impl TxnEntry {
    fn new(descriptor: TxnDescriptor, now: Time) -> TxnEntry {
        TxnEntry {
            descriptor,
            rm: None,
            acceptor: BTreeMap::new(),
            tally: Tally::default(),
            leader: None,
            deadline: now,
            recovery_attempts: 0,
            waiters: BTreeSet::new(),
            resource_preparing: false,
            since: now,
        }
    }
}
