//! The outbox: what a step staged (records, sends, self-addressed messages) becomes
//! outputs, and every send waits for the persists issued before it (persist before send).
//!
//! The rule is carried by the data, not by the call sites:
//! - a staged record says whether the sends staged after it wait for it ([`Gates`]);
//! - a message says what it waits for before it may leave ([`WaitsFor`], decided by
//!   [`waits_for`] from its destination and kind alone);
//! - a held message carries the persist token it waits for, and `on_persisted` releases
//!   it only once that token is durable.
//!
//! Every record gates sends but one: an external resource's acknowledgment
//! (`ResourceDone`), which no message reveals (a crash before it is durable only makes
//! the node ask the resource again). [`Gates::Nothing`] is also there so that the bypass of
//! WHITEPAPER §9.6 can be written as one variant: a decision's `Outcome` record need not
//! delay the sends that follow it, because the acceptors already hold the decision, so a
//! crash before the record is durable loses nothing that a Phase1a would not find again.
//! It is not switched on: the model checker's state counts pin today's behaviour.

use super::{Node, Output, PersistToken, ResourceRequest};
use crate::message::{Envelope, Message};
use crate::record::Record;
use crate::types::NodeId;

/// Whether the sends staged after a record must wait until it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Gates {
    /// Sends staged after it (in the same step or later) wait for it: the stable-storage
    /// rule of Gray & Lamport (a vote, a promise or an acceptance is durable before any
    /// message that reveals it leaves).
    Sends,
    /// Nothing waits for it: a record whose loss in a crash no peer can observe (the
    /// outcome-record bypass of WHITEPAPER §9.6, not used for it today; used for an
    /// external resource's acknowledgment, which no message reveals).
    Nothing,
}

/// A record staged by this step, with what it holds back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct StagedRecord {
    /// The record.
    pub(super) record: Record,
    /// Whether later sends wait for it.
    pub(super) gates: Gates,
}

/// What a message waits for before it may leave this node (or, sent to itself, take
/// effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum WaitsFor {
    /// Every persist issued before it whose records gate sends ([`Gates::Sends`]).
    GatingPersists,
    /// Nothing: it may act at once.
    Nothing,
}

/// The persist-before-send rule for one message from `me` to `to`.
///
/// A message to a peer waits: it may reveal state the peer acts on. A node learning from
/// itself obeys the rule too: its own acceptor's Phase2b counts toward a quorum, and its
/// own Decision is applied, only once what it rests on is durable, or a crash could
/// un-choose a value this node already acted on. Proposals and promises between roles of
/// one node go at once: their effects reach others only through sends that wait for the
/// same log.
pub(super) fn waits_for(me: NodeId, to: NodeId, message: &Message) -> WaitsFor {
    if to != me || matches!(message, Message::Phase2b { .. } | Message::Decision { .. }) {
        WaitsFor::GatingPersists
    } else {
        WaitsFor::Nothing
    }
}

/// Something waiting for a persist to complete.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Held {
    /// A message to a peer.
    Remote(Envelope),
    /// A message to this node itself whose effect (a decision) must rest on durable state.
    Local(Message),
    /// A request to the external resource (a prepare rests on its `ResourcePrepare`
    /// record, a commit or rollback on the outcome's record).
    Resource(ResourceRequest),
}

impl Node {
    /// Stages a record for this step's Persist; `gates` says whether the sends staged
    /// after it wait until it is durable.
    pub(super) fn stage_record(&mut self, record: Record, gates: Gates) {
        self.staged_records.push(StagedRecord { record, gates });
    }

    /// Releases, in the order they were held, the sends and self-addressed messages whose
    /// persists are now all durable.
    pub(super) fn on_persisted(&mut self, token: PersistToken) {
        // The driver's own word, not a peer's: a token this node never issued is a bug in
        // the runtime, and releasing sends on it would break persist before send.
        assert!(token <= self.issued_token, "persisted a token never issued");
        self.persisted_token = self.persisted_token.max(token);
        while let Some((needed, _)) = self.held.front() {
            if *needed > self.persisted_token {
                break;
            }
            match self.held.pop_front() {
                Some((_, Held::Remote(envelope))) => self.outputs.push_back(Output::Send(envelope)),
                Some((_, Held::Local(message))) => self.local.push_back(message),
                Some((_, Held::Resource(request))) => {
                    self.outputs.push_back(Output::Resource(request))
                }
                None => {}
            }
        }
    }

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        let me = self.config.id;
        match waits_for(me, to, &message) {
            WaitsFor::GatingPersists if to != me => {
                self.staged_sends.entry(to).or_default().push(message);
            }
            WaitsFor::GatingPersists => self.staged_local_durable.push(message),
            // Only a message to this node itself waits for nothing (see `waits_for`).
            WaitsFor::Nothing => self.local.push_back(message),
        }
    }

    /// Turns what this step staged into outputs: one Persist for its records, and sends
    /// held back until every Persist issued so far that gates sends is durable.
    pub(super) fn flush(&mut self) {
        if !self.staged_records.is_empty() {
            self.issued_token += 1;
            let staged = core::mem::take(&mut self.staged_records);
            if staged.iter().any(|staged| staged.gates == Gates::Sends) {
                self.gating_token = self.issued_token;
            }
            let records = staged.into_iter().map(|staged| staged.record).collect();
            self.outputs.push_back(Output::Persist {
                token: self.issued_token,
                records,
            });
        }
        let needed = self.gating_token;
        let durable = self.persisted_token >= needed;
        for message in core::mem::take(&mut self.staged_local_durable) {
            if durable {
                self.local.push_back(message);
            } else {
                self.held.push_back((needed, Held::Local(message)));
            }
        }
        for request in core::mem::take(&mut self.resource.staged) {
            if durable {
                self.outputs.push_back(Output::Resource(request));
            } else {
                self.held.push_back((needed, Held::Resource(request)));
            }
        }
        for (to, messages) in core::mem::take(&mut self.staged_sends) {
            let envelope = Envelope { to, messages };
            if durable {
                self.outputs.push_back(Output::Send(envelope));
            } else {
                self.held.push_back((needed, Held::Remote(envelope)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Gates;
    use crate::message::{Envelope, Message};
    use crate::node::{Input, Node, NodeConfig, Output};
    use crate::record::Record;
    use crate::types::{Ballot, NodeId, Time, TxnId};
    use crate::{Cluster, Member};

    /// A node of a three-member cluster without a failure detector, so that nothing but
    /// what a test stages reaches the outbox.
    fn node() -> Node {
        let members = (1..=3)
            .map(|index| Member {
                id: NodeId(index),
                name: format!("n{index}"),
            })
            .collect();
        let cluster = Cluster::new(members, 1).unwrap();
        let mut config = NodeConfig::new(NodeId(1), cluster, 1);
        config.detector = None;
        Node::new(config)
    }

    fn message() -> Message {
        Message::Reject {
            txn: TxnId {
                client: NodeId(100),
                sequence: 1,
            },
            promised: Ballot::ZERO,
        }
    }

    fn outputs(node: &mut Node) -> Vec<Output> {
        core::iter::from_fn(|| node.poll_output()).collect()
    }

    fn is_send(output: &Output) -> bool {
        matches!(output, Output::Send(_))
    }

    /// Stages one record and one send to node 2, as a step does, and flushes them.
    fn stage_record_and_send(node: &mut Node, round: u32) {
        node.stage_record(Record::LeaderRound { round }, Gates::Sends);
        node.send(NodeId(2), message());
        node.flush();
    }

    #[test]
    fn send_held_for_a_persist_is_released_only_after_that_persisted() {
        let mut node = node();
        stage_record_and_send(&mut node, 1);
        let before = outputs(&mut node);
        assert!(matches!(before[..], [Output::Persist { token: 1, .. }]));

        node.handle(Time::ZERO, Input::Persisted { token: 1 });
        let after = outputs(&mut node);
        let expected = Envelope {
            to: NodeId(2),
            messages: vec![message()],
        };
        assert!(matches!(&after[..], [Output::Send(envelope)] if *envelope == expected));
    }

    #[test]
    fn persisting_an_earlier_token_does_not_release_a_later_send() {
        let mut node = node();
        node.stage_record(Record::LeaderRound { round: 1 }, Gates::Sends);
        node.flush();
        stage_record_and_send(&mut node, 2);
        let persists = outputs(&mut node);
        assert_eq!(persists.len(), 2);
        assert!(!persists.iter().any(is_send));

        node.handle(Time::ZERO, Input::Persisted { token: 1 });
        assert!(!outputs(&mut node).iter().any(is_send));

        node.handle(Time::ZERO, Input::Persisted { token: 2 });
        assert_eq!(outputs(&mut node).iter().filter(|o| is_send(o)).count(), 1);
    }

    #[test]
    fn send_with_every_persist_durable_goes_at_once() {
        let mut node = node();
        node.send(NodeId(2), message());
        node.flush();
        assert!(matches!(outputs(&mut node)[..], [Output::Send(_)]));
    }

    #[test]
    fn own_decision_waits_for_the_persist_before_it() {
        let mut node = node();
        node.stage_record(Record::LeaderRound { round: 1 }, Gates::Sends);
        node.send(NodeId(1), message());
        let decision = Message::Decision {
            txn: TxnId {
                client: NodeId(100),
                sequence: 1,
            },
            outcome: crate::types::Outcome::Abort,
            reads: None,
        };
        node.send(NodeId(1), decision);
        node.flush();
        // The Reject went to the local queue at once; the Decision is held.
        assert_eq!(node.local.len(), 1);
        assert_eq!(node.held.len(), 1);
        node.on_persisted(1);
        assert!(node.held.is_empty());
        assert_eq!(node.local.len(), 2);
    }

    #[test]
    fn a_record_that_gates_nothing_does_not_hold_a_send() {
        let mut node = node();
        node.stage_record(Record::LeaderRound { round: 1 }, Gates::Nothing);
        node.send(NodeId(2), message());
        node.flush();
        let outputs = outputs(&mut node);
        assert!(matches!(
            outputs[..],
            [Output::Persist { token: 1, .. }, Output::Send(_)]
        ));
    }

    #[test]
    fn a_record_that_gates_nothing_still_leaves_a_send_held_by_an_earlier_persist() {
        let mut node = node();
        node.stage_record(Record::LeaderRound { round: 1 }, Gates::Sends);
        node.flush();
        node.stage_record(Record::LeaderRound { round: 2 }, Gates::Nothing);
        node.send(NodeId(2), message());
        node.flush();
        assert!(!outputs(&mut node).iter().any(is_send));

        node.handle(Time::ZERO, Input::Persisted { token: 1 });
        assert_eq!(outputs(&mut node).iter().filter(|o| is_send(o)).count(), 1);
    }
}
