#!/bin/sh
# Builds the experiment tools here: sockops.bpf.o (the repository's program), the libbpf
# loader and the ping-pong client/server. Needs clang, gcc, libbpf-dev.
set -e
cd "$(dirname "$0")"
clang -target bpf -O2 -g -mcpu=v3 -Wall -Werror -D__TARGET_ARCH_x86 -I ../../bpf-programs/include \
  -c ../../bpf-programs/src/sockops.bpf.c -o sockops.bpf.o
gcc -O2 -Wall -o loader loader.c -lbpf
gcc -O2 -Wall -o pp pp.c
