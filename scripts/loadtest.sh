#!/usr/bin/env bash
# loadtest.sh: one command to measure this machine (or a change) with
# smtpload against smtpsink.
#
# Builds the workspace in release mode, starts smtpsink on a free 127.0.0.1
# port, runs a standard set of smtpload workloads against it, one after the
# other, each for WARMUP + DURATION seconds (the warm-up is not measured),
# and prints one line per workload: messages/s, MB/s, p50/p99 message
# latency (MAIL to the final reply; for the open-loop run, from each
# message's due time), errors, and smtpsink's CPU per 10k messages (from
# /proc/PID/stat). Stops smtpsink by PID at the end and shows its final
# statistics.
#
# Workloads (1 KiB messages unless said; smtpload options before HOST:PORT):
#   1conn      -c 1                          1 connection, pipelined
#   50conn     -c 50                         50 connections, pipelined
#   50nopipe   -c 50 --no-pipelining         50 connections, lock-step
#   newconn    -c 50 --per-connection 1      a new connection per message
#   bdat16     -c 50 --bdat --window 16      BDAT, 16 transactions in flight
#   1mib       -c 10 -s 1048576              1 MiB messages
#   rcpt10     -c 50 -r 10                   10 recipients per message
#   rate       -c 20 --rate RATE             open loop at RATE msgs/s
#
# Usage: scripts/loadtest.sh
# Environment:
#   DURATION=S        measured seconds per workload (default 5)
#   WARMUP=S          unmeasured seconds before each (default 1)
#   RATE=N            msgs/s of the open-loop run (default 10000)
#   RUN_TIMEOUT=S     upper bound for each run (default 300, at least
#                     DURATION+WARMUP+30)
#   BUILD_RETRIES=N   retry a failing build N times, BUILD_RETRY_WAIT s apart
#
# The report is also written to results/loadtest-<date>.txt, with smtpload's
# JSON reports in results/loadtest-<date>/. Loopback only; every run is
# bounded; the script ends by itself.

set -euo pipefail

LIB_TAG=loadtest
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

: "${DURATION:=5}"
: "${WARMUP:=1}"
: "${RATE:=10000}"
require_uint DURATION WARMUP RATE RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT
((DURATION >= 1)) || die "DURATION must be at least 1"
((RATE >= 1)) || die "RATE must be at least 1"
((RUN_TIMEOUT >= DURATION + WARMUP + 30)) || RUN_TIMEOUT=$((DURATION + WARMUP + 30))

ensure_tools
build_release
make_work loadtest
STAMP=$(date +%Y%m%d-%H%M%S)
OUT_DIR=$RESULTS_DIR/loadtest-$STAMP
REPORT=$RESULTS_DIR/loadtest-$STAMP.txt
mkdir -p -- "$OUT_DIR"

NAMES=(1conn 50conn 50nopipe newconn bdat16 1mib rcpt10 rate)
declare -A OPTS=(
    [1conn]="-c 1"
    [50conn]="-c 50"
    [50nopipe]="-c 50 --no-pipelining"
    [newconn]="-c 50 --per-connection 1"
    [bdat16]="-c 50 --bdat --window 16"
    [1mib]="-c 10 -s 1048576"
    [rcpt10]="-c 50 -r 10"
    [rate]="-c 20 --rate $RATE"
)

read -r port < <(free_ports 1)
start_server smtpsink "$port"
server_caps smtpsink
PID=${SERVER_PID[smtpsink]}

printf 'workload\topts\trc\tserver_ticks\tjson\n' >"$WORK/runs.tsv"
for name in "${NAMES[@]}"; do
    json=$OUT_DIR/$name.json
    read -r -a opts <<<"${OPTS[$name]}"
    log "$name: smtpload ${OPTS[$name]} -d $((DURATION + WARMUP)) --warmup $WARMUP"
    c0=$(cpu_ticks "$PID")
    rc=0
    timeout "$RUN_TIMEOUT" "$SMTPLOAD_BIN" -q --json "$json" "${opts[@]}" \
        -d $((DURATION + WARMUP)) --warmup "$WARMUP" "127.0.0.1:$port" >"$WORK/$name.log" 2>&1 || rc=$?
    kill -0 "$PID" 2>/dev/null || die "smtpsink died during $name: $(tail -n 5 "$WORK/smtpsink.err")"
    c1=$(cpu_ticks "$PID")
    ((rc == 0)) || log "$name: smtpload exit $rc: $(tail -n 3 "$WORK/$name.log" | tr '\n' ' ')"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "${OPTS[$name]}" "$rc" "$((c1 - c0))" "$json" >>"$WORK/runs.tsv"
    sleep 0.5
done

stop_server smtpsink

{
    printf 'smtpload against smtpsink (%s), %ss per workload after %ss warm-up\n' \
        "$(server_desc smtpsink)" "$DURATION" "$WARMUP"
    machine_md | sed 's/^- /  /'
    printf '\n'
    python3 - "$WORK/runs.tsv" "$CLK_TCK" <<'PY'
import csv, json, sys

def us(v):
    if v is None:
        return "-"
    return f"{v}us" if v < 1000 else f"{v / 1000:.2f}ms" if v < 1e6 else f"{v / 1e6:.2f}s"

clk = int(sys.argv[2])
print(f"{'workload':<9} {'msgs/s':>10} {'MB/s':>8} {'p50':>9} {'p99':>9} {'errors':>7} {'srv CPU s/10k':>13}  smtpload options")
for r in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    try:
        j = json.load(open(r["json"]))
    except Exception:
        print(f"{r['workload']:<9} {'FAILED (exit ' + r['rc'] + ', no report)':>59}  {r['opts']}")
        continue
    acc = j["messages"]["accepted"]
    lat = j.get("latency", {}).get("message", {})
    errs = sum(int(e.get("count", 1)) for e in j.get("errors") or []) + int(j["messages"].get("failed", 0))
    # Server CPU covers the warm-up too: divide by every message started.
    started = j["messages"].get("started", acc) or 1
    cpu = int(r["server_ticks"]) / clk / started * 1e4
    flag = "" if r["rc"] == "0" and not j.get("aborted") else f"  [exit {r['rc']}, aborted: {j.get('aborted')}]"
    print(f"{r['workload']:<9} {j['throughput']['messages_per_s']:>10.0f} {j['throughput']['mb_per_s']:>8.1f} "
          f"{us(lat.get('p50_us')):>9} {us(lat.get('p99_us')):>9} {errs:>7} {cpu:>13.3f}  {r['opts']}{flag}")
PY
    printf '\nsmtpsink final statistics:\n'
    sed 's/^/  /' "$WORK/smtpsink.out"
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT (smtpload JSON reports in $OUT_DIR/)"
