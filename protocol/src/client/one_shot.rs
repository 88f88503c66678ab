//! One-shot transactions: every operation is known at `begin`, routed to its key's owner
//! and carried in that participant's Prepare (no execution phase).

use super::{BeginError, Client, Unavailable};
use crate::message::{Message, Operation};
use crate::types::{NodeId, Time, TxnDescriptor, TxnId};
use std::collections::BTreeMap;

impl Client {
    /// Begins a one-shot transaction: routes each operation to its key's owner and sends
    /// every participant its Prepare.
    pub fn begin(&mut self, now: Time, operations: Vec<Operation>) -> Result<TxnId, BeginError> {
        if operations.is_empty() {
            return Err(BeginError::Empty);
        }
        if operations.len() > self.config.operations_max {
            return Err(BeginError::TooManyOperations {
                count: operations.len(),
                limit: self.config.operations_max,
            });
        }
        if self.txns.len() >= self.config.in_flight_max {
            return Err(BeginError::TooManyInFlight(self.txns.len()));
        }
        let mut by_owner: BTreeMap<NodeId, Vec<Operation>> = BTreeMap::new();
        for operation in operations {
            by_owner
                .entry(self.config.cluster.owner(operation.key()))
                .or_default()
                .push(operation);
        }
        let participants: Vec<NodeId> = by_owner.keys().copied().collect();
        let unavailable = participants.iter().find_map(|&node| {
            self.unavailable(node).map(|why| match why {
                Unavailable::Left => BeginError::ParticipantLeft { node },
                Unavailable::Suspected => BeginError::ParticipantSuspected { node },
            })
        });
        if let Some(error) = unavailable {
            return Err(error);
        }
        let txn = self.allocate_txn();
        let cluster = &self.config.cluster;
        // A draining participant refuses the Prepare itself (with the reason); as a mere
        // acceptor it is left out.
        let avoid = self.acceptors_to_avoid();
        let descriptor = TxnDescriptor::for_commit(
            txn,
            participants,
            |participants| cluster.choose_acceptors(txn, participants, &avoid),
            cluster.f(),
            now,
            self.config.one_phase,
        );
        let readers = by_owner
            .iter()
            .filter(|(_, operations)| operations.iter().any(Operation::is_read))
            .map(|(owner, _)| *owner)
            .collect();
        let prepares = by_owner
            .into_iter()
            .map(|(rm, operations)| {
                let prepare = Message::Prepare {
                    descriptor: descriptor.clone(),
                    operations,
                };
                (rm, prepare)
            })
            .collect();
        self.start_commit(now, descriptor, prepares, readers, Vec::new());
        Ok(txn)
    }
}
