//! The client-observed history in the Jepsen/Elle JSON-lines format, so outside checkers
//! (Elle, adya) can judge it: `{"index","type":"invoke|ok|fail|info","process","f":"txn",
//! "time","value":[["w",k,v],["r",k,v]]}`.

use dtx_protocol::{Operation, TxnResult};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::io::Write;

/// Lines of a history.
#[derive(Debug, Default)]
pub struct History {
    lines: Vec<Json>,
}

impl History {
    /// Records the start of a transaction by `process` (the client index).
    pub fn invoke(&mut self, process: usize, time_micros: u64, operations: &[Operation]) {
        let value: Vec<Json> = operations
            .iter()
            .filter_map(|operation| micro_op(operation, None))
            .collect();
        self.push("invoke", process, time_micros, value);
    }

    /// Records how a transaction ended (`None`: the client crashed, outcome unknown).
    pub fn complete(
        &mut self,
        process: usize,
        time_micros: u64,
        operations: &[Operation],
        result: Option<&TxnResult>,
    ) {
        let (kind, reads) = match result {
            Some(TxnResult::Committed {
                reads,
                reads_lost: false,
            }) => {
                let by_key: BTreeMap<&str, Json> = reads
                    .iter()
                    .map(|read| {
                        (
                            read.key.as_str(),
                            text(read.value.as_ref().map(|value| value.0.as_slice())),
                        )
                    })
                    .collect();
                ("ok", Some(by_key))
            }
            Some(TxnResult::Aborted { .. }) => ("fail", None),
            _ => ("info", None),
        };
        let value: Vec<Json> = operations
            .iter()
            .filter_map(|operation| micro_op(operation, reads.as_ref()))
            .collect();
        self.push(kind, process, time_micros, value);
    }

    fn push(&mut self, kind: &str, process: usize, time_micros: u64, value: Vec<Json>) {
        let index = self.lines.len();
        self.lines.push(json!({
            "index": index,
            "type": kind,
            "process": process,
            "f": "txn",
            "time": time_micros * 1000,
            "value": value,
        }));
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Writes the history as JSON lines.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        for line in &self.lines {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

fn micro_op(operation: &Operation, reads: Option<&BTreeMap<&str, Json>>) -> Option<Json> {
    match operation {
        Operation::Read { key, .. } | Operation::ReadForUpdate { key } => {
            let value = reads
                .and_then(|reads| reads.get(key.as_str()).cloned())
                .unwrap_or(Json::Null);
            Some(json!(["r", key.as_str(), value]))
        }
        Operation::Write { key, value } | Operation::Update { key, value } => {
            Some(json!(["w", key.as_str(), text(Some(&value.0))]))
        }
        Operation::Delete { key } => Some(json!(["w", key.as_str(), Json::Null])),
        Operation::Call { target, action, .. } => Some(json!(["call", target.as_str(), action])),
    }
}

fn text(bytes: Option<&[u8]>) -> Json {
    match bytes {
        None => Json::Null,
        Some(bytes) => Json::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}
