import socket, sys, threading
l = socket.socket(socket.AF_INET6); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("::1", 7020)); l.listen()
def srv():
    c, _ = l.accept()
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
threading.Thread(target=srv, daemon=True).start()
s = socket.create_connection(("::1", 7020)); ok = 0
for i in range(200):
    m = bytes([i % 256]) * 4096; s.sendall(m); b = b""
    while len(b) < 4096: b += s.recv(4096 - len(b))
    ok += b == m
print("v6 ::1 echoes ok", ok, "of 200")
