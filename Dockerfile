# syntax=docker/dockerfile:1.7
# The Lattice control plane: one image for every role. The role is chosen at run
# time with --services / LATTICE_SERVICES (all, or gateway, identity, storage,
# tasks, tunnel, policy, comma-separated). Build: docker build -t lattice .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Protos compile with protox (no protoc); ring and SQLite build with the image's cc.
COPY . .
# The same command CI runs (scripts/check-image.sh reads it from here).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p lattice-server -p lattice \
 && install -D -m 0755 target/release/lattice-server /out/bin/lattice-server \
 && install -D -m 0755 target/release/lattice /out/bin/lattice \
 && install -d -m 0700 -o 65532 -g 65532 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="lattice" \
      org.opencontainers.image.description="Lattice control plane (every role; pick one with LATTICE_SERVICES)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/lattice/lattice"
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /var/lib/lattice
ENV LATTICE_DATA_DIR=/var/lib/lattice \
    LATTICE_SERVICES=all \
    LATTICE_GATEWAY__LISTEN=0.0.0.0:8088 \
    LATTICE_LOG_FORMAT=json
# The embedded state (SQLite, master.key, tls/, objects/). The rest of the file
# system can be mounted read-only.
VOLUME ["/var/lib/lattice"]
EXPOSE 8088
USER 65532:65532
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/lattice-server", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/lattice-server"]
CMD ["run"]
