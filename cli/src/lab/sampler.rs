//! Samples every node's `/status` (in-doubt transactions, suspected members) on a fixed
//! period and its `/metrics` less often, prints a progress line each second, and tells
//! when the cluster has settled (every node answering, nothing in doubt).

use super::nemesis::NodeHandles;
use crate::bench::Progress;
use dtx_node::control::{fetch_status, request};
use dtx_sim::lab::Sample;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long one `/status` request may take before the node counts as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_millis(400);
/// `/metrics` is saved every this many samples.
const METRICS_EVERY: u64 = 10;

/// Which nodes are stopped (killed or paused) right now, shared with the nemesis.
#[derive(Clone, Debug, Default)]
pub struct NodeStates(Arc<Mutex<BTreeMap<String, bool>>>);

impl NodeStates {
    /// Marks `node` stopped or running.
    pub fn set_down(&self, node: &str, down: bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.to_string(), down);
    }

    /// True while `node` is killed or paused.
    pub fn is_down(&self, node: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .copied()
            .unwrap_or(false)
    }
}

/// The running sampler.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    states: NodeStates,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
    nodes: usize,
}

impl Sampler {
    /// Starts sampling `nodes` every `every`; `/metrics` texts go to `metrics_dir`.
    pub fn start(
        nodes: NodeHandles,
        started: Instant,
        every: Duration,
        metrics_dir: PathBuf,
        progress: Arc<Progress>,
    ) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let states = NodeStates::default();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let count = nodes.control.len();
        let task = {
            let samples = Arc::clone(&samples);
            let states = states.clone();
            tokio::spawn(async move {
                let _ = std::fs::create_dir_all(&metrics_dir);
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut round = 0u64;
                let mut last_print = Instant::now();
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    let mut taken = Vec::new();
                    for (name, address) in &nodes.control {
                        let time_s = started.elapsed().as_secs_f64();
                        let status = if states.is_down(name) {
                            None
                        } else {
                            tokio::time::timeout(STATUS_TIMEOUT, fetch_status(*address))
                                .await
                                .ok()
                                .and_then(Result::ok)
                        };
                        taken.push(match status {
                            Some(status) => Sample {
                                time_s,
                                node: name.clone(),
                                up: true,
                                in_doubt: status.in_doubt.len() as u64,
                                suspected: status
                                    .members
                                    .iter()
                                    .filter(|member| member.suspected)
                                    .count() as u64,
                            },
                            None => Sample {
                                time_s,
                                node: name.clone(),
                                up: false,
                                in_doubt: 0,
                                suspected: 0,
                            },
                        });
                        if round.is_multiple_of(METRICS_EVERY) && !states.is_down(name) {
                            save_metrics(&metrics_dir, name, *address, time_s).await;
                        }
                    }
                    round += 1;
                    if last_print.elapsed() >= Duration::from_secs(1) {
                        last_print = Instant::now();
                        print_progress(&taken, &progress, started);
                    }
                    samples
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(taken);
                }
            })
        };
        Sampler {
            samples,
            states,
            stop,
            task,
            started,
            nodes: count,
        }
    }

    /// The up/down state the nemesis updates.
    pub fn state(&self) -> NodeStates {
        self.states.clone()
    }

    /// Waits until a round of samples taken after this call shows every node answering
    /// with nothing in doubt; returns how long that took (`None`: not within `limit`).
    pub async fn wait_settled(&self, limit: Duration) -> Option<Duration> {
        let asked = Instant::now();
        let from_s = self.started.elapsed().as_secs_f64();
        loop {
            {
                let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
                let mut latest: BTreeMap<&str, &Sample> = BTreeMap::new();
                for sample in samples.iter().filter(|sample| sample.time_s >= from_s) {
                    latest.insert(sample.node.as_str(), sample);
                }
                if latest.len() == self.nodes
                    && latest
                        .values()
                        .all(|sample| sample.up && sample.in_doubt == 0)
                {
                    return Some(asked.elapsed());
                }
            }
            if asked.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops sampling; returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.clone()
    }
}

fn print_progress(taken: &[Sample], progress: &Progress, started: Instant) {
    let nodes: Vec<String> = taken
        .iter()
        .map(|sample| {
            if sample.up {
                format!("{}:{}", sample.node, sample.in_doubt)
            } else {
                format!("{}:down", sample.node)
            }
        })
        .collect();
    println!(
        "  {:>5.0}s  committed {:>6}  aborted {:>5}  unknown {:>4}  in doubt {}",
        started.elapsed().as_secs_f64(),
        progress.committed.load(Ordering::Relaxed),
        progress.aborted.load(Ordering::Relaxed),
        progress.unknown.load(Ordering::Relaxed),
        nodes.join(" ")
    );
}

async fn save_metrics(
    dir: &std::path::Path,
    name: &str,
    address: std::net::SocketAddr,
    time_s: f64,
) {
    let Ok(Ok((200, text))) =
        tokio::time::timeout(STATUS_TIMEOUT, request(address, "GET", "/metrics", None)).await
    else {
        return;
    };
    let path = dir.join(format!("{name}.prom"));
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "# sample at {time_s:.3}s");
        let _ = file.write_all(text.as_bytes());
    }
}
