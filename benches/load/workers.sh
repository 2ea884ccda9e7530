#!/usr/bin/env bash
# Schedulers, per proxy CPU-second: fulcrum with one worker (a single-threaded
# scheduler), with two workers under work stealing (`work_stealing = true`, the
# default) and with two workers thread per core (`work_stealing = false`: a scheduler
# and an SO_REUSEPORT socket per worker), against HAProxy with one and two threads.
# One-worker proxies are pinned to CPU 0, two-worker ones to CPUs 0-1; wrk (one
# thread) and the nginx origin run on CPU 1.
#
#   bash benches/load/workers.sh
#   MODES="keepalive close" DURATION=5s REPEATS=3 bash benches/load/workers.sh
#
# keepalive: CONNECTIONS (64) keep-alive connections; close: a new connection per
# request (wrk sends `Connection: close`).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-1}
CONNECTIONS=${CONNECTIONS:-64}
MODES=${MODES:-keepalive close}
BACKEND_PORT=18680
declare -A PORT=([fulcrum-1]=18681 [stealing-2]=18682 [per-core-2]=18683 [haproxy-1]=18684 [haproxy-2]=18685)
CASES=(fulcrum-1 stealing-2 per-core-2 haproxy-1 haproxy-2)

. benches/load/common.sh
need wrk wrk
need haproxy haproxy
need nginx nginx-light
need taskset util-linux
need curl curl

cargo build --release --quiet ${FEATURES:+--features "$FEATURES"}
FULCRUM=$PWD/target/release/fulcrum
start_workdir workers
backend_nginx "$BACKEND_PORT" 1

declare -A PID
fulcrum_case() { # $1 case, $2 cpus, $3 [global] keys
  fulcrum_toml "$WORK/$1.toml" "${PORT[$1]}" "$BACKEND_PORT" "" "$3"
  sed -i '/^workers = 1$/d' "$WORK/$1.toml"
  RUST_LOG=warn taskset -c "$2" "$FULCRUM" run -c "$WORK/$1.toml" 2>"$WORK/$1.log" &
  PIDS+=($!); PID[$1]=$!
}
fulcrum_case fulcrum-1 0 "workers = 1"
fulcrum_case stealing-2 0-1 "workers = 2
work_stealing = true"
fulcrum_case per-core-2 0-1 "workers = 2
work_stealing = false"

haproxy_case() { # $1 case, $2 cpus, $3 threads
  haproxy_cfg "$WORK/$1.cfg" 4096 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[$1]}"
  sed -i "s/^  nbthread 1$/  nbthread $3/" "$WORK/$1.cfg"
  taskset -c "$2" haproxy -db -f "$WORK/$1.cfg" &
  PIDS+=($!); PID[$1]=$!
}
haproxy_case haproxy-1 0 1
haproxy_case haproxy-2 0-1 2

wait_http "http://127.0.0.1:$BACKEND_PORT/" $(for c in "${CASES[@]}"; do echo "http://127.0.0.1:${PORT[$c]}/"; done)

declare -A EFF RPS CPU RESULT
for mode in $MODES; do
  case $mode in
    keepalive) WRK_HEADER= ;;
    close) WRK_HEADER="Connection: close" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  echo "== $mode" >&2
  measure_cases "${CASES[@]}" >&2
  for c in "${CASES[@]}"; do RESULT[$mode,$c]=${EFF[$c]}; done
done

printf '\n%-10s %-11s %12s %12s\n' mode case "req/cpu-s" "/haproxy"
for mode in $MODES; do
  for c in "${CASES[@]}"; do
    anchor=haproxy-1
    [[ $c == *-2 ]] && anchor=haproxy-2
    printf '%-10s %-11s %12s %12s\n' "$mode" "$c" "${RESULT[$mode,$c]}" "$(ratio "${RESULT[$mode,$c]}" "${RESULT[$mode,$anchor]}")"
  done
done
