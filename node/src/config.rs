//! `cluster.toml`: the declared data nodes (names, ids, peer ids, addresses, key files) and
//! F, plus `dtx init`, which writes one for a local cluster.
//!
//! ```toml
//! f = 1
//! [[nodes]]
//! name = "n1"
//! id = 1
//! peer_id = "12D3KooW..."
//! address = "/ip4/127.0.0.1/tcp/40001"
//! key_file = "n1.key"      # relative to this file; read only by the node itself
//! control = "127.0.0.1:40101" # optional: status, metrics and drain (HTTP, loopback;
//!                             # or the node's own private listen IP, see parse_control)
//! ```
//!
//! The peer ids are the cluster's allow-list: only these authenticated identities may act
//! as data nodes (RMs, acceptors, recovery leaders).

use crate::datadir::{self, DataDirError, Identity, OpenMode};
use crate::secret::{hex, random_bytes, read_secret, write_secret, SecretError};
use crate::users::{
    add_user, Credential, Users, UsersError, DEFAULT_USER, USERS_FILE_NAME, USER_ENV,
};
use dtx_protocol::{Cluster, ClusterError, Member, NodeId};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Longest cluster id (hex digits).
pub const CLUSTER_ID_HEX_MAX: usize = 64;

/// Bytes of randomness in a cluster id `dtx init` makes.
pub const CLUSTER_ID_BYTES: usize = 16;

/// The control token file's name, next to `cluster.toml`.
pub const CONTROL_TOKEN_FILE_NAME: &str = "control.token";

/// Data node ids must stay below this: client ids have the top bit set.
pub const DATA_NODE_ID_LIMIT: u64 = 1 << 63;

/// Most data nodes `dtx init` writes.
pub const INIT_NODES_MAX: usize = 64;

/// One `[[nodes]]` entry as written in the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's name: it owns every key `name/...`.
    pub name: String,
    /// Its protocol id (1 ..= 2^63-1).
    pub id: u64,
    /// Its libp2p peer id (base58).
    pub peer_id: String,
    /// Its listen address (a multiaddr).
    pub address: String,
    /// Its keypair file (protobuf-encoded ed25519), relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Its control endpoint (`GET /status`, `GET /metrics`, `POST /drain`): a loopback
    /// socket address such as `127.0.0.1:40101`, or one on the node's own private listen
    /// IP ([`parse_control`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// `data` (default: takes part in placing un-namespaced keys), `service` or
    /// `acceptor` (owns only its own `name/` namespace; what a node joining a running
    /// cluster must be, so that no existing key changes owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The file as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The cluster's identity (random hex written by `dtx init`): client session proofs
    /// and data directories are bound to it, so neither is accepted by another cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Failures tolerated per transaction (2F+1 acceptors).
    pub f: u32,
    /// The data nodes.
    pub nodes: Vec<NodeEntry>,
}

/// A validated data node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Protocol id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// Authenticated identity.
    pub peer_id: PeerId,
    /// Where it listens.
    pub address: Multiaddr,
    /// Its keypair file, resolved against the config file's directory.
    pub key_file: Option<PathBuf>,
    /// Its control endpoint (loopback), if declared.
    pub control: Option<std::net::SocketAddr>,
    /// True for `service` and `acceptor` nodes: they own only their own namespace.
    pub namespace_only: bool,
}

/// A validated cluster configuration.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The cluster's identity (empty for a file written before cluster ids existed).
    pub cluster_id: String,
    /// The directory of the config file: `users.toml`, keys and the control token live
    /// next to it.
    pub dir: PathBuf,
    /// The protocol's view: members and F.
    pub cluster: Cluster,
    /// The data nodes in file order.
    pub nodes: Vec<NodeInfo>,
    by_peer: BTreeMap<PeerId, NodeId>,
}

/// Why a cluster configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read cluster config {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Not valid TOML of the expected shape.
    #[error("cluster config {path} is malformed: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A peer id does not parse.
    #[error("node {name:?}: invalid peer_id {value:?}")]
    PeerId {
        /// The node.
        name: String,
        /// The bad value.
        value: String,
    },
    /// An address does not parse.
    #[error("node {name:?}: invalid address {value:?} (expected a multiaddr like /ip4/127.0.0.1/tcp/4001)")]
    Address {
        /// The node.
        name: String,
        /// The bad value.
        value: String,
    },
    /// An id is 0 or has the top bit set (reserved for clients).
    #[error("node {name:?}: id {id} must be between 1 and 2^63-1")]
    Id {
        /// The node.
        name: String,
        /// The bad id.
        id: u64,
    },
    /// A control address does not parse, or is neither on loopback nor the node's own
    /// private listen IP.
    #[error("node {name:?}: control address {value:?} must be a loopback socket address like 127.0.0.1:40101, or on the node's own private (RFC 1918) listen IP")]
    Control {
        /// The node.
        name: String,
        /// The bad value.
        value: String,
    },
    /// An unknown role.
    #[error("node {name:?}: role {value:?} must be data, service or acceptor")]
    Role {
        /// The node.
        name: String,
        /// The bad value.
        value: String,
    },
    /// Two nodes share a name.
    #[error("node name {0:?} is declared twice")]
    DuplicateName(String),
    /// Two nodes share a peer id.
    #[error("peer id {0} is declared twice")]
    DuplicatePeer(String),
    /// The cluster id is not 1 to 64 hex digits.
    #[error("cluster_id {0:?} must be 1 to 64 hex digits")]
    ClusterId(String),
    /// The protocol rejects the membership.
    #[error("invalid cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Why a node's keypair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The node has no `key_file` entry.
    #[error("node {0:?} has no key_file in the cluster config")]
    Missing(String),
    /// The file could not be read, or others may read it.
    #[error(transparent)]
    Read(#[from] SecretError),
    /// Not a protobuf-encoded keypair.
    #[error("key file {path} is not a protobuf-encoded keypair: {message}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The key does not match the declared peer id.
    #[error("key file {path} belongs to peer {actual}, but the config declares {expected}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Declared (base58).
        expected: String,
        /// Found (base58).
        actual: String,
    },
}

impl ClusterConfig {
    /// Reads and validates a `cluster.toml`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let file: ClusterFile = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        ClusterConfig::from_file(file, base)
    }

    /// Validates a parsed file; key files resolve against `base`.
    pub fn from_file(file: ClusterFile, base: &Path) -> Result<ClusterConfig, ConfigError> {
        let cluster_id = file.cluster_id.clone().unwrap_or_default();
        if file.cluster_id.is_some()
            && (cluster_id.is_empty()
                || cluster_id.len() > CLUSTER_ID_HEX_MAX
                || !cluster_id.bytes().all(|byte| byte.is_ascii_hexdigit()))
        {
            return Err(ConfigError::ClusterId(cluster_id));
        }
        let mut nodes = Vec::new();
        let mut by_peer = BTreeMap::new();
        for entry in file.nodes {
            if entry.id == 0 || entry.id >= DATA_NODE_ID_LIMIT {
                return Err(ConfigError::Id {
                    name: entry.name,
                    id: entry.id,
                });
            }
            let peer_id: PeerId = entry.peer_id.parse().map_err(|_| ConfigError::PeerId {
                name: entry.name.clone(),
                value: entry.peer_id.clone(),
            })?;
            let address: Multiaddr = entry.address.parse().map_err(|_| ConfigError::Address {
                name: entry.name.clone(),
                value: entry.address.clone(),
            })?;
            if by_peer.insert(peer_id, NodeId(entry.id)).is_some() {
                return Err(ConfigError::DuplicatePeer(entry.peer_id));
            }
            if nodes.iter().any(|node: &NodeInfo| node.name == entry.name) {
                return Err(ConfigError::DuplicateName(entry.name));
            }
            let control = match &entry.control {
                None => None,
                Some(text) => Some(parse_control(&entry.name, text)?),
            };
            if let Some(control) = control {
                if !control.ip().is_loopback() && !listens_on(&address, control.ip()) {
                    return Err(ConfigError::Control {
                        name: entry.name,
                        value: control.to_string(),
                    });
                }
            }
            let namespace_only = match entry.role.as_deref() {
                None | Some("data") => false,
                Some("service" | "acceptor") => true,
                Some(other) => {
                    return Err(ConfigError::Role {
                        name: entry.name,
                        value: other.to_string(),
                    })
                }
            };
            nodes.push(NodeInfo {
                id: NodeId(entry.id),
                name: entry.name,
                peer_id,
                address,
                key_file: entry.key_file.map(|file| base.join(file)),
                control,
                namespace_only,
            });
        }
        let members = nodes
            .iter()
            .map(|node| Member {
                id: node.id,
                name: node.name.clone(),
            })
            .collect();
        let namespace_only: Vec<NodeId> = nodes
            .iter()
            .filter(|node| node.namespace_only)
            .map(|node| node.id)
            .collect();
        let cluster = Cluster::new(members, file.f)?.with_namespace_only(namespace_only);
        Ok(ClusterConfig {
            cluster_id,
            dir: base.to_path_buf(),
            cluster,
            nodes,
            by_peer,
        })
    }

    /// Checks that `newer` only appends members to this configuration: same F, every
    /// existing node unchanged (id, name, peer, address, role), and every new one
    /// namespace-only (`service` or `acceptor`), so that no existing key changes owner.
    /// Returns the new nodes.
    pub fn appended_in<'a>(&self, newer: &'a ClusterConfig) -> Result<Vec<&'a NodeInfo>, String> {
        if newer.cluster.f() != self.cluster.f() {
            return Err(format!(
                "F changed from {} to {}",
                self.cluster.f(),
                newer.cluster.f()
            ));
        }
        for node in &self.nodes {
            let same = newer.node_named(&node.name).is_some_and(|other| {
                other.id == node.id
                    && other.peer_id == node.peer_id
                    && other.address == node.address
                    && other.namespace_only == node.namespace_only
            });
            if !same {
                return Err(format!("node {:?} was removed or changed", node.name));
            }
        }
        let added: Vec<&NodeInfo> = newer
            .nodes
            .iter()
            .filter(|node| self.node_named(&node.name).is_none())
            .collect();
        if let Some(node) = added.iter().find(|node| !node.namespace_only) {
            return Err(format!(
                "new node {:?} must have role = \"service\" or \"acceptor\" (a data node would move existing keys)",
                node.name
            ));
        }
        Ok(added)
    }

    /// The users file next to the config (`users.toml`).
    pub fn users_path(&self) -> PathBuf {
        self.dir.join(USERS_FILE_NAME)
    }

    /// The control token file next to the config: state-changing control requests
    /// (`POST /drain`) must carry it.
    pub fn control_token_path(&self) -> PathBuf {
        self.dir.join(CONTROL_TOKEN_FILE_NAME)
    }

    /// The credential `dtx` client commands use: the key of user `name` (default
    /// `$DTX_USER`, else `admin`) from the users file. `Ok(None)` when there is no users
    /// file or the default user has no key here (a client that then talks to a secure
    /// cluster is refused with a clear error); an error when a named user cannot be used.
    pub fn credential(&self, name: Option<&str>) -> Result<Option<Credential>, UsersError> {
        let users_path = self.users_path();
        let explicit = name
            .map(str::to_string)
            .or_else(|| std::env::var(USER_ENV).ok());
        if !users_path.exists() {
            return match explicit {
                Some(name) => Err(UsersError::Unknown(name)),
                None => Ok(None),
            };
        }
        match explicit {
            Some(name) => Credential::load(&users_path, &name).map(Some),
            None => {
                let users = Users::load(&users_path)?;
                match users.named(DEFAULT_USER) {
                    Some(user) if user.key_file.as_ref().is_some_and(|path| path.exists()) => {
                        Credential::load(&users_path, DEFAULT_USER).map(Some)
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// The data node called `name`.
    pub fn node_named(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The data node with protocol id `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// The data node id of an authenticated peer, if it is one (the allow-list).
    pub fn member_of(&self, peer: &PeerId) -> Option<NodeId> {
        self.by_peer.get(peer).copied()
    }

    /// The protocol id of an authenticated peer: its declared id for a data node, else a
    /// stable hash of its peer id with the top bit set, which no data node id can equal.
    pub fn node_id_of(&self, peer: &PeerId) -> NodeId {
        self.member_of(peer).unwrap_or_else(|| client_node_id(peer))
    }
}

/// Parses a control address: a socket address on loopback, or on a private-use IPv4
/// address (RFC 1918; the cluster config also demands it be the node's own listen IP).
/// The control endpoint can drain the node and shows its state, so it never listens on
/// a public address: loopback is the rule, and the private form exists for nodes that run
/// in their own network namespace (`dtx lab run --netns`), whose loopback nobody else can
/// reach.
pub fn parse_control(name: &str, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let error = || ConfigError::Control {
        name: name.to_string(),
        value: text.to_string(),
    };
    let address: std::net::SocketAddr = text.parse().map_err(|_| error())?;
    if !is_control_ip(address.ip()) {
        return Err(error());
    }
    Ok(address)
}

/// True for an IP a control endpoint may listen on: loopback, or a private-use IPv4
/// address (10/8, 172.16/12, 192.168/16; see [`parse_control`]).
pub fn is_control_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private(),
        std::net::IpAddr::V6(ip) => ip.is_loopback(),
    }
}

/// True if the multiaddr `address` starts with `/ip4/IP` or `/ip6/IP` for `ip`.
fn listens_on(address: &Multiaddr, ip: std::net::IpAddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match address.iter().next() {
        Some(Protocol::Ip4(own)) => std::net::IpAddr::V4(own) == ip,
        Some(Protocol::Ip6(own)) => std::net::IpAddr::V6(own) == ip,
        _ => false,
    }
}

/// Moves node `name` of the `cluster.toml` at `config_path` onto `ip`: its listen address
/// and its control endpoint keep their ports and get `ip` (for a node in its own network
/// namespace, `dtx lab run --netns`). The file is validated and replaced whole.
pub fn set_node_ip(
    config_path: &Path,
    name: &str,
    ip: std::net::Ipv4Addr,
) -> Result<(), InitError> {
    let text = std::fs::read_to_string(config_path).map_err(|cause| InitError::Write {
        path: config_path.to_path_buf(),
        cause,
    })?;
    let mut file: ClusterFile =
        toml::from_str(&text).map_err(|error| InitError::Arguments(error.to_string()))?;
    let entry = file
        .nodes
        .iter_mut()
        .find(|node| node.name == name)
        .ok_or_else(|| InitError::Arguments(format!("no node named {name:?}")))?;
    let port = |text: &str| text.rsplit(['/', ':']).next().map(str::to_string);
    let swarm_port = port(&entry.address)
        .ok_or_else(|| InitError::Arguments(format!("{name}: no port in {}", entry.address)))?;
    entry.address = format!("/ip4/{ip}/tcp/{swarm_port}");
    if let Some(control) = entry.control.clone() {
        let control_port = port(&control)
            .ok_or_else(|| InitError::Arguments(format!("{name}: no port in {control}")))?;
        entry.control = Some(format!("{ip}:{control_port}"));
    }
    let dir = config_path.parent().unwrap_or(Path::new("."));
    write_cluster_file(&file, dir, config_path)
}

/// The protocol id of a client peer: a stable hash of its peer id, top bit set.
pub fn client_node_id(peer: &PeerId) -> NodeId {
    let hash = dtx_protocol::rng::stable_hash(&peer.to_bytes(), 0x6474_785f_636c_6e74);
    NodeId(hash | DATA_NODE_ID_LIMIT)
}

/// Loads a data node's keypair and checks it matches the declared peer id.
pub fn load_keypair(node: &NodeInfo) -> Result<Keypair, KeyError> {
    let path = node
        .key_file
        .clone()
        .ok_or_else(|| KeyError::Missing(node.name.clone()))?;
    let bytes = read_secret(&path)?;
    let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|error| KeyError::Decode {
        path: path.clone(),
        message: error.to_string(),
    })?;
    let actual = keypair.public().to_peer_id();
    if actual != node.peer_id {
        return Err(KeyError::Mismatch {
            path,
            expected: node.peer_id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(keypair)
}

/// Why `dtx init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Bad arguments.
    #[error("{0}")]
    Arguments(String),
    /// The file system refused.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// No free port could be found.
    #[error("cannot find a free loopback port: {0}")]
    Port(std::io::Error),
    /// The resulting cluster is invalid.
    #[error("invalid cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// Key encoding failed.
    #[error("cannot encode a key: {0}")]
    Key(String),
    /// A secret file could not be written.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A node's data directory could not be prepared.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The operating system gave no randomness.
    #[error("cannot get random bytes: {0}")]
    Random(std::io::Error),
    /// The users file could not be written.
    #[error(transparent)]
    Users(#[from] UsersError),
}

/// Writes keys and a `cluster.toml` for a local cluster on 127.0.0.1 into `dir`: nodes
/// named `names` (default `n1..nN`), ids 1..N, free ports, F = `f`. Returns the config path.
pub fn init(
    dir: &Path,
    nodes: usize,
    names: Option<Vec<String>>,
    f: u32,
) -> Result<PathBuf, InitError> {
    if nodes == 0 || nodes > INIT_NODES_MAX {
        return Err(InitError::Arguments(format!(
            "--nodes must be between 1 and {INIT_NODES_MAX}, got {nodes}"
        )));
    }
    let names = names.unwrap_or_else(|| (1..=nodes).map(|index| format!("n{index}")).collect());
    if names.len() != nodes {
        return Err(InitError::Arguments(format!(
            "{} names given for {nodes} nodes",
            names.len()
        )));
    }
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| InitError::Write { path, cause }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    // Every probe listener is held until all ports are chosen, so no two nodes get one port.
    let reserved =
        crate::ports::reserve(2 * nodes, &Default::default()).map_err(InitError::Port)?;
    let mut entries = Vec::new();
    let (swarm_ports, control_ports) = reserved.split_at(nodes);
    for (index, (name, ((port, _), (control_port, _)))) in names
        .iter()
        .zip(swarm_ports.iter().zip(control_ports))
        .enumerate()
    {
        let (port, control_port) = (*port, *control_port);
        let keypair = Keypair::generate_ed25519();
        let bytes = keypair
            .to_protobuf_encoding()
            .map_err(|error| InitError::Key(error.to_string()))?;
        let key_file = format!("{name}.key");
        let key_path = dir.join(&key_file);
        write_secret(&key_path, &bytes)?;
        entries.push(NodeEntry {
            name: name.clone(),
            id: index as u64 + 1,
            peer_id: keypair.public().to_peer_id().to_string(),
            address: format!("/ip4/127.0.0.1/tcp/{port}"),
            key_file: Some(key_file),
            control: Some(format!("127.0.0.1:{control_port}")),
            role: None,
        });
    }
    drop(reserved);
    let cluster_id = hex(&random_bytes(CLUSTER_ID_BYTES).map_err(InitError::Random)?);
    let file = ClusterFile {
        cluster_id: Some(cluster_id.clone()),
        f,
        nodes: entries.clone(),
    };
    let path = dir.join("cluster.toml");
    write_cluster_file(&file, dir, &path)?;
    // Each node's data directory, with its identity: `dtx node --data-dir DIR/NAME` then
    // starts it as it would restart it, and a wiped directory is refused.
    for entry in &entries {
        prepare_data_dir(dir, &cluster_id, entry)?;
    }
    // The first user, with every permission: what `dtx` client commands act as.
    let users_path = dir.join(USERS_FILE_NAME);
    if !users_path.exists() {
        add_user(&users_path, DEFAULT_USER, vec![String::new()], Vec::new())?;
    }
    let token_path = dir.join(CONTROL_TOKEN_FILE_NAME);
    if !token_path.exists() {
        crate::control::create_token_file(&token_path)
            .map_err(|error| InitError::Arguments(error.to_string()))?;
    }
    Ok(path)
}

/// Validates `file` (so a bad F or member is reported, not written) and writes it to
/// `path` whole, then renames it into place: a node re-reading the file never sees half
/// of it.
fn write_cluster_file(file: &ClusterFile, dir: &Path, path: &Path) -> Result<(), InitError> {
    ClusterConfig::from_file(file.clone(), dir).map_err(|error| match error {
        ConfigError::Cluster(error) => InitError::Cluster(error),
        other => InitError::Arguments(other.to_string()),
    })?;
    let text = toml::to_string_pretty(file).map_err(|error| InitError::Key(error.to_string()))?;
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(&temporary, text).map_err(|cause| InitError::Write {
        path: temporary.clone(),
        cause,
    })?;
    std::fs::rename(&temporary, path).map_err(|cause| InitError::Write {
        path: path.to_path_buf(),
        cause,
    })
}

/// Appends a new `service` or `acceptor` node called `name` to the `cluster.toml` at
/// `config_path` (the next free id, a fresh key next to the file, free loopback ports
/// that no other entry names), so that it can join the running cluster: start it with
/// the new file, and the running nodes pick the entry up (they re-read the file).
/// Returns the new entry.
pub fn add_node(config_path: &Path, name: &str, role: &str) -> Result<NodeEntry, InitError> {
    if !matches!(role, "service" | "acceptor") {
        return Err(InitError::Arguments(format!(
            "--role must be service or acceptor, got {role:?} (a new data node would move existing keys)"
        )));
    }
    let text = std::fs::read_to_string(config_path).map_err(|cause| InitError::Write {
        path: config_path.to_path_buf(),
        cause,
    })?;
    let mut file: ClusterFile =
        toml::from_str(&text).map_err(|error| InitError::Arguments(error.to_string()))?;
    if file.nodes.iter().any(|node| node.name == name) {
        return Err(InitError::Arguments(format!(
            "a node named {name:?} exists"
        )));
    }
    let dir = config_path.parent().unwrap_or(Path::new("."));
    // Ports the file already names are not bound while their nodes are down, so the
    // system may hand one out again: skip those (a new node listening on another node's
    // control port would keep one of them from starting). Every listener is held until
    // the entry is written, so no port comes back twice.
    let taken: std::collections::BTreeSet<u16> = file
        .nodes
        .iter()
        .flat_map(|node| {
            let address = node.address.rsplit('/').next().and_then(|p| p.parse().ok());
            let control = node
                .control
                .as_deref()
                .and_then(|control| control.rsplit(':').next()?.parse().ok());
            [address, control]
        })
        .flatten()
        .collect();
    let reserved = crate::ports::reserve(2, &taken).map_err(InitError::Port)?;
    let [(port, _), (control_port, _)] = reserved.as_slice() else {
        return Err(InitError::Arguments(
            "no two free ports on 127.0.0.1".to_string(),
        ));
    };
    let (port, control_port) = (*port, *control_port);
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|error| InitError::Key(error.to_string()))?;
    let key_file = format!("{name}.key");
    let key_path = dir.join(&key_file);
    write_secret(&key_path, &bytes)?;
    let id = file
        .nodes
        .iter()
        .map(|node| node.id)
        .max()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| {
            InitError::Arguments("no node id is left above the highest in the file".to_string())
        })?;
    let entry = NodeEntry {
        name: name.to_string(),
        id,
        peer_id: keypair.public().to_peer_id().to_string(),
        address: format!("/ip4/127.0.0.1/tcp/{port}"),
        key_file: Some(key_file),
        control: Some(format!("127.0.0.1:{control_port}")),
        role: Some(role.to_string()),
    };
    drop(reserved);
    file.nodes.push(entry.clone());
    write_cluster_file(&file, dir, config_path)?;
    prepare_data_dir(dir, file.cluster_id.as_deref().unwrap_or(""), &entry)?;
    Ok(entry)
}

/// Creates node `entry`'s data directory `dir/NAME` with its identity (a first start).
fn prepare_data_dir(dir: &Path, cluster_id: &str, entry: &NodeEntry) -> Result<(), InitError> {
    let identity = Identity::new(cluster_id, &entry.name, entry.id, &entry.peer_id);
    datadir::open(&dir.join(&entry.name), &identity, OpenMode::New)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_config_that_loads_with_matching_keys() {
        let dir = std::env::temp_dir().join(format!("dtx-init-test-{}", std::process::id()));
        let path = init(&dir, 3, None, 1).unwrap();
        let config = ClusterConfig::load(&path).unwrap();
        assert_eq!(config.nodes.len(), 3);
        for node in &config.nodes {
            let keypair = load_keypair(node).unwrap();
            assert_eq!(keypair.public().to_peer_id(), node.peer_id);
            assert_eq!(config.node_id_of(&node.peer_id), node.id);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_added_service_node_is_an_accepted_extension_and_a_data_node_is_not() {
        let dir = std::env::temp_dir().join(format!("dtx-add-node-{}", std::process::id()));
        let path = init(&dir, 3, None, 1).unwrap();
        let before = ClusterConfig::load(&path).unwrap();
        let entry = add_node(&path, "inventory", "service").unwrap();
        assert_eq!(entry.id, 4);
        let after = ClusterConfig::load(&path).unwrap();
        let added = before.appended_in(&after).unwrap();
        assert_eq!(added.len(), 1);
        assert!(after.cluster.is_namespace_only(dtx_protocol::NodeId(4)));
        assert!(
            add_node(&path, "inventory", "service").is_err(),
            "duplicate name"
        );
        assert!(
            add_node(&path, "more", "data").is_err(),
            "data nodes move keys"
        );
        // Shrinking or changing is not an extension.
        assert!(after.appended_in(&before).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn client_ids_never_collide_with_data_node_ids() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        assert!(client_node_id(&peer).0 >= DATA_NODE_ID_LIMIT);
    }

    #[test]
    fn init_rejects_f_too_large_for_the_node_count() {
        let dir = std::env::temp_dir().join(format!("dtx-init-bad-{}", std::process::id()));
        let error = init(&dir, 2, None, 1).unwrap_err();
        assert!(error.to_string().contains("needs at least 3"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn malformed_config_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("dtx-bad-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.toml");
        std::fs::write(
            &path,
            "f = 0\n[[nodes]]\nname = \"a\"\nid = 1\npeer_id = \"xyz\"\naddress = \"/ip4/127.0.0.1/tcp/1\"\n",
        )
        .unwrap();
        let error = ClusterConfig::load(&path).unwrap_err();
        assert!(error.to_string().contains("invalid peer_id"), "{error}");
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        std::fs::write(
            &path,
            format!("f = 0\n[[nodes]]\nname = \"a\"\nid = 1\npeer_id = \"{peer}\"\naddress = \"/ip4/127.0.0.1/tcp/1\"\ncontrol = \"0.0.0.0:9000\"\n"),
        )
        .unwrap();
        let error = ClusterConfig::load(&path).unwrap_err();
        assert!(error.to_string().contains("loopback"), "{error}");
        // A private control IP only on the node's own listen IP; never a public one.
        for (address, control, loads) in [
            ("/ip4/10.213.7.1/tcp/1", "10.213.7.1:9000", true),
            ("/ip4/10.213.7.1/tcp/1", "10.213.7.2:9000", false),
            ("/ip4/127.0.0.1/tcp/1", "10.213.7.1:9000", false),
            ("/ip4/8.8.8.8/tcp/1", "8.8.8.8:9000", false),
        ] {
            std::fs::write(
                &path,
                format!("f = 0\n[[nodes]]\nname = \"a\"\nid = 1\npeer_id = \"{peer}\"\naddress = \"{address}\"\ncontrol = \"{control}\"\n"),
            )
            .unwrap();
            assert_eq!(
                ClusterConfig::load(&path).is_ok(),
                loads,
                "{address} {control}"
            );
        }
        std::fs::write(&path, "f = \"one\"").unwrap();
        let error = ClusterConfig::load(&path).unwrap_err();
        assert!(error.to_string().contains("malformed"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
