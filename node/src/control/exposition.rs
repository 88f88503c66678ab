//! The `/metrics` text: a `prometheus-client` registry built at each scrape from the
//! node's counters and gauges (the event loop keeps them as plain numbers, so that the
//! protocol's hot path counts with `+= 1` and no atomics), encoded in the OpenMetrics text
//! format, every sample labelled with the node's name.

use dtx_protocol::AbortReason;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// The content type of [`Exposition::render`]'s text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape's metrics, gathered then rendered once.
#[derive(Debug)]
pub struct Exposition {
    node: String,
    registry: Registry,
    /// Classic histograms, rendered after the registry (see [`Exposition::histogram`]).
    histograms: String,
}

/// One label (name, value) of a sample, besides `node`.
pub type Label = (&'static str, String);

impl Exposition {
    /// An empty scrape of node `node`: every sample gets the label `node="<node>"`.
    pub fn new(node: &str) -> Self {
        let labels = [(Cow::Borrowed("node"), Cow::Owned(node.to_string()))];
        Exposition {
            node: node.to_string(),
            registry: Registry::with_labels(labels.into_iter()),
            histograms: String::new(),
        }
    }

    /// A counter, named as exposed (`..._total`: the encoder appends that suffix itself, so
    /// it is taken off here and the name in the source stays the one scrapers see).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        self.registry
            .register(counter_base(name), sentence(help), counter);
    }

    /// A counter with a fractional value (`process_cpu_seconds_total`), named as exposed.
    pub fn counter_float(&mut self, name: &str, help: &str, value: f64) {
        let counter = Counter::<f64, AtomicU64>::default();
        counter.inc_by(value);
        self.registry
            .register(counter_base(name), sentence(help), counter);
    }

    /// A counter with one more label, one sample per value of it.
    pub fn counter_family(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Label, u64)>,
    ) {
        let family = Family::<[Label; 1], Counter<u64>>::default();
        for (label, value) in samples {
            family.get_or_create(&[label]).inc_by(value);
        }
        self.registry
            .register(counter_base(name), sentence(help), family);
    }

    /// A gauge with a whole value.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let gauge = Gauge::<u64, AtomicU64>::default();
        gauge.set(value);
        self.registry.register(name, sentence(help), gauge);
    }

    /// A gauge with a fractional value (`process_start_time_seconds`).
    pub fn gauge_float(&mut self, name: &str, help: &str, value: f64) {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(value);
        self.registry.register(name, sentence(help), gauge);
    }

    /// A gauge with one more label and a fractional value, one sample per value of it.
    pub fn gauge_family(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Label, f64)>,
    ) {
        let family = Family::<[Label; 1], Gauge<f64, AtomicU64>>::default();
        for (label, value) in samples {
            family.get_or_create(&[label]).set(value);
        }
        self.registry.register(name, sentence(help), family);
    }

    /// A classic histogram with whole bucket bounds and a whole sum: `buckets` are
    /// (upper bound, cumulative count) pairs, the `+Inf` bucket being `count`.
    ///
    /// Written out rather than through `prometheus_client::metrics::histogram`, whose
    /// encoder prints bounds and sums as floats (`le="1.0"`, `1004.0`): the exposed series
    /// keep the labels dashboards and tests already select (`le="1"`).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: impl IntoIterator<Item = (u64, u64)>,
        sum: u64,
        count: u64,
    ) {
        let node = &self.node;
        let text = &mut self.histograms;
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (bound, cumulative) in buckets {
            text.push_str(&format!(
                "{name}_bucket{{node=\"{node}\",le=\"{bound}\"}} {cumulative}\n"
            ));
        }
        text.push_str(&format!(
            "{name}_bucket{{node=\"{node}\",le=\"+Inf\"}} {count}\n{name}_sum{{node=\"{node}\"}} {sum}\n{name}_count{{node=\"{node}\"}} {count}\n"
        ));
    }

    /// The text exposition: the registry's families, the histograms, then `# EOF`.
    pub fn render(self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would leave the text short,
        // which a scraper reports, rather than stop the node.
        if let Err(error) = encode_registry(&mut text, &self.registry) {
            tracing::warn!(%error, "metrics encoding failed");
        }
        text.push_str(&self.histograms);
        text.push_str("# EOF\n");
        text
    }
}

/// The label of an Aborted vote recorded without a reason (none does today; counted
/// rather than dropped if one ever is).
pub const UNEXPLAINED_ABORT: &str = "unexplained";

/// Aborted votes counted by reason, for `dtx_aborted_votes_total{reason=...}`: one entry
/// per [`AbortReason::kind`] label seen (so bounded by the number of kinds, with
/// [`UNEXPLAINED_ABORT`] for a vote without a reason).
#[derive(Debug, Default)]
pub struct AbortsByReason {
    counts: BTreeMap<&'static str, u64>,
}

impl AbortsByReason {
    /// Counts one Aborted vote for `reason`.
    pub fn count(&mut self, reason: Option<&AbortReason>) {
        let kind = reason.map_or(UNEXPLAINED_ABORT, AbortReason::kind);
        let count = self.counts.entry(kind).or_default();
        *count = count.saturating_add(1);
    }

    /// Aborted votes counted for reason kind `kind` so far.
    pub fn get(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    /// Adds the family `dtx_aborted_votes_total` to a scrape, one sample per reason seen.
    pub fn export(&self, exposition: &mut Exposition) {
        exposition.counter_family(
            "dtx_aborted_votes_total",
            "Aborted votes this node's RM recorded, by reason.",
            self.counts
                .iter()
                .map(|(kind, count)| (("reason", (*kind).to_string()), *count)),
        );
    }
}

/// `help` without its final period: the encoder ends every help text with one.
fn sentence(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// The name a counter is registered under: its exposed name without `_total`.
fn counter_base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}
