//! Deadlock handling for interactive execution: edge-chasing probes (Chandy–Misra–Haas,
//! ACM TOCS 1983), verification laps with pins, the victim choice, and wound-wait
//! (Rosenkrantz, Stearns, Lewis 1978).
//!
//! Edge chasing, as built here: a transaction T that has waited `probe_delay` at node A
//! sends a probe along each of its wait-for edges T → U. If U waits at A too, the probe
//! follows U's edges locally; if U only holds locks at A, U may be waiting elsewhere, and
//! only U's client knows where (its outstanding operations), so the probe goes to U's
//! client, which forwards it to those nodes. A probe that reaches its initiator has found
//! a cycle; the youngest transaction on it (start time, then txn id) is the victim, and the
//! node where the victim waits re-checks that the victim still waits for the next
//! transaction of the cycle before aborting it (no phantom aborts from stale probes).
//! Probes are bounded in path length, deduplicated per (initiator, target), and each wait
//! sends at most one probe per `probe_delay`.

use super::{malformed, Event, Node};
use crate::message::{AbortReason, Message, MessageKind, ProbeHop};
use crate::reject::DeadlockMessageProblem;
use crate::types::{NodeId, Time, TxnId};
use std::collections::{BTreeMap, BTreeSet};

impl Node {
    /// `txn` as one hop of a probe path (`None` if it does not execute here).
    fn hop(&self, txn: TxnId) -> Option<ProbeHop> {
        let execution = self.executions.get(&txn)?;
        Some(ProbeHop {
            txn,
            start_time: execution.start_time,
            node: self.config.id,
        })
    }

    /// A cycle entirely at this node is found here, without messages.
    pub(super) fn detect_local_cycle(&mut self, now: Time, start: TxnId) {
        let mut path = vec![start];
        let mut on_path: BTreeSet<TxnId> = [start].into_iter().collect();
        let mut stack: Vec<Vec<TxnId>> = vec![self.local_waits_for(start)];
        let mut visited: BTreeSet<TxnId> = BTreeSet::new();
        while let Some(frontier) = stack.last_mut() {
            let Some(next) = frontier.pop() else {
                stack.pop();
                if let Some(done) = path.pop() {
                    on_path.remove(&done);
                    visited.insert(done);
                }
                continue;
            };
            if next == start {
                let cycle: Vec<ProbeHop> = path.iter().filter_map(|txn| self.hop(*txn)).collect();
                // Members pinned by a remote cycle's verification are left to that lap.
                let pinned = path.iter().any(|txn| self.pinned_by(now, *txn).is_some());
                if cycle.len() == path.len() && !pinned {
                    return self.abort_victim(now, cycle);
                }
                continue;
            }
            if on_path.contains(&next)
                || visited.contains(&next)
                || path.len() >= self.config.limits.probe_path_max
            {
                continue;
            }
            let waits = self.local_waits_for(next);
            if waits.is_empty() {
                visited.insert(next);
                continue;
            }
            path.push(next);
            on_path.insert(next);
            stack.push(waits);
        }
    }

    /// Sends this waiting transaction's probes (edge chasing).
    pub(super) fn initiate_probe(&mut self, now: Time, txn: TxnId) {
        let Some(hop) = self.hop(txn) else {
            return;
        };
        for blocker in self.local_waits_for(txn) {
            self.chase(now, txn, blocker, vec![hop]);
        }
    }

    /// Follows the edge (last transaction of `path`) → `target` from this node.
    fn chase(&mut self, now: Time, initiator: TxnId, target: TxnId, path: Vec<ProbeHop>) {
        if target == initiator {
            return self.found_cycle(now, path);
        }
        if path.len() >= self.config.limits.probe_path_max
            || path.iter().any(|hop| hop.txn == target)
        {
            return;
        }
        if !self.remember_probe(now, initiator, target) {
            return;
        }
        let waiting_here = self
            .executions
            .get(&target)
            .is_some_and(|execution| execution.waiting.is_some());
        if waiting_here {
            let Some(hop) = self.hop(target) else {
                return;
            };
            let mut extended = path;
            extended.push(hop);
            for blocker in self.local_waits_for(target) {
                self.chase(now, initiator, blocker, extended.clone());
            }
        } else if self.executions.contains_key(&target) {
            // It holds locks here but waits (if at all) elsewhere: only its client knows where.
            self.send(
                target.client,
                Message::Probe {
                    initiator,
                    target,
                    path,
                },
            );
        }
        // Otherwise it is prepared or unknown here: prepared transactions never wait.
    }

    /// Duplicate suppression: a (initiator, target) pair is followed once per
    /// `probe_delay` (a later round of the same wait may pass again, so a lost probe is
    /// repaired by the next round).
    fn remember_probe(&mut self, now: Time, initiator: TxnId, target: TxnId) -> bool {
        let window = self.config.probe_delay;
        if let Some(seen) = self.probes_seen.get(&(initiator, target)) {
            if now < seen.saturating_add(window) {
                return false;
            }
        }
        if self.probes_seen.insert((initiator, target), now).is_none() {
            self.probes_seen_order.push_back((initiator, target));
        }
        while self.probes_seen_order.len() > self.config.limits.probes_remembered_max {
            if let Some(oldest) = self.probes_seen_order.pop_front() {
                self.probes_seen.remove(&oldest);
            }
        }
        true
    }

    pub(super) fn on_probe(
        &mut self,
        now: Time,
        from: NodeId,
        initiator: TxnId,
        target: TxnId,
        path: Vec<ProbeHop>,
    ) {
        if path.is_empty()
            || path.len() > self.config.limits.probe_path_max
            || path[0].txn != initiator
        {
            return self.reject(
                from,
                malformed(MessageKind::Probe, DeadlockMessageProblem::BadPath),
            );
        }
        // Only a probe for a transaction waiting here continues; it came via the client.
        let waiting_here = self
            .executions
            .get(&target)
            .is_some_and(|execution| execution.waiting.is_some());
        if waiting_here || target == initiator {
            self.chase(now, initiator, target, path);
        }
    }

    /// A probe came back to its initiator: verify the cycle, starting at its youngest
    /// transaction (the victim).
    fn found_cycle(&mut self, now: Time, cycle: Vec<ProbeHop>) {
        let Some(victim) = youngest(&cycle) else {
            return;
        };
        if cycle.len() == 1 {
            return;
        }
        self.verify_cycle(now, victim.txn, cycle, 0);
    }

    pub(super) fn on_victim(
        &mut self,
        now: Time,
        from: NodeId,
        victim: TxnId,
        cycle: Vec<ProbeHop>,
        verified: u32,
    ) {
        let bad = !self.config.cluster.is_member(from)
            || cycle.len() < 2
            || cycle.len() > self.config.limits.probe_path_max
            || verified as usize > cycle.len();
        if bad {
            return self.reject(
                from,
                malformed(
                    MessageKind::Victim,
                    DeadlockMessageProblem::BadCycleOrSender,
                ),
            );
        }
        if youngest(&cycle).map(|hop| hop.txn) != Some(victim) {
            return self.reject(
                from,
                malformed(MessageKind::Victim, DeadlockMessageProblem::NotYoungest),
            );
        }
        self.verify_cycle(now, victim, cycle, verified);
    }

    /// Checks the cycle's edges that wait at this node, in cycle order from the victim,
    /// passing the rest on; after a full lap the victim's node aborts the victim.
    ///
    /// Each verified waiter is pinned to this lap for `deadlock_verify_timeout`: a lap that
    /// meets a waiter pinned by another lap gives up (the next probe round retries), and no
    /// pinned waiter is aborted for another cycle. So when the lap ends, every edge it
    /// verified still stands, and the victim really is deadlocked: overlapping cycles
    /// cannot both abort a victim when one abort would have broken both.
    fn verify_cycle(&mut self, now: Time, victim: TxnId, cycle: Vec<ProbeHop>, mut verified: u32) {
        let me = self.config.id;
        let length = cycle.len();
        let Some(start) = cycle.iter().position(|hop| hop.txn == victim) else {
            return;
        };
        while (verified as usize) < length {
            let hop = cycle[(start + verified as usize) % length];
            if hop.node != me {
                return self.send(
                    hop.node,
                    Message::Victim {
                        victim,
                        cycle,
                        verified,
                    },
                );
            }
            let next = cycle[(start + verified as usize + 1) % length].txn;
            if !self.local_waits_for(hop.txn).contains(&next) || !self.pin(now, hop.txn, victim) {
                // A wait on the cycle ended, or another lap holds it: no abort now.
                let pinned: Vec<ProbeHop> = (0..verified as usize)
                    .map(|step| cycle[(start + step) % length])
                    .collect();
                return self.unpin_lap(victim, &pinned);
            }
            verified += 1;
        }
        let home = cycle[start].node;
        if home != me {
            return self.send(
                home,
                Message::Victim {
                    victim,
                    cycle,
                    verified,
                },
            );
        }
        if self.pinned_by(now, victim) == Some(victim) {
            self.abort_victim(now, cycle.clone());
        }
        self.unpin_lap(victim, &cycle);
    }

    /// Releases the pins a lap holds, here and at the other nodes of `hops`.
    fn unpin_lap(&mut self, victim: TxnId, hops: &[ProbeHop]) {
        let mut by_node: BTreeMap<NodeId, Vec<TxnId>> = BTreeMap::new();
        for hop in hops {
            by_node.entry(hop.node).or_default().push(hop.txn);
        }
        let me = self.config.id;
        for (node, waiters) in by_node {
            if node == me {
                self.on_unpin(me, victim, waiters);
            } else {
                self.send(node, Message::Unpin { victim, waiters });
            }
        }
    }

    pub(super) fn on_unpin(&mut self, from: NodeId, victim: TxnId, waiters: Vec<TxnId>) {
        if !self.config.cluster.is_member(from) || waiters.len() > self.config.limits.probe_path_max
        {
            return self.reject(
                from,
                malformed(MessageKind::Victim, DeadlockMessageProblem::BadUnpin),
            );
        }
        for waiter in waiters {
            if self
                .pins
                .get(&waiter)
                .is_some_and(|(lap, _)| *lap == victim)
            {
                self.pins.remove(&waiter);
            }
        }
    }

    /// Pins `waiter` to the verification lap of `victim`; false if another lap holds it.
    fn pin(&mut self, now: Time, waiter: TxnId, victim: TxnId) -> bool {
        match self.pinned_by(now, waiter) {
            Some(holder) if holder != victim => false,
            Some(_) => true,
            None => {
                let expiry = now.saturating_add(self.config.deadlock_verify_timeout);
                self.pins.insert(waiter, (victim, expiry));
                true
            }
        }
    }

    /// The lap `waiter` is pinned to, if the pin has not expired.
    fn pinned_by(&mut self, now: Time, waiter: TxnId) -> Option<TxnId> {
        match self.pins.get(&waiter) {
            Some((victim, expiry)) if now < *expiry => Some(*victim),
            Some(_) => {
                self.pins.remove(&waiter);
                None
            }
            None => None,
        }
    }

    /// Aborts the cycle's youngest transaction if it still waits here for the next
    /// transaction on the cycle (a last re-check).
    fn abort_victim(&mut self, now: Time, cycle: Vec<ProbeHop>) {
        let Some(victim) = youngest(&cycle) else {
            return;
        };
        let Some(position) = cycle.iter().position(|hop| hop.txn == victim.txn) else {
            return;
        };
        let next = cycle[(position + 1) % cycle.len()].txn;
        if victim.node != self.config.id || !self.local_waits_for(victim.txn).contains(&next) {
            return;
        }
        let local_edges = self.wait_for_edges();
        self.events.push_back(Event::DeadlockVictim {
            victim: victim.txn,
            cycle,
            local_edges,
        });
        self.abort_execution(now, victim.txn, AbortReason::Deadlock);
    }

    /// Wound-wait: the requester wounds every younger blocker that has not voted.
    pub(super) fn wound_younger_blockers(&mut self, now: Time, txn: TxnId) {
        let Some(start) = self
            .executions
            .get(&txn)
            .map(|execution| execution.start_time)
        else {
            return;
        };
        for blocker in self.local_waits_for(txn) {
            let Some(execution) = self.executions.get(&blocker) else {
                continue;
            };
            let younger = youth(execution.start_time, blocker) > youth(start, txn);
            if younger && execution.aborted.is_none() {
                self.events.push_back(Event::Wounded {
                    victim: blocker,
                    by: txn,
                });
                self.abort_execution(now, blocker, AbortReason::Wounded);
            }
        }
    }
}

/// How young a transaction is, for choosing whom a deadlock aborts: a later start time is
/// younger, and the transaction id breaks ties, so every node ranks a cycle the same way.
fn youth(start_time: Time, txn: TxnId) -> (Time, TxnId) {
    (start_time, txn)
}

/// The youngest transaction on `cycle`: the victim that edge chasing aborts, the same at
/// every node that sees the cycle.
fn youngest(cycle: &[ProbeHop]) -> Option<ProbeHop> {
    cycle
        .iter()
        .max_by_key(|hop| youth(hop.start_time, hop.txn))
        .copied()
}
