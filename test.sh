#!/usr/bin/env bash
# The project's test command: ./test.sh
#
# Installs what the tests need when it is missing (Debian packages, through apt-get;
# Go modules pinned in go.sum come from the Go module proxy), then checks formatting, vets,
# builds, runs every test with the race detector (end-to-end tests drive a real Nix
# and fail rather than skip when it is missing) and runs each benchmark once, with
# -short so benchmarks that support it use a small input.
# Runs as root on Debian; needs no terminal.
set -euo pipefail
cd "$(dirname "$0")"

section() { printf '\n=== %s\n' "$*"; }

section "tools"
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "test.sh: go not found (expected on PATH or in /usr/local/go/bin)" >&2; exit 1; }

# Debian package -> a command it provides, to tell cheaply whether it is installed.
declare -A provides=([nix-bin]=nix-store [xz-utils]=xz [zstd]=zstd [bzip2]=bzip2 [iproute2]=ip [nginx]=nginx)
missing=()
for pkg in "${!provides[@]}"; do
  command -v "${provides[$pkg]}" >/dev/null || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  if ((EUID != 0)); then
    echo "test.sh: need root to install ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq </dev/null >/dev/null
  # Packages such as nginx start a system service when installed; the tests run their own
  # instances, so keep the package scripts from starting anything (policy-rc.d, as in
  # Debian containers), and put back whatever policy was there before.
  policy=/usr/sbin/policy-rc.d
  [[ -e $policy ]] && cp -p "$policy" "$policy.shoal-saved"
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
  status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" </dev/null >/dev/null || status=$?
  if [[ -e $policy.shoal-saved ]]; then mv "$policy.shoal-saved" "$policy"; else rm -f "$policy"; fi
  ((status == 0)) || { echo "test.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
# Use the Go that is installed rather than fetching another toolchain, and never let
# a command rewrite go.mod or go.sum. On a clean clone the pinned modules come from
# the Go module proxy, the only other place this script reaches.
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly
go mod download
echo "$(go version); $(nix-store --version)"

# A real S3 server for the S3 tests: MinIO at a pinned version, built once from the Go
# module proxy (about 4 minutes, 150 MB) and cached between runs.
minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
minio_dir="${XDG_CACHE_HOME:-$HOME/.cache}/shoal-test/minio-$minio_version"
if [[ ! -x $minio_dir/minio ]]; then
  echo "building MinIO $minio_version into $minio_dir"
  GOFLAGS= GOBIN="$minio_dir" go install "github.com/minio/minio@$minio_version"
fi
export SHOAL_TEST_MINIO="$minio_dir/minio"

section "gofmt"
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
  echo "test.sh: these files need gofmt -w:" >&2
  echo "$unformatted" >&2
  exit 1
fi

section "nix-instantiate --parse"
# The NixOS module and the flake need nixpkgs to build, which isn't here; every tracked
# .nix file must at least parse (cmd/shoal's tests evaluate the module's command line).
nixfiles=$(git ls-files -- '*.nix')
[[ -n $nixfiles ]] || { echo "test.sh: no tracked .nix files found" >&2; exit 1; }
nixcache=$(mktemp -d)
for f in $nixfiles; do
  XDG_CACHE_HOME=$nixcache nix-instantiate --parse "$f" >/dev/null || { echo "test.sh: $f does not parse" >&2; exit 1; }
done
rm -rf "$nixcache"
echo "$(wc -w <<<"$nixfiles") files parse"

section "go vet"
go vet ./...

section "go build"
go build ./...

section "go test -race"
SHOAL_E2E=1 go test -race -count=1 ./... </dev/null

section "benchmarks (one iteration each)"
SHOAL_E2E=1 go test -short -run '^$' -bench . -benchtime=1x ./... </dev/null

section "ok"
