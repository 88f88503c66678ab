//! Why a node refused a peer's message or a record of its own log: typed reasons, so the
//! runtime can count them per kind and an operator can tell a flood from a bug.
//!
//! House rule: a bad message from a peer is rejected with a reason and counted, a CRC-valid
//! but impossible log record is skipped or capped with a reason; neither ever panics. Only
//! a broken *internal* invariant (one no peer and no disk can reach) still asserts.

use crate::message::{MessageKind, Refusal};
use crate::types::{DescriptorProblem, Key, NodeId, Outcome, TxnId, LEADER_ROUND_MAX, ROUND_MAX};

/// What is wrong with a deadlock-detection message ([`RejectReason::Malformed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DeadlockMessageProblem {
    /// A Probe whose path is empty, too long, or does not start at its initiator.
    #[error("bad path")]
    BadPath,
    /// A Victim from a non-member, or whose cycle is too short, too long, or verified
    /// past its end.
    #[error("bad cycle or sender")]
    BadCycleOrSender,
    /// A Victim that is not the youngest transaction of its cycle.
    #[error("not the youngest of its cycle")]
    NotYoungest,
    /// An Unpin (a Victim lap given up) from a non-member or with too many waiters.
    #[error("bad Unpin")]
    BadUnpin,
}

/// Which of the two reasons a Resolve needs is missing ([`RejectReason::NoReasonToResolve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NoResolveReason {
    /// Only the transaction's client and data nodes may ask.
    #[error("the asker is neither its client nor a data node")]
    AskerHasNoSay,
    /// Only a participant or acceptor has anything to recover.
    #[error("this node is neither a participant nor an acceptor")]
    NoPartHere,
}

/// Why a node rejected a peer's message (the message changed nothing, or only this count).
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RejectReason {
    /// A message only the transaction's client may send came from someone else.
    #[error("{message} not from the transaction's client")]
    NotFromClient {
        /// The kind of message.
        message: MessageKind,
    },
    /// A message only data nodes may send came from a peer that is not one.
    #[error("{message} from a peer that is not a data node")]
    NotFromMember {
        /// The kind of message.
        message: MessageKind,
    },
    /// An acceptor's reply came from a peer that is not an acceptor of the transaction.
    #[error("{message} from a peer that is not an acceptor of the transaction")]
    NotFromAcceptor {
        /// The kind of message.
        message: MessageKind,
    },
    /// A proposal or promise request in a ballot the sender does not own: ballot 0
    /// belongs to the instance's RM, a recovery ballot to its leader.
    #[error("{message} in a ballot the sender does not own")]
    NotBallotOwner {
        /// The kind of message.
        message: MessageKind,
    },
    /// A ballot round above [`ROUND_MAX`]: refused before it touches any state, so no
    /// promise, acceptance or next-round computation ever sees it.
    #[error("{message} with ballot round {round}, above the limit of {ROUND_MAX}")]
    BallotOutOfRange {
        /// The kind of message.
        message: MessageKind,
        /// The offending round.
        round: u32,
    },
    /// The transaction descriptor is malformed or differs from the one already known.
    #[error("{message} with a bad transaction descriptor: {problem}")]
    BadDescriptor {
        /// The kind of message.
        message: MessageKind,
        /// What is wrong with it.
        problem: DescriptorProblem,
    },
    /// A message for a role this node does not have in the transaction (a Prepare to a
    /// non-participant, a Phase2a or Phase1a to a non-acceptor).
    #[error("{message} for a role this node does not have in the transaction")]
    NotInRole {
        /// The kind of message.
        message: MessageKind,
    },
    /// Two different Phase2a values in one ballot: the sender broke "one 2a per ballot".
    #[error("two different Phase2a values in one ballot")]
    ConflictingPhase2a,
    /// A Commit decision for a transaction this RM voted Aborted: Commit cannot have been
    /// chosen (PaxosCommit.tla: chosen Prepared implies the RM prepared), so the sender is
    /// wrong and the RM keeps waiting for the real outcome.
    #[error("Commit of {txn}, which this RM voted Aborted")]
    ContradictsOwnVote {
        /// The transaction.
        txn: TxnId,
    },
    /// A decision that contradicts the outcome this node already knows.
    #[error("{outcome} of {txn} contradicts the known outcome {known}")]
    ContradictsKnownOutcome {
        /// The transaction.
        txn: TxnId,
        /// The outcome the message claims.
        outcome: Outcome,
        /// The outcome this node knows.
        known: Outcome,
    },
    /// The node holds [`crate::Limits::open_transactions_max`] transactions already.
    #[error("too many open transactions ({open})")]
    Overloaded {
        /// Transactions open at the node.
        open: u64,
    },
    /// A reply meant for clients reached a data node.
    #[error("{message} is meant for clients")]
    MeantForClients {
        /// The kind of message.
        message: MessageKind,
    },
    /// A deadlock-detection message that breaks its own bounds or shape.
    #[error("malformed {message}: {problem}")]
    Malformed {
        /// The kind of message.
        message: MessageKind,
        /// What is wrong with it.
        problem: DeadlockMessageProblem,
    },
    /// A Resolve from a peer with no say in the transaction, or to a node with no part in
    /// it: only the transaction's client and data nodes may ask, and only a participant
    /// or acceptor has anything to recover.
    #[error("Resolve without a reason: {problem}")]
    NoReasonToResolve {
        /// Which of the two it lacks.
        problem: NoResolveReason,
    },
    /// A message that would open a transaction for a client over its quota.
    #[error("{client} has {open} transactions open here, its quota")]
    ClientQuota {
        /// The client.
        client: NodeId,
        /// Its open transactions here.
        open: u64,
    },
    /// A message this node must not act on while in acceptor quarantine (Phase1a,
    /// Phase2a, Prepare, Resolve; see `node::fence`).
    #[error("{message} ignored: this node is in acceptor quarantine")]
    Quarantined {
        /// The kind of message.
        message: MessageKind,
    },
    /// A peer's runtime refused a message of this node (data nodes only count these).
    #[error("the peer refused a message: {refusal}")]
    PeerRefused {
        /// Why it refused.
        refusal: Refusal,
    },
}

/// The kinds of [`RejectReason`], without their details: the keys of
/// [`crate::Node::rejected_counts`], a map bounded by this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)] // One per RejectReason variant, documented there.
pub enum RejectKind {
    NotFromClient,
    NotFromMember,
    NotFromAcceptor,
    NotBallotOwner,
    BallotOutOfRange,
    BadDescriptor,
    NotInRole,
    ConflictingPhase2a,
    ContradictsOwnVote,
    ContradictsKnownOutcome,
    Overloaded,
    MeantForClients,
    Malformed,
    NoReasonToResolve,
    ClientQuota,
    Quarantined,
    PeerRefused,
}

impl RejectReason {
    /// The reason's kind (for counting).
    pub fn kind(&self) -> RejectKind {
        match self {
            RejectReason::NotFromClient { .. } => RejectKind::NotFromClient,
            RejectReason::NotFromMember { .. } => RejectKind::NotFromMember,
            RejectReason::NotFromAcceptor { .. } => RejectKind::NotFromAcceptor,
            RejectReason::NotBallotOwner { .. } => RejectKind::NotBallotOwner,
            RejectReason::BallotOutOfRange { .. } => RejectKind::BallotOutOfRange,
            RejectReason::BadDescriptor { .. } => RejectKind::BadDescriptor,
            RejectReason::NotInRole { .. } => RejectKind::NotInRole,
            RejectReason::ConflictingPhase2a => RejectKind::ConflictingPhase2a,
            RejectReason::ContradictsOwnVote { .. } => RejectKind::ContradictsOwnVote,
            RejectReason::ContradictsKnownOutcome { .. } => RejectKind::ContradictsKnownOutcome,
            RejectReason::Overloaded { .. } => RejectKind::Overloaded,
            RejectReason::MeantForClients { .. } => RejectKind::MeantForClients,
            RejectReason::Malformed { .. } => RejectKind::Malformed,
            RejectReason::NoReasonToResolve { .. } => RejectKind::NoReasonToResolve,
            RejectReason::ClientQuota { .. } => RejectKind::ClientQuota,
            RejectReason::Quarantined { .. } => RejectKind::Quarantined,
            RejectReason::PeerRefused { .. } => RejectKind::PeerRefused,
        }
    }
}

/// A CRC-valid record of the node's own log that replay could not take as written (only
/// corruption that kept its checksum, a bug, or a log written by an older version under
/// attack can produce one). Reported with [`crate::Event::ReplayAnomaly`]; what replay did
/// instead is documented on each variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ReplayProblem {
    /// A `LeaderRound` above [`LEADER_ROUND_MAX`]: replayed as [`ROUND_MAX`]. No ballot
    /// above `ROUND_MAX` is ever used or accepted, so lowering the number cannot make a
    /// ballot repeat; it leaves room for restarts to keep raising the incarnation (no
    /// node ever ran with the capped value as its incarnation: restarts never write
    /// above `LEADER_ROUND_MAX`). The node's recovery rounds are then exhausted
    /// ([`crate::Event::RecoveryRoundsExhausted`]).
    #[error("leader round {round} above the limit of {LEADER_ROUND_MAX}: replayed as {ROUND_MAX}")]
    LeaderRoundCapped {
        /// The round the record held.
        round: u32,
    },
    /// A `Vote` or `Acceptor` record whose descriptor has the wrong shape: skipped. No
    /// message with such a descriptor is ever accepted, so no vote or acceptor state
    /// with it can have been sent to anyone.
    #[error("record of {txn} with a malformed descriptor ({problem}): skipped")]
    MalformedDescriptor {
        /// The transaction.
        txn: TxnId,
        /// What is wrong with it.
        problem: DescriptorProblem,
    },
    /// An `Acceptor` record that breaks `bal <= mbal` or `val = none <=> bal = -1`:
    /// skipped, the state before it stands (an acceptor never writes such a state).
    #[error("malformed acceptor state of {txn} instance {rm}: skipped")]
    AcceptorStateMalformed {
        /// The transaction.
        txn: TxnId,
        /// The instance.
        rm: NodeId,
    },
    /// An `Acceptor` record that goes backwards from the state before it: skipped, the
    /// state before it stands (forgetting a promise or an accepted value could let two
    /// values be chosen; keeping one never can).
    #[error("acceptor state of {txn} instance {rm} goes backwards: skipped")]
    AcceptorStateRegressed {
        /// The transaction.
        txn: TxnId,
        /// The instance.
        rm: NodeId,
    },
    /// An `Outcome` Commit for a transaction this RM voted Aborted: the outcome is kept
    /// (others may have been told it) but nothing is applied (an Aborted vote has no
    /// writes).
    #[error("Commit of {txn}, which this RM voted Aborted: nothing applied")]
    CommitOfAbortedVote {
        /// The transaction.
        txn: TxnId,
    },
    /// Two prepared transactions hold conflicting locks on `key`: both keep it (the lock
    /// table records both holders), so no new transaction can take the key until both
    /// are decided. Refusing either lock would let a new transaction in between a
    /// prepared write and its commit.
    #[error("prepared transactions {txn} and another hold conflicting locks on {key}")]
    ConflictingPreparedLocks {
        /// The transaction whose locks conflicted.
        txn: TxnId,
        /// The key.
        key: Key,
    },
}
