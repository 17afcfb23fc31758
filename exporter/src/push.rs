//! Pushing the metrics to a Prometheus Pushgateway (`--push.gateway-url`),
//! for runs Prometheus cannot scrape: every `--push.interval` the page
//! /metrics would serve replaces the group `job/<job>/instance/<instance>`
//! (HTTP PUT), and a clean shutdown deletes the group (DELETE), so that a
//! node that is gone does not leave its last numbers behind. A failed push
//! is logged (once until one succeeds again) and counted; serving goes on.
//!
//! The Pushgateway speaks plain HTTP/1.1; one request per connection is all
//! a push every few seconds needs, so this is a few lines over a TcpStream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use pmoas_collectors::metrics::{Desc, Format, MetricSet};
use pmoas_collectors::registry::ScrapeFilter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::server::AppState;

pub const PUSH_REQUESTS: Desc =
    Desc::counter("pmoas_push_requests_total", "Pushes to the Pushgateway, by result (ok or error).");
pub const PUSH_LAST_SUCCESS: Desc = Desc::gauge(
    "pmoas_push_last_success_timestamp_seconds",
    "When the metrics last reached the Pushgateway (Unix time; 0 before the first push).",
);

/// Longest one push may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a response read at most.
const RESPONSE_LIMIT: u64 = 16 * 1024;

#[derive(Default)]
pub struct PushStats {
    ok: AtomicU64,
    errors: AtomicU64,
    last_success: AtomicU64,
}

impl PushStats {
    pub fn export(&self, set: &mut MetricSet) {
        set.counter(&PUSH_REQUESTS, vec![("result", "ok".into())], self.ok.load(Ordering::Relaxed) as f64);
        set.counter(&PUSH_REQUESTS, vec![("result", "error".into())], self.errors.load(Ordering::Relaxed) as f64);
        set.gauge(&PUSH_LAST_SUCCESS, vec![], self.last_success.load(Ordering::Relaxed) as f64);
    }
}

/// Where the group lives: the gateway's address, and the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub authority: String,
    pub path: String,
}

impl Target {
    /// `url` is `http://host[:port][/prefix]` (validated by the config).
    pub fn new(url: &str, job: &str, instance: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("/{prefix}") };
        Ok(Target {
            authority,
            path: format!("{prefix}/metrics/job{}/instance{}", label_segment(job), label_segment(instance)),
        })
    }
}

/// What follows a grouping label's name in the path: `/value` when the
/// value is plain, else the Pushgateway's `@base64/<URL-safe base64>`, which
/// also carries an empty value and one with a `/`.
fn label_segment(value: &str) -> String {
    if value.is_empty() {
        return "@base64/=".to_string();
    }
    let plain = value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain { format!("/{value}") } else { format!("@base64/{}", base64_url(value.as_bytes())) }
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

/// One request; the response's status code.
async fn request(target: &Target, method: &str, body: &str) -> Result<u16, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&target.authority).await.map_err(|e| e.to_string())?;
        let head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pmoas-exporter/{}\r\nContent-Type: text/plain; \
             version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            target.path,
            target.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        stream.write_all(body.as_bytes()).await.map_err(|e| e.to_string())?;
        // The status line and a reason are all that is read: a gateway (or
        // whatever answers there) cannot make the exporter hold a large body.
        let mut response = Vec::new();
        (&mut stream).take(RESPONSE_LIMIT).read_to_end(&mut response).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP response: {:?}", text.chars().take(80).collect::<String>()))?;
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            let why = text.split("\r\n\r\n").nth(1).unwrap_or("").trim().chars().take(300).collect::<String>();
            Err(format!("HTTP {status}: {why}"))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

/// Pushes every `interval` until `shutdown`, then deletes the group.
pub async fn run(
    target: Target,
    interval: Duration,
    state: Arc<AppState>,
    stats: Arc<PushStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let url = format!("http://{}{}", target.authority, target.path);
    tracing::info!(%url, ?interval, "pushing to the Pushgateway");
    let mut failing = false;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => break,
        }
        let mut set = state.registry.scrape(&ScrapeFilter::all(), interval.min(state.scrape_timeout())).await;
        crate::server::exporter_metrics(&state, &mut set);
        match request(&target, "PUT", &set.encode(Format::PrometheusText)).await {
            Ok(_) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                stats.last_success.store(now, Ordering::Relaxed);
                if std::mem::replace(&mut failing, false) {
                    tracing::info!(%url, "pushing to the Pushgateway works again");
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%url, error = %e, "push to the Pushgateway failed; will retry every interval");
                }
            }
        }
    }
    match request(&target, "DELETE", "").await {
        Ok(_) => tracing::info!(%url, "deleted this exporter's group from the Pushgateway"),
        Err(e) => tracing::warn!(%url, error = %e, "could not delete this exporter's group from the Pushgateway"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_urls() {
        let t = Target::new("http://gw:9091", "pmoas", "node-1").unwrap();
        assert_eq!(t, Target { authority: "gw:9091".into(), path: "/metrics/job/pmoas/instance/node-1".into() });
        let t = Target::new("http://gw/prefix/", "pmoas", "a/b").unwrap();
        assert_eq!(t.authority, "gw:80");
        assert_eq!(t.path, "/prefix/metrics/job/pmoas/instance@base64/YS9i");
        let t = Target::new("http://[::1]:9091", "pmoas", "").unwrap();
        assert_eq!(t.authority, "[::1]:9091");
        assert_eq!(t.path, "/metrics/job/pmoas/instance@base64/=");
        assert!(Target::new("https://gw:9091", "pmoas", "x").is_err());
        assert!(Target::new("http://", "pmoas", "x").is_err());
    }

    #[test]
    fn base64_is_url_safe_and_padded() {
        assert_eq!(base64_url(b""), "");
        assert_eq!(base64_url(b"f"), "Zg==");
        assert_eq!(base64_url(b"fo"), "Zm8=");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8=");
    }
}
