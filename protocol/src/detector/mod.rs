//! Failure detection: gossip heartbeats (van Renesse, Minsky, Hayden 1998) read by a
//! phi-accrual detector per peer (Hayashibara et al. 2004).
//!
//! Every node keeps a heartbeat counter of its own, bumps it each `interval`, and gossips
//! the newest `(incarnation, counter)` it knows of every member to `fanout` random peers;
//! merging keeps the newest per member. The time between successive new counters of a
//! member is a sample of its heartbeat inter-arrival time; phi is how unlikely the current
//! silence is under the normal distribution of those samples: phi = -log10(1 - F(silence)).
//! A restarted node comes back with a higher incarnation, which resets its history so it
//! is trusted again at once.
//!
//! Heartbeats are not signed, so a relay could forge anyone's. Only what a member says of
//! itself (a heartbeat whose `node` is the authenticated sender) may change its role to
//! Draining or Left, raise its incarnation, or undo what relays said of it; a relayed copy
//! may only advance the counter within the incarnation already known, by a bounded step
//! (see [`FailureDetector::merge`]). A forged heartbeat can so neither mark a live member
//! as departed nor silence it for longer than until its own next heartbeat arrives. The
//! cost: a restart or a departure spreads only by the member's own gossip (each round
//! reaches `fanout` peers), not by relays; signed heartbeats would lift that.
//!
//! Suspicion never decides anything: it only makes recovery start sooner and keeps
//! suspected nodes out of new acceptor sets. A wrong suspicion costs an early recovery
//! ballot, never safety.
//!
//! The files of this module, one role each: this one holds the watcher
//! ([`FailureDetector`]: merging gossip, suspicion, the member map and its bounds) and its
//! configuration; `heartbeat` what a member says of itself and its wire form; `accrual`
//! the phi-accrual math and the detection bound it implies; `tests` the tests of all three.

mod accrual;
mod heartbeat;
#[cfg(test)]
mod tests;

pub use accrual::{detection_bound, phi, DETECTION_JITTER_INTERVALS, WARM_UP_SAMPLES};
pub use heartbeat::{
    Address, Heartbeat, HeartbeatDecodeError, Role, ADDRESSES_MAX, ADDRESS_BYTES_MAX,
};

use crate::rng::Rng;
use crate::types::{NodeId, Time};
use core::time::Duration;
use heartbeat::{add_address_hints, within_bounds};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Tuning of the detector.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// Time between a node's own heartbeats.
    pub interval: Duration,
    /// Peers each heartbeat round gossips to.
    pub fanout: usize,
    /// Suspect a peer once phi exceeds this (Cassandra uses 8).
    pub phi_threshold: f64,
    /// Inter-arrival samples kept per peer.
    pub samples_max: usize,
    /// Floor of the standard deviation used in phi (gossip jitter can look too regular).
    pub std_deviation_min: Duration,
    /// Slack added to the mean inter-arrival time (tolerated pauses).
    pub acceptable_pause: Duration,
    /// Most heartbeats in one gossip message.
    pub digest_max: usize,
    /// A client silent this long is forgotten (its heartbeat dropped, stale gossip of it
    /// ignored): every client process is a fresh member, so without this each `dtx put`
    /// would stay in every node's view, and in its suspected set, forever. Data nodes
    /// are never forgotten: a dead one stays suspected for the operator to see.
    pub forget_client_after: Duration,
}

impl DetectorConfig {
    #[allow(clippy::type_complexity)]
    fn identity(
        &self,
    ) -> (
        Duration,
        usize,
        u64,
        usize,
        Duration,
        Duration,
        usize,
        Duration,
    ) {
        (
            self.interval,
            self.fanout,
            self.phi_threshold.to_bits(),
            self.samples_max,
            self.std_deviation_min,
            self.acceptable_pause,
            self.digest_max,
            self.forget_client_after,
        )
    }
}

// By bits of the threshold, so that a node's whole state stays hashable (model checking).
impl PartialEq for DetectorConfig {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for DetectorConfig {}

impl core::hash::Hash for DetectorConfig {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            interval: Duration::from_millis(100),
            fanout: 3,
            phi_threshold: 8.0,
            samples_max: 100,
            std_deviation_min: Duration::from_millis(20),
            acceptable_pause: Duration::from_millis(50),
            digest_max: 512,
            forget_client_after: Duration::from_secs(60),
        }
    }
}

/// What this node knows of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PeerView {
    heartbeat: Heartbeat,
    last_arrival: Time,
    samples: VecDeque<u64>,
    /// The newest (incarnation, counter) the peer sent of itself, if it ever did: its own
    /// word, which relayed copies cannot outvote.
    own: Option<(u64, u64)>,
}

/// Peers a detector knows at most (members and clients). Beyond it, heartbeats of peers
/// not yet known are ignored until silent clients are forgotten.
pub const PEERS_MAX: usize = 65_536;

/// Counter steps a relayed copy may advance beyond what the elapsed time explains (a
/// member bumps its counter once per interval; relays lag, never lead, by more than
/// this).
pub const RELAYED_COUNTER_SLACK: u64 = 64;

/// The gossip-heartbeat failure detector of one member.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FailureDetector {
    config: DetectorConfig,
    me: Heartbeat,
    peers: BTreeMap<NodeId, PeerView>,
    /// Clients forgotten, with the last (incarnation, counter) heard: gossip no newer than
    /// that is a stale copy still travelling and must not bring them back. Oldest first,
    /// at most [`FORGOTTEN_MAX`].
    forgotten: BTreeMap<NodeId, (u64, u64)>,
    forgotten_order: VecDeque<NodeId>,
    rng: Rng,
    next_round: Time,
}

/// Forgotten clients remembered at most (beyond it the oldest tombstone goes; a stale
/// copy of that client's heartbeat could then come back once and be forgotten again).
pub const FORGOTTEN_MAX: usize = 4096;

impl FailureDetector {
    /// A detector for member `node` in its `incarnation`, first round at `now`.
    pub fn new(
        config: DetectorConfig,
        node: NodeId,
        role: Role,
        incarnation: u64,
        seed: u64,
        now: Time,
    ) -> FailureDetector {
        FailureDetector {
            config,
            me: Heartbeat {
                node,
                incarnation,
                counter: 0,
                role,
                load: 0,
                addresses: Arc::default(),
            },
            peers: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            forgotten_order: VecDeque::new(),
            rng: Rng::new(seed ^ node.0.rotate_left(7)),
            next_round: now,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// When the next heartbeat round is due.
    pub fn poll_timeout(&self) -> Time {
        self.next_round
    }

    /// Sets the role this member reports (a data node that starts draining or leaves says
    /// so). A change is announced at once: the next round is due now.
    pub fn set_role(&mut self, role: Role) {
        if self.me.role != role {
            self.me.role = role;
            self.next_round = Time::ZERO;
        }
    }

    /// The role this member reports.
    pub fn role(&self) -> Role {
        self.me.role
    }

    /// Members whose newest heartbeat says they are draining.
    pub fn draining(&self) -> BTreeSet<NodeId> {
        self.with_role(Role::Draining)
    }

    /// Members whose newest heartbeat says they are in acceptor quarantine.
    pub fn quarantined(&self) -> BTreeSet<NodeId> {
        self.with_role(Role::Quarantined)
    }

    /// The newest incarnation `node` told this member itself (never a relay's word).
    pub fn own_incarnation(&self, node: NodeId) -> Option<u64> {
        Some(self.peers.get(&node)?.own?.0)
    }

    /// Raises this member's incarnation to `incarnation` if that is higher (a wiped node
    /// learning how it was known before; see `node::fence`).
    pub fn raise_incarnation(&mut self, incarnation: u64) {
        self.me.incarnation = self.me.incarnation.max(incarnation);
    }

    /// Members whose newest heartbeat says they drained and left.
    pub fn left(&self) -> BTreeSet<NodeId> {
        self.with_role(Role::Left)
    }

    fn with_role(&self, role: Role) -> BTreeSet<NodeId> {
        self.peers
            .values()
            .filter(|view| view.heartbeat.role == role)
            .map(|view| view.heartbeat.node)
            .collect()
    }

    /// Sets the addresses this member reports (cut to [`ADDRESSES_MAX`] of at most
    /// [`ADDRESS_BYTES_MAX`] bytes).
    pub fn set_addresses(&mut self, addresses: Vec<Address>) {
        self.me.addresses = within_bounds(addresses);
    }

    /// The addresses in `node`'s newest heartbeat (empty if unknown).
    pub fn addresses(&self, node: NodeId) -> &[Address] {
        self.peers
            .get(&node)
            .map_or(&[], |view| &view.heartbeat.addresses[..])
    }

    /// Sets the load this member reports.
    pub fn set_load(&mut self, load: u32) {
        self.me.load = load;
    }

    /// A heartbeat round, if due: bumps this member's counter and returns the peers to
    /// gossip to (chosen at random among `candidates`) and the digest to send them.
    pub fn round(
        &mut self,
        now: Time,
        candidates: &[NodeId],
    ) -> Option<(Vec<NodeId>, Vec<Heartbeat>)> {
        if now < self.next_round {
            return None;
        }
        self.next_round = now.saturating_add(self.config.interval);
        self.me.counter += 1;
        self.forget_silent_clients(now);
        let mut targets: Vec<NodeId> = candidates
            .iter()
            .copied()
            .filter(|node| *node != self.me.node)
            .collect();
        self.rng.shuffle(&mut targets);
        targets.truncate(self.config.fanout);
        Some((targets, self.digest()))
    }

    /// Drops clients silent longer than `forget_client_after`, keeping a tombstone.
    fn forget_silent_clients(&mut self, now: Time) {
        let forget_after = self.config.forget_client_after;
        let silent: Vec<NodeId> = self
            .peers
            .values()
            .filter(|view| {
                view.heartbeat.role == Role::Client && now.since(view.last_arrival) > forget_after
            })
            .map(|view| view.heartbeat.node)
            .collect();
        for node in silent {
            let Some(view) = self.peers.remove(&node) else {
                continue;
            };
            let last = (view.heartbeat.incarnation, view.heartbeat.counter);
            if self.forgotten.insert(node, last).is_none() {
                self.forgotten_order.push_back(node);
            }
            while self.forgotten_order.len() > FORGOTTEN_MAX {
                if let Some(oldest) = self.forgotten_order.pop_front() {
                    self.forgotten.remove(&oldest);
                }
            }
        }
    }

    /// This member's heartbeat and the newest known of others (freshest first, bounded).
    pub fn digest(&self) -> Vec<Heartbeat> {
        let mut known: Vec<&PeerView> = self.peers.values().collect();
        known.sort_by_key(|view| core::cmp::Reverse(view.last_arrival));
        core::iter::once(&self.me)
            .chain(known.into_iter().map(|view| &view.heartbeat))
            .take(self.config.digest_max.max(1))
            .cloned()
            .collect()
    }

    /// Merges gossip that peer `from` (as authenticated by the transport) sent: the newest
    /// (incarnation, counter) per member wins; each new counter is an arrival sample for
    /// phi. What a heartbeat may change depends on who says it:
    ///
    /// * the member's own heartbeat (`heartbeat.node == from`) is taken whole if it is
    ///   newer than the last one it sent itself, even when relays claimed more: a forged
    ///   incarnation, counter or role learned from a relay is undone by the member's next
    ///   own heartbeat, and a restart (a higher own incarnation) refutes suspicion;
    /// * a relayed copy only advances the counter (and the load hint) within the
    ///   incarnation already known, by at most what the time since the last arrival
    ///   explains plus [`RELAYED_COUNTER_SLACK`]; its role and incarnation are ignored,
    ///   and of a higher incarnation only the addresses are kept, as dialing hints after
    ///   the member's own. It may introduce a member not yet known, as a data node or
    ///   client only (a relayed Draining or Left introduces nothing).
    pub fn merge(&mut self, now: Time, from: NodeId, heartbeats: &[Heartbeat]) {
        for heartbeat in heartbeats.iter().take(self.config.digest_max) {
            if heartbeat.node == self.me.node {
                // Someone still remembers a former incarnation of this node: nothing to do,
                // the current incarnation is higher and will overwrite it as it spreads.
                continue;
            }
            let own = heartbeat.node == from;
            if self.peers.contains_key(&heartbeat.node) {
                if own {
                    self.merge_own(now, heartbeat);
                } else {
                    self.merge_relayed(now, heartbeat);
                }
            } else {
                self.introduce(now, own, heartbeat);
            }
        }
    }

    /// A known member's own heartbeat.
    fn merge_own(&mut self, now: Time, heartbeat: &Heartbeat) {
        let Some(view) = self.peers.get_mut(&heartbeat.node) else {
            return;
        };
        let new = (heartbeat.incarnation, heartbeat.counter);
        if view.own.is_some_and(|own| new <= own) {
            return;
        }
        let old = (view.heartbeat.incarnation, view.heartbeat.counter);
        if heartbeat.incarnation != view.heartbeat.incarnation {
            // Restarted (or a relayed incarnation undone): the old silence says nothing.
            view.samples.clear();
        } else if new > old {
            push_sample(view, now, self.config.samples_max);
        }
        view.own = Some(new);
        view.heartbeat = heartbeat.clone();
        view.last_arrival = now;
    }

    /// A relayed copy of a known member's heartbeat.
    fn merge_relayed(&mut self, now: Time, heartbeat: &Heartbeat) {
        let interval_micros = self.config.interval.as_micros().max(1);
        let Some(view) = self.peers.get_mut(&heartbeat.node) else {
            return;
        };
        if heartbeat.incarnation > view.heartbeat.incarnation {
            // A restart that only relays report yet. Its addresses are kept as dialing
            // hints after the member's own (the transport authenticates whoever answers,
            // so a forged one costs a failed dial), so that a member that moved can be
            // reached and tell its new incarnation itself.
            add_address_hints(&mut view.heartbeat, &heartbeat.addresses);
            return;
        }
        if heartbeat.incarnation != view.heartbeat.incarnation
            || heartbeat.counter <= view.heartbeat.counter
        {
            return;
        }
        let elapsed_intervals = now.since(view.last_arrival).as_micros() / interval_micros;
        let explained = u64::try_from(elapsed_intervals.saturating_mul(2))
            .unwrap_or(u64::MAX)
            .saturating_add(RELAYED_COUNTER_SLACK);
        if heartbeat.counter - view.heartbeat.counter > explained {
            return;
        }
        push_sample(view, now, self.config.samples_max);
        view.heartbeat.counter = heartbeat.counter;
        view.heartbeat.load = heartbeat.load;
        view.last_arrival = now;
    }

    /// A heartbeat of a member not known (or forgotten) yet.
    fn introduce(&mut self, now: Time, own: bool, heartbeat: &Heartbeat) {
        if !own && !matches!(heartbeat.role, Role::DataNode | Role::Client) {
            return;
        }
        if self.peers.len() >= PEERS_MAX {
            return;
        }
        if let Some(last) = self.forgotten.get(&heartbeat.node) {
            if (heartbeat.incarnation, heartbeat.counter) <= *last {
                // A stale copy of a forgotten client's heartbeat.
                return;
            }
            // It is alive after all (a new counter): know it again.
            self.forgotten.remove(&heartbeat.node);
            self.forgotten_order.retain(|node| *node != heartbeat.node);
        }
        self.peers.insert(
            heartbeat.node,
            PeerView {
                heartbeat: heartbeat.clone(),
                last_arrival: now,
                samples: VecDeque::new(),
                own: own.then_some((heartbeat.incarnation, heartbeat.counter)),
            },
        );
    }

    /// Arrival gap assumed, in heartbeat intervals, until a peer has [`WARM_UP_SAMPLES`]:
    /// the rounds a counter needs to spread to every member by gossip with this fanout,
    /// log(members) / log(1 + fanout), and at least 2 (one direct hop plus jitter).
    pub fn first_estimate_intervals(&self) -> f64 {
        let members = (self.peers.len() + 1) as f64;
        let spread = members.ln() / (1.0 + self.config.fanout.max(1) as f64).ln();
        spread.ceil().max(2.0)
    }

    /// Phi of `node` now (None if never heard of).
    pub fn phi(&self, now: Time, node: NodeId) -> Option<f64> {
        let view = self.peers.get(&node)?;
        let silence = now.since(view.last_arrival).as_micros() as f64;
        let interval = self.config.interval.as_micros() as f64;
        let (mean, deviation) = if view.samples.len() < WARM_UP_SAMPLES {
            // Too few samples: a conservative first estimate (as Akka's
            // first-heartbeat-estimate) from the gossip spread time, since in a large
            // cluster a member's counters arrive over gossip paths of varying length and
            // a few gaps say little; a member that dies this early is suspected later,
            // never a live one that is merely far away.
            let estimate = interval * self.first_estimate_intervals();
            (estimate, estimate / 4.0)
        } else {
            let count = view.samples.len() as f64;
            let mean = view
                .samples
                .iter()
                .map(|sample| *sample as f64)
                .sum::<f64>()
                / count;
            let variance = view
                .samples
                .iter()
                .map(|sample| {
                    let difference = *sample as f64 - mean;
                    difference * difference
                })
                .sum::<f64>()
                / count;
            (mean, variance.sqrt())
        };
        let mean = mean + self.config.acceptable_pause.as_micros() as f64;
        let deviation = deviation.max(self.config.std_deviation_min.as_micros() as f64);
        Some(phi(silence, mean, deviation))
    }

    /// True if `node` is suspected now. A member that said it left is never suspected:
    /// its silence is the expected one.
    pub fn is_suspected(&self, now: Time, node: NodeId) -> bool {
        let left = self
            .peers
            .get(&node)
            .is_some_and(|view| view.heartbeat.role == Role::Left);
        !left
            && self
                .phi(now, node)
                .is_some_and(|phi| phi > self.config.phi_threshold)
    }

    /// Every suspected member.
    pub fn suspected(&self, now: Time) -> BTreeSet<NodeId> {
        self.peers
            .keys()
            .copied()
            .filter(|node| self.is_suspected(now, *node))
            .collect()
    }

    /// What this member knows: each peer's last heartbeat and its phi now.
    pub fn view(&self, now: Time) -> Vec<(Heartbeat, f64)> {
        self.peers
            .values()
            .map(|view| {
                (
                    view.heartbeat.clone(),
                    self.phi(now, view.heartbeat.node).unwrap_or(0.0),
                )
            })
            .collect()
    }
}

/// Records the gap since the peer's last arrival as a phi sample.
fn push_sample(view: &mut PeerView, now: Time, samples_max: usize) {
    let gap = u64::try_from(now.since(view.last_arrival).as_micros()).unwrap_or(u64::MAX);
    view.samples.push_back(gap);
    while view.samples.len() > samples_max {
        view.samples.pop_front();
    }
}
