#!/usr/bin/env bash
# Where fulcrum's CPU time goes on one path: perf samples (cpu-clock, DWARF call
# graphs) of the fulcrum process while wrk loads it, pinned like run.sh (fulcrum on
# CPU 0, wrk and the nginx backend on CPU 1).
#
#   bash benches/load/profile.sh                 # keep-alive, 10 s
#   MODE=close SECONDS_PROFILED=5 bash benches/load/profile.sh
#   OUT=/tmp/prof bash benches/load/profile.sh   # keep perf.data, folded stacks, flame.svg
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

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
start_workdir profile
OUT=${OUT:-$WORK}
mkdir -p "$OUT"

backend_nginx "$BACKEND_PORT" 1
fulcrum_toml "$WORK/fulcrum.toml" "$PORT" "$BACKEND_PORT"
RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID=$!
wait_http "http://127.0.0.1:$BACKEND_PORT/" "http://127.0.0.1:$PORT/"

extra=()
[ "$MODE" = close ] && extra=(-H "Connection: close")
# Warm up, then profile a run of its own.
taskset -c 1 wrk -t1 -c64 -d2s "${extra[@]}" "http://127.0.0.1:$PORT/" >/dev/null
taskset -c 1 wrk -t1 -c64 -d"$((SECONDS_PROFILED + 2))s" "${extra[@]}" "http://127.0.0.1:$PORT/" >"$WORK/wrk.txt" &
WRK=$!
sleep 1
perf record -q -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$PID" -o "$OUT/perf.data" -- sleep "$SECONDS_PROFILED" 2>/dev/null
wait "$WRK"
grep -E "Requests/sec" "$WORK/wrk.txt"

echo
echo "== kernel and user time"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
echo
echo "== top functions, self time"
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -30
echo
echo "== top frames, inclusive time"
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -40

if command -v inferno-collapse-perf >/dev/null; then
  perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/folded.txt"
  inferno-flamegraph < "$OUT/folded.txt" > "$OUT/flame.svg"
  echo
  echo "flame graph: $OUT/flame.svg"
fi
if [ "$OUT" = "$WORK" ]; then
  echo "(set OUT=DIR to keep perf.data)"
fi
