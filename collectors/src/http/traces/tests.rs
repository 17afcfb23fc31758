//! Requests through a sidecar fed to the tracker as the kernel reports
//! them, and the traces that come out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pmoas_otlp::AttrValue;

use super::*;
use crate::http::capture::{Chunk, Direction as Dir, Event, Proto};
use crate::http::tracker::{Owner, Tracker};

const SIDECAR: u64 = 10;
const APP: u64 = 20;
const CLIENT: u64 = 30;
const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn owner(id: u64) -> Option<Owner> {
    match id {
        SIDECAR => Some(Owner { pod_uid: Some("uid-1".into()), is_sidecar: true }),
        APP => Some(Owner { pod_uid: Some("uid-1".into()), is_sidecar: false }),
        _ => Some(Owner { pod_uid: None, is_sidecar: false }),
    }
}

fn names(id: u64) -> Option<Names> {
    let (container, role) = match id {
        SIDECAR => ("istio-proxy", "sidecar"),
        APP => ("web", "app"),
        _ => return None,
    };
    Some(Names {
        namespace: "shop".into(),
        pod: "web-0".into(),
        pod_uid: "uid-1".into(),
        container: container.into(),
        role,
    })
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
}

/// One end of a connection, as one process's socket has it.
struct Sock {
    sock: u64,
    local: SocketAddr,
    remote: SocketAddr,
    cgroup: u64,
    tid: u32,
    seq: [u32; 2],
}

impl Sock {
    fn new(sock: u64, local: SocketAddr, remote: SocketAddr, cgroup: u64, tid: u32) -> Sock {
        Sock { sock, local, remote, cgroup, tid, seq: [0, 0] }
    }

    /// One read (`Ingress`) or write of `data` at `at` (ns), 1 µs long.
    fn io(&mut self, t: &mut Tracker, direction: Dir, data: &[u8], at: u64) {
        let slot = usize::from(direction == Dir::Egress);
        let seq = self.seq[slot];
        self.seq[slot] += 1;
        let chunk = Chunk {
            sock: self.sock,
            endpoints: Some(Endpoints { local: self.local, remote: self.remote, netns: 1 }),
            cgroup_id: self.cgroup,
            tgid: self.tid,
            tid: self.tid,
            start_ns: at,
            end_ns: at + US,
            direction,
            proto: Proto::Http1,
            call: "read",
            total_len: data.len() as u32,
            seq,
            part: 0,
            more: false,
            data,
        };
        t.event(Event::Data(chunk), &owner);
    }
}

fn request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: web\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn response(status: u16) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// The three connections of an inbound request in the plain layout:
/// client -> sidecar (:15006), sidecar -> app (127.0.0.1:8080), seen by
/// the sidecar (both) and the app.
struct Inbound {
    downstream: Sock,
    forward: Sock,
    app: Sock,
}

impl Inbound {
    fn new(n: u16) -> Inbound {
        let client = addr([10, 200, 0, 1], 40000 + n);
        let sidecar = addr([10, 200, 0, 11], 15006);
        let fwd_local = addr([127, 0, 0, 1], 50000 + n);
        let app = addr([127, 0, 0, 1], 8080);
        let k = u64::from(n) * 10;
        Inbound {
            downstream: Sock::new(k + 1, sidecar, client, SIDECAR, 201),
            forward: Sock::new(k + 2, fwd_local, app, SIDECAR, 201),
            app: Sock::new(k + 3, app, fwd_local, APP, 301),
        }
    }

    /// One request at `t0`, in the order the kernel reports it; the app's
    /// response is reported `app_late` after the sidecar's own (a write
    /// whose exit comes after the reader's return).
    fn request(&mut self, t: &mut Tracker, t0: u64, headers: &[(&str, &str)], status: u16, app_late: Option<u64>) {
        let fwd_headers: Vec<(&str, &str)> = headers.iter().copied().chain([("x-request-id", "r-1")]).collect();
        self.downstream.io(t, Dir::Ingress, &request("/a", headers), t0);
        self.forward.io(t, Dir::Egress, &request("/a", &fwd_headers), t0 + 20 * US);
        self.app.io(t, Dir::Ingress, &request("/a", &fwd_headers), t0 + 30 * US);
        if app_late.is_none() {
            self.app.io(t, Dir::Egress, &response(status), t0 + 200 * US);
        }
        self.forward.io(t, Dir::Ingress, &response(status), t0 + 210 * US);
        self.downstream.io(t, Dir::Egress, &response(status), t0 + 230 * US);
        if let Some(late) = app_late {
            self.app.io(t, Dir::Egress, &response(status), t0 + 200 * US + late);
        }
    }
}

fn tracing(rate: u32) -> Tracker {
    let mut t = Tracker::new(4096);
    t.enable_tracing(rate, false);
    t
}

fn clock() -> Clock {
    Clock::fixed(UNIX_EPOCH + Duration::from_secs(1_700_000_000), 0)
}

fn wall(ns: u64) -> SystemTime {
    clock().wall(ns)
}

fn get<'a>(s: &'a Span, key: &str) -> Option<&'a AttrValue> {
    s.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn string(s: &Span, key: &str) -> Option<String> {
    match get(s, key) {
        Some(AttrValue::String(v)) => Some(v.clone()),
        _ => None,
    }
}

fn int(s: &Span, key: &str) -> Option<i64> {
    match get(s, key) {
        Some(AttrValue::Int(v)) => Some(*v),
        _ => None,
    }
}

#[test]
fn an_inbound_request_is_sidecar_server_then_forward_then_app() {
    let mut t = tracing(1);
    let mut r = Inbound::new(1);
    r.request(&mut t, 1_000 * MS, &[], 200, None);
    let ready = t.take_traces(1_000 * MS + MS);
    assert_eq!(ready.len(), 1, "one trace, complete at once");
    let trace = to_trace(&ready[0], &names, &clock());
    assert_eq!(trace.remote_parent, None);
    assert_eq!(
        trace.pod,
        Some(Pod { namespace: "shop".into(), name: "web-0".into(), uid: "uid-1".into(), container: None })
    );
    let [sidecar, forward, app] = &trace.spans[..] else { panic!("three spans: {trace:#?}") };
    assert_eq!((sidecar.parent, forward.parent, app.parent), (None, Some(0), Some(1)));
    assert_eq!((sidecar.kind, forward.kind, app.kind), (SpanKind::Server, SpanKind::Client, SpanKind::Server));
    for (s, container, role) in
        [(sidecar, "istio-proxy", "sidecar"), (forward, "istio-proxy", "sidecar"), (app, "web", "app")]
    {
        assert_eq!(s.name, "GET");
        assert_eq!(string(s, "k8s.container.name").as_deref(), Some(container));
        assert_eq!(string(s, "pmoas.role").as_deref(), Some(role));
        assert_eq!(string(s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(int(s, "http.response.status_code"), Some(200));
        assert_eq!(string(s, "url.path").as_deref(), Some("/a"));
        assert_eq!(s.error, None);
    }
    // Server spans: request read (exit) -> response written (exit);
    // client spans: request written (entry) -> response read (exit).
    let t0 = 1_000 * MS;
    assert_eq!((sidecar.start, sidecar.end), (wall(t0 + US), wall(t0 + 231 * US)));
    assert_eq!((forward.start, forward.end), (wall(t0 + 20 * US), wall(t0 + 211 * US)));
    assert_eq!((app.start, app.end), (wall(t0 + 31 * US), wall(t0 + 201 * US)));
    // The sidecar's own time, on its server span: 230 - 191 µs.
    assert_eq!(int(sidecar, "pmoas.sidecar.added_latency_ns"), Some((230 - 191) * US as i64));
    assert_eq!(string(sidecar, "pmoas.sidecar.direction").as_deref(), Some("inbound"));
    assert_eq!(string(sidecar, "pmoas.sidecar.pairing").as_deref(), Some("unique"));
    assert_eq!(get(forward, "pmoas.sidecar.added_latency_ns"), None);
    // Each span's own socket.
    assert_eq!(string(sidecar, "network.peer.address").as_deref(), Some("10.200.0.1"));
    assert_eq!(int(sidecar, "network.local.port"), Some(15006));
    assert_eq!(int(forward, "network.peer.port"), Some(8080));
    assert_eq!(int(app, "network.peer.port"), Some(50001));
    assert_eq!(int(app, "thread.id"), Some(301));
    let stats = t.trace_stats().unwrap();
    assert_eq!(stats.traces.get(&(Direction::Inbound, Context::New)), Some(&1));
    assert_eq!(stats.missing.get(&Direction::Inbound), None);
}

#[test]
fn a_valid_traceparent_is_continued_and_an_invalid_one_counted() {
    let mut t = tracing(1);
    let mut r = Inbound::new(1);
    r.request(&mut t, 1_000 * MS, &[("traceparent", CALLER)], 200, None);
    r.request(&mut t, 1_001 * MS, &[("traceparent", "00-not-a-trace-01")], 200, None);
    let zero_trace = CALLER.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32));
    r.request(&mut t, 1_002 * MS, &[("traceparent", &zero_trace)], 200, None);
    let ready = t.take_traces(1_003 * MS);
    assert_eq!(ready.len(), 3);
    let first = to_trace(&ready[0], &names, &clock());
    let caller = RemoteParent::from_traceparent(CALLER).unwrap();
    assert_eq!(first.remote_parent, Some(caller), "the caller's trace id and span, for the root");
    assert_eq!(first.spans.len(), 3);
    assert!(ready[1..].iter().all(|r| r.parent.is_none()), "invalid: a new trace");
    let stats = t.trace_stats().unwrap();
    assert_eq!(stats.traces.get(&(Direction::Inbound, Context::Traceparent)), Some(&1));
    assert_eq!(stats.traces.get(&(Direction::Inbound, Context::InvalidTraceparent)), Some(&2), "{stats:?}");
    assert_eq!(stats.traces.get(&(Direction::Inbound, Context::New)), None);
}

#[test]
fn the_app_span_reported_late_is_waited_for_and_a_lost_one_counted() {
    let mut t = tracing(1);
    let mut r = Inbound::new(1);
    let t0 = 1_000 * MS;
    r.request(&mut t, t0, &[], 200, Some(50 * US));
    // The app's write was reported after the sidecar's: the trace waited.
    let ready = t.take_traces(t0 + MS);
    assert_eq!(ready.len(), 1, "the app's span came in the same drain");
    let trace = to_trace(&ready[0], &names, &clock());
    assert_eq!(trace.spans.len(), 3);
    // Its response was handed over by the time the sidecar read it.
    assert_eq!(trace.spans[2].end, trace.spans[1].end, "the app's span ends no later than the forward's");

    // The app's response never reported (lost): the trace waits WAIT_NS.
    let mut r = Inbound::new(2);
    let t1 = 2_000 * MS;
    r.downstream.io(&mut t, Dir::Ingress, &request("/a", &[]), t1);
    r.forward.io(&mut t, Dir::Egress, &request("/a", &[]), t1 + 20 * US);
    r.app.io(&mut t, Dir::Ingress, &request("/a", &[]), t1 + 30 * US);
    r.forward.io(&mut t, Dir::Ingress, &response(200), t1 + 210 * US);
    r.downstream.io(&mut t, Dir::Egress, &response(200), t1 + 230 * US);
    assert!(t.take_traces(t1 + 231 * US + WAIT_NS - MS).is_empty(), "still waiting");
    let ready = t.take_traces(t1 + 231 * US + WAIT_NS);
    assert_eq!(ready.len(), 1);
    let trace = to_trace(&ready[0], &names, &clock());
    assert_eq!(trace.spans.len(), 2, "sidecar server and forward, no app span");
    assert_eq!(trace.spans[1].parent, Some(0));
    assert_eq!(t.trace_stats().unwrap().missing.get(&Direction::Inbound), Some(&1));
}

/// The app's read of the forwarded request is stamped before the sidecar's
/// write of it (both at the call's exit; the reader returned first): it is
/// still the far end, and an earlier request's unclaimed one is not.
#[test]
fn an_app_read_stamped_before_the_forward_write_is_its_far_end() {
    let mut t = tracing(1);
    let mut r = Inbound::new(1);
    let t0 = 1_000 * MS;
    r.request(&mut t, t0, &[], 200, None);
    assert_eq!(t.take_traces(t0 + MS).len(), 1);
    let t1 = t0 + 2 * MS;
    // An app exchange on the same connection that no trace claimed (an
    // earlier request's), shortly before.
    r.app.io(&mut t, Dir::Ingress, &request("/a", &[]), t1 - 100 * US);
    r.app.io(&mut t, Dir::Egress, &response(200), t1 - 50 * US);
    r.downstream.io(&mut t, Dir::Ingress, &request("/a", &[]), t1);
    r.app.io(&mut t, Dir::Ingress, &request("/a", &[]), t1 + 15 * US);
    r.forward.io(&mut t, Dir::Egress, &request("/a", &[]), t1 + 20 * US);
    r.app.io(&mut t, Dir::Egress, &response(200), t1 + 200 * US);
    r.forward.io(&mut t, Dir::Ingress, &response(200), t1 + 210 * US);
    r.downstream.io(&mut t, Dir::Egress, &response(200), t1 + 230 * US);
    let ready = t.take_traces(t1 + MS);
    assert_eq!(ready.len(), 1);
    let trace = to_trace(&ready[0], &names, &clock());
    assert_eq!(trace.spans.len(), 3, "the app's span is found");
    // A span starts at its first read's end (1 µs after `at` here).
    assert_eq!(trace.spans[2].start, wall(t1 + 16 * US), "this request's app span, not the earlier one's");
    // The forward's bytes were handed over by the time the app read them.
    assert_eq!(trace.spans[1].start, trace.spans[2].start, "the forward starts no later than the app's read");
    // The sidecar's time ends at the handover: its span less the forward's.
    let length = |s: &Span| s.end.duration_since(s.start).unwrap().as_nanos() as i64;
    assert_eq!(
        int(&trace.spans[0], "pmoas.sidecar.added_latency_ns"),
        Some(length(&trace.spans[0]) - length(&trace.spans[1]))
    );
    assert_eq!(t.trace_stats().unwrap().missing.get(&Direction::Inbound), None);
}

#[test]
fn a_local_reply_is_the_sidecar_span_alone() {
    let mut t = tracing(1);
    let mut r = Inbound::new(1);
    r.downstream.io(&mut t, Dir::Ingress, &request("/nowhere", &[]), MS);
    r.downstream.io(&mut t, Dir::Egress, &response(503), 2 * MS);
    let ready = t.take_traces(3 * MS);
    assert_eq!(ready.len(), 1, "no forward to wait for");
    let trace = to_trace(&ready[0], &names, &clock());
    assert_eq!(trace.spans.len(), 1);
    let s = &trace.spans[0];
    assert_eq!(string(s, "pmoas.sidecar.pairing").as_deref(), Some("no_forward"));
    assert_eq!(get(s, "pmoas.sidecar.added_latency_ns"), None);
    assert_eq!(s.error.as_deref(), Some("503"), "a 5xx server span is an error");
    assert_eq!(string(s, "error.type").as_deref(), Some("503"));
    assert_eq!(t.trace_stats().unwrap().missing.get(&Direction::Inbound), None, "nothing was missing");
}

#[test]
fn an_outbound_request_is_app_client_then_sidecar_server_then_upstream() {
    let mut t = tracing(1);
    // The app -> sidecar's outbound listener; the sidecar -> the upstream pod.
    let app_local = addr([127, 0, 0, 1], 41000);
    let listener = addr([127, 0, 0, 1], 15001);
    let mut app = Sock::new(1, app_local, listener, APP, 301);
    let mut sidecar_in = Sock::new(2, listener, app_local, SIDECAR, 202);
    let mut upstream = Sock::new(3, addr([10, 200, 0, 11], 42000), addr([10, 200, 0, 21], 15006), SIDECAR, 202);
    let t0 = 5_000 * MS;
    let req = request("/upstream", &[("traceparent", CALLER)]);
    app.io(&mut t, Dir::Egress, &req, t0);
    sidecar_in.io(&mut t, Dir::Ingress, &req, t0 + 10 * US);
    upstream.io(&mut t, Dir::Egress, &req, t0 + 30 * US);
    upstream.io(&mut t, Dir::Ingress, &response(404), t0 + 500 * US);
    // The app's read reported before the sidecar's write that it returned.
    app.io(&mut t, Dir::Ingress, &response(404), t0 + 520 * US);
    assert!(t.take_traces(t0 + MS).is_empty(), "waiting for the sidecar's server span");
    sidecar_in.io(&mut t, Dir::Egress, &response(404), t0 + 519 * US);
    let ready = t.take_traces(t0 + MS);
    assert_eq!(ready.len(), 1);
    let trace = to_trace(&ready[0], &names, &clock());
    assert_eq!(trace.remote_parent, RemoteParent::from_traceparent(CALLER).ok());
    let [app_span, sidecar, upstream] = &trace.spans[..] else { panic!("three spans: {trace:#?}") };
    assert_eq!((app_span.parent, sidecar.parent, upstream.parent), (None, Some(0), Some(1)));
    assert_eq!((app_span.kind, sidecar.kind, upstream.kind), (SpanKind::Client, SpanKind::Server, SpanKind::Client));
    assert_eq!(string(app_span, "k8s.container.name").as_deref(), Some("web"));
    assert_eq!(string(sidecar, "k8s.container.name").as_deref(), Some("istio-proxy"));
    assert_eq!(string(upstream, "network.peer.address").as_deref(), Some("10.200.0.21"));
    // The sidecar's attributes on its server span.
    assert_eq!(string(sidecar, "pmoas.sidecar.direction").as_deref(), Some("outbound"));
    assert_eq!(int(sidecar, "pmoas.sidecar.added_latency_ns"), Some((521 - 471) * US as i64));
    assert_eq!(get(app_span, "pmoas.sidecar.direction"), None);
    // 404: an error for clients, not for the server.
    assert_eq!(
        (app_span.error.as_deref(), sidecar.error.as_deref(), upstream.error.as_deref()),
        (Some("404"), None, Some("404"))
    );
    let stats = t.trace_stats().unwrap();
    assert_eq!(stats.traces.get(&(Direction::Outbound, Context::Traceparent)), Some(&1));
}

#[test]
fn one_in_rate_and_parent_based_sampling() {
    let mut t = Tracker::new(4096);
    t.enable_tracing(1 << 30, true);
    let unsampled = CALLER.replace("-01", "-00");
    for i in 0..20u16 {
        let mut r = Inbound::new(i);
        let tp = if i % 2 == 0 { CALLER } else { unsampled.as_str() };
        r.request(&mut t, u64::from(i + 1) * 10 * MS, &[("traceparent", tp)], 200, None);
    }
    let ready = t.take_traces(u64::MAX / 2);
    // At 1 in 2^30, the 10 sampled ones (and, with odds of 1e-8, another).
    assert_eq!(ready.iter().filter(|r| r.parent.is_some_and(|p| p.sampled())).count(), 10);
    assert!(ready.len() <= 11);

    // Without parent_based the flag means nothing.
    let mut t = tracing(1 << 30);
    let mut r = Inbound::new(1);
    r.request(&mut t, MS, &[("traceparent", CALLER)], 200, None);
    assert!(t.take_traces(u64::MAX / 2).len() <= 1);
    // 1 in 4: about a quarter.
    let mut t = tracing(4);
    for i in 0..400u16 {
        Inbound::new(i).request(&mut t, u64::from(i + 1) * 10 * MS, &[], 200, None);
    }
    let n = t.take_traces(u64::MAX / 2).len();
    assert!((50..=150).contains(&n), "{n} of 400 at 1 in 4");
}

#[test]
fn kept_far_ends_expire_and_are_bounded() {
    let mut tr = Tracing::new(1, false);
    let seen = |n: u16, end: u64| {
        let x = Exchange {
            protocol: p::Protocol::Http1,
            method: p::Method::Get,
            path: Some("/".into()),
            path_truncated: false,
            authority: None,
            status_code: Some(200),
            grpc: None,
            x_request_id: None,
            traceparent: None,
            stream_id: None,
            reset: None,
            headers_partial: false,
            request_start_ns: end - 10,
            request_end_ns: end - 9,
            response_start_ns: end - 2,
            response_end_ns: end,
        };
        let ep = Endpoints { local: addr([127, 0, 0, 1], 8080), remote: addr([127, 0, 0, 1], n), netns: 1 };
        Seen { cgroup_id: APP, tid: 1, role: Role::Server, endpoints: Some(ep), exchange: x }
    };
    for n in 0..MAX_KEPT + 10 {
        tr.keep(seen(n as u16, 100 * MS));
    }
    assert_eq!(tr.held(), (MAX_KEPT, 0), "bounded");
    tr.take(100 * MS + KEEP_NS - 1);
    assert_eq!(tr.held().0, MAX_KEPT, "kept for KEEP_NS");
    tr.take(100 * MS + KEEP_NS + SWEEP_NS);
    assert_eq!(tr.held().0, 0, "then swept");
    tr.keep(seen(1, 150 * MS + KEEP_NS));
    assert_eq!(tr.held().0, 1, "room again");
}

fn grpc_exchange(stream: u32, code: p::GrpcCode, start: u64) -> Exchange {
    Exchange {
        protocol: p::Protocol::Grpc,
        method: p::Method::Post,
        path: Some("/helloworld.Greeter/SayHello".into()),
        path_truncated: false,
        authority: None,
        status_code: Some(200),
        grpc: Some(p::GrpcCall {
            service: "helloworld.Greeter".into(),
            method: "SayHello".into(),
            code,
            code_source: p::GrpcCodeSource::Trailers,
        }),
        x_request_id: None,
        traceparent: None,
        stream_id: Some(stream),
        reset: None,
        headers_partial: false,
        request_start_ns: start,
        request_end_ns: start + US,
        response_start_ns: start + 50 * US,
        response_end_ns: start + 60 * US,
    }
}

#[test]
fn grpc_far_ends_match_by_stream_and_spans_follow_the_rpc_conventions() {
    let mut tr = Tracing::new(1, false);
    let fwd_ep = Endpoints { local: addr([127, 0, 0, 1], 50000), remote: addr([127, 0, 0, 1], 50051), netns: 1 };
    let app_ep = Endpoints { local: fwd_ep.remote, remote: fwd_ep.local, netns: 1 };
    let t0 = 10 * MS;
    // Two calls in flight on one HTTP/2 connection; the app answers stream 3 first.
    for (stream, code) in [(3, p::GrpcCode::Unavailable), (1, p::GrpcCode::Ok)] {
        let mut x = grpc_exchange(stream, code, t0 + 5 * US);
        x.request_start_ns += u64::from(stream);
        tr.keep(Seen { cgroup_id: APP, tid: 9, role: Role::Server, endpoints: Some(app_ep), exchange: x });
    }
    let outer_ep = Endpoints { local: addr([10, 200, 0, 11], 15006), remote: addr([10, 200, 0, 1], 4000), netns: 1 };
    let outer = Seen {
        cgroup_id: SIDECAR,
        tid: 2,
        role: Role::Server,
        endpoints: Some(outer_ep),
        exchange: grpc_exchange(1, p::GrpcCode::Ok, t0 - 10 * US),
    };
    let mut outer = outer;
    outer.exchange.response_end_ns += 100 * US;
    let fwd = Seen {
        cgroup_id: SIDECAR,
        tid: 2,
        role: Role::Client,
        endpoints: Some(fwd_ep),
        exchange: grpc_exchange(1, p::GrpcCode::Ok, t0),
    };
    tr.outer(Direction::Inbound, outer, Some((fwd, How::Unique, 30 * US)));
    let ready = tr.take(t0 + MS);
    assert_eq!(ready.len(), 1);
    let far = ready[0].far.as_ref().expect("the app's span");
    assert_eq!(far.exchange.stream_id, Some(1), "its own stream, not the one answered first");
    assert_eq!(tr.held(), (1, 0), "stream 3 still kept");

    let trace = to_trace(&ready[0], &names, &clock());
    for s in &trace.spans {
        assert_eq!(s.name, "helloworld.Greeter/SayHello");
        assert_eq!(string(s, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(string(s, "rpc.service").as_deref(), Some("helloworld.Greeter"));
        assert_eq!(string(s, "rpc.method").as_deref(), Some("SayHello"));
        assert_eq!(int(s, "rpc.grpc.status_code"), Some(0));
        assert_eq!(string(s, "network.protocol.version").as_deref(), Some("2"));
    }
    // Errors as the RPC conventions say.
    let x = grpc_exchange(1, p::GrpcCode::NotFound, 0);
    assert_eq!(span_error(&x, Role::Server), None, "NOT_FOUND is the client's problem");
    assert_eq!(span_error(&x, Role::Client).as_deref(), Some("NOT_FOUND"));
    let x = grpc_exchange(1, p::GrpcCode::Unavailable, 0);
    assert_eq!(span_error(&x, Role::Server).as_deref(), Some("UNAVAILABLE"));
}

#[test]
fn names_of_unusual_requests() {
    let mut x = grpc_exchange(1, p::GrpcCode::Ok, 0);
    x.grpc = None;
    x.protocol = p::Protocol::Http2;
    x.method = p::Method::Other;
    assert_eq!(span_name(&x), "HTTP", "a method outside the standard ones");
    x.method = p::Method::Delete;
    assert_eq!(span_name(&x), "DELETE");
    x.reset = Some(8);
    assert_eq!(span_error(&x, Role::Server).as_deref(), Some("HTTP/2 stream reset (error code 8)"));
    // An unnamed cgroup (discovery forgot it): spans without k8s names, no pod.
    let seen = Seen { cgroup_id: CLIENT, tid: 1, role: Role::Server, endpoints: None, exchange: x };
    let r = Ready { direction: Direction::Inbound, outer: seen, inner: None, far: None, paired: None, parent: None };
    let trace = to_trace(&r, &names, &clock());
    assert_eq!(trace.pod, None);
    assert_eq!(get(&trace.spans[0], "k8s.container.name"), None);
    // Endpoints not known yet: no network attributes, nothing made up.
    assert_eq!(get(&trace.spans[0], "network.peer.address"), None);
}
