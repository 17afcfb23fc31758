#!/usr/bin/env python3
"""stats.py LOADER_LOG: the loader's sockops counters (summed over CPUs), sockhash size, pairs."""
import json, re, subprocess, sys
ids = dict(re.findall(r"map (\S+) id (\d+)", open(sys.argv[1]).read()))
def dump(name):
    out = subprocess.run(["bpftool", "-j", "map", "dump", "id", ids[name]], capture_output=True, text=True)
    return json.loads(out.stdout or "[]")
F = ["sockets_added", "sockets_removed", "redirected_messages", "redirected_bytes", "redirected_received_bytes",
     "misses", "miss_bytes", "insert_errors", "overflows", "closed_sent_bytes", "closed_received_bytes"]
for e in dump("sockops_counters"):
    f = e["formatted"]
    tot = {k: 0 for k in F}
    for v in f["values"]:
        for k in F:
            tot[k] += v["value"].get(k, 0)
    print("cgroup", f["key"], " ".join(f"{k}={v}" for k, v in tot.items()))
print("sockhash entries", len(dump("sockops_hash")), "pairs", len(dump("sockops_pairs")))
lost = dump("lost_events")
print("lost", [sum(v["value"] for v in e["formatted"]["values"]) for e in lost])
