//! Simulated clients: running the workload's transactions, one-shot and interactive,
//! and crashing in the middle of them.

use super::detector_config;
use super::{Action, Phase, Simulation, CLIENT_ID_BASE};
use crate::workload::{Planned, Step};
use dtx_protocol::{
    Client, ClientConfig, Finished, Input, NodeId, ReadResult, Time, TxnId, TxnResult,
};
use std::time::Duration;

#[derive(Debug)]
pub(super) struct Busy {
    pub(super) txn: TxnId,
    pub(super) planned: Planned,
    /// Interactive: operations issued so far, and the reads they returned.
    pub(super) issued: Vec<dtx_protocol::Operation>,
    pub(super) reads: Vec<ReadResult>,
    /// Interactive: writes held back to travel with the prepares (`commit_with`).
    pub(super) buffered: Vec<dtx_protocol::Operation>,
}

impl Busy {
    pub(super) fn operations(&self) -> &[dtx_protocol::Operation] {
        if self.planned.step.is_interactive() {
            &self.issued
        } else {
            &self.planned.operations
        }
    }
}

#[derive(Debug)]
pub(super) struct ClientHost {
    pub(super) client: Client,
    pub(super) incarnation: u64,
    pub(super) busy: Option<Busy>,
    pub(super) timer_armed: Option<Time>,
}

impl Simulation {
    pub(super) fn new_client(&mut self, index: usize, incarnation: u64) -> ClientHost {
        let id = NodeId(CLIENT_ID_BASE + index as u64 * 1_000 + incarnation);
        let mut client_config = ClientConfig::new(id, self.cluster.clone(), self.rng.next_u64());
        client_config.retry_timeout = Duration::from_micros(self.params.client_retry_micros);
        client_config.retry_timeout_max =
            Duration::from_micros(self.params.client_retry_micros * 8);
        client_config.retries_max = 10_000;
        client_config.one_phase = self.params.one_phase;
        client_config.detector = self
            .params
            .heartbeat_interval_micros
            .map(|interval| detector_config(interval, self.config.timing.is_some()));
        self.client_by_id.insert(id, index);
        ClientHost {
            client: Client::new(client_config),
            incarnation,
            busy: None,
            timer_armed: None,
        }
    }

    pub(super) fn begin(&mut self, index: usize, planned: Planned) {
        let now = self.now;
        let host = &mut self.clients[index];
        let begun = if planned.step.is_interactive() {
            host.client.begin_interactive(now)
        } else {
            host.client.begin(now, planned.operations.clone())
        };
        let txn = match begun {
            Ok(txn) => txn,
            Err(dtx_protocol::BeginError::ParticipantSuspected { .. }) => {
                // Fail fast: a participant is suspected. Try again (another plan) later.
                self.measured.stats.failed_fast += 1;
                let incarnation = host.incarnation;
                if planned.step != Step::Setup {
                    self.workload.drop_follow_up(index);
                }
                let wait = self.params.heartbeat_interval_micros.unwrap_or(1_000) * 5;
                let retry = if planned.step == Step::Setup {
                    Action::RetrySetup
                } else {
                    Action::ClientNext { index, incarnation }
                };
                self.after(wait, retry);
                return;
            }
            Err(error) => panic!("workload produced an invalid transaction: {error}"),
        };
        if let Some(descriptor) = host.client.descriptor(txn) {
            self.participants
                .insert(txn, descriptor.participants.clone());
        }
        if planned.step != Step::Setup {
            self.measured.stats.txns += 1;
        }
        if let Some(history) = self.history.as_mut() {
            history.invoke(index, now.as_micros(), &planned.operations);
        }
        let incarnation = host.incarnation;
        let interactive = planned.step.is_interactive();
        host.busy = Some(Busy {
            txn,
            planned,
            issued: Vec::new(),
            reads: Vec::new(),
            buffered: Vec::new(),
        });
        let crash = self.phase == Phase::Safety && self.rng.chance(self.params.client_crash_chance);
        if crash && !interactive && self.rng.chance(0.5) {
            // Dies while sending its Prepares: only some of them leave.
            let mut envelopes = Vec::new();
            while let Some(envelope) = self.clients[index].client.poll_output() {
                envelopes.push(envelope);
            }
            let sent = self.rng.below(envelopes.len() as u64 + 1) as usize;
            let id = self.clients[index].client.id();
            for envelope in envelopes.into_iter().take(sent) {
                self.transmit(id, envelope);
            }
            self.crash_client(index, incarnation);
            return;
        }
        if crash {
            let when = self.rng.between(0, 20 * self.params.delay_max_micros);
            self.after(when, Action::ClientCrash { index, incarnation });
        }
        if interactive {
            self.advance_interactive(index);
        }
        self.drain_client(index);
    }

    /// Issues the next operation of the client's interactive transaction, or commits it.
    /// Half of the interactive transfers (even sequence numbers: no draw from the seeded
    /// generator, so runs stay comparable) buffer their writes until commit, where they
    /// travel with the prepares; the workloads issue reads before writes, so a buffered
    /// write is never one a later read should see.
    pub(super) fn advance_interactive(&mut self, index: usize) {
        let now = self.now;
        let Some(busy) = self.clients[index].busy.as_ref() else {
            return;
        };
        let txn = busy.txn;
        let buffering =
            matches!(busy.planned.step, Step::InteractiveTransfer { .. }) && txn.sequence % 2 == 0;
        let mut next =
            self.workload
                .next_operation(&busy.planned.step, busy.issued.len(), &busy.reads);
        while let Some(operation) = next.as_ref().filter(|op| buffering && op.is_write()) {
            let Some(busy) = self.clients[index].busy.as_mut() else {
                return;
            };
            busy.issued.push(operation.clone());
            busy.buffered.push(operation.clone());
            next = self
                .workload
                .next_operation(&busy.planned.step, busy.issued.len(), &busy.reads);
        }
        let host = &mut self.clients[index];
        match next {
            Some(operation) => {
                let answer = host.client.execute(now, txn, operation.clone());
                let failed_fast = &mut self.measured.stats.failed_fast;
                if !goes_on(answer, &mut host.client, now, txn, failed_fast, "operation") {
                    return;
                }
                if let Some(busy) = host.busy.as_mut() {
                    busy.issued.push(operation);
                }
            }
            None => {
                let buffered = host
                    .busy
                    .as_mut()
                    .map(|busy| std::mem::take(&mut busy.buffered))
                    .unwrap_or_default();
                let answer = host.client.commit_with(now, txn, buffered);
                let failed_fast = &mut self.measured.stats.failed_fast;
                if !goes_on(answer, &mut host.client, now, txn, failed_fast, "commit") {
                    return;
                }
                if let Some(descriptor) = host.client.descriptor(txn) {
                    self.participants
                        .insert(txn, descriptor.participants.clone());
                }
            }
        }
    }

    pub(super) fn client_input(&mut self, index: usize, input: Input) {
        let now = self.now;
        self.clients[index].client.handle(now, input);
        self.drain_client(index);
    }

    pub(super) fn drain_client(&mut self, index: usize) {
        let id = self.clients[index].client.id();
        loop {
            let mut envelopes = Vec::new();
            while let Some(envelope) = self.clients[index].client.poll_output() {
                envelopes.push(envelope);
            }
            let mut executed = Vec::new();
            while let Some(done) = self.clients[index].client.poll_executed() {
                executed.push(done);
            }
            let mut finished = Vec::new();
            while let Some(event) = self.clients[index].client.poll_event() {
                finished.push(event);
            }
            if envelopes.is_empty() && executed.is_empty() && finished.is_empty() {
                break;
            }
            for envelope in envelopes {
                self.transmit(id, envelope);
            }
            for done in executed {
                let current = self.clients[index]
                    .busy
                    .as_mut()
                    .filter(|busy| busy.txn == done.txn);
                if let Some(busy) = current {
                    busy.reads.extend(done.read);
                    self.advance_interactive(index);
                }
            }
            for event in finished {
                self.on_finished(index, event);
            }
        }
        let host = &self.clients[index];
        if let Some(due) = host.client.poll_timeout() {
            if host.timer_armed.is_none_or(|armed| armed > due) {
                let incarnation = host.incarnation;
                self.clients[index].timer_armed = Some(due);
                self.schedule(due, Action::ClientTimer { index, incarnation });
            }
        }
    }

    pub(super) fn on_client_timer(&mut self, index: usize, incarnation: u64) {
        if self.clients[index].incarnation != incarnation {
            return;
        }
        self.clients[index].timer_armed = None;
        let due = self.clients[index].client.poll_timeout();
        if due.is_some_and(|due| due <= self.now) {
            self.client_input(index, Input::Timeout);
        } else {
            self.drain_client(index);
        }
    }

    pub(super) fn on_finished(&mut self, index: usize, finished: Finished) {
        let id = self.clients[index].client.id();
        let Some(busy) = self.clients[index].busy.take() else {
            return;
        };
        assert_eq!(
            busy.txn, finished.txn,
            "client finished a transaction it was not running"
        );
        self.observer
            .on_client_finished(id, finished.txn, &finished.result);
        if let Some(history) = self.history.as_mut() {
            history.complete(
                index,
                self.now.as_micros(),
                &busy.planned.operations,
                Some(&finished.result),
            );
        }
        let is_setup = busy.planned.step == Step::Setup;
        match &finished.result {
            TxnResult::Committed { reads, reads_lost } => {
                if !is_setup {
                    self.measured.stats.committed += 1;
                    self.measured
                        .latencies
                        .push(finished.finished.since(finished.started).as_micros() as u64);
                }
                if *reads_lost {
                    self.measured.stats.unknown += u64::from(!is_setup);
                } else if !reads.is_empty() {
                    self.client_reads.push((finished.txn, reads.clone()));
                }
            }
            TxnResult::Aborted { .. } | TxnResult::Refused(_) => {
                self.measured.stats.aborted += u64::from(!is_setup)
            }
            TxnResult::Unknown => self.measured.stats.unknown += u64::from(!is_setup),
        }
        let mut rng = self.rng.fork();
        self.workload
            .on_finished(index, &busy.planned.step, &finished.result, &mut rng);
        if is_setup {
            if matches!(finished.result, TxnResult::Committed { .. }) {
                self.start_safety();
            } else if let Some(planned) = self.workload.setup() {
                self.begin(0, planned);
            }
            return;
        }
        let incarnation = self.clients[index].incarnation;
        let think = if self.workload.has_follow_up(index) {
            0
        } else {
            self.rng.between(0, self.params.think_time_max_micros)
        };
        self.after(think, Action::ClientNext { index, incarnation });
    }

    pub(super) fn on_client_next(&mut self, index: usize, incarnation: u64) {
        let host = &self.clients[index];
        if host.incarnation != incarnation || host.busy.is_some() || self.phase != Phase::Safety {
            return;
        }
        if self.measured.stats.txns >= self.config.txns as u64 {
            self.workload.drop_follow_up(index);
            return;
        }
        if self.lab.is_some() && !self.lab_paced(index, incarnation) {
            return;
        }
        let mut rng = self.rng.fork();
        let planned = self.workload.next(index, &mut rng);
        self.begin(index, planned);
    }

    /// The client dies: its state is gone; its transactions are left to the data nodes.
    pub(super) fn crash_client(&mut self, index: usize, incarnation: u64) {
        if self.clients[index].incarnation != incarnation {
            return;
        }
        self.measured.stats.client_crashes += 1;
        if let Some(busy) = self.clients[index].busy.take() {
            self.measured.stats.unknown += 1;
            self.measured.orphaned.insert(busy.txn, self.now);
            if let Some(history) = self.history.as_mut() {
                history.complete(index, self.now.as_micros(), busy.operations(), None);
            }
        }
        self.workload.drop_follow_up(index);
        let replacement = self.new_client(index, incarnation + 1);
        self.clients[index] = replacement;
        self.after(
            0,
            Action::ClientNext {
                index,
                incarnation: incarnation + 1,
            },
        );
    }
}

/// Whether an interactive transaction goes on after `execute` or `commit_with` (`what`)
/// answered `answer`. It stops when it was aborted meanwhile (its Finished event is on its
/// way) or when an owner is suspected: then the client aborts it at once (fails fast).
fn goes_on(
    answer: Result<(), dtx_protocol::ExecuteError>,
    client: &mut Client,
    now: Time,
    txn: TxnId,
    failed_fast: &mut u64,
    what: &str,
) -> bool {
    match answer {
        Ok(()) => true,
        Err(dtx_protocol::ExecuteError::NotExecuting(_)) => false,
        Err(dtx_protocol::ExecuteError::OwnerSuspected { .. }) => {
            *failed_fast += 1;
            let _ = client.abort(now, txn);
            false
        }
        Err(error) => panic!("interactive {what} refused: {error}"),
    }
}
