"""The oauth2 scenario of fleet_tokens.py: OAuth2 fetches per refresh for
the fleet, `oauth2.share: false` (before: one per replica) and `true`
(after: one for the fleet). Run alone with
`python3 benches/fleet_tokens.py --only oauth2`.

  identity provider  POST /oauth/token mints `oauth2-bench-N` with
                     `expires_in` --oauth2-lifetime s; every fetch is
                     counted with its time
  vendor             one port per replica, 200 for a minted bearer
  4 replicas         one OAuth2 token source (refresh_fraction 0.5), the
                     fleet tier with `secret_file`, started side by side
  clients            --oauth2-rate req/s to every replica

Counted over --oauth2-seconds: fetches at start, then the refresh rounds
(fetches closer than 1 s to the previous one belong to its round) and
fetches per round; once the fleet runs, one `graceway check -c r0.yaml`
and the fetches it added. Stdlib only; every wait has a deadline.
"""
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from procs import Replica, free_port, redis_cmd, spawn, stop, tail, wait_until

KEY = "3b6f0c1d2e4a5968778899aabbccddeeff00112233445566778899aabbccddee"
N_REPLICAS = 4


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def _serve(handler):
    srv = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                     daemon=True).start()
    return srv


class Idp:
    """Mints `oauth2-bench-N`; `fetches` holds each fetch's monotonic time."""

    def __init__(self, lifetime_s):
        self.fetches = []
        self.lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with idp.lock:
                    idp.fetches.append(time.monotonic())
                    n = len(idp.fetches)
                body = json.dumps({"access_token": f"oauth2-bench-{n}", "token_type": "Bearer",
                                   "expires_in": lifetime_s}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = _serve(Handler)
        self.port = self.srv.server_address[1]

    def times(self):
        with self.lock:
            return list(self.fetches)

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class Vendor:
    """One port per replica: 200 for a minted bearer, 401 otherwise."""

    def __init__(self, n):
        self.answers = {}
        self.lock = threading.Lock()
        vendor = self
        self.servers = []
        for _ in range(n):
            class Handler(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"

                def log_message(self, *a):
                    pass

                def do_GET(self):  # noqa: N802
                    ok = self.headers.get("Authorization", "").startswith("Bearer oauth2-bench-")
                    code = 200 if ok else 401
                    with vendor.lock:
                        vendor.answers[code] = vendor.answers.get(code, 0) + 1
                    body = b'{"ok":true}' if ok else b'{"error":"invalid_token"}'
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
            self.servers.append(_serve(Handler))
        self.ports = [s.server_address[1] for s in self.servers]

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


def _replica(binary, idx, d, vendor_port, idp_port, redis_port, share):
    return Replica(binary, idx, d, [
        "  - name: api",
        f'    url: "http://127.0.0.1:{vendor_port}"',
        "    credentials:",
        "      tokens:",
        "        - oauth2:",
        f'            token_url: "http://127.0.0.1:{idp_port}/oauth/token"',
        "            client_id: bench",
        f'            client_secret_file: "{d}/client-secret"',
        "            refresh_fraction: 0.5",
        f"            share: {'true' if share else 'false'}",
        "log: { level: info }",
        f'cache: {{ redis: {{ url: "redis://127.0.0.1:{redis_port}", timeout: 200ms, '
        f'secret_file: "{d}/fleet.key" }} }}',
    ])


def rounds(times, gap=1.0):
    """Fetch times grouped into rounds: a fetch within `gap` s of the
    previous one joins its round."""
    out = []
    for t in sorted(times):
        if out and t - out[-1][-1] <= gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def scenario(base, args, share, load_cls):
    """One run; returns the counts."""
    name = f"oauth2-share-{'on' if share else 'off'}"
    print(f"\n## {name}: {N_REPLICAS} replicas, token lifetime {args.oauth2_lifetime} s "
          f"(refresh at half), {args.oauth2_seconds:g} s, {args.oauth2_rate:g} req/s per replica",
          flush=True)
    d = os.path.join(base, name)
    os.makedirs(d)
    with open(os.path.join(d, "client-secret"), "w") as f:
        f.write("s3cret\n")
    with open(os.path.join(d, "fleet.key"), "w") as f:
        f.write(KEY + "\n")
    idp, vendor = Idp(args.oauth2_lifetime), Vendor(N_REPLICAS)
    redis_port = free_port()
    redis = spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", d], os.path.join(d, "redis.log"))
    replicas, load = [], None
    try:
        wait_until("redis-server", lambda: redis_cmd(redis_port, "PING") == "PONG", 10, 0.05)
        replicas = [_replica(args.graceway, i, d, vendor.ports[i], idp.port, redis_port, share)
                    for i in range(N_REPLICAS)]
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        t_start = time.monotonic()
        at_start = len(idp.times())
        before_check = len(idp.times())
        chk = subprocess.run([args.graceway, "check", "-c", replicas[0].cfg],
                             capture_output=True, text=True, timeout=60)
        if chk.returncode != 0:
            raise RuntimeError(f"graceway check failed:\n{chk.stdout}{chk.stderr}")
        check_fetches = len(idp.times()) - before_check
        t_run = time.monotonic()
        load = load_cls([r.port for r in replicas], args.oauth2_rate, ["/v1/items"], 4)
        time.sleep(args.oauth2_seconds)
        results = load.stop()
        load = None
        t_end = time.monotonic()
        for r in replicas:
            t = tail(r.log, 3, grep=["ERROR", "WARN"])
            if t:
                print(f"    r{r.idx} log: " + t.replace("\n", f"\n    r{r.idx} log: "))
    finally:
        if load is not None:
            load.stop()
        for r in replicas:
            if r.proc is not None:
                stop(r.proc)
        stop(redis)
        idp.close()
        vendor.close()
    times = idp.times()
    # The start round (with check's fetch, if any) is counted apart; the
    # refresh rounds are those that began after the check, within the run.
    refresh = [rd for rd in rounds([t for t in times if t > t_run + 0.5]) if rd[0] < t_end]
    per_round = [len(rd) for rd in refresh]
    not_ok = sum(1 for q in results if q[3] != 200 or q[4])
    out = {"share": share, "fetches_at_start": at_start, "check_fetches": check_fetches,
           "refresh_rounds": len(refresh), "fetches_per_round": per_round,
           "mean_per_round": round(sum(per_round) / len(per_round), 2) if per_round else None,
           "max_per_round": max(per_round, default=None), "fetches_total": len(times),
           "requests": len(results), "not_fresh": not_ok,
           "vendor_answers": dict(sorted(vendor.answers.items())),
           "seconds": round(t_end - t_start, 1)}
    print(f"  fetches at start {at_start}; graceway check added {check_fetches}; "
          f"{len(refresh)} refresh rounds, fetches per round {per_round} "
          f"(mean {out['mean_per_round']}); {len(results)} requests, {not_ok} not fresh; "
          f"vendor answers {out['vendor_answers']}", flush=True)
    return out


def report(res):
    off, on = res.get(False), res.get(True)

    def cell(o, f):
        return f(o) if o else "-"
    rows = [
        ("OAuth2 fetches at start, fleet of 4", lambda o: str(o["fetches_at_start"]), "1",
         lambda o: "yes" if o["fetches_at_start"] == 1 else "no"),
        ("OAuth2 fetches per refresh, fleet (mean; each round)",
         lambda o: f"{o['mean_per_round']} ({', '.join(map(str, o['fetches_per_round']))})",
         "1", lambda o: "yes" if o["max_per_round"] == 1 else "no"),
        ("`graceway check` with the fleet running: fetches it adds",
         lambda o: str(o["check_fetches"]), "0",
         lambda o: "yes" if o["check_fetches"] == 0 else "no"),
        ("client answers not fresh (non-200 or degraded)", lambda o: f"{o['not_fresh']} of "
         f"{o['requests']}", "0", lambda o: "yes" if o["not_fresh"] == 0 else "no"),
    ]
    print("\n| measurement | share off (before) | share on (after) | goal | met (after) |")
    print("|---|---|---|---|---|")
    for label, f, goal, met in rows:
        print(f"| {label} | {cell(off, f)} | {cell(on, f)} | {goal} | {cell(on, met)} |")
