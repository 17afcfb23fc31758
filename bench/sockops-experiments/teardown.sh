#!/bin/sh
# Removes what setup.sh made (stop the servers and loaders you started first, by PID).
ip netns del so-p1 2>/dev/null
ip netns del so-peer 2>/dev/null
rmdir /sys/fs/cgroup/unified/so-test 2>/dev/null
umount bpffs 2>/dev/null; rmdir bpffs 2>/dev/null
true
