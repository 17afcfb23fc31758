//! The http collector's request traces against a real OTLP receiver
//! (`testbed/otlp_receiver.py`, built from the official
//! `opentelemetry-proto` definitions): requests through the testbed pod's
//! Envoy, every one traced (`--collector.http.trace-sample-rate 1`), some
//! carrying a known W3C `traceparent`. Checked: one trace per request, no
//! more; sidecar and app spans parent and child, with their pod and
//! container; the sidecar's server span around the app's in time; status
//! codes; the given trace id and parent span for requests that carried
//! one, a new trace for an invalid one; outbound calls (plain and Istio
//! layouts) as app client -> sidecar server -> upstream; gRPC calls with
//! their RPC attributes. Root and real eBPF.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use pmoas_testbed::otlp_receiver::{Receiver, can_run as receiver_can_run};
use pmoas_testbed::{Layout, Place, Pod, PodOptions};
use serde_json::Value;

/// One test at a time, and not beside http_ground_truth's load: the 2 CPUs
/// are shared.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialize() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Span kinds as OTLP numbers them.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
/// OTLP span status code Error.
const STATUS_ERROR: i64 = 2;
/// Span flags: the parent is known to be remote, and is.
const PARENT_IS_REMOTE: u64 = 0x300;

struct Setup {
    // Dropped in reverse: exporter, pod, receiver.
    receiver: Receiver,
    pod: Pod,
    exp: Exporter,
}

fn setup(test: &str, opts: PodOptions) -> Option<Setup> {
    setup_with(test, opts, &["--collector.http.trace-sample-rate", "1"])
}

fn setup_with(test: &str, opts: PodOptions, sampling: &[&str]) -> Option<Setup> {
    if !can_run(test, &testbed_problems()) {
        return None;
    }
    let python = receiver_can_run(test)?;
    let receiver = Receiver::start(&python);
    let pod = Pod::up(&opts).expect("testbed up");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc);
    let mut args = vec!["--collectors", "http", "--otlp.endpoint", &endpoint, "--otlp.batch-delay", "100ms"];
    args.extend_from_slice(sampling);
    let exp = exporter_with_collector(test, "http", &args)?;
    Some(Setup { receiver, pod, exp })
}

/// GETs of `url` from the client place with curl, one after the other,
/// each with its own `traceparent` (or none); their status codes.
fn curl(pod: &Pod, url: &str, traceparents: &[Option<&str>]) -> Vec<u16> {
    let mut cmd = pod.command(Place::Client, "curl");
    for (i, tp) in traceparents.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n"]);
        if let Some(tp) = tp {
            cmd.args(["-H", &format!("traceparent: {tp}")]);
        }
        cmd.arg(url);
    }
    let out = cmd.output().expect("curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.parse().expect("a status code")).collect()
}

/// A `traceparent` with trace id and parent id made from `n`.
fn traceparent(n: u32) -> (String, String, String) {
    let trace_id = format!("{n:08x}4bf92f3577b34da6a3ce929d");
    let parent = format!("{n:08x}0ba902b7");
    (format!("00-{trace_id}-{parent}-01"), trace_id, parent)
}

/// Every span line until `n` arrived (within 60 s), then whatever else comes
/// in the next 2 s: more than `n` is an error the caller sees.
fn receive(receiver: &Receiver, n: usize, exp: &Exporter) -> Vec<Value> {
    let mut spans = receiver.spans(n, Duration::from_secs(60));
    assert_eq!(
        spans.len(),
        n,
        "spans received by the deadline:\n{}\n{}\n{}\n{}",
        exp.scrape().describe("pmoas_http_traces_total", &[]),
        exp.scrape().describe("pmoas_http_server_request_duration_seconds_count", &[]),
        exp.scrape().describe("pmoas_ebpf_events_lost_total", &[("collector", "http")]),
        spans.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n")
    );
    spans.extend(receiver.spans(usize::MAX, Duration::from_secs(2)));
    spans
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    attr(span, key).as_str().unwrap_or("")
}

fn ns(span: &Value, key: &str) -> u64 {
    span[key].as_u64().expect("a time")
}

/// The spans as trees, by their parent links: one per trace the collector
/// made (a span whose parent is not among them is a root: none, or the
/// caller's span of a traceparent). Each tree is a chain here: root first.
fn chains(spans: &[Value]) -> Vec<Vec<&Value>> {
    let ids: HashSet<&str> = spans.iter().map(|s| s["span_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        let parent = s["parent_span_id"].as_str().unwrap();
        if ids.contains(parent) {
            children.entry(parent).or_default().push(s);
        } else {
            roots.push(s);
        }
    }
    let mut out = Vec::new();
    for root in roots {
        let mut chain = vec![root];
        loop {
            let last = chain.last().unwrap();
            match children.get(last["span_id"].as_str().unwrap()).map(Vec::as_slice) {
                None => break,
                Some([one]) => {
                    assert_eq!(one["trace_id"], root["trace_id"], "a child in its parent's trace: {one}");
                    chain.push(one);
                }
                Some(many) => panic!("a span with {} children: {last}", many.len()),
            }
        }
        out.push(chain);
    }
    assert_eq!(out.iter().map(Vec::len).sum::<usize>(), spans.len(), "every span in one tree");
    out
}

/// The pod and container a span says it belongs to.
fn check_owner(span: &Value, pod: &Pod, sidecar: bool) {
    let s = &pod.state;
    let id = if sidecar { &s.sidecar_id[..12] } else { &s.app_id[..12] };
    assert_eq!(text(span, "k8s.container.name"), id, "container of {span}");
    assert_eq!(text(span, "pmoas.role"), if sidecar { "sidecar" } else { "app" }, "{span}");
    // Named without the Kubernetes API, as the metrics' labels are.
    assert_eq!(span["resource"]["k8s.pod.uid"], s.uid.as_str(), "{span}");
    assert_eq!(span["resource"]["k8s.pod.name"], s.uid.as_str(), "{span}");
    assert_eq!(span["resource"]["service.name"], "pmoas");
}

/// `outer` starts no later and ends no earlier than `inner`.
fn contains(outer: &Value, inner: &Value) -> bool {
    ns(outer, "start_unix_nano") <= ns(inner, "start_unix_nano")
        && ns(inner, "end_unix_nano") <= ns(outer, "end_unix_nano")
}

/// An inbound chain: the sidecar's server span, its forward, the app's
/// server span; checks structure, owners, containment, status and path.
fn check_inbound(chain: &[&Value], pod: &Pod, path: &str, status: i64) {
    let [sidecar, forward, app] = chain else { panic!("3 spans in an inbound trace: {chain:#?}") };
    assert_eq!(
        (sidecar["kind"].as_i64(), forward["kind"].as_i64(), app["kind"].as_i64()),
        (Some(SERVER), Some(CLIENT), Some(SERVER))
    );
    assert_eq!(forward["parent_span_id"], sidecar["span_id"]);
    assert_eq!(app["parent_span_id"], forward["span_id"]);
    check_owner(sidecar, pod, true);
    check_owner(forward, pod, true);
    check_owner(app, pod, false);
    for s in chain {
        assert_eq!(attr(s, "http.response.status_code").as_i64(), Some(status), "{s}");
        assert_eq!(text(s, "http.request.method"), "GET");
        assert_eq!(text(s, "url.path"), path, "{s}");
        assert_eq!(s["name"], "GET");
    }
    assert!(contains(sidecar, forward), "the forward inside the sidecar's span:\n{sidecar}\n{forward}");
    assert!(contains(sidecar, app), "the app's span inside the sidecar's:\n{sidecar}\n{app}");
    assert!(ns(forward, "start_unix_nano") <= ns(app, "start_unix_nano"), "written before read");
    // Server spans are errors for 5xx; the forward (a client) for 4xx too.
    let error = |s: &Value| s["status"]["code"].as_i64() == Some(STATUS_ERROR);
    assert_eq!((error(sidecar), error(forward), error(app)), (status >= 500, status >= 400, status >= 500));
    assert_eq!(text(sidecar, "pmoas.sidecar.direction"), "inbound");
    // Sequential requests: one candidate each (by x-request-id when the
    // request came with one, as to the upstream pod through nginx).
    assert!(matches!(text(sidecar, "pmoas.sidecar.pairing"), "unique" | "request_id"), "{sidecar}");
    let added = attr(sidecar, "pmoas.sidecar.added_latency_ns").as_u64().expect("the added latency");
    let outer = ns(sidecar, "end_unix_nano") - ns(sidecar, "start_unix_nano");
    let inner = ns(forward, "end_unix_nano") - ns(forward, "start_unix_nano");
    assert_eq!(added, outer - inner, "the sidecar's time: its span less its forward's");
    assert_eq!(attr(app, "network.local.port").as_i64(), Some(8080), "nginx: {app}");
}

/// How often, and by how much at most, a span ends after the client span
/// above it: a write's exit may come after the reader's return. Reported,
/// not asserted.
fn overruns<'a>(what: &str, pairs: impl Iterator<Item = (&'a Value, &'a Value)>) {
    let (mut n, mut over, mut max) = (0, 0, 0);
    for (client, child) in pairs {
        n += 1;
        let by = ns(child, "end_unix_nano").saturating_sub(ns(client, "end_unix_nano"));
        if by > 0 {
            over += 1;
            max = max.max(by);
        }
    }
    eprintln!("{what}: {over} of {n}, by {max} ns at most");
}

/// The trace id and the root's parent a request's traceparent gave, or
/// none: a root of its own.
fn check_parent(root: &Value, given: Option<(&str, &str)>) {
    match given {
        Some((trace_id, parent)) => {
            assert_eq!(root["trace_id"], trace_id, "{root}");
            assert_eq!(root["parent_span_id"], parent, "{root}");
            assert_eq!(root["flags"].as_u64().unwrap() & PARENT_IS_REMOTE, PARENT_IS_REMOTE, "{root}");
        }
        None => {
            assert_eq!(root["parent_span_id"], "", "{root}");
            assert_eq!(root["flags"].as_u64().unwrap() & PARENT_IS_REMOTE, 0x100, "{root}");
        }
    }
}

fn traces_total(m: &Metrics, direction: &str, context: &str) -> f64 {
    m.sum("pmoas_http_traces_total", &[("direction", direction), ("context", context)])
}

#[test]
fn inbound_requests_become_sidecar_and_app_spans() {
    let _one = serialize();
    let test = "inbound_requests_become_sidecar_and_app_spans";
    let Some(Setup { receiver, pod, exp }) = setup(test, PodOptions::default()) else { return };
    let url = format!("http://{}/", pod.envoy_addr());

    // 10 without traceparent, one connection each; 3 answered 503.
    let r = tool(&pod, Place::Client, &["http", "--connect", &pod.envoy_addr().to_string(), "--count", "10"]);
    assert_eq!(r["statuses"], serde_json::json!([[200, 10]]), "{r}");
    let error_url = format!("http://{}/error", pod.envoy_addr());
    assert_eq!(curl(&pod, &error_url, &[None, None, None]), [503, 503, 503]);
    // 5 with a traceparent each, one keep-alive connection; and one
    // invalid (uppercase hex), whose ids must not be used.
    let given: Vec<(String, String, String)> = (1..=5).map(traceparent).collect();
    let (bad, bad_trace, _) = traceparent(99);
    let bad = bad.to_uppercase();
    let mut tps: Vec<Option<&str>> = given.iter().map(|g| Some(g.0.as_str())).collect();
    tps.push(Some(&bad));
    assert_eq!(curl(&pod, &url, &tps), [200; 6]);
    // Envoy's admin answers itself: a trace of the sidecar's span alone.
    // (/ready: a short answer; /stats is too long a chunked body for the
    // capture to frame, counted as http1_framing_lost.)
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], pmoas_testbed::ENVOY_ADMIN_PORT));
    let (status, _) = pod.in_netns(move || pmoas_testbed::traffic::http_get(admin, "/ready")).unwrap().unwrap();
    assert_eq!(status, 200);

    let spans = receive(&receiver, 19 * 3 + 1, &exp);
    let chains = chains(&spans);
    assert_eq!(chains.len(), 20, "one trace per request, no more");
    let (mut plain, mut with_tp, mut errors, mut admin) = (0, 0, 0, 0);
    let given_by_trace: HashMap<&str, &str> = given.iter().map(|(_, t, p)| (t.as_str(), p.as_str())).collect();
    for chain in &chains {
        let root = chain[0];
        assert_ne!(root["trace_id"], bad_trace.as_str(), "an invalid traceparent is not used");
        if chain.len() == 1 {
            // The admin request: no forward.
            admin += 1;
            assert_eq!(text(root, "url.path"), "/ready", "{root}");
            assert_eq!(text(root, "pmoas.sidecar.pairing"), "no_forward");
            assert_eq!(attr(root, "pmoas.sidecar.added_latency_ns"), &Value::Null);
            check_owner(root, &pod, true);
            check_parent(root, None);
            continue;
        }
        let path = text(root, "url.path");
        let status = if path == "/error" { 503 } else { 200 };
        check_inbound(chain, &pod, path, status);
        match given_by_trace.get(root["trace_id"].as_str().unwrap()) {
            Some(parent) => {
                with_tp += 1;
                check_parent(root, Some((root["trace_id"].as_str().unwrap(), parent)));
            }
            None => {
                check_parent(root, None);
                if status == 503 {
                    errors += 1;
                } else {
                    plain += 1;
                }
            }
        }
    }
    // 10 + 1 (invalid traceparent) new traces of 200s, 3 of 503s, 5 continued.
    assert_eq!((plain, errors, with_tp, admin), (11, 3, 5, 1));
    overruns("the app's span ends after the forward's", chains.iter().filter(|c| c.len() == 3).map(|c| (c[1], c[2])));
    let traced: HashSet<&str> = chains.iter().map(|c| c[0]["trace_id"].as_str().unwrap()).collect();
    assert_eq!(traced.len(), 20, "each its own trace id");

    let m = exp.scrape();
    assert_eq!(traces_total(&m, "inbound", "traceparent"), 5.0);
    assert_eq!(traces_total(&m, "inbound", "invalid_traceparent"), 1.0);
    assert_eq!(traces_total(&m, "inbound", "new"), 14.0, "{}", m.describe("pmoas_http_traces_total", &[]));
    assert_eq!(m.sum("pmoas_http_trace_spans_missing_total", &[]), 0.0);
    assert_eq!(m.get("pmoas_otlp_spans_exported_total", &[]), Some(58.0));
    // The requests as Envoy counted them.
    let stats = pod.envoy_stats().expect("Envoy stats");
    assert_eq!(stats.get("http.inbound.downstream_rq_completed").copied(), Some(19));
}

/// `n` GETs of `/upstream` with traceparents `tps` (None: none): each is an
/// inbound request of the pod, an outbound call of its app, and an inbound
/// request of the upstream pod.
fn outbound_calls_through_the_sidecar(test: &str, layout: Layout) {
    let _one = serialize();
    let opts = PodOptions { layout, upstream: true, ..Default::default() };
    let Some(Setup { receiver, pod, exp }) = setup(test, opts) else { return };
    let upstream = pod.upstream().expect("the upstream pod");
    let url = format!("http://{}/upstream", pod.inbound_addr());
    let given: Vec<(String, String, String)> = (1..=3).map(traceparent).collect();
    let mut tps: Vec<Option<&str>> = given.iter().map(|g| Some(g.0.as_str())).collect();
    tps.extend([None, None, None, None]);
    let n = tps.len();
    assert_eq!(curl(&pod, &url, &tps), vec![200; n]);

    let spans = receive(&receiver, n * 3 * 3, &exp);
    let chains = chains(&spans);
    assert_eq!(chains.len(), n * 3, "three traces per call");
    let uid = |p: &Pod| p.state.uid.clone();
    let (mut inbound, mut outbound, mut upstream_inbound) = (Vec::new(), Vec::new(), Vec::new());
    for chain in chains {
        let root = chain[0];
        match (root["resource"]["k8s.pod.uid"].as_str().unwrap(), root["kind"].as_i64()) {
            (u, Some(SERVER)) if u == uid(&pod) => inbound.push(chain),
            (u, Some(CLIENT)) if u == uid(&pod) => outbound.push(chain),
            (u, Some(SERVER)) if u == uid(upstream) => upstream_inbound.push(chain),
            _ => panic!("a trace of neither pod: {chain:#?}"),
        }
    }
    assert_eq!((inbound.len(), outbound.len(), upstream_inbound.len()), (n, n, n));
    for chain in &inbound {
        check_inbound(chain, &pod, "/upstream", 200);
    }
    for chain in &upstream_inbound {
        // nginx's proxy_pass http://upstream/ asks for `/`.
        check_inbound(chain, upstream, "/", 200);
    }
    let upstream_ip = upstream.state.pod_ip.to_string();
    for chain in &outbound {
        let [app, sidecar, forward] = &chain[..] else { panic!("3 spans in an outbound trace: {chain:#?}") };
        assert_eq!((sidecar["kind"].as_i64(), forward["kind"].as_i64()), (Some(SERVER), Some(CLIENT)));
        assert_eq!(sidecar["parent_span_id"], app["span_id"]);
        assert_eq!(forward["parent_span_id"], sidecar["span_id"]);
        check_owner(app, &pod, false);
        check_owner(sidecar, &pod, true);
        check_owner(forward, &pod, true);
        for s in [app, sidecar, forward] {
            assert_eq!(attr(s, "http.response.status_code").as_i64(), Some(200), "{s}");
            assert_eq!(text(s, "url.path"), "/");
        }
        assert!(contains(app, sidecar), "the sidecar's span inside the app's call:\n{app}\n{sidecar}");
        assert!(contains(app, forward) && contains(sidecar, forward), "the upstream request inside both");
        assert_eq!(text(forward, "network.peer.address"), upstream_ip, "{forward}");
        assert_eq!(text(sidecar, "pmoas.sidecar.direction"), "outbound");
        let added = attr(sidecar, "pmoas.sidecar.added_latency_ns").as_u64().expect("the added latency");
        let span = |s: &Value| ns(s, "end_unix_nano") - ns(s, "start_unix_nano");
        assert_eq!(added, span(app) - span(forward), "the app's call less the upstream request");
        assert_eq!(attr(app, "pmoas.sidecar.added_latency_ns"), &Value::Null);
        if layout == Layout::Istio {
            // The app's socket keeps the original destination.
            assert_eq!(text(app, "network.peer.address"), upstream_ip, "{app}");
        }
    }
    overruns("the sidecar's server span ends after the app's call", outbound.iter().map(|c| (c[0], c[1])));
    overruns("the app's span ends after the forward's", inbound.iter().map(|c| (c[1], c[2])));
    // A traceparent is carried by all three: the pod's inbound request, the
    // app's call (nginx passes the header on) and the upstream's request,
    // each trace a child of the caller's span.
    for (_, trace_id, parent) in &given {
        for (what, chains) in [("inbound", &inbound), ("outbound", &outbound), ("upstream", &upstream_inbound)] {
            let hits: Vec<_> = chains.iter().filter(|c| c[0]["trace_id"] == trace_id.as_str()).collect();
            assert_eq!(hits.len(), 1, "{what} trace of {trace_id}");
            check_parent(hits[0][0], Some((trace_id, parent)));
        }
    }
    let continued = |chains: &[Vec<&Value>]| chains.iter().filter(|c| c[0]["parent_span_id"] != "").count();
    assert_eq!((continued(&inbound), continued(&outbound), continued(&upstream_inbound)), (3, 3, 3));

    let m = exp.scrape();
    assert_eq!(traces_total(&m, "outbound", "traceparent"), 3.0);
    assert_eq!(traces_total(&m, "outbound", "new"), (n - 3) as f64);
    assert_eq!(traces_total(&m, "inbound", "traceparent"), 6.0, "both pods");
    assert_eq!(m.sum("pmoas_http_trace_spans_missing_total", &[]), 0.0);
}

#[test]
fn outbound_calls_plain_layout() {
    outbound_calls_through_the_sidecar("outbound_calls_plain_layout", Layout::Plain);
}

#[test]
fn outbound_calls_istio_layout() {
    outbound_calls_through_the_sidecar("outbound_calls_istio_layout", Layout::Istio);
}

#[test]
fn grpc_calls_become_traces_with_rpc_attributes() {
    let _one = serialize();
    let test = "grpc_calls_become_traces_with_rpc_attributes";
    let Some(Setup { receiver, pod, exp }) = setup(test, PodOptions { grpc: true, ..Default::default() }) else {
        return;
    };
    // 4 in flight over one HTTP/2 connection: the app's spans are matched by stream.
    let report = pod.grpc_calls(20, 5, 4).expect("grpc client");
    assert_eq!((report.codes.get("OK"), report.codes.get("UNAVAILABLE")), (Some(&15), Some(&5)), "{report:?}");
    let spans = receive(&receiver, 20 * 3, &exp);
    let chains = chains(&spans);
    assert_eq!(chains.len(), 20);
    let mut codes: HashMap<i64, usize> = HashMap::new();
    for chain in &chains {
        let [sidecar, forward, app] = &chain[..] else { panic!("3 spans: {chain:#?}") };
        check_owner(sidecar, &pod, true);
        check_owner(app, &pod, false);
        assert_eq!(
            (forward["parent_span_id"].as_str(), app["parent_span_id"].as_str()),
            (sidecar["span_id"].as_str(), forward["span_id"].as_str())
        );
        let code = attr(sidecar, "rpc.grpc.status_code").as_i64().expect("a gRPC code");
        *codes.entry(code).or_default() += 1;
        for s in [sidecar, forward, app] {
            assert_eq!(s["name"], "helloworld.Greeter/SayHello");
            assert_eq!(text(s, "rpc.system"), "grpc");
            assert_eq!(text(s, "rpc.service"), "helloworld.Greeter");
            assert_eq!(text(s, "rpc.method"), "SayHello");
            assert_eq!(attr(s, "rpc.grpc.status_code").as_i64(), Some(code), "one call, one code: {chain:#?}");
            // UNAVAILABLE is an error for servers and clients alike.
            assert_eq!(s["status"]["code"].as_i64() == Some(STATUS_ERROR), code == 14, "{s}");
        }
        assert!(contains(sidecar, app), "{sidecar}\n{app}");
    }
    assert_eq!(codes, HashMap::from([(0, 15), (14, 5)]));
    assert_eq!(exp.scrape().sum("pmoas_http_trace_spans_missing_total", &[]), 0.0);
}

#[test]
fn parent_based_sampling_traces_what_the_caller_sampled() {
    let _one = serialize();
    let test = "parent_based_sampling_traces_what_the_caller_sampled";
    // 1 in 2^30: none by chance (1 in 10^8 odds for this test).
    let sampling = ["--collector.http.trace-sample-rate", "1073741824", "--collector.http.trace-parent-based", "true"];
    let Some(Setup { receiver, pod, exp }) = setup_with(test, PodOptions::default(), &sampling) else { return };
    let url = format!("http://{}/", pod.envoy_addr());
    let given: Vec<(String, String, String)> = (1..=8).map(traceparent).collect();
    // Odd ones: the caller did not sample (flags 00).
    let tps: Vec<String> = given
        .iter()
        .enumerate()
        .map(|(i, g)| if i % 2 == 0 { g.0.clone() } else { g.0.replace("-01", "-00") })
        .collect();
    let mut requests: Vec<Option<&str>> = tps.iter().map(|t| Some(t.as_str())).collect();
    requests.extend([None, None]);
    assert_eq!(curl(&pod, &url, &requests), [200; 10]);
    let spans = receive(&receiver, 4 * 3, &exp);
    let chains = chains(&spans);
    assert_eq!(chains.len(), 4, "the 4 sampled by their caller, no other");
    let sampled: HashSet<&str> = given.iter().step_by(2).map(|g| g.1.as_str()).collect();
    for chain in &chains {
        check_inbound(chain, &pod, "/", 200);
        let trace_id = chain[0]["trace_id"].as_str().unwrap();
        assert!(sampled.contains(trace_id), "{trace_id} was not sampled by its caller");
        let parent = &given.iter().find(|g| g.1 == trace_id).unwrap().2;
        check_parent(chain[0], Some((trace_id, parent)));
    }
    let m = exp.scrape();
    assert_eq!(traces_total(&m, "inbound", "traceparent"), 4.0);
    assert_eq!(traces_total(&m, "inbound", "new"), 0.0);
}

/// The sidecar-added latency check, per request: with an Envoy
/// fault delay D, the median of the `pmoas.sidecar.added_latency_ns` of
/// the sidecar's spans, sequentially and with 16 connections at once. The
/// histogram cannot give an exact median; each request's trace can.
#[test]
fn the_median_added_latency_per_request_is_the_fault_delay() {
    let _one = serialize();
    let test = "the_median_added_latency_per_request_is_the_fault_delay";
    let delay = Duration::from_millis(20);
    let Some(Setup { receiver, pod, exp }) = setup(test, PodOptions { fault_delay: Some(delay), ..Default::default() })
    else {
        return;
    };
    let addr = pod.envoy_addr().to_string();
    let d = delay.as_nanos() as f64;
    let mut seen = 0;
    let stagger = delay.as_millis().to_string();
    // Sequential; 16 at once started together (bursts); 16 at once spread.
    for (n, concurrency, stagger) in [(21usize, "1", "0"), (64, "16", "0"), (64, "16", stagger.as_str())] {
        let r = tool(
            &pod,
            Place::Client,
            &[
                "http",
                "--connect",
                &addr,
                "--count",
                &n.to_string(),
                "--concurrency",
                concurrency,
                "--stagger-ms",
                stagger,
            ],
        );
        assert_eq!(r["statuses"], serde_json::json!([[200, n]]), "{r}");
        // The client's own time per request, connect to close: all of the
        // sidecar's time is in it (nginx's static page takes microseconds).
        let mut client: Vec<f64> = r["latencies_us"]
            .as_array()
            .expect("latencies")
            .iter()
            .map(|v| v.as_u64().expect("µs") as f64 * 1e3)
            .collect();
        assert_eq!(client.len(), n);
        client.sort_by(f64::total_cmp);
        let spans = receive(&receiver, n * 3, &exp);
        let chains = chains(&spans);
        assert_eq!(chains.len(), n, "one trace per request");
        let mut added: Vec<f64> = chains
            .iter()
            .map(|c| attr(c[0], "pmoas.sidecar.added_latency_ns").as_u64().expect("paired") as f64)
            .collect();
        added.sort_by(f64::total_cmp);
        let median = added[n / 2];
        eprintln!(
            "{test}: {concurrency} at once, stagger {stagger} ms: added latency min {:.2} median {:.2} max {:.2} ms for D = {} ms; the client's whole request: median {:.2} ms",
            added[0] / 1e6,
            median / 1e6,
            added[n - 1] / 1e6,
            d / 1e6,
            client[n / 2] / 1e6
        );
        assert!(median <= client[n / 2], "the sidecar's part ({median} ns) exceeds the client's whole request");
        // Envoy's timers run on a coarse clock: a delay may end up to one
        // 4 ms tick early (docs/testbed.md). 16 clients started together
        // stay in lock-step: their delays end on the same tick, round after
        // round, and Envoy's one worker serves the burst one after another
        // (median +1.3 to +3.5 ms here, by Envoy's own account +1 to +2.2):
        // time in the sidecar, which the metric rightly counts, so that run
        // is held to Envoy's account and D + 6 ms. Spread over D, the same 16
        // at once meet the D + 2 ms (docs/http.md).
        // Envoy's own account of the same requests (its access log, in
        // microseconds): downstream span less upstream span.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = pod.envoy_access_log().expect("Envoy's access log");
            if log.len() >= seen + n || std::time::Instant::now() > deadline {
                break log;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(log.len(), seen + n, "Envoy logged every request");
        let mut envoy: Vec<f64> =
            log[seen..].iter().map(|r| r.in_sidecar().expect("forwarded").as_nanos() as f64).collect();
        seen += n;
        envoy.sort_by(f64::total_cmp);
        eprintln!(
            "{test}: {concurrency} at once, stagger {stagger} ms: Envoy's own account: min {:.2} median {:.2} max {:.2} ms",
            envoy[0] / 1e6,
            envoy[n / 2] / 1e6,
            envoy[n - 1] / 1e6
        );
        // Ours begins and ends where Envoy's system calls do; Envoy stamps
        // its upstream span's end when it gets to the bytes, later under a
        // burst: ours is the larger by 0.2-1.3 ms here. Within 2 ms.
        let gap = median - envoy[n / 2];
        assert!((-0.5e6..=2e6).contains(&gap), "ours {median} ns, Envoy's {} ns", envoy[n / 2]);
        let above = if concurrency == "16" && stagger == "0" { 6e6 } else { 2e6 };
        assert!(
            median >= d - 4e6 && median <= d + above,
            "median {median} ns for D = {d} ns, {concurrency} at once, stagger {stagger} ms"
        );
    }
}
