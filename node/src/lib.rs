//! # dtx-node
//!
//! The dtx daemon and client library: the runtime around the sans-IO protocol core of
//! `dtx-protocol`. It owns everything the core leaves out: the libp2p swarm, the clock
//! and the write-ahead log. No protocol decision is made here. The `dtx` command line,
//! its workloads, the demo and the local-cluster launcher are in the `dtx-cli` crate.
//!
//! * [`daemon`]: a data node: one event loop owning the swarm and the protocol `Node`;
//! * [`wal`]: the write-ahead log (segments, group commit, torn-tail cut, checkpoints);
//! * [`client`]: the client library (`Client::connect`, `client.begin()`, `txn.commit()`);
//! * [`network`]: behaviour, frame codec and swarm shared by both;
//! * `runtime` (internal): the event-loop glue both share (clock, timer, inbound frames);
//! * [`links`]: the two transports for frames (long-lived streams, request-response);
//! * [`config`]: `cluster.toml` and `dtx init`;
//! * [`users`], [`auth`], [`secret`]: who may use the cluster (users, client sessions,
//!   private key files);
//! * [`control`]: the loopback control endpoint (`/status`, `/metrics`, `/drain`, `/faults`);
//! * [`faults`]: fault plans a node started with `--fault-injection` applies to its traffic;
//! * [`ops`]: the text form of operations used by the CLI.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datadir;
pub mod duration;
pub mod faults;
pub mod links;
pub mod network;
pub mod ops;
pub mod participant;
pub mod ports;
pub mod process_metrics;
pub mod ratelog;
mod runtime;
pub mod secret;
pub mod users;
pub mod wal;
