//! One acceptor's state for one Paxos instance, and its pure transitions.
//!
//! TLA+ counterpart: `aState[rm][ac]` of PaxosCommit.tla, initially `[mbal |-> 0,
//! bal |-> -1, val |-> none]`; `bal = -1` is `accepted_ballot: None` here.

use crate::types::{Ballot, Vote};
use serde::{Deserialize, Serialize};

/// What an acceptor promised and accepted for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AcceptorState {
    /// The highest ballot promised or accepted (`mbal`).
    pub promised: Ballot,
    /// The ballot of the last accepted value (`bal`), `None` for -1.
    pub accepted_ballot: Option<Ballot>,
    /// The last accepted value (`val`), `None` for `none`.
    pub accepted_value: Option<Vote>,
}

impl Default for AcceptorState {
    fn default() -> Self {
        AcceptorState {
            promised: Ballot::ZERO,
            accepted_ballot: None,
            accepted_value: None,
        }
    }
}

/// What Phase1a did to the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromiseResult {
    /// A new, higher promise: persist before replying with Phase1b.
    Promised,
    /// The same ballot was promised already (a duplicate 1a): reply again, nothing to persist.
    AlreadyPromised,
    /// A higher ballot was promised: reject.
    Stale,
}

/// What Phase2a did to the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptResult {
    /// Accepted a new (ballot, value): persist before sending Phase2b.
    Accepted,
    /// Already accepted exactly this (ballot, value): send Phase2b again.
    Duplicate,
    /// A higher ballot was promised: reject.
    Stale,
    /// A different value for a ballot already accepted: the sender broke "one 2a per
    /// ballot". The message is ignored and reported.
    Conflicting,
}

impl AcceptorState {
    /// Phase1b: promise `ballot` if it is higher than any promise so far (PaxosCommit.tla
    /// `Phase1b`: `aState[rm][ac].mbal < bal`).
    pub fn promise(&mut self, ballot: Ballot) -> PromiseResult {
        if ballot > self.promised {
            self.promised = ballot;
            PromiseResult::Promised
        } else if ballot == self.promised && !ballot.is_zero() {
            PromiseResult::AlreadyPromised
        } else {
            PromiseResult::Stale
        }
    }

    /// Phase2b: accept `value` in `ballot` unless a higher ballot was promised
    /// (PaxosCommit.tla `Phase2b`: `aState[rm][ac].mbal <= bal`).
    pub fn accept(&mut self, ballot: Ballot, value: Vote) -> AcceptResult {
        if ballot < self.promised {
            return AcceptResult::Stale;
        }
        if self.accepted_ballot == Some(ballot) {
            return if self.accepted_value == Some(value) {
                AcceptResult::Duplicate
            } else {
                AcceptResult::Conflicting
            };
        }
        self.promised = ballot;
        self.accepted_ballot = Some(ballot);
        self.accepted_value = Some(value);
        AcceptResult::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn ballot(round: u32, leader: u64) -> Ballot {
        Ballot {
            round,
            leader: NodeId(leader),
        }
    }

    #[test]
    fn fresh_acceptor_accepts_ballot_zero_without_phase1() {
        let mut state = AcceptorState::default();
        assert_eq!(
            state.accept(Ballot::ZERO, Vote::Prepared),
            AcceptResult::Accepted
        );
        assert_eq!(
            state.accept(Ballot::ZERO, Vote::Prepared),
            AcceptResult::Duplicate
        );
        assert_eq!(
            state.accept(Ballot::ZERO, Vote::Aborted),
            AcceptResult::Conflicting
        );
    }

    #[test]
    fn promise_blocks_lower_ballots_paxos_commit_phase2b_guard() {
        let mut state = AcceptorState::default();
        assert_eq!(state.promise(ballot(1, 7)), PromiseResult::Promised);
        assert_eq!(
            state.accept(Ballot::ZERO, Vote::Prepared),
            AcceptResult::Stale
        );
        assert_eq!(state.promise(ballot(1, 3)), PromiseResult::Stale);
        assert_eq!(state.promise(ballot(1, 7)), PromiseResult::AlreadyPromised);
        assert_eq!(
            state.accept(ballot(1, 7), Vote::Aborted),
            AcceptResult::Accepted
        );
        assert!(crate::invariants::acceptor_state_well_formed(&state));
    }
}
