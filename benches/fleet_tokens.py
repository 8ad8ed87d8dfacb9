#!/usr/bin/env python3
"""What the fleet ledger buys: a token finding met once per fleet.

usage: python3 benches/fleet_tokens.py [--rate R] [--latencies MS,MS]
           [--outage S] [--restart-after S] [--recovery-rate R]
           [--dead-for S] [--probe-interval S] [--probe-seconds S]
           [--recovery-deadline S] [--quota-limit N] [--quota-window S]
           [--quota-offered N] [--quota-windows N] [--uneven-latency MS]
           [--quiet-rate R] [--modes off,on] [--json FILE]
           [--oauth2-lifetime S] [--oauth2-seconds S] [--oauth2-rate R]
           [--only revocation,recovery,quota,oauth2] [--graceway BIN] [--keep]

Everything runs on 127.0.0.1 with ephemeral ports. Each scenario runs
twice, `cache.redis.ledger: false` (before) and `true` (after), with fresh
replicas and a fresh redis-server each time; both runs have the fleet
tier (`cache.redis`) on, only the ledger differs.

  mock vendor  one listening port per replica (requests counted per replica
               and per token); GET /v1/items/<n> and /v1/ping answer 200
               (+ `Cache-Control: max-age=60`) for an accepted bearer, 401
               `WWW-Authenticate: Bearer error="invalid_token"` otherwise; a
               configurable latency; optionally a quota per token
               (fixed windows, 429 + Retry-After)
  4 replicas   target/release/graceway run -c <dir>/rN.yaml, each in front
               of its own vendor port, tokens: [primary file, standby file],
               one shared redis-server
  clients      a steady rate to every replica's listen port directly

  1 revocation  (per vendor latency, default 20 ms and 200 ms) --rate req/s
                to every replica; the vendor revokes the primary; counted:
                requests that carried the primary and got the 401
                (dead-token requests), per replica and for the fleet, and
                the requests carrying the primary that were in flight (at
                the vendor, not yet answered) when the fleet's first
                refusal was sent back; once more with uneven traffic
                (--uneven-latency: r0 at --rate, r1-r3 at --quiet-rate)
  2 restart     in the same run, --restart-after s into the outage, SIGKILL
                replica 3 and start it again: the dead-token requests of
                the new process
  3 recovery    both tokens revoked (stale answers), --dead-for s, then the
                vendor accepts the primary again: seconds until every
                replica answers fresh (200 without X-Graceway-Degraded);
                with `credentials.probe` (--probe-interval) and without
  5 probes      in the probe run of 3, before the outage: probe requests
                per minute for the fleet (--probe-seconds), and during the
                outage: requests carrying a dead token per minute, split by
                User-Agent (graceway-probe: probes and background trials;
                the rest: client requests taken as breaker trials)
  4 quota       --quota-limit requests per --quota-window s per token at the
                vendor, --quota-offered per window offered to the fleet,
                `failover_on: [401, 403, 429]`: 429s per exhaustion of the
                primary (fleet and per replica)

  6 oauth2      (benches/fleet_oauth2.py; alone: --only oauth2) 4 replicas
                with one OAuth2 source, `oauth2.share` off (before) and on
                (after) instead of the ledger: fetches at start, fetches per
                refresh for the fleet, the fetches one `graceway check`
                adds

Prints each scenario's counts and a markdown table. Stdlib only. Every
child process is stopped on exit (atexit, SIGINT/SIGTERM, and
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
import shutil
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACEWAY = os.path.join(ROOT, "target", "release", "graceway")
PRIMARY = "tok-primary-bench"
STANDBY = "tok-standby-bench"
N_REPLICAS = 4

# Child processes, ports, waits: shared with fleet_coverage.py.
from procs import CHILDREN, Replica as Process, free_port, workdir, http_get, redis_cmd, spawn, stop, stop_all, tail, wait_until  # noqa: E402,F401
import fleet_oauth2  # noqa: E402


# ---------------------------------------------------------------- mock vendor

class Req:
    __slots__ = ("replica", "token", "t_arr", "t_resp", "status", "probe", "path")

    def __init__(self, replica, token, t_arr, t_resp, status, probe, path):
        self.replica, self.token, self.t_arr, self.t_resp = replica, token, t_arr, t_resp
        self.status, self.probe, self.path = status, probe, path


class Vendor:
    """One vendor, one port per replica. `accepted` is the set of token
    labels it takes; `quota` (limit, window_s, epoch) counts 200s per token
    in fixed windows starting at the Unix time `epoch`."""

    def __init__(self, n, latency_s):
        self.latency = latency_s
        self.accepted = {"primary", "standby"}
        self.quota = None
        self.used = {}
        self.log = []
        self.lock = threading.Lock()
        self.servers = []
        vendor = self
        labels = {f"Bearer {PRIMARY}": "primary", f"Bearer {STANDBY}": "standby"}

        def handler_for(idx):
            class Handler(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                disable_nagle_algorithm = True

                def log_message(self, *a):
                    pass

                def do_GET(self):  # noqa: N802 - http.server's naming
                    t_arr = time.monotonic()
                    tok = labels.get(self.headers.get("Authorization", ""), "none")
                    probe = self.headers.get("User-Agent", "").startswith("graceway-probe")
                    path = self.path.split("?")[0]
                    with vendor.lock:
                        code, extra = vendor.decide(tok)
                    if code == 200:
                        body = json.dumps({"path": path, "replica": idx}).encode()
                        extra.append(("Cache-Control", "max-age=60"))
                    elif code == 429:
                        body = b'{"error":"rate_limited"}'
                    else:
                        body = b'{"error":"invalid_token"}'
                    if vendor.latency > 0:
                        time.sleep(vendor.latency)
                    t_resp = time.monotonic()
                    with vendor.lock:
                        vendor.log.append(Req(idx, tok, t_arr, t_resp, code, probe, path))
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in extra:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
            return Handler

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request, client_address):
                # A replica killed mid-request (the restart) cuts its
                # connections: not worth a traceback.
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        for i in range(n):
            srv = Server(("127.0.0.1", 0), handler_for(i))
            th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                  daemon=True)
            th.start()
            self.servers.append(srv)
        self.ports = [s.server_address[1] for s in self.servers]

    def decide(self, tok):
        """Under self.lock: the status and extra headers for `tok`."""
        if tok not in self.accepted:
            return 401, [("WWW-Authenticate", 'Bearer error="invalid_token"')]
        if self.quota:
            limit, window, epoch = self.quota
            now = time.time()
            w = math.floor((now - epoch) / window)
            used = self.used.get((tok, w), 0)
            if used >= limit:
                left = max(1, math.ceil(epoch + (w + 1) * window - now))
                return 429, [("Retry-After", str(left))]
            self.used[(tok, w)] = used + 1
        return 200, []

    def set_accepted(self, labels):
        with self.lock:
            self.accepted = set(labels)

    def requests(self):
        with self.lock:
            return list(self.log)

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


# ---------------------------------------------------------------- graceway

class Replica(Process):
    def __init__(self, idx, d, vendor_port, redis_port, ledger, probe_s=None,
                 failover_429=False):
        creds = [f'tokens: [ {{ file: "{d}/primary" }}, {{ file: "{d}/standby" }} ]']
        if probe_s:
            creds.append(f"probe: {{ path: /v1/ping, interval: {probe_s}s }}")
        if failover_429:
            creds.append("failover_on: [401, 403, 429]")
        super().__init__(GRACEWAY, idx, d, [
            "  - name: api",
            f'    url: "http://127.0.0.1:{vendor_port}"',
            f"    credentials: {{ {', '.join(creds)} }}",
            "    stale: { max_stale: 1h }",
            "log: { level: info }",
            f'cache: {{ redis: {{ url: "redis://127.0.0.1:{redis_port}", '
            f'ledger: {"true" if ledger else "false"} }} }}',
        ])

    def metrics(self):
        """The ledger's counters: {name{label}: value}."""
        out = {}
        try:
            text = http_get(self.admin, "/metrics", timeout=2)[1].decode()
        except Exception:  # noqa: BLE001 - a dead replica has none
            return out
        for line in text.splitlines():
            m = re.match(r'(graceway_ledger_(?:findings|trials)_total)\{\w+="(\w+)"\} (\S+)', line)
            if m:
                out[f"{m.group(1)[16:-6]}.{m.group(2)}"] = float(m.group(3))
            m = re.match(r"graceway_ledger_lag_seconds_(sum|count) (\S+)", line)
            if m:
                out[f"lag_{m.group(1)}"] = float(m.group(2))
            m = re.match(r'graceway_ledger_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
            if m:
                out[f"lag_le_{m.group(1)}"] = float(m.group(2))
        return out


class Fleet:
    """A fresh redis-server and 4 replicas, each in front of its vendor port."""

    def __init__(self, d, vendor, ledger, **replica_opts):
        self.d = d
        self.procs = []
        self.redis_port = free_port()
        self.redis = spawn(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--dir", d],
                           os.path.join(d, "redis.log"))
        wait_until("redis-server", lambda: redis_cmd(self.redis_port, "PING") == "PONG", 10, 0.05)
        self.replicas = [Replica(i, d, vendor.ports[i], self.redis_port, ledger, **replica_opts)
                         for i in range(N_REPLICAS)]
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            r.wait_ready()
        wait_until("replicas connected to Redis",
                   lambda: all(((r.status().get("cache") or {}).get("fleet") or {}).get("up")
                               for r in self.replicas), 10, 0.1)

    def restart(self, idx):
        """SIGKILL replica idx and start it again; returns (t_killed, t_spawned, t_ready)."""
        r = self.replicas[idx]
        stop(r.proc, signal.SIGKILL)
        t_killed = time.monotonic()
        r.start()
        t_spawned = time.monotonic()
        r.wait_ready()
        return t_killed, t_spawned, time.monotonic()

    def ledger_counts(self):
        tot = {}
        for r in self.replicas:
            for k, v in r.metrics().items():
                tot[k] = tot.get(k, 0) + v
        # graceway_ledger_lag_seconds as the replicas report it: the mean,
        # and the p99 as the histogram's bucket bound that holds 99% of
        # the applications (summed over the fleet).
        n, total = tot.pop("lag_count", 0), tot.pop("lag_sum", 0.0)
        buckets = sorted((float(k[7:]), v) for k, v in list(tot.items())
                         if k.startswith("lag_le_") and k[7:] != "+Inf")
        for k in [k for k in tot if k.startswith("lag_le_")]:
            tot.pop(k)
        out = {k: int(v) for k, v in sorted(tot.items())}
        if n:
            out["lag_mean_ms"] = round(1000 * total / n, 1)
            p99 = next((le for le, c in buckets if c >= 0.99 * n), None)
            out["lag_p99_ms_at_most"] = round(1000 * p99) if p99 is not None else "> 5000"
            out["lag_applications"] = int(n)
        return out

    def evidence(self, grep=("fleet ledger", "rejected", "accepted again", "out of quota",
                             "auth breaker", "ERROR", "WARN")):
        for r in self.replicas:
            t = tail(r.log, 5, grep=list(grep))
            if t:
                print(f"    r{r.idx} log: " + t.replace("\n", f"\n    r{r.idx} log: "))

    def close(self):
        for r in self.replicas:
            if r.proc is not None:
                stop(r.proc)
        stop(self.redis)


# ---------------------------------------------------------------- clients

class Load:
    """A steady rate (req/s; `rate` a number, or one per port) to every
    port, over keep-alive connections, until stop(). The ports' schedules
    are interleaved (port i starts i/(n*rate) s later), so the fleet's
    requests are evenly spaced rather than sent in lockstep. A slot more
    than 1 s late is skipped (a restarted replica gets the steady rate, not
    a backlog). results: (replica, t_send, t_recv, status, degraded) with
    status 0 for a transport error."""

    def __init__(self, ports, rate, paths, workers, seed=7):
        self.ports, self.paths = ports, paths
        self.rates = list(rate) if isinstance(rate, (list, tuple)) else [rate] * len(ports)
        self.results = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.nxt = [0] * len(ports)
        self.t0 = time.monotonic()
        self.threads = []
        for idx in range(len(ports)):
            for w in range(workers):
                th = threading.Thread(target=self.worker, args=(idx, seed * 1000 + idx * 100 + w),
                                      daemon=True)
                th.start()
                self.threads.append(th)

    def worker(self, idx, seed):
        rng = random.Random(seed)
        port = self.ports[idx]
        conn = None
        local = []
        while not self.stop_ev.is_set():
            with self.lock:
                i = self.nxt[idx]
                self.nxt[idx] += 1
            rate = self.rates[idx]
            due = self.t0 + (i + idx / len(self.ports)) / rate
            now = time.monotonic()
            if due > now:
                if self.stop_ev.wait(due - now):
                    break
            elif now - due > 1.0:
                continue
            path = rng.choice(self.paths)
            t_send = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                local.append((idx, t_send, time.monotonic(), r.status,
                              r.getheader("X-Graceway-Degraded") is not None))
                if r.will_close:
                    conn.close()
                    conn = None
            except (http.client.HTTPException, OSError):
                if conn is not None:
                    conn.close()
                conn = None
                local.append((idx, t_send, time.monotonic(), 0, False))
                self.stop_ev.wait(0.02)
            if local:
                with self.lock:
                    self.results.extend(local)
                local = []
        if conn is not None:
            conn.close()
        with self.lock:
            self.results.extend(local)

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=10)
        return self.snapshot()


def workers_for(rate, latency_s):
    # A failed-over request costs two vendor round trips.
    return int(rate * (2 * latency_s + 0.15)) + 4


def statuses(results):
    st = {}
    for r in results:
        st[r[3]] = st.get(r[3], 0) + 1
    return dict(sorted(st.items()))


# ---------------------------------------------------------------- scenarios

def new_dir(base, name):
    d = os.path.join(base, name)
    os.makedirs(d)
    for label, value in (("primary", PRIMARY), ("standby", STANDBY)):
        with open(os.path.join(d, label), "w") as f:
            f.write(value + "\n")
    return d


def mode_name(ledger):
    return "ledger on" if ledger else "ledger off"


def revocation(base, args, latency_ms, ledger, uneven=False):
    """Scenarios 1 and 2: the vendor revokes the primary under a steady rate;
    replica 3 is restarted mid-outage. `uneven`: replica 0 gets --rate,
    the others --quiet-rate."""
    rates = [args.rate] + [args.quiet_rate if uneven else args.rate] * (N_REPLICAS - 1)
    name = f"revocation-{'uneven-' if uneven else ''}{latency_ms}ms-{'on' if ledger else 'off'}"
    print(f"\n## {name}: {'/'.join(f'{r:g}' for r in rates)} req/s to r0/r1/r2/r3, "
          f"vendor latency {latency_ms} ms, {mode_name(ledger)}", flush=True)
    d = new_dir(base, name)
    vendor = Vendor(N_REPLICAS, latency_ms / 1000.0)
    fleet = None
    load = None
    try:
        fleet = Fleet(d, vendor, ledger)
        paths = [f"/v1/items/{n}" for n in range(1, 51)]
        load = Load([r.port for r in fleet.replicas], rates, paths,
                    workers_for(args.rate, latency_ms / 1000.0))
        time.sleep(args.warmup)
        t_revoke = time.monotonic()
        vendor.set_accepted({"standby"})
        time.sleep(args.restart_after)
        t_kill, t_spawn, t_ready = fleet.restart(3)
        time.sleep(max(0.5, args.outage - args.restart_after))
        results = load.stop()
        load = None
        time.sleep(0.5 + 2 * latency_ms / 1000.0)  # the last answers reach the log
        reqs = vendor.requests()
        counts = fleet.ledger_counts()
        fleet.evidence()
    finally:
        if load is not None:
            load.stop()
        if fleet is not None:
            fleet.close()
        vendor.close()

    prim = [q for q in reqs if q.token == "primary" and not q.probe]
    # Replica 3's first process (until it was killed) and the restarted one.
    def first_life(q):
        return q.replica != 3 or q.t_arr < t_kill
    dead = [q for q in prim if q.status == 401 and first_life(q)]
    dead_restart = [q for q in prim if q.status == 401 and q.replica == 3 and q.t_arr >= t_spawn]
    if not dead:
        raise RuntimeError("no dead-token request at all: the revocation was not seen")
    first = min(dead, key=lambda q: q.t_resp)
    f_t = first.t_resp

    def in_flight(at, replica=None):
        return sum(1 for q in prim if q.t_arr < at < q.t_resp and first_life(q)
                   and (replica is None or q.replica == replica))
    per = {}
    for i in range(N_REPLICAS):
        mine = [q for q in dead if q.replica == i]
        own_first = min((q.t_resp for q in mine), default=None)
        last = max((q.t_arr for q in mine), default=None)
        per[i] = {
            "dead": len(mine),
            "in_flight_at_fleet_first": in_flight(f_t, i),
            "in_flight_at_own_first": in_flight(own_first, i) if own_first else 0,
            "last_dead_after_first_ms": round((last - f_t) * 1000) if last else None,
        }
    out = {
        "latency_ms": latency_ms, "ledger": ledger, "rates": rates,
        "dead_fleet": len(dead), "in_flight_fleet": in_flight(f_t),
        "first_refusal_after_revoke_ms": round((f_t - t_revoke) * 1000),
        "first_replica": first.replica, "per": per,
        "restart_dead": len(dead_restart),
        "restart_ready_s": round(t_ready - t_kill, 2),
        "restart_requests": sum(1 for q in reqs if q.replica == 3 and q.t_arr >= t_spawn),
        "client_statuses": statuses(results), "ledger_counts": counts,
    }
    print(f"  first refusal {out['first_refusal_after_revoke_ms']} ms after the revocation, "
          f"at replica {first.replica}; fleet dead-token requests {len(dead)}, "
          f"in flight at the first refusal {out['in_flight_fleet']}")
    for i, p in per.items():
        print(f"    r{i}: dead {p['dead']}, in flight at the fleet's first refusal "
              f"{p['in_flight_at_fleet_first']}, at its own first refusal "
              f"{p['in_flight_at_own_first']}, last dead-token request "
              f"{p['last_dead_after_first_ms']} ms after the fleet's first refusal")
    print(f"  restarted r3 (ready {out['restart_ready_s']} s after SIGKILL): "
          f"{out['restart_dead']} dead-token requests of {out['restart_requests']} vendor requests")
    print(f"  client statuses {out['client_statuses']}; ledger metrics {counts}", flush=True)
    return out


def first_fresh(results, since, replica):
    ts = [r[2] for r in results if r[0] == replica and r[1] >= since and r[3] == 200 and not r[4]]
    return min(ts) if ts else None


def recovery(base, args, probe, ledger):
    """Scenario 3 (and 5 with the probe): both tokens dead, then the primary
    accepted again; probes per minute before the outage."""
    name = f"recovery-{'probe' if probe else 'noprobe'}-{'on' if ledger else 'off'}"
    print(f"\n## {name}: {args.recovery_rate:g} req/s per replica, "
          f"{'probe every %gs' % args.probe_interval if probe else 'no probe'}, "
          f"{mode_name(ledger)}", flush=True)
    d = new_dir(base, name)
    vendor = Vendor(N_REPLICAS, 0.0)
    fleet = None
    load = None
    out = {"probe": probe, "ledger": ledger}
    try:
        fleet = Fleet(d, vendor, ledger, probe_s=args.probe_interval if probe else None)
        paths = [f"/v1/items/{n}" for n in range(1, 21)]
        load = Load([r.port for r in fleet.replicas], args.recovery_rate, paths,
                    workers_for(args.recovery_rate, 0.0))
        t_a = time.monotonic()
        time.sleep(args.probe_seconds if probe else args.warmup)
        t_b = time.monotonic()
        reqs = vendor.requests()
        if probe:
            n = {tok: sum(1 for q in reqs if q.probe and q.token == tok and t_a <= q.t_arr < t_b)
                 for tok in ("primary", "standby")}
            per_min = {tok: round(v * 60 / (t_b - t_a), 1) for tok, v in n.items()}
            out["probes_per_min"] = per_min
            out["probes_per_min_fleet"] = round(sum(per_min.values()), 1)
            out["probe_window_s"] = round(t_b - t_a, 1)
            print(f"  healthy, {t_b - t_a:.1f} s: probes per minute for the fleet {per_min} "
                  f"(one per token per interval: {60 / args.probe_interval:.0f} each)")
        cycles = args.recovery_cycles if probe else 1
        samples = []
        dead_probe = dead_req = 0
        dead_span = 0.0
        late_degraded = 0
        for c in range(cycles):
            # Both tokens dead: every replica serves copies.
            t_dead = time.monotonic()
            vendor.set_accepted(set())

            def all_stale():
                res = load.snapshot()
                for i in range(N_REPLICAS):
                    mine = [r for r in res if r[0] == i and r[1] > t_dead + 0.2]
                    if not mine or not (mine[-1][3] == 200 and mine[-1][4]):
                        return False
                return True
            wait_until("every replica serving copies", all_stale, 15, 0.1)
            t_stale = time.monotonic()
            time.sleep(args.dead_for)
            t_ok = time.monotonic()
            vendor.set_accepted({"primary"})
            dead_reqs = [q for q in vendor.requests() if t_stale <= q.t_arr < t_ok]
            dead_probe += sum(1 for q in dead_reqs if q.probe)
            dead_req += sum(1 for q in dead_reqs if not q.probe)
            dead_span += t_ok - t_stale
            if args.trace:
                for q in dead_reqs:
                    print(f"    trace: +{q.t_arr - t_stale:6.3f}s r{q.replica} {q.token} "
                          f"{'probe-UA' if q.probe else 'client'} {q.path} {q.status}")

            def all_fresh():
                res = load.snapshot()
                return all(first_fresh(res, t_ok, i) is not None for i in range(N_REPLICAS))
            try:
                wait_until("every replica answering fresh", all_fresh, args.recovery_deadline,
                           0.05)
            except RuntimeError as e:
                print(f"  {e}")
            time.sleep(0.5)
            res = load.snapshot()
            fresh = {i: first_fresh(res, t_ok, i) for i in range(N_REPLICAS)}
            secs = {i: (round(t - t_ok, 2) if t is not None else None) for i, t in fresh.items()}
            late_degraded += sum(1 for r in res if r[1] >= t_ok and fresh.get(r[0]) is not None
                                 and r[1] > fresh[r[0]] and r[4])
            known = [v for v in secs.values() if v is not None]
            samples.append({"per_replica": secs,
                            "max": max(known) if len(known) == N_REPLICAS else None,
                            "min": min(known) if known else None})
            print(f"  cycle {c + 1}: all stale {t_stale - t_dead:.2f} s after both tokens were "
                  f"revoked; {t_ok - t_stale:.1f} s later the vendor accepts the primary again: "
                  f"first fresh answer per replica after {secs} s", flush=True)
        results = load.stop()
        load = None
        out["dead_per_min"] = {"probe": round(dead_probe * 60 / dead_span, 1),
                               "request": round(dead_req * 60 / dead_span, 1)}
        out["recovery"] = samples
        maxes = [x["max"] for x in samples]
        out["recovery_max_s"] = None if None in maxes else max(maxes)
        out["recovery_min_s"] = min((x["min"] for x in samples if x["min"] is not None),
                                    default=None)
        out["recovery_maxes"] = maxes
        out["ledger_counts"] = fleet.ledger_counts()
        print(f"  both dead, {dead_span:.1f} s in all: vendor requests carrying a dead token per "
              f"minute {out['dead_per_min']} (probe: User-Agent graceway-probe, probes and "
              f"background trials); every replica fresh after {maxes} s; degraded answers "
              f"after a replica's first fresh one: {late_degraded}")
        print(f"  client statuses {statuses(results)}; ledger metrics {out['ledger_counts']}",
              flush=True)
        fleet.evidence()
    finally:
        if load is not None:
            load.stop()
        if fleet is not None:
            fleet.close()
        vendor.close()
    return out


def quota(base, args, ledger):
    """Scenario 4: a per-token quota at the vendor, failover_on 429."""
    name = f"quota-{'on' if ledger else 'off'}"
    rate = args.quota_offered / args.quota_window / N_REPLICAS
    print(f"\n## {name}: {args.quota_limit} requests per {args.quota_window:g} s per token, "
          f"{args.quota_offered} offered per window ({rate:g} req/s per replica), "
          f"{mode_name(ledger)}", flush=True)
    d = new_dir(base, name)
    vendor = Vendor(N_REPLICAS, 0.0)
    fleet = None
    load = None
    try:
        fleet = Fleet(d, vendor, ledger, failover_429=True)
        # Windows start on a whole Unix second (Retry-After is in seconds).
        epoch = math.ceil(time.time()) + 0.0
        with vendor.lock:
            vendor.quota = (args.quota_limit, args.quota_window, epoch)
        time.sleep(max(0.0, epoch - time.time()))
        paths = [f"/v1/items/{n}" for n in range(1, 21)]
        load = Load([r.port for r in fleet.replicas], rate, paths, workers_for(rate, 0.0))
        wall_to_mono = time.monotonic() - time.time()
        time.sleep(args.quota_windows * args.quota_window + 0.3)
        results = load.stop()
        load = None
        reqs = vendor.requests()
        counts = fleet.ledger_counts()
        fleet.evidence()
    finally:
        if load is not None:
            load.stop()
        if fleet is not None:
            fleet.close()
        vendor.close()
    rows = []
    for w in range(args.quota_windows):
        lo = epoch + w * args.quota_window + wall_to_mono
        hi = lo + args.quota_window
        inw = [q for q in reqs if lo <= q.t_arr < hi]
        ok_p = sum(1 for q in inw if q.token == "primary" and q.status == 200)
        r429 = [q for q in inw if q.status == 429 and q.token == "primary"]
        per = [sum(1 for q in r429 if q.replica == i) for i in range(N_REPLICAS)]
        rows.append({"window": w, "primary_200": ok_p, "exhausted": ok_p >= args.quota_limit,
                     "429": len(r429), "429_per_replica": per,
                     "standby_200": sum(1 for q in inw if q.token == "standby" and q.status == 200),
                     "standby_429": sum(1 for q in inw if q.token == "standby"
                                        and q.status == 429)})
    ex = [r for r in rows if r["exhausted"]]
    out = {"ledger": ledger, "windows": rows, "exhaustions": len(ex),
           "per_exhaustion": [r["429"] for r in ex],
           "mean_429": round(sum(r["429"] for r in ex) / len(ex), 2) if ex else None,
           "max_429": max((r["429"] for r in ex), default=None),
           "client_statuses": statuses(results), "ledger_counts": counts}
    for r in rows:
        print(f"  window {r['window']}: primary 200s {r['primary_200']}, primary 429s "
              f"{r['429']} (per replica {r['429_per_replica']}), standby 200s "
              f"{r['standby_200']}, standby 429s {r['standby_429']}")
    print(f"  429s per exhaustion {out['per_exhaustion']} (mean {out['mean_429']}); "
          f"client statuses {out['client_statuses']}; ledger metrics {counts}", flush=True)
    return out


# ---------------------------------------------------------------- report

def fmt_per(per, key):
    return "/".join(str(per[i][key]) for i in range(N_REPLICAS))


def report(res, args):
    rows = []

    def pair(key, label, goal, cell, met):
        off, on = res.get((key, False)), res.get((key, True))
        if off is None and on is None:
            return
        rows.append((label, cell(off) if off else "-", cell(on) if on else "-", goal,
                     met(on) if on else "-"))

    revs = [(("revocation", lat), f"vendor {lat} ms") for lat in args.latencies]
    if args.uneven_latency:
        revs.append((("revocation-uneven", args.uneven_latency),
                     f"vendor {args.uneven_latency} ms, r0 {args.rate:g} req/s, "
                     f"r1-r3 {args.quiet_rate:g} req/s"))
    for k, lat in revs:
        pair(k, f"revocation, {lat}: dead-token requests, fleet (r0/r1/r2/r3)",
             "<= in flight at first refusal + 1",
             lambda o: f"{o['dead_fleet']} ({fmt_per(o['per'], 'dead')})",
             lambda o: "yes" if o["dead_fleet"] <= o["in_flight_fleet"] + 1 else
             f"no (+{o['dead_fleet'] - o['in_flight_fleet'] - 1})")
        pair(k, f"revocation, {lat}: in flight at the first refusal, fleet (r0/r1/r2/r3)",
             "", lambda o: f"{o['in_flight_fleet']} ({fmt_per(o['per'], 'in_flight_at_fleet_first')})",
             lambda o: "")
        pair(k, f"revocation, {lat}: last dead-token request after the first refusal, "
                "ms (r0/r1/r2/r3)", "",
             lambda o: "/".join(str(o["per"][i]["last_dead_after_first_ms"])
                                for i in range(N_REPLICAS)), lambda o: "")
        pair(k, f"replica restarted mid-outage ({lat}): dead-token requests", "0",
             lambda o: str(o["restart_dead"]),
             lambda o: "yes" if o["restart_dead"] == 0 else "no")
    for probe in (True, False):
        k = ("recovery", probe)
        what = f"probe {args.probe_interval:g} s" if probe else "no probe"
        pair(k, f"recovery ({what}): s until every replica answers fresh, worst of "
                f"{args.recovery_cycles if probe else 1} (each; first replica)",
             "<= 2 s",
             lambda o: (f"{o['recovery_max_s']} ({', '.join(map(str, o['recovery_maxes']))}; "
                        f"{o['recovery_min_s']})"
                        if o["recovery_max_s"] is not None
                        else f"> {args.recovery_deadline:g} ({o['recovery_min_s']})"),
             lambda o: ("yes" if o["recovery_max_s"] is not None and o["recovery_max_s"] <= 2
                        else "no"))
        if probe:
            pair(k, f"probes per minute, fleet, healthy (primary/standby), {what}",
                 f"{60 / args.probe_interval:.0f} per token",
                 lambda o: (f"{o['probes_per_min_fleet']} ({o['probes_per_min']['primary']}/"
                            f"{o['probes_per_min']['standby']})"),
                 lambda o: ("yes" if max(o["probes_per_min"].values())
                            <= 1.1 * 60 / args.probe_interval else "no"))
        pair(k, f"both tokens dead ({what}): requests carrying a dead token per minute "
                "(probe UA + client requests)", "",
             lambda o: f"{o['dead_per_min']['probe']} + {o['dead_per_min']['request']}",
             lambda o: "")
    pair("quota", f"quota: primary 429s per exhaustion, fleet (mean; each)", "<= 2",
         lambda o: f"{o['mean_429']} ({', '.join(map(str, o['per_exhaustion']))})",
         lambda o: "yes" if o["max_429"] is not None and o["max_429"] <= 2 else "no")

    print("\n| measurement | ledger off (before) | ledger on (after) | goal | met (after) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main():
    global GRACEWAY
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=50, help="revocation: req/s per replica")
    ap.add_argument("--latencies", default="20,200", help="revocation: vendor latencies, ms")
    ap.add_argument("--uneven-latency", type=int, default=20,
                    help="revocation with uneven traffic (r0 --rate, the others --quiet-rate) "
                         "at this vendor latency, ms; 0: skip")
    ap.add_argument("--quiet-rate", type=float, default=2)
    ap.add_argument("--warmup", type=float, default=2, help="seconds of healthy traffic first")
    ap.add_argument("--outage", type=float, default=5, help="revocation: seconds after it")
    ap.add_argument("--restart-after", type=float, default=2,
                    help="revocation: seconds into the outage when replica 3 is restarted")
    ap.add_argument("--recovery-rate", type=float, default=20, help="recovery: req/s per replica")
    ap.add_argument("--dead-for", type=float, default=8,
                    help="recovery: seconds of stale answers before the vendor takes the primary")
    ap.add_argument("--probe-interval", type=float, default=2)
    ap.add_argument("--probe-seconds", type=float, default=30,
                    help="seconds of healthy traffic over which probes are counted")
    ap.add_argument("--recovery-deadline", type=float, default=40)
    ap.add_argument("--recovery-cycles", type=int, default=3,
                    help="recovery with the probe: outage and recovery this many times")
    ap.add_argument("--trace", action="store_true",
                    help="recovery: print every vendor request carrying a dead token")
    ap.add_argument("--quota-limit", type=int, default=100)
    ap.add_argument("--quota-window", type=float, default=10)
    ap.add_argument("--quota-offered", type=int, default=150, help="per window, whole fleet")
    ap.add_argument("--quota-windows", type=int, default=3)
    ap.add_argument("--oauth2-lifetime", type=int, default=10,
                    help="oauth2: the token's expires_in, s (refreshed at half)")
    ap.add_argument("--oauth2-seconds", type=float, default=30, help="oauth2: seconds measured")
    ap.add_argument("--oauth2-rate", type=float, default=5, help="oauth2: req/s per replica")
    ap.add_argument("--graceway", default=GRACEWAY, help="the binary (default: the release build)")
    ap.add_argument("--only", default="revocation,recovery,quota,oauth2")
    ap.add_argument("--modes", default="off,on", help="ledger off, on, or both")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    args.latencies = [int(x) for x in args.latencies.split(",") if x]
    only = set(args.only.split(","))
    modes = [m == "on" for m in args.modes.split(",")]

    if not shutil.which("redis-server"):
        sys.exit("redis-server not found")
    GRACEWAY = args.graceway
    if not os.access(GRACEWAY, os.X_OK):
        sys.exit(f"{GRACEWAY} missing: cargo build --release --bin graceway")

    base = workdir("graceway-tokens-", args.keep)
    # The whole script, whatever happens: the scenarios' own time plus margin.
    budget = ((len(args.latencies) + 1) * (args.warmup + args.outage + 15)
              + (args.recovery_cycles + 1) * (args.dead_for + args.recovery_deadline + 5)
              + args.probe_seconds + 30
              + args.quota_windows * args.quota_window + 20
              + args.oauth2_seconds + 40)
    signal.alarm(int(len(modes) * budget) + 60)

    t0 = time.monotonic()
    res = {}
    for ledger in modes:
        if "revocation" in only:
            for lat in args.latencies:
                res[(("revocation", lat), ledger)] = revocation(base, args, lat, ledger)
            if args.uneven_latency:
                res[(("revocation-uneven", args.uneven_latency), ledger)] = revocation(
                    base, args, args.uneven_latency, ledger, uneven=True)
        if "recovery" in only:
            for probe in (True, False):
                res[(("recovery", probe), ledger)] = recovery(base, args, probe, ledger)
        if "quota" in only:
            res[("quota", ledger)] = quota(base, args, ledger)
        if "oauth2" in only:
            res[("oauth2", ledger)] = fleet_oauth2.scenario(base, args, ledger, Load)
    if any(k != "oauth2" for (k, _) in res):
        report(res, args)
    if "oauth2" in only:
        fleet_oauth2.report({share: v for (k, share), v in res.items() if k == "oauth2"})
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"scenario": str(k), "ledger": ledger, **v}
                       for (k, ledger), v in res.items()], f, indent=1, default=str)
    print(f"\ncommand: {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}")
    print(f"wall time: {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
