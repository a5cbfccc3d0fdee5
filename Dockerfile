# syntax=docker/dockerfile:1
#
# model-pruner worker image.
#   docker build -t model-pruner .
#   docker run --rm model-pruner config check      # effective settings, secrets redacted
#
# Two stages: the builder compiles a release binary (dependencies in a layer of their own, so a
# source change rebuilds only the crate); the runtime is debian:bookworm-slim with the binary,
# CA certificates and curl for the HEALTHCHECK, running as an unprivileged user.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# 1. Dependencies only: the manifest, the lock file, the patched dependency (vendor/README.md)
#    and an empty crate. This layer is reused for as long as those do not change.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The crate itself. config/default.toml is compiled into the binary (include_str!).
COPY config ./config
COPY src ./src
# touch: COPY may keep mtimes older than the dummy build's, and cargo would then skip the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/model-pruner \
    && ./target/release/model-pruner --version

FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: TLS to MLflow, S3 and AMQPS endpoints; curl: the HEALTHCHECK below.
# Versions are not pinned: Debian replaces them on every point release, and a pinned version
# that has left the archive breaks the build. The base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 model-pruner \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin model-pruner

COPY --from=builder /build/target/release/model-pruner /usr/local/bin/model-pruner
# The documented defaults, for reference and as a starting point for a MODEL_PRUNER_CONFIG file
# (the binary already has them built in).
COPY config /etc/model-pruner/

WORKDIR /etc/model-pruner
USER 10001:10001

ENV MODEL_PRUNER__LOG__FORMAT=json \
    MODEL_PRUNER__METRICS__LISTEN=0.0.0.0:9464 \
    RUST_LOG=info

# /metrics, /healthz and /readyz.
EXPOSE 9464

# /healthz (alive), not /readyz: a worker waiting out a broker or MLflow outage is unready but
# healthy, and restarting it would not help.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--output", "/dev/null", \
         "http://127.0.0.1:9464/healthz"]

ENTRYPOINT ["model-pruner"]
CMD ["worker"]
