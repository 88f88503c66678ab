//! Interactive transactions: operations run one by one at their keys' owners under strict
//! two-phase locking (`execute`), then `commit` hands the transaction to the commit phase
//! with `PrepareExecuted` (plus any writes buffered until commit), or `abort` releases its
//! locks. Edge-chasing deadlock probes pass through here, since only the client knows where
//! its transaction's operations wait.

use super::{BeginError, Client, ExecuteError, Finished, TxnResult, Unavailable};
use crate::message::{AbortReason, Message, Operation, ReadResult};
use crate::types::{NodeId, Time, TxnDescriptor, TxnId};
use std::collections::{BTreeMap, BTreeSet};

/// An interactive operation that completed, reported by `poll_executed`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Executed {
    /// The transaction.
    pub txn: TxnId,
    /// The operation.
    pub operation: Operation,
    /// A read's result (`None` for writes).
    pub read: Option<ReadResult>,
}

/// Progress of an interactive transaction at one RM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct RmProgress {
    sent: u32,
    outstanding: Option<(u32, Operation)>,
}

/// An interactive transaction in its execution phase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Interactive {
    start_time: Time,
    pub(super) rms: BTreeMap<NodeId, RmProgress>,
    reads: Vec<ReadResult>,
    operations: usize,
    retries: u32,
    /// When to resend the outstanding operations; `None` while none is outstanding (the
    /// transaction then waits for the application, which has no deadline here).
    deadline: Option<Time>,
}

impl Client {
    /// Begins an interactive transaction: operations follow one by one with `execute`
    /// (each runs at its key's owner under strict two-phase locking, waiting for locks),
    /// then `commit` or `abort`.
    pub fn begin_interactive(&mut self, now: Time) -> Result<TxnId, BeginError> {
        if self.in_flight() >= self.config.in_flight_max {
            return Err(BeginError::TooManyInFlight(self.in_flight()));
        }
        let txn = self.allocate_txn();
        self.interactive.insert(
            txn,
            Interactive {
                start_time: now,
                rms: BTreeMap::new(),
                reads: Vec::new(),
                operations: 0,
                retries: 0,
                deadline: None,
            },
        );
        Ok(txn)
    }

    /// Sends one operation of an interactive transaction to its key's owner. Operations on
    /// different RMs may be outstanding together; on one RM, one at a time. The result
    /// comes through `poll_executed`; a failure aborts the transaction (`poll_event`).
    pub fn execute(
        &mut self,
        now: Time,
        txn: TxnId,
        operation: Operation,
    ) -> Result<(), ExecuteError> {
        let owner = self.live_owner(&operation)?;
        let operations_max = self.config.operations_max;
        let retry_timeout = self.config.retry_timeout;
        let not_executing = self.not_executing(txn);
        let state = self.interactive.get_mut(&txn).ok_or(not_executing)?;
        if state.operations >= operations_max {
            return Err(ExecuteError::TooManyOperations {
                count: state.operations + 1,
                limit: operations_max,
            });
        }
        let progress = state.rms.entry(owner).or_default();
        if progress.outstanding.is_some() {
            return Err(ExecuteError::Busy { txn, node: owner });
        }
        let sequence = progress.sent;
        progress.sent += 1;
        progress.outstanding = Some((sequence, operation.clone()));
        state.operations += 1;
        let start_time = state.start_time;
        if state.deadline.is_none() {
            state.retries = 0;
            self.set_interactive_deadline(txn, Some(now.saturating_add(retry_timeout)));
        }
        self.stage(
            owner,
            Message::Execute {
                txn,
                start_time,
                sequence,
                operation,
            },
        );
        self.flush();
        Ok(())
    }

    /// The owner of `operation`'s key, unless it left or is suspected to have failed.
    fn live_owner(&self, operation: &Operation) -> Result<NodeId, ExecuteError> {
        let owner = self.config.cluster.owner(operation.key());
        match self.unavailable(owner) {
            Some(Unavailable::Left) => Err(ExecuteError::OwnerLeft { node: owner }),
            Some(Unavailable::Suspected) => Err(ExecuteError::OwnerSuspected { node: owner }),
            None => Ok(owner),
        }
    }

    /// Commits an interactive transaction through Paxos Commit; every operation must have
    /// completed. The outcome comes through `poll_event`.
    pub fn commit(&mut self, now: Time, txn: TxnId) -> Result<(), ExecuteError> {
        self.commit_with(now, txn, Vec::new())
    }

    /// Commits an interactive transaction after adding `writes` (buffered here until
    /// commit): each travels in its owner's prepare and runs there before the vote,
    /// which saves the round trip of executing it first. An owner that executed nothing
    /// gets a one-shot Prepare. A buffered write whose lock is not free at prepare
    /// aborts the transaction (prepare never waits); reads cannot be buffered.
    pub fn commit_with(
        &mut self,
        now: Time,
        txn: TxnId,
        writes: Vec<Operation>,
    ) -> Result<(), ExecuteError> {
        let state = self
            .interactive
            .get(&txn)
            .ok_or_else(|| self.not_executing(txn))?;
        if let Some((node, _)) = state
            .rms
            .iter()
            .find(|(_, progress)| progress.outstanding.is_some())
        {
            return Err(ExecuteError::Busy { txn, node: *node });
        }
        if let Some(read) = writes.iter().find(|operation| !operation.is_write()) {
            return Err(ExecuteError::ReadAtCommit {
                key: read.key().clone(),
            });
        }
        let count = state.operations + writes.len();
        if count > self.config.operations_max {
            return Err(ExecuteError::TooManyOperations {
                count,
                limit: self.config.operations_max,
            });
        }
        let mut buffered: BTreeMap<NodeId, Vec<Operation>> = BTreeMap::new();
        for operation in writes {
            buffered
                .entry(self.live_owner(&operation)?)
                .or_default()
                .push(operation);
        }
        let Some(state) = self.remove_interactive(txn) else {
            return Err(self.not_executing(txn));
        };
        if state.rms.is_empty() && buffered.is_empty() {
            self.events.push_back(Finished {
                txn,
                result: TxnResult::Committed {
                    reads: Vec::new(),
                    reads_lost: false,
                },
                participant: None,
                started: state.start_time,
                finished: now,
            });
            return Ok(());
        }
        let participants: Vec<NodeId> = state
            .rms
            .keys()
            .chain(buffered.keys())
            .copied()
            .collect::<BTreeSet<NodeId>>()
            .into_iter()
            .collect();
        let avoid = self.acceptors_to_avoid();
        let cluster = &self.config.cluster;
        let descriptor = TxnDescriptor::for_commit(
            txn,
            participants,
            |participants| cluster.choose_acceptors(txn, participants, &avoid),
            cluster.f(),
            state.start_time,
            self.config.one_phase,
        );
        let lock_point_passed = buffered.is_empty();
        let prepares = descriptor
            .participants
            .iter()
            .map(|rm| {
                let at_prepare = buffered.remove(rm).unwrap_or_default();
                let prepare = match state.rms.get(rm) {
                    Some(progress) => Message::PrepareExecuted {
                        descriptor: descriptor.clone(),
                        operations: progress.sent,
                        at_prepare,
                        lock_point_passed,
                    },
                    None => Message::Prepare {
                        descriptor: descriptor.clone(),
                        operations: at_prepare,
                    },
                };
                (*rm, prepare)
            })
            .collect();
        self.start_commit(now, descriptor, prepares, BTreeSet::new(), state.reads);
        Ok(())
    }

    /// Abandons an interactive transaction before commit: its RMs release its locks.
    pub fn abort(&mut self, now: Time, txn: TxnId) -> Result<(), ExecuteError> {
        if !self.interactive.contains_key(&txn) {
            return Err(self.not_executing(txn));
        }
        self.abort_interactive(now, txn, AbortReason::ClientAborted, None);
        self.flush();
        Ok(())
    }

    /// The next completed interactive operation.
    pub fn poll_executed(&mut self) -> Option<Executed> {
        self.executed.pop_front()
    }

    fn remove_interactive(&mut self, txn: TxnId) -> Option<Interactive> {
        let state = self.interactive.remove(&txn)?;
        if let Some(deadline) = state.deadline {
            self.deadlines.remove(&(deadline, txn));
        }
        Some(state)
    }

    /// Moves the transaction's retry deadline to `deadline` (`None`: no retry pending).
    fn set_interactive_deadline(&mut self, txn: TxnId, deadline: Option<Time>) {
        if let Some(state) = self.interactive.get_mut(&txn) {
            if let Some(old) = state.deadline {
                self.deadlines.remove(&(old, txn));
            }
            state.deadline = deadline;
            if let Some(deadline) = deadline {
                self.deadlines.insert((deadline, txn));
            }
        }
    }

    /// Aborts an interactive transaction before commit for `reason`, given by
    /// `participant` (`None`: the client's own decision).
    fn abort_interactive(
        &mut self,
        now: Time,
        txn: TxnId,
        reason: AbortReason,
        participant: Option<NodeId>,
    ) {
        let result = TxnResult::Aborted {
            reason: Some(reason),
        };
        self.end_interactive(now, txn, result, participant);
    }

    /// Ends an interactive transaction before commit: its RMs release its locks.
    /// `participant` is as in [`Finished::participant`].
    pub(super) fn end_interactive(
        &mut self,
        now: Time,
        txn: TxnId,
        result: TxnResult,
        participant: Option<NodeId>,
    ) {
        let Some(state) = self.remove_interactive(txn) else {
            return;
        };
        for rm in state.rms.keys() {
            self.stage(*rm, Message::AbortExecution { txn });
        }
        self.events.push_back(Finished {
            txn,
            result,
            participant,
            started: state.start_time,
            finished: now,
        });
    }

    pub(super) fn on_interactive_message(&mut self, now: Time, from: NodeId, message: Message) {
        let txn = message.txn();
        match message {
            Message::Executed {
                sequence, result, ..
            } => {
                let Some(state) = self.interactive.get_mut(&txn) else {
                    return;
                };
                let Some(progress) = state.rms.get_mut(&from) else {
                    return;
                };
                let Some((outstanding, operation)) = progress.outstanding.clone() else {
                    return;
                };
                if outstanding != sequence {
                    return;
                }
                progress.outstanding = None;
                match result {
                    Ok(read) => {
                        if let Some(read) = &read {
                            state.reads.push(read.clone());
                        }
                        if state
                            .rms
                            .values()
                            .all(|progress| progress.outstanding.is_none())
                        {
                            self.set_interactive_deadline(txn, None);
                        }
                        self.executed.push_back(Executed {
                            txn,
                            operation,
                            read,
                        });
                    }
                    Err(reason) => self.abort_interactive(now, txn, reason, Some(from)),
                }
            }
            Message::ExecutionAborted { reason, .. } => {
                let known = self
                    .interactive
                    .get(&txn)
                    .is_some_and(|state| state.rms.contains_key(&from));
                if known {
                    self.abort_interactive(now, txn, reason, Some(from));
                }
            }
            Message::Probe {
                initiator,
                target,
                path,
            } => {
                // Edge chasing through the client: only it knows where its transaction's
                // operations wait.
                let Some(state) = self.interactive.get(&target) else {
                    return;
                };
                let waiting_at: Vec<NodeId> = state
                    .rms
                    .iter()
                    .filter(|(_, progress)| progress.outstanding.is_some())
                    .map(|(node, _)| *node)
                    .collect();
                for node in waiting_at {
                    self.stage(
                        node,
                        Message::Probe {
                            initiator,
                            target,
                            path: path.clone(),
                        },
                    );
                }
            }
            _ => {}
        }
    }

    pub(super) fn retry_interactive(&mut self, now: Time, txn: TxnId) {
        let retries_max = self.config.retries_max;
        let retry_timeout = self.config.retry_timeout;
        let Some(state) = self.interactive.get_mut(&txn) else {
            return;
        };
        state.retries += 1;
        if state.retries > retries_max {
            // No participant answered: none of them is to blame more than another.
            return self.abort_interactive(now, txn, AbortReason::ExecutionLost, None);
        }
        let start_time = state.start_time;
        let resend: Vec<(NodeId, u32, Operation)> = state
            .rms
            .iter()
            .filter_map(|(node, progress)| {
                let (sequence, operation) = progress.outstanding.clone()?;
                Some((*node, sequence, operation))
            })
            .collect();
        let retries = state.retries;
        if let Some(node) = resend
            .iter()
            .map(|(node, _, _)| *node)
            .find(|node| self.unavailable(*node).is_some())
        {
            // The owner of an unanswered operation is suspected: give up now rather than
            // retry for the whole outage. The other owners release at AbortExecution; the
            // suspected one, if it is alive after all, refuses the Execute when it comes
            // (it remembers the abort) or ends it at its idle timeout.
            return self.abort_interactive(
                now,
                txn,
                AbortReason::ParticipantUnavailable { node },
                Some(node),
            );
        }
        let wait = retry_timeout.saturating_mul(1 << retries.min(4));
        self.set_interactive_deadline(txn, Some(now.saturating_add(wait)));
        for (node, sequence, operation) in resend {
            self.stage(
                node,
                Message::Execute {
                    txn,
                    start_time,
                    sequence,
                    operation,
                },
            );
        }
    }
}
