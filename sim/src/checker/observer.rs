//! The online checker: watches every message and decision as it happens (atomicity,
//! stable decisions, one value per instance, acceptor ballots across crashes).

use super::Violation;
use dtx_protocol::invariants;
use dtx_protocol::{
    AcceptorState, Ballot, Message, Node, NodeId, Outcome, ProbeHop, TxnId, TxnResult, Vote,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Violations kept in full; beyond this only counted.
const VIOLATIONS_KEPT_MAX: usize = 50;

/// Per value, the acceptors that sent Phase2b for it in one ballot of one instance.
type AcceptorsPerValue = Vec<(Vote, Vec<NodeId>)>;

/// Online checker state.
#[derive(Debug, Default)]
pub struct Observer {
    quorum: usize,
    violations: Vec<Violation>,
    violation_count: u64,
    /// Per transaction, what each node or client decided.
    decided: BTreeMap<TxnId, BTreeMap<NodeId, Outcome>>,
    /// Per (txn, instance, ballot): value → acceptors that sent Phase2b for it. (Hash
    /// maps here and below: only looked up, never iterated, so order reaches no output.)
    /// Per value a short list (two values at most, a few acceptors each) rather than maps
    /// that allocate a whole tree node per entry.
    accepted: HashMap<(TxnId, NodeId, Ballot), AcceptorsPerValue>,
    /// Per (txn, instance): the values chosen in some ballot.
    chosen: HashMap<(TxnId, NodeId), BTreeSet<Vote>>,
    /// Per (acceptor, txn, instance): the most the acceptor revealed of its state.
    revealed: BTreeMap<(NodeId, TxnId, NodeId), AcceptorState>,
}

impl Observer {
    /// An observer for a cluster with the given F.
    pub fn new(f: u32) -> Observer {
        Observer {
            quorum: f as usize + 1,
            ..Observer::default()
        }
    }

    /// Records a violation.
    pub fn violation(&mut self, violation: Violation) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_KEPT_MAX {
            self.violations.push(violation);
        }
    }

    /// Violations found so far (at most [`VIOLATIONS_KEPT_MAX`] in full).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// How many violations were found.
    pub fn violation_count(&self) -> u64 {
        self.violation_count
    }

    /// Watches a message a node sent.
    pub fn on_send(&mut self, from: NodeId, message: &Message) {
        match message {
            Message::Phase2b {
                txn,
                rm,
                ballot,
                value,
            } => {
                self.on_phase2b(from, *txn, *rm, *ballot, *value);
            }
            Message::Phase1b {
                txn,
                ballot,
                reports,
            } => {
                for report in reports {
                    let revealed = self.revealed.entry((from, *txn, report.rm)).or_default();
                    revealed.promised = revealed.promised.max(*ballot);
                    if report.accepted_ballot > revealed.accepted_ballot {
                        revealed.accepted_ballot = report.accepted_ballot;
                        revealed.accepted_value = report.accepted_value;
                    }
                }
            }
            _ => {}
        }
    }

    fn on_phase2b(
        &mut self,
        acceptor: NodeId,
        txn: TxnId,
        rm: NodeId,
        ballot: Ballot,
        value: Vote,
    ) {
        let per_value = self.accepted.entry((txn, rm, ballot)).or_default();
        let twice = per_value
            .iter()
            .any(|(other, acceptors)| *other != value && acceptors.contains(&acceptor));
        let index = match per_value.iter().position(|(known, _)| *known == value) {
            Some(index) => index,
            None => {
                per_value.push((value, Vec::new()));
                per_value.len() - 1
            }
        };
        let acceptors = &mut per_value[index].1;
        if !acceptors.contains(&acceptor) {
            acceptors.push(acceptor);
        }
        let quorum_reached = acceptors.len() >= self.quorum;
        if twice {
            self.violation(Violation::OneValuePerBallot {
                acceptor,
                txn,
                rm,
                ballot,
            });
        }
        if quorum_reached {
            let chosen = self.chosen.entry((txn, rm)).or_default();
            chosen.insert(value);
            if chosen.len() > 1 {
                self.violation(Violation::OneValueChosen { txn, rm, ballot });
            }
        }
        let revealed = self.revealed.entry((acceptor, txn, rm)).or_default();
        revealed.promised = revealed.promised.max(ballot);
        if Some(ballot) > revealed.accepted_ballot {
            revealed.accepted_ballot = Some(ballot);
            revealed.accepted_value = Some(value);
        }
    }

    /// Watches a node (or client) deciding.
    pub fn on_decided(&mut self, who: NodeId, txn: TxnId, outcome: Outcome) {
        let outcomes = self.decided.entry(txn).or_default();
        let earlier = outcomes.insert(who, outcome);
        let inconsistent = (!invariants::tc_consistent(outcomes)).then(|| outcomes.clone());
        if !invariants::decision_stable(earlier, Some(outcome)) {
            self.violation(Violation::DecisionStable { who, txn, outcome });
        }
        if let Some(outcomes) = inconsistent {
            self.violation(Violation::TcConsistent { txn, outcomes });
        }
    }

    /// Watches a client's result.
    pub fn on_client_finished(&mut self, client: NodeId, txn: TxnId, result: &TxnResult) {
        match result {
            TxnResult::Committed { .. } => self.on_decided(client, txn, Outcome::Commit),
            // A refusal is reported only for a transaction that did not commit.
            TxnResult::Aborted { .. } | TxnResult::Refused(_) => {
                self.on_decided(client, txn, Outcome::Abort)
            }
            TxnResult::Unknown => {}
        }
    }

    /// Checks a restarted node against what it revealed before its crash.
    pub fn after_restart(&mut self, node: &Node) {
        let id = node.id();
        let start = (
            id,
            TxnId {
                client: NodeId(0),
                sequence: 0,
            },
            NodeId(0),
        );
        let end = (
            NodeId(id.0 + 1),
            TxnId {
                client: NodeId(0),
                sequence: 0,
            },
            NodeId(0),
        );
        let mut problems = Vec::new();
        for ((_, txn, rm), revealed) in self.revealed.range(start..end) {
            if node.known_outcome(*txn).is_some() {
                continue;
            }
            let state = node.acceptor_state(*txn, *rm).unwrap_or_default();
            if !invariants::acceptor_step_monotonic(revealed, &state) {
                problems.push(Violation::AcceptorBallotsMonotonic {
                    acceptor: id,
                    txn: *txn,
                    rm: *rm,
                    revealed: *revealed,
                    recovered: state,
                });
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    /// Deadlock soundness: a victim must be on a real cycle of the global wait-for graph
    /// `edges` (waiter to blockers) at the moment it is aborted. False for a phantom, which
    /// is a violation only when `fault_free` (faults can leave a probe's cycle stale).
    pub fn on_deadlock_victim(
        &mut self,
        victim: TxnId,
        cycle: &[ProbeHop],
        edges: &BTreeMap<TxnId, BTreeSet<TxnId>>,
        fault_free: bool,
    ) -> bool {
        let on_cycle = reaches(edges, victim, victim);
        if !on_cycle && fault_free {
            self.violation(Violation::DeadlockSoundness {
                victim,
                cycle: cycle.iter().map(|hop| hop.txn.to_string()).collect(),
            });
        }
        on_cycle
    }

    /// Transactions that anyone decided Commit.
    pub fn committed(&self) -> BTreeSet<TxnId> {
        self.decided
            .iter()
            .filter(|(_, outcomes)| outcomes.values().any(|outcome| *outcome == Outcome::Commit))
            .map(|(txn, _)| *txn)
            .collect()
    }
}

/// True if `to` is reachable from `from` by at least one edge.
fn reaches(edges: &BTreeMap<TxnId, BTreeSet<TxnId>>, from: TxnId, to: TxnId) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<TxnId> = edges.get(&from).into_iter().flatten().copied().collect();
    while let Some(next) = stack.pop() {
        if next == to {
            return true;
        }
        if seen.insert(next) {
            stack.extend(edges.get(&next).into_iter().flatten().copied());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(sequence: u64) -> TxnId {
        TxnId {
            client: NodeId(1),
            sequence,
        }
    }

    #[test]
    fn observer_flags_mixed_outcomes() {
        let mut observer = Observer::new(1);
        observer.on_decided(NodeId(1), txn(1), Outcome::Commit);
        observer.on_decided(NodeId(2), txn(1), Outcome::Abort);
        assert_eq!(observer.violation_count(), 1);
    }

    #[test]
    fn observer_flags_two_chosen_values() {
        let mut observer = Observer::new(1);
        let b1 = Ballot {
            round: 1,
            leader: NodeId(9),
        };
        for acceptor in [1, 2] {
            observer.on_phase2b(
                NodeId(acceptor),
                txn(1),
                NodeId(1),
                Ballot::ZERO,
                Vote::Prepared,
            );
        }
        assert_eq!(observer.violation_count(), 0);
        for acceptor in [2, 3] {
            observer.on_phase2b(NodeId(acceptor), txn(1), NodeId(1), b1, Vote::Aborted);
        }
        assert!(observer
            .violations()
            .iter()
            .any(|violation| matches!(violation, Violation::OneValueChosen { .. })));
    }
}
