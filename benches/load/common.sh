# Shared by the load scripts: installing what is missing, and a one-process nginx
# configuration in a directory of its own.

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }

nginx_conf() { # $1 dir, $2 http block body
  mkdir -p "$1/logs"
  cat > "$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $1/nginx.pid;
error_log $1/logs/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  $2
}
CONF
}

# A work directory of its own, removed at exit after every process listed in PIDS is
# stopped. Sets WORK and PIDS.
start_workdir() { # $1 name
  WORK=$(mktemp -d "/tmp/fulcrum-$1.XXXXXX")
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# Waits (at most 5 s each) until every URL answers.
wait_http() {
  for url in "$@"; do
    for _ in $(seq 100); do
      curl -kfs -o /dev/null "$url" && break
      sleep 0.05
    done
  done
}

# $1 / $2 with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# The backend every comparison shares: one nginx process answering a short body on /
# and a 1 MiB file on /big, listening on 127.0.0.1:$1, pinned to CPU $2 when given,
# taking $3 connections when given (4,096 otherwise). Needs WORK and PIDS.
backend_nginx() { # $1 port, $2 cpu (optional), $3 connections (optional)
  mkdir -p "$WORK/www"
  head -c 1048576 /dev/urandom > "$WORK/www/big"
  nginx_conf "$WORK/backend" "server { listen 127.0.0.1:$1; keepalive_requests 1000000;
    location / { return 200 'hello from the backend\n'; }
    location /big { root $WORK/www; } }"
  if [ -n "${3:-}" ]; then
    sed -i "s/worker_connections 4096;/worker_connections $3;/; 1i worker_rlimit_nofile $3;" "$WORK/backend/nginx.conf"
  fi
  if [ -n "${2:-}" ]; then
    taskset -c "$2" nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
  else
    nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
  fi
  PIDS+=($!)
}

# A one-worker fulcrum configuration: listener "bench" on 127.0.0.1:$2 in front of the
# backend on port $3; $4: more listener keys, $5: more [global] keys.
fulcrum_toml() { # $1 file, $2 port, $3 backend port, $4 listener keys, $5 global keys
  cat > "$1" <<CONF
[global]
workers = 1
access_log = false
${5:-}
[[listener]]
name = "bench"
bind = "127.0.0.1:$2"
protocol = "http"
upstream = "backend"
${4:-}
[upstream.backend]
backends = [{ address = "127.0.0.1:$3" }]
CONF
}

# The fulcrum binary to measure in FULCRUM: as given, or a release build (with the
# FEATURES given).
fulcrum_binary() {
  if [ -z "${FULCRUM:-}" ]; then
    cargo build --release --quiet ${FEATURES:+--features "$FEATURES"}
    FULCRUM=$PWD/target/release/fulcrum
  fi
}

# A layer-4 listener added to fulcrum's file $1: named $2, on port $3, to upstream $4.
fulcrum_tcp_listener() { # $1 file, $2 name, $3 port, $4 upstream
  cat >> "$1" <<CONF
[[listener]]
name = "$2"
bind = "127.0.0.1:$3"
protocol = "tcp"
upstream = "$4"
CONF
}

# A one-thread HAProxy configuration in front of the backend on port $3, with the
# frontend's bind lines $4 and extra defaults lines $5 (later lines win).
haproxy_cfg() { # $1 file, $2 maxconn, $3 backend port, $4 bind lines, $5 defaults lines
  cat > "$1" <<CONF
global
  nbthread 1
  maxconn $2
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
${5:-}
  option http-keep-alive
  http-reuse always
frontend bench
$4
  default_backend backend
backend backend
  server b1 127.0.0.1:$3
CONF
}

# fulcrum for case $1 on CPU 0, on port PORT[$1] in front of BACKEND_PORT, its pid in
# PID[$1]: $2 more listener keys, $3 more top-level sections.
start_fulcrum() { # $1 case, $2 listener keys, $3 more sections
  fulcrum_toml "$WORK/$1.toml" "${PORT[$1]}" "$BACKEND_PORT" "$2"
  printf '%s\n' "$3" >> "$WORK/$1.toml"
  RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/$1.toml" 2>"$WORK/$1.log" &
  PIDS+=($!); PID[$1]=$!
}

# HTTP/2 on both sides, on CPU 0: fulcrum (case "fulcrum", an h2c upstream) and HAProxy
# (case "haproxy", `proto h2` on its bind and its server), in front of BACKEND_PORT.
start_h2_proxies() {
  start_fulcrum fulcrum "" 'protocol = "h2c"'
  haproxy_cfg "$WORK/haproxy.cfg" 4096 "$BACKEND_PORT" "  bind 127.0.0.1:${PORT[haproxy]} proto h2"
  sed -i "s/^  server b1 .*/& proto h2/" "$WORK/haproxy.cfg"
  taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" &
  PIDS+=($!); PID[haproxy]=$!
}

# Keep-alive requests per proxy CPU-second. Each case is a proxy running as PID[case]
# on 127.0.0.1:PORT[case], loaded by wrk on CPU 1 with CONNECTIONS for DURATION.
# WRK_SCHEME (default http) and WRK_HEADER (e.g. "Connection: close") change the load.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wrk_per_cpu() { # $1 case: prints "req/cpu-s req/s cpu-s"
  local before after out rps cpu
  before=$(cpu_ticks "${PID[$1]}")
  local header=()
  if [ -n "${WRK_HEADER:-}" ]; then header=(-H "$WRK_HEADER"); fi
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${header[@]}" "${WRK_SCHEME:-http}://127.0.0.1:${PORT[$1]}/")
  after=$(cpu_ticks "${PID[$1]}")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then grep "Non-2xx\|Socket errors" <<<"$out" >&2; fi
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
  awk -v r="$rps" -v c="$cpu" -v d="${DURATION%s}" 'BEGIN { printf "%.0f %s %s\n", (c > 0 ? r * d / c : 0), r, c }'
}
# Runs the cases REPEATS times in turn, fills EFF, RPS and CPU (associative arrays the
# caller declares) with each case's median run, and prints them.
measure_cases() { # $@ cases
  local c r all
  declare -A all
  for r in $(seq "$REPEATS"); do
    for c in "$@"; do
      echo "running $c for $DURATION, $r of $REPEATS ..." >&2
      all[$c]+="$(wrk_per_cpu "$c");"
    done
  done
  printf '\n%-15s %12s %9s %12s\n' case "req/s" "cpu s" "req/cpu-s"
  for c in "$@"; do
    read -r EFF[$c] RPS[$c] CPU[$c] <<<"$(tr ';' '\n' <<<"${all[$c]}" | sed '/^ *$/d' |
      sort -g -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')"
    printf '%-15s %12s %9s %12s\n' "$c" "${RPS[$c]}" "${CPU[$c]}" "${EFF[$c]}"
  done
  echo
}

# A CA ($WORK/ca.pem) and an ECDSA P-256 leaf it signs for bench.test ($WORK/site.pem,
# $WORK/site.key), for clients that verify the chain. Needs WORK.
ca_and_leaf() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=bench.test -keyout "$WORK/site.key" -out "$WORK/site.csr" 2>/dev/null
  printf 'subjectAltName=DNS:bench.test\nbasicConstraints=CA:FALSE\n' > "$WORK/ext"
  openssl x509 -req -in "$WORK/site.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/ext" -out "$WORK/site.pem" 2>/dev/null
}
