//! The http collector against the truth: a known mix of requests through
//! the testbed's Envoy into nginx (200s and 503s; one connection per
//! request and keep-alive; the 50 ms endpoint), counted per status for the
//! sidecar's server and client sides and nginx's server side, equal to the
//! client's own counts and Envoy's admin stats; the slow endpoint in its
//! buckets; one sidecar-added latency sample per request, under 1 ms at
//! this load. Root and real eBPF.

mod common;

use std::time::Duration;

use common::*;
use pmoas_testbed::{Layout, Place, Pod, PodOptions};

/// One test at a time: their loads would otherwise share the 2 CPUs, and
/// the added latency under 16 connections would include the other tests'
/// queueing (23.5 ms for a 20 ms delay was seen with all four at once).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialize() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup_with(test: &str, opts: PodOptions) -> Option<(Pod, Exporter)> {
    setup_args(test, opts, &[])
}

fn setup_args(test: &str, opts: PodOptions, args: &[&str]) -> Option<(Pod, Exporter)> {
    if !can_run(test, &testbed_problems()) {
        return None;
    }
    let pod = Pod::up(&opts).expect("testbed up");
    let exporter = exporter_with_collector(test, "http", &[&["--collectors", "http"], args].concat())?;
    Some((pod, exporter))
}

/// Count of a histogram's series with these labels (0 when absent).
fn count(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.sum(&format!("{name}_count"), labels)
}

#[test]
fn request_counts_per_status_match_the_client_and_envoy() {
    let _one = serialize();
    let test = "request_counts_per_status_match_the_client_and_envoy";
    // Two route patterns: the other paths ("/") are counted as _OTHER.
    let routes = ["--collector.http.routes", "/error,/{delayed}"];
    let Some((pod, exp)) = setup_args(test, PodOptions::default(), &routes) else { return };
    let w = Workloads::of(&pod);
    let addr = pod.envoy_addr().to_string();

    // One connection per request (Connection: close).
    let ok = tool(&pod, Place::Client, &["http", "--connect", &addr, "--count", "30"]);
    assert_eq!(ok["statuses"], serde_json::json!([[200, 30]]), "{ok}");
    let err = tool(&pod, Place::Client, &["http", "--connect", &addr, "--path", "/error", "--count", "10"]);
    assert_eq!(err["statuses"], serde_json::json!([[503, 10]]), "{err}");
    let slow = tool(&pod, Place::Client, &["http", "--connect", &addr, "--path", "/delay", "--count", "5"]);
    assert_eq!(slow["statuses"], serde_json::json!([[200, 5]]), "{slow}");
    // Keep-alive: 20 requests on one connection.
    let url = format!("http://{addr}/");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 20).collect();
    let out = pod
        .command(Place::Client, "curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "--keepalive-time", "10"])
        .args(&urls)
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|l| *l == "200").count(), 20, "{codes}");
    let (n200, n503) = (55.0, 10.0);

    let server = "pmoas_http_server_request_duration_seconds";
    let client = "pmoas_http_client_request_duration_seconds";
    let (sidecar, app) = (w.sidecar(), w.app());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let m = loop {
        let m = exp.scrape();
        if count(&m, server, &with(app.clone(), &[("status_code", "200")])) >= n200
            && count(&m, server, &with(sidecar.clone(), &[("status_code", "503")])) >= n503
        {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every request counted in 15 s:\n{}\n{}\n{}",
            m.describe(&format!("{server}_count"), &[]),
            m.describe(&format!("{client}_count"), &[]),
            m.describe("pmoas_ebpf_events_lost_total", &[("collector", "http")])
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(300));
    let m2 = exp.scrape();
    for (who, labels) in [("sidecar server", &sidecar), ("app server", &app)] {
        for (status, n) in [("200", n200), ("503", n503)] {
            let got = count(&m2, server, &with(labels.clone(), &[("method", "GET"), ("status_code", status)]));
            assert_eq!(got, n, "{who} {status}:\n{}", m2.describe(&format!("{server}_count"), &[]));
        }
    }
    for (status, n) in [("200", n200), ("503", n503)] {
        let got = count(&m2, client, &with(sidecar.clone(), &[("method", "GET"), ("status_code", status)]));
        assert_eq!(got, n, "sidecar -> app {status}:\n{}", m2.describe(&format!("{client}_count"), &[]));
    }
    assert_eq!(count(&m, server, &with(app.clone(), &[("status_code", "200")])), n200, "settled before");

    // Per route, at the app: the first matching pattern names the route
    // ("/" has one empty segment, which `{delayed}` does not match).
    for (route, status, n) in [("/error", "503", 10.0), ("/{delayed}", "200", 5.0), ("_OTHER", "200", 50.0)] {
        let got = count(&m2, server, &with(app.clone(), &[("route", route), ("status_code", status)]));
        assert_eq!(got, n, "route {route}:\n{}", m2.describe(&format!("{server}_count"), &[]));
    }

    // The 50 ms endpoint: exactly its 5 requests above 50 ms at nginx.
    let app_200 = with(app.clone(), &[("status_code", "200")]);
    let total = count(&m2, server, &app_200);
    let fast = m2.sum(&format!("{server}_bucket"), &with(app_200.clone(), &[("le", "0.05")]));
    let under_75 = m2.sum(&format!("{server}_bucket"), &with(app_200, &[("le", "0.075")]));
    assert_eq!((total - fast, under_75 - fast), (5.0, 5.0), "the /delay requests in (0.05, 0.075]");

    // One sidecar-added sample per request, paired; small at this load.
    let added = "pmoas_sidecar_added_latency_seconds";
    let inbound = [("pod", pod.state.uid.as_str()), ("direction", "inbound"), ("protocol", "http")];
    assert_eq!(count(&m2, added, &inbound), n200 + n503, "{}", m2.describe(&format!("{added}_count"), &[]));
    let under_1ms = m2.sum(&format!("{added}_bucket"), &with(inbound.to_vec(), &[("le", "0.001")]));
    assert!(under_1ms >= (n200 + n503) / 2.0, "median under 1 ms: {under_1ms} of {}", n200 + n503);
    assert_eq!(m2.sum("pmoas_sidecar_pairing_total", &[("outcome", "no_forward")]), 0.0);

    // Envoy's own counts (fetched last: the admin request is HTTP too).
    let stats = pod.envoy_stats().unwrap();
    let stat = |k: &str| stats.get(k).copied().unwrap_or(0) as f64;
    assert_eq!(stat("http.inbound.downstream_rq_2xx"), n200);
    assert_eq!(stat("http.inbound.downstream_rq_5xx"), n503);
    let lost: f64 = m2
        .series
        .iter()
        .filter(|(n, l, _)| {
            n == "pmoas_ebpf_events_lost_total" && l.get("collector").map(String::as_str) == Some("http")
        })
        .filter(|(_, l, _)| !matches!(l.get("reason").map(String::as_str), Some("unknown_protocol")))
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(lost, 0.0, "{}", m2.describe("pmoas_ebpf_events_lost_total", &[("collector", "http")]));
}

/// Scrapes until `name`'s count with `labels` reaches `n` (15 s at most);
/// the scrape, a moment after, so that a count above `n` shows too.
fn settled(exp: &Exporter, name: &str, labels: &[(&str, &str)], n: f64) -> Metrics {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = exp.scrape();
        if count(&m, name, labels) >= n {
            std::thread::sleep(Duration::from_millis(300));
            return exp.scrape();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} {labels:?} below {n} after 15 s:\n{}\n{}",
            m.describe(&format!("{name}_count"), &[]),
            m.describe("pmoas_ebpf_events_lost_total", &[("collector", "http")])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn grpc_calls_per_code_match_the_client() {
    let _one = serialize();
    let test = "grpc_calls_per_code_match_the_client";
    let Some((pod, exp)) = setup_with(test, PodOptions { grpc: true, ..Default::default() }) else { return };
    let w = Workloads::of(&pod);
    let report = pod.grpc_calls(40, 10, 4).expect("grpc client");
    assert_eq!(report.codes.get("OK"), Some(&30), "{report:?}");
    assert_eq!(report.codes.get("UNAVAILABLE"), Some(&10), "{report:?}");

    let server = "pmoas_grpc_server_request_duration_seconds";
    let client = "pmoas_grpc_client_request_duration_seconds";
    let call = [("grpc_service", "helloworld.Greeter"), ("grpc_method", "SayHello")];
    let m = settled(&exp, server, &with(with(w.app(), &call), &[("grpc_code", "OK")]), 30.0);
    for (who, name, labels) in [
        ("sidecar server", server, w.sidecar()),
        ("app server", server, w.app()),
        ("sidecar -> app", client, w.sidecar()),
    ] {
        for (code, n) in [("OK", 30.0), ("UNAVAILABLE", 10.0)] {
            let got = count(&m, name, &with(with(labels.clone(), &call), &[("grpc_code", code)]));
            assert_eq!(got, n, "{who} {code}:\n{}", m.describe(&format!("{name}_count"), &[]));
        }
    }
    // gRPC is not counted as HTTP too.
    assert_eq!(count(&m, "pmoas_http_server_request_duration_seconds", &w.app()), 0.0);
    let inbound = [("pod", pod.state.uid.as_str()), ("direction", "inbound"), ("protocol", "grpc")];
    assert_eq!(count(&m, "pmoas_sidecar_added_latency_seconds", &inbound), 40.0);
}

/// Every `pmoas_ebpf_events_lost_total{collector="http"}` series but
/// `unknown_protocol` (bytes of connections not known to be HTTP yet), with
/// its value: each should be 0.
fn http_losses(m: &Metrics) -> Vec<(String, f64)> {
    m.series
        .iter()
        .filter(|(n, l, _)| {
            n == "pmoas_ebpf_events_lost_total" && l.get("collector").map(String::as_str) == Some("http")
        })
        .filter(|(_, l, _)| l.get("reason").map(String::as_str) != Some("unknown_protocol"))
        .map(|(_, l, v)| (l.get("reason").cloned().unwrap_or_default(), *v))
        .collect()
}

/// gRPC calls larger than one record's capture (8 KiB): names of 20,000
/// bytes, echoed by the Greeter, so that every request and reply is a
/// HEADERS block and two DATA frames (16 KiB at most each) and each side
/// reads or writes more than 8 KiB of frames in one call — the second DATA
/// frame's header and the trailers' header block lie past the first
/// record, in its continuation records. Two calls in flight keep every
/// call under the 64 KiB a call is captured to. Counted per code at the
/// sidecar's server and client sides and the app's server side, equal to
/// the client's own counts, and nothing lost.
#[test]
fn grpc_calls_larger_than_one_record_are_counted_whole() {
    let _one = serialize();
    let test = "grpc_calls_larger_than_one_record_are_counted_whole";
    let Some((pod, exp)) = setup_with(test, PodOptions { grpc: true, ..Default::default() }) else { return };
    let w = Workloads::of(&pod);
    let report = pod.grpc_calls_padded(40, 10, 2, 20_000).expect("grpc client");
    assert_eq!(report.calls, 40, "{report:?}");
    assert_eq!(report.code("OK"), 30, "{report:?}");
    assert_eq!(report.code("UNAVAILABLE"), 10, "{report:?}");

    let server = "pmoas_grpc_server_request_duration_seconds";
    let client = "pmoas_grpc_client_request_duration_seconds";
    let call = [("grpc_service", "helloworld.Greeter"), ("grpc_method", "SayHello")];
    settled(&exp, server, &with(with(w.app(), &call), &[("grpc_code", "UNAVAILABLE")]), 10.0);
    let m = settled(&exp, server, &with(with(w.app(), &call), &[("grpc_code", "OK")]), 30.0);
    for (who, name, labels) in [
        ("sidecar server", server, w.sidecar()),
        ("app server", server, w.app()),
        ("sidecar -> app", client, w.sidecar()),
    ] {
        for (code, n) in [("OK", report.code("OK")), ("UNAVAILABLE", report.code("UNAVAILABLE"))] {
            let got = count(&m, name, &with(with(labels.clone(), &call), &[("grpc_code", code)]));
            assert_eq!(got, n as f64, "{who} {code}:\n{}", m.describe(&format!("{name}_count"), &[]));
        }
        let all = count(&m, name, &labels);
        assert_eq!(all, report.calls as f64, "{who}: no other code:\n{}", m.describe(&format!("{name}_count"), &[]));
    }
    let lost = http_losses(&m);
    assert!(lost.iter().all(|(_, v)| *v == 0.0), "nothing lost: {lost:?}");
    assert!(lost.iter().any(|(r, _)| r == "capture_part_lost"), "the continuation loss is exported: {lost:?}");
}

#[test]
fn the_added_latency_is_the_sidecars_fault_delay() {
    let _one = serialize();
    let test = "the_added_latency_is_the_sidecars_fault_delay";
    let delay = Duration::from_millis(20);
    let Some((pod, exp)) = setup_with(test, PodOptions { fault_delay: Some(delay), ..Default::default() }) else {
        return;
    };
    let addr = pod.envoy_addr().to_string();
    let added = "pmoas_sidecar_added_latency_seconds";
    let inbound = [("pod", pod.state.uid.as_str()), ("direction", "inbound"), ("protocol", "http")];
    let d = delay.as_secs_f64();
    // Sequentially, then 16 connections at once.
    let mut before = (0.0, 0.0);
    for (n, concurrency) in [(20, "1"), (64, "16")] {
        let r = tool(
            &pod,
            Place::Client,
            &["http", "--connect", &addr, "--count", &n.to_string(), "--concurrency", concurrency],
        );
        assert_eq!(r["statuses"], serde_json::json!([[200, n]]), "{r}");
        let total = before.0 + n as f64;
        let m = settled(&exp, added, &inbound, total);
        let (c, sum) = (count(&m, added, &inbound), m.sum(&format!("{added}_sum"), &inbound));
        assert_eq!(c, total, "one sample per request, {concurrency} at once");
        let mean = (sum - before.1) / n as f64;
        // Envoy's timers run on a coarse clock: a delay may end up to one
        // 4 ms tick early (docs/testbed.md). With 16 requests at once, the
        // testbed's one-worker Envoy also queues them: time in the sidecar,
        // which the metric rightly counts (seen: +3.0 to +3.5 ms on this
        // 2-core VM), so that arm is allowed one more tick above D.
        eprintln!("{test}: mean added latency {:.2} ms for {d} s, {concurrency} at once", mean * 1e3);
        let slack = if concurrency == "1" { 0.002 } else { 0.006 };
        assert!(
            mean >= d - 0.004 && mean <= d + slack,
            "mean added {mean:.4} s for a {d} s delay, {concurrency} at once"
        );
        let below = m.sum(&format!("{added}_bucket"), &with(inbound.to_vec(), &[("le", "0.01")]));
        assert_eq!(below, 0.0, "no sample under 10 ms with a 20 ms delay");
        before = (c, sum);
    }
}

#[test]
fn istio_layout_inbound_and_outbound_through_the_sidecar() {
    let _one = serialize();
    let test = "istio_layout_inbound_and_outbound_through_the_sidecar";
    let opts = PodOptions { layout: Layout::Istio, upstream: true, ..Default::default() };
    let Some((pod, exp)) = setup_with(test, opts) else { return };
    let w = Workloads::of(&pod);
    let inbound_addr = pod.inbound_addr().to_string();
    let n = 20;
    let r = tool(&pod, Place::Client, &["http", "--connect", &inbound_addr, "--count", &n.to_string()]);
    assert_eq!(r["statuses"], serde_json::json!([[200, n]]), "{r}");
    let out = 15;
    let up = pod.call_upstream(out, 1).expect("calls to the upstream");
    assert_eq!(up.statuses, vec![(200, out)], "{up:?}");

    let added = "pmoas_sidecar_added_latency_seconds";
    let uid = pod.state.uid.as_str();
    let inbound = [("pod", uid), ("direction", "inbound"), ("protocol", "http")];
    let outbound = [("pod", uid), ("direction", "outbound"), ("protocol", "http")];
    let m = settled(&exp, added, &outbound, out as f64);
    // Every request came in through the sidecar; the upstream calls went
    // out through it too (the app's connect redirected to 15001).
    assert_eq!(count(&m, added, &inbound), (n + out) as f64, "{}", m.describe(&format!("{added}_count"), &[]));
    assert_eq!(count(&m, added, &outbound), out as f64);
    // The app's own view: its requests to the upstream, as a client.
    let app_client = with(w.app(), &[("method", "GET"), ("status_code", "200")]);
    assert_eq!(count(&m, "pmoas_http_client_request_duration_seconds", &app_client), out as f64);
    assert_eq!(m.sum("pmoas_sidecar_pairing_total", &[("outcome", "no_forward")]), 0.0);
}

/// One HTTP/1.1 request on a kept-alive connection; its status, once the
/// whole answer (Content-Length bytes of body) is read.
fn keep_alive_get(s: &mut std::net::TcpStream) -> u16 {
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\nHost: pmoas\r\n\r\n").expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("answer");
        assert!(n > 0, "closed mid-answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .expect("a Content-Length");
        if got.len() >= end + 4 + length {
            return text[9..12].parse().expect("a status");
        }
    }
}

/// A user-space connection table too small for the pod
/// (`--collector.http.max-connections 16`): 24 kept-alive connections to
/// the sidecar, opened one after another, one request each. The first
/// request makes the sidecar's upstream connection and nginx's side of it
/// (one, reused): with the first downstream one, 3 entries; 13 more
/// downstream connections fill the table, and the last 10 are not
/// followed, which is counted (`connection_table_full`, per record). The
/// app's and the sidecar's client counts stay exact (their connection is
/// followed); the sidecar's server side counts exactly the requests of the
/// 14 it follows. Once the connections close, a new one is followed again.
#[test]
fn a_full_connection_table_counts_what_it_follows_and_the_rest_as_lost() {
    let _one = serialize();
    let test = "a_full_connection_table_counts_what_it_follows_and_the_rest_as_lost";
    let args = ["--collector.http.max-connections", "16"];
    let Some((pod, exp)) = setup_args(test, PodOptions::default(), &args) else { return };
    let w = Workloads::of(&pod);
    let server = "pmoas_http_server_request_duration_seconds";
    let client = "pmoas_http_client_request_duration_seconds";
    let lost = |m: &Metrics| {
        m.get("pmoas_ebpf_events_lost_total", &[("collector", "http"), ("reason", "connection_table_full")])
            .unwrap_or(0.0)
    };
    let before = exp.scrape();
    assert_eq!(before.get("pmoas_http_connections_tracked", &[]), Some(0.0), "connections followed before the test");

    let mut conns: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..24 {
        let mut s = std::net::TcpStream::connect_timeout(&pod.envoy_addr(), Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(keep_alive_get(&mut s), 200);
        conns.push(s);
        // Each connection's records reach user space before the next one's.
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = settled(&exp, server, &with(w.app(), &[("status_code", "200")]), 24.0);
    let followed_downstream = 16.0 - 2.0;
    let (app, upstream, downstream) =
        (count(&m, server, &w.app()), count(&m, client, &w.sidecar()), count(&m, server, &w.sidecar()));
    eprintln!(
        "app server {app}, sidecar client {upstream}, sidecar server {downstream}; followed {:?}; \
         connection_table_full {}",
        m.get("pmoas_http_connections_tracked", &[]),
        lost(&m)
    );
    assert_eq!(m.get("pmoas_http_connections_tracked", &[]), Some(16.0), "the table holds 16");
    assert_eq!(app, 24.0, "nginx's one connection is followed: every request");
    assert_eq!(upstream, 24.0, "the sidecar's upstream connection is followed: every request");
    assert_eq!(downstream, followed_downstream, "the sidecar's server side: the requests of its followed connections");
    // Each connection not followed lost its request's read and its answer's
    // write at least.
    assert!(lost(&m) >= 2.0 * (24.0 - followed_downstream), "connection_table_full {}", lost(&m));
    let losses: Vec<(String, f64)> =
        http_losses(&m).into_iter().filter(|(r, _)| r != "connection_table_full").collect();
    assert!(losses.iter().all(|(_, v)| *v == 0.0), "other losses: {losses:?}");

    // Closed, the connections leave the table; a new one is followed.
    drop(conns);
    exp.eventually("the closed connections to leave the table", Duration::from_secs(10), |m| {
        m.get("pmoas_http_connections_tracked", &[]).is_some_and(|n| n < 16.0)
    });
    let mut s = std::net::TcpStream::connect_timeout(&pod.envoy_addr(), Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(keep_alive_get(&mut s), 200);
    let m = settled(&exp, server, &with(w.app(), &[("status_code", "200")]), 25.0);
    assert_eq!(count(&m, server, &w.sidecar()), followed_downstream + 1.0, "a new connection is followed again");
    drop(s);
    let stats = pod.envoy_stats().unwrap();
    assert_eq!(stats.get("http.inbound.downstream_rq_2xx").copied(), Some(25), "Envoy's own count");
}
