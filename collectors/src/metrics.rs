//! The metrics one scrape produces, and their encoding.
//!
//! Collectors build their series from kernel maps at scrape time, so there
//! are no long-lived metric objects: a collector fills a [`MetricSet`] with
//! values, and [`MetricSet::encode`] renders it with `prometheus-client`'s
//! encoders, in the Prometheus text format (0.0.4) or in OpenMetrics 1.0.

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Label pairs of one series, in the order they are rendered.
pub type Labels = Vec<(&'static str, String)>;

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
    Histogram(Histogram),
}

#[derive(Clone, Debug)]
struct Family {
    desc: Desc,
    samples: Vec<(Labels, Value)>,
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

    fn push(&mut self, desc: &Desc, labels: Labels, value: Value) {
        let family = self.families.entry(desc.name).or_insert_with(|| Family { desc: *desc, samples: Vec::new() });
        debug_assert_eq!(family.desc, *desc, "two descriptions of {}", desc.name);
        family.samples.push((labels, value));
    }

    /// Makes a family appear even when it has no series yet (HELP/TYPE only
    /// in the text format).
    pub fn declare(&mut self, desc: &Desc) {
        self.families.entry(desc.name).or_insert_with(|| Family { desc: *desc, samples: Vec::new() });
    }

    pub fn counter(&mut self, desc: &Desc, labels: Labels, value: f64) {
        debug_assert_eq!(desc.kind, Kind::Counter);
        self.push(desc, labels, Value::Counter(value));
    }

    pub fn gauge(&mut self, desc: &Desc, labels: Labels, value: f64) {
        debug_assert_eq!(desc.kind, Kind::Gauge);
        self.push(desc, labels, Value::Gauge(value));
    }

    pub fn histogram(&mut self, desc: &Desc, labels: Labels, value: Histogram) {
        debug_assert_eq!(desc.kind, Kind::Histogram);
        self.push(desc, labels, Value::Histogram(value));
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
    pub fn families(&self) -> impl Iterator<Item = (&Desc, &[(Labels, Value)])> {
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

    /// Renders the set.
    pub fn encode(self, format: Format) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Encodable(self.families.into_values().collect())));
        let mut out = String::new();
        let result = match format {
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        };
        // Writing into a String cannot fail; an Err here would be a bug in
        // the encoder, and a partial page is still better than none.
        if let Err(e) = result {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
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
                let mut series = metric.encode_family(labels)?;
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

    #[test]
    fn openmetrics_format() {
        let text = sample().encode(Format::OpenMetrics);
        assert!(text.contains("# TYPE pmoas_test_requests counter\n"), "{text}");
        assert!(text.contains("pmoas_test_requests_total{pod="), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
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
