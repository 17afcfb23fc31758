//! The cgroup collector's cost.
//!
//! 1. 100 containers (50 lite pods x 2, idle processes in kubelet-layout
//!    cgroups): the collector's share of a scrape
//!    (`pmoas_scrape_collector_duration_seconds{collector="cgroup"}`) and of
//!    the whole /metrics request, and the exporter's CPU: idle (no scrapes)
//!    and per scrape, combined into what a 15 s scrape interval costs.
//! 2. The per-packet cgroup_skb programs: on a testbed pod (Envoy in front
//!    of nginx), wrk drives keep-alive requests through the sidecar in
//!    rounds that rotate no exporter, the collector without its cgroup_skb
//!    programs (`--collector.cgroup.network-per-container false`) and with
//!    them. The same collector in both exporter arms isolates the
//!    per-packet cost; the programs' own run time comes from bpf stats.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use pmoas_testbed::lite::LitePod;
use pmoas_testbed::{Pod, PodOptions};

use crate::Opts;
use crate::common::*;

const PODS: usize = 50;
const CONTAINERS: usize = PODS * 2;
/// Scrapes of the 100-container exporter, one a second.
const SCRAPES: usize = 30;
/// The idle window (no scrapes) of the CPU measurement.
const IDLE_SECONDS: u64 = 30;
/// The scrape interval the CPU target is stated for.
const INTERVAL: f64 = 15.0;
/// Scrape interval during the wrk rounds (harder than Prometheus's usual 15 s).
const LOAD_SCRAPE: Duration = Duration::from_secs(5);

/// The value of label `key` of a sample line.
pub(crate) fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let labels = &line[line.find('{')? + 1..line.rfind('}')?];
    let pat = format!("{key}=\"");
    let mut from = 0;
    while let Some(i) = labels[from..].find(&pat) {
        let at = from + i;
        if at == 0 || labels.as_bytes()[at - 1] == b',' {
            let rest = &labels[at + pat.len()..];
            return rest.find('"').map(|e| &rest[..e]);
        }
        from = at + pat.len();
    }
    None
}

/// Containers of our pods (by pod UID: no Kubernetes API here) with a CPU series.
fn our_containers(body: &str, uids: &HashSet<String>) -> usize {
    samples(body, "pmoas_container_cpu_usage_seconds_total")
        .filter(|l| label(l, "pod").is_some_and(|p| uids.contains(p)))
        .filter(|l| label(l, "container").is_some_and(|c| !c.is_empty()))
        .count()
}

/// `pmoas_cgroup_sources` of one resource, as `source n, ...`.
fn sources(body: &str, resource: &str) -> String {
    let want = format!("resource=\"{resource}\"");
    samples(body, "pmoas_cgroup_sources")
        .filter(|l| l.contains(&want))
        .filter_map(|l| Some(format!("{} {:.0}", label(l, "source")?, l.rsplit_once(' ')?.1.parse::<f64>().ok()?)))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Scale {
    seen_ms: f64,
    /// The collector's own time and the whole request, per scrape (ms).
    collector_ms: Vec<f64>,
    request_ms: Vec<f64>,
    series: usize,
    container_series: usize,
    page_bytes: usize,
    idle_cpu: f64,
    idle_wall: f64,
    scrape_cpu: f64,
    scrape_wall: f64,
    rss: f64,
    hwm: f64,
    sources: String,
    /// Live cgroups the collector reads (containers, pod cgroups, others).
    cgroups: f64,
}

impl Scale {
    /// Exporter CPU per second with no scrapes (core-seconds per second).
    fn idle_rate(&self) -> f64 {
        self.idle_cpu / self.idle_wall
    }

    /// CPU seconds one scrape adds over idle.
    fn per_scrape(&self) -> f64 {
        (self.scrape_cpu - self.idle_rate() * self.scrape_wall) / self.collector_ms.len() as f64
    }

    /// Fraction of a core at one scrape every `INTERVAL`.
    fn at_interval(&self) -> f64 {
        self.per_scrape() / INTERVAL + self.idle_rate()
    }
}

fn scale(o: &Opts) -> Result<Scale> {
    eprintln!("pmoas-bench: creating {PODS} pods x 2 containers (cgroups, idle `envoy` and `app`)");
    let mut pods = Vec::new();
    for _ in 0..PODS {
        pods.push(LitePod::create(&[Some("envoy"), Some("app")])?);
    }
    let uids: HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();

    let started = Instant::now();
    let (e, _) = Exporter::start_until(&o.exporter, &["--collectors", "cgroup"], |body| {
        metric(body, "pmoas_scrape_collector_success", &["collector=\"cgroup\""]) == 1.0
    })?;
    let e = Running(Some(e));
    let seen_ms = loop {
        let (_, body) = http_get(e.get().addr, "/metrics")?;
        if our_containers(&body, &uids) >= CONTAINERS {
            break started.elapsed().as_secs_f64() * 1000.0;
        }
        ensure!(started.elapsed() < Duration::from_secs(30), "{CONTAINERS} containers not seen in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the first reads (finding each cgroup's v1 directories) pass.
    std::thread::sleep(Duration::from_secs(2));
    let _ = http_get(e.get().addr, "/metrics")?;

    eprintln!("pmoas-bench: {CONTAINERS} containers seen after {seen_ms:.0} ms; {IDLE_SECONDS} s idle");
    let (cpu0, t0) = (e.get().cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    let (idle_cpu, idle_wall) = (e.get().cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());

    eprintln!("pmoas-bench: {SCRAPES} scrapes, one a second");
    let mut collector_ms = Vec::new();
    let mut request_ms = Vec::new();
    let mut body = String::new();
    let (cpu0, t0) = (e.get().cpu_seconds(), Instant::now());
    for i in 0..SCRAPES {
        let at = t0 + Duration::from_secs(i as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let (status, b) = http_get(e.get().addr, "/metrics")?;
        request_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(status == 200, "scrape answered {status}");
        ensure!(
            metric(&b, "pmoas_scrape_collector_success", &["collector=\"cgroup\""]) == 1.0,
            "the cgroup collector failed a scrape"
        );
        collector_ms.push(metric(&b, "pmoas_scrape_collector_duration_seconds", &["collector=\"cgroup\""]) * 1000.0);
        body = b;
    }
    let end = t0 + Duration::from_secs(SCRAPES as u64);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let (scrape_cpu, scrape_wall) = (e.get().cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let (rss, hwm) = e.get().rss_mib();
    drop(e);
    drop(pods);
    Ok(Scale {
        seen_ms,
        collector_ms,
        request_ms,
        series: body.lines().filter(|l| !l.starts_with('#')).count(),
        container_series: body.lines().filter(|l| !l.starts_with('#') && label(l, "container").is_some()).count(),
        page_bytes: body.len(),
        idle_cpu,
        idle_wall,
        scrape_cpu,
        scrape_wall,
        rss,
        hwm,
        sources: format!("cpu: {}; memory: {}", sources(&body, "cpu"), sources(&body, "memory")),
        cgroups: metric(&body, "pmoas_cgroup_sources", &["resource=\"cpu\""]),
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    /// No exporter.
    None,
    /// `--collectors cgroup --collector.cgroup.network-per-container false`.
    NoSkb,
    /// `--collectors cgroup`: cgroup_skb ingress and egress on the v2 root.
    Skb,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::None => "no exporter",
            Arm::NoSkb => "(a) without cgroup_skb",
            Arm::Skb => "(b) with cgroup_skb",
        }
    }
}

struct Window {
    wrk: Wrk,
    wall: f64,
    /// Exporter CPU, % of a core.
    exporter_cpu: f64,
    /// cgroup_skb programs (ingress + egress): runs and run time (ns).
    skb_runs: f64,
    skb_ns: f64,
    /// CPU time the whole machine was busy (all CPUs, seconds).
    busy: f64,
}

impl Window {
    /// The cgroup_skb programs' share of the CPU time the machine used:
    /// what they cost the throughput when the load is CPU-bound.
    fn skb_share(&self) -> f64 {
        self.skb_ns / 1e9 / self.busy.max(1e-9)
    }

    fn skb_percent(&self) -> f64 {
        self.skb_ns / 1e9 / self.wall * 100.0
    }

    fn ns_per_run(&self) -> f64 {
        self.skb_ns / self.skb_runs.max(1.0)
    }

    fn runs_per_request(&self) -> f64 {
        self.skb_runs / self.wall / self.wrk.requests_per_sec.max(1.0)
    }
}

#[derive(Default)]
struct Rounds {
    none: Vec<Window>,
    no_skb: Vec<Window>,
    skb: Vec<Window>,
}

/// The labels of the cgroup_skb programs.
const SKB: [&str; 2] = ["collector=\"cgroup\"", "program=\"cgroup_skb_"];

fn skb_attached(body: &str) -> f64 {
    metric(body, "pmoas_ebpf_program_attached", &SKB)
}

fn window(pod: &Pod, o: &Opts, arm: Arm) -> Result<Window> {
    let done = |l: LoadWindow, skb: (f64, f64)| Window {
        wrk: l.wrk,
        wall: l.wall,
        exporter_cpu: l.exporter_cpu,
        skb_runs: skb.1,
        skb_ns: skb.0,
        busy: l.busy,
    };
    if arm == Arm::None {
        return Ok(done(load_window(pod, o, None, LOAD_SCRAPE)?, (0.0, 0.0)));
    }
    let mut args = vec!["--collectors", "cgroup"];
    if arm == Arm::NoSkb {
        args.extend(["--collector.cgroup.network-per-container", "false"]);
    }
    let (e, _) = Exporter::start_until(&o.exporter, &args, |body| {
        metric(body, "pmoas_scrape_collector_success", &["collector=\"cgroup\""]) == 1.0
    })?;
    let e = Running(Some(e));
    let (_, before) = http_get(e.get().addr, "/metrics")?;
    let want = if arm == Arm::Skb { 2.0 } else { 0.0 };
    ensure!(
        skb_attached(&before) == want,
        "{}: {} cgroup_skb programs attached, expected {want}",
        arm.name(),
        skb_attached(&before)
    );
    let _stats = BpfStats::on();
    let l = load_window(pod, o, Some(e.get()), LOAD_SCRAPE)?;
    let (ns0, runs0) = bpf_totals(&l.before, &SKB);
    let (ns1, runs1) = bpf_totals(&l.after, &SKB);
    Ok(done(l, (ns1 - ns0, runs1 - runs0)))
}

fn throughput(o: &Opts) -> Result<Rounds> {
    let pod = Pod::up(&PodOptions::default())?;
    eprintln!("pmoas-bench: testbed {} up; warming up", pod.state.name);
    wrk(&pod, o, 10, Connections::KeepAlive, || {})?;
    let mut r = Rounds::default();
    let arms = [Arm::None, Arm::NoSkb, Arm::Skb];
    for round in 0..o.rounds {
        // Rotate which arm goes first, so drift favours none.
        for k in 0..arms.len() {
            let arm = arms[(round + k) % arms.len()];
            let w = window(&pod, o, arm)?;
            eprintln!(
                "pmoas-bench: round {round} {}: {:.0} req/s, cgroup_skb {:.0} runs/s at {:.0} ns",
                arm.name(),
                w.wrk.requests_per_sec,
                w.skb_runs / w.wall,
                w.ns_per_run()
            );
            match arm {
                Arm::None => r.none.push(w),
                Arm::NoSkb => r.no_skb.push(w),
                Arm::Skb => r.skb.push(w),
            }
        }
    }
    pod.down()?;
    Ok(r)
}

pub fn run(o: &Opts) -> Result<()> {
    let s = scale(o)?;
    let r = throughput(o)?;
    let report = render(o, &s, &r);
    write_section(&o.out, "cgroup", &report)?;
    println!("{report}");
    Ok(())
}

fn rps(v: &[Window]) -> Vec<f64> {
    v.iter().map(|w| w.wrk.requests_per_sec).collect()
}

/// Whether a time target is met by the median and by the p99.
fn verdict(median: f64, p99: f64, target: f64) -> &'static str {
    match (median <= target, p99 <= target) {
        (true, true) => "yes",
        (true, false) => "median yes, p99 no",
        _ => "no",
    }
}

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

fn render(o: &Opts, s: &Scale, r: &Rounds) -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let mut t = String::new();
    let _ = writeln!(t, "## cgroup collector: 100 containers, and cgroup_skb through Envoy\n");
    let _ = writeln!(
        t,
        "Measured {}. Reproduce (as root): `scripts/bench.sh cgroup --rounds {} --seconds {} --connections {}`.\n",
        machine(),
        o.rounds,
        o.seconds,
        o.connections
    );

    let _ = writeln!(t, "### 100 containers: scrape time and exporter CPU\n");
    let _ = writeln!(
        t,
        "{PODS} lite pods x 2 containers (kubelet-layout cgroups, each with an idle process, `envoy` and `app`; no \
         Kubernetes API, so pods are named by UID), one exporter `--collectors cgroup` (release build). All \
         {CONTAINERS} containers had CPU series {:.0} ms after the exporter started. Each scrape reads {:.0} live \
         cgroups: the {CONTAINERS} containers, their {PODS} pod cgroups and {:.0} others already on the host; their \
         sources (`pmoas_cgroup_sources`): {}. Then {IDLE_SECONDS} s without scrapes, then {SCRAPES} scrapes one a \
         second.\n",
        s.seen_ms,
        s.cgroups,
        s.cgroups - (CONTAINERS + PODS) as f64,
        s.sources
    );
    let _ = writeln!(t, "| measure | result | target | met |\n|---|---|---|---|");
    let (c50, c99, cmax) =
        (percentile(&s.collector_ms, 0.5), percentile(&s.collector_ms, 0.99), percentile(&s.collector_ms, 1.0));
    let _ = writeln!(
        t,
        "| the collector's share of a scrape (`pmoas_scrape_collector_duration_seconds{{collector=\"cgroup\"}}`), \
         median / p99 / max of {} (median per live cgroup: {:.0} us) | {c50:.2} / {c99:.2} / {cmax:.2} ms | \
         <= 20 ms | {} |",
        s.collector_ms.len(),
        c50 * 1000.0 / s.cgroups.max(1.0),
        verdict(c50, c99, 20.0)
    );
    let _ = writeln!(
        t,
        "| whole /metrics request, median / p99 / max ({} series, {} with a `container` label; {} bytes) | \
         {:.2} / {:.2} / {:.2} ms | | |",
        s.series,
        s.container_series,
        s.page_bytes,
        percentile(&s.request_ms, 0.5),
        percentile(&s.request_ms, 0.99),
        percentile(&s.request_ms, 1.0)
    );
    let at15 = s.at_interval() * 100.0;
    let _ = writeln!(
        t,
        "| exporter CPU at a {INTERVAL:.0} s scrape interval: idle + CPU per scrape / {INTERVAL:.0} s (whole \
         process: this collector, discovery, HTTP) | {at15:.3} % of a core | < 1 % | {} |",
        yes(at15 < 1.0)
    );
    let _ = writeln!(
        t,
        "| ... idle, no scrapes, over {:.0} s (discovery's cgroup rescans every 5 s) | {:.3} % of a core | | |",
        s.idle_wall,
        s.idle_rate() * 100.0
    );
    let _ = writeln!(
        t,
        "| ... CPU per scrape ({} scrapes in {:.0} s: {:.3} % of a core measured at 1 s, minus idle) | {:.2} ms | | |",
        s.collector_ms.len(),
        s.scrape_wall,
        s.scrape_cpu / s.scrape_wall * 100.0,
        s.per_scrape() * 1000.0
    );
    let _ = writeln!(t, "| exporter RSS after the scrapes / peak | {:.1} / {:.1} MiB | | |", s.rss, s.hwm);

    let _ = writeln!(t, "\n### cgroup_skb: wrk keep-alive through Envoy\n");
    let _ = writeln!(
        t,
        "wrk `-t2 -c{} -d{}s` with keep-alive connections, from the client cgroup on the host through the testbed \
         pod's Envoy (1 worker) into nginx. {} rounds; each runs three arms in rotating order: no exporter; \
         (a) `--collectors cgroup --collector.cgroup.network-per-container false`; (b) `--collectors cgroup` \
         (cgroup_skb ingress + egress on the cgroup v2 root, one run per packet of every socket of the node). A \
         fresh exporter per arm, scraped every {} s during the load, kernel.bpf_stats_enabled=1 in (a) and (b).\n",
        o.connections,
        o.seconds,
        o.rounds,
        LOAD_SCRAPE.as_secs()
    );
    let _ = writeln!(
        t,
        "| round | no exporter: req/s | (a): req/s | (a): p50 / p99 ms | (b): req/s | (b): p50 / p99 ms | (b)/(a) | \
         cgroup_skb runs/s | runs per request | ns per run | cgroup_skb, % of a core | exporter CPU (a) / (b), % of a core |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, ((n, a), b)) in r.none.iter().zip(&r.no_skb).zip(&r.skb).enumerate() {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.3} | {:.0} | {:.1} | {:.0} | {:.2} | {:.3} / {:.3} |",
            i + 1,
            n.wrk.requests_per_sec,
            a.wrk.requests_per_sec,
            a.wrk.p50_ms,
            a.wrk.p99_ms,
            b.wrk.requests_per_sec,
            b.wrk.p50_ms,
            b.wrk.p99_ms,
            b.wrk.requests_per_sec / a.wrk.requests_per_sec,
            b.skb_runs / b.wall,
            b.runs_per_request(),
            b.ns_per_run(),
            b.skb_percent(),
            a.exporter_cpu,
            b.exporter_cpu
        );
    }
    let (none, a, b) = (rps(&r.none), rps(&r.no_skb), rps(&r.skb));
    let ratio = mean(&b) / mean(&a);
    let pairs: Vec<f64> = b.iter().zip(&a).map(|(b, a)| b / a).collect();
    let (a_half, a_sd) = spread(&a);
    let (n_half, n_sd) = spread(&none);
    let lat = |v: &[Window], f: fn(&Wrk) -> f64| mean(&v.iter().map(|w| f(&w.wrk)).collect::<Vec<_>>());
    let skb_pct = mean(&r.skb.iter().map(Window::skb_percent).collect::<Vec<_>>());
    let ns_run = mean(&r.skb.iter().map(Window::ns_per_run).collect::<Vec<_>>());
    let per_req = mean(&r.skb.iter().map(Window::runs_per_request).collect::<Vec<_>>());
    let errors: u64 = [&r.none, &r.no_skb, &r.skb].iter().flat_map(|v| v.iter()).map(|w| w.wrk.errors).sum();
    let busy = |v: &[Window]| mean(&v.iter().map(|w| w.busy / w.wall / cpus * 100.0).collect::<Vec<_>>());
    let share = mean(&r.skb.iter().map(Window::skb_share).collect::<Vec<_>>()) * 100.0;
    // Two standard errors of the paired ratios: what this run can resolve.
    let resolve = 2.0 * spread(&pairs).1 / 100.0 * mean(&pairs) / (pairs.len() as f64).sqrt();
    let throughput_met = if pairs.len() < 2 {
        // One pair has no spread: nothing can be told from it.
        "not resolved (fewer than 2 rounds)".to_string()
    } else if ratio - resolve >= 0.99 {
        "yes".to_string()
    } else if ratio + resolve < 0.99 {
        "no".to_string()
    } else {
        format!("not resolved (±{:.1}% at this noise)", resolve * 100.0)
    };
    let _ = writeln!(t, "\n| measure | result | target | met |\n|---|---|---|---|");
    let _ = writeln!(
        t,
        "| throughput with cgroup_skb, mean (b) / mean (a) (paired rounds: median {:.3}, range {:.3} .. {:.3}) | \
         {ratio:.4} | >= 0.99 | {throughput_met} |",
        percentile(&pairs, 0.5),
        percentile(&pairs, 0.0),
        percentile(&pairs, 1.0),
    );
    let _ = writeln!(
        t,
        "| cgroup_skb run time / CPU time the whole machine used, (b) rounds: the CPU each request costs more (the \
         throughput loss if the load were CPU-bound; bpf stats on, so their own timing is included) | {share:.2} % | \
         <= 1 % | {} |",
        yes(share <= 1.0)
    );
    let _ = writeln!(
        t,
        "| noise of the machine: spread of the (a) rounds, half range / standard deviation (no-exporter rounds: \
         ±{n_half:.1}% / {n_sd:.1}%) | ±{a_half:.1}% / {a_sd:.1}% | | |"
    );
    let _ = writeln!(
        t,
        "| req/s means: no exporter / (a) / (b); (a) / no exporter | {:.0} / {:.0} / {:.0}; {:.3} | | |",
        mean(&none),
        mean(&a),
        mean(&b),
        mean(&a) / mean(&none)
    );
    let _ = writeln!(
        t,
        "| machine CPU busy during the load, % of the {cpus} CPUs: no exporter / (a) / (b) | {:.1} / {:.1} / {:.1} % \
         | | |",
        busy(&r.none),
        busy(&r.no_skb),
        busy(&r.skb)
    );
    let _ = writeln!(
        t,
        "| latency p50 / p99, means of the rounds: (a) vs (b) | {:.2} / {:.2} vs {:.2} / {:.2} ms | | |",
        lat(&r.no_skb, |w| w.p50_ms),
        lat(&r.no_skb, |w| w.p99_ms),
        lat(&r.skb, |w| w.p50_ms),
        lat(&r.skb, |w| w.p99_ms)
    );
    let _ = writeln!(
        t,
        "| cgroup_skb in the kernel (bpf stats, (b) rounds): runs per request, ns per run, ns per request | \
         {per_req:.1}, {ns_run:.0} ns, {:.0} ns | | |",
        per_req * ns_run
    );
    let _ = writeln!(
        t,
        "| ... run time / wall time (spent in the tasks sending and receiving, not in the exporter) | \
         {skb_pct:.2} % of a core = {:.2} % of the {cpus} CPUs | | |",
        skb_pct / cpus
    );
    let _ = writeln!(t, "| wrk socket errors and non-2xx (all rounds) | {errors} | 0 | {} |", yes(errors == 0));
    t
}
