#!/usr/bin/env bash
# Load comparison: graceway vs nginx doing the same job, on loopback.
#
#   benches/load.sh [DURATION_SECONDS] [ROUNDS]      (defaults: 10 3)
#
# One nginx plays the external API (a ~200 B JSON answer that needs
# `Authorization: Bearer bench-token`). Measured, alternating, ROUNDS times:
#   direct    wrk straight at the API (sending the token itself)
#   nginx     nginx proxy_pass + proxy_set_header Authorization + keepalive
#   graceway  graceway (release build) injecting the token from a file
# then graceway's degraded paths (answers from the last-good cache):
#   short-circuit  breaker open, answered in the request phase
#   rewrite        upstream 503 with a body, replaced in the response phase
#   direct-write   upstream 502 with Content-Length: 0, written directly
#   error-path     upstream closes without answering (before the breaker opens)
# and the TCP connections a keep-alive client needs per 1,000 answers on
# each path (benches/connections.py). Prints markdown for docs/benchmarks.md.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-3}
for c in wrk nginx python3; do
  command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || {
    echo "installing $c" >&2
    apt-get install -y -qq "$( [ "$c" = nginx ] && echo nginx-light || echo "$c")" >/dev/null
  }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet --bin graceway
BIN=target/release/graceway
W=$(mktemp -d /tmp/graceway-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(port); NGX=$(port); GW=$(port); ADM=$(port)
BODY='{"name":"smile","emoji":"\\ud83d\\ude04","tags":["happy","joy","grin"],"category":"smileys","version":"15.0","description":"smiling face with open mouth and smiling eyes"}'

mkdir -p "$W/ngx"
cat > "$W/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $W/nginx.pid;
error_log $W/nginx-error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/ngx/body; proxy_temp_path $W/ngx/proxy;
  fastcgi_temp_path $W/ngx/fcgi; uwsgi_temp_path $W/ngx/uwsgi; scgi_temp_path $W/ngx/scgi;
  keepalive_requests 100000;
  # The external API.
  server {
    listen 127.0.0.1:$API;
    default_type application/json;
    add_header Cache-Control "max-age=60" always;
    location / {
      if (\$http_authorization != "Bearer bench-token") { return 401 '{"error":"invalid_token"}'; }
      if (\$http_x_fill = "1") { return 200 '$BODY'; }
      if (\$uri ~ ^/rw/) { return 503 '{"error":"down"}'; }
      if (\$uri ~ ^/rwe/) { return 502 ""; }
      if (\$uri ~ ^/sc/) { return 503 '{"error":"down"}'; }
      if (\$uri ~ ^/err/) { return 444; }
      return 200 '$BODY';
    }
  }
  # nginx doing graceway's job (injection only).
  upstream api { server 127.0.0.1:$API; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-token";
    }
  }
}
EOF
"$NGINX" -c "$W/nginx.conf" -p "$W" &
pids+=($!)

echo "bench-token" > "$W/token"
up() { # name prefix open_after
  cat <<EOF
  - name: $1
    url: "http://127.0.0.1:$API"
    match: { path_prefix: "$2" }
    health: { open_after: $3, retry_after: 1h, max_retry_after: 1h }
    credentials: { tokens: [ { file: "$W/token" } ] }
EOF
}
{
  cat <<EOF
listen: "127.0.0.1:$GW"
admin: { listen: "127.0.0.1:$ADM" }
pid_file: "$W/graceway.pid"
server: { threads: 1, graceful_shutdown_timeout: 1s }
log: { level: warn }
upstreams:
EOF
  up ok / 4000000000
  up rw /rw/ 4000000000
  up rwe /rwe/ 4000000000
  up sc /sc/ 1
  up err /err/ 4000000000
} > "$W/graceway.yaml"
"$BIN" check -c "$W/graceway.yaml" >/dev/null
"$BIN" run -c "$W/graceway.yaml" 2>"$W/graceway.log" &
pids+=($!)

for p in $API $NGX $GW $ADM; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.1; done

# Fill the cache for the degraded paths, then trip the sc breaker.
for p in rw rwe sc err; do curl -sf -H "X-Fill: 1" "http://127.0.0.1:$GW/$p/x" >/dev/null; done
curl -s "http://127.0.0.1:$GW/sc/x" >/dev/null

rps() { # url [header]
  local args=(-t1 -c32 -d"${DUR}s" "$1")
  [ -n "${2:-}" ] && args+=(-H "$2")
  wrk "${args[@]}" | awk '/Requests\/sec/ {print $2}'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b > 0) ? a / b : 0 }'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A R
for round in $(seq "$ROUNDS"); do
  R[direct]+="$(rps "http://127.0.0.1:$API/v1/e" "Authorization: Bearer bench-token") "
  R[nginx]+="$(rps "http://127.0.0.1:$NGX/v1/e") "
  R[graceway]+="$(rps "http://127.0.0.1:$GW/v1/e") "
done
for p in sc rw rwe err; do
  R[$p]="$(rps "http://127.0.0.1:$GW/$p/x")"
done
med() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | median; }
D=$(med direct); N=$(med nginx); G=$(med graceway)
GW_RSS=$(ps -o rss= -p "$(cat "$W/graceway.pid")" | tr -d ' ')
NGX_RSS=$(ps -o rss= -p "$(cat "$W/nginx.pid")" | tr -d ' ')

echo
echo "## Throughput (wrk -t1 -c32 -d${DUR}s, median of $ROUNDS alternating rounds)"
echo
echo "| setup | requests/s | vs nginx | vs direct |"
echo "|---|---|---|---|"
for k in direct nginx graceway; do
  v=$(med $k)
  printf "| %s | %.0f | %.2fx | %.2fx |\n" "$k" "$v" "$(div "$v" "$N")" "$(div "$v" "$D")"
done
echo
echo "## Degraded answers (graceway, wrk -t1 -c32 -d${DUR}s, one round)"
echo
echo "| path | requests/s | vs graceway fresh |"
echo "|---|---|---|"
for p in sc rw rwe err; do
  printf "| %s | %.0f | %.2fx |\n" "$p" "${R[$p]}" "$(div "${R[$p]}" "$G")"
done
echo
echo "## Client connections per 1,000 answers (benches/connections.py, keep-alive client)"
echo
echo "| path | answers | connections | degraded header |"
echo "|---|---|---|---|"
for p in /v1/e /sc/x /rw/x /rwe/x /err/x; do
  python3 benches/connections.py "127.0.0.1:$GW" "$p" 1000 | python3 -c '
import json,sys; d=json.load(sys.stdin)
print("| %s | %d | %d | %s |" % (d["path"], d["requests"], d["connections"], ",".join("%s=%d" % kv for kv in d["degraded"].items())))'
done
echo
echo "## Memory after the run"
echo
echo "| process | RSS |"
echo "|---|---|"
echo "| graceway (1 thread) | $((GW_RSS / 1024)) MiB |"
echo "| nginx (1 worker, also serving the API) | $((NGX_RSS / 1024)) MiB |"
