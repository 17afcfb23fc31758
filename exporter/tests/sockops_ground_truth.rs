//! The sockops collector (issue 12) on the testbed, against what knows the
//! answer: the traffic tools' own byte counts and checksums, wrk, Envoy's
//! admin stats, and the TCP segments of the pod's network namespace.
//!
//! - Bytes between two containers of a pod go by redirect, intact, and
//!   every byte is counted: the sender's redirected + miss bytes equal what
//!   the client sent, and the socket collector's byte counts are what they
//!   are without sockops (the companion table adds what TCP never saw).
//! - Through Envoy under wrk, in both layouts (plain, Istio's REDIRECT and
//!   127.0.0.6): 0 failed requests, every checksummed body (64 B to 1 MiB)
//!   byte-identical, Envoy's upstream bytes equal our counters, the http
//!   collector's request counts equal Envoy's.
//! - A second exporter with sockops refuses to start it (two generations
//!   of the programs would refuse each other's sockets) and says why.
//! - SIGKILL of the exporter mid-load: nothing fails, new in-pod
//!   connections take the plain TCP stack; a new exporter started under the
//!   same load accelerates again without EBUSY (no insert errors).
//!
//! Root and real eBPF; one test at a time (each changes how the pod's
//! traffic flows, and starts its own exporter).

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pmoas_testbed::traffic::FetchReport;
use pmoas_testbed::{Layout, Place, Pod, PodOptions};

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialize() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const PROGRAMS: [&str; 4] = ["sockops_redirect", "sockops_recv_length", "sockops_syn_egress", "sockops_established"];

fn pod_up(test: &str, layout: Layout) -> Option<Pod> {
    pod_up_with(test, PodOptions { layout, ..Default::default() })
}

fn pod_up_with(test: &str, opts: PodOptions) -> Option<Pod> {
    if !can_run(test, &testbed_problems()) {
        return None;
    }
    Some(Pod::up(&opts).expect("testbed up"))
}

/// The exporter with socket, http and sockops for this pod, once its four
/// sockops programs are attached and discovery knows both containers (their
/// cgroups are then in the programs' allow-map): None (skipped) when sockops
/// cannot run here and PMOAS_REQUIRE_BPF is not set.
fn start_exporter(test: &str, pod: &Pod) -> Option<Exporter> {
    exporter_with(test, pod, &[])
}

/// [`start_exporter`] with more arguments.
fn exporter_with(test: &str, pod: &Pod, extra: &[&str]) -> Option<Exporter> {
    let mut args = vec!["--collectors", "socket,http", "--with-sockops", "--target.pod", &pod.state.uid];
    args.extend_from_slice(extra);
    let exporter = exporter_with_collector(test, "sockops", &args)?;
    let m = exporter.scrape();
    for p in PROGRAMS {
        assert_eq!(
            m.get("pmoas_ebpf_program_attached", &[("collector", "sockops"), ("program", p)]),
            Some(1.0),
            "{test}: {p} not attached:\n{}",
            exporter.log_text()
        );
    }
    let w = Workloads::of(pod);
    exporter.eventually("discovery knows the pod's containers", Duration::from_secs(15), |m| {
        m.get("pmoas_container_info", &w.sidecar()).is_some() && m.get("pmoas_container_info", &w.app()).is_some()
    });
    // The allow-map is written right after discovery's rescan publishes.
    std::thread::sleep(Duration::from_millis(300));
    Some(exporter)
}

/// What a container's sockets in the map sent: by redirect + through TCP.
fn sent_through_map(m: &Metrics, w: &[(&str, &str)]) -> (f64, f64) {
    (m.sum("pmoas_sockops_redirected_bytes_total", w), m.sum("pmoas_sockops_redirect_miss_bytes_total", w))
}

/// One in-pod exchange, app (client) -> sidecar (server) on 127.0.0.1:
/// `count` connections, `up` bytes each up and `down` back; what TCP itself
/// carried of the client's bytes (its sockets' bytes_acked: SYN and FIN
/// only when every byte went by redirect).
fn in_pod_exchange(pod: &Pod, port: u16, count: u64, up: u64, down: u64) -> u64 {
    in_pod_exchange_held(pod, port, count, up, down, false)
}

/// [`in_pod_exchange`]; with `hold`, all `count` connections are open at once.
fn in_pod_exchange_held(pod: &Pod, port: u16, count: u64, up: u64, down: u64, hold: bool) -> u64 {
    let addr = format!("127.0.0.1:{port}");
    let srv =
        server(pod, Place::Sidecar, &["--listen", &addr, "--count", &count.to_string(), "--send", &down.to_string()]);
    let (n, bytes) = (count.to_string(), up.to_string());
    let mut args = vec!["tcp-client", "--connect", &addr, "--count", &n, "--send", &bytes];
    if hold {
        args.push("--hold");
    }
    let c = tool(pod, Place::App, &args);
    let s = finish(srv);
    assert_eq!(c["connected"], count, "{c}");
    assert_eq!(c["bytes_sent"], count * up, "{c}");
    assert_eq!(c["bytes_received"], count * down, "client got every byte: {c}");
    assert_eq!(s["bytes_received"], count * up, "server got every byte: {s}");
    c["tcp_bytes_acked"].as_u64().expect("tcp_bytes_acked")
}

/// A child process killed (by its PID) if the test ends before it did.
struct Running(Option<Child>);

impl Running {
    fn take(mut self) -> Child {
        self.0.take().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn in_pod_bytes_go_by_redirect_and_every_byte_is_counted() {
    let test = "in_pod_bytes_go_by_redirect_and_every_byte_is_counted";
    let _one = serialize();
    let Some(pod) = pod_up(test, Layout::Plain) else { return };
    let Some(exporter) = start_exporter(test, &pod) else { return };
    let w = Workloads::of(&pod);
    const N: u64 = 20;
    const UP: u64 = 100_000;
    const DOWN: u64 = 300_000;
    let by_tcp = in_pod_exchange(&pod, 7100, N, UP, DOWN);

    let m = exporter.eventually("every accelerated socket closed", Duration::from_secs(10), |m| {
        m.get("pmoas_sockops_active_sockets", &w.app()) == Some(0.0)
            && m.get("pmoas_sockops_active_sockets", &w.sidecar()) == Some(0.0)
            && m.sum("pmoas_tcp_sent_bytes_total", &with(w.app(), &[("peer", "sidecar")])) >= (N * UP) as f64
    });
    let (app_redirected, app_missed) = sent_through_map(&m, &w.app());
    let (sidecar_redirected, sidecar_missed) = sent_through_map(&m, &w.sidecar());
    eprintln!(
        "{test}: app sent {app_redirected} B by redirect + {app_missed} B through TCP, sidecar {sidecar_redirected} + \
         {sidecar_missed}; TCP acknowledged {by_tcp} B of the app's {} B",
        N * UP
    );
    assert_eq!(app_redirected + app_missed, (N * UP) as f64, "app: every byte it sent, counted once");
    assert_eq!(sidecar_redirected + sidecar_missed, (N * DOWN) as f64, "sidecar: every byte it sent");
    assert_eq!(m.sum("pmoas_sockops_redirected_received_bytes_total", &w.sidecar()), app_redirected);
    assert_eq!(m.sum("pmoas_sockops_redirected_received_bytes_total", &w.app()), sidecar_redirected);
    assert!(app_redirected >= 0.9 * (N * UP) as f64, "mostly redirected: {app_redirected}");
    assert!(sidecar_redirected >= 0.9 * (N * DOWN) as f64, "mostly redirected: {sidecar_redirected}");
    assert_eq!(by_tcp as f64, app_missed + (N * 2) as f64, "TCP carried the misses, the SYNs and the FINs");
    assert_eq!(m.sum("pmoas_sockops_insert_errors_total", &[]), 0.0);

    // The socket collector: what the app wrote and read, as without sockops.
    let app_to_sidecar = with(w.app(), &[("peer", "sidecar")]);
    let sidecar_from_app = with(w.sidecar(), &[("peer", "app")]);
    assert_eq!(m.sum("pmoas_tcp_sent_bytes_total", &app_to_sidecar), (N * UP) as f64);
    assert_eq!(m.sum("pmoas_tcp_received_bytes_total", &app_to_sidecar), (N * DOWN) as f64);
    assert_eq!(m.sum("pmoas_tcp_sent_bytes_total", &sidecar_from_app), (N * DOWN) as f64);
    assert_eq!(m.sum("pmoas_tcp_received_bytes_total", &sidecar_from_app), (N * UP) as f64);
    assert_eq!(m.sum("pmoas_tcp_connects_total", &app_to_sidecar), N as f64);
    assert_eq!(m.sum("pmoas_tcp_accepts_total", &sidecar_from_app), N as f64);
    assert_no_sockops_losses(&m);

    // A second exporter with sockops on this node refuses (its sockets
    // would meet ours in two maps: EBUSY), says why, and changes nothing.
    let second = Exporter::start(&["--collectors", "socket", "--with-sockops", "--target.pod", &pod.state.uid]);
    let m2 = second.scrape();
    assert_eq!(m2.get("pmoas_scrape_collector_success", &[("collector", "sockops")]), Some(0.0));
    assert_eq!(m2.get("pmoas_scrape_collector_success", &[("collector", "socket")]), Some(1.0), "the rest runs");
    let (_, page) = second.get("/").unwrap();
    assert!(page.contains("another pmoas sockops program is attached"), "the reason is on the landing page:\n{page}");
    assert_eq!(in_pod_exchange(&pod, 7101, 1, UP, DOWN), 2, "still accelerated by the first");
    drop(second);
    let m = exporter.eventually("the first exporter counts on", Duration::from_secs(10), |m| {
        sent_through_map(m, &w.app()).0 >= ((N + 1) * UP) as f64
    });
    assert_eq!(sent_through_map(&m, &w.app()), (((N + 1) * UP) as f64, 0.0));
    assert_eq!(m.sum("pmoas_sockops_insert_errors_total", &[]), 0.0);
    drop(exporter);
    pod.down().unwrap();
}

/// Issue 13: a socket map too small for the connections open at once
/// leaves the rest on TCP, counted; every byte still arrives and is counted
/// once, and the socket collector's bytes stay exact.
#[test]
fn a_full_socket_map_leaves_connections_on_tcp_and_counts_every_byte() {
    let test = "a_full_socket_map_leaves_connections_on_tcp_and_counts_every_byte";
    let _one = serialize();
    let Some(pod) = pod_up(test, Layout::Plain) else { return };
    let Some(exporter) = exporter_with(test, &pod, &["--collector.sockops.max-sockets", "64"]) else { return };
    let w = Workloads::of(&pod);
    const N: u64 = 100; // 200 sockets at once, for 64 places
    const UP: u64 = 10_000;
    const DOWN: u64 = 30_000;
    let by_tcp = in_pod_exchange_held(&pod, 7300, N, UP, DOWN, true);
    let m = exporter.eventually("every socket closed", Duration::from_secs(10), |m| {
        m.get("pmoas_sockops_active_sockets", &w.app()) == Some(0.0)
            && m.sum("pmoas_tcp_sent_bytes_total", &with(w.app(), &[("peer", "sidecar")])) >= (N * UP) as f64
    });
    let (redirected, missed) = sent_through_map(&m, &w.app());
    let lost = |reason: &str| m.sum("pmoas_ebpf_events_lost_total", &[("collector", "sockops"), ("reason", reason)]);
    eprintln!(
        "{test}: app sent {redirected} B by redirect + {missed} B through TCP from the map, TCP acknowledged \
         {by_tcp} B in all; sockhash_full {}, pair_map_full {}",
        lost("sockhash_full"),
        lost("pair_map_full")
    );
    assert!(lost("sockhash_full") + lost("pair_map_full") > 0.0, "the map did not fill: the test proves nothing");
    assert!(redirected > 0.0 && redirected < (N * UP) as f64, "some accelerated, not all: {redirected}");
    // What did not go by redirect went through TCP: together, every byte once.
    assert_eq!(redirected + (by_tcp - 2 * N) as f64, (N * UP) as f64, "redirected + carried by TCP");
    let app_to_sidecar = with(w.app(), &[("peer", "sidecar")]);
    assert_eq!(m.sum("pmoas_tcp_sent_bytes_total", &app_to_sidecar), (N * UP) as f64);
    assert_eq!(m.sum("pmoas_tcp_received_bytes_total", &app_to_sidecar), (N * DOWN) as f64);
    drop(exporter);
    pod.down().unwrap();
}

/// wrk in the client cgroup, keep-alive, `connections` at once.
fn wrk(pod: &Pod, url: &str, connections: u32, seconds: u32) -> Running {
    Running(Some(
        pod.command(Place::Client, "wrk")
            .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk (apt-get install wrk)"),
    ))
}

/// wrk's answered requests; fails on any non-2xx response or socket error.
fn wrk_done(child: Running) -> u64 {
    let out = child.take().wait_with_output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("Non-2xx"), "wrk saw failed responses:\n{text}");
    assert!(!text.contains("Socket errors"), "wrk saw socket errors:\n{text}");
    text.lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}"))
}

/// The testbed's checksumming client, in the client cgroup, in the background.
fn fetch(pod: &Pod, count: u64, concurrency: u64) -> Running {
    Running(Some(
        pod.command(Place::Client, testbed_bin())
            .args([
                "fetch",
                "--connect",
                &pod.inbound_addr().to_string(),
                "--count",
                &count.to_string(),
                "--concurrency",
                &concurrency.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pmoas-testbed fetch"),
    ))
}

fn fetch_done(child: Running, count: u64) -> FetchReport {
    let out = child.take().wait_with_output().expect("fetch");
    assert!(out.status.success());
    let r: FetchReport = serde_json::from_slice(&out.stdout).expect("fetch report");
    assert_eq!((r.ok, r.wrong, r.failed), (count, 0, 0), "every body byte-identical, none failed: {r:?}");
    r
}

fn assert_no_sockops_losses(m: &Metrics) {
    for (name, labels, v) in &m.series {
        if name == "pmoas_ebpf_events_lost_total" && labels.get("collector").map(String::as_str) == Some("sockops") {
            assert_eq!(*v, 0.0, "sockops lost events {labels:?}");
        }
    }
}

fn envoy(pod: &Pod) -> HashMap<String, u64> {
    pod.envoy_stats().expect("Envoy stats")
}

fn through_envoy_under_wrk(test: &str, layout: Layout) {
    let _one = serialize();
    // nginx closes Envoy's idle upstream connections after 2 s: the clean
    // run below gets connections of its own, whatever the load did to the
    // capture of the old ones.
    let opts = PodOptions { layout, nginx_http_extra: "keepalive_timeout 2s;".into(), ..Default::default() };
    let Some(pod) = pod_up_with(test, opts) else { return };
    let Some(exporter) = start_exporter(test, &pod) else { return };
    let w = Workloads::of(&pod);
    let before = envoy(&pod);
    assert_eq!(before.get("cluster.app.upstream_cx_total").copied().unwrap_or(0), 0, "no upstream connection yet");

    const FETCHES: u64 = 300;
    let url = format!("http://{}/files/4096", pod.inbound_addr());
    let load = wrk(&pod, &url, 16, 4);
    let checked = fetch(&pod, FETCHES, 4);
    let answered = wrk_done(load);
    let report = fetch_done(checked, FETCHES);
    // Every open upstream connection, both ends, is in the socket map
    // (they stay open, idle, for the next 2 s). Envoy may still be closing
    // the upstream connections of requests wrk left cancelled: the scrape
    // is taken between two equal readings of Envoy's count (a CI run
    // once scraped 15 sockets, then read 10 from Envoy).
    let active = || envoy(&pod).get("cluster.app.upstream_cx_active").copied().unwrap_or(0);
    let (m, open) = (0..20)
        .find_map(|_| {
            let (before, m, after) = (active(), exporter.scrape(), active());
            if before == after {
                return Some((m, after as f64));
            }
            std::thread::sleep(Duration::from_millis(50));
            None
        })
        .expect("Envoy's upstream connection count settled within a second");
    let stats = envoy(&pod);
    assert!(open > 0.0, "Envoy holds no upstream connection");
    assert_eq!(m.sum("pmoas_sockops_active_sockets", &w.sidecar()), open);
    assert_eq!(m.sum("pmoas_sockops_active_sockets", &w.app()), open);

    // wrk stops in the middle of requests: Envoy counts a request it sent
    // and then cancelled; nginx may have answered it (the app side counts
    // it), Envoy never read the answer (the sidecar side does not).
    let requests_seen = |m: &Metrics| {
        let stats = envoy(&pod);
        let stat = |k: &str| stats.get(k).copied().unwrap_or(0) as f64;
        let app = m.sum("pmoas_http_server_request_duration_seconds_count", &w.app());
        let sidecar = m.sum("pmoas_http_client_request_duration_seconds_count", &w.sidecar());
        (stat("cluster.app.upstream_rq_completed"), stat("cluster.app.upstream_rq_total"), app, sidecar)
    };
    // Under wrk the debug-build exporter shares the 2 CPUs with wrk, Envoy
    // and nginx; when it falls behind, the capture ring fills and the
    // records it could not take are counted (`capture_ring_full`): then the
    // counts may fall short, never exceed, and must stop moving. The clean
    // run below is exact either way.
    let ring_full =
        |m: &Metrics| m.sum("pmoas_ebpf_events_lost_total", &[("collector", "http"), ("reason", "capture_ring_full")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    loop {
        let m = exporter.scrape();
        let (completed, total, app, sidecar) = requests_seen(&m);
        let within = |n: f64| completed <= n && n <= total;
        if completed > 0.0 && within(app) && within(sidecar) {
            break;
        }
        let settled = last == Some((app, sidecar));
        last = Some((app, sidecar));
        if completed > 0.0 && ring_full(&m) > 0.0 && app <= total && sidecar <= total && settled {
            eprintln!(
                "{test}: the capture ring overflowed under wrk ({} records lost, counted): {app} requests counted at \
                 the app, {sidecar} from the sidecar, of {completed} Envoy completed",
                ring_full(&m)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{test}: Envoy completed {completed} of {total} requests upstream; the http collector counted {app} at \
             the app, {sidecar} from the sidecar; losses: {}",
            m.describe("pmoas_ebpf_events_lost_total", &[("collector", "http")])
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "{test}: wrk {answered} requests, fetch {} bodies ({} B) over {} upstream connections",
        report.ok,
        report.body_bytes,
        stats.get("cluster.app.upstream_cx_total").copied().unwrap_or(0),
    );
    // nginx closes them all: every socket leaves the map.
    let deadline = Instant::now() + Duration::from_secs(15);
    while envoy(&pod).get("cluster.app.upstream_cx_active").copied().unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "{test}: nginx did not close Envoy's idle upstream connections");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = exporter.eventually("closed sockets leave the socket map", Duration::from_secs(5), |m| {
        m.sum("pmoas_sockops_active_sockets", &w.sidecar()) == 0.0
            && m.sum("pmoas_sockops_active_sockets", &w.app()) == 0.0
    });
    let stats = envoy(&pod);

    // Exact, on a second run that ends cleanly (wrk stops in the middle of
    // requests: a request or answer in flight is sent but never read, by
    // either path): every byte Envoy and nginx wrote on the hop went by
    // redirect or through TCP from a socket in the map, counted once. (The
    // test's own calls to Envoy's admin port come from a process outside
    // the pod's cgroups: neither end of those joins the map.)
    let (sidecar_before, app_before) = (sent_through_map(&m, &w.sidecar()), sent_through_map(&m, &w.app()));
    let sidecar_requests_before = (
        m.sum("pmoas_http_server_request_duration_seconds_count", &w.app()),
        m.sum("pmoas_http_client_request_duration_seconds_count", &w.sidecar()),
    );
    fetch_done(fetch(&pod, FETCHES, 4), FETCHES);
    let after = envoy(&pod);
    let delta = |k: &str| (after.get(k).copied().unwrap_or(0) - stats.get(k).copied().unwrap_or(0)) as f64;
    let clean_run = |m: &Metrics| {
        (
            m.sum("pmoas_http_server_request_duration_seconds_count", &w.app()) - sidecar_requests_before.0,
            m.sum("pmoas_http_client_request_duration_seconds_count", &w.sidecar()) - sidecar_requests_before.1,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let m2 = loop {
        let m2 = exporter.scrape();
        let (app, sidecar) = clean_run(&m2);
        if app >= FETCHES as f64 && sidecar >= FETCHES as f64 {
            break m2;
        }
        assert!(
            Instant::now() < deadline,
            "{test}: the clean run's {FETCHES} requests: {app} counted at the app, {sidecar} from the sidecar; \
             http losses before it: {}\nnow: {}",
            m.describe("pmoas_ebpf_events_lost_total", &[("collector", "http")]),
            m2.describe("pmoas_ebpf_events_lost_total", &[("collector", "http")])
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    for (what, who, before, envoy_bytes) in [
        ("Envoy -> nginx", w.sidecar(), sidecar_before, delta("cluster.app.upstream_cx_tx_bytes_total")),
        ("nginx -> Envoy", w.app(), app_before, delta("cluster.app.upstream_cx_rx_bytes_total")),
    ] {
        let (redirected, missed) = sent_through_map(&m2, &who);
        let (redirected, missed) = (redirected - before.0, missed - before.1);
        eprintln!("{test}: {what}: Envoy {envoy_bytes} B; {redirected} B by redirect + {missed} B through TCP");
        assert_eq!(redirected + missed, envoy_bytes, "{what}: every byte, counted once");
        assert!(redirected >= 0.9 * envoy_bytes, "{what}: mostly redirected");
    }
    let m = m2;
    assert_eq!(m.sum("pmoas_sockops_insert_errors_total", &[]), 0.0);
    assert_no_sockops_losses(&m);
    // The http collector saw every request of the clean run on both ends
    // of the redirected hop.
    let requests = delta("cluster.app.upstream_rq_total");
    assert_eq!(requests, FETCHES as f64, "Envoy's own count");
    assert_eq!(
        m.sum("pmoas_http_server_request_duration_seconds_count", &w.app()) - sidecar_requests_before.0,
        requests
    );
    assert_eq!(
        m.sum("pmoas_http_client_request_duration_seconds_count", &w.sidecar()) - sidecar_requests_before.1,
        requests
    );
    drop(exporter);
    pod.down().unwrap();
}

#[test]
fn through_envoy_under_wrk_plain_layout() {
    through_envoy_under_wrk("through_envoy_under_wrk_plain_layout", Layout::Plain);
}

#[test]
fn through_envoy_under_wrk_istio_layout() {
    through_envoy_under_wrk("through_envoy_under_wrk_istio_layout", Layout::Istio);
}

#[test]
fn sigkill_and_restart_under_load_lose_nothing() {
    let test = "sigkill_and_restart_under_load_lose_nothing";
    let _one = serialize();
    let Some(pod) = pod_up(test, Layout::Istio) else { return };
    let Some(first) = start_exporter(test, &pod) else { return };
    let w = Workloads::of(&pod);
    const FETCHES: u64 = 1500;
    let url = format!("http://{}/files/65536", pod.inbound_addr());
    let load = wrk(&pod, &url, 8, 8);
    let checked = fetch(&pod, FETCHES, 4);
    let began = Instant::now();

    // Accelerated while it runs: of 4 MiB each way in one in-pod
    // connection TCP carries none (the SYN and FIN are 2 bytes of
    // bytes_acked).
    const MIB4: u64 = 4 << 20;
    let accelerated = in_pod_exchange(&pod, 7200, 1, MIB4, MIB4);
    assert!(accelerated < MIB4 / 10, "accelerated: TCP carried {accelerated} B");

    std::thread::sleep(Duration::from_millis(1500).saturating_sub(began.elapsed()));
    let mut first = first;
    first.child.kill().expect("SIGKILL the exporter");
    first.child.wait().unwrap();
    // Established connections finish as they are; a new one uses TCP.
    let plain = in_pod_exchange(&pod, 7201, 1, MIB4, MIB4);
    assert_eq!(plain, MIB4 + 2, "after SIGKILL a new connection takes plain TCP");
    drop(first);

    // A new exporter under the same load: no second generation left to
    // refuse it, no EBUSY for the sockets it adds.
    let Some(second) = start_exporter(test, &pod) else { return };
    let again = in_pod_exchange(&pod, 7202, 1, MIB4, MIB4);
    assert!(again < MIB4 / 10, "accelerated again after the restart: TCP carried {again} B");
    let answered = wrk_done(load);
    let report = fetch_done(checked, FETCHES);
    eprintln!(
        "{test}: TCP carried {accelerated} B of 4 MiB in-pod while accelerated, {plain} B after SIGKILL, {again} B \
         after the restart; wrk {answered} requests, fetch {} bodies, 0 failed ({:?} of load)",
        report.ok,
        began.elapsed()
    );
    // (Its app-side count may also hold nginx's answers on upstream
    // connections Envoy opened after the restart.)
    let m = second.eventually("the restarted exporter counted the new connection", Duration::from_secs(10), |m| {
        let (redirected, missed) = sent_through_map(m, &w.app());
        redirected + missed >= (4 << 20) as f64
    });
    assert_eq!(m.sum("pmoas_sockops_insert_errors_total", &[]), 0.0, "no EBUSY");
    assert!(!second.log_text().contains("another pmoas sockops program"), "{}", second.log_text());
    drop(second);
    pod.down().unwrap();

    // Nothing left behind: the last accelerated socket closed with the pod,
    // and with it the programs and maps of both generations; nothing pinned.
    let ours = || -> Vec<String> {
        let out = std::process::Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
        assert!(out.status.success(), "bpftool prog show: {}", String::from_utf8_lossy(&out.stderr));
        let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
        progs
            .iter()
            .filter_map(|p| p["name"].as_str())
            .filter(|n| n.starts_with("sockops_"))
            .map(String::from)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ours().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ours(), Vec::<String>::new(), "sockops programs still loaded after the exporters and the pod are gone");
    let pinned = std::fs::read_dir("/sys/fs/bpf").map(|d| d.flatten().count()).unwrap_or(0);
    assert_eq!(pinned, 0, "nothing pinned in /sys/fs/bpf");
}
