#!/usr/bin/env bash
# measure-upgrades.sh: what a sequence of upgrades costs through shoal, against the xz NARs.
#
#   scripts/measure-upgrades.sh [--seeded] [--store DIR] CORPUS
#
# CORPUS is a directory made by make-corpus with --xz (paths, pk, cache-xz/), e.g.
#   make-corpus --xz CORPUS golang.org/toolchain@v0.0.1-go1.25.0.linux-amd64 \
#                           golang.org/toolchain@v0.0.1-go1.25.1.linux-amd64 ...
# The script publishes cache-xz into a chunk store (printing publish throughput), starts
# a daemon with an empty local cache, and substitutes the paths one after the other with a
# real Nix, each into a fresh store. For each it prints the bytes the daemon fetched (chunks
# from the store, or the whole NAR from the upstream) and that figure as a ratio of the
# path's xz NAR. The first path is the cold fetch; every later one is an upgrade.
# Where the store's manifests offer deltas (manifest version 2, written by publish), the
# daemon fetches those whose base chunks it holds; the "deltas" column shows how many of
# the fetched bytes were delta objects, and the figures are the wire cost with deltas.
# A store without deltas gives 0 there and the plain-chunk cost.
# With --store DIR, the chunk store in DIR (published from CORPUS's cache-xz, e.g. by an
# earlier run or with other publish options) is used as it is instead of a fresh one, so
# both modes can be measured against the same store. The script only reads it.
# With --seeded, each upgrade instead starts a fresh daemon with an EMPTY local cache and
# `shoal seed`s the previous path from the local /nix/store (the corpus paths must be
# valid there), as on a machine that has version N installed but never ran shoal before;
# bytes read from /nix/store are not counted as fetched.
# Runs as root with single-user Nix; touches nothing outside a temporary directory.
set -euo pipefail
seeded= store=
while [[ ${1:-} == --* ]]; do
  case $1 in
  --seeded) seeded=1; shift ;;
  --store) store=$(cd "${2:?--store needs a directory}" && pwd); shift 2 ;;
  *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
corpus=$(cd "${1:?usage: $0 [--seeded] [--store DIR] CORPUS}" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
daemon_pid=
cleanup() {
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT

# Built before XDG_CACHE_HOME moves: Go keeps its build cache there, and an empty one
# rebuilds every dependency.
(cd "$repo" && go build -o "$work/shoal" ./cmd/shoal)
export NIX_CONFIG="experimental-features = nix-command
sandbox = false
build-users-group =
substituters ="
export XDG_CACHE_HOME=$work/xdg-cache
pk=$(cat "$corpus/pk")
mapfile -t paths <"$corpus/paths"

if [[ -z $store ]]; then
  store=$work/store
  echo "== publish"
  "$work/shoal" publish --from "file://$corpus/cache-xz" --to "$store" \
    --trusted-public-key "$pk" --all 2>&1 | grep -v '^time=' || true
fi

port=$((20000 + RANDOM % 20000))
# start_daemon STATE-DIR: a daemon that seeds only what it is told to, so every path it
# reads from /nix/store is one this script chose.
start_daemon() {
  "$work/shoal" --log-level warn daemon --listen "127.0.0.1:$port" --store "file://$store" \
    --upstream "file://$corpus/cache-xz" --trusted-public-key "$pk" --state-dir "$1" \
    --seed-related 0 &
  daemon_pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/nix-cache-info" >/dev/null && break; sleep 0.1; done
}
start_daemon "$work/state"

# Bytes from the network: the local store's are read from disk.
fetched() {
  curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^shoal_fetched_bytes_total/ && !/source="localstore"/ { s += $2 } END { printf "%d\n", s }'
}
# Of those, the delta objects ("store-delta", "peers-delta").
delta_bytes() {
  curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^shoal_fetched_bytes_total/ && /-delta"/ { s += $2 } END { printf "%d\n", s }'
}

echo "== substitute through the daemon"
if [[ -n $seeded ]]; then echo "(base only in /nix/store: each upgrade starts with an empty chunk cache)"
else echo "(base in the chunk cache: one daemon substitutes every path in turn)"; fi
printf '%-45s %12s %12s %12s %8s\n' "store path" "xz NAR" "fetched" "deltas" "ratio"
total_xz=0 total_fetched=0 total_deltas=0 i=0
prev=
for p in "${paths[@]}"; do
  if [[ -n $seeded && -n $prev ]]; then
    kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true
    start_daemon "$work/state-$i"
    "$work/shoal" seed --state-dir "$work/state-$i" --daemon "127.0.0.1:$port" "$prev"
  fi
  prev=$p
  before=$(fetched) before_deltas=$(delta_bytes)
  XDG_CACHE_HOME=$work/xdg-$i nix copy --from "http://127.0.0.1:$port" --to "$work/root-$i" \
    --option trusted-public-keys "$pk" "$p"
  nix store verify --store "$work/root-$i" --option trusted-public-keys "$pk" "$p"
  after=$(fetched) after_deltas=$(delta_bytes)
  xz=$(sed -n 's/^FileSize: //p' "$corpus/cache-xz/$(basename "$p" | cut -c1-32).narinfo")
  got=$((after - before)) deltas=$((after_deltas - before_deltas))
  printf '%-45s %12d %12d %12d %8.3f\n' "$(basename "$p" | cut -c34-)" "$xz" "$got" "$deltas" "$(echo "$got / $xz" | bc -l)"
  if ((i > 0)); then
    total_xz=$((total_xz + xz)) total_fetched=$((total_fetched + got)) total_deltas=$((total_deltas + deltas))
  fi
  chmod -R u+w "$work/root-$i"; rm -rf "$work/root-$i"
  i=$((i + 1))
done
if ((total_xz > 0)); then
  printf '%-45s %12d %12d %12d %8.3f\n' "upgrades (all but the first)" "$total_xz" "$total_fetched" "$total_deltas" "$(echo "$total_fetched / $total_xz" | bc -l)"
fi
