//! Membership reload: `cluster.toml` and `users.toml` are polled, and what follows when
//! they change (members appended join; removed users' sessions end; permissions are
//! granted to the protocol's access policy).

use super::EventLoop;
use crate::config::{client_node_id, ClusterConfig, NodeInfo};
use crate::network::Behaviour;
use crate::users::{User, Users};
use crate::warn_limited;
use dtx_protocol::{AccessPolicy, Key, Permissions};
use libp2p::{PeerId, Swarm};
use std::path::PathBuf;

/// The config file and when it last changed.
#[derive(Debug)]
pub(super) struct ConfigWatch {
    path: PathBuf,
    modified: Option<std::time::SystemTime>,
}

impl ConfigWatch {
    /// Watches `path`. The first look always counts as a change: the caller loaded the
    /// file earlier (the CLI, or startup before printing ready), and a write in between
    /// (`dtx user add`, `dtx add-node` racing the start) must not become the baseline.
    /// Reloading an unchanged file is harmless: both reloads are idempotent.
    pub(super) fn new(path: PathBuf) -> ConfigWatch {
        ConfigWatch {
            modified: None,
            path,
        }
    }

    /// True (once) if the file's modification time changed since the last look.
    fn changed(&mut self) -> bool {
        let now_modified = modified(&self.path);
        if now_modified == self.modified {
            return false;
        }
        self.modified = now_modified;
        true
    }
}

/// Tells the swarm where a member is and dials it, at start and when it joins.
pub(super) fn introduce(swarm: &mut Swarm<Behaviour>, node: &NodeInfo) {
    swarm.add_peer_address(node.peer_id, node.address.clone());
    // Bootstrap addresses seed the private DHT; identify adds what peers report.
    swarm
        .behaviour_mut()
        .kademlia
        .add_address(&node.peer_id, node.address.clone());
    // Best effort: a peer that is down is dialed again when there is something to send it.
    let _ = swarm.dial(node.peer_id);
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

impl EventLoop {
    /// Re-reads `cluster.toml` if it changed; members appended to it (service or
    /// acceptor-only nodes) join: the protocol node takes the new membership, the swarm
    /// learns their addresses and dials them. Anything else (a removed or changed node,
    /// a new F, a new data node) is refused and logged, and the running membership stays.
    pub(super) fn reload_config(&mut self) {
        let Some(watch) = self.config_watch.as_mut() else {
            return;
        };
        if !watch.changed() {
            return;
        }
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
            introduce(&mut self.swarm, node);
        }
        self.config = newer;
    }

    /// Re-reads `users.toml` if it changed: removed users' sessions end at once (their
    /// connections are closed), changed permissions apply to the next operations.
    pub(super) fn reload_users(&mut self) {
        let Some(watch) = self.users_watch.as_mut() else {
            return;
        };
        if !watch.changed() {
            return;
        }
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

    /// Makes sure the protocol knows the permissions of `peer`'s user (a client with a
    /// session); the first frame of a session installs them.
    pub(super) fn grant(&mut self, peer: &PeerId, user: &User) {
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
