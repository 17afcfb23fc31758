//! `sockops.bpf.o` loads, attaches and redirects, for real: its sock_ops and
//! cgroup_skb/egress programs on a fresh cgroup v2 directory, its sk_msg
//! program on the SOCKHASH; a child process moved into that cgroup echoes
//! checksummed messages over 127.0.0.1 (64 B to 1 MiB, both directions);
//! every byte must come back intact and the per-cgroup counters must show
//! both ends in the map and every byte redirected, none missed. A peer that
//! joins the map late never gets a message that would overtake one already
//! sent through TCP, and a reader that does not read caps what is queued
//! for it (the rest takes TCP, in order). Root and real eBPF: skips loudly otherwise,
//! fails under PMOAS_REQUIRE_BPF=1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aya::maps::{MapData, PerCpuHashMap, SockHash};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SkMsg, SockOps};
use aya::{Btf, Ebpf};
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
    // Listed at the end of scripts/test.sh, like every other skip
    // (pmoas_testbed::report_skip; this crate cannot depend on the testbed).
    if let Some(path) = std::env::var_os("PMOAS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "SKIP sockops load test: {why}");
        }
    }
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

/// The programs attached to a fresh cgroup v2 directory (removed on drop,
/// after the programs are detached).
struct Attached {
    bpf: Ebpf,
    sock_hash: SockHash<MapData, SockopsKey>,
    dir: PathBuf,
    cgroup_id: u64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Runs before the fields drop (the links go with `bpf`): removing
        // a cgroup that still has programs attached is allowed once no
        // process is in it, and the child has exited.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Loads and attaches everything, or says why it cannot (None: skipped).
fn attach(name: &str) -> Option<Attached> {
    if !nix_is_root() {
        skip("not root");
        return None;
    }
    let Some(root) = cgroup2_root() else {
        skip("no cgroup v2 mount");
        return None;
    };
    let dir = root.join(format!("pmoas-sockops-{name}-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("create test cgroup");
    let cgroup_id = std::fs::metadata(&dir).unwrap().ino();

    let mut bpf = match Ebpf::load(pmoas_bpf::SOCKOPS) {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            skip(&format!("loading sockops.bpf.o: {e}"));
            return None;
        }
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

    // What each end reads: bounds what its peer may leave queued.
    let btf = Btf::from_sys_fs().expect("kernel BTF");
    let recv: &mut BtfTracePoint = bpf.program_mut(sockops::PROG_RECV_LENGTH).unwrap().try_into().unwrap();
    recv.load("sock_recv_length", &btf).expect("load tp_btf/sock_recv_length");
    recv.attach().expect("attach tp_btf/sock_recv_length");
    Some(Attached { bpf, sock_hash, dir, cgroup_id })
}

impl Attached {
    fn counters(&self) -> SockopsCounters {
        let map: PerCpuHashMap<&MapData, u64, SockopsCounters> =
            PerCpuHashMap::try_from(self.bpf.map(sockops::MAP_COUNTERS).unwrap()).unwrap();
        counters_for(&map, self.cgroup_id)
    }
}

#[test]
fn sockops_programs_load_attach_and_redirect_loopback_bytes_intact() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(a) = attach("echo") else { return };

    let out = child_in_cgroup(&a.dir, "sockops_child_traffic").output().expect("run the child");
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent: u64 = stdout
        .lines()
        // The harness may print its "test ... " before the child's line.
        .find_map(|l| l.split("SENT ").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no SENT line from the child: {stdout}"));

    let c = a.counters();
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
}

#[test]
fn sockops_child_late_peer() {
    // The child half of the test below: connect, send A*1000, wait for a
    // line on stdin, send B*1000, wait again.
    let Some(port) = std::env::var_os(CHILD_ENV).and_then(|v| v.to_str()?.strip_prefix("late:")?.parse::<u16>().ok())
    else {
        return;
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut line = String::new();
    s.write_all(&[b'A'; 1000]).unwrap();
    println!("SENT1");
    std::io::stdin().read_line(&mut line).unwrap();
    s.write_all(&[b'B'; 1000]).unwrap();
    println!("SENT2");
    std::io::stdin().read_line(&mut line).unwrap();
}

/// A peer that joins the map after a message already went through TCP must
/// not be redirected to: its psock queue is read before its TCP queue, so
/// the later message would overtake the earlier one. The server end is this
/// process (not in the watched cgroup: sock_ops never sees it), and it puts
/// its accepted socket into the SOCKHASH itself, as a late
/// PASSIVE_ESTABLISHED would, between the client's two messages.
#[test]
fn a_late_peer_never_reorders_the_stream() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(mut a) = attach("late") else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = child_in_cgroup(&a.dir, "sockops_child_late_peer")
        .env(CHILD_ENV, format!("late:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the child");
    let (mut server, _) = listener.accept().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let mut to_child = child.stdin.take().unwrap();
    let wait_for = |r: &mut BufReader<_>, what: &str| {
        let mut line = String::new();
        while !line.contains(what) {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "child ended before {what}");
        }
    };
    wait_for(&mut from_child, "SENT1");

    // Only the client is in the map; add the server end under the peer key.
    let keys: Vec<SockopsKey> = a.sock_hash.keys().map(|k| k.unwrap()).collect();
    assert_eq!(keys.len(), 1, "only the client end is in the map: {keys:?}");
    assert_eq!(keys[0].side, sockops::SIDE_ACTIVE);
    let peer = SockopsKey { side: sockops::SIDE_PASSIVE, ..keys[0] };
    a.sock_hash.insert(peer, server.as_raw_fd(), 0).expect("insert the server end");

    writeln!(to_child, "go").unwrap();
    wait_for(&mut from_child, "SENT2");
    let mut got = vec![0u8; 2000];
    server.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    server.read_exact(&mut got).expect("both messages arrive");
    writeln!(to_child, "bye").unwrap();
    assert!(child.wait().unwrap().success());

    assert!(got[..1000].iter().all(|&b| b == b'A') && got[1000..].iter().all(|&b| b == b'B'), "stream reordered");
    let c = a.counters();
    assert_eq!((c.misses, c.miss_bytes), (2, 2000), "both messages went through TCP: {c:?}");
    assert_eq!(c.redirected_messages, 0, "{c:?}");
}

#[test]
fn sockops_child_slow_reader() {
    // The child half of the test below: 16 MiB to a reader that sleeps
    // first; prints SLOW <bytes> when every byte arrived intact.
    if std::env::var_os(CHILD_ENV).is_none_or(|v| v != "slow") {
        return;
    }
    let data: Vec<u8> = (0..16usize << 20).map(|i| (i * 131 % 251) as u8).collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let expect = data.clone();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut got = Vec::with_capacity(expect.len());
        s.read_to_end(&mut got).unwrap();
        assert!(got == expect, "stream differs ({} of {} bytes)", got.len(), expect.len());
        got.len()
    });
    let mut c = TcpStream::connect(addr).unwrap();
    for chunk in data.chunks(64 << 10) {
        c.write_all(chunk).unwrap();
    }
    drop(c);
    println!("SLOW {}", reader.join().unwrap());
}

/// A reader that does not read: redirected data skips TCP's flow control,
/// so the sender must switch to TCP past the cap (4 MiB unread by
/// default) instead of queueing all 16 MiB at the reader; every byte still
/// arrives, in order.
#[test]
fn a_reader_that_does_not_read_caps_the_redirected_queue() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(a) = attach("slow") else { return };
    let out = child_in_cgroup(&a.dir, "sockops_child_slow_reader").env(CHILD_ENV, "slow").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SLOW 16777216"),
        "child: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = a.counters();
    assert_eq!(c.sockets_added, 2, "{c:?}");
    assert!(c.overflows >= 1, "the cap was reached: {c:?}");
    assert!(c.misses > 0 && c.miss_bytes > 0, "the rest went through TCP: {c:?}");
    assert_eq!(c.redirected_bytes + c.miss_bytes, 16 << 20, "every byte either way: {c:?}");
}

/// This test binary as the child half `test`, in the test cgroup (the
/// shell joins it before exec, so every thread of the child is in it).
fn child_in_cgroup(dir: &Path, test: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$1/cgroup.procs\" && exec \"$2\" --exact \"$3\" --nocapture --test-threads=1")
        .arg("sh")
        .arg(dir)
        .arg(exe)
        .arg(test)
        .env(CHILD_ENV, "1");
    cmd
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
