//! What one lab run produced, in the same shape whether real processes or the simulator
//! ran it: the client history (Jepsen/Elle JSON lines), the nemesis intervals, periodic
//! samples of every node, and the checks' verdicts. The report is drawn from this alone.

use super::scenario::{Interval, Scenario};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// Who ran the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Real `dtx node` processes on loopback (`dtx lab run`).
    Real,
    /// The deterministic simulator (`dtx-sim lab`); times are simulated.
    Simulated,
}

/// An Elle history operation's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The transaction was sent.
    Invoke,
    /// It committed (the values read are in `value`).
    Ok,
    /// It certainly did not commit.
    Fail,
    /// Unknown outcome (timeout, lost connection).
    Info,
}

/// One line of the history, in the Jepsen/Elle JSON format (`f` is always `"txn"`;
/// `value` is a list of micro-ops `["r", key, value]` / `["w", key, value]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryOp {
    /// Position in the history (0, 1, ...).
    pub index: u64,
    /// invoke / ok / fail / info.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The worker (one at a time per process).
    pub process: u64,
    /// Always `"txn"`.
    #[serde(default = "txn_f")]
    pub f: String,
    /// Nanoseconds from the workload's start.
    pub time: u64,
    /// Micro-ops.
    pub value: serde_json::Value,
    /// Why it failed, or why the outcome is unknown (not part of Elle's format; Elle
    /// ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn txn_f() -> String {
    "txn".to_string()
}

/// A sample of one node's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds from the workload's start.
    pub time_s: f64,
    /// Node name.
    pub node: String,
    /// Answering (false: killed, paused or unreachable).
    pub up: bool,
    /// Transactions this node holds undecided (voted or accepted, no outcome yet).
    pub in_doubt: u64,
    /// Members this node suspects.
    pub suspected: u64,
}

/// One verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it holds.
    pub holds: bool,
    /// The figures behind it.
    pub detail: String,
}

impl Check {
    /// A verdict.
    pub fn new(name: impl Into<String>, holds: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            holds,
            detail: detail.into(),
        }
    }
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabOutcome {
    /// The scenario as run.
    pub scenario: Scenario,
    /// The seed of the schedule (and, in the simulator, of everything).
    pub seed: u64,
    /// Real processes or the simulator.
    pub source: Source,
    /// The client history in time order.
    pub history: Vec<HistoryOp>,
    /// The faults as applied (times from the run).
    pub intervals: Vec<Interval>,
    /// Samples of every node over time.
    pub samples: Vec<Sample>,
    /// The verdicts.
    pub checks: Vec<Check>,
    /// Summary figures, in order (name, value): committed, failed, unknown, throughput,
    /// recovery after each heal...
    pub summary: Vec<(String, String)>,
}

impl LabOutcome {
    /// True if every check holds.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.holds)
    }
}

/// The directory a run writes to when no `--out` is given:
/// `lab-out/<name>-<seed>` for real processes, `lab-out/<name>-sim-<seed>` for the
/// simulator (the name with anything but letters, digits, `-` and `_` replaced by `_`).
pub fn default_out(scenario: &Scenario, source: Source, seed: u64) -> std::path::PathBuf {
    let name: String = scenario
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let label = match source {
        Source::Real => "",
        Source::Simulated => "sim-",
    };
    Path::new("lab-out").join(format!("{name}-{label}{seed}"))
}

/// Writes a run's artifacts into `dir` (created if missing), the same for both runners:
/// `history.jsonl`, `nemesis.json` (`nemesis`: what the runner knows of the faults),
/// `samples.jsonl` and `outcome.json`.
pub fn write_artifacts(
    dir: &Path,
    outcome: &LabOutcome,
    nemesis: &serde_json::Value,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_history(&dir.join("history.jsonl"), &outcome.history)?;
    std::fs::write(
        dir.join("nemesis.json"),
        serde_json::to_vec_pretty(nemesis)?,
    )?;
    let mut samples = std::io::BufWriter::new(std::fs::File::create(dir.join("samples.jsonl"))?);
    for sample in &outcome.samples {
        serde_json::to_writer(&mut samples, sample)?;
        samples.write_all(b"\n")?;
    }
    samples.flush()?;
    std::fs::write(
        dir.join("outcome.json"),
        serde_json::to_vec_pretty(outcome)?,
    )?;
    Ok(())
}

/// Writes the history as JSON lines.
pub fn write_history(path: &Path, history: &[HistoryOp]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::new(file);
    for op in history {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_history`] (or any Elle JSON-lines history with the
/// same fields).
pub fn read_history(path: &Path) -> std::io::Result<Vec<HistoryOp>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut history = Vec::new();
    for (number, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} line {}: {error}", path.display(), number + 1),
            )
        })?;
        history.push(op);
    }
    Ok(history)
}

/// Each completed operation: (invoke time, completion time, type), in nanoseconds, paired
/// by process.
pub fn completions(history: &[HistoryOp]) -> Vec<(u64, u64, OpType)> {
    let mut open: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let mut done = Vec::new();
    for op in history {
        match op.kind {
            OpType::Invoke => {
                open.insert(op.process, op.time);
            }
            kind => {
                if let Some(start) = open.remove(&op.process) {
                    done.push((start, op.time, kind));
                }
            }
        }
    }
    // Invocations never completed count as unknown, ending at the last time seen.
    let last = history.last().map_or(0, |op| op.time);
    for start in open.into_values() {
        done.push((start, last, OpType::Info));
    }
    done
}
