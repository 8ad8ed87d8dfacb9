#!/usr/bin/env python3
"""What the fleet tier (cache.redis) buys: coverage during an outage.

usage: python3 benches/fleet_coverage.py [--rate R] [--warmup S] [--outage S]
           [--direct S] [--workers W] [--paths P] [--seed N] [--keep]
           [--only plain|redis]

Everything runs on 127.0.0.1 with ephemeral ports, twice: without
`cache.redis` and with it (fresh replicas, and a fresh redis-server, each
time):

  mock vendor  GET /v1/items/<n>: 200 + JSON + `Cache-Control: max-age=60`
               while the bearer is `tok-bench`; after "revoke", 401 with
               `WWW-Authenticate: Bearer error="invalid_token"` for everything
  4 replicas   target/release/graceway run -c <dir>/rN.yaml
  nginx        round-robin over the 4 listen ports, one worker, keepalive

  1 warm-up    Zipf-like population (weight 1/rank^1.1 over --paths paths,
               seeded) through nginx against a healthy vendor
  2 revoke     flip the vendor's flag (Redis run: first wait until every
               replica's /status .cache.fleet.writes > 0 and the sum settles)
  3 outage     the population again through nginx; for paths answered 200
               at least once during warm-up: share of 200 (a copy, marked
               X-Graceway-Degraded) rather than 503
  4 restart    SIGKILL replica 0, start it again with the same config (no
               persist file: its memory starts empty), wait for /healthz,
               then send previously answered paths DIRECTLY to its listen
               port; share of 200

Prints each phase's counts and a markdown table. Stdlib only. Every child
process is stopped on exit (atexit, SIGINT/SIGTERM, and PR_SET_PDEATHSIG);
every wait has a deadline.
"""
import argparse
import bisect
import http.client
import json
import os
import random
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACEWAY = os.path.join(ROOT, "target", "release", "graceway")
TOKEN = "tok-bench"
HARD_LIMIT_S = 600  # the whole script, whatever happens

# Child processes, ports, waits: shared with fleet_tokens.py.
from procs import CHILDREN, Replica as Process, free_port, workdir, http_get, redis_cmd, spawn, stop, stop_all, tail, wait_until  # noqa: E402,F401


# ---------------------------------------------------------------- mock vendor

class Vendor:
    def __init__(self):
        self.revoked = False
        self.counts = {}
        self.lock = threading.Lock()
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in separate writes

            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                auth = self.headers.get("Authorization", "")
                parts = self.path.split("?")[0].split("/")
                ok_path = len(parts) == 4 and parts[1:3] == ["v1", "items"] and parts[3].isdigit()
                if vendor.revoked or auth != f"Bearer {TOKEN}":
                    code, body = 401, b'{"error":"invalid_token"}'
                    extra = [("WWW-Authenticate", 'Bearer error="invalid_token"')]
                elif not ok_path:
                    code, body, extra = 404, b'{"error":"not found"}', []
                else:
                    n = int(parts[3])
                    body = json.dumps({"id": n, "name": f"item-{n}",
                                       "price": n % 97}).encode()
                    code, extra = 200, [("Cache-Control", "max-age=60")]
                with vendor.lock:
                    vendor.counts[code] = vendor.counts.get(code, 0) + 1
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    def take_counts(self):
        with self.lock:
            c, self.counts = self.counts, {}
        return c

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- graceway

class Replica(Process):
    def __init__(self, idx, d, vendor_port, redis_port):
        lines = [
            "  - name: api",
            f'    url: "http://127.0.0.1:{vendor_port}"',
            f'    credentials: {{ tokens: [ {{ file: "{d}/token" }} ] }}',
            "    health: { retry_after: 30s, max_retry_after: 60s }",
            "    stale: { max_stale: 1h }",
            "log: { level: warn }",
        ]
        if redis_port:
            lines.append(f'cache: {{ redis: {{ url: "redis://127.0.0.1:{redis_port}" }} }}')
        super().__init__(GRACEWAY, idx, d, lines)

    def fleet(self):
        try:
            return (self.status().get("cache") or {}).get("fleet")
        except Exception as e:  # noqa: BLE001
            return {"error": str(e)}


# ---------------------------------------------------------------- nginx

def start_nginx(d, ports):
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    upstream graceway {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://graceway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Replica $upstream_addr always;
        }}
    }}
}}
""")
    p = spawn(["nginx", "-e", f"{d}/nginx-error.log", "-c", conf, "-p", d],
              os.path.join(d, "nginx.out"))

    def ok():
        if p.poll() is not None:
            raise SystemExit(f"nginx exited:\n{tail(os.path.join(d, 'nginx-error.log'))}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    wait_until("nginx", ok, 10, 0.05)
    return p, port


# ---------------------------------------------------------------- clients

class Population:
    def __init__(self, paths, seed):
        self.paths = [f"/v1/items/{n}" for n in range(1, paths + 1)]
        self.cum = []
        total = 0.0
        for rank in range(1, paths + 1):
            total += 1.0 / rank ** 1.1
            self.cum.append(total)
        self.rng = random.Random(seed)

    def draw(self, k, among=None):
        if among is None:
            return self.rng.choices(self.paths, cum_weights=self.cum, k=k)
        # Same popularity, restricted to a set of paths.
        sub = [(p, w) for p, w in zip(self.paths, self.weights()) if p in among]
        cum, t = [], 0.0
        for _, w in sub:
            t += w
            cum.append(t)
        return self.rng.choices([p for p, _ in sub], cum_weights=cum, k=k)

    def weights(self):
        prev = 0.0
        for c in self.cum:
            yield c - prev
            prev = c


def run_load(port, paths, seconds, rate, workers):
    """Sends paths[i] at start + i/rate (or as fast as it can when behind)
    over keep-alive connections, until all are sent or `seconds` pass.
    Returns [(path, status, degraded?, replica)] (status 0: transport error)."""
    results = []
    lock = threading.Lock()
    nxt = [0]
    start = time.monotonic()
    end = start + seconds

    def worker():
        conn = None
        local = []
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(paths):
                break
            due = start + i / rate
            now = time.monotonic()
            if due >= end or now >= end:
                break
            if due > now:
                time.sleep(due - now)
            path = paths[i]
            for attempt in range(2):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", path)
                    r = conn.getresponse()
                    r.read()
                    local.append((path, r.status, r.getheader("X-Graceway-Degraded") is not None,
                                  r.getheader("X-Replica") or "direct"))
                    if r.will_close:
                        conn.close()
                        conn = None
                    break
                except (http.client.HTTPException, OSError):
                    if conn is not None:
                        conn.close()
                    conn = None
                    if attempt == 1:
                        local.append((path, 0, False, "-"))
        if conn is not None:
            conn.close()
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 15)
    elapsed = time.monotonic() - start
    with lock:
        return list(results), elapsed


def summarize(name, results, elapsed, vendor_counts):
    st = {}
    for _, s, _, _ in results:
        st[s] = st.get(s, 0) + 1
    deg = sum(1 for r in results if r[2])
    print(f"  {name}: {len(results)} requests in {elapsed:.1f}s "
          f"({len(results) / max(elapsed, 1e-9):.0f}/s), statuses "
          f"{dict(sorted(st.items()))}, degraded-marked {deg}; vendor saw "
          f"{dict(sorted(vendor_counts.items()))}", flush=True)


def share(results, among):
    rel = [r for r in results if r[0] in among]
    ok = sum(1 for r in rel if r[1] == 200)
    return len(rel), ok


def pct(n, ok):
    return f"{100.0 * ok / n:.1f}% ({ok}/{n})" if n else "n/a"


# ---------------------------------------------------------------- one run

def run(label, with_redis, args, base):
    d = os.path.join(base, label.replace(" ", "-"))
    os.makedirs(d)
    os.chmod(d, 0o755)  # nginx's worker may run as another user
    with open(os.path.join(d, "token"), "w") as f:
        f.write(TOKEN + "\n")
    print(f"\n## run: {label}", flush=True)
    vendor = Vendor()
    procs = []
    try:
        redis_port = None
        if with_redis:
            redis_port = free_port()
            procs.append(spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", d],
                               os.path.join(d, "redis.log")))
            wait_until("redis-server", lambda: redis_cmd(redis_port, "PING") == "PONG", 10, 0.05)
        replicas = [Replica(i, d, vendor.port, redis_port) for i in range(4)]
        for r in replicas:
            r.start()
            procs.append(r.proc)
        for r in replicas:
            r.wait_ready()
        if with_redis:
            wait_until("replicas connected to Redis",
                       lambda: all((r.fleet() or {}).get("up") for r in replicas), 10, 0.1)
        ng, ng_port = start_nginx(d, [r.port for r in replicas])
        procs.append(ng)
        pop = Population(args.paths, args.seed)

        # (1) warm-up
        n_warm = int(args.rate * args.warmup)
        warm, el = run_load(ng_port, pop.draw(n_warm), args.warmup, args.rate, args.workers)
        summarize("phase 1 warm-up (nginx)", warm, el, vendor.take_counts())
        answered = {p for p, s, _, _ in warm if s == 200}
        print(f"  distinct paths answered 200 during warm-up: {len(answered)} of {args.paths}")

        if with_redis:
            last = [-1]

            def settled():
                fl = [r.fleet() or {} for r in replicas]
                total = sum(f.get("writes", 0) for f in fl)
                done = all(f.get("writes", 0) > 0 for f in fl) and total == last[0]
                last[0] = total
                return done
            t0 = time.monotonic()
            wait_until("fleet writes > 0 on every replica and settled", settled, 15, 0.5)
            print(f"  fleet writes settled after {time.monotonic() - t0:.1f}s: "
                  + ", ".join(f"r{r.idx}={(r.fleet() or {}).get('writes')}" for r in replicas)
                  + f"; redis DBSIZE {redis_cmd(redis_port, 'DBSIZE')}")

        # (2) revoke
        vendor.revoked = True
        print("  phase 2 revoke: vendor now answers 401 invalid_token", flush=True)

        # (3) outage through nginx
        n_out = int(args.rate * args.outage)
        out, el = run_load(ng_port, pop.draw(n_out), args.outage, args.rate, args.workers)
        summarize("phase 3 outage (nginx)", out, el, vendor.take_counts())
        n3, ok3 = share(out, answered)
        per = {}
        for p, s, _, rep in out:
            if p in answered:
                a = per.setdefault(rep, [0, 0])
                a[0] += 1
                a[1] += s == 200
        print(f"  outage, previously answered paths: {pct(n3, ok3)} got 200; per replica: "
              + ", ".join(f"{k} {pct(v[0], v[1])}" for k, v in sorted(per.items())))
        odd = [r for r in out if r[0] in answered and r[1] == 200 and not r[2]]
        if odd:
            print(f"  NOTE: {len(odd)} outage 200s without X-Graceway-Degraded")

        # (4) restart replica 0, then talk to it directly
        r0 = replicas[0]
        t0 = time.monotonic()
        stop(r0.proc, signal.SIGKILL)
        procs.remove(r0.proc)
        r0.start()
        procs.append(r0.proc)
        r0.wait_ready()
        print(f"  phase 4 restart: replica 0 killed and ready again in "
              f"{time.monotonic() - t0:.2f}s; fleet at first request: {json.dumps(r0.fleet())}")
        n_dir = int(args.rate * args.direct / 2)
        direct, el = run_load(r0.port, pop.draw(n_dir, among=answered), args.direct,
                              args.rate / 2, max(2, args.workers // 2))
        summarize("phase 4 restarted replica (direct)", direct, el, vendor.take_counts())
        n4, ok4 = share(direct, answered)
        first = [r for r in direct[: max(1, len(direct) // 10)]]
        print(f"  restarted replica: {pct(n4, ok4)} got 200 "
              f"(first 10% of its answers: {pct(*share(first, answered))})")

        # evidence
        for r in replicas:
            try:
                s = r.status()
                print(f"  r{r.idx} /status: entries={s['cache']['entries']} "
                      f"fleet={json.dumps(s['cache']['fleet'])}")
            except Exception as e:  # noqa: BLE001
                print(f"  r{r.idx} /status failed: {e}")
            t = tail(r.log, 4, grep=["WARN", "ERROR", "warn", "error"])
            if t:
                print("    log: " + t.replace("\n", "\n    log: "))
        return {"label": label, "outage": (n3, ok3), "direct": (n4, ok4)}
    finally:
        for p in reversed(procs):
            stop(p)
        vendor.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000, help="requests/s through nginx (direct phase: half)")
    ap.add_argument("--warmup", type=float, default=10, help="seconds")
    ap.add_argument("--outage", type=float, default=10, help="seconds")
    ap.add_argument("--direct", type=float, default=5, help="seconds")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", choices=["plain", "redis"])
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()

    for tool in ("redis-server", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    if not os.access(GRACEWAY, os.X_OK):
        sys.exit(f"{GRACEWAY} missing: cargo build --release --bin graceway")

    base = workdir("graceway-fleet-", args.keep)
    signal.alarm(HARD_LIMIT_S)

    t0 = time.monotonic()
    rows = []
    if args.only != "redis":
        rows.append(run("without Redis", False, args, base))
    if args.only != "plain":
        rows.append(run("with Redis", True, args, base))

    print("\n| run | requests in outage (previously answered paths) "
          "| share served a copy via nginx | restarted replica's share |")
    print("|---|---|---|---|")
    for r in rows:
        n3, ok3 = r["outage"]
        n4, ok4 = r["direct"]
        print(f"| {r['label']} | {n3} | {pct(n3, ok3)} | {pct(n4, ok4)} |")
    print(f"\ncommand: {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}")
    print(f"wall time: {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
