//! Discovery through the Kubernetes API: a local fake API server serves this
//! node's pods (fixtures in the JSON a real API server returns: an
//! Istio-injected pod, a Linkerd pod, a native-sidecar pod, a pod being
//! deleted), bound to real cgroups and processes on the testbed; the
//! exporter's series must carry their names and roles.

mod common;

use std::time::Duration;

use common::*;
use pmoas_testbed::fake_kube::{FakeKube, fixture};
use pmoas_testbed::lite::LitePod;
use pmoas_testbed::{Place, Pod, PodOptions};
use serde_json::json;

const NODE: &str = "pmoas-test-node";
const ISTIO_POD: &str = "productpage-v1-7d9f8c6b5-x2kqp";

/// One at a time: each starts pods and an exporter of its own.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The testbed pod, announced by the API as an Istio-injected pod.
fn istio_fixture(pod: &Pod) -> serde_json::Value {
    fixture(
        "istio-pod",
        &[
            ("UID", &pod.state.uid),
            ("NODE", NODE),
            ("SIDECAR_ID", &pod.state.sidecar_id),
            ("APP_ID", &pod.state.app_id),
            ("INIT_ID", &pmoas_testbed::random_hex(32).unwrap()),
            ("POD_IP", &pod.state.pod_ip.to_string()),
        ],
    )
}

fn lite_fixture(name: &str, lite: &LitePod, node: &str) -> serde_json::Value {
    fixture(
        name,
        &[
            ("UID", &lite.uid),
            ("NODE", node),
            ("SIDECAR_ID", &lite.containers[0].id),
            ("APP_ID", &lite.containers[1].id),
            ("INIT_ID", &pmoas_testbed::random_hex(32).unwrap()),
            ("POD_IP", "10.244.1.23"),
        ],
    )
}

fn start_exporter(kube: &FakeKube, dir: &std::path::Path, extra: &[&str]) -> Exporter {
    let kubeconfig = kube.kubeconfig(dir).unwrap();
    let mut args = vec![
        "--collectors",
        "socket",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--kubernetes.node-name",
        NODE,
        "--discovery.grace-period",
        "2s",
        "--discovery.rescan-interval",
        "200ms",
        "--engine.enabled",
        "false",
    ];
    args.extend_from_slice(extra);
    Exporter::start(&args)
}

/// Metadata arrives asynchronously: how long a scrape may wait for it.
const WITHIN: Duration = Duration::from_secs(15);

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pmoas-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn kubernetes_names_pods_and_their_sidecars() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run("kubernetes_names_pods_and_their_sidecars", &testbed_problems()) {
        return;
    }
    let kube = FakeKube::start().unwrap();
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let linkerd = LitePod::create(&[Some("linkerd2-proxy"), Some("web-svc")]).unwrap();
    let native = LitePod::create(&[Some("mesh-agent"), Some("checkout")]).unwrap();
    let elsewhere = LitePod::create(&[Some("sleep"), Some("sleep")]).unwrap();
    kube.apply(istio_fixture(&pod));
    kube.apply(lite_fixture("linkerd-pod", &linkerd, NODE));
    kube.apply(lite_fixture("native-sidecar-pod", &native, NODE));
    // A pod of another node: the exporter must not even ask for it.
    kube.apply(lite_fixture("linkerd-pod", &elsewhere, "some-other-node"));

    let dir = tmpdir("k8s-names");
    let exp = start_exporter(&kube, &dir, &[]);
    if !exp.socket_collector_runs("kubernetes_names_pods_and_their_sidecars") {
        return;
    }
    assert!(
        kube.requests().iter().any(|r| r.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}"))),
        "the watch is limited to this node: {:?}",
        kube.requests()
    );

    let info = |m: &Metrics, ns: &str, container: &str, role: &str, kind: &str| {
        m.get(
            "pmoas_container_info",
            &[("namespace", ns), ("container", container), ("role", role), ("sidecar_kind", kind)],
        )
    };
    let m = exp.eventually("all three pods named", WITHIN, |m| {
        info(m, "bookinfo", "istio-proxy", "sidecar", "istio").is_some()
            && info(m, "emojivoto", "linkerd-proxy", "sidecar", "linkerd").is_some()
            && info(m, "shop", "mesh-agent", "sidecar", "native").is_some()
    });
    assert_eq!(info(&m, "bookinfo", "productpage", "app", ""), Some(1.0));
    assert_eq!(info(&m, "emojivoto", "web-svc", "app", ""), Some(1.0));
    assert_eq!(info(&m, "shop", "checkout", "app", ""), Some(1.0));
    assert_eq!(
        m.get("pmoas_container_info", &[("container", "istio-proxy"), ("image", "docker.io/istio/proxyv2:1.24.0")]),
        Some(1.0)
    );
    assert_eq!(m.get("pmoas_discovery_workloads", &[("source", "kubernetes"), ("kind", "pod")]), Some(3.0));
    assert_eq!(m.describe("pmoas_container_info", &[("pod", "web-5c8d9b7f4-q7zvn"), ("namespace", "")]), "");

    // Traffic through the sidecar carries the names from the API.
    let report = tool(&pod, Place::Client, &["http", "--connect", &pod.envoy_addr().to_string(), "--count", "20"]);
    assert_eq!(report["connected"], 20);
    std::thread::sleep(Duration::from_millis(300));
    let m = exp.scrape();
    let sidecar = [("namespace", "bookinfo"), ("pod", ISTIO_POD), ("container", "istio-proxy"), ("role", "sidecar")];
    assert!(m.sum("pmoas_tcp_accepts_total", &[&sidecar[..], &[("peer", "node")]].concat()) >= 20.0);
    assert!(m.sum("pmoas_tcp_connects_total", &[&sidecar[..], &[("peer", "app")]].concat()) >= 1.0);
    let app = [
        ("namespace", "bookinfo"),
        ("pod", ISTIO_POD),
        ("container", "productpage"),
        ("role", "app"),
        ("peer", "sidecar"),
    ];
    assert!(m.sum("pmoas_tcp_accepts_total", &app) >= 1.0, "{}", m.describe("pmoas_tcp_accepts_total", &[]));

    // Deletion: the API marks the pod terminating, then deletes it, and the
    // containers go. Its series leave after the grace period.
    kube.apply(fixture(
        "istio-pod-terminating",
        &[
            ("UID", &pod.state.uid),
            ("NODE", NODE),
            ("SIDECAR_ID", &pod.state.sidecar_id),
            ("APP_ID", &pod.state.app_id),
            ("INIT_ID", "0"),
            ("POD_IP", &pod.state.pod_ip.to_string()),
        ],
    ));
    let uid = pod.state.uid.clone();
    kube.delete(&uid);
    pod.down().unwrap();
    let m = exp.eventually("the deleted pod's series are gone", WITHIN, |m| {
        m.describe("pmoas_tcp_accepts_total", &[("namespace", "bookinfo")]).is_empty()
            && m.describe("pmoas_tcp_accepts_total", &[("pod", &uid)]).is_empty()
            && info(m, "bookinfo", "istio-proxy", "sidecar", "istio").is_none()
    });
    assert_eq!(m.get("pmoas_discovery_workloads", &[("source", "kubernetes"), ("kind", "pod")]), Some(2.0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_outages_and_malformed_objects_are_survived() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run("api_outages_and_malformed_objects_are_survived", &testbed_problems()) {
        return;
    }
    let kube = FakeKube::start().unwrap();
    let linkerd = LitePod::create(&[Some("linkerd2-proxy"), Some("web-svc")]).unwrap();
    kube.apply(lite_fixture("linkerd-pod", &linkerd, NODE));
    let dir = tmpdir("k8s-outage");
    let exp = start_exporter(&kube, &dir, &[]);
    let named = |m: &Metrics| {
        m.get("pmoas_container_info", &[("container", "linkerd-proxy"), ("sidecar_kind", "linkerd")]).is_some()
    };
    exp.eventually("named", WITHIN, named);
    let errors = |m: &Metrics| m.sum("pmoas_discovery_errors_total", &[("source", "kubernetes")]);
    let e0 = errors(&exp.scrape());

    // An object without uid or name: ignored, counted, nothing else changes.
    kube.send_raw("ADDED", json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "broken"}}));
    let m = exp.eventually("the malformed pod counted", WITHIN, |m| errors(m) > e0);
    assert!(named(&m));

    // The API fails: the last known pods stay, failures are counted.
    let e1 = errors(&m);
    kube.set_failing(true);
    let m = exp.eventually("API failures counted", WITHIN, |m| errors(m) > e1);
    assert!(named(&m), "last known state kept during the outage");
    assert_eq!(m.get("pmoas_scrape_collector_success", &[("collector", "socket")]), Some(1.0));

    // It comes back: a pod added meanwhile shows up.
    kube.set_failing(false);
    let native = LitePod::create(&[Some("mesh-agent"), Some("checkout")]).unwrap();
    kube.apply(lite_fixture("native-sidecar-pod", &native, NODE));
    exp.eventually("recovered after the outage", WITHIN, |m| {
        m.get("pmoas_container_info", &[("container", "mesh-agent"), ("sidecar_kind", "native")]).is_some()
    });
    assert!(exp.log_text().contains("Kubernetes watch failed"), "the outage is in the log");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn target_selection_filters_in_the_kernel() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run("target_selection_filters_in_the_kernel", &testbed_problems()) {
        return;
    }
    let kube = FakeKube::start().unwrap();
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    kube.apply(istio_fixture(&pod));
    let dir = tmpdir("k8s-target");
    let exp = start_exporter(
        &kube,
        &dir,
        &["--target.namespace", "bookinfo", "--target.pod-label", "app=productpage", "--collector.cgroup"],
    );
    if !exp.socket_collector_runs("target_selection_filters_in_the_kernel") {
        return;
    }
    exp.eventually("named", WITHIN, |m| m.get("pmoas_container_info", &[("container", "istio-proxy")]).is_some());
    // Give the rescan a moment to hand the selection to the kernel.
    std::thread::sleep(Duration::from_millis(500));

    let before = exp.scrape();
    let report = tool(&pod, Place::Client, &["http", "--connect", &pod.envoy_addr().to_string(), "--count", "30"]);
    assert_eq!(report["connected"], 30);
    std::thread::sleep(Duration::from_millis(300));
    let after = exp.scrape();
    let d = |labels: &[(&str, &str)]| {
        after.sum("pmoas_tcp_accepts_total", labels) - before.sum("pmoas_tcp_accepts_total", labels)
    };
    assert!(d(&[("namespace", "bookinfo"), ("container", "istio-proxy")]) >= 30.0, "the selected pod is watched");
    // The client outside the pod is not selected: the kernel counted nothing for it.
    let client = format!("pmoas-testbed-{}-client", pod.state.name);
    let connects = after.sum("pmoas_tcp_connects_total", &[("container", client.as_str())]);
    assert_eq!(
        connects,
        0.0,
        "unselected workloads are filtered in the kernel:\n{}",
        after.describe("pmoas_tcp_connects_total", &[])
    );
    // The cgroup collector too: network counted for the selected pod only,
    // and cgroupfs read for nothing else.
    let selected = [("namespace", "bookinfo"), ("container", "istio-proxy")];
    assert!(after.sum("pmoas_container_network_receive_bytes_total", &selected) > 0.0);
    assert!(
        after.get("pmoas_container_network_transmit_bytes_total", &[("container", client.as_str())]).is_none(),
        "the unselected client has no kernel counters"
    );
    let cpu = after.describe("pmoas_container_cpu_usage_seconds_total", &[]);
    assert!(
        after
            .series
            .iter()
            .filter(|(n, _, _)| n == "pmoas_container_cpu_usage_seconds_total")
            .all(|(_, l, _)| l["namespace"] == "bookinfo"),
        "only the selected pod's cgroups are read:\n{cpu}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
