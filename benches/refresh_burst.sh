#!/usr/bin/env bash
# What a burst of concurrent requests pays when it arrives just as the session's access token
# is due for refresh: the burst's p99 against the same burst on a fresh token, next to what one
# refresh took (the token request and the store write, from the gateway's own histogram). The
# refresh must happen exactly once per cycle (the script fails otherwise) and should add at most
# about one refresh to the burst's p99.
#
#   benches/refresh_burst.sh             # 300 concurrent requests, 3 expiry cycles
#   BURST=500 CYCLES=5 benches/refresh_burst.sh
#
# It starts what benches/compare.sh starts (SERVE_ONLY=1) with the mock's tokens living 30 s and
# the gateway's proactive refresh off, so the first requests after 15 s (a token is due once
# half its lifetime is left, at most refresh_before_expiry) must refresh it themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
BURST=${BURST:-300}
CYCLES=${CYCLES:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
env_file=$(mktemp)
log=$(mktemp)
MOCK_TOKEN_TTL=30s PLEO_GATEWAY__PLEO__PROACTIVE_REFRESH=false SERVE_ONLY=1 \
  SERVE_ONLY_ENV="$env_file" benches/compare.sh >"$log" 2>&1 &
serving=$!
cleanup() { kill "$serving" 2>/dev/null || true; wait "$serving" 2>/dev/null || true; rm -f "$env_file" "$log"; }
trap cleanup EXIT
for _ in $(seq 1 600); do grep -q '^serving' "$log" && break; kill -0 "$serving" 2>/dev/null || { cat "$log"; exit 1; }; sleep 0.5; done
logged_in=$(date +%s)
# shellcheck disable=SC1090
source "$env_file"
python3 - "$GW_PLEO" "$COOKIE" "$BURST" "$METRICS" "$logged_in" "$CYCLES" <<'PY'
import http.client, re, statistics, sys, threading, time, urllib.parse, urllib.request
url, cookie, burst, metrics, logged_in = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
cycles = int(sys.argv[6])
u = urllib.parse.urlsplit(url)

def fire():
    """BURST requests released at once, each on its own connection; their latencies in ms."""
    start = threading.Barrier(burst + 1)
    took, statuses = [], []
    lock = threading.Lock()
    def one():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.connect()
        start.wait()
        t = time.perf_counter()
        conn.request("GET", u.path, headers={"Cookie": cookie, "Accept": "application/json"})
        r = conn.getresponse(); r.read()
        ms = (time.perf_counter() - t) * 1000
        with lock:
            took.append(ms); statuses.append(r.status)
    threads = [threading.Thread(target=one) for _ in range(burst)]
    for t in threads: t.start()
    start.wait()
    for t in threads: t.join()
    bad = [s for s in statuses if s != 200]
    if bad:
        sys.exit(f"{len(bad)} of {burst} requests failed: {sorted(set(bad))}")
    took.sort()
    return took[len(took) // 2], took[int(len(took) * 0.99) - 1]

def refreshes():
    text = urllib.request.urlopen(metrics).read().decode()
    count = sum(float(v) for v in re.findall(r'^pleo_gateway_token_refreshes_total\{[^}]*outcome="success"[^}]*\} (\S+)', text, re.M))
    total = sum(float(v) for v in re.findall(r'^pleo_gateway_token_refresh_duration_seconds_sum\{[^}]*outcome="success"[^}]*\} (\S+)', text, re.M))
    return count, total

fire()  # warm-up: connections, pools, the session cache
# Each cycle: three bursts on a fresh token, then one as it falls due (16 s after the token was
# issued: at login, then at the previous cycle's refresh). One burst's p99 is its third slowest
# request, so a single cycle says little; the medians over CYCLES say more.
issued = logged_in
rows = []
for cycle in range(cycles):
    fresh = [fire() for _ in range(3)]
    before = refreshes()
    wait = issued + 16 - time.time()
    if wait > 0:
        time.sleep(wait)
    due = fire()
    issued = time.time()
    after = refreshes()
    n = after[0] - before[0]
    if n != 1:
        sys.exit(f"cycle {cycle + 1}: expected exactly one refresh, saw {n:.0f}")
    refresh_ms = (after[1] - before[1]) / n * 1000
    fresh_p50 = sorted(f[0] for f in fresh)[1]
    fresh_p99 = sorted(f[1] for f in fresh)[1]
    rows.append((fresh_p50, fresh_p99, due[0], due[1], refresh_ms))
print(f"bursts of {burst} concurrent requests on /pleo: per cycle, the median of 3 on a fresh token, then one as it falls due")
print("| cycle | fresh p50 | fresh p99 | due p50 | due p99 | p99 added | the refresh took |")
print("|---|---|---|---|---|---|---|")
for i, (fp50, fp99, dp50, dp99, r) in enumerate(rows, 1):
    print(f"| {i} | {fp50:.1f} ms | {fp99:.1f} ms | {dp50:.1f} ms | {dp99:.1f} ms | {dp99 - fp99:+.1f} ms | {r:.1f} ms |")
med = lambda xs: statistics.median(xs)
print(f"| median | {med([r[0] for r in rows]):.1f} ms | {med([r[1] for r in rows]):.1f} ms "
      f"| {med([r[2] for r in rows]):.1f} ms | {med([r[3] for r in rows]):.1f} ms "
      f"| {med([r[3] - r[1] for r in rows]):+.1f} ms | {med([r[4] for r in rows]):.1f} ms |")
print(f"exactly one refresh in each of {cycles} cycles")
PY
