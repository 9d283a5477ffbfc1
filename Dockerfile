# syntax=docker/dockerfile:1.7
# Multi-stage build: compile in the Rust image, run in a slim Debian image as
# a non-root user. The runtime image serves /etc/sandgate (the bundled demo
# unless you mount your own sandbox directory there).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked && cp target/release/sandgate /usr/local/bin/sandgate

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sandgate
COPY --from=build /usr/local/bin/sandgate /usr/local/bin/sandgate
COPY sandgate.yaml /etc/sandgate/sandgate.yaml
COPY contracts /etc/sandgate/contracts
# The built-in issuer generates its signing key (keys/issuer.pem) on first
# start: give the runtime user a directory it may write. Mount a volume there
# to keep the key (and the tokens it signed) across container restarts.
RUN mkdir -p /etc/sandgate/keys && chown 10001:10001 /etc/sandgate/keys
USER 10001:10001
# 8080: public listener. 9090: admin (health, readiness, metrics); inside a
# container it must listen on all interfaces for the orchestrator's probes,
# so do not publish it beyond the cluster network.
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sandgate"]
CMD ["serve", "--config", "/etc/sandgate", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9090", "--log-format", "json"]
