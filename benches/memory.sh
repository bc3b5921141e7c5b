#!/usr/bin/env bash
# The gateway's memory per connection: its RSS after wrk runs of rising concurrency on each
# path (16 to 512 connections, 3 s each, one gateway per path). Not a test: it prints numbers.
# The slope between two rows is the cost of one more client connection, together with the
# pooled connection to the app or Pleo it keeps busy (up to proxy.upstream_max_connections on
# the app path; Pleo's pool has no bound).
#
#   benches/memory.sh
#
# It starts what benches/compare.sh starts (SERVE_ONLY=1). Needs what compare.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
levels=(16 64 128 256 512)
echo "| path | start |$(printf ' c%s |' "${levels[@]}")"
echo "|---|---|$(printf -- '---|%.0s' "${levels[@]}")"
for path in app pleo; do
  env_file=$(mktemp)
  log=$(mktemp)
  SERVE_ONLY=1 SERVE_ONLY_ENV="$env_file" benches/compare.sh >"$log" 2>&1 &
  serving=$!
  for _ in $(seq 1 600); do grep -q '^serving' "$log" && break; kill -0 "$serving" 2>/dev/null || { cat "$log"; exit 1; }; sleep 0.5; done
  # shellcheck disable=SC1090
  source "$env_file"
  url=$GW_APP; [ "$path" = pleo ] && url=$GW_PLEO
  rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$GW_PID/status"; }
  row="| gw-$path | $(rss) |"
  for c in "${levels[@]}"; do
    wrk -t2 -c"$c" -d3s -H "Cookie: $COOKIE" "$url" >/dev/null
    row="$row $(rss) |"
  done
  echo "$row"
  kill "$serving"; wait "$serving" 2>/dev/null || true
  rm -f "$env_file" "$log"
done
