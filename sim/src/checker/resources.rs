//! Service participants at the end of a run: after every fault healed and every
//! transaction was decided (before the final power cut, whose restarts would settle a
//! service's leftovers and hide them), each service must hold exactly the outcome the
//! cluster decided: committed for the committed transactions, rolled back (or refused, or
//! never prepared) for the others, nothing still prepared; and its stock must add up:
//! never negative, never more held than there was.

use super::Violation;
use dtx_protocol::{Key, NodeId, Outcome, TxnId};
use std::collections::{BTreeMap, BTreeSet};

/// What a simulated service durably holds for one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServiceHold {
    /// Prepared: its reservations are held until commit or rollback.
    Prepared {
        /// Units held per item.
        reserved: Vec<(Key, u64)>,
    },
    /// Committed: its reservations are sold.
    Committed {
        /// Units sold per item.
        reserved: Vec<(Key, u64)>,
    },
    /// Rolled back (also remembered for a transaction the service never prepared).
    RolledBack,
    /// Prepare refused: nothing held.
    Refused,
}

impl ServiceHold {
    /// The name the violations show.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceHold::Prepared { .. } => "prepared",
            ServiceHold::Committed { .. } => "committed",
            ServiceHold::RolledBack => "rolled back",
            ServiceHold::Refused => "refused",
        }
    }
}

/// One service's durable state at the end of the liveness phase.
#[derive(Clone, Debug)]
pub struct ServiceEvidence {
    /// The service's data node.
    pub node: NodeId,
    /// What it holds per transaction.
    pub holds: BTreeMap<TxnId, ServiceHold>,
    /// Each item's initial stock.
    pub stock: BTreeMap<Key, u64>,
    /// Each item's stock left as the service counts it (stock minus held and sold).
    pub available: BTreeMap<Key, i64>,
    /// Requests the contract says a node never sends (e.g. commit of a transaction the
    /// service never prepared), as the service saw them.
    pub anomalies: Vec<(TxnId, String)>,
}

/// Judges the services against the cluster's decisions. `committed`: transactions some
/// node or client decided Commit; `participants`: each transaction's participants.
pub fn judge_resources(
    services: &[ServiceEvidence],
    committed: &BTreeSet<TxnId>,
    participants: &BTreeMap<TxnId, Vec<NodeId>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for service in services {
        let node = service.node;
        let called: BTreeSet<TxnId> = participants
            .iter()
            .filter(|(_, nodes)| nodes.contains(&node))
            .map(|(txn, _)| *txn)
            .chain(service.holds.keys().copied())
            .collect();
        for txn in called {
            let hold = service.holds.get(&txn);
            let decided = if committed.contains(&txn) {
                Outcome::Commit
            } else {
                Outcome::Abort
            };
            let consistent = match (decided, hold) {
                (Outcome::Commit, Some(ServiceHold::Committed { .. })) => true,
                (Outcome::Commit, _) => false,
                (Outcome::Abort, Some(ServiceHold::Committed { .. })) => false,
                // Still prepared is reported above.
                (Outcome::Abort, _) => true,
            };
            if !consistent {
                violations.push(Violation::ResourceOutcome {
                    node,
                    txn,
                    decided,
                    held: hold.map_or("nothing", ServiceHold::name).to_string(),
                });
            }
        }
        for (txn, hold) in &service.holds {
            if let ServiceHold::Prepared { .. } = hold {
                violations.push(Violation::ResourceStillPrepared { node, txn: *txn });
            }
        }
        let mut held: BTreeMap<&Key, u64> = BTreeMap::new();
        for hold in service.holds.values() {
            if let ServiceHold::Prepared { reserved } | ServiceHold::Committed { reserved } = hold {
                for (item, units) in reserved {
                    *held.entry(item).or_default() += units;
                }
            }
        }
        for (item, stock) in &service.stock {
            let taken = held.get(item).copied().unwrap_or(0);
            let available = service.available.get(item).copied().unwrap_or(0);
            let expected = *stock as i64 - taken as i64;
            if taken > *stock || available < 0 || available != expected {
                violations.push(Violation::ResourceInventory {
                    node,
                    item: item.clone(),
                    stock: *stock,
                    taken,
                    available,
                });
            }
        }
        for (txn, what) in &service.anomalies {
            violations.push(Violation::ResourceContract {
                node,
                txn: *txn,
                what: what.clone(),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(sequence: u64) -> TxnId {
        TxnId {
            client: NodeId(1_000_000),
            sequence,
        }
    }

    fn service(holds: Vec<(TxnId, ServiceHold)>, available: i64) -> ServiceEvidence {
        let item = Key::new("n5/item-0");
        ServiceEvidence {
            node: NodeId(5),
            holds: holds.into_iter().collect(),
            stock: [(item.clone(), 3)].into_iter().collect(),
            available: [(item, available)].into_iter().collect(),
            anomalies: Vec::new(),
        }
    }

    fn sold(units: u64) -> ServiceHold {
        ServiceHold::Committed {
            reserved: vec![(Key::new("n5/item-0"), units)],
        }
    }

    #[test]
    fn a_service_matching_the_decisions_passes() {
        let participants = [(txn(1), vec![NodeId(5)]), (txn(2), vec![NodeId(5)])]
            .into_iter()
            .collect();
        let committed = [txn(1)].into_iter().collect();
        let evidence = service(
            vec![(txn(1), sold(2)), (txn(2), ServiceHold::RolledBack)],
            1,
        );
        assert_eq!(
            judge_resources(&[evidence], &committed, &participants),
            Vec::new()
        );
    }

    #[test]
    fn a_committed_transaction_the_service_refused_is_reported() {
        let participants = [(txn(1), vec![NodeId(5)])].into_iter().collect();
        let committed = [txn(1)].into_iter().collect();
        let evidence = service(vec![(txn(1), ServiceHold::Refused)], 3);
        let found = judge_resources(&[evidence], &committed, &participants);
        assert!(
            matches!(found.as_slice(), [Violation::ResourceOutcome { .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn a_leftover_prepare_and_an_oversold_item_are_reported() {
        let participants = BTreeMap::new();
        let committed = BTreeSet::new();
        let prepared = ServiceHold::Prepared {
            reserved: vec![(Key::new("n5/item-0"), 2)],
        };
        let evidence = service(vec![(txn(1), prepared), (txn(2), sold(2))], -1);
        let found = judge_resources(&[evidence], &committed, &participants);
        assert!(found
            .iter()
            .any(|v| matches!(v, Violation::ResourceStillPrepared { .. })));
        assert!(found
            .iter()
            .any(|v| matches!(v, Violation::ResourceInventory { .. })));
        assert!(found
            .iter()
            .any(|v| matches!(v, Violation::ResourceOutcome { .. })));
    }
}
