#!/usr/bin/env bash
# Warm-cache random reads through spockfs-mount: fio 4 KiB random reads
# (psync, 10 s, --invalidate=0 so fio does not drop the page cache first)
# on a 256 MiB file read twice beforehand, on the local disk, on a mount
# with close-to-open caching (the default) and on one with --no-keep-cache
# (every open drops the pages: the behaviour before close-to-open caching).
#
#   bench/warm-read.sh        # ROUNDS (default 2), SIZE_MIB (default 256)
#
# Needs fio and fuse3; builds nothing (cargo build --release -p axum-app -p
# spockfs-mount first). Stops and unmounts exactly what it started.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$here/../target/release}
ROUNDS=${ROUNDS:-2}
SIZE_MIB=${SIZE_MIB:-256}
work=$(mktemp -d)
pid=
cleanup() {
  for m in keep nokeep; do fusermount3 -u "$work/$m" 2>/dev/null || true; done
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/root" "$work/keep" "$work/nokeep" "$work/local"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/axum-app" --listen "127.0.0.1:$port" --root "$work/root" >"$work/server.log" 2>&1 & pid=$!
for _ in $(seq 100); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$port/fs/" && break; sleep 0.1; done
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/root/big"
cp "$work/root/big" "$work/local/big"
"$BIN/spockfs-mount" "http://127.0.0.1:$port/fs" "$work/keep"
"$BIN/spockfs-mount" --no-keep-cache "http://127.0.0.1:$port/fs" "$work/nokeep"
iops() {
  fio --name=r --filename="$1" --rw=randread --bs=4k --ioengine=psync --runtime=10 --time_based \
    --size="${SIZE_MIB}M" --readonly --invalidate=0 --output-format=terse 2>/dev/null | awk -F';' '{print $8}'
}
echo "| round | local disk (page cache) | spockfs-mount, close-to-open | ratio | spockfs-mount --no-keep-cache | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  declare -A v
  for m in local keep nokeep; do
    cat "$work/$m/big" >/dev/null; cat "$work/$m/big" >/dev/null
    v[$m]=$(iops "$work/$m/big")
  done
  awk -v r="$r" -v l="${v[local]}" -v k="${v[keep]}" -v n="${v[nokeep]}" \
    'BEGIN{printf "| %d | %d | %d | %.2f | %d | %.2f |\n", r, l, k, k/l, n, n/l}'
done
