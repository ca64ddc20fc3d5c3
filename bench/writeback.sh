#!/usr/bin/env bash
# What the kernel's writeback cache buys spockfs-mount, and what it costs:
# one axum-app, two mounts of it side by side (default options, and
# `--writeback-cache`), the same write workloads on each, alternated, RUNS
# times, medians reported.
#
#   bench/writeback.sh
#
# Workloads: 64 MiB written 4 KiB at a time (dd bs=4k conv=fsync), the same
# 1 MiB at a time, and 1000 files of 4 KiB created (printf > f). After them,
# the consistency check that keeps the writeback cache opt-in: a file is
# appended to through the other mount and the writeback mount is asked for
# its size after the attribute timeout.
#
# Env: RUNS (default 3), SPOCKFS_BIN / MOUNT_BIN (default: cargo build
# --release -p axum-app -p spockfs-mount --bins).
# Everything runs on 127.0.0.1 on a free port; the script stops exactly the
# processes it started and unmounts its mounts on any exit. Needs /dev/fuse
# and fusermount3 (Debian: fuse3). Exit 0 when every workload ran and its
# data checked out, 1 otherwise, 2 on setup errors.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
RUNS=${RUNS:-3}
log() { printf '[writeback.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
FAILED=0
fail() { log "FAIL: $*"; FAILED=1; }

command -v fusermount3 >/dev/null || die "fusermount3 missing (apt-get install fuse3)"
[ -e /dev/fuse ] || die "/dev/fuse missing"
if [ -n "${SPOCKFS_BIN:-}" ] && [ -n "${MOUNT_BIN:-}" ]; then
  SERVER=$SPOCKFS_BIN MOUNT=$MOUNT_BIN
else
  (cd "$REPO" && cargo build --release -q -p axum-app -p spockfs-mount --bins) >&2 || die "cargo build failed"
  SERVER=$REPO/target/release/axum-app MOUNT=$REPO/target/release/spockfs-mount
fi

TMP=$(mktemp -d /tmp/writeback.XXXXXX)
ROOT=$TMP/root
mkdir -p "$ROOT" "$TMP/plain" "$TMP/wb"
PIDS=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for m in "$TMP/plain" "$TMP/wb"; do mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true; }; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf --one-file-system "$TMP" 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SERVER" --listen "127.0.0.1:$PORT" --root "$ROOT" >"$TMP/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PORT/fs
"$MOUNT" --foreground "$URL" "$TMP/plain" >"$TMP/plain.log" 2>&1 &
PIDS+=($!)
"$MOUNT" --foreground --writeback-cache "$URL" "$TMP/wb" >"$TMP/wb.log" 2>&1 &
PIDS+=($!)
for m in plain wb; do
  for _ in $(seq 100); do mountpoint -q "$TMP/$m" && break; sleep 0.1; done
  mountpoint -q "$TMP/$m" || die "$m did not mount: $(cat "$TMP/$m.log")"
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A RES=()
add() { RES["$1|$2"]="${RES["$1|$2"]:-} $3"; }
BLK=$(head -c 4096 /dev/zero | tr '\0' 'x')
head -c $((64 << 20)) /dev/urandom >"$TMP/src"

run_on() { # plain|wb
  local m=$TMP/$1 t i
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  t=$(now)
  dd if="$TMP/src" of="$m/w4k" bs=4k conv=fsync status=none || fail "$1: dd 4k"
  add w4k "$1" "$(elapsed "$t")"
  cmp -s "$TMP/src" "$ROOT/w4k" || fail "$1: 4 KiB writes differ on the server"
  t=$(now)
  dd if="$TMP/src" of="$m/w1m" bs=1M conv=fsync status=none || fail "$1: dd 1M"
  add w1m "$1" "$(elapsed "$t")"
  cmp -s "$TMP/src" "$ROOT/w1m" || fail "$1: 1 MiB writes differ on the server"
  mkdir "$m/small"
  t=$(now)
  for i in $(seq 1000); do printf '%s' "$BLK" >"$m/small/f$i" || { fail "$1: create f$i"; break; }; done
  add create "$1" "$(elapsed "$t")"
  [ "$(find "$ROOT/small" -type f -size 4k | wc -l)" = 1000 ] || fail "$1: creates"
  rm -rf "$m/small" "$m/w4k" "$m/w1m"
}

for r in $(seq "$RUNS"); do
  if [ $((r % 2)) = 1 ]; then order=(plain wb); else order=(wb plain); fi
  log "run $r: ${order[*]}"
  for fs in "${order[@]}"; do run_on "$fs"; done
done

# The consistency cost: another client (the plain mount) appends.
printf 'hello\n' >"$TMP/wb/shared"
cat "$TMP/wb/shared" >/dev/null
printf 'appended elsewhere\n' >>"$TMP/plain/shared"
sleep 1.5 # past the 1 s attribute timeout
SEEN_WB=$(stat -c %s "$TMP/wb/shared")
SEEN_PLAIN=$(stat -c %s "$TMP/plain/shared")
ON_SERVER=$(stat -c %s "$ROOT/shared")

OUT=$BENCH_DIR/results/writeback-$(date -u +%Y%m%d-%H%M%S).md
{
  echo "# spockfs-mount: default vs --writeback-cache — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Reproduce: \`RUNS=$RUNS bench/writeback.sh\` ($(nproc) cores, kernel $(uname -r); one axum-app, both mounts of it, alternated per run, median of $RUNS; caches dropped before each run)"
  echo
  echo "| workload | default | --writeback-cache | writeback speedup |"
  echo "|---|---:|---:|---:|"
  for row in w4k w1m create; do
    # shellcheck disable=SC2086
    a=$(median ${RES["$row|plain"]}) b=$(median ${RES["$row|wb"]})
    case $row in
      w4k) label="64 MiB in 4 KiB writes + fsync, s" ;;
      w1m) label="64 MiB in 1 MiB writes + fsync, s" ;;
      create) label="create 1000 × 4 KiB files, s" ;;
    esac
    echo "| $label | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f×", a/b}') |"
  done
  echo
  echo "Consistency: after another client appended to a file this mount had written and read, and 1.5 s (past the 1 s attribute timeout), the file's size through the writeback mount: $SEEN_WB bytes; through the default mount: $SEEN_PLAIN; on the server: $ON_SERVER."
  echo
  echo "Raw: $(for row in w4k w1m create; do printf '%s default[%s] writeback[%s]; ' "$row" "${RES["$row|plain"]# }" "${RES["$row|wb"]# }"; done)"
} | tee "$OUT"
log "saved $OUT"
exit "$FAILED"
