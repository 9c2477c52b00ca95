#!/usr/bin/env bash
# Prints the vendorHash that nixpkgs' buildGoModule computes for shoal at a commit
# (HEAD by default), and with --write stores it in nix/vendor-hash for nix/package.nix.
#
# buildGoModule runs `go mod vendor` and takes the NAR hash (sha256, SRI form) of the
# vendor directory; this does the same with the Go and Nix on PATH, on the committed
# tree only, so uncommitted files cannot change the answer. Run it after every change to
# go.mod or go.sum. Needs go, git and nix (`nix hash path`).
set -euo pipefail
cd "$(dirname "$0")/.."

write=false
if [[ ${1:-} == --write ]]; then
  write=true
  shift
fi
rev=${1:-HEAD}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
git archive "$rev" | tar -x -C "$tmp/src"
(cd "$tmp/src" && GOFLAGS=-mod=mod go mod vendor -o "$tmp/vendor")
# Nix gets caches of its own, so nothing outside $tmp is touched.
hash=$(XDG_CACHE_HOME="$tmp/cache" HOME="$tmp/home" \
  nix --extra-experimental-features nix-command hash path --type sha256 --sri "$tmp/vendor")

if $write; then
  echo "$hash" >nix/vendor-hash
  echo "nix/vendor-hash: $hash (for $(git rev-parse --short "$rev"))"
else
  echo "$hash"
fi
