# syntax=docker/dockerfile:1
# Build stage: the release binary, from the committed lock file.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin corral

# Runtime stage: a slim image, corral as an unprivileged user.
FROM debian:bookworm-slim
# The CA roots HTTPS origins are verified against (rustls-platform-verifier
# reads the system's store).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin corral
COPY --from=build /src/target/release/corral /usr/local/bin/corral
COPY config/corral.toml /etc/corral/corral.toml
USER corral
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/corral"]
CMD ["--config", "/etc/corral/corral.toml"]
