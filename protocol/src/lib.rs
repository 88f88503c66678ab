//! # dtx-protocol
//!
//! The whole dtx protocol as pure, deterministic state machines: no I/O, no clock, no
//! unseeded randomness. The daemon (`dtx-node`) and the simulator (`dtx-sim`) drive this
//! same code, so every simulated seed tests the production protocol.
//!
//! The commit protocol is Gray & Lamport's *Faster Paxos Commit* ("Consensus on
//! Transaction Commit", ACM TODS 2006) with acceptors co-located on the data nodes:
//!
//! * a [`Client`] routes each operation to its key's owner and sends each participant RM a
//!   `Prepare` carrying the transaction descriptor (participants, 2F+1 acceptors, F);
//! * each RM ([`Node`]) locks, validates, persists its vote and sends Phase2a in its own
//!   ballot 0 to every acceptor; its co-located acceptor shares the same fsync;
//! * each acceptor persists and sends Phase2b straight to every participant and the client;
//! * everyone decides alone: Commit iff every instance chose Prepared (F+1 Phase2b in one
//!   ballot), Abort as soon as one chose Aborted;
//! * any node holding an undecided transaction past a timeout becomes a recovery leader
//!   with a ballot `(round > 0, node)`, runs Phase1a/1b and proposes the highest accepted
//!   value or Aborted. No coordinator exists to be lost.
//!
//! ```
//! use dtx_protocol::*;
//! let members = (1..=3).map(|i| Member { id: NodeId(i), name: format!("n{i}") }).collect();
//! let cluster = Cluster::new(members, 1).unwrap();
//! let mut client = Client::new(ClientConfig::new(NodeId(100), cluster.clone(), 7));
//! let mut nodes: Vec<Node> = (1..=3)
//!     .map(|i| Node::new(NodeConfig::new(NodeId(i), cluster.clone(), 7)))
//!     .collect();
//! let now = Time::ZERO;
//! let write = Operation::Write { key: Key::new("n1/a"), value: Value::new(b"1".to_vec()) };
//! let txn = client.begin(now, vec![write]).unwrap();
//! // A tiny synchronous runtime: deliver everything, persist instantly.
//! let mut mail: Vec<(NodeId, Envelope)> = Vec::new();
//! while let Some(envelope) = client.poll_output() { mail.push((client.id(), envelope)); }
//! while let Some((from, envelope)) = mail.pop() {
//!     let input = Input::Receive { from, messages: envelope.messages };
//!     if envelope.to == client.id() {
//!         client.handle(now, input);
//!     } else {
//!         let node = &mut nodes[(envelope.to.0 - 1) as usize];
//!         node.handle(now, input);
//!         while let Some(output) = node.poll_output() {
//!             match output {
//!                 Output::Persist { token, .. } => node.handle(now, Input::Persisted { token }),
//!                 Output::Send(envelope) => mail.push((node.id(), envelope)),
//!                 // Only a node whose resource is a service asks it anything.
//!                 Output::Resource(_) => unreachable!("built-in store"),
//!             }
//!         }
//!     }
//!     while let Some(envelope) = client.poll_output() { mail.push((client.id(), envelope)); }
//! }
//! let finished = client.poll_event().unwrap();
//! assert_eq!(finished.txn, txn);
//! assert!(matches!(finished.result, TxnResult::Committed { .. }));
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod acceptor;
pub mod access;
pub mod bugs;
pub mod client;
pub mod cluster;
pub mod detector;
pub mod invariants;
pub mod learner;
pub mod message;
pub mod node;
pub mod record;
pub mod reject;
pub mod rng;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use acceptor::AcceptorState;
pub use access::{AccessInsertError, AccessPolicy, Permissions, ACCESS_CLIENTS_MAX};
pub use bugs::{Bug, Bugs, BUGS_AVAILABLE};
pub use client::{BeginError, Client, ClientConfig, ExecuteError, Executed, Finished, TxnResult};
pub use cluster::{Cluster, ClusterError, Member};
pub use detector::{
    Address, DetectorConfig, FailureDetector, Heartbeat, HeartbeatDecodeError, Role,
};
pub use message::{
    cut_text, decode, encode, AbortReason, DecodeError, EncodeError, Envelope, Message,
    MessageKind, Operation, ProbeHop, ReadResult, Refusal, REFUSAL_TEXT_MAX_BYTES,
};
pub use node::{
    DeadlockPolicy, Event, Input, Limits, Node, NodeConfig, Output, PersistToken, ResourceKind,
    ResourceRequest, ResourceStatus,
};
pub use record::{
    decode_log, encode_record, LockMode, LogContents, LogTailProblem, Record, RecordDecodeError,
};
pub use reject::{
    DeadlockMessageProblem, NoResolveReason, RejectKind, RejectReason, ReplayProblem,
};
pub use rng::Rng;
pub use types::{
    Ballot, DescriptorProblem, Key, NodeId, Outcome, Time, TxnDescriptor, TxnId, TxnIdParseError,
    Value, Version, Vote, ROUND_MAX,
};
