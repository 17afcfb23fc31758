//! End to end: the built exporter, scraped by a real Prometheus (Debian's
//! package), answers a PromQL query about the testbed pod; and the project's
//! Prometheus side (prometheus/): promtool checks its configs and rules and
//! runs their unit tests, and every rule's expression returns data from a
//! real Prometheus that scraped the exporter under testbed traffic, using
//! only metrics the README documents. The Grafana dashboards (grafana/) too:
//! well formed and the generator's output (without root), and every PromQL of
//! every panel and variable returns data in that same Prometheus run.

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
    query_or_error(port, promql).unwrap_or_default()
}

/// The `result` array of an instant query, or Prometheus's answer when it
/// refused the query (a parse error says which).
fn query_or_error(port: u16, promql: &str) -> Result<Vec<serde_json::Value>, String> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = http_get(([127, 0, 0, 1], port).into(), &format!("/api/v1/query?query={q}"), &[])
        .map_err(|e| format!("GET /api/v1/query: {e}"))?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
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
/// scrapes the exporter (socket, cgroup, netstack, http, sockops) while wrk goes through
/// the testbed's Envoy with 5% of its packets dropped each way (so drops
/// and retransmissions exist too): every recording rule returns series,
/// every alert's expression without its threshold too, and each uses only
/// metrics in the README's reference. Then, in the same run, every PromQL of
/// every Grafana dashboard (panels and variables) returns data for the
/// testbed pod (see [`dashboard_queries_without_data`]).
#[test]
fn every_rule_and_dashboard_query_returns_data_from_a_real_scrape() {
    let test = "every_rule_and_dashboard_query_returns_data_from_a_real_scrape";
    if !testbed_and_prometheus(test) {
        return;
    }
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let pod = Pod::up(&PodOptions { grpc: true, ..Default::default() }).expect("testbed up");
    // Pushing to a port where nothing listens: the push alert's series; OTLP
    // to another such port: the dashboards' OTLP panels.
    let dead_gateway = format!("http://127.0.0.1:{}", free_port());
    let dead_otlp = format!("http://127.0.0.1:{}", free_port());
    let exp = Exporter::start(&[
        "--collectors",
        "socket,cgroup,netstack,http,sockops",
        "--collector.netstack.sample-rate",
        "4",
        "--push.gateway-url",
        &dead_gateway,
        "--push.interval",
        "1s",
        "--otlp.endpoint",
        &dead_otlp,
        "--otlp.metrics-endpoint",
        &dead_otlp,
        "--otlp.metrics-interval",
        "1s",
    ]);
    if !exp.socket_collector_runs(test) {
        return;
    }
    // Envoy's connections to nginx are accelerated (sockops) only if they
    // open once discovery has put the pod's containers in the programs'
    // allow-map; the sockops rules and panels need those.
    let w = Workloads::of(&pod);
    exp.eventually("discovery knows the pod's containers", Duration::from_secs(15), |m| {
        m.get("pmoas_scrape_collector_success", &[("collector", "sockops")]) == Some(1.0)
            && m.get("pmoas_container_info", &w.sidecar()).is_some()
            && m.get("pmoas_container_info", &w.app()).is_some()
    });
    std::thread::sleep(Duration::from_millis(300));
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
        // 5xx answers and gRPC calls, some UNAVAILABLE, for the http collector's rules and panels.
        let _ = tool(
            &pod,
            Place::Client,
            &["http", "--connect", &pod.envoy_addr().to_string(), "--path", "/error", "--count", "10"],
        );
        let _ = pod.grpc_calls(20, 5, 2);
    }
    drop(drops);
    // Connects to a closed port: connect failures, and the resets they take.
    let refused = tool(&pod, Place::App, &["tcp-client", "--connect", "127.0.0.1:9", "--count", "10"]);
    assert_eq!(refused["failed"], 10, "{refused}");

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

    let empty = dashboard_queries_without_data(port, &pod);
    assert!(
        empty.is_empty(),
        "Grafana dashboard queries without data after the traffic (variables as in the message):\n{}",
        empty.join("\n")
    );
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Grafana dashboards, `grafana/dashboards/*.json`: (file name, JSON).
fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<(String, serde_json::Value)> = std::fs::read_dir(repo_path("grafana/dashboards"))
        .expect("grafana/dashboards")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel of a dashboard, those inside rows included.
fn dashboard_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(panels: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The template variables of a dashboard.
fn dashboard_variables(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    dashboard["templating"]["list"].as_array().map(|l| l.iter().collect()).unwrap_or_default()
}

/// A query variable's query text (Grafana keeps a string, or an object
/// with `query`).
fn variable_query(variable: &serde_json::Value) -> &str {
    variable["query"].as_str().or_else(|| variable["query"]["query"].as_str()).unwrap_or("")
}

/// The PromQL a query variable runs, and the label it takes the values of:
/// `label_values(selector, label)` runs the selector, `query_result(q)`
/// runs q. None for another form.
fn variable_promql(query: &str) -> Option<(String, Option<String>)> {
    let query = query.trim();
    if let Some(inner) = query.strip_prefix("query_result(").and_then(|q| q.strip_suffix(')')) {
        return Some((inner.trim().to_string(), None));
    }
    let inner = query.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    let label = label.trim();
    let ok = !selector.trim().is_empty()
        && !label.is_empty()
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| (selector.trim().to_string(), Some(label.to_string())))
}

/// Every PromQL of a dashboard: (where it is, the expression, for a
/// variable the label it lists), for each panel target and query variable.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for v in dashboard_variables(dashboard) {
        if v["type"] == "query" {
            let name = v["name"].as_str().unwrap_or("?");
            let (promql, label) = variable_promql(variable_query(v))
                .unwrap_or_else(|| panic!("variable {name}: not label_values(selector, label) or query_result(q)"));
            out.push((format!("variable {name}"), promql, label));
        }
    }
    for p in dashboard_panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let place = format!("panel {:?} ({}) target {}", p["title"].as_str().unwrap_or(""), p["id"], t["refId"]);
            out.push((place, t["expr"].as_str().unwrap_or("").to_string(), None));
        }
    }
    out
}

/// The Grafana variables an expression uses, `$name` or `${name}`
/// (`${name:format}` too), as (start, end, name) spans.
fn variable_spans(expr: &str) -> Vec<(usize, usize, String)> {
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            if bytes.get(i + 1) == Some(&b'{') {
                if let Some(close) = expr[i..].find('}') {
                    let name = expr[i + 2..i + close].split(':').next().unwrap_or("");
                    out.push((i, i + close + 1, name.to_string()));
                    i += close + 1;
                    continue;
                }
            } else {
                let end = (i + 1..bytes.len()).find(|&j| !word(bytes[j])).unwrap_or(bytes.len());
                if end > i + 1 {
                    out.push((i, end, expr[i + 1..end].to_string()));
                    i = end;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Grafana's own variables the dashboards may use in PromQL, with the value
/// the e2e test gives them.
const GRAFANA_VARIABLES: [(&str, &str); 3] = [("__rate_interval", "2m"), ("__interval", "15s"), ("__range", "10m")];

/// `expr` with its variables replaced by `values` (name -> value); an
/// unknown variable is left as it is.
fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut at = 0;
    for (start, end, name) in variable_spans(expr) {
        if let Some((_, value)) = values.iter().find(|(n, _)| *n == name) {
            out.push_str(&expr[at..start]);
            out.push_str(value);
            at = end;
        }
    }
    out.push_str(&expr[at..]);
    out
}

/// Recording rules (`level:metric:operation`) an expression uses.
fn recording_rule_names(expr: &str) -> Vec<String> {
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
        if token.contains(':') && token.starts_with(|c: char| c.is_ascii_alphabetic()) {
            names.push(std::mem::take(&mut token));
        }
        token.clear();
    }
    names
}

/// What in `expr` is not documented: `pmoas_` metrics missing from the
/// README's reference, recording rules missing from prometheus/rules/.
fn undocumented(expr: &str, readme: &str, rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    for metric in metric_names(expr) {
        let base = ["_bucket", "_sum", "_count"].iter().fold(metric.as_str(), |m, s| m.strip_suffix(s).unwrap_or(m));
        if !readme.contains(&format!("`{metric}`")) && !readme.contains(&format!("`{base}`")) {
            out.push(format!("{metric} (not in the README's metric reference)"));
        }
    }
    for rule in recording_rule_names(expr) {
        if !rules.lines().any(|l| l.trim() == format!("- record: {rule}")) {
            out.push(format!("{rule} (no such recording rule in prometheus/rules/)"));
        }
    }
    out
}

/// Every recording and alerting rule file's text, concatenated.
fn rules_text() -> String {
    let mut files: Vec<_> = std::fs::read_dir(repo_path("prometheus/rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<Vec<_>>().join("\n")
}

const DATASOURCE: &str = "${datasource}";

#[test]
fn grafana_variables_are_found_and_replaced() {
    let expr = "rate(x{pod=~\"$pod\", c=~\"${container}\", n=~\"${namespace:regex}\"}[$__rate_interval]) $__range";
    let names: Vec<String> = variable_spans(expr).into_iter().map(|(_, _, n)| n).collect();
    assert_eq!(names, ["pod", "container", "namespace", "__rate_interval", "__range"]);
    assert_eq!(
        substitute(expr, &[("pod", "p1"), ("container", ".*"), ("namespace", ".*"), ("__rate_interval", "1m")]),
        "rate(x{pod=~\"p1\", c=~\".*\", n=~\".*\"}[1m]) $__range"
    );
    assert_eq!(
        variable_promql("label_values(pmoas_container_info{namespace=~\"$namespace\"}, pod)"),
        Some(("pmoas_container_info{namespace=~\"$namespace\"}".to_string(), Some("pod".to_string())))
    );
    assert_eq!(variable_promql("query_result(topk(3, up))"), Some(("topk(3, up)".to_string(), None)));
    assert_eq!(variable_promql("label_values(pod)"), None);
    assert_eq!(recording_rule_names("a:b:c{x=\"d:e\"} / pmoas_x[5m]"), ["a:b:c"]);
}

/// grafana/: every dashboard is JSON Grafana can load both provisioned and
/// imported by hand: its datasource chosen through the `datasource`
/// variable (never a fixed uid, never an import-only `${DS_...}` input),
/// namespace / pod / container variables, unique panel ids, every panel
/// with a description, the datasource and PromQL targets that use only
/// documented metrics and recording rules, defined variables and Grafana's
/// rate intervals; and the provisioning files point where
/// docker-compose.yml mounts them.
#[test]
fn grafana_dashboards_are_well_formed() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let rules = rules_text();
    let dashboards = dashboards();
    let names: Vec<&str> = dashboards.iter().map(|(n, _)| n.as_str()).collect();
    for expected in
        ["pmoas-node.json", "pmoas-pod-sidecar.json", "pmoas-socket.json", "pmoas-cgroup.json", "pmoas-netstack.json"]
    {
        assert!(names.contains(&expected), "grafana/dashboards/{expected} missing: {names:?}");
    }
    let mut uids = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for (file, d) in &dashboards {
        let mut problem = |what: String| problems.push(format!("{file}: {what}"));
        let text = serde_json::to_string(d).unwrap();
        if text.contains("${DS_") {
            problem("uses an import input `${DS_...}`, which file provisioning leaves unreplaced".into());
        }
        let uid = d["uid"].as_str().unwrap_or("");
        if uid.is_empty() || !uids.insert(uid.to_string()) {
            problem(format!("uid {uid:?} empty or not unique"));
        }
        if d["title"].as_str().is_none_or(str::is_empty) || d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            problem("no title, or schemaVersion below 36".into());
        }
        if !d["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "pmoas")) {
            problem("not tagged pmoas (the dashboards link to each other by that tag)".into());
        }

        // Variables.
        let variables = dashboard_variables(d);
        let defined: Vec<&str> = variables.iter().filter_map(|v| v["name"].as_str()).collect();
        let mut unique = defined.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != defined.len() {
            problem(format!("variable names repeat: {defined:?}"));
        }
        match variables.iter().find(|v| v["name"] == "datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => problem("no `datasource` variable of type datasource, query prometheus".into()),
        }
        for name in ["namespace", "pod", "container"] {
            match variables.iter().find(|v| v["name"] == name) {
                Some(v)
                    if v["type"] == "query"
                        && v["multi"] == true
                        && v["includeAll"] == true
                        && v["allValue"] == ".*" => {}
                _ => problem(format!("no `{name}` query variable with multi, includeAll and allValue `.*`")),
            }
        }
        for v in variables.iter().filter(|v| v["type"] == "query") {
            if v["datasource"]["uid"] != DATASOURCE {
                problem(format!("variable {}: datasource is not {DATASOURCE}", v["name"]));
            }
        }

        // Panels.
        let panels = dashboard_panels(d);
        let mut ids = std::collections::HashSet::new();
        for p in &panels {
            let (kind, title) = (p["type"].as_str().unwrap_or(""), p["title"].as_str().unwrap_or(""));
            let mut problem = |what: &str| problems.push(format!("{file}: panel {title:?} ({}): {what}", p["id"]));
            if !p["id"].as_u64().is_some_and(|id| ids.insert(id)) {
                problem("id missing or not unique");
            }
            let (x, w) = (p["gridPos"]["x"].as_u64(), p["gridPos"]["w"].as_u64());
            if !x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24) || p["gridPos"]["h"].as_u64().is_none() {
                problem("gridPos missing or wider than the 24 columns");
            }
            match kind {
                "row" | "text" => continue,
                "timeseries" | "stat" | "heatmap" | "table" | "bargauge" => {}
                _ => problem("panel type is not timeseries, stat, heatmap, table, bargauge, row or text"),
            }
            if p["datasource"]["type"] != "prometheus" || p["datasource"]["uid"] != DATASOURCE {
                problem("datasource is not {type: prometheus, uid: ${datasource}}");
            }
            if title.is_empty() || p["description"].as_str().is_none_or(|s| s.len() < 20) {
                problem("no title, or no description of what it shows and how to read it");
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problem("no targets");
            }
            let mut ref_ids = std::collections::HashSet::new();
            for t in &targets {
                if t["datasource"]["uid"] != DATASOURCE || t["expr"].as_str().is_none_or(str::is_empty) {
                    problem("a target without a PromQL `expr` or without the ${datasource} datasource");
                }
                if !t["refId"].as_str().is_some_and(|r| ref_ids.insert(r.to_string())) {
                    problem("a target's refId is missing or repeats");
                }
                let expr = t["expr"].as_str().unwrap_or("");
                // Windows: Grafana's, sized from the scrape interval; fixed
                // ones belong in recording rules (1d: last_over_time).
                for window in expr.split('[').skip(1).map(|w| w.split(']').next().unwrap_or("")) {
                    if !["$__rate_interval", "$__range", "1d"].contains(&window) {
                        problem(&format!("range [{window}]: use [$__rate_interval] (or a recording rule)"));
                    }
                }
            }
        }

        // Every query: documented names, defined variables.
        for (place, promql, _) in dashboard_queries(d) {
            for what in undocumented(&promql, &readme, &rules) {
                problems.push(format!("{file}: {place} uses {what}"));
            }
            for (_, _, name) in variable_spans(&promql) {
                if !defined.contains(&name.as_str()) && !GRAFANA_VARIABLES.iter().any(|(n, _)| *n == name) {
                    problems.push(format!("{file}: {place} uses an undefined variable ${name}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "Grafana dashboards:\n{}", problems.join("\n"));

    // Provisioning: where docker-compose.yml mounts grafana/provisioning
    // and grafana/dashboards.
    let yaml = |rel: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(repo_path(rel)).unwrap()).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let ds = &ds["datasources"][0];
    assert_eq!((ds["name"].as_str(), ds["uid"].as_str()), (Some("Prometheus"), Some("prometheus")), "{ds:?}");
    assert_eq!((ds["type"].as_str(), ds["url"].as_str()), (Some("prometheus"), Some("http://localhost:9090")));
    assert_eq!(ds["isDefault"].as_bool(), Some(true));
    let provider = yaml("grafana/provisioning/dashboards/pmoas.yml");
    let provider = &provider["providers"][0];
    assert_eq!(
        (provider["type"].as_str(), provider["folder"].as_str(), provider["options"]["path"].as_str()),
        (Some("file"), Some("pmoas"), Some("/var/lib/grafana/dashboards")),
        "{provider:?}"
    );
}

/// The committed JSON is what grafana/generate.py writes.
#[test]
fn grafana_dashboards_are_the_generators_output() {
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|p| Command::new(p).arg("-V").output().is_ok());
    let Some(python) = python else {
        can_run("grafana_dashboards_are_the_generators_output", &["python3 (apt-get install python3)".into()]);
        return;
    };
    let out = Command::new(python)
        .arg(repo_path("grafana/generate.py"))
        .arg("--check")
        .output()
        .expect("running grafana/generate.py");
    assert!(
        out.status.success(),
        "grafana/dashboards/ is not grafana/generate.py's output (edit the script, run it, commit both):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every PromQL of every dashboard, run against Prometheus (`port`) with
/// the variables as a user looking at the testbed pod sets them: pod = its
/// UID, namespace / container / instance = All (`.*`), Grafana's intervals
/// as in [`GRAFANA_VARIABLES`]. Each must return at least one sample that
/// is a number (not NaN: a panel of NaN draws nothing); a pod or container
/// variable must list the testbed's. What fails: place, query as run, why.
fn dashboard_queries_without_data(port: u16, pod: &Pod) -> Vec<String> {
    let uid = pod.state.uid.as_str();
    let mut values: Vec<(&str, &str)> =
        vec![("pod", uid), ("namespace", ".*"), ("container", ".*"), ("instance", ".*")];
    values.extend(GRAFANA_VARIABLES);
    let expected = [("pod", uid), ("container", &pod.state.sidecar_id[..12])];
    let mut failed = Vec::new();
    for (file, d) in dashboards() {
        for (place, promql, label) in dashboard_queries(&d) {
            let promql = substitute(&promql, &values);
            let answer = || query_or_error(port, &promql);
            let numbers = |r: &[serde_json::Value]| {
                r.iter()
                    .any(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| !v.is_nan()))
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut result = answer();
            while !result.as_deref().is_ok_and(numbers) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                result = answer();
            }
            let why = match &result {
                Err(e) => Some(format!("refused: {e}")),
                Ok(r) if r.is_empty() => Some("no series".to_string()),
                Ok(r) if !numbers(r) => Some(format!("only NaN: {r:?}")),
                Ok(r) => label.as_deref().and_then(|label| {
                    let want = expected.iter().find(|(l, _)| *l == label)?.1;
                    (!r.iter().any(|s| s["metric"][label] == want)).then(|| format!("no {label} {want:?} among {r:?}"))
                }),
            };
            if let Some(why) = why {
                failed.push(format!("{file}: {place}: {promql}\n    {why}"));
            }
        }
    }
    failed
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
