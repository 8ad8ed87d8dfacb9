#!/usr/bin/env python3
"""Slowloris, flood, keep-alive drip and cache-flush figures for docs/reliability.md.

    python3 benches/hostile.py [--binary target/release/graceway] [--drip 3000] [--flood 12000]
                               [--only slowloris,flood,keepalive,flush] [--flush-seconds 60]

Starts graceway (release build unless --binary says otherwise) in front of a
tiny loopback upstream, then on loopback only:

1. slowloris: --drip connections each send a request header one byte every
   5 s; reports how long until graceway cut them off (408), its RSS during
   the attack, and the latency of a normal client meanwhile;
2. flood: --flood idle connections (more than graceway's default cap,
   which is derived from the open-file limit: (limit - 256) / 2); reports how many were refused at the
   cap, RSS, and how fast /healthz and a kept-alive client answer during it;
3. keepalive: with server.max_connections: 200, 199 connections that each
   sent one GET and then drip their next request one byte every 5 s, for
   --ka-seconds; a new client tries a GET every second: how many got in, how
   long they waited, how many drippers were cut (408) or closed for room;
4. flush: for cache.memory_bytes 8 MiB and 64 MiB, 50 popular paths asked 5
   times each, then one client sends one-off paths (cache-busting queries)
   at full speed for --flush-seconds, then the upstream fails: how many of
   the 50 popular copies are still served.

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


# The upstream: 200 with a small JSON body; /pad/... answers ~1 KB; while
# DOWN[0] is set every answer is a 503.
DOWN = [False]
PAD = b'{"pad":"' + b"p" * 1000 + b'"}'


async def upstream(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            if DOWN[0]:
                body = b'{"error":"down"}'
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                body = PAD if b" /pad/" in head.split(b"\r\n", 1)[0] else b'{"ok":true}'
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


def start_graceway(binary, up_port, server="", top=""):
    """Starts graceway in front of the loopback upstream; returns (process,
    proxy port, admin port, folder) once both ports answer."""
    listen, admin = free_port(), free_port()
    d = tempfile.mkdtemp(prefix="graceway-hostile-")
    with open(f"{d}/token", "w") as f:
        f.write("tok-bench\n")
    cfg = f"""
listen: "127.0.0.1:{listen}"
admin: {{ listen: "127.0.0.1:{admin}" }}
pid_file: "{d}/graceway.pid"
server: {{ threads: 1, graceful_shutdown_timeout: 1s{server} }}
upstreams:
  - name: api
    url: "http://127.0.0.1:{up_port}"
    credentials:
      tokens:
        - {{ file: "{d}/token" }}
log: {{ level: warn }}
{top}
"""
    with open(f"{d}/graceway.yaml", "w") as f:
        f.write(cfg)
    log = open(f"{d}/graceway.log", "w")
    g = subprocess.Popen([binary, "run", "-c", f"{d}/graceway.yaml"], stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)
            socket.create_connection(("127.0.0.1", listen), 1).close()
            return g, listen, admin, d
        except OSError:
            time.sleep(0.05)
    raise SystemExit("graceway did not start")


def stop(g):
    g.terminate()
    try:
        g.wait(10)
    except subprocess.TimeoutExpired:
        g.kill()


def error_lines(d):
    return sum(1 for l in open(f"{d}/graceway.log") if " ERROR " in l)


async def read_answer(r, limit=5):
    """Reads one answer with a Content-Length; returns its status or None."""
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), limit)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await asyncio.wait_for(r.readexactly(length), limit)
    return head.split(b" ", 2)[1].decode()


async def slowloris(a, up_port):
    g, listen, admin, d = start_graceway(a.binary, up_port)
    try:
        idle_rss = rss_mib(g.pid)
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
        return ("slowloris", f"{a.drip} connections, 1 byte / 5 s",
                f"{len(cut)} cut with 408 (median {cut[len(cut)//2]:.1f} s, max {cut[-1]:.1f} s), {alive} still open after {a.seconds} s" if cut else f"none cut, {alive} open",
                f"{peak:.0f} MiB (idle {idle_rss:.0f})",
                f"{sum(1 for _, c in lat if c == '200')}/10 OK, max {max(t for t, _ in lat)*1000:.0f} ms", error_lines(d))
    finally:
        stop(g)


async def flood(a, up_port):
    g, listen, admin, d = start_graceway(a.binary, up_port)
    try:
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
        took_flood = time.monotonic() - t0
        await asyncio.sleep(2)
        peak = rss_mib(g.pid)
        t = time.monotonic()
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5)
        health_ms = (time.monotonic() - t) * 1000
        # A newcomer during the flood: the silent connections are over a
        # second old by now, so one is closed to make room for it.
        took, code = await timed_get(listen, "/v1/new")
        st = status(admin)["connections"]
        for s in socks:
            s.close()
        return ("flood", f"{len(socks)} idle connections in {took_flood:.1f} s",
                f"{st['proxy']['refused']} refused at the cap of {st['proxy']['max']} (nofile {st['nofile_soft']}), {st['proxy']['evicted']} closed for newcomers",
                f"{peak:.0f} MiB",
                f"/healthz {health_ms:.0f} ms; a newcomer {code} in {took*1000:.0f} ms", error_lines(d))
    finally:
        stop(g)


async def keepalive_drip(a, up_port):
    """199 kept-alive drippers under a cap of 200, a newcomer every second."""
    g, listen, admin, d = start_graceway(a.binary, up_port, server=", max_connections: 200")
    try:
        conns = []
        for _ in range(199):
            r, w = await asyncio.open_connection("127.0.0.1", listen)
            w.write(b"GET /v1/first HTTP/1.1\r\nHost: h\r\n\r\n")
            await w.drain()
            assert await read_answer(r) == "200"
            conns.append((r, w))
        ended = {"408": 0, "closed": 0}

        async def dripper(r, w):
            payload = b"GET /v1/second HTTP/1.1\r\nHost: h\r\nX-Drip: " + b"a" * 100
            t = time.monotonic()
            i = 0
            while time.monotonic() - t < a.ka_seconds + 5:
                try:
                    w.write(payload[i:i + 1])
                    await w.drain()
                    data = await asyncio.wait_for(r.read(64), 5)
                    ended["408" if data.startswith(b"HTTP/1.1 408") else "closed"] += 1
                    w.close()
                    return
                except asyncio.TimeoutError:
                    i += 1
                except OSError:
                    ended["closed"] += 1
                    return
            w.close()

        drippers = [asyncio.create_task(dripper(r, w)) for r, w in conns]
        tried, served, waits = 0, 0, []
        t0 = time.monotonic()
        while time.monotonic() - t0 < a.ka_seconds:
            await asyncio.sleep(1)
            tried += 1
            took, code = await timed_get(listen, "/v1/new")
            if code == "200":
                served += 1
                waits.append(took)
        st = status(admin)["connections"]["proxy"]
        for t in drippers:
            t.cancel()
        waits.sort()
        return ("keep-alive drip", f"199 connections, one GET each, then the next header 1 byte / 5 s; cap 200; {a.ka_seconds} s",
                f"{served} of {tried} newcomers served (median wait {waits[len(waits)//2]*1000:.0f} ms, max {waits[-1]*1000:.0f} ms); {st['header_timeouts']} header timeouts, {st['evicted']} closed for room, {st['refused']} refused" if waits else f"0 of {tried} newcomers served",
                f"{rss_mib(g.pid):.0f} MiB",
                f"drippers told 408: {ended['408']}, closed: {ended['closed']}", error_lines(d))
    finally:
        stop(g)


async def flush(a, up_port, memory):
    """Popular copies, then one client's one-off paths, then an outage."""
    g, listen, admin, d = start_graceway(a.binary, up_port, top=f"cache: {{ memory_bytes: {memory} }}")
    try:
        r, w = await asyncio.open_connection("127.0.0.1", listen)
        for _ in range(5):
            for i in range(50):
                w.write(f"GET /pad/popular/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                await w.drain()
                assert await read_answer(r) == "200"
        w.close()
        sent = [0]

        async def one_client(n):
            r, w = await asyncio.open_connection("127.0.0.1", listen)
            t0 = time.monotonic()
            i = 0
            while time.monotonic() - t0 < a.flush_seconds:
                w.write(f"GET /pad/search?q={n}-{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                await w.drain()
                await read_answer(r)
                i += 1
            sent[0] += i
            w.close()

        await asyncio.gather(*[one_client(n) for n in range(4)])
        cache = status(admin)["cache"]
        DOWN[0] = True
        try:
            served = 0
            r, w = await asyncio.open_connection("127.0.0.1", listen)
            for i in range(50):
                w.write(f"GET /pad/popular/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
                length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
                await r.readexactly(length)
                if head.startswith(b"HTTP/1.1 200") and b"x-graceway-degraded" in head.lower():
                    served += 1
            w.close()
        finally:
            DOWN[0] = False
        deferred = 0
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as m:
            for line in m.read().decode().splitlines():
                if line.startswith("graceway_cache_admissions_deferred_total "):
                    deferred = int(float(line.split()[1]))
        return ("cache flush", f"cache.memory_bytes {memory}; 50 popular paths x 5, then {sent[0]:,} one-off paths in {a.flush_seconds} s from one client (4 connections)",
                f"{served} of 50 popular copies served in the outage; {deferred:,} first asks not kept (admission)",
                f"{rss_mib(g.pid):.0f} MiB",
                f"cache {cache['bytes'] / 1048576:.1f} MiB in {cache['entries']} entries", error_lines(d))
    finally:
        stop(g)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/graceway")
    ap.add_argument("--drip", type=int, default=3000)
    ap.add_argument("--flood", type=int, default=12000)
    ap.add_argument("--seconds", type=int, default=40)
    ap.add_argument("--ka-seconds", type=int, default=62)
    ap.add_argument("--flush-seconds", type=int, default=60)
    ap.add_argument("--only", default="slowloris,flood,keepalive,flush")
    a = ap.parse_args()
    only = set(a.only.split(","))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not os.path.exists(a.binary):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "graceway"], check=True)

    up_port = free_port()
    server = await asyncio.start_server(upstream, "127.0.0.1", up_port)
    rows = []
    try:
        if "slowloris" in only:
            rows.append(await slowloris(a, up_port))
        if "flood" in only:
            rows.append(await flood(a, up_port))
        if "keepalive" in only:
            rows.append(await keepalive_drip(a, up_port))
        if "flush" in only:
            for memory in ("8MiB", "64MiB"):
                rows.append(await flush(a, up_port, memory))
    finally:
        server.close()
    print("| attack | load | what graceway did | RSS | others meanwhile | ERROR lines |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    asyncio.run(main())
