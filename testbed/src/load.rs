//! Resource load with a known size, for the cgroup collector's ground
//! truth: CPU time the process measures itself, memory it touches page by
//! page, and block I/O that bypasses (or flushes) the page cache.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// This process's own CPU time (user + system), seconds.
pub fn own_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BurnReport {
    /// CPU time this process used, by its own clock.
    pub cpu_seconds: f64,
}

/// Spins until this process has used `seconds` of CPU time.
pub fn burn(seconds: f64) -> BurnReport {
    let mut x: u64 = 1;
    while own_cpu_seconds() < seconds {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    BurnReport { cpu_seconds: own_cpu_seconds() }
}

/// Allocates `mib` MiB of anonymous memory and writes every page, so all of
/// it is resident. The caller holds it as long as it likes.
pub fn touch(mib: usize) -> Vec<u8> {
    // Zeroed allocations this large are fresh mappings: no page is resident
    // until it is written.
    let mut v = vec![0u8; mib << 20];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
        std::hint::black_box(&page[0]);
    }
    v
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskReport {
    pub written: u64,
    pub read: u64,
}

/// O_DIRECT needs buffers aligned to the logical block size; 4 KiB covers
/// every device.
const ALIGN: usize = 4096;
const CHUNK: usize = 1 << 20;

fn aligned_chunk() -> (Vec<u8>, usize) {
    let v = vec![0xa5u8; CHUNK + ALIGN];
    let offset = v.as_ptr().align_offset(ALIGN);
    (v, offset)
}

/// Writes `mib` MiB to `path`: with O_DIRECT, or through the page cache
/// followed by fsync. Either way every byte reaches the block device in this
/// process's context.
pub fn write_file(path: &Path, mib: usize, direct: bool) -> Result<DiskReport> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let mut f = opts.open(path).with_context(|| format!("opening {}", path.display()))?;
    let (buf, off) = aligned_chunk();
    let mut written = 0u64;
    for _ in 0..mib {
        f.write_all(&buf[off..off + CHUNK]).context("writing")?;
        written += CHUNK as u64;
    }
    f.sync_all().context("fsync")?;
    Ok(DiskReport { written, read: 0 })
}

/// Reads `path` whole: with O_DIRECT, or through the page cache after
/// dropping the file's cached pages (so the reads reach the device).
pub fn read_file(path: &Path, direct: bool) -> Result<DiskReport> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let mut f = opts.open(path).with_context(|| format!("opening {}", path.display()))?;
    if !direct {
        drop_cache(&f)?;
    }
    let (mut buf, off) = aligned_chunk();
    let mut read = 0u64;
    loop {
        let n = f.read(&mut buf[off..off + CHUNK]).context("reading")?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok(DiskReport { written: 0, read })
}

fn drop_cache(f: &File) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fadvise on an fd we own.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise(DONTNEED): {}", std::io::Error::from_raw_os_error(rc));
    Ok(())
}

/// A directory on a real block device (not tmpfs) for disk tests.
pub fn block_backed_dir() -> Option<std::path::PathBuf> {
    for d in ["/var/tmp", "/tmp", "/root"] {
        let p = Path::new(d);
        let c = std::ffi::CString::new(d).ok()?;
        // SAFETY: statfs fills the struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            continue;
        }
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
        if st.f_type as i64 != TMPFS_MAGIC && st.f_type as i64 != OVERLAYFS_MAGIC && p.is_dir() {
            return Some(p.to_path_buf());
        }
    }
    None
}

/// Waits until stdin closes (the test let go of us) or `limit` passes.
pub fn hold(limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = std::io::stdin().read(&mut b);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(limit);
}

/// Removes a test file, ignoring a missing one.
pub fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}
