//! Identifiers, time, ballots and the transaction descriptor: the nouns of the protocol.

use core::fmt;
use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A peer of the cluster: a data node (RM + acceptor) or a client.
///
/// The runtime maps it to an authenticated transport identity (a libp2p `PeerId`); the
/// protocol never trusts a node id that a message claims for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// A transaction id: the initiating client and that client's sequence number.
///
/// Unique as long as a client never reuses a sequence number; a restarted client takes a
/// fresh `NodeId` (its incarnation), so it never needs durable state of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId {
    /// The client that began the transaction.
    pub client: NodeId,
    /// The client's sequence number for it.
    pub sequence: u64,
}

impl TxnId {
    /// No transaction (for messages about none, like gossip).
    pub const NONE: TxnId = TxnId {
        client: NodeId(0),
        sequence: 0,
    };
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}.{}", self.client.0, self.sequence)
    }
}

/// Why a text is not a transaction id (`t<client>.<sequence>`, as [`TxnId`] displays).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a transaction id (t<client>.<sequence>): {text:?}")]
pub struct TxnIdParseError {
    /// The text, cut to 64 bytes.
    pub text: String,
}

impl core::str::FromStr for TxnId {
    type Err = TxnIdParseError;

    fn from_str(text: &str) -> Result<TxnId, TxnIdParseError> {
        let error = || TxnIdParseError {
            text: crate::message::cut_text(text, 64),
        };
        let rest = text.strip_prefix('t').ok_or_else(error)?;
        let (client, sequence) = rest.split_once('.').ok_or_else(error)?;
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(client) || !digits(sequence) {
            return Err(error());
        }
        Ok(TxnId {
            client: NodeId(client.parse().map_err(|_| error())?),
            sequence: sequence.parse().map_err(|_| error())?,
        })
    }
}

/// A point in time in microseconds, on the clock of whoever passes it in.
///
/// The protocol never reads a clock: the runtime (daemon or simulator) passes `now` into
/// every call, so a simulated run replays exactly from its seed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// The origin of the clock.
    pub const ZERO: Time = Time(0);

    /// Builds a time from microseconds since the clock's origin.
    pub fn from_micros(micros: u64) -> Time {
        Time(micros)
    }

    /// Microseconds since the clock's origin.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// This time plus a duration, saturating at the end of time.
    pub fn saturating_add(self, duration: Duration) -> Time {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(micros))
    }

    /// The duration from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// The transactions whose deadline in `deadlines` has come by `now`, earliest first: the
/// one scan every timer table of the protocol (a set ordered by time) makes.
pub(crate) fn due_by(deadlines: &BTreeSet<(Time, TxnId)>, now: Time) -> Vec<TxnId> {
    deadlines
        .iter()
        .take_while(|(time, _)| *time <= now)
        .map(|(_, txn)| *txn)
        .collect()
}

/// A Paxos ballot number: `(round, leader)`, ordered lexicographically.
///
/// Ballot 0 (round 0) of an instance belongs to the instance's RM and needs no Phase 1
/// (Gray & Lamport section 4). Recovery ballots have `round > 0` and the leader's node id,
/// so two leaders never share a ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Round number; 0 is the RM's own fast ballot.
    pub round: u32,
    /// The leader that owns this ballot (`NodeId(0)` for round 0).
    pub leader: NodeId,
}

/// Highest ballot round any node uses or accepts.
///
/// A ballot with a higher round is refused wherever it arrives, before it touches state, so
/// no promise, acceptance or `round + 1` ever sees a round near `u32::MAX`. The rounds
/// above it are not lost: a node's `Record::LeaderRound` doubles as its failure-detector
/// incarnation, and restarts may keep raising it up to [`LEADER_ROUND_MAX`] after the
/// node's recovery rounds are exhausted (see `Node::recover`).
pub const ROUND_MAX: u32 = 1 << 30;

impl Ballot {
    /// The RM's own ballot 0.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        leader: NodeId(0),
    };

    /// True for the fast ballot that belongs to the instance's RM.
    pub fn is_zero(self) -> bool {
        self.round == 0
    }

    /// True if the round is at most [`ROUND_MAX`]: the only ballots the protocol accepts.
    pub fn is_in_range(self) -> bool {
        self.round <= ROUND_MAX
    }
}

/// Highest `Record::LeaderRound` a node writes. Rounds from [`ROUND_MAX`] up to here are
/// incarnations only (restarts after the recovery rounds ran out: a billion of them); a
/// record above it cannot come from any run and is replayed as `ROUND_MAX`.
pub const LEADER_ROUND_MAX: u32 = 1 << 31;

/// The round after `round`, if it is at most [`ROUND_MAX`] (the next recovery ballot).
pub fn next_round(round: u32) -> Option<u32> {
    round.checked_add(1).filter(|next| *next <= ROUND_MAX)
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            write!(f, "b0")
        } else {
            write!(f, "b{}.{}", self.round, self.leader.0)
        }
    }
}

/// The value of one RM's Paxos instance: that RM's vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Vote {
    /// The RM durably prepared and can commit.
    Prepared,
    /// The RM cannot commit (or a recovery leader found no vote).
    Aborted,
}

/// The transaction's outcome, as in TCommit.tla.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Every instance chose Prepared.
    Commit,
    /// Some instance chose Aborted.
    Abort,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Commit => write!(f, "commit"),
            Outcome::Abort => write!(f, "abort"),
        }
    }
}

/// A key. A key `name/rest` belongs to the data node called `name` when one exists.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key(pub String);

impl Key {
    /// Builds a key from anything string-like.
    pub fn new(text: impl Into<String>) -> Key {
        Key(text.into())
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value: opaque bytes (CBOR byte string on the wire).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Value(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl Value {
    /// Builds a value from bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Value {
        Value(bytes.into())
    }

    /// The value as UTF-8 text, if it is.
    pub fn as_text(&self) -> Option<&str> {
        core::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) => write!(f, "{text:?}"),
            None => write!(f, "{:02x?}", self.0),
        }
    }
}

/// The version of a key: the owner's commit sequence number of the transaction that last
/// wrote it; 0 for a key never written (or deleted and not written since).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version(pub u64);

/// Everything a node needs to know about a transaction to take part in it or recover it.
///
/// It travels in Prepare, Phase2a and Phase1a, and is persisted in RM and acceptor records:
/// a recovery leader uses exactly this acceptor set and never invents another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnDescriptor {
    /// The transaction.
    pub txn: TxnId,
    /// The RMs (data nodes) that hold the transaction's keys, sorted, without duplicates.
    pub participants: Vec<NodeId>,
    /// The 2F+1 acceptors, participants first; empty for a one-phase transaction (see
    /// [`TxnDescriptor::is_one_phase`]).
    pub acceptors: Vec<NodeId>,
    /// Failures tolerated: the decision needs F+1 acceptors.
    pub f: u32,
    /// The client's clock when the transaction began (victim choice only, never safety).
    pub start_time: Time,
}

impl TxnDescriptor {
    /// The initiating client.
    pub fn client(&self) -> NodeId {
        self.txn.client
    }

    /// Acceptors needed to choose a value: F+1.
    pub fn quorum(&self) -> usize {
        self.f as usize + 1
    }

    /// True if `node` is one of the transaction's RMs.
    pub fn is_participant(&self, node: NodeId) -> bool {
        self.participants.binary_search(&node).is_ok()
    }

    /// True if `node` is one of the transaction's acceptors.
    pub fn is_acceptor(&self, node: NodeId) -> bool {
        self.acceptors.contains(&node)
    }

    /// True for a one-phase transaction: one participant and no acceptors. Its RM decides
    /// alone (Commit iff it votes Prepared) with one durable write, and no node ever runs
    /// Paxos recovery on it: with no acceptors there is no instance to recover, and every
    /// node sees that from the descriptor alone.
    pub fn is_one_phase(&self) -> bool {
        self.acceptors.is_empty()
    }

    /// A descriptor for a new transaction over `participants` (sorted, unique): one-phase
    /// (no acceptors) when `one_phase` is asked and there is exactly one participant,
    /// otherwise with `acceptors` (2F+1, participants first).
    pub fn for_commit(
        txn: TxnId,
        participants: Vec<NodeId>,
        acceptors: impl FnOnce(&[NodeId]) -> Vec<NodeId>,
        f: u32,
        start_time: Time,
        one_phase: bool,
    ) -> TxnDescriptor {
        let acceptors = if one_phase && participants.len() == 1 {
            Vec::new()
        } else {
            acceptors(&participants)
        };
        TxnDescriptor {
            txn,
            participants,
            acceptors,
            f,
            start_time,
        }
    }

    /// Checks the shape a peer-supplied descriptor must have; `Err` names the problem.
    pub fn validate(&self) -> Result<(), DescriptorProblem> {
        if self.participants.is_empty() {
            return Err(DescriptorProblem::NoParticipants);
        }
        if self.participants.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(DescriptorProblem::ParticipantsNotSorted);
        }
        if self.acceptors.is_empty() {
            // One-phase: the single RM is the only one who can decide.
            if self.participants.len() != 1 {
                return Err(DescriptorProblem::OnePhaseParticipants);
            }
            return Ok(());
        }
        if self.acceptors.len() != (self.f as usize).saturating_mul(2).saturating_add(1) {
            return Err(DescriptorProblem::AcceptorCount);
        }
        // Pairwise for the usual handful (no allocation per message); sorted for a long
        // list, which a peer could send to make a pairwise check quadratic.
        let duplicate = if self.acceptors.len() <= 16 {
            self.acceptors
                .iter()
                .enumerate()
                .any(|(index, node)| self.acceptors[index + 1..].contains(node))
        } else {
            let mut acceptors = self.acceptors.clone();
            acceptors.sort_unstable();
            acceptors.windows(2).any(|pair| pair[0] == pair[1])
        };
        if duplicate {
            return Err(DescriptorProblem::DuplicateAcceptor);
        }
        Ok(())
    }
}

/// What is wrong with a peer's transaction descriptor: its shape
/// ([`TxnDescriptor::validate`]) or its fit to this node's cluster and to what the node
/// already knows of the transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DescriptorProblem {
    /// No participants: a transaction touches at least one RM.
    #[error("no participants")]
    NoParticipants,
    /// Participants out of order or repeated (they are a sorted set).
    #[error("participants not sorted and unique")]
    ParticipantsNotSorted,
    /// Not 2F+1 acceptors.
    #[error("acceptor count is not 2F+1")]
    AcceptorCount,
    /// No acceptors (one-phase) but not exactly one participant: only a lone RM may decide
    /// alone.
    #[error("one-phase (no acceptors) with other than exactly one participant")]
    OnePhaseParticipants,
    /// An acceptor named twice (it would count twice towards a quorum).
    #[error("duplicate acceptor")]
    DuplicateAcceptor,
    /// The descriptor's F is not the cluster's.
    #[error("F={descriptor} but the cluster runs F={cluster}")]
    FaultToleranceDiffers {
        /// The descriptor's F.
        descriptor: u32,
        /// The cluster's F.
        cluster: u32,
    },
    /// A participant or acceptor is not a data node of the cluster.
    #[error("{node} is not a data node")]
    NotADataNode {
        /// The stranger.
        node: NodeId,
    },
    /// The transaction is known here with another descriptor.
    #[error("descriptor differs from the one already known")]
    DiffersFromKnown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(participants: &[u64], acceptors: &[u64], f: u32) -> TxnDescriptor {
        TxnDescriptor {
            txn: TxnId {
                client: NodeId(1 << 63),
                sequence: 1,
            },
            participants: participants.iter().copied().map(NodeId).collect(),
            acceptors: acceptors.iter().copied().map(NodeId).collect(),
            f,
            start_time: Time(0),
        }
    }

    #[test]
    fn a_repeated_acceptor_is_refused_in_short_and_long_lists() {
        assert_eq!(descriptor(&[1, 2], &[1, 2, 3], 1).validate(), Ok(()));
        assert_eq!(
            descriptor(&[1, 2], &[1, 2, 1], 1).validate(),
            Err(DescriptorProblem::DuplicateAcceptor)
        );
        assert_eq!(
            descriptor(&[1], &[3, 1, 2, 4, 3], 2).validate(),
            Err(DescriptorProblem::DuplicateAcceptor)
        );
        // 2F+1 = 21 acceptors: past the pairwise bound, checked sorted.
        let long: Vec<u64> = (1..=21).rev().collect();
        assert_eq!(descriptor(&[1], &long, 10).validate(), Ok(()));
        let mut repeated = long.clone();
        repeated[20] = 7;
        assert_eq!(
            descriptor(&[1], &repeated, 10).validate(),
            Err(DescriptorProblem::DuplicateAcceptor)
        );
        assert_eq!(
            descriptor(&[1], &[1, 2], 1).validate(),
            Err(DescriptorProblem::AcceptorCount)
        );
    }
}
