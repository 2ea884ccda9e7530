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
