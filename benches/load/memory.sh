#!/usr/bin/env bash
# Memory per client connection: fulcrum, HAProxy and nginx, one worker each, in front
# of the same nginx backend. For each proxy, COUNT connections are opened and held
# idle, then each sends one keep-alive request and is held again; the proxy's resident
# memory (VmRSS) before and after gives KiB per idle and per keep-alive connection
# (see connections.py).
#
#   bash benches/load/memory.sh             # 8,000 connections
#   COUNT=2000 bash benches/load/memory.sh
#
# Each proxy needs two descriptors per connection (client and backend side): COUNT is
# bounded by the open-files limit (`ulimit -Hn`), 8,000 fits a limit of 20,000.
# Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

COUNT=${COUNT:-8000}
BACKEND_PORT=18280
declare -A PORT=([fulcrum]=18281 [haproxy]=18282 [nginx]=18283)

. benches/load/common.sh
need haproxy haproxy
need nginx nginx-light
need python3 python3

cargo build --release --quiet ${FEATURES:+--features "$FEATURES"}
FULCRUM=${FULCRUM:-$PWD/target/release/fulcrum}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LIMIT=$((COUNT + 500))

start_workdir memory

# Every proxy may open one backend connection per client at first.
backend_nginx "$BACKEND_PORT" "" $((LIMIT * 2))

fulcrum_toml "$WORK/fulcrum.toml" "${PORT[fulcrum]}" "$BACKEND_PORT" 'idle_timeout = "300s"
header_timeout = "300s"' "max_connections = $LIMIT"
RUST_LOG=warn "$FULCRUM" run -c "$WORK/fulcrum.toml" 2>"$WORK/fulcrum.log" &
PIDS+=($!); PID_fulcrum=$!

haproxy_cfg "$WORK/haproxy.cfg" "$LIMIT" "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[haproxy]}" "  maxconn $LIMIT
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  timeout http-request 300s"
haproxy -db -f "$WORK/haproxy.cfg" &
PIDS+=($!); PID_haproxy=$!

mkdir -p "$WORK/proxy/logs"
cat > "$WORK/proxy/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $((LIMIT * 2));
daemon off;
master_process off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/logs/error.log crit;
events { worker_connections $((LIMIT * 2)); }
http {
  access_log off;
  client_body_temp_path $WORK/proxy/body;
  proxy_temp_path $WORK/proxy/proxy;
  fastcgi_temp_path $WORK/proxy/fastcgi;
  uwsgi_temp_path $WORK/proxy/uwsgi;
  scgi_temp_path $WORK/proxy/scgi;
  keepalive_timeout 300s;
  client_header_timeout 300s;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server { listen 127.0.0.1:${PORT[nginx]}; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" &
PIDS+=($!); PID_nginx=$!

wait_http "http://127.0.0.1:$BACKEND_PORT/" "${PORT[@]/#/http://127.0.0.1:}"

declare -A IDLE KEEP
for proxy in fulcrum haproxy nginx; do
  pid_var="PID_$proxy"
  echo "holding $COUNT connections to $proxy ..." >&2
  out=$(python3 benches/load/connections.py "${!pid_var}" 127.0.0.1 "${PORT[$proxy]}" "$COUNT" ${ONE_AT_A_TIME:+one-at-a-time}) || {
    echo "$proxy: measurement failed" >&2; tail -5 "$WORK/fulcrum.log" >&2; exit 1; }
  IDLE[$proxy]=$(awk '$1 == "idle" {print $2}' <<<"$out")
  KEEP[$proxy]=$(awk '$1 == "keepalive" {print $2}' <<<"$out")
done

printf '\n%-8s %22s %27s\n' proxy "KiB per idle conn" "KiB per keep-alive conn"
for proxy in fulcrum haproxy nginx; do
  printf '%-8s %22s %27s\n' "$proxy" "${IDLE[$proxy]}" "${KEEP[$proxy]}"
done
echo
echo "fulcrum/haproxy: idle $(ratio "${IDLE[fulcrum]}" "${IDLE[haproxy]}"), keep-alive $(ratio "${KEEP[fulcrum]}" "${KEEP[haproxy]}")"
