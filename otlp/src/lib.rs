//! pmoas's OTLP export: the shared trace pipeline, and the metrics client
//! ([`metrics`]).
//!
//! Collectors that reconstruct request journeys (netstack, http, grpc)
//! hand each one to a [`Pipeline`] as a [`Trace`]: spans with names,
//! times, attributes and parents given as indices within the trace, and the
//! [`Pod`] it belongs to. The pipeline gives the spans of a trace one trace
//! id, exports them in batches over OTLP/gRPC or OTLP/HTTP (protobuf) and
//! counts what it could not deliver ([`Stats`]). A trace that continues a
//! caller's (a request's W3C `traceparent`, [`RemoteParent`]) takes its
//! trace id, and its root spans become children of the caller's span.
//! Nothing here exposes an OpenTelemetry SDK type, so collectors do not
//! depend on its versions.
//!
//! # Settings
//!
//! `[otlp]` in the config file, `--otlp.*` flags, `PMOAS_OTLP_*` variables
//! ([`OtlpConfig`]). An endpoint, protocol, headers or timeout not given
//! there comes from the standard `OTEL_EXPORTER_OTLP_TRACES_*`, then
//! `OTEL_EXPORTER_OTLP_*` variables, then the default
//! ([`OtlpConfig::resolve`]). No endpoint anywhere: nothing is exported and
//! [`Pipeline::is_enabled`] is false.
//!
//! # How it exports
//!
//! [`Pipeline::submit`] never blocks: it reserves room for the trace's
//! spans in a bounded queue (`otlp.queue_size` spans, counting the batch
//! being sent) or drops the whole trace and counts it. A worker thread with
//! its own current-thread tokio runtime batches spans (`otlp.batch_size`,
//! or whatever arrived within `otlp.batch_delay`) and sends them with the
//! `opentelemetry-otlp` crate's `SpanExporter`, built and called directly:
//! no global tracer provider, no SDK batch processor (whose queue and drop
//! counts are not visible), and no `tracing` bridge. Spans are built as
//! the SDK's `SpanData` with their ids from its random id generator. The
//! exporter sends one resource per request, so a batch is split per pod.
//!
//! A receiver that is down or refuses makes requests fail (after the OTLP
//! exporter's retries); their spans are counted as dropped with reason
//! `export_failed`, a warning is logged at most once a minute, and the
//! queue keeps taking traces.
//!
//! Transports are plaintext only: the build carries no TLS stack (no
//! OpenSSL), so an `https://` endpoint is refused at start with a message.

mod config;
mod context;
pub mod metrics;
mod pipeline;

pub use config::{DEFAULT_METRICS_INTERVAL, DEFAULT_TIMEOUT, Destination, OtlpConfig, Protocol, Signal, parse_headers};
pub use context::{RemoteParent, TraceparentError};
pub use pipeline::{
    AttrValue, Attributes, DropReason, Pipeline, Pod, Span, SpanKind, Stats, Trace, attr, node_resource,
};

/// Why the pipeline cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{key}: {reason}")]
    Setting { key: &'static str, reason: String },
    #[error("environment variable {name}: {reason}")]
    Variable { name: &'static str, reason: String },
    #[error("OTLP exporter to {url}: {reason}")]
    Build { url: String, reason: String },
}

#[cfg(test)]
mod tests;
