//! The client library: a libp2p peer with its own fresh identity that drives the
//! protocol's `Client` against the cluster.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use dtx_node::{client::Client, config::ClusterConfig};
//! let config = ClusterConfig::load(std::path::Path::new("cluster/cluster.toml"))?;
//! let client = Client::connect(&config).await?;
//! let mut txn = client.begin();
//! txn.write("inventory/sku-1", "9");
//! txn.read("payment/alice");
//! let committed = txn.commit().await?;
//! println!("{:?}", committed.reads);
//! # Ok(()) }
//! ```
//!
//! Interactive transactions run each operation at its owner as it is issued (locks wait;
//! the data nodes break deadlocks), then commit:
//!
//! ```no_run
//! # async fn example(client: dtx_node::client::Client) -> Result<(), dtx_node::client::CommitError> {
//! let mut txn = client.begin_interactive().await?;
//! let balance = txn.read("payment/alice").await?;
//! txn.write("payment/alice", "90").await?;
//! txn.commit().await?;
//! # Ok(()) }
//! ```
//!
//! Writes can also wait on the client and travel with the prepares, one round trip fewer
//! (a write whose lock another transaction holds at that moment aborts instead of
//! waiting):
//!
//! ```no_run
//! # async fn example(client: dtx_node::client::Client) -> Result<(), dtx_node::client::CommitError> {
//! use dtx_protocol::{Key, Operation, Value};
//! let mut txn = client.begin_interactive().await?;
//! let balance = txn.read("payment/alice").await?;
//! txn.commit_with(vec![Operation::Write {
//!     key: Key::new("payment/alice"),
//!     value: Value::new(b"90".to_vec()),
//! }])
//! .await?;
//! # Ok(()) }
//! ```
//!
//! A fresh identity per process gives a fresh client `NodeId` (its incarnation), so a
//! restarted client never reuses a transaction id. The protocol client routes each key to
//! its owner, picks the acceptors, learns the outcome from the acceptors' Phase2b and
//! retries idempotently with the same transaction id; this module only moves its messages.
//! One `Client` serves many concurrent transactions (it is cheap to clone), and their
//! messages to one node share requests.

use crate::auth::{authenticate, prove, AuthError, Gate};
use crate::config::{client_node_id, ClusterConfig};
use crate::links::{ClientBudget, Inbound, Links, TransportKind};
use crate::network::{
    build_swarm, Behaviour, BehaviourEvent, Frame, HeardAddresses, Outbox, SwarmError,
};
use crate::runtime::{self, sleep_until, Clock};
use crate::users::{Credential, UsersError};
use dtx_protocol::{
    AbortReason, BeginError, ClientConfig, ExecuteError, Input, Key, NodeId, Operation, ReadResult,
    Refusal, TxnId, TxnResult, Value, Version,
};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Commands queued for the client's event loop at most (backpressure on callers).
pub const COMMANDS_QUEUED_MAX: usize = 4096;

/// How long `connect` waits for connections to the data nodes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a disconnected data node is dialed again.
pub const REDIAL_INTERVAL: Duration = Duration::from_millis(500);

/// Why the client could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Networking could not start.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// No data node answered within [`CONNECT_TIMEOUT`].
    #[error("could not connect to any data node within {0:?}")]
    Unreachable(Duration),
    /// The user's credential could not be loaded.
    #[error("cannot load the client credential: {0}")]
    Credential(#[from] UsersError),
    /// Every data node refused the client's session.
    #[error("the cluster refused this client: {0}")]
    Refused(AuthError),
}

/// Why a transaction did not commit.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The transaction aborted (nothing was written).
    #[error("transaction {txn} aborted{}", reason.as_ref().map(|reason| format!(": {reason}")).unwrap_or_default())]
    Aborted {
        /// The transaction.
        txn: TxnId,
        /// Why, when an RM said.
        reason: Option<AbortReason>,
    },
    /// A data node would not serve this client (no session: an unknown or removed user, or
    /// over its rate limit); the transaction did not commit.
    #[error("transaction {txn} was not committed: {refusal}")]
    Refused {
        /// The transaction.
        txn: TxnId,
        /// Why the node refused.
        refusal: Refusal,
    },
    /// The client gave up before learning the outcome: it may have committed or not.
    #[error("outcome of transaction {txn} unknown (the client gave up waiting)")]
    Unknown {
        /// The transaction.
        txn: TxnId,
    },
    /// The transaction could not begin.
    #[error("cannot begin: {0}")]
    Begin(#[from] BeginError),
    /// An interactive operation or commit could not be issued.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    /// The client's event loop stopped.
    #[error("the client has stopped")]
    Stopped,
    /// A membership update was refused.
    #[error("membership update refused: {0}")]
    Membership(String),
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The transaction.
    pub txn: TxnId,
    /// Read results (per participant, in operation order).
    pub reads: Vec<ReadResult>,
    /// True if a participant restarted after deciding and its read results were lost.
    pub reads_lost: bool,
}

impl Committed {
    /// The value a read of `key` returned (`None`: absent or not read).
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.read(key).and_then(|read| read.value.as_ref())
    }

    /// The read result for `key`.
    pub fn read(&self, key: &str) -> Option<&ReadResult> {
        self.reads.iter().find(|read| read.key.as_str() == key)
    }
}

enum Command {
    Run {
        operations: Vec<Operation>,
        reply: oneshot::Sender<Result<(TxnId, TxnResult), BeginError>>,
    },
    BeginInteractive {
        reply: oneshot::Sender<Result<TxnId, BeginError>>,
    },
    Execute {
        txn: TxnId,
        operation: Operation,
        reply: ExecuteReply,
    },
    Commit {
        txn: TxnId,
        writes: Vec<Operation>,
        reply: oneshot::Sender<Result<TxnResult, ExecuteError>>,
    },
    Abort {
        txn: TxnId,
    },
    Membership {
        config: Box<ClusterConfig>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
}

type ExecuteReply = oneshot::Sender<Result<Option<ReadResult>, CommitError>>;

/// A handle to a client peer; clones share one identity and one event loop.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    id: NodeId,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Run { operations, .. } => write!(f, "Run({} operations)", operations.len()),
            Command::BeginInteractive { .. } => write!(f, "BeginInteractive"),
            Command::Execute { txn, .. } => write!(f, "Execute({txn})"),
            Command::Commit { txn, .. } => write!(f, "Commit({txn})"),
            Command::Abort { txn } => write!(f, "Abort({txn})"),
            Command::Membership { config, .. } => {
                write!(f, "Membership({} nodes)", config.nodes.len())
            }
        }
    }
}

impl Client {
    /// Joins the cluster with a fresh identity and dials every data node; returns once
    /// each is connected or has refused the dial (a node that is down does not hold it
    /// up), at the latest after [`CONNECT_TIMEOUT`]; an error if none is connected.
    pub async fn connect(config: &ClusterConfig) -> Result<Client, ConnectError> {
        Client::connect_with(
            config,
            ClientConfig::new(NodeId(0), config.cluster.clone(), 0),
            TransportKind::default(),
        )
        .await
    }

    /// Like [`Client::connect`] with protocol client settings (timeouts, retries; the
    /// id and seed fields are replaced) and a choice of transport for sending.
    pub async fn connect_with(
        config: &ClusterConfig,
        protocol: ClientConfig,
        transport: TransportKind,
    ) -> Result<Client, ConnectError> {
        let credential = config.credential(None)?;
        Client::connect_as(config, credential, protocol, transport).await
    }

    /// Like [`Client::connect_with`], acting for the user of `credential` (`None`: no
    /// user; a cluster that requires one then refuses every transaction with a clear
    /// error). The process still runs with a fresh libp2p identity of its own: the
    /// credential only signs the proof that this identity acts for the user.
    pub async fn connect_as(
        config: &ClusterConfig,
        credential: Option<Credential>,
        mut protocol: ClientConfig,
        transport: TransportKind,
    ) -> Result<Client, ConnectError> {
        let keypair = Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let proof = match &credential {
            Some(credential) => Some(Arc::new(
                prove(credential, &config.cluster_id, &peer).map_err(ConnectError::Refused)?,
            )),
            None => None,
        };
        let id = client_node_id(&peer);
        protocol.id = id;
        protocol.cluster = config.cluster.clone();
        protocol.seed = id.0 ^ 0x5eed;
        let mut swarm = build_swarm(keypair, crate::network::PeerKind::Client, false)?;
        for node in &config.nodes {
            swarm.add_peer_address(node.peer_id, node.address.clone());
            let _ = swarm.dial(node.peer_id);
        }
        let (commands, receiver) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let gate = Arc::new(Gate::for_client(
            config.nodes.iter().map(|node| node.peer_id),
        ));
        let mut session_control = swarm.behaviour().stream.new_control();
        let (links, inbound) = Links::new(
            &mut swarm,
            transport,
            Arc::clone(&gate),
            ClientBudget::default(),
            proof.clone(),
        );
        let mut event_loop = ClientLoop {
            links,
            inbound,
            gate,
            config: config.clone(),
            clock: Clock::new(),
            swarm,
            client: dtx_protocol::Client::new(protocol),
            commands: receiver,
            waiting: BTreeMap::new(),
            committing: BTreeMap::new(),
            executing: BTreeMap::new(),
            outbox: Outbox::default(),
            connected: BTreeSet::new(),
            heard: HeardAddresses::default(),
            unreachable: BTreeSet::new(),
        };
        event_loop.wait_connected().await?;
        if let Some(proof) = proof {
            // Open the sessions now, so that a user the cluster does not know is told at
            // once rather than at its first transaction.
            let connected: Vec<PeerId> = event_loop.connected.iter().copied().collect();
            let mut refusals = Vec::new();
            for node in &connected {
                if let Err(error) = authenticate(&mut session_control, *node, &proof).await {
                    refusals.push(error);
                }
            }
            if refusals.len() == connected.len() {
                if let Some(refusal) = refusals.into_iter().next() {
                    return Err(ConnectError::Refused(refusal));
                }
            }
        }
        tokio::spawn(async move { event_loop.run().await });
        Ok(Client { commands, id })
    }

    /// Follows a cluster config that gained members (`dtx add-node`): only appended
    /// service or acceptor-only nodes are accepted, as at the data nodes. New transactions
    /// may then use the newcomers; those in flight keep their descriptors. Returns how
    /// many members joined.
    pub async fn update_membership(&self, config: &ClusterConfig) -> Result<usize, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Membership {
                config: Box::new(config.clone()),
                reply,
            })
            .await
            .map_err(|_| CommitError::Stopped)?;
        answer
            .await
            .map_err(|_| CommitError::Stopped)?
            .map_err(CommitError::Membership)
    }

    /// This client's protocol id (its incarnation).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts a transaction that buffers operations until [`Txn::commit`].
    pub fn begin(&self) -> Txn {
        Txn {
            client: self.clone(),
            operations: Vec::new(),
        }
    }

    /// Begins an interactive transaction: each operation runs at its key's owner as it is
    /// issued (strict two-phase locking, waiting for locks; deadlocks are broken by the
    /// data nodes), then `commit` runs Paxos Commit over the participants.
    pub async fn begin_interactive(&self) -> Result<InteractiveTxn, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::BeginInteractive { reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        let txn = answer.await.map_err(|_| CommitError::Stopped)??;
        Ok(InteractiveTxn {
            client: self.clone(),
            txn,
            open: true,
        })
    }

    /// Runs a one-shot transaction: every operation is sent with Prepare at once.
    pub async fn run(&self, operations: Vec<Operation>) -> Result<Committed, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Run { operations, reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        let (txn, result) = answer.await.map_err(|_| CommitError::Stopped)??;
        committed_or_error(txn, result)
    }
}

/// A transaction being built. Operations run in order at their keys' owners when it
/// commits (one-shot mode: interactive execution comes with waiting locks).
#[derive(Debug)]
pub struct Txn {
    client: Client,
    operations: Vec<Operation>,
}

impl Txn {
    /// Upserts `key`.
    pub fn write(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Txn {
        self.operations.push(Operation::Write {
            key: Key::new(key),
            value: Value::new(value),
        });
        self
    }

    /// Sets `key`, which must exist (else the transaction aborts).
    pub fn update(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Txn {
        self.operations.push(Operation::Update {
            key: Key::new(key),
            value: Value::new(value),
        });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<String>) -> &mut Txn {
        self.operations
            .push(Operation::Delete { key: Key::new(key) });
        self
    }

    /// Reads `key` (value and version, in [`Committed::reads`]).
    pub fn read(&mut self, key: impl Into<String>) -> &mut Txn {
        self.operations.push(Operation::Read {
            key: Key::new(key),
            expected: None,
        });
        self
    }

    /// Reads `key` and aborts unless its version is still `expected` (optimistic
    /// read-modify-write).
    pub fn read_expecting(&mut self, key: impl Into<String>, expected: Version) -> &mut Txn {
        self.operations.push(Operation::Read {
            key: Key::new(key),
            expected: Some(expected),
        });
        self
    }

    /// Adds a prepared operation.
    pub fn push(&mut self, operation: Operation) -> &mut Txn {
        self.operations.push(operation);
        self
    }

    /// Commits: Ok once F+1 acceptors accepted every participant's Prepared vote.
    pub async fn commit(self) -> Result<Committed, CommitError> {
        self.client.run(self.operations).await
    }
}

/// An interactive transaction in its execution phase. Dropping it without `commit` or
/// `abort` aborts it.
#[derive(Debug)]
pub struct InteractiveTxn {
    client: Client,
    txn: TxnId,
    open: bool,
}

impl InteractiveTxn {
    /// The transaction's id.
    pub fn id(&self) -> TxnId {
        self.txn
    }

    /// Hands one operation to the event loop; the receiver yields its result.
    async fn submit(
        &self,
        operation: Operation,
    ) -> Result<oneshot::Receiver<Result<Option<ReadResult>, CommitError>>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.client
            .commands
            .send(Command::Execute {
                txn: self.txn,
                operation,
                reply,
            })
            .await
            .map_err(|_| CommitError::Stopped)?;
        Ok(answer)
    }

    /// Runs one operation at its key's owner and waits for it (a read returns its
    /// result). A failure (lock wait timeout, deadlock victim, bad operation) aborts the
    /// whole transaction and is returned as [`CommitError::Aborted`].
    pub async fn execute(
        &mut self,
        operation: Operation,
    ) -> Result<Option<ReadResult>, CommitError> {
        let answer = self.submit(operation).await?;
        let result = answer.await.map_err(|_| CommitError::Stopped)?;
        if matches!(result, Err(CommitError::Aborted { .. })) {
            self.open = false;
        }
        result
    }

    /// Runs several operations at once, each at its key's owner, and waits for all of
    /// them: operations on different nodes proceed in parallel (one round trip instead of
    /// one per operation); at most one operation per node may be outstanding, so keys
    /// must belong to different nodes. Results are in the order given.
    pub async fn execute_many(
        &mut self,
        operations: Vec<Operation>,
    ) -> Result<Vec<Option<ReadResult>>, CommitError> {
        let mut answers = Vec::with_capacity(operations.len());
        for operation in operations {
            answers.push(self.submit(operation).await?);
        }
        let mut results = Vec::with_capacity(answers.len());
        let mut failure = None;
        for answer in answers {
            match answer.await.map_err(|_| CommitError::Stopped)? {
                Ok(read) => results.push(read),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        match failure {
            Some(error) => {
                if matches!(error, CommitError::Aborted { .. }) {
                    self.open = false;
                }
                Err(error)
            }
            None => Ok(results),
        }
    }

    /// Reads `key`: its committed value (or this transaction's own write) and version.
    pub async fn read(&mut self, key: impl Into<String>) -> Result<ReadResult, CommitError> {
        let key = Key::new(key);
        let read = self
            .execute(Operation::Read {
                key: key.clone(),
                expected: None,
            })
            .await?;
        Ok(read.unwrap_or(ReadResult {
            key,
            value: None,
            version: Version(0),
        }))
    }

    /// Upserts `key` (buffered at the owner as an intent until commit).
    pub async fn write(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), CommitError> {
        let operation = Operation::Write {
            key: Key::new(key),
            value: Value::new(value),
        };
        self.execute(operation).await.map(|_| ())
    }

    /// Commits: Paxos Commit over every node that executed an operation.
    pub async fn commit(self) -> Result<Committed, CommitError> {
        self.commit_with(Vec::new()).await
    }

    /// Adds `writes` and commits, in one round: each write travels in its owner's
    /// prepare instead of being executed first (Spanner-style buffered writes; one round
    /// trip fewer). A write whose lock another transaction holds at that moment aborts
    /// the transaction instead of waiting. Only writes (`Write`, `Update`, `Delete`) can
    /// be buffered.
    pub async fn commit_with(mut self, writes: Vec<Operation>) -> Result<Committed, CommitError> {
        self.open = false;
        let (reply, answer) = oneshot::channel();
        self.client
            .commands
            .send(Command::Commit {
                txn: self.txn,
                writes,
                reply,
            })
            .await
            .map_err(|_| CommitError::Stopped)?;
        let result = answer.await.map_err(|_| CommitError::Stopped)??;
        committed_or_error(self.txn, result)
    }

    /// Abandons the transaction: its owners release its locks and drop its intents.
    pub async fn abort(mut self) -> Result<(), CommitError> {
        self.open = false;
        self.client
            .commands
            .send(Command::Abort { txn: self.txn })
            .await
            .map_err(|_| CommitError::Stopped)
    }
}

impl Drop for InteractiveTxn {
    fn drop(&mut self) {
        if self.open {
            // Best effort: if the queue is full the data nodes time the execution out.
            let _ = self
                .client
                .commands
                .try_send(Command::Abort { txn: self.txn });
        }
    }
}

fn committed_or_error(txn: TxnId, result: TxnResult) -> Result<Committed, CommitError> {
    match result {
        TxnResult::Committed { reads, reads_lost } => Ok(Committed {
            txn,
            reads,
            reads_lost,
        }),
        TxnResult::Aborted { reason } => Err(CommitError::Aborted { txn, reason }),
        TxnResult::Refused(refusal) => Err(CommitError::Refused { txn, refusal }),
        _ => Err(CommitError::Unknown { txn }),
    }
}

type Reply = oneshot::Sender<Result<(TxnId, TxnResult), BeginError>>;

struct ClientLoop {
    links: Links,
    inbound: Inbound,
    /// Which peers' frames the client reads (data nodes only).
    gate: Arc<Gate>,
    config: ClusterConfig,
    clock: Clock,
    swarm: Swarm<Behaviour>,
    client: dtx_protocol::Client,
    commands: mpsc::Receiver<Command>,
    waiting: BTreeMap<TxnId, Reply>,
    committing: BTreeMap<TxnId, oneshot::Sender<Result<TxnResult, ExecuteError>>>,
    /// Outstanding interactive operations (at most one per RM and transaction).
    executing: BTreeMap<TxnId, Vec<(Operation, ExecuteReply)>>,
    outbox: Outbox,
    connected: BTreeSet<PeerId>,
    /// Data nodes' addresses heard in the heartbeats the client pulls.
    heard: HeardAddresses,
    /// Data nodes whose last dial failed (a node that is down does not hold up
    /// `connect`).
    unreachable: BTreeSet<PeerId>,
}

impl ClientLoop {
    async fn wait_connected(&mut self) -> Result<(), ConnectError> {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        // Until every data node is connected or known to refuse (a dial that failed).
        while self.config.nodes.iter().any(|node| {
            !self.connected.contains(&node.peer_id) && !self.unreachable.contains(&node.peer_id)
        }) {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.connected.is_empty() {
            return Err(ConnectError::Unreachable(CONNECT_TIMEOUT));
        }
        Ok(())
    }

    async fn run(&mut self) {
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
        loop {
            let deadline = self.clock.deadline(self.client.poll_timeout());
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((peer, frame)) = self.inbound.members.recv() => self.on_frame(peer, frame),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nothing can wait for an answer any more.
                    None => return,
                },
                () = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.client.handle(now, Input::Timeout);
                }
                _ = redial.tick() => self.redial(),
            }
            runtime::for_each_ready(|| self.take_ready());
            self.drain();
        }
    }

    /// Handles one event that is ready now, without waiting: commands first, then data
    /// nodes' frames, then swarm events; false when nothing is ready.
    fn take_ready(&mut self) -> bool {
        if let Ok(command) = self.commands.try_recv() {
            self.on_command(command);
            return true;
        }
        if let Ok((peer, frame)) = self.inbound.members.try_recv() {
            self.on_frame(peer, frame);
            return true;
        }
        match runtime::ready_swarm_event(&mut self.swarm) {
            Some(event) => {
                self.on_swarm_event(event);
                true
            }
            None => false,
        }
    }

    fn redial(&mut self) {
        if let Some(detector) = self.client.detector() {
            self.heard
                .learn(&mut self.swarm, &self.config, None, detector);
        }
        for node in &self.config.nodes {
            if !self.connected.contains(&node.peer_id) && !self.swarm.is_connected(&node.peer_id) {
                let _ = self.swarm.dial(node.peer_id);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Run { operations, reply } => {
                let now = self.clock.now();
                match self.client.begin(now, operations) {
                    Ok(txn) => {
                        self.waiting.insert(txn, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::BeginInteractive { reply } => {
                let now = self.clock.now();
                let _ = reply.send(self.client.begin_interactive(now));
            }
            Command::Execute {
                txn,
                operation,
                reply,
            } => {
                let now = self.clock.now();
                let operation_sent = operation.clone();
                match self.client.execute(now, txn, operation) {
                    Ok(()) => {
                        self.executing
                            .entry(txn)
                            .or_default()
                            .push((operation_sent, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Command::Commit { txn, writes, reply } => {
                let now = self.clock.now();
                match self.client.commit_with(now, txn, writes) {
                    Ok(()) => {
                        self.committing.insert(txn, reply);
                    }
                    Err(error) => {
                        // The handle is consumed: release what the transaction holds.
                        let _ = self.client.abort(now, txn);
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Membership { config, reply } => {
                let result = self.config.appended_in(&config).map(|added| {
                    for node in &added {
                        self.swarm
                            .add_peer_address(node.peer_id, node.address.clone());
                        let _ = self.swarm.dial(node.peer_id);
                    }
                    added.len()
                });
                if result.is_ok() {
                    self.client.set_cluster(config.cluster.clone());
                    self.gate
                        .set_members(config.nodes.iter().map(|node| node.peer_id));
                    self.config = *config;
                }
                let _ = reply.send(result);
            }
            Command::Abort { txn } => {
                let now = self.clock.now();
                // Already finished (e.g. aborted by the data nodes): nothing to do.
                let _ = self.client.abort(now, txn);
            }
        }
    }

    fn drain(&mut self) {
        while let Some(envelope) = self.client.poll_output() {
            self.outbox.push(envelope.to, envelope.messages);
        }
        while let Some(executed) = self.client.poll_executed() {
            let Some(pending) = self.executing.get_mut(&executed.txn) else {
                continue;
            };
            if let Some(index) = pending
                .iter()
                .position(|(operation, _)| *operation == executed.operation)
            {
                let (_, reply) = pending.swap_remove(index);
                let _ = reply.send(Ok(executed.read));
            }
            if pending.is_empty() {
                self.executing.remove(&executed.txn);
            }
        }
        while let Some(finished) = self.client.poll_event() {
            let txn = finished.txn;
            // The callers may have stopped waiting; that is their choice.
            if let Some(reply) = self.waiting.remove(&txn) {
                let _ = reply.send(Ok((txn, finished.result.clone())));
            }
            if let Some(reply) = self.committing.remove(&txn) {
                let _ = reply.send(Ok(finished.result.clone()));
            }
            for (_, reply) in self.executing.remove(&txn).unwrap_or_default() {
                // An execution that ended the transaction: it aborted.
                let error = match &finished.result {
                    TxnResult::Aborted { reason } => CommitError::Aborted {
                        txn,
                        reason: reason.clone(),
                    },
                    _ => CommitError::Unknown { txn },
                };
                let _ = reply.send(Err(error));
            }
        }
        for (to, messages) in self.outbox.drain() {
            let Some(node) = self.config.node(to) else {
                continue;
            };
            let (peer, address) = (node.peer_id, node.address.clone());
            self.links
                .send(&mut self.swarm, peer, vec![address], messages);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                self.unreachable.remove(&peer_id);
                self.connected.insert(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer_id),
                ..
            } if !self.swarm.is_connected(&peer_id) => {
                self.unreachable.insert(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Messages(event)) => {
                if let Some((peer, frame)) = runtime::take_request(&mut self.swarm, event) {
                    self.on_frame(peer, frame);
                }
            }
            _ => {}
        }
    }
}

impl ClientLoop {
    fn on_frame(&mut self, peer: PeerId, frame: Frame) {
        let Some(messages) = runtime::frame_messages(&peer, frame) else {
            return;
        };
        let Some(from) = self.config.member_of(&peer) else {
            tracing::warn!(%peer, "dropped messages from a peer that is not a data node");
            return;
        };
        let now = self.clock.now();
        self.client.handle(now, Input::Receive { from, messages });
    }
}
