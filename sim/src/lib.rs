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
pub mod sweep;
pub mod workload;
pub mod world;

pub use config::{parse_bugs, Faults, RunConfig, TimingOverride, WorkloadKind};
pub use sweep::{run_caught, sweep, SweepSummary};
pub use world::{run, RecoverySamples, RunReport};
pub mod model;
