//! Fault plans: what a data node started with `dtx node --fault-injection` does to its
//! own network traffic when told so on its control endpoint (`POST /faults`).
//!
//! A [`FaultPlan`] is an ordered list of [`FaultRule`]s and a seed. Each message this node
//! receives or sends is matched against the rules in order; the first rule that matches
//! its peer, direction and kind of traffic decides its fate (dropped with a probability,
//! held back for a delay, delivered twice with a probability); a message no rule matches
//! passes untouched. The random draws come from one generator seeded with the plan's
//! seed, so that a plan replays the same decisions for the same sequence of messages (the
//! sequence itself depends on timing, so a run is reproducible only as far as that is).
//!
//! The plan travels as JSON (see `docs/faults.md`); the `dtx lab` builds plans in code
//! with the constructors here. The daemon applies it (`crate::daemon`); a node started
//! without the flag refuses plans and never looks at its traffic.

use crate::config::ClusterConfig;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Rules one plan may hold at most.
pub const FAULT_RULES_MAX: usize = 256;

/// Longest delay a rule may add (delay plus jitter), in milliseconds.
pub const FAULT_DELAY_MS_MAX: u64 = 60_000;

/// Largest `POST /faults` body read, in bytes (a full plan of [`FAULT_RULES_MAX`] rules
/// fits in well under this).
pub const FAULT_PLAN_BODY_MAX_BYTES: usize = 64 * 1024;

/// Messages held back by delay rules at most; a message over this bound is dropped (and
/// counted as such) rather than queued.
pub const FAULT_DELAYED_MESSAGES_MAX: usize = 65_536;

/// The selector word for every peer that is not a data node of the cluster.
pub const CLIENTS_SELECTOR: &str = "clients";

/// The selector word for every peer.
pub const EVERY_PEER_SELECTOR: &str = "*";

/// What a node does to its traffic: the rules in order (the first match decides) and the
/// seed of its random draws. An empty list of rules is a healed network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// The rules, matched in order; the first that matches a message decides its fate.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Seed of the generator behind every probabilistic decision of this plan.
    #[serde(default)]
    pub seed: u64,
}

/// Which peers a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum PeerSelector {
    /// The data node of this name (`"n2"`).
    Node(String),
    /// Every peer that is not a data node of the cluster (`"clients"`).
    Clients,
    /// Every peer (`"*"`).
    Every,
}

/// Which way a message travels, as seen from the node applying the plan.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// What this node receives from the peer.
    In,
    /// What this node sends to the peer.
    Out,
    /// Both.
    #[default]
    Both,
}

/// Which messages a rule applies to.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// Every message.
    #[default]
    All,
    /// Protocol messages (transactions, Paxos Commit phases, decisions, recovery):
    /// everything but heartbeats.
    Protocol,
    /// Gossip heartbeats of the failure detector.
    Heartbeats,
}

/// One rule: which messages (peer, direction, traffic) and what happens to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The peers this rule applies to: a node name, `"clients"` or `"*"`.
    pub peer: PeerSelector,
    /// Which way (default both).
    #[serde(default)]
    pub direction: Direction,
    /// Which messages (default all).
    #[serde(default)]
    pub traffic: Traffic,
    /// Probability (0..=1) that a matching message is dropped; 1 is a partition.
    #[serde(default)]
    pub drop: f64,
    /// Extra delay of a matching message that is not dropped, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// A uniform extra of 0..=`jitter_ms` milliseconds on top of `delay_ms`, drawn per
    /// message (so that delayed messages also reorder).
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability (0..=1) that a matching message that is not dropped is delivered twice.
    #[serde(default)]
    pub duplicate: f64,
}

/// Why a fault plan was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FaultPlanError {
    /// The node was not started with `--fault-injection`.
    #[error("this node was not started with --fault-injection: it does not take fault plans")]
    FaultInjectionOff,
    /// More rules than [`FAULT_RULES_MAX`].
    #[error("the plan has {count} rules; at most {FAULT_RULES_MAX} are allowed")]
    TooManyRules {
        /// How many the plan has.
        count: usize,
    },
    /// A rule names a node the cluster does not have.
    #[error("rule {rule}: no node named {name:?} in the cluster (use a node name, \"clients\" or \"*\")")]
    UnknownNode {
        /// The rule's index (0-based).
        rule: usize,
        /// The name.
        name: String,
    },
    /// A probability outside 0..=1, or not a number.
    #[error("rule {rule}: {field} must be a probability between 0 and 1, not {value}")]
    Probability {
        /// The rule's index (0-based).
        rule: usize,
        /// `drop` or `duplicate`.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// Delay plus jitter over [`FAULT_DELAY_MS_MAX`].
    #[error("rule {rule}: delay_ms + jitter_ms is {total_ms} ms; at most {FAULT_DELAY_MS_MAX} ms are allowed")]
    DelayTooLong {
        /// The rule's index (0-based).
        rule: usize,
        /// Delay plus jitter (saturated).
        total_ms: u64,
    },
}

impl FaultPlan {
    /// The healed plan: no rules, every message passes.
    pub fn healed() -> FaultPlan {
        FaultPlan::default()
    }

    /// A plan of `rules` with `seed`.
    pub fn new(rules: Vec<FaultRule>, seed: u64) -> FaultPlan {
        FaultPlan { rules, seed }
    }

    /// This plan with `rule` appended (matched after the ones already there).
    pub fn with_rule(mut self, rule: FaultRule) -> FaultPlan {
        self.rules.push(rule);
        self
    }

    /// This plan with seed `seed`.
    pub fn with_seed(mut self, seed: u64) -> FaultPlan {
        self.seed = seed;
        self
    }

    /// True for a plan that changes nothing (no rules).
    pub fn is_healed(&self) -> bool {
        self.rules.is_empty()
    }

    /// Checks the plan against `config`: at most [`FAULT_RULES_MAX`] rules, node names of
    /// the cluster, probabilities in 0..=1, delays within [`FAULT_DELAY_MS_MAX`].
    pub fn validate(&self, config: &ClusterConfig) -> Result<(), FaultPlanError> {
        if self.rules.len() > FAULT_RULES_MAX {
            return Err(FaultPlanError::TooManyRules {
                count: self.rules.len(),
            });
        }
        for (index, rule) in self.rules.iter().enumerate() {
            rule.validate(index, config)?;
        }
        Ok(())
    }
}

impl FaultRule {
    /// A rule for `peer` that changes nothing yet (both directions, all traffic); set
    /// what it does with the other constructors' fields or the `with_*` methods.
    pub fn new(peer: PeerSelector) -> FaultRule {
        FaultRule {
            peer,
            direction: Direction::Both,
            traffic: Traffic::All,
            drop: 0.0,
            delay_ms: 0,
            jitter_ms: 0,
            duplicate: 0.0,
        }
    }

    /// Every message to and from `peer` dropped: a partition from it.
    pub fn partition(peer: PeerSelector) -> FaultRule {
        FaultRule::new(peer).with_drop(1.0)
    }

    /// Every message to and from `peer` dropped with probability `drop`.
    pub fn lossy(peer: PeerSelector, drop: f64) -> FaultRule {
        FaultRule::new(peer).with_drop(drop)
    }

    /// Every message to and from `peer` delayed by `delay_ms` plus up to `jitter_ms`.
    pub fn delayed(peer: PeerSelector, delay_ms: u64, jitter_ms: u64) -> FaultRule {
        FaultRule::new(peer).with_delay(delay_ms, jitter_ms)
    }

    /// Every message to and from `peer` delivered twice with probability `duplicate`.
    pub fn duplicating(peer: PeerSelector, duplicate: f64) -> FaultRule {
        FaultRule::new(peer).with_duplicate(duplicate)
    }

    /// This rule for `direction` only.
    pub fn with_direction(mut self, direction: Direction) -> FaultRule {
        self.direction = direction;
        self
    }

    /// This rule for `traffic` only.
    pub fn with_traffic(mut self, traffic: Traffic) -> FaultRule {
        self.traffic = traffic;
        self
    }

    /// This rule with drop probability `drop`.
    pub fn with_drop(mut self, drop: f64) -> FaultRule {
        self.drop = drop;
        self
    }

    /// This rule with a delay of `delay_ms` plus up to `jitter_ms`.
    pub fn with_delay(mut self, delay_ms: u64, jitter_ms: u64) -> FaultRule {
        self.delay_ms = delay_ms;
        self.jitter_ms = jitter_ms;
        self
    }

    /// This rule with duplication probability `duplicate`.
    pub fn with_duplicate(mut self, duplicate: f64) -> FaultRule {
        self.duplicate = duplicate;
        self
    }

    /// True if this rule applies to a message crossing `direction` (`In` or `Out`) of
    /// kind `traffic` (`Protocol` or `Heartbeats`).
    pub fn applies(&self, direction: Direction, traffic: Traffic) -> bool {
        let direction_matches = self.direction == Direction::Both || self.direction == direction;
        let traffic_matches = self.traffic == Traffic::All || self.traffic == traffic;
        direction_matches && traffic_matches
    }

    fn validate(&self, index: usize, config: &ClusterConfig) -> Result<(), FaultPlanError> {
        if let PeerSelector::Node(name) = &self.peer {
            if config.node_named(name).is_none() {
                return Err(FaultPlanError::UnknownNode {
                    rule: index,
                    name: name.clone(),
                });
            }
        }
        for (field, value) in [("drop", self.drop), ("duplicate", self.duplicate)] {
            // NaN fails both comparisons, so it is refused too.
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultPlanError::Probability {
                    rule: index,
                    field,
                    value,
                });
            }
        }
        let total_ms = self.delay_ms.saturating_add(self.jitter_ms);
        if total_ms > FAULT_DELAY_MS_MAX {
            return Err(FaultPlanError::DelayTooLong {
                rule: index,
                total_ms,
            });
        }
        Ok(())
    }
}

impl PeerSelector {
    /// The data node called `name`.
    pub fn node(name: &str) -> PeerSelector {
        PeerSelector::Node(name.to_string())
    }

    /// The selector a word of the JSON form stands for (`"clients"`, `"*"`, or a name).
    pub fn parse(word: &str) -> PeerSelector {
        match word {
            CLIENTS_SELECTOR => PeerSelector::Clients,
            EVERY_PEER_SELECTOR => PeerSelector::Every,
            name => PeerSelector::Node(name.to_string()),
        }
    }
}

impl From<String> for PeerSelector {
    fn from(word: String) -> PeerSelector {
        PeerSelector::parse(&word)
    }
}

impl From<PeerSelector> for String {
    fn from(selector: PeerSelector) -> String {
        selector.to_string()
    }
}

impl fmt::Display for PeerSelector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerSelector::Node(name) => formatter.write_str(name),
            PeerSelector::Clients => formatter.write_str(CLIENTS_SELECTOR),
            PeerSelector::Every => formatter.write_str(EVERY_PEER_SELECTOR),
        }
    }
}

/// What fault injection did so far, by direction (`in`: received, `out`: sent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounters {
    /// Messages received and dropped by a rule.
    pub dropped_in: u64,
    /// Messages to send dropped by a rule.
    pub dropped_out: u64,
    /// Messages received and held back by a rule.
    pub delayed_in: u64,
    /// Messages to send held back by a rule.
    pub delayed_out: u64,
    /// Messages received and delivered twice.
    pub duplicated_in: u64,
    /// Messages sent twice.
    pub duplicated_out: u64,
    /// Messages dropped because [`FAULT_DELAYED_MESSAGES_MAX`] were already held back
    /// (also counted in `dropped_in` / `dropped_out`).
    pub delay_queue_full: u64,
}

/// `GET /faults` and the answer to `POST /faults`: the plan in force and the counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultReport {
    /// The plan in force now.
    pub plan: FaultPlan,
    /// What fault injection did since the node started (not reset by a new plan).
    pub counters: FaultCounters,
    /// Messages held back now, waiting for their delay.
    pub delayed_now: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        let dir = std::env::temp_dir().join(format!(
            "dtx-faults-unit-{}-{}",
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

    #[test]
    fn the_json_form_has_defaults_and_the_three_selector_words() {
        let plan: FaultPlan = serde_json::from_str(
            r#"{"rules": [{"peer": "n2"}, {"peer": "clients", "direction": "in", "traffic": "heartbeats", "drop": 0.5},
               {"peer": "*", "direction": "out", "traffic": "protocol", "delay_ms": 10, "jitter_ms": 5, "duplicate": 1}]}"#,
        )
        .expect("parse");
        assert_eq!(plan.seed, 0);
        assert_eq!(plan.rules[0], FaultRule::new(PeerSelector::node("n2")));
        assert_eq!(
            plan.rules[1],
            FaultRule::lossy(PeerSelector::Clients, 0.5)
                .with_direction(Direction::In)
                .with_traffic(Traffic::Heartbeats)
        );
        assert_eq!(
            plan.rules[2],
            FaultRule::delayed(PeerSelector::Every, 10, 5)
                .with_duplicate(1.0)
                .with_direction(Direction::Out)
                .with_traffic(Traffic::Protocol)
        );
        let again: FaultPlan =
            serde_json::from_str(&serde_json::to_string(&plan).expect("json")).expect("parse");
        assert_eq!(again, plan);
        assert!(serde_json::to_string(&plan)
            .expect("json")
            .contains(r#""peer":"clients""#));
    }

    #[test]
    fn unknown_fields_and_words_are_refused_when_parsing() {
        for text in [
            r#"{"rules": [], "seeds": 1}"#,
            r#"{"rules": [{"peer": "n2", "dorp": 1}]}"#,
            r#"{"rules": [{"peer": "n2", "direction": "sideways"}]}"#,
            r#"{"rules": [{"peer": "n2", "traffic": "gossip"}]}"#,
            r#"{"rules": [{"direction": "in"}]}"#,
            r#"{"rules": [{"peer": "n2", "delay_ms": -1}]}"#,
            r#"{"rules": {"peer": "n2"}}"#,
        ] {
            assert!(
                serde_json::from_str::<FaultPlan>(text).is_err(),
                "{text} was accepted"
            );
        }
        assert_eq!(
            serde_json::from_str::<FaultPlan>("{}").expect("empty"),
            FaultPlan::healed()
        );
    }

    #[test]
    fn validation_refuses_unknown_nodes_bad_probabilities_long_delays_and_too_many_rules() {
        let config = config();
        let good = FaultPlan::healed()
            .with_rule(FaultRule::partition(PeerSelector::node("n2")))
            .with_rule(FaultRule::delayed(PeerSelector::Clients, 59_000, 1_000))
            .with_rule(FaultRule::duplicating(PeerSelector::Every, 0.0));
        assert_eq!(good.validate(&config), Ok(()));
        let refuse = |rule: FaultRule| FaultPlan::healed().with_rule(rule).validate(&config);
        assert_eq!(
            refuse(FaultRule::partition(PeerSelector::node("n9"))),
            Err(FaultPlanError::UnknownNode {
                rule: 0,
                name: "n9".to_string()
            })
        );
        for drop in [1.5, -0.1, f64::NAN, f64::INFINITY] {
            let refused = refuse(FaultRule::lossy(PeerSelector::Every, drop));
            assert!(
                matches!(
                    refused,
                    Err(FaultPlanError::Probability { field: "drop", .. })
                ),
                "{drop}: {refused:?}"
            );
        }
        assert!(matches!(
            refuse(FaultRule::duplicating(PeerSelector::Every, 2.0)),
            Err(FaultPlanError::Probability {
                field: "duplicate",
                ..
            })
        ));
        assert_eq!(
            refuse(FaultRule::delayed(PeerSelector::Every, 60_000, 1)),
            Err(FaultPlanError::DelayTooLong {
                rule: 0,
                total_ms: 60_001
            })
        );
        assert_eq!(
            refuse(FaultRule::delayed(PeerSelector::Every, u64::MAX, u64::MAX)),
            Err(FaultPlanError::DelayTooLong {
                rule: 0,
                total_ms: u64::MAX
            })
        );
        let many = FaultPlan::new(
            vec![FaultRule::new(PeerSelector::Every); FAULT_RULES_MAX + 1],
            7,
        );
        assert_eq!(
            many.validate(&config),
            Err(FaultPlanError::TooManyRules {
                count: FAULT_RULES_MAX + 1
            })
        );
        assert!(FaultPlanError::Probability {
            rule: 0,
            field: "drop",
            value: 1.5
        }
        .to_string()
        .contains("drop must be a probability between 0 and 1, not 1.5"));
    }

    #[test]
    fn a_rule_applies_to_its_direction_and_traffic_only() {
        let rule = FaultRule::partition(PeerSelector::Every)
            .with_direction(Direction::In)
            .with_traffic(Traffic::Heartbeats);
        assert!(rule.applies(Direction::In, Traffic::Heartbeats));
        assert!(!rule.applies(Direction::Out, Traffic::Heartbeats));
        assert!(!rule.applies(Direction::In, Traffic::Protocol));
        let both = FaultRule::partition(PeerSelector::Every);
        for direction in [Direction::In, Direction::Out] {
            for traffic in [Traffic::Protocol, Traffic::Heartbeats] {
                assert!(both.applies(direction, traffic));
            }
        }
    }
}
