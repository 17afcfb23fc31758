//! Shared by the integration tests: the exporter binary as a child process,
//! its scrapes parsed, the testbed's traffic tools, and the skip-or-fail
//! rule for tests that need root and eBPF.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pmoas_testbed::{Place, Pod};

/// CI sets PMOAS_REQUIRE_BPF=1: then a test that cannot run fails.
pub fn require_bpf() -> bool {
    std::env::var_os("PMOAS_REQUIRE_BPF").is_some_and(|v| v != "0")
}

/// `true` if the test can run; otherwise says why, loudly, and the test
/// returns early (or panics under PMOAS_REQUIRE_BPF).
pub fn can_run(test: &str, problems: &[String]) -> bool {
    if problems.is_empty() {
        return true;
    }
    if require_bpf() {
        panic!("{test}: PMOAS_REQUIRE_BPF is set but: {}", problems.join("; "));
    }
    pmoas_testbed::report_skip(test, &problems.join("; "));
    false
}

/// The exporter started with `args`, once `collector` answers its scrapes;
/// None (reported as skipped) when that collector cannot run here, a
/// failure under PMOAS_REQUIRE_BPF.
pub fn exporter_with_collector(test: &str, collector: &str, args: &[&str]) -> Option<Exporter> {
    let exporter = Exporter::start(args);
    let m = exporter.scrape();
    if m.get("pmoas_scrape_collector_success", &[("collector", collector)]) != Some(1.0) {
        let why = format!("the {collector} collector does not run:\n{}", exporter.log_text());
        assert!(!require_bpf(), "{test}: {why}");
        pmoas_testbed::report_skip(test, &why);
        return None;
    }
    Some(exporter)
}

/// Root, and the testbed's programs.
pub fn testbed_problems() -> Vec<String> {
    pmoas_testbed::missing_prerequisites()
}

pub fn exporter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pmoas-exporter"))
}

/// The testbed's tool binary, built beside the exporter (its package has an
/// integration test, so `cargo test --workspace` builds it).
pub fn testbed_bin() -> PathBuf {
    let p = exporter_bin().with_file_name("pmoas-testbed");
    assert!(p.exists(), "{} missing: build the workspace (`cargo build --workspace`)", p.display());
    p
}

/// A loopback port free now, below the ephemeral range: a port the kernel
/// handed out for bind(0) is also where the next client socket of a
/// parallel test (wrk, curl, the exporter's own API client) may land before
/// the exporter binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 4000) as u16 * 3;
    for _ in 0..12000 {
        let port = 20000 + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % 12000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running exporter; killed when dropped.
pub struct Exporter {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Exporter {
    /// Starts the exporter on a free loopback port with `args`, and waits
    /// until /readyz says every collector finished starting.
    pub fn start(args: &[&str]) -> Exporter {
        Self::start_with(Command::new(exporter_bin()), args)
    }

    /// `cmd` names the program (and e.g. setpriv's arguments before it);
    /// a port taken between choosing and binding it is retried with another
    /// (a copy of `cmd`: program, arguments and environment, not pre_exec).
    pub fn start_with(cmd: Command, args: &[&str]) -> Exporter {
        let copy = || {
            let mut c = Command::new(cmd.get_program());
            c.args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c
        };
        let retries: Vec<Command> = (0..4).map(|_| copy()).collect();
        for c in std::iter::once(cmd).chain(retries) {
            if let Some(e) = Self::try_start(c, args) {
                return e;
            }
        }
        panic!("exporter could not bind a free port in 5 tries");
    }

    fn try_start(mut cmd: Command, args: &[&str]) -> Option<Exporter> {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::env::temp_dir().join(format!("pmoas-exporter-test-{port}.log"));
        let child = cmd
            .args(["--web.listen-address", &addr.to_string(), "--log.level", "debug"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning pmoas-exporter");
        let mut e = Exporter { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Exited first: the answer below would be someone else's.
            if let Ok(Some(status)) = e.child.try_wait() {
                if e.log_text().contains("Address already in use") {
                    return None;
                }
                panic!("exporter exited with {status}:\n{}", e.log_text());
            }
            if let Ok((200, _)) = e.get("/readyz") {
                return Some(e);
            }
            assert!(Instant::now() < deadline, "exporter not ready in 20 s:\n{}", e.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET with extra headers; (status, body).
    pub fn request(&self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path, headers)
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path, &[])
    }

    pub fn scrape(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Is the socket collector running with its programs attached? If not,
    /// skip (or fail under PMOAS_REQUIRE_BPF) with the exporter's reason.
    pub fn socket_collector_runs(&self, test: &str) -> bool {
        let m = self.scrape();
        if m.get("pmoas_scrape_collector_success", &[("collector", "socket")]) == Some(1.0) {
            return true;
        }
        let (_, page) = self.get("/").unwrap_or_default();
        can_run(
            test,
            &[format!("the socket collector did not start; landing page:\n{page}\nlog:\n{}", self.log_text())],
        )
    }

    /// Scrapes until `pred` holds (metadata arrives asynchronously); the
    /// scrape that satisfied it. Fails after `within`, with the
    /// container_info series and the log.
    pub fn eventually(&self, what: &str, within: Duration, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + within;
        loop {
            let m = self.scrape();
            if pred(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\ncontainer_info:\n{}\nlog:\n{}",
                m.describe("pmoas_container_info", &[]),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM and wait; the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "exporter ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use pmoas_testbed::traffic::http_get_with as http_get;

/// One scrape, parsed: series -> value.
#[derive(Debug, Default)]
pub struct Metrics {
    pub series: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (name_labels, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (name_labels.to_string(), BTreeMap::new()),
            };
            series.push((name, labels, value));
        }
        Metrics { series }
    }

    /// Every series of `name` whose labels include `want`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> + 'a {
        self.series
            .iter()
            .filter(move |(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
    }

    /// Sum of every series of `name` whose labels include `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).map(|(_, _, v)| v).sum()
    }

    /// The one series of `name` with these labels, if any.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<f64> = self.matching(name, want).map(|(_, _, v)| *v).collect();
        (hits.len() == 1).then(|| hits[0])
    }

    /// Label sets of `name` matching `want`, for messages.
    pub fn describe(&self, name: &str, want: &[(&str, &str)]) -> String {
        self.matching(name, want).map(|(_, l, v)| format!("{l:?} = {v}")).collect::<Vec<_>>().join("\n")
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                o => value.push(o),
            }
        }
        out.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// Runs a traffic tool of pmoas-testbed in `place`; its JSON report.
pub fn tool(pod: &Pod, place: Place, args: &[&str]) -> serde_json::Value {
    let out = pod.command(place, testbed_bin()).args(args).output().expect("running pmoas-testbed");
    assert!(out.status.success(), "pmoas-testbed {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// Starts a pmoas-testbed tcp-server in `place`, returns once it listens.
pub fn server(pod: &Pod, place: Place, args: &[&str]) -> std::process::Child {
    let mut child = pod
        .command(place, testbed_bin())
        .arg("tcp-server")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tcp-server");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening"), "tcp-server: {line}");
    child
}

/// Waits for a tool server to finish; its JSON report.
pub fn finish(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// The W labels of the testbed's workloads, as discovery names them
/// without the Kubernetes API: pod UID, 12-character container ID, role;
/// the client outside the pod is named after its cgroup.
pub struct Workloads<'a> {
    pod: &'a Pod,
    client: String,
}

impl<'a> Workloads<'a> {
    pub fn of(pod: &'a Pod) -> Workloads<'a> {
        Workloads { pod, client: format!("pmoas-testbed-{}-client", pod.state.name) }
    }

    pub fn sidecar(&self) -> Vec<(&'static str, &str)> {
        vec![("pod", self.pod.state.uid.as_str()), ("container", &self.pod.state.sidecar_id[..12]), ("role", "sidecar")]
    }

    pub fn app(&self) -> Vec<(&'static str, &str)> {
        vec![("pod", self.pod.state.uid.as_str()), ("container", &self.pod.state.app_id[..12]), ("role", "app")]
    }

    pub fn client(&self) -> Vec<(&'static str, &str)> {
        vec![("pod", ""), ("container", self.client.as_str()), ("role", "")]
    }
}

pub fn with<'a>(
    mut base: Vec<(&'static str, &'a str)>,
    extra: &[(&'static str, &'a str)],
) -> Vec<(&'static str, &'a str)> {
    base.extend_from_slice(extra);
    base
}
