#!/usr/bin/env bash
# HTTP and HTTPS load comparison: fulcrum, HAProxy and nginx, each with one worker, in
# front of the same fast local backend (nginx answering a short body or a 1 MiB file),
# measured with wrk (h2load for h2c). HTTPS uses one ECDSA P-256 certificate for all
# three; with `Connection: close` every request is a new TLS connection, so req/s there
# is handshakes per second.
#
#   bash benches/load/run.sh            # every mode, 10 s per run
#   DURATION=30s bash benches/load/run.sh
#   MODES="keepalive h2c" bash benches/load/run.sh
#
# The proxy under test is pinned to CPU 0; wrk and the backend share CPU 1. On a
# 2-core machine the load generator can be the limit, so besides req/s the table gives
# the proxy's own CPU time (utime + stime from /proc) and requests per proxy CPU-second,
# the fair figure. Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
BACKEND_PORT=18080
declare -A PORT=([fulcrum]=18081 [haproxy]=18082 [nginx]=18083)
declare -A TLS_PORT=([fulcrum]=18091 [haproxy]=18092 [nginx]=18093)
# h2c with prior knowledge: fulcrum takes it on its one port; HAProxy and nginx on their own.
declare -A H2C_PORT=([fulcrum]=18081 [haproxy]=18084 [nginx]=18085)

. benches/load/common.sh
need wrk wrk
need haproxy haproxy
need nginx nginx-light
need taskset util-linux
need openssl openssl
need h2load nghttp2-client

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum

WORK=$(mktemp -d /tmp/fulcrum-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# One ECDSA P-256 certificate for all three proxies' HTTPS listeners.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$WORK/site.key" -out "$WORK/site.pem" 2>/dev/null
cat "$WORK/site.pem" "$WORK/site.key" > "$WORK/site.combined.pem"

# The backend: nginx, one process, on CPU 1.
backend_nginx "$BACKEND_PORT" 1

# fulcrum
fulcrum_toml "$WORK/fulcrum.toml" "${PORT[fulcrum]}" "$BACKEND_PORT"
cat >> "$WORK/fulcrum.toml" <<CONF
[[listener]]
name = "bench-tls"
bind = "127.0.0.1:${TLS_PORT[fulcrum]}"
protocol = "http"
upstream = "backend"
[listener.tls]
certificates = [{ cert = "site.pem", key = "site.key" }]
alpn = ["http/1.1"]
CONF
RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID_fulcrum=$!

# HAProxy
haproxy_cfg "$WORK/haproxy.cfg" 4096 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[haproxy]}
  bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $WORK/site.combined.pem alpn http/1.1
  bind 127.0.0.1:${H2C_PORT[haproxy]} proto h2"
taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" &
PIDS+=($!); PID_haproxy=$!

# nginx as the proxy
nginx_conf "$WORK/proxy" "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server { listen 127.0.0.1:${PORT[nginx]}; listen 127.0.0.1:${TLS_PORT[nginx]} ssl;
    listen 127.0.0.1:${H2C_PORT[nginx]} http2;
    ssl_certificate $WORK/site.pem; ssl_certificate_key $WORK/site.key;
    keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
taskset -c 0 nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" &
PIDS+=($!); PID_nginx=$!

for url in "http://127.0.0.1:$BACKEND_PORT/" "${PORT[@]/#/http://127.0.0.1:}" "${TLS_PORT[@]/#/https://127.0.0.1:}"; do
  for _ in $(seq 100); do
    curl -kfs -o /dev/null "$url" && break
    sleep 0.05
  done
done

for proxy in fulcrum haproxy nginx; do
  pid_var="PID_$proxy"
  kill -0 "${!pid_var}" 2>/dev/null || { echo "$proxy did not start" >&2; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)

declare -A RPS P99 CPU EFF
# Modes: keepalive, close (a new connection per request), h2c (8 connections x 8
# streams, h2load), tls-keepalive, tls-close (a full TLS 1.3 handshake per request),
# big (1 MiB responses: req/cpu-s is MiB per CPU-second).
run() { # $1 proxy, $2 mode
  local pid_var="PID_$1" extra=() url="http://127.0.0.1:${PORT[$1]}/" conns=$CONNECTIONS
  case "$2" in *close) extra=(-H "Connection: close") ;; esac
  case "$2" in tls-*) url="https://127.0.0.1:${TLS_PORT[$1]}/" ;; esac
  case "$2" in big) url="http://127.0.0.1:${PORT[$1]}/big"; conns=8 ;; esac
  local before after out errors key="$1/$2"
  before=$(cpu_ticks "${!pid_var}")
  if [ "$2" = h2c ]; then
    out=$(taskset -c 1 h2load -c 8 -m 8 -D "${DURATION%s}" "http://127.0.0.1:${H2C_PORT[$1]}/")
    after=$(cpu_ticks "${!pid_var}")
    RPS[$key]=$(awk '/^finished in/ {print $4}' <<<"$out")
    P99[$key]=-
    errors=$(awk '/^requests:/ && !/ 0 failed, 0 errored/' <<<"$out")
  else
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"$DURATION" --latency "${extra[@]}" "$url")
    after=$(cpu_ticks "${!pid_var}")
    RPS[$key]=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    P99[$key]=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  fi
  CPU[$key]=$(awk -v t="$((after - before))" -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz}')
  EFF[$key]=$(awk -v r="${RPS[$key]}" -v c="${CPU[$key]}" -v d="${DURATION%s}" 'BEGIN { if (c > 0) printf "%.0f", r * d / c; else print "n/a" }')
  [ -n "$errors" ] && echo "  $key: $errors" >&2
  return 0
}

MODES=${MODES:-keepalive close h2c tls-keepalive tls-close big}
for mode in $MODES; do
  for proxy in fulcrum haproxy nginx; do
    echo "running $proxy ($mode) for $DURATION ..." >&2
    run "$proxy" "$mode"
  done
done

printf '\n%-8s %-13s %12s %10s %9s %16s\n' proxy mode "req/s" p99 "cpu s" "req/cpu-s"
for mode in $MODES; do
  for proxy in fulcrum haproxy nginx; do
    k="$proxy/$mode"
    printf '%-8s %-13s %12s %10s %9s %16s\n' "$proxy" "$mode" "${RPS[$k]}" "${P99[$k]}" "${CPU[$k]}" "${EFF[$k]}"
  done
done
echo
for mode in $MODES; do
  echo "$mode: fulcrum/haproxy req/cpu-s $(ratio "${EFF[fulcrum/$mode]}" "${EFF[haproxy/$mode]}"), req/s $(ratio "${RPS[fulcrum/$mode]}" "${RPS[haproxy/$mode]}");" \
       "fulcrum/nginx req/cpu-s $(ratio "${EFF[fulcrum/$mode]}" "${EFF[nginx/$mode]}"), req/s $(ratio "${RPS[fulcrum/$mode]}" "${RPS[nginx/$mode]}")"
done
