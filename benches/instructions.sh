#!/usr/bin/env bash
# Instructions the gateway executes per proxied request in user space, on both paths, with a
# cached session. Not a test: it prints numbers.
#
#   benches/instructions.sh              # 2,000 requests per case
#   REQUESTS=500 benches/instructions.sh
#
# Requests per second and CPU time swing with whatever else a shared machine is doing;
# valgrind's callgrind counts instructions, which come out the same run after run for the
# same binary and inputs. So this is the number to compare two builds by when a change saves a
# few percent of the gateway's own work. It does not see the kernel (the socket calls, about
# half of a proxied request's CPU here) nor cache misses.
#
# It starts what benches/compare.sh starts (SERVE_ONLY=1), with the gateway under callgrind,
# warms each path up, zeroes the counters, sends REQUESTS sequential keep-alive GETs per case
# (benches/keepalive_client.py: 8 headers, then 32 more) and reads the count back. The counts
# include the gateway's background tasks meanwhile (the histogram upkeep every 500 ms, slowed
# down by valgrind as much as everything else), so they are an upper bound.
#
# Needs valgrind and what compare.sh needs. GATEWAY_BIN as in compare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-2000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v callgrind_control >/dev/null || { echo "missing valgrind (apt-get install -y valgrind)"; exit 1; }
if [ -z "${GATEWAY_BIN:-}" ]; then
  cargo build --release --quiet --bin pleo-gateway
  export GATEWAY_BIN="$CARGO_TARGET_DIR/release/pleo-gateway"
fi

work=$(mktemp -d)
SERVE_ONLY=1 SERVE_ONLY_ENV="$work/targets.env" \
  GATEWAY_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.%p" \
  benches/compare.sh >"$work/serve.log" 2>&1 &
serving=$!
cleanup() { kill "$serving" 2>/dev/null || true; wait "$serving" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 1200); do grep -q '^serving' "$work/serve.log" && break; kill -0 "$serving" 2>/dev/null || { cat "$work/serve.log"; exit 1; }; sleep 0.5; done
# shellcheck disable=SC1090
source "$work/targets.env"
client=benches/keepalive_client.py

# Instructions (Ir) since the last zeroing, from a dump of the running gateway.
dumped_instructions() {
  rm -f "$work"/callgrind.*.[0-9]*
  callgrind_control --dump "$GW_PID" >/dev/null 2>&1
  awk '/^(summary|totals):/ {print $2; exit}' "$work"/callgrind.*.[0-9]*
}

echo "requests per case: $REQUESTS (sequential, keep-alive, cached session)"
echo "| path | request headers | instructions / request |"
echo "|---|---|---|"
for path in app pleo; do
  url=$GW_APP; [ "$path" = pleo ] && url=$GW_PLEO
  python3 "$client" "$url" "$COOKIE" 300 0   # pools, the session cache, the assertion
  for extra in 0 32; do
    callgrind_control --zero "$GW_PID" >/dev/null 2>&1
    python3 "$client" "$url" "$COOKIE" "$REQUESTS" "$extra"
    ir=$(dumped_instructions)
    python3 - "$path" "$extra" "$ir" "$REQUESTS" <<'PY'
import sys
path, extra, ir, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"| gw-{path} | {8 + extra} | {ir / n:,.0f} |")
PY
  done
done
