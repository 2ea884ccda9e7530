#!/usr/bin/env bash
# TLS handshakes per proxy CPU-second with a certificate fulcrum manages through
# [acme] against one listed in `certificates`: nothing of ACME may be on the
# handshake path. Both certificates are ECDSA P-256. The managed one is the
# self-signed certificate served until a CA's arrives (the directory here is a port
# nothing listens on): handshakes read a managed certificate the same way whichever
# it is. wrk sends "Connection: close", so every request is a full TLS 1.3
# handshake. Each fulcrum has one worker pinned to CPU 0; wrk and the nginx backend
# share CPU 1.
#
#   bash benches/load/acme.sh
#   DURATION=10s REPEATS=3 bash benches/load/acme.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
REPEATS=${REPEATS:-1}
BACKEND_PORT=18480
DIRECTORY_PORT=18489
PLAIN_PORT=18488
declare -A PORT=([static]=18481 [acme-http01]=18482 [acme-tlsalpn01]=18483)

. benches/load/common.sh
need wrk wrk
need nginx nginx-light
need taskset util-linux
need curl curl
need openssl openssl

cargo build --release --quiet
FULCRUM=$PWD/target/release/fulcrum
start_workdir acme

backend_nginx "$BACKEND_PORT" 1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=bench.fulcrum.test" -addext "subjectAltName=DNS:bench.fulcrum.test" \
  -keyout "$WORK/site.key" -out "$WORK/site.pem" 2>/dev/null

declare -A PID
start_tls_fulcrum() { # $1 case, $2 [listener.tls] keys, $3 more sections
  fulcrum_toml "$WORK/$1.toml" "${PORT[$1]}" "$BACKEND_PORT" "[listener.tls]
$2
alpn = [\"http/1.1\"]"
  printf '%s\n' "$3" >> "$WORK/$1.toml"
  RUST_LOG=warn taskset -c 0 "$FULCRUM" run -c "$WORK/$1.toml" 2>"$WORK/$1.log" &
  PIDS+=($!); PID[$1]=$!
}
start_tls_fulcrum static 'certificates = [{ cert = "site.pem", key = "site.key" }]' ""
# HTTP-01: the managed certificate behind the same acceptor as a static one.
start_tls_fulcrum acme-http01 'acme = ["bench.fulcrum.test"]' "[acme]
directory = \"https://127.0.0.1:$DIRECTORY_PORT/dir\"
storage = \"$WORK/acme-http01\"
[[listener]]
name = \"plain\"
bind = \"127.0.0.1:$PLAIN_PORT\"
protocol = \"http\"
upstream = \"backend\""
# TLS-ALPN-01: the ClientHello is read first to tell a CA's check from a client.
start_tls_fulcrum acme-tlsalpn01 'acme = ["bench.fulcrum.test"]' "[acme]
directory = \"https://127.0.0.1:$DIRECTORY_PORT/dir\"
storage = \"$WORK/acme-tlsalpn01\"
challenge = \"tls-alpn-01\""

for c in "${!PORT[@]}"; do wait_http "https://127.0.0.1:${PORT[$c]}/"; done
for c in "${!PORT[@]}"; do
  code=$(curl -ks -o /dev/null -w '%{http_code}' "https://127.0.0.1:${PORT[$c]}/")
  [ "$code" = 200 ] || { echo "$c answered $code" >&2; exit 1; }
done

declare -A EFF RPS CPU
WRK_SCHEME=https WRK_HEADER="Connection: close" measure_cases static acme-http01 acme-tlsalpn01
echo "handshakes per CPU-second, acme-managed (http-01) / static: $(ratio "${EFF[acme-http01]}" "${EFF[static]}")"
echo "handshakes per CPU-second, acme-managed (tls-alpn-01) / static: $(ratio "${EFF[acme-tlsalpn01]}" "${EFF[static]}")"
