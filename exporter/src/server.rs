//! The HTTP endpoint: `/metrics` (or `--web.telemetry-path`), `/`,
//! `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pmoas_collectors::metrics::{Desc, Rendering};
use pmoas_collectors::{CollectorState, MetricSet, Registry, ScrapeFilter};
use pmoas_discovery::Discovery;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::limits::{self, Admission, Connections, InFlight, ScrapePermit, Scrapes, Slot};
use crate::memory;
use crate::request::{self, Route};

pub const BUILD_INFO: Desc = Desc::gauge("pmoas_build_info", "Build of this exporter (always 1).");
pub const DISCOVERY_WORKLOADS: Desc =
    Desc::gauge("pmoas_discovery_workloads", "Pods and containers discovery knows now, per source.");
pub const DISCOVERY_ERRORS: Desc = Desc::counter(
    "pmoas_discovery_errors_total",
    "Failures of a discovery source (API errors, unreadable sockets or cgroups, malformed objects).",
);
pub const RELOAD_SUCCESSFUL: Desc = Desc::gauge(
    "pmoas_config_last_reload_successful",
    "Whether the last SIGHUP reload of the configuration loaded (1 before any).",
);
pub const RELOAD_TIMESTAMP: Desc = Desc::gauge(
    "pmoas_config_last_reload_success_timestamp_seconds",
    "When the configuration last loaded, at start or on SIGHUP (Unix time).",
);
pub const OTLP_SUBMITTED: Desc = Desc::counter(
    "pmoas_otlp_spans_submitted_total",
    "Spans handed to the OTLP pipeline (sampled journeys and requests).",
);
pub const OTLP_EXPORTED: Desc = Desc::counter("pmoas_otlp_spans_exported_total", "Spans the OTLP receiver accepted.");
pub const OTLP_DROPPED: Desc = Desc::counter(
    "pmoas_otlp_spans_dropped_total",
    "Spans not delivered: queue_full, export_failed (receiver down or refusing), invalid, shutdown.",
);
pub const OTLP_REQUESTS: Desc =
    Desc::counter("pmoas_otlp_export_requests_total", "OTLP export requests, by result (ok, error).");
pub const OTLP_QUEUE: Desc = Desc::gauge("pmoas_otlp_queue_spans", "Spans waiting in the OTLP queue.");
pub const OTLP_CAPACITY: Desc =
    Desc::gauge("pmoas_otlp_queue_capacity_spans", "Spans the OTLP queue holds at most (--otlp.queue-size).");
pub const CONTAINER_INFO: Desc = Desc::gauge(
    "pmoas_container_info",
    "One series per live container with its image and sidecar kind (1), for joins in PromQL.",
);
pub const FEATURE_DEGRADED: Desc = Desc::gauge(
    "pmoas_feature_degraded",
    "A feature running degraded (1): some series are absent or incomplete; the landing page and the log say why.",
);

/// What every request handler shares.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub discovery: Arc<Discovery>,
    /// What SIGHUP may change while serving.
    pub web: RwLock<ReloadableWeb>,
    /// The last SIGHUP's outcome, for the reload metrics.
    pub reloader: Arc<crate::reload::Reloader>,
    /// The OTLP trace pipeline, for its counters.
    pub otlp: Arc<pmoas_otlp::Pipeline>,
    pub listen: SocketAddr,
    /// `--web.max-requests`: parallel scrapes of the metrics page.
    pub max_requests: usize,
    /// `--web.max-connections`, as configured; [`serve`] lowers it to fit
    /// the open file limit.
    pub max_connections: usize,
    /// With `--push.gateway-url`: the pushes' counters.
    pub push: Option<Arc<crate::push::PushStats>>,
    /// With `--otlp.metrics-endpoint`: the exports' counters.
    pub otlp_metrics: Option<Arc<crate::otlp_metrics::OtlpMetricsStats>>,
    /// With `--web.config.file`: TLS and basic authentication.
    pub web_config: Option<Arc<crate::webconfig::WebConfig>>,
}

/// The web settings a reload applies at once.
#[derive(Clone, Debug)]
pub struct ReloadableWeb {
    pub telemetry_path: String,
    pub scrape_timeout: Duration,
}

impl AppState {
    pub fn telemetry_path(&self) -> String {
        self.web.read().unwrap_or_else(|p| p.into_inner()).telemetry_path.clone()
    }

    pub fn scrape_timeout(&self) -> Duration {
        self.web.read().unwrap_or_else(|p| p.into_inner()).scrape_timeout
    }

    pub fn set_web(&self, web: ReloadableWeb) {
        *self.web.write().unwrap_or_else(|p| p.into_inner()) = web;
    }
}

/// The state plus what [`serve`] derives from it.
struct Shared {
    app: Arc<AppState>,
    scrapes: Scrapes,
}

/// How long a connection may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A page is handed to hyper in slices of this size, so that the body (and
/// what it holds: the scrape's seat, the connection's busy mark) lives
/// until the client has taken nearly all of it, not just until hyper has
/// queued it. Slices share the page's buffer: nothing is copied.
const SLICE: usize = 64 * 1024;

/// A metrics page from this size on is followed by handing freed memory
/// back to the kernel (see [`memory`]); smaller scrapes free too little to
/// be worth the walk over the arenas.
const LARGE_PAGE: usize = 256 * 1024;

/// A metrics page from this size on (as its series estimate it) is sent as
/// it is rendered, in pieces of about this size and without a length:
/// never whole in memory, nor is its set once sent (at 1,100 pods the
/// 7.5 MiB page was the largest part of the exporter's peak).
const PIECE: usize = 256 * 1024;

/// A response body: the page, and what must stay held until it is sent.
pub struct Page {
    rest: Bytes,
    /// The rest of a page sent as it is rendered, and its compressor.
    rendering: Option<Rendering>,
    gzip: Option<flate2::write::GzEncoder<Vec<u8>>>,
    _request: Option<InFlight>,
    _scrape: Option<ScrapeDone>,
}

impl Page {
    fn new(bytes: impl Into<Bytes>) -> Page {
        Page { rest: bytes.into(), rendering: None, gzip: None, _request: None, _scrape: None }
    }

    /// The next rendered piece into `rest` (compressed if asked), or the
    /// compressor's last bytes after the last piece.
    fn render_next(&mut self) {
        let Some(rendering) = self.rendering.as_mut() else { return };
        match rendering.next() {
            Some(piece) => {
                self.rest = match self.gzip.as_mut() {
                    // Into a Vec: cannot fail.
                    Some(gz) => match gz.write_all(piece.as_bytes()) {
                        Ok(()) => Bytes::from(std::mem::take(gz.get_mut())),
                        Err(_) => Bytes::new(),
                    },
                    None => Bytes::from(piece),
                }
            }
            None => {
                self.rendering = None;
                if let Some(gz) = self.gzip.take() {
                    self.rest = gz.finish().map(Bytes::from).unwrap_or_default();
                }
            }
        }
    }
}

impl http_body::Body for Page {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        while this.rest.is_empty() && this.rendering.is_some() {
            this.render_next();
        }
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = this.rest.len().min(SLICE);
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.rendering.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.rendering {
            // Unknown until rendered: sent in chunks.
            Some(_) => SizeHint::default(),
            // Exact, so hyper sends Content-Length rather than chunks.
            None => SizeHint::with_exact(self.rest.len() as u64),
        }
    }
}

/// A scrape's seat, released with its page; the last large scrape to end
/// returns the memory they freed.
struct ScrapeDone {
    permit: Option<ScrapePermit>,
    large: bool,
    shared: Arc<Shared>,
}

impl Drop for ScrapeDone {
    fn drop(&mut self) {
        drop(self.permit.take());
        if self.large && self.shared.scrapes.running() == 0 {
            memory::release_freed();
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Page> {
    let mut r = Response::new(Page::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Scrapes that collect and encode at once (see [`Scrapes::turn`]): two,
/// so that an HA pair of Prometheus servers never wait on each other, or
/// one on a single core. Not more on larger nodes: a scrape's collection
/// is mostly one thread per collector, and each turn holds a metric set
/// in memory (a large page is rendered after the turn, as it is sent).
fn scrape_turns() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(2)
}

/// How often the connection cap is reported while it is being hit.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Serves until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    // First: it raises the soft limit to the hard one.
    let cgroup_dirs = pmoas_collectors::cgroup::files::dir_budget() as u64;
    let fd_limit = limits::fd_limit();
    let cap = limits::effective_max_connections(state.max_connections, fd_limit.map(|l| l.saturating_sub(cgroup_dirs)));
    let fd_text = fd_limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    tracing::info!(
        max_connections = cap,
        configured = state.max_connections,
        open_file_limit = %fd_text,
        reserved_fds = limits::RESERVED_FDS,
        cgroup_dirs,
        max_requests = state.max_requests,
        "HTTP limits: at most {cap} open connections, {} parallel scrapes",
        state.max_requests
    );
    if cap < state.max_connections {
        tracing::warn!(
            "--web.max-connections {} lowered to {cap}: the open file limit is {fd_text}, {} descriptors are \
             kept for eBPF maps, cgroup files and API clients and up to {cgroup_dirs} for cgroup directories; raise \
             the limit (ulimit -n, LimitNOFILE=) to serve more",
            state.max_connections,
            limits::RESERVED_FDS
        );
    }
    let conns = Connections::new(cap);
    let shared = Arc::new(Shared { scrapes: Scrapes::new(state.max_requests, scrape_turns()), app: state });
    let (mut evicted, mut refused, mut reported) = (0u64, 0u64, None::<Instant>);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let admission = conns.admit();
                match &admission {
                    Admission::Admitted(_) => {}
                    Admission::Evicted(_) => evicted += 1,
                    Admission::Refused => refused += 1,
                }
                if (evicted > 0 || refused > 0) && reported.is_none_or(|t| t.elapsed() >= CAP_LOG_INTERVAL) {
                    tracing::warn!(
                        evicted,
                        refused,
                        "{cap} connections open (--web.max-connections): closed the connections idle longest \
                         to make room ({evicted}), turned away new ones while all were busy ({refused})"
                    );
                    (evicted, refused, reported) = (0, 0, Some(Instant::now()));
                }
                match admission {
                    Admission::Admitted(slot) => {
                        tokio::spawn(accepted_connection(stream, slot, shared.clone()));
                    }
                    Admission::Evicted(slot) => {
                        tokio::spawn(accepted_connection(stream, slot, shared.clone()));
                        // Let the evicted connection's task run and close its
                        // socket before the next accept, so a flood cannot
                        // pile up descriptors faster than they are freed.
                        tokio::task::yield_now().await;
                    }
                    // Dropping the stream closes it.
                    Admission::Refused => drop(stream),
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// A new connection: with `--web.config.file` TLS, its handshake first
/// (bounded like the request head), then HTTP.
async fn accepted_connection(stream: TcpStream, slot: Slot, shared: Arc<Shared>) {
    let tls = shared.app.web_config.as_ref().and_then(|w| w.tls.clone());
    match tls {
        None => connection(stream, slot, shared).await,
        Some(acceptor) => match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => connection(stream, slot, shared).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        },
    }
}

async fn connection<S>(stream: S, slot: Slot, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tracker = slot.tracker();
    let service = service_fn(move |req| {
        let request = tracker.begin();
        handle(shared.clone(), req, request)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // A client that sends its request and then shuts down its side
        // (`nc -N`, some proxies) still waits for the answer; without this
        // hyper drops the response when it reads the EOF.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // Eviction first: it only ever picks a connection between requests.
        biased;
        // Dropping the connection closes its socket.
        _ = slot.evicted() => tracing::trace!("connection closed to make room for a new one"),
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, request: InFlight) -> Result<Response<Page>, Infallible> {
    let state = &shared.app;
    let plain = "text/plain; charset=utf-8";
    // Every endpoint but /healthz (a kubelet's probe has no password).
    if let Some(web) = &state.web_config
        && req.uri().path() != "/healthz"
        && !authorized(web, header(&req, AUTHORIZATION).and_then(|h| std::str::from_utf8(h).ok())).await
    {
        let mut response = text(StatusCode::UNAUTHORIZED, plain, "unauthorized\n");
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"pmoas\""));
        response.body_mut()._request = Some(request);
        return Ok(response);
    }
    let mut response = match request::route(req.method(), req.uri().path(), &state.telemetry_path()) {
        Route::MethodNotAllowed => text(StatusCode::METHOD_NOT_ALLOWED, plain, "only GET and HEAD\n"),
        Route::Metrics => metrics(&shared, &req).await,
        Route::Landing => text(StatusCode::OK, "text/html; charset=utf-8", landing_page(state)),
        Route::Healthz => text(StatusCode::OK, plain, "ok\n"),
        Route::Readyz => readyz(state),
        Route::NotFound => {
            text(StatusCode::NOT_FOUND, plain, format!("not found; metrics are at {}\n", state.telemetry_path()))
        }
    };
    response.body_mut()._request = Some(request);
    Ok(response)
}

/// Basic auth: remembered credentials at once, new ones through bcrypt on
/// the blocking pool (tens of milliseconds each, by design).
async fn authorized(web: &Arc<crate::webconfig::WebConfig>, header: Option<&str>) -> bool {
    if web.remembered(header) {
        return true;
    }
    let (web, header) = (web.clone(), header.map(str::to_owned));
    tokio::task::spawn_blocking(move || web.authorized(header.as_deref())).await.unwrap_or(false)
}

fn readyz(state: &AppState) -> Response<Page> {
    let mut body = String::new();
    for (info, s) in state.registry.states() {
        body.push_str(&format!("{} {}\n", info.name, s.label()));
    }
    if state.registry.ready() {
        text(StatusCode::OK, "text/plain; charset=utf-8", format!("ready\n{body}"))
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", format!("starting\n{body}"))
    }
}

fn header(req: &Request<Incoming>, name: impl hyper::header::AsHeaderName) -> Option<&[u8]> {
    req.headers().get(name).map(HeaderValue::as_bytes)
}

async fn metrics(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Page> {
    let state = &shared.app;
    let Some(permit) = shared.scrapes.try_begin() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!(
                "too many scrapes at once: at most {} in parallel (--web.max-requests); try again later\n",
                shared.scrapes.max()
            ),
        );
    };
    let selection = request::selection(req.uri().query());
    let filter = match ScrapeFilter::new(selection.collect, selection.exclude, &state.registry) {
        Ok(f) => f,
        Err(e) => {
            return text(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{e}\n"));
        }
    };
    let timeout = request::scrape_timeout(header(req, "X-Prometheus-Scrape-Timeout-Seconds"), state.scrape_timeout());
    let deadline = tokio::time::Instant::now() + timeout;
    // Waiting for a turn spends the scrape's own time: the client gives up
    // at its deadline whatever we do.
    let Ok(turn) = tokio::time::timeout_at(deadline, shared.scrapes.turn()).await else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("other scrapes kept this one waiting past its {timeout:?} deadline; try again later\n"),
        );
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(request::MIN_SCRAPE_TIMEOUT);
    // The exporter's own series are made beside the collectors' (at 1,100
    // pods, 3,300 pmoas_container_info series: ~5 ms of a scrape).
    let own = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut own = MetricSet::new();
            exporter_metrics(&shared.app, &mut own);
            own
        })
    };
    let mut set = state.registry.scrape(&filter, left).await;
    match own.await {
        Ok(own) => set.merge(own),
        Err(e) => tracing::warn!(error = %e, "the exporter's own series could not be made for this scrape"),
    }

    let format = request::format(header(req, ACCEPT));
    let wants_gzip = request::wants_gzip(header(req, ACCEPT_ENCODING));
    if set.page_size_estimate() >= LARGE_PAGE {
        // Collection is done: the page is rendered as it is sent, out of
        // turn (a slow client holds its set, no longer its page).
        drop(turn);
        let mut page = Page::new(Bytes::new());
        page.rendering = Some(set.render(format, PIECE, PIECE * 2));
        page.gzip =
            wants_gzip.then(|| flate2::write::GzEncoder::new(Vec::with_capacity(PIECE), flate2::Compression::fast()));
        page._scrape = Some(ScrapeDone { permit: Some(permit), large: true, shared: shared.clone() });
        let mut response = Response::new(page);
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
        if wants_gzip {
            response.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        return response;
    }
    let text_page = set.encode(format);
    let large = text_page.len() >= LARGE_PAGE;
    let (page, gzip) = if wants_gzip {
        let mut enc =
            flate2::write::GzEncoder::new(Vec::with_capacity(text_page.len() / 4), flate2::Compression::fast());
        match enc.write_all(text_page.as_bytes()).and_then(|()| enc.finish()) {
            Ok(zipped) => (Bytes::from(zipped), true),
            Err(_) => (Bytes::from(text_page), false),
        }
    } else {
        (Bytes::from(text_page), false)
    };
    drop(turn);
    let mut response = text(StatusCode::OK, format.content_type(), page);
    if gzip {
        response.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response.body_mut()._scrape = Some(ScrapeDone { permit: Some(permit), large, shared: shared.clone() });
    response
}

pub(crate) fn exporter_metrics(state: &AppState, set: &mut MetricSet) {
    crate::process::export(set);
    set.gauge(
        &BUILD_INFO,
        vec![("version", env!("CARGO_PKG_VERSION").to_string()), ("revision", env!("PMOAS_REVISION").to_string())],
        1.0,
    );
    for (source, pods, containers) in state.discovery.stats() {
        for (kind, n) in [("pod", pods), ("container", containers)] {
            set.gauge(
                &DISCOVERY_WORKLOADS,
                vec![("source", source.as_label().into()), ("kind", kind.into())],
                n as f64,
            );
        }
    }
    for (source, n) in state.discovery.errors() {
        set.counter(&DISCOVERY_ERRORS, vec![("source", source.as_label().into())], n as f64);
    }
    if let Some(push) = &state.push {
        push.export(set);
    }
    if let Some(otlp_metrics) = &state.otlp_metrics {
        otlp_metrics.export(set);
    }
    if state.otlp.is_enabled() {
        let o = state.otlp.stats();
        set.counter(&OTLP_SUBMITTED, vec![], o.submitted as f64);
        set.counter(&OTLP_EXPORTED, vec![], o.exported as f64);
        for reason in pmoas_otlp::DropReason::ALL {
            set.counter(&OTLP_DROPPED, vec![("reason", reason.as_str().into())], o.dropped(reason) as f64);
        }
        set.counter(&OTLP_REQUESTS, vec![("result", "ok".into())], o.requests_ok as f64);
        set.counter(&OTLP_REQUESTS, vec![("result", "error".into())], o.requests_failed as f64);
        set.gauge(&OTLP_QUEUE, vec![], o.queued as f64);
        set.gauge(&OTLP_CAPACITY, vec![], o.capacity as f64);
    }
    let (reload_ok, reload_at) = state.reloader.status();
    set.gauge(&RELOAD_SUCCESSFUL, vec![], if reload_ok { 1.0 } else { 0.0 });
    set.gauge(&RELOAD_TIMESTAMP, vec![], reload_at as f64);
    set.declare(&FEATURE_DEGRADED);
    for n in state.discovery.health().notices() {
        set.gauge(&FEATURE_DEGRADED, vec![("component", n.component.into()), ("feature", n.feature.into())], 1.0);
    }
    set.declare(&CONTAINER_INFO);
    for w in state.discovery.containers() {
        set.gauge(
            &CONTAINER_INFO,
            vec![
                ("namespace", w.namespace.clone()),
                ("pod", w.pod.clone()),
                ("container", w.container.clone()),
                ("role", w.role.as_label().into()),
                ("image", w.image.clone()),
                ("sidecar_kind", w.sidecar_kind.clone()),
            ],
            1.0,
        );
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn landing_page(state: &AppState) -> String {
    let mut rows = String::new();
    for (info, s) in state.registry.states() {
        let (programs, error) = match &s {
            CollectorState::Running(c) => (c.programs(), None),
            CollectorState::Failed { error, programs } => (programs.clone(), Some(error.clone())),
            CollectorState::Starting => (Vec::new(), None),
        };
        let mut progs = String::new();
        for p in &programs {
            progs.push_str(&format!(
                "<li><code>{}</code> on <code>{}</code>: {}</li>",
                html_escape(p.program),
                html_escape(&p.hook),
                if p.attached {
                    "attached".to_string()
                } else {
                    format!("<b>not attached</b> ({})", html_escape(p.error.as_deref().unwrap_or("?")))
                }
            ));
        }
        let maps = match &s {
            CollectorState::Running(c) => {
                let maps = c.maps();
                if maps.is_empty() {
                    String::new()
                } else {
                    format!("<p>Kernel maps: {}</p>", html_escape(&pmoas_collectors::ebpf::MapUsage::summary(&maps)))
                }
            }
            _ => String::new(),
        };
        rows.push_str(&format!(
            "<tr><td><b>{}</b></td><td class=\"{}\">{}</td><td>{}{}{}<ul>{}</ul></td></tr>\n",
            info.name,
            s.label(),
            s.label(),
            html_escape(info.help),
            error.map(|e| format!("<p class=\"failed\">{}</p>", html_escape(&e))).unwrap_or_default(),
            maps,
            progs
        ));
    }
    let sources = state
        .discovery
        .stats()
        .into_iter()
        .map(|(s, pods, containers)| format!("{}: {pods} pod(s), {containers} container(s)", s.as_label()))
        .collect::<Vec<_>>()
        .join("; ");
    let errors = state
        .discovery
        .errors()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{}: {n}", s.as_label()))
        .collect::<Vec<_>>();
    let errors = if errors.is_empty() {
        String::new()
    } else {
        format!(
            " <span class=\"failed\">Errors so far (pmoas_discovery_errors_total): {}.</span>",
            html_escape(&errors.join(", "))
        )
    };
    let notices = state.discovery.health().notices();
    let degraded = if notices.is_empty() {
        String::new()
    } else {
        let items: String = notices
            .iter()
            .map(|n| {
                format!(
                    "<li><b>{}</b> of <code>{}</code>: {}</li>",
                    html_escape(n.feature),
                    html_escape(n.component),
                    html_escape(&n.reason)
                )
            })
            .collect();
        format!("<h2 class=\"failed\">Degraded</h2><ul>{items}</ul>")
    };
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pmoas exporter</title>\
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{vertical-align:top;padding:.4em;border-bottom:1px solid #ddd}}\
.running{{color:#070}}.failed{{color:#a00}}.starting{{color:#a60}}</style></head><body>\
<h1>pmoas exporter</h1><p>{version} &middot; listening on {listen}</p>\
<p><a href=\"{path}\">Metrics</a> &middot; <a href=\"/healthz\">/healthz</a> &middot; <a href=\"/readyz\">/readyz</a></p>\
<p>Discovery: {sources}.{errors}</p>{degraded}\
<h2>Collectors</h2><table>{rows}</table></body></html>\n",
        version = html_escape(&crate::cli::version_text()),
        listen = state.listen,
        path = html_escape(&state.telemetry_path()),
        sources = html_escape(&sources),
    )
}
