# lib.sh: what the measuring scripts share; sourced, never run.
#
# shoal_setup builds shoal into a temporary directory ($work, removed on exit along
# with whatever was registered with on_exit) and sets Nix up for single-user runs as
# root with no substituter but the ones a command names. start_daemon and
# wait_for_http start the daemon under test and wait for it to answer.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=
daemon_pid=
exit_hooks=()

# on_exit CMD...: run CMD when the script ends, before $work goes (last registered, first run).
on_exit() { exit_hooks=("$*" "${exit_hooks[@]}"); }

_cleanup() {
  local h
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for h in "${exit_hooks[@]}"; do eval "$h" || true; done
  if [[ -n $work ]]; then chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"; fi
}

shoal_setup() {
  work=$(mktemp -d)
  trap _cleanup EXIT
  # Built before XDG_CACHE_HOME moves: Go keeps its build cache there, and an empty one
  # rebuilds every dependency.
  (cd "$repo" && go build -o "$work/shoal" ./cmd/shoal)
  export NIX_CONFIG="experimental-features = nix-command
sandbox = false
build-users-group =
substituters ="
}

# wait_for_http URL: up to five seconds for URL to answer.
wait_for_http() {
  local _
  for _ in $(seq 50); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2
  return 1
}

# start_daemon PORT DAEMON-FLAGS...: a daemon on 127.0.0.1:PORT that seeds only what it
# is told to, so every path it reads from /nix/store is one the script chose.
start_daemon() {
  local port=$1
  shift
  "$work/shoal" --log-level "${SHOAL_LOG_LEVEL:-warn}" daemon --listen "127.0.0.1:$port" \
    --seed-related 0 "$@" &
  daemon_pid=$!
  wait_for_http "http://127.0.0.1:$port/nix-cache-info"
}

# store_fs: sets $stores, a directory for the Nix stores a script copies into. As root it
# is a fresh ext4 filesystem, journaled as a NixOS install makes it, on a loop device in
# $work. Without a journal, ext4 skips every inode deleted in the last 30 s to 5 min
# when it allocates one, and a script that deletes a 12,000-file store path and writes
# the next seconds later makes Nix spend four fifths of its time there: 4-5 s per Go
# toolchain against 1 s with the journal. Set SHOAL_STORES=DIR to use DIR as it is.
stores=
store_fs() {
  if [[ -n ${SHOAL_STORES:-} ]]; then
    stores=$SHOAL_STORES
    return
  fi
  stores=$work/stores
  mkdir -p "$stores"
  if [[ $(id -u) != 0 ]] || ! command -v mkfs.ext4 >/dev/null; then
    echo "note: stores on $(df --output=fstype "$stores" | tail -1) as they are (not root, or no mkfs.ext4)" >&2
    return
  fi
  truncate -s 8G "$work/stores.img"
  mkfs.ext4 -q -F "$work/stores.img"
  mount -o loop "$work/stores.img" "$stores"
  on_exit "umount $stores"
}

# uncompressed_cache SRC DST: DST is SRC (a zstd binary cache) with every NAR
# decompressed and its narinfo saying so. Nix copying from it as a local cache does only
# its own work, unpacking and hashing, with no decoder: the floor under any substituter.
# (URL, Compression, FileHash and FileSize are outside a narinfo's signature.)
uncompressed_cache() {
  local src=$1 dst=$2 ni url
  mkdir -p "$dst/nar"
  cp "$src/nix-cache-info" "$dst/"
  for ni in "$src"/*.narinfo; do
    url=$(awk '$1 == "URL:" { print $2 }' "$ni")
    zstd -q -d -c "$src/$url" >"$dst/${url%.zst}"
    awk -v url="${url%.zst}" '$1 == "URL:" { print "URL: " url; next }
      $1 == "Compression:" { print "Compression: none"; next }
      $1 == "FileHash:" || $1 == "FileSize:" { next } { print }' "$ni" >"$dst/$(basename "$ni")"
  done
}

# stop_daemon: stop the daemon start_daemon started.
stop_daemon() {
  [[ -n $daemon_pid ]] || return 0
  kill "$daemon_pid" 2>/dev/null
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=
}

# start_link RATE DELAY DIR LOG: serve DIR across an emulated link. A network namespace
# of its own holds the server, link-serve (net/http's file server, which honours Range),
# at $link_host (10.201.N.2, port 80); the veth pair to it, $link_dev on this side,
# carries a tbf qdisc at RATE in each direction, and its counters are the bytes that
# crossed the link. No netem here (the kernel lacks it), so DELAY is not a qdisc:
# link-serve holds every request for DELAY before answering, which is "DELAY per
# request", what a round trip costs a request on a kept-alive connection. TCP handshakes
# and slow start are not slowed, which favours whoever opens more connections by at most
# DELAY each. link-serve logs every response to LOG (see internal/cmd/link-serve).
# Everything goes when the script ends.
link_host= link_dev=
start_link() {
  local rate=$1 delay=$2 dir=$3 log=$4
  (cd "$repo" && go build -o "$work/link-serve" ./internal/cmd/link-serve)
  local ns=shoal-link-$$ net=$((RANDOM % 200 + 10))
  local va=shl$$a vb=shl$$b
  link_host=10.201.$net.2 link_dev=$va
  ip netns add "$ns"
  on_exit "ip netns del $ns"
  ip link add "$va" type veth peer name "$vb"
  on_exit "ip link del $va 2>/dev/null"
  ip link set "$vb" netns "$ns"
  ip addr add "10.201.$net.1/30" dev "$va"
  ip link set "$va" up
  ip -n "$ns" addr add "$link_host/30" dev "$vb"
  ip -n "$ns" link set "$vb" up
  ip -n "$ns" link set lo up
  # A burst of 64 KiB is about 5 ms at 100 Mbit/s; a queue of 50 ms holds what TCP
  # sends ahead without dropping it.
  tc qdisc add dev "$va" root tbf rate "$rate" burst 64kb latency 50ms
  tc -n "$ns" qdisc add dev "$vb" root tbf rate "$rate" burst 64kb latency 50ms
  : >"$log"
  ip netns exec "$ns" "$work/link-serve" --listen "$link_host:80" --delay "$delay" --log "$log" "$dir" &
  local pid=$!
  on_exit "kill $pid 2>/dev/null; wait $pid 2>/dev/null"
}

# link_bytes: the bytes that crossed the link so far, both ways, headers included.
link_bytes() {
  echo $(($(cat "/sys/class/net/$link_dev/statistics/rx_bytes") + $(cat "/sys/class/net/$link_dev/statistics/tx_bytes")))
}
