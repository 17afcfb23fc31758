//! The metrics over OTLP (`--otlp.metrics-endpoint`): every
//! `--otlp.metrics-interval`, the series /metrics would serve are sent to
//! an OTLP receiver (an OpenTelemetry Collector, or any backend that takes
//! OTLP metrics), for sites whose metrics pipeline is OpenTelemetry.
//!
//! How the Prometheus series map onto OTLP:
//! - a counter becomes a monotonic cumulative sum named without `_total`,
//!   a gauge a gauge, a histogram an OTLP histogram (explicit bounds, the
//!   count of each bucket alone, sum and count), cumulative;
//! - the unit comes from the name's suffix (`_seconds`: `s`, `_bytes`:
//!   `By`), the description from the help text;
//! - a series of a pod goes under a resource of its own carrying the OTel
//!   Kubernetes attributes `k8s.namespace.name`, `k8s.pod.name` and
//!   `k8s.container.name` (the values of the `namespace`, `pod` and
//!   `container` labels), beside the node's `service.name`,
//!   `service.version`, `host.name` and `k8s.node.name`; its other labels
//!   (`role`, `peer`, ...) stay data point attributes. Series of the node
//!   itself (no pod) go under the node's resource with all their labels;
//! - every point starts at the exporter's start (`start_time_unix_nano`),
//!   as the kernel counters behind the series do.
//!
//! A failed export is logged (once until one succeeds again) and counted;
//! nothing is queued for a retry: the next export carries the cumulative
//! values anyway. On a clean shutdown one last export is sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use pmoas_collectors::metrics::{Desc, Histogram, Kind, MetricSet, Value};
use pmoas_collectors::registry::ScrapeFilter;
use pmoas_otlp::metrics::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
use pmoas_otlp::metrics::proto::{
    self, AggregationTemporality, Gauge, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric, number_data_point,
};
use pmoas_otlp::metrics::resource::Resource;
use pmoas_otlp::metrics::{ExportMetricsServiceRequest, MetricsClient};
use pmoas_otlp::{AttrValue, Attributes};
use tokio::sync::watch;

use crate::server::AppState;

pub const EXPORTS: Desc =
    Desc::counter("pmoas_otlp_metrics_exports_total", "Metric exports over OTLP, by result (ok or error).");
pub const POINTS: Desc = Desc::counter(
    "pmoas_otlp_metrics_points_total",
    "Data points sent over OTLP, by result: accepted, rejected (by the receiver, in a partial success), failed \
     (in an export that failed).",
);
pub const LAST_SUCCESS: Desc = Desc::gauge(
    "pmoas_otlp_metrics_last_success_timestamp_seconds",
    "When an OTLP metric export last succeeded (Unix time; 0 before the first).",
);

/// The workload labels that become resource attributes, and their names.
const RESOURCE_LABELS: [(&str, &str); 3] =
    [("namespace", "k8s.namespace.name"), ("pod", "k8s.pod.name"), ("container", "k8s.container.name")];

#[derive(Default)]
pub struct OtlpMetricsStats {
    ok: AtomicU64,
    errors: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    last_success: AtomicU64,
}

impl OtlpMetricsStats {
    pub fn export(&self, set: &mut MetricSet) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        set.counter(&EXPORTS, vec![("result", "ok".into())], n(&self.ok));
        set.counter(&EXPORTS, vec![("result", "error".into())], n(&self.errors));
        for (result, a) in [("accepted", &self.accepted), ("rejected", &self.rejected), ("failed", &self.failed)] {
            set.counter(&POINTS, vec![("result", result.into())], n(a));
        }
        set.gauge(&LAST_SUCCESS, vec![], n(&self.last_success));
    }
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(value), ..Default::default() }
}

fn string(v: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(v.to_string())) }
}

fn from_attr(v: &AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::String(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
    };
    AnyValue { value: Some(value) }
}

/// The OTLP name and unit of a family.
fn name_and_unit(desc: &Desc) -> (String, &'static str) {
    let name = match desc.kind {
        Kind::Counter => desc.name.strip_suffix("_total").unwrap_or(desc.name),
        Kind::Gauge | Kind::Histogram => desc.name,
    };
    let unit = if name.ends_with("_seconds") {
        "s"
    } else if name.ends_with("_bytes") {
        "By"
    } else {
        ""
    };
    (name.to_string(), unit)
}

/// A series' pod resource key (None: the node's) and its point attributes.
fn split_labels(labels: &[(&'static str, String)]) -> (Option<[String; 3]>, Vec<KeyValue>) {
    let label = |name: &str| labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()).unwrap_or("");
    if label("pod").is_empty() {
        let attrs = labels.iter().map(|(k, v)| key_value(k, string(v))).collect();
        return (None, attrs);
    }
    let key = RESOURCE_LABELS.map(|(name, _)| label(name).to_string());
    let attrs = labels
        .iter()
        .filter(|(k, _)| !RESOURCE_LABELS.iter().any(|(name, _)| name == k))
        .map(|(k, v)| key_value(k, string(v)))
        .collect();
    (Some(key), attrs)
}

fn histogram_point(h: &Histogram, attributes: Vec<KeyValue>, start: u64, now: u64) -> HistogramDataPoint {
    let mut explicit_bounds = Vec::with_capacity(h.buckets.len());
    let mut bucket_counts = Vec::with_capacity(h.buckets.len() + 1);
    for &(upper, n) in &h.buckets {
        if upper.is_finite() {
            explicit_bounds.push(upper);
        }
        bucket_counts.push(n);
    }
    // OTLP wants one count more than bounds: the last is (last bound, +Inf).
    while bucket_counts.len() < explicit_bounds.len() + 1 {
        bucket_counts.push(0);
    }
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

fn number_point(v: f64, attributes: Vec<KeyValue>, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

/// One export request holding every series of `set`. `node`: the node's
/// resource attributes; `start`, `now`: Unix nanoseconds.
pub fn to_request(set: &MetricSet, node: &Attributes, start: u64, now: u64) -> ExportMetricsServiceRequest {
    // resource (None: the node) -> metric name -> metric
    let mut by_resource: BTreeMap<Option<[String; 3]>, BTreeMap<String, Metric>> = BTreeMap::new();
    for (desc, samples) in set.families() {
        let (name, unit) = name_and_unit(desc);
        for (labels, value) in samples {
            let (resource, attributes) = split_labels(labels);
            let metric = by_resource.entry(resource).or_default().entry(name.clone()).or_insert_with(|| Metric {
                name: name.clone(),
                description: desc.help.to_string(),
                unit: unit.to_string(),
                data: Some(match desc.kind {
                    Kind::Counter => metric::Data::Sum(Sum {
                        data_points: Vec::new(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    }),
                    Kind::Gauge => metric::Data::Gauge(Gauge { data_points: Vec::new() }),
                    Kind::Histogram => metric::Data::Histogram(proto::Histogram {
                        data_points: Vec::new(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                }),
                ..Default::default()
            });
            match (&mut metric.data, value) {
                (Some(metric::Data::Sum(s)), Value::Counter(v)) => {
                    s.data_points.push(number_point(*v, attributes, start, now))
                }
                (Some(metric::Data::Gauge(g)), Value::Gauge(v)) => {
                    g.data_points.push(number_point(*v, attributes, start, now))
                }
                (Some(metric::Data::Histogram(hist)), Value::Histogram(h)) => {
                    hist.data_points.push(histogram_point(h, attributes, start, now))
                }
                // MetricSet keeps one kind per family; a mismatch would be
                // a bug there, and a wrong point is worse than a missing one.
                _ => tracing::debug!(metric = desc.name, "value of another kind than its family; left out"),
            }
        }
    }
    let node: Vec<KeyValue> = node.iter().map(|(k, v)| key_value(k, from_attr(v))).collect();
    let scope = InstrumentationScope {
        name: "pmoas-exporter".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };
    let resource_metrics = by_resource
        .into_iter()
        .map(|(key, metrics)| {
            let mut attributes = node.clone();
            if let Some(values) = key {
                for ((_, otel_name), value) in RESOURCE_LABELS.iter().zip(values) {
                    if !value.is_empty() {
                        attributes.push(key_value(otel_name, string(&value)));
                    }
                }
            }
            ResourceMetrics {
                resource: Some(Resource { attributes, ..Default::default() }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics: metrics.into_values().collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

/// Data points of a request (a histogram counts once).
fn points(request: &ExportMetricsServiceRequest) -> u64 {
    let of = |m: &Metric| match &m.data {
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        _ => 0,
    };
    let n: usize =
        request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).map(of).sum();
    n as u64
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub struct Exporting {
    pub client: MetricsClient,
    pub interval: Duration,
    pub node: Attributes,
    pub started: SystemTime,
}

/// Exports every interval until `shutdown`, then once more.
pub async fn run(
    mut e: Exporting,
    state: Arc<AppState>,
    stats: Arc<OtlpMetricsStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let url = e.client.destination().url.clone();
    tracing::info!(%url, protocol = %e.client.destination().protocol, interval = ?e.interval, "sending metrics over OTLP");
    let start = unix_nanos(e.started);
    let mut failing = false;
    let mut ticks = tokio::time::interval(e.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; an export right at start-up would carry
    // collectors still starting, so wait one interval.
    ticks.tick().await;
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = shutdown.changed() => true,
        };
        let mut set = state.registry.scrape(&ScrapeFilter::all(), e.interval.min(state.scrape_timeout())).await;
        crate::server::exporter_metrics(&state, &mut set);
        let now = SystemTime::now();
        let request = to_request(&set, &e.node, start, unix_nanos(now));
        let n = points(&request);
        match e.client.export(request).await {
            Ok(accepted) => {
                let rejected = u64::try_from(accepted.rejected_points).unwrap_or(0).min(n);
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.accepted.fetch_add(n - rejected, Ordering::Relaxed);
                stats.rejected.fetch_add(rejected, Ordering::Relaxed);
                stats.last_success.store(unix_nanos(now) / 1_000_000_000, Ordering::Relaxed);
                if rejected > 0 {
                    tracing::warn!(%url, rejected, reason = %accepted.message, "the OTLP receiver rejected data points");
                }
                if std::mem::replace(&mut failing, false) {
                    tracing::info!(%url, "OTLP metric exports work again");
                }
            }
            Err(why) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.failed.fetch_add(n, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%url, error = %why, "OTLP metric export failed; will retry every interval");
                }
            }
        }
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmoas_collectors::metrics::{Desc, Labels};

    const ACCEPTS: Desc = Desc::counter("pmoas_tcp_accepts_total", "Accepts.");
    const UP: Desc = Desc::gauge("pmoas_collector_up", "Up.");
    const WAIT: Desc = Desc::histogram("pmoas_tcp_accept_wait_seconds", "Wait.");

    fn workload(pod: &str, container: &str) -> Labels {
        vec![
            ("namespace", "shop".into()),
            ("pod", pod.into()),
            ("container", container.into()),
            ("role", "sidecar".into()),
        ]
    }

    fn resource_attr<'a>(r: &'a ResourceMetrics, key: &str) -> Option<&'a str> {
        r.resource.as_ref()?.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value {
            Some(AnyValue { value: Some(any_value::Value::StringValue(s)) }) => Some(s.as_str()),
            _ => None,
        })
    }

    #[test]
    fn series_map_onto_otlp_kinds_and_k8s_resources() {
        let mut set = MetricSet::new();
        let mut with_peer = workload("web-0", "envoy");
        with_peer.push(("peer", "app".into()));
        set.counter(&ACCEPTS, with_peer, 42.0);
        set.counter(&ACCEPTS, workload("web-0", "nginx"), 7.0);
        set.gauge(&UP, vec![("collector", "socket".into())], 1.0);
        set.histogram(
            &WAIT,
            workload("web-0", "envoy"),
            Histogram { sum: 0.25, count: 6, buckets: vec![(0.001, 1), (0.01, 2), (f64::INFINITY, 3)] },
        );
        let node = vec![pmoas_otlp::attr("k8s.node.name", "node-1")];
        let req = to_request(&set, &node, 10, 20);
        // node + web-0/envoy + web-0/nginx
        assert_eq!(req.resource_metrics.len(), 3);
        let node_rm = req.resource_metrics.iter().find(|r| resource_attr(r, "k8s.pod.name").is_none()).unwrap();
        assert_eq!(resource_attr(node_rm, "k8s.node.name"), Some("node-1"));
        let up = &node_rm.scope_metrics[0].metrics[0];
        assert_eq!(up.name, "pmoas_collector_up");
        let Some(metric::Data::Gauge(g)) = &up.data else { panic!("{up:?}") };
        assert_eq!(g.data_points[0].attributes[0].key, "collector");

        let envoy =
            req.resource_metrics.iter().find(|r| resource_attr(r, "k8s.container.name") == Some("envoy")).unwrap();
        assert_eq!(resource_attr(envoy, "k8s.namespace.name"), Some("shop"));
        assert_eq!(resource_attr(envoy, "k8s.pod.name"), Some("web-0"));
        assert_eq!(resource_attr(envoy, "k8s.node.name"), Some("node-1"));
        let metrics = &envoy.scope_metrics[0].metrics;
        let accepts = metrics.iter().find(|m| m.name == "pmoas_tcp_accepts").expect("counter without _total");
        let Some(metric::Data::Sum(sum)) = &accepts.data else { panic!("{accepts:?}") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let p = &sum.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(42.0)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["role", "peer"], "workload labels moved to the resource");

        let wait = metrics.iter().find(|m| m.name == "pmoas_tcp_accept_wait_seconds").unwrap();
        assert_eq!(wait.unit, "s");
        let Some(metric::Data::Histogram(h)) = &wait.data else { panic!("{wait:?}") };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, [0.001, 0.01]);
        assert_eq!(p.bucket_counts, [1, 2, 3]);
        assert_eq!((p.count, p.sum), (6, Some(0.25)));
        assert_eq!(points(&req), 4);
    }

    #[test]
    fn series_outside_pods_keep_their_labels() {
        let mut set = MetricSet::new();
        set.counter(
            &ACCEPTS,
            vec![("namespace", "".into()), ("pod", "".into()), ("container", "sshd.service".into())],
            3.0,
        );
        let req = to_request(&set, &Vec::new(), 0, 1);
        assert_eq!(req.resource_metrics.len(), 1);
        let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(metric::Data::Sum(s)) = &m.data else { panic!() };
        assert_eq!(s.data_points[0].attributes.len(), 3);
    }

    #[test]
    fn a_histogram_without_an_inf_bucket_still_has_one_count_more_than_bounds() {
        let p = histogram_point(&Histogram { sum: 1.0, count: 1, buckets: vec![(1.0, 1)] }, Vec::new(), 0, 1);
        assert_eq!(p.explicit_bounds, [1.0]);
        assert_eq!(p.bucket_counts, [1, 0]);
    }
}
