//! HTTP/1.x, HTTP/2 (with HPACK) and gRPC parsers for byte streams captured
//! at the system call boundary: no I/O, no async, no eBPF.
//!
//! The http collector's kernel side hands user space one [`Chunk`] per
//! socket read or write of a watched process: the direction, the call's
//! entry and exit times, the number of bytes it moved and only a bounded
//! prefix of them. A [`Connection`] per TCP connection detects the protocol
//! from the chunks it sees, follows the message boundaries, and returns the
//! completed request/response [`Exchange`]s with their times. What it cannot
//! decode it counts in [`Losses`] by [`LossReason`] (exported as
//! `pmoas_ebpf_events_lost_total{reason}`) and never guesses: an exchange is
//! only returned when every label it carries (method, status, gRPC service,
//! method and code) was decoded from the bytes.
//!
//! Connections older than the exporter are the norm (Envoy keeps upstream
//! connections for hours). Their role is told by [`role_hint`] (on HTTP/2,
//! from a header block's pseudo-headers). HTTP/1 is measured from the next
//! chunk that starts with a request or status line ([`http1`]); HTTP/2 from
//! the next chunk that is a whole sequence of plausible frames, with header
//! fields decoded as far as the HPACK state allows ([`http2`], [`hpack`]).
//!
//! # Timing
//!
//! A read obtains its bytes when it returns, a write hands them over when it
//! is entered. So a message *starts* at the exit of the read, or the entry
//! of the write, that carried its first byte, and *ends* at the exit of the
//! call that carried its last byte. For a server, [`Exchange::duration_ns`]
//! is request read -> response written; for a client, request written ->
//! response read. A response delimited by the connection's close ends at
//! the close.
//!
//! # Memory
//!
//! Every buffer is bounded by [`Limits`]: header bytes buffered per
//! direction, the HPACK table, open streams, queued pipelined requests, the
//! length of kept strings. [`Connection::memory_bytes`] reports what a
//! connection holds; [`Limits::max_connection_bytes`] bounds it.

pub mod grpc;
pub mod hpack;
pub mod http1;
pub mod http2;

pub use grpc::{GrpcCall, GrpcCode, GrpcCodeSource};

/// Whether the observed process accepted the connection or opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// It accepted the connection: it reads requests, writes responses.
    Server,
    /// It connected: it writes requests, reads responses.
    Client,
}

/// Which way the bytes of a chunk went, seen from the observed process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read them.
    Ingress,
    /// The process wrote them.
    Egress,
}

impl Role {
    /// The direction requests travel in, for this role.
    pub fn request_direction(self) -> Direction {
        match self {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        }
    }
}

/// One read or write of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub direction: Direction,
    /// The first bytes the call moved (any length, possibly all of them).
    pub captured: &'a [u8],
    /// How many bytes the call moved (`>= captured.len()`; a smaller value
    /// is taken as `captured.len()`).
    pub total_len: usize,
    /// Entry and exit of the call (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Chunk<'_> {
    /// Bytes moved beyond the captured prefix.
    pub fn uncaptured(&self) -> usize {
        self.total_len.saturating_sub(self.captured.len())
    }

    /// When the first byte of this chunk was handed over: the exit of a
    /// read, the entry of a write.
    pub fn first_byte_ns(&self) -> u64 {
        match self.direction {
            Direction::Ingress => self.end_ns,
            Direction::Egress => self.start_ns,
        }
    }
}

/// Bounds on what one connection may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Header bytes buffered per direction while a message head (HTTP/1)
    /// or a header block (HTTP/2, HEADERS + CONTINUATION) is incomplete.
    pub max_header_bytes: usize,
    /// HPACK dynamic table per direction, in HPACK's accounting: the table
    /// follows the encoder's size (SETTINGS_HEADER_TABLE_SIZE, signalled by
    /// dynamic table size updates) up to this; beyond it entries are
    /// treated as unknown.
    pub max_hpack_table: usize,
    /// Open HTTP/2 streams per connection.
    pub max_streams: usize,
    /// HTTP/1 requests waiting for their responses (pipelining).
    pub max_pipelined: usize,
    /// Kept length of the path; longer ones are cut (`path_truncated`).
    pub max_path: usize,
    /// Kept length of other strings (authority, x-request-id, traceparent,
    /// gRPC service and method); longer values are cut.
    pub max_value: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header_bytes: 16 * 1024,
            max_hpack_table: 64 * 1024,
            max_streams: 128,
            max_pipelined: 32,
            max_path: 256,
            max_value: 256,
        }
    }
}

impl Limits {
    /// An upper bound of [`Connection::memory_bytes`] under these limits.
    pub fn max_connection_bytes(&self) -> usize {
        // Growing buffers may hold up to twice what they need.
        let strings = self.max_path + 4 * self.max_value + 2 * 64;
        let exchange = std::mem::size_of::<Exchange>() + strings;
        let head = 2 * self.max_header_bytes + 64;
        // HTTP/1: two head buffers and the queued requests.
        let h1 = 2 * head + (self.max_pipelined + 2) * (exchange + 64) + 256;
        // HTTP/2, per direction: a frame payload and a header block buffer,
        // an HPACK table (entries cost at least 32 octets of accounting for
        // at most 96 of bookkeeping each, the deque doubling) and its two
        // Huffman scratch buffers (8/5 of the block at most, doubling);
        // plus the streams (the map doubling).
        let table = self.max_hpack_table.max(hpack::DEFAULT_TABLE_SIZE) * 3;
        let per_dir = 2 * head + 512 + table + 8 * self.max_header_bytes;
        let h2 = 2 * per_dir + 2 * (self.max_streams + 1) * (exchange + 256) + 1024;
        h1.max(h2) + 1024
    }
}

/// What an exchange was carried by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    /// gRPC over HTTP/2 (`content-type: application/grpc*`).
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The request method: the standard ones, or `_OTHER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    /// From the method token (case-sensitive, as HTTP says).
    pub fn parse(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// The `method` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => "_OTHER",
        }
    }
}

/// One completed request and its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub protocol: Protocol,
    pub method: Method,
    /// The path of the request target, without query or fragment, cut to
    /// [`Limits::max_path`] bytes (at a character boundary). None when not
    /// decoded (HTTP/2 with an unknown HPACK entry) or not valid UTF-8.
    pub path: Option<String>,
    pub path_truncated: bool,
    /// `:authority`, or the Host header.
    pub authority: Option<String>,
    /// The final status (1xx interim responses are skipped). None only for
    /// an HTTP/2 stream reset before its response headers (see `reset`).
    pub status_code: Option<u16>,
    /// For gRPC: service, method and code.
    pub grpc: Option<GrpcCall>,
    /// The `x-request-id` header of the request.
    pub x_request_id: Option<String>,
    /// The W3C `traceparent` header of the request.
    pub traceparent: Option<String>,
    /// HTTP/2 stream id.
    pub stream_id: Option<u32>,
    /// HTTP/2: the stream ended by RST_STREAM with this error code.
    pub reset: Option<u32>,
    /// Some header field of the exchange could not be decoded (HTTP/2
    /// joined mid-stream): the optional fields above may be None although
    /// the request carried them. The labels (method, status, gRPC) are
    /// never affected: without them no exchange is returned.
    pub headers_partial: bool,
    pub request_start_ns: u64,
    pub request_end_ns: u64,
    pub response_start_ns: u64,
    pub response_end_ns: u64,
}

impl Exchange {
    /// Request start -> response end: for a server, first request byte read
    /// -> last response byte written; for a client, first request byte
    /// written -> last response byte read.
    pub fn duration_ns(&self) -> u64 {
        self.response_end_ns.saturating_sub(self.request_start_ns)
    }
}

macro_rules! loss_reasons {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Why something could not be decoded. Each reason counts one unit,
        /// said in its documentation (a chunk, a message, a header block,
        /// an exchange or a stream).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum LossReason {
            $($(#[$doc])* $variant,)*
        }

        impl LossReason {
            /// Every reason, in a stable order.
            pub const ALL: &'static [LossReason] = &[$(LossReason::$variant,)*];

            /// The stable `reason` label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(LossReason::$variant => $name,)*
                }
            }
        }
    };
}

loss_reasons! {
    /// A chunk of a connection whose protocol is not known yet and that
    /// starts neither with an HTTP/1 request or status line, nor with the
    /// HTTP/2 preface, nor with a plausible sequence of HTTP/2 frames
    /// (unit: chunk).
    UnknownProtocol = "unknown_protocol",
    /// HTTP/1: a chunk ignored because its direction is not at a message
    /// boundary (joined mid-stream, or after a loss) and the chunk does not
    /// start with a complete request or status line (unit: chunk).
    Http1Unsynced = "http1_unsynced",
    /// HTTP/1: a message head (start line and headers), or the start of the
    /// next message, fell in the part of a call that was not captured
    /// (unit: message).
    Http1Truncated = "http1_truncated",
    /// HTTP/1: a message head larger than `max_header_bytes` (unit: message).
    Http1HeaderTooLarge = "http1_header_too_large",
    /// HTTP/1: a start line, header or chunked framing that does not parse,
    /// or conflicting Content-Length values (unit: message).
    Http1Malformed = "http1_malformed",
    /// HTTP/1: a chunked body whose chunk-size line or trailer fell in the
    /// uncaptured part of a call: its end cannot be found (unit: message).
    Http1FramingLost = "http1_framing_lost",
    /// HTTP/1: a response whose request was not seen or cannot be told
    /// with certainty (joined mid-stream, after a loss, or on a connection
    /// that pipelines) (unit: response).
    Http1UnpairedResponse = "http1_unpaired_response",
    /// HTTP/1: a request whose response was lost (it was answered inside a
    /// span the parser could not follow) (unit: request).
    Http1UnansweredRequest = "http1_unanswered_request",
    /// HTTP/1: a request beyond `max_pipelined` waiting ones (unit: request).
    Http1PipelineOverflow = "http1_pipeline_overflow",
    /// HTTP/2: a chunk ignored because its direction lost frame sync (or
    /// was joined mid-stream) and the chunk is not a whole sequence of
    /// plausible frames (unit: chunk).
    H2Unsynced = "h2_unsynced",
    /// HTTP/2: a frame header fell in the uncaptured part of a call: frame
    /// sync of that direction is lost (unit: occurrence).
    H2FrameLost = "h2_frame_lost",
    /// HTTP/2: a header block (HEADERS/PUSH_PROMISE + CONTINUATION) not
    /// fully captured: the HPACK table of that direction is unknown from
    /// then on (unit: header block).
    H2HeadersTruncated = "h2_headers_truncated",
    /// HTTP/2: a header block larger than `max_header_bytes` (unit: header
    /// block).
    H2HeadersTooLarge = "h2_headers_too_large",
    /// HTTP/2: invalid HPACK (bad index, bad Huffman code, bad integer):
    /// the HPACK table of that direction is unknown from then on (unit:
    /// header block).
    H2HpackError = "h2_hpack_error",
    /// HTTP/2: an exchange whose method, status, gRPC path or gRPC status
    /// was in an HPACK dynamic table entry we do not know (joined
    /// mid-stream, or after a lost header block) (unit: exchange).
    H2HpackUnknownIndex = "h2_hpack_unknown_index",
    /// HTTP/2: frames violating the protocol in a way that breaks parsing
    /// (CONTINUATION out of place, padding longer than the frame) (unit:
    /// frame).
    H2Malformed = "h2_malformed",
    /// HTTP/2: a stream beyond `max_streams` open ones (unit: stream).
    H2StreamOverflow = "h2_stream_overflow",
    /// HTTP/2: a response on a stream whose request headers were not seen
    /// (joined mid-stream, or lost) (unit: stream).
    H2Unpaired = "h2_unpaired",
    /// HTTP/2: a stream open when frame sync of one of its directions was
    /// lost: its end cannot be known (unit: stream).
    H2StreamLost = "h2_stream_lost",
    /// The caller reported bytes of the connection it could not deliver
    /// ([`Connection::lost_data`]) (unit: report).
    DataGap = "data_gap",
}

impl LossReason {
    /// The label value (same as [`LossReason::as_str`]).
    pub fn label(self) -> &'static str {
        self.as_str()
    }
}

/// Losses counted by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    counts: [u64; 20],
}

impl Losses {
    pub fn new() -> Losses {
        Losses::default()
    }

    pub fn add(&mut self, reason: LossReason) {
        self.add_n(reason, 1);
    }

    pub fn add_n(&mut self, reason: LossReason, n: u64) {
        self.counts[reason as usize] = self.counts[reason as usize].saturating_add(n);
    }

    pub fn get(&self, reason: LossReason) -> u64 {
        self.counts[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every reason with its count (zeros included), in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        LossReason::ALL.iter().map(|r| (r.as_str(), self.get(*r)))
    }

    /// Adds another set of counts to these.
    pub fn merge(&mut self, other: &Losses) {
        for r in LossReason::ALL {
            self.add_n(*r, other.get(*r));
        }
    }
}

const _: () = assert!(LossReason::ALL.len() == 20);

/// The role of the process that read or wrote `chunk`, when the chunk
/// tells it: an HTTP/1 request line written, or a status line read, is a
/// client's; the HTTP/2 client preface written is a client's; HTTP/2 frames
/// joined mid-stream tell it by their header blocks
/// ([`http2::writer_is_client`]). The reverse is a server's. None when the
/// chunk says nothing certain (a body, frames without a decodable header
/// block): the caller waits for another chunk. The checks are those the
/// parsers sync on, so a chunk that gives a role is one a new
/// [`Connection`] starts from.
pub fn role_hint(chunk: &Chunk<'_>) -> Option<Role> {
    let data = chunk.captured;
    let total_len = chunk.total_len.max(data.len());
    let written_by_client = if http1::starts_message(data, Some(true)) || http2::is_preface_start(data) {
        true
    } else if http1::starts_message(data, Some(false)) {
        false
    } else {
        http2::writer_is_client(data, total_len)?
    };
    let wrote = chunk.direction == Direction::Egress;
    Some(if written_by_client == wrote { Role::Client } else { Role::Server })
}

enum State {
    /// Waiting for a chunk that tells the protocol.
    Detecting,
    Http1(Box<http1::Http1>),
    Http2(Box<http2::Http2>),
}

/// The parser of one TCP connection, from the point of view of one process.
pub struct Connection {
    role: Role,
    limits: Limits,
    state: State,
}

impl Connection {
    pub fn new(role: Role) -> Connection {
        Connection::with_limits(role, Limits::default())
    }

    pub fn with_limits(role: Role, limits: Limits) -> Connection {
        Connection { role, limits, state: State::Detecting }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The protocol detected so far (Http2 for gRPC connections too).
    pub fn protocol(&self) -> Option<Protocol> {
        match self.state {
            State::Detecting => None,
            State::Http1(_) => Some(Protocol::Http1),
            State::Http2(_) => Some(Protocol::Http2),
        }
    }

    /// Parses one chunk: exchanges it completes are pushed to `out`, what
    /// cannot be decoded is counted in `losses`.
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        let chunk = Chunk { total_len: chunk.total_len.max(chunk.captured.len()), ..*chunk };
        if let State::Detecting = self.state {
            let data = chunk.captured;
            if http2::is_preface_start(data) {
                self.state = State::Http2(Box::new(http2::Http2::new(self.role, self.limits, true)));
            } else if http1::starts_message(data, None) {
                self.state = State::Http1(Box::new(http1::Http1::new(self.role, self.limits)));
            } else if http2::plausible_frames(data, chunk.total_len, http2::DEFAULT_MAX_FRAME) {
                self.state = State::Http2(Box::new(http2::Http2::new(self.role, self.limits, false)));
            } else {
                losses.add(LossReason::UnknownProtocol);
                return;
            }
        }
        match &mut self.state {
            State::Detecting => {}
            State::Http1(p) => p.feed(&chunk, out, losses),
            State::Http2(p) => p.feed(&chunk, out, losses),
        }
    }

    /// The connection closed at `at_ns`: a response delimited by the close
    /// ends there; whatever else is incomplete is dropped (not counted: it
    /// was never completed).
    pub fn close(&mut self, at_ns: u64, out: &mut Vec<Exchange>, losses: &mut Losses) {
        match &mut self.state {
            State::Detecting => {}
            State::Http1(p) => p.close(at_ns, out, losses),
            State::Http2(p) => p.close(at_ns, out, losses),
        }
    }

    /// The caller knows that bytes of this connection in `direction` were
    /// not delivered (the kernel lost records): the parser resynchronises
    /// as after a capture gap (counted once as `data_gap`).
    pub fn lost_data(&mut self, direction: Direction, losses: &mut Losses) {
        losses.add(LossReason::DataGap);
        match &mut self.state {
            State::Detecting => {}
            State::Http1(p) => p.lost_data(direction, losses),
            State::Http2(p) => p.lost_data(direction, losses),
        }
    }

    /// Heap and inline bytes this connection holds.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Connection>()
            + match &self.state {
                State::Detecting => 0,
                State::Http1(p) => p.memory_bytes(),
                State::Http2(p) => p.memory_bytes(),
            }
    }
}

/// A header value as a bounded string: None unless valid UTF-8; cut at a
/// character boundary to `max` bytes.
pub(crate) fn bounded(value: &[u8], max: usize) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?;
    Some(cut(s, max).to_owned())
}

pub(crate) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The path of a request target (no query, no fragment), bounded: (path,
/// truncated). None unless valid UTF-8.
pub(crate) fn target_path(target: &[u8], max: usize) -> Option<(String, bool)> {
    let end = target.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(target.len());
    let s = std::str::from_utf8(&target[..end]).ok()?;
    let kept = cut(s, max);
    Some((kept.to_owned(), kept.len() < s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_reason_names_are_unique_and_stable() {
        let names: std::collections::HashSet<_> = LossReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), LossReason::ALL.len());
        for (i, r) in LossReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(LossReason::Http1Unsynced.as_str(), "http1_unsynced");
        assert_eq!(LossReason::H2HpackUnknownIndex.as_str(), "h2_hpack_unknown_index");
    }

    #[test]
    fn methods() {
        assert_eq!(Method::parse(b"GET").as_str(), "GET");
        assert_eq!(Method::parse(b"get").as_str(), "_OTHER");
        assert_eq!(Method::parse(b"PROPFIND"), Method::Other);
    }

    #[test]
    fn default_memory_bound() {
        let bound = Limits::default().max_connection_bytes();
        assert!((1 << 20..2 << 20).contains(&bound), "{bound}");
        assert!(Connection::new(Role::Server).memory_bytes() < 256);
    }

    #[test]
    fn cutting() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(target_path(b"/a/b?x=1", 10), Some(("/a/b".into(), false)));
        assert_eq!(target_path(b"/abcdef", 3), Some(("/ab".into(), true)));
        assert_eq!(target_path(b"/\xff", 10), None);
    }
}
