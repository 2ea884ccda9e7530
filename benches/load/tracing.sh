#!/usr/bin/env bash
# The cost of tracing on the keep-alive path, per proxy CPU-second: fulcrum without
# [tracing], with [tracing] at sample = 0.01 and at sample = 1.0, both exporting spans
# to a local OTLP/HTTP collector (the nginx backend on CPU 1 answers the exports with
# 200). Each fulcrum has one worker pinned to CPU 0; wrk (64 connections, no
# traceparent) and nginx share CPU 1. Spans exported and dropped are printed.
#
#   bash benches/load/tracing.sh
#   DURATION=30s REPEATS=3 bash benches/load/tracing.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
REPEATS=${REPEATS:-1}
BACKEND_PORT=18480
declare -A PORT=([tracing-off]=18481 [sample-0.01]=18482 [sample-1.0]=18483)
declare -A ADMIN=([sample-0.01]=18492 [sample-1.0]=18493)

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need taskset util-linux
need curl curl

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
start_workdir tracing

backend_nginx "$BACKEND_PORT" 1
declare -A PID
start_fulcrum tracing-off "" ""
for p in 0.01 1.0; do
  start_fulcrum "sample-$p" "" "[tracing]
sample = $p
otlp = \"http://127.0.0.1:$BACKEND_PORT\"
[admin]
bind = \"127.0.0.1:${ADMIN[sample-$p]}\""
done
for c in "${!PORT[@]}"; do wait_http "http://127.0.0.1:${PORT[$c]}/"; done

declare -A EFF RPS CPU
measure_cases tracing-off sample-0.01 sample-1.0
for c in sample-0.01 sample-1.0; do
  sleep 2 # the last batch leaves within a second
  echo "$c spans: $(curl -s "http://127.0.0.1:${ADMIN[$c]}/metrics" | grep '^fulcrum_tracing_spans' | tr '\n' ' ')"
done
echo "sample 0.01 / tracing off, req/cpu-s: $(ratio "${EFF[sample-0.01]}" "${EFF[tracing-off]}")"
echo "sample 1.0 / tracing off, req/cpu-s: $(ratio "${EFF[sample-1.0]}" "${EFF[tracing-off]}")"
