//! HPACK (RFC 7541) decoding for one direction of one HTTP/2 connection,
//! exact when the connection was seen from its start and *lenient but
//! never wrong* when it was joined mid-stream.
//!
//! # Why our own decoder
//!
//! The maintained Rust HPACK decoders (`loona-hpack` 0.4, the successor of
//! `fluke-hpack` and of `hpack` 0.3; `httlib-hpack` 0.1; the private one
//! inside `h2`) keep the dynamic table opaque and treat any reference they
//! cannot resolve as a fatal error. A connection that Envoy opened hours
//! before the exporter started has a dynamic table we never saw: those
//! decoders can only refuse every header block of it, forever. They also
//! panic on some inputs we must survive (`loona-hpack` asserts in
//! `set_max_table_size`) and build a hash-map Huffman table per string.
//! So this module implements the decoder with a table that knows *which*
//! of its entries it knows. Its oracle in the tests is `h2` (hyperium,
//! maintained): header lists sent through a real `h2` client and server,
//! whose encoder indexes into the dynamic table and Huffman-codes, must
//! decode here exactly as the peer's `h2` decoder received them.
//!
//! # The lenient table
//!
//! HPACK inserts every new entry at the front (index 62) and evicts from the
//! back. So the entries inserted since we started watching are, in order,
//! exactly the newest entries of the encoder's table, whatever came before:
//! an index that falls among them is decoded exactly. Older entries (the
//! *unknown tail*) are reported as unknown, never guessed. The tail is known
//! to be empty once the known entries leave no room for another entry
//! (every entry takes at least 32 octets) under a maximum size we know
//! exactly (from a dynamic table size update), or when the table is emptied;
//! from then on decoding is exact again. A header block cut short by the
//! capture, or with an error, makes the whole table unknown again (its
//! unseen part may have inserted entries, shifting every index).
//!
//! # Bounds
//!
//! The table holds at most `cap` octets in HPACK's accounting (entry =
//! name + value + 32): a size update above it is followed with the table
//! clipped to `cap` (entries beyond it become unknown). While the
//! encoder's maximum is unknown (joined mid-stream, until a size update),
//! the table keeps what a 4096-octet table would: older entries of a
//! larger one become unknown, and memory stays small. Integers are limited
//! to 2^28, strings to the block they are in.

use std::collections::VecDeque;
use std::sync::LazyLock;

/// The static table (RFC 7541 Appendix A), index 1..=61.
pub(crate) const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The table size HTTP/2 starts with (SETTINGS_HEADER_TABLE_SIZE's initial
/// value).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// HPACK's per-entry overhead (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

struct Entry {
    /// None: inserted with a name taken from an entry we did not know.
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
}

impl Entry {
    /// Its size in HPACK's accounting, or a lower bound of it when the name
    /// is unknown.
    fn size(&self) -> usize {
        ENTRY_OVERHEAD + self.value.len() + self.name.as_ref().map_or(0, |n| n.len())
    }
}

/// How decoding a header block ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockEnd {
    /// Every field was read (some may have been unknown).
    Complete,
    /// The block was cut short (not all of it was captured): the fields
    /// before the cut were delivered, and the table is unknown from now on.
    Truncated,
    /// The block is not valid HPACK (or not for the state we hold): the
    /// fields before the error were delivered, the table is unknown now.
    Error,
}

/// One direction's HPACK decoding state.
pub struct Decoder {
    /// Newest first: entries[0] is index 62.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (lower bounds for unknown names).
    size: usize,
    /// The encoder's maximum table size, as far as we know it (never above
    /// `cap`).
    max: usize,
    /// `max` is exactly the encoder's maximum (else only our cap).
    max_known: bool,
    /// Entries older than ours may exist in the encoder's table.
    tail_unknown: bool,
    /// Our hard limit on the table.
    cap: usize,
    /// Scratch for Huffman-decoded names and values.
    scratch_name: Vec<u8>,
    scratch_value: Vec<u8>,
}

/// A (name, value) pair borrowed from a table.
type Pair<'a> = (&'a [u8], &'a [u8]);

enum Fail {
    Truncated,
    Error,
}

impl Decoder {
    /// For a connection seen from its start: empty table of 4096 octets.
    pub fn new(cap: usize) -> Decoder {
        let cap = cap.max(DEFAULT_TABLE_SIZE);
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max: DEFAULT_TABLE_SIZE,
            max_known: true,
            tail_unknown: false,
            cap,
            scratch_name: Vec::new(),
            scratch_value: Vec::new(),
        }
    }

    /// For a connection joined mid-stream: nothing of the table is known.
    pub fn unknown(cap: usize) -> Decoder {
        let mut d = Decoder::new(cap);
        d.forget();
        d
    }

    /// The whole table becomes unknown (a block was lost or cut short).
    pub fn forget(&mut self) {
        self.entries.clear();
        self.entries.shrink_to(8);
        self.size = 0;
        // The encoder's maximum is unknown: keep what the usual one (4096,
        // SETTINGS_HEADER_TABLE_SIZE's default) would. Entries of a larger
        // table dropped by this are unknown, never wrong.
        self.max = DEFAULT_TABLE_SIZE.min(self.cap);
        self.max_known = false;
        self.tail_unknown = true;
    }

    /// Every index the encoder may use resolves to a known entry.
    pub fn is_exact(&self) -> bool {
        !self.tail_unknown && self.entries.iter().all(|e| e.name.is_some())
    }

    /// Octets held by the table and the scratch buffers (heap).
    pub fn memory_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.value.len() + e.name.as_ref().map_or(0, |n| n.len())).sum::<usize>()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.scratch_name.capacity()
            + self.scratch_value.capacity()
    }

    /// The table's size in HPACK's accounting (a lower bound when some
    /// names are unknown).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Number of entries held.
    pub fn table_len(&self) -> usize {
        self.entries.len()
    }

    /// Decodes one complete or cut-short header block, handing every field
    /// to `f` as (name, value); None where the state does not tell.
    pub fn decode(
        &mut self,
        block: &[u8],
        complete: bool,
        mut f: impl FnMut(Option<&[u8]>, Option<&[u8]>),
    ) -> BlockEnd {
        let mut pos = 0;
        let mut first = true;
        while pos < block.len() {
            match self.field(&block[pos..], &mut first, &mut f) {
                Ok(used) => pos += used,
                Err(Fail::Truncated) if !complete => {
                    self.forget();
                    return BlockEnd::Truncated;
                }
                Err(_) => {
                    self.forget();
                    return BlockEnd::Error;
                }
            }
        }
        if !complete {
            // Whatever followed in the uncaptured part may have changed the
            // table.
            self.forget();
            return BlockEnd::Truncated;
        }
        BlockEnd::Complete
    }

    /// The entry at a 1-based index: Ok(None) when it falls in the unknown
    /// tail or is an entry whose name is unknown.
    fn lookup(&self, index: usize) -> Result<Option<Pair<'_>>, Fail> {
        match index {
            0 => Err(Fail::Error),
            1..=61 => Ok(Some(STATIC_TABLE[index - 1])),
            _ => match self.entries.get(index - 62) {
                Some(Entry { name: Some(n), value }) => Ok(Some((n, value))),
                Some(_) => Ok(None),
                None if self.tail_unknown => Ok(None),
                None => Err(Fail::Error),
            },
        }
    }

    /// Decodes the field (or size update) at the start of `b`; returns the
    /// octets it took.
    fn field(
        &mut self,
        b: &[u8],
        first: &mut bool,
        f: &mut impl FnMut(Option<&[u8]>, Option<&[u8]>),
    ) -> Result<usize, Fail> {
        let b0 = b[0];
        if b0 & 0x80 != 0 {
            // Indexed header field.
            let (index, used) = integer(b, 7)?;
            *first = false;
            match self.lookup(index)? {
                Some((n, v)) => f(Some(n), Some(v)),
                None => f(None, None),
            }
            return Ok(used);
        }
        if b0 & 0xe0 == 0x20 {
            // Dynamic table size update: only before the first field.
            let (size, used) = integer(b, 5)?;
            if !*first {
                return Err(Fail::Error);
            }
            self.size_update(size);
            return Ok(used);
        }
        *first = false;
        // Literals: with incremental indexing (01), without (0000), never
        // indexed (0001).
        let (indexing, prefix) = if b0 & 0xc0 == 0x40 { (true, 6) } else { (false, 4) };
        let (name_index, mut used) = integer(b, prefix)?;
        let mut name_known = true;
        if name_index == 0 {
            let (n, len, huffman) = string_header(&b[used..])?;
            used += n;
            let s = b.get(used..used + len).ok_or(Fail::Truncated)?;
            used += len;
            decode_string(s, huffman, &mut self.scratch_name)?;
        } else {
            match self.lookup(name_index)? {
                Some((n, _)) => {
                    let n = n.to_vec();
                    self.scratch_name.clear();
                    self.scratch_name.extend_from_slice(&n);
                }
                None => name_known = false,
            }
        }
        let (n, len, huffman) = string_header(&b[used..])?;
        used += n;
        let s = b.get(used..used + len).ok_or(Fail::Truncated)?;
        used += len;
        decode_string(s, huffman, &mut self.scratch_value)?;
        if name_known {
            f(Some(&self.scratch_name), Some(&self.scratch_value));
        } else {
            f(None, None);
        }
        if indexing {
            let name = if name_known { Some(self.scratch_name[..].into()) } else { None };
            self.insert(Entry { name, value: self.scratch_value[..].into() });
        }
        Ok(used)
    }

    fn evict_to(&mut self, limit: usize) {
        let mut evicted = false;
        while self.size > limit {
            match self.entries.pop_back() {
                Some(e) => {
                    self.size -= e.size();
                    evicted = true;
                }
                None => break,
            }
        }
        if evicted && !self.max_known {
            // Evicted by our cap, not surely by the encoder.
            self.tail_unknown = true;
        }
    }

    /// After a change: is there room left for an entry we do not know of?
    fn settle_tail(&mut self) {
        if self.max_known && self.size + ENTRY_OVERHEAD > self.max {
            self.tail_unknown = false;
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max {
            // RFC 7541 §4.4: the table is emptied; the encoder's too when
            // `max` is exactly its maximum.
            self.entries.clear();
            self.size = 0;
            self.tail_unknown = !self.max_known;
            return;
        }
        self.evict_to(self.max - size);
        self.entries.push_front(entry);
        self.size += size;
        self.settle_tail();
    }

    fn size_update(&mut self, size: usize) {
        if size > self.cap {
            // More than we keep: our table is clipped, its evictions are no
            // longer the encoder's.
            self.max = self.cap;
            self.max_known = false;
            self.evict_to(self.cap);
        } else {
            self.max = size;
            self.max_known = true;
            self.evict_to(size);
            self.settle_tail();
        }
    }
}

/// An HPACK integer with an `n`-bit prefix: (value, octets used).
fn integer(b: &[u8], n: u8) -> Result<(usize, usize), Fail> {
    let mask = (1u32 << n) - 1;
    let first = u32::from(*b.first().ok_or(Fail::Truncated)?) & mask;
    if first < mask {
        return Ok((first as usize, 1));
    }
    let mut value = mask;
    let mut shift = 0u32;
    for (i, &byte) in b.iter().enumerate().skip(1) {
        value += u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value as usize, i + 1));
        }
        shift += 7;
        if shift > 21 {
            // At most 2^28: no header field or table is that large.
            return Err(Fail::Error);
        }
    }
    Err(Fail::Truncated)
}

/// A string literal's header: (octets used, length, Huffman-coded).
fn string_header(b: &[u8]) -> Result<(usize, usize, bool), Fail> {
    let huffman = b.first().ok_or(Fail::Truncated)? & 0x80 != 0;
    let (len, used) = integer(b, 7)?;
    Ok((used, len, huffman))
}

fn decode_string(s: &[u8], huffman: bool, out: &mut Vec<u8>) -> Result<(), Fail> {
    out.clear();
    if huffman {
        huffman_decode(s, out).map_err(|()| Fail::Error)
    } else {
        out.extend_from_slice(s);
        Ok(())
    }
}

/// The Huffman tree: node i has children [2i], [2i+1]; a value with the top
/// bit set is a leaf holding a symbol (256 = EOS).
static HUFFMAN_TREE: LazyLock<Vec<[u16; 2]>> = LazyLock::new(|| {
    const LEAF: u16 = 0x8000;
    let mut nodes: Vec<[u16; 2]> = vec![[0, 0]];
    for (sym, &(code, len)) in HUFFMAN_CODES.iter().enumerate() {
        let mut node = 0usize;
        for i in (0..len).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                nodes[node][bit] = LEAF | sym as u16;
            } else {
                if nodes[node][bit] == 0 {
                    nodes.push([0, 0]);
                    nodes[node][bit] = (nodes.len() - 1) as u16;
                }
                node = usize::from(nodes[node][bit]);
            }
        }
    }
    nodes
});

/// Decodes a Huffman-coded string (RFC 7541 §5.2): Err for an EOS symbol,
/// a code not in the table, or padding that is not a short run of ones.
pub(crate) fn huffman_decode(s: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    const LEAF: u16 = 0x8000;
    let tree = &*HUFFMAN_TREE;
    let mut node = 0usize;
    let mut pending_bits = 0u32;
    let mut pending_ones = true;
    for &byte in s {
        for i in (0..8).rev() {
            let bit = usize::from((byte >> i) & 1);
            let next = tree[node][bit];
            pending_bits += 1;
            pending_ones &= bit == 1;
            if next & LEAF != 0 {
                let sym = next & !LEAF;
                if sym == 256 {
                    return Err(());
                }
                out.push(sym as u8);
                node = 0;
                pending_bits = 0;
                pending_ones = true;
            } else if next == 0 {
                return Err(());
            } else {
                node = usize::from(next);
            }
        }
    }
    if pending_bits > 7 || !pending_ones { Err(()) } else { Ok(()) }
}

/// RFC 7541 Appendix B: (code, bit length) of symbols 0..=256 (256 = EOS).
pub(crate) const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    type Fields = Vec<(Option<String>, Option<String>)>;

    fn fields(d: &mut Decoder, block: &[u8]) -> (BlockEnd, Fields) {
        let mut v = Vec::new();
        let end = d.decode(block, true, |n, val| {
            v.push((
                n.map(|n| String::from_utf8_lossy(n).into_owned()),
                val.map(|x| String::from_utf8_lossy(x).into_owned()),
            ))
        });
        (end, v)
    }

    fn known(pairs: &[(&str, &str)]) -> Fields {
        pairs.iter().map(|(n, v)| (Some(n.to_string()), Some(v.to_string()))).collect()
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(4096);
        let (end, f) = fields(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        assert_eq!(end, BlockEnd::Complete);
        assert_eq!(
            f,
            known(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
        );
        assert_eq!(d.table_size(), 57);
        let (_, f) = fields(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(
            f,
            known(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.table_size(), 110);
        let (_, f) = fields(&mut d, &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"));
        assert_eq!(
            f,
            known(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.table_size(), 164);
        assert!(d.is_exact());
    }

    #[test]
    fn unknown_table_decodes_what_it_can_and_learns() {
        let mut d = Decoder::unknown(65536);
        // Indexed 62 (unknown), static :method GET, literal with indexing
        // of a new name, then index 62 again (now the new entry).
        let mut block = vec![0xbe, 0x82, 0x40, 3, b'a', b'b', b'c', 2, b'x', b'y', 0xbe];
        // Literal with indexing, name from index 63 (the unknown tail).
        block.extend([0x7f, 0x00, 1, b'v']);
        let (end, f) = fields(&mut d, &block);
        assert_eq!(end, BlockEnd::Complete);
        assert_eq!(
            f,
            vec![
                (None, None),
                (Some(":method".into()), Some("GET".into())),
                (Some("abc".into()), Some("xy".into())),
                (Some("abc".into()), Some("xy".into())),
                (None, None),
            ]
        );
        // Now 62 is the unknown-name entry, 63 is abc: xy.
        let (_, f) = fields(&mut d, &[0xbe, 0xbf, 0xc0]);
        assert_eq!(f, vec![(None, None), (Some("abc".into()), Some("xy".into())), (None, None)]);
        assert!(!d.is_exact());
    }

    #[test]
    fn size_update_makes_an_unknown_table_exact_once_full() {
        let mut d = Decoder::unknown(65536);
        // Size update to 100, then two 50-octet entries (name 9 + value 9 +
        // 32): nothing older can fit.
        let mut block = vec![0x3f, 100 - 31];
        for v in [b"valuevalA", b"valuevalB"] {
            block.extend([0x40, 9]);
            block.extend(b"name-name");
            block.push(9);
            block.extend(v);
        }
        let (end, _) = fields(&mut d, &block);
        assert_eq!(end, BlockEnd::Complete);
        assert!(d.is_exact());
        assert_eq!(d.table_len(), 2);
        // An index past the table is now an error, and forgets the table.
        let (end, _) = fields(&mut d, &[0xc0]);
        assert_eq!(end, BlockEnd::Error);
        assert!(!d.is_exact());
    }

    #[test]
    fn size_update_to_zero_empties_and_is_exact() {
        let mut d = Decoder::unknown(65536);
        let (end, _) = fields(&mut d, &[0x20, 0x82]);
        assert_eq!(end, BlockEnd::Complete);
        assert!(d.is_exact());
        assert_eq!(fields(&mut d, &[0x3f, 0xe1, 0x1f, 0x82]).0, BlockEnd::Complete);
    }

    #[test]
    fn size_update_after_a_field_is_an_error() {
        let mut d = Decoder::new(4096);
        assert_eq!(fields(&mut d, &[0x82, 0x20]).0, BlockEnd::Error);
    }

    #[test]
    fn truncated_block_forgets() {
        let mut d = Decoder::new(4096);
        let mut v = Vec::new();
        let end = d.decode(&hex("8286 8441 8cf1 e3c2"), false, |n, val| v.push((n.is_some(), val.is_some())));
        assert_eq!(end, BlockEnd::Truncated);
        assert_eq!(v.len(), 3);
        assert!(!d.is_exact());
    }

    #[test]
    fn eviction_follows_the_encoder() {
        let mut d = Decoder::new(4096);
        // 4096 / (32 + 2 + 60) = 43 entries fit.
        for i in 0..100u8 {
            let mut block = vec![0x40, 2, b'k', i];
            block.push(60);
            block.extend(std::iter::repeat_n(b'v', 60));
            fields(&mut d, &block);
        }
        assert_eq!(d.table_len(), 43);
        assert!(d.table_size() <= 4096);
        let (_, f) = fields(&mut d, &[0x80 | 62]);
        assert_eq!(f[0].0.as_deref().map(|n| n.as_bytes()[1]), Some(99));
        assert!(d.is_exact());
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // "www.example.com"
        assert!(huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), &mut out).is_ok());
        assert_eq!(out, b"www.example.com");
        out.clear();
        // Padding of zeros.
        assert!(huffman_decode(&[0xf1, 0xe0], &mut out).is_err());
        // EOS (30 ones) inside.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out).is_err());
    }

    #[test]
    fn huffman_table_is_a_prefix_code() {
        let tree = &*HUFFMAN_TREE;
        assert_eq!(tree.len(), 256);
    }

    #[test]
    fn integers() {
        assert!(matches!(integer(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3))));
        assert!(matches!(integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x01], 5), Err(Fail::Error)));
        assert!(matches!(integer(&[0x1f, 0xff], 5), Err(Fail::Truncated)));
    }
}
