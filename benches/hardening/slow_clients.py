#!/usr/bin/env python3
"""Slow clients for the slowloris benchmark: N connections to HOST:PORT, a third of
each kind, held for DURATION seconds (a connection the proxy closes is opened again at
once, so the pressure lasts), then closed:

- head: a request head trickled one header line every second, never finished;
- body: a complete head with `Content-Length: 1000000`, then one body byte a second;
- read: a request for PATH (something large), whose response is read one byte a second (a small
  receive buffer keeps the kernel from reading ahead for it).

Prints how many connections were opened, how many the proxy closed before the end,
and how many could not be opened. Loopback only; bounded in count and time.
"""
import asyncio
import socket
import sys


async def hold(kind, host, port, path, end, stats):
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        await hold_one(kind, host, port, path, end, stats)
        await asyncio.sleep(0.1)


async def hold_one(kind, host, port, path, end, stats):
    try:
        if kind == "read":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=1)
        else:
            reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["refused"] += 1
        return
    stats["opened"] += 1
    loop = asyncio.get_running_loop()
    try:
        if kind == "head":
            writer.write(b"GET / HTTP/1.1\r\nhost: slow\r\n")
            i = 0
            while loop.time() < end:
                await asyncio.sleep(1)
                writer.write(f"x-slow-{i}: 1\r\n".encode())
                await writer.drain()
                i += 1
        elif kind == "body":
            writer.write(b"POST / HTTP/1.1\r\nhost: slow\r\ncontent-length: 1000000\r\n\r\n")
            while loop.time() < end:
                await asyncio.sleep(1)
                writer.write(b"x")
                await writer.drain()
        else:
            writer.write(f"GET {path} HTTP/1.1\r\nhost: slow\r\n\r\n".encode())
            await writer.drain()
            while loop.time() < end:
                data = await asyncio.wait_for(reader.read(1), timeout=max(0.1, end - loop.time()))
                if not data:
                    raise ConnectionResetError
                await asyncio.sleep(1)
    except (OSError, ConnectionError, asyncio.IncompleteReadError):
        stats["closed_early"] += 1
    except asyncio.TimeoutError:
        pass
    finally:
        writer.close()


async def main():
    host, port, n, duration, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    stats = {"opened": 0, "closed_early": 0, "refused": 0}
    kinds = ["head", "body", "read"]
    tasks = []
    end = asyncio.get_running_loop().time() + duration
    for i in range(n):
        tasks.append(asyncio.create_task(hold(kinds[i % 3], host, port, path, end, stats)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    print(f"slow clients: opened={stats['opened']} closed_early={stats['closed_early']} refused={stats['refused']}")


if __name__ == "__main__":
    asyncio.run(main())
