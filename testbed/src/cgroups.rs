//! Kubelet-layout cgroups in cgroup v2 and in the v1 hierarchies, created
//! below the cgroup this process is in (hybrid hosts may not allow anything
//! else), and removed again.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// v1 controllers a pod's containers get directories in (when mounted).
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "blkio", "pids"];

/// One container's directories, one per hierarchy; the first is cgroup v2.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CgroupSet {
    pub dirs: Vec<PathBuf>,
}

impl CgroupSet {
    /// The cgroup v2 directory (its inode is the cgroup id eBPF sees).
    pub fn v2(&self) -> Option<&Path> {
        self.dirs.first().map(PathBuf::as_path)
    }

    /// `cgroup.procs` of every hierarchy: writing a PID there moves it in.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the directories (they must be empty of processes).
    pub fn remove(&self) -> Result<()> {
        for d in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    // A process that just exited may linger a moment.
                    Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => bail!("removing cgroup {}: {e}", d.display()),
                }
            }
        }
        Ok(())
    }
}

/// A hierarchy: its mount point and this process's path in it.
struct Hierarchy {
    mount: PathBuf,
    own: String,
}

fn hierarchies() -> Result<Vec<Hierarchy>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let own = fs::read_to_string("/proc/self/cgroup")?;
    let own_path = |pred: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
            pred(ctl).then(|| path.to_string())
        })
    };
    let mut v2 = None;
    let mut v1: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, _src, opts) = (r.next().unwrap_or(""), r.next(), r.next().unwrap_or(""));
        if fstype == "cgroup2" && v2.is_none() {
            v2 =
                Some(Hierarchy { mount: mount.into(), own: own_path(&|c| c.is_empty()).unwrap_or_else(|| "/".into()) });
        } else if fstype == "cgroup" {
            let ctls: Vec<&str> = opts.split(',').filter(|o| V1_CONTROLLERS.contains(o)).collect();
            if let Some(first) = ctls.first() {
                if v1.iter().any(|h| h.mount == Path::new(mount)) {
                    continue;
                }
                let own = own_path(&|c| c.split(',').any(|x| x == *first)).unwrap_or_else(|| "/".into());
                v1.push(Hierarchy { mount: mount.into(), own });
            }
        }
    }
    let mut all = vec![v2.context("no cgroup2 mount: the testbed (and pmoas) need cgroup v2, hybrid is fine")?];
    all.extend(v1);
    Ok(all)
}

fn create(hier: &[Hierarchy], relative: &str) -> Result<CgroupSet> {
    let mut dirs = Vec::new();
    for h in hier {
        let dir = h.mount.join(h.own.trim_start_matches('/')).join(relative);
        fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        dirs.push(dir);
    }
    Ok(CgroupSet { dirs })
}

pub struct Layout {
    pub sidecar: CgroupSet,
    pub app: CgroupSet,
    pub client: CgroupSet,
    /// Pod slice first, then the shared QoS and kubepods slices.
    pub shared_parents: Vec<PathBuf>,
}

/// Creates one container cgroup per id for a pod (systemd driver naming,
/// BestEffort QoS, containerd), in every hierarchy; also returns the pod's
/// and the shared parents, deepest first, for removal.
pub fn pod_containers(uid: &str, ids: &[&str]) -> Result<(Vec<CgroupSet>, Vec<PathBuf>)> {
    let hier = hierarchies()?;
    let pod_slice =
        format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
    let sets = ids
        .iter()
        .map(|id| create(&hier, &format!("{pod_slice}/cri-containerd-{id}.scope")))
        .collect::<Result<Vec<_>>>()?;
    let mut parents = Vec::new();
    for h in &hier {
        let base = h.mount.join(h.own.trim_start_matches('/'));
        parents.push(base.join(&pod_slice));
        parents.push(base.join("kubepods.slice/kubepods-besteffort.slice"));
        parents.push(base.join("kubepods.slice"));
    }
    Ok((sets, parents))
}

/// The testbed pod's containers and a client cgroup outside any pod.
pub fn kubelet_layout(uid: &str, sidecar_id: &str, app_id: &str, name: &str) -> Result<Layout> {
    let (mut sets, shared_parents) = pod_containers(uid, &[sidecar_id, app_id])?;
    let app = sets.pop().expect("two sets");
    let sidecar = sets.pop().expect("two sets");
    let client = create(&hierarchies()?, &format!("pmoas-testbed-{name}-client"))?;
    Ok(Layout { sidecar, app, client, shared_parents })
}

/// Removes each directory that is empty; shared parents in use by another
/// testbed stay.
pub fn remove_if_empty(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = fs::remove_dir(d);
    }
}
