//! Membership changes at run time: [`Node::set_cluster`] (members joining) and draining
//! (`dtx drain`), where the node finishes the transactions it has and refuses new ones,
//! so that it can leave without disturbing anything in flight.
//!
//! A draining RM answers a Prepare (or a first Execute) of a transaction it has not seen
//! with Aborted and [`AbortReason::Draining`], without recording anything — the same
//! unrecorded refusal as backpressure, safe because no Phase2a was sent. It keeps serving
//! every transaction it already knows as RM, acceptor or recovery leader. Its heartbeats
//! carry [`Role::Draining`], so clients leave it out of new acceptor sets.
//!
//! Once nothing is open the runtime calls [`Node::leave`]: its heartbeats then say
//! [`Role::Left`], which spreads like any heartbeat (the newest counter wins), so the other
//! members do not suspect its silence after it exits, and clients fail fast on its keys
//! ([`crate::BeginError::ParticipantLeft`]) instead of waiting for it. A restart ends it:
//! the node comes back with a higher incarnation as a data node.

use super::Node;
use crate::detector::Role;
use crate::message::AbortReason;
use crate::types::{NodeId, TxnId};

impl Node {
    /// Starts (or stops) draining: new transactions are refused, known ones finish.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        if self.quarantine.is_some() {
            // The heartbeats keep saying Quarantined; clearing picks the role then.
            return;
        }
        if let Some(detector) = self.detector.as_mut() {
            detector.set_role(if draining {
                Role::Draining
            } else {
                Role::DataNode
            });
        }
    }

    /// Replaces the membership with `cluster`, which must still contain this node
    /// (members joined at run time; `dtx-node` only accepts appended members, F
    /// unchanged). Transactions in flight keep the acceptors in their descriptors, so
    /// nothing decided or deciding is affected; new descriptors may name the newcomers.
    /// Returns false, changing nothing, if this node is not a member of `cluster`.
    pub fn set_cluster(&mut self, cluster: crate::Cluster) -> bool {
        if !cluster.is_member(self.config.id) {
            return false;
        }
        self.config.cluster = cluster;
        true
    }

    /// Announces that this node leaves (drained, about to stop): its next heartbeat, due
    /// at once, and every later one says [`Role::Left`]. It keeps refusing new
    /// transactions. Call it once [`Node::open_transactions`] is zero; before that the
    /// others would stop suspecting a node that still has a part in open transactions.
    pub fn leave(&mut self) {
        self.draining = true;
        if let Some(detector) = self.detector.as_mut() {
            detector.set_role(Role::Left);
        }
    }

    /// True once [`Node::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.detector
            .as_ref()
            .is_some_and(|detector| detector.role() == Role::Left)
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Transactions this node still has a part in: undecided ones (as RM, acceptor or
    /// leader) and interactive executions not yet prepared. A draining node may leave once
    /// this is zero.
    pub fn open_transactions(&self) -> usize {
        self.txns.len() + self.executions.len()
    }

    pub(super) fn refuse_while_draining(&mut self, from: NodeId, txn: TxnId) {
        // A retry is refused again.
        let reason = AbortReason::Draining {
            node: self.config.id,
        };
        self.refuse_prepare(from, txn, reason);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::detector::{DetectorConfig, FailureDetector, Heartbeat, Role};
    use crate::message::{AbortReason, Message};
    use crate::node::{Input, Node, NodeConfig, Output};
    use crate::types::{Key, NodeId, Time, Value, Vote};
    use crate::{Client, ClientConfig, Cluster, Member, Operation, Record, TxnResult};

    fn cluster() -> Cluster {
        cluster_of(3)
    }

    fn cluster_of(nodes: u64) -> Cluster {
        let members = (1..=nodes)
            .map(|index| Member {
                id: NodeId(index),
                name: format!("n{index}"),
            })
            .collect();
        Cluster::new(members, 1).unwrap()
    }

    fn client() -> Client {
        // Paxos Commit: these tests are about a participant's vote (a one-phase
        // transaction's refusal is a recorded decision instead).
        Client::new(ClientConfig {
            detector: None,
            one_phase: false,
            ..ClientConfig::new(NodeId(100), cluster(), 1)
        })
    }

    fn write_on_n1(client: &mut Client) -> Message {
        let operation = Operation::Write {
            key: Key::new("n1/a"),
            value: Value::new(b"1".to_vec()),
        };
        client.begin(Time::ZERO, vec![operation]).unwrap();
        let envelope = client.poll_output().unwrap();
        assert_eq!(envelope.to, NodeId(1));
        envelope.messages.into_iter().next().unwrap()
    }

    /// Drains a node's outputs: (records persisted, messages sent), persists acknowledged.
    fn outputs(node: &mut Node) -> (Vec<Record>, Vec<(NodeId, Message)>) {
        let (mut records, mut sent) = (Vec::new(), Vec::new());
        while let Some(output) = node.poll_output() {
            match output {
                Output::Persist {
                    token,
                    records: more,
                } => {
                    records.extend(more);
                    node.handle(Time::ZERO, Input::Persisted { token });
                }
                Output::Send(envelope) => sent.extend(
                    envelope
                        .messages
                        .into_iter()
                        .map(|message| (envelope.to, message)),
                ),
                // These nodes keep the built-in store.
                Output::Resource(_) => {}
            }
        }
        (records, sent)
    }

    #[test]
    fn a_draining_rm_refuses_a_new_prepare_with_the_reason_and_records_nothing() {
        let mut node = Node::new(NodeConfig::new(NodeId(1), cluster(), 7));
        let _ = outputs(&mut node);
        node.set_draining(true);
        let mut client = client();
        let prepare = write_on_n1(&mut client);
        node.handle(
            Time::ZERO,
            Input::Receive {
                from: NodeId(100),
                messages: vec![prepare],
            },
        );
        let (records, sent) = outputs(&mut node);
        assert!(
            !records
                .iter()
                .any(|record| matches!(record, Record::Vote { .. })),
            "nothing about the refused transaction is recorded: {records:?}"
        );
        let notice = sent
            .into_iter()
            .find(|(to, message)| {
                *to == NodeId(100) && matches!(message, Message::VoteNotice { .. })
            })
            .unwrap();
        let Message::VoteNotice { vote, reason, .. } = &notice.1 else {
            unreachable!()
        };
        assert_eq!(*vote, Vote::Aborted);
        assert_eq!(*reason, Some(AbortReason::Draining { node: NodeId(1) }));
        assert_eq!(node.open_transactions(), 0);
        // The client reports the reason.
        client.handle(
            Time::ZERO,
            Input::Receive {
                from: NodeId(1),
                messages: vec![notice.1],
            },
        );
        let finished = client.poll_event().unwrap();
        assert_eq!(
            finished.result,
            TxnResult::Aborted {
                reason: Some(AbortReason::Draining { node: NodeId(1) })
            }
        );
    }

    #[test]
    fn a_transaction_prepared_before_draining_keeps_its_vote_and_state() {
        let mut node = Node::new(NodeConfig::new(NodeId(1), cluster(), 7));
        let _ = outputs(&mut node);
        let mut client = client();
        let prepare = write_on_n1(&mut client);
        node.handle(
            Time::ZERO,
            Input::Receive {
                from: NodeId(100),
                messages: vec![prepare.clone()],
            },
        );
        let (records, _) = outputs(&mut node);
        assert!(records
            .iter()
            .any(|record| matches!(record, Record::Vote { .. })));
        node.set_draining(true);
        assert!(node.is_draining());
        // A retried Prepare of the known transaction repeats its vote, not a refusal.
        node.handle(
            Time::ZERO,
            Input::Receive {
                from: NodeId(100),
                messages: vec![prepare],
            },
        );
        let (_, sent) = outputs(&mut node);
        assert!(!sent.iter().any(|(_, message)| matches!(
            message,
            Message::VoteNotice {
                reason: Some(AbortReason::Draining { .. }),
                ..
            }
        )));
        assert_eq!(node.open_transactions(), 1, "still in flight until decided");
    }

    #[test]
    fn draining_is_gossiped_in_the_heartbeat_role() {
        let config = DetectorConfig::default();
        let mut gossiper =
            FailureDetector::new(config.clone(), NodeId(1), Role::DataNode, 1, 1, Time::ZERO);
        gossiper.set_role(Role::Draining);
        let (_, digest) = gossiper.round(Time::ZERO, &[NodeId(2)]).unwrap();
        let mut listener =
            FailureDetector::new(config, NodeId(2), Role::DataNode, 1, 2, Time::ZERO);
        listener.merge(Time::ZERO, NodeId(1), &digest);
        assert!(listener.draining().contains(&NodeId(1)));
        let _: Vec<Heartbeat> = digest;
    }

    #[test]
    fn clients_leave_a_draining_node_out_of_new_acceptor_sets() {
        let mut client = Client::new(ClientConfig::new(NodeId(100), cluster_of(4), 1));
        // n4 says it is draining (its own word: a relay could not say it for n4).
        let draining = Heartbeat {
            node: NodeId(4),
            incarnation: 1,
            counter: 5,
            role: Role::Draining,
            load: 0,
            addresses: Default::default(),
        };
        client.handle(
            Time::ZERO,
            Input::Receive {
                from: NodeId(4),
                messages: vec![Message::Gossip {
                    heartbeats: vec![draining],
                }],
            },
        );
        client.handle(Time::ZERO, Input::Timeout);
        assert!(client.draining().contains(&NodeId(4)));
        while client.poll_output().is_some() {}
        for sequence in 0..50 {
            let operations = ["n1", "n2"]
                .iter()
                .map(|owner| Operation::Write {
                    key: Key::new(format!("{owner}/k{sequence}")),
                    value: Value::new(b"1".to_vec()),
                })
                .collect();
            let txn = client.begin(Time::ZERO, operations).unwrap();
            let acceptors = &client.descriptor(txn).unwrap().acceptors;
            assert_eq!(acceptors.len(), 3);
            assert!(!acceptors.contains(&NodeId(4)), "{acceptors:?}");
        }
    }

    /// The heartbeats n1 sends at `now` (a round due or not).
    fn gossip_of(node: &mut Node, now: Time) -> Vec<Heartbeat> {
        node.handle(now, Input::Timeout);
        let (_, sent) = outputs(node);
        sent.into_iter()
            .find_map(|(_, message)| match message {
                Message::Gossip { heartbeats } => Some(heartbeats),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_node_that_left_is_not_suspected_and_clients_fail_fast_on_its_keys() {
        let second = |seconds: u64| Time::from_micros(seconds * 1_000_000);
        let mut leaver = Node::new(NodeConfig::new(NodeId(1), cluster(), 7));
        let mut listener = FailureDetector::new(
            DetectorConfig::default(),
            NodeId(2),
            Role::DataNode,
            1,
            2,
            Time::ZERO,
        );
        // Twenty rounds of ordinary heartbeats: n2 has n1's rhythm.
        for round in 0..20 {
            let now = Time::from_micros(round * 100_000);
            let heartbeats = gossip_of(&mut leaver, now);
            listener.merge(now, NodeId(1), &heartbeats);
        }
        assert!(!leaver.has_left());
        // n1 drained and leaves: the Left heartbeat is due at once, not a round later.
        let left_at = Time::from_micros(1_950_000);
        leaver.leave();
        assert!(leaver.has_left() && leaver.is_draining());
        let heartbeats = gossip_of(&mut leaver, left_at);
        let own = heartbeats
            .iter()
            .find(|beat| beat.node == NodeId(1))
            .unwrap();
        assert_eq!(own.role, Role::Left);
        listener.merge(left_at, NodeId(1), &heartbeats);
        // Silent for a minute, n1 is not suspected; a member that merely went silent is.
        assert!(listener.left().contains(&NodeId(1)));
        assert!(listener.suspected(second(60)).is_empty());
        let mut silent = listener.clone();
        let mut alive_until_crash = heartbeats.clone();
        for beat in &mut alive_until_crash {
            beat.role = Role::DataNode;
            beat.counter += 1;
        }
        silent.merge(Time::from_micros(2_000_000), NodeId(1), &alive_until_crash);
        assert!(silent.suspected(second(60)).contains(&NodeId(1)));

        // A client hearing it fails fast on n1's keys and leaves n1 out of acceptor sets
        // (in a cluster of four, where there are three others to choose).
        let mut client = Client::new(ClientConfig::new(NodeId(100), cluster_of(4), 1));
        // (From n1 itself during its linger: a relay's word could not say n1 left.)
        client.handle(
            left_at,
            Input::Receive {
                from: NodeId(1),
                messages: vec![Message::Gossip {
                    heartbeats: heartbeats.clone(),
                }],
            },
        );
        client.handle(left_at, Input::Timeout);
        assert!(client.left().contains(&NodeId(1)));
        let on = |owner: &str| Operation::Write {
            key: Key::new(format!("{owner}/k")),
            value: Value::new(b"1".to_vec()),
        };
        assert_eq!(
            client.begin(left_at, vec![on("n1"), on("n2")]),
            Err(crate::BeginError::ParticipantLeft { node: NodeId(1) })
        );
        let txn = client.begin(left_at, vec![on("n2"), on("n3")]).unwrap();
        let acceptors = &client.descriptor(txn).unwrap().acceptors;
        assert!(!acceptors.contains(&NodeId(1)), "{acceptors:?}");
        let interactive = client.begin_interactive(left_at).unwrap();
        assert_eq!(
            client.execute(left_at, interactive, on("n1")),
            Err(crate::ExecuteError::OwnerLeft { node: NodeId(1) })
        );

        // n1 starts again: a higher incarnation, a data node, nothing left behind.
        let mut back = gossip_of(&mut leaver, second(70));
        for beat in &mut back {
            beat.incarnation += 1;
            beat.role = Role::DataNode;
        }
        listener.merge(second(70), NodeId(1), &back);
        assert!(listener.left().is_empty());
        assert!(!listener.is_suspected(second(70), NodeId(1)));
    }
}
