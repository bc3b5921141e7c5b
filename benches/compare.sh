#!/usr/bin/env bash
# Side-by-side throughput, latency and memory of the gateway doing its whole job against nginx
# as operators run it, on this machine. Not a test: it prints numbers (and writes them as JSON).
#
#   benches/compare.sh                      # 3 interleaved rounds x 8 s per run
#   ROUNDS=1 DURATION=3s benches/compare.sh # a quick look
#
# Targets, all on ephemeral loopback ports and stopped on exit:
#   app-direct    nginx "app" serving ~200 bytes of JSON and a 10 MB file (the baseline)
#   nginx         nginx as a plain reverse proxy to that app (worker_processes auto, upstream
#                 keepalive, HTTP/1.1 with Connection "", access_log off): the yardstick
#   caddy         Caddy's reverse_proxy to the app, only when `caddy` is installed
#   mock-direct   the mock Pleo's GET /v1/introspect with a bearer token: what the mock costs
#   gw-pleo       the gateway's /pleo/v1/introspect (cookie -> session -> bearer -> mock Pleo)
#   gw-app        the gateway's app path (cookie -> session -> identity headers -> app)
# The gateway runs the release build with the Redis store (a private redis-server), logged in
# for real against the mock. Cases: small GET at c1, c64, c256 and the 10 MB GET at c4; every
# round runs every case against every target before the next round starts, and the table shows
# the median of the rounds. A second table gives the CPU time (user + system) each target spent
# per request, which a shared machine's swings disturb far less than requests/s. Peak RSS is the
# kernel's high-water mark (VmHWM, summed over nginx's processes); "idle RSS" is VmRSS a few
# seconds after the last run.
#
# Environment:
#   ROUNDS (3), DURATION (8s), THREADS (2: wrk threads; c1 uses one)
#   MOCK_TOKEN_TTL   lifetime of the mock's access tokens (default 1h; refresh_burst.sh shortens it)
#   CASES            which cases to run (default "c1 c64 c256 big-c4"), for a quicker look
#   OUT              JSON path (default $CARGO_TARGET_DIR/bench/compare-<time>.json)
#   PLEO_RATE_LIMIT  the gateway's pleo.rate_limit_per_minute (default 0 = off, so /pleo measures
#                    proxying rather than the budget's 429s; the budget costs a Redis round trip)
#   ACCESS_LOG       the gateway's server.access_log (default false, as nginx's is off here)
#   RUST_LOG         the gateway's log filter (default: its own, info)
#   GATEWAY_BIN      a binary to use instead of building one (e.g. one with debug info)
#   GATEWAY_WRAPPER  a command the gateway (not the mock) runs under, e.g. valgrind
#                    (instructions.sh); the gateway then gets 60 s to come up instead of 10
#   SERVE_ONLY=1     start everything, write URLs, pids and credentials to
#                    $CARGO_TARGET_DIR/bench/targets.env and wait (for a profiler)
#   and whatever the gateway reads (TOKIO_WORKER_THREADS, PLEO_GATEWAY__...).
# Needs wrk, nginx, redis-server, curl and python3 (`apt-get install -y wrk nginx redis-server`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
THREADS=${THREADS:-2}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT=${OUT:-$CARGO_TARGET_DIR/bench/compare-$(date +%Y%m%d-%H%M%S).json}
for tool in wrk nginx redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk nginx redis-server)"; exit 1; }
done

if [ -n "${GATEWAY_BIN:-}" ]; then
  bin=$GATEWAY_BIN
else
  cargo build --release --quiet --bin pleo-gateway
  bin="$CARGO_TARGET_DIR/release/pleo-gateway"
fi
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 "${WAIT_TENTHS:-100}"); do curl -s -o /dev/null "$@" && return 0; sleep 0.1; done
  echo "not up: $*"; exit 1
}
start_nginx() { # name conf: runs nginx -c conf in the foreground (daemon off) so $! is the master
  nginx -c "$2" -p "$work" -g 'daemon off;' &
  pids+=($!); eval "${1}_pid=$!"
}

app_port=$(free_port); nginx_port=$(free_port); mock_port=$(free_port); gw_port=$(free_port)
metrics_port=$(free_port); redis_port=$(free_port); caddy_port=$(free_port)
callback="http://127.0.0.1:$gw_port/auth/callback"
bench_callback="http://127.0.0.1:$mock_port/bench-callback"

# The app: ~200 bytes of JSON on every path but /big.bin (10 MB).
mkdir -p "$work/app"
python3 - "$work/app/small.json" <<'PY'
import json, sys
body = {"data": {"id": "00000000-0000-0000-0000-000000000000", "name": "Benchmark Company",
        "currency": "DKK", "status": "ACTIVE", "items": [1, 2, 3, 4, 5, 6, 7, 8]},
        "meta": {"note": "about two hundred bytes of JSON for the small case"}}
open(sys.argv[1], "w").write(json.dumps(body))
PY
head -c 10000000 /dev/zero > "$work/app/big.bin"
common="pid PIDFILE; error_log $work/NAME-error.log warn; worker_rlimit_nofile 8192;
events { worker_connections 4096; }"
cat > "$work/app.conf" <<CONF
${common//NAME/app}
worker_processes auto;
http {
  access_log off;
  default_type application/json;
  server { listen 127.0.0.1:$app_port; root $work/app;
    location = /big.bin { default_type application/octet-stream; }
    location / { try_files /small.json =404; } }
}
CONF
sed -i "s|PIDFILE|$work/app.pid|" "$work/app.conf"
cat > "$work/proxy.conf" <<CONF
${common//NAME/proxy}
worker_processes auto;
http {
  access_log off;
  upstream app { server 127.0.0.1:$app_port; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
sed -i "s|PIDFILE|$work/proxy.pid|" "$work/proxy.conf"
start_nginx app "$work/app.conf"
start_nginx proxy "$work/proxy.conf"
wait_http "http://127.0.0.1:$app_port/"
wait_http "http://127.0.0.1:$nginx_port/"

caddy_pid=""
if command -v caddy >/dev/null; then
  printf '{\n admin off\n}\nhttp://127.0.0.1:%s {\n reverse_proxy 127.0.0.1:%s\n}\n' \
    "$caddy_port" "$app_port" > "$work/Caddyfile"
  caddy run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
  caddy_pid=$!; pids+=("$caddy_pid")
  wait_http "http://127.0.0.1:$caddy_port/"
else
  echo "caddy not installed: skipped"
fi

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

RUST_LOG=warn "$bin" mock-pleo --port "$mock_port" --auto-approve --access-token-ttl "${MOCK_TOKEN_TTL:-1h}" \
  --redirect-uri "$callback" --redirect-uri "$bench_callback" >"$work/mock.log" 2>&1 &
mock_pid=$!; pids+=("$mock_pid")
wait_http "http://127.0.0.1:$mock_port/_mock/stats"

export PLEO_GATEWAY__SERVER__LISTEN="127.0.0.1:$gw_port"
export PLEO_GATEWAY__SERVER__PUBLIC_URL="http://127.0.0.1:$gw_port"
export PLEO_GATEWAY__SERVER__METRICS_LISTEN="127.0.0.1:$metrics_port"
export PLEO_GATEWAY__SERVER__SHUTDOWN_DELAY=0s
export PLEO_GATEWAY__SERVER__ACCESS_LOG="${ACCESS_LOG:-false}"
export PLEO_GATEWAY__PLEO__AUTH_URL="http://127.0.0.1:$mock_port"
export PLEO_GATEWAY__PLEO__API_URL="http://127.0.0.1:$mock_port"
export PLEO_GATEWAY__PLEO__CLIENT_ID=demo-client PLEO_GATEWAY__PLEO__CLIENT_SECRET=demo-secret
export PLEO_GATEWAY__PLEO__SCOPES=users:read
export PLEO_GATEWAY__PLEO__RATE_LIMIT_PER_MINUTE="${PLEO_RATE_LIMIT:-0}"
export PLEO_GATEWAY__PROXY__UPSTREAM="http://127.0.0.1:$app_port"
export PLEO_GATEWAY__SESSION__STORE=redis
export PLEO_GATEWAY__SESSION__REDIS_URL="redis://127.0.0.1:$redis_port"
PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS="$(head -c 32 /dev/urandom | base64)"
export PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS
# The gateway logs at its default level (info; RUST_LOG from the caller's environment if set),
# as operators run it: every request then opens its span, which a level of warn would skip.
# shellcheck disable=SC2086 # GATEWAY_WRAPPER is a command line, split on purpose
${GATEWAY_WRAPPER:-} "$bin" >"$work/gateway.log" 2>&1 &
gw_pid=$!; pids+=("$gw_pid")
WAIT_TENTHS=${GATEWAY_WRAPPER:+600} wait_http "http://127.0.0.1:$gw_port/healthz"

# Log in through the real flow (the mock approves at once) and keep the session cookie.
curl -s -L -c "$work/jar" -b "$work/jar" -o /dev/null "http://127.0.0.1:$gw_port/auth/login?return_to=/"
cookie=$(awk '$6 ~ /pleo-session$/ {print $6"="$7}' "$work/jar")
[ -n "$cookie" ] || { echo "login failed"; cat "$work/gateway.log"; exit 1; }

# A bearer token for the mock directly: the same authorisation-code + PKCE flow, by hand.
read -r verifier challenge < <(python3 -c '
import base64, hashlib, secrets
v = secrets.token_urlsafe(48)
c = base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()
print(v, c)')
location=$(curl -s -o /dev/null -w '%{redirect_url}' -G "http://127.0.0.1:$mock_port/oauth/authorize" \
  --data-urlencode response_type=code --data-urlencode client_id=demo-client \
  --data-urlencode "redirect_uri=$bench_callback" --data-urlencode scope=users:read \
  --data-urlencode state=bench --data-urlencode "code_challenge=$challenge" \
  --data-urlencode code_challenge_method=S256)
code=$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(u.urlparse(sys.argv[1]).query)["code"][0])' "$location")
token=$(curl -s -u demo-client:demo-secret "http://127.0.0.1:$mock_port/oauth/token" \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$code" \
  --data-urlencode "redirect_uri=$bench_callback" --data-urlencode "code_verifier=$verifier" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

# name|pid|small URL|big URL|header
targets=(
  "app-direct|$app_pid|http://127.0.0.1:$app_port/|http://127.0.0.1:$app_port/big.bin|"
  "nginx|$proxy_pid|http://127.0.0.1:$nginx_port/|http://127.0.0.1:$nginx_port/big.bin|"
)
[ -n "$caddy_pid" ] && targets+=("caddy|$caddy_pid|http://127.0.0.1:$caddy_port/|http://127.0.0.1:$caddy_port/big.bin|")
targets+=(
  "mock-direct|$mock_pid|http://127.0.0.1:$mock_port/v1/introspect|http://127.0.0.1:$mock_port/big?bytes=10000000|Authorization: Bearer $token"
  "gw-pleo|$gw_pid|http://127.0.0.1:$gw_port/pleo/v1/introspect|http://127.0.0.1:$gw_port/pleo/big?bytes=10000000|Cookie: $cookie"
  "gw-app|$gw_pid|http://127.0.0.1:$gw_port/|http://127.0.0.1:$gw_port/big.bin|Cookie: $cookie"
)
# Every target must answer both URLs with 200 before anything is measured.
for t in "${targets[@]}"; do
  IFS='|' read -r name pid small big header <<<"$t"
  for url in "$small" "$big"; do
    status=$(curl -s -o /dev/null -w '%{http_code}' ${header:+-H "$header"} "$url")
    [ "$status" = 200 ] || { echo "$name: $url answered $status"; exit 1; }
  done
done

if [ -n "${SERVE_ONLY:-}" ]; then
  # SERVE_ONLY=1: leave everything running for a profiler; the targets go to $SERVE_ONLY_ENV.
  env_file=${SERVE_ONLY_ENV:-$CARGO_TARGET_DIR/bench/targets.env}
  mkdir -p "$(dirname "$env_file")"
  { echo "GW_PID=$gw_pid"; echo "MOCK_PID=$mock_pid"
    echo "GW_PLEO=http://127.0.0.1:$gw_port/pleo/v1/introspect"; echo "GW_APP=http://127.0.0.1:$gw_port/"
    echo "COOKIE='$cookie'"; echo "BEARER='$token'"; echo "NGINX=http://127.0.0.1:$nginx_port/"
    echo "METRICS=http://127.0.0.1:$metrics_port/metrics"; echo "REDIS_PORT=$redis_port"; } >"$env_file"
  echo "serving; targets in $env_file; Ctrl-C (or kill $$) stops everything"
  while :; do sleep 3600 & wait $! || break; done
  exit 0
fi

# nginx's memory is its master's plus its workers'; everything else is one process.
pids_of() { echo "$1"; pgrep -P "$1" || true; }
mem_kib() { # field pid: summed over the process and its children
  local total=0 p v
  for p in $(pids_of "$2"); do
    v=$(awk -v f="$1:" '$1==f {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
cpu_ticks() { # user + system CPU time (clock ticks) of the process and its children
  local total=0 p v
  for p in $(pids_of "$1"); do
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name's closing parenthesis.
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
rss_log="$work/rss.txt"
: >"$rss_log"
for t in "${targets[@]}"; do
  IFS='|' read -r name pid _ <<<"$t"
  echo "$name start_rss_kib $(mem_kib VmRSS "$pid")" >>"$rss_log"
done

echo "machine: $(nproc) cores, $(uptime | sed 's/.*load/load/')"
echo "rounds=$ROUNDS duration=$DURATION threads=$THREADS (c1 uses one)"
cases=()
for c in "c1|1|small" "c64|64|small" "c256|256|small" "big-c4|4|big"; do
  [[ " ${CASES:-c1 c64 c256 big-c4} " == *" ${c%%|*} "* ]] && cases+=("$c")
done
mkdir -p "$work/wrk"
for round in $(seq 1 "$ROUNDS"); do
  for c in "${cases[@]}"; do
    IFS='|' read -r case conns kind <<<"$c"
    threads=$(( conns < THREADS ? conns : THREADS ))
    for t in "${targets[@]}"; do
      IFS='|' read -r name pid small big header <<<"$t"
      url=$small; [ "$kind" = big ] && url=$big
      printf '\rround %s/%s %-6s %-12s' "$round" "$ROUNDS" "$case" "$name" >&2
      before=$(cpu_ticks "$pid")
      wrk -t"$threads" -c"$conns" -d"$DURATION" --latency ${header:+-H "$header"} "$url" \
        >"$work/wrk/$name.$case.$round.txt" 2>&1 || true
      echo $(( $(cpu_ticks "$pid") - before )) >"$work/wrk/$name.$case.$round.cpu"
    done
  done
done
printf '\r%40s\r' '' >&2
for t in "${targets[@]}"; do
  IFS='|' read -r name pid _ <<<"$t"
  echo "$name peak_rss_kib $(mem_kib VmHWM "$pid")" >>"$rss_log"
done
sleep 5
for t in "${targets[@]}"; do
  IFS='|' read -r name pid _ <<<"$t"
  echo "$name idle_rss_kib $(mem_kib VmRSS "$pid")" >>"$rss_log"
done

mkdir -p "$(dirname "$OUT")"
names=$(for t in "${targets[@]}"; do echo "${t%%|*}"; done)
python3 - "$work" "$OUT" "$ROUNDS" "$DURATION" $names <<'PY'
import json, os, re, statistics, sys, platform, subprocess
work, out, rounds, duration, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
ALL_CASES = ["c1", "c64", "c256", "big-c4"]
cases = [c for c in ALL_CASES if os.path.exists(os.path.join(work, "wrk", f"{names[0]}.{c}.1.txt"))]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * UNITS[unit]

def parse(path):
    text = open(path).read()
    run = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    run["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", text)
    run["mb_s"] = float(m.group(1)) * SIZES[m.group(2)] / 1e6 if m else 0.0
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        run[f"p{p}_ms"] = ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    run["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    run["socket_errors"] = m.group(1) if m else ""
    # CPU time the target spent (user + system, the process and its children) per request.
    m = re.search(r"(\d+) requests in", text)
    cpu = path[:-len(".txt")] + ".cpu"
    if m and int(m.group(1)) and os.path.exists(cpu):
        seconds = int(open(cpu).read()) / os.sysconf("SC_CLK_TCK")
        run["cpu_us"] = seconds / int(m.group(1)) * 1e6
    else:
        run["cpu_us"] = None
    return run

rss = {}
for line in open(os.path.join(work, "rss.txt")):
    name, key, value = line.split()
    rss.setdefault(name, {})[key] = int(value)

result = {"machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                      "load_before": open("/proc/loadavg").read().split()[:3]},
          "rounds": rounds, "duration": duration, "targets": {}}
for name in names:
    entry = {"rss_kib": rss.get(name, {}), "cases": {}}
    for case in cases:
        runs = [parse(os.path.join(work, "wrk", f"{name}.{case}.{r}.txt")) for r in range(1, rounds + 1)]
        med = lambda k: statistics.median([r[k] for r in runs if r[k] is not None]) if any(r[k] is not None for r in runs) else None
        entry["cases"][case] = {"rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                                "mb_s": med("mb_s"), "cpu_us": med("cpu_us"),
                                "non_2xx": sum(r["non_2xx"] for r in runs),
                                "socket_errors": [r["socket_errors"] for r in runs if r["socket_errors"]],
                                "rounds": runs}
    result["targets"][name] = entry
ref = result["targets"].get("nginx")
for name, entry in result["targets"].items():
    for case, c in entry["cases"].items():
        base = ref["cases"][case]["rps"] if ref else 0
        c["x_nginx"] = round(c["rps"] / base, 3) if base else None
json.dump(result, open(out, "w"), indent=1)

def lat(v):
    if v is None: return "-"
    return f"{v*1000:.0f} µs" if v < 1 else f"{v:.1f} ms"
def mib(k): return f"{k/1024:.1f}" if k else "-"
hdr = ["target"] + [f"{c} req/s (×nginx) p50/p99" for c in ALL_CASES[:3]] + ["10 MB c4 MB/s (×nginx)", "peak RSS MiB", "idle RSS MiB"]
rows = []
for name, entry in result["targets"].items():
    row = [name]
    for case in ALL_CASES:
        c = entry["cases"].get(case)
        if c is None:
            row.append("-")
            continue
        flag = " !non-2xx" if c["non_2xx"] else ""
        if case == "big-c4":
            row.append(f"{c['mb_s']:,.0f} ({c['x_nginx']:.2f}×){flag}")
        else:
            row.append(f"{c['rps']:,.0f} ({c['x_nginx']:.2f}×) {lat(c['p50_ms'])}/{lat(c['p99_ms'])}{flag}")
    r = entry["rss_kib"]
    row += [mib(r.get("peak_rss_kib")), mib(r.get("idle_rss_kib"))]
    rows.append(row)
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for row in rows:
    print("| " + " | ".join(row) + " |")
# CPU per request is steadier than requests/s on a shared machine: it does not depend on how
# much of the cores wrk and the app left over.
small = [c for c in ALL_CASES[:3] if c in cases]
if small:
    print()
    print("| target | " + " | ".join(f"{c} CPU µs/request" for c in small) + " |")
    print("|" + "---|" * (len(small) + 1))
    for name, entry in result["targets"].items():
        cells = []
        for case in small:
            v = entry["cases"][case]["cpu_us"]
            cells.append("-" if v is None else f"{v:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
print(f"JSON: {out}")
PY
