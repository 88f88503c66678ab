//! Services as participants: the [`Participant`] trait a service implements so that its
//! own data takes part in dtx transactions (see `docs/participants.md` for the contract).
//!
//! A data node whose resource is a participant asks it to prepare a transaction's
//! operations, takes its answer as the RM's vote, and after the decision asks it to commit
//! or roll back until it acknowledges. Implementations:
//! - a service's own type (the embedded way: the service hosts the data node);
//! - `http`: a service anywhere, reached through the HTTP contract (the sidecar);
//! - `tcc`: try-confirm-cancel reservations built from three business functions;
//! - `compensation`: resources that cannot hold a tentative state (act now, undo later).

pub mod compensation;
pub mod http;
pub mod journal;
pub mod memory;
pub mod postgres;
pub mod tcc;

use dtx_protocol::{Operation, Outcome, TxnId};
use futures::future::BoxFuture;

/// What a participant answers to prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareAnswer {
    /// The tentative change is durable and holds what it needs until commit or rollback.
    Prepared,
    /// Refused; the participant holds nothing for the transaction. The reason reaches the
    /// client (cut to [`dtx_protocol::REFUSAL_TEXT_MAX_BYTES`]).
    Refused {
        /// Why, in the service's own words.
        reason: String,
    },
}

/// A participant could not answer now (it is down, slow, or answered nonsense): the node
/// asks again later. Never a refusal: a refusal is [`PrepareAnswer::Refused`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("participant unavailable: {detail}")]
pub struct ParticipantError {
    /// What went wrong, for the operator.
    pub detail: String,
}

impl ParticipantError {
    /// An error saying `detail`.
    pub fn new(detail: impl Into<String>) -> ParticipantError {
        ParticipantError {
            detail: detail.into(),
        }
    }
}

/// A service's data as the resource of a dtx data node. Every method is idempotent by
/// transaction id, and may be called again after any failure or crash:
/// - `prepare` of a transaction already prepared answers the same again; of one already
///   rolled back (or committed) answers `Refused`;
/// - `finish` may repeat; rolling back an unknown transaction succeeds and is remembered,
///   so that a later `prepare` of it is refused (no hanging reservation);
/// - `prepared` lists every transaction prepared and not yet finished.
pub trait Participant: Send + Sync + 'static {
    /// Make `operations` of `txn` a durable tentative change, or refuse.
    fn prepare<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<PrepareAnswer, ParticipantError>>;

    /// Make `txn`'s outcome final: commit its prepared change, or roll it back.
    fn finish(&self, txn: TxnId, outcome: Outcome) -> BoxFuture<'_, Result<(), ParticipantError>>;

    /// Every transaction prepared and not finished.
    fn prepared(&self) -> BoxFuture<'_, Result<Vec<TxnId>, ParticipantError>>;
}
