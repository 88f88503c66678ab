//! Checkers. Each can fail, and each names what it found.
//!
//! Online (watching every message and event as it happens):
//! * atomicity — TCommit.tla `TCConsistent` over every RM and the client;
//! * decisions never change — also across a node's crashes;
//! * one value per instance — Paxos agreement, from the Phase2b messages on the wire;
//! * acceptor ballots monotonic across crashes — what an acceptor revealed in Phase1b or
//!   Phase2b must still be in its state after a restart.
//!
//! Final (from the durable logs, after healing and a whole-cluster power cut):
//! * durability of every committed transaction at every participant;
//! * serializability — the dependency graph over versions is acyclic, and every read saw a
//!   committed version (with the value that version holds);
//! * bank conservation.

use dtx_protocol::invariants;
use dtx_protocol::{
    AcceptorState, Ballot, Key, Message, Node, NodeId, Outcome, Record, TxnId, TxnResult, Value,
    Version, Vote,
};
use std::collections::{BTreeMap, BTreeSet};

/// Violations kept in full; beyond this only counted.
const VIOLATIONS_KEPT_MAX: usize = 50;

/// Online checker state.
#[derive(Debug, Default)]
pub struct Observer {
    quorum: usize,
    violations: Vec<String>,
    violation_count: u64,
    /// Per transaction, what each node or client decided.
    decided: BTreeMap<TxnId, BTreeMap<NodeId, Outcome>>,
    /// Per (txn, instance, ballot): value → acceptors that sent Phase2b for it.
    accepted: BTreeMap<(TxnId, NodeId, Ballot), BTreeMap<Vote, BTreeSet<NodeId>>>,
    /// Per (txn, instance): the values chosen in some ballot.
    chosen: BTreeMap<(TxnId, NodeId), BTreeSet<Vote>>,
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
    pub fn violation(&mut self, description: String) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_KEPT_MAX {
            self.violations.push(description);
        }
    }

    /// Violations found so far (at most [`VIOLATIONS_KEPT_MAX`] in full).
    pub fn violations(&self) -> &[String] {
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
        let acceptors = per_value.entry(value).or_default();
        acceptors.insert(acceptor);
        let quorum_reached = acceptors.len() >= self.quorum;
        if twice {
            self.violation(format!(
                "acceptor {acceptor} accepted two values for instance {rm} of {txn} in ballot {ballot}"
            ));
        }
        if quorum_reached {
            let chosen = self.chosen.entry((txn, rm)).or_default();
            chosen.insert(value);
            if chosen.len() > 1 {
                self.violation(format!(
                    "instance {rm} of {txn} chose both Prepared and Aborted (latest in ballot {ballot})"
                ));
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
        let consistent = invariants::tc_consistent(outcomes);
        let view: Vec<String> = if consistent {
            Vec::new()
        } else {
            outcomes
                .iter()
                .map(|(who, outcome)| format!("{who}={outcome}"))
                .collect()
        };
        if !invariants::decision_stable(earlier, Some(outcome)) {
            self.violation(format!("{who} changed its decision on {txn} to {outcome}"));
        }
        if !consistent {
            self.violation(format!("atomicity violated for {txn}: {}", view.join(" ")));
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
                problems.push(format!(
                    "acceptor {id} went backwards across a crash on instance {rm} of {txn}: revealed {revealed:?}, recovered {state:?}"
                ));
            }
        }
        for problem in problems {
            self.violation(problem);
        }
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

/// An RM's vote as its log recorded it: vote, writes, versions read.
type VoteSummary = (Vote, Vec<(Key, Option<Value>)>, Vec<(Key, Version)>);

/// One RM's committed transactions, rebuilt from its durable log exactly as
/// `Node::recover` applies them.
#[derive(Debug, Default)]
pub struct NodeHistory {
    /// Committed transactions in apply order, with the version each got.
    pub commits: Vec<(TxnId, Version)>,
    /// Outcome of every transaction with an Outcome record.
    pub outcomes: BTreeMap<TxnId, Outcome>,
    /// Per committed transaction: its writes.
    pub writes: BTreeMap<TxnId, Vec<(Key, Option<Value>)>>,
    /// Per committed transaction: the versions its reads saw.
    pub reads: BTreeMap<TxnId, Vec<(Key, Version)>>,
}

impl NodeHistory {
    /// Replays a log's records.
    pub fn from_records(records: &[Record]) -> NodeHistory {
        let mut history = NodeHistory::default();
        let mut votes: BTreeMap<TxnId, VoteSummary> = BTreeMap::new();
        let mut sequence = 0;
        for record in records {
            match record {
                Record::Vote {
                    descriptor,
                    vote,
                    writes,
                    read_versions,
                    ..
                } => {
                    if !history.outcomes.contains_key(&descriptor.txn) {
                        votes.insert(
                            descriptor.txn,
                            (*vote, writes.clone(), read_versions.clone()),
                        );
                    }
                }
                Record::Outcome { txn, outcome } => {
                    if history.outcomes.insert(*txn, *outcome).is_some() {
                        continue;
                    }
                    let Some((vote, writes, reads)) = votes.remove(txn) else {
                        continue;
                    };
                    if *outcome == Outcome::Commit && vote == Vote::Prepared {
                        sequence += 1;
                        history.commits.push((*txn, Version(sequence)));
                        history.writes.insert(*txn, writes);
                        history.reads.insert(*txn, reads);
                    }
                }
                // Checkpoint records restate state; the simulator checks the history they
                // replaced (a host keeps the records its checkpoints compacted away).
                Record::Acceptor { .. }
                | Record::LeaderRound { .. }
                | Record::Snapshot { .. }
                | Record::Outcomes { .. }
                | Record::AcceptorFence { .. } => {}
            }
        }
        history
    }
}

/// What the final checks found.
#[derive(Debug, Default)]
pub struct FinalReport {
    /// Violations.
    pub violations: Vec<String>,
    /// Committed transactions in the dependency graph.
    pub graph_transactions: usize,
    /// Edges of the dependency graph.
    pub graph_edges: usize,
}

/// The committed history of the whole cluster, from every node's durable log.
#[derive(Debug)]
pub struct ClusterHistory {
    /// Per key: (version, writer, value written) in version order.
    versions: BTreeMap<Key, Vec<(Version, TxnId, Option<Value>)>>,
    /// Per committed transaction: the versions its reads saw.
    reads: BTreeMap<TxnId, Vec<(Key, Version)>>,
    /// Per transaction: outcome at each participant that recorded one.
    outcomes: BTreeMap<TxnId, BTreeMap<NodeId, Outcome>>,
}

impl ClusterHistory {
    /// Builds the cluster history from each node's records.
    pub fn build(logs: &BTreeMap<NodeId, Vec<Record>>) -> ClusterHistory {
        let mut history = ClusterHistory {
            versions: BTreeMap::new(),
            reads: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        };
        for (node, records) in logs {
            let node_history = NodeHistory::from_records(records);
            for (txn, outcome) in &node_history.outcomes {
                history
                    .outcomes
                    .entry(*txn)
                    .or_default()
                    .insert(*node, *outcome);
            }
            for (txn, version) in &node_history.commits {
                for (key, value) in node_history.writes.get(txn).into_iter().flatten() {
                    history.versions.entry(key.clone()).or_default().push((
                        *version,
                        *txn,
                        value.clone(),
                    ));
                }
                let reads = node_history.reads.get(txn).cloned().unwrap_or_default();
                history.reads.entry(*txn).or_default().extend(reads);
            }
        }
        history
    }

    /// The value a read of `key` at `version` must have seen, if that version exists.
    pub fn value_at(&self, key: &Key, version: Version) -> Option<Option<&Value>> {
        if version == Version(0) {
            return Some(None);
        }
        let versions = self.versions.get(key)?;
        versions
            .iter()
            .find(|(candidate, _, _)| *candidate == version)
            .map(|(_, _, value)| value.as_ref())
    }

    /// Runs the final checks. `committed` are the transactions anyone decided Commit;
    /// `participants` maps each to its RMs.
    pub fn check(
        &self,
        committed: &BTreeSet<TxnId>,
        participants: &BTreeMap<TxnId, Vec<NodeId>>,
    ) -> FinalReport {
        let mut report = FinalReport::default();
        self.check_durability(committed, participants, &mut report);
        self.check_serializable(&mut report);
        report
    }

    fn check_durability(
        &self,
        committed: &BTreeSet<TxnId>,
        participants: &BTreeMap<TxnId, Vec<NodeId>>,
        report: &mut FinalReport,
    ) {
        for txn in committed {
            let recorded = self.outcomes.get(txn);
            for rm in participants.get(txn).into_iter().flatten() {
                match recorded.and_then(|outcomes| outcomes.get(rm)) {
                    Some(Outcome::Commit) => {}
                    other => report.violations.push(format!(
                        "durability: {txn} committed but {rm}'s log holds {other:?} after the final power cut and recovery"
                    )),
                }
            }
        }
        for (txn, outcomes) in &self.outcomes {
            if !invariants::tc_consistent(outcomes) {
                report
                    .violations
                    .push(format!("atomicity in the durable logs: {txn} {outcomes:?}"));
            }
        }
    }

    fn check_serializable(&self, report: &mut FinalReport) {
        let mut edges: BTreeMap<TxnId, BTreeSet<TxnId>> = BTreeMap::new();
        let add = |from: TxnId, to: TxnId, edges: &mut BTreeMap<TxnId, BTreeSet<TxnId>>| {
            if from != to {
                edges.entry(from).or_default().insert(to);
                edges.entry(to).or_default();
            }
        };
        for versions in self.versions.values() {
            for pair in versions.windows(2) {
                add(pair[0].1, pair[1].1, &mut edges);
            }
        }
        for (reader, reads) in &self.reads {
            edges.entry(*reader).or_default();
            for (key, version) in reads {
                let versions = self.versions.get(key).map(Vec::as_slice).unwrap_or(&[]);
                if *version != Version(0) {
                    match versions
                        .iter()
                        .find(|(candidate, _, _)| candidate == version)
                    {
                        Some((_, writer, _)) => add(*writer, *reader, &mut edges),
                        None => {
                            report.violations.push(format!(
                                "{reader} read {key} at version {} that no committed transaction wrote",
                                version.0
                            ));
                            continue;
                        }
                    }
                }
                if let Some((_, next_writer, _)) = versions
                    .iter()
                    .find(|(candidate, _, _)| candidate > version)
                {
                    add(*reader, *next_writer, &mut edges);
                }
            }
        }
        report.graph_transactions = edges.len();
        report.graph_edges = edges.values().map(BTreeSet::len).sum();
        if let Some(cycle) = find_cycle(&edges) {
            let names: Vec<String> = cycle.iter().map(ToString::to_string).collect();
            report.violations.push(format!(
                "serializability: dependency cycle {}",
                names.join(" -> ")
            ));
        }
    }

    /// The final value of every key (for bank conservation).
    pub fn final_values(&self) -> BTreeMap<&Key, Option<&Value>> {
        self.versions
            .iter()
            .filter_map(|(key, versions)| {
                versions.last().map(|(_, _, value)| (key, value.as_ref()))
            })
            .collect()
    }
}

/// Finds a cycle in a directed graph (iterative DFS), if there is one.
pub fn find_cycle(edges: &BTreeMap<TxnId, BTreeSet<TxnId>>) -> Option<Vec<TxnId>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Grey,
        Black,
    }
    let mut color: BTreeMap<TxnId, Color> = edges.keys().map(|txn| (*txn, Color::White)).collect();
    for start in edges.keys() {
        if color[start] != Color::White {
            continue;
        }
        let mut stack: Vec<(TxnId, Vec<TxnId>)> =
            vec![(*start, edges[start].iter().copied().collect())];
        color.insert(*start, Color::Grey);
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match color.get(&next).copied().unwrap_or(Color::White) {
                    Color::Grey => {
                        let mut cycle: Vec<TxnId> = stack.iter().map(|(txn, _)| *txn).collect();
                        let from = cycle.iter().position(|txn| *txn == next).unwrap_or(0);
                        cycle.drain(..from);
                        cycle.push(next);
                        return Some(cycle);
                    }
                    Color::White => {
                        color.insert(next, Color::Grey);
                        let successors = edges
                            .get(&next)
                            .map(|set| set.iter().copied().collect())
                            .unwrap_or_default();
                        stack.push((next, successors));
                    }
                    Color::Black => {}
                },
                None => {
                    color.insert(node, Color::Black);
                    stack.pop();
                }
            }
        }
    }
    None
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
    fn cycle_is_found_and_dag_passes() {
        let mut edges: BTreeMap<TxnId, BTreeSet<TxnId>> = BTreeMap::new();
        edges.entry(txn(1)).or_default().insert(txn(2));
        edges.entry(txn(2)).or_default().insert(txn(3));
        edges.entry(txn(3)).or_default();
        assert!(find_cycle(&edges).is_none());
        edges.entry(txn(3)).or_default().insert(txn(1));
        let cycle = find_cycle(&edges).unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4);
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
            .any(|v| v.contains("chose both")));
    }
}
