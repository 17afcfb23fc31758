//! Discovery over a fake cgroup tree and a fake /proc.

use super::*;
use std::os::unix::fs::MetadataExt;

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

    fn discovery(&self, grace: Duration) -> Discovery {
        let config = DiscoveryConfig {
            procfs: self.procfs.clone(),
            cgroup2: Some(self.root.clone()),
            grace_period: grace,
            ..DiscoveryConfig::default()
        };
        Discovery::with_cgroupfs(CgroupFs::detect(Some(&self.root)).unwrap(), &config)
    }
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
    assert_eq!(d.stats(), DiscoveryStats { pods: 1, containers: 1 });
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
    assert_eq!(d.stats(), DiscoveryStats { pods: 1, containers: 0 });
    std::thread::sleep(Duration::from_millis(80));
    d.rescan();
    assert!(matches!(d.lookup(id), Lookup::Unknown), "forgotten after grace");
}
