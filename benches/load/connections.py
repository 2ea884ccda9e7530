"""Memory per client connection of a proxy: opens COUNT connections to it and holds
them idle, then sends one keep-alive request on each and holds them again, reading the
proxy's resident memory (VmRSS of PID) before and after each step.

    python3 benches/load/connections.py PID HOST PORT COUNT [one-at-a-time]

The requests are sent all at once (every connection's request is in flight together,
the proxy's worst case), or with `one-at-a-time` each after the previous response.

Prints two lines: `idle KiB-per-connection` and `keepalive KiB-per-connection`.
Every socket is closed at the end; nothing runs longer than a few minutes.
"""

import selectors
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def settle(pid, seconds=2.0):
    time.sleep(seconds)
    return rss_kib(pid)


def read_response(s):
    """Reads one response with a Content-Length body from the blocking socket `s`."""
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("a connection closed before its response")
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep and len(body) >= content_length(head):
            return


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def main():
    pid, host, port, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    one_at_a_time = len(sys.argv) > 5 and sys.argv[5] == "one-at-a-time"
    base = settle(pid)
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, port), timeout=10)
            socks.append(s)
        idle = settle(pid)
        request = f"GET / HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
        if one_at_a_time:
            for s in socks:
                s.sendall(request)
                read_response(s)
        sel = selectors.DefaultSelector()
        for s in socks:
            if one_at_a_time:
                break
            s.setblocking(False)
            s.sendall(request)
            sel.register(s, selectors.EVENT_READ, bytearray())
        pending = 0 if one_at_a_time else len(socks)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                buf = key.data
                chunk = key.fileobj.recv(65536)
                if not chunk:
                    raise SystemExit("a connection closed before its response")
                buf.extend(chunk)
                head, sep, body = bytes(buf).partition(b"\r\n\r\n")
                if sep:
                    if len(body) >= content_length(head):
                        sel.unregister(key.fileobj)
                        pending -= 1
        if pending:
            raise SystemExit(f"{pending} responses missing")
        keepalive = settle(pid)
    finally:
        for s in socks:
            s.close()
    print(f"idle {(idle - base) / count:.2f}")
    print(f"keepalive {(keepalive - base) / count:.2f}")


if __name__ == "__main__":
    main()
