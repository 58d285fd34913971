#!/usr/bin/env bash
# fuzz.sh: runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer, nightly)
# for a bounded time each and prints, per target, the executions, the
# coverage reached (libFuzzer's edges "cov" and features "ft") and the
# findings. CI does not run it (too slow); the normal test suite replays
# the kept corpora (tests/fuzz_corpus.rs).
#
# Each target starts from its kept corpus (fuzz/corpus/NAME, small,
# minimised, in the repo) and the SMTP dictionary (fuzz/smtp.dict), works in
# fuzz/work/NAME (not in the repo), and with KEEP=1 its kept corpus is
# replaced by a minimised merge of the two at the end (libFuzzer -merge=1).
# A finding is left in fuzz/artifacts/NAME/ and the script exits 1.
#
# Usage: scripts/fuzz.sh [SECONDS]        (default 60 per target)
# Environment:
#   TARGETS="session client"   only these (default: all of fuzz/fuzz_targets)
#   JOBS=N                     targets run side by side (default: CPU count)
#   KEEP=1                     minimise the corpora back into fuzz/corpus,
#                              capped at CAP inputs each (default 150, the
#                              smallest; seeds always kept): the repo keeps a
#                              sample, fuzz/work the whole
#   REPORT=FILE                also write the table there
#
# Needs a nightly toolchain (`rustup toolchain list`) and cargo-fuzz
# (`cargo install cargo-fuzz`); installs neither.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/../fuzz"

SECS=${1:-60}
JOBS=${JOBS:-$(nproc)}
: "${TARGETS:=$(basename -s .rs fuzz_targets/*.rs | tr '\n' ' ')}"
rustup toolchain list | grep -q '^nightly' || { echo "fuzz.sh: no nightly toolchain" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is not installed" >&2; exit 2; }

# No sanitizer: the crate forbids unsafe code, and without ASan's
# bookkeeping the same time runs 2-3x the executions.
cargo +nightly fuzz build -O -s none >&2
mkdir -p work logs

run_one() {
    local t=$1
    mkdir -p "work/$t" "corpus/$t" "artifacts/$t"
    cp -n "corpus/$t"/* "work/$t"/ 2>/dev/null || true
    cp -n "regressions/$t"/* "work/$t"/ 2>/dev/null || true
    # -rss_limit_mb: the targets hold a session or two, never more.
    # -max_len: a session mapped onto SMTP's alphabet grows ~30x; longer
    # inputs cost time and reach nothing new.
    timeout $((SECS + 120)) cargo +nightly fuzz run -O -s none "$t" "work/$t" -- \
        -max_total_time="$SECS" -dict=smtp.dict -print_final_stats=1 -max_len=2048 \
        -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
}

pids=()
status=0
for t in $TARGETS; do
    run_one "$t" &
    pids+=($!)
    if ((${#pids[@]} >= JOBS)); then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done

if [[ ${KEEP:-0} == 1 ]]; then
    for t in $TARGETS; do
        rm -rf "work/$t.min" && mkdir -p "work/$t.min"
        cargo +nightly fuzz run -O -s none "$t" "work/$t.min" "corpus/$t" "work/$t" -- -merge=1 \
            >"logs/$t.merge.log" 2>&1
        cp -n "corpus/$t"/seed-* "work/$t.min"/ 2>/dev/null || true
        # The smallest CAP of the rest: a sample small enough for the repo.
        find "work/$t.min" -type f ! -name 'seed-*' -printf '%s %p\n' | sort -n |
            tail -n +$((${CAP:-150} + 1)) | cut -d' ' -f2- | xargs -r rm -f
        rm -rf "corpus/$t" && mv "work/$t.min" "corpus/$t"
    done
fi

table() {
    echo "| target | seconds | executions | exec/s | cov (edges) | ft (features) | kept corpus | findings |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    local total=0
    for t in $TARGETS; do
        local log="logs/$t.log" execs cov ft findings kept
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || echo 0)
        ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || echo 0)
        findings=$(find "artifacts/$t" -type f | wc -l)
        kept=$(find "corpus/$t" -type f | wc -l)
        execs=${execs:-0}
        total=$((total + execs))
        echo "| $t | $SECS | $execs | $((execs / SECS)) | $cov | $ft | $kept | $findings |"
    done
    echo
    echo "Total executions: $total"
}
table | tee "${REPORT:-/dev/null}"
exit "$status"
