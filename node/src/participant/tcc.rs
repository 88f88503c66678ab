//! Try-confirm-cancel: a participant built from three business functions.
//!
//! A service author implements [`TccService`] (`reserve`, `confirm`, `cancel`) and wraps it
//! in [`Tcc::open`], which implements [`Participant`] and keeps all the bookkeeping in a
//! [`Journal`]: idempotency by transaction id, anti-hanging, and the list of prepared
//! transactions. No coordinator is involved: the data node hosting the participant asks
//! it to prepare (reserve), takes the answer as its RM's vote, and after the decision
//! reached through the acceptors asks it to commit (confirm) or roll back (cancel).
//!
//! # What the business functions must do
//! - `reserve(txn, operations)`: hold what the operations need (seats, stock, credit) for
//!   `txn`, durably, so that a later `confirm` cannot fail for lack of it; or refuse and
//!   hold nothing. **Idempotent by `txn`**: after a crash the adapter may call it again for
//!   the same transaction (its journal says a reserve was started, not whether it
//!   finished); a second call must not reserve twice.
//! - `confirm(txn)`: make the reservation final. Idempotent by `txn`; it may be called
//!   again after a crash. It must not fail for lack of resources (that is what the
//!   reservation is for); an error means "not now" and it is called again until it
//!   succeeds.
//! - `cancel(txn)`: release the reservation. Idempotent by `txn`, and it must succeed for a
//!   transaction it holds nothing for (a reserve that never happened, or happened only in
//!   part before a crash, or was refused).
//!
//! # The bookkeeping (states in the journal)
//! `Reserving` → `Reserved` | `Refused` → `Confirmed` | `Cancelled`:
//! - prepare of an unknown transaction records `Reserving`, then calls `reserve`, then
//!   records `Reserved` (answers Prepared) or `Refused` (answers Refused with the reason);
//! - prepare of a `Reserved` one answers Prepared again without calling `reserve`; of a
//!   `Refused` one the same refusal; of a `Cancelled` or `Confirmed` one Refused, without
//!   calling `reserve` (anti-hanging: a prepare that arrives after its rollback holds
//!   nothing);
//! - rollback of an unknown (or `Refused`) transaction records `Cancelled` without calling
//!   `cancel` (nothing was reserved) and is remembered, so a late prepare is refused;
//!   of a `Reserving` or `Reserved` one calls `cancel`, then records `Cancelled`;
//! - commit of a `Reserved` one calls `confirm`, then records `Confirmed`;
//! - a repeated commit or rollback of a finished transaction is a no-op.
//!
//! # Crash safety: each journal write against each business call
//! - Crash after `Reserving` is durable, during or after `reserve`: the reservation may
//!   exist, and Prepared was never answered (it is answered only once `Reserved` is
//!   durable), so the RM cannot have voted Prepared and the transaction cannot commit
//!   here. [`Participant::prepared`] lists `Reserving` transactions, so the restarted
//!   node rolls them back (it has no durable vote for them), and rollback calls `cancel`.
//!   A repeated prepare instead calls `reserve` again, which is idempotent.
//! - Crash after `reserve` refused and before `Refused` is durable: `Reserving` remains;
//!   as above (a `cancel` of nothing succeeds).
//! - Crash after `confirm` and before `Confirmed` is durable: `Reserved` remains and is
//!   listed as prepared; the node knows the outcome and commits again: `confirm` again.
//! - Crash after `cancel` and before `Cancelled` is durable: the same with `cancel`.
//! - Crash after `Cancelled` (or `Confirmed`) is durable: a repeat is a no-op.
//!
//! # Example
//! ```no_run
//! use dtx_node::participant::tcc::{ReserveAnswer, Tcc, TccService};
//! use dtx_node::participant::{Participant, ParticipantError};
//! use dtx_protocol::{Operation, TxnId};
//! use futures::future::BoxFuture;
//!
//! /// Seats of one flight, kept in the service's own database (here: elided).
//! struct Seats;
//!
//! impl TccService for Seats {
//!     fn reserve<'a>(
//!         &'a self,
//!         txn: TxnId,
//!         operations: &'a [Operation],
//!     ) -> BoxFuture<'a, Result<ReserveAnswer, ParticipantError>> {
//!         // INSERT INTO holds (txn, seat) ... ON CONFLICT (txn) DO NOTHING, or refuse.
//!         Box::pin(async move { Ok(ReserveAnswer::Reserved) })
//!     }
//!     fn confirm(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
//!         // UPDATE holds SET confirmed = true WHERE txn = $1
//!         Box::pin(async move { Ok(()) })
//!     }
//!     fn cancel(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
//!         // DELETE FROM holds WHERE txn = $1 AND NOT confirmed
//!         Box::pin(async move { Ok(()) })
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let participant = Tcc::open("/var/lib/flights/dtx-journal", Seats)?;
//! // Hand `participant` to the data node as its resource.
//! # let _: &dyn Participant = &participant;
//! # Ok(())
//! # }
//! ```
//!
//! The journal is shared by every transaction; calls about one transaction are
//! serialized (at most [`CALLS_IN_FLIGHT_MAX`] transactions at once), calls about
//! different ones run concurrently, and each journal write (an fsync) runs on tokio's
//! blocking pool.

use super::journal::{Journal, JournalOpenError, JournalOptions, JournalRecordError, JournalState};
use super::{Participant, ParticipantError, PrepareAnswer};
use dtx_protocol::{cut_text, Operation, Outcome, TxnId, REFUSAL_TEXT_MAX_BYTES};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Most transactions with a call in progress at once; one more is answered
/// [`ParticipantError`] (the node asks again later).
pub const CALLS_IN_FLIGHT_MAX: usize = 10_000;

/// What `reserve` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReserveAnswer {
    /// Held, durably, until confirm or cancel.
    Reserved,
    /// Refused; nothing is held. The reason reaches the client (cut to
    /// [`REFUSAL_TEXT_MAX_BYTES`]).
    Refused {
        /// Why, in the service's own words (e.g. "no seats left on LH400").
        reason: String,
    },
}

/// The three business functions of a try-confirm-cancel service. Each is idempotent by
/// transaction id (see the module docs for what each must guarantee).
pub trait TccService: Send + Sync + 'static {
    /// Hold what `operations` need for `txn`, durably, or refuse and hold nothing.
    /// `Err` means "cannot answer now" (the call may come again, or a cancel).
    fn reserve<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<ReserveAnswer, ParticipantError>>;

    /// Make `txn`'s reservation final. Called again until it returns `Ok`.
    fn confirm(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>>;

    /// Release whatever is held for `txn` (possibly nothing). Called again until it
    /// returns `Ok`.
    fn cancel(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>>;
}

/// A transaction's state in a TCC journal (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TccState {
    /// `reserve` was called (or is about to be) and has not answered durably.
    Reserving,
    /// `reserve` answered Reserved; Prepared was (or may have been) answered.
    Reserved,
    /// `reserve` refused; nothing is held.
    Refused {
        /// The service's reason, cut to [`REFUSAL_TEXT_MAX_BYTES`].
        reason: String,
    },
    /// Committed: `confirm` returned.
    Confirmed,
    /// Rolled back: `cancel` returned, or there was nothing to cancel.
    Cancelled,
}

impl JournalState for TccState {
    fn is_final(&self) -> bool {
        matches!(
            self,
            TccState::Refused { .. } | TccState::Confirmed | TccState::Cancelled
        )
    }
}

/// A try-confirm-cancel participant: a [`TccService`] plus its journal.
pub struct Tcc<S: TccService> {
    service: S,
    journal: Arc<Mutex<Journal<TccState>>>,
    calls: CallLocks,
}

impl<S: TccService> Tcc<S> {
    /// Opens (or creates) the journal in `journal_directory` (one directory per
    /// participant) with the default bounds, and wraps `service`. Blocking file I/O: call
    /// it at startup.
    pub fn open(
        journal_directory: impl AsRef<Path>,
        service: S,
    ) -> Result<Tcc<S>, JournalOpenError> {
        Tcc::open_with(journal_directory, service, JournalOptions::default())
    }

    /// [`Tcc::open`] with explicit journal bounds.
    pub fn open_with(
        journal_directory: impl AsRef<Path>,
        service: S,
        options: JournalOptions,
    ) -> Result<Tcc<S>, JournalOpenError> {
        let journal = Journal::open(journal_directory.as_ref(), options)?;
        Ok(Tcc {
            service,
            journal: Arc::new(Mutex::new(journal)),
            calls: CallLocks::default(),
        })
    }

    /// The wrapped service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// `txn`'s state in the journal, if remembered.
    pub fn state(&self, txn: TxnId) -> Result<Option<TccState>, ParticipantError> {
        let journal = self.journal.lock().map_err(|_| poisoned())?;
        Ok(journal.get(txn).cloned())
    }

    /// How many finished transactions the journal forgot since open (past its bound).
    pub fn forgotten_total(&self) -> Result<u64, ParticipantError> {
        let journal = self.journal.lock().map_err(|_| poisoned())?;
        Ok(journal.forgotten_total())
    }

    /// Records `state` for `txn` durably, on the blocking pool.
    async fn record(&self, txn: TxnId, state: TccState) -> Result<(), RecordFailure> {
        let journal = Arc::clone(&self.journal);
        let written = tokio::task::spawn_blocking(move || {
            let mut journal = journal.lock().map_err(|_| poisoned())?;
            Ok::<_, ParticipantError>(journal.record(txn, state))
        })
        .await
        .map_err(|error| ParticipantError::new(format!("journal write stopped: {error}")))?;
        match written? {
            Ok(()) => Ok(()),
            Err(JournalRecordError::Full { open_max }) => Err(RecordFailure::Full { open_max }),
            Err(error) => Err(RecordFailure::Unavailable(ParticipantError::new(
                error.to_string(),
            ))),
        }
    }

    async fn prepare_serialized(
        &self,
        txn: TxnId,
        operations: &[Operation],
    ) -> Result<PrepareAnswer, ParticipantError> {
        let refused = |reason: String| Ok(PrepareAnswer::Refused { reason });
        match self.state(txn)? {
            Some(TccState::Reserved) => return Ok(PrepareAnswer::Prepared),
            Some(TccState::Refused { reason }) => return refused(reason),
            Some(TccState::Cancelled) => {
                return refused(format!("{txn} was already rolled back at this participant"))
            }
            Some(TccState::Confirmed) => {
                return refused(format!("{txn} was already committed at this participant"))
            }
            // A reserve started before (and interrupted by an error or a crash): call it
            // again, it is idempotent.
            Some(TccState::Reserving) => {}
            None => match self.record(txn, TccState::Reserving).await {
                Ok(()) => {}
                Err(RecordFailure::Full { open_max }) => {
                    return refused(format!(
                        "participant busy: {open_max} transactions already open"
                    ))
                }
                Err(RecordFailure::Unavailable(error)) => return Err(error),
            },
        }
        // `Reserving` is durable: a crash from here on leaves a transaction that
        // `prepared()` lists, so the node rolls it back (cancel) unless asked again.
        let (state, answer) = match self.service.reserve(txn, operations).await? {
            ReserveAnswer::Reserved => (TccState::Reserved, PrepareAnswer::Prepared),
            ReserveAnswer::Refused { reason } => {
                let reason = cut_text(&reason, REFUSAL_TEXT_MAX_BYTES);
                (
                    TccState::Refused {
                        reason: reason.clone(),
                    },
                    PrepareAnswer::Refused { reason },
                )
            }
        };
        // Only once this is durable may the node hear Prepared (it then votes Prepared).
        self.record(txn, state)
            .await
            .map_err(RecordFailure::into_error)?;
        Ok(answer)
    }

    async fn commit_serialized(&self, txn: TxnId) -> Result<(), ParticipantError> {
        match self.state(txn)? {
            Some(TccState::Reserved) => {
                self.service.confirm(txn).await?;
                self.record(txn, TccState::Confirmed)
                    .await
                    .map_err(RecordFailure::into_error)
            }
            Some(TccState::Confirmed) => Ok(()),
            None => {
                // Confirmed long ago and forgotten past the journal's bound (a commit is
                // only ever sent after Prepared, which left a record).
                tracing::warn!(%txn, "TCC participant: commit of a transaction it does not remember");
                Ok(())
            }
            Some(state) => Err(ParticipantError::new(format!(
                "contract broken: commit of {txn}, which this participant never prepared \
                 (state {state:?})"
            ))),
        }
    }

    async fn rollback_serialized(&self, txn: TxnId) -> Result<(), ParticipantError> {
        match self.state(txn)? {
            Some(TccState::Cancelled) => Ok(()),
            // Nothing was reserved; remembered so that a late prepare is refused.
            None | Some(TccState::Refused { .. }) => self
                .record(txn, TccState::Cancelled)
                .await
                .map_err(RecordFailure::into_error),
            Some(TccState::Reserving | TccState::Reserved) => {
                self.service.cancel(txn).await?;
                self.record(txn, TccState::Cancelled)
                    .await
                    .map_err(RecordFailure::into_error)
            }
            Some(TccState::Confirmed) => Err(ParticipantError::new(format!(
                "contract broken: rollback of {txn}, which this participant committed"
            ))),
        }
    }
}

impl<S: TccService> Participant for Tcc<S> {
    fn prepare<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<PrepareAnswer, ParticipantError>> {
        Box::pin(async move {
            let _serialized = self.calls.lock(txn).await?;
            self.prepare_serialized(txn, operations).await
        })
    }

    fn finish(&self, txn: TxnId, outcome: Outcome) -> BoxFuture<'_, Result<(), ParticipantError>> {
        Box::pin(async move {
            let _serialized = self.calls.lock(txn).await?;
            match outcome {
                Outcome::Commit => self.commit_serialized(txn).await,
                Outcome::Abort => self.rollback_serialized(txn).await,
            }
        })
    }

    /// `Reserved` and `Reserving` transactions: a `Reserving` one may hold a reservation
    /// made just before a crash, and listing it is how the restarted node rolls it back
    /// (it holds no vote for it, since Prepared was never answered). Asked when the node
    /// starts, when no call is in progress.
    fn prepared(&self) -> BoxFuture<'_, Result<Vec<TxnId>, ParticipantError>> {
        Box::pin(async move {
            let journal = self.journal.lock().map_err(|_| poisoned())?;
            Ok(journal
                .open_transactions()
                .into_iter()
                .map(|(txn, _)| txn)
                .collect())
        })
    }
}

/// Why a journal write did not happen.
enum RecordFailure {
    /// The journal's bound on open transactions.
    Full { open_max: usize },
    /// Anything else: the node asks again later.
    Unavailable(ParticipantError),
}

impl RecordFailure {
    /// For writes that never open a transaction (so `Full` cannot happen).
    fn into_error(self) -> ParticipantError {
        match self {
            RecordFailure::Full { open_max } => {
                ParticipantError::new(format!("journal full: {open_max} transactions open"))
            }
            RecordFailure::Unavailable(error) => error,
        }
    }
}

impl From<ParticipantError> for RecordFailure {
    fn from(error: ParticipantError) -> RecordFailure {
        RecordFailure::Unavailable(error)
    }
}

/// The journal's mutex was poisoned by a panic while held.
fn poisoned() -> ParticipantError {
    ParticipantError::new("participant journal unusable: a panic happened while it was held")
}

/// One async lock per transaction with a call in progress, so that two calls about the
/// same transaction never interleave their journal reads, business calls and writes.
#[derive(Default)]
struct CallLocks {
    locks: Mutex<BTreeMap<TxnId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a call about one transaction runs; drops its lock when the last one ends.
struct CallGuard<'a> {
    calls: &'a CallLocks,
    txn: TxnId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl CallLocks {
    async fn lock(&self, txn: TxnId) -> Result<CallGuard<'_>, ParticipantError> {
        let lock = {
            let mut locks = self.locks.lock().map_err(|_| poisoned())?;
            if !locks.contains_key(&txn) && locks.len() >= CALLS_IN_FLIGHT_MAX {
                return Err(ParticipantError::new(format!(
                    "participant busy: {CALLS_IN_FLIGHT_MAX} transactions with calls in progress"
                )));
            }
            Arc::clone(locks.entry(txn).or_default())
        };
        Ok(CallGuard {
            calls: self,
            txn,
            guard: Some(lock.lock_owned().await),
        })
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        if let Ok(mut locks) = self.calls.locks.lock() {
            // Clones are taken under this mutex, so a count of one (the map's) means no
            // call holds or waits for this lock.
            if locks
                .get(&self.txn)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                locks.remove(&self.txn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participant::journal::tests::{test_directory, txn};
    use dtx_protocol::{Key, Value};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A seat inventory that counts every business call, so tests see what was called.
    #[derive(Default)]
    struct Seats {
        calls: Mutex<Vec<(&'static str, TxnId)>>,
        refuse: AtomicBool,
        fail: AtomicBool,
    }

    impl Seats {
        fn calls(&self) -> Vec<(&'static str, TxnId)> {
            self.calls.lock().unwrap().clone()
        }

        fn note(&self, name: &'static str, txn: TxnId) -> Result<(), ParticipantError> {
            self.calls.lock().unwrap().push((name, txn));
            if self.fail.load(Ordering::SeqCst) {
                return Err(ParticipantError::new("seat service down"));
            }
            Ok(())
        }
    }

    impl TccService for Arc<Seats> {
        fn reserve<'a>(
            &'a self,
            txn: TxnId,
            _operations: &'a [Operation],
        ) -> BoxFuture<'a, Result<ReserveAnswer, ParticipantError>> {
            Box::pin(async move {
                self.note("reserve", txn)?;
                if self.refuse.load(Ordering::SeqCst) {
                    return Ok(ReserveAnswer::Refused {
                        reason: "no seats left on LH400".to_string(),
                    });
                }
                Ok(ReserveAnswer::Reserved)
            })
        }

        fn confirm(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
            Box::pin(async move { self.note("confirm", txn) })
        }

        fn cancel(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
            Box::pin(async move { self.note("cancel", txn) })
        }
    }

    fn operations() -> Vec<Operation> {
        vec![Operation::Call {
            target: Key::new("flights/LH400"),
            action: "reserve".to_string(),
            args: Value::new(br#"{"seats":1}"#.to_vec()),
        }]
    }

    fn open(directory: &Path, seats: &Arc<Seats>) -> Tcc<Arc<Seats>> {
        Tcc::open(directory, Arc::clone(seats)).unwrap()
    }

    #[tokio::test]
    async fn a_repeated_prepare_answers_prepared_without_reserving_twice() {
        let directory = test_directory("tcc-repeat");
        let seats = Arc::new(Seats::default());
        let tcc = open(&directory, &seats);
        let operations = operations();
        for _ in 0..3 {
            assert_eq!(
                tcc.prepare(txn(1), &operations).await,
                Ok(PrepareAnswer::Prepared)
            );
        }
        assert_eq!(seats.calls(), vec![("reserve", txn(1))]);
        assert_eq!(tcc.prepared().await, Ok(vec![txn(1)]));
        // After a restart too.
        drop(tcc);
        let tcc = open(&directory, &seats);
        assert_eq!(
            tcc.prepare(txn(1), &operations).await,
            Ok(PrepareAnswer::Prepared)
        );
        assert_eq!(seats.calls(), vec![("reserve", txn(1))]);
    }

    #[tokio::test]
    async fn rollback_before_prepare_is_remembered_and_the_late_prepare_is_refused() {
        let directory = test_directory("tcc-hanging");
        let seats = Arc::new(Seats::default());
        let tcc = open(&directory, &seats);
        assert_eq!(tcc.finish(txn(1), Outcome::Abort).await, Ok(()));
        // Remembered across a restart, and nothing was cancelled (nothing was reserved).
        drop(tcc);
        let tcc = open(&directory, &seats);
        let answer = tcc.prepare(txn(1), &operations()).await.unwrap();
        assert!(
            matches!(answer, PrepareAnswer::Refused { .. }),
            "{answer:?}"
        );
        assert!(seats.calls().is_empty());
        assert_eq!(tcc.prepared().await, Ok(vec![]));
    }

    #[tokio::test]
    async fn commit_and_rollback_repeated_call_the_business_function_once() {
        let directory = test_directory("tcc-finish-repeat");
        let seats = Arc::new(Seats::default());
        let tcc = open(&directory, &seats);
        let operations = operations();
        tcc.prepare(txn(1), &operations).await.unwrap();
        tcc.prepare(txn(2), &operations).await.unwrap();
        for _ in 0..3 {
            assert_eq!(tcc.finish(txn(1), Outcome::Commit).await, Ok(()));
            assert_eq!(tcc.finish(txn(2), Outcome::Abort).await, Ok(()));
        }
        drop(tcc);
        let tcc = open(&directory, &seats);
        assert_eq!(tcc.finish(txn(1), Outcome::Commit).await, Ok(()));
        assert_eq!(tcc.finish(txn(2), Outcome::Abort).await, Ok(()));
        assert_eq!(
            seats.calls(),
            vec![
                ("reserve", txn(1)),
                ("reserve", txn(2)),
                ("confirm", txn(1)),
                ("cancel", txn(2)),
            ]
        );
        assert_eq!(tcc.prepared().await, Ok(vec![]));
        // A finished transaction is never prepared again.
        for sequence in [1, 2] {
            let answer = tcc.prepare(txn(sequence), &operations).await.unwrap();
            assert!(
                matches!(answer, PrepareAnswer::Refused { .. }),
                "{answer:?}"
            );
        }
        // And the contradicting outcome is an error, never silently accepted.
        assert!(tcc.finish(txn(1), Outcome::Abort).await.is_err());
        assert!(tcc.finish(txn(2), Outcome::Commit).await.is_err());
    }

    #[tokio::test]
    async fn a_refusal_reaches_the_node_holds_nothing_and_is_answered_again() {
        let directory = test_directory("tcc-refuse");
        let seats = Arc::new(Seats::default());
        seats.refuse.store(true, Ordering::SeqCst);
        let tcc = open(&directory, &seats);
        let refusal = PrepareAnswer::Refused {
            reason: "no seats left on LH400".to_string(),
        };
        assert_eq!(
            tcc.prepare(txn(1), &operations()).await,
            Ok(refusal.clone())
        );
        seats.refuse.store(false, Ordering::SeqCst);
        assert_eq!(tcc.prepare(txn(1), &operations()).await, Ok(refusal));
        assert_eq!(tcc.prepared().await, Ok(vec![]));
        assert_eq!(tcc.finish(txn(1), Outcome::Abort).await, Ok(()));
        assert_eq!(seats.calls(), vec![("reserve", txn(1))]);
    }

    #[tokio::test]
    async fn an_unavailable_reserve_is_an_error_then_cancelled_by_the_rollback() {
        let directory = test_directory("tcc-unavailable");
        let seats = Arc::new(Seats::default());
        seats.fail.store(true, Ordering::SeqCst);
        let tcc = open(&directory, &seats);
        assert!(tcc.prepare(txn(1), &operations()).await.is_err());
        // It may have reserved something: listed, so that a restarted node rolls it back.
        assert_eq!(tcc.prepared().await, Ok(vec![txn(1)]));
        assert!(tcc.finish(txn(1), Outcome::Abort).await.is_err());
        seats.fail.store(false, Ordering::SeqCst);
        assert_eq!(tcc.finish(txn(1), Outcome::Abort).await, Ok(()));
        assert_eq!(tcc.state(txn(1)), Ok(Some(TccState::Cancelled)));
        assert_eq!(
            seats.calls(),
            vec![("reserve", txn(1)), ("cancel", txn(1)), ("cancel", txn(1))]
        );
    }

    /// A crash between any two steps, modelled by dropping the adapter after writing the
    /// journal state a crash would leave, then reopening: every such state ends where the
    /// decided outcome says, through the node's restart rule (roll back what is listed
    /// and has no vote; finish what is decided).
    #[tokio::test]
    async fn a_crash_at_every_step_ends_committed_or_rolled_back_as_decided() {
        let steps: [(&str, Option<TccState>, Outcome); 6] = [
            ("nothing", None, Outcome::Abort),
            ("reserving", Some(TccState::Reserving), Outcome::Abort),
            ("reserved-commit", Some(TccState::Reserved), Outcome::Commit),
            ("reserved-abort", Some(TccState::Reserved), Outcome::Abort),
            ("confirmed", Some(TccState::Confirmed), Outcome::Commit),
            ("cancelled", Some(TccState::Cancelled), Outcome::Abort),
        ];
        for (name, left, outcome) in steps {
            let directory = test_directory(&format!("tcc-crash-{name}"));
            let seats = Arc::new(Seats::default());
            {
                let tcc = open(&directory, &seats);
                if let Some(state) = left.clone() {
                    if state == TccState::Confirmed || state == TccState::Cancelled {
                        tcc.record(txn(1), TccState::Reserved).await.ok().unwrap();
                    }
                    tcc.record(txn(1), state).await.ok().unwrap();
                }
            }
            let tcc = open(&directory, &seats);
            let listed = tcc.prepared().await.unwrap();
            let expect_listed = matches!(left, Some(TccState::Reserving | TccState::Reserved));
            assert_eq!(listed.contains(&txn(1)), expect_listed, "{name}");
            // The node finishes what is listed (a Reserving one can only be rolled back)
            // and repeats finish calls at will.
            for _ in 0..2 {
                assert_eq!(tcc.finish(txn(1), outcome).await, Ok(()), "{name}");
            }
            assert_eq!(tcc.prepared().await, Ok(vec![]), "{name}");
            let end = tcc.state(txn(1)).unwrap();
            match outcome {
                Outcome::Commit => assert_eq!(end, Some(TccState::Confirmed), "{name}"),
                Outcome::Abort => assert_eq!(end, Some(TccState::Cancelled), "{name}"),
            }
            let business: Vec<&str> = seats.calls().iter().map(|(call, _)| *call).collect();
            let expected: &[&str] = match name {
                "reserving" | "reserved-abort" => &["cancel"],
                "reserved-commit" => &["confirm"],
                _ => &[],
            };
            assert_eq!(business, expected, "{name}");
            // A late prepare after the end never reserves.
            let answer = tcc.prepare(txn(1), &operations()).await.unwrap();
            assert!(matches!(answer, PrepareAnswer::Refused { .. }), "{name}");
            assert_eq!(seats.calls().len(), expected.len(), "{name}");
        }
    }

    /// A flight with seats, idempotent by transaction id as the contract asks, that can
    /// "crash" right after a business function took effect: it returns an error, and the
    /// test drops the adapter before the journal hears of the effect.
    struct Flight {
        seats_free: Mutex<u64>,
        holds: Mutex<BTreeMap<TxnId, bool>>,
        crash_after: Mutex<Option<&'static str>>,
    }

    impl Flight {
        fn new(seats: u64) -> Flight {
            Flight {
                seats_free: Mutex::new(seats),
                holds: Mutex::new(BTreeMap::new()),
                crash_after: Mutex::new(None),
            }
        }

        /// Took effect; crashes now if asked to crash after `function`.
        fn after(&self, function: &'static str) -> Result<(), ParticipantError> {
            let mut crash_after = self.crash_after.lock().unwrap();
            if *crash_after == Some(function) {
                *crash_after = None;
                return Err(ParticipantError::new(format!("crash after {function}")));
            }
            Ok(())
        }

        /// (seats free, whether `txn` holds a seat, whether it is confirmed).
        fn seen(&self, txn: TxnId) -> (u64, Option<bool>) {
            let holds = self.holds.lock().unwrap();
            (*self.seats_free.lock().unwrap(), holds.get(&txn).copied())
        }
    }

    impl TccService for Arc<Flight> {
        fn reserve<'a>(
            &'a self,
            txn: TxnId,
            _operations: &'a [Operation],
        ) -> BoxFuture<'a, Result<ReserveAnswer, ParticipantError>> {
            Box::pin(async move {
                {
                    let mut holds = self.holds.lock().unwrap();
                    if let std::collections::btree_map::Entry::Vacant(hold) = holds.entry(txn) {
                        let mut seats_free = self.seats_free.lock().unwrap();
                        if *seats_free == 0 {
                            return Ok(ReserveAnswer::Refused {
                                reason: "no seats left".to_string(),
                            });
                        }
                        *seats_free -= 1;
                        hold.insert(false);
                    }
                }
                self.after("reserve")?;
                Ok(ReserveAnswer::Reserved)
            })
        }

        fn confirm(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
            Box::pin(async move {
                if let Some(confirmed) = self.holds.lock().unwrap().get_mut(&txn) {
                    *confirmed = true;
                }
                self.after("confirm")
            })
        }

        fn cancel(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
            Box::pin(async move {
                let mut holds = self.holds.lock().unwrap();
                if holds.get(&txn) == Some(&false) {
                    holds.remove(&txn);
                    *self.seats_free.lock().unwrap() += 1;
                }
                drop(holds);
                self.after("cancel")
            })
        }
    }

    /// A crash right after each business function took effect and before the journal
    /// recorded it (the window the journal order must make safe): dropping the adapter
    /// and reopening it, then following the node's restart rule (roll back what is listed
    /// prepared and has no vote; finish what is decided, until acknowledged), every run
    /// ends with the seat taken exactly when the transaction committed, nothing held, and
    /// a late prepare refused.
    #[tokio::test]
    async fn a_crash_after_each_business_call_before_its_record_ends_as_decided() {
        let cases: [(Option<&'static str>, Outcome); 6] = [
            (None, Outcome::Commit),
            (None, Outcome::Abort),
            (Some("reserve"), Outcome::Abort),
            (Some("confirm"), Outcome::Commit),
            (Some("cancel"), Outcome::Abort),
            (Some("reserve"), Outcome::Commit),
        ];
        for (index, (crash_after, decided)) in cases.into_iter().enumerate() {
            let name = format!("{crash_after:?} {decided}");
            let directory = test_directory(&format!("tcc-crash-business-{index}"));
            let flight = Arc::new(Flight::new(3));
            *flight.crash_after.lock().unwrap() = crash_after;
            let mut tcc = Tcc::open(&directory, Arc::clone(&flight)).unwrap();
            // The RM's vote is Prepared only if prepare answered Prepared.
            let voted_prepared = match tcc.prepare(txn(1), &operations()).await {
                Ok(PrepareAnswer::Prepared) => true,
                Ok(PrepareAnswer::Refused { .. }) => false,
                Err(_) => {
                    drop(tcc);
                    tcc = Tcc::open(&directory, Arc::clone(&flight)).unwrap();
                    false
                }
            };
            // Without a Prepared vote the transaction can only abort.
            let outcome = if voted_prepared {
                decided
            } else {
                Outcome::Abort
            };
            if !voted_prepared {
                // The restarted node rolls back what is listed and has no vote.
                let listed = tcc.prepared().await.unwrap();
                assert_eq!(listed.contains(&txn(1)), crash_after.is_some(), "{name}");
            }
            let mut attempts = 0;
            while let Err(error) = tcc.finish(txn(1), outcome).await {
                attempts += 1;
                assert!(attempts < 3, "{name}: {error}");
                drop(tcc);
                tcc = Tcc::open(&directory, Arc::clone(&flight)).unwrap();
                assert_eq!(tcc.prepared().await, Ok(vec![txn(1)]), "{name}");
            }
            assert_eq!(tcc.prepared().await, Ok(vec![]), "{name}");
            let expected = match outcome {
                Outcome::Commit => (2, Some(true)),
                Outcome::Abort => (3, None),
            };
            assert_eq!(flight.seen(txn(1)), expected, "{name}");
            let late = tcc.prepare(txn(1), &operations()).await.unwrap();
            assert!(matches!(late, PrepareAnswer::Refused { .. }), "{name}");
            assert_eq!(flight.seen(txn(1)), expected, "{name}");
        }
    }

    #[tokio::test]
    async fn concurrent_duplicate_prepares_reserve_once() {
        let directory = test_directory("tcc-concurrent");
        let seats = Arc::new(Seats::default());
        let tcc = Arc::new(open(&directory, &seats));
        let operations = operations();
        let answers =
            futures::future::join_all((0..8).map(|_| tcc.prepare(txn(1), &operations))).await;
        for answer in answers {
            assert_eq!(answer, Ok(PrepareAnswer::Prepared));
        }
        assert_eq!(seats.calls(), vec![("reserve", txn(1))]);
        assert!(tcc.calls.locks.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_full_journal_refuses_new_prepares_until_one_finishes() {
        let directory = test_directory("tcc-full");
        let seats = Arc::new(Seats::default());
        let options = JournalOptions {
            open_max: 1,
            ..JournalOptions::default()
        };
        let tcc = Tcc::open_with(&directory, Arc::clone(&seats), options).unwrap();
        let operations = operations();
        assert_eq!(
            tcc.prepare(txn(1), &operations).await,
            Ok(PrepareAnswer::Prepared)
        );
        let answer = tcc.prepare(txn(2), &operations).await.unwrap();
        assert!(
            matches!(answer, PrepareAnswer::Refused { .. }),
            "{answer:?}"
        );
        assert_eq!(seats.calls(), vec![("reserve", txn(1))]);
        tcc.finish(txn(1), Outcome::Commit).await.unwrap();
        assert_eq!(
            tcc.prepare(txn(3), &operations).await,
            Ok(PrepareAnswer::Prepared)
        );
    }
}
