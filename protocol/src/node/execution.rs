//! The execution phase of interactive transactions at an RM: operations under strict
//! two-phase locking with waiting (FIFO queues, S→X upgrade), buffered write intents, and
//! timeouts. A wait that may be a deadlock is handed to `deadlock` (edge chasing or
//! wound-wait).
//!
//! Execution state is volatile: nothing is promised before prepare, so an RM that restarts
//! mid-transaction simply answers `ExecutionLost` and the transaction aborts.

use super::operation::{self, PendingWrites};
use super::{DeadlockPolicy, Event, Node, RmPart};
use crate::bugs::Bug;
use crate::message::{AbortReason, Message, MessageKind, Operation, ReadResult};
use crate::record::LockMode;
use crate::reject::RejectReason;
use crate::store::{Grant, LockRequest};
use crate::types::{due_by, Key, NodeId, Time, TxnId, Value, Vote};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

/// An interactive transaction executing at this RM (not yet prepared).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Execution {
    pub(super) start_time: Time,
    writes: PendingWrites,
    reads: Vec<ReadResult>,
    held: BTreeMap<Key, LockMode>,
    /// Results of the operations done so far, by sequence (answers retries).
    results: Vec<Result<Option<ReadResult>, AbortReason>>,
    pub(super) waiting: Option<Waiting>,
    pub(super) aborted: Option<AbortReason>,
    last_activity: Time,
    deadline: Time,
}

/// An operation queued for a lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Waiting {
    probe_rounds: u32,
    sequence: u32,
    operation: Operation,
    key: Key,
    since: Time,
    probe_at: Time,
}

type OperationResult = Result<Option<ReadResult>, AbortReason>;

impl Node {
    // ----- Client requests ------------------------------------------------------------

    pub(super) fn on_execute(
        &mut self,
        now: Time,
        from: NodeId,
        txn: TxnId,
        start_time: Time,
        sequence: u32,
        operation: Operation,
    ) {
        if from != txn.client {
            return self.reject(
                from,
                RejectReason::NotFromClient {
                    message: MessageKind::Execute,
                },
            );
        }
        if self.has_external_resource() {
            let node = self.config.id;
            return self.reply_executed(txn, sequence, Err(AbortReason::NotInteractive { node }));
        }
        let finished = self.outcomes.contains_key(&txn)
            || self.txns.get(&txn).is_some_and(|entry| entry.rm.is_some());
        if finished {
            return self.reply_executed(txn, sequence, Err(AbortReason::AlreadyFinished));
        }
        if let Err(reason) = self.authorize(txn.client, std::slice::from_ref(&operation)) {
            if self.executions.contains_key(&txn) {
                return self.fail_operation(now, txn, sequence, reason);
            }
            // Refused before any state exists for it: nothing to abort, nothing kept.
            return self.reply_executed(txn, sequence, Err(reason));
        }
        if !self.executions.contains_key(&txn) {
            if self.ended_executions.contains(now, txn) {
                // Its client aborted it: this Execute is a late copy or a crossed retry.
                return self.reply_executed(txn, sequence, Err(AbortReason::ClientAborted));
            }
            if sequence != 0 {
                return self.reply_executed(txn, sequence, Err(AbortReason::ExecutionLost));
            }
            if self.draining {
                let reason = AbortReason::Draining {
                    node: self.config.id,
                };
                return self.reply_executed(txn, sequence, Err(reason));
            }
            let open = self.executions.len() + self.txns.len();
            if open >= self.config.limits.open_transactions_max {
                let reason = AbortReason::Overloaded { open: open as u64 };
                return self.reply_executed(txn, sequence, Err(reason));
            }
            if let Some(open) = self.over_client_quota(txn) {
                let client = txn.client;
                let reason = AbortReason::ClientQuota { client, open };
                return self.reply_executed(txn, sequence, Err(reason));
            }
            self.executions.insert(txn, Execution::new(start_time, now));
        }
        let Some(execution) = self.executions.get_mut(&txn) else {
            return;
        };
        execution.last_activity = now;
        if let Some(reason) = execution.aborted.clone() {
            return self.reply_executed(txn, sequence, Err(reason));
        }
        let done = execution.results.len() as u32;
        if sequence < done {
            // A retry of an operation already done: answer it again.
            let result = execution.results[sequence as usize].clone();
            return self.reply_executed(txn, sequence, result);
        }
        if execution.waiting.is_some() || sequence > done {
            // Still working on an earlier one (a retry of the waiting operation) or a gap:
            // the client sends an RM one operation at a time, so a gap cannot be honest.
            if sequence > done && execution.waiting.is_none() {
                let expected = done;
                self.abort_execution(
                    now,
                    txn,
                    AbortReason::OperationCountMismatch {
                        executed: expected,
                        expected: sequence,
                    },
                );
            }
            return;
        }
        let operations_max = self.config.limits.operations_max;
        if execution.results.len() >= operations_max {
            // The same bound as a one-shot Prepare's: each operation keeps a result here.
            let reason = AbortReason::TooManyOperations {
                count: (execution.results.len() as u64).saturating_add(1),
                limit: operations_max as u64,
            };
            return self.fail_operation(now, txn, sequence, reason);
        }
        if let Err(reason) = self.validate_operations(std::slice::from_ref(&operation)) {
            return self.fail_operation(now, txn, sequence, reason);
        }
        let key = operation.key().clone();
        let mode = LockMode::required_by(&operation);
        match self.locks.request(txn, &key, mode) {
            LockRequest::Granted => self.run_granted(now, txn, sequence, operation, mode),
            LockRequest::QueueFull => {
                self.fail_operation(now, txn, sequence, AbortReason::LockQueueFull { key })
            }
            LockRequest::Waiting => self.start_waiting(now, txn, sequence, operation, key),
        }
        self.refresh_execution_deadline(txn);
    }

    pub(super) fn on_abort_execution(&mut self, now: Time, from: NodeId, txn: TxnId) {
        if from != txn.client {
            return self.reject(
                from,
                RejectReason::NotFromClient {
                    message: MessageKind::AbortExecution,
                },
            );
        }
        if self.executions.contains_key(&txn) {
            self.abort_execution(now, txn, AbortReason::ClientAborted);
            self.remove_execution(txn);
        }
        // Whether or not its Execute arrived yet: a copy or a retry of it may still come.
        let forget_after = self.config.execution_idle_timeout;
        let capacity = self.config.limits.open_transactions_max;
        self.ended_executions
            .insert(now, txn, forget_after, capacity);
    }

    /// Interactive prepare: the vote rests on what already ran here, plus the writes the
    /// client buffered until prepare (`at_prepare`: each must get its exclusive lock at
    /// once, upgrades included, or the vote is Aborted — prepare never waits). When the
    /// client says the lock point has passed (no participant locks at prepare), a
    /// read-only participant releases its shared locks now; a participant with writes
    /// keeps everything until the decision.
    pub(super) fn prepare_executed(
        &mut self,
        now: Time,
        txn: TxnId,
        operations: u32,
        at_prepare: &[Operation],
        lock_point_passed: bool,
    ) -> RmPart {
        let aborted = |reason| RmPart::aborted(reason, true);
        let Some(execution) = self.executions.get(&txn) else {
            return aborted(AbortReason::ExecutionLost);
        };
        let executed = execution.results.len() as u32;
        let problem = if let Some(reason) = execution.aborted.clone() {
            Some(reason)
        } else if execution.waiting.is_some() || executed != operations {
            Some(AbortReason::OperationCountMismatch {
                executed,
                expected: operations,
            })
        } else {
            None
        };
        let problem = problem
            .or_else(|| self.run_at_prepare(txn, at_prepare).err())
            .or_else(|| {
                let writes = &self.executions.get(&txn)?.writes;
                self.check_storage(self.store.growth_bytes(writes)).err()
            });
        if let Some(reason) = problem {
            self.abort_execution(now, txn, reason.clone());
            self.remove_execution(txn);
            return aborted(reason);
        }
        let Some(execution) = self.remove_execution(txn) else {
            return aborted(AbortReason::ExecutionLost);
        };
        let writes: Vec<(Key, Option<Value>)> = execution.writes.into_iter().collect();
        let mut locks: Vec<(Key, LockMode)> = execution.held.into_iter().collect();
        let early_release = (writes.is_empty() && lock_point_passed)
            || self.config.bugs.has(Bug::ReleaseLocksAtPrepare);
        if early_release {
            let keys = locks.drain(..).map(|(key, _)| key).collect::<Vec<_>>();
            self.release_locks(now, txn, keys);
        }
        RmPart {
            vote: Vote::Prepared,
            reason: None,
            writes,
            locks,
            reads: Some(execution.reads),
            client_has_reads: true,
        }
    }

    /// Runs the client's buffered writes at prepare: validated, each lock taken now or
    /// never (no waiting at prepare), applied to the intents.
    fn run_at_prepare(&mut self, txn: TxnId, at_prepare: &[Operation]) -> Result<(), AbortReason> {
        self.authorize(txn.client, at_prepare)?;
        self.validate_operations(at_prepare)?;
        for operation in at_prepare {
            if !operation.is_write() {
                return Err(AbortReason::ReadAtPrepare {
                    key: operation.key().clone(),
                });
            }
            let key = operation.key().clone();
            self.locks
                .try_acquire_all(txn, &[(key.clone(), LockMode::Exclusive)])
                .map_err(|key| AbortReason::lock_conflict(&self.locks, txn, key))?;
            if let Some(execution) = self.executions.get_mut(&txn) {
                LockMode::hold(&mut execution.held, key, LockMode::Exclusive);
            }
            self.apply_operation(txn, operation)?;
        }
        Ok(())
    }

    // ----- Running operations -----------------------------------------------------------

    fn run_granted(
        &mut self,
        now: Time,
        txn: TxnId,
        sequence: u32,
        operation: Operation,
        mode: LockMode,
    ) {
        let Some(execution) = self.executions.get_mut(&txn) else {
            return;
        };
        LockMode::hold(&mut execution.held, operation.key().clone(), mode);
        let result = self.apply_operation(txn, &operation);
        match result {
            Ok(read) => {
                if let Some(execution) = self.executions.get_mut(&txn) {
                    execution.results.push(Ok(read.clone()));
                    if let Some(read) = &read {
                        execution.reads.push(read.clone());
                    }
                }
                self.reply_executed(txn, sequence, Ok(read));
            }
            Err(reason) => self.fail_operation(now, txn, sequence, reason),
        }
    }

    /// Runs one operation against committed data plus this transaction's intents (the
    /// interpreter a one-shot Prepare uses too).
    fn apply_operation(&mut self, txn: TxnId, operation: &Operation) -> OperationResult {
        let Some(execution) = self.executions.get_mut(&txn) else {
            return Err(AbortReason::ExecutionLost);
        };
        operation::apply_operation(&self.store, &mut execution.writes, operation)
    }

    fn fail_operation(&mut self, now: Time, txn: TxnId, sequence: u32, reason: AbortReason) {
        if let Some(execution) = self.executions.get_mut(&txn) {
            execution.results.push(Err(reason.clone()));
        }
        self.reply_executed(txn, sequence, Err(reason.clone()));
        self.abort_execution(now, txn, reason);
    }

    fn reply_executed(&mut self, txn: TxnId, sequence: u32, result: OperationResult) {
        self.send(
            txn.client,
            Message::Executed {
                txn,
                sequence,
                result,
            },
        );
    }

    /// Aborts an executing transaction here: its waiting operation fails, its locks go
    /// (letting waiters through), its intents are dropped. It stays known as aborted so
    /// that a later Prepare votes Aborted; the client is told.
    pub(super) fn abort_execution(&mut self, now: Time, txn: TxnId, reason: AbortReason) {
        let Some(execution) = self.executions.get_mut(&txn) else {
            return;
        };
        if execution.aborted.is_some() {
            return;
        }
        execution.aborted = Some(reason.clone());
        execution.writes.clear();
        let waiting = execution.waiting.take();
        let held: Vec<Key> = core::mem::take(&mut execution.held).into_keys().collect();
        if let Some(waiting) = &waiting {
            let grants = self.locks.cancel(txn, &waiting.key);
            self.on_grants(now, grants);
            if let Some(execution) = self.executions.get_mut(&txn) {
                execution.results.push(Err(reason.clone()));
            }
            self.reply_executed(txn, waiting.sequence, Err(reason.clone()));
        } else {
            self.send(txn.client, Message::ExecutionAborted { txn, reason });
        }
        self.release_locks(now, txn, held);
        self.refresh_execution_deadline(txn);
    }

    /// Forgets an execution (and its deadline); returns it.
    pub(super) fn remove_execution(&mut self, txn: TxnId) -> Option<Execution> {
        let execution = self.executions.remove(&txn)?;
        self.execution_deadlines.remove(&(execution.deadline, txn));
        Some(execution)
    }

    /// Releases locks and runs the operations of every waiter that got through.
    pub(super) fn release_locks(&mut self, now: Time, txn: TxnId, keys: Vec<Key>) {
        let grants = self.locks.release(txn, keys);
        self.on_grants(now, grants);
    }

    fn on_grants(&mut self, now: Time, grants: Vec<Grant>) {
        for grant in grants {
            let waiting =
                self.executions.get_mut(&grant.txn).and_then(|execution| {
                    match &execution.waiting {
                        Some(waiting) if waiting.key == grant.key => execution.waiting.take(),
                        _ => None,
                    }
                });
            match waiting {
                Some(waiting) => {
                    self.run_granted(
                        now,
                        grant.txn,
                        waiting.sequence,
                        waiting.operation,
                        grant.mode,
                    );
                    self.refresh_execution_deadline(grant.txn);
                }
                None => {
                    // Granted to a transaction no longer waiting for it: give it back.
                    let more = self.locks.release(grant.txn, [grant.key]);
                    self.on_grants(now, more);
                }
            }
        }
    }

    // ----- Waiting and deadlocks ------------------------------------------------------

    fn start_waiting(
        &mut self,
        now: Time,
        txn: TxnId,
        sequence: u32,
        operation: Operation,
        key: Key,
    ) {
        let probe_at = now.saturating_add(self.config.probe_delay);
        if let Some(execution) = self.executions.get_mut(&txn) {
            execution.waiting = Some(Waiting {
                probe_rounds: 0,
                sequence,
                operation,
                key: key.clone(),
                since: now,
                probe_at,
            });
        }
        self.events.push_back(Event::LockWaitStarted { txn, key });
        if self.config.bugs.has(Bug::NoDeadlockDetection) {
            return;
        }
        match self.config.deadlock {
            DeadlockPolicy::WoundWait => self.wound_younger_blockers(now, txn),
            DeadlockPolicy::EdgeChasing => self.detect_local_cycle(now, txn),
        }
    }

    /// The local wait-for edges of a waiting transaction.
    pub(super) fn local_waits_for(&self, txn: TxnId) -> Vec<TxnId> {
        match self
            .executions
            .get(&txn)
            .and_then(|execution| execution.waiting.as_ref())
        {
            Some(waiting) => self.locks.waits_for(txn, &waiting.key),
            None => Vec::new(),
        }
    }

    /// Every wait-for edge at this node (for checks and status).
    pub fn wait_for_edges(&self) -> Vec<(TxnId, TxnId)> {
        let mut edges = Vec::new();
        for (txn, execution) in &self.executions {
            if execution.waiting.is_some() {
                for blocker in self.local_waits_for(*txn) {
                    edges.push((*txn, blocker));
                }
            }
        }
        edges
    }

    /// Interactive transactions executing here, and how many of them wait for a lock.
    pub fn executions(&self) -> (usize, usize) {
        let waiting = self
            .executions
            .values()
            .filter(|execution| execution.waiting.is_some())
            .count();
        (self.executions.len(), waiting)
    }

    // ----- Timers ---------------------------------------------------------------------

    fn refresh_execution_deadline(&mut self, txn: TxnId) {
        let Some(execution) = self.executions.get_mut(&txn) else {
            return;
        };
        self.execution_deadlines.remove(&(execution.deadline, txn));
        let idle = execution
            .last_activity
            .saturating_add(self.config.execution_idle_timeout);
        let deadline = match &execution.waiting {
            Some(waiting) => {
                let timeout = waiting.since.saturating_add(self.config.lock_wait_timeout);
                let probing = !self.config.bugs.has(Bug::NoDeadlockDetection);
                if probing {
                    timeout.min(waiting.probe_at)
                } else {
                    timeout
                }
            }
            None => idle,
        };
        execution.deadline = deadline;
        self.execution_deadlines.insert((deadline, txn));
    }

    pub(super) fn on_execution_timeouts(&mut self, now: Time) {
        let due = due_by(&self.execution_deadlines, now);
        for txn in due {
            let Some(execution) = self.executions.get_mut(&txn) else {
                continue;
            };
            match execution.waiting.as_mut() {
                Some(waiting)
                    if now >= waiting.since.saturating_add(self.config.lock_wait_timeout) =>
                {
                    let key = waiting.key.clone();
                    self.events.push_back(Event::LockWaitTimedOut {
                        txn,
                        key: key.clone(),
                    });
                    self.abort_execution(now, txn, AbortReason::LockWaitTimeout { key });
                }
                Some(waiting) => {
                    if now >= waiting.probe_at {
                        // Each wait probes when it starts to look stuck, then again with
                        // exponential backoff (repairing lost probes, bounding the rate).
                        waiting.probe_rounds = waiting.probe_rounds.saturating_add(1);
                        let backoff = self
                            .config
                            .probe_delay
                            .saturating_mul(1 << waiting.probe_rounds.min(6));
                        waiting.probe_at = now.saturating_add(backoff);
                        match self.config.deadlock {
                            DeadlockPolicy::EdgeChasing => self.initiate_probe(now, txn),
                            // Upgrades can queue a younger transaction ahead: look again.
                            DeadlockPolicy::WoundWait => self.wound_younger_blockers(now, txn),
                        }
                    }
                }
                None => {
                    let idle = now
                        >= execution
                            .last_activity
                            .saturating_add(self.config.execution_idle_timeout);
                    if idle {
                        if execution.aborted.is_none() {
                            self.abort_execution(now, txn, AbortReason::ClientIdle);
                        }
                        self.remove_execution(txn);
                        continue;
                    }
                }
            }
            self.refresh_execution_deadline(txn);
        }
    }
}

/// Interactive transactions aborted by their clients, each remembered until its
/// `forget_at` and at most `capacity` of them (the oldest go first): an Execute of one
/// opens no execution. Forgetting is safe, only less thorough: a copy arriving later
/// than that opens an execution the idle timeout ends, as before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Ended {
    /// Each transaction and when it is forgotten.
    forget_at: BTreeMap<TxnId, Time>,
    /// The same, in insertion order (times never go backwards).
    order: VecDeque<(Time, TxnId)>,
}

impl Ended {
    /// Remembers `txn` for `forget_after` from `now`, forgetting the expired and, past
    /// `capacity`, the oldest.
    pub(super) fn insert(
        &mut self,
        now: Time,
        txn: TxnId,
        forget_after: Duration,
        capacity: usize,
    ) {
        self.expire(now);
        while self.order.len() >= capacity.max(1) {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.forget_at.remove(&oldest);
        }
        let until = now.saturating_add(forget_after);
        if self.forget_at.insert(txn, until).is_none() {
            self.order.push_back((until, txn));
        }
    }

    /// True if `txn` was aborted by its client and is still remembered at `now`.
    pub(super) fn contains(&self, now: Time, txn: TxnId) -> bool {
        self.forget_at.get(&txn).is_some_and(|until| *until > now)
    }

    fn expire(&mut self, now: Time) {
        while let Some((until, txn)) = self.order.front().copied() {
            if until > now {
                break;
            }
            self.order.pop_front();
            self.forget_at.remove(&txn);
        }
    }
}

impl Execution {
    fn new(start_time: Time, now: Time) -> Execution {
        Execution {
            start_time,
            writes: BTreeMap::new(),
            reads: Vec::new(),
            held: BTreeMap::new(),
            results: Vec::new(),
            waiting: None,
            aborted: None,
            last_activity: now,
            deadline: now,
        }
    }
}

#[cfg(test)]
mod ended_tests {
    use super::Ended;
    use crate::types::{NodeId, Time, TxnId};
    use core::time::Duration;

    fn txn(sequence: u64) -> TxnId {
        TxnId {
            client: NodeId(100),
            sequence,
        }
    }

    #[test]
    fn aborted_executions_are_remembered_for_a_while_and_at_most_capacity() {
        let mut ended = Ended::default();
        let second = Duration::from_secs(1);
        let at = |seconds: u64| Time::ZERO.saturating_add(Duration::from_secs(seconds));
        ended.insert(at(0), txn(1), second * 10, 2);
        ended.insert(at(1), txn(2), second * 10, 2);
        assert!(ended.contains(at(5), txn(1)) && ended.contains(at(5), txn(2)));
        assert!(!ended.contains(at(10), txn(1)), "forgotten after its time");
        // Past the capacity the oldest goes first.
        ended.insert(at(2), txn(3), second * 10, 2);
        assert!(!ended.contains(at(3), txn(1)));
        assert!(ended.contains(at(3), txn(2)) && ended.contains(at(3), txn(3)));
        // Expired entries are dropped when the next one comes, so memory follows the
        // abort rate, not the run's length.
        ended.insert(at(30), txn(4), second * 10, 2);
        assert_eq!(ended.order.len(), 1);
        assert_eq!(ended.forget_at.len(), 1);
    }
}
