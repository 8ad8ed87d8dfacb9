#!/usr/bin/env python3
"""Slowloris and connection-flood figures for docs/reliability.md.

    python3 benches/hostile.py [--binary target/release/graceway] [--drip 3000] [--flood 12000]

Starts graceway (release build unless --binary says otherwise) in front of a
tiny loopback upstream, then on loopback only:

1. slowloris: --drip connections each send a request header one byte every
   5 s; reports how long until graceway cut them off (408), its RSS during
   the attack, and the latency of a normal client meanwhile;
2. flood: --flood idle connections (more than graceway's default cap,
   which is derived from the open-file limit: (limit - 256) / 2); reports how many were refused at the
   cap, RSS, and how fast /healthz and a kept-alive client answer during it.

Prints a markdown table. Every loop is bounded in count and time; all
traffic stays on 127.0.0.1.
"""

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import json
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def upstream(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            body = b'{"ok":true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (Exception, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def status(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:
        return json.load(r)


async def timed_get(port, path, host="127.0.0.1"):
    t = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    w.write(f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    return time.monotonic() - t, data.split(b" ", 2)[1].decode() if data else "none"


async def drip(port, results, seconds):
    """One slowloris connection: a byte every 5 s until cut off."""
    t = time.monotonic()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        results.append(("refused", 0.0))
        return
    payload = b"GET /v1/x HTTP/1.1\r\nHost: h\r\nX-Drip: " + b"a" * 100
    i = 0
    while time.monotonic() - t < seconds:
        try:
            w.write(payload[i:i + 1])
            await w.drain()
            data = await asyncio.wait_for(r.read(64), 5)
            if not data or data.startswith(b"HTTP/1.1 408"):
                results.append(("cut", time.monotonic() - t))
                w.close()
                return
        except asyncio.TimeoutError:
            i += 1
            continue
        except OSError:
            results.append(("cut", time.monotonic() - t))
            return
    results.append(("alive", time.monotonic() - t))
    w.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/graceway")
    ap.add_argument("--drip", type=int, default=3000)
    ap.add_argument("--flood", type=int, default=12000)
    ap.add_argument("--seconds", type=int, default=40)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not os.path.exists(a.binary):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "graceway"], check=True)

    up_port = free_port()
    server = await asyncio.start_server(upstream, "127.0.0.1", up_port)
    listen, admin = free_port(), free_port()
    d = tempfile.mkdtemp(prefix="graceway-hostile-")
    with open(f"{d}/token", "w") as f:
        f.write("tok-bench\n")
    cfg = f"""
listen: "127.0.0.1:{listen}"
admin: {{ listen: "127.0.0.1:{admin}" }}
pid_file: "{d}/graceway.pid"
server: {{ threads: 1, graceful_shutdown_timeout: 1s }}
upstreams:
  - name: api
    url: "http://127.0.0.1:{up_port}"
    credentials:
      tokens:
        - {{ file: "{d}/token" }}
log: {{ level: warn }}
"""
    with open(f"{d}/graceway.yaml", "w") as f:
        f.write(cfg)
    log = open(f"{d}/graceway.log", "w")
    g = subprocess.Popen([a.binary, "run", "-c", f"{d}/graceway.yaml"], stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)
                socket.create_connection(("127.0.0.1", listen), 1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        idle_rss = rss_mib(g.pid)
        rows = []

        # 1. slowloris
        results = []
        tasks = [asyncio.create_task(drip(listen, results, a.seconds)) for _ in range(a.drip)]
        await asyncio.sleep(2)
        peak = rss_mib(g.pid)
        lat = []
        for _ in range(10):
            took, code = await timed_get(listen, "/v1/ok")
            lat.append((took, code))
            peak = max(peak, rss_mib(g.pid))
            await asyncio.sleep(0.5)
        await asyncio.gather(*tasks)
        cut = sorted(t for k, t in results if k == "cut")
        alive = sum(1 for k, _ in results if k == "alive")
        rows.append(("slowloris", f"{a.drip} connections, 1 byte / 5 s",
                     f"{len(cut)} cut with 408 (median {cut[len(cut)//2]:.1f} s, max {cut[-1]:.1f} s), {alive} still open after {a.seconds} s" if cut else f"none cut, {alive} open",
                     f"{peak:.0f} MiB (idle {idle_rss:.0f})",
                     f"{sum(1 for _, c in lat if c == '200')}/10 OK, max {max(t for t, _ in lat)*1000:.0f} ms"))

        # 2. flood
        keeper_r, keeper_w = await asyncio.open_connection("127.0.0.1", listen)
        socks = []
        t0 = time.monotonic()
        for _ in range(a.flood):
            try:
                s = socket.socket()
            except OSError:
                break
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", listen))
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                break
            socks.append(s)
        await asyncio.sleep(2)
        peak = rss_mib(g.pid)
        t = time.monotonic()
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5)
        health_ms = (time.monotonic() - t) * 1000
        t = time.monotonic()
        keeper_w.write(b"GET /v1/k HTTP/1.1\r\nHost: h\r\n\r\n")
        await keeper_w.drain()
        head = await asyncio.wait_for(keeper_r.read(256), 5)
        keep_ms = (time.monotonic() - t) * 1000
        st = status(admin)["connections"]
        for s in socks:
            s.close()
        rows.append(("flood", f"{len(socks)} idle connections in {time.monotonic() - t0:.1f} s",
                     f"{st['proxy']['refused']} refused at the cap of {st['proxy']['max']} (nofile {st['nofile_soft']})",
                     f"{peak:.0f} MiB",
                     f"/healthz {health_ms:.0f} ms; kept-alive client {head.split(b' ')[1].decode()} in {keep_ms:.0f} ms"))
        keeper_w.close()

        print("| attack | load | what graceway did | RSS | others meanwhile |")
        print("|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        errors = [l for l in open(f"{d}/graceway.log") if " ERROR " in l]
        print(f"\nERROR lines in graceway's log: {len(errors)}")
    finally:
        g.terminate()
        try:
            g.wait(10)
        except subprocess.TimeoutExpired:
            g.kill()
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
