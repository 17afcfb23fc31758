//! The socket collector in the Istio layout: the app's outbound connects are
//! REDIRECTed to its sidecar's 15001, so their peer is the sidecar, whatever
//! address the app's socket names. Ground truth: istio-init's nat rule
//! counts the connections it redirected, Envoy's outbound listener the ones
//! it accepted.
//!
//! The collector runs in this process (built as the exporter builds it), so
//! the test sees the current kernel programs, not a stale exporter binary.
//! Root and eBPF are required; without them the test skips loudly, or fails
//! under PMOAS_REQUIRE_BPF=1 (CI).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pmoas_collectors::metrics::Value;
use pmoas_collectors::{BuildContext, Collector, CollectorsConfig, MetricSet};
use pmoas_discovery::{Discovery, Settings};
use pmoas_testbed::{Layout, Pod, PodOptions, missing_prerequisites};

fn required() -> bool {
    std::env::var_os("PMOAS_REQUIRE_BPF").is_some_and(|v| v != "0")
}

fn skip(test: &str, why: &str) {
    assert!(!required(), "{test}: PMOAS_REQUIRE_BPF is set but: {why}");
    pmoas_testbed::report_skip(test, why);
}

/// Sum of every series of `name` whose labels include `want`.
fn sum(m: &MetricSet, name: &str, want: &[(&str, &str)]) -> f64 {
    m.families()
        .filter(|(d, _)| d.name == name)
        .flat_map(|(_, samples)| samples.iter())
        .filter(|(labels, _)| want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|(_, v)| match v {
            Value::Counter(c) | Value::Gauge(c) => *c,
            Value::Histogram(h) => h.count as f64,
        })
        .sum()
}

struct Scraper {
    discovery: Arc<Discovery>,
    socket: Arc<dyn Collector>,
}

impl Scraper {
    fn scrape(&self) -> MetricSet {
        self.discovery.rescan();
        let mut out = MetricSet::new();
        self.socket.collect(&mut out).expect("socket collect");
        out
    }
}

/// After minus before, of the sum of the matching series.
fn delta(after: &MetricSet, before: &MetricSet, name: &str, want: &[(&str, &str)]) -> f64 {
    sum(after, name, want) - sum(before, name, want)
}

fn envoy_delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, name: &str) -> f64 {
    (after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)) as f64
}

/// `base` and a peer label.
fn with<'a>(base: &[(&'a str, &'a str)], peer: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut l = base.to_vec();
    l.push(("peer", peer));
    l
}

/// Lets in-flight handshakes and FINs on loopback land before a scrape.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn redirected_app_connects_name_the_sidecar() {
    let test = "redirected_app_connects_name_the_sidecar";
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        return skip(test, &format!("missing {}", missing.join("; ")));
    }
    let pod = Pod::up(&PodOptions { layout: Layout::Istio, upstream: true, ..Default::default() }).expect("up");
    let discovery = match Discovery::new(&Settings::default()) {
        Ok(d) => Arc::new(d),
        Err(e) => return skip(test, &format!("discovery: {e}")),
    };
    // Pods known first: the collector seeds the node's addresses from them.
    discovery.rescan();
    let ctx = BuildContext {
        discovery: discovery.clone(),
        config: CollectorsConfig::default(),
        otlp: Arc::new(pmoas_otlp::Pipeline::disabled()),
        companions: Default::default(),
    };
    let socket = match pmoas_collectors::build("socket", &ctx) {
        Ok(c) => c,
        Err(e) => return skip(test, &format!("the socket collector cannot start: {e}")),
    };
    let s = Scraper { discovery, socket };
    let uid = pod.state.uid.as_str();
    let app = [("pod", uid), ("container", &pod.state.app_id[..12])];
    let sidecar = [("pod", uid), ("container", &pod.state.sidecar_id[..12])];
    let connects = "pmoas_tcp_connects_total";

    for (how, vip) in [("service VIP (outside the node)", true), ("upstream pod IP (a node address)", false)] {
        let n = 25;
        let before = s.scrape();
        let stats_before = pod.envoy_stats().unwrap();
        let nat_before = *pod.nat_packets("ISTIO_REDIRECT").unwrap().last().unwrap();
        let r = if vip { pod.call_upstream_service(n, 3) } else { pod.call_upstream(n, 3) }.unwrap();
        assert_eq!(r.statuses, vec![(200, n)], "{how}: {r:?}");
        settle();
        let stats_after = pod.envoy_stats().unwrap();
        let after = s.scrape();
        let nat = *pod.nat_packets("ISTIO_REDIRECT").unwrap().last().unwrap() - nat_before;
        let accepted = envoy_delta(&stats_after, &stats_before, "listener.0.0.0.0_15001.downstream_cx_total");
        assert_eq!((nat, accepted), (n, n as f64), "{how}: the truth: one redirected connection per call");

        // A program run the kernel skipped (recursion) may lose one event.
        let skipped = delta(&after, &before, "pmoas_ebpf_events_lost_total", &[("reason", "recursion")]);
        let exact = |what: &str, labels: &[(&str, &str)], truth: f64| {
            let ours = delta(&after, &before, what, labels);
            assert!(
                ours <= truth && ours >= truth - skipped,
                "{how}: {what} {labels:?}: pmoas {ours}, truth {truth} (skipped runs {skipped})"
            );
        };
        // From the first one: the SYN left REDIRECTed (socket_syn_egress).
        exact(connects, &with(&app, "sidecar"), accepted);
        exact(connects, &with(&app, "remote"), 0.0);
        exact(connects, &app, accepted);
        exact("pmoas_tcp_accepts_total", &with(&sidecar, "app"), accepted);
    }
    pod.down().expect("clean teardown");
}
