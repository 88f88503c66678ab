//! How protocol frames travel between two peers: one-way request-response requests, or
//! one long-lived stream per peer and direction (the default).
//!
//! Both carry the same frames (u32 little-endian length, then a `dtx_protocol` frame) and
//! every node accepts both. Request-response opens and negotiates a substream per request
//! and arms a timer for it, so it costs tens of microseconds of CPU and several thread
//! wake-ups per request. The stream transport (`libp2p-stream`) opens one stream to each
//! peer and writes frames back to back: a writer task per peer drains its queue into one
//! write, so everything queued while the previous write ran leaves together (the same
//! group-commit idea as the log).
//!
//! A frame that cannot be read on a stream (truncated, oversized, malformed) desynchronizes
//! it: the reader reports it as [`Frame::Rejected`] and drops the stream; the sender opens
//! a new one for its next frame. Messages lost that way are retried by the protocol.

use crate::network::{
    read_frame, write_frame, Behaviour, Frame, ReadOutcome, MESSAGES_PER_REQUEST_MAX,
    STREAM_PROTOCOL,
};
use dtx_protocol::Message;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Frames received and not yet handled, at most (readers wait: backpressure on the peer).
pub const INBOUND_QUEUED_MAX: usize = 8192;

/// Batches queued for one peer's writer at most; beyond it new batches are dropped and
/// logged (the protocol retries), so a stalled peer cannot grow memory.
pub const OUTBOUND_QUEUED_MAX: usize = 4096;

/// A writer with nothing to send for this long exits (clients come and go).
pub const WRITER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Inbound streams one peer may hold open at once. A well-behaved peer keeps one (it opens
/// another only after a bad frame closed the previous one); beyond this, new streams from
/// that peer are refused and logged, so one peer cannot make this node spawn unbounded
/// reader tasks.
pub const INBOUND_STREAMS_PER_PEER_MAX: usize = 16;

/// Writer entries kept at most; past it, entries of exited writers are pruned.
pub const WRITERS_MAX: usize = 70_000;

/// Which transport a process uses for the frames it sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// One long-lived stream per peer and direction (libp2p-stream).
    #[default]
    Stream,
    /// One request-response request per batch.
    RequestResponse,
}

/// The sending side of both transports, and the receiving side of the stream transport.
pub struct Links {
    kind: TransportKind,
    control: libp2p_stream::Control,
    writers: HashMap<PeerId, mpsc::Sender<Vec<Message>>>,
}

impl Links {
    /// Registers the stream protocol on `swarm` and returns the links plus the channel on
    /// which frames read from inbound streams arrive.
    pub fn new(
        swarm: &mut Swarm<Behaviour>,
        kind: TransportKind,
    ) -> (Links, mpsc::Receiver<(PeerId, Frame)>) {
        let mut control = swarm.behaviour().stream.new_control();
        let (sender, receiver) = mpsc::channel(INBOUND_QUEUED_MAX);
        match control.accept(STREAM_PROTOCOL) {
            Ok(incoming) => {
                tokio::spawn(accept_streams(incoming, sender));
            }
            Err(error) => tracing::error!(%error, "cannot accept dtx streams"),
        }
        (
            Links {
                kind,
                control,
                writers: HashMap::new(),
            },
            receiver,
        )
    }

    /// Sends `messages` to `peer`; `addresses` (known for data nodes) are dialed if there
    /// is no connection.
    pub fn send(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        messages: Vec<Message>,
    ) {
        match self.kind {
            TransportKind::RequestResponse => {
                swarm.behaviour_mut().messages.send_request_with_addresses(
                    &peer,
                    Frame::Messages(messages),
                    addresses,
                );
            }
            TransportKind::Stream => {
                if !addresses.is_empty() && !swarm.is_connected(&peer) {
                    // Only one dial at a time: the default condition skips a peer that is
                    // connected or being dialed.
                    let _ = swarm.dial(DialOpts::peer_id(peer).addresses(addresses).build());
                }
                self.send_on_stream(peer, messages);
            }
        }
    }

    fn send_on_stream(&mut self, peer: PeerId, mut messages: Vec<Message>) {
        if self.writers.len() >= WRITERS_MAX && !self.writers.contains_key(&peer) {
            self.writers.retain(|_, writer| !writer.is_closed());
        }
        // Two attempts: the writer may have exited while idle, and then one new writer is
        // started. A new writer's queue is closed at once only while the runtime shuts
        // down (tokio drops tasks spawned then); retrying in that case would never end.
        for _ in 0..2 {
            let writer = self.writers.entry(peer).or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(OUTBOUND_QUEUED_MAX);
                tokio::spawn(write_stream(self.control.clone(), peer, receiver));
                sender
            });
            match writer.try_send(messages) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(%peer, "outbound queue full; messages dropped (the protocol retries)");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    self.writers.remove(&peer);
                    messages = returned;
                }
            }
        }
        tracing::debug!(%peer, "no writer could be started (shutting down); messages dropped");
    }
}

/// Open inbound streams per peer (shared by the reader tasks, which count themselves out).
#[derive(Clone, Debug, Default)]
pub struct InboundStreams {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
}

/// One counted inbound stream; dropping it counts the stream out.
#[derive(Debug)]
pub struct InboundSlot {
    streams: InboundStreams,
    peer: PeerId,
}

impl InboundStreams {
    /// Counts a new inbound stream of `peer` in, unless it already holds
    /// [`INBOUND_STREAMS_PER_PEER_MAX`].
    pub fn admit(&self, peer: PeerId) -> Option<InboundSlot> {
        // A poisoned lock only means a reader panicked mid-update; the counts stay usable.
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(peer).or_insert(0);
        if *count >= INBOUND_STREAMS_PER_PEER_MAX {
            return None;
        }
        *count += 1;
        Some(InboundSlot {
            streams: self.clone(),
            peer,
        })
    }

    /// Inbound streams `peer` holds open now.
    pub fn open(&self, peer: &PeerId) -> usize {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.get(peer).copied().unwrap_or(0)
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

async fn accept_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    sender: mpsc::Sender<(PeerId, Frame)>,
) {
    use futures::StreamExt;
    let streams = InboundStreams::default();
    while let Some((peer, stream)) = incoming.next().await {
        match streams.admit(peer) {
            Some(slot) => {
                tokio::spawn(read_stream(peer, stream, sender.clone(), slot));
            }
            None => {
                // Dropping the stream closes it.
                tracing::warn!(
                    %peer, limit = INBOUND_STREAMS_PER_PEER_MAX,
                    "refused an inbound stream: the peer holds too many open"
                );
            }
        }
    }
}

async fn read_stream(
    peer: PeerId,
    mut stream: libp2p::Stream,
    sender: mpsc::Sender<(PeerId, Frame)>,
    _slot: InboundSlot,
) {
    loop {
        let frame = match read_frame(&mut stream).await {
            ReadOutcome::Frame(frame) => frame,
            ReadOutcome::Closed => return,
        };
        let rejected = matches!(frame, Frame::Rejected(_));
        if sender.send((peer, frame)).await.is_err() || rejected {
            // The event loop is gone, or the stream is out of step after a bad frame.
            return;
        }
    }
}

async fn write_stream(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut queue: mpsc::Receiver<Vec<Message>>,
) {
    let mut stream: Option<libp2p::Stream> = None;
    let mut buffer = Vec::new();
    loop {
        let mut messages = match tokio::time::timeout(WRITER_IDLE_TIMEOUT, queue.recv()).await {
            Ok(Some(messages)) => messages,
            _ => return,
        };
        while messages.len() < MESSAGES_PER_REQUEST_MAX {
            match queue.try_recv() {
                Ok(more) => messages.extend(more),
                Err(_) => break,
            }
        }
        let mut current = match stream.take() {
            Some(current) => current,
            None => match control.open_stream(peer, STREAM_PROTOCOL).await {
                Ok(opened) => opened,
                Err(error) => {
                    tracing::debug!(%peer, %error, "cannot open a stream; messages dropped");
                    continue;
                }
            },
        };
        buffer.clear();
        if let Err(error) = write_frame(&mut current, &messages, &mut buffer).await {
            tracing::debug!(%peer, %error, "stream write failed; messages dropped");
            continue;
        }
        stream = Some(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_cannot_hold_more_inbound_streams_than_the_limit() {
        let streams = InboundStreams::default();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let other = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let mut slots: Vec<InboundSlot> = (0..INBOUND_STREAMS_PER_PEER_MAX)
            .map(|_| streams.admit(peer).expect("under the limit"))
            .collect();
        assert!(streams.admit(peer).is_none(), "over the limit");
        assert!(
            streams.admit(other).is_some(),
            "other peers are not affected"
        );
        slots.pop();
        assert_eq!(streams.open(&peer), INBOUND_STREAMS_PER_PEER_MAX - 1);
        assert!(
            streams.admit(peer).is_some(),
            "a closed stream frees its slot"
        );
    }

    /// Regression (CI run of 2026-11-22, `cluster` test aborted with a stack overflow):
    /// a send while the runtime shuts down spawned a writer that tokio dropped at once,
    /// found its queue closed and retried by recursion, forever.
    #[test]
    fn a_send_during_runtime_shutdown_is_dropped_not_retried_forever() {
        struct SendOnDrop(Option<(Links, Swarm<Behaviour>)>, PeerId);
        impl Drop for SendOnDrop {
            fn drop(&mut self) {
                let (mut links, mut swarm) = self.0.take().expect("once");
                links.send(&mut swarm, self.1, Vec::new(), Vec::new());
                links.send(&mut swarm, self.1, Vec::new(), Vec::new());
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        runtime.block_on(async {
            let mut swarm = crate::network::build_swarm(
                libp2p::identity::Keypair::generate_ed25519(),
                crate::network::PeerKind::Client,
                false,
            )
            .expect("swarm");
            let (links, _inbound) = Links::new(&mut swarm, TransportKind::Stream);
            let guard = SendOnDrop(Some((links, swarm)), peer);
            // Parked forever: dropped (and so sending) only when the runtime shuts down.
            tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
        });
        drop(runtime);
    }
}
