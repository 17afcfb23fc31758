//! Connections older than the exporter (issue 11): Envoy pools its upstream
//! connections for hours, clients keep theirs. Each test opens a connection
//! through the testbed's Envoy, uses it *before* the exporter starts (so
//! that Envoy's upstream connection to the app is older than the exporter
//! too), starts the exporter, and uses the same connections again:
//!
//! - HTTP/1 keep-alive: the requests after the start are counted exactly,
//!   per status, on Envoy's downstream (server) and upstream (client) sides
//!   and at nginx — also when the exporter came in the middle of a 16 MiB
//!   response body (resync at the next request);
//! - HTTP/2 (gRPC over h2c): never a wrong count: what is counted has the
//!   right service, method and code, and what is not is counted as lost.
//!
//! Root and real eBPF.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pmoas_testbed::{Place, Pod, PodOptions};

/// One test at a time: each starts its own exporter, whose start-up and
/// load would otherwise share the 2 CPUs with the other's traffic.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialize() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn pod_up(test: &str, opts: PodOptions) -> Option<Pod> {
    if !can_run(test, &testbed_problems()) {
        return None;
    }
    Some(Pod::up(&opts).expect("testbed up"))
}

/// The exporter with the http collector, once it runs: None (skipped) when
/// the collector cannot run here and PMOAS_REQUIRE_BPF is not set.
fn start_exporter(test: &str) -> Option<Exporter> {
    let exporter = Exporter::start(&["--collectors", "http"]);
    let m = exporter.scrape();
    if m.get("pmoas_scrape_collector_success", &[("collector", "http")]) != Some(1.0) {
        let why = format!("the http collector does not run:\n{}", exporter.log_text());
        assert!(!require_bpf(), "{test}: {why}");
        pmoas_testbed::report_skip(test, &why);
        return None;
    }
    // The capture thread fills the watched cgroups from discovery right
    // after the start; give it a few of its rounds.
    std::thread::sleep(Duration::from_millis(500));
    Some(exporter)
}

/// A client process that keeps its connection and takes commands on stdin,
/// one JSON line back per command (testbed/keepalive_client.py,
/// testbed/grpc_client.py --stdin). Killed (by its PID) when dropped.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn spawn(mut cmd: Command) -> Driver {
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("client");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Driver { child, stdin, stdout }
    }

    /// The next JSON line of its output.
    fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("client output");
        assert!(!line.is_empty(), "the client exited: {:?}", self.child.try_wait());
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn send(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.stdin, "{command}").expect("client input");
        self.read()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Count of a histogram's series with these labels (0 when absent).
fn count(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.sum(&format!("{name}_count"), labels)
}

/// The http collector's losses by reason (the zeros left out).
fn losses(m: &Metrics) -> BTreeMap<String, f64> {
    m.series
        .iter()
        .filter(|(n, l, v)| {
            n == "pmoas_ebpf_events_lost_total" && l.get("collector").map(String::as_str) == Some("http") && *v > 0.0
        })
        .map(|(_, l, v)| (l.get("reason").cloned().unwrap_or_default(), *v))
        .collect()
}

/// Scrapes until two scrapes 500 ms apart agree on every count of `names`
/// and on the losses (20 s at most): the capture thread drains every 20 ms,
/// but the last chunks of a burst may take a few rounds.
fn settled(exp: &Exporter, names: &[&str]) -> Metrics {
    let snapshot = |m: &Metrics| {
        let mut v: Vec<String> = m
            .series
            .iter()
            .filter(|(n, _, _)| names.iter().any(|x| n == &format!("{x}_count")))
            .map(|(n, l, v)| format!("{n}{l:?}={v}"))
            .collect();
        v.push(format!("{:?}", losses(m)));
        v
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = exp.scrape();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let m = exp.scrape();
        if snapshot(&m) == snapshot(&last) {
            return m;
        }
        assert!(Instant::now() < deadline, "counts still moving after 20 s");
        last = m;
    }
}

/// Envoy's connection counters: (downstream connections of the inbound
/// listener, upstream connections to the app).
fn envoy_connections(pod: &Pod, cluster: &str) -> (u64, u64) {
    let stats = pod.envoy_stats().expect("envoy stats");
    let stat = |k: &str| stats.get(k).copied().unwrap_or(0);
    (stat("http.inbound.downstream_cx_total"), stat(&format!("cluster.{cluster}.upstream_cx_total")))
}

const SERVER: &str = "pmoas_http_server_request_duration_seconds";
const CLIENT: &str = "pmoas_http_client_request_duration_seconds";

/// The requests after the start, per status, counted exactly on Envoy's
/// downstream and upstream sides and at nginx; nothing else counted.
fn assert_exact_http(m: &Metrics, pod: &Pod, expected: &[(&str, f64)]) {
    let w = Workloads::of(pod);
    let total: f64 = expected.iter().map(|(_, n)| n).sum();
    for (who, name, labels) in [
        ("sidecar server (downstream)", SERVER, w.sidecar()),
        ("sidecar client (upstream)", CLIENT, w.sidecar()),
        ("app server", SERVER, w.app()),
    ] {
        let all = format!("{}\nlosses: {:?}", m.describe(&format!("{name}_count"), &[]), losses(m));
        for (status, n) in expected {
            let got = count(m, name, &with(labels.clone(), &[("method", "GET"), ("status_code", status)]));
            assert_eq!(got, *n, "{who} {status}:\n{all}");
        }
        assert_eq!(count(m, name, &labels), total, "{who}: nothing else counted:\n{all}");
    }
    // Nobody is the client of nginx but Envoy, nor the server of Envoy's
    // upstream requests but nginx.
    assert_eq!(count(m, CLIENT, &w.app()), 0.0);
}

fn keepalive_client(pod: &Pod) -> Driver {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testbed/keepalive_client.py");
    let mut cmd = pod.command(Place::Client, "python3");
    cmd.arg(script).arg(pod.envoy_addr().to_string());
    let mut d = Driver::spawn(cmd);
    assert_eq!(d.read()["connected"], true);
    d
}

#[test]
fn http1_keep_alive_requests_on_older_connections_are_counted_exactly() {
    let _one = serialize();
    let test = "http1_keep_alive_requests_on_older_connections_are_counted_exactly";
    let Some(pod) = pod_up(test, PodOptions::default()) else { return };
    let mut client = keepalive_client(&pod);
    let port = client.send("get / 3")["local_port"].clone();
    assert_eq!(client.send("get /error 2")["statuses"], serde_json::json!([[503, 2]]));
    assert_eq!(client.send("get /missing 1")["statuses"], serde_json::json!([[404, 1]]));
    let before = envoy_connections(&pod, "app");

    let Some(exp) = start_exporter(test) else { return };
    for (cmd, want) in
        [("get / 5", [[200, 5]]), ("get /missing 3", [[404, 3]]), ("get /error 2", [[503, 2]]), ("get / 1", [[200, 1]])]
    {
        let r = client.send(cmd);
        assert_eq!(r["statuses"], serde_json::json!(want), "{cmd}: {r}");
        assert_eq!(r["local_port"], port, "{cmd}: the same connection");
    }
    let m = settled(&exp, &[SERVER, CLIENT]);
    assert_exact_http(&m, &pod, &[("200", 6.0), ("404", 3.0), ("503", 2.0)]);
    eprintln!("losses: {:?}", losses(&m));

    // Envoy's own counters (read last: the admin request is HTTP too): the
    // requests after the start went over the connections of before.
    drop(client);
    assert_eq!(envoy_connections(&pod, "app"), before, "no new connection");
}

#[test]
fn http1_joined_in_the_middle_of_a_large_body_resyncs_at_the_next_request() {
    let _one = serialize();
    let test = "http1_joined_in_the_middle_of_a_large_body_resyncs_at_the_next_request";
    let Some(pod) = pod_up(test, PodOptions::default()) else { return };
    let mut client = keepalive_client(&pod);
    let port = client.send("get / 2")["local_port"].clone();
    // A 16 MiB response of which the client reads 64 KiB: the rest waits in
    // socket buffers, Envoy's buffer and nginx (which Envoy's flow control
    // holds back) while the exporter starts.
    let r = client.send("start /big 64");
    assert_eq!((r["status"].as_u64(), r["read"].as_u64()), (Some(200), Some(65536)), "{r}");
    let before = envoy_connections(&pod, "app");

    let Some(exp) = start_exporter(test) else { return };
    // The rest of the body: thousands of reads and writes on each of the
    // four sockets, none of them at a message start.
    let r = client.send("finish");
    assert_eq!(r["read"].as_u64(), Some(pmoas_testbed::BIG_BODY_BYTES - 65536), "{r}");
    for (cmd, want) in [("get / 4", [[200, 4]]), ("get /error 2", [[503, 2]]), ("get /missing 2", [[404, 2]])] {
        let r = client.send(cmd);
        assert_eq!(r["statuses"], serde_json::json!(want), "{cmd}: {r}");
        assert_eq!(r["local_port"], port, "{cmd}: the same connection");
    }
    let m = settled(&exp, &[SERVER, CLIENT]);
    // The large response is not counted: its request came before.
    assert_exact_http(&m, &pod, &[("200", 4.0), ("503", 2.0), ("404", 2.0)]);
    eprintln!("losses: {:?}", losses(&m));

    drop(client);
    assert_eq!(envoy_connections(&pod, "app"), before, "no new connection");
}
