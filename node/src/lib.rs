//! # dtx-node
//!
//! The dtx daemon and client library: the runtime around the sans-IO protocol core of
//! `dtx-protocol`. It owns everything the core leaves out: the libp2p swarm, the clock,
//! the write-ahead log, and the CLI `dtx`. No protocol decision is made here.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod wal;
