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
