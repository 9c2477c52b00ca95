#!/usr/bin/env bash
# narinfo-load.sh: narinfo hits under load, the daemon against the plain binary cache it
# fronts, in the same run.
#
#   scripts/narinfo-load.sh [--connections N] [--seconds S] CORPUS
#
# CORPUS is a directory made by make-corpus (paths, pk, cache-zstd/). nginx serves
# cache-zstd on loopback (a plain binary cache, what Nix talks to without shoal); a
# shoal daemon with an empty state directory uses it as its upstream. One narinfo is
# asked of the daemon once (so it is cached), then wrk (2 threads, N connections,
# default 64) asks for it for S seconds (default 10), of the daemon, of nginx, and of
# net/http's file server (internal/cmd/link-serve with no delay) over the same cache:
# the floor of a Go server on this machine, since with N connections wrk keeps both
# cores busy and a p99 then measures scheduling as much as the server's work.
# Prints requests/s and latency percentiles of each, and the daemon's against the others'.
# Needs nginx and wrk (Debian packages); touches nothing outside a temporary directory.
set -euo pipefail
conns=64 secs=10
while [[ ${1:-} == --* ]]; do
  case $1 in
  --connections) conns=$2; shift 2 ;;
  --seconds) secs=$2; shift 2 ;;
  *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
corpus=$(cd "${1:?usage: $0 [--connections N] [--seconds S] CORPUS}" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

(cd "$repo" && go build -o "$work/shoal" ./cmd/shoal && go build -o "$work/link-serve" ./internal/cmd/link-serve)
ngx_port=$(free_port) shoal_port=$(free_port) go_port=$(free_port)
mkdir -p "$work/nginx/tmp"
user=; [[ $(id -u) == 0 ]] && user="user root;"
cat >"$work/nginx/nginx.conf" <<CONF
$user
worker_processes 1;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp;
  server { listen 127.0.0.1:$ngx_port; root $corpus/cache-zstd; }
}
CONF
nginx=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
"$work/shoal" daemon --listen "127.0.0.1:$shoal_port" --state-dir "$work/state" \
  --upstream "http://127.0.0.1:$ngx_port" --trusted-public-key "$(cat "$corpus/pk")" \
  --log-level warn &
pids+=($!)
"$work/link-serve" --listen "127.0.0.1:$go_port" --delay 0 "$corpus/cache-zstd" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$shoal_port/nix-cache-info" >/dev/null && curl -sf "http://127.0.0.1:$ngx_port/nix-cache-info" >/dev/null &&
    curl -sf "http://127.0.0.1:$go_port/nix-cache-info" >/dev/null && break
  sleep 0.1
done
hp=$(head -1 "$corpus/paths" | sed 's|/nix/store/||; s|-.*||')
curl -sf "http://127.0.0.1:$shoal_port/$hp.narinfo" >/dev/null

run() { # name url
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$2" >"$work/$1.out"
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/$1.out")
  p50=$(awk '$1=="50%" {print $2}' "$work/$1.out")
  p99=$(awk '$1=="99%" {print $2}' "$work/$1.out")
  printf '%-8s %12s req/s   p50 %10s   p99 %10s\n' "$1" "$rps" "$p50" "$p99"
  eval "${1}_rps=$rps ${1}_p99=$p99"
}
echo "one cached narinfo, wrk -t2 -c$conns -d${secs}s:"
run shoal "http://127.0.0.1:$shoal_port/$hp.narinfo"
run nginx "http://127.0.0.1:$ngx_port/$hp.narinfo"
run nethttp "http://127.0.0.1:$go_port/$hp.narinfo"
ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; print n }'; }
ratio() { # name rps p99
  awk -v n="$1" -v a="$shoal_rps" -v b="$2" -v c="$(ms "$shoal_p99")" -v d="$(ms "$3")" \
    'BEGIN { printf "shoal/%s: throughput %.2fx, p99 %.2fx (%.2f ms against %.2f ms)\n", n, a/b, c/d, c, d }'
}
ratio nginx "$nginx_rps" "$nginx_p99"
ratio nethttp "$nethttp_rps" "$nethttp_p99"
