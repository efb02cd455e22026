# syntax=docker/dockerfile:1
# The Aisle image: `aisle` (the node), `aisle-train` (offline training) and `aisle-loadtest`, built from this
# workspace in a Rust builder stage and copied into a shell-less, glibc-based runtime running as a non-root user.
#
#   docker build -t REGISTRY/aisle:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Both base images are build arguments. The defaults are public images: the Rust builder is pinned to the exact
# toolchain of the workspace's `rust-version` (1.95.0) on Debian 13; the runtime is distroless `cc` on the same Debian
# release (same glibc as the builder). Distroless publishes no version tags, so production builds should pin it by
# digest: --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian13@sha256:<digest>.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

FROM ${RUST_IMAGE} AS builder
# protoc and the well-known types it imports: etcd-client generates its code at build time with them (our own
# proto crate compiles in pure Rust and needs neither).
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Every binary of the workspace (`--bins`), so a crate added to the workspace ships without editing this file.
# The caches keep crates.io downloads and compiled dependencies between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for bin in aisle aisle-train aisle-loadtest; do \
      if [ -x "target/release/$bin" ]; then cp "target/release/$bin" /out/; \
      else echo "note: $bin is not part of this workspace yet"; fi; \
    done \
 && test -x /out/aisle && test -x /out/aisle-loadtest

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="aisle" \
      org.opencontainers.image.description="Aisle: real-time decisioning engine for retail personalization" \
      org.opencontainers.image.source="https://github.com/aisle-engine/aisle" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=builder /out/ /usr/local/bin/
# In a container the node listens on every interface; flags and the chart's environment still win.
ENV AISLE_GRPC_ADDR=0.0.0.0:50051 \
    AISLE_HTTP_ADDR=0.0.0.0:9090 \
    AISLE_LOG_FORMAT=json
# gRPC: clients 50051, peers 50052 (mutual TLS), admin 50053; HTTP (/metrics, /healthz, /readyz) 9090.
EXPOSE 50051 50052 50053 9090
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd (65532: distroless "nonroot").
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aisle"]
CMD ["serve"]
