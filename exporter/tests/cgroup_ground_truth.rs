//! The cgroup collector against things that know the answer: the kernel's
//! own cgroupfs counters (read independently of the exporter, in the other
//! hierarchy where there is one), processes that measure their own CPU
//! time, touch a known amount of memory or move a known number of bytes,
//! and `ip -s link` inside the pod's network namespace.
//!
//! Root, real cgroups and eBPF are required; without them the tests skip
//! loudly, or fail under PMOAS_REQUIRE_BPF=1 (CI).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use pmoas_testbed::cgroups::CgroupSet;
use pmoas_testbed::lite::LitePod;
use pmoas_testbed::{Place, Pod, PodOptions, load, traffic};

/// The disk and CPU tests measure time and bytes of the whole machine's
/// devices: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialize() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// An exporter with only the cgroup collector, its programs attached.
fn exporter(test: &str, extra: &[&str]) -> Option<Exporter> {
    let mut args = vec!["--collectors", "cgroup"];
    args.extend_from_slice(extra);
    let e = Exporter::start(&args);
    let m = e.scrape();
    let attached = |p: &str| m.get("pmoas_ebpf_program_attached", &[("collector", "cgroup"), ("program", p)]);
    let all = ["cgroup_skb_ingress", "cgroup_skb_egress", "cgroup_block_io", "cgroup_oom_victim"];
    if m.get("pmoas_scrape_collector_success", &[("collector", "cgroup")]) == Some(1.0)
        && all.iter().all(|p| attached(p) == Some(1.0))
    {
        return Some(e);
    }
    let (_, page) = e.get("/").unwrap_or_default();
    can_run(test, &[format!("the cgroup collector or its programs did not start:\n{page}\nlog:\n{}", e.log_text())])
        .then_some(e)
}

fn setup_lite(test: &str, containers: &[Option<&str>]) -> Option<(LitePod, Exporter)> {
    if !can_run(test, &testbed_problems()) {
        return None;
    }
    let pod = LitePod::create(containers).expect("lite pod");
    let e = exporter(test, &[])?;
    Some((pod, e))
}

/// The labels discovery gives container `i` of a lite pod (no Kubernetes
/// API: pod UID and short container id).
fn lite_labels(pod: &LitePod, i: usize) -> Vec<(&'static str, &str)> {
    vec![("pod", pod.uid.as_str()), ("container", &pod.containers[i].id[..12])]
}

/// Container `set`'s directory in the v1 hierarchy of `controller`, if that
/// hierarchy is mounted (mount points name their controllers: `cpu,cpuacct`).
fn v1_dir(set: &CgroupSet, controller: &str) -> Option<PathBuf> {
    set.dirs
        .iter()
        .skip(1)
        .find(|d| {
            d.strip_prefix("/sys/fs/cgroup")
                .ok()
                .and_then(|rest| rest.iter().next())
                .is_some_and(|mount| mount.to_string_lossy().split(',').any(|c| c == controller))
        })
        .cloned()
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keyed(path: &Path, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {key} in {}:\n{text}", path.display()))
}

/// Scrapes until the container's series appear (discovery finds new
/// cgroups on its rescan).
fn wait_for_container(e: &Exporter, labels: &[(&str, &str)]) -> Metrics {
    e.eventually("the container's cpu series", Duration::from_secs(10), |m| {
        m.get("pmoas_container_cpu_usage_seconds_total", labels).is_some()
    })
}

fn within(ours: f64, truth: f64, fraction: f64) -> bool {
    (ours - truth).abs() <= truth.abs() * fraction
}

#[test]
fn cpu_usage_matches_cgroupfs_and_the_process_clock() {
    let test = "cpu_usage_matches_cgroupfs_and_the_process_clock";
    let _one = serialize();
    let Some((pod, e)) = setup_lite(test, &[None]) else { return };
    let labels = lite_labels(&pod, 0);
    let cpuacct = v1_dir(&pod.containers[0].cgroups, "cpuacct");
    let v2_stat = pod.containers[0].cgroups.v2().unwrap().join("cpu.stat");

    let before = wait_for_container(&e, &labels);
    let truth_v2_before = keyed(&v2_stat, "usage_usec");
    let truth_v1_before = cpuacct.as_ref().map(|d| read_u64(&d.join("cpuacct.usage")));

    let out = pod.command(0, testbed_bin()).args(["burn", "--cpu-ms", "1500"]).output().expect("burn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: load::BurnReport = serde_json::from_slice(&out.stdout).unwrap();

    let after = e.scrape();
    let ours = after.sum("pmoas_container_cpu_usage_seconds_total", &labels)
        - before.sum("pmoas_container_cpu_usage_seconds_total", &labels);
    let truth_v2 = (keyed(&v2_stat, "usage_usec") - truth_v2_before) as f64 / 1e6;
    eprintln!("cpu: pmoas {ours:.4} s, v2 cpu.stat {truth_v2:.4} s, process clock {:.4} s", report.cpu_seconds);
    assert!(within(ours, report.cpu_seconds, 0.05), "pmoas {ours} vs the process's own {}", report.cpu_seconds);
    assert!(within(ours, truth_v2, 0.05), "pmoas {ours} vs cpu.stat {truth_v2}");
    // The pod's own cgroup holds the container: its CPU includes the burn.
    let pod_level = [("pod", pod.uid.as_str()), ("container", "")];
    let pod_cpu = after.sum("pmoas_container_cpu_usage_seconds_total", &pod_level)
        - before.sum("pmoas_container_cpu_usage_seconds_total", &pod_level);
    assert!(pod_cpu >= ours * 0.95, "pod-level CPU {pod_cpu} < the container's {ours}");
    if let (Some(d), Some(b)) = (&cpuacct, truth_v1_before) {
        let truth_v1 = (read_u64(&d.join("cpuacct.usage")) - b) as f64 / 1e9;
        eprintln!("cpu: v1 cpuacct.usage {truth_v1:.4} s");
        assert!(within(ours, truth_v1, 0.05), "pmoas {ours} vs cpuacct.usage {truth_v1}");
    }
    let sources = after.get("pmoas_cgroup_sources", &[("resource", "cpu"), ("source", "none")]);
    assert!(
        sources.is_none_or(|n| n == 0.0),
        "some cgroup has no CPU source:\n{}",
        after.describe("pmoas_cgroup_sources", &[])
    );
}

#[test]
fn cfs_throttling_is_seen_and_agrees_with_cpu_stat() {
    let test = "cfs_throttling_is_seen_and_agrees_with_cpu_stat";
    let _one = serialize();
    let Some((pod, e)) = setup_lite(test, &[None]) else { return };
    let labels = lite_labels(&pod, 0);
    let set = &pod.containers[0].cgroups;
    let v2 = set.v2().unwrap().to_path_buf();
    // A quota of 20% of a CPU, where the cpu controller lives.
    let (stat, seconds_of): (PathBuf, fn(u64) -> f64) = if v2.join("cpu.max").exists() {
        std::fs::write(v2.join("cpu.max"), "20000 100000").unwrap();
        (v2.join("cpu.stat"), |us| us as f64 / 1e6)
    } else {
        let cpu = v1_dir(set, "cpu").expect("a cpu controller in v1 or v2");
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "20000").unwrap();
        (cpu.join("cpu.stat"), |ns| ns as f64 / 1e9)
    };
    let key = if stat.starts_with(&v2) { "throttled_usec" } else { "throttled_time" };

    let before = wait_for_container(&e, &labels);
    let truth_before = keyed(&stat, key);
    let out = pod.command(0, testbed_bin()).args(["burn", "--cpu-ms", "300"]).output().expect("burn");
    assert!(out.status.success());
    let after = e.scrape();
    let truth = seconds_of(keyed(&stat, key) - truth_before);
    let ours = after.sum("pmoas_container_cpu_throttled_seconds_total", &labels)
        - before.sum("pmoas_container_cpu_throttled_seconds_total", &labels);
    let periods = after.sum("pmoas_container_cpu_throttled_periods_total", &labels)
        - before.sum("pmoas_container_cpu_throttled_periods_total", &labels);
    eprintln!("throttled: pmoas {ours:.4} s in {periods} periods, {} {truth:.4} s", stat.display());
    assert!(ours > 0.0 && periods > 0.0, "300 ms of CPU at a 20% quota must be throttled");
    assert!((ours - truth).abs() <= truth * 0.01 + 1e-3, "pmoas {ours} vs cpu.stat {truth}");
}

#[test]
fn memory_rises_with_touched_pages_and_an_oom_kill_counts_once() {
    let test = "memory_rises_with_touched_pages_and_an_oom_kill_counts_once";
    let Some((pod, e)) = setup_lite(test, &[None, None]) else { return };
    let hog_labels = lite_labels(&pod, 0);
    let oom_labels = lite_labels(&pod, 1);
    let before = wait_for_container(&e, &hog_labels);
    wait_for_container(&e, &oom_labels);

    // 100 MiB touched and held.
    let mut hog = pod
        .command(0, testbed_bin())
        .args(["hog", "--mib", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("hog");
    let mut line = String::new();
    BufReader::new(hog.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "touched");
    let during = e.scrape();
    let mib = |m: &Metrics, name: &str| m.sum(name, &hog_labels) / 1048576.0;
    for name in ["pmoas_container_memory_working_set_bytes", "pmoas_container_memory_rss_bytes"] {
        let rise = mib(&during, name) - mib(&before, name);
        eprintln!("{name}: +{rise:.1} MiB");
        assert!(rise >= 100.0, "{name} rose by {rise:.1} MiB, not >= 100 MiB\n{}", during.describe(name, &hog_labels));
    }
    drop(hog.stdin.take());
    assert!(hog.wait().unwrap().success());

    // The same with a 50 MiB limit: the kernel kills it, once.
    let set = &pod.containers[1].cgroups;
    let v2 = set.v2().unwrap().to_path_buf();
    let (events, key) = if v2.join("memory.max").exists() {
        std::fs::write(v2.join("memory.max"), "52428800").unwrap();
        std::fs::write(v2.join("memory.swap.max"), "0").ok();
        (v2.join("memory.events"), "oom_kill")
    } else {
        let mem = v1_dir(set, "memory").expect("a memory controller in v1 or v2");
        std::fs::write(mem.join("memory.limit_in_bytes"), "52428800").unwrap();
        (mem.join("memory.oom_control"), "oom_kill")
    };
    let truth_before = keyed(&events, key);
    let before = e.scrape();
    let status = pod
        .command(1, testbed_bin())
        .args(["hog", "--mib", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("hog");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the OOM killer should have killed it: {status:?}");
    let truth = keyed(&events, key) - truth_before;
    assert_eq!(truth, 1, "{} says {truth} OOM kills", events.display());
    let after = e.scrape();
    let ours = after.sum("pmoas_container_oom_kills_total", &oom_labels)
        - before.sum("pmoas_container_oom_kills_total", &oom_labels);
    assert_eq!(ours, 1.0, "oom_kills_total rose by {ours}\n{}", after.describe("pmoas_container_oom_kills_total", &[]));
    let other = after.sum("pmoas_container_oom_kills_total", &hog_labels);
    assert_eq!(other, 0.0, "the kill was counted for the other container");
}

#[test]
fn block_io_bytes_match_what_was_written_and_read() {
    let test = "block_io_bytes_match_what_was_written_and_read";
    let _one = serialize();
    let Some(dir) = load::block_backed_dir() else {
        can_run(test, &["no directory on a block device (all of /var/tmp, /tmp, /root are tmpfs or overlay)".into()]);
        return;
    };
    let Some((pod, e)) = setup_lite(test, &[None]) else { return };
    let labels = lite_labels(&pod, 0);
    let file = dir.join(format!("pmoas-cgroup-test-{}", std::process::id()));
    const MIB: f64 = 20.0 * 1048576.0;
    let mut m = wait_for_container(&e, &labels);

    for (what, args) in [
        ("O_DIRECT write", vec!["--write-mib", "20", "--direct"]),
        ("O_DIRECT read", vec!["--read", "--direct"]),
        ("buffered write + fsync", vec!["--write-mib", "20"]),
        ("buffered read after dropping the cache", vec!["--read"]),
    ] {
        let out = pod
            .command(0, testbed_bin())
            .args(["disk", "--file", file.to_str().unwrap()])
            .args(&args)
            .output()
            .expect("disk tool");
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        let report: load::DiskReport = serde_json::from_slice(&out.stdout).unwrap();
        let now = e.scrape();
        let delta = |name: &str| now.sum(name, &labels) - m.sum(name, &labels);
        let (written, read) =
            (delta("pmoas_container_fs_write_bytes_total"), delta("pmoas_container_fs_read_bytes_total"));
        eprintln!("{what}: tool wrote {} read {}; pmoas write {written} read {read}", report.written, report.read);
        let (truth, ours) =
            if report.written > 0 { (report.written as f64, written) } else { (report.read as f64, read) };
        assert_eq!(truth, MIB, "{what}: the tool moved {truth} bytes");
        assert!(within(ours, truth, 0.05), "{what}: pmoas {ours} vs {truth}");
        // The pod-level series sums its containers.
        let pod_level = [("pod", pod.uid.as_str()), ("container", "")];
        let name = if report.written > 0 {
            "pmoas_container_fs_write_bytes_total"
        } else {
            "pmoas_container_fs_read_bytes_total"
        };
        let pod_delta = now.sum(name, &pod_level) - m.sum(name, &pod_level);
        assert!(within(pod_delta, truth, 0.05), "{what}: pod-level {pod_delta} vs {truth}");
        m = now;
    }
    load::remove(&file);
}

/// Counters of the pod's interfaces, from `ip -s link` in its namespace.
fn ip_link_counters(netns: &str) -> Vec<(String, u64, u64)> {
    let out = std::process::Command::new("ip").args(["-n", netns, "-j", "-s", "link", "show"]).output().unwrap();
    assert!(out.status.success(), "ip -s link: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let stats = &i["stats64"];
            (
                i["ifname"].as_str().unwrap().to_string(),
                stats["rx"]["bytes"].as_u64().unwrap(),
                stats["tx"]["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Per-container network bytes inside one shared network namespace.
///
/// The bound: the hooks count IP packets, so a container's count is at
/// least the payload it moved and at most the payload plus its headers.
/// A TCP segment carries at least 1448 payload bytes (MSS on a 1500-byte
/// link; 65483 on loopback) under at most 52 header bytes (IPv4 20, TCP 20,
/// timestamps 12): at most 3.6%. The other direction carries only ACKs, at
/// most one 52-byte packet per data segment: another 3.6%. Handshake and
/// FIN add a few hundred bytes. Hence `payload <= count <= payload * 1.04
/// + 4 KiB` for the sender, and `count <= payload * 0.04 + 4 KiB` for ACKs.
#[test]
fn network_bytes_per_container_inside_one_pod_namespace() {
    let test = "network_bytes_per_container_inside_one_pod_namespace";
    if !can_run(test, &testbed_problems()) {
        return;
    }
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let Some(e) = exporter(test, &[]) else { return };
    let w = Workloads::of(&pod);
    let (sidecar, app) = (w.sidecar(), w.app());
    let before = e.eventually("both containers' network series", Duration::from_secs(10), |m| {
        m.get("pmoas_container_network_transmit_bytes_total", &sidecar).is_some()
            && m.get("pmoas_container_network_transmit_bytes_total", &app).is_some()
    });

    const N: u64 = 6 << 20; // sidecar -> a peer outside the pod
    const M: u64 = 3 << 20; // app -> sidecar over loopback
    let outside = TcpListener::bind((pod.state.host_ip, 0)).unwrap();
    let outside_addr = outside.local_addr().unwrap();
    let peer = std::thread::spawn(move || traffic::tcp_server(outside, 1, 0, false));
    let r =
        tool(&pod, Place::Sidecar, &["tcp-client", "--connect", &outside_addr.to_string(), "--send", &N.to_string()]);
    assert_eq!(r["bytes_sent"], N);
    assert_eq!(peer.join().unwrap().bytes_received, N);

    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let srv = server(&pod, Place::Sidecar, &["--listen", &listen, "--count", "1"]);
    let r = tool(&pod, Place::App, &["tcp-client", "--connect", &listen, "--send", &M.to_string()]);
    assert_eq!(r["bytes_sent"], M);
    assert_eq!(finish(srv)["bytes_received"], M);

    let after = e.scrape();
    let d = |name: &str, l: &[(&str, &str)]| after.sum(name, l) - before.sum(name, l);
    let (s_tx, s_rx) = (
        d("pmoas_container_network_transmit_bytes_total", &sidecar),
        d("pmoas_container_network_receive_bytes_total", &sidecar),
    );
    let (a_tx, a_rx) = (
        d("pmoas_container_network_transmit_bytes_total", &app),
        d("pmoas_container_network_receive_bytes_total", &app),
    );
    eprintln!("sidecar tx {s_tx} rx {s_rx}; app tx {a_tx} rx {a_rx}; N={N} M={M}");
    // [payload it sent, payload + its headers + the ACKs it sent for `acked` bytes].
    let bounded = |ours: f64, sent: u64, acked: u64, what: &str| {
        let (lo, hi) = (sent as f64, sent as f64 * 1.04 + acked as f64 * 0.04 + 4096.0);
        assert!(ours >= lo && ours <= hi, "{what}: {ours} not in [{lo}, {hi}]");
    };
    // The sidecar sent N out and ACKed M; it received M and the ACKs of N.
    bounded(s_tx, N, M, "sidecar transmit");
    bounded(s_rx, M, N, "sidecar receive");
    bounded(a_tx, M, 0, "app transmit");
    bounded(a_rx, 0, M, "app receive (ACKs only)");

    // The pod's interfaces, as `ip -s link` in its namespace says.
    let truth_before = ip_link_counters(&pod.state.netns);
    let m = e.scrape();
    let truth_after = ip_link_counters(&pod.state.netns);
    for ((name, rx0, tx0), (_, rx1, tx1)) in truth_before.iter().zip(&truth_after) {
        let l = [("pod", pod.state.uid.as_str()), ("interface", name.as_str())];
        let rx = m.get("pmoas_pod_network_receive_bytes_total", &l).unwrap_or_else(|| {
            panic!("no series for {name}:\n{}", m.describe("pmoas_pod_network_receive_bytes_total", &[]))
        }) as u64;
        let tx = m.get("pmoas_pod_network_transmit_bytes_total", &l).unwrap() as u64;
        eprintln!("{name}: rx {rx} (ip: {rx0}..{rx1}), tx {tx} (ip: {tx0}..{tx1})");
        assert!((*rx0..=*rx1).contains(&rx) && (*tx0..=*tx1).contains(&tx), "{name} disagrees with ip -s link");
    }
    let eth0 =
        m.get("pmoas_pod_network_transmit_bytes_total", &[("pod", pod.state.uid.as_str()), ("interface", "eth0")]);
    assert!(eth0.unwrap_or(0.0) >= N as f64, "eth0 carried the sidecar's {N} bytes");
    pod.down().unwrap();
}

#[test]
fn a_container_that_exits_mid_scrape_leaves_after_the_grace_period() {
    let test = "a_container_that_exits_mid_scrape_leaves_after_the_grace_period";
    if !can_run(test, &testbed_problems()) {
        return;
    }
    let pod = LitePod::create(&[Some("app-process")]).expect("lite pod");
    let Some(e) = exporter(test, &["--discovery.grace-period", "3s", "--discovery.rescan-interval", "500ms"]) else {
        return;
    };
    let labels = lite_labels(&pod, 0);
    let owned: Vec<(&'static str, String)> = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let labels: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wait_for_container(&e, &labels);
    let errors_before = e.scrape().sum("pmoas_cgroup_read_errors_total", &[]);

    // Scrape in a tight loop while the container goes away.
    let addr = e.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = http_get(addr, "/metrics", &[]).expect("scrape");
                assert_eq!(status, 200);
                let m = Metrics::parse(&body);
                assert_eq!(m.get("pmoas_scrape_collector_success", &[("collector", "cgroup")]), Some(1.0), "{body}");
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let gone_at = Instant::now();
    drop(pod);
    let m = e.eventually("the series to leave", Duration::from_secs(15), |m| {
        m.get("pmoas_container_cpu_usage_seconds_total", &labels).is_none()
    });
    let left_after = gone_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    eprintln!("series left {left_after:?} after the container; {scrapes} scrapes, all successful");
    assert!(left_after >= Duration::from_secs(2), "series left before the grace period: {left_after:?}");
    assert_eq!(m.sum("pmoas_cgroup_read_errors_total", &[]), errors_before, "a vanishing cgroup is not an error");
}

/// A kernel map too small for the node (`--collector.cgroup.max-cgroups
/// 64`, 90 containers sending): the containers beyond it lose only their
/// kernel-side counters (network), which is counted
/// (`aggregation_map_full`) and announced at start (`cgroup_map_size`);
/// what cgroupfs counts stays whole and exact for every container.
#[test]
fn a_full_cgroup_map_loses_only_kernel_counters_and_counts_it() {
    let test = "a_full_cgroup_map_loses_only_kernel_counters_and_counts_it";
    let _one = serialize();
    if !can_run(test, &testbed_problems()) {
        return;
    }
    const PODS: usize = 30;
    const SENT: u64 = 1000;
    let pods: Vec<LitePod> =
        (0..PODS).map(|_| LitePod::create(&[Some("envoy"), Some("app"), Some("worker")]).expect("lite pod")).collect();
    let containers: Vec<(&LitePod, usize)> = pods.iter().flat_map(|p| (0..3).map(move |i| (p, i))).collect();
    let Some(e) = exporter(test, &["--collector.cgroup.max-cgroups", "64"]) else { return };
    let m = e.eventually("every container's cpu series", Duration::from_secs(20), |m| {
        containers.iter().all(|(p, i)| m.get("pmoas_container_cpu_usage_seconds_total", &lite_labels(p, *i)).is_some())
    });
    let degraded = [("component", "cgroup"), ("feature", "cgroup_map_size")];
    assert_eq!(m.get("pmoas_feature_degraded", &degraded), Some(1.0), "the start-up check saw 120+ cgroups for 64");

    // One connection from every container, SENT bytes each, to a peer
    // that counts them.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let n = containers.len() as u64;
    let peer = std::thread::spawn(move || traffic::tcp_server(listener, n, 0, false));
    for (p, i) in &containers {
        let out = p
            .command(*i, testbed_bin())
            .args(["tcp-client", "--connect", &addr, "--send", &SENT.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("tcp-client");
        assert!(out.status.success(), "tcp-client in container {i} of {}", p.uid);
    }
    assert_eq!(peer.join().unwrap().bytes_received, n * SENT, "the peer's count");

    let m = e.scrape();
    let lost = m.sum("pmoas_ebpf_events_lost_total", &[("collector", "cgroup"), ("reason", "aggregation_map_full")]);
    let mut counted = 0;
    for (p, i) in &containers {
        let labels = lite_labels(p, *i);
        let tx = m.get("pmoas_container_network_transmit_bytes_total", &labels).expect("a network series");
        // In the map: at least the payload; beyond it: nothing at all.
        assert!(tx == 0.0 || tx >= SENT as f64, "container {i} of {}: {tx} bytes", p.uid);
        counted += usize::from(tx > 0.0);
        // cgroupfs does not depend on the map: exact (nothing runs now
        // in the container but an idle sleep).
        let usage = m.get("pmoas_container_cpu_usage_seconds_total", &labels).unwrap();
        let truth = keyed(&p.containers[*i].cgroups.dirs[0].join("cpu.stat"), "usage_usec") as f64 / 1e6;
        assert!((usage - truth).abs() < 1e-9, "container {i} of {}: CPU {usage} s, cpu.stat {truth} s", p.uid);
    }
    let uncounted = containers.len() - counted;
    eprintln!("{counted} containers counted, {uncounted} beyond the map; aggregation_map_full: {lost}");
    assert!(counted <= 64, "{counted} containers in a map of 64");
    assert!(uncounted > 0, "the map did not fill: the test proves nothing");
    // Each uncounted container's packets (a SYN at least) each failed to
    // find room.
    assert!(lost >= uncounted as f64, "{uncounted} containers uncounted, {lost} losses counted");
}

/// With `--collector.cgroup.read-interval`, cgroupfs is read by a thread
/// of its own: scrapes in between serve one reading (the same read time),
/// which is exact once it is newer than what it reads; a container that
/// appears later gets its series from the next read.
#[test]
fn cgroupfs_read_in_the_background_serves_its_last_reading_exactly() {
    let test = "cgroupfs_read_in_the_background_serves_its_last_reading_exactly";
    let _one = serialize();
    if !can_run(test, &testbed_problems()) {
        return;
    }
    let interval = Duration::from_secs(2);
    let pod = LitePod::create(&[None]).expect("lite pod");
    let Some(e) = exporter(test, &["--collector.cgroup.read-interval", "2s", "--discovery.rescan-interval", "500ms"])
    else {
        return;
    };
    let labels = lite_labels(&pod, 0);
    let cpu = "pmoas_container_cpu_usage_seconds_total";
    let read_at = |m: &Metrics| m.get("pmoas_cgroup_read_timestamp_seconds", &[]).expect("a read time");
    wait_for_container(&e, &labels);

    // Back to back, the scrapes do not read: five of them see one read
    // time, two if a read came in between.
    let scrapes: Vec<Metrics> = (0..5).map(|_| e.scrape()).collect();
    let mut times: Vec<f64> = scrapes.iter().map(read_at).collect();
    times.dedup();
    assert!(times.len() <= 2, "five scrapes back to back read cgroupfs themselves: read times {times:?}");
    let b = scrapes.last().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now - read_at(b) <= interval.as_secs_f64() + 1.0, "the last read is {} s old", now - read_at(b));
    assert!(b.get("pmoas_cgroup_read_duration_seconds", &[]).is_some_and(|d| d > 0.0));

    // CPU burnt now shows once a read comes after it, exactly as cgroupfs
    // has it (the container is idle again by then).
    let v2_stat = pod.containers[0].cgroups.v2().unwrap().join("cpu.stat");
    let out = pod.command(0, testbed_bin()).args(["burn", "--cpu-ms", "300"]).output().expect("burn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let burnt = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let truth = keyed(&v2_stat, "usage_usec") as f64 / 1e6;
    let m = e.eventually("a read after the burn", interval * 3, |m| read_at(m) > burnt);
    let ours = m.get(cpu, &labels).expect("cpu series");
    eprintln!("after the burn: pmoas {ours:.6} s, cpu.stat {truth:.6} s; read {:.3} s after it", read_at(&m) - burnt);
    assert!(within(ours, truth, 0.001), "pmoas {ours} vs cpu.stat {truth}");
    assert!(ours > b.get(cpu, &labels).unwrap() + 0.2, "the burn is not in the reading");

    // A container found after the exporter started: series from a later read.
    let late = LitePod::create(&[None]).expect("second lite pod");
    let late_labels = lite_labels(&late, 0);
    let m = e
        .eventually("the late container's cpu series", Duration::from_secs(15), |m| m.get(cpu, &late_labels).is_some());
    assert!(read_at(&m) > read_at(b), "the late container was served without a new read");
}
