//! # dtx-sim
//!
//! A deterministic simulator for dtx: many `dtx-protocol` data nodes and clients over a
//! simulated network (delay, loss, duplication, reordering, partitions) and simulated disks
//! (power loss keeps only synced bytes, may tear the last write), with crashes and
//! restarts through the same `Node::recover` the daemon uses. Every random choice comes
//! from one seed, so any failure replays from the seed it prints. Checkers: see
//! [`checker`].
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod checker;
pub mod config;
pub mod heartbeats;
pub mod history;
pub mod lab;
pub mod sweep;
pub mod workload;
pub mod world;

pub use checker::Violation;
pub use config::{parse_bugs, Faults, RunConfig, ServiceBugs, TimingOverride, WorkloadKind};
pub use sweep::{run_caught, sweep, SweepSummary};
pub use world::{run, RecoverySamples, RunReport};
pub mod model;

/// The address a simulated data node's heartbeats carry: the bytes of the multiaddr
/// `/ip4/127.0.0.1/tcp/<40000 + id>`, as the daemon's would be, so that gossip sizes
/// measured in the simulator include them.
pub fn simulated_address(node: dtx_protocol::NodeId) -> dtx_protocol::Address {
    let port = (40_000 + node.0 % 20_000) as u16;
    let [high, low] = port.to_be_bytes();
    // Multiaddr codes: 0x04 = ip4 (4 bytes follow), 0x06 = tcp (2 bytes, big endian).
    dtx_protocol::Address(vec![0x04, 127, 0, 0, 1, 0x06, high, low])
}
