//! Learner and decision: Phase2b messages counted into a quorum per instance, the
//! transaction's outcome learned from them (or from a peer's Decision), applied at an RM,
//! kept in a bounded window, and told to whoever asks.

use super::outbox::Gates;
use super::{bad_descriptor, reserved_bytes, Event, Kept, Node};
use crate::bugs::Bug;
use crate::message::{Message, MessageKind, ReadResult};
use crate::record::Record;
use crate::reject::{NoResolveReason, RejectReason};
use crate::types::{Ballot, NodeId, Outcome, Time, TxnDescriptor, TxnId, Vote};

impl Node {
    pub(super) fn on_phase2b(
        &mut self,
        now: Time,
        from: NodeId,
        txn: TxnId,
        rm: NodeId,
        ballot: Ballot,
        value: Vote,
    ) {
        if !self.config.cluster.is_member(from) {
            // Acceptors are data nodes; anyone else could only fill the early buffer.
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Phase2b,
                },
            );
        }
        if self.outcomes.contains_key(&txn) {
            return;
        }
        let me = self.config.id;
        let Some(entry) = self.txns.get_mut(&txn) else {
            self.buffer_early_phase2b(txn, (from, rm, ballot, value));
            return;
        };
        let Some(chosen) = entry
            .tally
            .record(&entry.descriptor, from, rm, ballot, value)
        else {
            return;
        };
        if self.config.bugs.has(Bug::RmCommitsOnOwnVote) && rm == me && chosen == Vote::Prepared {
            return self.decide(now, from, txn, Outcome::Commit);
        }
        if let Some(outcome) = entry.tally.outcome(&entry.descriptor) {
            self.decide(now, from, txn, outcome);
        }
    }

    fn buffer_early_phase2b(&mut self, txn: TxnId, phase2b: (NodeId, NodeId, Ballot, Vote)) {
        if !self.early_phase2b.contains_key(&txn) {
            if self.early_order.len() >= self.config.limits.early_phase2b_max {
                if let Some(oldest) = self.early_order.pop_front() {
                    self.early_phase2b.remove(&oldest);
                }
            }
            self.early_order.push_back(txn);
        }
        let buffered = self.early_phase2b.entry(txn).or_default();
        if buffered.len() < 4 * crate::cluster::MEMBERS_MAX {
            buffered.push(phase2b);
        }
    }

    pub(super) fn on_decision(&mut self, now: Time, from: NodeId, txn: TxnId, outcome: Outcome) {
        if !self.config.cluster.is_member(from) {
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Decision,
                },
            );
        }
        if from == self.config.id && self.one_phase_unannounced.remove(&txn) {
            // A one-phase decision's write is durable (see `decide_one_phase`): now it is
            // a decision anyone may see.
            let as_participant = true;
            self.events.push_back(Event::Decided {
                txn,
                outcome,
                as_participant,
            });
            return;
        }
        let one_phase = self
            .txns
            .get(&txn)
            .is_some_and(|entry| entry.descriptor.is_one_phase());
        if one_phase && from != self.config.id {
            // Only the RM itself decides a one-phase transaction.
            return self.reject(
                from,
                RejectReason::NotInRole {
                    message: MessageKind::Decision,
                },
            );
        }
        if self.txns.contains_key(&txn) || self.outcomes.contains_key(&txn) {
            self.decide(now, from, txn, outcome);
        } else {
            // Never took part: remember it so a late Prepare or 2a is answered, not acted on.
            self.keep_outcome(txn, outcome, None);
        }
    }

    /// Resolve: finish the transaction (leading recovery if needed) and tell the asker.
    /// Only with a reason: the asker is the transaction's client or a data node, and this
    /// node is a participant or acceptor of it (only they hold anything to recover); a
    /// client's Resolve that would open a transaction counts against its quota. Anything
    /// else is rejected and counted, so a flood of Resolves starts no recoveries.
    pub(super) fn on_resolve(&mut self, now: Time, from: NodeId, descriptor: TxnDescriptor) {
        let me = self.config.id;
        let from_client = from == descriptor.client();
        if !from_client && !self.config.cluster.is_member(from) {
            let problem = NoResolveReason::AskerHasNoSay;
            return self.reject(from, RejectReason::NoReasonToResolve { problem });
        }
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Resolve, problem));
        }
        if !descriptor.is_participant(me) && !descriptor.is_acceptor(me) {
            let problem = NoResolveReason::NoPartHere;
            return self.reject(from, RejectReason::NoReasonToResolve { problem });
        }
        let txn = descriptor.txn;
        if descriptor.is_one_phase() && !from_client {
            // Nobody but its client and its RM knows a one-phase transaction.
            let problem = NoResolveReason::AskerHasNoSay;
            return self.reject(from, RejectReason::NoReasonToResolve { problem });
        }
        if self.answer_if_decided(from, txn) {
            return;
        }
        if !self.admit(from, &descriptor) {
            return;
        }
        if from_client && !self.txns.contains_key(&txn) {
            if let Some(open) = self.over_client_quota(txn) {
                let client = txn.client;
                return self.reject(from, RejectReason::ClientQuota { client, open });
            }
        }
        if descriptor.is_one_phase() {
            return self.resolve_one_phase(now, from, descriptor);
        }
        let entry = self.entry(now, &descriptor);
        entry.waiters.insert(from);
        // Asking does not cut short the wait for a service's vote (see
        // `service_vote_grace`): the asker is told when the decision is known. A member
        // asks only to learn a decision it may have missed (during that grace): its
        // question starts no recovery here; this node's own deadline does, if due.
        if entry.leader.is_none() && from_client && self.service_vote_grace(now, txn).is_none() {
            self.start_recovery(now, txn);
        }
    }

    // ----- Decision ------------------------------------------------------------------

    /// Learns the outcome: applies it if this node is an RM that voted, persists it (which
    /// also retires the acceptor state), answers whoever asked.
    ///
    /// `from` is whoever made the outcome known (a Decision's sender, the acceptor whose
    /// Phase2b completed a quorum, or this node): an outcome that contradicts what this
    /// node knows is rejected and counted, never applied.
    pub(super) fn decide(&mut self, now: Time, from: NodeId, txn: TxnId, outcome: Outcome) {
        let me = self.config.id;
        if let Some(kept) = self.outcomes.get(&txn) {
            if kept.outcome != outcome {
                let known = kept.outcome;
                let reason = RejectReason::ContradictsKnownOutcome {
                    txn,
                    outcome,
                    known,
                };
                self.reject(from, reason);
            }
            return;
        }
        let voted_aborted = self
            .txns
            .get(&txn)
            .is_some_and(|entry| entry.rm.as_ref().is_some_and(|rm| rm.vote == Vote::Aborted));
        if outcome == Outcome::Commit && voted_aborted {
            // PaxosCommit.tla: chosen Prepared implies the RM prepared. Whoever says
            // Commit is wrong (or lying); the RM keeps waiting for the real outcome.
            return self.reject(from, RejectReason::ContradictsOwnVote { txn });
        }
        let Some(entry) = self.txns.remove(&txn) else {
            return;
        };
        self.deadlines.remove(&(entry.deadline, txn));
        if entry.leader.is_some() {
            self.leading = self.leading.saturating_sub(1);
        }
        let descriptor = entry.descriptor;
        let mut reads = None;
        let mut reason = None;
        if let Some(rm) = entry.rm {
            reason = rm.reason.clone();
            self.prepared_bytes = self.prepared_bytes.saturating_sub(reserved_bytes(&rm));
            if outcome == Outcome::Commit {
                // Checked above: this RM voted Prepared.
                self.store.apply(&rm.writes);
            }
            let keys = rm
                .locks
                .iter()
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>();
            self.release_locks(now, txn, keys);
            reads = rm.reads;
        }
        // WHITEPAPER §9.6 would allow `Gates::Nothing` here (the acceptors hold the decision);
        // kept `Gates::Sends` so that behaviour, and the model checker's counts, stay as they are.
        self.stage_record(Record::Outcome { txn, outcome }, Gates::Sends);
        if !self.one_phase_unannounced.contains(&txn) {
            self.events.push_back(Event::Decided {
                txn,
                outcome,
                as_participant: descriptor.is_participant(me),
            });
        }
        for waiter in entry.waiters {
            self.send(
                waiter,
                Message::Decision {
                    txn,
                    outcome,
                    reads: reads.clone(),
                },
            );
        }
        // Acceptors that are not participants learn nothing from Phase2b: the first
        // participant tells them, so they can retire their state.
        if descriptor.participants.first() == Some(&me) {
            // Thrifty Prepared votes reach only the first F+1 acceptors; any other
            // acceptor that holds state (after a retry or recovery) times out and learns
            // by asking. An Aborted vote goes to all 2F+1, so Abort is told to all too
            // (otherwise the last acceptor kept its state until a recovery round).
            let reached = if self.config.thrifty && outcome == Outcome::Commit {
                descriptor.quorum()
            } else {
                descriptor.acceptors.len()
            };
            for acceptor in descriptor.acceptors.iter().take(reached).copied() {
                if !descriptor.is_participant(acceptor) {
                    self.send(
                        acceptor,
                        Message::Decision {
                            txn,
                            outcome,
                            reads: None,
                        },
                    );
                }
            }
        }
        self.keep_outcome(txn, outcome, reads);
        if let Some(kept) = self.outcomes.get_mut(&txn) {
            kept.reason = reason;
        }
    }

    pub(super) fn keep_outcome(
        &mut self,
        txn: TxnId,
        outcome: Outcome,
        reads: Option<Vec<ReadResult>>,
    ) {
        self.early_phase2b.remove(&txn);
        self.owe_outcome(txn, outcome);
        let kept = Kept {
            outcome,
            reads,
            reason: None,
        };
        if self.outcomes.insert(txn, kept).is_none() {
            self.outcome_order.push_back(txn);
        }
        while self.outcome_order.len() > self.config.limits.outcomes_kept_max {
            if let Some(oldest) = self.outcome_order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }

    /// If `txn` is decided here, tells `asker` and returns true.
    pub(super) fn answer_if_decided(&mut self, asker: NodeId, txn: TxnId) -> bool {
        let Some(kept) = self.outcomes.get(&txn) else {
            return false;
        };
        if asker != self.config.id {
            // The client asking again after this RM voted Aborted may have lost the notice
            // with the reason (it asks for it so): repeat it.
            let notice = (asker == txn.client)
                .then(|| kept.reason.clone())
                .flatten()
                .map(|reason| Message::VoteNotice {
                    txn,
                    vote: Vote::Aborted,
                    reason: Some(reason),
                    reads: Vec::new(),
                });
            let decision = Message::Decision {
                txn,
                outcome: kept.outcome,
                reads: kept.reads.clone(),
            };
            if let Some(notice) = notice {
                self.send(asker, notice);
            }
            self.send(asker, decision);
        }
        true
    }
}
