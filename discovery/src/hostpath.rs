//! The host paths discovery reads must be what they claim to be.
//!
//! A wrong `--discovery.procfs` or `--discovery.cgroup2` does not fail
//! loudly by itself: an empty directory reads as a host with no processes
//! and no containers, and every series then carries plausible but wrong
//! labels (a sidecar named `role="app"`, no pods at all). So each path is
//! checked by its filesystem type (statfs(2)), at start-up (an error) and
//! on every rescan (counted and shown as a degraded feature).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// statfs(2) magics (include/uapi/linux/magic.h).
pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const KNOWN: &[(i64, &str)] = &[
    (PROC_SUPER_MAGIC, "procfs"),
    (CGROUP2_SUPER_MAGIC, "cgroup2"),
    (0x0027_e0eb, "cgroup (v1)"),
    (0x0102_1994, "tmpfs"),
    (0x6265_6572, "sysfs"),
    (0xef53, "ext2/3/4"),
    (0x794c_7630, "overlayfs"),
    (0x5846_5342, "xfs"),
    (0x9123_683e, "btrfs"),
    (0x0000_1373, "devfs"),
];

/// The filesystem type (statfs magic) of `path`.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs is plain data; statfs(2) fills it or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, st a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn fs_name(magic: i64) -> String {
    KNOWN.iter().find(|(m, _)| *m == magic).map_or_else(|| format!("filesystem 0x{magic:x}"), |(_, n)| n.to_string())
}

/// `Ok` if `path` is a mount of the filesystem `want`; otherwise what it is.
fn check(path: &Path, want: i64) -> Result<(), String> {
    match fs_type(path) {
        Ok(m) if m == want => Ok(()),
        Ok(m) => Err(format!("`{}` is a {}, not a {} mount", path.display(), fs_name(m), fs_name(want))),
        Err(e) => Err(format!("`{}` cannot be used: {e}", path.display())),
    }
}

/// The host's /proc: process names and network namespaces come from it.
pub fn check_procfs(path: &Path) -> Result<(), String> {
    check(path, PROC_SUPER_MAGIC).map_err(|e| {
        format!(
            "discovery.procfs: {e}; it must be the host's /proc (a container mounts it from the host, e.g. \
             hostPath /proc at /host/proc with --discovery.procfs /host/proc)"
        )
    })
}

/// The cgroup v2 mount: every workload is found under it.
pub fn check_cgroup2(path: &Path) -> Result<(), String> {
    check(path, CGROUP2_SUPER_MAGIC).map_err(|e| {
        format!(
            "discovery.cgroup2: {e}; it must be the host's cgroup2 mount (see `grep cgroup2 /proc/self/mountinfo`; \
             leave it unset to find it there)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_procfs_and_nothing_else_is() {
        assert!(check_procfs(Path::new("/proc")).is_ok());
        let e = check_procfs(Path::new("/nonexistent")).unwrap_err();
        assert!(e.contains("discovery.procfs") && e.contains("No such file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = check_procfs(dir.path()).unwrap_err();
        assert!(e.contains("not a procfs mount"), "{e}");
        let e = check_cgroup2(Path::new("/proc")).unwrap_err();
        assert!(e.contains("is a procfs, not a cgroup2 mount"), "{e}");
    }
}
