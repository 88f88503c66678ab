//! The data node daemon: one event loop task owns the swarm and the protocol `Node`
//! (rust-libp2p `examples/file-sharing` shape) and `select!`s over swarm events, the
//! protocol's timer, write-ahead log completions, the fault-injection file and shutdown.
//!
//! Each pass: handle the event, opportunistically drain more ready swarm events and log
//! completions (so that their outputs batch), then drain the node: `Persist` goes to the
//! log's group commit, `Send` into the per-peer outbox, audit events to `tracing`; then
//! one request per peer leaves. The node itself holds every send that depends on an
//! unfinished persist, so nothing is acknowledged before its fsync.

use crate::config::{load_keypair, ClusterConfig, ConfigError, KeyError, NodeInfo};
use crate::links::{Links, TransportKind};
use crate::network::{build_swarm, Behaviour, BehaviourEvent, Frame, Outbox, SwarmError};
use crate::wal::{Wal, WalEvent, WalOpenError, WalOptions};
use dtx_protocol::{Event, Input, Message, MessageKind, Node, NodeConfig, NodeId, Output, Time};
use futures::{FutureExt, StreamExt};
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Client peers whose ids this node remembers (to send them Phase2b and decisions).
pub const CLIENT_PEERS_MAX: usize = 65_536;

/// Swarm events handled in one pass before the outputs are flushed (a loop bound).
pub const EVENTS_PER_PASS_MAX: usize = 256;

/// How often the fault-injection file is re-read.
pub const FAULT_FILE_POLL: Duration = Duration::from_millis(100);

/// Environment variable naming the fault-injection file (tests only): it lists node names
/// whose traffic this node drops in both directions, as if partitioned from them.
pub const FAULT_FILE_ENV: &str = "DTX_FAULT_FILE";

/// Environment variable (tests only): abort the process in the middle of this group
/// commit (1-based), leaving a torn record (see [`WalOptions::crash_at_group_commit`]).
pub const CRASH_AT_GROUP_COMMIT_ENV: &str = "DTX_CRASH_AT_GROUP_COMMIT";

/// How to run a data node.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The cluster.
    pub config: ClusterConfig,
    /// This node's name in the cluster.
    pub name: String,
    /// Directory for the write-ahead log.
    pub data_dir: PathBuf,
    /// fsync the log (off only for experiments).
    pub fsync: bool,
    /// Bytes appended after which the log is checkpointed.
    pub checkpoint_after_bytes: Option<u64>,
    /// Fault-injection file (see [`FAULT_FILE_ENV`]).
    pub fault_file: Option<PathBuf>,
    /// Test hook, see [`CRASH_AT_GROUP_COMMIT_ENV`].
    pub crash_at_group_commit: Option<u64>,
    /// How this node sends frames (it receives both kinds).
    pub transport: TransportKind,
}

/// Why a data node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config names no such node.
    #[error("no node named {0:?} in the cluster config")]
    UnknownNode(String),
    /// Bad config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node's key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The log could not be opened.
    #[error(transparent)]
    Wal(#[from] WalOpenError),
    /// The log failed while running.
    #[error("write-ahead log failed: {0}")]
    WalFailed(String),
    /// Networking.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
}

/// The node's monotonic clock: protocol time is microseconds since process start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    started: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            started: Instant::now(),
        }
    }

    /// Protocol time now.
    pub fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// The instant a protocol time corresponds to.
    pub fn instant(&self, time: Time) -> Instant {
        self.started + Duration::from_micros(time.as_micros())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

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

/// Peers to treat as unreachable (fault injection for tests). The file lists node names,
/// and the word `clients` for every peer that is not a data node.
#[derive(Debug, Default)]
struct Faults {
    file: Option<PathBuf>,
    blocked: BTreeSet<PeerId>,
    clients_blocked: bool,
}

impl Faults {
    fn reload(&mut self, config: &ClusterConfig) {
        let Some(file) = &self.file else { return };
        // A missing file means no faults.
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let blocked: BTreeSet<PeerId> = text
            .split_whitespace()
            .filter_map(|name| config.node_named(name).map(|node| node.peer_id))
            .collect();
        let clients_blocked = text.split_whitespace().any(|word| word == "clients");
        if blocked != self.blocked || clients_blocked != self.clients_blocked {
            tracing::warn!(
                blocked = ?text.split_whitespace().collect::<Vec<_>>(),
                "fault injection: dropping traffic"
            );
            self.blocked = blocked;
            self.clients_blocked = clients_blocked;
        }
    }

    fn blocks(&self, peer: &PeerId, config: &ClusterConfig) -> bool {
        self.blocked.contains(peer) || (self.clients_blocked && config.member_of(peer).is_none())
    }
}

/// Learned client peers, bounded (oldest forgotten first).
#[derive(Debug, Default)]
struct ClientPeers {
    peers: BTreeMap<NodeId, PeerId>,
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

/// Runs a data node until SIGINT/SIGTERM or a fatal error.
pub async fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    let me = options
        .config
        .node_named(&options.name)
        .cloned()
        .ok_or_else(|| DaemonError::UnknownNode(options.name.clone()))?;
    let keypair = load_keypair(&me)?;
    let clock = Clock::new();
    let (wal_events_sender, wal_events) = mpsc::channel(crate::wal::QUEUED_BATCHES_MAX);
    let mut wal_options = WalOptions::new(options.data_dir.join("wal"));
    wal_options.fsync = options.fsync;
    wal_options.crash_at_group_commit = options.crash_at_group_commit;
    if let Some(bytes) = options.checkpoint_after_bytes {
        wal_options.checkpoint_after_bytes = bytes;
    }
    let mut node_config = NodeConfig::new(me.id, options.config.cluster.clone(), seed());
    node_config.limits.outcomes_kept_max = wal_options.outcomes_window;
    let (wal, recovered) = Wal::open(wal_options, wal_events_sender)?;
    if let Some(problem) = &recovered.tail_problem {
        tracing::warn!(cut_bytes = recovered.cut_bytes, %problem, "cut a torn log tail");
    }
    let record_count = recovered.records.len();
    let node = Node::recover(node_config, clock.now(), recovered.records);
    let in_doubt = node.in_doubt().count();
    let mut swarm = build_swarm(keypair)?;
    swarm
        .listen_on(me.address.clone())
        .map_err(|error| SwarmError::Listen {
            address: me.address.to_string(),
            message: error.to_string(),
        })?;
    for peer in &options.config.nodes {
        if peer.id != me.id {
            swarm.add_peer_address(peer.peer_id, peer.address.clone());
            // Best effort: a peer that is down is dialed again when there is something
            // to send it.
            let _ = swarm.dial(peer.peer_id);
        }
    }
    tracing::info!(
        name = %me.name, id = %me.id, records = record_count, in_doubt,
        "node recovered from its log"
    );
    // Accept streams before announcing readiness.
    let (links, inbound) = Links::new(&mut swarm, options.transport);
    println!(
        "dtx node {} ready: id {} peer {} listening on {} (recovered {record_count} records, {in_doubt} in doubt)",
        me.name, me.id.0, me.peer_id, me.address
    );
    let mut event_loop = EventLoop {
        me,
        links,
        inbound,
        config: options.config,
        clock,
        swarm,
        node,
        wal,
        wal_events,
        outbox: Outbox::default(),
        clients: ClientPeers::default(),
        faults: Faults {
            file: options.fault_file,
            blocked: BTreeSet::new(),
            clients_blocked: false,
        },
    };
    event_loop.run().await
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

struct EventLoop {
    me: NodeInfo,
    links: Links,
    inbound: mpsc::Receiver<(PeerId, Frame)>,
    config: ClusterConfig,
    clock: Clock,
    swarm: Swarm<Behaviour>,
    node: Node,
    wal: Wal,
    wal_events: mpsc::Receiver<WalEvent>,
    outbox: Outbox,
    clients: ClientPeers,
    faults: Faults,
}

impl EventLoop {
    async fn run(&mut self) -> Result<(), DaemonError> {
        let mut fault_timer = tokio::time::interval(FAULT_FILE_POLL);
        let mut terminate = signal_stream();
        loop {
            let deadline = self
                .node
                .poll_timeout()
                .map(|time| tokio::time::Instant::from_std(self.clock.instant(time)));
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((peer, frame)) = self.inbound.recv() => self.on_frame(peer, frame),
                wal_event = self.wal_events.recv() => match wal_event {
                    Some(event) => self.on_wal_event(event)?,
                    None => return Err(DaemonError::WalFailed("log writer exited".to_string())),
                },
                () = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.node.handle(now, Input::Timeout);
                }
                _ = fault_timer.tick(), if self.faults.file.is_some() => {
                    self.faults.reload(&self.config);
                }
                _ = terminate.recv() => {
                    tracing::info!(name = %self.me.name, "shutting down");
                    return Ok(());
                }
            }
            for _ in 0..EVENTS_PER_PASS_MAX {
                if let Ok((peer, frame)) = self.inbound.try_recv() {
                    self.on_frame(peer, frame);
                    continue;
                }
                match self.swarm.next().now_or_never() {
                    Some(Some(event)) => self.on_swarm_event(event),
                    _ => break,
                }
            }
            while let Ok(event) = self.wal_events.try_recv() {
                self.on_wal_event(event)?;
            }
            self.drain_node().await?;
            self.flush_outbox();
        }
    }

    fn on_wal_event(&mut self, event: WalEvent) -> Result<(), DaemonError> {
        match event {
            WalEvent::Durable(token) => {
                let now = self.clock.now();
                self.node.handle(now, Input::Persisted { token });
                Ok(())
            }
            WalEvent::Failed(error) => Err(DaemonError::WalFailed(error)),
        }
    }

    async fn drain_node(&mut self) -> Result<(), DaemonError> {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Persist { token, records } => {
                    self.wal
                        .append(token, records)
                        .await
                        .map_err(|error| DaemonError::WalFailed(error.to_string()))?;
                }
                Output::Send(envelope) => self.outbox.push(envelope.to, envelope.messages),
            }
        }
        while let Some(event) = self.node.poll_event() {
            audit(event);
        }
        Ok(())
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
            if self.faults.blocks(&peer, &self.config) {
                continue;
            }
            let addresses = self
                .config
                .node(to)
                .map(|node| vec![node.address.clone()])
                .unwrap_or_default();
            self.links.send(&mut self.swarm, peer, addresses, messages);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Messages(event)) => self.on_messages(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(%peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_messages(&mut self, event: request_response::Event<Frame, ()>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                // The ack is empty; an error means the peer went away, which the protocol's
                // timers cover.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .messages
                    .send_response(channel, ());
                self.on_frame(peer, request);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "rejected an inbound frame");
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "send failed; the protocol will retry");
            }
            _ => {}
        }
    }

    fn on_frame(&mut self, peer: PeerId, frame: Frame) {
        match frame {
            Frame::Messages(messages) => self.on_request(peer, messages),
            Frame::Rejected(reason) => {
                tracing::warn!(%peer, %reason, "rejected an inbound frame");
            }
        }
    }

    fn on_request(&mut self, peer: PeerId, messages: Vec<Message>) {
        if self.faults.blocks(&peer, &self.config) {
            return;
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
        Event::Rejected { from, reason } => {
            tracing::warn!(target: "dtx::audit", %from, %reason, "rejected a message");
        }
        #[allow(unreachable_patterns)]
        other => tracing::debug!(target: "dtx::audit", ?other, "event"),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
