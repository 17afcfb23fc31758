//! Sending metrics over OTLP (`otlp.metrics_endpoint`).
//!
//! The exporter builds each `ExportMetricsServiceRequest` itself from a
//! scrape (the same series /metrics serves), so this module is transport
//! only: [`MetricsClient::export`] sends one request over OTLP/gRPC
//! (`MetricsService/Export`) or OTLP/HTTP (`POST /v1/metrics`, protobuf
//! body) and returns what the receiver said, including the data points it
//! rejected in a partial success. The message types are re-exported from
//! the official definitions (the `opentelemetry-proto` crate) as
//! [`proto`], [`common`] and [`resource`].

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
pub use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1 as common;
pub use opentelemetry_proto::tonic::metrics::v1 as proto;
pub use opentelemetry_proto::tonic::resource::v1 as resource;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::{Destination, Error, Protocol};

/// Bytes of an HTTP answer read at most: a status line, headers and a
/// partial-success message fit easily; a receiver cannot make us hold more.
const RESPONSE_LIMIT: u64 = 64 * 1024;

/// What the receiver said about an accepted request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Data points it refused (OTLP partial success), 0 when all were taken.
    pub rejected_points: i64,
    /// Its reason for refusing them, if it gave one.
    pub message: String,
}

/// One receiver, over the destination's protocol.
pub struct MetricsClient {
    destination: Destination,
    transport: Transport,
}

enum Transport {
    Grpc(MetricsServiceClient<Channel>),
    Http { authority: String, path: String },
}

impl MetricsClient {
    /// A client for `destination`; nothing is connected until the first
    /// export. Must be called inside a tokio runtime (gRPC's channel lives
    /// on it).
    pub fn new(destination: Destination) -> Result<MetricsClient, Error> {
        let build = |reason: String| Error::Build { url: destination.url.clone(), reason };
        let transport = match destination.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(destination.url.clone()).map_err(|e| build(e.to_string()))?;
                let channel = endpoint.connect_timeout(destination.timeout).timeout(destination.timeout).connect_lazy();
                Transport::Grpc(MetricsServiceClient::new(channel))
            }
            Protocol::HttpProtobuf => {
                let uri: http::Uri =
                    destination.url.parse().map_err(|e: http::uri::InvalidUri| build(e.to_string()))?;
                let host = uri.host().ok_or_else(|| build("no host".into()))?;
                let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
                let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
                Transport::Http { authority, path }
            }
        };
        Ok(MetricsClient { destination, transport })
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Sends one request; Err says why it was not accepted.
    pub async fn export(&mut self, request: ExportMetricsServiceRequest) -> Result<Accepted, String> {
        let timeout = self.destination.timeout;
        let headers = &self.destination.headers;
        let response = match &mut self.transport {
            Transport::Grpc(client) => {
                let mut call = tonic::Request::new(request);
                call.set_timeout(timeout);
                for (k, v) in headers {
                    let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
                    let value = MetadataValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
                    call.metadata_mut().insert(key, value);
                }
                let answer = tokio::time::timeout(timeout, client.export(call))
                    .await
                    .map_err(|_| format!("no answer within {timeout:?}"))?;
                answer.map_err(|status| format!("gRPC {:?}: {}", status.code(), status.message()))?.into_inner()
            }
            Transport::Http { authority, path } => {
                tokio::time::timeout(timeout, post(authority, path, headers, &request.encode_to_vec()))
                    .await
                    .map_err(|_| format!("no answer within {timeout:?}"))??
            }
        };
        Ok(match response.partial_success {
            Some(p) => Accepted { rejected_points: p.rejected_data_points, message: p.error_message },
            None => Accepted::default(),
        })
    }
}

/// `POST` of a protobuf body over HTTP/1.1, one request per connection
/// (an export every few seconds needs no pool). A 2xx answer's body is
/// the response message; an empty or unreadable one counts as "all taken".
async fn post(
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<ExportMetricsServiceResponse, String> {
    let mut stream =
        tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: pmoas-exporter/{}\r\nContent-Type: \
         application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.write_all(body).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    (&mut stream).take(RESPONSE_LIMIT).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    let (head, body) = answer.split_at(split);
    let head = String::from_utf8_lossy(head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", head.chars().take(80).collect::<String>()))?;
    if !(200..300).contains(&status) {
        let why = String::from_utf8_lossy(body).trim().chars().take(300).collect::<String>();
        return Err(format!("HTTP {status}: {why}"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(if chunked { None } else { ExportMetricsServiceResponse::decode(body).ok() }.unwrap_or_default())
}
