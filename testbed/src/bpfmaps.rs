//! The eBPF maps a process holds, read from outside it through the bpf(2)
//! system call (as bpftool does): which maps, and the keys in each, so
//! tests and benchmarks can see what a collector keeps in the kernel and
//! whether it removes it again.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{Result, bail};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// One map of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    pub name: String,
    pub key_size: u32,
    pub max_entries: u32,
}

/// `union bpf_attr`, large enough for the commands used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Default for Attr {
    fn default() -> Self {
        Attr([0; 128])
    }
}

impl Attr {
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

fn map_fd(id: u32) -> Result<OwnedFd> {
    let mut a = Attr::default();
    a.put_u32(0, id);
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut a)?;
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn info(fd: &OwnedFd) -> Result<MapInfo> {
    use std::os::fd::AsRawFd;
    // struct bpf_map_info: type, id, key_size, value_size, max_entries,
    // map_flags (u32 each), name[16], ...
    let mut buf = [0u8; 88];
    let mut a = Attr::default();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u32(4, buf.len() as u32);
    a.put_u64(8, buf.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let u32_at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let name = &buf[24..40];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(16)]).into_owned();
    Ok(MapInfo { id: u32_at(4), name, key_size: u32_at(8), max_entries: u32_at(16) })
}

/// The eBPF maps process `pid` holds open (from its descriptors' fdinfo).
pub fn maps_of(pid: u32) -> Result<Vec<MapInfo>> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let is_map = fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let Ok(fdinfo) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy())) else {
            continue;
        };
        let Some(id) = fdinfo.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|v| v.trim().parse().ok())
        else {
            continue;
        };
        let Ok(fd) = map_fd(id) else { continue };
        if let Ok(i) = info(&fd)
            && !out.iter().any(|m: &MapInfo| m.id == i.id)
        {
            out.push(i);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every key of map `id`, as raw bytes (a consistent view only while the
/// map is quiet).
pub fn keys(map: &MapInfo) -> Result<Vec<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    let fd = map_fd(map.id)?;
    let size = map.key_size as usize;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut next = vec![0u8; size];
    loop {
        let mut a = Attr::default();
        a.put_u32(0, fd.as_raw_fd() as u32);
        // key NULL: the first key.
        a.put_u64(8, out.last().map_or(0, |k| k.as_ptr() as u64));
        a.put_u64(16, next.as_mut_ptr() as u64);
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => out.push(next.clone()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => bail!("walking map {} ({}): {e}", map.name, map.id),
        }
        if out.len() > map.max_entries as usize + 1 {
            bail!("map {} changed while it was walked", map.name);
        }
    }
}

/// The keys of process `pid`'s map called `name` (the kernel keeps 15
/// characters of a name: `socket_histograms` is `socket_histogra`).
pub fn keys_of(pid: u32, name: &str) -> Result<Vec<Vec<u8>>> {
    let maps = maps_of(pid)?;
    let short = &name[..name.len().min(15)];
    let Some(m) = maps.iter().find(|m| m.name == short) else {
        bail!("process {pid} holds no eBPF map {name} (it has: {:?})", maps.iter().map(|m| &m.name).collect::<Vec<_>>())
    };
    keys(m)
}

/// Whether `key` holds `id` (a cgroup id) as one of its aligned u64s.
pub fn key_mentions(key: &[u8], id: u64) -> bool {
    key.chunks_exact(8).any(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")) == id)
}
