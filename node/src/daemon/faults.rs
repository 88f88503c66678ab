//! The daemon's side of fault injection: the plan in force (see [`crate::faults`]), the
//! seeded generator of its decisions, the queue of messages held back by delay rules and
//! the counters.
//!
//! Inert unless the node was started with `--fault-injection`: then, and while the plan
//! has rules, [`Faults::active`] is true and the event loop passes every message it
//! receives or sends through [`Faults::filter`]. Otherwise each hook is one test of that
//! bool: no generator draw, no timer (the queue is empty, so [`Faults::next_due`] is
//! `None`).
//!
//! A dropped inbound message is simply never handed to the protocol, as if lost on the
//! wire; a dropped outbound one is never handed to the transport. Delayed messages wait
//! in a queue ordered by due time ([`FAULT_DELAYED_MESSAGES_MAX`] at most; past it a
//! message is dropped and counted), released by one timer in the event loop's `select!`.

use crate::config::ClusterConfig;
use crate::faults::{
    Direction, FaultCounters, FaultPlan, FaultPlanError, FaultReport, PeerSelector, Traffic,
    FAULT_DELAYED_MESSAGES_MAX,
};
use dtx_protocol::{Message, NodeId, Rng};
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where a message crosses this node's edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::daemon) enum Crossing {
    /// Received from `peer`.
    In {
        /// The sender.
        peer: PeerId,
    },
    /// To be sent to `peer`, protocol node `to`.
    Out {
        /// The receiver.
        peer: PeerId,
        /// Its protocol id.
        to: NodeId,
    },
}

impl Crossing {
    fn peer(&self) -> PeerId {
        match self {
            Crossing::In { peer } | Crossing::Out { peer, .. } => *peer,
        }
    }

    fn direction(&self) -> Direction {
        match self {
            Crossing::In { .. } => Direction::In,
            Crossing::Out { .. } => Direction::Out,
        }
    }
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::daemon) enum Fate {
    /// Lost.
    Dropped,
    /// Delivered `copies` times (1 or 2) after `delay`.
    Delivered {
        /// 1, or 2 for a duplicate.
        copies: u8,
        /// Zero: now.
        delay: Duration,
    },
}

/// Messages held back by a delay rule, released together when due.
#[derive(Debug)]
pub(in crate::daemon) struct Delayed {
    /// Where they cross.
    pub(in crate::daemon) crossing: Crossing,
    /// The messages (copies included).
    pub(in crate::daemon) messages: Vec<Message>,
}

/// A rule's peer selector with node names resolved to peer ids.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ResolvedPeer {
    Node(PeerId),
    Clients,
    Every,
}

/// The fault-injection state the event loop owns.
#[derive(Debug)]
pub(in crate::daemon) struct Faults {
    /// Started with `--fault-injection`.
    enabled: bool,
    /// Enabled and the plan has rules: the one bool every hook tests.
    pub(in crate::daemon) active: bool,
    plan: FaultPlan,
    /// The plan's selectors, resolved against the config when the plan was installed.
    peers: Vec<ResolvedPeer>,
    rng: Rng,
    /// Held-back messages by (due time, arrival order).
    delayed: BTreeMap<(Instant, u64), Delayed>,
    /// Messages in `delayed` (bounded by [`FAULT_DELAYED_MESSAGES_MAX`]).
    delayed_messages: usize,
    sequence: u64,
    counters: FaultCounters,
}

impl Faults {
    /// No faults; plans are taken only if `enabled` (the `--fault-injection` flag).
    pub(in crate::daemon) fn new(enabled: bool) -> Faults {
        Faults {
            enabled,
            active: false,
            plan: FaultPlan::healed(),
            peers: Vec::new(),
            rng: Rng::new(0),
            delayed: BTreeMap::new(),
            delayed_messages: 0,
            sequence: 0,
            counters: FaultCounters::default(),
        }
    }

    /// True if the node was started with `--fault-injection`.
    pub(in crate::daemon) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Puts `plan` in force (after validating it against `config`), with a generator
    /// seeded by its seed. Messages already held back stay held until due.
    pub(in crate::daemon) fn install(
        &mut self,
        plan: FaultPlan,
        config: &ClusterConfig,
    ) -> Result<(), FaultPlanError> {
        if !self.enabled {
            return Err(FaultPlanError::FaultInjectionOff);
        }
        plan.validate(config)?;
        let mut peers = Vec::with_capacity(plan.rules.len());
        for (index, rule) in plan.rules.iter().enumerate() {
            peers.push(match &rule.peer {
                PeerSelector::Node(name) => match config.node_named(name) {
                    Some(node) => ResolvedPeer::Node(node.peer_id),
                    None => {
                        return Err(FaultPlanError::UnknownNode {
                            rule: index,
                            name: name.clone(),
                        })
                    }
                },
                PeerSelector::Clients => ResolvedPeer::Clients,
                PeerSelector::Every => ResolvedPeer::Every,
            });
        }
        self.rng = Rng::new(plan.seed);
        self.peers = peers;
        self.active = !plan.rules.is_empty();
        self.plan = plan;
        Ok(())
    }

    /// The plan in force, the counters and how many messages are held back.
    pub(in crate::daemon) fn report(&self) -> FaultReport {
        FaultReport {
            plan: self.plan.clone(),
            counters: self.counters.clone(),
            delayed_now: self.delayed_messages,
        }
    }

    /// The counters so far.
    pub(in crate::daemon) fn counters(&self) -> &FaultCounters {
        &self.counters
    }

    /// The fate of one message of kind `traffic` crossing at `direction` with `peer`
    /// (`member`: the peer is a data node): the first rule that matches decides; no rule,
    /// no change. Draws from the generator only for probabilities strictly between 0 and
    /// 1 and for a jitter.
    pub(in crate::daemon) fn fate(
        &mut self,
        direction: Direction,
        peer: &PeerId,
        member: bool,
        traffic: Traffic,
    ) -> Fate {
        let untouched = Fate::Delivered {
            copies: 1,
            delay: Duration::ZERO,
        };
        let Some(index) = self
            .plan
            .rules
            .iter()
            .zip(&self.peers)
            .position(|(rule, selector)| {
                let peer_matches = match selector {
                    ResolvedPeer::Node(id) => id == peer,
                    ResolvedPeer::Clients => !member,
                    ResolvedPeer::Every => true,
                };
                peer_matches && rule.applies(direction, traffic)
            })
        else {
            return untouched;
        };
        let rule = &self.plan.rules[index];
        let (drop, duplicate) = (rule.drop, rule.duplicate);
        let (delay_ms, jitter_ms) = (rule.delay_ms, rule.jitter_ms);
        if chance(&mut self.rng, drop) {
            return Fate::Dropped;
        }
        let jitter = if jitter_ms > 0 {
            self.rng.between(0, jitter_ms)
        } else {
            0
        };
        Fate::Delivered {
            copies: if chance(&mut self.rng, duplicate) {
                2
            } else {
                1
            },
            delay: Duration::from_millis(delay_ms.saturating_add(jitter)),
        }
    }

    /// Applies the plan to `messages` crossing at `crossing` (`member`: the peer is a
    /// data node); returns those to deliver now (duplicates included). The rest are
    /// dropped or held back until due (see [`Faults::release`]), and counted.
    pub(in crate::daemon) fn filter(
        &mut self,
        now: Instant,
        crossing: Crossing,
        member: bool,
        messages: Vec<Message>,
    ) -> Vec<Message> {
        let direction = crossing.direction();
        let peer = crossing.peer();
        let mut now_messages = Vec::with_capacity(messages.len());
        let mut later: BTreeMap<Duration, Vec<Message>> = BTreeMap::new();
        for message in messages {
            let traffic = match message {
                Message::Gossip { .. } => Traffic::Heartbeats,
                _ => Traffic::Protocol,
            };
            match self.fate(direction, &peer, member, traffic) {
                Fate::Dropped => self.count_dropped(direction),
                Fate::Delivered { copies, delay } => {
                    if copies > 1 {
                        self.count(
                            direction,
                            |counters| &mut counters.duplicated_in,
                            |counters| &mut counters.duplicated_out,
                        );
                    }
                    let target = if delay.is_zero() {
                        &mut now_messages
                    } else {
                        later.entry(delay).or_default()
                    };
                    if copies > 1 {
                        target.push(message.clone());
                    }
                    target.push(message);
                }
            }
        }
        for (delay, messages) in later {
            self.hold(now + delay, crossing, messages);
        }
        now_messages
    }

    /// Queues `messages` until `due`, within the bound; over it they are dropped.
    fn hold(&mut self, due: Instant, crossing: Crossing, messages: Vec<Message>) {
        let direction = crossing.direction();
        let room = FAULT_DELAYED_MESSAGES_MAX.saturating_sub(self.delayed_messages);
        if messages.len() > room {
            for _ in 0..messages.len() {
                self.count_dropped(direction);
            }
            self.counters.delay_queue_full = self
                .counters
                .delay_queue_full
                .saturating_add(messages.len() as u64);
            return;
        }
        for _ in 0..messages.len() {
            self.count(
                direction,
                |counters| &mut counters.delayed_in,
                |counters| &mut counters.delayed_out,
            );
        }
        self.delayed_messages += messages.len();
        self.sequence = self.sequence.wrapping_add(1);
        self.delayed
            .insert((due, self.sequence), Delayed { crossing, messages });
    }

    /// When the first held-back message is due (`None`: nothing held, no timer).
    pub(in crate::daemon) fn next_due(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(due, _)| *due)
    }

    /// Takes the held-back messages due at `now`, oldest due first.
    pub(in crate::daemon) fn release(&mut self, now: Instant) -> Vec<Delayed> {
        let mut released = Vec::new();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let delayed = entry.remove();
            self.delayed_messages = self.delayed_messages.saturating_sub(delayed.messages.len());
            released.push(delayed);
        }
        released
    }

    fn count_dropped(&mut self, direction: Direction) {
        self.count(
            direction,
            |counters| &mut counters.dropped_in,
            |counters| &mut counters.dropped_out,
        );
    }

    fn count(
        &mut self,
        direction: Direction,
        inbound: impl FnOnce(&mut FaultCounters) -> &mut u64,
        outbound: impl FnOnce(&mut FaultCounters) -> &mut u64,
    ) {
        let counter = match direction {
            Direction::Out => outbound(&mut self.counters),
            Direction::In | Direction::Both => inbound(&mut self.counters),
        };
        *counter = counter.saturating_add(1);
    }
}

/// True with `probability`; no draw for 0 or 1 (a partition consumes no randomness).
fn chance(rng: &mut Rng, probability: f64) -> bool {
    if probability <= 0.0 {
        false
    } else if probability >= 1.0 {
        true
    } else {
        rng.chance(probability)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultRule;
    use dtx_protocol::TxnId;

    fn config() -> ClusterConfig {
        let dir = std::env::temp_dir().join(format!(
            "dtx-daemon-faults-unit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .subsec_nanos()
        ));
        let path = crate::config::init(&dir, 3, None, 1).expect("init");
        let config = ClusterConfig::load(&path).expect("load");
        let _ = std::fs::remove_dir_all(&dir);
        config
    }

    fn peer(config: &ClusterConfig, name: &str) -> PeerId {
        config.node_named(name).expect("node").peer_id
    }

    fn protocol_message(sequence: u64) -> Message {
        Message::Refused {
            txn: TxnId {
                client: NodeId(9),
                sequence,
            },
            reason: dtx_protocol::Refusal::RateLimited,
        }
    }

    fn installed(config: &ClusterConfig, plan: FaultPlan) -> Faults {
        let mut faults = Faults::new(true);
        faults.install(plan, config).expect("install");
        faults
    }

    #[test]
    fn a_node_without_the_flag_refuses_plans_and_stays_inactive() {
        let config = config();
        let mut faults = Faults::new(false);
        let plan = FaultPlan::healed().with_rule(FaultRule::partition(PeerSelector::Every));
        assert_eq!(
            faults.install(plan, &config),
            Err(FaultPlanError::FaultInjectionOff)
        );
        assert!(!faults.active);
        assert_eq!(faults.next_due(), None);
    }

    #[test]
    fn the_first_matching_rule_decides_by_peer_direction_and_traffic() {
        let config = config();
        let (n2, n3) = (peer(&config, "n2"), peer(&config, "n3"));
        let client = PeerId::random();
        let plan = FaultPlan::healed()
            .with_rule(FaultRule::partition(PeerSelector::node("n2")).with_direction(Direction::In))
            .with_rule(
                FaultRule::duplicating(PeerSelector::Clients, 1.0).with_traffic(Traffic::Protocol),
            )
            .with_rule(FaultRule::delayed(PeerSelector::Every, 100, 0))
            .with_rule(FaultRule::partition(PeerSelector::Every));
        let mut faults = installed(&config, plan);
        assert!(faults.active);
        let now = |copies, delay_ms| Fate::Delivered {
            copies,
            delay: Duration::from_millis(delay_ms),
        };
        // n2 inbound: the partition; n2 outbound: falls through to the delay.
        assert_eq!(
            faults.fate(Direction::In, &n2, true, Traffic::Protocol),
            Fate::Dropped
        );
        assert_eq!(
            faults.fate(Direction::Out, &n2, true, Traffic::Protocol),
            now(1, 100)
        );
        // A client's protocol messages are duplicated both ways; its heartbeats delayed.
        assert_eq!(
            faults.fate(Direction::In, &client, false, Traffic::Protocol),
            now(2, 0)
        );
        assert_eq!(
            faults.fate(Direction::Out, &client, false, Traffic::Heartbeats),
            now(1, 100)
        );
        // n3 is no client: the delay (the partition after it never matches).
        assert_eq!(
            faults.fate(Direction::In, &n3, true, Traffic::Protocol),
            now(1, 100)
        );
        // Healed: untouched, inactive.
        faults.install(FaultPlan::healed(), &config).expect("heal");
        assert!(!faults.active);
        assert_eq!(
            faults.fate(Direction::In, &n2, true, Traffic::Protocol),
            now(1, 0)
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_fates_and_another_seed_others() {
        let config = config();
        let n2 = peer(&config, "n2");
        let fates = |seed| {
            let plan = FaultPlan::healed()
                .with_rule(
                    FaultRule::lossy(PeerSelector::Every, 0.5)
                        .with_delay(0, 50)
                        .with_duplicate(0.3),
                )
                .with_seed(seed);
            let mut faults = installed(&config, plan);
            (0..200)
                .map(|_| faults.fate(Direction::Out, &n2, true, Traffic::All))
                .collect::<Vec<Fate>>()
        };
        let first = fates(7);
        assert_eq!(first, fates(7));
        assert_ne!(first, fates(8));
        let dropped = first.iter().filter(|fate| **fate == Fate::Dropped).count();
        assert!(
            (60..140).contains(&dropped),
            "{dropped} of 200 dropped at 0.5"
        );
        assert!(first
            .iter()
            .any(|fate| matches!(fate, Fate::Delivered { copies: 2, .. })));
    }

    #[test]
    fn filter_drops_duplicates_and_holds_messages_until_due_and_counts_them() {
        let config = config();
        let n2 = peer(&config, "n2");
        let n3 = peer(&config, "n3");
        let plan = FaultPlan::healed()
            .with_rule(FaultRule::partition(PeerSelector::node("n3")))
            .with_rule(
                FaultRule::delayed(PeerSelector::node("n2"), 100, 0)
                    .with_direction(Direction::Out)
                    .with_duplicate(1.0),
            )
            .with_rule(
                FaultRule::duplicating(PeerSelector::node("n2"), 1.0).with_direction(Direction::In),
            );
        let mut faults = installed(&config, plan);
        let start = Instant::now();
        let messages: Vec<Message> = (1..=3).map(protocol_message).collect();
        assert!(faults
            .filter(start, Crossing::In { peer: n3 }, true, messages.clone())
            .is_empty());
        let twice = faults.filter(start, Crossing::In { peer: n2 }, true, messages.clone());
        assert_eq!(twice.len(), 6);
        let held = faults.filter(
            start,
            Crossing::Out {
                peer: n2,
                to: NodeId(2),
            },
            true,
            messages.clone(),
        );
        assert!(held.is_empty());
        assert_eq!(faults.next_due(), Some(start + Duration::from_millis(100)));
        assert!(faults.release(start + Duration::from_millis(99)).is_empty());
        let released = faults.release(start + Duration::from_millis(100));
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].messages.len(), 6);
        assert_eq!(faults.next_due(), None);
        let counters = faults.counters();
        assert_eq!(counters.dropped_in, 3);
        assert_eq!(counters.dropped_out, 0);
        assert_eq!(counters.duplicated_in, 3);
        assert_eq!(counters.duplicated_out, 3);
        assert_eq!(counters.delayed_out, 6);
        assert_eq!(faults.report().delayed_now, 0);
    }

    #[test]
    fn the_delay_queue_is_bounded_and_drops_over_the_bound() {
        let config = config();
        let n2 = peer(&config, "n2");
        let plan = FaultPlan::healed().with_rule(FaultRule::delayed(PeerSelector::Every, 1_000, 0));
        let mut faults = installed(&config, plan);
        let start = Instant::now();
        let batch: Vec<Message> = (0..1_000).map(protocol_message).collect();
        for _ in 0..(FAULT_DELAYED_MESSAGES_MAX / 1_000 + 2) {
            faults.filter(start, Crossing::In { peer: n2 }, true, batch.clone());
        }
        let report = faults.report();
        assert!(report.delayed_now <= FAULT_DELAYED_MESSAGES_MAX);
        assert!(report.counters.delay_queue_full > 0);
        assert_eq!(report.counters.dropped_in, report.counters.delay_queue_full);
        let released: usize = faults
            .release(start + Duration::from_secs(1))
            .iter()
            .map(|delayed| delayed.messages.len())
            .sum();
        assert_eq!(released, report.delayed_now);
        assert_eq!(faults.report().delayed_now, 0);
    }
}
