//! What a request asks for, decided from its plain parts (method, path,
//! query string, header bytes). Everything here takes input straight from
//! the network, so nothing may panic whatever the bytes are; being free of
//! sockets and state, it is tested with arbitrary input below.

use std::time::Duration;

use hyper::Method;
use pmoas_collectors::Format;

/// The page a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Landing,
    Healthz,
    Readyz,
    NotFound,
    MethodNotAllowed,
}

pub fn route(method: &Method, path: &str, telemetry_path: &str) -> Route {
    if method != Method::GET && method != Method::HEAD {
        return Route::MethodNotAllowed;
    }
    if path == telemetry_path {
        return Route::Metrics;
    }
    match path {
        "/" => Route::Landing,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => Route::NotFound,
    }
}

/// A scrape never gets less than this: a deadline of zero would fail every
/// collector, and Prometheus would discard the answer anyway.
pub const MIN_SCRAPE_TIMEOUT: Duration = Duration::from_millis(1);

/// The scrape's deadline: `configured`, or Prometheus's own timeout
/// (`X-Prometheus-Scrape-Timeout-Seconds`) less a margin to render and send,
/// whichever is shorter. Anything unparsable, non-finite or not positive
/// in the header is ignored rather than refused: the scrape still answers.
pub fn scrape_timeout(header: Option<&[u8]>, configured: Duration) -> Duration {
    let seconds = header
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0);
    let Some(seconds) = seconds else {
        return configured;
    };
    // Half a second to render and send, or half of a timeout too short for that.
    let ours = (seconds - 0.5).max(seconds / 2.0);
    // A number too large for a Duration (1e300) is simply "longer than ours".
    let ours = Duration::try_from_secs_f64(ours).unwrap_or(Duration::MAX);
    // max then min (not clamp, which panics when configured < the floor).
    ours.max(MIN_SCRAPE_TIMEOUT).min(configured)
}

/// The exposition format the `Accept` header asks for.
pub fn format(accept: Option<&[u8]>) -> Format {
    Format::from_accept(accept.and_then(|v| std::str::from_utf8(v).ok()))
}

/// Does `Accept-Encoding` accept gzip? `gzip;q=0` is a refusal (RFC 9110).
pub fn wants_gzip(accept_encoding: Option<&[u8]>) -> bool {
    let Some(value) = accept_encoding.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    value.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip")) && !refused
    })
}

/// `collect[]` and `exclude[]` of a query string, in order; the rest is
/// ignored, like node_exporter does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub collect: Vec<String>,
    pub exclude: Vec<String>,
}

pub fn selection(query: Option<&str>) -> Selection {
    let mut s = Selection::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "collect[]" => s.collect.push(v.into_owned()),
            "exclude[]" => s.exclude.push(v.into_owned()),
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    fn timeout(header: &str) -> Duration {
        scrape_timeout(Some(header.as_bytes()), TEN)
    }

    #[test]
    fn prometheus_timeout_lowers_ours_with_a_margin() {
        assert_eq!(timeout("4"), Duration::from_millis(3500));
        assert_eq!(timeout(" 4 "), Duration::from_millis(3500));
        assert_eq!(timeout("0.5"), Duration::from_millis(250));
        assert_eq!(timeout("60"), TEN);
        assert_eq!(scrape_timeout(None, TEN), TEN);
    }

    #[test]
    fn hostile_timeouts_fall_back_or_clamp_instead_of_panicking() {
        // 1e300 panicked in Duration::from_secs_f64.
        for big in ["1e300", "1.8e308", "18446744073709551616", "1e20"] {
            assert_eq!(timeout(big), TEN, "{big}");
        }
        for ignored in ["NaN", "nan", "inf", "-inf", "-1", "0", "-0", "", "ten", "1e-400", "0x10"] {
            assert_eq!(timeout(ignored), TEN, "{ignored}");
        }
        assert_eq!(timeout("1e-300"), MIN_SCRAPE_TIMEOUT);
        assert_eq!(scrape_timeout(Some(b"\xff\xfe"), TEN), TEN);
        // A configured timeout below the floor is still honoured.
        assert_eq!(scrape_timeout(Some(b"5"), Duration::from_micros(10)), Duration::from_micros(10));
    }

    #[test]
    fn gzip_only_when_accepted() {
        let gz = |v: &str| wants_gzip(Some(v.as_bytes()));
        assert!(gz("gzip"));
        assert!(gz("identity, GZIP;q=0.5"));
        assert!(gz("x-gzip"));
        assert!(!gz("gzip;q=0"));
        assert!(!gz("gzip; q=0.000"));
        assert!(!gz("gzipped"));
        assert!(!gz("br, deflate"));
        assert!(!wants_gzip(None));
        assert!(!wants_gzip(Some(b"gz\xffip")));
    }

    #[test]
    fn openmetrics_when_asked() {
        let om = b"application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        assert_eq!(format(Some(om)), Format::OpenMetrics);
        assert_eq!(format(Some(b"text/plain")), Format::PrometheusText);
        assert_eq!(format(Some(b"\x80application/openmetrics-text")), Format::PrometheusText);
        assert_eq!(format(None), Format::PrometheusText);
    }

    #[test]
    fn selection_reads_collect_and_exclude() {
        let s = selection(Some("collect[]=socket&x=1&collect%5B%5D=cgroup&exclude[]=a+b&exclude[]=%FF"));
        assert_eq!(s.collect, ["socket", "cgroup"]);
        assert_eq!(s.exclude, ["a b", "\u{FFFD}"]);
        assert_eq!(selection(None), Selection::default());
    }

    #[test]
    fn routes() {
        let r = |m: &Method, p: &str| route(m, p, "/metrics");
        assert_eq!(r(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(r(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(r(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(r(&Method::GET, "/"), Route::Landing);
        assert_eq!(r(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(r(&Method::GET, "/readyz"), Route::Readyz);
        assert_eq!(r(&Method::GET, "/metrics/"), Route::NotFound);
        assert_eq!(r(&Method::GET, ""), Route::NotFound);
    }

    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // Numbers in every spelling Rust's float parser knows, and some it does not.
            "[+-]?([0-9]{0,400}|[0-9]*\\.[0-9]*)([eE][+-]?[0-9]{1,4})?".prop_map(String::into_bytes),
            any::<f64>().prop_map(|f| f.to_string().into_bytes()),
            "(gzip|x-gzip|br|identity|\\*|application/openmetrics-text|text/plain)(;[qQ]=[0-9.]{0,5})?(, ?[a-z/=;.0-9-]{0,20}){0,4}"
                .prop_map(String::into_bytes),
        ]
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::HEAD),
            Just(Method::POST),
            Just(Method::OPTIONS),
            "[A-Za-z!#$%&'*+.^_`|~0-9-]{1,16}"
                .prop_filter_map("a method token", |m| Method::from_bytes(m.as_bytes()).ok()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the header says, the deadline is in (0, configured].
        #[test]
        fn timeout_is_always_within_the_configured(
            header in proptest::option::of(header_bytes()),
            configured_us in 1u64..=3_600_000_000,
        ) {
            let configured = Duration::from_micros(configured_us);
            let t = scrape_timeout(header.as_deref(), configured);
            prop_assert!(!t.is_zero(), "{t:?} for {header:?}");
            prop_assert!(t <= configured, "{t:?} > {configured:?} for {header:?}");
        }

        /// Negotiation answers for any bytes, and only says yes to what was asked.
        #[test]
        fn negotiation_is_total_and_honest(header in proptest::option::of(header_bytes())) {
            let text = header.as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_ascii_lowercase();
            if wants_gzip(header.as_deref()) {
                prop_assert!(text.contains("gzip"), "gzip for {header:?}");
            }
            if format(header.as_deref()) == Format::OpenMetrics {
                prop_assert!(text.contains("application/openmetrics-text"), "OpenMetrics for {header:?}");
            }
        }

        /// Any query string splits into what it named, and every name can
        /// be checked against the enabled collectors without a panic.
        #[test]
        fn any_query_string_selects_or_is_refused(query in proptest::option::of(".{0,300}|([a-z%\\[\\]5BD]{0,12}=[^&]{0,12}&?){0,20}")) {
            let s = selection(query.as_deref());
            let named = query.as_deref().unwrap_or("").matches('=').count();
            prop_assert!(s.collect.len() + s.exclude.len() <= named);
            let registry = pmoas_collectors::Registry::new(&pmoas_collectors::CATALOG.iter().collect::<Vec<_>>());
            let picked = pmoas_collectors::ScrapeFilter::new(s.collect.clone(), s.exclude.clone(), &registry);
            let known = |n: &String| pmoas_collectors::CATALOG.iter().any(|c| c.name == n);
            if s.collect.iter().chain(&s.exclude).all(known) && (s.collect.is_empty() || s.exclude.is_empty()) {
                prop_assert!(picked.is_ok());
            } else {
                prop_assert!(picked.is_err());
            }
        }

        /// Every method and path gets a route; only GET or HEAD of the
        /// telemetry path is a scrape.
        #[test]
        fn any_method_and_path_is_routed(method in method(), path in ".{0,200}", telemetry in "/[a-z/]{1,20}") {
            let r = route(&method, &path, &telemetry);
            let readable = method == Method::GET || method == Method::HEAD;
            prop_assert_eq!(r == Route::Metrics, readable && path == telemetry);
            prop_assert_eq!(r == Route::MethodNotAllowed, !readable);
        }
    }
}
