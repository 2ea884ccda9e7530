#!/usr/bin/env bash
# Response compression per proxy CPU-second: a 100 KiB JSON response compressed by
# fulcrum (gzip level 6, zstd level 3) and by nginx (`gzip on`, level 6), each with
# one worker pinned to CPU 0, in front of the same nginx origin on CPU 1, with wrk
# (64 connections) on CPU 1 asking with `Accept-Encoding` for the algorithm measured.
# Also prints each response's compressed size (the compression ratio).
#
#   bash benches/load/compress.sh
#   DURATION=30s REPEATS=3 bash benches/load/compress.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
REPEATS=${REPEATS:-1}
ORIGIN_PORT=18280
FULCRUM_PORT=18281
NGINX_PORT=18283

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need taskset util-linux
need curl curl

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
start_workdir compress

# The origin: a 100 KiB JSON document (records that repeat with varying numbers, as
# an API listing does), served uncompressed.
mkdir -p "$WORK/www"
python3 - "$WORK/www/data.json" <<'PY'
import json, sys
rows, size, i = [], 0, 0
while size < 100 * 1024:
    row = {"id": i, "name": f"item-{i}", "price": round(i * 1.37 % 500, 2),
           "tags": ["proxy", "cache", f"t{i % 17}"], "active": i % 3 != 0}
    rows.append(row); size += len(json.dumps(row)) + 2; i += 1
open(sys.argv[1], "w").write(json.dumps(rows, indent=1)[: 100 * 1024])
PY
nginx_conf "$WORK/origin" "server { listen 127.0.0.1:$ORIGIN_PORT; keepalive_requests 1000000;
    default_type application/json; location / { root $WORK/www; } }"
taskset -c 1 nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" &
PIDS+=($!)

fulcrum_toml "$WORK/fulcrum.toml" "$FULCRUM_PORT" "$ORIGIN_PORT" \
  '[[listener.route]]
upstream = "backend"
compress = true'
cat >> "$WORK/fulcrum.toml" <<CONF
[compression]
algorithms = ["zstd", "gzip"]
level = { gzip = 6, zstd = 3 }
CONF
RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID_fulcrum=$!

nginx_conf "$WORK/proxy" "upstream backend { server 127.0.0.1:$ORIGIN_PORT; keepalive 128; }
  gzip on; gzip_comp_level 6; gzip_types application/json; gzip_proxied any;
  server { listen 127.0.0.1:$NGINX_PORT; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
taskset -c 0 nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" &
PIDS+=($!); PID_nginx=$!

wait_http "http://127.0.0.1:$ORIGIN_PORT/data.json" "http://127.0.0.1:$FULCRUM_PORT/data.json" \
  "http://127.0.0.1:$NGINX_PORT/data.json"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
ORIGINAL=$(stat -c %s "$WORK/www/data.json")

# run NAME PID PORT ENCODING: prints "req/cpu-s req/s cpu-s".
run() {
  local before after out rps cpu
  before=$(cpu_ticks "$2")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Accept-Encoding: $4" \
    "http://127.0.0.1:$3/data.json")
  after=$(cpu_ticks "$2")
  grep -q "Non-2xx\|Socket errors" <<<"$out" && grep "Non-2xx\|Socket errors" <<<"$out" >&2
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  cpu=$(awk -v t="$((after - before))" -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz}')
  awk -v r="$rps" -v c="$cpu" -v d="${DURATION%s}" 'BEGIN { printf "%.0f %s %s\n", (c > 0 ? r * d / c : 0), r, c }'
}

size() { # PORT ENCODING: bytes of the compressed response, checking its encoding
  local h="$WORK/headers"
  curl -s -D "$h" -H "Accept-Encoding: $2" -o "$WORK/body" "http://127.0.0.1:$1/data.json"
  grep -qi "^content-encoding: $2" "$h" || { echo "port $1 did not answer with $2" >&2; exit 1; }
  stat -c %s "$WORK/body"
}

declare -A ALL
CASES="fulcrum-gzip nginx-gzip fulcrum-zstd"
for r in $(seq "$REPEATS"); do
  for c in $CASES; do
    echo "running $c for $DURATION, $r of $REPEATS ..." >&2
    case $c in
      fulcrum-gzip) ALL[$c]+="$(run "$c" "$PID_fulcrum" "$FULCRUM_PORT" gzip);" ;;
      nginx-gzip) ALL[$c]+="$(run "$c" "$PID_nginx" "$NGINX_PORT" gzip);" ;;
      fulcrum-zstd) ALL[$c]+="$(run "$c" "$PID_fulcrum" "$FULCRUM_PORT" zstd);" ;;
    esac
  done
done
median() { tr ';' '\n' | sed '/^ *$/d' | sort -g -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
declare -A EFF RPS CPU SIZE
SIZE[fulcrum-gzip]=$(size "$FULCRUM_PORT" gzip)
SIZE[nginx-gzip]=$(size "$NGINX_PORT" gzip)
SIZE[fulcrum-zstd]=$(size "$FULCRUM_PORT" zstd)
printf '\n%-14s %12s %9s %14s %12s %8s\n' case "req/s" "cpu s" "req/cpu-s" "bytes" ratio
for c in $CASES; do
  read -r EFF[$c] RPS[$c] CPU[$c] <<<"$(median <<<"${ALL[$c]}")"
  printf '%-14s %12s %9s %14s %12s %8s\n' "$c" "${RPS[$c]}" "${CPU[$c]}" "${EFF[$c]}" "${SIZE[$c]}" \
    "$(ratio "$ORIGINAL" "${SIZE[$c]}")"
done
echo
echo "original: $ORIGINAL bytes"
echo "fulcrum gzip / nginx gzip, req/cpu-s: $(ratio "${EFF[fulcrum-gzip]}" "${EFF[nginx-gzip]}")"
echo "fulcrum zstd / nginx gzip, req/cpu-s: $(ratio "${EFF[fulcrum-zstd]}" "${EFF[nginx-gzip]}")"
