//! End to end: the built exporter, scraped by a real Prometheus (Debian's
//! package), answers a PromQL query about the testbed pod.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pmoas_testbed::{Place, Pod, PodOptions};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Prometheus's HTTP API: the `result` array of an instant query.
fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) =
        http_get(([127, 0, 0, 1], port).into(), &format!("/api/v1/query?query={q}"), &[]).unwrap_or_default();
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_the_exporter_and_finds_the_pod() {
    let mut problems = testbed_problems();
    if !std::path::Path::new(PROMETHEUS).exists() {
        problems.push(format!("{PROMETHEUS} (apt-get install prometheus)"));
    }
    if !can_run("prometheus_scrapes_the_exporter_and_finds_the_pod", &problems) {
        return;
    }
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let exp = Exporter::start(&["--collectors", "socket"]);
    if !exp.socket_collector_runs("prometheus_scrapes_the_exporter_and_finds_the_pod") {
        return;
    }

    let dir = std::env::temp_dir().join(format!("pmoas-e2e-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n\
             - job_name: pmoas\n  static_configs: [ {{ targets: ['{}'] }} ]\n",
            exp.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let prometheus = Killed(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus"),
    );

    let report = tool(&pod, Place::Client, &["http", "--connect", &pod.envoy_addr().to_string(), "--count", "20"]);
    assert_eq!(report["connected"], 20);

    let uid = pod.state.uid.clone();
    let promql = format!("pmoas_tcp_accepts_total{{job=\"pmoas\",pod=\"{uid}\",role=\"sidecar\",peer=\"node\"}}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(port, "up{job=\"pmoas\"}");
        let found = query(port, &promql);
        let up_ok = up.first().and_then(|r| r["value"][1].as_str()) == Some("1");
        let value =
            found.first().and_then(|r| r["value"][1].as_str()).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        if up_ok && value >= 20.0 {
            assert_eq!(found[0]["metric"]["pod"], uid.as_str());
            assert_eq!(found[0]["metric"]["container"], &pod.state.sidecar_id[..12]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the pod (up={up:?}, result={found:?}); log:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
