#!/usr/bin/env bash
# measure-deltas.sh: what delta objects save an upgrading client, and what they cost
# to publish and store.
#
#   scripts/measure-deltas.sh [--variants "off 3 1 5 3:better"] [--patch-cache DIR] CORPUS...
#
# CORPUS is a directory made by make-corpus (paths, pk, and cache-xz/ or cache-zstd/),
# its paths consecutive versions of one package in version order, e.g.
#   make-corpus --xz --zstd CORPUS golang.org/x/tools@v0.49.0 golang.org/x/tools@v0.50.0 ...
# For each corpus the script publishes the whole cache once per variant, each into a
# fresh store, and prints publish throughput (MB/s of NAR) and the store bytes the
# delta objects add, and what all upgrades together fetch. A variant is "off" (no
# deltas) or BASES[:LEVEL] (--delta-bases, --delta-level); the first delta variant is
# the one the upgrade table uses. Then, per
# upgrade (each path from the previous one), it prints what a client holding the
# previous path fetches, read from the published manifests: the new chunks as full
# objects, the same with deltas where they are smaller, and for reference the source
# cache's compressed NAR and `zstd -19 --long=27 --patch-from=OLD NEW` on the whole
# NARs. Decode speeds are MB/s of new chunk bytes, plain chunks vs deltas (bases
# already in memory, as on a client), in the same process. zstd -19 on large NARs takes
# minutes per upgrade: with --patch-cache, each patch size is kept in DIR (named by the
# two store path hashes) and reused by later runs.
# Touches nothing outside a temporary directory.
set -euo pipefail
variants="off 3" patch_cache=
while [[ ${1:-} == --* ]]; do
  case $1 in
    --variants) variants=$2 ;;
    --patch-cache) patch_cache=$(mkdir -p "$2" && cd "$2" && pwd) ;;
    *) echo "measure-deltas.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
(($# > 0)) || { sed -n '2,23p' "$0" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$repo" && go build -o "$work/shoal" ./cmd/shoal && go build -o "$work/upgradecost" ./internal/cmd/upgrade-cost)

# ratio A B: A/B with two decimals, "n/a" when B is zero.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# bytes DIR: the total size of the files under DIR (directories' own sizes, which
# du counts, would swamp small objects).
bytes() { (find "$1" -type f -printf '%s\n' 2>/dev/null || true) | awk '{ s += $1 } END { printf "%d\n", s }'; }

for c in "$@"; do
  corpus=$(cd "$c" && pwd)
  cache=$corpus/cache-xz
  [[ -d $cache ]] || cache=$corpus/cache-zstd
  pk=$(cat "$corpus/pk")
  mapfile -t paths <"$corpus/paths"
  hps=()
  for p in "${paths[@]}"; do b=${p##*/}; hps+=("${b:0:32}"); done
  echo "== $(basename "$corpus"): ${#paths[@]} paths from $(basename "$cache")"

  echo
  echo "| variant | publish MB/s of NAR | delta objects | delta store bytes | store bytes | deltas / store | all upgrades, bytes fetched | / full new chunks |"
  echo "|---|---|---|---|---|---|---|---|"
  table_store=
  for v in $variants; do
    store=$work/store-$(basename "$corpus")-${v/:/-}
    args=(--deltas=false)
    if [[ $v != off ]]; then
      args=(--deltas --delta-bases "${v%%:*}")
      [[ $v == *:* ]] && args+=(--delta-level "${v#*:}")
      [[ -n $table_store ]] || table_store=$store
    fi
    out=$("$work/shoal" --log-level warn publish --from "file://$cache" --to "$store" \
      --trusted-public-key "$pk" --all "${args[@]}" 2>&1)
    speed=$(sed -n 's/.*NAR bytes: *[0-9]* (\([0-9.]*\) MB\/s).*/\1/p' <<<"$out")
    ndeltas=$( (find "$store/deltas" -type f 2>/dev/null || true) | wc -l)
    dbytes=$(bytes "$store/deltas")
    sbytes=$(bytes "$store")
    # What every upgrade together fetches, new chunks as deltas where offered.
    up=$("$work/upgradecost" "$store" "${hps[@]}" | awk -F'\t' 'NR > 1 { d += $7 + $8; c += $5 + $8 } END { printf "%d %d\n", d, c }')
    echo "| $v | $speed | $ndeltas | $dbytes | $sbytes | $(ratio "$dbytes" "$sbytes") | ${up% *} | $(ratio "${up% *}" "${up#* }") |"
  done
  [[ -n $table_store ]] || continue

  # The uncompressed NARs, for zstd --patch-from.
  for p in "${paths[@]}"; do
    hp=${p##*/}; hp=${hp:0:32}
    url=$(sed -n 's/^URL: //p' "$cache/$hp.narinfo")
    case $url in
      *.xz) xz -dc "$cache/$url" ;;
      *.zst) zstd -dcq "$cache/$url" ;;
      *) cat "$cache/$url" ;;
    esac >"$work/$hp.nar"
  done

  echo
  echo "Per upgrade, what a client holding the previous path fetches (bytes, the manifest included; ratios to the source NAR):"
  echo
  echo "| upgrade to | source NAR | manifest | full new chunks | with deltas | patch-from | chunks/NAR | deltas/NAR | patch-from/NAR | deltas/patch-from | decode MB/s plain, delta |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"

  "$work/upgradecost" "$table_store" "${hps[@]}" | tail -n +2 |
    while IFS=$'\t' read -r path narb srcb nnew chunkb ndelta deltab manb plain dd; do
      hp=${path##*/}; hp=${hp:0:32}
      i=0; for h in "${hps[@]}"; do [[ $h == "$hp" ]] && break; i=$((i + 1)); done
      old=${hps[$((i - 1))]}
      cached=${patch_cache:+$patch_cache/$old-$hp.size}
      if [[ -n $cached && -s $cached ]]; then
        pf=$(cat "$cached")
      else
        zstd -19 --long=27 -q -f --patch-from="$work/$old.nar" "$work/$hp.nar" -o "$work/patch.zst" 2>/dev/null
        pf=$(stat -c %s "$work/patch.zst")
        [[ -z $cached ]] || echo "$pf" >"$cached"
      fi
      chunkb=$((chunkb + manb)) deltab=$((deltab + manb))
      echo "| ${path#*-} | $srcb | $manb | $chunkb | $deltab | $pf | $(ratio "$chunkb" "$srcb") | $(ratio "$deltab" "$srcb") | $(ratio "$pf" "$srcb") | $(ratio "$deltab" "$pf") | $plain, $dd |"
    done
  echo
  rm -f "$work"/*.nar
done
