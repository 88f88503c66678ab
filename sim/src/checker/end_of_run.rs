//! The end-of-run judgement. After the final phase (every fault healed, a power cut on
//! every node, restart, settle) the world hands over what it holds; this module decides
//! what that evidence shows: liveness, durability across the power cut, the checks on the
//! durable history, the values clients read, and bank conservation.

use super::{ClusterHistory, NodeHistory, Violation};
use crate::workload::parse_balance;
use dtx_protocol::{Key, NodeId, ReadResult, TxnId, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Keys named when a node's store lost data across the power cut (the rest are counted
/// by the fact that there is a violation at all).
const LOST_KEYS_SHOWN_MAX: usize = 5;

/// Everything the world hands the checker at the end of a run.
#[derive(Debug)]
pub struct EndOfRun<'a> {
    /// Transactions still undecided somewhere when the final phase ended.
    pub undecided: u64,
    /// Each node's store just before the final power cut, in node order.
    pub stores_before_power_cut: Option<Vec<BTreeMap<Key, Value>>>,
    /// Each node's store after the power cut, the restart and settling, in node order.
    pub stores_after_recovery: Vec<BTreeMap<Key, Value>>,
    /// Each node's committed history, built from its whole durable log (including the
    /// records checkpoints compacted away) as the records became durable.
    pub histories: BTreeMap<NodeId, NodeHistory>,
    /// Transactions anyone decided Commit.
    pub committed: BTreeSet<TxnId>,
    /// Each transaction's participants.
    pub participants: &'a BTreeMap<TxnId, Vec<NodeId>>,
    /// The reads clients were told of, per committed transaction.
    pub client_reads: &'a [(TxnId, Vec<ReadResult>)],
    /// For a bank workload: its accounts and the total they must hold.
    pub bank: Option<Bank<'a>>,
}

/// A bank workload's accounts and the money that must be in them.
#[derive(Debug)]
pub struct Bank<'a> {
    /// The accounts.
    pub accounts: &'a [Key],
    /// The total over all accounts.
    pub total: i64,
}

/// Judges the end of a run; the violations come in the order the checks run.
pub fn judge_end_of_run(end: EndOfRun) -> Vec<Violation> {
    let mut violations = Vec::new();
    if end.undecided > 0 {
        violations.push(Violation::UndecidedAfterFinalRecovery {
            count: end.undecided,
        });
    }
    if let Some(before) = &end.stores_before_power_cut {
        for (index, values) in before.iter().enumerate() {
            let empty = BTreeMap::new();
            let after = end.stores_after_recovery.get(index).unwrap_or(&empty);
            if values != after {
                let keys: Vec<Key> = values
                    .iter()
                    .filter(|(key, value)| after.get(*key) != Some(value))
                    .map(|(key, _)| key.clone())
                    .take(LOST_KEYS_SHOWN_MAX)
                    .collect();
                violations.push(Violation::PowerCutDurability {
                    node_number: index + 1,
                    keys,
                });
            }
        }
    }
    let history = ClusterHistory::from_nodes(end.histories);
    let report = history.check(&end.committed, end.participants);
    violations.extend(report.violations);
    for (txn, reads) in end.client_reads {
        for read in reads {
            match history.value_at(&read.key, read.version) {
                Some(value) if value == read.value.as_ref() => {}
                other => violations.push(Violation::ClientReadValue {
                    txn: *txn,
                    key: read.key.clone(),
                    value: read.value.clone(),
                    version: read.version.0,
                    held: other.map(|value| value.cloned()),
                }),
            }
        }
    }
    if let Some(bank) = &end.bank {
        let finals = history.final_values();
        let mut total = 0;
        for key in bank.accounts {
            match finals.get(key).copied().flatten().and_then(parse_balance) {
                Some(balance) => total += balance,
                None => violations.push(Violation::BankAccountMissing { key: key.clone() }),
            }
        }
        if total != bank.total {
            violations.push(Violation::BankConservation {
                total,
                expected: bank.total,
            });
        }
    }
    violations
}
