#!/usr/bin/env bash
# Drive a shoal daemon with many concurrent Nix-like clients and print throughput,
# narinfo hit/miss latency (p50/p99), NAR MB/s (cold through the upstream, warm from the
# local cache) and the daemon's peak RSS, each with a ratio against the same load sent
# straight to the binary cache in the same run (NARs decompressed and hashed, as Nix does).
#
#   scripts/daemon-load.sh CACHE_DIR PUBLIC_KEY_FILE [daemon-load flags...]
#
# CACHE_DIR is a binary cache directory (e.g. written by `nix copy --to file://...`);
# it is served on loopback as the daemon's only upstream. Extra flags go to the driver
# (internal/cmd/daemon-load): -clients, -narinfo-ops, -miss-ratio, -nar-rounds.
set -euo pipefail
cache=$1 pk=$2
shift 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/shoal" ./cmd/shoal
go build -o "$work/daemon-load" ./internal/cmd/daemon-load
"$work/daemon-load" -shoal "$work/shoal" -cache "$cache" -trusted-public-key "$pk" "$@"
