//! Discovery over a fake cgroup tree and a fake /proc.

use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-abcdef012345";
const UID_: &str = "0f1e2d3c_4b5a_6978_8a9b_abcdef012345";
const ENVOY_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NGINX_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    procfs: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cgroup");
        let procfs = dir.path().join("proc");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&procfs).unwrap();
        Fixture { _dir: dir, root, procfs }
    }

    fn pod_dir(&self) -> String {
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice")
    }

    /// Creates a cgroup directory with these (fake) processes; returns its id.
    fn cgroup(&self, rel: &str, procs: &[(u32, &str)]) -> u64 {
        let dir = self.root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        let mut list = String::new();
        for (pid, comm) in procs {
            let p = self.procfs.join(pid.to_string());
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(p.join("cmdline"), format!("{comm}\0")).unwrap();
            list.push_str(&format!("{pid}\n"));
        }
        fs::write(dir.join("cgroup.procs"), list).unwrap();
        fs::metadata(&dir).unwrap().ino()
    }

    fn settings(&self, grace: Duration) -> Settings {
        Settings {
            discovery: DiscoveryConfig {
                procfs: self.procfs.clone(),
                cgroup2: Some(self.root.clone()),
                grace_period: grace,
                ..DiscoveryConfig::default()
            },
            ..Settings::default()
        }
    }

    fn discovery(&self, grace: Duration) -> Discovery {
        self.with_settings(self.settings(grace))
    }

    fn with_settings(&self, settings: Settings) -> Discovery {
        Discovery::with_cgroupfs(CgroupFs::detect(Some(&self.root)).unwrap(), &settings).unwrap()
    }
}

fn cgroupfs_stats(d: &Discovery) -> (usize, usize) {
    d.stats().into_iter().find(|(s, _, _)| *s == Source::Cgroupfs).map(|(_, p, c)| (p, c)).unwrap()
}

#[test]
fn sidecar_and_app_of_a_kubelet_pod() {
    let f = Fixture::new();
    let envoy = f.cgroup(&format!("{}/cri-containerd-{ENVOY_ID}.scope", f.pod_dir()), &[(100, "envoy")]);
    let nginx = f.cgroup(&format!("{}/cri-containerd-{NGINX_ID}.scope", f.pod_dir()), &[(200, "nginx")]);
    let d = f.discovery(Duration::from_secs(60));

    let Lookup::Live(e) = d.lookup(envoy) else { panic!("envoy not live") };
    assert_eq!((e.pod.as_str(), e.container.as_str(), e.role), (UID, "111111111111", Role::Sidecar));
    assert_eq!(e.namespace, "");
    let Lookup::Live(n) = d.lookup(nginx) else { panic!("nginx not live") };
    assert_eq!((n.container.as_str(), n.role), ("222222222222", Role::App));
    assert!(e.same_pod(&n));
    assert!(!e.same_pod(&Workload::node()));
}

#[test]
fn node_and_host_cgroups() {
    let f = Fixture::new();
    let unit = f.cgroup("/system.slice/sshd.service", &[(300, "sshd")]);
    let d = f.discovery(Duration::from_secs(60));
    assert_eq!(*d.lookup(0).workload().unwrap().as_ref(), Workload::node());
    let w = d.lookup(unit).workload().unwrap().clone();
    assert_eq!((w.container.as_str(), w.role, w.pod_uid.clone()), ("sshd.service", Role::None, None));
    // the root cgroup is the node
    let root = fs::metadata(&f.root).unwrap().ino();
    assert_eq!(*d.lookup(root).workload().unwrap().as_ref(), Workload::node());
    assert!(matches!(d.lookup(999_999_999), Lookup::Unknown));
}

#[test]
fn rescan_finds_containers_settles_roles_and_expires_the_gone() {
    let f = Fixture::new();
    let rel = format!("{}/cri-containerd-{ENVOY_ID}.scope", f.pod_dir());
    // Created before its process started: app for now, unsettled.
    let id = f.cgroup(&rel, &[]);
    let d = f.discovery(Duration::from_millis(50));
    d.rescan();
    assert_eq!(cgroupfs_stats(&d), (1, 1));
    assert_eq!(d.lookup(id).workload().unwrap().role, Role::App);

    f.cgroup(&rel, &[(400, "envoy")]);
    d.rescan();
    assert_eq!(d.lookup(id).workload().unwrap().role, Role::Sidecar);
    assert_eq!(d.pod_pids(), vec![(UID.to_string(), 400)]);

    fs::remove_file(f.root.join(rel.trim_start_matches('/')).join("cgroup.procs")).unwrap();
    fs::remove_dir(f.root.join(rel.trim_start_matches('/'))).unwrap();
    d.rescan();
    assert!(matches!(d.lookup(id), Lookup::Gone(_)), "gone but within grace");
    // the pod cgroup itself is still there
    assert_eq!(cgroupfs_stats(&d), (1, 0));
    std::thread::sleep(Duration::from_millis(80));
    d.rescan();
    assert!(matches!(d.lookup(id), Lookup::Unknown), "forgotten after grace");
}

fn k8s_pod(
    uid: &str,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    containers: &[(&str, &str, &str)],
) -> metadata::PodMeta {
    metadata::PodMeta {
        uid: uid.into(),
        namespace: ns.into(),
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        annotations: BTreeMap::new(),
        containers: containers
            .iter()
            .map(|(n, image, id)| metadata::ContainerMeta {
                name: n.to_string(),
                image: image.to_string(),
                kind: metadata::ContainerKind::Regular,
                id: Some(id.to_string()),
            })
            .collect(),
    }
}

#[test]
fn kubernetes_metadata_names_containers_and_late_metadata_relabels() {
    let f = Fixture::new();
    let envoy = f.cgroup(&format!("{}/cri-containerd-{ENVOY_ID}.scope", f.pod_dir()), &[(100, "pilot-agent")]);
    let nginx = f.cgroup(&format!("{}/cri-containerd-{NGINX_ID}.scope", f.pod_dir()), &[(200, "nginx")]);
    let d = f.discovery(Duration::from_secs(60));
    // Before the API answered: names from the path.
    assert_eq!(d.lookup(nginx).workload().unwrap().pod, UID);

    d.store().upsert_pod(k8s_pod(
        UID,
        "shop",
        "web-7d9f",
        &[("app", "web")],
        &[("istio-proxy", "docker.io/istio/proxyv2:1.24.0", ENVOY_ID), ("web", "nginx:1.27", NGINX_ID)],
    ));
    let e = d.lookup(envoy).workload().unwrap().clone();
    assert_eq!(
        (e.namespace.as_str(), e.pod.as_str(), e.container.as_str(), e.role, e.sidecar_kind.as_str(), e.source),
        ("shop", "web-7d9f", "istio-proxy", Role::Sidecar, "istio", Source::Kubernetes)
    );
    let n = d.lookup(nginx).workload().unwrap().clone();
    assert_eq!((n.container.as_str(), n.role, n.image.as_str()), ("web", Role::App, "nginx:1.27"));
    assert!(e.same_pod(&n));

    // The pod goes away from the API: names fall back, nothing panics.
    d.store().remove_pod(UID);
    assert_eq!(d.lookup(nginx).workload().unwrap().pod, UID);
}

#[test]
fn target_selection_feeds_the_subscribers() {
    let f = Fixture::new();
    let other_uid = "11111111-2222-3333-4444-555555555555";
    let other_dir = format!("/kubepods.slice/kubepods-pod{}.slice", other_uid.replace('-', "_"));
    let web = f.cgroup(&format!("{}/cri-containerd-{NGINX_ID}.scope", f.pod_dir()), &[(200, "nginx")]);
    let db = f.cgroup(&format!("{other_dir}/cri-containerd-{ENVOY_ID}.scope"), &[(300, "postgres")]);
    let host = f.cgroup("/system.slice/sshd.service", &[(400, "sshd")]);
    let mut settings = f.settings(Duration::from_secs(60));
    settings.target = TargetConfig { namespace: vec!["shop".into()], pod: vec![], pod_label: Some("app=web".into()) };
    let d = f.with_settings(settings);
    d.store().upsert_pod(k8s_pod(UID, "shop", "web-1", &[("app", "web")], &[("web", "nginx", NGINX_ID)]));
    d.store().upsert_pod(k8s_pod(other_uid, "shop", "db-0", &[("app", "db")], &[("db", "postgres", ENVOY_ID)]));
    assert!(d.targets_enabled());

    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let sink = seen.clone();
    d.subscribe_targets(Box::new(move |u: &TargetUpdate| {
        let mut s = sink.lock().unwrap();
        s.extend(&u.added);
        for r in &u.removed {
            s.remove(r);
        }
    }));
    d.rescan();
    let pod_cgroup = fs::metadata(f.root.join(f.pod_dir().trim_start_matches('/'))).unwrap().ino();
    assert_eq!(*seen.lock().unwrap(), HashSet::from([web, pod_cgroup]), "only the web pod is watched");
    assert!(!d.lookup(db).workload().unwrap().selected);
    assert!(!d.lookup(host).workload().unwrap().selected, "host processes are not in a selected pod");

    // The db pod is relabelled into the selection: the kernel is told.
    d.store().upsert_pod(k8s_pod(other_uid, "shop", "db-0", &[("app", "web")], &[("db", "postgres", ENVOY_ID)]));
    d.rescan();
    assert!(seen.lock().unwrap().contains(&db));
    d.store().remove_pod(other_uid);
    d.rescan();
    assert!(!seen.lock().unwrap().contains(&db), "a pod that left the selection is removed");
}

#[test]
fn engine_names_podman_pods_compose_projects_and_plain_containers() {
    let f = Fixture::new();
    let pod_id = "a".repeat(64);
    let podman_envoy = f.cgroup(&format!("/libpod_parent/{pod_id}/libpod-{ENVOY_ID}"), &[(500, "envoy")]);
    let compose = f.cgroup(&format!("/system.slice/docker-{NGINX_ID}.scope"), &[(600, "nginx")]);
    let d = f.discovery(Duration::from_secs(60));
    let engine = |id: &str, name: &str, labels: &[(&str, &str)], pod: Option<(&str, &str)>| metadata::EngineContainer {
        id: id.into(),
        name: name.into(),
        image: "img".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        pod_id: pod.map(|p| p.0.to_string()),
        pod_name: pod.map(|p| p.1.to_string()),
    };
    d.store().replace_engine(vec![
        engine(ENVOY_ID, "demo-istio-proxy", &[("app", "demo")], Some((&pod_id, "demo"))),
        engine(
            NGINX_ID,
            "shop-web-1",
            &[("com.docker.compose.project", "shop"), ("com.docker.compose.service", "web")],
            None,
        ),
    ]);
    let p = d.lookup(podman_envoy).workload().unwrap().clone();
    assert_eq!(
        (p.pod.as_str(), p.container.as_str(), p.role, p.sidecar_kind.as_str(), p.source),
        ("demo", "istio-proxy", Role::Sidecar, "istio", Source::Engine)
    );
    assert_eq!(p.pod_uid.as_deref(), Some(pod_id.as_str()));
    let c = d.lookup(compose).workload().unwrap().clone();
    assert_eq!((c.pod.as_str(), c.container.as_str(), c.role), ("shop", "web", Role::App));
    let stats = d.stats();
    assert!(stats.contains(&(Source::Engine, 1, 2)), "{stats:?}");
    assert_eq!(d.containers().len(), 2);
}
