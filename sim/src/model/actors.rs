//! The production state machines as stateright actors.
//!
//! [`NodeActor`] wraps the real [`Node`] and [`ClientActor`] the real [`Client`]: the model
//! checks exactly the code the daemon runs. The wrappers are the "runtime" of the node
//! module docs, reduced to what a model needs:
//!
//! * time is the constant [`NOW`] and the decision and retry timeouts are zero, so those
//!   deadlines are due at once; *when* a timeout fires is the model's nondeterministic
//!   `Timeout` action, armed while `poll_timeout()` is due; the failure detector is off
//!   (suspicion only starts recovery sooner, and the model may start it at any moment);
//! * every `Output::Persist` is durable at once (`Persisted` is fed back in the same step),
//!   and its records go to the node's [`Disk`], stateright's per-actor storage, which is
//!   all that survives a crash: a restart is `Node::recover(config, now, disk.records)`;
//! * each `Output::Send` envelope is one network message ([`Frame`]);
//! * a panic of a production assertion is caught and recorded as a [`Violation`], so the
//!   checker reports it with a trace instead of dying.
//!
//! The wrappers also keep *observations* (ghost state, never read by the protocol): what
//! each node decided and the last acceptor state it showed, kept with the disk so that a
//! crash cannot erase the evidence. The properties compare them with the node's state.

pub use super::cached::Cached;
use super::config::{model_txn, ModelConfig, CLIENT_ID};
use super::memo::{memoized, next_model_identity, StepInput};
use super::panics::{clip, guarded};
use dtx_protocol::{
    invariants, AcceptorState, Bugs, Client, ClientConfig, Envelope, Finished, Input, Key, Message,
    Node, NodeConfig, NodeId, Operation, Outcome, Output, Record, Time, TxnResult, Value,
};
use stateright::actor::{model_timeout, Actor, Id, Out};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// The time passed to every call. Deadlines are `NOW + 0`, so all are due whenever the
/// model lets a timeout fire.
pub const NOW: Time = Time::ZERO;

/// Seed of every node's and the client's PRNG (the model explores timing, not jitter).
const SEED: u64 = 7;

/// One network message: the messages of one `Output::Send` envelope (one frame).
///
/// Shared and hashed once: every state holds the whole network, so copying or hashing a
/// state must not copy or hash the messages again.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frame(pub Cached<Vec<Message>>);

/// The one timer of an actor: a node's recovery deadline or the client's retry deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ModelTimer {
    /// `poll_timeout()` returned a deadline.
    Deadline,
}

/// The client's nondeterministic choice of operations (only with `aborting_rm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// Every RM gets a write of its key `n{i}/x`: every RM votes Prepared.
    EveryRmPrepares,
    /// The last RM gets an update of a missing key instead: it votes Aborted.
    LastRmAborts,
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
}

impl PartialEq for Disk {
    fn eq(&self, other: &Self) -> bool {
        self.replayed == other.replayed
            && self.restarts == other.restarts
            && self.highest_round == other.highest_round
            && self.timeouts == other.timeouts
            && self.observed == other.observed
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

/// One actor of the model.
#[derive(Clone, Debug)]
pub enum ModelActor {
    /// A data node (RM, acceptor, learner and recovery leader).
    Node(NodeActor),
    /// The client that begins the transaction.
    Client(ClientActor),
}

/// A data node running the production [`Node`].
#[derive(Clone, Debug)]
pub struct NodeActor {
    config: NodeConfig,
    model: Arc<ModelConfig>,
    model_identity: u64,
}

/// The client running the production [`Client`].
#[derive(Clone, Debug)]
pub struct ClientActor {
    config: ClientConfig,
    model: Arc<ModelConfig>,
    model_identity: u64,
}

/// The actors of a model: data nodes `n1..` (actor index i is node i+1), then the client.
pub fn build_actors(model: &ModelConfig) -> Result<Vec<ModelActor>, dtx_protocol::ClusterError> {
    let model = Arc::new(model.clone());
    let model_identity = next_model_identity();
    let cluster = model.cluster()?;
    let bugs = model
        .bug
        .map_or_else(Bugs::none, |bug| Bugs::none().with(bug));
    let mut actors = Vec::new();
    for member in cluster.members() {
        let mut config = NodeConfig::new(member.id, cluster.clone(), SEED);
        config.decision_timeout = Duration::ZERO;
        config.recovery_backoff_max = Duration::ZERO;
        config.thrifty = model.thrifty;
        // Suspicion only makes recovery start sooner; the model lets a recovery timeout
        // fire at any moment anyway, so heartbeats would add traffic and no behaviour.
        config.detector = None;
        config.bugs = bugs.clone();
        actors.push(ModelActor::Node(NodeActor {
            config,
            model: Arc::clone(&model),
            model_identity,
        }));
    }
    let mut config = ClientConfig::new(CLIENT_ID, cluster, SEED);
    config.retry_timeout = Duration::ZERO;
    config.retry_timeout_max = Duration::ZERO;
    config.detector = None;
    actors.push(ModelActor::Client(ClientActor {
        config,
        model,
        model_identity,
    }));
    Ok(actors)
}

impl ModelActor {
    /// The identity of the model this actor belongs to (keys the step cache).
    fn model_identity(&self) -> u64 {
        match self {
            ModelActor::Node(actor) => actor.model_identity,
            ModelActor::Client(actor) => actor.model_identity,
        }
    }

    fn restart(&self, disk: &Cached<Disk>, o: &mut Out<ModelActor>) -> ActorState {
        match self {
            ModelActor::Node(actor) => ActorState::Node(Cached::new(actor.start(Some(disk), o))),
            ModelActor::Client(actor) => ActorState::Client(Cached::new(actor.start(o))),
        }
    }

    fn deliver(
        &self,
        state: &ActorState,
        src: Id,
        frame: Frame,
        o: &mut Out<ModelActor>,
    ) -> Option<ActorState> {
        match (self, state) {
            (ModelActor::Node(actor), ActorState::Node(node)) => {
                let from = actor.model.node_of(src);
                let next = actor.deliver(node, from, frame, o)?;
                Some(ActorState::Node(Cached::new(next)))
            }
            (ModelActor::Client(actor), ActorState::Client(client)) => {
                let input = Input::Receive {
                    from: actor.model.node_of(src),
                    messages: frame.0.to_vec(),
                };
                let next = actor.step(client, input, false, o)?;
                Some(ActorState::Client(Cached::new(next)))
            }
            _ => None,
        }
    }

    fn timeout(&self, state: &ActorState, o: &mut Out<ModelActor>) -> Option<ActorState> {
        match (self, state) {
            (ModelActor::Node(actor), ActorState::Node(node)) => {
                let next = actor.step(node, Input::Timeout, true, o)?;
                Some(ActorState::Node(Cached::new(next)))
            }
            (ModelActor::Client(actor), ActorState::Client(client)) => {
                let next = actor.timeout(client, o)?;
                Some(ActorState::Client(Cached::new(next)))
            }
            _ => None,
        }
    }

    fn choose(
        &self,
        state: &ActorState,
        workload: Workload,
        o: &mut Out<ModelActor>,
    ) -> Option<ActorState> {
        match (self, state) {
            (ModelActor::Client(actor), ActorState::Client(client)) => {
                let next = actor.begin((**client).clone(), workload, o);
                Some(ActorState::Client(Cached::new(next)))
            }
            _ => None,
        }
    }
}

impl Actor for ModelActor {
    type Msg = Frame;
    type Timer = ModelTimer;
    type State = ActorState;
    type Storage = Cached<Disk>;
    type Random = Workload;

    fn on_start(&self, id: Id, storage: &Option<Self::Storage>, o: &mut Out<Self>) -> ActorState {
        let Some(disk) = storage else {
            return match self {
                ModelActor::Node(actor) => ActorState::Node(Cached::new(actor.start(None, o))),
                ModelActor::Client(actor) => ActorState::Client(Cached::new(actor.start(o))),
            };
        };
        let input = StepInput::Restart(disk.clone());
        let restarted = memoized(self.model_identity(), id, None, input, o, |o| {
            Some(self.restart(disk, o))
        });
        restarted.unwrap_or_else(|| self.restart(disk, o))
    }

    fn on_msg(&self, id: Id, state: &mut Cow<ActorState>, src: Id, msg: Frame, o: &mut Out<Self>) {
        let input = StepInput::Deliver {
            from: src,
            frame: msg.clone(),
        };
        let current = state.as_ref();
        let next = memoized(self.model_identity(), id, Some(current), input, o, |o| {
            self.deliver(current, src, msg, o)
        });
        if let Some(next) = next {
            *state = Cow::Owned(next);
        }
    }

    fn on_timeout(
        &self,
        id: Id,
        state: &mut Cow<ActorState>,
        _timer: &ModelTimer,
        o: &mut Out<Self>,
    ) {
        let current = state.as_ref();
        let next = memoized(
            self.model_identity(),
            id,
            Some(current),
            StepInput::Timeout,
            o,
            |o| self.timeout(current, o),
        );
        if let Some(next) = next {
            *state = Cow::Owned(next);
        }
    }

    fn on_random(&self, id: Id, state: &mut Cow<ActorState>, random: &Workload, o: &mut Out<Self>) {
        let current = state.as_ref();
        let input = StepInput::Random(*random);
        let next = memoized(self.model_identity(), id, Some(current), input, o, |o| {
            self.choose(current, *random, o)
        });
        if let Some(next) = next {
            *state = Cow::Owned(next);
        }
    }
}

impl NodeActor {
    /// A fresh node (first start) or a node rebuilt from its disk (restart after a crash).
    fn start(&self, disk: Option<&Cached<Disk>>, o: &mut Out<ModelActor>) -> NodeState {
        let Some(disk) = disk else {
            let disk = Cached::new(Disk {
                replayed: self.replay_fingerprint(&[]),
                ..Disk::default()
            });
            o.save(disk.clone());
            return NodeState {
                node: Node::new(self.config.clone()),
                disk,
                early_phase2b: BTreeSet::new(),
            };
        };
        let records = disk.records.clone();
        let recovered = guarded(|| Node::recover(self.config.clone(), NOW, records));
        let mut next_disk: Disk = (**disk).clone();
        next_disk.restarts += 1;
        let node = match recovered {
            Ok(node) => node,
            Err(message) => {
                next_disk
                    .observed
                    .violations
                    .insert(Violation::Assertion(clip(format!(
                        "Node::recover: {message}"
                    ))));
                Node::new(self.config.clone())
            }
        };
        let durable_outcome = has_outcome_record(&next_disk.records);
        next_disk.observed = self.observe(&node, durable_outcome, &next_disk.observed);
        let disk = Cached::new(next_disk);
        o.save(disk.clone());
        if timer_due(node.poll_timeout()) {
            o.set_timer(ModelTimer::Deadline, model_timeout());
        }
        NodeState {
            node,
            disk,
            early_phase2b: BTreeSet::new(),
        }
    }

    /// What a restart would rebuild from `records`, as a fingerprint.
    fn replay_fingerprint(&self, records: &[Record]) -> u64 {
        let replayed = guarded(|| Node::recover(self.config.clone(), NOW, records.to_vec()));
        let mut hasher = DefaultHasher::new();
        match replayed {
            Ok(node) => node.hash(&mut hasher),
            Err(message) => message.hash(&mut hasher),
        }
        hasher.finish()
    }

    /// Delivers one frame, delivering an already buffered early Phase2b frame only once.
    fn deliver(
        &self,
        state: &NodeState,
        from: NodeId,
        frame: Frame,
        o: &mut Out<ModelActor>,
    ) -> Option<NodeState> {
        let early = is_early_phase2b(&state.node, &frame);
        let key = (from, frame);
        if early && state.early_phase2b.contains(&key) {
            return None;
        }
        let (from, frame) = key;
        let input = Input::Receive {
            from,
            messages: frame.0.to_vec(),
        };
        let mut next = self.step(state, input, false, o)?;
        if early {
            next.early_phase2b.insert((from, frame));
        }
        let node = &next.node;
        next.early_phase2b
            .retain(|(_, buffered)| is_early_phase2b(node, buffered));
        Some(next)
    }

    /// Feeds one input and runs the node's outputs to completion: persists are durable at
    /// once, sends go to the network. `None` if nothing changed.
    fn step(
        &self,
        state: &NodeState,
        input: Input,
        timer_fired: bool,
        o: &mut Out<ModelActor>,
    ) -> Option<NodeState> {
        let mut node = state.node.clone();
        let mut records = Vec::new();
        let mut sends = Vec::new();
        let result = guarded(|| {
            node.handle(NOW, input);
            drain_node(&mut node, &mut records, &mut sends);
        });
        let mut observed = state.disk.observed.clone();
        if let Err(message) = result {
            node = state.node.clone();
            records.clear();
            sends.clear();
            observed
                .violations
                .insert(Violation::Assertion(clip(message)));
        }
        let durable_outcome =
            has_outcome_record(&state.disk.records) || has_outcome_record(&records);
        observed = self.observe(&node, durable_outcome, &observed);
        let unchanged = node == state.node && records.is_empty() && observed == state.disk.observed;
        if unchanged {
            // Only sends (say, a repeated Phase2b): the actor's state stays as it is.
            for envelope in sends {
                send(&self.model, envelope, o);
            }
            return None;
        }
        let disk = if records.is_empty() && observed == state.disk.observed && !timer_fired {
            state.disk.clone()
        } else {
            let mut disk = (*state.disk).clone();
            if timer_fired {
                disk.timeouts += 1;
            }
            for record in &records {
                if let Record::LeaderRound { round } = record {
                    disk.highest_round = disk.highest_round.max(*round);
                }
            }
            if !records.is_empty() {
                disk.records.extend(records);
                disk.replayed = self.replay_fingerprint(&disk.records);
                disk.outcome = outcome_record(&disk.records);
            }
            disk.observed = observed;
            let disk = Cached::new(disk);
            o.save(disk.clone());
            disk
        };
        let armed_before = timer_due(state.node.poll_timeout());
        let armed_after = timer_due(node.poll_timeout());
        if armed_after && (timer_fired || !armed_before) {
            o.set_timer(ModelTimer::Deadline, model_timeout());
        } else if !armed_after && armed_before && !timer_fired {
            o.cancel_timer(ModelTimer::Deadline);
        }
        for envelope in sends {
            send(&self.model, envelope, o);
        }
        Some(NodeState {
            node,
            disk,
            early_phase2b: state.early_phase2b.clone(),
        })
    }

    /// Updates the observations with the node's current state: its decision must never
    /// change or vanish, its acceptor states never go backwards (PaxosCommit.tla: `mbal`
    /// and `bal` only grow, also across crashes) and stay well formed.
    ///
    /// An outcome the node only held in memory (a non-participant told by `Decision`) may
    /// be forgotten in a crash; one on its disk may not, and no outcome may ever change.
    fn observe(&self, node: &Node, durable_outcome: bool, before: &Observed) -> Observed {
        let txn = model_txn();
        let mut observed = before.clone();
        let outcome = node.known_outcome(txn);
        match (before.decided, outcome) {
            (None, Some(outcome)) => observed.decided = Some(outcome),
            (Some(first), Some(now)) if first != now => {
                observed
                    .violations
                    .insert(Violation::DecisionChanged(format!(
                        "{} decided {first} and later {now}",
                        node.id()
                    )));
            }
            (Some(first), None) if durable_outcome => {
                observed
                    .violations
                    .insert(Violation::DecisionChanged(format!(
                        "{} persisted the outcome {first} and then forgot it",
                        node.id()
                    )));
            }
            _ => {}
        }
        if outcome.is_some() {
            // Decided: the acceptor state is retired and the outcome answers every later
            // Phase1a or Phase2a, so there is nothing left to compare.
            observed.acceptors.clear();
            return observed;
        }
        let mut current = BTreeMap::new();
        for rm in self.model.participants() {
            let state = node.acceptor_state(txn, rm);
            // A missing state is the initial one ([mbal 0, bal -1, val none]).
            let effective = state.unwrap_or_default();
            if let Some(last) = before.acceptors.get(&rm) {
                if !invariants::acceptor_step_monotonic(last, &effective) {
                    observed
                        .violations
                        .insert(Violation::AcceptorRegressed(format!(
                            "{} acceptor for instance {rm}: {} became {}",
                            node.id(),
                            describe_acceptor(last),
                            describe_acceptor(&effective)
                        )));
                }
            }
            if let Some(state) = state {
                if !invariants::acceptor_state_well_formed(&state) {
                    observed
                        .violations
                        .insert(Violation::AcceptorMalformed(format!(
                            "{} acceptor for instance {rm}: {}",
                            node.id(),
                            describe_acceptor(&state)
                        )));
                }
                current.insert(rm, state);
            }
        }
        observed.acceptors = current;
        observed
    }
}

impl ClientActor {
    /// The client at the start: it begins the transaction, or first chooses its operations
    /// when the model lets an RM vote Aborted.
    fn start(&self, o: &mut Out<ModelActor>) -> ClientState {
        let state = ClientState {
            client: Client::new(self.config.clone()),
            workload: None,
            result: None,
            retries_left: self.model.client_retries,
            violations: BTreeSet::new(),
        };
        if self.model.aborting_rm {
            o.choose_random(
                "workload",
                vec![Workload::EveryRmPrepares, Workload::LastRmAborts],
            );
            return state;
        }
        self.begin(state, Workload::EveryRmPrepares, o)
    }

    /// One write per RM, `n{i}/x`; the last RM's is an update of a missing key when the
    /// workload asks it to vote Aborted.
    fn operations(&self, workload: Workload) -> Vec<Operation> {
        let participants = self.model.participants();
        let last = participants.last().copied();
        participants
            .into_iter()
            .map(|rm| {
                let value = Value::new(b"v".to_vec());
                if workload == Workload::LastRmAborts && Some(rm) == last {
                    Operation::Update {
                        key: Key::new(format!("n{}/missing", rm.0)),
                        value,
                    }
                } else {
                    Operation::Write {
                        key: Key::new(format!("n{}/x", rm.0)),
                        value,
                    }
                }
            })
            .collect()
    }

    /// Begins the model's transaction.
    fn begin(
        &self,
        state: ClientState,
        workload: Workload,
        o: &mut Out<ModelActor>,
    ) -> ClientState {
        let operations = self.operations(workload);
        let mut next = state.clone();
        next.workload = Some(workload);
        match guarded(|| next.client.begin(NOW, operations)) {
            Ok(Ok(txn)) if txn == model_txn() => {}
            Ok(Ok(txn)) => {
                next.violations.insert(Violation::Assertion(format!(
                    "the client began {txn}, the model expects {}",
                    model_txn()
                )));
            }
            Ok(Err(error)) => {
                next.violations
                    .insert(Violation::Assertion(clip(format!("begin failed: {error}"))));
            }
            Err(message) => {
                next.client = state.client.clone();
                next.violations.insert(Violation::Assertion(clip(message)));
            }
        }
        let sends = drain_client(&mut next);
        self.arm_timer(&state, &next, false, o);
        for envelope in sends {
            send(&self.model, envelope, o);
        }
        next
    }

    /// A retry timeout: spends one retry.
    fn timeout(&self, state: &ClientState, o: &mut Out<ModelActor>) -> Option<ClientState> {
        let mut spent = state.clone();
        spent.retries_left = spent.retries_left.saturating_sub(1);
        self.step(&spent, Input::Timeout, true, o)
    }

    /// Feeds one input to the client and sends what it produced. `None` if nothing changed.
    fn step(
        &self,
        state: &ClientState,
        input: Input,
        timer_fired: bool,
        o: &mut Out<ModelActor>,
    ) -> Option<ClientState> {
        let mut next = state.clone();
        if let Err(message) = guarded(|| next.client.handle(NOW, input)) {
            next.client = state.client.clone();
            next.violations.insert(Violation::Assertion(clip(message)));
        }
        let sends = drain_client(&mut next);
        if next == *state && !timer_fired {
            for envelope in sends {
                send(&self.model, envelope, o);
            }
            return None;
        }
        self.arm_timer(state, &next, timer_fired, o);
        for envelope in sends {
            send(&self.model, envelope, o);
        }
        Some(next)
    }

    /// Keeps the client's timer armed while it has a deadline and retries left.
    fn arm_timer(
        &self,
        before: &ClientState,
        after: &ClientState,
        timer_fired: bool,
        o: &mut Out<ModelActor>,
    ) {
        let armed =
            |state: &ClientState| timer_due(state.client.poll_timeout()) && state.retries_left > 0;
        let (armed_before, armed_after) = (armed(before), armed(after));
        if armed_after && (timer_fired || !armed_before) {
            o.set_timer(ModelTimer::Deadline, model_timeout());
        } else if !armed_after && armed_before && !timer_fired {
            o.cancel_timer(ModelTimer::Deadline);
        }
    }
}

/// Takes the client's queued sends and records its finished event.
fn drain_client(state: &mut ClientState) -> Vec<Envelope> {
    let mut sends = Vec::new();
    while let Some(envelope) = state.client.poll_output() {
        sends.push(envelope);
    }
    while let Some(Finished { result, .. }) = state.client.poll_event() {
        let result = match result {
            TxnResult::Committed { .. } => ClientResult::Committed,
            TxnResult::Aborted { .. } | TxnResult::Refused(_) => ClientResult::Aborted,
            TxnResult::Unknown => ClientResult::Unknown,
        };
        match state.result {
            None => state.result = Some(result),
            Some(first) if first != result => {
                state.violations.insert(Violation::DecisionChanged(format!(
                    "the client reported {first:?} and later {result:?}"
                )));
            }
            Some(_) => {}
        }
    }
    sends
}

/// True if a deadline is due at [`NOW`]. Recovery and retry deadlines are (their timeouts
/// are zero); lock-wait and idle-execution deadlines are not, and the one-shot transaction
/// of the model never sets them.
fn timer_due(deadline: Option<Time>) -> bool {
    deadline.is_some_and(|deadline| deadline <= NOW)
}

/// Runs the node's outputs to completion: every persist is durable at once.
fn drain_node(node: &mut Node, records: &mut Vec<Record>, sends: &mut Vec<Envelope>) {
    while let Some(output) = node.poll_output() {
        match output {
            Output::Persist {
                token,
                records: batch,
            } => {
                records.extend(batch);
                node.handle(NOW, Input::Persisted { token });
            }
            Output::Send(envelope) => sends.push(envelope),
        }
    }
    // Audit events do not matter to the model; draining them keeps states small.
    while node.poll_event().is_some() {}
}

/// True if the log holds the model transaction's outcome.
fn has_outcome_record(records: &[Record]) -> bool {
    outcome_record(records).is_some()
}

/// The model transaction's outcome as the log holds it.
fn outcome_record(records: &[Record]) -> Option<Outcome> {
    let txn = model_txn();
    records.iter().find_map(|record| match record {
        Record::Outcome {
            txn: decided,
            outcome,
        } if *decided == txn => Some(*outcome),
        _ => None,
    })
}

/// Puts one envelope on the network.
fn send(model: &ModelConfig, envelope: Envelope, o: &mut Out<ModelActor>) {
    if let Some(destination) = model.actor_of(envelope.to) {
        o.send(destination, Frame(Cached::new(envelope.messages)));
    }
}

/// True if every message of `frame` is a Phase2b the node would only buffer: it holds
/// no entry and no outcome for the transaction.
fn is_early_phase2b(node: &Node, frame: &Frame) -> bool {
    frame.0.iter().all(|message| {
        let Message::Phase2b { txn, .. } = message else {
            return false;
        };
        node.known_outcome(*txn).is_none() && !node.undecided().any(|known| known.txn == *txn)
    })
}

/// `[mbal, bal, val]` as in PaxosCommit.tla.
pub fn describe_acceptor(state: &AcceptorState) -> String {
    let accepted = match (state.accepted_ballot, state.accepted_value) {
        (Some(ballot), Some(value)) => format!("bal {ballot}, val {value:?}"),
        (None, None) => "bal -1, val none".to_string(),
        (ballot, value) => format!("bal {ballot:?}, val {value:?}"),
    };
    format!("[mbal {}, {accepted}]", state.promised)
}
