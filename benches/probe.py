# A client for the namespace benchmarks: asks http://ADDRESS:8080/ every 10 ms, one
# request at a time on a new connection, each with a 200 ms budget, until the file STOP
# exists; one line per request to OUT: start and end (ns since the epoch) and 1 for a
# 200, 0 otherwise.
#
#   python3 benches/probe.py ADDRESS OUT STOP
import os, socket, sys, time
vip, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
BUDGET, EVERY = 0.2, 0.01
req = b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"
with open(out, "w", buffering=1) as log:
    nxt = time.monotonic()
    while not os.path.exists(stop):
        start_ns = time.time_ns()
        deadline = time.monotonic() + BUDGET
        ok = False
        try:
            s = socket.create_connection((vip, 8080), timeout=BUDGET)
            try:
                s.sendall(req)
                data = b""
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    s.settimeout(left)
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                ok = data.startswith(b"HTTP/1.1 200")
            finally:
                s.close()
        except OSError:
            ok = False
        log.write(f"{start_ns} {time.time_ns()} {1 if ok else 0}\n")
        nxt = max(nxt + EVERY, time.monotonic())
        time.sleep(max(0.0, nxt - time.monotonic()))
