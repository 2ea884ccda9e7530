#!/usr/bin/env bash
# System calls per proxied request, by name, for fulcrum and HAProxy: `strace -c -f`
# attached to each proxy while h2load sends an exact number of requests (after a
# warm-up that is not counted). Counts, not times: strace slows every call down.
#
#   bash benches/load/syscalls.sh                  # keep-alive and close, both proxies
#   MODES=tcp bash benches/load/syscalls.sh        # layer 4, a new connection per request
#   MODES="h2c h2upstream" bash benches/load/syscalls.sh   # HTTP/2 toward clients / both sides
#   FULCRUM=/path/to/fulcrum REQUESTS=5000 CONNECTIONS=8 bash benches/load/syscalls.sh
#
# Modes: keepalive (HTTP/1.1), close (`Connection: close`: a new client connection per
# request, the backend connection kept), tcp (both proxies at layer 4: a new client and
# backend connection per request), h2c (HTTP/2 with prior knowledge, 8 connections x 8
# streams, an HTTP/1.1 origin), h2upstream (h2c on both sides, 8 x 32 streams, an h2c
# origin). The backend is one nginx process; fulcrum and
# HAProxy run one worker each, pinned to CPU 0, h2load on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-64}
MODES=${MODES:-keepalive close}
BACKEND_PORT=18480
declare -A PORT=([fulcrum]=18481 [haproxy]=18482) PID

. benches/load/common.sh
need strace strace
need h2load nghttp2-client
need haproxy haproxy
need nginx nginx-light

fulcrum_binary

start_workdir syscalls
backend_nginx "$BACKEND_PORT" 1
H2_BACKEND_PORT=$((BACKEND_PORT + 10))
case " $MODES " in *" h2upstream "*)
  nginx_conf "$WORK/h2backend" "keepalive_requests 1000000;
    server { listen 127.0.0.1:$H2_BACKEND_PORT http2;
    location / { return 200 'hello from the backend\n'; } }"
  nginx -p "$WORK/h2backend" -c "$WORK/h2backend/nginx.conf" &
  PIDS+=($!) ;;
esac

start_proxies() { # $1 mode
  local backend=$BACKEND_PORT bind_extra=""
  case "$1" in
    h2c) bind_extra=" proto h2" ;;
    h2upstream) bind_extra=" proto h2" backend=$H2_BACKEND_PORT ;;
  esac
  fulcrum_toml "$WORK/fulcrum.toml" "${PORT[fulcrum]}" "$backend"
  haproxy_cfg "$WORK/haproxy.cfg" 4096 "$backend" "  bind 127.0.0.1:${PORT[haproxy]}$bind_extra"
  if [ "$1" = h2upstream ]; then
    echo 'protocol = "h2c"' >> "$WORK/fulcrum.toml"
    sed -i "s/^  server b1 .*/& proto h2/" "$WORK/haproxy.cfg"
  fi
  if [ "$1" = tcp ]; then
    sed -i 's/^protocol = "http"/protocol = "tcp"/' "$WORK/fulcrum.toml"
    sed -i -e 's/^  mode http/  mode tcp/' -e '/http-keep-alive\|http-reuse/d' "$WORK/haproxy.cfg"
  fi
  RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
  PIDS+=($!); PID[fulcrum]=$!
  taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" &
  PIDS+=($!); PID[haproxy]=$!
  case "$1" in
    h2c | h2upstream) sleep 1 ;;
    *) wait_http "http://127.0.0.1:${PORT[fulcrum]}/" "http://127.0.0.1:${PORT[haproxy]}/" ;;
  esac
}

stop_proxies() {
  kill "${PID[fulcrum]}" "${PID[haproxy]}" 2>/dev/null || true
  wait "${PID[fulcrum]}" "${PID[haproxy]}" 2>/dev/null || true
}

load() { # $1 url, $2 mode, $3 count
  local args=(--h1 -c "$CONNECTIONS")
  case "$2" in
    keepalive) ;;
    h2c) args=(-c 8 -m 8) ;;
    h2upstream) args=(-c 8 -m 32) ;;
    *) args+=(-H 'connection: close') ;;
  esac
  taskset -c 1 h2load -n "$3" "${args[@]}" "$1" | grep -q " 0 failed, 0 errored" \
    || echo "some requests failed" >&2
}

for mode in $MODES; do
  start_proxies "$mode"
  for proxy in fulcrum haproxy; do
    url="http://127.0.0.1:${PORT[$proxy]}/"
    load "$url" "$mode" 2000
    strace -f -c -p "${PID[$proxy]}" -o "$WORK/$proxy.$mode" 2>/dev/null &
    tracer=$!
    sleep 0.5
    load "$url" "$mode" "$REQUESTS"
    kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  done
  stop_proxies
  echo
  echo "system calls per request, $mode ($REQUESTS requests, $CONNECTIONS connections)"
  # strace -c: calls in column 4 (5 when a line has an error count), name last.
  for proxy in fulcrum haproxy; do
    awk -v n="$REQUESTS" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ { c[$NF] = $4 }
      END { for (k in c) if (c[k] / n >= 0.005) printf "%s %.2f\n", k, c[k] / n }' \
      "$WORK/$proxy.$mode" | sort > "$WORK/$proxy.$mode.per"
  done
  join -a1 -a2 -e - -o 0,1.2,2.2 "$WORK/fulcrum.$mode.per" "$WORK/haproxy.$mode.per" |
    awk 'BEGIN { printf "%-16s %8s %8s\n", "call", "fulcrum", "haproxy" }
      { printf "%-16s %8s %8s\n", $1, $2, $3; if ($2 != "-") f += $2; if ($3 != "-") h += $3 }
      END { printf "%-16s %8.2f %8.2f\n", "all", f, h }'
done
