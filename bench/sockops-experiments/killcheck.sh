#!/bin/sh
# killcheck.sh: is an established connection still redirected after the loader is SIGKILLed?
# Counts the namespace's lo tx bytes while an old stream goes on after the kill, then while a
# new connection runs. Redirected bytes never reach lo.
lo() { ip netns exec so-p1 cat /sys/class/net/lo/statistics/tx_bytes; }
./loader -c /sys/fs/cgroup/unified/so-test > k.log 2>&1 & L=$!; sleep 0.5
./inpod python3 xfer.py up 127.0.0.1 8080 5 > k.out 2>&1 & S=$!; sleep 1.5
kill -9 $L; sleep 0.3
a=$(lo); sleep 2; b=$(lo)
echo "old stream, 2 s after the SIGKILL: lo tx bytes $((b-a))"
wait $S; cat k.out
./inpod python3 xfer.py up 127.0.0.1 8080 2 > k2.out & S=$!; sleep 1
a=$(lo); sleep 0.5; b=$(lo)
echo "new connection after the SIGKILL, 0.5 s: lo tx bytes $((b-a))"
wait $S; cat k2.out
