//! The libp2p side shared by data nodes and clients: the behaviour, the frame format and
//! codec, the swarm builder, and the per-peer outbox that batches protocol messages.
//!
//! A frame is a u32 little-endian length, then `dtx_protocol::encode` of the messages. It
//! travels either as a one-way request-response request on `/dtx/messages/1` (empty
//! response) or back to back on a long-lived stream `/dtx/stream/1` (see [`crate::links`]).
//! All messages for one peer produced in one pass of the event loop go in one frame.

use crate::config::ClusterConfig;
use dtx_protocol::message::FRAME_SIZE_MAX_BYTES;
use dtx_protocol::{decode, encode, Address, FailureDetector, Message, NodeId};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{
    connection_limits, gossipsub, identify, identity::Keypair, kad, noise, ping, request_response,
    tcp,
};
use libp2p::{swarm::behaviour::toggle::Toggle, yamux};
use libp2p::{Multiaddr, StreamProtocol, Swarm};
use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

/// The request-response protocol carrying dtx frames.
pub const MESSAGES_PROTOCOL: StreamProtocol = StreamProtocol::new("/dtx/messages/1");

/// The stream protocol carrying dtx frames back to back. Version 2: the accepting side
/// first writes one byte, [`STREAM_ACCEPTED`], so the opener knows its stream was taken
/// (libp2p-stream drops an inbound stream whose accept queue is full, and frames written
/// to it were silently lost).
pub const STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/dtx/stream/2");

/// The byte an accepting side writes first on a [`STREAM_PROTOCOL`] stream.
pub const STREAM_ACCEPTED: u8 = 0xD7;

/// Kademlia's protocol name (a private DHT: dtx peers only, never the public IPFS one).
pub const KADEMLIA_PROTOCOL: StreamProtocol = StreamProtocol::new("/dtx/kad/1");

/// The gossipsub topic carrying failure-detector heartbeats. Named for what it carries, so
/// it is not confused with gossipsub's own "heartbeat" (its internal mesh upkeep timer).
pub const LIVENESS_TOPIC: &str = "dtx/liveness/1";

/// Gossipsub's mesh upkeep interval (its internal "heartbeat", unrelated to ours).
pub const GOSSIPSUB_MESH_UPKEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Largest gossipsub message: a digest of up to `DetectorConfig::digest_max` (512)
/// heartbeats fits even at their largest, about 280 bytes each (four addresses of 64
/// bytes); a usual one is about 20.
pub const LIVENESS_MESSAGE_SIZE_MAX_BYTES: usize = 256 * 1024;

/// Addresses of data nodes heard in their heartbeats (`Heartbeat::addresses`), handed to
/// the swarm and Kademlia so that a dial by peer id reaches a member that restarted on a
/// new address as soon as its heartbeat spreads. Serves data nodes and clients alike.
#[derive(Debug, Default)]
pub struct HeardAddresses {
    known: BTreeMap<NodeId, Vec<Address>>,
}

impl HeardAddresses {
    /// Takes in what `detector` heard of the data nodes of `config` (other than `me`);
    /// returns how many members' addresses changed.
    pub fn learn(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        config: &ClusterConfig,
        me: Option<NodeId>,
        detector: &FailureDetector,
    ) -> usize {
        let mut changed = 0;
        for node in &config.nodes {
            let heard = detector.addresses(node.id);
            if Some(node.id) == me || heard.is_empty() {
                continue;
            }
            if self.known.get(&node.id).is_some_and(|known| known == heard) {
                continue;
            }
            changed += 1;
            self.known.insert(node.id, heard.to_vec());
            for address in heard {
                let Ok(address) = Multiaddr::try_from(address.0.clone()) else {
                    tracing::debug!(node = %node.name, "a heartbeat address is not a multiaddr");
                    continue;
                };
                tracing::info!(node = %node.name, %address, "address heard in heartbeats");
                swarm.add_peer_address(node.peer_id, address.clone());
                swarm
                    .behaviour_mut()
                    .kademlia
                    .add_address(&node.peer_id, address);
            }
        }
        changed
    }
}

/// A listen address as the protocol's heartbeats carry it.
pub fn heartbeat_address(address: &Multiaddr) -> Address {
    Address(address.to_vec())
}

/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/dtx/1.0.0";

/// Concurrent request-response substreams per connection (libp2p's default of 100 drops
/// the excess inbound streams under load).
pub const CONCURRENT_STREAMS_MAX: usize = 4096;

/// Connections stay open this long without traffic: reconnecting (TCP + Noise + Yamux)
/// on the commit path would cost more than the commit.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);

/// A request that has not been acknowledged in this time is reported failed; the protocol
/// retries on its own timers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Incoming connections in their handshake (TCP + Noise + Yamux) at once at most: beyond
/// it new ones are refused before any cryptography is spent on them.
pub const PENDING_INCOMING_CONNECTIONS_MAX: u32 = 256;

/// Connections one peer may hold at once (two data nodes dialing each other at the same
/// moment hold two).
pub const CONNECTIONS_PER_PEER_MAX: u32 = 4;

/// Messages per request at most; more are split over several requests.
pub const MESSAGES_PER_REQUEST_MAX: usize = 4096;

/// One inbound or outbound request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Protocol messages for the receiver.
    Messages(Vec<Message>),
    /// An inbound frame that could not be read, and why (truncated, oversized, malformed,
    /// wrong version). The event loop logs it with the sender's peer id and moves on.
    Rejected(String),
}

/// The frame codec: u32 length prefix + `dtx_protocol` frame. A malformed, truncated or
/// oversized frame is read as [`Frame::Rejected`] (an oversized body is never read), so
/// the event loop can log it with the peer's identity; the connection and the node carry
/// on. (A codec error would only reach libp2p's debug log.)
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

/// What reading one frame gave.
#[derive(Debug)]
pub enum ReadOutcome {
    /// A frame (possibly rejected).
    Frame(Frame),
    /// The stream ended cleanly between frames.
    Closed,
}

/// Reads one length-prefixed frame. Never reads the body of an oversized frame.
pub async fn read_frame<T>(io: &mut T) -> ReadOutcome
where
    T: futures::AsyncRead + Unpin + Send,
{
    let mut length = [0u8; 4];
    let mut filled = 0;
    while filled < length.len() {
        match io.read(&mut length[filled..]).await {
            Ok(0) if filled == 0 => return ReadOutcome::Closed,
            Ok(0) => {
                return ReadOutcome::Frame(Frame::Rejected(format!(
                    "truncated length prefix ({filled} of 4 bytes)"
                )))
            }
            Ok(read) => filled += read,
            Err(error) if filled == 0 => {
                tracing::debug!(%error, "stream ended");
                return ReadOutcome::Closed;
            }
            Err(error) => {
                return ReadOutcome::Frame(Frame::Rejected(format!(
                    "truncated length prefix: {error}"
                )))
            }
        }
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > FRAME_SIZE_MAX_BYTES {
        return ReadOutcome::Frame(Frame::Rejected(format!(
            "frame of {length} bytes exceeds the limit of {FRAME_SIZE_MAX_BYTES}"
        )));
    }
    let mut frame = vec![0u8; length];
    if let Err(error) = io.read_exact(&mut frame).await {
        return ReadOutcome::Frame(Frame::Rejected(format!(
            "truncated frame of {length} bytes: {error}"
        )));
    }
    ReadOutcome::Frame(match decode(&frame) {
        Ok(messages) => Frame::Messages(messages),
        Err(error) => Frame::Rejected(error.to_string()),
    })
}

/// Encodes `messages` as frames (split so that each stays under the size limit) into
/// `buffer` and writes them with one write.
pub async fn write_frame<T>(
    io: &mut T,
    messages: &[Message],
    buffer: &mut Vec<u8>,
) -> io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    encode_frames(messages, buffer)?;
    io.write_all(buffer).await?;
    io.flush().await
}

fn encode_frames(messages: &[Message], buffer: &mut Vec<u8>) -> io::Result<()> {
    match encode(messages) {
        Ok(frame) => {
            // Fits in u32: encode refuses frames over FRAME_SIZE_MAX_BYTES.
            buffer.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&frame);
            Ok(())
        }
        Err(error) if messages.len() > 1 => {
            tracing::debug!(%error, "batch too large for one frame; splitting");
            let (first, second) = messages.split_at(messages.len() / 2);
            encode_frames(first, buffer)?;
            encode_frames(second, buffer)
        }
        Err(error) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            error.to_string(),
        )),
    }
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        match read_frame(io).await {
            ReadOutcome::Frame(frame) => Ok(frame),
            ReadOutcome::Closed => Ok(Frame::Rejected("empty request".to_string())),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _io: &mut T) -> io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        // One-way: the request is delivered once written; nothing to wait for.
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        frame: Frame,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        let Frame::Messages(messages) = frame else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a rejected frame is never sent",
            ));
        };
        let mut buffer = Vec::new();
        write_frame(io, &messages, &mut buffer).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _io: &mut T, _: ()) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

pub use behaviour::{Behaviour, BehaviourEvent};

mod behaviour {
    // The derive generates `BehaviourEvent` without doc comments.
    #![allow(missing_docs)]
    use super::{FrameCodec, Mdns};
    use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour};
    use libp2p::{connection_limits, gossipsub, identify, kad, ping, request_response};

    /// The network behaviour of every dtx peer.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Protocol messages as one-way requests.
        pub messages: request_response::Behaviour<FrameCodec>,
        /// Protocol messages on long-lived streams.
        pub stream: libp2p_stream::Behaviour,
        /// Peer identification (agent and listen addresses).
        pub identify: identify::Behaviour,
        /// Liveness of connections.
        pub ping: ping::Behaviour,
        /// Failure-detector heartbeats on [`super::LIVENESS_TOPIC`] (signed by the publisher).
        pub gossipsub: gossipsub::Behaviour,
        /// Address discovery among members (private DHT, memory store).
        pub kademlia: kad::Behaviour<kad::store::MemoryStore>,
        /// LAN discovery, only with the `mdns` cargo feature (and then only if enabled).
        pub mdns: Toggle<Mdns>,
        /// Bounds on connections being set up and held per peer.
        pub limits: connection_limits::Behaviour,
        /// Peers refused at the connection level for a while (strangers that sent frames).
        pub blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
    }
}

/// The mDNS behaviour with the `mdns` feature; a behaviour that does nothing without it.
#[cfg(feature = "mdns")]
pub type Mdns = libp2p::mdns::tokio::Behaviour;
/// The mDNS behaviour with the `mdns` feature; a behaviour that does nothing without it.
#[cfg(not(feature = "mdns"))]
pub type Mdns = libp2p::swarm::dummy::Behaviour;

/// What kind of peer a swarm is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A data node: Kademlia server, subscribes to the liveness topic.
    DataNode,
    /// A client: Kademlia client mode, publishes nothing on the liveness topic.
    Client,
}

/// The gossipsub configuration for small clusters: flood publishing (every heartbeat goes
/// straight to every subscribed peer, one hop) and a mesh that forms with a single peer,
/// where gossipsub's defaults (mesh_n 6, mesh_n_low 5) assume hundreds.
pub fn gossipsub_config() -> Result<gossipsub::Config, String> {
    gossipsub::ConfigBuilder::default()
        .heartbeat_interval(GOSSIPSUB_MESH_UPKEEP_INTERVAL)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .flood_publish(true)
        .mesh_n(4)
        .mesh_n_low(1)
        .mesh_n_high(8)
        .mesh_outbound_min(1)
        .max_transmit_size(LIVENESS_MESSAGE_SIZE_MAX_BYTES)
        .build()
        .map_err(|error| error.to_string())
}

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// Transport setup failed.
    #[error("cannot build the transport: {0}")]
    Transport(String),
    /// Listening failed.
    #[error("cannot listen on {address}: {message}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        message: String,
    },
}

/// Builds a swarm with TCP (nodelay) + Noise + Yamux, and QUIC with the `quic` feature.
/// `mdns` turns on LAN discovery (only effective with the `mdns` cargo feature).
pub fn build_swarm(
    keypair: Keypair,
    kind: PeerKind,
    mdns: bool,
) -> Result<Swarm<Behaviour>, SwarmError> {
    let transport_error = |error: &dyn std::fmt::Display| SwarmError::Transport(error.to_string());
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|error| transport_error(&error))?;
    #[cfg(feature = "quic")]
    let builder = builder.with_quic();
    let swarm = builder
        .with_behaviour(|key| {
            let config = request_response::Config::default()
                .with_max_concurrent_streams(CONCURRENT_STREAMS_MAX)
                .with_request_timeout(REQUEST_TIMEOUT);
            let peer_id = key.public().to_peer_id();
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub_config()?,
            )?;
            let mut kademlia_config = kad::Config::new(KADEMLIA_PROTOCOL);
            // Only addresses this node adds (members', from the config, identify and
            // heartbeats) enter the routing table: a stranger that speaks Kademlia to it
            // cannot plant itself or others there.
            kademlia_config.set_kbucket_inserts(kad::BucketInserts::Manual);
            let mut kademlia = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kademlia_config,
            );
            // Loopback addresses are never "confirmed external", so set the mode rather
            // than let Kademlia wait for one.
            kademlia.set_mode(Some(match kind {
                PeerKind::DataNode => kad::Mode::Server,
                PeerKind::Client => kad::Mode::Client,
            }));
            let mdns = Toggle::from(if mdns { build_mdns(peer_id)? } else { None });
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                messages: request_response::Behaviour::new(
                    [(MESSAGES_PROTOCOL, request_response::ProtocolSupport::Full)],
                    config,
                ),
                stream: libp2p_stream::Behaviour::new(),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.to_string(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                gossipsub,
                kademlia,
                mdns,
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(PENDING_INCOMING_CONNECTIONS_MAX))
                        .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX)),
                ),
                blocked: Default::default(),
            })
        })
        .map_err(|error| transport_error(&error))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

#[cfg(feature = "mdns")]
fn build_mdns(
    peer_id: libp2p::PeerId,
) -> Result<Option<Mdns>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Some(libp2p::mdns::tokio::Behaviour::new(
        libp2p::mdns::Config::default(),
        peer_id,
    )?))
}

#[cfg(not(feature = "mdns"))]
fn build_mdns(_: libp2p::PeerId) -> Result<Option<Mdns>, Box<dyn std::error::Error + Send + Sync>> {
    tracing::warn!("mDNS requested, but this build has no `mdns` feature; using bootstrap addresses and Kademlia only");
    Ok(None)
}

/// Protocol messages waiting to be sent, grouped per destination: everything produced in
/// one pass of the event loop for one peer leaves in one request.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: BTreeMap<NodeId, Vec<Message>>,
}

impl Outbox {
    /// Queues messages for `to`.
    pub fn push(&mut self, to: NodeId, messages: Vec<Message>) {
        self.pending.entry(to).or_default().extend(messages);
    }

    /// Takes everything queued: one batch per destination, split at
    /// [`MESSAGES_PER_REQUEST_MAX`].
    pub fn drain(&mut self) -> Vec<(NodeId, Vec<Message>)> {
        let mut batches = Vec::new();
        for (to, mut messages) in std::mem::take(&mut self.pending) {
            while messages.len() > MESSAGES_PER_REQUEST_MAX {
                let rest = messages.split_off(MESSAGES_PER_REQUEST_MAX);
                batches.push((to, messages));
                messages = rest;
            }
            batches.push((to, messages));
        }
        batches
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dtx_protocol::{DetectorConfig, Heartbeat, Role, Time};

    /// What the detector heard of a data node's addresses reaches the swarm once, and
    /// again when it changes; addresses of members not in the config, of this node
    /// itself, and bytes that are no multiaddr are left alone.
    #[tokio::test]
    async fn addresses_heard_in_heartbeats_are_learned_once_and_again_when_they_change() {
        let dir = std::env::temp_dir().join(format!("dtx-heard-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = ClusterConfig::load(&crate::config::init(&dir, 3, None, 1).unwrap()).unwrap();
        let mut swarm = build_swarm(Keypair::generate_ed25519(), PeerKind::Client, false).unwrap();
        let mut detector = FailureDetector::new(
            DetectorConfig::default(),
            NodeId(1_000),
            Role::Client,
            1,
            1,
            Time::ZERO,
        );
        let n3 = config.node_named("n3").unwrap().clone();
        let heard = |counter: u64, port: u16| {
            let address: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
            Heartbeat {
                node: n3.id,
                incarnation: 2,
                counter,
                role: Role::DataNode,
                load: 0,
                addresses: vec![heartbeat_address(&address), Address(b"junk".to_vec())].into(),
            }
        };
        let stranger = Heartbeat {
            node: NodeId(77),
            ..heard(1, 1)
        };
        let mut learned = HeardAddresses::default();
        assert_eq!(learned.learn(&mut swarm, &config, None, &detector), 0);
        detector.merge(Time::ZERO, n3.id, &[heard(1, 40_001), stranger]);
        assert_eq!(learned.learn(&mut swarm, &config, None, &detector), 1);
        assert_eq!(learned.learn(&mut swarm, &config, None, &detector), 0);
        assert_eq!(
            HeardAddresses::default().learn(&mut swarm, &config, Some(n3.id), &detector),
            0,
            "a node does not learn its own address"
        );
        // Kademlia now has the heard address (the junk bytes were skipped).
        // Kademlia keeps them with the peer id appended.
        let in_kademlia = |swarm: &mut Swarm<Behaviour>| -> Vec<String> {
            swarm
                .behaviour_mut()
                .kademlia
                .kbucket(n3.peer_id)
                .and_then(|bucket| {
                    bucket
                        .iter()
                        .find(|entry| *entry.node.key.preimage() == n3.peer_id)
                        .map(|entry| entry.node.value.iter().map(Multiaddr::to_string).collect())
                })
                .unwrap_or_default()
        };
        let port = |port: u16| format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", n3.peer_id);
        assert_eq!(in_kademlia(&mut swarm), vec![port(40_001)]);
        // It moves again: learned again.
        detector.merge(Time::ZERO, n3.id, &[heard(2, 40_002)]);
        assert_eq!(learned.learn(&mut swarm, &config, None, &detector), 1);
        assert!(in_kademlia(&mut swarm).contains(&port(40_002)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
