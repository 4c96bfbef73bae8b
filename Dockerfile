# aifinops container image (used by docker-compose.yml).
# the build image has libssl-dev and pkg-config: librdkafka is built with TLS against the system OpenSSL
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin aifinops

FROM debian:bookworm-slim
# libssl3: librdkafka's TLS (Kafka security.protocol ssl / sasl_ssl); ca-certificates: the public CAs
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/aifinops /usr/local/bin/aifinops
ENTRYPOINT ["aifinops"]
