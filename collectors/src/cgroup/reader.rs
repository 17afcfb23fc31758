//! cgroup collector, reading side: the cgroupfs files of every known
//! cgroup and the interface counters of every pod, read on each scrape or,
//! with `read_interval`, in the background on a timer.
//!
//! Each read ends in a [`Snapshot`] that scrapes turn into series. Reading
//! is the collector's cost: at 1,100 pods (4,400 cgroups, 17,600 files on
//! a hybrid host) about 120 ms of a 150 ms scrape on 2 CPUs, most of it the
//! kernel formatting the files. Read in the background, a scrape costs only
//! the series (14 ms at that size), and the values are at most one
//! interval old; the CPU is the same per read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use pmoas_discovery::{Discovery, KnownCgroup, cgroupfs, netns, process};

use super::files::{self, Opened, Plan, Stats};
use super::netdev;
use super::paths::PathMap;
use crate::ebpf;

/// Threads that read cgroupfs at once, at most; and the fewest cgroups
/// worth a thread of their own.
const MAX_READ_THREADS: usize = 4;
const MIN_CGROUPS_PER_THREAD: usize = 32;

/// Attempts to find a cgroup's v1 directories before settling for what
/// was found (a runtime that does not create every v1 directory).
const DIR_ATTEMPTS: u8 = 5;

/// Where the files are and what the collector's programs already count.
pub(super) struct ReadConfig {
    pub discovery: Arc<Discovery>,
    pub v2_root: PathBuf,
    pub v1_roots: BTreeMap<String, PathBuf>,
    /// OOM kills and block I/O come from the kernel side: not read here.
    pub oom: bool,
    pub block_io: bool,
}

/// One cgroup's last good reading and its sources.
#[derive(Clone, Copy)]
pub(super) struct CgroupReading {
    pub stats: Stats,
    pub plan: Plan,
}

/// A pod's interfaces, last read.
#[derive(Clone)]
pub(super) struct PodReading {
    /// namespace, pod
    pub labels: (String, String),
    pub interfaces: Vec<netdev::Interface>,
}

/// What one read found: every tracked cgroup (a vanished one keeps its last
/// values for the discovery grace period), every pod's interfaces, the
/// files that could not be read so far, and when and how long.
#[derive(Default)]
pub(super) struct Snapshot {
    pub cgroups: HashMap<u64, CgroupReading>,
    pub pods: Vec<PodReading>,
    pub read_errors: BTreeMap<&'static str, u64>,
    /// Wall-clock time the read ended; `None` before the first.
    pub read_at: Option<SystemTime>,
    pub took: Duration,
}

/// The reading side: its state, locked while a read runs, and the last
/// snapshot, which scrapes take without waiting for a read.
pub(super) struct Reader {
    config: ReadConfig,
    state: Mutex<ReadState>,
    published: Mutex<Arc<Snapshot>>,
}

impl Reader {
    pub fn new(config: ReadConfig) -> Reader {
        Reader { config, state: Mutex::new(ReadState::default()), published: Mutex::new(Arc::default()) }
    }

    /// Reads everything known now and publishes it.
    pub fn read(&self, known: &[KnownCgroup]) -> Arc<Snapshot> {
        self.read_locked(&mut lock(&self.state), known)
    }

    fn read_locked(&self, state: &mut ReadState, known: &[KnownCgroup]) -> Arc<Snapshot> {
        let started = Instant::now();
        state.read(&self.config, known);
        let snapshot = Arc::new(state.snapshot(started.elapsed()));
        *lock(&self.published) = snapshot.clone();
        snapshot
    }

    /// The last snapshot. Before the first one the caller reads, or waits
    /// for the read under way and takes its snapshot.
    pub fn last(&self, known: &[KnownCgroup]) -> Arc<Snapshot> {
        let last = lock(&self.published).clone();
        if last.read_at.is_some() {
            return last;
        }
        let mut state = lock(&self.state);
        let last = lock(&self.published).clone();
        if last.read_at.is_some() { last } else { self.read_locked(&mut state, known) }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The known cgroups the collector serves (those of selected workloads
/// when targets are configured).
pub(super) fn known(discovery: &Discovery) -> Vec<KnownCgroup> {
    let filter = discovery.targets_enabled();
    discovery.cgroups().into_iter().filter(|k| !filter || k.workload.selected).collect()
}

/// Reads every `interval` until `stop` is dropped (the collector was).
pub(super) fn spawn(reader: Arc<Reader>, interval: Duration, stop: Receiver<()>) -> std::io::Result<()> {
    std::thread::Builder::new().name("pmoas-cgroup-read".into()).spawn(move || {
        loop {
            let started = Instant::now();
            reader.read(&known(&reader.config.discovery));
            let rest = interval.saturating_sub(started.elapsed());
            if !matches!(stop.recv_timeout(rest), Err(RecvTimeoutError::Timeout)) {
                return;
            }
        }
    })?;
    Ok(())
}

/// One known cgroup: where its files are, what they feed, and its last
/// good values (served after it vanished, for the grace period).
struct Tracked {
    opened: Opened,
    plan: Plan,
    attempts: u8,
    complete: bool,
    last: Stats,
    /// Files that were missing on the last read: counted as read errors
    /// only if the cgroup is still there now (a cgroup being removed loses
    /// its files one by one before its directory goes).
    missing: Vec<&'static str>,
}

/// A pod's interfaces, last read.
struct PodInterfaces {
    labels: (String, String),
    interfaces: Vec<netdev::Interface>,
    /// The process read through, and its network namespace inode.
    reader: Option<(u32, u64)>,
}

/// What one read's look-ups of v1 paths through processes met.
#[derive(Default)]
struct V1Lookups {
    /// A process whose cgroups could be read.
    seen: bool,
    /// The first refusal: the PID and the error.
    denied: Option<(u32, String)>,
}

#[derive(Default)]
struct ReadState {
    tracked: HashMap<u64, Tracked>,
    paths: PathMap,
    pods: HashMap<String, PodInterfaces>,
    read_errors: BTreeMap<&'static str, u64>,
    /// This read's look-ups of `/proc/<pid>/cgroup`.
    v1_lookups: V1Lookups,
    buf: String,
}

impl ReadState {
    fn read(&mut self, c: &ReadConfig, known: &[KnownCgroup]) {
        let known_ids: HashSet<u64> = known.iter().map(|k| k.id).collect();
        self.tracked.retain(|id, _| known_ids.contains(id));
        self.v1_lookups = V1Lookups::default();
        for k in known {
            self.prepare(c, k);
        }
        self.report_v1_lookups(&c.discovery);
        self.read_all(known);
        self.read_pods(c, known);
    }

    fn snapshot(&self, took: Duration) -> Snapshot {
        Snapshot {
            cgroups: self.tracked.iter().map(|(id, t)| (*id, CgroupReading { stats: t.last, plan: t.plan })).collect(),
            pods: self
                .pods
                .values()
                .filter(|p| !p.interfaces.is_empty())
                .map(|p| PodReading { labels: p.labels.clone(), interfaces: p.interfaces.clone() })
                .collect(),
            read_errors: self.read_errors.clone(),
            read_at: Some(SystemTime::now()),
            took,
        }
    }

    /// First sight of a cgroup (or another try at its v1 directories):
    /// finds its directories and decides its sources.
    fn prepare(&mut self, c: &ReadConfig, k: &KnownCgroup) {
        let retry = self.tracked.get(&k.id).is_none_or(|t| !t.complete && t.attempts < DIR_ATTEMPTS);
        if !retry || !k.live {
            return;
        }
        let v2_dir = c.v2_root.join(k.relative_path.trim_start_matches('/'));
        // Removed since discovery's walk: there is nothing to decide from
        // (every source would say none); it keeps what it had.
        if !v2_dir.is_dir() {
            return;
        }
        let procfs = c.discovery.procfs();
        // Only v1 directories are looked up through a process.
        let pid = if c.v1_roots.is_empty() { None } else { process::cgroup_pids(&v2_dir).first().copied() };
        let own = match pid {
            Some(pid) => match cgroupfs::process_cgroups(procfs, pid) {
                Ok(own) => {
                    self.v1_lookups.seen = true;
                    own
                }
                Err(e) => {
                    if process::is_denied(procfs, &e) {
                        self.v1_lookups.denied.get_or_insert_with(|| (pid, e.to_string()));
                    }
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let (dirs, complete) = self.paths.dirs(&c.v2_root, &c.v1_roots, &k.relative_path, &own);
        let controllers = files::read_into(&dirs.v2.join("cgroup.controllers"), &mut self.buf)
            .map(|()| self.buf.clone())
            .unwrap_or_default();
        let plan = Plan::decide(&controllers, &dirs, c.oom, c.block_io);
        let t = self.tracked.entry(k.id).or_insert_with(|| Tracked {
            opened: Opened::default(),
            plan,
            attempts: 0,
            complete: false,
            last: Stats::default(),
            missing: Vec::new(),
        });
        t.opened = Opened::new(dirs, &plan);
        t.plan = plan;
        t.complete = complete;
        t.attempts = t.attempts.saturating_add(1);
    }

    /// On a hybrid host a container's v1 directories are found through
    /// `/proc/<pid>/cgroup` of its processes; where that was refused, the
    /// cgroups whose v1 paths differ from their v2 path go without memory
    /// and throttling series. Raised while refusals happen, cleared when a
    /// process could be read and none was refused; a scrape that looked at
    /// no process says nothing.
    fn report_v1_lookups(&self, discovery: &Discovery) {
        let health = discovery.health();
        match &self.v1_lookups.denied {
            Some((pid, e)) => health.raise(
                super::INFO.name,
                "cgroup_v1",
                format!(
                    "the v1 cgroups of containers cannot be found through their processes ({}/{pid}/cgroup: {e}); \
                     where they differ from the v2 path, memory and CPU throttling series are missing; {}",
                    discovery.procfs().display(),
                    ebpf::grant(&["CAP_SYS_PTRACE"])
                ),
            ),
            None if self.v1_lookups.seen => health.clear(super::INFO.name, "cgroup_v1"),
            None => {}
        }
    }

    /// Reads the files of every live known cgroup, spread over the CPUs
    /// (each read is three system calls, tens of microseconds on a VM; see
    /// BENCHMARKS.md), and keeps each one's whole reading as its last.
    fn read_all(&mut self, known: &[KnownCgroup]) {
        let jobs: Vec<(u64, &str, &Tracked)> = known
            .iter()
            .filter(|k| k.live)
            .filter_map(|k| self.tracked.get(&k.id).map(|t| (k.id, k.relative_path.as_str(), t)))
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_READ_THREADS);
        let per_thread = jobs.len().div_ceil(threads).max(MIN_CGROUPS_PER_THREAD);
        let results: Vec<_> = if jobs.len() <= per_thread {
            read_chunk(&jobs)
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> =
                    jobs.chunks(per_thread).map(|chunk| scope.spawn(move || read_chunk(chunk))).collect();
                // A reader thread cannot panic on a file's content: the
                // parsers take any text. Should one die, its cgroups keep
                // their last values this scrape.
                handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
            })
        };
        for (id, path, result) in results {
            let Some(t) = self.tracked.get_mut(&id) else { continue };
            // Still there after files went missing last time: that was no
            // removal, it counts.
            let missed_before = !t.missing.is_empty();
            for file in t.missing.drain(..) {
                if t.opened.dirs.v2.exists() {
                    tracing::debug!(cgroup = %path, file, "cgroup file was missing");
                    *self.read_errors.entry(file).or_default() += 1;
                }
            }
            match result {
                Ok((stats, errors)) => {
                    let mut complete = true;
                    for e in errors {
                        if e.looks_removed() {
                            t.missing.push(e.file);
                            complete = false;
                        } else {
                            tracing::debug!(cgroup = %path, file = e.file, error = %e.error, "cgroup file unreadable");
                            *self.read_errors.entry(e.file).or_default() += 1;
                        }
                    }
                    // A partial reading of a cgroup on its way out would
                    // drop series for a scrape: keep the last whole one,
                    // once (a file that stays missing is no removal).
                    if complete || missed_before {
                        t.last = stats;
                    }
                }
                // Vanished between discovery's walk and now: its last values.
                Err(None) => {}
                Err(Some(e)) if files::looks_removed(&e) => t.missing.push("cpu.stat"),
                Err(Some(e)) => {
                    tracing::debug!(cgroup = %path, error = %e, "cgroup unreadable");
                    *self.read_errors.entry("cpu.stat").or_default() += 1;
                }
            }
        }
    }

    /// Each pod's interface counters, through a process of the pod found
    /// once and kept while it lives (looking again costs a read of
    /// `cgroup.procs` per container). Without ptrace access to other
    /// users' processes the pods' namespaces cannot be told apart: that is
    /// raised as `cgroup`/`pod_network`, and cleared once they can.
    fn read_pods(&mut self, c: &ReadConfig, known: &[KnownCgroup]) {
        let procfs = c.discovery.procfs();
        let mut pods: HashMap<&str, ((String, String), Vec<&KnownCgroup>)> = HashMap::new();
        for k in known.iter().filter(|k| k.live) {
            if let Some(uid) = &k.workload.pod_uid {
                let labels = (k.workload.namespace.clone(), k.workload.pod.clone());
                pods.entry(uid).or_insert_with(|| (labels, Vec::new())).1.push(k);
            }
        }
        // Pods gone past the grace period leave; the others keep their last
        // counters until a process of theirs can be read again.
        let known_pods: HashSet<&str> = known.iter().filter_map(|k| k.workload.pod_uid.as_deref()).collect();
        self.pods.retain(|uid, _| known_pods.contains(uid.as_str()));
        // The first refusal of a pod's process, as "path: error"; and
        // whether any pod's namespace could be read (a scrape that looked
        // at no process says nothing either way).
        let mut denied: Option<String> = None;
        let mut read_any = false;
        // The node's namespace, to skip host-network pods. PID 1 is not
        // evidence of a missing capability: some hosts' init may not be
        // looked into even by root. Our own namespace is the node's when
        // the exporter runs on the host network, as it should.
        let host_netns = netns::inode(procfs, 1).or_else(|_| netns::own_inode(procfs)).ok();
        for (uid, (labels, cgroups)) in pods {
            let cached = self.pods.get(uid).and_then(|p| p.reader);
            let reader = match cached {
                Some((pid, ns)) if netns_of(procfs, pid, &mut denied) == Some(ns) => Some((pid, ns)),
                _ => cgroups.iter().find_map(|k| {
                    let dir = c.v2_root.join(k.relative_path.trim_start_matches('/'));
                    let pid = *process::cgroup_pids(&dir).first()?;
                    Some((pid, netns_of(procfs, pid, &mut denied)?))
                }),
            };
            read_any |= reader.is_some();
            // No process: nothing to read.
            let Some((pid, netns)) = reader else {
                if let Some(p) = self.pods.get_mut(uid) {
                    p.reader = None;
                }
                continue;
            };
            // A host-network pod: its "interfaces" are the node's. Its
            // process is kept all the same, so that the next scrape knows
            // it from one readlink instead of reading its containers'
            // cgroup.procs (about 4% of a scrape's CPU at 1,100 such pods).
            if Some(netns) == host_netns {
                self.pods.insert(uid.to_string(), PodInterfaces { labels, interfaces: Vec::new(), reader });
                continue;
            }
            let path = procfs.join(pid.to_string()).join("net/dev");
            match files::read_into(&path, &mut self.buf) {
                Ok(()) => {
                    let interfaces = netdev::parse(&self.buf);
                    self.pods.insert(uid.to_string(), PodInterfaces { labels, interfaces, reader: Some((pid, netns)) });
                }
                Err(e) if process::is_denied(procfs, &e) => {
                    denied.get_or_insert_with(|| format!("{}: {e}", path.display()));
                    *self.read_errors.entry("net/dev").or_default() += 1;
                }
                // The process just exited: keep the last reading, look
                // for another process next time.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(p) = self.pods.get_mut(uid) {
                        p.reader = None;
                    }
                }
                Err(_) => *self.read_errors.entry("net/dev").or_default() += 1,
            }
        }
        let health = c.discovery.health();
        match denied {
            Some(why) => health.raise(
                super::INFO.name,
                "pod_network",
                format!(
                    "the pods' network namespaces cannot be read ({why}), so the pmoas_pod_network_* series are \
                     missing; {}",
                    ebpf::grant(&["CAP_SYS_PTRACE"])
                ),
            ),
            None if read_any => health.clear(super::INFO.name, "pod_network"),
            None => {}
        }
    }
}

/// The network namespace of `pid`; a refusal (not a process that is gone)
/// is kept in `denied`, the first one as "path: error".
fn netns_of(procfs: &std::path::Path, pid: u32, denied: &mut Option<String>) -> Option<u64> {
    match netns::inode(procfs, pid) {
        Ok(ns) => Some(ns),
        Err(e) => {
            if denied.is_none() && process::is_denied(procfs, &e) {
                *denied = Some(format!("{}/{pid}/ns/net: {e}", procfs.display()));
            }
            None
        }
    }
}

type Reading = Result<(Stats, Vec<files::ReadError>), Option<std::io::Error>>;

/// Reads a share of the cgroups on one thread, with its own buffer.
fn read_chunk<'a>(chunk: &[(u64, &'a str, &Tracked)]) -> Vec<(u64, &'a str, Reading)> {
    let mut buf = String::with_capacity(4096);
    chunk.iter().map(|(id, path, t)| (*id, *path, files::read(&t.opened, &t.plan, &mut buf))).collect()
}
