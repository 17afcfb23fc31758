//! Shared by the benchmarks: the exporter as a child process, its metrics,
//! statistics, and the sections of BENCHMARKS.md.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    Ok(pmoas_testbed::traffic::http_get(addr, path)?)
}

/// Sample lines of metric `name` (not comments, not other metrics that
/// start with the same name).
pub fn samples<'a>(body: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
}

/// Sum of the samples of `name` whose label text contains every `want`.
pub fn metric(body: &str, name: &str, want: &[&str]) -> f64 {
    samples(body, name)
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

pub struct Exporter {
    child: Child,
    pub addr: SocketAddr,
}

impl Exporter {
    /// Starts the exporter with `args` (socket collector) and waits for the
    /// first scrape in which the socket collector answered; how long it took.
    pub fn start(bin: &Path, args: &[&str]) -> Result<(Exporter, Duration)> {
        Self::start_until(bin, args, |body| {
            metric(body, "pmoas_scrape_collector_success", &["collector=\"socket\""]) == 1.0
        })
    }

    /// Starts the exporter and waits until a scrape satisfies `up`.
    pub fn start_until(bin: &Path, args: &[&str], up: impl Fn(&str) -> bool) -> Result<(Exporter, Duration)> {
        Self::start_polling(bin, args, "/metrics", up)
    }

    /// Starts the exporter and waits until `/readyz` says every collector
    /// finished starting, without a scrape.
    pub fn start_ready(bin: &Path, args: &[&str]) -> Result<(Exporter, Duration)> {
        Self::start_polling(bin, args, "/readyz", |_| true)
    }

    fn start_polling(bin: &Path, args: &[&str], path: &str, up: impl Fn(&str) -> bool) -> Result<(Exporter, Duration)> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        let child = Command::new(bin)
            .args(["--web.listen-address", &addr.to_string(), "--log.level", "warn"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let e = Exporter { child, addr };
        loop {
            if let Ok((200, body)) = http_get(addr, path)
                && up(&body)
            {
                return Ok((e, started.elapsed()));
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("exporter not up after 20 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// user+system CPU seconds so far: the process's tick counters (which
    /// keep the time of exited threads) or, finer, the sum of its live
    /// threads' schedstat nanoseconds, whichever says more.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id();
        let mut ns = 0u64;
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                    ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                }
            }
        }
        self.cpu_ticks_seconds().max(ns as f64 / 1e9)
    }

    fn cpu_ticks_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Starts VmHWM over from the current VmRSS, so that the next peak is
    /// of what follows, not of start-up.
    pub fn reset_peak(&self) -> Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").context("resetting VmHWM")
    }

    /// (VmRSS, VmHWM) in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    pub fn stop(mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// The middle value (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Replaces benchmark `name`'s section of BENCHMARKS.md (between
/// `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`), keeping the rest.
pub fn write_section(path: &Path, name: &str, report: &str) -> Result<()> {
    let (start, end) = (format!("<!-- bench:{name}:start -->"), format!("<!-- bench:{name}:end -->"));
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# pmoas benchmarks\n\n".into());
    let section = format!("{start}\n{report}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{}\n\n{}\n", old.trim_end(), section),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Turns kernel.bpf_stats_enabled on or off (the exporter then exports its
/// programs' run time and runs).
pub fn set_bpf_stats(on: bool) {
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" });
}

/// (run time in ns, runs) of the eBPF programs whose labels contain every
/// `want` (all of them for `&[]`), from a scrape.
pub fn bpf_totals(body: &str, want: &[&str]) -> (f64, f64) {
    (
        metric(body, "pmoas_ebpf_program_run_seconds_total", want) * 1e9,
        metric(body, "pmoas_ebpf_program_runs_total", want),
    )
}

/// Per eBPF program whose labels contain `collector` (`collector="http"`):
/// (program, run time in ns, runs) between two scrapes, by program name.
pub fn program_deltas(before: &str, after: &str, collector: &str) -> Vec<(String, f64, f64)> {
    let mut names: Vec<String> = samples(after, "pmoas_ebpf_program_runs_total")
        .filter(|l| l.contains(collector))
        .filter_map(|l| l.split("program=\"").nth(1)?.split('"').next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|p| {
            let want = [collector, &format!("program=\"{p}\"")];
            let (ns0, runs0) = bpf_totals(before, &want);
            let (ns1, runs1) = bpf_totals(after, &want);
            (p, ns1 - ns0, runs1 - runs0)
        })
        .collect()
}

/// Machine and date line of a report.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{date} on {cpus} CPUs, kernel {}", kernel.trim())
}

/// Connections and concurrent streams of h2load's gRPC load: what the
/// testbed's one-process Python Greeter serves without queueing much.
pub const H2LOAD_CONNECTIONS: u32 = 4;
pub const H2LOAD_STREAMS: u32 = 8;

/// h2load from the client cgroup: gRPC `helloworld.Greeter/SayHello`
/// calls through the pod's Envoy over h2c for `seconds`; `during` runs
/// every 250 ms meanwhile. Calls/s in `requests_per_sec`, failed ones in
/// `errors` (latency percentiles are not parsed: NaN).
pub fn h2load_grpc(pod: &pmoas_testbed::Pod, seconds: u64, mut during: impl FnMut()) -> Result<Wrk> {
    // One gRPC message: uncompressed, 7 bytes of HelloRequest{name: "world"}.
    let body = std::env::temp_dir().join(format!("pmoas-bench-grpc-{}.bin", std::process::id()));
    std::fs::write(&body, b"\x00\x00\x00\x00\x07\x0a\x05world")?;
    let url = format!("http://{}/helloworld.Greeter/SayHello", pod.grpc_addr());
    let child = pod
        .command(pmoas_testbed::Place::Client, "h2load")
        .args(["-D", &seconds.to_string(), "-c", &H2LOAD_CONNECTIONS.to_string()])
        .args(["-m", &H2LOAD_STREAMS.to_string(), "-d"])
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting h2load (apt-get install nghttp2-client)")?;
    let pid = child.id();
    let until = Instant::now() + Duration::from_secs(seconds + 1);
    while Instant::now() < until && Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(250));
        during();
    }
    let out = child.wait_with_output()?;
    let _ = std::fs::remove_file(&body);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    // "finished in 6.00s, 3305.17 req/s, ..." and "requests: N total, ...,
    // S succeeded, F failed, E errored, T timeout".
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse::<f64>().ok())
        .context("no req/s in h2load output")?;
    let requests = text.lines().find(|l| l.starts_with("requests:")).context("no requests line in h2load output")?;
    let field = |name: &str| {
        requests
            .split(", ")
            .find_map(|f| f.trim().strip_suffix(name).map(str::trim))
            .and_then(|v| v.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Wrk {
        requests_per_sec: rps,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: field(" failed") + field(" errored") + field(" timeout"),
    })
}

/// What wrk measured in one round.
pub struct Wrk {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// How wrk uses its connections: a new one per request (a cost per
/// connection), or keep-alive (a cost per packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    Close,
    KeepAlive,
}

fn parse_latency_ms(v: &str) -> f64 {
    let num: String = v.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match &v[num.len()..] {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// wrk from the client cgroup through the pod's Envoy for `seconds`;
/// `during` runs every 250 ms meanwhile (scrapes, samples).
pub fn wrk(
    pod: &pmoas_testbed::Pod,
    o: &crate::Opts,
    seconds: u64,
    connections: Connections,
    mut during: impl FnMut(),
) -> Result<Wrk> {
    let url = format!("http://{}/", pod.envoy_addr());
    let mut args = vec!["-t2".to_string(), format!("-c{}", o.connections), format!("-d{seconds}s"), "--latency".into()];
    if connections == Connections::Close {
        args.extend(["-H".to_string(), "Connection: close".to_string()]);
    }
    args.push(url);
    let child = pod
        .command(pmoas_testbed::Place::Client, "wrk")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (apt-get install wrk)")?;
    let pid = child.id();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until && Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(250));
        during();
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()));
    let requests_per_sec =
        field("Requests/sec:").and_then(|v| v.parse().ok()).context("no Requests/sec in wrk output")?;
    let errors = text
        .lines()
        .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Ok(Wrk {
        requests_per_sec,
        p50_ms: field("50%").map(|v| parse_latency_ms(&v)).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(|v| parse_latency_ms(&v)).unwrap_or(f64::NAN),
        errors,
    })
}

/// Stops the exporter when dropped, also on an early error.
pub struct Running(pub Option<Exporter>);

impl Running {
    pub fn get(&self) -> &Exporter {
        self.0.as_ref().expect("running exporter")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(e) = self.0.take() {
            e.stop();
        }
    }
}

/// kernel.bpf_stats_enabled on while it lives.
pub struct BpfStats;

impl BpfStats {
    pub fn on() -> BpfStats {
        set_bpf_stats(true);
        BpfStats
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        set_bpf_stats(false);
    }
}

/// CPU seconds all CPUs of the machine were busy so far (/proc/stat: all
/// but idle and iowait).
pub fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    // SAFETY: sysconf has no preconditions.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU seconds all CPUs of the machine were idle so far (/proc/stat: idle
/// and iowait). On a tickless kernel these are measured, not sampled at the
/// tick like the busy fields: wall time x CPUs minus this is the busy time
/// also of loads that run in bursts between ticks and sleep across them
/// (paced connections), which the busy fields miss almost entirely.
pub fn machine_idle() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    idle / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Half the min..max range and the standard deviation, % of the mean.
pub fn spread(v: &[f64]) -> (f64, f64) {
    let m = mean(v);
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt();
    ((percentile(v, 1.0) - percentile(v, 0.0)) / 2.0 / m * 100.0, sd / m * 100.0)
}

/// One wrk window of keep-alive requests through the pod's sidecar, with
/// an exporter scraped every `scrape` meanwhile (or none): what the
/// benchmarks of per-packet costs compare arm by arm.
pub struct LoadWindow {
    pub wrk: Wrk,
    pub wall: f64,
    /// CPU time the whole machine was busy (all CPUs, seconds).
    pub busy: f64,
    /// The exporter's own CPU, % of a core.
    pub exporter_cpu: f64,
    /// The metrics page just before and just after the load.
    pub before: String,
    pub after: String,
}

/// The load of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// wrk keep-alive GETs through the pod's Envoy.
    Wrk,
    /// h2load gRPC calls (Greeter.SayHello) through the pod's Envoy over h2c.
    GrpcH2load,
}

pub fn load_window(
    pod: &pmoas_testbed::Pod,
    o: &crate::Opts,
    e: Option<&Exporter>,
    scrape: Duration,
) -> Result<LoadWindow> {
    load_window_of(pod, o, e, scrape, Load::Wrk)
}

pub fn load_window_of(
    pod: &pmoas_testbed::Pod,
    o: &crate::Opts,
    e: Option<&Exporter>,
    scrape: Duration,
    load: Load,
) -> Result<LoadWindow> {
    let page = |e: Option<&Exporter>| -> Result<String> {
        Ok(match e {
            Some(e) => http_get(e.addr, "/metrics")?.1,
            None => String::new(),
        })
    };
    let before = page(e)?;
    let cpu0 = e.map_or(0.0, Exporter::cpu_seconds);
    let (busy0, t0) = (machine_busy(), Instant::now());
    let mut last = Instant::now();
    let during = || {
        if let Some(e) = e
            && last.elapsed() >= scrape
        {
            let _ = http_get(e.addr, "/metrics");
            last = Instant::now();
        }
    };
    let w = match load {
        Load::Wrk => wrk(pod, o, o.seconds, Connections::KeepAlive, during)?,
        Load::GrpcH2load => h2load_grpc(pod, o.seconds, during)?,
    };
    let wall = t0.elapsed().as_secs_f64();
    let busy = machine_busy() - busy0;
    let exporter_cpu = (e.map_or(0.0, Exporter::cpu_seconds) - cpu0) / wall * 100.0;
    let after = page(e)?;
    Ok(LoadWindow { wrk: w, wall, busy, exporter_cpu, before, after })
}
