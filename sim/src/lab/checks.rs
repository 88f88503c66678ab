//! Verdicts computed from a lab outcome, the same for real and simulated runs: isolation
//! of the history (Elle's rw-register analysis, by the `adya` crate), recovery after each
//! fault, and nothing left in doubt. Workload-specific audits (bank conservation, no
//! partial order, no acknowledged commit lost) need the cluster's final state and are made
//! by each runner.

use super::outcome::{completions, Check, HistoryOp, OpType, Sample};
use super::scenario::Interval;
use std::time::Duration;

/// How long the cycle search may take per strongly connected component.
const CYCLE_SEARCH_BUDGET: Duration = Duration::from_secs(20);

/// The history checked for `model` (`"serializable"` or `"strict-serializable"`) as an
/// rw-register history: only for workloads whose writes are unique per key (register).
pub fn isolation(history: &[HistoryOp], model: &str) -> Check {
    let name = format!("history is {model} (Elle rw-register, adya)");
    let mut text = String::new();
    for op in history {
        match serde_json::to_string(op) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(error) => return Check::new(name, false, format!("history unreadable: {error}")),
        }
    }
    let parsed = match adya::History::from_json(&text) {
        Ok(parsed) => parsed,
        Err(error) => return Check::new(name, false, format!("history unreadable: {error}")),
    };
    let options = adya::Opts {
        models: vec![model.to_string()],
        timeout: CYCLE_SEARCH_BUDGET,
        ..adya::Opts::default()
    };
    let report = adya::check(&parsed, adya::Workload::RwRegister, &options);
    let committed = history.iter().filter(|op| op.kind == OpType::Ok).count();
    match report.valid {
        adya::Valid::True => Check::new(
            name,
            true,
            format!("{committed} committed transactions, no anomaly"),
        ),
        adya::Valid::Unknown
            if report
                .anomaly_types
                .iter()
                .all(|kind| kind == "empty-transaction-graph") =>
        {
            Check::new(
                name,
                true,
                format!("{committed} committed transactions, no dependency between them to check"),
            )
        }
        adya::Valid::Unknown => Check::new(
            name,
            false,
            format!("could not decide: {}", report.anomaly_types.join(", ")),
        ),
        adya::Valid::False => {
            let mut detail = format!("anomalies: {}", report.anomaly_types.join(", "));
            if let Some(first) = report.anomalies.values().flatten().next() {
                detail.push_str(&format!("; first: {}", first.explanation));
            }
            Check::new(name, false, detail)
        }
    }
}

/// Per fault: seconds from its end until the first transaction committed after it
/// (`None`: nothing committed after it).
pub fn recovery_times(
    history: &[HistoryOp],
    intervals: &[Interval],
) -> Vec<(Interval, Option<f64>)> {
    let mut commits: Vec<f64> = completions(history)
        .into_iter()
        .filter(|(_, _, kind)| *kind == OpType::Ok)
        .map(|(_, end, _)| end as f64 / 1e9)
        .collect();
    commits.sort_by(f64::total_cmp);
    intervals
        .iter()
        .map(|interval| {
            let index = commits.partition_point(|time| *time < interval.end_s);
            let first = commits.get(index).map(|time| time - interval.end_s);
            (interval.clone(), first)
        })
        .collect()
}

/// Commits per second while some fault was in force and while none was.
pub fn commit_rates(history: &[HistoryOp], intervals: &[Interval], run_s: f64) -> (f64, f64) {
    let faulty = |time: f64| {
        intervals
            .iter()
            .any(|interval| interval.start_s <= time && time < interval.end_s)
    };
    let mut during = 0u64;
    let mut outside = 0u64;
    for (_, end, kind) in completions(history) {
        if kind == OpType::Ok {
            if faulty(end as f64 / 1e9) {
                during += 1;
            } else {
                outside += 1;
            }
        }
    }
    // The union of the intervals, clipped to the run.
    let mut spans: Vec<(f64, f64)> = intervals
        .iter()
        .map(|interval| (interval.start_s.max(0.0), interval.end_s.min(run_s)))
        .filter(|(start, end)| end > start)
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut faulty_s = 0.0;
    let mut reach = f64::MIN;
    for (start, end) in spans {
        let start = start.max(reach);
        if end > start {
            faulty_s += end - start;
            reach = end;
        }
    }
    let quiet_s = (run_s - faulty_s).max(0.0);
    let rate = |count: u64, seconds: f64| {
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    (rate(during, faulty_s), rate(outside, quiet_s))
}

/// The last sample of each node must show nothing in doubt.
pub fn nothing_in_doubt(samples: &[Sample]) -> Check {
    let mut last: std::collections::BTreeMap<&str, &Sample> = std::collections::BTreeMap::new();
    for sample in samples {
        last.insert(sample.node.as_str(), sample);
    }
    let doubtful: Vec<String> = last
        .values()
        .filter(|sample| !sample.up || sample.in_doubt > 0)
        .map(|sample| {
            if sample.up {
                format!("{} holds {} undecided", sample.node, sample.in_doubt)
            } else {
                format!("{} is not answering", sample.node)
            }
        })
        .collect();
    Check::new(
        "nothing in doubt after heal",
        doubtful.is_empty() && !last.is_empty(),
        if last.is_empty() {
            "no sample of any node".to_string()
        } else if doubtful.is_empty() {
            format!("{} nodes, every transaction decided", last.len())
        } else {
            doubtful.join("; ")
        },
    )
}

/// Counts of ok / fail / info completions.
pub fn outcome_counts(history: &[HistoryOp]) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for op in history {
        match op.kind {
            OpType::Ok => counts.0 += 1,
            OpType::Fail => counts.1 += 1,
            OpType::Info => counts.2 += 1,
            OpType::Invoke => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(
        index: u64,
        kind: OpType,
        process: u64,
        time_ms: u64,
        value: serde_json::Value,
    ) -> HistoryOp {
        HistoryOp {
            index,
            kind,
            process,
            f: "txn".into(),
            time: time_ms * 1_000_000,
            value,
            error: None,
        }
    }

    #[test]
    fn a_serializable_history_passes_and_a_cyclic_one_fails() {
        // T1 writes x=1, then T2 reads x=1 and writes y=2: serializable.
        let good = vec![
            op(0, OpType::Invoke, 0, 1, json!([["w", "x", "1"]])),
            op(1, OpType::Ok, 0, 2, json!([["w", "x", "1"]])),
            op(
                2,
                OpType::Invoke,
                1,
                3,
                json!([["r", "x", null], ["w", "y", "2"]]),
            ),
            op(
                3,
                OpType::Ok,
                1,
                4,
                json!([["r", "x", "1"], ["w", "y", "2"]]),
            ),
        ];
        let check = isolation(&good, "serializable");
        assert!(check.holds, "{check:?}");
        // Each reads what the other wrote: a write-read cycle (G1c).
        let bad = vec![
            op(
                0,
                OpType::Invoke,
                0,
                1,
                json!([["r", "x", null], ["w", "y", "1"]]),
            ),
            op(
                1,
                OpType::Invoke,
                1,
                1,
                json!([["r", "y", null], ["w", "x", "2"]]),
            ),
            op(
                2,
                OpType::Ok,
                0,
                2,
                json!([["r", "x", "2"], ["w", "y", "1"]]),
            ),
            op(
                3,
                OpType::Ok,
                1,
                2,
                json!([["r", "y", "1"], ["w", "x", "2"]]),
            ),
        ];
        let check = isolation(&bad, "serializable");
        assert!(!check.holds, "{check:?}");
        assert!(check.detail.contains("G1c"), "{check:?}");
    }

    #[test]
    fn recovery_is_measured_from_each_faults_end_to_the_next_commit() {
        let history = vec![
            op(0, OpType::Invoke, 0, 1000, json!([])),
            op(1, OpType::Ok, 0, 1100, json!([])),
            op(2, OpType::Invoke, 0, 1200, json!([])),
            op(3, OpType::Ok, 0, 5300, json!([])),
        ];
        let interval = Interval {
            name: "halves".into(),
            detail: String::new(),
            start_s: 2.0,
            end_s: 5.0,
        };
        let times = recovery_times(&history, std::slice::from_ref(&interval));
        assert!((times[0].1.expect("a commit after") - 0.3).abs() < 1e-9);
        let (during, outside) = commit_rates(&history, &[interval], 10.0);
        assert_eq!(during, 0.0);
        assert!((outside - 2.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn a_node_still_in_doubt_or_down_fails_the_settle_check() {
        let sample = |node: &str, up, in_doubt| Sample {
            time_s: 1.0,
            node: node.into(),
            up,
            in_doubt,
            suspected: 0,
        };
        assert!(nothing_in_doubt(&[sample("n1", true, 0), sample("n2", true, 0)]).holds);
        assert!(!nothing_in_doubt(&[sample("n1", true, 0), sample("n2", true, 3)]).holds);
        assert!(!nothing_in_doubt(&[sample("n1", false, 0)]).holds);
        assert!(!nothing_in_doubt(&[]).holds);
    }
}
