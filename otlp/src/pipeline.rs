//! The queue, the batching worker and its counters.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SpanData, SpanEvents, SpanExporter as _, SpanLinks,
};
use tokio::sync::mpsc;

use crate::Error;
use crate::config::{Destination, OtlpConfig, Protocol};
use crate::context::RemoteParent;

/// An attribute value: what the OTLP `AnyValue` carries that pmoas uses.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    String(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::String(v.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::String(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<u16> for AttrValue {
    fn from(v: u16) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Double(v)
    }
}

/// Attributes as (key, value) pairs; keys follow the OTel semantic
/// conventions where one exists (`network.peer.address`, `http.response.status_code`).
pub type Attributes = Vec<(String, AttrValue)>;

/// Shorthand for one attribute: `attr("k8s.pod.name", "web-0")`.
pub fn attr(key: impl Into<String>, value: impl Into<AttrValue>) -> (String, AttrValue) {
    (key.into(), value.into())
}

/// The OTel span kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpanKind {
    #[default]
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// One span of a [`Trace`].
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    /// Before `start` is taken as `start` (clocks of two events can disagree).
    pub end: SystemTime,
    /// Index of the parent span within the same trace; it must come before
    /// this span, so a trace has no cycles. None: a root span.
    pub parent: Option<usize>,
    pub attributes: Attributes,
    /// Some: the span's status is Error with this description.
    pub error: Option<String>,
}

impl Span {
    /// A root span with no attributes.
    pub fn new(name: impl Into<String>, start: SystemTime, end: SystemTime) -> Span {
        Span {
            name: name.into(),
            kind: SpanKind::Internal,
            start,
            end,
            parent: None,
            attributes: Vec::new(),
            error: None,
        }
    }
}

/// The pod a trace belongs to, exported as OTel k8s resource attributes
/// (`k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid`,
/// `k8s.container.name`); empty fields are left out, as on a plain host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: Option<String>,
}

impl Pod {
    fn attributes(&self) -> Vec<KeyValue> {
        [
            ("k8s.namespace.name", Some(&self.namespace)),
            ("k8s.pod.name", Some(&self.name)),
            ("k8s.pod.uid", Some(&self.uid)),
            ("k8s.container.name", self.container.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| KeyValue::new(k, v.clone())))
        .collect()
    }
}

/// Spans that share one trace id; what a collector hands to [`Pipeline::submit`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub pod: Option<Pod>,
    pub spans: Vec<Span>,
    /// The caller's span this trace continues (from a valid W3C
    /// `traceparent`, see [`RemoteParent::from_traceparent`]): the spans
    /// take its trace id, and the root spans (`parent: None`) become its
    /// children, with the parent marked remote. None: a new trace, with a
    /// random trace id.
    pub remote_parent: Option<RemoteParent>,
}

/// Why spans were lost; the `reason` label of `pmoas_otlp_spans_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The queue held `otlp.queue_size` spans already.
    QueueFull,
    /// The receiver refused them or could not be reached (after the OTLP
    /// exporter's own retries), or the request timed out.
    ExportFailed,
    /// A parent index that does not point to an earlier span of the trace.
    Invalid,
    /// Submitted after the export worker had stopped.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 4] =
        [DropReason::QueueFull, DropReason::ExportFailed, DropReason::Invalid, DropReason::Shutdown];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::Invalid => "invalid",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// What the pipeline has done so far; for the exporter's metrics.
///
/// Proposed series (counters since start, except the gauges):
///
/// | series | from |
/// |---|---|
/// | `pmoas_otlp_spans_submitted_total` | [`submitted`](Self::submitted) |
/// | `pmoas_otlp_spans_exported_total` | [`exported`](Self::exported) |
/// | `pmoas_otlp_spans_dropped_total{reason="queue_full"\|"export_failed"\|"invalid"\|"shutdown"}` | [`dropped`](Self::dropped) |
/// | `pmoas_otlp_export_requests_total{result="ok"\|"error"}` | [`requests_ok`](Self::requests_ok), [`requests_failed`](Self::requests_failed) |
/// | `pmoas_otlp_queue_spans` (gauge) | [`queued`](Self::queued) |
/// | `pmoas_otlp_queue_capacity_spans` (gauge) | [`capacity`](Self::capacity) |
///
/// Every submitted span ends up exported or dropped once:
/// `submitted = exported + sum(dropped) + queued`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub submitted: u64,
    pub exported: u64,
    pub dropped: Vec<(DropReason, u64)>,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub queued: u64,
    pub capacity: u64,
}

impl Stats {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    exported: AtomicU64,
    dropped: [AtomicU64; 4],
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    /// Spans submitted and not yet exported or dropped, including the batch
    /// being sent: what the queue bound applies to.
    queued: AtomicUsize,
}

impl Counters {
    fn drop_spans(&self, reason: DropReason, n: usize) {
        let i = DropReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.dropped[i].fetch_add(n as u64, Ordering::Relaxed);
    }
}

enum Msg {
    Trace(Trace),
    Flush(std::sync::mpsc::SyncSender<()>),
}

struct Running {
    tx: mpsc::UnboundedSender<Msg>,
    worker: JoinHandle<()>,
    destination: Destination,
}

/// The shared OTLP trace pipeline: collectors [`submit`](Self::submit)
/// traces, a worker thread batches and exports them. Share it between
/// collectors behind an `Arc`.
pub struct Pipeline {
    running: Option<Running>,
    counters: Arc<Counters>,
    capacity: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("destination", &self.destination()).finish_non_exhaustive()
    }
}

/// The resource attributes of this exporter itself: `service.name=pmoas`,
/// `service.version`, `host.name` and, when known, `k8s.node.name`.
pub fn node_resource(node_name: Option<&str>) -> Attributes {
    let mut out = vec![attr("service.name", "pmoas"), attr("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(host) = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string())
        && !host.is_empty()
    {
        out.push(attr("host.name", host));
    }
    if let Some(node) = node_name.filter(|n| !n.is_empty()) {
        out.push(attr("k8s.node.name", node));
    }
    out
}

impl Pipeline {
    /// A pipeline that exports nothing and counts nothing: what a collector
    /// gets when no endpoint is configured.
    pub fn disabled() -> Pipeline {
        Pipeline { running: None, counters: Arc::default(), capacity: 0 }
    }

    /// Starts exporting to the configured endpoint, with the process's
    /// `OTEL_EXPORTER_OTLP_*` variables filling in what is not set; a
    /// disabled pipeline when no endpoint is set anywhere. `resource`: the
    /// exporter's own resource attributes (see [`node_resource`]); every
    /// trace adds its pod's.
    pub fn start(config: &OtlpConfig, resource: Attributes) -> Result<Pipeline, Error> {
        match config.resolve_from_process_env()? {
            Some(destination) => Pipeline::start_to(config, destination, resource),
            None => Ok(Pipeline::disabled()),
        }
    }

    /// [`start`](Self::start) with an explicit environment (tests).
    pub fn start_with_env(
        config: &OtlpConfig,
        env: &[(String, String)],
        resource: Attributes,
    ) -> Result<Pipeline, Error> {
        match config.resolve(env)? {
            Some(destination) => Pipeline::start_to(config, destination, resource),
            None => Ok(Pipeline::disabled()),
        }
    }

    fn start_to(config: &OtlpConfig, destination: Destination, mut resource: Attributes) -> Result<Pipeline, Error> {
        if !resource.iter().any(|(k, _)| k == "service.name") {
            resource.insert(0, attr("service.name", "pmoas"));
        }
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let worker = Worker {
            rx,
            counters: counters.clone(),
            resource: resource.into_iter().map(key_value).collect(),
            batch_size: config.batch_size.max(1),
            batch_delay: config.batch_delay,
            // The OTLP exporter retries a failed request three times with
            // backoff, each attempt bounded by the timeout; this bounds the
            // whole, in case a transport ignores its timeout.
            export_deadline: config.timeout.saturating_mul(4).saturating_add(Duration::from_secs(5)),
            warnings: WarnLimiter::default(),
        };
        let dest = destination.clone();
        // A thread with its own current-thread runtime: the pipeline works
        // the same whatever runtime (or none) its callers use, and a slow
        // receiver never holds up the exporter's own runtime.
        let handle = std::thread::Builder::new()
            .name("pmoas-otlp".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // tonic's lazy channel spawns onto the current runtime,
                    // so the exporter is built inside it.
                    match build_exporter(&dest) {
                        Ok(exporter) => {
                            let _ = ready_tx.send(Ok(()));
                            worker.run(exporter).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| Error::Build { url: destination.url.clone(), reason: format!("cannot start thread: {e}") })?;
        let built = ready_rx.recv().unwrap_or_else(|_| Err("export thread ended before it started".into()));
        if let Err(reason) = built {
            let _ = handle.join();
            return Err(Error::Build { url: destination.url, reason });
        }
        tracing::info!(
            endpoint = %destination.url,
            protocol = %destination.protocol,
            from = destination.source,
            "exporting traces over OTLP"
        );
        Ok(Pipeline {
            running: Some(Running { tx, worker: handle, destination }),
            counters,
            capacity: config.queue_size,
        })
    }

    /// False when no endpoint is configured: collectors may then skip
    /// building traces at all.
    pub fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    /// Where traces go, if anywhere.
    pub fn destination(&self) -> Option<&Destination> {
        self.running.as_ref().map(|r| &r.destination)
    }

    /// Queues a trace for export; never blocks. False when it was not
    /// queued: the pipeline is disabled (nothing counted), the queue is
    /// full, or a parent index is invalid (its spans counted as dropped).
    pub fn submit(&self, trace: Trace) -> bool {
        let Some(running) = &self.running else { return false };
        let n = trace.spans.len();
        if n == 0 {
            return true;
        }
        let c = &self.counters;
        c.submitted.fetch_add(n as u64, Ordering::Relaxed);
        if !parents_are_valid(&trace.spans) {
            c.drop_spans(DropReason::Invalid, n);
            return false;
        }
        let reserved = c.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
            q.checked_add(n).filter(|total| *total <= self.capacity)
        });
        if reserved.is_err() {
            c.drop_spans(DropReason::QueueFull, n);
            return false;
        }
        if running.tx.send(Msg::Trace(trace)).is_err() {
            c.queued.fetch_sub(n, Ordering::AcqRel);
            c.drop_spans(DropReason::Shutdown, n);
            return false;
        }
        true
    }

    /// Exports everything queued now, without waiting for a batch to fill;
    /// waits at most `wait` for it. True when every span queued before the
    /// call was exported or dropped. Blocks the caller: for shutdown and
    /// tests, not for a collector's hot path.
    pub fn flush(&self, wait: Duration) -> bool {
        let Some(running) = &self.running else { return true };
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        if running.tx.send(Msg::Flush(done_tx)).is_err() {
            return false;
        }
        done_rx.recv_timeout(wait).is_ok()
    }

    /// Flushes (waiting at most `wait`), then stops the worker. Spans still
    /// queued after `wait` are exported by the worker as it ends, if the
    /// process lives long enough.
    pub fn shutdown(mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        self.flush(wait);
        if let Some(running) = self.running.take() {
            drop(running.tx);
            while !running.worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if running.worker.is_finished() {
                let _ = running.worker.join();
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            submitted: c.submitted.load(Ordering::Relaxed),
            exported: c.exported.load(Ordering::Relaxed),
            dropped: DropReason::ALL.iter().zip(&c.dropped).map(|(r, n)| (*r, n.load(Ordering::Relaxed))).collect(),
            requests_ok: c.requests_ok.load(Ordering::Relaxed),
            requests_failed: c.requests_failed.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed) as u64,
            capacity: self.capacity as u64,
        }
    }
}

pub(crate) fn parents_are_valid(spans: &[Span]) -> bool {
    spans.iter().enumerate().all(|(i, s)| s.parent.is_none_or(|p| p < i))
}

fn build_exporter(dest: &Destination) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match dest.protocol {
        Protocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &dest.headers {
                if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
                    headers.append(k, v);
                }
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(dest.url.clone())
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_timeout(dest.timeout)
                .with_metadata(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers))
                .build()
        }
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(dest.url.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(dest.timeout)
            .with_headers(dest.headers.iter().cloned().collect::<HashMap<_, _>>())
            .build(),
    };
    built.map_err(|e| e.to_string())
}

fn key_value((key, value): (String, AttrValue)) -> KeyValue {
    let value = match value {
        AttrValue::String(s) => Value::from(s),
        AttrValue::Int(i) => Value::I64(i),
        AttrValue::Bool(b) => Value::Bool(b),
        AttrValue::Double(d) => Value::F64(d),
    };
    KeyValue::new(key, value)
}

/// The OTel form of one trace: fresh span ids, parents linked, the pod's
/// resource attributes after the exporter's own. The trace id is the
/// remote parent's, or a fresh one.
pub(crate) fn to_span_data(
    trace: Trace,
    node: &[KeyValue],
    ids: &RandomIdGenerator,
    scope: &InstrumentationScope,
) -> Batch {
    let mut resource = node.to_vec();
    resource.extend(trace.pod.as_ref().map(Pod::attributes).unwrap_or_default());
    let remote = trace.remote_parent.map(|p| (TraceId::from_bytes(p.trace_id), SpanId::from_bytes(p.span_id)));
    let trace_id = remote.map_or_else(|| ids.new_trace_id(), |(t, _)| t);
    let remote_span = remote.map_or(SpanId::INVALID, |(_, s)| s);
    let span_ids: Vec<SpanId> = trace
        .spans
        .iter()
        .map(|_| {
            loop {
                // A span id equal to the caller's would make the trace a cycle.
                let id = ids.new_span_id();
                if id != remote_span {
                    break id;
                }
            }
        })
        .collect();
    let spans = trace
        .spans
        .into_iter()
        .zip(&span_ids)
        .map(|(s, id)| {
            let parent = s.parent.and_then(|p| span_ids.get(p).copied());
            SpanData {
                span_context: SpanContext::new(trace_id, *id, TraceFlags::SAMPLED, false, TraceState::default()),
                parent_span_id: parent.unwrap_or(remote_span),
                parent_span_is_remote: parent.is_none() && remote.is_some(),
                span_kind: match s.kind {
                    SpanKind::Internal => opentelemetry::trace::SpanKind::Internal,
                    SpanKind::Server => opentelemetry::trace::SpanKind::Server,
                    SpanKind::Client => opentelemetry::trace::SpanKind::Client,
                    SpanKind::Producer => opentelemetry::trace::SpanKind::Producer,
                    SpanKind::Consumer => opentelemetry::trace::SpanKind::Consumer,
                },
                name: Cow::Owned(s.name),
                start_time: s.start,
                end_time: s.end.max(s.start),
                attributes: s.attributes.into_iter().map(key_value).collect(),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: s.error.map_or(Status::Unset, Status::error),
                instrumentation_scope: scope.clone(),
            }
        })
        .collect();
    Batch { resource, spans }
}

/// Spans that share one resource (one pod).
pub(crate) struct Batch {
    pub(crate) resource: Vec<KeyValue>,
    pub(crate) spans: Vec<SpanData>,
}

struct Worker {
    rx: mpsc::UnboundedReceiver<Msg>,
    counters: Arc<Counters>,
    resource: Vec<KeyValue>,
    batch_size: usize,
    batch_delay: Duration,
    export_deadline: Duration,
    warnings: WarnLimiter,
}

/// An unreachable receiver fails every batch; one line a minute says so.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl Worker {
    async fn run(mut self, mut exporter: opentelemetry_otlp::SpanExporter) {
        let ids = RandomIdGenerator::default();
        let scope = InstrumentationScope::builder("pmoas").with_version(env!("CARGO_PKG_VERSION")).build();
        let mut pending: Vec<Batch> = Vec::new();
        let mut pending_spans = 0usize;
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let msg = match due {
                Some(at) => tokio::select! {
                    m = self.rx.recv() => m.map(Some),
                    _ = tokio::time::sleep_until(at) => Some(None),
                },
                None => self.rx.recv().await.map(Some),
            };
            match msg {
                Some(Some(Msg::Trace(trace))) => {
                    pending_spans += trace.spans.len();
                    pending.push(to_span_data(trace, &self.resource, &ids, &scope));
                    due.get_or_insert_with(|| tokio::time::Instant::now() + self.batch_delay);
                    if pending_spans >= self.batch_size {
                        self.export(&mut exporter, std::mem::take(&mut pending)).await;
                        (pending_spans, due) = (0, None);
                    }
                }
                Some(Some(Msg::Flush(done))) => {
                    self.export(&mut exporter, std::mem::take(&mut pending)).await;
                    (pending_spans, due) = (0, None);
                    let _ = done.try_send(());
                }
                Some(None) => {
                    self.export(&mut exporter, std::mem::take(&mut pending)).await;
                    (pending_spans, due) = (0, None);
                }
                None => {
                    self.export(&mut exporter, std::mem::take(&mut pending)).await;
                    break;
                }
            }
        }
        let _ = exporter.shutdown();
    }

    /// One request per pod and `batch_size` spans: the OTLP exporter sends
    /// one resource per request.
    async fn export(&mut self, exporter: &mut opentelemetry_otlp::SpanExporter, traces: Vec<Batch>) {
        let mut groups: Vec<Batch> = Vec::new();
        for t in traces {
            match groups.iter_mut().find(|g| g.resource == t.resource) {
                Some(g) => g.spans.extend(t.spans),
                None => groups.push(t),
            }
        }
        for group in groups {
            exporter.set_resource(&Resource::builder_empty().with_attributes(group.resource).build());
            let mut spans = group.spans;
            while !spans.is_empty() {
                let rest = spans.split_off(spans.len().min(self.batch_size));
                let n = spans.len();
                let result = tokio::time::timeout(self.export_deadline, exporter.export(spans)).await;
                let c = self.counters.clone();
                match result {
                    Ok(Ok(())) => {
                        c.exported.fetch_add(n as u64, Ordering::Relaxed);
                        c.requests_ok.fetch_add(1, Ordering::Relaxed);
                        if self.warnings.success() {
                            tracing::info!("OTLP export works again");
                        }
                    }
                    Ok(Err(e)) => self.failed(n, &e.to_string()),
                    Err(_) => self.failed(n, &format!("no answer within {:?}", self.export_deadline)),
                }
                c.queued.fetch_sub(n, Ordering::AcqRel);
                spans = rest;
            }
        }
    }

    fn failed(&mut self, spans: usize, error: &str) {
        self.counters.drop_spans(DropReason::ExportFailed, spans);
        self.counters.requests_failed.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warnings.failure(Instant::now()) {
            tracing::warn!(
                error,
                spans,
                failures_since_last_warning = suppressed,
                "OTLP export failed; spans dropped (pmoas_otlp_spans_dropped_total{{reason=\"export_failed\"}})"
            );
        }
    }
}

/// At most one warning per [`WARNING_INTERVAL`], however often exports fail
/// or recover; the failures in between are reported with the next warning.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
    warned_since_success: bool,
}

impl WarnLimiter {
    /// Some(failures not warned about since the last warning) when a
    /// warning may be logged now.
    pub(crate) fn failure(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < WARNING_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                self.warned_since_success = true;
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// True when a warning was logged since the last success: recovery is
    /// then worth a line (and so no more often than the warnings).
    pub(crate) fn success(&mut self) -> bool {
        std::mem::take(&mut self.warned_since_success)
    }
}
