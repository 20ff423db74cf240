# Hive's image. Build from the repository root:  docker build -t hive:latest .
# The builder caches dependencies in their own layer, so a change to src/ rebuilds only Hive.
# Without a registry, deployment/local-images.sh makes both base images from Debian's
# archive and passes them in as these arguments.
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The workspace's manifests, with empty sources: a layer of built dependencies.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/
RUN mkdir -p src bench/src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked -p hive --bin hive && rm -rf src
COPY src ./src
RUN touch src/lib.rs src/main.rs && cargo build --release --locked -p hive --bin hive

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hive /usr/local/bin/hive
# Hive runs as an unprivileged user; it reaches /var/run/docker.sock through the socket's
# group, given at run time (compose: group_add with the host's docker GID).
RUN useradd --system --uid 10001 --home-dir /data hive && mkdir -p /data && chown hive /data
USER hive
VOLUME /data
EXPOSE 8000
ENV HIVE_LISTEN=0.0.0.0:8000 \
    HIVE_DATA_DIR=/data
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
    CMD ["hive", "health", "--server", "http://127.0.0.1:8000"]
ENTRYPOINT ["hive"]
CMD ["serve"]
