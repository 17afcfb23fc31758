//! HTTP/2 and gRPC on hand-built frames: padding and priority, CONTINUATION,
//! RST_STREAM, GOAWAY, truncated header blocks, lost frame headers and
//! resync, mid-stream starts decoded from the static table and literals.

mod common;

use common::{Feeder, IN, OUT};
use pmoas_protocols::{GrpcCode, GrpcCodeSource, LossReason, Method, Protocol, Role};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags];
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;
const PRIORITY: u8 = 0x20;

/// A literal field without indexing, new name (no Huffman).
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut v = vec![0x00, name.len() as u8];
    v.extend(name.as_bytes());
    v.push(value.len() as u8);
    v.extend(value.as_bytes());
    v
}

/// A literal field with incremental indexing, new name.
fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut v = lit(name, value);
    v[0] = 0x40;
    v
}

/// A literal without indexing whose name is static entry `index`.
fn lit_static_name(index: u8, value: &str) -> Vec<u8> {
    let mut v = if index < 15 { vec![index] } else { vec![0x0f, index - 15] };
    v.push(value.len() as u8);
    v.extend(value.as_bytes());
    v
}

fn grpc_request(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    b.extend(lit_static_name(4, path)); // :path
    b.extend(lit_static_name(1, "svc:50051")); // :authority
    b.extend(lit_static_name(31, "application/grpc")); // content-type
    b.extend(lit("te", "trailers"));
    b.extend(lit("x-request-id", "r-1"));
    b
}

fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[])
}

/// Client preface + SETTINGS, as a client writes them.
fn client_start() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(settings());
    v
}

#[test]
fn grpc_unary_with_trailers() {
    let mut f = Feeder::new(Role::Server);
    let mut req = client_start();
    req.extend(frame(HEADERS, END_HEADERS, 1, &grpc_request("/helloworld.Greeter/SayHello")));
    req.extend(frame(DATA, END_STREAM, 1, b"\0\0\0\0\x03abc"));
    f.feed(IN, &req);
    f.feed(OUT, &settings());
    let mut resp = frame(
        HEADERS,
        END_HEADERS,
        1,
        &[
            0x88, 0x5f, 16, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/', b'g', b'r', b'p',
            b'c',
        ],
    );
    resp.extend(frame(DATA, 0, 1, b"\0\0\0\0\x02hi"));
    f.feed(OUT, &resp);
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &lit("grpc-status", "5")));
    assert_eq!(f.out.len(), 1, "{:?}", f.losses());
    let e = &f.out[0];
    assert_eq!(e.protocol, Protocol::Grpc);
    assert_eq!(e.method, Method::Post);
    assert_eq!(e.status_code, Some(200));
    let g = e.grpc.as_ref().unwrap();
    assert_eq!((g.service.as_str(), g.method.as_str()), ("helloworld.Greeter", "SayHello"));
    assert_eq!((g.code, g.code_source), (GrpcCode::NotFound, GrpcCodeSource::Trailers));
    assert_eq!(g.code.as_str(), "NOT_FOUND");
    assert_eq!(e.authority.as_deref(), Some("svc:50051"));
    assert_eq!(e.x_request_id.as_deref(), Some("r-1"));
    assert_eq!(e.stream_id, Some(1));
    // Read exit of the request, exit of the trailers' write.
    assert_eq!((e.request_start_ns, e.response_start_ns, e.response_end_ns), (1015, 1030, 1045));
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn trailers_only_padding_priority_and_continuation() {
    let mut f = Feeder::new(Role::Client);
    let block = grpc_request("/a.B/C");
    // HEADERS padded and with priority, the block split in a CONTINUATION.
    let mut first = vec![3u8]; // pad length
    first.extend([0, 0, 0, 0, 16]); // priority
    first.extend(&block[..10]);
    first.extend([0, 0, 0]);
    let mut req = client_start();
    req.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
    req.extend(frame(CONTINUATION, END_HEADERS, 1, &block[10..]));
    f.feed(OUT, &req);
    let mut only = vec![0x88];
    only.extend(lit_static_name(31, "application/grpc"));
    only.extend(lit("grpc-status", "14"));
    f.feed(IN, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &only));
    assert_eq!(f.out.len(), 1, "{:?}", f.losses());
    let g = f.out[0].grpc.as_ref().unwrap();
    assert_eq!((g.code, g.code_source), (GrpcCode::Unavailable, GrpcCodeSource::TrailersOnly));
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn missing_grpc_status_maps_the_http_status() {
    let mut f = Feeder::new(Role::Client);
    let mut req = client_start();
    req.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &grpc_request("/a.B/C")));
    f.feed(OUT, &req);
    let mut resp = lit_static_name(8, "503");
    resp.extend(lit_static_name(31, "text/plain"));
    f.feed(IN, &frame(HEADERS, END_HEADERS, 1, &resp));
    f.feed(IN, &frame(DATA, END_STREAM, 1, b"upstream connect error"));
    let e = &f.out[0];
    assert_eq!(e.status_code, Some(503));
    let g = e.grpc.as_ref().unwrap();
    assert_eq!((g.code, g.code_source), (GrpcCode::Unavailable, GrpcCodeSource::HttpStatus));
}

#[test]
fn reset_stream_is_an_exchange_with_its_code() {
    let mut f = Feeder::new(Role::Client);
    let mut req = client_start();
    req.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &grpc_request("/a.B/C")));
    req.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x82, 0x86, 0x84]));
    f.feed(OUT, &req);
    // The client cancels the gRPC call; the server refuses the other.
    f.feed(OUT, &frame(RST, 0, 1, &8u32.to_be_bytes()));
    f.feed(IN, &frame(RST, 0, 3, &7u32.to_be_bytes()));
    assert_eq!(f.out.len(), 2);
    let g = f.out[0].grpc.as_ref().unwrap();
    assert_eq!((g.code, g.code_source), (GrpcCode::Cancelled, GrpcCodeSource::Reset));
    assert_eq!(f.out[0].reset, Some(8));
    assert_eq!(f.out[0].status_code, None);
    assert_eq!(f.out[1].protocol, Protocol::Http2);
    assert_eq!(f.out[1].reset, Some(7));
    assert_eq!(f.losses.total(), 0);
}

/// A server that answered in full resets the stream with NO_ERROR (RFC 9113
/// 8.1; grpc-core does). Seen without the trailers (the capture cut them),
/// the call's code is unknown: not INTERNAL, as a client that got no status
/// would say, but lost and counted.
#[test]
fn a_no_error_reset_without_a_status_is_counted_not_named() {
    let mut f = Feeder::new(Role::Client);
    let mut req = client_start();
    req.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &grpc_request("/a.B/C")));
    f.feed(OUT, &req);
    f.feed(IN, &frame(HEADERS, END_HEADERS, 1, &[0x88]));
    f.feed(IN, &frame(RST, 0, 1, &0u32.to_be_bytes()));
    assert!(f.out.is_empty(), "{:?}", f.out);
    assert_eq!(f.losses.get(LossReason::H2StreamLost), 1, "{:?}", f.losses);
}

#[test]
fn goaway_drops_unprocessed_streams() {
    let mut f = Feeder::new(Role::Client);
    let mut req = client_start();
    for id in [1, 3, 5] {
        req.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &[0x82, 0x86, 0x84]));
    }
    f.feed(OUT, &req);
    let mut goaway = 1u32.to_be_bytes().to_vec();
    goaway.extend(0u32.to_be_bytes());
    f.feed(IN, &frame(GOAWAY, 0, 0, &goaway));
    f.feed(IN, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
    assert_eq!(f.out.len(), 1);
    assert_eq!(f.out[0].stream_id, Some(1));
    // Streams 3 and 5 are gone: nothing lost, nothing held.
    f.close();
    assert_eq!(f.out.len(), 1);
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn data_beyond_the_capture_is_skipped() {
    let mut f = Feeder::new(Role::Server);
    let mut req = client_start();
    req.extend(frame(HEADERS, END_HEADERS, 1, &[0x83, 0x86, 0x84]));
    f.feed(IN, &req);
    let mut big = frame(DATA, END_STREAM, 1, &vec![7u8; 16000]);
    big.extend(frame(DATA, 0, 1, &[])); // (empty DATA after END_STREAM: ignored)
    f.feed_prefix(IN, &big[..16009], 100);
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
    assert_eq!(f.out.len(), 1, "{:?}", f.losses());
    assert_eq!(f.out[0].request_end_ns, 1025);
}

#[test]
fn truncated_headers_are_counted_and_never_guessed() {
    let mut f = Feeder::new(Role::Server);
    let mut req = client_start();
    let mut block = vec![0x82, 0x86, 0x84];
    block.extend(lit_indexed("x-request-id", &"z".repeat(200)));
    req.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    // The call carried it all; 60 bytes were captured.
    f.feed_prefix(IN, &req, 60);
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
    assert!(f.out.is_empty());
    assert_eq!(f.lost(LossReason::H2HeadersTruncated), 1);
    // The HPACK table is unknown now: a reference into it is not decoded.
    f.feed(IN, &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0xbe, 0x86, 0x84]));
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x88]));
    assert!(f.out.is_empty());
    assert_eq!(f.lost(LossReason::H2HpackUnknownIndex), 1);
    // Static and literal fields still decode.
    f.feed(IN, &frame(HEADERS, END_HEADERS | END_STREAM, 5, &[0x82, 0x86, 0x84, 0xbe]));
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 5, &[0x88]));
    assert_eq!(f.out.len(), 1);
    assert!(f.out[0].headers_partial);
}

#[test]
fn lost_frame_header_resyncs_at_a_whole_frame_chunk() {
    let mut f = Feeder::new(Role::Client);
    let mut req = client_start();
    req.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x82, 0x86, 0x84]));
    f.feed(OUT, &req);
    // A read of two frames of which the second's header was not captured.
    let mut two = frame(DATA, 0, 1, &[1; 50]);
    two.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
    f.feed_prefix(IN, &two, 40);
    assert_eq!(f.lost(LossReason::H2FrameLost), 1);
    assert_eq!(f.lost(LossReason::H2StreamLost), 1);
    // A chunk starting mid-frame is ignored; a whole frame sequence resyncs.
    f.feed(IN, &[0, 0, 0, 1, 2, 3]);
    assert_eq!(f.lost(LossReason::H2Unsynced), 1);
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x82, 0x86, 0x84]));
    f.feed(IN, &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x88]));
    assert_eq!(f.out.len(), 1);
    assert_eq!(f.out[0].stream_id, Some(3));
}

#[test]
fn joined_mid_stream_decodes_static_and_literal_fields() {
    let mut f = Feeder::new(Role::Server);
    // A response on a stream opened before we joined: counted.
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 41, &[0x88]));
    assert_eq!(f.lost(LossReason::H2Unpaired), 1);
    let mut block = vec![0x82, 0x86];
    block.extend(lit_static_name(4, "/items/7/detail"));
    block.push(0xc5); // a dynamic entry we never saw
    f.feed(IN, &frame(HEADERS, END_HEADERS | END_STREAM, 43, &block));
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 43, &[0x8e]));
    assert_eq!(f.out.len(), 1, "{:?}", f.losses());
    let e = &f.out[0];
    assert_eq!((e.method, e.path.as_deref(), e.status_code), (Method::Get, Some("/items/7/detail"), Some(500)));
    assert!(e.headers_partial);
    assert_eq!(e.protocol, Protocol::Http2);
    // A gRPC-shaped path with an unknown field that may be the content-type.
    let mut block = vec![0x83, 0x86];
    block.extend(lit_static_name(4, "/a.B/C"));
    block.push(0xc5);
    f.feed(IN, &frame(HEADERS, END_HEADERS | END_STREAM, 45, &block));
    f.feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 45, &[0x88, 0xc1]));
    assert_eq!(f.out.len(), 1);
    assert_eq!(f.lost(LossReason::H2HpackUnknownIndex), 1);
}

#[test]
fn a_frame_split_at_every_offset_gives_the_same_exchange() {
    let mut req = client_start();
    let block = grpc_request("/x.Y/Z");
    req.extend(frame(HEADERS, END_HEADERS, 1, &block));
    req.extend(frame(DATA, END_STREAM, 1, b"\0\0\0\0\x01!"));
    let mut resp = settings();
    resp.extend(frame(HEADERS, END_HEADERS, 1, &[0x88]));
    resp.extend(frame(DATA, 0, 1, b"\0\0\0\0\x01!"));
    resp.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &lit("grpc-status", "0")));
    for i in 4..req.len() {
        for j in 1..resp.len() {
            let mut f = Feeder::new(Role::Server);
            f.feed(IN, &req[..i]).feed(IN, &req[i..]).feed(OUT, &resp[..j]).feed(OUT, &resp[j..]);
            assert_eq!(f.out.len(), 1, "split {i}/{j}: {:?}", f.losses());
            let g = f.out[0].grpc.as_ref().unwrap();
            assert_eq!((g.method.as_str(), g.code), ("Z", GrpcCode::Ok), "split {i}/{j}");
            assert_eq!(f.losses.total(), 0);
        }
    }
}

/// `role_hint` of one chunk that moved all of `bytes`.
fn hint(direction: pmoas_protocols::Direction, bytes: &[u8]) -> Option<Role> {
    pmoas_protocols::role_hint(&pmoas_protocols::Chunk {
        direction,
        captured: bytes,
        total_len: bytes.len(),
        start_ns: 1,
        end_ns: 2,
    })
}

#[test]
fn the_role_of_a_connection_joined_mid_stream_comes_from_its_pseudo_headers() {
    // A request: `:method POST` and `:scheme http` are static indexes.
    let request = frame(HEADERS, END_HEADERS, 7, &[0x83, 0x86, 0xc0, 0xbf]);
    assert_eq!(hint(OUT, &request), Some(Role::Client));
    assert_eq!(hint(IN, &request), Some(Role::Server));
    // Only the path is decodable (a literal with the static name `:path`).
    let mut block = vec![0xc3];
    block.extend(lit_static_name(4, "/a"));
    assert_eq!(hint(OUT, &frame(HEADERS, END_HEADERS, 7, &block)), Some(Role::Client));
    // A response: `:status 200` static; `:status 503` a literal whose name
    // is the static `:status`; with priority and padding.
    assert_eq!(hint(OUT, &frame(HEADERS, END_HEADERS, 7, &[0x88, 0xc1])), Some(Role::Server));
    assert_eq!(hint(IN, &frame(HEADERS, END_HEADERS, 7, &lit_static_name(8, "503"))), Some(Role::Client));
    let mut padded = vec![2, 0, 0, 0, 0, 16];
    padded.extend([0x8d, 0, 0]);
    assert_eq!(hint(IN, &frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 7, &padded)), Some(Role::Client));
    // Behind other frames in the same call, and cut before END_HEADERS.
    let mut call = frame(SETTINGS, 1, 0, &[]);
    call.extend(frame(HEADERS, 0, 9, &[0x82, 0xc5]));
    call.extend(frame(CONTINUATION, END_HEADERS, 9, &[0xc6]));
    assert_eq!(hint(OUT, &call), Some(Role::Client));
    // A PUSH_PROMISE is a server's, whatever its block.
    assert_eq!(hint(OUT, &frame(5, END_HEADERS, 7, &[0, 0, 0, 2, 0xc4])), Some(Role::Server));
    // The preface, and HTTP/1 start lines.
    assert_eq!(hint(OUT, PREFACE), Some(Role::Client));
    assert_eq!(hint(IN, PREFACE), Some(Role::Server));
    assert_eq!(hint(IN, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Role::Server));
    assert_eq!(hint(IN, b"HTTP/1.1 404 Not Found\r\n"), Some(Role::Client));
    assert_eq!(hint(OUT, b"HTTP/1.1 404 Not Found\r\n"), Some(Role::Server));
}

#[test]
fn frames_that_do_not_tell_give_no_role() {
    // Every pseudo-header in entries of the dynamic table we never saw.
    assert_eq!(hint(OUT, &frame(HEADERS, END_HEADERS, 7, &[0xc0, 0xc1, 0xbe])), None);
    // Trailers: no pseudo-header.
    assert_eq!(hint(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 7, &lit("grpc-status", "0"))), None);
    // Control and DATA frames only.
    let mut call = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
    call.extend(frame(8, 0, 0, &[0, 0, 0x10, 0]));
    call.extend(frame(DATA, END_STREAM, 7, b"\0\0\0\0\x01!"));
    assert_eq!(hint(IN, &call), None);
    // Both kinds of pseudo-header: malformed, no guess.
    assert_eq!(hint(OUT, &frame(HEADERS, END_HEADERS, 7, &[0x82, 0x88])), None);
    // Invalid HPACK (index 0): nothing it delivered counts.
    assert_eq!(hint(OUT, &frame(HEADERS, END_HEADERS, 7, &[0x82, 0x80])), None);
    // Not a whole sequence of frames: a body, a frame cut by the call.
    assert_eq!(hint(IN, b"x-some body bytes of a response"), None);
    let request = frame(HEADERS, END_HEADERS, 7, &[0x83, 0x86]);
    assert_eq!(hint(OUT, &request[..request.len() - 1]), None);
    // Not a complete HTTP/1 start line.
    assert_eq!(hint(IN, b"GET /a-very-long-pa"), None);
    assert_eq!(hint(IN, b"T / HTTP/1.1\r\n"), None);
}

#[test]
fn a_connection_started_from_the_hinted_chunk_measures_the_exchange_of_that_chunk() {
    // Joined mid-stream: the first request's HEADERS tells the role, and a
    // parser started from that chunk pairs its response.
    let mut block = vec![0x82, 0x86];
    block.extend(lit_static_name(4, "/p"));
    let request = frame(HEADERS, END_HEADERS | END_STREAM, 41, &block);
    let role = hint(IN, &request).expect("a role");
    let mut f = Feeder::new(role);
    f.feed(IN, &request).feed(OUT, &frame(HEADERS, END_HEADERS | END_STREAM, 41, &[0x8d]));
    assert_eq!(f.out.len(), 1, "{:?}", f.losses());
    assert_eq!((f.out[0].method, f.out[0].status_code, f.out[0].path.as_deref()), (Method::Get, Some(404), Some("/p")));
}
