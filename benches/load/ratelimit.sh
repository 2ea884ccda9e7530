#!/usr/bin/env bash
# The cost of a rate limit on the keep-alive path, per proxy CPU-second: fulcrum
# without a rule, with a local rule that never refuses, and with the same rule kept in
# Redis (`store = "redis"`, redis-server on CPU 1); HAProxy without a rule and with a
# stick table (`http-request track-sc0 src` and a `deny` that never fires). Each proxy
# has one worker pinned to CPU 0; wrk (64 connections) and the nginx backend share
# CPU 1.
#
#   bash benches/load/ratelimit.sh
#   DURATION=30s REPEATS=3 bash benches/load/ratelimit.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
REPEATS=${REPEATS:-1}
BACKEND_PORT=18380
REDIS_PORT=18390
declare -A PORT=([fulcrum-none]=18381 [fulcrum-local]=18382 [fulcrum-redis]=18383
  [haproxy-none]=18384 [haproxy-stick]=18385)

. benches/load/common.sh
need wrk wrk
need haproxy haproxy
need nginx nginx-light
need taskset util-linux
need curl curl
need redis-server redis-server

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
start_workdir ratelimit

backend_nginx "$BACKEND_PORT" 1
taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  >/dev/null 2>&1 &
PIDS+=($!)

RULE='[rate_limit.never]
key = "client_ip"
rate = "1000000000/s"'
declare -A PID
start_fulcrum fulcrum-none "" ""
start_fulcrum fulcrum-local 'rate_limit = "never"' "$RULE"
start_fulcrum fulcrum-redis 'rate_limit = "never"' "$RULE
store = \"redis\"
on_store_error = \"deny\"
[redis]
url = \"redis://127.0.0.1:$REDIS_PORT/0\""

start_haproxy() { # $1 case, $2 frontend lines
  haproxy_cfg "$WORK/$1.cfg" 4096 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[$1]}
$2"
  taskset -c 0 haproxy -db -f "$WORK/$1.cfg" &
  PIDS+=($!); PID[$1]=$!
}
start_haproxy haproxy-none ""
start_haproxy haproxy-stick "  stick-table type ip size 100k expire 60s store http_req_rate(1s)
  http-request track-sc0 src
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000000 }"

for c in "${!PORT[@]}"; do wait_http "http://127.0.0.1:${PORT[$c]}/"; done
# A refusal would make the comparison meaningless: every case must answer 200.
for c in "${!PORT[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$c]}/")
  [ "$code" = 200 ] || { echo "$c answered $code" >&2; exit 1; }
done

declare -A EFF RPS CPU
measure_cases fulcrum-none fulcrum-local fulcrum-redis haproxy-none haproxy-stick
echo "fulcrum local rule / no rule, req/cpu-s: $(ratio "${EFF[fulcrum-local]}" "${EFF[fulcrum-none]}")"
echo "fulcrum redis rule / no rule, req/cpu-s: $(ratio "${EFF[fulcrum-redis]}" "${EFF[fulcrum-none]}")"
echo "haproxy stick table / no rule, req/cpu-s: $(ratio "${EFF[haproxy-stick]}" "${EFF[haproxy-none]}")"
echo "fulcrum local rule / haproxy stick table, req/cpu-s: $(ratio "${EFF[fulcrum-local]}" "${EFF[haproxy-stick]}")"
echo "fulcrum redis rule / haproxy stick table, req/cpu-s: $(ratio "${EFF[fulcrum-redis]}" "${EFF[haproxy-stick]}")"
