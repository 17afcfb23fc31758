//! Container engines as a metadata source: the Docker-compatible API that
//! Docker and Podman both serve on a unix socket, polled for the running
//! containers (name, image, labels, Podman pod).
//!
//! For hosts without Kubernetes: a Podman pod, a Compose project, a plain
//! container get readable `pod` and `container` labels. Containers that
//! carry the kubelet's `io.kubernetes.*` labels are named by those.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::Toggle;
use crate::metadata::{EngineContainer, MetadataStore};

/// Sockets tried when none is configured, in order.
pub const DEFAULT_SOCKETS: &[&str] = &["/run/podman/podman.sock", "/var/run/docker.sock", "/run/docker.sock"];

/// `[engine]` of the configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `auto`: when one of the default sockets exists; `true`: insist;
    /// `false`: never.
    pub enabled: Toggle,
    /// The API socket; default: the first of /run/podman/podman.sock,
    /// /var/run/docker.sock, /run/docker.sock that exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { enabled: Toggle::Auto, socket: None, poll_interval: Duration::from_secs(5) }
    }
}

/// Which socket to use, if any.
pub fn socket_path(config: &EngineConfig) -> Option<PathBuf> {
    if config.enabled == Toggle::False {
        return None;
    }
    config.socket.clone().or_else(|| DEFAULT_SOCKETS.iter().map(PathBuf::from).find(|p| p.exists()))
}

/// One GET over the unix socket; the body.
pub async fn get(socket: &Path, path: &str) -> Result<Vec<u8>, String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        // connect() needs write permission on the socket file, which the
        // engines give root (Podman) or root and a group (Docker) only.
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (connecting needs write access to the socket: run as root, grant CAP_DAC_OVERRIDE, or add the \
             exporter's user to the socket's group)"
        } else {
            ""
        };
        format!("connecting to {}: {e}{hint}", socket.display())
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req =
        hyper::Request::get(path).header("Host", "engine").body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| format!("{path}: no answer in 10 s"))?
        .map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
    if !status.is_success() {
        return Err(format!(
            "{path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
        ));
    }
    Ok(body)
}

/// Parses `GET /containers/json`; `pods` maps container ids to their
/// Podman pod (id, name), from [`parse_pods`].
pub fn parse_containers(
    body: &[u8],
    pods: &BTreeMap<String, (String, String)>,
) -> Result<Vec<EngineContainer>, String> {
    let list: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| format!("containers list: {e}"))?;
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let Some(id) = c.get("Id").and_then(|v| v.as_str()).filter(|s| !s.is_empty()) else { continue };
        let name = c
            .get("Names")
            .and_then(|n| n.as_array())
            .and_then(|n| n.first())
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        let labels: BTreeMap<String, String> = c
            .get("Labels")
            .and_then(|l| l.as_object())
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let (pod_id, pod_name) = match pods.get(id) {
            Some((pid, name)) => (Some(pid.clone()), Some(name.clone())),
            None => (c.get("Pod").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_string), None),
        };
        out.push(EngineContainer {
            id: id.to_string(),
            name,
            image: c.get("Image").and_then(|v| v.as_str()).unwrap_or("").to_string(),
            labels,
            pod_id,
            pod_name,
        });
    }
    Ok(out)
}

/// Parses Podman's `GET /v4.0.0/libpod/pods/json` into container id ->
/// (pod id, pod name).
fn parse_pods(body: &[u8]) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for p in serde_json::from_slice::<Vec<serde_json::Value>>(body).unwrap_or_default() {
        let (Some(id), Some(name)) = (p.get("Id").and_then(|v| v.as_str()), p.get("Name").and_then(|v| v.as_str()))
        else {
            continue;
        };
        for c in p.get("Containers").and_then(|c| c.as_array()).into_iter().flatten() {
            if let Some(cid) = c.get("Id").and_then(|v| v.as_str()) {
                out.insert(cid.to_string(), (id.to_string(), name.to_string()));
            }
        }
    }
    out
}

/// Polls the engine until the process ends; `kick` after every change.
pub async fn run(
    config: EngineConfig,
    store: Arc<MetadataStore>,
    errors: Arc<AtomicU64>,
    kick: Arc<dyn Fn() + Send + Sync>,
    report: Arc<dyn Fn(Result<(), String>) + Send + Sync>,
) {
    let Some(socket) = socket_path(&config) else {
        if config.enabled == Toggle::True {
            errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("--engine.enabled is true but no engine socket was found; set --engine.socket");
        }
        return;
    };
    let mut announced = false;
    loop {
        let result = async {
            // Podman answers libpod's pod list; Docker does not (no pods).
            let pods = get(&socket, "/v4.0.0/libpod/pods/json").await.map(|b| parse_pods(&b)).unwrap_or_default();
            let body = get(&socket, "/containers/json").await?;
            parse_containers(&body, &pods)
        }
        .await;
        match result {
            Ok(containers) => {
                if !announced {
                    tracing::info!(socket = %socket.display(), containers = containers.len(), "naming containers through the engine API");
                    announced = true;
                }
                report(Ok(()));
                let before = store.generation();
                store.replace_engine(containers);
                if store.generation() != before {
                    kick();
                }
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                report(Err(e));
            }
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_podman_container_lists() {
        let body = br#"[
          {"Id":"abc","Names":["/web"],"Image":"nginx:1.27","Labels":{"com.docker.compose.project":"shop","com.docker.compose.service":"web"},"State":"running"},
          {"Id":"def","Names":["/mypod-istio-proxy"],"Image":"localhost/envoy:latest","Labels":{"app":"demo"}},
          {"Names":["/no-id"]},
          {"Id":"ghi"}
        ]"#;
        let pods = parse_pods(br#"[{"Id":"p1","Name":"mypod","Containers":[{"Id":"def","Names":"mypod-istio-proxy"},{"Id":"infra1","Names":"p1-infra"}]},{"Name":"no-id"}]"#);
        assert_eq!(pods.len(), 2);
        let c = parse_containers(body, &pods).unwrap();
        assert_eq!(c.len(), 2 + 1, "entries without an id are skipped");
        assert_eq!((c[0].name.as_str(), c[0].labels["com.docker.compose.service"].as_str()), ("web", "web"));
        assert_eq!((c[1].pod_id.as_deref(), c[1].pod_name.as_deref()), (Some("p1"), Some("mypod")));
        assert_eq!((c[2].id.as_str(), c[2].name.as_str()), ("ghi", ""));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_containers(b"{not json", &BTreeMap::new()).is_err());
        assert!(parse_containers(b"{\"message\":\"x\"}", &BTreeMap::new()).is_err());
        assert!(parse_pods(b"garbage").is_empty());
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let e = get(Path::new("/nonexistent/engine.sock"), "/containers/json").await.unwrap_err();
        assert!(e.contains("/nonexistent/engine.sock"), "{e}");
    }
}
