#!/usr/bin/env bash
# Interleaved A/B of two axum-app binaries (say, before and after a change)
# on the GET 1 MiB and GETATTR rows of bench/http.sh: both servers run at
# once on the same root, and each pair runs wrk on both, in alternating order.
#
#   BEFORE=/path/axum-app-old AFTER=target/release/axum-app bench/ab.sh
#
# Env: PAIRS (default 6), DURATION (wrk -d, default 5s), CONNS (default 16),
#      ROWS (default "GET GETATTR"),
#      BEFORE_ARGS / AFTER_ARGS (extra flags of each server, word-split), e.g.
#      the same binary with and without --metrics:
#      BEFORE=$B AFTER=$B AFTER_ARGS="--metrics 127.0.0.1:9091" bench/ab.sh
# Prints every pair, then per row the medians and the median of the
# pairwise after/before ratios, and each server's CPU time per request
# (from /proc/PID/stat around its wrk run: not biased by which server of a
# pair runs second, as throughput is on a small machine).
# Stops exactly the servers it started.
set -euo pipefail
: "${BEFORE:?set BEFORE to the baseline axum-app binary}"
: "${AFTER:?set AFTER to the axum-app binary to compare}"
PAIRS=${PAIRS:-6}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}
LUA=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lua/request.lua
command -v wrk >/dev/null || { echo "ab.sh: wrk is missing (apt-get install wrk)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/root"
head -c 1048576 /dev/urandom >"$work/root/big"
echo hi >"$work/root/f"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PB=$(port); PA=$(port)
# shellcheck disable=SC2086 # the extra flags are word-split on purpose
"$BEFORE" --listen 127.0.0.1:$PB --root "$work/root" ${BEFORE_ARGS:-} >"$work/before.log" 2>&1 & pids+=($!)
# shellcheck disable=SC2086
"$AFTER" --listen 127.0.0.1:$PA --root "$work/root" ${AFTER_ARGS:-} >"$work/after.log" 2>&1 & pids+=($!)
for p in $PB $PA; do
  for _ in $(seq 100); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$p/fs/" && break; sleep 0.1; done
done

# CPU time (utime + stime, clock ticks) of a process so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
run() { # pid port method path -> "req/s server-CPU-µs-per-request"
  local t0 t1 out
  t0=$(ticks "$1")
  out=$(BENCH_METHOD=$3 wrk -t2 -c"$CONNS" -d"$DURATION" -s "$LUA" "http://127.0.0.1:$2$4" 2>/dev/null)
  t1=$(ticks "$1")
  awk -v dt=$((t1 - t0)) -v tck="$TCK" '/requests in/{n=$1} /Requests\/sec/{r=$2}
    END{printf "%s %.2f\n", r, (n > 0 ? dt / tck * 1e6 / n : 0)}' <<<"$out"
}
out="$work/pairs"
for name in ${ROWS:-GET GETATTR}; do
  case $name in
    GET) set -- GET /fs/big ;;
    GETATTR) set -- GETATTR /fs/f ;;
    *) echo "ab.sh: unknown row $name (GET, GETATTR)" >&2; exit 2 ;;
  esac
  run "${pids[0]}" $PB "$1" "$2" >/dev/null; run "${pids[1]}" $PA "$1" "$2" >/dev/null # warm-up
  for i in $(seq "$PAIRS"); do
    if ((i % 2)); then b=$(run "${pids[0]}" $PB "$1" "$2"); a=$(run "${pids[1]}" $PA "$1" "$2")
    else a=$(run "${pids[1]}" $PA "$1" "$2"); b=$(run "${pids[0]}" $PB "$1" "$2"); fi
    echo "$1 pair $i before=${b% *} after=${a% *} cpu_us_before=${b#* } cpu_us_after=${a#* }" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import re, statistics as st, sys
rows = {}
for l in open(sys.argv[1]):
    m = re.match(r'(\w+) pair \d+ before=([\d.]+) after=([\d.]+) cpu_us_before=([\d.]+) cpu_us_after=([\d.]+)', l)
    if m: rows.setdefault(m.group(1), []).append(tuple(float(m.group(i)) for i in range(2, 6)))
print("| row | before req/s (median) | after req/s (median) | after/before (median of pairs) | min | max | server CPU µs/request before | after | after/before |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for k, v in rows.items():
    r = [a / b for b, a, _, _ in v]
    cb, ca = st.median(x[2] for x in v), st.median(x[3] for x in v)
    print(f"| {k} | {st.median(x[0] for x in v):.0f} | {st.median(x[1] for x in v):.0f} | {st.median(r):.3f} | {min(r):.3f} | {max(r):.3f} | {cb:.2f} | {ca:.2f} | {ca / cb:.3f} |")
PY
