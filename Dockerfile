# syntax=docker/dockerfile:1
# Build: the same steps as scripts/test.sh (cmake for pingora's zlib-ng).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked \
 && strip target/release/persona-guard

# Run: distroless with glibc, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/persona-guard /usr/local/bin/persona-guard
COPY config/persona-guard.toml /etc/persona-guard/persona-guard.toml
USER nonroot:nonroot
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/persona-guard"]
CMD ["run", "--config", "/etc/persona-guard/persona-guard.toml"]
