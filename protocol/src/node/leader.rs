//! The recovery leader: a node holding an undecided transaction past its deadline runs
//! Phase1a/1b at a fresh ballot for every instance and proposes what Phase1b reports allow
//! (the highest accepted value, or Aborted).

use super::outbox::Gates;
use super::{Event, LeaderPart, Node};
use crate::bugs::Bug;
use crate::message::{InstanceReport, Message, MessageKind};
use crate::record::Record;
use crate::reject::RejectReason;
use crate::types::{next_round, Ballot, NodeId, Time, TxnId, Vote};
use std::collections::BTreeMap;

impl Node {
    /// Becomes the leader of a fresh ballot for every instance of `txn` (the paper's
    /// "leader that times out"): Phase1a to all acceptors of the descriptor.
    pub(super) fn start_recovery(&mut self, now: Time, txn: TxnId) {
        let me = self.config.id;
        let Some(entry) = self.txns.get(&txn) else {
            return;
        };
        if entry.descriptor.is_one_phase() {
            // No acceptors, no instance to recover: its RM alone decides (an external
            // resource answers every prepare exactly once), so its deadline only goes.
            let deadline = entry.deadline;
            self.deadlines.remove(&(deadline, txn));
            return;
        }
        if self.quarantine.is_some() {
            // No ballots in quarantine (see `fence`): look again later.
            let backoff = self.backoff(entry.recovery_attempts.max(1));
            return self.set_deadline(txn, now.saturating_add(backoff));
        }
        if entry.leader.is_none() && self.leading >= self.config.limits.recoveries_led_max {
            // Enough ballots in flight: this one waits its turn, with backoff.
            let attempts = entry.recovery_attempts.max(1);
            let backoff = self.backoff(attempts);
            return self.set_deadline(txn, now.saturating_add(backoff));
        }
        let descriptor = entry.descriptor.clone();
        let attempts = entry.recovery_attempts.saturating_add(1);
        let Some(round) = next_round(self.leader_round.max(self.round_seen)) else {
            // Out of rounds (only ever reached by spending a billion ballots or from a
            // capped log): stand down for good here; the other nodes with a part in the
            // transaction still recover it, and their Decision reaches this one.
            if let Some(entry) = self.txns.get_mut(&txn) {
                if entry.leader.take().is_some() {
                    self.leading = self.leading.saturating_sub(1);
                }
                self.deadlines.remove(&(entry.deadline, txn));
            }
            let leader_round = self.leader_round;
            self.events.push_back(Event::RecoveryRoundsExhausted {
                txn: Some(txn),
                leader_round,
            });
            return;
        };
        self.leader_round = round;
        self.stage_record(Record::LeaderRound { round }, Gates::Sends);
        let ballot = Ballot { round, leader: me };
        let backoff = self.backoff(attempts);
        if let Some(entry) = self.txns.get_mut(&txn) {
            entry.recovery_attempts = attempts;
            if entry.leader.is_none() {
                self.leading = self.leading.saturating_add(1);
            }
            entry.leader = Some(LeaderPart {
                ballot,
                promises: BTreeMap::new(),
                proposed: false,
            });
        }
        self.set_deadline(txn, now.saturating_add(backoff));
        self.events
            .push_back(Event::RecoveryStarted { txn, ballot });
        for acceptor in descriptor.acceptors.clone() {
            self.send(
                acceptor,
                Message::Phase1a {
                    descriptor: descriptor.clone(),
                    ballot,
                },
            );
        }
    }

    pub(super) fn on_phase1b(
        &mut self,
        _now: Time,
        from: NodeId,
        txn: TxnId,
        ballot: Ballot,
        reports: Vec<InstanceReport>,
    ) {
        let ignores_accepted = self.config.bugs.has(Bug::RecoveryIgnoresAccepted);
        if !self.is_from_acceptor(from, txn, MessageKind::Phase1b) {
            return;
        }
        let Some(entry) = self.txns.get_mut(&txn) else {
            return;
        };
        let Some(leader) = entry.leader.as_mut() else {
            return;
        };
        if leader.ballot != ballot || leader.proposed {
            return;
        }
        leader.promises.insert(from, reports);
        if leader.promises.len() < entry.descriptor.quorum() {
            return;
        }
        leader.proposed = true;
        let descriptor = entry.descriptor.clone();
        let mut proposals = Vec::new();
        for rm in descriptor.participants.iter().copied() {
            let highest = leader
                .promises
                .values()
                .flatten()
                .filter(|report| report.rm == rm)
                .filter_map(|report| Some((report.accepted_ballot?, report.accepted_value?)))
                .max_by_key(|(accepted_ballot, _)| *accepted_ballot);
            // Paxos Commit: the highest-ballot accepted value, else Aborted (the RM never
            // got its vote to a quorum, so no one can have chosen Prepared).
            let value = match highest {
                Some((_, value)) if !ignores_accepted => value,
                _ => Vote::Aborted,
            };
            proposals.push((rm, value));
        }
        for acceptor in descriptor.acceptors.clone() {
            for (rm, value) in &proposals {
                self.send(
                    acceptor,
                    Message::Phase2a {
                        descriptor: descriptor.clone(),
                        rm: *rm,
                        ballot,
                        value: *value,
                    },
                );
            }
        }
    }

    pub(super) fn on_reject(&mut self, now: Time, from: NodeId, txn: TxnId, promised: Ballot) {
        self.round_seen = self.round_seen.max(promised.round);
        if !self.is_from_acceptor(from, txn, MessageKind::Reject) {
            return;
        }
        let Some(entry) = self.txns.get_mut(&txn) else {
            return;
        };
        let Some(leader) = entry.leader.as_ref() else {
            return;
        };
        if leader.ballot < promised {
            // A competing leader is ahead: stand down and retry after a random backoff
            // unless its ballot decides first.
            entry.leader = None;
            self.leading = self.leading.saturating_sub(1);
            let attempts = entry.recovery_attempts;
            let backoff = self.backoff(attempts);
            self.set_deadline(txn, now.saturating_add(backoff));
        }
    }

    /// True if `txn` is known here and `from` is one of its acceptors. A leader's reply
    /// from a node that is not is refused and counted; one about an unknown transaction is
    /// ignored (it was decided and forgotten).
    fn is_from_acceptor(&mut self, from: NodeId, txn: TxnId, message: MessageKind) -> bool {
        let Some(entry) = self.txns.get(&txn) else {
            return false;
        };
        if entry.descriptor.is_acceptor(from) {
            return true;
        }
        self.reject(from, RejectReason::NotFromAcceptor { message });
        false
    }
}
