//! sockops collector, user side: socket-redirect acceleration between the
//! sockets of one pod (sidecar <-> app, in both the plain and the Istio
//! layout), opt-in, and what it did, per container.
//!
//! Kernel side: `bpf-programs/src/sockops.bpf.c` (design and measurements:
//! `docs/sockops-design.md`; for users: `docs/sockops.md`). A sock_ops
//! program puts both ends of every in-pod TCP connection of the watched pods
//! into a SOCKHASH as they are established; an sk_msg program hands each
//! message straight to the peer's receive queue, or lets TCP carry it when
//! that could reorder the stream or queue too much for a reader that does
//! not read.
//!
//! Fail-safe by construction: every attachment is a bpf_link or a verdict
//! program on a map only this process holds, nothing is pinned, and nothing
//! is ever deleted from the SOCKHASH (that drops queued data). If the
//! exporter dies, no new socket is accelerated and established ones finish
//! as they are; the next start uses new maps (no EBUSY). Only pods' sockets
//! are touched, never the host's own processes.
//!
//! Attach order matters: the verdict program and the read tracker must be
//! there before the first socket joins the map, so `sockops_established`
//! attaches last and only if they did ([`Hook::SockOps`]). Without it the
//! collector does not start and traffic is untouched.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap};
use pmoas_bpf::sockops::{self as so, SockopsCounters};
use pmoas_bpf::types::{SocketCounters, SocketKey};
use pmoas_discovery::Lookup;
use serde::{Deserialize, Serialize};

use crate::ebpf::{Global, Hook, Kernel, LoadOptions, ProgramSpec, ProgramStatus, Scope};
use crate::fold::{Names, PerCpuTable};
use crate::metrics::{Desc, MetricSet, WorkloadLabels};
use crate::setting::{self, Setting};
use crate::{BuildContext, BuildError, Collector, CollectorInfo, CollectorSpec};

pub const INFO: CollectorInfo = CollectorInfo {
    name: "sockops",
    help: "Socket-redirect acceleration between the sockets of one pod (sidecar <-> app): opt-in, changes \
           traffic; sock_ops + sk_msg (also --with-sockops)",
    default_enabled: false,
};

pub const ACTIVE_SOCKETS: Desc =
    Desc::gauge("pmoas_sockops_active_sockets", "Sockets of the container in the redirect map now.");
pub const REDIRECTED_MESSAGES: Desc = Desc::counter(
    "pmoas_sockops_redirected_messages_total",
    "Messages the container's sockets handed straight to their in-pod peer, bypassing the TCP/IP stack.",
);
pub const REDIRECTED_BYTES: Desc = Desc::counter(
    "pmoas_sockops_redirected_bytes_total",
    "Bytes the container's sockets sent by redirect (TCP, netfilter and the interfaces never saw them).",
);
pub const REDIRECTED_RECEIVED_BYTES: Desc = Desc::counter(
    "pmoas_sockops_redirected_received_bytes_total",
    "Bytes handed by redirect to the container's sockets: add them to the cgroup collector's network \
     receive bytes for everything the container received.",
);
pub const MISSES: Desc = Desc::counter(
    "pmoas_sockops_redirect_misses_total",
    "Messages of the container's sockets in the map that went through the TCP stack instead (peer not \
     in the map, ordering guard, queue cap).",
);
pub const MISS_BYTES: Desc =
    Desc::counter("pmoas_sockops_redirect_miss_bytes_total", "Bytes of pmoas_sockops_redirect_misses_total.");
pub const INSERT_ERRORS: Desc = Desc::counter(
    "pmoas_sockops_insert_errors_total",
    "Sockets the kernel refused to put in the redirect map (another generation's programs attached, kTLS, \
     map full); they use plain TCP.",
);
pub const QUEUE_OVERFLOWS: Desc = Desc::counter(
    "pmoas_sockops_queue_overflows_total",
    "Switches to TCP because the receiver left more than collector.sockops.max_queued_bytes unread \
     (redirected data has no flow control of its own).",
);

/// Settings of the sockops collector (`[collector.sockops]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SockopsConfig {
    /// Run this collector (`true`), or not (`false`) whatever the defaults
    /// and the collector list say. Off by default: it changes traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Sockets in the redirect map at once, node-wide (two per in-pod
    /// connection); beyond it new connections use plain TCP, counted in
    /// `pmoas_ebpf_events_lost_total{reason="sockhash_full"}`.
    pub max_sockets: u32,
    /// Redirected bytes a receiver may leave unread, per connection and
    /// direction, before its sender falls back to TCP (which blocks it as
    /// TCP always does) until the receiver has caught up.
    pub max_queued_bytes: u32,
    /// Ports never accelerated, local or remote (e.g. the port of a
    /// program that reads with splice(), or a blocking program that does
    /// not expect EAGAIN after its own shutdown(SHUT_WR)).
    #[serde(deserialize_with = "pmoas_discovery::target::list_or_csv", skip_serializing_if = "Vec::is_empty")]
    pub exclude_ports: Vec<String>,
    /// Networks never accelerated, local or remote address (CIDR).
    #[serde(deserialize_with = "pmoas_discovery::target::list_or_csv", skip_serializing_if = "Vec::is_empty")]
    pub exclude_cidrs: Vec<String>,
}

impl Default for SockopsConfig {
    fn default() -> Self {
        SockopsConfig {
            enabled: None,
            max_sockets: so::SOCKHASH_SIZE,
            max_queued_bytes: so::MAX_QUEUED_DEFAULT as u32,
            exclude_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
        }
    }
}

/// The `[collector.sockops]` section.
pub type Config = SockopsConfig;

pub const SETTINGS: &[Setting] = &[
    Setting::count(
        "collector.sockops.max_sockets",
        64,
        setting::MAX_MAP_ENTRIES,
        "Sockets accelerated at once, node-wide (two per in-pod connection); beyond it new connections use plain TCP (counted)",
    ),
    Setting::count(
        "collector.sockops.max_queued_bytes",
        65536,
        1 << 30,
        "Redirected bytes a reader may leave unread per connection and direction before the sender falls back to TCP",
    ),
    Setting::repeated(
        "collector.sockops.exclude_ports",
        "PORT",
        ",",
        "Ports never accelerated, local or remote; repeat or comma-separate",
    ),
    Setting::repeated(
        "collector.sockops.exclude_cidrs",
        "CIDR",
        ",",
        "Networks never accelerated, local or remote address (10.0.0.0/8, ::1/128); repeat or comma-separate",
    ),
];

pub const SPEC: CollectorSpec = CollectorSpec {
    info: INFO,
    object: pmoas_bpf::SOCKOPS,
    settings: SETTINGS,
    programs: PROGRAMS,
    lost_reasons: &so::LOST_REASONS,
    build: |ctx| Ok(Arc::new(SockopsCollector::new(ctx)?)),
};

/// The programs of sockops.bpf.c, in attach order: what must be in place
/// before a socket joins the map first, the program that adds them last.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        program: so::PROG_SK_MSG,
        hook: Hook::SkMsg { map: so::MAP_SOCKHASH },
        fallback_for: None,
        feature: "redirect",
    },
    // Counts what each end reads: the cap on unread redirected bytes and
    // the ordering guard depend on it.
    ProgramSpec {
        program: so::PROG_RECV_LENGTH,
        hook: Hook::BtfTracePoint { name: "sock_recv_length" },
        fallback_for: None,
        feature: "redirect",
    },
    // Which connections stay in their network namespace (their SYN left
    // through lo): only those are accelerated.
    ProgramSpec {
        program: so::PROG_SYN_EGRESS,
        hook: Hook::CgroupSkb { ingress: false },
        fallback_for: None,
        feature: "redirect",
    },
    ProgramSpec {
        program: so::PROG_SOCK_OPS,
        hook: Hook::SockOps { requires: &[so::PROG_SK_MSG, so::PROG_RECV_LENGTH, so::PROG_SYN_EGRESS] },
        fallback_for: None,
        feature: "redirect",
    },
];

/// The exclusions of the configuration, checked.
#[derive(Debug, Default, PartialEq)]
pub struct Exclusions {
    pub ports: Vec<u16>,
    pub cidrs: Vec<(IpAddr, u8)>,
}

impl Exclusions {
    /// Parses `exclude_ports` and `exclude_cidrs`; the error names the
    /// setting and the value.
    pub fn parse(cfg: &SockopsConfig) -> Result<Exclusions, String> {
        let mut out = Exclusions::default();
        for p in cfg.exclude_ports.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => out.ports.push(n),
                _ => return Err(format!("collector.sockops.exclude_ports: `{p}` is not a port (1-65535)")),
            }
        }
        for c in cfg.exclude_cidrs.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            let bad = || format!("collector.sockops.exclude_cidrs: `{c}` is not a network like 10.0.0.0/8 or ::1/128");
            let (addr, len) = match c.split_once('/') {
                Some((a, l)) => (a.parse::<IpAddr>().map_err(|_| bad())?, l.parse::<u8>().map_err(|_| bad())?),
                None => {
                    let a = c.parse::<IpAddr>().map_err(|_| bad())?;
                    (a, if a.is_ipv4() { 32 } else { 128 })
                }
            };
            if so::SockopsCidr::new(addr, len).is_none() {
                return Err(bad());
            }
            out.cidrs.push((addr, len));
        }
        if out.ports.len() > so::EXCLUDED_PORT_MAP_SIZE as usize {
            return Err(format!("collector.sockops.exclude_ports: at most {} ports", so::EXCLUDED_PORT_MAP_SIZE));
        }
        if out.cidrs.len() > so::EXCLUDED_CIDR_MAP_SIZE as usize {
            return Err(format!("collector.sockops.exclude_cidrs: at most {} networks", so::EXCLUDED_CIDR_MAP_SIZE));
        }
        Ok(out)
    }
}

/// Per-cgroup counters -> series: the part tested on fixture maps.
struct Folding {
    counters: Box<dyn crate::fold::SummedTable<u64, SockopsCounters>>,
    /// Cgroups we have named: once discovery forgets one (gone past the
    /// grace period), its key is deleted. A cgroup never named yet is a
    /// pod discovery has not seen: kept.
    named: HashSet<u64>,
}

impl Folding {
    fn collect(&mut self, names: &dyn Names, out: &mut MetricSet) -> anyhow::Result<()> {
        let mut series: HashMap<WorkloadLabels, SockopsCounters> = HashMap::new();
        for (cgroup, value) in self.counters.entries()? {
            match names.lookup(cgroup) {
                Lookup::Live(w) | Lookup::Gone(w) => {
                    self.named.insert(cgroup);
                    series.entry(WorkloadLabels::of(&w)).or_default().add(&value);
                }
                Lookup::Unknown => {
                    if self.named.remove(&cgroup) {
                        self.counters.remove(&cgroup);
                    }
                }
            }
        }
        emit(out, &series);
        Ok(())
    }
}

fn emit(out: &mut MetricSet, series: &HashMap<WorkloadLabels, SockopsCounters>) {
    for d in [
        &ACTIVE_SOCKETS,
        &REDIRECTED_MESSAGES,
        &REDIRECTED_BYTES,
        &REDIRECTED_RECEIVED_BYTES,
        &MISSES,
        &MISS_BYTES,
        &INSERT_ERRORS,
        &QUEUE_OVERFLOWS,
    ] {
        out.declare(d);
    }
    for (w, c) in series {
        let l = w.labels();
        out.gauge(&ACTIVE_SOCKETS, l.clone(), c.active_sockets() as f64);
        out.counter(&REDIRECTED_MESSAGES, l.clone(), c.redirected_messages as f64);
        out.counter(&REDIRECTED_BYTES, l.clone(), c.redirected_bytes as f64);
        out.counter(&REDIRECTED_RECEIVED_BYTES, l.clone(), c.redirected_received_bytes as f64);
        out.counter(&MISSES, l.clone(), c.misses as f64);
        out.counter(&MISS_BYTES, l.clone(), c.miss_bytes as f64);
        out.counter(&INSERT_ERRORS, l.clone(), c.insert_errors as f64);
        out.counter(&QUEUE_OVERFLOWS, l, c.overflows as f64);
    }
}

pub struct SockopsCollector {
    // Field order: the maps drop before `kernel` detaches the programs.
    fold: Mutex<Folding>,
    companions: Arc<crate::Companions>,
    kernel: Kernel,
    discovery: Arc<pmoas_discovery::Discovery>,
}

impl SockopsCollector {
    pub fn new(ctx: &BuildContext) -> Result<SockopsCollector, BuildError> {
        let cfg = &ctx.config.sockops;
        let refuse = |message: String| BuildError::Failed {
            message: format!("sockops: acceleration is off, traffic untouched: {message}"),
            programs: crate::ebpf::unattached(INFO.name, PROGRAMS, &message),
        };
        let exclusions = Exclusions::parse(cfg).map_err(refuse)?;
        let v2_root = ctx.discovery.cgroupfs().v2_root().ok().map(Path::to_path_buf);
        if let Some(root) = &v2_root
            && let Some(other) = other_generation(root)
        {
            return Err(refuse(other));
        }
        let sizes = [
            (so::MAP_SOCKHASH, cfg.max_sockets),
            (so::MAP_PAIRS, cfg.max_sockets),
            (so::MAP_LOCAL_SYN, (cfg.max_sockets / 4).max(so::LOCAL_SYN_MAP_SIZE)),
        ];
        let globals = [(so::MAX_QUEUED_GLOBAL, Global::U64(u64::from(cfg.max_queued_bytes)))];
        // The exclusions are in their maps before the first socket can be
        // offered to the SOCKHASH.
        let fill_exclusions = |ebpf: &mut aya::Ebpf| -> Result<(), String> {
            let map = ebpf.map_mut(so::MAP_EXCLUDED_PORTS).ok_or("map sockops_excluded_ports missing")?;
            let mut ports: BpfHashMap<&mut MapData, u16, u8> = BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
            for p in &exclusions.ports {
                ports.insert(p, 1, 0).map_err(|e| format!("excluding port {p}: {e}"))?;
            }
            let map = ebpf.map_mut(so::MAP_EXCLUDED_CIDRS).ok_or("map sockops_excluded_cidrs missing")?;
            let mut cidrs: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(map).map_err(|e| e.to_string())?;
            for (addr, len) in &exclusions.cidrs {
                let Some(c) = so::SockopsCidr::new(*addr, *len) else { continue };
                cidrs
                    .insert(&LpmKey::new(c.prefixlen, c.addr), 1, 0)
                    .map_err(|e| format!("excluding {addr}/{len}: {e}"))?;
            }
            Ok(())
        };
        let options = LoadOptions { globals: &globals, scope: Scope::Pods, prepare: Some(&fill_exclusions) };
        let kernel = Kernel::load_with(&SPEC, ctx, &sizes, PROGRAMS, v2_root.as_deref(), options)?;
        if kernel.programs().iter().any(|p| p.program == so::PROG_SOCK_OPS && !p.attached) {
            // The first failure is the cause (sock_ops waits for the others).
            // Dropping `kernel` detaches what did attach.
            let cause = kernel
                .programs()
                .iter()
                .find(|p| !p.attached)
                .map(|p| format!("{}: {}", p.program, p.error.as_deref().unwrap_or("not attached")))
                .unwrap_or_default();
            return Err(BuildError::Failed {
                message: format!("sockops: acceleration is off, traffic untouched: {cause}"),
                programs: kernel.programs().to_vec(),
            });
        }
        let counters: PerCpuHashMap<MapData, u64, SockopsCounters> = kernel.take_map(so::MAP_COUNTERS)?;
        let closed: PerCpuHashMap<MapData, SocketKey, SocketCounters> = kernel.take_map(so::MAP_CLOSED_BYTES)?;
        *ctx.companions.lock_closed_bytes() = Some(Box::new(PerCpuTable::new(closed, SocketCounters::merge)));
        tracing::info!(
            ports = ?exclusions.ports,
            cidrs = ?exclusions.cidrs,
            max_queued_bytes = cfg.max_queued_bytes,
            "sockops: accelerating connections inside the watched pods"
        );
        Ok(SockopsCollector {
            fold: Mutex::new(Folding {
                counters: Box::new(PerCpuTable::new(counters, SockopsCounters::add)),
                named: HashSet::new(),
            }),
            companions: ctx.companions.clone(),
            kernel,
            discovery: ctx.discovery.clone(),
        })
    }
}

impl Collector for SockopsCollector {
    fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        self.kernel.export_health(out)?;
        self.companions.forget_gone_closed_bytes(self.discovery.as_ref());
        self.fold.lock().unwrap_or_else(|p| p.into_inner()).collect(self.discovery.as_ref(), out)
    }

    fn programs(&self) -> Vec<ProgramStatus> {
        self.kernel.programs().to_vec()
    }

    fn maps(&self) -> Vec<crate::ebpf::MapUsage> {
        self.kernel.maps()
    }
}

impl Drop for SockopsCollector {
    fn drop(&mut self) {
        // The table reads a map of this object: it goes with it.
        *self.companions.lock_closed_bytes() = None;
    }
}

/// The kernel truncates program names to 15 bytes.
const SOCK_OPS_KERNEL_NAME: &str = "sockops_establi";

/// Another sockops program of ours attached to the cgroup v2 root (another
/// exporter on this node, or a leftover legacy attachment): its sockets and
/// ours would meet in two maps, and every socket its program adds first is
/// refused to ours (EBUSY). Says which, or None.
fn other_generation(root: &Path) -> Option<String> {
    let ids = match attached_sock_ops(root) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the sock_ops programs of the cgroup root");
            return None;
        }
    };
    let ours: Vec<u32> = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()) && p.name_as_str() == Some(SOCK_OPS_KERNEL_NAME))
        .map(|p| p.id())
        .collect();
    (!ours.is_empty()).then(|| {
        format!(
            "another pmoas sockops program is attached to the cgroup root {} (program id {}): another exporter \
             with sockops runs on this node, or an attachment outlived its process; stop it (or `bpftool cgroup \
             detach {} sock_ops id ID`) and start again",
            root.display(),
            ours.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
            root.display()
        )
    })
}

/// The ids of the sock_ops programs attached to the cgroup directory
/// `dir` itself (BPF_PROG_QUERY; Aya has no query for sock_ops).
fn attached_sock_ops(dir: &Path) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_CGROUP_SOCK_OPS: u32 = 3;
    // The query member of union bpf_attr, up to prog_cnt.
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        pad: u32,
    }
    let cgroup = std::fs::File::open(dir)?;
    let mut ids = [0u32; 64];
    let mut q = Query {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_SOCK_OPS,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        pad: 0,
    };
    // SAFETY: `q` is a valid bpf_attr prefix for BPF_PROG_QUERY; the kernel
    // writes at most prog_cnt ids into `ids`, which outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut q as *mut Query, std::mem::size_of::<Query>() as u32)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ids[..(q.prog_cnt as usize).min(ids.len())].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::{FixtureNames, FixtureTable};
    use crate::metrics::Value;
    use pmoas_discovery::{Role, Workload};

    fn container(pod: &str, name: &str, role: Role) -> Workload {
        Workload { pod: pod.into(), container: name.into(), role, pod_uid: Some(pod.into()), ..Workload::node() }
    }

    #[test]
    fn exclusions_are_checked_and_named() {
        let cfg = SockopsConfig {
            exclude_ports: vec!["8080".into(), " 15006 ".into()],
            exclude_cidrs: vec!["10.96.0.0/12".into(), "::1".into(), "127.0.0.6".into()],
            ..Default::default()
        };
        let e = Exclusions::parse(&cfg).unwrap();
        assert_eq!(e.ports, vec![8080, 15006]);
        assert_eq!(
            e.cidrs,
            vec![("10.96.0.0".parse().unwrap(), 12), ("::1".parse().unwrap(), 128), ("127.0.0.6".parse().unwrap(), 32)]
        );
        for (ports, cidrs, says) in [
            (vec!["0"], vec![], "`0` is not a port"),
            (vec!["http"], vec![], "`http` is not a port"),
            (vec!["70000"], vec![], "`70000` is not a port"),
            (vec![], vec!["10.0.0.0/33"], "`10.0.0.0/33` is not a network"),
            (vec![], vec!["pod-net"], "`pod-net` is not a network"),
        ] {
            let cfg = SockopsConfig {
                exclude_ports: ports.into_iter().map(String::from).collect(),
                exclude_cidrs: cidrs.into_iter().map(String::from).collect(),
                ..Default::default()
            };
            let err = Exclusions::parse(&cfg).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn counters_fold_per_container_and_forget_only_what_was_named() {
        const ENVOY: u64 = 10;
        const APP: u64 = 11;
        const NEW_POD: u64 = 12;
        let c = |added, removed, bytes| SockopsCounters {
            sockets_added: added,
            sockets_removed: removed,
            redirected_messages: 2,
            redirected_bytes: bytes,
            ..Default::default()
        };
        let mut f = Folding {
            counters: Box::new(FixtureTable {
                entries: vec![(ENVOY, c(5, 2, 100)), (APP, c(5, 5, 40)), (NEW_POD, c(1, 0, 1))],
                removed: vec![],
            }),
            named: HashSet::new(),
        };
        let names = FixtureNames::default()
            .live(ENVOY, container("p1", "envoy", Role::Sidecar))
            .live(APP, container("p1", "app", Role::App));
        let mut out = MetricSet::new();
        f.collect(&names, &mut out).unwrap();
        let envoy = [("pod", "p1"), ("container", "envoy"), ("role", "sidecar")];
        assert_eq!(out.get("pmoas_sockops_active_sockets", &envoy), Some(&Value::Gauge(3.0)));
        assert_eq!(out.get("pmoas_sockops_redirected_bytes_total", &envoy), Some(&Value::Counter(100.0)));
        assert_eq!(
            out.get("pmoas_sockops_active_sockets", &[("container", "app")]),
            Some(&Value::Gauge(0.0)),
            "every socket closed"
        );
        // NEW_POD is not known yet: not served, not deleted.
        let mut out = MetricSet::new();
        f.collect(&FixtureNames::default().live(APP, container("p1", "app", Role::App)), &mut out).unwrap();
        assert_eq!(out.get("pmoas_sockops_redirected_bytes_total", &envoy), None);
        let left: Vec<u64> = f.counters.entries().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, vec![APP, NEW_POD], "the sidecar, once named and now forgotten, is deleted");
    }
}
