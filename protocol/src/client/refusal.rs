//! A data node's runtime refused to serve this client ([`Message::Refused`]): how the
//! refusal ends a transaction (see [`TxnResult::Refused`]), and the bounded memory of
//! refused transactions that lets a later `execute` or `commit` say why it is over.
//!
//! [`Message::Refused`]: crate::message::Message::Refused

use super::commit::nobody_left_to_ask;
use super::{Client, ExecuteError, TxnResult};
use crate::message::{Message, Refusal};
use crate::types::{NodeId, Time, TxnId};

/// Refused transactions remembered, so that a later `execute` or `commit` of one says
/// why it is over rather than that it is unknown.
pub const REFUSED_REMEMBERED_MAX: usize = 1024;

impl Client {
    /// Why `txn` cannot take another operation or commit: refused, or not executing.
    pub(super) fn not_executing(&self, txn: TxnId) -> ExecuteError {
        match self.refused.get(&txn) {
            Some(refusal) => ExecuteError::Refused(*refusal),
            None => ExecuteError::NotExecuting(txn),
        }
    }

    /// A data node refused a message of `txn` (see [`TxnResult::Refused`]).
    pub(super) fn on_refused(&mut self, now: Time, from: NodeId, txn: TxnId, refusal: Refusal) {
        if !self.config.cluster.is_member(from) {
            return;
        }
        let executing_there = self
            .interactive
            .get(&txn)
            .is_some_and(|state| state.rms.contains_key(&from));
        if executing_there {
            // Nothing is prepared before commit: ending it is always safe.
            self.remember_refused(txn, refusal);
            return self.end_interactive(now, txn, TxnResult::Refused(refusal), Some(from));
        }
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        let first_prepare_refused = state.retries == 0
            && matches!(state.prepares.get(&from), Some(Message::Prepare { .. }));
        if first_prepare_refused {
            self.remember_refused(txn, refusal);
            return self.finish(now, txn, TxnResult::Refused(refusal), Some(from));
        }
        state.refused.get_or_insert(refusal);
        state.refused_by.insert(from);
        if state.outcome.is_none() && nobody_left_to_ask(state) {
            // No node will answer another retry: say so now (see `Client::retry`).
            self.finish(now, txn, TxnResult::Unknown, None);
        }
    }

    fn remember_refused(&mut self, txn: TxnId, refusal: Refusal) {
        if self.refused.insert(txn, refusal).is_none() {
            self.refused_order.push_back(txn);
        }
        while self.refused_order.len() > REFUSED_REMEMBERED_MAX {
            if let Some(oldest) = self.refused_order.pop_front() {
                self.refused.remove(&oldest);
            }
        }
    }
}
