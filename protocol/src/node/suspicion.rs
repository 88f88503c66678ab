//! The failure detector's place in the node: heartbeat rounds, gossip, and what suspicion
//! changes. Suspicion never decides an outcome; it only starts recovery ballots sooner,
//! aborts executions of clients that are gone, and is reported to the runtime.

use super::{Event, Node};
use crate::detector::{FailureDetector, Heartbeat, Role};
use crate::message::{AbortReason, Message};
use crate::types::{NodeId, Time, TxnId};
use std::collections::BTreeSet;

impl Node {
    pub(super) fn start_detector(&mut self, now: Time, incarnation: u64) {
        self.detector = self.config.detector.clone().map(|config| {
            FailureDetector::new(
                config,
                self.config.id,
                Role::DataNode,
                incarnation,
                self.config.seed,
                now,
            )
        });
    }

    /// Members suspected now (empty without a detector).
    pub fn suspected(&self) -> &BTreeSet<NodeId> {
        &self.suspected
    }

    /// Sets the transport addresses this node's heartbeats carry (see
    /// [`crate::detector::Heartbeat::addresses`]).
    pub fn set_addresses(&mut self, addresses: Vec<crate::detector::Address>) {
        if let Some(detector) = self.detector.as_mut() {
            detector.set_addresses(addresses);
        }
    }

    /// The failure detector, for status displays.
    pub fn detector(&self) -> Option<&FailureDetector> {
        self.detector.as_ref()
    }

    pub(super) fn on_heartbeat_round(&mut self, now: Time) {
        let members = self.config.cluster.member_ids();
        let load = u32::try_from(self.txns.len() + self.executions.len()).unwrap_or(u32::MAX);
        let Some(detector) = self.detector.as_mut() else {
            return;
        };
        detector.set_load(load);
        let Some((targets, digest)) = detector.round(now, &members) else {
            return;
        };
        for target in targets {
            self.send(
                target,
                Message::Gossip {
                    heartbeats: digest.clone(),
                },
            );
        }
        self.act_on_suspicion(now);
    }

    pub(super) fn on_gossip(&mut self, now: Time, from: NodeId, heartbeats: Vec<Heartbeat>) {
        let member = self.config.cluster.is_member(from);
        let Some(detector) = self.detector.as_mut() else {
            return;
        };
        if member {
            detector.merge(now, from, &heartbeats);
        } else {
            // A client speaks only for itself (its sender id is authenticated); it pulls
            // the cluster's view in return.
            let own: Vec<Heartbeat> = heartbeats
                .into_iter()
                .filter(|heartbeat| heartbeat.node == from && heartbeat.role == Role::Client)
                .collect();
            detector.merge(now, from, &own);
            let digest = detector.digest();
            self.send(from, Message::Gossip { heartbeats: digest });
        }
    }

    /// Recomputes who is suspected and acts: an undecided transaction missing the vote of a
    /// suspected RM, or of any RM while its client is suspected, or with a suspected
    /// acceptor (which may hold the Phase2b the decision waits for), starts recovery now;
    /// an execution whose client is suspected is aborted.
    fn act_on_suspicion(&mut self, now: Time) {
        let Some(detector) = self.detector.as_ref() else {
            return;
        };
        let suspected = detector.suspected(now);
        for node in suspected.symmetric_difference(&self.suspected) {
            self.events.push_back(Event::Suspicion {
                node: *node,
                suspected: suspected.contains(node),
            });
        }
        self.suspected = suspected;
        if self.suspected.is_empty() {
            return;
        }
        let me = self.config.id;
        let stuck: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, entry)| entry.leader.is_none() && entry.recovery_attempts == 0)
            .filter(|(_, entry)| {
                let missing: Vec<NodeId> = entry
                    .descriptor
                    .participants
                    .iter()
                    .copied()
                    .filter(|rm| {
                        let voted_here = *rm == me && entry.rm.is_some();
                        !(entry.tally.heard_from(*rm) || voted_here)
                    })
                    .collect();
                let client_gone = self.suspected.contains(&entry.descriptor.client());
                // Thrifty Phase2a goes to F+1 acceptors only: one suspected acceptor can
                // leave an instance short of F+1 Phase2b until a ballot asks all 2F+1.
                let acceptor_gone = entry
                    .descriptor
                    .acceptors
                    .iter()
                    .any(|acceptor| *acceptor != me && self.suspected.contains(acceptor));
                acceptor_gone
                    || (!missing.is_empty()
                        && (client_gone || missing.iter().any(|rm| self.suspected.contains(rm))))
            })
            .map(|(txn, _)| *txn)
            .collect();
        for txn in stuck {
            self.start_recovery(now, txn);
        }
        let orphaned: Vec<TxnId> = self
            .executions
            .keys()
            .copied()
            .filter(|txn| self.suspected.contains(&txn.client))
            .collect();
        for txn in orphaned {
            self.abort_execution(now, txn, AbortReason::ClientIdle);
            self.remove_execution(txn);
        }
    }
}
