#!/usr/bin/env python3
"""Checksummed transfers for the sockops experiments.

  xfer.py serve PORT
  xfer.py rr HOST PORT SIZE COUNT      request/response: COUNT echoes of SIZE bytes, compared byte for byte
  xfer.py up HOST PORT SECONDS         client streams random-sized writes for SECONDS, server returns count+sha256
  xfer.py down HOST PORT SECONDS       server streams for SECONDS, client returns count+sha256, server compares
Prints one line: OK/BAD with byte counts. Exit 1 on any mismatch or error.
"""
import hashlib, os, random, socket, struct, sys, threading, time

BLOB = random.Random(7).randbytes(8 << 20)

EAGAINS = 0

def recv(s, n):
    """recv() that retries the spurious EAGAIN a blocking socket in a sockmap can return
    (tcp_bpf_recvmsg: one wakeup without data, e.g. the ACK of our own FIN); counted."""
    global EAGAINS
    while True:
        try:
            return s.recv(n)
        except BlockingIOError:
            EAGAINS += 1
            if EAGAINS > 1000:
                raise

def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        c = recv(s, min(n - len(buf), 1 << 20))
        if not c:
            raise EOFError(f"EOF after {len(buf)} of {n}")
        buf += c
    return bytes(buf)

def stream_out(s, seconds, seed, trailer=False):
    rng = random.Random(seed); h = hashlib.sha256(); n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        size = rng.choice([1, 100, 4096, 65536, 1 << 20, rng.randint(1, 300000)])
        off = rng.randint(0, len(BLOB) - size)
        chunk = memoryview(BLOB)[off:off + size]
        s.sendall(chunk); h.update(chunk); n += size
    if trailer:  # byte count and sha256 of everything before it, for the receiver to check
        s.sendall(struct.pack("!Q", n) + h.digest())
    s.shutdown(socket.SHUT_WR)
    return n, h.hexdigest()

def stream_in(s):
    h = hashlib.sha256(); n = 0
    while True:
        c = recv(s, 1 << 20)
        if not c:
            return n, h.hexdigest()
        h.update(c); n += len(c)

def handle(c):
    try:
        mode, a, b = struct.unpack("!cQQ", recv_exact(c, 17))
        if mode == b"E":
            for _ in range(b):
                c.sendall(recv_exact(c, a))
        elif mode == b"U":
            n, d = stream_in(c)
            c.sendall(f"{n} {d}".encode())
            if EAGAINS:
                print("server eagain so far", EAGAINS, file=sys.stderr, flush=True)
        elif mode == b"D":
            stream_out(c, a / 1000, b, trailer=True)
    except Exception as e:
        import traceback
        print("server error", repr(e), traceback.format_exc().splitlines()[-3], file=sys.stderr, flush=True)
    finally:
        c.close()

def serve(port):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port)); l.listen(128)
    while True:
        c, _ = l.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()

def main():
    cmd = sys.argv[1]
    if cmd == "serve":
        return serve(int(sys.argv[2]))
    host, port = sys.argv[2], int(sys.argv[3])
    s = socket.create_connection((host, port))
    if cmd == "rr":
        size, count = int(sys.argv[4]), int(sys.argv[5])
        s.sendall(struct.pack("!cQQ", b"E", size, count))
        rng = random.Random(size)
        for i in range(count):
            off = rng.randint(0, len(BLOB) - size)
            msg = BLOB[off:off + size]
            s.sendall(msg)
            if recv_exact(s, size) != msg:
                print(f"BAD rr size {size} at {i}"); sys.exit(1)
        print(f"OK rr size {size} count {count} bytes {size*count} each way eagain {EAGAINS}")
    elif cmd == "up":
        s.sendall(struct.pack("!cQQ", b"U", 0, 0))
        n, d = stream_out(s, float(sys.argv[4]), os.getpid())
        got = recv(s, 200).decode()
        ok = got == f"{n} {d}"
        print(("OK" if ok else "BAD") + f" up sent {n} server {got.split()[0] if got else 'nothing'} eagain {EAGAINS}")
        sys.exit(0 if ok else 1)
    elif cmd == "down":
        s.sendall(struct.pack("!cQQ", b"D", int(float(sys.argv[4]) * 1000), os.getpid()))
        h = hashlib.sha256(); n = 0; tail = b""
        while True:  # hash all but the last 40 bytes (the trailer)
            c = recv(s, 1 << 20)
            if not c:
                break
            buf = tail + c
            h.update(buf[:-40]); n += len(buf) - 40 if len(buf) > 40 else 0
            tail = buf[-40:] if len(buf) > 40 else buf
        ok = len(tail) == 40 and struct.unpack("!Q", tail[:8])[0] == n and tail[8:] == h.digest()
        sent = struct.unpack("!Q", tail[:8])[0] if len(tail) == 40 else None
        print(("OK" if ok else "BAD") + f" down received {n} server sent {sent} eagain {EAGAINS}")
        sys.exit(0 if ok else 1)

main()
