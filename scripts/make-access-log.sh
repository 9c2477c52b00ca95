#!/usr/bin/env bash
# make-access-log.sh: a realistic access log of a binary cache, to try
# `shoal analyze logs` on.
#
#   scripts/make-access-log.sh CACHE_DIR OUT_DIR [make-access-log flags...]
#
# CACHE_DIR is a file binary cache (e.g. the cache-xz/ of a make-corpus corpus). OUT_DIR
# receives access.log.gz (nginx combined format; -format s3 for S3 server access logs)
# and cache/, a copy of the cache whose NAR files are dated as if the store paths, in
# version order, had been published one every -interval (45 days), the newest five days
# before the log ends. Then, for example:
#
#   shoal analyze logs --cache OUT_DIR/cache --out OUT_DIR/report OUT_DIR/access.log.gz
#
# Flags: -days 30, -fetches-per-day 10000, -interval 1080h, -end 2026-11-01T00:00:00Z,
# -format combined|s3, -seed 1 (the same seed gives the same log).
set -euo pipefail
cache=${1:?usage: $0 CACHE_DIR OUT_DIR [flags]}
out=${2:?usage: $0 CACHE_DIR OUT_DIR [flags]}
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
cd "$repo" && exec go run ./internal/cmd/make-access-log -cache "$(cd "$cache" && pwd)" -out "$(cd "$out" && pwd)" "$@"
