//! A failure-detection experiment: many members running only the protocol's gossip
//! heartbeat detector over the simulated network, one of them crashing, to measure how
//! long the others take to suspect it, how often they suspect a live member, and what the
//! gossip costs.

use dtx_protocol::{encode, FailureDetector, Message, NodeId, Rng, Role, Time};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// One experiment.
#[derive(Clone, Debug)]
pub struct HeartbeatExperiment {
    /// Seed of every random choice.
    pub seed: u64,
    /// Members.
    pub nodes: usize,
    /// Detector tuning.
    pub detector: dtx_protocol::DetectorConfig,
    /// Shortest one-way delay.
    pub delay_min_micros: u64,
    /// Longest one-way delay.
    pub delay_max_micros: u64,
    /// Chance a gossip message is lost.
    pub loss: f64,
    /// Simulated time before the crash.
    pub warmup_micros: u64,
    /// Simulated time after the crash.
    pub after_crash_micros: u64,
    /// Count suspicions of live members (costs a phi evaluation per member pair per check).
    pub count_false_suspicions: bool,
}

/// What an experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct HeartbeatReport {
    /// Members.
    pub nodes: usize,
    /// Median crash-to-suspicion time over the live members (ms).
    pub detection_p50_ms: f64,
    /// 99th percentile (ms).
    pub detection_p99_ms: f64,
    /// Slowest member (ms).
    pub detection_max_ms: f64,
    /// Live members that never suspected the crashed one.
    pub undetected: usize,
    /// The simple model's expectation (ms): gossip age of the last heartbeat plus the
    /// silence at which phi crosses the threshold.
    pub expected_detection_ms: f64,
    /// Checks at which a live member suspected another live member.
    pub false_suspicions: u64,
    /// Member-pair checks made for that count.
    pub false_suspicion_checks: u64,
    /// Gossip bytes each member sends per second (CBOR frames).
    pub bytes_per_node_per_second: f64,
    /// Wall-clock seconds per simulated second.
    pub wall_seconds_per_simulated_second: f64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Round(usize),
    /// To member `usize`, from member `NodeId`, its digest.
    Deliver(usize, dtx_protocol::NodeId, Vec<dtx_protocol::Heartbeat>),
    Check,
}

/// Runs one experiment.
pub fn run_heartbeats(experiment: &HeartbeatExperiment) -> HeartbeatReport {
    let started = Instant::now();
    let mut rng = Rng::new(experiment.seed);
    let members: Vec<NodeId> = (1..=experiment.nodes as u64).map(NodeId).collect();
    let mut detectors: Vec<FailureDetector> = members
        .iter()
        .map(|node| {
            let offset = Time(rng.below(experiment.detector.interval.as_micros() as u64 + 1));
            let mut detector = FailureDetector::new(
                experiment.detector.clone(),
                *node,
                Role::DataNode,
                1,
                experiment.seed,
                offset,
            );
            detector.set_addresses(vec![crate::simulated_address(*node)]);
            detector
        })
        .collect();
    let crashed = rng.below(experiment.nodes as u64) as usize;
    let crash_at = Time(experiment.warmup_micros);
    let end = crash_at.saturating_add(Duration::from_micros(experiment.after_crash_micros));
    let check_every = (experiment.detector.interval.as_micros() as u64 / 4).max(1);
    let mut queue: BinaryHeap<Reverse<(Time, u64, Step)>> = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut push = |queue: &mut BinaryHeap<Reverse<(Time, u64, Step)>>, at: Time, step: Step| {
        sequence += 1;
        queue.push(Reverse((at, sequence, step)));
    };
    for (index, detector) in detectors.iter().enumerate() {
        push(&mut queue, detector.poll_timeout(), Step::Round(index));
    }
    push(&mut queue, Time(check_every), Step::Check);
    let mut detected_at: Vec<Option<Time>> = vec![None; experiment.nodes];
    let mut bytes_sent = 0u64;
    let mut false_suspicions = 0u64;
    let mut false_checks = 0u64;
    while let Some(Reverse((now, _, step))) = queue.pop() {
        if now > end {
            break;
        }
        let alive = |index: usize| index != crashed || now < crash_at;
        match step {
            Step::Round(index) => {
                if !alive(index) {
                    continue;
                }
                if let Some((targets, digest)) = detectors[index].round(now, &members) {
                    let frame = encode(&[Message::Gossip {
                        heartbeats: digest.clone(),
                    }])
                    .map(|frame| frame.len())
                    .unwrap_or(0);
                    for target in targets {
                        bytes_sent += frame as u64;
                        if rng.chance(experiment.loss) {
                            continue;
                        }
                        let delay =
                            rng.between(experiment.delay_min_micros, experiment.delay_max_micros);
                        push(
                            &mut queue,
                            now.saturating_add(Duration::from_micros(delay)),
                            Step::Deliver((target.0 - 1) as usize, members[index], digest.clone()),
                        );
                    }
                }
                push(
                    &mut queue,
                    detectors[index].poll_timeout(),
                    Step::Round(index),
                );
            }
            Step::Deliver(index, from, digest) => {
                if alive(index) {
                    detectors[index].merge(now, from, &digest);
                }
            }
            Step::Check => {
                for index in 0..experiment.nodes {
                    if !alive(index) {
                        continue;
                    }
                    if now >= crash_at
                        && detected_at[index].is_none()
                        && detectors[index].is_suspected(now, members[crashed])
                    {
                        detected_at[index] = Some(now);
                    }
                    if experiment.count_false_suspicions {
                        for (other, member) in members.iter().enumerate() {
                            if other == index || !alive(other) {
                                continue;
                            }
                            false_checks += 1;
                            if detectors[index].is_suspected(now, *member) {
                                false_suspicions += 1;
                            }
                        }
                    }
                }
                push(
                    &mut queue,
                    now.saturating_add(Duration::from_micros(check_every)),
                    Step::Check,
                );
            }
        }
    }
    let mut latencies: Vec<f64> = detected_at
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != crashed)
        .filter_map(|(_, at)| at.map(|at| at.since(crash_at).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let undetected = experiment.nodes - 1 - latencies.len();
    let percentile = |fraction: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        latencies[((latencies.len() - 1) as f64 * fraction).round() as usize]
    };
    let simulated_seconds = end.as_micros() as f64 / 1e6;
    HeartbeatReport {
        nodes: experiment.nodes,
        detection_p50_ms: percentile(0.5),
        detection_p99_ms: percentile(0.99),
        detection_max_ms: latencies.last().copied().unwrap_or(0.0),
        undetected,
        expected_detection_ms: expected_detection_ms(experiment),
        false_suspicions,
        false_suspicion_checks: false_checks,
        bytes_per_node_per_second: bytes_sent as f64 / experiment.nodes as f64 / simulated_seconds,
        wall_seconds_per_simulated_second: started.elapsed().as_secs_f64() / simulated_seconds,
    }
}

/// The simple model: the crashed member's last counter reaches everyone after about
/// log(N)/log(1+fanout) gossip rounds (epidemic spread), and a member suspects once the
/// silence exceeds mean + pause + about 5.3 deviations (phi = 8 with the logistic CDF).
/// Interarrival mean is one interval; its deviation is at least the configured floor.
pub fn expected_detection_ms(experiment: &HeartbeatExperiment) -> f64 {
    let config = &experiment.detector;
    let interval = config.interval.as_secs_f64() * 1000.0;
    let rounds = (experiment.nodes as f64).ln() / (1.0 + config.fanout as f64).ln();
    let delay = (experiment.delay_min_micros + experiment.delay_max_micros) as f64 / 2000.0;
    let deviation = (config.std_deviation_min.as_secs_f64() * 1000.0).max(interval / 4.0);
    let sigmas = sigmas_for_phi(config.phi_threshold);
    let silence = interval + config.acceptable_pause.as_secs_f64() * 1000.0 + sigmas * deviation;
    // The last counter was bumped half an interval before the crash on average and reaches
    // an observer `rounds` hops later (each hop: a delay plus half a round of waiting); the
    // observer suspects once `silence` has passed since that arrival.
    let propagation = rounds * (delay + interval / 2.0);
    -interval / 2.0 + propagation + silence
}

/// How many deviations late phi reaches `threshold` (inverting the logistic approximation).
fn sigmas_for_phi(threshold: f64) -> f64 {
    let mut low = 0.0;
    let mut high = 50.0;
    for _ in 0..100 {
        let middle = (low + high) / 2.0;
        if dtx_protocol::detector::phi(middle, 0.0, 1.0) > threshold {
            high = middle;
        } else {
            low = middle;
        }
    }
    high
}
