//! Settings and OTEL_* precedence, the queue bound and its counters, and
//! how pmoas traces become OTel spans.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, Status};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::RandomIdGenerator;

use super::*;
use crate::pipeline::{WarnLimiter, parents_are_valid, to_span_data};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn resolve(config: &OtlpConfig, pairs: &[(&str, &str)]) -> Destination {
    config.resolve(&env(pairs)).unwrap().expect("an endpoint")
}

fn endpoint(url: &str) -> OtlpConfig {
    OtlpConfig { endpoint: Some(url.into()), ..OtlpConfig::default() }
}

#[test]
fn off_without_any_endpoint() {
    assert_eq!(OtlpConfig::default().resolve(&[]).unwrap(), None);
    // Other OTEL_* variables alone do not turn export on.
    let e = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "5")]);
    assert_eq!(OtlpConfig::default().resolve(&e).unwrap(), None);
    let p = Pipeline::start_with_env(&OtlpConfig::default(), &[], vec![]).unwrap();
    assert!(!p.is_enabled());
    assert!(!p.submit(Trace { spans: vec![Span::new("x", UNIX_EPOCH, UNIX_EPOCH)], ..Trace::default() }));
    assert_eq!(p.stats(), Stats { dropped: p.stats().dropped, ..Stats::default() });
    assert_eq!(p.stats().dropped_total(), 0);
}

#[test]
fn endpoint_precedence_and_traces_path() {
    let none = OtlpConfig::default();
    // Generic variable, grpc: used as it is.
    let d = resolve(&none, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
    assert_eq!(
        (d.url.as_str(), d.protocol, d.source),
        ("http://collector:4317", Protocol::Grpc, "OTEL_EXPORTER_OTLP_ENDPOINT")
    );
    // Generic variable, http/protobuf: the signal path is appended.
    let d = resolve(
        &none,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
    );
    assert_eq!((d.url.as_str(), d.protocol), ("http://collector:4318/v1/traces", Protocol::HttpProtobuf));
    // The traces variable beats the generic one and is used verbatim.
    let d = resolve(
        &none,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    assert_eq!((d.url.as_str(), d.source), ("http://traces:4318/custom", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    // The pmoas setting beats both.
    let all = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
    ];
    let d = resolve(&endpoint("http://jaeger:4317"), &all);
    assert_eq!((d.url.as_str(), d.source), ("http://jaeger:4317", "--otlp.endpoint"));
    // The pmoas endpoint is a base URL for http/protobuf, pasted with or without the path.
    let http = OtlpConfig { protocol: Some(Protocol::HttpProtobuf), ..endpoint("http://jaeger:4318") };
    assert_eq!(resolve(&http, &[]).url, "http://jaeger:4318/v1/traces");
    let http = OtlpConfig { endpoint: Some("http://jaeger:4318/v1/traces".into()), ..http };
    assert_eq!(resolve(&http, &[]).url, "http://jaeger:4318/v1/traces");
    // An empty setting is "not given".
    let d = resolve(&endpoint("  "), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317")]);
    assert_eq!(d.url, "http://generic:4317");
}

#[test]
fn metrics_have_their_own_endpoint_and_variables() {
    let metrics = |config: &OtlpConfig, pairs: &[(&str, &str)]| config.resolve_metrics(&env(pairs)).unwrap();
    // The generic endpoint turns traces on, not metrics; a traces endpoint neither.
    let generic = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")];
    assert_eq!(metrics(&OtlpConfig::default(), &generic), None);
    assert_eq!(metrics(&endpoint("http://jaeger:4317"), &[]), None);
    // The metrics variable does, verbatim.
    let d = metrics(&OtlpConfig::default(), &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4318/x")]).unwrap();
    assert_eq!((d.url.as_str(), d.source), ("http://m:4318/x", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"));
    // The setting is a base URL; http/protobuf gets /v1/metrics, and the
    // metrics variables for protocol, timeout and headers apply.
    let config = OtlpConfig { metrics_endpoint: Some("http://collector:4318/".into()), ..OtlpConfig::default() };
    let e = [
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1500"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=m"),
    ];
    let d = metrics(&config, &e).unwrap();
    assert_eq!(
        (d.url.as_str(), d.protocol, d.source),
        ("http://collector:4318/v1/metrics", Protocol::HttpProtobuf, "--otlp.metrics-endpoint")
    );
    assert_eq!(d.timeout, Duration::from_millis(1500));
    assert_eq!(d.headers, vec![("x-tenant".to_string(), "m".to_string())]);
    // Traces keep their own.
    let both = OtlpConfig { endpoint: Some("http://collector:4317".into()), ..config.clone() };
    assert_eq!(resolve(&both, &e).protocol, Protocol::Grpc);
    // A bad URL names the metrics setting.
    let bad = OtlpConfig { metrics_endpoint: Some("https://c:4317".into()), ..OtlpConfig::default() };
    let err = bad.resolve_metrics(&[]).unwrap_err().to_string();
    assert!(err.contains("otlp.metrics_endpoint") && err.contains("https"), "{err}");
}

#[test]
fn protocol_precedence() {
    let base = endpoint("http://h:4317");
    assert_eq!(resolve(&base, &[]).protocol, Protocol::Grpc, "the default");
    let e = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
    assert_eq!(resolve(&base, &e).protocol, Protocol::HttpProtobuf);
    let e = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")];
    assert_eq!(resolve(&base, &e).protocol, Protocol::Grpc, "the traces variable first");
    let given = OtlpConfig { protocol: Some(Protocol::Grpc), ..base.clone() };
    let e = [("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")];
    assert_eq!(resolve(&given, &e).protocol, Protocol::Grpc, "the setting first");
    let err = base.resolve(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])).unwrap_err().to_string();
    assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && err.contains("http/json"), "{err}");
}

#[test]
fn timeout_precedence() {
    let base = endpoint("http://h:4317");
    assert_eq!(resolve(&base, &[]).timeout, DEFAULT_TIMEOUT);
    assert_eq!(resolve(&base, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]).timeout, Duration::from_millis(2500));
    let e = [("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"), ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")];
    assert_eq!(resolve(&base, &e).timeout, Duration::from_millis(700));
    let given = OtlpConfig { timeout: Duration::from_secs(3), ..base.clone() };
    assert_eq!(resolve(&given, &e).timeout, Duration::from_secs(3));
    for bad in ["0", "10s", "-1"] {
        let err = base.resolve(&env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", bad)])).unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_TIMEOUT") && err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn headers_precedence_and_format() {
    let base = endpoint("http://h:4317");
    let e = [
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=generic"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Api-Key=a%20b%3Dc, x-tenant = t1"),
    ];
    assert_eq!(
        resolve(&base, &e).headers,
        vec![("api-key".to_string(), "a b=c".to_string()), ("x-tenant".to_string(), "t1".to_string())]
    );
    let given = OtlpConfig { headers: "authorization=Bearer%20x".into(), ..base.clone() };
    assert_eq!(resolve(&given, &e).headers, vec![("authorization".to_string(), "Bearer x".to_string())]);
    let err = base.resolve(&env(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")])).unwrap_err().to_string();
    assert!(err.contains("OTEL_EXPORTER_OTLP_HEADERS") && err.contains("novalue"), "{err}");
    let err = OtlpConfig { headers: "a=%zz".into(), ..base }.resolve(&[]).unwrap_err().to_string();
    assert!(err.contains("otlp.headers"), "{err}");
}

#[test]
fn urls_other_than_plain_http_are_refused_by_name() {
    let err = endpoint("https://jaeger:4317").resolve(&[]).unwrap_err().to_string();
    assert!(err.contains("otlp.endpoint") && err.contains("https"), "{err}");
    let err = endpoint("jaeger:4317").resolve(&[]).unwrap_err().to_string();
    assert!(err.contains("otlp.endpoint"), "{err}");
    let err = OtlpConfig::default()
        .resolve(&env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{err}");
    // Pipeline::start refuses the same way, without starting anything.
    assert!(Pipeline::start_with_env(&endpoint("https://x:1"), &[], vec![]).is_err());
}

#[test]
fn toml_form_keeps_every_key_and_empty_means_unset() {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct File {
        otlp: OtlpConfig,
    }
    let text = toml::to_string(&File { otlp: OtlpConfig::default() }).unwrap();
    for key in ["endpoint = \"\"", "protocol = \"\"", "timeout = \"10s\"", "headers = \"\"", "queue_size = 2048"] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
    let f: File = toml::from_str(&text).unwrap();
    assert_eq!(f.otlp, OtlpConfig::default());
    let f: File = toml::from_str(
        "[otlp]\nendpoint = \"http://j:4318\"\nprotocol = \"http/protobuf\"\ntimeout = \"3s\"\nbatch_delay = \"250ms\"\n",
    )
    .unwrap();
    assert_eq!(f.otlp.endpoint.as_deref(), Some("http://j:4318"));
    assert_eq!(f.otlp.protocol, Some(Protocol::HttpProtobuf));
    assert_eq!((f.otlp.timeout, f.otlp.batch_delay), (Duration::from_secs(3), Duration::from_millis(250)));
    assert!(toml::from_str::<File>("[otlp]\nprotocol = \"thrift\"\n").is_err());
    assert!(toml::from_str::<File>("[otlp]\nendpont = \"http://x:1\"\n").is_err());
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

fn journey() -> Trace {
    let mut root = Span::new("GET /api", at(0), at(50));
    root.kind = SpanKind::Server;
    root.attributes = vec![attr("http.request.method", "GET"), attr("http.response.status_code", 200i64)];
    let mut child = Span::new("connect upstream", at(5), at(3));
    child.parent = Some(0);
    child.kind = SpanKind::Client;
    child.error = Some("connection reset".into());
    child.attributes = vec![attr("network.peer.port", 8080u16), attr("tls", false), attr("ratio", 0.5)];
    let mut grandchild = Span::new("handshake", at(6), at(9));
    grandchild.parent = Some(1);
    Trace {
        pod: Some(Pod {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: String::new(),
            container: Some("app".into()),
        }),
        spans: vec![root, child, grandchild],
        remote_parent: None,
    }
}

#[test]
fn traces_become_linked_spans_with_pod_resource() {
    let node = vec![KeyValue::new("service.name", "pmoas"), KeyValue::new("k8s.node.name", "n1")];
    let scope = InstrumentationScope::builder("pmoas").build();
    let batch = to_span_data(journey(), &node, &RandomIdGenerator::default(), &scope);

    let resource: Vec<(String, String)> =
        batch.resource.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect();
    let want = [
        ("service.name", "pmoas"),
        ("k8s.node.name", "n1"),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-0"),
        ("k8s.container.name", "app"),
    ];
    assert_eq!(resource, want.map(|(k, v)| (k.to_string(), v.to_string())), "the empty uid is left out");

    let s = &batch.spans;
    assert_eq!(s.len(), 3);
    let trace_id = s[0].span_context.trace_id();
    assert!(s.iter().all(|x| x.span_context.trace_id() == trace_id && x.span_context.is_valid()));
    let ids: std::collections::HashSet<SpanId> = s.iter().map(|x| x.span_context.span_id()).collect();
    assert_eq!(ids.len(), 3, "distinct span ids");
    assert_eq!(s[0].parent_span_id, SpanId::INVALID);
    assert_eq!(s[1].parent_span_id, s[0].span_context.span_id());
    assert_eq!(s[2].parent_span_id, s[1].span_context.span_id());
    assert_eq!(s[0].span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(s[1].span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!((s[1].start_time, s[1].end_time), (at(5), at(5)), "an end before the start is clamped");
    assert_eq!(s[1].status, Status::error("connection reset"));
    assert_eq!(s[0].status, Status::Unset);
    assert_eq!(
        s[0].attributes,
        vec![KeyValue::new("http.request.method", "GET"), KeyValue::new("http.response.status_code", 200i64)]
    );
    assert_eq!(
        s[1].attributes.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(),
        vec![Value::I64(8080), Value::Bool(false), Value::F64(0.5)]
    );

    // Another trace of the same pod gets its own trace id.
    let other = to_span_data(journey(), &node, &RandomIdGenerator::default(), &scope);
    assert_ne!(other.spans[0].span_context.trace_id(), trace_id);
}

#[test]
fn parents_must_come_first() {
    let mut t = journey();
    assert!(parents_are_valid(&t.spans));
    t.spans[1].parent = Some(1);
    assert!(!parents_are_valid(&t.spans), "its own parent");
    t.spans[1].parent = Some(2);
    assert!(!parents_are_valid(&t.spans), "a later span");
    t.spans[1].parent = Some(usize::MAX);
    assert!(!parents_are_valid(&t.spans), "out of range");
}

/// Nothing listens on 127.0.0.1:1: every export is refused at once.
#[test]
fn full_queue_drops_whole_traces_and_failed_exports_are_counted() {
    let config = OtlpConfig {
        endpoint: Some("http://127.0.0.1:1".into()),
        queue_size: 7,
        batch_size: 1000,
        // Nothing is sent before the flush below, so the queue fills.
        batch_delay: Duration::from_secs(3600),
        timeout: Duration::from_secs(2),
        ..OtlpConfig::default()
    };
    let p = Pipeline::start_with_env(&config, &[], node_resource(Some("n1"))).unwrap();
    assert!(p.is_enabled());
    assert!(p.submit(journey()));
    assert!(p.submit(journey()));
    assert!(!p.submit(journey()), "3 + 3 + 3 > 7");
    let mut one = journey();
    one.spans.truncate(1);
    assert!(p.submit(one), "3 + 3 + 1 fits");
    assert!(!p.submit(one_more()), "full");
    let mut bad = journey();
    bad.spans[0].parent = Some(2);
    assert!(!p.submit(bad));
    assert!(p.submit(Trace::default()), "an empty trace is nothing to drop");

    let s = p.stats();
    assert_eq!(s.submitted, 3 + 3 + 3 + 1 + 1 + 3);
    assert_eq!(s.dropped(DropReason::QueueFull), 4);
    assert_eq!(s.dropped(DropReason::Invalid), 3);
    assert_eq!((s.queued, s.capacity, s.exported), (7, 7, 0));

    assert!(p.flush(Duration::from_secs(60)), "a refused connection fails fast");
    let s = p.stats();
    assert_eq!(s.dropped(DropReason::ExportFailed), 7);
    assert_eq!((s.queued, s.exported, s.requests_ok), (0, 0, 0));
    assert!(s.requests_failed >= 1);
    assert_eq!(s.submitted, s.exported + s.dropped_total() + s.queued);

    // The queue has room again.
    assert!(p.submit(journey()));
    p.shutdown(Duration::from_secs(60));
}

fn one_more() -> Trace {
    let mut t = journey();
    t.spans.truncate(1);
    t
}

#[test]
fn export_failures_warn_at_most_once_a_minute() {
    let t0 = std::time::Instant::now();
    let s = Duration::from_secs;
    let mut w = WarnLimiter::default();
    assert!(!w.success(), "nothing to recover from");
    assert_eq!(w.failure(t0), Some(0), "the first failure warns");
    assert_eq!(w.failure(t0 + s(1)), None);
    assert_eq!(w.failure(t0 + s(59)), None);
    // A flapping receiver: recoveries do not reopen the window.
    assert!(w.success(), "a warning was logged: recovery is worth a line");
    assert!(!w.success(), "once");
    assert_eq!(w.failure(t0 + s(59) + Duration::from_millis(500)), None);
    assert_eq!(w.failure(t0 + s(60)), Some(3), "a minute on: warns, with the failures kept quiet");
    assert_eq!(w.failure(t0 + s(61)), None);
    assert_eq!(w.failure(t0 + s(200)), Some(1));
}

const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_traceparent_is_parsed() {
    let p = RemoteParent::from_traceparent(GOOD).unwrap();
    assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
    assert!(p.sampled());
    assert_eq!(p.to_traceparent(), GOOD, "round trip");
    let unsampled = RemoteParent::from_traceparent(&GOOD.replace("-01", "-00")).unwrap();
    assert!(!unsampled.sampled());
    // Other flag bits are kept, only bit 0 means sampled.
    let other = RemoteParent::from_traceparent(&GOOD.replace("-01", "-fe")).unwrap();
    assert_eq!((other.flags, other.sampled()), (0xfe, false));
    // HTTP's optional whitespace around the value.
    assert_eq!(RemoteParent::from_traceparent(&format!(" {GOOD}\t")), Ok(p));
    // A later version: the first 55 characters as version 00, then `-` and more.
    let v1 = RemoteParent::from_traceparent(&format!("{}-what-comes-next", GOOD.replacen("00", "cc", 1))).unwrap();
    assert_eq!((v1.trace_id, v1.span_id), (p.trace_id, p.span_id));
    assert_eq!(RemoteParent::from_traceparent(&GOOD.replacen("00", "01", 1)).map(|x| x.span_id), Ok(p.span_id));
}

#[test]
fn invalid_traceparents_are_refused_with_their_reason() {
    use TraceparentError as E;
    let cases: Vec<(String, E)> = vec![
        (String::new(), E::Length),
        ("garbage".into(), E::Length),
        (GOOD[..54].into(), E::Length),
        (format!("{GOOD}-"), E::Length),
        (format!("{GOOD}00"), E::Length),
        (GOOD.replacen("00", "ff", 1), E::Version),
        (GOOD.replacen("00", "0G", 1), E::Version),
        (GOOD.replacen("00", "AB", 1), E::Version),
        (format!("{}x", GOOD.replacen("00", "01", 1)), E::Separator),
        (GOOD.replacen('-', "_", 1), E::Separator),
        (GOOD.replace("-00f0", "_00f0"), E::Separator),
        (GOOD.replace("-01", "+01"), E::Separator),
        (GOOD.replace("4bf9", "4BF9"), E::TraceId),
        (GOOD.replace("4bf9", "4bz9"), E::TraceId),
        (GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)), E::ZeroTraceId),
        (GOOD.replace("00f067aa", "00F067AA"), E::ParentId),
        (GOOD.replace("00f067aa0ba902b7", &"0".repeat(16)), E::ZeroParentId),
        (GOOD.replace("-01", "-0x"), E::Flags),
        (GOOD.replace("-01", "-0A"), E::Flags),
    ];
    for (value, want) in cases {
        assert_eq!(RemoteParent::from_traceparent(&value), Err(want), "{value:?}");
    }
    // Anything at all: never a panic (multi-byte characters at the cut points too).
    for value in ["00-é", "é".repeat(40).as_str(), &format!("00-{}-{}-01", "é".repeat(16), "0".repeat(16)), "\u{0}"]
    {
        assert!(RemoteParent::from_traceparent(value).is_err(), "{value:?}");
    }
    for n in 0..80 {
        let _ = RemoteParent::from_traceparent(&"-".repeat(n));
        let _ = RemoteParent::from_traceparent(&"ab-".repeat(n));
    }
}

#[test]
fn a_trace_with_a_remote_parent_joins_its_trace() {
    let node = vec![KeyValue::new("service.name", "pmoas")];
    let scope = InstrumentationScope::builder("pmoas").build();
    let caller = RemoteParent::from_traceparent(GOOD).unwrap();
    let mut t = journey();
    // A second root, beside the first.
    let mut other_root = Span::new("other", at(1), at(2));
    other_root.parent = None;
    t.spans.push(other_root);
    t.remote_parent = Some(caller);
    let batch = to_span_data(t, &node, &RandomIdGenerator::default(), &scope);
    let s = &batch.spans;
    let caller_span = SpanId::from_bytes(caller.span_id);
    assert!(s.iter().all(|x| x.span_context.trace_id().to_bytes() == caller.trace_id), "the caller's trace id");
    assert_eq!((s[0].parent_span_id, s[0].parent_span_is_remote), (caller_span, true));
    assert_eq!((s[3].parent_span_id, s[3].parent_span_is_remote), (caller_span, true), "every root");
    assert_eq!((s[1].parent_span_id, s[1].parent_span_is_remote), (s[0].span_context.span_id(), false));
    assert_eq!((s[2].parent_span_id, s[2].parent_span_is_remote), (s[1].span_context.span_id(), false));
    assert!(s.iter().all(|x| x.span_context.span_id() != caller_span && x.span_context.is_sampled()));

    // Without one: a fresh trace id, roots without a parent.
    let fresh = to_span_data(journey(), &node, &RandomIdGenerator::default(), &scope);
    assert_ne!(fresh.spans[0].span_context.trace_id().to_bytes(), caller.trace_id);
    assert_eq!((fresh.spans[0].parent_span_id, fresh.spans[0].parent_span_is_remote), (SpanId::INVALID, false));
}
