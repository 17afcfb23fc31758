//! The metrics one scrape produces, and their encoding.
//!
//! Collectors build their series from kernel maps at scrape time, so there
//! are no long-lived metric objects: a collector fills a [`MetricSet`] with
//! values, and [`MetricSet::encode`] renders it with `prometheus-client`'s
//! encoders, in the Prometheus text format (0.0.4) or in OpenMetrics 1.0.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Label pairs of one series, in the order they are rendered.
pub type Labels = Vec<(&'static str, String)>;

/// The labels of one stored series: its own, or shared by every series of
/// one workload (a 1,100-pod node renders 56,000 series; cloning four
/// strings for each, and freeing them, was a tenth of the scrape's CPU).
#[derive(Clone, Debug, PartialEq)]
pub enum SeriesLabels {
    Owned(Labels),
    Shared(Arc<Labels>),
}

impl Deref for SeriesLabels {
    type Target = [(&'static str, String)];

    fn deref(&self) -> &Self::Target {
        match self {
            SeriesLabels::Owned(l) => l,
            SeriesLabels::Shared(l) => l,
        }
    }
}

/// The common workload labels `namespace, pod, container, role` of a
/// per-workload series (empty for the node itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub role: &'static str,
}

impl WorkloadLabels {
    pub fn of(w: &pmoas_discovery::Workload) -> WorkloadLabels {
        WorkloadLabels {
            namespace: w.namespace.clone(),
            pod: w.pod.clone(),
            container: w.container.clone(),
            role: w.role.as_label(),
        }
    }

    pub fn as_ref(&self) -> WorkloadRef<'_> {
        WorkloadRef { namespace: &self.namespace, pod: &self.pod, container: &self.container, role: self.role }
    }

    /// The four labels, in contract order.
    pub fn labels(&self) -> Labels {
        vec![
            ("namespace", self.namespace.clone()),
            ("pod", self.pod.clone()),
            ("container", self.container.clone()),
            ("role", self.role.to_string()),
        ]
    }
}

/// [`WorkloadLabels`] borrowed: to find a series' labels without copying
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadRef<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub role: &'static str,
}

impl<'a> WorkloadRef<'a> {
    pub fn of(w: &'a pmoas_discovery::Workload) -> WorkloadRef<'a> {
        WorkloadRef { namespace: &w.namespace, pod: &w.pod, container: &w.container, role: w.role.as_label() }
    }

    pub fn to_owned(self) -> WorkloadLabels {
        WorkloadLabels {
            namespace: self.namespace.to_string(),
            pod: self.pod.to_string(),
            container: self.container.to_string(),
            role: self.role,
        }
    }
}

/// Type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Name, help and type of a metric family. Counter names end in `_total`,
/// as users query them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

impl Desc {
    pub const fn counter(name: &'static str, help: &'static str) -> Desc {
        Desc { name, help, kind: Kind::Counter }
    }
    pub const fn gauge(name: &'static str, help: &'static str) -> Desc {
        Desc { name, help, kind: Kind::Gauge }
    }
    pub const fn histogram(name: &'static str, help: &'static str) -> Desc {
        Desc { name, help, kind: Kind::Histogram }
    }
}

/// A Prometheus histogram: `buckets` are (upper bound, observations in that
/// bucket alone), ascending, the last one `+Inf`.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    /// Boxed: a histogram is rare and large, and inline it would make
    /// every value of a 56,000-series page as large as itself.
    Histogram(Box<Histogram>),
}

#[derive(Clone, Debug)]
struct Family {
    desc: Desc,
    samples: Vec<(SeriesLabels, Value)>,
}

/// Output format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// Picks the format from an HTTP `Accept` header: OpenMetrics when the
    /// client lists it (Prometheus does, ahead of text), text otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Every series of one scrape, grouped by family, families sorted by name.
#[derive(Clone, Debug, Default)]
pub struct MetricSet {
    families: BTreeMap<&'static str, Family>,
}

impl MetricSet {
    pub fn new() -> MetricSet {
        MetricSet::default()
    }

    fn push(&mut self, desc: &Desc, labels: SeriesLabels, value: Value) {
        let family = self.families.entry(desc.name).or_insert_with(|| Family { desc: *desc, samples: Vec::new() });
        debug_assert_eq!(family.desc, *desc, "two descriptions of {}", desc.name);
        family.samples.push((labels, value));
    }

    /// [`MetricSet::declare`], with room for `series` more series.
    pub fn reserve(&mut self, desc: &Desc, series: usize) {
        self.declare(desc);
        if let Some(family) = self.families.get_mut(desc.name) {
            family.samples.reserve(series);
        }
    }

    /// Makes a family appear even when it has no series yet (HELP/TYPE only
    /// in the text format).
    pub fn declare(&mut self, desc: &Desc) {
        self.families.entry(desc.name).or_insert_with(|| Family { desc: *desc, samples: Vec::new() });
    }

    pub fn counter(&mut self, desc: &Desc, labels: Labels, value: f64) {
        debug_assert_eq!(desc.kind, Kind::Counter);
        self.push(desc, SeriesLabels::Owned(labels), Value::Counter(value));
    }

    /// [`MetricSet::counter`] with labels shared by other series.
    pub fn counter_shared(&mut self, desc: &Desc, labels: &Arc<Labels>, value: f64) {
        debug_assert_eq!(desc.kind, Kind::Counter);
        self.push(desc, SeriesLabels::Shared(labels.clone()), Value::Counter(value));
    }

    /// [`MetricSet::gauge`] with labels shared by other series.
    pub fn gauge_shared(&mut self, desc: &Desc, labels: &Arc<Labels>, value: f64) {
        debug_assert_eq!(desc.kind, Kind::Gauge);
        self.push(desc, SeriesLabels::Shared(labels.clone()), Value::Gauge(value));
    }

    pub fn gauge(&mut self, desc: &Desc, labels: Labels, value: f64) {
        debug_assert_eq!(desc.kind, Kind::Gauge);
        self.push(desc, SeriesLabels::Owned(labels), Value::Gauge(value));
    }

    pub fn histogram(&mut self, desc: &Desc, labels: Labels, value: Histogram) {
        debug_assert_eq!(desc.kind, Kind::Histogram);
        self.push(desc, SeriesLabels::Owned(labels), Value::Histogram(Box::new(value)));
    }

    /// Moves every series of `other` into this set.
    pub fn merge(&mut self, other: MetricSet) {
        for (name, fam) in other.families {
            match self.families.get_mut(name) {
                Some(mine) => mine.samples.extend(fam.samples),
                None => {
                    self.families.insert(name, fam);
                }
            }
        }
    }

    /// Number of series (a histogram counts once).
    pub fn len(&self) -> usize {
        self.families.values().map(|f| f.samples.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every family with its series, sorted by name: for encoders other
    /// than the text formats (OTLP).
    pub fn families(&self) -> impl Iterator<Item = (&Desc, &[(SeriesLabels, Value)])> {
        self.families.values().map(|f| (&f.desc, f.samples.as_slice()))
    }

    /// The value of one series, for tests and the landing page.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let fam = self.families.get(name)?;
        fam.samples.iter().find_map(|(l, v)| {
            let matches = labels.iter().all(|(k, want)| l.iter().any(|(lk, lv)| lk == k && lv == want));
            matches.then_some(v)
        })
    }

    /// About the size of the rendered page, a little over rather than
    /// under: every series line is its name, its labels quoted, and a value.
    pub fn page_size_estimate(&self) -> usize {
        // " 1.2345678901234567e19\n" at most, and most are far shorter
        const VALUE: usize = 24;
        self.families
            .values()
            .map(|f| {
                let header = f.desc.help.len() + 2 * f.desc.name.len() + 32;
                let series: usize = f
                    .samples
                    .iter()
                    .map(|(labels, value)| {
                        let line = f.desc.name.len()
                            + VALUE
                            + labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>();
                        match value {
                            // a line per bucket (each with `le`), _sum and _count
                            Value::Histogram(h) => (line + 16) * (h.buckets.len() + 2),
                            _ => line,
                        }
                    })
                    .sum();
                header + series
            })
            .sum()
    }

    /// Renders the set.
    pub fn encode(self, format: Format) -> String {
        // Room for the whole page up front: growing by doubling would copy
        // it, and hold two copies at once, several times (7 MiB at 1,100
        // pods).
        let reserve = self.page_size_estimate();
        self.render(format, usize::MAX, reserve).next().unwrap_or_default()
    }

    /// Renders the set in pieces of at least `piece` bytes (the last may
    /// be shorter), a family at a time, each family freed once rendered:
    /// a page sent as it is rendered is never whole in memory, and
    /// neither is its set. `reserve`: room for the first piece.
    pub fn render(self, format: Format, piece: usize, reserve: usize) -> Rendering {
        Rendering { families: self.families.into_values(), format, piece, reserve, ended: false }
    }
}

/// A set being rendered, piece by piece: see [`MetricSet::render`].
pub struct Rendering {
    families: std::collections::btree_map::IntoValues<&'static str, Family>,
    format: Format,
    piece: usize,
    reserve: usize,
    ended: bool,
}

impl Iterator for Rendering {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        use prometheus_client::encoding::{prometheus_text, text};
        if self.ended {
            return None;
        }
        let mut out = String::with_capacity(std::mem::replace(&mut self.reserve, self.piece.min(1 << 20)));
        let mut result = Ok(());
        while out.len() < self.piece {
            let Some(family) = self.families.next() else {
                self.ended = true;
                if self.format == Format::OpenMetrics {
                    result = text::encode_eof(&mut out);
                }
                break;
            };
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(Encodable(vec![family])));
            result = match self.format {
                Format::PrometheusText => prometheus_text::encode(&mut out, &registry),
                Format::OpenMetrics => text::encode_registry(&mut out, &registry),
            };
            if result.is_err() {
                break;
            }
        }
        // Writing into a String cannot fail; an Err here would be a bug in
        // the encoder, and a partial page is still better than none.
        if let Err(e) = result {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        Some(out)
    }
}

#[derive(Debug)]
struct Encodable(Vec<Family>);

impl prometheus_client::collector::Collector for Encodable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in &self.0 {
            let (name, metric_type) = match fam.desc.kind {
                // the encoders append `_total` themselves
                Kind::Counter => (fam.desc.name.strip_suffix("_total").unwrap_or(fam.desc.name), MetricType::Counter),
                Kind::Gauge => (fam.desc.name, MetricType::Gauge),
                Kind::Histogram => (fam.desc.name, MetricType::Histogram),
            };
            let mut metric = encoder.encode_descriptor(name, fam.desc.help, None, metric_type)?;
            for (labels, value) in &fam.samples {
                let labels: &[(&str, String)] = labels;
                let mut series = metric.encode_family(&labels)?;
                match value {
                    Value::Counter(v) => series.encode_counter::<NoLabelSet, f64, f64>(v, None)?,
                    Value::Gauge(v) => series.encode_gauge(v)?,
                    Value::Histogram(h) => series.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQS: Desc = Desc::counter("pmoas_test_requests_total", "Requests.");
    const UP: Desc = Desc::gauge("pmoas_test_up", "Up.");
    const LAT: Desc = Desc::histogram("pmoas_test_latency_seconds", "Latency.");

    fn sample() -> MetricSet {
        let mut m = MetricSet::new();
        m.counter(&REQS, vec![("pod", "a\"b\\c\nd".into())], 3.0);
        m.gauge(&UP, vec![], 1.0);
        m.histogram(
            &LAT,
            vec![("peer", "app".into())],
            Histogram { sum: 0.5, count: 3, buckets: vec![(0.1, 1), (1.0, 2), (f64::INFINITY, 0)] },
        );
        m
    }

    #[test]
    fn prometheus_text_format() {
        let text = sample().encode(Format::PrometheusText);
        assert!(text.contains("# TYPE pmoas_test_requests_total counter\n"), "{text}");
        assert!(text.contains("pmoas_test_requests_total{pod=\"a\\\"b\\\\c\\nd\"} 3"), "{text}");
        assert!(text.contains("pmoas_test_up 1"), "{text}");
        assert!(text.contains("pmoas_test_latency_seconds_bucket{peer=\"app\",le=\"1\"} 3"), "{text}");
        assert!(text.contains("pmoas_test_latency_seconds_bucket{peer=\"app\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("pmoas_test_latency_seconds_count{peer=\"app\"} 3"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    /// Pieces put together are the page, each but the last at least the
    /// size asked, the end marker once at the very end.
    #[test]
    fn a_page_rendered_in_pieces_is_the_whole_page() {
        let mut m = sample();
        for i in 0..300 {
            m.gauge(
                &Desc::gauge(["pmoas_test_a", "pmoas_test_b", "pmoas_test_c"][i % 3], "A."),
                vec![("i", i.to_string())],
                1.0,
            );
        }
        for format in [Format::PrometheusText, Format::OpenMetrics] {
            let whole = m.clone().encode(format);
            let pieces: Vec<String> = m.clone().render(format, 1000, 0).collect();
            assert!(pieces.len() > 3, "{format:?}: {} pieces", pieces.len());
            assert!(pieces[..pieces.len() - 1].iter().all(|p| p.len() >= 1000), "{format:?}");
            assert_eq!(pieces.concat(), whole, "{format:?}");
        }
        assert_eq!(MetricSet::new().render(Format::OpenMetrics, 10, 0).collect::<Vec<_>>(), ["# EOF\n"]);
    }

    #[test]
    fn the_page_fits_its_estimate() {
        let mut m = sample();
        for i in 0..1000 {
            m.counter(&REQS, vec![("pod", format!("pod-{i}")), ("container", "app".into())], i as f64 * 1e9);
        }
        let estimate = m.page_size_estimate();
        for format in [Format::PrometheusText, Format::OpenMetrics] {
            let page = m.clone().encode(format);
            assert!(page.len() <= estimate, "{format:?}: {} > {estimate}", page.len());
            assert!(page.len() * 2 > estimate, "{format:?}: {} is far below {estimate}", page.len());
        }
    }

    #[test]
    fn openmetrics_format() {
        let text = sample().encode(Format::OpenMetrics);
        assert!(text.contains("# TYPE pmoas_test_requests counter\n"), "{text}");
        assert!(text.contains("pmoas_test_requests_total{pod="), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "one end for the page, not one per family: {text}");
        assert_eq!(text.matches("# TYPE").count(), 3, "{text}");
    }

    #[test]
    fn accept_header_negotiation() {
        assert_eq!(Format::from_accept(None), Format::PrometheusText);
        assert_eq!(Format::from_accept(Some("text/plain;version=0.0.4")), Format::PrometheusText);
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
    }

    #[test]
    fn merge_and_lookup() {
        let mut a = sample();
        let mut b = MetricSet::new();
        b.counter(&REQS, vec![("pod", "x".into())], 7.0);
        a.merge(b);
        assert_eq!(a.len(), 4);
        assert_eq!(a.get("pmoas_test_requests_total", &[("pod", "x")]), Some(&Value::Counter(7.0)));
        assert_eq!(a.get("pmoas_test_requests_total", &[("pod", "nope")]), None);
    }
}
