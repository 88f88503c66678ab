//! The simulated network: frames delayed, lost, duplicated and reordered, and partitions.

use super::{Action, Phase, Simulation};
use dtx_protocol::{Envelope, Input, NodeId, TxnId};

impl Simulation {
    pub(super) fn transmit(&mut self, from: NodeId, envelope: Envelope) {
        let Envelope { to, messages } = envelope;
        self.measured.stats.frames += 1;
        self.measured.stats.messages += messages.len() as u64;
        let observed = self.cluster.is_member(from);
        // The distinct transactions of this frame (few: a short list, no allocation for
        // up to four).
        let mut txns_in_frame: smallvec::SmallVec<[TxnId; 4]> = smallvec::SmallVec::new();
        for message in &messages {
            if observed {
                self.observer.on_send(from, message);
            }
            match message {
                dtx_protocol::Message::Probe { .. } => self.measured.stats.probes += 1,
                dtx_protocol::Message::Gossip { .. } => {
                    self.measured.stats.gossip_messages += 1;
                    self.measured.stats.gossip_bytes +=
                        gossip_bytes(&mut self.measured.last_gossip, message);
                }
                _ => {}
            }
            let txn = message.txn();
            let traffic = self.measured.traffic_by_txn.entry(txn).or_default();
            traffic.count(message.kind());
            if !txns_in_frame.contains(&txn) {
                txns_in_frame.push(txn);
                traffic.frames += 1;
            }
        }
        if self.lab.is_some() {
            self.lab_transmit(from, to, messages);
            return;
        }
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.params.loss_chance) {
            self.measured.stats.frames_lost += 1;
            return;
        }
        if self.rng.chance(self.params.duplication_chance) {
            let delay = self.sample_delay();
            self.after(
                delay,
                Action::Deliver {
                    from,
                    to,
                    messages: messages.clone(),
                },
            );
        }
        let delay = self.sample_delay();
        self.after(delay, Action::Deliver { from, to, messages });
    }

    pub(super) fn sample_delay(&mut self) -> u64 {
        let params = &self.params;
        let (low, high, tail_chance, tail_max) = (
            params.delay_min_micros,
            params.delay_max_micros,
            params.delay_tail_chance,
            params.delay_tail_max_micros,
        );
        if self.rng.chance(tail_chance) {
            self.rng.between(high, tail_max.max(high))
        } else {
            self.rng.between(low, high)
        }
    }

    pub(super) fn deliver(
        &mut self,
        from: NodeId,
        to: NodeId,
        messages: Vec<dtx_protocol::Message>,
    ) {
        for message in &messages {
            if self.traced(message.txn()) {
                eprintln!(
                    "{:>10} deliver {from} -> {to}: {message:?}",
                    self.now.as_micros()
                );
            }
        }
        if self.lab.is_some() {
            self.lab_received(from, to);
        }
        let input = Input::Receive { from, messages };
        if self.cluster.is_member(to) {
            self.node_input((to.0 - 1) as usize, input);
        } else if let Some(index) = self.client_by_id.get(&to).copied() {
            if self.clients[index].client.id() == to {
                self.client_input(index, input);
            }
        }
    }

    pub(super) fn on_partition(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        self.measured.stats.partitions += 1;
        self.partition_id += 1;
        let mut nodes: Vec<NodeId> = self
            .cluster
            .members()
            .iter()
            .map(|member| member.id)
            .collect();
        self.rng.shuffle(&mut nodes);
        let clients: Vec<NodeId> = self
            .clients
            .iter()
            .map(|client| client.client.id())
            .collect();
        let kind = self.rng.below(4);
        // Kind 3 (bridge): nodes[0] stays connected to both sides.
        let (mut side_a, mut side_b): (Vec<NodeId>, Vec<NodeId>) = match kind {
            0 => (nodes[..1].to_vec(), nodes[1..].to_vec()),
            3 if nodes.len() >= 3 => {
                let cut = 1 + self.rng.below(nodes.len() as u64 - 2) as usize;
                (nodes[1..=cut].to_vec(), nodes[cut + 1..].to_vec())
            }
            _ => {
                let cut = 1 + self.rng.below(nodes.len() as u64 - 1) as usize;
                (nodes[..cut].to_vec(), nodes[cut..].to_vec())
            }
        };
        for client in clients {
            if self.rng.chance(0.5) {
                side_a.push(client);
            } else {
                side_b.push(client);
            }
        }
        let one_way = kind == 2;
        self.blocked.clear();
        for a in &side_a {
            for b in &side_b {
                self.blocked.insert((*a, *b));
                if !one_way {
                    self.blocked.insert((*b, *a));
                }
            }
        }
        let duration = self
            .rng
            .between(1, self.params.partition_duration_max_micros);
        let partition = self.partition_id;
        self.after(duration, Action::Heal { partition });
    }

    /// Ends partition `partition`, unless a newer one replaced it; during the safety phase
    /// the next partition follows after a while.
    pub(super) fn on_heal(&mut self, partition: u64) {
        if partition == self.partition_id {
            self.blocked.clear();
            if self.phase == Phase::Safety {
                let wait = self.rng.between(1, self.params.partition_interval_micros);
                self.after(wait, Action::Partition);
            }
        }
    }
}

/// The size of `message` (a Gossip) encoded alone in a frame, as on the wire. A node sends
/// one digest to several peers in a round, so the last size is kept with its message and
/// reused when the next one is equal (a comparison costs far less than an encoding).
fn gossip_bytes(
    last: &mut Option<(dtx_protocol::Message, u64)>,
    message: &dtx_protocol::Message,
) -> u64 {
    if let Some((last_message, size)) = last {
        if last_message == message {
            return *size;
        }
    }
    let size =
        dtx_protocol::encode(std::slice::from_ref(message)).map_or(0, |frame| frame.len() as u64);
    *last = Some((message.clone(), size));
    size
}
