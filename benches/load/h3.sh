#!/usr/bin/env bash
# HTTP/3 against HTTP/2 over TLS through the same fulcrum listener, per proxy
# CPU-second: a Rust client (benches/h3_load.rs, the same request loop over either
# protocol; 8 connections x 16 streams) asks for a short body and for 1 MiB from one
# nginx origin. fulcrum has one worker pinned to CPU 0; the client and nginx share
# CPU 1.
#
#   bash benches/load/h3.sh
#   DURATION=30s REPEATS=3 bash benches/load/h3.sh
#   FEATURES=aws-lc-rs bash benches/load/h3.sh   # fulcrum built with cargo features
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-1}
BACKEND_PORT=18880
declare -A PORT=([fulcrum]=18881)

. benches/load/common.sh
need nginx nginx-light
need openssl openssl
need taskset util-linux

cargo build --release --quiet ${FEATURES:+--features "$FEATURES"}
FULCRUM=$PWD/target/release/fulcrum
LOAD=$(cargo bench --bench h3_load --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*h3_load[^"]*"' | cut -d'"' -f4 | tail -1)
start_workdir h3

ca_and_leaf

backend_nginx "$BACKEND_PORT" 1
declare -A PID
start_fulcrum fulcrum "[listener.tls]
certificates = [{ cert = \"$WORK/site.pem\", key = \"$WORK/site.key\" }]
http3 = true" ""
ADDR=127.0.0.1:${PORT[fulcrum]}
sleep 1
for p in h2 h3; do
  out=$(taskset -c 1 "$LOAD" "$p" "$ADDR" bench.test "$WORK/ca.pem" 1 1 1 /)
  grep -q "failed 0 " <<<"$out" || { echo "$p: $out" >&2; exit 1; }
done

per_cpu() { # $1 protocol, $2 path: prints "req/cpu-s MiB/cpu-s req/s cpu-s"
  local before after out rate mib cpu
  before=$(cpu_ticks "${PID[fulcrum]}")
  out=$(taskset -c 1 "$LOAD" "$1" "$ADDR" bench.test "$WORK/ca.pem" 8 16 "${DURATION%s}" "$2")
  after=$(cpu_ticks "${PID[fulcrum]}")
  grep -q "failed 0 " <<<"$out" || echo "$1 $2: $out" >&2
  rate=$(awk '{print $10}' <<<"$out")
  mib=$(awk '{print $12}' <<<"$out")
  cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
  awk -v r="$rate" -v m="$mib" -v c="$cpu" -v d="${DURATION%s}" \
    'BEGIN { printf "%.0f %.1f %s %s\n", (c > 0 ? r * d / c : 0), (c > 0 ? m * d / c : 0), r, c }'
}

declare -A ALL
declare -A PATH_OF=([small]=/ [big]=/big)
CASES=(h2-small h3-small h2-big h3-big)
for r in $(seq "$REPEATS"); do
  for c in "${CASES[@]}"; do
    echo "running $c for $DURATION, $r of $REPEATS ..." >&2
    ALL[$c]+="$(per_cpu "${c%-*}" "${PATH_OF[${c#*-}]}");"
  done
done
declare -A EFF MIB
printf '\n%-10s %10s %9s %12s %12s\n' case "req/s" "cpu s" "req/cpu-s" "MiB/cpu-s"
for c in "${CASES[@]}"; do
  read -r EFF[$c] MIB[$c] rate cpu <<<"$(tr ';' '\n' <<<"${ALL[$c]}" | sed '/^ *$/d' |
    sort -g -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')"
  printf '%-10s %10s %9s %12s %12s\n' "$c" "$rate" "$cpu" "${EFF[$c]}" "${MIB[$c]}"
done
echo
echo "small responses, h3 / h2 req/cpu-s: $(ratio "${EFF[h3-small]}" "${EFF[h2-small]}")"
echo "1 MiB responses, h3 / h2 MiB/cpu-s: $(ratio "${MIB[h3-big]}" "${MIB[h2-big]}")"
