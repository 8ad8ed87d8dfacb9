#!/usr/bin/env bash
# graceway beside nginx, HAProxy, Varnish and a bare Pingora proxy, on loopback.
#
#   benches/compare.sh [SECONDS_PER_RUN] [ROUNDS]        (defaults: 10 4)
#
# Builds graceway and examples/bare_pingora (release: fat LTO, a few minutes
# cold; COMPARE_NO_BUILD=1 reuses target/release as it is), installs what is
# missing (nginx-light, haproxy, varnish, wrk, python3, curl via apt; oha via
# `cargo install oha --locked`, since Debian has no wrk2), then runs
# benches/compare.py, which starts:
#   - the upstream: nginx, one process, `return 200` with a ~200 B JSON body
#     only for the expected bearer tokens and the SigV4 row's key id (401
#     otherwise), on HTTP/1.1 and on a second, h2c port, plus ~40 KB
#     answers under /big/; a second copy for the stale rows, killed after
#     the stores are filled;
#   - nginx (proxy_pass + proxy_set_header Authorization + keepalive, and a
#     proxy_cache server), nginx with 2 workers, HAProxy (set-header,
#     http-reuse always, nbthread 1), Varnish (grace, probe, sick backend),
#     bare Pingora, and eight graceway instances (pass-through, stale with the
#     health breaker open, stale on 401, reload storm, 2 threads, 64 MiB
#     store, SigV4 signing, HTTP/2 to the upstream: the upstream's h2c port);
# and measures each row in alternating rounds: wrk -t1 -c32 at saturation
# (requests/s, failures, the proxy's CPU per request from /proc/PID/stat),
# then oha at a fixed rate of half nginx's saturation rate with
# coordinated-omission correction (p50/p99), then memory. Prints markdown.
#
# Runtime: about 2 x 16 x ROUNDS x SECONDS plus ~1 min of setup (and the
# build); the whole measurement is cut off after twice that. Every process
# it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-4}
[[ "$DUR" =~ ^[0-9]+$ && "$ROUNDS" =~ ^[0-9]+$ && "$DUR" -ge 1 && "$ROUNDS" -ge 1 ]] || {
  echo "usage: benches/compare.sh [SECONDS_PER_RUN] [ROUNDS]" >&2; exit 2; }
# nginx's proxy_cache entries live 1 minute; each run re-warms, so a run must be shorter.
[ "$DUR" -le 50 ] || { echo "SECONDS_PER_RUN must be at most 50" >&2; exit 2; }

export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin"
updated=
need() { # command debian-package
  command -v "$1" >/dev/null && return
  echo "installing $2" >&2
  [ -n "$updated" ] || { apt-get update -qq >/dev/null; updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need nginx nginx-light
need haproxy haproxy
need varnishd varnish
need python3 python3
need curl curl
need cmake cmake  # pingora's libz-ng-sys
if ! command -v oha >/dev/null; then
  echo "installing oha (cargo install oha --locked)" >&2
  cargo install oha --locked --quiet
fi

if [ -z "${COMPARE_NO_BUILD:-}" ]; then
  echo "building graceway and bare_pingora (release)" >&2
  cargo build --release --quiet --bin graceway --example bare_pingora
fi
for b in target/release/graceway target/release/examples/bare_pingora; do
  [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }
done

W=$(mktemp -d /tmp/graceway-compare.XXXXXX)
chmod 755 "$W"
PY=
cleanup() {
  if [ -n "$PY" ]; then
    kill -TERM "$PY" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PY" 2>/dev/null || break; sleep 0.1; done
    # Whatever is left of the process group compare.py leads (its children).
    kill -KILL -- "-$PY" 2>/dev/null || true
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LIMIT=$(( 2 * (2 * 13 * ROUNDS * (DUR + 2) + 120) ))
# setsid: compare.py leads its own process group, so every process it
# starts can be killed at once, by that group's id.
setsid timeout -k 10 "$LIMIT" python3 benches/compare.py \
  --graceway target/release/graceway --bare target/release/examples/bare_pingora \
  --oha "$(command -v oha)" --dir "$W" "$DUR" "$ROUNDS" &
PY=$!
wait "$PY"
