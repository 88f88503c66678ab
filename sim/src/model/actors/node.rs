//! The data-node actor: the production [`Node`] with every persist durable at once, its
//! disk rebuilt on a restart, and its decisions and acceptor states observed.

use super::{keep_timer_armed, send, timer_due, ModelActor, ModelTimer, NOW};
use super::{Cached, Disk, Frame, NodeState, Observed, Violation};
use crate::checker::ServiceHold;
use crate::model::config::{model_txn, ModelConfig};
use crate::model::panics::{clip, guarded};
use dtx_protocol::{
    invariants, AbortReason, AcceptorState, Envelope, Input, Message, Node, NodeConfig, NodeId,
    Outcome, Output, Record, ResourceRequest,
};
use stateright::actor::{model_timeout, Out};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// A data node running the production [`Node`].
#[derive(Clone, Debug)]
pub struct NodeActor {
    pub(super) config: NodeConfig,
    pub(super) model: Arc<ModelConfig>,
    pub(super) model_identity: u64,
}

impl NodeActor {
    /// A fresh node (first start) or a node rebuilt from its disk (restart after a crash).
    pub(super) fn start(&self, disk: Option<&Cached<Disk>>, o: &mut Out<ModelActor>) -> NodeState {
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
                resource_pending: Vec::new(),
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
            resource_pending: Vec::new(),
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
    pub(super) fn deliver(
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
    pub(super) fn step(
        &self,
        state: &NodeState,
        input: Input,
        timer_fired: bool,
        o: &mut Out<ModelActor>,
    ) -> Option<NodeState> {
        let mut node = state.node.clone();
        let mut records = Vec::new();
        let mut sends = Vec::new();
        let mut requests = Vec::new();
        let result = guarded(|| {
            node.handle(NOW, input);
            drain_node(&mut node, &mut records, &mut sends, &mut requests);
        });
        let mut pending = state.resource_pending.clone();
        for request in requests {
            if !pending.contains(&request) {
                pending.push(request);
            }
        }
        let mut observed = state.disk.observed.clone();
        if let Err(message) = result {
            node = state.node.clone();
            records.clear();
            sends.clear();
            pending = state.resource_pending.clone();
            observed
                .violations
                .insert(Violation::Assertion(clip(message)));
        }
        let durable_outcome =
            has_outcome_record(&state.disk.records) || has_outcome_record(&records);
        observed = self.observe(&node, durable_outcome, &observed);
        let unchanged = node == state.node
            && records.is_empty()
            && observed == state.disk.observed
            && pending == state.resource_pending;
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
        keep_timer_armed(armed_before, armed_after, timer_fired, o);
        for envelope in sends {
            send(&self.model, envelope, o);
        }
        if pending != state.resource_pending {
            offer_resource_answers(&pending, o);
        }
        Some(NodeState {
            node,
            disk,
            early_phase2b: state.early_phase2b.clone(),
            resource_pending: pending,
        })
    }

    /// The external resource takes its oldest request as one model step: its durable
    /// state changes (kept with the disk), and its answer is fed to the node.
    /// `ResourceRefuses` refuses a prepare. The resource keeps the contract: a prepare
    /// after a rollback (or commit) of the same transaction is refused, and a rollback of
    /// a transaction it does not know is remembered.
    pub(super) fn answer_resource(
        &self,
        state: &NodeState,
        choice: super::Workload,
        o: &mut Out<ModelActor>,
    ) -> Option<NodeState> {
        let (request, rest) = state.resource_pending.split_first()?;
        let mut disk: super::Disk = (*state.disk).clone();
        let input = match request {
            ResourceRequest::Prepare { txn, .. } => {
                let known = disk.resource.get(txn).cloned();
                let vote = match known {
                    Some(ServiceHold::Prepared { .. }) => Ok(()),
                    None if choice == super::Workload::ResourceAnswers => {
                        disk.resource.insert(
                            *txn,
                            ServiceHold::Prepared {
                                reserved: Vec::new(),
                            },
                        );
                        Ok(())
                    }
                    None => {
                        disk.resource.insert(*txn, ServiceHold::Refused);
                        Err(AbortReason::ServiceRefused {
                            reason: "refused".to_string(),
                        })
                    }
                    Some(_) => Err(AbortReason::ServiceRefused {
                        reason: "already finished".to_string(),
                    }),
                };
                Input::ResourceVoted { txn: *txn, vote }
            }
            ResourceRequest::Finish { txn, outcome } => {
                let known = disk.resource.get(txn).cloned();
                let next = match (outcome, known) {
                    (Outcome::Commit, Some(ServiceHold::Prepared { reserved })) => {
                        Some(ServiceHold::Committed { reserved })
                    }
                    (Outcome::Abort, Some(ServiceHold::Committed { .. })) => None,
                    (Outcome::Abort, _) => Some(ServiceHold::RolledBack),
                    // Commit of what it never prepared: the service cannot; the property
                    // "resource consistent with the outcome" shows it.
                    (Outcome::Commit, _) => None,
                };
                if let Some(next) = next {
                    disk.resource.insert(*txn, next);
                }
                Input::ResourceDone {
                    txn: *txn,
                    outcome: *outcome,
                }
            }
            ResourceRequest::ListPrepared => Input::ResourceHolds {
                prepared: disk
                    .resource
                    .iter()
                    .filter(|(_, hold)| matches!(hold, ServiceHold::Prepared { .. }))
                    .map(|(txn, _)| *txn)
                    .collect(),
            },
        };
        let refusing_a_prepare = matches!(request, ResourceRequest::Prepare { .. })
            && choice == super::Workload::ResourceRefuses;
        if choice == super::Workload::ResourceRefuses && !refusing_a_prepare {
            return None;
        }
        let disk = if disk == *state.disk {
            state.disk.clone()
        } else {
            let disk = Cached::new(disk);
            o.save(disk.clone());
            disk
        };
        let answered = NodeState {
            node: state.node.clone(),
            disk,
            early_phase2b: state.early_phase2b.clone(),
            resource_pending: rest.to_vec(),
        };
        let next = self.step(&answered, input, false, o);
        let next = next.unwrap_or(answered);
        offer_resource_answers(&next.resource_pending, o);
        Some(next)
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

/// Offers the resource's possible answers to its oldest pending request (none left: no
/// offer). A prepare may be answered or refused; anything else is answered.
fn offer_resource_answers(pending: &[ResourceRequest], o: &mut Out<ModelActor>) {
    let choices = match pending.first() {
        None => Vec::new(),
        Some(ResourceRequest::Prepare { .. }) => vec![
            super::Workload::ResourceAnswers,
            super::Workload::ResourceRefuses,
        ],
        Some(_) => vec![super::Workload::ResourceAnswers],
    };
    o.choose_random("resource", choices);
}

/// Runs the node's outputs to completion: every persist is durable at once.
fn drain_node(
    node: &mut Node,
    records: &mut Vec<Record>,
    sends: &mut Vec<Envelope>,
    requests: &mut Vec<ResourceRequest>,
) {
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
            // The external resource answers later, as a model step of its own.
            Output::Resource(request) => requests.push(request),
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
