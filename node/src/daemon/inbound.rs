//! Who may speak to this node: frames from peers pass the gate (members, client sessions,
//! strangers), refusals are counted and answered, new connections are admitted or closed,
//! and client peers are remembered so that answers can reach them.

use super::faults::Crossing;
use super::{EventLoop, CLIENT_PEERS_MAX};
use crate::admission::ConnectionVerdict;
use crate::auth::Standing;
use crate::links::{DoorRefusal, RefusedFrame};
use crate::warn_limited;
use dtx_protocol::{Input, Message, MessageKind, NodeId, Refusal, TxnId};
use libp2p::PeerId;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// Messages only data nodes may send (RM, acceptor, leader and deadlock-victim roles).
/// From any other peer they are dropped before the protocol sees them. Clients send their
/// own requests (Prepare, Resolve, Execute, AbortExecution), which the protocol checks
/// against the transaction's client id, deadlock probes (which travel via the waiting
/// transaction's client) and their own gossip heartbeats.
pub fn only_from_data_nodes(kind: MessageKind) -> bool {
    matches!(
        kind,
        MessageKind::Phase2a
            | MessageKind::Phase2b
            | MessageKind::Phase1a
            | MessageKind::Phase1b
            | MessageKind::Reject
            | MessageKind::Decision
            | MessageKind::VoteNotice
            | MessageKind::Executed
            | MessageKind::ExecutionAborted
            | MessageKind::Victim
    )
}

/// Learned client peers, bounded (oldest forgotten first).
#[derive(Debug, Default)]
pub(super) struct ClientPeers {
    pub(super) peers: BTreeMap<NodeId, PeerId>,
    order: VecDeque<NodeId>,
}

impl ClientPeers {
    fn learn(&mut self, id: NodeId, peer: PeerId) {
        if self.peers.insert(id, peer).is_none() {
            self.order.push_back(id);
            while self.order.len() > CLIENT_PEERS_MAX {
                if let Some(oldest) = self.order.pop_front() {
                    self.peers.remove(&oldest);
                }
            }
        }
    }
}

impl EventLoop {
    /// Frames refused at the door: counted, and answered (at most once per interval per
    /// peer) so that the client can tell its application why.
    pub(super) fn on_refused(&mut self, refused: RefusedFrame) {
        let counters = &mut self.admission.counters;
        let kind = match refused.reason {
            DoorRefusal::Unauthenticated => {
                counters.refused_unauthenticated_messages += refused.messages as u64;
                self.admission.on_refused_unauthenticated(
                    &refused.peer,
                    refused.read.then_some(refused.messages),
                    Instant::now(),
                );
                "unauthenticated"
            }
            DoorRefusal::RateLimited => {
                counters.refused_rate_limited_messages += refused.messages as u64;
                "rate limited"
            }
        };
        warn_limited!(self.warnings, "refused-frame", peer = %refused.peer, reason = kind,
            messages = refused.messages, "refused frames at the door");
        if !self.admission.may_answer(refused.peer, Instant::now()) {
            return;
        }
        self.answer_refusal(refused.peer, refused.reason, &refused.txns);
    }

    /// Tells `peer` that its messages about `txns` were refused.
    fn answer_refusal(&mut self, peer: PeerId, reason: DoorRefusal, txns: &[TxnId]) {
        let reason = match reason {
            DoorRefusal::Unauthenticated => Refusal::Unauthenticated,
            DoorRefusal::RateLimited => Refusal::RateLimited,
        };
        let answers: Vec<Message> = txns
            .iter()
            .map(|txn| Message::Refused { txn: *txn, reason })
            .collect();
        if answers.is_empty() {
            return;
        }
        self.metrics.messages_sent += answers.len() as u64;
        self.links.send(&mut self.swarm, peer, Vec::new(), answers);
    }

    /// A new connection: visitors are kept out of the liveness topic (its messages are
    /// for data nodes) and admitted, or the connection is closed.
    pub(super) fn on_connected(&mut self, peer: PeerId, connection: libp2p::swarm::ConnectionId) {
        if self.gate.is_member(&peer) {
            return;
        }
        self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
        match self
            .admission
            .on_connected(peer, &self.gate, Instant::now())
        {
            ConnectionVerdict::Keep { evict } => {
                for evicted in evict {
                    let _ = self.swarm.disconnect_peer_id(evicted);
                }
            }
            ConnectionVerdict::Close => {
                warn_limited!(self.warnings, "visitors-full", %peer,
                    "too many visitors connected; connection closed");
                self.swarm.close_connection(connection);
            }
        }
    }

    /// Messages from `peer`: fault injection first (a dropped message is as if lost on
    /// the wire, a delayed one comes back through [`EventLoop::accept_request`] when
    /// due), then the gate and the protocol.
    pub(super) fn on_request(&mut self, peer: PeerId, messages: Vec<Message>) {
        let messages = if self.faults.active {
            let member = self.config.member_of(&peer).is_some();
            let crossing = Crossing::In { peer };
            self.faults
                .filter(Instant::now(), crossing, member, messages)
        } else {
            messages
        };
        if messages.is_empty() {
            return;
        }
        self.accept_request(peer, messages);
    }

    /// Messages from `peer` past fault injection: the gate decides who may say what,
    /// the protocol gets the rest.
    pub(super) fn accept_request(&mut self, peer: PeerId, messages: Vec<Message>) {
        match self.gate.standing(&peer) {
            Standing::Member => {}
            Standing::Client(user) => {
                self.admission.on_frame(&peer, Instant::now());
                if let Some(user) = user {
                    self.grant(&peer, &user);
                }
            }
            Standing::Unauthenticated => {
                // Request-response frames arrive here without passing the stream door.
                let mut txns: Vec<TxnId> = messages.iter().map(Message::txn).collect();
                txns.sort();
                txns.dedup();
                txns.truncate(crate::links::REFUSED_TXNS_MAX);
                return self.on_refused(RefusedFrame {
                    peer,
                    reason: DoorRefusal::Unauthenticated,
                    txns,
                    messages: messages.len(),
                    read: true,
                });
            }
        }
        let from = self.config.node_id_of(&peer);
        let member = self.config.member_of(&peer).is_some();
        if !member {
            self.clients.learn(from, peer);
        }
        let mut accepted = Vec::with_capacity(messages.len());
        for message in messages {
            if !member && only_from_data_nodes(message.kind()) {
                tracing::warn!(
                    %peer, kind = %message.kind(), txn = %message.txn(),
                    "dropped: peer is not a data node of this cluster"
                );
                continue;
            }
            accepted.push(message);
        }
        if accepted.is_empty() {
            return;
        }
        self.metrics.messages_received += accepted.len() as u64;
        let now = self.clock.now();
        self.node.handle(
            now,
            Input::Receive {
                from,
                messages: accepted,
            },
        );
    }
}
