#!/usr/bin/env bash
# Binary upgrades under load: fulcrum (SIGUSR2, through `fulcrum upgrade`) against
# nginx (USR2, then WINCH and QUIT to the old master, its documented procedure), each
# a proxy in front of the same nginx backend. For each, two clients (benches/probe.py:
# one on a keep-alive connection, one opening a connection per request, a request
# every 10 ms with a 200 ms budget) run while the proxy is upgraded UPGRADES times
# (default 5), a second apart. Reported per proxy: requests, failed requests, and the
# longest and the 99th percentile request time, over all the runs.
#
#   bash benches/upgrade.sh
#   UPGRADES=10 bash benches/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."

UPGRADES=${UPGRADES:-5}
BACKEND_PORT=18680
FULCRUM_PORT=18681
NGINX_PORT=18682

. benches/load/common.sh
need nginx nginx-light
need python3 python3
need curl curl

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
NGINX=$(command -v nginx)
start_workdir upgrade

backend_nginx "$BACKEND_PORT"

# fulcrum, with a pid file for `fulcrum upgrade`.
fulcrum_toml "$WORK/fulcrum.toml" "$FULCRUM_PORT" "$BACKEND_PORT" "" 'shutdown_timeout = "10s"'
"$FULCRUM" run -c "$WORK/fulcrum.toml" --pid-file "$WORK/fulcrum.pid" 2>"$WORK/fulcrum.log" &
PIDS+=($!)

# nginx as a proxy, a master and one worker, daemonised as its upgrade expects.
mkdir -p "$WORK/proxy/logs"
cat > "$WORK/proxy/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/logs/error.log notice;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/proxy/body;
  proxy_temp_path $WORK/proxy/proxy;
  fastcgi_temp_path $WORK/proxy/fastcgi;
  uwsgi_temp_path $WORK/proxy/uwsgi;
  scgi_temp_path $WORK/proxy/scgi;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
"$NGINX" -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf"
wait_http "http://127.0.0.1:$FULCRUM_PORT/" "http://127.0.0.1:$NGINX_PORT/"

upgrade_fulcrum() {
  "$FULCRUM" upgrade --pid-file "$WORK/fulcrum.pid" >/dev/null
}

upgrade_nginx() {
  local old new
  old=$(cat "$WORK/proxy/nginx.pid")
  kill -USR2 "$old"
  for _ in $(seq 200); do
    [ -f "$WORK/proxy/nginx.pid.oldbin" ] && [ -s "$WORK/proxy/nginx.pid" ] && break
    sleep 0.01
  done
  new=$(cat "$WORK/proxy/nginx.pid")
  [ "$new" != "$old" ] || { echo "nginx did not start a new master" >&2; return 1; }
  kill -WINCH "$old"
  kill -QUIT "$old"
  for _ in $(seq 500); do kill -0 "$old" 2>/dev/null || break; sleep 0.01; done
}

run() { # $1 proxy, $2 port
  local stopf=$WORK/stop-$1 i
  rm -f "$stopf"
  python3 benches/probe.py 127.0.0.1 "$WORK/$1-new.log" "$stopf" "$2" new &
  local a=$!
  python3 benches/probe.py 127.0.0.1 "$WORK/$1-keepalive.log" "$stopf" "$2" keepalive &
  local b=$!
  sleep 1
  for i in $(seq "$UPGRADES"); do
    "upgrade_$1"
    sleep 1
  done
  touch "$stopf"
  wait "$a" "$b"
}

run fulcrum "$FULCRUM_PORT"
run nginx "$NGINX_PORT"

python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
print(f"\n{'proxy':8} {'client':10} {'requests':>9} {'failed':>7} {'max ms':>8} {'p99 ms':>8}")
for proxy in ("fulcrum", "nginx"):
    for client in ("new", "keepalive"):
        rows = [tuple(map(int, l.split())) for l in open(f"{work}/{proxy}-{client}.log") if l.count(" ") == 2]
        times = sorted((end - start) / 1e6 for start, end, _ in rows)
        failed = sum(1 for r in rows if r[2] == 0)
        p99 = times[int(len(times) * 0.99) - 1] if times else 0
        print(f"{proxy:8} {client:10} {len(rows):>9} {failed:>7} {times[-1]:>8.1f} {p99:>8.1f}")
PY
kill "$(cat "$WORK/proxy/nginx.pid")" 2>/dev/null || true
kill "$(cat "$WORK/fulcrum.pid")" 2>/dev/null || true
