//! Journeys through the pipeline to a real OTLP receiver, over both
//! transports: `testbed/otlp_receiver.py`, built from the official
//! `opentelemetry-proto` definitions (PyPI), in `target/pmoas-venv`
//! (`scripts/install-deps.sh test` installs it). Then the receiver goes
//! away and the pipeline must keep taking traces and count what it loses.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pmoas_otlp::{
    DropReason, OtlpConfig, Pipeline, Pod, Protocol, RemoteParent, Span, SpanKind, Trace, attr, node_resource,
};
use pmoas_testbed::otlp_receiver::{Receiver, can_run};
use serde_json::Value;

fn pod(i: usize) -> Pod {
    Pod {
        namespace: "shop".into(),
        name: format!("web-{i}"),
        uid: format!("00000000-0000-0000-0000-00000000000{i}"),
        container: Some(if i.is_multiple_of(2) { "app" } else { "istio-proxy" }.into()),
    }
}

/// Trace `t`: a server span, two client spans under it, a handshake under
/// the second; names say trace and position, starts increase.
fn journey(t: usize, base: SystemTime) -> Trace {
    let ms = |n: u64| base + Duration::from_millis(n) + Duration::from_nanos(t as u64 * 1000 + 7);
    let span = |j: usize, parent: Option<usize>, kind, start: u64, end: u64| Span {
        name: format!("t{t}-s{j}"),
        kind,
        start: ms(start),
        end: ms(end),
        parent,
        attributes: vec![attr("pmoas.test.index", j as i64), attr("network.peer.address", "10.0.0.9")],
        error: None,
    };
    Trace {
        pod: Some(pod(t)),
        spans: vec![
            span(0, None, SpanKind::Server, 0, 40),
            span(1, Some(0), SpanKind::Client, 2, 10),
            span(2, Some(0), SpanKind::Client, 12, 30),
            span(3, Some(2), SpanKind::Internal, 13, 15),
        ],
        // Trace 1 continues a caller's trace.
        remote_parent: (t == 1).then(caller),
    }
}

/// The caller's span trace 1 continues, as its request's `traceparent` said.
fn caller() -> RemoteParent {
    RemoteParent::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap()
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn journeys_arrive_and_losses_are_counted(test: &str, protocol: Protocol) {
    let Some(python) = can_run(test) else { return };
    let mut receiver = Receiver::start(&python);
    let port = if protocol == Protocol::Grpc { receiver.grpc } else { receiver.http };
    let config = OtlpConfig {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        protocol: Some(protocol),
        timeout: Duration::from_secs(5),
        batch_size: 5,
        ..OtlpConfig::default()
    };
    let pipeline = Pipeline::start_with_env(&config, &[], node_resource(Some("node-1"))).unwrap();
    assert_eq!(
        pipeline.destination().unwrap().url,
        match protocol {
            Protocol::Grpc => format!("http://127.0.0.1:{port}"),
            Protocol::HttpProtobuf => format!("http://127.0.0.1:{port}/v1/traces"),
        }
    );

    let base = SystemTime::now();
    let traces: Vec<Trace> = (0..3).map(|t| journey(t, base)).collect();
    for t in &traces {
        assert!(pipeline.submit(t.clone()));
    }
    assert!(pipeline.flush(Duration::from_secs(60)), "flush");
    let got = receiver.spans(12, Duration::from_secs(60));
    assert_eq!(got.len(), 12, "every span arrives: {got:#?}");
    let by_name: HashMap<&str, &Value> = got.iter().map(|s| (s["name"].as_str().unwrap(), s)).collect();
    assert_eq!(by_name.len(), 12, "each span once");

    let mut trace_ids = Vec::new();
    for (t, trace) in traces.iter().enumerate() {
        let spans: Vec<&Value> = (0..4).map(|j| by_name[format!("t{t}-s{j}").as_str()]).collect();
        let trace_id = spans[0]["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert!(spans.iter().all(|s| s["trace_id"] == trace_id), "one trace id per trace: {spans:#?}");
        trace_ids.push(trace_id.to_string());
        if let Some(caller) = trace.remote_parent {
            assert_eq!(trace_id, caller.trace_id_hex(), "the caller's trace id");
        }
        for (s, given) in spans.iter().zip(&trace.spans) {
            assert_eq!(s["transport"], if protocol == Protocol::Grpc { "grpc" } else { "http" });
            // The root's parent: the caller's span, remote; none without a caller.
            let caller_span = trace.remote_parent.map(|c| c.to_traceparent()[36..52].to_string());
            let parent = match given.parent {
                Some(p) => spans[p]["span_id"].as_str().unwrap().to_string(),
                None => caller_span.clone().unwrap_or_default(),
            };
            assert_eq!(s["parent_span_id"], parent.as_str(), "parent of {}", given.name);
            let remote = given.parent.is_none() && caller_span.is_some();
            // Sampled, "is the parent remote" known, and whether it is.
            assert_eq!(s["flags"], 0x101 | if remote { 0x200 } else { 0 }, "flags of {}", given.name);
            assert_eq!(s["start_unix_nano"].as_u64(), Some(nanos(given.start)), "{}", given.name);
            assert_eq!(s["end_unix_nano"].as_u64(), Some(nanos(given.end)), "{}", given.name);
            let kind = match given.kind {
                SpanKind::Server => 2,
                SpanKind::Client => 3,
                _ => 1,
            };
            assert_eq!(s["kind"], kind, "{}", given.name);
            assert_eq!(s["attributes"]["network.peer.address"], "10.0.0.9");
            assert_eq!(s["attributes"]["pmoas.test.index"], given.name[given.name.len() - 1..].parse::<i64>().unwrap());
            let r = &s["resource"];
            let p = pod(t);
            assert_eq!(r["service.name"], "pmoas");
            assert_eq!(r["k8s.node.name"], "node-1");
            assert_eq!(r["k8s.namespace.name"], p.namespace.as_str());
            assert_eq!(r["k8s.pod.name"], p.name.as_str(), "{} belongs to its pod", given.name);
            assert_eq!(r["k8s.pod.uid"], p.uid.as_str());
            assert_eq!(r["k8s.container.name"], p.container.as_deref().unwrap());
            assert_eq!(s["scope"], "pmoas");
        }
        // Sorted by start time, the spans come in the order given.
        let mut order = spans.clone();
        order.sort_by_key(|s| s["start_unix_nano"].as_u64());
        let names: Vec<&str> = order.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, trace.spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());
    }
    trace_ids.sort();
    trace_ids.dedup();
    assert_eq!(trace_ids.len(), 3, "each trace its own id");

    let s = pipeline.stats();
    assert_eq!((s.submitted, s.exported, s.dropped_total(), s.queued), (12, 12, 0, 0), "{s:?}");
    assert!(s.requests_ok >= 3, "at least one request per pod: {s:?}");
    assert_eq!(s.requests_failed, 0);

    // The receiver goes away: submitting goes on, the losses are counted.
    receiver.stop();
    for t in 0..3 {
        assert!(pipeline.submit(journey(t, SystemTime::now())), "the queue still takes traces");
    }
    assert!(pipeline.flush(Duration::from_secs(120)), "failed exports end too");
    let s = pipeline.stats();
    assert_eq!(s.submitted, 24, "{s:?}");
    assert_eq!(s.exported, 12, "{s:?}");
    assert_eq!(s.dropped(DropReason::ExportFailed), 12, "{s:?}");
    assert_eq!(s.queued, 0, "{s:?}");
    assert!(s.requests_failed >= 1, "{s:?}");
    assert!(pipeline.submit(journey(0, SystemTime::now())), "and after the failures too");
    pipeline.shutdown(Duration::from_secs(30));
}

#[test]
fn journeys_over_grpc() {
    journeys_arrive_and_losses_are_counted("journeys_over_grpc", Protocol::Grpc);
}

#[test]
fn journeys_over_http_protobuf() {
    journeys_arrive_and_losses_are_counted("journeys_over_http_protobuf", Protocol::HttpProtobuf);
}
