//! `sockops.bpf.o` loads, attaches and redirects, for real: its sock_ops and
//! cgroup_skb/egress programs on a fresh cgroup v2 directory, its sk_msg
//! program on the SOCKHASH; a child process moved into that cgroup echoes
//! checksummed messages over 127.0.0.1 (64 B to 1 MiB, both directions);
//! every byte must come back intact and the per-cgroup counters must show
//! both ends in the map and every byte redirected, none missed. Root and
//! real eBPF: skips loudly otherwise, fails under PMOAS_REQUIRE_BPF=1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuHashMap, SockHash};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SkMsg, SockOps};
use pmoas_bpf::sockops::{self, SockopsCounters, SockopsKey};

const CHILD_ENV: &str = "PMOAS_SOCKOPS_LOAD_CHILD";
/// (message size, round trips): what the child sends each way.
const SIZES: &[(usize, usize)] = &[(64, 200), (4096, 200), (65536, 50), (1 << 20, 8)];

fn require_bpf() -> bool {
    std::env::var_os("PMOAS_REQUIRE_BPF").is_some_and(|v| v != "0")
}

fn skip(why: &str) {
    assert!(!require_bpf(), "sockops load test: PMOAS_REQUIRE_BPF is set but {why}");
    eprintln!("SKIP sockops load test: {why}");
}

fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
}

/// A deterministic payload that differs per message.
fn payload(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 31 + seed * 7 + size) % 251) as u8).collect()
}

/// Runs in the child (moved into the test cgroup): echo server thread and
/// client on 127.0.0.1, every message compared byte for byte. Returns the
/// bytes the client sent (the server sent as many back).
fn child_traffic() -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for &(size, n) in SIZES {
            for _ in 0..n {
                s.read_exact(&mut buf[..size]).unwrap();
                s.write_all(&buf[..size]).unwrap();
            }
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut back = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    for &(size, n) in SIZES {
        for i in 0..n {
            let msg = payload(size, i);
            c.write_all(&msg).unwrap();
            c.read_exact(&mut back[..size]).unwrap();
            assert!(back[..size] == msg[..], "echo of {size} bytes #{i} differs");
            sent += size as u64;
        }
    }
    server.join().unwrap();
    sent
}

#[test]
fn sockops_child_traffic() {
    // The child half of the test below; a no-op when run on its own.
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("SENT {}", child_traffic());
    }
}

fn counters_for(map: &PerCpuHashMap<&MapData, u64, SockopsCounters>, cgroup_id: u64) -> SockopsCounters {
    let mut total = SockopsCounters::default();
    if let Ok(per_cpu) = map.get(&cgroup_id, 0) {
        for c in per_cpu.iter() {
            total.add(c);
        }
    }
    total
}

#[test]
fn sockops_programs_load_attach_and_redirect_loopback_bytes_intact() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if !nix_is_root() {
        return skip("not root");
    }
    let Some(root) = cgroup2_root() else { return skip("no cgroup v2 mount") };
    let dir = root.join(format!("pmoas-sockops-test-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("create test cgroup");
    let _cleanup = RemoveDir(dir.clone());
    let cgroup_id = std::fs::metadata(&dir).unwrap().ino();

    let mut bpf = match Ebpf::load(pmoas_bpf::SOCKOPS) {
        Ok(b) => b,
        Err(e) => return skip(&format!("loading sockops.bpf.o: {e}")),
    };
    let cg = std::fs::File::open(&dir).unwrap();

    let sock_hash: SockHash<MapData, SockopsKey> =
        SockHash::try_from(bpf.take_map(sockops::MAP_SOCKHASH).unwrap()).expect("sockops_hash");
    let msg: &mut SkMsg = bpf.program_mut(sockops::PROG_SK_MSG).unwrap().try_into().unwrap();
    msg.load().expect("load sk_msg");
    msg.attach(sock_hash.fd()).expect("attach sk_msg to the sockhash");

    // Single: Aya attaches with a bpf_link, which shares the cgroup with
    // other programs anyway; the kernel refuses BPF_F_ALLOW_MULTI as a link
    // flag (EINVAL).
    let ops: &mut SockOps = bpf.program_mut(sockops::PROG_SOCK_OPS).unwrap().try_into().unwrap();
    ops.load().expect("load sock_ops");
    ops.attach(&cg, CgroupAttachMode::Single).expect("attach sock_ops");

    let egress: &mut CgroupSkb = bpf.program_mut(sockops::PROG_SYN_EGRESS).unwrap().try_into().unwrap();
    egress.load().expect("load cgroup_skb/egress");
    egress.attach(&cg, CgroupSkbAttachType::Egress, CgroupAttachMode::Single).expect("attach egress");

    let out = child_in_cgroup(&dir);
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent: u64 = stdout
        .lines()
        .find_map(|l| l.split("SENT ").nth(1)) // the harness may print its "test ... " first
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no SENT line from the child: {stdout}"));

    let counters: PerCpuHashMap<&MapData, u64, SockopsCounters> =
        PerCpuHashMap::try_from(bpf.map(sockops::MAP_COUNTERS).unwrap()).unwrap();
    let c = counters_for(&counters, cgroup_id);
    assert_eq!(c.sockets_added, 2, "both ends of the loopback connection in the map: {c:?}");
    assert_eq!(c.sockets_removed, 2, "both closed: {c:?}");
    assert_eq!(c.active_sockets(), 0);
    assert_eq!(c.misses, 0, "no message fell back to TCP: {c:?}");
    assert_eq!(c.insert_errors, 0, "{c:?}");
    // The client sent `sent` bytes and the server echoed as many.
    assert_eq!(c.redirected_bytes, 2 * sent, "every byte redirected: {c:?}");
    assert_eq!(c.redirected_received_bytes, 2 * sent, "{c:?}");
    assert_eq!(c.closed_sent_bytes, 2 * sent, "{c:?}");
    assert_eq!(c.closed_received_bytes, 2 * sent, "{c:?}");
    drop(bpf); // detach before the cgroup goes
}

/// Re-runs this test binary as the child half, in the test cgroup (the
/// shell joins it before exec, so every thread of the child is in it).
fn child_in_cgroup(dir: &Path) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$1/cgroup.procs\" && exec \"$2\" --exact sockops_child_traffic --nocapture --test-threads=1")
        .arg("sh")
        .arg(dir)
        .arg(exe)
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child")
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
