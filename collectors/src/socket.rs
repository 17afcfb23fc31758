//! socket collector, user side: TCP connects, accepts, handshake and
//! accept-queue latency, connection lifetime, bytes, retransmits and resets,
//! per container and per peer (`sidecar`, `app`, `pod`, `node`, `remote`).
//!
//! Kernel side: `bpf-programs/src/socket.bpf.c`. It aggregates everything
//! in per-CPU maps keyed by (cgroup, peer cgroup, peer class); nothing goes
//! through a ring buffer. At scrape time this module sums the CPUs, names the
//! cgroups through discovery, and folds keys into series.
//!
//! Series of a workload that is gone are served for the discovery grace
//! period, then removed from the kernel maps. Keys whose *peer* is gone are
//! folded into a user-space carry under the labels they last had, so a
//! series never goes backwards when a peer container is replaced.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use pmoas_bpf::types::{self as t, Log2Hist, SocketCounters, SocketKey};
use pmoas_discovery::{Discovery, Lookup, Role, Workload, netns, process};
use serde::{Deserialize, Serialize};

use crate::ebpf::{self, Hook, Kernel, ProgramSpec, ProgramStatus};
use crate::fold::{Names, PerCpuTable, SummedTable};
use crate::histogram::Log2Buckets;
use crate::metrics::{Desc, Labels, MetricSet, WorkloadLabels};
use crate::setting::{self, Setting};
use crate::{BuildContext, BuildError, Collector, CollectorInfo, CollectorSpec};

pub const INFO: CollectorInfo = CollectorInfo {
    name: "socket",
    help: "TCP connects/accepts between sidecar, app and the rest: handshake and accept-queue latency, \
           lifetime, bytes, retransmits, resets (tracepoints)",
    default_enabled: true,
};

pub const CONNECTS: Desc = Desc::counter(
    "pmoas_tcp_connects_total",
    "Active TCP opens that reached ESTABLISHED, by connecting workload and peer.",
);
pub const CONNECT_FAILURES: Desc = Desc::counter(
    "pmoas_tcp_connect_failures_total",
    "Active TCP opens that never reached ESTABLISHED (refused, reset, timed out).",
);
pub const ACCEPTS: Desc = Desc::counter(
    "pmoas_tcp_accepts_total",
    "Passive TCP opens that reached ESTABLISHED, counted for the listening workload, by peer.",
);
pub const CONNECT_DURATION: Desc = Desc::histogram(
    "pmoas_tcp_connect_duration_seconds",
    "TCP handshake time of active opens: SYN sent to ESTABLISHED.",
);
pub const ACCEPT_WAIT: Desc = Desc::histogram(
    "pmoas_tcp_accept_wait_seconds",
    "Time an established connection waited in the accept queue: ESTABLISHED to accept() returning it.",
);
pub const CONNECTION_DURATION: Desc = Desc::histogram(
    "pmoas_tcp_connection_duration_seconds",
    "Lifetime of closed TCP connections, ESTABLISHED to CLOSE; direction=outbound (we connected) or inbound (we accepted).",
);
pub const SENT_BYTES: Desc = Desc::counter(
    "pmoas_tcp_sent_bytes_total",
    "Payload bytes sent and acknowledged on TCP connections, counted when they close.",
);
pub const RECEIVED_BYTES: Desc = Desc::counter(
    "pmoas_tcp_received_bytes_total",
    "Payload bytes received on TCP connections, counted when they close.",
);
pub const RETRANSMITS: Desc = Desc::counter(
    "pmoas_tcp_retransmits_total",
    "Retransmitted TCP segments (data and SYN-ACK), as counted by the kernel's TcpRetransSegs.",
);
pub const RESETS: Desc = Desc::counter(
    "pmoas_tcp_resets_total",
    "TCP resets; direction=sent (we sent a RST) or received (a RST closed our socket).",
);

/// Settings of the socket collector (`[collector.socket]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    /// Run this collector (`true`), or not (`false`) whatever the defaults
    /// and the collector list say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Open TCP connections tracked at once, node-wide (kernel map size).
    /// Connections beyond it are still counted as opens and failures, but
    /// their bytes and lifetime are lost and counted in
    /// `pmoas_ebpf_events_lost_total{reason="connection_map_full"}`.
    pub max_tracked_connections: u32,
    /// (workload, peer) pairs with counters, and the same for histograms.
    pub max_series: u32,
    /// How often the addresses of the node and its pods are re-read, so a
    /// connection to another pod of this node says `peer="node"`, not
    /// `remote`.
    #[serde(with = "humantime_serde")]
    pub local_address_refresh: Duration,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            enabled: None,
            max_tracked_connections: t::SOCKET_CONN_MAP_SIZE,
            max_series: t::SOCKET_COUNTER_MAP_SIZE,
            local_address_refresh: Duration::from_secs(30),
        }
    }
}

/// The `[collector.socket]` section.
pub type Config = SocketConfig;

/// Flags, variables and bounds of [`SocketConfig`].
pub const SETTINGS: &[Setting] = &[
    Setting::count(
        "collector.socket.max_tracked_connections",
        64,
        setting::MAX_MAP_ENTRIES,
        "Open TCP connections tracked at once, node-wide; beyond it bytes and lifetimes of new connections are lost (and counted)",
    ),
    Setting::count(
        "collector.socket.max_series",
        64,
        setting::MAX_MAP_ENTRIES,
        "(workload, peer) pairs kept in the kernel's counter and histogram maps",
    ),
    Setting::duration(
        "collector.socket.local_address_refresh",
        Duration::from_secs(1),
        Duration::from_secs(3600),
        "How often the addresses of the node and its pods are re-read (peer=node vs remote)",
    ),
];

pub const SPEC: CollectorSpec = CollectorSpec {
    info: INFO,
    object: pmoas_bpf::SOCKET,
    settings: SETTINGS,
    programs: PROGRAMS,
    lost_reasons: &t::SOCKET_LOST_REASONS,
    build: |ctx| Ok(Arc::new(SocketCollector::new(ctx)?)),
};

/// The programs of socket.bpf.c, in attach order.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "socket_state_change",
        hook: Hook::BtfTracePoint { name: "inet_sock_set_state" },
        fallback_for: None,
        feature: "connections",
    },
    ProgramSpec {
        program: "socket_accept4_exit",
        hook: Hook::TracePoint { category: "syscalls", name: "sys_exit_accept4" },
        fallback_for: None,
        feature: "accept_wait",
    },
    ProgramSpec {
        program: "socket_accept_exit",
        hook: Hook::TracePoint { category: "syscalls", name: "sys_exit_accept" },
        fallback_for: None,
        feature: "accept_wait",
    },
    ProgramSpec {
        program: "socket_retransmit",
        hook: Hook::BtfTracePoint { name: "tcp_retransmit_skb" },
        fallback_for: None,
        feature: "retransmits",
    },
    ProgramSpec {
        program: "socket_retransmit_v1",
        hook: Hook::BtfTracePoint { name: "tcp_retransmit_skb" },
        fallback_for: Some("socket_retransmit"),
        feature: "retransmits",
    },
    ProgramSpec {
        program: "socket_retransmit_synack",
        hook: Hook::BtfTracePoint { name: "tcp_retransmit_synack" },
        fallback_for: None,
        feature: "retransmits",
    },
    ProgramSpec {
        program: "socket_send_reset",
        hook: Hook::BtfTracePoint { name: "tcp_send_reset" },
        fallback_for: None,
        feature: "resets",
    },
    ProgramSpec {
        program: "socket_receive_reset",
        hook: Hook::BtfTracePoint { name: "tcp_receive_reset" },
        fallback_for: None,
        feature: "resets",
    },
    // A client's SYN leaving with another destination than its socket names
    // (an iptables REDIRECT to a sidecar): that connect then says
    // peer="sidecar" instead of "remote".
    ProgramSpec {
        program: "socket_syn_egress",
        hook: Hook::CgroupSkb { ingress: false },
        fallback_for: None,
        feature: "redirected_connects",
    },
];

/// The `peer` label: what is on the other end, relative to `own`.
pub fn peer_label(own: &Workload, class: u8, peer: Option<&Workload>) -> &'static str {
    match class {
        t::PEER_CGROUP => match peer {
            Some(p) if own.same_pod(p) => match p.role {
                Role::Sidecar => "sidecar",
                Role::App => "app",
                Role::None => "pod",
            },
            _ => "node",
        },
        t::PEER_SAME_NETNS => {
            if own.pod_uid.is_some() {
                "pod"
            } else {
                "node"
            }
        }
        t::PEER_NODE => "node",
        t::PEER_REMOTE => "remote",
        _ => "",
    }
}

/// The workload labels of a series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Series {
    workload: WorkloadLabels,
    /// Empty for series without a peer (retransmits, resets, accept wait).
    peer: &'static str,
}

impl Series {
    fn new(w: &Workload, peer: &'static str) -> Series {
        Series { workload: WorkloadLabels::of(w), peer }
    }

    fn labels(&self, with_peer: bool) -> Labels {
        let mut l = self.workload.labels();
        if with_peer {
            l.push(("peer", self.peer.to_string()));
        }
        l
    }
}

/// What to do with a kernel key this scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Serve it.
    Keep,
    /// Move its value into the carry and delete the key: its peer is gone.
    Fold,
    /// Delete the key: its own workload is gone past the grace period.
    Drop,
}

type Triple = (u64, u64, u8);

fn triple(k: &SocketKey) -> Triple {
    (k.cgroup_id, k.peer_cgroup_id, k.peer_class)
}

/// A value kept in user space after its kernel key was deleted, with the
/// cgroup whose series it belongs to (0: the node, never expires).
struct Carried<V> {
    owner: u64,
    value: V,
}

/// Kernel map entries -> series: the part tested on fixture maps.
struct Folding {
    counters: Box<dyn SummedTable<SocketKey, SocketCounters>>,
    histograms: Box<dyn SummedTable<SocketKey, Log2Hist>>,
    /// The series each (cgroup, peer cgroup, class) last resolved to.
    resolved: HashMap<Triple, Series>,
    carry_counters: HashMap<Series, Carried<SocketCounters>>,
    carry_hists: HashMap<(Series, u8), Carried<Log2Hist>>,
}

impl Folding {
    fn new(
        counters: Box<dyn SummedTable<SocketKey, SocketCounters>>,
        histograms: Box<dyn SummedTable<SocketKey, Log2Hist>>,
    ) -> Folding {
        Folding {
            counters,
            histograms,
            resolved: HashMap::new(),
            carry_counters: HashMap::new(),
            carry_hists: HashMap::new(),
        }
    }
}

struct Inner {
    fold: Folding,
    local_addrs: BpfHashMap<MapData, [u8; 16], u8>,
    local_addrs_refreshed: Option<Instant>,
    local_addrs_known: HashSet<[u8; 16]>,
}

pub struct SocketCollector {
    // Field order: `inner` (the maps) drops before `kernel` detaches programs.
    inner: Mutex<Inner>,
    /// The sockops collector's bytes of closed redirected connections.
    companions: Arc<crate::Companions>,
    kernel: Kernel,
    discovery: Arc<Discovery>,
    config: SocketConfig,
}

impl SocketCollector {
    pub fn new(ctx: &BuildContext) -> Result<SocketCollector, BuildError> {
        let cfg = ctx.config.socket.clone();
        let sizes = [
            ("socket_conns", cfg.max_tracked_connections),
            ("socket_pending", cfg.max_tracked_connections),
            ("socket_counters", cfg.max_series),
            ("socket_histograms", cfg.max_series),
        ];
        // The cgroup v2 root, where socket_syn_egress attaches; Kernel::load
        // refuses a host without one, with the reason.
        let v2_root = ctx.discovery.cgroupfs().v2_root().ok().map(Path::to_path_buf);
        let kernel = Kernel::load(&SPEC, ctx, &sizes, PROGRAMS, v2_root.as_deref())?;
        let inner = Inner {
            fold: Folding::new(
                Box::new(PerCpuTable::new(kernel.take_map("socket_counters")?, SocketCounters::merge)),
                Box::new(PerCpuTable::new(kernel.take_map("socket_histograms")?, Log2Hist::merge)),
            ),
            local_addrs: kernel.take_map("local_addrs")?,
            local_addrs_refreshed: None,
            local_addrs_known: HashSet::new(),
        };
        ctx.companions.socket_reads_closed_bytes();
        let collector = SocketCollector {
            inner: Mutex::new(inner),
            companions: ctx.companions.clone(),
            kernel,
            discovery: ctx.discovery.clone(),
            config: cfg,
        };
        // Seed the node's addresses before the first connection is judged.
        collector.lock().refresh_local_addrs(&collector.discovery);
        let open = netns::open_tcp_connections(collector.discovery.procfs());
        ebpf::check_capacity(
            collector.discovery.health(),
            INFO.name,
            "connection_map_size",
            &collector.kernel,
            "socket_conns",
            "collector.socket.max_tracked_connections",
            (open, "open TCP sockets"),
            "connections beyond it are still counted as connects and accepts, but their bytes and lifetimes \
             are lost (pmoas_ebpf_events_lost_total{reason=\"connection_map_full\"})",
        );
        Ok(collector)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for SocketCollector {
    fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        let mut inner = self.lock();
        if inner.local_addrs_refreshed.is_none_or(|t| t.elapsed() >= self.config.local_address_refresh) {
            inner.refresh_local_addrs(&self.discovery);
        }
        self.kernel.export_health(out)?;
        let mut redirected = self.companions.lock_closed_bytes();
        inner.fold.collect(self.discovery.as_ref(), redirected.as_deref_mut(), out)
    }

    fn programs(&self) -> Vec<ProgramStatus> {
        self.kernel.programs().to_vec()
    }

    fn maps(&self) -> Vec<crate::ebpf::MapUsage> {
        self.kernel.maps()
    }
}

impl Inner {
    /// Reads the addresses of the host's and every pod's network namespace
    /// into the kernel's `local_addrs`. A namespace this process may not
    /// read (hidepid without CAP_SYS_PTRACE) leaves connections to its
    /// addresses counted as `remote`: raised as `socket`/`local_addresses`.
    fn refresh_local_addrs(&mut self, discovery: &Discovery) {
        let procfs = discovery.procfs();
        let mut pids: Vec<u32> = vec![1, std::process::id()];
        pids.extend(discovery.pod_pids().into_iter().map(|(_, pid)| pid));
        let mut denied: Option<String> = None;
        for pid in pids {
            let addrs = match netns::local_addresses(procfs, pid) {
                Ok(a) => a,
                Err(e) => {
                    if denied.is_none() && process::is_denied(procfs, &e) {
                        denied = Some(format!("{}/{pid}/net: {e}", procfs.display()));
                    }
                    continue;
                }
            };
            for ip in addrs {
                let a = netns::addr16(ip);
                if ip.is_loopback() || self.local_addrs_known.contains(&a) {
                    continue;
                }
                match self.local_addrs.insert(a, 1, 0) {
                    Ok(()) => {
                        self.local_addrs_known.insert(a);
                    }
                    Err(e) => {
                        tracing::warn!(%ip, error = %e, "cannot record a local address (map full?)")
                    }
                }
            }
        }
        let health = discovery.health();
        match denied {
            Some(why) => health.raise(
                INFO.name,
                "local_addresses",
                format!(
                    "the addresses of the node's and pods' network namespaces cannot be read ({why}): connections \
                     to them are counted as peer=\"remote\"; {}",
                    ebpf::grant(&["CAP_SYS_PTRACE"])
                ),
            ),
            None => health.clear(INFO.name, "local_addresses"),
        }
        self.local_addrs_refreshed = Some(Instant::now());
    }
}

impl Folding {
    /// Decides, once per scrape, the series and fate of every key.
    fn resolve(&mut self, discovery: &dyn Names, triples: &HashSet<Triple>) -> HashMap<Triple, (Series, Fate, u64)> {
        let mut out = HashMap::with_capacity(triples.len());
        for &tr in triples {
            let (cgroup, peer_cgroup, class) = tr;
            let own = discovery.lookup(cgroup);
            let decided = match own.workload() {
                Some(w) => {
                    let peer = (class == t::PEER_CGROUP).then(|| discovery.lookup(peer_cgroup));
                    match peer {
                        Some(Lookup::Unknown) => {
                            let series =
                                self.resolved.remove(&tr).unwrap_or_else(|| Series::new(w, peer_label(w, class, None)));
                            (series, Fate::Fold, cgroup)
                        }
                        peer => {
                            let series = Series::new(
                                w,
                                peer_label(w, class, peer.as_ref().and_then(|p| p.workload()).map(|a| a.as_ref())),
                            );
                            self.resolved.insert(tr, series.clone());
                            (series, Fate::Keep, cgroup)
                        }
                    }
                }
                None => match self.resolved.remove(&tr) {
                    Some(series) => (series, Fate::Drop, cgroup),
                    None => {
                        // Gone before we ever named it: it counts for the node.
                        let node = Workload::node();
                        (Series::new(&node, peer_label(&node, class, None)), Fate::Fold, 0)
                    }
                },
            };
            out.insert(tr, decided);
        }
        out
    }

    /// `redirected`: bytes of closed connections that went by socket
    /// redirect (the sockops collector's table, when it runs), which TCP's
    /// own counters never saw: added to `sent_bytes` / `received_bytes` of
    /// the same keys.
    fn collect(
        &mut self,
        discovery: &dyn Names,
        mut redirected: Option<&mut (dyn SummedTable<SocketKey, SocketCounters> + 'static)>,
        out: &mut MetricSet,
    ) -> anyhow::Result<()> {
        let counters = self.counters.entries()?;
        let hists = self.histograms.entries()?;
        let extra = match redirected.as_deref() {
            Some(t) => t.entries().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the sockops collector's redirected bytes");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let triples: HashSet<Triple> =
            counters.iter().chain(&extra).map(|(k, _)| triple(k)).chain(hists.iter().map(|(k, _)| triple(k))).collect();
        let fates = self.resolve(discovery, &triples);

        let mut series_counters: HashMap<Series, SocketCounters> = HashMap::new();
        for (from_redirect, (key, value)) in
            counters.iter().map(|kv| (false, kv)).chain(extra.iter().map(|kv| (true, kv)))
        {
            let (series, fate, owner) = &fates[&triple(key)];
            let table: &mut dyn SummedTable<SocketKey, SocketCounters> =
                match (from_redirect, redirected.as_deref_mut()) {
                    (true, Some(t)) => t,
                    _ => self.counters.as_mut(),
                };
            match fate {
                Fate::Keep => series_counters.entry(series.clone()).or_default().merge(value),
                Fate::Fold => {
                    self.carry_counters
                        .entry(series.clone())
                        .or_insert_with(|| Carried { owner: *owner, value: SocketCounters::default() })
                        .value
                        .merge(value);
                    table.remove(key);
                }
                Fate::Drop => table.remove(key),
            }
        }
        let mut series_hists: HashMap<(Series, u8), Log2Hist> = HashMap::new();
        for (key, value) in &hists {
            let (series, fate, owner) = &fates[&triple(key)];
            let sk = (series.clone(), key.hist_kind);
            match fate {
                Fate::Keep => series_hists.entry(sk).or_default().merge(value),
                Fate::Fold => {
                    self.carry_hists
                        .entry(sk)
                        .or_insert_with(|| Carried { owner: *owner, value: Log2Hist::default() })
                        .value
                        .merge(value);
                    self.histograms.remove(key);
                }
                Fate::Drop => {
                    self.histograms.remove(key);
                }
            }
        }

        // Carried values: served while their owner lives, forgotten after.
        let expired = |owner: u64| owner != 0 && matches!(discovery.lookup(owner), Lookup::Unknown);
        self.carry_counters.retain(|_, c| !expired(c.owner));
        self.carry_hists.retain(|_, c| !expired(c.owner));
        for (series, c) in &self.carry_counters {
            series_counters.entry(series.clone()).or_default().merge(&c.value);
        }
        for (sk, c) in &self.carry_hists {
            series_hists.entry(sk.clone()).or_default().merge(&c.value);
        }

        emit(out, &series_counters, &series_hists);
        Ok(())
    }
}

fn emit(out: &mut MetricSet, counters: &HashMap<Series, SocketCounters>, hists: &HashMap<(Series, u8), Log2Hist>) {
    for d in [
        &CONNECTS,
        &CONNECT_FAILURES,
        &ACCEPTS,
        &CONNECT_DURATION,
        &ACCEPT_WAIT,
        &CONNECTION_DURATION,
        &SENT_BYTES,
        &RECEIVED_BYTES,
        &RETRANSMITS,
        &RESETS,
    ] {
        out.declare(d);
    }
    for (s, c) in counters {
        if s.peer.is_empty() {
            let labels = s.labels(false);
            out.counter(&RETRANSMITS, labels.clone(), c.retransmits as f64);
            let mut sent = labels.clone();
            sent.push(("direction", "sent".into()));
            out.counter(&RESETS, sent, c.resets_sent as f64);
            let mut received = labels;
            received.push(("direction", "received".into()));
            out.counter(&RESETS, received, c.resets_received as f64);
        } else {
            let labels = s.labels(true);
            out.counter(&CONNECTS, labels.clone(), c.connects as f64);
            out.counter(&CONNECT_FAILURES, labels.clone(), c.connect_failures as f64);
            out.counter(&ACCEPTS, labels.clone(), c.accepts as f64);
            out.counter(&SENT_BYTES, labels.clone(), c.sent_bytes as f64);
            out.counter(&RECEIVED_BYTES, labels, c.received_bytes as f64);
        }
    }
    for ((s, kind), h) in hists {
        match *kind {
            t::HIST_CONNECT => out.histogram(&CONNECT_DURATION, s.labels(true), Log2Buckets::HANDSHAKE.fold(h)),
            t::HIST_ACCEPT_WAIT => out.histogram(&ACCEPT_WAIT, s.labels(false), Log2Buckets::HANDSHAKE.fold(h)),
            t::HIST_LIFETIME_OUTBOUND | t::HIST_LIFETIME_INBOUND => {
                let mut labels = s.labels(true);
                let dir = if *kind == t::HIST_LIFETIME_OUTBOUND { "outbound" } else { "inbound" };
                labels.push(("direction", dir.into()));
                out.histogram(&CONNECTION_DURATION, labels, Log2Buckets::LIFETIME.fold(h));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_container(pod: &str, container: &str, role: Role) -> Workload {
        Workload { pod: pod.into(), container: container.into(), role, pod_uid: Some(pod.into()), ..Workload::node() }
    }

    #[test]
    fn peer_labels() {
        let envoy = pod_container("p1", "envoy", Role::Sidecar);
        let nginx = pod_container("p1", "nginx", Role::App);
        let other = pod_container("p2", "x", Role::App);
        let pod_level = Workload { container: String::new(), role: Role::None, ..pod_container("p1", "", Role::None) };
        let host = Workload::node();

        assert_eq!(peer_label(&envoy, t::PEER_CGROUP, Some(&nginx)), "app");
        assert_eq!(peer_label(&nginx, t::PEER_CGROUP, Some(&envoy)), "sidecar");
        assert_eq!(peer_label(&nginx, t::PEER_CGROUP, Some(&pod_level)), "pod");
        assert_eq!(peer_label(&nginx, t::PEER_CGROUP, Some(&other)), "node");
        assert_eq!(peer_label(&nginx, t::PEER_CGROUP, Some(&host)), "node");
        assert_eq!(peer_label(&nginx, t::PEER_CGROUP, None), "node");
        assert_eq!(peer_label(&host, t::PEER_CGROUP, Some(&host)), "node", "host processes are never one pod");
        assert_eq!(peer_label(&nginx, t::PEER_SAME_NETNS, None), "pod");
        assert_eq!(peer_label(&host, t::PEER_SAME_NETNS, None), "node");
        assert_eq!(peer_label(&nginx, t::PEER_NODE, None), "node");
        assert_eq!(peer_label(&nginx, t::PEER_REMOTE, None), "remote");
        assert_eq!(peer_label(&nginx, t::PEER_NONE, None), "");
    }

    // ---- folding on fixture maps (no root, no kernel) ----

    use crate::fold::{FixtureNames, FixtureTable};
    use crate::metrics::Value;

    const ENVOY: u64 = 10;
    const NGINX: u64 = 11;
    const REPLACED: u64 = 12;

    fn key(cgroup: u64, peer: u64, class: u8, hist: u8) -> SocketKey {
        SocketKey { cgroup_id: cgroup, peer_cgroup_id: peer, peer_class: class, hist_kind: hist, pad: [0; 6] }
    }

    fn names() -> FixtureNames {
        FixtureNames::default()
            .live(ENVOY, pod_container("p1", "envoy", Role::Sidecar))
            .live(NGINX, pod_container("p1", "nginx", Role::App))
            .live(REPLACED, pod_container("p1", "old-nginx", Role::App))
    }

    fn counter(set: &MetricSet, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match set.get(name, labels) {
            Some(Value::Counter(v)) => Some(*v),
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    fn folding(counters: Vec<(SocketKey, SocketCounters)>, hists: Vec<(SocketKey, Log2Hist)>) -> Folding {
        Folding::new(
            Box::new(FixtureTable { entries: counters, removed: vec![] }),
            Box::new(FixtureTable { entries: hists, removed: vec![] }),
        )
    }

    #[test]
    fn fixture_maps_fold_into_labelled_series() {
        let mut hist = Log2Hist::default();
        hist.slots[20] = 3; // ~1 ms
        hist.sum_ns = 3 << 20;
        let mut f = folding(
            vec![
                (
                    key(ENVOY, NGINX, t::PEER_CGROUP, 0),
                    SocketCounters { connects: 5, sent_bytes: 500, ..Default::default() },
                ),
                (key(NGINX, ENVOY, t::PEER_CGROUP, 0), SocketCounters { accepts: 5, ..Default::default() }),
                (key(ENVOY, 0, t::PEER_REMOTE, 0), SocketCounters { accepts: 7, ..Default::default() }),
                (
                    key(ENVOY, 0, t::PEER_NONE, 0),
                    SocketCounters { retransmits: 3, resets_sent: 1, ..Default::default() },
                ),
            ],
            vec![(key(ENVOY, NGINX, t::PEER_CGROUP, t::HIST_CONNECT), hist)],
        );
        let mut out = MetricSet::new();
        f.collect(&names(), None, &mut out).unwrap();
        let envoy = [("pod", "p1"), ("container", "envoy"), ("role", "sidecar")];
        let with = |extra: (&'static str, &'static str)| {
            let mut l = envoy.to_vec();
            l.push(extra);
            l
        };
        assert_eq!(counter(&out, "pmoas_tcp_connects_total", &with(("peer", "app"))), Some(5.0));
        assert_eq!(counter(&out, "pmoas_tcp_sent_bytes_total", &with(("peer", "app"))), Some(500.0));
        assert_eq!(counter(&out, "pmoas_tcp_accepts_total", &with(("peer", "remote"))), Some(7.0));
        assert_eq!(
            counter(&out, "pmoas_tcp_accepts_total", &[("container", "nginx"), ("role", "app"), ("peer", "sidecar")]),
            Some(5.0)
        );
        assert_eq!(counter(&out, "pmoas_tcp_retransmits_total", &envoy), Some(3.0));
        assert_eq!(counter(&out, "pmoas_tcp_resets_total", &with(("direction", "sent"))), Some(1.0));
        match out.get("pmoas_tcp_connect_duration_seconds", &with(("peer", "app"))) {
            Some(Value::Histogram(h)) => assert_eq!(h.count, 3),
            other => panic!("connect histogram: {other:?}"),
        }
    }

    #[test]
    fn a_gone_peer_is_carried_and_a_gone_owner_dropped() {
        let c = |n| SocketCounters { connects: n, ..Default::default() };
        let mut f = folding(vec![(key(ENVOY, REPLACED, t::PEER_CGROUP, 0), c(4))], vec![]);
        let envoy_to_app = [("container", "envoy"), ("peer", "app")];
        let mut out = MetricSet::new();
        f.collect(&names(), None, &mut out).unwrap();
        assert_eq!(counter(&out, "pmoas_tcp_connects_total", &envoy_to_app), Some(4.0));

        // The peer container is replaced: its key leaves the kernel map, and
        // the count stays under the labels it had (never goes backwards).
        let without_peer = FixtureNames::default()
            .live(ENVOY, pod_container("p1", "envoy", Role::Sidecar))
            .live(NGINX, pod_container("p1", "nginx", Role::App));
        let mut out = MetricSet::new();
        f.collect(&without_peer, None, &mut out).unwrap();
        assert_eq!(counter(&out, "pmoas_tcp_connects_total", &envoy_to_app), Some(4.0));
        assert!(f.counters.entries().unwrap().is_empty(), "the folded key was removed from the kernel map");

        // The owner itself is gone past its grace period: everything goes.
        let mut out = MetricSet::new();
        f.collect(&FixtureNames::default(), None, &mut out).unwrap();
        assert_eq!(out.get("pmoas_tcp_connects_total", &envoy_to_app), None);
    }

    #[test]
    fn bytes_that_went_by_redirect_are_added_to_the_same_series() {
        let tcp = SocketCounters { accepts: 1, sent_bytes: 10, received_bytes: 20, ..Default::default() };
        let mut f = folding(vec![(key(NGINX, ENVOY, t::PEER_CGROUP, 0), tcp)], vec![]);
        let by_redirect = SocketCounters { sent_bytes: 1000, received_bytes: 2000, ..Default::default() };
        let mut redirected: FixtureTable<SocketKey, SocketCounters> = FixtureTable {
            entries: vec![
                (key(NGINX, ENVOY, t::PEER_CGROUP, 0), by_redirect),
                (key(ENVOY, NGINX, t::PEER_CGROUP, 0), by_redirect),
                (key(ENVOY, REPLACED, t::PEER_CGROUP, 0), by_redirect),
            ],
            removed: vec![],
        };
        let mut out = MetricSet::new();
        f.collect(&names(), Some(&mut redirected), &mut out).unwrap();
        let app = [("container", "nginx"), ("peer", "sidecar")];
        assert_eq!(counter(&out, "pmoas_tcp_sent_bytes_total", &app), Some(1010.0));
        assert_eq!(counter(&out, "pmoas_tcp_received_bytes_total", &app), Some(2020.0));
        assert_eq!(counter(&out, "pmoas_tcp_accepts_total", &app), Some(1.0));
        let sidecar = [("container", "envoy"), ("peer", "app")];
        assert_eq!(counter(&out, "pmoas_tcp_sent_bytes_total", &sidecar), Some(2000.0), "a key only sockops has");

        // The peer container is replaced: the redirect table's key is folded
        // like the socket collector's own, removed from its own table.
        let without_replaced = FixtureNames::default()
            .live(ENVOY, pod_container("p1", "envoy", Role::Sidecar))
            .live(NGINX, pod_container("p1", "nginx", Role::App));
        let mut out = MetricSet::new();
        f.collect(&without_replaced, Some(&mut redirected), &mut out).unwrap();
        assert_eq!(redirected.removed, vec![key(ENVOY, REPLACED, t::PEER_CGROUP, 0)]);
        assert_eq!(counter(&out, "pmoas_tcp_sent_bytes_total", &sidecar), Some(2000.0), "carried, not lost");
        assert!(f.counters.entries().unwrap().len() == 1, "the socket collector's own key stays");
    }
}
