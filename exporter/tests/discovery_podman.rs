//! Discovery through a container engine's Docker-compatible API, with a
//! real Podman: `podman kube play` of a two-container pod (an app and a
//! sidecar named istio-proxy), traffic between them, and the labels and
//! peers on the socket metrics it makes; and that the pod leaves no cgroup
//! behind for the next exporter to name.

mod common;

use std::time::Duration;

use common::*;
use pmoas_testbed::podman::{self, Podman};

const POD_YAML: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: shop
  labels:
    app: shop
spec:
  containers:
  - name: app
    image: localhost/pmoas-busybox:1
    command: ["/bin/httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/"]
  - name: istio-proxy
    image: localhost/pmoas-busybox:1
    command: ["/bin/httpd", "-f", "-p", "127.0.0.1:15000", "-h", "/"]
"#;

#[test]
fn podman_pods_are_named_through_the_engine_api() {
    let mut problems = testbed_problems();
    problems.extend(podman::missing_prerequisites());
    if !can_run("podman_pods_are_named_through_the_engine_api", &problems) {
        return;
    }
    let podman = Podman::setup().expect("podman setup");
    let pod = podman.play("shop", POD_YAML).expect("podman kube play");
    let api = podman.serve().expect("podman API");
    let socket = api.socket.to_str().unwrap().to_string();
    let exp = Exporter::start(&[
        "--collectors",
        "socket",
        "--kubernetes.enabled",
        "false",
        "--engine.socket",
        &socket,
        "--engine.poll-interval",
        "500ms",
        "--discovery.rescan-interval",
        "200ms",
    ]);
    if !exp.socket_collector_runs("podman_pods_are_named_through_the_engine_api") {
        return;
    }
    let info = |m: &Metrics, container: &str, role: &str| {
        m.get("pmoas_container_info", &[("namespace", ""), ("pod", "shop"), ("container", container), ("role", role)])
    };
    let m = exp.eventually("Podman's pod named", Duration::from_secs(15), |m| {
        info(m, "istio-proxy", "sidecar").is_some() && info(m, "app", "app").is_some()
    });
    assert_eq!(m.get("pmoas_container_info", &[("container", "istio-proxy"), ("sidecar_kind", "istio")]), Some(1.0));
    assert_eq!(m.get("pmoas_container_info", &[("container", "app"), ("image", podman::IMAGE)]), Some(1.0));
    assert!(
        m.describe("pmoas_container_info", &[("container", "")]).is_empty(),
        "the infra container is the pod, not a container"
    );
    assert_eq!(m.get("pmoas_discovery_workloads", &[("source", "engine"), ("kind", "pod")]), Some(1.0));

    let before = exp.scrape();
    for _ in 0..5 {
        pod.exec("app", &["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:15000/index.html"]).unwrap();
        pod.exec("istio-proxy", &["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = exp.scrape();
    let d = |name: &str, container: &str, role: &str, peer: &str| {
        let l = [("namespace", ""), ("pod", "shop"), ("container", container), ("role", role), ("peer", peer)];
        after.sum(name, &l) - before.sum(name, &l)
    };
    assert_eq!(
        d("pmoas_tcp_connects_total", "app", "app", "sidecar"),
        5.0,
        "{}",
        after.describe("pmoas_tcp_connects_total", &[("pod", "shop")])
    );
    assert_eq!(d("pmoas_tcp_accepts_total", "istio-proxy", "sidecar", "app"), 5.0);
    assert_eq!(d("pmoas_tcp_connects_total", "istio-proxy", "sidecar", "app"), 5.0);
    assert_eq!(d("pmoas_tcp_accepts_total", "app", "app", "sidecar"), 5.0);

    // Without the rights to the socket: a clear log line, a counted error,
    // and an exporter that keeps serving.
    // (setpriv is util-linux, a prerequisite of the testbed.)
    let mut cmd = std::process::Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(exporter_bin());
    let denied = Exporter::start_with(
        cmd,
        &[
            "--collector.disable-defaults",
            "--kubernetes.enabled",
            "false",
            "--engine.socket",
            &socket,
            "--engine.poll-interval",
            "200ms",
        ],
    );
    denied.eventually("permission errors counted and shown as degraded", Duration::from_secs(10), |m| {
        m.sum("pmoas_discovery_errors_total", &[("source", "engine")]) >= 1.0
            && m.get("pmoas_feature_degraded", &[("component", "discovery"), ("feature", "engine")]) == Some(1.0)
    });
    let log = denied.log_text();
    assert!(log.contains("Permission denied") && log.contains("access to the socket"), "{log}");
    let (_, page) = denied.get("/").unwrap();
    assert!(page.contains("CAP_DAC_OVERRIDE"), "the landing page says what to grant:\n{page}");
    assert_eq!(denied.terminate().code(), Some(0));

    // Podman leaves the pod's cgroup in some hierarchies after `pod rm`;
    // the teardown must remove it everywhere.
    let id = pod.id.clone();
    assert!(!pod_cgroups_in_sysfs(&id).is_empty(), "the running pod {id} has cgroups under /sys/fs/cgroup");
    pod.remove().expect("removing the pod and its cgroups");
    let left = pod_cgroups_in_sysfs(&id);
    assert!(left.is_empty(), "cgroups of pod {id} left behind: {left:?}");
    drop(api);
}

/// `libpod_parent/<id>` directories under /sys/fs/cgroup, in cgroup2 alone
/// or in any v1/v2 hierarchy of a hybrid host: found by walking sysfs, not
/// by the testbed's own notion of the hierarchies it cleans.
fn pod_cgroups_in_sysfs(id: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    bases.extend(std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    bases.into_iter().map(|b| b.join("libpod_parent").join(id)).filter(|p| p.is_dir()).collect()
}

#[test]
fn a_missing_engine_socket_is_reported_not_fatal() {
    let exp = Exporter::start(&[
        "--collector.disable-defaults",
        "--kubernetes.enabled",
        "false",
        "--engine.enabled",
        "true",
        "--engine.socket",
        "/nonexistent/podman.sock",
        "--engine.poll-interval",
        "200ms",
    ]);
    exp.eventually("engine failures counted", Duration::from_secs(10), |m| {
        m.sum("pmoas_discovery_errors_total", &[("source", "engine")]) >= 1.0
    });
    assert!(exp.log_text().contains("/nonexistent/podman.sock"), "the log names the socket:\n{}", exp.log_text());
    // Once per failure spell, not once per poll.
    assert_eq!(exp.log_text().matches("container engine API fails").count(), 1, "{}", exp.log_text());
    assert_eq!(exp.terminate().code(), Some(0));
}
