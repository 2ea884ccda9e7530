#!/usr/bin/env bash
# HTTP/2 end to end, per proxy CPU-second: h2load (8 connections x 32 streams, h2c
# with prior knowledge) through fulcrum (`protocol = "h2c"` upstream) and through
# HAProxy (`proto h2` on both sides) to one nginx h2c origin. Each proxy has one
# worker pinned to CPU 0; h2load and nginx share CPU 1.
#
#   bash benches/load/h2upstream.sh
#   DURATION=30s REPEATS=3 bash benches/load/h2upstream.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-1}
BACKEND_PORT=18580
declare -A PORT=([fulcrum]=18581 [haproxy]=18582)

. benches/load/common.sh
need h2load nghttp2-client
need haproxy haproxy
need nginx nginx-light
need taskset util-linux
need curl curl

# FULCRUM=/path/to/binary measures that build instead (to compare two versions).
fulcrum_binary
start_workdir h2upstream

nginx_conf "$WORK/backend" "keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND_PORT http2;
    location / { return 200 'hello from the backend\n'; } }"
taskset -c 1 nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)

declare -A PID
start_h2_proxies

for c in "${!PORT[@]}"; do
  for _ in $(seq 100); do
    curl -fs --http2-prior-knowledge -o /dev/null "http://127.0.0.1:${PORT[$c]}/" && break
    sleep 0.05
  done
done

h2load_per_cpu() { # $1 case: prints "req/cpu-s req/s cpu-s"
  local before after out rps cpu
  before=$(cpu_ticks "${PID[$1]}")
  out=$(taskset -c 1 h2load -c 8 -m 32 -D "${DURATION%s}" "http://127.0.0.1:${PORT[$1]}/")
  after=$(cpu_ticks "${PID[$1]}")
  grep -q "0 failed, 0 errored" <<<"$out" || grep "requests:" <<<"$out" >&2
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
  awk -v r="$rps" -v c="$cpu" -v d="${DURATION%s}" 'BEGIN { printf "%.0f %s %s\n", (c > 0 ? r * d / c : 0), r, c }'
}

declare -A ALL
for r in $(seq "$REPEATS"); do
  for c in fulcrum haproxy; do
    echo "running $c for $DURATION, $r of $REPEATS ..." >&2
    ALL[$c]+="$(h2load_per_cpu "$c");"
  done
done
declare -A EFF
printf '\n%-10s %12s %9s %12s\n' proxy "req/s" "cpu s" "req/cpu-s"
for c in fulcrum haproxy; do
  read -r EFF[$c] rps cpu <<<"$(tr ';' '\n' <<<"${ALL[$c]}" | sed '/^ *$/d' |
    sort -g -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')"
  printf '%-10s %12s %9s %12s\n' "$c" "$rps" "$cpu" "${EFF[$c]}"
done
echo
echo "fulcrum / haproxy, req/cpu-s: $(ratio "${EFF[fulcrum]}" "${EFF[haproxy]}")"
