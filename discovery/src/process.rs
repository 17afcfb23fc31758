//! The process-name sidecar heuristic: a container whose processes include
//! a known proxy is the pod's sidecar.
//!
//! This is the fallback that needs nothing but /proc; container names,
//! images and annotations from the Kubernetes API take precedence once that
//! source knows the pod.

use std::fs;
use std::path::Path;

/// Process names (comm, or argv[0]'s file name) of well-known sidecar
/// proxies: Envoy (plain, Istio's pilot-agent that runs it), Linkerd's proxy.
pub const SIDECAR_PROCESS_NAMES: &[&str] = &["envoy", "pilot-agent", "linkerd2-proxy"];

/// PIDs of the processes directly in a cgroup directory (v2 `cgroup.procs`).
pub fn cgroup_pids(cgroup_dir: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup_dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The names a process goes by: its comm (15 chars at most) and the file
/// name of argv[0]. Empty when the process is gone.
pub fn process_names(procfs: &Path, pid: u32) -> Vec<String> {
    let dir = procfs.join(pid.to_string());
    let mut names = Vec::with_capacity(2);
    if let Ok(comm) = fs::read_to_string(dir.join("comm")) {
        names.push(comm.trim_end().to_string());
    }
    if let Ok(cmdline) = fs::read(dir.join("cmdline"))
        && let Some(arg0) = cmdline.split(|b| *b == 0).next().filter(|a| !a.is_empty())
    {
        let arg0 = String::from_utf8_lossy(arg0);
        let base = arg0.rsplit('/').next().unwrap_or(&arg0).to_string();
        if !names.contains(&base) {
            names.push(base);
        }
    }
    names
}

/// Is this a sidecar proxy's process name?
pub fn is_sidecar_process(name: &str) -> bool {
    SIDECAR_PROCESS_NAMES.contains(&name)
}

/// What the processes of a cgroup say: `Some(true)` if one is a sidecar
/// proxy, `Some(false)` if there are processes and none is, `None` if the
/// cgroup has no (readable) process yet.
pub fn runs_sidecar(procfs: &Path, cgroup_dir: &Path) -> Option<bool> {
    let pids = cgroup_pids(cgroup_dir);
    let mut seen_any = false;
    for pid in pids {
        let names = process_names(procfs, pid);
        if names.is_empty() {
            continue;
        }
        seen_any = true;
        if names.iter().any(|n| is_sidecar_process(n)) {
            return Some(true);
        }
    }
    seen_any.then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(dir: &Path, pid: u32, comm: &str, argv0: &str) {
        let p = dir.join(pid.to_string());
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(p.join("cmdline"), format!("{argv0}\0--flag\0")).unwrap();
    }

    #[test]
    fn known_proxies_make_a_sidecar() {
        let t = tempfile::tempdir().unwrap();
        let (procfs, cg) = (t.path().join("proc"), t.path().join("cg"));
        fs::create_dir_all(&cg).unwrap();
        fake_proc(&procfs, 10, "envoy", "/usr/local/bin/envoy");
        fake_proc(&procfs, 11, "python3", "/usr/bin/python3");
        fs::write(cg.join("cgroup.procs"), "11\n10\n").unwrap();
        assert_eq!(runs_sidecar(&procfs, &cg), Some(true));
    }

    #[test]
    fn argv0_counts_when_comm_is_something_else() {
        let t = tempfile::tempdir().unwrap();
        let (procfs, cg) = (t.path().join("proc"), t.path().join("cg"));
        fs::create_dir_all(&cg).unwrap();
        // Threads or wrappers can rename comm; argv[0] still says linkerd.
        fake_proc(&procfs, 20, "main", "/usr/lib/linkerd/linkerd2-proxy");
        fs::write(cg.join("cgroup.procs"), "20\n").unwrap();
        assert_eq!(runs_sidecar(&procfs, &cg), Some(true));
    }

    #[test]
    fn apps_and_empty_cgroups() {
        let t = tempfile::tempdir().unwrap();
        let (procfs, cg) = (t.path().join("proc"), t.path().join("cg"));
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("cgroup.procs"), "").unwrap();
        assert_eq!(runs_sidecar(&procfs, &cg), None);
        fake_proc(&procfs, 30, "nginx", "nginx: master process");
        // a vanished pid is skipped, not an error
        fs::write(cg.join("cgroup.procs"), "31\n30\n").unwrap();
        assert_eq!(runs_sidecar(&procfs, &cg), Some(false));
        assert_eq!(runs_sidecar(&procfs, &t.path().join("missing")), None);
    }

    #[test]
    fn near_misses_are_not_sidecars() {
        for name in ["envoyx", "Envoy", "pilot", "linkerd", "proxy", ""] {
            assert!(!is_sidecar_process(name), "{name}");
        }
    }
}
