#!/usr/bin/env bash
# What a fleet on GlusterFS costs: the same requests and the same tree copy
# against one axum-app on local disk (the baseline, started here) and against
# the fleet of deploy/gluster/fleet.sh (a node, and the gateway pooling two).
#
#   bench/fleet.sh            # prints a markdown table
#
# Rows: GETATTR latency with one connection (wrk -t1 -c1, avg and p99),
# GETATTR throughput with 16 connections, and a `cp -a` of a tree (DIRS
# directories of FILES 4 KiB files, default 50 x 20 = 1,000 files) through
# spockfs-mount, median of RUNS (default 3). CACHE is passed to fleet.sh
# (strict, or invalidation). Needs root, wrk, fuse3, glusterfs-server; builds
# nothing: run `cargo build --release -p axum-app -p pingora-gateway -p
# spockfs-mount` first. Stops exactly what it started.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$here/../target/release}
RUNS=${RUNS:-3}
DIRS=${DIRS:-50}
FILES=${FILES:-20}
LUA=$here/lua/request.lua
command -v wrk >/dev/null || { echo "fleet.sh: wrk is missing (apt-get install wrk)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do fusermount3 -u "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$here/../deploy/gluster/fleet.sh" down "$work/fleet" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The source tree, and the baseline: one node on local disk.
for d in $(seq "$DIRS"); do
  mkdir -p "$work/src/d$d"
  for f in $(seq "$FILES"); do head -c 4096 /dev/urandom >"$work/src/d$d/f$f"; done
done
mkdir -p "$work/local"
p=$(port)
"$BIN/axum-app" --listen "127.0.0.1:$p" --root "$work/local" >"$work/local.log" 2>&1 & pids+=($!)
LOCAL=http://127.0.0.1:$p/fs
for _ in $(seq 100); do curl -s -o /dev/null -X OPTIONS "$LOCAL/" && break; sleep 0.1; done
BIN=$BIN "$here/../deploy/gluster/fleet.sh" up "$work/fleet" >/dev/null
# shellcheck disable=SC1091
source "$work/fleet/env"
echo x >"$work/local/f"
echo x >"$FLEET_MNT1/f"

latency() { # url -> "avg p99" of GETATTR, one connection
  BENCH_METHOD=GETATTR wrk -t1 -c1 -d5s --latency -s "$LUA" "$1/f" 2>/dev/null |
    awk '/^    Latency/{avg=$2} /^ +99%/{p99=$2} END{print avg, p99}'
}
rps() { # url -> GETATTR req/s, 16 connections
  BENCH_METHOD=GETATTR wrk -t2 -c16 -d5s -s "$LUA" "$1/f" 2>/dev/null | awk '/Requests\/sec/{print $2}'
}
copy() { # url name -> median seconds of RUNS tree copies through spockfs-mount
  local m=$work/mnt-$2 times=()
  mkdir -p "$m"
  "$BIN/spockfs-mount" "$1" "$m"
  mounts+=("$m")
  for r in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s.%N)
    cp -a "$work/src" "$m/copy$r"
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc)")
  done
  fusermount3 -u "$m"
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((RUNS + 1) / 2))p"
}

declare -A lat rate cp
for t in local node gateway; do
  case $t in local) u=$LOCAL ;; node) u=$FLEET_NODE1 ;; gateway) u=$FLEET_GATEWAY ;; esac
  lat[$t]=$(latency "$u")
  rate[$t]=$(rps "$u")
  cp[$t]=$(copy "$u" "$t")
done
# Straight onto the Gluster mount, no SpockFS at all.
times=()
for r in $(seq "$RUNS"); do
  t0=$(date +%s.%N); cp -a "$work/src" "$FLEET_MNT1/direct$r"; t1=$(date +%s.%N)
  times+=("$(echo "$t1 - $t0" | bc)")
done
direct=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((RUNS + 1) / 2))p")

n=$((DIRS * FILES))
echo "| | one node, local disk (baseline) | one node on Gluster | gateway → 2 nodes on Gluster | cp -a onto the Gluster mount directly |"
echo "|---|---:|---:|---:|---:|"
echo "| GETATTR latency, 1 connection (avg / p99) | ${lat[local]/ / \/ } | ${lat[node]/ / \/ } | ${lat[gateway]/ / \/ } | |"
echo "| GETATTR req/s, 16 connections | ${rate[local]} | ${rate[node]} | ${rate[gateway]} | |"
echo "| \`cp -a\` of $n files × 4 KiB through spockfs-mount, s (median of $RUNS) | ${cp[local]} | ${cp[node]} | ${cp[gateway]} | $direct |"
echo
echo "Gluster client options: CACHE=${CACHE:-strict} (deploy/gluster/fleet.sh)."
