//! Turns fuzz input into a connection's calls: a header byte (role, and
//! whether a close ends it), then per call a control byte (direction,
//! whether part is uncaptured), a length byte, and the bytes.

use pmoas_protocols::{Chunk, Direction, Limits, Losses, Role};

pub struct Calls<'a> {
    pub role: Role,
    pub close: bool,
    rest: &'a [u8],
    t: u64,
}

pub fn calls(data: &[u8]) -> Calls<'_> {
    let (first, rest) = data.split_first().unwrap_or((&0, &[]));
    Calls { role: if first & 1 == 0 { Role::Server } else { Role::Client }, close: first & 2 != 0, rest, t: 0 }
}

impl<'a> Iterator for Calls<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        let [ctl, len, rest @ ..] = self.rest else { return None };
        let n = (usize::from(*len) * if ctl & 4 != 0 { 16 } else { 1 }).min(rest.len());
        let (bytes, rest) = rest.split_at(n);
        self.rest = rest;
        self.t += 10;
        let uncaptured = if ctl & 2 != 0 { usize::from(ctl >> 3) * 97 } else { 0 };
        Some(Chunk {
            direction: if ctl & 1 == 0 { Direction::Ingress } else { Direction::Egress },
            captured: bytes,
            total_len: bytes.len() + uncaptured,
            start_ns: self.t,
            end_ns: self.t + 5,
        })
    }
}

/// Small limits, so that the bounds are reached.
pub fn limits() -> Limits {
    Limits {
        max_header_bytes: 1024,
        max_hpack_table: 4096,
        max_streams: 16,
        max_pipelined: 8,
        max_path: 64,
        max_value: 64,
    }
}

#[allow(dead_code)]
pub fn losses() -> Losses {
    Losses::new()
}
