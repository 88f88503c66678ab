//! Configuration of one data node: its identity, cluster, timeouts, deadlock policy and
//! the [`Limits`] that bound every queue and map it keeps.

use super::ResourceKind;
use crate::bugs::Bugs;
use crate::cluster::Cluster;
use crate::detector::DetectorConfig;
use crate::types::NodeId;
use core::time::Duration;

/// Bounds and limits of one node. Every queue and map has one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Longest key accepted.
    pub key_bytes_max: usize,
    /// Longest value accepted.
    pub value_bytes_max: usize,
    /// Most operations one RM executes for one transaction.
    pub operations_max: usize,
    /// Most transactions open (undecided) at this node; beyond it Prepare votes Aborted
    /// and other messages for new transactions are dropped (backpressure).
    pub open_transactions_max: usize,
    /// Compact outcome records kept in memory. A message about a transaction older than
    /// this window is answered as if new, so the window must exceed any retry window.
    pub outcomes_kept_max: usize,
    /// Phase2b messages buffered for transactions this node has not heard of yet.
    pub early_phase2b_max: usize,
    /// Most transactions on one deadlock probe's path.
    pub probe_path_max: usize,
    /// Probes remembered for duplicate suppression.
    pub probes_remembered_max: usize,
    /// Most waiters queued on one key.
    pub lock_queue_length_max: usize,
    /// Most transactions one client (not a data node) may have open at this node; beyond
    /// it a new Prepare votes Aborted with [`AbortReason::ClientQuota`] (unrecorded, like
    /// backpressure), a new Execute is answered with it and a Resolve that would open one
    /// is rejected. Counted over the node's open transactions and executions, which are
    /// bounded themselves, so it needs no map of its own.
    pub open_transactions_per_client_max: usize,
    /// Most recovery ballots this node leads at once; beyond it a due recovery waits a
    /// randomized backoff and tries again (recoveries back off under load).
    pub recoveries_led_max: usize,
    /// Bytes of committed keys and values plus prepared writes this RM may hold; a
    /// Prepare whose writes would grow past it votes Aborted with
    /// [`AbortReason::StorageFull`]. Deletes, reads and decided commits always run.
    /// `None`: no quota.
    pub store_bytes_max: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 1024,
            value_bytes_max: 64 * 1024,
            operations_max: 1024,
            open_transactions_max: 100_000,
            outcomes_kept_max: 1_000_000,
            early_phase2b_max: 10_000,
            probe_path_max: 16,
            probes_remembered_max: 100_000,
            lock_queue_length_max: crate::store::LOCK_QUEUE_LENGTH_MAX,
            open_transactions_per_client_max: 1_000,
            recoveries_led_max: 1_000,
            store_bytes_max: None,
        }
    }
}

/// Configuration of one data node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// This node's id (must be a cluster member).
    pub id: NodeId,
    /// The cluster.
    pub cluster: Cluster,
    /// Seed of the node's PRNG (recovery backoff jitter).
    pub seed: u64,
    /// How long an RM waits for the decision after voting before it leads recovery;
    /// acceptor-only nodes wait twice as long.
    pub decision_timeout: Duration,
    /// How long a transaction waits for the votes of service members (whose prepare may
    /// wait for the service's own locks) before it is recovered, unless one is suspected.
    pub service_vote_timeout: Duration,
    /// Cap of the randomized exponential backoff between recovery attempts.
    pub recovery_backoff_max: Duration,
    /// Bounds.
    pub limits: Limits,
    /// Send ballot-0 Phase2a to only the first F+1 acceptors (the paper's message count);
    /// retries and recovery use all 2F+1. Off: every vote goes to all 2F+1, so one slow or
    /// lost acceptor costs nothing but messages.
    pub thrifty: bool,
    /// How waiting transactions are kept from deadlocking for good.
    pub deadlock: DeadlockPolicy,
    /// Longest a lock wait may last before the waiter is aborted (a backstop: deadlocks
    /// are normally broken by the detector long before).
    pub lock_wait_timeout: Duration,
    /// Longest an interactive transaction may sit idle at an RM (no operation, no
    /// prepare) before the RM aborts it and releases its locks: its client is presumed dead.
    pub execution_idle_timeout: Duration,
    /// How long a lock wait lasts before it sends a deadlock probe (short waits that end on
    /// their own cost no probes); also the interval between re-probes of a long wait.
    pub probe_delay: Duration,
    /// How long a deadlock's verification lap may pin the waits it checked (see
    /// `execution::verify_cycle`); a lap slower than this aborts no one.
    pub deadlock_verify_timeout: Duration,
    /// Gossip heartbeats and phi-accrual suspicion (`None`: no failure detector; recovery
    /// then waits for the decision timeout).
    pub detector: Option<DetectorConfig>,
    /// Time between the fence queries of a node in acceptor quarantine (see
    /// [`Node::reinitialized`]).
    pub fence_query_interval: Duration,
    /// Deliberate bugs (only in `bugs` builds).
    pub bugs: Bugs,
    /// The RM's local resource: the built-in store, or a service answering through the
    /// runtime (see `node::resource`).
    pub resource: ResourceKind,
    /// First wait before asking an external resource again (commit, rollback, the
    /// prepared list); doubles per attempt up to `resource_retry_max`.
    pub resource_retry: Duration,
    /// Longest wait between two asks of an external resource.
    pub resource_retry_max: Duration,
}

/// How a node keeps lock waits from deadlocking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadlockPolicy {
    /// Detect deadlocks by edge chasing (Chandy–Misra–Haas) and abort the youngest
    /// transaction on each cycle.
    EdgeChasing,
    /// Prevent them (Rosenkrantz et al.): an older requester wounds (aborts) a younger
    /// holder that has not voted; a younger requester waits.
    WoundWait,
}

impl NodeConfig {
    /// A configuration with default timeouts and limits.
    pub fn new(id: NodeId, cluster: Cluster, seed: u64) -> NodeConfig {
        NodeConfig {
            id,
            cluster,
            seed,
            decision_timeout: Duration::from_millis(200),
            service_vote_timeout: Duration::from_secs(15),
            recovery_backoff_max: Duration::from_secs(2),
            limits: Limits::default(),
            thrifty: true,
            deadlock: DeadlockPolicy::EdgeChasing,
            lock_wait_timeout: Duration::from_secs(5),
            execution_idle_timeout: Duration::from_secs(30),
            probe_delay: Duration::from_millis(2),
            deadlock_verify_timeout: Duration::from_millis(100),
            detector: Some(DetectorConfig::default()),
            fence_query_interval: Duration::from_secs(1),
            bugs: Bugs::none(),
            resource: ResourceKind::BuiltIn,
            resource_retry: Duration::from_millis(100),
            resource_retry_max: Duration::from_secs(5),
        }
    }
}
