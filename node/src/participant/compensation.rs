//! Compensation: a participant for resources that cannot hold a tentative state (send a
//! message, charge a card through an outside API). The effect happens at prepare and is
//! undone by a second, compensating action at rollback; commit does nothing.
//!
//! A service author implements [`CompensableService`] (`act`, `compensate`) and wraps it in
//! [`Compensation::open`]. The bookkeeping is the try-confirm-cancel adapter's
//! ([`super::tcc`]): `act` plays `reserve`, `compensate` plays `cancel`, and `confirm` is
//! nothing. Its journal therefore uses the TCC state names (`reserving` = acting,
//! `reserved` = acted, `confirmed` = kept, `cancelled` = compensated or never acted), and
//! gives the same guarantees: idempotency by transaction id, rollback of an unknown
//! transaction remembered so a late prepare is refused without acting, repeated commit or
//! rollback a no-op, and the crash-safety argument of [`super::tcc`] word for word.
//! `act` and `compensate` must be idempotent by transaction id (an outside API's
//! idempotency key set to the transaction id does it), and `compensate` must succeed for
//! a transaction that never acted.
//!
//! # What this mode gives up
//! Isolation and atomic visibility. A Prepared vote here means "done, and undoable", not
//! "held":
//! - others see the effect before the outcome: the message is sent, the money moved, at
//!   prepare, while the transaction may still abort;
//! - an aborted transaction's effect stays visible until its compensation ran, and the
//!   compensation is a new effect, not an erasure (a cancellation message after the
//!   message, a refund after the charge);
//! - a compensation may itself fail (the outside API is down); the data node retries
//!   rollback until it succeeds, so it happens eventually, not at once;
//! - there is no atomic moment at which all the transaction's effects appear together,
//!   even when it commits.
//!
//! Atomicity of the outcome is kept: every participant still ends committed exactly when
//! the transaction committed (Paxos Commit decides; a compensated effect counts as rolled
//! back). Use it only where the effect and its compensation are acceptable to an outside
//! observer in that order; prefer [`super::tcc`] wherever the resource can hold a
//! reservation.

use super::journal::{JournalOpenError, JournalOptions};
use super::tcc::{ReserveAnswer, Tcc, TccService, TccState};
use super::{Participant, ParticipantError, PrepareAnswer};
use dtx_protocol::{Operation, Outcome, TxnId};
use futures::future::BoxFuture;
use std::path::Path;

/// What `act` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActAnswer {
    /// The effect happened (and can be compensated).
    Acted,
    /// Refused; no effect happened. The reason reaches the client.
    Refused {
        /// Why, in the service's own words.
        reason: String,
    },
}

/// The two business functions of a compensable service, each idempotent by transaction id.
pub trait CompensableService: Send + Sync + 'static {
    /// Do what `operations` say for `txn`, now, or refuse and do nothing. `Err` means
    /// "cannot answer now": whether it acted is unknown, so it may be asked again (act must
    /// then not act twice) or compensated.
    fn act<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<ActAnswer, ParticipantError>>;

    /// Undo `txn`'s effect with a compensating action (possibly nothing, if it never
    /// acted). Called again until it returns `Ok`.
    fn compensate(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>>;
}

/// Where a transaction stands in a compensation participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompensationState {
    /// `act` was called and has not answered durably (it may have acted).
    Acting,
    /// The effect happened; the outcome is not known yet.
    Acted,
    /// `act` refused; no effect.
    Refused {
        /// The service's reason.
        reason: String,
    },
    /// Committed: the effect stays.
    Kept,
    /// Rolled back: compensated, or it never acted.
    Compensated,
}

/// A compensation participant: a [`CompensableService`] plus its journal.
pub struct Compensation<S: CompensableService> {
    inner: Tcc<AsTcc<S>>,
}

/// A compensable service seen as a TCC one: act reserves, compensate cancels, confirm is
/// nothing.
struct AsTcc<S>(S);

impl<S: CompensableService> TccService for AsTcc<S> {
    fn reserve<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<ReserveAnswer, ParticipantError>> {
        Box::pin(async move {
            Ok(match self.0.act(txn, operations).await? {
                ActAnswer::Acted => ReserveAnswer::Reserved,
                ActAnswer::Refused { reason } => ReserveAnswer::Refused { reason },
            })
        })
    }

    fn confirm(&self, _txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
        Box::pin(async { Ok(()) })
    }

    fn cancel(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
        self.0.compensate(txn)
    }
}

impl<S: CompensableService> Compensation<S> {
    /// Opens (or creates) the journal in `journal_directory` (one directory per
    /// participant) with the default bounds, and wraps `service`. Blocking file I/O: call
    /// it at startup.
    pub fn open(
        journal_directory: impl AsRef<Path>,
        service: S,
    ) -> Result<Compensation<S>, JournalOpenError> {
        Compensation::open_with(journal_directory, service, JournalOptions::default())
    }

    /// [`Compensation::open`] with explicit journal bounds.
    pub fn open_with(
        journal_directory: impl AsRef<Path>,
        service: S,
        options: JournalOptions,
    ) -> Result<Compensation<S>, JournalOpenError> {
        Ok(Compensation {
            inner: Tcc::open_with(journal_directory, AsTcc(service), options)?,
        })
    }

    /// The wrapped service.
    pub fn service(&self) -> &S {
        &self.inner.service().0
    }

    /// `txn`'s state, if remembered.
    pub fn state(&self, txn: TxnId) -> Result<Option<CompensationState>, ParticipantError> {
        Ok(self.inner.state(txn)?.map(|state| match state {
            TccState::Reserving => CompensationState::Acting,
            TccState::Reserved => CompensationState::Acted,
            TccState::Refused { reason } => CompensationState::Refused { reason },
            TccState::Confirmed => CompensationState::Kept,
            TccState::Cancelled => CompensationState::Compensated,
        }))
    }
}

impl<S: CompensableService> Participant for Compensation<S> {
    /// Acts now (see the module docs for what that gives up).
    fn prepare<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<PrepareAnswer, ParticipantError>> {
        self.inner.prepare(txn, operations)
    }

    /// Commit keeps the effect (records it, calls nothing); rollback compensates.
    fn finish(&self, txn: TxnId, outcome: Outcome) -> BoxFuture<'_, Result<(), ParticipantError>> {
        self.inner.finish(txn, outcome)
    }

    /// Acted and acting transactions (see [`Tcc`]'s `prepared`).
    fn prepared(&self) -> BoxFuture<'_, Result<Vec<TxnId>, ParticipantError>> {
        self.inner.prepared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participant::journal::tests::{test_directory, txn};
    use dtx_protocol::{Key, Value};
    use std::sync::{Arc, Mutex};

    /// An outbox of sent messages: acting sends, compensating sends a retraction.
    #[derive(Default)]
    struct Outbox {
        sent: Mutex<Vec<String>>,
    }

    impl Outbox {
        fn sent(&self) -> Vec<String> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl CompensableService for Arc<Outbox> {
        fn act<'a>(
            &'a self,
            txn: TxnId,
            operations: &'a [Operation],
        ) -> BoxFuture<'a, Result<ActAnswer, ParticipantError>> {
            Box::pin(async move {
                if operations.is_empty() {
                    return Ok(ActAnswer::Refused {
                        reason: "nothing to send".to_string(),
                    });
                }
                self.sent.lock().unwrap().push(format!("send {txn}"));
                Ok(ActAnswer::Acted)
            })
        }

        fn compensate(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
            Box::pin(async move {
                self.sent.lock().unwrap().push(format!("retract {txn}"));
                Ok(())
            })
        }
    }

    fn operations() -> Vec<Operation> {
        vec![Operation::Call {
            target: Key::new("mail/alice"),
            action: "send".to_string(),
            args: Value::new(br#"{"text":"booked"}"#.to_vec()),
        }]
    }

    #[tokio::test]
    async fn the_effect_happens_at_prepare_stays_at_commit_and_is_compensated_at_rollback() {
        let directory = test_directory("compensation-flow");
        let outbox = Arc::new(Outbox::default());
        let participant = Compensation::open(&directory, Arc::clone(&outbox)).unwrap();
        let operations = operations();
        assert_eq!(
            participant.prepare(txn(1), &operations).await,
            Ok(PrepareAnswer::Prepared)
        );
        assert_eq!(
            participant.prepare(txn(2), &operations).await,
            Ok(PrepareAnswer::Prepared)
        );
        // Visible before the outcome: what this mode gives up.
        assert_eq!(outbox.sent(), vec!["send t7.1", "send t7.2"]);
        participant.finish(txn(1), Outcome::Commit).await.unwrap();
        participant.finish(txn(2), Outcome::Abort).await.unwrap();
        // Repeats, across a restart, do nothing more.
        drop(participant);
        let participant = Compensation::open(&directory, Arc::clone(&outbox)).unwrap();
        participant.prepare(txn(1), &operations).await.unwrap();
        participant.finish(txn(1), Outcome::Commit).await.unwrap();
        participant.finish(txn(2), Outcome::Abort).await.unwrap();
        assert_eq!(
            outbox.sent(),
            vec!["send t7.1", "send t7.2", "retract t7.2"]
        );
        assert_eq!(participant.state(txn(1)), Ok(Some(CompensationState::Kept)));
        assert_eq!(
            participant.state(txn(2)),
            Ok(Some(CompensationState::Compensated))
        );
        assert_eq!(participant.prepared().await, Ok(vec![]));
    }

    #[tokio::test]
    async fn rollback_before_prepare_means_the_late_prepare_never_acts() {
        let directory = test_directory("compensation-hanging");
        let outbox = Arc::new(Outbox::default());
        let participant = Compensation::open(&directory, Arc::clone(&outbox)).unwrap();
        participant.finish(txn(1), Outcome::Abort).await.unwrap();
        drop(participant);
        let participant = Compensation::open(&directory, Arc::clone(&outbox)).unwrap();
        let answer = participant.prepare(txn(1), &operations()).await.unwrap();
        assert!(
            matches!(answer, PrepareAnswer::Refused { .. }),
            "{answer:?}"
        );
        assert_eq!(outbox.sent(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_refused_act_has_no_effect_and_nothing_to_compensate() {
        let directory = test_directory("compensation-refuse");
        let outbox = Arc::new(Outbox::default());
        let participant = Compensation::open(&directory, Arc::clone(&outbox)).unwrap();
        assert_eq!(
            participant.prepare(txn(1), &[]).await,
            Ok(PrepareAnswer::Refused {
                reason: "nothing to send".to_string()
            })
        );
        participant.finish(txn(1), Outcome::Abort).await.unwrap();
        assert_eq!(outbox.sent(), Vec::<String>::new());
    }
}
