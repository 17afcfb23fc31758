//! The http collector's cost: keep-alive requests through Envoy on a
//! testbed pod, HTTP/1.1 from wrk into nginx and gRPC from h2load into the
//! testbed's Greeter, in rounds that rotate: no exporter, the socket and
//! cgroup collectors (the default ones), and those plus http (with and
//! without kernel bpf stats). Per arm: requests/s, the whole machine's CPU
//! per request (the "<= 5% more CPU per request"), the http
//! programs' run time per observed exchange (bpf stats) and per program,
//! the exporter's CPU and RSS, the http collector's lost events, and the
//! requests it counted at the app against those the load generator saw
//! served.
//!
//! Each request through the sidecar is observed three times (Envoy's
//! server and client sides, the app's server side; the client is outside
//! the pod): eBPF time per exchange is the time per request / 3.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Result, ensure};
use pmoas_testbed::{Pod, PodOptions};

use crate::Opts;
use crate::common::*;

const LOAD_SCRAPE: Duration = Duration::from_secs(5);
const HTTP: [&str; 1] = ["collector=\"http\""];
/// Exchanges the http collector sees per request through the sidecar.
const EXCHANGES_PER_REQUEST: f64 = 3.0;

const ARMS: [Arm; 4] = [Arm::None, Arm::Default, Arm::HttpNoStats, Arm::Http];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    None,
    /// socket + cgroup, the default collectors.
    Default,
    /// socket + cgroup + http as users run it: kernel.bpf_stats_enabled=0.
    HttpNoStats,
    Http,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::None => "no exporter",
            Arm::Default => "socket + cgroup",
            Arm::HttpNoStats => "socket + cgroup + http, bpf stats off",
            Arm::Http => "socket + cgroup + http",
        }
    }

    fn collectors(self) -> &'static str {
        match self {
            Arm::None => "",
            Arm::Default => "socket,cgroup",
            Arm::HttpNoStats | Arm::Http => "socket,cgroup,http",
        }
    }
}

struct Window {
    wrk: Wrk,
    wall: f64,
    busy: f64,
    exporter_cpu: f64,
    bpf_ns: f64,
    bpf_runs: f64,
    lost: f64,
    counted: f64,
    rss_mib: f64,
    /// (program, run time ns, runs) over the window, per http program.
    programs: Vec<(String, f64, f64)>,
}

impl Window {
    fn requests(&self) -> f64 {
        self.wrk.requests_per_sec * self.wall
    }
    fn cpu_us_per_request(&self) -> f64 {
        self.busy / self.requests().max(1.0) * 1e6
    }
    fn bpf_ns_per_request(&self) -> f64 {
        self.bpf_ns / self.requests().max(1.0)
    }
}

fn window(pod: &Pod, o: &Opts, arm: Arm, load: Load) -> Result<Window> {
    if arm == Arm::None {
        let l = load_window_of(pod, o, None, LOAD_SCRAPE, load)?;
        return Ok(Window {
            wrk: l.wrk,
            wall: l.wall,
            busy: l.busy,
            exporter_cpu: 0.0,
            bpf_ns: 0.0,
            bpf_runs: 0.0,
            lost: 0.0,
            counted: 0.0,
            rss_mib: 0.0,
            programs: Vec::new(),
        });
    }
    let collectors = arm.collectors();
    let http = arm != Arm::Default;
    let (e, _) = Exporter::start_until(&o.exporter, &["--collectors", collectors], |body| {
        !http || metric(body, "pmoas_scrape_collector_success", &HTTP) == 1.0
    })?;
    let e = Running(Some(e));
    let _stats = if arm == Arm::HttpNoStats {
        set_bpf_stats(false);
        None
    } else {
        Some(BpfStats::on())
    };
    if http {
        let (_, page) = http_get(e.get().addr, "/metrics")?;
        // The eight system call exits and the close (collectors/src/http/capture.rs).
        ensure!(metric(&page, "pmoas_ebpf_program_attached", &HTTP) >= 9.0, "the http programs are not attached");
    }
    let l = load_window_of(pod, o, Some(e.get()), LOAD_SCRAPE, load)?;
    let (ns0, runs0) = bpf_totals(&l.before, &HTTP);
    let (ns1, runs1) = bpf_totals(&l.after, &HTTP);
    let delta = |name: &str, want: &[&str]| metric(&l.after, name, want) - metric(&l.before, name, want);
    // Kernel losses and parser losses, except bytes of connections joined
    // mid-message (`unknown_protocol`), which are not requests.
    let lost = delta("pmoas_ebpf_events_lost_total", &HTTP)
        - delta("pmoas_ebpf_events_lost_total", &[HTTP[0], "reason=\"unknown_protocol\""]);
    let counted = match load {
        Load::Wrk => delta("pmoas_http_server_request_duration_seconds_count", &["role=\"app\""]),
        // At Envoy's downstream side: h2load's connections are new in each
        // window, Envoy's pooled one to the Greeter is not (see render).
        Load::GrpcH2load => delta("pmoas_grpc_server_request_duration_seconds_count", &["role=\"sidecar\""]),
    };
    let rss = e.get().rss_mib().0;
    Ok(Window {
        wrk: l.wrk,
        wall: l.wall,
        busy: l.busy,
        exporter_cpu: l.exporter_cpu,
        bpf_ns: ns1 - ns0,
        bpf_runs: runs1 - runs0,
        lost,
        counted,
        rss_mib: rss,
        programs: program_deltas(&l.before, &l.after, HTTP[0]),
    })
}

pub fn run(o: &Opts) -> Result<()> {
    let pod = Pod::up(&PodOptions { grpc: true, ..Default::default() })?;
    eprintln!("pmoas-bench: testbed {} up; warming up", pod.state.name);
    wrk(&pod, o, 10, Connections::KeepAlive, || {})?;
    h2load_grpc(&pod, 3, || {})?;
    let mut windows: Vec<(Load, Arm, Window)> = Vec::new();
    for load in [Load::Wrk, Load::GrpcH2load] {
        for round in 0..o.rounds {
            for k in 0..ARMS.len() {
                let arm = ARMS[(round + k) % ARMS.len()];
                let w = window(&pod, o, arm, load)?;
                eprintln!(
                    "pmoas-bench: {load:?} round {round} {}: {:.0} req/s, {:.1} us CPU/request, eBPF {:.0} ns/request",
                    arm.name(),
                    w.wrk.requests_per_sec,
                    w.cpu_us_per_request(),
                    w.bpf_ns_per_request()
                );
                windows.push((load, arm, w));
            }
        }
    }
    pod.down()?;
    let report = render(o, &windows);
    write_section(&o.out, "http", &report)?;
    println!("{report}");
    Ok(())
}

/// Per round, the change in machine CPU per request of `arm` against `base`.
fn paired(windows: &[(Arm, &Window)], arm: Arm, base: Arm) -> Vec<f64> {
    windows
        .chunks(ARMS.len())
        .filter_map(|round| {
            let cpu = |a: Arm| round.iter().find(|(x, _)| *x == a).map(|(_, w)| w.cpu_us_per_request());
            Some((cpu(arm)? / cpu(base)? - 1.0) * 100.0)
        })
        .collect()
}

fn render(o: &Opts, windows: &[(Load, Arm, Window)]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "## http collector: wrk keep-alive and h2load gRPC through Envoy\n");
    let _ = writeln!(
        t,
        "Measured {}. Reproduce (as root): `scripts/bench.sh http --rounds {} --seconds {} --connections {}`.\n",
        machine(),
        o.rounds,
        o.seconds,
        o.connections
    );
    let _ = writeln!(
        t,
        "Rounds rotate the arms. Each request is observed {EXCHANGES_PER_REQUEST} times by the http collector \
         (Envoy's server and client sides, the app's server side; the client is outside the pod). CPU per request \
         is the whole machine's busy time over the requests served. The arm without bpf stats is what users run.\n"
    );
    let _ = writeln!(t, "### HTTP/1.1: wrk `-t2 -c{} -d{}s` keep-alive into nginx\n", o.connections, o.seconds);
    table(&mut t, windows, Load::Wrk, "nginx");
    let _ = writeln!(
        t,
        "\n### gRPC: h2load `-c{H2LOAD_CONNECTIONS} -m{H2LOAD_STREAMS} -D{}` Greeter.SayHello over h2c into the \
         testbed's Python grpcio server\n",
        o.seconds
    );
    table(&mut t, windows, Load::GrpcH2load, "Envoy");
    let _ = writeln!(
        t,
        "\nCalls are counted at Envoy's downstream side, whose connections h2load opens in each window. \
         Envoy's pooled HTTP/2 connection to the Greeter is older than the exporter (the warm-up opened it): \
         grpc-core and Envoy index every header field in HPACK's dynamic table, so the calls on it are not \
         decodable and are counted as lost (`h2_*` reasons), never labelled wrong (docs/http.md, connections \
         older than the exporter). On a new connection the Greeter's side is counted in full: its reads of \
         many frames at once (grpc-core reads what queued up, often more than 8 KiB) are captured up to \
         64 KiB per call, in continuation records (docs/http.md, capture; measured by hand there). The eBPF \
         cost covers all three sides."
    );
    let _ = writeln!(
        t,
        "\nThe machine-CPU columns carry this 2-core VM's noise; the eBPF run time is the kernel's own measure. \
         User-space parsing is in the exporter's CPU column. \"Counted at the app / served\" compares the \
         collector's count at the app with the load generator's (taken over the same window, so small edge \
         differences are the window's, not losses)."
    );
    t
}

/// The arms' table of one load, the run time per program and its share.
fn table(t: &mut String, windows: &[(Load, Arm, Window)], load: Load, app: &str) {
    let of = |arm: Arm| windows.iter().filter(move |(l, a, _)| *l == load && *a == arm).map(|(_, _, w)| w);
    let avg = |arm: Arm, f: &dyn Fn(&Window) -> f64| mean(&of(arm).map(f).collect::<Vec<_>>());
    let cpu = |arm: Arm| avg(arm, &|w| w.cpu_us_per_request());
    let _ = writeln!(
        t,
        "| arm | req/s (mean, spread +-%) | machine CPU per request | vs no exporter | vs socket + cgroup (median of \
         rounds) | http eBPF ns / request | http eBPF ns / exchange | http runs / request | exporter CPU | exporter \
         RSS | http lost | counted at {app} / served | load errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let rounds: Vec<(Arm, &Window)> = windows.iter().filter(|(l, _, _)| *l == load).map(|(_, a, w)| (*a, w)).collect();
    for arm in ARMS {
        let rps: Vec<f64> = of(arm).map(|w| w.wrk.requests_per_sec).collect();
        let http = matches!(arm, Arm::Http | Arm::HttpNoStats);
        let stats = arm == Arm::Http;
        let ns = avg(arm, &|w| w.bpf_ns_per_request());
        let runs = avg(arm, &|w| w.bpf_runs / w.requests().max(1.0));
        let counted: f64 = of(arm).map(|w| w.counted).sum();
        let served: f64 = of(arm).map(|w| w.requests()).sum();
        let vs_default =
            if http { format!("{:+.1} %", median(&paired(&rounds, arm, Arm::Default))) } else { "-".into() };
        let _ = writeln!(
            t,
            "| {} | {:.0} (+-{:.0}) | {:.1} us | {} | {vs_default} | {} | {} | {} | {} | {} | {} | {} | {} |",
            arm.name(),
            mean(&rps),
            spread(&rps).0,
            cpu(arm),
            if arm == Arm::None { "-".into() } else { format!("{:+.1} %", (cpu(arm) / cpu(Arm::None) - 1.0) * 100.0) },
            if stats { format!("{ns:.0}") } else { "-".into() },
            if stats { format!("{:.0}", ns / EXCHANGES_PER_REQUEST) } else { "-".into() },
            if stats { format!("{runs:.1}") } else { "-".into() },
            if arm == Arm::None { "-".into() } else { format!("{:.2} %", avg(arm, &|w| w.exporter_cpu)) },
            if arm == Arm::None { "-".into() } else { format!("{:.1} MiB", avg(arm, &|w| w.rss_mib)) },
            if http { format!("{:.0}", of(arm).map(|w| w.lost).sum::<f64>()) } else { "-".into() },
            if http { format!("{:.4}", counted / served.max(1.0)) } else { "-".into() },
            of(arm).map(|w| w.wrk.errors).sum::<u64>(),
        );
    }
    let mut programs: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for w in of(Arm::Http) {
        for (p, ns, runs) in &w.programs {
            let e = programs.entry(p.as_str()).or_default();
            e.0 += ns;
            e.1 += runs;
        }
    }
    let requests: f64 = of(Arm::Http).map(|w| w.requests()).sum::<f64>().max(1.0);
    let _ = writeln!(
        t,
        "\nPer http program (arm with bpf stats, all rounds): where the run time per request goes.\n\n\
         | program | runs / request | ns / run | ns / request |\n|---|---|---|---|"
    );
    for (p, (ns, runs)) in programs.iter().filter(|(_, (_, runs))| *runs > 0.0) {
        let _ = writeln!(t, "| {p} | {:.2} | {:.0} | {:.0} |", runs / requests, ns / runs, ns / requests);
    }
    let share = avg(Arm::Http, &|w| w.bpf_ns_per_request()) / 1000.0 / cpu(Arm::None) * 100.0;
    let user = (avg(Arm::HttpNoStats, &|w| w.exporter_cpu) - avg(Arm::Default, &|w| w.exporter_cpu))
        / 100.0
        / avg(Arm::HttpNoStats, &|w| w.wrk.requests_per_sec).max(1.0)
        * 1e6;
    let _ = writeln!(
        t,
        "\nThe http programs' own run time is {share:.2} % of the CPU a request costs without the exporter; the \
         exporter's user space adds about {user:.1} us per request (its CPU with http minus without, over the \
         requests served). Target: <= 5 % more CPU per request with http on; the peers' anchor is ~500 ns of eBPF \
         per request."
    );
}
