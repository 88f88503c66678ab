//! The outbox: what a step staged (records, sends, self-addressed messages) becomes
//! outputs, and every send waits for the persists issued before it (persist before send).

use super::{Node, Output, PersistToken};
use crate::message::{Envelope, Message};
use crate::types::NodeId;

/// Something waiting for a persist to complete.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Held {
    /// A message to a peer.
    Remote(Envelope),
    /// A message to this node itself whose effect (a decision) must rest on durable state.
    Local(Message),
}

impl Node {
    /// Releases, in the order they were held, the sends and self-addressed messages whose
    /// persists are now all durable.
    pub(super) fn on_persisted(&mut self, token: PersistToken) {
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

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
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
    pub(super) fn flush(&mut self) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
        node.staged_records.push(Record::LeaderRound { round });
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
        node.staged_records.push(Record::LeaderRound { round: 1 });
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
        node.staged_records.push(Record::LeaderRound { round: 1 });
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
}
