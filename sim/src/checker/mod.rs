//! Checkers. Each can fail, and each names what it found.
//!
//! Online (watching every message and event as it happens):
//! * atomicity — TCommit.tla `TCConsistent` over every RM and the client;
//! * decisions never change — also across a node's crashes;
//! * one value per instance — Paxos agreement, from the Phase2b messages on the wire;
//! * acceptor ballots monotonic across crashes — what an acceptor revealed in Phase1b or
//!   Phase2b must still be in its state after a restart.
//!
//! Final (from the durable logs, after healing and a whole-cluster power cut):
//! * durability of every committed transaction at every participant;
//! * serializability — the dependency graph over versions is acyclic, and every read saw a
//!   committed version (with the value that version holds);
//! * bank conservation;
//! * service participants ([`resources`]): each holds the decided outcome, nothing stays
//!   prepared, stock adds up (judged after healing, before the final power cut).

//! * liveness — every transaction decided after healing and after the final restart.
//!
//! Every finding is a [`Violation`]. The world runs; these modules judge:
//! [`observer`] online, [`durable_history`] and [`end_of_run`] at the end.

pub mod durable_history;
pub mod end_of_run;
pub mod observer;
pub mod resources;
pub mod violation;

pub use durable_history::{find_cycle, ClusterHistory, FinalReport, HistoryEntry, NodeHistory};
pub use end_of_run::{judge_end_of_run, Bank, EndOfRun};
pub use observer::Observer;
pub use resources::{judge_resources, ServiceEvidence, ServiceHold};
pub use violation::Violation;
