//! `dtx bench-plot`: throughput, median latency and CPU per transaction against the number
//! of clients, from the results file `node/scripts/bench-3-nodes.sh` writes (`RESULTS=`),
//! as one self-contained SVG (plotters' SVG backend).
//!
//! Each line of the results file is `{"system":"dtx","run":N,"report":{..bench --json..}}`
//! or `{"system":"pg2pc","run":N,"line":"clients=8 tps=1676 p50=4.45ms .."}`. Every
//! (system, workload) becomes one series; repeated runs of a point are drawn as their
//! median, each run as a faint dot, so the spread shows.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lines read from a results file at most (a run of the script writes a few dozen).
pub const RESULT_LINES_MAX: usize = 100_000;

const WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 330;
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The results file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of it is not a result line.
    #[error("{path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing to draw.
    #[error("{0}: no result lines with a client count and a throughput")]
    Empty(PathBuf),
    /// More lines than [`RESULT_LINES_MAX`].
    #[error("{0}: more than {RESULT_LINES_MAX} lines; not a results file of the bench script")]
    TooLong(PathBuf),
    /// plotters failed.
    #[error("drawing the {panel} panel: {reason}")]
    Draw {
        /// Which panel.
        panel: &'static str,
        /// plotters' message.
        reason: String,
    },
    /// The SVG could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One measured point: a run of one (system, workload) at one client count.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// "dtx" or "pg2pc".
    pub system: String,
    /// The workload ("bank", "register", ...).
    pub workload: String,
    /// Closed-loop clients.
    pub clients: u32,
    /// Committed transactions per second.
    pub tps: f64,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// CPU µs per committed transaction (dtx only).
    pub cpu_us_per_txn: Option<f64>,
}

/// Reads a results file.
pub fn read_results(path: &Path) -> Result<Vec<Sample>, PlotError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.lines().count() > RESULT_LINES_MAX {
        return Err(PlotError::TooLong(path.to_path_buf()));
    }
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let sample = parse_line(line).map_err(|reason| PlotError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            reason,
        })?;
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(PlotError::Empty(path.to_path_buf()));
    }
    Ok(samples)
}

/// One line of a results file as a sample.
fn parse_line(line: &str) -> Result<Sample, String> {
    let entry: serde_json::Value =
        serde_json::from_str(line).map_err(|error| format!("not JSON: {error}"))?;
    let system = entry["system"]
        .as_str()
        .ok_or("no \"system\" field")?
        .to_string();
    if let Some(report) = entry.get("report") {
        let number = |name: &str| report[name].as_f64().filter(|value| value.is_finite());
        let clients = report["clients"]
            .as_u64()
            .and_then(|clients| u32::try_from(clients).ok())
            .filter(|clients| *clients > 0)
            .ok_or("the report has no positive \"clients\"")?;
        return Ok(Sample {
            system,
            workload: report["workload"].as_str().unwrap_or("?").to_string(),
            clients,
            tps: number("tps").ok_or("the report has no \"tps\"")?,
            p50_ms: number("p50_ms"),
            cpu_us_per_txn: number("cpu_us_per_txn"),
        });
    }
    // The baseline's own summary line: `name=value` fields, latencies with "ms".
    let text = entry["line"]
        .as_str()
        .ok_or("neither a \"report\" nor a \"line\" field")?;
    let field = |name: &str| {
        text.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.trim_end_matches("ms").parse::<f64>().ok())
            .filter(|value| value.is_finite())
    };
    let clients = field("clients")
        .filter(|clients| *clients >= 1.0 && *clients <= f64::from(u32::MAX))
        .ok_or("the line has no clients=N")? as u32;
    Ok(Sample {
        system,
        workload: "bank".to_string(),
        clients,
        tps: field("tps").ok_or("the line has no tps=N")?,
        p50_ms: field("p50"),
        cpu_us_per_txn: None,
    })
}

/// A series: (clients, median, every run) per client count.
type Series = BTreeMap<u32, Vec<f64>>;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) && middle > 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// The samples' series for one measure, keyed by "system workload".
fn series_of(
    samples: &[Sample],
    measure: impl Fn(&Sample) -> Option<f64>,
) -> BTreeMap<String, Series> {
    let mut all: BTreeMap<String, Series> = BTreeMap::new();
    for sample in samples {
        if let Some(value) = measure(sample) {
            all.entry(format!("{} {}", sample.system, sample.workload))
                .or_default()
                .entry(sample.clients)
                .or_default()
                .push(value);
        }
    }
    all
}

/// Draws the samples as one SVG document: throughput, p50 latency and (when known) CPU
/// per transaction, each against clients on a log scale.
pub fn render(samples: &[Sample]) -> Result<String, PlotError> {
    type Measure = fn(&Sample) -> Option<f64>;
    let panels: [(&'static str, &str, Measure); 3] = [
        ("throughput", "committed/s", |sample| Some(sample.tps)),
        ("latency", "p50 latency (ms)", |sample| sample.p50_ms),
        ("cpu", "CPU µs per committed txn", |sample| {
            sample.cpu_us_per_txn
        }),
    ];
    let drawn: Vec<_> = panels
        .into_iter()
        .map(|(panel, label, measure)| (panel, label, series_of(samples, measure)))
        .filter(|(_, _, series)| !series.is_empty())
        .collect();
    // One color per series name, the same in every panel.
    let mut names: Vec<&String> = drawn.iter().flat_map(|(_, _, all)| all.keys()).collect();
    names.sort();
    names.dedup();
    let color_of = |name: &str| {
        let index = names.iter().position(|known| *known == name).unwrap_or(0);
        COLORS[index % COLORS.len()]
    };
    let max_clients = samples.iter().map(|s| s.clients).max().unwrap_or(1);
    let height = PANEL_HEIGHT * u32::try_from(drawn.len().max(1)).unwrap_or(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|error| PlotError::Draw {
            panel: "background",
            reason: error.to_string(),
        })?;
        let areas = root.split_evenly((drawn.len().max(1), 1));
        for ((panel, label, series), area) in drawn.iter().zip(areas.iter()) {
            draw_panel(area, label, series, max_clients, &color_of)
                .map_err(|reason| PlotError::Draw { panel, reason })?;
        }
        root.present().map_err(|error| PlotError::Draw {
            panel: "document",
            reason: error.to_string(),
        })?;
    }
    Ok(svg)
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    label: &str,
    series: &BTreeMap<String, Series>,
    max_clients: u32,
    color_of: &dyn Fn(&str) -> RGBColor,
) -> Result<(), String> {
    let largest = series
        .values()
        .flat_map(|points| points.values().flatten())
        .fold(0.0_f64, |a, b| a.max(*b));
    let x_end = f64::from(max_clients.max(2)) * 1.5;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0.8_f64..x_end).log_scale(),
            0.0..(largest * 1.15).max(1e-9),
        )
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc(label)
        .x_label_formatter(&|value| format!("{value:.0}"))
        .y_label_formatter(&|value| {
            if value.abs() >= 100.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.1}")
            }
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .draw()
        .map_err(|error| error.to_string())?;
    for (name, points) in series {
        let color = color_of(name);
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|(clients, values)| (f64::from(*clients), median(values)))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|error| error.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                line.iter()
                    .map(|point| Circle::new(*point, 4, color.filled())),
            )
            .map_err(|error| error.to_string())?;
        let runs = points.iter().flat_map(|(clients, values)| {
            values
                .iter()
                .map(move |value| (f64::from(*clients), *value))
        });
        chart
            .draw_series(runs.map(|point| Circle::new(point, 2, color.mix(0.35).filled())))
            .map_err(|error| error.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xcc, 0xcc, 0xcc))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|error| error.to_string())
}

/// `dtx bench-plot RESULTS --out FILE`: reads, draws, writes; returns what it drew.
pub fn plot_file(results: &Path, out: &Path) -> Result<String, PlotError> {
    let samples = read_results(results)?;
    let svg = render(&samples)?;
    std::fs::write(out, svg).map_err(|source| PlotError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let points = series_of(&samples, |sample| Some(sample.tps));
    Ok(format!(
        "{}: {} series ({}) from {} runs",
        out.display(),
        points.len(),
        points.keys().cloned().collect::<Vec<_>>().join(", "),
        samples.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("dtx-plot-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const RESULTS: &str = r#"{"system":"dtx","run":1,"report":{"workload":"bank","clients":1,"tps":1100.5,"p50_ms":0.85,"cpu_us_per_txn":900.0}}
{"system":"dtx","run":1,"report":{"workload":"bank","clients":8,"tps":3600.0,"p50_ms":2.1,"cpu_us_per_txn":700.0}}
{"system":"dtx","run":2,"report":{"workload":"bank","clients":8,"tps":3800.0,"p50_ms":2.0,"cpu_us_per_txn":650.0}}
{"system":"pg2pc","run":1,"line":"clients=8 seconds=15 committed=25000 tps=1676 p50=4.45ms p99=8.98ms"}
"#;

    #[test]
    fn results_become_series_with_medians_and_the_baseline() {
        let dir = Scratch::new("series");
        let path = dir.path().join("results.jsonl");
        std::fs::write(&path, RESULTS).expect("write");
        let samples = read_results(&path).expect("read");
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[3].system, "pg2pc");
        assert_eq!(samples[3].clients, 8);
        assert_eq!(samples[3].p50_ms, Some(4.45));
        let tps = series_of(&samples, |sample| Some(sample.tps));
        assert_eq!(median(&tps["dtx bank"][&8]), 3700.0);
        let cpu = series_of(&samples, |sample| sample.cpu_us_per_txn);
        assert!(
            !cpu.contains_key("pg2pc bank"),
            "the baseline has no CPU figure"
        );
        let out = dir.path().join("plot.svg");
        let said = plot_file(&path, &out).expect("plot");
        assert!(said.contains("2 series"), "{said}");
        let svg = std::fs::read_to_string(&out).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for text in [
            "dtx bank",
            "pg2pc bank",
            "committed/s",
            "p50 latency (ms)",
            "CPU",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
    }

    #[test]
    fn bad_lines_are_named_not_panicked_on() {
        let dir = Scratch::new("bad");
        let path = dir.path().join("results.jsonl");
        for (text, expected) in [
            (
                "{\"system\":\"dtx\",\"run\":1,\"report\":{\"clients\":0,\"tps\":1}}\n",
                "line 1",
            ),
            ("{}\n", "no \"system\""),
            ("not json\n", "not JSON"),
            ("{\"system\":\"pg2pc\",\"line\":\"tps=5\"}\n", "clients=N"),
            ("\n", "no result lines"),
        ] {
            std::fs::write(&path, text).expect("write");
            let error = read_results(&path).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let missing = read_results(&dir.path().join("absent")).expect_err("absent");
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }
}
