//! Who owns a cgroup: the `namespace`, `pod`, `container` and `role` labels
//! of every per-workload series, and which workloads are watched.
//!
//! Kernel programs key everything by cgroup v2 id; collectors ask
//! [`Discovery::lookup`] at scrape time (O(1) for every id seen before), so
//! a workload that appeared after its first event, or metadata that arrived
//! late, never mislabels a series.
//!
//! Sources, the most specific first:
//! - the Kubernetes API ([`kubernetes`]): this node's pods, joined to cgroups
//!   by container id (`containerStatuses[].containerID`) and pod UID;
//! - container engines ([`engine`], the Docker-compatible API of Docker and
//!   Podman): names, images, labels, Podman pods, Compose projects;
//! - the cgroup path itself ([`layout`]: kubelet, containerd, CRI-O, Docker,
//!   Podman layouts) and process names ([`process`]).
//!
//! Roles come from [`classify`]; the watched set from [`target`].

pub mod cgroupfs;
pub mod classify;
pub mod engine;
pub mod health;
pub mod hostpath;
pub mod kubernetes;
pub mod layout;
pub mod metadata;
pub mod netns;
pub mod process;
pub mod target;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use cgroupfs::{CgroupFs, NoCgroupV2};
pub use classify::{Classifier, SidecarConfig, SidecarMode, SidecarRule};
pub use engine::EngineConfig;
pub use health::{Health, Notice};
pub use kubernetes::KubernetesConfig;
use layout::CgroupOwner;
pub use metadata::{MetadataStore, Source};
pub use target::{TargetConfig, Targets};

/// Use a source: `auto` (when it is configured or present), always, never.
/// Written `auto`, `true`/`on`/`yes` or `false`/`off`/`no`, quoted or not.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    #[default]
    Auto,
    True,
    False,
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Toggle, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Toggle::True),
            Raw::Bool(false) => Ok(Toggle::False),
            Raw::Text(t) => match t.to_ascii_lowercase().as_str() {
                "auto" => Ok(Toggle::Auto),
                "true" | "on" | "yes" => Ok(Toggle::True),
                "false" | "off" | "no" => Ok(Toggle::False),
                other => Err(serde::de::Error::custom(format!("`{other}`: expected auto, true or false"))),
            },
        }
    }
}

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
    /// The pod's identity (Kubernetes UID, Podman pod id, `compose:<project>`)
    /// for "same pod?" questions; `None` outside pods.
    pub pod_uid: Option<String>,
    pub image: String,
    /// Which sidecar it is (`istio`, `linkerd`, ..., a custom kind); empty
    /// for apps.
    pub sidecar_kind: String,
    /// The source that named it.
    pub source: Source,
    /// Watched under the target selection.
    pub selected: bool,
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
            image: String::new(),
            sidecar_kind: String::new(),
            source: Source::Cgroupfs,
            selected: true,
        }
    }

    /// Are both in the same pod?
    pub fn same_pod(&self, other: &Workload) -> bool {
        self.pod_uid.is_some() && self.pod_uid == other.pod_uid
    }

    /// A container (of a pod or not), as opposed to a pod-level cgroup or a
    /// host process.
    pub fn is_container(&self) -> bool {
        !self.container.is_empty() && (self.pod_uid.is_some() || self.source != Source::Cgroupfs)
    }
}

/// Settings of discovery itself (config file `[discovery]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Where the host's /proc is (a DaemonSet mounts it at /host/proc).
    pub procfs: PathBuf,
    /// The cgroup v2 mount; found in /proc/self/mountinfo when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// Everything discovery is configured by.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub discovery: DiscoveryConfig,
    pub kubernetes: KubernetesConfig,
    pub engine: EngineConfig,
    pub sidecar: SidecarConfig,
    pub target: TargetConfig,
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

/// A container or pod cgroup discovery knows, from [`Discovery::cgroups`].
#[derive(Clone, Debug)]
pub struct KnownCgroup {
    /// The cgroup v2 id.
    pub id: u64,
    /// Its path below the v2 mount, starting with `/`.
    pub relative_path: String,
    pub workload: Arc<Workload>,
    /// `false` once the cgroup is gone (served until the grace period ends).
    pub live: bool,
}

/// A change of the watched cgroups (the cgroups of the selected pods, or of
/// every pod without a selection), for the kernel's allow-maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetUpdate {
    pub added: Vec<u64>,
    pub removed: Vec<u64>,
}

type TargetSubscriber = Box<dyn Fn(&TargetUpdate) + Send + Sync>;

struct Entry {
    workload: Arc<Workload>,
    relative_path: String,
    /// The metadata generation the workload was resolved at.
    generation: u64,
    gone_since: Option<Instant>,
    /// Resolved without the processes it will run: look again.
    settled: bool,
    /// Its path names a container (kept: stats() asks on every scrape).
    container_cgroup: bool,
}

/// The cgroup id -> workload map, kept up to date by [`Discovery::rescan`]
/// and the metadata sources.
pub struct Discovery {
    fs: CgroupFs,
    procfs: PathBuf,
    grace: Duration,
    rescan_interval: Duration,
    store: Arc<MetadataStore>,
    /// Replaced whole on reload (SIGHUP); readers take the Arc.
    classifier: RwLock<Arc<Classifier>>,
    targets: RwLock<Arc<Targets>>,
    kubernetes: KubernetesConfig,
    engine: EngineConfig,
    entries: Mutex<HashMap<u64, Entry>>,
    errors: HashMap<Source, Arc<AtomicU64>>,
    selected: Mutex<HashSet<u64>>,
    subscribers: Mutex<Vec<TargetSubscriber>>,
    resolved_generation: AtomicU64,
    kick_tx: Mutex<Sender<()>>,
    kick_rx: Mutex<Option<Receiver<()>>>,
    health: Health,
    /// Are the paths the host's own (so a wrong type is an error)? Not for
    /// the fake trees of unit tests.
    host_paths: bool,
}

const NODE_ID: u64 = 0;

/// Why discovery cannot start.
#[derive(Debug)]
pub struct DiscoveryError(pub String);

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DiscoveryError {}

impl Discovery {
    /// Discovery of this host. A `procfs` or `cgroup2` path that is not a
    /// mount of that filesystem is an error: it would name workloads wrongly.
    pub fn new(settings: &Settings) -> Result<Discovery, DiscoveryError> {
        hostpath::check_procfs(&settings.discovery.procfs).map_err(DiscoveryError)?;
        if let Some(v2) = &settings.discovery.cgroup2 {
            hostpath::check_cgroup2(v2).map_err(DiscoveryError)?;
        }
        let fs = CgroupFs::detect(settings.discovery.cgroup2.as_deref())
            .map_err(|e| DiscoveryError(format!("reading /proc/self/mountinfo: {e}")))?;
        let mut d = Self::with_cgroupfs(fs, settings)?;
        d.host_paths = true;
        Ok(d)
    }

    pub fn with_cgroupfs(fs: CgroupFs, settings: &Settings) -> Result<Discovery, DiscoveryError> {
        let classifier = Classifier::new(&settings.sidecar).map_err(DiscoveryError)?;
        let targets = Targets::new(&settings.target).map_err(DiscoveryError)?;
        let (tx, rx) = std::sync::mpsc::channel();
        Ok(Discovery {
            fs,
            procfs: settings.discovery.procfs.clone(),
            grace: settings.discovery.grace_period,
            rescan_interval: settings.discovery.rescan_interval,
            store: Arc::new(MetadataStore::default()),
            classifier: RwLock::new(Arc::new(classifier)),
            targets: RwLock::new(Arc::new(targets)),
            kubernetes: settings.kubernetes.clone(),
            engine: settings.engine.clone(),
            entries: Mutex::new(HashMap::new()),
            errors: [Source::Kubernetes, Source::Engine, Source::Cgroupfs, Source::Procfs]
                .into_iter()
                .map(|s| (s, Arc::new(AtomicU64::new(0))))
                .collect(),
            selected: Mutex::new(HashSet::new()),
            subscribers: Mutex::new(Vec::new()),
            resolved_generation: AtomicU64::new(0),
            kick_tx: Mutex::new(tx),
            kick_rx: Mutex::new(Some(rx)),
            health: Health::default(),
            host_paths: false,
        })
    }

    pub fn cgroupfs(&self) -> &CgroupFs {
        &self.fs
    }

    pub fn procfs(&self) -> &Path {
        &self.procfs
    }

    fn classifier(&self) -> Arc<Classifier> {
        self.classifier.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn targets(&self) -> Arc<Targets> {
        self.targets.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies new sidecar rules and target selection (SIGHUP): every
    /// workload is named again on the next rescan, which starts now.
    /// Switching target selection on or off changes what the kernel
    /// programs were loaded with, so that part waits for a restart; the
    /// returned list says what did not apply.
    pub fn reload(&self, sidecar: &SidecarConfig, target: &TargetConfig) -> Result<Vec<String>, DiscoveryError> {
        let classifier = Classifier::new(sidecar).map_err(DiscoveryError)?;
        let targets = Targets::new(target).map_err(DiscoveryError)?;
        let mut needs_restart = Vec::new();
        *self.classifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(classifier);
        if targets.enabled() == self.targets().enabled() {
            *self.targets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(targets);
        } else {
            needs_restart.push(format!(
                "target selection switched {} (the kernel filter is fixed when the programs load)",
                if targets.enabled() { "on" } else { "off" }
            ));
        }
        // A generation no store has: the next rescan names everything again.
        self.resolved_generation.store(u64::MAX, Ordering::Release);
        self.kick();
        Ok(needs_restart)
    }

    /// Features running degraded (missing privileges, broken host paths).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The metadata the sources keep (tests and the fake sources write it).
    pub fn store(&self) -> &Arc<MetadataStore> {
        &self.store
    }

    /// Starts the Kubernetes watch and the engine poller on `runtime`.
    pub fn start_sources(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let kick: Arc<dyn Fn() + Send + Sync> = {
            let me = Arc::downgrade(self);
            Arc::new(move || {
                if let Some(d) = me.upgrade() {
                    d.kick();
                }
            })
        };
        runtime.spawn(kubernetes::run(
            self.kubernetes.clone(),
            self.store.clone(),
            self.errors[&Source::Kubernetes].clone(),
            kick.clone(),
        ));
        // The engine's failures show as a degraded feature (with the
        // capability or group to grant when the socket refuses us).
        let report: Arc<dyn Fn(Result<(), String>) + Send + Sync> = {
            let me = Arc::downgrade(self);
            Arc::new(move |result| {
                let Some(d) = me.upgrade() else { return };
                match result {
                    Ok(()) => d.health.clear("discovery", "engine"),
                    Err(e) => d.health.raise(
                        "discovery",
                        "engine",
                        format!("container engine API fails, keeping the last known containers and retrying: {e}"),
                    ),
                }
            })
        };
        runtime.spawn(engine::run(
            self.engine.clone(),
            self.store.clone(),
            self.errors[&Source::Engine].clone(),
            kick,
            report,
        ));
    }

    /// Asks the rescan loop to look again now (metadata changed).
    pub fn kick(&self) {
        let _ = self.kick_tx.lock().unwrap_or_else(|p| p.into_inner()).send(());
    }

    /// Rescans every `rescan_interval`, or at once when kicked, until
    /// `stop`. Runs on the caller's thread.
    pub fn run_rescans(&self, stop: &AtomicBool) {
        let Some(rx) = self.kick_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let tick = Duration::from_millis(200).min(self.rescan_interval);
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(tick) {
                Ok(()) => {
                    while rx.try_recv().is_ok() {}
                    self.rescan();
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) if last.elapsed() >= self.rescan_interval => {
                    self.rescan();
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The labels of a cgroup id, O(1) for every id seen before.
    pub fn lookup(&self, id: u64) -> Lookup {
        if id == NODE_ID {
            static NODE: OnceLock<Arc<Workload>> = OnceLock::new();
            return Lookup::Live(NODE.get_or_init(|| Arc::new(Workload::node())).clone());
        }
        let generation = self.store.generation();
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(&id) {
            if e.generation != generation && e.gone_since.is_none() {
                // Metadata changed since: name it again (cheap, in memory).
                let (w, settled) = self.resolve(&e.relative_path);
                e.workload = Arc::new(w);
                e.settled = settled;
                e.generation = generation;
            }
            return match e.gone_since {
                None => Lookup::Live(e.workload.clone()),
                Some(_) => Lookup::Gone(e.workload.clone()),
            };
        }
        match self.fs.path_of(id) {
            Ok(path) => {
                let entry = self.entry_for(&path, generation);
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

    fn entry_for(&self, relative_path: &str, generation: u64) -> Entry {
        let (workload, settled) = self.resolve(relative_path);
        Entry {
            workload: Arc::new(workload),
            relative_path: relative_path.to_string(),
            generation,
            gone_since: None,
            settled,
            container_cgroup: matches!(layout::parse(relative_path), CgroupOwner::Container(_)),
        }
    }

    /// Names a cgroup from the most specific source that knows it.
    fn resolve(&self, relative_path: &str) -> (Workload, bool) {
        let dir = self.fs.v2_dir(relative_path);
        let procfs = self.procfs.clone();
        let processes = move || -> Option<Vec<String>> {
            let dir = dir.as_ref()?;
            let names: Vec<String> =
                process::cgroup_pids(dir).into_iter().flat_map(|pid| process::process_names(&procfs, pid)).collect();
            (!names.is_empty()).then_some(names)
        };
        match layout::parse(relative_path) {
            CgroupOwner::Container(c) => {
                let short = c.container_id.chars().take(12).collect::<String>();
                // 1. Kubernetes, by container id, then by pod UID.
                if let Some(pod) = self.store.pod_of_container(&c.container_id)
                    && let Some(meta) = pod.container_by_id(&c.container_id)
                {
                    let facts = classify::Facts {
                        container: Some(&meta.name),
                        image: Some(&meta.image),
                        kind: Some(meta.kind),
                        pod: Some(&pod),
                        processes: &processes,
                    };
                    let v = self.classifier().classify(&facts);
                    return self.pod_workload(&pod, meta.name.clone(), meta.image.clone(), v, Source::Kubernetes);
                }
                if let Some(pod) = c.pod_uid.as_deref().and_then(|uid| self.store.pod(uid)) {
                    // The sandbox, or a container the status does not name yet.
                    let facts = classify::Facts {
                        container: None,
                        image: None,
                        kind: None,
                        pod: Some(&pod),
                        processes: &processes,
                    };
                    let v = self.classifier().classify(&facts);
                    let (w, _) = self.pod_workload(&pod, short, String::new(), v, Source::Kubernetes);
                    return (w, false);
                }
                // 2. The container engine.
                if let Some(e) = self.store.engine_container(&c.container_id) {
                    return self.engine_workload(&e, c.pod_uid.as_deref(), &processes);
                }
                // 3. The path and the processes.
                match &c.pod_uid {
                    Some(uid) => {
                        let facts = classify::Facts {
                            container: None,
                            image: None,
                            kind: None,
                            pod: None,
                            processes: &processes,
                        };
                        let v = self.classifier().classify(&facts);
                        let w = Workload {
                            namespace: String::new(),
                            pod: uid.clone(),
                            container: short,
                            role: v.role,
                            pod_uid: Some(uid.clone()),
                            image: String::new(),
                            sidecar_kind: v.kind,
                            source: Source::Cgroupfs,
                            selected: self.targets().selects("", uid, &BTreeMap::new()),
                        };
                        (w, v.settled)
                    }
                    None => (
                        Workload {
                            container: short,
                            selected: self.targets().selects_outside_pods(),
                            ..Workload::node()
                        },
                        true,
                    ),
                }
            }
            CgroupOwner::Pod { pod_uid, .. } => match self.store.pod(&pod_uid) {
                Some(pod) => {
                    let w = Workload {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        pod_uid: Some(pod_uid),
                        source: Source::Kubernetes,
                        selected: self.targets().selects(&pod.namespace, &pod.name, &pod.labels),
                        ..Workload::node()
                    };
                    (w, true)
                }
                // Known by its UID only, like its containers above.
                None => (
                    Workload {
                        selected: self.targets().selects("", &pod_uid, &BTreeMap::new()),
                        pod: pod_uid.clone(),
                        pod_uid: Some(pod_uid),
                        ..Workload::node()
                    },
                    true,
                ),
            },
            CgroupOwner::Other => {
                let last = relative_path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
                (
                    Workload {
                        container: last.to_string(),
                        selected: self.targets().selects_outside_pods(),
                        ..Workload::node()
                    },
                    true,
                )
            }
        }
    }

    fn pod_workload(
        &self,
        pod: &metadata::PodMeta,
        container: String,
        image: String,
        v: classify::Classification,
        source: Source,
    ) -> (Workload, bool) {
        let selected = self.targets().selects(&pod.namespace, &pod.name, &pod.labels);
        let w = Workload {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container,
            role: v.role,
            pod_uid: Some(pod.uid.clone()),
            image,
            sidecar_kind: v.kind,
            source,
            selected,
        };
        (w, v.settled)
    }

    /// A container named by Docker or Podman: kubelet labels when it has
    /// them, else its Podman pod or Compose project, else itself.
    fn engine_workload(
        &self,
        e: &metadata::EngineContainer,
        path_pod: Option<&str>,
        processes: &dyn Fn() -> Option<Vec<String>>,
    ) -> (Workload, bool) {
        let l = &e.labels;
        let kubelet = (
            l.get("io.kubernetes.pod.namespace"),
            l.get("io.kubernetes.pod.name"),
            l.get("io.kubernetes.container.name"),
        );
        let (namespace, pod, container, pod_uid) = if let (Some(ns), Some(pod), Some(c)) = kubelet {
            let uid = l
                .get("io.kubernetes.pod.uid")
                .cloned()
                .or(path_pod.map(str::to_string))
                .unwrap_or_else(|| format!("{ns}/{pod}"));
            (ns.clone(), pod.clone(), c.clone(), Some(uid))
        } else if let Some(pod) = &e.pod_name {
            if e.name.ends_with("-infra") && e.image.contains("pause") {
                // The pod's sandbox: the pod itself, not one of its containers.
                let w = Workload {
                    pod: pod.clone(),
                    pod_uid: e.pod_id.clone().or(path_pod.map(str::to_string)),
                    source: Source::Engine,
                    selected: self.targets().selects("", pod, l),
                    ..Workload::node()
                };
                return (w, true);
            }
            // `podman kube play` names containers <pod>-<container>.
            let c = e.name.strip_prefix(&format!("{pod}-")).unwrap_or(&e.name).to_string();
            (String::new(), pod.clone(), c, e.pod_id.clone().or(path_pod.map(str::to_string)))
        } else if let Some(project) = l.get("com.docker.compose.project") {
            let service = l.get("com.docker.compose.service").cloned().unwrap_or_else(|| e.name.clone());
            (String::new(), project.clone(), service, Some(format!("compose:{project}")))
        } else {
            let w = Workload {
                container: e.name.clone(),
                image: e.image.clone(),
                source: Source::Engine,
                selected: self.targets().selects_outside_pods(),
                ..Workload::node()
            };
            return (w, true);
        };
        let pod_meta = metadata::PodMeta {
            uid: pod_uid.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: pod.clone(),
            labels: l.clone(),
            annotations: BTreeMap::new(),
            containers: Vec::new(),
        };
        let facts = classify::Facts {
            container: Some(&container),
            image: Some(&e.image),
            kind: None,
            pod: Some(&pod_meta),
            processes,
        };
        let v = self.classifier().classify(&facts);
        let selected = self.targets().selects(&namespace, &pod, l);
        let w = Workload {
            namespace,
            pod,
            container,
            role: v.role,
            pod_uid,
            image: e.image.clone(),
            sidecar_kind: v.kind,
            source: Source::Engine,
            selected,
        };
        (w, v.settled)
    }

    /// Walks the v2 tree: registers every container and pod cgroup, marks
    /// the ones that disappeared, forgets those gone longer than the grace
    /// period, names again what metadata changed for, and tells the
    /// subscribers which cgroups are watched now.
    pub fn rescan(&self) {
        if !self.host_paths_usable() {
            // Keep the last known workloads rather than mark them all gone.
            return;
        }
        let Ok(root) = self.fs.v2_root() else { return };
        let root = root.to_path_buf();
        let mut present: HashMap<u64, String> = HashMap::new();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else { continue };
            let rel = format!("/{}", dir.strip_prefix(&root).unwrap_or(Path::new("")).display());
            present.insert(meta.ino(), rel);
            // Container cgroups sit a handful of levels deep; bound the walk.
            if depth >= 8 {
                continue;
            }
            let Ok(rd) = fs::read_dir(&dir) else {
                self.errors[&Source::Cgroupfs].fetch_add(1, Ordering::Relaxed);
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }

        let now = Instant::now();
        let generation = self.store.generation();
        let renamed = self.resolved_generation.swap(generation, Ordering::AcqRel) != generation;
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
                    if !e.settled || renamed || e.generation != generation {
                        *e = self.entry_for(&e.relative_path.clone(), generation);
                    }
                }
                None => {
                    if !matches!(layout::parse(rel), CgroupOwner::Other) {
                        entries.insert(*id, self.entry_for(rel, generation));
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
        let selected: HashSet<u64> = entries
            .iter()
            .filter(|(_, e)| e.gone_since.is_none() && e.workload.selected && e.workload.pod_uid.is_some())
            .map(|(id, _)| *id)
            .collect();
        drop(entries);
        self.publish_targets(selected);
    }

    /// Are procfs and the cgroup2 mount still what they must be? A path
    /// that broke after start-up (an unmounted volume, a missing cgroup2
    /// mount) is counted in `pmoas_discovery_errors_total` on every rescan
    /// and shown as a degraded feature; it clears when the path is back.
    fn host_paths_usable(&self) -> bool {
        let v2 = self.fs.v2_root().map_err(|e| e.to_string());
        let checks = [
            (Source::Procfs, "procfs", if self.host_paths { hostpath::check_procfs(&self.procfs) } else { Ok(()) }),
            (
                Source::Cgroupfs,
                "cgroup2",
                v2.and_then(|p| if self.host_paths { hostpath::check_cgroup2(p) } else { Ok(()) }),
            ),
        ];
        if self.host_paths {
            // Sidecars named by their process: hidden processes say so.
            let _ = process::report_visibility(&self.health, &self.procfs);
        }
        let mut cgroups_usable = true;
        for (source, feature, result) in checks {
            match result {
                Ok(()) => self.health.clear("discovery", feature),
                Err(reason) => {
                    self.errors[&source].fetch_add(1, Ordering::Relaxed);
                    self.health.raise("discovery", feature, reason);
                    cgroups_usable &= feature != "cgroup2";
                }
            }
        }
        cgroups_usable
    }

    /// Published with a selection or without (then every pod's cgroups):
    /// a collector that acts on pods only follows them either way.
    fn publish_targets(&self, now: HashSet<u64>) {
        let mut current = self.selected.lock().unwrap_or_else(|p| p.into_inner());
        let update = TargetUpdate {
            added: now.difference(&current).copied().collect(),
            removed: current.difference(&now).copied().collect(),
        };
        if update.added.is_empty() && update.removed.is_empty() {
            return;
        }
        *current = now;
        drop(current);
        for s in self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s(&update);
        }
    }

    /// Is a target selection in force (so the kernel must filter)?
    pub fn targets_enabled(&self) -> bool {
        self.targets().enabled()
    }

    /// Calls `f` with every change of the watched cgroups, starting with
    /// the ones watched now.
    pub fn subscribe_targets(&self, f: TargetSubscriber) {
        let initial = TargetUpdate {
            added: self.selected.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect(),
            removed: Vec::new(),
        };
        f(&initial);
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    /// Pods and containers known now, per source.
    pub fn stats(&self) -> Vec<(Source, usize, usize)> {
        let mut out = self.store.counts();
        let entries = self.lock();
        let mut pods: HashSet<&str> = HashSet::new();
        let mut containers = 0;
        for e in entries.values().filter(|e| e.gone_since.is_none()) {
            if let Some(uid) = &e.workload.pod_uid {
                pods.insert(uid);
            }
            if e.container_cgroup {
                containers += 1;
            }
        }
        out.push((Source::Cgroupfs, pods.len(), containers));
        out
    }

    /// Failures per source so far (`pmoas_discovery_errors_total`).
    pub fn errors(&self) -> Vec<(Source, u64)> {
        let mut v: Vec<(Source, u64)> = self.errors.iter().map(|(s, n)| (*s, n.load(Ordering::Relaxed))).collect();
        v.sort();
        v
    }

    /// Live containers (for `pmoas_container_info`).
    pub fn containers(&self) -> Vec<Arc<Workload>> {
        let entries = self.lock();
        let mut seen: HashSet<&Workload> = HashSet::new();
        entries
            .values()
            .filter(|e| e.gone_since.is_none() && e.workload.is_container())
            .filter(|e| seen.insert(&e.workload))
            .map(|e| e.workload.clone())
            .collect()
    }

    /// Every known container and pod cgroup, live or within the grace
    /// period (for collectors that read cgroupfs per container).
    pub fn cgroups(&self) -> Vec<KnownCgroup> {
        let entries = self.lock();
        entries
            .iter()
            .filter(|(_, e)| e.workload.pod_uid.is_some() || e.workload.is_container())
            .map(|(id, e)| KnownCgroup {
                id: *id,
                relative_path: e.relative_path.clone(),
                workload: e.workload.clone(),
                live: e.gone_since.is_none(),
            })
            .collect()
    }

    /// One live process of every known pod (to look into its network
    /// namespace through /proc/<pid>/net).
    pub fn pod_pids(&self) -> Vec<(String, u32)> {
        let entries = self.lock();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in entries.values().filter(|e| e.gone_since.is_none()) {
            let Some(uid) = &e.workload.pod_uid else { continue };
            if seen.contains(uid) {
                continue;
            }
            let Some(dir) = self.fs.v2_dir(&e.relative_path) else { continue };
            if let Some(pid) = process::cgroup_pids(&dir).first() {
                seen.insert(uid.clone());
                out.push((uid.clone(), *pid));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
