//! The exporter's memory around large concurrent scrapes.
//!
//! Lite pods of 2 containers each (kubelet-layout cgroups with an idle
//! process), first 110 pods (a page of about 0.8 MB), then 375 (750
//! containers, about 2.6 MB). For each, one exporter `--collectors cgroup`:
//! its steady RSS after a few single scrapes, then rounds of 10 scrapes at
//! once, each round with VmHWM reset just before (`/proc/PID/clear_refs`),
//! so the peak is that of the scrapes and not of start-up, and VmRSS a
//! second after the round. With `--compare PATH`, the same for another
//! build (e.g. the one before a change), side by side.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use pmoas_testbed::lite::LitePod;

use crate::Opts;
use crate::common::*;

/// Pods of the two sizes measured, each of 2 containers.
const SIZES: [usize; 2] = [110, 375];
const CONCURRENT: usize = 10;
/// Time for memory freed at the end of a round to be handed back.
const SETTLE: Duration = Duration::from_secs(1);

struct Round {
    peak: f64,
    after: f64,
    wall_ms: f64,
}

struct Arm {
    name: String,
    containers: usize,
    steady: f64,
    page_bytes: usize,
    series: usize,
    rounds: Vec<Round>,
}

/// Containers of our pods with a CPU series.
fn seen(body: &str, uids: &HashSet<String>) -> usize {
    samples(body, "pmoas_container_cpu_usage_seconds_total")
        .filter(|l| uids.iter().any(|u| l.contains(&format!("pod=\"{u}\""))) && !l.contains("container=\"\""))
        .count()
}

fn measure(name: &str, bin: &Path, uids: &HashSet<String>, rounds: usize) -> Result<Arm> {
    let containers = uids.len() * 2;
    let (e, _) = Exporter::start_until(bin, &["--collectors", "cgroup"], |body| {
        metric(body, "pmoas_scrape_collector_success", &["collector=\"cgroup\""]) == 1.0
    })?;
    let started = Instant::now();
    let mut body = loop {
        let (_, body) = http_get(e.addr, "/metrics")?;
        if seen(&body, uids) >= containers {
            break body;
        }
        ensure!(started.elapsed() < Duration::from_secs(60), "{containers} containers not seen in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    for _ in 0..3 {
        body = http_get(e.addr, "/metrics")?.1;
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(SETTLE);
    let steady = e.rss_mib().0;
    let mut out = Vec::new();
    for round in 0..rounds {
        e.reset_peak()?;
        let barrier = Arc::new(Barrier::new(CONCURRENT));
        let t0 = Instant::now();
        let scrapers: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let (barrier, addr) = (barrier.clone(), e.addr);
                std::thread::spawn(move || {
                    barrier.wait();
                    http_get(addr, "/metrics")
                })
            })
            .collect();
        for s in scrapers {
            let (status, page) = s.join().expect("scraper thread")?;
            ensure!(status == 200, "a scrape answered {status}");
            ensure!(page.len() * 2 > body.len(), "a short page: {} bytes", page.len());
        }
        let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
        std::thread::sleep(SETTLE);
        let (after, peak) = e.rss_mib();
        eprintln!(
            "pmoas-bench: {name}, {containers} containers, round {round}: peak {peak:.1} MiB, {after:.1} MiB after, \
             {wall_ms:.0} ms"
        );
        out.push(Round { peak, after, wall_ms });
    }
    e.stop();
    Ok(Arm {
        name: name.into(),
        containers,
        steady,
        page_bytes: body.len(),
        series: body.lines().filter(|l| !l.starts_with('#')).count(),
        rounds: out,
    })
}

pub fn run(o: &Opts) -> Result<()> {
    let mut pods = Vec::new();
    let mut arms = Vec::new();
    for size in SIZES {
        eprintln!("pmoas-bench: {size} pods x 2 containers");
        while pods.len() < size {
            pods.push(LitePod::create(&[Some("envoy"), Some("app")])?);
        }
        let uids: HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        arms.push(measure("this build", &o.exporter, &uids, o.rounds)?);
        if let Some(other) = &o.compare {
            arms.push(measure(&format!("`{}`", other.display()), other, &uids, o.rounds)?);
        }
    }
    drop(pods);
    let report = render(o, &arms);
    write_section(&o.out, "scrape-memory", &report)?;
    println!("{report}");
    Ok(())
}

fn render(o: &Opts, arms: &[Arm]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "## Exporter memory: {CONCURRENT} concurrent large scrapes\n");
    let compare = o.compare.as_ref().map(|p| format!(" --compare {}", p.display())).unwrap_or_default();
    let _ = writeln!(
        t,
        "Measured {}. Reproduce (as root): `scripts/bench.sh scrape-memory --rounds {}{compare}`.\n",
        machine(),
        o.rounds
    );
    let _ = writeln!(
        t,
        "Lite pods of 2 containers (kubelet-layout cgroups, an idle process in each), {} then {} pods, one \
         exporter `--collectors cgroup` (release build) for each. Steady: VmRSS after three single scrapes. Then \
         {} rounds of {CONCURRENT} scrapes at once; before each, VmHWM is reset (`/proc/PID/clear_refs`), so the \
         peak is the round's own; VmRSS is read {} s after the round.\n",
        SIZES[0],
        SIZES[1],
        o.rounds,
        SETTLE.as_secs()
    );
    let _ = writeln!(
        t,
        "| build | containers | page | steady MiB | peak during a round, worst MiB | after a round, worst MiB | \
         round wall time, median ms | peak <= 30 MiB |\n|---|---|---|---|---|---|---|---|"
    );
    for a in arms {
        let worst = |f: fn(&Round) -> f64| a.rounds.iter().map(f).fold(f64::NAN, f64::max);
        let wall: Vec<f64> = a.rounds.iter().map(|r| r.wall_ms).collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} series, {} bytes | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            a.name,
            a.containers,
            a.series,
            a.page_bytes,
            a.steady,
            worst(|r| r.peak),
            worst(|r| r.after),
            percentile(&wall, 0.5),
            if worst(|r| r.peak) <= 30.0 { "yes" } else { "no" }
        );
    }
    t
}
