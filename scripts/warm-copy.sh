#!/usr/bin/env bash
# warm-copy.sh: a warm `nix copy` through the daemon (every chunk already in its local
# cache, every NAR verified) against `nix copy` straight from the plain zstd cache, in
# the same run.
#
#   scripts/warm-copy.sh [--rounds N] CORPUS
#
# CORPUS is a directory made by make-corpus (paths, pk, cache-zstd/). A daemon with an
# empty state directory uses cache-zstd as its upstream; one nix copy of every path
# through it fills its cache. Then, N times (default 3), every path is copied into a
# fresh store through the daemon, straight from cache-zstd, and from an uncompressed
# copy of cache-zstd (the floor: Nix unpacking and hashing with nothing to decode), each
# with its own narinfo cache. The wall times are printed with the ratios to the plain
# copy, and the medians of the rounds. The stores are on a journaled ext4 of their own
# (store_fs in lib.sh). Runs as root with single-user Nix; touches nothing outside a
# temporary directory.
set -euo pipefail
rounds=3
while [[ ${1:-} == --* ]]; do
  case $1 in
  --rounds) rounds=$2; shift 2 ;;
  *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
corpus=$(cd "${1:?usage: $0 [--rounds N] CORPUS}" && pwd)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
shoal_setup
store_fs
uncompressed_cache "$corpus/cache-zstd" "$work/cache-none"
pk=$(cat "$corpus/pk")
mapfile -t paths <"$corpus/paths"
port=$((20000 + RANDOM % 20000))
start_daemon "$port" --state-dir "$work/state" --upstream "file://$corpus/cache-zstd" --trusted-public-key "$pk"

n=0
copy() { # FROM: seconds for one nix copy of every path into a fresh store
  n=$((n + 1))
  local start end
  start=$(date +%s.%N)
  XDG_CACHE_HOME=$work/xdg-$n nix copy --from "$1" --to "$stores/root-$n" \
    --option trusted-public-keys "$pk" "${paths[@]}"
  end=$(date +%s.%N)
  chmod -R u+w "$stores/root-$n"; rm -rf "$stores/root-$n" "$work/xdg-$n"
  echo "$end - $start" | bc -l
}
echo "cold through the daemon (fills its cache): $(copy "http://127.0.0.1:$port") s"
printf '%-6s %9s %9s %9s %12s %12s\n' round "shoal s" "plain s" "floor s" "shoal/plain" "floor/plain"
ratios=() floors=()
for r in $(seq "$rounds"); do
  s=$(copy "http://127.0.0.1:$port")
  p=$(copy "file://$corpus/cache-zstd")
  f=$(copy "file://$work/cache-none")
  ratios+=("$(echo "$s / $p" | bc -l)") floors+=("$(echo "$f / $p" | bc -l)")
  printf '%-6s %9.2f %9.2f %9.2f %12.3f %12.3f\n' "$r" "$s" "$p" "$f" "${ratios[-1]}" "${floors[-1]}"
done
median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", a[int((NR + 1) / 2)] }'; }
echo "median warm/plain: $(printf '%s\n' "${ratios[@]}" | median)   floor/plain: $(printf '%s\n' "${floors[@]}" | median)"
