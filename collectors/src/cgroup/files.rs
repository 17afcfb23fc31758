//! Reading one cgroup's resource files, cgroup v2 first and v1 for what v2
//! does not have (hybrid hosts keep memory, blkio and often cpu in v1).
//!
//! | resource       | cgroup v2 (controller)          | cgroup v1                                   |
//! |----------------|---------------------------------|---------------------------------------------|
//! | CPU usage      | `cpu.stat` usage_usec (always)  | `cpuacct.usage`                             |
//! | CPU throttling | `cpu.stat` throttled_usec (cpu) | `cpu.stat` throttled_time                   |
//! | memory         | `memory.current`, `memory.stat` | `memory.usage_in_bytes`, `memory.stat` total_* |
//! | OOM kills      | `memory.events` oom_kill        | `memory.oom_control` oom_kill               |
//! | block I/O      | `io.stat` rbytes/wbytes (io)    | `blkio.throttle.io_service_bytes_recursive` |
//!
//! Each file is read at most once per scrape, and only when the source it
//! feeds was chosen for that resource (see [`Plan`]).

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where one resource of one cgroup is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    CgroupV2,
    CgroupV1,
    Ebpf,
    /// Nothing on this host can count it for this cgroup.
    None,
}

impl Source {
    pub fn as_label(self) -> &'static str {
        match self {
            Source::CgroupV2 => "cgroup_v2",
            Source::CgroupV1 => "cgroup_v1",
            Source::Ebpf => "ebpf",
            Source::None => "none",
        }
    }
}

/// The directories of one cgroup: v2, and v1 per controller (when mounted
/// and found).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirs {
    pub v2: PathBuf,
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
}

/// Which source serves each resource of one cgroup, decided once when the
/// cgroup is first seen (from its v2 `cgroup.controllers` and its v1
/// directories).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub cpu: Source,
    pub throttling: Source,
    pub memory: Source,
    pub oom: Source,
    pub fs: Source,
}

impl Plan {
    /// `v2_controllers`: the cgroup's `cgroup.controllers`; `ebpf_oom` and
    /// `ebpf_fs`: whether those eBPF programs are attached.
    pub fn decide(v2_controllers: &str, dirs: &Dirs, ebpf_oom: bool, ebpf_fs: bool) -> Plan {
        let has = |c: &str| v2_controllers.split_whitespace().any(|x| x == c);
        let v1 = |d: &Option<PathBuf>| if d.is_some() { Source::CgroupV1 } else { Source::None };
        let memory = if has("memory") { Source::CgroupV2 } else { v1(&dir_with(&dirs.memory, "memory.stat")) };
        Plan {
            // usage_usec is in every v2 cgroup's cpu.stat, controller or not.
            cpu: if dirs.v2.join("cpu.stat").exists() { Source::CgroupV2 } else { v1(&dirs.cpuacct) },
            throttling: if has("cpu") { Source::CgroupV2 } else { v1(&dir_with(&dirs.cpu, "cpu.stat")) },
            memory,
            oom: if ebpf_oom { Source::Ebpf } else { memory },
            fs: if has("io") {
                Source::CgroupV2
            } else if ebpf_fs {
                // v1 blkio counts only bios that meet a throttle rule:
                // without one it says 0, so the kernel hook is the truth.
                Source::Ebpf
            } else {
                v1(&dir_with(&dirs.blkio, "blkio.throttle.io_service_bytes_recursive"))
            },
        }
    }

    pub fn get(&self, r: Resource) -> Source {
        match r {
            Resource::Cpu => self.cpu,
            Resource::Throttling => self.throttling,
            Resource::Memory => self.memory,
            Resource::Oom => self.oom,
            Resource::Fs => self.fs,
        }
    }
}

fn dir_with(dir: &Option<PathBuf>, file: &str) -> Option<PathBuf> {
    dir.as_ref().filter(|d| d.join(file).exists()).cloned()
}

/// The resources of [`Plan`], for the source gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Throttling,
    Memory,
    Oom,
    Fs,
}

impl Resource {
    pub const ALL: [Resource; 5] = [Resource::Cpu, Resource::Throttling, Resource::Memory, Resource::Oom, Resource::Fs];

    pub fn as_label(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Throttling => "cpu_throttling",
            Resource::Memory => "memory",
            Resource::Oom => "oom",
            Resource::Fs => "fs",
        }
    }
}

/// What cgroupfs said about one cgroup in one scrape; `None` where the plan
/// has another source or the file could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub cpu_usage_seconds: Option<f64>,
    pub cpu_throttled_seconds: Option<f64>,
    pub cpu_throttled_periods: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    pub memory_working_set_bytes: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub fs_read_bytes: Option<u64>,
    pub fs_write_bytes: Option<u64>,
}

/// A file that could not be read, for `pmoas_cgroup_read_errors_total`.
#[derive(Debug)]
pub struct ReadError {
    pub file: &'static str,
    pub error: io::Error,
}

impl ReadError {
    /// The file went away (ENOENT), or was removed while open (ENODEV):
    /// what a cgroup being removed looks like, file by file.
    pub fn looks_removed(&self) -> bool {
        looks_removed(&self.error)
    }
}

/// See [`ReadError::looks_removed`].
pub fn looks_removed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// Directory descriptors held by [`Opened`], process-wide.
static HELD_DIRS: AtomicUsize = AtomicUsize::new(0);

/// Open files kept back from [`HELD_DIRS`]: eBPF maps and programs, HTTP
/// connections, procfs reads (a quarter of the limit, at least this).
const RESERVED_FILES: u64 = 1024;

/// How many directory descriptors [`Opened`] may hold: the open-file limit
/// (first raised to its hard limit, as Go programs do: a systemd service
/// starts at a soft 1024) less a quarter of it (at least
/// [`RESERVED_FILES`]). Beyond it, paths serve. The HTTP server's
/// connection cap leaves this much room.
pub fn dir_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct given.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                return 0;
            }
            let to_hard = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
            if l.rlim_cur < l.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard) == 0 {
                l.rlim_max
            } else {
                l.rlim_cur
            }
        };
        let soft = soft.min(1 << 24);
        soft.saturating_sub((soft / 4).max(RESERVED_FILES)) as usize
    })
}

/// One directory opened with `O_PATH` (no read access, no kernel buffers:
/// a `struct file`, a few hundred bytes of kernel memory), counted in
/// [`HELD_DIRS`] while it lives.
#[derive(Debug)]
struct DirFd(OwnedFd);

impl DirFd {
    /// `None` when the budget is spent or the directory cannot be opened
    /// (the path then serves, and says what is wrong at read time).
    fn open(path: &Path) -> Option<DirFd> {
        if HELD_DIRS.fetch_add(1, Ordering::Relaxed) >= dir_budget() {
            HELD_DIRS.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let fd = CString::new(path.as_os_str().as_bytes()).ok().and_then(|c| {
            // SAFETY: a valid C string; the descriptor returned is ours alone.
            let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
            (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
        });
        match fd {
            Some(fd) => Some(DirFd(fd)),
            None => {
                HELD_DIRS.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn open_file(&self, name: &str) -> io::Result<fs::File> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a directory descriptor we own and a valid C string; the
        // descriptor returned is ours alone.
        let raw = unsafe { libc::openat(self.0.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unsafe { fs::File::from_raw_fd(raw) })
    }
}

impl Drop for DirFd {
    fn drop(&mut self) {
        HELD_DIRS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cgroup's directories, each one its plan reads opened once: a scrape
/// then opens a file by one name relative to it instead of walking its
/// whole path (kubepods.slice/…/cri-containerd-….scope/, component by
/// component), which was a quarter of the CPU of scraping 1,100 pods
/// (BENCHMARKS.md). Holding file descriptors would save more, but each
/// read cgroupfs file keeps a page of kernel memory, charged to the
/// exporter's cgroup (70 MiB at 1,100 pods); an `O_PATH` directory keeps
/// none. Without a descriptor the path serves.
#[derive(Debug, Default)]
pub struct Opened {
    pub dirs: Dirs,
    v2: Option<DirFd>,
    cpu: Option<DirFd>,
    cpuacct: Option<DirFd>,
    memory: Option<DirFd>,
    blkio: Option<DirFd>,
}

impl Opened {
    /// Opens the directories `plan` reads from.
    pub fn new(dirs: Dirs, plan: &Plan) -> Opened {
        let uses = |r: &[Source], s: Source| r.contains(&s);
        let v1 = |d: &Option<PathBuf>, used: bool| d.as_deref().filter(|_| used).and_then(DirFd::open);
        let all = [plan.cpu, plan.throttling, plan.memory, plan.oom, plan.fs];
        Opened {
            v2: if uses(&all, Source::CgroupV2) { DirFd::open(&dirs.v2) } else { None },
            cpu: v1(&dirs.cpu, plan.throttling == Source::CgroupV1),
            cpuacct: v1(&dirs.cpuacct, plan.cpu == Source::CgroupV1),
            memory: v1(&dirs.memory, plan.memory == Source::CgroupV1),
            blkio: v1(&dirs.blkio, plan.fs == Source::CgroupV1),
            dirs,
        }
    }

    /// Directory descriptors held by every cgroup's [`Opened`].
    #[cfg(test)]
    pub fn held() -> usize {
        HELD_DIRS.load(Ordering::Relaxed)
    }
}

/// Reads the files `plan` names. A missing v2 directory means the cgroup is
/// gone: `Err(None)`, not an error worth counting.
pub fn read(opened: &Opened, plan: &Plan, buf: &mut String) -> Result<(Stats, Vec<ReadError>), Option<io::Error>> {
    let dirs = &opened.dirs;
    let mut s = Stats::default();
    let mut errors = Vec::new();
    let mut file = |dir: &Path, fd: &Option<DirFd>, name: &'static str, buf: &mut String| -> bool {
        let result = match fd {
            Some(fd) => fd.open_file(name).and_then(|f| read_file(f, buf)),
            None => read_into(&dir.join(name), buf),
        };
        match result {
            Ok(()) => true,
            // Including files of a cgroup being removed: the caller tells
            // those from real failures (`ReadError::looks_removed`).
            Err(error) => {
                errors.push(ReadError { file: name, error });
                false
            }
        }
    };

    if plan.cpu == Source::CgroupV2 || plan.throttling == Source::CgroupV2 {
        if !file(&dirs.v2, &opened.v2, "cpu.stat", buf) {
            // The one file every v2 cgroup has: gone, or unreadable.
            return Err(if dirs.v2.exists() { errors.pop().map(|e| e.error) } else { None });
        }
        let [usage, throttled, periods] = flat_keyed_all(buf, ["usage_usec", "throttled_usec", "nr_throttled"]);
        if plan.cpu == Source::CgroupV2 {
            s.cpu_usage_seconds = usage.map(|us| us as f64 / 1e6);
        }
        if plan.throttling == Source::CgroupV2 {
            s.cpu_throttled_seconds = throttled.map(|us| us as f64 / 1e6);
            s.cpu_throttled_periods = periods;
        }
    }
    if plan.cpu == Source::CgroupV1
        && let Some(d) = &dirs.cpuacct
        && file(d, &opened.cpuacct, "cpuacct.usage", buf)
    {
        s.cpu_usage_seconds = buf.trim().parse::<u64>().ok().map(|ns| ns as f64 / 1e9);
    }
    if plan.throttling == Source::CgroupV1
        && let Some(d) = &dirs.cpu
        && file(d, &opened.cpu, "cpu.stat", buf)
    {
        let [throttled, periods] = flat_keyed_all(buf, ["throttled_time", "nr_throttled"]);
        s.cpu_throttled_seconds = throttled.map(|ns| ns as f64 / 1e9);
        s.cpu_throttled_periods = periods;
    }

    match plan.memory {
        Source::CgroupV2 => {
            if file(&dirs.v2, &opened.v2, "memory.current", buf) {
                s.memory_usage_bytes = buf.trim().parse().ok();
            }
            if file(&dirs.v2, &opened.v2, "memory.stat", buf) {
                let [inactive, anon] = flat_keyed_all(buf, ["inactive_file", "anon"]);
                let inactive = inactive.unwrap_or(0);
                s.memory_rss_bytes = anon;
                s.memory_working_set_bytes = s.memory_usage_bytes.map(|u| u.saturating_sub(inactive));
            }
            if plan.oom == Source::CgroupV2 && file(&dirs.v2, &opened.v2, "memory.events", buf) {
                s.oom_kills = flat_keyed(buf, "oom_kill");
            }
        }
        Source::CgroupV1 => {
            if let Some(d) = &dirs.memory {
                if file(d, &opened.memory, "memory.usage_in_bytes", buf) {
                    s.memory_usage_bytes = buf.trim().parse().ok();
                }
                if file(d, &opened.memory, "memory.stat", buf) {
                    // total_*: this cgroup and its descendants, as usage is.
                    let [inactive, rss] = flat_keyed_all(buf, ["total_inactive_file", "total_rss"]);
                    let inactive = inactive.unwrap_or(0);
                    s.memory_rss_bytes = rss;
                    s.memory_working_set_bytes = s.memory_usage_bytes.map(|u| u.saturating_sub(inactive));
                }
                if plan.oom == Source::CgroupV1 && file(d, &opened.memory, "memory.oom_control", buf) {
                    s.oom_kills = flat_keyed(buf, "oom_kill");
                }
            }
        }
        Source::Ebpf | Source::None => {}
    }

    match plan.fs {
        Source::CgroupV2 => {
            if file(&dirs.v2, &opened.v2, "io.stat", buf) {
                let (r, w) = io_stat(buf);
                s.fs_read_bytes = Some(r);
                s.fs_write_bytes = Some(w);
            }
        }
        Source::CgroupV1 => {
            if let Some(d) = &dirs.blkio
                && file(d, &opened.blkio, "blkio.throttle.io_service_bytes_recursive", buf)
            {
                let (r, w) = blkio_service_bytes(buf);
                s.fs_read_bytes = Some(r);
                s.fs_write_bytes = Some(w);
            }
        }
        Source::Ebpf | Source::None => {}
    }

    // A file gone missing may be the cgroup going: then it is no error.
    // (Every file read means it was there: no need to look otherwise.)
    if errors.iter().any(ReadError::looks_removed) && !dirs.v2.exists() {
        return Err(None);
    }
    Ok((s, errors))
}

/// Reads a whole (small) file into `buf`, reusing its allocation, in as
/// few system calls as the file allows: open, read, close. (std's
/// `read_to_string` adds statx, lseek and a last empty read; with it, and
/// on one thread, a scrape of 159 cgroups took 20 ms instead of 12 on this
/// project's VM: BENCHMARKS.md.) A short read
/// ends the file: cgroupfs, procfs and sysfs files produce their whole
/// content in one read when the buffer is large enough.
pub fn read_into(path: &Path, buf: &mut String) -> io::Result<()> {
    read_file(fs::File::open(path)?, buf)
}

/// [`read_into`], of a file already open.
fn read_file(mut f: fs::File, buf: &mut String) -> io::Result<()> {
    const CHUNK: usize = 8192;
    let mut bytes = std::mem::take(buf).into_bytes();
    bytes.clear();
    let result = loop {
        let len = bytes.len();
        bytes.resize(len + CHUNK, 0);
        match f.read(&mut bytes[len..]) {
            Ok(n) => {
                bytes.truncate(len + n);
                if n < CHUNK {
                    break Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => bytes.truncate(len),
            Err(e) => {
                bytes.truncate(len);
                break Err(e);
            }
        }
    };
    *buf = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    result
}

/// The value of `key` in a flat-keyed file (`key value` per line).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    let [v] = flat_keyed_all(text, [key]);
    v
}

/// The values of `keys` in a flat-keyed file, in one pass that stops once
/// all are found (a v1 `memory.stat` has 36 lines, read for 4,400 cgroups
/// a scrape on a large node). The first line of a key with a number wins.
pub fn flat_keyed_all<const N: usize>(text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut found = [None; N];
    let mut left = N;
    for line in text.as_bytes().split(|&b| b == b'\n') {
        let Some(space) = line.iter().position(|&b| b == b' ') else { continue };
        let (k, v) = (&line[..space], &line[space + 1..]);
        for (want, slot) in keys.iter().zip(found.iter_mut()) {
            if slot.is_none() && want.as_bytes() == k {
                *slot = std::str::from_utf8(v).ok().and_then(|v| v.trim().parse().ok());
                left -= usize::from(slot.is_some());
            }
        }
        if left == 0 {
            break;
        }
    }
    found
}

/// Read and written bytes of `io.stat`, summed over devices
/// (`8:0 rbytes=1 wbytes=2 rios=3 ...`).
pub fn io_stat(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w += v.parse::<u64>().unwrap_or(0);
        }
    }
    (r, w)
}

/// Read and written bytes of `blkio.*io_service_bytes*`, summed over
/// devices (`8:0 Read 4096`; the `Total` line is skipped).
pub fn blkio_service_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(op), Some(v)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match op {
            "Read" => r += v,
            "Write" => w += v,
            _ => {}
        }
    }
    (r, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_whole_in_few_calls_and_survives_garbage() {
        let tmp = std::env::temp_dir().join(format!("pmoas-read-into-{}", std::process::id()));
        let big: String = (0..3000).map(|i| format!("key{i} {i}\n")).collect();
        assert!(big.len() > 3 * 8192);
        fs::write(&tmp, &big).unwrap();
        let mut buf = String::from("left over");
        read_into(&tmp, &mut buf).unwrap();
        assert_eq!(buf, big, "longer than a read: every chunk");
        assert_eq!(flat_keyed(&buf, "key2999"), Some(2999));
        fs::write(&tmp, b"usage_usec 12\n\xff\xfe binary\n").unwrap();
        read_into(&tmp, &mut buf).unwrap();
        assert_eq!(flat_keyed(&buf, "usage_usec"), Some(12), "invalid UTF-8 is replaced, not fatal");
        fs::remove_file(&tmp).unwrap();
        assert!(read_into(&tmp, &mut buf).is_err());
    }

    #[test]
    fn flat_keyed_files() {
        let cpu = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 7\nthrottled_usec 123456\n";
        assert_eq!(flat_keyed(cpu, "usage_usec"), Some(2_500_000));
        assert_eq!(flat_keyed(cpu, "nr_throttled"), Some(7));
        assert_eq!(flat_keyed(cpu, "throttled_usec"), Some(123_456));
        assert_eq!(flat_keyed(cpu, "usage"), None, "no prefix matches");
        assert_eq!(flat_keyed("oom_control 0\nunder_oom 0\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(flat_keyed("garbage\n\nkey notanumber\n", "key"), None);
        assert_eq!(flat_keyed("key x\nkey 4\n", "key"), Some(4), "the first line with a number");
        assert_eq!(
            flat_keyed_all(cpu, ["throttled_usec", "usage_usec", "absent", "nr_throttled"]),
            [Some(123_456), Some(2_500_000), None, Some(7)],
            "any order, in one pass"
        );
        assert_eq!(flat_keyed_all("a 1\na 2\nb 3\r\n", ["a", "b"]), [Some(1), Some(3)]);
    }

    #[test]
    fn io_stat_sums_devices() {
        let t = "8:0 rbytes=1024 wbytes=4096 rios=1 wios=1 dbytes=0 dios=0\n254:0 rbytes=10 wbytes=20 rios=1 wios=1\n";
        assert_eq!(io_stat(t), (1034, 4116));
        assert_eq!(io_stat(""), (0, 0));
    }

    #[test]
    fn blkio_sums_devices_and_skips_total() {
        let t = "254:0 Read 100\n254:0 Write 200\n254:0 Sync 300\n254:0 Async 0\n254:0 Discard 0\n254:0 Total 300\n8:0 Read 1\n8:0 Write 2\nTotal 303\n";
        assert_eq!(blkio_service_bytes(t), (101, 202));
    }

    #[test]
    fn plan_prefers_v2_then_ebpf_then_v1() {
        let tmp = std::env::temp_dir().join(format!("pmoas-plan-{}", std::process::id()));
        let v2 = tmp.join("v2");
        let mem = tmp.join("memory");
        let cpu = tmp.join("cpu");
        let blkio = tmp.join("blkio");
        for d in [&v2, &mem, &cpu, &blkio] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(v2.join("cpu.stat"), "usage_usec 1\n").unwrap();
        fs::write(mem.join("memory.stat"), "total_rss 1\n").unwrap();
        fs::write(cpu.join("cpu.stat"), "nr_throttled 0\n").unwrap();
        fs::write(blkio.join("blkio.throttle.io_service_bytes_recursive"), "Total 0\n").unwrap();
        let dirs = Dirs { v2: v2.clone(), cpu: Some(cpu), cpuacct: None, memory: Some(mem), blkio: Some(blkio) };

        // A hybrid host: v2 has no controllers of interest.
        let hybrid = Plan::decide("hugetlb", &dirs, true, true);
        assert_eq!(hybrid.cpu, Source::CgroupV2);
        assert_eq!(hybrid.throttling, Source::CgroupV1);
        assert_eq!(hybrid.memory, Source::CgroupV1);
        assert_eq!(hybrid.oom, Source::Ebpf);
        assert_eq!(hybrid.fs, Source::Ebpf);
        // Without the eBPF programs: cgroupfs, never silently nothing.
        let no_ebpf = Plan::decide("hugetlb", &dirs, false, false);
        assert_eq!(no_ebpf.oom, Source::CgroupV1);
        assert_eq!(no_ebpf.fs, Source::CgroupV1);
        // A unified host with the controllers delegated.
        let unified = Plan::decide("cpuset cpu io memory pids", &Dirs { v2, ..Dirs::default() }, true, true);
        assert_eq!(
            unified,
            Plan {
                cpu: Source::CgroupV2,
                throttling: Source::CgroupV2,
                memory: Source::CgroupV2,
                oom: Source::Ebpf,
                fs: Source::CgroupV2,
            }
        );
        let nothing = Plan::decide("", &Dirs { v2: tmp.join("absent"), ..Dirs::default() }, false, false);
        assert!(Resource::ALL.iter().all(|r| nothing.get(*r) == Source::None), "{nothing:?}");
        fs::remove_dir_all(&tmp).unwrap();
    }

    /// A cgroup v2-only host with the controllers delegated (this project's
    /// machines are hybrid, so the real-cgroup tests cannot cover it).
    #[test]
    fn reads_a_unified_cgroup() {
        let tmp = std::env::temp_dir().join(format!("pmoas-unified-{}", std::process::id()));
        let v2 = tmp.join("kubepods.slice/pod.slice/cri-containerd-x.scope");
        fs::create_dir_all(&v2).unwrap();
        fs::write(
            v2.join("cpu.stat"),
            "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\nnr_periods 50\nnr_throttled 5\nthrottled_usec 400000\n",
        )
        .unwrap();
        fs::write(v2.join("memory.current"), "209715200\n").unwrap();
        fs::write(
            v2.join("memory.stat"),
            "anon 104857600\nfile 94371840\nactive_file 10485760\ninactive_file 83886080\n",
        )
        .unwrap();
        fs::write(v2.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n").unwrap();
        fs::write(v2.join("io.stat"), "254:0 rbytes=4096 wbytes=20971520 rios=1 wios=20 dbytes=0 dios=0\n").unwrap();
        let dirs = Dirs { v2, ..Dirs::default() };
        let plan = Plan::decide("cpuset cpu io memory hugetlb pids rdma misc", &dirs, false, true);
        assert_eq!(plan.fs, Source::CgroupV2, "io.stat beats the eBPF hook: it also charges writeback");
        let (s, errors) = read(&Opened::new(dirs, &plan), &plan, &mut String::new()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.cpu_usage_seconds, Some(3.0));
        assert_eq!(s.cpu_throttled_seconds, Some(0.4));
        assert_eq!(s.cpu_throttled_periods, Some(5));
        assert_eq!(s.memory_usage_bytes, Some(209_715_200));
        assert_eq!(s.memory_working_set_bytes, Some(209_715_200 - 83_886_080));
        assert_eq!(s.memory_rss_bytes, Some(104_857_600));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!((s.fs_read_bytes, s.fs_write_bytes), (Some(4096), Some(20_971_520)));
        fs::remove_dir_all(&tmp).unwrap();
    }

    /// Files are opened relative to the directory opened once, not by
    /// path: a renamed directory is still read (and a path-only read of
    /// the same cgroup is not).
    #[test]
    fn reads_through_the_directory_opened_once() {
        let tmp = std::env::temp_dir().join(format!("pmoas-opened-{}", std::process::id()));
        let v2 = tmp.join("cri-containerd-x.scope");
        fs::create_dir_all(&v2).unwrap();
        fs::write(v2.join("cpu.stat"), "usage_usec 2000000\n").unwrap();
        let dirs = Dirs { v2: v2.clone(), ..Dirs::default() };
        let plan = Plan::decide("", &dirs, false, false);
        let opened = Opened::new(dirs.clone(), &plan);
        assert!(Opened::held() >= 1);
        fs::rename(&v2, tmp.join("moved")).unwrap();
        let (s, errors) = read(&opened, &plan, &mut String::new()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.cpu_usage_seconds, Some(2.0));
        let by_path = Opened { dirs, ..Opened::default() };
        assert!(matches!(read(&by_path, &plan, &mut String::new()), Err(None)));
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn reads_a_hybrid_cgroup_and_reports_a_vanished_one() {
        let tmp = std::env::temp_dir().join(format!("pmoas-read-{}", std::process::id()));
        let v2 = tmp.join("v2");
        let mem = tmp.join("memory");
        let cpu = tmp.join("cpu");
        for d in [&v2, &mem, &cpu] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(v2.join("cpu.stat"), "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n").unwrap();
        fs::write(cpu.join("cpu.stat"), "nr_periods 10\nnr_throttled 4\nthrottled_time 250000000\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "104857600\n").unwrap();
        fs::write(mem.join("memory.stat"), "cache 1\nrss 2\ntotal_rss 73400320\ntotal_inactive_file 4194304\n")
            .unwrap();
        fs::write(mem.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        let dirs = Dirs { v2: v2.clone(), cpu: Some(cpu), cpuacct: None, memory: Some(mem), blkio: None };
        let plan = Plan::decide("", &dirs, false, false);
        let mut buf = String::new();
        let opened = Opened::new(dirs, &plan);
        let (s, errors) = read(&opened, &plan, &mut buf).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.cpu_usage_seconds, Some(1.5));
        assert_eq!(s.cpu_throttled_seconds, Some(0.25));
        assert_eq!(s.cpu_throttled_periods, Some(4));
        assert_eq!(s.memory_usage_bytes, Some(104_857_600));
        assert_eq!(s.memory_working_set_bytes, Some(104_857_600 - 4_194_304));
        assert_eq!(s.memory_rss_bytes, Some(73_400_320));
        assert_eq!(s.oom_kills, Some(2));
        assert_eq!(s.fs_read_bytes, None, "no block I/O source");

        fs::remove_dir_all(&tmp).unwrap();
        assert!(matches!(read(&opened, &plan, &mut buf), Err(None)), "a vanished cgroup is not an error");
    }
}
