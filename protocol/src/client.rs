//! The client side of a transaction: picks participants and acceptors, sends Prepare, and
//! learns the outcome from Phase2b messages, as a sans-IO state machine.
//!
//! The simulator and the client library drive the same code. Calling order: `begin` or
//! `handle`, then drain `poll_output` (send each envelope) and `poll_event`, and arm a timer
//! for `poll_timeout`. A client keeps no durable state: if it dies, the data nodes finish
//! its transactions through recovery.

use crate::cluster::Cluster;
use crate::detector::{DetectorConfig, FailureDetector, Heartbeat, Role};
use crate::learner::Tally;
use crate::message::{AbortReason, Envelope, Message, Operation, ReadResult, Refusal};
use crate::node::Input;
use crate::rng::Rng;
use crate::types::{Key, NodeId, Outcome, Time, TxnDescriptor, TxnId, Vote};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Configuration of a client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientConfig {
    /// This client's id (its incarnation: never reused after a restart).
    pub id: NodeId,
    /// The cluster.
    pub cluster: Cluster,
    /// PRNG seed (retry jitter).
    pub seed: u64,
    /// First wait for an outcome before retrying Prepare and then asking for recovery.
    pub retry_timeout: Duration,
    /// Cap of the exponential retry backoff.
    pub retry_timeout_max: Duration,
    /// Retries before the client reports the outcome as unknown.
    pub retries_max: u32,
    /// Most operations in one transaction.
    pub operations_max: usize,
    /// Most transactions in flight at once.
    pub in_flight_max: usize,
    /// Gossip heartbeats, so data nodes can suspect this client when it dies and the client
    /// learns which data nodes are suspected (`None`: no heartbeats).
    pub detector: Option<DetectorConfig>,
}

impl ClientConfig {
    /// A configuration with default timeouts and limits.
    pub fn new(id: NodeId, cluster: Cluster, seed: u64) -> ClientConfig {
        ClientConfig {
            id,
            cluster,
            seed,
            retry_timeout: Duration::from_millis(500),
            retry_timeout_max: Duration::from_secs(4),
            retries_max: 100,
            operations_max: 4096,
            in_flight_max: 10_000,
            detector: Some(DetectorConfig::default()),
        }
    }
}

/// Why a transaction could not begin.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BeginError {
    /// No operations.
    #[error("a transaction needs at least one operation")]
    Empty,
    /// Too many operations.
    #[error("{count} operations exceed the limit of {limit}")]
    TooManyOperations {
        /// Operations given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many transactions in flight (backpressure).
    #[error("{0} transactions already in flight")]
    TooManyInFlight(usize),
    /// A data node the transaction needs is suspected to have failed: fail fast rather
    /// than lock rows on the others and wait.
    #[error("{node} holds keys of this transaction and is suspected to have failed")]
    ParticipantSuspected {
        /// The suspected data node.
        node: NodeId,
    },
    /// A data node the transaction needs was drained and left the cluster (`dtx drain`):
    /// its keys are unavailable until it is started again.
    #[error("{node} holds keys of this transaction and has left the cluster (drained); start it again to use its keys")]
    ParticipantLeft {
        /// The data node that left.
        node: NodeId,
    },
}

/// Why a data node cannot take part in a new transaction.
enum Unavailable {
    /// It drained and left.
    Left,
    /// It is suspected to have failed.
    Suspected,
}

/// How a transaction ended, as far as the client could learn.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TxnResult {
    /// Committed. `reads` are in operation order per participant.
    Committed {
        /// Read results.
        reads: Vec<ReadResult>,
        /// True if a participant crashed after deciding and its read results are lost.
        reads_lost: bool,
    },
    /// Aborted, with the reason when an RM gave one.
    Aborted {
        /// Why.
        reason: Option<AbortReason>,
    },
    /// The client gave up before learning the outcome (it may be either).
    Unknown,
    /// A data node's runtime refused to serve this client ([`Message::Refused`]): the
    /// transaction did not commit and the client stopped it at once, without retries.
    ///
    /// Reported at once only when the refused message was the first Prepare that node got
    /// for the transaction (no retry sent yet, nothing executed there): that node never
    /// voted, and since the client sends it no later Prepare it never will, so a recovery
    /// leader can only find no vote for its instance and choose Aborted: the transaction
    /// can only abort. Otherwise (the node may have taken an earlier message) the client
    /// stops sending that node Prepares, keeps learning the outcome from the others, and
    /// reports this once it is Abort (a Commit is reported as committed).
    Refused(Refusal),
}

/// A finished transaction, reported by `poll_event`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Finished {
    /// The transaction.
    pub txn: TxnId,
    /// Its result.
    pub result: TxnResult,
    /// When it began.
    pub started: Time,
    /// When the client learned the result.
    pub finished: Time,
}

/// Why an interactive operation or commit could not be issued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecuteError {
    /// No interactive transaction with this id is executing (it finished or never began).
    #[error("transaction {0} is not executing")]
    NotExecuting(TxnId),
    /// An operation on the same RM is still outstanding: an RM runs one at a time.
    #[error("an operation of {txn} at {node} is still outstanding")]
    Busy {
        /// The transaction.
        txn: TxnId,
        /// The RM.
        node: NodeId,
    },
    /// Too many operations.
    #[error("{count} operations exceed the limit of {limit}")]
    TooManyOperations {
        /// Operations issued.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The key's owner is suspected to have failed.
    #[error("{node} owns the key and is suspected to have failed")]
    OwnerSuspected {
        /// The suspected data node.
        node: NodeId,
    },
    /// The key's owner was drained and left the cluster.
    #[error(
        "{node} owns the key and has left the cluster (drained); start it again to use its keys"
    )]
    OwnerLeft {
        /// The data node that left.
        node: NodeId,
    },
    /// Only writes can be buffered until commit (a read must run to return its value).
    #[error("only writes can be buffered until commit, not a read of {key}")]
    ReadAtCommit {
        /// The read's key.
        key: Key,
    },
    /// A data node refused to serve this client for this transaction, which has ended
    /// (as [`TxnResult::Refused`]).
    #[error("{0}")]
    Refused(Refusal),
}

/// Refused transactions remembered, so that a later `execute` or `commit` of one says
/// why it is over rather than that it is unknown.
pub const REFUSED_REMEMBERED_MAX: usize = 1024;

/// An interactive operation that completed, reported by `poll_executed`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Executed {
    /// The transaction.
    pub txn: TxnId,
    /// The operation.
    pub operation: Operation,
    /// A read's result (`None` for writes).
    pub read: Option<ReadResult>,
}

/// Progress of an interactive transaction at one RM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct RmProgress {
    sent: u32,
    outstanding: Option<(u32, Operation)>,
}

/// An interactive transaction in its execution phase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Interactive {
    start_time: Time,
    rms: BTreeMap<NodeId, RmProgress>,
    reads: Vec<ReadResult>,
    operations: usize,
    retries: u32,
    deadline: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientTxn {
    descriptor: TxnDescriptor,
    /// The Prepare (or PrepareExecuted) for each participant, kept for retries.
    prepares: BTreeMap<NodeId, Message>,
    readers: BTreeSet<NodeId>,
    /// Reads already done in an interactive execution phase.
    executed_reads: Vec<ReadResult>,
    tally: Tally,
    reads: BTreeMap<NodeId, Vec<ReadResult>>,
    voted: BTreeSet<NodeId>,
    outcome: Option<Outcome>,
    reads_lost: bool,
    reason: Option<AbortReason>,
    /// A data node refused a message of this transaction: the first refusal.
    refused: Option<Refusal>,
    /// Nodes that refused: they get no more Prepares or Resolves of it.
    refused_by: BTreeSet<NodeId>,
    retries: u32,
    deadline: Time,
    started: Time,
}

/// A transaction client. See the module docs for the calling order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    config: ClientConfig,
    rng: Rng,
    next_sequence: u64,
    txns: BTreeMap<TxnId, ClientTxn>,
    deadlines: BTreeSet<(Time, TxnId)>,
    suspected: BTreeSet<NodeId>,
    interactive: BTreeMap<TxnId, Interactive>,
    staged: BTreeMap<NodeId, Vec<Message>>,
    outputs: VecDeque<Envelope>,
    events: VecDeque<Finished>,
    executed: VecDeque<Executed>,
    detector: Option<FailureDetector>,
    detected: BTreeSet<NodeId>,
    /// Data nodes whose heartbeat says they are draining: kept out of new acceptor sets.
    draining: BTreeSet<NodeId>,
    /// Data nodes whose heartbeat says they drained and left: out of acceptor sets, and a
    /// transaction on their keys fails fast.
    left: BTreeSet<NodeId>,
    /// Data nodes whose heartbeat says they are in acceptor quarantine (rejoining after a
    /// wiped data directory): kept out of new acceptor sets, as draining ones.
    quarantined: BTreeSet<NodeId>,
    /// Interactive transactions ended by a refusal, oldest first (bounded by
    /// [`REFUSED_REMEMBERED_MAX`]).
    refused: BTreeMap<TxnId, Refusal>,
    refused_order: VecDeque<TxnId>,
}

impl Client {
    /// A client with nothing in flight.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            rng: Rng::new(config.seed ^ config.id.0),
            config: config.clone(),
            next_sequence: 1,
            txns: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            suspected: BTreeSet::new(),
            interactive: BTreeMap::new(),
            staged: BTreeMap::new(),
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            executed: VecDeque::new(),
            detector: config.detector.clone().map(|detector| {
                FailureDetector::new(
                    detector,
                    config.id,
                    Role::Client,
                    0,
                    config.seed,
                    Time::ZERO,
                )
            }),
            detected: BTreeSet::new(),
            draining: BTreeSet::new(),
            left: BTreeSet::new(),
            quarantined: BTreeSet::new(),
            refused: BTreeMap::new(),
            refused_order: VecDeque::new(),
        }
    }

    /// This client's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The cluster this client talks to.
    pub fn cluster(&self) -> &Cluster {
        &self.config.cluster
    }

    /// Replaces the membership with `cluster` (members joined at run time). Transactions
    /// in flight keep their descriptors.
    pub fn set_cluster(&mut self, cluster: Cluster) {
        self.config.cluster = cluster;
    }

    /// Nodes to keep out of new acceptor sets (from a failure detector).
    pub fn set_suspected(&mut self, suspected: BTreeSet<NodeId>) {
        self.suspected = suspected;
    }

    /// The descriptor of an in-flight transaction.
    pub fn descriptor(&self, txn: TxnId) -> Option<&TxnDescriptor> {
        self.txns.get(&txn).map(|state| &state.descriptor)
    }

    /// Transactions in flight (executing or committing).
    pub fn in_flight(&self) -> usize {
        self.txns.len() + self.interactive.len()
    }

    /// Begins an interactive transaction: operations follow one by one with `execute`
    /// (each runs at its key's owner under strict two-phase locking, waiting for locks),
    /// then `commit` or `abort`.
    pub fn begin_interactive(&mut self, now: Time) -> Result<TxnId, BeginError> {
        if self.in_flight() >= self.config.in_flight_max {
            return Err(BeginError::TooManyInFlight(self.in_flight()));
        }
        let txn = TxnId {
            client: self.config.id,
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        self.interactive.insert(
            txn,
            Interactive {
                start_time: now,
                rms: BTreeMap::new(),
                reads: Vec::new(),
                operations: 0,
                retries: 0,
                deadline: Time(u64::MAX),
            },
        );
        Ok(txn)
    }

    /// Sends one operation of an interactive transaction to its key's owner. Operations on
    /// different RMs may be outstanding together; on one RM, one at a time. The result
    /// comes through `poll_executed`; a failure aborts the transaction (`poll_event`).
    pub fn execute(
        &mut self,
        now: Time,
        txn: TxnId,
        operation: Operation,
    ) -> Result<(), ExecuteError> {
        let owner = self.live_owner(&operation)?;
        let operations_max = self.config.operations_max;
        let retry_timeout = self.config.retry_timeout;
        let not_executing = self.not_executing(txn);
        let state = self.interactive.get_mut(&txn).ok_or(not_executing)?;
        if state.operations >= operations_max {
            return Err(ExecuteError::TooManyOperations {
                count: state.operations + 1,
                limit: operations_max,
            });
        }
        let progress = state.rms.entry(owner).or_default();
        if progress.outstanding.is_some() {
            return Err(ExecuteError::Busy { txn, node: owner });
        }
        let sequence = progress.sent;
        progress.sent += 1;
        progress.outstanding = Some((sequence, operation.clone()));
        state.operations += 1;
        let start_time = state.start_time;
        if state.deadline == Time(u64::MAX) {
            state.retries = 0;
            self.set_interactive_deadline(txn, now.saturating_add(retry_timeout));
        }
        self.stage(
            owner,
            Message::Execute {
                txn,
                start_time,
                sequence,
                operation,
            },
        );
        self.flush();
        Ok(())
    }

    /// The owner of `operation`'s key, unless it left or is suspected to have failed.
    fn live_owner(&self, operation: &Operation) -> Result<NodeId, ExecuteError> {
        let owner = self.config.cluster.owner(operation.key());
        match self.unavailable(owner) {
            Some(Unavailable::Left) => Err(ExecuteError::OwnerLeft { node: owner }),
            Some(Unavailable::Suspected) => Err(ExecuteError::OwnerSuspected { node: owner }),
            None => Ok(owner),
        }
    }

    /// Why data node `node` cannot take part in a new transaction, if it cannot.
    fn unavailable(&self, node: NodeId) -> Option<Unavailable> {
        if self.left.contains(&node) {
            Some(Unavailable::Left)
        } else if self.suspected.contains(&node) || self.detected.contains(&node) {
            Some(Unavailable::Suspected)
        } else {
            None
        }
    }

    /// Data nodes not to choose as acceptors of a new transaction: suspected (told or
    /// detected), draining, in acceptor quarantine, or left.
    fn acceptors_to_avoid(&self) -> BTreeSet<NodeId> {
        [
            &self.suspected,
            &self.detected,
            &self.draining,
            &self.quarantined,
            &self.left,
        ]
        .into_iter()
        .flatten()
        .copied()
        .collect()
    }

    /// Commits an interactive transaction through Paxos Commit; every operation must have
    /// completed. The outcome comes through `poll_event`.
    pub fn commit(&mut self, now: Time, txn: TxnId) -> Result<(), ExecuteError> {
        self.commit_with(now, txn, Vec::new())
    }

    /// Commits an interactive transaction after adding `writes` (buffered here until
    /// commit): each travels in its owner's prepare and runs there before the vote,
    /// which saves the round trip of executing it first. An owner that executed nothing
    /// gets a one-shot Prepare. A buffered write whose lock is not free at prepare
    /// aborts the transaction (prepare never waits); reads cannot be buffered.
    pub fn commit_with(
        &mut self,
        now: Time,
        txn: TxnId,
        writes: Vec<Operation>,
    ) -> Result<(), ExecuteError> {
        let state = self
            .interactive
            .get(&txn)
            .ok_or_else(|| self.not_executing(txn))?;
        if let Some((node, _)) = state
            .rms
            .iter()
            .find(|(_, progress)| progress.outstanding.is_some())
        {
            return Err(ExecuteError::Busy { txn, node: *node });
        }
        if let Some(read) = writes.iter().find(|operation| !operation.is_write()) {
            return Err(ExecuteError::ReadAtCommit {
                key: read.key().clone(),
            });
        }
        let count = state.operations + writes.len();
        if count > self.config.operations_max {
            return Err(ExecuteError::TooManyOperations {
                count,
                limit: self.config.operations_max,
            });
        }
        let mut buffered: BTreeMap<NodeId, Vec<Operation>> = BTreeMap::new();
        for operation in writes {
            buffered
                .entry(self.live_owner(&operation)?)
                .or_default()
                .push(operation);
        }
        let Some(state) = self.remove_interactive(txn) else {
            return Err(self.not_executing(txn));
        };
        if state.rms.is_empty() && buffered.is_empty() {
            self.events.push_back(Finished {
                txn,
                result: TxnResult::Committed {
                    reads: Vec::new(),
                    reads_lost: false,
                },
                started: state.start_time,
                finished: now,
            });
            return Ok(());
        }
        let participants: Vec<NodeId> = state
            .rms
            .keys()
            .chain(buffered.keys())
            .copied()
            .collect::<BTreeSet<NodeId>>()
            .into_iter()
            .collect();
        let acceptors =
            self.config
                .cluster
                .choose_acceptors(txn, &participants, &self.acceptors_to_avoid());
        let descriptor = TxnDescriptor {
            txn,
            participants,
            acceptors,
            f: self.config.cluster.f(),
            start_time: state.start_time,
        };
        let lock_point_passed = buffered.is_empty();
        let prepares = descriptor
            .participants
            .iter()
            .map(|rm| {
                let at_prepare = buffered.remove(rm).unwrap_or_default();
                let prepare = match state.rms.get(rm) {
                    Some(progress) => Message::PrepareExecuted {
                        descriptor: descriptor.clone(),
                        operations: progress.sent,
                        at_prepare,
                        lock_point_passed,
                    },
                    None => Message::Prepare {
                        descriptor: descriptor.clone(),
                        operations: at_prepare,
                    },
                };
                (*rm, prepare)
            })
            .collect();
        let deadline = now.saturating_add(self.config.retry_timeout);
        self.txns.insert(
            txn,
            ClientTxn {
                descriptor,
                prepares,
                readers: BTreeSet::new(),
                executed_reads: state.reads,
                tally: Tally::default(),
                reads: BTreeMap::new(),
                voted: BTreeSet::new(),
                outcome: None,
                reads_lost: false,
                reason: None,
                refused: None,
                refused_by: BTreeSet::new(),
                retries: 0,
                deadline,
                started: state.start_time,
            },
        );
        self.deadlines.insert((deadline, txn));
        self.send_prepares(txn, |_| true);
        self.flush();
        Ok(())
    }

    /// Abandons an interactive transaction before commit: its RMs release its locks.
    pub fn abort(&mut self, now: Time, txn: TxnId) -> Result<(), ExecuteError> {
        if !self.interactive.contains_key(&txn) {
            return Err(self.not_executing(txn));
        }
        self.abort_interactive(now, txn, AbortReason::ClientAborted);
        self.flush();
        Ok(())
    }

    /// The next completed interactive operation.
    pub fn poll_executed(&mut self) -> Option<Executed> {
        self.executed.pop_front()
    }

    fn remove_interactive(&mut self, txn: TxnId) -> Option<Interactive> {
        let state = self.interactive.remove(&txn)?;
        self.deadlines.remove(&(state.deadline, txn));
        Some(state)
    }

    fn set_interactive_deadline(&mut self, txn: TxnId, deadline: Time) {
        if let Some(state) = self.interactive.get_mut(&txn) {
            self.deadlines.remove(&(state.deadline, txn));
            state.deadline = deadline;
            self.deadlines.insert((deadline, txn));
        }
    }

    fn abort_interactive(&mut self, now: Time, txn: TxnId, reason: AbortReason) {
        let result = TxnResult::Aborted {
            reason: Some(reason),
        };
        self.end_interactive(now, txn, result);
    }

    /// Ends an interactive transaction before commit: its RMs release its locks.
    fn end_interactive(&mut self, now: Time, txn: TxnId, result: TxnResult) {
        let Some(state) = self.remove_interactive(txn) else {
            return;
        };
        for rm in state.rms.keys() {
            self.stage(*rm, Message::AbortExecution { txn });
        }
        self.events.push_back(Finished {
            txn,
            result,
            started: state.start_time,
            finished: now,
        });
    }

    /// Why `txn` cannot take another operation or commit: refused, or not executing.
    fn not_executing(&self, txn: TxnId) -> ExecuteError {
        match self.refused.get(&txn) {
            Some(refusal) => ExecuteError::Refused(*refusal),
            None => ExecuteError::NotExecuting(txn),
        }
    }

    /// A data node refused a message of `txn` (see [`TxnResult::Refused`]).
    fn on_refused(&mut self, now: Time, from: NodeId, txn: TxnId, refusal: Refusal) {
        if !self.config.cluster.is_member(from) {
            return;
        }
        let executing_there = self
            .interactive
            .get(&txn)
            .is_some_and(|state| state.rms.contains_key(&from));
        if executing_there {
            // Nothing is prepared before commit: ending it is always safe.
            self.remember_refused(txn, refusal);
            return self.end_interactive(now, txn, TxnResult::Refused(refusal));
        }
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        let first_prepare_refused = state.retries == 0
            && matches!(state.prepares.get(&from), Some(Message::Prepare { .. }));
        if first_prepare_refused {
            self.remember_refused(txn, refusal);
            return self.finish(now, txn, TxnResult::Refused(refusal));
        }
        state.refused.get_or_insert(refusal);
        state.refused_by.insert(from);
    }

    fn remember_refused(&mut self, txn: TxnId, refusal: Refusal) {
        if self.refused.insert(txn, refusal).is_none() {
            self.refused_order.push_back(txn);
        }
        while self.refused_order.len() > REFUSED_REMEMBERED_MAX {
            if let Some(oldest) = self.refused_order.pop_front() {
                self.refused.remove(&oldest);
            }
        }
    }

    fn on_interactive_message(&mut self, now: Time, from: NodeId, message: Message) {
        let txn = message.txn();
        match message {
            Message::Executed {
                sequence, result, ..
            } => {
                let Some(state) = self.interactive.get_mut(&txn) else {
                    return;
                };
                let Some(progress) = state.rms.get_mut(&from) else {
                    return;
                };
                let Some((outstanding, operation)) = progress.outstanding.clone() else {
                    return;
                };
                if outstanding != sequence {
                    return;
                }
                progress.outstanding = None;
                match result {
                    Ok(read) => {
                        if let Some(read) = &read {
                            state.reads.push(read.clone());
                        }
                        if state
                            .rms
                            .values()
                            .all(|progress| progress.outstanding.is_none())
                        {
                            self.set_interactive_deadline(txn, Time(u64::MAX));
                        }
                        self.executed.push_back(Executed {
                            txn,
                            operation,
                            read,
                        });
                    }
                    Err(reason) => self.abort_interactive(now, txn, reason),
                }
            }
            Message::ExecutionAborted { reason, .. } => {
                let known = self
                    .interactive
                    .get(&txn)
                    .is_some_and(|state| state.rms.contains_key(&from));
                if known {
                    self.abort_interactive(now, txn, reason);
                }
            }
            Message::Probe {
                initiator,
                target,
                path,
            } => {
                // Edge chasing through the client: only it knows where its transaction's
                // operations wait.
                let Some(state) = self.interactive.get(&target) else {
                    return;
                };
                let waiting_at: Vec<NodeId> = state
                    .rms
                    .iter()
                    .filter(|(_, progress)| progress.outstanding.is_some())
                    .map(|(node, _)| *node)
                    .collect();
                for node in waiting_at {
                    self.stage(
                        node,
                        Message::Probe {
                            initiator,
                            target,
                            path: path.clone(),
                        },
                    );
                }
            }
            _ => {}
        }
    }

    fn retry_interactive(&mut self, now: Time, txn: TxnId) {
        let retries_max = self.config.retries_max;
        let retry_timeout = self.config.retry_timeout;
        let Some(state) = self.interactive.get_mut(&txn) else {
            return;
        };
        state.retries += 1;
        if state.retries > retries_max {
            return self.abort_interactive(now, txn, AbortReason::ExecutionLost);
        }
        let start_time = state.start_time;
        let resend: Vec<(NodeId, u32, Operation)> = state
            .rms
            .iter()
            .filter_map(|(node, progress)| {
                let (sequence, operation) = progress.outstanding.clone()?;
                Some((*node, sequence, operation))
            })
            .collect();
        let wait = retry_timeout.saturating_mul(1 << state.retries.min(4));
        self.set_interactive_deadline(txn, now.saturating_add(wait));
        for (node, sequence, operation) in resend {
            self.stage(
                node,
                Message::Execute {
                    txn,
                    start_time,
                    sequence,
                    operation,
                },
            );
        }
    }

    /// Begins a one-shot transaction: routes each operation to its key's owner and sends
    /// every participant its Prepare.
    pub fn begin(&mut self, now: Time, operations: Vec<Operation>) -> Result<TxnId, BeginError> {
        if operations.is_empty() {
            return Err(BeginError::Empty);
        }
        if operations.len() > self.config.operations_max {
            return Err(BeginError::TooManyOperations {
                count: operations.len(),
                limit: self.config.operations_max,
            });
        }
        if self.txns.len() >= self.config.in_flight_max {
            return Err(BeginError::TooManyInFlight(self.txns.len()));
        }
        let txn = TxnId {
            client: self.config.id,
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        let cluster = &self.config.cluster;
        let mut by_owner: BTreeMap<NodeId, Vec<Operation>> = BTreeMap::new();
        for operation in operations {
            by_owner
                .entry(cluster.owner(operation.key()))
                .or_default()
                .push(operation);
        }
        let participants: Vec<NodeId> = by_owner.keys().copied().collect();
        let unavailable = participants.iter().find_map(|&node| {
            self.unavailable(node).map(|why| match why {
                Unavailable::Left => BeginError::ParticipantLeft { node },
                Unavailable::Suspected => BeginError::ParticipantSuspected { node },
            })
        });
        if let Some(error) = unavailable {
            self.next_sequence -= 1;
            return Err(error);
        }
        // A draining participant refuses the Prepare itself (with the reason); as a mere
        // acceptor it is left out.
        let acceptors = cluster.choose_acceptors(txn, &participants, &self.acceptors_to_avoid());
        let descriptor = TxnDescriptor {
            txn,
            participants,
            acceptors,
            f: cluster.f(),
            start_time: now,
        };
        let readers = by_owner
            .iter()
            .filter(|(_, operations)| {
                operations
                    .iter()
                    .any(|operation| matches!(operation, Operation::Read { .. }))
            })
            .map(|(owner, _)| *owner)
            .collect();
        let deadline = now.saturating_add(self.config.retry_timeout);
        let prepares = by_owner
            .into_iter()
            .map(|(rm, operations)| {
                let prepare = Message::Prepare {
                    descriptor: descriptor.clone(),
                    operations,
                };
                (rm, prepare)
            })
            .collect();
        self.txns.insert(
            txn,
            ClientTxn {
                descriptor: descriptor.clone(),
                prepares,
                readers,
                executed_reads: Vec::new(),
                tally: Tally::default(),
                reads: BTreeMap::new(),
                voted: BTreeSet::new(),
                outcome: None,
                reads_lost: false,
                reason: None,
                refused: None,
                refused_by: BTreeSet::new(),
                retries: 0,
                deadline,
                started: now,
            },
        );
        self.deadlines.insert((deadline, txn));
        self.send_prepares(txn, |_| true);
        self.flush();
        Ok(txn)
    }

    /// Feeds one input (messages or a timeout; `Persisted` does not apply to clients).
    pub fn handle(&mut self, now: Time, input: Input) {
        match input {
            Input::Receive { from, messages } => {
                for message in messages {
                    self.on_message(now, from, message);
                }
            }
            Input::Timeout => {
                self.on_timeout(now);
                self.heartbeat_round(now);
            }
            Input::Persisted { .. } => {}
        }
        self.flush();
    }

    /// The next envelope to send.
    pub fn poll_output(&mut self) -> Option<Envelope> {
        self.outputs.pop_front()
    }

    /// The next finished transaction.
    pub fn poll_event(&mut self) -> Option<Finished> {
        self.events.pop_front()
    }

    /// When `handle(now, Input::Timeout)` is next due.
    pub fn poll_timeout(&self) -> Option<Time> {
        let retry = self.deadlines.first().map(|(time, _)| *time);
        let heartbeat = self.detector.as_ref().map(FailureDetector::poll_timeout);
        [retry, heartbeat].into_iter().flatten().min()
    }

    /// Data nodes whose heartbeat says they are draining (left out of new acceptor sets).
    pub fn draining(&self) -> &BTreeSet<NodeId> {
        &self.draining
    }

    /// The client's failure detector (`None`: no heartbeats).
    pub fn detector(&self) -> Option<&FailureDetector> {
        self.detector.as_ref()
    }

    /// Data nodes whose heartbeat says they are in acceptor quarantine (left out of new
    /// acceptor sets).
    pub fn quarantined(&self) -> &BTreeSet<NodeId> {
        &self.quarantined
    }

    /// Data nodes whose heartbeat says they drained and left.
    pub fn left(&self) -> &BTreeSet<NodeId> {
        &self.left
    }

    /// Data nodes the client's failure detector suspects now.
    pub fn detected(&self) -> &BTreeSet<NodeId> {
        &self.detected
    }

    fn heartbeat_round(&mut self, now: Time) {
        let members: Vec<NodeId> = self
            .config
            .cluster
            .members()
            .iter()
            .map(|member| member.id)
            .collect();
        let Some(detector) = self.detector.as_mut() else {
            return;
        };
        self.detected = detector.suspected(now);
        self.draining = detector.draining();
        self.quarantined = detector.quarantined();
        self.left = detector.left();
        let Some((targets, digest)) = detector.round(now, &members) else {
            return;
        };
        // A client speaks only for itself; the data nodes answer with their view.
        let own: Vec<Heartbeat> = digest.into_iter().take(1).collect();
        for target in targets {
            self.stage(
                target,
                Message::Gossip {
                    heartbeats: own.clone(),
                },
            );
        }
    }

    fn on_message(&mut self, now: Time, from: NodeId, message: Message) {
        if let Message::Gossip { heartbeats } = &message {
            if let (Some(detector), true) =
                (self.detector.as_mut(), self.config.cluster.is_member(from))
            {
                detector.merge(now, from, heartbeats);
            }
            return;
        }
        if matches!(
            message,
            Message::Executed { .. } | Message::ExecutionAborted { .. } | Message::Probe { .. }
        ) {
            return self.on_interactive_message(now, from, message);
        }
        if let Message::Refused { txn, reason } = message {
            return self.on_refused(now, from, txn, reason);
        }
        let txn = message.txn();
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        match message {
            Message::Phase2b {
                rm, ballot, value, ..
            } => {
                state
                    .tally
                    .record(&state.descriptor, from, rm, ballot, value);
                if state.outcome.is_none() {
                    state.outcome = state.tally.outcome(&state.descriptor);
                }
            }
            Message::VoteNotice {
                vote,
                reason,
                reads,
                ..
            } if state.descriptor.is_participant(from) => {
                state.voted.insert(from);
                state.reads.insert(from, reads);
                if vote == Vote::Aborted {
                    // An RM that voted Aborted makes Abort certain.
                    state.outcome = Some(Outcome::Abort);
                    state.reason = state.reason.take().or(reason);
                }
            }
            Message::Decision { outcome, reads, .. } if self.config.cluster.is_member(from) => {
                state.outcome.get_or_insert(outcome);
                let awaited = state.readers.contains(&from) && !state.reads.contains_key(&from);
                if awaited {
                    match reads {
                        Some(reads) => {
                            state.reads.insert(from, reads);
                        }
                        None => state.reads_lost = true,
                    }
                }
            }
            _ => return,
        }
        self.finish_if_known(now, txn);
    }

    fn finish_if_known(&mut self, now: Time, txn: TxnId) {
        let Some(state) = self.txns.get(&txn) else {
            return;
        };
        let result = match state.outcome {
            None => return,
            Some(Outcome::Abort) => match state.refused {
                Some(refusal) => TxnResult::Refused(refusal),
                None => TxnResult::Aborted {
                    reason: state.reason.clone(),
                },
            },
            Some(Outcome::Commit) => {
                let missing = state
                    .readers
                    .iter()
                    .any(|reader| !state.reads.contains_key(reader));
                if missing && !state.reads_lost {
                    return;
                }
                let reads = state
                    .executed_reads
                    .iter()
                    .chain(state.reads.values().flatten())
                    .cloned()
                    .collect();
                TxnResult::Committed {
                    reads,
                    reads_lost: state.reads_lost,
                }
            }
        };
        self.finish(now, txn, result);
    }

    fn finish(&mut self, now: Time, txn: TxnId, result: TxnResult) {
        if let Some(state) = self.txns.remove(&txn) {
            self.deadlines.remove(&(state.deadline, txn));
            self.events.push_back(Finished {
                txn,
                result,
                started: state.started,
                finished: now,
            });
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
            if self.interactive.contains_key(&txn) {
                self.retry_interactive(now, txn);
            } else {
                self.retry(now, txn);
            }
        }
    }

    /// First retry: Prepare again to RMs never heard from (their Prepare may be lost).
    /// Later: ask participants to resolve (they lead recovery if they must), then all
    /// acceptors too; finally give up and report the outcome as unknown.
    fn retry(&mut self, now: Time, txn: TxnId) {
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        state.retries += 1;
        let retries = state.retries;
        if retries > self.config.retries_max {
            return self.finish(now, txn, TxnResult::Unknown);
        }
        let grown = self
            .config
            .retry_timeout
            .saturating_mul(1 << retries.min(8))
            .min(self.config.retry_timeout_max);
        let micros = grown.as_micros() as u64;
        let wait = Duration::from_micros(micros / 2 + self.rng.below(micros / 2 + 1));
        let state = self.txns.get_mut(&txn).expect("present above");
        self.deadlines.remove(&(state.deadline, txn));
        state.deadline = now.saturating_add(wait);
        self.deadlines.insert((state.deadline, txn));
        let descriptor = state.descriptor.clone();
        if state.outcome.is_some() {
            // Decided, but a reader's results are missing: ask that reader.
            let missing: Vec<NodeId> = state
                .readers
                .iter()
                .filter(|reader| {
                    !state.reads.contains_key(reader) && !state.refused_by.contains(reader)
                })
                .copied()
                .collect();
            for reader in missing {
                self.stage(
                    reader,
                    Message::Resolve {
                        descriptor: descriptor.clone(),
                    },
                );
            }
            return;
        }
        if retries == 1 {
            let heard: BTreeSet<NodeId> = descriptor
                .participants
                .iter()
                .copied()
                .filter(|rm| state.tally.heard_from(*rm) || state.voted.contains(rm))
                .collect();
            return self.send_prepares(txn, |rm| !heard.contains(&rm));
        }
        let mut askers: BTreeSet<NodeId> = descriptor.participants.iter().copied().collect();
        if retries >= 3 {
            askers.extend(descriptor.acceptors.iter().copied());
        }
        for refused in &state.refused_by {
            askers.remove(refused);
        }
        for node in askers {
            self.stage(
                node,
                Message::Resolve {
                    descriptor: descriptor.clone(),
                },
            );
        }
    }

    fn send_prepares(&mut self, txn: TxnId, wanted: impl Fn(NodeId) -> bool) {
        let Some(state) = self.txns.get(&txn) else {
            return;
        };
        // A node that refused this transaction never gets another Prepare of it (see
        // `TxnResult::Refused`).
        let prepares: Vec<(NodeId, Message)> = state
            .prepares
            .iter()
            .filter(|(rm, _)| wanted(**rm) && !state.refused_by.contains(rm))
            .map(|(rm, prepare)| (*rm, prepare.clone()))
            .collect();
        for (rm, prepare) in prepares {
            self.stage(rm, prepare);
        }
    }

    fn stage(&mut self, to: NodeId, message: Message) {
        self.staged.entry(to).or_default().push(message);
    }

    fn flush(&mut self) {
        for (to, messages) in core::mem::take(&mut self.staged) {
            self.outputs.push_back(Envelope { to, messages });
        }
    }
}
