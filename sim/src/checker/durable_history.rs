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
    /// Keys whose version list is not strictly ascending (a key written at more than one
    /// RM; none expected). Their lookups scan the list; the others search it in O(log n),
    /// which keeps the check linear in the number of reads on long runs.
    unordered_keys: BTreeSet<Key>,
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
            unordered_keys: BTreeSet::new(),
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
        history.unordered_keys = history
            .versions
            .iter()
            .filter(|(_, versions)| !versions.windows(2).all(|pair| pair[0].0 < pair[1].0))
            .map(|(key, _)| key.clone())
            .collect();
        history
    }

    /// The entry of `key`'s `versions` with exactly `version`: the first in list order.
    fn version_entry<'a>(
        &self,
        key: &Key,
        versions: &'a [(Version, TxnId, Option<Value>)],
        version: Version,
    ) -> Option<&'a (Version, TxnId, Option<Value>)> {
        if self.unordered_keys.contains(key) {
            return versions
                .iter()
                .find(|(candidate, _, _)| *candidate == version);
        }
        versions
            .binary_search_by_key(&version, |(candidate, _, _)| *candidate)
            .ok()
            .and_then(|index| versions.get(index))
    }

    /// The first entry of `key`'s `versions`, in list order, with a version above
    /// `version`.
    fn entry_after<'a>(
        &self,
        key: &Key,
        versions: &'a [(Version, TxnId, Option<Value>)],
        version: Version,
    ) -> Option<&'a (Version, TxnId, Option<Value>)> {
        if self.unordered_keys.contains(key) {
            return versions
                .iter()
                .find(|(candidate, _, _)| *candidate > version);
        }
        versions.get(versions.partition_point(|(candidate, _, _)| *candidate <= version))
    }

    /// The value a read of `key` at `version` must have seen, if that version exists.
    pub fn value_at(&self, key: &Key, version: Version) -> Option<Option<&Value>> {
        if version == Version(0) {
            return Some(None);
        }
        let versions = self.versions.get(key)?;
        self.version_entry(key, versions, version)
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
                    match self.version_entry(key, versions, *version) {
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
                if let Some((_, next_writer, _)) = self.entry_after(key, versions, *version) {
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

    /// A committed transaction for a test: its id, the keys it wrote, the (key, version)
    /// pairs it read.
    type Committed<'a> = (TxnId, &'a [&'a str], &'a [(&'a str, u64)]);

    /// A node history where each `(txn, writes, reads)` voted Prepared and committed, in
    /// order (so each got the next version).
    fn committed(entries: &[Committed]) -> NodeHistory {
        let mut history = NodeHistory::default();
        for (txn, writes, reads) in entries {
            history.apply(HistoryEntry::Vote {
                txn: *txn,
                vote: Vote::Prepared,
                writes: writes
                    .iter()
                    .map(|key| (Key::new(*key), Some(Value::new(b"v".to_vec()))))
                    .collect(),
                read_versions: reads
                    .iter()
                    .map(|(key, version)| (Key::new(*key), Version(*version)))
                    .collect(),
            });
            history.apply(HistoryEntry::Outcome {
                txn: *txn,
                outcome: Outcome::Commit,
            });
        }
        history
    }

    fn violations_of(nodes: Vec<(u64, NodeHistory)>) -> Vec<Violation> {
        let history = ClusterHistory::from_nodes(
            nodes
                .into_iter()
                .map(|(node, history)| (NodeId(node), history))
                .collect(),
        );
        history.check(&BTreeSet::new(), &BTreeMap::new()).violations
    }

    #[test]
    fn streamed_history_finds_a_read_write_cycle_on_an_ordered_key() {
        // txn 1 writes b (version 1) and reads b at version 2, which txn 2 wrote after it:
        // 1 -> 2 (write order) and 2 -> 1 (read from): a cycle.
        let node = committed(&[(txn(1), &["b"], &[("b", 2)]), (txn(2), &["b"], &[])]);
        let found = violations_of(vec![(1, node)]);
        assert!(
            found
                .iter()
                .any(|violation| matches!(violation, Violation::Serializability { .. })),
            "{found:?}"
        );
        let clean = committed(&[(txn(1), &["b"], &[]), (txn(2), &["b"], &[("b", 1)])]);
        assert!(violations_of(vec![(1, clean)]).is_empty());
    }

    #[test]
    fn reads_of_missing_versions_are_found_on_ordered_and_unordered_keys() {
        // Key a is written at two nodes (its version list is not ascending), key b at one.
        // Node 1 gives b versions 1 and 2 and a version 2; node 2 gives a version 1.
        let first = committed(&[(txn(1), &["b"], &[]), (txn(2), &["a", "b"], &[])]);
        let second = committed(&[(txn(5), &["a"], &[("a", 2), ("b", 3), ("a", 7)])]);
        let found = violations_of(vec![(1, first), (2, second)]);
        let missing: Vec<(String, u64)> = found
            .iter()
            .filter_map(|violation| match violation {
                Violation::ReadUncommittedVersion { key, version, .. } => {
                    Some((key.to_string(), *version))
                }
                _ => None,
            })
            .collect();
        assert_eq!(missing.len(), 2, "{found:?}");
        assert!(missing.iter().any(|(_, version)| *version == 3));
        assert!(missing.iter().any(|(_, version)| *version == 7));
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
