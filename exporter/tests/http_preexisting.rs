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
//! - plain HTTP/2 (h2c, the `h2` crate's client): Envoy's downstream side
//!   gets its role from the first request's header block and counts from
//!   there what the static table and literals decode — a status Envoy's
//!   encoder indexed before the start is counted as lost instead;
//! - gRPC over h2c (grpcio through Envoy): never a wrong count: what is
//!   counted has the right service, method and code, and every call not
//!   counted is one `h2_hpack_unknown_index` loss (grpc-core indexes its
//!   paths, content-types and statuses: with these encoders nothing of a
//!   connection older than the exporter decodes).
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
/// the collector cannot run here and PMOAS_REQUIRE_BPF is not set. It
/// watches this test's pod only (cgroup discovery names a pod by its uid):
/// the losses it counts are then this pod's, whatever other testbeds run
/// on the machine.
fn start_exporter(test: &str, pod: &Pod) -> Option<Exporter> {
    let exporter = exporter_with_collector(test, "http", &["--collectors", "http", "--target.pod", &pod.state.uid])?;
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

/// No losses but `allowed` and those counted per chunk ignored while a
/// connection is not at a message boundary yet (joined mid-stream), which
/// lose no exchange of after the start.
fn assert_exchanges_lost_only(m: &Metrics, allowed: &[&str]) {
    let per_chunk = ["unknown_protocol", "http1_unsynced", "h2_unsynced"];
    let other: BTreeMap<String, f64> = losses(m)
        .into_iter()
        .filter(|(r, _)| !per_chunk.contains(&r.as_str()) && !allowed.contains(&r.as_str()))
        .collect();
    assert!(other.is_empty(), "losses: {:?}", losses(m));
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

    let Some(exp) = start_exporter(test, &pod) else { return };
    for (cmd, want) in
        [("get / 5", [[200, 5]]), ("get /missing 3", [[404, 3]]), ("get /error 2", [[503, 2]]), ("get / 1", [[200, 1]])]
    {
        let r = client.send(cmd);
        assert_eq!(r["statuses"], serde_json::json!(want), "{cmd}: {r}");
        assert_eq!(r["local_port"], port, "{cmd}: the same connection");
    }
    let m = settled(&exp, &[SERVER, CLIENT]);
    assert_exact_http(&m, &pod, &[("200", 6.0), ("404", 3.0), ("503", 2.0)]);
    assert_exchanges_lost_only(&m, &[]);

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

    let Some(exp) = start_exporter(test, &pod) else { return };
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
    assert_exchanges_lost_only(&m, &[]);

    drop(client);
    assert_eq!(envoy_connections(&pod, "app"), before, "no new connection");
}

/// A plain HTTP/2 (h2c) client on one connection: the `h2` crate, whose
/// HPACK encoder writes `:method GET` and `:status` values from the static
/// table and never indexes `:path` — what a connection joined mid-stream
/// can decode.
struct H2Client {
    rt: tokio::runtime::Runtime,
    send: h2::client::SendRequest<bytes::Bytes>,
    authority: String,
    local_port: u16,
}

impl H2Client {
    fn connect(addr: std::net::SocketAddr) -> H2Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (send, conn, local_port) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to Envoy");
            let local_port = tcp.local_addr().unwrap().port();
            let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
            (send, conn, local_port)
        });
        // Polled whenever the runtime runs (in `get`); idle in between.
        rt.spawn(async move {
            let _ = conn.await;
        });
        H2Client { rt, send, authority: addr.to_string(), local_port }
    }

    /// GETs `path` `n` times one after another: (status, count) sorted.
    fn get(&mut self, path: &str, n: usize) -> Vec<(u16, usize)> {
        let uri = format!("http://{}{path}", self.authority);
        let mut statuses = BTreeMap::new();
        for _ in 0..n {
            let status = self.rt.block_on(async {
                let mut send = self.send.clone().ready().await.expect("connection usable");
                let request = http::Request::get(uri.as_str()).body(()).unwrap();
                let (response, _) = send.send_request(request, true).expect("request sent");
                let response = response.await.expect("response");
                let status = response.status().as_u16();
                let mut body = response.into_body();
                while let Some(data) = body.data().await {
                    let data = data.expect("body");
                    let _ = body.flow_control().release_capacity(data.len());
                }
                status
            });
            *statuses.entry(status).or_insert(0) += 1;
        }
        statuses.into_iter().collect()
    }
}

#[test]
fn http2_requests_on_an_older_connection_are_counted_from_the_first_decodable_one() {
    let _one = serialize();
    let test = "http2_requests_on_an_older_connection_are_counted_from_the_first_decodable_one";
    let Some(pod) = pod_up(test, PodOptions::default()) else { return };
    let mut client = H2Client::connect(pod.envoy_addr());
    assert_eq!(client.get("/", 3), vec![(200, 3)]);
    assert_eq!(client.get("/missing", 1), vec![(404, 1)]);
    assert_eq!(client.get("/error", 1), vec![(503, 1)]);
    let before = envoy_connections(&pod, "app");

    let Some(exp) = start_exporter(test, &pod) else { return };
    // Envoy's side of the connection has no preface to tell its role: the
    // first request's HEADERS (`:method GET`, static) does. Envoy forwards
    // over its HTTP/1.1 keep-alive connection to nginx, older too.
    assert_eq!(client.get("/", 5), vec![(200, 5)]);
    assert_eq!(client.get("/missing", 3), vec![(404, 3)]);
    assert_eq!(client.get("/error", 2), vec![(503, 2)]);
    let m = settled(&exp, &[SERVER, CLIENT]);
    let w = Workloads::of(&pod);
    let all = format!("{}\nlosses: {:?}", m.describe(&format!("{SERVER}_count"), &[]), losses(&m));
    // Envoy's upstream side and nginx speak HTTP/1.1: exact.
    for (who, name, labels) in [("sidecar client", CLIENT, w.sidecar()), ("app server", SERVER, w.app())] {
        for (status, n) in [("200", 5.0), ("404", 3.0), ("503", 2.0)] {
            let got = count(&m, name, &with(labels.clone(), &[("method", "GET"), ("status_code", status)]));
            assert_eq!(got, n, "{who} {status}:\n{all}");
        }
        assert_eq!(count(&m, name, &labels), 10.0, "{who}:\n{all}");
    }
    // Envoy's downstream side, HTTP/2 joined mid-stream: `:status 200` and
    // `404` are static-table entries, exact from the first request on. The
    // 503 of before the start put `:status 503` in the dynamic table of
    // Envoy's encoder, which the later 503s refer to: an entry we never saw,
    // so those two are counted as lost, not guessed.
    let sidecar = with(w.sidecar(), &[("method", "GET")]);
    for (status, n) in [("200", 5.0), ("404", 3.0), ("503", 0.0)] {
        let got = count(&m, SERVER, &with(sidecar.clone(), &[("status_code", status)]));
        assert_eq!(got, n, "sidecar server {status}:\n{all}");
    }
    assert_eq!(count(&m, SERVER, &w.sidecar()), 8.0, "{all}");
    assert_eq!(losses(&m).get("h2_hpack_unknown_index"), Some(&2.0), "{all}");
    assert_exchanges_lost_only(&m, &["h2_hpack_unknown_index"]);

    assert_eq!(client.get("/", 1), vec![(200, 1)], "still the same connection");
    let port = client.local_port;
    drop(client);
    assert_eq!(envoy_connections(&pod, "app"), before, "no new connection (client port {port})");
}

const GRPC_SERVER: &str = "pmoas_grpc_server_request_duration_seconds";
const GRPC_CLIENT: &str = "pmoas_grpc_client_request_duration_seconds";

#[test]
fn grpc_calls_on_an_older_http2_connection_are_never_counted_wrong() {
    let _one = serialize();
    let test = "grpc_calls_on_an_older_http2_connection_are_never_counted_wrong";
    let Some(pod) = pod_up(test, PodOptions { grpc: true, ..Default::default() }) else { return };
    let python = match pmoas_testbed::grpc::python() {
        Ok(p) => p,
        Err(why) => {
            assert!(!require_bpf(), "{test}: {why}");
            pmoas_testbed::report_skip(test, &why);
            return;
        }
    };
    let w = Workloads::of(&pod);
    let mut cmd = pod.command(Place::Client, python);
    cmd.arg(pmoas_testbed::grpc::script("grpc_client.py")).args(["--target", &pod.grpc_addr().to_string(), "--stdin"]);
    let mut client = Driver::spawn(cmd);
    let r = client.send("calls 10 2");
    assert_eq!(r["codes"], serde_json::json!({"OK": 8, "UNAVAILABLE": 2}), "{r}");
    let before = envoy_connections(&pod, "grpc");

    let Some(exp) = start_exporter(test, &pod) else { return };
    let (ok, unavailable) = (48.0, 12.0);
    let r = client.send("calls 60 12");
    assert_eq!(r["codes"], serde_json::json!({"OK": 48, "UNAVAILABLE": 12}), "{r}");
    let m = settled(&exp, &[GRPC_SERVER, GRPC_CLIENT, SERVER, CLIENT]);
    let all = format!(
        "{}\n{}\nlosses: {:?}",
        m.describe(&format!("{GRPC_SERVER}_count"), &[]),
        m.describe(&format!("{GRPC_CLIENT}_count"), &[]),
        losses(&m)
    );
    eprintln!("{all}");

    // Never wrong: every series of the pod is the Greeter's method with a
    // code it answered, never more calls than were made; nothing is
    // counted as plain HTTP.
    let sides = [
        ("sidecar server", GRPC_SERVER, w.sidecar()),
        ("sidecar client", GRPC_CLIENT, w.sidecar()),
        ("app server", GRPC_SERVER, w.app()),
    ];
    let mut counted = 0.0;
    for (who, name, labels) in &sides {
        for (_, l, v) in m.series.iter().filter(|(n, l, _)| {
            n == &format!("{name}_count") && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        }) {
            let code = l.get("grpc_code").map(String::as_str);
            assert_eq!(l.get("grpc_service").map(String::as_str), Some("helloworld.Greeter"), "{who}: {all}");
            assert_eq!(l.get("grpc_method").map(String::as_str), Some("SayHello"), "{who}: {all}");
            let truth = match code {
                Some("OK") => ok,
                Some("UNAVAILABLE") => unavailable,
                _ => panic!("{who}: a code no call had: {l:?}\n{all}"),
            };
            assert!(*v <= truth, "{who}: {v} {code:?} of {truth}\n{all}");
            counted += v;
        }
        assert_eq!(count(&m, SERVER, labels) + count(&m, CLIENT, labels), 0.0, "{who}: counted as HTTP\n{all}");
    }
    assert_eq!(count(&m, GRPC_CLIENT, &w.app()), 0.0, "{all}");
    // What is not counted is counted as lost, one exchange each: grpc-core
    // (the client and the Greeter) indexes `:path`, `content-type` and
    // `grpc-status` in the dynamic table, so their entries from before the
    // start stay unknown; Envoy's upstream requests carry a literal `:path`,
    // but the Greeter's answers never say their code in a way we can read.
    assert_exchanges_lost_only(&m, &["h2_hpack_unknown_index"]);
    let lost = losses(&m).get("h2_hpack_unknown_index").copied().unwrap_or(0.0);
    assert_eq!(counted + lost, 3.0 * (ok + unavailable), "every call on each of the 3 sides, measured or lost\n{all}");

    drop(client);
    assert_eq!(envoy_connections(&pod, "grpc"), before, "no new connection");
}
