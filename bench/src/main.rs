//! `pmoas-bench`: what pmoas costs, measured side by side in one run, and
//! written into the sections of BENCHMARKS.md.
//!
//! - `socket`: exporter off vs on through a real sidecar ([`socket`]);
//! - `discovery`: 500 pods from a fake Kubernetes API, and one watched pod of
//!   50 busy ones vs all of them ([`discovery`]);
//! - `cgroup`: the cgroup collector with 100 containers (scrape time, CPU),
//!   and its per-packet cgroup_skb programs through a real sidecar ([`cgroup`]);
//! - `netstack`: CPU per request and the programs' run time through a real
//!   sidecar, at the default sampling and at every packet ([`netstack`]);
//! - `http`: the http collector's cost through a real sidecar, wrk and
//!   h2load gRPC ([`http`]);
//! - `sockops`: socket redirect between sidecar and app against the plain
//!   TCP stack: an in-pod ping-pong (latency, round trips/s, CPU per
//!   message, pinned and unpinned), wrk through Envoy, the programs' run
//!   time ([`sockops`]);
//! - `scale`: curves of every cost against pods (10-1,100), open
//!   connections (1k-100k) and connection rate, with SVG plots in
//!   `bench/plots/` ([`scale`]); not part of `all`;
//! - `scrape-memory`: the exporter's RSS around 10 concurrent scrapes of 750
//!   containers, optionally beside another build (`--compare PATH`)
//!   ([`scrape_memory`]); not part of `all`.
//!
//! Run: `scripts/bench.sh [socket|discovery|cgroup|netstack|http|sockops|scale|scrape-memory|all] [--rounds N] [--seconds S]`
//! (builds release binaries; as root).

mod cgroup;
mod common;
mod discovery;
mod http;
mod netstack;
mod plot;
mod scale;
mod scrape_memory;
mod socket;
mod sockops;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub struct Opts {
    pub rounds: usize,
    pub seconds: u64,
    pub connections: u64,
    pub exporter: PathBuf,
    pub out: PathBuf,
    /// Another exporter binary to measure beside this one (scrape-memory).
    pub compare: Option<PathBuf>,
    /// Every argument, for a benchmark's own options.
    pub args: Vec<String>,
}

impl Opts {
    /// The value after `key`, if given.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.args.iter().position(|a| a == key).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }
}

fn opts(args: &[String]) -> Result<Opts> {
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Ok(Opts {
        rounds: get("--rounds").map(|v| v.parse()).transpose()?.unwrap_or(3),
        seconds: get("--seconds").map(|v| v.parse()).transpose()?.unwrap_or(10),
        connections: get("--connections").map(|v| v.parse()).transpose()?.unwrap_or(32),
        exporter: get("--exporter").map(PathBuf::from).unwrap_or_else(|| root.join("target/release/pmoas-exporter")),
        out: get("--out").map(PathBuf::from).unwrap_or_else(|| root.join("BENCHMARKS.md")),
        compare: get("--compare").map(PathBuf::from),
        args: args.to_vec(),
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("pmoas-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The sockops benchmark's ping-pong, run inside the testbed pod.
    if matches!(args.first().map(String::as_str), Some("pp-server" | "pp-client")) {
        return sockops::pingpong_main(&args);
    }
    let which = args.first().filter(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "all".into());
    let o = opts(&args)?;
    let missing = pmoas_testbed::missing_prerequisites();
    if !missing.is_empty() {
        bail!("the benchmarks need: {}", missing.join("; "));
    }
    if !o.exporter.is_file() {
        bail!("{} missing: cargo build --release -p pmoas-exporter", o.exporter.display());
    }
    match which.as_str() {
        "socket" => socket::run(&o),
        "discovery" => discovery::run(&o),
        "cgroup" => cgroup::run(&o),
        "netstack" => netstack::run(&o),
        "http" => http::run(&o),
        "sockops" => sockops::run(&o),
        "scrape-memory" => scrape_memory::run(&o),
        "scale" => scale::run(&o),
        "all" => {
            socket::run(&o)?;
            discovery::run(&o)?;
            cgroup::run(&o)?;
            netstack::run(&o)?;
            http::run(&o)?;
            sockops::run(&o)
        }
        other => bail!(
            "unknown benchmark `{other}` (socket, discovery, cgroup, netstack, http, sockops, scale, scrape-memory, all)"
        ),
    }
}
