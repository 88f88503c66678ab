//! What a member says of itself in gossip: its [`Heartbeat`] (role, incarnation, counter,
//! load, addresses) and the compact wire form it travels in, with the bounds a heartbeat
//! off the wire is held to.

use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A data node: RM and acceptor.
    DataNode,
    /// A client: initiates transactions.
    Client,
    /// A data node that is draining (`dtx drain`): it finishes its transactions in flight
    /// and takes no new ones, so clients leave it out of new acceptor sets.
    Draining,
    /// A data node that drained and left: its silence is expected, so it is not suspected;
    /// clients leave it out of acceptor sets and fail fast on its keys. A restart comes
    /// back with a higher incarnation as a data node and ends it.
    Left,
    /// A data node rejoining after its data was wiped, in acceptor quarantine (see
    /// `node::fence`): clients leave it out of new acceptor sets, as a draining one.
    Quarantined,
}

/// A transport address of a member, opaque to the protocol (`dtx-node` puts the bytes of
/// a libp2p multiaddr here). At most [`ADDRESSES_MAX`] per heartbeat, each at most
/// [`ADDRESS_BYTES_MAX`] bytes; gossip beyond that is cut when decoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Addresses one heartbeat carries at most.
pub const ADDRESSES_MAX: usize = 4;

/// Bytes of one address at most (a TCP multiaddr is 8 or 20).
pub const ADDRESS_BYTES_MAX: usize = 64;

/// One member's liveness record, as gossiped. On the wire it is a CBOR array
/// `[node, incarnation, counter, role code, load, addresses]` (see [`HeartbeatWire`]):
/// digests carry hundreds of them, and field names would be half their bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "HeartbeatWire", try_from = "HeartbeatWire")]
pub struct Heartbeat {
    /// The member.
    pub node: NodeId,
    /// Bumped at every restart, so a restarted node refutes old suspicion.
    pub incarnation: u64,
    /// Bumped every heartbeat interval.
    pub counter: u64,
    /// Data node or client.
    pub role: Role,
    /// Open transactions at the member (a load hint).
    pub load: u32,
    /// Where the member listens (empty for clients, which do not): gossiped with the
    /// counters, so a member that restarted on a new address is reachable as soon as
    /// its first heartbeat spreads, also by members and clients it never connected to.
    /// Shared, so that copying heartbeats into digests (hundreds per round) allocates
    /// nothing.
    pub addresses: Arc<[Address]>,
}

/// [`Heartbeat`] as encoded: a tuple, the role as a one-byte code.
#[derive(Serialize, Deserialize)]
struct HeartbeatWire(NodeId, u64, u64, u8, u32, Vec<Address>);

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::DataNode => 0,
            Role::Client => 1,
            Role::Draining => 2,
            Role::Left => 3,
            Role::Quarantined => 4,
        }
    }

    fn from_code(code: u8) -> Option<Role> {
        [
            Role::DataNode,
            Role::Client,
            Role::Draining,
            Role::Left,
            Role::Quarantined,
        ]
        .into_iter()
        .find(|role| role.code() == code)
    }
}

impl From<Heartbeat> for HeartbeatWire {
    fn from(heartbeat: Heartbeat) -> HeartbeatWire {
        HeartbeatWire(
            heartbeat.node,
            heartbeat.incarnation,
            heartbeat.counter,
            heartbeat.role.code(),
            heartbeat.load,
            heartbeat.addresses.to_vec(),
        )
    }
}

/// Why a heartbeat off the wire was refused (the gossip message carrying it fails to
/// decode).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatDecodeError {
    /// The role code names no [`Role`].
    #[error("unknown member role code {code}")]
    UnknownRole {
        /// The code.
        code: u8,
    },
}

impl TryFrom<HeartbeatWire> for Heartbeat {
    type Error = HeartbeatDecodeError;

    fn try_from(wire: HeartbeatWire) -> Result<Heartbeat, HeartbeatDecodeError> {
        let HeartbeatWire(node, incarnation, counter, role, load, addresses) = wire;
        Ok(Heartbeat {
            node,
            incarnation,
            counter,
            role: Role::from_code(role).ok_or(HeartbeatDecodeError::UnknownRole { code: role })?,
            load,
            // Gossip off the wire is not trusted to respect the bounds.
            addresses: within_bounds(addresses),
        })
    }
}

/// The addresses that fit [`ADDRESS_BYTES_MAX`], at most [`ADDRESSES_MAX`] of them.
pub(super) fn within_bounds(addresses: Vec<Address>) -> Arc<[Address]> {
    addresses
        .into_iter()
        .filter(|address| address.0.len() <= ADDRESS_BYTES_MAX)
        .take(ADDRESSES_MAX)
        .collect()
}

/// Appends `hints` not already in `heartbeat`'s addresses, up to [`ADDRESSES_MAX`].
pub(super) fn add_address_hints(heartbeat: &mut Heartbeat, hints: &[Address]) {
    let mut addresses = heartbeat.addresses.to_vec();
    for hint in hints {
        if addresses.len() >= ADDRESSES_MAX {
            break;
        }
        if !addresses.contains(hint) {
            addresses.push(hint.clone());
        }
    }
    if addresses.len() != heartbeat.addresses.len() {
        heartbeat.addresses = addresses.into();
    }
}
