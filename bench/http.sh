#!/usr/bin/env bash
# HTTP benchmark: SpockFS served by axum-app and by pingora-gateway (the same
# engine in-process behind Pingora's HTTP stack), against nginx on the same files,
# with wrk.
#
#   DURATION=10s bench/http.sh
#
# Env: DURATION  measured time per cell (default 10s)
#      WARMUP    warm-up time before each cell (default 2s)
#      SPOCKFS_BIN  use this axum-app binary instead of `cargo build --release -p axum-app`
#      GATEWAY_BIN  use this pingora-gateway binary instead of
#                   `cargo build --release -p pingora-gateway`
#      SERVERS   comma-separated subset of axum,gateway,nginx (default: all three);
#                columns, ratios and targets of servers left out show "-"
#
# Everything runs on 127.0.0.1 on free high ports picked here. The script starts
# axum-app, pingora-gateway and nginx itself and stops exactly those processes
# (by PID) on exit.
# Exit status: 0 when every response was as expected, 1 when a check failed
# (wrong status or size, socket errors, server-closed connections), 2 on setup errors.
# Targets not met are reported but do not change the exit status.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
LUA="$BENCH_DIR/lua/request.lua"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=(1 16 64)

log() { printf '[http.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# Servers measured, in the order each cell runs them.
declare -A ON=()
IFS=', ' read -r -a _sel <<<"${SERVERS:-axum,gateway,nginx}"
for s in "${_sel[@]}"; do
  case $s in
    axum | gateway | nginx) ON[$s]=1 ;;
    "") ;;
    *) die "SERVERS: unknown server '$s' (use axum, gateway, nginx)" ;;
  esac
done
[ ${#ON[@]} -gt 0 ] || die "SERVERS selects no server"
on() { [ -n "${ON[$1]:-}" ]; }

# ---------------------------------------------------------------- tools
missing=()
command -v wrk >/dev/null || missing+=(wrk)
on nginx && ! command -v nginx >/dev/null && ! [ -x /usr/sbin/nginx ] && missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
command -v ss >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; install them (apt-get install -y ${missing[*]}) or run as root"
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# ---------------------------------------------------------------- server binaries
BIN=${SPOCKFS_BIN:-$REPO/target/release/axum-app}
GW_BIN=${GATEWAY_BIN:-$REPO/target/release/pingora-gateway}
build=()
on axum && [ -z "${SPOCKFS_BIN:-}" ] && build+=(-p axum-app)
on gateway && [ -z "${GATEWAY_BIN:-}" ] && build+=(-p pingora-gateway)
if [ ${#build[@]} -gt 0 ]; then
  log "building (cargo build --release ${build[*]})"
  (cd "$REPO" && cargo build --release "${build[@]}" >&2) || die "cargo build failed"
fi
! on axum || [ -x "$BIN" ] || die "no executable at $BIN"
! on gateway || [ -x "$GW_BIN" ] || die "no executable at $GW_BIN"

# ---------------------------------------------------------------- temp dir, cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/spockfs-bench.XXXXXX")
chmod 755 "$TMP" # nginx workers may run as nobody: they must reach the data
PIDS=()
# True while <pid> runs (kill -0 alone also succeeds on a not-yet-reaped zombie).
alive() { local st; st=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do # only the processes this script started
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # pingora-gateway takes up to ~3 s after SIGTERM (grace period + drain).
    for _ in $(seq 60); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "warning: PID $pid did not stop within 6 s of SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- test data
DATA="$TMP/data"
mkdir -p "$DATA/dir100"
head -c 1048576 /dev/urandom >"$DATA/file.bin" # read by rows 1, 3, 4
head -c 1048576 /dev/urandom >"$DATA/put.bin"  # written by row 5
for i in $(seq -w 1 100); do echo "entry $i" >"$DATA/dir100/f$i.txt"; done
head -c 131072 /dev/urandom >"$TMP/body128k.bin" # the PUT body
chmod -R a+rX "$DATA"

# ---------------------------------------------------------------- servers
# A free port in 20000-32767 (below Linux's default ephemeral range, so wrk's own
# client ports never collide with it), not one already handed out here.
USED_PORTS=" "
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 12768))
    case $USED_PORTS in *" $p "*) continue ;; esac
    ss -Htln "sport = :$p" | grep -q . || { USED_PORTS+="$p "; echo "$p"; return; }
  done
  die "no free port found"
}
wait_http() { # <pid> <logfile> <curl args...>: wait until the server answers
  local pid=$1 logf=$2; shift 2
  for _ in $(seq 100); do
    alive "$pid" || { cat "$logf" >&2; die "server exited at startup"; }
    curl -s -o /dev/null "$@" && return 0
    sleep 0.1
  done
  cat "$logf" >&2; die "server did not answer in 10s"
}
declare -A BASE=() # server -> base URL

if on axum; then
  SP_PORT=$(free_port)
  RUST_LOG=warn "$BIN" --listen "127.0.0.1:$SP_PORT" --root "$DATA" --prefix /fs \
    >"$TMP/axum-app.log" 2>&1 & # banner and tracing (stdout) + errors (stderr)
  PIDS+=($!)
  BASE[axum]="http://127.0.0.1:$SP_PORT/fs"
  wait_http "${PIDS[-1]}" "$TMP/axum-app.log" -X GETATTR "${BASE[axum]}/file.bin"
fi

if on gateway; then
  GW_PORT=$(free_port)
  GW_THREADS=2 # like axum-app's tokio runtime: one worker per core
  mkdir -p "$TMP/gateway"
  # default_upstream: nothing listens on port 1, and nothing outside /fs is requested.
  cat >"$TMP/gateway/gateway.toml" <<TOML
listen = [{ addr = "127.0.0.1:$GW_PORT" }]
default_upstream = "127.0.0.1:1"
[[vhost]]
host = "*"
prefix = "/fs"
root = "$DATA"
[server]
threads = $GW_THREADS
TOML
  # Its tracing output goes to stdout (tracing_subscriber's default), with the banner.
  RUST_LOG=warn "$GW_BIN" --config "$TMP/gateway/gateway.toml" >"$TMP/gateway/gateway.log" 2>&1 &
  PIDS+=($!)
  BASE[gateway]="http://127.0.0.1:$GW_PORT/fs"
  wait_http "${PIDS[-1]}" "$TMP/gateway/gateway.log" -X GETATTR "${BASE[gateway]}/file.bin"
  grep -qF "SpockFS at ${BASE[gateway]}" "$TMP/gateway/gateway.log" ||
    die "pingora-gateway did not print 'SpockFS at ${BASE[gateway]}': $(cat "$TMP/gateway/gateway.log")"
fi

if on nginx; then
  NG_PORT=$(free_port)
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<CONF
# worker_processes auto = one worker per core (2 here), sharing both cores with
# wrk and the SpockFS servers, just as axum-app's tokio runtime does.
worker_processes auto;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  # open_file_cache stays off (the default): nginx opens and stats per request.
  server {
    listen 127.0.0.1:$NG_PORT;
    root $DATA;
  }
}
CONF
  "$NGINX" -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
    >"$TMP/nginx/stdout.log" 2>&1 &
  PIDS+=($!)
  BASE[nginx]="http://127.0.0.1:$NG_PORT"
  wait_http "${PIDS[-1]}" "$TMP/nginx/error.log" "${BASE[nginx]}/file.bin"
fi

# ---------------------------------------------------------------- preflight
# One request of each kind with curl, checking statuses and bytes, before any load.
PROBLEMS=()
problem() { PROBLEMS+=("$*"); log "WARNING: $*"; }
expect_eq() { [ "$2" = "$3" ] || problem "preflight $1: got '$2', expected '$3'"; }

preflight_get() { # <server>: range GET and whole GET
  local s=$1 base=${BASE[$1]} r
  r=$(curl -s -o "$TMP/range.out" -w '%{http_code}' -H 'Range: bytes=0-4095' "$base/file.bin")
  expect_eq "range GET status ($s)" "$r" 206
  cmp -s "$TMP/range.out" <(head -c 4096 "$DATA/file.bin") || problem "preflight range GET ($s): wrong bytes"
  r=$(curl -s -o "$TMP/whole.out" -w '%{http_code}' "$base/file.bin")
  expect_eq "GET status ($s)" "$r" 200
  cmp -s "$TMP/whole.out" "$DATA/file.bin" || problem "preflight GET ($s): wrong bytes"
}

declare -A READDIR_BYTES=()
preflight_spockfs() { # <server>: every SpockFS request of the rows
  local s=$1 base=${BASE[$1]} r size n
  r=$(curl -s -o /dev/null -w '%{http_code}' -X GETATTR "$base/file.bin")
  expect_eq "GETATTR status ($s)" "$r" 200
  size=$(curl -s -D - -o /dev/null -X GETATTR "$base/file.bin" | tr -d '\r' |
    awk -F': *' 'tolower($1)=="x-spock-size" {print $2}')
  expect_eq "GETATTR X-Spock-Size ($s)" "$size" 1048576
  r=$(curl -s -o "$TMP/readdir-$s.out" -w '%{http_code}' -X READDIR "$base/dir100")
  expect_eq "READDIR status ($s)" "$r" 200
  n=$(grep -c '^f[0-9]*\.txt$' "$TMP/readdir-$s.out" || true)
  expect_eq "READDIR entries named f*.txt ($s)" "$n" 100
  READDIR_BYTES[$s]=$(wc -c <"$TMP/readdir-$s.out")
  preflight_get "$s"
  # Zero the target range first, so that the check below sees this server's write.
  dd if=/dev/zero of="$DATA/put.bin" bs=131072 seek=1 count=1 conv=notrunc status=none
  r=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Range: bytes=131072-262143' \
    --data-binary @"$TMP/body128k.bin" "$base/put.bin")
  expect_eq "PUT status ($s)" "$r" 200
  cmp -s <(tail -c +131073 "$DATA/put.bin" | head -c 131072) "$TMP/body128k.bin" ||
    problem "preflight PUT ($s): bytes 131072-262143 of put.bin differ from the body sent"
  expect_eq "PUT file size ($s)" "$(stat -c %s "$DATA/put.bin")" 1048576
  # Keep-alive: curl reuses the connection for the second request (0 new connects).
  r=$(curl -s -o /dev/null -o /dev/null -w '%{num_connects} ' -X GETATTR "$base/file.bin" "$base/file.bin")
  expect_eq "GETATTR x2 on one connection, new connects ($s)" "${r% }" "1 0"
  r=$(curl -s -o /dev/null -o /dev/null -w '%{num_connects} ' "$base/file.bin" "$base/file.bin")
  expect_eq "GET x2 on one connection, new connects ($s)" "${r% }" "1 0"
}
for s in axum gateway; do if on "$s"; then preflight_spockfs "$s"; fi; done
if on axum && on gateway; then
  cmp -s "$TMP/readdir-axum.out" "$TMP/readdir-gateway.out" ||
    problem "preflight READDIR: gateway's listing differs from axum-app's"
fi

if on nginx; then
  preflight_get nginx
  # wrk 4.1 cannot parse a HEAD response that carries Content-Length: it waits for a
  # body that never comes (wg/wrk#198). So the nginx "HEAD" anchor is a conditional
  # HEAD that nginx answers 304 without Content-Length, after the same open + fstat.
  LAST_MOD=$(curl -sI "${BASE[nginx]}/file.bin" | tr -d '\r' | sed -n 's/^Last-Modified: //p')
  [ -n "$LAST_MOD" ] || die "nginx sent no Last-Modified"
  expect_eq "nginx conditional HEAD status" \
    "$(curl -s -o /dev/null -w '%{http_code}' -I -H "If-Modified-Since: $LAST_MOD" "${BASE[nginx]}/file.bin")" 304
fi

# ---------------------------------------------------------------- wrk cells
# Rows: label | SpockFS request (axum-app and pingora-gateway) | nginx request
# ("-" = no anchor).
# A request is: method|headers|body file|expected status|expected body bytes|hook|URL
# (hook 0 = no response() hook in the measured run, see lua/request.lua; the
# warm-up always runs with the hook so that every cell gets its statuses checked).
# {} in a URL stands for the server's base URL.
ROW_LABELS=(
  "GETATTR file (nginx: HEAD)"
  "READDIR 100 entries"
  "GET Range 0-4095"
  "GET 1 MiB"
  "PUT 128 KiB at 128 KiB"
)
SP_REQ=(
  "GETATTR|||200|0|1|{}/file.bin"
  "READDIR|||200|@READDIR_BYTES@|1|{}/dir100"
  "GET|Range: bytes=0-4095||206|4096|1|{}/file.bin"
  "GET|||200|1048576|0|{}/file.bin"
  "PUT|Content-Range: bytes=131072-262143|$TMP/body128k.bin|200|0|1|{}/put.bin"
)
NG_REQ=(
  "HEAD|If-Modified-Since: ${LAST_MOD:-}||304|0|1|{}/file.bin"
  "-"
  "GET|Range: bytes=0-4095||206|4096|1|{}/file.bin"
  "GET|||200|1048576|0|{}/file.bin"
  "-"
)
# request_spec <server> <row>: the request of that row for that server ("-": none).
request_spec() {
  local s=$1 i=$2 spec
  if [ "$s" = nginx ]; then spec=${NG_REQ[$i]}; else spec=${SP_REQ[$i]}; fi
  [ "$spec" != "-" ] || { echo -; return; }
  spec=${spec//@READDIR_BYTES@/${READDIR_BYTES[$s]:-0}}
  echo "${spec//\{\}/${BASE[$s]}}"
}

# Server-side TIME-WAIT sockets on a port: they only appear when the server
# closes connections itself (wrk closes first when it exits).
server_closes() { ss -Htan state time-wait "sport = :$1" | wc -l; }

# run_cell <name> <request spec> <conns>: sets CELL_RPS and CELL_P99 (ms).
run_cell() {
  local name=$1 spec=$2 c=$3
  local method headers body expect blen hook url
  IFS='|' read -r method headers body expect blen hook url <<<"$spec"
  local t=$((c < 2 ? c : 2)) port=${url#http://127.0.0.1:}
  port=${port%%/*}
  local logf="$TMP/wrk-$(echo "$name-$c" | tr -c 'A-Za-z0-9-' _).log"
  local tw0; tw0=$(server_closes "$port")

  export BENCH_METHOD=$method BENCH_HEADERS=$headers BENCH_BODY=$body
  # Warm-up, always with the status hook.
  BENCH_EXPECT=$expect wrk -t"$t" -c"$c" -d"$WARMUP" --timeout 5s -s "$LUA" "$url" >"$logf.warmup" 2>&1 ||
    problem "$name c=$c: wrk warm-up failed: $(tail -1 "$logf.warmup")"
  # Measured run.
  local want=""; [ "$hook" = 1 ] && want=$expect
  BENCH_EXPECT=$want wrk -t"$t" -c"$c" -d"$DURATION" --timeout 5s --latency -s "$LUA" "$url" >"$logf" 2>&1 ||
    problem "$name c=$c: wrk failed: $(tail -1 "$logf")"
  local tw1; tw1=$(server_closes "$port")

  CELL_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$logf")
  # p99 from wrk's latency distribution ("99%    1.23ms"), converted to ms.
  CELL_P99=$(awk '$1 == "99%" {
      v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
      f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
      if (f > 0) printf "%.3f", v * f }' "$logf")
  [ -n "$CELL_RPS" ] || CELL_RPS=0
  [ -n "$CELL_P99" ] || CELL_P99=?

  # Checks: statuses (hook), wrk's own >399 count, socket errors, closes, bytes.
  local f line kv what
  for f in "$logf.warmup" "$logf"; do
    what=measured; [ "$f" = "$logf" ] || what=warm-up
    line=$(sed -n 's/^BENCH //p' "$f")
    [ -n "$line" ] || { problem "$name c=$c ($what): wrk printed no BENCH line"; continue; }
    # The BENCH line's key=value pairs become locals: requests, bytes, unexpected...
    local requests=0 bytes=0 status_errors=0 hooked=0 unexpected=0 closes=0 statuses=-
    for kv in $line; do local "$kv"; done
    [ "$unexpected" = 0 ] || problem "$name c=$c ($what): $unexpected responses with unexpected status (want $expect; got $statuses)"
    [ "$status_errors" = 0 ] || problem "$name c=$c ($what): $status_errors responses with status >= 400"
    [ "$closes" = 0 ] || problem "$name c=$c ($what): $closes responses with 'Connection: close'"
    [ "$requests" -gt 0 ] || problem "$name c=$c ($what): no request completed"
    if grep -q 'Socket errors' "$f"; then
      problem "$name c=$c ($what): $(grep 'Socket errors' "$f" | sed 's/^ *//')"
    fi
    if [ "$f" = "$logf" ] && [ "$requests" -gt 0 ]; then
      # Each response is headers (< 1 KiB here) + the body; responses still in
      # flight when wrk stops add up to c more responses' worth of bytes.
      local lo=$((requests * blen)) hi=$(((requests + c) * (blen + 1024)))
      [ "$bytes" -ge "$lo" ] && [ "$bytes" -le "$hi" ] ||
        problem "$name c=$c: read $bytes bytes for $requests responses, expected ${blen}-byte bodies"
    fi
  done
  [ "$tw1" -le "$tw0" ] || problem "$name c=$c: server closed $((tw1 - tw0)) connections (server-side TIME-WAIT)"
  log "$(printf '%-28s c=%-3s %-7s %10s req/s  p99 %s ms' "${name%%@*}" "$c" "${name##*@}" "$CELL_RPS" "$CELL_P99")"
}

# ---------------------------------------------------------------- run
SERVER_ORDER=(axum gateway nginx)
log "$(for s in "${SERVER_ORDER[@]}"; do if on "$s"; then printf '%s at %s, ' "$s" "${BASE[$s]}"; fi; done)$DURATION per cell after a $WARMUP warm-up"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg) # other work on the machine skews everything
declare -A RPS P99
for i in "${!ROW_LABELS[@]}"; do
  for c in "${CONNS[@]}"; do
    for s in "${SERVER_ORDER[@]}"; do # the servers take turns on each cell
      on "$s" || continue
      spec=$(request_spec "$s" "$i")
      [ "$spec" != "-" ] || continue
      run_cell "${ROW_LABELS[$i]}@$s" "$spec" "$c"
      RPS[$i,$c,$s]=$CELL_RPS; P99[$i,$c,$s]=$CELL_P99
    done
  done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
fmt_rps() { awk -v r="$1" -v mb="$2" 'BEGIN {
  if (r == "") print "-"; else if (mb) printf "%.0f (%.0f MB/s)", r, r * 1048576 / 1e6; else printf "%.0f", r }'; }
fmt_p99() { if [ -n "$1" ]; then echo "$1 ms"; else echo -; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }

mkdir -p "$BENCH_DIR/results"
OUT="$BENCH_DIR/results/http-$(date +%Y%m%d-%H%M%S).md"
cmdline="DURATION=$DURATION WARMUP=$WARMUP${SERVERS:+ SERVERS=$SERVERS}${SPOCKFS_BIN:+ SPOCKFS_BIN=$SPOCKFS_BIN}${GATEWAY_BIN:+ GATEWAY_BIN=$GATEWAY_BIN} bench/http.sh"
pingora_ver=$(awk '$0 == "name = \"pingora\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO/Cargo.lock" 2>/dev/null)
servers_desc=$(for s in "${SERVER_ORDER[@]}"; do
  if on "$s"; then
    case $s in axum) printf 'axum-app, ' ;; gateway) printf 'pingora-gateway, ' ;; *) printf '%s, ' "$s" ;; esac
  fi
done)
{
  echo "# SpockFS HTTP benchmark"
  echo
  echo "Reproduce: \`$cmdline\`"
  echo
  echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(uname -r)"
  echo "- source: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' + uncommitted changes')"
  echo "- servers: ${servers_desc%, }"
  if on axum; then echo "- axum-app: $BIN (tokio multi-thread runtime, $(nproc) workers)"; fi
  if on gateway; then echo "- pingora-gateway: $GW_BIN (Pingora ${pingora_ver:-?}, threads = $GW_THREADS, vhost \`*\` prefix /fs root = the same directory, served in-process by the same engine)"; fi
  if on nginx; then echo "- $("$NGINX" -v 2>&1 | sed 's/^nginx version: //') with worker_processes auto ($(nproc) workers), sendfile on, access_log off"; fi
  echo "- $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), threads = min(connections, 2); each cell runs the servers in turn (${servers_desc%, })"
  echo "- wrk and the servers share the same $(nproc) cores on 127.0.0.1 (only the one being measured is busy): numbers are relative, not absolute;"
  echo "  load average before the runs $LOAD_BEFORE, after $LOAD_AFTER (anything else running skews the cells)"
  if on nginx; then
    echo "- the nginx anchor of row 1 is HEAD with If-Modified-Since (304, no Content-Length): wrk 4.1 hangs on HEAD responses with Content-Length"
  fi
  echo "- $DURATION per cell after a $WARMUP warm-up; p99 from wrk --latency; axum/nginx = axum-app req/s / nginx req/s; gateway/axum = pingora-gateway req/s / axum-app req/s"
  echo
  echo "| row | connections | axum req/s | axum p99 | nginx req/s | nginx p99 | axum/nginx | gateway req/s | gateway p99 | gateway/axum |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for i in "${!ROW_LABELS[@]}"; do
    mb=0; [ "$i" = 3 ] && mb=1
    for c in "${CONNS[@]}"; do
      row="| $((i + 1)). ${ROW_LABELS[$i]} | $c"
      for s in axum nginx; do
        row+=" | $(fmt_rps "${RPS[$i,$c,$s]:-}" "$mb") | $(fmt_p99 "${P99[$i,$c,$s]:-}")"
      done
      row+=" | $(ratio "${RPS[$i,$c,axum]:-}" "${RPS[$i,$c,nginx]:-}")"
      row+=" | $(fmt_rps "${RPS[$i,$c,gateway]:-}" "$mb") | $(fmt_p99 "${P99[$i,$c,gateway]:-}")"
      row+=" | $(ratio "${RPS[$i,$c,gateway]:-}" "${RPS[$i,$c,axum]:-}") |"
      echo "$row"
    done
  done
  echo
  echo "## Targets (every cell at 16 and 64 connections must meet the ratio)"
  echo
  # <row>|<min>|<numerator server>|<denominator server>|<text>
  for tgt in "0|0.6|axum|nginx|GETATTR >= 0.6x nginx HEAD" "2|0.6|axum|nginx|4 KiB range GET >= 0.6x nginx" \
    "3|0.5|axum|nginx|1 MiB GET >= 0.5x nginx throughput" \
    "all|0.85|gateway|axum|pingora-gateway ≥ 0.85× axum-app on every row"; do
    IFS='|' read -r rows min num den text <<<"$tgt"
    if ! on "$num" || ! on "$den"; then
      echo "- $text: not evaluated ($num or $den not in SERVERS)"
      continue
    fi
    [ "$rows" = all ] && rows=${!ROW_LABELS[*]}
    met=yes; got=(); failed=()
    for i in $rows; do
      for c in 16 64; do
        rt=$(ratio "${RPS[$i,$c,$num]:-}" "${RPS[$i,$c,$den]:-}")
        got+=("$rt at $c")
        if ! awk -v r="$rt" -v m="$min" 'BEGIN { exit !(r != "-" && r + 0 >= m + 0) }'; then
          met=no; failed+=("row $((i + 1)) (${ROW_LABELS[$i]%% (*}) at $c: $rt")
        fi
      done
    done
    if [ "$text" != "${text%every row}" ]; then # many cells: name the failing ones
      if [ $met = yes ]; then
        echo "- $text: **met** (lowest ratio $(printf '%s\n' "${got[@]}" | sort -n | head -1))"
      else
        echo "- $text: **NOT met** in ${#failed[@]} of ${#got[@]} cells ($(IFS=';'; echo "${failed[*]}" | sed 's/;/; /g'))"
      fi
    else
      echo "- $text: **$( [ $met = yes ] && echo met || echo 'NOT met')** (ratio $(IFS=,; echo "${got[*]}" | sed 's/,/, /g'))"
    fi
  done
  echo
  echo "## Checks"
  echo
  echo "Every warm-up and measured run, on every server: expected status on each response"
  echo "(response() hook; the 1 MiB GET measured runs skip the hook, which halves wrk's"
  echo "throughput, and rely on the warm-up, wrk's >=400 count and bytes per response), no"
  echo "'Connection: close', no socket errors, no server-side closes (TIME-WAIT on the server"
  echo "port), bytes read consistent with the expected body size. Before the load, curl checks"
  echo "each server once: statuses, bytes (the PUT's on disk too), READDIR listings equal, and"
  echo "two requests reusing one connection."
  echo
  if [ ${#PROBLEMS[@]} -eq 0 ]; then
    echo "All checks passed: every connection was kept alive and every response was as expected."
  else
    echo "**${#PROBLEMS[@]} problem(s):**"
    echo
    printf -- '- %s\n' "${PROBLEMS[@]}"
  fi
  # The servers run with RUST_LOG=warn / error_log warn: anything they logged,
  # start-up banners left out, same messages counted once (timestamps, colours
  # and nginx's "*N" connection numbers stripped).
  logs=()
  if on axum; then logs+=("axum-app|$TMP/axum-app.log"); fi
  if on gateway; then logs+=("pingora-gateway|$TMP/gateway/gateway.log"); fi
  if on nginx; then logs+=("nginx|$TMP/nginx/error.log"); fi
  echo
  echo "## Server logs (warnings and errors)"
  echo
  for l in "${logs[@]}"; do
    IFS='|' read -r who f <<<"$l"
    sed -E 's/\x1b\[[0-9;]*m//g' "$f" 2>/dev/null |
      grep -vE '^(SpockFS (at|serving) |mount it with: |  \(or with the original C client: )' >"$f.filtered" || true
    n=$(grep -c . "$f.filtered" || true)
    if [ "${n:-0}" = 0 ]; then
      echo "- $who: nothing logged"
    else
      echo "- $who: $n line(s); most frequent messages (count, message):"
      echo
      echo '```'
      sed -E 's/^[0-9]{4}-[0-9-]+T[0-9:.]+Z +//; s/^[0-9\/]+ [0-9:]+ //; s/\*[0-9]+ //' "$f.filtered" |
        sort | uniq -c | sort -rn | head -5 | cut -c1-300
      echo '```'
    fi
  done
} | tee "$OUT"
log "saved $OUT"

[ ${#PROBLEMS[@]} -eq 0 ] || { log "WARNING: some checks failed, see above"; exit 1; }
