//! Loading a collector's eBPF object and attaching its programs, each one
//! optional: a program the kernel refuses is reported, not fatal.
//!
//! Also: what to tell the user when the host cannot run eBPF at all
//! (privileges, BTF, tracefs), and the `lost_events` map every object has.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray};
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SkMsg, SockOps, TracePoint,
};
use aya::{Btf, Ebpf, EbpfLoader};
use pmoas_bpf::types::LOST_REASON_SLOTS;
use pmoas_discovery::Health;

use crate::metrics::{Desc, MetricSet};

pub const PROGRAM_ATTACHED: Desc = Desc::gauge(
    "pmoas_ebpf_program_attached",
    "Whether an eBPF program of a collector is attached to its hook (1) or not (0).",
);

pub const EVENTS_LOST: Desc = Desc::counter(
    "pmoas_ebpf_events_lost_total",
    "Events the eBPF programs could not record (full maps, full ring buffers, unparsable data, \
     runs the kernel skipped because the program was already running on that CPU).",
);

pub const PROGRAM_RUNS: Desc = Desc::counter(
    "pmoas_ebpf_program_runs_total",
    "Runs of an eBPF program (counted while kernel.bpf_stats_enabled=1).",
);

pub const PROGRAM_RUN_SECONDS: Desc = Desc::counter(
    "pmoas_ebpf_program_run_seconds_total",
    "Time spent in an eBPF program, in the traced tasks (counted while kernel.bpf_stats_enabled=1).",
);

pub const MAP_MEMORY: Desc = Desc::gauge(
    "pmoas_ebpf_map_memory_bytes",
    "Kernel memory of a collector's eBPF map, as the kernel accounts it (fdinfo memlock: what the map \
     uses now on Linux 6.4+, its size at creation before).",
);

pub const MAP_MAX_ENTRIES: Desc =
    Desc::gauge("pmoas_ebpf_map_max_entries", "Entries a collector's eBPF map can hold (its configured size).");

/// One map of a collector's object, as the kernel accounts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub name: String,
    pub max_entries: u32,
    pub bytes: u64,
}

impl MapUsage {
    /// Adds `pmoas_ebpf_map_memory_bytes` and `pmoas_ebpf_map_max_entries`.
    pub fn export(collector: &'static str, maps: &[MapUsage], out: &mut MetricSet) {
        out.declare(&MAP_MEMORY);
        out.declare(&MAP_MAX_ENTRIES);
        for m in maps {
            let labels = vec![("collector", collector.to_string()), ("map", m.name.clone())];
            out.gauge(&MAP_MEMORY, labels.clone(), m.bytes as f64);
            out.gauge(&MAP_MAX_ENTRIES, labels, f64::from(m.max_entries));
        }
    }

    /// "4.2 MiB in 9 maps (largest: socket_conns, 3.1 MiB, 65536 entries)".
    pub fn summary(maps: &[MapUsage]) -> String {
        let total: u64 = maps.iter().map(|m| m.bytes).sum();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        match maps.iter().max_by_key(|m| m.bytes) {
            Some(big) => format!(
                "{:.1} MiB in {} maps (largest: {}, {:.1} MiB, {} entries)",
                mib(total),
                maps.len(),
                big.name,
                mib(big.bytes),
                big.max_entries
            ),
            None => "no maps".to_string(),
        }
    }
}

/// At start-up: can a map of `size` entries hold what the node already has
/// (`have`, counted now)? Above 80 %, raise `feature` of `collector` with
/// what is lost, the setting to raise and what an entry costs; otherwise
/// clear it.
#[allow(clippy::too_many_arguments)]
pub fn check_capacity(
    health: &Health,
    collector: &'static str,
    feature: &'static str,
    kernel: &Kernel,
    map: &str,
    setting: &str,
    have: (u64, &str),
    lost: &str,
) {
    let (count, what) = have;
    let Some(m) = kernel.maps().into_iter().find(|m| m.name == map) else { return };
    let size = u64::from(m.max_entries);
    if size == 0 || count * 10 < size * 8 {
        health.clear(collector, feature);
        return;
    }
    let per_entry = m.bytes as f64 / size as f64;
    health.raise(
        collector,
        feature,
        format!(
            "the node has {count} {what} now and {setting} is {size} (map {map}): {lost}; raise it (about {per_entry:.0} \
             B of kernel memory per entry)"
        ),
    );
}

/// The object's maps, each with a descriptor of its own to read its memory
/// from (`/proc/self/fdinfo`; ids and `BPF_MAP_GET_FD_BY_ID` would need
/// CAP_SYS_ADMIN). Taken right after loading, before a collector takes its
/// maps out of the object.
fn object_maps(ebpf: &Ebpf) -> Vec<(String, u32, std::os::fd::OwnedFd)> {
    use aya::maps::Map;
    use std::os::fd::AsFd;
    ebpf.maps()
        .filter_map(|(name, map)| {
            let data = match map {
                Map::Array(d)
                | Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuArray(d)
                | Map::PerCpuHashMap(d)
                | Map::PerCpuLruHashMap(d)
                | Map::RingBuf(d)
                | Map::SockHash(d)
                | Map::SkStorage(d)
                | Map::LpmTrie(d)
                | Map::Unsupported(d) => d,
                _ => return None,
            };
            let max_entries = data.info().ok()?.max_entries();
            Some((name.to_string(), max_entries, data.fd().as_fd().try_clone_to_owned().ok()?))
        })
        .collect()
}

fn map_memlock(fd: &std::os::fd::OwnedFd) -> u64 {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A classic tracepoint (`SEC("tracepoint/<category>/<name>")`); needs
    /// tracefs for the event id.
    TracePoint { category: &'static str, name: &'static str },
    /// A BTF-typed raw tracepoint (`SEC("tp_btf/<name>")`).
    BtfTracePoint { name: &'static str },
    /// A cgroup_skb program on the root of the cgroup v2 hierarchy, shared
    /// with other programs there (`BPF_F_ALLOW_MULTI`).
    CgroupSkb { ingress: bool },
    /// An sk_msg verdict program on the object's SOCKHASH `map`.
    SkMsg { map: &'static str },
    /// A sock_ops program on the root of the cgroup v2 hierarchy, attached
    /// only when every program in `requires` is (it starts what they must
    /// already be there for).
    SockOps { requires: &'static [&'static str] },
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::TracePoint { category, name } => write!(f, "tracepoint/{category}/{name}"),
            Hook::BtfTracePoint { name } => write!(f, "tp_btf/{name}"),
            Hook::CgroupSkb { ingress: true } => f.write_str("cgroup_skb/ingress"),
            Hook::CgroupSkb { ingress: false } => f.write_str("cgroup_skb/egress"),
            Hook::SkMsg { map } => write!(f, "sk_msg/{map}"),
            Hook::SockOps { .. } => f.write_str("sockops"),
        }
    }
}

/// One program of an object.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// The C function name.
    pub program: &'static str,
    pub hook: Hook,
    /// Tried only when the named program could not attach (a variant for
    /// older kernels).
    pub fallback_for: Option<&'static str>,
    /// What goes missing without it: the `feature` of
    /// `pmoas_feature_degraded` when no program of that feature attached
    /// for lack of privileges.
    pub feature: &'static str,
}

/// What became of one program; exported as `pmoas_ebpf_program_attached`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStatus {
    pub collector: &'static str,
    pub program: &'static str,
    pub hook: String,
    pub attached: bool,
    /// Why it is not attached.
    pub error: Option<String>,
}

impl ProgramStatus {
    /// Adds `pmoas_ebpf_program_attached` for these programs.
    pub fn export(statuses: &[ProgramStatus], out: &mut MetricSet) {
        out.declare(&PROGRAM_ATTACHED);
        for s in statuses {
            out.gauge(
                &PROGRAM_ATTACHED,
                vec![
                    ("collector", s.collector.to_string()),
                    ("program", s.program.to_string()),
                    ("hook", s.hook.clone()),
                ],
                if s.attached { 1.0 } else { 0.0 },
            );
        }
    }
}

/// Why an object could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Preflight(String),
    #[error("loading the {collector} eBPF object failed: {source}{hint}")]
    Object {
        collector: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
        hint: String,
    },
    #[error("none of the {collector} collector's eBPF programs could be attached: {details}")]
    NothingAttached { collector: &'static str, details: String, programs: Vec<ProgramStatus> },
}

/// Every (primary) program as not attached, for a collector that could not
/// load its object at all: dashboards still see each program, at 0.
pub fn unattached(collector: &'static str, specs: &[ProgramSpec], reason: &str) -> Vec<ProgramStatus> {
    specs
        .iter()
        .filter(|s| s.fallback_for.is_none())
        .map(|s| ProgramStatus {
            collector,
            program: s.program,
            hook: s.hook.to_string(),
            attached: false,
            error: Some(reason.to_string()),
        })
        .collect()
}

/// A loaded object with its attached programs; dropping it detaches them.
pub struct LoadedObject {
    pub ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    /// The links of attached tp_btf programs, to detach one and attach it
    /// again ([`Kernel::set_attached`]).
    pub links: HashMap<&'static str, BtfTracePointLinkId>,
}

/// Fills an object's maps after it is loaded and before any program is
/// attached (what the programs must find there from their first run).
pub type Prepare<'a> = &'a dyn Fn(&mut Ebpf) -> Result<(), String>;

/// A `const volatile` of an object, set before it is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    U8(u8),
    U64(u64),
}

/// Loads `object`, resizes maps, and attaches every program it can.
/// `cgroup_root` is the cgroup v2 mount, where [`Hook::CgroupSkb`]
/// programs attach. A feature whose programs all failed for lack of
/// privileges is raised in `health`, with the capability to grant.
pub fn load(
    collector: &'static str,
    object: &[u8],
    map_sizes: &[(&'static str, u32)],
    specs: &[ProgramSpec],
    cgroup_root: Option<&Path>,
    health: &Health,
    options: &LoadOptions<'_>,
) -> Result<LoadedObject, LoadError> {
    match load_object(collector, object, map_sizes, specs, cgroup_root, options) {
        Ok((loaded, failures)) => {
            let attached: Vec<&str> = loaded.programs.iter().filter(|p| p.attached).map(|p| p.program).collect();
            report_features(health, collector, specs, &attached, &failures);
            Ok(loaded)
        }
        Err((e, failures)) => {
            report_features(health, collector, specs, &[], &failures);
            Err(e)
        }
    }
}

/// Why each program failed: (program, needs a privilege it lacks, message).
type Failures = Vec<(&'static str, bool, String)>;

fn load_object(
    collector: &'static str,
    object: &[u8],
    map_sizes: &[(&'static str, u32)],
    specs: &[ProgramSpec],
    cgroup_root: Option<&Path>,
    options: &LoadOptions<'_>,
) -> Result<(LoadedObject, Failures), (LoadError, Failures)> {
    let LoadOptions { globals, prepare, .. } = options;
    let all_failed = |privileged: bool, message: &str| -> Failures {
        specs.iter().map(|s| (s.program, privileged, message.to_string())).collect()
    };
    if let Err(e) = check_privileges() {
        return Err((LoadError::Preflight(e.clone()), all_failed(true, &e)));
    }
    if let Err(e) = check_btf() {
        return Err((LoadError::Preflight(e.clone()), all_failed(false, &e)));
    }
    ensure_tracefs();
    // One kernel BTF at a time: the loader parses its own for CO-RE and
    // frees it when dropped; tp_btf programs then need it once more. Two
    // parsed copies side by side would double the exporter's peak memory,
    // and so would two collectors loading at once (they start on threads
    // of their own): one loads at a time, the others wait their turn.
    static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    let mut ebpf = {
        let mut loader = EbpfLoader::new();
        // Maps aya has no type for (the http collector's task storage) are
        // created all the same; only the programs use them.
        loader.allow_unsupported_maps();
        for (map, size) in map_sizes {
            loader.map_max_entries(map, *size);
        }
        for (name, value) in globals.iter() {
            match value {
                Global::U8(v) => loader.override_global(name, v, true),
                Global::U64(v) => loader.override_global(name, v, true),
            };
        }
        match loader.load(object) {
            Ok(ebpf) => ebpf,
            Err(source) => {
                let denied = mentions_eperm(&source);
                let hint = if denied { format!("; {}", denied_advice()) } else { String::new() };
                let e = LoadError::Object { collector, source: Box::new(source), hint };
                let failures = all_failed(denied, &e.to_string());
                return Err((e, failures));
            }
        }
    };
    if let Some(prepare) = prepare
        && let Err(e) = prepare(&mut ebpf)
    {
        let e = format!("preparing the {collector} maps: {e}");
        return Err((LoadError::Preflight(e.clone()), all_failed(false, &e)));
    }
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            let e = format!(
                "reading the kernel's BTF from /sys/kernel/btf/vmlinux failed ({e}); pmoas needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (Debian 12, Ubuntu 20.10+, RHEL 8.2+ kernels have it)"
            );
            return Err((LoadError::Preflight(e.clone()), all_failed(false, &e)));
        }
    };

    let mut failures = Failures::new();
    let mut links = HashMap::new();
    let statuses = attach_all(collector, specs, |spec| match attach(&mut ebpf, spec, &btf, cgroup_root) {
        Ok(link) => {
            links.extend(link.map(|l| (spec.program, l)));
            Ok(())
        }
        Err(f) => {
            failures.push((spec.program, f.privileged, f.message.clone()));
            Err(f.message)
        }
    });
    drop(btf);
    release_freed_memory();

    if !statuses.iter().any(|s| s.attached) {
        let details = statuses
            .iter()
            .map(|s| format!("{} ({}): {}", s.program, s.hook, s.error.as_deref().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join("; ");
        return Err((LoadError::NothingAttached { collector, details, programs: statuses }, failures));
    }
    Ok((LoadedObject { ebpf, programs: statuses, links }, failures))
}

/// Raises each feature of `specs` none of whose programs attached because
/// a privilege is missing (the reason names it), and clears the others.
/// Failures of another kind (a kernel without the hook, the verifier) are
/// on the landing page with each program, not raised here.
fn report_features(
    health: &Health,
    collector: &'static str,
    specs: &[ProgramSpec],
    attached: &[&str],
    failures: &Failures,
) {
    let mut features: Vec<&'static str> = Vec::new();
    for s in specs {
        if !features.contains(&s.feature) {
            features.push(s.feature);
        }
    }
    for feature in features {
        let programs: Vec<&'static str> = specs.iter().filter(|s| s.feature == feature).map(|s| s.program).collect();
        if programs.iter().any(|p| attached.contains(p)) {
            health.clear(collector, feature);
            continue;
        }
        match failures.iter().find(|(p, privileged, _)| *privileged && programs.contains(p)) {
            Some((program, _, message)) => {
                health.raise(collector, feature, format!("eBPF program {program} is not attached: {message}"))
            }
            None => health.clear(collector, feature),
        }
    }
}

/// Attaches each program in order with `attach`, and says what became of
/// each. A fallback is tried only when its primary failed; a primary that
/// failed but whose fallback attached is not reported (no 0 on dashboards
/// for a variant that is not needed).
fn attach_all(
    collector: &'static str,
    specs: &[ProgramSpec],
    mut attach: impl FnMut(&ProgramSpec) -> Result<(), String>,
) -> Vec<ProgramStatus> {
    let mut statuses: Vec<ProgramStatus> = Vec::new();
    for spec in specs {
        if let Some(primary) = spec.fallback_for
            && statuses.iter().any(|s| s.program == primary && s.attached)
        {
            continue;
        }
        let missing: Vec<&str> = match spec.hook {
            Hook::SockOps { requires } => {
                requires.iter().copied().filter(|r| !statuses.iter().any(|s| s.program == *r && s.attached)).collect()
            }
            _ => Vec::new(),
        };
        let result = if missing.is_empty() {
            attach(spec)
        } else {
            Err(format!("not attached because {} did not attach (see its own error)", missing.join(" and ")))
        };
        match &result {
            Err(e) => {
                tracing::warn!(collector, program = spec.program, hook = %spec.hook, error = %e, "eBPF program not attached")
            }
            Ok(()) => tracing::debug!(collector, program = spec.program, hook = %spec.hook, "eBPF program attached"),
        }
        statuses.push(ProgramStatus {
            collector,
            program: spec.program,
            hook: spec.hook.to_string(),
            attached: result.is_ok(),
            error: result.err(),
        });
    }
    let attached: Vec<&'static str> = statuses.iter().filter(|s| s.attached).map(|s| s.program).collect();
    statuses.retain(|s| {
        s.attached || !specs.iter().any(|f| f.fallback_for == Some(s.program) && attached.contains(&f.program))
    });
    statuses
}

/// Hands memory freed after loading (parsed BTF, relocation tables) back to
/// the kernel, so the exporter's resident size is what it uses, not what
/// start-up needed.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Why a program did not attach.
struct Failure {
    message: String,
    /// A privilege is missing (the message names it): a degraded feature.
    privileged: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { message, privileged: false }
    }
}

/// Loads and attaches one program; a tp_btf program's link comes back.
fn attach(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    btf: &Btf,
    cgroup_root: Option<&Path>,
) -> Result<Option<BtfTracePointLinkId>, Failure> {
    // Before the program is borrowed: the object's map, duplicated.
    let sock_map = match spec.hook {
        Hook::SkMsg { map } => Some(sock_map_fd(ebpf, map)?),
        _ => None,
    };
    let program = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| format!("program {} is not in the object (build mismatch)", spec.program))?;
    let result: Result<Option<BtfTracePointLinkId>, ProgramError> = match spec.hook {
        Hook::TracePoint { category, name } => (|| {
            let tp: &mut TracePoint = program.try_into()?;
            tp.load()?;
            tp.attach(category, name)?;
            Ok(None)
        })(),
        Hook::BtfTracePoint { name } => (|| {
            let tp: &mut BtfTracePoint = program.try_into()?;
            tp.load(name, btf)?;
            Ok(Some(tp.attach()?))
        })(),
        Hook::CgroupSkb { ingress } => {
            let root =
                cgroup_root.ok_or_else(|| format!("{} attaches to the cgroup v2 root; none is mounted", spec.hook))?;
            let dir =
                fs::File::open(root).map_err(|e| format!("opening the cgroup v2 root {}: {e}", root.display()))?;
            (|| {
                let prog: &mut CgroupSkb = program.try_into()?;
                prog.load()?;
                let kind = if ingress { CgroupSkbAttachType::Ingress } else { CgroupSkbAttachType::Egress };
                // A bpf_link on a cgroup always shares it with other programs; the
                // kernel refuses BPF_F_ALLOW_MULTI as a link flag (EINVAL).
                prog.attach(&dir, kind, CgroupAttachMode::Single)?;
                Ok(None)
            })()
        }
        Hook::SockOps { .. } => {
            let root =
                cgroup_root.ok_or_else(|| format!("{} attaches to the cgroup v2 root; none is mounted", spec.hook))?;
            let dir =
                fs::File::open(root).map_err(|e| format!("opening the cgroup v2 root {}: {e}", root.display()))?;
            (|| {
                let prog: &mut SockOps = program.try_into()?;
                prog.load()?;
                // A bpf_link (kernel 5.7+): it goes with the process, so a
                // killed exporter adds no socket to a map nobody reads.
                prog.attach(&dir, CgroupAttachMode::Single)?;
                Ok(None)
            })()
        }
        Hook::SkMsg { .. } => (|| {
            let prog: &mut SkMsg = program.try_into()?;
            prog.load()?;
            // The verdict program of this map only (a prog_attach to a map
            // no other process holds): it stays with the sockets already
            // redirected after the exporter is gone, and only with them.
            prog.attach(sock_map.as_ref().expect("an sk_msg hook has its map"))?;
            Ok(None)
        })(),
    };
    result.map_err(|e| describe_program_error(&e, spec))
}

/// A duplicate of the descriptor of the object's socket map `name`, to
/// attach a verdict program to while the object is borrowed mutably.
fn sock_map_fd(ebpf: &Ebpf, name: &str) -> Result<aya::maps::sock::SockMapFd, Failure> {
    let map = ebpf.map(name).ok_or_else(|| format!("map {name} is not in the object (build mismatch)"))?;
    let hash: aya::maps::SockHash<&MapData, pmoas_bpf::sockops::SockopsKey> =
        aya::maps::SockHash::try_from(map).map_err(|e| format!("map {name}: {e}"))?;
    Ok(hash.fd().try_clone().map_err(|e| format!("duplicating the descriptor of map {name}: {e}"))?)
}

/// A one-paragraph reason, with the verifier's last lines when it refused
/// and the capability to grant when the kernel said EPERM.
fn describe_program_error(e: &ProgramError, spec: &ProgramSpec) -> Failure {
    let denied = mentions_eperm(e);
    let hint = if denied { format!("; {}", grant(hook_capabilities(spec.hook))) } else { String::new() };
    let message = match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            tracing::debug!(program = spec.program, "verifier log:\n{log}");
            // The reason is in the last lines before the statistics trailer.
            let stats = ["verification time", "processed ", "stack depth", "max_states_per_insn"];
            let reason: Vec<&str> =
                log.lines().filter(|l| !l.trim().is_empty() && !stats.iter().any(|s| l.starts_with(s))).collect();
            let tail = reason[reason.len().saturating_sub(3)..].join(" | ");
            format!("the kernel refused {} ({io_error}): {tail}{hint}", spec.program)
        }
        other => {
            let mut msg = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            if matches!(spec.hook, Hook::TracePoint { .. })
                && let Some(problem) = tracefs_problem()
            {
                return Failure { message: format!("{msg} ({problem})"), privileged: true };
            }
            if matches!(spec.hook, Hook::TracePoint { .. }) && msg.contains("No such file") {
                msg.push_str(
                    " (classic tracepoints need tracefs: `mount -t tracefs nodev /sys/kernel/tracing`, \
                     and the kernel's syscall tracepoints, CONFIG_FTRACE_SYSCALLS)",
                );
            }
            msg.push_str(&hint);
            msg
        }
    };
    Failure { message, privileged: denied }
}

/// Did the kernel answer EPERM somewhere down this error's chain? (EACCES
/// from BPF_PROG_LOAD is the verifier's, not a privilege.)
fn mentions_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EPERM) {
            return true;
        }
        next = err.source();
    }
    false
}

/// The capabilities a non-root exporter needs, each with what needs it.
/// With exactly these it serves every series a root exporter serves. The
/// one list: the README's table, `--help` and the advice in errors come
/// from it (exporter/tests/hostile.rs checks the README against it and
/// runs the exporter with exactly these).
pub const REQUIRED_CAPABILITIES: &[(&str, &str)] = &[
    ("CAP_BPF", "loading the eBPF programs and maps, and reading the maps"),
    ("CAP_PERFMON", "attaching the tracing programs (tp_btf and syscall tracepoints)"),
    (
        "CAP_NET_ADMIN",
        "attaching the cgroup_skb programs (network bytes per container, connects REDIRECTed to a sidecar)",
    ),
    (
        "CAP_DAC_READ_SEARCH",
        "reading tracefs (root only) for the syscall tracepoints behind the accept-queue wait; \
         finding a cgroup by its id without walking the cgroup tree",
    ),
    (
        "CAP_SYS_PTRACE",
        "/proc/PID/ns/net of other users' processes, to read each pod's interface counters; \
         all of /proc/PID where /proc is mounted with hidepid",
    ),
];

/// Capabilities needed only on some hosts: (capability, when).
pub const SITUATIONAL_CAPABILITIES: &[(&str, &str)] = &[
    (
        "CAP_SYS_RESOURCE",
        "on kernels before 5.11, for the exporter to lift the locked-memory limit eBPF maps are charged to \
         beyond its hard limit",
    ),
    (
        "CAP_DAC_OVERRIDE",
        "to name containers through a Docker or Podman socket only root may open \
         (or add the exporter's user to the socket's group)",
    ),
];

/// Is a seccomp filter on this process (mode 2 in /proc/self/status)?
fn seccomp_filtered() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|v| v.trim() == "2"))
        .unwrap_or(false)
}

/// What to say when the kernel answered EPERM to loading: with the
/// capabilities present and a seccomp filter on, the filter is the likely
/// cause (older container runtimes' default profiles refuse bpf(2) to
/// CAP_BPF without CAP_SYS_ADMIN); otherwise the missing privileges.
pub fn denied_advice() -> String {
    if check_privileges().is_ok() && seccomp_filtered() {
        "the process has CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) but runs under a seccomp filter, which \
         probably refused bpf(2): older container runtimes' default profiles allow it only with CAP_SYS_ADMIN \
         (containerd before 1.6.9, Docker before 23, Podman's containers-common before 0.60); run the exporter \
         with seccomp unconfined (Kubernetes: seccompProfile Unconfined, deploy/components/seccomp-unconfined; \
         compose: security_opt seccomp=unconfined) or a profile that allows bpf and perf_event_open"
            .to_string()
    } else {
        privilege_advice()
    }
}

/// Lifts this process's locked-memory limit as far as it may go: kernels
/// before 5.11 charge eBPF maps to RLIMIT_MEMLOCK (often 64 KiB or 8 MiB),
/// and refuse maps beyond it with EPERM. Up to the hard limit needs no
/// privilege; beyond it, CAP_SYS_RESOURCE. Newer kernels charge the
/// memory cgroup instead, and the limit no longer matters. Returns the
/// soft limit in force afterwards (None: unlimited).
pub fn raise_memlock_limit() -> Option<u64> {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit/getrlimit only read or write the rlimit struct given.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return None;
        }
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut now) != 0 {
            return Some(0);
        }
        let to_hard = libc::rlimit { rlim_cur: now.rlim_max, rlim_max: now.rlim_max };
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &to_hard);
        let _ = libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut now);
        (now.rlim_cur != libc::RLIM_INFINITY).then_some(now.rlim_cur)
    }
}

/// What to do about missing privileges: run as root, or grant every
/// required capability (and the situational ones where they apply).
pub fn privilege_advice() -> String {
    let names: Vec<&str> = REQUIRED_CAPABILITIES.iter().map(|(c, _)| *c).collect();
    let setcap: Vec<String> = names.iter().map(|c| c.to_lowercase()).collect();
    let situational: Vec<String> = SITUATIONAL_CAPABILITIES.iter().map(|(c, when)| format!("{c} {when}")).collect();
    format!(
        "run pmoas-exporter as root, or with the capabilities {} (e.g. `setcap {}+ep pmoas-exporter`; in \
         Kubernetes: securityContext.privileged, or capabilities.add with these); also {}",
        names.join(", "),
        setcap.join(","),
        situational.join("; ")
    )
}

/// "grant CAP_X and CAP_Y", naming those of `caps` this process lacks
/// (all of them when it cannot tell).
pub fn grant(caps: &[&str]) -> String {
    let missing: Vec<&str> = match effective_caps() {
        Some(eff) => caps.iter().copied().filter(|c| cap_bit(c).is_some_and(|b| eff & (1u64 << b) == 0)).collect(),
        None => Vec::new(),
    };
    let names = if missing.is_empty() { caps.to_vec() } else { missing };
    format!("grant {}, or run as root", names.join(" and "))
}

/// Which capabilities attaching to `hook` takes.
fn hook_capabilities(hook: Hook) -> &'static [&'static str] {
    match hook {
        Hook::CgroupSkb { .. } | Hook::SockOps { .. } | Hook::SkMsg { .. } => &["CAP_BPF", "CAP_NET_ADMIN"],
        Hook::TracePoint { .. } | Hook::BtfTracePoint { .. } => &["CAP_BPF", "CAP_PERFMON"],
    }
}

/// Capability bits (include/uapi/linux/capability.h).
fn cap_bit(name: &str) -> Option<u32> {
    Some(match name {
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        _ => return None,
    })
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Can this process load tracing programs at all?
pub fn check_privileges() -> Result<(), String> {
    let Some(caps) = effective_caps() else {
        return Ok(());
    };
    let has = |cap: &str| cap_bit(cap).is_some_and(|b| caps & (1u64 << b) != 0);
    if has("CAP_SYS_ADMIN") || (has("CAP_BPF") && has("CAP_PERFMON")) {
        Ok(())
    } else {
        Err(format!("this process lacks the privileges to load eBPF programs: {}", privilege_advice()))
    }
}

/// Does the kernel export its BTF?
pub fn check_btf() -> Result<(), String> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing); pmoas's CO-RE programs need a kernel \
             built with CONFIG_DEBUG_INFO_BTF=y (Debian 12, Ubuntu 20.10+, RHEL 8.2+ kernels have it)"
            .into())
    }
}

/// Where tracefs is mounted, of the two places Aya looks, from
/// /proc/self/mountinfo (readable by any process, unlike tracefs itself,
/// which is root's only).
fn tracefs_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    tracefs_in(&info)
}

fn tracefs_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        let known = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].contains(&point);
        (known && right.split_whitespace().next() == Some("tracefs")).then(|| PathBuf::from(point))
    })
}

/// Why classic tracepoints cannot attach, when it is tracefs: not mounted
/// (and this process may not mount it), or mounted and root's only.
fn tracefs_problem() -> Option<String> {
    let Some(mount) = tracefs_mount() else {
        return Some(
            "tracefs is not mounted, and this process may not mount it: mount it before starting the exporter \
             (`mount -t tracefs nodev /sys/kernel/tracing`), or run the exporter as root"
                .to_string(),
        );
    };
    match fs::read_dir(&mount) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
            "tracefs at {} may be read by root only ({e}): {}",
            mount.display(),
            grant(&["CAP_DAC_READ_SEARCH"])
        )),
        _ => None,
    }
}

/// Classic tracepoints need tracefs for their event ids. Mounts it when it
/// is missing and we may; otherwise the programs that need it report why.
pub fn ensure_tracefs() {
    // Not `is_dir()` on its events: without CAP_DAC_READ_SEARCH that fails
    // on a mounted tracefs too, and mounting again would be wrong.
    if tracefs_mount().is_some() || !Path::new("/sys/kernel/tracing").is_dir() {
        return;
    }
    match nix_mount_tracefs() {
        Ok(()) => {
            tracing::info!("mounted tracefs at /sys/kernel/tracing (classic tracepoints need it)")
        }
        Err(e) => tracing::warn!(
            error = %e,
            "tracefs is not mounted and mounting it failed; classic tracepoint programs will not attach. \
             Mount it: `mount -t tracefs nodev /sys/kernel/tracing`"
        ),
    }
}

fn nix_mount_tracefs() -> std::io::Result<()> {
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// What the kernel counts about one attached program (its fdinfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_time_ns: u64,
    pub run_count: u64,
    /// Invocations skipped because the same program was already running on
    /// that CPU (a softirq interrupting a run in process context): the
    /// event is lost.
    pub recursion_misses: u64,
}

fn parse_fdinfo(text: &str) -> ProgramStats {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0)
    };
    ProgramStats {
        run_time_ns: field("run_time_ns"),
        run_count: field("run_cnt"),
        recursion_misses: field("recursion_misses"),
    }
}

/// The kernel's counters of every attached program of an object.
pub fn program_stats(ebpf: &Ebpf, programs: &[ProgramStatus]) -> Vec<(&'static str, ProgramStats)> {
    use std::os::fd::{AsFd, AsRawFd};
    programs
        .iter()
        .filter(|s| s.attached)
        .filter_map(|s| {
            let fd = ebpf.program(s.program)?.fd().ok()?.as_fd().as_raw_fd();
            let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            Some((s.program, parse_fdinfo(&text)))
        })
        .collect()
}

/// Exports per-program run counters, and the programs' recursion misses as
/// `pmoas_ebpf_events_lost_total{reason="recursion"}`.
pub fn export_program_stats(collector: &'static str, stats: &[(&'static str, ProgramStats)], out: &mut MetricSet) {
    out.declare(&PROGRAM_RUNS);
    out.declare(&PROGRAM_RUN_SECONDS);
    for (program, s) in stats {
        let labels = vec![("collector", collector.to_string()), ("program", program.to_string())];
        out.counter(&PROGRAM_RUNS, labels.clone(), s.run_count as f64);
        out.counter(&PROGRAM_RUN_SECONDS, labels, s.run_time_ns as f64 / 1e9);
    }
    let misses: u64 = stats.iter().map(|(_, s)| s.recursion_misses).sum();
    out.counter(
        &EVENTS_LOST,
        vec![("collector", collector.to_string()), ("reason", "recursion".to_string())],
        misses as f64,
    );
}

/// Every entry of a per-CPU hash map with its CPUs summed by `merge`. A key
/// deleted while the map is walked is skipped.
pub fn read_summed<K: aya::Pod, V: aya::Pod + Default>(
    map: &aya::maps::PerCpuHashMap<MapData, K, V>,
    merge: impl Fn(&mut V, &V),
) -> anyhow::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = match item {
            Ok(kv) => kv,
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut sum = V::default();
        for v in per_cpu.iter() {
            merge(&mut sum, v);
        }
        out.push((key, sum));
    }
    Ok(out)
}

/// Keeps an object's `target_cgroups` allow-map equal to the cgroups
/// discovery says are watched (`--target.*`), from now on.
pub fn follow_targets(
    collector: &'static str,
    map: aya::maps::Map,
    discovery: &pmoas_discovery::Discovery,
) -> anyhow::Result<()> {
    let map: aya::maps::HashMap<MapData, u64, u8> = aya::maps::HashMap::try_from(map)?;
    let map = std::sync::Mutex::new(map);
    discovery.subscribe_targets(Box::new(move |update: &pmoas_discovery::TargetUpdate| {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        for id in &update.removed {
            let _ = map.remove(id);
        }
        for id in &update.added {
            if let Err(e) = map.insert(id, 1, 0) {
                tracing::warn!(collector, cgroup = id, error = %e, "cannot watch a selected cgroup (target map full?)");
            }
        }
    }));
    Ok(())
}

/// Reads an object's `lost_events` map into `pmoas_ebpf_events_lost_total`.
/// Only the reasons a collector can have are exported (always, at 0 too,
/// so that alerts on them have a series to watch).
pub struct LostEvents {
    map: PerCpuArray<MapData, u64>,
    collector: &'static str,
    reasons: &'static [&'static str],
}

impl LostEvents {
    /// `reasons`: the collector's own reasons; reason `i` is slot `i` of
    /// its object's `lost_events` array (the indices its C header defines).
    pub fn take(
        collector: &'static str,
        ebpf: &mut Ebpf,
        reasons: &'static [&'static str],
    ) -> anyhow::Result<LostEvents> {
        if reasons.len() > LOST_REASON_SLOTS {
            anyhow::bail!(
                "{collector}: {} lost-event reasons, the lost_events array has {LOST_REASON_SLOTS}",
                reasons.len()
            );
        }
        let map = ebpf.take_map("lost_events").ok_or_else(|| anyhow::anyhow!("object has no lost_events map"))?;
        Ok(LostEvents { map: PerCpuArray::try_from(map)?, collector, reasons })
    }

    /// Totals per reason, summed over CPUs.
    pub fn totals(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::with_capacity(self.reasons.len());
        // An empty name: a slot no longer used (kept so others keep theirs).
        for (index, reason) in self.reasons.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let per_cpu = self.map.get(&(index as u32), 0)?;
            out.push((*reason, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    pub fn export(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        for (reason, n) in self.totals()? {
            out.counter(
                &EVENTS_LOST,
                vec![("collector", self.collector.to_string()), ("reason", reason.to_string())],
                n as f64,
            );
        }
        Ok(())
    }
}

/// What [`Kernel::load_with`] adds to [`Kernel::load`].
#[derive(Default)]
pub struct LoadOptions<'a> {
    /// `const volatile`s (to [`Kernel::load_with`]: besides the target
    /// filter, which it sets).
    pub globals: &'a [(&'static str, Global)],
    pub scope: Scope,
    pub prepare: Option<Prepare<'a>>,
}

/// Which cgroups a collector's programs act for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every cgroup, or the pods of `--target.*` when a selection is given.
    #[default]
    Selection,
    /// Pods only (the selected ones, or all): for a collector that changes
    /// traffic and must leave the host's own processes alone.
    Pods,
}

/// A collector's loaded eBPF object and what every collector does with it
/// the same way: the target filter, map sizes, attaching each program,
/// health (program states, run counters, lost events), and following the
/// watched cgroups. A collector's constructor adds only what is its own:
/// which maps it reads ([`Kernel::take_map`]) and how it folds them.
pub struct Kernel {
    collector: &'static str,
    ebpf: std::sync::Mutex<Ebpf>,
    /// Links of the tp_btf programs attached now (locked before `ebpf`).
    links: std::sync::Mutex<HashMap<&'static str, BtfTracePointLinkId>>,
    programs: Vec<ProgramStatus>,
    lost: LostEvents,
    maps: Vec<(String, u32, std::os::fd::OwnedFd)>,
}

impl Kernel {
    /// Loads the object of the collector `spec` describes, with `programs`
    /// (its whole table, or the part its settings want), map sizes from its
    /// settings, and `cgroup_root` for cgroup-attached programs. The error
    /// carries every program's state, so a collector that cannot start
    /// still reports each one.
    pub fn load(
        spec: &crate::CollectorSpec,
        ctx: &crate::BuildContext,
        map_sizes: &[(&'static str, u32)],
        programs: &'static [ProgramSpec],
        cgroup_root: Option<&Path>,
    ) -> Result<Kernel, crate::BuildError> {
        Kernel::load_with(spec, ctx, map_sizes, programs, cgroup_root, LoadOptions::default())
    }

    /// [`Kernel::load`] with more `const volatile`s, another [`Scope`], or
    /// maps to fill before the programs attach.
    pub fn load_with(
        spec: &crate::CollectorSpec,
        ctx: &crate::BuildContext,
        map_sizes: &[(&'static str, u32)],
        programs: &'static [ProgramSpec],
        cgroup_root: Option<&Path>,
        options: LoadOptions<'_>,
    ) -> Result<Kernel, crate::BuildError> {
        let LoadOptions { globals: extra_globals, scope, prepare } = options;
        let collector = spec.info.name;
        let fail = |message: String, programs: Vec<ProgramStatus>| crate::BuildError::Failed { message, programs };
        ctx.discovery.cgroupfs().v2_root().map_err(|e| {
            fail(
                format!("the {collector} collector names workloads by cgroup v2 id: {e}"),
                unattached(collector, programs, "no cgroup v2 mount"),
            )
        })?;
        let filter = scope == Scope::Pods || ctx.discovery.targets_enabled();
        let mut globals = vec![(pmoas_bpf::types::FILTER_TARGETS_GLOBAL, Global::U8(u8::from(filter)))];
        globals.extend_from_slice(extra_globals);
        let health = ctx.discovery.health();
        let options = LoadOptions { globals: &globals, scope, prepare };
        let loaded = load(collector, spec.object, map_sizes, programs, cgroup_root, health, &options).map_err(|e| {
            let states = match &e {
                LoadError::NothingAttached { programs, .. } => programs.clone(),
                other => unattached(collector, programs, &other.to_string()),
            };
            fail(e.to_string(), states)
        })?;
        let mut ebpf = loaded.ebpf;
        let states = loaded.programs;
        let maps = object_maps(&ebpf);
        let links = std::sync::Mutex::new(loaded.links);
        let lost = LostEvents::take(collector, &mut ebpf, spec.lost_reasons)
            .map_err(|e| fail(e.to_string(), states.clone()))?;
        if filter {
            let map = ebpf.take_map("target_cgroups").ok_or_else(|| {
                fail(format!("map target_cgroups missing from the {collector} object"), states.clone())
            })?;
            follow_targets(collector, map, &ctx.discovery).map_err(|e| fail(e.to_string(), states.clone()))?;
        }
        Ok(Kernel { collector, ebpf: std::sync::Mutex::new(ebpf), links, programs: states, lost, maps })
    }

    /// Detaches (`on` false) a tp_btf program that attached at load, or
    /// attaches it again: for a collector that samples by attaching its
    /// programs part of the time. A program that did not attach at load is
    /// left alone; its state stays what [`Kernel::programs`] says.
    pub fn set_attached(&self, program: &'static str, on: bool) -> anyhow::Result<()> {
        if !self.programs.iter().any(|p| p.program == program && p.attached) {
            return Ok(());
        }
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut ebpf = self.lock();
        let tp: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow::anyhow!("program {program} is not in the {} object", self.collector))?
            .try_into()?;
        match (on, links.remove(program)) {
            (true, Some(link)) => {
                links.insert(program, link);
            }
            (true, None) => {
                links.insert(program, tp.attach()?);
            }
            (false, Some(link)) => tp.detach(link)?,
            (false, None) => {}
        }
        Ok(())
    }

    /// Takes a map out of the object, typed (`PerCpuHashMap<_, K, V>`, ...).
    pub fn take_map<M>(&self, name: &str) -> Result<M, crate::BuildError>
    where
        M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let fail = |message: String| crate::BuildError::Failed { message, programs: self.programs.clone() };
        let map = self
            .lock()
            .take_map(name)
            .ok_or_else(|| fail(format!("map {name} missing from the {} object (build mismatch)", self.collector)))?;
        M::try_from(map).map_err(|e| fail(format!("map {name} of the {} object: {e}", self.collector)))
    }

    /// Every program and whether it is attached.
    pub fn programs(&self) -> &[ProgramStatus] {
        &self.programs
    }

    /// Every map of the object and the kernel memory it takes now.
    pub fn maps(&self) -> Vec<MapUsage> {
        self.maps
            .iter()
            .map(|(name, max_entries, fd)| MapUsage {
                name: name.clone(),
                max_entries: *max_entries,
                bytes: map_memlock(fd),
            })
            .collect()
    }

    /// Lost events by reason, the programs' run counters, the maps' memory.
    pub fn export_health(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        self.lost.export(out)?;
        MapUsage::export(self.collector, &self.maps(), out);
        let stats = program_stats(&self.lock(), &self.programs);
        export_program_stats(self.collector, &stats, out);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ebpf> {
        self.ebpf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memlock_limit_is_raised_to_its_hard_limit_at_least() {
        let reported = raise_memlock_limit();
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut now) }, 0);
        assert_eq!(now.rlim_cur, now.rlim_max, "soft limit raised to the hard one");
        assert_eq!(reported, (now.rlim_cur != libc::RLIM_INFINITY).then_some(now.rlim_cur));
    }

    const SPECS: &[ProgramSpec] = &[
        ProgramSpec { program: "main", hook: Hook::BtfTracePoint { name: "a" }, fallback_for: None, feature: "main" },
        ProgramSpec { program: "new", hook: Hook::BtfTracePoint { name: "b" }, fallback_for: None, feature: "b" },
        ProgramSpec {
            program: "old",
            hook: Hook::BtfTracePoint { name: "b" },
            fallback_for: Some("new"),
            feature: "b",
        },
        ProgramSpec {
            program: "syscall",
            hook: Hook::TracePoint { category: "syscalls", name: "sys_exit_accept4" },
            fallback_for: None,
            feature: "accept_wait",
        },
    ];

    fn run(fails: &[&str]) -> (Vec<(&'static str, bool)>, Vec<&'static str>) {
        let mut tried = Vec::new();
        let statuses = attach_all("t", SPECS, |spec| {
            tried.push(spec.program);
            if fails.contains(&spec.program) { Err(format!("{} refused", spec.program)) } else { Ok(()) }
        });
        (statuses.iter().map(|s| (s.program, s.attached)).collect(), tried)
    }

    #[test]
    fn fallback_only_when_the_primary_fails() {
        let (statuses, tried) = run(&[]);
        assert_eq!(tried, vec!["main", "new", "syscall"]);
        assert_eq!(statuses, vec![("main", true), ("new", true), ("syscall", true)]);

        let (statuses, tried) = run(&["new"]);
        assert_eq!(tried, vec!["main", "new", "old", "syscall"]);
        assert_eq!(
            statuses,
            vec![("main", true), ("old", true), ("syscall", true)],
            "the replaced primary is not reported"
        );
    }

    #[test]
    fn sock_ops_attaches_only_after_what_it_requires() {
        const TABLE: &[ProgramSpec] = &[
            ProgramSpec { program: "verdict", hook: Hook::SkMsg { map: "m" }, fallback_for: None, feature: "r" },
            ProgramSpec { program: "reads", hook: Hook::BtfTracePoint { name: "x" }, fallback_for: None, feature: "r" },
            ProgramSpec {
                program: "adds",
                hook: Hook::SockOps { requires: &["verdict", "reads"] },
                fallback_for: None,
                feature: "r",
            },
        ];
        let mut tried = Vec::new();
        let statuses = attach_all("t", TABLE, |spec| {
            tried.push(spec.program);
            if spec.program == "reads" { Err("no such tracepoint".into()) } else { Ok(()) }
        });
        assert_eq!(tried, vec!["verdict", "reads"], "never tried: it would add sockets nobody tracks");
        let adds = statuses.iter().find(|s| s.program == "adds").unwrap();
        assert!(!adds.attached);
        assert!(adds.error.as_deref().unwrap().contains("reads did not attach"), "{:?}", adds.error);
        let all = attach_all("t", TABLE, |_| Ok(()));
        assert!(all.iter().all(|s| s.attached));
    }

    #[test]
    fn every_failure_is_reported_with_its_reason() {
        let statuses = attach_all("t", SPECS, |spec| Err(format!("{} refused", spec.program)));
        let got: Vec<(&str, bool, Option<&str>)> =
            statuses.iter().map(|s| (s.program, s.attached, s.error.as_deref())).collect();
        assert_eq!(
            got,
            vec![
                ("main", false, Some("main refused")),
                ("new", false, Some("new refused")),
                ("old", false, Some("old refused")),
                ("syscall", false, Some("syscall refused")),
            ]
        );
        assert_eq!(statuses[3].hook, "tracepoint/syscalls/sys_exit_accept4");
    }

    #[test]
    fn unattached_lists_primaries_at_zero() {
        let s = unattached("t", SPECS, "no BTF");
        assert_eq!(s.iter().map(|p| p.program).collect::<Vec<_>>(), vec!["main", "new", "syscall"]);
        assert!(s.iter().all(|p| !p.attached && p.error.as_deref() == Some("no BTF")));
    }

    #[test]
    fn fdinfo_counters() {
        let text = "prog_type:\t26\nprog_jited:\t1\nrun_time_ns:\t820548\nrun_cnt:\t501\nrecursion_misses:\t2\nverified_insns:\t4640\n";
        assert_eq!(parse_fdinfo(text), ProgramStats { run_time_ns: 820548, run_count: 501, recursion_misses: 2 });
        assert_eq!(parse_fdinfo("garbage"), ProgramStats::default());
    }

    #[test]
    fn only_eperm_is_a_missing_privilege() {
        let syscall = |errno| {
            ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_link_create",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        assert!(mentions_eperm(&syscall(libc::EPERM)));
        assert!(!mentions_eperm(&syscall(libc::EACCES)), "EACCES is the verifier's");
        let skb =
            ProgramSpec { program: "skb", hook: Hook::CgroupSkb { ingress: true }, fallback_for: None, feature: "n" };
        let f = describe_program_error(&syscall(libc::EPERM), &skb);
        assert!(f.privileged && f.message.contains("CAP_NET_ADMIN"), "{}", f.message);
        let f = describe_program_error(&syscall(libc::ENOENT), &skb);
        assert!(!f.privileged && !f.message.contains("CAP_"), "{}", f.message);
    }

    #[test]
    fn a_feature_is_degraded_only_when_a_privilege_kept_all_its_programs_out() {
        let health = Health::default();
        let failures: Failures = vec![
            ("main", false, "the verifier said no".into()),
            ("new", true, "EPERM; grant CAP_PERFMON, or run as root".into()),
            ("old", false, "no such hook".into()),
            ("syscall", true, "tracefs may be read by root only: grant CAP_DAC_READ_SEARCH".into()),
        ];
        report_features(&health, "t", SPECS, &[], &failures);
        let got: Vec<(&str, String)> = health.notices().into_iter().map(|n| (n.feature, n.reason)).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "accept_wait");
        assert!(got[0].1.contains("syscall") && got[0].1.contains("CAP_DAC_READ_SEARCH"), "{got:?}");
        assert_eq!(got[1].0, "b");
        assert!(got[1].1.contains("CAP_PERFMON"), "{got:?}");

        // The fallback attached, the tracepoint failed for another reason
        // (on the landing page, not a privilege): both cleared.
        report_features(&health, "t", SPECS, &["main", "old"], &vec![("syscall", false, "no such hook".into())]);
        assert!(health.notices().is_empty(), "{:?}", health.notices());
    }

    #[test]
    fn capability_advice_comes_from_the_one_list() {
        let advice = privilege_advice();
        for (cap, _) in REQUIRED_CAPABILITIES.iter().chain(SITUATIONAL_CAPABILITIES) {
            assert!(advice.contains(cap), "{cap} missing from: {advice}");
            assert!(cap_bit(cap).is_some(), "{cap} has no bit: grant() could not tell whether it is missing");
        }
        assert!(advice.contains("setcap cap_bpf,cap_perfmon,cap_net_admin,cap_dac_read_search,cap_sys_ptrace+ep"));
        assert!(!grant(&["CAP_BPF"]).is_empty());
    }

    #[test]
    fn tracefs_is_found_where_aya_looks() {
        let info = "22 1 0:20 / /sys rw - sysfs sysfs rw\n\
                    40 22 0:12 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n";
        assert_eq!(tracefs_in(info), Some(PathBuf::from("/sys/kernel/tracing")));
        assert_eq!(tracefs_in("41 1 0:12 / /mnt/trace rw - tracefs nodev rw\n"), None);
        assert_eq!(tracefs_in("22 1 0:20 / /sys rw - sysfs sysfs rw\n"), None);
    }
}
