// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The http collector's kernel side: the socket reads and writes of the
 * watched pods' processes, at the system call boundary.
 *
 * The exit of read/write/readv/writev/recvfrom/sendto/recvmsg/sendmsg,
 * for a call of a watched cgroup (http_watched) that moved bytes, takes the
 * call's arguments from the task's saved registers (no entry hook: half the
 * runs, and nothing kept between entry and exit), resolves the file
 * descriptor to its socket (TCP only), decides
 * once per connection whether it carries HTTP/1 or HTTP/2 from the first
 * bytes (so that other protocols never reach user space), and sends the
 * call's first bytes with its length and times through a ring buffer:
 * PMOAS_HTTP1_CAPTURE_BYTES in one record on HTTP/1, up to
 * PMOAS_HTTP_CALL_CAPTURE_BYTES on HTTP/2 in records of
 * PMOAS_HTTP_CAPTURE_BYTES (h2_send). A TCP close of a connection seen as HTTP is sent
 * too (a response delimited by the close ends there). User space
 * (collectors/src/http/) parses the chunks into requests and responses.
 *
 * Only syscall tracepoints and tp_btf: no kprobe, fentry or uprobe.
 */
#include "pmoas_common.h"
#include "pmoas_http.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* A system call's arguments in the registers saved at its entry, read at
 * its exit: arm64 returns in x0, so its first argument is orig_x0 there. */
#if defined(__TARGET_ARCH_arm64)
#define SYSCALL_ARG0(regs) ((regs)->orig_x0)
#define SYSCALL_ARG1(regs) ((regs)->regs[1])
#define SYSCALL_ARG2(regs) ((regs)->regs[2])
#else
#define SYSCALL_ARG0(regs) ((regs)->di)
#define SYSCALL_ARG1(regs) ((regs)->si)
#define SYSCALL_ARG2(regs) ((regs)->dx)
#endif

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PMOAS_HTTP_WATCHED_MAP_SIZE);
	__type(key, __u64);
	__type(value, __u8);
} http_watched SEC(".maps");

struct http_conn {
	__u8 proto;
	__u8 unknown_turns; /* turns that did not start like HTTP (pmoas_http.h) */
	__u8 endpoints_sent; /* a record with the endpoints reached the ring */
	__u8 last_dir;	     /* direction + 1 of the last unknown chunk, 0: none */
	__u32 seq[2];	     /* next record number, per direction */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PMOAS_HTTP_CONN_MAP_SIZE);
	__type(key, __u64);
	__type(value, struct http_conn);
} http_conns SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PMOAS_HTTP_RING_BYTES);
} http_events SEC(".maps");

/* A walk through the bytes of an HTTP/2 call, record after record (see
 * PMOAS_HTTP_FLAG_MORE). Kept in the per-CPU scratch, not on the stack: the
 * verifier does not track what a map value holds, so every step of the
 * bpf_loop starts from the same state and is verified once (on the stack,
 * the counters' exact values would differ at each step and the walk be
 * verified step after step, past the instruction limit). Every use is
 * bounded where it is used. */
struct h2_walk {
	__u64 vec;   /* the iovec array; 0: a plain buffer at `base` */
	__u64 count; /* its iovecs */
	__u64 base;  /* the next byte of the current iovec */
	__u64 left;  /* bytes of the current iovec still to copy */
	__u32 idx;   /* the next iovec */
	__u32 todo;  /* bytes of the call still to copy */
	__u32 fill;  /* bytes in the record being built */
	__u32 sent;  /* records handed to the ring (taken or not) */
	__u8 part;   /* the record being built */
	__u8 flags0; /* the first record's flags (the endpoints) */
	__u8 endpoints_sent;
	__u8 done;
	__u8 ring_full;
};

/* The event under construction, with room past data[] so that a copy at
 * any offset below PMOAS_HTTP_CAPTURE_BYTES of up to that many bytes stays
 * inside the value (the verifier then needs no finer bound); and the walk
 * of an HTTP/2 call. */
struct http_scratch {
	struct pmoas_http_event ev;
	__u8 spill[PMOAS_HTTP_CAPTURE_BYTES];
	struct h2_walk walk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_scratch);
} http_scratch SEC(".maps");

/* ---- exit helpers ---- */

/* The TCP socket behind this task's descriptor `fd`, or NULL (not a
 * socket, not TCP, or the descriptor is gone). */
/* The socket behind this task's descriptor `fd`, or NULL (not a socket,
 * or the descriptor is gone). Whether it is TCP is for the caller to ask
 * (is_tcp), once per connection. */
static __always_inline struct sock *sock_of_fd(__u32 fd)
{
	/* A BTF pointer: task->files->fdt are direct loads, not helper calls. */
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	struct file *file = NULL;
	struct socket *sock;
	struct sock *sk;
	umode_t mode;

	if (fd >= fdt->max_fds)
		return NULL;
	/* Variable index and untyped private_data: read, not walked. */
	if (bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]) || !file)
		return NULL;
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	sk = BPF_CORE_READ(sock, sk);
	return sk;
}

static __always_inline bool is_tcp(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP && BPF_CORE_READ(sk, sk_type) == SOCK_STREAM;
}

/* Copies up to `len` bytes from user memory at `from` to data[off..];
 * returns the bytes copied (0 on a fault). */
static __always_inline __u32 copy_at(struct http_scratch *s, __u32 off, __u64 from, __u64 len)
{
	__u32 n = len > PMOAS_HTTP_CAPTURE_BYTES ? PMOAS_HTTP_CAPTURE_BYTES : (__u32)len;

	off &= PMOAS_HTTP_CAPTURE_BYTES - 1;
	if (n > PMOAS_HTTP_CAPTURE_BYTES - off)
		n = PMOAS_HTTP_CAPTURE_BYTES - off;
	/* Checked again on the register the call takes: the compiler may
	 * otherwise copy it after the check and the verifier lose its bound. */
	barrier_var(n);
	if (n == 0 || n > PMOAS_HTTP_CAPTURE_BYTES)
		return 0;
	if (bpf_probe_read_user(&s->ev.data[off], n, (const void *)from))
		return 0;
	return n;
}

/* Copies the first bytes of an iovec array holding `moved` bytes. */
static __always_inline __u32 copy_iovecs(struct http_scratch *s, __u64 vec, __u64 count, __u64 moved)
{
	__u32 got = 0;

#pragma unroll
	for (int i = 0; i < PMOAS_HTTP_MAX_IOVECS; i++) {
		struct iovec iov;
		__u64 take;
		__u32 n;

		if (i >= count || moved == 0 || got >= PMOAS_HTTP_CAPTURE_BYTES)
			break;
		if (bpf_probe_read_user(&iov, sizeof(iov), (const void *)(vec + i * sizeof(iov))))
			break;
		take = iov.iov_len < moved ? iov.iov_len : moved;
		n = copy_at(s, got, (__u64)iov.iov_base, take);
		got += n;
		moved -= take;
		if (n < take) /* the capture is full, or a fault */
			break;
	}
	return got;
}

/* Copies the first bytes of the call that moved `moved` bytes (at most
 * `limit`) to the start of data[]; returns how many. */
static __always_inline __u32 copy_call(struct http_scratch *s, __u8 call, __u64 buf, __u64 moved, __u64 limit)
{
	if (moved > limit)
		moved = limit;
	switch (call) {
	case PMOAS_HTTP_CALL_READ:
	case PMOAS_HTTP_CALL_WRITE:
		return copy_at(s, 0, buf, moved);
	case PMOAS_HTTP_CALL_READV:
	case PMOAS_HTTP_CALL_WRITEV:
		/* buf: the iovec array, its count in the upper bits (on_exit). */
		return copy_iovecs(s, buf & 0x0000ffffffffffffULL, buf >> 48, moved);
	default: { /* recvmsg, sendmsg: buf is the user msghdr */
		struct user_msghdr msg;

		if (bpf_probe_read_user(&msg, sizeof(msg), (const void *)buf))
			return 0;
		return copy_iovecs(s, (__u64)msg.msg_iov, msg.msg_iovlen, moved);
	}
	}
}

/* ---- HTTP/2 calls: the call in records ---- */

/* Hands the record being built to the ring; `more`: records follow. A
 * record the ring cannot take ends the walk (the ring is full: the rest
 * would not fit either); user space sees the call's parts stop. */
static __always_inline void h2_flush(struct http_scratch *s, bool more)
{
	struct h2_walk *w = &s->walk;
	__u32 size = w->fill;

	if (size > PMOAS_HTTP_CAPTURE_BYTES)
		size = PMOAS_HTTP_CAPTURE_BYTES;
	s->ev.captured = size;
	s->ev.part = w->part;
	s->ev.flags = (w->part == 0 ? w->flags0 : 0) | (more ? PMOAS_HTTP_FLAG_MORE : 0);
	w->sent++;
	if (bpf_ringbuf_output(&http_events, &s->ev, PMOAS_HTTP_EVENT_HEADER_BYTES + size, BPF_RB_NO_WAKEUP)) {
		pmoas_count_lost(PMOAS_HTTP_LOST_RING_FULL);
		w->done = 1;
		w->ring_full = 1;
	} else if (w->part == 0 && (w->flags0 & PMOAS_HTTP_FLAG_ENDPOINTS)) {
		w->endpoints_sent = 1;
	}
	w->part++;
	w->fill = 0;
}

/* One step of the walk: the next iovec (if the current one is done) and
 * the copy of as much of it as the record has room for; a full record is
 * flushed. 1 ends the loop. */
static long h2_step(__u32 i, void *ctx)
{
	struct http_scratch *s;
	struct h2_walk *w;
	__u32 zero = 0, n, got, room;

	s = bpf_map_lookup_elem(&http_scratch, &zero);
	if (!s)
		return 1;
	w = &s->walk;
	if (w->done || w->todo == 0)
		return 1;
	if (w->left == 0) {
		struct iovec iov;

		if (w->vec == 0) {
			if (w->idx)
				goto end;
			w->idx = 1;
			w->left = w->todo;
		} else {
			if (w->idx >= w->count)
				goto end;
			if (bpf_probe_read_user(&iov, sizeof(iov), (const void *)(w->vec + (__u64)w->idx * sizeof(iov))))
				goto fault;
			w->idx++;
			w->base = (__u64)iov.iov_base;
			w->left = iov.iov_len < w->todo ? iov.iov_len : w->todo;
			if (w->left == 0)
				return 0;
		}
	}
	room = w->fill < PMOAS_HTTP_CAPTURE_BYTES ? PMOAS_HTTP_CAPTURE_BYTES - w->fill : 0;
	n = w->left < room ? (__u32)w->left : room;
	got = copy_at(s, w->fill, w->base, n);
	w->fill += got;
	w->base += got;
	w->left -= got;
	w->todo -= got;
	if (got < n)
		goto fault;
	if (w->todo == 0)
		goto end;
	if (w->fill >= PMOAS_HTTP_CAPTURE_BYTES)
		h2_flush(s, true);
	return w->done ? 1 : 0;
fault:
	pmoas_count_lost(PMOAS_HTTP_LOST_UNREADABLE);
end:
	w->done = 1;
	return 1;
}

/* Sends an HTTP/2 call of `moved` bytes: its first PMOAS_HTTP_CALL_CAPTURE_BYTES
 * in records of PMOAS_HTTP_CAPTURE_BYTES (the header in s->ev is filled but
 * for captured, part and flags). Returns the records handed to the ring. */
static __always_inline __u32 h2_send(struct http_scratch *s, struct http_conn *conn, __u8 call, __u64 buf,
				     __u64 moved, __u8 flags0)
{
	struct h2_walk *w = &s->walk;

	__builtin_memset(w, 0, sizeof(*w));
	w->todo = moved > PMOAS_HTTP_CALL_CAPTURE_BYTES ? PMOAS_HTTP_CALL_CAPTURE_BYTES : (__u32)moved;
	w->flags0 = flags0;
	switch (call) {
	case PMOAS_HTTP_CALL_READ:
	case PMOAS_HTTP_CALL_WRITE:
		w->base = buf;
		break;
	case PMOAS_HTTP_CALL_READV:
	case PMOAS_HTTP_CALL_WRITEV:
		w->vec = buf & 0x0000ffffffffffffULL;
		w->count = buf >> 48;
		break;
	default: { /* recvmsg, sendmsg: buf is the user msghdr */
		struct user_msghdr msg;

		if (bpf_probe_read_user(&msg, sizeof(msg), (const void *)buf)) {
			pmoas_count_lost(PMOAS_HTTP_LOST_UNREADABLE);
			return 0;
		}
		w->vec = (__u64)msg.msg_iov;
		w->count = msg.msg_iovlen;
		break;
	}
	}
	if (w->vec && !w->count)
		return 0;
	/* One step per iovec and per full record at most. */
	bpf_loop(PMOAS_HTTP_CALL_IOVECS + PMOAS_HTTP_CALL_PARTS, h2_step, NULL, 0);
	/* The call's last record (an empty one when a fault or the step bound
	 * came at a record's start): its continuations end there. */
	if (!w->ring_full && (w->fill || w->part > 0))
		h2_flush(s, false);
	if (w->endpoints_sent)
		conn->endpoints_sent = 1;
	return w->sent;
}

/* Did this call move the first bytes of its direction of the connection?
 * From the TCP socket's counters after the call (RFC 4898's bytes_received
 * and bytes_acked, in every kernel since 4.1): a read began at offset 0 if
 * the bytes the process has taken in all (received less those still
 * queued) are no more than it took now; a write, if the bytes it has
 * written in all (acknowledged plus queued) are no more than it wrote now,
 * give or take our SYN, which bytes_acked counts on an active open. A connection older than the
 * exporter is never at its start; a peek (MSG_PEEK) at the start is. */
static __always_inline bool at_stream_start(const struct sock *sk, __u8 direction, long ret)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u64 before;

	if (direction == PMOAS_HTTP_DIR_INGRESS) {
		__u32 queued = BPF_CORE_READ(tp, rcv_nxt) - BPF_CORE_READ(tp, copied_seq);

		before = BPF_CORE_READ(tp, bytes_received) - queued;
		return before <= (__u64)ret;
	}
	before = BPF_CORE_READ(tp, bytes_acked) + (__u32)(BPF_CORE_READ(tp, write_seq) - BPF_CORE_READ(tp, snd_una));
	return before <= (__u64)ret + 1;
}

static __always_inline bool is_word(const __u8 *d, char a, char b, char c, char e)
{
	return d[0] == a && d[1] == b && d[2] == c && d[3] == e;
}

/* Does a chunk start with an HTTP/1 request line or status line? */
static __always_inline bool http1_start(const __u8 *d, __u32 n)
{
	if (n < 5)
		return false;
	return is_word(d, 'G', 'E', 'T', ' ') || is_word(d, 'P', 'O', 'S', 'T') ||
	       is_word(d, 'P', 'U', 'T', ' ') || is_word(d, 'H', 'E', 'A', 'D') ||
	       is_word(d, 'D', 'E', 'L', 'E') || is_word(d, 'P', 'A', 'T', 'C') ||
	       is_word(d, 'O', 'P', 'T', 'I') || is_word(d, 'C', 'O', 'N', 'N') ||
	       is_word(d, 'T', 'R', 'A', 'C') || (is_word(d, 'H', 'T', 'T', 'P') && d[4] == '/');
}

/* Does a chunk start with the HTTP/2 client preface, or with a frame
 * header that only HTTP/2 would write there (connections joined
 * mid-stream)? User space checks the frames that follow. */
static __always_inline bool http2_start(const __u8 *d, __u32 n)
{
	__u32 len, stream;
	__u8 type;

	if (n < 9)
		return false;
	if (is_word(d, 'P', 'R', 'I', ' '))
		return true;
	len = (__u32)d[0] << 16 | (__u32)d[1] << 8 | d[2];
	type = d[3];
	stream = ((__u32)d[5] << 24 | (__u32)d[6] << 16 | (__u32)d[7] << 8 | d[8]);
	if (stream & 0x80000000u || len > 16384)
		return false;
	switch (type) {
	case 0: /* DATA */
	case 1: /* HEADERS */
	case 3: /* RST_STREAM */
		return stream != 0 && (type != 3 || len == 4);
	case 4: /* SETTINGS */
		return stream == 0 && len % 6 == 0 && (d[4] & ~1) == 0;
	case 6: /* PING */
		return stream == 0 && len == 8;
	case 7: /* GOAWAY */
		return stream == 0 && len >= 8;
	case 8: /* WINDOW_UPDATE */
		return len == 4;
	default:
		return false;
	}
}

/* The connection's addresses, ports and namespace, for a socket pointer
 * reached through helper reads (not BTF-typed). */
static __always_inline void read_endpoints(struct pmoas_http_event *ev, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET) {
		pmoas_addr_from_v4(ev->saddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		pmoas_addr_from_v4(ev->daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else {
		BPF_CORE_READ_INTO(&ev->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&ev->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	ev->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	ev->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* `call`: the exiting call's PMOAS_HTTP_CALL_*. */
static __always_inline int on_exit(long ret, __u8 call)
{
	struct http_conn *conn, fresh = {};
	struct http_scratch *s;
	struct pt_regs *regs;
	struct sock *sk;
	__u32 zero = 0, got = 0, size;
	__u64 sock_key, buf, id, cgroup_id, now;
	__u8 dir = (call & 1) ? PMOAS_HTTP_DIR_EGRESS : PMOAS_HTTP_DIR_INGRESS;
	bool known;
	__u32 fd;

	/* Most calls of the machine stop here: nothing moved (EAGAIN), or not
	 * a watched pod's. */
	if (ret <= 0)
		return 0;
	cgroup_id = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&http_watched, &cgroup_id))
		return 0;
	now = bpf_ktime_get_ns();
	/* The arguments, as the task passed them: the registers saved at the
	 * system call's entry (the return value goes elsewhere). */
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	fd = SYSCALL_ARG0(regs);
	buf = SYSCALL_ARG1(regs);
	if (call == PMOAS_HTTP_CALL_READV || call == PMOAS_HTTP_CALL_WRITEV) {
		/* The iovec count rides in the top 16 bits of the array's
		 * address (user addresses fit in 48 bits on x86_64 and arm64;
		 * UIO_MAXIOV is 1024). */
		__u64 vlen = SYSCALL_ARG2(regs);

		buf = (buf & 0x0000ffffffffffffULL) | (vlen > 0xffff ? 0xffffULL : vlen) << 48;
	}
	sk = sock_of_fd(fd);
	if (!sk)
		return 0;
	sock_key = (__u64)sk;
	conn = bpf_map_lookup_elem(&http_conns, &sock_key);
	if (conn && conn->proto == PMOAS_HTTP_PROTO_OTHER)
		return 0;
	/* Only TCP sockets enter http_conns: a known one is TCP. */
	if (!conn && !is_tcp(sk))
		return 0;
	s = bpf_map_lookup_elem(&http_scratch, &zero);
	if (!s)
		return 0;

	/* A connection still unknown is copied only as far as it takes to tell
	 * it: most of those chunks are never sent. An HTTP/1 one is copied in
	 * one go; an HTTP/2 one by h2_send, record after record. */
	known = conn && conn->proto != PMOAS_HTTP_PROTO_UNKNOWN;
	if (!known || conn->proto == PMOAS_HTTP_PROTO_HTTP1) {
		got = copy_call(s, call, buf, ret, known ? PMOAS_HTTP1_CAPTURE_BYTES : PMOAS_HTTP_CLASSIFY_BYTES);
		if (!got) {
			pmoas_count_lost(PMOAS_HTTP_LOST_UNREADABLE);
			return 0;
		}
	}

	if (!conn) {
		bpf_map_update_elem(&http_conns, &sock_key, &fresh, BPF_NOEXIST);
		conn = bpf_map_lookup_elem(&http_conns, &sock_key);
		if (!conn)
			return 0;
	}
	if (conn->proto == PMOAS_HTTP_PROTO_UNKNOWN) {
		if (http1_start(s->ev.data, got)) {
			conn->proto = PMOAS_HTTP_PROTO_HTTP1;
		} else if (http2_start(s->ev.data, got)) {
			conn->proto = PMOAS_HTTP_PROTO_HTTP2;
		} else {
			/* Enough bytes to have told, at the very start of the
			 * stream: not HTTP. In the middle (a connection older
			 * than the exporter): count turns (pmoas_http.h). */
			if (got >= 9 && at_stream_start(sk, dir, ret))
				conn->proto = PMOAS_HTTP_PROTO_OTHER;
			else if (conn->last_dir != dir + 1) {
				conn->last_dir = dir + 1;
				if (++conn->unknown_turns >= PMOAS_HTTP_MAX_UNKNOWN_TURNS)
					conn->proto = PMOAS_HTTP_PROTO_OTHER;
			}
			return 0;
		}
		/* HTTP/1: now the whole capture (HTTP/2: h2_send below). */
		if (conn->proto == PMOAS_HTTP_PROTO_HTTP1) {
			got = copy_call(s, call, buf, ret, PMOAS_HTTP1_CAPTURE_BYTES);
			if (!got) {
				pmoas_count_lost(PMOAS_HTTP_LOST_UNREADABLE);
				return 0;
			}
		}
	}

	id = bpf_get_current_pid_tgid();
	s->ev.sock = sock_key;
	s->ev.cgroup_id = cgroup_id;
	/* No entry hook: the exit's time for both (for a non-blocking socket
	 * the call lasted microseconds). */
	s->ev.start_ns = now;
	s->ev.end_ns = now;
	s->ev.tgid = id >> 32;
	s->ev.tid = (__u32)id;
	s->ev.total_len = ret > 0xffffffffL ? 0xffffffffu : (__u32)ret;
	s->ev.kind = PMOAS_HTTP_EVENT_DATA;
	s->ev.direction = dir;
	s->ev.proto = conn->proto;
	s->ev.call = call;
	s->ev.part = 0;
	/* Numbered whether or not the ring takes it: user space sees the gap. */
	s->ev.seq = conn->seq[dir & 1];
	if (conn->endpoints_sent) {
		s->ev.flags = 0;
	} else {
		s->ev.flags = PMOAS_HTTP_FLAG_ENDPOINTS;
		read_endpoints(&s->ev, sk);
	}
	if (conn->proto == PMOAS_HTTP_PROTO_HTTP2) {
		if (h2_send(s, conn, call, buf, ret, s->ev.flags))
			conn->seq[dir & 1]++;
		return 0;
	}
	conn->seq[dir & 1]++;
	s->ev.captured = got;
	size = got;
	if (size > PMOAS_HTTP_CAPTURE_BYTES)
		size = PMOAS_HTTP_CAPTURE_BYTES;
	/* No wakeup: user space polls the ring (every 20 ms), nobody waits. */
	if (bpf_ringbuf_output(&http_events, &s->ev, PMOAS_HTTP_EVENT_HEADER_BYTES + size, BPF_RB_NO_WAKEUP))
		pmoas_count_lost(PMOAS_HTTP_LOST_RING_FULL);
	else if (s->ev.flags & PMOAS_HTTP_FLAG_ENDPOINTS)
		conn->endpoints_sent = 1;
	return 0;
}

/* ---- the hooks ---- */

/* Hooks: syscalls:sys_exit_{read,recvfrom,write,sendto,readv,writev,recvmsg,
 * sendmsg} (ret: bytes moved). Arguments: read/recvfrom/write/sendto (fd,
 * buf, len), readv/writev (fd, iov, iovcnt), recvmsg/sendmsg (fd, msg,
 * flags). */
SEC("tracepoint/syscalls/sys_exit_read")
int http_read_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_READ); }
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int http_recvfrom_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_READ); }
SEC("tracepoint/syscalls/sys_exit_write")
int http_write_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_WRITE); }
SEC("tracepoint/syscalls/sys_exit_sendto")
int http_sendto_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_WRITE); }
SEC("tracepoint/syscalls/sys_exit_readv")
int http_readv_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_READV); }
SEC("tracepoint/syscalls/sys_exit_writev")
int http_writev_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_WRITEV); }
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int http_recvmsg_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_RECVMSG); }
SEC("tracepoint/syscalls/sys_exit_sendmsg")
int http_sendmsg_exit(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret, PMOAS_HTTP_CALL_SENDMSG); }

/* Hook: sock:inet_sock_set_state, to CLOSE. A connection seen as HTTP
 * tells user space it ended; every closed socket leaves http_conns. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(http_close, const struct sock *sk, int oldstate, int newstate)
{
	__u64 key = (__u64)sk;
	struct http_conn *conn;
	struct http_scratch *s;
	__u32 zero = 0;

	if (newstate != TCP_CLOSE)
		return 0;
	conn = bpf_map_lookup_elem(&http_conns, &key);
	if (!conn)
		return 0;
	if (conn->proto == PMOAS_HTTP_PROTO_HTTP1 || conn->proto == PMOAS_HTTP_PROTO_HTTP2) {
		s = bpf_map_lookup_elem(&http_scratch, &zero);
		if (s) {
			__builtin_memset(&s->ev, 0, PMOAS_HTTP_EVENT_HEADER_BYTES);
			s->ev.sock = key;
			s->ev.cgroup_id = pmoas_sock_cgroup_id(sk);
			s->ev.start_ns = s->ev.end_ns = bpf_ktime_get_ns();
			s->ev.kind = PMOAS_HTTP_EVENT_CLOSE;
			s->ev.flags = PMOAS_HTTP_FLAG_ENDPOINTS;
			s->ev.proto = conn->proto;
			pmoas_sock_addrs(sk, s->ev.saddr, s->ev.daddr);
			s->ev.sport = sk->__sk_common.skc_num;
			s->ev.dport = bpf_ntohs(sk->__sk_common.skc_dport);
			s->ev.netns = pmoas_sock_netns(sk);
			if (bpf_ringbuf_output(&http_events, &s->ev, PMOAS_HTTP_EVENT_HEADER_BYTES,
					       BPF_RB_NO_WAKEUP))
				pmoas_count_lost(PMOAS_HTTP_LOST_RING_FULL);
		}
	}
	bpf_map_delete_elem(&http_conns, &key);
	return 0;
}
