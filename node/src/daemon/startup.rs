//! Starting a data node: identity, data directory, log recovery, swarm, control endpoint
//! and the checks that stop a second copy of a node before it touches anything.

use super::faults::Faults;
use super::inbound::ClientPeers;
use super::membership::{introduce, ConfigWatch};
use super::resource::ResourceRunner;
use super::{Clock, DaemonError, DaemonOptions, EventLoop};
use crate::admission::Admission;
use crate::auth::{Gate, AUTH_PROTOCOL};
use crate::config::load_keypair;
use crate::control::{self, Metrics};
use crate::datadir::{self, Identity};
use crate::links::Links;
use crate::network::{build_swarm, HeardAddresses, Outbox, PeerKind, SwarmError, LIVENESS_TOPIC};
use crate::participant::Participant;
use crate::ratelog::WarningLimiter;
use crate::users::Users;
use crate::wal::{Wal, WalOptions};
use dtx_protocol::{AccessPolicy, Node, NodeConfig, ResourceKind};
use libp2p::{gossipsub, Multiaddr};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Runs a data node over the built-in key-value store until SIGINT/SIGTERM or a fatal
/// error.
pub async fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    run_with_participant(options, None).await
}

/// Runs a data node until SIGINT/SIGTERM or a fatal error. With a `participant`, the
/// node's resource is that service (`ResourceKind::External`): it asks the participant to
/// prepare, commit and roll back, and serves no keys of its own; without one, the built-in
/// key-value store. This is how a Rust service hosts its own data node in its process
/// (see `node/examples/embedded_participant.rs`); `dtx node --participant URL` passes an
/// [`HttpParticipant`](crate::participant::http::HttpParticipant).
pub async fn run_with_participant(
    options: DaemonOptions,
    participant: Option<Arc<dyn Participant>>,
) -> Result<(), DaemonError> {
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
    let users_watch = users
        .as_ref()
        .map(|_| ConfigWatch::new(options.config.users_path()));
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
    #[cfg(feature = "test-hooks")]
    {
        wal_options.crash_at_group_commit = options.crash_at_group_commit;
    }
    let faults = Faults::new(options.fault_injection);
    if options.fault_injection {
        eprintln!(
            "WARNING: dtx node {} takes FAULT PLANS (--fault-injection): whoever holds the control token can drop, delay and duplicate its messages (experiments only, never in production)",
            me.name
        );
        tracing::warn!(name = %me.name, "FAULT INJECTION enabled: POST /faults changes this node's network");
    }
    if let Some(bytes) = options.checkpoint_after_bytes {
        wal_options.checkpoint_after_bytes = bytes;
    }
    let mut node_config = NodeConfig::new(me.id, options.config.cluster.clone(), seed());
    node_config.limits.outcomes_kept_max = wal_options.outcomes_window;
    node_config.detector = options.detector.clone();
    node_config.bugs = options.bugs.clone();
    if node_config.bugs != dtx_protocol::Bugs::none() {
        eprintln!(
            "WARNING: dtx node {} runs with deliberate PROTOCOL BUGS switched on (--bug): it will break atomicity or isolation",
            me.name
        );
    }
    if let Some(timeout) = options.decision_timeout {
        node_config.decision_timeout = timeout;
    }
    if let Some(timeout) = options.service_vote_timeout {
        node_config.service_vote_timeout = timeout;
    }
    if participant.is_some() {
        node_config.resource = ResourceKind::External;
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
            message: with_causes(&error),
        })?;
    for peer in &options.config.nodes {
        if peer.id != me.id {
            introduce(&mut swarm, peer);
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
            tokio::spawn(control::serve(
                listener,
                control_sender,
                control_token,
                options.fault_injection,
            ));
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
    let resource_text = if participant.is_some() {
        "; resource: service"
    } else {
        ""
    };
    println!(
        "dtx node {} ready: id {} peer {} listening on {}{control_text} (recovered {record_count} records, {in_doubt} in doubt; clients: {security}{resource_text})",
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
        faults,
        topic,
        users_watch,
        config_watch: options.config_path.map(ConfigWatch::new),
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
        resource: participant.map(ResourceRunner::new),
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

/// An error with its chain of causes: libp2p's `TransportError::Other` displays as
/// nothing, its io error (such as "Address in use") is only its source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let line = inner.to_string();
        if !line.is_empty() && !text.contains(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        cause = inner.source();
    }
    text
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

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[test]
    fn a_listen_error_names_its_io_cause() {
        let error: libp2p::TransportError<std::io::Error> = libp2p::TransportError::Other(
            std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use"),
        );
        assert_eq!(
            error.to_string(),
            "",
            "libp2p's own display (why the causes are needed)"
        );
        assert_eq!(with_causes(&error), "Address in use");
    }
}
