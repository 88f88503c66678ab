//! The workload audits after the cluster settled, through new transactions: registers
//! read back (and the read appended to the history, so the isolation check sees it), money
//! counted, orders matched against stock, payments and shipments.

use super::LabError;
use crate::bench::{self, BenchReport};
use dtx_node::client::Client;
use dtx_sim::lab::scenario::LabWorkload;
use dtx_sim::lab::{Check, HistoryOp, OpType, Scenario};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `process` of the final read in the history (no worker has it).
pub const AUDIT_PROCESS: u64 = 1_000_000;

/// Runs the audits of `scenario`'s workload; may append the final read to `history`.
pub async fn audit(
    client: &Client,
    scenario: &Scenario,
    report: &BenchReport,
    history: &mut Vec<HistoryOp>,
    now: Duration,
) -> Result<Vec<Check>, LabError> {
    match scenario.workload.kind {
        LabWorkload::Register => {
            let keys: Vec<String> = (0..scenario.workload.keys)
                .map(|index| format!("reg-{index}"))
                .collect();
            let invoked = now.as_nanos().min(u128::from(u64::MAX)) as u64;
            let values = bench::read_all(client, &keys).await?;
            let completed = invoked.saturating_add(1);
            Ok(vec![register_survival(
                history, &keys, &values, invoked, completed,
            )])
        }
        LabWorkload::Bank | LabWorkload::Transfer => {
            let accounts: Vec<String> = (0..scenario.workload.keys)
                .map(bench::account_key)
                .collect();
            let after = bench::total(client, &accounts).await?;
            let expected = scenario.workload.keys as i64 * bench::BANK_INITIAL_BALANCE;
            Ok(vec![Check::new(
                "money conserved",
                after == expected,
                format!(
                    "{} accounts: total {after} after settling, {expected} loaded (the workload's own reads: {:?} before, {:?} after)",
                    accounts.len(),
                    report.total_before,
                    report.total_after
                ),
            )])
        }
        LabWorkload::Orders => {
            let checks = crate::demo::audit_orders(client, report).await?;
            Ok(checks
                .into_iter()
                .map(|check| Check::new(check.name, check.holds, check.detail))
                .collect())
        }
    }
}

/// Every acknowledged write survives: for each register, the value finally read must be
/// written by a transaction that could be the last writer in an order respecting real
/// time, i.e. no acknowledged write of that key was invoked after the final value's writer
/// had completed. Appends the final read to `history` as one committed transaction.
fn register_survival(
    history: &mut Vec<HistoryOp>,
    keys: &[String],
    values: &BTreeMap<String, String>,
    invoked: u64,
    completed: u64,
) -> Check {
    // Per key and value: (invoke time, completion time, type) of its writer.
    let mut writers: BTreeMap<(&str, &str), (u64, u64, OpType)> = BTreeMap::new();
    let mut open: BTreeMap<u64, u64> = BTreeMap::new();
    for op in history.iter() {
        match op.kind {
            OpType::Invoke => {
                open.insert(op.process, op.time);
            }
            kind => {
                let start = open.remove(&op.process).unwrap_or(0);
                for micro in op.value.as_array().into_iter().flatten() {
                    if let (Some("w"), Some(key), Some(value)) = (
                        micro.get(0).and_then(|v| v.as_str()),
                        micro.get(1).and_then(|v| v.as_str()),
                        micro.get(2).and_then(|v| v.as_str()),
                    ) {
                        writers.insert((key, value), (start, op.time, kind));
                    }
                }
            }
        }
    }
    let mut problems = Vec::new();
    let mut acknowledged = 0usize;
    for key in keys {
        let final_value = values.get(key).map(String::as_str);
        let final_writer = match final_value {
            Some(value) => match writers.get(&(key.as_str(), value)) {
                Some((_, _, OpType::Fail)) => {
                    problems.push(format!(
                        "{key} = {value:?}, written by a failed transaction"
                    ));
                    continue;
                }
                Some(writer) => Some(*writer),
                None => {
                    problems.push(format!("{key} = {value:?}, which no transaction wrote"));
                    continue;
                }
            },
            None => None,
        };
        for ((written_key, value), (start, _, kind)) in &writers {
            if *written_key != key.as_str() || *kind != OpType::Ok {
                continue;
            }
            acknowledged += 1;
            let superseded_in_time = match final_writer {
                // The final writer must not have completed before this write began.
                Some((_, final_end, _)) => final_end >= *start,
                None => false,
            };
            if Some(*value) != final_value && !superseded_in_time {
                problems.push(format!(
                    "{key}: acknowledged write {value:?} lost (final value {})",
                    final_value.map_or("absent".to_string(), |value| format!("{value:?}"))
                ));
            }
        }
    }
    let micro_ops: Vec<serde_json::Value> = keys
        .iter()
        .map(|key| serde_json::json!(["r", key, values.get(key)]))
        .collect();
    let next = history.len() as u64;
    for (offset, kind, time) in [(0, OpType::Invoke, invoked), (1, OpType::Ok, completed)] {
        history.push(HistoryOp {
            index: next + offset,
            kind,
            process: AUDIT_PROCESS,
            f: "txn".to_string(),
            time,
            value: serde_json::Value::Array(micro_ops.clone()),
            error: None,
        });
    }
    let shown: Vec<String> = problems.iter().take(5).cloned().collect();
    Check::new(
        "no acknowledged write lost (registers read back)",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "{} registers read after settling; {acknowledged} acknowledged writes accounted for",
                keys.len()
            )
        } else {
            format!("{} problems: {}", problems.len(), shown.join("; "))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(kind: OpType, process: u64, time: u64, value: serde_json::Value) -> HistoryOp {
        HistoryOp {
            index: 0,
            kind,
            process,
            f: "txn".into(),
            time,
            value,
            error: None,
        }
    }

    fn history() -> Vec<HistoryOp> {
        vec![
            op(OpType::Invoke, 0, 10, json!([["w", "reg-0", "0-1"]])),
            op(OpType::Ok, 0, 20, json!([["w", "reg-0", "0-1"]])),
            op(OpType::Invoke, 1, 30, json!([["w", "reg-0", "1-1"]])),
            op(OpType::Ok, 1, 40, json!([["w", "reg-0", "1-1"]])),
        ]
    }

    #[test]
    fn the_last_acknowledged_write_read_back_passes() {
        let mut history = history();
        let values = BTreeMap::from([("reg-0".to_string(), "1-1".to_string())]);
        let check = register_survival(&mut history, &["reg-0".into()], &values, 100, 101);
        assert!(check.holds, "{check:?}");
        assert_eq!(history.len(), 6, "the final read is appended");
    }

    #[test]
    fn a_write_overwritten_by_an_earlier_one_is_reported_lost() {
        // 1-1 began after 0-1 had completed: reading 0-1 at the end loses 1-1.
        let mut history = history();
        let values = BTreeMap::from([("reg-0".to_string(), "0-1".to_string())]);
        let check = register_survival(&mut history, &["reg-0".into()], &values, 100, 101);
        assert!(!check.holds, "{check:?}");
        assert!(check.detail.contains("\"1-1\" lost"), "{check:?}");
        // A register left empty after acknowledged writes, or holding an unwritten value.
        let check = register_survival(&mut history, &["reg-0".into()], &BTreeMap::new(), 100, 101);
        assert!(!check.holds);
        let values = BTreeMap::from([("reg-0".to_string(), "9-9".to_string())]);
        let check = register_survival(&mut history, &["reg-0".into()], &values, 100, 101);
        assert!(check.detail.contains("no transaction wrote"), "{check:?}");
    }
}
