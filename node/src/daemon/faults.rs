//! Fault injection for tests: the `DTX_FAULT_FILE` hook. The file lists node names (and
//! the word `clients`) whose traffic this node drops in both directions, as if partitioned.

use crate::config::ClusterConfig;
use libp2p::PeerId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// How often the fault-injection file is re-read.
pub const FAULT_FILE_POLL: Duration = Duration::from_millis(100);

/// Environment variable naming the fault-injection file (tests only): it lists node names
/// whose traffic this node drops in both directions, as if partitioned from them.
pub const FAULT_FILE_ENV: &str = "DTX_FAULT_FILE";

/// Peers to treat as unreachable (fault injection for tests). The file lists node names,
/// and the word `clients` for every peer that is not a data node.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) file: Option<PathBuf>,
    pub(super) blocked: BTreeSet<PeerId>,
    pub(super) clients_blocked: bool,
}

impl Faults {
    pub(super) fn reload(&mut self, config: &ClusterConfig) {
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
    pub(super) fn active(&self) -> bool {
        !self.blocked.is_empty() || self.clients_blocked
    }

    pub(super) fn blocks(&self, peer: &PeerId, config: &ClusterConfig) -> bool {
        self.blocked.contains(peer) || (self.clients_blocked && config.member_of(peer).is_none())
    }
}
