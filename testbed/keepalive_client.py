#!/usr/bin/env python3
"""One HTTP/1.1 keep-alive connection, driven from stdin: for tests that need
a connection older than something (the exporter), used again later. Python's
standard library only. Each command prints one JSON line on stdout:

    keepalive_client.py HOST:PORT
    get PATH [N]        N GETs (default 1) one after another
                        -> {"statuses": [[200, N]], "local_port": P}
    start PATH KIB      a GET whose response is read only up to its head and
                        KIB KiB of body; the rest waits in the network
                        -> {"status": 200, "read": BYTES, "local_port": P}
    finish              reads the rest of the started response
                        -> {"read": BYTES, "local_port": P}
    quit

The connection is never reopened: if the server closed it, the next request
fails (and the client exits non-zero). `local_port` lets the caller check
that every request went over the same connection.
"""

import http.client
import json
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.connect()
    # http.client silently reconnects a closed connection: not here.
    conn.auto_open = 0
    local_port = conn.sock.getsockname()[1]
    started = None

    def reply(obj):
        obj["local_port"] = conn.sock.getsockname()[1] if conn.sock else None
        print(json.dumps(obj), flush=True)

    print(json.dumps({"connected": True, "local_port": local_port}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd = words[0]
        if cmd == "get":
            path, count = words[1], int(words[2]) if len(words) > 2 else 1
            statuses = {}
            for _ in range(count):
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            reply({"statuses": sorted([s, n] for s, n in statuses.items())})
        elif cmd == "start":
            path, kib = words[1], int(words[2])
            conn.request("GET", path)
            started = conn.getresponse()
            data = started.read(kib * 1024)
            reply({"status": started.status, "read": len(data)})
        elif cmd == "finish":
            total = 0
            while True:
                # Small reads: many system calls, each a chunk of body.
                data = started.read(16384)
                if not data:
                    break
                total += len(data)
            started = None
            reply({"read": total})
        elif cmd == "quit":
            break
        else:
            sys.exit(f"unknown command {cmd!r}")
    conn.close()


if __name__ == "__main__":
    main()
