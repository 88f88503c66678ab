//! Learning the outcome from Phase2b messages (Faster Paxos Commit: every RM and the
//! client decide on their own).

use crate::types::{Ballot, NodeId, Outcome, TxnDescriptor, Vote};
use std::collections::{BTreeMap, BTreeSet};

/// Phase2b messages received for one transaction, per instance and ballot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tally {
    accepted: BTreeMap<NodeId, BTreeMap<Ballot, (Vote, BTreeSet<NodeId>)>>,
    chosen: BTreeMap<NodeId, Vote>,
}

impl Tally {
    /// Records that `acceptor` accepted `value` for instance `rm` in `ballot`, and returns
    /// the instance's value if this made it chosen (F+1 acceptors, one ballot).
    pub fn record(
        &mut self,
        descriptor: &TxnDescriptor,
        acceptor: NodeId,
        rm: NodeId,
        ballot: Ballot,
        value: Vote,
    ) -> Option<Vote> {
        if !descriptor.is_acceptor(acceptor) || !descriptor.is_participant(rm) {
            return None;
        }
        let per_ballot = self.accepted.entry(rm).or_default();
        let (recorded_value, acceptors) = per_ballot
            .entry(ballot)
            .or_insert_with(|| (value, BTreeSet::new()));
        if *recorded_value != value {
            // Two values in one ballot: impossible unless a peer broke the protocol; the
            // first one stays (an invariant checker reports the conflict).
            return None;
        }
        acceptors.insert(acceptor);
        if acceptors.len() >= descriptor.quorum() && !self.chosen.contains_key(&rm) {
            self.chosen.insert(rm, value);
            return Some(value);
        }
        None
    }

    /// The chosen value of each instance known so far.
    pub fn chosen(&self) -> &BTreeMap<NodeId, Vote> {
        &self.chosen
    }

    /// True if some Phase2b for instance `rm` arrived (the RM voted or was recovered).
    pub fn heard_from(&self, rm: NodeId) -> bool {
        self.accepted.contains_key(&rm)
    }

    /// The outcome, once known: Abort as soon as any instance chose Aborted, Commit once
    /// every instance chose Prepared (TCommit.tla `canCommit` / `notCommitted`).
    pub fn outcome(&self, descriptor: &TxnDescriptor) -> Option<Outcome> {
        outcome_of(descriptor, &self.chosen)
    }
}

/// The outcome implied by the chosen values: pure, shared by learners and checkers.
pub fn outcome_of(descriptor: &TxnDescriptor, chosen: &BTreeMap<NodeId, Vote>) -> Option<Outcome> {
    if chosen.values().any(|vote| *vote == Vote::Aborted) {
        return Some(Outcome::Abort);
    }
    let all_prepared = descriptor
        .participants
        .iter()
        .all(|rm| chosen.get(rm) == Some(&Vote::Prepared));
    all_prepared.then_some(Outcome::Commit)
}
