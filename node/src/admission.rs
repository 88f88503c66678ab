//! Who may hold a connection to a data node, and for how long: the daemon's bookkeeping
//! of peers that are not data nodes (clients and strangers), and its counters.
//!
//! Data nodes are never limited here. Every other peer is a visitor:
//! * one without a client session is disconnected [`AUTHENTICATION_GRACE`] after it
//!   connected, and at most [`UNAUTHENTICATED_PEERS_MAX`] such peers are held at once (a new
//!   one disconnects the oldest, so a flood of fresh identities cannot hold every slot);
//! * a client with a session is disconnected after [`CLIENT_IDLE_TIMEOUT`] without a frame;
//! * at most [`NON_MEMBER_PEERS_MAX`] visitors at all; past that a new connection is closed
//!   at once.
//!
//! Frames refused at the door (no session, or over the client's budget) are answered with
//! a `Refused` message at most once per [`REFUSAL_ANSWER_INTERVAL`] per peer.

use crate::auth::{Gate, Standing};
use crate::control::Exposition;
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A peer that is neither a data node nor a client with a session is disconnected this
/// long after it connected (time enough to present a session proof).
pub const AUTHENTICATION_GRACE: Duration = Duration::from_secs(5);

/// A client connection without a frame for this long is closed (the client library dials
/// again when it has something to send). Data nodes' connections stay open.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Visitors (peers that are not data nodes) tracked at most: a connection from one more
/// is closed at once.
pub const NON_MEMBER_PEERS_MAX: usize = 8192;

/// Peers without a session connected at most; a new one beyond it disconnects the oldest.
pub const UNAUTHENTICATED_PEERS_MAX: usize = 256;

/// Refusal answers sent to one peer at most once per this interval.
pub const REFUSAL_ANSWER_INTERVAL: Duration = Duration::from_millis(100);

/// A peer whose frames were refused for want of a session is disconnected this long after
/// (time for the refusal answer to leave): it cannot keep a node decoding its frames.
pub const REFUSED_LINGER: Duration = Duration::from_millis(250);

/// A peer disconnected for sending frames without a session is refused at the connection
/// level (libp2p's block list) this long: redialling cannot keep this node decrypting
/// frames it will refuse.
pub const STRANGER_BAN: Duration = Duration::from_secs(10);

/// Messages refused for want of a session after which a peer is a flooder, not a client
/// racing a `users.toml` reload (which sends a few before its transaction ends): only a
/// flooder is banned.
pub const BAN_AFTER_REFUSED_MESSAGES: u64 = 256;

/// Peers banned at once at most (beyond it, a refused stranger is only disconnected).
pub const BANNED_PEERS_MAX: usize = 4096;

/// How often visitors are checked against the grace and idle limits.
pub const VISITOR_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// What to do with a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionVerdict {
    /// Keep it; also disconnect these peers (the oldest unauthenticated ones).
    Keep {
        /// Peers evicted to make room.
        evict: Vec<PeerId>,
    },
    /// Close it at once: too many visitors.
    Close,
}

/// Counters of the door, exported as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionCounters {
    /// Messages dropped because their sender had no session.
    pub refused_unauthenticated_messages: u64,
    /// Messages dropped because their client exceeded its budget.
    pub refused_rate_limited_messages: u64,
    /// `Refused` answers sent.
    pub refusals_answered: u64,
    /// Peers disconnected for not opening a session in time.
    pub disconnected_unauthenticated: u64,
    /// Peers disconnected to make room for newer unauthenticated ones.
    pub evicted_unauthenticated: u64,
    /// Clients disconnected after [`CLIENT_IDLE_TIMEOUT`] without a frame.
    pub disconnected_idle: u64,
    /// Connections closed at once because [`NON_MEMBER_PEERS_MAX`] visitors were held.
    pub refused_connections: u64,
    /// Sessions ended because their user left `users.toml`.
    pub revoked_sessions: u64,
    /// Peers banned for [`STRANGER_BAN`] after sending frames without a session.
    pub banned_peers: u64,
}

/// Changes to the connection block list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BanChanges {
    /// Peers to block now (their connections close).
    pub block: Vec<PeerId>,
    /// Peers whose ban ran out.
    pub unblock: Vec<PeerId>,
}

#[derive(Clone, Copy, Debug)]
struct Visitor {
    connected_at: Instant,
    last_frame: Instant,
    /// When its frames were first refused for want of a session.
    refused_at: Option<Instant>,
    /// Messages refused for want of a session on this connection; a stream closed unread
    /// (the peer kept sending after being told) counts as the ban threshold at once.
    refused_messages: u64,
}

/// The daemon's visitor table.
#[derive(Debug)]
pub struct Admission {
    visitors: BTreeMap<PeerId, Visitor>,
    answered: BTreeMap<PeerId, Instant>,
    /// Peers banned, and since when.
    banned: BTreeMap<PeerId, Instant>,
    /// Banned by the last check and not yet handed out.
    to_block: Vec<PeerId>,
    last_check: Instant,
    /// The counters.
    pub counters: AdmissionCounters,
}

impl Admission {
    /// An empty table.
    pub fn new(now: Instant) -> Admission {
        Admission {
            visitors: BTreeMap::new(),
            answered: BTreeMap::new(),
            banned: BTreeMap::new(),
            to_block: Vec::new(),
            last_check: now,
            counters: AdmissionCounters::default(),
        }
    }

    /// A connection from `peer` was established.
    pub fn on_connected(&mut self, peer: PeerId, gate: &Gate, now: Instant) -> ConnectionVerdict {
        if gate.is_member(&peer) {
            return ConnectionVerdict::Keep { evict: Vec::new() };
        }
        if !self.visitors.contains_key(&peer) && self.visitors.len() >= NON_MEMBER_PEERS_MAX {
            self.counters.refused_connections += 1;
            return ConnectionVerdict::Close;
        }
        self.visitors.entry(peer).or_insert(Visitor {
            connected_at: now,
            last_frame: now,
            refused_at: None,
            refused_messages: 0,
        });
        let mut evict = Vec::new();
        if !gate.is_insecure() {
            let mut unauthenticated: Vec<(Instant, PeerId)> = self
                .visitors
                .iter()
                .filter(|(visitor, _)| gate.session(visitor).is_none())
                .map(|(visitor, entry)| (entry.connected_at, *visitor))
                .collect();
            if unauthenticated.len() > UNAUTHENTICATED_PEERS_MAX {
                unauthenticated.sort();
                let excess = unauthenticated.len() - UNAUTHENTICATED_PEERS_MAX;
                for (_, oldest) in unauthenticated.into_iter().take(excess) {
                    self.visitors.remove(&oldest);
                    self.counters.evicted_unauthenticated += 1;
                    evict.push(oldest);
                }
            }
        }
        ConnectionVerdict::Keep { evict }
    }

    /// The last connection of `peer` closed.
    pub fn on_disconnected(&mut self, peer: &PeerId) {
        self.visitors.remove(peer);
        self.answered.remove(peer);
    }

    /// A frame from `peer` arrived (it is not idle).
    pub fn on_frame(&mut self, peer: &PeerId, now: Instant) {
        if let Some(visitor) = self.visitors.get_mut(peer) {
            visitor.last_frame = now;
        }
    }

    /// `messages` of `peer` were refused for want of a session (`None`: a stream of a peer
    /// that kept sending after it was told was closed unread): it goes at the next check,
    /// and is banned if it sent at least [`BAN_AFTER_REFUSED_MESSAGES`].
    pub fn on_refused_unauthenticated(
        &mut self,
        peer: &PeerId,
        messages: Option<usize>,
        now: Instant,
    ) {
        if let Some(visitor) = self.visitors.get_mut(peer) {
            visitor.refused_at.get_or_insert(now);
            visitor.refused_messages = match messages {
                Some(messages) => visitor.refused_messages.saturating_add(messages as u64),
                None => visitor.refused_messages.max(BAN_AFTER_REFUSED_MESSAGES),
            };
        }
    }

    /// Visitors to disconnect now: past the grace without a session (or sooner once their
    /// frames were refused), or idle too long.
    /// Checked at most once per [`VISITOR_CHECK_INTERVAL`].
    pub fn overdue(&mut self, gate: &Gate, now: Instant) -> Vec<PeerId> {
        if now.saturating_duration_since(self.last_check) < VISITOR_CHECK_INTERVAL {
            return Vec::new();
        }
        self.last_check = now;
        self.answered
            .retain(|_, at| now.saturating_duration_since(*at) < REFUSAL_ANSWER_INTERVAL);
        let mut overdue = Vec::new();
        for (peer, visitor) in &self.visitors {
            let unauthenticated = matches!(gate.standing(peer), Standing::Unauthenticated);
            let refused_long_enough = visitor
                .refused_at
                .is_some_and(|at| now.saturating_duration_since(at) >= REFUSED_LINGER);
            if unauthenticated
                && (refused_long_enough
                    || now.saturating_duration_since(visitor.connected_at) >= AUTHENTICATION_GRACE)
            {
                self.counters.disconnected_unauthenticated += 1;
                if refused_long_enough
                    && visitor.refused_messages >= BAN_AFTER_REFUSED_MESSAGES
                    && self.banned.len() < BANNED_PEERS_MAX
                    && self.banned.insert(*peer, now).is_none()
                {
                    self.counters.banned_peers = self.counters.banned_peers.saturating_add(1);
                    self.to_block.push(*peer);
                }
                overdue.push(*peer);
            } else if now.saturating_duration_since(visitor.last_frame) >= CLIENT_IDLE_TIMEOUT {
                self.counters.disconnected_idle += 1;
                overdue.push(*peer);
            }
        }
        for peer in &overdue {
            self.visitors.remove(peer);
        }
        overdue
    }

    /// Peers banned since the last call, and peers whose ban ran out by `now`.
    pub fn ban_changes(&mut self, now: Instant) -> BanChanges {
        let mut unblock = Vec::new();
        self.banned.retain(|peer, since| {
            let keep = now.saturating_duration_since(*since) < STRANGER_BAN;
            if !keep {
                unblock.push(*peer);
            }
            keep
        });
        let mut block = std::mem::take(&mut self.to_block);
        block.retain(|peer| self.banned.contains_key(peer));
        BanChanges { block, unblock }
    }

    /// Peers banned now.
    pub fn banned(&self) -> usize {
        self.banned.len()
    }

    /// True if a refusal may be answered to `peer` now (and notes that it was).
    pub fn may_answer(&mut self, peer: PeerId, now: Instant) -> bool {
        if let Some(at) = self.answered.get(&peer) {
            if now.saturating_duration_since(*at) < REFUSAL_ANSWER_INTERVAL {
                return false;
            }
        }
        if self.answered.len() >= NON_MEMBER_PEERS_MAX && !self.answered.contains_key(&peer) {
            return false;
        }
        self.answered.insert(peer, now);
        self.counters.refusals_answered += 1;
        true
    }

    /// Visitors connected now.
    pub fn visitors(&self) -> usize {
        self.visitors.len()
    }

    /// Each visitor connected now, and since when.
    pub fn connected_visitors(&self) -> impl Iterator<Item = (PeerId, Instant)> + '_ {
        self.visitors
            .iter()
            .map(|(peer, visitor)| (*peer, visitor.connected_at))
    }

    /// Adds the counters, the visitor and ban gauges and `sessions` to a scrape.
    pub fn export(&self, exposition: &mut Exposition, sessions: usize) {
        let counters = self.counters;
        let mut counter = |name: &str, help: &str, value: u64| {
            exposition.counter(name, help, value);
        };
        counter(
            "dtx_refused_unauthenticated_messages_total",
            "Messages dropped because their sender had no client session.",
            counters.refused_unauthenticated_messages,
        );
        counter(
            "dtx_refused_rate_limited_messages_total",
            "Messages dropped because their client exceeded its budget.",
            counters.refused_rate_limited_messages,
        );
        counter(
            "dtx_refusals_answered_total",
            "Refused answers sent to peers.",
            counters.refusals_answered,
        );
        counter(
            "dtx_disconnected_unauthenticated_total",
            "Peers disconnected for not opening a session in time.",
            counters.disconnected_unauthenticated,
        );
        counter(
            "dtx_evicted_unauthenticated_total",
            "Unauthenticated peers disconnected to make room for newer ones.",
            counters.evicted_unauthenticated,
        );
        counter(
            "dtx_disconnected_idle_clients_total",
            "Clients disconnected after a long silence.",
            counters.disconnected_idle,
        );
        counter(
            "dtx_refused_connections_total",
            "Connections closed at once because too many visitors were connected.",
            counters.refused_connections,
        );
        counter(
            "dtx_revoked_sessions_total",
            "Client sessions ended because their user left users.toml.",
            counters.revoked_sessions,
        );
        counter(
            "dtx_banned_peers_total",
            "Peers refused at the connection level for a while after sending frames without a session.",
            counters.banned_peers,
        );
        let mut gauge = |name: &str, help: &str, value: usize| {
            exposition.gauge(name, help, value as u64);
        };
        gauge(
            "dtx_visitors",
            "Peers connected that are not data nodes.",
            self.visitors.len(),
        );
        gauge("dtx_client_sessions", "Client sessions open.", sessions);
        gauge("dtx_banned_peers", "Peers banned now.", self.banned.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn strangers_get_a_grace_period_then_the_door_and_the_oldest_make_room() {
        let gate = Gate::new("c".into(), Some(crate::users::Users::default()));
        let member = peer();
        gate.set_members([member]);
        let start = Instant::now();
        let mut admission = Admission::new(start);
        assert_eq!(
            admission.on_connected(member, &gate, start),
            ConnectionVerdict::Keep { evict: vec![] }
        );
        assert_eq!(admission.visitors(), 0, "members are not visitors");
        let strangers: Vec<PeerId> = (0..UNAUTHENTICATED_PEERS_MAX).map(|_| peer()).collect();
        for (index, stranger) in strangers.iter().enumerate() {
            let at = start + Duration::from_millis(index as u64);
            admission.on_connected(*stranger, &gate, at);
        }
        let newcomer = peer();
        assert_eq!(
            admission.on_connected(newcomer, &gate, start + Duration::from_secs(2)),
            ConnectionVerdict::Keep {
                evict: vec![strangers[0]]
            },
            "the oldest stranger makes room"
        );
        assert!(
            admission.overdue(&gate, start).is_empty(),
            "checked once per interval"
        );
        let overdue =
            admission.overdue(&gate, start + Duration::from_secs(1) + AUTHENTICATION_GRACE);
        assert_eq!(
            overdue.len(),
            UNAUTHENTICATED_PEERS_MAX - 1,
            "all but the newcomer"
        );
        assert!(!overdue.contains(&newcomer));
        assert!(admission
            .overdue(&gate, start + Duration::from_secs(2) + AUTHENTICATION_GRACE)
            .contains(&newcomer));
    }

    #[test]
    fn a_stranger_refused_for_frames_is_banned_for_a_while_one_only_slow_is_not() {
        let gate = Gate::new("c".into(), Some(crate::users::Users::default()));
        let start = Instant::now();
        let mut admission = Admission::new(start);
        let (rude, slow) = (peer(), peer());
        admission.on_connected(rude, &gate, start);
        admission.on_connected(slow, &gate, start);
        let (polite, polite_at) = (peer(), start + Duration::from_millis(1));
        admission.on_connected(polite, &gate, polite_at);
        // A client racing a users.toml reload: one small frame refused.
        admission.on_refused_unauthenticated(&polite, Some(2), polite_at);
        admission.on_refused_unauthenticated(&rude, Some(64), start);
        admission.on_refused_unauthenticated(&rude, None, start);
        let check = polite_at + VISITOR_CHECK_INTERVAL.max(REFUSED_LINGER);
        let mut overdue = admission.overdue(&gate, check);
        overdue.sort();
        let mut expected = vec![rude, polite];
        expected.sort();
        assert_eq!(overdue, expected, "both are disconnected");
        assert_eq!(
            admission.ban_changes(check),
            BanChanges {
                block: vec![rude],
                unblock: vec![]
            }
        );
        assert_eq!(
            admission.ban_changes(check),
            BanChanges::default(),
            "handed out once"
        );
        let late = start + AUTHENTICATION_GRACE + VISITOR_CHECK_INTERVAL;
        assert_eq!(admission.overdue(&gate, late), vec![slow]);
        assert!(
            admission.ban_changes(late).block.is_empty(),
            "a peer that only never authenticated is disconnected, not banned"
        );
        assert_eq!(admission.banned(), 1);
        assert_eq!(
            admission.ban_changes(check + STRANGER_BAN).unblock,
            vec![rude]
        );
        assert_eq!(admission.banned(), 0);
        assert_eq!(admission.counters.banned_peers, 1);
    }

    #[test]
    fn refusals_are_answered_at_most_once_per_interval() {
        let start = Instant::now();
        let mut admission = Admission::new(start);
        let stranger = peer();
        assert!(admission.may_answer(stranger, start));
        assert!(!admission.may_answer(stranger, start + Duration::from_millis(10)));
        assert!(admission.may_answer(stranger, start + REFUSAL_ANSWER_INTERVAL));
        assert_eq!(admission.counters.refusals_answered, 2);
    }
}
