//! `report.html`: one self-contained page per lab run, drawn from a [`LabOutcome`] alone,
//! the same for real and simulated runs.
//!
//! Top to bottom: the verdict and the checks, the summary figures, the scenario and its
//! faults as applied, then three plots over one shared time axis (0 to the end of the
//! settle phase): the latency of every completed operation, the throughput, and each
//! node's in-doubt transactions and suspected members. Every plot shades the fault
//! intervals, so a reader sees at a glance what each fault did to the clients and to the
//! nodes.
//!
//! The page loads nothing: inline CSS, and inline SVG drawn with `plotters` (its text
//! stays SVG `<text>`, no font is loaded). Every text taken from the outcome is
//! HTML-escaped, since scenario names, details and error strings are not trusted. Large
//! histories are thinned to a bounded number of points (every failure kept first), and the
//! page says so under the plot, so a 200,000-operation run stays a few megabytes.

use super::outcome::{completions, Check, HistoryOp, LabOutcome, OpType, Sample, Source};
use super::scenario::{
    ClusterSpec, Interval, LabWorkload, NemesisKind, NemesisSpec, Scenario, WorkloadSpec,
};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most points the latency plot draws; beyond it the history is thinned (failed and
/// unknown operations first, committed ones sampled evenly).
pub const LATENCY_POINTS_MAX: usize = 20_000;
/// Most of [`LATENCY_POINTS_MAX`] that failed and unknown operations may take, so that
/// committed ones stay visible even in a run that mostly failed.
const LATENCY_FAILURE_POINTS_MAX: usize = LATENCY_POINTS_MAX * 3 / 4;
/// Most points of one node's line; beyond it each stretch of samples is drawn as its
/// maximum (a spike of in-doubt transactions stays visible).
const LINE_POINTS_MAX: usize = 1_500;
/// Most throughput buckets (a longer run gets wider buckets).
const BUCKETS_MAX: f64 = 1_000.0;
/// Most nodes drawn as separate lines (a lab cluster has at most nine).
const NODE_LINES_MAX: usize = 32;
/// Most fault intervals shaded per plot and listed in the table.
const INTERVALS_SHOWN_MAX: usize = 1_000;
/// The longest time axis drawn; later times in a (hostile or broken) outcome are off the
/// plots.
const TIME_AXIS_MAX_S: f64 = 100_000.0;
/// Latencies below this are drawn at it (a log axis cannot show zero).
const LATENCY_FLOOR_MS: f64 = 0.001;
/// Above this ratio between the largest and smallest latency, the latency axis is
/// logarithmic.
const LOG_SCALE_RATIO: f64 = 50.0;

/// Plot width in pixels (the page is laid out for a 1300-pixel window).
const PLOT_WIDTH: u32 = 1200;
/// Left of every plot area: the same for every plot so the time axes line up.
const Y_LABEL_AREA: u32 = 78;
/// Below every plot area: the time axis labels.
const X_LABEL_AREA: u32 = 44;
/// Right margin of every plot.
const MARGIN_RIGHT: u32 = 24;
/// Interval labels take at most this many rows at the top of a plot.
const LABEL_ROWS: i32 = 3;
/// Height of one row of interval labels, in pixels.
const LABEL_ROW_HEIGHT: i32 = 16;
/// A fault's name is labelled again only this many pixels after its previous label.
const LABEL_REPEAT_PIXELS: i32 = 250;

/// Committed.
const OK_COLOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
/// Certainly not committed.
const FAIL_COLOR: RGBColor = RGBColor(0xff, 0x8c, 0x00);
/// Unknown outcome.
const INFO_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Axis and label text.
const TEXT_COLOR: RGBColor = RGBColor(0x33, 0x33, 0x33);
/// One colour per node, in name order (repeats after ten).
const NODE_COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
/// One shade per fault kind, in order of first appearance (repeats after six).
const INTERVAL_COLORS: [RGBColor; 6] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xba, 0xb0, 0xac),
];

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The plotting library refused to draw (a bug in the report, not in the outcome).
    #[error("cannot draw the {plot} plot: {message}")]
    Plot {
        /// Which plot.
        plot: &'static str,
        /// The library's message.
        message: String,
    },
    /// The report file could not be written.
    #[error("cannot write the report {path}: {cause}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
}

/// Writes `dir/report.html` (creating `dir` if needed) and returns its path.
pub fn write(dir: &Path, outcome: &LabOutcome) -> Result<PathBuf, ReportError> {
    let page = render(outcome)?;
    let path = dir.join("report.html");
    let failed = |cause| ReportError::Write {
        path: path.display().to_string(),
        cause,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::write(&path, page).map_err(failed)?;
    Ok(path)
}

/// The whole page: title, verdict and checks, summary, scenario and faults, then the plots.
pub fn render(outcome: &LabOutcome) -> Result<String, ReportError> {
    let axis = TimeAxis::of(outcome);
    let shading = Shading::of(&outcome.intervals);
    let latency = latency_plot(outcome, &axis, &shading)?;
    let throughput = throughput_plot(outcome, &axis, &shading)?;
    let nodes = nodes_plot(&outcome.samples, &axis, &shading)?;

    let mut page = String::with_capacity(
        latency.svg.len() + throughput.svg.len() + nodes.svg.len() + 64 * 1024,
    );
    let name = escape(&outcome.scenario.name);
    let source = match outcome.source {
        Source::Real => "real processes",
        Source::Simulated => "simulated",
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>dtx lab: {name}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>dtx lab: {name}</h1>\n<p class=\"meta\">{source}, seed {seed}</p>\n",
        seed = outcome.seed,
    );
    push_verdict(&mut page, outcome);
    push_summary(&mut page, &outcome.summary);
    push_scenario(&mut page, &outcome.scenario, &outcome.intervals, &shading);
    push_plot(
        &mut page,
        "Latency of each completed operation",
        &latency,
        &[
            ("committed (ok)", OK_COLOR),
            ("failed", FAIL_COLOR),
            ("unknown (info)", INFO_COLOR),
        ],
    );
    push_plot(
        &mut page,
        "Throughput",
        &throughput,
        &[
            ("committed/s", OK_COLOR),
            ("failed/s", FAIL_COLOR),
            ("unknown/s", INFO_COLOR),
        ],
    );
    let node_legend: Vec<(&str, RGBColor)> = nodes
        .series
        .iter()
        .enumerate()
        .map(|(index, name)| (name.as_str(), node_color(index)))
        .collect();
    push_plot(
        &mut page,
        "Nodes: transactions in doubt, members suspected",
        &nodes,
        &node_legend,
    );
    page.push_str("</body>\n</html>\n");
    Ok(page)
}

/// The page's style sheet.
const STYLE: &str = "
body { font-family: sans-serif; color: #222; margin: 24px 40px; max-width: 1220px; }
h1 { font-size: 26px; margin: 0 0 4px 0; word-break: break-all; }
h2 { font-size: 19px; margin: 28px 0 8px 0; border-bottom: 1px solid #ddd; }
.meta { color: #666; margin: 0 0 16px 0; }
.verdict { font-size: 44px; font-weight: bold; letter-spacing: 2px; margin: 8px 0 12px 0; }
.pass { color: #1a7f37; }
.violation { color: #c62828; }
.unchecked { color: #777; }
table { border-collapse: collapse; margin: 4px 0 8px 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.holds { color: #1a7f37; font-weight: bold; }
td.broken { color: #c62828; font-weight: bold; }
.detail { word-break: break-word; max-width: 760px; }
.note { color: #666; font-size: 13px; margin: 2px 0 0 0; }
.legend { font-size: 13px; margin: 2px 0 0 0; }
.legend span.key { display: inline-block; margin-right: 18px; }
.legend span.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 5px;
  vertical-align: -1px; border-radius: 2px; }
.plot svg { max-width: 100%; height: auto; display: block; }
";

/// The verdict in large type and the checks table.
fn push_verdict(page: &mut String, outcome: &LabOutcome) {
    // No check at all is not a pass, though `passed` (every check holds) says so.
    let (class, word) = if outcome.checks.is_empty() {
        ("unchecked", "NO CHECKS")
    } else if outcome.passed() {
        ("pass", "PASS")
    } else {
        ("violation", "VIOLATION")
    };
    let _ = writeln!(page, "<div class=\"verdict {class}\">{word}</div>");
    page.push_str("<h2>Checks</h2>\n");
    if outcome.checks.is_empty() {
        page.push_str("<p class=\"note\">No check was made.</p>\n");
        return;
    }
    page.push_str("<table>\n<tr><th>check</th><th>holds</th><th>detail</th></tr>\n");
    for Check {
        name,
        holds,
        detail,
    } in &outcome.checks
    {
        let (class, mark) = if *holds {
            ("holds", "yes")
        } else {
            ("broken", "NO")
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"{class}\">{mark}</td><td class=\"detail\">{}</td></tr>",
            escape(name),
            escape(detail),
        );
    }
    page.push_str("</table>\n");
}

/// The summary figures, in the runner's order.
fn push_summary(page: &mut String, summary: &[(String, String)]) {
    page.push_str("<h2>Summary</h2>\n");
    if summary.is_empty() {
        page.push_str("<p class=\"note\">No summary figures.</p>\n");
        return;
    }
    page.push_str("<table>\n");
    for (name, value) in summary {
        let _ = writeln!(
            page,
            "<tr><th>{}</th><td class=\"detail\">{}</td></tr>",
            escape(name),
            escape(value),
        );
    }
    page.push_str("</table>\n");
}

/// The scenario's description and shape, and its faults as applied.
fn push_scenario(
    page: &mut String,
    scenario: &Scenario,
    intervals: &[Interval],
    shading: &Shading,
) {
    page.push_str("<h2>Scenario</h2>\n");
    if !scenario.description.is_empty() {
        let _ = writeln!(page, "<p>{}</p>", escape(&scenario.description));
    }
    let workload = &scenario.workload;
    let rate = if workload.rate > 0.0 {
        format!("{} transactions/s", workload.rate)
    } else {
        "closed loop".to_string()
    };
    let _ = writeln!(
        page,
        "<p class=\"note\">{} nodes, f = {}; workload {} with {} clients ({rate}) on {} keys \
         for {:.1} s, then up to {:.1} s to settle{}.</p>",
        scenario.cluster.nodes,
        scenario.cluster.f,
        workload.kind.name(),
        workload.clients,
        workload.keys,
        workload.duration.as_secs_f64(),
        scenario.settle.as_secs_f64(),
        if scenario.bugs.is_empty() {
            String::new()
        } else {
            format!("; bug switches: {}", escape(&scenario.bugs.join(", ")))
        },
    );
    page.push_str("<h2>Faults</h2>\n");
    if intervals.is_empty() {
        page.push_str("<p class=\"note\">No fault was applied.</p>\n");
        return;
    }
    page.push_str(
        "<table>\n<tr><th>fault</th><th>detail</th><th>start (s)</th><th>end (s)</th></tr>\n",
    );
    for interval in intervals.iter().take(INTERVALS_SHOWN_MAX) {
        let color = shading.color(&interval.name);
        let _ = writeln!(
            page,
            "<tr><td><span class=\"legend\"><span class=\"swatch\" style=\"background: {}\">\
             </span></span>{}</td><td class=\"detail\">{}</td><td class=\"num\">{:.2}</td>\
             <td class=\"num\">{:.2}</td></tr>",
            css_color(color, 0.35),
            escape(&interval.name),
            escape(&interval.detail),
            interval.start_s,
            interval.end_s,
        );
    }
    page.push_str("</table>\n");
    if intervals.len() > INTERVALS_SHOWN_MAX {
        let _ = writeln!(
            page,
            "<p class=\"note\">The first {INTERVALS_SHOWN_MAX} of {} faults are listed and \
             shaded.</p>",
            intervals.len()
        );
    }
}

/// A plot's heading, its SVG, its legend and its notes.
fn push_plot(page: &mut String, title: &str, plot: &Plot, legend: &[(&str, RGBColor)]) {
    let _ = writeln!(page, "<h2>{}</h2>\n<div class=\"plot\">", escape(title));
    page.push_str(&plot.svg);
    page.push_str("</div>\n<p class=\"legend\">");
    for (name, color) in legend {
        let _ = write!(
            page,
            "<span class=\"key\"><span class=\"swatch\" style=\"background: {}\"></span>{}</span>",
            css_color(*color, 1.0),
            escape(name),
        );
    }
    page.push_str("<span class=\"key\">shaded: faults in force</span></p>\n");
    for note in &plot.notes {
        let _ = writeln!(page, "<p class=\"note\">{}</p>", escape(note));
    }
}

/// An SVG drawing and what the reader should know about it.
struct Plot {
    /// The `<svg>` element.
    svg: String,
    /// Sentences shown under the plot (thinning, bucket width, no data).
    notes: Vec<String>,
    /// Names of the lines, in colour order (the nodes plot).
    series: Vec<String>,
}

/// The time axis every plot shares: 0 to the last instant seen anywhere in the outcome.
struct TimeAxis {
    /// Seconds.
    end_s: f64,
}

impl TimeAxis {
    fn of(outcome: &LabOutcome) -> TimeAxis {
        let mut end_s = outcome.scenario.workload.duration.as_secs_f64();
        let times = outcome
            .history
            .iter()
            .map(|op| seconds(op.time))
            .chain(outcome.samples.iter().map(|sample| sample.time_s))
            .chain(outcome.intervals.iter().map(|interval| interval.end_s));
        for time in times {
            if time.is_finite() && time > end_s {
                end_s = time;
            }
        }
        TimeAxis {
            end_s: end_s.clamp(1.0, TIME_AXIS_MAX_S),
        }
    }

    /// Whether a time falls on the axis.
    fn shows(&self, time_s: f64) -> bool {
        (0.0..=self.end_s).contains(&time_s)
    }
}

/// Nanoseconds from the workload's start to seconds.
fn seconds(nanoseconds: u64) -> f64 {
    nanoseconds as f64 / 1e9
}

/// The fault intervals as every plot shades them, coloured by fault kind.
struct Shading {
    /// (start, end, name), clipped to finite values with start <= end.
    spans: Vec<(f64, f64, String)>,
    /// Colour index of each fault kind, by first appearance.
    colors: BTreeMap<String, usize>,
}

impl Shading {
    fn of(intervals: &[Interval]) -> Shading {
        let mut colors = BTreeMap::new();
        let mut spans = Vec::new();
        for interval in intervals.iter().take(INTERVALS_SHOWN_MAX) {
            let next = colors.len();
            colors.entry(interval.name.clone()).or_insert(next);
            if interval.start_s.is_finite()
                && interval.end_s.is_finite()
                && interval.start_s <= interval.end_s
            {
                spans.push((interval.start_s, interval.end_s, interval.name.clone()));
            }
        }
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        Shading { spans, colors }
    }

    fn color(&self, name: &str) -> RGBColor {
        let index = self.colors.get(name).copied().unwrap_or(0);
        INTERVAL_COLORS[index % INTERVAL_COLORS.len()]
    }

    /// Shades the intervals over the plotting area `pixels` (absolute coordinates of
    /// `root`), each across the full height; labels them at the top of `labelled` areas.
    fn draw(
        &self,
        root: &DrawingArea<SVGBackend<'_>, Shift>,
        axis: &TimeAxis,
        pixels: &(std::ops::Range<i32>, std::ops::Range<i32>),
        labelled: bool,
    ) -> Result<(), String> {
        let (x_pixels, y_pixels) = pixels;
        let width = f64::from(x_pixels.end - x_pixels.start);
        let to_pixel = |time_s: f64| {
            let fraction = (time_s / axis.end_s).clamp(0.0, 1.0);
            x_pixels.start + (fraction * width).round() as i32
        };
        for (start_s, end_s, name) in &self.spans {
            let (left, right) = (to_pixel(*start_s), to_pixel(*end_s));
            // A fault shorter than a pixel still shows as a thin band.
            let right = right.max(left + 1);
            let color = self.color(name);
            root.draw(&Rectangle::new(
                [(left, y_pixels.start), (right, y_pixels.end)],
                color.mix(0.16).filled(),
            ))
            .map_err(|error| error.to_string())?;
        }
        if !labelled {
            return Ok(());
        }
        // Labels in up to LABEL_ROWS rows; one that fits in no row is left to the table,
        // and so is a name labelled just before (a flapping fault's many bands share one
        // colour).
        let mut row_ends = [i32::MIN; LABEL_ROWS as usize];
        let mut labelled_at: BTreeMap<&str, i32> = BTreeMap::new();
        for (start_s, _, name) in &self.spans {
            let left = to_pixel(*start_s) + 3;
            if labelled_at
                .get(name.as_str())
                .is_some_and(|previous| left - previous < LABEL_REPEAT_PIXELS)
            {
                continue;
            }
            let width = label_width(name);
            let Some(row) = row_ends.iter().position(|end| *end < left) else {
                continue;
            };
            row_ends[row] = left + width + 6;
            labelled_at.insert(name.as_str(), left);
            let top = y_pixels.start + 2 + row as i32 * LABEL_ROW_HEIGHT;
            let color = self.color(name);
            let darker = RGBColor(color.0 / 2, color.1 / 2, color.2 / 2);
            root.draw(&Rectangle::new(
                [
                    (left - 1, top),
                    (left + width + 1, top + LABEL_ROW_HEIGHT - 2),
                ],
                WHITE.mix(0.75).filled(),
            ))
            .map_err(|error| error.to_string())?;
            root.draw(&Text::new(
                name.clone(),
                (left, top),
                ("sans-serif", 16).into_font().color(&darker),
            ))
            .map_err(|error| error.to_string())?;
        }
        Ok(())
    }
}

/// Estimated width in pixels of an interval label (13-pixel sans-serif).
fn label_width(text: &str) -> i32 {
    let characters = i32::try_from(text.chars().count()).unwrap_or(i32::MAX / 8);
    characters.saturating_mul(7).min(400)
}

/// A colour blended a third of the way to white, opaque (so nothing under it shows
/// through).
fn lighter(color: RGBColor) -> RGBColor {
    let blend = |channel: u8| ((u16::from(channel) * 2 + 255) / 3) as u8;
    RGBColor(blend(color.0), blend(color.1), blend(color.2))
}

fn node_color(index: usize) -> RGBColor {
    NODE_COLORS[index % NODE_COLORS.len()]
}

/// A `plotters` error as a report error naming the plot.
fn plot_error(plot: &'static str) -> impl Fn(String) -> ReportError {
    move |message| ReportError::Plot { plot, message }
}

/// Latency against completion time, a point per operation coloured by outcome.
fn latency_plot(
    outcome: &LabOutcome,
    axis: &TimeAxis,
    shading: &Shading,
) -> Result<Plot, ReportError> {
    let done = completions(&outcome.history);
    let total = done.len();
    let (points, notes) = latency_points(&done, axis);
    draw_latency(&points, axis, shading, notes, total).map_err(plot_error("latency"))
}

/// One point to draw: completion time (s), latency (ms), outcome.
type LatencyPoint = (f64, f64, OpType);

/// The points to draw, thinned to [`LATENCY_POINTS_MAX`]: failed and unknown operations
/// first (up to [`LATENCY_FAILURE_POINTS_MAX`]), committed ones sampled evenly.
fn latency_points(
    done: &[(u64, u64, OpType)],
    axis: &TimeAxis,
) -> (Vec<LatencyPoint>, Vec<String>) {
    let point = |(start, end, kind): &(u64, u64, OpType)| {
        let latency_ms = end.saturating_sub(*start) as f64 / 1e6;
        (seconds(*end), latency_ms.max(LATENCY_FLOOR_MS), *kind)
    };
    let (committed, failures): (Vec<LatencyPoint>, Vec<LatencyPoint>) = done
        .iter()
        .map(point)
        .filter(|(time_s, _, _)| axis.shows(*time_s))
        .partition(|(_, _, kind)| *kind == OpType::Ok);
    let mut notes = Vec::new();
    let shown = committed.len() + failures.len();
    if shown < done.len() {
        notes.push(format!(
            "{} operations completed after the end of the time axis and are not drawn.",
            done.len() - shown
        ));
    }
    if shown <= LATENCY_POINTS_MAX {
        let mut points = committed;
        points.extend(failures);
        return (points, notes);
    }
    let failures_kept = failures.len().min(LATENCY_FAILURE_POINTS_MAX);
    let committed_kept = LATENCY_POINTS_MAX - failures_kept;
    let (committed_count, failure_count) = (committed.len(), failures.len());
    let mut points = evenly(committed, committed_kept);
    points.extend(evenly(failures, failures_kept));
    let failures_said = if failures_kept == failure_count {
        format!("every one of the {failure_count} failed or unknown")
    } else {
        format!("{failures_kept} of the {failure_count} failed or unknown (evenly sampled)")
    };
    notes.push(format!(
        "Thinned for drawing: {} of {shown} operations shown: {failures_said}, and {} of the \
         {committed_count} committed (evenly sampled).",
        points.len(),
        points.len() - failures_kept,
    ));
    (points, notes)
}

/// At most `keep` of `items`, evenly spread over them, in order.
fn evenly<T>(items: Vec<T>, keep: usize) -> Vec<T> {
    let count = items.len();
    if count <= keep {
        return items;
    }
    if keep == 0 {
        return Vec::new();
    }
    let mut next_index = 0usize;
    let mut kept = 0usize;
    items
        .into_iter()
        .enumerate()
        .filter_map(|(index, item)| {
            if kept < keep && index == next_index {
                kept += 1;
                // The kept-th of `keep` evenly spaced positions; u128 avoids overflow.
                next_index = (kept as u128 * count as u128 / keep as u128) as usize;
                Some(item)
            } else {
                None
            }
        })
        .collect()
}

/// The latency plot's SVG: log axis when latencies span more than [`LOG_SCALE_RATIO`].
fn draw_latency(
    points: &[LatencyPoint],
    axis: &TimeAxis,
    shading: &Shading,
    mut notes: Vec<String>,
    total: usize,
) -> Result<Plot, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (PLOT_WIDTH, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|error| error.to_string())?;
        let smallest = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let largest = points.iter().map(|p| p.1).fold(0.0, f64::max);
        let builder = |root| chart_builder(root, LABEL_ROWS);
        if points.is_empty() {
            let mut chart = builder(&root)
                .build_cartesian_2d(0f64..axis.end_s, 0f64..1f64)
                .map_err(|error| error.to_string())?;
            mesh(&mut chart, "latency (ms)", 6)?;
            let pixels = chart.plotting_area().get_pixel_range();
            shading.draw(&root, axis, &pixels, true)?;
            no_data(&root, &pixels)?;
            notes.push(if total == 0 {
                "No completed operation to draw.".to_string()
            } else {
                format!("No completed operation to draw: all {total} are off the time axis.")
            });
        } else if largest / smallest > LOG_SCALE_RATIO {
            // Whole decades, with headroom above the largest point for the fault labels.
            let range =
                10f64.powf(smallest.log10().floor())..10f64.powf((largest * 3.0).log10().ceil());
            let mut chart = builder(&root)
                .build_cartesian_2d(0f64..axis.end_s, range.log_scale())
                .map_err(|error| error.to_string())?;
            mesh(&mut chart, "latency (ms, log scale)", 8)?;
            latency_series(&mut chart, &root, points, axis, shading)?;
        } else {
            let range = 0f64..(largest * 1.3).max(LATENCY_FLOOR_MS);
            let mut chart = builder(&root)
                .build_cartesian_2d(0f64..axis.end_s, range)
                .map_err(|error| error.to_string())?;
            mesh(&mut chart, "latency (ms)", 8)?;
            latency_series(&mut chart, &root, points, axis, shading)?;
        }
        root.present().map_err(|error| error.to_string())?;
    }
    Ok(Plot {
        svg,
        notes,
        series: Vec::new(),
    })
}

/// The faults, then a point per operation (on a linear or a log latency axis).
fn latency_series<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    points: &[LatencyPoint],
    axis: &TimeAxis,
    shading: &Shading,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    let pixels = chart.plotting_area().get_pixel_range();
    shading.draw(root, axis, &pixels, true)?;
    for (kind, color) in outcome_colors() {
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.2 == kind)
                    .map(|p| Circle::new((p.0, p.1), 2, color.mix(0.7).filled())),
            )
            .map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// Outcomes in drawing order: failures last, on top of the many commits.
fn outcome_colors() -> [(OpType, RGBColor); 3] {
    [
        (OpType::Ok, OK_COLOR),
        (OpType::Fail, FAIL_COLOR),
        (OpType::Info, INFO_COLOR),
    ]
}

/// The chart layout every plot shares, so the time axes line up; `label_rows` rows of
/// room at the top for fault labels.
fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    label_rows: i32,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .margin_top(u32::try_from(label_rows.max(1) * 4).unwrap_or(8))
        .margin_right(MARGIN_RIGHT)
        .margin_left(8)
        .margin_bottom(4)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA);
    builder
}

/// Grid, axis labels and descriptions.
fn mesh<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    y_description: &str,
    y_labels: usize,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_description)
        .x_labels(16)
        .y_labels(y_labels)
        .x_label_formatter(&|value| format_number(*value))
        .y_label_formatter(&|value| format_number(*value))
        .label_style(("sans-serif", 15).into_font().color(&TEXT_COLOR))
        .axis_desc_style(("sans-serif", 16).into_font().color(&TEXT_COLOR))
        .max_light_lines(1)
        .light_line_style(RGBColor(0xf4, 0xf4, 0xf4))
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .draw()
        .map_err(|error| error.to_string())
}

/// A number as an axis label: no float noise, no trailing zeros.
fn format_number(value: f64) -> String {
    let magnitude = value.abs();
    let text = if magnitude >= 100.0 || magnitude == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.1}")
    } else if magnitude >= 0.01 {
        format!("{value:.3}")
    } else {
        format!("{value:.4}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// "no data" in the middle of a plotting area.
fn no_data(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    pixels: &(std::ops::Range<i32>, std::ops::Range<i32>),
) -> Result<(), String> {
    let (x_pixels, y_pixels) = pixels;
    let center = (
        (x_pixels.start + x_pixels.end) / 2,
        (y_pixels.start + y_pixels.end) / 2,
    );
    let style = ("sans-serif", 24)
        .into_font()
        .color(&RGBColor(0x99, 0x99, 0x99))
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
    root.draw(&Text::new("no data", center, style))
        .map_err(|error| error.to_string())
}

/// Committed, failed and unknown completions per second, in time buckets.
fn throughput_plot(
    outcome: &LabOutcome,
    axis: &TimeAxis,
    shading: &Shading,
) -> Result<Plot, ReportError> {
    let bucket_s = bucket_width(axis.end_s);
    let lines = throughput_lines(&outcome.history, axis, bucket_s);
    let mut notes = vec![if (bucket_s - 1.0).abs() > f64::EPSILON {
        format!(
            "Completions per second, averaged over {} s buckets, by completion time.",
            format_number(bucket_s)
        )
    } else {
        "Completions per second (1 s buckets), by completion time.".to_string()
    }];
    let empty = lines
        .iter()
        .all(|(_, line)| line.iter().all(|p| p.1 == 0.0));
    if empty {
        notes.push("No completed operation to draw.".to_string());
    }
    let lines = lines
        .into_iter()
        .map(|(kind, line)| {
            let color = outcome_colors()
                .into_iter()
                .find(|(k, _)| *k == kind)
                .map_or(TEXT_COLOR, |(_, color)| color);
            (color, line)
        })
        .collect();
    draw_panels(
        &[Panel {
            description: "per second",
            height: 320,
            content: PanelContent::Lines(lines),
        }],
        axis,
        shading,
        empty,
    )
    .map(|svg| Plot {
        svg,
        notes,
        series: Vec::new(),
    })
    .map_err(plot_error("throughput"))
}

/// The throughput bucket: 1 s, finer for a short run (about 60 buckets), wider when 1 s
/// would make more than [`BUCKETS_MAX`].
fn bucket_width(end_s: f64) -> f64 {
    let fine = nice_at_least(end_s / 60.0).min(1.0);
    let coarse = nice_at_least(end_s / BUCKETS_MAX);
    fine.max(coarse)
}

/// The smallest of 1, 2, 5 times a power of ten that is at least `value`.
fn nice_at_least(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 0.1;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|candidate| *candidate >= value * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

/// Per outcome, (bucket middle, completions per second).
fn throughput_lines(
    history: &[HistoryOp],
    axis: &TimeAxis,
    bucket_s: f64,
) -> Vec<(OpType, Vec<(f64, f64)>)> {
    let buckets = ((axis.end_s / bucket_s).ceil() as usize).max(1);
    let mut counts = [
        vec![0u64; buckets],
        vec![0u64; buckets],
        vec![0u64; buckets],
    ];
    for (_, end, kind) in completions(history) {
        let time_s = seconds(end);
        if !axis.shows(time_s) {
            continue;
        }
        let bucket = ((time_s / bucket_s) as usize).min(buckets - 1);
        let line = match kind {
            OpType::Ok => 0,
            OpType::Fail => 1,
            OpType::Info | OpType::Invoke => 2,
        };
        counts[line][bucket] += 1;
    }
    let [ok, fail, info] = counts;
    let to_line = |counts: Vec<u64>| {
        counts
            .into_iter()
            .enumerate()
            .map(|(bucket, count)| ((bucket as f64 + 0.5) * bucket_s, count as f64 / bucket_s))
            .collect::<Vec<_>>()
    };
    vec![
        (OpType::Ok, to_line(ok)),
        (OpType::Fail, to_line(fail)),
        (OpType::Info, to_line(info)),
    ]
}

/// A line of (time, value) points in one colour.
type Line = (RGBColor, Vec<(f64, f64)>);

/// One node's lane in the "answering" panel.
struct Lane {
    /// Node name.
    name: String,
    /// The node's colour.
    color: RGBColor,
    /// First and last sample times.
    sampled: (f64, f64),
    /// The (start, end) spans in which it answered.
    spans: Vec<(f64, f64)>,
}

/// What a panel shows.
enum PanelContent {
    /// Lines of values.
    Lines(Vec<Line>),
    /// One lane per node: coloured where it answered, a thin grey line where it did not.
    Lanes(Vec<Lane>),
}

/// One of the panels stacked in a plot.
struct Panel {
    /// The y axis description.
    description: &'static str,
    /// Height in pixels.
    height: u32,
    /// What it shows.
    content: PanelContent,
}

/// Panels stacked vertically over the shared time axis; the fault labels go on the first.
fn draw_panels(
    panels: &[Panel],
    axis: &TimeAxis,
    shading: &Shading,
    empty: bool,
) -> Result<String, String> {
    let height: u32 = panels.iter().map(|panel| panel.height).sum();
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (PLOT_WIDTH, height.max(1))).into_drawing_area();
        root.fill(&WHITE).map_err(|error| error.to_string())?;
        let mut rest = root.clone();
        for (index, panel) in panels.iter().enumerate() {
            let (area, below) = rest.split_vertically(panel.height);
            rest = below;
            let first = index == 0;
            match &panel.content {
                PanelContent::Lines(lines) => draw_line_panel(
                    &root,
                    &area,
                    panel.description,
                    lines,
                    axis,
                    shading,
                    first,
                    empty,
                )?,
                PanelContent::Lanes(lanes) => draw_lane_panel(
                    &root,
                    &area,
                    panel.description,
                    lanes,
                    axis,
                    shading,
                    first,
                    empty,
                )?,
            }
        }
        root.present().map_err(|error| error.to_string())?;
    }
    Ok(svg)
}

/// A panel of lines; `first` carries the fault labels.
#[allow(clippy::too_many_arguments)]
fn draw_line_panel(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    description: &str,
    lines: &[Line],
    axis: &TimeAxis,
    shading: &Shading,
    first: bool,
    empty: bool,
) -> Result<(), String> {
    let largest = lines
        .iter()
        .flat_map(|(_, line)| line.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    // Headroom above the largest value for the fault labels (first panel).
    let headroom = if first { 1.35 } else { 1.1 };
    let top = (largest * headroom).max(1.0);
    let mut chart = chart_builder(area, if first { LABEL_ROWS } else { 1 })
        .build_cartesian_2d(0f64..axis.end_s, 0f64..top)
        .map_err(|error| error.to_string())?;
    // Counts of transactions and members are whole: at most one label per whole number.
    let labels = (top.ceil() as usize).saturating_add(1).min(6);
    mesh(&mut chart, description, labels)?;
    let pixels = chart.plotting_area().get_pixel_range();
    shading.draw(root, axis, &pixels, first)?;
    if empty {
        return no_data(root, &pixels);
    }
    for (color, line) in lines {
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
            .map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// A panel with one lane per node, named on the left.
#[allow(clippy::too_many_arguments)]
fn draw_lane_panel(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    description: &str,
    lanes: &[Lane],
    axis: &TimeAxis,
    shading: &Shading,
    first: bool,
    empty: bool,
) -> Result<(), String> {
    let count = lanes.len().max(1) as f64;
    let mut chart = chart_builder(area, if first { LABEL_ROWS } else { 1 })
        .build_cartesian_2d(0f64..axis.end_s, 0f64..count)
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(description)
        .x_labels(16)
        .y_labels(0)
        .disable_y_mesh()
        .x_label_formatter(&|value| format_number(*value))
        .label_style(("sans-serif", 15).into_font().color(&TEXT_COLOR))
        .axis_desc_style(("sans-serif", 16).into_font().color(&TEXT_COLOR))
        .max_light_lines(1)
        .light_line_style(RGBColor(0xf4, 0xf4, 0xf4))
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .draw()
        .map_err(|error| error.to_string())?;
    let pixels = chart.plotting_area().get_pixel_range();
    shading.draw(root, axis, &pixels, first)?;
    if empty {
        return no_data(root, &pixels);
    }
    let name_style = ("sans-serif", 15).into_font().color(&TEXT_COLOR).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Right,
            plotters::style::text_anchor::VPos::Center,
        ),
    );
    for (index, lane) in lanes.iter().enumerate() {
        // The first node on top.
        let middle = count - index as f64 - 0.5;
        let (sampled_from, sampled_to) = lane.sampled;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(sampled_from, middle - 0.04), (sampled_to, middle + 0.04)],
                RGBColor(0xbb, 0xbb, 0xbb).filled(),
            )))
            .map_err(|error| error.to_string())?;
        chart
            .draw_series(lane.spans.iter().map(|(start_s, end_s)| {
                Rectangle::new(
                    [(*start_s, middle - 0.3), (*end_s, middle + 0.3)],
                    lighter(lane.color).filled(),
                )
            }))
            .map_err(|error| error.to_string())?;
        let (x, y) = chart.backend_coord(&(0.0, middle));
        root.draw(&Text::new(
            lane.name.clone(),
            (x - 6, y),
            name_style.clone(),
        ))
        .map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// Each node's transactions in doubt and members it suspects, and when it answered.
fn nodes_plot(samples: &[Sample], axis: &TimeAxis, shading: &Shading) -> Result<Plot, ReportError> {
    let mut by_node: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    let mut skipped_nodes = 0usize;
    for sample in samples {
        if !sample.time_s.is_finite() || !axis.shows(sample.time_s) {
            continue;
        }
        if by_node.len() >= NODE_LINES_MAX && !by_node.contains_key(sample.node.as_str()) {
            skipped_nodes += 1;
            continue;
        }
        by_node
            .entry(sample.node.as_str())
            .or_default()
            .push(sample);
    }
    let mut notes = Vec::new();
    if skipped_nodes > 0 {
        notes.push(format!(
            "Only the first {NODE_LINES_MAX} nodes are drawn; {skipped_nodes} samples of other \
             nodes are not."
        ));
    }
    let mut in_doubt = Vec::new();
    let mut suspected = Vec::new();
    let mut lanes = Vec::new();
    let mut thinned = false;
    for (index, (name, node_samples)) in by_node.iter_mut().enumerate() {
        node_samples.sort_by(|a, b| a.time_s.total_cmp(&b.time_s));
        let color = node_color(index);
        let doubt: Vec<(f64, f64)> = node_samples
            .iter()
            .map(|sample| (sample.time_s, sample.in_doubt as f64))
            .collect();
        let suspects: Vec<(f64, f64)> = node_samples
            .iter()
            .map(|sample| (sample.time_s, sample.suspected as f64))
            .collect();
        thinned |= doubt.len() > LINE_POINTS_MAX;
        in_doubt.push((color, maxima(&doubt, LINE_POINTS_MAX)));
        suspected.push((color, maxima(&suspects, LINE_POINTS_MAX)));
        let spans = answering_spans(node_samples);
        if spans.len() > LINE_POINTS_MAX {
            notes.push(format!(
                "{name} went down and up {} times; the lane shows its first {LINE_POINTS_MAX} \
                 spans.",
                spans.len()
            ));
        }
        let sampled = match (node_samples.first(), node_samples.last()) {
            (Some(first), Some(last)) => (first.time_s, last.time_s),
            _ => (0.0, 0.0),
        };
        lanes.push(Lane {
            name: name.to_string(),
            color,
            sampled,
            spans: spans.into_iter().take(LINE_POINTS_MAX).collect(),
        });
    }
    if thinned {
        notes.push(format!(
            "Thinned for drawing: each node's line has at most {LINE_POINTS_MAX} points, each \
             the largest value of its stretch of samples."
        ));
    }
    notes.push(
        "Answering: coloured while the node answered its samples, a thin grey line while it \
         was killed, paused or unreachable."
            .to_string(),
    );
    let empty = by_node.is_empty();
    if empty {
        notes.push("No sample of any node.".to_string());
    }
    let series = by_node.keys().map(|name| name.to_string()).collect();
    let lanes_height = 70 + 26 * u32::try_from(lanes.len().max(1)).unwrap_or(1);
    draw_panels(
        &[
            Panel {
                description: "in doubt (transactions)",
                height: 270,
                content: PanelContent::Lines(in_doubt),
            },
            Panel {
                description: "suspected (members)",
                height: 220,
                content: PanelContent::Lines(suspected),
            },
            Panel {
                description: "answering",
                height: lanes_height,
                content: PanelContent::Lanes(lanes),
            },
        ],
        axis,
        shading,
        empty,
    )
    .map(|svg| Plot { svg, notes, series })
    .map_err(plot_error("nodes"))
}

/// The spans in which a node answered: from an answering sample to the next sample (or
/// to itself, for the last), merged.
fn answering_spans(samples: &[&Sample]) -> Vec<(f64, f64)> {
    let mut spans: Vec<(f64, f64)> = Vec::new();
    for (index, sample) in samples.iter().enumerate() {
        if !sample.up {
            continue;
        }
        let end_s = samples
            .get(index + 1)
            .map_or(sample.time_s, |next| next.time_s);
        match spans.last_mut() {
            Some(last) if last.1 >= sample.time_s => last.1 = last.1.max(end_s),
            _ => spans.push((sample.time_s, end_s)),
        }
    }
    spans
}

/// At most about `keep` points: each stretch of consecutive points becomes its largest.
fn maxima(points: &[(f64, f64)], keep: usize) -> Vec<(f64, f64)> {
    if points.len() <= keep || keep == 0 {
        return points.to_vec();
    }
    let stretch = points.len().div_ceil(keep);
    points
        .chunks(stretch)
        .filter_map(|chunk| {
            chunk
                .iter()
                .copied()
                .reduce(|best, point| if point.1 > best.1 { point } else { best })
        })
        .collect()
}

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A colour as CSS.
fn css_color(color: RGBColor, alpha: f64) -> String {
    format!("rgba({}, {}, {}, {alpha})", color.0, color.1, color.2)
}

/// A made-up outcome for previewing the report and for its tests: a register workload of
/// about `operations` transactions on three nodes over 20 s, a partition (halves, 5–11 s)
/// during which transactions fail or time out, a kill of n3 (13–16 s), samples of each
/// node every 100 ms, and a failing check. Not a measurement: nothing here ran.
pub fn sample_outcome(operations: usize) -> LabOutcome {
    let duration_s = 20.0;
    let nodes = ["n1", "n2", "n3"];
    let intervals = vec![
        Interval {
            name: "halves".into(),
            detail: "n1 | n2 n3".into(),
            start_s: 5.0,
            end_s: 11.0,
        },
        Interval {
            name: "kill".into(),
            detail: "n3".into(),
            start_s: 13.0,
            end_s: 16.0,
        },
    ];
    let scenario = Scenario {
        name: "sample-partition-and-kill".into(),
        description: "A made-up run to preview the report: a partition into halves, then a \
                      node killed and restarted."
            .into(),
        cluster: ClusterSpec { nodes: 3, f: 1 },
        workload: WorkloadSpec {
            kind: LabWorkload::Register,
            clients: 8,
            rate: 0.0,
            keys: 16,
            duration: Duration::from_secs(20),
            shared_reads: false,
        },
        settle: Duration::from_secs(5),
        bugs: Vec::new(),
        nemesis: vec![
            sample_nemesis(NemesisKind::Halves, 5, 6, "n1"),
            sample_nemesis(NemesisKind::Kill, 13, 3, "n3"),
        ],
    };
    let in_fault = |time_s: f64| {
        intervals
            .iter()
            .any(|interval| interval.start_s <= time_s && time_s < interval.end_s)
    };
    let mut random = 0x5eed_u64;
    let mut next = move || {
        // SplitMix64: a fixed sequence, so the sample looks the same every time.
        random = random.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = random;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut history = Vec::with_capacity(operations.saturating_mul(2));
    // Invocations spread evenly over the run, each by its own process number (a worker
    // takes a new one after every operation here, so operations may overlap freely).
    let mut events: Vec<(f64, u64, OpType)> = Vec::with_capacity(operations.saturating_mul(2));
    for operation in 0..operations {
        let time_s = (operation as f64 + next()) * duration_s / operations as f64;
        let process = operation as u64;
        let faulty = in_fault(time_s);
        let roll = next();
        let (latency_s, kind) = if faulty && roll < 0.1 {
            (2.0, OpType::Info)
        } else if faulty && roll < 0.2 {
            (0.002 + next() * 0.01, OpType::Fail)
        } else if roll < 0.005 {
            (0.5 + next(), OpType::Info)
        } else if roll < 0.02 {
            (0.003 + next() * 0.02, OpType::Fail)
        } else {
            let slow = if faulty { 4.0 } else { 1.0 };
            (slow * (0.002 + next() * next() * 0.03), OpType::Ok)
        };
        events.push((time_s, process, OpType::Invoke));
        events.push((time_s + latency_s, process, kind));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (index, (time_s, process, kind)) in events.into_iter().enumerate() {
        history.push(HistoryOp {
            index: index as u64,
            kind,
            process,
            f: "txn".into(),
            time: (time_s * 1e9) as u64,
            value: serde_json::json!([["r", "k1", null], ["w", "k2", index.to_string()]]),
            error: match kind {
                OpType::Fail => Some("aborted: a participant voted no".into()),
                OpType::Info => Some("no answer within 2 s".into()),
                OpType::Invoke | OpType::Ok => None,
            },
        });
    }
    let mut samples = Vec::new();
    for tenth in 0..=250u32 {
        let time_s = f64::from(tenth) / 10.0;
        for (index, node) in nodes.iter().enumerate() {
            let partitioned = (5.0..11.0).contains(&time_s);
            let killed = *node == "n3" && (13.0..16.0).contains(&time_s);
            let settling = (11.0..12.5).contains(&time_s);
            let in_doubt = if killed {
                0
            } else if partitioned {
                (3.0 + (time_s - 5.0) * (index as f64 + 1.0) + next() * 3.0) as u64
            } else if settling {
                ((12.5 - time_s) * 6.0) as u64
            } else {
                (next() * 2.0) as u64
            };
            let suspected = if partitioned && index == 0 {
                2
            } else if partitioned || ((13.3..16.5).contains(&time_s) && !killed) {
                1
            } else {
                0
            };
            samples.push(Sample {
                time_s,
                node: (*node).into(),
                up: !killed,
                in_doubt,
                suspected,
            });
        }
    }
    LabOutcome {
        scenario,
        seed: 7,
        source: Source::Simulated,
        history,
        intervals,
        samples,
        checks: vec![
            Check::new(
                "history is serializable (Elle rw-register, adya)",
                true,
                "made-up history, no anomaly",
            ),
            Check::new(
                "nothing in doubt after heal",
                false,
                "n2 holds 1 undecided (made up, to show a violation)",
            ),
        ],
        summary: vec![
            ("operations".into(), operations.to_string()),
            (
                "note".into(),
                "made-up data for previewing the report".into(),
            ),
        ],
    }
}

fn sample_nemesis(kind: NemesisKind, at_s: u64, duration_s: u64, node: &str) -> NemesisSpec {
    NemesisSpec {
        kind,
        at: Duration::from_secs(at_s),
        duration: Some(Duration::from_secs(duration_s)),
        nodes: vec![node.to_string()],
        from: None,
        to: None,
        drop: None,
        delay: None,
        jitter: None,
        duplicate: None,
        period: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn a_failing_run_renders_its_verdict_faults_and_three_plots() {
        let mut outcome = sample_outcome(400);
        outcome.scenario.name = "split <script>alert(1)</script> & co".into();
        let page = render(&outcome).expect("renders");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert_eq!(count(&page, "<svg"), 3, "three plots");
        assert_eq!(count(&page, "</svg>"), 3);
        assert!(page.contains(">VIOLATION</div>"));
        assert!(!page.contains(">PASS</div>"));
        // The name is escaped everywhere, never a live tag.
        assert!(!page.contains("<script"));
        assert!(page.contains("split &lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
        // The faults: in the table and as labels on the plots.
        for name in ["halves", "kill"] {
            assert!(
                page.contains(&format!("</span></span>{name}</td>")),
                "{name}"
            );
            assert!(
                count(&page, &format!(">\n{name}\n</text>")) >= 3,
                "{name} labelled"
            );
        }
        assert!(page.contains("n1 | n2 n3"));
        // Every outcome is drawn: committed, failed and unknown points.
        for color in [OK_COLOR, FAIL_COLOR, INFO_COLOR] {
            let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
            assert!(page.contains(&fill), "{fill}");
        }
        assert!(!page.contains("no data"));
        assert!(!page.contains("Thinned"));
    }

    #[test]
    fn latencies_of_one_order_get_a_linear_axis_and_wide_ones_a_log_axis() {
        let operation = |process: u64, start_ms: u64, latency_ms: u64| {
            [
                (OpType::Invoke, start_ms),
                (OpType::Ok, start_ms + latency_ms),
            ]
            .map(|(kind, time_ms)| HistoryOp {
                index: 0,
                kind,
                process,
                f: "txn".into(),
                time: time_ms * 1_000_000,
                value: serde_json::json!([]),
                error: None,
            })
        };
        let mut outcome = sample_outcome(0);
        outcome.history = (0..50)
            .flat_map(|process| operation(process, process * 100, 5 + process % 6))
            .collect();
        let page = render(&outcome).expect("renders");
        assert!(page.contains("latency (ms)") && !page.contains("log scale"));
        outcome.history.extend(operation(99, 6_000, 2_000));
        let page = render(&outcome).expect("renders");
        assert!(page.contains("latency (ms, log scale)"));
    }

    #[test]
    fn a_passing_run_says_pass() {
        let mut outcome = sample_outcome(200);
        outcome.checks.retain(|check| check.holds);
        let page = render(&outcome).expect("renders");
        assert!(page.contains(">PASS</div>"));
        assert!(!page.contains("VIOLATION"));
    }

    #[test]
    fn an_empty_run_renders_plots_that_say_no_data() {
        let mut outcome = sample_outcome(0);
        outcome.history.clear();
        outcome.samples.clear();
        outcome.intervals.clear();
        outcome.checks.clear();
        outcome.summary.clear();
        let page = render(&outcome).expect("renders");
        assert_eq!(count(&page, "<svg"), 3);
        assert!(page.contains(">NO CHECKS</div>") && !page.contains(">PASS</div>"));
        // Latency and throughput once each, the three node panels once each.
        assert_eq!(count(&page, "\nno data\n</text>"), 5);
        assert!(page.contains("No fault was applied."));
    }

    #[test]
    fn hostile_times_and_names_do_not_break_the_page() {
        let mut outcome = sample_outcome(100);
        outcome.history.push(HistoryOp {
            index: 1_000_000,
            kind: OpType::Ok,
            process: 99,
            f: "txn".into(),
            time: u64::MAX,
            value: serde_json::json!([]),
            error: None,
        });
        for time_s in [f64::NAN, 1.0, -5.0, f64::INFINITY] {
            outcome.samples.push(Sample {
                time_s,
                node: "<b>n9</b>".into(),
                up: true,
                in_doubt: u64::MAX,
                suspected: u64::MAX,
            });
        }
        outcome.intervals.push(Interval {
            name: "<i>odd</i>".into(),
            detail: "\"quoted\"".into(),
            start_s: f64::INFINITY,
            end_s: -1.0,
        });
        let page = render(&outcome).expect("renders");
        assert!(!page.contains("<b>") && !page.contains("<i>"));
        assert!(page.contains("&lt;i&gt;odd&lt;/i&gt;"));
        assert!(
            page.contains("&lt;b&gt;n9&lt;/b&gt;"),
            "the node's legend, escaped"
        );
        assert!(page.contains("&quot;quoted&quot;"));
    }

    #[test]
    fn a_large_history_is_thinned_keeping_every_failure() {
        let outcome = sample_outcome(100_000);
        let done = completions(&outcome.history);
        let failures = done.iter().filter(|d| d.2 != OpType::Ok).count();
        assert!(
            done.len() > LATENCY_POINTS_MAX && failures < LATENCY_FAILURE_POINTS_MAX,
            "{} completions, {failures} failures",
            done.len()
        );
        let axis = TimeAxis::of(&outcome);
        let (points, notes) = latency_points(&done, &axis);
        assert_eq!(points.len(), LATENCY_POINTS_MAX);
        let kept_failures = points.iter().filter(|p| p.2 != OpType::Ok).count();
        assert_eq!(kept_failures, failures);
        assert!(
            notes.iter().any(|note| note.starts_with("Thinned")),
            "{notes:?}"
        );
        // Committed points are spread over the whole run, not the first 20,000.
        let last_ok = points
            .iter()
            .filter(|p| p.2 == OpType::Ok)
            .map(|p| p.0)
            .fold(0.0, f64::max);
        assert!(last_ok > 19.0, "{last_ok}");
        let page = render(&outcome).expect("renders");
        assert!(page.len() < 10_000_000, "{} bytes", page.len());
        assert!(count(&page, "<circle") <= LATENCY_POINTS_MAX);
        assert!(page.contains("Thinned for drawing"));
    }

    #[test]
    fn evenly_keeps_the_asked_number_spread_out() {
        let kept = evenly((0..10).collect(), 3);
        assert_eq!(kept, vec![0, 3, 6]);
        assert_eq!(evenly((0..5).collect::<Vec<_>>(), 9).len(), 5);
        assert!(evenly((0..5).collect::<Vec<_>>(), 0).is_empty());
        let kept = evenly((0..100_000).collect::<Vec<u32>>(), 20_000);
        assert_eq!(kept.len(), 20_000);
        assert_eq!(kept.last(), Some(&99_995));
    }

    #[test]
    fn buckets_are_a_second_finer_for_short_runs_and_wider_for_long_ones() {
        assert_eq!(bucket_width(55.0), 1.0);
        assert_eq!(bucket_width(10.0), 0.2);
        assert_eq!(bucket_width(3630.0), 5.0);
        assert_eq!(nice_at_least(0.3), 0.5);
        assert_eq!(nice_at_least(2.0), 2.0);
        assert_eq!(format_number(0.30000000000000004), "0.3");
        assert_eq!(format_number(12.0), "12");
        assert_eq!(format_number(250.0), "250");
    }

    #[test]
    fn write_puts_report_html_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("dtx-report-test-{}", std::process::id()));
        let path = write(&dir.join("nested"), &sample_outcome(50)).expect("writes");
        assert_eq!(
            path.file_name().and_then(|name| name.to_str()),
            Some("report.html")
        );
        let text = std::fs::read_to_string(&path).expect("reads back");
        assert!(text.starts_with("<!DOCTYPE html>"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
