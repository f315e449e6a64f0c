# Multi-stage build: compile in the Rust image, run as non-root in a minimal glibc image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
# The workspace names lab/ and harness/ as members: cargo needs their manifests and sources to
# load it (the server binary does not depend on either).
COPY harness/Cargo.toml ./harness/Cargo.toml
COPY harness/src ./harness/src
COPY lab/Cargo.toml ./lab/Cargo.toml
COPY lab/src ./lab/src
# h2 with its idle connection buffers released (vendor/h2/PATCHED.md), through [patch.crates-io].
COPY vendor/h2 ./vendor/h2
RUN cargo build --release --locked --bin adaptive-eds

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/adaptive-eds /usr/local/bin/adaptive-eds
USER nonroot:nonroot
EXPOSE 18000 18080
ENTRYPOINT ["/usr/local/bin/adaptive-eds"]
# Mount your config at /etc/adaptive-eds/config.yaml (listen on 0.0.0.0 inside a container).
CMD ["serve", "--config", "/etc/adaptive-eds/config.yaml"]
