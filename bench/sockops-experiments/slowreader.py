#!/usr/bin/env python3
"""slowreader.py PORT [MiB]: backpressure. The sender writes 64 MiB (or MiB) in 64 KiB writes as fast as it
can; the receiver reads nothing for 2 s, then reads slowly (64 KiB every 1 ms) for a while, then
fast. Reports what the sender saw (time to write, errors) and whether all bytes arrived intact,
plus the receiver socket's queued memory while it slept (ss -tm)."""
import hashlib, random, socket, subprocess, sys, threading, time
port = int(sys.argv[1]); data = random.Random(5).randbytes(64 << 20) * ((int(sys.argv[2]) if len(sys.argv) > 2 else 64) // 64)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", port)); l.listen()
res = {}
def rx():
    c, _ = l.accept(); time.sleep(2)
    res["mem"] = subprocess.run(["ss", "-tmn", f"sport = :{port}"], capture_output=True, text=True).stdout.split("\n")[-2].strip()
    got = bytearray(); t0 = time.monotonic()
    while True:
        d = c.recv(65536)
        if not d: break
        got += d
        if time.monotonic() - t0 < 1: time.sleep(0.001)
    res["ok"] = (len(got), hashlib.sha256(got).digest() == hashlib.sha256(data).digest())
t = threading.Thread(target=rx); t.start()
s = socket.create_connection(("127.0.0.1", port)); t0 = time.monotonic(); err = None
try:
    for off in range(0, len(data), 65536):
        s.sendall(data[off:off + 65536])
except Exception as e:
    err = repr(e)
s.close(); t.join()
print(f"sender: {time.monotonic() - t0:.2f} s, error {err}; receiver queue while asleep: {res.get('mem')}; received {res['ok'][0]} of {len(data)} intact={res['ok'][1]}")
