#!/usr/bin/env bash
# Memory per idle client connection, HTTP/3 against HTTP/2 over TLS: a fresh fulcrum
# (one worker, TLS listener with `http3 = true`) for each protocol; the client
# (benches/h3_load.rs, `hold-*`) opens CONNECTIONS connections, makes one request on
# each and holds them idle; fulcrum's resident memory is read before and after.
#
#   bash benches/load/h3memory.sh
#   CONNECTIONS=5000 bash benches/load/h3memory.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNECTIONS=${CONNECTIONS:-2000}
BACKEND_PORT=18980
declare -A PORT=([h2]=18981 [h3]=18982)

. benches/load/common.sh
need nginx nginx-light
need openssl openssl

cargo build --release --quiet ${FEATURES:+--features "$FEATURES"}
FULCRUM=$PWD/target/release/fulcrum
LOAD=$(cargo bench --bench h3_load --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*h3_load[^"]*"' | cut -d'"' -f4 | tail -1)
start_workdir h3memory
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ca_and_leaf
backend_nginx "$BACKEND_PORT"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

declare -A PER
for p in h2 h3; do
  fulcrum_toml "$WORK/$p.toml" "${PORT[$p]}" "$BACKEND_PORT" "idle_timeout = \"300s\"
[listener.tls]
certificates = [{ cert = \"$WORK/site.pem\", key = \"$WORK/site.key\" }]
http3 = true" "max_connections = 100000"
  RUST_LOG=warn "$FULCRUM" run -c "$WORK/$p.toml" 2>"$WORK/$p.log" &
  pid=$!; PIDS+=($pid)
  sleep 1
  "$LOAD" "hold-$p" "127.0.0.1:${PORT[$p]}" bench.test "$WORK/ca.pem" 20 1 >/dev/null
  before=$(rss_kib $pid)
  "$LOAD" "hold-$p" "127.0.0.1:${PORT[$p]}" bench.test "$WORK/ca.pem" "$CONNECTIONS" 600 >"$WORK/$p.held" &
  client=$!; PIDS+=($client)
  for _ in $(seq 1200); do grep -q held "$WORK/$p.held" && break; sleep 0.1; done
  sleep 1
  after=$(rss_kib $pid)
  PER[$p]=$(awk -v a="$after" -v b="$before" -v n="$CONNECTIONS" 'BEGIN {printf "%.1f", (a - b) / n}')
  printf '%s: %s connections, RSS %s -> %s KiB, %s KiB per connection\n' "$p" "$CONNECTIONS" "$before" "$after" "${PER[$p]}"
  kill "$client" "$pid" 2>/dev/null || true
  wait "$client" "$pid" 2>/dev/null || true
done
echo "h3 / h2, KiB per idle connection: $(ratio "${PER[h3]}" "${PER[h2]}")"
