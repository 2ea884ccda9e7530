#!/usr/bin/env bash
# Where fulcrum's CPU time goes on one path: perf samples (cpu-clock, DWARF call
# graphs) of the fulcrum process while wrk loads it, pinned like run.sh (fulcrum on
# CPU 0, wrk and the nginx backend on CPU 1).
#
#   bash benches/load/profile.sh                 # keep-alive, 10 s
#   MODE=close SECONDS_PROFILED=5 bash benches/load/profile.sh
#   MODE=h2upstream bash benches/load/profile.sh # h2load (8 x 32 streams) over h2c to an h2c origin
#   OUT=/tmp/prof bash benches/load/profile.sh   # keep perf.data, folded stacks, flame.svg
#   FULCRUM=/tmp/old/fulcrum bash benches/load/profile.sh  # profile a given build
#
# Prints the share of kernel and user time, the top functions by self time, and the
# top frames by inclusive time (a flame graph as text). With inferno installed
# (`cargo install inferno`) it also writes flame.svg into OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=${MODE:-keepalive}
SECONDS_PROFILED=${SECONDS_PROFILED:-10}
FREQ=${FREQ:-499}
BACKEND_PORT=18180
PORT=18181

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need taskset util-linux
need perf linux-perf

# FULCRUM=/path/to/binary measures that build instead (to compare two versions).
fulcrum_binary
start_workdir profile
OUT=${OUT:-$WORK}
mkdir -p "$OUT"

fulcrum_toml "$WORK/fulcrum.toml" "$PORT" "$BACKEND_PORT"
if [ "$MODE" = h2upstream ]; then
  need h2load nghttp2-client
  nginx_conf "$WORK/backend" "keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND_PORT http2;
    location / { return 200 'hello from the backend\n'; } }"
  taskset -c 1 nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
  PIDS+=($!)
  echo 'protocol = "h2c"' >> "$WORK/fulcrum.toml"
else
  backend_nginx "$BACKEND_PORT" 1
fi
RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID=$!
wait_http "http://127.0.0.1:$PORT/"

load() { # $1 seconds
  if [ "$MODE" = h2upstream ]; then
    taskset -c 1 h2load -c 8 -m 32 -D "$1" "http://127.0.0.1:$PORT/"
  elif [ "$MODE" = close ]; then
    taskset -c 1 wrk -t1 -c64 -d"$1s" -H "Connection: close" "http://127.0.0.1:$PORT/"
  else
    taskset -c 1 wrk -t1 -c64 -d"$1s" "http://127.0.0.1:$PORT/"
  fi
}
# Warm up, then profile a run of its own.
load 2 >/dev/null
load "$((SECONDS_PROFILED + 2))" >"$WORK/load.txt" &
LOAD=$!
sleep 1
perf record -q -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$PID" -o "$OUT/perf.data" -- sleep "$SECONDS_PROFILED" 2>/dev/null
wait "$LOAD"
grep -E "Requests/sec|^finished in" "$WORK/load.txt"

# The first $1 sample lines (awk reads all its input: no early close, no SIGPIPE for
# perf under pipefail).
top() { grep -E '^ +[0-9]' | awk -v n="$1" 'NR <= n'; }
echo
echo "== kernel and user time"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | top 8
echo
echo "== top functions, self time"
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | top 30
echo
echo "== top frames, inclusive time"
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none 2>/dev/null | top 40

if command -v inferno-collapse-perf >/dev/null; then
  perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/folded.txt"
  inferno-flamegraph < "$OUT/folded.txt" > "$OUT/flame.svg"
  echo
  echo "flame graph: $OUT/flame.svg"
fi
if [ "$OUT" = "$WORK" ]; then
  echo "(set OUT=DIR to keep perf.data)"
fi
