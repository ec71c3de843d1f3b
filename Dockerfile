# persona-guard image: build with the same setup script and cargo flags as CI,
# run on distroless (glibc, CA certificates, no shell) as a non-root user.
#
#   docker build -t persona-guard:0.1.0 .
#   docker run -p 8080:8080 -e PERSONA_WEBHOOK_SECRET=... persona-guard:0.1.0

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN bash scripts/setup.sh --build && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin persona-guard \
 && strip target/release/persona-guard

FROM gcr.io/distroless/cc-debian12:nonroot
# OCI image labels. VERSION defaults to Cargo.toml's version and the licence is
# Cargo.toml's `license` (scripts/test.sh checks both stay in step); CI or a
# release passes the commit and the repository's URL:
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" --build-arg SOURCE=<repository URL> .
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="persona-guard" \
      org.opencontainers.image.description="A reverse proxy that admits only genuine, fresh, first-time Persona webhook deliveries" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/persona-guard /usr/local/bin/persona-guard
COPY config/persona-guard.toml /etc/persona-guard/config/persona-guard.toml
# distroless's "nonroot" user.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/persona-guard"]
CMD ["run", "--config", "/etc/persona-guard/config/persona-guard.toml"]
