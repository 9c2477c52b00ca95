#!/usr/bin/env bash
# Kill the daemon with SIGKILL during concurrent NAR downloads many times in a row
# (default 50), then check the cache verifies clean and serves correct NARs.
# Usage: scripts/sigkill-loop.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL_CRASH_KILLS="${1:-50}" go test -count=1 -timeout 30m -run '^TestSIGKILLLoop$' -v ./cmd/shoal
