//! What the metadata sources (the Kubernetes API, container engines) know
//! about pods and containers, in one store that cgroup resolution reads.
//!
//! Sources write whole snapshots or single changes; every change bumps a
//! generation number, so resolved cgroups know when to look again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How a container runs in its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    Regular,
    Init,
    /// An init container with `restartPolicy: Always` (Kubernetes 1.28+).
    NativeSidecar,
    Ephemeral,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub name: String,
    pub image: String,
    pub kind: ContainerKind,
    /// Runtime container id without its scheme (`containerd://` ...), when
    /// the pod status reports it.
    pub id: Option<String>,
}

/// A pod, from whichever source knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    /// Kubernetes UID, or the Podman pod id.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<ContainerMeta>,
}

impl PodMeta {
    pub fn container_by_id(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.id.as_deref() == Some(id))
    }
}

/// A container as a container engine (Docker, Podman) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineContainer {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Podman pod id, when it belongs to one.
    pub pod_id: Option<String>,
    pub pod_name: Option<String>,
}

/// Where metadata came from; also the `source` label of the discovery
/// metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Kubernetes,
    Engine,
    Cgroupfs,
    /// The host's /proc (no workloads of its own; errors only).
    Procfs,
}

impl Source {
    pub fn as_label(self) -> &'static str {
        match self {
            Source::Kubernetes => "kubernetes",
            Source::Engine => "engine",
            Source::Cgroupfs => "cgroupfs",
            Source::Procfs => "procfs",
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Kubernetes pods by UID.
    pods: HashMap<String, Arc<PodMeta>>,
    /// container id -> pod UID, for every container a pod status names.
    container_pods: HashMap<String, String>,
    /// Engine containers by id.
    engine: HashMap<String, Arc<EngineContainer>>,
}

/// The shared store. Reads are cheap (a read lock and a hash lookup).
#[derive(Default)]
pub struct MetadataStore {
    inner: RwLock<Inner>,
    generation: AtomicU64,
}

impl MetadataStore {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces a pod.
    pub fn upsert_pod(&self, pod: PodMeta) {
        let mut inner = self.write();
        if inner.pods.get(&pod.uid).is_some_and(|old| **old == pod) {
            return;
        }
        inner.insert_pod(pod);
        drop(inner);
        self.bump();
    }

    pub fn remove_pod(&self, uid: &str) {
        let mut inner = self.write();
        if inner.remove_pod(uid) {
            drop(inner);
            self.bump();
        }
    }

    /// Replaces every pod (a fresh list after a watch restarted).
    pub fn replace_pods(&self, pods: Vec<PodMeta>) {
        let mut inner = self.write();
        inner.pods.clear();
        inner.container_pods.clear();
        for pod in pods {
            inner.insert_pod(pod);
        }
        drop(inner);
        self.bump();
    }

    /// Replaces the engine's containers, if they changed.
    pub fn replace_engine(&self, containers: Vec<EngineContainer>) {
        let mut inner = self.write();
        let same = inner.engine.len() == containers.len()
            && containers.iter().all(|c| inner.engine.get(&c.id).is_some_and(|old| **old == *c));
        if same {
            return;
        }
        inner.engine = containers.into_iter().map(|c| (c.id.clone(), Arc::new(c))).collect();
        drop(inner);
        self.bump();
    }

    pub fn pod(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.read().pods.get(uid).cloned()
    }

    /// The pod a container id belongs to, by the pod statuses.
    pub fn pod_of_container(&self, id: &str) -> Option<Arc<PodMeta>> {
        let inner = self.read();
        inner.container_pods.get(id).and_then(|uid| inner.pods.get(uid)).cloned()
    }

    pub fn engine_container(&self, id: &str) -> Option<Arc<EngineContainer>> {
        self.read().engine.get(id).cloned()
    }

    /// Pods and containers known per source, for `pmoas_discovery_workloads`.
    pub fn counts(&self) -> Vec<(Source, usize, usize)> {
        let inner = self.read();
        let k8s_containers = inner.pods.values().map(|p| p.containers.len()).sum();
        let mut engine_pods: Vec<&str> = inner.engine.values().filter_map(|c| c.pod_id.as_deref()).collect();
        engine_pods.sort_unstable();
        engine_pods.dedup();
        vec![
            (Source::Kubernetes, inner.pods.len(), k8s_containers),
            (Source::Engine, engine_pods.len(), inner.engine.len()),
        ]
    }
}

impl Inner {
    fn insert_pod(&mut self, pod: PodMeta) {
        self.remove_pod(&pod.uid);
        for id in pod.containers.iter().filter_map(|c| c.id.as_ref()) {
            self.container_pods.insert(id.clone(), pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), Arc::new(pod));
    }

    fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(old) = self.pods.remove(uid) else { return false };
        for id in old.containers.iter().filter_map(|c| c.id.as_ref()) {
            if self.container_pods.get(id).map(String::as_str) == Some(uid) {
                self.container_pods.remove(id);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, ids: &[&str]) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("pod-{uid}"),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            containers: ids
                .iter()
                .map(|id| ContainerMeta {
                    name: format!("c-{id}"),
                    image: "img".into(),
                    kind: ContainerKind::Regular,
                    id: Some(id.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn containers_find_their_pod_and_changes_bump_the_generation() {
        let s = MetadataStore::default();
        let g0 = s.generation();
        s.upsert_pod(pod("u1", &["a", "b"]));
        assert!(s.generation() > g0);
        assert_eq!(s.pod_of_container("b").unwrap().uid, "u1");
        let g1 = s.generation();
        s.upsert_pod(pod("u1", &["a", "b"]));
        assert_eq!(s.generation(), g1, "an identical update changes nothing");
        s.upsert_pod(pod("u1", &["a", "c"]));
        assert!(s.pod_of_container("b").is_none(), "a restarted container's old id is forgotten");
        assert!(s.pod_of_container("c").is_some());
        s.remove_pod("u1");
        assert!(s.pod_of_container("a").is_none() && s.pod("u1").is_none());
    }

    #[test]
    fn replace_pods_forgets_the_missing() {
        let s = MetadataStore::default();
        s.upsert_pod(pod("u1", &["a"]));
        s.replace_pods(vec![pod("u2", &["b"])]);
        assert!(s.pod("u1").is_none() && s.pod_of_container("a").is_none());
        assert_eq!(s.counts()[0], (Source::Kubernetes, 1, 1));
    }
}
