#!/usr/bin/env bash
# browser.sh -- Roam's browser client in headless Chromium, on loopback.
#
# Runs web's TestBrowserBench: a `roam server --nat userspace` on
# 127.0.0.1, Debian's chromium driven by chromedriver, and a loopback HTTP
# server the page reaches through the tunnel as http://100.96.0.1:PORT.
# Measures page load -> connected, time to first byte of a tunnelled fetch
# (first of a session, later ones, first chunk of a streamed body) and the
# download throughput of a 20 MiB body through roam.fetch, against the same
# body fetched directly by the page (no tunnel); medians of RUNS runs.
# Prints one summary line. No root needed.
#
#   cmd/bench/browser.sh
#   RUNS=9 BYTES=$((50<<20)) cmd/bench/browser.sh
#   VERBOSE=1 cmd/bench/browser.sh   # also the per-run numbers, on stderr
#
# Needs: apt-get install chromium chromium-driver
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUNS=${RUNS:-5} BYTES=${BYTES:-$((20 << 20))}
for t in chromium chromedriver go; do
  command -v $t >/dev/null || { echo "browser.sh: missing $t (apt-get install chromium chromium-driver)" >&2; exit 1; }
done
LOG=$(mktemp -t roam-browser-bench.XXXXXX)
trap 'rm -f "$LOG"' EXIT
cd "$REPO"
if ! ROAM_BROWSER_BENCH=1 ROAM_BENCH_RUNS=$RUNS ROAM_BENCH_BYTES=$BYTES \
  go test -count=1 -timeout 5m -run '^TestBrowserBench$' -v ./web/ >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "browser.sh: the bench failed (log above)" >&2
  exit 1
fi
[[ -z ${VERBOSE:-} ]] || grep -E 'run [0-9]+:' "$LOG" >&2
grep '^BENCH browser:' "$LOG" | sed 's/^BENCH //'
