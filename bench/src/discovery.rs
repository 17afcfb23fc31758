//! Discovery at scale, and what target selection saves.
//!
//! 1. 500 pods with 3 containers each, as real kubelet-layout cgroups, served
//!    by the fake Kubernetes API: time from the exporter's start until every
//!    pod is known and every container named, the RSS this adds over an
//!    exporter that knows no pod, and /metrics with 1,500 containers.
//! 2. 50 busy pods (a loopback TCP client and server in each): the
//!    socket collector's in-kernel cost per connection when it watches all
//!    of them, against watching one (`--target.pod busy-0`), in alternating
//!    rounds.

use std::fmt::Write as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pmoas_testbed::fake_kube::FakeKube;
use pmoas_testbed::lite::LitePod;
use serde_json::{Value, json};

use crate::Opts;
use crate::common::*;

const NODE: &str = "bench-node";

fn pod_object(i: usize, name: &str, uid: &str, containers: &[(&str, &str, &str)]) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": format!("bench-{}", i % 10), "uid": uid,
                     "labels": {"app": name, "tier": if i.is_multiple_of(2) { "web" } else { "db" }}},
        "spec": {"nodeName": NODE, "containers": containers.iter().map(|(n, img, _)| json!({"name": n, "image": img})).collect::<Vec<_>>()},
        "status": {"phase": "Running", "qosClass": "BestEffort",
                   "containerStatuses": containers.iter().map(|(n, img, id)| json!({
                       "name": n, "image": img, "imageID": "", "ready": true, "restartCount": 0,
                       "containerID": format!("containerd://{id}")})).collect::<Vec<_>>()}
    })
}

fn kube_args(kubeconfig: &str) -> Vec<String> {
    [
        "--kubeconfig",
        kubeconfig,
        "--kubernetes.node-name",
        NODE,
        "--engine.enabled",
        "false",
        "--discovery.rescan-interval",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn host_active_opens() -> f64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else { return 0.0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ActiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

struct Scale {
    synced_ms: f64,
    named_ms: f64,
    base_rss: f64,
    rss: f64,
    scrape_ms: Vec<f64>,
    series: usize,
}

fn scale(o: &Opts, dir: &std::path::Path) -> Result<Scale> {
    eprintln!("pmoas-bench: creating 500 pods x 3 containers (cgroups)");
    let kube = FakeKube::start()?;
    let mut pods = Vec::new();
    for i in 0..500 {
        let lite = LitePod::create(&[None, None, None])?;
        let ids: Vec<&str> = lite.containers.iter().map(|c| c.id.as_str()).collect();
        kube.apply(pod_object(
            i,
            &format!("pod-{i}"),
            &lite.uid,
            &[
                ("app", "bench/app:1", ids[0]),
                ("istio-proxy", "docker.io/istio/proxyv2:1.24.0", ids[1]),
                ("worker", "bench/worker:1", ids[2]),
            ],
        ));
        pods.push(lite);
    }
    let kubeconfig = kube.kubeconfig(dir)?;
    let kubeconfig = kubeconfig.to_str().context("path")?.to_string();

    // The same exporter without any pod to know, for the RSS baseline.
    let (base, _) = Exporter::start_until(
        &o.exporter,
        &["--collector.disable-defaults", "--kubernetes.enabled", "false", "--engine.enabled", "false"],
        |_| true,
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let (base_rss, _) = base.rss_mib();
    base.stop();

    let mut args: Vec<String> = vec!["--collector.disable-defaults".into()];
    args.extend(kube_args(&kubeconfig));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let (e, synced) = Exporter::start_until(&o.exporter, &args, |body| {
        metric(body, "pmoas_discovery_workloads", &["source=\"kubernetes\"", "kind=\"pod\""]) == 500.0
    })?;
    let synced_ms = synced.as_secs_f64() * 1000.0;
    let named_ms = loop {
        let (_, body) = http_get(e.addr, "/metrics")?;
        if metric(&body, "pmoas_container_info", &["sidecar_kind=\"istio\""]) == 500.0
            && metric(&body, "pmoas_container_info", &[]) == 1500.0
        {
            break started.elapsed().as_secs_f64() * 1000.0;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "containers not named in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut scrape_ms = Vec::new();
    let mut series = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let (_, body) = http_get(e.addr, "/metrics")?;
        scrape_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        series = body.lines().filter(|l| !l.starts_with('#')).count();
    }
    let (rss, _) = e.rss_mib();
    e.stop();
    drop(pods);
    Ok(Scale { synced_ms, named_ms, base_rss, rss, scrape_ms, series })
}

/// One measured window of the busy pods.
#[derive(Clone, Copy, Default)]
struct Window {
    /// eBPF run time of the collector's programs (ns; 0 without exporter).
    bpf_ns: f64,
    connections: f64,
    exporter_cpu: f64,
    wall: f64,
}

impl Window {
    fn rate(&self) -> f64 {
        self.connections / self.wall
    }
}

/// Windows without the exporter, watching all pods, watching one.
#[derive(Default)]
struct Busy {
    off: Vec<Window>,
    all: Vec<Window>,
    one: Vec<Window>,
}

fn busy(o: &Opts, dir: &std::path::Path) -> Result<Busy> {
    let tool = o.exporter.with_file_name("pmoas-testbed");
    anyhow::ensure!(tool.is_file(), "{} missing: cargo build --release -p pmoas-testbed", tool.display());
    eprintln!("pmoas-bench: starting 50 busy pods");
    let kube = FakeKube::start()?;
    let mut pods = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    for i in 0..50 {
        let lite = LitePod::create(&[None, None])?;
        let port = (21000 + i).to_string();
        let listen = format!("127.0.0.1:{port}");
        let server = lite
            .command(0, &tool)
            .args(["tcp-server", "--listen", &listen, "--count", "1000000000", "--send", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        children.push(server);
        std::thread::sleep(Duration::from_millis(20));
        let client = lite
            .command(1, &tool)
            .args(["tcp-client", "--connect", &listen, "--count", "1000000000", "--send", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        children.push(client);
        let ids: Vec<&str> = lite.containers.iter().map(|c| c.id.as_str()).collect();
        kube.apply(pod_object(
            i,
            &format!("busy-{i}"),
            &lite.uid,
            &[("server", "bench/server:1", ids[0]), ("client", "bench/client:1", ids[1])],
        ));
        pods.push(lite);
    }
    let kubeconfig = kube.kubeconfig(dir)?;
    let kubeconfig = kubeconfig.to_str().context("path")?.to_string();

    let mut result = Busy::default();
    // Off, all, one, rotating which goes first, so drift favours none.
    let modes = [None, Some(false), Some(true)];
    for round in 0..o.rounds {
        for k in 0..3 {
            let mode = modes[(round + k) % 3];
            let Some(only_one) = mode else {
                let (opens0, t0) = (host_active_opens(), Instant::now());
                std::thread::sleep(Duration::from_secs(o.seconds));
                let w = Window {
                    connections: host_active_opens() - opens0,
                    wall: t0.elapsed().as_secs_f64(),
                    ..Default::default()
                };
                eprintln!("pmoas-bench: round {round} no exporter: {:.0} connections/s", w.rate());
                result.off.push(w);
                continue;
            };
            let mut args: Vec<String> = vec!["--collectors".into(), "socket".into()];
            args.extend(kube_args(&kubeconfig));
            if only_one {
                args.extend(["--target.pod".to_string(), "busy-0".to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (e, _) = Exporter::start_until(&o.exporter, &args, |body| {
                metric(body, "pmoas_scrape_collector_success", &["collector=\"socket\""]) == 1.0
                    && metric(body, "pmoas_container_info", &["pod=\"busy-49\""]) == 2.0
            })?;
            // Let the rescan hand the selection to the kernel.
            std::thread::sleep(Duration::from_secs(2));
            set_bpf_stats(true);
            let (_, before) = http_get(e.addr, "/metrics")?;
            let (ns0, _) = bpf_totals(&before, &[]);
            let (opens0, cpu0, t0) = (host_active_opens(), e.cpu_seconds(), Instant::now());
            std::thread::sleep(Duration::from_secs(o.seconds));
            let (_, after) = http_get(e.addr, "/metrics")?;
            let (ns1, _) = bpf_totals(&after, &[]);
            set_bpf_stats(false);
            let w = Window {
                bpf_ns: ns1 - ns0,
                connections: host_active_opens() - opens0,
                exporter_cpu: e.cpu_seconds() - cpu0,
                wall: t0.elapsed().as_secs_f64(),
            };
            eprintln!(
                "pmoas-bench: round {round} {}: {:.0} connections/s, {:.0} ns/connection in eBPF",
                if only_one { "one pod" } else { "all pods" },
                w.rate(),
                w.bpf_ns / w.connections.max(1.0)
            );
            if only_one {
                result.one.push(w)
            } else {
                result.all.push(w)
            }
            e.stop();
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(pods);
    Ok(result)
}

pub fn run(o: &Opts) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("pmoas-bench-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let s = scale(o, &dir)?;
    let b = busy(o, &dir)?;
    let _ = std::fs::remove_dir_all(&dir);

    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let rate = |v: &[Window]| mean(&v.iter().map(Window::rate).collect::<Vec<_>>());
    let bpf_per_conn = |v: &[Window]| mean(&v.iter().map(|w| w.bpf_ns / w.connections.max(1.0)).collect::<Vec<_>>());
    let cpu_pct = |v: &[Window]| mean(&v.iter().map(|w| w.exporter_cpu / w.wall * 100.0).collect::<Vec<_>>());
    // The machine is saturated by the busy pods: CPU per connection is
    // cpus / rate, and what the exporter adds is the difference to "off".
    let added_us = |v: &[Window]| (cpus / rate(v) - cpus / rate(&b.off)) * 1e6;
    let (all_added, one_added) = (added_us(&b.all), added_us(&b.one));
    let mut r = String::new();
    let _ = writeln!(r, "## discovery: 500 pods from the Kubernetes API, and watching one pod of 50 busy ones\n");
    let _ = writeln!(
        r,
        "Measured {}. The fake Kubernetes API of the testbed serves the pods; their containers are real \
         kubelet-layout cgroups. Reproduce (as root): `scripts/bench.sh discovery --rounds {} --seconds {}`.\n",
        machine(),
        o.rounds,
        o.seconds
    );
    let _ = writeln!(r, "| measure | result | target |\n|---|---|---|");
    let _ = writeln!(
        r,
        "| 500 pods / 1,500 containers: exporter start to all pods known | {:.0} ms | < 1 s |",
        s.synced_ms
    );
    let _ = writeln!(
        r,
        "| ... to all 1,500 containers named (cgroups walked, roles classified) | {:.0} ms | |",
        s.named_ms
    );
    let _ = writeln!(
        r,
        "| extra RSS for 500 pods / 1,500 containers ({:.1} MiB vs {:.1} MiB knowing none) | {:.1} MiB | < 20 MB |",
        s.rss,
        s.base_rss,
        s.rss - s.base_rss
    );
    let _ = writeln!(
        r,
        "| /metrics with 1,500 containers known ({} series), median / max of {} | {:.2} / {:.2} ms | |",
        s.series,
        s.scrape_ms.len(),
        percentile(&s.scrape_ms, 0.5),
        percentile(&s.scrape_ms, 1.0)
    );
    let _ = writeln!(
        r,
        "| 50 busy pods, connections/s: no exporter / watching all / watching one (`--target.pod busy-0`), means of {} | {:.0} / {:.0} / {:.0} | |",
        b.off.len(),
        rate(&b.off),
        rate(&b.all),
        rate(&b.one)
    );
    let _ = writeln!(
        r,
        "| CPU added per connection (saturated machine: {cpus} CPUs / rate, minus no exporter): all / one | {all_added:.1} / {one_added:.1} us | |"
    );
    let _ = writeln!(r, "| ... watching one / watching all | {:.2} | < 0.1 |", one_added / all_added);
    let _ = writeln!(
        r,
        "| eBPF run time per connection (kernel.bpf_stats_enabled): all / one | {:.0} / {:.0} ns | |",
        bpf_per_conn(&b.all),
        bpf_per_conn(&b.one)
    );
    let _ =
        writeln!(r, "| ... watching one / watching all | {:.2} | < 0.1 |", bpf_per_conn(&b.one) / bpf_per_conn(&b.all));
    let _ = writeln!(
        r,
        "| exporter CPU, watching all / one | {:.2} / {:.2} % of a core | |",
        cpu_pct(&b.all),
        cpu_pct(&b.one)
    );
    let _ = writeln!(
        r,
        "\nLabel lookups at scrape time are hash-map hits per kernel key (cgroup id -> workload), resolved \
         again only when the metadata generation changed; the cost of naming 1,500 containers is in the \
         start-up figure above, not in every scrape."
    );
    write_section(&o.out, "discovery", &r)?;
    println!("{r}");
    Ok(())
}
