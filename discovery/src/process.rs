//! The process-name sidecar heuristic: a container whose processes include
//! a known proxy is the pod's sidecar.
//!
//! This is the fallback that needs nothing but /proc; container names,
//! images and annotations from the Kubernetes API take precedence once that
//! source knows the pod.

use std::fs;
use std::io;
use std::path::Path;

use crate::health::Health;

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

/// Can this exporter look into other users' processes in `procfs`? A
/// /proc mounted with `hidepid` hides them (`invisible`, `ptraceable`) or
/// closes their directories (`noaccess`) to a process that may not ptrace
/// them; names, cgroups and network namespaces of the pods' processes are
/// then out of reach. Judged from the mount's options and this process's
/// capabilities and groups, as the kernel does: probing a process could
/// not tell hidden from gone, and some hosts' PID 1 is closed even to root.
///
/// Kept for a few seconds: callers ask on every unreadable process file,
/// and mounts and capabilities change rarely.
pub fn others_visible(procfs: &Path) -> Result<(), String> {
    type Judged = (std::path::PathBuf, std::time::Instant, Result<(), String>);
    static LAST: std::sync::Mutex<Option<Judged>> = std::sync::Mutex::new(None);
    const KEEP: std::time::Duration = std::time::Duration::from_secs(5);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((path, at, verdict)) = last.as_ref()
        && path == procfs
        && at.elapsed() < KEEP
    {
        return verdict.clone();
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let verdict = match hidden_by(&mountinfo, &status, procfs) {
        Some(why) => Err(why),
        None => Ok(()),
    };
    *last = Some((procfs.to_path_buf(), std::time::Instant::now(), verdict.clone()));
    verdict
}

/// CAP_SYS_PTRACE (include/uapi/linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;

/// Why other users' processes in `procfs` are hidden from the process
/// whose /proc/self/status is `status`, if they are.
fn hidden_by(mountinfo: &str, status: &str, procfs: &Path) -> Option<String> {
    let options = mountinfo
        .lines()
        // A later mount on the same point covers the earlier ones.
        .rev()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?.replace("\\040", " ");
            let mut right = right.split_whitespace();
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
            (fstype == "proc" && Path::new(&point) == procfs).then_some(options)
        })
        .next()?;
    let hidepid = options.split(',').find_map(|o| o.strip_prefix("hidepid="))?;
    if matches!(hidepid, "0" | "off") {
        return None;
    }
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").trim();
    let caps = u64::from_str_radix(field("CapEff:"), 16).unwrap_or(0);
    if caps & (1 << CAP_SYS_PTRACE) != 0 {
        return None;
    }
    // `gid=` names a group whose members see everything.
    let ours: Vec<&str> = field("Groups:").split_whitespace().chain(field("Gid:").split_whitespace().nth(3)).collect();
    if options.split(',').filter_map(|o| o.strip_prefix("gid=")).any(|g| ours.contains(&g)) {
        return None;
    }
    let how = if matches!(hidepid, "1" | "noaccess") { "closed to" } else { "invisible to" };
    Some(format!(
        "{} is mounted with hidepid={hidepid}, and other users' processes are {how} an exporter without \
         CAP_SYS_PTRACE",
        procfs.display()
    ))
}

/// Was reading a file of another process refused rather than the process
/// gone? EACCES, or ENOENT where hidepid makes processes invisible.
pub fn is_denied(procfs: &Path, e: &io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::PermissionDenied => true,
        io::ErrorKind::NotFound => others_visible(procfs).is_err(),
        _ => false,
    }
}

/// Raises `discovery`/`process_names` while other users' processes are
/// hidden (sidecars are then not recognised by their process names), and
/// clears it when they are visible again. The result, for callers that
/// lose more than names.
pub fn report_visibility(health: &Health, procfs: &Path) -> Result<(), String> {
    let visible = others_visible(procfs);
    match &visible {
        Ok(()) => health.clear("discovery", "process_names"),
        Err(why) => health.raise(
            "discovery",
            "process_names",
            format!(
                "{why}: containers are not recognised as sidecars by their process names (envoy, pilot-agent, \
                 linkerd2-proxy); grant CAP_SYS_PTRACE, or run as root"
            ),
        ),
    }
    visible
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
    fn hidepid_hides_other_users_processes_from_an_exporter_without_ptrace() {
        let mounts = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                      42 27 0:39 / /host/proc rw,relatime - proc proc rw,hidepid=invisible\n\
                      43 27 0:40 / /closed rw,relatime - proc proc rw,hidepid=noaccess,gid=1000\n\
                      44 27 0:41 / /open rw,relatime - proc proc rw,hidepid=off\n";
        let nobody = "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapEff:\t000000c000001004\n";
        let tracer = "Gid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapEff:\t00000000000c0000\n";
        let member = "Gid:\t65534\t65534\t65534\t65534\nGroups:\t27 1000\nCapEff:\t0000000000000000\n";
        let hidden = |procfs: &str, status: &str| hidden_by(mounts, status, Path::new(procfs));
        assert_eq!(hidden("/proc", nobody), None, "no hidepid");
        assert_eq!(hidden("/open", nobody), None);
        let why = hidden("/host/proc", nobody).unwrap();
        assert!(why.contains("hidepid=invisible") && why.contains("CAP_SYS_PTRACE"), "{why}");
        assert_eq!(hidden("/host/proc", tracer), None, "CAP_SYS_PTRACE sees everything");
        assert!(hidden("/closed", nobody).unwrap().contains("closed to"));
        assert_eq!(hidden("/closed", member), None, "a member of gid= sees everything");
        assert_eq!(hidden("/tmp/fake-proc", nobody), None, "not a procfs mount: a test's tree");
    }

    #[test]
    fn refusals_are_told_from_processes_that_are_gone() {
        let t = tempfile::tempdir().unwrap();
        assert!(is_denied(t.path(), &io::Error::from(io::ErrorKind::PermissionDenied)));
        assert!(!is_denied(t.path(), &io::Error::from(io::ErrorKind::NotFound)), "gone, nothing hides it");
        let health = Health::default();
        assert_eq!(report_visibility(&health, t.path()), Ok(()));
        assert!(health.notices().is_empty());
    }

    #[test]
    fn near_misses_are_not_sidecars() {
        for name in ["envoyx", "Envoy", "pilot", "linkerd", "proxy", ""] {
            assert!(!is_sidecar_process(name), "{name}");
        }
    }
}
