//! Container runtime cgroup layouts: from a cgroup path to the pod UID and
//! container ID it stands for.
//!
//! Recognised (any prefix before them is ignored, so nested hierarchies and
//! cgroup v1 paths below a non-root cgroup parse the same):
//!
//! | runtime / driver              | example                                                                                   |
//! |-------------------------------|-------------------------------------------------------------------------------------------|
//! | kubelet, systemd driver       | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | kubelet, guaranteed QoS       | `kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope`                                  |
//! | kubelet, cgroupfs driver      | `kubepods/besteffort/pod<uid>/<id>`, `kubepods/pod<uid>/crio-<id>`                         |
//! | CRI-O conmon                  | `.../kubepods-...-pod<uid_>.slice/crio-conmon-<id>.scope` (not a container)               |
//! | Docker                        | `docker/<id>`, `system.slice/docker-<id>.scope`                                            |
//! | Podman (libpod)               | `libpod_parent/<pod>/libpod-<id>`, `machine.slice/machine-libpod_pod_<pod>.slice/libpod-<id>.scope`, `machine.slice/libpod-<id>.scope` |
//!
//! In systemd slices the pod UID has `_` where the UID has `-`; it is given
//! back with dashes, as the Kubernetes API spells it.

use std::fmt;

/// The container runtime a cgroup path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A kubelet pod cgroup whose container directory names no runtime
    /// (cgroupfs driver with a bare 64-hex id).
    Unknown,
}

impl Runtime {
    /// The scheme Kubernetes puts in `containerStatuses[].containerID`.
    pub fn scheme(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

/// Kubernetes QoS class, from the kubelet's slice names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path says about its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupOwner {
    /// A container (of a pod when `pod_uid` is set).
    Container(ContainerRef),
    /// A pod's own cgroup, or a runtime helper inside it (conmon): belongs
    /// to the pod but to none of its containers.
    Pod { pod_uid: String, qos: Option<QosClass> },
    /// Anything else: a systemd unit, a user session, the root.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// Kubernetes pod UID, or the Podman pod id; `None` for a container that
    /// belongs to no pod.
    pub pod_uid: Option<String>,
    pub container_id: String,
    pub qos: Option<QosClass>,
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.runtime.scheme(), self.container_id)
    }
}

/// Parses a cgroup path (relative to any hierarchy's root, with or without
/// a leading `/`).
pub fn parse(path: &str) -> CgroupOwner {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();

    // The pod: the last component that names one.
    let mut pod: Option<(usize, String, Option<QosClass>, bool)> = None; // (index, uid, qos, podman)
    for (i, part) in parts.iter().enumerate() {
        if let Some((uid, qos)) = kubelet_pod(part, parts.get(i.wrapping_sub(1)).copied()) {
            pod = Some((i, uid, qos, false));
        } else if let Some(id) = podman_pod(part, parts.get(i.wrapping_sub(1)).copied()) {
            pod = Some((i, id, None, true));
        }
    }

    // The container: the last component after the pod (or anywhere, for
    // pod-less runtimes) that names one.
    let start = pod.as_ref().map(|p| p.0 + 1).unwrap_or(0);
    let mut container: Option<(Runtime, String)> = None;
    let mut conmon = false;
    for (i, part) in parts.iter().enumerate().skip(start) {
        if is_conmon(part) {
            conmon = true;
            continue;
        }
        if let Some(c) = container_component(part, pod.is_some(), parts.get(i.wrapping_sub(1)).copied()) {
            container = Some(c);
            conmon = false;
        }
    }

    match (pod, container) {
        (Some((_, uid, qos, podman)), Some((runtime, id))) => CgroupOwner::Container(ContainerRef {
            runtime: if podman { Runtime::Podman } else { runtime },
            pod_uid: Some(uid),
            container_id: id,
            qos,
        }),
        (Some((_, uid, qos, _)), None) => CgroupOwner::Pod { pod_uid: uid, qos },
        (None, Some((runtime, id))) if !conmon => {
            CgroupOwner::Container(ContainerRef { runtime, pod_uid: None, container_id: id, qos: None })
        }
        _ => CgroupOwner::Other,
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uid(s: &str) -> bool {
    // 8-4-4-4-12 hex, as Kubernetes generates (RFC 4122 text form).
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn qos_of(s: &str) -> Option<QosClass> {
    match s {
        "burstable" => Some(QosClass::Burstable),
        "besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// `kubepods-burstable-pod<uid_>.slice`, `kubepods-pod<uid_>.slice` (systemd)
/// or `pod<uid>` below `kubepods`, `burstable` or `besteffort` (cgroupfs).
fn kubelet_pod(part: &str, parent: Option<&str>) -> Option<(String, Option<QosClass>)> {
    if let Some(rest) = part.strip_prefix("kubepods-").and_then(|r| r.strip_suffix(".slice")) {
        let (qos, uid) = match rest.split_once("-pod") {
            Some((q, uid)) => (qos_of(q), uid),
            None => (Some(QosClass::Guaranteed), rest.strip_prefix("pod")?),
        };
        let uid = uid.replace('_', "-");
        if !is_uid(&uid) {
            return None;
        }
        let qos = if rest.starts_with("pod") { Some(QosClass::Guaranteed) } else { qos };
        return Some((uid, qos));
    }
    let uid = part.strip_prefix("pod")?;
    if !is_uid(uid) {
        return None;
    }
    match parent? {
        "kubepods" => Some((uid.to_string(), Some(QosClass::Guaranteed))),
        p @ ("burstable" | "besteffort") => Some((uid.to_string(), qos_of(p))),
        _ => None,
    }
}

/// `machine-libpod_pod_<id>.slice` (systemd) or `<id>` below `libpod_parent`.
fn podman_pod(part: &str, parent: Option<&str>) -> Option<String> {
    if let Some(id) = part.strip_prefix("machine-libpod_pod_").and_then(|r| r.strip_suffix(".slice")) {
        return is_hex_id(id).then(|| id.to_string());
    }
    (parent == Some("libpod_parent") && is_hex_id(part)).then(|| part.to_string())
}

fn is_conmon(part: &str) -> bool {
    part.starts_with("crio-conmon-") || part.starts_with("libpod-conmon-")
}

/// One path component that names a container.
fn container_component(part: &str, in_pod: bool, parent: Option<&str>) -> Option<(Runtime, String)> {
    let trimmed = part.strip_suffix(".scope").unwrap_or(part);
    let prefixed = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in prefixed {
        if let Some(id) = trimmed.strip_prefix(prefix)
            && is_hex_id(id)
        {
            return Some((runtime, id.to_string()));
        }
    }
    if is_hex_id(part) {
        if in_pod {
            return Some((Runtime::Unknown, part.to_string()));
        }
        if parent == Some("docker") {
            return Some((Runtime::Docker, part.to_string()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-abcdef012345";
    const UID_: &str = "0f1e2d3c_4b5a_6978_8a9b_abcdef012345";
    const ID: &str = "4f9c3b1e0d8a7f6e5d4c3b2a190817263544536271809a8b7c6d5e4f3a2b1c0d";
    const POD_ID: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";

    fn container(runtime: Runtime, pod: Option<&str>, qos: Option<QosClass>) -> CgroupOwner {
        CgroupOwner::Container(ContainerRef {
            runtime,
            pod_uid: pod.map(str::to_string),
            container_id: ID.to_string(),
            qos,
        })
    }

    #[test]
    fn kubelet_systemd_driver_every_qos_and_runtime() {
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
                QosClass::Burstable,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                Runtime::CriO,
                QosClass::BestEffort,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
                Runtime::Docker,
                QosClass::Guaranteed,
            ),
        ];
        for (path, runtime, qos) in cases {
            assert_eq!(parse(&path), container(runtime, Some(UID), Some(qos)), "{path}");
        }
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        let cases = [
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Runtime::Unknown, QosClass::Burstable),
            (format!("/kubepods/besteffort/pod{UID}/crio-{ID}"), Runtime::CriO, QosClass::BestEffort),
            (format!("/kubepods/pod{UID}/{ID}"), Runtime::Unknown, QosClass::Guaranteed),
        ];
        for (path, runtime, qos) in cases {
            assert_eq!(parse(&path), container(runtime, Some(UID), Some(qos)), "{path}");
        }
    }

    #[test]
    fn cgroup_v1_and_nested_prefixes_are_ignored() {
        // v1 hierarchies below the caller's own cgroup, as on hybrid hosts,
        // and a container that created child cgroups of its own.
        let path = format!(
            "/process_api/abc/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope"
        );
        assert_eq!(parse(&path), container(Runtime::Containerd, Some(UID), Some(QosClass::BestEffort)));
    }

    #[test]
    fn pod_level_and_conmon_cgroups_belong_to_the_pod_only() {
        let pod = CgroupOwner::Pod { pod_uid: UID.to_string(), qos: Some(QosClass::Burstable) };
        assert_eq!(parse(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice")), pod);
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
            )),
            pod
        );
        assert_eq!(parse(&format!("/kubepods/burstable/pod{UID}")), pod);
    }

    #[test]
    fn docker_without_kubernetes() {
        assert_eq!(parse(&format!("/docker/{ID}")), container(Runtime::Docker, None, None));
        assert_eq!(parse(&format!("/system.slice/docker-{ID}.scope")), container(Runtime::Docker, None, None));
    }

    #[test]
    fn podman_pods_and_containers() {
        let in_pod = CgroupOwner::Container(ContainerRef {
            runtime: Runtime::Podman,
            pod_uid: Some(POD_ID[..64].to_string()),
            container_id: ID.to_string(),
            qos: None,
        });
        let pod_id = &POD_ID[..64];
        assert_eq!(parse(&format!("/libpod_parent/{pod_id}/libpod-{ID}")), in_pod);
        assert_eq!(parse(&format!("/machine.slice/machine-libpod_pod_{pod_id}.slice/libpod-{ID}.scope")), in_pod);
        assert_eq!(
            parse(&format!("/machine.slice/machine-libpod_pod_{pod_id}.slice/libpod-{ID}.scope/container")),
            in_pod
        );
        assert_eq!(parse(&format!("/machine.slice/libpod-{ID}.scope")), container(Runtime::Podman, None, None));
        assert_eq!(parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")), CgroupOwner::Other);
    }

    #[test]
    fn everything_else_is_other() {
        for path in [
            "/",
            "",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable/podnot-a-uid/abc",
            "/docker/short",
            &format!("/somewhere/{ID}"),
        ] {
            assert_eq!(parse(path), CgroupOwner::Other, "{path:?}");
        }
    }

    #[test]
    fn display_uses_the_kubernetes_container_id_scheme() {
        let CgroupOwner::Container(c) = parse(&format!("/kubepods/pod{UID}/crio-{ID}")) else {
            panic!("not a container")
        };
        assert_eq!(c.to_string(), format!("cri-o://{ID}"));
    }
}
