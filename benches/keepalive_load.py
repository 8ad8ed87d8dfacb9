#!/usr/bin/env python3
"""A fixed number of keep-alive GETs from 8 connections, for callgrind runs
(docs/benchmarks.md): the count is exact, so instructions divide by it.

    python3 benches/keepalive_load.py PORT COUNT PATH

Prints the answers by status. Loopback only.
"""
import asyncio, sys
async def worker(port, n, path, out):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        w.write(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        ln = 0
        for l in head.split(b"\r\n"):
            if l.lower().startswith(b"content-length:"):
                ln = int(l.split(b":")[1])
        if ln: await r.readexactly(ln)
        out[head.split(b" ")[1]] = out.get(head.split(b" ")[1], 0) + 1
        if b"connection: close" in head.lower():
            w.close(); r, w = await asyncio.open_connection("127.0.0.1", port)
    w.close()
async def main():
    port, total, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    out = {}
    await asyncio.gather(*[worker(port, total // 8, path, out) for _ in range(8)])
    print(out)
asyncio.run(main())
