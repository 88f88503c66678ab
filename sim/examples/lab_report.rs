//! Renders a lab report to look at: the made-up sample outcome, or a saved outcome.
//!
//! ```text
//! cargo run --release -p dtx-sim --example lab_report -- [OUT_DIR] [OPERATIONS | OUTCOME.json]
//! ```
//!
//! Writes `OUT_DIR/report.html` (default `/tmp/lab-report-sample`). With a number, the
//! sample has about that many operations (default 2,000); with a `.json` file, that
//! `LabOutcome` (as serde_json writes it) is rendered instead; the sample is written as
//! `OUT_DIR/outcome.json` beside its report. Then
//! `sim/scripts/screenshot-report.sh OUT_DIR/report.html OUT_DIR/shot.png` shows it as a
//! browser would.

use anyhow::Context;
use dtx_sim::lab::{report, LabOutcome};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut arguments = std::env::args().skip(1);
    let dir = PathBuf::from(
        arguments
            .next()
            .unwrap_or_else(|| "/tmp/lab-report-sample".to_string()),
    );
    let what = arguments.next().unwrap_or_else(|| "2000".to_string());
    let outcome: LabOutcome = if what.ends_with(".json") {
        let text = std::fs::read_to_string(&what).with_context(|| format!("reading {what}"))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {what} as a LabOutcome"))?
    } else {
        let operations: usize = what
            .parse()
            .with_context(|| format!("{what}: neither a number of operations nor a .json file"))?;
        let outcome = report::sample_outcome(operations);
        // The sample as JSON too, to edit and render again (second argument).
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("outcome.json"), serde_json::to_string(&outcome)?)?;
        outcome
    };
    let started = Instant::now();
    let path = report::write(&dir, &outcome)?;
    let bytes = std::fs::metadata(&path)?.len();
    println!(
        "{}: {} history lines, {bytes} bytes, rendered in {:.2} s",
        path.display(),
        outcome.history.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
