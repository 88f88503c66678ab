//! What the world measures while it runs: counters and latency samples.

use dtx_protocol::{Message, MessageKind, NodeId, Time, TxnId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Statistics of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Transactions begun (excluding setup).
    pub txns: u64,
    /// Of those, committed as the client saw it.
    pub committed: u64,
    /// Aborted as the client saw it.
    pub aborted: u64,
    /// Outcome unknown to the client (it crashed or gave up, or read results were lost).
    pub unknown: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Client crashes.
    pub client_crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Recovery ballots started.
    pub recoveries: u64,
    /// Protocol messages sent.
    pub messages: u64,
    /// Frames (envelopes) sent.
    pub frames: u64,
    /// Frames lost (loss or partition).
    pub frames_lost: u64,
    /// fsyncs.
    pub fsyncs: u64,
    /// Durable log prefixes replaced by their checkpoint mid-run (see
    /// `world::disk::compact_after_bytes`).
    pub log_compactions: u64,
    /// Messages rejected by a receiver (with honest peers this should stay 0).
    pub rejected: u64,
    /// Audits whose total was checked.
    pub audits_checked: u64,
    /// Simulated events processed.
    pub events: u64,
    /// Lock waits begun (interactive operations queued for a lock).
    pub lock_waits: u64,
    /// Lock waits that hit the lock-wait timeout.
    pub lock_wait_timeouts: u64,
    /// Deadlocks found and broken by the detector (victims aborted).
    pub deadlocks_detected: u64,
    /// Victims that were on no real wait-for cycle when aborted.
    pub phantom_aborts: u64,
    /// Wound-wait aborts.
    pub wounds: u64,
    /// Deadlock probe messages sent.
    pub probes: u64,
    /// Suspicions of nodes that were up, with no partition in force.
    pub false_suspicions: u64,
    /// Suspicions of nodes that were up but cut off by a partition.
    pub partition_suspicions: u64,
    /// Suspicions of a node restarted less than 20 heartbeat intervals before, whose new
    /// incarnation had not yet reached the suspecting node (stale, not false).
    pub stale_suspicions: u64,
    /// Gossip heartbeat messages sent.
    pub gossip_messages: u64,
    /// Bytes of those messages, encoded as on the wire (one message per frame).
    pub gossip_bytes: u64,
    /// Transactions refused at once because a participant was suspected.
    pub failed_fast: u64,
}

/// What was sent for one transaction.
#[derive(Debug, Default)]
pub(super) struct TxnTraffic {
    /// Frames that carried the transaction's messages.
    pub(super) frames: u64,
    /// Messages of each kind (a handful of kinds per transaction: a short list is cheaper
    /// than a map).
    pub(super) kinds: Vec<(MessageKind, u64)>,
}

impl TxnTraffic {
    /// Counts one message of `kind`.
    pub(super) fn count(&mut self, kind: MessageKind) {
        match self.kinds.iter_mut().find(|(known, _)| *known == kind) {
            Some((_, count)) => *count += 1,
            None => self.kinds.push((kind, 1)),
        }
    }
}

/// Everything the world measures during a run, apart from the protocol itself: counters,
/// latency samples, and the bookkeeping that turns events into those samples.
#[derive(Debug, Default)]
pub(super) struct Measurements {
    /// Counters.
    pub(super) stats: Stats,
    /// Commit latencies as the clients saw them (virtual microseconds).
    pub(super) latencies: Vec<u64>,
    /// Frames and messages sent for each transaction (a hash map: it is only looked up,
    /// never iterated, so its order cannot reach an output).
    pub(super) traffic_by_txn: HashMap<TxnId, TxnTraffic>,
    /// The last Gossip message sized for `Stats::gossip_bytes`, with its size.
    pub(super) last_gossip: Option<(Message, u64)>,
    /// Transactions still undecided somewhere when the liveness phase gave up.
    pub(super) undecided_after_heal: u64,
    /// When each transaction last began waiting for a lock.
    pub(super) wait_started: BTreeMap<TxnId, Time>,
    /// Time from a deadlock cycle's last wait to its victim's abort (virtual microseconds).
    pub(super) deadlock_latencies: Vec<u64>,
    /// When each data node last crashed.
    pub(super) crashed_at: BTreeMap<NodeId, Time>,
    /// When each data node last restarted.
    pub(super) restarted_at: BTreeMap<NodeId, Time>,
    /// (suspecting node, suspected node, crash time) already counted once.
    pub(super) detected: BTreeSet<(NodeId, NodeId, Time)>,
    /// Time from a crash to a live node suspecting it (virtual microseconds).
    pub(super) detection_latencies: Vec<u64>,
    /// Transactions whose client crashed, with the time of the crash.
    pub(super) orphaned: BTreeMap<TxnId, Time>,
    /// Time from a client's crash to its transaction being decided (virtual microseconds).
    pub(super) orphan_recoveries: Vec<u64>,
    /// Undecided transactions of a crashed participant, with the time of the crash.
    pub(super) stranded: BTreeMap<TxnId, Time>,
    /// Time from a participant's crash to such a transaction's first decision.
    pub(super) stranded_recoveries: Vec<u64>,
}
