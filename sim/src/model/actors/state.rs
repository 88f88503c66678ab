//! The values a checker state is made of: each actor's state, a node's disk and the
//! observations (ghost state) kept on it, and the broken rules they record.

use super::Cached;
use dtx_protocol::{AcceptorState, Client, Node, NodeId, Outcome, Record};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use super::Frame;

/// The client's nondeterministic choice of operations (only with `aborting_rm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// Every RM gets a write of its key `n{i}/x`: every RM votes Prepared.
    EveryRmPrepares,
    /// The last RM gets an update of a missing key instead: it votes Aborted.
    LastRmAborts,
    /// An external resource answers its node's oldest request (a prepare: prepared).
    ResourceAnswers,
    /// An external resource refuses its node's oldest request, a prepare.
    ResourceRefuses,
}

/// A broken rule seen by the model's observations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// A production assertion panicked.
    Assertion(String),
    /// An acceptor's `mbal`/`bal`/`val` went backwards (also across a crash).
    AcceptorRegressed(String),
    /// An acceptor state broke `bal <= mbal` or `val = none <=> bal = -1`.
    AcceptorMalformed(String),
    /// A node's decision changed or was forgotten.
    DecisionChanged(String),
}

/// What the model observed of a node, kept on its disk so that a crash cannot erase it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Observed {
    /// The first outcome the node knew.
    pub decided: Option<Outcome>,
    /// The last acceptor state the node held per instance (cleared once decided: the
    /// protocol retires acceptor state at the decision).
    pub acceptors: BTreeMap<NodeId, AcceptorState>,
    /// Broken rules, if any.
    pub violations: BTreeSet<Violation>,
}

/// A node's stable storage: what survives a crash.
///
/// Two disks are the same state when a restart would rebuild the same node from them
/// (`replayed`), whatever the order of their records: replay is a left fold, so such disks
/// stay interchangeable after any further appends, and merging them loses no behaviour.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Every record of every `Output::Persist`, in order.
    pub records: Vec<Record>,
    /// Fingerprint of `Node::recover` applied to `records`.
    pub replayed: u64,
    /// The model transaction's outcome, if `records` hold it (derived from `records`).
    pub outcome: Option<Outcome>,
    /// Restarts so far (each follows a crash).
    pub restarts: u32,
    /// The highest `Record::LeaderRound` written: the node's highest ballot round.
    pub highest_round: u32,
    /// Recovery timeouts this node took (the model bounds their total).
    pub timeouts: u32,
    /// The model's observations (ghost state, not read by the node).
    pub observed: Observed,
    /// The node's external resource, if it has one: what it durably holds per
    /// transaction. Kept with the disk because it survives the node's crashes.
    pub resource: BTreeMap<dtx_protocol::TxnId, crate::checker::ServiceHold>,
}

impl PartialEq for Disk {
    fn eq(&self, other: &Self) -> bool {
        self.replayed == other.replayed
            && self.restarts == other.restarts
            && self.highest_round == other.highest_round
            && self.timeouts == other.timeouts
            && self.observed == other.observed
            && self.resource == other.resource
    }
}

impl Eq for Disk {}

impl Hash for Disk {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.replayed.hash(state);
        self.restarts.hash(state);
        self.highest_round.hash(state);
        self.timeouts.hash(state);
        self.observed.hash(state);
        self.resource.hash(state);
    }
}

/// A data node's model state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeState {
    /// The production node (volatile: lost on a crash).
    pub node: Node,
    /// Its disk (the same value as the actor's stateright storage).
    pub disk: Cached<Disk>,
    /// Phase2b frames already buffered by the node for a transaction it has no entry for.
    ///
    /// Model abstraction: the node's early-Phase2b buffer is a list that takes duplicates,
    /// so a duplicating network could grow it (and the state space) up to its bound. A
    /// duplicate changes nothing else (the tally counts acceptors as a set), so the model
    /// delivers each such frame once while the buffer holds it.
    pub early_phase2b: BTreeSet<(NodeId, Frame)>,
    /// Requests to the external resource not answered yet, oldest first, without repeats
    /// (volatile: lost with a crash, as requests in flight are).
    pub resource_pending: Vec<dtx_protocol::ResourceRequest>,
}

/// How the client's transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientResult {
    /// `TxnResult::Committed`.
    Committed,
    /// `TxnResult::Aborted`.
    Aborted,
    /// `TxnResult::Unknown` (the client gave up).
    Unknown,
}

impl ClientResult {
    /// The outcome the result reports, if it reports one.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            ClientResult::Committed => Some(Outcome::Commit),
            ClientResult::Aborted => Some(Outcome::Abort),
            ClientResult::Unknown => None,
        }
    }
}

/// The client's model state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientState {
    /// The production client.
    pub client: Client,
    /// The operations it chose, once it began.
    pub workload: Option<Workload>,
    /// The result it reported, once finished.
    pub result: Option<ClientResult>,
    /// Retry timeouts it may still take.
    pub retries_left: u32,
    /// Broken rules, if any.
    pub violations: BTreeSet<Violation>,
}

/// The model state of one actor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ActorState {
    /// A data node.
    Node(Cached<NodeState>),
    /// The client.
    Client(Cached<ClientState>),
    /// A crashed node: its volatile state is gone, only its disk (the actor's storage)
    /// remains. One value for every crashed node, so that states differing only in what
    /// a crash erased are one state.
    Down,
}
