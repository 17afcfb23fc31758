//! Rust mirrors of `include/pmoas_netstack.h`, the netstack collector's
//! contract with `src/netstack.bpf.c`. Sizes and field offsets are asserted
//! against the numbers in the header's comments.

#![allow(missing_docs)]

use core::mem::{offset_of, size_of};

use crate::types::c;

pub const PACKET_MAP_SIZE: u32 = c::PMOAS_NETSTACK_PACKET_MAP_SIZE as u32;
pub const SEND_MAP_SIZE: u32 = c::PMOAS_NETSTACK_SEND_MAP_SIZE as u32;
/// `netstack_filter`: sets per kind, addresses per set; `netstack_filter_busy`
/// holds one bit per set (`[u64; FILTER_SETS / 64]` per kind).
pub const FILTER_SETS: usize = c::PMOAS_NETSTACK_FILTER_SETS as usize;
pub const FILTER_WAYS: usize = c::PMOAS_NETSTACK_FILTER_WAYS as usize;
pub const STAGE_MAP_SIZE: u32 = c::PMOAS_NETSTACK_STAGE_MAP_SIZE as u32;
pub const DROP_MAP_SIZE: u32 = c::PMOAS_NETSTACK_DROP_MAP_SIZE as u32;
pub const CONN_MAP_SIZE: u32 = c::PMOAS_NETSTACK_CONN_MAP_SIZE as u32;
pub const PENDING_MAP_SIZE: u32 = c::PMOAS_NETSTACK_PENDING_MAP_SIZE as u32;
pub const RTT_MAP_SIZE: u32 = c::PMOAS_NETSTACK_RTT_MAP_SIZE as u32;
pub const LOCAL_ADDR_MAP_SIZE: u32 = c::PMOAS_NETSTACK_LOCAL_ADDR_MAP_SIZE as u32;

pub const DIR_INGRESS: u32 = c::PMOAS_DIR_INGRESS as u32;
pub const DIR_EGRESS: u32 = c::PMOAS_DIR_EGRESS as u32;

pub const STAGE_DEVICE_RECEIVE: u32 = c::PMOAS_STAGE_DEVICE_RECEIVE as u32;
pub const STAGE_TCP_RECEIVE: u32 = c::PMOAS_STAGE_TCP_RECEIVE as u32;
pub const STAGE_SOCKET_QUEUE: u32 = c::PMOAS_STAGE_SOCKET_QUEUE as u32;
pub const STAGE_APP_READ: u32 = c::PMOAS_STAGE_APP_READ as u32;
pub const STAGE_APP_SEND: u32 = c::PMOAS_STAGE_APP_SEND as u32;
pub const STAGE_DEV_QUEUE: u32 = c::PMOAS_STAGE_DEV_QUEUE as u32;
pub const STAGE_DEV_START_XMIT: u32 = c::PMOAS_STAGE_DEV_START_XMIT as u32;
pub const STAGE_DEV_XMIT: u32 = c::PMOAS_STAGE_DEV_XMIT as u32;

/// The `stage` label of each `PMOAS_STAGE_*`, by value.
pub const STAGE_NAMES: [&str; 8] = [
    "device_receive",
    "tcp_receive",
    "socket_queue",
    "app_read",
    "app_send",
    "dev_queue",
    "dev_start_xmit",
    "dev_xmit",
];

/// The collector's lost-event reasons, slot `i` of `lost_events` being
/// reason `i` (`PMOAS_NETSTACK_LOST_*`; slot 0 is pmoas_common.h's
/// `PMOAS_LOST_AGGREGATION_MAP_FULL`). `packet_map_evicted` is not a slot:
/// user space computes it (see the header).
pub const LOST_REASONS: [&str; 6] = [
    "aggregation_map_full",
    "connection_map_full",
    "pending_map_full",
    "local_addr_map_full",
    "send_map_full",
    "journey_ring_full",
];

pub const STAT_TRACKED: u32 = c::PMOAS_NETSTACK_STAT_TRACKED as u32;
pub const STAT_FINISHED: u32 = c::PMOAS_NETSTACK_STAT_FINISHED as u32;
pub const STAT_LEFT_PATH: u32 = c::PMOAS_NETSTACK_STAT_LEFT_PATH as u32;

/// `struct pmoas_netstack_sampler`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sampler {
    pub rate: u32,
    pub tick: u32,
}

/// `struct pmoas_netstack_cpu`: per-CPU value of `netstack_cpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    pub trace: Sampler,
    pub rx_skb: u64,
    pub rx_sk: u64,
    pub scratch: u64,
}

/// `struct pmoas_netstack_pkt_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PktKey {
    pub skb: u64,
    pub direction: u32,
    pub pad: u32,
}

/// `struct pmoas_netstack_pkt`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pkt {
    pub ts_ns: u64,
    pub netns: u64,
    pub stage: u32,
    pub traced: u32,
    pub stage_ts: [u64; 4],
}

/// `struct pmoas_netstack_journey`: a traced packet's stage times.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Journey {
    pub netns: u64,
    pub ts_ns: [u64; 8],
    pub direction: u32,
    pub pad: u32,
}

impl Journey {
    /// A record read from the `netstack_journeys` ring buffer; `None` when
    /// it is shorter than a journey.
    pub fn from_bytes(b: &[u8]) -> Option<Journey> {
        if b.len() < size_of::<Journey>() {
            return None;
        }
        // SAFETY: `Journey` is plain data of that many bytes; any bit
        // pattern is a valid value; read_unaligned needs no alignment.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Journey>()) })
    }
}

/// `struct pmoas_netstack_stage_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageKey {
    pub netns: u64,
    pub direction: u32,
    pub stage: u32,
}

/// `struct pmoas_netstack_drop_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    pub netns: u64,
    pub reason: u32,
    pub pad: u32,
}

/// `struct pmoas_netstack_rtt_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RttKey {
    pub cgroup_id: u64,
    pub peer_cgroup_id: u64,
    pub peer_class: u8,
    pub pad: [u8; 7],
}

const _: () = {
    assert!(size_of::<Sampler>() == 8);
    assert!(offset_of!(Sampler, rate) == 0);
    assert!(offset_of!(Sampler, tick) == 4);
    assert!(FILTER_SETS.is_multiple_of(64));
    assert!(size_of::<Cpu>() == 32);
    assert!(offset_of!(Cpu, rx_skb) == 8);
    assert!(offset_of!(Cpu, rx_sk) == 16);
    assert!(offset_of!(Cpu, scratch) == 24);
    assert!(size_of::<PktKey>() == 16);
    assert!(offset_of!(PktKey, skb) == 0);
    assert!(offset_of!(PktKey, direction) == 8);
    assert!(offset_of!(PktKey, pad) == 12);
    assert!(size_of::<Pkt>() == 56);
    assert!(offset_of!(Pkt, ts_ns) == 0);
    assert!(offset_of!(Pkt, netns) == 8);
    assert!(offset_of!(Pkt, stage) == 16);
    assert!(offset_of!(Pkt, traced) == 20);
    assert!(offset_of!(Pkt, stage_ts) == 24);
    assert!(size_of::<Journey>() == 80);
    assert!(offset_of!(Journey, ts_ns) == 8);
    assert!(offset_of!(Journey, direction) == 72);
    assert!(size_of::<StageKey>() == 16);
    assert!(offset_of!(StageKey, netns) == 0);
    assert!(offset_of!(StageKey, direction) == 8);
    assert!(offset_of!(StageKey, stage) == 12);
    assert!(size_of::<DropKey>() == 16);
    assert!(offset_of!(DropKey, netns) == 0);
    assert!(offset_of!(DropKey, reason) == 8);
    assert!(offset_of!(DropKey, pad) == 12);
    assert!(size_of::<RttKey>() == 24);
    assert!(offset_of!(RttKey, cgroup_id) == 0);
    assert!(offset_of!(RttKey, peer_cgroup_id) == 8);
    assert!(offset_of!(RttKey, peer_class) == 16);
    assert!(offset_of!(RttKey, pad) == 17);
    assert!(LOST_REASONS.len() == c::PMOAS_NETSTACK_LOST_REASONS as usize);
    assert!(LOST_REASONS.len() <= crate::types::LOST_REASON_SLOTS);
    assert!(c::PMOAS_NETSTACK_LOST_CONN_MAP_FULL == 1 && c::PMOAS_NETSTACK_LOST_SEND_MAP_FULL == 4);
    assert!(c::PMOAS_LOST_AGGREGATION_MAP_FULL == 0);
    assert!(STAGE_NAMES.len() == c::PMOAS_STAGE_DEV_XMIT as usize + 1);
};

// SAFETY: plain-old-data, `repr(C)`, explicit padding only.
unsafe impl aya::Pod for Sampler {}
unsafe impl aya::Pod for Cpu {}
unsafe impl aya::Pod for PktKey {}
unsafe impl aya::Pod for Pkt {}
unsafe impl aya::Pod for StageKey {}
unsafe impl aya::Pod for DropKey {}
unsafe impl aya::Pod for RttKey {}

/// Every mirrored struct of pmoas_netstack.h; `tests/contract.rs`
/// compares them with the BTF of netstack.bpf.o, field by field.
pub const LAYOUTS: &[crate::types::Layout] = &[
    crate::layout!("pmoas_netstack_sampler", Sampler, rate, tick),
    crate::layout!("pmoas_netstack_cpu", Cpu, trace, rx_skb, rx_sk, scratch),
    crate::layout!("pmoas_netstack_pkt_key", PktKey, skb, direction, pad),
    crate::layout!("pmoas_netstack_pkt", Pkt, ts_ns, netns, stage, traced, stage_ts),
    crate::layout!("pmoas_netstack_journey", Journey, netns, ts_ns, direction, pad),
    crate::layout!("pmoas_netstack_stage_key", StageKey, netns, direction, stage),
    crate::layout!("pmoas_netstack_drop_key", DropKey, netns, reason, pad),
    crate::layout!("pmoas_netstack_rtt_key", RttKey, cgroup_id, peer_cgroup_id, peer_class, pad),
];
