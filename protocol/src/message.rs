//! Wire messages, operations, and the one encode/decode pair every runtime uses.
//!
//! Frame = one version byte, then postcard of a `Vec<Message>` (messages bound for
//! the same peer travel together). Decoding a malformed, oversized or foreign-version frame
//! is a typed [`DecodeError`], never a panic.

use crate::store::LockTable;
use crate::types::{
    Ballot, Key, NodeId, Outcome, Time, TxnDescriptor, TxnId, Value, Version, Vote,
};
use core::fmt;
use serde::{Deserialize, Serialize};

/// Wire format version; the first byte of every frame.
///
/// 1 was CBOR (ciborium: every struct a map keyed by field names). 2 is postcard:
/// positional, varint integers, 7x smaller and 7x faster to decode on real frames
/// (WHITEPAPER 9.6). A positional format is not self-describing: a build that adds a
/// field or reorders variants would be *misread* by an older one, not refused. So any
/// change to a type a [`Message`] carries bumps this number (frames of another version
/// are refused whole); `tests/wire_format.rs` pins the encoding of a sample of every
/// message kind and fails on a change without a bump. 3 added
/// [`Operation::ReadForUpdate`].
pub const WIRE_VERSION: u8 = 3;

/// Largest encoded frame accepted or produced (bytes).
pub const FRAME_SIZE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// One operation of a transaction, executed by the key's owner RM.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Upsert `key` to `value`.
    Write {
        /// The key.
        key: Key,
        /// Its new value.
        value: Value,
    },
    /// Set `key` to `value`; the RM votes Aborted if the key does not exist.
    Update {
        /// The key, which must exist.
        key: Key,
        /// Its new value.
        value: Value,
    },
    /// Remove `key` (removing a missing key is not an error).
    Delete {
        /// The key.
        key: Key,
    },
    /// Return the key's value and version. With `expected`, also a check: a different
    /// current version makes the RM vote Aborted (optimistic read-modify-write).
    Read {
        /// The key.
        key: Key,
        /// The version the client read earlier, if this read validates it.
        expected: Option<Version>,
    },
    /// Ask a service participant to do `action` with `args`. `target` routes it (its
    /// namespace, the part before the first `/`, names the service's data node) and is
    /// what access policies check; the action and its arguments are the service's own
    /// business: dtx carries them and never interprets them. Only a node with an external
    /// resource serves calls (the built-in store votes Aborted with
    /// [`AbortReason::NoService`]).
    Call {
        /// Routes the call and is checked by access policies (e.g. `flights/LH400`).
        target: Key,
        /// The service's name for what to do (e.g. `reserve`).
        action: String,
        /// Its arguments: JSON text (UTF-8), carried as bytes.
        args: Value,
    },
    /// Return the key's value and version like [`Operation::Read`], under an *exclusive*
    /// lock (SQL's `SELECT ... FOR UPDATE`): for a read the transaction will write back.
    /// Two transactions that read a key under shared locks and then both write it can only
    /// both abort at prepare (neither lock upgrades past the other's); under this one the
    /// second waits at execution for the first to finish. Needs write permission on the key,
    /// as every operation that locks exclusively does ([`crate::LockMode::required_by`]).
    ReadForUpdate {
        /// The key.
        key: Key,
    },
}

impl Operation {
    /// The key the operation touches.
    pub fn key(&self) -> &Key {
        match self {
            Operation::Write { key, .. }
            | Operation::Update { key, .. }
            | Operation::Delete { key }
            | Operation::Read { key, .. }
            | Operation::ReadForUpdate { key }
            | Operation::Call { target: key, .. } => key,
        }
    }

    /// True for operations that return the key's value (a plain read or a read for update).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Operation::Read { .. } | Operation::ReadForUpdate { .. }
        )
    }

    /// True for operations that modify the key (and so take an exclusive lock; a call
    /// counts as a write: it needs write permission on its target).
    pub fn is_write(&self) -> bool {
        !self.is_read()
    }
}

/// What a read saw: the committed value (none if absent) and its version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadResult {
    /// The key read.
    pub key: Key,
    /// Its value, `None` if the key does not exist.
    pub value: Option<Value>,
    /// Its version.
    pub version: Version,
}

/// Why an RM voted Aborted (or why a transaction was aborted): reported to the client.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, thiserror::Error,
)]
pub enum AbortReason {
    /// Another transaction holds a conflicting lock on the key.
    #[error("lock conflict on key {key}{}", holder.map(|holder| format!(" (held by {holder})")).unwrap_or_default())]
    LockConflict {
        /// The contended key.
        key: Key,
        /// A transaction holding the lock, when the RM knows one (`None` when the lock
        /// was refused for a waiter queued before this transaction).
        holder: Option<TxnId>,
    },
    /// `update` of a key that does not exist.
    #[error("update of missing key {key}")]
    UpdateOfMissingKey {
        /// The missing key.
        key: Key,
    },
    /// The key belongs to another data node.
    #[error("key {key} is not owned by this node")]
    KeyNotOwned {
        /// The misrouted key.
        key: Key,
    },
    /// A validating read found a different version.
    #[error("key {key} changed: expected version {expected}, found {actual}")]
    VersionMismatch {
        /// The key.
        key: Key,
        /// The version the client expected.
        expected: u64,
        /// The current version.
        actual: u64,
    },
    /// Key longer than the configured limit.
    #[error("key of {length_bytes} bytes exceeds the limit of {limit_bytes}")]
    KeyTooLarge {
        /// The key's length.
        length_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// Value longer than the configured limit.
    #[error("value of {length_bytes} bytes for key {key} exceeds the limit of {limit_bytes}")]
    ValueTooLarge {
        /// The key.
        key: Key,
        /// The value's length.
        length_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// More operations for this RM than the configured limit.
    #[error("{count} operations exceed the limit of {limit}")]
    TooManyOperations {
        /// Operations sent to this RM.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// The RM has too many open transactions (backpressure).
    #[error("node overloaded: {open} open transactions")]
    Overloaded {
        /// Open transactions at the RM.
        open: u64,
    },
    /// The transaction descriptor was malformed.
    #[error("malformed transaction descriptor: {problem}")]
    MalformedDescriptor {
        /// What is wrong with it.
        problem: String,
    },
    /// No vote of the participant reached the acceptors before a recovery leader chose
    /// Aborted for its instance: it is suspected, gone, or never got the Prepare. Given by
    /// the client (which names the participant beside it), never voted by an RM.
    #[error(
        "no vote reached the acceptors before recovery (the participant is suspected or gone)"
    )]
    NoVote,
    /// Chosen as the victim of a deadlock (the youngest transaction on the cycle).
    #[error("aborted to break a deadlock")]
    Deadlock,
    /// Wounded by an older transaction (wound-wait).
    #[error("wounded by an older transaction (wound-wait)")]
    Wounded,
    /// Waited for a lock longer than the lock-wait timeout.
    #[error("lock wait on key {key} timed out")]
    LockWaitTimeout {
        /// The key waited for.
        key: Key,
    },
    /// The key's lock queue is full (backpressure).
    #[error("lock queue of key {key} is full")]
    LockQueueFull {
        /// The key.
        key: Key,
    },
    /// The RM lost the transaction's execution state (it restarted mid-transaction).
    #[error("the RM restarted and lost the transaction's uncommitted work")]
    ExecutionLost,
    /// The client went silent mid-transaction longer than the idle timeout.
    #[error("the client was idle too long mid-transaction")]
    ClientIdle,
    /// The client asked to abort.
    #[error("aborted by the client")]
    ClientAborted,
    /// Prepare named a different number of operations than the RM executed.
    #[error("the RM executed {executed} operations, the client sent {expected}")]
    OperationCountMismatch {
        /// Operations the RM executed.
        executed: u32,
        /// Operations the client says it sent.
        expected: u32,
    },
    /// The transaction is already prepared or decided.
    #[error("the transaction is already prepared or finished")]
    AlreadyFinished,
    /// The RM is draining (`dtx drain`): it finishes what it has and takes nothing new.
    #[error("{node} is draining: it takes no new transactions")]
    Draining {
        /// The draining data node.
        node: NodeId,
    },
    /// A read among the writes buffered until prepare (only writes can be buffered: a
    /// read must run to return its value).
    #[error("a read of {key} among the writes buffered until prepare")]
    ReadAtPrepare {
        /// The read's key.
        key: Key,
    },
    /// The client's permissions do not cover the key (see `access::Permissions`).
    #[error("client may not access key {key}")]
    Unauthorized {
        /// The first key refused.
        key: Key,
    },
    /// The client has `Limits::open_transactions_per_client_max` transactions open at
    /// this RM already (a quota against one client flooding it).
    #[error("{client} has {open} transactions open at this node, its quota")]
    ClientQuota {
        /// The client.
        client: NodeId,
        /// Its open transactions here.
        open: u64,
    },
    /// The RM rejoined after its data was wiped and is in acceptor quarantine (see
    /// `node::fence`): it takes no transactions until the other members clear it.
    #[error("{node} is rejoining after its data was wiped: it takes no transactions until its acceptor fence clears")]
    Quarantined {
        /// The quarantined data node.
        node: NodeId,
    },
    /// The writes would take the RM's data past `Limits::store_bytes_max` (deletes,
    /// reads and commits of prepared transactions still work).
    #[error(
        "storage full: {used_bytes} bytes of {limit_bytes} used; only deletes and reads are served"
    )]
    StorageFull {
        /// Committed bytes plus bytes of prepared writes.
        used_bytes: u64,
        /// The quota.
        limit_bytes: u64,
    },
    /// A service participant refused to prepare, in its own words (e.g. "no seats left on
    /// LH400"). The text is the service's, cut to [`REFUSAL_TEXT_MAX_BYTES`].
    #[error("refused by the service: {reason}")]
    ServiceRefused {
        /// The service's reason.
        reason: String,
    },
    /// The participant's service did not answer prepare (down, timing out, or answering
    /// nonsense) within the node's bounded retries.
    #[error("the service did not answer: {detail}")]
    ServiceUnavailable {
        /// What the last attempt saw.
        detail: String,
    },
    /// A call reached a data node that serves no service (the built-in store).
    #[error("no service at {target}'s node: it is a key-value data node")]
    NoService {
        /// The call's target.
        target: Key,
    },
    /// The node is settling its service's prepared transactions after a restart and
    /// takes no new ones until that is done.
    #[error("the node is settling its service's prepared transactions after a restart")]
    ResourceRecovering,
    /// An interactive operation reached a service's node: a service takes a transaction's
    /// operations at prepare only (a client buffers them until then).
    #[error("{node} is a service's node: it takes operations at prepare only, not one by one")]
    NotInteractive {
        /// The service's data node.
        node: NodeId,
    },
    /// The client gave up on an interactive operation: its owner stopped answering and
    /// is suspected (or left the cluster). Waiting would hold this transaction's locks
    /// elsewhere and its caller for the whole outage.
    #[error("{node} stopped answering and is suspected; the transaction was abandoned")]
    ParticipantUnavailable {
        /// The owner of the unanswered operation.
        node: NodeId,
    },
    /// One-phase: the client asked its only participant for the outcome before that RM had
    /// its prepare; the RM recorded Abort first, so a late prepare can never commit it.
    #[error("the participant had not prepared when the client asked for the outcome (one-phase)")]
    NotPrepared,
}

impl AbortReason {
    /// A stable short label of the reason's kind (snake case, without its details), for
    /// metrics labels and counts by reason (`dtx bench --json`, `/metrics`).
    pub fn kind(&self) -> &'static str {
        match self {
            AbortReason::LockConflict { .. } => "lock_conflict",
            AbortReason::UpdateOfMissingKey { .. } => "update_of_missing_key",
            AbortReason::KeyNotOwned { .. } => "key_not_owned",
            AbortReason::VersionMismatch { .. } => "version_mismatch",
            AbortReason::KeyTooLarge { .. } => "key_too_large",
            AbortReason::ValueTooLarge { .. } => "value_too_large",
            AbortReason::TooManyOperations { .. } => "too_many_operations",
            AbortReason::Overloaded { .. } => "overloaded",
            AbortReason::MalformedDescriptor { .. } => "malformed_descriptor",
            AbortReason::NoVote => "no_vote",
            AbortReason::Deadlock => "deadlock",
            AbortReason::Wounded => "wounded",
            AbortReason::LockWaitTimeout { .. } => "lock_wait_timeout",
            AbortReason::LockQueueFull { .. } => "lock_queue_full",
            AbortReason::ExecutionLost => "execution_lost",
            AbortReason::ClientIdle => "client_idle",
            AbortReason::ClientAborted => "client_aborted",
            AbortReason::OperationCountMismatch { .. } => "operation_count_mismatch",
            AbortReason::AlreadyFinished => "already_finished",
            AbortReason::Draining { .. } => "draining",
            AbortReason::ReadAtPrepare { .. } => "read_at_prepare",
            AbortReason::Unauthorized { .. } => "unauthorized",
            AbortReason::ClientQuota { .. } => "client_quota",
            AbortReason::Quarantined { .. } => "quarantined",
            AbortReason::StorageFull { .. } => "storage_full",
            AbortReason::ServiceRefused { .. } => "service_refused",
            AbortReason::ServiceUnavailable { .. } => "service_unavailable",
            AbortReason::NoService { .. } => "no_service",
            AbortReason::ResourceRecovering => "resource_recovering",
            AbortReason::NotInteractive { .. } => "not_interactive",
            AbortReason::ParticipantUnavailable { .. } => "participant_unavailable",
            AbortReason::NotPrepared => "not_prepared",
        }
    }

    /// A lock conflict of `txn` on `key`, naming a transaction that holds the key in
    /// `locks` (the first other holder, if any).
    pub fn lock_conflict(locks: &LockTable, txn: TxnId, key: Key) -> AbortReason {
        let holder = locks
            .holders(&key)
            .and_then(|holders| holders.keys().find(|holder| **holder != txn).copied());
        AbortReason::LockConflict { key, holder }
    }
}

/// Longest refusal text of a service kept in an [`AbortReason`] (bytes; longer is cut at
/// a character boundary).
pub const REFUSAL_TEXT_MAX_BYTES: usize = 1024;

/// `text` cut to at most `limit` bytes at a character boundary.
pub fn cut_text(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Why a data node's runtime refuses to serve a peer at all ([`Message::Refused`]).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    thiserror::Error,
)]
pub enum Refusal {
    /// The peer's transport identity is not one the cluster admits (not on its list of
    /// clients, or revoked).
    #[error(
        "refused: this client is not authenticated by the cluster (unknown or revoked identity)"
    )]
    Unauthenticated,
    /// The peer sent more than its share; this message was dropped unprocessed.
    #[error("refused: this client exceeded its rate limit; try again later")]
    RateLimited,
}

/// A protocol message. The sender is always the authenticated transport peer, never a field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Message {
    /// Client → RM: the RM's operations; the RM locks, validates, persists its vote and
    /// sends Phase2a(ballot 0) for its own instance.
    Prepare {
        /// The transaction.
        descriptor: TxnDescriptor,
        /// The operations on this RM's keys, in order.
        operations: Vec<Operation>,
    },
    /// RM → client: read results and abort reasons, sent only when there are any (a
    /// write-only Prepared vote needs no notice: the client learns it from Phase2b).
    VoteNotice {
        /// The transaction.
        txn: TxnId,
        /// The RM's vote.
        vote: Vote,
        /// Why it voted Aborted.
        reason: Option<AbortReason>,
        /// Results of the RM's reads, in operation order.
        reads: Vec<ReadResult>,
    },
    /// RM or leader → acceptors: accept `value` for instance `rm` at `ballot`.
    Phase2a {
        /// The transaction (acceptors persist it, for their own recovery).
        descriptor: TxnDescriptor,
        /// The instance: the RM whose vote this is.
        rm: NodeId,
        /// Ballot 0 (only from the RM itself) or a recovery ballot.
        ballot: Ballot,
        /// The proposed value.
        value: Vote,
    },
    /// Acceptor → participants, client and the ballot's leader: I accepted.
    Phase2b {
        /// The transaction.
        txn: TxnId,
        /// The instance.
        rm: NodeId,
        /// The ballot accepted.
        ballot: Ballot,
        /// The value accepted.
        value: Vote,
    },
    /// Leader → acceptors: promise `ballot` for these instances and report what you accepted.
    Phase1a {
        /// The transaction.
        descriptor: TxnDescriptor,
        /// The recovery ballot.
        ballot: Ballot,
    },
    /// Acceptor → leader: promised `ballot`; here is what I accepted, per instance.
    Phase1b {
        /// The transaction.
        txn: TxnId,
        /// The ballot promised.
        ballot: Ballot,
        /// One report per participant instance.
        reports: Vec<InstanceReport>,
    },
    /// Acceptor → leader: your ballot is stale; I promised `promised`.
    Reject {
        /// The transaction.
        txn: TxnId,
        /// The highest ballot this acceptor promised for the transaction.
        promised: Ballot,
    },
    /// Anyone who knows → anyone who asked or should know: the outcome.
    Decision {
        /// The transaction.
        txn: TxnId,
        /// Its outcome.
        outcome: Outcome,
        /// The sender's read results for this transaction, if it is an RM that kept them.
        reads: Option<Vec<ReadResult>>,
    },
    /// Client → node: finish this transaction (run recovery if you must) and tell me.
    Resolve {
        /// The transaction.
        descriptor: TxnDescriptor,
    },
    /// Client → RM: run operation number `sequence` (per RM, from 0) of an interactive
    /// transaction, under strict two-phase locking (waits for conflicting locks).
    Execute {
        /// The transaction.
        txn: TxnId,
        /// Its start time on the client's clock (deadlock victim choice).
        start_time: Time,
        /// The operation's number at this RM.
        sequence: u32,
        /// The operation.
        operation: Operation,
    },
    /// RM → client: the result of operation `sequence` (a read's result, or nothing).
    Executed {
        /// The transaction.
        txn: TxnId,
        /// The operation's number.
        sequence: u32,
        /// Its result; an error means the RM aborted the transaction.
        result: Result<Option<ReadResult>, AbortReason>,
    },
    /// Client → RM: prepare the interactive transaction whose first `operations`
    /// operations this RM executed (its writes are buffered there as intents), after
    /// running `at_prepare` (writes the client buffered until commit, as Spanner's clients
    /// do: they save a round trip; a lock they cannot have at once votes Aborted).
    PrepareExecuted {
        /// The transaction.
        descriptor: TxnDescriptor,
        /// Operations the client sent this RM.
        operations: u32,
        /// Writes to run now, before voting.
        at_prepare: Vec<Operation>,
        /// True when no participant takes a lock at prepare (no `at_prepare` writes
        /// anywhere): the transaction's lock point is behind it, so a read-only RM may
        /// release its shared locks now. False otherwise: releasing before another RM
        /// locks would break two-phase locking.
        lock_point_passed: bool,
    },
    /// Client → RM: abandon an interactive transaction before prepare.
    AbortExecution {
        /// The transaction.
        txn: TxnId,
    },
    /// RM → client: the RM aborted your transaction before prepare.
    ExecutionAborted {
        /// The transaction.
        txn: TxnId,
        /// Why.
        reason: AbortReason,
    },
    /// Deadlock probe (Chandy–Misra–Haas): `initiator` waits, transitively, for `target`;
    /// `path` lists each transaction on the way and the node where it waits.
    Probe {
        /// The transaction whose wait started the probe.
        initiator: TxnId,
        /// The transaction the probe asks about next.
        target: TxnId,
        /// The wait-for path so far, starting with the initiator.
        path: Vec<ProbeHop>,
    },
    /// A probe came back: the cycle is verified edge by edge, starting at the victim, by
    /// the node where each transaction waits; back at the victim's node the victim is
    /// aborted if it still waits (so waits that ended meanwhile abort no one).
    Victim {
        /// The youngest transaction on the cycle.
        victim: TxnId,
        /// The cycle, as found.
        cycle: Vec<ProbeHop>,
        /// Edges verified so far, counted from the victim's.
        verified: u32,
    },
    /// Gossip heartbeats (see `detector`): a member's own heartbeat and the newest it knows
    /// of others. Not about any transaction: `txn()` is [`TxnId::NONE`].
    Gossip {
        /// The heartbeats.
        heartbeats: Vec<crate::detector::Heartbeat>,
    },
    /// A deadlock verification lap ended (victim aborted, or gave up): release the pins it
    /// holds on these waiters.
    Unpin {
        /// The lap's victim.
        victim: TxnId,
        /// Waiters at the receiving node pinned by the lap.
        waiters: Vec<TxnId>,
    },
    /// Quarantined data node → every other data node: does any undecided transaction of
    /// yours name me (see `node::fence`)?
    FenceQuery {
        /// The query round (answers to an older round do not count).
        round: u64,
    },
    /// Data node → the quarantined asker: the answer to its [`Message::FenceQuery`].
    FenceAnswer {
        /// The round asked.
        round: u64,
        /// True if none of this node's undecided transactions names the asker as a
        /// participant or an acceptor.
        clear: bool,
        /// The newest incarnation the asker told this node before (its heartbeats), so a
        /// wiped node can take a higher one and be believed again.
        incarnation: Option<u64>,
    },
    /// Data node's runtime → peer: your message about `txn` was not processed, and why.
    /// Sent by the daemon, never by the protocol node; a client stops the transaction (see
    /// `Client`'s handling), a data node counts it and ignores it.
    Refused {
        /// The transaction the refused message was about ([`TxnId::NONE`] for none).
        txn: TxnId,
        /// Why.
        reason: Refusal,
    },
}

/// One transaction on a probe's path: who, how old, and where it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProbeHop {
    /// The transaction.
    pub txn: TxnId,
    /// Its start time (victim choice: the youngest is aborted).
    pub start_time: Time,
    /// The node where it waits.
    pub node: NodeId,
}

impl Message {
    /// The transaction the message is about.
    pub fn txn(&self) -> TxnId {
        match self {
            Message::Prepare { descriptor, .. }
            | Message::Phase2a { descriptor, .. }
            | Message::Phase1a { descriptor, .. }
            | Message::Resolve { descriptor } => descriptor.txn,
            Message::VoteNotice { txn, .. }
            | Message::Phase2b { txn, .. }
            | Message::Phase1b { txn, .. }
            | Message::Reject { txn, .. }
            | Message::Decision { txn, .. }
            | Message::Execute { txn, .. }
            | Message::Executed { txn, .. }
            | Message::AbortExecution { txn }
            | Message::ExecutionAborted { txn, .. }
            | Message::Refused { txn, .. } => *txn,
            Message::PrepareExecuted { descriptor, .. } => descriptor.txn,
            Message::Probe { initiator, .. } => *initiator,
            Message::Victim { victim, .. } | Message::Unpin { victim, .. } => *victim,
            Message::Gossip { .. } | Message::FenceQuery { .. } | Message::FenceAnswer { .. } => {
                TxnId::NONE
            }
        }
    }

    /// The round of the first ballot the message carries above [`crate::types::ROUND_MAX`],
    /// if any: such a message is refused before it touches state. (An honest acceptor
    /// never reports an accepted ballot above its promise, and promises only ballots in
    /// range, so a Phase1b report out of range is never honest either.)
    pub fn out_of_range_round(&self) -> Option<u32> {
        let first_out_of_range = |ballot: &Ballot| (!ballot.is_in_range()).then_some(ballot.round);
        match self {
            Message::Phase1a { ballot, .. }
            | Message::Phase2a { ballot, .. }
            | Message::Phase2b { ballot, .. } => first_out_of_range(ballot),
            Message::Reject { promised, .. } => first_out_of_range(promised),
            Message::Phase1b {
                ballot, reports, ..
            } => core::iter::once(ballot)
                .chain(
                    reports
                        .iter()
                        .filter_map(|report| report.accepted_ballot.as_ref()),
                )
                .find_map(first_out_of_range),
            _ => None,
        }
    }

    /// A short name for logs and message accounting.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Prepare { .. } => MessageKind::Prepare,
            Message::VoteNotice { .. } => MessageKind::VoteNotice,
            Message::Phase2a { .. } => MessageKind::Phase2a,
            Message::Phase2b { .. } => MessageKind::Phase2b,
            Message::Phase1a { .. } => MessageKind::Phase1a,
            Message::Phase1b { .. } => MessageKind::Phase1b,
            Message::Reject { .. } => MessageKind::Reject,
            Message::Decision { .. } => MessageKind::Decision,
            Message::Resolve { .. } => MessageKind::Resolve,
            Message::Execute { .. } => MessageKind::Execute,
            Message::Executed { .. } => MessageKind::Executed,
            Message::PrepareExecuted { .. } => MessageKind::Prepare,
            Message::AbortExecution { .. } => MessageKind::AbortExecution,
            Message::ExecutionAborted { .. } => MessageKind::ExecutionAborted,
            Message::Probe { .. } => MessageKind::Probe,
            Message::Victim { .. } | Message::Unpin { .. } => MessageKind::Victim,
            Message::Gossip { .. } => MessageKind::Gossip,
            Message::Refused { .. } => MessageKind::Refused,
            Message::FenceQuery { .. } => MessageKind::FenceQuery,
            Message::FenceAnswer { .. } => MessageKind::FenceAnswer,
        }
    }
}

/// The kinds of [`Message`], for accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum MessageKind {
    Prepare,
    VoteNotice,
    Phase2a,
    Phase2b,
    Phase1a,
    Phase1b,
    Reject,
    Decision,
    Resolve,
    Execute,
    Executed,
    AbortExecution,
    ExecutionAborted,
    Probe,
    Victim,
    Gossip,
    Refused,
    FenceQuery,
    FenceAnswer,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What one acceptor accepted for one instance, reported in Phase1b.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The instance (RM).
    pub rm: NodeId,
    /// Highest ballot in which the acceptor accepted a value, `None` if never (bal = -1).
    pub accepted_ballot: Option<Ballot>,
    /// The value accepted in that ballot.
    pub accepted_value: Option<Vote>,
}

/// Messages for one destination, sent together in one frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// The destination peer.
    pub to: NodeId,
    /// The messages, in the order they were produced.
    pub messages: Vec<Message>,
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame was empty.
    #[error("empty frame")]
    Empty,
    /// The frame is larger than [`FRAME_SIZE_MAX_BYTES`].
    #[error("frame of {length_bytes} bytes exceeds the limit of {limit_bytes}")]
    TooLarge {
        /// The frame's length.
        length_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The version byte is not [`WIRE_VERSION`].
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    Version(u8),
    /// The body did not decode to messages.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Why messages could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed [`FRAME_SIZE_MAX_BYTES`].
    #[error("encoded frame of {length_bytes} bytes exceeds the limit of {limit_bytes}")]
    TooLarge {
        /// The frame's length.
        length_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// Serialization failed.
    #[error("cannot encode: {0}")]
    Serialize(String),
}

/// Encodes messages for one peer as one frame: version byte + postcard.
pub fn encode(messages: &[Message]) -> Result<Vec<u8>, EncodeError> {
    let frame = postcard::to_extend(messages, vec![WIRE_VERSION])
        .map_err(|error| EncodeError::Serialize(error.to_string()))?;
    if frame.len() > FRAME_SIZE_MAX_BYTES {
        return Err(EncodeError::TooLarge {
            length_bytes: frame.len(),
            limit_bytes: FRAME_SIZE_MAX_BYTES,
        });
    }
    Ok(frame)
}

/// Decodes one frame; never panics on hostile input.
pub fn decode(frame: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if frame.len() > FRAME_SIZE_MAX_BYTES {
        return Err(DecodeError::TooLarge {
            length_bytes: frame.len(),
            limit_bytes: FRAME_SIZE_MAX_BYTES,
        });
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::Version(version));
    }
    let (messages, rest): (Vec<Message>, &[u8]) = postcard::take_from_bytes(body)
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(messages)
}
