// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup collector, kernel side: what cgroupfs cannot say per container.
 *
 *  - network bytes per container, although the containers of a pod share
 *    one network namespace (and so one set of interface counters): the
 *    cgroup_skb hooks see every packet of a socket together with the cgroup
 *    that owns the socket;
 *  - block I/O bytes where the cgroup's own counters stay at zero (cgroup v1
 *    blkio without a throttle rule, cgroup v2 without the io controller);
 *  - OOM kills, attributed to the victim's container.
 *
 * Everything lands in one per-CPU hash keyed by cgroup v2 id; user space
 * sums the CPUs at scrape time and names the cgroups.
 */
#include "pmoas_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, PMOAS_AGGREGATION_MAP_FLAGS);
	__uint(max_entries, PMOAS_CGROUP_COUNTER_MAP_SIZE);
	__type(key, __u64);
	__type(value, struct pmoas_cgroup_counters);
} cgroup_counters SEC(".maps");

static __always_inline struct pmoas_cgroup_counters *counters_of(__u64 cgroup_id)
{
	static const struct pmoas_cgroup_counters zero = {};

	if (!pmoas_watched(cgroup_id))
		return NULL;
	return pmoas_lookup_or_init(&cgroup_counters, &cgroup_id, &zero);
}

/*
 * cgroup_skb/ingress runs in sk_filter() for every packet delivered to a
 * full socket, cgroup_skb/egress in ip_finish_output() for every packet a
 * full socket sends; attached once to the root of the v2 hierarchy, they see
 * every cgroup below it. skb->len is the L3 length (IP header on). The
 * socket's cgroup, not the current task's: ingress runs in softirq.
 * Both return 1: these programs observe, they never drop.
 */
static __always_inline int count_packet(struct __sk_buff *skb, bool ingress)
{
	struct pmoas_cgroup_counters *c = counters_of(bpf_skb_cgroup_id(skb));

	if (!c)
		return 1;
	if (ingress) {
		__sync_fetch_and_add(&c->net_rx_bytes, skb->len);
		__sync_fetch_and_add(&c->net_rx_packets, 1);
	} else {
		__sync_fetch_and_add(&c->net_tx_bytes, skb->len);
		__sync_fetch_and_add(&c->net_tx_packets, 1);
	}
	return 1;
}

SEC("cgroup_skb/ingress")
int cgroup_skb_ingress(struct __sk_buff *skb)
{
	return count_packet(skb, true);
}

SEC("cgroup_skb/egress")
int cgroup_skb_egress(struct __sk_buff *skb)
{
	return count_packet(skb, false);
}

/*
 * block_bio_queue fires once per bio as it enters the block layer, in the
 * submitter's context (the same place io.stat counts: split remainders are
 * not traced twice). The submitter is the container for reads, direct I/O
 * and fsync; background writeback by the kernel's flusher threads counts for
 * the node (only cgroup v2 with the io controller can attribute it, and then
 * user space reads io.stat instead).
 */
SEC("tp_btf/block_bio_queue")
int cgroup_block_io(u64 *ctx)
{
	struct bio *bio = (struct bio *)ctx[0];
	__u32 op = bio->bi_opf & ((1u << 8) - 1); /* REQ_OP_MASK */
	__u32 bytes = bio->bi_iter.bi_size;
	struct pmoas_cgroup_counters *c;

	if (bytes == 0 || (op != REQ_OP_READ && op != REQ_OP_WRITE && op != REQ_OP_ZONE_APPEND))
		return 0;
	c = counters_of(bpf_get_current_cgroup_id());
	if (!c)
		return 0;
	if (op == REQ_OP_READ) {
		__sync_fetch_and_add(&c->fs_read_bytes, bytes);
		__sync_fetch_and_add(&c->fs_reads, 1);
	} else {
		__sync_fetch_and_add(&c->fs_write_bytes, bytes);
		__sync_fetch_and_add(&c->fs_writes, 1);
	}
	return 0;
}

/*
 * mark_victim fires when the OOM killer has chosen a task, in the context of
 * whichever task ran out of memory: the victim's own cgroup is read from the
 * victim (tsk->cgroups->dfl_cgrp), never from the current task.
 */
SEC("tp_btf/mark_victim")
int cgroup_oom_victim(u64 *ctx)
{
	struct task_struct *victim = (struct task_struct *)ctx[0];
	__u64 id = BPF_CORE_READ(victim, cgroups, dfl_cgrp, kn, id);
	struct pmoas_cgroup_counters *c = counters_of(id);

	if (c)
		__sync_fetch_and_add(&c->oom_kills, 1);
	return 0;
}
