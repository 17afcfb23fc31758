//! Real curl -> nginx conversations (tests/fixtures/record_curl_nginx.py):
//! HTTP/1.1 keep-alive (content-length, chunked gzip, HEAD, POST, 404,
//! 503, 302) and h2c (curl's nghttp2 encoder, nginx's own).

use pmoas_protocols::{Chunk, Connection, Direction, Exchange, LossReason, Losses, Method, Protocol, Role};

/// Connections of (client to server?, bytes) per recorded recv.
fn connections(bin: &'static [u8]) -> Vec<Vec<(bool, &'static [u8])>> {
    let mut conns = vec![Vec::new()];
    let mut rest = bin;
    while let [dir, a, b, c, d, tail @ ..] = rest {
        let n = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        match dir {
            2 => conns.push(Vec::new()),
            _ => conns.last_mut().unwrap().push((*dir == 0, &tail[..n])),
        }
        rest = &tail[n..];
    }
    conns.retain(|c| !c.is_empty());
    conns
}

fn plan(txt: &str) -> Vec<(Method, String, u16)> {
    txt.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<_> = l.split(' ').collect();
            (Method::parse(f[0].as_bytes()), f[1].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

fn parse(role: Role, chunks: &[(bool, &[u8])], capture: usize) -> (Vec<Exchange>, Losses) {
    let mut conn = Connection::new(role);
    let mut out = Vec::new();
    let mut losses = Losses::new();
    for (i, (to_server, bytes)) in chunks.iter().enumerate() {
        let direction = match (role, to_server) {
            (Role::Client, true) | (Role::Server, false) => Direction::Egress,
            _ => Direction::Ingress,
        };
        let t = 1000 + 10 * i as u64;
        let chunk = Chunk {
            direction,
            captured: &bytes[..capture.min(bytes.len())],
            total_len: bytes.len(),
            start_ns: t,
            end_ns: t + 5,
        };
        conn.feed(&chunk, &mut out, &mut losses);
    }
    conn.close(1000 + 10 * chunks.len() as u64, &mut out, &mut losses);
    (out, losses)
}

fn summary(out: &[Exchange]) -> Vec<(Method, String, u16)> {
    out.iter().map(|e| (e.method, e.path.clone().unwrap(), e.status_code.unwrap())).collect()
}

#[test]
fn http1_keep_alive_conversation() {
    let conns = connections(include_bytes!("fixtures/curl_nginx_h1.bin"));
    assert_eq!(conns.len(), 1);
    let plan = plan(include_str!("fixtures/curl_nginx_h1.txt"));
    for role in [Role::Client, Role::Server] {
        let (out, losses) = parse(role, &conns[0], usize::MAX);
        assert_eq!(losses.total(), 0, "{:?}", losses.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>());
        assert_eq!(summary(&out), plan);
        assert!(out.iter().all(|e| e.protocol == Protocol::Http1));
        assert_eq!(out.last().unwrap().x_request_id.as_deref(), Some("rid-last"));
        assert!(out.iter().all(|e| e.authority.as_deref().is_some_and(|a| a.starts_with("127.0.0.1:"))));
        // With a kernel-sized capture, bodies are skipped by count: what
        // comes out is right, what does not is counted.
        for capture in [64, 512, 2048] {
            let (out, losses) = parse(role, &conns[0], capture);
            let got = summary(&out);
            assert!(got.iter().all(|x| plan.contains(x)), "{capture}: {got:?}");
            match capture {
                // Every head cut: all counted as truncated.
                64 => assert_eq!(losses.get(LossReason::Http1Truncated), 18),
                // The gzip response's second chunk-size line is beyond
                // 512 bytes: that one response lost, then resync.
                512 => {
                    assert_eq!(got.len(), plan.len() - 1);
                    assert_eq!(losses.get(LossReason::Http1FramingLost), 1);
                }
                _ => assert_eq!(got, plan),
            }
        }
    }
}

#[test]
fn h2c_connections() {
    let conns = connections(include_bytes!("fixtures/curl_nginx_h2.bin"));
    let plan = plan(include_str!("fixtures/curl_nginx_h2.txt"));
    assert_eq!(conns.len(), plan.len());
    for role in [Role::Client, Role::Server] {
        for (conn, expected) in conns.iter().zip(&plan) {
            let (out, losses) = parse(role, conn, usize::MAX);
            assert_eq!(losses.total(), 0, "{:?}", losses.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>());
            assert_eq!(summary(&out), vec![expected.clone()]);
            let e = &out[0];
            assert_eq!(e.protocol, Protocol::Http2);
            assert_eq!(e.stream_id, Some(1));
            assert_eq!(e.x_request_id.as_deref(), Some("rid-h2"));
            assert!(!e.headers_partial);
        }
    }
}

#[test]
fn the_role_hint_of_every_chunk_is_never_wrong() {
    // Each chunk alone, as if the connection were joined there.
    let h1 = connections(include_bytes!("fixtures/curl_nginx_h1.bin"));
    let h2 = connections(include_bytes!("fixtures/curl_nginx_h2.bin"));
    for role in [Role::Client, Role::Server] {
        let mut told = 0;
        for (to_server, bytes) in h1.iter().chain(&h2).flatten() {
            let direction = match (role, to_server) {
                (Role::Client, true) | (Role::Server, false) => Direction::Egress,
                _ => Direction::Ingress,
            };
            let chunk = Chunk { direction, captured: bytes, total_len: bytes.len(), start_ns: 0, end_ns: 0 };
            if let Some(hint) = pmoas_protocols::role_hint(&chunk) {
                assert_eq!(hint, role, "{:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(40)]));
                told += 1;
            }
        }
        // Every HTTP/1 message head, and the h2 preface or headers.
        assert!(told >= 2 * plan(include_str!("fixtures/curl_nginx_h1.txt")).len(), "{role:?}: {told}");
    }
}
