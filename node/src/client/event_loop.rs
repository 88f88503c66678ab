//! The client's event loop: one task owns the swarm and the protocol `Client`, takes
//! commands from the handles, moves the protocol's messages and answers the handles when
//! operations and transactions finish.

use super::{
    Command, CommitError, ConnectError, Ended, ExecuteReply, CONNECT_TIMEOUT, REDIAL_INTERVAL,
};
use crate::auth::Gate;
use crate::config::ClusterConfig;
use crate::links::{Inbound, Links};
use crate::network::{Behaviour, BehaviourEvent, Frame, HeardAddresses, Outbox};
use crate::runtime::{self, sleep_until, Clock};
use dtx_protocol::{BeginError, ExecuteError, Input, NodeId, Operation, TxnId, TxnResult};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<(TxnId, Ended), BeginError>>;

pub(super) struct ClientLoop {
    pub(super) links: Links,
    pub(super) inbound: Inbound,
    /// Which peers' frames the client reads (data nodes only).
    pub(super) gate: Arc<Gate>,
    pub(super) config: ClusterConfig,
    pub(super) clock: Clock,
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) client: dtx_protocol::Client,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) waiting: BTreeMap<TxnId, Reply>,
    pub(super) committing: BTreeMap<TxnId, oneshot::Sender<Result<Ended, ExecuteError>>>,
    /// Outstanding interactive operations (at most one per RM and transaction).
    pub(super) executing: BTreeMap<TxnId, Vec<(Operation, ExecuteReply)>>,
    pub(super) outbox: Outbox,
    pub(super) connected: BTreeSet<PeerId>,
    /// Data nodes' addresses heard in the heartbeats the client pulls.
    pub(super) heard: HeardAddresses,
    /// Data nodes whose last dial failed (a node that is down does not hold up
    /// `connect`).
    pub(super) unreachable: BTreeSet<PeerId>,
}

impl ClientLoop {
    pub(super) async fn wait_connected(&mut self) -> Result<(), ConnectError> {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        // Until every data node is connected or known to refuse (a dial that failed).
        while self.config.nodes.iter().any(|node| {
            !self.connected.contains(&node.peer_id) && !self.unreachable.contains(&node.peer_id)
        }) {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.connected.is_empty() {
            return Err(ConnectError::Unreachable(CONNECT_TIMEOUT));
        }
        Ok(())
    }

    pub(super) async fn run(&mut self) {
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
        loop {
            let deadline = self.clock.deadline(self.client.poll_timeout());
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((peer, frame)) = self.inbound.members.recv() => self.on_frame(peer, frame),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nothing can wait for an answer any more.
                    None => return,
                },
                () = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.client.handle(now, Input::Timeout);
                }
                _ = redial.tick() => self.redial(),
            }
            runtime::for_each_ready(|| self.take_ready());
            self.drain();
        }
    }

    /// Handles one event that is ready now, without waiting: commands first, then data
    /// nodes' frames, then swarm events; false when nothing is ready.
    fn take_ready(&mut self) -> bool {
        if let Ok(command) = self.commands.try_recv() {
            self.on_command(command);
            return true;
        }
        if let Ok((peer, frame)) = self.inbound.members.try_recv() {
            self.on_frame(peer, frame);
            return true;
        }
        runtime::ready_swarm_event(&mut self.swarm)
            .map(|event| self.on_swarm_event(event))
            .is_some()
    }

    fn redial(&mut self) {
        if let Some(detector) = self.client.detector() {
            self.heard
                .learn(&mut self.swarm, &self.config, None, detector);
        }
        for node in &self.config.nodes {
            if !self.connected.contains(&node.peer_id) && !self.swarm.is_connected(&node.peer_id) {
                let _ = self.swarm.dial(node.peer_id);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Run { operations, reply } => {
                let now = self.clock.now();
                match self.client.begin(now, operations) {
                    Ok(txn) => {
                        self.waiting.insert(txn, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::BeginInteractive { reply } => {
                let now = self.clock.now();
                let _ = reply.send(self.client.begin_interactive(now));
            }
            Command::Execute {
                txn,
                operation,
                reply,
            } => {
                let now = self.clock.now();
                let operation_sent = operation.clone();
                match self.client.execute(now, txn, operation) {
                    Ok(()) => {
                        self.executing
                            .entry(txn)
                            .or_default()
                            .push((operation_sent, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Command::Commit { txn, writes, reply } => {
                let now = self.clock.now();
                match self.client.commit_with(now, txn, writes) {
                    Ok(()) => {
                        self.committing.insert(txn, reply);
                    }
                    Err(error) => {
                        // The handle is consumed: release what the transaction holds.
                        let _ = self.client.abort(now, txn);
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Membership { config, reply } => {
                let result = self.config.appended_in(&config).map(|added| {
                    for node in &added {
                        self.swarm
                            .add_peer_address(node.peer_id, node.address.clone());
                        let _ = self.swarm.dial(node.peer_id);
                    }
                    added.len()
                });
                if result.is_ok() {
                    self.client.set_cluster(config.cluster.clone());
                    self.gate
                        .set_members(config.nodes.iter().map(|node| node.peer_id));
                    self.config = *config;
                }
                let _ = reply.send(result);
            }
            Command::Abort { txn } => {
                let now = self.clock.now();
                // Already finished (e.g. aborted by the data nodes): nothing to do.
                let _ = self.client.abort(now, txn);
            }
        }
    }

    fn drain(&mut self) {
        while let Some(envelope) = self.client.poll_output() {
            self.outbox.push(envelope.to, envelope.messages);
        }
        while let Some(executed) = self.client.poll_executed() {
            let Some(pending) = self.executing.get_mut(&executed.txn) else {
                continue;
            };
            if let Some(index) = pending
                .iter()
                .position(|(operation, _)| *operation == executed.operation)
            {
                let (_, reply) = pending.swap_remove(index);
                let _ = reply.send(Ok(executed.read));
            }
            if pending.is_empty() {
                self.executing.remove(&executed.txn);
            }
        }
        while let Some(finished) = self.client.poll_event() {
            let txn = finished.txn;
            let by = finished.participant.map(|node| self.name_of(node));
            let ended = || Ended {
                result: finished.result.clone(),
                by: by.clone(),
            };
            // The callers may have stopped waiting; that is their choice.
            if let Some(reply) = self.waiting.remove(&txn) {
                let _ = reply.send(Ok((txn, ended())));
            }
            if let Some(reply) = self.committing.remove(&txn) {
                let _ = reply.send(Ok(ended()));
            }
            for (_, reply) in self.executing.remove(&txn).unwrap_or_default() {
                // An execution that ended the transaction: it aborted.
                let error = match &finished.result {
                    TxnResult::Aborted { reason } => CommitError::Aborted {
                        txn,
                        by: by.clone(),
                        reason: reason.clone(),
                    },
                    _ => CommitError::Unknown { txn },
                };
                let _ = reply.send(Err(error));
            }
        }
        for (to, messages) in self.outbox.drain() {
            let Some(node) = self.config.node(to) else {
                continue;
            };
            let (peer, address) = (node.peer_id, node.address.clone());
            self.links
                .send(&mut self.swarm, peer, vec![address], messages);
        }
    }

    /// `node`'s name in the cluster config (its id if the config does not list it).
    fn name_of(&self, node: NodeId) -> String {
        self.config
            .node(node)
            .map(|info| info.name.clone())
            .unwrap_or_else(|| node.to_string())
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                self.unreachable.remove(&peer_id);
                self.connected.insert(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer_id),
                ..
            } if !self.swarm.is_connected(&peer_id) => {
                self.unreachable.insert(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Messages(event)) => {
                if let Some((peer, frame)) = runtime::take_request(&mut self.swarm, event) {
                    self.on_frame(peer, frame);
                }
            }
            _ => {}
        }
    }
}

impl ClientLoop {
    fn on_frame(&mut self, peer: PeerId, frame: Frame) {
        let Some(messages) = runtime::frame_messages(&peer, frame) else {
            return;
        };
        let Some(from) = self.config.member_of(&peer) else {
            tracing::warn!(%peer, "dropped messages from a peer that is not a data node");
            return;
        };
        let now = self.clock.now();
        self.client.handle(now, Input::Receive { from, messages });
    }
}
