#!/bin/sh
# failsafe.sh MODE: start checksummed streams (up and down, both layouts) and 64 KiB
# request/response loops, then stop the loader mid-stream:
#   kill  - SIGKILL the loader, nothing pinned
#   pin   - SIGKILL a loader that pinned maps + sk_msg prog (not the sock_ops link)
# Then checks every stream and that new connections use the plain stack.
# RESTART=reuse (a new loader reuses the pinned maps, KIND=legacy|link for its sk_msg attach)
# or RESTART=new (new loader, new maps) starts a second loader after the kill, under load.
MODE=$1; PIN=$PWD/bpffs/sockops
mountpoint -q bpffs || { mkdir -p bpffs && mount -t bpf bpf bpffs; }
rm -rf "$PIN"; mkdir -p "$PIN"
if [ "$MODE" = pin ]; then ./loader -c /sys/fs/cgroup/unified/so-test -p "$PIN" > fs-loader.log 2>&1 &
else ./loader -c /sys/fs/cgroup/unified/so-test > fs-loader.log 2>&1 & fi
LP=$!; sleep 0.5
rm -f fs-*.out; CLIENTS=""
for dst in "127.0.0.1 8080" "10.99.0.2 80"; do
  ./inpod python3 xfer.py up $dst 6 > "fs-up-${dst% *}.out" 2>&1 & CLIENTS="$CLIENTS $!"
  ./inpod python3 xfer.py down $dst 6 > "fs-down-${dst% *}.out" 2>&1 & CLIENTS="$CLIENTS $!"
  ./inpod python3 xfer.py rr $dst 65536 20000 > "fs-rr-${dst% *}.out" 2>&1 & CLIENTS="$CLIENTS $!"
done
sleep 2
./stats.py fs-loader.log > fs-stats-before.txt 2>&1
kill -9 $LP; echo "SIGKILLed loader $LP at t=2.5s"
sleep 0.5
bpftool prog show | grep -c sockops_ | sed 's/^/sockops programs still loaded: /'
ls "$PIN" | tr '\n' ' ' | sed 's/^/pinned: /'; echo
# RESTART: "" (none), "reuse" (new loader reuses the pinned maps), "new" (new loader, new maps)
case "$RESTART" in
reuse) sleep 0.5; ./loader -c /sys/fs/cgroup/unified/so-test -p "$PIN" -r -k "${KIND:-legacy}" > fs-loader2.log 2>&1 & L2=$! ;;
new) sleep 0.5; ./loader -c /sys/fs/cgroup/unified/so-test > fs-loader2.log 2>&1 & L2=$! ;;
esac
if [ -n "$RESTART" ]; then
  sleep 0.5; grep -v "^map" fs-loader2.log
  for dst in "127.0.0.1 8080" "10.99.0.2 80"; do ./inpod python3 xfer.py rr $dst 65536 5000 > "fs-rr2-${dst% *}.out" 2>&1 & CLIENTS="$CLIENTS $!"; done
fi
wait $CLIENTS
head -q fs-*.out
echo "--- new connection after the kill:"
./inpod python3 xfer.py rr 127.0.0.1 8080 4096 100
if [ -n "$RESTART" ]; then ./stats.py fs-loader2.log; kill $L2; fi
