//! The invariants of PaxosCommit.tla and TCommit.tla as pure functions.
//!
//! The core asserts them on its own state; the simulator and the model checker call them
//! again over the whole cluster. Each names its TLA+ counterpart.

use crate::acceptor::AcceptorState;
use crate::types::{Ballot, Outcome, Vote};
use std::collections::BTreeMap;

/// PaxosCommit.tla `TypeOK` for one acceptor: `bal <= mbal`, and `val = none <=> bal = -1`.
pub fn acceptor_state_well_formed(state: &AcceptorState) -> bool {
    let paired = state.accepted_ballot.is_some() == state.accepted_value.is_some();
    let ordered = state
        .accepted_ballot
        .is_none_or(|ballot| ballot <= state.promised);
    paired && ordered
}

/// Acceptor ballots never go backwards (also across crashes): `before` → `after` is a legal
/// step when `mbal` and `bal` did not decrease, and a value accepted in a ballot only
/// changes when the ballot grows.
pub fn acceptor_step_monotonic(before: &AcceptorState, after: &AcceptorState) -> bool {
    if after.promised < before.promised {
        return false;
    }
    match (before.accepted_ballot, after.accepted_ballot) {
        (Some(_), None) => false,
        (Some(old), Some(new)) if new < old => false,
        (Some(old), Some(new)) if new == old => before.accepted_value == after.accepted_value,
        _ => true,
    }
}

/// TCommit.tla `TCConsistent`: no RM (or client) committed while another aborted.
/// `outcomes` maps each observer to what it decided (absent: undecided).
pub fn tc_consistent<K>(outcomes: &BTreeMap<K, Outcome>) -> bool {
    let mut values = outcomes.values();
    match values.next() {
        None => true,
        Some(first) => values.all(|value| value == first),
    }
}

/// Paxos agreement for one instance: at most one value chosen over all ballots.
/// `chosen` lists (ballot, value) pairs each accepted by a quorum.
pub fn one_value_chosen(chosen: &[(Ballot, Vote)]) -> bool {
    chosen.windows(2).all(|pair| pair[0].1 == pair[1].1)
}

/// A decision once taken never changes: `earlier` and `later` agree when both are known.
pub fn decision_stable(earlier: Option<Outcome>, later: Option<Outcome>) -> bool {
    match (earlier, later) {
        (Some(first), Some(second)) => first == second,
        (Some(_), None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    #[test]
    fn tc_consistent_flags_mixed_outcomes() {
        let mut outcomes = BTreeMap::new();
        outcomes.insert(1, Outcome::Commit);
        outcomes.insert(2, Outcome::Commit);
        assert!(tc_consistent(&outcomes));
        outcomes.insert(3, Outcome::Abort);
        assert!(!tc_consistent(&outcomes));
    }

    #[test]
    fn well_formed_rejects_value_without_ballot() {
        let state = AcceptorState {
            promised: Ballot::ZERO,
            accepted_ballot: None,
            accepted_value: Some(Vote::Prepared),
        };
        assert!(!acceptor_state_well_formed(&state));
    }

    #[test]
    fn monotonic_rejects_forgotten_promise() {
        let promised = AcceptorState {
            promised: Ballot {
                round: 2,
                leader: NodeId(1),
            },
            ..AcceptorState::default()
        };
        assert!(!acceptor_step_monotonic(
            &promised,
            &AcceptorState::default()
        ));
        assert!(acceptor_step_monotonic(
            &AcceptorState::default(),
            &promised
        ));
    }

    #[test]
    fn two_chosen_values_break_agreement() {
        let one = Ballot::ZERO;
        let two = Ballot {
            round: 1,
            leader: NodeId(4),
        };
        assert!(one_value_chosen(&[
            (one, Vote::Prepared),
            (two, Vote::Prepared)
        ]));
        assert!(!one_value_chosen(&[
            (one, Vote::Prepared),
            (two, Vote::Aborted)
        ]));
    }
}
