# A client for the benchmarks that disturb a proxy: asks http://ADDRESS:PORT/ every
# 10 ms, one request at a time, each with a 200 ms budget, until the file STOP exists;
# one line per request to OUT: start and end (ns since the epoch) and 1 for a 200,
# 0 otherwise. MODE "new" (the default) opens a connection per request; "keepalive"
# keeps one open and opens another when the server closes it (a request on a
# connection the server closed is a failure, as it would be for any client that does
# not retry).
#
#   python3 benches/probe.py ADDRESS OUT STOP [PORT] [new|keepalive]
import os, socket, sys, time
vip, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
port = int(sys.argv[4]) if len(sys.argv) > 4 else 8080
keepalive = len(sys.argv) > 5 and sys.argv[5] == "keepalive"
BUDGET, EVERY = 0.2, 0.01
req = b"GET / HTTP/1.1\r\nHost: vip\r\n" + (b"" if keepalive else b"Connection: close\r\n") + b"\r\n"


def exchange(s, deadline):
    """Sends the request on s and reads one response; (ok, keep the connection)."""
    s.sendall(req)
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, False
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            return False, False
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            continue
        lines = head.split(b"\r\n")
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        if len(body) >= length:
            return lines[0].startswith(b"HTTP/1.1 200"), keepalive and not close


with open(out, "w", buffering=1) as log:
    nxt = time.monotonic()
    conn = None
    while not os.path.exists(stop):
        start_ns = time.time_ns()
        deadline = time.monotonic() + BUDGET
        ok = False
        try:
            if conn is None:
                conn = socket.create_connection((vip, port), timeout=BUDGET)
            ok, keep = exchange(conn, deadline)
        except OSError:
            ok, keep = False, False
        if not keep and conn is not None:
            conn.close()
            conn = None
        log.write(f"{start_ns} {time.time_ns()} {1 if ok else 0}\n")
        nxt = max(nxt + EVERY, time.monotonic())
        time.sleep(max(0.0, nxt - time.monotonic()))
