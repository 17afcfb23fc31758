/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The sockops collector's contract (socket-redirect acceleration): map sizes,
 * the SOCKHASH key, the per-socket state kept in socket storage and the
 * per-cgroup counters. Same rules as pmoas_types.h: fixed-width fields and
 * explicit padding only. docs/sockops-design.md explains the choices.
 */
#ifndef PMOAS_SOCKOPS_H
#define PMOAS_SOCKOPS_H

/* ---- map sizes (user space may raise them with set_max_entries) ---- */

/* Established TCP sockets whose peer is in their own network namespace
 * (both ends of every in-pod connection of the watched pods). */
#define PMOAS_SOCKOPS_SOCKHASH_SIZE 65536
/* Client endpoints whose SYN left through lo, until the server end is
 * established (LRU). */
#define PMOAS_SOCKOPS_LOCAL_SYN_MAP_SIZE 16384
/* Connections with at least one end in the SOCKHASH. */
#define PMOAS_SOCKOPS_PAIR_MAP_SIZE 65536
/* cgroups with sockops counters: every container of the node that talks to
 * a local peer. */
#define PMOAS_SOCKOPS_COUNTER_MAP_SIZE 4096
/* (cgroup, peer cgroup) pairs with bytes of closed redirected connections,
 * keyed like socket_counters so that the socket collector adds them to its
 * own (sockops_closed_bytes). */
#define PMOAS_SOCKOPS_CLOSED_BYTES_MAP_SIZE 4096
/* Ports (host order) never accelerated, local or remote (--sockops.exclude-ports). */
#define PMOAS_SOCKOPS_EXCLUDED_PORT_MAP_SIZE 256
/* CIDRs never accelerated, local or remote address (--sockops.exclude-cidrs). */
#define PMOAS_SOCKOPS_EXCLUDED_CIDR_MAP_SIZE 256

/* Default cap on bytes a receiver has not read yet, per connection and
 * direction (the const volatile pmoas_sockops_max_queued overrides it before
 * load). Redirected data bypasses TCP flow control: past the cap the sender
 * uses TCP until the receiver has read everything (see sockops_redirect). */
#define PMOAS_SOCKOPS_MAX_QUEUED_DEFAULT 4194304

/* ---- lost events: slots of this object's lost_events array ---- */
/* 0 is PMOAS_LOST_AGGREGATION_MAP_FULL (pmoas_types.h): counter map full. */
#define PMOAS_LOST_SOCKOPS_SOCKHASH_FULL 1 /* a socket not accelerated: sockhash full */
#define PMOAS_LOST_SOCKOPS_STORAGE 2	   /* no socket storage (memory): not accelerated */
#define PMOAS_LOST_SOCKOPS_PAIR_MAP_FULL 3 /* no pair entry: not accelerated */

/* Which end of the connection a socket is. Both ends of one connection have
 * the same client endpoint; the side tells them apart. */
#define PMOAS_SOCKOPS_ACTIVE 1	/* the client's socket (connect()) */
#define PMOAS_SOCKOPS_PASSIVE 2 /* the socket the server accepted */

/*
 * Key of the SOCKHASH: the CLIENT endpoint of the connection, seen the same
 * way from both ends even when an iptables REDIRECT sent the client to
 * another listener than the one it named (the client's socket names the
 * original destination, the accepted one the redirected listener; the
 * client's address and port are the same on both). netns is the network
 * namespace cookie (bpf_get_netns_cookie): only sockets of one namespace
 * pair up, and 127.0.0.1 repeats in every pod.
 */
struct pmoas_sockops_key {
	__u64 netns;
	__u8 addr[16];	/* client address; IPv4 as ::ffff:a.b.c.d */
	__u16 port;	/* client port, host order */
	__u8 side;	/* PMOAS_SOCKOPS_ACTIVE / _PASSIVE: whose socket this is */
	__u8 pad[5];
};
_Static_assert(sizeof(struct pmoas_sockops_key) == 32, "pmoas_sockops_key layout");

#define PMOAS_SOCKOPS_IN_MAP 1u	   /* the socket went into the SOCKHASH */
#define PMOAS_SOCKOPS_VIA_TCP 2u   /* its last message went through TCP */

/* Socket storage (BPF_MAP_TYPE_SK_STORAGE) of every socket put in the
 * SOCKHASH, so that the sk_msg program knows its peer without guessing.
 * Lives and dies with the socket. */
struct pmoas_sockops_sock {
	struct pmoas_sockops_key key;  /* this socket in the SOCKHASH */
	struct pmoas_sockops_key peer; /* the other end: same endpoint, other side */
	struct pmoas_sockops_key conn; /* the connection in sockops_pairs: side 0 */
	__u64 cgroup_id;	       /* cgroup that owns the socket */
	__u64 misses;		       /* messages that went through TCP instead */
	__u32 flags;		       /* PMOAS_SOCKOPS_IN_MAP, _VIA_TCP */
	__u32 pad;
};
_Static_assert(sizeof(struct pmoas_sockops_sock) == 120, "pmoas_sockops_sock layout");

/*
 * One connection whose ends are (or were) in the SOCKHASH, keyed by its
 * client endpoint with side 0. Index 0 is the active (client) end, 1 the
 * passive one. What one end sent by redirect is what the other received:
 * each end's TCP counters saw neither. Deleted when its last socket closes.
 *
 * sent_bytes + tcp_bytes - the other end's read_bytes is what one end sent
 * that the other has not read yet, in its psock queue or in TCP: the sk_msg
 * program redirects only while that stays under the cap, and after a
 * message went through TCP only once it is 0 (both queues empty: no
 * message can overtake another).
 */
struct pmoas_sockops_pair {
	__u64 cgroup_id[2];	/* owner of each end, 0 until it is established */
	__u64 sent_messages[2];
	__u64 sent_bytes[2];	/* redirected, by sending end */
	__u64 tcp_bytes[2];	/* passed to TCP by the sk_msg program, by sending end */
	__u64 read_bytes[2];	/* read by each end (recv calls), while in the map */
	__u32 refs;		/* ends in the SOCKHASH */
	__u32 pad;
};
_Static_assert(sizeof(struct pmoas_sockops_pair) == 88, "pmoas_sockops_pair layout");

/*
 * Per-cgroup counters (per-CPU hash keyed by the socket's cgroup v2 id).
 * Active sockets = sockets_added - sockets_removed. The closed_* sums are the
 * redirected bytes of sockets that have closed, which TCP's own counters
 * (bytes_acked, bytes_received) never saw: the socket collector adds them.
 */
struct pmoas_sockops_counters {
	__u64 sockets_added;
	__u64 sockets_removed;
	__u64 redirected_messages;	/* sent by this cgroup's sockets */
	__u64 redirected_bytes;		/* sent by this cgroup's sockets */
	__u64 redirected_received_bytes; /* handed to this cgroup's sockets */
	__u64 misses;		/* messages passed to TCP: peer not in the map */
	__u64 miss_bytes;
	__u64 insert_errors;	/* the kernel refused the socket (e.g. EBUSY, ULP) */
	__u64 overflows;	/* switches to TCP because the peer left too much unread */
	__u64 closed_sent_bytes;
	__u64 closed_received_bytes;
};
_Static_assert(sizeof(struct pmoas_sockops_counters) == 88, "pmoas_sockops_counters layout");

/* Key of the excluded-CIDR LPM trie: prefixlen counts bits of addr, an
 * IPv4 CIDR a.b.c.d/n as ::ffff:a.b.c.d/(96+n). */
struct pmoas_sockops_cidr {
	__u32 prefixlen;
	__u8 addr[16];
};
_Static_assert(sizeof(struct pmoas_sockops_cidr) == 20, "pmoas_sockops_cidr layout");

#endif /* PMOAS_SOCKOPS_H */
