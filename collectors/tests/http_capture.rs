//! The http collector's kernel capture against the truth: curl through the
//! testbed's Envoy into nginx, N requests; each of the three processes
//! (curl: sendto/recvfrom, Envoy: readv/write, nginx: recvfrom/writev)
//! must show exactly N request starts and N response starts, curl's
//! requests byte for byte, every connection's close, and nothing of a
//! connection that never looked like HTTP. And connections older than the
//! capture: one joined in a response body still shows its next request,
//! one whose first bytes are not HTTP is given up at once, one joined in
//! the middle of something else after 8 turns. Root and real eBPF (skips
//! loudly otherwise, fails under PMOAS_REQUIRE_BPF=1).

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pmoas_collectors::http::capture::{self, Capture, Chunk, Direction, Event, Proto};
use pmoas_testbed::{Place, Pod, PodOptions};

fn require_bpf() -> bool {
    std::env::var_os("PMOAS_REQUIRE_BPF").is_some_and(|v| v != "0")
}

fn can_run(test: &str) -> bool {
    let problems = pmoas_testbed::missing_prerequisites();
    if problems.is_empty() {
        return true;
    }
    assert!(!require_bpf(), "{test}: PMOAS_REQUIRE_BPF is set but: {}", problems.join("; "));
    pmoas_testbed::report_skip(test, &problems.join("; "));
    false
}

#[derive(Default, Debug)]
struct Seen {
    requests_out: usize,
    requests_in: usize,
    responses_out: usize,
    responses_in: usize,
    socks: HashSet<u64>,
}

fn starts(c: &Chunk, what: &[u8]) -> bool {
    c.data.starts_with(what)
}

#[test]
fn chunks_of_curl_envoy_and_nginx_match_what_they_sent() {
    let test = "chunks_of_curl_envoy_and_nginx_match_what_they_sent";
    if !can_run(test) {
        return;
    }
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let id = |set: &pmoas_testbed::cgroups::CgroupSet| capture::cgroup_id(set.v2().unwrap()).unwrap();
    let (client, sidecar, app) =
        (id(&pod.state.client_cgroups), id(&pod.state.sidecar_cgroups), id(&pod.state.app_cgroups));

    let health = pmoas_discovery::Health::default();
    let mut cap = match Capture::start(&health) {
        Ok(c) => c,
        Err(e) if !require_bpf() => {
            pmoas_testbed::report_skip(test, &format!("cannot load the http programs: {e:#}"));
            return;
        }
        Err(e) => panic!("{test}: loading the http programs: {e:#}"),
    };
    let attached = cap.programs().iter().filter(|p| p.attached).count();
    assert_eq!(attached, capture::PROGRAMS.len(), "every program attached: {:?}", cap.programs());
    assert_eq!(cap.watch(&[client, sidecar, app].into_iter().collect()), 0);

    // Bytes that are no HTTP, first on their connection: Envoy reads them,
    // they must never reach user space.
    let garbage = format!(
        "exec 3<>/dev/tcp/{}/{}; printf '%0200d' 0 | tr 0 c >&3; sleep 0.2",
        pod.envoy_addr().ip(),
        pod.envoy_addr().port()
    );
    let out = pod.command(Place::Client, "bash").args(["-c", &garbage]).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success());

    let n = 20;
    let pod_envoy = pod.envoy_addr();
    let url = format!("http://{}/", pod.envoy_addr());
    for _ in 0..n {
        let out = pod
            .command(Place::Client, "curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Connection: close", &url])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl: {}", String::from_utf8_lossy(&out.stderr));
    }

    let mut seen: HashMap<u64, Seen> = HashMap::new();
    let mut closed: HashSet<u64> = HashSet::new();
    let mut client_closes = 0;
    let mut curl_requests: Vec<(Vec<u8>, u32, &'static str)> = Vec::new();
    let mut calls: HashMap<u64, HashSet<&'static str>> = HashMap::new();
    let mut garbage_seen = 0;
    let mut client_endpoint_records = 0;
    // Envoy's threads: the one that read each request, and the one that
    // wrote its forward (the pairing of the sidecar-added latency relies on
    // them being the same).
    let mut envoy_reads: Vec<(u64, u32)> = Vec::new();
    let mut envoy_forwards: Vec<(u64, u32)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        cap.drain(|e| match e {
            Event::Data(c) => {
                assert_eq!(c.proto, Proto::Http1, "{c:?}");
                assert!(c.end_ns >= c.start_ns && c.data.len() <= c.total_len as usize);
                if starts(&c, b"cccc") {
                    garbage_seen += 1;
                }
                if c.cgroup_id == client && c.endpoints.is_some() {
                    client_endpoint_records += 1;
                }
                let s = seen.entry(c.cgroup_id).or_default();
                s.socks.insert(c.sock);
                calls.entry(c.cgroup_id).or_default().insert(c.call);
                let request = starts(&c, b"GET / HTTP/1.1\r\n");
                let response = starts(&c, b"HTTP/1.1 200");
                match c.direction {
                    Direction::Egress if request => s.requests_out += 1,
                    Direction::Ingress if request => s.requests_in += 1,
                    Direction::Egress if response => s.responses_out += 1,
                    Direction::Ingress if response => s.responses_in += 1,
                    _ => {}
                }
                if c.cgroup_id == sidecar && request {
                    let at = (c.end_ns, c.tid);
                    match c.direction {
                        Direction::Ingress => envoy_reads.push(at),
                        Direction::Egress => envoy_forwards.push(at),
                    }
                }
                if c.cgroup_id == client && c.direction == Direction::Egress && request {
                    // curl's socket: its own address to Envoy's listener.
                    // Its request is the socket's first record: it carries the
                    // endpoints (later ones need not).
                    let ep = c.endpoints.unwrap_or_else(|| panic!("no endpoints on curl's request {c:?}"));
                    assert_eq!(ep.remote, pod_envoy, "{c:?}");
                    assert!(ep.local.port() != 0 && ep.netns != 0, "{c:?}");
                    curl_requests.push((c.data.to_vec(), c.total_len, c.call));
                }
            }
            Event::Close { sock, cgroup_id, endpoints, .. } => {
                if cgroup_id == client {
                    assert_eq!(endpoints.remote, pod_envoy, "close of curl's connection");
                }
                closed.insert(sock);
                client_closes += usize::from(cgroup_id == client);
            }
        });
        let done = seen.get(&client).is_some_and(|s| s.responses_in >= n)
            && seen.get(&app).is_some_and(|s| s.responses_out >= n)
            && client_closes >= n;
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let get = |cg: u64| seen.get(&cg).map(|s| (s.requests_out, s.requests_in, s.responses_out, s.responses_in));
    // (requests written, read, responses written, read)
    assert_eq!(get(client), Some((n, 0, 0, n)), "curl: {:?}", seen.get(&client));
    assert_eq!(get(sidecar), Some((n, n, n, n)), "Envoy: {:?}", seen.get(&sidecar));
    assert_eq!(get(app), Some((0, n, n, 0)), "nginx: {:?}", seen.get(&app));
    assert_eq!(garbage_seen, 0, "bytes of a connection that never looked like HTTP reached user space");

    // curl's requests, byte for byte, and the call's length equal to them.
    assert_eq!(curl_requests.len(), n);
    for (data, total, call) in &curl_requests {
        let text = String::from_utf8_lossy(data);
        assert!(text.ends_with("\r\n\r\n") && text.contains("Connection: close\r\n"), "{text:?}");
        assert_eq!(*total as usize, data.len(), "{call}: the whole request was captured");
    }
    // Every connection curl used ended with a close event. (A struct
    // sock's address names a connection only while it lives: the kernel
    // reuses it for later ones, which the close between them tells apart.)
    assert_eq!(client_closes, n, "one close per connection");
    // The endpoints ride on a connection's first record only (nothing was
    // lost): the response curl read did not carry them again.
    assert_eq!(client_endpoint_records, n, "records of curl's that carried the endpoints");
    assert!(seen[&client].socks.is_subset(&closed));
    eprintln!("calls seen: {calls:?}");
    // Each forward is written by the thread that read the request last
    // before it (requests are sequential here, and the testbed's Envoy has
    // one worker: this shows its main thread takes no part; several workers
    // are for the collector's own tests).
    envoy_reads.sort();
    for (at, tid) in &envoy_forwards {
        let read = envoy_reads.iter().rev().find(|(t, _)| t <= at).expect("a read before each forward");
        assert_eq!(read.1, *tid, "forward at {at} on thread {tid}, request read on {}", read.1);
    }
    // read/recvfrom, write/sendto, readv and writev all carried chunks.
    let all: HashSet<&str> = calls.values().flatten().copied().collect();
    assert_eq!(all, ["read", "write", "readv", "writev"].into_iter().collect(), "{calls:?}");

    let lost: u64 = cap.lost().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(lost, 0, "{:?}", cap.lost());
    assert_eq!(cap.malformed, 0);
    drop(cap);
    pod.down().unwrap();
}

/// Three TCP connections of one process (both ends), driven in two phases
/// by a line on stdin: before it, the process is not watched yet (as if the
/// exporter had not started); after it, it is.
const PHASES: &str = r#"
import socket, sys

socket.setdefaulttimeout(10)  # a mistake here fails the test, not hangs it

def pair():
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen()
    c = socket.create_connection(l.getsockname())
    s, _ = l.accept()
    l.close()
    return c, s

def recv_exactly(sock, n):
    got = b""
    while len(got) < n:
        got += sock.recv(n - len(got))
    return got

ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
body = b"x" * 4096
ping = b"\x17\x03\x03" + b"\xaa" * 61
# A: HTTP/1, a 80 KiB response in flight.
a_c, a_s = pair()
req = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"
a_c.sendall(req)
recv_exactly(a_s, len(req))
head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (20 * len(body))
a_s.sendall(head)
recv_exactly(a_c, len(head))
# B: not HTTP (TLS-like records), in the middle of its streams.
b_c, b_s = pair()
b_c.sendall(ping)
recv_exactly(b_s, len(ping))
# C: a connection whose first bytes are not HTTP.
c_c, c_s = pair()
print("ready", flush=True)
sys.stdin.readline()

# A: the rest of the body, 20 writes and as many reads; then the next request.
for _ in range(20):
    a_s.sendall(body)
    recv_exactly(a_c, len(body))
req = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
a_c.sendall(req)
recv_exactly(a_s, len(req))
a_s.sendall(ok)
recv_exactly(a_c, len(ok))
# B: 6 round trips (12 turns), then what would be a request.
for _ in range(6):
    b_s.sendall(ping)
    recv_exactly(b_c, len(ping))
    b_c.sendall(ping)
    recv_exactly(b_s, len(ping))
req = b"GET /late HTTP/1.1\r\nHost: b\r\n\r\n"
b_c.sendall(req)
recv_exactly(b_s, len(req))
# C: not HTTP from its first byte, then what would be a request.
c_c.sendall(b"\x16\x03\x01\x02\x00" + b"\x01" * 59)
recv_exactly(c_s, 64)
req = b"GET /after HTTP/1.1\r\nHost: c\r\n\r\n"
c_c.sendall(req)
recv_exactly(c_s, len(req))
print("done", flush=True)
"#;

#[test]
fn the_kernel_gives_up_on_a_connection_only_where_it_cannot_be_http() {
    let test = "the_kernel_gives_up_on_a_connection_only_where_it_cannot_be_http";
    if !can_run(test) {
        return;
    }
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let client = capture::cgroup_id(pod.state.client_cgroups.v2().unwrap()).unwrap();
    let health = pmoas_discovery::Health::default();
    let mut cap = match Capture::start(&health) {
        Ok(c) => c,
        Err(e) if !require_bpf() => {
            pmoas_testbed::report_skip(test, &format!("cannot load the http programs: {e:#}"));
            return;
        }
        Err(e) => panic!("{test}: loading the http programs: {e:#}"),
    };
    let mut script = pod
        .command(Place::Client, "python3")
        .args(["-c", PHASES])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(script.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::{BufRead, Write};
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // Watched from now on: the connections are older than the capture.
    assert_eq!(cap.watch(&[client].into_iter().collect()), 0);
    let mut stdin = script.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "done\n");
    assert!(script.wait().unwrap().success());

    let mut starts: Vec<(Direction, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        cap.drain(|e| {
            if let Event::Data(c) = e {
                let line = String::from_utf8_lossy(&c.data[..c.data.len().min(16)]).into_owned();
                starts.push((c.direction, line));
            }
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    starts.sort_by_key(|(d, l)| (*d == Direction::Egress, l.clone()));
    // A: the body in flight (one turn, however many calls) is skipped, the
    // next request and its response reach user space on both ends. B: given
    // up after 8 turns that did not look like HTTP. C: given up at its
    // first bytes. Nothing else was sent.
    let expected: Vec<(Direction, String)> = vec![
        (Direction::Ingress, "GET /next HTTP/1".into()),
        (Direction::Ingress, "HTTP/1.1 200 OK\r".into()),
        (Direction::Egress, "GET /next HTTP/1".into()),
        (Direction::Egress, "HTTP/1.1 200 OK\r".into()),
    ];
    assert_eq!(starts, expected);
    drop(cap);
    pod.down().unwrap();
}
