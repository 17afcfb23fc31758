//! Rust mirrors of `include/pmoas_sockops.h`, the sockops collector's
//! contract with `src/sockops.bpf.c` (socket-redirect acceleration). Sizes
//! and field offsets are asserted here against the header's numbers, and
//! against the object's BTF in `tests/contract.rs`.

#![allow(missing_docs)]

use core::mem::{offset_of, size_of};

use crate::types::c;

pub const SOCKHASH_SIZE: u32 = c::PMOAS_SOCKOPS_SOCKHASH_SIZE as u32;
pub const LOCAL_SYN_MAP_SIZE: u32 = c::PMOAS_SOCKOPS_LOCAL_SYN_MAP_SIZE as u32;
pub const PAIR_MAP_SIZE: u32 = c::PMOAS_SOCKOPS_PAIR_MAP_SIZE as u32;
pub const COUNTER_MAP_SIZE: u32 = c::PMOAS_SOCKOPS_COUNTER_MAP_SIZE as u32;
pub const CLOSED_BYTES_MAP_SIZE: u32 = c::PMOAS_SOCKOPS_CLOSED_BYTES_MAP_SIZE as u32;
pub const EXCLUDED_PORT_MAP_SIZE: u32 = c::PMOAS_SOCKOPS_EXCLUDED_PORT_MAP_SIZE as u32;
pub const EXCLUDED_CIDR_MAP_SIZE: u32 = c::PMOAS_SOCKOPS_EXCLUDED_CIDR_MAP_SIZE as u32;

pub const SIDE_ACTIVE: u8 = c::PMOAS_SOCKOPS_ACTIVE as u8;
pub const SIDE_PASSIVE: u8 = c::PMOAS_SOCKOPS_PASSIVE as u8;
pub const FLAG_IN_MAP: u32 = c::PMOAS_SOCKOPS_IN_MAP as u32;
pub const FLAG_VIA_TCP: u32 = c::PMOAS_SOCKOPS_VIA_TCP as u32;
pub const MAX_QUEUED_DEFAULT: u64 = c::PMOAS_SOCKOPS_MAX_QUEUED_DEFAULT;
/// The `const volatile` cap on unread bytes per connection and direction.
pub const MAX_QUEUED_GLOBAL: &str = "pmoas_sockops_max_queued";
pub const PROG_RECV_LENGTH: &str = "sockops_recv_length";

/// Map and program names in `sockops.bpf.o` (Aya finds programs by function name).
pub const PROG_SOCK_OPS: &str = "sockops_established";
pub const PROG_SK_MSG: &str = "sockops_redirect";
pub const PROG_SYN_EGRESS: &str = "sockops_syn_egress";
pub const MAP_SOCKHASH: &str = "sockops_hash";
pub const MAP_COUNTERS: &str = "sockops_counters";
pub const MAP_PAIRS: &str = "sockops_pairs";
pub const MAP_LOCAL_SYN: &str = "sockops_local_syn";
/// Bytes of closed redirected connections, keyed like `socket_counters`.
pub const MAP_CLOSED_BYTES: &str = "sockops_closed_bytes";
pub const MAP_EXCLUDED_PORTS: &str = "sockops_excluded_ports";
pub const MAP_EXCLUDED_CIDRS: &str = "sockops_excluded_cidrs";

/// The sockops programs' lost-event reasons, in slot order.
pub const LOST_REASONS: [&str; 4] = ["aggregation_map_full", "sockhash_full", "socket_storage", "pair_map_full"];
const _: () = {
    assert!(c::PMOAS_LOST_AGGREGATION_MAP_FULL == 0);
    assert!(c::PMOAS_LOST_SOCKOPS_SOCKHASH_FULL == 1);
    assert!(c::PMOAS_LOST_SOCKOPS_STORAGE == 2);
    assert!(c::PMOAS_LOST_SOCKOPS_PAIR_MAP_FULL == 3);
};

/// `struct pmoas_sockops_key`: a connection's client endpoint, its network
/// namespace cookie, and which end (`side`) a socket is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockopsKey {
    pub netns: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub side: u8,
    pub pad: [u8; 5],
}

/// `struct pmoas_sockops_sock`: the socket storage of a redirected socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockopsSock {
    pub key: SockopsKey,
    pub peer: SockopsKey,
    pub conn: SockopsKey,
    pub cgroup_id: u64,
    pub misses: u64,
    pub flags: u32,
    pub pad: u32,
}

/// `struct pmoas_sockops_pair`: one connection, index 0 the active end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockopsPair {
    pub cgroup_id: [u64; 2],
    pub sent_messages: [u64; 2],
    pub sent_bytes: [u64; 2],
    pub tcp_bytes: [u64; 2],
    pub read_bytes: [u64; 2],
    pub refs: u32,
    pub pad: u32,
}

/// `struct pmoas_sockops_counters`: per cgroup, per CPU (sum them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockopsCounters {
    pub sockets_added: u64,
    pub sockets_removed: u64,
    pub redirected_messages: u64,
    pub redirected_bytes: u64,
    pub redirected_received_bytes: u64,
    pub misses: u64,
    pub miss_bytes: u64,
    pub insert_errors: u64,
    pub overflows: u64,
    pub closed_sent_bytes: u64,
    pub closed_received_bytes: u64,
}

impl SockopsCounters {
    /// Sockets in the SOCKHASH now (`pmoas_sockops_active_sockets`).
    pub fn active_sockets(&self) -> u64 {
        self.sockets_added.saturating_sub(self.sockets_removed)
    }

    /// Adds another CPU's (or cgroup's) counters.
    pub fn add(&mut self, o: &SockopsCounters) {
        self.sockets_added += o.sockets_added;
        self.sockets_removed += o.sockets_removed;
        self.redirected_messages += o.redirected_messages;
        self.redirected_bytes += o.redirected_bytes;
        self.redirected_received_bytes += o.redirected_received_bytes;
        self.misses += o.misses;
        self.miss_bytes += o.miss_bytes;
        self.insert_errors += o.insert_errors;
        self.overflows += o.overflows;
        self.closed_sent_bytes += o.closed_sent_bytes;
        self.closed_received_bytes += o.closed_received_bytes;
    }
}

/// `struct pmoas_sockops_cidr`: key of the excluded-CIDR LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockopsCidr {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

impl SockopsCidr {
    /// An IPv4 or IPv6 network as the trie keys it (IPv4 as ::ffff:a.b.c.d/(96+n)).
    pub fn new(addr: std::net::IpAddr, prefix: u8) -> Option<SockopsCidr> {
        match addr {
            std::net::IpAddr::V4(v4) if prefix <= 32 => {
                Some(SockopsCidr { prefixlen: 96 + u32::from(prefix), addr: v4.to_ipv6_mapped().octets() })
            }
            std::net::IpAddr::V6(v6) if prefix <= 128 => {
                Some(SockopsCidr { prefixlen: u32::from(prefix), addr: v6.octets() })
            }
            _ => None,
        }
    }
}

// SAFETY (all four): plain C data, every bit pattern valid, no padding the
// kernel could leave uninitialised that Rust would read as a reference.
unsafe impl aya::Pod for SockopsKey {}
unsafe impl aya::Pod for SockopsPair {}
unsafe impl aya::Pod for SockopsCounters {}
unsafe impl aya::Pod for SockopsCidr {}

const _: () = {
    assert!(size_of::<SockopsKey>() == 32);
    assert!(offset_of!(SockopsKey, port) == 24);
    assert!(offset_of!(SockopsKey, side) == 26);
    assert!(size_of::<SockopsSock>() == 120);
    assert!(offset_of!(SockopsSock, cgroup_id) == 96);
    assert!(offset_of!(SockopsSock, flags) == 112);
    assert!(size_of::<SockopsPair>() == 88);
    assert!(offset_of!(SockopsPair, refs) == 80);
    assert!(size_of::<SockopsCounters>() == 88);
    assert!(size_of::<SockopsCidr>() == 20);
};

/// The sockops programs' structs, for `tests/contract.rs`.
pub const LAYOUTS: &[crate::types::Layout] = &[
    crate::layout!("pmoas_sockops_key", SockopsKey, netns, addr, port, side, pad),
    crate::layout!("pmoas_sockops_sock", SockopsSock, key, peer, conn, cgroup_id, misses, flags, pad),
    crate::layout!(
        "pmoas_sockops_pair",
        SockopsPair,
        cgroup_id,
        sent_messages,
        sent_bytes,
        tcp_bytes,
        read_bytes,
        refs,
        pad
    ),
    crate::layout!(
        "pmoas_sockops_counters",
        SockopsCounters,
        sockets_added,
        sockets_removed,
        redirected_messages,
        redirected_bytes,
        redirected_received_bytes,
        misses,
        miss_bytes,
        insert_errors,
        overflows,
        closed_sent_bytes,
        closed_received_bytes
    ),
    crate::layout!("pmoas_sockops_cidr", SockopsCidr, prefixlen, addr),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_key_like_the_kernel_side() {
        let c = SockopsCidr::new("10.96.0.0".parse().unwrap(), 12).unwrap();
        assert_eq!(c.prefixlen, 108);
        assert_eq!(&c.addr[10..], &[0xff, 0xff, 10, 96, 0, 0]);
        assert!(SockopsCidr::new("10.0.0.0".parse().unwrap(), 33).is_none());
        assert_eq!(SockopsCidr::new("::1".parse().unwrap(), 128).unwrap().prefixlen, 128);
    }

    #[test]
    fn active_sockets_never_go_negative() {
        let mut a = SockopsCounters { sockets_added: 3, sockets_removed: 1, ..Default::default() };
        assert_eq!(a.active_sockets(), 2);
        a.add(&SockopsCounters { sockets_removed: 5, ..Default::default() });
        assert_eq!(a.active_sockets(), 0);
    }
}
