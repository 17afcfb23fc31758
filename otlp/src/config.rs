//! The `[otlp]` settings and how they combine with the standard
//! `OTEL_EXPORTER_OTLP_*` variables.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The OTLP default, and the spec's default for `OTEL_EXPORTER_OTLP_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The exporter's default time between two metric exports over OTLP.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(30);

/// `[otlp]`: where and how traces are exported.
///
/// An empty `endpoint`, `protocol` or `headers` means "not given": the
/// `OTEL_EXPORTER_OTLP_*` variable takes its place (see [`OtlpConfig::resolve`]).
/// Empty rather than absent keeps every key in `--config.check`'s output and
/// in the example file, like every other pmoas setting.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Base URL of the OTLP receiver, e.g. `http://jaeger:4317` (grpc) or
    /// `http://jaeger:4318` (http/protobuf). None: export nothing, unless
    /// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set.
    #[serde(with = "empty_is_none")]
    pub endpoint: Option<String>,
    /// None: `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, else grpc.
    #[serde(with = "empty_is_none")]
    pub protocol: Option<Protocol>,
    /// Longest one export request may take. Left at its default (10s),
    /// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` replaces it.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra request headers, `key=value,key2=value2` (values may be
    /// percent-encoded), the format of `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: String,
    /// Spans held in memory waiting for export; a trace that does not fit
    /// is dropped whole, and counted.
    pub queue_size: usize,
    /// Spans sent in one export request at most.
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill before it is sent anyway.
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// Base URL of an OTLP receiver for the metrics (the page /metrics
    /// serves, as OTLP sums, gauges and histograms). None: no metrics over
    /// OTLP, unless `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set. The
    /// generic `OTEL_EXPORTER_OTLP_ENDPOINT` does not turn it on: traces
    /// and metrics are separate choices here.
    #[serde(with = "empty_is_none")]
    pub metrics_endpoint: Option<String>,
    /// Time between two metric exports.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            protocol: None,
            timeout: DEFAULT_TIMEOUT,
            headers: String::new(),
            queue_size: 2048,
            batch_size: 512,
            batch_delay: Duration::from_secs(5),
            metrics_endpoint: None,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
        }
    }
}

/// What is exported: each signal has its own endpoint setting, variables
/// and HTTP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The OTLP/HTTP path of the signal.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The pmoas setting that names the endpoint, and its flag.
    fn setting(self) -> (&'static str, &'static str) {
        match self {
            Signal::Traces => ("otlp.endpoint", "--otlp.endpoint"),
            Signal::Metrics => ("otlp.metrics_endpoint", "--otlp.metrics-endpoint"),
        }
    }

    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_<what>`.
    fn variable(self, what: &str) -> &'static str {
        match (self, what) {
            (Signal::Traces, "ENDPOINT") => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            (Signal::Traces, "PROTOCOL") => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            (Signal::Traces, "TIMEOUT") => "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            (Signal::Traces, "HEADERS") => "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            (Signal::Metrics, "ENDPOINT") => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            (Signal::Metrics, "PROTOCOL") => "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            (Signal::Metrics, "TIMEOUT") => "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            (Signal::Metrics, "HEADERS") => "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            _ => unreachable!("no OTLP variable {what}"),
        }
    }
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/gRPC (`TraceService/Export`), usually port 4317.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`), usually port 4318.
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err("`http/json` is not supported; use grpc or http/protobuf".into()),
            other => Err(format!("`{other}` is not an OTLP protocol; use grpc or http/protobuf")),
        }
    }
}

/// Where a signal goes, once settings and `OTEL_*` variables are combined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The full URL requests go to: for http/protobuf it ends in the
    /// signal's path (`/v1/traces`, `/v1/metrics`).
    pub url: String,
    pub protocol: Protocol,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    /// Where the URL came from (the flag, or the variable's name),
    /// for the start-up log line.
    pub source: &'static str,
}

impl OtlpConfig {
    /// Where traces go, or None when no endpoint is set anywhere (export
    /// off).
    ///
    /// Per key, the first that is given wins: the pmoas setting (flag,
    /// `PMOAS_OTLP_*`, config file), then `OTEL_EXPORTER_OTLP_TRACES_*`,
    /// then `OTEL_EXPORTER_OTLP_*`, then the default. `env` is the process
    /// environment as (name, value) pairs, passed in so tests need not
    /// change the real one.
    ///
    /// For http/protobuf, `/v1/traces` is appended to a base endpoint (the
    /// pmoas setting, unless its path already ends so, and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`); `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// is used as it is, as the OTel specification says.
    pub fn resolve(&self, env: &[(String, String)]) -> Result<Option<Destination>, Error> {
        self.resolve_signal(Signal::Traces, env)
    }

    /// Where metrics go, or None: as [`resolve`](Self::resolve), with
    /// `otlp.metrics_endpoint` and the `OTEL_EXPORTER_OTLP_METRICS_*`
    /// variables, except that the generic `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// alone does not turn metrics on.
    pub fn resolve_metrics(&self, env: &[(String, String)]) -> Result<Option<Destination>, Error> {
        self.resolve_signal(Signal::Metrics, env)
    }

    fn resolve_signal(&self, signal: Signal, env: &[(String, String)]) -> Result<Option<Destination>, Error> {
        let var =
            |name: &str| env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
        let pick = |what: &str, generic: &'static str| {
            let own = signal.variable(what);
            var(own).map(|v| (own, v)).or_else(|| var(generic).map(|v| (generic, v)))
        };
        let (key, flag) = signal.setting();

        let protocol = match self.protocol {
            Some(p) => p,
            None => match pick("PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
                Some((name, v)) => v.parse().map_err(|reason| Error::Variable { name, reason })?,
                None => Protocol::Grpc,
            },
        };

        let setting = match signal {
            Signal::Traces => &self.endpoint,
            Signal::Metrics => &self.metrics_endpoint,
        };
        let given = setting.as_deref().map(str::trim).filter(|e| !e.is_empty());
        let own_variable = signal.variable("ENDPOINT");
        let (source, url) = match given {
            Some(e) => (flag, with_signal_path(e, signal, protocol, true)),
            None => match var(own_variable) {
                Some(v) => (own_variable, v.to_string()),
                None => match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(v) if signal == Signal::Traces => {
                        ("OTEL_EXPORTER_OTLP_ENDPOINT", with_signal_path(v, signal, protocol, false))
                    }
                    _ => return Ok(None),
                },
            },
        };
        check_url(&url).map_err(|reason| {
            if source == flag { Error::Setting { key, reason } } else { Error::Variable { name: source, reason } }
        })?;

        let timeout = if self.timeout != DEFAULT_TIMEOUT {
            self.timeout
        } else {
            match pick("TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
                Some((name, v)) => match v.parse::<u64>() {
                    Ok(ms) if ms > 0 => Duration::from_millis(ms),
                    _ => {
                        return Err(Error::Variable {
                            name,
                            reason: format!("`{v}` is not a number of milliseconds above 0"),
                        });
                    }
                },
                None => DEFAULT_TIMEOUT,
            }
        };

        let headers = if !self.headers.trim().is_empty() {
            parse_headers(&self.headers).map_err(|reason| Error::Setting { key: "otlp.headers", reason })?
        } else {
            match pick("HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") {
                Some((name, v)) => parse_headers(v).map_err(|reason| Error::Variable { name, reason })?,
                None => Vec::new(),
            }
        };

        Ok(Some(Destination { url, protocol, timeout, headers, source }))
    }

    /// [`resolve`](Self::resolve) with this process's environment.
    pub fn resolve_from_process_env(&self) -> Result<Option<Destination>, Error> {
        self.resolve(&otel_variables())
    }

    /// [`resolve_metrics`](Self::resolve_metrics) with this process's
    /// environment.
    pub fn resolve_metrics_from_process_env(&self) -> Result<Option<Destination>, Error> {
        self.resolve_metrics(&otel_variables())
    }
}

/// The process's `OTEL_*` variables.
fn otel_variables() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("OTEL_"))
        .collect()
}

/// A base endpoint plus the signal path, for http/protobuf only (gRPC has
/// no path). `lenient`: leave a URL that already names the path alone, as
/// users of `--otlp.endpoint` paste either form.
fn with_signal_path(base: &str, signal: Signal, protocol: Protocol, lenient: bool) -> String {
    if protocol == Protocol::Grpc {
        return base.to_string();
    }
    let base = base.trim_end_matches('/');
    let path = signal.path();
    if lenient && base.ends_with(path) { base.to_string() } else { format!("{base}{path}") }
}

/// Only plain http: this build carries no TLS stack (no OpenSSL, no rustls).
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(()),
        (Some("https"), _) => Err(format!(
            "`{url}`: https is not supported by this build; use http:// (inside the cluster, or through a local collector)"
        )),
        _ => Err(format!("`{url}` is not an http://host:port URL")),
    }
}

/// `key=value,key2=value2`, values percent-decoded (the W3C baggage form
/// the OTel specification uses for `OTEL_EXPORTER_OTLP_HEADERS`).
pub fn parse_headers(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("`{item}` is not key=value"));
        };
        let key = k.trim().to_ascii_lowercase();
        let value = percent_decode(v.trim()).ok_or_else(|| format!("`{item}`: bad percent-encoding"))?;
        if http::HeaderName::from_bytes(key.as_bytes()).is_err() || http::HeaderValue::from_str(&value).is_err() {
            return Err(format!("`{item}` is not a valid HTTP header"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An optional value written as a string, empty for None, so the key is
/// always present in TOML (the config crate's tests and `--config.check`
/// list every key).
mod empty_is_none {
    use super::*;

    pub fn serialize<T: fmt::Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: Deserializer<'de>,
    {
        let raw = String::deserialize(d)?;
        let raw = raw.trim();
        if raw.is_empty() { Ok(None) } else { raw.parse().map(Some).map_err(serde::de::Error::custom) }
    }
}
