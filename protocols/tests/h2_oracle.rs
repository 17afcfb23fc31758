//! HTTP/2, HPACK and gRPC against genuine byte streams: a real `h2` client
//! and server talk over an in-memory pipe, every read and write of each
//! side is recorded as a chunk, and the exchanges parsed from them must be
//! exactly the requests the client made (h2's encoder uses the dynamic
//! table and Huffman coding). Then the same streams cut short, joined
//! mid-stream and re-chunked: whatever is returned must still be exactly
//! right, whatever is not is counted.

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use pmoas_protocols::{
    Chunk, Connection, Direction, Exchange, GrpcCode, GrpcCodeSource, Limits, LossReason, Losses, Method, Protocol,
    Role,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Log = Arc<Mutex<Vec<(Direction, Vec<u8>)>>>;

/// Records every read and write of the wrapped stream.
struct Rec<T> {
    inner: T,
    log: Log,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rec<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled()[before..].to_vec();
        if !got.is_empty() {
            self.log.lock().unwrap().push((Direction::Ingress, got));
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rec<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.log.lock().unwrap().push((Direction::Egress, buf[..n].to_vec()));
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One call of the conversation and what the server answers.
#[derive(Clone, Debug)]
struct Case {
    method: &'static str,
    path: String,
    grpc: bool,
    request_body: bool,
    status: u16,
    /// gRPC: the code, and whether it comes Trailers-Only.
    code: Option<(u32, bool)>,
    x_request_id: String,
}

/// What an exchange must say about a case.
fn check(e: &Exchange, c: &Case) {
    let label = format!("stream {:?} case {c:?} exchange {e:?}", e.stream_id);
    assert_eq!(e.method, Method::parse(c.method.as_bytes()), "{label}");
    assert_eq!(e.status_code, Some(c.status), "{label}");
    assert_eq!(e.reset, None, "{label}");
    if let Some(p) = &e.path {
        assert_eq!(p, &c.path, "{label}");
    }
    if let Some(a) = &e.authority {
        assert_eq!(a, "svc.local:8080", "{label}");
    }
    if let Some(x) = &e.x_request_id {
        assert_eq!(x, &c.x_request_id, "{label}");
    }
    if let Some(t) = &e.traceparent {
        assert_eq!(t, &traceparent(&c.x_request_id), "{label}");
    }
    if !e.headers_partial {
        assert_eq!(e.path.as_deref(), Some(c.path.as_str()), "{label}");
        assert_eq!(e.x_request_id.as_deref(), Some(c.x_request_id.as_str()), "{label}");
    }
    match c.code {
        Some((code, trailers_only)) => {
            assert_eq!(e.protocol, Protocol::Grpc, "{label}");
            let g = e.grpc.as_ref().expect("grpc");
            let (service, method) = c.path[1..].split_once('/').unwrap();
            assert_eq!((g.service.as_str(), g.method.as_str()), (service, method), "{label}");
            assert_eq!(g.code, GrpcCode::from_u32(code).unwrap(), "{label}");
            let source = if trailers_only { GrpcCodeSource::TrailersOnly } else { GrpcCodeSource::Trailers };
            assert_eq!(g.code_source, source, "{label}");
        }
        None if c.grpc => {
            // No grpc-status: mapped from the HTTP status.
            let g = e.grpc.as_ref().expect("grpc");
            assert_eq!(g.code, GrpcCode::from_http_status(c.status), "{label}");
            assert_eq!(g.code_source, GrpcCodeSource::HttpStatus, "{label}");
        }
        None => {
            assert_eq!(e.protocol, Protocol::Http2, "{label}");
            assert!(e.grpc.is_none(), "{label}");
        }
    }
    assert!(e.request_start_ns <= e.request_end_ns, "{label}");
    assert!(e.request_start_ns <= e.response_start_ns, "{label}");
    assert!(e.response_start_ns <= e.response_end_ns, "{label}");
}

fn traceparent(id: &str) -> String {
    let hex: String = id.bytes().map(|b| format!("{:02x}", b)).collect::<String>();
    format!("00-{:0>32}-{:0>16}-01", &hex[hex.len().saturating_sub(32)..], &hex[..16.min(hex.len())])
}

/// A conversation exercising the dynamic table: repeated paths and
/// authorities, unique ids that churn the table, gRPC with trailers and
/// Trailers-Only, statuses in and out of the static table.
fn cases(n: usize, seed: u64) -> Vec<Case> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            let grpc = r % 3 == 0;
            let status_pick = [200u16, 200, 200, 404, 503, 302, 201, 500, 429];
            if grpc {
                let methods = ["SayHello", "Get", "List", "Watch"];
                let code = (r >> 8) % 17;
                let trailers_only = (r >> 16) % 4 == 0;
                let no_status = (r >> 20) % 11 == 0;
                Case {
                    method: "POST",
                    path: format!("/pkg.v1.Service{}/{}", (r >> 24) % 3, methods[((r >> 28) % 4) as usize]),
                    grpc: true,
                    request_body: true,
                    status: if no_status { 503 } else { 200 },
                    code: if no_status { None } else { Some((code as u32, trailers_only)) },
                    x_request_id: format!("req-{seed}-{i}-{:x}", r >> 32),
                }
            } else {
                let methods = ["GET", "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
                let method = methods[((r >> 4) % methods.len() as u64) as usize];
                Case {
                    method,
                    path: format!("/api/v{}/items/{}", (r >> 12) % 2, (r >> 16) % 5),
                    grpc: false,
                    request_body: method == "POST" || method == "PUT",
                    status: status_pick[((r >> 40) % status_pick.len() as u64) as usize],
                    code: None,
                    x_request_id: format!("{:016x}-{i}", r),
                }
            }
        })
        .collect()
}

/// Runs the conversation; returns the client's and the server's chunks.
type Calls = Vec<(Direction, Vec<u8>)>;

fn record(cases: &[Case]) -> (Calls, Calls) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let client_log: Log = Arc::default();
    let server_log: Log = Arc::default();
    let (c, s) = tokio::io::duplex(1 << 16);
    let server_cases = cases.to_vec();
    let (cl, sl) = (client_log.clone(), server_log.clone());
    rt.block_on(async move {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let server = tokio::task::spawn_local(async move {
                    let mut conn = h2::server::handshake(Rec { inner: s, log: sl }).await.unwrap();
                    let mut i = 0;
                    while let Some(r) = conn.accept().await {
                        let (req, mut respond) = r.unwrap();
                        let case = server_cases[i].clone();
                        i += 1;
                        let mut body = req.into_body();
                        while let Some(d) = body.data().await {
                            let d = d.unwrap();
                            let _ = body.flow_control().release_capacity(d.len());
                        }
                        let mut resp = http::Response::builder().status(case.status);
                        if case.grpc {
                            resp = resp.header("content-type", "application/grpc");
                        } else {
                            resp = resp.header("content-type", "text/plain").header("server", "oracle");
                        }
                        match case.code {
                            Some((code, true)) => {
                                let resp = resp.header("grpc-status", code.to_string()).body(()).unwrap();
                                respond.send_response(resp, true).unwrap();
                            }
                            Some((code, false)) => {
                                let mut stream = respond.send_response(resp.body(()).unwrap(), false).unwrap();
                                stream.send_data(Bytes::from_static(b"\0\0\0\0\x02hi"), false).unwrap();
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", code.to_string().parse().unwrap());
                                trailers.insert("grpc-message", "some message".parse().unwrap());
                                stream.send_trailers(trailers).unwrap();
                            }
                            None => {
                                let mut stream = respond.send_response(resp.body(()).unwrap(), false).unwrap();
                                stream.send_data(Bytes::from(vec![b'r'; 100]), true).unwrap();
                            }
                        }
                    }
                });
                let (mut send, conn) = h2::client::handshake(Rec { inner: c, log: cl }).await.unwrap();
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                });
                for case in cases {
                    let mut req = http::Request::builder()
                        .method(case.method)
                        .uri(format!("http://svc.local:8080{}", case.path))
                        .header("x-request-id", &case.x_request_id)
                        .header("traceparent", traceparent(&case.x_request_id))
                        .header("user-agent", "oracle/1.0");
                    if case.grpc {
                        req = req.header("content-type", "application/grpc").header("te", "trailers");
                    }
                    send = send.ready().await.unwrap();
                    let (resp, mut stream) = send.send_request(req.body(()).unwrap(), !case.request_body).unwrap();
                    if case.request_body {
                        stream.send_data(Bytes::from(vec![b'q'; 300]), true).unwrap();
                    }
                    let resp = resp.await.unwrap();
                    let mut body = resp.into_body();
                    while let Some(d) = body.data().await {
                        let d = d.unwrap();
                        let _ = body.flow_control().release_capacity(d.len());
                    }
                    let _ = body.trailers().await;
                }
                drop(send);
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), server).await;
            })
            .await;
    });
    let c = client_log.lock().unwrap().clone();
    let s = server_log.lock().unwrap().clone();
    (c, s)
}

struct Parsed {
    out: Vec<Exchange>,
    losses: Losses,
    max_memory: usize,
}

/// Feeds chunks (each captured up to `capture` bytes) to a connection.
fn parse(role: Role, chunks: &[(Direction, Vec<u8>)], capture: usize, limits: Limits) -> Parsed {
    let mut conn = Connection::with_limits(role, limits);
    let mut out = Vec::new();
    let mut losses = Losses::new();
    let mut max_memory = 0;
    for (i, (d, bytes)) in chunks.iter().enumerate() {
        let t = 1000 + 10 * i as u64;
        let chunk = Chunk {
            direction: *d,
            captured: &bytes[..capture.min(bytes.len())],
            total_len: bytes.len(),
            start_ns: t,
            end_ns: t + 5,
        };
        conn.feed(&chunk, &mut out, &mut losses);
        max_memory = max_memory.max(conn.memory_bytes());
    }
    conn.close(1000 + 10 * chunks.len() as u64, &mut out, &mut losses);
    Parsed { out, losses, max_memory }
}

fn case_of(cases: &[Case], e: &Exchange) -> Case {
    let id = e.stream_id.expect("stream id");
    assert_eq!(id % 2, 1);
    cases[(id as usize - 1) / 2].clone()
}

fn assert_all_right(cases: &[Case], p: &Parsed) {
    let mut seen = std::collections::HashSet::new();
    for e in &p.out {
        check(e, &case_of(cases, e));
        assert!(seen.insert(e.stream_id), "stream returned twice: {e:?}");
    }
    assert!(p.max_memory <= Limits::default().max_connection_bytes(), "{} bytes", p.max_memory);
}

fn nonzero(l: &Losses) -> Vec<(&'static str, u64)> {
    l.iter().filter(|(_, n)| *n > 0).collect()
}

#[test]
fn whole_conversation_is_decoded_exactly_on_both_sides() {
    let cases = cases(120, 7);
    let (client, server) = record(&cases);
    assert!(client.iter().any(|(d, b)| *d == Direction::Egress && b.starts_with(b"PRI * HTTP/2.0")));
    for (role, chunks) in [(Role::Client, &client), (Role::Server, &server)] {
        let p = parse(role, chunks, usize::MAX, Limits::default());
        assert_eq!(nonzero(&p.losses), vec![], "{role:?}");
        assert_eq!(p.out.len(), cases.len(), "{role:?}");
        for (i, e) in p.out.iter().enumerate() {
            assert_eq!(e.stream_id, Some(2 * i as u32 + 1));
            check(e, &cases[i]);
            assert!(!e.headers_partial);
        }
        assert!(p.out.iter().any(|e| e.grpc.as_ref().is_some_and(|g| g.code_source == GrpcCodeSource::TrailersOnly)));
        assert!(p.out.iter().any(|e| e.grpc.as_ref().is_some_and(|g| g.code_source == GrpcCodeSource::Trailers)));
        assert!(p.out.iter().any(|e| e.grpc.as_ref().is_some_and(|g| g.code_source == GrpcCodeSource::HttpStatus)));
    }
}

#[test]
fn many_seeds_exact() {
    for seed in 1..6 {
        let cases = cases(40, seed * 31);
        let (client, server) = record(&cases);
        for (role, chunks) in [(Role::Client, &client), (Role::Server, &server)] {
            let p = parse(role, chunks, usize::MAX, Limits::default());
            assert_eq!(nonzero(&p.losses), vec![], "seed {seed} {role:?}");
            assert_eq!(p.out.len(), cases.len());
            assert_all_right(&cases, &p);
        }
    }
}

#[test]
fn short_captures_never_give_a_wrong_exchange() {
    let cases = cases(80, 99);
    let (client, server) = record(&cases);
    for capture in [9, 16, 30, 64, 100, 200, 500, 1000, 4096] {
        for (role, chunks) in [(Role::Client, &client), (Role::Server, &server)] {
            let p = parse(role, chunks, capture, Limits::default());
            assert_all_right(&cases, &p);
            if capture >= 4096 {
                assert_eq!(p.out.len(), cases.len());
            }
            let total = p.out.len() as u64 + p.losses.total();
            assert!(total > 0);
        }
    }
}

#[test]
fn joined_mid_stream_never_gives_a_wrong_exchange() {
    let cases = cases(60, 5);
    let (client, server) = record(&cases);
    for (role, chunks) in [(Role::Client, &client), (Role::Server, &server)] {
        let mut recovered = 0;
        for start in 1..chunks.len() {
            let p = parse(role, &chunks[start..], usize::MAX, Limits::default());
            assert_all_right(&cases, &p);
            if !p.out.is_empty() {
                recovered += 1;
            }
        }
        // h2 indexes every field but `:path`, and names new values of a
        // field after its first entry: joined mid-stream, what the static
        // table and literals give is mostly the method and the path, enough
        // for plain HTTP/2 exchanges on paths no gRPC call has.
        eprintln!("{role:?}: joined at {recovered} of {} chunks, exchanges came out", chunks.len());
        assert!(recovered > 0, "{role:?}");
    }
}

#[test]
fn rechunked_at_every_offset_gives_the_same_exchanges() {
    let cases = cases(12, 3);
    let (client, _) = record(&cases);
    let whole = parse(Role::Client, &client, usize::MAX, Limits::default());
    let max_len = client.iter().map(|(_, b)| b.len()).max().unwrap();
    for k in 1..max_len {
        let split: Vec<(Direction, Vec<u8>)> = client
            .iter()
            .enumerate()
            .flat_map(|(i, (d, b))| {
                // (The first, the client preface, whole: a chunk of under 4
                // bytes does not tell the protocol.)
                if b.len() > k && i > 0 {
                    vec![(*d, b[..k].to_vec()), (*d, b[k..].to_vec())]
                } else {
                    vec![(*d, b.clone())]
                }
            })
            .collect();
        let p = parse(Role::Client, &split, usize::MAX, Limits::default());
        assert_eq!(nonzero(&p.losses), vec![], "split at {k}");
        let strip = |e: &Exchange| (e.stream_id, e.method, e.path.clone(), e.status_code, e.grpc.clone());
        assert_eq!(
            p.out.iter().map(strip).collect::<Vec<_>>(),
            whole.out.iter().map(strip).collect::<Vec<_>>(),
            "split at {k}"
        );
    }
}

#[test]
fn small_hpack_cap_stays_correct() {
    // A table cap below what the encoder uses: entries beyond it are
    // unknown, never wrong.
    let cases = cases(60, 11);
    let (client, server) = record(&cases);
    let limits = Limits { max_hpack_table: 4096, ..Limits::default() };
    for (role, chunks) in [(Role::Client, &client), (Role::Server, &server)] {
        let p = parse(role, chunks, usize::MAX, limits);
        assert_all_right(&cases, &p);
    }
}

#[test]
fn stream_limit_is_counted() {
    let cases = cases(10, 1);
    let (client, _) = record(&cases);
    // Requests only: every stream stays open.
    let requests: Vec<_> = client.iter().filter(|(d, _)| *d == Direction::Egress).cloned().collect();
    let p = parse(Role::Client, &requests, usize::MAX, Limits { max_streams: 4, ..Limits::default() });
    assert_eq!(p.losses.get(LossReason::H2StreamOverflow), 6);
}

#[test]
fn joined_anywhere_the_role_hint_is_never_wrong() {
    let cases = cases(40, 11);
    let (client, server) = record(&cases);
    for (role, chunks) in [(Role::Client, &client), (Role::Server, &server)] {
        let mut told = 0;
        for (i, (d, bytes)) in chunks.iter().enumerate() {
            let chunk = Chunk { direction: *d, captured: bytes, total_len: bytes.len(), start_ns: 0, end_ns: 0 };
            if let Some(hint) = pmoas_protocols::role_hint(&chunk) {
                assert_eq!(hint, role, "chunk {i}");
                told += 1;
                // A parser started there: nothing wrong comes out.
                assert_all_right(&cases, &parse(role, &chunks[i..], usize::MAX, Limits::default()));
            }
        }
        // Every request and every response head carries a static
        // `:method` or `:status`.
        assert!(told >= cases.len(), "{role:?}: {told} chunks told the role");
    }
}
