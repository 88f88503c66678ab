//! The client side of a transaction: picks participants and acceptors, sends Prepare, and
//! learns the outcome from Phase2b messages, as a sans-IO state machine.
//!
//! The simulator and the client library drive the same code. Calling order: `begin` or
//! `handle`, then drain `poll_output` (send each envelope) and `poll_event`, and arm a timer
//! for `poll_timeout`. A client keeps no durable state: if it dies, the data nodes finish
//! its transactions through recovery.
//!
//! The files of this module, one role each: this one holds the [`Client`] with its
//! configuration, inputs, outputs and message dispatch; `one_shot` begins one-shot
//! transactions; `interactive` runs interactive ones up to their commit; `commit` is the
//! commit phase both share (learning the outcome, retries, the result); `refusal` handles a
//! data node's runtime refusing this client; `error` holds the errors of each operation.

mod commit;
mod error;
mod interactive;
mod one_shot;
mod refusal;

pub use error::{BeginError, ExecuteError};
pub use interactive::Executed;
pub use refusal::REFUSED_REMEMBERED_MAX;

use crate::cluster::Cluster;
use crate::detector::{DetectorConfig, FailureDetector, Heartbeat, Role};
use crate::message::{AbortReason, Envelope, Message, ReadResult, Refusal};
use crate::node::Input;
use crate::rng::Rng;
use crate::types::{due_by, NodeId, Time, TxnDescriptor, TxnId};
use commit::ClientTxn;
use core::time::Duration;
use interactive::Interactive;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Default of [`ClientConfig::abort_reason_wait`] (milliseconds): an aborting RM sends
/// its notice together with its Phase2a, so the notice is normally at most one network
/// delay and one acceptor fsync behind the acceptors' Phase2b; past this it is lost.
pub const ABORT_REASON_WAIT_DEFAULT_MS: u64 = 200;

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
    /// Longest wait for an aborting participant's reason once the Abort is known: the
    /// acceptors' Phase2b can tell the Abort before the participant's own `VoteNotice`
    /// (which carries the reason) arrives, since they travel on different paths. The
    /// client then holds the result this long for the notice, then asks the participant
    /// once more and waits this long again at most (see [`TxnResult::Aborted`]); only an
    /// Abort whose reason is owed waits.
    pub abort_reason_wait: Duration,
    /// One-phase commit: a transaction with exactly one participant gets a descriptor with
    /// no acceptors, and its RM decides alone with one durable write (no acceptor round;
    /// retries and Resolves go to that RM only). Off: every transaction runs Paxos Commit.
    pub one_phase: bool,
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
            abort_reason_wait: Duration::from_millis(ABORT_REASON_WAIT_DEFAULT_MS),
            one_phase: true,
        }
    }
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
    /// Aborted, with the reason when one is known; [`Finished::participant`] names the
    /// participant it comes from.
    ///
    /// The reason is the first an aborting participant gave (its `VoteNotice`, or its
    /// answer to an interactive operation). When the Abort is learned first from the
    /// acceptors' Phase2b (a participant's ballot-0 Aborted vote reached a quorum before
    /// its notice reached the client), the client waits up to
    /// [`ClientConfig::abort_reason_wait`] for the notice, then asks that participant
    /// again and waits as long once more. When a recovery leader chose
    /// Aborted for a participant none of whose votes the client saw, the reason is
    /// [`AbortReason::NoVote`]. `None` only when the reason is lost (the notice never came)
    /// or the Abort came from a `Decision` alone.
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
    /// For an aborted or refused transaction, the participant it comes from when known:
    /// the one whose vote, refusal or operation result aborted it, or whose instance a
    /// recovery leader aborted. `None` for other results, and for an abort the client
    /// asked for.
    pub participant: Option<NodeId>,
    /// When it began.
    pub started: Time,
    /// When the client learned the result.
    pub finished: Time,
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

    /// A fresh transaction id: this client's next sequence number, never handed out twice.
    fn allocate_txn(&mut self) -> TxnId {
        let txn = TxnId {
            client: self.config.id,
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        txn
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
            // Meant for data nodes (persists, resources): a client has none.
            Input::Persisted { .. }
            | Input::ResourceVoted { .. }
            | Input::ResourceDone { .. }
            | Input::ResourceHolds { .. } => {}
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
        let members = self.config.cluster.member_ids();
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
        self.on_commit_message(now, from, message);
    }

    fn on_timeout(&mut self, now: Time) {
        let due = due_by(&self.deadlines, now);
        for txn in due {
            if self.interactive.contains_key(&txn) {
                self.retry_interactive(now, txn);
            } else {
                self.retry(now, txn);
            }
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
