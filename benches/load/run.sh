#!/usr/bin/env bash
# HTTP, HTTPS and TCP load comparison: fulcrum, HAProxy and nginx, each with one
# worker, in front of the same fast local backend (nginx answering a short body or a
# 1 MiB file), measured with wrk (h2load for h2c). HTTPS uses one ECDSA P-256
# certificate for all three; with `Connection: close` every request is a new TLS
# connection, so req/s there is handshakes per second. The TCP modes go through each
# proxy's layer-4 listener (nginx's stream module): new connections per second to the
# same backend, and iperf3 bulk throughput against an iperf3 server, also measured
# without a proxy.
#
#   bash benches/load/run.sh            # every mode, 10 s per run
#   DURATION=30s bash benches/load/run.sh
#   MODES="keepalive h2c" bash benches/load/run.sh
#   REPEATS=3 bash benches/load/run.sh   # three interleaved runs, medians
#   FEATURES=aws-lc-rs MODES="tls-close tls-keepalive" bash benches/load/run.sh
#                                         # fulcrum built with cargo features
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
# Layer 4: to the HTTP backend (connection rate), and to iperf3 (bulk).
declare -A TCP_PORT=([fulcrum]=18101 [haproxy]=18102 [nginx]=18103)
declare -A BULK_PORT=([fulcrum]=18111 [haproxy]=18112 [nginx]=18113)
IPERF_PORT=18120

. benches/load/common.sh
need wrk wrk
need haproxy haproxy
need nginx nginx-light
need taskset util-linux
need openssl openssl
need h2load nghttp2-client
need iperf3 iperf3
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || { apt-get update -qq && apt-get install -y -qq libnginx-mod-stream >/dev/null; }

# FULCRUM=/path/to/binary measures that build instead (to compare two versions).
fulcrum_binary

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

# The backends: nginx, one process, and an iperf3 server, both on CPU 1.
backend_nginx "$BACKEND_PORT" 1
taskset -c 1 iperf3 -s -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)

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

[upstream.iperf]
backends = [{ address = "127.0.0.1:$IPERF_PORT" }]
CONF
fulcrum_tcp_listener "$WORK/fulcrum.toml" bench-tcp "${TCP_PORT[fulcrum]}" backend
fulcrum_tcp_listener "$WORK/fulcrum.toml" bench-bulk "${BULK_PORT[fulcrum]}" iperf
RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID_fulcrum=$!

# HAProxy
haproxy_cfg "$WORK/haproxy.cfg" 4096 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[haproxy]}
  bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $WORK/site.combined.pem alpn http/1.1
  bind 127.0.0.1:${H2C_PORT[haproxy]} proto h2"
cat >> "$WORK/haproxy.cfg" <<CONF
listen tcp
  mode tcp
  bind 127.0.0.1:${TCP_PORT[haproxy]}
  server b1 127.0.0.1:$BACKEND_PORT
listen bulk
  mode tcp
  bind 127.0.0.1:${BULK_PORT[haproxy]}
  server i1 127.0.0.1:$IPERF_PORT
CONF
taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" &
PIDS+=($!); PID_haproxy=$!

# nginx as the proxy
nginx_conf "$WORK/proxy" "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server { listen 127.0.0.1:${PORT[nginx]}; listen 127.0.0.1:${TLS_PORT[nginx]} ssl;
    listen 127.0.0.1:${H2C_PORT[nginx]} http2;
    ssl_certificate $WORK/site.pem; ssl_certificate_key $WORK/site.key;
    keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
sed -i '1i load_module /usr/lib/nginx/modules/ngx_stream_module.so;' "$WORK/proxy/nginx.conf"
cat >> "$WORK/proxy/nginx.conf" <<CONF
stream {
  server { listen 127.0.0.1:${TCP_PORT[nginx]}; proxy_pass 127.0.0.1:$BACKEND_PORT; }
  server { listen 127.0.0.1:${BULK_PORT[nginx]}; proxy_pass 127.0.0.1:$IPERF_PORT; }
}
CONF
taskset -c 0 nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" &
PIDS+=($!); PID_nginx=$!

wait_http "http://127.0.0.1:$BACKEND_PORT/" "${PORT[@]/#/http://127.0.0.1:}" \
  "${TLS_PORT[@]/#/https://127.0.0.1:}" "${TCP_PORT[@]/#/http://127.0.0.1:}"

for proxy in fulcrum haproxy nginx; do
  pid_var="PID_$proxy"
  kill -0 "${!pid_var}" 2>/dev/null || { echo "$proxy did not start" >&2; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of all the process's threads, voluntary and not.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
TICKS=$(getconf CLK_TCK)

declare -A RPS P99 CPU EFF CS
# iperf3 for DURATION to port $1: Gbit/s received.
iperf() {
  taskset -c 1 iperf3 -c 127.0.0.1 -p "$1" -t "${DURATION%s}" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

# Modes: keepalive, close (a new connection per request), h2c (8 connections x 8
# streams, h2load), tls-keepalive, tls-close (a full TLS 1.3 handshake per request),
# big (1 MiB responses: req/cpu-s is MiB per CPU-second), tcp-close (a new connection
# per request through the layer-4 listener), tcp-bulk (iperf3, one stream: the req/s
# column is Gbit/s, req/cpu-s is Gbit per CPU-second).
run() { # $1 proxy, $2 mode
  local pid_var="PID_$1" extra=() url="http://127.0.0.1:${PORT[$1]}/" conns=$CONNECTIONS
  case "$2" in *close) extra=(-H "Connection: close") ;; esac
  case "$2" in tls-*) url="https://127.0.0.1:${TLS_PORT[$1]}/" ;; esac
  case "$2" in tcp-*) url="http://127.0.0.1:${TCP_PORT[$1]}/" ;; esac
  case "$2" in big) url="http://127.0.0.1:${PORT[$1]}/big"; conns=8 ;; esac
  local before after out errors="" key="$1/$2" cs_before
  cs_before=$(switches "${!pid_var}")
  before=$(cpu_ticks "${!pid_var}")
  if [ "$2" = tcp-bulk ]; then
    RPS[$key]=$(iperf "${BULK_PORT[$1]}")
    after=$(cpu_ticks "${!pid_var}")
    P99[$key]=-
  elif [ "$2" = h2c ]; then
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
  local digits=0
  [ "$2" = tcp-bulk ] && digits=2
  EFF[$key]=$(awk -v r="${RPS[$key]}" -v c="${CPU[$key]}" -v d="${DURATION%s}" -v p="$digits" 'BEGIN { if (c > 0) printf "%.*f", p, r * d / c; else print "n/a" }')
  # Context switches per request (not for tcp-bulk, whose unit is a Gbit).
  CS[$key]=-
  if [ "$2" != tcp-bulk ]; then
    CS[$key]=$(awk -v n="$(( $(switches "${!pid_var}") - cs_before ))" -v r="${RPS[$key]}" -v d="${DURATION%s}" \
      'BEGIN { if (r > 0) printf "%.3f", n / (r * d); else print "n/a" }')
  fi
  [ -n "$errors" ] && echo "  $key: $errors" >&2
  return 0
}

MODES=${MODES:-keepalive close h2c tls-keepalive tls-close big tcp-close tcp-bulk}
# Every (mode, proxy) run REPEATS times, interleaved; the table shows the run with the
# median requests per CPU-second.
REPEATS=${REPEATS:-1}
declare -A ALL
DIRECTS=""
for r in $(seq "$REPEATS"); do
  for mode in $MODES; do
    for proxy in fulcrum haproxy nginx; do
      echo "running $proxy ($mode) for $DURATION, $r of $REPEATS ..." >&2
      run "$proxy" "$mode"
      k="$proxy/$mode"
      ALL[$k]+="${EFF[$k]} ${RPS[$k]} ${P99[$k]} ${CPU[$k]} ${CS[$k]};"
    done
    if [ "$mode" = tcp-bulk ]; then
      echo "running iperf3 without a proxy for $DURATION ..." >&2
      DIRECTS+="$(iperf "$IPERF_PORT") "
    fi
  done
done
# The median of whitespace- or ;-separated rows, by their first field.
median() { tr ';' '\n' | sed '/^ *$/d' | sort -g -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
for k in "${!ALL[@]}"; do
  read -r "EFF[$k]" "RPS[$k]" "P99[$k]" "CPU[$k]" "CS[$k]" <<<"$(median <<<"${ALL[$k]}")"
done
[ -n "$DIRECTS" ] && DIRECT=$(tr ' ' '\n' <<<"$DIRECTS" | median)

printf '\n%-8s %-13s %12s %10s %9s %16s %9s\n' proxy mode "req/s" p99 "cpu s" "req/cpu-s" "cs/req"
for mode in $MODES; do
  for proxy in fulcrum haproxy nginx; do
    k="$proxy/$mode"
    printf '%-8s %-13s %12s %10s %9s %16s %9s\n' "$proxy" "$mode" "${RPS[$k]}" "${P99[$k]}" "${CPU[$k]}" "${EFF[$k]}" "${CS[$k]}"
  done
done
echo
for mode in $MODES; do
  echo "$mode: fulcrum/haproxy req/cpu-s $(ratio "${EFF[fulcrum/$mode]}" "${EFF[haproxy/$mode]}"), req/s $(ratio "${RPS[fulcrum/$mode]}" "${RPS[haproxy/$mode]}");" \
       "fulcrum/nginx req/cpu-s $(ratio "${EFF[fulcrum/$mode]}" "${EFF[nginx/$mode]}"), req/s $(ratio "${RPS[fulcrum/$mode]}" "${RPS[nginx/$mode]}")"
done
if [ -n "${DIRECT:-}" ]; then
  echo "tcp-bulk without a proxy: $DIRECT Gbit/s; fulcrum/direct $(ratio "${RPS[fulcrum/tcp-bulk]}" "$DIRECT"), haproxy/direct $(ratio "${RPS[haproxy/tcp-bulk]}" "$DIRECT"), nginx/direct $(ratio "${RPS[nginx/tcp-bulk]}" "$DIRECT")"
fi
