//! Checkpoint compaction: rewrite a durable log prefix into the protocol's snapshot of it.
//!
//! The rewrite is [`dtx_protocol::Node::checkpoint_log`]: the prefix is replayed exactly as
//! `Node::recover` replays it (without the restart step), and the replayed node states its
//! state as records: committed rows with their versions and the commit sequence
//! (`Record::Snapshot`), the outcome window in order (`Record::Outcomes`), the highest
//! leader round, and each undecided transaction's vote (redo writes, locks) and acceptor
//! state. A checkpoint therefore grows with the data and the open state, not with the
//! number of transactions the node ever ran.
//!
//! # Why the log, not the live node
//! The other way to get these records would be to ask the daemon's live `Node` at
//! checkpoint time. That is wrong under group commit: the live node's state already
//! includes the effects of `Persist` outputs whose fsync is still in flight (a vote, an
//! acceptance, an applied commit), and outcomes it learned from a `Decision` without
//! writing a record. A checkpoint built from it would make durable what was never
//! acknowledged as durable, and its position in the log would be ill-defined: the records
//! of a batch written after the snapshot but before the checkpoint's cut would be replayed
//! on top of state that already contains them (a commit applied twice takes two versions).
//! Replaying the sealed segments instead uses only records whose fsync completed, and the
//! checkpoint covers exactly those segments, so the records after it replay on the state
//! they were appended to. The cost is one replay of the previous checkpoint plus the sealed
//! segments on the background checkpoint thread, which never blocks the event loop.

use dtx_protocol::{Node, Record};

/// Rewrites `records` (the previous checkpoint followed by sealed segments, in order) into
/// the protocol's checkpoint of them. `outcomes_window` must equal the node's
/// `Limits::outcomes_kept_max`: with a different window the replay would keep a different
/// set of outcomes than the node's own recovery, and could skip or keep a late vote that
/// recovery treats the other way.
pub fn compact(records: impl IntoIterator<Item = Record>, outcomes_window: usize) -> Vec<Record> {
    Node::checkpoint_log(records, outcomes_window)
}
