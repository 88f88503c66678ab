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
//!
//! This file holds the dispatch between the two kinds of actor and the stateright `Actor`
//! glue; [`state`] the state values a checker state is made of, [`node`] and [`client`]
//! the two wrappers.

mod client;
mod node;
mod state;

pub use super::cached::Cached;
pub use client::ClientActor;
pub use node::{describe_acceptor, NodeActor};
pub use state::{
    ActorState, ClientResult, ClientState, Disk, NodeState, Observed, Violation, Workload,
};

use super::config::{ModelConfig, CLIENT_ID};
use super::memo::{memoized, next_model_identity, StepInput};
use dtx_protocol::{Bugs, ClientConfig, Envelope, Input, Message, NodeConfig, Time};
use stateright::actor::{model_timeout, Actor, Id, Out};
use std::borrow::Cow;
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

/// One actor of the model.
#[derive(Clone, Debug)]
// A handful per model, built once: their size does not matter (the states are what the
// checker copies).
#[allow(clippy::large_enum_variant)]
pub enum ModelActor {
    /// A data node (RM, acceptor, learner and recovery leader).
    Node(NodeActor),
    /// The client that begins the transaction.
    Client(ClientActor),
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
        // The wait for a service's vote only postpones recovery, which the model lets
        // happen at any moment: with it, time (constant here) would never reach it.
        config.service_vote_timeout = Duration::ZERO;
        config.recovery_backoff_max = Duration::ZERO;
        config.thrifty = model.thrifty;
        // Suspicion only makes recovery start sooner; the model lets a recovery timeout
        // fire at any moment anyway, so heartbeats would add traffic and no behaviour.
        config.detector = None;
        config.bugs = bugs.clone();
        if model.service_rm() == Some(member.id) {
            config.resource = dtx_protocol::ResourceKind::External;
        }
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
    config.one_phase = model.one_phase;
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
            (ModelActor::Node(actor), ActorState::Node(node)) => {
                let next = actor.answer_resource(node, workload, o)?;
                Some(ActorState::Node(Cached::new(next)))
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

/// True if a deadline is due at [`NOW`]. Recovery and retry deadlines are (their timeouts
/// are zero); lock-wait and idle-execution deadlines are not, and the one-shot transaction
/// of the model never sets them.
fn timer_due(deadline: Option<Time>) -> bool {
    deadline.is_some_and(|deadline| deadline <= NOW)
}

/// Sets or cancels an actor's one timer as its deadline became due or stopped being due.
///
/// A timer that just fired is gone: it is set again if the deadline is still due, and
/// there is nothing to cancel. Node and client follow the same rule; only what "due"
/// means differs (the client also needs retries left).
fn keep_timer_armed(
    armed_before: bool,
    armed_after: bool,
    timer_fired: bool,
    o: &mut Out<ModelActor>,
) {
    if armed_after && (timer_fired || !armed_before) {
        o.set_timer(ModelTimer::Deadline, model_timeout());
    } else if !armed_after && armed_before && !timer_fired {
        o.cancel_timer(ModelTimer::Deadline);
    }
}

/// Puts one envelope on the network.
fn send(model: &ModelConfig, envelope: Envelope, o: &mut Out<ModelActor>) {
    if let Some(destination) = model.actor_of(envelope.to) {
        o.send(destination, Frame(Cached::new(envelope.messages)));
    }
}
