//! The Kubernetes API as a metadata source: a watch of the Pods scheduled on
//! this node (`spec.nodeName=<node>`), kept in the [`MetadataStore`].
//!
//! Configuration: in-cluster (a DaemonSet's service account), or
//! `--kubernetes.kubeconfig` / `$KUBECONFIG` / `~/.kube/config`. Node name:
//! `--kubernetes.node-name`, else `$NODE_NAME` (the downward API), else the
//! host name. When the API fails the last known pods stay, the watch retries
//! with exponential backoff and jitter ([`backoff`]: 0.8 s doubling to 30 s),
//! and every failure counts in
//! `pmoas_discovery_errors_total{source="kubernetes"}`.

pub mod backoff;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use crate::Toggle;
use crate::kubernetes::backoff::Backoff;
use crate::metadata::{ContainerKind, ContainerMeta, MetadataStore, PodMeta};

/// `[kubernetes]` of the configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `auto`: when in a cluster or a kubeconfig is found; `true`: insist
    /// (and keep retrying); `false`: never.
    pub enabled: Toggle,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// This node's name: the flag, `$NODE_NAME`, or the host name.
pub fn node_name(config: &KubernetesConfig) -> String {
    config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_default()
}

async fn client(config: &KubernetesConfig) -> Result<Client, String> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(kube_config).map_err(|e| e.to_string())
}

/// Strips `containerd://`, `cri-o://`, `docker://` from a status's id.
pub fn runtime_id(container_id: &str) -> &str {
    container_id.split_once("://").map_or(container_id, |(_, id)| id)
}

/// The parts of a Pod object discovery uses. Objects without a UID or
/// name (malformed) give `None`.
pub fn pod_meta(pod: &Pod) -> Option<PodMeta> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let ids = |statuses: Option<&Vec<ContainerStatus>>| -> BTreeMap<String, String> {
        statuses
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s.name.clone(), runtime_id(s.container_id.as_deref()?).to_string())))
            .collect()
    };
    let regular_ids = ids(status.and_then(|s| s.container_statuses.as_ref()));
    let init_ids = ids(status.and_then(|s| s.init_container_statuses.as_ref()));
    let ephemeral_ids = ids(status.and_then(|s| s.ephemeral_container_statuses.as_ref()));
    let container = |name: &String, image: &Option<String>, kind: ContainerKind, ids: &BTreeMap<String, String>| {
        ContainerMeta { name: name.clone(), image: image.clone().unwrap_or_default(), kind, id: ids.get(name).cloned() }
    };

    let mut containers = Vec::new();
    for c in spec.map(|s| s.containers.iter()).into_iter().flatten() {
        containers.push(container(&c.name, &c.image, ContainerKind::Regular, &regular_ids));
    }
    for c in spec.and_then(|s| s.init_containers.as_ref()).into_iter().flatten() {
        let native = c.restart_policy.as_deref() == Some("Always");
        let kind = if native { ContainerKind::NativeSidecar } else { ContainerKind::Init };
        containers.push(container(&c.name, &c.image, kind, &init_ids));
    }
    for c in spec.and_then(|s| s.ephemeral_containers.as_ref()).into_iter().flatten() {
        containers.push(container(&c.name, &c.image, ContainerKind::Ephemeral, &ephemeral_ids));
    }
    Some(PodMeta {
        uid,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name,
        labels: meta.labels.clone().unwrap_or_default().into_iter().collect(),
        annotations: meta.annotations.clone().unwrap_or_default().into_iter().collect(),
        containers,
    })
}

/// Watches this node's pods until the process ends. `kick` is called after
/// every change, so that discovery looks again at once.
pub async fn run(
    config: KubernetesConfig,
    store: Arc<MetadataStore>,
    errors: Arc<AtomicU64>,
    kick: Arc<dyn Fn() + Send + Sync>,
) {
    if config.enabled == Toggle::False {
        return;
    }
    let node = node_name(&config);
    let mut backoff = Backoff::kubernetes();
    let client = loop {
        match client(&config).await {
            Ok(c) => break c,
            Err(e) if config.enabled == Toggle::Auto && config.kubeconfig.is_none() => {
                tracing::info!(reason = %e, "no Kubernetes API configured; naming workloads from container engines and cgroup paths");
                return;
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay(Instant::now());
                tracing::error!(error = %e, retry_in = %Secs(delay), "cannot reach the Kubernetes API");
                tokio::time::sleep(delay).await;
            }
        }
    };
    tracing::info!(%node, "watching this node's pods through the Kubernetes API");
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    // Not kube-runtime's `default_backoff()`: its StreamBackoff resets on
    // every Ok item, and the watcher yields `Ok(Event::Init)` before each
    // relist, so during an outage it never got past its first step (about
    // one list a second from every node, forever). The watcher does nothing
    // between polls, so sleeping here before polling again is the backoff.
    let mut stream = watcher::watcher(api, cfg).boxed();
    let mut backoff = Backoff::kubernetes();
    let mut initial: Option<Vec<PodMeta>> = None;
    let mut malformed_reported = false;
    while let Some(event) = stream.next().await {
        let mut add = |pod: &Pod, into: &mut dyn FnMut(PodMeta)| match pod_meta(pod) {
            Some(m) => into(m),
            None => {
                errors.fetch_add(1, Ordering::Relaxed);
                if !malformed_reported {
                    tracing::warn!("a Pod object without uid or name was ignored");
                    malformed_reported = true;
                }
            }
        };
        match event {
            // Only the start of an attempt, not progress: no reset.
            Ok(Event::Init) => initial = Some(Vec::new()),
            // A page of a list that may still fail on the next page: no reset.
            Ok(Event::InitApply(pod)) => {
                let buf = initial.get_or_insert_with(Vec::new);
                add(&pod, &mut |m| buf.push(m));
            }
            Ok(Event::InitDone) => {
                backoff.reset();
                let pods = initial.take().unwrap_or_default();
                tracing::debug!(pods = pods.len(), "Kubernetes pod list synced");
                store.replace_pods(pods);
                kick();
            }
            Ok(Event::Apply(pod)) => {
                backoff.reset();
                add(&pod, &mut |m| store.upsert_pod(m));
                kick();
            }
            Ok(Event::Delete(pod)) => {
                backoff.reset();
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    store.remove_pod(uid);
                    kick();
                }
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay(Instant::now());
                tracing::warn!(
                    error = %e,
                    failures = backoff.failures(),
                    retry_in = %Secs(delay),
                    "Kubernetes watch failed; keeping the last known pods"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A delay as `1.234s` in the log.
struct Secs(Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_objects_become_metadata() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                         "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {
                "containers": [{"name": "web", "image": "nginx"}, {"name": "istio-proxy", "image": "istio/proxyv2:1.24"}],
                "initContainers": [{"name": "istio-init", "image": "istio/proxyv2:1.24"},
                                   {"name": "logs", "image": "fluent-bit", "restartPolicy": "Always"}],
                "ephemeralContainers": [{"name": "debugger", "image": "busybox"}]
            },
            "status": {
                "containerStatuses": [
                    {"name": "web", "containerID": "containerd://aaa", "image": "", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "istio-proxy", "containerID": "cri-o://bbb", "image": "", "imageID": "", "ready": true, "restartCount": 0}],
                "initContainerStatuses": [
                    {"name": "logs", "containerID": "docker://ccc", "image": "", "imageID": "", "ready": true, "restartCount": 0}]
            }
        }))
        .unwrap();
        let m = pod_meta(&pod).unwrap();
        assert_eq!((m.uid.as_str(), m.namespace.as_str(), m.name.as_str()), ("u-1", "shop", "web-1"));
        assert_eq!(m.labels["app"], "web");
        let c = |n: &str| m.containers.iter().find(|c| c.name == n).unwrap().clone();
        assert_eq!((c("web").id.as_deref(), c("web").kind), (Some("aaa"), ContainerKind::Regular));
        assert_eq!(c("istio-proxy").id.as_deref(), Some("bbb"));
        assert_eq!((c("istio-init").kind, c("istio-init").id), (ContainerKind::Init, None));
        assert_eq!((c("logs").kind, c("logs").id.as_deref()), (ContainerKind::NativeSidecar, Some("ccc")));
        assert_eq!(c("debugger").kind, ContainerKind::Ephemeral);
    }

    #[test]
    fn malformed_objects_are_skipped() {
        let no_uid: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert!(pod_meta(&no_uid).is_none());
        let bare: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "x", "uid": "u"}})).unwrap();
        assert_eq!(pod_meta(&bare).unwrap().containers, vec![]);
    }

    #[test]
    fn node_name_precedence() {
        let cfg = KubernetesConfig { node_name: Some("n1".into()), ..Default::default() };
        assert_eq!(node_name(&cfg), "n1");
        assert!(!node_name(&KubernetesConfig::default()).is_empty(), "falls back to the host name");
    }
}
