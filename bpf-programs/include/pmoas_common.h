/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Helpers shared by every pmoas eBPF program: the cgroup id that owns a
 * socket, log2 histograms, lost-event accounting and address classification.
 *
 * Everything here is `static __always_inline`: each collector's object gets
 * its own copy and its own maps, so collectors load and fail independently.
 */
#ifndef PMOAS_COMMON_H
#define PMOAS_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "pmoas_types.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
/* errno values (include/uapi/asm-generic/errno*.h) */
#define ENOMEM 12
#define EBUSY 16
#define EINVAL 22
#define E2BIG 7
#define EAGAIN 11
#define EHOSTUNREACH 113
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif

/* Map that counts what the programs of one object could not record.
 * Index = PMOAS_LOST_* reason; user space exports it as
 * pmoas_ebpf_events_lost_total{collector,reason}. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PMOAS_LOST_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} lost_events SEC(".maps");

/*
 * Target selection (--target.namespace/pod/pod-label). User space sets
 * pmoas_filter_targets before loading when a selection is given, and keeps
 * target_cgroups filled with the watched cgroup ids; without a selection
 * the check is a constant the verifier removes.
 */
const volatile __u8 pmoas_filter_targets = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_TARGET_MAP_SIZE);
	__type(key, __u64);
	__type(value, __u8);
} target_cgroups SEC(".maps");

static __always_inline bool pmoas_watched(__u64 cgroup_id)
{
	if (!pmoas_filter_targets)
		return true;
	return bpf_map_lookup_elem(&target_cgroups, &cgroup_id) != NULL;
}

static __always_inline void pmoas_count_lost(__u32 reason)
{
	__u64 *slot = bpf_map_lookup_elem(&lost_events, &reason);

	if (slot)
		__sync_fetch_and_add(slot, 1);
}

/*
 * The cgroup v2 id of the cgroup that created a full socket. Accepted
 * sockets inherit the listener's cgroup (sk_clone_lock copies sk_cgrp_data),
 * so this names the owning container even when the event runs in softirq on
 * behalf of some other task.
 *
 * `sk` must be a BTF pointer (a tp_btf argument, or reached from one): the
 * loads are direct, CO-RE-relocated by vmlinux.h's preserve_access_index,
 * and cost a few ns where bpf_probe_read_kernel() would cost a helper call.
 */
static __always_inline __u64 pmoas_sock_cgroup_id(const struct sock *sk)
{
	return sk->sk_cgrp_data.cgroup->kn->id;
}

/* The same for a socket pointer the verifier does not know as BTF-typed
 * (read out of a union, or from a classic tracepoint): helper reads. */
static __always_inline __u64 pmoas_sock_cgroup_id_read(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/* floor(log2(v)) for v > 0, 0 for v == 0; branch-free, no loops. */
static __always_inline __u32 pmoas_log2(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/* Adds one nanosecond sample to a log2 histogram held in a map value. */
static __always_inline void pmoas_hist_add(struct pmoas_log2_hist *h, __u64 ns)
{
	__u32 slot = pmoas_log2(ns);

	if (slot >= PMOAS_HIST_SLOTS)
		slot = PMOAS_HIST_SLOTS - 1;
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum_ns, ns);
}

/*
 * Looks a key up in an aggregation map, inserting a zeroed value first when
 * it is missing. A full map is counted as PMOAS_LOST_AGGREGATION_MAP_FULL.
 */
/*
 * Flags of the per-CPU hash maps that aggregate counts and histograms.
 * Preallocated, such a map costs max_entries x value size x every possible
 * CPU whether an entry is used or not: 16384 histograms of 392 bytes are
 * 13.8 MiB on 2 CPUs and 411 MiB on 64. Allocated as used, it costs that
 * for the entries in use only; the first update of a key allocates (a
 * failure is counted as a full map, like one).
 */
#define PMOAS_AGGREGATION_MAP_FLAGS BPF_F_NO_PREALLOC

static __always_inline void *pmoas_lookup_or_init(void *map, const void *key,
						  const void *zero)
{
	void *val = bpf_map_lookup_elem(map, key);

	if (val)
		return val;
	/* -EEXIST means another CPU inserted it first: fine. */
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	val = bpf_map_lookup_elem(map, key);
	if (!val)
		pmoas_count_lost(PMOAS_LOST_AGGREGATION_MAP_FULL);
	return val;
}

/* Addresses are kept as 16 bytes; IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d)
 * so that a v4 client and a dual-stack v6 server agree on one key. */
static __always_inline void pmoas_addr_from_v4(__u8 out[16], __be32 v4)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &v4, 4);
}

static __always_inline bool pmoas_addr_is_loopback(const __u8 a[16])
{
	int i;
	bool zero10 = true;

	for (i = 0; i < 10; i++)
		zero10 &= a[i] == 0;
	if (!zero10)
		return false;
	/* ::ffff:127.0.0.0/8 */
	if (a[10] == 0xff && a[11] == 0xff)
		return a[12] == 127;
	/* ::1 */
	return a[10] == 0 && a[11] == 0 && a[12] == 0 && a[13] == 0 &&
	       a[14] == 0 && a[15] == 1;
}

/* The inode of the network namespace a socket lives in. */
static __always_inline __u64 pmoas_sock_netns(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

/* A socket's local and remote addresses, 16 bytes each. */
static __always_inline void pmoas_sock_addrs(const struct sock *sk, __u8 saddr[16], __u8 daddr[16])
{
	if (sk->__sk_common.skc_family == AF_INET) {
		pmoas_addr_from_v4(saddr, sk->__sk_common.skc_rcv_saddr);
		pmoas_addr_from_v4(daddr, sk->__sk_common.skc_daddr);
	} else {
		__builtin_memcpy(saddr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(daddr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	}
}

/* The client endpoint key, as the server end will build it: loopback
 * addresses repeat in every network namespace, so they carry it. */
static __always_inline void pmoas_endpoint_key(struct pmoas_endpoint_key *k, const struct sock *sk,
					       const __u8 addr[16], __u16 port)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->addr, addr, 16);
	k->port = port;
	if (pmoas_addr_is_loopback(addr))
		k->netns = pmoas_sock_netns(sk);
}

/* Peer class of an address when the peer's socket is not known;
 * `local_addrs` is the object's map of this node's addresses. */
static __always_inline __u8 pmoas_classify_addr(void *local_addrs, const __u8 addr[16])
{
	if (pmoas_addr_is_loopback(addr))
		return PMOAS_PEER_SAME_NETNS;
	if (bpf_map_lookup_elem(local_addrs, addr))
		return PMOAS_PEER_NODE;
	return PMOAS_PEER_REMOTE;
}

#endif /* PMOAS_COMMON_H */
