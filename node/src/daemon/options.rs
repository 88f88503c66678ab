//! How to run a data node ([`DaemonOptions`]) and why it stopped ([`DaemonError`]).

use crate::config::{ClusterConfig, ConfigError, KeyError};
use crate::control::ControlError;
use crate::datadir::{DataDirError, OpenMode};
use crate::links::{ClientBudget, TransportKind};
use crate::network::SwarmError;
use crate::users::UsersError;
use crate::wal::WalOpenError;
use dtx_protocol::detector::DetectorConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Test hook, see [`CRASH_AT_GROUP_COMMIT_ENV`](super::CRASH_AT_GROUP_COMMIT_ENV)
    /// (`test-hooks` feature only).
    #[cfg(feature = "test-hooks")]
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
    /// How long a transaction waits for the votes of service members before it is
    /// recovered, unless one is suspected (`None`: the protocol's default, 15 s).
    pub service_vote_timeout: Option<Duration>,
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
    /// Take fault plans on the control endpoint (`POST /faults`, see [`crate::faults`]):
    /// whoever holds the control token may then break this node's network. For
    /// experiments only (`dtx lab`, the black-box tests); the node warns loudly at start.
    /// Off, every fault hook is one false bool.
    pub fault_injection: bool,
    /// Deliberate protocol bugs switched on (`dtx node --bug`; effective only in a build
    /// with the `bugs` feature, refused at parse time otherwise).
    pub bugs: dtx_protocol::Bugs,
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
            #[cfg(feature = "test-hooks")]
            crash_at_group_commit: None,
            transport: TransportKind::Stream,
            control,
            mdns: false,
            detector: Some(DetectorConfig::default()),
            decision_timeout: None,
            service_vote_timeout: None,
            config_path: None,
            listen: None,
            insecure: false,
            client_budget: ClientBudget::default(),
            data_dir_mode: OpenMode::Existing,
            storage_quota_bytes: None,
            fault_injection: false,
            bugs: dtx_protocol::Bugs::none(),
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
