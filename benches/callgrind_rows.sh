#!/usr/bin/env bash
# Instructions per request of graceway's pass-through and stale answers
# under callgrind (docs/benchmarks.md, "Where the time goes"), for one or
# more release binaries side by side:
#
#     benches/callgrind_rows.sh BINARY [BINARY...]
#
# Per binary: nginx plays the API (a ~200 B JSON 200 with
# `Cache-Control: max-age=60`); graceway runs under valgrind with one
# thread and a persist file; 504 warm-up requests, counters zeroed, 3,000
# counted keep-alive GETs of /v1/e from 8 connections
# (benches/keepalive_load.py), user-space instructions divided by 3,000.
# Then nginx stops (its port closed), graceway restarts on the same persist
# file and the same is counted for stale answers (the first five requests
# open the health breaker). Prints one markdown row per binary. Loopback
# only; takes a few minutes per binary.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,16p "$0"; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/graceway-callgrind.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
API=18711 GW=18712 ADMIN=18713
BODY='{"name":"smile","emoji":"\ud83d\ude04","tags":["happy","joy","grin"],"category":"smileys","version":"15.0","description":"smiling face with open mouth and smiling eyes"}'

wait_http() { # URL SECONDS
  for _ in $(seq 1 $(($2 * 10))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

start_api() {
  mkdir -p "$W/ngx"
  cat >"$W/ngx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $W/ngx/nginx.pid; error_log $W/ngx/error.log error;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $W/ngx/b; proxy_temp_path $W/ngx/p;
  fastcgi_temp_path $W/ngx/f; uwsgi_temp_path $W/ngx/u; scgi_temp_path $W/ngx/s;
  server {
    listen 127.0.0.1:$API; default_type application/json;
    add_header Cache-Control "max-age=60" always;
    location / { return 200 '$BODY'; }
  }
}
EOF
  /usr/sbin/nginx -c "$W/ngx.conf" -p "$W/ngx" &
  echo $! >"$W/ngx.pid"
  wait_http "http://127.0.0.1:$API/v1/e" 10
}

# count BINARY OUT: one graceway under callgrind, instructions per request.
count() {
  local bin=$1 out=$2
  valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
    "$bin" run -c "$W/gw.yaml" >"$out.log" 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$ADMIN/healthz" 180
  until (exec 3<>"/dev/tcp/127.0.0.1/$GW") 2>/dev/null; do sleep 0.2; done
  python3 "$here/keepalive_load.py" $GW 504 /v1/e >/dev/null
  callgrind_control -z $pid >/dev/null
  python3 "$here/keepalive_load.py" $GW 3000 /v1/e >"$out.answers"
  callgrind_control -d $pid >/dev/null
  kill -TERM $pid
  wait $pid || true
  local total
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo $((total / 3000))
}

echo "| binary | pass-through | stale, health breaker open |"
echo "|---|---|---|"
n=0
for bin in "$@"; do
  n=$((n + 1))
  d="$W/run$n"
  mkdir -p "$d"
  echo "bench-token" >"$d/token"
  cat >"$W/gw.yaml" <<EOF
listen: "127.0.0.1:$GW"
admin: { listen: "127.0.0.1:$ADMIN" }
pid_file: "$d/gw.pid"
server: { threads: 1, graceful_shutdown_timeout: 1s }
log: { level: warn }
upstreams:
  - name: api
    url: "http://127.0.0.1:$API"
    match: { path_prefix: "/" }
    credentials: { tokens: [ { file: "$d/token" } ] }
cache: { persist: { path: "$d/store.redb" } }
EOF
  start_api
  pass=$(count "$bin" "$d/pass.out")
  kill "$(cat "$W/ngx.pid")"
  wait "$(cat "$W/ngx.pid")" 2>/dev/null || true
  stale=$(count "$bin" "$d/stale.out")
  echo "| $bin | $pass ($(cat "$d/pass.out.answers")) | $stale ($(cat "$d/stale.out.answers")) |"
done
echo "callgrind files and logs: $W" >&2
