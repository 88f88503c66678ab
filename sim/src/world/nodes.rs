//! Data nodes: feeding them inputs, carrying out their outputs, watching their events,
//! their timers, and the crash faults that strike them.

use super::disk::Disk;
use super::{Action, Phase, Simulation};
use crate::checker::Violation;
use dtx_protocol::{Event, Input, Node, NodeConfig, NodeId, Output, Time, TxnId};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug)]
pub(super) struct Host {
    pub(super) config: NodeConfig,
    pub(super) node: Option<Node>,
    pub(super) incarnation: u64,
    pub(super) disk: Disk,
    pub(super) timer_armed: Option<Time>,
}

impl Simulation {
    pub(super) fn node_input(&mut self, index: usize, input: Input) {
        let now = self.now;
        let Some(node) = self.hosts[index].node.as_mut() else {
            return;
        };
        node.handle(now, input);
        self.drain_node(index);
    }

    pub(super) fn drain_node(&mut self, index: usize) {
        let Some(node) = self.hosts[index].node.as_mut() else {
            return;
        };
        let id = node.id();
        let mut outputs = std::mem::take(&mut self.scratch_outputs);
        while let Some(output) = node.poll_output() {
            outputs.push(output);
        }
        let mut events = std::mem::take(&mut self.scratch_events);
        while let Some(event) = node.poll_event() {
            events.push(event);
        }
        for output in outputs.drain(..) {
            match output {
                Output::Persist { token, records } => self.disk_write(index, token, records),
                Output::Send(envelope) => self.transmit(id, envelope),
                Output::Resource(request) => self.resource_request(index, request),
            }
        }
        for event in events.drain(..) {
            if let Event::Decided { txn, .. }
            | Event::Voted { txn, .. }
            | Event::RecoveryStarted { txn, .. } = &event
            {
                if self.traced(*txn) {
                    eprintln!("{:>10} event at {id}: {event:?}", self.now.as_micros());
                }
            }
            match event {
                Event::Decided { txn, outcome, .. } => {
                    self.observer.on_decided(id, txn, outcome);
                    if let Some(crashed) = self.measured.orphaned.remove(&txn) {
                        self.measured
                            .orphan_recoveries
                            .push(self.now.since(crashed).as_micros() as u64);
                    }
                    if let Some(crashed) = self.measured.stranded.remove(&txn) {
                        self.measured
                            .stranded_recoveries
                            .push(self.now.since(crashed).as_micros() as u64);
                    }
                }
                Event::RecoveryStarted { .. } => self.measured.stats.recoveries += 1,
                Event::Rejected { from, reason } => {
                    self.measured.stats.rejected += 1;
                    if reason == dtx_protocol::RejectReason::ConflictingPhase2a {
                        self.observer
                            .violation(Violation::ConflictingPhase2a { node: id, from });
                    }
                }
                Event::Voted { .. } | Event::AcceptorFenceCleared => {}
                // Honest logs and a few thousand ballots: neither can happen here.
                Event::RecoveryRoundsExhausted { .. } | Event::ReplayAnomaly { .. } => {
                    self.observer.violation(Violation::UnexpectedEvent {
                        node: id,
                        event: Box::new(event),
                    });
                }
                Event::LockWaitStarted { txn, .. } => {
                    self.measured.stats.lock_waits += 1;
                    self.measured.wait_started.insert(txn, self.now);
                }
                Event::LockWaitTimedOut { .. } => self.measured.stats.lock_wait_timeouts += 1,
                Event::Wounded { .. } => self.measured.stats.wounds += 1,
                Event::Suspicion { node, suspected } => self.on_suspicion(id, node, suspected),
                Event::DeadlockVictim {
                    victim,
                    cycle,
                    local_edges,
                } => {
                    self.on_deadlock_victim(index, victim, &cycle, local_edges);
                }
            }
        }
        self.scratch_outputs = outputs;
        self.scratch_events = events;
        self.arm_node_timer(index);
    }

    /// Failure detection: time from a crash to each live node's suspicion, and suspicions of
    /// nodes that were up (false, or caused by a partition).
    pub(super) fn on_suspicion(&mut self, observer: NodeId, node: NodeId, suspected: bool) {
        if !suspected {
            return;
        }
        if !self.cluster.is_member(node) {
            return;
        }
        let down = self.hosts[(node.0 - 1) as usize].node.is_none();
        let crashed_at = self.measured.crashed_at.get(&node).copied();
        match (down, crashed_at) {
            (true, Some(at)) => {
                let first = self.measured.detected.insert((observer, node, at));
                if first {
                    self.measured
                        .detection_latencies
                        .push(self.now.since(at).as_micros() as u64);
                }
            }
            (false, Some(at))
                if self
                    .measured
                    .restarted_at
                    .get(&node)
                    .is_some_and(|restarted| {
                        *restarted >= at
                            && self.now.since(*restarted).as_micros() as u64
                                <= 20 * self.params.heartbeat_interval_micros.unwrap_or(0)
                    }) =>
            {
                self.measured.stats.stale_suspicions += 1;
            }
            _ if self.blocked.is_empty() => self.measured.stats.false_suspicions += 1,
            _ => self.measured.stats.partition_suspicions += 1,
        }
    }

    /// A deadlock victim: the global wait-for graph (the simulator sees every node) goes to
    /// the checker, which judges whether the victim is on a real cycle.
    pub(super) fn on_deadlock_victim(
        &mut self,
        index: usize,
        victim: TxnId,
        cycle: &[dtx_protocol::ProbeHop],
        local_edges: Vec<(TxnId, TxnId)>,
    ) {
        self.measured.stats.deadlocks_detected += 1;
        let mut edges: BTreeMap<TxnId, BTreeSet<TxnId>> = BTreeMap::new();
        for (waiter, blocker) in local_edges {
            edges.entry(waiter).or_default().insert(blocker);
        }
        for (other, host) in self.hosts.iter().enumerate() {
            if other == index {
                continue;
            }
            if let Some(node) = &host.node {
                for (waiter, blocker) in node.wait_for_edges() {
                    edges.entry(waiter).or_default().insert(blocker);
                }
            }
        }
        let fault_free = self.config.faults.is_none();
        if !self
            .observer
            .on_deadlock_victim(victim, cycle, &edges, fault_free)
        {
            self.measured.stats.phantom_aborts += 1;
        }
        let formed = cycle
            .iter()
            .filter_map(|hop| self.measured.wait_started.get(&hop.txn))
            .max()
            .copied();
        if let Some(formed) = formed {
            self.measured
                .deadlock_latencies
                .push(self.now.since(formed).as_micros() as u64);
        }
    }

    pub(super) fn arm_node_timer(&mut self, index: usize) {
        let host = &self.hosts[index];
        let Some(due) = host.node.as_ref().and_then(Node::poll_timeout) else {
            return;
        };
        if host.timer_armed.is_some_and(|armed| armed <= due) {
            return;
        }
        let incarnation = host.incarnation;
        self.hosts[index].timer_armed = Some(due);
        self.schedule(due, Action::NodeTimer { index, incarnation });
    }

    pub(super) fn on_node_timer(&mut self, index: usize, incarnation: u64) {
        if self.hosts[index].incarnation != incarnation {
            return;
        }
        self.hosts[index].timer_armed = None;
        let due = self.hosts[index].node.as_ref().and_then(Node::poll_timeout);
        if due.is_some_and(|due| due <= self.now) {
            self.node_input(index, Input::Timeout);
        } else {
            self.arm_node_timer(index);
        }
    }

    pub(super) fn on_crash_fault(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let up: Vec<usize> = (0..self.hosts.len())
            .filter(|index| self.hosts[*index].node.is_some())
            .collect();
        // Deployment-like timing measures recovery from one crash: one node down at a
        // time, for long enough that the survivors, not its restart, decide.
        let deployed = self.config.timing.is_some();
        if !up.is_empty() && (!deployed || up.len() == self.hosts.len()) {
            let index = *self.rng.pick(&up);
            let torn = self.config.faults.torn_writes;
            self.power_cut(index, torn);
            let shortest = if deployed {
                self.params.downtime_max_micros / 2
            } else {
                1
            };
            let downtime = self.rng.between(shortest, self.params.downtime_max_micros);
            self.after(downtime, Action::Restart { index });
        }
        let wait = self.rng.between(1, 2 * self.params.crash_interval_micros);
        self.after(wait, Action::Crash);
    }
}
