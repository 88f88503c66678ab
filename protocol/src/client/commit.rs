//! The commit phase from the client's side, shared by one-shot and interactive
//! transactions: the per-transaction state, learning the outcome from Phase2b, VoteNotice
//! and Decision messages, retries (Prepare again, then Resolve), and reporting the result.

use super::{Client, Finished, TxnResult};
use crate::learner::Tally;
use crate::message::{AbortReason, Message, ReadResult, Refusal};
use crate::types::{NodeId, Outcome, Time, TxnDescriptor, TxnId, Vote};
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
    reason: Option<AbortReason>,
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
                    state.reason = state.reason.take().or(reason);
                }
            }
            Message::Decision { outcome, reads, .. } if self.config.cluster.is_member(from) => {
                state.outcome.get_or_insert(outcome);
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
        let Some(state) = self.txns.get(&txn) else {
            return;
        };
        let result = match state.outcome {
            None => return,
            Some(Outcome::Abort) => match state.refused {
                Some(refusal) => TxnResult::Refused(refusal),
                None => TxnResult::Aborted {
                    reason: state.reason.clone(),
                },
            },
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
        self.finish(now, txn, result);
    }

    pub(super) fn finish(&mut self, now: Time, txn: TxnId, result: TxnResult) {
        if let Some(state) = self.txns.remove(&txn) {
            self.deadlines.remove(&(state.deadline, txn));
            self.events.push_back(Finished {
                txn,
                result,
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
        state.retries += 1;
        let retries = state.retries;
        if retries > self.config.retries_max {
            return self.finish(now, txn, TxnResult::Unknown);
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
            return self.finish(now, txn, TxnResult::Unknown);
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
