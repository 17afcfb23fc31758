#!/usr/bin/env python3
"""unread.py PORT MAP_ID [keep]: the server writes 1 MiB to the client, which does not read; then every
sockhash entry of this connection is deleted (bpftool map delete), as a 'leave acceleration'
would; then the client reads. Prints how many of the 1 MiB bytes arrived and whether intact."""
import hashlib, json, socket, subprocess, sys, threading, time
port, mid = int(sys.argv[1]), sys.argv[2]
data = bytes(range(256)) * 4096
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", port)); l.listen()
def srv():
    c, _ = l.accept(); c.sendall(data); time.sleep(2); c.close()
threading.Thread(target=srv, daemon=True).start()
s = socket.create_connection(("127.0.0.1", port)); time.sleep(0.5)
entries = [] if len(sys.argv) > 3 and sys.argv[3] == "keep" else json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", mid], capture_output=True, text=True).stdout)
for e in entries:
    subprocess.run(["bpftool", "map", "delete", "id", mid, "key", "hex"] + [k[2:] for k in e["key"]], check=True)
left = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", mid], capture_output=True, text=True).stdout)
print("deleted", len(entries), "sockhash entries, left", len(left))
got = b""; s.settimeout(3)
try:
    while len(got) < len(data):
        d = s.recv(1 << 20)
        if not d: break
        got += d
except Exception as e:
    print("recv:", repr(e))
print("client read", len(got), "of", len(data), "intact" if got == data[:len(got)] else "CORRUPT")
