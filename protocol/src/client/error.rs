//! The client's errors, one enum per operation: [`BeginError`] for starting a transaction,
//! [`ExecuteError`] for issuing an interactive operation, commit or abort.

use crate::message::Refusal;
use crate::types::{Key, NodeId, TxnId};

/// Why a transaction could not begin.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BeginError {
    /// No operations.
    #[error("a transaction needs at least one operation")]
    Empty,
    /// Too many operations.
    #[error("{count} operations exceed the limit of {limit}")]
    TooManyOperations {
        /// Operations given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many transactions in flight (backpressure).
    #[error("{0} transactions already in flight")]
    TooManyInFlight(usize),
    /// A data node the transaction needs is suspected to have failed: fail fast rather
    /// than lock rows on the others and wait.
    #[error("{node} holds keys of this transaction and is suspected to have failed")]
    ParticipantSuspected {
        /// The suspected data node.
        node: NodeId,
    },
    /// A data node the transaction needs was drained and left the cluster (`dtx drain`):
    /// its keys are unavailable until it is started again.
    #[error("{node} holds keys of this transaction and has left the cluster (drained); start it again to use its keys")]
    ParticipantLeft {
        /// The data node that left.
        node: NodeId,
    },
}

/// Why an interactive operation or commit could not be issued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecuteError {
    /// No interactive transaction with this id is executing (it finished or never began).
    #[error("transaction {0} is not executing")]
    NotExecuting(TxnId),
    /// An operation on the same RM is still outstanding: an RM runs one at a time.
    #[error("an operation of {txn} at {node} is still outstanding")]
    Busy {
        /// The transaction.
        txn: TxnId,
        /// The RM.
        node: NodeId,
    },
    /// Too many operations.
    #[error("{count} operations exceed the limit of {limit}")]
    TooManyOperations {
        /// Operations issued.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The key's owner is suspected to have failed.
    #[error("{node} owns the key and is suspected to have failed")]
    OwnerSuspected {
        /// The suspected data node.
        node: NodeId,
    },
    /// The key's owner was drained and left the cluster.
    #[error(
        "{node} owns the key and has left the cluster (drained); start it again to use its keys"
    )]
    OwnerLeft {
        /// The data node that left.
        node: NodeId,
    },
    /// Only writes can be buffered until commit (a read must run to return its value).
    #[error("only writes can be buffered until commit, not a read of {key}")]
    ReadAtCommit {
        /// The read's key.
        key: Key,
    },
    /// A data node refused to serve this client for this transaction, which has ended
    /// (as [`TxnResult::Refused`]).
    ///
    /// [`TxnResult::Refused`]: super::TxnResult::Refused
    #[error("{0}")]
    Refused(Refusal),
}
