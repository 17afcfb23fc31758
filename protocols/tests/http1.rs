//! HTTP/1.x: framing, pairing, timing, mid-stream starts and truncation.

mod common;

use common::{Feeder, IN, OUT};
use pmoas_protocols::{Exchange, Limits, LossReason, Method, Protocol, Role};

const GET: &[u8] = b"GET /api/items?id=3 HTTP/1.1\r\nHost: shop.local\r\nX-Request-Id: abc-123\r\n\
traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

fn only(f: &Feeder) -> &Exchange {
    assert_eq!(f.out.len(), 1, "exchanges: {:?}, losses {:?}", f.out, f.losses());
    &f.out[0]
}

#[test]
fn server_get_with_content_length() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, GET).feed(OUT, OK);
    let e = only(&f);
    assert_eq!(e.protocol, Protocol::Http1);
    assert_eq!(e.method, Method::Get);
    assert_eq!(e.path.as_deref(), Some("/api/items"));
    assert_eq!(e.authority.as_deref(), Some("shop.local"));
    assert_eq!(e.status_code, Some(200));
    assert_eq!(e.x_request_id.as_deref(), Some("abc-123"));
    assert_eq!(e.traceparent.as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    assert_eq!(e.stream_id, None);
    // Read exit of the request (1010 + 5), entry of the write (1020), its
    // exit (1025).
    assert_eq!(
        (e.request_start_ns, e.request_end_ns, e.response_start_ns, e.response_end_ns),
        (1015, 1015, 1020, 1025)
    );
    assert_eq!(e.duration_ns(), 10);
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn client_times_are_write_entry_to_read_exit() {
    let mut f = Feeder::new(Role::Client);
    f.feed(OUT, GET).feed(IN, OK);
    let e = only(&f);
    assert_eq!(
        (e.request_start_ns, e.request_end_ns, e.response_start_ns, e.response_end_ns),
        (1010, 1015, 1025, 1025)
    );
}

const STATUSES: [u16; 8] = [200, 201, 202, 206, 400, 404, 500, 503];

#[test]
fn keep_alive_many_exchanges() {
    let mut f = Feeder::new(Role::Server);
    for i in 0..50 {
        let req = format!("POST /p/{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc");
        let resp = format!("HTTP/1.1 {} X\r\nContent-Length: 2\r\n\r\nok", STATUSES[i % 8]);
        f.feed(IN, req.as_bytes()).feed(OUT, resp.as_bytes());
    }
    assert_eq!(f.out.len(), 50);
    for (i, e) in f.out.iter().enumerate() {
        assert_eq!(e.path.as_deref(), Some(format!("/p/{i}").as_str()));
        assert_eq!(e.status_code, Some(STATUSES[i % 8]));
        assert_eq!(e.method, Method::Post);
    }
    assert_eq!(f.losses.total(), 0, "{:?}", f.losses());
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, GET).feed(OUT, OK).out.clear();
    f.feed(IN, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n");
    f.feed(
        OUT,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 NF\r\nContent-Length: 1\r\n\r\nb\
HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    );
    let got: Vec<_> = f.out.iter().map(|e| (e.path.clone().unwrap(), e.status_code.unwrap())).collect();
    assert_eq!(got, vec![("/a".into(), 200), ("/b".into(), 404), ("/c".into(), 200)]);
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn pipelining_seen_mid_stream_pairs_nothing() {
    // Joined mid-stream: responses to requests sent before the ones seen
    // may come first; with pipelining, which is which cannot be told.
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    f.feed(OUT, OK).feed(OUT, OK);
    assert!(f.out.is_empty());
    assert_eq!(f.lost(LossReason::Http1UnpairedResponse), 2);
}

#[test]
fn chunked_response_across_chunks() {
    let mut f = Feeder::new(Role::Client);
    f.feed(OUT, b"GET / HTTP/1.1\r\n\r\n");
    f.feed(IN, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    f.feed(IN, b"lo\r\n1");
    f.feed(IN, b"0;ext=1\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n");
    assert!(f.out.is_empty());
    f.feed(IN, b"\r\n");
    assert_eq!(only(&f).status_code, Some(200));
    assert_eq!(f.out[0].response_end_ns, f.now + 5);
    f.feed(OUT, b"GET /2 HTTP/1.1\r\n\r\n").feed(IN, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(f.out.len(), 2);
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn body_beyond_the_capture_is_skipped_by_length() {
    let mut f = Feeder::new(Role::Server);
    let mut big = b"POST /upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    f.feed_prefix(IN, &big[..60_000], 2048);
    f.feed_prefix(IN, &big[60_000..], 2048);
    let mut resp = b"HTTP/1.1 201 Created\r\nContent-Length: 50000\r\n\r\n".to_vec();
    resp.extend(std::iter::repeat_n(b'y', 50_000));
    f.feed_prefix(OUT, &resp, 1024);
    assert_eq!(only(&f).status_code, Some(201));
    f.feed(IN, GET).feed(OUT, OK);
    assert_eq!(f.out.len(), 2);
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn chunk_size_line_lost_resyncs_at_next_status_line() {
    let mut f = Feeder::new(Role::Client);
    f.feed(OUT, b"GET /1 HTTP/1.1\r\n\r\n");
    // 3000 bytes of chunked body of which 100 captured: the next size line
    // is not visible.
    let mut body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n".to_vec();
    body.extend(format!("{:x}\r\n", 2000).as_bytes());
    body.extend(std::iter::repeat_n(b'z', 2000));
    body.extend(b"\r\n0\r\n\r\n");
    f.feed_prefix(IN, &body, 100);
    assert!(f.out.is_empty());
    // Fine: 2000 octets of data are skipped by count; the final chunk
    // was not captured though.
    assert_eq!(f.lost(LossReason::Http1FramingLost), 1, "{:?}", f.losses());
    f.feed(OUT, b"GET /2 HTTP/1.1\r\n\r\n").feed(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(only(&f).path.as_deref(), Some("/2"));
}

#[test]
fn head_204_304_have_no_body() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, b"HEAD /x HTTP/1.1\r\n\r\n").feed(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    f.feed(IN, b"GET /y HTTP/1.1\r\n\r\n").feed(OUT, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
    f.feed(IN, b"DELETE /z HTTP/1.1\r\n\r\n").feed(OUT, b"HTTP/1.1 204 No Content\r\n\r\n");
    let got: Vec<_> = f.out.iter().map(|e| (e.method, e.status_code.unwrap())).collect();
    assert_eq!(got, vec![(Method::Head, 200), (Method::Get, 304), (Method::Delete, 204)]);
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn continue_then_final() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    f.feed(OUT, b"HTTP/1.1 100 Continue\r\n\r\n");
    f.feed(IN, b"data");
    f.feed(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let e = only(&f);
    assert_eq!(e.status_code, Some(200));
    assert_eq!(e.request_end_ns, 1035);
    assert_eq!(e.response_start_ns, 1040);
}

#[test]
fn switching_protocols_ends_parsing() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    f.feed(OUT, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
    f.feed(IN, b"\x81\x85garbage").feed(IN, GET).feed(OUT, OK);
    assert_eq!(only(&f).status_code, Some(101));
    assert_eq!(f.losses.total(), 0);
}

#[test]
fn response_until_close() {
    let mut f = Feeder::new(Role::Client);
    f.feed(OUT, b"GET /old HTTP/1.0\r\n\r\n");
    f.feed(IN, b"HTTP/1.0 200 OK\r\n\r\nsome");
    f.feed(IN, b"thing");
    assert!(f.out.is_empty());
    f.close();
    let e = only(&f);
    assert_eq!(e.response_end_ns, f.now);
}

#[test]
fn connection_close_ends_parsing() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").feed(OUT, OK);
    f.feed(IN, GET).feed(OUT, OK);
    assert_eq!(f.out.len(), 1);
}

#[test]
fn mid_stream_start_waits_for_a_message_boundary() {
    let mut f = Feeder::new(Role::Server);
    // Joined in the middle of a response body, then its tail.
    f.feed(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123");
    f.feed(OUT, b"456789");
    assert!(f.out.is_empty());
    assert_eq!(f.lost(LossReason::Http1UnpairedResponse), 1);
    assert_eq!(f.lost(LossReason::Http1Unsynced), 1, "{:?}", f.losses());
    // A request body fragment: ignored.
    f.feed(IN, b"\"k\": 1}");
    assert_eq!(f.lost(LossReason::Http1Unsynced), 2);
    f.feed(IN, GET).feed(OUT, OK);
    assert_eq!(only(&f).path.as_deref(), Some("/api/items"));
}

#[test]
fn response_without_seen_request_and_unknown_framing_waits() {
    let mut f = Feeder::new(Role::Client);
    // Could answer a HEAD: its body length is unknowable.
    f.feed(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    f.feed(IN, b"hello");
    f.feed(OUT, GET).feed(IN, OK);
    assert_eq!(f.out.len(), 1);
    assert_eq!(f.lost(LossReason::Http1UnpairedResponse), 1);
    assert_eq!(f.lost(LossReason::Http1Unsynced), 1);
}

#[test]
fn headers_split_at_every_offset_give_the_same_exchange() {
    let reference = {
        let mut f = Feeder::new(Role::Server);
        f.feed(IN, GET).feed(OUT, OK);
        only(&f).clone()
    };
    let chunked_resp: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    for (req, resp) in [(GET, OK), (GET, chunked_resp)] {
        for i in 1..req.len() {
            for j in 1..resp.len() {
                let mut f = Feeder::new(Role::Server);
                // In sync after a first exchange.
                f.feed(IN, GET).feed(OUT, OK).out.clear();
                f.feed(IN, &req[..i]).feed(IN, &req[i..]).feed(OUT, &resp[..j]).feed(OUT, &resp[j..]);
                let e = only(&f);
                assert_eq!(
                    (e.method, &e.path, &e.authority, e.status_code, &e.x_request_id, &e.traceparent),
                    (
                        reference.method,
                        &reference.path,
                        &reference.authority,
                        reference.status_code,
                        &reference.x_request_id,
                        &reference.traceparent
                    ),
                    "split at {i}/{j}"
                );
                assert_eq!(f.losses.total(), 0, "split at {i}/{j}: {:?}", f.losses());
            }
        }
    }
}

#[test]
fn truncated_head_is_counted_and_resyncs() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, GET).feed(OUT, OK).out.clear();
    f.feed_prefix(IN, GET, 20);
    assert_eq!(f.lost(LossReason::Http1Truncated), 1);
    f.feed(OUT, OK);
    assert_eq!(f.lost(LossReason::Http1UnpairedResponse), 1);
    f.feed(IN, GET).feed(OUT, OK);
    assert_eq!(f.out.len(), 1);
}

#[test]
fn oversized_head_is_counted() {
    let mut f = Feeder::with_limits(Role::Server, Limits { max_header_bytes: 256, ..Limits::default() });
    let mut req = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        req.extend(format!("X-H{i}: vvvvvvvvvvvvvvvv\r\n").as_bytes());
    }
    req.extend(b"\r\n");
    f.feed(IN, &req[..100]).feed(IN, &req[100..]);
    assert_eq!(f.lost(LossReason::Http1HeaderTooLarge), 1);
    assert!(f.conn.memory_bytes() < 4096);
}

#[test]
fn malformed_is_counted() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, GET);
    f.feed(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello");
    assert_eq!(f.lost(LossReason::Http1Malformed), 1);
    assert!(f.out.is_empty());
}

#[test]
fn after_a_lost_response_the_last_complete_request_is_paired() {
    let mut f = Feeder::new(Role::Client);
    f.feed(OUT, b"GET /1 HTTP/1.1\r\n\r\n");
    // Its response's chunked framing is lost.
    f.feed_prefix(IN, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", 50);
    assert_eq!(f.lost(LossReason::Http1FramingLost), 1);
    // The client went on (its response finished in the lost part).
    f.feed(OUT, b"GET /2 HTTP/1.1\r\n\r\n");
    f.feed(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(only(&f).path.as_deref(), Some("/2"));
}

#[test]
fn request_lost_in_a_gap_never_shifts_pairing() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, b"GET /1 HTTP/1.1\r\n\r\n").feed(OUT, OK);
    // Request /2 in a call whose head was not captured.
    f.feed_prefix(IN, b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 10);
    f.feed(OUT, b"HTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n");
    f.feed(IN, b"GET /3 HTTP/1.1\r\n\r\n").feed(OUT, b"HTTP/1.1 202 A\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = f.out.iter().map(|e| (e.path.clone().unwrap(), e.status_code.unwrap())).collect();
    assert_eq!(got, vec![("/1".into(), 200), ("/3".into(), 202)]);
    assert_eq!(f.lost(LossReason::Http1UnpairedResponse), 1);
}

#[test]
fn pipelining_connection_pairs_nothing_after_a_loss() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, GET).feed(OUT, OK).out.clear();
    f.feed(IN, GET).feed(IN, GET).feed(OUT, OK).feed(OUT, OK);
    assert_eq!(f.out.len(), 2);
    f.feed(IN, GET);
    f.conn.lost_data(OUT, &mut f.losses);
    f.feed(OUT, OK);
    f.feed(IN, GET).feed(OUT, OK);
    assert_eq!(f.out.len(), 2);
    assert_eq!(f.lost(LossReason::Http1UnpairedResponse), 2);
}

/// Envoy's pooled upstream connection when the kernel's capture ring
/// overflows: a response is lost, the next request looks pipelined until
/// the gap shows at the next response. That one is ambiguous; the ones
/// after it pair again (they did not, for the connection's life, before).
#[test]
fn a_lost_response_on_a_connection_that_never_pipelines_pairs_again() {
    let mut f = Feeder::new(Role::Server);
    f.feed(IN, b"GET /0 HTTP/1.1\r\n\r\n").feed(OUT, OK);
    // /1's response lost, then /2 and /3 sent after it (their responses lost too).
    f.feed(IN, b"GET /1 HTTP/1.1\r\n\r\n").feed(IN, b"GET /2 HTTP/1.1\r\n\r\n").feed(IN, b"GET /3 HTTP/1.1\r\n\r\n");
    f.conn.lost_data(OUT, &mut f.losses);
    f.feed(OUT, OK);
    assert_eq!(f.lost(LossReason::Http1UnpairedResponse), 1, "{:?}", f.losses());
    for i in 4..7 {
        f.feed(IN, format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes()).feed(OUT, OK);
    }
    let got: Vec<_> = f.out.iter().map(|e| e.path.clone().unwrap()).collect();
    assert_eq!(got, ["/0", "/4", "/5", "/6"]);
    assert_eq!(f.lost(LossReason::Http1UnansweredRequest), 3, "{:?}", f.losses());
}

#[test]
fn other_methods_and_statuses() {
    let mut f = Feeder::new(Role::Server);
    // Joined mid-stream, only a standard method resyncs: in sync, any.
    f.feed(IN, b"PROPFIND /dav HTTP/1.1\r\n\r\n");
    assert_eq!(f.lost(LossReason::UnknownProtocol), 1);
    f.feed(IN, GET).feed(OUT, OK).out.clear();
    f.feed(IN, b"PROPFIND /dav HTTP/1.1\r\n\r\n").feed(OUT, b"HTTP/1.1 207 Multi\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(only(&f).method.as_str(), "_OTHER");
}

#[test]
fn long_paths_are_cut() {
    let mut f = Feeder::new(Role::Server);
    let req = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1000));
    f.feed(IN, req.as_bytes()).feed(OUT, OK);
    let e = only(&f);
    assert_eq!(e.path.as_ref().unwrap().len(), 256);
    assert!(e.path_truncated);
}

#[test]
fn pipeline_overflow_is_counted() {
    let mut f = Feeder::with_limits(Role::Server, Limits { max_pipelined: 4, ..Limits::default() });
    f.feed(IN, GET).feed(OUT, OK);
    for _ in 0..6 {
        f.feed(IN, GET);
    }
    assert_eq!(f.lost(LossReason::Http1PipelineOverflow), 2);
}
