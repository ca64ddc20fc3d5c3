#!/usr/bin/env bash
# The cost of identities, measured with wrk against axum-app:
#
#   1. GETATTR of one file at 16 connections, the server acting as itself
#      vs `--as nobody` (every request on a pool thread switched to nobody's
#      credentials): the per-thread switch costs at most 5% (issue target);
#   2. `--vhosts-dir` with 1,000 sites, each acting as its own owner
#      (`--as-owner`, sites owned by 1,000 different uids): GETATTR spread
#      over the 1,000 hosts vs always the same host (every request may switch
#      credentials, and the first to a site opens it);
#   3. the memory of the open-sites cache: the server's RSS before and after
#      all 1,000 sites were opened.
#
#   bench/identity.sh                      # ROUNDS=5 DURATION=5s
#
# Env: ROUNDS (interleaved rounds per pair, default 5), DURATION (per run,
# default 5s), CONNS (default 16), SITES (default 1000), SPOCKFS_BIN.
# Needs root (switching credentials, chown). Servers listen on 127.0.0.1 and
# are stopped by PID on exit. Writes bench/results/identity-DATE.md.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}
SITES=${SITES:-1000}
log() { printf '[identity.sh] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (credential switching, chown)"; exit 2; }
command -v wrk >/dev/null || { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2; }
BIN=${SPOCKFS_BIN:-$REPO/target/release/axum-app}
if [ -z "${SPOCKFS_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release -p axum-app >&2)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/spockfs-identity.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/root" "$TMP/sites"
chmod 755 "$TMP/root"
head -c 4096 /dev/urandom >"$TMP/root/f"
chmod 644 "$TMP/root/f"
for ((i = 0; i < SITES; i++)); do
  d="$TMP/sites/site$i.test"
  mkdir "$d"
  head -c 4096 /dev/zero >"$d/f"
  chown -R "$((20000 + i)):$((20000 + i))" "$d"
done

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name args... -> sets $ADDR and $LAST_PID
  local name=$1 p; shift
  p=$(port)
  "$BIN" --listen "127.0.0.1:$p" "$@" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/fs/" -X OPTIONS && break; sleep 0.05; done
  curl -s -o /dev/null "http://127.0.0.1:$p/fs/" -X OPTIONS || { log "$name did not start: $(cat "$TMP/$name.log")"; exit 2; }
  ADDR="127.0.0.1:$p"
}
rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

# wrk run: addr hosts -> requests/s
run() {
  local out; out=$(BENCH_HOSTS=$2 BENCH_PATH=/fs/f wrk -t2 -c"$CONNS" -d"$DURATION" \
    -s "$BENCH_DIR/lua/hosts.lua" "http://$1/fs/f" 2>&1)
  local n e; n=$(sed -n 's/.*BENCH requests=\([0-9]*\).*/\1/p' <<<"$out")
  e=$(sed -n 's/.*status_errors=\([0-9]*\).*/\1/p' <<<"$out")
  [ "${e:-1}" = 0 ] || { log "unexpected statuses: $out"; exit 1; }
  local secs=${DURATION%s}
  echo $((n / secs))
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

start self --root "$TMP/root"; SELF=$ADDR
start as --root "$TMP/root" --as nobody; AS=$ADDR
start sites --vhosts-dir "$TMP/sites" --as-owner; SITESADDR=$ADDR; SITES_PID=$LAST_PID

log "GETATTR at $CONNS connections: itself vs --as nobody ($ROUNDS x $DURATION each, interleaved)"
A=(); B=()
for ((r = 0; r < ROUNDS; r++)); do
  A+=("$(run "$SELF" 1)"); B+=("$(run "$AS" 1)")
done
a=$(printf '%s\n' "${A[@]}" | median); b=$(printf '%s\n' "${B[@]}" | median)

rss0=$(rss "$SITES_PID")
log "GETATTR over $SITES sites vs one site"
C=(); D=()
for ((r = 0; r < ROUNDS; r++)); do
  C+=("$(run "$SITESADDR" 1)"); D+=("$(run "$SITESADDR" "$SITES")")
done
c=$(printf '%s\n' "${C[@]}" | median); d=$(printf '%s\n' "${D[@]}" | median)
rss1=$(rss "$SITES_PID")

ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.3f", x / y }'; }
OUT="$REPO/bench/results/identity-$(date +%Y%m%d-%H%M%S).md"
{
  echo "# identity.sh $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "axum-app $(git -C "$REPO" rev-parse --short HEAD), $(nproc) CPUs, wrk -t2 -c$CONNS -d$DURATION, medians of $ROUNDS interleaved rounds."
  echo
  echo "| GETATTR /fs/f | req/s (median) | runs | ratio |"
  echo "|---|---:|---|---:|"
  echo "| server acts as itself | $a | ${A[*]} | 1.000 |"
  echo "| \`--as nobody\` | $b | ${B[*]} | $(ratio "$b" "$a") |"
  echo "| \`--vhosts-dir --as-owner\`, one site | $c | ${C[*]} | 1.000 |"
  echo "| \`--vhosts-dir --as-owner\`, $SITES sites at random | $d | ${D[*]} | $(ratio "$d" "$c") |"
  echo
  echo "Open-sites cache: server RSS $rss0 KiB before any site was opened, $rss1 KiB with $SITES open ($(( (rss1 - rss0) * 1024 / SITES )) bytes per site)."
} >"$OUT"
cat "$OUT"
