//! Who owns a cgroup: the `namespace`, `pod`, `container` and `role` labels
//! of every per-workload series.
//!
//! Kernel programs key everything by cgroup v2 id; collectors ask
//! [`Discovery::lookup`] at scrape time, so a workload that appeared after
//! its first event, or metadata that arrived late, never mislabels a series.
//!
//! Sources, most specific first (this crate has the last two; the Kubernetes
//! API and container engines come with the discovery issue):
//! - cgroup path layouts of kubelet, containerd, CRI-O, Docker and Podman
//!   ([`layout`]): pod UID and container ID;
//! - process names ([`process`]): a container running a known proxy is the
//!   pod's sidecar, every other container of a pod is an app.
//!
//! Without a pod, `namespace`, `pod` and `role` are empty and `container` is
//! the cgroup's last path component (a systemd unit, for example).

pub mod cgroupfs;
pub mod layout;
pub mod netns;
pub mod process;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use cgroupfs::{CgroupFs, NoCgroupV2};
use layout::CgroupOwner;

/// A container's role in its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Sidecar,
    App,
    /// Outside any pod, or a pod-level cgroup.
    None,
}

impl Role {
    /// The value of the `role` label.
    pub fn as_label(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::App => "app",
            Role::None => "",
        }
    }
}

/// The labels of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub role: Role,
    /// The pod's identity (Kubernetes UID, Podman pod id) for "same pod?"
    /// questions; `None` outside pods.
    pub pod_uid: Option<String>,
}

impl Workload {
    /// The node itself: no cgroup (id 0), the root cgroup, or a workload
    /// that can no longer be named.
    pub fn node() -> Workload {
        Workload {
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
            role: Role::None,
            pod_uid: None,
        }
    }

    /// Are both in the same pod?
    pub fn same_pod(&self, other: &Workload) -> bool {
        self.pod_uid.is_some() && self.pod_uid == other.pod_uid
    }
}

/// Settings of discovery (config file `[discovery]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Where the host's /proc is (a DaemonSet mounts it at /host/proc).
    pub procfs: PathBuf,
    /// The cgroup v2 mount; found in /proc/self/mountinfo when unset.
    pub cgroup2: Option<PathBuf>,
    /// How long the series of a workload that is gone keep being served.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How often the cgroup tree is rescanned for new and gone containers.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            procfs: PathBuf::from("/proc"),
            cgroup2: None,
            grace_period: Duration::from_secs(300),
            rescan_interval: Duration::from_secs(5),
        }
    }
}

/// What [`Discovery::lookup`] knows of a cgroup id.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// The cgroup exists.
    Live(Arc<Workload>),
    /// The cgroup is gone, but less than the grace period ago.
    Gone(Arc<Workload>),
    /// Never seen, or gone longer than the grace period.
    Unknown,
}

impl Lookup {
    pub fn workload(&self) -> Option<&Arc<Workload>> {
        match self {
            Lookup::Live(w) | Lookup::Gone(w) => Some(w),
            Lookup::Unknown => None,
        }
    }
}

/// Counts for `pmoas_discovery_workloads{source,kind}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    pub pods: usize,
    pub containers: usize,
}

struct Entry {
    workload: Arc<Workload>,
    relative_path: String,
    gone_since: Option<Instant>,
    /// The role came from processes we saw; otherwise ask again later.
    role_settled: bool,
}

/// The cgroup id -> workload map, kept up to date by [`Discovery::rescan`].
pub struct Discovery {
    fs: CgroupFs,
    procfs: PathBuf,
    grace: Duration,
    entries: Mutex<HashMap<u64, Entry>>,
}

const NODE_ID: u64 = 0;

impl Discovery {
    pub fn new(config: &DiscoveryConfig) -> std::io::Result<Discovery> {
        Ok(Self::with_cgroupfs(CgroupFs::detect(config.cgroup2.as_deref())?, config))
    }

    pub fn with_cgroupfs(fs: CgroupFs, config: &DiscoveryConfig) -> Discovery {
        Discovery { fs, procfs: config.procfs.clone(), grace: config.grace_period, entries: Mutex::new(HashMap::new()) }
    }

    pub fn cgroupfs(&self) -> &CgroupFs {
        &self.fs
    }

    /// The labels of a cgroup id, O(1) for every id seen before.
    pub fn lookup(&self, id: u64) -> Lookup {
        if id == NODE_ID {
            static NODE: std::sync::OnceLock<Arc<Workload>> = std::sync::OnceLock::new();
            return Lookup::Live(NODE.get_or_init(|| Arc::new(Workload::node())).clone());
        }
        let mut entries = self.lock();
        if let Some(e) = entries.get(&id) {
            return match e.gone_since {
                None => Lookup::Live(e.workload.clone()),
                Some(_) => Lookup::Gone(e.workload.clone()),
            };
        }
        match self.fs.path_of(id) {
            Ok(path) => {
                let entry = self.entry_for(&path);
                let w = entry.workload.clone();
                entries.insert(id, entry);
                Lookup::Live(w)
            }
            Err(_) => Lookup::Unknown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry_for(&self, relative_path: &str) -> Entry {
        let owner = layout::parse(relative_path);
        let (workload, role_settled) = match owner {
            CgroupOwner::Container(c) => {
                let short = c.container_id.chars().take(12).collect::<String>();
                let (role, settled) = match &c.pod_uid {
                    Some(_) => {
                        match self.fs.v2_dir(relative_path).and_then(|d| process::runs_sidecar(&self.procfs, &d)) {
                            Some(true) => (Role::Sidecar, true),
                            Some(false) => (Role::App, true),
                            None => (Role::App, false),
                        }
                    }
                    None => (Role::None, true),
                };
                let w = Workload {
                    namespace: String::new(),
                    pod: c.pod_uid.clone().unwrap_or_default(),
                    container: short,
                    role,
                    pod_uid: c.pod_uid,
                };
                (w, settled)
            }
            CgroupOwner::Pod { pod_uid, .. } => {
                (Workload { pod: pod_uid.clone(), pod_uid: Some(pod_uid), ..Workload::node() }, true)
            }
            CgroupOwner::Other => {
                let last = relative_path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
                (Workload { container: last.to_string(), ..Workload::node() }, true)
            }
        };
        Entry { workload: Arc::new(workload), relative_path: relative_path.to_string(), gone_since: None, role_settled }
    }

    /// Walks the v2 tree: registers every container and pod cgroup, marks
    /// the ones that disappeared, forgets those gone longer than the grace
    /// period, and settles roles of containers whose processes started since.
    pub fn rescan(&self) {
        let Ok(root) = self.fs.v2_root() else { return };
        let root = root.to_path_buf();
        let mut present: HashMap<u64, String> = HashMap::new();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let rel = format!("/{}", dir.strip_prefix(&root).unwrap_or(Path::new("")).display());
            present.insert(meta.ino(), rel);
            // Container cgroups sit a handful of levels deep; bound the walk.
            if depth >= 8 {
                continue;
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }

        let now = Instant::now();
        let mut entries = self.lock();
        // Entries below the walk's depth bound: ask the filesystem directly.
        for (id, e) in entries.iter() {
            if !present.contains_key(id) {
                let here = self.fs.v2_dir(&e.relative_path).and_then(|d| fs::metadata(d).ok()).map(|m| m.ino());
                if here == Some(*id) {
                    present.insert(*id, e.relative_path.clone());
                }
            }
        }
        for (id, rel) in &present {
            match entries.get_mut(id) {
                Some(e) => {
                    e.gone_since = None;
                    if !e.role_settled {
                        *e = self.entry_for(&e.relative_path.clone());
                    }
                }
                None => {
                    if !matches!(layout::parse(rel), CgroupOwner::Other) {
                        entries.insert(*id, self.entry_for(rel));
                    }
                }
            }
        }
        entries.retain(|id, e| {
            if present.contains_key(id) {
                return true;
            }
            let since = *e.gone_since.get_or_insert(now);
            now.duration_since(since) < self.grace
        });
    }

    /// Live pods and containers known now.
    pub fn stats(&self) -> DiscoveryStats {
        let entries = self.lock();
        let mut pods = HashSet::new();
        let mut containers = 0;
        for e in entries.values().filter(|e| e.gone_since.is_none()) {
            if let Some(uid) = &e.workload.pod_uid {
                pods.insert(uid.clone());
                if !e.workload.container.is_empty() {
                    containers += 1;
                }
            } else if !e.workload.container.is_empty()
                && matches!(layout::parse(&e.relative_path), CgroupOwner::Container(_))
            {
                containers += 1;
            }
        }
        DiscoveryStats { pods: pods.len(), containers }
    }

    /// One live process of every known pod (to look into its network
    /// namespace through /proc/<pid>/net).
    pub fn pod_pids(&self) -> Vec<(String, u32)> {
        let entries = self.lock();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in entries.values().filter(|e| e.gone_since.is_none()) {
            let Some(uid) = &e.workload.pod_uid else {
                continue;
            };
            if seen.contains(uid) {
                continue;
            }
            let Some(dir) = self.fs.v2_dir(&e.relative_path) else {
                continue;
            };
            if let Some(pid) = process::cgroup_pids(&dir).first() {
                seen.insert(uid.clone());
                out.push((uid.clone(), *pid));
            }
        }
        out
    }

    /// The procfs this discovery reads.
    pub fn procfs(&self) -> &Path {
        &self.procfs
    }
}

#[cfg(test)]
mod tests;
