#!/usr/bin/env bash
# CPU time per proxied request, kernel and user space, for fulcrum and HAProxy, and
# the functions whose time differs most between the two: `perf record` samples each
# proxy (cpu-clock, no call graphs) while wrk loads it, pinned like run.sh (the proxy
# on CPU 0, wrk and the nginx backend on CPU 1), and the samples are divided by the
# requests served while they were taken.
#
#   bash benches/load/cost.sh                       # keepalive, close and tcp
#   MODES=keepalive SECONDS_PROFILED=10 bash benches/load/cost.sh
#   FULCRUM=/path/to/fulcrum TOP=30 bash benches/load/cost.sh
#
# Modes: keepalive (HTTP/1.1, 64 connections), close (a new client connection per
# request), tcp (both proxies at layer 4, a new client and backend connection per
# request). Times are in microseconds of CPU per request; "own" is the proxy's own
# code, "libc" and "vdso" the C library and the kernel's clock page.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODES=${MODES:-keepalive close tcp}
SECONDS_PROFILED=${SECONDS_PROFILED:-5}
FREQ=${FREQ:-999}
TOP=${TOP:-15}
BACKEND_PORT=18880
declare -A PORT=([fulcrum]=18881 [haproxy]=18882) TCP_PORT=([fulcrum]=18883 [haproxy]=18884)

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need haproxy haproxy
need perf linux-perf
need taskset util-linux

fulcrum_binary

start_workdir cost
backend_nginx "$BACKEND_PORT" 1

fulcrum_toml "$WORK/fulcrum.toml" "${PORT[fulcrum]}" "$BACKEND_PORT"
fulcrum_tcp_listener "$WORK/fulcrum.toml" bench-tcp "${TCP_PORT[fulcrum]}" backend
haproxy_cfg "$WORK/haproxy.cfg" 4096 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[haproxy]}"
cat >> "$WORK/haproxy.cfg" <<CONF
listen tcp
  mode tcp
  bind 127.0.0.1:${TCP_PORT[haproxy]}
  server b1 127.0.0.1:$BACKEND_PORT
CONF

RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID_fulcrum=$!
taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" &
PIDS+=($!); PID_haproxy=$!
wait_http "http://127.0.0.1:${PORT[fulcrum]}/" "http://127.0.0.1:${PORT[haproxy]}/" \
  "http://127.0.0.1:${TCP_PORT[fulcrum]}/" "http://127.0.0.1:${TCP_PORT[haproxy]}/"

load() { # $1 proxy, $2 mode, $3 seconds
  local url="http://127.0.0.1:${PORT[$1]}/" header=()
  [ "$2" = tcp ] && url="http://127.0.0.1:${TCP_PORT[$1]}/"
  [ "$2" != keepalive ] && header=(-H "Connection: close")
  taskset -c 1 wrk -t1 -c64 -d"$3s" "${header[@]}" "$url"
}

for mode in $MODES; do
  for proxy in fulcrum haproxy; do
    echo "profiling $proxy ($mode) for ${SECONDS_PROFILED}s ..." >&2
    pid_var="PID_$proxy"
    load "$proxy" "$mode" 2 >/dev/null
    load "$proxy" "$mode" "$((SECONDS_PROFILED + 2))" >"$WORK/$proxy-$mode.wrk" &
    L=$!
    sleep 1
    perf record -q -e cpu-clock -F "$FREQ" -p "${!pid_var}" -o "$WORK/$proxy-$mode.data" \
      -- sleep "$SECONDS_PROFILED" 2>/dev/null
    wait "$L"
    rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/$proxy-$mode.wrk")
    # Samples by shared object and function, with the requests served meanwhile.
    perf report -i "$WORK/$proxy-$mode.data" --no-children --sort dso,sym -n --stdio 2>/dev/null |
      awk -v r="$rps" -v s="$SECONDS_PROFILED" '/^ +[0-9]/ {print r * s "\t" $0}' >"$WORK/$proxy-$mode.txt"
  done
done

python3 - "$WORK" "$FREQ" "$TOP" $MODES <<'PY'
import re, sys
work, freq, top, modes = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
line_re = re.compile(r'([\d.]+)\t\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*)')

def load(proxy, mode):
    """Microseconds per request by (part, function)."""
    out = {}
    for line in open(f"{work}/{proxy}-{mode}.txt"):
        m = line_re.match(line)
        if not m:
            continue
        requests, samples, dso, kind, sym = m.groups()
        us = int(samples) / freq / float(requests) * 1e6
        part = "kernel" if kind == "k" else "libc" if dso.startswith("libc") else \
            "vdso" if "vdso" in dso else "own"
        key = (part, sym.strip())
        out[key] = out.get(key, 0.0) + us
    return out

for mode in modes:
    f, h = load("fulcrum", mode), load("haproxy", mode)
    part = lambda d, p: sum(v for (q, _), v in d.items() if q == p)
    print(f"\n{mode}: microseconds of CPU per request")
    print(f"{'':10}{'fulcrum':>10}{'haproxy':>10}")
    for p in ("kernel", "own", "libc", "vdso"):
        print(f"{p:10}{part(f, p):10.2f}{part(h, p):10.2f}")
    tf, th = sum(f.values()), sum(h.values())
    print(f"{'all':10}{tf:10.2f}{th:10.2f}   haproxy/fulcrum {th / tf:.2f}")
    print(f"  functions that differ most (nanoseconds per request):")
    keys = sorted(set(f) | set(h), key=lambda k: -abs(f.get(k, 0) - h.get(k, 0)))
    for k in keys[:top]:
        a, b = f.get(k, 0) * 1000, h.get(k, 0) * 1000
        print(f"  {a:8.0f} {b:8.0f} {a - b:+8.0f}  [{k[0]}] {k[1][:80]}")
PY
