/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The contract between the eBPF programs and user space: map sizes, key and
 * value layouts, enum values. Rust mirrors every struct here in
 * bpf-programs/src/types.rs, and both sides assert the sizes, so a change on
 * one side that is not made on the other fails the build.
 *
 * Only fixed-width __u8..__u64 fields (from vmlinux.h) and explicit padding:
 * no kernel-internal types, nothing whose layout Rust would see differently.
 */
#ifndef PMOAS_TYPES_H
#define PMOAS_TYPES_H

/* ---- map sizes (user space may raise them with set_max_entries) ---- */

/* Sockets tracked from connect()/accept until close: one entry per open TCP
 * connection of the node. */
#define PMOAS_SOCKET_CONN_MAP_SIZE 65536
/* Client sockets whose server side has not been seen yet (same node). */
#define PMOAS_SOCKET_PENDING_MAP_SIZE 65536
/* (cgroup, peer) pairs with counters. */
#define PMOAS_SOCKET_COUNTER_MAP_SIZE 16384
/* (cgroup, peer, histogram kind) triples. */
#define PMOAS_SOCKET_HIST_MAP_SIZE 16384
/* Addresses that belong to this node (host and pod network namespaces). */
#define PMOAS_LOCAL_ADDR_MAP_SIZE 4096
/* Client endpoints whose SYN left REDIRECTed (a sidecar's outbound capture),
 * from the SYN to ESTABLISHED; LRU. */
#define PMOAS_SOCKET_REDIRECTED_MAP_SIZE 4096
/* Watched cgroups under a target selection (--target.*). */
#define PMOAS_TARGET_MAP_SIZE 16384
/* cgroups with network, block I/O or OOM counters (cgroup collector): every
 * container and pod of the node plus the host's services. A 1,100-pod node of
 * 3 containers each has ~4,400; entries are allocated as used (no prealloc),
 * so the headroom costs only the hash table's buckets. */
#define PMOAS_CGROUP_COUNTER_MAP_SIZE 16384

/* ---- lost events: index into the lost_events per-CPU array ---- */
#define PMOAS_LOST_AGGREGATION_MAP_FULL 0
#define PMOAS_LOST_CONNECTION_MAP_FULL 1
#define PMOAS_LOST_PENDING_MAP_FULL 2
#define PMOAS_LOST_LOCAL_ADDR_MAP_FULL 3
#define PMOAS_LOST_REASONS 8

/* ---- log2 histograms ---- */
/* Slot i counts values v (in ns) with floor(log2(v)) == i; the last slot
 * also takes everything larger. 2^48 ns is about 78 hours. The number of
 * samples is the sum of the slots: one atomic add less per sample. */
#define PMOAS_HIST_SLOTS 48

struct pmoas_log2_hist {
	__u64 slots[PMOAS_HIST_SLOTS];
	__u64 sum_ns;
};
_Static_assert(sizeof(struct pmoas_log2_hist) == 392, "pmoas_log2_hist layout");

/* ---- socket collector ---- */

/* What is on the other end of a connection, as far as the kernel can tell.
 * User space turns (class, peer cgroup) into the `peer` label. */
#define PMOAS_PEER_NONE 0	/* series without a peer label */
#define PMOAS_PEER_CGROUP 1	/* local peer, its cgroup id is known */
#define PMOAS_PEER_SAME_NETNS 2 /* loopback peer, cgroup unknown */
#define PMOAS_PEER_NODE 3	/* an address of this node, cgroup unknown */
#define PMOAS_PEER_REMOTE 4	/* off the node */

#define PMOAS_HIST_CONNECT 0		/* SYN sent -> ESTABLISHED */
#define PMOAS_HIST_ACCEPT_WAIT 1	/* ESTABLISHED -> accept() returned */
#define PMOAS_HIST_LIFETIME_OUTBOUND 2	/* ESTABLISHED -> CLOSE, active open */
#define PMOAS_HIST_LIFETIME_INBOUND 3	/* ESTABLISHED -> CLOSE, passive open */

/* Key of socket_counters and socket_histograms. */
struct pmoas_socket_key {
	__u64 cgroup_id;      /* cgroup that owns the socket */
	__u64 peer_cgroup_id; /* valid when peer_class == PMOAS_PEER_CGROUP */
	__u8 peer_class;
	__u8 hist_kind;       /* PMOAS_HIST_*; 0 in socket_counters */
	__u8 pad[6];
};
_Static_assert(sizeof(struct pmoas_socket_key) == 24, "pmoas_socket_key layout");

struct pmoas_socket_counters {
	__u64 connects;
	__u64 connect_failures;
	__u64 accepts;
	__u64 sent_bytes;
	__u64 received_bytes;
	__u64 retransmits;
	__u64 resets_sent;
	__u64 resets_received;
};
_Static_assert(sizeof(struct pmoas_socket_counters) == 64, "pmoas_socket_counters layout");

/* Per-socket state from the first SYN (or the accepted child's ESTABLISHED)
 * until CLOSE; key is the kernel address of the struct sock. */
#define PMOAS_CONN_ACTIVE 1u	  /* we sent the SYN */
#define PMOAS_CONN_ESTABLISHED 2u /* reached ESTABLISHED */
#define PMOAS_CONN_COUNTED 4u	  /* connect/accept counted with its peer */
#define PMOAS_CONN_ACCEPTED 8u	  /* accept() returned it */
#define PMOAS_CONN_MATCHED 16u	  /* the server end took our socket_pending entry */
#define PMOAS_CONN_RESET 32u	  /* a RST closed it */

struct pmoas_conn_info {
	__u64 cgroup_id;
	__u64 peer_cgroup_id;
	__u64 syn_sent_ns;    /* 0 when the SYN was not seen */
	__u64 established_ns;
	__u32 flags;          /* PMOAS_CONN_*; updated atomically */
	__u8 peer_class;
	__u8 pad[3];
};
_Static_assert(sizeof(struct pmoas_conn_info) == 40, "pmoas_conn_info layout");

/* Key of socket_pending: the client end of a connection as the server end
 * sees it. netns is set only for loopback addresses, which repeat in every
 * network namespace. */
struct pmoas_endpoint_key {
	__u64 netns;
	__u8 addr[16];
	__u16 port;
	__u8 pad[6];
};
_Static_assert(sizeof(struct pmoas_endpoint_key) == 32, "pmoas_endpoint_key layout");

/* ---- cgroup collector ---- */

/* Value of cgroup_counters, keyed by the cgroup v2 id (__u64). Network bytes
 * are L3 bytes (IP header included) as the cgroup_skb hooks see them; block
 * I/O bytes are bios as submitted (the same point io.stat counts at). */
struct pmoas_cgroup_counters {
	__u64 net_rx_bytes;
	__u64 net_rx_packets;
	__u64 net_tx_bytes;
	__u64 net_tx_packets;
	__u64 fs_read_bytes;
	__u64 fs_reads;
	__u64 fs_write_bytes;
	__u64 fs_writes;
	__u64 oom_kills;
};
_Static_assert(sizeof(struct pmoas_cgroup_counters) == 72, "pmoas_cgroup_counters layout");

#endif /* PMOAS_TYPES_H */
