//! The acceptor role at a data node: Phase2a and Phase1a of every instance whose acceptor
//! set names this node, each state change persisted before its Phase2b or Phase1b leaves.

use super::outbox::Gates;
use super::{bad_descriptor, Node};
use crate::acceptor::{AcceptResult, AcceptorState, PromiseResult};
use crate::bugs::Bug;
use crate::invariants;
use crate::message::{InstanceReport, Message, MessageKind};
use crate::record::Record;
use crate::reject::RejectReason;
use crate::types::{Ballot, NodeId, Time, TxnDescriptor, TxnId, Vote};
use std::collections::BTreeSet;

impl Node {
    pub(super) fn on_phase2a(
        &mut self,
        now: Time,
        from: NodeId,
        descriptor: TxnDescriptor,
        rm: NodeId,
        ballot: Ballot,
        value: Vote,
    ) {
        let me = self.config.id;
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Phase2a, problem));
        }
        if !descriptor.is_acceptor(me) || !descriptor.is_participant(rm) {
            return self.reject(
                from,
                RejectReason::NotInRole {
                    message: MessageKind::Phase2a,
                },
            );
        }
        let owner_of_ballot = if ballot.is_zero() { rm } else { ballot.leader };
        if !self.config.cluster.is_member(from) {
            // Participants are members (the descriptor check), so this only refuses a
            // recovery ballot led by a client: see `on_phase1a`.
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Phase2a,
                },
            );
        }
        if from != owner_of_ballot {
            // Ballot 0 belongs to the RM, a recovery ballot to its leader: nobody else
            // may propose in them (the sender is authenticated by the transport).
            return self.reject(
                from,
                RejectReason::NotBallotOwner {
                    message: MessageKind::Phase2a,
                },
            );
        }
        let txn = descriptor.txn;
        if self.answer_if_decided(from, txn) {
            return;
        }
        if !self.admit(from, &descriptor) {
            return;
        }
        let entry = self.entry(now, &descriptor);
        let state = entry.acceptor.entry(rm).or_default();
        let before = *state;
        let result = state.accept(ballot, value);
        let after = *state;
        // Invariants of the pure transition, whatever the peer's ballot and value: a
        // failure is a bug in `AcceptorState::accept`, not a peer's doing.
        assert!(invariants::acceptor_state_well_formed(&after));
        assert!(invariants::acceptor_step_monotonic(&before, &after));
        match result {
            AcceptResult::Accepted => {
                self.persist_acceptor(&descriptor, rm, after);
                self.announce_accepted(txn, rm, ballot, value);
            }
            AcceptResult::Duplicate => self.announce_accepted(txn, rm, ballot, value),
            AcceptResult::Stale => {
                if !ballot.is_zero() {
                    self.send(
                        from,
                        Message::Reject {
                            txn,
                            promised: after.promised,
                        },
                    );
                }
            }
            AcceptResult::Conflicting => {
                self.reject(from, RejectReason::ConflictingPhase2a);
            }
        }
    }

    fn persist_acceptor(&mut self, descriptor: &TxnDescriptor, rm: NodeId, state: AcceptorState) {
        if self.config.bugs.has(Bug::AcceptorSkipsPersist) {
            return;
        }
        self.stage_record(
            Record::Acceptor {
                descriptor: descriptor.clone(),
                rm,
                state,
            },
            Gates::Sends,
        );
    }

    /// Faster Paxos Commit: the acceptor tells every RM and the client directly (and the
    /// recovery leader whose ballot it is). Aborted goes out at once, since it alone decides
    /// Abort; Prepared waits until this acceptor has accepted a value for every instance,
    /// then one message per learner carries all of them. Learners need every instance
    /// before they can commit, so the wait costs no latency and bundles the 2b's as in the
    /// paper's message count.
    fn announce_accepted(&mut self, txn: TxnId, rm: NodeId, ballot: Ballot, value: Vote) {
        let Some(entry) = self.txns.get(&txn) else {
            return;
        };
        let descriptor = &entry.descriptor;
        let mut learners: BTreeSet<NodeId> = descriptor.participants.iter().copied().collect();
        learners.insert(descriptor.client());
        if !ballot.is_zero() {
            learners.insert(ballot.leader);
        }
        let mut phase2bs = Vec::new();
        if value == Vote::Aborted {
            phase2bs.push(Message::Phase2b {
                txn,
                rm,
                ballot,
                value,
            });
        } else {
            for instance in &descriptor.participants {
                let state = entry.acceptor.get(instance).copied().unwrap_or_default();
                let (Some(ballot), Some(value)) = (state.accepted_ballot, state.accepted_value)
                else {
                    return;
                };
                phase2bs.push(Message::Phase2b {
                    txn,
                    rm: *instance,
                    ballot,
                    value,
                });
            }
        }
        for learner in learners {
            for phase2b in &phase2bs {
                self.send(learner, phase2b.clone());
            }
        }
    }

    pub(super) fn on_phase1a(
        &mut self,
        now: Time,
        from: NodeId,
        descriptor: TxnDescriptor,
        ballot: Ballot,
    ) {
        let me = self.config.id;
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Phase1a, problem));
        }
        if !descriptor.is_acceptor(me) {
            return self.reject(
                from,
                RejectReason::NotInRole {
                    message: MessageKind::Phase1a,
                },
            );
        }
        if !self.config.cluster.is_member(from) {
            // Only data nodes lead recovery: a client leading a ballot could propose
            // Aborted without heeding Phase1b and un-choose a Prepared instance.
            return self.reject(
                from,
                RejectReason::NotFromMember {
                    message: MessageKind::Phase1a,
                },
            );
        }
        if ballot.is_zero() || ballot.leader != from {
            return self.reject(
                from,
                RejectReason::NotBallotOwner {
                    message: MessageKind::Phase1a,
                },
            );
        }
        let txn = descriptor.txn;
        self.round_seen = self.round_seen.max(ballot.round);
        if self.answer_if_decided(from, txn) {
            return;
        }
        if !self.admit(from, &descriptor) {
            return;
        }
        let mut reports = Vec::new();
        let mut changed = Vec::new();
        let mut highest_promise = Ballot::ZERO;
        let mut stale = false;
        let entry = self.entry(now, &descriptor);
        for rm in descriptor.participants.iter().copied() {
            let state = entry.acceptor.entry(rm).or_default();
            let before = *state;
            match state.promise(ballot) {
                PromiseResult::Promised => changed.push((rm, *state)),
                PromiseResult::AlreadyPromised => {}
                PromiseResult::Stale => stale = true,
            }
            // Holds for any ballot a peer sends: a failure is a bug in `promise`.
            assert!(invariants::acceptor_step_monotonic(&before, state));
            highest_promise = highest_promise.max(state.promised);
            reports.push(InstanceReport {
                rm,
                accepted_ballot: state.accepted_ballot,
                accepted_value: state.accepted_value,
            });
        }
        for (rm, state) in changed {
            self.persist_acceptor(&descriptor, rm, state);
        }
        let reply = if stale {
            Message::Reject {
                txn,
                promised: highest_promise,
            }
        } else {
            Message::Phase1b {
                txn,
                ballot,
                reports,
            }
        };
        self.send(from, reply);
    }
}
