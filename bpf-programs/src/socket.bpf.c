// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * socket collector, kernel side: TCP connect/accept/close per container and
 * per peer, aggregated in per-CPU maps keyed by cgroup id.
 *
 * Attribution: every count goes to the cgroup that owns the socket
 * (sk->sk_cgrp_data), never to the task that happens to run the hook, so
 * events raised in softirq (SYN-ACK, RST, retransmit timers) land on the
 * right container.
 *
 * Peers on the same node: when a client reaches ESTABLISHED it leaves its
 * endpoint in socket_pending; the server's child socket, established a moment
 * later, finds it there and both ends learn each other's cgroup. A client
 * whose destination is not an address of this node is counted at once as
 * `remote`, unless its SYN was seen REDIRECTed to a listener of its own
 * namespace (socket_syn_egress, socket_redirected): then it waits for its
 * server end too. See docs/socket.md for what cannot be seen this way.
 */
#include "pmoas_common.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* TCP_* states come from vmlinux.h (include/net/tcp_states.h): user-visible
 * ABI, the same numbers on every kernel. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_SOCKET_CONN_MAP_SIZE);
	__type(key, __u64);
	__type(value, struct pmoas_conn_info);
} socket_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_SOCKET_PENDING_MAP_SIZE);
	__type(key, struct pmoas_endpoint_key);
	__type(value, __u64); /* the client's struct sock address */
} socket_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_LOCAL_ADDR_MAP_SIZE);
	__type(key, __u8[16]);
	__type(value, __u8);
} local_addrs SEC(".maps");

/*
 * Client endpoints whose SYN left with another destination than their socket
 * names: an iptables REDIRECT in the OUTPUT chain (Istio's istio-init sends
 * an app's outbound TCP to Envoy's 15001 so; Linkerd's to 4140). Written by
 * socket_syn_egress, taken at ESTABLISHED: such a connect waits for its
 * server end (the sidecar's accept) instead of being counted as `remote`.
 * LRU: a SYN that never got an answer leaves its entry behind.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PMOAS_SOCKET_REDIRECTED_MAP_SIZE);
	__type(key, struct pmoas_endpoint_key);
	__type(value, __u8);
} socket_redirected SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_SOCKET_COUNTER_MAP_SIZE);
	__type(key, struct pmoas_socket_key);
	__type(value, struct pmoas_socket_counters);
} socket_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_SOCKET_HIST_MAP_SIZE);
	__type(key, struct pmoas_socket_key);
	__type(value, struct pmoas_log2_hist);
} socket_histograms SEC(".maps");

/* Zero values for pmoas_lookup_or_init; too large for the 512-byte stack
 * together with everything else, so they live in .rodata. */
static const struct pmoas_socket_counters zero_counters;
static const struct pmoas_log2_hist zero_hist;

struct tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host order */
	__u16 dport; /* host order */
};

/* Socket field reads below are direct loads through BTF pointers (see
 * pmoas_sock_cgroup_id()); only the accept hook, a classic tracepoint, walks
 * kernel memory with bpf_probe_read_kernel(). */

static __always_inline bool is_tcp(const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	if (family != AF_INET && family != AF_INET6)
		return false;
	return sk->sk_protocol == IPPROTO_TCP;
}

static __always_inline void read_tuple(const struct sock *sk, struct tuple *t)
{
	pmoas_sock_addrs(sk, t->saddr, t->daddr);
	t->sport = sk->__sk_common.skc_num;
	t->dport = bpf_ntohs(sk->__sk_common.skc_dport);
}

/* Every established socket tells us one address of this node. */
static __always_inline void learn_local_addr(const __u8 addr[16])
{
	__u8 one = 1;

	if (pmoas_addr_is_loopback(addr) || bpf_map_lookup_elem(&local_addrs, addr))
		return;
	if (bpf_map_update_elem(&local_addrs, addr, &one, BPF_NOEXIST) == -E2BIG)
		pmoas_count_lost(PMOAS_LOST_LOCAL_ADDR_MAP_FULL);
}

static __always_inline struct pmoas_socket_counters *
counters_for(__u64 cgroup_id, __u8 peer_class, __u64 peer_cgroup_id)
{
	struct pmoas_socket_key key = {
		.cgroup_id = cgroup_id,
		.peer_cgroup_id = peer_cgroup_id,
		.peer_class = peer_class,
	};

	return pmoas_lookup_or_init(&socket_counters, &key, &zero_counters);
}

static __always_inline void hist_add(__u64 cgroup_id, __u8 peer_class, __u64 peer_cgroup_id,
				     __u8 kind, __u64 ns)
{
	struct pmoas_socket_key key = {
		.cgroup_id = cgroup_id,
		.peer_cgroup_id = peer_cgroup_id,
		.peer_class = peer_class,
		.hist_kind = kind,
	};
	struct pmoas_log2_hist *h = pmoas_lookup_or_init(&socket_histograms, &key, &zero_hist);

	if (h)
		pmoas_hist_add(h, ns);
}

/* Counts an active open with its peer, once: the client's own close and the
 * server's ESTABLISHED may race on two CPUs to do it. */
static __always_inline void count_connect(struct pmoas_conn_info *c, __u8 peer_class,
					  __u64 peer_cgroup_id)
{
	struct pmoas_socket_counters *cnt;

	if (__sync_fetch_and_or(&c->flags, PMOAS_CONN_COUNTED) & PMOAS_CONN_COUNTED)
		return;
	c->peer_class = peer_class;
	c->peer_cgroup_id = peer_cgroup_id;
	cnt = counters_for(c->cgroup_id, peer_class, peer_cgroup_id);
	if (cnt)
		__sync_fetch_and_add(&cnt->connects, 1);
	if (c->syn_sent_ns)
		hist_add(c->cgroup_id, peer_class, peer_cgroup_id, PMOAS_HIST_CONNECT,
			 c->established_ns - c->syn_sent_ns);
}

/* CLOSE -> SYN_SENT, in connect(): the one moment we are sure to be in the
 * context of the socket's owner. */
static __always_inline void on_syn_sent(const struct sock *sk, __u64 now)
{
	__u64 key = (__u64)sk;
	struct pmoas_conn_info c = {
		.cgroup_id = pmoas_sock_cgroup_id(sk),
		.syn_sent_ns = now,
		.flags = PMOAS_CONN_ACTIVE,
	};

	if (bpf_map_update_elem(&socket_conns, &key, &c, BPF_ANY) == -E2BIG)
		pmoas_count_lost(PMOAS_LOST_CONNECTION_MAP_FULL);
}

/* SYN_SENT -> ESTABLISHED: the SYN-ACK arrived (softirq). */
static __always_inline void on_active_established(const struct sock *sk, __u64 now)
{
	__u64 key = (__u64)sk;
	struct pmoas_conn_info *c = bpf_map_lookup_elem(&socket_conns, &key);
	struct pmoas_endpoint_key ek;
	struct tuple t;
	__u8 peer_class;

	if (!c) {
		/* SYN sent before we attached, or the map was full. */
		struct pmoas_conn_info fresh = {
			.cgroup_id = pmoas_sock_cgroup_id(sk),
			.flags = PMOAS_CONN_ACTIVE,
		};

		if (bpf_map_update_elem(&socket_conns, &key, &fresh, BPF_ANY) == -E2BIG) {
			/* Full: the connect is still counted, by its address;
			 * its peer's workload, handshake time, bytes and
			 * lifetime need the entry and are lost (counted). */
			struct pmoas_socket_counters *cnt;

			read_tuple(sk, &t);
			cnt = counters_for(fresh.cgroup_id, pmoas_classify_addr(&local_addrs, t.daddr), 0);
			if (cnt)
				__sync_fetch_and_add(&cnt->connects, 1);
			pmoas_count_lost(PMOAS_LOST_CONNECTION_MAP_FULL);
			return;
		}
		c = bpf_map_lookup_elem(&socket_conns, &key);
		if (!c)
			return;
	}
	c->established_ns = now;
	__sync_fetch_and_or(&c->flags, PMOAS_CONN_ESTABLISHED);

	read_tuple(sk, &t);

	/* Leave our endpoint for the server end, even when we count the
	 * connect as remote now: an iptables REDIRECT may still land it on a
	 * local listener, which then learns its peer from us. */
	pmoas_endpoint_key(&ek, sk, t.saddr, t.sport);
	if (bpf_map_update_elem(&socket_pending, &ek, &key, BPF_ANY) == -E2BIG)
		pmoas_count_lost(PMOAS_LOST_PENDING_MAP_FULL);

	peer_class = pmoas_classify_addr(&local_addrs, t.daddr);
	if (peer_class == PMOAS_PEER_REMOTE) {
		if (bpf_map_lookup_elem(&socket_redirected, &ek))
			bpf_map_delete_elem(&socket_redirected, &ek);
		else
			count_connect(c, PMOAS_PEER_REMOTE, 0);
	}
	/* else: the server end (or our own close) counts it. */
}

/* SYN_RECV -> ESTABLISHED on an accepted child socket. */
static __always_inline void on_passive_established(const struct sock *sk, __u64 now)
{
	__u64 key = (__u64)sk;
	__u64 cgroup_id = pmoas_sock_cgroup_id(sk);
	struct pmoas_socket_counters *cnt;
	struct pmoas_endpoint_key ek;
	struct pmoas_conn_info c = {};
	__u64 *client_sk;
	struct tuple t;

	read_tuple(sk, &t);
	/* Servers' addresses are what clients connect to: learn them here. */
	learn_local_addr(t.saddr);

	c.cgroup_id = cgroup_id;
	c.established_ns = now;
	c.flags = PMOAS_CONN_ESTABLISHED | PMOAS_CONN_COUNTED;

	pmoas_endpoint_key(&ek, sk, t.daddr, t.dport);
	client_sk = bpf_map_lookup_elem(&socket_pending, &ek);
	if (client_sk) {
		__u64 client_key = *client_sk;
		struct pmoas_conn_info *client = bpf_map_lookup_elem(&socket_conns, &client_key);

		if (client) {
			c.peer_class = PMOAS_PEER_CGROUP;
			c.peer_cgroup_id = client->cgroup_id;
			__sync_fetch_and_or(&client->flags, PMOAS_CONN_MATCHED);
			count_connect(client, PMOAS_PEER_CGROUP, cgroup_id);
		}
		bpf_map_delete_elem(&socket_pending, &ek);
	}
	if (c.peer_class != PMOAS_PEER_CGROUP)
		c.peer_class = pmoas_classify_addr(&local_addrs, t.daddr);

	if (bpf_map_update_elem(&socket_conns, &key, &c, BPF_ANY) == -E2BIG)
		pmoas_count_lost(PMOAS_LOST_CONNECTION_MAP_FULL);

	cnt = counters_for(cgroup_id, c.peer_class, c.peer_cgroup_id);
	if (cnt)
		__sync_fetch_and_add(&cnt->accepts, 1);
}

/* SYN_SENT -> CLOSE: refused, reset or timed out before ESTABLISHED. */
static __always_inline void on_connect_failed(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct pmoas_conn_info *c = bpf_map_lookup_elem(&socket_conns, &key);
	struct pmoas_socket_counters *cnt;
	__u64 cgroup_id;
	struct tuple t;

	/* Load first, then choose: otherwise clang shares one load between the
	 * map value and the socket pointer, which the verifier refuses. */
	cgroup_id = pmoas_sock_cgroup_id(sk);
	barrier_var(cgroup_id);
	if (c)
		cgroup_id = c->cgroup_id;
	read_tuple(sk, &t);
	cnt = counters_for(cgroup_id, pmoas_classify_addr(&local_addrs, t.daddr), 0);
	if (cnt)
		__sync_fetch_and_add(&cnt->connect_failures, 1);
	if (c)
		bpf_map_delete_elem(&socket_conns, &key);
}

/*
 * Payload bytes of a closing connection. The kernel's bytes_acked and
 * bytes_received (RFC 4898) also count the one sequence number of a FIN, and
 * bytes_acked that of our SYN when we connected; take them out so that N
 * bytes written read as N.
 *  - our SYN: counted by tcp_ack() in SYN_SENT, so on every active open
 *    (an accepted child starts with its SYN-ACK already acknowledged);
 *  - our FIN was acknowledged if we close from FIN_WAIT2 (the full socket
 *    goes from there straight to CLOSE, also when it becomes a time-wait
 *    socket), or from CLOSING or LAST_ACK other than by a RST;
 *  - the peer's FIN was received if tcp_fin() set SOCK_DONE (tcp_done(),
 *    which raises this CLOSE, has not touched the flags yet).
 */
static __always_inline void closing_bytes(const struct sock *sk, const struct pmoas_conn_info *c,
					  int oldstate, __u64 *sent, __u64 *received)
{
	/* A checked cast: the verifier then lets us read tcp_sock fields. */
	const struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	unsigned long sk_flags = sk->__sk_common.skc_flags;
	bool fin_acked = oldstate == TCP_FIN_WAIT2 ||
			 ((oldstate == TCP_CLOSING || oldstate == TCP_LAST_ACK) &&
			  !(c->flags & PMOAS_CONN_RESET));
	bool fin_received = sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE));

	*sent = tp ? tp->bytes_acked : 0;
	*received = tp ? tp->bytes_received : 0;
	if ((c->flags & PMOAS_CONN_ACTIVE) && *sent)
		*sent -= 1;
	if (fin_acked && *sent)
		*sent -= 1;
	if (fin_received && *received)
		*received -= 1;
}

/* Any state -> CLOSE after ESTABLISHED: bytes and lifetime. */
static __always_inline void on_closed(const struct sock *sk, __u64 now, int oldstate)
{
	__u64 key = (__u64)sk;
	struct pmoas_conn_info *c = bpf_map_lookup_elem(&socket_conns, &key);
	struct pmoas_socket_counters *cnt;
	__u64 sent, received;
	bool active;

	if (!c)
		return;
	if (!(c->flags & PMOAS_CONN_ESTABLISHED))
		goto out;

	active = c->flags & PMOAS_CONN_ACTIVE;
	if (active && !(c->flags & PMOAS_CONN_MATCHED)) {
		struct pmoas_endpoint_key ek;
		struct tuple t;

		read_tuple(sk, &t);
		/* Never matched by a server end on this node: count it now if
		 * that has not happened (remote ones were counted at once). */
		if (!(c->flags & PMOAS_CONN_COUNTED))
			count_connect(c, pmoas_classify_addr(&local_addrs, t.daddr), 0);
		pmoas_endpoint_key(&ek, sk, t.saddr, t.sport);
		bpf_map_delete_elem(&socket_pending, &ek);
	}

	cnt = counters_for(c->cgroup_id, c->peer_class, c->peer_cgroup_id);
	if (cnt) {
		closing_bytes(sk, c, oldstate, &sent, &received);
		__sync_fetch_and_add(&cnt->sent_bytes, sent);
		__sync_fetch_and_add(&cnt->received_bytes, received);
	}
	hist_add(c->cgroup_id, c->peer_class, c->peer_cgroup_id,
		 active ? PMOAS_HIST_LIFETIME_OUTBOUND : PMOAS_HIST_LIFETIME_INBOUND,
		 now - c->established_ns);
out:
	bpf_map_delete_elem(&socket_conns, &key);
}

/* Hook: sock:inet_sock_set_state, every TCP state change of every socket. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(socket_state_change, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 now;

	/* Most transitions (LISTEN -> SYN_RECV, FIN_WAIT1, CLOSE_WAIT, LAST_ACK,
	 * ...) say nothing we count: leave before touching the socket. */
	if (newstate != TCP_SYN_SENT && newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	if (!is_tcp(sk))
		return 0;
	/* The socket's owner (a child's is its listener's) must be watched;
	 * a client outside the selection then leaves no endpoint for its
	 * server, which names it by address. */
	if (!pmoas_watched(pmoas_sock_cgroup_id(sk)))
		return 0;
	now = bpf_ktime_get_ns();

	switch (newstate) {
	case TCP_SYN_SENT:
		on_syn_sent(sk, now);
		break;
	case TCP_ESTABLISHED:
		if (oldstate == TCP_SYN_SENT) {
			on_active_established(sk, now);
		} else if (oldstate == TCP_SYN_RECV) {
			__u64 key = (__u64)sk;
			struct pmoas_conn_info *c = bpf_map_lookup_elem(&socket_conns, &key);

			/* Simultaneous open: SYN_SENT -> SYN_RECV -> ESTABLISHED. */
			if (c && (c->flags & PMOAS_CONN_ACTIVE))
				on_active_established(sk, now);
			else
				on_passive_established(sk, now);
		}
		break;
	case TCP_CLOSE:
		if (oldstate == TCP_SYN_SENT)
			on_connect_failed(sk);
		else
			on_closed(sk, now, oldstate);
		break;
	}
	return 0;
}

/* accept()/accept4() returned fd: find its socket in the task's file table
 * and close the accept-queue wait that started at ESTABLISHED. */
static __always_inline int on_accept_exit(long fd)
{
	struct task_struct *task;
	struct pmoas_conn_info *c;
	struct fdtable *fdt;
	struct file *file;
	struct socket *sock;
	struct sock *sk;
	__u64 key, now;

	/* The accepting task is the listener's owner: filter before the walk. */
	if (fd < 0 || !pmoas_watched(bpf_get_current_cgroup_id()))
		return 0;
	/* A BTF pointer: task->files->fdt are direct loads. */
	task = bpf_get_current_task_btf();
	fdt = task->files->fdt;
	if (fd >= fdt->max_fds)
		return 0;
	/* Variable index and untyped private_data: read, not walked. */
	if (bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]) || !file)
		return 0;
	if (bpf_probe_read_kernel(&sock, sizeof(sock), &file->private_data) || !sock)
		return 0;
	if (bpf_probe_read_kernel(&sk, sizeof(sk), &sock->sk))
		return 0;
	key = (__u64)sk;
	c = bpf_map_lookup_elem(&socket_conns, &key);
	if (!c || (c->flags & PMOAS_CONN_ACTIVE))
		return 0;
	if (__sync_fetch_and_or(&c->flags, PMOAS_CONN_ACCEPTED) & PMOAS_CONN_ACCEPTED)
		return 0;
	now = bpf_ktime_get_ns();
	hist_add(c->cgroup_id, PMOAS_PEER_NONE, 0, PMOAS_HIST_ACCEPT_WAIT,
		 now - c->established_ns);
	return 0;
}

/* Hook: syscalls:sys_exit_accept4 (nginx, Envoy, most servers). */
SEC("tracepoint/syscalls/sys_exit_accept4")
int socket_accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

/* Hook: syscalls:sys_exit_accept (older servers). */
SEC("tracepoint/syscalls/sys_exit_accept")
int socket_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

/* The cgroup of whatever socket-like thing a reset or retransmit names:
 * request sockets stand for their listener; time-wait sockets have no
 * cgroup (0: the node itself). */
static __always_inline __u64 any_sock_cgroup_id(const struct sock *sk)
{
	__u8 state;

	if (!sk)
		return 0;
	state = sk->__sk_common.skc_state;
	if (state == TCP_TIME_WAIT)
		return 0;
	/* request_sock begins with the same sock_common as a full sock; its
	 * listener sits in a union the verifier cannot type, so it is read. */
	if (state == TCP_NEW_SYN_RECV)
		return pmoas_sock_cgroup_id_read(BPF_CORE_READ(sk, __sk_common.skc_listener));
	return pmoas_sock_cgroup_id(sk);
}

/* The peer-less counters of a socket's owner; NULL when the owner is not
 * watched (--target.*) or the counter map is full. */
static __always_inline struct pmoas_socket_counters *owner_counters(const struct sock *sk)
{
	__u64 cgroup_id = any_sock_cgroup_id(sk);

	if (!pmoas_watched(cgroup_id))
		return NULL;
	return counters_for(cgroup_id, PMOAS_PEER_NONE, 0);
}

static __always_inline void count_retransmits(const struct sock *sk, __u64 segs)
{
	struct pmoas_socket_counters *cnt = owner_counters(sk);

	if (cnt)
		__sync_fetch_and_add(&cnt->retransmits, segs);
}

/* Segments in one retransmitted skb: TCP_SKB_CB(skb)->tcp_gso_segs, what
 * the kernel adds to TcpRetransSegs. */
static __always_inline __u64 skb_tcp_segs(const struct sk_buff *skb)
{
	__u64 off = bpf_core_field_offset(struct sk_buff, cb) +
		    bpf_core_field_offset(struct tcp_skb_cb, tcp_gso_segs);
	__u16 segs = 0;

	bpf_probe_read_kernel(&segs, sizeof(segs), (const char *)skb + off);
	return segs ? segs : 1;
}

/*
 * Hook: tcp:tcp_retransmit_skb, kernels with its `err` argument (6.13+),
 * which fire also for attempts that stopped early. TcpRetransSegs counts a
 * retransmit just before handing it to IP, so: the early returns of
 * __tcp_retransmit_skb (-EBUSY still queued, -EAGAIN no buffer, -ENOMEM,
 * -EINVAL, -EHOSTUNREACH no route) count nothing; anything later (0, a
 * NET_XMIT_* drop > 0, or an error from below TCP) counts as the kernel
 * counted it.
 */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(socket_retransmit, const struct sock *sk, const struct sk_buff *skb, int err)
{
	if (err == -EBUSY || err == -EAGAIN || err == -ENOMEM || err == -EINVAL || err == -EHOSTUNREACH)
		return 0;
	count_retransmits(sk, skb_tcp_segs(skb));
	return 0;
}

/* Hook: tcp:tcp_retransmit_skb, older kernels (fires on success only).
 * Loaded only when socket_retransmit cannot be. */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(socket_retransmit_v1, const struct sock *sk, const struct sk_buff *skb)
{
	count_retransmits(sk, skb_tcp_segs(skb));
	return 0;
}

/* Hook: tcp:tcp_retransmit_synack: a listener resent a SYN-ACK. */
SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(socket_retransmit_synack, const struct sock *sk, const struct request_sock *req)
{
	count_retransmits(sk, 1);
	return 0;
}

/* Hook: tcp:tcp_send_reset. sk is NULL for a reset sent on behalf of no
 * socket (a closed port): counted for cgroup 0, the node. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(socket_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	struct pmoas_socket_counters *cnt = owner_counters(sk);

	if (cnt)
		__sync_fetch_and_add(&cnt->resets_sent, 1);
	return 0;
}

/* Hook: tcp:tcp_receive_reset: a full socket took a RST (tcp_reset()). */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(socket_receive_reset, struct sock *sk)
{
	struct pmoas_socket_counters *cnt = owner_counters(sk);
	__u64 key = (__u64)sk;
	struct pmoas_conn_info *c;

	if (cnt)
		__sync_fetch_and_add(&cnt->resets_received, 1);
	/* tcp_done() follows: tell on_closed() our FIN was not acknowledged
	 * (only watched sockets have an entry). */
	c = bpf_map_lookup_elem(&socket_conns, &key);
	if (c)
		__sync_fetch_and_or(&c->flags, PMOAS_CONN_RESET);
	return 0;
}

/* The largest SYN: an IPv6 header and a TCP header with all its options. */
#define SYN_MAX_L3_BYTES (40 + 60)
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/*
 * Hook: cgroup_skb/egress on the cgroup v2 root, in ip_finish_output(): after
 * the nat OUTPUT hook. A client's SYN whose destination differs from the one
 * its socket names was REDIRECTed (or DNATed) on its way out; the socket
 * keeps the original, remote-looking destination, which is all the state
 * change at ESTABLISHED can see. Leave the client's endpoint in
 * socket_redirected: that connect then waits for its server end, the
 * sidecar's accept, and is named `peer="sidecar"` from its first one.
 * Only a SYN without ACK from a full socket gets past the first checks; every
 * packet passes (1): this program observes, it never drops.
 */
SEC("cgroup_skb/egress")
int socket_syn_egress(struct __sk_buff *skb)
{
	struct pmoas_endpoint_key ek = {};
	struct bpf_sock *sk;
	__u8 tcp[14];	/* ports, sequence and ack numbers, offset, flags */
	__u8 one = 1;
	__u32 l4;
	bool moved;

	if (skb->len > SYN_MAX_L3_BYTES)
		return 1;
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		/* A dual-stack socket names an IPv4 peer as ::ffff:a.b.c.d.
		 * Both loaded, then chosen: clang would otherwise pick the
		 * offset, and the verifier refuses arithmetic on a socket. */
		__be32 named = sk->dst_ip4, mapped = sk->dst_ip6[3];

		barrier_var(named);
		barrier_var(mapped);
		if (sk->family != AF_INET)
			named = mapped;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || ip.protocol != IPPROTO_TCP)
			return 1;
		l4 = ip.ihl * 4;
		if (bpf_skb_load_bytes(skb, l4, tcp, sizeof(tcp)))
			return 1;
		if ((tcp[13] & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
			return 1;
		moved = ip.daddr != named || *(__be16 *)&tcp[2] != sk->dst_port;
		pmoas_addr_from_v4(ek.addr, ip.saddr);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6) && sk->family == AF_INET6) {
		struct ipv6hdr ip6;
		__u32 dst[4];

		/* Extension headers before TCP: not a SYN we can read cheaply. */
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_TCP)
			return 1;
		if (bpf_skb_load_bytes(skb, sizeof(ip6), tcp, sizeof(tcp)))
			return 1;
		if ((tcp[13] & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
			return 1;
		__builtin_memcpy(dst, &ip6.daddr, sizeof(dst));
		moved = dst[0] != sk->dst_ip6[0] || dst[1] != sk->dst_ip6[1] || dst[2] != sk->dst_ip6[2] ||
			dst[3] != sk->dst_ip6[3] || *(__be16 *)&tcp[2] != sk->dst_port;
		__builtin_memcpy(ek.addr, &ip6.saddr, sizeof(ek.addr));
	} else {
		return 1;
	}
	if (!moved)
		return 1;
	/* The key socket_state_change builds from the socket (the source is
	 * not rewritten). A loopback source would need the socket's network
	 * namespace, which a bpf_sock does not give: such clients (rare: Istio
	 * does not capture loopback destinations) stay as before. */
	ek.port = bpf_ntohs(*(__be16 *)&tcp[0]);
	if (pmoas_addr_is_loopback(ek.addr) || !pmoas_watched(bpf_skb_cgroup_id(skb)))
		return 1;
	bpf_map_update_elem(&socket_redirected, &ek, &one, BPF_ANY);
	return 1;
}
