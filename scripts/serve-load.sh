#!/usr/bin/env bash
# Load-test `shoal serve`: publish a binary cache into a store (unless STORE_DIR already
# is one), start shoal serve on it, send a burst of simultaneous first requests for one
# NAR (it must cost one verification), then many concurrent NAR requests, and compare
# with a static file server on the same cache measured in the same run. Prints NAR
# throughput, p50/p99 latency and the server's peak RSS.
#
#   scripts/serve-load.sh CACHE_DIR PUBLIC_KEY_FILE STORE_DIR [CONCURRENCY [REQUESTS [ACCESS_LOG]]]
#
# ACCESS_LOG, if given, receives an nginx combined log of the requests sent to serve.
# SERVE_FLAGS adds flags to shoal serve, e.g. SERVE_FLAGS="--chunk-cache-size 1GiB".
set -euo pipefail
cache=$1 pk=$2 st=$3 conc=${4:-32} reqs=${5:-200} log=${6:-}
work=$(mktemp -d)
serve_pid=
trap '[[ -n $serve_pid ]] && kill "$serve_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/shoal" ./cmd/shoal
go build -o "$work/serve-load" ./internal/cmd/serve-load
key=$(cat "$pk")
if [[ ! -f $st/shoal-store.json ]]; then
  "$work/shoal" --log-level warn publish --from "file://$cache" --to "$st" --trusted-public-key "$key" --all
fi
"$work/shoal" --log-level warn store index --store "$st" >/dev/null   # stores from older shoals
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$work/shoal" --log-level warn serve --store "$st" --listen "127.0.0.1:$port" \
  --trusted-public-key "$key" ${SERVE_FLAGS:-} &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
"$work/serve-load" --url "http://127.0.0.1:$port" --cache "$cache" --concurrency "$conc" \
  --requests "$reqs" --burst "$conc" --baseline ${log:+--access-log "$log"}
echo "shoal serve peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$serve_pid/status")"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^shoal_serve_(nar_verif|chunk_cache_total|requests_total)'
