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

use crate::rng::Rng;
use crate::types::{NodeId, Time};
use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
fn within_bounds(addresses: Vec<Address>) -> Arc<[Address]> {
    addresses
        .into_iter()
        .filter(|address| address.0.len() <= ADDRESS_BYTES_MAX)
        .take(ADDRESSES_MAX)
        .collect()
}

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

/// Appends `hints` not already in `heartbeat`'s addresses, up to [`ADDRESSES_MAX`].
fn add_address_hints(heartbeat: &mut Heartbeat, hints: &[Address]) {
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

/// Records the gap since the peer's last arrival as a phi sample.
fn push_sample(view: &mut PeerView, now: Time, samples_max: usize) {
    let gap = u64::try_from(now.since(view.last_arrival).as_micros()).unwrap_or(u64::MAX);
    view.samples.push_back(gap);
    while view.samples.len() > samples_max {
        view.samples.pop_front();
    }
}

/// Arrival gaps needed before phi uses their mean and deviation.
pub const WARM_UP_SAMPLES: usize = 8;

/// phi = -log10(P(a heartbeat arrives later than `silence`)), with the normal CDF replaced
/// by its logistic approximation (as in Akka and Cassandra), which stays finite far out in
/// the tail.
pub fn phi(silence: f64, mean: f64, deviation: f64) -> f64 {
    let y = (silence - mean) / deviation;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let later = if silence > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    -(later.max(f64::MIN_POSITIVE)).log10()
}

/// The inter-arrival jitter, as a multiple of the heartbeat interval, that
/// [`detection_bound`] budgets for: heartbeats may arrive with a standard deviation of up
/// to one interval (scheduling delays on a loaded machine, gossip paths of different
/// lengths) and the bound still holds.
pub const DETECTION_JITTER_INTERVALS: f64 = 1.0;

/// The crash-to-suspicion bound implied by a detector configuration: the silence after
/// which phi exceeds the threshold for a member whose heartbeats arrive every `interval`
/// with a standard deviation of [`DETECTION_JITTER_INTERVALS`] intervals (plus the
/// acceptable pause), plus one interval, since an observer evaluates suspicion once per
/// heartbeat round. It applies once the observer has heard enough arrivals to be past the
/// detector's warm-up ([`WARM_UP_SAMPLES`]); before that phi uses a
/// deliberately slow first estimate. With the defaults (100 ms, threshold 8, pause 50 ms): 773 ms. Steadier
/// arrivals are suspected sooner (about 300 ms on an idle machine); a member whose
/// arrivals jitter more than that can take longer.
pub fn detection_bound(config: &DetectorConfig) -> Duration {
    let interval_ms = config.interval.as_secs_f64() * 1000.0;
    let mean_ms = interval_ms + config.acceptable_pause.as_secs_f64() * 1000.0;
    let deviation_ms = (interval_ms * DETECTION_JITTER_INTERVALS)
        .max(config.std_deviation_min.as_secs_f64() * 1000.0)
        .max(0.001);
    let mut silence_ms = mean_ms;
    // phi grows monotonically with silence: step until it crosses (bounded loop).
    for _ in 0..10_000_000 {
        if phi(silence_ms, mean_ms, deviation_ms) > config.phi_threshold {
            break;
        }
        silence_ms += 1.0;
    }
    Duration::from_secs_f64((silence_ms + interval_ms) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(node: u64) -> FailureDetector {
        let config = DetectorConfig {
            interval: Duration::from_millis(10),
            std_deviation_min: Duration::from_millis(2),
            acceptable_pause: Duration::from_millis(5),
            ..DetectorConfig::default()
        };
        FailureDetector::new(config, NodeId(node), Role::DataNode, 1, 7, Time::ZERO)
    }

    fn beat(node: u64, incarnation: u64, counter: u64) -> Heartbeat {
        Heartbeat {
            node: NodeId(node),
            incarnation,
            counter,
            role: Role::DataNode,
            load: 0,
            addresses: Arc::default(),
        }
    }

    #[test]
    fn phi_grows_with_silence() {
        assert!(phi(10.0, 10.0, 2.0) < 1.0);
        assert!(
            phi(20.0, 10.0, 2.0) > 7.0,
            "five deviations late is phi about 7.3"
        );
        assert!(phi(30.0, 10.0, 2.0) > phi(20.0, 10.0, 2.0));
    }

    #[test]
    fn a_steady_peer_is_trusted_and_a_silent_one_suspected() {
        let mut watcher = detector(1);
        let mut now = Time::ZERO;
        for counter in 1..=50 {
            now = Time(counter * 10_000);
            watcher.merge(now, NodeId(2), &[beat(2, 1, counter)]);
        }
        assert!(!watcher.is_suspected(now.saturating_add(Duration::from_millis(12)), NodeId(2)));
        assert!(watcher.is_suspected(now.saturating_add(Duration::from_millis(60)), NodeId(2)));
    }

    /// Before a peer has enough samples, phi assumes the gossip spread time of the
    /// cluster: a far member of a large cluster is not suspected after a few intervals of
    /// silence, and a small cluster still suspects a silent member within a second.
    #[test]
    fn warm_up_assumes_the_gossip_spread_time_of_the_cluster() {
        let mut small = detector(1);
        small.merge(
            Time(10_000),
            NodeId(2),
            &(2..=5).map(|node| beat(node, 1, 1)).collect::<Vec<_>>(),
        );
        assert_eq!(small.first_estimate_intervals(), 2.0);
        let mut large = detector(1);
        large.merge(
            Time(10_000),
            NodeId(2),
            &(2..=1000).map(|node| beat(node, 1, 1)).collect::<Vec<_>>(),
        );
        assert_eq!(large.first_estimate_intervals(), 5.0);
        // Four intervals of silence after one heartbeat: normal in a large cluster.
        let silence = Time(10_000 + 40_000);
        assert!(!large.is_suspected(silence, NodeId(700)));
        assert!(small.is_suspected(Time(10_000 + 100_000), NodeId(3)));
        // Once warmed up, the measured gaps take over.
        let mut now = Time(10_000);
        for counter in 2..=(WARM_UP_SAMPLES as u64 + 2) {
            now = Time(counter * 10_000);
            large.merge(now, NodeId(700), &[beat(700, 1, counter)]);
        }
        assert!(large.is_suspected(now.saturating_add(Duration::from_millis(60)), NodeId(700)));
    }

    #[test]
    fn a_restarted_peer_refutes_suspicion_with_a_new_incarnation() {
        let mut watcher = detector(1);
        for counter in 1..=20 {
            watcher.merge(Time(counter * 10_000), NodeId(2), &[beat(2, 1, counter)]);
        }
        let later = Time(1_000_000);
        assert!(watcher.is_suspected(later, NodeId(2)));
        // An older counter of the old incarnation changes nothing; the new incarnation does.
        watcher.merge(later, NodeId(2), &[beat(2, 1, 3)]);
        assert!(watcher.is_suspected(later, NodeId(2)));
        watcher.merge(later, NodeId(2), &[beat(2, 2, 1)]);
        assert!(!watcher.is_suspected(later, NodeId(2)));
    }

    #[test]
    fn rounds_bump_the_counter_and_pick_fanout_peers() {
        let mut node = detector(1);
        let peers: Vec<NodeId> = (1..=10).map(NodeId).collect();
        let (targets, digest) = node.round(Time::ZERO, &peers).unwrap();
        assert_eq!(targets.len(), 3);
        assert!(!targets.contains(&NodeId(1)));
        assert_eq!(digest[0].counter, 1);
        assert!(node.round(Time(1), &peers).is_none(), "not due yet");
        let (_, digest) = node.round(Time(10_000), &peers).unwrap();
        assert_eq!(digest[0].counter, 2);
    }

    /// Every client process is a fresh member: one silent past `forget_client_after` is
    /// dropped (no longer suspected, not in the view), stale gossip of it does not bring it
    /// back, a genuinely new heartbeat does; a silent data node stays suspected.
    #[test]
    fn silent_clients_are_forgotten_and_stay_forgotten_but_data_nodes_do_not() {
        let mut node = detector(1);
        let client = |counter| Heartbeat {
            role: Role::Client,
            ..beat(7, 1, counter)
        };
        let ms = |millis: u64| Time(millis * 1_000);
        for counter in 1..=20 {
            node.merge(
                ms(counter * 10),
                NodeId(2),
                &[client(counter), beat(2, 1, counter)],
            );
        }
        assert!(node.suspected(ms(1_000)).contains(&NodeId(7)));
        assert!(node.suspected(ms(1_000)).contains(&NodeId(2)));
        // Past the forget period (60 s by default), at the next round.
        let later = ms(200 + 60_000 + 10);
        node.round(later, &[NodeId(2)]);
        let suspected = node.suspected(later);
        assert!(!suspected.contains(&NodeId(7)), "the client is forgotten");
        assert!(
            suspected.contains(&NodeId(2)),
            "a dead data node stays suspected"
        );
        assert!(node
            .view(later)
            .iter()
            .all(|(beat, _)| beat.node != NodeId(7)));
        // Another member still gossips the client's last heartbeat: ignored.
        node.merge(later, NodeId(2), &[client(20), client(19)]);
        assert!(
            node.phi(later, NodeId(7)).is_none(),
            "a stale copy is not a new member"
        );
        // A new counter: the client is alive after all.
        node.merge(later, NodeId(2), &[client(21)]);
        assert!(node.phi(later, NodeId(7)).is_some());
    }

    /// A member's addresses travel with its counters, also relayed by others, so a member
    /// that moved is found by those it never heard directly; gossip beyond the bounds is
    /// cut.
    #[test]
    fn addresses_spread_with_heartbeats_and_are_bounded() {
        let mut moved = detector(1);
        moved.set_addresses(vec![Address(b"old".to_vec())]);
        let mut relay = detector(2);
        let mut far = detector(3);
        let (_, digest) = moved.round(Time(0), &[NodeId(2)]).unwrap();
        relay.merge(Time(0), NodeId(1), &digest);
        far.merge(Time(0), NodeId(2), &relay.digest());
        assert_eq!(far.addresses(NodeId(1)), &[Address(b"old".to_vec())]);
        // Restarted on a new address: the newer heartbeat replaces the old address.
        let mut restarted = FailureDetector::new(
            moved.config().clone(),
            NodeId(1),
            Role::DataNode,
            2,
            7,
            Time(0),
        );
        restarted.set_addresses(vec![Address(b"new".to_vec())]);
        let (_, digest) = restarted.round(Time(10_000), &[NodeId(2)]).unwrap();
        relay.merge(Time(10_000), NodeId(1), &digest);
        assert_eq!(relay.addresses(NodeId(1)), &[Address(b"new".to_vec())]);
        // Relayed, the restart is only a hint: the new address is added to dial, the
        // incarnation waits for the member's own word, which then replaces the old.
        far.merge(Time(10_000), NodeId(2), &relay.digest());
        assert_eq!(
            far.addresses(NodeId(1)),
            &[Address(b"old".to_vec()), Address(b"new".to_vec())]
        );
        far.merge(Time(10_000), NodeId(1), &digest);
        assert_eq!(far.addresses(NodeId(1)), &[Address(b"new".to_vec())]);
        assert!(far.addresses(NodeId(9)).is_empty());
        // A heartbeat with too many or too long addresses is cut when decoded, not
        // refused.
        let mut bloated = beat(4, 1, 1);
        bloated.addresses = core::iter::once(Address(vec![0; ADDRESS_BYTES_MAX + 1]))
            .chain((0..10).map(|index| Address(vec![index; 8])))
            .collect();
        let frame = crate::encode(&[crate::Message::Gossip {
            heartbeats: vec![bloated],
        }])
        .unwrap();
        let Some(crate::Message::Gossip { heartbeats }) =
            crate::decode(&frame).unwrap().into_iter().next()
        else {
            panic!("a gossip message decodes as one");
        };
        far.merge(Time(20_000), NodeId(4), &heartbeats);
        let kept = far.addresses(NodeId(4));
        assert_eq!(kept.len(), ADDRESSES_MAX);
        assert!(kept.iter().all(|address| address.0.len() == 8));
    }

    /// A relay (any member holding a key) forges a heartbeat of a live member with the
    /// largest incarnation and counter and role Left: nothing that matters changes (the
    /// member is not Left, its own heartbeats still count, it is not suspected), and a
    /// restart (a higher own incarnation) still refutes suspicion.
    #[test]
    fn a_relayed_forgery_cannot_mark_a_live_member_left_or_silence_it() {
        let mut watcher = detector(1);
        let mut now = Time::ZERO;
        for counter in 1..=20 {
            now = Time(counter * 10_000);
            watcher.merge(now, NodeId(2), &[beat(2, 1, counter)]);
        }
        let forged = Heartbeat {
            role: Role::Left,
            ..beat(2, u64::MAX, u64::MAX)
        };
        watcher.merge(now, NodeId(3), &[forged]);
        let forged_counter = Heartbeat {
            role: Role::Left,
            ..beat(2, 1, u64::MAX)
        };
        watcher.merge(now, NodeId(3), &[forged_counter]);
        assert!(watcher.left().is_empty());
        // The member's own heartbeats keep arriving and counting.
        for counter in 21..=40 {
            now = Time(counter * 10_000);
            watcher.merge(now, NodeId(2), &[beat(2, 1, counter)]);
        }
        let view = watcher.view(now);
        assert_eq!(view[0].0.incarnation, 1);
        assert_eq!(view[0].0.counter, 40);
        assert!(!watcher.is_suspected(now.saturating_add(Duration::from_millis(12)), NodeId(2)));
        // Relayed honest copies still advance the counter, by bounded steps only.
        watcher.merge(now, NodeId(3), &[beat(2, 1, 41)]);
        watcher.merge(
            now,
            NodeId(3),
            &[beat(2, 1, 41 + RELAYED_COUNTER_SLACK + 1)],
        );
        assert_eq!(watcher.view(now)[0].0.counter, 41);
        // Silent, then restarted: the new own incarnation refutes suspicion.
        let later = Time(2_000_000);
        assert!(watcher.is_suspected(later, NodeId(2)));
        watcher.merge(later, NodeId(3), &[beat(2, 2, 1)]);
        assert!(
            watcher.is_suspected(later, NodeId(2)),
            "a relay cannot restart it"
        );
        watcher.merge(later, NodeId(2), &[beat(2, 2, 1)]);
        assert!(!watcher.is_suspected(later, NodeId(2)));
        // Its own Left is believed.
        let left = Heartbeat {
            role: Role::Left,
            ..beat(2, 2, 2)
        };
        watcher.merge(later, NodeId(2), &[left]);
        assert!(watcher.left().contains(&NodeId(2)));
    }

    /// A member first heard through a relay may be introduced with a forged incarnation;
    /// its own next heartbeat undoes it. A relayed Left or Draining introduces nothing.
    #[test]
    fn a_forged_introduction_is_undone_by_the_members_own_heartbeat() {
        let mut watcher = detector(1);
        watcher.merge(Time(10_000), NodeId(3), &[beat(2, u64::MAX, u64::MAX)]);
        watcher.merge(Time(20_000), NodeId(2), &[beat(2, 1, 5)]);
        let view = watcher.view(Time(20_000));
        assert_eq!((view[0].0.incarnation, view[0].0.counter), (1, 5));
        for role in [Role::Left, Role::Draining] {
            let relayed = Heartbeat {
                role,
                ..beat(4, 1, 1)
            };
            watcher.merge(Time(20_000), NodeId(3), &[relayed]);
            assert!(watcher.phi(Time(20_000), NodeId(4)).is_none(), "{role:?}");
        }
        // An older own heartbeat than the member already sent changes nothing.
        watcher.merge(Time(30_000), NodeId(2), &[beat(2, 1, 4)]);
        assert_eq!(watcher.view(Time(30_000))[0].0.counter, 5);
    }

    /// Relays cannot grow the member map without bound.
    #[test]
    fn relays_introduce_at_most_peers_max_members() {
        let mut watcher = detector(1);
        let mut next = 2;
        while next < PEERS_MAX as u64 + 1_000 {
            let digest: Vec<Heartbeat> = (next..next + 500).map(|node| beat(node, 1, 1)).collect();
            watcher.merge(Time(10_000), NodeId(2), &digest);
            next += 500;
        }
        assert_eq!(watcher.view(Time(10_000)).len(), PEERS_MAX);
    }

    /// Heartbeats travel as compact arrays; every role survives the trip, an unknown role
    /// code is a decode error, not a panic.
    #[test]
    fn heartbeats_encode_compactly_and_round_trip() {
        for role in [
            Role::DataNode,
            Role::Client,
            Role::Draining,
            Role::Left,
            Role::Quarantined,
        ] {
            let heartbeat = Heartbeat {
                role,
                addresses: vec![Address(vec![4, 127, 0, 0, 1, 6, 156, 65])].into(),
                ..beat(3, 2, 1_000)
            };
            let message = crate::Message::Gossip {
                heartbeats: vec![heartbeat.clone()],
            };
            let bytes = crate::encode(std::slice::from_ref(&message)).unwrap();
            assert_eq!(crate::decode(&bytes).unwrap(), vec![message]);
            let mut alone = Vec::new();
            ciborium::into_writer(&heartbeat, &mut alone).unwrap();
            assert!(alone.len() <= 20, "{} bytes", alone.len());
        }
        let mut unknown = Vec::new();
        ciborium::into_writer(
            &(3u64, 2u64, 1u64, 9u8, 0u32, Vec::<Address>::new()),
            &mut unknown,
        )
        .unwrap();
        assert!(ciborium::from_reader::<Heartbeat, _>(unknown.as_slice()).is_err());
    }

    #[test]
    fn the_default_detection_bound_is_the_phi_crossing_plus_one_round() {
        let bound = detection_bound(&DetectorConfig::default());
        assert!(
            (Duration::from_millis(760)..=Duration::from_millis(790)).contains(&bound),
            "{bound:?}"
        );
        let slower = DetectorConfig {
            interval: Duration::from_millis(200),
            ..DetectorConfig::default()
        };
        assert!(detection_bound(&slower) > bound);
    }
}
