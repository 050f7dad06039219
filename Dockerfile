# syntax=docker/dockerfile:1
# ricochet and the demo's example programs. Targets:
#   ricochet        (the default, last stage) the sidecar; config mounted at /etc/ricochet
#   orders-service  the example legacy REST service
#   demo-caller     the demo's NATS/Kafka caller
# The build image has libssl-dev: librdkafka is built with OpenSSL (Kafka ssl/sasl_ssl).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The linker wrapper that lays out the code ricochet runs first (docs/performance.md).
COPY .cargo .cargo
COPY scripts/link-hot-first scripts/hot-functions.txt scripts/
COPY src src
# A workspace member (the benchmark); only ricochet and the examples are built below.
COPY bench bench
COPY examples examples
RUN cargo build --release --locked -p ricochet --bin ricochet --example orders-service --example demo-caller \
 && mkdir /out \
 && cp target/release/ricochet target/release/examples/orders-service target/release/examples/demo-caller /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home ricochet
USER 10001:10001

FROM runtime AS orders-service
COPY --from=build /out/orders-service /usr/local/bin/orders-service
ENV ORDERS_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["orders-service"]

FROM runtime AS demo-caller
COPY --from=build /out/demo-caller /usr/local/bin/demo-caller
ENTRYPOINT ["demo-caller"]

FROM runtime AS ricochet
COPY --from=build /out/ricochet /usr/local/bin/ricochet
COPY config /etc/ricochet
EXPOSE 9464
ENTRYPOINT ["ricochet"]
CMD ["run", "--config", "/etc/ricochet/ricochet.toml"]
