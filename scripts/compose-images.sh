#!/usr/bin/env bash
# Builds locally, from Debian packages, the images that docker-compose.yml
# and the Dockerfile name, for a machine that cannot pull them. On a normal
# machine `docker compose up` pulls them from Docker Hub and this script is
# not needed; pmoas's test machines reach no container registry (only the
# Debian archive, PyPI and crates.io), so exporter/tests/compose_stack.rs
# runs it first. As root, with Podman (or CONTAINER_ENGINE=docker).
#
#   scripts/compose-images.sh [--force] [--test]
#
# Each image is built only when it is missing (--force rebuilds them all),
# under the name the compose files use, from the same variables with the
# same defaults:
#
#   RUNTIME_IMAGE      docker.io/library/debian:bookworm-slim
#                      `debootstrap --variant=minbase bookworm`, with the
#                      official image's apt sources and slim dpkg excludes;
#                      the rootfs is cached in target/pmoas-compose/ (~30 s)
#   RUST_IMAGE         docker.io/library/rust:1.95-bookworm
#                      that + gcc, libc6-dev, ca-certificates (what the
#                      official image has and the build uses) + this host's
#                      Rust toolchain (`rustc --print sysroot`, 1.95 or newer)
#                      as /usr/local/cargo, CARGO_HOME and PATH as upstream,
#                      and the host's extra CA certificates, if any
#                      (/usr/local/share/ca-certificates), for crates.io
#   PROMETHEUS_IMAGE   docker.io/prom/prometheus:v2.53.0
#                      that + Debian's prometheus and promtool as
#                      /bin/prometheus, /bin/promtool, its web assets, and
#                      the official image's layout: /etc/prometheus, data in
#                      /prometheus, user nobody. Debian 12 ships 2.42, so the
#                      tag names the upstream image this one stands in for.
#   PUSHGATEWAY_IMAGE  docker.io/prom/pushgateway:v1.9.0
#                      that + Debian's prometheus-pushgateway (1.5) as
#                      /bin/pushgateway, user nobody
#
# --test also builds the stand-in compose.test.yml runs for Grafana and
# Jaeger, which no registry reachable from the test machines ships:
#
#   STANDIN_IMAGE      localhost/pmoas-standin:1
#                      that + Debian's python3 + grpcio, protobuf and
#                      opentelemetry-proto copied from target/pmoas-venv
#                      (scripts/install-deps.sh test): it runs
#                      testbed/otlp_receiver.py (Jaeger's OTLP) and
#                      `python3 -m http.server` (Grafana's files)
#
# Podman honours CONTAINERS_CONF and CONTAINERS_STORAGE_CONF (the test's
# private configuration). apt inside the builds uses the host's network.
set -euo pipefail
cd "$(dirname "$0")/.."

force=0
test_images=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --test) test_images=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compose-images: unknown argument $arg (--force, --test)" >&2; exit 2 ;;
  esac
done

engine=${CONTAINER_ENGINE:-podman}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-docker.io/library/debian:bookworm-slim}
RUST_IMAGE=${RUST_IMAGE:-docker.io/library/rust:1.95-bookworm}
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-docker.io/prom/prometheus:v2.53.0}
PUSHGATEWAY_IMAGE=${PUSHGATEWAY_IMAGE:-docker.io/prom/pushgateway:v1.9.0}
STANDIN_IMAGE=${STANDIN_IMAGE:-localhost/pmoas-standin:1}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

cache=target/pmoas-compose
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
work=$(mktemp -d "$cache/images.XXXXXX")
trap 'rm -rf "$work"' EXIT

say() { echo "compose-images: $*" >&2; }

have() {
  [ "$force" = 0 ] && "$engine" image inspect "$1" >/dev/null 2>&1
}

# `build IMAGE CONTEXT [WHAT]` with the Containerfile on stdin; apt reaches
# the Debian archive through the host's network (no bridge, no iptables
# rules).
build() {
  local image=$1 context=$2 what=${3:-built} started=$SECONDS
  cat >"$work/Containerfile"
  "$engine" build --network host --pull=false -f "$work/Containerfile" -t "$image" "$context" \
    >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; say "building $image failed"; exit 1; }
  say "$what $image in $((SECONDS - started)) s"
}

# --- debian:bookworm-slim --------------------------------------------------
if ! have "$RUNTIME_IMAGE"; then
  for tool in debootstrap tar; do
    command -v "$tool" >/dev/null || { say "$tool missing (apt-get install $tool)"; exit 1; }
  done
  tarball=$cache/debian-bookworm-minbase.tar
  if [ ! -s "$tarball" ] || [ "$force" = 1 ]; then
    started=$SECONDS
    root=$work/rootfs
    say "debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
      { cat "$work/debootstrap.log" >&2; exit 1; }
    # The official image's sources (updates and security too) and its slim
    # excludes: no documentation, manuals or locales from later installs.
    rm -f "$root/etc/apt/sources.list" "$root/etc/resolv.conf" "$root/etc/hostname"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/tmp/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    say "debootstrap took $((SECONDS - started)) s (cached in $tarball)"
  fi
  "$engine" import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$tarball" "$RUNTIME_IMAGE" >/dev/null
  say "imported $RUNTIME_IMAGE"
fi

# --- rust:1.95-bookworm -----------------------------------------------------
if ! have "$RUST_IMAGE"; then
  sysroot=$(rustc --print sysroot)
  version=$("$sysroot/bin/rustc" --version | awk '{print $2}')
  case "$version" in
    1.9[5-9].* | 1.[1-9][0-9][0-9].*) ;;
    *) say "the host's rustc is $version; pmoas needs 1.95 or newer (rustup toolchain install 1.95)"; exit 1 ;;
  esac
  # The context is the toolchain itself: bin/ and lib/ are copied, the
  # documentation in share/ is not.
  build "$RUST_IMAGE" "$sysroot" <<EOF
FROM $RUNTIME_IMAGE
RUN apt-get update \\
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY bin /usr/local/cargo/bin
COPY lib /usr/local/cargo/lib
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin RUST_VERSION=$version
RUN rustc --version && cargo --version
EOF
  # Certificates this host trusts beyond Debian's (a TLS-inspecting egress
  # proxy's, as on pmoas's test machines): cargo fetches crates through it.
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    build "$RUST_IMAGE" /usr/local/share/ca-certificates "added the host's CA certificates to" <<EOF
FROM $RUST_IMAGE
COPY *.crt /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
EOF
  fi
fi

# --- prom/prometheus and prom/pushgateway ------------------------------------
for bin in /usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-pushgateway; do
  [ -x "$bin" ] || { say "$bin missing (apt-get install prometheus prometheus-pushgateway)"; exit 1; }
done
if ! have "$PROMETHEUS_IMAGE"; then
  ctx=$work/prometheus
  mkdir -p "$ctx"
  cp /usr/bin/prometheus /usr/bin/promtool "$ctx/"
  cp -r /usr/share/prometheus/web "$ctx/web"
  cp /etc/prometheus/prometheus.yml "$ctx/prometheus.yml"
  build "$PROMETHEUS_IMAGE" "$ctx" <<EOF
FROM $RUNTIME_IMAGE
COPY prometheus promtool /bin/
COPY web /usr/share/prometheus/web
COPY prometheus.yml /etc/prometheus/prometheus.yml
RUN mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
fi
if ! have "$PUSHGATEWAY_IMAGE"; then
  ctx=$work/pushgateway
  mkdir -p "$ctx"
  cp /usr/bin/prometheus-pushgateway "$ctx/pushgateway"
  build "$PUSHGATEWAY_IMAGE" "$ctx" <<EOF
FROM $RUNTIME_IMAGE
COPY pushgateway /bin/pushgateway
USER nobody
EXPOSE 9091
ENTRYPOINT ["/bin/pushgateway"]
EOF
fi

# --- the test's stand-in for Grafana and Jaeger ---------------------------
if [ "$test_images" = 1 ] && ! have "$STANDIN_IMAGE"; then
  site=$(ls -d target/pmoas-venv/lib/python3*/site-packages 2>/dev/null | head -n1 || true)
  if [ -z "$site" ] || [ ! -d "$site/opentelemetry/proto" ] || [ ! -d "$site/grpc" ]; then
    say "target/pmoas-venv lacks grpcio/opentelemetry-proto (scripts/install-deps.sh test)"
    exit 1
  fi
  ctx=$work/standin
  mkdir -p "$ctx/site-packages"
  for pkg in grpc google opentelemetry typing_extensions.py; do
    cp -r "$site/$pkg" "$ctx/site-packages/"
  done
  case "$site" in
    */python3.11/*) ;;
    *) say "$site: the stand-in's Debian 12 python is 3.11, the venv's packages must be for 3.11"; exit 1 ;;
  esac
  build "$STANDIN_IMAGE" "$ctx" <<EOF
FROM $RUNTIME_IMAGE
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 \\
 && rm -rf /var/lib/apt/lists/*
COPY site-packages /opt/standin/site-packages
ENV PYTHONPATH=/opt/standin/site-packages PYTHONUNBUFFERED=1
RUN python3 -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc'
EOF
fi
