# pmoas-exporter as an image, built from this checkout: the eBPF programs
# (bpf-programs/src/*.bpf.c) are compiled by clang during the build and
# embedded in the binary, so the image is the binary on Debian slim.
#
#   docker build -t pmoas-exporter .       # or `docker compose build` (docker-compose.yml)
#
# How it runs (host PID namespace, capabilities, host mounts): docker-compose.yml
# and docs/compose.md.
#
# Both base images are arguments, so a machine that cannot pull from Docker
# Hub can build stand-ins and name them (scripts/compose-images.sh builds
# them from Debian packages under these very names).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# clang compiles the eBPF C programs (-target bpf, CO-RE), llvm provides
# llvm-strip (drops their DWARF, keeps BTF), libbpf-dev has bpf_helpers.h.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# `release` (the default) or `dev`, for quicker test builds.
ARG PROFILE=release
# The revision pmoas_build_info reports (.git is not in the build context):
# PMOAS_REVISION=$(git rev-parse --short=12 HEAD) docker compose build
ARG PMOAS_REVISION=unknown
# The crate registry and target/ are build caches (BuildKit, Buildah): a
# rebuild after a source change recompiles pmoas, not its dependencies.
# The binary is copied out of the cache into the image's layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    PMOAS_REVISION="$PMOAS_REVISION" cargo build --locked --profile "$PROFILE" -p pmoas-exporter \
 && if [ "$PROFILE" = dev ]; then dir=debug; else dir=$PROFILE; fi \
 && cp "target/$dir/pmoas-exporter" /usr/local/bin/pmoas-exporter

FROM ${RUNTIME_IMAGE}
COPY --from=build /usr/local/bin/pmoas-exporter /usr/local/bin/pmoas-exporter
# Runs as root inside the container: the capabilities it needs are granted
# to root by the engine (cap_add in docker-compose.yml; every other
# capability is dropped), and root owns tracefs and the engine's socket.
EXPOSE 8765
ENTRYPOINT ["/usr/local/bin/pmoas-exporter"]
