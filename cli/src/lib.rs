//! # dtx-cli
//!
//! The `dtx` command line, built on the `dtx-node` library. It is a library as well as
//! the `dtx` binary so that test crates can build the very same CLI into their own binary
//! (`dtx-tests` does) and drive local clusters with [`local`] and workloads with
//! [`bench`]; `src/main.rs` only calls [`main`].
//!
//! * `args`: the subcommands and their flags ([`Cli`], [`Command`]);
//! * `dispatch`: the entry point ([`main`], [`execute_as`]), `dtx node` and `dtx demo`;
//! * `admin`: `init`, `add-node`, `user`, `wal verify` (files, no running node);
//! * `client_commands`: `put`, `get`, `delete`, `txn`, `bench`, `status`, `drain`;
//! * `participant_check`: `dtx participant check URL` (the HTTP contract's conformance test);
//! * [`config_lookup`]: `--config`, else `$DTX_CONFIG`, else `./cluster.toml`;
//! * [`parse`]: durations and byte counts on the command line;
//! * `test_hooks`: the test hooks' environment switches on `dtx node` (the `test-hooks`
//!   feature builds them in; without it they are ignored with a warning);
//! * [`bench`], [`demo`], [`local`]: workloads, the demo and local clusters of processes.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
mod args;
pub mod bench;
mod client_commands;
pub mod config_lookup;
pub mod demo;
mod dispatch;
pub mod lab;
pub mod local;
pub mod local_postgres;
pub mod parse;
mod participant_check;
mod test_hooks;

pub use crate::args::{Cli, Command, ParticipantAction, UserAction, WalAction};
pub use crate::dispatch::{execute, execute_as, main, WORKER_THREADS_ENV};
