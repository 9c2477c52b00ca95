#!/usr/bin/env bash
# Publish one binary cache to a directory store and to an S3 store (a local MinIO) in
# the same run and print the throughput ratio; then drop all but the newest store path
# from each store with `shoal store gc` and print what it freed, and verify what is left.
#
#   scripts/s3-bench.sh CACHE_DIR PUBLIC_KEY_FILE KEEP_PATH
#
# Needs SHOAL_TEST_MINIO (./test.sh builds it) and the shoal binary built from this tree.
set -euo pipefail
cache=$1 pk=$2 keep=$3
: "${SHOAL_TEST_MINIO:?set SHOAL_TEST_MINIO to a MinIO binary}"
work=$(mktemp -d)
trap 'kill $minio 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/shoal" ./cmd/shoal
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=bench-access AWS_SECRET_ACCESS_KEY=bench-secret-key
MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY MINIO_BROWSER=off \
  "$SHOAL_TEST_MINIO" server "$work/minio" --address "127.0.0.1:$port" --quiet >"$work/minio.log" 2>&1 &
minio=$!
mkdir -p "$work/minio/bench"   # a top-level directory is a bucket to MinIO
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/minio/health/ready" >/dev/null && break; sleep 0.1; done
s3="s3://bench/store?endpoint=http://127.0.0.1:$port"
key=$(cat "$pk")

secs() { local t0=$EPOCHREALTIME; "$@" >"$work/out" 2>&1 || { cat "$work/out"; exit 1; }; echo "$EPOCHREALTIME - $t0" | bc; }
dir_s=$(secs "$work/shoal" --log-level warn publish --from "file://$cache" --to "$work/dir" --trusted-public-key "$key" --all)
grep -E 'NAR bytes|new chunk bytes' "$work/out"
s3_s=$(secs "$work/shoal" --log-level warn publish --from "file://$cache" --to "$s3" --trusted-public-key "$key" --all)
grep -E 'NAR bytes|new chunk bytes' "$work/out"
echo "publish to directory: ${dir_s}s; to S3 (MinIO on loopback): ${s3_s}s; S3/directory time ratio: $(echo "scale=2; $s3_s / $dir_s" | bc)"

echo "$keep" >"$work/keep"
for st in "$work/dir" "$s3"; do
  echo "== gc $st"
  "$work/shoal" --log-level warn store gc --store "$st" --keep-narinfos-from "$work/keep" --grace 0s
  "$work/shoal" --log-level warn store verify --store "$st"
done
