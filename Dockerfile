# syntax=docker/dockerfile:1
#
# fulcrum container image.
#
#   docker build -t fulcrum .
#   docker run -d --name fulcrum --stop-timeout 35 \
#       -p 8080:8080 -p 127.0.0.1:9090:9090 \
#       -v /srv/fulcrum:/etc/fulcrum:ro fulcrum
#
# Configuration: the image carries config/quickstart.toml as /etc/fulcrum/fulcrum.toml
# and its static sites as /etc/fulcrum/quickstart/ (relative paths in the config are
# relative to its directory). The quick start binds 127.0.0.1:8080/8081/8082 and its
# admin API 127.0.0.1:9090: the HEALTHCHECK below (run inside the container) reaches
# it, but nothing outside the container can. For real use, mount your own config directory
# at /etc/fulcrum (read-only) whose listeners bind 0.0.0.0 (or [::]) and which has
#   [admin]
#   bind = "0.0.0.0:9090"     # or "127.0.0.1:9090" to keep the admin API inside the container
# Files in it must be readable by UID 10001 (the user fulcrum runs as).
#
# Draining: SIGTERM closes the listeners and gives open connections up to
# global.shutdown_timeout (default 30s). `docker stop` sends SIGKILL after 10s unless
# told otherwise: use `docker run --stop-timeout 35` / `docker stop -t 35` (Kubernetes:
# terminationGracePeriodSeconds) when the drain should be allowed to run its course.

# ---- build ------------------------------------------------------------------------
# The official Rust image (Debian 12): the same glibc as the runtime stage below.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cargo registry and the target directory are BuildKit cache mounts: kept between
# builds (incremental rebuilds), never part of an image layer, so the binary is copied
# out of target/ within the same RUN. The release profile keeps line tables for
# profiling; they are stripped from the image's copy (symbols stay, so backtraces
# still name functions).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/fulcrum /out/fulcrum \
 && strip --strip-debug /out/fulcrum

# ---- runtime ----------------------------------------------------------------------
# debian:bookworm-slim rather than distroless/cc: the binary needs only glibc and
# libgcc_s (both present in either), but distroless has no shell, and the HEALTHCHECK
# below uses bash's /dev/tcp, so no HTTP client has to be installed and the image
# stays small, without fulcrum needing a health-probe subcommand of its own.
FROM debian:bookworm-slim

COPY --from=build /out/fulcrum /usr/local/bin/fulcrum
COPY config/quickstart.toml /etc/fulcrum/fulcrum.toml
COPY config/quickstart/ /etc/fulcrum/quickstart/

# A fixed, numeric, non-root identity (Kubernetes' runAsNonRoot can check it). The
# config is root-owned and world-readable: fulcrum only reads it. Ports 8080 and 9090
# need no capability; Docker (20.10+) also lets unprivileged users of a container bind
# ports below 1024 (net.ipv4.ip_unprivileged_port_start=0 in its network namespace).
RUN groupadd --system --gid 10001 fulcrum \
 && useradd --system --uid 10001 --gid fulcrum --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin fulcrum \
 && chmod -R u=rwX,go=rX /etc/fulcrum

USER 10001:10001

# The admin port the HEALTHCHECK asks; change it when your [admin] bind uses another.
ENV FULCRUM_ADMIN_PORT=9090

EXPOSE 8080 9090

# GET /healthz on the admin listener (200 "ok" while fulcrum serves), over bash's
# /dev/tcp: healthy only if the status line says 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FULCRUM_ADMIN_PORT:-9090} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && while read -r -t 2 _ <&3; do :; done; [[ $status == 'HTTP/1.'?' 200'* ]]"]

# SIGTERM: stop accepting, drain, exit 0. SIGHUP (docker kill -s HUP) reloads the config.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fulcrum"]
CMD ["run", "-c", "/etc/fulcrum/fulcrum.toml"]
