//! The socket collector's cost, side by side: on a testbed pod (Envoy in
//! front of nginx), wrk drives `Connection: close` requests through the
//! sidecar in alternating rounds without and with the exporter, so drift of
//! the machine hits both sides alike. Measured: the throughput ratio, the
//! exporter's CPU per 10k connections/s, the eBPF programs' run time, RSS,
//! lost events, start-up to the first successful scrape, what one syscall
//! costs while the programs are attached, /metrics latency.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use pmoas_testbed::{Pod, PodOptions};

use crate::Opts;
use crate::common::*;

/// ns per syscall, without and with the exporter (see [`syscall_ns`]).
#[derive(Default)]
struct Syscalls {
    off: Vec<f64>,
    on: Vec<f64>,
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
    /// Of `lost`: runs the kernel skipped (nested on one CPU).
    skipped: f64,
    /// Connections through the sidecar during the round.
    connections: f64,
    /// (program, run time ns, runs) during the round.
    programs: Vec<(String, f64, f64)>,
}

/// ns per 1-byte read(2) of /dev/zero, median of 3 runs of 1M reads: what
/// any syscall of the node costs. A syscall tracepoint (the accept-wait
/// program's) sends every syscall of every task through the kernel's slow
/// path while it is attached.
fn syscall_ns() -> Result<f64> {
    use std::io::Read;
    const READS: u32 = 1_000_000;
    let mut zero = std::fs::File::open("/dev/zero")?;
    let mut byte = [0u8; 1];
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..READS {
            zero.read_exact(&mut byte)?;
        }
        runs.push(t.elapsed().as_nanos() as f64 / f64::from(READS));
    }
    Ok(percentile(&runs, 0.5))
}

pub fn run(o: &Opts) -> Result<()> {
    let pod = Pod::up(&PodOptions::default())?;
    eprintln!("pmoas-bench: testbed {} up; warming up", pod.state.name);
    wrk(&pod, o, 10, Connections::Close, || {})?;

    // Start-up to the first successful scrape; and the cost of one syscall
    // with the exporter's programs attached (idle machine) and without.
    let mut startups = Vec::new();
    let mut syscalls = Syscalls::default();
    for _ in 0..5 {
        let (e, took) = Exporter::start(&o.exporter, &["--collectors", "socket"])?;
        startups.push(took.as_secs_f64() * 1000.0);
        syscalls.on.push(syscall_ns()?);
        e.stop();
        syscalls.off.push(syscall_ns()?);
    }
    eprintln!("pmoas-bench: start-up {startups:?} ms; syscall ns off {:?} on {:?}", syscalls.off, syscalls.on);

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
                let w = wrk(&pod, o, o.seconds, Connections::Close, || {})?;
                eprintln!("pmoas-bench: round {round} off: {:.0} req/s", w.requests_per_sec);
                off.push(w);
                continue;
            }
            let (e, _) = Exporter::start(&o.exporter, &["--collectors", "socket"])?;
            set_bpf_stats(true);
            let sidecar = format!("container=\"{}\"", &pod.state.sidecar_id[..12]);
            let (_, before) = http_get(e.addr, "/metrics")?;
            let (bpf_ns0, bpf_runs0) = bpf_totals(&before, &[]);
            let cpu0 = e.cpu_seconds();
            let t0 = Instant::now();
            let mut last_scrape = Instant::now();
            // Scrape every 5 s during the load, harder than Prometheus's
            // usual 15 s: its cost is in the CPU figure.
            let w = wrk(&pod, o, o.seconds, Connections::Close, || {
                if last_scrape.elapsed() >= Duration::from_secs(5) {
                    let _ = http_get(e.addr, "/metrics");
                    last_scrape = Instant::now();
                }
            })?;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = e.cpu_seconds() - cpu0;
            let (_, after) = http_get(e.addr, "/metrics")?;
            set_bpf_stats(false);
            let (bpf_ns1, bpf_runs1) = bpf_totals(&after, &[]);
            let programs = program_deltas(&before, &after, "collector=\"socket\"");
            let bpf_percent = (bpf_ns1 - bpf_ns0) / 1e9 / wall * 100.0;
            let bpf_ns_per_run = (bpf_ns1 - bpf_ns0) / (bpf_runs1 - bpf_runs0).max(1.0);
            let accepts = metric(&after, "pmoas_tcp_accepts_total", &[&sidecar])
                - metric(&before, "pmoas_tcp_accepts_total", &[&sidecar]);
            let lost = metric(&after, "pmoas_ebpf_events_lost_total", &[]);
            let skipped = metric(&after, "pmoas_ebpf_events_lost_total", &["reason=\"recursion\""]);
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
                skipped,
                connections: accepts,
                programs,
                wrk: w,
            });
        }
    }
    pod.down()?;

    let off_rps: Vec<f64> = off.iter().map(|w| w.requests_per_sec).collect();
    let on_rps: Vec<f64> = on.iter().map(|r| r.wrk.requests_per_sec).collect();
    let ratio = mean(&on_rps) / mean(&off_rps);
    let cpu_per_10k: Vec<f64> = on.iter().map(|r| r.cpu_percent * 10_000.0 / r.conns_per_sec.max(1.0)).collect();
    let report = render(o, &off, &on, ratio, &cpu_per_10k, &startups, &syscalls, &scrape_ms, page_bytes, series);
    write_section(&o.out, "socket", &report)?;
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
    syscalls: &Syscalls,
    scrape_ms: &[f64],
    page_bytes: usize,
    series: usize,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## socket collector: exporter off vs on through Envoy\n");
    let _ = writeln!(
        s,
        "Measured {}. wrk `-t2 -c{} -d{}s -H 'Connection: close'` from outside the \
         testbed pod through Envoy (1 worker) into nginx, {} alternating rounds per side, each round with a fresh \
         exporter (`--collectors socket`, release build) scraped every 5 s during the load.\n",
        machine(),
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
    let _ = writeln!(
        s,
        "| lost events, all rounds (of them, runs the kernel skipped because the program was already running on that CPU: {}) | {} | 0 |",
        on.iter().map(|r| r.skipped).sum::<f64>(),
        on.iter().map(|r| r.lost).sum::<f64>()
    );
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
    let (sys_off, sys_on) = (percentile(&syscalls.off, 0.5), percentile(&syscalls.on, 0.5));
    let _ = writeln!(
        s,
        "| one syscall (1-byte read of /dev/zero), idle machine, median of {} alternations: off / on, added | {sys_off:.0} / {sys_on:.0} ns, +{:.0} ns | (no target; reported) |",
        syscalls.off.len(),
        sys_on - sys_off
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

    // Per program, over all rounds: which hook the run time goes to.
    let connections: f64 = on.iter().map(|r| r.connections).sum();
    let mut names: Vec<&str> = on.iter().flat_map(|r| r.programs.iter().map(|(p, _, _)| p.as_str())).collect();
    names.sort_unstable();
    names.dedup();
    let total_ns: f64 = on.iter().flat_map(|r| r.programs.iter().map(|(_, ns, _)| ns)).sum();
    let _ = writeln!(s, "\nPer program, all rounds: runs per connection through the sidecar, run time per run.\n");
    let _ = writeln!(s, "| program | runs per connection | ns per run | share of the eBPF time |");
    let _ = writeln!(s, "|---|---|---|---|");
    for name in names {
        let (ns, runs) = on
            .iter()
            .flat_map(|r| r.programs.iter().filter(|(p, _, _)| p == name))
            .fold((0.0, 0.0), |(n, k), (_, ns, runs)| (n + ns, k + runs));
        let _ = writeln!(
            s,
            "| `{name}` | {:.2} | {:.0} | {:.1} % |",
            runs / connections.max(1.0),
            ns / runs.max(1.0),
            ns / total_ns.max(1.0) * 100.0
        );
    }
    s
}
