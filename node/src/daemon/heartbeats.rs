//! Heartbeat routing: the protocol's gossip digests to data nodes are published once per
//! pass on the liveness topic (point to point as a fallback), and digests heard on the
//! topic are fed to the protocol; the node's listen addresses ride in its heartbeats.

use super::faults::Crossing;
use super::EventLoop;
use crate::network::heartbeat_address;
use dtx_protocol::{encode, Input, Message, NodeId};
use libp2p::gossipsub;
use std::time::Instant;

impl EventLoop {
    /// Sends protocol messages; heartbeat gossip to data nodes is set aside to be
    /// published once on the liveness topic instead.
    pub(super) fn route(&mut self, to: NodeId, messages: Vec<Message>) {
        if self.config.node(to).is_none() {
            return self.outbox.push(to, messages);
        }
        let mut others = Vec::with_capacity(messages.len());
        for message in messages {
            match &message {
                Message::Gossip { heartbeats } => {
                    self.digest = Some(heartbeats.clone());
                    self.gossip_fallback.push((to, message));
                }
                _ => others.push(message),
            }
        }
        if !others.is_empty() {
            self.outbox.push(to, others);
        }
    }

    /// Publishes this pass's heartbeat digest on the liveness topic: one signed message
    /// reaches every subscribed data node (flood publish), where point-to-point gossip
    /// reached `fanout` of them. If publishing fails (no subscribed peer yet, queues
    /// full) or a fault plan is in force (its rules apply per peer, which a flood publish
    /// relayed by others would escape), the digest goes point to point as the protocol
    /// asked, through the plan.
    pub(super) fn publish_heartbeats(&mut self) {
        let Some(heartbeats) = self.digest.take() else {
            return;
        };
        let fallback = std::mem::take(&mut self.gossip_fallback);
        if self.faults.active {
            return self.send_fallback(fallback);
        }
        let data = match encode(&[Message::Gossip { heartbeats }]) {
            Ok(data) => data,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a heartbeat digest; sending it point to point");
                return self.send_fallback(fallback);
            }
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), data)
        {
            Ok(_) => self.metrics.heartbeats_published += 1,
            Err(error) => {
                tracing::debug!(%error, "cannot publish heartbeats; sending them point to point");
                self.send_fallback(fallback);
            }
        }
    }

    fn send_fallback(&mut self, fallback: Vec<(NodeId, Message)>) {
        self.metrics.heartbeats_point_to_point += 1;
        for (to, message) in fallback {
            self.outbox.push(to, vec![message]);
        }
    }

    /// A message on the liveness topic: a heartbeat digest, fed to the node as gossip from
    /// its authenticated publisher (the signature checked by gossipsub in strict mode).
    pub(super) fn on_liveness(&mut self, message: gossipsub::Message) {
        if message.topic != self.topic.hash() {
            return;
        }
        let Some(source) = message.source else {
            tracing::debug!("unsigned liveness message ignored");
            return;
        };
        let Some(from) = self.config.member_of(&source) else {
            tracing::debug!(%source, "liveness message from a publisher that is not a data node; ignored");
            return;
        };
        let messages = match dtx_protocol::decode(&message.data) {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%source, %error, "rejected a liveness message");
                return;
            }
        };
        let (gossip, others): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|message| matches!(message, Message::Gossip { .. }));
        if !others.is_empty() {
            tracing::warn!(%source, count = others.len(), "dropped non-heartbeat messages on the liveness topic");
        }
        if gossip.is_empty() {
            return;
        }
        self.metrics.heartbeats_received += 1;
        // Fault injection judges the publisher (the signed source), not the relay; a
        // delayed digest comes back through `accept_request`, as from a member.
        let gossip = if self.faults.active {
            self.faults
                .filter(Instant::now(), Crossing::In { peer: source }, true, gossip)
        } else {
            gossip
        };
        if gossip.is_empty() {
            return;
        }
        let now = self.clock.now();
        self.node.handle(
            now,
            Input::Receive {
                from,
                messages: gossip,
            },
        );
    }

    /// Puts this node's listen addresses in its heartbeats.
    pub(super) fn announce_addresses(&mut self) {
        let addresses = self.listening.iter().map(heartbeat_address).collect();
        self.node.set_addresses(addresses);
    }
}
