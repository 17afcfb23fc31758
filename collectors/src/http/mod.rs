//! http collector, user side: HTTP/1.x, HTTP/2 and gRPC requests of the
//! pods' processes, seen at the system call boundary, with no change to
//! the apps; per container, server and client side; and the latency the
//! sidecar adds to each request it handles.
//!
//! Kernel side: `bpf-programs/src/http.bpf.c` ([`capture`]): the socket
//! reads and writes of the watched pods' containers, first bytes and
//! lengths, through a ring buffer. A thread drains it every
//! [`DRAIN_INTERVAL`] into the [`tracker`]: a parser per connection
//! (`pmoas-protocols`), histograms per (container, side, method, status)
//! or (container, side, gRPC service, method, code), and the pairing of a
//! sidecar's requests with their forwards ([`pairing`]). gRPC calls are
//! counted in the `pmoas_grpc_*` families only; the one capture serves
//! both, so that each socket call is traced once.
//!
//! Watched: every container of a pod (under `--target.*`, the selected
//! ones); processes outside pods are not captured.
//!
//! With `--otlp.endpoint`, sampled requests through the sidecar become
//! traces: the sidecar's spans and the app's, parent and child ([`traces`]).

pub mod capture;
pub mod pairing;
pub mod routes;
pub mod traces;
pub mod tracker;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmoas_discovery::{Discovery, Lookup, Role as WorkloadRole};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::ebpf::{Kernel, ProgramStatus};
use crate::metrics::{Desc, Histogram, MetricSet, WorkloadLabels};
use crate::setting::{self, Setting};
use crate::{BuildContext, BuildError, Collector, CollectorInfo, CollectorSpec};
use capture::Capture;
use traces::{Context, DEFAULT_TRACE_SAMPLE_RATE, Names};
use tracker::{ADDED_BUCKETS, DURATION_BUCKETS, Hist, Owner, Tracker};

pub const INFO: CollectorInfo = CollectorInfo {
    name: "http",
    help: "HTTP/1.x, HTTP/2 and gRPC requests of the pods' containers from their socket system calls: \
           duration by method and status (gRPC: service, method, code), server and client side, and the \
           latency the sidecar adds (syscall tracepoints)",
    default_enabled: false,
};

pub const HTTP_SERVER: Desc = Desc::histogram(
    "pmoas_http_server_request_duration_seconds",
    "HTTP requests served: first request byte read to last response byte written, per serving container.",
);
pub const HTTP_CLIENT: Desc = Desc::histogram(
    "pmoas_http_client_request_duration_seconds",
    "HTTP requests made: first request byte written to last response byte read, per calling container.",
);
pub const GRPC_SERVER: Desc =
    Desc::histogram("pmoas_grpc_server_request_duration_seconds", "gRPC calls served, per serving container.");
pub const GRPC_CLIENT: Desc =
    Desc::histogram("pmoas_grpc_client_request_duration_seconds", "gRPC calls made, per calling container.");
pub const SIDECAR_ADDED: Desc = Desc::histogram(
    "pmoas_sidecar_added_latency_seconds",
    "Per request the sidecar handles, the time spent in the sidecar: its span minus the span of the request it \
     forwarded (inbound: its downstream request vs. its request to the app; outbound: the app's request vs. \
     its upstream request).",
);
pub const SIDECAR_PAIRING: Desc = Desc::counter(
    "pmoas_sidecar_pairing_total",
    "Requests of the sidecar-added latency by how they were paired (request_id, unique, ordered), and those \
     that were not: no_forward (the sidecar answered itself, or the forward was not seen), forward_unclaimed.",
);
pub const TRACKED: Desc = Desc::gauge("pmoas_http_connections_tracked", "HTTP connections followed now.");
pub const TRACES: Desc = Desc::counter(
    "pmoas_http_traces_total",
    "Sampled sidecar requests handed to the OTLP pipeline as traces (with --otlp.endpoint), by direction and \
     where the trace id came from: traceparent (the request's, continued), new (none), invalid_traceparent \
     (one that did not parse: ignored, a new trace).",
);
pub const TRACE_SPANS_MISSING: Desc = Desc::counter(
    "pmoas_http_trace_spans_missing_total",
    "Traces handed over without the far end of the sidecar-app hop (inbound: the app's server span; outbound: \
     the sidecar's server span), not seen within 200 ms of the request's end.",
);

/// How often the capture thread drains the ring buffer.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// How often the watched cgroups follow discovery.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the http collector (`[collector.http]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: Option<bool>,
    /// Connections followed at once (a parser each); beyond it new ones are
    /// not followed (counted as `connection_table_full`).
    pub max_connections: u32,
    /// Route patterns ([`routes`]): with any, the HTTP histograms get a
    /// `route` label (the matching pattern, or `_OTHER`).
    #[serde(deserialize_with = "pmoas_discovery::target::list_or_csv", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// With `--otlp.endpoint`: 1 in this many requests through a sidecar
    /// becomes a trace (1: all).
    pub trace_sample_rate: u32,
    /// With `--otlp.endpoint`: also trace every request whose valid W3C
    /// `traceparent` has the sampled flag, whatever `trace_sample_rate`.
    pub trace_parent_based: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: None,
            max_connections: 16384,
            routes: Vec::new(),
            trace_sample_rate: DEFAULT_TRACE_SAMPLE_RATE,
            trace_parent_based: false,
        }
    }
}

/// The `[collector.http]` section.
pub type Config = HttpConfig;

pub const SETTINGS: &[Setting] = &[
    Setting::count(
        "collector.http.max_connections",
        16,
        setting::MAX_MAP_ENTRIES,
        "HTTP connections followed at once in user space (a parser each, at most ~200 KiB); beyond it new ones are not followed, and counted",
    ),
    Setting::repeated(
        "collector.http.routes",
        "PATTERNS",
        ",",
        "Route patterns, first match wins: with any, the HTTP histograms get a `route` label (the pattern, or _OTHER); /users/{id} or /users/:id match one segment, a last /* the rest (at most 256; paths are never labels otherwise)",
    ),
    Setting::count(
        "collector.http.trace_sample_rate",
        1,
        1 << 30,
        "With --otlp.endpoint, 1 in N requests through a sidecar becomes a trace: the sidecar's spans and the app's, parent and child, continuing the request's W3C traceparent (1: all)",
    ),
    Setting::value(
        "collector.http.trace_parent_based",
        "BOOL",
        "With --otlp.endpoint, also trace every request whose W3C traceparent has the sampled flag, whatever the sample rate (true): callers then decide how many, up to the OTLP queue; or not (false)",
    ),
];

pub const SPEC: CollectorSpec = CollectorSpec {
    info: INFO,
    object: pmoas_bpf::HTTP,
    settings: SETTINGS,
    programs: capture::PROGRAMS,
    lost_reasons: &pmoas_bpf::http::LOST_REASONS,
    build: |ctx| Ok(Arc::new(HttpCollector::new(ctx)?)),
};

pub struct HttpCollector {
    kernel: Arc<Kernel>,
    discovery: Arc<Discovery>,
    tracker: Arc<Mutex<Tracker>>,
    stop: Arc<AtomicBool>,
}

impl HttpCollector {
    pub fn new(ctx: &BuildContext) -> Result<HttpCollector, BuildError> {
        let kernel = Arc::new(Kernel::load(&SPEC, ctx, &[], capture::PROGRAMS, None)?);
        let fail = |message: String| BuildError::Failed { message, programs: kernel.programs().to_vec() };
        let capture = Capture::from_maps(kernel.take_map("http_events")?, kernel.take_map("http_watched")?);
        let routes = routes::Routes::new(&ctx.config.http.routes)
            .map_err(|reason| fail(format!("collector.http.routes: {reason}")))?;
        let mut tracker = Tracker::new(ctx.config.http.max_connections as usize);
        tracker.routes = routes;
        let cfg = &ctx.config.http;
        let otlp = ctx.otlp.is_enabled().then(|| ctx.otlp.clone());
        if otlp.is_some() {
            tracker.enable_tracing(cfg.trace_sample_rate, cfg.trace_parent_based);
        }
        let tracker = Arc::new(Mutex::new(tracker));
        let stop = Arc::new(AtomicBool::new(false));
        spawn_capture(capture, ctx.discovery.clone(), tracker.clone(), otlp, stop.clone())
            .map_err(|e| fail(format!("starting the http capture thread: {e}")))?;
        Ok(HttpCollector { kernel, discovery: ctx.discovery.clone(), tracker, stop })
    }
}

impl Drop for HttpCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The pod containers to watch: every live container of a pod, selected.
fn watched(discovery: &Discovery) -> HashSet<u64> {
    discovery
        .cgroups()
        .into_iter()
        .filter(|k| k.live && k.workload.pod_uid.is_some() && k.workload.selected)
        .map(|k| k.id)
        .collect()
}

fn owner(discovery: &Discovery, id: u64) -> Option<Owner> {
    let w = discovery.lookup(id).workload()?.clone();
    Some(Owner { pod_uid: w.pod_uid.clone(), is_sidecar: w.role == WorkloadRole::Sidecar })
}

/// What discovery says of a cgroup, for the spans of a trace.
fn span_names(discovery: &Discovery, id: u64) -> Option<Names> {
    let lookup = discovery.lookup(id);
    let w = lookup.workload()?;
    Some(Names {
        namespace: w.namespace.clone(),
        pod: w.pod.clone(),
        pod_uid: w.pod_uid.clone().unwrap_or_default(),
        container: w.container.clone(),
        role: w.role.as_label(),
    })
}

fn spawn_capture(
    mut capture: Capture,
    discovery: Arc<Discovery>,
    tracker: Arc<Mutex<Tracker>>,
    otlp: Option<Arc<pmoas_otlp::Pipeline>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("http-capture".into()).spawn(move || {
        let mut last_watch: Option<Instant> = None;
        // Owners of the cgroups seen, asked of discovery once per watch
        // interval (a lookup takes its lock; every exchange needs one).
        let owners: RefCell<HashMap<u64, Option<Owner>>> = RefCell::default();
        while !stop.load(Ordering::Relaxed) {
            if last_watch.is_none_or(|t| t.elapsed() >= WATCH_INTERVAL) {
                let ids = watched(&discovery);
                let left_out = capture.watch(&ids);
                tracing::trace!(watched = ids.len(), "http: watched cgroups");
                if left_out > 0 {
                    tracing::warn!(left_out, "more pod containers than the http collector's watched map holds");
                }
                owners.borrow_mut().clear();
                last_watch = Some(Instant::now());
            }
            let names = |id: u64| owners.borrow_mut().entry(id).or_insert_with(|| owner(&discovery, id)).clone();
            // Records are parsed where they lie in the ring, under the
            // tracker's lock (a scrape waits for at most one drain).
            let mut t: Option<std::sync::MutexGuard<'_, Tracker>> = None;
            capture
                .drain(|e| t.get_or_insert_with(|| tracker.lock().unwrap_or_else(|p| p.into_inner())).event(e, &names));
            drop(t);
            if let Some(otlp) = &otlp {
                // Taken after the drain: no event of the ring is newer.
                let clock = Clock::now();
                let ready = tracker.lock().unwrap_or_else(|p| p.into_inner()).take_traces(clock.mono_ns());
                for r in &ready {
                    otlp.submit(traces::to_trace(r, &|id| span_names(&discovery, id), &clock));
                }
            }
            std::thread::sleep(DRAIN_INTERVAL);
        }
    })?;
    Ok(())
}

fn histogram(h: &Hist, bounds: &[f64]) -> Histogram {
    Histogram { sum: h.sum, count: h.count, buckets: h.buckets(bounds) }
}

impl Collector for HttpCollector {
    fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()> {
        self.kernel.export_health(out)?;
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.forget(&|id| !matches!(self.discovery.lookup(id), Lookup::Unknown));
        let name = |id: u64| match self.discovery.lookup(id) {
            Lookup::Live(w) | Lookup::Gone(w) => Some(WorkloadLabels::of(&w)),
            Lookup::Unknown => None,
        };
        for d in [&HTTP_SERVER, &HTTP_CLIENT, &GRPC_SERVER, &GRPC_CLIENT, &SIDECAR_ADDED] {
            out.declare(d);
        }
        for (k, h) in &t.agg.http {
            let Some(w) = name(k.cgroup_id) else { continue };
            let mut labels = w.labels();
            labels.push(("method", k.method.to_string()));
            labels.push(("status_code", k.status_code.to_string()));
            if t.routes.is_enabled() {
                labels.push(("route", t.routes.label(k.route).to_string()));
            }
            out.histogram(if k.server { &HTTP_SERVER } else { &HTTP_CLIENT }, labels, histogram(h, DURATION_BUCKETS));
        }
        for (k, h) in &t.agg.grpc {
            let Some(w) = name(k.cgroup_id) else { continue };
            let mut labels = w.labels();
            labels.push(("grpc_service", k.service.clone()));
            labels.push(("grpc_method", k.method.clone()));
            labels.push(("grpc_code", k.code.to_string()));
            out.histogram(if k.server { &GRPC_SERVER } else { &GRPC_CLIENT }, labels, histogram(h, DURATION_BUCKETS));
        }
        for (k, h) in &t.agg.added {
            let Some(w) = name(k.cgroup_id) else { continue };
            let labels = vec![
                ("namespace", w.namespace.clone()),
                ("pod", w.pod.clone()),
                ("direction", k.direction.as_label().to_string()),
                ("protocol", k.protocol.to_string()),
            ];
            out.histogram(&SIDECAR_ADDED, labels, histogram(h, ADDED_BUCKETS));
        }
        let unpaired = t.unpaired();
        for (how, n) in [
            ("request_id", t.agg.paired.get("request_id").copied().unwrap_or(0)),
            ("unique", t.agg.paired.get("unique").copied().unwrap_or(0)),
            ("ordered", t.agg.paired.get("ordered").copied().unwrap_or(0)),
            ("no_forward", unpaired.no_forward),
            ("forward_unclaimed", unpaired.forward_unclaimed),
        ] {
            out.counter(&SIDECAR_PAIRING, vec![("outcome", how.to_string())], n as f64);
        }
        // What user space could not decode, beside the kernel's losses.
        for (reason, n) in t.agg.losses.iter() {
            out.counter(
                &crate::ebpf::EVENTS_LOST,
                vec![("collector", INFO.name.to_string()), ("reason", reason.to_string())],
                n as f64,
            );
        }
        for (reason, n) in [
            ("connection_table_full", t.agg.connections_dropped),
            ("connection_state_evicted", t.agg.connections_evicted),
            ("capture_part_lost", t.agg.capture_parts_lost),
            ("role_unknown", t.agg.role_unknown),
            ("grpc_method_overflow", t.agg.grpc_overflow),
        ] {
            out.counter(
                &crate::ebpf::EVENTS_LOST,
                vec![("collector", INFO.name.to_string()), ("reason", reason.to_string())],
                n as f64,
            );
        }
        out.gauge(&TRACKED, vec![], t.connections() as f64);
        if let Some(stats) = t.trace_stats() {
            for direction in [pairing::Direction::Inbound, pairing::Direction::Outbound] {
                let d = direction.as_label().to_string();
                for context in Context::ALL {
                    let n = stats.traces.get(&(direction, context)).copied().unwrap_or(0);
                    out.counter(
                        &TRACES,
                        vec![("direction", d.clone()), ("context", context.as_label().into())],
                        n as f64,
                    );
                }
                let missing = stats.missing.get(&direction).copied().unwrap_or(0);
                out.counter(&TRACE_SPANS_MISSING, vec![("direction", d)], missing as f64);
            }
        }
        Ok(())
    }

    fn programs(&self) -> Vec<ProgramStatus> {
        self.kernel.programs().to_vec()
    }

    fn maps(&self) -> Vec<crate::ebpf::MapUsage> {
        self.kernel.maps()
    }
}
