#!/bin/sh
# Scratch "pod": network namespace so-p1 with lo, a veth eth0 (10.99.0.1/24, its peer in netns
# so-peer) and Istio-style nat OUTPUT REDIRECT of :80 to 15001; cgroup v2 directory so-test.
set -e
ip netns add so-p1 2>/dev/null || true
ip netns add so-peer 2>/dev/null || true
ip -n so-p1 link set lo up
if ! ip -n so-p1 link show eth0 >/dev/null 2>&1; then
  ip -n so-p1 link add eth0 type veth peer name eth0 netns so-peer
  ip -n so-p1 addr add 10.99.0.1/24 dev eth0
  ip -n so-peer addr add 10.99.0.2/24 dev eth0
fi
ip -n so-p1 link set eth0 up
ip -n so-peer link set eth0 up
ip -n so-peer link set lo up
ip netns exec so-p1 iptables -t nat -C OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 15001 2>/dev/null ||
  ip netns exec so-p1 iptables -t nat -A OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 15001
mkdir -p /sys/fs/cgroup/unified/so-test
