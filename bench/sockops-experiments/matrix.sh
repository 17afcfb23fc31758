#!/bin/sh
# Checksummed transfers over both in-pod layouts: loopback (127.0.0.1:8080) and
# iptables REDIRECT (10.99.0.2:80 -> 15001). Prints one OK/BAD line per run.
for dst in "127.0.0.1 8080" "10.99.0.2 80"; do
  for size in 64 4096 65536 1048576; do
    n=200; [ $size -ge 1048576 ] && n=20
    ./inpod python3 xfer.py rr $dst $size $n | sed "s/^/[$dst] /"
  done
  ./inpod python3 xfer.py up $dst 2 | sed "s/^/[$dst] /"
  ./inpod python3 xfer.py down $dst 2 | sed "s/^/[$dst] /"
done
