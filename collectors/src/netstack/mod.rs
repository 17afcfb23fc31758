//! netstack collector, user side: a sampled packet's path through the kernel
//! network stack of each pod (`pmoas_netstack_stage_latency_seconds`), every
//! packet drop with the kernel's reason (`pmoas_netstack_packet_drops_total`)
//! and smoothed TCP RTT per container and peer (`pmoas_tcp_rtt_seconds`).
//!
//! Kernel side: `bpf-programs/src/netstack.bpf.c`, contract in
//! `bpf-programs/include/pmoas_netstack.h`. Stages and drops are keyed in the
//! kernel by network namespace inode: this module names each pod's namespace
//! through discovery (a process of the pod, `/proc/<pid>/ns/net`); the host's
//! own namespace is the node (`pod=""`). RTT is keyed by the socket's cgroup
//! and peer like the socket collector's series. How it works and what it
//! cannot see: docs/netstack.md.

pub mod btf;
pub mod journey;
pub mod windows;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use pmoas_bpf::netstack::{self as n, Cpu, DropKey, Pkt, PktKey, RttKey, Sampler, StageKey};
use pmoas_bpf::types::{self as t, Log2Hist};
use pmoas_discovery::{Discovery, Workload, netns};
use serde::{Deserialize, Serialize};

use crate::ebpf::{self, EVENTS_LOST, Hook, Kernel, ProgramSpec, ProgramStatus};
use crate::histogram::Log2Buckets;
use crate::metrics::{Desc, Labels, MetricSet, WorkloadLabels};
use crate::setting::{self, Setting};
use crate::socket::peer_label;
use crate::{BuildContext, BuildError, Collector, CollectorInfo, CollectorSpec};

pub const INFO: CollectorInfo = CollectorInfo {
    name: "netstack",
    help: "A sampled packet's path through each pod's network stack (stage latency), drops with the kernel's \
           reason, smoothed TCP RTT per peer (tracepoints)",
    default_enabled: false,
};

pub const STAGE_LATENCY: Desc = Desc::histogram(
    "pmoas_netstack_stage_latency_seconds",
    "Time a sampled packet took from the previous stage of the kernel network stack to `stage`, per pod network \
     namespace; direction=ingress or egress.",
);
pub const PACKET_DROPS: Desc = Desc::counter(
    "pmoas_netstack_packet_drops_total",
    "Packets the kernel dropped (kfree_skb), per pod network namespace and the kernel's drop reason.",
);
pub const FOLLOWED_PACKETS: Desc = Desc::counter(
    "pmoas_netstack_followed_packets_total",
    "Packets the netstack collector followed, by how their path ended: outcome=finished (a last stage, or a known \
     end: a pure ACK at tcp_receive, consumed, dropped, closed unread) or left_path (the path left the traced hooks \
     unseen; taken out at the end of a sampling window, or found when the skb's address came back).",
);
pub const TCP_RTT: Desc = Desc::histogram(
    "pmoas_tcp_rtt_seconds",
    "Smoothed TCP round-trip time, sampled on received segments, by the socket's workload and peer.",
);

/// Stage latencies: 128 ns .. 134 ms, x2 (a loopback hop takes a few us).
pub const STAGE_BUCKETS: Log2Buckets = Log2Buckets { first: 7, last: 27, step: 1 };
/// RTT: 1 us .. 4.3 s, x2 (srtt has microsecond resolution).
pub const RTT_BUCKETS: Log2Buckets = Log2Buckets { first: 10, last: 32, step: 1 };

/// A namespace that no pod and not the host owns is kept this long before
/// its kernel keys go (a pod discovery has not named yet shows up in time).
const UNKNOWN_NETNS_TTL: Duration = Duration::from_secs(600);

/// 1 in 64: at the ~100k packets/s seen through Envoy on two cores this
/// follows ~1.5k packets/s, and the unsampled ones cost one map lookup per
/// hook (docs/netstack.md has the measurement).
pub const DEFAULT_SAMPLE_RATE: u32 = 64;

/// 1 in 6,400 packets (1 in 100 followed ones at the default sampling):
/// ~15 traces/s at the ~100k packets/s seen through Envoy here.
pub const DEFAULT_TRACE_SAMPLE_RATE: u32 = 6400;

/// How often the journeys' ring buffer is drained.
const JOURNEY_DRAIN: Duration = Duration::from_millis(100);

/// Settings of the netstack collector (`[collector.netstack]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetstackConfig {
    /// Run this collector (`true`), or not (`false`) whatever the defaults
    /// and the collector list say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Follow 1 in this many packets through the stages, and their RTT
    /// samples, by attaching the stage programs 1/N of the time, in windows
    /// (`windows.rs`). Drops are always counted, every one.
    pub sample_rate: u32,
    /// Sampled packets followed at once (kernel LRU map size); beyond it
    /// the oldest go, counted as `packet_map_evicted`.
    pub max_tracked_packets: u32,
    /// (namespace, direction, stage), (namespace, reason) and (workload,
    /// peer) series in the kernel's maps.
    pub max_series: u32,
    /// With `--otlp.endpoint`: 1 in this many packets becomes a trace (its
    /// journey, a span per stage). Taken from the followed packets, so at
    /// most every followed one (`sample_rate`).
    pub trace_sample_rate: u32,
}

impl Default for NetstackConfig {
    fn default() -> Self {
        NetstackConfig {
            enabled: None,
            sample_rate: DEFAULT_SAMPLE_RATE,
            max_tracked_packets: n::PACKET_MAP_SIZE,
            max_series: n::STAGE_MAP_SIZE,
            trace_sample_rate: DEFAULT_TRACE_SAMPLE_RATE,
        }
    }
}

/// The `[collector.netstack]` section.
pub type Config = NetstackConfig;

/// Flags, variables and bounds of [`NetstackConfig`].
pub const SETTINGS: &[Setting] = &[
    Setting::count(
        "collector.netstack.sample_rate",
        1,
        1 << 20,
        "Follow 1 in N packets through the stack's stages, RTT samples too, by attaching the stage programs 1/N of the time in ~20 ms windows (1: always; drops: all counted)",
    ),
    Setting::count(
        "collector.netstack.max_tracked_packets",
        8,
        setting::MAX_MAP_ENTRIES,
        "Sampled packets followed at once (kernel LRU map); beyond it the oldest are evicted (and counted)",
    ),
    Setting::count(
        "collector.netstack.max_series",
        64,
        setting::MAX_MAP_ENTRIES,
        "(namespace, stage), (namespace, drop reason) and (workload, peer) series in the kernel's maps",
    ),
    Setting::count(
        "collector.netstack.trace_sample_rate",
        1,
        1 << 30,
        "With --otlp.endpoint, 1 in N packets becomes a trace (a span per stage); taken from the followed packets, so at most 1 in sample-rate",
    ),
];

pub const LOST_REASONS: &[&str] = &n::LOST_REASONS;

/// The reason user space adds (an LRU map evicts without telling).
pub const EVICTED_REASON: &str = "packet_map_evicted";

/// Journeys not sent because nobody is known to own their namespace (yet),
/// or it is outside the target selection: counted, never sent pod-less.
pub const UNNAMED_REASON: &str = "journey_namespace_unnamed";

pub const SPEC: CollectorSpec = CollectorSpec {
    info: INFO,
    object: pmoas_bpf::NETSTACK,
    settings: SETTINGS,
    programs: PROGRAMS,
    lost_reasons: LOST_REASONS,
    build: |ctx| Ok(Arc::new(NetstackCollector::new(ctx)?)),
};

const fn btf(program: &'static str, name: &'static str, feature: &'static str) -> ProgramSpec {
    ProgramSpec { program, hook: Hook::BtfTracePoint { name }, fallback_for: None, feature }
}

/// The programs of netstack.bpf.c, in attach order.
pub const PROGRAMS: &[ProgramSpec] = &[
    btf("netstack_rx", "netif_receive_skb", "ingress_stages"),
    btf("netstack_tcp_rcv", "tcp_probe", "ingress_stages"),
    btf("netstack_data_ready", "sk_data_ready", "ingress_stages"),
    btf("netstack_app_read", "skb_copy_datagram_iovec", "ingress_stages"),
    btf("netstack_app_send", "tcp_sendmsg_locked", "egress_stages"),
    btf("netstack_dev_queue", "net_dev_queue", "egress_stages"),
    btf("netstack_dev_start_xmit", "net_dev_start_xmit", "egress_stages"),
    btf("netstack_dev_xmit", "net_dev_xmit", "egress_stages"),
    btf("netstack_consume", "consume_skb", "ingress_stages"),
    btf("netstack_drop", "kfree_skb", "drops"),
    btf("netstack_state", "inet_sock_set_state", "rtt"),
];

/// Who a network namespace belongs to, for [`fold_netns`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsOwner {
    Pod {
        namespace: String,
        pod: String,
    },
    /// The host's own namespace.
    Node,
    /// Not named (yet), or outside the target selection: kept, not served.
    Hidden,
    /// A pod gone past the grace period, or a namespace unknown for too
    /// long: its keys go.
    Gone,
}

/// `namespace, pod, direction, stage`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StageSeries {
    pub namespace: String,
    pub pod: String,
    pub direction: &'static str,
    pub stage: &'static str,
}

/// `namespace, pod, reason`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DropSeries {
    pub namespace: String,
    pub pod: String,
    pub reason: String,
}

/// Kernel maps folded into series, and the keys to delete.
#[derive(Debug, Default)]
pub struct NetnsFold {
    pub stages: BTreeMap<StageSeries, Log2Hist>,
    pub drops: BTreeMap<DropSeries, u64>,
    pub delete_stages: Vec<StageKey>,
    pub delete_drops: Vec<DropKey>,
}

fn direction_label(d: u32) -> Option<&'static str> {
    match d {
        n::DIR_INGRESS => Some("ingress"),
        n::DIR_EGRESS => Some("egress"),
        _ => None,
    }
}

/// Folds the (CPU-summed) stage histograms and drop counters, keyed by
/// netns inode, into series: `owner` names a namespace, `reason` a drop
/// reason number. Several namespaces of one pod (a pod re-created with the
/// same name) add up.
pub fn fold_netns(
    stages: Vec<(StageKey, Log2Hist)>,
    drops: Vec<(DropKey, u64)>,
    mut owner: impl FnMut(u64) -> NetnsOwner,
    reason: impl Fn(u32) -> String,
) -> NetnsFold {
    let mut out = NetnsFold::default();
    let mut owners: HashMap<u64, NetnsOwner> = HashMap::new();
    let mut owner_of = |ns: u64| owners.entry(ns).or_insert_with(|| owner(ns)).clone();
    for (key, hist) in stages {
        let (namespace, pod) = match owner_of(key.netns) {
            NetnsOwner::Pod { namespace, pod } => (namespace, pod),
            NetnsOwner::Node => (String::new(), String::new()),
            NetnsOwner::Hidden => continue,
            NetnsOwner::Gone => {
                out.delete_stages.push(key);
                continue;
            }
        };
        let (Some(direction), Some(stage)) = (direction_label(key.direction), n::STAGE_NAMES.get(key.stage as usize))
        else {
            continue;
        };
        out.stages.entry(StageSeries { namespace, pod, direction, stage }).or_default().merge(&hist);
    }
    for (key, count) in drops {
        let (namespace, pod) = match owner_of(key.netns) {
            NetnsOwner::Pod { namespace, pod } => (namespace, pod),
            NetnsOwner::Node => (String::new(), String::new()),
            NetnsOwner::Hidden => continue,
            NetnsOwner::Gone => {
                out.delete_drops.push(key);
                continue;
            }
        };
        *out.drops.entry(DropSeries { namespace, pod, reason: reason(key.reason) }).or_default() += count;
    }
    out
}

/// RTT histograms folded into (workload, peer) series.
#[derive(Debug, Default)]
pub struct RttFold {
    pub series: BTreeMap<(WorkloadLabels, &'static str), Log2Hist>,
    pub delete: Vec<RttKey>,
}

type Triple = (u64, u64, u8);

/// Folds the RTT histograms: `lookup` names a cgroup (None: gone past the
/// grace period, or never named). A key whose own workload is gone is
/// deleted; one whose peer is gone keeps the peer label it last had (in
/// `remembered`), so a series does not move when a peer container goes.
pub fn fold_rtt(
    rtt: Vec<(RttKey, Log2Hist)>,
    lookup: impl Fn(u64) -> Option<Arc<Workload>>,
    remembered: &mut HashMap<Triple, &'static str>,
) -> RttFold {
    let mut out = RttFold::default();
    for (key, hist) in rtt {
        let tr = (key.cgroup_id, key.peer_cgroup_id, key.peer_class);
        let Some(own) = lookup(key.cgroup_id) else {
            remembered.remove(&tr);
            out.delete.push(key);
            continue;
        };
        let peer = if key.peer_class == t::PEER_CGROUP {
            match lookup(key.peer_cgroup_id) {
                Some(p) => peer_label(&own, key.peer_class, Some(&p)),
                None => remembered.get(&tr).copied().unwrap_or_else(|| peer_label(&own, key.peer_class, None)),
            }
        } else {
            peer_label(&own, key.peer_class, None)
        };
        remembered.insert(tr, peer);
        out.series.entry((WorkloadLabels::of(&own), peer)).or_default().merge(&hist);
    }
    out
}

/// A pod network namespace discovery named.
#[derive(Clone, Debug)]
struct PodNetns {
    uid: String,
    namespace: String,
    pod: String,
}

struct Inner {
    stages: PerCpuHashMap<MapData, StageKey, Log2Hist>,
    drops: PerCpuHashMap<MapData, DropKey, u64>,
    rtt: PerCpuHashMap<MapData, RttKey, Log2Hist>,
    packets: BpfHashMap<MapData, PktKey, Pkt>,
    packet_stats: PerCpuArray<MapData, u64>,
    sends: BpfHashMap<MapData, u64, Pkt>,
    queued: BpfHashMap<MapData, u64, u64>,
    filter: Array<MapData, [u64; n::FILTER_WAYS]>,
    filter_busy: Array<MapData, [u64; n::FILTER_SETS / 64]>,
    reasons: HashMap<u32, String>,
    names: Namespaces,
    /// Journeys not sent: their namespace was not named (yet) or is
    /// outside the target selection (the journey thread counts).
    journeys_unnamed: Arc<AtomicU64>,
    /// Namespaces seen in the maps that no one owns, since when.
    unknown_since: HashMap<u64, Instant>,
    remembered: HashMap<Triple, &'static str>,
    /// Highest lower bound of LRU evictions computed so far.
    evicted: u64,
    /// Followed packets (and sends) still on their way when their window
    /// closed and [`windows::DRAIN`] passed: their path left the traced
    /// hooks unseen; taken out of the maps, counted as `left_path`.
    unfinished_packets: u64,
    unfinished_sends: u64,
}

pub struct NetstackCollector {
    // Field order: `inner` (the maps) drops before `kernel` detaches programs.
    inner: Arc<Mutex<Inner>>,
    kernel: Arc<Kernel>,
    discovery: Arc<Discovery>,
    /// Set to stop the journey thread (with OTLP only).
    journeys: Option<Arc<AtomicBool>>,
    /// Dropped to stop the sampling windows (sample rate above 1).
    _windows: Option<std::sync::mpsc::Sender<()>>,
}

impl Drop for NetstackCollector {
    fn drop(&mut self) {
        if let Some(stop) = &self.journeys {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Drains the journeys' ring buffer into the OTLP pipeline until `stop`:
/// each journey one trace, attributed to the pod whose network namespace
/// it crossed (the node's own namespace: no pod).
fn spawn_journeys(
    mut ring: RingBuf<MapData>,
    discovery: Arc<Discovery>,
    otlp: Arc<pmoas_otlp::Pipeline>,
    stop: Arc<AtomicBool>,
    unnamed: Arc<AtomicU64>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("netstack-journeys".into()).spawn(move || {
        let mut names = Namespaces::default();
        let mut named: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let clock = journey::Clock::now();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                batch.extend(n::Journey::from_bytes(&item));
            }
            let stale = named.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            let unknown = batch.iter().any(|j| names.owner(j.netns).is_none());
            if !batch.is_empty() && (stale || (unknown && named.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))))
            {
                names.refresh(&discovery);
                named = Some(Instant::now());
            }
            for j in &batch {
                // Like the series: a namespace not named yet, or outside
                // the selection, is not shown with wrong (pod-less) labels.
                let pod = match names.owner(j.netns) {
                    Some(NetnsOwner::Node) => None,
                    Some(NetnsOwner::Pod { .. }) => names.pods.get(&j.netns).map(|p| pmoas_otlp::Pod {
                        namespace: p.namespace.clone(),
                        name: p.pod.clone(),
                        uid: p.uid.clone(),
                        container: None,
                    }),
                    _ => {
                        unnamed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if let Some(trace) = journey::to_trace(j, pod, &clock) {
                    otlp.submit(trace);
                }
            }
            std::thread::sleep(JOURNEY_DRAIN);
        }
    })?;
    Ok(())
}

/// Who owns each network namespace, as far as discovery knows now: the
/// same answer for the served series and for the journeys.
#[derive(Default)]
struct Namespaces {
    pods: HashMap<u64, PodNetns>,
    /// The node's own namespace (PID 1's, or this process's).
    host: Option<u64>,
    /// Under a target selection: which pods (by UID) are watched.
    selected: Option<HashMap<String, bool>>,
}

impl Namespaces {
    /// Names each live pod's network namespace through one of its
    /// processes; pods gone past the grace period leave.
    fn refresh(&mut self, discovery: &Discovery) {
        let procfs = discovery.procfs();
        let mut known: HashMap<String, (String, String)> = HashMap::new();
        let mut selected = HashMap::new();
        for k in discovery.cgroups() {
            if let Some(uid) = &k.workload.pod_uid {
                known.entry(uid.clone()).or_insert_with(|| (k.workload.namespace.clone(), k.workload.pod.clone()));
                selected.insert(uid.clone(), k.workload.selected);
            }
        }
        // A pod whose namespace cannot be named has its series under
        // pod="" (the node's): say so, as a degraded feature, while it lasts.
        let (mut denied, mut named) = (None, false);
        for (uid, pid) in discovery.pod_pids() {
            let Some((namespace, pod)) = known.get(&uid) else { continue };
            match netns::inode(procfs, pid) {
                Ok(ns) => {
                    named = true;
                    self.pods.insert(ns, PodNetns { uid, namespace: namespace.clone(), pod: pod.clone() });
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied = Some((pid, e)),
                Err(_) => {} // the process ended: another of the pod's names it next time
            }
        }
        let health = discovery.health();
        match denied {
            Some((pid, e)) => health.raise(
                INFO.name,
                "pod_network_namespaces",
                format!(
                    "pods' network namespaces cannot be named ({}/{pid}/ns/net: {e}); their stage, drop and RTT \
                     series are counted under pod=\"\" instead of their pod; {}",
                    procfs.display(),
                    crate::ebpf::grant(&["CAP_SYS_PTRACE"])
                ),
            ),
            None if named => health.clear(INFO.name, "pod_network_namespaces"),
            None => {}
        }
        self.pods.retain(|_, p| known.contains_key(&p.uid));
        self.host = netns::inode(procfs, 1).or_else(|_| netns::own_inode(procfs)).ok();
        self.selected = discovery.targets_enabled().then_some(selected);
    }

    /// A pod, the node, or hidden (outside the target selection); `None`
    /// for a namespace nobody is known to own (yet).
    fn owner(&self, ns: u64) -> Option<NetnsOwner> {
        let watched = |uid: &str| self.selected.as_ref().is_none_or(|s| s.get(uid).copied().unwrap_or(false));
        match self.pods.get(&ns) {
            Some(p) if !watched(&p.uid) => Some(NetnsOwner::Hidden),
            Some(p) => Some(NetnsOwner::Pod { namespace: p.namespace.clone(), pod: p.pod.clone() }),
            None if Some(ns) == self.host && self.selected.is_some() => Some(NetnsOwner::Hidden),
            None if Some(ns) == self.host => Some(NetnsOwner::Node),
            None => None,
        }
    }
}

impl NetstackCollector {
    pub fn new(ctx: &BuildContext) -> Result<NetstackCollector, BuildError> {
        let cfg = ctx.config.netstack.clone();
        let sizes = [
            ("netstack_packets", cfg.max_tracked_packets),
            ("netstack_sends", cfg.max_tracked_packets),
            ("netstack_stages", cfg.max_series),
            ("netstack_drops", cfg.max_series),
            ("netstack_rtt", cfg.max_series),
        ];
        let kernel = Arc::new(Kernel::load(&SPEC, ctx, &sizes, PROGRAMS, None)?);
        let fail = |message: String| BuildError::Failed { message, programs: kernel.programs().to_vec() };
        let mut per_cpu: PerCpuArray<MapData, Cpu> = kernel.take_map("netstack_cpu")?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| fail(format!("netstack: {what}: {e}")))?;
        // The trace sampler ticks on followed packets only; 0 traces none.
        // 1 in sample-rate packets is followed (by time, windows.rs).
        let trace_rate = if ctx.otlp.is_enabled() { (cfg.trace_sample_rate / cfg.sample_rate).max(1) } else { 0 };
        let state = Cpu { trace: Sampler { rate: trace_rate, tick: 0 }, ..Cpu::default() };
        let values =
            PerCpuValues::try_from(vec![state; cpus]).map_err(|e| fail(format!("netstack per-CPU state: {e}")))?;
        per_cpu.set(0, values, 0).map_err(|e| fail(format!("setting the netstack sample rate: {e}")))?;
        let journeys_unnamed = Arc::new(AtomicU64::new(0));
        let journeys = if trace_rate > 0 {
            let ring = kernel.take_map("netstack_journeys")?;
            let stop = Arc::new(AtomicBool::new(false));
            spawn_journeys(ring, ctx.discovery.clone(), ctx.otlp.clone(), stop.clone(), journeys_unnamed.clone())
                .map_err(|e| fail(format!("starting the netstack journey thread: {e}")))?;
            Some(stop)
        } else {
            None
        };
        // Without names the drops are still counted, as UNKNOWN_<n>.
        let reasons = btf::drop_reasons().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "drop reasons cannot be named; they are exported as UNKNOWN_<number>");
            HashMap::new()
        });
        let inner = Inner {
            stages: kernel.take_map("netstack_stages")?,
            drops: kernel.take_map("netstack_drops")?,
            rtt: kernel.take_map("netstack_rtt")?,
            packets: kernel.take_map("netstack_packets")?,
            packet_stats: kernel.take_map("netstack_packet_stats")?,
            sends: kernel.take_map("netstack_sends")?,
            queued: kernel.take_map("netstack_queued")?,
            filter: kernel.take_map("netstack_filter")?,
            filter_busy: kernel.take_map("netstack_filter_busy")?,
            reasons,
            names: Namespaces::default(),
            journeys_unnamed,
            unknown_since: HashMap::new(),
            remembered: HashMap::new(),
            evicted: 0,
            unfinished_packets: 0,
            unfinished_sends: 0,
        };
        let inner = Arc::new(Mutex::new(inner));
        let windows = match windows::Schedule::for_rate(cfg.sample_rate) {
            Some(schedule) => {
                let (stop, stopped) = std::sync::mpsc::channel();
                windows::spawn(kernel.clone(), inner.clone(), schedule, stopped)
                    .map_err(|e| fail(format!("starting the netstack sampling windows: {e}")))?;
                Some(stop)
            }
            None => None,
        };
        Ok(NetstackCollector { inner, kernel, discovery: ctx.discovery.clone(), journeys, _windows: windows })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for NetstackCollector {
    fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        self.kernel.export_health(out)?;
        self.lock().collect(&self.discovery, out)
    }

    fn programs(&self) -> Vec<ProgramStatus> {
        self.kernel.programs().to_vec()
    }

    fn maps(&self) -> Vec<crate::ebpf::MapUsage> {
        self.kernel.maps()
    }
}

impl Inner {
    /// A lower bound of the LRU's evictions: tracked entries that neither a
    /// program took out nor are still in the map. Counters are read around
    /// the walk so that entries moving meanwhile can only lower it.
    fn count_evicted(&mut self) -> anyhow::Result<u64> {
        let sum = |m: &PerCpuArray<MapData, u64>, i: u32| -> anyhow::Result<u64> { Ok(m.get(&i, 0)?.iter().sum()) };
        let tracked = sum(&self.packet_stats, n::STAT_TRACKED)?;
        let live = self.packets.keys().filter(|k| k.is_ok()).count() as u64;
        let finished = sum(&self.packet_stats, n::STAT_FINISHED)?;
        let replaced = sum(&self.packet_stats, n::STAT_LEFT_PATH)?;
        self.evicted = self.evicted.max(tracked.saturating_sub(finished + replaced + live + self.unfinished_packets));
        Ok(self.evicted)
    }

    /// `pmoas_netstack_followed_packets_total` by outcome.
    fn export_outcomes(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        let sum = |i: u32| -> anyhow::Result<u64> { Ok(self.packet_stats.get(&i, 0)?.iter().sum()) };
        let left = sum(n::STAT_LEFT_PATH)? + self.unfinished_packets + self.unfinished_sends;
        out.declare(&FOLLOWED_PACKETS);
        for (outcome, v) in [("finished", sum(n::STAT_FINISHED)?), ("left_path", left)] {
            out.counter(&FOLLOWED_PACKETS, vec![("outcome", outcome.to_string())], v as f64);
        }
        Ok(())
    }

    /// After a window, with the stage programs detached: takes out what
    /// is still followed (counted), and empties the filter.
    fn clear_left_over(&mut self) -> anyhow::Result<()> {
        let packets: Vec<PktKey> = self.packets.keys().filter_map(Result::ok).collect();
        for key in packets {
            let left = self.packets.get(&key, 0).ok();
            // The drop program, still attached, may take it first.
            if self.packets.remove(&key).is_ok() {
                self.unfinished_packets += 1;
                if let Some(p) = left {
                    tracing::debug!(
                        direction = key.direction,
                        stage = p.stage,
                        netns = p.netns,
                        "netstack: a followed packet left unfinished at the end of its window"
                    );
                }
            }
        }
        let sends: Vec<u64> = self.sends.keys().filter_map(Result::ok).collect();
        for key in sends {
            if self.sends.remove(&key).is_ok() {
                self.unfinished_sends += 1;
            }
        }
        // Sockets whose queued segment was just taken out.
        let queued: Vec<u64> = self.queued.keys().filter_map(Result::ok).collect();
        for key in queued {
            let _ = self.queued.remove(&key);
        }
        for kind in 0..3u32 {
            let busy = self.filter_busy.get(&kind, 0)?;
            for (word, bits) in busy.iter().enumerate() {
                for bit in (0..64).filter(|b| bits & (1u64 << b) != 0) {
                    let set = kind * n::FILTER_SETS as u32 + (word * 64 + bit) as u32;
                    self.filter.set(set, [0; n::FILTER_WAYS], 0)?;
                }
            }
            if busy.iter().any(|w| *w != 0) {
                self.filter_busy.set(kind, [0; n::FILTER_SETS / 64], 0)?;
            }
        }
        Ok(())
    }

    fn collect(&mut self, discovery: &Discovery, out: &mut MetricSet) -> anyhow::Result<()> {
        self.names.refresh(discovery);
        let evicted = self.count_evicted()?;
        self.export_outcomes(out)?;
        for (reason, n) in [(EVICTED_REASON, evicted), (UNNAMED_REASON, self.journeys_unnamed.load(Ordering::Relaxed))]
        {
            out.counter(
                &EVENTS_LOST,
                vec![("collector", INFO.name.to_string()), ("reason", reason.to_string())],
                n as f64,
            );
        }

        let stages = ebpf::read_summed(&self.stages, Log2Hist::merge)?;
        let drops = ebpf::read_summed(&self.drops, |a: &mut u64, b: &u64| *a += *b)?;
        let now = Instant::now();
        let names = &self.names;
        let unknown_since = &mut self.unknown_since;
        let folded = fold_netns(
            stages,
            drops,
            |ns| {
                names.owner(ns).unwrap_or_else(|| {
                    let since = *unknown_since.entry(ns).or_insert(now);
                    if now.duration_since(since) >= UNKNOWN_NETNS_TTL { NetnsOwner::Gone } else { NetnsOwner::Hidden }
                })
            },
            |r| btf::reason_label(&self.reasons, r),
        );
        unknown_since.retain(|ns, _| !names.pods.contains_key(ns) && Some(*ns) != names.host);
        for key in &folded.delete_stages {
            let _ = self.stages.remove(key);
        }
        for key in &folded.delete_drops {
            let _ = self.drops.remove(key);
        }
        for key in folded.delete_stages.iter().map(|k| k.netns).chain(folded.delete_drops.iter().map(|k| k.netns)) {
            unknown_since.remove(&key);
        }

        let rtt = ebpf::read_summed(&self.rtt, Log2Hist::merge)?;
        let rtt = fold_rtt(rtt, |id| discovery.lookup(id).workload().cloned(), &mut self.remembered);
        for key in &rtt.delete {
            let _ = self.rtt.remove(key);
        }

        emit(out, &folded, &rtt);
        Ok(())
    }
}

fn emit(out: &mut MetricSet, netns: &NetnsFold, rtt: &RttFold) {
    out.declare(&STAGE_LATENCY);
    out.declare(&PACKET_DROPS);
    out.declare(&TCP_RTT);
    for (s, h) in &netns.stages {
        let labels: Labels = vec![
            ("namespace", s.namespace.clone()),
            ("pod", s.pod.clone()),
            ("direction", s.direction.to_string()),
            ("stage", s.stage.to_string()),
        ];
        out.histogram(&STAGE_LATENCY, labels, STAGE_BUCKETS.fold(h));
    }
    for (s, count) in &netns.drops {
        let labels: Labels =
            vec![("namespace", s.namespace.clone()), ("pod", s.pod.clone()), ("reason", s.reason.clone())];
        out.counter(&PACKET_DROPS, labels, *count as f64);
    }
    for ((w, peer), h) in &rtt.series {
        let mut labels = w.labels();
        labels.push(("peer", peer.to_string()));
        out.histogram(&TCP_RTT, labels, RTT_BUCKETS.fold(h));
    }
}

#[cfg(test)]
mod tests {
    use pmoas_discovery::Role;

    use super::*;

    fn hist(ns: &[u64]) -> Log2Hist {
        let mut h = Log2Hist::default();
        for &v in ns {
            h.slots[crate::histogram::slot_of(v)] += 1;
            h.sum_ns += v;
        }
        h
    }

    fn stage(netns: u64, direction: u32, stage: u32) -> StageKey {
        StageKey { netns, direction, stage }
    }

    fn drop(netns: u64, reason: u32) -> DropKey {
        DropKey { netns, reason, pad: 0 }
    }

    fn owners(ns: u64) -> NetnsOwner {
        match ns {
            1 => NetnsOwner::Node,
            10 | 11 => NetnsOwner::Pod { namespace: "default".into(), pod: "web".into() },
            20 => NetnsOwner::Hidden,
            _ => NetnsOwner::Gone,
        }
    }

    #[test]
    fn stages_and_drops_are_named_by_namespace() {
        let names: HashMap<u32, String> = [(12, "NETFILTER_DROP".to_string())].into();
        let folded = fold_netns(
            vec![
                (stage(10, n::DIR_INGRESS, n::STAGE_TCP_RECEIVE), hist(&[3_000, 5_000])),
                // The same pod's earlier namespace adds into the same series.
                (stage(11, n::DIR_INGRESS, n::STAGE_TCP_RECEIVE), hist(&[70_000])),
                (stage(10, n::DIR_EGRESS, n::STAGE_DEV_XMIT), hist(&[900])),
                (stage(1, n::DIR_INGRESS, n::STAGE_APP_READ), hist(&[1_000_000])),
                (stage(20, n::DIR_INGRESS, n::STAGE_APP_READ), hist(&[1])),
                (stage(99, n::DIR_INGRESS, n::STAGE_APP_READ), hist(&[1])),
            ],
            vec![(drop(10, 12), 7), (drop(11, 12), 1), (drop(10, 77), 2), (drop(1, 12), 5), (drop(99, 12), 3)],
            owners,
            |r| btf::reason_label(&names, r),
        );
        let tcp =
            StageSeries { namespace: "default".into(), pod: "web".into(), direction: "ingress", stage: "tcp_receive" };
        assert_eq!(folded.stages[&tcp].count(), 3);
        assert_eq!(folded.stages[&tcp].sum_ns, 78_000);
        let xmit = StageSeries { direction: "egress", stage: "dev_xmit", ..tcp.clone() };
        assert_eq!(folded.stages[&xmit].count(), 1);
        let node =
            StageSeries { namespace: String::new(), pod: String::new(), direction: "ingress", stage: "app_read" };
        assert_eq!(folded.stages[&node].sum_ns, 1_000_000);
        assert_eq!(folded.stages.len(), 3, "hidden and gone namespaces are not served: {:?}", folded.stages);

        let d = |pod: &str, reason: &str| DropSeries {
            namespace: if pod.is_empty() { String::new() } else { "default".into() },
            pod: pod.into(),
            reason: reason.into(),
        };
        assert_eq!(folded.drops[&d("web", "NETFILTER_DROP")], 8);
        assert_eq!(folded.drops[&d("web", "UNKNOWN_77")], 2);
        assert_eq!(folded.drops[&d("", "NETFILTER_DROP")], 5);
        assert_eq!(folded.drops.len(), 3);

        assert_eq!(folded.delete_stages, vec![stage(99, n::DIR_INGRESS, n::STAGE_APP_READ)]);
        assert_eq!(folded.delete_drops, vec![drop(99, 12)]);
    }

    #[test]
    fn unknown_stage_or_direction_is_skipped() {
        let folded =
            fold_netns(vec![(stage(1, 7, 0), hist(&[1])), (stage(1, 0, 99), hist(&[1]))], vec![], owners, |r| {
                r.to_string()
            });
        assert!(folded.stages.is_empty());
    }

    fn w(pod: &str, container: &str, role: Role) -> Arc<Workload> {
        Arc::new(Workload {
            namespace: "default".into(),
            pod: pod.into(),
            container: container.into(),
            role,
            pod_uid: Some(pod.into()),
            ..Workload::node()
        })
    }

    fn rtt_key(cgroup_id: u64, peer_class: u8, peer_cgroup_id: u64) -> RttKey {
        RttKey { cgroup_id, peer_cgroup_id, peer_class, pad: [0; 7] }
    }

    #[test]
    fn rtt_series_carry_their_peer() {
        let envoy = w("p1", "envoy", Role::Sidecar);
        let nginx = w("p1", "nginx", Role::App);
        let live: HashMap<u64, Arc<Workload>> = [(100, envoy.clone()), (101, nginx.clone())].into();
        let mut remembered = HashMap::new();
        let data = vec![
            (rtt_key(100, t::PEER_CGROUP, 101), hist(&[20_000])),
            (rtt_key(101, t::PEER_CGROUP, 100), hist(&[30_000, 40_000])),
            (rtt_key(100, t::PEER_CGROUP, 0), hist(&[1])),
            (rtt_key(100, t::PEER_REMOTE, 0), hist(&[5_000_000])),
            (rtt_key(555, t::PEER_REMOTE, 0), hist(&[1])),
        ];
        let folded = fold_rtt(data.clone(), |id| live.get(&id).cloned(), &mut remembered);
        let envoy_l = WorkloadLabels::of(&envoy);
        let nginx_l = WorkloadLabels::of(&nginx);
        assert_eq!(folded.series[&(envoy_l.clone(), "app")].count(), 1);
        assert_eq!(folded.series[&(nginx_l.clone(), "sidecar")].count(), 2);
        assert_eq!(folded.series[&(envoy_l.clone(), "node")].count(), 1, "peer cgroup 0: the node");
        assert_eq!(folded.series[&(envoy_l.clone(), "remote")].sum_ns, 5_000_000);
        assert_eq!(folded.delete, vec![rtt_key(555, t::PEER_REMOTE, 0)], "own workload gone: deleted");

        // nginx goes: envoy's series towards it keeps peer="app"; nginx's own
        // keys go.
        let live: HashMap<u64, Arc<Workload>> = [(100, envoy.clone())].into();
        let folded = fold_rtt(data, |id| live.get(&id).cloned(), &mut remembered);
        assert_eq!(folded.series[&(envoy_l, "app")].count(), 1);
        assert!(folded.delete.contains(&rtt_key(101, t::PEER_CGROUP, 100)));
    }

    #[test]
    fn buckets_reach_microseconds() {
        let bounds = STAGE_BUCKETS.bounds_seconds();
        assert!(bounds[0] < 1e-6 && bounds.iter().any(|b| (1e-6..1e-5).contains(b)), "{bounds:?}");
        assert!(RTT_BUCKETS.bounds_seconds()[0] <= 1.1e-6);
    }

    #[test]
    fn defaults_are_in_bounds() {
        let c = NetstackConfig::default();
        assert!((1..=1 << 20).contains(&c.sample_rate));
        assert!(c.max_tracked_packets >= 64 && c.max_series >= 64);
        const { assert!(!INFO.default_enabled) };
    }
}
