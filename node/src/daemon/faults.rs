//! Fault injection for tests: the `DTX_FAULT_FILE` hook. The file lists node names (and
//! the word `clients`) whose traffic this node drops in both directions, as if partitioned.
//!
//! Built only with the `test-hooks` cargo feature (the black-box tests enable it): without
//! it, [`Faults`] blocks nothing and never wakes the event loop, and a production binary
//! holds no code that drops traffic on a file's say-so.

#[cfg(feature = "test-hooks")]
pub use self::hook::{Faults, FAULT_FILE_ENV, FAULT_FILE_POLL};
#[cfg(not(feature = "test-hooks"))]
pub use self::no_hook::Faults;

#[cfg(feature = "test-hooks")]
mod hook {
    use crate::config::ClusterConfig;
    use crate::daemon::DaemonOptions;
    use libp2p::PeerId;
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::time::Duration;

    /// How often the fault-injection file is re-read.
    pub const FAULT_FILE_POLL: Duration = Duration::from_millis(100);

    /// Environment variable naming the fault-injection file (tests only): it lists node
    /// names whose traffic this node drops in both directions, as if partitioned from them.
    pub const FAULT_FILE_ENV: &str = "DTX_FAULT_FILE";

    /// Peers to treat as unreachable (fault injection for tests). The file lists node
    /// names, and the word `clients` for every peer that is not a data node.
    #[derive(Debug, Default)]
    pub struct Faults {
        file: Option<PathBuf>,
        blocked: BTreeSet<PeerId>,
        clients_blocked: bool,
        /// Re-reads the file; made at the first wait, in the event loop.
        poll: Option<tokio::time::Interval>,
    }

    impl Faults {
        /// The faults of a node started with `options` (none until the file is read).
        pub(in crate::daemon) fn from_options(options: &DaemonOptions) -> Faults {
            Faults {
                file: options.fault_file.clone(),
                ..Faults::default()
            }
        }

        /// Resolves when the file is due to be read again (never, if there is none).
        pub(in crate::daemon) async fn due(&mut self) {
            if self.file.is_none() {
                return std::future::pending().await;
            }
            self.poll
                .get_or_insert_with(|| tokio::time::interval(FAULT_FILE_POLL))
                .tick()
                .await;
        }

        pub(in crate::daemon) fn reload(&mut self, config: &ClusterConfig) {
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
        pub(in crate::daemon) fn active(&self) -> bool {
            !self.blocked.is_empty() || self.clients_blocked
        }

        pub(in crate::daemon) fn blocks(&self, peer: &PeerId, config: &ClusterConfig) -> bool {
            self.blocked.contains(peer)
                || (self.clients_blocked && config.member_of(peer).is_none())
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
mod no_hook {
    use crate::config::ClusterConfig;
    use crate::daemon::DaemonOptions;
    use libp2p::PeerId;

    /// No fault injection in this build: nothing is ever blocked.
    #[derive(Debug, Default)]
    pub struct Faults;

    impl Faults {
        /// No faults, whatever the options.
        pub(in crate::daemon) fn from_options(_options: &DaemonOptions) -> Faults {
            Faults
        }

        /// Never resolves: there is no file to read.
        pub(in crate::daemon) async fn due(&mut self) {
            std::future::pending().await
        }

        pub(in crate::daemon) fn reload(&mut self, _config: &ClusterConfig) {}

        /// Always false.
        pub(in crate::daemon) fn active(&self) -> bool {
            false
        }

        pub(in crate::daemon) fn blocks(&self, _peer: &PeerId, _config: &ClusterConfig) -> bool {
            false
        }
    }
}
