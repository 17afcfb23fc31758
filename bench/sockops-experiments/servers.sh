#!/bin/sh
# Starts the test servers in the scratch pod (after setup.sh): xfer.py on 8080 (the app) and
# 15001 (where the REDIRECT of :80 lands), pp on 9000 (CPU 1). PIDs go to servers.pid;
# stop them with: kill $(cat servers.pid)
cd "$(dirname "$0")"
./inpod python3 xfer.py serve 8080 > srv8080.log 2>&1 & echo $! > servers.pid
./inpod python3 xfer.py serve 15001 > srv15001.log 2>&1 & echo $! >> servers.pid
./inpod taskset -c 1 ./pp server 9000 > pp.log 2>&1 & echo $! >> servers.pid
sleep 0.5
