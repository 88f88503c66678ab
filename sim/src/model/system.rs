//! The whole system as a stateright [`Model`]: the actors over an unordered, duplicating
//! (optionally lossy) network, crashes with restarts from disk, and the properties.
//!
//! [`CommitModel`] wraps stateright's `ActorModel` for three reasons: stateright 0.31's
//! duplicating network remembers the last delivered message in the state (which multiplies
//! the state space without adding behaviour, so it is cleared); `max_crashes` bounds
//! *concurrent* crashes while the model bounds crashes over a whole run; and the client
//! never crashes (it keeps no durable state, and the lossy network already loses its
//! messages).

use super::actors::{
    build_actors, ActorState, Cached, ClientResult, ClientState, Frame, ModelActor, ModelTimer,
    NodeState, Violation, Workload,
};
use super::config::{model_txn, ModelConfig, ModelConfigError};
use crate::checker::ServiceHold;
use dtx_protocol::{invariants, Ballot, Message, NodeId, Outcome, Vote};
use stateright::actor::{
    Actor, ActorModel, ActorModelAction, ActorModelState, Command, Envelope, Id, LossyNetwork,
    Network, Out,
};
use stateright::{Model, Property};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Auxiliary history (TLA+ style): every Phase2b ever sent, as
/// `(instance, ballot, value, acceptor)`. A value is chosen in a ballot when F+1
/// acceptors sent a Phase2b for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct History {
    /// The Phase2b messages sent so far (hashed once: the history is in every state).
    pub phase2b: Cached<BTreeSet<(NodeId, Ballot, Vote, NodeId)>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            phase2b: Cached::new(BTreeSet::new()),
        }
    }
}

/// A state of the whole system.
pub type SystemState = ActorModelState<ModelActor, History>;

/// A step of the whole system.
pub type SystemAction = ActorModelAction<Frame, ModelTimer, Workload>;

/// Property: TCommit.tla `TCConsistent` over every node and the client.
pub const TC_CONSISTENT: &str = "TCConsistent";
/// Property: at most one value chosen per instance, over all ballots.
pub const ONE_VALUE_CHOSEN: &str = "one value chosen per instance";
/// Property: a node's or the client's decision never changes or vanishes.
pub const DECISIONS_STABLE: &str = "decisions stable";
/// Property: acceptor `mbal`/`bal` never decrease (also across crashes) and stay well formed.
pub const ACCEPTOR_BALLOTS_MONOTONIC: &str = "acceptor ballots monotonic";
/// Property (one-phase configurations only): the transaction stays between its client
/// and its RM: no frame ever goes to another node, and no other node holds state or an
/// outcome of it (so nobody can run recovery on it).
pub const ONE_PHASE_AT_ITS_RM_ONLY: &str = "one-phase stays at its RM";
/// Property: no production assertion fails.
pub const CORE_ASSERTIONS_HOLD: &str = "core assertions hold";
/// Property (example wanted): some run commits.
pub const SOMETIMES_COMMITTED: &str = "sometimes committed";
/// Property (example wanted): some run aborts.
pub const SOMETIMES_ABORTED: &str = "sometimes aborted";
/// Property (liveness, lossless and crash-free models only): a state in which no message
/// delivery changes anything has every participant and the client decided.
pub const DECIDED_WHEN_QUIESCENT: &str = "every run decides";
/// Property name (models with an external resource): the resource never holds the
/// opposite of a decision (committed while anyone decided Abort; refused or rolled back
/// while anyone decided Commit), and in a quiescent decided state (liveness variant) it
/// holds the decided outcome, nothing prepared.
pub const RESOURCE_CONSISTENT: &str = "resource consistent with the outcome";

/// The system model.
pub struct CommitModel {
    config: ModelConfig,
    inner: ActorModel<ModelActor, ModelConfig, History>,
}

impl CommitModel {
    /// Builds the model of `config`.
    pub fn new(config: ModelConfig) -> Result<CommitModel, ModelConfigError> {
        config.validate()?;
        let actors = build_actors(&config)?;
        let lossy = if config.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        };
        let inner = ActorModel::new(config.clone(), History::default())
            .actors(actors)
            .init_network(Network::new_unordered_duplicating([]))
            .lossy_network(lossy)
            .max_crashes(config.crashes)
            .record_msg_out(record_phase2b);
        Ok(CommitModel { config, inner })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Crashes so far: nodes down now plus restarts recorded on the disks.
    fn crashes_so_far(&self, state: &SystemState) -> usize {
        let down = state.crashed.iter().filter(|crashed| **crashed).count();
        let restarts: usize = state
            .actor_storages
            .iter()
            .flatten()
            .map(|disk| disk.restarts as usize)
            .sum();
        down + restarts
    }

    /// Recovery timeouts so far, all nodes together (counted on the disks, so a crash
    /// does not reset them).
    fn timeouts_so_far(&self, state: &SystemState) -> u32 {
        state
            .actor_storages
            .iter()
            .flatten()
            .map(|disk| disk.timeouts)
            .sum()
    }

    /// True if delivering `frame` leaves the state as it is: the receiver does not change
    /// and everything it sends is already in flight. Such deliveries are left out of the
    /// actions (they only cost time); the receiver's step is cached, so this is cheap.
    fn is_self_loop(&self, state: &SystemState, src: Id, dst: Id, frame: &Frame) -> bool {
        let index = usize::from(dst);
        let (Some(actor), Some(current)) =
            (self.inner.actors.get(index), state.actor_states.get(index))
        else {
            return false;
        };
        if state.crashed.get(index).copied().unwrap_or(true) {
            return false;
        }
        let Network::UnorderedDuplicating(in_flight, _) = &state.network else {
            return false;
        };
        let mut next = Cow::Borrowed(&**current);
        let mut out = Out::new();
        actor.on_msg(dst, &mut next, src, frame.clone(), &mut out);
        if matches!(next, Cow::Owned(_)) {
            return false;
        }
        out.iter().all(|command| match command {
            Command::Send(to, sent) => in_flight.contains(&Envelope {
                src: dst,
                dst: *to,
                msg: sent.clone(),
            }),
            _ => false,
        })
    }

    /// True if no message delivery (nor the client's choice of operations) changes the
    /// state: every message was processed. Timeouts do not count: liveness must not need
    /// them when nothing is lost and nothing crashes.
    pub fn is_quiescent(&self, state: &SystemState) -> bool {
        let mut actions = Vec::new();
        self.inner.actions(state, &mut actions);
        actions
            .into_iter()
            .filter(|action| {
                matches!(
                    action,
                    ActorModelAction::Deliver { .. } | ActorModelAction::SelectRandom { .. }
                )
            })
            .all(|action| match self.next_state(state, action) {
                None => true,
                Some(next) => next == *state,
            })
    }
}

impl Model for CommitModel {
    type State = SystemState;
    type Action = SystemAction;

    fn init_states(&self) -> Vec<SystemState> {
        self.inner.init_states()
    }

    fn actions(&self, state: &SystemState, actions: &mut Vec<SystemAction>) {
        self.inner.actions(state, actions);
        let crash_budget_left = self.crashes_so_far(state) < self.config.crashes;
        let timeout_budget_left = self.timeouts_so_far(state) < self.config.timeouts;
        let client = self.config.client_index();
        actions.retain(|action| match action {
            ActorModelAction::Crash(id) => crash_budget_left && usize::from(*id) != client,
            ActorModelAction::Timeout(id, _) if usize::from(*id) != client => timeout_budget_left,
            ActorModelAction::Deliver { src, dst, msg } => {
                !self.is_self_loop(state, *src, *dst, msg)
            }
            _ => true,
        });
    }

    fn next_state(&self, state: &SystemState, action: SystemAction) -> Option<SystemState> {
        let crashed = match &action {
            ActorModelAction::Crash(id) => Some(usize::from(*id)),
            _ => None,
        };
        let mut next = self.inner.next_state(state, action)?;
        if let Some(slot) = crashed.and_then(|index| next.actor_states.get_mut(index)) {
            *slot = Arc::new(ActorState::Down);
        }
        let dead = DeadLetters::of(&self.config, &next);
        if let Network::UnorderedDuplicating(envelopes, last_delivered) = &mut next.network {
            *last_delivered = None;
            envelopes.retain(|envelope| !dead.is_dead(envelope));
        }
        Some(next)
    }

    fn format_action(&self, action: &SystemAction) -> String {
        super::trace::describe_action(&self.config, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(TC_CONSISTENT, tc_consistent),
            Property::always(ONE_VALUE_CHOSEN, one_value_chosen),
            Property::always(DECISIONS_STABLE, decisions_stable),
            Property::always(ACCEPTOR_BALLOTS_MONOTONIC, acceptor_ballots_monotonic),
            Property::always(CORE_ASSERTIONS_HOLD, core_assertions_hold),
            Property::sometimes(SOMETIMES_COMMITTED, sometimes_committed),
            Property::sometimes(SOMETIMES_ABORTED, sometimes_aborted),
        ];
        if self.config.check_liveness {
            properties.push(Property::always(
                DECIDED_WHEN_QUIESCENT,
                decided_when_quiescent,
            ));
        }
        if self.config.external_resource {
            properties.push(Property::always(RESOURCE_CONSISTENT, resource_consistent));
        }
        if self.config.one_phase && self.config.rms == 1 {
            properties.push(Property::always(
                ONE_PHASE_AT_ITS_RM_ONLY,
                one_phase_at_its_rm_only,
            ));
        }
        properties
    }

    fn within_boundary(&self, state: &SystemState) -> bool {
        state
            .actor_storages
            .iter()
            .flatten()
            .all(|disk| disk.highest_round <= self.config.rounds)
    }
}

/// Which in-flight frames can never change anything again, so that states differing only
/// in them are one state (a sound reduction: no property reads the network).
///
/// * Frames to the client once it finished: it drops messages about transactions it does
///   not hold, and it neither crashes nor begins the transaction again.
/// * Phase2b and Decision messages to a node whose log holds the outcome: the node ignores
///   them once it knows the outcome, and the log makes it known after any restart.
/// * Prepare, Resolve and Phase2a to such a node, when their sender is the finished client
///   or a node whose log holds the outcome: the node's only answer is a Decision to that
///   sender, itself a dead frame.
struct DeadLetters {
    decided_durably: Vec<bool>,
    client_finished: bool,
    client: usize,
}

impl DeadLetters {
    fn of(config: &ModelConfig, state: &SystemState) -> DeadLetters {
        let mut decided_durably: Vec<bool> = state
            .actor_storages
            .iter()
            .map(|disk| disk.as_ref().is_some_and(|disk| disk.outcome.is_some()))
            .collect();
        decided_durably.resize(state.actor_states.len(), false);
        let client_finished = client_state(state).is_some_and(|client| client.result.is_some());
        DeadLetters {
            decided_durably,
            client_finished,
            client: config.client_index(),
        }
    }

    /// True if a message from actor `sender` has no effect (sent from a decided node or
    /// the finished client, its reply would be dead too).
    fn answer_is_dead(&self, sender: usize) -> bool {
        if sender == self.client {
            self.client_finished
        } else {
            self.decided_durably.get(sender).copied().unwrap_or(false)
        }
    }

    fn is_dead(&self, envelope: &Envelope<Frame>) -> bool {
        let destination = usize::from(envelope.dst);
        let sender = usize::from(envelope.src);
        if destination == self.client {
            return self.client_finished;
        }
        if !self
            .decided_durably
            .get(destination)
            .copied()
            .unwrap_or(false)
        {
            return false;
        }
        envelope.msg.0.iter().all(|message| match message {
            Message::Phase2b { .. } | Message::Decision { .. } => true,
            Message::Prepare { .. } | Message::Resolve { .. } | Message::Phase2a { .. } => {
                self.answer_is_dead(sender)
            }
            _ => false,
        })
    }
}

/// Records the Phase2b messages of an outgoing frame in the history.
fn record_phase2b(
    config: &ModelConfig,
    history: &History,
    envelope: Envelope<&Frame>,
) -> Option<History> {
    let acceptor = config.node_of(envelope.src);
    let mut added: Option<BTreeSet<(NodeId, Ballot, Vote, NodeId)>> = None;
    for message in envelope.msg.0.iter() {
        if let Message::Phase2b {
            rm, ballot, value, ..
        } = message
        {
            let entry = (*rm, *ballot, *value, acceptor);
            if !history.phase2b.contains(&entry) {
                added
                    .get_or_insert_with(|| (*history.phase2b).clone())
                    .insert(entry);
            }
        }
    }
    added.map(|phase2b| History {
        phase2b: Cached::new(phase2b),
    })
}

/// The data nodes' states with their ids.
pub fn node_states(state: &SystemState) -> impl Iterator<Item = (NodeId, &NodeState)> {
    state
        .actor_states
        .iter()
        .filter_map(|actor| match actor.as_ref() {
            ActorState::Node(node) => Some((node.node.id(), &**node)),
            ActorState::Client(_) | ActorState::Down => None,
        })
}

/// The client's state.
pub fn client_state(state: &SystemState) -> Option<&ClientState> {
    state
        .actor_states
        .iter()
        .find_map(|actor| match actor.as_ref() {
            ActorState::Client(client) => Some(&**client),
            ActorState::Node(_) | ActorState::Down => None,
        })
}

/// What every observer (node or client) decided, now or at any earlier time: the first
/// outcome each node knew is kept with its disk, so a crash does not hide it.
pub fn decided_outcomes(model: &CommitModel, state: &SystemState) -> BTreeMap<NodeId, Outcome> {
    let mut outcomes: BTreeMap<NodeId, Outcome> = state
        .actor_storages
        .iter()
        .enumerate()
        .filter_map(|(index, disk)| {
            let decided = disk.as_ref()?.observed.decided?;
            Some((model.config.node_of(Id::from(index)), decided))
        })
        .collect();
    if let Some(outcome) = client_state(state)
        .and_then(|client| client.result)
        .and_then(ClientResult::outcome)
    {
        outcomes.insert(super::config::CLIENT_ID, outcome);
    }
    outcomes
}

/// The values chosen per instance: (ballot, value) pairs that F+1 acceptors sent a
/// Phase2b for.
pub fn chosen_values(
    model: &CommitModel,
    state: &SystemState,
) -> BTreeMap<NodeId, Vec<(Ballot, Vote)>> {
    let quorum = model.config.f() as usize + 1;
    let mut votes: BTreeMap<(NodeId, Ballot, Vote), usize> = BTreeMap::new();
    for (rm, ballot, value, _) in state.history.phase2b.iter() {
        *votes.entry((*rm, *ballot, *value)).or_default() += 1;
    }
    let mut chosen: BTreeMap<NodeId, Vec<(Ballot, Vote)>> = BTreeMap::new();
    for ((rm, ballot, value), count) in votes {
        if count >= quorum {
            chosen.entry(rm).or_default().push((ballot, value));
        }
    }
    chosen
}

fn violations(state: &SystemState) -> impl Iterator<Item = &Violation> {
    let nodes = state
        .actor_storages
        .iter()
        .flatten()
        .flat_map(|disk| disk.observed.violations.iter());
    let client = client_state(state)
        .into_iter()
        .flat_map(|client| client.violations.iter());
    nodes.chain(client)
}

fn tc_consistent(model: &CommitModel, state: &SystemState) -> bool {
    invariants::tc_consistent(&decided_outcomes(model, state))
}

fn one_value_chosen(model: &CommitModel, state: &SystemState) -> bool {
    chosen_values(model, state)
        .values()
        .all(|chosen| invariants::one_value_chosen(chosen))
}

fn decisions_stable(_: &CommitModel, state: &SystemState) -> bool {
    let txn = model_txn();
    // A decision held only in memory may be lost in a crash (the observations flag a lost
    // durable one); a known decision must never differ from the first one.
    let unchanged = node_states(state).all(|(_, node)| {
        let known = node.node.known_outcome(txn);
        known.is_none() || invariants::decision_stable(node.disk.observed.decided, known)
    });
    unchanged
        && !violations(state).any(|violation| matches!(violation, Violation::DecisionChanged(_)))
}

fn one_phase_at_its_rm_only(model: &CommitModel, state: &SystemState) -> bool {
    let config = model.config();
    let txn = model_txn();
    let participants = config.participants();
    let client = config.client_index();
    let only_to_the_rm_or_client = state.network.iter_all().all(|envelope| {
        let destination = usize::from(envelope.dst);
        destination == client || participants.contains(&config.node_of(envelope.dst))
    });
    let others_know_nothing = node_states(state)
        .filter(|(id, _)| !participants.contains(id))
        .all(|(_, node)| {
            node.node.known_outcome(txn).is_none() && node.node.undecided().next().is_none()
        });
    only_to_the_rm_or_client && others_know_nothing
}

fn acceptor_ballots_monotonic(_: &CommitModel, state: &SystemState) -> bool {
    !violations(state).any(|violation| {
        matches!(
            violation,
            Violation::AcceptorRegressed(_) | Violation::AcceptorMalformed(_)
        )
    })
}

fn core_assertions_hold(_: &CommitModel, state: &SystemState) -> bool {
    !violations(state).any(|violation| matches!(violation, Violation::Assertion(_)))
}

fn sometimes_committed(model: &CommitModel, state: &SystemState) -> bool {
    decided_outcomes(model, state)
        .values()
        .any(|outcome| *outcome == Outcome::Commit)
}

fn sometimes_aborted(model: &CommitModel, state: &SystemState) -> bool {
    decided_outcomes(model, state)
        .values()
        .any(|outcome| *outcome == Outcome::Abort)
}

/// Every participant and the client know the outcome.
pub fn everyone_decided(model: &CommitModel, state: &SystemState) -> bool {
    let txn = model_txn();
    let participants: BTreeSet<NodeId> = model.config.participants().into_iter().collect();
    let rms_decided = node_states(state)
        .filter(|(id, _)| participants.contains(id))
        .all(|(_, node)| node.node.known_outcome(txn).is_some());
    let client_decided = client_state(state).is_some_and(|client| client.result.is_some());
    rms_decided && client_decided
}

fn resource_consistent(model: &CommitModel, state: &SystemState) -> bool {
    let Some(service) = model.config.service_rm() else {
        return true;
    };
    let Some(index) = model.config.actor_of(service).map(usize::from) else {
        return true;
    };
    let held = state
        .actor_storages
        .get(index)
        .and_then(Option::as_ref)
        .and_then(|disk| disk.resource.get(&model_txn()).cloned());
    let decided: BTreeSet<Outcome> = decided_outcomes(model, state).into_values().collect();
    let opposite = match held {
        Some(ServiceHold::Committed { .. }) => decided.contains(&Outcome::Abort),
        Some(ServiceHold::Refused | ServiceHold::RolledBack) => decided.contains(&Outcome::Commit),
        Some(ServiceHold::Prepared { .. }) | None => false,
    };
    if opposite {
        return false;
    }
    if !model.config.check_liveness || !everyone_decided(model, state) {
        return true;
    }
    let settled = match held {
        Some(ServiceHold::Committed { .. }) => true,
        Some(ServiceHold::Prepared { .. }) => false,
        _ => !decided.contains(&Outcome::Commit),
    };
    settled || !model.is_quiescent(state)
}

fn decided_when_quiescent(model: &CommitModel, state: &SystemState) -> bool {
    everyone_decided(model, state) || !model.is_quiescent(state)
}
