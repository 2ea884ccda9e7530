#!/usr/bin/env bash
# gRPC unary calls per proxy CPU-second: a tonic client (benches/grpc_load.rs, 8
# connections x 16 calls in flight) through fulcrum (`protocol = "h2c"` upstream)
# and through HAProxy (`proto h2` on both sides) to a tonic echo origin, and straight
# to the origin for reference. Each proxy has one worker pinned to CPU 0; the client
# and the origin (one thread each) share CPU 1.
#
#   bash benches/load/grpc.sh
#   DURATION=30s REPEATS=3 bash benches/load/grpc.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-1}
BACKEND_PORT=18780
declare -A PORT=([fulcrum]=18781 [haproxy]=18782 [direct]=$BACKEND_PORT)

. benches/load/common.sh
need haproxy haproxy
need taskset util-linux

# FULCRUM=/path/to/binary measures that build instead (to compare two versions).
fulcrum_binary
LOAD=$(cargo bench --bench grpc_load --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*grpc_load[^"]*"' | cut -d'"' -f4 | tail -1)
start_workdir grpc

taskset -c 1 "$LOAD" serve "127.0.0.1:$BACKEND_PORT" &
PIDS+=($!)
declare -A PID
start_h2_proxies
sleep 1
for c in direct fulcrum haproxy; do
  out=$(taskset -c 1 "$LOAD" load "127.0.0.1:${PORT[$c]}" 1 1 1)
  grep -q "failed 0 " <<<"$out" || { echo "$c: $out" >&2; exit 1; }
done

calls_per_cpu() { # $1 case: prints "calls/cpu-s calls/s cpu-s"
  local before after out rate cpu
  [ "$1" = direct ] || before=$(cpu_ticks "${PID[$1]}")
  out=$(taskset -c 1 "$LOAD" load "127.0.0.1:${PORT[$1]}" 8 16 "${DURATION%s}")
  grep -q "failed 0 " <<<"$out" || echo "$1: $out" >&2
  rate=$(awk '{print $NF}' <<<"$out")
  if [ "$1" = direct ]; then echo "- $rate -"; return; fi
  after=$(cpu_ticks "${PID[$1]}")
  cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
  awk -v r="$rate" -v c="$cpu" -v d="${DURATION%s}" 'BEGIN { printf "%.0f %s %s\n", (c > 0 ? r * d / c : 0), r, c }'
}

declare -A ALL
for r in $(seq "$REPEATS"); do
  for c in direct fulcrum haproxy; do
    echo "running $c for $DURATION, $r of $REPEATS ..." >&2
    ALL[$c]+="$(calls_per_cpu "$c");"
  done
done
declare -A EFF RATE
printf '\n%-10s %12s %9s %14s\n' case "calls/s" "cpu s" "calls/cpu-s"
for c in direct fulcrum haproxy; do
  read -r EFF[$c] RATE[$c] cpu <<<"$(tr ';' '\n' <<<"${ALL[$c]}" | sed '/^ *$/d' |
    sort -k2,2 -g | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')"
  printf '%-10s %12s %9s %14s\n' "$c" "${RATE[$c]}" "$cpu" "${EFF[$c]}"
done
echo
echo "fulcrum / haproxy, calls/cpu-s: $(ratio "${EFF[fulcrum]}" "${EFF[haproxy]}")"
echo "calls/s through fulcrum / direct: $(ratio "${RATE[fulcrum]}" "${RATE[direct]}")"
