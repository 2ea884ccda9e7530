#!/usr/bin/env bash
# Slow clients against fulcrum and HAProxy, in one run: normal clients' throughput
# (wrk, keep-alive) with and without 2,000 slow clients (heads trickled, bodies
# trickled, responses read a byte a second; see slow_clients.py), and each proxy's
# resident memory while the slow clients are connected.
#
#   bash benches/hardening/slowloris.sh
#   SLOW=2000 DURATION=20s bash benches/hardening/slowloris.sh
#
# Each proxy runs one worker pinned to CPU 0; wrk, the slow clients and the nginx
# backend share CPU 1. Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-20s}
SLOW=${SLOW:-2000}
CONNECTIONS=${CONNECTIONS:-64}
BACKEND_PORT=18180
declare -A PORT=([fulcrum]=18181 [haproxy]=18182)

. benches/load/common.sh
need wrk wrk
need haproxy haproxy
need nginx nginx-light
need taskset util-linux
need python3 python3

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

start_workdir slowloris

# The backend: nginx on CPU 1; / is a short body, /big a 1 MiB file.
backend_nginx "$BACKEND_PORT" 1

fulcrum_toml "$WORK/fulcrum.toml" "${PORT[fulcrum]}" "$BACKEND_PORT" 'header_timeout = "10s"
body_timeout = "60s"'
RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID_fulcrum=$!

haproxy_cfg "$WORK/haproxy.cfg" 8000 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[haproxy]}" "  timeout http-request 10s"
taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" &
PIDS+=($!); PID_haproxy=$!

wait_http "http://127.0.0.1:$BACKEND_PORT/" "${PORT[@]/#/http://127.0.0.1:}"
for proxy in fulcrum haproxy; do
  pid_var="PID_$proxy"
  kill -0 "${!pid_var}" 2>/dev/null || { echo "$proxy did not start" >&2; exit 1; }
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
# req/s, then requests per proxy CPU-second (the proxy's work for the slow clients
# counts against it; the load generator's does not).
rps() { # $1 port, $2 pid
  local before after out
  before=$(cpu_ticks "$2")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$1/")
  after=$(cpu_ticks "$2")
  awk -v t="$((after - before))" -v hz="$TICKS" -v d="${DURATION%s}" \
    '/^Requests\/sec/ { printf "%s %.0f", $2, (t > 0 ? $2 * d / (t / hz) : 0) }' <<<"$out"
}

declare -A BASE LOADED BASE_EFF LOADED_EFF RSS_IDLE RSS_MAX SLOWSTATS
for proxy in fulcrum haproxy; do
  pid_var="PID_$proxy"; pid=${!pid_var}; port=${PORT[$proxy]}
  echo "$proxy: normal clients alone for $DURATION ..." >&2
  read -r BASE[$proxy] BASE_EFF[$proxy] <<<"$(rps "$port" "$pid")"
  RSS_IDLE[$proxy]=$(rss_kib "$pid")
  echo "$proxy: $SLOW slow clients, then normal clients for $DURATION ..." >&2
  secs=${DURATION%s}
  taskset -c 1 python3 benches/hardening/slow_clients.py 127.0.0.1 "$port" "$SLOW" "$((secs + 25))" /big > "$WORK/slow-$proxy.txt" &
  slow=$!
  sleep 15
  max=0
  ( while kill -0 "$slow" 2>/dev/null; do r=$(rss_kib "$pid"); echo "$r"; sleep 1; done ) > "$WORK/rss-$proxy.txt" &
  sampler=$!
  read -r LOADED[$proxy] LOADED_EFF[$proxy] <<<"$(rps "$port" "$pid")"
  wait "$slow" || true
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  RSS_MAX[$proxy]=$(sort -n "$WORK/rss-$proxy.txt" | tail -1)
  SLOWSTATS[$proxy]=$(cat "$WORK/slow-$proxy.txt")
  sleep 2
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
printf '\n%-8s %12s %12s %6s %14s %14s %6s %10s %10s\n' proxy "req/s alone" "with slow" ratio \
  "req/cpu-s alone" "with slow" ratio "RSS KiB" "peak KiB"
for proxy in fulcrum haproxy; do
  printf '%-8s %12s %12s %6s %14s %14s %6s %10s %10s\n' "$proxy" "${BASE[$proxy]}" "${LOADED[$proxy]}" \
    "$(ratio "${LOADED[$proxy]}" "${BASE[$proxy]}")" "${BASE_EFF[$proxy]}" "${LOADED_EFF[$proxy]}" \
    "$(ratio "${LOADED_EFF[$proxy]}" "${BASE_EFF[$proxy]}")" "${RSS_IDLE[$proxy]}" "${RSS_MAX[$proxy]}"
done
echo
for proxy in fulcrum haproxy; do echo "$proxy ${SLOWSTATS[$proxy]}"; done
