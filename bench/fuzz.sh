#!/usr/bin/env bash
# A longer fuzzing run of every cargo-fuzz target (fuzz/), one after
# another with one libFuzzer job each (the machine has 2 shared cores),
# then each target's corpus is re-minimized into fuzz/corpus/<target>/.
#
#   bench/fuzz.sh                 # 210 s per target, every target
#   bench/fuzz.sh 60 path range   # 60 s, two targets
#   MERGE=0 bench/fuzz.sh         # do not touch fuzz/corpus/
#
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Prints one Markdown table row per target: executions, exec/s, and
# libFuzzer's final cov:/ft: figures; full logs in fuzz/corpus-run/<t>.log.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-210}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(path headers range listing client engine_mem engine_local)
fi
cargo +nightly fuzz build -O
echo "| target | seconds | executions | exec/s | cov | ft | corpus (run) | new crashes |"
echo "|---|---|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
    run=corpus-run/$t
    mkdir -p "$run" "artifacts/$t"
    log=corpus-run/$t.log
    # New inputs go to the scratch dir; the committed corpus only seeds.
    set +e
    cargo +nightly fuzz run -O "$t" "$run" "corpus/$t" -- \
        -max_total_time="$secs" -jobs=1 -workers=1 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    # With -jobs, libFuzzer runs the worker as a child logging to fuzz-0.log.
    if [[ -f fuzz-0.log ]]; then
        cat fuzz-0.log >>"$log"
        rm -f fuzz-0.log
    fi
    set -e
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    [[ -n $done_line ]] || done_line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log" | tail -1)
    eps=$(sed -nE 's/.*exec\/s: *([0-9]+).*/\1/p' <<<"$done_line")
    cov=$(sed -nE 's/.*cov: *([0-9]+).*/\1/p' <<<"$done_line")
    ft=$(sed -nE 's/.*ft: *([0-9]+).*/\1/p' <<<"$done_line")
    corp=$(sed -nE 's/.*corp: *([0-9]+\/[0-9a-zA-Z]+).*/\1/p' <<<"$done_line")
    crashes=$(find "artifacts/$t" -type f | wc -l)
    echo "| $t | $secs | ${execs:-?} | ${eps:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes (rc $rc) |"
    if [[ ${MERGE:-1} == 1 ]]; then
        # Re-minimize the committed corpus: seeds and crash-* regressions
        # stay; of everything else (old corpus and this run's finds), the
        # ${KEEP:-30} inputs adding the most coverage edges, picked greedily
        # from libFuzzer's merge control file.
        tmp=$(mktemp -d)
        cargo +nightly fuzz run -O "$t" "$tmp" "corpus/$t" "$run" -- \
            -merge=1 -merge_control_file="corpus-run/$t.ctl" -timeout=10 \
            >"corpus-run/$t.merge.log" 2>&1 || true
        python3 minimize.py "corpus-run/$t.ctl" "corpus/$t" "${KEEP:-30}" >&2
        rm -rf "$tmp"
    fi
done
