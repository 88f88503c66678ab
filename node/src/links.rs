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
//! libp2p-stream hands inbound streams to the accepting task through a queue of one and
//! drops a stream that arrives while it is full (several peers opening at once, a busy
//! runtime). Frames written to such a stream were lost without a trace, so the accepting
//! side first writes [`STREAM_ACCEPTED`], and a writer sends nothing on a new stream
//! before it has read that byte; without it the writer opens another
//! ([`STREAM_OPEN_ATTEMPTS`]), keeping its messages.
//!
//! A frame that cannot be read on a stream (truncated, oversized, malformed) desynchronizes
//! it: the reader reports it as [`Frame::Rejected`] and drops the stream; the sender opens
//! a new one for its next frame. Messages lost that way are retried by the protocol.

use crate::auth::{Gate, SessionProof, Standing};
use crate::network::{
    read_frame, write_frame, Behaviour, Frame, ReadOutcome, MESSAGES_PER_REQUEST_MAX,
    STREAM_ACCEPTED, STREAM_PROTOCOL,
};
use dtx_protocol::{Message, TxnId};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Frames received from data nodes and not yet handled, at most; readers wait:
/// backpressure on the peer.
pub const INBOUND_QUEUED_MAX: usize = 8192;

/// Frames queued per client stream at most. Each client stream has its own queue and the
/// event loop takes one frame from each in turn, so a client that floods waits behind
/// its own frames only (backpressure on its stream), never in front of another client.
pub const CLIENT_STREAM_QUEUED_MAX: usize = 64;

/// Messages the event loop takes from one client at a turn at most (see
/// [`client_chunks`]).
pub const CLIENT_CHUNK_MESSAGES: usize = 4;

/// Client streams waiting to be registered with the event loop at most.
pub const CLIENT_STREAMS_REGISTERING_MAX: usize = 1024;

/// Notices of frames refused at the door queued at most (more are dropped: the refusal
/// answers are a courtesy, rate-limited anyway).
pub const REFUSED_QUEUED_MAX: usize = 1024;

/// Transaction ids one refusal notice names at most.
pub const REFUSED_TXNS_MAX: usize = 16;

/// Inbound streams a peer that is not a data node may hold open at once (a client keeps
/// one per node).
pub const INBOUND_STREAMS_PER_CLIENT_MAX: usize = 4;

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

/// A peer whose frame was refused for want of a session has its further streams closed
/// unread for this long: it cannot keep this node decoding frames it will refuse anyway
/// (it is disconnected soon after; this covers the time until then and a quick redial).
pub const STRANGER_MEMORY: Duration = Duration::from_secs(10);

/// Frames refused for want of a session (within [`STRANGER_MEMORY`]) after which a peer's
/// further streams are closed unread. A client racing a `users.toml` reload sends one or
/// two before its transaction ends; a flooder sends many.
pub const STRANGER_FRAMES_BEFORE_SHUNNED: u32 = 8;

/// Refused peers remembered at most (past it, expired entries are pruned and new ones are
/// not remembered: their streams are read and refused one by one, which stays bounded).
pub const STRANGERS_REMEMBERED_MAX: usize = 4096;

/// Streams a writer opens for one batch at most before it drops the batch (the protocol
/// retries it): each attempt authenticates if it must, opens a stream and waits up to
/// [`STREAM_ACCEPT_TIMEOUT`] for the peer's [`STREAM_ACCEPTED`].
pub const STREAM_OPEN_ATTEMPTS: u32 = 4;

/// How long a writer waits for a new stream's [`STREAM_ACCEPTED`].
pub const STREAM_ACCEPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause before the second attempt to open a stream; doubled for each later one.
pub const STREAM_REOPEN_BACKOFF: Duration = Duration::from_millis(5);

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

/// How fast a client may send: a token bucket per peer, in messages (a frame counts at
/// least one). Beyond it frames are dropped at the door and the client is told it was
/// rate limited; data nodes are never limited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientBudget {
    /// Sustained messages per second.
    pub messages_per_second: f64,
    /// Messages a client may send at once after a quiet spell.
    pub burst_messages: f64,
}

impl Default for ClientBudget {
    fn default() -> Self {
        ClientBudget {
            messages_per_second: 20_000.0,
            burst_messages: 40_000.0,
        }
    }
}

/// Why a frame was refused at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorRefusal {
    /// The peer has no client session (and is no data node).
    Unauthenticated,
    /// The client exceeded its budget.
    RateLimited,
}

/// A frame (or a stream) refused before the event loop saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedFrame {
    /// Who sent it.
    pub peer: PeerId,
    /// Why it was refused.
    pub reason: DoorRefusal,
    /// Transactions its messages named (at most [`REFUSED_TXNS_MAX`]), to tell the client.
    pub txns: Vec<TxnId>,
    /// Messages dropped.
    pub messages: usize,
    /// False if the stream was closed unread (its peer kept sending after being told).
    pub read: bool,
}

/// The frames of one client stream, in order.
pub type ClientStream = futures::stream::BoxStream<'static, (PeerId, Frame)>;

/// Frames received, sorted by sender: the event loop takes data nodes' frames first, so a
/// flood of client frames cannot delay the protocol among data nodes.
pub struct Inbound {
    /// Frames from data nodes.
    pub members: mpsc::Receiver<(PeerId, Frame)>,
    /// One stream of frames per client stream (with a session, or any non-member in
    /// insecure mode): poll them with `futures::stream::SelectAll`, which takes one item
    /// from each ready stream in turn.
    pub clients: mpsc::Receiver<ClientStream>,
    /// Frames refused at the door.
    pub refused: mpsc::Receiver<RefusedFrame>,
}

/// The sending side of both transports, and the receiving side of the stream transport.
pub struct Links {
    kind: TransportKind,
    control: libp2p_stream::Control,
    writers: HashMap<PeerId, mpsc::Sender<Vec<Message>>>,
    proof: Option<Arc<SessionProof>>,
    /// Where a client's writers deliver the refusals they learn first-hand (see
    /// [`write_stream`]): the queue frames from data nodes arrive on.
    own_refusals: mpsc::Sender<(PeerId, Frame)>,
    /// Writes handed to the transport (a stream write or a request), shared with the
    /// writer tasks: with `dtx_messages_sent_total`, how well messages are batched.
    writes: Arc<AtomicU64>,
}

impl Links {
    /// Writes handed to the transport so far: stream writes (each one frame, or several
    /// back to back when a batch exceeds a frame's size) and requests.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Registers the stream protocol on `swarm` and returns the links plus the channels on
    /// which frames read from inbound streams arrive, sorted by `gate`. `proof` (a
    /// client's) is presented on every new outbound stream before its first frame, so a
    /// data node that restarted knows the client again before it reads from it.
    pub fn new(
        swarm: &mut Swarm<Behaviour>,
        kind: TransportKind,
        gate: Arc<Gate>,
        budget: ClientBudget,
        proof: Option<Arc<SessionProof>>,
    ) -> (Links, Inbound) {
        let mut control = swarm.behaviour().stream.new_control();
        let (members, members_receiver) = mpsc::channel(INBOUND_QUEUED_MAX);
        let own_refusals = members.clone();
        let (clients, clients_receiver) = mpsc::channel(CLIENT_STREAMS_REGISTERING_MAX);
        let (refused, refused_receiver) = mpsc::channel(REFUSED_QUEUED_MAX);
        let door = Door {
            gate,
            streams: InboundStreams::new(budget),
            members,
            clients,
            refused,
        };
        match control.accept(STREAM_PROTOCOL) {
            Ok(incoming) => {
                tokio::spawn(accept_streams(incoming, door));
            }
            Err(error) => tracing::error!(%error, "cannot accept dtx streams"),
        }
        (
            Links {
                kind,
                control,
                writers: HashMap::new(),
                proof,
                own_refusals,
                writes: Arc::default(),
            },
            Inbound {
                members: members_receiver,
                clients: clients_receiver,
                refused: refused_receiver,
            },
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
                self.writes.fetch_add(1, Ordering::Relaxed);
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
                tokio::spawn(write_stream(
                    self.control.clone(),
                    peer,
                    receiver,
                    self.proof.clone(),
                    self.own_refusals.clone(),
                    self.writes.clone(),
                ));
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

/// Open inbound streams and the sending budget per peer (shared by the reader tasks,
/// which count themselves out).
#[derive(Clone, Debug, Default)]
pub struct InboundStreams {
    open: Arc<Mutex<HashMap<PeerId, PeerInbound>>>,
    /// Peers refused for want of a session: since when, and how many frames.
    strangers: Arc<Mutex<HashMap<PeerId, (Instant, u32)>>>,
    budget: ClientBudget,
}

/// One peer's open inbound streams and its token bucket.
#[derive(Clone, Copy, Debug)]
struct PeerInbound {
    streams: usize,
    tokens: f64,
    refilled: Instant,
}

/// One counted inbound stream; dropping it counts the stream out.
#[derive(Debug)]
pub struct InboundSlot {
    streams: InboundStreams,
    peer: PeerId,
}

impl InboundStreams {
    /// Stream counts and budgets for clients that may send at `budget`.
    pub fn new(budget: ClientBudget) -> InboundStreams {
        InboundStreams {
            open: Arc::default(),
            strangers: Arc::default(),
            budget,
        }
    }

    fn strangers(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, (Instant, u32)>> {
        self.strangers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `peer`'s frame was refused for want of a session at `now`.
    pub fn remember_stranger(&self, peer: PeerId, now: Instant) {
        let mut strangers = self.strangers();
        if strangers.len() >= STRANGERS_REMEMBERED_MAX && !strangers.contains_key(&peer) {
            strangers
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < STRANGER_MEMORY);
            if strangers.len() >= STRANGERS_REMEMBERED_MAX {
                return;
            }
        }
        let entry = strangers.entry(peer).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= STRANGER_MEMORY {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// True if `peer` had [`STRANGER_FRAMES_BEFORE_SHUNNED`] frames refused for want of a
    /// session within [`STRANGER_MEMORY`]: its streams are closed unread.
    pub fn is_recent_stranger(&self, peer: &PeerId, now: Instant) -> bool {
        self.strangers().get(peer).is_some_and(|(since, frames)| {
            *frames >= STRANGER_FRAMES_BEFORE_SHUNNED
                && now.saturating_duration_since(*since) < STRANGER_MEMORY
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerInbound>> {
        // A poisoned lock only means a reader panicked mid-update; the counts stay usable.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a new inbound stream of `peer` in, unless it already holds `limit`.
    pub fn admit(&self, peer: PeerId, limit: usize) -> Option<InboundSlot> {
        let mut open = self.lock();
        let entry = open.entry(peer).or_insert(PeerInbound {
            streams: 0,
            tokens: self.budget.burst_messages,
            refilled: Instant::now(),
        });
        if entry.streams >= limit {
            return None;
        }
        entry.streams += 1;
        Some(InboundSlot {
            streams: self.clone(),
            peer,
        })
    }

    /// Inbound streams `peer` holds open now.
    pub fn open(&self, peer: &PeerId) -> usize {
        self.lock().get(peer).map_or(0, |entry| entry.streams)
    }

    /// Takes `messages` from `peer`'s budget; false (and nothing taken) if it has not that
    /// many left. The bucket refills at the budget's rate up to its burst.
    pub fn spend(&self, peer: &PeerId, messages: usize, now: Instant) -> bool {
        let mut open = self.lock();
        let Some(entry) = open.get_mut(peer) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * self.budget.messages_per_second)
            .min(self.budget.burst_messages);
        entry.refilled = now;
        let cost = messages.max(1) as f64;
        if entry.tokens < cost {
            return false;
        }
        entry.tokens -= cost;
        true
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = open.get_mut(&self.peer) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Where inbound frames go, and who may send them.
#[derive(Clone)]
struct Door {
    gate: Arc<Gate>,
    streams: InboundStreams,
    members: mpsc::Sender<(PeerId, Frame)>,
    clients: mpsc::Sender<ClientStream>,
    refused: mpsc::Sender<RefusedFrame>,
}

impl Door {
    /// Tells the event loop about a refused frame (dropped if its queue is full).
    fn refuse(&self, peer: PeerId, reason: DoorRefusal, frame: &Frame) {
        let (txns, messages) = match frame {
            Frame::Messages(messages) => {
                let mut txns: Vec<TxnId> = messages.iter().map(Message::txn).collect();
                txns.sort();
                txns.dedup();
                txns.truncate(REFUSED_TXNS_MAX);
                (txns, messages.len())
            }
            Frame::Rejected(_) => (Vec::new(), 0),
        };
        let _ = self.refused.try_send(RefusedFrame {
            peer,
            reason,
            txns,
            messages,
            read: true,
        });
    }
}

async fn accept_streams(mut incoming: libp2p_stream::IncomingStreams, door: Door) {
    use futures::StreamExt;
    while let Some((peer, stream)) = incoming.next().await {
        if matches!(door.gate.standing(&peer), Standing::Unauthenticated)
            && door.streams.is_recent_stranger(&peer, Instant::now())
        {
            // Already told why: dropping the stream unread closes it, and the notice
            // (naming nothing, so not answered) has the event loop disconnect the peer if
            // it came back on a new connection.
            let _ = door.refused.try_send(RefusedFrame {
                peer,
                reason: DoorRefusal::Unauthenticated,
                txns: Vec::new(),
                messages: 0,
                read: false,
            });
            continue;
        }
        let limit = if door.gate.is_member(&peer) {
            INBOUND_STREAMS_PER_PEER_MAX
        } else {
            INBOUND_STREAMS_PER_CLIENT_MAX
        };
        match door.streams.admit(peer, limit) {
            Some(slot) => {
                tokio::spawn(read_stream(peer, stream, door.clone(), slot));
            }
            None => {
                // Dropping the stream closes it.
                tracing::debug!(
                    %peer, limit,
                    "refused an inbound stream: the peer holds too many open"
                );
            }
        }
    }
}

async fn read_stream(peer: PeerId, mut stream: libp2p::Stream, door: Door, _slot: InboundSlot) {
    if stream.write_all(&[STREAM_ACCEPTED]).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    // This stream's own queue, made at its first client frame.
    let mut own_queue: Option<mpsc::Sender<(PeerId, Frame)>> = None;
    loop {
        let frame = match read_frame(&mut stream).await {
            ReadOutcome::Frame(frame) => frame,
            ReadOutcome::Closed => return,
        };
        let rejected = matches!(frame, Frame::Rejected(_));
        let queue = match door.gate.standing(&peer) {
            Standing::Member => &door.members,
            Standing::Client(_) => {
                let messages = match &frame {
                    Frame::Messages(messages) => messages.len(),
                    Frame::Rejected(_) => 1,
                };
                if !door.streams.spend(&peer, messages, Instant::now()) {
                    door.refuse(peer, DoorRefusal::RateLimited, &frame);
                    continue;
                }
                if own_queue.is_none() {
                    let (sender, receiver) = mpsc::channel(CLIENT_STREAM_QUEUED_MAX);
                    let frames: ClientStream = Box::pin(client_chunks(receiver));
                    if door.clients.send(frames).await.is_err() {
                        return;
                    }
                    own_queue = Some(sender);
                }
                match &own_queue {
                    Some(queue) => queue,
                    None => return,
                }
            }
            Standing::Unauthenticated => {
                // Nothing from it reaches the protocol; the stream is closed, and its next
                // ones are closed unread.
                door.streams.remember_stranger(peer, Instant::now());
                door.refuse(peer, DoorRefusal::Unauthenticated, &frame);
                return;
            }
        };
        if queue.send((peer, frame)).await.is_err() || rejected {
            // The event loop is gone, or the stream is out of step after a bad frame.
            return;
        }
    }
}

/// The [`Message::Refused`] a data node would answer `messages` with when it has no
/// session for their sender: one per transaction they name.
fn refusals_for(messages: &[Message]) -> Vec<Message> {
    let mut txns: Vec<TxnId> = messages
        .iter()
        .map(Message::txn)
        .filter(|txn| *txn != TxnId::NONE)
        .collect();
    txns.sort();
    txns.dedup();
    txns.into_iter()
        .map(|txn| Message::Refused {
            txn,
            reason: dtx_protocol::Refusal::Unauthenticated,
        })
        .collect()
}

/// A client stream's frames as the event loop takes them: a frame of many messages in
/// pieces of at most [`CLIENT_CHUNK_MESSAGES`], so taking one item from each client in
/// turn is fair by messages, not by frames (a client packing 64 Prepares into a frame gets
/// no more turns' worth of work than one sending them one by one).
fn client_chunks(
    receiver: mpsc::Receiver<(PeerId, Frame)>,
) -> impl futures::Stream<Item = (PeerId, Frame)> + Send + 'static {
    futures::stream::unfold(
        (receiver, None::<(PeerId, std::vec::IntoIter<Message>)>),
        |(mut receiver, mut rest)| async move {
            loop {
                if let Some((peer, mut messages)) = rest.take() {
                    let chunk: Vec<Message> =
                        messages.by_ref().take(CLIENT_CHUNK_MESSAGES).collect();
                    if !chunk.is_empty() {
                        let more = messages.len() > 0;
                        let rest = more.then_some((peer, messages));
                        return Some(((peer, Frame::Messages(chunk)), (receiver, rest)));
                    }
                }
                match receiver.recv().await? {
                    (peer, Frame::Messages(messages)) => {
                        rest = Some((peer, messages.into_iter()));
                    }
                    rejected => return Some((rejected, (receiver, None))),
                }
            }
        },
    )
}

async fn write_stream(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut queue: mpsc::Receiver<Vec<Message>>,
    proof: Option<Arc<SessionProof>>,
    own_refusals: mpsc::Sender<(PeerId, Frame)>,
    writes: Arc<AtomicU64>,
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
            None => match open_accepted(&mut control, peer, proof.as_deref()).await {
                Opened::Stream(opened) => opened,
                Opened::Refused(error) => {
                    // The node said no (a removed user, a full node): it would not read
                    // these messages. Sending them anyway only made it count this client
                    // as a stranger flooding it, close its streams unread and stop
                    // answering; its Refused answers are sent at most once per interval.
                    // So the refusal is delivered here, first-hand, for every transaction
                    // the messages name, and nothing is sent.
                    tracing::warn!(%peer, %error, "client session refused; messages not sent");
                    let answers = refusals_for(&messages);
                    if !answers.is_empty() {
                        let _ = own_refusals.try_send((peer, Frame::Messages(answers)));
                    }
                    continue;
                }
                Opened::Failed(error) => {
                    tracing::debug!(%peer, %error, "no stream accepted; messages dropped");
                    continue;
                }
            },
        };
        buffer.clear();
        if let Err(error) = write_frame(&mut current, &messages, &mut buffer).await {
            tracing::debug!(%peer, %error, "stream write failed; messages dropped");
            continue;
        }
        writes.fetch_add(1, Ordering::Relaxed);
        stream = Some(current);
    }
}

/// What [`open_accepted`] got.
enum Opened {
    /// A stream the peer accepted.
    Stream(libp2p::Stream),
    /// The peer refused this client's session.
    Refused(crate::auth::AuthError),
    /// No accepted stream after every attempt (the last failure).
    Failed(String),
}

/// Opens a stream to `peer` that the peer has accepted (it wrote [`STREAM_ACCEPTED`]),
/// authenticating first when this process is a client (`proof`): a new stream may be a new
/// connection, to a node that restarted. Up to [`STREAM_OPEN_ATTEMPTS`] attempts with a
/// doubling pause; a refused session ends at once.
async fn open_accepted(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    proof: Option<&SessionProof>,
) -> Opened {
    let mut pause = STREAM_REOPEN_BACKOFF;
    let mut failure = String::new();
    for attempt in 0..STREAM_OPEN_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
        if let Some(proof) = proof {
            match crate::auth::authenticate(control, peer, proof).await {
                Ok(_) => {}
                Err(error @ crate::auth::AuthError::Refused { .. }) => {
                    return Opened::Refused(error)
                }
                Err(error) => {
                    // A transport failure (a dropped handshake stream among them): try again.
                    failure = format!("session not opened: {error}");
                    continue;
                }
            }
        }
        let mut stream = match control.open_stream(peer, STREAM_PROTOCOL).await {
            Ok(stream) => stream,
            Err(error) => {
                failure = format!("cannot open a stream: {error}");
                continue;
            }
        };
        let mut accepted = [0u8; 1];
        match tokio::time::timeout(STREAM_ACCEPT_TIMEOUT, stream.read_exact(&mut accepted)).await {
            Ok(Ok(())) if accepted[0] == STREAM_ACCEPTED => return Opened::Stream(stream),
            Ok(Ok(())) => failure = format!("stream answered {:#04x}, not accepted", accepted[0]),
            Ok(Err(error)) => failure = format!("stream not accepted: {error}"),
            Err(_) => failure = "stream not accepted in time".to_string(),
        }
        tracing::debug!(%peer, attempt, %failure, "stream not accepted; opening another");
    }
    Opened::Failed(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clients_frames_reach_the_event_loop_in_small_pieces_in_order() {
        use futures::StreamExt;
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let message = |sequence: u64| Message::Refused {
            txn: TxnId {
                client: dtx_protocol::NodeId(9),
                sequence,
            },
            reason: dtx_protocol::Refusal::RateLimited,
        };
        let (sender, receiver) = mpsc::channel(4);
        sender
            .send((peer, Frame::Messages((0..10).map(message).collect())))
            .await
            .expect("send");
        sender
            .send((peer, Frame::Rejected("bad".into())))
            .await
            .expect("send");
        sender
            .send((peer, Frame::Messages(vec![message(10)])))
            .await
            .expect("send");
        drop(sender);
        let items: Vec<(PeerId, Frame)> = client_chunks(receiver).collect().await;
        let sizes: Vec<Option<usize>> = items
            .iter()
            .map(|(_, frame)| match frame {
                Frame::Messages(messages) => Some(messages.len()),
                Frame::Rejected(_) => None,
            })
            .collect();
        assert_eq!(sizes, vec![Some(4), Some(4), Some(2), None, Some(1)]);
        let sequence: Vec<Message> = items
            .into_iter()
            .flat_map(|(_, frame)| match frame {
                Frame::Messages(messages) => messages,
                Frame::Rejected(_) => Vec::new(),
            })
            .collect();
        assert_eq!(sequence, (0..11).map(message).collect::<Vec<_>>());
    }

    #[test]
    fn a_refused_stranger_is_remembered_for_a_while_and_the_memory_is_bounded() {
        let streams = InboundStreams::new(ClientBudget::default());
        let peer = |_| {
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
        };
        let stranger = peer(0);
        let start = Instant::now();
        assert!(!streams.is_recent_stranger(&stranger, start));
        for _ in 1..STRANGER_FRAMES_BEFORE_SHUNNED {
            streams.remember_stranger(stranger, start);
        }
        assert!(
            !streams.is_recent_stranger(&stranger, start),
            "a few refused frames are a client racing a reload, not a flooder"
        );
        streams.remember_stranger(stranger, start);
        assert!(streams.is_recent_stranger(&stranger, start + STRANGER_MEMORY / 2));
        assert!(!streams.is_recent_stranger(&stranger, start + STRANGER_MEMORY));

        // Full: a new stranger is not remembered until old entries expire.
        for index in 1..STRANGERS_REMEMBERED_MAX {
            streams.remember_stranger(peer(index), start);
        }
        let late = peer(0);
        streams.remember_stranger(late, start + Duration::from_secs(1));
        assert!(
            !streams.strangers().contains_key(&late),
            "full: not remembered"
        );
        assert_eq!(streams.strangers().len(), STRANGERS_REMEMBERED_MAX);
        let later = start + STRANGER_MEMORY;
        for _ in 0..STRANGER_FRAMES_BEFORE_SHUNNED {
            streams.remember_stranger(late, later);
        }
        assert!(streams.is_recent_stranger(&late, later));
        assert_eq!(streams.strangers().len(), 1, "expired entries were pruned");
    }

    #[test]
    fn a_peer_cannot_hold_more_inbound_streams_than_the_limit() {
        let streams = InboundStreams::new(ClientBudget::default());
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let other = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let mut slots: Vec<InboundSlot> = (0..INBOUND_STREAMS_PER_PEER_MAX)
            .map(|_| {
                streams
                    .admit(peer, INBOUND_STREAMS_PER_PEER_MAX)
                    .expect("under the limit")
            })
            .collect();
        assert!(
            streams.admit(peer, INBOUND_STREAMS_PER_PEER_MAX).is_none(),
            "over the limit"
        );
        assert!(
            streams.admit(other, INBOUND_STREAMS_PER_PEER_MAX).is_some(),
            "other peers are not affected"
        );
        slots.pop();
        assert_eq!(streams.open(&peer), INBOUND_STREAMS_PER_PEER_MAX - 1);
        assert!(
            streams.admit(peer, INBOUND_STREAMS_PER_PEER_MAX).is_some(),
            "a closed stream frees its slot"
        );
    }

    #[test]
    fn a_client_over_its_budget_is_refused_until_the_bucket_refills() {
        let budget = ClientBudget {
            messages_per_second: 100.0,
            burst_messages: 10.0,
        };
        let streams = InboundStreams::new(budget);
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let now = Instant::now();
        assert!(!streams.spend(&peer, 1, now), "no stream, no budget");
        let _slot = streams.admit(peer, 1).expect("first stream");
        assert!(streams.spend(&peer, 10, now), "the burst");
        assert!(!streams.spend(&peer, 1, now), "spent");
        assert!(
            streams.spend(&peer, 5, now + Duration::from_millis(50)),
            "refilled at 100 per second"
        );
        assert!(!streams.spend(&peer, 1, now + Duration::from_millis(50)));
        assert!(
            !streams.spend(&peer, 20, now + Duration::from_secs(10)),
            "never more than the burst at once"
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
            let (links, _inbound) = Links::new(
                &mut swarm,
                TransportKind::Stream,
                Arc::new(Gate::for_client([])),
                ClientBudget::default(),
                None,
            );
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

#[cfg(test)]
mod acceptance_tests {
    use super::*;
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{noise, tcp, yamux};

    /// A bare libp2p-stream peer on loopback, driven by its own task. It listens, or, given
    /// `dial`, connects to that address first. Returns its control, id and address.
    async fn peer(dial: Option<Multiaddr>) -> (libp2p_stream::Control, PeerId, Multiaddr) {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .expect("behaviour")
            .with_swarm_config(|config| {
                config.with_idle_connection_timeout(Duration::from_secs(60))
            })
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("address"))
            .expect("listen");
        let mut address = None;
        if let Some(target) = &dial {
            swarm.dial(target.clone()).expect("dial");
        }
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address: own, .. } if dial.is_none() => {
                    address = Some(own);
                    break;
                }
                SwarmEvent::NewListenAddr { address: own, .. } => address = Some(own),
                SwarmEvent::ConnectionEstablished { .. } if address.is_some() => break,
                _ => {}
            }
        }
        let control = swarm.behaviour().new_control();
        let id = *swarm.local_peer_id();
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        (control, id, address.expect("listening"))
    }

    /// Two connected peers; the second accepts `STREAM_PROTOCOL` and hands its streams to
    /// the returned receiver unanswered.
    async fn pair() -> (
        libp2p_stream::Control,
        PeerId,
        mpsc::UnboundedReceiver<libp2p::Stream>,
    ) {
        let (mut b, b_id, b_address) = peer(None).await;
        let mut incoming = b.accept(STREAM_PROTOCOL).expect("accept");
        let (streams, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((_, stream)) = incoming.next().await {
                if streams.send(stream).is_err() {
                    return;
                }
            }
        });
        let (a, _, _) = peer(Some(b_address)).await;
        (a, b_id, received)
    }

    #[tokio::test]
    async fn a_stream_dropped_before_it_was_accepted_is_opened_again() {
        let (mut a, b, mut streams) = pair().await;
        let opening = tokio::spawn(async move { open_accepted(&mut a, b, None).await });
        // The first stream is dropped unanswered, as libp2p-stream drops one arriving
        // while its accept queue is full; the second is accepted.
        drop(streams.recv().await.expect("first stream"));
        let mut second = streams.recv().await.expect("second stream");
        second.write_all(&[STREAM_ACCEPTED]).await.expect("accept");
        second.flush().await.expect("flush");
        let mut opened = match opening.await.expect("task") {
            Opened::Stream(stream) => stream,
            Opened::Refused(error) => panic!("refused: {error}"),
            Opened::Failed(error) => panic!("failed: {error}"),
        };
        // And what is written on it arrives.
        let message = Message::Refused {
            txn: TxnId {
                client: dtx_protocol::NodeId(3),
                sequence: 1,
            },
            reason: dtx_protocol::Refusal::RateLimited,
        };
        write_frame(&mut opened, std::slice::from_ref(&message), &mut Vec::new())
            .await
            .expect("write");
        match read_frame(&mut second).await {
            ReadOutcome::Frame(Frame::Messages(messages)) => assert_eq!(messages, vec![message]),
            other => panic!(
                "expected the frame, got {:?}",
                matches!(other, ReadOutcome::Closed)
            ),
        }
    }

    #[tokio::test]
    async fn a_peer_that_never_accepts_fails_after_every_attempt() {
        let (mut a, b, mut streams) = pair().await;
        let opening = tokio::spawn(async move { open_accepted(&mut a, b, None).await });
        for _ in 0..STREAM_OPEN_ATTEMPTS {
            drop(streams.recv().await.expect("a stream per attempt"));
        }
        assert!(matches!(opening.await.expect("task"), Opened::Failed(_)));
        assert!(streams.try_recv().is_err(), "no stream beyond the attempts");
    }
}
