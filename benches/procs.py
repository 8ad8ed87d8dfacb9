"""Child processes and small loopback helpers shared by the benchmark
scripts (fleet_coverage.py, fleet_tokens.py, vendor_calls.py): every child started with
`spawn` is stopped by `stop_all` (the scripts call it at exit and on
SIGINT/SIGTERM) and gets SIGKILL if the script dies first
(PR_SET_PDEATHSIG); every wait has a deadline. Stdlib only.
"""
import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

CHILDREN = []  # Popen objects still to stop


# ---------------------------------------------------------------- processes

try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None


def _pdeathsig():
    # The child gets SIGKILL if this script dies without running its cleanup.
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv, log_path):
    log = open(log_path, "ab")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig)
    log.close()
    CHILDREN.append(p)
    return p


def stop(p, sig=signal.SIGTERM, grace=3.0):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        except ProcessLookupError:
            pass
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all():
    for p in list(CHILDREN):
        try:
            stop(p)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass



def workdir(prefix, keep, also=None):
    """A fresh temp dir for a run (readable by the services started in it),
    removed at exit unless `keep`; at exit every child is stopped first and
    `also()` runs. SIGINT, SIGTERM and SIGALRM (the scripts' overall
    budget) end the script through that same exit."""
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o755)

    def cleanup():
        stop_all()
        if also is not None:
            also()
        if keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    atexit.register(cleanup)

    def on_signal(signum, _frame):
        raise SystemExit(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, on_signal)
    return base

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=1.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def wait_until(what, check, deadline_s, interval=0.1):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if check():
                return True
        except SystemExit:
            raise
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(interval)
    raise RuntimeError(f"timed out after {deadline_s}s waiting for {what}")


def redis_cmd(port, *args, timeout=1.0):
    """One RESP command; returns the decoded integer or the first line of the reply."""
    out = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(out)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\r\n", 1)[0]
    if line[:1] == b":":
        return int(line[1:])
    return line[1:].decode(errors="replace")


def tail(path, n=15, grep=None):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    if grep:
        lines = [line for line in lines if any(g in line for g in grep)]
    return "\n".join(lines[-n:])


class Replica:
    """One graceway process of a benchmark's fleet: its ports, its config
    (`upstream_lines`: the YAML lines of its one upstream and the keys after
    `upstreams`, written below listen/admin/pid_file and checked with
    `graceway check --skip-sources`), its log, start and readiness."""

    def __init__(self, binary, idx, d, upstream_lines):
        self.binary = binary
        self.idx = idx
        self.port = free_port()
        self.admin = free_port()
        self.cfg = os.path.join(d, f"r{idx}.yaml")
        self.log = os.path.join(d, f"r{idx}.log")
        lines = [
            f'listen: "127.0.0.1:{self.port}"',
            f'admin: {{ listen: "127.0.0.1:{self.admin}" }}',
            f'pid_file: "{d}/r{idx}.pid"',
            "upstreams:",
        ] + upstream_lines
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        chk = subprocess.run([binary, "check", "-c", self.cfg, "--skip-sources"],
                             capture_output=True, text=True, timeout=30)
        if chk.returncode != 0:
            raise RuntimeError(f"graceway check failed for {self.cfg}:\n"
                               f"{chk.stdout}{chk.stderr}")
        self.proc = None

    def start(self):
        self.proc = spawn([self.binary, "run", "-c", self.cfg], self.log)

    def wait_ready(self, deadline_s=20):
        def ok():
            if self.proc.poll() is not None:
                raise SystemExit(f"replica {self.idx} exited ({self.proc.returncode}); "
                                 f"log {self.log}:\n{tail(self.log)}")
            return http_get(self.admin, "/healthz")[0] == 200
        wait_until(f"replica {self.idx} /healthz", ok, deadline_s, 0.05)

    def status(self):
        return json.loads(http_get(self.admin, "/status", timeout=2)[1])
