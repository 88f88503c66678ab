//! The commit phase from the client's side, shared by one-shot and interactive
//! transactions: the per-transaction state, learning the outcome from Phase2b, VoteNotice
//! and Decision messages, retries (Prepare again, then Resolve), and reporting the result.
//!
//! An abort's reason travels apart from the abort itself: the RM that votes Aborted sends
//! its ballot-0 Phase2a to the acceptors and its `VoteNotice` (with the reason) to the
//! client in the same breath, and the acceptors' Phase2b may reach the client first (they
//! come from other nodes, over other connections). A Phase2b that shows a participant's
//! own ballot-0 Aborted vote proves that participant sent a notice, so the client holds
//! the Abort for that notice, [`ClientConfig::abort_reason_wait`] at most, rather than
//! report it without its reason. A notice can also be lost (a real network drops
//! messages, and a stream to a client that fails takes its frames with it): after the
//! first wait the client asks the owing participants once with a `Resolve` (a decided RM
//! answers its client with its notice again, then the Decision) and waits once more.
//!
//! [`ClientConfig::abort_reason_wait`]: super::ClientConfig::abort_reason_wait

use super::{Client, Finished, TxnResult};
use crate::learner::Tally;
use crate::message::{AbortReason, Message, ReadResult, Refusal};
use crate::types::{Ballot, NodeId, Outcome, Time, TxnDescriptor, TxnId, Vote};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

/// A transaction in its commit phase (one-shot, or interactive after `commit`): its
/// Prepares kept for retries and what the client has learned of its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ClientTxn {
    pub(super) descriptor: TxnDescriptor,
    /// The Prepare (or PrepareExecuted) for each participant, kept for retries.
    pub(super) prepares: BTreeMap<NodeId, Message>,
    /// Participants whose Prepare carries reads: their results come with their vote.
    readers: BTreeSet<NodeId>,
    /// Reads already done in an interactive execution phase.
    executed_reads: Vec<ReadResult>,
    tally: Tally,
    reads: BTreeMap<NodeId, Vec<ReadResult>>,
    voted: BTreeSet<NodeId>,
    pub(super) outcome: Option<Outcome>,
    reads_lost: bool,
    /// The first abort reason a participant's `VoteNotice` gave.
    reason: Option<AbortReason>,
    /// The participant whose notice gave `reason` (or, while none gave one, the first
    /// whose notice said Aborted).
    aborted_by: Option<NodeId>,
    /// Participants whose own ballot-0 Aborted vote an acceptor reported: each sent the
    /// client a `VoteNotice` with that vote, so its reason is owed.
    voted_aborted: BTreeSet<NodeId>,
    /// True once the Abort is known and the client holds it for an owed reason (its
    /// deadline brought to at most `abort_reason_wait` away).
    awaiting_reason: bool,
    /// True once the client, still without the reason after one wait, asked the owing
    /// participants for it again (a `Resolve`; they repeat their notice).
    reason_asked: bool,
    /// A data node refused a message of this transaction: the first refusal.
    pub(super) refused: Option<Refusal>,
    /// Nodes that refused: they get no more Prepares or Resolves of it.
    pub(super) refused_by: BTreeSet<NodeId>,
    pub(super) retries: u32,
    deadline: Time,
    started: Time,
}

impl ClientTxn {
    /// A transaction entering its commit phase, one-shot or interactive: its Prepares
    /// built, nothing heard yet, first retry due at `deadline`. It started when its
    /// descriptor says.
    fn new(
        descriptor: TxnDescriptor,
        prepares: BTreeMap<NodeId, Message>,
        readers: BTreeSet<NodeId>,
        executed_reads: Vec<ReadResult>,
        deadline: Time,
    ) -> ClientTxn {
        ClientTxn {
            started: descriptor.start_time,
            descriptor,
            prepares,
            readers,
            executed_reads,
            tally: Tally::default(),
            reads: BTreeMap::new(),
            voted: BTreeSet::new(),
            outcome: None,
            reads_lost: false,
            reason: None,
            aborted_by: None,
            voted_aborted: BTreeSet::new(),
            awaiting_reason: false,
            reason_asked: false,
            refused: None,
            refused_by: BTreeSet::new(),
            retries: 0,
            deadline,
        }
    }
}

impl Client {
    /// Starts the commit phase of `descriptor`'s transaction: keeps its state, arms its
    /// first retry and sends every participant its Prepare. `readers` and
    /// `executed_reads` are as in [`ClientTxn`].
    pub(super) fn start_commit(
        &mut self,
        now: Time,
        descriptor: TxnDescriptor,
        prepares: BTreeMap<NodeId, Message>,
        readers: BTreeSet<NodeId>,
        executed_reads: Vec<ReadResult>,
    ) {
        let txn = descriptor.txn;
        let deadline = now.saturating_add(self.config.retry_timeout);
        let state = ClientTxn::new(descriptor, prepares, readers, executed_reads, deadline);
        self.txns.insert(txn, state);
        self.deadlines.insert((deadline, txn));
        self.send_prepares(txn, |_| true);
        self.flush();
    }

    /// A commit-phase message of `txn` from `from` (Phase2b, VoteNotice or Decision):
    /// learns the outcome and the read results, and finishes the transaction once both
    /// are known.
    pub(super) fn on_commit_message(&mut self, now: Time, from: NodeId, message: Message) {
        let txn = message.txn();
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        match message {
            Message::Phase2b {
                rm, ballot, value, ..
            } => {
                state
                    .tally
                    .record(&state.descriptor, from, rm, ballot, value);
                let own_aborted_vote = ballot == Ballot::ZERO
                    && value == Vote::Aborted
                    && state.descriptor.is_acceptor(from)
                    && state.descriptor.is_participant(rm);
                if own_aborted_vote {
                    // Only the RM itself proposes in ballot 0, and it sends its notice
                    // together with that Phase2a.
                    state.voted_aborted.insert(rm);
                }
                if state.outcome.is_none() {
                    state.outcome = state.tally.outcome(&state.descriptor);
                }
            }
            Message::VoteNotice {
                vote,
                reason,
                reads,
                ..
            } if state.descriptor.is_participant(from) => {
                state.voted.insert(from);
                state.reads.insert(from, reads);
                if vote == Vote::Aborted {
                    // An RM that voted Aborted makes Abort certain.
                    state.outcome = Some(Outcome::Abort);
                    // The first reason given wins; a notice without one only names
                    // its sender until a reason comes.
                    if state.reason.is_none() && (reason.is_some() || state.aborted_by.is_none()) {
                        state.reason = reason;
                        state.aborted_by = Some(from);
                    }
                }
            }
            Message::Decision { outcome, reads, .. } if self.config.cluster.is_member(from) => {
                state.outcome.get_or_insert(outcome);
                if outcome == Outcome::Abort
                    && state.descriptor.is_one_phase()
                    && state.descriptor.is_participant(from)
                {
                    // A one-phase Abort is its only RM's own: its notice with the reason
                    // left just before this Decision but may have been lost with a stream
                    // (no acceptor's Phase2b tells the client it is owed otherwise).
                    state.voted_aborted.insert(from);
                }
                let awaited = state.readers.contains(&from) && !state.reads.contains_key(&from);
                if awaited {
                    match reads {
                        Some(reads) => {
                            state.reads.insert(from, reads);
                        }
                        None => state.reads_lost = true,
                    }
                }
            }
            _ => return,
        }
        self.finish_if_known(now, txn);
    }

    fn finish_if_known(&mut self, now: Time, txn: TxnId) {
        let abort_reason_wait = self.config.abort_reason_wait;
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        let result = match state.outcome {
            None => return,
            Some(Outcome::Abort) if state.refused.is_none() && reason_owed(state) => {
                if !state.awaiting_reason {
                    // Hold the Abort for the notice; the deadline ends the wait (`retry`).
                    state.awaiting_reason = true;
                    let until = now.saturating_add(abort_reason_wait);
                    if until < state.deadline {
                        self.deadlines.remove(&(state.deadline, txn));
                        state.deadline = until;
                        self.deadlines.insert((until, txn));
                    }
                }
                return;
            }
            Some(Outcome::Abort) => return self.finish_abort(now, txn),
            Some(Outcome::Commit) => {
                let missing = state
                    .readers
                    .iter()
                    .any(|reader| !state.reads.contains_key(reader));
                if missing && !state.reads_lost {
                    return;
                }
                let reads = state
                    .executed_reads
                    .iter()
                    .chain(state.reads.values().flatten())
                    .cloned()
                    .collect();
                TxnResult::Committed {
                    reads,
                    reads_lost: state.reads_lost,
                }
            }
        };
        self.finish(now, txn, result, None);
    }

    /// Reports an aborted transaction with what is known of why (see
    /// [`TxnResult::Aborted`]), or as refused if a node refused it.
    fn finish_abort(&mut self, now: Time, txn: TxnId) {
        let Some(state) = self.txns.get(&txn) else {
            return;
        };
        if let Some(refusal) = state.refused {
            let refuser = state.refused_by.first().copied();
            return self.finish(now, txn, TxnResult::Refused(refusal), refuser);
        }
        let chosen_aborted = state
            .tally
            .chosen()
            .iter()
            .find(|(_, vote)| **vote == Vote::Aborted)
            .map(|(rm, _)| *rm);
        let participant = state
            .aborted_by
            .or(chosen_aborted)
            .or_else(|| state.voted_aborted.first().copied());
        // A chosen Aborted the client saw no ballot-0 vote for was a recovery leader's.
        let leader_aborted = chosen_aborted
            .filter(|rm| participant == Some(*rm) && !state.voted_aborted.contains(rm));
        let reason = state
            .reason
            .clone()
            .or(leader_aborted.map(|_| AbortReason::NoVote));
        self.finish(now, txn, TxnResult::Aborted { reason }, participant);
    }

    /// Ends `txn` with `result`, `participant` as in [`Finished::participant`].
    pub(super) fn finish(
        &mut self,
        now: Time,
        txn: TxnId,
        result: TxnResult,
        participant: Option<NodeId>,
    ) {
        if let Some(state) = self.txns.remove(&txn) {
            self.deadlines.remove(&(state.deadline, txn));
            self.events.push_back(Finished {
                txn,
                result,
                participant,
                started: state.started,
                finished: now,
            });
        }
    }

    /// First retry: Prepare again to RMs never heard from (their Prepare may be lost).
    /// Later: ask participants to resolve (they lead recovery if they must), then all
    /// acceptors too; finally give up and report the outcome as unknown.
    pub(super) fn retry(&mut self, now: Time, txn: TxnId) {
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        if state.outcome == Some(Outcome::Abort) {
            // A wait for an owed abort reason is over (see `finish_if_known`): ask once
            // more, then report what is known.
            if state.reason_asked || !reason_owed(state) {
                return self.finish_abort(now, txn);
            }
            state.reason_asked = true;
            let owing: Vec<NodeId> = state
                .voted_aborted
                .iter()
                .filter(|rm| !state.voted.contains(rm) && !state.refused_by.contains(rm))
                .copied()
                .collect();
            self.deadlines.remove(&(state.deadline, txn));
            state.deadline = now.saturating_add(self.config.abort_reason_wait);
            self.deadlines.insert((state.deadline, txn));
            let descriptor = state.descriptor.clone();
            for rm in owing {
                let resolve = Message::Resolve {
                    descriptor: descriptor.clone(),
                };
                self.stage(rm, resolve);
            }
            return;
        }
        state.retries += 1;
        let retries = state.retries;
        if retries > self.config.retries_max {
            return self.finish(now, txn, TxnResult::Unknown, None);
        }
        let grown = self
            .config
            .retry_timeout
            .saturating_mul(1 << retries.min(8))
            .min(self.config.retry_timeout_max);
        let micros = grown.as_micros() as u64;
        // A bound of at least 1: `Rng::below`'s assert cannot fire.
        let wait = Duration::from_micros(micros / 2 + self.rng.below(micros / 2 + 1));
        self.deadlines.remove(&(state.deadline, txn));
        state.deadline = now.saturating_add(wait);
        self.deadlines.insert((state.deadline, txn));
        let descriptor = state.descriptor.clone();
        if state.outcome.is_some() {
            // Decided, but a reader's results are missing: ask that reader.
            let missing: Vec<NodeId> = state
                .readers
                .iter()
                .filter(|reader| {
                    !state.reads.contains_key(reader) && !state.refused_by.contains(reader)
                })
                .copied()
                .collect();
            if missing.is_empty() {
                // Every reader still owing its results refused this client: nobody will
                // send them. The outcome is known; report it with the reads lost.
                state.reads_lost = true;
                return self.finish_if_known(now, txn);
            }
            for reader in missing {
                self.stage(
                    reader,
                    Message::Resolve {
                        descriptor: descriptor.clone(),
                    },
                );
            }
            return;
        }
        if nobody_left_to_ask(state) {
            // Every node that could tell the outcome refused this client (a removed user,
            // a revoked session): retrying for minutes would change nothing. A participant
            // may have prepared before it refused, so the outcome is unknown, not Aborted.
            return self.finish(now, txn, TxnResult::Unknown, None);
        }
        if retries == 1 {
            let heard: BTreeSet<NodeId> = descriptor
                .participants
                .iter()
                .copied()
                .filter(|rm| state.tally.heard_from(*rm) || state.voted.contains(rm))
                .collect();
            return self.send_prepares(txn, |rm| !heard.contains(&rm));
        }
        let mut askers: BTreeSet<NodeId> = descriptor.participants.iter().copied().collect();
        if retries >= 3 {
            askers.extend(descriptor.acceptors.iter().copied());
        }
        for refused in &state.refused_by {
            askers.remove(refused);
        }
        if askers.is_empty() {
            // Every participant refused: ask the acceptors now rather than at retry 3.
            askers = descriptor
                .acceptors
                .iter()
                .copied()
                .filter(|acceptor| !state.refused_by.contains(acceptor))
                .collect();
        }
        for node in askers {
            self.stage(
                node,
                Message::Resolve {
                    descriptor: descriptor.clone(),
                },
            );
        }
    }

    pub(super) fn send_prepares(&mut self, txn: TxnId, wanted: impl Fn(NodeId) -> bool) {
        let Some(state) = self.txns.get(&txn) else {
            return;
        };
        // A node that refused this transaction never gets another Prepare of it (see
        // `TxnResult::Refused`).
        let prepares: Vec<(NodeId, Message)> = state
            .prepares
            .iter()
            .filter(|(rm, _)| wanted(**rm) && !state.refused_by.contains(rm))
            .map(|(rm, prepare)| (*rm, prepare.clone()))
            .collect();
        for (rm, prepare) in prepares {
            self.stage(rm, prepare);
        }
    }
}

/// True if `state`'s Abort waits for a reason a participant owes: one whose ballot-0
/// Aborted vote an acceptor reported has not sent its notice yet (nor refused this client,
/// in which case it never will), and no notice gave a reason.
fn reason_owed(state: &ClientTxn) -> bool {
    state.reason.is_none()
        && state
            .voted_aborted
            .iter()
            .any(|rm| !state.voted.contains(rm) && !state.refused_by.contains(rm))
}

/// True if every participant and acceptor of `state`'s transaction refused this client:
/// no node is left that would answer a Prepare or a Resolve of it.
pub(super) fn nobody_left_to_ask(state: &ClientTxn) -> bool {
    let descriptor = &state.descriptor;
    descriptor
        .participants
        .iter()
        .chain(descriptor.acceptors.iter())
        .all(|node| state.refused_by.contains(node))
}
