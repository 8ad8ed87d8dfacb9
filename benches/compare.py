#!/usr/bin/env python3
"""graceway beside nginx, HAProxy, Varnish and a bare Pingora proxy.

Run through benches/compare.sh, which installs the tools and builds the
binaries; this file starts every process, measures and prints markdown.

  compare.py --graceway BIN --bare BIN --oha BIN --dir DIR SECONDS ROUNDS

Everything listens on 127.0.0.1 (ephemeral ports). Every process started
here is stopped on exit; compare.sh also kills the whole process group.
"""
import argparse
import atexit
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

TOKEN = "bench-token"
TOKEN2 = "bench-token-2"  # the rotated token of the reload storm
AWS_KEY_ID = "AKIDBENCHEXAMPLE"  # the SigV4 row's credential set (the upstream checks the key id only)
AWS_SECRET = "bench/secret+access+key/EXAMPLEKEY0000000000"
BODY = ('{"name":"smile","emoji":"\\ud83d\\ude04","tags":["happy","joy","grin"],'
        '"category":"smileys","version":"15.0","description":"smiling face with open mouth and smiling eyes"}')
CONNS = 32
TICK = os.sysconf("SC_CLK_TCK")
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
VARNISHD = "/usr/sbin/varnishd"

A = None          # parsed arguments
W = None          # work dir
PROCS = []        # (name, Popen) of everything started


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def descendants(root):
    """root and all its descendant pids (from /proc/*/stat)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def start(name, argv, **kw):
    logf = open(os.path.join(W, f"{name}.log"), "wb")
    p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    PROCS.append((name, p))
    return p


def stop(p, sig=signal.SIGTERM, wait=5):
    if p.poll() is not None:
        return
    tree = descendants(p.pid)
    try:
        p.send_signal(sig)
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:  # our process and its children, by id
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        p.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def cleanup():
    for name, p in reversed(PROCS):
        stop(p, signal.SIGINT if name.startswith(("gw", "bare")) else signal.SIGTERM, wait=3)


def wait_port(port, timeout=30, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process for port {port} exited (rc {proc.returncode}); see {W}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Headers(dict):
    """Response headers by name, any case (graceway writes the names it
    adds to a copy lower-case, as HTTP/1.1 allows)."""

    def __init__(self, msg):
        super().__init__((k.lower(), v) for k, v in msg.items())

    def __contains__(self, k):
        return super().__contains__(k.lower())

    def get(self, k, default=None):
        return super().get(k.lower(), default)


def get(port, path, headers=None, timeout=5):
    """(status, headers, body) of one GET; status 0 on a transport error."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, Headers(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, Headers(e.headers), e.read()
    except (OSError, urllib.error.URLError) as e:
        return 0, Headers({}), str(e).encode()


def cpu_ticks(pids):
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        t += int(fields[11]) + int(fields[12])  # utime, stime
    return t


def mem_kb(pids, key):
    tot = 0
    for pid in pids:
        for fname in ("status", "smaps_rollup"):
            try:
                with open(f"/proc/{pid}/{fname}") as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            tot += int(line.split()[1])
            except OSError:
                pass
    return tot


# ------------------------------------------------------------------- load

def run_wrk(port, path, headers, dur, pids):
    argv = ["wrk", "-t1", f"-c{CONNS}", f"-d{dur}s", f"http://127.0.0.1:{port}{path}"]
    for h in headers:
        argv += ["-H", h]
    c0 = cpu_ticks(pids)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=dur + 30).stdout
    c1 = cpu_ticks(pids)
    r = {"rps": 0.0, "requests": 0, "non2xx": 0, "sockerr": 0, "cpu_ticks": c1 - c0}
    for line in out.splitlines():
        s = line.split()
        if line.startswith("Requests/sec:"):
            r["rps"] = float(s[1])
        elif " requests in " in line:
            r["requests"] = int(s[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            r["non2xx"] = int(s[-1])
        elif line.strip().startswith("Socket errors:"):
            # Socket errors: connect 0, read 0, write 0, timeout 0
            r["sockerr"] = sum(int(x.strip(",")) for x in s[3::2])
    r["cpu_us"] = (r["cpu_ticks"] / TICK * 1e6 / r["requests"]) if r["requests"] else 0.0
    return r


def run_oha(port, path, headers, dur, rate):
    argv = [A.oha, "-z", f"{dur}s", "-q", str(rate), "--latency-correction", "-w",
            "-c", str(CONNS), "--no-tui", "--output-format", "json", "--worker-threads", "1",
            f"http://127.0.0.1:{port}{path}"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=dur + 60).stdout
    try:
        d = json.loads(out)
    except json.JSONDecodeError:
        return {"p50": float("nan"), "p99": float("nan"), "lat_fail": -1, "lat_rps": 0}
    lp = d.get("latencyPercentiles") or {}
    codes = d.get("statusCodeDistribution") or {}
    errs = d.get("errorDistribution") or {}
    fail = sum(v for k, v in codes.items() if not k.startswith("2"))
    fail += sum(v for k, v in errs.items() if "deadline" not in k)
    return {"p50": (lp.get("p50") or float("nan")) * 1e3, "p99": (lp.get("p99") or float("nan")) * 1e3,
            "lat_fail": fail, "lat_rps": d["summary"].get("requestsPerSec", 0)}


# ------------------------------------------------------------ configs

def nginx_common(name):
    d = os.path.join(W, name)
    os.makedirs(d, exist_ok=True)
    return f"""daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 4096; }}
"""


def nginx_http_common(name):
    d = os.path.join(W, name)
    return f"""  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
"""


def upstream_nginx(name, port, h2_port=None):
    """The external API: one process, answers only the expected tokens
    (and SigV4 signatures by the bench's key id); with `h2_port`, the same
    API over HTTP/2 with prior knowledge (h2c) there."""
    h2 = f"    listen 127.0.0.1:{h2_port} http2;\n" if h2_port else ""
    conf = nginx_common(name) + f"""worker_processes 1;
master_process off;
http {{
{nginx_http_common(name)}
  map $http_authorization $auth {{
    "Bearer {TOKEN}" ok;
    "Bearer {TOKEN2}" ok;
    "Bearer revoked-soft" soft;
    "~^AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/" ok;
    default bad;
  }}
  server {{
    listen 127.0.0.1:{port};
{h2}    root {W}/www;
    default_type application/json;
    add_header Cache-Control "max-age=60" always;
    location / {{
      # A revoked token, said without an error code: graceway suspects it
      # (on one path it is never confirmed), so every request goes upstream.
      if ($auth = soft) {{ return 401 '{{"error":"unauthorized"}}'; }}
      if ($auth = bad) {{
        add_header WWW-Authenticate 'Bearer error="invalid_token"' always;
        return 401 '{{"error":"invalid_token"}}';
      }}
      return 200 '{BODY}';
    }}
    location /big/ {{
      if ($auth != ok) {{ return 401 '{{"error":"invalid_token"}}'; }}
      try_files /big.json =404;
    }}
  }}
}}
"""
    path = os.path.join(W, f"{name}.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = start(name, [NGINX, "-c", path, "-p", os.path.join(W, name)])
    wait_port(port, proc=p)
    return p


def proxy_nginx(name, port, cache_port, api, workers):
    cache = ""
    if cache_port:
        cache = f"""
  proxy_cache_path {W}/{name}/cache levels=1:2 keys_zone=c:10m max_size=100m inactive=10m use_temp_path=off;
  server {{
    listen 127.0.0.1:{cache_port};
    location / {{
      proxy_cache c;
      proxy_cache_valid 200 1m;
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {TOKEN}";
      add_header X-Cache-Status $upstream_cache_status;
    }}
  }}"""
    conf = nginx_common(name) + f"""worker_processes {workers};
master_process on;
http {{
{nginx_http_common(name)}
  upstream api {{ server 127.0.0.1:{api}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {TOKEN}";
    }}
  }}{cache}
}}
"""
    path = os.path.join(W, f"{name}.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = start(name, [NGINX, "-c", path, "-p", os.path.join(W, name)])
    wait_port(port, proc=p)
    if cache_port:
        wait_port(cache_port, proc=p)
    return p


def haproxy(name, port, api):
    conf = f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  http-request set-header Authorization "Bearer {TOKEN}"
  server api 127.0.0.1:{api}
"""
    path = os.path.join(W, f"{name}.cfg")
    with open(path, "w") as f:
        f.write(conf)
    p = start(name, [HAPROXY, "-db", "-f", path])
    wait_port(port, proc=p)
    return p


def varnish(name, port, mgmt, api):
    vcl = f"""vcl 4.1;
backend api {{
  .host = "127.0.0.1";
  .port = "{api}";
  .probe = {{
    .request = "GET /v1/e HTTP/1.1" "Host: api" "Authorization: Bearer {TOKEN}" "Connection: close";
    .interval = 200ms; .timeout = 150ms; .window = 3; .threshold = 2; .initial = 2;
  }}
}}
sub vcl_recv {{ return (hash); }}
sub vcl_backend_fetch {{ set bereq.http.Authorization = "Bearer {TOKEN}"; }}
sub vcl_backend_response {{
  if (beresp.status >= 500 && bereq.is_bgfetch) {{ return (abandon); }}
  set beresp.ttl = 1s;
  set beresp.grace = 1h;
}}
sub vcl_backend_error {{ if (bereq.is_bgfetch) {{ return (abandon); }} }}
# Fresh or stale: deliver what is stored (grace; the backend is sick).
sub vcl_hit {{ return (deliver); }}
"""
    d = os.path.join(W, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(W, f"{name}.vcl"), "w") as f:
        f.write(vcl)
    with open(os.path.join(W, f"{name}.secret"), "w") as f:
        f.write(os.urandom(16).hex())
    p = start(name, [VARNISHD, "-F", "-j", "none", "-n", d, "-a", f"127.0.0.1:{port}",
                     "-T", f"127.0.0.1:{mgmt}", "-S", os.path.join(W, f"{name}.secret"),
                     "-f", os.path.join(W, f"{name}.vcl"), "-s", "malloc,64m",
                     "-p", "thread_pools=1", "-p", "thread_pool_min=50", "-p", "thread_pool_max=500"])
    wait_port(port, timeout=60, proc=p)
    return p


def varnish_backends(name, mgmt):
    r = subprocess.run(["varnishadm", "-T", f"127.0.0.1:{mgmt}", "-S", os.path.join(W, f"{name}.secret"),
                        "backend.list"], capture_output=True, text=True, timeout=10)
    return r.stdout


def gw_config(name, port, admin, upstreams, threads=1, top=""):
    """upstreams: (name, port, path prefix, token file[, extra]); extra
    may hold `credentials` (the whole map, instead of the bearer token
    file) and `http` (upstreams[].http). Collapsed forwarding is off
    (`cache.coalesce.wait: 0s`) unless `top` sets `cache`: nginx's
    proxy_pass sends every request too, and with 32 connections asking for
    one path a coalescing proxy would answer most of them from the lead's
    copy (benches/vendor_calls.py measures that)."""
    if "cache:" not in top:
        top = "cache: { coalesce: { wait: 0s } }\n" + top
    ups = ""
    for uname, api, prefix, token_file, *extra in upstreams:
        extra = extra[0] if extra else {}
        creds = extra.get("credentials") or f'{{ tokens: [ {{ file: "{token_file}" }} ] }}'
        http = f"    http: {extra['http']}\n" if "http" in extra else ""
        ups += f"""  - name: {uname}
    url: "http://127.0.0.1:{api}"
    match: {{ path_prefix: "{prefix}" }}
{http}    credentials: {creds}
"""
    conf = f"""listen: "127.0.0.1:{port}"
admin: {{ listen: "127.0.0.1:{admin}" }}
pid_file: "{W}/{name}.pid"
server: {{ threads: {threads}, graceful_shutdown_timeout: 1s }}
log: {{ level: warn }}
upstreams:
{ups}{top}"""
    path = os.path.join(W, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(conf)
    return path


def write_token(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)


def graceway(name, port, admin, upstreams, threads=1, top=""):
    path = gw_config(name, port, admin, upstreams, threads, top)
    chk = subprocess.run([A.graceway, "check", "-c", path], capture_output=True, text=True, timeout=30)
    if chk.returncode != 0:
        raise SystemExit(f"graceway check -c {path} failed:\n{chk.stdout}{chk.stderr}")
    p = start(name, [A.graceway, "run", "-c", path])
    wait_port(port, proc=p)
    end = time.time() + 30
    while time.time() < end and get(admin, "/readyz")[0] != 200:
        time.sleep(0.1)
    return p


def gw_status(admin):
    s, _, b = get(admin, "/status")
    return json.loads(b) if s == 200 else {}


def bare(name, port, api, threads=1, respond=None):
    d = os.path.join(W, name)
    os.makedirs(d, exist_ok=True)
    extra = ["--respond", respond] if respond else []
    p = start(name, [A.bare, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{api}",
                     "--token", TOKEN, "--threads", str(threads), "--dir", d] + extra)
    wait_port(port, proc=p)
    return p


# ------------------------------------------------------------------ main

class Target:
    def __init__(self, key, row, label, proc, port, path="/v1/e", headers=(), before=None, during=None,
                 degraded=False):
        self.key, self.row, self.label = key, row, label
        self.proc, self.port, self.path, self.headers = proc, port, path, list(headers)
        self.before = before      # called before each measured run
        self.during = during      # called with the run's duration, in a thread, during each run
        self.degraded = degraded  # answers must carry X-Graceway-Degraded
        self.sat, self.lat = [], []
        self.idle_rss = self.idle_pss = None


def storm(pid, token_file, count, dur, stats):
    """count SIGHUPs spread over dur seconds; every other one after a token rotation."""
    t0 = time.monotonic()
    cur = TOKEN
    for i in range(count):
        delay = t0 + i * dur / count - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - t0 > dur + 5:
            break
        if i % 2 == 0:
            cur = TOKEN2 if cur == TOKEN else TOKEN
            write_token(token_file, cur)
            stats["rotations"] += 1
        try:
            os.kill(pid, signal.SIGHUP)
            stats["sighups"] += 1
        except OSError:
            break


def main():
    global A, W
    ap = argparse.ArgumentParser()
    ap.add_argument("--graceway", required=True)
    ap.add_argument("--bare", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("seconds", type=int)
    ap.add_argument("rounds", type=int)
    A = ap.parse_args()
    W = A.dir
    dur, rounds = A.seconds, A.rounds
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    t_start = time.time()

    os.makedirs(f"{W}/www", exist_ok=True)
    big = '{"items":[' + ",".join('{"id":%d,"pad":"%s"}' % (i, "x" * 380) for i in range(100)) + "]}"
    with open(f"{W}/www/big.json", "w") as f:
        f.write(big)

    (P_API, P_API2, P_NGX, P_NGXC, P_NGX2, P_HAP, P_VAR, P_VARM, P_BARE,
     P_GW, P_GWA, P_GWS, P_GWSA, P_GWU, P_GWUA, P_GWR, P_GWRA, P_GW2, P_GW2A, P_GWM, P_GWMA, P_BARER,
     P_API_H2, P_GWSIG, P_GWSIGA, P_GWH2, P_GWH2A) = free_ports(27)

    log("starting upstreams, proxies and graceway instances")
    api = upstream_nginx("api", P_API, P_API_H2)  # the API everyone proxies to (and over h2c)
    api2 = upstream_nginx("api-doomed", P_API2)   # the API of the stale rows, killed after filling
    ngx = proxy_nginx("nginx", P_NGX, P_NGXC, P_API, 1)
    ngx2 = proxy_nginx("nginx2", P_NGX2, None, P_API, 2)
    hap = haproxy("haproxy", P_HAP, P_API)
    var = varnish("varnish", P_VAR, P_VARM, P_API2)
    bp = bare("bare", P_BARE, P_API)
    with open(f"{W}/www/body.json", "w") as f:
        f.write(BODY)
    bpr = bare("bare-respond", P_BARER, P_API, respond=f"{W}/www/body.json")
    tok = {}
    for n in ("gw", "gw-stale", "gw-soft", "gw-hard", "gw-reload", "gw2", "gw-mem"):
        tok[n] = f"{W}/{n}.token"
        write_token(tok[n], TOKEN)
    gw = graceway("gw", P_GW, P_GWA, [("api", P_API, "/", tok["gw"])])
    gws = graceway("gw-stale", P_GWS, P_GWSA, [("api", P_API2, "/", tok["gw-stale"])])
    # The soft row's token stays suspect: a bare 401 on every request
    # would otherwise confirm the rejection after `suspect_after` of them.
    soft = {"credentials": f'{{ suspect_after: 4000000000, tokens: [ {{ file: "{tok["gw-soft"]}" }} ] }}'}
    gwu = graceway("gw-auth", P_GWU, P_GWUA, [("soft", P_API, "/soft/", tok["gw-soft"], soft),
                                              ("hard", P_API, "/hard/", tok["gw-hard"])])
    gwr = graceway("gw-reload", P_GWR, P_GWRA, [("api", P_API, "/", tok["gw-reload"])])
    gw2 = graceway("gw2", P_GW2, P_GW2A, [("api", P_API, "/", tok["gw2"])], threads=2)
    gwm = graceway("gw-mem", P_GWM, P_GWMA, [("api", P_API, "/", tok["gw-mem"])],
                   top="cache: { memory_bytes: 64MiB, coalesce: { wait: 0s } }\n")
    for part, value in (("aws_key_id", AWS_KEY_ID), ("aws_secret", AWS_SECRET)):
        write_token(f"{W}/{part}", value)
    sigv4 = (f'{{ sigv4: {{ region: us-east-1, service: execute-api }}, tokens: [ {{ aws: {{ '
             f'access_key_id: {{ file: "{W}/aws_key_id" }}, secret_access_key: {{ file: "{W}/aws_secret" }} }} }} ] }}')
    gwsig = graceway("gw-sigv4", P_GWSIG, P_GWSIGA, [("api", P_API, "/", None, {"credentials": sigv4})])
    tok["gw-h2"] = f"{W}/gw-h2.token"
    write_token(tok["gw-h2"], TOKEN)
    gwh2 = graceway("gw-h2", P_GWH2, P_GWH2A, [("api", P_API_H2, "/", tok["gw-h2"], {"http": "h2"})])
    time.sleep(1)

    notes = []

    def warm_cache():
        get(P_NGXC, "/v1/e")
        s, h, _ = get(P_NGXC, "/v1/e")
        if h.get("X-Cache-Status") != "HIT":
            notes.append(f"nginx proxy_cache: warm-up answered {s} {h.get('X-Cache-Status')}")

    reload_stats = {"sighups": 0, "rotations": 0}

    def reload_storm(d):
        storm(gwr.pid, tok["gw-reload"], 1000, d, reload_stats)

    auth = ("Authorization: Bearer " + TOKEN,)
    T = [
        Target("direct", "1", "direct to the upstream (nginx `return 200`, floor)", api, P_API, headers=auth),
        Target("nginx", "2", "nginx proxy_pass + keepalive", ngx, P_NGX),
        Target("haproxy", "3", "HAProxy set-header + http-reuse always", hap, P_HAP),
        Target("bare", "4", "bare Pingora (examples/bare_pingora)", bp, P_BARE),
        Target("gw", "5", "graceway pass-through", gw, P_GW),
        Target("gw_stale", "6a", "graceway stale, health breaker open (upstream killed)", gws, P_GWS,
               degraded=True),
        Target("nginx_cache", "6b", "nginx proxy_cache hit", ngx, P_NGXC, before=warm_cache),
        Target("varnish", "6c", "Varnish grace, backend sick", var, P_VAR),
        Target("bare_respond", "6d", "bare Pingora answering every request from `request_filter` (`--respond`: the framework's floor for an answer from memory)", bpr, P_BARER),
        Target("gw_401", "7a", "graceway stale on upstream 401, auth breaker not open (401 without error code: token suspect, every request goes upstream)", gwu, P_GWU,
               path="/soft/v1/e", degraded=True),
        Target("gw_401_open", "7b", "graceway stale, auth breaker open (401 `invalid_token`: token rejected, answered without the upstream)", gwu, P_GWU,
               path="/hard/v1/e", degraded=True),
        Target("gw_reload", "8", "graceway + 1,000 SIGHUPs per run, half rotating the token", gwr, P_GWR,
               during=reload_storm),
        Target("gw2", "9a", "graceway, 2 threads", gw2, P_GW2),
        Target("nginx2", "9b", "nginx, 2 workers", ngx2, P_NGX2),
        Target("gw_sigv4", "10a", "graceway signing every request with AWS SigV4 (aws-sigv4; credential set from files)",
               gwsig, P_GWSIG),
        Target("gw_h2", "10b", "graceway, HTTP/2 to the upstream (`http: h2`, h2c prior knowledge to nginx `http2`)",
               gwh2, P_GWH2),
    ]
    by = {t.key: t for t in T}

    # Idle memory, before any traffic.
    for t in T:
        pids = descendants(t.proc.pid)
        t.idle_rss, t.idle_pss = mem_kb(pids, "VmRSS"), mem_kb(pids, "Pss")

    # Fill the stores, then break the upstreams.
    log("filling stores, killing the doomed upstream, revoking tokens")
    for port, path in ((P_GWS, "/v1/e"), (P_VAR, "/v1/e"), (P_GWU, "/soft/v1/e"), (P_GWU, "/hard/v1/e")):
        s, _, _ = get(port, path)
        if s != 200:
            notes.append(f"fill {port}{path}: answered {s}")
    time.sleep(1.2)  # the fills are stored; Varnish's 1 s ttl runs out
    stop(api2)
    for _ in range(8):  # health.open_after (5) failures open the breaker
        get(P_GWS, "/v1/e")
    end = time.time() + 10
    while time.time() < end and "sick" not in varnish_backends("varnish", P_VARM):
        time.sleep(0.2)
    vb = varnish_backends("varnish", P_VARM)
    if "sick" not in vb:
        notes.append("Varnish backend never went sick: " + " ".join(vb.split()))
    write_token(tok["gw-soft"], "revoked-soft")
    write_token(tok["gw-hard"], "revoked-hard")
    os.kill(gwu.pid, signal.SIGHUP)
    end = time.time() + 10
    while time.time() < end:
        time.sleep(0.3)
        if all("X-Graceway-Degraded" in get(P_GWU, p)[1] for p in ("/soft/v1/e", "/hard/v1/e")):
            break
    for _ in range(3):
        get(P_GWU, "/hard/v1/e")
    st = gw_status(P_GWSA)
    h = st.get("upstreams", [{}])[0].get("breakers", {}).get("health", {})
    if not h.get("open"):
        notes.append(f"graceway stale: health breaker not open: {h}")
    st = {u["name"]: u["breakers"]["auth"] for u in gw_status(P_GWUA).get("upstreams", [])}
    if not st.get("hard", {}).get("open") or st.get("soft", {}).get("open"):
        notes.append(f"graceway auth breakers not as intended (soft closed, hard open): {st}")

    # Sanity: every target answers 200 (and degraded where it should).
    warm_cache()
    for t in T:
        s, hdr, body = get(t.port, t.path, dict(x.split(": ", 1) for x in t.headers))
        deg = "X-Graceway-Degraded" in hdr
        if s != 200 or deg != t.degraded:
            notes.append(f"row {t.row} {t.key}: sanity answer {s}, degraded header {deg}")
    if any("sanity" in n for n in notes):
        log("sanity problems: " + "; ".join(notes))

    reload0 = (gw_status(P_GWRA).get("reload") or {}).get("attempt") or 0

    # Saturation rounds, alternating, each round starting at another target.
    def measure(t, run):
        """One measurement of target t, with its before/during hooks."""
        if t.before:
            t.before()
        th = threading.Thread(target=t.during, args=(dur,)) if t.during else None
        if th:
            th.start()
        res = run(t)
        if th:
            th.join(timeout=dur + 10)
        return res

    def rounds_of(run, keep, after_round=None):
        """rounds alternating rounds, each starting at another target."""
        for r in range(rounds):
            for t in T[r % len(T):] + T[:r % len(T)]:
                keep(t).append(measure(t, run))
            if after_round:
                after_round(r)

    log(f"saturation: {rounds} rounds x {len(T)} targets x {dur}s")
    rounds_of(lambda t: run_wrk(t.port, t.path, t.headers, dur, descendants(t.proc.pid)),
              lambda t: t.sat,
              lambda r: log(f"round {r + 1}: " + ", ".join(f"{t.key} {t.sat[-1]['rps']:.0f}" for t in T)))

    med = lambda xs: statistics.median(xs) if xs else float("nan")
    nginx_rps = med([x["rps"] for x in by["nginx"].sat])
    rate = max(100, int(nginx_rps / 2))
    log(f"latency: {rounds} rounds x {len(T)} targets x {dur}s at {rate} req/s (half of nginx's {nginx_rps:.0f})")
    rounds_of(lambda t: run_oha(t.port, t.path, t.headers, dur, rate), lambda t: t.lat)

    # Memory with a full store: many distinct ~40 KB answers.
    log("filling graceway's 64 MiB store")
    lua = os.path.join(W, "distinct.lua")
    with open(lua, "w") as f:
        f.write('local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format("GET", "/big/" .. n)\nend\n')
    fill_reqs = 0
    for _ in range(5):
        out = subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", lua, f"http://127.0.0.1:{P_GWM}/"],
                             capture_output=True, text=True, timeout=40).stdout
        fill_reqs += next((int(l.split()[0]) for l in out.splitlines() if " requests in " in l), 0)
        c = gw_status(P_GWMA).get("cache", {})
        if c.get("bytes", 0) >= 0.9 * c.get("limit_bytes", 1):
            break
    time.sleep(1)
    cache = gw_status(P_GWMA).get("cache", {})
    gwm_pids = descendants(gwm.pid)
    full_rss, full_pss = mem_kb(gwm_pids, "VmRSS"), mem_kb(gwm_pids, "Pss")

    # The degraded rows stayed in the state they were meant to measure.
    st = {u["name"]: u["breakers"]["auth"]["open"] for u in gw_status(P_GWUA).get("upstreams", [])}
    if st != {"soft": False, "hard": True}:
        notes.append(f"after the runs, auth breakers open: {st} (meant: soft False, hard True)")
    h = (gw_status(P_GWSA).get("upstreams") or [{}])[0].get("breakers", {}).get("health", {})
    if not h.get("open"):
        notes.append("after the runs, graceway stale's health breaker is closed")

    # Reload storm health.
    rs = gw_status(P_GWRA)
    gen = rs.get("config", {}).get("generation")
    last_reload = rs.get("reload") or {}
    reloads = (last_reload.get("attempt") or 0) - reload0
    with open(os.path.join(W, "gw-reload.log"), errors="replace") as f:
        rl_log = [l for l in f if " WARN " in l or " ERROR " in l]
    for t in T:
        t.rss_after = mem_kb(descendants(t.proc.pid), "VmRSS")
    alive = {t.key: t.proc.poll() is None for t in T if t.key != "direct"}

    # ------------------------------------------------------------ report
    def m(t, k, src="sat"):
        return med([x[k] for x in getattr(t, src)])

    n_rps, n_cpu = m(by["nginx"], "rps"), m(by["nginx"], "cpu_us")
    n_p99 = m(by["nginx"], "p99", "lat")
    ratio = lambda a, b: a / b if b else float("nan")
    print()
    print(f"## graceway beside nginx, HAProxy, Varnish and bare Pingora")
    print()
    print(f"`benches/compare.sh {dur} {rounds}`: saturation `wrk -t1 -c{CONNS} -d{dur}s`, latency `oha -q {rate} "
          f"--latency-correction -c{CONNS} -z {dur}s` (half of nginx's saturation rate); medians of {rounds} "
          f"alternating rounds; every proxy at one worker/thread unless the row says otherwise; "
          f"CPU = utime+stime of the proxy's processes / completed requests (row 1: the upstream's own).")
    print()
    print("| row | setup | req/s | vs nginx | failed (non-2xx + socket) | CPU us/req | CPU vs nginx "
          "| p50 ms | p99 ms | RSS after MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in T:
        rps, cpu = m(t, "rps"), m(t, "cpu_us")
        fails = sum(x["non2xx"] + x["sockerr"] for x in t.sat)
        lat_fail = sum(x["lat_fail"] for x in t.lat)
        print(f"| {t.row} | {t.label} | {rps:.0f} | {ratio(rps, n_rps):.2f}x | {fails}"
              f"{f' (+{lat_fail} at fixed rate)' if lat_fail else ''} | {cpu:.1f} | {ratio(cpu, n_cpu):.2f}x "
              f"| {m(t, 'p50', 'lat'):.3f} | {m(t, 'p99', 'lat'):.3f} | {t.rss_after / 1024:.1f} |")
    print()
    print("### Memory")
    print()
    print("| proxy | processes | idle RSS MiB | idle PSS MiB |")
    print("|---|---|---|---|")
    for k in ("nginx", "nginx2", "haproxy", "varnish", "bare", "gw", "gw2", "gw_sigv4", "gw_h2"):
        t = by[k]
        print(f"| {t.label} | {len(descendants(t.proc.pid))} | {t.idle_rss / 1024:.1f} | {t.idle_pss / 1024:.1f} |")
    print(f"| graceway, store filled ({cache.get('entries')} entries, {cache.get('bytes', 0) / 2**20:.1f} of "
          f"{cache.get('limit_bytes', 0) / 2**20:.0f} MiB, {fill_reqs} distinct ~{len(big) // 1000} KB answers sent) "
          f"| 1 | {full_rss / 1024:.1f} | {full_pss / 1024:.1f} |")
    print()

    g, b = by["gw"], by["bare"]
    g_cpu, b_cpu = m(g, "cpu_us"), m(b, "cpu_us")
    stale, ncache, vgrace = m(by["gw_stale"], "rps"), m(by["nginx_cache"], "rps"), m(by["varnish"], "rps")
    rl = by["gw_reload"]
    rl_fail = sum(x["non2xx"] + x["sockerr"] for x in rl.sat) + sum(x["lat_fail"] for x in rl.lat)
    rl_ratio = ratio(m(rl, "rps"), m(g, "rps"))
    g_p99 = m(g, "p99", "lat")
    mb = full_rss * 1024 / 1e6
    checks = [
        (f"graceway pass-through CPU/request <= 1.1x bare Pingora: {g_cpu:.1f} vs {b_cpu:.1f} us "
         f"({ratio(g_cpu, b_cpu):.2f}x)", g_cpu <= 1.1 * b_cpu),
        (f"graceway p99 at {rate} req/s <= nginx's: {g_p99:.3f} vs {n_p99:.3f} ms", g_p99 <= n_p99),
        (f"stale, breaker open >= 1.5x nginx proxy_cache hit: {stale:.0f} vs {ncache:.0f} "
         f"({ratio(stale, ncache):.2f}x)", stale >= 1.5 * ncache),
        (f"stale, breaker open >= 2x Varnish grace: {stale:.0f} vs {vgrace:.0f} ({ratio(stale, vgrace):.2f}x)",
         stale >= 2 * vgrace),
        (f"(context) the framework's own floor for an answer from memory, bare Pingora `--respond`: "
         f"{m(by['bare_respond'], 'rps'):.0f} req/s, {m(by['bare_respond'], 'cpu_us'):.1f} us/req "
         f"({ratio(m(by['bare_respond'], 'rps'), ncache):.2f}x nginx's cache hit); graceway stale "
         f"{m(by['gw_stale'], 'cpu_us'):.1f} us/req", True),
        (f"reload storm: zero failed ({rl_fail}) and throughput within 5% of row 5 ({rl_ratio:.3f}x)",
         rl_fail == 0 and rl_ratio >= 0.95),
        (f"(context) credential kinds and protocols beside the bearer row 5 ({g_cpu:.1f} us/req, "
         f"{m(g, 'rps'):.0f} req/s): SigV4 {m(by['gw_sigv4'], 'cpu_us'):.1f} us/req "
         f"({ratio(m(by['gw_sigv4'], 'cpu_us'), g_cpu):.2f}x), {m(by['gw_sigv4'], 'rps'):.0f} req/s; "
         f"h2 upstream {m(by['gw_h2'], 'cpu_us'):.1f} us/req ({ratio(m(by['gw_h2'], 'cpu_us'), g_cpu):.2f}x), "
         f"{m(by['gw_h2'], 'rps'):.0f} req/s", True),
        (f"idle RSS <= HAProxy's: {g.idle_rss / 1024:.1f} vs {by['haproxy'].idle_rss / 1024:.1f} MiB",
         g.idle_rss <= by["haproxy"].idle_rss),
        (f"RSS with the 64 MiB store full <= 80 MB: {mb:.1f} MB ({full_rss / 1024:.1f} MiB; "
         f"PSS {full_pss / 1024:.1f} MiB)", mb <= 80),
    ]
    print("### Targets")
    print()
    for text, ok in checks:
        print(f"- **{'met' if ok else 'MISSED'}**: {text}")
    print()
    print("### Run notes")
    print()
    print(f"- reload storm: {reload_stats['sighups']} SIGHUPs sent ({reload_stats['rotations']} after a token "
          f"rotation) over {2 * rounds} runs; graceway ran {reloads} reloads (signals that arrive during a "
          f"reload coalesce); config generation now {gen}; last: {json.dumps(last_reload)}; "
          f"{len(rl_log)} WARN/ERROR log lines" + (f", first: `{rl_log[0].strip()[:200]}`" if rl_log else ""))
    print(f"- every proxy still running at the end: {all(alive.values())}"
          + ("" if all(alive.values()) else f" {alive}"))
    print(f"- wall time of the measurement (without the build): {time.time() - t_start:.0f} s")
    for n in notes:
        print(f"- note: {n}")


if __name__ == "__main__":
    main()
