//! The data node daemon: one event loop task owns the swarm and the protocol `Node`
//! (rust-libp2p `examples/file-sharing` shape) and `select!`s over swarm events, the
//! protocol's timer, write-ahead log completions, the release of messages held back by
//! fault injection (`--fault-injection` only) and shutdown.
//!
//! Each pass: handle the event, opportunistically drain more ready swarm events and log
//! completions (so that their outputs batch), then drain the node: `Persist` goes to the
//! log's group commit, `Send` into the per-peer outbox, audit events to `tracing`; then
//! one request per peer leaves. The node itself holds every send that depends on an
//! unfinished persist, so nothing is acknowledged before its fsync.
//!
//! This file holds the loop itself (`select!`, the ready-event pass, dispatch, the drain
//! of the node, housekeeping). The rest, one job a file:
//! `options` ([`DaemonOptions`], [`DaemonError`]), `startup` (from options to a
//! running loop), `inbound` (who may speak: gate, refusals, admission), `heartbeats`
//! (liveness topic and point-to-point fallback), `membership` (`cluster.toml` and
//! `users.toml` reload), `status` (`/status` and `/metrics`), `faults` (the fault plan
//! in force, its generator and delay queue, see [`crate::faults`]). The glue shared with the client's loop is in `crate::runtime`.

mod faults;
mod heartbeats;
mod inbound;
mod membership;
mod options;
mod resource;
mod startup;
mod status;

pub use self::inbound::only_from_data_nodes;
pub use self::options::{DaemonError, DaemonOptions};
pub use self::resource::{RESOURCE_ANSWERS_QUEUED_MAX, RESOURCE_CALLS_IN_FLIGHT_MAX};
pub use self::startup::{run, run_with_participant};
pub use crate::runtime::{Clock, EVENTS_PER_PASS_MAX};
/// The detector's crash-to-suspicion bound, shown in `/status` (lives with the detector).
pub use dtx_protocol::detector::{detection_bound, DETECTION_JITTER_INTERVALS};

use self::faults::{Crossing, Delayed, Faults};
use self::inbound::ClientPeers;
use self::membership::ConfigWatch;
use self::resource::{next_answer, Answer, ResourceRunner};
use crate::admission::Admission;
use crate::auth::Gate;
use crate::config::{client_node_id, ClusterConfig, NodeInfo};
use crate::control::{ControlRequest, Metrics};
use crate::datadir::DataDir;
use crate::links::{ClientStream, Inbound, Links};
use crate::network::{Behaviour, BehaviourEvent, Frame, HeardAddresses, Outbox};
use crate::ratelog::WarningLimiter;
use crate::runtime::{self, sleep_until};
use crate::wal::{Wal, WalEvent};
use crate::warn_limited;
use dtx_protocol::detector::Heartbeat;
use dtx_protocol::{
    AbortReason, Event, Input, Message, Node, NodeId, Outcome, Output, TxnId, Vote,
};
use futures::{FutureExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad};
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Client peers whose ids this node remembers (to send them Phase2b and decisions).
pub const CLIENT_PEERS_MAX: usize = 65_536;

/// Environment variable (tests only): abort the process in the middle of this group
/// commit (1-based), leaving a torn record (see
/// [`WalOptions::crash_at_group_commit`](crate::wal::WalOptions::crash_at_group_commit)).
#[cfg(feature = "test-hooks")]
pub const CRASH_AT_GROUP_COMMIT_ENV: &str = "DTX_CRASH_AT_GROUP_COMMIT";

/// How often the config file is checked for appended members.
pub const CONFIG_POLL: Duration = Duration::from_millis(500);

/// How often the event loop does its housekeeping: in-doubt ages, drain progress.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(50);

/// A drained node lingers this long after its last transaction finished, so that its
/// last frames (decisions, acknowledgements) leave before the process exits.
pub const DRAIN_LINGER: Duration = Duration::from_millis(300);

/// A drain that has not finished in this time stops the node anyway, with an error: the
/// transactions still open are in its log and resolve when it starts again.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Suspected members whose suspicion start is tracked at most (a client that exited stays
/// suspected until the detector forgets it, and its entry goes then; past this, new
/// suspicions show without a duration).
pub const SUSPECTED_TRACKED_MAX: usize = CLIENT_PEERS_MAX;

/// In-doubt transactions whose age is tracked at most (ages of the rest show as 0).
pub const IN_DOUBT_TRACKED_MAX: usize = 100_000;

struct EventLoop {
    me: NodeInfo,
    links: Links,
    inbound: Inbound,
    /// Every client stream's frames, taken one per stream in turn (fair to each client).
    client_frames: futures::stream::SelectAll<ClientStream>,
    /// Who may use this node (members, client sessions, users).
    gate: Arc<Gate>,
    /// The data directory, locked while this process lives.
    _data_dir: DataDir,
    /// Committed plus prepared bytes when a write was last refused for the storage quota
    /// (the alarm holds until the data is smaller than that).
    storage_refused_at: Option<u64>,
    /// Visitors: grace, idle, eviction, refusal answers.
    admission: Admission,
    /// `users.toml`, re-read when it changes (`None` in insecure mode).
    users_watch: Option<ConfigWatch>,
    warnings: WarningLimiter,
    config: ClusterConfig,
    clock: Clock,
    swarm: Swarm<Behaviour>,
    node: Node,
    wal: Wal,
    wal_events: mpsc::Receiver<WalEvent>,
    outbox: Outbox,
    clients: ClientPeers,
    faults: Faults,
    topic: gossipsub::IdentTopic,
    config_watch: Option<ConfigWatch>,
    control_requests: mpsc::Receiver<ControlRequest>,
    metrics: Metrics,
    started: Instant,
    /// When this node first saw each in-doubt transaction (for its age in `/status`).
    in_doubt_since: BTreeMap<TxnId, Instant>,
    /// When each member now suspected became suspected (from the node's events).
    suspected_since: BTreeMap<NodeId, Instant>,
    /// The newest heartbeat digest the node produced this pass, to publish once.
    digest: Option<Vec<Heartbeat>>,
    /// The same digest as point-to-point sends, used if publishing fails.
    gossip_fallback: Vec<(NodeId, Message)>,
    persist_issued: u64,
    persist_durable: u64,
    drain: Option<Drain>,
    /// Where this node listens (its heartbeats carry these).
    listening: Vec<Multiaddr>,
    /// Members' addresses heard in heartbeats, given to the swarm.
    heard: HeardAddresses,
    /// The service this node is the RM of (`None`: the built-in store).
    resource: Option<ResourceRunner>,
}

/// Progress of a drain.
#[derive(Clone, Copy, Debug)]
struct Drain {
    started: Instant,
    /// Since when nothing has been open (reset when something opens again).
    idle_since: Option<Instant>,
}

impl EventLoop {
    async fn run(&mut self) -> Result<(), DaemonError> {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut config_timer = tokio::time::interval(CONFIG_POLL);
        let mut terminate = signal_stream();
        loop {
            let deadline = self.clock.deadline(self.node.poll_timeout());
            let faults_due = self.faults.next_due().map(tokio::time::Instant::from_std);
            // Data nodes' frames and the log first: no client can delay the protocol among
            // data nodes.
            tokio::select! {
                biased;
                Some((peer, frame)) = self.inbound.members.recv() => self.on_frame(peer, frame),
                wal_event = self.wal_events.recv() => match wal_event {
                    Some(event) => self.on_wal_event(event)?,
                    None => return Err(DaemonError::WalFailed("log writer exited".to_string())),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(stream) = self.inbound.clients.recv() => self.client_frames.push(stream),
                Some((peer, frame)) = self.client_frames.next(), if !self.client_frames.is_empty() => {
                    self.on_frame(peer, frame);
                }
                Some(refused) = self.inbound.refused.recv() => self.on_refused(refused),
                Some(answer) = next_answer(&mut self.resource) => self.on_resource_answer(answer),
                () = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.node.handle(now, Input::Timeout);
                }
                () = sleep_until(faults_due) => self.release_delayed(),
                Some(request) = self.control_requests.recv() => self.on_control(request),
                _ = config_timer.tick() => {
                    self.reload_config();
                    self.reload_users();
                }
                _ = housekeeping.tick() => {
                    if self.housekeeping()? {
                        tracing::info!(name = %self.me.name, "drained: no transaction open; leaving");
                        return Ok(());
                    }
                }
                _ = terminate.recv() => {
                    tracing::info!(name = %self.me.name, "shutting down");
                    return Ok(());
                }
            }
            runtime::for_each_ready(|| self.take_ready());
            while let Ok(event) = self.wal_events.try_recv() {
                self.on_wal_event(event)?;
            }
            while let Some(answer) = self.resource.as_mut().and_then(ResourceRunner::ready) {
                self.on_resource_answer(answer);
            }
            self.drain_node().await?;
            self.flush_outbox();
        }
    }

    /// Handles one event that is ready now, without waiting: data nodes' frames first,
    /// then new client streams, one client frame, then swarm events; false when nothing
    /// is ready.
    fn take_ready(&mut self) -> bool {
        if let Ok((peer, frame)) = self.inbound.members.try_recv() {
            self.on_frame(peer, frame);
            return true;
        }
        if let Ok(stream) = self.inbound.clients.try_recv() {
            self.client_frames.push(stream);
            return true;
        }
        if !self.client_frames.is_empty() {
            if let Some(Some((peer, frame))) = self.client_frames.next().now_or_never() {
                self.on_frame(peer, frame);
                return true;
            }
        }
        runtime::ready_swarm_event(&mut self.swarm)
            .map(|event| self.on_swarm_event(event))
            .is_some()
    }

    /// A participant's answer becomes the node's input (a failed call becomes nothing:
    /// the node asks again after its backoff).
    fn on_resource_answer(&mut self, answer: Answer) {
        let input = self
            .resource
            .as_mut()
            .and_then(|runner| runner.finished(answer));
        if let Some(input) = input {
            let now = self.clock.now();
            self.node.handle(now, input);
        }
    }

    fn on_wal_event(&mut self, event: WalEvent) -> Result<(), DaemonError> {
        match event {
            WalEvent::Durable(token) => {
                self.metrics
                    .observe_group_commit(token.saturating_sub(self.persist_durable));
                self.persist_durable = self.persist_durable.max(token);
                let now = self.clock.now();
                self.node.handle(now, Input::Persisted { token });
                Ok(())
            }
            WalEvent::Failed(error) => Err(DaemonError::WalFailed(error.to_string())),
        }
    }

    async fn drain_node(&mut self) -> Result<(), DaemonError> {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Persist { token, records } => {
                    self.persist_issued = self.persist_issued.max(token);
                    self.wal
                        .append(token, records)
                        .await
                        .map_err(|error| DaemonError::WalFailed(error.to_string()))?;
                }
                Output::Send(envelope) => self.route(envelope.to, envelope.messages),
                Output::Resource(request) => match self.resource.as_mut() {
                    Some(runner) => runner.start(request),
                    // Only a node configured with an external resource yields these.
                    None => tracing::error!(?request, "resource request without a resource"),
                },
            }
        }
        while let Some(event) = self.node.poll_event() {
            self.count(&event);
            audit(event);
        }
        self.publish_heartbeats();
        Ok(())
    }

    fn count(&mut self, event: &Event) {
        if let Event::Voted {
            vote: Vote::Aborted,
            reason,
            ..
        } = event
        {
            self.metrics.aborted_votes.count(reason.as_ref());
        }
        if let Event::Voted {
            reason: Some(AbortReason::StorageFull { used_bytes, .. }),
            ..
        } = event
        {
            // The alarm holds from the first refused write until the data shrinks.
            if self.storage_refused_at.is_none() {
                warn_limited!(
                    self.warnings,
                    "storage-full",
                    used_bytes,
                    "storage quota reached: writes that grow the data are refused"
                );
            }
            self.storage_refused_at = Some(*used_bytes);
        }
        if let Event::Suspicion { node, suspected } = event {
            if *suspected && self.suspected_since.len() >= SUSPECTED_TRACKED_MAX {
                self.forget_suspicions_of_forgotten();
            }
            if *suspected && self.suspected_since.len() < SUSPECTED_TRACKED_MAX {
                self.suspected_since.insert(*node, Instant::now());
            } else {
                self.suspected_since.remove(node);
            }
        }
        if let Event::Decided {
            outcome,
            as_participant: true,
            ..
        } = event
        {
            match outcome {
                Outcome::Commit => self.metrics.committed += 1,
                Outcome::Abort => self.metrics.aborted += 1,
            }
        }
    }

    /// Refreshes in-doubt ages, learns members' addresses from their heartbeats and
    /// checks drain progress; true once drained.
    fn housekeeping(&mut self) -> Result<bool, DaemonError> {
        if let Some(detector) = self.node.detector() {
            self.heard
                .learn(&mut self.swarm, &self.config, Some(self.me.id), detector);
        }
        let now = Instant::now();
        for peer in self.admission.overdue(&self.gate, now) {
            tracing::debug!(%peer, "visitor disconnected (no session in time, or idle)");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let bans = self.admission.ban_changes(now);
        for peer in bans.block {
            tracing::debug!(%peer, "stranger banned for sending frames without a session");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
        for peer in bans.unblock {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        let in_doubt: BTreeSet<TxnId> = self.node.in_doubt().collect();
        self.in_doubt_since.retain(|txn, _| in_doubt.contains(txn));
        for txn in in_doubt {
            if self.in_doubt_since.len() >= IN_DOUBT_TRACKED_MAX {
                break;
            }
            self.in_doubt_since.entry(txn).or_insert(now);
        }
        let Some(drain) = self.drain.as_mut() else {
            return Ok(false);
        };
        let open = self.node.open_transactions();
        let quiet = open == 0 && self.persist_durable >= self.persist_issued;
        if !quiet {
            drain.idle_since = None;
            if now.duration_since(drain.started) > DRAIN_TIMEOUT {
                return Err(DaemonError::DrainTimedOut {
                    timeout: DRAIN_TIMEOUT,
                    open,
                });
            }
            return Ok(false);
        }
        let idle_since = *drain.idle_since.get_or_insert(now);
        if !self.node.has_left() {
            // Nothing open: say so in the heartbeats (due at once), so that the others
            // do not suspect the silence after exit and clients fail fast on its keys.
            // The linger carries this heartbeat out (about three rounds of it).
            tracing::info!(name = %self.me.name, "drained: announcing that this node leaves");
            self.node.leave();
        }
        Ok(now.duration_since(idle_since) >= DRAIN_LINGER)
    }

    fn on_control(&mut self, request: ControlRequest) {
        match request {
            ControlRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ControlRequest::Metrics(reply) => {
                let _ = reply.send(self.render_metrics());
            }
            ControlRequest::Faults(reply) => {
                let _ = reply.send(self.faults.report());
            }
            ControlRequest::SetFaults(plan, reply) => {
                let rules = plan.rules.len();
                let answer = self
                    .faults
                    .install(plan, &self.config)
                    .map(|()| self.faults.report());
                if answer.is_ok() {
                    tracing::warn!(name = %self.me.name, rules, "fault injection: new plan in force");
                }
                let _ = reply.send(answer);
            }
            ControlRequest::Drain(reply) => {
                if self.drain.is_none() {
                    tracing::info!(
                        name = %self.me.name, open = self.node.open_transactions(),
                        "draining: refusing new transactions, finishing open ones"
                    );
                    self.node.set_draining(true);
                    self.drain = Some(Drain {
                        started: Instant::now(),
                        idle_since: None,
                    });
                }
                let _ = reply.send(self.status());
            }
        }
    }

    fn flush_outbox(&mut self) {
        for (to, messages) in self.outbox.drain() {
            let peer = match self.config.node(to) {
                Some(node) => Some(node.peer_id),
                None => self.clients.peers.get(&to).copied(),
            };
            let Some(peer) = peer else {
                tracing::debug!(%to, "no peer known for destination; messages dropped");
                continue;
            };
            let messages = if self.faults.active {
                let member = self.config.member_of(&peer).is_some();
                let crossing = Crossing::Out { peer, to };
                self.faults
                    .filter(Instant::now(), crossing, member, messages)
            } else {
                messages
            };
            self.send_now(to, peer, messages);
        }
    }

    /// Messages held back by fault injection and due now: received ones go on to the
    /// gate and the protocol, ones to send leave (neither passes the plan again).
    fn release_delayed(&mut self) {
        for Delayed { crossing, messages } in self.faults.release(Instant::now()) {
            match crossing {
                Crossing::In { peer } => self.accept_request(peer, messages),
                Crossing::Out { peer, to } => self.send_now(to, peer, messages),
            }
        }
    }

    /// Hands `messages` for `to` to the transport now.
    fn send_now(&mut self, to: NodeId, peer: PeerId, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let addresses = self
            .config
            .node(to)
            .map(|node| vec![node.address.clone()])
            .unwrap_or_default();
        self.metrics.messages_sent += messages.len() as u64;
        self.metrics.refused_draining += messages
            .iter()
            .filter(|message| {
                matches!(
                    message,
                    Message::VoteNotice {
                        reason: Some(AbortReason::Draining { .. }),
                        ..
                    }
                )
            })
            .count() as u64;
        self.links.send(&mut self.swarm, peer, addresses, messages);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Messages(event)) => {
                if let Some((peer, frame)) = runtime::take_request(&mut self.swarm, event) {
                    self.on_frame(peer, frame);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => self.on_liveness(message),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if self.config.member_of(&peer_id).is_some() => {
                // Members learn each other's current addresses; Kademlia serves them to
                // dials by peer id.
                for address in info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kademlia
                        .add_address(&peer_id, address);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kademlia(kad::Event::RoutingUpdated {
                peer,
                ..
            })) => {
                tracing::debug!(%peer, "Kademlia routing table updated");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.on_mdns(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.listening.push(address);
                self.announce_addresses();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening.retain(|listening| *listening != address);
                self.announce_addresses();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                tracing::debug!(%peer_id, "connected");
                self.on_connected(peer_id, connection_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
                if num_established == 0 && !self.gate.is_member(&peer_id) {
                    self.admission.on_disconnected(&peer_id);
                    self.gate.end(&peer_id);
                    if let Some(access) = self.node.access_mut() {
                        access.remove(client_node_id(&peer_id));
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    #[cfg(feature = "mdns")]
    fn on_mdns(&mut self, event: libp2p::mdns::Event) {
        if let libp2p::mdns::Event::Discovered(found) = event {
            for (peer, address) in found {
                tracing::debug!(%peer, %address, "mDNS discovered a peer");
                self.swarm
                    .behaviour_mut()
                    .kademlia
                    .add_address(&peer, address);
            }
        }
    }

    #[cfg(not(feature = "mdns"))]
    fn on_mdns(&mut self, event: std::convert::Infallible) {
        match event {}
    }

    fn on_frame(&mut self, peer: PeerId, frame: Frame) {
        if let Some(messages) = runtime::frame_messages(&peer, frame) {
            self.on_request(peer, messages);
        }
    }
}

/// Writes one audit event to the log (seed 003: prepare, votes, decisions, recoveries).
fn audit(event: Event) {
    match event {
        Event::Voted { txn, vote, reason } => {
            tracing::debug!(target: "dtx::audit", %txn, ?vote, reason = ?reason, "voted");
        }
        Event::Decided {
            txn,
            outcome,
            as_participant,
        } => {
            tracing::debug!(target: "dtx::audit", %txn, %outcome, as_participant, "decided");
        }
        Event::RecoveryStarted { txn, ballot } => {
            tracing::info!(target: "dtx::audit", %txn, %ballot, "recovery started");
        }
        Event::Suspicion { node, suspected } => {
            tracing::info!(target: "dtx::audit", %node, suspected, "suspicion changed");
        }
        Event::Rejected { from, reason } => {
            tracing::warn!(target: "dtx::audit", %from, %reason, "rejected a message");
        }
        #[allow(unreachable_patterns)]
        other => tracing::debug!(target: "dtx::audit", ?other, "event"),
    }
}

/// SIGINT or SIGTERM, as one stream.
fn signal_stream() -> mpsc::Receiver<()> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut terminate) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = sender.send(()).await;
    });
    receiver
}
