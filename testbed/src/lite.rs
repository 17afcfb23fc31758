//! Lightweight pods: kubelet-layout cgroups with real, idle processes of
//! chosen names, and no network of their own. For discovery tests (a
//! Linkerd pod, a native-sidecar pod) and benchmarks that need many pods.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::cgroups::{self, CgroupSet};
use crate::procs;

/// One container of a lite pod.
pub struct LiteContainer {
    pub id: String,
    pub cgroups: CgroupSet,
    process: Option<Child>,
}

impl LiteContainer {
    /// The PID of its idle process, if it has one.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|c| c.id())
    }
}

/// A pod of cgroups and idle processes; removed when dropped.
pub struct LitePod {
    pub uid: String,
    pub containers: Vec<LiteContainer>,
    parents: Vec<PathBuf>,
}

/// A copy of `sleep` named `name`, so the process's comm and argv[0] are
/// `name` (what the process-name heuristic looks at).
fn named_sleep(name: &str) -> Result<PathBuf> {
    let dir = Path::new(crate::STATE_ROOT).join("bin");
    fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    if !path.exists() {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        fs::copy("/bin/sleep", &tmp).context("copying /bin/sleep")?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

impl LitePod {
    /// A pod with one container per entry; `Some(name)` runs an idle
    /// process called `name` in it, `None` leaves it empty.
    pub fn create(processes: &[Option<&str>]) -> Result<LitePod> {
        let uid = crate::random_uuid()?;
        let ids: Vec<String> = (0..processes.len()).map(|_| crate::random_hex(32)).collect::<Result<_>>()?;
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (sets, parents) = cgroups::pod_containers(&uid, &id_refs)?;
        let mut pod = LitePod { uid, containers: Vec::new(), parents };
        for ((id, cgroups), name) in ids.into_iter().zip(sets).zip(processes) {
            let process = match name {
                Some(name) => Some(
                    procs::command_in(named_sleep(name)?, &cgroups, None)
                        .arg("3600")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                        .with_context(|| format!("starting {name}"))?,
                ),
                None => None,
            };
            pod.containers.push(LiteContainer { id, cgroups, process });
        }
        Ok(pod)
    }

    /// A command that runs in container `i`'s cgroups (host network).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        procs::command_in(program, &self.containers[i].cgroups, None)
    }
}

impl Drop for LitePod {
    fn drop(&mut self) {
        for c in &mut self.containers {
            if let Some(p) = &mut c.process {
                let _ = p.kill();
                let _ = p.wait();
            }
            let _ = c.cgroups.remove();
        }
        cgroups::remove_if_empty(&self.parents);
    }
}
