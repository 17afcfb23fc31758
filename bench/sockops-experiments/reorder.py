#!/usr/bin/env python3
"""reorder.py MAP_ID: can a redirected message overtake one that went through TCP?
Run in netns so-p1 but OUTSIDE the watched cgroup
(nsenter --net=/run/netns/so-p1 python3 reorder.py ID; nsenter keeps /sys, ip netns exec does not):
the server's accepted socket is then not put in the map by sock_ops. The client (in the cgroup,
so in the map) sends A*1000 -> a miss, through TCP. Then this script puts the accepted socket
into the sockhash itself (as a late PASSIVE_ESTABLISHED would), the client sends B*1000, and
the server reads: A before B is right."""
import ctypes, json, os, socket, struct, subprocess, sys
mid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(321, cmd, buf, 128)
    if r < 0: raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", 7040)); l.listen()
child = subprocess.Popen(["sh", "-c", "echo $$ > /sys/fs/cgroup/unified/so-test/cgroup.procs && exec python3 -c \"$0\"", """
import socket, sys
s = socket.create_connection(("127.0.0.1", 7040))
s.sendall(b"A" * 1000); print("sent1", flush=True); sys.stdin.readline()
s.sendall(b"B" * 1000); print("sent2", flush=True); sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
c, _ = l.accept()
assert child.stdout.readline().strip() == "sent1"
entries = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(mid)], capture_output=True, text=True).stdout)
assert len(entries) == 1, f"expected only the client's entry, got {len(entries)}"
key = bytearray(int(b, 16) for b in entries[0]["key"]); key[26] = 2  # side: PASSIVE
map_fd = bpf(14, struct.pack("I", mid))  # BPF_MAP_GET_FD_BY_ID
k = ctypes.create_string_buffer(bytes(key), 32); v = ctypes.create_string_buffer(struct.pack("I", c.fileno()), 4)
bpf(2, struct.pack("IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))  # BPF_MAP_UPDATE_ELEM
child.stdin.write("go\n"); child.stdin.flush()
assert child.stdout.readline().strip() == "sent2"
got = b""
c.settimeout(2)
try:
    while len(got) < 2000:
        d = c.recv(4096)
        if not d: break
        got += d
except socket.timeout:
    pass
child.stdin.write("bye\n"); child.stdin.flush(); child.wait()
order = "".join(sorted(set(got[:1000].decode()))) + "|" + "".join(sorted(set(got[1000:].decode())))
print(f"server read {len(got)} bytes, first half/second half: {order}:", "IN ORDER" if got == b"A" * 1000 + b"B" * 1000 else "REORDERED/WRONG")
