//! The lab's hook into the world: a scenario's fault timeline (`crate::lab::scenario`)
//! played on simulated time instead of the simulator's own random faults.
//!
//! Node `nK` of a scenario is the simulator's data node `NodeId(K)` (host index K-1);
//! `Endpoint::Clients` is every client peer. What the timeline does:
//! - `Network { links }`: from that instant exactly these directed link faults are in
//!   force; a message on a faulty link is lost with the link's `drop` probability, delayed
//!   by `delay` plus up to `jitter` more on top of the ordinary delay, and delivered twice
//!   with the `duplicate` probability;
//! - `Kill` / `Restart`: the simulator's crash (a power loss: only synced bytes survive,
//!   which loses at least what a SIGKILL loses) and its restart through `Node::recover`;
//! - `Pause` / `Resume`: like SIGSTOP / SIGCONT: the node neither receives nor fires timers
//!   nor learns of finished fsyncs while paused; what arrives for it is held (as a stopped
//!   process's socket buffers hold it) and handed over in order at the resume.
//!
//! Without a lab plan none of this runs and no random number is drawn for it, so the
//! simulator's own runs replay exactly as before.

use super::{Action, Phase, Simulation};
use crate::lab::scenario::{Action as LabAction, Endpoint, LinkFault, Step};
use dtx_protocol::{NodeId, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Most simulator events held for paused nodes at once; beyond it further ones are
/// dropped and counted (a stopped process's socket buffers are finite too).
pub const HELD_EVENTS_MAX: usize = 1_000_000;

/// How a lab run drives the world.
#[derive(Clone, Debug)]
pub struct LabPlan {
    /// The fault timeline, times from the workload's start.
    pub steps: Vec<Step>,
    /// How long clients start new transactions.
    pub duration: Duration,
    /// After the workload (everything healed): longest wait for every transaction to be
    /// decided.
    pub settle: Duration,
    /// Total transactions begun per second over all clients; 0 runs closed loop.
    pub rate: f64,
    /// How often every node is sampled.
    pub sample_interval: Duration,
}

/// One end of a simulated link, as the lab's link faults name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkEnd {
    /// Data node by host index (`nK` is index K-1).
    Node(usize),
    /// Any client.
    Clients,
}

/// A sample of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSample {
    /// Microseconds from the workload's start.
    pub time_micros: u64,
    /// Host index (`n1` is 0).
    pub index: usize,
    /// Neither crashed nor paused.
    pub up: bool,
    /// Transactions the node holds undecided.
    pub in_doubt: u64,
    /// Members its failure detector suspects.
    pub suspected: u64,
}

/// What a lab run recorded besides the simulator's own report.
#[derive(Clone, Debug, Default)]
pub struct LabRecord {
    /// Simulated time (microseconds) at which the workload started (after any setup).
    pub workload_start_micros: u64,
    /// Simulated time (microseconds, absolute) at which the run ended.
    pub end_micros: u64,
    /// Samples of every node, every `sample_interval`, and one when the settle ended.
    pub samples: Vec<NodeSample>,
    /// Frames that got through a link (not lost), by (window, from, to), counted when
    /// sent. Window k is the time after the k-th step of the plan was applied (0: before
    /// the first).
    pub passed: BTreeMap<(usize, LinkEnd, LinkEnd), u64>,
    /// Frames handed to a live, running receiver, by (window, from, to), counted when
    /// delivered.
    pub received: BTreeMap<(usize, LinkEnd, LinkEnd), u64>,
    /// Frames a link fault dropped.
    pub frames_dropped: u64,
    /// Frames a link fault duplicated.
    pub frames_duplicated: u64,
    /// Events held for paused nodes and later handed over.
    pub events_held: u64,
    /// Events dropped because `HELD_EVENTS_MAX` were held already.
    pub events_held_dropped: u64,
}

/// The lab's state inside a running simulation.
#[derive(Debug)]
pub(super) struct LabState {
    plan: LabPlan,
    links: BTreeMap<(LinkEnd, LinkEnd), LinkFault>,
    paused: BTreeSet<usize>,
    held: BTreeMap<usize, Vec<Action>>,
    held_count: usize,
    started: Option<Time>,
    window: usize,
    next_begin: BTreeMap<usize, Time>,
    sampling: bool,
    record: LabRecord,
}

impl LabState {
    pub(super) fn new(plan: LabPlan) -> LabState {
        LabState {
            plan,
            links: BTreeMap::new(),
            paused: BTreeSet::new(),
            held: BTreeMap::new(),
            held_count: 0,
            started: None,
            window: 0,
            next_begin: BTreeMap::new(),
            sampling: false,
            record: LabRecord::default(),
        }
    }

    pub(super) fn settle_micros(&self) -> u64 {
        self.plan.settle.as_micros().min(u128::from(u64::MAX)) as u64
    }
}

/// `n3` → host index 2, if it names one of `nodes` hosts.
fn node_index(name: &str, nodes: usize) -> Option<usize> {
    let number: usize = name.strip_prefix('n')?.parse().ok()?;
    (1..=nodes).contains(&number).then(|| number - 1)
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros().min(u128::from(u64::MAX)) as u64
}

impl Simulation {
    /// The lab's end of a simulated endpoint: members are nodes, everyone else a client.
    fn link_end(&self, id: NodeId) -> LinkEnd {
        if self.cluster.is_member(id) {
            LinkEnd::Node((id.0 - 1) as usize)
        } else {
            LinkEnd::Clients
        }
    }

    fn link_end_of(&self, endpoint: &Endpoint) -> Option<LinkEnd> {
        match endpoint {
            Endpoint::Clients => Some(LinkEnd::Clients),
            Endpoint::Node(name) => node_index(name, self.hosts.len()).map(LinkEnd::Node),
        }
    }

    /// The workload starts: the timeline and the sampling are scheduled from now.
    pub(super) fn lab_start(&mut self) {
        let now = self.now;
        let clients = self.clients.len();
        let Some(lab) = self.lab.as_mut() else {
            return;
        };
        lab.started = Some(now);
        lab.record.workload_start_micros = now.as_micros();
        lab.sampling = true;
        let rate = lab.plan.rate;
        let steps: Vec<Duration> = lab.plan.steps.iter().map(|step| step.at).collect();
        let duration = lab.plan.duration;
        if rate > 0.0 {
            // Paced clients start one after another, 1/rate apart.
            for index in 0..clients {
                let offset = Duration::from_secs_f64(index as f64 / rate);
                lab.next_begin.insert(index, now.saturating_add(offset));
            }
        }
        for (index, at) in steps.into_iter().enumerate() {
            self.schedule(now.saturating_add(at), Action::LabStep { index });
        }
        self.schedule(now.saturating_add(duration), Action::LabWorkloadEnd);
        self.schedule(now, Action::LabSample);
    }

    /// Applies step `index` of the plan (during the workload only: the liveness phase
    /// heals everything itself).
    pub(super) fn on_lab_step(&mut self, index: usize) {
        if self.phase != Phase::Safety {
            return;
        }
        let Some(lab) = self.lab.as_mut() else {
            return;
        };
        let Some(step) = lab.plan.steps.get(index).cloned() else {
            return;
        };
        lab.window = index + 1;
        match step.action {
            LabAction::Network { links } => {
                let mut table = BTreeMap::new();
                for link in links {
                    let (Some(from), Some(to)) =
                        (self.link_end_of(&link.from), self.link_end_of(&link.to))
                    else {
                        continue;
                    };
                    table.insert((from, to), link);
                }
                if let Some(lab) = self.lab.as_mut() {
                    lab.links = table;
                }
            }
            LabAction::Kill { node } => {
                if let Some(index) = node_index(&node, self.hosts.len()) {
                    self.lab_kill(index);
                }
            }
            LabAction::Restart { node } => {
                if let Some(index) = node_index(&node, self.hosts.len()) {
                    self.restart(index);
                }
            }
            LabAction::Pause { node } => {
                if let (Some(index), Some(lab)) =
                    (node_index(&node, self.hosts.len()), self.lab.as_mut())
                {
                    lab.paused.insert(index);
                }
            }
            LabAction::Resume { node } => {
                if let Some(index) = node_index(&node, self.hosts.len()) {
                    self.lab_resume(index);
                }
            }
        }
    }

    /// SIGKILL: the simulator's crash; what was held for it while paused is lost with it.
    fn lab_kill(&mut self, index: usize) {
        if let Some(lab) = self.lab.as_mut() {
            lab.paused.remove(&index);
            let dropped = lab.held.remove(&index).map_or(0, |held| held.len());
            lab.held_count -= dropped;
        }
        self.power_cut(index, false);
    }

    /// SIGCONT: everything held for the node is handed over now, in arrival order.
    fn lab_resume(&mut self, index: usize) {
        let now = self.now;
        let Some(lab) = self.lab.as_mut() else {
            return;
        };
        lab.paused.remove(&index);
        let held = lab.held.remove(&index).unwrap_or_default();
        lab.held_count -= held.len();
        for action in held {
            self.schedule(now, action);
        }
    }

    /// If `action` is for a paused node, holds it and returns `None`.
    pub(super) fn lab_hold(&mut self, action: Action) -> Option<Action> {
        let target = match &action {
            Action::Deliver { to, .. } if self.cluster.is_member(*to) => Some((to.0 - 1) as usize),
            Action::NodeTimer { index, .. } | Action::Synced { index, .. } => Some(*index),
            _ => None,
        };
        let Some(lab) = self.lab.as_mut() else {
            return Some(action);
        };
        match target {
            Some(index) if lab.paused.contains(&index) => {
                if lab.held_count >= HELD_EVENTS_MAX {
                    lab.record.events_held_dropped += 1;
                } else {
                    lab.held_count += 1;
                    lab.record.events_held += 1;
                    lab.held.entry(index).or_default().push(action);
                }
                None
            }
            _ => Some(action),
        }
    }

    /// The workload's time is up: every fault heals and the liveness phase begins.
    pub(super) fn on_lab_workload_end(&mut self) {
        if self.phase == Phase::Safety {
            self.start_liveness();
        }
    }

    /// At the liveness phase: the network heals and paused nodes resume (crashed ones are
    /// restarted by the liveness phase itself).
    pub(super) fn lab_heal(&mut self) {
        let Some(lab) = self.lab.as_mut() else {
            return;
        };
        lab.links.clear();
        lab.window = lab.plan.steps.len() + 1;
        let paused: Vec<usize> = lab.paused.iter().copied().collect();
        for index in paused {
            self.lab_resume(index);
        }
    }

    /// Sends a frame under the lab's link faults (instead of the simulator's own).
    pub(super) fn lab_transmit(
        &mut self,
        from: NodeId,
        to: NodeId,
        messages: Vec<dtx_protocol::Message>,
    ) {
        let ends = (self.link_end(from), self.link_end(to));
        let Some(lab) = self.lab.as_ref() else {
            return;
        };
        let window = lab.window;
        let fault = lab.links.get(&ends).cloned();
        let (mut extra_micros, mut duplicate) = (0, false);
        if let Some(fault) = &fault {
            let lost = fault.drop >= 1.0 || (fault.drop > 0.0 && self.rng.chance(fault.drop));
            if lost {
                self.measured.stats.frames_lost += 1;
                if let Some(lab) = self.lab.as_mut() {
                    lab.record.frames_dropped += 1;
                }
                return;
            }
            extra_micros = micros(fault.delay);
            let jitter = micros(fault.jitter);
            if jitter > 0 {
                extra_micros = extra_micros.saturating_add(self.rng.between(0, jitter));
            }
            duplicate = fault.duplicate > 0.0 && self.rng.chance(fault.duplicate);
        }
        if let Some(lab) = self.lab.as_mut() {
            *lab.record
                .passed
                .entry((window, ends.0, ends.1))
                .or_default() += 1;
            lab.record.frames_duplicated += u64::from(duplicate);
        }
        if duplicate {
            let delay = self.sample_delay().saturating_add(extra_micros);
            self.after(
                delay,
                Action::Deliver {
                    from,
                    to,
                    messages: messages.clone(),
                },
            );
        }
        let delay = self.sample_delay().saturating_add(extra_micros);
        self.after(delay, Action::Deliver { from, to, messages });
    }

    /// Counts a frame handed to its receiver (a live node or client).
    pub(super) fn lab_received(&mut self, from: NodeId, to: NodeId) {
        let ends = (self.link_end(from), self.link_end(to));
        let alive = match ends.1 {
            LinkEnd::Node(index) => self.hosts[index].node.is_some(),
            LinkEnd::Clients => true,
        };
        if let Some(lab) = self.lab.as_mut() {
            let window = lab.window;
            if alive {
                *lab.record
                    .received
                    .entry((window, ends.0, ends.1))
                    .or_default() += 1;
            }
        }
    }

    /// Paced clients (a rate in the plan): whether client `index` may begin a new
    /// transaction now; if not, its next attempt is scheduled when it may.
    pub(super) fn lab_paced(&mut self, index: usize, incarnation: u64) -> bool {
        let now = self.now;
        let follow_up = self.workload.has_follow_up(index);
        let clients = self.clients.len();
        let Some(lab) = self.lab.as_mut() else {
            return true;
        };
        if lab.plan.rate <= 0.0 || follow_up {
            return true;
        }
        let due = lab.next_begin.get(&index).copied().unwrap_or(now);
        if due > now {
            self.schedule(due, Action::ClientNext { index, incarnation });
            return false;
        }
        let interval = Duration::from_secs_f64(clients as f64 / lab.plan.rate);
        lab.next_begin
            .insert(index, due.max(now).saturating_add(interval));
        true
    }

    /// Samples every node, and schedules the next sample while the run is still before
    /// its final phase.
    pub(super) fn on_lab_sample(&mut self) {
        let sampling = self.lab.as_ref().is_some_and(|lab| lab.sampling);
        if !sampling || self.phase >= Phase::Final {
            return;
        }
        self.lab_sample();
        if let Some(lab) = self.lab.as_ref() {
            let interval = micros(lab.plan.sample_interval).max(1);
            self.after(interval, Action::LabSample);
        }
    }

    /// The last sample, when the settle ends (before the final power cut), and no more.
    pub(super) fn lab_last_sample(&mut self) {
        if self.lab.as_ref().is_some_and(|lab| lab.sampling) {
            self.lab_sample();
        }
        if let Some(lab) = self.lab.as_mut() {
            lab.sampling = false;
        }
    }

    fn lab_sample(&mut self) {
        let now = self.now;
        let Some(lab) = self.lab.as_ref() else {
            return;
        };
        let started = lab.started.unwrap_or(now);
        let time_micros = now.since(started).as_micros() as u64;
        let samples: Vec<NodeSample> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let paused = lab.paused.contains(&index);
                match &host.node {
                    Some(node) => NodeSample {
                        time_micros,
                        index,
                        up: !paused,
                        in_doubt: node.undecided().count() as u64,
                        suspected: node.suspected().len() as u64,
                    },
                    None => NodeSample {
                        time_micros,
                        index,
                        up: false,
                        in_doubt: 0,
                        suspected: 0,
                    },
                }
            })
            .collect();
        if let Some(lab) = self.lab.as_mut() {
            lab.record.samples.extend(samples);
        }
    }

    /// What the lab recorded (taken out at the end of the run).
    pub(super) fn take_lab_record(&mut self) -> LabRecord {
        let end = self.now.as_micros();
        match self.lab.as_mut() {
            Some(lab) => {
                let mut record = std::mem::take(&mut lab.record);
                record.end_micros = end;
                record
            }
            None => LabRecord::default(),
        }
    }
}
