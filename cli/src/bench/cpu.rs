//! The cost of a committed transaction: CPU time, protocol messages and fsyncs per
//! commit, over the measured window of a `dtx bench` run.
//!
//! Each data node's counters are scraped from its control endpoint's `/metrics` right
//! before and right after the window (`process_cpu_seconds_total`,
//! `dtx_messages_sent_total`, `dtx_wal_fsyncs_total`), and the bench client's own CPU time
//! comes from its `/proc/self/stat`. CPU per transaction counts every process of the run,
//! so it is far steadier than throughput on a shared machine: a busy neighbour slows the
//! run down but does not add to its CPU time. A node whose metrics cannot be read makes
//! the figures that need it `null` with a warning; it never fails the bench.

use dtx_node::config::ClusterConfig;
use dtx_node::process_metrics;
use serde::Serialize;
use std::net::SocketAddr;
use tokio::task::JoinSet;

/// The CPU counter of every node (seconds, a float).
pub const CPU_SECONDS_METRIC: &str = "process_cpu_seconds_total";
/// Protocol messages a node sent to peers and clients.
pub const MESSAGES_SENT_METRIC: &str = "dtx_messages_sent_total";
/// Group commits of a node's write-ahead log, one fsync each.
pub const FSYNCS_METRIC: &str = "dtx_wal_fsyncs_total";
/// Writes a node handed to its transport (stream writes and requests).
pub const WRITES_METRIC: &str = "dtx_transport_writes_total";

/// One node's counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeCounters {
    /// `process_cpu_seconds_total` (`None`: not exported, e.g. not Linux).
    pub cpu_seconds: Option<f64>,
    /// `dtx_messages_sent_total`.
    pub messages_sent: Option<f64>,
    /// `dtx_wal_fsyncs_total`.
    pub fsyncs: Option<f64>,
    /// `dtx_transport_writes_total`.
    pub writes: Option<f64>,
}

/// The whole run's counters at one instant: each sum is `None` when a node's value
/// could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// CPU seconds of every data node, summed.
    pub nodes_cpu_seconds: Option<f64>,
    /// CPU seconds of this (the bench client's) process.
    pub client_cpu_seconds: Option<f64>,
    /// Messages every data node sent, summed.
    pub messages_sent: Option<f64>,
    /// fsyncs of every data node, summed.
    pub fsyncs: Option<f64>,
    /// Transport writes of every data node, summed.
    pub writes: Option<f64>,
}

/// What a committed transaction cost over the measured window, reported by
/// `dtx bench --json` (`null`: a counter could not be read, or nothing committed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Costs {
    /// CPU microseconds of every data node and of the bench client, per committed unit.
    pub cpu_us_per_txn: Option<f64>,
    /// The bench client's share of `cpu_us_per_txn`.
    pub client_cpu_us_per_txn: Option<f64>,
    /// Protocol messages the data nodes sent (to each other and to the client), per
    /// committed unit.
    pub msgs_per_txn: Option<f64>,
    /// Write-ahead log fsyncs of every data node, per committed unit.
    pub fsyncs_per_txn: Option<f64>,
    /// Messages per transport write of every data node: how well sends are batched
    /// (1.0: every message went alone).
    pub msgs_per_write: Option<f64>,
}

impl Costs {
    /// The costs per committed unit between two samples of the same run.
    pub fn between(before: &Sample, after: &Sample, committed: u64) -> Costs {
        if committed == 0 {
            return Costs::default();
        }
        let per_txn = |before: Option<f64>, after: Option<f64>, scale: f64| {
            let spent = after? - before?;
            // A counter that went down was reset (a node restarted in the window).
            (spent >= 0.0).then(|| spent * scale / committed as f64)
        };
        let client = per_txn(before.client_cpu_seconds, after.client_cpu_seconds, 1e6);
        let nodes = per_txn(before.nodes_cpu_seconds, after.nodes_cpu_seconds, 1e6);
        Costs {
            cpu_us_per_txn: nodes.zip(client).map(|(nodes, client)| nodes + client),
            client_cpu_us_per_txn: client,
            msgs_per_txn: per_txn(before.messages_sent, after.messages_sent, 1.0),
            fsyncs_per_txn: per_txn(before.fsyncs, after.fsyncs, 1.0),
            msgs_per_write: per_txn(before.messages_sent, after.messages_sent, 1.0)
                .zip(per_txn(before.writes, after.writes, 1.0))
                .and_then(|(messages, writes)| (writes > 0.0).then(|| messages / writes)),
        }
    }

    /// One line for the human-readable report.
    pub fn describe(&self) -> String {
        let show = |value: Option<f64>, digits: usize| {
            value.map_or("unknown".to_string(), |value| format!("{value:.digits$}"))
        };
        format!(
            "per committed transaction: {} µs CPU ({} µs of it the bench client), {} messages ({} per transport write), {} fsyncs",
            show(self.cpu_us_per_txn, 0),
            show(self.client_cpu_us_per_txn, 0),
            show(self.msgs_per_txn, 2),
            show(self.msgs_per_write, 2),
            show(self.fsyncs_per_txn, 3),
        )
    }
}

/// Reads every data node's counters (at once) and this process's CPU time. Failures are
/// logged as warnings and leave the sums they touch `None`.
pub async fn sample(config: &ClusterConfig) -> Sample {
    let mut scrapes = JoinSet::new();
    let mut unreadable = false;
    for node in &config.nodes {
        match node.control {
            Some(address) => {
                let name = node.name.clone();
                scrapes.spawn(async move { (name, scrape(address).await) });
            }
            None => {
                tracing::warn!(
                    node = %node.name,
                    "the node declares no control address: CPU, messages and fsyncs per transaction are unknown"
                );
                unreadable = true;
            }
        }
    }
    let mut nodes = Vec::new();
    while let Some(joined) = scrapes.join_next().await {
        match joined {
            Ok((_, Ok(counters))) => nodes.push(counters),
            Ok((name, Err(error))) => {
                tracing::warn!(node = %name, %error, "cannot read the node's metrics: its costs per transaction are unknown");
                unreadable = true;
            }
            Err(error) => {
                tracing::warn!(%error, "a metrics scrape failed");
                unreadable = true;
            }
        }
    }
    let sum = |field: fn(&NodeCounters) -> Option<f64>| {
        if unreadable {
            return None;
        }
        nodes.iter().map(field).sum::<Option<f64>>()
    };
    let client_cpu_seconds = match process_metrics::cpu_seconds() {
        Ok(seconds) => Some(seconds),
        Err(error) => {
            tracing::warn!(%error, "cannot read the bench client's CPU time");
            None
        }
    };
    Sample {
        nodes_cpu_seconds: sum(|node| node.cpu_seconds),
        client_cpu_seconds,
        messages_sent: sum(|node| node.messages_sent),
        fsyncs: sum(|node| node.fsyncs),
        writes: sum(|node| node.writes),
    }
}

/// One node's counters from its `/metrics`.
async fn scrape(address: SocketAddr) -> Result<NodeCounters, String> {
    let (status, text) = dtx_node::control::request(address, "GET", "/metrics", None)
        .await
        .map_err(|error| error.to_string())?;
    if status != 200 {
        return Err(format!("/metrics answered status {status}"));
    }
    Ok(NodeCounters {
        cpu_seconds: metric_value(&text, CPU_SECONDS_METRIC),
        messages_sent: metric_value(&text, MESSAGES_SENT_METRIC),
        fsyncs: metric_value(&text, FSYNCS_METRIC),
        writes: metric_value(&text, WRITES_METRIC),
    })
}

/// The value of the first sample of metric `name` in a text exposition (a node labels
/// its one sample of each counter with its name): `name{labels} value` or `name value`.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = if rest.starts_with('{') {
            &rest[rest.rfind('}')? + 1..]
        } else if rest.starts_with(' ') {
            rest
        } else {
            return None;
        };
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# HELP dtx_messages_sent Protocol messages sent to peers.\n\
        # TYPE dtx_messages_sent counter\n\
        dtx_messages_sent_total{node=\"n1\"} 1200\n\
        dtx_messages_sent_total_extra{node=\"n1\"} 7\n\
        # TYPE process_cpu_seconds counter\n\
        process_cpu_seconds_total{node=\"n1\"} 2.5\n\
        dtx_wal_fsyncs_total 40\n\
        # EOF\n";

    #[test]
    fn metric_values_are_read_with_or_without_labels() {
        assert_eq!(metric_value(EXPOSITION, CPU_SECONDS_METRIC), Some(2.5));
        assert_eq!(metric_value(EXPOSITION, MESSAGES_SENT_METRIC), Some(1200.0));
        assert_eq!(metric_value(EXPOSITION, FSYNCS_METRIC), Some(40.0));
        assert_eq!(metric_value(EXPOSITION, "dtx_messages_sent"), None);
        assert_eq!(metric_value(EXPOSITION, "absent_total"), None);
        assert_eq!(metric_value("x_total{node=\"a\"", "x_total"), None);
    }

    #[test]
    fn costs_divide_what_every_process_spent_by_the_commits() {
        let before = Sample {
            nodes_cpu_seconds: Some(10.0),
            client_cpu_seconds: Some(1.0),
            messages_sent: Some(100.0),
            fsyncs: Some(10.0),
            writes: Some(50.0),
        };
        let after = Sample {
            nodes_cpu_seconds: Some(11.5),
            client_cpu_seconds: Some(1.5),
            messages_sent: Some(10_100.0),
            fsyncs: Some(510.0),
            writes: Some(4_050.0),
        };
        let costs = Costs::between(&before, &after, 1000);
        assert_eq!(costs.cpu_us_per_txn, Some(2000.0));
        assert_eq!(costs.client_cpu_us_per_txn, Some(500.0));
        assert_eq!(costs.msgs_per_txn, Some(10.0));
        assert_eq!(costs.fsyncs_per_txn, Some(0.5));
        assert_eq!(costs.msgs_per_write, Some(2.5));
        assert_eq!(Costs::between(&before, &after, 0), Costs::default());
        // An unreadable or reset counter makes its figure unknown, not wrong.
        let unreadable = Sample {
            nodes_cpu_seconds: None,
            ..after
        };
        let costs = Costs::between(&before, &unreadable, 1000);
        assert_eq!(costs.cpu_us_per_txn, None);
        assert_eq!(costs.msgs_per_txn, Some(10.0));
        let reset = Sample {
            fsyncs: Some(5.0),
            ..after
        };
        assert_eq!(Costs::between(&before, &reset, 1000).fsyncs_per_txn, None);
        let json = serde_json::to_string(&Costs::default()).expect("serializable");
        assert!(json.contains("\"cpu_us_per_txn\":null"), "{json}");
    }
}
