#!/usr/bin/env bash
# Mount benchmark: the Rust FUSE client `spockfs-mount` (against axum-app)
# side by side with sshfs (against an sshd started here), same workloads,
# same kind of backing directory on the same disk. The same workloads also
# run on a plain directory of that disk ("local disk" column): the floor both
# network filesystems stand on, and on bindfs, a FUSE passthrough of a plain
# directory ("bindfs" column): the floor for any FUSE client, what the
# kernel's round trips cost with no network at all.
#
#   bench/mount.sh
#
# Env: RUNS          runs per row, the median is reported (default 3; RUNS=1 takes
#                    about a third of the time)
#      FIO_RUNTIME   seconds per fio run (default 10)
#      LS_REPS       fresh-mount `ls -l` measurements per run (default 5; the row is
#                    the median of all RUNS x LS_REPS: a ~60 ms measurement
#                    dominated by cold-disk and wake-up jitter needs more samples)
#      PHASES        run only these phases (default "seq create lsl delete cp walk
#                    rmtree fio"; rows of phases not run are left out)
#      COUNT_REQUESTS=1  run axum-app with RUST_LOG=spockfs_core=debug and
#                    summarise the server's HTTP methods per spockfs phase
#      SPOCKFS_BIN / MOUNT_BIN  use these binaries instead of
#                    `cargo build --release -p axum-app -p spockfs-mount --bins`
#
# Everything runs on 127.0.0.1 on free high ports. The script starts axum-app,
# spockfs-mount and sshd itself and stops exactly those processes (by PID) and
# unmounts both mounts on any exit. Needs root (sshd, drop_caches); installs
# openssh-server, sshfs, bindfs and fio with apt-get when they are missing.
# Exit status: 0 when every workload ran and checked out (file counts, sizes),
# 1 when a check or a workload failed, 2 on setup errors.
# Targets not met are reported but do not change the exit status.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
RUNS=${RUNS:-3}
FIO_RUNTIME=${FIO_RUNTIME:-10}
COUNT_REQUESTS=${COUNT_REQUESTS:-0}
LS_REPS=${LS_REPS:-5}
TREE_TARGET=10000 # entries

log() { printf '[mount.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
FAILED=0
fail() { log "FAIL: $*"; FAILED=1; }
# shellcheck source=bench/lib/common.sh
. "$BENCH_DIR/lib/common.sh"

[ "$(id -u)" = 0 ] || die "run as root (sshd on its own config, drop_caches)"

# ---------------------------------------------------------------- tools
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v sshfs >/dev/null || missing+=(sshfs)
command -v bindfs >/dev/null || missing+=(bindfs)
command -v fio >/dev/null || missing+=(fio)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v jq >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
fi
[ -e /dev/fuse ] || die "/dev/fuse missing"

if [ -n "${SPOCKFS_BIN:-}" ] && [ -n "${MOUNT_BIN:-}" ]; then
  SERVER=$SPOCKFS_BIN
  MOUNT=$MOUNT_BIN
else
  log "cargo build --release -p axum-app -p spockfs-mount --bins"
  (cd "$REPO" && cargo build --release -q -p axum-app -p spockfs-mount --bins) >&2 || die "cargo build failed"
  SERVER=${SPOCKFS_BIN:-$REPO/target/release/axum-app}
  MOUNT=${MOUNT_BIN:-$REPO/target/release/spockfs-mount}
fi
[ -x "$SERVER" ] && [ -x "$MOUNT" ] || die "binaries missing: $SERVER $MOUNT"

# ---------------------------------------------------------------- state + cleanup
TMP=$(mktemp -d /tmp/mountbench.XXXXXX)
SERVER_PID="" MOUNT_PID="" SSHD_PID="" SSHFS_PID="" BINDFS_PID=""
MNT_SSHFS=$TMP/mnt-sshfs MNT_SPOCK=$TMP/mnt-spockfs MNT_BINDFS=$TMP/mnt-bindfs
BACK_SSHFS=$TMP/back-sshfs BACK_SPOCK=$TMP/back-spockfs BACK_BINDFS=$TMP/back-bindfs LOCAL_DIR=$TMP/local
# ext4 "top of hierarchy" flag: the allocator spreads the directories made
# here over different block groups, so one client's creates do not scan
# inodes the other just freed (on an ext4 without a journal, inodes freed in
# the last 30-60 s are skipped one by one at allocation).
SPREAD=0
chattr +T "$TMP" 2>/dev/null && SPREAD=1
mkdir -p "$MNT_SSHFS" "$MNT_SPOCK" "$MNT_BINDFS" "$BACK_SSHFS" "$BACK_SPOCK" "$BACK_BINDFS" "$LOCAL_DIR"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  unmount "$MNT_SSHFS"
  unmount "$MNT_SPOCK"
  unmount "$MNT_BINDFS"
  stop_pid "$MOUNT_PID"
  stop_pid "$SSHFS_PID"
  stop_pid "$BINDFS_PID"
  stop_pid "$SSHD_PID"
  stop_pid "$SERVER_PID"
  # --one-file-system: never recurse into a mount that failed to go away
  if [ -n "${KEEP_TMP:-}" ]; then log "kept $TMP"; else rm -rf --one-file-system "$TMP" 2>/dev/null || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "command failed (status $?) at line $LINENO"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- servers
HTTP_PORT=$(free_port)
SERVER_LOG=$TMP/axum.log
if [ "$COUNT_REQUESTS" = 1 ]; then
  RUST_LOG=spockfs_core=debug NO_COLOR=1 "$SERVER" --listen "127.0.0.1:$HTTP_PORT" --root "$BACK_SPOCK" >"$SERVER_LOG" 2>&1 &
else
  "$SERVER" --listen "127.0.0.1:$HTTP_PORT" --root "$BACK_SPOCK" >"$SERVER_LOG" 2>&1 &
fi
SERVER_PID=$!
wait_port "$HTTP_PORT" || die "axum-app did not listen on $HTTP_PORT"
URL=http://127.0.0.1:$HTTP_PORT/fs

start_sshd

# ---------------------------------------------------------------- mounts
# -f (foreground, otherwise default options) only so the script knows sshfs's PID
mount_sshfs() {
  sshfs -f -p "$SSH_PORT" -o "$SSHFS_OPTS" "root@127.0.0.1:$BACK_SSHFS" "$MNT_SSHFS" >>"$TMP/sshfs.log" 2>&1 &
  SSHFS_PID=$!
  wait_mounted "$MNT_SSHFS" "$SSHFS_PID" "$TMP/sshfs.log" sshfs
}
mount_spock() {
  "$MOUNT" --foreground "$URL" "$MNT_SPOCK" >>"$TMP/spockfs-mount.log" 2>&1 &
  MOUNT_PID=$!
  wait_mounted "$MNT_SPOCK" "$MOUNT_PID" "$TMP/spockfs-mount.log" spockfs-mount
}
# bindfs with its defaults (no caching options: like sshfs and spockfs-mount,
# the kernel's default attr/entry timeouts of 1 s), -f to hold its PID
mount_bindfs() {
  bindfs -f "$BACK_BINDFS" "$MNT_BINDFS" >>"$TMP/bindfs.log" 2>&1 &
  BINDFS_PID=$!
  wait_mounted "$MNT_BINDFS" "$BINDFS_PID" "$TMP/bindfs.log" bindfs
}
# umount_client MNT PIDVAR: unmount, give the FUSE process 5 s to exit on
# its own, stop it if it did not, clear the variable holding its PID
umount_client() {
  local m=$1 i
  local -n pid_of=$2
  unmount "$m"
  if [ -n "$pid_of" ]; then
    for i in $(seq 50); do kill -0 "$pid_of" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$pid_of"
    pid_of=""
  fi
}
remount() { # sshfs|spockfs|bindfs|local (nothing to remount)
  case $1 in
    sshfs) umount_client "$MNT_SSHFS" SSHFS_PID; mount_sshfs ;;
    bindfs) umount_client "$MNT_BINDFS" BINDFS_PID; mount_bindfs ;;
    spockfs) umount_client "$MNT_SPOCK" MOUNT_PID; mount_spock ;;
  esac
}
mnt_of() {
  case $1 in
    sshfs) echo "$MNT_SSHFS" ;;
    bindfs) echo "$MNT_BINDFS" ;;
    spockfs) echo "$MNT_SPOCK" ;;
    *) echo "$LOCAL_DIR" ;;
  esac
}
# Before a write phase: the previous phases' dirty data written back (not
# flushed in the middle of this one) and the page cache dropped, the same
# starting point for every client.
settle() { drop_caches; }

mount_sshfs
mount_spock
mount_bindfs
log "sshfs on $MNT_SSHFS (sshd 127.0.0.1:$SSH_PORT), spockfs-mount on $MNT_SPOCK ($URL), bindfs on $MNT_BINDFS"

# ---------------------------------------------------------------- source tree
# The registry source dir with the most crates (a second, nearly empty one
# appears when some project resolves against another registry URL).
REG=$(for d in "$HOME"/.cargo/registry/src/*/; do
  [ -d "$d" ] && echo "$(find "$d" -mindepth 1 -maxdepth 1 | wc -l) $d"
done | sort -rn | head -1 | cut -d' ' -f2- || true)
[ -n "$REG" ] || die "no ~/.cargo/registry/src/*/"
SRC=$TMP/src-tree
mkdir -p "$SRC"
count=0
crates=0
while IFS= read -r c; do
  [ "$count" -ge "$TREE_TARGET" ] && break
  n=$(find "$REG$c" | wc -l)
  cp -r "$REG$c" "$SRC/"
  count=$((count + n))
  crates=$((crates + 1))
done < <(ls "$REG" | sort)
TREE_ENTRIES=$(find "$SRC" | wc -l)
TREE_FILES=$(find "$SRC" -type f | wc -l)
TREE_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
TREE_MB=$(awk -v b="$TREE_BYTES" 'BEGIN{printf "%.1f", b/1048576}')
TREE_DESC="$crates crate dirs from $(basename "$REG") (first by name), $TREE_ENTRIES entries incl. root ($TREE_FILES files), $TREE_MB MiB of file data"
log "tree: $TREE_DESC"

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RES=() # key "row|fs" -> list of values
add() { RES["$1|$2"]="${RES["$1|$2"]:-} $3"; }

# request counting (spockfs side only)
MARK=0
CUR_FS=""
mark() { [ "$COUNT_REQUESTS" = 1 ] && [ "$CUR_FS" = spockfs ] && MARK=$(wc -l <"$SERVER_LOG") || true; }
declare -A REQS=()
count_reqs() { # phase
  [ "$COUNT_REQUESTS" = 1 ] && [ "$CUR_FS" = spockfs ] || return 0
  sleep 0.2
  REQS[$1]=$(tail -n +"$((MARK + 1))" "$SERVER_LOG" | sed 's/\x1b\[[0-9;]*m//g' | grep 'request done' |
    grep -o 'method=[A-Z]*' | sort | uniq -c | sort -rn |
    awk '{printf "%s%s %d", (NR>1?", ":""), substr($2,8), $1} END{if(NR==0) printf "-"}' || true)
}

BLK=$(head -c 4096 /dev/zero | tr '\0' 'x')

# The phases. Each takes the filesystem (sshfs|spockfs|bindfs|local) and runs one
# workload on it; the run loop below runs each phase on every filesystem
# before the next phase, so the two clients' numbers for a row are taken
# seconds apart (a slow spell of the machine hits both, not one), in
# alternating order from run to run.
phase_seq() { # 1. sequential write, then read on a fresh mount + dropped caches
  local fs=$1 m t s n
  m=$(mnt_of "$fs")
  settle
  mark
  t=$(now)
  dd if=/dev/zero of="$m/f" bs=1M count=256 conv=fsync status=none || fail "$fs: dd write"
  s=$(elapsed "$t")
  add seqw "$fs" "$(awk -v s="$s" 'BEGIN{printf "%.1f", 256/s}')"
  count_reqs seqw
  [ "$(stat -c %s "$m/f")" = 268435456 ] || fail "$fs: written file has wrong size"

  remount "$fs"; m=$(mnt_of "$fs"); drop_caches
  mark
  t=$(now)
  n=$(dd if="$m/f" bs=1M status=none | wc -c) || fail "$fs: dd read"
  s=$(elapsed "$t")
  [ "$n" = 268435456 ] || fail "$fs: read $n bytes, expected 268435456"
  add seqr "$fs" "$(awk -v s="$s" 'BEGIN{printf "%.1f", 256/s}')"
  count_reqs seqr
  rm -f "$m/f"
}

phase_create() { # 3. create 1000 x 4 KiB
  local fs=$1 m t i
  m=$(mnt_of "$fs")
  mkdir "$m/small"
  settle
  mark
  t=$(now)
  for i in $(seq 1000); do printf '%s' "$BLK" >"$m/small/f$i" || { fail "$fs: create f$i"; break; }; done
  add create "$fs" "$(elapsed "$t")"
  count_reqs create
}

phase_lsl() { # 4. ls -l on a fresh mount, LS_REPS times
  local fs=$1 m t n k
  for k in $(seq "$LS_REPS"); do
    remount "$fs"; m=$(mnt_of "$fs"); drop_caches
    mark
    t=$(now)
    n=$(ls -l "$m/small" | grep -c '^-' || true)
    add lsl "$fs" "$(elapsed "$t")"
    count_reqs lsl
    [ "$n" = 1000 ] || fail "$fs: ls -l listed $n files"
  done
  n=$(find "$m/small" -type f -size 4k | wc -l)
  [ "$n" = 1000 ] || fail "$fs: $n files of 4 KiB, expected 1000"
}

phase_delete() { # 5. delete them
  local fs=$1 m t
  m=$(mnt_of "$fs")
  mark
  t=$(now)
  rm -f "$m"/small/f* || fail "$fs: rm"
  add delete "$fs" "$(elapsed "$t")"
  count_reqs delete
  rmdir "$m/small" || fail "$fs: rmdir small"
}

phase_cp() { # 6. copy the source tree in; its files read once after the
  # settle, so the copy measures writing into the mount, not reading the
  # source from a cold disk
  local fs=$1 m t
  m=$(mnt_of "$fs")
  settle
  find "$SRC" -type f -exec cat {} + >/dev/null
  mark
  t=$(now)
  cp -r "$SRC" "$m/tree" || fail "$fs: cp -r tree"
  add cp "$fs" "$(elapsed "$t")"
  count_reqs cp
}

phase_walk() { # 7. find and du of the tree, each on a fresh mount
  local fs=$1 m t n
  remount "$fs"; m=$(mnt_of "$fs"); drop_caches
  mark
  t=$(now)
  n=$(find "$m/tree" | wc -l)
  add find "$fs" "$(elapsed "$t")"
  count_reqs find
  [ "$n" = "$TREE_ENTRIES" ] || fail "$fs: find counted $n entries, expected $TREE_ENTRIES"
  remount "$fs"; m=$(mnt_of "$fs"); drop_caches
  mark
  t=$(now)
  n=$(du -sk "$m/tree" | cut -f1)
  add du "$fs" "$(elapsed "$t")"
  count_reqs du
  log "$fs: du -sk tree = $n KiB"
  DU_KB[$fs]=$n
}

phase_rmtree() { # 8. rm -rf the tree
  local fs=$1 m t
  m=$(mnt_of "$fs")
  mark
  t=$(now)
  rm -rf "$m/tree" || fail "$fs: rm -rf tree"
  add rmtree "$fs" "$(elapsed "$t")"
  count_reqs rmtree
  [ ! -e "$m/tree" ] || fail "$fs: tree still there"
}

phase_fio() { # 9. fio random reads, 1 and 4 jobs, each on a fresh mount
  local fs=$1 m j key
  m=$(mnt_of "$fs")
  fio --name=layout --filename="$m/fio" --rw=write --bs=1M --size=256M --create_only=1 \
    --output=/dev/null >/dev/null 2>&1 || fail "$fs: fio layout"
  [ "$(stat -c %s "$m/fio" 2>/dev/null || echo 0)" = 268435456 ] ||
    dd if=/dev/zero of="$m/fio" bs=1M count=256 conv=fsync status=none
  for j in 1 4; do
    key=fio$j
    remount "$fs"; m=$(mnt_of "$fs"); drop_caches
    mark
    local extra=()
    [ "$j" -gt 1 ] && extra=(--group_reporting)
    if fio --name=r --filename="$m/fio" --rw=randread --bs=4k --size=256M --runtime="$FIO_RUNTIME" \
      --time_based --numjobs="$j" "${extra[@]}" --ioengine=psync --direct=0 \
      --output-format=json --output="$TMP/fio.json" >/dev/null 2>"$TMP/fio.err"; then
      local iops errs
      iops=$(jq '[.jobs[].read.iops] | add | floor' "$TMP/fio.json")
      errs=$(jq '[.jobs[].error] | add' "$TMP/fio.json")
      [ "$errs" = 0 ] || fail "$fs: fio numjobs=$j error $errs"
      add "$key" "$fs" "$iops"
    else
      fail "$fs: fio numjobs=$j: $(head -c 300 "$TMP/fio.err")"
      add "$key" "$fs" 0
    fi
    count_reqs "$key"
  done
  rm -f "$m/fio"
}
declare -A DU_KB=()

# PHASES: a subset to run (space-separated, in this order; lsl and delete
# need create before them, walk and rmtree need cp)
read -r -a PHASES <<<"${PHASES:-seq create lsl delete cp walk rmtree fio}"
START=$(date +%s)
for r in $(seq "$RUNS"); do
  # sshfs first in odd runs, spockfs first in even ones; bindfs and the local disk last
  if [ $((r % 2)) = 1 ]; then ORDER=(sshfs spockfs bindfs local); else ORDER=(spockfs sshfs bindfs local); fi
  log "run $r: ${ORDER[*]}"
  for ph in "${PHASES[@]}"; do
    for fs in "${ORDER[@]}"; do
      CUR_FS=$fs
      "phase_$ph" "$fs"
    done
  done
done
TOTAL=$(($(date +%s) - START))

# ---------------------------------------------------------------- report
ROWS=()
for row in seqw seqr create lsl delete cp find du rmtree fio1 fio4; do
  [ -n "${RES["$row|spockfs"]:-}" ] && ROWS+=("$row") # phases not run (PHASES) left out
done
declare -A LABEL=(
  [seqw]="sequential write 256 MiB (dd conv=fsync), MiB/s"
  [seqr]="sequential read 256 MiB (fresh mount, caches dropped), MiB/s"
  [create]="create 1000 × 4 KiB files, s"
  [lsl]="ls -l of the 1000 files (fresh mount), s"
  [delete]="delete the 1000 files, s"
  [cp]="cp -r source tree into the mount, s"
  [find]="find tree \\| wc -l (fresh mount), s"
  [du]="du -sh tree (fresh mount), s"
  [rmtree]="rm -rf tree, s"
  [fio1]="fio randread 4 KiB, numjobs=1, IOPS"
  [fio4]="fio randread 4 KiB, numjobs=4, IOPS"
)
declare -A HIGHER=([seqw]=1 [seqr]=1 [fio1]=1 [fio4]=1)
declare -A SPEED=() FLOOR=()
speedup() { # row a(sshfs) b(spockfs) -> times faster spockfs is
  if [ -n "${HIGHER[$1]:-}" ]; then
    awk -v a="$2" -v b="$3" 'BEGIN{ if (a>0) printf "%.2f", b/a; else print "-" }'
  else
    awk -v a="$2" -v b="$3" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }'
  fi
}
floor_ratio() { # row f(bindfs) b(spockfs) -> spockfs cost over the FUSE floor (<=1: at or below it)
  if [ -n "${HIGHER[$1]:-}" ]; then
    awk -v f="$2" -v b="$3" 'BEGIN{ if (b>0) printf "%.2f", f/b; else print "-" }'
  else
    awk -v f="$2" -v b="$3" 'BEGIN{ if (f>0) printf "%.2f", b/f; else print "-" }'
  fi
}

DATE=$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$BENCH_DIR/results"
OUT=$BENCH_DIR/results/mount-$DATE.md
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
FSTYPE=$(df -T "$TMP" | awk 'NR==2 {print $2" ("$1")"}')
SSHFS_VER=$(sshfs --version 2>&1 | grep -m1 "SSHFS version" || true)
SSH_VER=$(ssh -V 2>&1)

{
  echo "# spockfs-mount vs sshfs and bindfs — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Reproduce: \`bench/mount.sh\` (RUNS=$RUNS FIO_RUNTIME=$FIO_RUNTIME COUNT_REQUESTS=$COUNT_REQUESTS)"
  echo
  echo "- Machine: $CPU, $(nproc) cores, $MEM RAM, kernel $(uname -r)"
  echo "- Backing dirs: two dirs under one temp dir on $FSTYPE$( [ "$SPREAD" = 1 ] && echo ", the temp dir flagged \`chattr +T\` so each client's directory gets its own block group" || echo " (chattr +T not supported: directories not spread over block groups)")"
  echo "- spockfs: \`axum-app --listen 127.0.0.1:PORT --root DIR\` + \`spockfs-mount http://127.0.0.1:PORT/fs MNT\` (default options: attr/entry timeout 1 s)"
  echo "- sshfs: $SSHFS_VER, $SSH_VER; \`sshfs -p PORT -o IdentityFile=…,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR root@127.0.0.1:DIR MNT\`, otherwise sshfs defaults (run with \`-f\` so the script holds its PID); sshd started by the script with its own config (\`internal-sftp\`, ed25519 keys, 127.0.0.1 only)"
  echo "- bindfs: $(bindfs --version 2>&1 | head -1); \`bindfs -f DIR MNT\` (defaults: a FUSE passthrough of a plain directory on the same disk, no network — the floor for a FUSE client)"
  echo "- Tree: $TREE_DESC; du -sk: local ${DU_KB[local]:-?} KiB, through the mounts: sshfs ${DU_KB[sshfs]:-?} KiB, spockfs ${DU_KB[spockfs]:-?} KiB"
  echo "- Order: each phase runs on every filesystem back to back before the next phase (sshfs, spockfs, bindfs, local in odd runs; spockfs, sshfs, bindfs, local in even ones), so a slow spell of the machine hits both clients' numbers for a row"
  echo "- Runs: $RUNS per row, $( [ "$RUNS" -gt 1 ] && echo "median shown; ls -l: $RUNS × $LS_REPS fresh mounts, median" || echo "single run (the whole benchmark in one run takes ${TOTAL}s)")"
  echo "- Caches: the mount is remounted before the sequential read, ls -l, find, du and each fio run, and \`echo 3 > /proc/sys/vm/drop_caches\` is run after the remount$( [ "$DROP_OK" = 1 ] || echo " (**drop_caches failed; page cache of the backing files not dropped**)"), so reads are cold at the server's disk too; before the sequential write, the creates and the tree copy: \`sync\` + drop_caches (every client starts with no dirty data of earlier phases), then the source tree's files are read once so the copy is not timed reading a cold source; fio runs time-based, so after the first pass the 256 MiB file may be served from the client page cache, depending on each client's caching"
  echo
  echo "| workload | local disk | bindfs (FUSE floor) | sshfs | spockfs-mount | spockfs speedup over sshfs (×) | spockfs / floor |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for row in "${ROWS[@]}"; do
    # shellcheck disable=SC2086
    l=$(median ${RES["$row|local"]:-0})
    # shellcheck disable=SC2086
    a=$(median ${RES["$row|sshfs"]:-0})
    # shellcheck disable=SC2086
    b=$(median ${RES["$row|spockfs"]:-0})
    # shellcheck disable=SC2086
    f=$(median ${RES["$row|bindfs"]:-0})
    SPEED[$row]=$(speedup "$row" "$a" "$b")
    FLOOR[$row]=$(floor_ratio "$row" "$f" "$b")
    echo "| ${LABEL[$row]} | $l | $f | $a | $b | ${SPEED[$row]} | ${FLOOR[$row]} |"
  done
  echo
  echo "Speedup over sshfs: throughput rows spockfs/sshfs, time rows sshfs/spockfs (>1: spockfs faster). spockfs / floor: time rows spockfs/bindfs, throughput rows bindfs/spockfs (≤1: at or below the cost of a local FUSE passthrough). Local disk: the same workload on a plain directory of the same disk (no network filesystem; \"fresh mount\" rows only drop caches)."
  echo
  echo "Time over the local disk (time rows: each client's time minus the disk's, medians; the part a network filesystem adds):"
  echo
  for row in create delete cp rmtree; do
    [ -n "${RES["$row|spockfs"]:-}" ] || continue
    # shellcheck disable=SC2086
    over=$(awk -v l="$(median ${RES["$row|local"]:-0})" -v a="$(median ${RES["$row|sshfs"]:-0})" -v b="$(median ${RES["$row|spockfs"]:-0})" \
      'BEGIN{ oa=a-l; ob=b-l; printf "sshfs +%.3f s, spockfs +%.3f s", oa, ob; if (ob>0) printf " (%.2f× less)", oa/ob }')
    echo "- ${LABEL[$row]%%,*}: $over"
  done
  echo
  echo "## Targets"
  echo
  tgt() { # label row min
    [ -n "${SPEED[$2]:-}" ] || return 0
    local v=${SPEED[$2]} ok
    ok=$(awk -v v="$v" -v m="$3" 'BEGIN{ print (v!="-" && v+0>=m+0) ? "met" : "NOT met" }')
    echo "- $1: ${v}× — **$ok**"
  }
  slower=""
  for row in "${ROWS[@]}"; do
    awk -v v="${SPEED[$row]}" 'BEGIN{ exit !(v!="-" && v+0>1) }' || slower+="${slower:+; }${LABEL[$row]%%,*} (${SPEED[$row]}×)"
  done
  if [ -z "$slower" ]; then echo "- faster than sshfs on every row: **met**"; else echo "- faster than sshfs on every row: **NOT met** — not faster on: $slower"; fi
  tgt "≥2× on the tree copy" cp 2
  tgt "≥2× on the 1000 creates" create 2
  tgt "≥2× on the sequential read" seqr 2
  tgt "≥1.5× on the sequential write" seqw 1.5
  ftgt() { # label row max
    [ -n "${FLOOR[$2]:-}" ] || return 0
    local v=${FLOOR[$2]} ok
    ok=$(awk -v v="$v" -v m="$3" 'BEGIN{ print (v!="-" && v+0<=m+0) ? "met" : "NOT met" }')
    echo "- $1: ${v}× bindfs — **$ok**"
  }
  ftgt "tree copy at or below bindfs" cp 1
  ftgt "1000 creates at or below bindfs" create 1
  ftgt "rm -rf ≤ 1.2× bindfs" rmtree 1.2
  if [ "$COUNT_REQUESTS" = 1 ]; then
    echo
    echo "## Server requests per spockfs phase (last run, RUST_LOG=spockfs_core=debug)"
    echo
    echo "| phase | methods |"
    echo "|---|---|"
    for row in "${ROWS[@]}"; do echo "| ${LABEL[$row]%%,*} | ${REQS[$row]:--} |"; done
  fi
  echo
  echo "## Notes"
  echo
  echo "- Checks: $( [ "$FAILED" = 0 ] && echo "all passed (sizes, file counts, find entry counts)" || echo "**some failed, see the log of the run**")"
  echo "- Raw values per run: $(for row in "${ROWS[@]}"; do printf '%s local[%s] bindfs[%s] sshfs[%s] spockfs[%s]; ' "$row" "${RES["$row|local"]# }" "${RES["$row|bindfs"]# }" "${RES["$row|sshfs"]# }" "${RES["$row|spockfs"]# }"; done)"
} | tee "$OUT"
log "saved $OUT"
exit "$FAILED"
