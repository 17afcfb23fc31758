#!/usr/bin/env python3
"""splice.py PORT: sender uses os.sendfile() of an 8 MiB file, receiver os.splice()s socket->pipe.
Prints bytes and sha256 match, or the error/timeout."""
import hashlib, os, random, socket, sys, threading
port = int(sys.argv[1])
data = random.Random(3).randbytes(8 << 20)
open("/tmp/so-splice.bin", "wb").write(data)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", port)); l.listen()
res = {}
def rx():
    c, _ = l.accept(); c.settimeout(None); r, w = os.pipe(); h = hashlib.sha256(); n = 0
    try:
        while True:
            k = os.splice(c.fileno(), w, 65536)
            if k == 0: break
            h.update(os.read(r, k)); n += k
        res["rx"] = (n, h.hexdigest() == hashlib.sha256(data).hexdigest())
    except Exception as e:
        res["rx"] = repr(e)
t = threading.Thread(target=rx, daemon=True); t.start()
s = socket.create_connection(("127.0.0.1", port))
with open("/tmp/so-splice.bin", "rb") as f:
    off = 0
    while off < len(data):
        off += os.sendfile(s.fileno(), f.fileno(), off, len(data) - off)
s.close(); t.join(10)
print("sendfile sent", off, "| splice receiver:", res.get("rx", "TIMEOUT (no data / hung)"))
