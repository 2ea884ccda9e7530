#!/usr/bin/env bash
# Failover takeover time and failed requests, in network namespaces (needs root).
#
#   bash benches/failover/run.sh            # RUNS=5 runs of each case
#   RUNS=10 CASES="kill (fulcrum|keepalived) (50ms|0.05)" bash benches/failover/run.sh
#   SOAK=600 bash benches/failover/run.sh   # only the soak, for 600 s
#
# Topology: two balancers (lb1 10.99.0.11, lb2 10.99.0.12) on a bridge with a backend
# (10.99.0.20, fulcrum serving a static file) and a client (10.99.0.30); heartbeats
# (or VRRP adverts) on a network of their own, another bridge (10.98.0.1, 10.98.0.2).
# The VIP is 10.99.0.100/24 on eth0; both balancers' proxies listen on it.
#
# The client asks http://VIP:8080/ every 10 ms, one request at a time, each with a
# 200 ms budget. Cases:
#   kill:      SIGSTOP then kill -9 of everything this script runs on the active
#              node (fulcrum; or keepalived and the proxy), as a crash would;
#              takeover = from the kill to the end of the first successful request
#              after the first failed one; failed = requests started after the kill
#              that failed.
#   down:      both of the active node's links leave their bridges at once, at a
#              random point of the period, as a power loss or a dead switch port
#              looks from the network: nothing is closed, only silence tells;
#              measured as kill.
#   partition: heartbeats are dropped both ways (both nodes become active), then pass;
#              reported: failed requests after it came up, and the time from then to
#              the end of the first success after the last failure (0 if none failed).
# Each case runs with fulcrum's own failover at interval 200ms and 100ms (default
# dead_after: keepalived's backup window less interval / 10; and 100ms with keepalived's window), and, when keepalived is installed or installable,
# with keepalived (VRRPv3 unicast, advert_int 1 and 0.1) moving the VIP in front of
# the same fulcrum proxy.
#
# SOAK=SECONDS runs the soak instead: the pair at 20 ms heartbeats for that long,
# with every core busy (a busy loop per core, and wrk through the VIP when it is
# installed); it reports the takeovers that should not have happened (any role change)
# and the late heartbeat counters of both nodes.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-5}
if [ "$(id -u)" != 0 ]; then
  echo "needs root (network namespaces, veth, a bridge)" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "needs python3 (the client)" >&2; exit 1; }
if ! command -v keepalived >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq keepalived >/dev/null 2>&1 || true
fi

cargo build --release --quiet
BIN=$PWD/target/release/fulcrum
P=fb$$
WORK=$(mktemp -d)
VIP=10.99.0.100
PIDS=()

ns() { echo "$P$1"; }

stop_pids() {
  local p
  for p in "${PIDS[@]}" $(cat "$WORK"/lb?/vrrp.pid 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

BACKEND_PID=
cleanup() {
  stop_pids
  [ -z "$BACKEND_PID" ] || kill "$BACKEND_PID" 2>/dev/null || true
  for n in br lb1 lb2 be cl; do ip netns del "$(ns $n)" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

topology() {
  for n in br lb1 lb2 be cl; do
    ip netns add "$(ns $n)"
    ip -n "$(ns $n)" link set lo up
  done
  local br; br=$(ns br)
  ip -n "$br" link add br0 type bridge
  ip -n "$br" link set br0 up
  local n addr
  for pair in lb1:10.99.0.11 lb2:10.99.0.12 be:10.99.0.20 cl:10.99.0.30; do
    n=${pair%%:*}; addr=${pair#*:}
    ip -n "$br" link add "v$n" type veth peer name eth0 netns "$(ns $n)"
    ip -n "$br" link set "v$n" master br0
    ip -n "$br" link set "v$n" up
    ip -n "$(ns $n)" addr add "$addr/24" dev eth0
    ip -n "$(ns $n)" link set eth0 up
  done
  # The heartbeat network: a second bridge, so that a partition (a port taken off it)
  # leaves every interface up, as a failed switch or a firewall would.
  ip -n "$br" link add br1 type bridge
  ip -n "$br" link set br1 up
  for pair in lb1:10.98.0.1 lb2:10.98.0.2; do
    n=${pair%%:*}; addr=${pair#*:}
    ip -n "$br" link add "h$n" type veth peer name hb0 netns "$(ns $n)"
    ip -n "$br" link set "h$n" master br1
    ip -n "$br" link set "h$n" up
    ip -n "$(ns $n)" addr add "$addr/24" dev hb0
    ip -n "$(ns $n)" link set hb0 up
  done
}

# The backend: fulcrum serving one static file.
start_backend() {
  mkdir -p "$WORK/be"
  echo "ok" > "$WORK/be/index.html"
  cat > "$WORK/be/fulcrum.toml" <<EOF
[global]
watch_config = false
access_log = false
[[listener]]
name = "web"
bind = "10.99.0.20:8080"
protocol = "http"
  [[listener.route]]
  static = "."
EOF
  ip netns exec "$(ns be)" "$BIN" run -c "$WORK/be/fulcrum.toml" 2>"$WORK/be/log" &
  BACKEND_PID=$!
}

# proxy_config NODE [FAILOVER_TOML]
proxy_config() {
  cat <<EOF
[global]
watch_config = false
access_log = false
shutdown_timeout = "1s"
[admin]
bind = "127.0.0.1:9090"
[[listener]]
name = "vip"
bind = "$VIP:8080"
protocol = "http"
upstream = "app"
[upstream.app]
connect_timeout = "1s"
backends = [{ address = "10.99.0.20:8080" }]
${2:-}
EOF
}

# start_fulcrum NODE PRIORITY INTERVAL[/DEAD_AFTER]: fulcrum with its own failover.
start_fulcrum() {
  local n=$1 prio=$2 interval=${3%/*} dead_after= me peer
  [ "$interval" = "$3" ] || dead_after="dead_after = \"${3#*/}\""
  if [ "$n" = lb1 ]; then me=10.98.0.1; peer=10.98.0.2; else me=10.98.0.2; peer=10.98.0.1; fi
  mkdir -p "$WORK/$n"
  echo "benchmark pair key, at least 32 bytes long" > "$WORK/$n/failover.key"
  chmod 600 "$WORK/$n/failover.key"
  proxy_config "$n" "[failover]
node = \"$n\"
priority = $prio
bind = \"$me:8411\"
peers = [\"$peer:8411\"]
interval = \"$interval\"
$dead_after
secret_file = \"failover.key\"
vips = [{ address = \"$VIP/24\", interface = \"eth0\" }]" > "$WORK/$n/fulcrum.toml"
  ip netns exec "$(ns $n)" "$BIN" run -c "$WORK/$n/fulcrum.toml" 2>>"$WORK/$n/log" &
  PIDS+=($!)
  eval "PIDS_$n=\"$!\""
}

# start_keepalived NODE PRIORITY ADVERT: the fulcrum proxy without failover, and
# keepalived moving the VIP.
start_keepalived() {
  local n=$1 prio=$2 advert=$3 me peer
  if [ "$n" = lb1 ]; then me=10.98.0.1; peer=10.98.0.2; else me=10.98.0.2; peer=10.98.0.1; fi
  mkdir -p "$WORK/$n"
  proxy_config "$n" > "$WORK/$n/fulcrum.toml"
  ip netns exec "$(ns $n)" "$BIN" run -c "$WORK/$n/fulcrum.toml" 2>>"$WORK/$n/log" &
  local proxy=$!
  cat > "$WORK/$n/keepalived.conf" <<EOF
global_defs {
  router_id $n
  vrrp_version 3
}
vrrp_instance VI {
  state BACKUP
  interface hb0
  virtual_router_id 51
  priority $prio
  advert_int $advert
  unicast_src_ip $me
  unicast_peer {
    $peer
  }
  virtual_ipaddress {
    $VIP/24 dev eth0
  }
}
EOF
  ip netns exec "$(ns $n)" keepalived -n -l -D -P -f "$WORK/$n/keepalived.conf" \
    -p "$WORK/$n/keepalived.pid" -r "$WORK/$n/vrrp.pid" 2>>"$WORK/$n/kalog" >/dev/null &
  local ka=$!
  PIDS+=($proxy $ka)
  eval "PIDS_$n=\"$proxy $ka\""
}

# A crash of NODE: every process this script runs there stops at once (SIGSTOP), then
# dies (SIGKILL). Stopping first matters for keepalived: its VRRP child, told of its
# parent's death, would otherwise resign gracefully (a priority 0 advert) before its
# own SIGKILL lands, or the parent would start a new child.
crash_node() {
  local n=$1 v
  eval "v=\${PIDS_$n}"
  # shellcheck disable=SC2046,SC2086
  kill -STOP $v $(cat "$WORK/$n/vrrp.pid" 2>/dev/null) 2>/dev/null || true
  # shellcheck disable=SC2046,SC2086
  kill -9 $(cat "$WORK/$n/vrrp.pid" 2>/dev/null) $v 2>/dev/null || true
}

vip_on() { ip -n "$(ns "$1")" -o addr show dev eth0 | grep -q " $VIP/"; }

wait_until() { # wait_until SECONDS COMMAND...
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.05
  done
}

CLIENT=$PWD/benches/probe.py

ANALYZE=$WORK/analyze.py
cat > "$ANALYZE" <<'EOF'
import sys
log, t0, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [tuple(map(int, l.split())) for l in open(log) if l.count(" ") == 2]
after = [r for r in rows if r[0] >= t0]
failed = sum(1 for r in after if r[2] == 0)
if mode == "kill":
    # The first success after the first failure: a request the old node answered
    # just before it stopped is not a takeover. With no failure at all (a takeover
    # between two requests), the first success started after the crash: the old node
    # could not answer it.
    first_fail = next((i for i, r in enumerate(after) if r[2] == 0), 0)
    first = next((r for r in after[first_fail:] if r[2] == 1), None)
    took = (first[1] - t0) / 1e9 if first else float("nan")
else:
    last_fail = max((i for i, r in enumerate(after) if r[2] == 0), default=None)
    if last_fail is None:
        took = 0.0
    else:
        first = next((r for r in after[last_fail:] if r[2] == 1), None)
        took = (first[1] - t0) / 1e9 if first else float("nan")
print(f"{took:.3f} {failed}")
EOF

# run_case NAME KIND(fulcrum|keepalived) PARAM MODE(kill|partition)
run_case() {
  local name=$1 kind=$2 param=$3 mode=$4 run
  # CASES: an extended regular expression the case names must match to run.
  if [ -n "${CASES:-}" ] && ! grep -Eq -- "$CASES" <<<"$name"; then return 0; fi
  for run in $(seq 1 "$RUNS"); do
    for n in lb1 lb2; do ip -n "$(ns $n)" addr del "$VIP/24" dev eth0 2>/dev/null || true; done
    rm -f "$WORK"/lb?/vrrp.pid
    ip -n "$(ns br)" link set hlb1 master br1
    ip -n "$(ns br)" link set vlb1 master br0
    "start_$kind" lb1 150 "$param"
    "start_$kind" lb2 100 "$param"
    if ! wait_until 20 vip_on lb1; then echo "$name run $run: lb1 never took the VIP" >&2; stop_pids; continue; fi
    sleep 2 # let the standby settle
    local out=$WORK/client-$run.log stopf=$WORK/stop
    rm -f "$stopf"
    ip netns exec "$(ns cl)" python3 "$CLIENT" "$VIP" "$out" "$stopf" &
    local client=$!
    sleep 1
    local t0
    if [ "$mode" = kill ]; then
      # At a random point of the heartbeat (or advert) period: otherwise the runs
      # would all crash at the same phase, a bias for or against either.
      sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", r / 32768 }')"
      crash_node lb1
      # After the signals: kill(2) has delivered them when it returns.
      t0=$(date +%s%N)
      wait_until 20 vip_on lb2 || echo "$name run $run: lb2 never took the VIP" >&2
      sleep 1.5
    elif [ "$mode" = down ]; then
      sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", r / 32768 }')"
      ip -n "$(ns br)" link set hlb1 nomaster
      ip -n "$(ns br)" link set vlb1 nomaster
      t0=$(date +%s%N)
      wait_until 20 vip_on lb2 || echo "$name run $run: lb2 never took the VIP" >&2
      sleep 1.5
    else
      # lb1's heartbeat port leaves the bridge: nothing passes, every interface of
      # the balancers stays up, so neither sees a link fault.
      ip -n "$(ns br)" link set hlb1 nomaster
      wait_until 20 vip_on lb2 || echo "$name run $run: lb2 never took the VIP in the partition" >&2
      sleep 1
      t0=$(date +%s%N)
      ip -n "$(ns br)" link set hlb1 master br1
      sleep 3
    fi
    touch "$stopf"; wait "$client" || true
    read -r took failed < <(python3 "$ANALYZE" "$out" "$t0" "${mode/down/kill}")
    echo "$name run $run: ${took}s, $failed failed"
    echo "$name|$took|$failed" >> "$WORK/results"
    stop_pids
  done
}

summary() {
  python3 - "$WORK/results" <<'EOF'
import sys, statistics as st
by = {}
for l in open(sys.argv[1]):
    name, took, failed = l.strip().split("|")
    by.setdefault(name, []).append((float(took), int(failed)))
print()
print(f"{'case':40} {'runs':>4} {'time mean':>10} {'min':>7} {'max':>7} {'failed mean':>12} {'max':>5}")
means = {}
for name, rs in by.items():
    t = [r[0] for r in rs]; f = [r[1] for r in rs]
    means[name] = (st.mean(t), st.mean(f))
    print(f"{name:40} {len(rs):>4} {st.mean(t):>9.3f}s {min(t):>6.3f}s {max(t):>6.3f}s {st.mean(f):>12.1f} {max(f):>5}")
pairs = [("kill fulcrum 100ms", "kill keepalived 0.1"),
         ("kill fulcrum 50ms", "kill keepalived 0.05"),
         ("kill fulcrum 100ms dead_after 360ms", "kill keepalived 0.1"),
         ("kill fulcrum 200ms", "kill keepalived 1"),
         ("down fulcrum 100ms", "down keepalived 0.1"),
         ("down fulcrum 50ms", "down keepalived 0.05"),
         ("partition fulcrum 100ms", "partition keepalived 0.1")]
for a, b in pairs:
    if a in means and b in means:
        ratio = lambda x, y: f"x{x / y:.2f}" if y > 0 else f"{x:.3g} vs 0"
        print(f"{a} / {b}: time {ratio(means[a][0], means[b][0])}, failed {ratio(means[a][1], means[b][1])}")
EOF
}

# metrics NODE: the failover series of NODE's /metrics.
metrics() {
  ip netns exec "$(ns "$1")" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9090
printf "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" >&3
cat <&3' | grep '^fulcrum_failover' || true
}

soak() {
  local secs=$1 burners=() i load=
  start_fulcrum lb1 150 20ms
  start_fulcrum lb2 100 20ms
  wait_until 20 vip_on lb1 || { echo "soak: lb1 never took the VIP" >&2; exit 1; }
  sleep 2
  for i in $(seq "$(nproc)"); do
    bash -c 'while :; do :; done' &
    burners+=($!)
  done
  if command -v wrk >/dev/null 2>&1; then
    ip netns exec "$(ns cl)" wrk -t1 -c16 -d"${secs}s" "http://$VIP:8080/" > "$WORK/wrk.log" 2>&1 &
    load=$!
  fi
  echo "soak: ${secs}s at 20 ms heartbeats, ${#burners[@]} busy loops${load:+ and wrk through the VIP}"
  sleep "$secs"
  kill "${burners[@]}" 2>/dev/null || true
  [ -z "$load" ] || wait "$load" || true
  [ -z "$load" ] || grep -E "Requests/sec|requests in" "$WORK/wrk.log" || true
  for n in lb1 lb2; do
    echo "--- $n"
    metrics "$n" | grep -E 'transitions_total|late_total|failover_active'
  done
  local changes
  changes=$(grep -c "taking the addresses\|becoming passive" "$WORK/lb1/log" "$WORK/lb2/log" || true)
  echo "role changes after the start (lb1 log, lb2 log; 1 and 0 means none):"
  echo "$changes"
}

topology
start_backend
wait_until 20 ip netns exec "$(ns be)" bash -c "exec 3<>/dev/tcp/10.99.0.20/8080" || { echo "backend did not start" >&2; exit 1; }

if [ -n "${SOAK:-}" ]; then
  soak "$SOAK"
  exit 0
fi

run_case "kill fulcrum 200ms" fulcrum 200ms kill
run_case "kill fulcrum 100ms" fulcrum 100ms kill
# keepalived's backup at priority 100 declares the master down after
# 3 x advert_int + (256 - 100) / 256 x advert_int = 361 ms: the same window.
run_case "kill fulcrum 100ms dead_after 360ms" fulcrum 100ms/360ms kill
run_case "kill fulcrum 50ms" fulcrum 50ms kill
run_case "kill fulcrum 20ms" fulcrum 20ms kill
run_case "down fulcrum 100ms" fulcrum 100ms down
run_case "down fulcrum 50ms" fulcrum 50ms down
run_case "down fulcrum 20ms" fulcrum 20ms down
run_case "partition fulcrum 200ms" fulcrum 200ms partition
run_case "partition fulcrum 100ms" fulcrum 100ms partition
if command -v keepalived >/dev/null 2>&1; then
  run_case "kill keepalived 1" keepalived 1 kill
  run_case "kill keepalived 0.1" keepalived 0.1 kill
  # VRRPv3 counts in centiseconds: 0.05 is the shortest that keeps 3 adverts apart.
  run_case "kill keepalived 0.05" keepalived 0.05 kill
  run_case "down keepalived 0.1" keepalived 0.1 down
  run_case "down keepalived 0.05" keepalived 0.05 down
  run_case "partition keepalived 0.1" keepalived 0.1 partition
else
  echo "keepalived not available: no comparison" >&2
fi
summary
