//! The Jepsen/Elle JSON-lines history of a `register` run (`dtx bench --history`): one
//! `invoke` line when a transaction is sent and one `ok`/`fail`/`info` line when it ends.

use super::{BenchError, WorkerResult};
use dtx_node::client::Committed;
use dtx_protocol::Operation;
use std::path::PathBuf;

/// One history line: `kind` (`invoke`, `ok`, `fail`, `info`) of worker `process`'s
/// transaction of `operations`, with the values read if it committed.
pub(super) fn history_line(
    kind: &str,
    process: usize,
    time_ns: u64,
    operations: &[Operation],
    committed: Option<&Committed>,
) -> serde_json::Value {
    let value: Vec<serde_json::Value> = operations
        .iter()
        .map(|operation| match operation {
            Operation::Read { key, .. } | Operation::ReadForUpdate { key } => {
                let read = committed
                    .and_then(|committed| committed.value(key.as_str()))
                    .map(|value| {
                        serde_json::Value::String(String::from_utf8_lossy(&value.0).into_owned())
                    })
                    .unwrap_or(serde_json::Value::Null);
                serde_json::json!(["r", key.as_str(), read])
            }
            Operation::Write { key, value } | Operation::Update { key, value } => {
                serde_json::json!(["w", key.as_str(), String::from_utf8_lossy(&value.0)])
            }
            Operation::Delete { key } => serde_json::json!(["w", key.as_str(), null]),
            // Elle has no word for a service call: recorded as an opaque micro-op.
            Operation::Call { target, action, .. } => {
                serde_json::json!(["call", target.as_str(), action])
            }
        })
        .collect();
    serde_json::json!({
        "type": kind,
        "process": process,
        "f": "txn",
        "time": time_ns,
        "value": value,
    })
}

/// Writes every worker's lines to `path`, ordered by time and numbered.
pub(super) fn write_history(path: &PathBuf, results: &[WorkerResult]) -> Result<(), BenchError> {
    use std::io::Write;
    let error = |cause| BenchError::History {
        path: path.clone(),
        cause,
    };
    let mut lines: Vec<&serde_json::Value> = results
        .iter()
        .flat_map(|result| result.history.iter())
        .collect();
    lines.sort_by_key(|line| line["time"].as_u64().unwrap_or(0));
    let file = std::fs::File::create(path).map_err(error)?;
    let mut out = std::io::BufWriter::new(file);
    for (index, line) in lines.into_iter().enumerate() {
        let mut line = line.clone();
        line["index"] = serde_json::json!(index);
        writeln!(out, "{line}").map_err(error)?;
    }
    out.flush().map_err(error)
}
