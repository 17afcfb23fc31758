//! End to end: the built exporter, scraped by a real Prometheus (Debian's
//! package), answers a PromQL query about the testbed pod; and the project's
//! Prometheus side (prometheus/): promtool checks its configs and rules and
//! runs their unit tests, and every rule's expression returns data from a
//! real Prometheus that scraped the exporter under testbed traffic, using
//! only metrics the README documents.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pmoas_testbed::{Direction, Place, Pod, PodOptions};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Prometheus's HTTP API: the `data` of a GET.
fn api(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http_get(([127, 0, 0, 1], port).into(), path, &[]).unwrap_or_default();
    if status != 200 {
        return serde_json::Value::Null;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"].clone()
}

/// A Prometheus configuration that scrapes the exporter at `target` every
/// second and evaluates `rule_files` every second.
fn scraping(target: std::net::SocketAddr, rule_files: &[String]) -> String {
    let rules: Vec<String> = rule_files.iter().map(|f| format!("'{f}'")).collect();
    format!(
        "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\n\
         rule_files: [ {} ]\n\
         scrape_configs:\n\
         - job_name: pmoas\n  static_configs: [ {{ targets: ['{target}'] }} ]\n",
        rules.join(", ")
    )
}

/// A Prometheus on a free loopback port with `config` (YAML), its data and
/// log in `dir`.
fn start_prometheus(dir: &std::path::Path, config: &str) -> (Killed, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let port = free_port();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("starting prometheus");
    (Killed(child), port)
}

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

/// Root, the testbed's programs and Debian's Prometheus.
fn testbed_and_prometheus(test: &str) -> bool {
    let mut problems = testbed_problems();
    if !std::path::Path::new(PROMETHEUS).exists() {
        problems.push(format!("{PROMETHEUS} (apt-get install prometheus)"));
    }
    can_run(test, &problems)
}

#[test]
fn prometheus_scrapes_the_exporter_and_finds_the_pod() {
    if !testbed_and_prometheus("prometheus_scrapes_the_exporter_and_finds_the_pod") {
        return;
    }
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let exp = Exporter::start(&["--collectors", "socket"]);
    if !exp.socket_collector_runs("prometheus_scrapes_the_exporter_and_finds_the_pod") {
        return;
    }

    let dir = std::env::temp_dir().join(format!("pmoas-e2e-prometheus-{}", std::process::id()));
    let (prometheus, port) = start_prometheus(&dir, &scraping(exp.addr, &[]));

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

/// promtool: both scrape configs and the rules are valid, and the rules'
/// unit tests (prometheus/tests/) pass.
#[test]
fn promtool_checks_the_configs_and_rules_and_runs_their_tests() {
    if !std::path::Path::new(PROMTOOL).exists()
        && !can_run(
            "promtool_checks_the_configs_and_rules_and_runs_their_tests",
            &[format!("{PROMTOOL} (apt-get install prometheus)")],
        )
    {
        return;
    }
    let rules: Vec<String> = std::fs::read_dir(repo_path("prometheus/rules"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yml"))
        .collect();
    let tests: Vec<String> = std::fs::read_dir(repo_path("prometheus/tests"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yml"))
        .collect();
    assert!(!rules.is_empty() && !tests.is_empty(), "no rules or no rule tests in prometheus/");
    let config = |name: &str| repo_path(&format!("prometheus/{name}")).display().to_string();
    // Debian's Prometheus is built without Kubernetes service discovery:
    // there the cluster config is checked with its `kubernetes_sd_configs`
    // swapped for a static target (the relabelling, rules and the rest as
    // shipped); a promtool that has it checks the file as is.
    let kubernetes = std::fs::read_to_string(config("kubernetes.yml")).unwrap();
    let no_sd = Command::new(PROMTOOL).args(["check", "config", &config("kubernetes.yml")]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&no_sd.stdout), String::from_utf8_lossy(&no_sd.stderr));
    let kubernetes_config = if said.contains("field kubernetes_sd_configs not found") {
        // Beside a copy of the rules, which the config names relatively.
        let dir = std::env::temp_dir().join(format!("pmoas-promtool-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        for rule in &rules {
            let rule = std::path::Path::new(rule);
            std::fs::copy(rule, dir.join("rules").join(rule.file_name().unwrap())).unwrap();
        }
        let swapped = kubernetes.replace(
            "    kubernetes_sd_configs:\n      - role: pod\n",
            "    static_configs:\n      - targets: ['node-1:8765']\n",
        );
        assert!(swapped.contains("static_configs"), "kubernetes.yml changed shape: update this test");
        std::fs::write(dir.join("kubernetes.yml"), swapped).unwrap();
        dir.join("kubernetes.yml").display().to_string()
    } else {
        config("kubernetes.yml")
    };
    let runs: Vec<Vec<String>> = vec![
        vec!["check".into(), "config".into(), config("prometheus.yml")],
        vec!["check".into(), "config".into(), kubernetes_config],
        [vec!["check".into(), "rules".into()], rules].concat(),
        [vec!["test".into(), "rules".into()], tests].concat(),
    ];
    for args in runs {
        let out = Command::new(PROMTOOL).args(&args).output().expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("pmoas-promtool-{}", std::process::id())));
}

/// Every metric name (`pmoas_...`, recording rules' `level:name:op` aside)
/// in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut token = String::new();
    let mut quoted = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            token.push(c);
            continue;
        }
        if token.starts_with("pmoas_") && !token.contains(':') {
            names.push(std::mem::take(&mut token));
        }
        token.clear();
    }
    names
}

/// An alert's expression without its threshold: the part before the last
/// comparison at the top level, which must return data for the alert to
/// mean anything.
fn without_threshold(expr: &str) -> &str {
    let bytes = expr.as_bytes();
    let (mut depth, mut quoted, mut cut) = (0i32, false, None);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'(' | b'{' | b'[' if !quoted => depth += 1,
            b')' | b'}' | b']' if !quoted => depth -= 1,
            b'>' | b'<' | b'=' | b'!' if !quoted && depth == 0 => {
                let prev = if i > 0 { bytes[i - 1] } else { b' ' };
                if !matches!(prev, b'>' | b'<' | b'=' | b'!') && bytes.get(i + 1) != Some(&b'~') {
                    cut = Some(i);
                }
            }
            _ => {}
        }
    }
    cut.map_or(expr, |i| expr[..i].trim_end())
}

#[test]
fn threshold_and_names_are_found_in_expressions() {
    assert_eq!(without_threshold("a{x=\"1\"} > 0.5"), "a{x=\"1\"}");
    assert_eq!(without_threshold("sum by (a) (rate(b{r!~\"X|Y\"}[5m])) >= 1"), "sum by (a) (rate(b{r!~\"X|Y\"}[5m]))");
    assert_eq!(without_threshold("pmoas_x == 0"), "pmoas_x");
    assert_eq!(without_threshold("pmoas_x"), "pmoas_x");
    assert_eq!(
        metric_names("ns:pmoas_a:rate5m / sum(rate(pmoas_b_total{l=\"pmoas_c\"}[5m]))"),
        vec!["pmoas_b_total".to_string()]
    );
}

/// The rules of prometheus/rules/, loaded into a real Prometheus that
/// scrapes the exporter (socket, cgroup, netstack) while wrk goes through
/// the testbed's Envoy with 5% of its packets dropped each way (so drops
/// and retransmissions exist too): every recording rule returns series,
/// every alert's expression without its threshold too, and each uses only
/// metrics in the README's reference.
#[test]
fn every_rule_returns_data_from_a_real_scrape() {
    if !testbed_and_prometheus("every_rule_returns_data_from_a_real_scrape") {
        return;
    }
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    // Pushing to a port where nothing listens: the push alert's series.
    let dead_gateway = format!("http://127.0.0.1:{}", free_port());
    let exp = Exporter::start(&[
        "--collectors",
        "socket,cgroup,netstack",
        "--collector.netstack.sample-rate",
        "4",
        "--push.gateway-url",
        &dead_gateway,
        "--push.interval",
        "1s",
    ]);
    if !exp.socket_collector_runs("every_rule_returns_data_from_a_real_scrape") {
        return;
    }
    // The rules as shipped, evaluated every second instead of every 30 s.
    let dir = std::env::temp_dir().join(format!("pmoas-e2e-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo_path("prometheus/rules")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap().replace("interval: 30s", "interval: 1s");
        let copy = dir.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        files.push(copy.display().to_string());
    }
    let (prometheus, port) = start_prometheus(&dir, &scraping(exp.addr, &files));

    let drops = [Direction::To, Direction::From].map(|d| pod.random_drop(d, 15006, 0.05).expect("iptables -A"));
    // New connections (connects, accepts, handshakes, accept-queue waits)
    // and keep-alive load, for a while.
    let url = format!("http://{}/", pod.envoy_addr());
    for _ in 0..3 {
        tool(&pod, Place::Client, &["http", "--connect", &pod.envoy_addr().to_string(), "--count", "50"]);
        let _ = pod.command(Place::Client, "wrk").args(["-t1", "-c8", "-d3s", &url]).output();
    }
    drop(drops);

    let groups = api(port, "/api/v1/rules")["groups"].as_array().cloned().unwrap_or_default();
    let loaded: Vec<serde_json::Value> =
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
    assert!(loaded.len() >= 10, "Prometheus loaded {} rules: {groups:?}", loaded.len());
    let mut missing = Vec::new();
    for rule in &loaded {
        let (name, expr) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
        assert_eq!(rule["health"], "ok", "rule {name}: {}", rule["lastError"]);
        for metric in metric_names(expr) {
            let base =
                ["_bucket", "_sum", "_count"].iter().fold(metric.as_str(), |m, s| m.strip_suffix(s).unwrap_or(m));
            assert!(
                readme.contains(&format!("`{metric}`")) || readme.contains(&format!("`{base}`")),
                "rule {name} uses {metric}, which the README's metric reference does not document"
            );
        }
        let probe = if rule["type"] == "recording" { name.to_string() } else { without_threshold(expr).to_string() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while query(port, &probe).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        if query(port, &probe).is_empty() {
            missing.push(format!("{name}: {probe}"));
        }
    }
    assert!(
        missing.is_empty(),
        "rules without data after the traffic:\n{}\nlog:\n{}",
        missing.join("\n"),
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";

/// A GET's body, or "" when it fails.
fn body(port: u16, path: &str) -> String {
    http_get(([127, 0, 0, 1], port).into(), path, &[]).map(|(_, b)| b).unwrap_or_default()
}

/// Polls `f` every 200 ms until it is true or `within` passed.
fn eventually(within: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// `--push.gateway-url` against Debian's Pushgateway: the exporter's
/// metrics reach it under job/instance (an instance with a `/`, so in the
/// `@base64` form), Prometheus reads them back from it, and a clean shutdown
/// deletes the group. With no gateway the exporter keeps serving and counts
/// the failed pushes.
#[test]
fn pushes_reach_the_pushgateway_and_leave_with_the_exporter() {
    let mut problems = Vec::new();
    for bin in [PUSHGATEWAY, PROMETHEUS] {
        if !std::path::Path::new(bin).exists() {
            problems.push(format!("{bin} (apt-get install prometheus prometheus-pushgateway)"));
        }
    }
    if !can_run("pushes_reach_the_pushgateway_and_leave_with_the_exporter", &problems) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pmoas-e2e-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gw = free_port();
    let gateway = Killed(
        Command::new(PUSHGATEWAY)
            .arg(format!("--web.listen-address=127.0.0.1:{gw}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pushgateway.log")).unwrap())
            .spawn()
            .expect("starting prometheus-pushgateway"),
    );
    assert!(eventually(Duration::from_secs(20), || body(gw, "/-/ready").contains("OK")), "Pushgateway not ready");

    let url = format!("http://127.0.0.1:{gw}");
    let push = ["--collector.disable-defaults", "--push.gateway-url", &url, "--push.interval", "1s"];
    let exp = Exporter::start(&[&push[..], &["--push.instance", "node-a/b"]].concat());
    let ours = |page: &str| {
        page.lines().any(|l| {
            l.starts_with("pmoas_build_info{") && l.contains("instance=\"node-a/b\"") && l.contains("job=\"pmoas\"")
        })
    };
    assert!(
        eventually(Duration::from_secs(20), || ours(&body(gw, "/metrics"))),
        "the exporter's metrics never reached the Pushgateway:\n{}",
        exp.log_text()
    );

    // Prometheus reads them back from the gateway, the grouping labels kept.
    let (prometheus, port) = start_prometheus(
        &dir.join("prometheus"),
        &format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\n\
             scrape_configs:\n\
             - job_name: pushgateway\n  honor_labels: true\n  static_configs: [ {{ targets: ['127.0.0.1:{gw}'] }} ]\n"
        ),
    );
    let promql = "pmoas_build_info{job=\"pmoas\",instance=\"node-a/b\"}";
    assert!(
        eventually(Duration::from_secs(30), || !query(port, promql).is_empty()),
        "Prometheus never read the pushed metrics back"
    );
    drop(prometheus);
    let pushed = exp.scrape().get("pmoas_push_requests_total", &[("result", "ok")]).unwrap_or(0.0);
    assert!(pushed >= 1.0, "pmoas_push_requests_total{{result=\"ok\"}} = {pushed}");

    // A clean shutdown takes the group away.
    assert!(exp.terminate().success());
    assert!(!ours(&body(gw, "/metrics")), "the group outlived the exporter:\n{}", body(gw, "/metrics"));

    // No gateway: serving goes on, failures are counted.
    drop(gateway);
    let exp = Exporter::start(&push);
    let failed = |e: &Exporter| e.scrape().get("pmoas_push_requests_total", &[("result", "error")]).unwrap_or(0.0);
    assert!(
        eventually(Duration::from_secs(10), || failed(&exp) >= 2.0),
        "failed pushes not counted:\n{}",
        exp.log_text()
    );
    assert_eq!(exp.get("/healthz").map(|(s, _)| s).unwrap_or(0), 200);
    assert!(exp.log_text().contains("push to the Pushgateway failed"), "{}", exp.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}
