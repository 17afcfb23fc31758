//! cgroup collector, user side: CPU, memory, OOM kills, block I/O and
//! network per container, sidecar and app side by side, and each pod's
//! interface counters.
//!
//! Kernel side: `bpf-programs/src/cgroup.bpf.c` (network bytes per
//! container through cgroup_skb, block I/O where cgroupfs says nothing, OOM
//! victims). cgroupfs side: [`files`] (which file feeds which metric, v2
//! first, v1 on hybrid hosts) and [`paths`] (a container's v1 directories).
//!
//! Each known container and pod cgroup is read once per scrape, or once
//! per `read_interval` by a thread of its own ([`reader`]), with the
//! sources decided when it was first seen (`pmoas_cgroup_sources` says
//! which); the kernel's counters are read by every scrape. A cgroup that
//! vanishes keeps its last values for the discovery grace period, then its
//! series go. State is bounded by what discovery knows; kernel keys of
//! vanished cgroups are deleted.

pub mod files;
pub mod netdev;
pub mod paths;
pub mod reader;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pmoas_bpf::types::{self as t, CgroupCounters};
use pmoas_discovery::{Discovery, Lookup};
use serde::{Deserialize, Serialize};

use self::files::{Resource, Source, Stats};
use self::reader::{ReadConfig, Reader, Snapshot};
use crate::ebpf::{self, Hook, Kernel, ProgramSpec, ProgramStatus};
use crate::fold::{Names, PerCpuTable, SummedTable};
use crate::metrics::{Desc, Labels, MetricSet, WorkloadLabels, WorkloadRef};
use crate::setting::{self, Setting};
use crate::{BuildContext, BuildError, Collector, CollectorInfo, CollectorSpec};

pub const INFO: CollectorInfo = CollectorInfo {
    name: "cgroup",
    help: "CPU, throttling, memory, OOM kills, block I/O and network per container (network per container \
           even inside a shared pod network namespace), and each pod's interface counters (cgroupfs + cgroup_skb)",
    default_enabled: true,
};

pub const CPU_USAGE: Desc = Desc::counter("pmoas_container_cpu_usage_seconds_total", "CPU time used by the cgroup.");
pub const CPU_THROTTLED: Desc = Desc::counter(
    "pmoas_container_cpu_throttled_seconds_total",
    "Time the cgroup's runnable tasks waited because its CFS quota was used up.",
);
pub const CPU_THROTTLED_PERIODS: Desc =
    Desc::counter("pmoas_container_cpu_throttled_periods_total", "CFS periods in which the cgroup was throttled.");
pub const MEMORY_USAGE: Desc =
    Desc::gauge("pmoas_container_memory_usage_bytes", "Memory charged to the cgroup, page cache included.");
pub const MEMORY_WORKING_SET: Desc = Desc::gauge(
    "pmoas_container_memory_working_set_bytes",
    "Memory usage minus inactive file cache: what the kubelet evicts and OOM-kills by.",
);
pub const MEMORY_RSS: Desc = Desc::gauge("pmoas_container_memory_rss_bytes", "Anonymous memory of the cgroup.");
pub const OOM_KILLS: Desc =
    Desc::counter("pmoas_container_oom_kills_total", "Processes of the cgroup killed by the OOM killer.");
pub const FS_READ: Desc =
    Desc::counter("pmoas_container_fs_read_bytes_total", "Bytes read from block devices by the cgroup.");
pub const FS_WRITE: Desc =
    Desc::counter("pmoas_container_fs_write_bytes_total", "Bytes written to block devices by the cgroup.");
pub const NET_RX: Desc = Desc::counter(
    "pmoas_container_network_receive_bytes_total",
    "Bytes received by the container's sockets (IP header included), per container even inside a shared pod \
     network namespace.",
);
pub const NET_TX: Desc = Desc::counter(
    "pmoas_container_network_transmit_bytes_total",
    "Bytes sent by the container's sockets (IP header included), per container even inside a shared pod network \
     namespace.",
);
pub const NET_RX_PACKETS: Desc =
    Desc::counter("pmoas_container_network_receive_packets_total", "Packets received by the container's sockets.");
pub const NET_TX_PACKETS: Desc =
    Desc::counter("pmoas_container_network_transmit_packets_total", "Packets sent by the container's sockets.");
pub const POD_RX: Desc = Desc::counter(
    "pmoas_pod_network_receive_bytes_total",
    "Bytes received on an interface of the pod's network namespace (as `ip -s link` there).",
);
pub const POD_TX: Desc = Desc::counter(
    "pmoas_pod_network_transmit_bytes_total",
    "Bytes sent on an interface of the pod's network namespace (as `ip -s link` there).",
);
pub const POD_RX_PACKETS: Desc =
    Desc::counter("pmoas_pod_network_receive_packets_total", "Packets received on an interface of the pod.");
pub const POD_TX_PACKETS: Desc =
    Desc::counter("pmoas_pod_network_transmit_packets_total", "Packets sent on an interface of the pod.");
pub const SOURCES: Desc = Desc::gauge(
    "pmoas_cgroup_sources",
    "Known cgroups per resource and the source each is read from (cgroup_v2, cgroup_v1, ebpf, or none: \
     not measurable on this host, so not exported).",
);
pub const READ_ERRORS: Desc = Desc::counter(
    "pmoas_cgroup_read_errors_total",
    "cgroupfs and procfs files of live cgroups and pods that could not be read, by file.",
);
pub const READ_DURATION: Desc = Desc::gauge(
    "pmoas_cgroup_read_duration_seconds",
    "Time the last read of every known cgroup's files and every pod's interface counters took.",
);
pub const READ_TIMESTAMP: Desc = Desc::gauge(
    "pmoas_cgroup_read_timestamp_seconds",
    "Unix time the cgroupfs and interface values served were read: the scrape's own, or with \
     collector.cgroup.read_interval set, the background reader's last read.",
);

/// Settings of the cgroup collector (`[collector.cgroup]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// Run this collector (`true`), or not (`false`) whatever the defaults
    /// and the collector list say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// cgroups with kernel-side counters (network, block I/O, OOM kills),
    /// node-wide. Beyond it new cgroups are not counted, and that is
    /// counted in `pmoas_ebpf_events_lost_total{reason="aggregation_map_full"}`.
    pub max_cgroups: u32,
    /// Count network bytes per container with cgroup_skb programs on the
    /// cgroup v2 root (one short program run per packet of the node).
    pub network_per_container: bool,
    /// 0s: every scrape reads cgroupfs (values as of the scrape). Else a
    /// thread reads it at this interval and scrapes serve its last
    /// reading, at most this old: on a large node the scrape no longer
    /// waits for thousands of files (kernel counters stay live).
    #[serde(with = "humantime_serde")]
    pub read_interval: Duration,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            enabled: None,
            max_cgroups: t::CGROUP_COUNTER_MAP_SIZE,
            network_per_container: true,
            read_interval: Duration::ZERO,
        }
    }
}

/// The programs of cgroup.bpf.c.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "cgroup_skb_ingress",
        hook: Hook::CgroupSkb { ingress: true },
        fallback_for: None,
        feature: "network_per_container",
    },
    ProgramSpec {
        program: "cgroup_skb_egress",
        hook: Hook::CgroupSkb { ingress: false },
        fallback_for: None,
        feature: "network_per_container",
    },
    ProgramSpec {
        program: "cgroup_block_io",
        hook: Hook::BtfTracePoint { name: "block_bio_queue" },
        fallback_for: None,
        feature: "block_io",
    },
    ProgramSpec {
        program: "cgroup_oom_victim",
        hook: Hook::BtfTracePoint { name: "mark_victim" },
        fallback_for: None,
        feature: "oom_kills",
    },
];

/// With `network_per_container = false`: no per-packet program.
const PROGRAMS_WITHOUT_NETWORK: &[ProgramSpec] = &[PROGRAMS[2], PROGRAMS[3]];

/// The `[collector.cgroup]` section.
pub type Config = CgroupConfig;

/// Flags, variables and bounds of [`CgroupConfig`].
pub const SETTINGS: &[Setting] = &[
    Setting::count(
        "collector.cgroup.max_cgroups",
        64,
        setting::MAX_MAP_ENTRIES,
        "cgroups with kernel-side network, block I/O and OOM counters, node-wide; beyond it new cgroups are not counted (and that is counted)",
    ),
    Setting::value(
        "collector.cgroup.network_per_container",
        "BOOL",
        "Count network bytes per container with cgroup_skb programs on the cgroup v2 root (true), or not (false)",
    ),
    Setting::duration(
        "collector.cgroup.read_interval",
        Duration::ZERO,
        Duration::from_secs(3600),
        "0s: each scrape reads cgroupfs; else a background thread reads it this often and scrapes serve its last reading (faster scrapes on large nodes, values up to this old)",
    ),
];

pub const SPEC: CollectorSpec = CollectorSpec {
    info: INFO,
    object: pmoas_bpf::CGROUP,
    settings: SETTINGS,
    programs: PROGRAMS,
    // cgroup.bpf.c counts one reason: a full `cgroup_counters`.
    lost_reasons: &["aggregation_map_full"],
    build: |ctx| Ok(Arc::new(CgroupCollector::new(ctx)?)),
};

/// The kernel side's maps, when its object loaded.
struct KernelMaps {
    counters: Box<dyn SummedTable<u64, CgroupCounters>>,
}

struct Inner {
    kernel: Option<KernelMaps>,
    /// What each kernel key last resolved to (a workload, or the node).
    key_owner: HashMap<u64, WorkloadLabels>,
    /// Counts of vanished cgroups outside any workload, kept in the node's
    /// series so it never goes backwards.
    node_carry: CgroupCounters,
    /// Every series' row, kept from scrape to scrape.
    rows: Rows,
}

pub struct CgroupCollector {
    // Field order: `inner` (the maps) drops before `kernel` detaches programs.
    inner: Mutex<Inner>,
    /// `None` when the object could not be loaded at all (no privileges,
    /// no BTF): the collector then serves what cgroupfs says.
    kernel: Option<Kernel>,
    programs: Vec<ProgramStatus>,
    discovery: Arc<Discovery>,
    reader: Arc<Reader>,
    /// Zero: cgroupfs is read by each scrape. Else by a thread of its own,
    /// which stops when this sender drops with the collector.
    read_interval: Duration,
    _stop_reading: Option<Sender<()>>,
    network: bool,
    block_io: bool,
    oom: bool,
}

impl CgroupCollector {
    pub fn new(ctx: &BuildContext) -> Result<CgroupCollector, BuildError> {
        let fail = |message: String, programs: Vec<ProgramStatus>| BuildError::Failed { message, programs };
        let v2_root = ctx
            .discovery
            .cgroupfs()
            .v2_root()
            .map_err(|e| fail(format!("the cgroup collector names containers by cgroup v2 id: {e}"), vec![]))?
            .to_path_buf();
        let cfg = ctx.config.cgroup.clone();
        let specs = if cfg.network_per_container { PROGRAMS } else { PROGRAMS_WITHOUT_NETWORK };
        let sizes = [("cgroup_counters", cfg.max_cgroups)];
        // cgroupfs alone still gives CPU, throttling, memory, OOM kills and
        // (where it counts) block I/O: without its programs the collector
        // runs on, and pmoas_cgroup_sources says what is missing.
        let loaded = Kernel::load(&SPEC, ctx, &sizes, specs, Some(&v2_root))
            .and_then(|k| Ok((k.take_map("cgroup_counters")?, k)));
        let (kernel, programs) = match loaded {
            Ok((counters, k)) => {
                let programs = k.programs().to_vec();
                let counters = Box::new(PerCpuTable::new(counters, CgroupCounters::merge));
                (Some((KernelMaps { counters }, k)), programs)
            }
            Err(e) => {
                tracing::warn!(
                    collector = INFO.name,
                    error = %e,
                    "no eBPF programs: serving cgroupfs numbers only (no network per container; block I/O only \
                     where cgroupfs counts it)"
                );
                (None, e.programs().to_vec())
            }
        };
        let attached = |name: &str| programs.iter().any(|p| p.program == name && p.attached);
        let (maps, kernel) = kernel.map_or((None, None), |(m, k)| (Some(m), Some(k)));
        if let Some(k) = &kernel {
            ebpf::check_capacity(
                ctx.discovery.health(),
                INFO.name,
                "cgroup_map_size",
                k,
                "cgroup_counters",
                "collector.cgroup.max_cgroups",
                (paths::count_cgroups(&v2_root), "cgroups"),
                "cgroups beyond it get no network, block I/O or OOM-kill counts from the kernel \
                 (pmoas_ebpf_events_lost_total{reason=\"aggregation_map_full\"})",
            );
        }
        let (block_io, oom) = (attached("cgroup_block_io"), attached("cgroup_oom_victim"));
        let reader = Arc::new(Reader::new(ReadConfig {
            discovery: ctx.discovery.clone(),
            v2_root,
            v1_roots: ctx.discovery.cgroupfs().v1_roots().clone(),
            oom,
            block_io,
        }));
        let stop_reading = if cfg.read_interval.is_zero() {
            None
        } else {
            let (stop, stopped) = std::sync::mpsc::channel();
            reader::spawn(reader.clone(), cfg.read_interval, stopped)
                .map_err(|e| fail(format!("starting the cgroupfs reader thread: {e}"), programs.clone()))?;
            Some(stop)
        };
        Ok(CgroupCollector {
            inner: Mutex::new(Inner::new(maps)),
            kernel,
            network: attached("cgroup_skb_ingress") && attached("cgroup_skb_egress"),
            block_io,
            oom,
            programs,
            discovery: ctx.discovery.clone(),
            reader,
            read_interval: cfg.read_interval,
            _stop_reading: stop_reading,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for CgroupCollector {
    fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        let mut inner = self.lock();
        if let Some(k) = &self.kernel {
            k.export_health(out)?;
        }
        inner.collect(self, out)
    }

    fn programs(&self) -> Vec<ProgramStatus> {
        self.programs.clone()
    }

    fn maps(&self) -> Vec<crate::ebpf::MapUsage> {
        self.kernel.as_ref().map(Kernel::maps).unwrap_or_default()
    }
}

/// Every series' row by its labels, in the order first met (discovery's:
/// the page reads the same from scrape to scrape). Kept from scrape to
/// scrape, with each series' labels made once: at 1,100 pods, building the
/// 4,400 rows anew (their labels copied to key, to hash and to serve) was
/// half of the collector's time once cgroupfs is read in the background.
/// Found by borrowed labels ([`WorkloadRef`]), hashed as the owned ones.
#[derive(Default)]
struct Rows {
    index: hashbrown::HashMap<WorkloadLabels, usize, std::hash::RandomState>,
    slots: Vec<Slot>,
}

struct Slot {
    /// `index`'s key, as the series' label set, shared by its series.
    series: Arc<Labels>,
    row: Row,
    /// Met this scrape.
    seen: bool,
}

impl hashbrown::Equivalent<WorkloadLabels> for WorkloadRef<'_> {
    fn equivalent(&self, key: &WorkloadLabels) -> bool {
        *self == key.as_ref()
    }
}

impl Rows {
    /// A new scrape: every row empty and unseen.
    fn begin(&mut self) {
        for s in &mut self.slots {
            s.seen = false;
            s.row.clear();
        }
    }

    fn entry(&mut self, w: WorkloadRef<'_>) -> &mut Row {
        let at = match self.index.get(&w) {
            Some(&at) => at,
            None => {
                let labels = w.to_owned();
                self.slots.push(Slot { series: Arc::new(labels.labels()), row: Row::default(), seen: false });
                self.index.insert(labels, self.slots.len() - 1);
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[at];
        slot.seen = true;
        &mut slot.row
    }

    /// The scrape's rows are all in: those not met leave, the others keep
    /// their order.
    fn finish(&mut self) {
        if self.slots.iter().all(|s| s.seen) {
            return;
        }
        let mut kept = 0;
        let moved: Vec<Option<usize>> = self
            .slots
            .iter()
            .map(|s| {
                kept += usize::from(s.seen);
                s.seen.then(|| kept - 1)
            })
            .collect();
        self.index.retain(|_, at| match moved[*at] {
            Some(to) => {
                *at = to;
                true
            }
            None => false,
        });
        self.slots.retain(|s| s.seen);
    }

    #[cfg(test)]
    fn get(&self, labels: &WorkloadLabels) -> Option<&Row> {
        self.index.get(labels).map(|&at| &self.slots[at]).filter(|s| s.seen).map(|s| &s.row)
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<Labels>, &Row)> {
        self.slots.iter().filter(|s| s.seen).map(|s| (&s.series, &s.row))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Row> {
        self.slots.iter_mut().filter(|s| s.seen).map(|s| &mut s.row)
    }
}

/// Everything one series (a container, a pod, or the node) gets this scrape.
#[derive(Default)]
struct Row {
    /// Where its block I/O comes from (its cgroup's plan).
    fs: Option<Source>,
    kernel: CgroupCounters,
    /// A pod-level row (container ""), its pod's UID: its kernel counts
    /// are its pod's. Kept between scrapes (`pod_level` says if it is one
    /// this scrape), so that it is not copied again each time.
    pod_uid: Option<String>,
    pod_level: bool,
    /// The cgroups whose files fed it (by their place in the scrape's
    /// known cgroups), with their readings.
    cgroups: Vec<(usize, Stats)>,
}

impl Row {
    fn clear(&mut self) {
        self.fs = None;
        self.kernel = CgroupCounters::default();
        self.pod_level = false;
        self.cgroups.clear();
    }

    fn set_pod(&mut self, uid: Option<&str>) {
        if self.pod_uid.as_deref() != uid {
            self.pod_uid = uid.map(str::to_string);
        }
        self.pod_level = uid.is_some();
    }

    fn pod(&self) -> Option<&str> {
        self.pod_uid.as_deref().filter(|_| self.pod_level)
    }

    /// Adds the reading of cgroup `at` (`path_of` gives each one's path).
    /// cgroupfs numbers are hierarchical, so a cgroup nested in another of
    /// the same labels (a runtime's helper below a pod, a container's own
    /// sub-cgroups) is already in its ancestor's numbers and must not be
    /// added again.
    fn add_cgroup<'p>(&mut self, path_of: impl Fn(usize) -> &'p str, at: usize, stats: Stats) {
        let nested = |a: &str, b: &str| b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'/');
        let path = path_of(at);
        if self.cgroups.iter().any(|(p, _)| nested(path_of(*p), path)) {
            return;
        }
        self.cgroups.retain(|(p, _)| !nested(path, path_of(*p)));
        self.cgroups.push((at, stats));
    }

    /// The cgroupfs numbers of the series: its (non-nested) cgroups summed.
    fn stats(&self) -> Stats {
        self.cgroups.iter().fold(Stats::default(), |acc, (_, s)| add(&acc, s))
    }
}

impl Inner {
    fn new(kernel: Option<KernelMaps>) -> Inner {
        Inner { kernel, key_owner: HashMap::new(), node_carry: CgroupCounters::default(), rows: Rows::default() }
    }

    fn collect(&mut self, c: &CgroupCollector, out: &mut MetricSet) -> anyhow::Result<()> {
        let discovery = &c.discovery;
        let filter = discovery.targets_enabled();
        let known = reader::known(discovery);

        // 1. cgroupfs, once per cgroup, and the pods' interfaces: read now,
        // or the background reader's last reading.
        let snapshot = if c.read_interval.is_zero() { c.reader.read(&known) } else { c.reader.last(&known) };
        // Taken out while filled: fold_kernel borrows the rest of self.
        let mut rows = std::mem::take(&mut self.rows);
        rows.begin();
        let mut sources: BTreeMap<(Resource, Source), u64> = BTreeMap::new();
        let path_of = |at: usize| known[at].relative_path.as_str();
        for (at, k) in known.iter().enumerate() {
            // Not read yet (found after the last background read).
            let Some(reading) = snapshot.cgroups.get(&k.id) else { continue };
            if k.live {
                for r in Resource::ALL {
                    *sources.entry((r, reading.plan.get(r))).or_default() += 1;
                }
            }
            let row = rows.entry(WorkloadRef::of(&k.workload));
            row.add_cgroup(path_of, at, reading.stats);
            row.fs.get_or_insert(reading.plan.fs);
            if k.workload.container.is_empty() {
                row.set_pod(k.workload.pod_uid.as_deref());
            }
        }

        // 2. Kernel counters, by the cgroup that owns the socket / the task.
        let folded = self.fold_kernel(discovery.as_ref(), filter, &mut rows);
        rows.finish();
        // A scrape whose kernel counters could not be read fails whole, as
        // before the rows were kept; they start over on the next one.
        if folded.is_ok() {
            self.emit(c, &rows, &sources, &snapshot, out);
        }
        self.rows = rows;
        folded?;
        Ok(())
    }

    /// The kernel's counters into `rows`, by the cgroup that owns the
    /// socket or the task: a known workload's series (its pod's row gets
    /// the sum of the pod's cgroups); a key gone past its grace period is
    /// deleted, and one that belonged to no workload goes on in the node's
    /// series, so that it never goes backwards.
    fn fold_kernel(&mut self, names: &dyn Names, filter: bool, rows: &mut Rows) -> anyhow::Result<()> {
        let mut per_pod: HashMap<String, CgroupCounters> = HashMap::new();
        let entries = match &self.kernel {
            Some(k) => k.counters.entries()?,
            None => Vec::new(),
        };
        for (id, value) in entries {
            match names.lookup(id) {
                Lookup::Live(w) | Lookup::Gone(w) => {
                    if filter && !w.selected {
                        continue;
                    }
                    let owner = WorkloadRef::of(&w);
                    if let Some(uid) = &w.pod_uid {
                        per_pod.entry(uid.clone()).or_default().merge(&value);
                    }
                    if self.key_owner.get(&id).is_none_or(|o| o.as_ref() != owner) {
                        self.key_owner.insert(id, owner.to_owned());
                    }
                    rows.entry(owner).kernel.merge(&value);
                }
                Lookup::Unknown => {
                    // Gone past the grace period (or before it was named):
                    // a workload's series ends; the node's carries it on.
                    let owner = self.key_owner.remove(&id).unwrap_or_default();
                    if owner == WorkloadLabels::default() {
                        self.node_carry.merge(&value);
                    }
                    if let Some(k) = &mut self.kernel {
                        k.counters.remove(&id);
                    }
                }
            }
        }
        let node = rows.entry(WorkloadLabels::default().as_ref());
        node.kernel.merge(&self.node_carry);
        for row in rows.values_mut() {
            if let Some(uid) = row.pod() {
                row.kernel = per_pod.get(uid).copied().unwrap_or_default();
            }
        }
        Ok(())
    }

    fn emit(
        &self,
        c: &CgroupCollector,
        rows: &Rows,
        sources: &BTreeMap<(Resource, Source), u64>,
        snapshot: &Snapshot,
        out: &mut MetricSet,
    ) {
        // A series per row at most in these: room for all up front.
        for d in [
            &CPU_USAGE,
            &CPU_THROTTLED,
            &CPU_THROTTLED_PERIODS,
            &MEMORY_USAGE,
            &MEMORY_WORKING_SET,
            &MEMORY_RSS,
            &OOM_KILLS,
            &FS_READ,
            &FS_WRITE,
        ] {
            out.reserve(d, rows.len());
        }
        for d in [
            &NET_RX,
            &NET_TX,
            &NET_RX_PACKETS,
            &NET_TX_PACKETS,
            &POD_RX,
            &POD_TX,
            &POD_RX_PACKETS,
            &POD_TX_PACKETS,
            &SOURCES,
            &READ_ERRORS,
        ] {
            out.declare(d);
        }
        for (labels, row) in rows.iter() {
            let s = &row.stats();
            let k = &row.kernel;
            let mut put = |d: &Desc, v: Option<f64>| {
                if let Some(v) = v {
                    match d.kind {
                        crate::metrics::Kind::Gauge => out.gauge_shared(d, labels, v),
                        _ => out.counter_shared(d, labels, v),
                    }
                }
            };
            put(&CPU_USAGE, s.cpu_usage_seconds);
            put(&CPU_THROTTLED, s.cpu_throttled_seconds);
            put(&CPU_THROTTLED_PERIODS, s.cpu_throttled_periods.map(|v| v as f64));
            put(&MEMORY_USAGE, s.memory_usage_bytes.map(|v| v as f64));
            put(&MEMORY_WORKING_SET, s.memory_working_set_bytes.map(|v| v as f64));
            put(&MEMORY_RSS, s.memory_rss_bytes.map(|v| v as f64));
            let from_kernel = |v: u64| Some(v as f64);
            put(&OOM_KILLS, if c.oom { from_kernel(k.oom_kills) } else { s.oom_kills.map(|v| v as f64) });
            let fs_source = row.fs.unwrap_or(if c.block_io { Source::Ebpf } else { Source::None });
            let (r, wr) = match fs_source {
                Source::Ebpf => (from_kernel(k.fs_read_bytes), from_kernel(k.fs_write_bytes)),
                _ => (s.fs_read_bytes.map(|v| v as f64), s.fs_write_bytes.map(|v| v as f64)),
            };
            put(&FS_READ, r);
            put(&FS_WRITE, wr);
            // Pod-level rows: the pod's interfaces say it better.
            if c.network && row.pod().is_none() {
                put(&NET_RX, from_kernel(k.net_rx_bytes));
                put(&NET_TX, from_kernel(k.net_tx_bytes));
                put(&NET_RX_PACKETS, from_kernel(k.net_rx_packets));
                put(&NET_TX_PACKETS, from_kernel(k.net_tx_packets));
            }
        }
        for pod in &snapshot.pods {
            for i in &pod.interfaces {
                let labels: Arc<Labels> = Arc::new(vec![
                    ("namespace", pod.labels.0.clone()),
                    ("pod", pod.labels.1.clone()),
                    ("interface", i.name.clone()),
                ]);
                out.counter_shared(&POD_RX, &labels, i.rx_bytes as f64);
                out.counter_shared(&POD_TX, &labels, i.tx_bytes as f64);
                out.counter_shared(&POD_RX_PACKETS, &labels, i.rx_packets as f64);
                out.counter_shared(&POD_TX_PACKETS, &labels, i.tx_packets as f64);
            }
        }
        for ((resource, source), n) in sources {
            let labels = vec![("resource", resource.as_label().to_string()), ("source", source.as_label().to_string())];
            out.gauge(&SOURCES, labels, *n as f64);
        }
        let live: u64 = sources.iter().filter(|((r, _), _)| *r == Resource::Cpu).map(|(_, n)| n).sum();
        let net_source = if c.network { Source::Ebpf } else { Source::None };
        out.gauge(
            &SOURCES,
            vec![("resource", "network".to_string()), ("source", net_source.as_label().to_string())],
            live as f64,
        );
        for (file, n) in &snapshot.read_errors {
            out.counter(&READ_ERRORS, vec![("file", file.to_string())], *n as f64);
        }
        out.gauge(&READ_DURATION, vec![], snapshot.took.as_secs_f64());
        if let Some(at) = snapshot.read_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            out.gauge(&READ_TIMESTAMP, vec![], at.as_secs_f64());
        }
    }
}

/// Sums two readings field by field (`None` + x = x).
fn add(a: &Stats, b: &Stats) -> Stats {
    fn f(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        match (a, b) {
            (Some(x), Some(y)) => Some(x + y),
            (x, None) => x,
            (None, y) => y,
        }
    }
    fn u(a: Option<u64>, b: Option<u64>) -> Option<u64> {
        match (a, b) {
            (Some(x), Some(y)) => Some(x + y),
            (x, None) => x,
            (None, y) => y,
        }
    }
    Stats {
        cpu_usage_seconds: f(a.cpu_usage_seconds, b.cpu_usage_seconds),
        cpu_throttled_seconds: f(a.cpu_throttled_seconds, b.cpu_throttled_seconds),
        cpu_throttled_periods: u(a.cpu_throttled_periods, b.cpu_throttled_periods),
        memory_usage_bytes: u(a.memory_usage_bytes, b.memory_usage_bytes),
        memory_working_set_bytes: u(a.memory_working_set_bytes, b.memory_working_set_bytes),
        memory_rss_bytes: u(a.memory_rss_bytes, b.memory_rss_bytes),
        oom_kills: u(a.oom_kills, b.oom_kills),
        fs_read_bytes: u(a.fs_read_bytes, b.fs_read_bytes),
        fs_write_bytes: u(a.fs_write_bytes, b.fs_write_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_cgroups_of_one_series_count_once() {
        let cpu = |s: f64| Stats { cpu_usage_seconds: Some(s), ..Stats::default() };
        let mut row = Row::default();
        let paths = ["/pod/conmon", "/pod", "/pod/other", "/podx"];
        let path_of = |at: usize| paths[at];
        row.add_cgroup(path_of, 0, cpu(1.0));
        row.add_cgroup(path_of, 1, cpu(5.0)); // the ancestor replaces its child
        row.add_cgroup(path_of, 2, cpu(2.0)); // inside the ancestor: skipped
        row.add_cgroup(path_of, 3, cpu(0.5)); // a sibling with a common prefix: added
        assert_eq!(row.stats().cpu_usage_seconds, Some(5.5));
        assert_eq!(row.cgroups.len(), 2);
    }

    fn inner_with(entries: Vec<(u64, CgroupCounters)>) -> Inner {
        let table = crate::fold::FixtureTable { entries, removed: Vec::new() };
        Inner::new(Some(KernelMaps { counters: Box::new(table) }))
    }

    fn rx(bytes: u64) -> CgroupCounters {
        CgroupCounters { net_rx_bytes: bytes, net_rx_packets: 1, ..CgroupCounters::default() }
    }

    fn set_entries(inner: &mut Inner, entries: Vec<(u64, CgroupCounters)>) {
        inner.kernel = Some(KernelMaps { counters: Box::new(crate::fold::FixtureTable { entries, removed: vec![] }) });
    }

    /// The kernel's per-cgroup counters folded into series, on fixture maps:
    /// each container its own; the pod's row the sum of its cgroups; a host
    /// cgroup that is gone is carried in the node's series, which never goes
    /// backwards; a workload's key gone past its grace period ends its
    /// series and leaves the map; keys outside the target selection are not
    /// served.
    #[test]
    fn kernel_counters_fold_into_containers_pods_and_the_node() {
        use pmoas_discovery::{Role, Workload};
        let w = |container: &str, role: Role| Workload {
            namespace: "shop".into(),
            pod: "cart-1".into(),
            container: container.into(),
            role,
            pod_uid: Some("uid-1".into()),
            ..Workload::node()
        };
        let unselected = Workload { selected: false, ..w("other", Role::App) };
        let names = crate::fold::FixtureNames(HashMap::new())
            .live(1, w("envoy", Role::Sidecar))
            .live(2, w("cart", Role::App))
            .live(3, w("", Role::None))
            .gone(4, w("old", Role::App))
            .live(5, Workload::node())
            .live(7, unselected);
        let mut inner = inner_with(vec![(1, rx(100)), (2, rx(30)), (3, rx(7)), (4, rx(5)), (5, rx(2)), (7, rx(9))]);
        // The pod-level row, as step 1 makes it from cgroupfs.
        let pod_row = WorkloadLabels::of(&w("", Role::None));
        let mut rows = Rows::default();
        rows.entry(pod_row.as_ref()).set_pod(Some("uid-1"));

        inner.fold_kernel(&names, true, &mut rows).unwrap();
        let bytes = |rows: &Rows, l: &WorkloadLabels| rows.get(l).unwrap().kernel.net_rx_bytes;
        assert_eq!(bytes(&rows, &WorkloadLabels::of(&w("envoy", Role::Sidecar))), 100);
        assert_eq!(bytes(&rows, &WorkloadLabels::of(&w("cart", Role::App))), 30);
        assert_eq!(bytes(&rows, &WorkloadLabels::of(&w("old", Role::App))), 5, "gone, within its grace period");
        assert_eq!(bytes(&rows, &pod_row), 100 + 30 + 7 + 5, "the pod's row: all its cgroups");
        assert_eq!(bytes(&rows, &WorkloadLabels::default()), 2);
        assert!(
            !rows.iter().any(|(l, _)| l.contains(&("container", "other".to_string()))),
            "outside the target selection"
        );

        // Next scrape: host cgroup 5 and container 4 are past their grace
        // period (unknown now); 5's counts go on in the node's series.
        let names = crate::fold::FixtureNames(HashMap::new())
            .live(1, w("envoy", Role::Sidecar))
            .live(2, w("cart", Role::App))
            .live(3, w("", Role::None))
            .live(6, Workload::node());
        set_entries(&mut inner, vec![(1, rx(150)), (2, rx(30)), (3, rx(7)), (4, rx(5)), (5, rx(2)), (6, rx(1))]);
        let mut rows = Rows::default();
        rows.entry(pod_row.as_ref()).set_pod(Some("uid-1"));
        inner.fold_kernel(&names, true, &mut rows).unwrap();
        assert_eq!(bytes(&rows, &WorkloadLabels::of(&w("envoy", Role::Sidecar))), 150);
        assert!(rows.get(&WorkloadLabels::of(&w("old", Role::App))).is_none(), "a gone container's series ends");
        assert_eq!(bytes(&rows, &WorkloadLabels::default()), 2 + 1, "the node keeps what its gone cgroup counted");
        assert_eq!(bytes(&rows, &pod_row), 150 + 30 + 7);
        let entries = inner.kernel.as_ref().unwrap().counters.entries().unwrap();
        let ids: Vec<u64> = entries.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 2, 3, 6], "keys of cgroups past their grace period are deleted");
    }

    /// Rows kept between scrapes: a row not met in a scrape leaves, the
    /// others keep their order and are found again, and no row is made
    /// twice.
    #[test]
    fn rows_kept_between_scrapes_leave_when_not_met() {
        use pmoas_discovery::{Role, Workload};
        let w = |c: &str| Workload { container: c.into(), role: Role::App, ..Workload::node() };
        let (a, b, c) = (w("a"), w("b"), w("c"));
        let mut rows = Rows::default();
        for x in [&a, &b, &c] {
            rows.entry(WorkloadRef::of(x)).fs = Some(Source::CgroupV2);
        }
        rows.finish();
        assert_eq!(rows.len(), 3);

        rows.begin();
        rows.entry(WorkloadRef::of(&a));
        rows.entry(WorkloadRef::of(&c)).fs = Some(Source::CgroupV1);
        rows.finish();
        assert_eq!(rows.len(), 2, "b was not met");
        assert!(rows.get(&WorkloadLabels::of(&b)).is_none());
        let containers: Vec<&str> = rows
            .iter()
            .map(|(l, _)| l.iter().find(|(k, _)| *k == "container").map(|(_, v)| v.as_str()).unwrap())
            .collect();
        assert_eq!(containers, ["a", "c"], "first-met order kept");
        assert_eq!(rows.get(&WorkloadLabels::of(&c)).unwrap().fs, Some(Source::CgroupV1), "c found where it moved");
        assert_eq!(rows.get(&WorkloadLabels::of(&a)).unwrap().fs, None, "a new scrape starts each row empty");

        rows.begin();
        rows.entry(WorkloadRef::of(&c));
        rows.entry(WorkloadRef::of(&b));
        rows.finish();
        assert_eq!(rows.len(), 2, "c found again after it moved, b made anew");
    }

    #[test]
    fn readings_add_up_field_by_field() {
        let a = Stats { cpu_usage_seconds: Some(1.5), memory_rss_bytes: Some(10), ..Stats::default() };
        let b = Stats { cpu_usage_seconds: Some(0.5), oom_kills: Some(1), ..Stats::default() };
        let s = add(&a, &b);
        assert_eq!(s.cpu_usage_seconds, Some(2.0));
        assert_eq!(s.memory_rss_bytes, Some(10));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!(s.fs_read_bytes, None);
    }
}
