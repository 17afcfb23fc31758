//! Sampled sidecar requests as OTLP traces (with `--otlp.endpoint`).
//!
//! A request the sidecar handles is seen as up to three exchanges: the
//! *outer* one and the *inner* one that [`super::pairing`] pairs, and the
//! other end of the hop between sidecar and app, which the capture sees in
//! the other process. One sampled request becomes one trace:
//!
//! ```text
//! inbound (client -> sidecar -> app)
//!   sidecar SERVER  the sidecar's downstream request (outer)     parent: the request's traceparent, if valid
//!   └─ sidecar CLIENT  its forward to the app (inner)
//!      └─ app SERVER  the app serving that forward (far end)
//!
//! outbound (app -> sidecar -> upstream)
//!   app CLIENT  the app's request to its sidecar (outer)         parent: the request's traceparent, if valid
//!   └─ sidecar SERVER  the sidecar serving it (far end)
//!      └─ sidecar CLIENT  its upstream request (inner)
//! ```
//!
//! Each span is one process's own view, from its system calls: a server
//! span from the first request byte read to the last response byte
//! written, a client span from the first request byte written to the last
//! response byte read. The sidecar's server span carries
//! `pmoas.sidecar.added_latency_ns` (the sample of
//! `pmoas_sidecar_added_latency_seconds`), `pmoas.sidecar.direction` and
//! `pmoas.sidecar.pairing`.
//!
//! What is missing is left out, never made up: an outer request with no
//! forward (`no_forward`: the sidecar answered itself) is traced without
//! its inner span (inbound: the sidecar's server span alone); a far-end
//! span not seen within [`WAIT_NS`] of the outer request's end is left out
//! and counted ([`TraceStats::missing`]), and the spans under it hang off
//! the span above it.
//!
//! # Which requests
//!
//! With `trace_sample_rate` N, each outer request (paired or not) is
//! traced with probability 1/N (1: all). With `trace_parent_based`, a
//! request whose valid `traceparent` has the sampled flag is traced too.
//! A valid `traceparent` on the outer request makes the trace continue the
//! caller's ([`pmoas_otlp::RemoteParent`]); an invalid one is ignored (a
//! new trace) and counted (`context="invalid_traceparent"`).
//!
//! # What it holds
//!
//! The sampling is decided when the outer request ends, after its far end
//! (which usually ends first), so while tracing is on every server
//! exchange between sidecar and app of a pod is kept for [`KEEP_NS`], at
//! most [`MAX_KEPT`] at once (beyond it the far end of a traced request may
//! be missing, and counted), and every forward waiting for its pair keeps
//! its exchange. Sampled traces wait at most [`WAIT_NS`] for their far end,
//! at most [`MAX_PENDING`] at once (beyond it they go without waiting).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use pmoas_otlp::{Attributes, Pod, RemoteParent, Span, SpanKind, Trace, attr};
use pmoas_protocols::{self as p, Exchange, Role};

use super::capture::Endpoints;
use super::pairing::{Direction, How};
use crate::clock::Clock;

/// 1 in 100 sidecar requests by default.
pub const DEFAULT_TRACE_SAMPLE_RATE: u32 = 100;
/// How long a sampled trace waits for its far-end span after the outer
/// request ended (kernel time; the capture is drained every 20 ms).
pub const WAIT_NS: u64 = 200_000_000;
/// How long a server exchange between sidecar and app is kept for a trace
/// that may claim it (from its end).
pub const KEEP_NS: u64 = 1_000_000_000;
/// How far before the near end's request write a far end's read of it may
/// be stamped. Both are stamped at the system call's exit: on loopback the
/// write hands the bytes over inside the call, and the reader, woken on
/// another CPU, may return before the writer's exit is traced.
pub const HANDOVER_NS: u64 = 1_000_000;
/// Server exchanges kept at once.
pub const MAX_KEPT: usize = 16384;
/// Sampled traces waiting for their far end at once.
pub const MAX_PENDING: usize = 4096;
/// How often kept exchanges past [`KEEP_NS`] are dropped.
const SWEEP_NS: u64 = 250_000_000;

/// One exchange, and where it was seen: what a span is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub cgroup_id: u64,
    /// The thread that last used the connection.
    pub tid: u32,
    pub role: Role,
    /// None while no record of the socket has carried them yet: the span
    /// then has no network attributes, and no far end is found for it.
    pub endpoints: Option<Endpoints>,
    pub exchange: Exchange,
}

impl Seen {
    /// The end of a connection that is the same on both sides of it: the
    /// connecting side's local endpoint (a server's remote one).
    fn connection(&self) -> Option<(u32, SocketAddr)> {
        let ep = self.endpoints.as_ref()?;
        Some((ep.netns, if self.role == Role::Server { ep.remote } else { ep.local }))
    }
}

/// Where a trace's id came from: the `context` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// The outer request's valid `traceparent`: the trace continues it.
    Traceparent,
    /// No `traceparent`: a new trace.
    New,
    /// A `traceparent` that did not parse: ignored, a new trace.
    InvalidTraceparent,
}

impl Context {
    pub const ALL: [Context; 3] = [Context::Traceparent, Context::New, Context::InvalidTraceparent];

    pub fn as_label(self) -> &'static str {
        match self {
            Context::Traceparent => "traceparent",
            Context::New => "new",
            Context::InvalidTraceparent => "invalid_traceparent",
        }
    }
}

/// Counts since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Traces handed to the pipeline, by direction and context.
    pub traces: HashMap<(Direction, Context), u64>,
    /// Traces handed over without their far-end span, by direction.
    pub missing: HashMap<Direction, u64>,
}

/// A sampled request, complete or given up waiting: monotonic times,
/// cgroup ids; [`to_trace`] names it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ready {
    pub direction: Direction,
    pub outer: Seen,
    /// The sidecar's forward; None: no forward was paired.
    pub inner: Option<Seen>,
    /// Inbound: the app serving the forward; outbound: the sidecar serving
    /// the app's request. None: not seen in time (or, inbound, no forward).
    pub far: Option<Seen>,
    /// How the pair was made, and the time spent in the sidecar (ns).
    pub paired: Option<(How, u64)>,
    pub parent: Option<RemoteParent>,
}

struct Pending {
    ready: Ready,
    /// Kernel time after which it goes without its far end.
    due_ns: u64,
}

/// The tracing half of the tracker: sampling, the far ends kept for
/// sampled requests, and the traces waiting for theirs.
pub struct Tracing {
    rate: u32,
    parent_based: bool,
    rng: u64,
    kept: HashMap<(u32, SocketAddr), VecDeque<Seen>>,
    kept_len: usize,
    last_sweep_ns: u64,
    pending: VecDeque<Pending>,
    ready: Vec<Ready>,
    pub stats: TraceStats,
}

impl Tracing {
    /// `rate`: 1 in this many (at least 1); `parent_based`: also every
    /// request whose `traceparent` says sampled.
    pub fn new(rate: u32, parent_based: bool) -> Tracing {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()).rotate_left(32);
        Tracing {
            rate: rate.max(1),
            parent_based,
            rng: seed | 1,
            kept: HashMap::new(),
            kept_len: 0,
            last_sweep_ns: 0,
            pending: VecDeque::new(),
            ready: Vec::new(),
            stats: TraceStats::default(),
        }
    }

    /// xorshift64*: sampling needs no more.
    fn one_in_rate(&mut self) -> bool {
        if self.rate == 1 {
            return true;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32).is_multiple_of(u64::from(self.rate))
    }

    /// A server exchange between sidecar and app: the far end of a request
    /// that may be traced when its outer exchange ends.
    pub fn keep(&mut self, seen: Seen) {
        // Full: its trace, if sampled, goes without it (and is counted).
        let Some(key) = seen.connection().filter(|_| self.kept_len < MAX_KEPT) else { return };
        self.kept.entry(key).or_default().push_back(seen);
        self.kept_len += 1;
    }

    /// The kept far end of `near` (the client's side of the same
    /// connection), taken out: the same HTTP/2 stream, or the same method
    /// and path read while `near` was in flight.
    fn claim_far(&mut self, near: &Seen) -> Option<Seen> {
        let key = near.connection()?;
        let queue = self.kept.get_mut(&key)?;
        let n = &near.exchange;
        let same = |f: &Seen| {
            let x = &f.exchange;
            match (x.stream_id, n.stream_id) {
                (Some(a), Some(b)) => a == b,
                _ => x.method == n.method && x.path == n.path,
            }
        };
        // Read while the near end's request was in flight; failing that,
        // the latest read within HANDOVER_NS before its write's exit (an
        // older one is an earlier request's).
        let at = queue
            .iter()
            .position(|f| {
                let start = f.exchange.request_start_ns;
                same(f) && start >= n.request_start_ns && start <= n.response_end_ns
            })
            .or_else(|| {
                queue.iter().rposition(|f| {
                    let start = f.exchange.request_start_ns;
                    same(f) && start < n.request_start_ns && start + HANDOVER_NS >= n.request_start_ns
                })
            })?;
        let far = queue.remove(at);
        if queue.is_empty() {
            self.kept.remove(&key);
        }
        self.kept_len -= 1;
        far
    }

    /// The exchange whose far end a trace needs: inbound, the forward's;
    /// outbound, the app's own request.
    fn near(r: &Ready) -> Option<&Seen> {
        match r.direction {
            Direction::Inbound => r.inner.as_ref(),
            Direction::Outbound => Some(&r.outer),
        }
    }

    /// An outer exchange ended, paired with `inner` or not: traced if
    /// sampled.
    pub fn outer(&mut self, direction: Direction, outer: Seen, inner: Option<(Seen, How, u64)>) {
        let hit = self.one_in_rate();
        if !hit && !self.parent_based {
            return;
        }
        let parsed = outer.exchange.traceparent.as_deref().map(RemoteParent::from_traceparent);
        if !hit && !matches!(parsed, Some(Ok(p)) if p.sampled()) {
            return;
        }
        let (parent, context) = match parsed {
            None => (None, Context::New),
            Some(Ok(p)) => (Some(p), Context::Traceparent),
            Some(Err(why)) => {
                tracing::debug!(%why, "http trace: traceparent ignored");
                (None, Context::InvalidTraceparent)
            }
        };
        *self.stats.traces.entry((direction, context)).or_default() += 1;
        let due_ns = outer.exchange.response_end_ns.saturating_add(WAIT_NS);
        let (inner, paired) = match inner {
            Some((seen, how, added)) => (Some(seen), Some((how, added))),
            None => (None, None),
        };
        let mut ready = Ready { direction, outer, inner, far: None, paired, parent };
        if Tracing::near(&ready).is_none() {
            // Inbound without a forward: nothing behind the sidecar.
            self.ready.push(ready);
            return;
        }
        ready.far = Tracing::near(&ready).and_then(|near| self.claim_far(near));
        if ready.far.is_some() || self.pending.len() >= MAX_PENDING {
            self.finish(ready);
        } else {
            self.pending.push_back(Pending { ready, due_ns });
        }
    }

    fn finish(&mut self, ready: Ready) {
        if ready.far.is_none() && Tracing::near(&ready).is_some() {
            *self.stats.missing.entry(ready.direction).or_default() += 1;
        }
        self.ready.push(ready);
    }

    /// The traces done by `now_ns` (kernel time): complete ones, and those
    /// that waited [`WAIT_NS`] for their far end in vain.
    pub fn take(&mut self, now_ns: u64) -> Vec<Ready> {
        for _ in 0..self.pending.len() {
            let Some(mut p) = self.pending.pop_front() else { break };
            p.ready.far = Tracing::near(&p.ready).and_then(|near| self.claim_far(near));
            if p.ready.far.is_some() || now_ns >= p.due_ns {
                self.finish(p.ready);
            } else {
                self.pending.push_back(p);
            }
        }
        if now_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_NS {
            self.last_sweep_ns = now_ns;
            let limit = now_ns.saturating_sub(KEEP_NS);
            let mut kept = 0;
            self.kept.retain(|_, q| {
                q.retain(|s| s.exchange.response_end_ns >= limit);
                kept += q.len();
                !q.is_empty()
            });
            self.kept_len = kept;
        }
        std::mem::take(&mut self.ready)
    }

    /// Server exchanges kept now, and traces waiting.
    pub fn held(&self) -> (usize, usize) {
        (self.kept_len, self.pending.len())
    }
}

/// What discovery says of a cgroup, for spans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// `sidecar`, `app` or empty.
    pub role: &'static str,
}

/// A span's name, as the OTel HTTP and RPC conventions say: `{method}`
/// (`HTTP` for a method outside the standard ones), `{service}/{method}`
/// for gRPC. Paths are left to `url.path`: they are not bounded.
fn span_name(x: &Exchange) -> String {
    match (&x.grpc, x.method) {
        (Some(g), _) => format!("{}/{}", g.service, g.method),
        (None, p::Method::Other) => "HTTP".to_string(),
        (None, m) => m.as_str().to_string(),
    }
}

/// The span's error, as the conventions say: HTTP 5xx on a server, 4xx and
/// 5xx on a client; gRPC codes UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS on a server, any but OK on a client; an
/// HTTP/2 stream reset.
fn span_error(x: &Exchange, role: Role) -> Option<String> {
    use p::GrpcCode as G;
    if let Some(g) = &x.grpc {
        let server_error = matches!(
            g.code,
            G::Unknown | G::DeadlineExceeded | G::Unimplemented | G::Internal | G::Unavailable | G::DataLoss
        );
        let error = if role == Role::Server { server_error } else { g.code != G::Ok };
        return error.then(|| g.code.as_str().to_string());
    }
    if let Some(code) = x.reset {
        return Some(format!("HTTP/2 stream reset (error code {code})"));
    }
    let status = x.status_code?;
    let limit = if role == Role::Server { 500 } else { 400 };
    (status >= limit).then(|| status.to_string())
}

fn span(seen: &Seen, names: Option<&Names>, clock: &Clock, parent: Option<usize>) -> Span {
    let x = &seen.exchange;
    let mut a: Attributes = Vec::with_capacity(16);
    if let Some(n) = names {
        if !n.container.is_empty() {
            a.push(attr("k8s.container.name", n.container.as_str()));
        }
        if !n.role.is_empty() {
            a.push(attr("pmoas.role", n.role));
        }
    }
    a.push(attr("http.request.method", x.method.as_str()));
    if let Some(status) = x.status_code {
        a.push(attr("http.response.status_code", i64::from(status)));
    }
    if let Some(path) = &x.path {
        a.push(attr("url.path", path.as_str()));
        if x.path_truncated {
            a.push(attr("pmoas.url.path_truncated", true));
        }
    }
    a.push(attr("network.protocol.name", "http"));
    if x.protocol != p::Protocol::Http1 {
        a.push(attr("network.protocol.version", "2"));
    }
    if let Some(g) = &x.grpc {
        a.push(attr("rpc.system", "grpc"));
        a.push(attr("rpc.service", g.service.as_str()));
        a.push(attr("rpc.method", g.method.as_str()));
        a.push(attr("rpc.grpc.status_code", g.code as i64));
    }
    if let Some(ep) = &seen.endpoints {
        a.push(attr("network.peer.address", ep.remote.ip().to_string()));
        a.push(attr("network.peer.port", ep.remote.port()));
        a.push(attr("network.local.address", ep.local.ip().to_string()));
        a.push(attr("network.local.port", ep.local.port()));
    }
    a.push(attr("thread.id", i64::from(seen.tid)));
    let error = span_error(x, seen.role);
    if let Some(e) = &error {
        a.push(attr("error.type", e.as_str()));
    }
    Span {
        name: span_name(x),
        kind: if seen.role == Role::Server { SpanKind::Server } else { SpanKind::Client },
        start: clock.wall(x.request_start_ns),
        end: clock.wall(x.response_end_ns),
        parent,
        attributes: a,
        error,
    }
}

/// One sampled request as a trace (structure: the module's doc). `names`
/// names a cgroup; the pod is the outer exchange's, as resource.
pub fn to_trace(r: &Ready, names: &dyn Fn(u64) -> Option<Names>, clock: &Clock) -> Trace {
    let name = |s: &Seen| names(s.cgroup_id);
    let outer_names = name(&r.outer);
    let mut spans = vec![span(&r.outer, outer_names.as_ref(), clock, None)];
    // Inbound: outer, inner, far; outbound: outer, far, inner.
    let order = match r.direction {
        Direction::Inbound => [&r.inner, &r.far],
        Direction::Outbound => [&r.far, &r.inner],
    };
    for s in order.into_iter().flatten() {
        let parent = spans.len() - 1;
        spans.push(span(s, name(s).as_ref(), clock, Some(parent)));
    }
    // Both ends of the hop are stamped at their calls' exits, and the
    // reader may return before the writer's exit is traced (HANDOVER_NS):
    // the far end's read of the request before the near end's write, the
    // near end's read of the response before the far end's write. The bytes
    // were handed over by the reader's return: the near span starts no
    // later than the far one, which ends no later than the near one. The
    // added latency is the outer span less the inner, so the earlier start
    // changes it: inbound the near end is the inner span (the forward:
    // less), outbound the outer one (the app's call: more). The histogram's
    // sample, taken before any far end is known, stays as stamped.
    let mut moved_ns: i64 = 0;
    if r.far.is_some() {
        let (near, far) = match r.direction {
            Direction::Inbound => (1, 2),
            Direction::Outbound => (0, 1),
        };
        if let Ok(early) = spans[near].start.duration_since(spans[far].start) {
            let early = i64::try_from(early.as_nanos()).unwrap_or(i64::MAX);
            moved_ns = if r.direction == Direction::Inbound { -early } else { early };
            spans[near].start = spans[far].start;
        }
        if spans[far].end > spans[near].end {
            spans[far].end = spans[near].end;
        }
    }
    // The sidecar's server span: inbound the outer one, outbound the far
    // end; the root when that was not seen.
    let sidecar = match (r.direction, &r.far) {
        (Direction::Outbound, Some(_)) => 1,
        _ => 0,
    };
    let a = &mut spans[sidecar].attributes;
    a.push(attr("pmoas.sidecar.direction", r.direction.as_label()));
    match r.paired {
        Some((how, added_ns)) => {
            a.push(attr("pmoas.sidecar.pairing", how.as_label()));
            let added_ns = i64::try_from(added_ns).unwrap_or(i64::MAX).saturating_add(moved_ns).max(0);
            a.push(attr("pmoas.sidecar.added_latency_ns", added_ns));
        }
        None => a.push(attr("pmoas.sidecar.pairing", "no_forward")),
    }
    let pod = outer_names.map(|n| Pod { namespace: n.namespace, name: n.pod, uid: n.pod_uid, container: None });
    Trace { pod, spans, remote_parent: r.parent }
}

#[cfg(test)]
mod tests;
