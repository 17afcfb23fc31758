//! `--otlp.metrics-endpoint`: the metrics reach a receiver built from the
//! official OTLP definitions (testbed/otlp_receiver.py), over gRPC and over
//! HTTP/protobuf, with the values /metrics serves: counters as monotonic
//! cumulative sums, histograms as OTLP histograms bucket by bucket, the pod
//! and container as k8s.* resource attributes. The truth is the load
//! generator's own count of connections and the exporter's own scrape.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use pmoas_testbed::otlp_receiver::{self, Receiver};
use pmoas_testbed::{Place, Pod, PodOptions};
use serde_json::Value;

type Series = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// `le` as one spelling for both sides: "0.001" and 0.001 alike.
fn le(v: f64) -> String {
    if v.is_infinite() { "+Inf".into() } else { format!("{v}") }
}

/// The points of one OTLP export as the Prometheus series they stand for:
/// a sum gets `_total` back, a histogram its cumulative `_bucket`s, `_sum`
/// and `_count`, and the k8s.* resource attributes become the workload
/// labels again.
fn as_prometheus(points: &[Value]) -> Series {
    let mut out = Series::new();
    for p in points {
        let mut labels: BTreeMap<String, String> = p["attributes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let resource = &p["resource"];
        if let Some(pod) = resource["k8s.pod.name"].as_str() {
            labels.insert("pod".into(), pod.into());
            labels.insert("namespace".into(), resource["k8s.namespace.name"].as_str().unwrap_or("").into());
            labels.insert("container".into(), resource["k8s.container.name"].as_str().unwrap_or("").into());
        }
        let name = p["name"].as_str().unwrap();
        match p["kind"].as_str().unwrap() {
            "sum" => {
                out.insert((format!("{name}_total"), labels), p["value"].as_f64().unwrap());
            }
            "gauge" => {
                out.insert((name.to_string(), labels), p["value"].as_f64().unwrap());
            }
            "histogram" => {
                let bounds: Vec<f64> = p["bounds"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
                let buckets: Vec<u64> = p["buckets"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
                assert_eq!(buckets.len(), bounds.len() + 1, "one bucket more than bounds: {p}");
                let mut cumulative = 0;
                for (i, n) in buckets.iter().enumerate() {
                    cumulative += n;
                    let mut l = labels.clone();
                    l.insert("le".into(), le(bounds.get(i).copied().unwrap_or(f64::INFINITY)));
                    out.insert((format!("{name}_bucket"), l), cumulative as f64);
                }
                assert_eq!(cumulative, p["count"].as_u64().unwrap(), "buckets add up to the count: {p}");
                out.insert((format!("{name}_count"), labels.clone()), p["count"].as_f64().unwrap());
                out.insert((format!("{name}_sum"), labels), p["sum"].as_f64().unwrap());
            }
            other => panic!("unexpected OTLP kind {other}: {p}"),
        }
    }
    out
}

/// The TCP series of the testbed's workloads in a scrape (they stand
/// still once the traffic has ended, unlike CPU and memory).
fn tcp_series(m: &Metrics, pod: &Pod, client: &str) -> Series {
    m.series
        .iter()
        .filter(|(name, l, _)| {
            name.starts_with("pmoas_tcp_")
                && (l.get("pod").map(String::as_str) == Some(pod.state.uid.as_str())
                    || l.get("container").map(String::as_str) == Some(client))
        })
        .map(|(name, l, v)| {
            let mut l = l.clone();
            if let Some(b) = l.get_mut("le") {
                *b = le(if b == "+Inf" { f64::INFINITY } else { b.parse().unwrap() });
            }
            ((name.clone(), l), *v)
        })
        .collect()
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
}

/// Two exporters, one per transport, watch the same traffic; each export
/// must carry the scrape's TCP series of the pod and the client, value for
/// value, and the connections the client made.
#[test]
fn metrics_reach_an_otlp_receiver_with_the_scraped_values() {
    let test = "metrics_reach_an_otlp_receiver_with_the_scraped_values";
    if !can_run(test, &testbed_problems()) {
        return;
    }
    let Some(python) = otlp_receiver::can_run(test) else {
        return;
    };
    let receiver = Receiver::start(&python);
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let start = |endpoint: String, protocol: &str| {
        Exporter::start(&[
            "--collectors",
            "socket,cgroup",
            "--otlp.metrics-endpoint",
            &endpoint,
            "--otlp.protocol",
            protocol,
            "--otlp.metrics-interval",
            "1s",
        ])
    };
    let grpc = start(format!("http://127.0.0.1:{}", receiver.grpc), "grpc");
    let http = start(format!("http://127.0.0.1:{}", receiver.http), "http/protobuf");
    if !grpc.socket_collector_runs(test) || !http.socket_collector_runs(test) {
        return;
    }

    let n = 40;
    let report =
        tool(&pod, Place::Client, &["http", "--connect", &pod.envoy_addr().to_string(), "--count", &n.to_string()]);
    assert_eq!(report["connected"], n, "{report}");
    let w = Workloads::of(&pod);
    let client = w.client()[1].1.to_string();

    for (exporter, transport) in [(&grpc, "grpc"), (&http, "http")] {
        // The scrape once it stands still, then an export taken after it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Series::new();
        let (scraped, points) = loop {
            assert!(Instant::now() < deadline, "{transport}: the TCP series never stood still:\n{last:?}");
            std::thread::sleep(Duration::from_millis(500));
            let now = tcp_series(&exporter.scrape(), &pod, &client);
            if now != last || now.is_empty() {
                last = now;
                continue;
            }
            let taken_after = unix_nanos();
            let points = receiver
                .metrics_export(transport, taken_after, Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{transport}: no metrics export arrived within 10 s"));
            // Unchanged across the export: it saw the same values.
            if tcp_series(&exporter.scrape(), &pod, &client) == now {
                break (now, points);
            }
        };
        let exported = as_prometheus(&points);

        let connects = ("pmoas_tcp_connects_total".to_string(), {
            let mut l: BTreeMap<String, String> =
                w.client().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            l.insert("namespace".into(), String::new());
            l.insert("peer".into(), "node".into());
            l
        });
        assert_eq!(exported.get(&connects), Some(&(n as f64)), "{transport}: the client's {n} connects");

        let mut differ = Vec::new();
        for (key, value) in &scraped {
            match exported.get(key) {
                Some(v) if v == value => {}
                other => differ.push(format!("{key:?}: scraped {value}, exported {other:?}")),
            }
        }
        assert!(
            differ.is_empty(),
            "{transport}: {} of {} series differ:\n{}",
            differ.len(),
            scraped.len(),
            differ.join("\n")
        );
        assert!(scraped.keys().any(|(name, _)| name == "pmoas_tcp_accept_wait_seconds_bucket"), "histograms compared");
        eprintln!(
            "{transport}: {} TCP series of the pod and the client equal in the scrape and the export",
            scraped.len()
        );

        // How the points are dressed.
        let sidecar = w.sidecar();
        let envoy_point = points
            .iter()
            .find(|p| {
                p["name"] == "pmoas_tcp_accept_wait_seconds" && p["resource"]["k8s.container.name"] == sidecar[1].1
            })
            .unwrap_or_else(|| panic!("{transport}: no accept-wait histogram of the sidecar"));
        assert_eq!(envoy_point["kind"], "histogram");
        assert_eq!(envoy_point["unit"], "s");
        assert_eq!(envoy_point["temporality"], 2, "cumulative");
        assert_eq!(envoy_point["resource"]["k8s.pod.name"], pod.state.uid.as_str());
        assert_eq!(envoy_point["resource"]["service.name"], "pmoas");
        assert_eq!(envoy_point["attributes"]["role"], "sidecar");
        assert!(envoy_point["attributes"].get("pod").is_none(), "the pod is a resource attribute: {envoy_point}");
        let accepts = points.iter().find(|p| p["name"] == "pmoas_tcp_accepts").expect("accepts as a sum");
        assert_eq!((accepts["kind"].as_str(), accepts["monotonic"].as_bool()), (Some("sum"), Some(true)));
        assert!(
            points.iter().any(|p| p["name"] == "pmoas_container_cpu_usage_seconds"
                && p["resource"]["k8s.container.name"] == w.app()[1].1),
            "{transport}: the cgroup collector's series of the app"
        );
        let start = envoy_point["start_unix_nano"].as_u64().unwrap();
        assert!(start > 0 && start < envoy_point["time_unix_nano"].as_u64().unwrap());

        // The exporter counts its own exports.
        let own = exporter.scrape();
        assert!(own.sum("pmoas_otlp_metrics_exports_total", &[("result", "ok")]) >= 1.0);
        assert_eq!(own.sum("pmoas_otlp_metrics_exports_total", &[("result", "error")]), 0.0);
        assert!(own.sum("pmoas_otlp_metrics_points_total", &[("result", "accepted")]) >= points.len() as f64);
    }
}

/// A receiver that is not there: exports fail, are counted, and the
/// exporter goes on serving.
#[test]
fn failed_exports_are_counted_and_serving_goes_on() {
    let exporter = Exporter::start(&[
        "--collector.disable-defaults",
        "--otlp.metrics-endpoint",
        &format!("http://127.0.0.1:{}", free_port()),
        "--otlp.protocol",
        "http/protobuf",
        "--otlp.metrics-interval",
        "1s",
    ]);
    let m = exporter.eventually("a failed export", Duration::from_secs(15), |m| {
        m.sum("pmoas_otlp_metrics_exports_total", &[("result", "error")]) >= 2.0
    });
    assert_eq!(m.sum("pmoas_otlp_metrics_exports_total", &[("result", "ok")]), 0.0);
    assert!(m.sum("pmoas_otlp_metrics_points_total", &[("result", "failed")]) > 0.0);
    assert_eq!(m.get("pmoas_otlp_metrics_last_success_timestamp_seconds", &[]), Some(0.0));
    let log = exporter.log_text();
    assert_eq!(log.matches("OTLP metric export failed").count(), 1, "logged once while failing:\n{log}");
}

/// A bad endpoint is refused at start, naming the flag.
#[test]
fn an_https_metrics_endpoint_is_refused_with_the_flag_named() {
    let out = std::process::Command::new(exporter_bin())
        .args(["--otlp.metrics-endpoint", "https://collector:4317", "--web.listen-address", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("otlp.metrics_endpoint") && err.contains("https"), "{err}");
}
