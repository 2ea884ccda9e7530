#!/usr/bin/env bash
# Cache hits: requests per second for a stored response, fulcrum's cache against
# nginx's proxy_cache and against the origin answering directly, one worker each.
#
#   bash benches/load/cache.sh              # 10 s per run
#   DURATION=30s BODY=16384 bash benches/load/cache.sh
#
# The server under test is pinned to CPU 0; wrk (and the origin, which only sees the
# first request of each proxy) to CPU 1. The table gives req/s, p99, the server's own
# CPU time and requests per server CPU-second. Everything listens on 127.0.0.1 and is
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
BODY=${BODY:-1024}
ORIGIN_PORT=18180
declare -A PORT=([direct]=18181 [fulcrum]=18182 [nginx]=18183)

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need taskset util-linux
need curl curl

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum

WORK=$(mktemp -d /tmp/fulcrum-cache-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

head -c "$BODY" /dev/zero | tr '\0' 'x' > "$WORK/object"

# The origin: a static object, cacheable for an hour.
ORIGIN_SERVER="keepalive_requests 1000000; location / { root $WORK; try_files /object =404; add_header Cache-Control \"max-age=3600\"; etag on; }"
nginx_conf "$WORK/origin" "server { listen 127.0.0.1:$ORIGIN_PORT; $ORIGIN_SERVER }"
taskset -c 1 nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" &
PIDS+=($!)

# The same origin on CPU 0: the direct figure.
nginx_conf "$WORK/direct" "server { listen 127.0.0.1:${PORT[direct]}; $ORIGIN_SERVER }"
taskset -c 0 nginx -p "$WORK/direct" -c "$WORK/direct/nginx.conf" &
PIDS+=($!); PID_direct=$!

cat > "$WORK/fulcrum.toml" <<CONF
[global]
workers = 1
access_log = false
[cache]
max_size = "64MiB"
[[listener]]
name = "bench"
bind = "127.0.0.1:${PORT[fulcrum]}"
protocol = "http"
[[listener.route]]
upstream = "origin"
cache = true
[upstream.origin]
backends = [{ address = "127.0.0.1:$ORIGIN_PORT" }]
CONF
RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID_fulcrum=$!

nginx_conf "$WORK/proxy" "proxy_cache_path $WORK/proxy/cache keys_zone=c:10m max_size=64m;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 128; }
  server { listen 127.0.0.1:${PORT[nginx]}; keepalive_requests 1000000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_cache c; add_header X-Cache \$upstream_cache_status; } }"
taskset -c 0 nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" &
PIDS+=($!); PID_nginx=$!

for who in direct fulcrum nginx; do
  url="http://127.0.0.1:${PORT[$who]}/object"
  for _ in $(seq 100); do
    curl -fs -o /dev/null "$url" && break
    sleep 0.05
  done
  pid_var="PID_$who"
  kill -0 "${!pid_var}" 2>/dev/null || { echo "$who did not start" >&2; exit 1; }
done
# Warm: the second request of each proxy is a hit.
curl -fsi "http://127.0.0.1:${PORT[fulcrum]}/object" | grep -i '^cache-status' >&2
curl -fsi "http://127.0.0.1:${PORT[nginx]}/object" | grep -i '^x-cache' >&2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
declare -A RPS P99 CPU EFF
run() { # $1 server
  local pid_var="PID_$1" before after out key="$1"
  before=$(cpu_ticks "${!pid_var}")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$1]}/object")
  after=$(cpu_ticks "${!pid_var}")
  RPS[$key]=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  P99[$key]=$(awk '$1 == "99%" {print $2}' <<<"$out")
  CPU[$key]=$(awk -v t="$((after - before))" -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz}')
  EFF[$key]=$(awk -v r="${RPS[$key]}" -v c="${CPU[$key]}" -v d="${DURATION%s}" 'BEGIN { if (c > 0) printf "%.0f", r * d / c; else print "n/a" }')
  local errors
  errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [ -n "$errors" ] && echo "  $key: $errors" >&2
  return 0
}

for who in direct fulcrum nginx; do
  echo "running $who for $DURATION ..." >&2
  run "$who"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
printf '\n%-8s %12s %10s %9s %16s\n' server "req/s" p99 "cpu s" "req/cpu-s"
for who in direct fulcrum nginx; do
  printf '%-8s %12s %10s %9s %16s\n' "$who" "${RPS[$who]}" "${P99[$who]}" "${CPU[$who]}" "${EFF[$who]}"
done
echo
echo "cache hit, ${BODY}-byte body: fulcrum/nginx req/s $(ratio "${RPS[fulcrum]}" "${RPS[nginx]}"), req/cpu-s $(ratio "${EFF[fulcrum]}" "${EFF[nginx]}");" \
     "fulcrum/direct req/s $(ratio "${RPS[fulcrum]}" "${RPS[direct]}"), req/cpu-s $(ratio "${EFF[fulcrum]}" "${EFF[direct]}")"
