#!/usr/bin/env bash
# Throughput and memory of the gateway doing its whole job (cookie -> session -> identity
# headers -> proxied to the app) against nginx as a plain reverse proxy to the same app, on this
# machine. Not a test: it prints numbers. Needs wrk, nginx and redis-server (Debian packages).
#
#   benches/proxy_vs_nginx.sh            # memory store
#   STORE=redis benches/proxy_vs_nginx.sh  # Redis store (private redis-server on a free port)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
STORE=${STORE:-memory}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pleo-gateway-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/pleo-gateway"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1"; exit 1; }

app_port=$(free_port); nginx_port=$(free_port); mock_port=$(free_port); gw_port=$(free_port)

# The "app": nginx serving a 1 KiB body. Both proxies forward to it.
head -c 1024 /dev/zero | tr '\0' 'x' > "$work/index.html"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$app_port; keepalive 64; }
  server { listen 127.0.0.1:$app_port; root $work; location / { try_files /index.html =404; } }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
chmod 755 "$work"
nginx -c "$work/nginx.conf" -p "$work"
for _ in $(seq 1 50); do [ -s "$work/nginx.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/nginx.pid")")

"$bin" mock-pleo --port "$mock_port" --auto-approve --redirect-uri "http://127.0.0.1:$gw_port/auth/callback" >/dev/null &
pids+=($!)

export PLEO_GATEWAY__SERVER__LISTEN="127.0.0.1:$gw_port"
export PLEO_GATEWAY__SERVER__PUBLIC_URL="http://127.0.0.1:$gw_port"
export PLEO_GATEWAY__PLEO__AUTH_URL="http://127.0.0.1:$mock_port"
export PLEO_GATEWAY__PLEO__API_URL="http://127.0.0.1:$mock_port"
export PLEO_GATEWAY__PLEO__CLIENT_ID=demo-client PLEO_GATEWAY__PLEO__CLIENT_SECRET=demo-secret
export PLEO_GATEWAY__PLEO__SCOPES=users:read
export PLEO_GATEWAY__PROXY__UPSTREAM="http://127.0.0.1:$app_port"
export PLEO_GATEWAY__SESSION__STORE="$STORE"
if [ "$STORE" = redis ]; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  pids+=($!)
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  export PLEO_GATEWAY__SESSION__REDIS_URL="redis://127.0.0.1:$redis_port"
  export PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS="$(head -c 32 /dev/urandom | base64)"
fi
RUST_LOG=warn "$bin" &
gw_pid=$!; pids+=("$gw_pid")
wait_http "http://127.0.0.1:$gw_port/healthz"

# Log in through the real flow (the mock approves automatically) and keep the cookie.
curl -s -L -c "$work/jar" -b "$work/jar" -o /dev/null "http://127.0.0.1:$gw_port/auth/login?return_to=/"
cookie=$(awk '$6=="pleo-session"{print $6"="$7}' "$work/jar")
[ -n "$cookie" ] || { echo "login failed"; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "http://127.0.0.1:$gw_port/")
[ "$status" = 200 ] || { echo "authenticated request answered $status"; exit 1; }

rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
echo "store=$STORE connections=$CONNECTIONS duration=$DURATION"
echo "gateway RSS before: $(( $(rss "$gw_pid") / 1024 )) MiB"
echo "--- nginx, plain reverse proxy"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$nginx_port/" | grep -E "Requests/sec|Latency|Non-2xx"
echo "--- pleo-gateway, session check + identity headers + proxy"
if [ -n "${PERF:-}" ]; then
  # PERF=1: sample the gateway while wrk runs; top functions in /tmp/pleo-gateway.perf.txt
  perf record -F 999 -g -p "$gw_pid" -o /tmp/pleo-gateway.perf.data -- sleep 8 >/dev/null 2>&1 &
  perf_pid=$!
fi
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -H "Cookie: $cookie" "http://127.0.0.1:$gw_port/" | grep -E "Requests/sec|Latency|Non-2xx"
if [ -n "${PERF:-}" ]; then
  wait "$perf_pid" || true
  perf report -i /tmp/pleo-gateway.perf.data --no-children --percent-limit 1.5 --stdio 2>/dev/null \
    | grep -v '^$' | head -60 > /tmp/pleo-gateway.perf.txt
  echo "profile: /tmp/pleo-gateway.perf.txt"
fi
echo "gateway RSS after: $(( $(rss "$gw_pid") / 1024 )) MiB (peak $(( $(awk '/VmHWM/{print $2}' "/proc/$gw_pid/status") / 1024 )) MiB)"
