//! Rust mirrors of `include/pmoas_types.h`. Keep both in step: the size
//! assertions here and the `_Static_assert`s there catch a layout that moved
//! on one side only.

#![allow(missing_docs)]

use std::mem::size_of;

/// Number of log2 slots of [`Log2Hist`] (`PMOAS_HIST_SLOTS`).
pub const HIST_SLOTS: usize = 48;

/// Default map sizes, as compiled into the objects.
pub const SOCKET_CONN_MAP_SIZE: u32 = 65536;
pub const SOCKET_PENDING_MAP_SIZE: u32 = 65536;
pub const SOCKET_COUNTER_MAP_SIZE: u32 = 16384;
pub const SOCKET_HIST_MAP_SIZE: u32 = 16384;
pub const LOCAL_ADDR_MAP_SIZE: u32 = 4096;
pub const TARGET_MAP_SIZE: u32 = 16384;
pub const CGROUP_COUNTER_MAP_SIZE: u32 = 4096;

/// The `const volatile` that turns the kernel's target filter on.
pub const FILTER_TARGETS_GLOBAL: &str = "pmoas_filter_targets";

/// Reasons indexed in every object's `lost_events` per-CPU array, in order.
/// The names are the `reason` label of `pmoas_ebpf_events_lost_total`.
pub const LOST_REASONS: [&str; 4] =
    ["aggregation_map_full", "connection_map_full", "pending_map_full", "local_addr_map_full"];
// Every reason needs a slot of the `lost_events` array (PMOAS_LOST_REASONS).
const _: () = assert!(LOST_REASONS.len() <= 8);

pub const PEER_NONE: u8 = 0;
pub const PEER_CGROUP: u8 = 1;
pub const PEER_SAME_NETNS: u8 = 2;
pub const PEER_NODE: u8 = 3;
pub const PEER_REMOTE: u8 = 4;

pub const HIST_CONNECT: u8 = 0;
pub const HIST_ACCEPT_WAIT: u8 = 1;
pub const HIST_LIFETIME_OUTBOUND: u8 = 2;
pub const HIST_LIFETIME_INBOUND: u8 = 3;

/// `struct pmoas_log2_hist`: slot i counts samples with floor(log2(ns)) == i.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    pub slots: [u64; HIST_SLOTS],
    pub sum_ns: u64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Self { slots: [0; HIST_SLOTS], sum_ns: 0 }
    }
}

impl Log2Hist {
    /// Adds another histogram (another CPU's copy) into this one.
    pub fn merge(&mut self, other: &Log2Hist) {
        for (a, b) in self.slots.iter_mut().zip(other.slots.iter()) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }

    /// Number of samples (the kernel keeps no separate count).
    pub fn count(&self) -> u64 {
        self.slots.iter().sum()
    }
}

/// `struct pmoas_socket_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketKey {
    pub cgroup_id: u64,
    pub peer_cgroup_id: u64,
    pub peer_class: u8,
    pub hist_kind: u8,
    pub pad: [u8; 6],
}

/// `struct pmoas_socket_counters`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketCounters {
    pub connects: u64,
    pub connect_failures: u64,
    pub accepts: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}

impl SocketCounters {
    /// Adds another set of counters (another CPU's copy) into this one.
    pub fn merge(&mut self, o: &SocketCounters) {
        self.connects += o.connects;
        self.connect_failures += o.connect_failures;
        self.accepts += o.accepts;
        self.sent_bytes += o.sent_bytes;
        self.received_bytes += o.received_bytes;
        self.retransmits += o.retransmits;
        self.resets_sent += o.resets_sent;
        self.resets_received += o.resets_received;
    }
}

/// `struct pmoas_cgroup_counters`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    pub net_rx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_bytes: u64,
    pub net_tx_packets: u64,
    pub fs_read_bytes: u64,
    pub fs_reads: u64,
    pub fs_write_bytes: u64,
    pub fs_writes: u64,
    pub oom_kills: u64,
}

impl CgroupCounters {
    /// Adds another set of counters (another CPU's copy) into this one.
    pub fn merge(&mut self, o: &CgroupCounters) {
        self.net_rx_bytes += o.net_rx_bytes;
        self.net_rx_packets += o.net_rx_packets;
        self.net_tx_bytes += o.net_tx_bytes;
        self.net_tx_packets += o.net_tx_packets;
        self.fs_read_bytes += o.fs_read_bytes;
        self.fs_reads += o.fs_reads;
        self.fs_write_bytes += o.fs_write_bytes;
        self.fs_writes += o.fs_writes;
        self.oom_kills += o.oom_kills;
    }
}

const _: () = assert!(size_of::<Log2Hist>() == 392);
const _: () = assert!(size_of::<CgroupCounters>() == 72);
const _: () = assert!(size_of::<SocketKey>() == 24);
const _: () = assert!(size_of::<SocketCounters>() == 64);

// SAFETY: plain-old-data, `repr(C)`, no padding the kernel could leave
// uninitialised that Rust would read as anything but bytes.
unsafe impl aya::Pod for Log2Hist {}
unsafe impl aya::Pod for SocketKey {}
unsafe impl aya::Pod for SocketCounters {}
unsafe impl aya::Pod for CgroupCounters {}
