#!/usr/bin/env bash
# How fast a balancer's path leaves the router, and what clients lose meanwhile: two
# fulcrum instances announcing one service address over BGP to a BIRD 2 router with
# ECMP, in network namespaces (needs root; installs bird2 when it can).
#
#   bash benches/bgp/run.sh                 # RUNS=10 runs of each case
#   RUNS=3 CASES="health|sigterm" bash benches/bgp/run.sh
#
# Topology: b1 (10.0.1.2) and b2 (10.0.2.2), each with the service address
# 198.51.100.10 on its loopback and a backend (fulcrum serving a static file on
# 127.0.0.1:8081) beside it, peer with the router r (BIRD, AS 65000, hold time 3 s,
# ECMP into its kernel table, flows hashed over ports); the client cl (10.9.0.2) sits
# behind r and asks http://198.51.100.10:8080/ every 10 ms with benches/probe.py.
# fulcrum checks its backend every 100 ms (fall 1, timeout 100 ms).
#
# Cases, each on b1 while the client runs:
#   health:  kill -9 of b1's backend. Reported: from fulcrum taking the backend out
#            (its log line: the active check's verdict, or a passive ejection after
#            failed requests, whichever came first) to b1's path leaving the router's
#            kernel table, the same from the kill, and the requests that failed.
#   sigterm: SIGTERM to b1's fulcrum (withdraw, 1 s grace, drain): from the signal to
#            the path leaving, and failed requests.
#   kill:    kill -9 of b1's fulcrum: its kernel closes the BGP connection, and BIRD
#            drops the path as soon as it reads the close.
#   hang:    SIGSTOP of b1's fulcrum (a hung or unreachable balancer: its kernel still
#            holds the connection, nothing is sent): BIRD drops the path when its hold
#            timer runs out, as it would without BFD for a machine that disappears.
# The router's table is read every 2 ms, so the path times are good to a few ms.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-10}
if [ "$(id -u)" != 0 ]; then
  echo "needs root (network namespaces, veth)" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "needs python3 (the client)" >&2; exit 1; }
if ! command -v bird >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bird2 >/dev/null 2>&1 || true
  (systemctl stop bird 2>/dev/null || service bird stop 2>/dev/null) || true
fi
command -v bird >/dev/null || { echo "needs BIRD 2 (Debian package bird2)" >&2; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/fulcrum
CLIENT=$PWD/benches/probe.py
P=bb$$
WORK=$(mktemp -d)
SERVICE=198.51.100.10
PIDS=()
BIRD_PID=

ns() { echo "$P$1"; }

cleanup() {
  for p in "${PIDS[@]}" $BIRD_PID; do kill -9 "$p" 2>/dev/null || true; done
  for n in r cl b1 b2; do ip netns del "$(ns $n)" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

topology() {
  for n in r cl b1 b2; do
    ip netns add "$(ns $n)"
    ip -n "$(ns $n)" link set lo up
  done
  local i
  for i in 1 2; do
    ip -n "$(ns r)" link add "r$i" type veth peer name eth0 netns "$(ns b$i)"
    ip -n "$(ns r)" addr add "10.0.$i.1/24" dev "r$i"
    ip -n "$(ns r)" link set "r$i" up
    ip -n "$(ns b$i)" addr add "10.0.$i.2/24" dev eth0
    ip -n "$(ns b$i)" link set eth0 up
    ip -n "$(ns b$i)" addr add "$SERVICE/32" dev lo
    ip -n "$(ns b$i)" route add default via "10.0.$i.1"
  done
  ip -n "$(ns r)" link add rc type veth peer name eth0 netns "$(ns cl)"
  ip -n "$(ns r)" addr add 10.9.0.1/24 dev rc
  ip -n "$(ns r)" link set rc up
  ip -n "$(ns cl)" addr add 10.9.0.2/24 dev eth0
  ip -n "$(ns cl)" link set eth0 up
  ip -n "$(ns cl)" route add default via 10.9.0.1
  ip netns exec "$(ns r)" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1
  mkdir -p "$WORK/r"
  cat > "$WORK/r/bird.conf" <<EOF
log "$WORK/r/log" all;
router id 10.9.0.1;
protocol device { scan time 1; }
protocol kernel { ipv4 { export all; import none; }; merge paths on; }
template bgp balancer {
  local as 65000;
  passive on;
  hold time 3;
  # BIRD waits 60 s by default after a failed session before it takes a new one: the
  # restarted balancer of the next run would wait that long.
  error wait time 1, 2;
  ipv4 { import all; export none; };
}
protocol bgp b1 from balancer { neighbor 10.0.1.2 as 65011; }
protocol bgp b2 from balancer { neighbor 10.0.2.2 as 65011; }
EOF
  ip netns exec "$(ns r)" bird -f -c "$WORK/r/bird.conf" -s "$WORK/r/bird.ctl" &
  BIRD_PID=$!
}

start_backend() { # start_backend I
  local i=$1 dir=$WORK/b$1
  mkdir -p "$dir/site"
  echo "b$i" > "$dir/site/index.html"
  cat > "$dir/backend.toml" <<EOF
[global]
watch_config = false
access_log = false
[[listener]]
name = "origin"
bind = "127.0.0.1:8081"
protocol = "http"
  [[listener.route]]
  static = "site"
EOF
  ip netns exec "$(ns b$i)" "$BIN" run -c "$dir/backend.toml" 2>>"$dir/backend.log" &
  PIDS+=($!)
  eval "BACKEND_$i=$!"
}

start_balancer() { # start_balancer I
  local i=$1 dir=$WORK/b$1
  cat > "$dir/fulcrum.toml" <<EOF
[global]
watch_config = false
access_log = false
shutdown_timeout = "2s"
[[listener]]
name = "service"
bind = "$SERVICE:8080"
protocol = "http"
upstream = "web"
[upstream.web]
connect_timeout = "1s"
backends = [{ address = "127.0.0.1:8081" }]
  [upstream.web.health]
  check = "http"
  path = "/"
  interval = "100ms"
  timeout = "100ms"
  rise = 1
  fall = 1
[bgp]
router_id = "10.0.$i.2"
local_as = 65011
hold_time = "3s"
withdraw_grace = "1s"
  [[bgp.peer]]
  address = "10.0.$i.1"
  remote_as = 65000
  [[bgp.announce]]
  prefix = "$SERVICE/32"
  upstreams = ["web"]
EOF
  ip netns exec "$(ns b$i)" "$BIN" run -c "$dir/fulcrum.toml" 2>>"$dir/log" &
  PIDS+=($!)
  eval "BALANCER_$i=$!"
}

paths() { ip -n "$(ns r)" route show "$SERVICE/32" | grep -o 'via [0-9.]*' | sort | tr '\n' ' '; }
both_paths() { [ "$(paths)" = "via 10.0.1.2 via 10.0.2.2 " ]; }

wait_until() { # wait_until SECONDS COMMAND...
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.05
  done
}

# Reads the router's table every 2 ms until STOP exists: "ns_since_epoch 1|0" lines,
# 1 while b1's path is in it.
WATCH=$WORK/watch.py
cat > "$WATCH" <<'EOF'
import os, subprocess, sys, time
ns, prefix, out, stop = sys.argv[1:5]
with open(out, "w", buffering=1) as log:
    while not os.path.exists(stop):
        r = subprocess.run(["ip", "-n", ns, "route", "show", prefix], capture_output=True, text=True)
        log.write(f"{time.time_ns()} {1 if 'via 10.0.1.2' in r.stdout else 0}\n")
        time.sleep(0.002)
EOF

ANALYZE=$WORK/analyze.py
cat > "$ANALYZE" <<'EOF'
import datetime, re, sys
client, watch, t0, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = [tuple(map(int, l.split())) for l in open(client) if l.count(" ") == 2]
failed = sum(1 for r in rows if r[0] >= t0 - 200_000_000 and r[2] == 0)
seen = [tuple(map(int, l.split())) for l in open(watch) if l.count(" ") == 1]
gone = next((t for t, has in seen if t >= t0 and has == 0), None)
# The verdict: fulcrum's first "backend down" (active check) or "backend ejected"
# (passive: failed requests in a row) log line after t0, if any.
down = None
if log != "-":
    for line in open(log):
        if "backend down" in line or "backend ejected" in line:
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
            if m:
                stamp = datetime.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=datetime.timezone.utc)
                ns = int(stamp.timestamp() * 1e9)
                if ns >= t0 - 1_000_000:
                    down = ns
                    break
from_t0 = (gone - t0) / 1e9 if gone else float("nan")
from_down = (gone - down) / 1e9 if gone and down else float("nan")
print(f"{from_t0:.3f} {from_down:.3f} {failed}")
EOF

# run_case NAME: one run of each RUNS, b1 disturbed as NAME says.
run_case() {
  local name=$1 run
  if [ -n "${CASES:-}" ] && ! grep -Eq -- "$CASES" <<<"$name"; then return 0; fi
  for run in $(seq 1 "$RUNS"); do
    [ -n "${BALANCER_1:-}" ] && kill -0 "$BALANCER_1" 2>/dev/null || start_balancer 1
    [ -n "${BACKEND_1:-}" ] && kill -0 "$BACKEND_1" 2>/dev/null || start_backend 1
    if ! wait_until 30 both_paths; then echo "$name run $run: the paths never came back" >&2; continue; fi
    sleep 0.5
    local out=$WORK/client-$name-$run.log seen=$WORK/watch-$name-$run.log stopf=$WORK/stop
    rm -f "$stopf"
    : > "$WORK/b1/case.log"
    ip netns exec "$(ns cl)" python3 "$CLIENT" "$SERVICE" "$out" "$stopf" &
    local client=$!
    python3 "$WATCH" "$(ns r)" "$SERVICE/32" "$seen" "$stopf" &
    local watcher=$!
    sleep 1
    # At a random point, so that the runs do not all hit the same phase of the
    # health checks and keepalives.
    sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", r / 32768 * 0.2 }')"
    local t0 log=-
    local before
    before=$(wc -l < "$WORK/b1/log")
    case $name in
      health) kill -9 "$BACKEND_1"; t0=$(date +%s%N) ;;
      sigterm) kill -TERM "$BALANCER_1"; t0=$(date +%s%N) ;;
      kill) kill -9 "$BALANCER_1"; t0=$(date +%s%N) ;;
      hang) kill -STOP "$BALANCER_1"; t0=$(date +%s%N) ;;
    esac
    wait_until 20 bash -c "! ip -n $(ns r) route show $SERVICE/32 | grep -q 'via 10.0.1.2'" \
      || echo "$name run $run: b1's path never left" >&2
    sleep 1.5
    touch "$stopf"; wait "$client" "$watcher" || true
    if [ "$name" = health ]; then
      tail -n +"$((before + 1))" "$WORK/b1/log" > "$WORK/b1/case.log"
      log=$WORK/b1/case.log
    fi
    case $name in
      health) wait "$BACKEND_1" 2>/dev/null || true; BACKEND_1= ;;
      hang) kill -9 "$BALANCER_1" 2>/dev/null || true; wait "$BALANCER_1" 2>/dev/null || true; BALANCER_1= ;;
      *) wait "$BALANCER_1" 2>/dev/null || true; BALANCER_1= ;;
    esac
    read -r from_t0 from_down failed < <(python3 "$ANALYZE" "$out" "$seen" "$t0" "$log")
    echo "$name run $run: path gone ${from_t0}s after the event (${from_down}s after the verdict), $failed failed"
    echo "$name|$from_t0|$from_down|$failed" >> "$WORK/results"
  done
}

summary() {
  python3 - "$WORK/results" <<'EOF'
import math, sys, statistics as st
by = {}
for l in open(sys.argv[1]):
    name, t, d, f = l.strip().split("|")
    by.setdefault(name, []).append((float(t), float(d), int(f)))
print()
print(f"{'case':10} {'runs':>4} {'path gone after':>16} {'min':>7} {'max':>7} {'after verdict':>14} {'failed mean':>12} {'max':>4}")
means = {}
for name, rs in by.items():
    t = [r[0] for r in rs if not math.isnan(r[0])]
    d = [r[1] for r in rs if not math.isnan(r[1])]
    f = [r[2] for r in rs]
    if not t:
        continue
    means[name] = (st.mean(t), st.mean(f))
    dv = f"{st.mean(d):>13.3f}s" if d else f"{'-':>14}"
    print(f"{name:10} {len(rs):>4} {st.mean(t):>15.3f}s {min(t):>6.3f}s {max(t):>6.3f}s {dv} {st.mean(f):>12.1f} {max(f):>4}")
for a in ("health", "sigterm", "kill"):
    if a in means and "hang" in means:
        print(f"{a} / hang (hold timer): time x{means[a][0] / means['hang'][0]:.3f}, failed {means[a][1]:.1f} vs {means['hang'][1]:.1f}")
EOF
}

topology
for i in 1 2; do start_backend "$i"; start_balancer "$i"; done
wait_until 30 both_paths || { echo "the paths never came up: $(paths)" >&2; cat "$WORK/r/log" >&2; exit 1; }
run_case health
run_case sigterm
run_case kill
run_case hang
summary
