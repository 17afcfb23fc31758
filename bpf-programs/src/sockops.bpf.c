// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops collector, kernel side: socket-redirect acceleration between two
 * sockets of one network namespace (app <-> sidecar in a pod), opt-in.
 *
 * A sock_ops program on a cgroup v2 directory puts each newly established
 * TCP socket whose peer is in its own network namespace into sockops_hash,
 * keyed by the connection's client endpoint and the socket's side; an sk_msg
 * program attached to that SOCKHASH hands every message sent on such a
 * socket straight to its peer's receive queue (BPF_F_INGRESS), skipping
 * TCP/IP. Anything unknown takes the normal stack: every miss is SK_PASS.
 *
 * Because redirected bytes never reach TCP (bytes_acked and bytes_received
 * stay put) nor netfilter, tc or cgroup_skb, this object counts them itself,
 * per socket (sockops_sk) and per cgroup (sockops_counters).
 * docs/sockops-design.md has the measurements behind every choice here.
 */
#include "pmoas_common.h"
#include "pmoas_sockops.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Every network namespace's loopback device has this ifindex. */
#define LOOPBACK_IFINDEX 1
#define MSG_PEEK 2
#define SOL_TCP 6
#define TCP_NODELAY 1

/* Redirected bytes a receiver may leave unread, per connection and
 * direction, before its sender falls back to TCP (set before load). */
const volatile __u64 pmoas_sockops_max_queued = PMOAS_SOCKOPS_MAX_QUEUED_DEFAULT;

/* The sockets that can be redirected to, both ends of each connection. The
 * kernel takes a socket out by itself when it closes. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, PMOAS_SOCKOPS_SOCKHASH_SIZE);
	__type(key, struct pmoas_sockops_key);
	__type(value, __u32); /* a socket fd from user space; Aya's SockHash wants 4 bytes */
} sockops_hash SEC(".maps");

/* Per-socket state: own key, peer key, redirected bytes. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pmoas_sockops_sock);
} sockops_sk SEC(".maps");

/* Connections: each end's cgroup and what each end redirected. The sk_msg
 * program cannot reach its peer's socket storage (a SOCKHASH lookup gives a
 * referenced socket, and sk_msg may not release it), so the two ends meet
 * here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_SOCKOPS_PAIR_MAP_SIZE);
	__type(key, struct pmoas_sockops_key);
	__type(value, struct pmoas_sockops_pair);
} sockops_pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_SOCKOPS_COUNTER_MAP_SIZE);
	__type(key, __u64);
	__type(value, struct pmoas_sockops_counters);
} sockops_counters SEC(".maps");

/*
 * Bytes of closed connections that went by redirect, which TCP's own
 * counters (bytes_acked, bytes_received) never saw, keyed as the socket
 * collector keys its counters (own cgroup, PEER_CGROUP, peer's cgroup): it
 * adds them to pmoas_tcp_sent_bytes_total / _received_bytes_total, so those
 * stay what the application wrote and read. Only sent_bytes and
 * received_bytes are used.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_SOCKOPS_CLOSED_BYTES_MAP_SIZE);
	__type(key, struct pmoas_socket_key);
	__type(value, struct pmoas_socket_counters);
} sockops_closed_bytes SEC(".maps");

/* Exclusions from the configuration: a socket whose local or remote port,
 * or local or remote address, is listed here is left to TCP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_SOCKOPS_EXCLUDED_PORT_MAP_SIZE);
	__type(key, __u16);
	__type(value, __u8);
} sockops_excluded_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PMOAS_SOCKOPS_EXCLUDED_CIDR_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pmoas_sockops_cidr);
	__type(value, __u8);
} sockops_excluded_cidrs SEC(".maps");

/*
 * Client endpoints whose SYN left through the loopback device: their server
 * is in their own network namespace. That covers 127.0.0.0/8 and ::1, the
 * pod's own address, and a connect that an iptables REDIRECT (Istio's
 * 15001/15006) sent to a local listener while the client's socket still
 * names the original destination. Written by sockops_syn_egress, read by
 * both ends at ESTABLISHED, taken by the server end. LRU: a SYN that never
 * got its server end leaves its entry behind.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PMOAS_SOCKOPS_LOCAL_SYN_MAP_SIZE);
	__type(key, struct pmoas_sockops_key);
	__type(value, __u8);
} sockops_local_syn SEC(".maps");

static const struct pmoas_sockops_counters zero_counters;
static const struct pmoas_socket_counters zero_socket_counters;
static const struct pmoas_sockops_pair zero_pair;

/* Index of a side in pmoas_sockops_pair's arrays. */
#define SIDE_INDEX(side) ((side) == PMOAS_SOCKOPS_ACTIVE ? 0 : 1)

static __always_inline struct pmoas_sockops_counters *counters_for(__u64 cgroup_id)
{
	return pmoas_lookup_or_init(&sockops_counters, &cgroup_id, &zero_counters);
}

static __always_inline bool port_excluded(__u16 port)
{
	return bpf_map_lookup_elem(&sockops_excluded_ports, &port) != NULL;
}

static __always_inline bool addr_excluded(const __u8 addr[16])
{
	struct pmoas_sockops_cidr k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&sockops_excluded_cidrs, &k) != NULL;
}

/*
 * ACTIVE_ESTABLISHED_CB (the SYN-ACK arrived) or PASSIVE_ESTABLISHED_CB
 * (the handshake's last ACK made an accepted child), the socket locked,
 * before anyone could send on it: in softirq, or in the connecting task when
 * the SYN-ACK waited in the socket's backlog (usual on loopback). Sockets
 * established before the program was attached never come here, so they are
 * never redirected.
 */
static __always_inline void on_established(struct bpf_sock_ops *skops, __u8 side)
{
	struct pmoas_sockops_counters *cnt;
	struct pmoas_sockops_pair *pair;
	struct pmoas_sockops_sock *st;
	const struct tcp_sock *tp;
	struct bpf_sock *bsk = skops->sk;
	struct pmoas_sockops_key ep;
	const struct sock *sk;
	__u8 saddr[16], daddr[16];
	__u16 sport, dport;
	__u64 cgroup_id;
	int one = 1;
	long err;

	/* One load, checked once: the verifier tracks the pointer it gave. */
	if (!bsk)
		return;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return;
	sk = (const struct sock *)tp;

	cgroup_id = pmoas_sock_cgroup_id(sk);
	if (!pmoas_watched(cgroup_id))
		return;

	pmoas_sock_addrs(sk, saddr, daddr);
	sport = sk->__sk_common.skc_num;		  /* host order */
	dport = bpf_ntohs(sk->__sk_common.skc_dport); /* network order in the sock */
	if (port_excluded(sport) || port_excluded(dport) || addr_excluded(saddr) ||
	    addr_excluded(daddr))
		return;

	/*
	 * Only a peer in this network namespace can be redirected to: the
	 * client's SYN must have left through the loopback device (see
	 * sockops_local_syn). Anything else never enters the map, so it keeps
	 * the plain TCP path and its cost. (The interface the SYN-ACK or ACK
	 * came in on, sk_rx_dst_ifindex, is not a substitute: it is 0 when the
	 * packet was processed from the socket's backlog, as a loopback SYN-ACK
	 * is during connect().)
	 */
	__builtin_memset(&ep, 0, sizeof(ep));
	ep.netns = bpf_get_netns_cookie(skops);
	if (side == PMOAS_SOCKOPS_ACTIVE) {
		__builtin_memcpy(ep.addr, saddr, 16);
		ep.port = sport;
	} else {
		__builtin_memcpy(ep.addr, daddr, 16);
		ep.port = dport;
	}
	if (!bpf_map_lookup_elem(&sockops_local_syn, &ep))
		return;
	if (side == PMOAS_SOCKOPS_PASSIVE)
		bpf_map_delete_elem(&sockops_local_syn, &ep);

	st = bpf_sk_storage_get(&sockops_sk, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		pmoas_count_lost(PMOAS_LOST_SOCKOPS_STORAGE);
		return;
	}
	/* The client endpoint: our local end if we connected, the remote end
	 * if we were accepted. */
	st->key = ep;
	st->key.side = side;
	st->peer = st->key;
	st->peer.side = side == PMOAS_SOCKOPS_ACTIVE ? PMOAS_SOCKOPS_PASSIVE : PMOAS_SOCKOPS_ACTIVE;
	st->conn = st->key;
	st->conn.side = 0;
	st->cgroup_id = cgroup_id;

	/* Nothing is accelerated that cannot be counted: no pair entry, no
	 * redirect. */
	bpf_map_update_elem(&sockops_pairs, &st->conn, &zero_pair, BPF_NOEXIST);
	pair = bpf_map_lookup_elem(&sockops_pairs, &st->conn);
	if (!pair) {
		pmoas_count_lost(PMOAS_LOST_SOCKOPS_PAIR_MAP_FULL);
		return;
	}

	/* Before the insert: once in the map, the peer may redirect to us. */
	pair->cgroup_id[SIDE_INDEX(side)] = cgroup_id;

	cnt = counters_for(cgroup_id);
	/* BPF_ANY: a reused 4-tuple replaces the closed socket's entry (the
	 * kernel already removed it at close; this is belt and braces). */
	err = bpf_sock_hash_update(skops, &sockops_hash, &st->key, BPF_ANY);
	if (err) {
		/* -E2BIG/-ENOMEM: map full; -EBUSY: the socket already has a
		 * verdict program from another map; -EINVAL: ULP (kTLS). The
		 * socket stays on plain TCP either way. */
		if (err == -E2BIG || err == -ENOMEM)
			pmoas_count_lost(PMOAS_LOST_SOCKOPS_SOCKHASH_FULL);
		if (cnt)
			__sync_fetch_and_add(&cnt->insert_errors, 1);
		return;
	}
	__sync_fetch_and_add(&pair->refs, 1);
	st->flags |= PMOAS_SOCKOPS_IN_MAP;
	if (cnt)
		__sync_fetch_and_add(&cnt->sockets_added, 1);
	/*
	 * TCP_NODELAY: a message that takes TCP from a socket in the map goes
	 * through tcp_bpf_push, which with Nagle on leaves the tail of a large
	 * write waiting for the peer's delayed ACK: measured 64 KiB
	 * request/response 1 ms -> 45 ms per round trip. Redirected messages
	 * never see Nagle anyway.
	 */
	bpf_setsockopt(skops, SOL_TCP, TCP_NODELAY, &one, sizeof(one));
	/* To learn when it closes (active sockets gauge, closed bytes). */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* STATE_CB -> CLOSE: the kernel drops the socket from sockops_hash itself;
 * we fold what it sent and received by redirect into its cgroup's closed_*
 * sums, which the socket collector adds to TCP's own byte counts. */
static __always_inline void on_close(struct bpf_sock_ops *skops)
{
	struct pmoas_sockops_counters *cnt;
	struct pmoas_sockops_pair *pair;
	struct pmoas_sockops_sock *st;
	struct bpf_sock *bsk = skops->sk;
	__u32 me, other;

	if (!bsk)
		return;
	st = bpf_sk_storage_get(&sockops_sk, bsk, 0, 0);
	if (!st || !(st->flags & PMOAS_SOCKOPS_IN_MAP))
		return;
	st->flags &= ~PMOAS_SOCKOPS_IN_MAP;
	me = SIDE_INDEX(st->key.side);
	other = me ^ 1;
	cnt = counters_for(st->cgroup_id);
	if (cnt)
		__sync_fetch_and_add(&cnt->sockets_removed, 1);
	pair = bpf_map_lookup_elem(&sockops_pairs, &st->conn);
	if (!pair)
		return;
	if (cnt) {
		__sync_fetch_and_add(&cnt->closed_sent_bytes, pair->sent_bytes[me]);
		__sync_fetch_and_add(&cnt->closed_received_bytes, pair->sent_bytes[other]);
	}
	if (pair->sent_bytes[me] || pair->sent_bytes[other]) {
		/* Both ends are local and matched: the socket collector says
		 * PEER_CGROUP with the other end's cgroup for this connection. */
		struct pmoas_socket_key sk_key = {
			.cgroup_id = st->cgroup_id,
			.peer_cgroup_id = pair->cgroup_id[other],
			.peer_class = PMOAS_PEER_CGROUP,
		};
		struct pmoas_socket_counters *closed =
			pmoas_lookup_or_init(&sockops_closed_bytes, &sk_key, &zero_socket_counters);

		/* Per CPU: plain adds. A full map is counted as a lost event. */
		if (closed) {
			closed->sent_bytes += pair->sent_bytes[me];
			closed->received_bytes += pair->sent_bytes[other];
		}
	}
	if (__sync_fetch_and_add(&pair->refs, -1) == 1)
		bpf_map_delete_elem(&sockops_pairs, &st->conn);
}

/*
 * cgroup_skb/egress, after the nat OUTPUT hook and the routing that follows
 * it: a packet of a socket in SYN_SENT is its SYN (or a retransmit of it).
 * If it leaves through lo, the server is in the client's own network
 * namespace: remember the client endpoint. Everything else returns at the
 * first or second test. Never drops (1 = let it through).
 */
SEC("cgroup_skb/egress")
int sockops_syn_egress(struct __sk_buff *skb)
{
	struct pmoas_sockops_key ep = {};
	struct bpf_sock *sk;
	__u8 one = 1;

	if (skb->ifindex != LOOPBACK_IFINDEX)
		return 1;
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->state != BPF_TCP_SYN_SENT || sk->protocol != IPPROTO_TCP)
		return 1;
	/*
	 * A client we do not watch (a host process entering the pod's network
	 * namespace, e.g. `ip netns exec ... curl` to Envoy's admin port) never
	 * joins the map: its server end must not either, or every answer it
	 * sends would try the redirect, miss, and pay for the attempt.
	 */
	if (!pmoas_watched(bpf_skb_cgroup_id(skb)))
		return 1;
	if (sk->family == AF_INET) {
		pmoas_addr_from_v4(ep.addr, sk->src_ip4);
	} else if (sk->family == AF_INET6) {
		/* Four 32-bit loads: the verifier allows no arithmetic on a
		 * socket pointer, which a memcpy would be. */
		__u32 a0 = sk->src_ip6[0], a1 = sk->src_ip6[1];
		__u32 a2 = sk->src_ip6[2], a3 = sk->src_ip6[3];

		__builtin_memcpy(&ep.addr[0], &a0, 4);
		__builtin_memcpy(&ep.addr[4], &a1, 4);
		__builtin_memcpy(&ep.addr[8], &a2, 4);
		__builtin_memcpy(&ep.addr[12], &a3, 4);
	} else {
		return 1;
	}
	ep.port = sk->src_port; /* host order */
	ep.netns = bpf_get_netns_cookie(skb);
	bpf_map_update_elem(&sockops_local_syn, &ep, &one, BPF_ANY);
	return 1;
}

SEC("sockops")
int sockops_established(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_established(skops, PMOAS_SOCKOPS_ACTIVE);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_established(skops, PMOAS_SOCKOPS_PASSIVE);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			on_close(skops);
		break;
	}
	return 1;
}

/*
 * sk_msg verdict, run on sendmsg() of a socket in sockops_hash, once per
 * message (a large write is cut into messages of up to ~64 KiB). Hands the
 * message to the peer's receive queue, or returns SK_PASS so TCP sends it:
 * bpf_msg_redirect_hash() answers SK_DROP on a miss, which must never reach
 * the kernel. No cork, no apply_bytes: every byte goes on at once. TCP also
 * carries it when redirecting could reorder the stream or queue more than
 * pmoas_sockops_max_queued unread bytes at the peer.
 */
SEC("sk_msg")
int sockops_redirect(struct sk_msg_md *msg)
{
	struct pmoas_sockops_counters *cnt;
	struct pmoas_sockops_pair *pair;
	struct pmoas_sockops_sock *st;
	struct bpf_sock *sk = msg->sk;
	__u64 size = msg->size;
	__s64 unread;
	__u32 me;

	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&sockops_sk, sk, 0, 0);
	if (!st)
		return SK_PASS;

	me = SIDE_INDEX(st->key.side);
	pair = bpf_map_lookup_elem(&sockops_pairs, &st->conn);
	if (!pair)
		goto via_tcp; /* cannot count it: do not redirect it */

	/* What we sent that the peer has not read, by either path. */
	unread = (__s64)(pair->sent_bytes[me] + pair->tcp_bytes[me] - pair->read_bytes[me ^ 1]);
	if (unread < 0)
		unread = 0;
	/*
	 * Order: after a message went through TCP, redirect again only when
	 * the peer has read everything. The peer reads its psock queue
	 * (redirected) before its TCP queue, so a redirected message could
	 * overtake one still in TCP. (A peer that joined the map late never had
	 * its earlier reads counted: such a connection stays on TCP.)
	 */
	if (pair->tcp_bytes[me] && unread)
		goto via_tcp;
	/*
	 * Flow control: redirected data skips TCP's window; a peer that does
	 * not read would queue all of it (measured: 512 MiB against a 32 MiB
	 * rcvbuf). Past the cap, TCP carries the rest until the peer catches
	 * up, and blocks the sender as it always does.
	 */
	if (unread + size > pmoas_sockops_max_queued) {
		if (!(st->flags & PMOAS_SOCKOPS_VIA_TCP)) {
			cnt = counters_for(st->cgroup_id);
			if (cnt)
				__sync_fetch_and_add(&cnt->overflows, 1);
		}
		goto via_tcp;
	}
	/* SK_DROP from the helper means the peer is not (or no longer) in the
	 * map: not watched, excluded, refused, closed, or not there yet. */
	if (bpf_msg_redirect_hash(msg, &sockops_hash, &st->peer, BPF_F_INGRESS) != SK_PASS)
		goto via_tcp;

	st->flags &= ~PMOAS_SOCKOPS_VIA_TCP;
	__sync_fetch_and_add(&pair->sent_messages[me], 1);
	__sync_fetch_and_add(&pair->sent_bytes[me], size);
	/* The receiving end's cgroup (app vs sidecar container). */
	cnt = counters_for(pair->cgroup_id[me ^ 1]);
	if (cnt)
		__sync_fetch_and_add(&cnt->redirected_received_bytes, size);
	cnt = counters_for(st->cgroup_id);
	if (cnt) {
		__sync_fetch_and_add(&cnt->redirected_messages, 1);
		__sync_fetch_and_add(&cnt->redirected_bytes, size);
	}
	return SK_PASS;

via_tcp:
	st->flags |= PMOAS_SOCKOPS_VIA_TCP;
	__sync_fetch_and_add(&st->misses, 1);
	if (pair)
		__sync_fetch_and_add(&pair->tcp_bytes[me], size);
	cnt = counters_for(st->cgroup_id);
	if (cnt) {
		__sync_fetch_and_add(&cnt->misses, 1);
		__sync_fetch_and_add(&cnt->miss_bytes, size);
	}
	return SK_PASS;
}

/*
 * tp_btf/sock_recv_length: every recv of every socket (sock_recvmsg, so
 * read(), readv(), recv*() alike) ends here with the bytes it returned.
 * Sockets without our storage leave at the first lookup; ours add what
 * they read to their connection, which bounds what their peer may queue.
 */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(sockops_recv_length, struct sock *sk, int ret, int flags)
{
	struct pmoas_sockops_pair *pair;
	struct pmoas_sockops_sock *st;

	if (ret <= 0 || (flags & MSG_PEEK))
		return 0;
	st = bpf_sk_storage_get(&sockops_sk, sk, 0, 0);
	if (!st || !(st->flags & PMOAS_SOCKOPS_IN_MAP))
		return 0;
	pair = bpf_map_lookup_elem(&sockops_pairs, &st->conn);
	if (pair)
		__sync_fetch_and_add(&pair->read_bytes[SIDE_INDEX(st->key.side)], ret);
	return 0;
}
