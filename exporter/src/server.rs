//! The HTTP endpoint: `/metrics` (or `--web.telemetry-path`), `/`,
//! `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pmoas_collectors::metrics::Desc;
use pmoas_collectors::{CollectorState, Format, MetricSet, Registry, ScrapeFilter};
use pmoas_discovery::Discovery;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const BUILD_INFO: Desc = Desc::gauge("pmoas_build_info", "Build of this exporter (always 1).");
pub const DISCOVERY_WORKLOADS: Desc =
    Desc::gauge("pmoas_discovery_workloads", "Pods and containers discovery knows now, per source.");
pub const DISCOVERY_ERRORS: Desc = Desc::counter(
    "pmoas_discovery_errors_total",
    "Failures of a discovery source (API errors, unreadable sockets or cgroups, malformed objects).",
);
pub const CONTAINER_INFO: Desc = Desc::gauge(
    "pmoas_container_info",
    "One series per live container with its image and sidecar kind (1), for joins in PromQL.",
);

/// What every request handler shares.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub discovery: Arc<Discovery>,
    pub telemetry_path: String,
    pub scrape_timeout: Duration,
    pub listen: SocketAddr,
}

type Body = Full<Bytes>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Serves until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
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
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET and HEAD\n"));
    }
    let path = req.uri().path();
    let response = if path == state.telemetry_path {
        metrics(&state, &req).await
    } else {
        match path {
            "/" => text(StatusCode::OK, "text/html; charset=utf-8", landing_page(&state)),
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            "/readyz" => readyz(&state),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                format!("not found; metrics are at {}\n", state.telemetry_path),
            ),
        }
    };
    Ok(response)
}

fn readyz(state: &AppState) -> Response<Body> {
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

/// `collect[]` / `exclude[]` from the query string.
fn filter(state: &AppState, query: Option<&str>) -> Result<ScrapeFilter, String> {
    let (mut collect, mut exclude) = (Vec::new(), Vec::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "collect[]" => collect.push(v.into_owned()),
            "exclude[]" => exclude.push(v.into_owned()),
            _ => {}
        }
    }
    ScrapeFilter::new(collect, exclude, &state.registry)
}

/// The scrape's deadline: ours, or Prometheus's own timeout less a margin
/// to render and send, whichever is shorter.
fn scrape_timeout(state: &AppState, req: &Request<Incoming>) -> Duration {
    let header = req
        .headers()
        .get("X-Prometheus-Scrape-Timeout-Seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64((s - 0.5).max(s / 2.0)));
    header.map_or(state.scrape_timeout, |h| h.min(state.scrape_timeout))
}

async fn metrics(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    let filter = match filter(state, req.uri().query()) {
        Ok(f) => f,
        Err(e) => {
            return text(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{e}\n"));
        }
    };
    let mut set = state.registry.scrape(&filter, scrape_timeout(state, req)).await;
    exporter_metrics(state, &mut set);

    let format = Format::from_accept(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
    let body = set.encode(format);
    let gzip = req
        .headers()
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response = text(StatusCode::OK, format.content_type(), Bytes::new());
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
        if enc.write_all(body.as_bytes()).is_ok()
            && let Ok(zipped) = enc.finish()
        {
            *response.body_mut() = Full::new(Bytes::from(zipped));
            response.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            return response;
        }
    }
    *response.body_mut() = Full::new(Bytes::from(body));
    response
}

fn exporter_metrics(state: &AppState, set: &mut MetricSet) {
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
        rows.push_str(&format!(
            "<tr><td><b>{}</b></td><td class=\"{}\">{}</td><td>{}{}<ul>{}</ul></td></tr>\n",
            info.name,
            s.label(),
            s.label(),
            html_escape(info.help),
            error.map(|e| format!("<p class=\"failed\">{}</p>", html_escape(&e))).unwrap_or_default(),
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
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pmoas exporter</title>\
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{vertical-align:top;padding:.4em;border-bottom:1px solid #ddd}}\
.running{{color:#070}}.failed{{color:#a00}}.starting{{color:#a60}}</style></head><body>\
<h1>pmoas exporter</h1><p>{version} &middot; listening on {listen}</p>\
<p><a href=\"{path}\">Metrics</a> &middot; <a href=\"/healthz\">/healthz</a> &middot; <a href=\"/readyz\">/readyz</a></p>\
<p>Discovery: {sources}.</p>\
<h2>Collectors</h2><table>{rows}</table></body></html>\n",
        version = html_escape(&crate::cli::version_text()),
        listen = state.listen,
        path = html_escape(&state.telemetry_path),
        sources = html_escape(&sources),
    )
}
