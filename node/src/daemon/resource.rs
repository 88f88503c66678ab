//! The node's external resource at run time: each [`ResourceRequest`] the protocol yields
//! runs as its own task against the [`Participant`], and its answer comes back to the event
//! loop as the node's next input.
//!
//! Each request is tried once here: the node itself asks Finish and ListPrepared again with
//! backoff until answered, so a failure of those is only logged. Prepare is answered exactly
//! once (the participant may retry inside it): prepared, refused (with the service's reason,
//! cut to [`REFUSAL_TEXT_MAX_BYTES`]) or unavailable. A task that panics answers like a
//! participant error, so no prepare is left without a vote.

use crate::participant::{Participant, PrepareAnswer};
use dtx_protocol::{cut_text, AbortReason, Input, Outcome, ResourceRequest, TxnId};
use futures::FutureExt;
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

pub use dtx_protocol::REFUSAL_TEXT_MAX_BYTES;

/// Calls to the participant in flight at once; further requests wait for a place (their
/// number is bounded by the node's own bound on open transactions, and a request already
/// running or waiting is not started twice).
pub const RESOURCE_CALLS_IN_FLIGHT_MAX: usize = 256;

/// Answers queued for the event loop. A task holds its in-flight place until its answer is
/// queued, so this many places never make a task wait for long.
pub const RESOURCE_ANSWERS_QUEUED_MAX: usize = RESOURCE_CALLS_IN_FLIGHT_MAX;

/// Requests running or waiting, by what they ask (a repeat of one is dropped: the node asks
/// again if the first one fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Prepare(TxnId),
    Finish(TxnId, Outcome),
    ListPrepared,
}

/// An answer of a task: the node's input, and which pending request it ends.
#[derive(Debug)]
pub(super) struct Answer {
    pending: Pending,
    /// The node's input (`None`: the call failed; the node asks again).
    pub(super) input: Option<Input>,
}

/// Runs the node's resource requests against a participant.
pub(super) struct ResourceRunner {
    participant: Arc<dyn Participant>,
    places: Arc<Semaphore>,
    pending: BTreeSet<Pending>,
    answers_sender: mpsc::Sender<Answer>,
    answers: mpsc::Receiver<Answer>,
}

impl ResourceRunner {
    /// A runner calling `participant`.
    pub(super) fn new(participant: Arc<dyn Participant>) -> ResourceRunner {
        let (answers_sender, answers) = mpsc::channel(RESOURCE_ANSWERS_QUEUED_MAX);
        ResourceRunner {
            participant,
            places: Arc::new(Semaphore::new(RESOURCE_CALLS_IN_FLIGHT_MAX)),
            pending: BTreeSet::new(),
            answers_sender,
            answers,
        }
    }

    /// Requests running or waiting for a place.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Starts `request` on its own task (unless the same request is already under way).
    pub(super) fn start(&mut self, request: ResourceRequest) {
        let pending = match &request {
            ResourceRequest::Prepare { txn, .. } => Pending::Prepare(*txn),
            ResourceRequest::Finish { txn, outcome } => Pending::Finish(*txn, *outcome),
            ResourceRequest::ListPrepared => Pending::ListPrepared,
        };
        if !self.pending.insert(pending) {
            tracing::debug!(target: "dtx::audit", ?pending, "resource request already under way");
            return;
        }
        match &request {
            ResourceRequest::Prepare { txn, operations } => {
                tracing::info!(target: "dtx::audit", %txn, operations = operations.len(), "resource prepare asked");
            }
            ResourceRequest::Finish { txn, outcome } => {
                tracing::info!(target: "dtx::audit", %txn, %outcome, "resource finish asked");
            }
            ResourceRequest::ListPrepared => {
                tracing::info!(target: "dtx::audit", "resource prepared list asked");
            }
        }
        let participant = Arc::clone(&self.participant);
        let places = Arc::clone(&self.places);
        let answers = self.answers_sender.clone();
        tokio::spawn(async move {
            // The semaphore is never closed: an error cannot happen, and would only mean
            // running without a place.
            let _place = places.acquire_owned().await.ok();
            let input = call(participant.as_ref(), request).await;
            // The loop owns the receiver for the life of the process: a send error means
            // it stopped, and the answer has no one to go to.
            let _ = answers.send(Answer { pending, input }).await;
        });
    }

    /// The next answer (waits; only `None` if every sender is gone, which the runner's own
    /// sender prevents).
    pub(super) async fn next(&mut self) -> Option<Answer> {
        self.answers.recv().await
    }

    /// An answer ready now.
    pub(super) fn ready(&mut self) -> Option<Answer> {
        self.answers.try_recv().ok()
    }

    /// Marks `answer`'s request done, and returns the node's input if there is one.
    pub(super) fn finished(&mut self, answer: Answer) -> Option<Input> {
        self.pending.remove(&answer.pending);
        answer.input
    }
}

/// Waits for the runner's next answer, or forever without a runner (a `select!` arm).
pub(super) async fn next_answer(runner: &mut Option<ResourceRunner>) -> Option<Answer> {
    match runner {
        Some(runner) => runner.next().await,
        None => std::future::pending().await,
    }
}

/// Asks the participant once; the node's input, or `None` when it must ask again.
async fn call(participant: &dyn Participant, request: ResourceRequest) -> Option<Input> {
    match request {
        ResourceRequest::Prepare { txn, operations } => {
            let answer = AssertUnwindSafe(participant.prepare(txn, &operations))
                .catch_unwind()
                .await;
            let vote = match answer {
                Ok(Ok(PrepareAnswer::Prepared)) => Ok(()),
                Ok(Ok(PrepareAnswer::Refused { reason })) => Err(AbortReason::ServiceRefused {
                    reason: cut_text(&reason, REFUSAL_TEXT_MAX_BYTES),
                }),
                Ok(Err(error)) => Err(AbortReason::ServiceUnavailable {
                    detail: cut_text(&error.detail, REFUSAL_TEXT_MAX_BYTES),
                }),
                Err(_) => Err(AbortReason::ServiceUnavailable {
                    detail: "the participant panicked in prepare".to_string(),
                }),
            };
            match &vote {
                Ok(()) => tracing::info!(target: "dtx::audit", %txn, "resource voted prepared"),
                Err(reason) => {
                    tracing::info!(target: "dtx::audit", %txn, %reason, "resource voted aborted")
                }
            }
            Some(Input::ResourceVoted { txn, vote })
        }
        ResourceRequest::Finish { txn, outcome } => {
            match AssertUnwindSafe(participant.finish(txn, outcome))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => {
                    tracing::info!(target: "dtx::audit", %txn, %outcome, "resource acknowledged");
                    Some(Input::ResourceDone { txn, outcome })
                }
                Ok(Err(error)) => {
                    tracing::warn!(target: "dtx::audit", %txn, %outcome, %error, "resource finish failed; asked again later");
                    None
                }
                Err(_) => {
                    tracing::error!(target: "dtx::audit", %txn, %outcome, "the participant panicked in finish; asked again later");
                    None
                }
            }
        }
        ResourceRequest::ListPrepared => {
            match AssertUnwindSafe(participant.prepared())
                .catch_unwind()
                .await
            {
                Ok(Ok(prepared)) => {
                    tracing::info!(target: "dtx::audit", prepared = prepared.len(), "resource listed its prepared transactions");
                    Some(Input::ResourceHolds { prepared })
                }
                Ok(Err(error)) => {
                    tracing::warn!(target: "dtx::audit", %error, "resource prepared list failed; asked again later");
                    None
                }
                Err(_) => {
                    tracing::error!(target: "dtx::audit", "the participant panicked listing its prepared transactions; asked again later");
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participant::ParticipantError;
    use dtx_protocol::{Key, NodeId, Operation};
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// How the test participant answers prepare.
    #[derive(Clone, Debug)]
    enum Behaviour {
        Prepared,
        Refused(String),
        Unavailable,
        Panics,
    }

    /// Counts calls and those inside at once; calls wait on `gate` when it has no permits.
    struct Scripted {
        behaviour: Behaviour,
        calls: AtomicUsize,
        inside: AtomicUsize,
        inside_max: AtomicUsize,
        gate: Semaphore,
    }

    impl Scripted {
        fn new(behaviour: Behaviour, open: bool) -> Arc<Scripted> {
            Arc::new(Scripted {
                behaviour,
                calls: AtomicUsize::new(0),
                inside: AtomicUsize::new(0),
                inside_max: AtomicUsize::new(0),
                gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
            })
        }

        async fn pass(&self) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let inside = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.inside_max.fetch_max(inside, Ordering::SeqCst);
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            self.inside.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Participant for Scripted {
        fn prepare<'a>(
            &'a self,
            _txn: TxnId,
            _operations: &'a [Operation],
        ) -> BoxFuture<'a, Result<PrepareAnswer, ParticipantError>> {
            Box::pin(async move {
                self.pass().await;
                match &self.behaviour {
                    Behaviour::Prepared => Ok(PrepareAnswer::Prepared),
                    Behaviour::Refused(reason) => Ok(PrepareAnswer::Refused {
                        reason: reason.clone(),
                    }),
                    Behaviour::Unavailable => Err(ParticipantError::new("connection refused")),
                    Behaviour::Panics => panic!("a bug in the service"),
                }
            })
        }

        fn finish(
            &self,
            _txn: TxnId,
            _outcome: Outcome,
        ) -> BoxFuture<'_, Result<(), ParticipantError>> {
            Box::pin(async move {
                self.pass().await;
                match self.behaviour {
                    Behaviour::Unavailable => Err(ParticipantError::new("connection refused")),
                    _ => Ok(()),
                }
            })
        }

        fn prepared(&self) -> BoxFuture<'_, Result<Vec<TxnId>, ParticipantError>> {
            Box::pin(async move {
                self.pass().await;
                Ok(vec![txn(7)])
            })
        }
    }

    fn txn(sequence: u64) -> TxnId {
        TxnId {
            client: NodeId(1),
            sequence,
        }
    }

    fn prepare(sequence: u64) -> ResourceRequest {
        ResourceRequest::Prepare {
            txn: txn(sequence),
            operations: vec![Operation::Call {
                target: Key::new("flights/LH400"),
                action: "reserve".to_string(),
                args: dtx_protocol::Value::new("{}"),
            }],
        }
    }

    async fn answer(runner: &mut ResourceRunner) -> Option<Input> {
        let answer = tokio::time::timeout(Duration::from_secs(10), runner.next())
            .await
            .expect("an answer in time")
            .expect("the runner's channel is open");
        runner.finished(answer)
    }

    #[tokio::test]
    async fn each_prepare_answer_becomes_exactly_one_vote() {
        let long = "x".repeat(REFUSAL_TEXT_MAX_BYTES * 3);
        let cases = [
            (Behaviour::Prepared, "prepared"),
            (Behaviour::Refused(long), "refused"),
            (Behaviour::Unavailable, "unavailable"),
            (Behaviour::Panics, "unavailable"),
        ];
        for (behaviour, expected) in cases {
            let mut runner = ResourceRunner::new(Scripted::new(behaviour.clone(), true));
            runner.start(prepare(1));
            let input = answer(&mut runner).await;
            let Some(Input::ResourceVoted { txn: voted, vote }) = input else {
                panic!("{behaviour:?}: a vote, not {input:?}");
            };
            assert_eq!(voted, txn(1));
            match (expected, vote) {
                ("prepared", Ok(())) => {}
                ("refused", Err(AbortReason::ServiceRefused { reason })) => {
                    assert!(
                        reason.len() <= REFUSAL_TEXT_MAX_BYTES,
                        "cut: {}",
                        reason.len()
                    );
                }
                ("unavailable", Err(AbortReason::ServiceUnavailable { .. })) => {}
                (expected, vote) => panic!("{behaviour:?}: expected {expected}, got {vote:?}"),
            }
            assert_eq!(runner.pending(), 0);
        }
    }

    #[tokio::test]
    async fn a_failed_finish_answers_nothing_and_a_done_one_acknowledges() {
        let mut runner = ResourceRunner::new(Scripted::new(Behaviour::Unavailable, true));
        runner.start(ResourceRequest::Finish {
            txn: txn(1),
            outcome: Outcome::Commit,
        });
        assert!(answer(&mut runner).await.is_none(), "the node asks again");
        let mut runner = ResourceRunner::new(Scripted::new(Behaviour::Prepared, true));
        runner.start(ResourceRequest::Finish {
            txn: txn(1),
            outcome: Outcome::Abort,
        });
        let done = answer(&mut runner).await;
        assert!(
            matches!(done, Some(Input::ResourceDone { txn: done_txn, outcome: Outcome::Abort }) if done_txn == txn(1)),
            "{done:?}"
        );
        runner.start(ResourceRequest::ListPrepared);
        let holds = answer(&mut runner).await;
        assert!(
            matches!(&holds, Some(Input::ResourceHolds { prepared }) if *prepared == vec![txn(7)]),
            "{holds:?}"
        );
    }

    #[tokio::test]
    async fn a_request_under_way_is_not_started_twice_and_calls_in_flight_are_bounded() {
        let participant = Scripted::new(Behaviour::Prepared, false);
        let mut runner = ResourceRunner::new(participant.clone());
        let requests = RESOURCE_CALLS_IN_FLIGHT_MAX as u64 + 44;
        for sequence in 0..requests {
            runner.start(prepare(sequence));
            runner.start(prepare(sequence));
        }
        assert_eq!(runner.pending(), requests as usize, "repeats dropped");
        // Let every task reach the participant or its place in the queue.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            participant.inside_max.load(Ordering::SeqCst),
            RESOURCE_CALLS_IN_FLIGHT_MAX,
            "at most the bound inside the participant, the rest waiting"
        );
        participant.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        for _ in 0..requests {
            assert!(matches!(
                answer(&mut runner).await,
                Some(Input::ResourceVoted { vote: Ok(()), .. })
            ));
        }
        assert_eq!(participant.calls.load(Ordering::SeqCst), requests as usize);
        assert_eq!(runner.pending(), 0);
        runner.start(prepare(0));
        assert_eq!(runner.pending(), 1, "a request answered may be asked again");
    }
}
