#!/usr/bin/env bash
# A profile-guided release build of fulcrum: an instrumented build serves a training
# load (HTTP/1.1 keep-alive and one connection per request, h2c, HTTPS keep-alive
# and full handshakes, the tcp engine, HTTP/2 to an h2c backend) in front of nginx
# origins; its profile then
# guides the optimised build (the order of code and of branches).
#
#   bash benches/pgo.sh                        # prints the binary's path
#   FULCRUM=$(bash benches/pgo.sh | tail -1) bash benches/load/run.sh
#
# Two release builds (about 6 minutes each on two cores) and about a minute of load.
# The binaries go to target/pgo/; SECONDS_EACH sets each load's length (default 6).
# Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need h2load nghttp2-client
need openssl openssl

rustup component add llvm-tools >/dev/null 2>&1 || true
PROFDATA=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
[ -n "$PROFDATA" ] || { echo "llvm-profdata not found: rustup component add llvm-tools" >&2; exit 1; }

EACH=${SECONDS_EACH:-6}
OUT=$PWD/target/pgo
BACKEND_PORT=18580
PORT=18581
TLS_PORT=18582
TCP_PORT=18583
H2_BACKEND_PORT=18584
H2_PORT=18585

start_workdir pgo
PROFILES=$WORK/profiles
mkdir -p "$PROFILES"

echo "instrumented build ..." >&2
RUSTFLAGS="-Cprofile-generate=$PROFILES" cargo build --release --quiet --target-dir "$OUT/gen" \
  ${FEATURES:+--features "$FEATURES"}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$WORK/site.key" -out "$WORK/site.pem" 2>/dev/null
backend_nginx "$BACKEND_PORT"
nginx_conf "$WORK/h2backend" "keepalive_requests 1000000;
  server { listen 127.0.0.1:$H2_BACKEND_PORT http2;
    location / { return 200 'hello from the backend\n'; } }"
nginx -p "$WORK/h2backend" -c "$WORK/h2backend/nginx.conf" &
PIDS+=($!)
fulcrum_toml "$WORK/fulcrum.toml" "$PORT" "$BACKEND_PORT"
cat >> "$WORK/fulcrum.toml" <<CONF
[[listener]]
name = "train-tls"
bind = "127.0.0.1:$TLS_PORT"
protocol = "http"
upstream = "backend"
[listener.tls]
certificates = [{ cert = "site.pem", key = "site.key" }]
alpn = ["http/1.1"]

[[listener]]
name = "train-tcp"
bind = "127.0.0.1:$TCP_PORT"
protocol = "tcp"
upstream = "backend"

[[listener]]
name = "train-h2"
bind = "127.0.0.1:$H2_PORT"
protocol = "http"
upstream = "h2origin"

[upstream.h2origin]
protocol = "h2c"
backends = [{ address = "127.0.0.1:$H2_BACKEND_PORT" }]
CONF
RUST_LOG=warn "$OUT/gen/release/fulcrum" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
FULCRUM_PID=$!
PIDS+=("$FULCRUM_PID")
wait_http "http://127.0.0.1:$BACKEND_PORT/" "http://127.0.0.1:$PORT/" "https://127.0.0.1:$TLS_PORT/"

echo "training load, ${EACH}s each ..." >&2
wrk -t1 -c64 -d"${EACH}s" "http://127.0.0.1:$PORT/" >/dev/null
wrk -t1 -c64 -d"${EACH}s" -H "Connection: close" "http://127.0.0.1:$PORT/" >/dev/null
h2load -c 8 -m 8 -D "$EACH" "http://127.0.0.1:$PORT/" >/dev/null
wrk -t1 -c64 -d"${EACH}s" "https://127.0.0.1:$TLS_PORT/" >/dev/null
wrk -t1 -c16 -d"${EACH}s" -H "Connection: close" "https://127.0.0.1:$TLS_PORT/" >/dev/null
wrk -t1 -c64 -d"${EACH}s" -H "Connection: close" "http://127.0.0.1:$TCP_PORT/" >/dev/null
wrk -t1 -c8 -d"${EACH}s" "http://127.0.0.1:$PORT/big" >/dev/null
h2load -c 8 -m 32 -D "$EACH" "http://127.0.0.1:$H2_PORT/" >/dev/null

# The profile is written as the process exits: a graceful shutdown.
kill -TERM "$FULCRUM_PID"
wait "$FULCRUM_PID" 2>/dev/null || true
ls "$PROFILES"/*.profraw >/dev/null 2>&1 || { echo "no profile written" >&2; exit 1; }
"$PROFDATA" merge -o "$WORK/fulcrum.profdata" "$PROFILES"

echo "optimised build ..." >&2
RUSTFLAGS="-Cprofile-use=$WORK/fulcrum.profdata" cargo build --release --quiet \
  --target-dir "$OUT/use" ${FEATURES:+--features "$FEATURES"}
echo "$OUT/use/release/fulcrum"
