/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The netstack collector's contract between netstack.bpf.c and user space
 * (collectors/src/netstack.rs, mirrored in bpf-programs/src/netstack.rs):
 * map sizes, stages, lost-event slots, key and value layouts. Offsets are
 * written next to each field; the Rust mirror asserts them with offset_of!.
 */
#ifndef PMOAS_NETSTACK_H
#define PMOAS_NETSTACK_H

#include "pmoas_types.h"

/* ---- map sizes (user space may change them with set_max_entries) ---- */

/* Sampled skbs between two stages (LRU: the oldest goes when it is full,
 * counted as packet_map_evicted). At 1-in-64 sampling a few hundred are in
 * flight; the rest of the room absorbs skbs that left the traced path. */
#define PMOAS_NETSTACK_PACKET_MAP_SIZE 16384
/* Sockets with a sampled send not yet handed to a device. */
#define PMOAS_NETSTACK_SEND_MAP_SIZE 16384
/* Sockets with a followed segment queued, not read yet. */
#define PMOAS_NETSTACK_QUEUED_MAP_SIZE 16384
/* netstack_filter: per kind (ingress skb, egress skb, socket with a send)
 * PMOAS_NETSTACK_FILTER_SETS sets of PMOAS_NETSTACK_FILTER_WAYS addresses
 * of what is followed; an object's set is chosen by hashing its address.
 * The hooks pass over the many unsampled packets with one read of one set
 * (a cache line) instead of a hash lookup. Small on purpose, to stay in
 * the CPU caches (3 x 16 KiB): at the default sampling a few hundred
 * objects at most are followed at once. */
#define PMOAS_NETSTACK_FILTER_SETS 256
#define PMOAS_NETSTACK_FILTER_WAYS 8
/* (netns, direction, stage) latency histograms. */
#define PMOAS_NETSTACK_STAGE_MAP_SIZE 4096
/* (netns, drop reason) counters. */
#define PMOAS_NETSTACK_DROP_MAP_SIZE 4096
/* Open TCP sockets whose peer is known (for the RTT's peer label). */
#define PMOAS_NETSTACK_CONN_MAP_SIZE 65536
/* Client ends waiting for their server end to be established. */
#define PMOAS_NETSTACK_PENDING_MAP_SIZE 65536
/* (cgroup, peer) RTT histograms. */
#define PMOAS_NETSTACK_RTT_MAP_SIZE 16384
/* Addresses of this node, learnt from established sockets. */
#define PMOAS_NETSTACK_LOCAL_ADDR_MAP_SIZE 4096
/* Bytes of the ring buffer that carries journeys (80 bytes each) to user
 * space, drained every 100 ms: room for ~3,000 at once. */
#define PMOAS_NETSTACK_JOURNEY_RING_BYTES 262144

/* ---- stages: a histogram is the time from the previous stage to this one */
#define PMOAS_DIR_INGRESS 0
#define PMOAS_DIR_EGRESS 1
#define PMOAS_DIR_SEND 2 /* netstack_filter tag of a socket with a sampled send */

#define PMOAS_STAGE_DEVICE_RECEIVE 0 /* net:netif_receive_skb (first: no latency) */
#define PMOAS_STAGE_TCP_RECEIVE 1    /* tcp:tcp_probe */
#define PMOAS_STAGE_SOCKET_QUEUE 2   /* sock:sk_data_ready */
#define PMOAS_STAGE_APP_READ 3	     /* skb:skb_copy_datagram_iovec */
#define PMOAS_STAGE_APP_SEND 4	     /* tcp:tcp_sendmsg_locked (first: no latency) */
#define PMOAS_STAGE_DEV_QUEUE 5	     /* net:net_dev_queue */
#define PMOAS_STAGE_DEV_START_XMIT 6 /* net:net_dev_start_xmit */
#define PMOAS_STAGE_DEV_XMIT 7	     /* net:net_dev_xmit */

/* ---- lost events: slots of lost_events (names in netstack.rs) ---- */
/* 0 is PMOAS_LOST_AGGREGATION_MAP_FULL (pmoas_common.h): a full stage,
 * drop or RTT map. User space adds packet_map_evicted, which no program can
 * see (an LRU map evicts silently): from netstack_packet_stats below. */
#define PMOAS_NETSTACK_LOST_CONN_MAP_FULL 1
#define PMOAS_NETSTACK_LOST_PENDING_MAP_FULL 2
#define PMOAS_NETSTACK_LOST_LOCAL_ADDR_MAP_FULL 3
#define PMOAS_NETSTACK_LOST_SEND_MAP_FULL 4
#define PMOAS_NETSTACK_LOST_JOURNEY_RING_FULL 5
#define PMOAS_NETSTACK_LOST_REASONS 6

/* ---- netstack_packet_stats: per-CPU counters of followed packets, which
 * user space exports by outcome and turns into packet_map_evicted
 * (tracked - finished - left the path - still in the map) */
#define PMOAS_NETSTACK_STAT_TRACKED 0	/* entries put into netstack_packets */
#define PMOAS_NETSTACK_STAT_FINISHED 1	/* took a last stage or a known end */
#define PMOAS_NETSTACK_STAT_LEFT_PATH 2 /* replaced: the skb's address came back first */
#define PMOAS_NETSTACK_STATS 3

/* A 1-in-N ticker. User space writes `rate` on every CPU after loading;
 * 0 (not yet written) samples nothing. */
struct pmoas_netstack_sampler {
	__u32 rate; /* offset 0 */
	__u32 tick; /* offset 4 */
};
_Static_assert(sizeof(struct pmoas_netstack_sampler) == 8, "pmoas_netstack_sampler layout");

/* Per-CPU value of netstack_cpu: everything a hook needs on this CPU, in
 * one cache line, found with one lookup. Which packets are followed is
 * decided in user space, by when the stage programs are attached (see
 * docs/netstack.md); `trace` picks the followed packets that become
 * journeys. */
struct pmoas_netstack_cpu {
	struct pmoas_netstack_sampler trace; /* offset 0 */
	__u64 rx_skb;  /* offset 8: the followed skb whose tcp_probe ran last here */
	__u64 rx_sk;   /* offset 16: its socket */
	__u64 scratch; /* offset 24: turns an address into a number (address_bits) */
};
_Static_assert(sizeof(struct pmoas_netstack_cpu) == 32, "pmoas_netstack_cpu layout");

/* Key of netstack_packets: the skb (ingress), or the skb on its way to a
 * device (egress), so a loopback skb that goes out and comes back in is
 * two entries. */
struct pmoas_netstack_pkt_key {
	__u64 skb;	 /* offset 0: kernel address */
	__u32 direction; /* offset 8: PMOAS_DIR_* */
	__u32 pad;	 /* offset 12 */
};
_Static_assert(sizeof(struct pmoas_netstack_pkt_key) == 16, "pmoas_netstack_pkt_key layout");

/* Value of netstack_filter: one set, addresses of followed objects (0: free). */
struct pmoas_netstack_filter_set {
	__u64 obj[PMOAS_NETSTACK_FILTER_WAYS];
};

/* Value of netstack_filter_busy, per kind: one bit per set, on while the
 * set may hold something. User space empties both after a sampling window. */
struct pmoas_netstack_filter_busy {
	__u64 bits[PMOAS_NETSTACK_FILTER_SETS / 64];
};

/* Value of netstack_packets (and of netstack_sends, keyed by socket). */
struct pmoas_netstack_pkt {
	__u64 ts_ns;	   /* offset 0: bpf_ktime_get_ns() at the last stage */
	__u64 netns;	   /* offset 8: netns inode, taken at the first stage */
	__u32 stage;	   /* offset 16: last stage seen */
	__u32 traced;	   /* offset 20: 1 when it becomes a journey */
	__u64 stage_ts[4]; /* offset 24: when it reached stage i of its direction
			    * (journeys only; 0 = not reached) */
};
_Static_assert(sizeof(struct pmoas_netstack_pkt) == 56, "pmoas_netstack_pkt layout");

/* A journey, sent through netstack_journeys when a traced packet reaches the
 * last stage of its direction; user space makes it one trace. */
struct pmoas_netstack_journey {
	__u64 netns;	 /* offset 0 */
	__u64 ts_ns[8];	 /* offset 8: by PMOAS_STAGE_*, 0 = not reached */
	__u32 direction; /* offset 72: PMOAS_DIR_INGRESS or _EGRESS */
	__u32 pad;	 /* offset 76 */
};
_Static_assert(sizeof(struct pmoas_netstack_journey) == 80, "pmoas_netstack_journey layout");

/* Key of netstack_stages (value: struct pmoas_log2_hist). */
struct pmoas_netstack_stage_key {
	__u64 netns;	 /* offset 0 */
	__u32 direction; /* offset 8 */
	__u32 stage;	 /* offset 12 */
};
_Static_assert(sizeof(struct pmoas_netstack_stage_key) == 16, "pmoas_netstack_stage_key layout");

/* Key of netstack_drops (value: __u64 packets). */
struct pmoas_netstack_drop_key {
	__u64 netns;  /* offset 0 */
	__u32 reason; /* offset 8: enum skb_drop_reason of the running kernel */
	__u32 pad;    /* offset 12 */
};
_Static_assert(sizeof(struct pmoas_netstack_drop_key) == 16, "pmoas_netstack_drop_key layout");

/* Key of netstack_rtt (value: struct pmoas_log2_hist). */
struct pmoas_netstack_rtt_key {
	__u64 cgroup_id;      /* offset 0: owner of the socket */
	__u64 peer_cgroup_id; /* offset 8: when peer_class == PMOAS_PEER_CGROUP */
	__u8 peer_class;      /* offset 16: PMOAS_PEER_* (pmoas_types.h) */
	__u8 pad[7];	      /* offset 17 */
};
_Static_assert(sizeof(struct pmoas_netstack_rtt_key) == 24, "pmoas_netstack_rtt_key layout");

/* Value of netstack_conns, keyed by struct sock address. */
struct pmoas_netstack_conn {
	__u64 peer_cgroup_id; /* offset 0 */
	__u8 peer_class;      /* offset 8 */
	__u8 pad[7];	      /* offset 9 */
};
_Static_assert(sizeof(struct pmoas_netstack_conn) == 16, "pmoas_netstack_conn layout");

/* Value of netstack_pending, keyed by struct pmoas_endpoint_key. */
struct pmoas_netstack_client {
	__u64 sk;	 /* offset 0 */
	__u64 cgroup_id; /* offset 8 */
};
_Static_assert(sizeof(struct pmoas_netstack_client) == 16, "pmoas_netstack_client layout");

#endif /* PMOAS_NETSTACK_H */
