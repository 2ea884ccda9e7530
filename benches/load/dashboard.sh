#!/usr/bin/env bash
# What the dashboard's polling costs the data path: keep-alive requests per proxy
# CPU-second of one fulcrum (one worker pinned to CPU 0; wrk and the nginx backend on
# CPU 1) with nobody looking, and with the dashboard open: a poller on CPU 1 asking
# /dashboard/data every second, as the page does. The cases alternate, REPEATS times;
# the medians and their ratio are printed.
#
#   bash benches/load/dashboard.sh
#   DURATION=20s REPEATS=5 bash benches/load/dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
REPEATS=${REPEATS:-3}
BACKEND_PORT=18580
ADMIN_PORT=18590
declare -A PORT=([closed]=18581 [open]=18581)

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need taskset util-linux
need curl curl

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
start_workdir dashboard

backend_nginx "$BACKEND_PORT" 1
declare -A PID
start_fulcrum closed "" "[admin]
bind = \"127.0.0.1:$ADMIN_PORT\""
PID[open]=${PID[closed]}
wait_http "http://127.0.0.1:${PORT[closed]}/"
wait_http "http://127.0.0.1:$ADMIN_PORT/"

poll() {
  taskset -c 1 bash -c "while :; do curl -s -o /dev/null http://127.0.0.1:$ADMIN_PORT/dashboard/data; sleep 1; done" &
  POLLER=$!
}

median() { sort -g | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
declare -A RUNS
for r in $(seq "$REPEATS"); do
  echo "running closed for $DURATION, $r of $REPEATS ..." >&2
  RUNS[closed]+="$(wrk_per_cpu closed | cut -d' ' -f1)"$'\n'
  poll
  echo "running open for $DURATION, $r of $REPEATS ..." >&2
  RUNS[open]+="$(wrk_per_cpu open | cut -d' ' -f1)"$'\n'
  kill "$POLLER"; wait "$POLLER" 2>/dev/null || true
done
for c in closed open; do
  echo "$c: req/cpu-s runs: $(tr '\n' ' ' <<<"${RUNS[$c]}")median $(sed '/^$/d' <<<"${RUNS[$c]}" | median)"
done
echo "open / closed, req/cpu-s: $(ratio "$(sed '/^$/d' <<<"${RUNS[open]}" | median)" "$(sed '/^$/d' <<<"${RUNS[closed]}" | median)")"
