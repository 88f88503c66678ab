//! The committed history of the cluster rebuilt from the durable logs, and the checks on
//! it: durability, atomicity in the logs, serializability.

use super::Violation;
use dtx_protocol::invariants;
use dtx_protocol::{Key, NodeId, Outcome, Record, TxnId, Value, Version, Vote};
use std::collections::{BTreeMap, BTreeSet};

/// An RM's vote as its log recorded it: vote, writes, versions read.
type VoteSummary = (Vote, Vec<(Key, Option<Value>)>, Vec<(Key, Version)>);

/// What the durable history needs of one log record: a vote's effects or an outcome.
/// Every other record (checkpoints, acceptor state, service bookkeeping) is left out.
#[derive(Debug, Clone)]
pub enum HistoryEntry {
    /// An RM's vote as its log recorded it.
    Vote {
        /// The transaction.
        txn: TxnId,
        /// The vote.
        vote: Vote,
        /// Final effect per key.
        writes: Vec<(Key, Option<Value>)>,
        /// The version each read saw.
        read_versions: Vec<(Key, Version)>,
    },
    /// A decided outcome.
    Outcome {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
    },
}

impl HistoryEntry {
    /// What the history needs of `record`, taken out of it without copying; `None` for a
    /// record the history ignores.
    pub fn from_record(record: Record) -> Option<HistoryEntry> {
        match record {
            Record::Vote {
                descriptor,
                vote,
                writes,
                read_versions,
                ..
            } => Some(HistoryEntry::Vote {
                txn: descriptor.txn,
                vote,
                writes,
                read_versions,
            }),
            Record::Outcome { txn, outcome } => Some(HistoryEntry::Outcome { txn, outcome }),
            // Checkpoint records restate state; the simulator checks the history they
            // replaced (a host feeds every record as it becomes durable, before any
            // checkpoint compacts it away).
            Record::Acceptor { .. }
            | Record::LeaderRound { .. }
            | Record::Snapshot { .. }
            | Record::Outcomes { .. }
            | Record::AcceptorFence { .. } => None,
            // A service's own data is checked by the resource checker, not here.
            Record::ResourcePrepare { .. }
            | Record::ResourceDone { .. }
            | Record::ResourceOwed { .. } => None,
        }
    }

    /// Like [`HistoryEntry::from_record`], copying out of a borrowed record.
    pub fn from_record_ref(record: &Record) -> Option<HistoryEntry> {
        match record {
            Record::Vote {
                descriptor,
                vote,
                writes,
                read_versions,
                ..
            } => Some(HistoryEntry::Vote {
                txn: descriptor.txn,
                vote: *vote,
                writes: writes.clone(),
                read_versions: read_versions.clone(),
            }),
            Record::Outcome { txn, outcome } => Some(HistoryEntry::Outcome {
                txn: *txn,
                outcome: *outcome,
            }),
            _ => None,
        }
    }
}

/// One RM's committed transactions, rebuilt from its durable log exactly as
/// `Node::recover` applies them. Built incrementally ([`NodeHistory::apply`]) as records
/// become durable, so that the simulator never has to hold or decode the whole log.
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
    /// Votes not yet followed by an Outcome record.
    votes: BTreeMap<TxnId, VoteSummary>,
    /// The version the last commit got.
    sequence: u64,
}

impl NodeHistory {
    /// Replays a log's records.
    pub fn from_records(records: &[Record]) -> NodeHistory {
        let mut history = NodeHistory::default();
        for entry in records.iter().filter_map(HistoryEntry::from_record_ref) {
            history.apply(entry);
        }
        history
    }

    /// Applies the next durable record's entry, in log order.
    pub fn apply(&mut self, entry: HistoryEntry) {
        match entry {
            HistoryEntry::Vote {
                txn,
                vote,
                writes,
                read_versions,
            } => {
                if !self.outcomes.contains_key(&txn) {
                    self.votes.insert(txn, (vote, writes, read_versions));
                }
            }
            HistoryEntry::Outcome { txn, outcome } => {
                if self.outcomes.insert(txn, outcome).is_some() {
                    return;
                }
                let Some((vote, writes, reads)) = self.votes.remove(&txn) else {
                    return;
                };
                if outcome == Outcome::Commit && vote == Vote::Prepared {
                    self.sequence += 1;
                    self.commits.push((txn, Version(self.sequence)));
                    self.writes.insert(txn, writes);
                    self.reads.insert(txn, reads);
                }
            }
        }
    }
}

/// What the final checks found.
#[derive(Debug, Default)]
pub struct FinalReport {
    /// Violations.
    pub violations: Vec<Violation>,
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
        ClusterHistory::from_nodes(
            logs.iter()
                .map(|(node, records)| (*node, NodeHistory::from_records(records)))
                .collect(),
        )
    }

    /// Builds the cluster history from each node's history (consumed).
    pub fn from_nodes(nodes: BTreeMap<NodeId, NodeHistory>) -> ClusterHistory {
        let mut history = ClusterHistory {
            versions: BTreeMap::new(),
            reads: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        };
        for (node, mut node_history) in nodes {
            for (txn, outcome) in &node_history.outcomes {
                history
                    .outcomes
                    .entry(*txn)
                    .or_default()
                    .insert(node, *outcome);
            }
            for (txn, version) in &node_history.commits {
                for (key, value) in node_history.writes.remove(txn).into_iter().flatten() {
                    history
                        .versions
                        .entry(key)
                        .or_default()
                        .push((*version, *txn, value));
                }
                let reads = node_history.reads.remove(txn).unwrap_or_default();
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
                    other => report.violations.push(Violation::Durability {
                        txn: *txn,
                        rm: *rm,
                        held: other.copied(),
                    }),
                }
            }
        }
        for (txn, outcomes) in &self.outcomes {
            if !invariants::tc_consistent(outcomes) {
                report.violations.push(Violation::DurableTcConsistent {
                    txn: *txn,
                    outcomes: outcomes.clone(),
                });
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
                            report.violations.push(Violation::ReadUncommittedVersion {
                                reader: *reader,
                                key: key.clone(),
                                version: version.0,
                            });
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
            report.violations.push(Violation::Serializability { cycle });
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
}
