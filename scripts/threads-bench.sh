#!/usr/bin/env bash
# threads-bench.sh: messages/s of smtpsink --threads N for several N, side
# by side, so the scaling of the shared-nothing loops can be read off one
# table (and the same script rerun on a machine with more cores).
#
# For each round, for each N in THREADS: start `smtpsink --threads N` on a
# free 127.0.0.1 port, send MESSAGES messages of SIZE bytes over CONNS
# pipelined smtpload connections (a new connection every PER messages, so
# the kernel's SO_REUSEPORT hashing has connections to spread), stop it.
# N values alternate within each round, so a slow moment of a shared
# machine does not fall on one N only. Prints, per N: median msgs/s over
# the rounds (min-max), smtpsink's CPU seconds per 10k messages, and the
# connections each loop took in the last round.
#
# Usage: scripts/threads-bench.sh
# Environment:
#   THREADS="1 2"     thread counts (default: 1 2 4 ... up to the CPU count)
#   MESSAGES=N        messages per run (default 300000)
#   CONNS=N           smtpload connections (default 50)
#   PER=N             messages per connection (default 1000)
#   SIZE=BYTES        message size (default 1024)
#   ROUNDS=N          rounds (default 3)
#   LOAD_THREADS=N    smtpload --threads N (default: one loop)
#   SMTPSINK_BIN/SMTPLOAD_BIN   use these instead of building
#
# smtpload runs on the same machine: with few cores it competes with the
# sink's loops for them, which caps what more loops can show.

set -euo pipefail

ENV_SMTPSINK_BIN=${SMTPSINK_BIN:-}
ENV_SMTPLOAD_BIN=${SMTPLOAD_BIN:-}
LIB_TAG=threads-bench
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

: "${MESSAGES:=300000}" "${CONNS:=50}" "${PER:=1000}" "${SIZE:=1024}"
require_uint MESSAGES CONNS PER SIZE ROUNDS RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT
if [[ -z ${THREADS:-} ]]; then
    THREADS=1
    for ((n = 2; n <= $(nproc); n *= 2)); do THREADS+=" $n"; done
fi
read -r -a NS <<<"$THREADS"
((QUICK)) && MESSAGES=$((MESSAGES / 10))

use_binaries "$ENV_SMTPSINK_BIN" "$ENV_SMTPLOAD_BIN"
FAILED_RUNS=0
make_work threads-bench
results_files threads-bench
ARGS="-c $CONNS -m $MESSAGES -s $SIZE --per-connection $PER${LOAD_THREADS:+ --threads $LOAD_THREADS}"

for ((round = 1; round <= ROUNDS; round++)); do
    for n in "${NS[@]}"; do
        key=t$n
        read -r port < <(free_ports 1)
        SMTPSINK_ARGS="--threads $n" start_server smtpsink "$port" "$key"
        log "round $round, --threads $n: smtpload $ARGS"
        gen_run smtpload "$MESSAGES" "$ARGS" "$key" "$WORK/$key-$round.log"
        if ((!RUN_OK)); then
            FAILED_RUNS=$((FAILED_RUNS + 1))
            note_failed_run "round $round, --threads $n" "$WORK/$key-$round.log"
        fi
        stop_server "$key"
        loops=$(sed -nE 's/^[[:space:]]*loops[[:space:]]+([0-9 ]+)\(.*/\1/p' "$WORK/$key.out" | xargs)
        raw "$n" "$round" "$RUN_OK" "$RUN_RATE" "$RUN_TICKS" "${loops:-all}"
    done
done
cp -- "$RAW" "$TSV"

# shellcheck disable=SC2016 # backticks are Markdown code spans
{
    printf '# smtpsink --threads N (%s)\n\n' "$(date -u +%Y-%m-%d)"
    machine_md
    printf -- '- smtpload %s against `smtpsink --threads N`, %s rounds\n\n' "$ARGS" "$ROUNDS"
    python3 - "$RAW" "$MESSAGES" "$CLK_TCK" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
msgs, clk = int(sys.argv[2]), int(sys.argv[3])
print("| threads | msgs/s median | min-max | sink CPU s/10k msgs | connections per loop (last round) |")
print("|---:|---:|---:|---:|---|")
for n in dict.fromkeys(r[0] for r in rows):
    ok = [r for r in rows if r[0] == n and r[2] == "1"]
    if not ok:
        print(f"| {n} | failed | | | |")
        continue
    rates = [float(r[3]) for r in ok]
    cpu = statistics.median(int(r[4]) / clk / msgs * 1e4 for r in ok)
    print(f"| {n} | {statistics.median(rates):.0f} | {min(rates):.0f}-{max(rates):.0f} | {cpu:.3f} | {ok[-1][5]} |")
PY
    printf '\n- Every run was bounded by `timeout %s`; it counts only if smtpload exited 0 with all messages accepted.\n' "$RUN_TIMEOUT"
    printf -- '- %s failed run(s).\n' "$FAILED_RUNS"
    if [[ -s $WORK/genlogs.md ]]; then
        printf '\n## Output of failed runs\n\n'
        cat "$WORK/genlogs.md"
    fi
    for n in "${NS[@]}"; do
        printf '\n## smtpsink --threads %s, final statistics of the last round\n\n```\n' "$n"
        cat "$WORK/t$n.out"
        printf '```\n'
    done
} >"$REPORT"
cat "$REPORT"
log "report: $REPORT"
