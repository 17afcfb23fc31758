//! HTTP/2 (RFC 9113) and gRPC: frames, header blocks, streams.
//!
//! Each direction is a sequence of frames: the 9-octet frame header says
//! how long the payload is, so payload octets beyond a call's captured
//! prefix are skipped by count (DATA costs nothing). Header blocks
//! (HEADERS or PUSH_PROMISE, then CONTINUATION up to END_HEADERS) are
//! buffered up to `max_header_bytes` and decoded by the direction's HPACK
//! decoder ([`crate::hpack`]); a block not fully captured is lost
//! (`h2_headers_truncated`) and makes that decoder's table unknown. Padding
//! and priority fields are stripped; SETTINGS give the peer's
//! SETTINGS_MAX_FRAME_SIZE; RST_STREAM ends a stream; GOAWAY drops the
//! streams it says were not processed.
//!
//! # Sync
//!
//! A frame header in the uncaptured part of a call loses the direction's
//! frame sync (`h2_frame_lost`): its HPACK table becomes unknown and every
//! open stream is dropped (`h2_stream_lost`: a lost frame may have ended
//! it). The direction resynchronises only at a chunk that *is* a whole
//! sequence of plausible frames: known types with valid flags, lengths and
//! stream ids, the last frame ending exactly where the call's bytes end
//! ([`plausible_frames`]); other chunks are counted (`h2_unsynced`). A
//! connection seen from its client preface is in sync from its first octet
//! with exact HPACK tables; one joined mid-stream starts out of sync with
//! unknown tables, decoded as far as the static table and literals allow.
//!
//! # Exchanges
//!
//! A stream opened by the client's HEADERS becomes an exchange when the
//! server ends it (END_STREAM on DATA or on the trailers, or a Trailers-Only
//! response) or when either side resets it (`reset` set, `status_code`
//! None if no response headers came). gRPC streams (`content-type:
//! application/grpc*`) carry service, method and code ([`crate::grpc`]).
//! Without a decoded `:method`, `:status` (unless reset), gRPC `:path` or
//! gRPC `grpc-status` (when the block that should hold it had fields we
//! could not decode), nothing is returned (`h2_hpack_unknown_index`).
//! Server push streams are not followed (their header blocks are decoded
//! for the HPACK state only).

use std::collections::HashMap;

use crate::grpc::{self, GrpcCall, GrpcCode, GrpcCodeSource};
use crate::hpack::{self, BlockEnd};
use crate::{
    Chunk, Direction, Exchange, Limits, LossReason, Losses, Method, Protocol, Role, bounded, cut, target_path,
};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// SETTINGS_MAX_FRAME_SIZE until a SETTINGS frame says otherwise.
pub const DEFAULT_MAX_FRAME: u32 = 16384;
/// The largest frame size HTTP/2 allows.
const MAX_FRAME_LIMIT: u32 = (1 << 24) - 1;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Does a chunk start with the client preface (or all of it is a prefix of
/// it, at least "PRI ")?
pub fn is_preface_start(data: &[u8]) -> bool {
    if data.len() >= PREFACE.len() { data.starts_with(PREFACE) } else { data.len() >= 4 && PREFACE.starts_with(data) }
}

#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
}

fn frame_header(b: &[u8; 9]) -> FrameHeader {
    FrameHeader {
        len: u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]),
        ty: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
    }
}

/// Would a sender write this frame header? Known types only, with their
/// defined flags, lengths and stream ids.
fn plausible(h: &FrameHeader, max_frame: u32) -> bool {
    if h.stream & 0x8000_0000 != 0 || h.len > max_frame {
        return false;
    }
    let on_stream = h.stream != 0;
    match h.ty {
        DATA => on_stream && h.flags & !(END_STREAM | PADDED) == 0,
        HEADERS => on_stream && h.flags & !(END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG) == 0,
        PRIORITY => on_stream && h.flags == 0 && h.len == 5,
        RST_STREAM => on_stream && h.flags == 0 && h.len == 4,
        SETTINGS => !on_stream && h.flags & !1 == 0 && h.len.is_multiple_of(6) && (h.flags == 0 || h.len == 0),
        PUSH_PROMISE => on_stream && h.flags & !(END_HEADERS | PADDED) == 0 && h.len >= 4,
        PING => !on_stream && h.flags & !1 == 0 && h.len == 8,
        GOAWAY => !on_stream && h.flags == 0 && h.len >= 8,
        WINDOW_UPDATE => h.flags == 0 && h.len == 4,
        CONTINUATION => on_stream && h.flags & !END_HEADERS == 0,
        _ => false,
    }
}

/// Is this chunk a whole sequence of plausible frames: every frame header
/// captured and plausible, the last frame ending exactly at `total_len`?
pub fn plausible_frames(data: &[u8], total_len: usize, max_frame: u32) -> bool {
    let total = total_len.max(data.len());
    let mut off = 0usize;
    let mut frames = 0;
    while off < total {
        let Some(hdr) = data.get(off..off + 9) else { return false };
        let h = frame_header(hdr.try_into().unwrap_or(&[0; 9]));
        if !plausible(&h, max_frame) {
            return false;
        }
        off += 9 + h.len as usize;
        frames += 1;
    }
    frames > 0 && off == total
}

/// Did a client or a server write these bytes, as far as they tell? For a
/// connection joined mid-stream (no preface seen), whose role nothing else
/// says. Only a chunk that is a whole sequence of plausible frames (as for
/// resync) is looked into, and only fields that decode without the dynamic
/// table we never saw:
///
/// - a HEADERS block with a request pseudo-header (`:method`, `:path`,
///   `:scheme`, `:authority`, `:protocol`) was written by the client, one
///   with `:status` by the server (RFC 9113 §8.3: requests and responses
///   carry only their own pseudo-headers). Encoders write `:method GET` /
///   `POST` and `:status 200` / `204` / `206` / `304` / `400` / `404` /
///   `500` as static-table indexes, and other values as literals whose name
///   is a static index, so the first request or response after the join
///   nearly always tells; a block whose pseudo-headers are all in dynamic
///   entries tells nothing (trailers have none);
/// - a PUSH_PROMISE is only ever written by a server.
///
/// Stream ids do not tell: requests and responses share the client's odd
/// ids. Blocks that say both (malformed) tell nothing. The client preface
/// is [`is_preface_start`]'s business.
pub fn writer_is_client(data: &[u8], total_len: usize) -> Option<bool> {
    if !plausible_frames(data, total_len, DEFAULT_MAX_FRAME) {
        return None;
    }
    // One decoder for the chunk's blocks, in order: an entry a block
    // inserts is known to the next one.
    let mut hpack = hpack::Decoder::unknown(hpack::DEFAULT_TABLE_SIZE);
    let (mut request, mut response) = (false, false);
    let mut off = 0;
    while let Some(hdr) = data.get(off..off + 9) {
        let h = frame_header(hdr.try_into().unwrap_or(&[0; 9]));
        let end = off + 9 + h.len as usize;
        let payload = data.get(off + 9..end);
        off = end;
        match (h.ty, payload) {
            (PUSH_PROMISE, _) => response = true,
            (HEADERS, Some(payload)) => {
                let skip = if h.flags & PRIORITY_FLAG != 0 { 5 } else { 0 };
                let Some(block) = fragment(payload, h.flags, skip) else { continue };
                // Without END_HEADERS the rest is in CONTINUATIONs: the
                // fields before the cut are still whole.
                let complete = h.flags & END_HEADERS != 0;
                let mut names = (false, false);
                let end = hpack.decode(block, complete, |name, _| match name {
                    Some(b":status") => names.1 = true,
                    Some(b":method" | b":path" | b":scheme" | b":authority" | b":protocol") => names.0 = true,
                    _ => {}
                });
                if end != BlockEnd::Error {
                    request |= names.0;
                    response |= names.1;
                }
            }
            _ => {}
        }
    }
    match (request, response) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Expecting the rest of the client preface (octets matched so far).
    Preface(usize),
    Synced,
    Unsynced,
}

/// The frame whose payload is being read.
struct Frame {
    h: FrameHeader,
    /// Payload octets seen (captured or skipped).
    got: u32,
    /// Keep the payload (header blocks and control frames).
    keep: bool,
    buf: Vec<u8>,
    /// Some payload octets were not captured (or not kept: too large).
    lost: bool,
    start_ns: u64,
}

/// A header block in progress.
struct Block {
    stream: u32,
    end_stream: bool,
    push: bool,
    buf: Vec<u8>,
    /// Not fully captured (`Some(reason)`): not decoded.
    lost: Option<LossReason>,
    start_ns: u64,
}

struct Dir {
    sync: Sync,
    hpack: hpack::Decoder,
    /// What the receiver allows this direction's frames to be.
    max_frame: u32,
    hdr: [u8; 9],
    hdr_len: usize,
    hdr_start_ns: u64,
    frame: Option<Frame>,
    block: Option<Block>,
    /// Header blocks seen in this direction.
    blocks: u64,
    /// Ever in sync, and did its first frame start a SETTINGS (the server
    /// preface)?
    ever_synced: bool,
    first_was_settings: bool,
}

impl Dir {
    fn new(sync: Sync, exact: bool, limits: &Limits) -> Dir {
        Dir {
            sync,
            hpack: if exact {
                hpack::Decoder::new(limits.max_hpack_table)
            } else {
                hpack::Decoder::unknown(limits.max_hpack_table)
            },
            max_frame: DEFAULT_MAX_FRAME,
            hdr: [0; 9],
            hdr_len: 0,
            hdr_start_ns: 0,
            frame: None,
            block: None,
            blocks: 0,
            ever_synced: sync != Sync::Unsynced,
            first_was_settings: false,
        }
    }

    fn memory_bytes(&self) -> usize {
        self.hpack.memory_bytes()
            + self.frame.as_ref().map_or(0, |f| f.buf.capacity())
            + self.block.as_ref().map_or(0, |b| b.buf.capacity())
    }
}

/// Header fields of one block that matter here.
#[derive(Default)]
struct Fields {
    method: Option<Method>,
    path: Option<Vec<u8>>,
    authority: Option<Vec<u8>>,
    host: Option<Vec<u8>>,
    status: Option<u16>,
    status_invalid: bool,
    /// `content-type` seen: is it gRPC?
    content_type: Option<bool>,
    grpc_status: Option<GrpcCode>,
    grpc_status_invalid: bool,
    x_request_id: Option<Vec<u8>>,
    traceparent: Option<Vec<u8>>,
    /// Some field could not be decoded (unknown HPACK entry).
    unknown: bool,
}

impl Fields {
    fn take(&mut self, name: Option<&[u8]>, value: Option<&[u8]>, max: usize) {
        let (Some(name), Some(value)) = (name, value) else {
            self.unknown = true;
            return;
        };
        let keep = |v: &[u8]| v[..v.len().min(max)].to_vec();
        match name {
            b":method" => self.method = Some(Method::parse(value)),
            b":path" => self.path = Some(keep(value)),
            b":authority" => self.authority = Some(keep(value)),
            b"host" => self.host = Some(keep(value)),
            b":status" => match std::str::from_utf8(value).ok().filter(|s| s.len() == 3).and_then(|s| s.parse().ok()) {
                Some(s) => self.status = Some(s),
                None => self.status_invalid = true,
            },
            b"content-type" => self.content_type = Some(grpc::is_grpc_content_type(value)),
            b"grpc-status" => match GrpcCode::from_header(value) {
                Some(c) => self.grpc_status = Some(c),
                None => self.grpc_status_invalid = true,
            },
            b"x-request-id" => self.x_request_id = Some(keep(value)),
            b"traceparent" => self.traceparent = Some(keep(value)),
            _ => {}
        }
    }
}

/// What we know of a stream's request.
enum Request {
    /// Its headers were decoded (some fields possibly unknown).
    Known(Box<Fields>),
    /// Its header block was lost (already counted).
    Lost,
    /// Never seen: a response on a stream opened before we joined
    /// (counted once as `h2_unpaired`).
    Unseen,
}

struct Stream {
    request: Request,
    request_start_ns: u64,
    request_end_ns: Option<u64>,
    /// The final response headers: None before them.
    response: Option<ResponseHead>,
    response_start_ns: u64,
    /// The response's header blocks were lost (already counted).
    response_lost: bool,
    /// The grpc-status, and whether the block that ended the stream had
    /// unknown fields.
    grpc_status: Option<(GrpcCode, GrpcCodeSource)>,
    end_block_unknown: bool,
    partial: bool,
}

struct ResponseHead {
    status: Option<u16>,
    /// The response's `content-type`: Some(is gRPC); None when absent or
    /// not decoded (`unknown`).
    content_type: Option<bool>,
}

/// Is the exchange gRPC? From the request's content-type, else the
/// response's, else a `grpc-status` seen; a path that no gRPC call can have
/// says no. None when nothing tells (a field we could not decode may have
/// been the content-type).
fn is_grpc(req: &Fields, s: &Stream) -> Option<bool> {
    if let Some(g) = req.content_type {
        return Some(g);
    }
    if let Some(g) = s.response.as_ref().and_then(|r| r.content_type) {
        return Some(g);
    }
    if s.grpc_status.is_some() {
        return Some(true);
    }
    // A gRPC request always carries its content-type, and a path of the
    // /Service/Method shape.
    if !req.unknown || req.path.as_deref().is_some_and(|p| grpc::split_path(p).is_none()) {
        return Some(false);
    }
    None
}

/// The HTTP/2 state of one connection.
pub struct Http2 {
    role: Role,
    limits: Limits,
    /// [request direction, response direction]
    dirs: [Dir; 2],
    streams: HashMap<u32, Stream>,
    /// The highest client stream id seen.
    max_stream: u32,
    /// Responses on streams up to this one are ignored without counting
    /// (their streams were dropped and counted when sync was lost).
    dropped_up_to: u32,
}

const REQ: usize = 0;
const RESP: usize = 1;

impl Http2 {
    /// `from_start`: the first chunk seen starts with the client preface.
    pub fn new(role: Role, limits: Limits, from_start: bool) -> Http2 {
        let (req, resp) = if from_start {
            (Dir::new(Sync::Preface(0), true, &limits), Dir::new(Sync::Synced, true, &limits))
        } else {
            (Dir::new(Sync::Unsynced, false, &limits), Dir::new(Sync::Unsynced, false, &limits))
        };
        Http2 { role, limits, dirs: [req, resp], streams: HashMap::new(), max_stream: 0, dropped_up_to: 0 }
    }

    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Http2>()
            + self.dirs.iter().map(Dir::memory_bytes).sum::<usize>()
            + self.streams.capacity() * (std::mem::size_of::<Stream>() + 8)
            + self.streams.values().map(stream_heap).sum::<usize>()
    }

    /// Open streams.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Is the HPACK state of both directions exact?
    pub fn hpack_exact(&self) -> bool {
        self.dirs.iter().all(|d| d.hpack.is_exact())
    }

    fn dir_index(&self, direction: Direction) -> usize {
        if direction == self.role.request_direction() { REQ } else { RESP }
    }

    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        let d = self.dir_index(chunk.direction);
        let data = chunk.captured;
        if self.dirs[d].sync == Sync::Unsynced {
            if d == REQ && !self.dirs[REQ].ever_synced && is_preface_start(data) {
                // The connection's start after all (the server's preface was
                // seen first): exact tables where nothing touched them yet.
                self.dirs[REQ] = Dir::new(Sync::Preface(0), true, &self.limits);
                let resp = &mut self.dirs[RESP];
                if resp.ever_synced && resp.first_was_settings && resp.blocks == 0 && resp.block.is_none() {
                    resp.hpack = hpack::Decoder::new(self.limits.max_hpack_table);
                }
            } else if plausible_frames(data, chunk.total_len, self.dirs[d].max_frame) {
                let dir = &mut self.dirs[d];
                if !dir.ever_synced {
                    dir.first_was_settings = data.get(3) == Some(&SETTINGS) && data.get(4) == Some(&0);
                }
                dir.sync = Sync::Synced;
                dir.ever_synced = true;
                dir.hdr_len = 0;
                dir.frame = None;
                dir.block = None;
            } else {
                losses.add(LossReason::H2Unsynced);
                return;
            }
        }
        let mut pos = 0;
        while pos < data.len() {
            let dir = &mut self.dirs[d];
            match dir.sync {
                Sync::Unsynced => return,
                Sync::Preface(m) => {
                    let take = (PREFACE.len() - m).min(data.len() - pos);
                    if data[pos..pos + take] != PREFACE[m..m + take] {
                        losses.add(LossReason::H2Malformed);
                        self.lose_sync(d, losses);
                        return;
                    }
                    pos += take;
                    dir.sync = if m + take == PREFACE.len() { Sync::Synced } else { Sync::Preface(m + take) };
                }
                Sync::Synced => {
                    if dir.frame.is_none() {
                        if dir.hdr_len == 0 {
                            dir.hdr_start_ns = chunk.first_byte_ns();
                        }
                        let take = (9 - dir.hdr_len).min(data.len() - pos);
                        dir.hdr[dir.hdr_len..dir.hdr_len + take].copy_from_slice(&data[pos..pos + take]);
                        dir.hdr_len += take;
                        pos += take;
                        if dir.hdr_len == 9 {
                            dir.hdr_len = 0;
                            let h = frame_header(&dir.hdr);
                            if h.len > dir.max_frame.max(DEFAULT_MAX_FRAME) && h.len > MAX_FRAME_LIMIT.min(1 << 20) {
                                // Not a frame any peer would accept: we lost
                                // track somewhere.
                                losses.add(LossReason::H2Malformed);
                                self.lose_sync(d, losses);
                                return;
                            }
                            let keep = !matches!(h.ty, DATA | PING | WINDOW_UPDATE | PRIORITY) && h.ty <= CONTINUATION;
                            let too_big = h.len as usize > self.limits.max_header_bytes + 256;
                            let frame = Frame {
                                h,
                                got: 0,
                                keep: keep && !too_big,
                                buf: Vec::new(),
                                lost: keep && too_big,
                                start_ns: dir.hdr_start_ns,
                            };
                            dir.frame = Some(frame);
                            if h.len == 0 {
                                self.complete_frame(d, chunk, out, losses);
                            }
                        }
                    } else if let Some(f) = &mut dir.frame {
                        let take = ((f.h.len - f.got) as usize).min(data.len() - pos);
                        if f.keep {
                            f.buf.extend_from_slice(&data[pos..pos + take]);
                        }
                        f.got += take as u32;
                        pos += take;
                        if f.got == f.h.len {
                            self.complete_frame(d, chunk, out, losses);
                        }
                    }
                }
            }
        }
        // The part of the call that was not captured.
        let mut uncaptured = chunk.uncaptured();
        if uncaptured == 0 {
            return;
        }
        let dir = &mut self.dirs[d];
        if dir.sync != Sync::Synced || dir.hdr_len != 0 {
            if dir.sync != Sync::Unsynced {
                losses.add(LossReason::H2FrameLost);
                self.lose_sync(d, losses);
            }
            return;
        }
        if let Some(f) = &mut dir.frame {
            let rest = (f.h.len - f.got) as usize;
            let skip = rest.min(uncaptured);
            f.got += skip as u32;
            f.lost |= f.keep;
            uncaptured -= skip;
            if f.got == f.h.len {
                self.complete_frame(d, chunk, out, losses);
            }
        }
        if uncaptured > 0 && self.dirs[d].sync == Sync::Synced {
            losses.add(LossReason::H2FrameLost);
            self.lose_sync(d, losses);
        }
    }

    pub fn close(&mut self, _at_ns: u64, _out: &mut Vec<Exchange>, _losses: &mut Losses) {
        // Streams still open never completed.
        self.streams.clear();
        for dir in &mut self.dirs {
            dir.sync = Sync::Unsynced;
            dir.frame = None;
            dir.block = None;
        }
    }

    pub fn lost_data(&mut self, direction: Direction, losses: &mut Losses) {
        let d = self.dir_index(direction);
        if self.dirs[d].sync != Sync::Unsynced {
            self.lose_sync(d, losses);
        }
    }

    /// Frame sync of direction `d` is lost.
    fn lose_sync(&mut self, d: usize, losses: &mut Losses) {
        let dir = &mut self.dirs[d];
        dir.sync = Sync::Unsynced;
        dir.frame = None;
        dir.block = None;
        dir.hdr_len = 0;
        dir.hpack.forget();
        let lost = self.streams.values().filter(|s| !matches!(s.request, Request::Unseen | Request::Lost)).count();
        losses.add_n(LossReason::H2StreamLost, lost as u64);
        self.streams.clear();
        self.dropped_up_to = self.max_stream;
    }

    fn complete_frame(&mut self, d: usize, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        let Some(frame) = self.dirs[d].frame.take() else { return };
        let h = frame.h;
        let t_end = chunk.end_ns;
        if self.dirs[d].block.is_some() && h.ty != CONTINUATION {
            // A header block must not be interleaved.
            losses.add(LossReason::H2Malformed);
            self.dirs[d].block = None;
            self.dirs[d].hpack.forget();
        }
        match h.ty {
            DATA if h.flags & END_STREAM != 0 => self.end_stream(d, h.stream, t_end, out, losses),
            HEADERS | PUSH_PROMISE => {
                let push = h.ty == PUSH_PROMISE;
                let mut block = Block {
                    stream: h.stream,
                    end_stream: !push && h.flags & END_STREAM != 0,
                    push,
                    buf: Vec::new(),
                    lost: None,
                    start_ns: frame.start_ns,
                };
                if frame.lost {
                    block.lost =
                        Some(if frame.keep { LossReason::H2HeadersTruncated } else { LossReason::H2HeadersTooLarge });
                } else {
                    let mut skip = if push { 4 } else { 0 };
                    if !push && h.flags & PRIORITY_FLAG != 0 {
                        skip += 5;
                    }
                    match fragment(&frame.buf, h.flags, skip) {
                        Some(f) => block.buf.extend_from_slice(f),
                        None => {
                            losses.add(LossReason::H2Malformed);
                            block.lost = Some(LossReason::H2Malformed);
                        }
                    }
                }
                self.dirs[d].block = Some(block);
                if h.flags & END_HEADERS != 0 {
                    self.finish_block(d, t_end, out, losses);
                }
            }
            CONTINUATION => {
                let dir = &mut self.dirs[d];
                match &mut dir.block {
                    Some(b) if b.stream == h.stream => {
                        if frame.lost {
                            b.lost.get_or_insert(if frame.keep {
                                LossReason::H2HeadersTruncated
                            } else {
                                LossReason::H2HeadersTooLarge
                            });
                        } else if b.lost.is_none() {
                            if b.buf.len() + frame.buf.len() > self.limits.max_header_bytes {
                                b.lost = Some(LossReason::H2HeadersTooLarge);
                                b.buf = Vec::new();
                            } else {
                                b.buf.extend_from_slice(&frame.buf);
                            }
                        }
                        if h.flags & END_HEADERS != 0 {
                            self.finish_block(d, t_end, out, losses);
                        }
                    }
                    _ => {
                        // Its HEADERS was not seen (lost, or before a
                        // resync): the block cannot be decoded.
                        dir.block = None;
                        losses.add(LossReason::H2HeadersTruncated);
                        dir.hpack.forget();
                    }
                }
            }
            RST_STREAM if !frame.lost && frame.buf.len() == 4 => {
                let code = u32::from_be_bytes([frame.buf[0], frame.buf[1], frame.buf[2], frame.buf[3]]);
                self.reset_stream(h.stream, code, t_end, out, losses);
            }
            SETTINGS if h.flags & 1 == 0 && !frame.lost => {
                for s in frame.buf.chunks_exact(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    if id == 5 && (DEFAULT_MAX_FRAME..=MAX_FRAME_LIMIT).contains(&value) {
                        // The sender accepts frames this large: the other
                        // direction's.
                        self.dirs[1 - d].max_frame = value;
                    }
                }
            }
            GOAWAY if !frame.lost && frame.buf.len() >= 4 && d == RESP => {
                let last = u32::from_be_bytes([frame.buf[0], frame.buf[1], frame.buf[2], frame.buf[3]]) & 0x7fff_ffff;
                // Streams after `last` were not processed: the client
                // retries them elsewhere.
                self.streams.retain(|id, _| *id <= last);
            }
            _ => {}
        }
    }

    /// The header block of direction `d` is complete (END_HEADERS).
    fn finish_block(&mut self, d: usize, t_end: u64, out: &mut Vec<Exchange>, losses: &mut Losses) {
        let Some(block) = self.dirs[d].block.take() else { return };
        let dir = &mut self.dirs[d];
        dir.blocks += 1;
        let mut fields = Fields::default();
        let decoded = match block.lost {
            Some(reason) => {
                if reason != LossReason::H2Malformed {
                    losses.add(reason);
                }
                dir.hpack.forget();
                false
            }
            None => {
                let max = self.limits.max_path.max(self.limits.max_value);
                match dir.hpack.decode(&block.buf, true, |n, v| fields.take(n, v, max)) {
                    BlockEnd::Complete => true,
                    BlockEnd::Truncated | BlockEnd::Error => {
                        losses.add(LossReason::H2HpackError);
                        false
                    }
                }
            }
        };
        if block.push || block.stream & 1 == 0 {
            return;
        }
        let fields = if decoded { Some(fields) } else { None };
        if d == REQ {
            self.request_headers(block.stream, fields, block.end_stream, block.start_ns, t_end, losses);
        } else {
            self.response_headers(block.stream, fields, block.end_stream, block.start_ns, t_end, out, losses);
        }
    }

    fn request_headers(
        &mut self,
        id: u32,
        fields: Option<Fields>,
        end_stream: bool,
        start_ns: u64,
        t_end: u64,
        losses: &mut Losses,
    ) {
        if let Some(s) = self.streams.get_mut(&id) {
            // Request trailers.
            if end_stream {
                s.request_end_ns = Some(t_end);
            }
            if fields.as_ref().is_none_or(|f| f.unknown) {
                s.partial = true;
            }
            return;
        }
        if id <= self.max_stream {
            // A stream we dropped or finished.
            return;
        }
        self.max_stream = id;
        if self.streams.len() >= self.limits.max_streams {
            losses.add(LossReason::H2StreamOverflow);
            return;
        }
        let request = match fields {
            Some(f) => Request::Known(Box::new(f)),
            None => Request::Lost,
        };
        self.streams.insert(
            id,
            Stream {
                request,
                request_start_ns: start_ns,
                request_end_ns: end_stream.then_some(t_end),
                response: None,
                response_start_ns: 0,
                response_lost: false,
                grpc_status: None,
                end_block_unknown: false,
                partial: false,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn response_headers(
        &mut self,
        id: u32,
        fields: Option<Fields>,
        end_stream: bool,
        start_ns: u64,
        t_end: u64,
        out: &mut Vec<Exchange>,
        losses: &mut Losses,
    ) {
        if !self.streams.contains_key(&id) {
            if id <= self.dropped_up_to {
                return;
            }
            if self.streams.len() >= self.limits.max_streams {
                losses.add(LossReason::H2StreamOverflow);
                return;
            }
            losses.add(LossReason::H2Unpaired);
            self.max_stream = self.max_stream.max(id);
            self.streams.insert(
                id,
                Stream {
                    request: Request::Unseen,
                    request_start_ns: 0,
                    request_end_ns: None,
                    response: None,
                    response_start_ns: 0,
                    response_lost: false,
                    grpc_status: None,
                    end_block_unknown: false,
                    partial: false,
                },
            );
        }
        let Some(s) = self.streams.get_mut(&id) else { return };
        match fields {
            None => s.response_lost = true,
            Some(f) => {
                let trailers_only = s.response.is_none();
                if s.response.is_none() {
                    match f.status {
                        Some(st) if (100..200).contains(&st) => return, // interim
                        Some(st) => s.response = Some(ResponseHead { status: Some(st), content_type: f.content_type }),
                        None => {
                            // Not decoded, or no :status at all (malformed:
                            // treated as lost).
                            s.response_lost |= !f.unknown || f.status_invalid;
                            s.response = Some(ResponseHead { status: None, content_type: f.content_type });
                        }
                    }
                    s.response_start_ns = start_ns;
                }
                if let Some(code) = f.grpc_status {
                    let source = if trailers_only { GrpcCodeSource::TrailersOnly } else { GrpcCodeSource::Trailers };
                    s.grpc_status = Some((code, source));
                }
                if end_stream {
                    s.end_block_unknown = f.unknown || f.grpc_status_invalid;
                }
                if f.unknown {
                    s.partial = true;
                }
            }
        }
        if s.response.is_none() {
            s.response_start_ns = start_ns;
            s.response = Some(ResponseHead { status: None, content_type: None });
        }
        if end_stream {
            self.end_stream(RESP, id, t_end, out, losses);
        }
    }

    /// END_STREAM from direction `d`.
    fn end_stream(&mut self, d: usize, id: u32, t_end: u64, out: &mut Vec<Exchange>, losses: &mut Losses) {
        if d == REQ {
            if let Some(s) = self.streams.get_mut(&id) {
                s.request_end_ns.get_or_insert(t_end);
            }
            return;
        }
        if let Some(s) = self.streams.remove(&id) {
            self.emit(id, s, t_end, None, out, losses);
        }
    }

    fn reset_stream(&mut self, id: u32, code: u32, t_end: u64, out: &mut Vec<Exchange>, losses: &mut Losses) {
        if let Some(s) = self.streams.remove(&id) {
            // A reset is not a decoding loss: nothing to count, but for a
            // gRPC call whose code is unknown (see `emit`).
            let mut ignore = Losses::new();
            self.emit(id, s, t_end, Some(code), out, &mut ignore);
            losses.add_n(LossReason::H2StreamLost, ignore.get(LossReason::H2StreamLost));
        }
    }

    fn emit(&self, id: u32, s: Stream, t_end: u64, reset: Option<u32>, out: &mut Vec<Exchange>, losses: &mut Losses) {
        let Request::Known(req) = &s.request else { return };
        if s.response_lost {
            return;
        }
        let Some(method) = req.method else {
            losses.add(LossReason::H2HpackUnknownIndex);
            return;
        };
        let status = s.response.as_ref().and_then(|r| r.status);
        if reset.is_none() && status.is_none() {
            losses.add(LossReason::H2HpackUnknownIndex);
            return;
        }
        let max = self.limits.max_value;
        let mut protocol = Protocol::Http2;
        let mut grpc_call = None;
        let Some(grpc_exchange) = is_grpc(req, &s) else {
            losses.add(LossReason::H2HpackUnknownIndex);
            return;
        };
        if grpc_exchange {
            let Some(path) = &req.path else {
                losses.add(LossReason::H2HpackUnknownIndex);
                return;
            };
            if let Some((service, method)) = grpc::split_path(path) {
                let code = match (s.grpc_status, reset) {
                    (Some((c, src)), _) => (c, src),
                    // NO_ERROR: the peer is done with the stream, typically
                    // a server that answered in full before the request
                    // ended (RFC 9113 8.1); without a status seen, it may
                    // have been in trailers this capture did not see in
                    // full. Not synthesised as INTERNAL (what a client that
                    // got no status reports): unknown, and counted.
                    (None, Some(0)) => {
                        losses.add(LossReason::H2StreamLost);
                        return;
                    }
                    (None, Some(code)) => (GrpcCode::from_rst_stream(code), GrpcCodeSource::Reset),
                    (None, None) if s.end_block_unknown => {
                        losses.add(LossReason::H2HpackUnknownIndex);
                        return;
                    }
                    (None, None) => (GrpcCode::from_http_status(status.unwrap_or(0)), GrpcCodeSource::HttpStatus),
                };
                protocol = Protocol::Grpc;
                grpc_call = Some(GrpcCall {
                    service: cut(service, max).to_owned(),
                    method: cut(method, max).to_owned(),
                    code: code.0,
                    code_source: code.1,
                });
            }
        }
        let (path, path_truncated) = match req.path.as_deref().and_then(|p| target_path(p, self.limits.max_path)) {
            Some((p, t)) => (Some(p), t),
            None => (None, false),
        };
        let authority = req.authority.as_deref().or(req.host.as_deref()).and_then(|v| bounded(v, max));
        let response_start_ns =
            if s.response.is_some() && s.response_start_ns != 0 { s.response_start_ns } else { t_end };
        out.push(Exchange {
            protocol,
            method,
            path,
            path_truncated,
            authority,
            status_code: status,
            grpc: grpc_call,
            x_request_id: req.x_request_id.as_deref().and_then(|v| bounded(v, max)),
            traceparent: req.traceparent.as_deref().and_then(|v| bounded(v, max)),
            stream_id: Some(id),
            reset,
            headers_partial: req.unknown || s.partial,
            request_start_ns: s.request_start_ns,
            request_end_ns: s.request_end_ns.unwrap_or(response_start_ns),
            response_start_ns,
            response_end_ns: t_end,
        });
    }
}

fn stream_heap(s: &Stream) -> usize {
    match &s.request {
        Request::Known(f) => {
            std::mem::size_of::<Fields>()
                + [&f.path, &f.authority, &f.host, &f.x_request_id, &f.traceparent]
                    .iter()
                    .map(|v| v.as_ref().map_or(0, Vec::capacity))
                    .sum::<usize>()
        }
        _ => 0,
    }
}

/// The header block fragment of a HEADERS/PUSH_PROMISE payload: padding
/// and the `skip` octets of priority / promised stream removed.
fn fragment(payload: &[u8], flags: u8, skip: usize) -> Option<&[u8]> {
    let (pad, body) = if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        (usize::from(pad), rest)
    } else {
        (0, payload)
    };
    if skip + pad > body.len() {
        return None;
    }
    Some(&body[skip..body.len() - pad])
}
