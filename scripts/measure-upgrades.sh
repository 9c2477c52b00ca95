#!/usr/bin/env bash
# measure-upgrades.sh: what a sequence of upgrades costs through shoal, against the xz NARs.
#
#   scripts/measure-upgrades.sh [--seeded] [--store DIR] CORPUS
#   scripts/measure-upgrades.sh --link RATE:DELAY [--verify-wait D] [--store DIR] CORPUS
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
# With --link RATE:DELAY (e.g. 100mbit:20ms) the script instead times each upgrade over
# an emulated link against plain Nix on the same link, in the same run: see link_run
# below, and docs/upgrades.md for the figures.
# Runs as root with single-user Nix; touches nothing outside a temporary directory (and,
# with --link, a network namespace and veth pair of its own, removed on exit).
set -euo pipefail
seeded= store= link= verify_wait=
while [[ ${1:-} == --* ]]; do
  case $1 in
  --seeded) seeded=1; shift ;;
  --store) store=$(cd "${2:?--store needs a directory}" && pwd); shift 2 ;;
  --link) link=${2:?--link needs RATE:DELAY}; shift 2 ;;
  --verify-wait) verify_wait=${2:?--verify-wait needs a duration}; shift 2 ;;
  *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
corpus=$(cd "${1:?usage: $0 [--seeded | --link RATE:DELAY [--verify-wait D]] [--store DIR] CORPUS}" && pwd)
if [[ -n $link && -n $seeded ]]; then echo "--link and --seeded do not go together" >&2; exit 2; fi
if [[ -n $verify_wait && -z $link ]]; then echo "--verify-wait goes with --link" >&2; exit 2; fi
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
shoal_setup
export XDG_CACHE_HOME=$work/xdg-cache
pk=$(cat "$corpus/pk")
mapfile -t paths <"$corpus/paths"

# publish [FLAGS...]: the corpus's xz cache into a fresh chunk store at $store.
publish() {
  store=$work/store
  echo "== publish"
  "$work/shoal" publish --from "file://$corpus/cache-xz" --to "$store" \
    --trusted-public-key "$pk" --all "$@" 2>&1 | grep -v '^time=' || true
}
port=$((20000 + RANDOM % 20000))

# xz_size PATH: the FileSize of PATH's narinfo in the corpus's xz cache.
xz_size() { sed -n 's/^FileSize: //p' "$corpus/cache-xz/$(basename "$1" | cut -c1-32).narinfo"; }
# name PATH: the store path's name without its hash.
name() { basename "$1" | cut -c34-; }

# link_run: the upgrades over an emulated link, through the daemon and with plain Nix.
#
# The corpus's cache-xz and a chunk store published from it (packed layout, v3) are
# served across the link start_link (lib.sh) makes: RATE each way, DELAY per request.
#
# For each path, in the corpus's order: `nix copy` through one daemon (its local cache
# holds the paths before, as on a machine that had them), then `nix copy` straight from
# the xz cache, each into an empty store with its own XDG_CACHE_HOME. It prints for both
# the wall time, the bytes that crossed the veth (both directions, headers included),
# the requests link-serve answered, and the CPU seconds of the daemon and of Nix; then
# per path and in total the ratios daemon/plain. The first path is the cold fetch, every
# later one an upgrade. When the corpus has cache-zstd, a third copy per path comes
# from an uncompressed copy of it as a local file:// cache ("floor"): no link and
# nothing to decode, only Nix unpacking, hashing and writing the path, the floor under
# any substituter on this machine, with its ratio to plain. The stores are on a
# journaled ext4 of their own (store_fs in lib.sh). For the breakdown, SHOAL_KEEP=DIR keeps the daemon's log
# (SHOAL_LOG_LEVEL=debug adds the time each NAR took to plan, assemble and send),
# link-serve's log of every request, and each copy's start and end (DIR/copies); with
# SHOAL_PERF=1 also a perf profile of the daemon during each copy through it.
link_run() {
  local rate=${link%%:*} delay=${link#*:}
  [[ -n $rate && -n $delay && $link == *:* ]] || { echo "--link wants RATE:DELAY, e.g. 100mbit:20ms" >&2; exit 2; }
  [[ -n $store ]] || publish --layout v3
  store_fs
  local floor=
  if [[ -d $corpus/cache-zstd ]]; then
    floor=$work/cache-none
    uncompressed_cache "$corpus/cache-zstd" "$floor"
  fi
  mkdir -p "$work/www"
  ln -s "$corpus/cache-xz" "$work/www/cache-xz"
  ln -s "$store" "$work/www/store"
  local log=$work/link.log
  start_link "$rate" "$delay" "$work/www" "$log"
  local srv=$link_host
  wait_for_http "http://$srv/cache-xz/nix-cache-info"

  local daemon_log=/dev/stderr
  [[ -n ${SHOAL_KEEP:-} ]] && mkdir -p "$SHOAL_KEEP" && daemon_log=$SHOAL_KEEP/daemon.log
  start_daemon "$port" --store "http://$srv/store" --upstream "http://$srv/cache-xz" \
    --trusted-public-key "$pk" --state-dir "$work/state" ${verify_wait:+--verify-wait "$verify_wait"} 2>"$daemon_log"

  local tck
  tck=$(getconf CLK_TCK)
  daemoncpu() { awk -v t="$tck" '{ printf "%.2f\n", ($14 + $15) / t }' "/proc/$daemon_pid/stat"; }
  # copy FROM PATH N: "seconds link-bytes requests daemon-cpu nix-cpu" for one nix copy
  # into an empty store; the path is verified there afterwards, outside the time. N
  # names the copy's files (it runs in a subshell: no counter survives it).
  copy() {
    local n=$3 b0 c0 l0
    b0=$(link_bytes) c0=$(daemoncpu) l0=$(wc -l <"$log")
    local t0 perf_pid=
    t0=$(date +%s.%N)
    if [[ -n ${SHOAL_PERF:-} && $1 == *127.0.0.1* ]]; then
      perf record -q -g -p "$daemon_pid" -o "$SHOAL_KEEP/perf-$n.data" 2>/dev/null &
      perf_pid=$!
    fi
    XDG_CACHE_HOME=$work/xdg-$n /usr/bin/time -o "$work/time" -f '%e %U %S' \
      nix copy --from "$1" --to "$stores/root-$n" --option trusted-public-keys "$pk" "$2" >&2
    if [[ -n $perf_pid ]]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
    local b1 c1 l1
    b1=$(link_bytes) c1=$(daemoncpu) l1=$(wc -l <"$log")
    [[ -z ${SHOAL_KEEP:-} ]] || echo "$n $1 $(name "$2") $t0 $(date +%s.%N)" >>"$SHOAL_KEEP/copies"
    nix store verify --store "$stores/root-$n" --option trusted-public-keys "$pk" "$2"
    chmod -R u+w "$stores/root-$n"; rm -rf "$stores/root-$n" "$work/xdg-$n"
    local e u s
    read -r e u s <"$work/time"
    echo "$e $((b1 - b0)) $((l1 - l0)) $(echo "$c1 - $c0" | bc -l) $(echo "$u + $s" | bc -l)"
  }

  echo "== upgrades over a $rate link, $delay per request (daemon: --store and --upstream across the link)"
  printf '%-22s %-7s %8s %12s %6s %8s %8s   %7s %7s\n' "store path" via "time s" "link bytes" reqs "shoal s" "nix s" "time" "bytes"
  local i=0 p
  local -a tot_u=(0 0 0 0 0) tot_a=(0 0 0 0 0) # daemon s, plain s, daemon bytes, plain bytes, local s
  for p in "${paths[@]}"; do
    local d pl
    d=$(copy "http://127.0.0.1:$port" "$p" "$i-shoal")
    pl=$(copy "http://$srv/cache-xz" "$p" "$i-plain")
    local ds db dr dd dn ps pb pr pd pn ls=0 lb lr ld ln
    read -r ds db dr dd dn <<<"$d"
    read -r ps pb pr pd pn <<<"$pl"
    printf '%-22s %-7s %8.2f %12d %6d %8.2f %8.2f\n' "$(name "$p")" shoal "$ds" "$db" "$dr" "$dd" "$dn"
    printf '%-22s %-7s %8.2f %12d %6d %8.2f %8.2f   %7.3f %7.3f\n' "" plain "$ps" "$pb" "$pr" "$pd" "$pn" \
      "$(echo "$ds / $ps" | bc -l)" "$(echo "$db / $pb" | bc -l)"
    if [[ -n $floor ]]; then
      read -r ls lb lr ld ln <<<"$(copy "file://$floor" "$p" "$i-floor")"
      printf '%-22s %-7s %8.2f %12d %6d %8.2f %8.2f   %7.3f\n' "" floor "$ls" "$lb" "$lr" "$ld" "$ln" "$(echo "$ls / $ps" | bc -l)"
    fi
    tot_a=("$(echo "${tot_a[0]} + $ds" | bc -l)" "$(echo "${tot_a[1]} + $ps" | bc -l)" $((tot_a[2] + db)) $((tot_a[3] + pb)) "$(echo "${tot_a[4]} + $ls" | bc -l)")
    if ((i > 0)); then
      tot_u=("$(echo "${tot_u[0]} + $ds" | bc -l)" "$(echo "${tot_u[1]} + $ps" | bc -l)" $((tot_u[2] + db)) $((tot_u[3] + pb)) "$(echo "${tot_u[4]} + $ls" | bc -l)")
    fi
    i=$((i + 1))
  done
  total() { # LABEL DAEMON-S PLAIN-S DAEMON-BYTES PLAIN-BYTES LOCAL-S
    printf '%-30s shoal %7.2f s %11d B   plain %7.2f s %11d B   daemon/plain: time %.3f  bytes %.3f' \
      "$1" "$2" "$4" "$3" "$5" "$(echo "$2 / $3" | bc -l)" "$(echo "$4 / $5" | bc -l)"
    if [[ -n $floor ]]; then printf '   floor/plain: time %.3f' "$(echo "$6 / $3" | bc -l)"; fi
    echo
  }
  total "upgrades (all but the first)" "${tot_u[@]}"
  total "every path (first one cold)" "${tot_a[@]}"
  [[ -n ${SHOAL_KEEP:-} ]] && cp "$log" "$SHOAL_KEEP/link.log"
  return 0
}

if [[ -n $link ]]; then
  link_run
  exit 0
fi

[[ -n $store ]] || publish

start_local_daemon() { # STATE-DIR
  start_daemon "$port" --store "file://$store" --upstream "file://$corpus/cache-xz" \
    --trusted-public-key "$pk" --state-dir "$1"
}
start_local_daemon "$work/state"

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
    stop_daemon
    start_local_daemon "$work/state-$i"
    "$work/shoal" seed --state-dir "$work/state-$i" --daemon "127.0.0.1:$port" "$prev"
  fi
  prev=$p
  before=$(fetched) before_deltas=$(delta_bytes)
  XDG_CACHE_HOME=$work/xdg-$i nix copy --from "http://127.0.0.1:$port" --to "$work/root-$i" \
    --option trusted-public-keys "$pk" "$p"
  nix store verify --store "$work/root-$i" --option trusted-public-keys "$pk" "$p"
  after=$(fetched) after_deltas=$(delta_bytes)
  xz=$(xz_size "$p")
  got=$((after - before)) deltas=$((after_deltas - before_deltas))
  printf '%-45s %12d %12d %12d %8.3f\n' "$(name "$p")" "$xz" "$got" "$deltas" "$(echo "$got / $xz" | bc -l)"
  if ((i > 0)); then
    total_xz=$((total_xz + xz)) total_fetched=$((total_fetched + got)) total_deltas=$((total_deltas + deltas))
  fi
  chmod -R u+w "$work/root-$i"; rm -rf "$work/root-$i"
  i=$((i + 1))
done
if ((total_xz > 0)); then
  printf '%-45s %12d %12d %12d %8.3f\n' "upgrades (all but the first)" "$total_xz" "$total_fetched" "$total_deltas" "$(echo "$total_fetched / $total_xz" | bc -l)"
fi
