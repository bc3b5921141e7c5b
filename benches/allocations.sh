#!/usr/bin/env bash
# Heap allocations and session-store round trips per proxied request, on both paths, with a
# cached session. Not a test: it prints numbers.
#
#   benches/allocations.sh          # 2,000 requests per case
#   REQUESTS=5000 benches/allocations.sh
#
# It starts what benches/compare.sh starts (SERVE_ONLY=1: the app, the mock Pleo, a private
# Redis, the gateway logged in for real), warms each path up, then sends REQUESTS sequential
# keep-alive GETs per case while `perf stat` counts the gateway's calls into glibc's malloc,
# realloc and calloc through uprobes (every Rust allocation is one of these), and Redis's
# INFO commandstats counts the store's commands. Frees are not counted. Each path runs with a
# browser-sized request (8 headers) and with 32 headers more, so the table shows how
# allocations grow with the header count. The counts include whatever the gateway's
# background tasks did meanwhile (nothing, between scrapes), so they are an upper bound.
#
# Needs root (uprobes), perf (`apt-get install -y linux-perf`) and what compare.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-2000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v perf >/dev/null || { echo "missing perf (apt-get install -y linux-perf)"; exit 1; }
libc=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64|libc\.so\.6 \(libc6,x86-64/ {print $NF; exit}')
libc=${libc:-/lib/x86_64-linux-gnu/libc.so.6}
for fn in malloc realloc calloc; do
  perf probe -l 2>/dev/null | grep -q "probe_libc:$fn " \
    || perf probe -q -x "$libc" --add "$fn" >/dev/null 2>&1 \
    || { echo "cannot add a uprobe on $fn in $libc (root needed)"; exit 1; }
done

env_file=$(mktemp)
log=$(mktemp)
SERVE_ONLY=1 SERVE_ONLY_ENV="$env_file" benches/compare.sh >"$log" 2>&1 &
serving=$!
cleanup() { kill "$serving" 2>/dev/null || true; wait "$serving" 2>/dev/null || true; rm -f "$env_file" "$log"; }
trap cleanup EXIT
for _ in $(seq 1 600); do grep -q '^serving' "$log" && break; kill -0 "$serving" 2>/dev/null || { cat "$log"; exit 1; }; sleep 0.5; done
# shellcheck disable=SC1090
source "$env_file"

client=benches/keepalive_client.py

store_calls() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[=,:]' '/^cmdstat_/ && $1 != "cmdstat_info" {s += $3} END {print s+0}'; }

echo "requests per case: $REQUESTS (sequential, keep-alive, cached session)"
echo "| path | request headers | allocations / request | store commands / request |"
echo "|---|---|---|---|"
for path in app pleo; do
  url=$GW_APP; [ "$path" = pleo ] && url=$GW_PLEO
  python3 "$client" "$url" "$COOKIE" 300 0   # pools, the session cache, the assertion
  for extra in 0 32; do
    before=$(store_calls)
    counts=$(perf stat -x, -e probe_libc:malloc,probe_libc:realloc,probe_libc:calloc \
      -p "$GW_PID" -- python3 "$client" "$url" "$COOKIE" "$REQUESTS" "$extra" 2>&1 >/dev/null \
      | awk -F, '/probe_libc/ {s += $1} END {print s+0}')
    after=$(store_calls)
    python3 - "$path" "$extra" "$counts" "$((after - before))" "$REQUESTS" <<'PY'
import sys
path, extra, allocs, store, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"| gw-{path} | {8 + extra} | {allocs / n:.1f} | {store / n:.3f} |")
PY
  done
done
