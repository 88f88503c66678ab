//! The lab: Jepsen-shaped experiments, shared by `dtx lab run` (real `dtx node`
//! processes) and `dtx-sim lab` (the deterministic simulator).
//!
//! - [`scenario`]: the TOML scenario file and its expansion into a fault timeline.
//! - [`outcome`]: what a run produced (history, faults as applied, node samples, verdicts).
//! - [`checks`]: the verdicts both runners compute from an outcome.
//! - [`report`]: `report.html` with plots.
//! - [`simulate`]: the simulator's runner.

pub mod checks;
pub mod outcome;
pub mod report;
pub mod scenario;
pub mod simulate;

pub use outcome::{Check, HistoryOp, LabOutcome, OpType, Sample, Source};
pub use scenario::{Action, Endpoint, Interval, LinkFault, NemesisKind, Scenario, Schedule, Step};
