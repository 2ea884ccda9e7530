#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: user-space
# instructions of the proxy process only (all its threads), over a fixed number of
# requests, after a warm-up that is not counted. The count is repeatable on a busy
# machine, where requests per second are not: use it to judge a change on the request
# path, and to compare with HAProxy measured the same way.
#
#   bash benches/load/callgrind.sh                     # fulcrum and HAProxy, keep-alive
#   MODE=close bash benches/load/callgrind.sh          # a new connection per request
#   MODE=h2c bash benches/load/callgrind.sh            # h2c, 8 connections x 8 streams
#   MODE=h2upstream bash benches/load/callgrind.sh     # h2c both sides, 8 x 32 streams, h2c origin
#   MODE=tcp bash benches/load/callgrind.sh            # layer 4: a new connection per request, both sides
#   PROXIES=fulcrum REQUESTS=5000 bash benches/load/callgrind.sh
#   KEEP=1 bash benches/load/callgrind.sh              # keep the callgrind.out files
#   FULCRUM=/tmp/old/fulcrum PROXIES=fulcrum bash benches/load/callgrind.sh
#   LOG=info PROXIES=fulcrum bash benches/load/callgrind.sh   # at the default log level
#   FULCRUM_EXTRA=$'[tracing]\nsample = 0.01' PROXIES=fulcrum bash benches/load/callgrind.sh
#   CACHE=1 bash benches/load/callgrind.sh             # also simulated cache misses per request
#
# The client is h2load (`--h1` for HTTP/1.1) with an exact request count; the backend
# is one nginx process answering a short body. Both run outside valgrind. With KEEP=1
# the profiles stay in the printed directory: `callgrind_annotate --inclusive=yes FILE`
# shows where the instructions go.
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
MODE=${MODE:-keepalive}
PROXIES=${PROXIES:-fulcrum haproxy}
BACKEND_PORT=18180
declare -A PORT=([fulcrum]=18181 [haproxy]=18182 [nginx]=18183)

. benches/load/common.sh
need valgrind valgrind
need callgrind_control valgrind
need h2load nghttp2-client
need haproxy haproxy
need nginx nginx-light

# FULCRUM=/path/to/binary measures that build instead (to compare two versions).
fulcrum_binary

start_workdir callgrind
[ -n "${KEEP:-}" ] && trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; echo "profiles kept in $WORK" >&2' EXIT

if [ "$MODE" = h2upstream ]; then
  # HTTP/2 to the origin as well: nginx takes h2c with prior knowledge.
  nginx_conf "$WORK/backend" "keepalive_requests 1000000;
    server { listen 127.0.0.1:$BACKEND_PORT http2;
    location / { return 200 'hello from the backend\n'; } }"
  nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
  PIDS+=($!)
else
  backend_nginx "$BACKEND_PORT"
fi

fulcrum_toml "$WORK/fulcrum.toml" "${PORT[fulcrum]}" "$BACKEND_PORT"
[ "$MODE" = h2upstream ] && echo 'protocol = "h2c"' >> "$WORK/fulcrum.toml"
[ "$MODE" = tcp ] && sed -i 's/^protocol = "http"/protocol = "tcp"/' "$WORK/fulcrum.toml"
# More top-level sections for fulcrum's file, to count what a feature costs.
printf '%s\n' "${FULCRUM_EXTRA:-}" >> "$WORK/fulcrum.toml"
haproxy_cfg "$WORK/haproxy.cfg" 4096 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[haproxy]} proto h2
  bind 127.0.0.1:$((PORT[haproxy] + 10))"
[ "$MODE" = h2upstream ] && sed -i "s/^  server b1 .*/& proto h2/" "$WORK/haproxy.cfg"
if [ "$MODE" = tcp ]; then
  # Layer 4: bytes relayed, a backend connection for each client connection.
  sed -i -e 's/^  mode http/  mode tcp/' -e '/http-keep-alive\|http-reuse\|proto h2/d' "$WORK/haproxy.cfg"
  case " $PROXIES " in *" nginx "*) echo "MODE=tcp measures fulcrum and haproxy" >&2; exit 2 ;; esac
fi

nginx_conf "$WORK/proxy" "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server { listen 127.0.0.1:${PORT[nginx]}; listen 127.0.0.1:$((PORT[nginx] + 10)) http2;
    keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

client() { # $1 url, $2 count
  case "$MODE" in
    keepalive) h2load --h1 -n "$2" -c 8 "$1" ;;
    close | tcp) h2load --h1 -n "$2" -c 8 -H 'connection: close' "$1" ;;
    h2c) h2load -n "$2" -c 8 -m 8 "$1" ;;
    h2upstream) h2load -n "$2" -c 8 -m 32 "$1" ;;
    *) echo "MODE is keepalive, close, h2c, h2upstream or tcp" >&2; exit 2 ;;
  esac
}

url_of() { # $1 proxy: HAProxy and nginx take h2c on a port of their own, fulcrum detects it
  local port=${PORT[$1]}
  case "$1/$MODE" in
    haproxy/h2c | haproxy/h2upstream | fulcrum/*) ;;
    haproxy/*) port=$((port + 10)) ;;
    nginx/h2c) port=$((port + 10)) ;;
  esac
  echo "http://127.0.0.1:$port/"
}

declare -A PER_REQUEST MISSES
for proxy in $PROXIES; do
  out="$WORK/callgrind.out.$proxy"
  case "$proxy" in
    fulcrum) cmd=("$FULCRUM" run -c "$WORK/fulcrum.toml") stop=INT ;;
    haproxy) cmd=(haproxy -db -f "$WORK/haproxy.cfg") stop=USR1 ;;
    nginx) cmd=(nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf") stop=QUIT ;;
    *) echo "unknown proxy $proxy" >&2; exit 2 ;;
  esac
  RUST_LOG=${LOG:-warn} valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    ${CACHE:+--cache-sim=yes} "${cmd[@]}" 2>"$WORK/$proxy.log" &
  pid=$!
  PIDS+=($pid)
  url=$(url_of "$proxy")
  for _ in $(seq 600); do
    curl -fs -o /dev/null "$url" && break
    sleep 0.1
  done
  client "$url" "$WARMUP" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  summary=$(client "$url" "$REQUESTS")
  callgrind_control -i off "$pid" >/dev/null 2>&1
  grep -q " 0 failed, 0 errored" <<<"$summary" || grep "requests:" <<<"$summary" >&2
  kill -"$stop" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  total=$(awk '/^totals:/ {print $2}' "$out")
  PER_REQUEST[$proxy]=$(awk -v t="$total" -v n="$REQUESTS" 'BEGIN {printf "%.0f", t / n}')
  echo "$proxy ($MODE): $total instructions over $REQUESTS requests" >&2
  if [ -n "${CACHE:-}" ]; then
    # Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw: first-level data misses (reads and
    # writes) and last-level misses, per request.
    MISSES[$proxy]=$(awk -v n="$REQUESTS" '/^totals:/ {printf "D1 misses %.0f, LL misses %.0f, I1 misses %.0f", ($6 + $7) / n, ($8 + $9 + $10) / n, $5 / n}' "$out")
  fi
done
if [ -n "${CACHE:-}" ]; then
  echo
  for proxy in $PROXIES; do echo "$proxy per request: ${MISSES[$proxy]}"; done
fi

printf '\n%-8s %-10s %24s\n' proxy mode "instructions/request"
for proxy in $PROXIES; do
  printf '%-8s %-10s %24s\n' "$proxy" "$MODE" "${PER_REQUEST[$proxy]}"
done
if [ -n "${PER_REQUEST[fulcrum]:-}" ] && [ -n "${PER_REQUEST[haproxy]:-}" ]; then
  echo "fulcrum/haproxy instructions per request: $(ratio "${PER_REQUEST[fulcrum]}" "${PER_REQUEST[haproxy]}")"
fi
