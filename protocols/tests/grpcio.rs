//! A real gRPC conversation recorded from grpcio (gRPC C core) client and
//! server (tests/fixtures/record_grpcio.py): unary and server-streaming
//! calls, OK, a Trailers-Only error (NOT_FOUND), INTERNAL in trailers after
//! empty headers, and an error in the trailers after a message
//! (UNAVAILABLE). grpc-core's HPACK encoder
//! indexes nearly every field.

use pmoas_protocols::{Chunk, Connection, Direction, Exchange, GrpcCode, GrpcCodeSource, LossReason, Losses, Role};

const BIN: &[u8] = include_bytes!("fixtures/grpcio.bin");
const TXT: &str = include_str!("fixtures/grpcio.txt");

/// (client to server?, bytes) per recorded recv.
fn chunks() -> Vec<(bool, &'static [u8])> {
    let mut v = Vec::new();
    let mut rest = BIN;
    while let [dir, a, b, c, d, tail @ ..] = rest {
        let n = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        v.push((*dir == 0, &tail[..n]));
        rest = &tail[n..];
    }
    v
}

struct Call {
    path: String,
    code: u32,
    rid: String,
}

fn calls() -> Vec<Call> {
    TXT.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split(' ');
            Call {
                path: f.next().unwrap().into(),
                code: f.next().unwrap().parse().unwrap(),
                rid: f.next().unwrap().into(),
            }
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
    (out, losses)
}

fn check(e: &Exchange, calls: &[Call]) {
    let id = e.stream_id.unwrap();
    let c = &calls[(id as usize - 1) / 2];
    let g = e.grpc.as_ref().unwrap_or_else(|| panic!("not gRPC: {e:?}"));
    let (service, method) = c.path[1..].split_once('/').unwrap();
    assert_eq!((g.service.as_str(), g.method.as_str()), (service, method), "{e:?}");
    assert_eq!(g.code, GrpcCode::from_u32(c.code).unwrap(), "{e:?}");
    assert_eq!(e.method.as_str(), "POST");
    assert_eq!(e.status_code, Some(200));
    if let Some(rid) = &e.x_request_id {
        assert_eq!(rid, &c.rid);
    }
}

#[test]
fn every_call_with_its_code_on_both_sides() {
    let chunks = chunks();
    let calls = calls();
    assert_eq!(calls.len(), 30);
    for role in [Role::Client, Role::Server] {
        let (out, losses) = parse(role, &chunks, usize::MAX);
        assert_eq!(losses.total(), 0, "{:?}", losses.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>());
        assert_eq!(out.len(), calls.len());
        for (i, e) in out.iter().enumerate() {
            assert_eq!(e.stream_id, Some(2 * i as u32 + 1));
            check(e, &calls);
            assert_eq!(e.x_request_id.as_deref(), Some(calls[i].rid.as_str()));
            assert_eq!(e.authority.as_deref().map(|a| a.starts_with("127.0.0.1:")), Some(true));
            let g = e.grpc.as_ref().unwrap();
            let expected_source = match calls[i].path.as_str() {
                // (grpc-core sends INTERNAL set by a handler that returned
                // as headers, then trailers.)
                "/demo.v1.Echo/NotFound" => GrpcCodeSource::TrailersOnly,
                _ => GrpcCodeSource::Trailers,
            };
            assert_eq!(g.code_source, expected_source, "{e:?}");
        }
    }
}

#[test]
fn joined_anywhere_or_cut_short_never_wrong() {
    let chunks = chunks();
    let calls = calls();
    for role in [Role::Client, Role::Server] {
        let mut unknown = 0;
        for start in 0..chunks.len() {
            let (out, losses) = parse(role, &chunks[start..], usize::MAX);
            out.iter().for_each(|e| check(e, &calls));
            unknown += losses.get(LossReason::H2HpackUnknownIndex);
        }
        // grpc-core indexes paths and grpc-status: joined mid-stream, the
        // repeated calls are mostly undecodable — and counted.
        assert!(unknown > 0);
        for capture in [9, 20, 50, 100, 300] {
            let (out, _) = parse(role, &chunks, capture);
            out.iter().for_each(|e| check(e, &calls));
        }
    }
}

/// The chunk's direction as seen by a process of `role`.
fn direction(role: Role, to_server: bool) -> Direction {
    match (role, to_server) {
        (Role::Client, true) | (Role::Server, false) => Direction::Egress,
        _ => Direction::Ingress,
    }
}

#[test]
fn joined_anywhere_the_role_hint_is_never_wrong() {
    // What the collector does with a connection older than it: no role until
    // a chunk tells it, then a parser from that chunk on.
    let chunks = chunks();
    let calls = calls();
    for role in [Role::Client, Role::Server] {
        let mut told = 0;
        for start in 0..chunks.len() {
            let hinted = chunks[start..].iter().enumerate().find_map(|(i, (to_server, bytes))| {
                let chunk = Chunk {
                    direction: direction(role, *to_server),
                    captured: bytes,
                    total_len: bytes.len(),
                    start_ns: 0,
                    end_ns: 0,
                };
                pmoas_protocols::role_hint(&chunk).map(|r| (start + i, r))
            });
            let Some((at, hint)) = hinted else { continue };
            assert_eq!(hint, role, "joined at chunk {start}, told at {at}");
            told += 1;
            let (out, _) = parse(role, &chunks[at..], usize::MAX);
            out.iter().for_each(|e| check(e, &calls));
        }
        // grpc-core writes `:method POST` and `:status 200` as static
        // indexes: every join before the last call finds its role.
        assert!(told * 10 >= chunks.len() * 9, "{role:?}: told {told} of {}", chunks.len());
    }
}
