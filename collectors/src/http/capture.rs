//! The http collector's capture: loads `http.bpf.c`, keeps its watched
//! cgroups in step with the workloads to observe, and turns the ring
//! buffer's records into [`Event`]s — the socket reads and writes of HTTP
//! connections (the first `HTTP1_CAPTURE_BYTES` bytes of each on HTTP/1,
//! up to `CALL_CAPTURE_BYTES` on HTTP/2 in records of `CAPTURE_BYTES`: a
//! call's first record, then its continuation records, which the tracker
//! stitches back together; with the call's length and times) and the
//! closes of those connections.
//!
//! What the kernel leaves out, by design: sockets other than TCP, calls of
//! unwatched cgroups, connections whose first chunks are not HTTP/1 or
//! HTTP/2 (decided once per connection), and beyond the capture size the
//! bytes themselves (their number is kept). What it could not record is
//! counted by reason ([`pmoas_bpf::http::LOST_REASONS`]).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use pmoas_bpf::http::{self as h, EventHeader};
use pmoas_discovery::health::Health;

use crate::ebpf::{self, Hook, LoadedObject, LostEvents, ProgramSpec, ProgramStatus};

const fn tp(program: &'static str, name: &'static str) -> ProgramSpec {
    ProgramSpec {
        program,
        hook: Hook::TracePoint { category: "syscalls", name },
        fallback_for: None,
        feature: "requests",
    }
}

/// The programs of http.bpf.c, in attach order: exits before entries, so
/// that no entry is kept for an exit that is not watched yet.
pub const PROGRAMS: &[ProgramSpec] = &[
    tp("http_read_exit", "sys_exit_read"),
    tp("http_recvfrom_exit", "sys_exit_recvfrom"),
    tp("http_write_exit", "sys_exit_write"),
    tp("http_sendto_exit", "sys_exit_sendto"),
    tp("http_readv_exit", "sys_exit_readv"),
    tp("http_writev_exit", "sys_exit_writev"),
    tp("http_recvmsg_exit", "sys_exit_recvmsg"),
    tp("http_sendmsg_exit", "sys_exit_sendmsg"),
    ProgramSpec {
        program: "http_close",
        hook: Hook::BtfTracePoint { name: "inet_sock_set_state" },
        fallback_for: None,
        feature: "requests",
    },
];

/// Which way bytes went, seen from the process that made the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read them.
    Ingress,
    /// The process wrote them.
    Egress,
}

/// What the kernel took the connection to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Http1,
    Http2,
}

/// A connection's ends, as its socket has them (a REDIRECTed connect
/// keeps its original destination as `remote`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Network namespace inode: loopback addresses repeat in every pod.
    pub netns: u32,
}

impl Endpoints {
    fn of(h: &EventHeader) -> Endpoints {
        Endpoints {
            local: SocketAddr::new(ip(h.saddr), h.sport),
            remote: SocketAddr::new(ip(h.daddr), h.dport),
            netns: h.netns,
        }
    }
}

/// 16 bytes as the kernel side writes them, IPv4 as ::ffff:a.b.c.d.
fn ip(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// One read or write of a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The kernel's struct sock address: the connection, while it lives.
    pub sock: u64,
    /// Sent until a chunk of the connection carrying them has reached the
    /// ring (they do not change): user space keeps them per socket.
    pub endpoints: Option<Endpoints>,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// Entry and exit of the call, CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub direction: Direction,
    pub proto: Proto,
    /// `read`, `writev`, ... (`CALL_NAMES`).
    pub call: &'static str,
    /// Bytes the call moved.
    pub total_len: u32,
    /// The call's number in its connection and direction (a gap: a call
    /// whose first record the ring buffer could not take). A call's
    /// continuation records carry its number too.
    pub seq: u32,
    /// 0: the call's first record; k: its k-th continuation record, whose
    /// `data` starts at byte k × `CAPTURE_BYTES` of the call (every record
    /// but a call's last is full).
    pub part: u8,
    /// More records of this call follow.
    pub more: bool,
    /// Its bytes: the call's first (up to `CAPTURE_BYTES`), or, in a
    /// continuation record, the next ones.
    pub data: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Data(Chunk<'a>),
    /// The connection closed (TCP state CLOSE).
    Close {
        sock: u64,
        endpoints: Endpoints,
        cgroup_id: u64,
        at_ns: u64,
    },
}

impl<'a> Event<'a> {
    /// One ring record; None for one that does not parse (a build
    /// mismatch), which the caller counts.
    pub fn parse(record: &'a [u8]) -> Option<Event<'a>> {
        let (hd, data) = EventHeader::parse(record)?;
        if hd.kind == h::EVENT_CLOSE {
            return Some(Event::Close {
                sock: hd.sock,
                endpoints: Endpoints::of(&hd),
                cgroup_id: hd.cgroup_id,
                at_ns: hd.end_ns,
            });
        }
        let direction = match hd.direction {
            h::DIR_INGRESS => Direction::Ingress,
            h::DIR_EGRESS => Direction::Egress,
            _ => return None,
        };
        let proto = match hd.proto {
            h::PROTO_HTTP1 => Proto::Http1,
            h::PROTO_HTTP2 => Proto::Http2,
            _ => return None,
        };
        Some(Event::Data(Chunk {
            sock: hd.sock,
            endpoints: (hd.flags & h::FLAG_ENDPOINTS != 0).then(|| Endpoints::of(&hd)),
            cgroup_id: hd.cgroup_id,
            tgid: hd.tgid,
            tid: hd.tid,
            start_ns: hd.start_ns,
            end_ns: hd.end_ns,
            direction,
            proto,
            call: h::CALL_NAMES.get(usize::from(hd.call))?,
            total_len: hd.total_len,
            seq: hd.seq,
            part: hd.part,
            more: hd.flags & h::FLAG_MORE != 0,
            data,
        }))
    }
}

/// The ring buffer and the watched cgroups (and, when started on its own,
/// the loaded programs).
pub struct Capture {
    ring: RingBuf<MapData>,
    watched: BpfHashMap<MapData, u64, u8>,
    in_map: HashSet<u64>,
    // Dropping it detaches the programs; kept by a capture started alone.
    own: Option<(LoadedObject, LostEvents)>,
    /// Records that did not parse.
    pub malformed: u64,
}

impl Capture {
    /// Loads and attaches the programs on its own (those that can: see
    /// [`Capture::programs`]); the collector loads them through its
    /// `Kernel` and uses [`Capture::from_maps`].
    pub fn start(health: &Health) -> anyhow::Result<Capture> {
        let mut loaded = ebpf::load("http", pmoas_bpf::HTTP, &[], PROGRAMS, None, health, &Default::default())?;
        let mut take = |name: &str| {
            loaded.ebpf.take_map(name).ok_or_else(|| anyhow::anyhow!("map {name} missing from the http object"))
        };
        let ring = RingBuf::try_from(take("http_events")?)?;
        let watched = BpfHashMap::try_from(take("http_watched")?)?;
        let lost = LostEvents::take("http", &mut loaded.ebpf, &h::LOST_REASONS)?;
        let mut capture = Capture::from_maps(ring, watched);
        capture.own = Some((loaded, lost));
        Ok(capture)
    }

    /// Over the maps of programs loaded elsewhere.
    pub fn from_maps(ring: RingBuf<MapData>, watched: BpfHashMap<MapData, u64, u8>) -> Capture {
        Capture { ring, watched, in_map: HashSet::new(), own: None, malformed: 0 }
    }

    /// The programs, when started on its own.
    pub fn programs(&self) -> &[ProgramStatus] {
        self.own.as_ref().map_or(&[], |(l, _)| &l.programs)
    }

    /// Makes the watched cgroups exactly `ids` (as many as the map holds;
    /// returns how many were left out).
    pub fn watch(&mut self, ids: &HashSet<u64>) -> usize {
        let gone: Vec<u64> = self.in_map.difference(ids).copied().collect();
        for id in gone {
            let _ = self.watched.remove(&id);
            self.in_map.remove(&id);
        }
        let new: Vec<u64> = ids.difference(&self.in_map).copied().collect();
        let mut left_out = 0;
        for id in new {
            if self.watched.insert(id, 1, 0).is_ok() {
                self.in_map.insert(id);
            } else {
                left_out += 1;
            }
        }
        left_out
    }

    /// Hands every record waiting in the ring to `f`.
    pub fn drain(&mut self, mut f: impl FnMut(Event<'_>)) {
        while let Some(record) = self.ring.next() {
            match Event::parse(&record) {
                Some(e) => f(e),
                None => self.malformed += 1,
            }
        }
    }

    /// Events the kernel could not record, by reason (summed over CPUs),
    /// when started on its own.
    pub fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        match &self.own {
            Some((_, lost)) => lost.totals(),
            None => Ok(Vec::new()),
        }
    }
}

/// The cgroup v2 id of a cgroup directory (its inode), as
/// `bpf_get_current_cgroup_id()` returns it.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.ino())
}
