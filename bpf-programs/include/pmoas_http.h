/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The http collector's contract between http.bpf.c and user space
 * (collectors/src/http/, mirrored in bpf-programs/src/http.rs): map sizes,
 * protocols, lost-event slots and the event layout. Offsets are written
 * next to each field; the Rust mirror asserts them with offset_of!.
 */
#ifndef PMOAS_HTTP_H
#define PMOAS_HTTP_H

#include "pmoas_types.h"

/* ---- sizes (user space may change map sizes with set_max_entries) ---- */

/* Bytes of one record: of a socket read or write on an HTTP/2 connection,
 * its first record and each continuation record carry this many (see
 * PMOAS_HTTP_CALL_CAPTURE_BYTES): one call may carry many frames, and a
 * header block lost past the capture makes the connection's HPACK table
 * unknown. A power of 2; the per-CPU scratch holds twice it (at most
 * 32 KiB). */
#define PMOAS_HTTP_CAPTURE_BYTES 8192
/* The same on an HTTP/1 connection: the start of a message (request or
 * status line and headers) fits; a body needs only its length. */
#define PMOAS_HTTP1_CAPTURE_BYTES 2048
/* Bytes of one call copied at most on an HTTP/2 connection, in records of
 * PMOAS_HTTP_CAPTURE_BYTES each: the call's first record, then its
 * continuation records (`part` 1, 2, ...). grpc-core reads up to 64 KiB at
 * once (what queued up: under h2load -c4 -m8 the testbed's Greeter often
 * read more than 8 KiB), and every frame header and header block past the
 * capture is lost, with a lost block the connection's HPACK table. Beyond
 * this the call is counted by length only, as before. A multiple of
 * PMOAS_HTTP_CAPTURE_BYTES. HTTP/1 calls stay one record. */
#define PMOAS_HTTP_CALL_CAPTURE_BYTES 65536
/* Records of one call at most (its first and continuations). */
#define PMOAS_HTTP_CALL_PARTS 8
/* iovecs of an HTTP/2 call walked at most: UIO_MAXIOV, every one a call
 * can have (grpc-core writes a slice per frame header and payload, up to
 * 260 a call). Each costs one 16-byte read. */
#define PMOAS_HTTP_CALL_IOVECS 1024
/* Cgroups whose processes' socket I/O is captured (pod containers; user
 * space keeps it filled from discovery). */
#define PMOAS_HTTP_WATCHED_MAP_SIZE 16384
/* Sockets seen with their protocol, LRU: the least recently used goes. */
#define PMOAS_HTTP_CONN_MAP_SIZE 65536
/* The ring buffer that carries chunks to user space (drained continuously). */
#define PMOAS_HTTP_RING_BYTES 8388608 /* 8 MiB */
/* When a connection is given up (it then costs one map lookup per call and
 * never reaches user space). Its first bytes in a direction (the TCP
 * socket's own counters say which those are) must start like HTTP: if not,
 * it is given up at once. A connection older than the exporter is met in
 * the middle of its streams, where a message body may look like anything:
 * it is given up only after this many *turns* (a chunk in the other
 * direction than the last one) whose first chunk did not start like HTTP.
 * HTTP/1 without pipelining starts a message at every turn (the response
 * after the request, the next request after the response), so the rest of
 * a body in flight, however long, costs one turn; HTTP/2 writes start with
 * a frame header. */
#define PMOAS_HTTP_MAX_UNKNOWN_TURNS 8
/* Bytes copied to tell a connection's protocol: a chunk of a connection
 * still unknown is first copied this far only (most are never sent). */
#define PMOAS_HTTP_CLASSIFY_BYTES 16
/* iovecs of a readv/writev/recvmsg/sendmsg on an HTTP/1 connection (or
 * one not decided yet) copied from at most: nginx writes a chunked
 * response as header, size, data and trailer iovecs. HTTP/2 calls walk up
 * to PMOAS_HTTP_CALL_IOVECS. */
#define PMOAS_HTTP_MAX_IOVECS 16

/* ---- what a connection carries, as the kernel infers it ---- */
#define PMOAS_HTTP_PROTO_UNKNOWN 0 /* not decided yet */
#define PMOAS_HTTP_PROTO_HTTP1 1   /* a chunk began with a request or status line */
#define PMOAS_HTTP_PROTO_HTTP2 2   /* the client preface, or plausible frames */
#define PMOAS_HTTP_PROTO_OTHER 3   /* given up: never sent to user space */

/* ---- the system call behind a chunk ---- */
#define PMOAS_HTTP_CALL_READ 0	  /* read, recvfrom */
#define PMOAS_HTTP_CALL_WRITE 1	  /* write, sendto */
#define PMOAS_HTTP_CALL_READV 2	  /* readv */
#define PMOAS_HTTP_CALL_WRITEV 3  /* writev */
#define PMOAS_HTTP_CALL_RECVMSG 4 /* recvmsg */
#define PMOAS_HTTP_CALL_SENDMSG 5 /* sendmsg */

/* ---- event kinds ---- */
#define PMOAS_HTTP_EVENT_DATA 0	 /* a read or write of a socket */
#define PMOAS_HTTP_EVENT_CLOSE 1 /* the connection closed */

/* direction of a chunk: PMOAS_DIR_INGRESS (read) / PMOAS_DIR_EGRESS (written),
 * as in pmoas_netstack.h */
#define PMOAS_HTTP_DIR_INGRESS 0
#define PMOAS_HTTP_DIR_EGRESS 1

/* ---- event flags ---- */
/* saddr..netns are filled. A data event carries them until one that does
 * has been taken by the ring (they do not change; reading them is a third
 * of a chunk's cost); user space keeps them per socket. Closes always
 * carry them. */
#define PMOAS_HTTP_FLAG_ENDPOINTS 1
/* More records of this call follow (HTTP/2 calls beyond one record's
 * capture): continuation records carry the same seq, `part` one more
 * each, and every record but a call's last is full
 * (PMOAS_HTTP_CAPTURE_BYTES), so part k starts at byte k x that of the
 * call. Only a call's first record may carry the endpoints. */
#define PMOAS_HTTP_FLAG_MORE 2

/* ---- lost events: slots of lost_events (names in http.rs) ---- */
/* 0 is PMOAS_LOST_AGGREGATION_MAP_FULL (pmoas_common.h), unused here. */
#define PMOAS_HTTP_LOST_RING_FULL 1	 /* a chunk did not fit the ring */
#define PMOAS_HTTP_LOST_UNUSED 2	 /* was: a call's entry not kept (no entry hook now) */
#define PMOAS_HTTP_LOST_UNREADABLE 3	 /* the bytes could not be copied */
#define PMOAS_HTTP_LOST_REASONS 4

/* One chunk (or a close) of one connection, or a continuation record of
 * an HTTP/2 chunk (`part` > 0). Only `captured` bytes of `data` are sent:
 * the ring record is header + captured bytes. */
struct pmoas_http_event {
	__u64 sock;	  /* 0: struct sock address, the connection's identity */
	__u64 cgroup_id;  /* 8: the calling process's cgroup v2 id */
	__u64 start_ns;	  /* 16: syscall exit (CLOCK_MONOTONIC): no entry hook */
	__u64 end_ns;	  /* 24: syscall exit */
	__u32 tgid;	  /* 32 */
	__u32 tid;	  /* 36 */
	__u32 total_len;  /* 40: bytes the call moved (its return value) */
	__u16 captured;	  /* 44: bytes in data */
	__u8 kind;	  /* 46: PMOAS_HTTP_EVENT_* */
	__u8 direction;	  /* 47: PMOAS_HTTP_DIR_* */
	__u8 proto;	  /* 48: PMOAS_HTTP_PROTO_* */
	__u8 call;	  /* 49: PMOAS_HTTP_CALL_* */
	__u8 flags;	  /* 50: PMOAS_HTTP_FLAG_* */
	__u8 part;	  /* 51: 0: a call's first record; k: its k-th continuation */
	__u32 seq;	  /* 52: the call's number in its connection and direction
			   * (its continuations carry it too): a gap is a call
			   * whose first record the ring could not take */
	/* The endpoints: only meaningful with PMOAS_HTTP_FLAG_ENDPOINTS */
	__u8 saddr[16];	  /* 56: local address (IPv4 as ::ffff:a.b.c.d) */
	__u8 daddr[16];	  /* 72: remote address */
	__u16 sport;	  /* 88: local port, host order */
	__u16 dport;	  /* 90: remote port, host order */
	__u32 netns;	  /* 92: network namespace inode (loopback addresses repeat) */
	__u8 data[PMOAS_HTTP_CAPTURE_BYTES]; /* 96 */
};
#define PMOAS_HTTP_EVENT_HEADER_BYTES 96
_Static_assert(PMOAS_HTTP_CALL_CAPTURE_BYTES == PMOAS_HTTP_CALL_PARTS * PMOAS_HTTP_CAPTURE_BYTES,
	       "a call's records");
_Static_assert(__builtin_offsetof(struct pmoas_http_event, data) == PMOAS_HTTP_EVENT_HEADER_BYTES,
	       "pmoas_http_event layout");

#endif
