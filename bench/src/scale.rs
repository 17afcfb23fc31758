//! Scale curves: how each cost of the exporter grows with what drives it,
//! each curve measured in one run, with the default collectors (socket and
//! cgroup) and default settings unless a point says otherwise.
//!
//! 1. Pods: 10, 100, 500, 1,100 lite pods of 3 containers (kubelet-layout
//!    cgroups, an idle process in each), a fresh exporter at each point:
//!    RSS, CPU idle and per scrape, /metrics time and size, kernel map
//!    memory; then the same pods with cgroupfs read in the background
//!    (`--collector.cgroup.read-interval`), a second fresh exporter.
//! 2. Open connections: 1k, 10k, 100k established TCP connections held
//!    open between two containers of a lite pod, on the loopback of a
//!    network namespace of our own (both ends on this node: two sockets
//!    each). Once with the default `max_tracked_connections` (65,536
//!    sockets), once raised to 262,144: counts against the tools' own,
//!    losses by reason, sockets in `socket_conns`, eBPF run time per
//!    connection, and the exporter's costs as in 1.
//! 3. Connection rate: short connections (64 bytes up, closed) at a few
//!    rates for a few seconds each: eBPF run time per connection, lost
//!    events, exporter CPU, counts.
//!
//! Plots (SVG, [`crate::plot`]) go to `bench/plots/`, the tables into the
//! `scale` section of BENCHMARKS.md.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use pmoas_testbed::conns::{ConnReport, ScratchNetns, ServeReport};
use pmoas_testbed::lite::LitePod;
use pmoas_testbed::{bpfmaps, procs};

use crate::Opts;
use crate::cgroup::label;
use crate::common::*;
use crate::plot::{self, Panel, Series};

const POD_POINTS: [u64; 4] = [10, 100, 500, 1100];
const CONN_POINTS: [u64; 3] = [1_000, 10_000, 100_000];
/// Target rates (connections/s); 0 is as fast as the machine goes.
const RATE_POINTS: [u64; 5] = [1_000, 2_500, 5_000, 10_000, 0];
const RAISED: u32 = 262_144;
/// Scrapes per point, one every `SCRAPE_GAP`.
const SCRAPES: usize = 20;
const SCRAPE_GAP: Duration = Duration::from_millis(500);
/// The idle window (no scrapes) of the CPU measurement.
const IDLE: Duration = Duration::from_secs(10);
/// The background arm's `--collector.cgroup.read-interval`: two reads in
/// each idle and scrape window, so both carry their share.
const READ_INTERVAL: &str = "5s";
/// The servers' first port; how many ports the churning server listens on.
const PORT: u16 = 5000;
const LISTENERS: u16 = 4;
/// Connections held per server port, each port its own server process: a
/// process here may not open more than 20,000 files (the hard limit, and no
/// CAP_SYS_RESOURCE to raise it), so 100k connections take 8 servers and
/// at least 8 clients.
const PER_PORT: u64 = 12_500;

/// What one exporter costs at one point of a curve.
#[derive(Clone, Default)]
struct Costs {
    /// % of a core, no scrapes.
    idle_pct: f64,
    /// CPU per scrape over idle, ms.
    scrape_cpu_ms: f64,
    scrape_ms: Vec<f64>,
    cgroup_ms: Vec<f64>,
    socket_ms: Vec<f64>,
    bytes: usize,
    series: usize,
    /// VmRSS after the scrapes, VmHWM since the measurement began (MiB).
    rss: f64,
    peak: f64,
    /// VmHWM when every collector had started, before any scrape.
    startup_peak: f64,
    /// Kernel memory of the maps by collector (bytes).
    map_socket: f64,
    map_cgroup: f64,
    degraded: Vec<String>,
    lost: f64,
    /// The cgroup collector's last read of cgroupfs (ms).
    read_ms: f64,
}

impl Costs {
    fn map_mib(&self) -> f64 {
        (self.map_socket + self.map_cgroup) / 1048576.0
    }
    fn median_ms(&self) -> f64 {
        median(&self.scrape_ms)
    }
}

fn series_count(body: &str) -> usize {
    body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

fn degraded(body: &str) -> Vec<String> {
    samples(body, "pmoas_feature_degraded")
        .filter(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()) == Some(1.0))
        .filter_map(|l| Some(format!("{}/{}", label(l, "component")?, label(l, "feature")?)))
        .collect()
}

/// Idle CPU, then `SCRAPES` scrapes: the exporter's costs now.
fn measure(e: &Exporter, startup_peak: f64) -> Result<Costs> {
    e.reset_peak()?;
    let (cpu0, t0) = (e.cpu_seconds(), Instant::now());
    std::thread::sleep(IDLE);
    let idle_rate = (e.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let mut c = Costs { startup_peak, idle_pct: idle_rate * 100.0, ..Default::default() };
    let mut body = String::new();
    let (cpu0, t0) = (e.cpu_seconds(), Instant::now());
    for i in 0..SCRAPES {
        std::thread::sleep((t0 + SCRAPE_GAP * i as u32).saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let (status, b) = http_get(e.addr, "/metrics")?;
        c.scrape_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(status == 200, "scrape answered {status}");
        for (collector, v) in [("cgroup", &mut c.cgroup_ms), ("socket", &mut c.socket_ms)] {
            let want = format!("collector=\"{collector}\"");
            ensure!(metric(&b, "pmoas_scrape_collector_success", &[&want]) == 1.0, "the {collector} collector failed");
            v.push(metric(&b, "pmoas_scrape_collector_duration_seconds", &[&want]) * 1000.0);
        }
        body = b;
    }
    std::thread::sleep((t0 + SCRAPE_GAP * SCRAPES as u32).saturating_duration_since(Instant::now()));
    let (cpu, wall) = (e.cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    c.scrape_cpu_ms = (cpu - idle_rate * wall) / SCRAPES as f64 * 1000.0;
    (c.rss, c.peak) = e.rss_mib();
    c.bytes = body.len();
    c.series = series_count(&body);
    c.map_socket = metric(&body, "pmoas_ebpf_map_memory_bytes", &["collector=\"socket\""]);
    c.map_cgroup = metric(&body, "pmoas_ebpf_map_memory_bytes", &["collector=\"cgroup\""]);
    c.degraded = degraded(&body);
    c.lost = metric(&body, "pmoas_ebpf_events_lost_total", &[]);
    c.read_ms = metric(&body, "pmoas_cgroup_read_duration_seconds", &[]) * 1000.0;
    Ok(c)
}

/// The exporter once every collector started (no scrape yet), and its peak
/// RSS so far: start-up's. Fails unless socket and cgroup both run.
fn start_exporter(o: &Opts, args: &[&str]) -> Result<(Running, f64)> {
    let (e, _) = Exporter::start_ready(&o.exporter, args)?;
    let e = Running(Some(e));
    let (_, startup_peak) = e.get().rss_mib();
    e.get().reset_peak()?;
    let (_, body) = http_get(e.get().addr, "/metrics")?;
    for collector in ["socket", "cgroup"] {
        let want = format!("collector=\"{collector}\"");
        ensure!(
            metric(&body, "pmoas_scrape_collector_success", &[&want]) == 1.0,
            "the {collector} collector does not run"
        );
    }
    Ok((e, startup_peak))
}

/// cgroup v2 directories on the host (what the cgroup map's start-up check
/// compares with `max_cgroups`).
fn host_cgroups() -> u64 {
    let root = Path::new("/sys/fs/cgroup/unified");
    let root = if root.is_dir() { root } else { Path::new("/sys/fs/cgroup") };
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        n += 1;
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    n
}

/// Processes on the machine.
fn processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count())
        .unwrap_or(0)
}

/// Scrapes until `want` containers of our pods have a CPU series.
fn wait_seen(e: &Exporter, uids: &HashSet<&str>, want: u64) -> Result<()> {
    let started = Instant::now();
    loop {
        let (_, body) = http_get(e.addr, "/metrics")?;
        if containers_seen(&body, uids) as u64 >= want {
            return Ok(());
        }
        ensure!(started.elapsed() < Duration::from_secs(120), "{want} containers not seen in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Containers of our pods with a CPU series.
fn containers_seen(body: &str, uids: &HashSet<&str>) -> usize {
    samples(body, "pmoas_container_cpu_usage_seconds_total")
        .filter(|l| label(l, "pod").is_some_and(|p| uids.contains(p)))
        .filter(|l| label(l, "container").is_some_and(|c| !c.is_empty()))
        .count()
}

struct PodPoint {
    pods: u64,
    containers: u64,
    /// Live cgroups each scrape reads (`pmoas_cgroup_sources`), and the
    /// cgroup v2 directories of the host.
    cgroups_read: f64,
    host_cgroups: u64,
    processes: usize,
    seen_ms: f64,
    create_s: f64,
    c: Costs,
    /// The same pods, cgroupfs read in the background.
    background: Costs,
}

struct PodCurve {
    points: Vec<PodPoint>,
    /// Why the curve stopped short, if it did.
    stopped: Option<String>,
    teardown_s: f64,
}

fn pods_curve(o: &Opts, targets: &[u64]) -> Result<PodCurve> {
    let mut pods: Vec<LitePod> = Vec::new();
    let mut points = Vec::new();
    let mut stopped = None;
    for &target in targets {
        let t0 = Instant::now();
        while (pods.len() as u64) < target {
            match LitePod::create(&[Some("envoy"), Some("app"), Some("worker")]) {
                Ok(p) => pods.push(p),
                Err(e) => {
                    stopped = Some(format!("creating pod {} failed: {e:#}", pods.len() + 1));
                    break;
                }
            }
        }
        let create_s = t0.elapsed().as_secs_f64();
        let n = pods.len() as u64;
        if n == 0 || points.last().is_some_and(|p: &PodPoint| p.pods == n) {
            break;
        }
        eprintln!("pmoas-bench: scale: {n} pods ({create_s:.1} s to create); starting the exporter");
        let uids: HashSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        let started = Instant::now();
        let (e, startup) = start_exporter(o, &[])?;
        wait_seen(e.get(), &uids, 3 * n)?;
        let seen_ms = started.elapsed().as_secs_f64() * 1000.0;
        // The first reads of each cgroup find its v1 directories.
        std::thread::sleep(Duration::from_secs(2));
        let (_, body) = http_get(e.get().addr, "/metrics")?;
        let c = measure(e.get(), startup)?;
        eprintln!(
            "pmoas-bench: scale: {n} pods: /metrics {:.1} ms median, {} series, RSS {:.1} MiB, {:.1} ms CPU per scrape",
            c.median_ms(),
            c.series,
            c.rss,
            c.scrape_cpu_ms
        );
        drop(e);
        let (e, startup) = start_exporter(o, &["--collector.cgroup.read-interval", READ_INTERVAL])?;
        wait_seen(e.get(), &uids, 3 * n)?;
        std::thread::sleep(Duration::from_secs(2));
        let background = measure(e.get(), startup)?;
        eprintln!(
            "pmoas-bench: scale: {n} pods, cgroupfs read every {READ_INTERVAL}: /metrics {:.1} ms median, read {:.1} ms",
            background.median_ms(),
            background.read_ms
        );
        points.push(PodPoint {
            background,
            pods: n,
            containers: 3 * n,
            cgroups_read: metric(&body, "pmoas_cgroup_sources", &["resource=\"cpu\""]),
            host_cgroups: host_cgroups(),
            processes: processes(),
            seen_ms,
            create_s,
            c,
        });
        drop(e);
        if stopped.is_some() {
            break;
        }
    }
    let t0 = Instant::now();
    drop(pods);
    Ok(PodCurve { points, stopped, teardown_s: t0.elapsed().as_secs_f64() })
}

/// A lite pod whose two containers serve and call, in a namespace of our own.
struct ConnPod {
    pod: LitePod,
    ns: ScratchNetns,
    tool: PathBuf,
}

impl ConnPod {
    fn new(o: &Opts) -> Result<ConnPod> {
        let tool = o.exporter.with_file_name("pmoas-testbed");
        ensure!(tool.is_file(), "{} missing: cargo build --release -p pmoas-testbed", tool.display());
        Ok(ConnPod {
            pod: LitePod::create(&[Some("server"), Some("client")])?,
            ns: ScratchNetns::create("scale")?,
            tool,
        })
    }

    fn spawn(&self, container: usize, args: &[String]) -> Result<Child> {
        procs::command_in(&self.tool, &self.pod.containers[container].cgroups, Some(self.ns.fd()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pmoas-testbed")
    }

    fn port(&self, i: u16) -> SocketAddr {
        ([127, 0, 0, 1], PORT + i).into()
    }

    /// A server in container 0 on `listeners` ports from `first`, once it
    /// listens.
    fn server(&self, first: SocketAddr, listeners: u16, hold: bool) -> Result<Tool> {
        let mut args = vec!["conn-server".into(), "--listen".into(), first.to_string()];
        args.extend(["--listeners".into(), listeners.to_string()]);
        if hold {
            args.push("--hold".into());
        }
        let mut child = self.spawn(0, &args)?;
        let mut line = String::new();
        BufReader::new(child.stderr.take().context("stderr")?).read_line(&mut line)?;
        ensure!(line.starts_with("listening"), "conn-server: {line}");
        Ok(Tool::new(child))
    }

    /// `count` more connections from container 1 to `to`, held until the
    /// tool is finished.
    fn hold(&self, to: SocketAddr, count: u64) -> Result<(Tool, ConnReport)> {
        let args: Vec<String> =
            ["conn-client", "--connect", &to.to_string(), "--count", &count.to_string()].map(String::from).to_vec();
        let mut child = self.spawn(1, &args)?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let r: ConnReport = serde_json::from_str(&line).with_context(|| format!("conn-client said {line:?}"))?;
        Ok((Tool::new(child), r))
    }

    fn churn(&self, rate: u64, seconds: u64) -> Result<ConnReport> {
        let args: Vec<String> = ["conn-client", "--connect", &self.port(0).to_string(), "--listeners"]
            .iter()
            .map(|s| s.to_string())
            .chain([LISTENERS.to_string(), "--rate".into(), rate.to_string(), "--seconds".into(), seconds.to_string()])
            .chain(["--threads".into(), LISTENERS.to_string(), "--send".into(), "64".into()])
            .collect();
        let out = self.spawn(1, &args)?.wait_with_output()?;
        ensure!(out.status.success(), "conn-client: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn labels(&self, container: usize) -> [String; 2] {
        [format!("pod=\"{}\"", self.pod.uid), format!("container=\"{}\"", &self.pod.containers[container].id[..12])]
    }
}

/// A tool process that runs until its stdin closes; killed if dropped.
struct Tool {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Tool {
    fn new(mut child: Child) -> Tool {
        let stdin = child.stdin.take();
        Tool { child: Some(child), stdin }
    }

    /// Closes its stdin and waits: what it printed on stdout.
    fn finish(mut self) -> Result<String> {
        drop(self.stdin.take());
        let child = self.child.take().context("finished twice")?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "tool failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(mut s) = self.stdin.take() {
                let _ = s.flush();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (run time ns, runs) of one collector's programs between two scrapes.
fn bpf_delta(before: &str, after: &str, collector: &str) -> (f64, f64) {
    let want = [format!("collector=\"{collector}\"")];
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let (ns0, r0) = bpf_totals(before, &want);
    let (ns1, r1) = bpf_totals(after, &want);
    (ns1 - ns0, r1 - r0)
}

fn lost_by_reason(before: &str, after: &str) -> Vec<(String, f64)> {
    let mut reasons: Vec<String> = samples(after, "pmoas_ebpf_events_lost_total")
        .filter_map(|l| Some(format!("{}/{}", label(l, "collector")?, label(l, "reason")?)))
        .collect();
    reasons.sort();
    reasons.dedup();
    reasons
        .into_iter()
        .filter_map(|r| {
            let (c, reason) = r.split_once('/')?;
            let want = [format!("collector=\"{c}\""), format!("reason=\"{reason}\"")];
            let want: Vec<&str> = want.iter().map(String::as_str).collect();
            let d = metric(after, "pmoas_ebpf_events_lost_total", &want)
                - metric(before, "pmoas_ebpf_events_lost_total", &want);
            (d > 0.0).then_some((r, d))
        })
        .collect()
}

fn lost_text(lost: &[(String, f64)]) -> String {
    if lost.is_empty() {
        "0".into()
    } else {
        lost.iter().map(|(r, n)| format!("{n:.0} {r}")).collect::<Vec<_>>().join(", ")
    }
}

struct ConnPoint {
    max_tracked: u32,
    open: u64,
    /// This step: connections the tool opened, and how long it took.
    opened: u64,
    failed: u64,
    open_s: f64,
    connects: f64,
    accepts: f64,
    lost: Vec<(String, f64)>,
    /// Sockets in `socket_conns` after the step.
    tracked: usize,
    socket_ns: f64,
    socket_runs: f64,
    cgroup_ns: f64,
    programs: Vec<(String, f64, f64)>,
    c: Costs,
}

struct ConnArm {
    points: Vec<ConnPoint>,
    /// After every connection closed: lifetimes counted (outbound, inbound)
    /// and sockets left in `socket_conns`.
    lifetimes: (f64, f64),
    tracked_after: usize,
    closed: u64,
    /// Lost events while they closed.
    close_lost: Vec<(String, f64)>,
    /// TCP sockets of the namespace by state, then.
    states: Vec<(String, usize)>,
    /// If sockets stayed tracked: after waiting (seconds), sockets still
    /// tracked, outbound lifetimes counted, lost events since the close.
    late: Option<LateClose>,
}

/// Sockets still tracked right after the close, looked at again once
/// tcp_fin_timeout has passed.
struct LateClose {
    waited_seconds: f64,
    still_tracked: usize,
    outbound_lifetimes: f64,
    lost_since_close: Vec<(String, f64)>,
}

fn tracked_sockets(e: &Exporter) -> usize {
    bpfmaps::keys_of(e.pid(), "socket_conns").map(|k| k.len()).unwrap_or(0)
}

fn conn_arm(o: &Opts, cp: &ConnPod, max_tracked: Option<u32>, targets: &[u64]) -> Result<ConnArm> {
    let limit = max_tracked.map(|m| m.to_string());
    let mut args = vec![];
    if let Some(l) = &limit {
        args.extend(["--collector.socket.max-tracked-connections", l.as_str()]);
    }
    let (e, startup) = start_exporter(o, &args)?;
    // The pod's containers known before the first connection.
    let uid = format!("pod=\"{}\"", cp.pod.uid);
    let t0 = Instant::now();
    while metric(&http_get(e.get().addr, "/metrics")?.1, "pmoas_container_info", &[&uid]) < 2.0 {
        ensure!(t0.elapsed() < Duration::from_secs(20), "the connection pod's containers not known in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ports = targets.iter().max().copied().unwrap_or(0).div_ceil(PER_PORT) as u16;
    let servers = (0..ports).map(|i| cp.server(cp.port(i), 1, true)).collect::<Result<Vec<_>>>()?;
    let (srv, cli) = (cp.labels(0), cp.labels(1));
    let srv: Vec<&str> = srv.iter().map(String::as_str).collect();
    let cli: Vec<&str> = cli.iter().map(String::as_str).collect();
    let first_page = http_get(e.get().addr, "/metrics")?.1;
    let mut clients = Vec::new();
    let mut points = Vec::new();
    let mut open = 0;
    let mut per_port = vec![0u64; ports as usize];
    for &target in targets {
        let (_, before) = http_get(e.get().addr, "/metrics")?;
        let stats = BpfStats::on();
        let mut r = ConnReport::default();
        // Fill the ports in order, each up to PER_PORT, a client per chunk.
        for (i, held) in per_port.iter_mut().enumerate() {
            let chunk = (target.saturating_sub(open + r.connected)).min(PER_PORT - *held);
            if chunk == 0 {
                continue;
            }
            let (client, c) = cp.hold(cp.port(i as u16), chunk)?;
            clients.push(client);
            *held += c.connected;
            r.connected += c.connected;
            r.failed += c.failed;
            r.seconds += c.seconds;
        }
        drop(stats);
        open += r.connected;
        // Let the last handshakes and accepts land.
        std::thread::sleep(Duration::from_millis(500));
        let (_, after) = http_get(e.get().addr, "/metrics")?;
        let (socket_ns, socket_runs) = bpf_delta(&before, &after, "socket");
        let (cgroup_ns, _) = bpf_delta(&before, &after, "cgroup");
        let tracked = tracked_sockets(e.get());
        let d = |name: &str, want: &[&str]| metric(&after, name, want) - metric(&before, name, want);
        let point = ConnPoint {
            max_tracked: max_tracked.unwrap_or(65_536),
            open,
            opened: r.connected,
            failed: r.failed,
            open_s: r.seconds,
            connects: d("pmoas_tcp_connects_total", &cli),
            accepts: d("pmoas_tcp_accepts_total", &srv),
            lost: lost_by_reason(&before, &after),
            tracked,
            socket_ns,
            socket_runs,
            cgroup_ns,
            programs: program_deltas(&before, &after, "collector=\"socket\""),
            c: measure(e.get(), startup)?,
        };
        eprintln!(
            "pmoas-bench: scale: {open} connections open (max tracked {}): {} connects, {} accepts, {} tracked, lost {}; \
             {:.0} ns eBPF per connection",
            point.max_tracked,
            point.connects,
            point.accepts,
            tracked,
            lost_text(&point.lost),
            socket_ns / r.connected.max(1) as f64
        );
        points.push(point);
    }
    // Clients first, and their FINs acknowledged before the servers close:
    // a client socket that gets the server's FIN with that ACK waits in
    // FIN_WAIT2 for tcp_fin_timeout (60 s) before it closes.
    let before_close = http_get(e.get().addr, "/metrics")?.1;
    for c in clients {
        c.finish()?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut accepted = 0;
    for server in servers {
        accepted += serde_json::from_str::<ServeReport>(server.finish()?.trim())?.accepted;
    }
    std::thread::sleep(Duration::from_secs(1));
    let (_, last) = http_get(e.get().addr, "/metrics")?;
    let life = |dir: &str, labels: &[&str]| {
        let want: Vec<&str> = labels.iter().copied().chain([dir]).collect();
        metric(&last, "pmoas_tcp_connection_duration_seconds_count", &want)
            - metric(&first_page, "pmoas_tcp_connection_duration_seconds_count", &want)
    };
    let lifetimes = (life("direction=\"outbound\"", &cli), life("direction=\"inbound\"", &srv));
    let tracked_after = tracked_sockets(e.get());
    let close_lost = lost_by_reason(&before_close, &last);
    let states = cp.ns.tcp_states()?;
    ensure!(accepted == open, "the servers accepted {accepted} of {open}");
    // Sockets still tracked: wait out tcp_fin_timeout (60 s) to tell
    // closes that come late from ones never seen.
    let t0 = Instant::now();
    let mut late = None;
    if tracked_after > 0 {
        eprintln!("pmoas-bench: scale: {tracked_after} sockets still tracked after the close ({states:?}); waiting");
        while tracked_sockets(e.get()) > 0 && t0.elapsed() < Duration::from_secs(65) {
            std::thread::sleep(Duration::from_secs(5));
        }
        let (_, page) = http_get(e.get().addr, "/metrics")?;
        let outbound = [cli[0], cli[1], "direction=\"outbound\""];
        let name = "pmoas_tcp_connection_duration_seconds_count";
        late = Some(LateClose {
            waited_seconds: t0.elapsed().as_secs_f64(),
            still_tracked: tracked_sockets(e.get()),
            outbound_lifetimes: metric(&page, name, &outbound) - metric(&first_page, name, &outbound),
            lost_since_close: lost_by_reason(&before_close, &page),
        });
    }
    Ok(ConnArm { points, lifetimes, tracked_after, closed: open, close_lost, states, late })
}

struct RatePoint {
    target: u64,
    r: ConnReport,
    connects: f64,
    accepts: f64,
    lost: Vec<(String, f64)>,
    socket_ns: f64,
    cgroup_ns: f64,
    exporter_pct: f64,
    busy_pct: f64,
    cpus: f64,
    /// The window, the client tool's start and exit included.
    wall: f64,
    programs: Vec<(String, f64, f64)>,
}

impl RatePoint {
    fn rate(&self) -> f64 {
        self.r.connected as f64 / self.r.seconds.max(1e-9)
    }
    fn socket_per_conn(&self) -> f64 {
        self.socket_ns / self.r.connected.max(1) as f64
    }
    fn cgroup_per_conn(&self) -> f64 {
        self.cgroup_ns / self.r.connected.max(1) as f64
    }
    /// CPU the whole machine spent per connection, us.
    fn machine_us(&self) -> f64 {
        self.busy_pct / 100.0 * self.cpus * self.wall / self.r.connected.max(1) as f64 * 1e6
    }

    /// The programs' run time, % of one core.
    fn ebpf_pct(&self) -> f64 {
        (self.socket_ns + self.cgroup_ns) / 1e9 / self.r.seconds * 100.0
    }
}

fn rate_curve(o: &Opts, cp: &ConnPod, rates: &[u64], seconds: u64) -> Result<Vec<RatePoint>> {
    let (e, _) = start_exporter(o, &[])?;
    let uid = format!("pod=\"{}\"", cp.pod.uid);
    let t0 = Instant::now();
    while metric(&http_get(e.get().addr, "/metrics")?.1, "pmoas_container_info", &[&uid]) < 2.0 {
        ensure!(t0.elapsed() < Duration::from_secs(20), "the connection pod's containers not known in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = cp.server(cp.port(0), LISTENERS, false)?;
    let (srv, cli) = (cp.labels(0), cp.labels(1));
    let srv: Vec<&str> = srv.iter().map(String::as_str).collect();
    let cli: Vec<&str> = cli.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for &target in rates {
        let (_, before) = http_get(e.get().addr, "/metrics")?;
        let stats = BpfStats::on();
        let (cpu0, idle0, t) = (e.get().cpu_seconds(), machine_idle(), Instant::now());
        let r = cp.churn(target, seconds)?;
        let (cpu, idle, wall) = (e.get().cpu_seconds() - cpu0, machine_idle() - idle0, t.elapsed().as_secs_f64());
        let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        drop(stats);
        std::thread::sleep(Duration::from_millis(300));
        let (_, after) = http_get(e.get().addr, "/metrics")?;
        let d = |name: &str, want: &[&str]| metric(&after, name, want) - metric(&before, name, want);
        let p = RatePoint {
            target,
            connects: d("pmoas_tcp_connects_total", &cli),
            accepts: d("pmoas_tcp_accepts_total", &srv),
            lost: lost_by_reason(&before, &after),
            socket_ns: bpf_delta(&before, &after, "socket").0,
            cgroup_ns: bpf_delta(&before, &after, "cgroup").0,
            exporter_pct: cpu / wall * 100.0,
            busy_pct: (1.0 - idle / (wall * cpus)).max(0.0) * 100.0,
            cpus,
            wall,
            programs: program_deltas(&before, &after, "collector=\"socket\""),
            r,
        };
        eprintln!(
            "pmoas-bench: scale: rate {target}/s: {:.0}/s achieved, {} connected, {} connects, {} accepts, \
             {:.0} + {:.0} ns eBPF per connection, lost {}",
            p.rate(),
            p.r.connected,
            p.connects,
            p.accepts,
            p.socket_per_conn(),
            p.cgroup_per_conn(),
            lost_text(&p.lost)
        );
        out.push(p);
        // Let TIME_WAIT reuse catch up between windows.
        std::thread::sleep(Duration::from_secs(1));
    }
    server.finish()?;
    Ok(out)
}

fn list(o: &Opts, key: &str, default: &[u64]) -> Result<Vec<u64>> {
    match o.value(key) {
        None => Ok(default.to_vec()),
        Some(v) => v.split(',').map(|s| s.trim().parse().with_context(|| format!("{key} {v}"))).collect(),
    }
}

pub fn run(o: &Opts) -> Result<()> {
    let pod_points = list(o, "--pods", &POD_POINTS)?;
    let conn_points = list(o, "--open", &CONN_POINTS)?;
    let rate_points = list(o, "--rates", &RATE_POINTS)?;
    let rate_seconds = o.value("--rate-seconds").map(str::parse).transpose()?.unwrap_or(6);
    ensure!(
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "0"),
        "kernel.bpf_stats_enabled is already on: someone else is measuring"
    );
    let t0 = Instant::now();
    let pods = pods_curve(o, &pod_points)?;
    let cp = ConnPod::new(o)?;
    let default_arm = conn_arm(o, &cp, None, &conn_points)?;
    let raised_arm = conn_arm(o, &cp, Some(RAISED), &conn_points)?;
    let rates = rate_curve(o, &cp, &rate_points, rate_seconds)?;
    drop(cp);
    let took = t0.elapsed();

    let root = o.out.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let plots = root.join("bench/plots");
    std::fs::create_dir_all(&plots)?;
    std::fs::write(plots.join("scale-pods.svg"), pods_svg(&pods))?;
    std::fs::write(plots.join("scale-connections.svg"), conns_svg(&default_arm, &raised_arm))?;
    std::fs::write(plots.join("scale-rate.svg"), rate_svg(&rates))?;
    let report = render(o, &pods, &default_arm, &raised_arm, &rates, rate_seconds, took);
    write_section(&o.out, "scale", &report)?;
    println!("{report}");
    Ok(())
}

fn mib(b: f64) -> f64 {
    b / 1048576.0
}

fn pods_svg(c: &PodCurve) -> String {
    let pts = |f: &dyn Fn(&PodPoint) -> f64| c.points.iter().map(|p| (p.pods as f64, f(p))).collect::<Vec<_>>();
    let panels = vec![
        Panel::new(
            "exporter memory",
            "pods (3 containers each)",
            "MiB",
            false,
            vec![
                Series::new("RSS after the scrapes", pts(&|p| p.c.rss)),
                Series::new("peak during the scrapes", pts(&|p| p.c.peak)),
                Series::new("peak at start-up", pts(&|p| p.c.startup_peak)),
            ],
        )
        .target(40e6 / 1048576.0, "target 40 MB"),
        Panel::new(
            "/metrics time and CPU",
            "pods (3 containers each)",
            "ms",
            false,
            vec![
                Series::new("request time, median", pts(&|p| p.c.median_ms())),
                Series::new("cgroup collector, median", pts(&|p| median(&p.c.cgroup_ms))),
                Series::new("CPU per scrape", pts(&|p| p.c.scrape_cpu_ms)),
                Series::new("request time, cgroupfs read in the background", pts(&|p| p.background.median_ms())),
            ],
        )
        .target(50.0, "target 50 ms"),
        Panel::new(
            "/metrics series",
            "pods (3 containers each)",
            "series",
            false,
            vec![Series::new("", pts(&|p| p.c.series as f64))],
        ),
        Panel::new(
            "/metrics page size",
            "pods (3 containers each)",
            "KiB",
            false,
            vec![Series::new("", pts(&|p| p.c.bytes as f64 / 1024.0))],
        ),
        Panel::new(
            "kernel map memory (socket + cgroup)",
            "pods (3 containers each)",
            "MiB",
            false,
            vec![Series::new("", pts(&|p| p.c.map_mib()))],
        ),
        Panel::new(
            "exporter CPU without scrapes",
            "pods (3 containers each)",
            "% of a core",
            false,
            vec![Series::new("", pts(&|p| p.c.idle_pct))],
        ),
    ];
    plot::render("Scale: pods (lite pods, default collectors socket + cgroup)", &panels, 2)
}

fn conns_svg(d: &ConnArm, r: &ConnArm) -> String {
    let pts =
        |a: &ConnArm, f: &dyn Fn(&ConnPoint) -> f64| a.points.iter().map(|p| (p.open as f64, f(p))).collect::<Vec<_>>();
    let both = |f: &dyn Fn(&ConnPoint) -> f64| {
        vec![Series::new("max tracked 65,536 (default)", pts(d, f)), Series::new("max tracked 262,144", pts(r, f))]
    };
    let panels = vec![
        Panel::new("exporter RSS", "open connections", "MiB", true, both(&|p| p.c.rss)),
        Panel::new("kernel map memory (socket + cgroup)", "open connections", "MiB", true, both(&|p| p.c.map_mib())),
        Panel::new("/metrics time, median", "open connections", "ms", true, both(&|p| p.c.median_ms())),
        Panel::new(
            "socket programs' run time per connection opened",
            "open connections",
            "ns",
            true,
            both(&|p| p.socket_ns / p.opened.max(1) as f64),
        ),
        Panel::new(
            "sockets in socket_conns",
            "open connections",
            "sockets (2 per connection)",
            true,
            both(&|p| p.tracked as f64),
        ),
        Panel::new(
            "lost events (all reasons), this step",
            "open connections",
            "events",
            true,
            both(&|p| p.lost.iter().map(|(_, n)| n).sum::<f64>() + 0.0),
        ),
    ];
    plot::render("Scale: open TCP connections (both ends on this node), default collectors", &panels, 2)
}

fn rate_svg(rates: &[RatePoint]) -> String {
    let pts = |f: &dyn Fn(&RatePoint) -> f64| rates.iter().map(|p| (p.rate(), f(p))).collect::<Vec<_>>();
    let panels = vec![
        Panel::new(
            "eBPF run time per connection",
            "connections per second (achieved)",
            "ns",
            false,
            vec![
                Series::new("socket programs", pts(&RatePoint::socket_per_conn)),
                Series::new("cgroup programs (cgroup_skb)", pts(&RatePoint::cgroup_per_conn)),
            ],
        ),
        Panel::new(
            "CPU",
            "connections per second (achieved)",
            "% of a core",
            false,
            vec![
                Series::new("eBPF run time (in the traced tasks)", pts(&RatePoint::ebpf_pct)),
                Series::new("exporter process", pts(&|p| p.exporter_pct)),
            ],
        ),
        Panel::new(
            "lost events",
            "connections per second (achieved)",
            "events per window",
            false,
            vec![Series::new("all reasons", pts(&|p| p.lost.iter().map(|(_, n)| n).sum::<f64>() + 0.0))],
        ),
        Panel::new(
            "machine CPU per connection (everything)",
            "connections per second (achieved)",
            "us",
            false,
            vec![Series::new("", pts(&RatePoint::machine_us))],
        ),
    ];
    plot::render("Scale: connection rate (short connections), default collectors", &panels, 2)
}

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

#[allow(clippy::too_many_arguments)]
fn render(
    o: &Opts,
    pods: &PodCurve,
    d: &ConnArm,
    r: &ConnArm,
    rates: &[RatePoint],
    rate_seconds: u64,
    took: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Scale curves: pods, open connections, connection rate\n");
    let extra = ["--pods", "--open", "--rates", "--rate-seconds"]
        .iter()
        .filter_map(|k| o.value(k).map(|v| format!(" {k} {v}")))
        .collect::<String>();
    let _ = writeln!(
        s,
        "Measured {} in one run of {:.0} s. Reproduce (as root): `scripts/bench.sh scale{extra}`. The exporter (release \
         build) runs its default collectors, socket and cgroup, with default settings unless a row says otherwise; \
         discovery from the cgroup tree only (no Kubernetes API or container engine on this machine, so pods are \
         named by UID). At each point: {} s without scrapes for the idle CPU, then {SCRAPES} scrapes of /metrics one \
         every {} ms for the request time (median), the CPU per scrape (over idle) and the page.\n",
        machine(),
        took.as_secs_f64(),
        IDLE.as_secs(),
        SCRAPE_GAP.as_millis()
    );

    // Pods.
    let _ = writeln!(s, "### Pods\n");
    let _ = writeln!(
        s,
        "Lite pods of 3 containers (kubelet-layout cgroups in cgroup v2 and the v1 hierarchies, an idle process \
         named `envoy`, `app`, `worker` in each; no network of their own), created before a fresh exporter starts \
         at each point.\n\n![pods](bench/plots/scale-pods.svg)\n"
    );
    let _ = writeln!(
        s,
        "| pods | containers | cgroups read per scrape | host cgroups (v2) / processes | start to all containers named | \
         /metrics median / max | cgroup / socket collector, median | page | RSS after the scrapes / peak during them / peak at start-up | \
         CPU idle | CPU per scrape | kernel maps: socket + cgroup | lost events | degraded |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &pods.points {
        let c = &p.c;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} / {} | {:.0} ms | {:.1} / {:.1} ms | {:.1} / {:.2} ms | {} series, {:.0} KiB | \
             {:.1} / {:.1} / {:.1} MiB | {:.2} % of a core | {:.1} ms | {:.2} + {:.2} MiB | {:.0} | {} |",
            p.pods,
            p.containers,
            p.cgroups_read,
            p.host_cgroups,
            p.processes,
            p.seen_ms,
            c.median_ms(),
            percentile(&c.scrape_ms, 1.0),
            median(&c.cgroup_ms),
            median(&c.socket_ms),
            c.series,
            c.bytes as f64 / 1024.0,
            c.rss,
            c.peak,
            c.startup_peak,
            c.idle_pct,
            c.scrape_cpu_ms,
            mib(c.map_socket),
            mib(c.map_cgroup),
            c.lost,
            if c.degraded.is_empty() { "-".to_string() } else { c.degraded.join(", ") }
        );
    }
    let _ = writeln!(
        s,
        "\nThe same pods with `--collector.cgroup.read-interval {READ_INTERVAL}`: a thread of the exporter reads \
         cgroupfs and the pods' interfaces every {READ_INTERVAL}, scrapes serve its last reading (a fresh exporter \
         after the one above). Its CPU is in the idle column now; CPU per scrape is over that.\n\n\
         | pods | /metrics median / max | cgroup collector, median | one read of cgroupfs | RSS after the scrapes / \
         peak during them | CPU idle (reads every {READ_INTERVAL} included) | CPU per scrape |\n|---|---|---|---|---|---|---|"
    );
    for p in &pods.points {
        let b = &p.background;
        let _ = writeln!(
            s,
            "| {} | {:.1} / {:.1} ms | {:.1} ms | {:.1} ms | {:.1} / {:.1} MiB | {:.2} % of a core | {:.1} ms |",
            p.pods,
            b.median_ms(),
            percentile(&b.scrape_ms, 1.0),
            median(&b.cgroup_ms),
            b.read_ms,
            b.rss,
            b.peak,
            b.idle_pct,
            b.scrape_cpu_ms
        );
    }
    let _ = writeln!(
        s,
        "\nCreating the pods took {}; removing all of them {:.1} s.{}\n",
        pods.points.iter().map(|p| format!("{:.1} s to {}", p.create_s, p.pods)).collect::<Vec<_>>().join(", "),
        pods.teardown_s,
        pods.stopped.as_ref().map(|w| format!(" **The curve stopped short: {w}.**")).unwrap_or_default()
    );
    if let Some(last) = pods.points.last() {
        let _ = writeln!(s, "| target | result | met |\n|---|---|---|");
        let _ = writeln!(
            s,
            "| {} pods / {} containers scraped in <= 50 ms (median request) | {:.1} ms | {} |",
            last.pods,
            last.containers,
            last.c.median_ms(),
            yes(last.c.median_ms() <= 50.0)
        );
        let _ = writeln!(
            s,
            "| ... the same, cgroupfs read in the background (`--collector.cgroup.read-interval {READ_INTERVAL}`) | \
             {:.1} ms | {} |",
            last.background.median_ms(),
            yes(last.background.median_ms() <= 50.0)
        );
        let rss = [
            ("steady: after the scrapes", last.c.rss),
            ("peak while scraping", last.c.peak),
            ("peak at start-up (before any scrape)", last.c.startup_peak),
        ];
        for (what, v) in rss {
            let _ = writeln!(
                s,
                "| ... with <= 40 MB RSS, {what} | {v:.1} MiB ({:.1} MB) | {} |",
                v * 1.048576,
                yes(v * 1.048576 <= 40.0)
            );
        }
        let _ = writeln!(s);
    }
    // Open connections.
    let _ = writeln!(s, "### Open connections\n");
    let _ = writeln!(
        s,
        "A lite pod of 2 containers: `pmoas-testbed conn-server --hold` processes in one, each on its own port \
         holding up to {PER_PORT} connections, `pmoas-testbed conn-client --count N` processes in the other, each \
         opening its connections one after another and holding them (a process may not open more than 20,000 files \
         on this machine: the hard limit, without CAP_SYS_RESOURCE to raise it); all in a network namespace of the \
         bench's own (loopback; ephemeral ports 10000-65535, set in that namespace \
         only). Each connection is two sockets on this node. Steps to 1k, 10k, 100k connections open; during each \
         step's opening kernel.bpf_stats_enabled=1 (off again before the costs are measured). One exporter per arm, \
         started before the first connection. Counts are the deltas of the step at the client's and the server's \
         container.\n\n![open connections](bench/plots/scale-connections.svg)\n"
    );
    let _ = writeln!(
        s,
        "| max tracked | open connections | this step: opened in | connects / accepts counted (opened) | lost events this step | \
         sockets in socket_conns | socket eBPF per connection (runs) | cgroup eBPF per connection | RSS / peak | CPU idle | \
         CPU per scrape | /metrics median | kernel maps: socket + cgroup |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in d.points.iter().chain(&r.points) {
        let n = p.opened.max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} s | {:.0} / {:.0} ({}{}) | {} | {} | {:.0} ns ({:.1}) | {:.0} ns | {:.1} / {:.1} MiB | \
             {:.2} % | {:.1} ms | {:.2} ms | {:.1} + {:.2} MiB |",
            p.max_tracked,
            p.open,
            p.open_s,
            p.connects,
            p.accepts,
            p.opened,
            if p.failed > 0 { format!(", {} failed", p.failed) } else { String::new() },
            lost_text(&p.lost),
            p.tracked,
            p.socket_ns / n,
            p.socket_runs / n,
            p.cgroup_ns / n,
            p.c.rss,
            p.c.peak,
            p.c.idle_pct,
            p.c.scrape_cpu_ms,
            p.c.median_ms(),
            mib(p.c.map_socket),
            mib(p.c.map_cgroup)
        );
    }
    for (name, a) in [("65536", d), ("262144", r)] {
        let _ = writeln!(
            s,
            "\nMax tracked {name}: after all {} connections closed, lifetimes counted: {:.0} outbound, {:.0} inbound; \
             lost events while closing: {}; sockets left in socket_conns: {}.",
            a.closed,
            a.lifetimes.0,
            a.lifetimes.1,
            lost_text(&a.close_lost),
            a.tracked_after
        );
        if let Some(LateClose {
            waited_seconds: waited,
            still_tracked: left,
            outbound_lifetimes: out,
            lost_since_close: lost,
        }) = &a.late
        {
            let states: Vec<String> = a.states.iter().map(|(st, n)| format!("{n} {st}")).collect();
            let _ = writeln!(
                s,
                "Sockets in the namespace then: {}. {waited:.0} s later: {left} sockets in socket_conns, {out:.0} outbound \
                 lifetimes counted, lost events since the close: {}.",
                states.join(", "),
                lost_text(lost)
            );
        }
    }
    if let Some(p) = r.points.last() {
        let lost: f64 = r.points.iter().flat_map(|p| p.lost.iter().map(|(_, n)| n)).sum::<f64>() + 0.0;
        let exact = r.points.iter().all(|p| p.connects == p.opened as f64 && p.accepts == p.opened as f64);
        let _ = writeln!(
            s,
            "\n| target | result | met |\n|---|---|---|\n| {} open connections tracked with 0 lost counts (max tracked {RAISED}) | \
             {} sockets tracked, connects and accepts exact at every step: {}, lost events: {lost:.0} | {} |",
            p.open,
            p.tracked,
            yes(exact),
            yes(exact && lost == 0.0)
        );
        let total: f64 = p.programs.iter().map(|(_, ns, _)| ns).sum();
        let _ = writeln!(
            s,
            "\nSocket programs while the last step opened {} connections (max tracked {RAISED}): runs per connection, \
             run time per run.\n\n| program | runs per connection | ns per run | share |\n|---|---|---|---|",
            p.opened
        );
        for (prog, ns, runs) in &p.programs {
            let _ = writeln!(
                s,
                "| `{prog}` | {:.2} | {:.0} | {:.1} % |",
                runs / p.opened.max(1) as f64,
                ns / runs.max(1.0),
                ns / total.max(1.0) * 100.0
            );
        }
    }

    // Rate.
    let _ = writeln!(s, "\n### Connection rate\n");
    let _ = writeln!(
        s,
        "The same pod and namespace (TIME_WAIT reuse on, in that namespace only): `pmoas-testbed conn-client --rate R \
         --seconds {rate_seconds} --threads {LISTENERS} --send 64` connects, sends 64 bytes, closes its side, reads to \
         EOF and closes; the server reads to EOF and closes. One exporter for the curve, not scraped during a window; \
         kernel.bpf_stats_enabled=1 during the windows. Rate 0 is as fast as the machine goes. Machine busy is wall \
         time x CPUs less the idle time the kernel measured (the tick-sampled busy fields of /proc/stat miss paced \
         bursts); machine CPU per connection is that over the connections (client, server, kernel, eBPF, \
         exporter).\n\n\
         ![connection rate](bench/plots/scale-rate.svg)\n"
    );
    let _ = writeln!(
        s,
        "| target /s | achieved /s | connects / accepts counted (tool: connected, failed) | lost events | \
         socket eBPF per connection | cgroup eBPF per connection | eBPF, % of a core | exporter CPU, % of a core | \
         machine busy, % of 2 CPUs | machine CPU per connection |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in rates {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} / {:.0} ({}, {}) | {} | {:.0} ns | {:.0} ns | {:.2} | {:.3} | {:.1} | {:.1} us |",
            if p.target == 0 { "max".to_string() } else { p.target.to_string() },
            p.rate(),
            p.connects,
            p.accepts,
            p.r.connected,
            p.r.failed,
            lost_text(&p.lost),
            p.socket_per_conn(),
            p.cgroup_per_conn(),
            p.ebpf_pct(),
            p.exporter_pct,
            p.busy_pct,
            p.machine_us()
        );
    }
    if let Some(p) = rates.iter().max_by(|a, b| a.rate().total_cmp(&b.rate())) {
        let n = p.r.connected.max(1) as f64;
        let _ = writeln!(
            s,
            "\nSocket programs at the highest rate ({:.0}/s): runs per connection, run time per run.\n\n\
             | program | runs per connection | ns per run |\n|---|---|---|",
            p.rate()
        );
        for (prog, ns, runs) in &p.programs {
            let _ = writeln!(s, "| `{prog}` | {:.2} | {:.0} |", runs / n, ns / runs.max(1.0));
        }
    }
    s
}
