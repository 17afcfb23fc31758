//! From captured chunks to request histograms: one parser
//! ([`pmoas_protocols::Connection`]) per connection and process, the role
//! of each connection (server or client) from its first message, the peer
//! socket of each connection inside a pod (to tell a sidecar's downstream
//! from its upstream), and the pairing of [`super::pairing`] for the
//! latency the sidecar adds. No I/O: the collector feeds it [`Event`]s and
//! workload names, and reads its [`Aggregates`] (`Tracker::agg`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use pmoas_protocols::{self as p, Connection, Exchange, Losses, Role};

use super::capture::{Chunk, Direction, Endpoints, Event};
use super::pairing::{self, Domain, Pairer, RequestKey};
use super::routes::{Route, Routes};
use super::traces::{Ready, Seen, TraceStats, Tracing};

/// Bucket bounds (s) of request durations: OTel's HTTP buckets below
/// 10 s, with sub-millisecond ones for the hops inside a pod.
pub const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// Distinct (gRPC service, method) pairs kept per container and side: they
/// come from the requests' `:path`, which any client chooses; beyond this
/// a call is counted under service and method `_OTHER`.
pub const MAX_GRPC_METHODS: usize = 256;
/// The label value of calls beyond [`MAX_GRPC_METHODS`].
pub const OVERFLOW: &str = "_OTHER";

/// Bucket bounds (s) of the sidecar-added latency: mostly well under 1 ms.
pub const ADDED_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The maps looked up on every chunk: a hash several times faster than
/// SipHash, randomly seeded (remote ports are chosen by remote clients).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the tracker needs to know of a cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The pod's identity; None outside pods.
    pub pod_uid: Option<String>,
    pub is_sidecar: bool,
}

/// A fixed-bucket histogram in counts per bucket (not cumulative).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist {
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Hist {
    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        let slot = bounds.partition_point(|b| *b < seconds);
        self.counts[slot] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// As the metric set wants it: (upper bound, count in that bucket).
    pub fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = bounds.iter().copied().zip(self.counts.iter().copied()).collect();
        out.push((f64::INFINITY, self.counts.get(bounds.len()).copied().unwrap_or(0)));
        out
    }
}

/// Series keys. `cgroup_id` names the workload at scrape time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpKey {
    pub cgroup_id: u64,
    pub server: bool,
    pub method: &'static str,
    pub status_code: u16,
    /// The matching route pattern (with no patterns configured: none).
    pub route: Route,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcKey {
    pub cgroup_id: u64,
    pub server: bool,
    pub service: String,
    pub method: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddedKey {
    pub pod_uid: String,
    /// A cgroup of the pod (the sidecar's), to name the pod at scrape time.
    pub cgroup_id: u64,
    pub direction: pairing::Direction,
    pub protocol: &'static str,
}

/// Everything exported, cumulative since start.
#[derive(Default)]
pub struct Aggregates {
    pub http: BTreeMap<HttpKey, Hist>,
    pub grpc: BTreeMap<GrpcKey, Hist>,
    /// The (service, method) pairs of each (container, side) in `grpc`.
    pub grpc_methods: HashMap<(u64, bool), std::collections::HashSet<(String, String)>>,
    /// Calls counted under `_OTHER` for lack of room.
    pub grpc_overflow: u64,
    pub added: BTreeMap<AddedKey, Hist>,
    /// Samples of `added` by how they were paired.
    pub paired: HashMap<&'static str, u64>,
    pub losses: Losses,
    /// Exchanges whose HTTP/1 connection's role could not be told yet.
    pub role_unknown: u64,
    /// Connections dropped because `max_connections` were tracked.
    pub connections_dropped: u64,
    /// Connections followed here whose kernel state was lost meanwhile
    /// (pushed out of the full `http_conns` LRU table, or closed and
    /// reopened on the same socket with the close lost).
    pub connections_evicted: u64,
    /// HTTP/2 calls sent in several records (beyond one record's capture)
    /// of which a continuation record did not arrive: their bytes from the
    /// first missing one on were taken as not captured.
    pub capture_parts_lost: u64,
}

struct Conn {
    parser: Option<Connection>,
    /// None until a chunk of the socket has carried them.
    endpoints: Option<Endpoints>,
    cgroup_id: u64,
    /// The thread of the last chunk: the one serving the connection.
    tid: u32,
    /// Told by the first chunk that says it ([`p::role_hint`]); chunks
    /// before it are counted as undecodable (`unknown_protocol`).
    role: Option<Role>,
    /// The call number expected next, per direction (ingress, egress).
    next_seq: [Option<u32>; 2],
    /// Per direction, a call sent in several records, put back together
    /// until its last record.
    pending: [Option<Pending>; 2],
    /// Per direction, the call whose later records are ignored (one of
    /// its records did not arrive; already counted).
    skip: [Option<u32>; 2],
}

/// A call of several records (HTTP/2 beyond one record's capture, see
/// `PMOAS_HTTP_FLAG_MORE`): its bytes so far.
struct Pending {
    seq: u32,
    /// The record expected next.
    next_part: u8,
    buf: Vec<u8>,
    total_len: u32,
    start_ns: u64,
    end_ns: u64,
}

/// Buffers of stitched calls kept for the next one: few calls are pending
/// at once (their records come in one program run).
const SPARE_BUFFERS: usize = 4;

fn direction(slot: usize) -> p::Direction {
    if slot == 1 { p::Direction::Egress } else { p::Direction::Ingress }
}

#[derive(Default)]
struct Sock {
    tgids: Vec<u32>,
    endpoints: Option<Endpoints>,
}

/// Per-process view of the pod's HTTP connections.
pub struct Tracker {
    conns: FastMap<(u64, u32), Conn>,
    /// The processes with a parser on each socket, so that a close finds
    /// its connections without a walk of all of them, and the socket's
    /// endpoints (the kernel sends them until they reached user space once).
    by_sock: FastMap<u64, Sock>,
    /// (netns, local endpoint) and (netns, remote endpoint) -> connection,
    /// to find the other end of a connection inside a pod.
    by_local: FastMap<(u32, SocketAddr), (u64, u32)>,
    by_remote: FastMap<(u32, SocketAddr), (u64, u32)>,
    /// Each forward waiting for its outer request keeps, while tracing,
    /// the whole exchange for the trace.
    pairer: Pairer<Option<Box<Seen>>>,
    /// Sampled requests as traces; None without an OTLP endpoint.
    tracing: Option<Tracing>,
    max_connections: usize,
    pub routes: Routes,
    limits: p::Limits,
    pub agg: Aggregates,
    scratch: Vec<Exchange>,
    /// Emptied buffers of stitched calls, for the next ones.
    spare: Vec<Vec<u8>>,
}

impl Tracker {
    pub fn new(max_connections: usize) -> Tracker {
        Tracker {
            conns: FastMap::default(),
            by_sock: FastMap::default(),
            by_local: FastMap::default(),
            by_remote: FastMap::default(),
            pairer: Pairer::new(),
            tracing: None,
            max_connections,
            routes: Routes::default(),
            limits: p::Limits::default(),
            agg: Aggregates::default(),
            scratch: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Turns sampled requests into traces: 1 in `rate`, and with
    /// `parent_based` every one whose `traceparent` says sampled (see
    /// [`super::traces`]); [`Tracker::take_traces`] hands them out.
    pub fn enable_tracing(&mut self, rate: u32, parent_based: bool) {
        self.tracing = Some(Tracing::new(rate, parent_based));
    }

    /// The sampled requests done by `now_ns` (CLOCK_MONOTONIC), to be
    /// named and submitted; nothing when tracing is off.
    pub fn take_traces(&mut self, now_ns: u64) -> Vec<Ready> {
        self.tracing.as_mut().map(|t| t.take(now_ns)).unwrap_or_default()
    }

    /// Counts of the traces made, when tracing is on.
    pub fn trace_stats(&self) -> Option<&TraceStats> {
        self.tracing.as_ref().map(|t| &t.stats)
    }

    /// Connections followed now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// One event from the kernel; `owner` names a cgroup (None: not in a
    /// pod, or unknown).
    pub fn event(&mut self, e: Event<'_>, owner: &dyn Fn(u64) -> Option<Owner>) {
        match e {
            Event::Data(c) => self.chunk(c, owner),
            Event::Close { sock, at_ns, .. } => {
                let tgids = self.by_sock.remove(&sock).unwrap_or_default().tgids;
                for key in tgids.into_iter().map(|tgid| (sock, tgid)) {
                    // A call whose last records never came (the ring was
                    // full): what arrived, before the close.
                    for slot in 0..2 {
                        self.flush_pending(key, slot, true, owner);
                    }
                    if let Some(mut conn) = self.conns.remove(&key) {
                        let mut out = std::mem::take(&mut self.scratch);
                        if let Some(parser) = conn.parser.as_mut() {
                            parser.close(at_ns, &mut out, &mut self.agg.losses);
                        }
                        if let Some(ep) = conn.endpoints {
                            self.unindex(&ep, key);
                        }
                        let (cg, tid, ep, role) = (conn.cgroup_id, conn.tid, conn.endpoints, conn.role);
                        for x in out.drain(..) {
                            self.exchange(key, cg, tid, ep, role, x, owner);
                        }
                        self.scratch = out;
                    }
                }
                self.pairer.expire(at_ns);
            }
        }
    }

    fn unindex(&mut self, ep: &Endpoints, key: (u64, u32)) {
        if self.by_local.get(&(ep.netns, ep.local)) == Some(&key) {
            self.by_local.remove(&(ep.netns, ep.local));
        }
        if self.by_remote.get(&(ep.netns, ep.remote)) == Some(&key) {
            self.by_remote.remove(&(ep.netns, ep.remote));
        }
    }

    fn chunk(&mut self, c: Chunk<'_>, owner: &dyn Fn(u64) -> Option<Owner>) {
        let key = (c.sock, c.tgid);
        if !self.conns.contains_key(&key) {
            if self.conns.len() >= self.max_connections {
                self.agg.connections_dropped += 1;
                return;
            }
            self.by_sock.entry(c.sock).or_default().tgids.push(c.tgid);
            self.conns.insert(
                key,
                Conn {
                    parser: None,
                    endpoints: None,
                    cgroup_id: c.cgroup_id,
                    tid: c.tid,
                    role: None,
                    next_seq: [None, None],
                    pending: [None, None],
                    skip: [None, None],
                },
            );
        }
        let sock = self.by_sock.get_mut(&c.sock).expect("a tracked connection's socket is indexed");
        if c.endpoints.is_some() {
            sock.endpoints = c.endpoints;
        }
        let conn = self.conns.get_mut(&key).expect("inserted above");
        if conn.endpoints.is_none()
            && let Some(ep) = sock.endpoints
        {
            conn.endpoints = Some(ep);
            self.by_local.insert((ep.netns, ep.local), key);
            self.by_remote.insert((ep.netns, ep.remote), key);
        }
        let conn = self.conns.get_mut(&key).expect("inserted above");
        conn.tid = c.tid;
        let slot = usize::from(c.direction == Direction::Egress);
        // Numbered from 0 again, and with the endpoints, which the kernel
        // sends only until a fresh entry's first record is taken: the
        // kernel forgot the connection while it was followed here. The
        // bytes it missed meanwhile are a gap the parser is told of below.
        if c.endpoints.is_some() && c.seq == 0 && c.part == 0 && conn.next_seq[slot].is_some_and(|n| n != 0) {
            self.agg.connections_evicted += 1;
        }
        if c.part == 0 && !c.more && conn.pending[slot].is_none() {
            // A call in one record (all of HTTP/1, most of HTTP/2): parsed
            // where it lies in the ring.
            self.next_call(key, slot, c.seq);
            self.feed_whole(key, slot, &c, owner);
            return;
        }
        self.part(key, slot, &c, owner);
    }

    /// A call that came in one record, parsed where it lies.
    fn feed_whole(&mut self, key: (u64, u32), slot: usize, c: &Chunk<'_>, owner: &dyn Fn(u64) -> Option<Owner>) {
        let chunk = p::Chunk {
            direction: direction(slot),
            captured: c.data,
            total_len: c.total_len as usize,
            start_ns: c.start_ns,
            end_ns: c.end_ns,
        };
        self.feed(key, &chunk, owner);
    }

    /// A call's number `seq` in direction `slot`: a gap tells the parser
    /// that bytes are missing there. A call the ring could not take must
    /// not be parsed over as if the bytes followed each other (an HPACK
    /// table would be wrong).
    fn next_call(&mut self, key: (u64, u32), slot: usize, seq: u32) {
        let conn = self.conns.get_mut(&key).expect("a tracked connection");
        if let (Some(want), Some(parser)) = (conn.next_seq[slot], conn.parser.as_mut())
            && want != seq
        {
            parser.lost_data(direction(slot), &mut self.agg.losses);
        }
        conn.next_seq[slot] = Some(seq.wrapping_add(1));
    }

    /// A record of a call sent in several (`part`, `more`): stitched to the
    /// call's earlier ones, the whole call parsed at its last. A record
    /// that did not arrive ends the call there: its bytes from there on
    /// are taken as not captured (the parser loses frame sync only if a
    /// frame header or header block was in them) and counted.
    fn part(&mut self, key: (u64, u32), slot: usize, c: &Chunk<'_>, owner: &dyn Fn(u64) -> Option<Owner>) {
        if c.part == 0 {
            // A new call: one still waiting lost its last records.
            self.flush_pending(key, slot, true, owner);
            self.next_call(key, slot, c.seq);
            if !c.more {
                self.feed_whole(key, slot, c, owner);
                return;
            }
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.extend_from_slice(c.data);
            let conn = self.conns.get_mut(&key).expect("a tracked connection");
            conn.pending[slot] = Some(Pending {
                seq: c.seq,
                next_part: 1,
                buf,
                total_len: c.total_len,
                start_ns: c.start_ns,
                end_ns: c.end_ns,
            });
            return;
        }
        let conn = self.conns.get_mut(&key).expect("a tracked connection");
        match conn.pending[slot].as_mut() {
            Some(p) if p.seq == c.seq && p.next_part == c.part => {
                p.buf.extend_from_slice(c.data);
                p.next_part += 1;
                if !c.more {
                    self.flush_pending(key, slot, false, owner);
                }
            }
            Some(p) if p.seq == c.seq => {
                // A record in between did not arrive.
                conn.skip[slot] = Some(c.seq);
                self.flush_pending(key, slot, true, owner);
            }
            _ if conn.skip[slot] == Some(c.seq) => {}
            _ => {
                // The call's first record did not arrive (and maybe whole
                // calls before it): a gap for the parser; its later records
                // are ignored.
                self.flush_pending(key, slot, true, owner);
                let conn = self.conns.get_mut(&key).expect("a tracked connection");
                conn.skip[slot] = Some(c.seq);
                conn.next_seq[slot] = Some(c.seq.wrapping_add(1));
                if let Some(parser) = conn.parser.as_mut() {
                    parser.lost_data(direction(slot), &mut self.agg.losses);
                }
            }
        }
    }

    /// Parses the call waiting in direction `slot`, if any; `lost`: some of
    /// its records did not arrive (counted).
    fn flush_pending(&mut self, key: (u64, u32), slot: usize, lost: bool, owner: &dyn Fn(u64) -> Option<Owner>) {
        let Some(pending) = self.conns.get_mut(&key).and_then(|c| c.pending[slot].take()) else { return };
        if lost {
            self.agg.capture_parts_lost += 1;
        }
        let chunk = p::Chunk {
            direction: direction(slot),
            captured: &pending.buf,
            total_len: pending.total_len as usize,
            start_ns: pending.start_ns,
            end_ns: pending.end_ns,
        };
        self.feed(key, &chunk, owner);
        if self.spare.len() < SPARE_BUFFERS {
            let mut buf = pending.buf;
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// One call's bytes (as far as captured) to the connection's parser.
    fn feed(&mut self, key: (u64, u32), chunk: &p::Chunk<'_>, owner: &dyn Fn(u64) -> Option<Owner>) {
        let limits = self.limits;
        let conn = self.conns.get_mut(&key).expect("a tracked connection");
        if conn.parser.is_none() {
            // The role decides which direction carries requests: until a
            // chunk says it for sure (a request or status line, the HTTP/2
            // preface, or — for HTTP/2 joined mid-stream — a header block's
            // pseudo-headers), nothing is parsed. A parser started later
            // only knows less (HTTP/1 waits for a message start anyway,
            // HPACK entries inserted before are unknown), never wrong.
            match p::role_hint(chunk) {
                Some(role) => {
                    conn.role = Some(role);
                    conn.parser = Some(Connection::with_limits(role, limits));
                }
                None => {
                    self.agg.losses.add(p::LossReason::UnknownProtocol);
                    return;
                }
            }
        }
        let mut out = std::mem::take(&mut self.scratch);
        let parser = conn.parser.as_mut().expect("set above");
        parser.feed(chunk, &mut out, &mut self.agg.losses);
        let (cg, tid, ep, role) = (conn.cgroup_id, conn.tid, conn.endpoints, conn.role);
        for x in out.drain(..) {
            self.exchange(key, cg, tid, ep, role, x, owner);
        }
        self.scratch = out;
    }

    /// The process on the other end of a connection, inside the same
    /// network namespace: found by the endpoint that is unique to it (the
    /// connecting side's local port).
    fn peer(&self, ep: Option<Endpoints>, role: Role) -> Option<&Conn> {
        let ep = ep?;
        let key = match role {
            Role::Server => self.by_local.get(&(ep.netns, ep.remote))?,
            Role::Client => self.by_remote.get(&(ep.netns, ep.local))?,
        };
        self.conns.get(key)
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        _key: (u64, u32),
        cgroup_id: u64,
        tid: u32,
        ep: Option<Endpoints>,
        role: Option<Role>,
        x: Exchange,
        owner: &dyn Fn(u64) -> Option<Owner>,
    ) {
        let Some(role) = role else {
            self.agg.role_unknown += 1;
            return;
        };
        let server = role == Role::Server;
        let seconds = x.duration_ns() as f64 / 1e9;
        match (&x.grpc, x.status_code) {
            (Some(g), _) => {
                let mut k = GrpcKey {
                    cgroup_id,
                    server,
                    service: g.service.clone(),
                    method: g.method.clone(),
                    code: g.code.as_str(),
                };
                if !self.agg.grpc.contains_key(&k) {
                    let methods = self.agg.grpc_methods.entry((cgroup_id, server)).or_default();
                    let pair = (k.service.clone(), k.method.clone());
                    if !methods.contains(&pair) {
                        if methods.len() >= MAX_GRPC_METHODS {
                            k.service = OVERFLOW.to_string();
                            k.method = OVERFLOW.to_string();
                            self.agg.grpc_overflow += 1;
                        } else {
                            methods.insert(pair);
                        }
                    }
                }
                self.agg.grpc.entry(k).or_default().observe(DURATION_BUCKETS, seconds);
            }
            (None, Some(status)) => {
                let route = self.routes.route(x.path.as_deref());
                let k = HttpKey { cgroup_id, server, method: x.method.as_str(), status_code: status, route };
                self.agg.http.entry(k).or_default().observe(DURATION_BUCKETS, seconds);
            }
            // A stream reset before its response: no status to label it by.
            (None, None) => return,
        }
        self.sidecar_latency(cgroup_id, tid, ep, role, &x, owner);
    }

    /// Feeds the pairing: see [`super::pairing`] for what is paired; and,
    /// while tracing, the traces ([`super::traces`]).
    fn sidecar_latency(
        &mut self,
        cgroup_id: u64,
        tid: u32,
        ep: Option<Endpoints>,
        role: Role,
        x: &Exchange,
        owner: &dyn Fn(u64) -> Option<Owner>,
    ) {
        let Some(me) = owner(cgroup_id) else { return };
        let Some(pod_uid) = me.pod_uid.clone() else { return };
        let peer = self.peer(ep, role).map(|c| (c.cgroup_id, c.tid));
        let peer_owner = peer.and_then(|(cg, _)| owner(cg));
        let peer_is = |sidecar: bool| {
            peer_owner
                .as_ref()
                .is_some_and(|o| o.pod_uid.as_deref() == Some(pod_uid.as_str()) && o.is_sidecar == sidecar)
        };
        let tracing = self.tracing.is_some();
        let seen = || Seen { cgroup_id, tid, role, endpoints: ep, exchange: x.clone() };
        let key = RequestKey {
            method: x.method.as_str().to_string(),
            path: x.path.clone().unwrap_or_default(),
            request_id: x.x_request_id.clone(),
        };
        let protocol = if x.grpc.is_some() { "grpc" } else { "http" };
        let span = pairing::Exchange { key, start_ns: x.request_start_ns, end_ns: x.response_end_ns, data: () };
        let domain = |direction, sidecar_tid| Domain { pod_uid: pod_uid.clone(), direction, sidecar_tid };
        use pairing::Direction::{Inbound, Outbound};
        let outer = match (me.is_sidecar, role) {
            // The sidecar's forward to the app, or to the outside.
            (true, Role::Client) => {
                let direction = if peer_is(false) { Inbound } else { Outbound };
                let inner = pairing::Exchange {
                    key: span.key,
                    start_ns: span.start_ns,
                    end_ns: span.end_ns,
                    data: tracing.then(|| Box::new(seen())),
                };
                self.pairer.inner(domain(direction, tid), inner);
                return;
            }
            // A downstream request of the sidecar: from outside (inbound);
            // one from the app is paired through the app's own request.
            (true, Role::Server) if !peer_is(false) => (domain(Inbound, tid), Inbound),
            // The app's request to its sidecar (outbound): on the sidecar's
            // thread that serves the other end.
            (false, Role::Client) if peer_is(true) => {
                let (_, sidecar_tid) = peer.expect("peer_is implies a peer");
                (domain(Outbound, sidecar_tid), Outbound)
            }
            // The far ends of the hop between sidecar and app, for traces:
            // the sidecar serving its app (outbound), the app serving its
            // sidecar (inbound).
            (_, Role::Server) if peer_is(!me.is_sidecar) => {
                if let Some(t) = self.tracing.as_mut() {
                    t.keep(seen());
                }
                return;
            }
            _ => return,
        };
        let (domain, direction) = outer;
        let claimed = self.pairer.claim(&domain, &span);
        let mut paired = None;
        if let Some((inner, how)) = claimed {
            let added_ns = span.span().saturating_sub(inner.span());
            let k = AddedKey { pod_uid, cgroup_id, direction, protocol };
            self.agg.added.entry(k).or_default().observe(ADDED_BUCKETS, added_ns as f64 / 1e9);
            *self.agg.paired.entry(how.as_label()).or_default() += 1;
            paired = inner.data.map(|seen| (*seen, how, added_ns));
        }
        if let Some(t) = self.tracing.as_mut() {
            t.outer(direction, seen(), paired);
        }
    }

    /// Drops the series of cgroups `keep` says are gone for good (past
    /// discovery's grace period), so that churn does not grow them.
    pub fn forget(&mut self, keep: &dyn Fn(u64) -> bool) {
        self.agg.http.retain(|k, _| keep(k.cgroup_id));
        self.agg.grpc.retain(|k, _| keep(k.cgroup_id));
        self.agg.added.retain(|k, _| keep(k.cgroup_id));
        self.agg.grpc_methods.retain(|(cg, _), _| keep(*cg));
    }

    /// Unpaired counts of the sidecar-added latency.
    pub fn unpaired(&self) -> pairing::Unpaired {
        self.pairer.unpaired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::capture::Proto;
    use std::net::{IpAddr, Ipv4Addr};

    fn chunk(seq: u32, direction: Direction, data: &[u8], at: u64) -> Event<'_> {
        let addr = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        Event::Data(Chunk {
            sock: 1,
            endpoints: Some(Endpoints { local: addr(8080), remote: addr(40000), netns: 1 }),
            cgroup_id: 7,
            tgid: 100,
            tid: 100,
            start_ns: at,
            end_ns: at + 1,
            direction,
            proto: Proto::Http1,
            call: "read",
            total_len: data.len() as u32,
            seq,
            part: 0,
            more: false,
            data,
        })
    }

    #[test]
    fn grpc_methods_beyond_the_cap_are_counted_as_other() {
        let mut t = Tracker::new(16);
        let names = |_: u64| None;
        let ep = Endpoints {
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
            remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2),
            netns: 1,
        };
        for i in 0..MAX_GRPC_METHODS + 3 {
            let x = Exchange {
                protocol: p::Protocol::Grpc,
                method: p::Method::Post,
                path: None,
                path_truncated: false,
                authority: None,
                status_code: Some(200),
                grpc: Some(p::GrpcCall {
                    service: "s.S".into(),
                    method: format!("M{i}"),
                    code: p::GrpcCode::Ok,
                    code_source: p::GrpcCodeSource::Trailers,
                }),
                x_request_id: None,
                traceparent: None,
                stream_id: Some(1),
                reset: None,
                headers_partial: false,
                request_start_ns: 0,
                request_end_ns: 1,
                response_start_ns: 2,
                response_end_ns: 3,
            };
            t.exchange((1, 1), 7, 1, Some(ep), Some(Role::Server), x, &names);
        }
        assert_eq!(t.agg.grpc.len(), MAX_GRPC_METHODS + 1, "the cap plus one _OTHER series");
        assert_eq!(t.agg.grpc_overflow, 3);
        let other = t.agg.grpc.iter().find(|(k, _)| k.method == OVERFLOW).unwrap().1;
        assert_eq!(other.count, 3);
        t.forget(&|_| false);
        assert!(t.agg.grpc.is_empty() && t.agg.grpc_methods.is_empty());
    }

    #[test]
    fn a_gap_in_the_record_numbers_is_reported_to_the_parser() {
        let mut t = Tracker::new(16);
        let names = |_: u64| Some(Owner { pod_uid: None, is_sidecar: false });
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        t.event(chunk(0, Direction::Ingress, req, 10), &names);
        t.event(chunk(0, Direction::Egress, resp, 20), &names);
        assert_eq!(t.agg.http.values().map(|h| h.count).sum::<u64>(), 1);
        assert_eq!(t.agg.losses.get(p::LossReason::DataGap), 0);
        // Record 1 of the ingress side never came.
        t.event(chunk(2, Direction::Ingress, req, 30), &names);
        assert_eq!(t.agg.losses.get(p::LossReason::DataGap), 1);
    }

    /// The kernel's table pushed a followed connection out (LRU): its
    /// records are numbered from 0 again, the first with the endpoints.
    /// Counted once, the gap told to the parser, and the connection's
    /// next exchange counted again.
    #[test]
    fn a_connection_the_kernel_forgot_is_counted_and_followed_on() {
        let mut t = Tracker::new(16);
        let names = |_: u64| Some(Owner { pod_uid: None, is_sidecar: false });
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let without_endpoints = |e: Event<'static>| match e {
            Event::Data(c) => Event::Data(Chunk { endpoints: None, ..c }),
            other => other,
        };
        t.event(chunk(0, Direction::Ingress, req, 10), &names);
        t.event(without_endpoints(chunk(0, Direction::Egress, resp, 20)), &names);
        t.event(without_endpoints(chunk(1, Direction::Ingress, req, 30)), &names);
        t.event(without_endpoints(chunk(1, Direction::Egress, resp, 40)), &names);
        assert_eq!(served(&t), 2);
        assert_eq!(t.agg.connections_evicted, 0, "the first record's endpoints are no eviction");
        // Evicted; found again at the next request (the kernel tells a
        // request start from the middle of a stream).
        t.event(chunk(0, Direction::Ingress, req, 50), &names);
        t.event(without_endpoints(chunk(0, Direction::Egress, resp, 60)), &names);
        assert_eq!(t.agg.connections_evicted, 1);
        assert_eq!(t.agg.losses.get(p::LossReason::DataGap), 2, "each direction's numbering jumped");
        t.event(without_endpoints(chunk(1, Direction::Ingress, req, 70)), &names);
        t.event(without_endpoints(chunk(1, Direction::Egress, resp, 80)), &names);
        assert_eq!(t.agg.connections_evicted, 1, "once per eviction");
        // The request that found it again starts its record: measured, as
        // is every exchange after it.
        assert_eq!(served(&t), 4, "counted again after the gap: {:?}", t.agg.losses);
    }

    /// An HTTP/2 frame.
    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len() as u32;
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags];
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    #[test]
    fn an_http2_connection_joined_mid_stream_gets_its_role_from_a_header_block() {
        let mut t = Tracker::new(16);
        let names = |_: u64| Some(Owner { pod_uid: None, is_sidecar: false });
        // A WINDOW_UPDATE does not say who we are.
        t.event(chunk(0, Direction::Ingress, &frame(8, 0, 0, &[0, 0, 1, 0]), 10), &names);
        assert_eq!(t.agg.losses.get(p::LossReason::UnknownProtocol), 1);
        assert!(t.conns.values().all(|c| c.role.is_none()));
        // A response written (`:status 200`, static): we are the server. Its
        // request came before we did: counted, not measured.
        let response = frame(1, 0x4 | 0x1, 31, &[0x88]);
        t.event(chunk(0, Direction::Egress, &response, 20), &names);
        assert!(t.conns.values().all(|c| c.role == Some(Role::Server)));
        assert_eq!(t.agg.losses.get(p::LossReason::H2Unpaired), 1);
        // A request read (`:method GET`, `:scheme http`, `:path /` static)
        // and its response: measured.
        t.event(chunk(1, Direction::Ingress, &frame(1, 0x4 | 0x1, 33, &[0x82, 0x86, 0x84]), 30), &names);
        t.event(chunk(1, Direction::Egress, &frame(1, 0x4 | 0x1, 33, &[0x8d]), 40), &names);
        let counted: Vec<_> = t.agg.http.iter().map(|(k, h)| (k.server, k.method, k.status_code, h.count)).collect();
        assert_eq!(counted, vec![(true, "GET", 404, 1)]);
        assert_eq!(t.agg.role_unknown, 0);
    }

    /// The records the kernel sends for one HTTP/2 call of `bytes`: full
    /// ones of `CAPTURE_BYTES`, the same seq, `part` counting, `more` on all
    /// but the last.
    fn records(seq: u32, direction: Direction, bytes: &[u8], at: u64) -> Vec<Event<'_>> {
        let parts: Vec<&[u8]> = bytes.chunks(pmoas_bpf::http::CAPTURE_BYTES).collect();
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, data)| {
                let Event::Data(mut c) = chunk(seq, direction, data, at) else { unreachable!() };
                c.proto = Proto::Http2;
                c.total_len = bytes.len() as u32;
                c.part = i as u8;
                c.more = i + 1 < n;
                Event::Data(c)
            })
            .collect()
    }

    /// `n` GET requests (streams 1, 3, ...) with a body of `body` bytes
    /// each, after the client preface and SETTINGS; and their responses.
    fn h2_calls(first: u32, n: u32, body: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut req, mut resp) = (Vec::new(), Vec::new());
        if first == 1 {
            req.extend(pmoas_protocols::http2::PREFACE);
            req.extend(frame(4, 0, 0, &[]));
            resp.extend(frame(4, 0, 0, &[]));
        }
        for i in 0..n {
            let stream = first + 2 * i;
            // `:method GET`, `:scheme http`, `:path /` (static), END_HEADERS.
            req.extend(frame(1, 0x4, stream, &[0x82, 0x86, 0x84]));
            req.extend(frame(0, 0x1, stream, &vec![b'x'; body]));
            // `:status 200`, END_STREAM | END_HEADERS.
            resp.extend(frame(1, 0x5, stream, &[0x88]));
        }
        (req, resp)
    }

    fn served(t: &Tracker) -> u64 {
        t.agg.http.iter().filter(|(k, _)| k.server && k.status_code == 200).map(|(_, h)| h.count).sum()
    }

    #[test]
    fn an_http2_call_in_several_records_is_parsed_whole() {
        let mut t = Tracker::new(16);
        let names = |_: u64| Some(Owner { pod_uid: None, is_sidecar: false });
        // 100 requests read at once: 13 KiB, frames across the records'
        // boundary.
        let (req, resp) = h2_calls(1, 100, 100);
        assert!(req.len() > pmoas_bpf::http::CAPTURE_BYTES && resp.len() < pmoas_bpf::http::CAPTURE_BYTES);
        let reads = records(0, Direction::Ingress, &req, 10);
        assert_eq!(reads.len(), 2);
        for e in reads {
            t.event(e, &names);
        }
        assert_eq!(t.conns.values().next().unwrap().role, Some(Role::Server));
        for e in records(0, Direction::Egress, &resp, 20) {
            t.event(e, &names);
        }
        assert_eq!(served(&t), 100, "{:?}", t.agg.losses);
        assert_eq!(t.agg.losses.total(), 0, "{:?}", t.agg.losses);
        assert_eq!(t.agg.capture_parts_lost, 0);
        // The next call, 3 records (`part` 1 and 2 continuations).
        let (req, resp) = h2_calls(201, 120, 200);
        let reads = records(1, Direction::Ingress, &req, 30);
        assert_eq!(reads.len(), 4);
        for e in reads {
            t.event(e, &names);
        }
        for e in records(1, Direction::Egress, &resp, 40) {
            t.event(e, &names);
        }
        assert_eq!(served(&t), 220, "{:?}", t.agg.losses);
        assert_eq!(t.agg.losses.total(), 0, "{:?}", t.agg.losses);
    }

    #[test]
    fn a_lost_continuation_record_is_counted_and_the_parser_resyncs() {
        let mut t = Tracker::new(16);
        let names = |_: u64| Some(Owner { pod_uid: None, is_sidecar: false });
        let (req, resp) = h2_calls(1, 100, 100);
        for e in records(0, Direction::Ingress, &req, 10) {
            t.event(e, &names);
        }
        for e in records(0, Direction::Egress, &resp, 20) {
            t.event(e, &names);
        }
        assert_eq!(served(&t), 100);
        // A call of 4 records whose second did not arrive: the call's bytes
        // from there on are not captured (frames lost: counted), the rest
        // of its records ignored.
        let (req, resp) = h2_calls(201, 120, 200);
        let mut reads = records(1, Direction::Ingress, &req, 30);
        assert_eq!(reads.len(), 4);
        reads.remove(1);
        for e in reads {
            t.event(e, &names);
        }
        assert_eq!(t.agg.capture_parts_lost, 1);
        assert_eq!(t.agg.losses.get(p::LossReason::H2FrameLost), 1, "{:?}", t.agg.losses);
        for e in records(1, Direction::Egress, &resp, 40) {
            t.event(e, &names);
        }
        // Of those, only the requests wholly before the missing record are
        // answered; nothing is counted wrong.
        let after_loss = served(&t);
        assert!((100..100 + 120).contains(&after_loss), "{after_loss}");
        // A call whose last record did not arrive: counted when the next
        // call comes. The direction resyncs on a call of whole frames.
        let (req, _) = h2_calls(1001, 100, 100);
        let mut reads = records(2, Direction::Ingress, &req, 50);
        reads.pop();
        for e in reads {
            t.event(e, &names);
        }
        assert_eq!(t.agg.capture_parts_lost, 1, "not known before the next call");
        // (`:method GET`, `:scheme http`, `:path /`: static, so decodable
        // whatever the HPACK table.)
        let (req, resp) = h2_calls(2001, 3, 10);
        for e in records(3, Direction::Ingress, &req, 60) {
            t.event(e, &names);
        }
        assert_eq!(t.agg.capture_parts_lost, 2);
        for e in records(2, Direction::Egress, &resp, 70) {
            t.event(e, &names);
        }
        assert_eq!(served(&t), after_loss + 3, "resynced: {:?}", t.agg.losses);
        // A call whose first record did not arrive: a gap (its other
        // records ignored).
        let (req, _) = h2_calls(3001, 100, 100);
        let mut reads = records(4, Direction::Ingress, &req, 80);
        reads.remove(0);
        let gaps = t.agg.losses.get(p::LossReason::DataGap);
        for e in reads {
            t.event(e, &names);
        }
        assert_eq!(t.agg.losses.get(p::LossReason::DataGap), gaps + 1);
        assert_eq!(t.agg.capture_parts_lost, 2);
    }

    #[test]
    fn a_body_that_starts_like_a_method_gives_no_role() {
        let mut t = Tracker::new(16);
        let names = |_: u64| Some(Owner { pod_uid: None, is_sidecar: false });
        // Joined in a request body that happens to start with "GET ": no
        // request line, no role (the wrong one would pair nothing again).
        t.event(chunk(0, Direction::Ingress, b"GET ready, the body said", 10), &names);
        assert!(t.conns.values().all(|c| c.role.is_none()));
        t.event(chunk(0, Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 20), &names);
        assert_eq!(t.conns.values().next().unwrap().role, Some(Role::Server));
    }

    #[test]
    fn buckets_put_a_value_on_its_upper_bound() {
        let mut h = Hist::default();
        h.observe(DURATION_BUCKETS, 0.05);
        h.observe(DURATION_BUCKETS, 0.0501);
        h.observe(DURATION_BUCKETS, 99.0);
        let b = h.buckets(DURATION_BUCKETS);
        assert_eq!(b.iter().find(|(le, _)| *le == 0.05).unwrap().1, 1, "le is inclusive");
        assert_eq!(b.iter().find(|(le, _)| *le == 0.075).unwrap().1, 1);
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1));
        assert_eq!(h.count, 3);
    }
}
