//! The sockops collector's benchmark (issue 12): socket redirect between
//! the sockets of one pod, against the plain TCP/IP stack, side by side in
//! one run.
//!
//! - (a) Request/response over the in-pod hop: a ping-pong (this binary's
//!   hidden `pp-server` / `pp-client` modes: blocking sockets, TCP_NODELAY,
//!   exact-size messages, one clock read per round trip) between the app
//!   container (client) and the sidecar container (server) on 127.0.0.1 of
//!   one testbed pod, 64 B, 4 KiB and 64 KiB, client and server pinned to
//!   one CPU, pinned to two, and unpinned; plus two paths that are never accelerated (pod IP
//!   from the host into the sidecar, and loopback of the host between two
//!   processes of no pod), to see what the programs cost traffic they do not
//!   speed up. Three arms rotate per round: no exporter, the exporter
//!   without sockops (`--collectors socket`), the exporter with it
//!   (`--collectors socket --with-sockops`); only acceleration differs
//!   between the last two. Every connection is opened after the arm's
//!   exporter attached its programs and discovery put the pod's cgroups in
//!   the allow-map, and each run is checked: with sockops the pod's
//!   `pmoas_sockops_redirected_messages_total` grows by every message sent
//!   and the pod's `lo` carries (almost) no packet; without, `lo` carries
//!   them all. A run that does not match fails the benchmark.
//! - (b) wrk keep-alive through Envoy into nginx, the same three arms:
//!   Envoy's upstream connections to nginx are in-pod and accelerated.
//!   nginx closes idle keep-alive connections after 1 s and the windows are
//!   apart by more than that, so each window's upstream connections are its
//!   own (a connection opened before the programs were attached is never
//!   accelerated, and one opened while they were stays accelerated after).
//! - (c) The programs' own run time (kernel.bpf_stats_enabled, on only
//!   during these windows and restored after) per program on each of those
//!   loads: on accelerated sockets, on sockets of the watched pod that are
//!   not accelerated, on sockets of no pod, and through Envoy.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pmoas_testbed::{Place, Pod, PodOptions};

use crate::Opts;
use crate::common::*;

/// Timed part of one ping-pong run.
const PP_SECONDS: f64 = 0.5;
/// Ping-pong rounds per `--rounds`: short runs, alternated often, so that
/// the slow spells of this VM's CPUs (seconds long) hit every arm alike.
const PP_ROUNDS_PER_ROUND: usize = 2;
/// Round trips before the timed part.
const PP_WARMUP: u32 = 500;
/// The CPU pinned runs share (as in docs/sockops-design.md); the server's
/// CPU when they are pinned apart.
const PIN_CPU: usize = 1;
const OTHER_CPU: usize = 0;
/// Idle time between wrk windows: nginx closes Envoy's idle upstream
/// connections after 1 s (`keepalive_timeout 1s`), so no window reuses
/// another's.
const WRK_GAP: Duration = Duration::from_millis(1600);
const LOAD_SCRAPE: Duration = Duration::from_secs(5);
const SOCKOPS: &str = "collector=\"sockops\"";
const PROGRAMS: [&str; 4] = ["sockops_redirect", "sockops_recv_length", "sockops_established", "sockops_syn_egress"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// App container -> sidecar container on 127.0.0.1 of the pod.
    InPod,
    /// Host (client cgroup) -> the sidecar on the pod IP: one end in the
    /// watched pod, never accelerated (the SYN leaves through the veth).
    OffPod,
    /// Host loopback, both ends in the client cgroup: sockets of no pod.
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pin {
    /// Client and server on one CPU: a wake-up is a context switch.
    One,
    /// Client and server on the two CPUs: every round trip wakes the other
    /// CPU twice.
    Apart,
    /// Wherever the scheduler puts them.
    Free,
}

impl Pin {
    fn name(self) -> &'static str {
        match self {
            Pin::One => "one CPU",
            Pin::Apart => "two CPUs",
            Pin::Free => "unpinned",
        }
    }
    /// (server's, client's) CPU.
    fn cpus(self) -> (Option<usize>, Option<usize>) {
        match self {
            Pin::One => (Some(PIN_CPU), Some(PIN_CPU)),
            Pin::Apart => (Some(OTHER_CPU), Some(PIN_CPU)),
            Pin::Free => (None, None),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Case {
    route: Route,
    size: usize,
    pin: Pin,
}

impl Case {
    fn name(&self) -> String {
        let route = match self.route {
            Route::InPod => "in-pod",
            Route::OffPod => "host -> pod IP (not accelerated)",
            Route::Host => "host loopback, no pod (not accelerated)",
        };
        format!("{route}, {}, {}", size_name(self.size), self.pin.name())
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 { format!("{} KiB", size / 1024) } else { format!("{size} B") }
}

const CASES: [Case; 11] = [
    Case { route: Route::InPod, size: 64, pin: Pin::One },
    Case { route: Route::InPod, size: 4096, pin: Pin::One },
    Case { route: Route::InPod, size: 65536, pin: Pin::One },
    Case { route: Route::InPod, size: 64, pin: Pin::Apart },
    Case { route: Route::InPod, size: 4096, pin: Pin::Apart },
    Case { route: Route::InPod, size: 65536, pin: Pin::Apart },
    Case { route: Route::InPod, size: 64, pin: Pin::Free },
    Case { route: Route::InPod, size: 4096, pin: Pin::Free },
    Case { route: Route::InPod, size: 65536, pin: Pin::Free },
    Case { route: Route::OffPod, size: 4096, pin: Pin::One },
    Case { route: Route::Host, size: 4096, pin: Pin::One },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    None,
    /// `--collectors socket`: the exporter, no acceleration.
    Socket,
    /// `--collectors socket --with-sockops`.
    Sockops,
}

const ARMS: [Arm; 3] = [Arm::None, Arm::Socket, Arm::Sockops];

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::None => "no exporter",
            Arm::Socket => "exporter, no sockops",
            Arm::Sockops => "exporter + sockops",
        }
    }
}

/// The arm's exporter, once it is ready for the pod: discovery knows both
/// containers and (sockops) the four programs are attached; then 300 ms for
/// the allow-map, which is written right after discovery publishes.
fn start_exporter(o: &Opts, pod: &Pod, arm: Arm) -> Result<Option<Running>> {
    let mut args = vec!["--collectors", "socket", "--target.pod", &pod.state.uid];
    match arm {
        Arm::None => return Ok(None),
        Arm::Socket => {}
        Arm::Sockops => args.push("--with-sockops"),
    }
    let sidecar = format!("container=\"{}\"", &pod.state.sidecar_id[..12]);
    let app = format!("container=\"{}\"", &pod.state.app_id[..12]);
    let (e, _) = Exporter::start_until(&o.exporter, &args, |body| {
        metric(body, "pmoas_container_info", &[&sidecar]) > 0.0
            && metric(body, "pmoas_container_info", &[&app]) > 0.0
            && (arm != Arm::Sockops
                || PROGRAMS.iter().all(|p| {
                    metric(body, "pmoas_ebpf_program_attached", &[SOCKOPS, &format!("program=\"{p}\"")]) == 1.0
                }))
    })
    .with_context(|| {
        format!("{}: the pod's containers not discovered or the sockops programs not all attached", arm.name())
    })?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(Running(Some(e))))
}

/// Packets the pod's network namespace sent on `lo` so far.
fn pod_lo_packets(pod: &Pod) -> Result<f64> {
    let pid = pod.pids().first().map(|p| p.1).context("no process in the pod")?;
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:")).context("no lo in the pod")?;
    // lo: rx_bytes rx_packets errs drop fifo frame compressed multicast tx_bytes tx_packets ...
    let f: Vec<&str> = line.split_once(':').map(|x| x.1).unwrap_or("").split_whitespace().collect();
    f.get(9).and_then(|v| v.parse().ok()).context("lo tx packets")
}

/// The pod's redirected messages and misses (all its containers) on a page.
fn redirected(page: &str, pod: &Pod) -> (f64, f64) {
    let want = format!("pod=\"{}\"", pod.state.uid);
    (
        metric(page, "pmoas_sockops_redirected_messages_total", &[&want]),
        metric(page, "pmoas_sockops_redirect_misses_total", &[&want]),
    )
}

fn page(e: Option<&Running>) -> Result<String> {
    Ok(match e {
        Some(e) => http_get(e.get().addr, "/metrics")?.1,
        None => String::new(),
    })
}

/// A child killed (by its PID) if it is still running when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What one ping-pong run measured.
#[derive(Clone, Debug)]
struct Pp {
    /// Timed round trips and their wall time.
    round_trips: f64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    /// Client + server user+system CPU over the timed part, seconds.
    cpu: f64,
    /// Of it, system time.
    sys: f64,
    /// The whole machine's busy CPU over the timed part, seconds.
    busy: f64,
    /// All round trips of the connection (warm-up included), and the
    /// messages of the connection (the 8-byte header, then two per round
    /// trip).
    all_round_trips: f64,
    /// Packets on the pod's lo during the run, redirected messages and
    /// misses of the pod (None without sockops).
    lo_packets: f64,
    redirected: Option<(f64, f64)>,
    /// Where the two processes ran (unpinned runs differ).
    placement: Placement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Both ran at least 90 % of their messages on the same CPU.
    OneCpu,
    /// Each at least 90 % on its own CPU, not the same.
    TwoCpus,
    Mixed,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::OneCpu => "one CPU",
            Placement::TwoCpus => "two CPUs",
            Placement::Mixed => "mixed",
        }
    }

    /// From the client's and the server's messages per CPU.
    fn of(client: &serde_json::Value, server: &serde_json::Value) -> Placement {
        let most = |v: &serde_json::Value| {
            let counts: Vec<f64> =
                v["cpus"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
            let total: f64 = counts.iter().sum();
            counts
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, n)| (i, n / total.max(1.0)))
                .unwrap_or((0, 0.0))
        };
        match (most(client), most(server)) {
            ((c, cf), (s, sf)) if cf >= 0.9 && sf >= 0.9 => {
                if c == s {
                    Placement::OneCpu
                } else {
                    Placement::TwoCpus
                }
            }
            _ => Placement::Mixed,
        }
    }
}

impl Pp {
    fn rate(&self) -> f64 {
        self.round_trips / self.seconds
    }
    fn cpu_us_per_rt(&self) -> f64 {
        self.cpu / self.round_trips * 1e6
    }
    fn busy_us_per_rt(&self) -> f64 {
        self.busy / self.round_trips * 1e6
    }
    fn messages(&self) -> f64 {
        1.0 + 2.0 * self.all_round_trips
    }
}

fn json_f64(v: &serde_json::Value, k: &str) -> Result<f64> {
    v[k].as_f64().with_context(|| format!("no {k} in {v}"))
}

/// One ping-pong run of `case`: the server first (it prints its port), then
/// the client, which exits after `PP_SECONDS` of round trips; checked
/// against the arm (see the module's documentation).
fn pingpong(pod: &Pod, case: Case, arm: Arm, e: Option<&Running>) -> Result<Pp> {
    let exe = std::env::current_exe()?;
    let (server_place, listen, client_place) = match case.route {
        Route::InPod => (Place::Sidecar, "127.0.0.1:0", Place::App),
        Route::OffPod => (Place::Sidecar, "0.0.0.0:0", Place::Client),
        Route::Host => (Place::Client, "127.0.0.1:0", Place::Client),
    };
    let cpu_arg = |cpu: Option<usize>| cpu.map(|c| vec!["--cpu".to_string(), c.to_string()]).unwrap_or_default();
    let (server_cpu, client_cpu) = case.pin.cpus();
    let before = page(e)?;
    let lo0 = pod_lo_packets(pod)?;
    let mut server = Kill(
        pod.command(server_place, &exe)
            .args(["pp-server", "--listen", listen])
            .args(cpu_arg(server_cpu))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the ping-pong server")?,
    );
    let mut out = BufReader::new(server.0.stdout.take().context("server stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let port: u16 = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("ping-pong server did not start: {line:?}"))?;
    let ip = match case.route {
        Route::OffPod => pod.state.pod_ip.to_string(),
        _ => "127.0.0.1".into(),
    };
    let client = pod
        .command(client_place, &exe)
        .args(["pp-client", "--connect", &format!("{ip}:{port}"), "--size", &case.size.to_string()])
        .args(["--seconds", &PP_SECONDS.to_string(), "--warmup", &PP_WARMUP.to_string()])
        .args(cpu_arg(client_cpu))
        .output()
        .context("running the ping-pong client")?;
    if !client.status.success() {
        bail!("ping-pong client failed: {}", String::from_utf8_lossy(&client.stderr));
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest)?;
    let status = server.0.wait()?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut s) = server.0.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        bail!("ping-pong server failed: {err}");
    }
    let c: serde_json::Value = serde_json::from_slice(&client.stdout).context("client report")?;
    let s: serde_json::Value = serde_json::from_str(rest.trim()).context("server report")?;
    let lo_packets = pod_lo_packets(pod)? - lo0;
    let after = page(e)?;
    let pp = Pp {
        round_trips: json_f64(&c, "round_trips")?,
        seconds: json_f64(&c, "seconds")?,
        p50_us: json_f64(&c, "p50_us")?,
        p99_us: json_f64(&c, "p99_us")?,
        cpu: json_f64(&c, "cpu_s")? + json_f64(&s, "cpu_s")?,
        sys: json_f64(&c, "sys_s")? + json_f64(&s, "sys_s")?,
        busy: json_f64(&c, "busy_s")?,
        all_round_trips: json_f64(&c, "all_round_trips")?,
        lo_packets,
        redirected: (arm == Arm::Sockops).then(|| {
            let (m0, x0) = redirected(&before, pod);
            let (m1, x1) = redirected(&after, pod);
            (m1 - m0, x1 - x0)
        }),
        placement: Placement::of(&c, &s),
    };
    ensure!(
        json_f64(&s, "echoed")? == pp.all_round_trips,
        "the server echoed {} of {} round trips",
        s["echoed"],
        pp.all_round_trips
    );
    check_pingpong(case, arm, &pp)?;
    Ok(pp)
}

/// Fails loudly if a run was not what its arm says: accelerated with
/// sockops on the in-pod route (every message redirected, lo idle), plain
/// TCP otherwise.
fn check_pingpong(case: Case, arm: Arm, pp: &Pp) -> Result<()> {
    let what = format!("{} ({})", case.name(), arm.name());
    let redirected = pp.redirected.map_or(0.0, |r| r.0);
    if case.route == Route::InPod {
        if arm == Arm::Sockops {
            ensure!(
                redirected >= pp.messages(),
                "{what}: NOT ACCELERATED: the pod's redirected messages grew by {redirected}, the connection sent {} \
                 messages (misses {:?}, lo packets {})",
                pp.messages(),
                pp.redirected.map(|r| r.1),
                pp.lo_packets
            );
            ensure!(
                pp.lo_packets < 0.01 * pp.all_round_trips,
                "{what}: {} packets on the pod's lo for {} round trips: not accelerated",
                pp.lo_packets,
                pp.all_round_trips
            );
        } else {
            ensure!(
                pp.lo_packets >= pp.all_round_trips,
                "{what}: only {} packets on the pod's lo for {} round trips: accelerated without sockops?",
                pp.lo_packets,
                pp.all_round_trips
            );
        }
    } else {
        ensure!(redirected == 0.0, "{what}: {redirected} messages redirected on a route that must not be");
    }
    Ok(())
}

/// One wrk window (keep-alive through Envoy into nginx) of an arm.
struct WrkWindow {
    w: LoadWindow,
    lo_packets: f64,
    /// Redirected messages and misses of the pod (sockops arm).
    redirected: Option<(f64, f64)>,
}

impl WrkWindow {
    fn requests(&self) -> f64 {
        self.w.wrk.requests_per_sec * self.w.wall
    }
    fn busy_us_per_request(&self) -> f64 {
        self.w.busy / self.requests().max(1.0) * 1e6
    }
}

fn wrk_window(pod: &Pod, o: &Opts, arm: Arm, e: Option<&Running>, last_end: &mut Instant) -> Result<WrkWindow> {
    let idle = last_end.elapsed();
    if idle < WRK_GAP {
        std::thread::sleep(WRK_GAP - idle);
    }
    let lo0 = pod_lo_packets(pod)?;
    let w = load_window(pod, o, e.map(Running::get), LOAD_SCRAPE)?;
    *last_end = Instant::now();
    let lo_packets = pod_lo_packets(pod)? - lo0;
    let redirected = (arm == Arm::Sockops).then(|| {
        let (m0, x0) = redirected(&w.before, pod);
        let (m1, x1) = redirected(&w.after, pod);
        (m1 - m0, x1 - x0)
    });
    let ww = WrkWindow { w, lo_packets, redirected };
    let requests = ww.requests();
    let msgs = ww.redirected.map_or(0.0, |r| r.0);
    ensure!(ww.w.wrk.errors == 0, "{}: wrk saw {} errors", arm.name(), ww.w.wrk.errors);
    if arm == Arm::Sockops {
        // Envoy's request to nginx and nginx's answer: two messages a request.
        ensure!(
            msgs >= 1.8 * requests,
            "{}: NOT ACCELERATED: {msgs} messages redirected for {requests:.0} requests (lo packets {})",
            arm.name(),
            ww.lo_packets
        );
    } else {
        ensure!(
            ww.lo_packets >= 1.5 * requests,
            "{}: only {} packets on the pod's lo for {requests:.0} requests: accelerated without sockops?",
            arm.name(),
            ww.lo_packets
        );
    }
    Ok(ww)
}

/// Per program of the sockops collector: run time (ns) and runs over a
/// window, in [`PROGRAMS`] order.
type Programs = Vec<(f64, f64)>;

fn programs(before: &str, after: &str) -> Programs {
    let d = program_deltas(before, after, SOCKOPS);
    PROGRAMS
        .iter()
        .map(|p| d.iter().find(|(n, _, _)| n == p).map(|(_, ns, runs)| (*ns, *runs)).unwrap_or((0.0, 0.0)))
        .collect()
}

/// A window of bpf stats: what it ran, the unit of its load (round trips
/// or requests) and how many.
struct StatsWindow {
    name: String,
    unit: &'static str,
    units: f64,
    programs: Programs,
}

/// Restores kernel.bpf_stats_enabled to what it was when dropped.
struct StatsOn(String);

impl StatsOn {
    fn on() -> StatsOn {
        let was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into());
        set_bpf_stats(true);
        StatsOn(was.trim().to_string())
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        set_bpf_stats(self.0 == "1");
    }
}

struct Results {
    /// (round, arm, case index, run).
    pp: Vec<(usize, Arm, usize, Pp)>,
    /// (round, arm, window).
    wrk: Vec<(usize, Arm, WrkWindow)>,
    stats: Vec<StatsWindow>,
    stats_were_on: bool,
}

pub fn run(o: &Opts) -> Result<()> {
    let started = Instant::now();
    let stats_were_on =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").map(|s| s.trim() == "1").unwrap_or(false);
    let pod = Pod::up(&PodOptions { nginx_http_extra: "keepalive_timeout 1s;".into(), ..Default::default() })?;
    eprintln!("pmoas-bench: testbed {} up; warming up", pod.state.name);
    wrk(&pod, o, 3, Connections::KeepAlive, || {})?;
    let mut r = Results { pp: Vec::new(), wrk: Vec::new(), stats: Vec::new(), stats_were_on };

    // (a) ping-pong, arms rotating.
    for round in 0..o.rounds * PP_ROUNDS_PER_ROUND {
        for k in 0..ARMS.len() {
            let arm = ARMS[(round + k) % ARMS.len()];
            let e = start_exporter(o, &pod, arm)?;
            for (i, case) in CASES.iter().enumerate() {
                let pp = pingpong(&pod, *case, arm, e.as_ref())?;
                eprintln!(
                    "pmoas-bench: round {round} {}: {}: p50 {:.1} us, p99 {:.1} us, {:.0} rt/s, {:.2} us CPU/rt, lo {} pkts, redirected {:?}",
                    arm.name(),
                    case.name(),
                    pp.p50_us,
                    pp.p99_us,
                    pp.rate(),
                    pp.cpu_us_per_rt(),
                    pp.lo_packets,
                    pp.redirected
                );
                r.pp.push((round, arm, i, pp));
            }
        }
    }

    eprintln!("pmoas-bench: ping-pong done at {:.0} s", started.elapsed().as_secs_f64());

    // (b) wrk keep-alive through Envoy, arms rotating.
    let mut last_end = Instant::now();
    for round in 0..o.rounds {
        for k in 0..ARMS.len() {
            let arm = ARMS[(round + k) % ARMS.len()];
            let e = start_exporter(o, &pod, arm)?;
            let w = wrk_window(&pod, o, arm, e.as_ref(), &mut last_end)?;
            eprintln!(
                "pmoas-bench: wrk round {round} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} us CPU/request, lo {:.2} pkts/request, redirected {:?}",
                arm.name(),
                w.w.wrk.requests_per_sec,
                w.w.wrk.p50_ms,
                w.w.wrk.p99_ms,
                w.busy_us_per_request(),
                w.lo_packets / w.requests(),
                w.redirected
            );
            r.wrk.push((round, arm, w));
        }
    }

    eprintln!("pmoas-bench: wrk done at {:.0} s", started.elapsed().as_secs_f64());

    // (c) the programs' run time, bpf stats on only here.
    {
        let e = start_exporter(o, &pod, Arm::Sockops)?;
        let _stats = StatsOn::on();
        for case in CASES.iter().filter(|c| c.pin == Pin::One) {
            let before = page(e.as_ref())?;
            let pp = pingpong(&pod, *case, Arm::Sockops, e.as_ref())?;
            let after = page(e.as_ref())?;
            r.stats.push(StatsWindow {
                name: format!("ping-pong {}", case.name()),
                unit: "round trip",
                units: pp.all_round_trips,
                programs: programs(&before, &after),
            });
        }
        let w = wrk_window(&pod, o, Arm::Sockops, e.as_ref(), &mut last_end)?;
        r.stats.push(StatsWindow {
            name: format!("wrk `-t2 -c{}` keep-alive through Envoy", o.connections),
            unit: "request",
            units: w.requests(),
            programs: programs(&w.w.before, &w.w.after),
        });
    }
    pod.down()?;
    eprintln!("pmoas-bench: sockops done in {:.0} s", started.elapsed().as_secs_f64());
    let report = render(o, &r);
    write_section(&o.out, "sockops", &report)?;
    println!("{report}");
    Ok(())
}

/// The hidden ping-pong modes the benchmark runs inside the pod:
/// `pp-server --listen ADDR [--cpu N]` prints `ready PORT`, echoes the
/// messages of one connection and prints its CPU as JSON;
/// `pp-client --connect ADDR --size N --seconds S --warmup W [--cpu N]`
/// prints the round trips' latency percentiles and its CPU as JSON.
pub fn pingpong_main(args: &[String]) -> Result<()> {
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    if let Some(cpu) = get("--cpu") {
        pin(cpu.parse()?)?;
    }
    match args[0].as_str() {
        "pp-server" => pp_server(&get("--listen").context("--listen")?),
        _ => pp_client(
            get("--connect").context("--connect")?.parse()?,
            get("--size").context("--size")?.parse()?,
            get("--seconds").context("--seconds")?.parse()?,
            get("--warmup").context("--warmup")?.parse()?,
        ),
    }
}

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// (user + system, system) CPU seconds of this process so far.
fn cpu_now() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime) + s(ru.ru_stime), s(ru.ru_stime))
}

/// Messages handled per CPU (sched_getcpu: rseq's cpu_id, nearly free).
#[derive(Default)]
struct Cpus(Vec<u64>);

impl Cpus {
    fn count(&mut self) {
        // SAFETY: no arguments, no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        if let Ok(cpu) = usize::try_from(cpu) {
            if self.0.len() <= cpu {
                self.0.resize(cpu + 1, 0);
            }
            self.0[cpu] += 1;
        }
    }
}

/// Reads exactly `buf.len()` bytes; false on EOF before the first byte.
/// Retries EAGAIN: a blocking read of a redirected socket may return it
/// once after a wake-up without data (docs/sockops-design.md, section 4).
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => bail!("EOF in the middle of a message"),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn pp_server(listen: &str) -> Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("ready {}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    let (mut s, _) = l.accept()?;
    drop(l);
    s.set_nodelay(true)?;
    let mut header = [0u8; 8];
    ensure!(read_full(&mut s, &mut header)?, "no header");
    let size = u32::from_le_bytes(header[..4].try_into()?) as usize;
    let warmup = u64::from(u32::from_le_bytes(header[4..].try_into()?));
    let mut buf = vec![0u8; size];
    let mut echoed = 0u64;
    let mut c0 = cpu_now();
    let mut cpus = Cpus::default();
    loop {
        if echoed == warmup {
            c0 = cpu_now();
        }
        if !read_full(&mut s, &mut buf)? {
            break;
        }
        if echoed >= warmup {
            cpus.count();
        }
        s.write_all(&buf)?;
        echoed += 1;
    }
    let c1 = cpu_now();
    println!("{}", serde_json::json!({ "echoed": echoed, "cpu_s": c1.0 - c0.0, "sys_s": c1.1 - c0.1, "cpus": cpus.0 }));
    Ok(())
}

fn pp_client(addr: SocketAddr, size: usize, seconds: f64, warmup: u32) -> Result<()> {
    ensure!(size >= 8, "messages of at least 8 bytes");
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&(size as u32).to_le_bytes());
    header[4..].copy_from_slice(&warmup.to_le_bytes());
    s.write_all(&header)?;
    let mut out: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    let mut back = vec![0u8; size];
    // Each message carries its number; every 1024th is compared whole.
    let mut n = 0u64;
    let mut round_trip = |s: &mut TcpStream| -> Result<()> {
        out[..8].copy_from_slice(&n.to_le_bytes());
        s.write_all(&out)?;
        ensure!(read_full(s, &mut back)?, "EOF from the server");
        ensure!(back[..8] == out[..8] && (!n.is_multiple_of(1024) || back == out), "round trip {n}: wrong bytes back");
        n += 1;
        Ok(())
    };
    for _ in 0..warmup {
        round_trip(&mut s)?;
    }
    let duration = Duration::from_secs_f64(seconds);
    let mut lat: Vec<u32> = Vec::with_capacity(400_000);
    let (c0, busy0) = (cpu_now(), machine_busy());
    let mut cpus = Cpus::default();
    let t0 = Instant::now();
    let mut start = t0;
    loop {
        round_trip(&mut s)?;
        let now = Instant::now();
        cpus.count();
        lat.push((now - start).as_nanos().min(u128::from(u32::MAX)) as u32);
        start = now;
        if now - t0 >= duration {
            break;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (c1, busy1) = (cpu_now(), machine_busy());
    drop(s);
    lat.sort_unstable();
    let pct = |p: f64| f64::from(lat[((lat.len() - 1) as f64 * p).round() as usize]) / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "round_trips": lat.len(),
            "all_round_trips": u64::from(warmup) + lat.len() as u64,
            "seconds": wall,
            "p50_us": pct(0.5),
            "p99_us": pct(0.99),
            "max_us": pct(1.0),
            "cpu_s": c1.0 - c0.0,
            "sys_s": c1.1 - c0.1,
            "busy_s": busy1 - busy0,
            "cpus": cpus.0,
        })
    );
    Ok(())
}

fn render(o: &Opts, r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "## sockops collector: socket redirect between sidecar and app\n");
    let _ = writeln!(
        t,
        "Measured {}. Reproduce (as root): `scripts/bench.sh sockops --rounds {} --seconds {} --connections {}`.\n",
        machine(),
        o.rounds,
        o.seconds,
        o.connections
    );
    let _ = writeln!(
        t,
        "One testbed pod (Envoy, 1 worker, in the sidecar container; nginx in the app container). Three arms, \
         rotating in each round ({} rounds of ping-pong, {} of wrk): **no exporter**; **exporter, no sockops** (`--collectors socket \
         --target.pod UID`); **exporter + sockops** (the same plus `--with-sockops`): the last two differ only in \
         the acceleration. A fresh exporter per arm; every connection measured is opened after it attached its \
         programs and discovered the pod. Each run is checked: with sockops the pod's \
         `pmoas_sockops_redirected_messages_total` grew by at least every message the connection sent and the \
         pod's `lo` carried no data packet; without, `lo` carried them all (else the benchmark fails).\n",
        o.rounds * PP_ROUNDS_PER_ROUND,
        o.rounds
    );
    render_pingpong(&mut t, r);
    render_wrk(&mut t, o, r);
    render_stats(&mut t, r);
    t
}

fn runs_of(r: &Results, arm: Arm, case: usize) -> Vec<&Pp> {
    r.pp.iter().filter(|(_, a, c, _)| *a == arm && *c == case).map(|(_, _, _, p)| p).collect()
}

/// median (min..max) of `v`, formatted with `dp` decimals.
fn mr(v: &[f64], dp: usize) -> String {
    format!("{:.dp$} ({:.dp$}..{:.dp$})", median(v), percentile(v, 0.0), percentile(v, 1.0))
}

fn render_pingpong(t: &mut String, r: &Results) {
    let _ = writeln!(
        t,
        "### (a) Request/response on the in-pod hop: ping-pong app -> sidecar on 127.0.0.1\n\n\
         This binary's ping-pong (`pp-client` in the app container, `pp-server` in the sidecar container): blocking \
         sockets, TCP_NODELAY, one connection per run, an 8-byte header, {PP_WARMUP} round trips of warm-up, then \
         {PP_SECONDS} s of round trips of exactly SIZE bytes each way, one clock read per round trip. Placement \
         (`sched_setaffinity`): **one CPU**, client and server on CPU {PIN_CPU} (as in docs/sockops-design.md); **two \
         CPUs**, client on CPU {PIN_CPU}, server on CPU {OTHER_CPU}, so every round trip wakes the other CPU twice; \
         **unpinned**, wherever the scheduler puts them (each process counts the CPU it handled each message on: \
         see the placement below). Also two routes that are never accelerated, to show what \
         the programs cost traffic they do not speed up: the host's client cgroup to the sidecar on the pod IP (one \
         end in the watched pod), and the host's loopback between two processes of no pod (only the node-wide hooks \
         run there, and leave early: the read tracepoint, and the sock_ops and egress programs on the cgroup v2 \
         root).\n\n\
         Medians over the rounds, (min..max) of the rounds beside them; latency in us, throughput in round trips \
         per second. \"sockops vs no sockops\" is the ratio of the medians (latency: the change of the p50).\n"
    );
    let _ = writeln!(
        t,
        "| route, size, pinning | p50 us: no exporter / no sockops / sockops | p99 us: no exporter / no sockops / \
         sockops | round trips/s: no exporter | no sockops | sockops | sockops vs no sockops: p50, round trips/s |\n\
         |---|---|---|---|---|---|---|"
    );
    for (i, case) in CASES.iter().enumerate() {
        let f = |arm: Arm, g: &dyn Fn(&Pp) -> f64| runs_of(r, arm, i).into_iter().map(g).collect::<Vec<f64>>();
        let p50 = |arm| f(arm, &|p| p.p50_us);
        let p99 = |arm| f(arm, &|p| p.p99_us);
        let rate = |arm| f(arm, &|p| p.rate());
        let _ = writeln!(
            t,
            "| {} | {} / {} / **{}** | {} / {} / {} | {} | {} | **{}** | {:+.0} %, {:.2}x |",
            case.name(),
            mr(&p50(Arm::None), 1),
            mr(&p50(Arm::Socket), 1),
            mr(&p50(Arm::Sockops), 1),
            mr(&p99(Arm::None), 1),
            mr(&p99(Arm::Socket), 1),
            mr(&p99(Arm::Sockops), 1),
            mr(&rate(Arm::None), 0),
            mr(&rate(Arm::Socket), 0),
            mr(&rate(Arm::Sockops), 0),
            (median(&p50(Arm::Sockops)) / median(&p50(Arm::Socket)) - 1.0) * 100.0,
            median(&rate(Arm::Sockops)) / median(&rate(Arm::Socket)),
        );
    }

    // Where the scheduler put the unpinned runs.
    let _ = writeln!(
        t,
        "\nUnpinned runs by where client and server ran (each >= 90 % of its messages on one CPU: the same one, or \
         two different ones; else mixed):\n"
    );
    for (i, case) in CASES.iter().enumerate().filter(|(_, c)| c.pin == Pin::Free) {
        let count = |arm: Arm| {
            let runs = runs_of(r, arm, i);
            let n = |p: Placement| runs.iter().filter(|x| x.placement == p).count();
            format!(
                "{} on one CPU, {} on two, {} mixed",
                n(Placement::OneCpu),
                n(Placement::TwoCpus),
                n(Placement::Mixed)
            )
        };
        let _ = writeln!(
            t,
            "- {}: no exporter {}; no sockops {}; sockops {}.",
            case.name(),
            count(Arm::None),
            count(Arm::Socket),
            count(Arm::Sockops)
        );
    }

    // Each round of the 4 KiB cases: the side-by-side pairs.
    let _ = writeln!(
        t,
        "\nEach round, 4 KiB in-pod (arms in the order they ran: the rotation moves by one each round; unpinned: \
         where the runs ran, in the arms' order none / no sockops / sockops):\n\n\
         | placement | round | order | p50 / p99 us: no exporter | no sockops | sockops | round trips/s: no exporter | \
         no sockops | sockops | sockops / no sockops |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let rounds = r.pp.iter().map(|x| x.0).max().map_or(0, |m| m + 1);
    for (i, case) in CASES.iter().enumerate().filter(|(_, c)| c.route == Route::InPod && c.size == 4096) {
        for round in 0..rounds {
            let get = |arm: Arm| r.pp.iter().find(|(k, a, c, _)| *k == round && *a == arm && *c == i).map(|x| &x.3);
            let (Some(n), Some(s), Some(x)) = (get(Arm::None), get(Arm::Socket), get(Arm::Sockops)) else {
                continue;
            };
            let order: Vec<&str> = (0..ARMS.len())
                .map(|k| match ARMS[(round + k) % ARMS.len()] {
                    Arm::None => "none",
                    Arm::Socket => "no sockops",
                    Arm::Sockops => "sockops",
                })
                .collect();
            let _ = writeln!(
                t,
                "| {} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} | {:.0} | {:.0} | {:.2}x |",
                if case.pin == Pin::Free {
                    format!("unpinned ({} / {} / {})", n.placement.name(), s.placement.name(), x.placement.name())
                } else {
                    case.pin.name().to_string()
                },
                round + 1,
                order.join(", "),
                n.p50_us,
                n.p99_us,
                s.p50_us,
                s.p99_us,
                x.p50_us,
                x.p99_us,
                n.rate(),
                s.rate(),
                x.rate(),
                x.rate() / s.rate()
            );
        }
    }

    // CPU per round trip and the checks.
    let _ = writeln!(
        t,
        "\nCPU per round trip (two messages of SIZE): the client's and the server's user + system time \
         (getrusage, over the timed part; this kernel has no IRQ time accounting, so softirq work done in their \
         context is in it), and the whole machine's busy time (/proc/stat, all but idle and iowait: also \
         softirq elsewhere, the exporter, and whatever else ran; tick-based, 10 ms). Medians of the rounds. Then \
         what each run was checked against: lo packets per round trip (warm-up included) and, with sockops, \
         messages redirected and missed per round trip (the connection sends 2 per round trip + the header).\n\n\
         | route, size, pinning | processes' CPU us/rt: no exporter / no sockops / sockops | ... of it system | \
         machine CPU us/rt: no exporter / no sockops / sockops | sockops vs no sockops (processes) | lo packets/rt: \
         no sockops / sockops | redirected / missed messages per rt |\n|---|---|---|---|---|---|---|"
    );
    for (i, case) in CASES.iter().enumerate() {
        let med = |arm: Arm, g: &dyn Fn(&Pp) -> f64| median(&runs_of(r, arm, i).into_iter().map(g).collect::<Vec<_>>());
        let cpu = |arm| med(arm, &|p| p.cpu_us_per_rt());
        let sys = |arm| med(arm, &|p| p.sys / p.round_trips * 1e6);
        let busy = |arm| med(arm, &|p| p.busy_us_per_rt());
        let lo = |arm| med(arm, &|p| p.lo_packets / p.all_round_trips);
        let red = med(Arm::Sockops, &|p| p.redirected.map_or(0.0, |x| x.0) / p.all_round_trips);
        let miss = med(Arm::Sockops, &|p| p.redirected.map_or(0.0, |x| x.1) / p.all_round_trips);
        let _ = writeln!(
            t,
            "| {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:+.0} % | {} / {} | \
             {red:.3} / {miss:.3} |",
            case.name(),
            cpu(Arm::None),
            cpu(Arm::Socket),
            cpu(Arm::Sockops),
            sys(Arm::None),
            sys(Arm::Socket),
            sys(Arm::Sockops),
            busy(Arm::None),
            busy(Arm::Socket),
            busy(Arm::Sockops),
            (cpu(Arm::Sockops) / cpu(Arm::Socket) - 1.0) * 100.0,
            if case.route == Route::InPod { format!("{:.2}", lo(Arm::Socket)) } else { "-".into() },
            if case.route == Route::InPod { format!("{:.4}", lo(Arm::Sockops)) } else { "-".into() },
        );
    }

    // The targets at 4 KiB, against either baseline.
    let _ = writeln!(
        t,
        "\nThe issue's targets at 4 KiB in-pod: sockops against the exporter without sockops (only the acceleration \
         differs) and against no exporter at all; the ratio of the medians of the rounds, then (in brackets) the \
         worst and the best of the rounds' own pairs. Unpinned mixes the placements above, so its medians depend \
         on how many runs of each arm the scheduler put on one CPU.\n\n\
         | target | placement | vs no sockops | vs no exporter |\n|---|---|---|---|"
    );
    let paired = |i: usize, base: Arm, g: &dyn Fn(&Pp, &Pp) -> f64| -> Vec<f64> {
        (0..rounds)
            .filter_map(|round| {
                let get = |arm: Arm| r.pp.iter().find(|(k, a, c, _)| *k == round && *a == arm && *c == i).map(|x| &x.3);
                Some(g(get(base)?, get(Arm::Sockops)?))
            })
            .collect()
    };
    let med =
        |arm: Arm, i: usize, g: &dyn Fn(&Pp) -> f64| median(&runs_of(r, arm, i).into_iter().map(g).collect::<Vec<_>>());
    let lat = |i: usize, base: Arm| {
        let d = (med(Arm::Sockops, i, &|p| p.p50_us) / med(base, i, &|p| p.p50_us) - 1.0) * 100.0;
        let pairs = paired(i, base, &|s, x| (x.p50_us / s.p50_us - 1.0) * 100.0);
        let met = if d <= -20.0 { "met" } else { "missed" };
        format!("{d:+.0} %, {met} ({:+.0} / {:+.0} %)", percentile(&pairs, 1.0), percentile(&pairs, 0.0))
    };
    let thr = |i: usize, base: Arm| {
        let x = med(Arm::Sockops, i, &|p| p.rate()) / med(base, i, &|p| p.rate());
        let pairs = paired(i, base, &|s, x| x.rate() / s.rate());
        let met = if x >= 1.3 { "met" } else { "missed" };
        format!("{x:.2}x, {met} ({:.2}x / {:.2}x)", percentile(&pairs, 0.0), percentile(&pairs, 1.0))
    };
    let four = CASES.iter().enumerate().filter(|(_, c)| c.route == Route::InPod && c.size == 4096);
    for (i, case) in four.clone() {
        let _ = writeln!(
            t,
            "| p50 latency >= 20 % lower | {} | {} | {} |",
            case.pin.name(),
            lat(i, Arm::Socket),
            lat(i, Arm::None)
        );
    }
    for (i, case) in four {
        let _ = writeln!(
            t,
            "| throughput >= 1.3x | {} | {} | {} |",
            case.pin.name(),
            thr(i, Arm::Socket),
            thr(i, Arm::None)
        );
    }
}

fn render_wrk(t: &mut String, o: &Opts, r: &Results) {
    let _ = writeln!(
        t,
        "\n### (b) wrk `-t2 -c{} -d{}s` keep-alive through Envoy into nginx\n\n\
         From the client cgroup on the host to Envoy's inbound listener (pod IP :15006; not accelerated: it comes \
         in on the veth), Envoy to nginx on 127.0.0.1 inside the pod (accelerated with sockops). nginx runs with \
         `keepalive_timeout 1s` and the windows are at least {:.1} s apart, so Envoy opens its upstream \
         connections in each window anew (nginx's default `keepalive_requests 1000` renews them during the window \
         too). Machine CPU per request: the whole machine's busy time over the requests served. Checked: with \
         sockops at least 1.8 messages redirected per request (Envoy's request, nginx's response), without it at \
         least 1.5 packets per request on the pod's lo.\n\n\
         | round | arm | req/s | p50 / p99 ms | machine CPU per request | exporter CPU, % of a core | lo packets \
         per request | redirected / missed messages per request |\n|---|---|---|---|---|---|---|---|",
        o.connections,
        o.seconds,
        WRK_GAP.as_secs_f64()
    );
    for (round, arm, w) in &r.wrk {
        let req = w.requests();
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.2} / {:.2} | {:.1} us | {} | {:.2} | {} |",
            round + 1,
            arm.name(),
            w.w.wrk.requests_per_sec,
            w.w.wrk.p50_ms,
            w.w.wrk.p99_ms,
            w.busy_us_per_request(),
            if *arm == Arm::None { "-".into() } else { format!("{:.2}", w.w.exporter_cpu) },
            w.lo_packets / req,
            w.redirected.map_or("-".into(), |(m, x)| format!("{:.2} / {:.3}", m / req, x / req)),
        );
    }
    let _ = writeln!(
        t,
        "\n| arm | req/s, median (min..max) | p50 ms | p99 ms | machine CPU us per request | exporter CPU, % of a \
         core |\n|---|---|---|---|---|---|"
    );
    for arm in ARMS {
        let v = |g: &dyn Fn(&WrkWindow) -> f64| -> Vec<f64> {
            r.wrk.iter().filter(|(_, a, _)| *a == arm).map(|(_, _, w)| g(w)).collect()
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            arm.name(),
            mr(&v(&|w| w.w.wrk.requests_per_sec), 0),
            mr(&v(&|w| w.w.wrk.p50_ms), 2),
            mr(&v(&|w| w.w.wrk.p99_ms), 2),
            mr(&v(&|w| w.busy_us_per_request()), 1),
            if arm == Arm::None { "-".into() } else { mr(&v(&|w| w.w.exporter_cpu), 2) },
        );
    }
    let pairs: Vec<(f64, f64)> = (0..=r.wrk.iter().map(|x| x.0).max().unwrap_or(0))
        .filter_map(|round| {
            let get = |arm: Arm| r.wrk.iter().find(|(k, a, _)| *k == round && *a == arm).map(|x| &x.2);
            let (s, x) = (get(Arm::Socket)?, get(Arm::Sockops)?);
            Some((x.w.wrk.requests_per_sec / s.w.wrk.requests_per_sec, x.w.wrk.p50_ms / s.w.wrk.p50_ms))
        })
        .collect();
    let rps: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let p50: Vec<f64> = pairs.iter().map(|p| (p.1 - 1.0) * 100.0).collect();
    let _ = writeln!(
        t,
        "\nSockops vs no sockops, per round: req/s {} (median, min..max of the rounds' ratios), p50 latency {} %.",
        mr(&rps, 2),
        mr(&p50, 0)
    );
}

fn render_stats(t: &mut String, r: &Results) {
    let _ = writeln!(
        t,
        "\n### (c) The programs' run time\n\n\
         kernel.bpf_stats_enabled=1 during these windows only ({}), exporter + sockops, the loads above once each \
         (ping-pongs on one CPU). Per program: ns per run, and (in brackets) runs per round trip or request. \
         `sockops_redirect` (sk_msg) runs per message sent from a socket in the map; the three others run for \
         the whole node and leave early for sockets not in a watched pod: `sockops_recv_length` \
         (tp_btf/sock_recv_length) at the end of every socket read, `sockops_established` (sock_ops on the \
         cgroup v2 root) at every sock_ops callback of every TCP socket (connection set-up; state changes only of \
         sockets in the map), `sockops_syn_egress` (cgroup_skb/egress on the cgroup v2 root) for every packet \
         a socket of the node sends. The last column is what the four cost per round trip or request.\n",
        if r.stats_were_on { "it was already on before the run, and stayed on" } else { "restored to 0 after" }
    );
    let _ = write!(t, "| load | unit |");
    for p in PROGRAMS {
        let _ = write!(t, " `{p}` |");
    }
    let _ = writeln!(t, " all four, ns per unit |\n|---|---|---|---|---|---|---|");
    for w in &r.stats {
        let _ = write!(t, "| {} | {} |", w.name, w.unit);
        for (ns, runs) in &w.programs {
            if *runs > 0.0 {
                let _ = write!(t, " {:.0} ns ({:.2}) |", ns / runs, runs / w.units);
            } else {
                let _ = write!(t, " - (0) |");
            }
        }
        let total: f64 = w.programs.iter().map(|(ns, _)| ns).sum();
        let _ = writeln!(t, " {:.0} |", total / w.units.max(1.0));
    }
}
