#!/usr/bin/env python3
"""Vendor calls per 1,000 client requests: graceway beside nginx (issue 25).

usage: python3 benches/vendor_calls.py [--graceway BIN] [--quick]
           [--only herd,hot,swr,quota] [--herds N] [--herd-size N]
           [--hot-requests N] [--hot-rate R] [--hot-delay-ms MS]
           [--swr-seconds S] [--swr-rate R] [--fresh-rate R]
           [--quota-limit N] [--quota-window S] [--quota-offered N]
           [--quota-windows N] [--quota-delay-ms MS] [--keep] [--json FILE]

--quick: 2 herds, 300 hot requests, 4 s of swr, a quota of 20 per 4 s with
30 offered for 2 windows (about a minute). The full run takes about 3
minutes.

Everything runs on 127.0.0.1, in one run: the proxies one after the other,
each in front of its own port of one mock vendor, so every vendor call is
counted for the proxy that made it.

  mock vendor  a Python HTTP/1.1 server (threads, keep-alive); every call
               counted per proxy, path and token; GET anything answers 200
               with a JSON body naming the call's serial number (so answers
               that were shared are recognisable) and the scenario's
               `Cache-Control`, after the scenario's delay; optionally a
               quota per token (fixed windows, 429 + `Retry-After` and
               `X-RateLimit-Limit/-Remaining/-Reset` on every answer)
  graceway     BIN run -c <tmp>/<name>.yaml, a fresh process per row (cold
               cache), one thread (as nginx's one process), tokens
               [primary, standby]
  nginx        /usr/sbin/nginx (Debian nginx-light), master_process off,
               one server block per row, each with its own proxy_cache_path
               in the temp dir; injects the primary with proxy_set_header

  a herd   --herds cold herds of --herd-size identical concurrent GETs (a
           new path each; vendor 200 ms, `max-age=60`): vendor calls per
           herd; graceway (coalescing on, the default) and graceway with
           `cache.coalesce.wait: 0s` (before) beside nginx proxy_cache +
           proxy_cache_lock (+ proxy_cache_lock_timeout 5s)
  b hot    --hot-requests requests at --hot-rate req/s (20 workers) over 20
           paths, vendor `max-age=5` (20 ms): graceway
           `upstreams[].cache.fresh: honor` (and the default, fresh off,
           as before) beside nginx proxy_cache (with and without
           proxy_cache_lock)
  c swr    vendor `max-age=1, stale-while-revalidate=60`, 500 ms; after one
           warm-up request per path, --swr-seconds of requests at a fixed
           rate over 4 paths, beside a stream over 4 paths the vendor gave
           `max-age=600` (the fresh-hit baseline, same run, same process):
           client p50/p99 (from each request's scheduled time) and vendor
           calls per key; graceway (fresh: honor) beside nginx
           (proxy_cache_use_stale updating, proxy_cache_background_update,
           proxy_cache_lock)
  d quota  the vendor allows --quota-limit requests per --quota-window s
           per token; --quota-offered requests per window for
           --quota-windows windows, each to a new path (no copy helps):
           429s that reached the vendor per window, client answers
           degraded (X-Graceway-Degraded) or 503, for graceway's default
           failover_on, failover_on [401, 403, 429], and (when the binary
           accepts them, `graceway check`) credentials.select: round_robin
           and credentials.queue

CPU per request: utime+stime from /proc/PID/stat of the proxy's process
(10 ms ticks; also the per-thread schedstat sum, ns) over the measured
requests. Prints each scenario's details and markdown tables. Stdlib only.
Every child process is stopped on exit (atexit, SIGINT/SIGTERM, and
PR_SET_PDEATHSIG); every wait has a deadline.
"""
import argparse
import http.client
import json
import math
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release", "graceway")
DEBUG = os.path.join(ROOT, "target", "debug", "graceway")
NGINX = "/usr/sbin/nginx"
PRIMARY = "tok-primary-vendor-calls"
STANDBY = "tok-standby-vendor-calls"
TICK = os.sysconf("SC_CLK_TCK")

# Child processes, ports, waits: shared with the other benchmark scripts.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, workdir, spawn, stop, stop_all, tail, wait_until  # noqa: E402


# ---------------------------------------------------------------- mock vendor

class Call:
    __slots__ = ("label", "path", "token", "status", "t_arr", "t_resp", "serial")

    def __init__(self, label, path, token, status, t_arr, t_resp, serial):
        self.label, self.path, self.token, self.status = label, path, token, status
        self.t_arr, self.t_resp, self.serial = t_arr, t_resp, serial


class Vendor:
    """One vendor, one listening port per proxy row (`port(label)`); the
    scenario's behaviour in `mode` (set with `set_mode`):
      delay    seconds before each answer
      cc       Cache-Control of 200s; paths under /fresh/ get `fresh_cc`
      quota    None or (limit, window_s, t0): 200s per (label, token) in
               fixed windows of window_s from the monotonic time t0"""

    def __init__(self):
        self.lock = threading.Lock()
        self.mode = {"delay": 0.0, "cc": "max-age=60", "fresh_cc": "max-age=600", "quota": None}
        self.calls = []
        self.used = {}
        self.serial = 0
        self.servers = {}

    def set_mode(self, **kw):
        with self.lock:
            self.mode = dict(self.mode, **kw)
            self.used = {}

    def decide(self, label, tok, now):
        """Under self.lock: (status, extra headers)."""
        if tok not in ("primary", "standby"):
            return 401, [("WWW-Authenticate", 'Bearer error="invalid_token"')]
        q = self.mode["quota"]
        if not q:
            return 200, []
        limit, window, t0 = q
        w = math.floor((now - t0) / window)
        reset = max(1, math.ceil(t0 + (w + 1) * window - now))
        used = self.used.get((label, tok, w), 0)
        rl = [("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Reset", str(reset))]
        if used >= limit:
            return 429, [("Retry-After", str(reset)), ("X-RateLimit-Remaining", "0")] + rl
        self.used[(label, tok, w)] = used + 1
        return 200, [("X-RateLimit-Remaining", str(limit - used - 1))] + rl

    def port(self, label):
        if label in self.servers:
            return self.servers[label].server_address[1]
        vendor = self
        tokens = {f"Bearer {PRIMARY}": "primary", f"Bearer {STANDBY}": "standby"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                t_arr = time.monotonic()
                tok = tokens.get(self.headers.get("Authorization", ""), "none")
                path = self.path.split("?")[0]
                with vendor.lock:
                    mode = vendor.mode
                    code, extra = vendor.decide(label, tok, t_arr)
                    vendor.serial += 1
                    serial = vendor.serial
                if code == 200:
                    body = json.dumps({"path": path, "call": serial}).encode()
                    cc = mode["fresh_cc"] if path.startswith("/fresh/") else mode["cc"]
                    extra.append(("Cache-Control", cc))
                elif code == 429:
                    body = b'{"error":"rate_limited"}'
                else:
                    body = b'{"error":"invalid_token"}'
                if mode["delay"] > 0:
                    time.sleep(mode["delay"])
                with vendor.lock:
                    vendor.calls.append(Call(label, path, tok, code, t_arr, time.monotonic(),
                                             serial))
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        srv = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
        self.servers[label] = srv
        return srv.server_address[1]

    def calls_of(self, label, since=0.0):
        with self.lock:
            return [c for c in self.calls if c.label == label and c.t_arr >= since]

    def close(self):
        for s in self.servers.values():
            s.shutdown()
            s.server_close()


# ---------------------------------------------------------------- /proc

def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return 0
    fields = st[st.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def sched_ns(pid):
    """Sum of the live threads' time on a CPU (/proc/PID/task/*/schedstat), ns."""
    t = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                t += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return t


def idle_ms_per_s(pid, seconds=1.0):
    """The process's CPU time while no request is sent, ms per second (schedstat)."""
    s0, t0 = sched_ns(pid), time.monotonic()
    time.sleep(seconds)
    return (sched_ns(pid) - s0) / 1e6 / (time.monotonic() - t0)


class Cpu:
    def __init__(self, pid):
        self.pid = pid
        self.t0, self.s0 = cpu_ticks(pid), sched_ns(pid)

    def per_request(self, n):
        """(us per request by /proc/PID/stat, us per request by schedstat)."""
        if not n:
            return float("nan"), float("nan")
        ticks, ns = cpu_ticks(self.pid) - self.t0, sched_ns(self.pid) - self.s0
        return ticks / TICK * 1e6 / n, ns / 1e3 / n


# ---------------------------------------------------------------- proxies

def write(path, text):
    with open(path, "w") as f:
        f.write(text)


class Graceway:
    """One graceway process: config in d/<name>.yaml, log d/<name>.log."""

    def __init__(self, binary, d, name, vendor_port, upstream="", creds="", top=""):
        self.binary, self.name = binary, name
        self.port, self.admin = free_port(), free_port()
        self.cfg = os.path.join(d, f"{name}.yaml")
        self.log = os.path.join(d, f"{name}.log")
        self.proc = None
        tokens = f'tokens: [ {{ file: "{d}/primary" }}, {{ file: "{d}/standby" }} ]'
        lines = [
            f'listen: "127.0.0.1:{self.port}"',
            f'admin: {{ listen: "127.0.0.1:{self.admin}" }}',
            f'pid_file: "{d}/{name}.pid"',
            "server: { threads: 1, graceful_shutdown_timeout: 1s }",
            "upstreams:",
            "  - name: api",
            f'    url: "http://127.0.0.1:{vendor_port}"',
        ]
        if upstream:
            lines.append(f"    {upstream}")
        lines.append(f"    credentials: {{ {tokens}{', ' + creds if creds else ''} }}")
        if top:
            lines.append(top)
        write(self.cfg, "\n".join(lines) + "\n")

    def check(self):
        """(accepted, graceway check's output)."""
        r = subprocess.run([self.binary, "check", "-c", self.cfg], capture_output=True,
                           text=True, timeout=30)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def start(self, deadline_s=30):
        self.proc = spawn([self.binary, "run", "-c", self.cfg], self.log)

        def ready():
            if self.proc.poll() is not None:
                raise SystemExit(f"graceway {self.name} exited ({self.proc.returncode}); "
                                 f"log {self.log}:\n{tail(self.log)}")
            return get_status(self.admin, "/readyz") == 200
        wait_until(f"graceway {self.name} /readyz", ready, deadline_s, 0.05)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def metrics(self, prefixes=("graceway_coalesce_waits_total", "graceway_cache_hits_total",
                                "graceway_cache_revalidations_total",
                                "graceway_token_queue_waits_total")):
        out = {}
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=3)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode(errors="replace")
            conn.close()
        except (OSError, http.client.HTTPException):
            return out
        for line in text.splitlines():
            if line.startswith(prefixes):
                k, _, v = line.rpartition(" ")
                try:
                    if float(v):
                        out[k.replace("graceway_", "").replace('upstream="api",', "")] = \
                            int(float(v))
                except ValueError:
                    pass
        return out

    def close(self):
        if self.proc is not None:
            stop(self.proc)


def get_status(port, path, timeout=1.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


class Nginx:
    """One nginx process (master_process off), one server block per row:
    rows = {label: (vendor_port, location directives)}."""

    def __init__(self, d, rows):
        self.d = os.path.join(d, "nginx")
        os.makedirs(self.d)
        self.ports = {}
        http_blocks = []
        for i, (label, (vport, directives)) in enumerate(rows.items()):
            port = free_port()
            self.ports[label] = port
            zone = f"z{i}"
            http_blocks.append(f"""
  proxy_cache_path {self.d}/cache-{zone} levels=1:2 keys_zone={zone}:1m max_size=64m
                   inactive=10m use_temp_path=off;
  upstream v{i} {{ server 127.0.0.1:{vport}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://v{i};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {PRIMARY}";
      proxy_cache {zone};
      {directives}
      add_header X-Cache-Status $upstream_cache_status always;
    }}
  }}""")
        conf = f"""master_process off;
worker_processes 1;
pid {self.d}/nginx.pid;
error_log {self.d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.d}/body; proxy_temp_path {self.d}/proxy;
  fastcgi_temp_path {self.d}/fcgi; uwsgi_temp_path {self.d}/uwsgi; scgi_temp_path {self.d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
{''.join(http_blocks)}
}}
"""
        self.conf = os.path.join(self.d, "nginx.conf")
        write(self.conf, conf)
        self.log = os.path.join(self.d, "stdout.log")
        self.proc = spawn([NGINX, "-p", self.d, "-c", self.conf, "-g", "daemon off;"], self.log)

        def up():
            if self.proc.poll() is not None:
                raise SystemExit(f"nginx exited ({self.proc.returncode}):\n{tail(self.log)}\n"
                                 f"{tail(os.path.join(self.d, 'error.log'))}")
            for p in self.ports.values():
                socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
            return True
        wait_until("nginx listening", up, 20, 0.05)

    def alive(self):
        return self.proc.poll() is None

    def close(self):
        stop(self.proc)


# ---------------------------------------------------------------- clients

class Result:
    __slots__ = ("tag", "path", "t_due", "t_send", "t_recv", "status", "degraded", "cache",
                 "body")

    def __init__(self, tag, path, t_due, t_send, t_recv, status, degraded, cache, body):
        self.tag, self.path, self.t_due, self.t_send = tag, path, t_due, t_send
        self.t_recv, self.status, self.degraded, self.cache = t_recv, status, degraded, cache
        self.body = body

    def latency(self, paced=True):
        return self.t_recv - (self.t_due if paced else self.t_send)


def answer(r):
    cache = r.getheader("Cache-Status") or r.getheader("X-Cache-Status") or ""
    return r.status, r.getheader("X-Graceway-Degraded") is not None, cache


def herd(port, path, n, timeout=15.0):
    """n connections opened first, then one GET each, released together."""
    conns = []
    for _ in range(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.connect()
        conns.append(c)
    gate = threading.Barrier(n + 1, timeout=timeout)
    results = []
    lock = threading.Lock()

    def one(c):
        try:
            gate.wait()
        except threading.BrokenBarrierError:
            return
        t = time.monotonic()
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            st, deg, cache = answer(r)
            res = Result("herd", path, t, t, time.monotonic(), st, deg, cache, body)
        except (OSError, http.client.HTTPException):
            res = Result("herd", path, t, t, time.monotonic(), 0, False, "", b"")
        finally:
            c.close()
        with lock:
            results.append(res)
    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in conns]
    for th in threads:
        th.start()
    gate.wait()
    end = time.monotonic() + timeout + 5
    for th in threads:
        th.join(timeout=max(0.1, end - time.monotonic()))
    with lock:
        return list(results)


def run_slots(port, slots, workers, timeout=10.0, t0=None):
    """slots: [(offset_s, path, tag)] in time order; `workers` threads take
    them in turn, wait until each is due (from t0, default now) and send it
    over a keep-alive connection. Returns ([Result], t0)."""
    t0 = time.monotonic() + 0.05 if t0 is None else t0
    nxt = [0]
    lock = threading.Lock()
    results = []

    def worker():
        conn = None
        local = []
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(slots):
                break
            off, path, tag = slots[i]
            due = t0 + off
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            t_send = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                st, deg, cache = answer(r)
                local.append(Result(tag, path, due, t_send, time.monotonic(), st, deg, cache,
                                    body[:80]))
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                local.append(Result(tag, path, due, t_send, time.monotonic(), 0, False, "", b""))
        if conn is not None:
            conn.close()
        with lock:
            results.extend(local)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for th in threads:
        th.start()
    end = t0 + (slots[-1][0] if slots else 0) + timeout + 10
    for th in threads:
        th.join(timeout=max(0.1, end - time.monotonic()))
    if any(th.is_alive() for th in threads):
        print("  NOTE: client workers still running at the deadline", flush=True)
    with lock:
        return list(results), t0


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def ms(x):
    return f"{1000 * x:.1f}" if x == x else "-"


def ms2(x):
    return f"{1000 * x:.2f}" if x == x else "-"


def statuses(results):
    st = {}
    for r in results:
        st[r.status] = st.get(r.status, 0) + 1
    return dict(sorted(st.items()))


def cache_kinds(results):
    """Counts of the answers' Cache-Status (graceway) / X-Cache-Status (nginx), shortened."""
    out = {}
    for r in results:
        k = re.sub(r";\s*ttl=-?\d+", "", r.cache) or "-"
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def us(x):
    return f"{x:.1f}" if x == x else "-"


def ratio(a, b):
    return f"{a / b:.2f}x" if b and a == a and b == b else "-"


# ---------------------------------------------------------------- scenarios

class Ctx:
    def __init__(self, args, base, vendor, nginx_ok):
        self.args, self.base, self.vendor, self.nginx_ok = args, base, vendor, nginx_ok
        self.n = 0

    def dir(self, name):
        self.n += 1
        d = os.path.join(self.base, f"{self.n:02d}-{name}")
        os.makedirs(d)
        write(os.path.join(d, "primary"), PRIMARY + "\n")
        write(os.path.join(d, "standby"), STANDBY + "\n")
        return d

    def graceway(self, name, label, **kw):
        d = self.dir(name)
        g = Graceway(self.args.graceway, d, name, self.vendor.port(label), **kw)
        ok, out = g.check()
        if not ok:
            raise SystemExit(f"graceway check -c {g.cfg} failed:\n{out}")
        return g.start()

    def nginx(self, name, rows):
        """rows: {label: directives}; None without nginx."""
        if not self.nginx_ok:
            return None
        d = self.dir(name)
        return Nginx(d, {label: (self.vendor.port(label), dirs) for label, dirs in rows.items()})


def scenario_herd(ctx):
    a = ctx.args
    v = ctx.vendor
    v.set_mode(delay=0.2, cc="max-age=60", quota=None)
    print(f"\n## a herd: {a.herds} cold herds of {a.herd_size} identical concurrent GETs, "
          f"vendor 200 ms, max-age=60", flush=True)
    rows = []

    def measure(label, name, port, pid, alive):
        idle = idle_ms_per_s(pid)
        cpu = Cpu(pid)
        per_herd, res_all, bodies = [], [], []
        for h in range(a.herds):
            path = f"/v1/herd/{label}/{h}"
            t = time.monotonic()
            res = herd(port, path, a.herd_size)
            time.sleep(0.3)  # a call still running (a waiter that went itself) is counted
            calls = [c for c in v.calls_of(label, t) if c.path == path]
            per_herd.append(len(calls))
            res_all += res
            bodies.append(len({r.body for r in res if r.status == 200}))
        us_stat, us_sched = cpu.per_request(len(res_all))
        lat = [r.latency() for r in res_all if r.status]
        row = {"label": label, "name": name, "per_herd": per_herd,
               "calls": sum(per_herd), "requests": len(res_all),
               "per_1000": 1000 * sum(per_herd) / max(1, len(res_all)),
               "ok": sum(1 for r in res_all if r.status == 200), "bodies": bodies,
               "statuses": statuses(res_all), "cache": cache_kinds(res_all),
               "p50": pct(lat, 50), "p99": pct(lat, 99), "cpu_us": us_stat,
               "cpu_sched_us": us_sched, "idle_ms_s": idle, "alive": alive()}
        print(f"  {name}: vendor calls per herd {per_herd}; client statuses {row['statuses']}; "
              f"distinct bodies per herd {bodies}; answers {row['cache']}; p50 {ms(row['p50'])} "
              f"ms, p99 {ms(row['p99'])} ms; CPU {us(us_stat)} us/req (schedstat "
              f"{us(us_sched)})", flush=True)
        rows.append(row)
        return row

    for label, name, top in (("gw-herd", "graceway (cache.coalesce.wait: 5s, default)", ""),
                             ("gw-herd-nowait", "graceway, `cache: { coalesce: { wait: 0s } }` "
                                                "(before)", "cache: { coalesce: { wait: 0s } }")):
        g = ctx.graceway(label, label, top=top)
        try:
            measure(label, name, g.port, g.proc.pid, g.alive)
            m = g.metrics()
            print(f"    metrics: {m}")
        finally:
            g.close()
    ng = ctx.nginx("nginx-herd", {"nginx-herd": "proxy_cache_lock on; "
                                                "proxy_cache_lock_timeout 5s;"})
    if ng:
        try:
            measure("nginx-herd", "nginx proxy_cache + proxy_cache_lock on "
                    "(proxy_cache_lock_timeout 5s)", ng.ports["nginx-herd"], ng.proc.pid, ng.alive)
        finally:
            ng.close()
    return rows


def scenario_hot(ctx):
    a = ctx.args
    v = ctx.vendor
    v.set_mode(delay=a.hot_delay_ms / 1000.0, cc="max-age=5", quota=None)
    paths = [f"/v1/hot/{i}" for i in range(20)]
    rng = random.Random(25)
    seq = [rng.choice(paths) for _ in range(a.hot_requests)]
    paced = a.hot_rate > 0
    slots = [((i / a.hot_rate) if paced else 0.0, p, "hot") for i, p in enumerate(seq)]
    span = a.hot_requests / a.hot_rate if paced else 0
    print(f"\n## b hot: {a.hot_requests} requests over 20 paths, "
          f"{f'{a.hot_rate:g} req/s ({span:.1f} s)' if paced else 'as fast as possible'}, "
          f"20 workers, vendor max-age=5, {a.hot_delay_ms} ms", flush=True)
    rows = []

    def measure(label, name, port, pid, alive):
        idle = idle_ms_per_s(pid)
        cpu = Cpu(pid)
        t = time.monotonic()
        res, _ = run_slots(port, slots, 20)
        time.sleep(0.2)
        us_stat, us_sched = cpu.per_request(len(res))
        calls = v.calls_of(label, t)
        per_path = [sum(1 for c in calls if c.path == p) for p in paths]
        lat = [r.latency(paced) for r in res if r.status]
        row = {"label": label, "name": name, "requests": len(res), "calls": len(calls),
               "per_1000": 1000 * len(calls) / max(1, len(res)),
               "per_path_min": min(per_path), "per_path_max": max(per_path),
               "statuses": statuses(res), "cache": cache_kinds(res),
               "p50": pct(lat, 50), "p99": pct(lat, 99), "cpu_us": us_stat,
               "cpu_sched_us": us_sched, "idle_ms_s": idle, "alive": alive()}
        print(f"  {name}: vendor calls {len(calls)} (per path {min(per_path)}-{max(per_path)}); "
              f"client statuses {row['statuses']}; answers {row['cache']}; p50 {ms(row['p50'])} "
              f"ms, p99 {ms(row['p99'])} ms; CPU {us(us_stat)} us/req (schedstat "
              f"{us(us_sched)})", flush=True)
        rows.append(row)

    for label, name, up in (("gw-hot", "graceway, `upstreams[].cache.fresh: honor`",
                             "cache: { fresh: honor }"),
                            ("gw-hot-off", "graceway, fresh: off (default, before)", "")):
        g = ctx.graceway(label, label, upstream=up)
        try:
            measure(label, name, g.port, g.proc.pid, g.alive)
            print(f"    metrics: {g.metrics()}")
        finally:
            g.close()
    ng = ctx.nginx("nginx-hot", {"nginx-hot": "", "nginx-hot-lock": "proxy_cache_lock on; "
                                                                    "proxy_cache_lock_timeout 5s;"})
    if ng:
        try:
            measure("nginx-hot", "nginx proxy_cache", ng.ports["nginx-hot"], ng.proc.pid, ng.alive)
            measure("nginx-hot-lock", "nginx proxy_cache + proxy_cache_lock",
                    ng.ports["nginx-hot-lock"], ng.proc.pid, ng.alive)
        finally:
            ng.close()
    return rows


def scenario_swr(ctx):
    a = ctx.args
    v = ctx.vendor
    max_age = 1
    v.set_mode(delay=0.5, cc=f"max-age={max_age}, stale-while-revalidate=60",
               fresh_cc="max-age=600", quota=None)
    swr_paths = [f"/v1/swr/{i}" for i in range(4)]
    fresh_paths = [f"/fresh/{i}" for i in range(4)]
    rng = random.Random(5861)
    slots = []
    for i in range(int(a.swr_seconds * a.swr_rate)):
        slots.append((i / a.swr_rate, rng.choice(swr_paths), "swr"))
    for i in range(int(a.swr_seconds * a.fresh_rate)):
        slots.append(((i + 0.5) / a.fresh_rate, rng.choice(fresh_paths), "fresh"))
    slots.sort(key=lambda s: s[0])
    print(f"\n## c swr: vendor `max-age={max_age}, stale-while-revalidate=60`, 500 ms; "
          f"{a.swr_seconds:g} s at {a.swr_rate:g} req/s over {len(swr_paths)} paths, beside "
          f"{a.fresh_rate:g} req/s over {len(fresh_paths)} paths with max-age=600 (fresh hits)",
          flush=True)
    rows = []

    def measure(label, name, port, pid, alive):
        # One warm-up request per path (all at once), then wait until the
        # swr copies are past max-age: the run starts on stale copies.
        warm, _ = run_slots(port, [(0.0, p, "warm") for p in swr_paths + fresh_paths],
                            len(swr_paths) + len(fresh_paths))
        time.sleep(max_age + 0.3)
        cpu = Cpu(pid)
        t = time.monotonic()
        res, t0 = run_slots(port, slots, 32)
        time.sleep(0.7)  # a refresh started by the last requests lands
        us_stat, us_sched = cpu.per_request(len(res))
        calls = v.calls_of(label, t)
        dur = max(r.t_due for r in res) - t0 if res else 0
        out = {"label": label, "name": name, "warm": statuses(warm), "cpu_us": us_stat,
               "cpu_sched_us": us_sched, "seconds": dur, "alive": alive()}
        for tag, paths in (("swr", swr_paths), ("fresh", fresh_paths)):
            mine = [r for r in res if r.tag == tag]
            lat = [r.latency() for r in mine if r.status]
            per_key = [sum(1 for c in calls if c.path == p) for p in paths]
            out[tag] = {"requests": len(mine), "statuses": statuses(mine),
                        "degraded": sum(1 for r in mine if r.degraded),
                        "cache": cache_kinds(mine), "p50": pct(lat, 50), "p99": pct(lat, 99),
                        "max": max(lat) if lat else float("nan"), "per_key": per_key}
            print(f"  {name}, {tag} paths: {len(mine)} requests, statuses {statuses(mine)}, "
                  f"p50 {ms(pct(lat, 50))} ms, p99 {ms(pct(lat, 99))} ms, max "
                  f"{ms(out[tag]['max'])} ms; vendor calls per key {per_key}; answers "
                  f"{out[tag]['cache']}", flush=True)
        print(f"    CPU {us(us_stat)} us/req (schedstat {us(us_sched)}); warm-up statuses "
              f"{out['warm']}")
        rows.append(out)

    g = ctx.graceway("gw-swr", "gw-swr", upstream="cache: { fresh: honor }")
    try:
        measure("gw-swr", "graceway, fresh: honor", g.port, g.proc.pid, g.alive)
        print(f"    metrics: {g.metrics()}")
    finally:
        g.close()
    ng = ctx.nginx("nginx-swr", {"nginx-swr": "proxy_cache_use_stale updating; "
                                              "proxy_cache_background_update on; "
                                              "proxy_cache_lock on;"})
    if ng:
        try:
            measure("nginx-swr", "nginx use_stale updating + background_update + lock",
                    ng.ports["nginx-swr"], ng.proc.pid, ng.alive)
        finally:
            ng.close()
    return rows, max_age


QUOTA_ROWS = [
    ("gw-q-default", "graceway, failover_on default ([401, 403])", "", False),
    ("gw-q-429", "graceway, `failover_on: [401, 403, 429]`", "failover_on: [401, 403, 429]",
     False),
    ("gw-q-rr", "graceway, failover_on 429 + `select: round_robin`",
     "failover_on: [401, 403, 429], select: round_robin", True),
    ("gw-q-queue", "graceway, failover_on 429 + `select: round_robin` + "
                   "`queue: { max_wait: 2s, max_queued: 100 }`",
     "failover_on: [401, 403, 429], select: round_robin, "
     "queue: { max_wait: 2s, max_queued: 100 }", True),
]


def scenario_quota(ctx):
    a = ctx.args
    v = ctx.vendor
    rate = a.quota_offered / a.quota_window
    n = int(a.quota_offered * a.quota_windows)
    print(f"\n## d quota: {a.quota_limit} per {a.quota_window:g} s per token at the vendor, "
          f"2 tokens, {a.quota_offered} offered per window ({rate:g} req/s) for "
          f"{a.quota_windows} windows, a new path per request", flush=True)
    rows = []
    for label, name, creds, pools in QUOTA_ROWS:
        d = ctx.dir(label)
        g = Graceway(a.graceway, d, label, v.port(label), creds=creds)
        ok, out = g.check()
        if not ok:
            if pools:
                first = next((ln for ln in out.splitlines() if "unknown field" in ln
                              or "error" in ln.lower()), out.splitlines()[0] if out else "")
                print(f"  {name}: n/a, `graceway check` refused the keys: {first.strip()}")
                rows.append({"label": label, "name": name, "na": True, "why": first.strip()})
                continue
            raise SystemExit(f"graceway check -c {g.cfg} failed:\n{out}")
        g.start()
        try:
            slots = [(i / rate, f"/v1/q/{label}/{i}", "q") for i in range(n)]
            cpu = Cpu(g.proc.pid)
            # The vendor's windows start with the first request's due time.
            with v.lock:
                t_start = time.monotonic() + 0.05
                v.mode = dict(v.mode, delay=a.quota_delay_ms / 1000.0, cc="max-age=60",
                              quota=(a.quota_limit, a.quota_window, t_start))
                v.used = {}
            res, _ = run_slots(g.port, slots, 48, t0=t_start)
            time.sleep(0.3)
            us_stat, _ = cpu.per_request(len(res))
            calls = v.calls_of(label, t_start - 1)
            metrics = g.metrics()
            alive = g.alive()
        finally:
            g.close()
        windows = []
        for w in range(a.quota_windows):
            lo, hi = t_start + w * a.quota_window, t_start + (w + 1) * a.quota_window
            inw = [c for c in calls if lo <= c.t_arr < hi]
            mine = [r for r in res if lo <= r.t_due < hi]
            lat = [r.latency() for r in mine if r.status]
            windows.append({
                "window": w,
                "vendor_200": {t: sum(1 for c in inw if c.token == t and c.status == 200)
                               for t in ("primary", "standby")},
                "vendor_429": {t: sum(1 for c in inw if c.token == t and c.status == 429)
                               for t in ("primary", "standby")},
                "client": statuses(mine),
                "degraded": sum(1 for r in mine if r.degraded),
                "c503": sum(1 for r in mine if r.status == 503),
                "c429": sum(1 for r in mine if r.status == 429),
                "bad": sum(1 for r in mine if r.status != 200 or r.degraded),
                "requests": len(mine), "p99": pct(lat, 99), "max": max(lat) if lat else 0,
            })
        row = {"label": label, "name": name, "na": False, "windows": windows,
               "vendor_calls": len(calls), "requests": len(res), "cpu_us": us_stat,
               "metrics": metrics, "alive": alive,
               "log": tail(g.log, 6, grep=["rate-limited", "quota", "WARN", "ERROR"])}
        print(f"  {name}: {len(res)} requests, {len(calls)} vendor calls, CPU {us(us_stat)} "
              f"us/req; metrics {metrics}")
        for wd in windows:
            print(f"    window {wd['window']}: vendor 200s {wd['vendor_200']}, vendor 429s "
                  f"{wd['vendor_429']}; client {wd['client']}, degraded {wd['degraded']}, "
                  f"p99 {ms(wd['p99'])} ms, max {ms(wd['max'])} ms")
        for c in [c for c in calls if c.status == 429][:6]:
            into = c.t_arr - t_start
            w = math.floor(into / a.quota_window)
            print(f"    429 at the vendor: {c.token}, {into - w * a.quota_window:.2f} s into "
                  f"window {w} (its reset at {a.quota_window:g} s)")
        if row["log"]:
            print("    log: " + row["log"].replace("\n", "\n    log: "))
        print("", end="", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- report

def report(res, args, notes):
    cpu_col = "CPU us/req (/proc/PID/stat; schedstat)"
    if "herd" in res:
        rows = res["herd"]
        ngx = next((r for r in rows if r["label"].startswith("nginx")), None)
        print(f"\n### (a) cold herd: {args.herds} x {args.herd_size} identical concurrent GETs "
              f"(vendor 200 ms, max-age=60)\n")
        print(f"| setup | vendor calls per herd | vendor calls per 1,000 client requests | "
              f"client 200s | distinct bodies per herd | client p50 / p99 ms | {cpu_col} | "
              f"CPU vs nginx | idle CPU ms/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {', '.join(map(str, r['per_herd']))} | {r['per_1000']:.0f} "
                  f"| {r['ok']} of {r['requests']} | {', '.join(map(str, r['bodies']))} | "
                  f"{ms(r['p50'])} / {ms(r['p99'])} | {us(r['cpu_us'])}; "
                  f"{us(r['cpu_sched_us'])} | "
                  f"{ratio(r['cpu_us'], ngx['cpu_us']) if ngx else '-'} | "
                  f"{r['idle_ms_s']:.2f} |")
        gw = rows[0]
        print(f"\nGoal: 1 vendor call per herd (2 with a failover): "
              f"**{'met' if max(gw['per_herd']) <= 1 else 'MISSED'}** "
              f"(graceway default: {max(gw['per_herd'])} at most)")
    if "hot" in res:
        rows = res["hot"]
        ngx = next((r for r in rows if r["label"] == "nginx-hot"), None)
        pace = f"{args.hot_rate:g} req/s" if args.hot_rate > 0 else "closed loop"
        print(f"\n### (b) hot paths: {args.hot_requests} requests over 20 paths ({pace}, "
              f"20 workers), vendor max-age=5, {args.hot_delay_ms} ms\n")
        print(f"| setup | vendor calls | vendor calls per 1,000 client requests | calls per "
              f"path (min-max) | client statuses | p50 / p99 ms | {cpu_col} | CPU vs nginx | "
              f"idle CPU ms/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['calls']} | {r['per_1000']:.0f} | {r['per_path_min']}-"
                  f"{r['per_path_max']} | {r['statuses']} | {ms(r['p50'])} / {ms(r['p99'])} | "
                  f"{us(r['cpu_us'])}; {us(r['cpu_sched_us'])} | "
                  f"{ratio(r['cpu_us'], ngx['cpu_us']) if ngx else '-'} | "
                  f"{r['idle_ms_s']:.2f} |")
        gw = rows[0]
        if ngx:
            print(f"\nGoal: no more vendor calls than nginx: "
                  f"**{'met' if gw['calls'] <= ngx['calls'] else 'MISSED'}** "
                  f"({gw['calls']} vs {ngx['calls']})")
    if "swr" in res:
        rows, max_age = res["swr"]
        gw = rows[0]
        secs = gw["seconds"]
        bound = math.ceil(secs / max_age) + 1
        print(f"\n### (c) stale-while-revalidate: vendor `max-age={max_age}, "
              f"stale-while-revalidate=60`, 500 ms; {args.swr_seconds:g} s at "
              f"{args.swr_rate:g} req/s over 4 paths, fresh-hit baseline {args.fresh_rate:g} "
              f"req/s over 4 max-age=600 paths in the same run\n")
        print("| setup | paths | requests | client p50 ms | client p99 ms | max ms | vendor calls "
              "per key during the run | non-200 |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            for tag, what in (("swr", "swr (max-age=1)"), ("fresh", "fresh hit (max-age=600)")):
                x = r[tag]
                bad = sum(v for k, v in x["statuses"].items() if k != 200)
                print(f"| {r['name']} | {what} | {x['requests']} | {ms2(x['p50'])} | "
                      f"{ms2(x['p99'])} | {ms2(x['max'])} | {', '.join(map(str, x['per_key']))} "
                      f"| {bad} |")
        s, f = gw["swr"], gw["fresh"]
        over = s["p99"] - f["p99"]
        print(f"\nGoals: client p99 no higher than a fresh hit's: "
              f"**{'met' if over <= 0 else f'MISSED by {ms2(over)} ms'}** ({ms2(s['p99'])} vs "
              f"{ms2(f['p99'])} ms; the fresh-hit p99 is graceway's, same process, same run; "
              f"the client is Python threads, so differences below ~1 ms are its noise; no swr "
              f"answer waited for the 500 ms vendor: "
              f"**{'met' if s['max'] < 0.25 else 'MISSED'}**, max {ms2(s['max'])} ms); "
              f"one vendor call per key per max-age window ({secs:.1f} s / {max_age} s: at "
              f"most {bound} per key): "
              f"**{'met' if max(s['per_key']) <= bound else 'MISSED'}** "
              f"({max(s['per_key'])} at most)")
    if "quota" in res:
        a = args
        print(f"\n### (d) quota: {a.quota_limit} per {a.quota_window:g} s per token, 2 tokens, "
              f"{a.quota_offered} offered per window, {a.quota_windows} windows, a new path per "
              f"request\n")
        print("| setup | window | vendor 200s (primary/standby) | 429s at the vendor "
              "(primary/standby) | client 200 | with X-Graceway-Degraded | 503 | 429 | other | client p99 / "
              "max ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in res["quota"]:
            if r["na"]:
                print(f"| {r['name']} | all | n/a (needs credentials.select) | | | | | | | |")
                continue
            for w in r["windows"]:
                c = w["client"]
                other = sum(v for k, v in c.items() if k not in (200, 429, 503))
                print(f"| {r['name']} | {w['window']} | {w['vendor_200']['primary']}/"
                      f"{w['vendor_200']['standby']} | {w['vendor_429']['primary']}/"
                      f"{w['vendor_429']['standby']} | {c.get(200, 0)} | {w['degraded']} | "
                      f"{w['c503']} | {w['c429']} | {other} | {ms(w['p99'])} / "
                      f"{ms(w['max'])} |")
        print()
        ran = [r for r in res["quota"] if not r["na"]]
        for r in ran:
            late = sum(sum(w["vendor_429"].values()) for w in r["windows"][1:])
            bad = sum(w["bad"] for w in r["windows"])
            print(f"- {r['name']}: 429s at the vendor after the first window {late}; client "
                  f"answers not a plain 200 (degraded, 503, 429): {bad}; goal (0 and 0): "
                  f"**{'met' if late == 0 and bad == 0 else 'MISSED'}**")
    if "herd" in res or "hot" in res:
        print("\nCPU: utime+stime of the proxy's process from /proc/PID/stat over the measured "
              "requests, divided by them (10 ms ticks: about +-10 us/req over 1,000 requests; "
              "the per-thread schedstat sum beside it, ns); at (b)'s fixed rate it includes "
              "the work a process does while idle (last column, schedstat, measured for 1 s "
              "before the row). graceway runs `server.threads: 1`, nginx one process.")
    print()
    for n in notes:
        print(f"- note: {n}")


# ---------------------------------------------------------------- main

def ensure_binary(path, explicit):
    if os.access(path, os.X_OK):
        return path
    if explicit:
        sys.exit(f"{path} missing")
    print("target/release/graceway missing: cargo build --release --bin graceway "
          "(a few minutes)", file=sys.stderr, flush=True)
    r = subprocess.run(["cargo", "build", "--release", "--bin", "graceway"], cwd=ROOT,
                       timeout=3600)
    if r.returncode != 0 or not os.access(path, os.X_OK):
        if os.access(DEBUG, os.X_OK):
            print("release build failed: using target/debug/graceway", file=sys.stderr)
            return DEBUG
        sys.exit("cargo build --release failed")
    return path


def ensure_nginx():
    if os.access(NGINX, os.X_OK):
        return True
    print("installing nginx-light (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], env=env, timeout=600,
                       stdout=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return os.access(NGINX, os.X_OK)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graceway", help="the binary (default: target/release/graceway, built "
                                       "if missing)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a smoke run")
    ap.add_argument("--only", default="herd,hot,swr,quota")
    ap.add_argument("--herds", type=int)
    ap.add_argument("--herd-size", type=int, default=200)
    ap.add_argument("--hot-requests", type=int)
    ap.add_argument("--hot-rate", type=float, default=100,
                    help="hot paths: req/s (0: as fast as 20 workers go)")
    ap.add_argument("--hot-delay-ms", type=int, default=20)
    ap.add_argument("--swr-seconds", type=float)
    ap.add_argument("--swr-rate", type=float, default=20)
    ap.add_argument("--fresh-rate", type=float, default=10)
    ap.add_argument("--quota-limit", type=int)
    ap.add_argument("--quota-window", type=float)
    ap.add_argument("--quota-offered", type=int)
    ap.add_argument("--quota-windows", type=int)
    ap.add_argument("--quota-delay-ms", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    q = args.quick
    defaults = {"herds": 2 if q else 5, "hot_requests": 300 if q else 1000,
                "swr_seconds": 4 if q else 10, "quota_limit": 20 if q else 100,
                "quota_window": 4 if q else 10, "quota_offered": 30 if q else 150,
                "quota_windows": 2 if q else 3}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    only = set(args.only.split(","))
    args.graceway = ensure_binary(os.path.abspath(args.graceway or RELEASE),
                                  explicit=args.graceway is not None)
    notes = []
    if "/debug/" in args.graceway:
        notes.append(f"graceway is a debug build ({args.graceway}): its latencies and CPU "
                     f"figures are not representative; vendor call counts are")
    nginx_ok = ensure_nginx()
    if not nginx_ok:
        notes.append("nginx missing (apt-get install nginx-light failed): no nginx rows")

    vendor = Vendor()
    base = workdir("graceway-vendor-calls-", args.keep, also=vendor.close)
    budget = (3 * args.herds * 10 + 4 * (args.hot_requests / max(1, args.hot_rate) + 15)
              + 2 * (args.swr_seconds + 15)
              + len(QUOTA_ROWS) * (args.quota_windows * args.quota_window + 15) + 120)
    signal.alarm(int(budget))

    ver = subprocess.run([args.graceway, "--version"], capture_output=True, text=True,
                         timeout=10).stdout.strip()
    ngv = subprocess.run([NGINX, "-v"], capture_output=True, text=True,
                         timeout=10).stderr.strip() if nginx_ok else "-"
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(args.graceway)))
    print(f"graceway: {args.graceway} ({ver or '?'}, built {built}); nginx: {ngv}; "
          f"{os.cpu_count()} CPUs; git HEAD {git_head()}", flush=True)

    ctx = Ctx(args, base, vendor, nginx_ok)
    t0 = time.monotonic()
    res = {}
    if "herd" in only:
        res["herd"] = scenario_herd(ctx)
    if "hot" in only:
        res["hot"] = scenario_hot(ctx)
    if "swr" in only:
        res["swr"] = scenario_swr(ctx)
    if "quota" in only:
        res["quota"] = scenario_quota(ctx)
    dead = [r["name"] for k, rows in res.items()
            for r in (rows[0] if k == "swr" else rows) if r.get("alive") is False]
    if dead:
        notes.append(f"process no longer running at the end of its row: {dead}")
    report(res, args, notes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print(f"\ncommand: {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}")
    print(f"wall time: {time.monotonic() - t0:.1f}s")


def git_head():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


if __name__ == "__main__":
    main()
