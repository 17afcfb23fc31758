#!/bin/sh
# acct.sh LABEL: 4 KiB ping-pong for ~2 s; samples tcp_info of the client socket (ss -ti),
# lo packet counters of the netns, and syscall exit tracepoints for the pp client.
LABEL=$1
ip netns exec so-p1 cat /sys/class/net/lo/statistics/tx_packets /sys/class/net/lo/statistics/tx_bytes | tr '\n' ' ' > lo0
timeout 5 bpftrace sys.bt > bt.out 2>&1 &
BT=$!; sleep 1.5
./inpod taskset -c 1 ./pp client 127.0.0.1 9000 4096 100000 > pp.out &
P=$!; sleep 0.3
ip netns exec so-p1 ss -tin dst 127.0.0.1:9000 | grep -o "bytes_sent:[0-9]*\|bytes_acked:[0-9]*\|bytes_received:[0-9]*\|segs_out:[0-9]*\|segs_in:[0-9]*" | tr '\n' ' '; echo
wait $P; cat pp.out
ip netns exec so-p1 cat /sys/class/net/lo/statistics/tx_packets /sys/class/net/lo/statistics/tx_bytes | tr '\n' ' ' > lo1
echo "$LABEL lo tx packets/bytes delta: $(paste -d' ' lo0 lo1 | awk '{print $3-$1, $4-$2}')"
wait $BT; grep "@" bt.out | tr '\n' ' '; echo
