#!/usr/bin/env bash
# shellcheck disable=SC2317 # (functions reached through traps and "phase_$ph" look unreachable to shellcheck)
# Many-clients benchmark: MOUNTS mounts of one server, side by side for
# spockfs-mount (MOUNTS spockfs-mount processes against one axum-app) and sshfs
# (MOUNTS sshfs processes against one sshd started here), same workloads, the
# two backing directories on the same disk.
#
#   bench/many.sh
#   MOUNTS=2 READERS=4 READ_SECONDS=2 TREE_TARGET=300 bench/many.sh   # a quick try
#
# Each phase runs on both filesystems back to back, caches dropped before each.
# Phase A, concurrent copy: every mount i runs `cp -r SRC MNT_i/copy-i` at the
#   same moment (background jobs released together by a start file); reported:
#   wall time, aggregate files/s and MiB/s (all files copied / wall time), and
#   the per-client copy time (median, max = p99). Each copy is checked on the
#   server's backing directory (entries, files and bytes equal to the source).
# Phase B, readers: a read set (16 files of 1 MiB and 256 files of 4 KiB,
#   random data) is written through mount 1, caches are dropped, then READERS
#   reader processes (a small python3 loop, one process per reader, spread
#   round-robin over the mounts) read whole files in their own shuffled order
#   until one common deadline READ_SECONDS after the start, timing every
#   open+read-to-EOF+close; reported: aggregate reads/s and MiB/s, per-client
#   MiB/s (median, min), latency p50/p99 over all reads, the worst per-client
#   p99. Every read is checked for the file's size.
#
# Env: MOUNTS        mounts per filesystem (default 8)
#      READERS       reader processes in phase B (default 64)
#      READ_SECONDS  seconds each reader reads (default 10)
#      TREE_TARGET   entries of the source tree each copier copies (default 2000;
#                    whole crate dirs of the cargo registry in name order, a crate
#                    that would overshoot the target skipped, until within 10
#                    entries of it)
#      RUNS          runs, the median per row is reported (default 1; sshfs
#                    first in odd runs, spockfs first in even ones)
#      SPOCKFS_BIN / MOUNT_BIN  use these binaries instead of
#                    `cargo build --release -p axum-app -p spockfs-mount --bins`
#      KEEP_TMP=1    keep the temp dir (logs, per-reader latencies)
#
# Everything runs on 127.0.0.1 on free high ports. The script starts axum-app,
# the spockfs-mount and sshfs processes and sshd itself and stops exactly those
# processes (by PID), its copier and reader jobs too, and unmounts every mount
# on any exit (errors and Ctrl-C included). Needs root (sshd, drop_caches);
# installs openssh-server, sshfs and fuse3 with apt-get when they are missing.
# Exit status: 0 when every workload ran and checked out (copies' file counts
# and bytes, read sizes), 1 when a check or a workload failed, 2 on setup
# errors.
set -Eeuo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
MOUNTS=${MOUNTS:-8}
READERS=${READERS:-64}
READ_SECONDS=${READ_SECONDS:-10}
TREE_TARGET=${TREE_TARGET:-2000}
RUNS=${RUNS:-1}
BIG_FILES=16 BIG_SIZE=1048576     # the read set
SMALL_FILES=256 SMALL_SIZE=4096
COPY_TIMEOUT=900                  # s: a copy phase still running after this fails

log() { printf '[many.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
FAILED=0
fail() { log "FAIL: $*"; FAILED=1; }
# shellcheck source=bench/lib/common.sh
. "$BENCH_DIR/lib/common.sh"

for v in MOUNTS READERS READ_SECONDS TREE_TARGET RUNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ "$(id -u)" = 0 ] || die "run as root (sshd on its own config, drop_caches)"

# ---------------------------------------------------------------- tools
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v sshfs >/dev/null || missing+=(sshfs)
command -v fusermount3 >/dev/null || missing+=(fuse3)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
fi
command -v python3 >/dev/null || die "python3 missing"
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
TMP=$(mktemp -d /tmp/manybench.XXXXXX)
SERVER_PID="" SSHD_PID=""
FUSE_PIDS=()   # every spockfs-mount and sshfs process started
ALL_MNTS=()    # every mountpoint
WORKERS=()     # background copier / reader / rm jobs of the phase in progress
declare -A MNT=() # "fs:i" -> mountpoint
BACK_SSHFS=$TMP/back-sshfs BACK_SPOCK=$TMP/back-spockfs
# ext4 "top of hierarchy" flag: the two backing dirs in different block groups
SPREAD=0
chattr +T "$TMP" 2>/dev/null && SPREAD=1
mkdir -p "$BACK_SSHFS" "$BACK_SPOCK"

descendants() { # pid -> its children, grandchildren, ...
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
    echo "$c"
    descendants "$c"
  done
}
stop_workers() { # the jobs and whatever they started (cp, under a subshell)
  local p all=()
  [ ${#WORKERS[@]} -gt 0 ] || return 0
  for p in "${WORKERS[@]}"; do
    all+=("$p")
    while read -r c; do all+=("$c"); done < <(descendants "$p")
  done
  stop_pids "${all[@]}"
  WORKERS=()
}
cleanup() {
  local rc=$? m
  trap - EXIT INT TERM ERR
  stop_workers
  for m in "${ALL_MNTS[@]}"; do unmount "$m"; done
  stop_pids "${FUSE_PIDS[@]}"
  stop_pid "$SSHD_PID"
  stop_pid "$SERVER_PID"
  # --one-file-system: never recurse into a mount that failed to go away
  if [ -n "${KEEP_TMP:-}" ]; then log "kept $TMP"; else rm -rf --one-file-system "$TMP" 2>/dev/null || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'rc=$?; log "command failed (status $rc) at line $LINENO"; exit 2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM


# ---------------------------------------------------------------- servers
HTTP_PORT=$(free_port)
"$SERVER" --listen "127.0.0.1:$HTTP_PORT" --root "$BACK_SPOCK" >"$TMP/axum.log" 2>&1 &
SERVER_PID=$!
wait_port "$HTTP_PORT" || die "axum-app did not listen on $HTTP_PORT"
URL=http://127.0.0.1:$HTTP_PORT/fs

start_sshd

# ---------------------------------------------------------------- mounts
# mount_one sshfs|spockfs I: the I-th mount of that server, on its own
# mountpoint, by its own process (-f / --foreground so the script holds its
# PID; otherwise default options for both clients)
mount_one() {
  local fs=$1 i=$2 m log pid
  m=$TMP/mnt-$fs-$i
  log=$TMP/$fs-$i.log
  mkdir -p "$m"
  ALL_MNTS+=("$m")
  case $fs in
    sshfs) sshfs -f -p "$SSH_PORT" -o "$SSHFS_OPTS" "root@127.0.0.1:$BACK_SSHFS" "$m" >>"$log" 2>&1 & ;;
    spockfs) "$MOUNT" --foreground "$URL" "$m" >>"$log" 2>&1 & ;;
  esac
  pid=$!
  FUSE_PIDS+=("$pid")
  MNT["$fs:$i"]=$m
  wait_mounted "$m" "$pid" "$log" "$fs mount $i"
}
back_of() { case $1 in sshfs) echo "$BACK_SSHFS" ;; spockfs) echo "$BACK_SPOCK" ;; esac; }

for fs in spockfs sshfs; do
  for i in $(seq "$MOUNTS"); do mount_one "$fs" "$i"; done
done
log "$MOUNTS spockfs-mount mounts of $URL, $MOUNTS sshfs mounts of sshd 127.0.0.1:$SSH_PORT"

# ---------------------------------------------------------------- source tree
# The registry source dir with the most crates (a second, nearly empty one
# appears when some project resolves against another registry URL).
REG=$(for d in "$HOME"/.cargo/registry/src/*/; do
  [ -d "$d" ] && echo "$(find "$d" -mindepth 1 -maxdepth 1 | wc -l) $d"
done | sort -rn | head -1 | cut -d' ' -f2- || true)
[ -n "$REG" ] || die "no ~/.cargo/registry/src/*/"
SRC=$TMP/src-tree
mkdir -p "$SRC"
# Whole crate dirs in name order; one that would take the tree past the
# target is skipped (a single crate can hold thousands of entries), until the
# tree is within 10 entries of the target or the crates run out.
count=0
crates=0
skipped=0
while IFS= read -r c; do
  [ $((TREE_TARGET - count)) -lt 10 ] && break
  n=$(find "$REG$c" | wc -l)
  if [ "$count" -gt 0 ] && [ $((count + n)) -gt "$TREE_TARGET" ]; then skipped=$((skipped + 1)); continue; fi
  cp -r "$REG$c" "$SRC/"
  count=$((count + n))
  crates=$((crates + 1))
done < <(ls "$REG" | sort)
TREE_ENTRIES=$(find "$SRC" | wc -l)
TREE_FILES=$(find "$SRC" -type f | wc -l)
TREE_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
TREE_MB=$(awk -v b="$TREE_BYTES" 'BEGIN{printf "%.1f", b/1048576}')
TREE_DESC="$crates crate dirs from $(basename "$REG") (first by name; $skipped larger ones that would overshoot the target skipped), $TREE_ENTRIES entries incl. root ($TREE_FILES files), $TREE_MB MiB of file data"
log "tree: $TREE_DESC"

# ---------------------------------------------------------------- read set
READSET=$TMP/readset
MANIFEST=$TMP/readset.manifest
mkdir -p "$READSET"
: >"$MANIFEST"
for i in $(seq -w "$BIG_FILES"); do
  head -c "$BIG_SIZE" /dev/urandom >"$READSET/big-$i"
  echo "big-$i $BIG_SIZE" >>"$MANIFEST"
done
for i in $(seq -w "$SMALL_FILES"); do
  head -c "$SMALL_SIZE" /dev/urandom >"$READSET/small-$i"
  echo "small-$i $SMALL_SIZE" >>"$MANIFEST"
done
READ_FILES=$((BIG_FILES + SMALL_FILES))
READ_BYTES=$((BIG_FILES * BIG_SIZE + SMALL_FILES * SMALL_SIZE))
READ_DESC="$BIG_FILES files of $((BIG_SIZE / 1024)) KiB + $SMALL_FILES files of $((SMALL_SIZE / 1024)) KiB (random data, $READ_FILES files, $(awk -v b="$READ_BYTES" 'BEGIN{printf "%.1f", b/1048576}') MiB)"

# The reader: one process per client. Waits for the start file (which holds
# the common start time), then until start + SECONDS, the same deadline for
# every reader, reads whole files of the manifest in its own shuffled order (a
# new shuffle per pass), timing each open + read to EOF + close with
# perf_counter_ns; read(2) straight into one preallocated 1 MiB buffer. A read
# in flight at the deadline completes and counts. Then it marks itself done and
# waits for the release file (every reader done) before it writes its results
# ("latency_ns bytes" per read to OUT.lat, a JSON summary to OUT.json) and
# exits, so no reader's teardown competes with another's last reads.
cat >"$TMP/reader.py" <<'EOF'
import io, json, os, random, sys, time
from array import array
d, manifest, seconds, seed, out, ready, go, done, release = sys.argv[1:10]
files = []
with open(manifest) as f:
    for line in f:
        name, size = line.split()
        files.append((os.path.join(d, name), int(size)))
rng = random.Random(int(seed))
buf = bytearray(1 << 20)
mv = memoryview(buf)
lat = array('q')
sizes = array('q')
reads = nbytes = bad = errors = 0
first_problem = ""
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
t_start = time.time()
with open(go) as f:
    deadline = float(f.read()) + float(seconds)
order = []


def read_until_deadline():
    global order, reads, nbytes, bad, errors, first_problem
    while time.time() < deadline:
        if not order:
            order = files[:]
            rng.shuffle(order)
        path, size = order.pop()
        t0 = time.perf_counter_ns()
        n = 0
        try:
            f = io.FileIO(path, "r")
            try:
                while True:
                    k = f.readinto(mv)
                    if not k:
                        break
                    n += k
            finally:
                f.close()
        except OSError as e:
            errors += 1
            if not first_problem:
                first_problem = "%s: %s" % (path, e)
            continue
        t1 = time.perf_counter_ns()
        reads += 1
        nbytes += n
        lat.append(t1 - t0)
        sizes.append(n)
        if n != size:
            bad += 1
            if not first_problem:
                first_problem = "%s: read %d bytes, expected %d" % (path, n, size)


try:
    read_until_deadline()
    t_end = time.time()
finally:
    open(done, "w").close()
    while not os.path.exists(release):
        time.sleep(0.005)
with open(out + ".lat", "w") as f:
    f.write("".join("%d %d\n" % (a, b) for a, b in zip(lat, sizes)))
with open(out + ".json", "w") as f:
    json.dump({"reads": reads, "bytes": nbytes, "bad": bad, "errors": errors,
               "first_problem": first_problem, "t_start": t_start, "t_end": t_end}, f)
EOF

# Summary of one reader phase: key=value lines. p99 and p50 are nearest-rank
# percentiles; latencies in ms.
cat >"$TMP/readsum.py" <<'EOF'
import json, math, statistics, sys
d, n, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def pct(s, p):
    return s[max(1, math.ceil(p / 100 * len(s))) - 1] if s else float("nan")
ms = lambda ns: "%.3f" % (ns / 1e6)
lat_all, lat_big, lat_small = [], [], []
cli_mibs, cli_rps, cli_p99 = [], [], []
t0s, t1s = [], []
reads = nbytes = bad = errors = idle = 0
problem = ""
for k in range(n):
    with open("%s/r%d.json" % (d, k)) as f:
        s = json.load(f)
    lats = []
    with open("%s/r%d.lat" % (d, k)) as f:
        for line in f:
            a, b = line.split()
            a = int(a)
            lats.append(a)
            (lat_big if int(b) >= big else lat_small).append(a)
    lat_all += lats
    el = s["t_end"] - s["t_start"]
    t0s.append(s["t_start"]); t1s.append(s["t_end"])
    cli_mibs.append(s["bytes"] / 1048576 / el)
    cli_rps.append(s["reads"] / el)
    lats.sort()
    cli_p99.append((pct(lats, 99), k))
    reads += s["reads"]; nbytes += s["bytes"]; bad += s["bad"]; errors += s["errors"]
    if s["reads"] == 0:
        idle += 1
    if s["first_problem"] and not problem:
        problem = "reader %d: %s" % (k, s["first_problem"])
for l in (lat_all, lat_big, lat_small):
    l.sort()
wall = max(t1s) - min(t0s)
worst = max(cli_p99)
out = {
    "reads": reads, "bytes": nbytes, "bad": bad, "errors": errors, "idle": idle,
    "wall": "%.3f" % wall,
    "rps": "%.0f" % (reads / wall),
    "mibs": "%.1f" % (nbytes / 1048576 / wall),
    "cli_mibs_med": "%.2f" % statistics.median(cli_mibs),
    "cli_mibs_min": "%.2f" % min(cli_mibs),
    "cli_rps_med": "%.1f" % statistics.median(cli_rps),
    "cli_rps_min": "%.1f" % min(cli_rps),
    "p50": ms(pct(lat_all, 50)), "p99": ms(pct(lat_all, 99)),
    "max": ms(lat_all[-1]) if lat_all else "nan",
    "p50_big": ms(pct(lat_big, 50)), "p99_big": ms(pct(lat_big, 99)),
    "p50_small": ms(pct(lat_small, 50)), "p99_small": ms(pct(lat_small, 99)),
    "n_big": len(lat_big), "n_small": len(lat_small),
    "worst_p99": ms(worst[0]), "worst_p99_reader": worst[1],
    "problem": problem.replace("\n", " "),
}
for k, v in out.items():
    print("%s=%s" % (k, v))
EOF

# ---------------------------------------------------------------- helpers
median() { # of an even count: the mean of the middle two, with the values' decimals
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
    if (NR%2) { print a[(NR+1)/2]; exit }
    d = index(a[1], ".") ? length(a[1]) - index(a[1], ".") : 0
    printf "%." d "f\n", (a[NR/2]+a[NR/2+1])/2 }'
}
declare -A RES=() # key "row|fs" -> list of values, one per run
add() { RES["$1|$2"]="${RES["$1|$2"]:-} $3"; }
declare -A NOTE=() # "what|fs" -> last run's detail line

# await_ready DIR N TIMEOUT: until DIR holds N files (the jobs are ready)
await_ready() {
  local deadline=$((SECONDS + $3)) n
  while :; do
    n=$(find "$1" -mindepth 1 -maxdepth 1 | wc -l)
    [ "$n" -ge "$2" ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || return 1
    [ ${#WORKERS[@]} -gt 0 ] && [ -z "$(alive_of "${WORKERS[@]}")" ] && return 1
    sleep 0.05
  done
}
# wait_workers TIMEOUT LABEL: wait for every job in WORKERS; their exit
# statuses in WRC (same order). Over TIMEOUT: the jobs are stopped, a failure.
WRC=()
wait_workers() {
  local deadline=$((SECONDS + $1)) p rc
  while [ -n "$(alive_of "${WORKERS[@]}")" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "$2: still running after $1 s, stopped"
      stop_workers
      return 1
    fi
    sleep 0.1
  done
  WRC=()
  for p in "${WORKERS[@]}"; do
    if wait "$p"; then rc=0; else rc=$?; fi
    WRC+=("$rc")
  done
  WORKERS=()
}

RUN=0
# Phase A: MOUNTS copies of the source tree at once, one per mount.
phase_copy() { # fs
  local fs=$1 back i m go rd t0 t1 rc e f b
  back=$(back_of "$fs")
  # an earlier run's copies, removed through their mounts (untimed)
  for i in $(seq "$MOUNTS"); do
    m=${MNT["$fs:$i"]}
    if [ -e "$m/copy-$i" ]; then rm -rf "$m/copy-$i" & WORKERS+=("$!"); fi
  done
  [ ${#WORKERS[@]} -eq 0 ] || wait_workers 600 "$fs: removing the earlier copies" || return 0
  # every client starts with no dirty data of earlier phases and a cold
  # server; the source is then read once so the copies are not timed reading
  # a cold source
  drop_caches
  find "$SRC" -type f -exec cat {} + >/dev/null
  rd=$TMP/copy-$fs
  rm -rf "$rd"
  mkdir -p "$rd/ready"
  go=$rd/go
  for i in $(seq "$MOUNTS"); do
    m=${MNT["$fs:$i"]}
    (
      : >"$rd/ready/$i"
      while [ ! -e "$go" ]; do sleep 0.01; done
      t0=$EPOCHREALTIME
      if cp -r "$SRC" "$m/copy-$i" 2>"$rd/$i.err"; then rc=0; else rc=$?; fi
      t1=$EPOCHREALTIME
      echo "$t0 $t1 $rc" >"$rd/$i.res"
    ) &
    WORKERS+=("$!")
  done
  await_ready "$rd/ready" "$MOUNTS" 60 || { stop_workers; fail "$fs: copiers did not start"; return 0; }
  : >"$go"
  wait_workers "$COPY_TIMEOUT" "$fs: $MOUNTS concurrent copies" || return 0

  local times=() starts=() ends=() ok=1
  for i in $(seq "$MOUNTS"); do
    if [ ! -s "$rd/$i.res" ]; then fail "$fs: copier $i left no result"; ok=0; continue; fi
    read -r t0 t1 rc <"$rd/$i.res"
    [ "$rc" = 0 ] || { fail "$fs: cp -r into mount $i exited $rc: $(head -c 300 "$rd/$i.err")"; ok=0; }
    starts+=("$t0"); ends+=("$t1")
    times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')")
    # the copy as the server stores it
    e=$(find "$back/copy-$i" 2>/dev/null | wc -l || true)
    f=$(find "$back/copy-$i" -type f 2>/dev/null | wc -l || true)
    b=$(find "$back/copy-$i" -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s+0}' || true)
    if [ "$e" != "$TREE_ENTRIES" ] || [ "$f" != "$TREE_FILES" ] || [ "$b" != "$TREE_BYTES" ]; then
      fail "$fs: copy-$i has $e entries, $f files, $b bytes; expected $TREE_ENTRIES, $TREE_FILES, $TREE_BYTES"
      ok=0
    fi
  done
  [ ${#times[@]} -gt 0 ] || return 0
  local wall med max
  wall=$(printf '%s\n' "${starts[@]}" | sort -g | head -1)
  wall=$(awk -v a="$wall" -v b="$(printf '%s\n' "${ends[@]}" | sort -g | tail -1)" 'BEGIN{printf "%.3f", b-a}')
  med=$(median "${times[@]}")
  max=$(printf '%s\n' "${times[@]}" | sort -g | tail -1)
  add cwall "$fs" "$wall"
  add cfps "$fs" "$(awk -v n="$((MOUNTS * TREE_FILES))" -v w="$wall" 'BEGIN{printf "%.0f", n/w}')"
  add cmibs "$fs" "$(awk -v n="$MOUNTS" -v b="$TREE_BYTES" -v w="$wall" 'BEGIN{printf "%.2f", n*b/1048576/w}')"
  add cmed "$fs" "$med"
  add cmax "$fs" "$max"
  NOTE["copy|$fs"]="per-client copy times (s, mount 1..$MOUNTS): ${times[*]}"
  log "$fs: $MOUNTS copies: wall ${wall}s, per client median ${med}s max ${max}s$([ "$ok" = 1 ] && echo ", checked" || echo ", CHECK FAILED")"
}

# Phase B: READERS readers over the MOUNTS mounts, round-robin.
phase_read() { # fs
  local fs=$1 back m1 rd k v i f b
  back=$(back_of "$fs")
  m1=${MNT["$fs:1"]}
  if [ ! -d "$back/readset" ]; then # written once per filesystem, through mount 1
    cp -r "$READSET" "$m1/readset" || { fail "$fs: writing the read set through mount 1"; return 0; }
    f=$(find "$back/readset" -type f 2>/dev/null | wc -l || true)
    b=$(find "$back/readset" -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s+0}' || true)
    if [ "$f" != "$READ_FILES" ] || [ "$b" != "$READ_BYTES" ]; then
      fail "$fs: read set on the server has $f files, $b bytes; expected $READ_FILES, $READ_BYTES"
      return 0
    fi
  fi
  drop_caches
  rd=$TMP/read-$fs
  rm -rf "$rd"
  mkdir -p "$rd/ready" "$rd/done"
  for k in $(seq 0 $((READERS - 1))); do
    i=$((k % MOUNTS + 1))
    # same seeds for both filesystems: the same order of files per reader
    python3 "$TMP/reader.py" "${MNT["$fs:$i"]}/readset" "$MANIFEST" "$READ_SECONDS" \
      "$((RUN * 100000 + k))" "$rd/r$k" "$rd/ready/$k" "$rd/go" "$rd/done/$k" "$rd/release" 2>"$rd/r$k.err" &
    WORKERS+=("$!")
  done
  await_ready "$rd/ready" "$READERS" 120 || { stop_workers; fail "$fs: readers did not start"; return 0; }
  echo "$EPOCHREALTIME" >"$rd/go.tmp" # the start time, for the common deadline
  mv "$rd/go.tmp" "$rd/go"
  await_ready "$rd/done" "$READERS" $((READ_SECONDS + 120)) ||
    fail "$fs: readers not done $((READ_SECONDS + 120)) s after the start ($(find "$rd/done" -mindepth 1 | wc -l) of $READERS)"
  : >"$rd/release"
  wait_workers 60 "$fs: $READERS readers writing their results" || return 0
  for k in $(seq 0 $((READERS - 1))); do
    [ "${WRC[$k]}" = 0 ] || { fail "$fs: reader $k exited ${WRC[$k]}: $(tail -c 300 "$rd/r$k.err")"; return 0; }
  done
  python3 "$TMP/readsum.py" "$rd" "$READERS" "$BIG_SIZE" >"$rd/summary" || { fail "$fs: summarising the reads"; return 0; }
  local -A S=()
  while IFS='=' read -r k v; do S[$k]=$v; done <"$rd/summary"
  if [ "${S[bad]}" != 0 ] || [ "${S[errors]}" != 0 ]; then
    fail "$fs: ${S[bad]} reads of the wrong size, ${S[errors]} failed reads (first: ${S[problem]})"
  fi
  [ "${S[idle]}" = 0 ] || fail "$fs: ${S[idle]} readers completed no read"
  add rrps "$fs" "${S[rps]}"
  add rmibs "$fs" "${S[mibs]}"
  add rcmed "$fs" "${S[cli_mibs_med]}"
  add rcmin "$fs" "${S[cli_mibs_min]}"
  add rp50 "$fs" "${S[p50]}"
  add rp99 "$fs" "${S[p99]}"
  add rwp99 "$fs" "${S[worst_p99]}"
  add rp99b "$fs" "${S[p99_big]}"
  add rp99s "$fs" "${S[p99_small]}"
  add rmax "$fs" "${S[max]}"
  NOTE["read|$fs"]="${S[reads]} reads (${S[n_big]} of 1 MiB, ${S[n_small]} of 4 KiB) in ${S[wall]} s; per client reads/s median ${S[cli_rps_med]}, min ${S[cli_rps_min]}; p50 1 MiB ${S[p50_big]} ms, p50 4 KiB ${S[p50_small]} ms; worst per-client p99 on reader ${S[worst_p99_reader]} (mount $((S[worst_p99_reader] % MOUNTS + 1)))"
  log "$fs: $READERS readers: ${S[rps]} reads/s, ${S[mibs]} MiB/s, p50 ${S[p50]} ms, p99 ${S[p99]} ms, worst client p99 ${S[worst_p99]} ms, max ${S[max]} ms"
}

START=$(date +%s)
for RUN in $(seq "$RUNS"); do
  # sshfs first in odd runs, spockfs first in even ones
  if [ $((RUN % 2)) = 1 ]; then ORDER=(sshfs spockfs); else ORDER=(spockfs sshfs); fi
  log "run $RUN: ${ORDER[*]}"
  for ph in copy read; do
    for fs in "${ORDER[@]}"; do "phase_$ph" "$fs"; done
  done
done
TOTAL=$(($(date +%s) - START))

# ---------------------------------------------------------------- report
ROWS=(cwall cfps cmibs cmed cmax rrps rmibs rcmed rcmin rp50 rp99 rwp99 rp99b rp99s rmax)
declare -A LABEL=(
  [cwall]="A. $MOUNTS concurrent \`cp -r\` of the tree: wall time, s"
  [cfps]="A. aggregate throughput, files/s"
  [cmibs]="A. aggregate throughput, MiB/s"
  [cmed]="A. per-client copy time, median, s"
  [cmax]="A. per-client copy time, max (= p99 of $MOUNTS), s"
  [rrps]="B. $READERS readers: aggregate whole-file reads/s"
  [rmibs]="B. aggregate read throughput, MiB/s"
  [rcmed]="B. per-client throughput, median, MiB/s"
  [rcmin]="B. per-client throughput, min, MiB/s"
  [rp50]="B. read latency p50, all reads, ms"
  [rp99]="B. read latency p99, all reads, ms"
  [rwp99]="B. worst per-client p99, ms"
  [rp99b]="B. read latency p99, 1 MiB files, ms"
  [rp99s]="B. read latency p99, 4 KiB files, ms"
  [rmax]="B. slowest read, ms"
)
declare -A HIGHER=([cfps]=1 [cmibs]=1 [rrps]=1 [rmibs]=1 [rcmed]=1 [rcmin]=1)
speedup() { # row a(sshfs) b(spockfs) -> times better spockfs is
  if [ -n "${HIGHER[$1]:-}" ]; then
    awk -v a="$2" -v b="$3" 'BEGIN{ if (a>0) printf "%.2f", b/a; else print "-" }'
  else
    awk -v a="$2" -v b="$3" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }'
  fi
}

DATE=$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$BENCH_DIR/results"
OUT=$BENCH_DIR/results/many-$DATE.md
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
FSTYPE=$(df -T "$TMP" | awk 'NR==2 {print $2" ("$1")"}')
SSHFS_VER=$(sshfs --version 2>&1 | grep -m1 "SSHFS version" || true)
SSH_VER=$(ssh -V 2>&1)
binver() { echo "\`$1\` ($("$1" --version 2>/dev/null || echo '?'), built $(date -u -r "$1" '+%Y-%m-%d %H:%M UTC'))"; }

{
  echo "# Many clients: spockfs-mount vs sshfs, $MOUNTS mounts of one server — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Reproduce: \`MOUNTS=$MOUNTS READERS=$READERS READ_SECONDS=$READ_SECONDS TREE_TARGET=$TREE_TARGET RUNS=$RUNS bench/many.sh\`"
  echo
  echo "- Machine: $CPU, $(nproc) cores, $MEM RAM, kernel $(uname -r); servers, FUSE clients and the copier/reader processes all share these cores"
  echo "- Backing dirs: two dirs under one temp dir on $FSTYPE$( [ "$SPREAD" = 1 ] && echo ", the temp dir flagged \`chattr +T\`" || true)"
  echo "- spockfs: one \`axum-app --listen 127.0.0.1:PORT --root DIR\` ($(binver "$SERVER")) and $MOUNTS \`spockfs-mount --foreground http://127.0.0.1:PORT/fs MNT_i\` processes ($(binver "$MOUNT")), default options (attr/entry timeout 1 s, keep-cache)"
  echo "- sshfs: $SSHFS_VER, $SSH_VER; one sshd started by the script with its own config (\`internal-sftp\`, ed25519 keys, 127.0.0.1 only) and $MOUNTS \`sshfs -f -p PORT -o IdentityFile=…,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR root@127.0.0.1:DIR MNT_i\` processes, otherwise sshfs defaults (one SSH connection each)"
  echo "- A. Tree: $TREE_DESC. Each of the $MOUNTS mounts runs \`cp -r SRC MNT_i/copy-i\`; all released at once by a start file. Before: \`sync\` + drop_caches, then the source read once (the copies are not timed reading a cold source). Per-client time: that client's \`cp\` start to end; wall: first start to last end; aggregate throughput: $MOUNTS × the tree's files (bytes) / wall. With $MOUNTS clients the nearest-rank p99 of the per-client times is their max. Check: each copy on the server's backing dir has the tree's entries, files and bytes"
  echo "- B. Read set: $READ_DESC, written through mount 1; then \`sync\` + drop_caches. $READERS reader processes (python3, one per client), reader k on mount k mod $MOUNTS + 1 ($(( READERS / MOUNTS ))$( [ $((READERS % MOUNTS)) = 0 ] || echo "–$(( READERS / MOUNTS + 1 ))") per mount), released at once by a start file and stopped by one deadline for all, each reads whole files (open, read(2) of 1 MiB into one buffer until EOF, close; each such whole-file read timed) in its own shuffled order, reshuffled each pass, for $READ_SECONDS s (a read in flight at the deadline completes and counts; results are written after every reader is done, so no reader's exit competes with another's last read). Mostly 4 KiB files by count, mostly 1 MiB files by bytes. Only the first read of a file after the drop is cold: later ones may be served from the client's page cache, as each client's caching allows (spockfs-mount keeps pages while the server shows the file unchanged; sshfs defaults). Latency percentiles nearest-rank over every read of every client; per-client throughput: a client's bytes / its own read time. Check: every read returned the file's size, no read failed, every client completed reads"
  echo "- Order: each phase runs on both filesystems back to back before the next (sshfs first in odd runs, spockfs first in even ones)$( [ "$DROP_OK" = 1 ] || echo "; **drop_caches failed: page cache not dropped**")"
  echo "- Runs: $RUNS$( [ "$RUNS" -gt 1 ] && echo ", median per row shown" || echo " (single run)"); the whole benchmark took ${TOTAL}s"
  echo
  echo "| workload | sshfs | spockfs-mount | spockfs speedup (×) |"
  echo "|---|---:|---:|---:|"
  for row in "${ROWS[@]}"; do
    [ -n "${RES["$row|spockfs"]:-}${RES["$row|sshfs"]:-}" ] || continue
    # shellcheck disable=SC2086
    a=$(median ${RES["$row|sshfs"]:-0})
    # shellcheck disable=SC2086
    b=$(median ${RES["$row|spockfs"]:-0})
    echo "| ${LABEL[$row]} | $a | $b | $(speedup "$row" "$a" "$b") |"
  done
  echo
  echo "Speedup: throughput rows spockfs/sshfs, time and latency rows sshfs/spockfs (>1: spockfs better)."
  echo
  echo "## Notes"
  echo
  echo "- Checks: $( [ "$FAILED" = 0 ] && echo "all passed (copies' entries, files and bytes on the server; every read's size)" || echo "**some failed, see the log of the run**")"
  for fs in sshfs spockfs; do
    [ -z "${NOTE["copy|$fs"]:-}" ] || echo "- $fs, A (last run): ${NOTE["copy|$fs"]}"
    [ -z "${NOTE["read|$fs"]:-}" ] || echo "- $fs, B (last run): ${NOTE["read|$fs"]}"
  done
  echo "- Raw values per run: $(for row in "${ROWS[@]}"; do printf '%s sshfs[%s] spockfs[%s]; ' "$row" "${RES["$row|sshfs"]:- }" "${RES["$row|spockfs"]:- }"; done | sed 's/\[ /[/g')"
} | tee "$OUT"
log "saved $OUT"
exit "$FAILED"
