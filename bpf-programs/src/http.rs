//! Rust mirrors of `include/pmoas_http.h`, the http collector's contract
//! with `src/http.bpf.c`. Sizes and field offsets are asserted against the
//! numbers in the header's comments, and against the object's BTF in
//! `tests/contract.rs`.

#![allow(missing_docs)]

use core::mem::{offset_of, size_of};

use crate::types::c;

pub const CAPTURE_BYTES: usize = c::PMOAS_HTTP_CAPTURE_BYTES as usize;
pub const HTTP1_CAPTURE_BYTES: usize = c::PMOAS_HTTP1_CAPTURE_BYTES as usize;
/// Bytes of one HTTP/2 call sent at most, in records of [`CAPTURE_BYTES`].
pub const CALL_CAPTURE_BYTES: usize = c::PMOAS_HTTP_CALL_CAPTURE_BYTES as usize;
/// Records of one call at most (its first and its continuations).
pub const CALL_PARTS: usize = c::PMOAS_HTTP_CALL_PARTS as usize;
pub const WATCHED_MAP_SIZE: u32 = c::PMOAS_HTTP_WATCHED_MAP_SIZE as u32;
pub const CONN_MAP_SIZE: u32 = c::PMOAS_HTTP_CONN_MAP_SIZE as u32;
pub const RING_BYTES: u32 = c::PMOAS_HTTP_RING_BYTES as u32;
pub const EVENT_HEADER_BYTES: usize = c::PMOAS_HTTP_EVENT_HEADER_BYTES as usize;

pub const PROTO_UNKNOWN: u8 = c::PMOAS_HTTP_PROTO_UNKNOWN as u8;
pub const PROTO_HTTP1: u8 = c::PMOAS_HTTP_PROTO_HTTP1 as u8;
pub const PROTO_HTTP2: u8 = c::PMOAS_HTTP_PROTO_HTTP2 as u8;
pub const PROTO_OTHER: u8 = c::PMOAS_HTTP_PROTO_OTHER as u8;

pub const EVENT_DATA: u8 = c::PMOAS_HTTP_EVENT_DATA as u8;
pub const EVENT_CLOSE: u8 = c::PMOAS_HTTP_EVENT_CLOSE as u8;
pub const DIR_INGRESS: u8 = c::PMOAS_HTTP_DIR_INGRESS as u8;
pub const DIR_EGRESS: u8 = c::PMOAS_HTTP_DIR_EGRESS as u8;
pub const FLAG_ENDPOINTS: u8 = c::PMOAS_HTTP_FLAG_ENDPOINTS as u8;
/// Continuation records of this call follow.
pub const FLAG_MORE: u8 = c::PMOAS_HTTP_FLAG_MORE as u8;
const _: () = assert!(CALL_PARTS * CAPTURE_BYTES == CALL_CAPTURE_BYTES && CALL_PARTS <= 255);

/// The system call behind a chunk, by `PMOAS_HTTP_CALL_*` value.
pub const CALL_NAMES: [&str; 6] = ["read", "write", "readv", "writev", "recvmsg", "sendmsg"];
const _: () = {
    assert!(c::PMOAS_HTTP_CALL_READ == 0);
    assert!(c::PMOAS_HTTP_CALL_WRITE == 1);
    assert!(c::PMOAS_HTTP_CALL_READV == 2);
    assert!(c::PMOAS_HTTP_CALL_WRITEV == 3);
    assert!(c::PMOAS_HTTP_CALL_RECVMSG == 4);
    assert!(c::PMOAS_HTTP_CALL_SENDMSG == 5);
};

/// The http collector's lost-event reasons, in slot order (slot 0, the
/// shared aggregation_map_full, is not used by these programs; slot 2 is
/// no longer used: empty, not exported).
pub const LOST_REASONS: [&str; 4] = ["aggregation_map_full", "capture_ring_full", "", "capture_unreadable"];
const _: () = {
    assert!(c::PMOAS_HTTP_LOST_RING_FULL == 1);
    assert!(c::PMOAS_HTTP_LOST_UNUSED == 2);
    assert!(c::PMOAS_HTTP_LOST_UNREADABLE == 3);
    assert!(c::PMOAS_HTTP_LOST_REASONS == 4);
};

/// `struct pmoas_http_event` without its data: the record's first
/// [`EVENT_HEADER_BYTES`] bytes; the captured bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub sock: u64,
    pub cgroup_id: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub total_len: u32,
    pub captured: u16,
    pub kind: u8,
    pub direction: u8,
    pub proto: u8,
    pub call: u8,
    pub flags: u8,
    /// 0: a call's first record; k: its k-th continuation.
    pub part: u8,
    pub seq: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub netns: u32,
}

/// `struct pmoas_http_event` as a whole (for the layout check).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub header: EventHeader,
    pub data: [u8; CAPTURE_BYTES],
}

impl EventHeader {
    /// A ring record: its header and captured bytes, or None when it is
    /// shorter than its header says.
    pub fn parse(record: &[u8]) -> Option<(EventHeader, &[u8])> {
        if record.len() < EVENT_HEADER_BYTES {
            return None;
        }
        // SAFETY: `EventHeader` is plain data of EVENT_HEADER_BYTES bytes;
        // any bit pattern is a valid value; read_unaligned needs no alignment.
        let h = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<EventHeader>()) };
        let data = record.get(EVENT_HEADER_BYTES..EVENT_HEADER_BYTES + usize::from(h.captured))?;
        Some((h, data))
    }
}

const _: () = {
    assert!(size_of::<EventHeader>() == EVENT_HEADER_BYTES);
    assert!(offset_of!(EventHeader, tgid) == 32);
    assert!(offset_of!(EventHeader, total_len) == 40);
    assert!(offset_of!(EventHeader, captured) == 44);
    assert!(offset_of!(EventHeader, call) == 49);
    assert!(offset_of!(EventHeader, flags) == 50);
    assert!(offset_of!(EventHeader, part) == 51);
    assert!(offset_of!(EventHeader, seq) == 52);
    assert!(offset_of!(EventHeader, saddr) == 56);
    assert!(offset_of!(EventHeader, sport) == 88);
    assert!(offset_of!(EventHeader, netns) == 92);
    assert!(offset_of!(Event, data) == 96);
};

/// The http programs' structs, for `tests/contract.rs`.
pub const LAYOUTS: &[crate::types::Layout] = &[crate::layout!(
    "pmoas_http_event",
    EventFlat,
    sock,
    cgroup_id,
    start_ns,
    end_ns,
    tgid,
    tid,
    total_len,
    captured,
    kind,
    direction,
    proto,
    call,
    flags,
    part,
    seq,
    saddr,
    daddr,
    sport,
    dport,
    netns,
    data
)];

/// [`Event`] with its fields at top level, as the C struct has them.
#[repr(C)]
#[allow(dead_code)]
struct EventFlat {
    sock: u64,
    cgroup_id: u64,
    start_ns: u64,
    end_ns: u64,
    tgid: u32,
    tid: u32,
    total_len: u32,
    captured: u16,
    kind: u8,
    direction: u8,
    proto: u8,
    call: u8,
    flags: u8,
    part: u8,
    seq: u32,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    netns: u32,
    data: [u8; CAPTURE_BYTES],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_short_ones_are_refused() {
        let mut record = vec![0u8; EVENT_HEADER_BYTES + 3];
        record[0] = 7; // sock
        record[44] = 3; // captured
        record[EVENT_HEADER_BYTES..].copy_from_slice(b"GET");
        let (h, data) = EventHeader::parse(&record).unwrap();
        assert_eq!((h.sock, h.captured, data), (7, 3, &b"GET"[..]));
        record[44] = 4;
        assert!(EventHeader::parse(&record).is_none(), "says 4 bytes, has 3");
        assert!(EventHeader::parse(&record[..10]).is_none());
    }
}
