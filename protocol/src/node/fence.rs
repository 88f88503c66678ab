//! The acceptor amnesia fence: how a node whose data directory was wiped
//! (`dtx node --reinit`) rejoins without acting on promises and acceptances it forgot.
//!
//! # The hazard
//! An acceptor's promises and accepted values are what make Paxos safe: a value is chosen
//! once F+1 acceptors accepted it, and every later leader's Phase 1 quorum meets at least
//! one of them and so proposes that value again. An acceptor that forgot its state and
//! answered Phase1a as if fresh could complete a quorum that meets none of them, and a
//! leader would then choose Aborted for an instance already chosen Prepared with the
//! forgotten acceptance's help.
//!
//! # The fence
//! [`Node::reinitialized`] starts the node in *acceptor quarantine* and stages
//! `Record::AcceptorFence { cleared: false }`, so a restart during quarantine replays into
//! quarantine again. While quarantined the node
//! * ignores (and counts, [`RejectReason::Quarantined`]) every Phase1a and Phase2a: as an
//!   acceptor it is a crashed one, which Paxos tolerates as one of its F failures;
//! * leads no recovery and takes no RM work (Prepare, Resolve ignored; a new Execute is
//!   answered [`AbortReason::Quarantined`]): it may have voted or led ballots for the
//!   same transactions before the wipe, and a second, different vote or proposal in a
//!   ballot it already used could let two values be chosen;
//! * still learns decisions, and its heartbeats say [`Role::Quarantined`], so clients
//!   leave it out of new acceptor sets as they do a draining node;
//! * every `fence_query_interval` sends [`Message::FenceQuery`] to every other data node.
//!   A member answers [`Message::FenceAnswer`] with `clear` true iff none of its undecided
//!   transactions (RM vote, acceptor state, recovery it leads, any entry waiting for a
//!   decision) names the asker as a participant or an acceptor, and with the newest
//!   incarnation the asker itself told it (so the fresh node's heartbeats are believed).
//!
//! Once every other member answered clear in one query round, the node persists
//! `AcceptorFence { cleared: true }` and takes acceptor and RM duty again.
//!
//! # Why that is safe
//! A transaction whose state the wiped node forgot is undecided at some other member
//! until it is decided: any value chosen with the wiped node's help was accepted by F+1
//! acceptors, at least one of them another member (F >= 1) that was not wiped, and an
//! acceptor keeps its state (an undecided entry) until it learns the outcome; a value not
//! chosen had an RM vote behind it, and a participant keeps its undecided entry until
//! the outcome too. So a round in which every member answers clear comes only after every
//! such transaction was decided somewhere and its holders learned it. A transaction
//! begun during quarantine can still name the node (a client whose view is stale): the
//! node ignores its Phase1a/Phase2a exactly as a crashed acceptor's, the other 2F
//! acceptors serve it, and the members holding it answer not clear until it is decided.
//!
//! # Residual assumptions
//! * At most F acceptors of any transaction are wiped or down at once (as for crashes);
//!   a quarantined node answers queries from its own (post-wipe) knowledge.
//! * After the fence clears, a forgotten transaction's outcome is known to the members
//!   that decided it, and they answer any later Phase1a with it; but an acceptor that
//!   never heard of the transaction (thrifty ballot 0 skips the last F) could still be
//!   asked to lead it by a client's Resolve, and if its Phase1 quorum were this node plus
//!   F-1 others equally ignorant, answering before any member that knows, it could choose
//!   differently. That needs a client that never learned the outcome, asking an acceptor
//!   that never took part, racing the members that know.
//! * RM amnesia is not covered: a participant that voted Prepared and was wiped lost the
//!   writes it must apply on Commit (rebuilding its data from peers is the runtime's job).
//! * A round number is reused by the fresh node only for transactions begun after the
//!   wipe (all older ones naming it are decided when the fence clears), and ballots are
//!   per transaction.

use super::outbox::Gates;
use super::{Event, Node};
use crate::detector::Role;
use crate::message::{AbortReason, Message, MessageKind};
use crate::record::Record;
use crate::reject::RejectReason;
use crate::types::{NodeId, Time, LEADER_ROUND_MAX};
use std::collections::BTreeSet;

/// A node's acceptor quarantine, while it lasts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Quarantine {
    /// The current query round (answers to older rounds do not count).
    round: u64,
    /// Members that answered clear in this round.
    clear: BTreeSet<NodeId>,
    /// When the next round starts.
    next_query: Time,
}

impl Quarantine {
    pub(super) fn new(now: Time) -> Quarantine {
        Quarantine {
            round: 0,
            clear: BTreeSet::new(),
            next_query: now,
        }
    }
}

impl Node {
    /// A node starting from a wiped data directory: empty, in acceptor quarantine until
    /// the other members confirm that no undecided transaction names it (see the module
    /// docs of `fence`). The quarantine is staged as a durable record, so a restart
    /// before it clears stays quarantined.
    pub fn reinitialized(config: crate::NodeConfig, now: Time) -> Node {
        let mut node = Node::new(config);
        node.stage_record(Record::AcceptorFence { cleared: false }, Gates::Sends);
        node.start_detector(now, 0);
        node.enter_quarantine(now);
        // The quarantine record goes out at once, ahead of anything the node will do.
        node.flush();
        node
    }

    /// True while the node is in acceptor quarantine.
    pub fn is_quarantined(&self) -> bool {
        self.quarantine.is_some()
    }

    pub(super) fn enter_quarantine(&mut self, now: Time) {
        self.quarantine = Some(Quarantine::new(now));
        if let Some(detector) = self.detector.as_mut() {
            detector.set_role(Role::Quarantined);
        }
    }

    /// While quarantined: rejects a message the node must not act on, and returns true.
    pub(super) fn refused_in_quarantine(&mut self, from: NodeId, message: &Message) -> bool {
        if self.quarantine.is_none() {
            return false;
        }
        let refused = matches!(
            message,
            Message::Phase1a { .. }
                | Message::Phase2a { .. }
                | Message::Prepare { .. }
                | Message::PrepareExecuted { .. }
                | Message::Resolve { .. }
        );
        if let Message::Execute { txn, sequence, .. } = message {
            if from != txn.client {
                // Rejected as any stranger's Execute is.
                return false;
            }
            let node = self.config.id;
            let reason = AbortReason::Quarantined { node };
            self.send(
                txn.client,
                Message::Executed {
                    txn: *txn,
                    sequence: *sequence,
                    result: Err(reason),
                },
            );
            return true;
        }
        if refused {
            let reason = RejectReason::Quarantined {
                message: message.kind(),
            };
            self.reject(from, reason);
        }
        refused
    }

    /// A fence round, if due: queries every other member.
    pub(super) fn on_fence_timeout(&mut self, now: Time) {
        let me = self.config.id;
        let mut others = self.config.cluster.member_ids();
        others.retain(|member| *member != me);
        let interval = self.config.fence_query_interval;
        let Some(quarantine) = self.quarantine.as_mut() else {
            return;
        };
        if now < quarantine.next_query {
            return;
        }
        quarantine.round = quarantine.round.saturating_add(1);
        quarantine.clear.clear();
        quarantine.next_query = now.saturating_add(interval);
        let round = quarantine.round;
        if others.is_empty() {
            return self.clear_quarantine();
        }
        for member in others {
            self.send(member, Message::FenceQuery { round });
        }
    }

    /// When the next fence round is due, if quarantined.
    pub(super) fn fence_timeout(&self) -> Option<Time> {
        self.quarantine
            .as_ref()
            .map(|quarantine| quarantine.next_query)
    }

    pub(super) fn on_fence_query(&mut self, from: NodeId, round: u64) {
        if !self.config.cluster.is_member(from) || from == self.config.id {
            let message = MessageKind::FenceQuery;
            return self.reject(from, RejectReason::NotFromMember { message });
        }
        let clear = !self.txns.values().any(|entry| {
            entry.descriptor.is_acceptor(from) || entry.descriptor.is_participant(from)
        });
        let incarnation = self
            .detector
            .as_ref()
            .and_then(|detector| detector.own_incarnation(from));
        self.send(
            from,
            Message::FenceAnswer {
                round,
                clear,
                incarnation,
            },
        );
    }

    pub(super) fn on_fence_answer(
        &mut self,
        from: NodeId,
        round: u64,
        clear: bool,
        incarnation: Option<u64>,
    ) {
        if !self.config.cluster.is_member(from) || from == self.config.id {
            let message = MessageKind::FenceAnswer;
            return self.reject(from, RejectReason::NotFromMember { message });
        }
        if let Some(incarnation) = incarnation {
            self.raise_incarnation_above(incarnation);
        }
        // This node is a member (`Node::new` checks), so the others are one fewer.
        let others = self.config.cluster.members().len().saturating_sub(1);
        let Some(quarantine) = self.quarantine.as_mut() else {
            return;
        };
        if round != quarantine.round || !clear {
            return;
        }
        quarantine.clear.insert(from);
        if quarantine.clear.len() >= others {
            self.clear_quarantine();
        }
    }

    /// A member remembers this node under `incarnation` (from before the wipe): take a
    /// higher one, durably, so that its heartbeats are believed again.
    fn raise_incarnation_above(&mut self, incarnation: u64) {
        let wanted = incarnation
            .saturating_add(1)
            .min(u64::from(LEADER_ROUND_MAX));
        let Ok(round) = u32::try_from(wanted) else {
            return;
        };
        if round <= self.leader_round {
            return;
        }
        self.leader_round = round;
        self.stage_record(Record::LeaderRound { round }, Gates::Sends);
        if let Some(detector) = self.detector.as_mut() {
            detector.raise_incarnation(u64::from(round));
        }
    }

    fn clear_quarantine(&mut self) {
        self.quarantine = None;
        self.stage_record(Record::AcceptorFence { cleared: true }, Gates::Sends);
        let role = if self.draining {
            Role::Draining
        } else {
            Role::DataNode
        };
        if let Some(detector) = self.detector.as_mut() {
            detector.set_role(role);
        }
        self.events.push_back(Event::AcceptorFenceCleared);
    }
}
