#!/usr/bin/env python3
"""Half-close under redirect: server sends, shutdown(SHUT_WR), then a BLOCKING recv();
the client reads to EOF, waits, then sends 100 bytes. Prints what the server's recv returned."""
import socket, sys, threading, time, subprocess
port = int(sys.argv[1]); dump = sys.argv[2] if len(sys.argv) > 2 else None
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", port)); l.listen()
res = {}
def server():
    c, _ = l.accept()
    c.sendall(b"x" * 5000); c.shutdown(socket.SHUT_WR)
    try:
        res["recv"] = len(c.recv(4096))
    except Exception as e:
        res["recv"] = repr(e)
t = threading.Thread(target=server); t.start()
s = socket.create_connection(("127.0.0.1", port))
got = 0
while True:
    d = s.recv(65536)
    if not d: break
    got += len(d)
time.sleep(0.3)
if dump:
    print("sockhash entries before client send:", subprocess.run(["bpftool", "map", "dump", "id", dump], capture_output=True, text=True).stdout.count("key"))
s.sendall(b"y" * 100)
t.join(5)
print("client got", got, "| server recv after its own shutdown ->", res.get("recv"))
