//! The data node daemon: one event loop task owns the swarm and the protocol `Node`
//! (rust-libp2p `examples/file-sharing` shape) and `select!`s over swarm events, the
//! protocol's timer, write-ahead log completions, the fault-injection file and shutdown.
//!
//! Each pass: handle the event, opportunistically drain more ready swarm events and log
//! completions (so that their outputs batch), then drain the node: `Persist` goes to the
//! log's group commit, `Send` into the per-peer outbox, audit events to `tracing`; then
//! one request per peer leaves. The node itself holds every send that depends on an
//! unfinished persist, so nothing is acknowledged before its fsync.

use crate::admission::{Admission, ConnectionVerdict};
use crate::auth::{Gate, Standing, AUTH_PROTOCOL};
use crate::config::client_node_id;
use crate::config::{load_keypair, ClusterConfig, ConfigError, KeyError, NodeInfo};
use crate::control::{
    self, ControlError, ControlRequest, Gauges, InDoubtStatus, MemberStatus, Metrics, StatusReport,
    PHI_DISPLAY_MAX,
};
use crate::datadir::{self, DataDir, DataDirError, Identity, OpenMode};
use crate::links::{ClientBudget, ClientStream, DoorRefusal, Inbound, RefusedFrame};
use crate::links::{Links, TransportKind};
use crate::network::{
    build_swarm, heartbeat_address, Behaviour, BehaviourEvent, Frame, HeardAddresses, Outbox,
    PeerKind, SwarmError, LIVENESS_TOPIC,
};
use crate::ratelog::WarningLimiter;
use crate::users::{User, Users, UsersError};
use crate::wal::{Wal, WalEvent, WalOpenError, WalOptions};
use crate::warn_limited;
/// The detector's crash-to-suspicion bound, shown in `/status` (lives with the detector).
pub use dtx_protocol::detector::{detection_bound, DETECTION_JITTER_INTERVALS};
use dtx_protocol::detector::{Address, DetectorConfig, Heartbeat, Role};
use dtx_protocol::{
    encode, AbortReason, AccessPolicy, Event, Input, Key, Message, MessageKind, Node, NodeConfig,
    NodeId, Outcome, Output, Permissions, Refusal, Time, TxnId,
};
use futures::{FutureExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, request_response};
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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

/// Suspected members whose suspicion start is tracked at most (clients that left stay
/// suspected; past this, new suspicions show without a duration).
pub const SUSPECTED_TRACKED_MAX: usize = CLIENT_PEERS_MAX;

/// In-doubt transactions whose age is tracked at most (ages of the rest show as 0).
pub const IN_DOUBT_TRACKED_MAX: usize = 100_000;

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
    /// Where to serve `/status`, `/metrics` and `/drain` (loopback only); `None`: nowhere.
    pub control: Option<SocketAddr>,
    /// Discover peers on the LAN with mDNS (needs the `mdns` cargo feature).
    pub mdns: bool,
    /// The failure detector (`None`: off; heartbeats are then neither sent nor expected).
    pub detector: Option<DetectorConfig>,
    /// How long an RM waits for a decision before it leads recovery (`None`: the
    /// protocol's default). Long values show what suspicion alone does.
    pub decision_timeout: Option<Duration>,
    /// The `cluster.toml` the config came from: re-read when it changes, so members
    /// appended to it join at run time (`None`: membership fixed at start).
    pub config_path: Option<PathBuf>,
    /// Listen here instead of at the config's address (`None`: the config's). The
    /// others learn the new address from this node's heartbeats and identify.
    pub listen: Option<libp2p::Multiaddr>,
    /// Serve any peer as a client with every permission, without `users.toml` (experiments
    /// only; the node says so loudly at start).
    pub insecure: bool,
    /// How fast one client may send.
    pub client_budget: ClientBudget,
    /// How to open the data directory: a restart (default), a first start, or a
    /// deliberate fresh start after its data was lost.
    pub data_dir_mode: OpenMode,
    /// Most bytes of committed rows this node holds (`None`: no quota). Past it, writes
    /// that would grow the data vote Aborted (`StorageFull`); reads, deletes and the
    /// commit of prepared transactions still work. `/metrics` and `/status` show the alarm.
    pub storage_quota_bytes: Option<u64>,
}

impl DaemonOptions {
    /// Options with the defaults: stream transport, fsync on, the default failure
    /// detector, the control endpoint declared in the config (if any).
    pub fn new(config: ClusterConfig, name: &str, data_dir: PathBuf) -> DaemonOptions {
        let control = config.node_named(name).and_then(|node| node.control);
        DaemonOptions {
            config,
            name: name.to_string(),
            data_dir,
            fsync: true,
            checkpoint_after_bytes: None,
            fault_file: None,
            crash_at_group_commit: None,
            transport: TransportKind::Stream,
            control,
            mdns: false,
            detector: Some(DetectorConfig::default()),
            decision_timeout: None,
            config_path: None,
            listen: None,
            insecure: false,
            client_budget: ClientBudget::default(),
            data_dir_mode: OpenMode::Existing,
            storage_quota_bytes: None,
        }
    }
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
    /// The data directory is locked, foreign, or has no identity.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The log failed while running.
    #[error("write-ahead log failed: {0}")]
    WalFailed(String),
    /// Networking.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// The control endpoint.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The users file.
    #[error("{0} (a node serves only the users in users.toml; create it with `dtx user add`, or start with --insecure for experiments)")]
    Users(#[from] UsersError),
    /// The config has no cluster id, which client sessions need.
    #[error("{path} has no cluster_id (written by an older `dtx init`): add a line `cluster_id = \"<32 hex digits>\"` or start with --insecure")]
    NoClusterId {
        /// The config file.
        path: String,
    },
    /// Another process listens on the node's address.
    #[error(
        "cannot listen on {address}: the port is in use (is another `dtx node` running on it?)"
    )]
    PortInUse {
        /// The address.
        address: String,
    },
    /// A drain did not finish in time.
    #[error("drain did not finish within {timeout:?}: {open} transactions still open (they resolve from the log at the next start)")]
    DrainTimedOut {
        /// The limit.
        timeout: Duration,
        /// Transactions still open.
        open: usize,
    },
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

    /// True while any fault is injected.
    fn active(&self) -> bool {
        !self.blocked.is_empty() || self.clients_blocked
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
    let users = if options.insecure {
        eprintln!(
            "WARNING: dtx node {} runs INSECURE: any peer may read and write every key (experiments only)",
            me.name
        );
        tracing::warn!(name = %me.name, "INSECURE mode: clients are not authenticated");
        None
    } else {
        if options.config.cluster_id.is_empty() {
            return Err(DaemonError::NoClusterId {
                path: options
                    .config_path
                    .as_ref()
                    .map(|path| path.display().to_string())
                    .unwrap_or_else(|| "cluster.toml".to_string()),
            });
        }
        Some(Users::load(&options.config.users_path())?)
    };
    let user_count = users.as_ref().map(Users::len);
    let secure = users.is_some();
    let gate = Arc::new(Gate::new(options.config.cluster_id.clone(), users));
    gate.set_members(options.config.nodes.iter().map(|node| node.peer_id));
    let clock = Clock::new();
    let identity = Identity::new(
        options.config.cluster_id.clone(),
        me.name.clone(),
        me.id.0,
        me.peer_id.to_string(),
    );
    // Locked for the life of the process: a second copy of this node stops here.
    let data_dir = datadir::open(&options.data_dir, &identity, options.data_dir_mode)?;
    if data_dir.reinitialized() {
        let aside = data_dir
            .moved_aside()
            .map(|path| format!("; what was there is in {}", path.display()))
            .unwrap_or_default();
        eprintln!(
            "dtx node {}: REINITIALIZED data directory {}{aside}. The committed rows this node held are gone (dtx keeps one copy of each key: restore them from a backup), and it takes no acceptor duty until every other data node confirms that no transaction it may have voted on as an acceptor is still open.",
            me.name,
            options.data_dir.display()
        );
    }
    // Before anything is bound or read: a copy of a running node stops at the lock
    // above or here, with the reason.
    let listen = options.listen.clone().unwrap_or_else(|| me.address.clone());
    check_port_free(&listen)?;
    if let Some(address) = options.control {
        check_port_free(&control_multiaddr(address))?;
    }
    let (wal_events_sender, wal_events) = mpsc::channel(crate::wal::QUEUED_BATCHES_MAX);
    let mut wal_options = WalOptions::new(
        data_dir.wal_dir(),
        data_dir.identity().cluster_id.clone(),
        data_dir.identity().node_id,
    );
    wal_options.fsync = options.fsync;
    wal_options.crash_at_group_commit = options.crash_at_group_commit;
    if let Some(bytes) = options.checkpoint_after_bytes {
        wal_options.checkpoint_after_bytes = bytes;
    }
    let mut node_config = NodeConfig::new(me.id, options.config.cluster.clone(), seed());
    node_config.limits.outcomes_kept_max = wal_options.outcomes_window;
    node_config.detector = options.detector.clone();
    if let Some(timeout) = options.decision_timeout {
        node_config.decision_timeout = timeout;
    }
    let (wal, recovered) = Wal::open(wal_options, wal_events_sender)?;
    if let Some(problem) = &recovered.tail_problem {
        tracing::warn!(cut_bytes = recovered.cut_bytes, %problem, "cut a torn log tail");
    }
    let record_count = recovered.records.len();
    if let Some(bytes) = options.storage_quota_bytes {
        node_config.limits.store_bytes_max = Some(bytes);
    }
    let mut node = if data_dir.reinitialized() {
        // Empty, and in acceptor quarantine until the others confirm that nothing it may
        // have promised or accepted before its data was lost is still open.
        Node::reinitialized(node_config, clock.now())
    } else {
        Node::recover(node_config, clock.now(), recovered.records)
    };
    if secure {
        // Clients may do only what their user may; sessions add entries as they come.
        node.set_access(Some(AccessPolicy::new()));
    }
    let in_doubt = node.in_doubt().count();
    // State-changing control requests (POST /drain) need the token `dtx init` wrote next
    // to the config; without the file they are refused. A token others may read is an
    // error, not a warning.
    let token_path = options.config.control_token_path();
    let control_token = if token_path.exists() {
        Some(control::read_token_file(&token_path)?)
    } else {
        tracing::info!(path = %token_path.display(), "no control token: POST requests will be refused");
        None
    };
    let control_listener = match options.control {
        Some(address) => Some(control::bind(address).await?),
        None => None,
    };
    let mut swarm = build_swarm(keypair, PeerKind::DataNode, options.mdns)?;
    let topic = gossipsub::IdentTopic::new(LIVENESS_TOPIC);
    if let Err(error) = swarm.behaviour_mut().gossipsub.subscribe(&topic) {
        tracing::warn!(%error, "cannot subscribe to the liveness topic; heartbeats go point to point");
    }
    swarm
        .listen_on(listen.clone())
        .map_err(|error| SwarmError::Listen {
            address: listen.to_string(),
            message: error.to_string(),
        })?;
    for peer in &options.config.nodes {
        if peer.id != me.id {
            swarm.add_peer_address(peer.peer_id, peer.address.clone());
            // Bootstrap addresses seed the private DHT; identify adds what peers report.
            swarm
                .behaviour_mut()
                .kademlia
                .add_address(&peer.peer_id, peer.address.clone());
            // Best effort: a peer that is down is dialed again when there is something
            // to send it.
            let _ = swarm.dial(peer.peer_id);
        }
    }
    if let Err(error) = swarm.behaviour_mut().kademlia.bootstrap() {
        tracing::debug!(%error, "Kademlia bootstrap skipped");
    }
    tracing::info!(
        name = %me.name, id = %me.id, records = record_count, in_doubt,
        "node recovered from its log"
    );
    let (control_sender, control_requests) = mpsc::channel(control::REQUESTS_QUEUED_MAX);
    let control_address = match control_listener {
        Some(listener) => {
            let address = listener.local_addr().ok();
            tokio::spawn(control::serve(listener, control_sender, control_token));
            address
        }
        None => None,
    };
    // Accept streams before announcing readiness.
    let (links, inbound) = Links::new(
        &mut swarm,
        options.transport,
        Arc::clone(&gate),
        options.client_budget,
        None,
    );
    match swarm.behaviour().stream.new_control().accept(AUTH_PROTOCOL) {
        Ok(incoming) => {
            tokio::spawn(crate::auth::serve(incoming, Arc::clone(&gate)));
        }
        Err(error) => tracing::error!(%error, "cannot accept client sessions"),
    }
    let security = match user_count {
        Some(count) => format!("{count} users"),
        None => "INSECURE".to_string(),
    };
    let control_text = control_address
        .map(|address| format!(", control http://{address}"))
        .unwrap_or_default();
    println!(
        "dtx node {} ready: id {} peer {} listening on {}{control_text} (recovered {record_count} records, {in_doubt} in doubt; clients: {security})",
        me.name, me.id.0, me.peer_id, me.address
    );
    let users_path = options.config.users_path();
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
        topic,
        users_watch: (!gate.is_insecure()).then(|| ConfigWatch {
            modified: modified(&users_path),
            path: users_path,
        }),
        config_watch: options.config_path.map(|path| ConfigWatch {
            modified: modified(&path),
            path,
        }),
        gate,
        _data_dir: data_dir,
        storage_refused_at: None,
        client_frames: futures::stream::SelectAll::new(),
        admission: Admission::new(Instant::now()),
        warnings: WarningLimiter::default(),
        control_requests,
        metrics: Metrics::default(),
        started: Instant::now(),
        in_doubt_since: BTreeMap::new(),
        suspected_since: BTreeMap::new(),
        digest: None,
        gossip_fallback: Vec::new(),
        persist_issued: 0,
        persist_durable: 0,
        drain: None,
        listening: Vec::new(),
        heard: HeardAddresses::default(),
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
}

/// The config file and when it last changed.
#[derive(Debug)]
struct ConfigWatch {
    path: PathBuf,
    modified: Option<std::time::SystemTime>,
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
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
        let mut fault_timer = tokio::time::interval(FAULT_FILE_POLL);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut config_timer = tokio::time::interval(CONFIG_POLL);
        let mut terminate = signal_stream();
        loop {
            let deadline = self
                .node
                .poll_timeout()
                .map(|time| tokio::time::Instant::from_std(self.clock.instant(time)));
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
                () = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.node.handle(now, Input::Timeout);
                }
                _ = fault_timer.tick(), if self.faults.file.is_some() => {
                    self.faults.reload(&self.config);
                }
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
            for _ in 0..EVENTS_PER_PASS_MAX {
                if let Ok((peer, frame)) = self.inbound.members.try_recv() {
                    self.on_frame(peer, frame);
                    continue;
                }
                if let Ok(stream) = self.inbound.clients.try_recv() {
                    self.client_frames.push(stream);
                    continue;
                }
                if !self.client_frames.is_empty() {
                    if let Some(Some((peer, frame))) = self.client_frames.next().now_or_never() {
                        self.on_frame(peer, frame);
                        continue;
                    }
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
                self.metrics
                    .observe_group_commit(token.saturating_sub(self.persist_durable));
                self.persist_durable = self.persist_durable.max(token);
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
                    self.persist_issued = self.persist_issued.max(token);
                    self.wal
                        .append(token, records)
                        .await
                        .map_err(|error| DaemonError::WalFailed(error.to_string()))?;
                }
                Output::Send(envelope) => self.route(envelope.to, envelope.messages),
            }
        }
        while let Some(event) = self.node.poll_event() {
            self.count(&event);
            audit(event);
        }
        self.publish_heartbeats();
        Ok(())
    }

    /// Sends protocol messages; heartbeat gossip to data nodes is set aside to be
    /// published once on the liveness topic instead.
    fn route(&mut self, to: NodeId, messages: Vec<Message>) {
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
    /// full) or fault injection is active (a test partition must cut heartbeats too), the
    /// digest goes point to point as the protocol asked.
    fn publish_heartbeats(&mut self) {
        let Some(heartbeats) = self.digest.take() else {
            return;
        };
        let fallback = std::mem::take(&mut self.gossip_fallback);
        if self.faults.active() {
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

    fn count(&mut self, event: &Event) {
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

    /// Puts this node's listen addresses in its heartbeats.
    fn announce_addresses(&mut self) {
        let addresses = self.listening.iter().map(heartbeat_address).collect();
        self.node.set_addresses(addresses);
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

    /// Re-reads `cluster.toml` if it changed; members appended to it (service or
    /// acceptor-only nodes) join: the protocol node takes the new membership, the swarm
    /// learns their addresses and dials them. Anything else (a removed or changed node,
    /// a new F, a new data node) is refused and logged, and the running membership stays.
    fn reload_config(&mut self) {
        let Some(watch) = self.config_watch.as_mut() else {
            return;
        };
        let now_modified = modified(&watch.path);
        if now_modified == watch.modified {
            return;
        }
        watch.modified = now_modified;
        let newer = match ClusterConfig::load(&watch.path) {
            Ok(newer) => newer,
            Err(error) => {
                tracing::warn!(%error, "cluster config changed but does not load; membership unchanged");
                return;
            }
        };
        let added: Vec<NodeInfo> = match self.config.appended_in(&newer) {
            Ok(added) => added.into_iter().cloned().collect(),
            Err(reason) => {
                tracing::warn!(%reason, "cluster config changed in a way a running node cannot follow; membership unchanged");
                return;
            }
        };
        if added.is_empty() {
            return;
        }
        if !self.node.set_cluster(newer.cluster.clone()) {
            tracing::warn!("the new cluster config lacks this node; membership unchanged");
            return;
        }
        self.gate
            .set_members(newer.nodes.iter().map(|node| node.peer_id));
        for node in &added {
            tracing::info!(name = %node.name, id = %node.id, peer = %node.peer_id, "member joined");
            // It may have connected before this node read the new file, as a visitor.
            self.admission.on_disconnected(&node.peer_id);
            self.swarm
                .behaviour_mut()
                .gossipsub
                .remove_blacklisted_peer(&node.peer_id);
            self.swarm
                .add_peer_address(node.peer_id, node.address.clone());
            self.swarm
                .behaviour_mut()
                .kademlia
                .add_address(&node.peer_id, node.address.clone());
            let _ = self.swarm.dial(node.peer_id);
        }
        self.config = newer;
    }

    /// Re-reads `users.toml` if it changed: removed users' sessions end at once (their
    /// connections are closed), changed permissions apply to the next operations.
    fn reload_users(&mut self) {
        let Some(watch) = self.users_watch.as_mut() else {
            return;
        };
        let now_modified = modified(&watch.path);
        if now_modified == watch.modified {
            return;
        }
        watch.modified = now_modified;
        let users = match Users::load(&watch.path) {
            Ok(users) => users,
            Err(error) => {
                tracing::warn!(%error, "users file changed but does not load; users unchanged");
                return;
            }
        };
        tracing::info!(users = users.len(), "users file reloaded");
        for peer in self.gate.set_users(users) {
            tracing::info!(%peer, "client session ended: its user was removed");
            self.admission.counters.revoked_sessions += 1;
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.regrant_all();
    }

    /// Frames refused at the door: counted, and answered (at most once per interval per
    /// peer) so that the client can tell its application why.
    fn on_refused(&mut self, refused: RefusedFrame) {
        let counters = &mut self.admission.counters;
        let kind = match refused.reason {
            DoorRefusal::Unauthenticated => {
                counters.refused_unauthenticated_messages += refused.messages as u64;
                self.admission
                    .on_refused_unauthenticated(&refused.peer, Instant::now());
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

    /// Makes sure the protocol knows the permissions of `peer`'s user (a client with a
    /// session); the first frame of a session installs them.
    fn grant(&mut self, peer: &PeerId, user: &User) {
        let client = client_node_id(peer);
        let Some(access) = self.node.access_mut() else {
            return;
        };
        if access.get(client).is_some() {
            return;
        }
        if let Err(error) = access.insert(client, permissions(user)) {
            warn_limited!(self.warnings, "access-full", %peer, %error,
                "cannot grant a client its permissions");
        }
    }

    /// Rebuilds the protocol's access policy from the open sessions (after the users file
    /// changed: removed users' sessions are gone, changed permissions apply).
    fn regrant_all(&mut self) {
        if self.node.access().is_none() {
            return;
        }
        let mut policy = AccessPolicy::new();
        for (peer, user) in self.gate.all_sessions() {
            let _ = policy.insert(client_node_id(&peer), permissions(&user));
        }
        self.node.set_access(Some(policy));
    }

    fn on_control(&mut self, request: ControlRequest) {
        match request {
            ControlRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ControlRequest::Metrics(reply) => {
                let _ = reply.send(self.render_metrics());
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

    /// The cluster as this node sees it.
    fn status(&mut self) -> StatusReport {
        let now = self.clock.now();
        let instant = Instant::now();
        let detector = self.node.detector();
        let view: BTreeMap<NodeId, (Heartbeat, f64)> = detector
            .map(|detector| detector.view(now))
            .unwrap_or_default()
            .into_iter()
            .map(|(heartbeat, phi)| (heartbeat.node, (heartbeat, phi)))
            .collect();
        let own = detector.and_then(|detector| detector.digest().first().cloned());
        let mut members = Vec::new();
        for node in &self.config.nodes {
            if node.id == self.me.id {
                members.push(MemberStatus {
                    name: node.name.clone(),
                    id: node.id.0,
                    role: "self".to_string(),
                    incarnation: own.as_ref().map_or(0, |heartbeat| heartbeat.incarnation),
                    counter: own.as_ref().map_or(0, |heartbeat| heartbeat.counter),
                    phi: None,
                    suspected: false,
                    suspected_for_ms: None,
                    load: self.node.open_transactions() as u32,
                    addresses: own
                        .as_ref()
                        .map(|heartbeat| readable(&heartbeat.addresses))
                        .unwrap_or_default(),
                });
                continue;
            }
            members.push(member_status(
                node.name.clone(),
                node.id,
                view.get(&node.id),
                &self.suspected_since,
            ));
        }
        for (id, entry) in &view {
            if self.config.node(*id).is_none() {
                members.push(member_status(
                    format!("client-{:x}", id.0),
                    *id,
                    Some(entry),
                    &self.suspected_since,
                ));
            }
        }
        let in_doubt = self
            .node
            .undecided()
            .filter(|descriptor| self.in_doubt_since.contains_key(&descriptor.txn))
            .map(|descriptor| InDoubtStatus {
                txn: descriptor.txn.to_string(),
                age_ms: self
                    .in_doubt_since
                    .get(&descriptor.txn)
                    .map(|since| instant.duration_since(*since).as_millis() as u64)
                    .unwrap_or(0),
                participants: descriptor.participants.iter().map(|node| node.0).collect(),
            })
            .collect();
        StatusReport {
            name: self.me.name.clone(),
            id: self.me.id.0,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            draining: self.node.is_draining(),
            open_transactions: self.node.open_transactions(),
            phi_threshold: detector.map(|detector| detector.config().phi_threshold),
            detection_bound_ms: detector
                .map(|detector| detection_bound(detector.config()).as_millis() as u64),
            members,
            in_doubt,
            store_bytes: self.node.store_bytes(),
            storage_quota_bytes: self.node.config().limits.store_bytes_max,
            storage_full: self.storage_alarm(),
            quarantined: self.node.is_quarantined(),
            client_sessions: (!self.gate.is_insecure()).then(|| self.gate.sessions()),
        }
    }

    fn render_metrics(&mut self) -> String {
        let mut text = self.render_node_metrics();
        text.push_str(&self.admission.render(&self.me.name, self.gate.sessions()));
        text.push_str(&self.render_trust_metrics());
        text
    }

    /// True while the storage quota refuses writes: the protocol says the quota is
    /// reached, or a write was refused and the data has not shrunk since.
    fn storage_alarm(&mut self) -> bool {
        let used = self
            .node
            .store_bytes()
            .saturating_add(self.node.prepared_bytes());
        if self.storage_refused_at.is_some_and(|at| used < at) {
            self.storage_refused_at = None;
        }
        self.node.storage_full() || self.storage_refused_at.is_some()
    }

    /// Rejected messages by reason, storage use and its alarm, the acceptor quarantine.
    fn render_trust_metrics(&mut self) -> String {
        let storage_alarm = self.storage_alarm();
        let node = &self.me.name;
        let mut text = String::from(
            "# HELP dtx_rejected_messages_total Messages the protocol rejected, by reason.\n# TYPE dtx_rejected_messages_total counter\n",
        );
        for (kind, count) in self.node.rejected_counts() {
            text.push_str(&format!(
                "dtx_rejected_messages_total{{node=\"{node}\",reason=\"{kind:?}\"}} {count}\n"
            ));
        }
        let quota = self.node.config().limits.store_bytes_max;
        let gauges = [
            (
                "dtx_store_bytes",
                "Bytes of committed rows (keys and values) this node holds.",
                self.node.store_bytes(),
            ),
            (
                "dtx_store_prepared_bytes",
                "Bytes prepared transactions would add when they commit.",
                self.node.prepared_bytes(),
            ),
            (
                "dtx_storage_quota_bytes",
                "The storage quota (0: none).",
                quota.unwrap_or(0),
            ),
            (
                "dtx_storage_full",
                "1 while the storage quota is reached: writes that grow the data are refused.",
                u64::from(storage_alarm),
            ),
            (
                "dtx_acceptor_quarantined",
                "1 while the node, reinitialized after data loss, takes no acceptor duty.",
                u64::from(self.node.is_quarantined()),
            ),
        ];
        for (name, help, value) in gauges {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {value}\n"
            ));
        }
        text
    }

    fn render_node_metrics(&mut self) -> String {
        let now = self.clock.now();
        let phi = self
            .config
            .nodes
            .iter()
            .filter(|node| node.id != self.me.id)
            .filter_map(|node| {
                let phi = self.node.detector()?.phi(now, node.id)?;
                Some((node.name.clone(), phi))
            })
            .collect();
        let gauges = Gauges {
            in_doubt: self.node.in_doubt().count(),
            open_transactions: self.node.open_transactions(),
            suspected: self.node.suspected().len(),
            draining: self.node.is_draining(),
            phi,
        };
        self.metrics.render(&self.me.name, &gauges)
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
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Messages(event)) => self.on_messages(event),
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

    /// A message on the liveness topic: a heartbeat digest, fed to the node as gossip from
    /// its authenticated publisher (the signature checked by gossipsub in strict mode).
    fn on_liveness(&mut self, message: gossipsub::Message) {
        if message.topic != self.topic.hash() {
            return;
        }
        let Some(source) = message.source else {
            tracing::debug!("unsigned liveness message ignored");
            return;
        };
        if self.faults.blocks(&source, &self.config) {
            return;
        }
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
        let now = self.clock.now();
        self.node.handle(
            now,
            Input::Receive {
                from,
                messages: gossip,
            },
        );
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
        match frame {
            Frame::Messages(messages) => self.on_request(peer, messages),
            Frame::Rejected(reason) => {
                tracing::warn!(%peer, %reason, "rejected an inbound frame");
            }
        }
    }

    /// A new connection: visitors are kept out of the liveness topic (its messages are
    /// for data nodes) and admitted, or the connection is closed.
    fn on_connected(&mut self, peer: PeerId, connection: libp2p::swarm::ConnectionId) {
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

    fn on_request(&mut self, peer: PeerId, messages: Vec<Message>) {
        if self.faults.blocks(&peer, &self.config) {
            return;
        }
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

fn member_status(
    name: String,
    id: NodeId,
    seen: Option<&(Heartbeat, f64)>,
    suspected_since: &BTreeMap<NodeId, Instant>,
) -> MemberStatus {
    let suspected_for_ms = suspected_since
        .get(&id)
        .map(|since| since.elapsed().as_millis() as u64);
    let role = |role: Role| match role {
        Role::DataNode => "data",
        Role::Client => "client",
        Role::Draining => "draining",
        Role::Left => "left",
        Role::Quarantined => "quarantined",
    };
    match seen {
        Some((heartbeat, phi)) => MemberStatus {
            name,
            id: id.0,
            role: role(heartbeat.role).to_string(),
            incarnation: heartbeat.incarnation,
            counter: heartbeat.counter,
            phi: Some(if phi.is_finite() {
                phi.min(PHI_DISPLAY_MAX)
            } else {
                PHI_DISPLAY_MAX
            }),
            suspected: suspected_for_ms.is_some(),
            suspected_for_ms,
            load: heartbeat.load,
            addresses: readable(&heartbeat.addresses),
        },
        None => MemberStatus {
            name,
            id: id.0,
            role: "data".to_string(),
            incarnation: 0,
            counter: 0,
            phi: None,
            suspected: false,
            suspected_for_ms: None,
            load: 0,
            addresses: Vec::new(),
        },
    }
}

/// Heartbeat addresses as multiaddr text (bytes that are no multiaddr are shown as such).
fn readable(addresses: &[Address]) -> Vec<String> {
    addresses
        .iter()
        .map(|address| match Multiaddr::try_from(address.0.clone()) {
            Ok(multiaddr) => multiaddr.to_string(),
            Err(_) => format!("(not a multiaddr: {} bytes)", address.0.len()),
        })
        .collect()
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

/// A control socket address as a TCP multiaddr (for [`check_port_free`]).
fn control_multiaddr(address: SocketAddr) -> Multiaddr {
    let ip = match address.ip() {
        std::net::IpAddr::V4(ip) => libp2p::multiaddr::Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => libp2p::multiaddr::Protocol::Ip6(ip),
    };
    Multiaddr::empty()
        .with(ip)
        .with(libp2p::multiaddr::Protocol::Tcp(address.port()))
}

/// The protocol's permissions of a user.
fn permissions(user: &User) -> Permissions {
    let keys = |prefixes: &[String]| {
        prefixes
            .iter()
            .map(|prefix| Key::new(prefix.as_str()))
            .collect()
    };
    Permissions {
        read_write: keys(&user.read_write),
        read_only: keys(&user.read_only),
    }
}

/// Fails if another process listens on `address` (a TCP multiaddr with a port). libp2p's
/// TCP listener sets SO_REUSEPORT, so a second `dtx node` on the same port would bind
/// without error and share the port's connections with the first: probe with a plain
/// bind, which the first listener's socket refuses.
fn check_port_free(address: &Multiaddr) -> Result<(), DaemonError> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for protocol in address.iter() {
        match protocol {
            Protocol::Ip4(address) => ip = Some(std::net::IpAddr::V4(address)),
            Protocol::Ip6(address) => ip = Some(std::net::IpAddr::V6(address)),
            Protocol::Tcp(number) => port = Some(number),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            Err(DaemonError::PortInUse {
                address: address.to_string(),
            })
        }
        // Anything else (an address not on this host, say) is for libp2p to report.
        Err(_) => Ok(()),
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
