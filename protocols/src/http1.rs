//! HTTP/1.x: requests and responses of one connection, from the chunks of
//! its reads and writes.
//!
//! Each direction is parsed on its own: a message head (start line and
//! headers, buffered across chunks up to `max_header_bytes`, parsed with
//! `httparse`), then its body framed by Content-Length, chunked
//! Transfer-Encoding, or the connection's close (responses only). Body
//! bytes beyond a call's captured prefix are skipped by count, so a large
//! body never costs sync; what cannot be skipped (a chunk-size line, a
//! message head or the start of the next message in the uncaptured part)
//! costs it. A direction out of sync ignores chunks (`http1_unsynced`)
//! until one *starts* with a complete request line (status line for
//! responses); a connection joined mid-stream starts out of sync.
//!
//! Responses are paired with requests first in, first out (pipelining
//! included). 1xx interim responses (100 Continue) are skipped; 101
//! Switching Protocols and a 2xx answer to CONNECT end the parsing of the
//! connection; responses to HEAD, and 204 and 304, have no body; a response
//! framed by neither length nor chunking ends at the close;
//! `Connection: close` (or HTTP/1.0 without keep-alive) ends the parsing
//! after the response.
//!
//! # Never the wrong request
//!
//! After any loss of sync the first-in-first-out order cannot be trusted
//! (requests or responses may have been lost in the gap). Until a response
//! is paired again, a response is paired with the *last* waiting request
//! that was complete when the response started, and the older ones are
//! dropped (`http1_unanswered_request`): exact for clients that wait for
//! each response before the next request, which is what browsers, curl,
//! Envoy and nginx do. A request sent while an earlier one was unanswered
//! is ambiguous after a loss (pipelining, or the earlier one's response was
//! lost: the gap shows only at the next response), so a response that would
//! pair with it is not paired (`http1_unpaired_response`); the client's next
//! request, sent after that response, pairs again. A connection on which
//! pipelining was confirmed (such a request answered in order with nothing
//! lost) pairs nothing after a loss. A response whose request is unknown, and
//! whose body could be absent for a HEAD request we did not see, cannot be
//! framed: its direction waits for the next status line.

use std::collections::VecDeque;

use crate::{Chunk, Direction, Exchange, Limits, LossReason, Losses, Method, Protocol, Role, bounded, target_path};

/// Headers parsed per message head (more: `http1_malformed`).
const MAX_HEADERS: usize = 128;
/// A chunk-size line's extension or a trailer line longer than this is
/// malformed.
const MAX_LINE: usize = 4096;

/// Does `data` start with a complete request line (`Some(true)`), status
/// line (`Some(false)`) or either (`None`)? Where sync was lost, a chunk
/// may start anywhere: a request line must have a standard method (no
/// suffix of one is another, so "T /x HTTP/1.1" cut from "GET /x ..." is
/// refused) and a status line must start with "HTTP/1." (nothing cut from
/// one does).
pub fn starts_message(data: &[u8], request: Option<bool>) -> bool {
    let window = &data[..data.len().min(8192)];
    if !window.contains(&b'\n') {
        return false;
    }
    let as_request = || {
        let mut headers = uninit_headers();
        let mut req = httparse::Request::new(&mut []);
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, window, &mut headers).is_ok()
            && req.method.is_some_and(|m| Method::parse(m.as_bytes()) != Method::Other)
    };
    let as_response = || {
        let mut headers = uninit_headers();
        let mut resp = httparse::Response::new(&mut []);
        window.starts_with(b"HTTP/1.")
            && httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut resp, window, &mut headers)
                .is_ok()
    };
    match request {
        Some(true) => as_request(),
        Some(false) => as_response(),
        None => as_request() || as_response(),
    }
}

/// What a message head tells.
/// A parsed head, borrowing the bytes it was parsed from (no allocation
/// per message: each request is parsed up to six times on its way through
/// a sidecar).
struct Head<'a> {
    /// Octets of the head.
    len: usize,
    method: Method,
    target: &'a [u8],
    status: u16,
    /// HTTP/1.0.
    http10: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// Transfer-Encoding present but not ending in chunked.
    other_coding: bool,
    close: bool,
    keep_alive: bool,
    host: Option<&'a [u8]>,
    x_request_id: Option<&'a [u8]>,
    traceparent: Option<&'a [u8]>,
}

enum Parsed<'a> {
    Complete(Head<'a>),
    Partial,
    Invalid,
}

/// Room for a head's fields, left uninitialised: the parser writes what it
/// finds (initialising 128 fields for each head was a tenth of the
/// collector's user-space time).
fn uninit_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

fn parse_head(request: bool, buf: &[u8]) -> Parsed<'_> {
    let mut headers = uninit_headers();
    let config = httparse::ParserConfig::default();
    let mut head = Head {
        len: 0,
        method: Method::Other,
        target: b"",
        status: 0,
        http10: false,
        content_length: None,
        chunked: false,
        other_coding: false,
        close: false,
        keep_alive: false,
        host: None,
        x_request_id: None,
        traceparent: None,
    };
    let fields: &[httparse::Header<'_>] = if request {
        let mut req = httparse::Request::new(&mut []);
        match config.parse_request_with_uninit_headers(&mut req, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => {
                head.len = n;
                head.method = Method::parse(req.method.unwrap_or("").as_bytes());
                head.target = req.path.unwrap_or("").as_bytes();
                head.http10 = req.version == Some(0);
            }
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Invalid,
        }
        return finish_head(head, req.headers);
    } else {
        let mut resp = httparse::Response::new(&mut []);
        match config.parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => {
                head.len = n;
                head.status = resp.code.unwrap_or(0);
                head.http10 = resp.version == Some(0);
            }
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Invalid,
        }
        resp.headers
    };
    finish_head(head, fields)
}

fn finish_head<'a>(mut head: Head<'a>, fields: &[httparse::Header<'a>]) -> Parsed<'a> {
    for h in fields {
        let name = h.name.as_bytes();
        let value = h.value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_decimal(value) else { return Parsed::Invalid };
            if head.content_length.is_some_and(|m| m != n) {
                return Parsed::Invalid;
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
            if last.eq_ignore_ascii_case(b"chunked") {
                head.chunked = true;
                head.other_coding = false;
            } else {
                head.chunked = false;
                head.other_coding = true;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                head.close |= token.eq_ignore_ascii_case(b"close");
                head.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            head.host.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            head.x_request_id.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"traceparent") {
            head.traceparent.get_or_insert(value);
        }
    }
    Parsed::Complete(head)
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The chunked body decoder's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ch {
    /// In the chunk-size's hex digits (`digits` so far).
    Size {
        digits: u8,
        value: u64,
    },
    /// In a chunk extension (`len` octets so far).
    Ext {
        value: u64,
        len: usize,
    },
    /// After the size line's CR.
    SizeLf {
        value: u64,
    },
    /// In chunk data: octets left.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    Trailer(usize),
    LastLf,
}

enum Body {
    Length(u64),
    Chunked(Ch),
    UntilClose,
}

enum ChunkedStep {
    /// Octets consumed; the body is complete after them.
    Done(usize),
    /// All of the input consumed, body incomplete.
    More,
    Invalid,
}

impl Ch {
    fn start() -> Ch {
        Ch::Size { digits: 0, value: 0 }
    }

    fn feed(&mut self, data: &[u8]) -> ChunkedStep {
        let mut i = 0;
        while i < data.len() {
            if let Ch::Data(rem) = *self {
                let take = rem.min((data.len() - i) as u64);
                i += take as usize;
                *self = if rem == take { Ch::DataCr } else { Ch::Data(rem - take) };
                continue;
            }
            let b = data[i];
            i += 1;
            *self = match *self {
                Ch::Size { digits, value } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return ChunkedStep::Invalid;
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        Ch::Size { digits: digits + 1, value: value * 16 + u64::from(d) }
                    }
                    _ if digits == 0 => return ChunkedStep::Invalid,
                    b';' | b' ' | b'\t' => Ch::Ext { value, len: 0 },
                    b'\r' => Ch::SizeLf { value },
                    b'\n' => Ch::after_size(value),
                    _ => return ChunkedStep::Invalid,
                },
                Ch::Ext { value, len } => match b {
                    b'\r' => Ch::SizeLf { value },
                    b'\n' => Ch::after_size(value),
                    _ if len >= MAX_LINE => return ChunkedStep::Invalid,
                    _ => Ch::Ext { value, len: len + 1 },
                },
                Ch::SizeLf { value } => match b {
                    b'\n' => Ch::after_size(value),
                    _ => return ChunkedStep::Invalid,
                },
                Ch::Data(_) => unreachable!("handled above"),
                Ch::DataCr => match b {
                    b'\r' => Ch::DataLf,
                    b'\n' => Ch::start(),
                    _ => return ChunkedStep::Invalid,
                },
                Ch::DataLf => match b {
                    b'\n' => Ch::start(),
                    _ => return ChunkedStep::Invalid,
                },
                Ch::TrailerStart => match b {
                    b'\r' => Ch::LastLf,
                    b'\n' => return ChunkedStep::Done(i),
                    _ => Ch::Trailer(1),
                },
                Ch::Trailer(len) => match b {
                    b'\n' => Ch::TrailerStart,
                    _ if len >= MAX_LINE => return ChunkedStep::Invalid,
                    _ => Ch::Trailer(len + 1),
                },
                Ch::LastLf => match b {
                    b'\n' => return ChunkedStep::Done(i),
                    _ => return ChunkedStep::Invalid,
                },
            };
        }
        ChunkedStep::More
    }

    fn after_size(value: u64) -> Ch {
        if value == 0 { Ch::TrailerStart } else { Ch::Data(value) }
    }

    /// Skips `n` uncaptured octets: only inside chunk data (else the
    /// framing is lost: false). Returns whether it could.
    fn skip(&mut self, n: u64) -> bool {
        match *self {
            Ch::Data(rem) if n < rem => {
                *self = Ch::Data(rem - n);
                true
            }
            Ch::Data(rem) if n == rem => {
                *self = Ch::DataCr;
                true
            }
            _ => false,
        }
    }
}

enum SideState {
    /// Waiting for a chunk that starts with a start line.
    Unsynced,
    /// At a message boundary.
    Idle,
    /// In a message head (buffered in `head`).
    Head,
    Body(Body),
}

struct Side {
    state: SideState,
    head: Vec<u8>,
    /// When the message in progress started.
    start_ns: u64,
    /// Request side: the sequence number of the request in progress.
    seq: u64,
}

/// A request waiting for its response.
struct Pending {
    seq: u64,
    method: Method,
    path: Option<(String, bool)>,
    authority: Option<String>,
    x_request_id: Option<String>,
    traceparent: Option<String>,
    start_ns: u64,
    end_ns: Option<u64>,
    close: bool,
    /// `resp_epoch` when it was queued.
    epoch: u64,
    /// Sent while an earlier request was unanswered as far as we saw: an
    /// earlier one of the same epoch was waiting, or a response was being
    /// read. Pipelining, or a response we did not see (the kernel lost
    /// it, which we learn only at the next one).
    behind: bool,
}

impl Pending {
    fn heap_bytes(&self) -> usize {
        self.path.as_ref().map_or(0, |p| p.0.capacity())
            + [&self.authority, &self.x_request_id, &self.traceparent]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::capacity))
                .sum::<usize>()
    }
}

/// The response being read.
struct Current {
    request: Option<Pending>,
    status: u16,
    start_ns: u64,
    /// The connection ends after this response.
    close: bool,
}

/// The HTTP/1 state of one connection.
pub struct Http1 {
    role: Role,
    limits: Limits,
    req: Side,
    resp: Side,
    queue: VecDeque<Pending>,
    current: Option<Current>,
    /// The first-in-first-out order cannot be trusted (see the module doc).
    resync: bool,
    /// Pipelining confirmed: a request sent behind an unanswered one was
    /// answered in order with no loss in between.
    pipelining: bool,
    /// Upgraded, tunnelled or closed: nothing more is parsed.
    done: bool,
    next_seq: u64,
    /// Counts what could have been a response: response heads and
    /// response chunks not parsed. Two waiting requests queued in the same
    /// epoch prove pipelining.
    resp_epoch: u64,
    /// Waiting requests dropped by a loss, to count.
    lost_requests: u64,
}

impl Http1 {
    /// A connection joined at an unknown point: both directions wait for a
    /// message start.
    pub fn new(role: Role, limits: Limits) -> Http1 {
        let side = || Side { state: SideState::Unsynced, head: Vec::new(), start_ns: 0, seq: 0 };
        Http1 {
            role,
            limits,
            req: side(),
            resp: side(),
            queue: VecDeque::new(),
            current: None,
            resync: true,
            pipelining: false,
            done: false,
            next_seq: 1,
            resp_epoch: 0,
            lost_requests: 0,
        }
    }

    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Http1>()
            + self.req.head.capacity()
            + self.resp.head.capacity()
            + self.queue.capacity() * std::mem::size_of::<Pending>()
            + self.queue.iter().map(Pending::heap_bytes).sum::<usize>()
            + self.current.as_ref().and_then(|c| c.request.as_ref()).map_or(0, |p| p.heap_bytes())
    }

    /// Requests waiting for their responses.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        self.feed_inner(chunk, out, losses);
        losses.add_n(LossReason::Http1UnansweredRequest, std::mem::take(&mut self.lost_requests));
    }

    fn feed_inner(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        if self.done {
            return;
        }
        let is_req = chunk.direction == self.role.request_direction();
        let data = chunk.captured;
        if matches!(self.side(is_req).state, SideState::Unsynced) {
            if starts_message(data, Some(is_req)) {
                self.side(is_req).state = SideState::Idle;
            } else {
                losses.add(LossReason::Http1Unsynced);
                if !is_req {
                    self.resp_epoch += 1;
                }
                return;
            }
        }
        let cap = self.limits.max_header_bytes;
        let mut pos = 0;
        while pos < data.len() && !self.done {
            let side = self.side(is_req);
            match &mut side.state {
                SideState::Unsynced => break,
                SideState::Idle => {
                    side.state = SideState::Head;
                    side.head.clear();
                    side.start_ns = chunk.first_byte_ns();
                }
                SideState::Head => {
                    let before = side.head.len();
                    let take = (cap - before.min(cap)).min(data.len() - pos);
                    // A head that starts in this chunk is parsed where it
                    // lies; only one split across chunks is gathered (out
                    // of `side` while the head borrows it).
                    let mut gathered = std::mem::take(&mut side.head);
                    if before > 0 {
                        gathered.extend_from_slice(&data[pos..pos + take]);
                    }
                    let parsed = if before == 0 {
                        parse_head(is_req, &data[pos..pos + take])
                    } else {
                        parse_head(is_req, &gathered)
                    };
                    match parsed {
                        Parsed::Complete(head) => {
                            pos += head.len - before;
                            self.on_head(is_req, &head, chunk, out, losses);
                            gathered.clear();
                            if gathered.capacity() > 4096 {
                                gathered.shrink_to(4096);
                            }
                            self.side(is_req).head = gathered;
                        }
                        Parsed::Partial => {
                            if before == 0 {
                                gathered.extend_from_slice(&data[pos..pos + take]);
                            }
                            let side = self.side(is_req);
                            side.head = gathered;
                            pos += take;
                            if side.head.len() >= cap {
                                losses.add(LossReason::Http1HeaderTooLarge);
                                self.unsync(is_req);
                            }
                        }
                        Parsed::Invalid => {
                            losses.add(LossReason::Http1Malformed);
                            self.unsync(is_req);
                        }
                    }
                }
                SideState::Body(Body::Length(rem)) => {
                    let take = (*rem).min((data.len() - pos) as u64);
                    *rem -= take;
                    pos += take as usize;
                    if *rem == 0 {
                        self.on_end(is_req, chunk.end_ns, out);
                    }
                }
                SideState::Body(Body::UntilClose) => pos = data.len(),
                SideState::Body(Body::Chunked(ch)) => match ch.feed(&data[pos..]) {
                    ChunkedStep::Done(n) => {
                        pos += n;
                        self.on_end(is_req, chunk.end_ns, out);
                    }
                    ChunkedStep::More => pos = data.len(),
                    ChunkedStep::Invalid => {
                        losses.add(LossReason::Http1Malformed);
                        self.unsync(is_req);
                    }
                },
            }
        }
        let uncaptured = chunk.uncaptured() as u64;
        if uncaptured == 0 || self.done {
            return;
        }
        let side = self.side(is_req);
        match &mut side.state {
            SideState::Unsynced | SideState::Body(Body::UntilClose) => {}
            SideState::Idle | SideState::Head => {
                losses.add(LossReason::Http1Truncated);
                self.unsync(is_req);
            }
            SideState::Body(Body::Length(rem)) => {
                let rem = *rem;
                if uncaptured <= rem {
                    if let SideState::Body(Body::Length(r)) = &mut side.state {
                        *r -= uncaptured;
                    }
                    if uncaptured == rem {
                        self.on_end(is_req, chunk.end_ns, out);
                    }
                } else {
                    self.on_end(is_req, chunk.end_ns, out);
                    if !self.done {
                        // The next message started where we cannot see.
                        losses.add(LossReason::Http1Truncated);
                        self.unsync(is_req);
                    }
                }
            }
            SideState::Body(Body::Chunked(ch)) => {
                if !ch.skip(uncaptured) {
                    losses.add(LossReason::Http1FramingLost);
                    self.unsync(is_req);
                }
            }
        }
    }

    pub fn close(&mut self, at_ns: u64, out: &mut Vec<Exchange>, _losses: &mut Losses) {
        if !self.done && matches!(self.resp.state, SideState::Body(Body::UntilClose)) {
            self.on_end(false, at_ns, out);
        }
        self.done = true;
        self.queue.clear();
        self.current = None;
    }

    pub fn lost_data(&mut self, direction: Direction, losses: &mut Losses) {
        let is_req = direction == self.role.request_direction();
        self.unsync(is_req);
        losses.add_n(LossReason::Http1UnansweredRequest, std::mem::take(&mut self.lost_requests));
    }

    fn side(&mut self, is_req: bool) -> &mut Side {
        if is_req { &mut self.req } else { &mut self.resp }
    }

    /// Sync of one direction is lost: what it was in the middle of is gone.
    fn unsync(&mut self, is_req: bool) {
        let side = self.side(is_req);
        let was_in_body = matches!(side.state, SideState::Body(_));
        side.state = SideState::Unsynced;
        side.head = Vec::new();
        let seq = side.seq;
        if is_req {
            if was_in_body {
                // The request in progress: its end is unknown.
                self.queue.retain(|p| p.seq != seq);
                if let Some(c) = &mut self.current
                    && c.request.as_ref().is_some_and(|p| p.seq == seq)
                {
                    c.request = None;
                }
            }
            // A request may have been lost here; it was sent after the
            // responses to every waiting one (without pipelining), which
            // could otherwise be taken for its own.
            self.lost_requests += self.queue.len() as u64;
            self.queue.clear();
        } else {
            self.current = None;
            self.resp_epoch += 1;
        }
        self.resync = true;
    }

    fn on_head(&mut self, is_req: bool, head: &Head, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        if is_req {
            self.on_request_head(head, chunk.end_ns, losses);
        } else {
            self.on_response_head(head, chunk, out, losses);
        }
    }

    fn on_request_head(&mut self, head: &Head, head_end_ns: u64, losses: &mut Losses) {
        let body = if head.chunked {
            Some(Body::Chunked(Ch::start()))
        } else if head.other_coding {
            // A request must be chunked if it has a transfer coding.
            losses.add(LossReason::Http1Malformed);
            self.unsync(true);
            return;
        } else {
            match head.content_length {
                Some(n) if n > 0 => Some(Body::Length(n)),
                _ => None,
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        // Not yet proof of pipelining: a lost response looks the same
        // until the gap shows at the next one (see `pair`).
        let behind =
            self.queue.back().is_some_and(|p| p.epoch == self.resp_epoch) || (!self.resync && self.current.is_some());
        let max = self.limits.max_value;
        let pending = Pending {
            seq,
            method: head.method,
            path: target_path(head.target, self.limits.max_path),
            authority: head.host.and_then(|v| bounded(v, max)),
            x_request_id: head.x_request_id.and_then(|v| bounded(v, max)),
            traceparent: head.traceparent.and_then(|v| bounded(v, max)),
            start_ns: self.req.start_ns,
            end_ns: None,
            close: head.close || (head.http10 && !head.keep_alive),
            epoch: self.resp_epoch,
            behind,
        };
        if self.queue.len() >= self.limits.max_pipelined.max(1) {
            losses.add(LossReason::Http1PipelineOverflow);
            self.queue.pop_front();
            self.resync = true;
        }
        self.queue.push_back(pending);
        self.req.seq = seq;
        match body {
            Some(b) => self.req.state = SideState::Body(b),
            None => {
                self.on_end(true, head_end_ns, &mut Vec::new());
            }
        }
    }

    /// The request a response starting at `t` answers, if it can be told.
    fn pair(&mut self, t: u64, losses: &mut Losses) -> Option<Pending> {
        if !self.resync {
            let first = self.queue.front()?;
            if first.start_ns > t {
                // A response cannot start before its request.
                return None;
            }
            let request = self.queue.pop_front()?;
            // Answered in order after the one it was sent behind, with
            // nothing lost: the client pipelines.
            self.pipelining |= request.behind;
            return Some(request);
        }
        if self.pipelining {
            return None;
        }
        let i = self.queue.iter().rposition(|p| p.end_ns.is_some_and(|e| e <= t))?;
        if self.queue[i].behind {
            // Sent behind another waiting request: this response may answer
            // either. (A client that waits for each response, whose answer
            // was lost, pairs again from its next request, which is not
            // behind any.)
            return None;
        }
        for _ in 0..i {
            self.queue.pop_front();
            losses.add(LossReason::Http1UnansweredRequest);
        }
        self.resync = matches!(self.req.state, SideState::Unsynced);
        self.queue.pop_front()
    }

    fn on_response_head(&mut self, head: &Head, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        let status = head.status;
        self.resp_epoch += 1;
        if (100..200).contains(&status) && status != 101 {
            // Interim: the final response follows.
            self.resp.state = SideState::Idle;
            return;
        }
        let start = self.resp.start_ns;
        let request = self.pair(start, losses);
        let Some(request) = request else {
            losses.add(LossReason::Http1UnpairedResponse);
            if status == 101 {
                self.done = true;
            } else if status == 204 || status == 304 {
                self.resp.state = SideState::Idle;
            } else if head.content_length.is_none() && !head.chunked && !head.other_coding {
                self.resp.state = SideState::Body(Body::UntilClose);
            } else {
                // Framed by a length a HEAD request would void: unknown end.
                self.unsync(false);
            }
            return;
        };
        let no_body = request.method == Method::Head || status == 204 || status == 304 || status == 101;
        let tunnel = status == 101 || (request.method == Method::Connect && (200..300).contains(&status));
        let close = request.close || head.close || (head.http10 && !head.keep_alive) || tunnel;
        self.current = Some(Current { request: Some(request), status, start_ns: start, close });
        let body = if no_body || tunnel {
            None
        } else if head.chunked {
            Some(Body::Chunked(Ch::start()))
        } else if head.other_coding {
            Some(Body::UntilClose)
        } else {
            match head.content_length {
                Some(0) => None,
                Some(n) => Some(Body::Length(n)),
                None => Some(Body::UntilClose),
            }
        };
        match body {
            Some(b) => self.resp.state = SideState::Body(b),
            None => self.on_end(false, chunk.end_ns, out),
        }
    }

    fn on_end(&mut self, is_req: bool, at_ns: u64, out: &mut Vec<Exchange>) {
        if is_req {
            self.req.state = SideState::Idle;
            let seq = self.req.seq;
            for p in self.queue.iter_mut().chain(self.current.iter_mut().filter_map(|c| c.request.as_mut())) {
                if p.seq == seq {
                    p.end_ns = Some(at_ns);
                }
            }
            return;
        }
        self.resp.state = SideState::Idle;
        let Some(current) = self.current.take() else { return };
        if current.close {
            self.done = true;
        }
        let Some(req) = current.request else { return };
        let (path, path_truncated) = match req.path {
            Some((p, t)) => (Some(p), t),
            None => (None, false),
        };
        out.push(Exchange {
            protocol: Protocol::Http1,
            method: req.method,
            path,
            path_truncated,
            authority: req.authority,
            status_code: Some(current.status),
            grpc: None,
            x_request_id: req.x_request_id,
            traceparent: req.traceparent,
            stream_id: None,
            reset: None,
            headers_partial: false,
            request_start_ns: req.start_ns,
            request_end_ns: req.end_ns.unwrap_or(current.start_ns),
            response_start_ns: current.start_ns,
            response_end_ns: at_ns,
        });
    }
}
