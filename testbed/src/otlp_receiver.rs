//! A real OTLP receiver for tests: `testbed/otlp_receiver.py`, built from
//! the official `opentelemetry-proto` definitions (PyPI), run from
//! `target/pmoas-venv` (`scripts/install-deps.sh test` installs it). It
//! serves OTLP/gRPC and OTLP/HTTP on loopback ports it picks, and reports
//! every span and every metric data point it receives as one JSON line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The venv's Python, if it has what the receiver imports; else why not.
pub fn python() -> Result<PathBuf, String> {
    let python = workspace().join("target/pmoas-venv/bin/python");
    if !python.exists() {
        return Err(format!("{} missing (scripts/install-deps.sh test)", python.display()));
    }
    let probe = Command::new(&python)
        .args(["-c", "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc"])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "opentelemetry-proto/grpcio missing from target/pmoas-venv (scripts/install-deps.sh test): {}",
            String::from_utf8_lossy(&probe.stderr).lines().last().unwrap_or("")
        ));
    }
    Ok(python)
}

/// Like the exporter tests' `can_run`: skip loudly, or fail under
/// PMOAS_REQUIRE_BPF (what CI sets), where a skipped test would hide a
/// broken setup.
pub fn can_run(test: &str) -> Option<PathBuf> {
    match python() {
        Ok(p) => Some(p),
        Err(why) if std::env::var_os("PMOAS_REQUIRE_BPF").is_some_and(|v| v == "1") => {
            panic!("{test}: PMOAS_REQUIRE_BPF is set but: {why}")
        }
        Err(why) => {
            crate::report_skip(test, &why);
            None
        }
    }
}

pub struct Receiver {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub grpc: u16,
    pub http: u16,
}

impl Receiver {
    pub fn start(python: &Path) -> Receiver {
        let mut child = Command::new(python)
            .arg(workspace().join("testbed/otlp_receiver.py"))
            .args(["--grpc-port", "0", "--http-port", "0"])
            // The receiver exits when this pipe closes, even if this test dies.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start otlp_receiver.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines.recv_timeout(Duration::from_secs(60)).expect("the receiver's ready line");
        let ready: Value = serde_json::from_str(&ready).expect("ready line is JSON");
        let port = |k: &str| ready["ready"][k].as_u64().and_then(|p| u16::try_from(p).ok()).expect("a port");
        let (grpc, http) = (port("grpc"), port("http"));
        Receiver { child, lines, grpc, http }
    }

    /// `n` span lines, or whatever arrived by the deadline. Metric lines
    /// that come meanwhile are dropped.
    pub fn spans(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line).expect("span line is JSON");
                    if v.get("signal").is_none() {
                        out.push(v);
                    }
                }
                Err(_) => break,
            }
        }
        out
    }

    /// The data points of the first whole metrics request that came over
    /// `transport` (`grpc` or `http`) and was taken at or after
    /// `after_unix_nano`, or None by the deadline. Span lines and other
    /// requests that come meanwhile are dropped.
    pub fn metrics_export(&self, transport: &str, after_unix_nano: u128, within: Duration) -> Option<Vec<Value>> {
        let deadline = Instant::now() + within;
        let mut points: Vec<Value> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value = serde_json::from_str(&line).expect("receiver line is JSON");
            if v["transport"] != transport {
                continue;
            }
            match v["signal"].as_str() {
                Some("metric") => points.push(v),
                Some("metrics_done") => {
                    let taken = points.first().and_then(|p| p["time_unix_nano"].as_u64()).unwrap_or(0);
                    if u128::from(taken) >= after_unix_nano && !points.is_empty() {
                        return Some(points);
                    }
                    points.clear();
                }
                _ => {}
            }
        }
    }

    pub fn stop(&mut self) {
        // Only the process this test started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
