//! The resource manager (RM): a Prepare (one-shot or after interactive execution) becomes
//! a durable vote, announced as the ballot-0 Phase2a of this RM's instance. Also the checks
//! a client's operations pass first: access policy, limits, key ownership, storage quota.

use super::operation::{apply_operation, PendingWrites};
use super::outbox::Gates;
use super::{bad_descriptor, reserved_bytes, Event, Node, PrepareKind, RmPart};
use crate::access::AccessPolicy;
use crate::bugs::Bug;
use crate::message::{AbortReason, Message, MessageKind, Operation, ReadResult};
use crate::record::{locks_for, LockMode, Record};
use crate::reject::RejectReason;
use crate::types::{
    Ballot, DescriptorProblem, Key, NodeId, Outcome, Time, TxnDescriptor, TxnId, Value, Vote,
};

impl Node {
    pub(super) fn on_prepare(
        &mut self,
        now: Time,
        from: NodeId,
        descriptor: TxnDescriptor,
        kind: PrepareKind,
    ) {
        let me = self.config.id;
        if from != descriptor.client() {
            return self.reject(
                from,
                RejectReason::NotFromClient {
                    message: MessageKind::Prepare,
                },
            );
        }
        if let Err(problem) = self.check_descriptor(&descriptor) {
            return self.reject(from, bad_descriptor(MessageKind::Prepare, problem));
        }
        if !descriptor.is_participant(me) {
            return self.reject(
                from,
                RejectReason::NotInRole {
                    message: MessageKind::Prepare,
                },
            );
        }
        let txn = descriptor.txn;
        if let Some(kept) = self.outcomes.get(&txn) {
            let decision = Message::Decision {
                txn,
                outcome: kept.outcome,
                reads: kept.reads.clone(),
            };
            return self.send(from, decision);
        }
        let known = self.txns.get(&txn);
        if let Some(entry) = known {
            if entry.descriptor != descriptor {
                return self.reject(
                    from,
                    bad_descriptor(MessageKind::Prepare, DescriptorProblem::DiffersFromKnown),
                );
            }
            if let Some(rm) = entry.rm.clone() {
                // A retry: repeat the vote (acceptors treat it as a duplicate).
                return self.announce_vote(&descriptor, &rm, false);
            }
            if entry.resource_preparing {
                // A retry while the resource prepares: its answer becomes the vote.
                return;
            }
        }
        if known.is_some() {
            // Known here as an acceptor: admitted already.
        } else if self.draining && !self.executions.contains_key(&txn) {
            if descriptor.is_one_phase() {
                // One-phase: an Aborted answer is a decision, recorded before it is told.
                let reason = AbortReason::Draining { node: me };
                return self.finish_vote(now, &descriptor, RmPart::aborted(reason, false));
            }
            return self.refuse_while_draining(from, txn);
        } else if self.txns.len() >= self.config.limits.open_transactions_max {
            let open = self.txns.len() as u64;
            if descriptor.is_one_phase() {
                // One-phase: an unrecorded Aborted notice could be contradicted by a
                // later copy of this Prepare; say nothing (backpressure), the client
                // retries.
                return self.reject(from, RejectReason::Overloaded { open });
            }
            let reason = AbortReason::Overloaded { open };
            // The client sees the notice and aborts; a retry votes again.
            return self.refuse_prepare(from, txn, reason);
        } else if let Some(open) = self.over_client_quota(txn) {
            let reason = AbortReason::ClientQuota {
                client: txn.client,
                open,
            };
            if self.executions.contains_key(&txn) {
                self.abort_execution(now, txn, reason.clone());
                self.remove_execution(txn);
            }
            if descriptor.is_one_phase() {
                // As below, but silent: see the open-transactions limit above.
                let client = txn.client;
                return self.reject(from, RejectReason::ClientQuota { client, open });
            }
            // As backpressure: a flood over the quota writes nothing.
            return self.refuse_prepare(from, txn, reason);
        }
        if self.has_external_resource() {
            return self.prepare_at_resource(now, &descriptor, kind);
        }
        let rm = match kind {
            PrepareKind::OneShot(operations) => self.execute(now, &descriptor, &operations),
            PrepareKind::Executed {
                operations,
                at_prepare,
                lock_point_passed,
            } => self.prepare_executed(now, txn, operations, &at_prepare, lock_point_passed),
        };
        self.finish_vote(now, &descriptor, rm);
    }

    /// Prepare at a node whose resource is a service: the node's own checks (access,
    /// limits, ownership) vote at once; what passes them is asked of the resource, whose
    /// answer becomes the vote (`on_resource_voted` → `finish_vote`).
    fn prepare_at_resource(&mut self, now: Time, descriptor: &TxnDescriptor, kind: PrepareKind) {
        if let Some(reason) = self.resource_refusal(descriptor.txn) {
            // A durable Aborted vote, not an unrecorded refusal: the client takes an
            // Aborted notice as the end of the transaction, so this RM must never vote
            // Prepared for it later (a duplicate or retried Prepare that arrives once the
            // resource has settled would otherwise be asked of the resource and could
            // commit a transaction the client reported aborted: simulator seed 29).
            return self.finish_vote(now, descriptor, RmPart::aborted(reason, false));
        }
        let operations = match kind {
            PrepareKind::OneShot(operations) => operations,
            // Executions are refused at a service's node, so none ran here.
            PrepareKind::Executed {
                operations: 0,
                at_prepare,
                ..
            } => at_prepare,
            PrepareKind::Executed { operations, .. } => {
                let reason = AbortReason::OperationCountMismatch {
                    executed: 0,
                    expected: operations,
                };
                return self.finish_vote(now, descriptor, RmPart::aborted(reason, false));
            }
        };
        let checked = self
            .authorize(descriptor.client(), &operations)
            .and_then(|()| self.validate_operations(&operations));
        match checked {
            Ok(()) => self.ask_prepare(now, descriptor, operations),
            Err(reason) => self.finish_vote(now, descriptor, RmPart::aborted(reason, false)),
        }
    }

    /// Makes `rm` this RM's vote: recorded, then announced (persist before send). The
    /// one second half of every prepare, whichever resource answered.
    pub(super) fn finish_vote(&mut self, now: Time, descriptor: &TxnDescriptor, rm: RmPart) {
        let me = self.config.id;
        let txn = descriptor.txn;
        self.events.push_back(Event::Voted {
            txn,
            vote: rm.vote,
            reason: rm.reason.clone(),
        });
        self.stage_record(
            Record::Vote {
                descriptor: descriptor.clone(),
                vote: rm.vote,
                reason: rm.reason.clone(),
                writes: rm.writes.clone(),
                locks: rm.locks.clone(),
                read_versions: rm
                    .reads
                    .iter()
                    .flatten()
                    .map(|read| (read.key.clone(), read.version))
                    .collect(),
            },
            Gates::Sends,
        );
        self.prepared_bytes = self.prepared_bytes.saturating_add(reserved_bytes(&rm));
        self.entry(now, descriptor).rm = Some(rm.clone());
        if descriptor.is_one_phase() {
            return self.decide_one_phase(now, descriptor, &rm);
        }
        let wait = self.jitter(self.config.decision_timeout);
        self.set_deadline(txn, now.saturating_add(wait));
        self.announce_vote(descriptor, &rm, true);
        if rm.vote == Vote::Aborted {
            // Only Aborted can ever be chosen for this instance (ballot 0 proposed it and a
            // leader proposes an accepted value or Aborted), so Abort is certain once the
            // vote is durable.
            self.send(
                me,
                Message::Decision {
                    txn,
                    outcome: Outcome::Abort,
                    reads: None,
                },
            );
        }
    }

    /// One-phase commit: this RM is the transaction's only participant and it has no
    /// acceptors, so its vote is the decision (Commit iff Prepared), made here at once:
    /// applied, locks released, and the Outcome record staged right behind the Vote record,
    /// so both go in one write (one fsync) and the log orders this commit among the others
    /// as the store applied it. What reveals the decision waits for that write: the client's
    /// Decision (and an Aborted vote's notice) as any send, and the audit event `Decided`
    /// through a Decision to itself. A crash before the write is durable loses the decision
    /// with everything that followed it, and nobody heard of it. No deadline: nobody ever
    /// recovers a one-phase transaction.
    fn decide_one_phase(&mut self, now: Time, descriptor: &TxnDescriptor, rm: &RmPart) {
        let me = self.config.id;
        let txn = descriptor.txn;
        let client = descriptor.client();
        let outcome = match rm.vote {
            Vote::Prepared => Outcome::Commit,
            Vote::Aborted => Outcome::Abort,
        };
        if self.config.bugs.has(Bug::OnePhaseAnswersBeforeDurable) {
            // The bug: the answer leaves now, ahead of the write it rests on.
            let decision = Message::Decision {
                txn,
                outcome,
                reads: rm.reads.clone(),
            };
            self.outputs
                .push_back(super::Output::Send(crate::message::Envelope {
                    to: client,
                    messages: vec![decision],
                }));
        } else if let Some(entry) = self.txns.get_mut(&txn) {
            entry.waiters.insert(client);
        }
        if rm.vote == Vote::Aborted {
            // The reason, before the Decision (which the client gets as a waiter).
            let notice = Message::VoteNotice {
                txn,
                vote: Vote::Aborted,
                reason: rm.reason.clone(),
                reads: Vec::new(),
            };
            self.send(client, notice);
        }
        self.one_phase_unannounced.insert(txn);
        self.decide(now, me, txn, outcome);
        self.send(
            me,
            Message::Decision {
                txn,
                outcome,
                reads: None,
            },
        );
    }

    /// A client's Resolve of a one-phase transaction: decided → told (by the caller);
    /// being decided (its vote is on its way to the log, or its service prepares) → told
    /// once it is; unknown (its Prepare is lost or late, or this RM lost it in a crash)
    /// → this RM records an Aborted vote, which decides Abort, before it answers. So once
    /// it has said Aborted, a late copy of the Prepare finds the outcome and never commits.
    pub(super) fn resolve_one_phase(&mut self, now: Time, from: NodeId, descriptor: TxnDescriptor) {
        let txn = descriptor.txn;
        if let Some(entry) = self.txns.get_mut(&txn) {
            entry.waiters.insert(from);
            return;
        }
        if self.executions.contains_key(&txn) {
            // Executed here but not prepared: the client gave up waiting; abort it here.
            self.abort_execution(now, txn, AbortReason::NotPrepared);
            self.remove_execution(txn);
        }
        if self.config.bugs.has(Bug::OnePhaseUnrecordedAbort) {
            // The bug: Aborted told without a record; a later Prepare may still commit.
            self.refuse_prepare(from, txn, AbortReason::NotPrepared);
            let decision = Message::Decision {
                txn,
                outcome: Outcome::Abort,
                reads: None,
            };
            return self.send(from, decision);
        }
        let rm = RmPart::aborted(AbortReason::NotPrepared, false);
        self.finish_vote(now, &descriptor, rm);
    }

    /// Sends the RM's ballot-0 Phase2a to every acceptor and, when there is something to
    /// report, a VoteNotice to the client.
    fn announce_vote(&mut self, descriptor: &TxnDescriptor, rm: &RmPart, first_time: bool) {
        let me = self.config.id;
        // Thrifty (Gray & Lamport section 4): in the normal case F+1 acceptors suffice, and
        // every RM picks the same F+1 (the descriptor's first), so only they send Phase2b.
        // A retry widens to all 2F+1, and a recovery leader always uses all of them.
        let fanout = if self.config.thrifty && first_time && rm.vote == Vote::Prepared {
            descriptor.quorum()
        } else {
            descriptor.acceptors.len()
        };
        for acceptor in descriptor.acceptors.iter().take(fanout).copied() {
            self.send(
                acceptor,
                Message::Phase2a {
                    descriptor: descriptor.clone(),
                    rm: me,
                    ballot: Ballot::ZERO,
                    value: rm.vote,
                },
            );
        }
        let reads = if rm.client_has_reads {
            Vec::new()
        } else {
            rm.reads.clone().unwrap_or_default()
        };
        if !reads.is_empty() || rm.vote == Vote::Aborted {
            self.send(
                descriptor.client(),
                Message::VoteNotice {
                    txn: descriptor.txn,
                    vote: rm.vote,
                    reason: rm.reason.clone(),
                    reads,
                },
            );
        }
    }

    /// Validates and executes the RM's operations under locks; the result is its vote.
    fn execute(
        &mut self,
        now: Time,
        descriptor: &TxnDescriptor,
        operations: &[Operation],
    ) -> RmPart {
        let aborted = |reason| RmPart::aborted(reason, false);
        if let Err(reason) = self.authorize(descriptor.client(), operations) {
            return aborted(reason);
        }
        if let Err(reason) = self.validate_operations(operations) {
            return aborted(reason);
        }
        let locks = locks_for(operations);
        if let Err(key) = self.locks.try_acquire_all(descriptor.txn, &locks) {
            return aborted(AbortReason::lock_conflict(&self.locks, descriptor.txn, key));
        }
        let result = self.run_operations(operations).and_then(|(writes, reads)| {
            let growth = self
                .store
                .growth_bytes(writes.iter().map(|(key, value)| (key, value)));
            self.check_storage(growth)?;
            Ok((writes, reads))
        });
        match result {
            Ok((writes, reads)) => {
                let mut locks = locks;
                if writes.is_empty() && self.config.bugs.has(Bug::ReleaseLocksAtPrepare) {
                    // The bug: a one-shot read-only participant lets go of its shared locks
                    // at prepare, although prepare is where this transaction took them.
                    let keys = locks.drain(..).map(|(key, _)| key).collect::<Vec<_>>();
                    self.release_locks(now, descriptor.txn, keys);
                }
                RmPart {
                    vote: Vote::Prepared,
                    reason: None,
                    writes,
                    locks,
                    reads: Some(reads),
                    client_has_reads: false,
                }
            }
            Err(reason) => {
                let keys = locks.into_iter().map(|(key, _)| key).collect::<Vec<_>>();
                self.release_locks(now, descriptor.txn, keys);
                aborted(reason)
            }
        }
    }

    /// Installs (or, with `None`, removes) the access policy: with one, a client may run
    /// only the operations its [`crate::Permissions`] cover, and a client without an entry
    /// none (the runtime drops unauthenticated peers before this; this is defence in
    /// depth). Data nodes are always allowed. A refused Prepare votes Aborted with
    /// [`AbortReason::Unauthorized`] (recorded and announced like any Aborted vote, so the
    /// transaction aborts everywhere at once); a refused Execute is answered with that
    /// error and aborts the execution. Without a policy (the default, and always in the
    /// simulator) everyone may do everything.
    pub fn set_access(&mut self, policy: Option<AccessPolicy>) {
        self.access = policy;
    }

    /// The access policy installed, if any.
    pub fn access(&self) -> Option<&AccessPolicy> {
        self.access.as_ref()
    }

    /// The access policy installed, to grant or revoke one client at a time (a runtime
    /// serving thousands of clients would otherwise rebuild it for each).
    pub fn access_mut(&mut self) -> Option<&mut AccessPolicy> {
        self.access.as_mut()
    }

    /// Checks `operations` against `client`'s permissions; `Err` names the first key
    /// refused.
    pub(super) fn authorize(
        &self,
        client: NodeId,
        operations: &[Operation],
    ) -> Result<(), AbortReason> {
        let Some(policy) = &self.access else {
            return Ok(());
        };
        if self.config.cluster.is_member(client) {
            return Ok(());
        }
        let permissions = policy.get(client);
        for operation in operations {
            let key = operation.key();
            let allowed = permissions.is_some_and(|permissions| {
                if LockMode::required_by(operation) == LockMode::Exclusive {
                    permissions.allows_write(key)
                } else {
                    permissions.allows_read(key)
                }
            });
            if !allowed {
                return Err(AbortReason::Unauthorized { key: key.clone() });
            }
        }
        Ok(())
    }

    /// `Err(StorageFull)` if writes growing the data by `growth_bytes` would take it past
    /// the quota. Writes that grow nothing always pass (deletes, shrinking updates).
    pub(super) fn check_storage(&self, growth_bytes: u64) -> Result<(), AbortReason> {
        let Some(limit_bytes) = self.config.limits.store_bytes_max else {
            return Ok(());
        };
        let used_bytes = self.store_bytes().saturating_add(self.prepared_bytes);
        if growth_bytes > 0 && used_bytes.saturating_add(growth_bytes) > limit_bytes {
            return Err(AbortReason::StorageFull {
                used_bytes,
                limit_bytes,
            });
        }
        Ok(())
    }

    /// Tells `from` this RM votes Aborted for `reason` without recording the vote: no
    /// Phase2a left this node, so its instance can only choose Aborted, and a refusal
    /// costs no disk write.
    pub(super) fn refuse_prepare(&mut self, from: NodeId, txn: TxnId, reason: AbortReason) {
        let notice = Message::VoteNotice {
            txn,
            vote: Vote::Aborted,
            reason: Some(reason),
            reads: Vec::new(),
        };
        self.send(from, notice);
    }

    /// If `txn`'s client (not a data node) has its quota of transactions open here
    /// besides `txn`, how many.
    pub(super) fn over_client_quota(&self, txn: TxnId) -> Option<u64> {
        let client = txn.client;
        if self.config.cluster.is_member(client) {
            return None;
        }
        let limit = self.config.limits.open_transactions_per_client_max;
        let range = TxnId {
            client,
            sequence: 0,
        }..=TxnId {
            client,
            sequence: u64::MAX,
        };
        // A client's transactions are adjacent in both maps: counting costs the quota.
        let undecided = self
            .txns
            .range(range.clone())
            .filter(|(open, _)| **open != txn)
            .take(limit)
            .count();
        let executing = self
            .executions
            .range(range)
            .filter(|(open, _)| **open != txn)
            .take(limit)
            .count();
        let open = undecided.saturating_add(executing);
        (open >= limit).then_some(open as u64)
    }

    pub(super) fn validate_operations(&self, operations: &[Operation]) -> Result<(), AbortReason> {
        let limits = &self.config.limits;
        if operations.len() > limits.operations_max {
            return Err(AbortReason::TooManyOperations {
                count: operations.len() as u64,
                limit: limits.operations_max as u64,
            });
        }
        for operation in operations {
            let key = operation.key();
            if key.as_str().len() > limits.key_bytes_max {
                return Err(AbortReason::KeyTooLarge {
                    length_bytes: key.as_str().len() as u64,
                    limit_bytes: limits.key_bytes_max as u64,
                });
            }
            if self.config.cluster.owner(key) != self.config.id {
                return Err(AbortReason::KeyNotOwned { key: key.clone() });
            }
            if let Operation::Call { action, .. } = operation {
                if action.len() > limits.key_bytes_max {
                    return Err(AbortReason::KeyTooLarge {
                        length_bytes: action.len() as u64,
                        limit_bytes: limits.key_bytes_max as u64,
                    });
                }
            }
            if let Operation::Write { value, .. }
            | Operation::Update { value, .. }
            | Operation::Call { args: value, .. } = operation
            {
                if value.0.len() > limits.value_bytes_max {
                    return Err(AbortReason::ValueTooLarge {
                        key: key.clone(),
                        length_bytes: value.0.len() as u64,
                        limit_bytes: limits.value_bytes_max as u64,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs the operations in order against the committed data plus this transaction's
    /// own earlier writes (through the interpreter an interactive execution uses, one
    /// operation at a time); returns the final write set and the reads.
    #[allow(clippy::type_complexity)]
    fn run_operations(
        &self,
        operations: &[Operation],
    ) -> Result<(Vec<(Key, Option<Value>)>, Vec<ReadResult>), AbortReason> {
        let mut writes = PendingWrites::new();
        let mut reads = Vec::new();
        for operation in operations {
            if let Some(read) = apply_operation(&self.store, &mut writes, operation)? {
                reads.push(read);
            }
        }
        Ok((writes.into_iter().collect(), reads))
    }
}
