//! The RM's resource: what holds the data a vote is about. The built-in key-value store
//! answers at once, inside the step; a service (embedded, over HTTP, a database) answers
//! later, through the runtime: the node yields [`ResourceRequest`]s as
//! [`super::Output::Resource`] and takes the answers as `Input::Resource*`.
//!
//! The rules (WHITEPAPER, "Participants"):
//! - Prepare: before the request leaves, a `ResourcePrepare` record is durable, so a node
//!   that crashes while the service prepares knows after restart that it must roll it back.
//!   The service's answer becomes the RM's vote, persisted before Phase2a as always.
//! - After the decision (durable), commit or rollback is asked and re-asked with backoff
//!   until acknowledged; the acknowledgment is recorded. A transaction whose prepare was
//!   asked stays in the node's memory (and checkpoint) until then, whatever the outcome
//!   window forgets.
//! - Restart: every decided, unacknowledged transaction is asked again; the service's
//!   prepared list is asked once, and each one the log holds no durable vote for is
//!   rolled back (that vote never left the node, so its instance can only choose Aborted),
//!   each one whose outcome is known gets it, and the rest stay in doubt until the
//!   acceptors answer. Until the list is answered, new prepares are refused.

use super::outbox::Gates;
use super::{Node, RmPart};
use crate::bugs::Bug;
use crate::message::{AbortReason, Operation};
use crate::record::Record;
use crate::types::{Outcome, Time, TxnDescriptor, TxnId, Vote};
use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the RM's local resource is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// The built-in key-value store: answers within the step (locks, versions, reads).
    #[default]
    BuiltIn,
    /// A service that answers through the runtime ([`ResourceRequest`]). The node takes no
    /// locks and runs no operation itself: isolation is the service's business.
    External,
}

/// What the node asks its external resource to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceRequest {
    /// Prepare `txn`'s operations: make the tentative change durable, or refuse. Answer
    /// exactly once with `Input::ResourceVoted` (a runtime that gives up on an unreachable
    /// service answers `Err(AbortReason::ServiceUnavailable)`).
    Prepare {
        /// The transaction.
        txn: TxnId,
        /// Its operations at this node, in order.
        operations: Vec<Operation>,
    },
    /// Make `txn`'s outcome final at the resource: commit or roll back. Answer with
    /// `Input::ResourceDone` once acknowledged; on failure answer nothing (the node asks
    /// again after a backoff).
    Finish {
        /// The transaction.
        txn: TxnId,
        /// What to do.
        outcome: Outcome,
    },
    /// List the transactions the resource holds prepared (asked at restart). Answer with
    /// `Input::ResourceHolds`; on failure answer nothing (asked again).
    ListPrepared,
}

/// What a node's external resource is doing now: what `dtx status` and the metrics show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceStatus {
    /// Prepares asked and not answered.
    pub preparing: usize,
    /// Decided transactions whose commit or rollback the resource has not acknowledged
    /// (in doubt at the service until it does).
    pub unacknowledged: usize,
    /// True until the resource answered the restart's prepared list.
    pub settling: bool,
}

/// A decided transaction whose commit or rollback the resource has not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Owed {
    /// What the resource must apply.
    pub(super) outcome: Outcome,
    /// When to ask (again).
    pub(super) deadline: Time,
    /// Asks so far (for the backoff).
    pub(super) attempts: u32,
}

/// The restart's question to the resource, until answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Settling {
    /// When to ask (again).
    pub(super) deadline: Time,
    /// Asks so far (for the backoff).
    pub(super) attempts: u32,
}

/// What the node keeps about its external resource (empty with the built-in store).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct ResourceState {
    /// Transactions whose prepare was asked (a `ResourcePrepare` record is durable or
    /// staged) and whose outcome this node does not know yet. Bounded with `owed` by
    /// `Limits::open_transactions_max` (new prepares are refused past it).
    pub(super) asked: BTreeSet<TxnId>,
    /// Decided transactions the resource has not acknowledged.
    pub(super) owed: BTreeMap<TxnId, Owed>,
    /// `owed`'s deadlines, in order.
    pub(super) owed_deadlines: BTreeSet<(Time, TxnId)>,
    /// `Some` from a restart until the resource listed what it holds prepared.
    pub(super) settling: Option<Settling>,
    /// Requests staged by this step (they leave with this step's sends).
    pub(super) staged: Vec<ResourceRequest>,
}

impl Node {
    /// True when the RM's resource answers through the runtime.
    pub(super) fn has_external_resource(&self) -> bool {
        self.config.resource == ResourceKind::External
    }

    /// Why an external resource cannot take a new prepare of `txn` now, if it cannot.
    pub(super) fn resource_refusal(&self, txn: TxnId) -> Option<AbortReason> {
        let resource = &self.resource;
        if resource.settling.is_some() {
            return Some(AbortReason::ResourceRecovering);
        }
        if resource.owed.contains_key(&txn) {
            // A rollback of it is on its way (a restart found its prepare without a vote):
            // a new prepare could overtake the rollback at the service and be undone by
            // it after voting Prepared. Its instance can only choose Aborted anyway.
            return Some(AbortReason::AlreadyFinished);
        }
        let open = resource.asked.len().saturating_add(resource.owed.len());
        if open >= self.config.limits.open_transactions_max {
            return Some(AbortReason::Overloaded { open: open as u64 });
        }
        None
    }

    /// Asks the external resource to prepare `txn`'s operations; the vote follows its
    /// answer (`on_resource_voted`). The `ResourcePrepare` record is durable before the
    /// request leaves, so a crash while the service prepares ends in a rollback there.
    pub(super) fn ask_prepare(
        &mut self,
        now: Time,
        descriptor: &TxnDescriptor,
        operations: Vec<Operation>,
    ) {
        let txn = descriptor.txn;
        self.stage_record(Record::ResourcePrepare { txn }, Gates::Sends);
        self.resource.asked.insert(txn);
        self.entry(now, descriptor).resource_preparing = true;
        self.resource
            .staged
            .push(ResourceRequest::Prepare { txn, operations });
        if self.config.bugs.has(Bug::VoteBeforeResource) {
            // The bug: the RM votes Prepared before its resource answered; a refusal (or a
            // crash of the service) then leaves a Prepared vote with nothing behind it.
            self.on_resource_voted(now, txn, Ok(()));
        }
    }

    /// The resource's vote for `txn` becomes the RM's (the same path the built-in store's
    /// immediate answer takes). Duplicate and late answers change nothing.
    pub(super) fn on_resource_voted(
        &mut self,
        now: Time,
        txn: TxnId,
        vote: Result<(), AbortReason>,
    ) {
        let Some(entry) = self.txns.get_mut(&txn) else {
            return;
        };
        if !entry.resource_preparing || entry.rm.is_some() {
            return;
        }
        entry.resource_preparing = false;
        let descriptor = entry.descriptor.clone();
        let rm = match vote {
            Ok(()) => RmPart {
                vote: Vote::Prepared,
                reason: None,
                writes: Vec::new(),
                locks: Vec::new(),
                reads: Some(Vec::new()),
                client_has_reads: false,
            },
            Err(reason) => RmPart::aborted(reason, false),
        };
        self.finish_vote(now, &descriptor, rm);
    }

    /// `txn` is decided here: if its prepare was asked, its outcome is now owed to the
    /// resource (asked at once, after the outcome record is durable).
    pub(super) fn owe_outcome(&mut self, txn: TxnId, outcome: Outcome) {
        if !self.resource.asked.remove(&txn) {
            return;
        }
        self.owe(txn, outcome, Time::ZERO);
    }

    fn owe(&mut self, txn: TxnId, outcome: Outcome, deadline: Time) {
        let resource = &mut self.resource;
        if let Some(old) = resource.owed.insert(
            txn,
            Owed {
                outcome,
                deadline,
                attempts: 0,
            },
        ) {
            resource.owed_deadlines.remove(&(old.deadline, txn));
        }
        resource.owed_deadlines.insert((deadline, txn));
    }

    /// The resource acknowledged `txn`'s outcome: nothing more is owed (recorded, so a
    /// restart does not ask again; nothing waits for the record).
    pub(super) fn on_resource_done(&mut self, txn: TxnId, outcome: Outcome) {
        let resource = &mut self.resource;
        if resource
            .owed
            .get(&txn)
            .is_none_or(|owed| owed.outcome != outcome)
        {
            return;
        }
        if let Some(owed) = resource.owed.remove(&txn) {
            resource.owed_deadlines.remove(&(owed.deadline, txn));
        }
        self.stage_record(Record::ResourceDone { txn }, Gates::Nothing);
    }

    /// The resource's prepared list after a restart: roll back what the log holds no vote
    /// for (no vote of it ever left this node, so its instance can only choose Aborted),
    /// finish what is decided, leave the rest in doubt for the acceptors to settle.
    pub(super) fn on_resource_holds(&mut self, prepared: Vec<TxnId>) {
        if self.resource.settling.take().is_none() {
            return;
        }
        for txn in prepared {
            if self.resource.owed.contains_key(&txn) {
                continue;
            }
            if self.txns.get(&txn).is_some_and(|entry| entry.rm.is_some()) {
                // In doubt: its vote is durable, the acceptors decide.
                self.resource.asked.insert(txn);
                continue;
            }
            let outcome = self
                .outcomes
                .get(&txn)
                .map_or(Outcome::Abort, |kept| kept.outcome);
            self.owe(txn, outcome, Time::ZERO);
        }
    }

    /// The restart step for an external resource: every prepare asked without a durable
    /// vote is rolled back, and the resource is asked what it holds prepared.
    pub(super) fn restart_resource(&mut self, now: Time) {
        if !self.has_external_resource() {
            return;
        }
        let unvoted: Vec<TxnId> = self
            .resource
            .asked
            .iter()
            .filter(|txn| self.txns.get(txn).is_none_or(|entry| entry.rm.is_none()))
            .copied()
            .collect();
        for txn in unvoted {
            self.resource.asked.remove(&txn);
            self.owe(txn, Outcome::Abort, Time::ZERO);
        }
        self.resource.settling = Some(Settling {
            deadline: now,
            attempts: 0,
        });
    }

    /// Asks the resource whatever is due: owed outcomes and the restart's prepared list,
    /// each again after a capped exponential backoff until answered.
    pub(super) fn ask_resource_due(&mut self, now: Time) {
        if let Some(settling) = &mut self.resource.settling {
            if settling.deadline <= now {
                settling.attempts = settling.attempts.saturating_add(1);
                let wait = retry_wait(&self.config, settling.attempts);
                settling.deadline = now.saturating_add(wait);
                self.resource.staged.push(ResourceRequest::ListPrepared);
            }
        }
        while let Some((deadline, txn)) = self.resource.owed_deadlines.first().copied() {
            if deadline > now {
                break;
            }
            self.resource.owed_deadlines.remove(&(deadline, txn));
            let Some(owed) = self.resource.owed.get_mut(&txn) else {
                continue;
            };
            owed.attempts = owed.attempts.saturating_add(1);
            let next = now.saturating_add(retry_wait(&self.config, owed.attempts));
            owed.deadline = next;
            let outcome = owed.outcome;
            self.resource.owed_deadlines.insert((next, txn));
            self.resource
                .staged
                .push(ResourceRequest::Finish { txn, outcome });
        }
    }

    /// The earliest time the resource must be asked something.
    pub(super) fn resource_timeout(&self) -> Option<Time> {
        let owed = self.resource.owed_deadlines.first().map(|(time, _)| *time);
        let settling = self.resource.settling.as_ref().map(|s| s.deadline);
        owed.into_iter().chain(settling).min()
    }

    /// What the external resource is doing now (all zero with the built-in store).
    pub fn resource_status(&self) -> ResourceStatus {
        let preparing = self
            .resource
            .asked
            .iter()
            .filter(|txn| {
                self.txns
                    .get(txn)
                    .is_some_and(|entry| entry.resource_preparing)
            })
            .count();
        ResourceStatus {
            preparing,
            unacknowledged: self.resource.owed.len(),
            settling: self.resource.settling.is_some(),
        }
    }

    /// Decided transactions the resource has not acknowledged, with their outcomes.
    pub fn resource_unacknowledged(&self) -> impl Iterator<Item = (TxnId, Outcome)> + '_ {
        self.resource
            .owed
            .iter()
            .map(|(txn, owed)| (*txn, owed.outcome))
    }

    /// Replays a resource record (see `recovery`).
    pub(super) fn replay_resource(&mut self, record: Record) {
        match record {
            Record::ResourcePrepare { txn } if !self.outcomes.contains_key(&txn) => {
                self.resource.asked.insert(txn);
            }
            Record::ResourceDone { txn } => {
                if let Some(owed) = self.resource.owed.remove(&txn) {
                    self.resource.owed_deadlines.remove(&(owed.deadline, txn));
                }
            }
            Record::ResourceOwed { outcomes } => {
                for (txn, outcome) in outcomes {
                    self.resource.asked.remove(&txn);
                    self.owe(txn, outcome, Time::ZERO);
                }
            }
            _ => {}
        }
    }

    /// The resource's part of a checkpoint: asked prepares and owed outcomes.
    pub(super) fn checkpoint_resource(&self, records: &mut Vec<Record>) {
        for txn in &self.resource.asked {
            records.push(Record::ResourcePrepare { txn: *txn });
        }
        let owed: Vec<(TxnId, Outcome)> = self.resource_unacknowledged().collect();
        for chunk in owed.chunks(crate::record::OUTCOMES_PER_RECORD_MAX) {
            records.push(Record::ResourceOwed {
                outcomes: chunk.to_vec(),
            });
        }
    }
}

/// The wait before ask number `attempts + 1`: `resource_retry` doubled per attempt,
/// capped at `resource_retry_max`.
fn retry_wait(config: &super::NodeConfig, attempts: u32) -> Duration {
    let grown = config
        .resource_retry
        .saturating_mul(1 << attempts.saturating_sub(1).min(16));
    grown.min(config.resource_retry_max.max(config.resource_retry))
}
