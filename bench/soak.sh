#!/usr/bin/env bash
# Soak test: 64 concurrent keep-alive clients issuing every SpockFS method
# against the axum app and the Pingora gateway (release binaries, separate
# processes), each for SOAK_SECS seconds, then the final tree checked
# against the clients' models (tests/tests/soak.rs). Writes
# bench/results/soak-<date>.md.
#
#   bench/soak.sh                    # 120 s per server
#   SOAK_SECS=30 bench/soak.sh
#   SERVERS=axum bench/soak.sh       # one server (axum, gateway)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SOAK_SECS:-120}
servers=${SERVERS:-axum,gateway}
stamp=$(date +%Y%m%d-%H%M%S)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
out=bench/results/soak-$stamp.md
rows=$(mktemp)
log=$(mktemp)

cargo test --release --locked -p spockfs-tests --test soak --no-run
# Touched so that this build relinks them: with a target dir shared by
# several checkouts, an up-to-date build would leave in place whatever
# another checkout linked last.
touch examples/axum-app/src/main.rs examples/pingora-gateway/src/main.rs
cargo build --release --locked -p axum-app -p pingora-gateway --bins
# The servers run from a private copy: another checkout sharing the target
# dir (CARGO_TARGET_DIR) cannot replace them mid-run.
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bins=$(mktemp -d)
trap 'rm -rf "$rows" "$log" "$bins"' EXIT
cp "$target/release/axum-app" "$target/release/pingora-gateway" "$bins/"
status=0
for s in ${servers//,/ }; do
    SPOCKFS_BIN_DIR=$bins SOAK_SECS=$secs SOAK_REPORT=$rows cargo test --release --locked \
        -p spockfs-tests --test soak -- --exact "soak_$s" --nocapture 2>&1 | tee -a "$log" || status=1
done

{
    echo "# Soak, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`SOAK_SECS=$secs SERVERS=$servers bench/soak.sh\` (commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ', dirty'))"
    echo "on $(nproc) cores (shared with other work), load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "64 clients (one keep-alive connection each), every SpockFS method, own subtrees"
    echo "checked exactly and a shared subtree checked for whole versions; RSS/fds/threads"
    echo "are the maxima of the first and last window (60 s, or half the run)."
    echo
    echo "| server | duration | requests | req/s | expected errors | unexpected | RSS first / last | fds first / last | threads first / last | server idle | TIME_WAIT at end |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    cat "$rows"
    echo
    echo '```'
    grep -E '^soak |^  unexpected|^test soak_|test result|panicked|RSS grew|fds grew' "$log" || true
    echo '```'
} > "$out"
echo "wrote $out"
exit $status
