#!/usr/bin/env python3
"""inbound.py: Istio's inbound hop: Envoy connects from 127.0.0.6 to the pod IP (10.99.0.1:8080);
200 checksummed 4 KiB echoes."""
import socket
s = socket.socket(); s.bind(("127.0.0.6", 0)); s.connect(("10.99.0.1", 8080))
import struct, random
s.sendall(struct.pack("!cQQ", b"E", 4096, 200)); ok = 0
for i in range(200):
    m = random.randbytes(4096); s.sendall(m); b = b""
    while len(b) < 4096: b += s.recv(4096 - len(b))
    ok += b == m
print("127.0.0.6 -> 10.99.0.1:8080 echoes ok", ok, "of 200")
