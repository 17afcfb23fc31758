#!/usr/bin/env python3
"""gRPC client of the testbed's Greeter (grpc_server.py): COUNT SayHello
calls over one HTTP/2 connection (h2c), CONCURRENCY in flight, FAIL of them
(spread evenly) named "fail-I" so the server answers UNAVAILABLE, the rest
"ok-I". Prints one JSON report on stdout:

    {"calls": N, "codes": {"OK": N-M, "UNAVAILABLE": M}, "latency_ms": {"min": .., "p50": .., "max": ..}}

    grpc_client.py --target 10.200.1.11:15006 --count 100 --fail 10 --concurrency 8 [--timeout 10] [--pad 12000]

--pad N appends N bytes to every name: requests and replies (the Greeter
echoes the name) of more than N bytes, each written and read as more than
one HTTP/2 frame.

With --stdin, the channel (one HTTP/2 connection) stays open across batches
of calls read from stdin, one per line, each answered by a report line:

    calls COUNT FAIL    COUNT calls one after another, FAIL of them failing
    quit

For load with h2load (Debian nghttp2-client), write one request frame
(5-byte gRPC prefix + HelloRequest) and send it as the body:

    grpc_client.py --write-frame req.bin --name ok
    h2load -n 10000 -c 4 -m 16 -d req.bin -H 'content-type: application/grpc' -H 'te: trailers' \\
        http://10.200.1.11:15006/helloworld.Greeter/SayHello
"""

import argparse
import json
import os
import struct
import sys
import threading
import time
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpc_server import METHOD, SERVICE, messages  # noqa: E402


def run(call, request, count, fail, concurrency, timeout, first, pad=0):
    """COUNT calls, FAIL of them (spread evenly) failing; names from FIRST,
    PAD bytes longer."""
    lock = threading.Lock()
    codes = {}
    latencies = []

    def one(i):
        # Call i fails if it moves the count of failures so far up.
        failing = (i + 1) * fail // count > i * fail // count
        name = (f"fail-{first + i}" if failing else f"ok-{first + i}") + "x" * pad
        start = time.monotonic()
        try:
            call(request(name=name), timeout=timeout)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        elapsed = (time.monotonic() - start) * 1000.0
        with lock:
            codes[code.name] = codes.get(code.name, 0) + 1
            latencies.append(elapsed)

    with futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(one, range(count)))
    return codes, latencies


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="HOST:PORT")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--fail", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--pad", type=int, default=0, help="bytes appended to every name")
    p.add_argument("--write-frame", metavar="PATH", help="write one request frame (for h2load -d) and exit")
    p.add_argument("--name", default="ok", help="the name in --write-frame's request")
    p.add_argument("--stdin", action="store_true", help="batches of calls from stdin on one channel")
    a = p.parse_args()

    request, reply = messages()
    if a.write_frame:
        body = request(name=a.name).SerializeToString()
        with open(a.write_frame, "wb") as f:
            f.write(struct.pack(">BI", 0, len(body)) + body)
        return
    if not a.target:
        p.error("--target is required")
    if not 0 <= a.fail <= a.count:
        p.error("--fail must be between 0 and --count")

    # No proxy from the environment: test traffic stays on this machine.
    channel = grpc.insecure_channel(a.target, options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=a.timeout)
    call = channel.unary_unary(
        f"/{SERVICE}/{METHOD}", request_serializer=request.SerializeToString, response_deserializer=reply.FromString
    )
    if a.stdin:
        # Sequential calls; the names go on counting across batches.
        done = 0
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            if words[0] != "calls" or len(words) != 3:
                sys.exit(f"unknown command {line.strip()!r}")
            count, fail = int(words[1]), int(words[2])
            codes, _ = run(call, request, count, fail, 1, a.timeout, done)
            done += count
            print(json.dumps({"calls": count, "codes": codes}), flush=True)
        channel.close()
        return
    codes, latencies = run(call, request, a.count, a.fail, a.concurrency, a.timeout, 0, a.pad)
    channel.close()
    latencies.sort()
    lat = {"min": 0.0, "p50": 0.0, "max": 0.0}
    if latencies:
        lat = {"min": latencies[0], "p50": latencies[len(latencies) // 2], "max": latencies[-1]}
    print(json.dumps({"calls": a.count, "codes": codes, "latency_ms": lat}))


if __name__ == "__main__":
    main()
