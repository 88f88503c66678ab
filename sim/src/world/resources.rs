//! Simulated services: the resources of the service participants (the last
//! `RunConfig::services` members, namespace-only, `ResourceKind::External`).
//!
//! Each service sells a few items from a bounded stock: `reserve` holds units at prepare,
//! commit sells them, rollback releases them. Its state per transaction is durable (it
//! survives the service's crashes); a request it is still working on when it crashes is
//! lost. Requests and answers travel through the event queue with virtual delays like
//! messages, and the simulator plays the node's runtime: it gives up on a prepare that gets
//! no answer in time (the vote becomes `ServiceUnavailable`) and feeds late answers anyway
//! (the node must ignore them).
//!
//! Fault modes, drawn per service from the seed when `Faults::resources` is on: slow
//! (answers after a random delay, some after the runtime gave up), crashing (loses the work
//! in progress, down for a while, restarts with its durable state), answering twice,
//! refusing, unavailable for a while (requests dropped). Every fault heals in the liveness
//! phase. Services draw from their own generator, so runs without services replay as
//! before.

use super::{Action, Phase, Simulation};
use crate::checker::{ServiceEvidence, ServiceHold};
use crate::config::{Faults, RunConfig};
use crate::workload::SERVICE_ITEMS;
use dtx_protocol::{
    AbortReason, Input, Key, NodeId, Operation, Outcome, ResourceRequest, Rng, TxnId,
};
use std::collections::{BTreeMap, BTreeSet};

/// Requests and answers in flight at once; past it a new request is dropped like a lost
/// one (the node asks again, or the runtime gives up on it).
const FLIGHTS_MAX: usize = 100_000;
/// Transactions a service remembers; past it, new prepares are refused.
const SERVICE_TXNS_MAX: usize = 1_000_000;
/// Salt of the services' generator (so services draw nothing from the world's).
const SERVICE_SEED_SALT: u64 = 0x5e41_1ce5_00f0_d7c5;

/// A service's fault modes (all off without `Faults::resources`).
#[derive(Clone, Debug, Default)]
struct ServiceFaults {
    /// Chance that a request takes long to handle.
    slow_chance: f64,
    /// Longest slow handling (may exceed the runtime's give-up time).
    slow_max_micros: u64,
    /// Chance an answer is sent twice.
    duplicate_chance: f64,
    /// Chance a prepare is refused whatever the stock.
    refuse_chance: f64,
    /// Mean time between crashes, if the service crashes.
    crash_interval_micros: Option<u64>,
    /// Mean time between spells of unavailability, if it has them.
    outage_interval_micros: Option<u64>,
    /// Longest time down.
    downtime_max_micros: u64,
}

/// One simulated service.
#[derive(Debug)]
struct Service {
    /// Its data node's index among the hosts.
    host: usize,
    /// Durable: what it holds per transaction (bounded by `SERVICE_TXNS_MAX`).
    holds: BTreeMap<TxnId, ServiceHold>,
    /// Each item's initial stock.
    stock: BTreeMap<Key, u64>,
    /// Durable: each item's units neither held nor sold.
    available: BTreeMap<Key, i64>,
    /// Requests the contract forbids, as seen (bounded like `holds`: one per transaction).
    anomalies: BTreeMap<TxnId, String>,
    /// Bumped by each crash: work in progress of an older incarnation is lost.
    incarnation: u64,
    /// Bumped by each crash or outage: a stale "up again" is ignored.
    downs: u64,
    /// True while crashed or unavailable (requests are dropped).
    down: bool,
    faults: ServiceFaults,
}

/// Something on its way, in the event queue.
#[derive(Debug)]
enum Flight {
    /// A node's request travelling to its service.
    Request {
        service: usize,
        node_incarnation: u64,
        request: ResourceRequest,
    },
    /// The service finishing a request (durable, then answered).
    Work {
        service: usize,
        incarnation: u64,
        node_incarnation: u64,
        request: ResourceRequest,
    },
    /// An answer travelling back to the node.
    Answer {
        host: usize,
        node_incarnation: u64,
        input: Input,
    },
    /// The runtime's patience with a prepare runs out.
    GiveUp {
        host: usize,
        node_incarnation: u64,
        txn: TxnId,
    },
}

/// The simulated services of a run and the runtime between them and their nodes.
#[derive(Debug)]
pub(super) struct Services {
    services: Vec<Service>,
    /// Host index to service index.
    by_host: BTreeMap<usize, usize>,
    /// Everything in flight, by id (bounded by `FLIGHTS_MAX`).
    flights: BTreeMap<u64, Flight>,
    next_flight: u64,
    rng: Rng,
    /// Prepares asked and not answered: (host, node incarnation, txn). Bounded by
    /// `FLIGHTS_MAX` (each has a `GiveUp` in flight).
    waiting: BTreeSet<(usize, u64, TxnId)>,
    /// How long the runtime waits for a prepare's answer.
    give_up_micros: u64,
    /// The `resource-forgets-rollback` bug.
    forgets_rollback: bool,
    /// Counters for the report.
    pub(super) refusals: u64,
    pub(super) give_ups: u64,
    pub(super) requests: u64,
}

impl Services {
    /// The services of the last `config.services` hosts of `hosts` hosts.
    pub(super) fn new(config: &RunConfig, hosts: usize) -> Services {
        let mut rng = Rng::new(config.seed ^ SERVICE_SEED_SALT);
        let count = config.services.min(hosts);
        let give_up_micros = rng.between(20_000, 200_000);
        let services = (hosts - count..hosts)
            .map(|host| {
                let stock: BTreeMap<Key, u64> = (0..SERVICE_ITEMS)
                    .map(|item| {
                        let key = Key::new(format!("n{}/item-{item}", host + 1));
                        (key, rng.between(30, 300))
                    })
                    .collect();
                let available = stock
                    .iter()
                    .map(|(key, units)| (key.clone(), *units as i64))
                    .collect();
                Service {
                    host,
                    holds: BTreeMap::new(),
                    stock,
                    available,
                    anomalies: BTreeMap::new(),
                    incarnation: 0,
                    downs: 0,
                    down: false,
                    faults: draw_faults(config.faults, give_up_micros, &mut rng),
                }
            })
            .collect::<Vec<_>>();
        let by_host = services
            .iter()
            .enumerate()
            .map(|(index, service)| (service.host, index))
            .collect();
        Services {
            services,
            by_host,
            flights: BTreeMap::new(),
            next_flight: 0,
            rng,
            waiting: BTreeSet::new(),
            give_up_micros,
            forgets_rollback: config.service_bugs.forgets_rollback,
            refusals: 0,
            give_ups: 0,
            requests: 0,
        }
    }

    /// True if host `index` runs a service participant.
    pub(super) fn is_service(&self, host: usize) -> bool {
        self.by_host.contains_key(&host)
    }

    /// True when nothing travels to or from a service.
    pub(super) fn quiet(&self) -> bool {
        self.flights.is_empty()
    }

    /// Every service's durable state, for the checker.
    pub(super) fn evidence(&self, node_of: impl Fn(usize) -> NodeId) -> Vec<ServiceEvidence> {
        self.services
            .iter()
            .map(|service| ServiceEvidence {
                node: node_of(service.host),
                holds: service.holds.clone(),
                stock: service.stock.clone(),
                available: service.available.clone(),
                anomalies: service
                    .anomalies
                    .iter()
                    .map(|(txn, what)| (*txn, what.clone()))
                    .collect(),
            })
            .collect()
    }
}

fn draw_faults(faults: Faults, give_up_micros: u64, rng: &mut Rng) -> ServiceFaults {
    if !faults.resources {
        return ServiceFaults::default();
    }
    ServiceFaults {
        slow_chance: rng.unit() * 0.3,
        slow_max_micros: rng.between(give_up_micros / 2, give_up_micros * 3),
        duplicate_chance: rng.unit() * 0.1,
        refuse_chance: rng.unit() * 0.1,
        crash_interval_micros: rng.chance(0.7).then(|| rng.between(50_000, 500_000)),
        outage_interval_micros: rng.chance(0.7).then(|| rng.between(50_000, 500_000)),
        downtime_max_micros: rng.between(5_000, 200_000),
    }
}

impl Simulation {
    /// A node asks its service: the request leaves now (its gate, if any, is passed).
    pub(super) fn resource_request(&mut self, host: usize, request: ResourceRequest) {
        let Some(&service) = self.services.by_host.get(&host) else {
            return;
        };
        self.services.requests += 1;
        let node_incarnation = self.hosts[host].incarnation;
        if let ResourceRequest::Prepare { txn, .. } = &request {
            if self.traced(*txn) {
                eprintln!(
                    "{:>10} n{} asks its service {request:?}",
                    self.now.as_micros(),
                    host + 1
                );
            }
            self.services.waiting.insert((host, node_incarnation, *txn));
            let give_up = self.services.give_up_micros;
            self.fly(
                give_up,
                Flight::GiveUp {
                    host,
                    node_incarnation,
                    txn: *txn,
                },
            );
        }
        let delay = self.service_travel();
        self.fly(
            delay,
            Flight::Request {
                service,
                node_incarnation,
                request,
            },
        );
    }

    fn service_travel(&mut self) -> u64 {
        let (low, high) = (self.params.delay_min_micros, self.params.delay_max_micros);
        self.services.rng.between(low, high)
    }

    fn fly(&mut self, micros: u64, flight: Flight) {
        if self.services.flights.len() >= FLIGHTS_MAX {
            return;
        }
        let id = self.services.next_flight;
        self.services.next_flight += 1;
        self.services.flights.insert(id, flight);
        self.after(micros, Action::ServiceFlight { flight: id });
    }

    /// Something in flight arrives.
    pub(super) fn on_service_flight(&mut self, id: u64) {
        let Some(flight) = self.services.flights.remove(&id) else {
            return;
        };
        match flight {
            Flight::Request {
                service,
                node_incarnation,
                request,
            } => {
                let state = &self.services.services[service];
                if state.down {
                    return;
                }
                let faults = state.faults.clone();
                let incarnation = state.incarnation;
                let rng = &mut self.services.rng;
                let handling = if rng.chance(faults.slow_chance) {
                    rng.between(1_000, faults.slow_max_micros.max(1_000))
                } else {
                    rng.between(10, 500)
                };
                self.fly(
                    handling,
                    Flight::Work {
                        service,
                        incarnation,
                        node_incarnation,
                        request,
                    },
                );
            }
            Flight::Work {
                service,
                incarnation,
                node_incarnation,
                request,
            } => {
                let state = &self.services.services[service];
                if state.down || state.incarnation != incarnation {
                    // Lost with the crash: it never became durable, nothing was answered.
                    return;
                }
                let host = state.host;
                let duplicate_chance = state.faults.duplicate_chance;
                let input = self.serve(service, request);
                let copies = if self.services.rng.chance(duplicate_chance) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = self.service_travel();
                    self.fly(
                        delay,
                        Flight::Answer {
                            host,
                            node_incarnation,
                            input: input.clone(),
                        },
                    );
                }
            }
            Flight::Answer {
                host,
                node_incarnation,
                input,
            } => {
                if self.hosts[host].incarnation != node_incarnation {
                    return;
                }
                if let Input::ResourceVoted { txn, .. } = &input {
                    self.services
                        .waiting
                        .remove(&(host, node_incarnation, *txn));
                    if self.traced(*txn) {
                        eprintln!(
                            "{:>10} n{} service answers {input:?}",
                            self.now.as_micros(),
                            host + 1
                        );
                    }
                }
                self.node_input(host, input);
            }
            Flight::GiveUp {
                host,
                node_incarnation,
                txn,
            } => {
                if !self.services.waiting.remove(&(host, node_incarnation, txn))
                    || self.hosts[host].incarnation != node_incarnation
                {
                    return;
                }
                self.services.give_ups += 1;
                let detail = format!(
                    "no answer to prepare within {} ms",
                    self.services.give_up_micros / 1_000
                );
                let vote = Err(AbortReason::ServiceUnavailable { detail });
                self.node_input(host, Input::ResourceVoted { txn, vote });
            }
        }
    }

    /// The service handles a request: its state changes durably, and this is the answer.
    fn serve(&mut self, index: usize, request: ResourceRequest) -> Input {
        let forgets_rollback = self.services.forgets_rollback;
        let refuse = {
            let chance = self.services.services[index].faults.refuse_chance;
            self.services.rng.chance(chance)
        };
        let service = &mut self.services.services[index];
        match request {
            ResourceRequest::Prepare { txn, operations } => {
                let vote = service.prepare(txn, &operations, refuse);
                if vote.is_err() {
                    self.services.refusals += 1;
                }
                Input::ResourceVoted { txn, vote }
            }
            ResourceRequest::Finish { txn, outcome } => {
                service.finish(txn, outcome, forgets_rollback);
                Input::ResourceDone { txn, outcome }
            }
            ResourceRequest::ListPrepared => Input::ResourceHolds {
                prepared: service
                    .holds
                    .iter()
                    .filter(|(_, hold)| matches!(hold, ServiceHold::Prepared { .. }))
                    .map(|(txn, _)| *txn)
                    .collect(),
            },
        }
    }

    /// Schedules the services' crashes and outages (safety phase, resource faults on).
    pub(super) fn start_service_faults(&mut self) {
        for service in 0..self.services.services.len() {
            let faults = self.services.services[service].faults.clone();
            if let Some(interval) = faults.crash_interval_micros {
                let wait = self.services.rng.between(1, interval);
                self.after(
                    wait,
                    Action::ServiceDown {
                        service,
                        crash: true,
                    },
                );
            }
            if let Some(interval) = faults.outage_interval_micros {
                let wait = self.services.rng.between(1, interval);
                self.after(
                    wait,
                    Action::ServiceDown {
                        service,
                        crash: false,
                    },
                );
            }
        }
    }

    /// A service crashes (`crash`: its work in progress is lost) or becomes unavailable.
    pub(super) fn on_service_down(&mut self, service: usize, crash: bool) {
        if self.phase != Phase::Safety {
            return;
        }
        let faults = self.services.services[service].faults.clone();
        let state = &mut self.services.services[service];
        if !state.down {
            state.down = true;
            state.downs += 1;
            if crash {
                state.incarnation += 1;
            }
            let downs = state.downs;
            let downtime = self.services.rng.between(1, faults.downtime_max_micros);
            self.after(downtime, Action::ServiceUp { service, downs });
        }
        let interval = if crash {
            faults.crash_interval_micros
        } else {
            faults.outage_interval_micros
        };
        if let Some(interval) = interval {
            let wait = self.services.rng.between(1, 2 * interval);
            self.after(wait, Action::ServiceDown { service, crash });
        }
    }

    /// A service is back (with its durable state).
    pub(super) fn on_service_up(&mut self, service: usize, downs: u64) {
        let state = &mut self.services.services[service];
        if state.downs == downs {
            state.down = false;
        }
    }

    /// Liveness phase: every service is up again.
    pub(super) fn heal_services(&mut self) {
        for service in &mut self.services.services {
            service.down = false;
            service.downs += 1;
        }
    }
}

impl Service {
    fn prepare(
        &mut self,
        txn: TxnId,
        operations: &[Operation],
        refuse: bool,
    ) -> Result<(), AbortReason> {
        let refused = |reason: &str| {
            Err(AbortReason::ServiceRefused {
                reason: reason.to_string(),
            })
        };
        match self.holds.get(&txn) {
            Some(ServiceHold::Prepared { .. }) => return Ok(()),
            Some(ServiceHold::Refused) => return refused("refused before"),
            // Anti-hanging: a prepare after its rollback (or commit) holds nothing.
            Some(ServiceHold::RolledBack | ServiceHold::Committed { .. }) => {
                return refused("already finished")
            }
            None => {}
        }
        if self.holds.len() >= SERVICE_TXNS_MAX {
            return refused("too many transactions");
        }
        let outcome = if refuse {
            Err("declined (simulated refusal)".to_string())
        } else {
            self.reservations(operations)
        };
        match outcome {
            Ok(reserved) => {
                for (item, units) in &reserved {
                    if let Some(available) = self.available.get_mut(item) {
                        *available -= *units as i64;
                    }
                }
                self.holds.insert(txn, ServiceHold::Prepared { reserved });
                Ok(())
            }
            Err(reason) => {
                self.holds.insert(txn, ServiceHold::Refused);
                refused(&reason)
            }
        }
    }

    /// The units each item must hold for `operations`, if the stock has them.
    fn reservations(&self, operations: &[Operation]) -> Result<Vec<(Key, u64)>, String> {
        let mut wanted: BTreeMap<Key, u64> = BTreeMap::new();
        for operation in operations {
            let Operation::Call {
                target,
                action,
                args,
            } = operation
            else {
                return Err("only calls are served".to_string());
            };
            if action != "reserve" {
                return Err(format!("unknown action {action:?}"));
            }
            if !self.stock.contains_key(target) {
                return Err(format!("unknown item {target}"));
            }
            let units = serde_json::from_slice::<serde_json::Value>(&args.0)
                .ok()
                .and_then(|value| value.get("units").and_then(serde_json::Value::as_u64))
                .ok_or_else(|| "args must be {\"units\": N}".to_string())?;
            *wanted.entry(target.clone()).or_default() += units;
        }
        for (item, units) in &wanted {
            let available = self.available.get(item).copied().unwrap_or(0);
            if available < *units as i64 {
                return Err(format!("no stock left on {item}"));
            }
        }
        Ok(wanted.into_iter().collect())
    }

    fn finish(&mut self, txn: TxnId, outcome: Outcome, forgets_rollback: bool) {
        let held = self.holds.get(&txn).cloned();
        match (outcome, held) {
            (Outcome::Commit, Some(ServiceHold::Prepared { reserved })) => {
                self.holds.insert(txn, ServiceHold::Committed { reserved });
            }
            (Outcome::Commit, Some(ServiceHold::Committed { .. }))
            | (Outcome::Abort, Some(ServiceHold::RolledBack)) => {}
            (Outcome::Commit, other) => {
                let state = other.as_ref().map_or("unknown", ServiceHold::name);
                self.anomalies
                    .entry(txn)
                    .or_insert_with(|| format!("commit of a transaction it holds {state}"));
            }
            (Outcome::Abort, Some(ServiceHold::Prepared { reserved })) => {
                for (item, units) in reserved {
                    if let Some(available) = self.available.get_mut(&item) {
                        *available += units as i64;
                    }
                }
                self.holds.insert(txn, ServiceHold::RolledBack);
            }
            (Outcome::Abort, Some(ServiceHold::Refused)) => {
                self.holds.insert(txn, ServiceHold::RolledBack);
            }
            (Outcome::Abort, None) => {
                if !forgets_rollback {
                    // Remembered, so a prepare arriving after it is refused.
                    self.holds.insert(txn, ServiceHold::RolledBack);
                }
            }
            (Outcome::Abort, Some(ServiceHold::Committed { .. })) => {
                self.anomalies
                    .entry(txn)
                    .or_insert_with(|| "rollback of a committed transaction".to_string());
            }
        }
    }
}
