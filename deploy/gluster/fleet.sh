#!/usr/bin/env bash
# A SpockFS fleet on one machine: a GlusterFS replica-2 volume (glusterd and
# two bricks in a network namespace of their own, on 127.0.0.2), one
# GlusterFS FUSE mount per SpockFS node, NODES axum-app nodes serving those
# mounts, and pingora-gateway pooling the nodes. What a real fleet is, minus
# the machines: on real hosts each node mounts the volume and the gateway's
# pool lists the nodes' addresses.
#
#   deploy/gluster/fleet.sh up   [DIR]   # default DIR: /tmp/spockfs-fleet
#   deploy/gluster/fleet.sh down [DIR]
#
# `up` prints (and writes to DIR/env, for `source`) the gateway URL, each
# node's URL, mount point and PID, and each brick's PID. `down` stops
# exactly what `up` started (by PID) and removes the volume, the namespace
# and DIR.
#
# Env: NODES (default 2), BIN (the directory with axum-app and
#      pingora-gateway; default target/release of this checkout),
#      CACHE (strict, the default: Gluster's client caches off and the FUSE
#      caches at 0 — read-after-write across nodes; or invalidation:
#      Gluster's md-cache with upcall cache-invalidation, faster, and
#      invalidated asynchronously).
# Needs root, glusterfs-server (apt-get install glusterfs-server), iproute2.
set -euo pipefail

cmd=${1:-}
DIR=${2:-/tmp/spockfs-fleet}
NS=spockfs-fleet
VOL=spockfs
NODES=${NODES:-2}
CACHE=${CACHE:-strict}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$here/../../target/release}

die() { echo "fleet.sh: $*" >&2; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 100); do curl -s -o /dev/null -X OPTIONS "$1/" && return 0; sleep 0.1; done
  die "nothing answers at $1"
}
gl() { gluster --mode=script "$@"; }

# The Gluster client options that give read-after-write across mounts.
strict_options=(performance.quick-read performance.io-cache performance.read-ahead
  performance.stat-prefetch performance.write-behind performance.open-behind
  performance.readdir-ahead performance.nl-cache)

up() {
  [ "$(id -u)" = 0 ] || die "run as root (glusterd, network namespaces, FUSE mounts)"
  command -v glusterd >/dev/null || die "glusterd is missing: apt-get install glusterfs-server"
  for b in axum-app pingora-gateway; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: cargo build --release -p axum-app -p pingora-gateway"
  done
  [ -e "$DIR/env" ] && die "$DIR/env exists: a fleet is up there (fleet.sh down $DIR first)"
  mkdir -p "$DIR"
  : >"$DIR/env"
  say() { echo "$1=$2" >>"$DIR/env"; }

  # glusterd in its own network namespace: its ports (24007, bricks from
  # 49152) stay off the host's, and the bricks get an address that is not
  # 127.0.0.1 (the gluster CLI refuses that one).
  ip netns add "$NS"
  say FLEET_NS "$NS"
  ip -n "$NS" link set lo up
  ip -n "$NS" addr add 127.0.0.2/8 dev lo
  # Its state in DIR (nothing left in /var/lib/glusterd, no system hooks).
  mkdir -p "$DIR/glusterd"
  sed "s|option working-directory .*|option working-directory $DIR/glusterd|" \
    /etc/glusterfs/glusterd.vol >"$DIR/glusterd.vol"
  nsenter --net="/run/netns/$NS" glusterd --volfile="$DIR/glusterd.vol" -p "$DIR/glusterd.pid" \
    --log-file="$DIR/glusterd.log"
  say FLEET_GLUSTERD_PID "$(cat "$DIR/glusterd.pid")"
  for _ in $(seq 100); do gl volume info >/dev/null 2>&1 && break; sleep 0.1; done
  mkdir -p "$DIR/brick1" "$DIR/brick2"
  gl volume create "$VOL" replica 2 "127.0.0.2:$DIR/brick1" "127.0.0.2:$DIR/brick2" force >/dev/null
  case $CACHE in
    strict) for o in "${strict_options[@]}"; do gl volume set "$VOL" "$o" off >/dev/null; done ;;
    invalidation)
      for o in features.cache-invalidation performance.cache-invalidation; do
        gl volume set "$VOL" "$o" on >/dev/null
      done
      gl volume set "$VOL" features.cache-invalidation-timeout 600 >/dev/null
      gl volume set "$VOL" performance.md-cache-timeout 600 >/dev/null ;;
    *) die "CACHE=$CACHE: strict or invalidation" ;;
  esac
  gl volume start "$VOL" >/dev/null
  say FLEET_VOLUME "$VOL"
  i=0
  for pidfile in /var/run/gluster/vols/"$VOL"/*.pid; do
    for _ in $(seq 50); do [ -s "$pidfile" ] && break; sleep 0.1; done
    i=$((i + 1)); say "FLEET_BRICK${i}_PID" "$(cat "$pidfile")"
  done

  # One Gluster FUSE mount per node. glusterfs itself, not mount.glusterfs
  # (whose fopen-keep-cache=false is broken in 10.3); the client runs in
  # the namespace (it talks to the bricks), the mount is the host's.
  fuse_opts=()
  [ "$CACHE" = strict ] && fuse_opts=(--attribute-timeout=0 --entry-timeout=0
    --negative-timeout=0 --fopen-keep-cache=false)
  gw_upstreams=""
  for n in $(seq "$NODES"); do
    mkdir -p "$DIR/mnt$n"
    nsenter --net="/run/netns/$NS" glusterfs --process-name fuse --volfile-server=127.0.0.2 \
      --volfile-id="$VOL" "${fuse_opts[@]}" --log-file="$DIR/mnt$n.log" "$DIR/mnt$n"
    for _ in $(seq 100); do mountpoint -q "$DIR/mnt$n" && break; sleep 0.1; done
    mountpoint -q "$DIR/mnt$n" || die "the Gluster mount $DIR/mnt$n did not come up (see $DIR/mnt$n.log)"
    say "FLEET_MNT$n" "$DIR/mnt$n"
    p=$(port)
    "$BIN/axum-app" --listen "127.0.0.1:$p" --root "$DIR/mnt$n" >"$DIR/node$n.log" 2>&1 &
    say "FLEET_NODE${n}_PID" $!
    say "FLEET_NODE$n" "http://127.0.0.1:$p/fs"
    wait_http "http://127.0.0.1:$p/fs"
    gw_upstreams+="\"127.0.0.1:$p\", "
  done

  gp=$(port)
  cat >"$DIR/gateway.toml" <<EOF
listen = [{ addr = "127.0.0.1:$gp" }]
[[vhost]]
host = "*"
prefix = "/fs"
upstreams = [${gw_upstreams%, }]
health_check_ms = 500
health_check_path = "/fs/"
EOF
  "$BIN/pingora-gateway" --config "$DIR/gateway.toml" >"$DIR/gateway.log" 2>&1 &
  say FLEET_GATEWAY_PID $!
  say FLEET_GATEWAY "http://127.0.0.1:$gp/fs"
  wait_http "http://127.0.0.1:$gp/fs"
  say FLEET_NODES "$NODES"
  cat "$DIR/env"
}

down() {
  if [ -e "$DIR/env" ]; then
    # shellcheck disable=SC1091
    source "$DIR/env"
    for v in $(compgen -v | grep -E '^FLEET_(NODE[0-9]+|GATEWAY)_PID$'); do
      kill "${!v}" 2>/dev/null || true
    done
    for n in $(seq "${FLEET_NODES:-0}"); do
      m=FLEET_MNT$n
      [ -n "${!m:-}" ] && { umount "${!m}" 2>/dev/null || umount -l "${!m}" 2>/dev/null || true; }
    done
  fi
  if command -v gluster >/dev/null && gl volume info "$VOL" >/dev/null 2>&1; then
    gl volume stop "$VOL" force >/dev/null 2>&1 || true
    gl volume delete "$VOL" >/dev/null 2>&1 || true
  fi
  if [ -s "$DIR/glusterd.pid" ]; then
    kill "$(cat "$DIR/glusterd.pid")" 2>/dev/null || true
  fi
  # glusterd's self-heal daemon for this volume (it outlives `volume stop`).
  if [ -s "/var/run/gluster/shd/$VOL/$VOL-shd.pid" ]; then
    kill "$(cat "/var/run/gluster/shd/$VOL/$VOL-shd.pid")" 2>/dev/null || true
  fi
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$DIR"
}

case $cmd in
  up) up ;;
  down) down ;;
  *) echo "usage: fleet.sh up|down [DIR]" >&2; exit 2 ;;
esac
