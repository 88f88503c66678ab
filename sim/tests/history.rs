//! The client history is valid Jepsen/Elle JSON lines: every invoke is completed once, and
//! every committed read carries a value or null.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_sim::{run, Faults, RunConfig, WorkloadKind};
use std::collections::BTreeMap;

#[test]
fn history_lines_pair_invokes_with_completions() {
    let mut config = RunConfig::new(3, 5, 1, 300, WorkloadKind::Register, Faults::ALL);
    config.record_history = true;
    let report = run(&config);
    let history = report.history.expect("history recorded");
    let mut bytes = Vec::new();
    history.write_to(&mut bytes).unwrap();
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut completions = 0;
    for (index, line) in String::from_utf8(bytes).unwrap().lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["index"].as_u64(), Some(index as u64));
        let process = value["process"].as_u64().unwrap();
        match value["type"].as_str().unwrap() {
            "invoke" => assert!(
                open.insert(process, index).is_none(),
                "process {process} invoked twice"
            ),
            "ok" | "fail" | "info" => {
                assert!(
                    open.remove(&process).is_some(),
                    "completion without invoke at line {index}"
                );
                completions += 1;
            }
            other => panic!("unknown type {other}"),
        }
        for micro_op in value["value"].as_array().unwrap() {
            let kind = micro_op[0].as_str().unwrap();
            assert!(kind == "r" || kind == "w");
            assert!(micro_op[1].is_string());
        }
    }
    assert!(open.is_empty());
    assert!(completions >= 300);
}
