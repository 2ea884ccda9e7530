#!/usr/bin/env bash
# Ten minutes of mixed load on one fulcrum: keep-alive and new-connection HTTP/1.1,
# h2c, cached and uncached routes, WebSocket upgrades, and a reload every 30 s. The
# resident memory is sampled every 10 s; after a warm-up its slope must be flat, and no
# request may fail.
#
#   bash benches/hardening/soak.sh              # 10 minutes
#   SECONDS_TOTAL=120 bash benches/hardening/soak.sh
#
# Everything listens on 127.0.0.1, the load is bounded in time, and every process
# started here is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

TOTAL=${SECONDS_TOTAL:-600}
WARMUP=${WARMUP:-60}
BACKEND_PORT=18280
WS_PORT=18281
PORT=18282

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need h2load nghttp2-client
need python3 python3

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum

start_workdir soak

nginx_conf "$WORK/backend" "server { listen 127.0.0.1:$BACKEND_PORT; keepalive_requests 1000000;
    location / { return 200 'hello from the backend\n'; }
    location /cached/ { add_header Cache-Control 'max-age=2'; return 200 'cacheable for two seconds\n'; } }"
nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)
python3 benches/hardening/websocket.py server "$WS_PORT" &
PIDS+=($!)

config() { # $1: a value that changes at every reload
  cat > "$WORK/fulcrum.toml" <<CONF
# generation marker: $1
[global]
workers = 1
access_log = false
watch_config = false
[cache]
max_size = "64MiB"
[[listener]]
name = "soak"
bind = "127.0.0.1:$PORT"
protocol = "http"
upstream = "backend"
[[listener.route]]
path_prefix = "/cached/"
upstream = "backend"
cache = true
[[listener.route]]
path_prefix = "/ws"
upstream = "ws"
[upstream.backend]
backends = [{ address = "127.0.0.1:$BACKEND_PORT" }]
[upstream.ws]
backends = [{ address = "127.0.0.1:$WS_PORT" }]
CONF
}
config 0
RUST_LOG=warn "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PID=$!; PIDS+=($PID)
wait_http "http://127.0.0.1:$PORT/"

D="${TOTAL}s"
wrk -t1 -c16 -d"$D" "http://127.0.0.1:$PORT/" > "$WORK/keepalive.txt" &
L1=$!
wrk -t1 -c4 -d"$D" -H "Connection: close" "http://127.0.0.1:$PORT/" > "$WORK/close.txt" &
L2=$!
wrk -t1 -c8 -d"$D" "http://127.0.0.1:$PORT/cached/item" > "$WORK/cached.txt" &
L3=$!
h2load -c4 -m8 -D "$TOTAL" "http://127.0.0.1:$PORT/" > "$WORK/h2c.txt" 2>&1 &
L4=$!
python3 benches/hardening/websocket.py client 127.0.0.1 "$PORT" "$TOTAL" > "$WORK/websocket.txt" &
L5=$!

: > "$WORK/rss.txt"
start=$(date +%s)
generation=0
next_sample=0
next_reload=30
while :; do
  elapsed=$(($(date +%s) - start))
  [ "$elapsed" -ge "$TOTAL" ] && break
  if [ "$elapsed" -ge "$next_sample" ]; then
    echo "$elapsed $(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")" >> "$WORK/rss.txt"
    next_sample=$((next_sample + 10))
  fi
  if [ "$elapsed" -ge "$next_reload" ]; then
    generation=$((generation + 1))
    config "$generation"
    kill -HUP "$PID"
    next_reload=$((next_reload + 30))
  fi
  sleep 1
done
wait "$L1" "$L2" "$L3" "$L4" "$L5" || true

echo "== RSS (KiB) every 10 s"
tr '\n' ' ' < "$WORK/rss.txt"; echo
awk -v w="$WARMUP" '$1 >= w { n++; sx += $1; sy += $2; sxx += $1*$1; sxy += $1*$2 }
  END { if (n > 1) { b = (n*sxy - sx*sy) / (n*sxx - sx*sx); printf "slope after %d s of warm-up: %.2f KiB/min over %d samples\n", w, b*60, n } }' "$WORK/rss.txt"
echo "== load"
for f in keepalive close cached; do
  printf '%-10s %s requests; %s\n' "$f" "$(awk '/requests in/ {print $1}' "$WORK/$f.txt")" \
    "$(grep -E 'Non-2xx|Socket errors' "$WORK/$f.txt" | tr '\n' ' ' || true)"
done
echo "h2c        $(grep -E '^requests:' "$WORK/h2c.txt")"
cat "$WORK/websocket.txt"
echo "reloads sent: $generation; fulcrum still running: $(kill -0 "$PID" 2>/dev/null && echo yes || echo no)"
echo "fulcrum's warnings and errors ($(wc -l < "$WORK/fulcrum.log") lines):"
head -5 "$WORK/fulcrum.log"
