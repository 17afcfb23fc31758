//! Where the cgroup hierarchies are mounted, and cgroup id <-> path.
//!
//! The id eBPF sees (`bpf_get_current_cgroup_id()`, the socket's
//! `sk_cgrp_data`) is the inode number of the cgroup's directory in the
//! cgroup v2 (unified) hierarchy. On a v2-only host that hierarchy is at
//! `/sys/fs/cgroup`; on a hybrid host (systemd's default on older distros,
//! and this project's machines) it is at `/sys/fs/cgroup/unified` while the
//! resource controllers live in v1 hierarchies beside it. A pure v1 host has
//! no v2 mount: cgroup ids then say nothing, and pmoas says so.
//!
//! id -> path uses `open_by_handle_at(2)` with the id as a kernfs file
//! handle, O(1); if that is refused (no CAP_DAC_READ_SEARCH) it falls back to
//! walking the v2 tree.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// kernfs file handle type (include/linux/exportfs.h: FILEID_KERNFS).
const FILEID_KERNFS: i32 = 0xfe;

/// The cgroup hierarchies of this host.
#[derive(Debug)]
pub struct CgroupFs {
    v2_root: Option<PathBuf>,
    v1_roots: BTreeMap<String, PathBuf>,
    v2_root_fd: Option<OwnedFd>,
    /// Fallback index for when file handles are refused: id -> relative path.
    scanned: Mutex<HashMap<u64, String>>,
}

/// Why cgroup ids cannot be used on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCgroupV2;

impl std::fmt::Display for NoCgroupV2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no cgroup v2 hierarchy is mounted (looked for a cgroup2 entry in /proc/self/mountinfo); \
             pmoas keys everything by cgroup v2 id. On a cgroup v1 host mount the unified hierarchy \
             beside v1: `mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified`, \
             or pass --discovery.cgroup2 to where it is mounted"
        )
    }
}

impl std::error::Error for NoCgroupV2 {}

/// One parsed line of /proc/self/mountinfo, the fields we need.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    mount_point: PathBuf,
    fs_type: String,
    super_options: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount_point options [optional...] - fstype source super_options
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fs_type = right.next()?.to_string();
            let _source = right.next();
            let super_options = right.next().unwrap_or("").to_string();
            Some(Mount { mount_point: PathBuf::from(unescape_mount(mount_point)), fs_type, super_options })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

const V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "blkio",
    "pids",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "hugetlb",
    "perf_event",
];

impl CgroupFs {
    /// Finds the hierarchies from this process's mountinfo.
    /// `v2_override` replaces the v2 mount point (a DaemonSet that mounts the
    /// host's cgroupfs somewhere else).
    pub fn detect(v2_override: Option<&Path>) -> io::Result<CgroupFs> {
        let text = fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self::from_mountinfo(&text, v2_override))
    }

    fn from_mountinfo(text: &str, v2_override: Option<&Path>) -> CgroupFs {
        let mounts = parse_mountinfo(text);
        // Prefer the canonical mount points when a hierarchy is mounted twice.
        let mut v2_root = v2_override.map(Path::to_path_buf);
        if v2_root.is_none() {
            let v2: Vec<&Mount> = mounts.iter().filter(|m| m.fs_type == "cgroup2").collect();
            v2_root = v2
                .iter()
                .find(|m| m.mount_point == Path::new("/sys/fs/cgroup"))
                .or_else(|| v2.iter().find(|m| m.mount_point == Path::new("/sys/fs/cgroup/unified")))
                .or(v2.first())
                .map(|m| m.mount_point.clone());
        }
        let mut v1_roots = BTreeMap::new();
        for m in mounts.iter().filter(|m| m.fs_type == "cgroup") {
            for opt in m.super_options.split(',') {
                let name = opt.strip_prefix("name=").unwrap_or(opt);
                if V1_CONTROLLERS.contains(&opt) || opt.starts_with("name=") {
                    v1_roots.entry(name.to_string()).or_insert_with(|| m.mount_point.clone());
                }
            }
        }
        // File handles carry kernfs ids only on a real cgroup2 filesystem.
        let v2_root_fd = v2_root.as_deref().and_then(|p| open_dir(p).ok()).filter(is_cgroup2);
        CgroupFs { v2_root, v1_roots, v2_root_fd, scanned: Mutex::new(HashMap::new()) }
    }

    /// The v2 mount point, or why there is none.
    pub fn v2_root(&self) -> Result<&Path, NoCgroupV2> {
        self.v2_root.as_deref().ok_or(NoCgroupV2)
    }

    /// Mount points of the v1 hierarchies by controller (and `systemd` for
    /// `name=systemd`). Empty on a v2-only host.
    pub fn v1_roots(&self) -> &BTreeMap<String, PathBuf> {
        &self.v1_roots
    }

    /// `true` when some controllers live in v1 hierarchies (v1 or hybrid).
    pub fn is_hybrid(&self) -> bool {
        self.v1_roots.keys().any(|k| k != "systemd")
    }

    /// The cgroup id of a v2 path relative to the v2 root.
    pub fn id_of(&self, relative: &str) -> io::Result<u64> {
        let root = self.v2_root().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(fs::metadata(root.join(relative.trim_start_matches('/')))?.ino())
    }

    /// The absolute directory of a relative v2 path.
    pub fn v2_dir(&self, relative: &str) -> Option<PathBuf> {
        Some(self.v2_root.as_ref()?.join(relative.trim_start_matches('/')))
    }

    /// The v2 path (relative to the v2 root, starting with `/`) of a cgroup id.
    pub fn path_of(&self, id: u64) -> io::Result<String> {
        if id == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, "cgroup id 0"));
        }
        let root = self.v2_root().map_err(|e| io::Error::other(e.to_string()))?;
        match self.path_by_handle(root, id) {
            Ok(p) => Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
            // EPERM without CAP_DAC_READ_SEARCH, EOPNOTSUPP/EINVAL where the
            // filesystem has no kernfs handles (tests, odd mounts).
            Err(_) => self.path_by_scan(root, id),
        }
    }

    fn path_by_handle(&self, root: &Path, id: u64) -> io::Result<String> {
        let mount_fd = self.v2_root_fd.as_ref().ok_or_else(|| io::Error::from_raw_os_error(libc::EOPNOTSUPP))?;
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: u32,
            handle_type: i32,
            id: u64,
        }
        let mut handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
        // SAFETY: the handle is a valid `struct file_handle` with 8 bytes of
        // f_handle; the kernel reads it and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount_fd.as_raw_fd(),
                &mut handle as *mut KernfsHandle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            // ESTALE: no such cgroup (any more).
            if err.raw_os_error() == Some(libc::ESTALE) {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("no cgroup with id {id}")));
            }
            return Err(err);
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let target = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        relative_to(root, &target)
    }

    fn path_by_scan(&self, root: &Path, id: u64) -> io::Result<String> {
        let mut index = self.scanned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = index.get(&id)
            && fs::metadata(root.join(p.trim_start_matches('/'))).map(|m| m.ino() == id).unwrap_or(false)
        {
            return Ok(p.clone());
        }
        index.clear();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            if let Ok(meta) = fs::metadata(&dir)
                && let Ok(rel) = relative_to(root, &dir)
            {
                index.insert(meta.ino(), rel);
            }
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        index
            .get(&id)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no cgroup with id {id}")))
    }
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// statfs(2) magic of cgroup2 (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(fd: &OwnedFd) -> bool {
    // SAFETY: statfs is plain data; fstatfs fills it or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

fn relative_to(root: &Path, target: &Path) -> io::Result<String> {
    let rel = target
        .strip_prefix(root)
        .map_err(|_| io::Error::other(format!("{} is outside {}", target.display(), root.display())))?;
    Ok(format!("/{}", rel.display()))
}

/// Paths of a process in every hierarchy, from `/proc/<pid>/cgroup`:
/// `("" , path)` for v2, `(controller, path)` for each v1 controller.
/// On hybrid hosts this is how a container's v2 cgroup finds its v1
/// directories, whose paths need not match.
pub fn process_cgroups(procfs: &Path, pid: u32) -> io::Result<Vec<(String, String)>> {
    let text = fs::read_to_string(procfs.join(pid.to_string()).join("cgroup"))?;
    Ok(parse_proc_cgroup(&text))
}

fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if controllers.is_empty() {
            out.push((String::new(), path.to_string()));
        } else {
            for c in controllers.split(',') {
                out.push((c.strip_prefix("name=").unwrap_or(c).to_string(), path.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
34 25 0:29 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 34 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 34 0:31 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
39 34 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
40 34 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
41 34 0:36 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,blkio
";

    const UNIFIED: &str = "\
30 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
34 25 0:29 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const V1_ONLY: &str = "\
40 34 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_host_has_v2_at_unified_and_v1_controllers() {
        let fs = CgroupFs::from_mountinfo(HYBRID, None);
        assert_eq!(fs.v2_root().unwrap(), Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(fs.v1_roots()["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(fs.v1_roots()["cpuacct"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(fs.v1_roots()["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(fs.v1_roots()["systemd"], Path::new("/sys/fs/cgroup/systemd"));
        assert!(fs.is_hybrid());
    }

    #[test]
    fn unified_host_has_v2_at_sys_fs_cgroup() {
        let fs = CgroupFs::from_mountinfo(UNIFIED, None);
        assert_eq!(fs.v2_root().unwrap(), Path::new("/sys/fs/cgroup"));
        assert!(!fs.is_hybrid());
    }

    #[test]
    fn v1_only_host_reports_what_to_mount() {
        let fs = CgroupFs::from_mountinfo(V1_ONLY, None);
        let err = fs.v2_root().unwrap_err().to_string();
        assert!(err.contains("mount -t cgroup2"), "{err}");
        assert!(fs.path_of(1234).is_err());
    }

    #[test]
    fn override_wins() {
        let fs = CgroupFs::from_mountinfo(HYBRID, Some(Path::new("/host/sys/fs/cgroup")));
        assert_eq!(fs.v2_root().unwrap(), Path::new("/host/sys/fs/cgroup"));
    }

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape_mount(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_mount(r"/plain"), "/plain");
    }

    #[test]
    fn proc_cgroup_of_a_hybrid_process() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/kubepods.slice/p\n";
        assert_eq!(
            parse_proc_cgroup(text),
            vec![
                ("systemd".into(), "/".into()),
                ("memory".into(), "/process_api/abc".into()),
                ("cpu".into(), "/x".into()),
                ("cpuacct".into(), "/x".into()),
                ("".into(), "/kubepods.slice/p".into()),
            ]
        );
    }

    /// On a real host: our own cgroup's id resolves back to its path both
    /// ways (needs a v2 mount; skipped loudly without one).
    #[test]
    fn own_cgroup_round_trips_on_this_host() {
        let fs = CgroupFs::detect(None).unwrap();
        if fs.v2_root().is_err() {
            eprintln!("SKIP: no cgroup v2 mount on this host");
            return;
        }
        let own = process_cgroups(Path::new("/proc"), std::process::id()).unwrap();
        let v2 = &own.iter().find(|(c, _)| c.is_empty()).unwrap().1;
        let id = fs.id_of(v2).unwrap();
        assert_eq!(&fs.path_of(id).unwrap(), v2);
        let root = fs.v2_root().unwrap().to_path_buf();
        assert_eq!(&fs.path_by_scan(&root, id).unwrap(), v2);
        assert!(fs.path_of(u64::MAX - 1).is_err());
    }
}
