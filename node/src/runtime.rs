//! The runtime glue the data node's event loop ([`crate::daemon`]) and the client's
//! ([`crate::client`]) share: protocol time from a monotonic clock, the protocol's next
//! timer as a tokio sleep, inbound request-response frames (acknowledged at once),
//! frames a peer rejected, and the bound on events taken in one pass.
//!
//! Both loops have the same shape: `select!` one event, then take whatever else is ready
//! without waiting ([`for_each_ready`]) so that the outputs of many events leave together,
//! then drain the protocol state machine.

use crate::network::{Behaviour, BehaviourEvent, Frame};
use dtx_protocol::{Message, Time};
use futures::{FutureExt, StreamExt};
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use std::time::{Duration, Instant};

/// Swarm events handled in one pass before the outputs are flushed (a loop bound).
pub const EVENTS_PER_PASS_MAX: usize = 256;

/// The node's monotonic clock: protocol time is microseconds since process start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    started: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            started: Instant::now(),
        }
    }

    /// Protocol time now.
    pub fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// The instant a protocol time corresponds to.
    pub fn instant(&self, time: Time) -> Instant {
        self.started + Duration::from_micros(time.as_micros())
    }

    /// The tokio deadline of a state machine's next timer (`poll_timeout`; `None`: no
    /// timer is due, the loop waits for other events).
    pub fn deadline(&self, time: Option<Time>) -> Option<tokio::time::Instant> {
        time.map(|time| tokio::time::Instant::from_std(self.instant(time)))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Sleeps until `deadline`, or forever without one (a `select!` arm that never fires).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Calls `take_one` (which handles one event that is ready now and says whether there
/// was one) until nothing is ready or [`EVENTS_PER_PASS_MAX`] events were taken.
pub(crate) fn for_each_ready(mut take_one: impl FnMut() -> bool) {
    for _ in 0..EVENTS_PER_PASS_MAX {
        if !take_one() {
            break;
        }
    }
}

/// A swarm event that is ready now, without waiting.
pub(crate) fn ready_swarm_event(
    swarm: &mut Swarm<Behaviour>,
) -> Option<SwarmEvent<BehaviourEvent>> {
    swarm.next().now_or_never().flatten()
}

/// The frame of an inbound request of the request-response transport, acknowledged at
/// once; failures are logged (the protocol's timers cover a lost frame).
pub(crate) fn take_request(
    swarm: &mut Swarm<Behaviour>,
    event: request_response::Event<Frame, ()>,
) -> Option<(PeerId, Frame)> {
    match event {
        request_response::Event::Message {
            peer,
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        } => {
            // The ack is empty; an error means the peer went away, which the protocol's
            // timers cover.
            let _ = swarm.behaviour_mut().messages.send_response(channel, ());
            Some((peer, request))
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            tracing::warn!(%peer, %error, "rejected an inbound frame");
            None
        }
        request_response::Event::OutboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "send failed; the protocol will retry");
            None
        }
        _ => None,
    }
}

/// The messages of a frame from `peer`; a frame the codec rejected is logged and yields
/// none.
pub(crate) fn frame_messages(peer: &PeerId, frame: Frame) -> Option<Vec<Message>> {
    match frame {
        Frame::Messages(messages) => Some(messages),
        Frame::Rejected(reason) => {
            tracing::warn!(%peer, %reason, "rejected an inbound frame");
            None
        }
    }
}
