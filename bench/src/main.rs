//! `pmoas-bench`: what the socket collector costs, measured side by side.
//!
//! On a testbed pod (Envoy in front of nginx), wrk drives `Connection: close`
//! requests through the sidecar in alternating rounds without and with the
//! exporter, so drift of the machine hits both sides alike. Measured: the
//! throughput ratio, the exporter's CPU per 10k connections/s, its RSS, lost
//! events, start-up to the first successful scrape, and /metrics latency.
//! The results replace the socket section of BENCHMARKS.md.
//!
//! Run: `scripts/bench.sh` (builds release binaries; as root).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pmoas_testbed::{Place, Pod, PodOptions};

struct Opts {
    rounds: usize,
    seconds: u64,
    connections: u64,
    exporter: PathBuf,
    out: PathBuf,
}

fn opts() -> Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Ok(Opts {
        rounds: get("--rounds").map(|v| v.parse()).transpose()?.unwrap_or(3),
        seconds: get("--seconds").map(|v| v.parse()).transpose()?.unwrap_or(10),
        connections: get("--connections").map(|v| v.parse()).transpose()?.unwrap_or(32),
        exporter: get("--exporter").map(PathBuf::from).unwrap_or_else(|| root.join("target/release/pmoas-exporter")),
        out: get("--out").map(PathBuf::from).unwrap_or_else(|| root.join("BENCHMARKS.md")),
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("pmoas-bench: {e:#}");
        std::process::exit(1);
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    Ok(pmoas_testbed::traffic::http_get(addr, path)?)
}

/// Sum of the samples of `name` whose label text contains every `want`.
fn metric(body: &str, name: &str, want: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

struct Exporter {
    child: Child,
    addr: SocketAddr,
}

impl Exporter {
    fn start(bin: &Path) -> Result<(Exporter, Duration)> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        let child = Command::new(bin)
            .args(["--collectors", "socket", "--web.listen-address", &addr.to_string(), "--log.level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let e = Exporter { child, addr };
        // Up = the first scrape in which the socket collector answered.
        loop {
            if let Ok((200, body)) = http_get(addr, "/metrics")
                && metric(&body, "pmoas_scrape_collector_success", &["collector=\"socket\""]) == 1.0
            {
                return Ok((e, started.elapsed()));
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("exporter not up after 20 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// user+system CPU seconds so far: the process's tick counters (which
    /// keep the time of exited threads) or, finer, the sum of its live
    /// threads' schedstat nanoseconds, whichever says more.
    fn cpu_seconds(&self) -> f64 {
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

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
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

    fn stop(mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Kernel-side cost of the collector's programs (kernel.bpf_stats_enabled):
/// total run time and runs of every `socket_*` program, from bpftool.
/// Run time (ns) and runs of one program.
type ProgramRuns = (String, f64, f64);

fn bpf_run_totals() -> Result<(f64, f64, Vec<ProgramRuns>)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool (apt-get install bpftool)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // A flat scan of the JSON array: one object per program.
    let mut per = Vec::new();
    for obj in text.split("},{") {
        let field = |k: &str| {
            obj.split(&format!("\"{k}\":"))
                .nth(1)
                .map(|r| r.trim_start_matches('"').split(['"', ',', '}']).next().unwrap_or("").to_string())
        };
        let Some(name) = field("name") else { continue };
        if !name.starts_with("socket_") {
            continue;
        }
        let ns = field("run_time_ns").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let runs = field("run_cnt").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        per.push((name, ns, runs));
    }
    let ns = per.iter().map(|p| p.1).sum();
    let runs = per.iter().map(|p| p.2).sum();
    Ok((ns, runs, per))
}

fn set_bpf_stats(on: bool) {
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" });
}

struct Wrk {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
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

fn wrk(pod: &Pod, o: &Opts, seconds: u64, during: impl FnMut()) -> Result<Wrk> {
    let url = format!("http://{}/", pod.envoy_addr());
    let child = pod
        .command(Place::Client, "wrk")
        .args([
            "-t2",
            &format!("-c{}", o.connections),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            "Connection: close",
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (apt-get install wrk)")?;
    let mut during = during;
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

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

struct OnRound {
    wrk: Wrk,
    /// eBPF programs' run time, % of one core, and ns per program run.
    bpf_percent: f64,
    bpf_ns_per_run: f64,
    cpu_percent: f64,
    conns_per_sec: f64,
    rss: f64,
    hwm: f64,
    lost: f64,
}

fn run() -> Result<()> {
    let o = opts()?;
    let missing = pmoas_testbed::missing_prerequisites();
    if !missing.is_empty() {
        bail!("the benchmark needs: {}", missing.join("; "));
    }
    if !o.exporter.is_file() {
        bail!("{} missing: cargo build --release -p pmoas-exporter", o.exporter.display());
    }
    let pod = Pod::up(&PodOptions::default())?;
    eprintln!("pmoas-bench: testbed {} up; warming up", pod.state.name);
    wrk(&pod, &o, 10, || {})?;

    // Start-up to the first successful scrape.
    let mut startups = Vec::new();
    for _ in 0..5 {
        let (e, took) = Exporter::start(&o.exporter)?;
        startups.push(took.as_secs_f64() * 1000.0);
        e.stop();
    }
    eprintln!("pmoas-bench: start-up {:?} ms", startups);

    let mut off: Vec<Wrk> = Vec::new();
    let mut on: Vec<OnRound> = Vec::new();
    let mut scrape_ms: Vec<f64> = Vec::new();
    let mut page_bytes = 0usize;
    let mut series = 0usize;
    for round in 0..o.rounds {
        // Alternate which side goes first, so drift favours neither.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for with_exporter in order {
            if !with_exporter {
                let w = wrk(&pod, &o, o.seconds, || {})?;
                eprintln!("pmoas-bench: round {round} off: {:.0} req/s", w.requests_per_sec);
                off.push(w);
                continue;
            }
            let (e, _) = Exporter::start(&o.exporter)?;
            set_bpf_stats(true);
            let (bpf_ns0, bpf_runs0, _) = bpf_run_totals()?;
            let sidecar = format!("container=\"{}\"", &pod.state.sidecar_id[..12]);
            let (_, before) = http_get(e.addr, "/metrics")?;
            let cpu0 = e.cpu_seconds();
            let t0 = Instant::now();
            let mut last_scrape = Instant::now();
            // Scrape every 5 s during the load, harder than Prometheus's
            // usual 15 s: its cost is in the CPU figure.
            let w = wrk(&pod, &o, o.seconds, || {
                if last_scrape.elapsed() >= Duration::from_secs(5) {
                    let _ = http_get(e.addr, "/metrics");
                    last_scrape = Instant::now();
                }
            })?;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = e.cpu_seconds() - cpu0;
            let (bpf_ns1, bpf_runs1, per_prog) = bpf_run_totals()?;
            set_bpf_stats(false);
            let bpf_percent = (bpf_ns1 - bpf_ns0) / 1e9 / wall * 100.0;
            let bpf_ns_per_run = (bpf_ns1 - bpf_ns0) / (bpf_runs1 - bpf_runs0).max(1.0);
            for (name, ns, runs) in &per_prog {
                eprintln!("pmoas-bench:   {name}: {runs} runs, {:.0} ns/run (since load)", ns / runs.max(1.0));
            }
            let (_, after) = http_get(e.addr, "/metrics")?;
            let accepts = metric(&after, "pmoas_tcp_accepts_total", &[&sidecar])
                - metric(&before, "pmoas_tcp_accepts_total", &[&sidecar]);
            let lost = metric(&after, "pmoas_ebpf_events_lost_total", &[]);
            // /metrics latency with the round's series present.
            for _ in 0..50 {
                let t = Instant::now();
                let (status, body) = http_get(e.addr, "/metrics")?;
                scrape_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                if status != 200 {
                    bail!("scrape answered {status}");
                }
                page_bytes = body.len();
                series = body.lines().filter(|l| !l.starts_with('#')).count();
            }
            let (rss, hwm) = e.rss_mib();
            e.stop();
            eprintln!(
                "pmoas-bench: round {round} on: {:.0} req/s, exporter {:.2}% CPU",
                w.requests_per_sec,
                cpu / wall * 100.0
            );
            on.push(OnRound {
                bpf_percent,
                bpf_ns_per_run,
                cpu_percent: cpu / wall * 100.0,
                conns_per_sec: accepts / wall,
                rss,
                hwm,
                lost,
                wrk: w,
            });
        }
    }
    pod.down()?;

    let off_rps: Vec<f64> = off.iter().map(|w| w.requests_per_sec).collect();
    let on_rps: Vec<f64> = on.iter().map(|r| r.wrk.requests_per_sec).collect();
    let ratio = mean(&on_rps) / mean(&off_rps);
    let cpu_per_10k: Vec<f64> = on.iter().map(|r| r.cpu_percent * 10_000.0 / r.conns_per_sec.max(1.0)).collect();
    let report = render(&o, &off, &on, ratio, &cpu_per_10k, &startups, &scrape_ms, page_bytes, series);
    write_section(&o.out, &report)?;
    println!("{report}");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    o: &Opts,
    off: &[Wrk],
    on: &[OnRound],
    ratio: f64,
    cpu_per_10k: &[f64],
    startups: &[f64],
    scrape_ms: &[f64],
    page_bytes: usize,
    series: usize,
) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "## socket collector: exporter off vs on through Envoy\n");
    let _ = writeln!(
        s,
        "Measured {date} on {cpus} CPUs, kernel {}. wrk `-t2 -c{} -d{}s -H 'Connection: close'` from outside the \
         testbed pod through Envoy (1 worker) into nginx, {} alternating rounds per side, each round with a fresh \
         exporter (`--collectors socket`, release build) scraped every 5 s during the load.\n",
        kernel.trim(),
        o.connections,
        o.seconds,
        o.rounds
    );
    let _ = writeln!(
        s,
        "Reproduce (as root): `scripts/bench.sh --rounds {} --seconds {} --connections {}`. The first 10 s of load \
         are a warm-up and not counted.\n",
        o.rounds, o.seconds, o.connections
    );
    let _ = writeln!(
        s,
        "| round | off: req/s | off: p50 / p99 ms | on: req/s | on: p50 / p99 ms | on/off | exporter CPU, % of a core | eBPF run time, % of a core | eBPF ns per run | connections/s seen | RSS / peak MiB | lost events |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, (a, b)) in off.iter().zip(on).enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.3} | {:.3} | {:.2} | {:.0} | {:.0} | {:.1} / {:.1} | {} |",
            i + 1,
            a.requests_per_sec,
            a.p50_ms,
            a.p99_ms,
            b.wrk.requests_per_sec,
            b.wrk.p50_ms,
            b.wrk.p99_ms,
            b.wrk.requests_per_sec / a.requests_per_sec,
            b.cpu_percent,
            b.bpf_percent,
            b.bpf_ns_per_run,
            b.conns_per_sec,
            b.rss,
            b.hwm,
            b.lost
        );
    }
    let errors: u64 = off.iter().map(|w| w.errors).chain(on.iter().map(|r| r.wrk.errors)).sum();
    let _ = writeln!(s, "\n| measure | result | target |");
    let _ = writeln!(s, "|---|---|---|");
    let pairs: Vec<f64> = off.iter().zip(on).map(|(a, b)| b.wrk.requests_per_sec / a.requests_per_sec).collect();
    let _ = writeln!(
        s,
        "| throughput ratio, mean on / mean off (paired rounds: median {:.3}, range {:.3} .. {:.3}) | {ratio:.4} | >= 0.98 |",
        percentile(&pairs, 0.5),
        percentile(&pairs, 0.0),
        percentile(&pairs, 1.0)
    );
    let _ = writeln!(s, "| lost events (all rounds) | {} | 0 |", on.iter().map(|r| r.lost).sum::<f64>());
    let _ = writeln!(
        s,
        "| exporter CPU per 10k connections/s, worst round (user space: scrapes, discovery) | {:.3} % of a core | <= 5 % |",
        cpu_per_10k.iter().cloned().fold(0.0, f64::max)
    );
    let bpf_per_10k: Vec<f64> = on.iter().map(|r| r.bpf_percent * 10_000.0 / r.conns_per_sec.max(1.0)).collect();
    let _ = writeln!(
        s,
        "| in-kernel eBPF run time per 10k connections/s, worst round (not in the exporter's CPU; costs the traced tasks) | {:.2} % of a core | (no target; reported) |",
        bpf_per_10k.iter().cloned().fold(0.0, f64::max)
    );
    let _ =
        writeln!(s, "| RSS, peak over rounds | {:.1} MiB | <= 40 MiB |", on.iter().map(|r| r.hwm).fold(0.0, f64::max));
    let _ = writeln!(
        s,
        "| start-up to first successful scrape, median / max of {} | {:.0} / {:.0} ms | <= 1 s |",
        startups.len(),
        percentile(startups, 0.5),
        percentile(startups, 1.0)
    );
    let _ = writeln!(
        s,
        "| /metrics, median / p99 / max of {} ({} series, {} bytes) | {:.2} / {:.2} / {:.2} ms | <= 20 ms |",
        scrape_ms.len(),
        series,
        page_bytes,
        percentile(scrape_ms, 0.5),
        percentile(scrape_ms, 0.99),
        percentile(scrape_ms, 1.0)
    );
    let _ = writeln!(s, "| wrk socket errors and non-2xx (all rounds) | {errors} | 0 |");
    s
}

const START: &str = "<!-- bench:socket:start -->";
const END: &str = "<!-- bench:socket:end -->";

/// Replaces this benchmark's section of BENCHMARKS.md, keeping the rest.
fn write_section(path: &Path, report: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# pmoas benchmarks\n\n".into());
    let section = format!("{START}\n{report}{END}");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], section, &old[b + END.len()..]),
        _ => format!("{}\n{}\n", old.trim_end(), section),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
