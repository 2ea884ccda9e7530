#!/usr/bin/env python3
"""WebSocket-style upgrades for the soak run, over raw sockets (the bytes after the
101 are echoed as they are; no framing is needed to test a tunnel).

  websocket.py server PORT              an echo backend: 101 to any request, then echo
  websocket.py client HOST PORT SECONDS one upgrade after another until SECONDS pass,
                                        each sending 20 messages and checking the echo;
                                        prints "websocket: ok=N failed=M"
Loopback only; bounded in time.
"""
import asyncio
import sys


async def serve(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"upgrade" not in head.lower():
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        while True:
            data = await reader.read(4096)
            if not data:
                return
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def server(port):
    srv = await asyncio.start_server(serve, "127.0.0.1", port)
    async with srv:
        await srv.serve_forever()


async def one(host, port):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nhost: soak\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 101"):
            return False
        for i in range(20):
            msg = f"message {i}\n".encode()
            writer.write(msg)
            await writer.drain()
            if await asyncio.wait_for(reader.readexactly(len(msg)), 10) != msg:
                return False
        return True
    finally:
        writer.close()


async def client(host, port, seconds):
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    ok = failed = 0
    while loop.time() < end:
        try:
            if await one(host, port):
                ok += 1
            else:
                failed += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            failed += 1
        await asyncio.sleep(0.05)
    print(f"websocket: ok={ok} failed={failed}")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server(int(sys.argv[2])))
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
