#!/usr/bin/env bash
# What a burst of concurrent requests pays when it arrives just as the session's access token
# is due for refresh: the burst's p99 against the same burst on a fresh token, next to what one
# refresh took (the token request and the store write, from the gateway's own histogram). The
# refresh must happen exactly once and add at most about one refresh to the burst's p99.
#
#   benches/refresh_burst.sh             # 300 concurrent requests
#   BURST=500 benches/refresh_burst.sh
#
# It starts what benches/compare.sh starts (SERVE_ONLY=1) with the mock's tokens living 30 s and
# the gateway's proactive refresh off, so the first requests after 15 s (a token is due once
# half its lifetime is left, at most refresh_before_expiry) must refresh it themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
BURST=${BURST:-300}
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
python3 - "$GW_PLEO" "$COOKIE" "$BURST" "$METRICS" "$logged_in" <<'PY'
import http.client, re, sys, threading, time, urllib.parse, urllib.request
url, cookie, burst, metrics, logged_in = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
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
base = [fire() for _ in range(3)]
before = refreshes()
wait = logged_in + 16 - time.time()
if wait > 0:
    time.sleep(wait)
p50, p99 = fire()
after = refreshes()
n = after[0] - before[0]
refresh_ms = (after[1] - before[1]) / n * 1000 if n else float("nan")
base_p50 = sorted(b[0] for b in base)[1]
base_p99 = sorted(b[1] for b in base)[1]
print(f"burst of {burst} concurrent requests on /pleo (median of 3 bursts on a fresh token, then one at the refresh)")
print("| burst | p50 | p99 | refreshes |")
print("|---|---|---|---|")
print(f"| fresh token | {base_p50:.1f} ms | {base_p99:.1f} ms | 0 |")
print(f"| token due | {p50:.1f} ms | {p99:.1f} ms | {n:.0f} |")
print(f"one refresh (token request + store write): {refresh_ms:.1f} ms; p99 added by the refresh: {p99 - base_p99:.1f} ms")
if n != 1:
    sys.exit(f"expected exactly one refresh, saw {n:.0f}")
PY
