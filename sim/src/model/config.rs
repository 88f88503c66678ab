//! The shape of one model: how many RMs and acceptors, which faults, which bounds.
//!
//! Every data node of the model cluster is named `n1`, `n2`, ... so that the client's key
//! `n3/x` is owned by node `n3`; the transaction's participants are `n1..=n{rms}` and its
//! 2F+1 acceptors are the participants padded with acceptor-only nodes.

use dtx_protocol::{Bug, Cluster, ClusterError, Member, NodeId, TxnId, BUGS_AVAILABLE};
use serde::Serialize;
use stateright::actor::Id;

/// The client's node id: not a cluster member, so never a participant or an acceptor.
pub const CLIENT_ID: NodeId = NodeId(100);

/// Most data nodes a model may have (the state space explodes long before).
pub const NODES_MAX: usize = 9;

/// The one transaction every model checks: the client's first.
pub fn model_txn() -> TxnId {
    TxnId {
        client: CLIENT_ID,
        sequence: 1,
    }
}

/// One model configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelConfig {
    /// RMs (participants) of the transaction.
    pub rms: usize,
    /// Acceptors of the transaction: 2F+1.
    pub acceptors: usize,
    /// Most node crashes over a whole run; each crashed node may restart from its log.
    pub crashes: usize,
    /// Highest ballot round a recovery leader may use (round 0 is the RMs' own ballot).
    pub rounds: u32,
    /// Most recovery timeouts over a run, all nodes together (each starts a new ballot).
    pub timeouts: u32,
    /// Whether the network may lose messages (it always reorders and duplicates).
    pub lossy: bool,
    /// Whether RMs send their ballot-0 Phase2a to only the first F+1 acceptors (the
    /// production default; `NodeConfig::thrifty`).
    pub thrifty: bool,
    /// Retry timeouts the client may take (resend Prepare, then ask for recovery).
    pub client_retries: u32,
    /// Whether the client may, as a nondeterministic choice, give the last RM an update of
    /// a missing key, so that this RM votes Aborted.
    pub aborting_rm: bool,
    /// The deliberate bug switched on in every node, if any.
    pub bug: Option<Bug>,
    /// Whether to check that every quiescent state is decided (meaningful only without
    /// loss and crashes).
    pub check_liveness: bool,
    /// Whether the last RM is a service participant (`ResourceKind::External`): its
    /// resource answers each request as a model step of its own, and may refuse a prepare.
    pub external_resource: bool,
    /// The client uses one-phase commit (`ClientConfig::one_phase`): with one RM the
    /// transaction has no acceptors and its RM decides alone.
    pub one_phase: bool,
}

/// Why a model configuration cannot be checked.
#[derive(Debug, thiserror::Error)]
pub enum ModelConfigError {
    /// No RM.
    #[error("a transaction needs at least one RM")]
    NoRms,
    /// An even number of acceptors.
    #[error("acceptors must be 2F+1 (odd), got {0}")]
    EvenAcceptors(usize),
    /// Too many data nodes.
    #[error("{nodes} data nodes exceed the model limit of {NODES_MAX}")]
    TooManyNodes {
        /// Data nodes asked for.
        nodes: usize,
    },
    /// The cluster description is invalid.
    #[error("invalid cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// A bug name nobody knows.
    #[error("unknown bug {0:?} (see `dtx-sim check --help`)")]
    UnknownBug(String),
    /// A bug was asked for in a build without the `bugs` feature.
    #[error("bug switches need a build with `--features bugs`")]
    BugsUnavailable,
}

impl ModelConfig {
    /// The default model: 2 RMs, 3 acceptors (F=1), 1 crash, rounds up to 1, lossy network.
    pub fn new(rms: usize, acceptors: usize) -> ModelConfig {
        ModelConfig {
            rms,
            acceptors,
            crashes: 1,
            rounds: 1,
            timeouts: 1,
            lossy: false,
            thrifty: true,
            client_retries: 0,
            aborting_rm: false,
            bug: None,
            check_liveness: false,
            external_resource: false,
            one_phase: false,
        }
    }

    /// Checks the configuration can be built.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        if self.rms == 0 {
            return Err(ModelConfigError::NoRms);
        }
        if self.acceptors.is_multiple_of(2) {
            return Err(ModelConfigError::EvenAcceptors(self.acceptors));
        }
        if self.node_count() > NODES_MAX {
            return Err(ModelConfigError::TooManyNodes {
                nodes: self.node_count(),
            });
        }
        if self.bug.is_some() && !BUGS_AVAILABLE {
            return Err(ModelConfigError::BugsUnavailable);
        }
        self.cluster()?;
        Ok(())
    }

    /// The same sizes and bounds without loss and crashes, checking liveness: with every
    /// message eventually delivered, every run must reach a decision.
    pub fn liveness_variant(&self) -> ModelConfig {
        ModelConfig {
            crashes: 0,
            lossy: false,
            check_liveness: true,
            ..self.clone()
        }
    }

    /// Failures tolerated: acceptors = 2F+1.
    pub fn f(&self) -> u32 {
        // Bounded by NODES_MAX after `validate`.
        (self.acceptors.saturating_sub(1) / 2) as u32
    }

    /// Data nodes in the cluster: every RM, plus acceptor-only nodes up to 2F+1.
    pub fn node_count(&self) -> usize {
        self.rms.max(self.acceptors)
    }

    /// The cluster: nodes `n1..` with ids 1...
    pub fn cluster(&self) -> Result<Cluster, ClusterError> {
        let members = (0..self.node_count())
            .map(|index| {
                let id = node_id(index);
                Member {
                    id,
                    name: format!("n{}", id.0),
                }
            })
            .collect();
        Cluster::new(members, self.f())
    }

    /// The RM whose resource is external, if the model has one (the last).
    pub fn service_rm(&self) -> Option<NodeId> {
        self.external_resource
            .then(|| self.participants().last().copied())
            .flatten()
    }

    /// The transaction's participants.
    pub fn participants(&self) -> Vec<NodeId> {
        (0..self.rms).map(node_id).collect()
    }

    /// Where the stateright actor with index `actor` lives: nodes first, then the client.
    pub fn node_of(&self, actor: Id) -> NodeId {
        let index = usize::from(actor);
        if index < self.node_count() {
            node_id(index)
        } else {
            CLIENT_ID
        }
    }

    /// The stateright actor of `node`, if the model has one.
    pub fn actor_of(&self, node: NodeId) -> Option<Id> {
        if node == CLIENT_ID {
            return Some(Id::from(self.node_count()));
        }
        let index = usize::try_from(node.0).ok()?.checked_sub(1)?;
        (index < self.node_count()).then(|| Id::from(index))
    }

    /// The client's actor index.
    pub fn client_index(&self) -> usize {
        self.node_count()
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        let bug = self.bug.map_or("none", Bug::name);
        format!(
            "{} RMs, {} acceptors (F={}), {} data nodes, crashes <= {}, ballot rounds <= {}, \
             recovery timeouts <= {}, {} network, {} ballot-0 Phase2a, client retries <= {}, \
             aborting RM {}, bug {}",
            self.rms,
            self.acceptors,
            self.f(),
            self.node_count(),
            self.crashes,
            self.rounds,
            self.timeouts,
            if self.lossy {
                "lossy duplicating unordered"
            } else {
                "lossless duplicating unordered"
            },
            if self.thrifty {
                "thrifty (F+1)"
            } else {
                "full (2F+1)"
            },
            self.client_retries,
            if self.aborting_rm { "possible" } else { "no" },
            bug,
        ) + if self.external_resource {
            ", last RM's resource external (answers as its own step, may refuse)"
        } else {
            ""
        } + if self.one_phase && self.rms == 1 {
            ", one-phase (no acceptors: the RM decides alone)"
        } else {
            ""
        }
    }
}

/// The id of the data node with actor index `index`.
pub fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

/// The display name of a node: its cluster name, or `client`.
pub fn node_name(node: NodeId) -> String {
    if node == CLIENT_ID {
        "client".to_string()
    } else {
        format!("n{}", node.0)
    }
}

/// Parses a bug's command-line name.
pub fn parse_bug(name: &str) -> Result<Bug, ModelConfigError> {
    Bug::from_name(name).ok_or_else(|| ModelConfigError::UnknownBug(name.to_string()))
}
