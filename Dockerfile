# Hive's image: the `hive` binary on a slim Debian. Build from the repository root:
#   docker build -t hive:latest .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin hive

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hive /usr/local/bin/hive
# Hive must reach /var/run/docker.sock, which is root on the host whoever opens it;
# the container runs as root for that reason and nothing else lives in it.
VOLUME /data
EXPOSE 8000
ENV HIVE_LISTEN=0.0.0.0:8000 \
    HIVE_DATA_DIR=/data
ENTRYPOINT ["hive"]
CMD ["serve"]
