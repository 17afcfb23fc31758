// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * netstack collector, kernel side: a sampled packet's path through the
 * network stack of each network namespace, drops with the kernel's reason,
 * and smoothed TCP RTT per container and peer.
 *
 * Stages (pmoas_netstack.h): while the stage programs are attached, every
 * skb is followed from its first stage through the next ones in
 * netstack_packets (LRU), and the time between two consecutive stages goes
 * into a log2 histogram keyed by (netns, direction, stage). User space
 * samples by attaching them 1/N of the time, in windows: a program that is
 * not attached costs nothing, where one that decides per packet costs its
 * run on every packet. The netns is read once at the first stage, from the
 * device or the socket, never from the current task: most stages run in
 * softirq.
 *
 * Drops: every kfree_skb (never consume_skb), keyed by (netns, reason),
 * always attached. RTT: the received segments of established sockets while
 * tcp_probe is attached, keyed by the socket's cgroup and its peer (matched
 * at ESTABLISHED, always attached, as socket.bpf.c does).
 * See docs/netstack.md.
 */
#include "pmoas_common.h"
#include "pmoas_netstack.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCPHDR_FIN 0x01
#define TCPHDR_SYN 0x02
#define TCPHDR_RST 0x04

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PMOAS_NETSTACK_PACKET_MAP_SIZE);
	__type(key, struct pmoas_netstack_pkt_key);
	__type(value, struct pmoas_netstack_pkt);
} netstack_packets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_NETSTACK_SEND_MAP_SIZE);
	__type(key, __u64);
	__type(value, struct pmoas_netstack_pkt);
} netstack_sends SEC(".maps");

/* Socket -> the followed segment last queued on it and not read yet: a
 * close that tosses unread data frees it without a tracepoint, and its
 * path ends there, not as a loss. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_NETSTACK_QUEUED_MAP_SIZE);
	__type(key, __u64);
	__type(value, __u64);
} netstack_queued SEC(".maps");

/* For each kind (PMOAS_DIR_*), the sets of addresses of what is followed.
 * Not per-CPU: a packet's stages run on several CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3 * PMOAS_NETSTACK_FILTER_SETS);
	__type(key, __u32);
	__type(value, struct pmoas_netstack_filter_set);
} netstack_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PMOAS_NETSTACK_STATS);
	__type(key, __u32);
	__type(value, __u64);
} netstack_packet_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmoas_netstack_cpu);
} netstack_cpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_NETSTACK_STAGE_MAP_SIZE);
	__type(key, struct pmoas_netstack_stage_key);
	__type(value, struct pmoas_log2_hist);
} netstack_stages SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_NETSTACK_DROP_MAP_SIZE);
	__type(key, struct pmoas_netstack_drop_key);
	__type(value, __u64);
} netstack_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_NETSTACK_RTT_MAP_SIZE);
	__type(key, struct pmoas_netstack_rtt_key);
	__type(value, struct pmoas_log2_hist);
} netstack_rtt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_NETSTACK_CONN_MAP_SIZE);
	__type(key, __u64);
	__type(value, struct pmoas_netstack_conn);
} netstack_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_NETSTACK_PENDING_MAP_SIZE);
	__type(key, struct pmoas_endpoint_key);
	__type(value, struct pmoas_netstack_client);
} netstack_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_NETSTACK_LOCAL_ADDR_MAP_SIZE);
	__type(key, __u8[16]);
	__type(value, __u8);
} netstack_local_addrs SEC(".maps");

/* Journeys of traced packets to user space (OTLP traces). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PMOAS_NETSTACK_JOURNEY_RING_BYTES);
} netstack_journeys SEC(".maps");
/* A ring buffer names no value type: this puts the journey's layout into
 * the object's BTF, where tests/contract.rs checks it against Rust. */
struct pmoas_netstack_journey *netstack_journey_layout __attribute__((unused));

static const struct pmoas_log2_hist zero_hist;
static const __u64 zero_count;

static __always_inline void count_stat(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&netstack_packet_stats, &which);

	/* Atomic: a softirq program may interrupt a process-context one. */
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* This CPU's state; every hook looks it up once and passes it on. */
static __always_inline struct pmoas_netstack_cpu *this_cpu(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&netstack_cpu, &zero);
}

/* 1 in `rate` calls per CPU returns true; none until user space set rate. */
static __always_inline bool sampled(struct pmoas_netstack_sampler *s)
{
	if (s->rate == 0)
		return false;
	if (++s->tick < s->rate)
		return false;
	s->tick = 0;
	return true;
}

static __always_inline __u64 dev_netns(const struct net_device *dev)
{
	return dev ? dev->nd_net.net->ns.inum : 0;
}


/*
 * The filter: an object's set is chosen by hashing its address. The
 * verifier allows no arithmetic on a pointer, nor reading part of one back
 * from the stack, but a tracing program (CAP_PERFMON) may store one in a
 * map value, which reads back as a number: the per-CPU scratch word.
 */
_Static_assert(PMOAS_NETSTACK_FILTER_SETS == 1 << 8, "filter_set_index() keeps 8 bits");
_Static_assert(PMOAS_NETSTACK_FILTER_WAYS == 8, "the ways are unrolled");

static __always_inline __u64 address_bits(struct pmoas_netstack_cpu *cpu, __u64 obj)
{
	volatile __u64 *word = &cpu->scratch;

	*word = obj;
	return *word;
}

/* Per kind, one bit per set: the set may hold something. The hooks read
 * this line on every run, so it stays in the cache; the set itself, only
 * when its bit is on. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct pmoas_netstack_filter_busy);
} netstack_filter_busy SEC(".maps");

/* Fibonacci hashing of the address: the top 8 bits. */
static __always_inline __u32 filter_set_index(struct pmoas_netstack_cpu *cpu, __u64 obj)
{
	return (address_bits(cpu, obj) * 0x9E3779B97F4A7C15ULL) >> 56;
}

static __always_inline struct pmoas_netstack_filter_set *filter_set_at(__u32 tag, __u32 set)
{
	__u32 idx = tag * PMOAS_NETSTACK_FILTER_SETS + set;

	return bpf_map_lookup_elem(&netstack_filter, &idx);
}

static __always_inline bool set_holds(const struct pmoas_netstack_filter_set *set, __u64 obj)
{
	return set->obj[0] == obj || set->obj[1] == obj || set->obj[2] == obj || set->obj[3] == obj ||
	       set->obj[4] == obj || set->obj[5] == obj || set->obj[6] == obj || set->obj[7] == obj;
}

/* Could `obj` be followed? False for nearly every unsampled packet. */
static __always_inline bool maybe_followed(struct pmoas_netstack_cpu *cpu, __u32 tag, __u64 obj)
{
	__u32 s = filter_set_index(cpu, obj);
	struct pmoas_netstack_filter_busy *busy = bpf_map_lookup_elem(&netstack_filter_busy, &tag);
	struct pmoas_netstack_filter_set *set;

	if (!busy || !(busy->bits[s / 64] & (1ULL << (s % 64))))
		return false;
	set = filter_set_at(tag, s);
	return set && set_holds(set, obj);
}

static __always_inline bool still_followed(__u32 tag, __u64 obj);

/* The set `obj` hashes to, and the word of its kind's busy bits. */
struct filter_slot {
	struct pmoas_netstack_filter_set *set;
	__u64 *busy;
	__u64 bit;
};

static __always_inline bool filter_find(struct pmoas_netstack_cpu *cpu, __u32 tag, __u64 obj,
					struct filter_slot *f)
{
	__u32 s = filter_set_index(cpu, obj);
	struct pmoas_netstack_filter_busy *busy = bpf_map_lookup_elem(&netstack_filter_busy, &tag);

	f->set = filter_set_at(tag, s);
	if (!busy || !f->set)
		return false;
	f->busy = &busy->bits[s / 64];
	f->bit = 1ULL << (s % 64);
	return true;
}

static __always_inline void set_busy(struct filter_slot *f, bool on)
{
	if (on)
		__sync_fetch_and_or(f->busy, f->bit);
	else
		__sync_fetch_and_and(f->busy, ~f->bit);
}

/* Takes a free way, else one whose object is no longer followed
 * (left-overs of packets that took a path without a last stage); when all
 * eight are followed, the way the address picks is taken and its packet
 * is no longer seen: it will end as an eviction. The sets are shared by
 * all CPUs, so a way is claimed with compare-and-swap: two CPUs taking the
 * same free way at once would otherwise leave one packet unseen, its
 * later stages uncounted (a CI run at sample rate 1 on two CPUs once
 * counted one dev_queue more than dev_start_xmit in 63,153). The way is
 * written before the set's bit goes on (see filter_remove). */
static __always_inline void filter_add(struct pmoas_netstack_cpu *cpu, __u32 tag, __u64 obj)
{
	struct filter_slot f;
	struct pmoas_netstack_filter_set *set;
	__u64 old;
	__u32 i;

	if (!filter_find(cpu, tag, obj, &f))
		return;
	set = f.set;
	if (set_holds(set, obj))
		goto busy;
	for (i = 0; i < PMOAS_NETSTACK_FILTER_WAYS; i++)
		if (set->obj[i] == 0 && __sync_val_compare_and_swap(&set->obj[i], 0, obj) == 0)
			goto busy;
	for (i = 0; i < PMOAS_NETSTACK_FILTER_WAYS; i++) {
		old = set->obj[i];
		if (!still_followed(tag, old) && __sync_val_compare_and_swap(&set->obj[i], old, obj) == old)
			goto busy;
	}
	set->obj[(address_bits(cpu, obj) >> 8) & (PMOAS_NETSTACK_FILTER_WAYS - 1)] = obj;
busy:
	set_busy(&f, true);
}

/* When the set empties, its bit goes off, then the set is read again: an
 * add on another CPU in between wrote its way before setting the bit, so
 * either this second read sees it and the bit goes back on, or its own
 * set comes after the clear. (Atomics are full barriers.) */
static __always_inline void filter_remove(struct pmoas_netstack_cpu *cpu, __u32 tag, __u64 obj)
{
	struct filter_slot f;
	__u32 i;

	if (!filter_find(cpu, tag, obj, &f))
		return;
	/* Only our own way: another CPU may have just taken one. */
	for (i = 0; i < PMOAS_NETSTACK_FILTER_WAYS; i++)
		if (f.set->obj[i] == obj)
			__sync_val_compare_and_swap(&f.set->obj[i], obj, 0);
	for (i = 0; i < PMOAS_NETSTACK_FILTER_WAYS; i++)
		if (f.set->obj[i])
			return;
	set_busy(&f, false);
	for (i = 0; i < PMOAS_NETSTACK_FILTER_WAYS; i++)
		if (f.set->obj[i]) {
			set_busy(&f, true);
			return;
		}
}

static __always_inline bool still_followed(__u32 tag, __u64 obj)
{
	struct pmoas_netstack_pkt_key key = { .skb = obj, .direction = tag };

	if (tag == PMOAS_DIR_SEND)
		return bpf_map_lookup_elem(&netstack_sends, &obj) != NULL;
	return bpf_map_lookup_elem(&netstack_packets, &key) != NULL;
}

static __always_inline void stage_add(__u64 netns, __u32 direction, __u32 stage, __u64 ns)
{
	struct pmoas_netstack_stage_key key = { .netns = netns, .direction = direction, .stage = stage };
	struct pmoas_log2_hist *h = pmoas_lookup_or_init(&netstack_stages, &key, &zero_hist);

	if (h)
		pmoas_hist_add(h, ns);
}

/* Starts following a packet (`from`: its send, for an egress packet). An
 * entry already there is a freed skb whose address came back before we saw
 * its last stage: replaced, and counted. */
static __always_inline void track(struct pmoas_netstack_cpu *cpu, __u64 skb, __u32 direction, __u64 netns, __u32 stage,
				  __u64 now, const struct pmoas_netstack_pkt *from)
{
	struct pmoas_netstack_pkt_key key = { .skb = skb, .direction = direction };
	struct pmoas_netstack_pkt v = { .ts_ns = now, .netns = netns, .stage = stage };

	if (from) {
		v.traced = from->traced;
		__builtin_memcpy(v.stage_ts, from->stage_ts, sizeof(v.stage_ts));
	} else {
		v.traced = sampled(&cpu->trace);
	}
	if (v.traced)
		v.stage_ts[stage & 3] = now;

	if (bpf_map_update_elem(&netstack_packets, &key, &v, BPF_NOEXIST) == 0) {
		count_stat(PMOAS_NETSTACK_STAT_TRACKED);
		filter_add(cpu, direction, skb);
		return;
	}
	if (bpf_map_update_elem(&netstack_packets, &key, &v, BPF_ANY) == 0) {
		count_stat(PMOAS_NETSTACK_STAT_TRACKED);
		count_stat(PMOAS_NETSTACK_STAT_LEFT_PATH);
		filter_add(cpu, direction, skb);
	}
}

static __always_inline void untrack(struct pmoas_netstack_cpu *cpu, struct pmoas_netstack_pkt_key *key)
{
	filter_remove(cpu, key->direction, key->skb);
	if (bpf_map_delete_elem(&netstack_packets, key) == 0)
		count_stat(PMOAS_NETSTACK_STAT_FINISHED);
}

/* Records the stage a followed packet reached; returns its entry. The
 * clock is read only for followed packets: in a VM it may cost more than
 * everything else here. */
static __always_inline struct pmoas_netstack_pkt *reach(struct pmoas_netstack_cpu *cpu, struct pmoas_netstack_pkt_key *key,
							__u32 stage)
{
	struct pmoas_netstack_pkt *p;
	__u64 now;

	if (!maybe_followed(cpu, key->direction, key->skb))
		return NULL;
	p = bpf_map_lookup_elem(&netstack_packets, key);
	if (!p)
		return NULL;
	now = bpf_ktime_get_ns();
	stage_add(p->netns, key->direction, stage, now - p->ts_ns);
	p->ts_ns = now;
	p->stage = stage;
	if (p->traced)
		p->stage_ts[stage & 3] = now;
	return p;
}

/* A traced packet at its last stage: its journey goes to user space. */
static __always_inline void journey_out(const struct pmoas_netstack_pkt *p, __u32 direction)
{
	struct pmoas_netstack_journey *j;

	if (!p->traced)
		return;
	j = bpf_ringbuf_reserve(&netstack_journeys, sizeof(*j), 0);
	if (!j) {
		pmoas_count_lost(PMOAS_NETSTACK_LOST_JOURNEY_RING_FULL);
		return;
	}
	__builtin_memset(j, 0, sizeof(*j));
	j->netns = p->netns;
	j->direction = direction;
	if (direction == PMOAS_DIR_INGRESS)
		__builtin_memcpy(&j->ts_ns[PMOAS_STAGE_DEVICE_RECEIVE], p->stage_ts, sizeof(p->stage_ts));
	else
		__builtin_memcpy(&j->ts_ns[PMOAS_STAGE_APP_SEND], p->stage_ts, sizeof(p->stage_ts));
	bpf_ringbuf_submit(j, 0);
}

/* ---------------------------------------------------------------- ingress */

/* Only TCP segments that will reach an established socket are followed:
 * SYN, FIN and RST take paths without a later stage. skb->data is at the
 * network header here (the device driver pulled the link header). */
static __always_inline bool tcp_data_segment(const struct sk_buff *skb)
{
	__u16 proto = bpf_ntohs(skb->protocol);
	const unsigned char *data = skb->data;
	__u8 ip[40];
	__u8 flags = 0;
	__u32 thoff;

	if (proto == ETH_P_IP) {
		if (bpf_probe_read_kernel(ip, 20, data) || ip[9] != IPPROTO_TCP)
			return false;
		thoff = (ip[0] & 0xf) * 4;
	} else if (proto == ETH_P_IPV6) {
		/* Extension headers are not followed: such packets are not
		 * sampled. */
		if (bpf_probe_read_kernel(ip, 40, data) || ip[6] != IPPROTO_TCP)
			return false;
		thoff = 40;
	} else {
		return false;
	}
	if (thoff < 20 || thoff > 60)
		return false;
	if (bpf_probe_read_kernel(&flags, 1, data + thoff + 13))
		return false;
	return !(flags & (TCPHDR_SYN | TCPHDR_FIN | TCPHDR_RST));
}

/* A packet that a stacked device hands up again (a bridge port, then the
 * bridge) does so within microseconds; an entry older than this at the
 * first stage is a freed skb whose address came back. */
#define RERECEIVE_NS 1000000ULL

/* Hook: net:netif_receive_skb, where every device's packets (NAPI, the
 * backlog of loopback and veth) enter the protocol stack: the first
 * ingress stage. */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(netstack_rx, struct sk_buff *skb)
{
	struct pmoas_netstack_pkt_key key = { .skb = (__u64)skb, .direction = PMOAS_DIR_INGRESS };
	struct pmoas_netstack_cpu *cpu = this_cpu();
	struct pmoas_netstack_pkt *p;
	__u64 now;

	if (!cpu)
		return 0;
	/* Handed up again by the next device: its first stage starts over. */
	if (maybe_followed(cpu, PMOAS_DIR_INGRESS, key.skb)) {
		p = bpf_map_lookup_elem(&netstack_packets, &key);
		now = bpf_ktime_get_ns();
		if (p && p->stage == PMOAS_STAGE_DEVICE_RECEIVE && now - p->ts_ns < RERECEIVE_NS) {
			p->ts_ns = now;
			p->netns = dev_netns(skb->dev);
			if (p->traced)
				p->stage_ts[0] = now;
			return 0;
		}
	}
	if (!tcp_data_segment(skb))
		return 0;
	track(cpu, key.skb, PMOAS_DIR_INGRESS, dev_netns(skb->dev), PMOAS_STAGE_DEVICE_RECEIVE,
	      bpf_ktime_get_ns(), NULL);
	return 0;
}

/* Segment length in sequence space (payload, plus one for SYN/FIN). */
static __always_inline __u32 tcp_seq_len(const struct sk_buff *skb)
{
	__u64 off = bpf_core_field_offset(struct sk_buff, cb);
	__u32 seq[2] = {};

	bpf_probe_read_kernel(seq, sizeof(seq), (const char *)skb + off);
	return seq[1] - seq[0];
}

static __always_inline void rtt_sample(struct sock *sk);

/* Hook: tcp:tcp_probe, the start of tcp_rcv_established(): every segment
 * an established socket receives, in softirq or from the socket backlog. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(netstack_tcp_rcv, struct sock *sk, const struct sk_buff *skb)
{
	struct pmoas_netstack_pkt_key key = { .skb = (__u64)skb, .direction = PMOAS_DIR_INGRESS };
	struct pmoas_netstack_cpu *cpu = this_cpu();

	if (!cpu)
		return 0;
	rtt_sample(sk);
	cpu->rx_skb = 0;
	if (!reach(cpu, &key, PMOAS_STAGE_TCP_RECEIVE))
		return 0;
	/* A pure ACK is freed by TCP: its path ends here. */
	if (tcp_seq_len(skb) == 0) {
		untrack(cpu, &key);
		return 0;
	}
	cpu->rx_skb = (__u64)skb;
	cpu->rx_sk = (__u64)sk;
	return 0;
}

/* Hook: sock:sk_data_ready, the reader's wake-up once TCP queued the data.
 * It names no skb: the followed one is the segment this CPU's tcp_probe
 * just handled, for the same socket. TCP may have merged it into the
 * segment queued before it (tcp_try_coalesce) and freed it without a
 * tracepoint: its data is then read with that segment, which it follows
 * from here on (if that one is followed already, this path ends here). */
SEC("tp_btf/sk_data_ready")
int BPF_PROG(netstack_data_ready, const struct sock *sk)
{
	struct pmoas_netstack_pkt_key key = { .direction = PMOAS_DIR_INGRESS };
	struct pmoas_netstack_cpu *cpu = this_cpu();
	struct pmoas_netstack_pkt *p, moved;
	__u64 tail, skey;

	if (!cpu || !cpu->rx_skb || cpu->rx_sk != (__u64)sk)
		return 0;
	key.skb = cpu->rx_skb;
	cpu->rx_skb = 0;
	p = bpf_map_lookup_elem(&netstack_packets, &key);
	if (!p || p->stage != PMOAS_STAGE_TCP_RECEIVE)
		return 0;
	p = reach(cpu, &key, PMOAS_STAGE_SOCKET_QUEUE);
	if (!p)
		return 0;
	skey = (__u64)sk;
	tail = (__u64)sk->sk_receive_queue.prev;
	if (tail == key.skb || tail == (__u64)&sk->sk_receive_queue) {
		bpf_map_update_elem(&netstack_queued, &skey, &key.skb, BPF_ANY);
		return 0;
	}
	moved = *p;
	untrack(cpu, &key);
	key.skb = tail;
	bpf_map_update_elem(&netstack_queued, &skey, &tail, BPF_ANY);
	if (maybe_followed(cpu, PMOAS_DIR_INGRESS, tail) && bpf_map_lookup_elem(&netstack_packets, &key))
		return 0;
	if (bpf_map_update_elem(&netstack_packets, &key, &moved, BPF_NOEXIST) == 0) {
		count_stat(PMOAS_NETSTACK_STAT_TRACKED);
		filter_add(cpu, PMOAS_DIR_INGRESS, tail);
	}
	return 0;
}

/* Hook: skb:skb_copy_datagram_iovec, recvmsg() copying the skb's data to
 * the application: the last ingress stage. */
SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(netstack_app_read, const struct sk_buff *skb, int len)
{
	struct pmoas_netstack_pkt_key key = { .skb = (__u64)skb, .direction = PMOAS_DIR_INGRESS };
	struct pmoas_netstack_cpu *cpu = this_cpu();
	struct pmoas_netstack_pkt *p;

	if (!cpu)
		return 0;
	p = reach(cpu, &key, PMOAS_STAGE_APP_READ);
	if (p) {
		__u64 sk = (__u64)skb->sk;
		__u64 *queued = bpf_map_lookup_elem(&netstack_queued, &sk);

		if (queued && *queued == key.skb)
			bpf_map_delete_elem(&netstack_queued, &sk);
		journey_out(p, PMOAS_DIR_INGRESS);
		untrack(cpu, &key);
	}
	return 0;
}

/* ----------------------------------------------------------------- egress */

/* Hook: tcp:tcp_sendmsg_locked, inside send()/write() on a TCP socket (once
 * per chunk of a large write: the first one counts). The skb it names may
 * not be the one sent, so the send is keyed by socket until the socket's
 * next packet reaches a device. */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(netstack_app_send, const struct sock *sk, const struct msghdr *msg,
	     const struct sk_buff *skb, int size_goal)
{
	struct pmoas_netstack_cpu *cpu = this_cpu();
	struct pmoas_netstack_pkt v = {};
	__u64 key;
	long err;

	if (!cpu)
		return 0;
	key = (__u64)sk;
	v.ts_ns = bpf_ktime_get_ns();
	v.netns = pmoas_sock_netns(sk);
	v.stage = PMOAS_STAGE_APP_SEND;
	v.traced = sampled(&cpu->trace);
	if (v.traced)
		v.stage_ts[0] = v.ts_ns;
	/* A send of this socket still on its way keeps its earlier time. */
	err = bpf_map_update_elem(&netstack_sends, &key, &v, BPF_NOEXIST);
	if (err == 0)
		filter_add(cpu, PMOAS_DIR_SEND, key);
	else if (err == -E2BIG)
		pmoas_count_lost(PMOAS_NETSTACK_LOST_SEND_MAP_FULL);
	return 0;
}

/* Hook: net:net_dev_queue, dev_queue_xmit(): the packet is handed to the
 * device layer (qdisc, or the device at once for noqueue devices). */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(netstack_dev_queue, struct sk_buff *skb)
{
	struct pmoas_netstack_cpu *cpu = this_cpu();
	struct pmoas_netstack_pkt *send, sent;
	struct sock *owner = skb->sk;
	__u64 now, netns, sk;

	if (!cpu || !owner)
		return 0;
	sk = (__u64)owner;
	if (!maybe_followed(cpu, PMOAS_DIR_SEND, sk))
		return 0;
	send = bpf_map_lookup_elem(&netstack_sends, &sk);
	if (!send)
		return 0;
	now = bpf_ktime_get_ns();
	netns = send->netns;
	stage_add(netns, PMOAS_DIR_EGRESS, PMOAS_STAGE_DEV_QUEUE, now - send->ts_ns);
	sent = *send;
	bpf_map_delete_elem(&netstack_sends, &sk);
	filter_remove(cpu, PMOAS_DIR_SEND, sk);
	track(cpu, (__u64)skb, PMOAS_DIR_EGRESS, netns, PMOAS_STAGE_DEV_QUEUE, now, &sent);
	return 0;
}

/* Hook: net:net_dev_start_xmit, just before the driver's ndo_start_xmit
 * (after the qdisc let it go). Through stacked devices (a bridge, then its
 * port) only the first counts; dev_xmit then closes at the innermost. */
SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(netstack_dev_start_xmit, const struct sk_buff *skb, const struct net_device *dev)
{
	struct pmoas_netstack_pkt_key key = { .skb = (__u64)skb, .direction = PMOAS_DIR_EGRESS };
	struct pmoas_netstack_cpu *cpu = this_cpu();
	struct pmoas_netstack_pkt *p;

	if (!cpu || !maybe_followed(cpu, PMOAS_DIR_EGRESS, key.skb))
		return 0;
	p = bpf_map_lookup_elem(&netstack_packets, &key);
	if (p && p->stage == PMOAS_STAGE_DEV_QUEUE)
		reach(cpu, &key, PMOAS_STAGE_DEV_START_XMIT);
	return 0;
}

/* Hook: net:net_dev_xmit, the driver returned: the last egress stage. The
 * skb is in its peer's backlog (loopback, veth) or waits for the device's
 * completion; were it freed already, its address only leaves the sample
 * unfinished. */
SEC("tp_btf/net_dev_xmit")
int BPF_PROG(netstack_dev_xmit, struct sk_buff *skb, int rc, struct net_device *dev,
	     unsigned int len)
{
	struct pmoas_netstack_pkt_key key = { .skb = (__u64)skb, .direction = PMOAS_DIR_EGRESS };
	struct pmoas_netstack_cpu *cpu = this_cpu();
	struct pmoas_netstack_pkt *p;

	if (!cpu)
		return 0;
	p = reach(cpu, &key, PMOAS_STAGE_DEV_XMIT);
	if (p) {
		journey_out(p, PMOAS_DIR_EGRESS);
		untrack(cpu, &key);
	}
	return 0;
}

/* ------------------------------------------------------------------ drops */

/* The skb is freed: if it is followed, either way, its path ends here. */
static __always_inline void end_path(struct pmoas_netstack_cpu *cpu, __u64 skb)
{
	struct pmoas_netstack_pkt_key key = { .skb = skb, .direction = PMOAS_DIR_INGRESS };

	if (maybe_followed(cpu, PMOAS_DIR_INGRESS, skb))
		untrack(cpu, &key);
	key.direction = PMOAS_DIR_EGRESS;
	if (maybe_followed(cpu, PMOAS_DIR_EGRESS, skb))
		untrack(cpu, &key);
}

/* Hook: skb:kfree_skb, a packet dropped (consume_skb, a packet used up,
 * has its own tracepoint). Declared with the three arguments every kernel
 * since 5.17 passes; 6.x adds the receiving socket, unused here. The netns
 * is the device's, else the socket's; 0 when neither is left. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(netstack_drop, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct pmoas_netstack_drop_key key = { .reason = reason };
	struct net_device *dev = skb->dev;
	struct sock *sk = skb->sk;
	struct pmoas_netstack_cpu *cpu = this_cpu();
	__u64 *n;

	if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
		return 0;
	if (dev)
		key.netns = dev_netns(dev);
	else if (sk)
		key.netns = pmoas_sock_netns(sk);
	n = pmoas_lookup_or_init(&netstack_drops, &key, &zero_count);
	if (n)
		__sync_fetch_and_add(n, 1);
	/* A followed packet ends here. */
	if (cpu)
		end_path(cpu, (__u64)skb);
	return 0;
}

/* Hook: skb:consume_skb, an skb freed after use (not a drop). A followed
 * packet whose path left the traced stages ends here: the handshake's last
 * ACK, which TCP's state machine takes instead of tcp_rcv_established(), an
 * ACK to a closing socket. Attached with the stage programs, in windows. */
SEC("tp_btf/consume_skb")
int BPF_PROG(netstack_consume, struct sk_buff *skb)
{
	struct pmoas_netstack_cpu *cpu = this_cpu();

	if (cpu)
		end_path(cpu, (__u64)skb);
	return 0;
}

/* -------------------------------------------------------------------- RTT */

static __always_inline void rtt_sample(struct sock *sk)
{
	const struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	struct pmoas_netstack_rtt_key key = {};
	struct pmoas_netstack_conn *c;
	struct pmoas_log2_hist *h;
	__u64 skey = (__u64)sk;
	__u32 srtt;

	if (!tp)
		return;
	/* srtt_us holds 8 times the smoothed RTT in microseconds. */
	srtt = tp->srtt_us >> 3;
	if (srtt == 0)
		return;
	key.cgroup_id = pmoas_sock_cgroup_id(sk);
	if (!pmoas_watched(key.cgroup_id))
		return;
	c = bpf_map_lookup_elem(&netstack_conns, &skey);
	if (c) {
		key.peer_cgroup_id = c->peer_cgroup_id;
		key.peer_class = c->peer_class;
	} else {
		/* Opened before we attached, or not matched. */
		__u8 saddr[16], daddr[16];

		pmoas_sock_addrs(sk, saddr, daddr);
		key.peer_class = pmoas_classify_addr(&netstack_local_addrs, daddr);
	}
	h = pmoas_lookup_or_init(&netstack_rtt, &key, &zero_hist);
	if (h)
		pmoas_hist_add(h, (__u64)srtt * 1000);
}

static __always_inline void set_conn(__u64 sk, __u8 peer_class, __u64 peer_cgroup_id)
{
	struct pmoas_netstack_conn c = { .peer_cgroup_id = peer_cgroup_id, .peer_class = peer_class };

	if (bpf_map_update_elem(&netstack_conns, &sk, &c, BPF_ANY) == -E2BIG)
		pmoas_count_lost(PMOAS_NETSTACK_LOST_CONN_MAP_FULL);
}

/* Hook: sock:inet_sock_set_state. At ESTABLISHED the two ends of a
 * connection on this node find each other (the client is established
 * first and leaves its endpoint; the server's child takes it), which gives
 * the RTT its peer; at CLOSE the socket's entries go. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(netstack_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct pmoas_endpoint_key ek;
	__u8 saddr[16], daddr[16];
	__u64 key = (__u64)sk;
	__u16 sport, dport;
	__u8 one = 1;

	if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP ||
	    (sk->__sk_common.skc_family != AF_INET && sk->__sk_common.skc_family != AF_INET6))
		return 0;
	pmoas_sock_addrs(sk, saddr, daddr);
	sport = sk->__sk_common.skc_num;
	dport = bpf_ntohs(sk->__sk_common.skc_dport);

	if (newstate == TCP_CLOSE) {
		struct pmoas_netstack_cpu *cpu = this_cpu();
		__u64 *queued = bpf_map_lookup_elem(&netstack_queued, &key);

		bpf_map_delete_elem(&netstack_conns, &key);
		if (bpf_map_delete_elem(&netstack_sends, &key) == 0 && cpu)
			filter_remove(cpu, PMOAS_DIR_SEND, key);
		/* Closed with a followed segment unread (tcp_close frees it
		 * without a tracepoint): its path ends here. */
		if (queued && cpu) {
			struct pmoas_netstack_pkt_key pkt = { .skb = *queued, .direction = PMOAS_DIR_INGRESS };
			struct pmoas_netstack_pkt *p = bpf_map_lookup_elem(&netstack_packets, &pkt);

			if (p && p->stage == PMOAS_STAGE_SOCKET_QUEUE)
				untrack(cpu, &pkt);
			bpf_map_delete_elem(&netstack_queued, &key);
		}
		pmoas_endpoint_key(&ek, sk, saddr, sport);
		bpf_map_delete_elem(&netstack_pending, &ek);
		return 0;
	}
	/* Every established socket's own address is one of this node's. */
	if (!pmoas_addr_is_loopback(saddr) && !bpf_map_lookup_elem(&netstack_local_addrs, saddr) &&
	    bpf_map_update_elem(&netstack_local_addrs, saddr, &one, BPF_NOEXIST) == -E2BIG)
		pmoas_count_lost(PMOAS_NETSTACK_LOST_LOCAL_ADDR_MAP_FULL);

	if (oldstate == TCP_SYN_SENT) {
		struct pmoas_netstack_client client = { .sk = key, .cgroup_id = pmoas_sock_cgroup_id(sk) };

		set_conn(key, pmoas_classify_addr(&netstack_local_addrs, daddr), 0);
		pmoas_endpoint_key(&ek, sk, saddr, sport);
		if (bpf_map_update_elem(&netstack_pending, &ek, &client, BPF_ANY) == -E2BIG)
			pmoas_count_lost(PMOAS_NETSTACK_LOST_PENDING_MAP_FULL);
	} else {
		struct pmoas_netstack_client *client;

		pmoas_endpoint_key(&ek, sk, daddr, dport);
		client = bpf_map_lookup_elem(&netstack_pending, &ek);
		if (client) {
			__u64 client_sk = client->sk;

			set_conn(key, PMOAS_PEER_CGROUP, client->cgroup_id);
			set_conn(client_sk, PMOAS_PEER_CGROUP, pmoas_sock_cgroup_id(sk));
			bpf_map_delete_elem(&netstack_pending, &ek);
		} else {
			set_conn(key, pmoas_classify_addr(&netstack_local_addrs, daddr), 0);
		}
	}
	return 0;
}
