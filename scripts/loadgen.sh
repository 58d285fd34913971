#!/usr/bin/env bash
# loadgen.sh: benchmark the load GENERATORS smtpload (this workspace) and
# Postfix's smtp-source against each other, side by side.
#
# Two sinks run at once, each on its own free 127.0.0.1 port: Postfix's
# smtp-sink and smtpsink. Every generator case is run against both sinks;
# runs alternate between generators (rotated every round) and the sink order
# is swapped every round to cancel drift. For each run the script records:
#   - generator wall time (bash `time`)      -> messages/s
#   - generator CPU user+sys (bash `time`)   -> generator CPU seconds per 10k messages
#   - sink CPU (utime+stime, /proc/PID/stat) -> server CPU seconds per 10k messages
# A run counts only when it succeeded: smtp-source exit 0; smtpload exit 0,
# and its JSON report shows every message accepted, no errors, not aborted.
# It reports medians over rounds (min-max as noise) and smtpload/smtp-source
# ratios as Markdown: printed on stdout and written to
# results/loadgen-<date>.md (raw per-run data in results/loadgen-<date>.tsv).
#
# Workloads (1 KiB messages, 50 connections; M, M2, M3 below):
#   reuse    smtp-source -s 50 -m M -l 1024 -d
#            smtpload    -c 50 -m M -s 1024                  (pipelined when offered)
#            smtpload    -c 50 -m M -s 1024 --no-pipelining  (lock-step, like smtp-source)
#   newconn  smtp-source -s 50 -m M2 -l 1024                 (a new connection per message)
#            smtpload    -c 50 -m M2 -s 1024 --per-connection 1
#   bdat     smtpload    -c 50 -m M3 -s 1024 --bdat --window 16
#            (smtp-source has no equivalent; runs only against sinks that
#            offer CHUNKING in their EHLO reply -- Postfix's smtp-sink does not)
#
# Usage: scripts/loadgen.sh
# Environment:
#   ROUNDS=N          alternating rounds (default 3)
#   QUICK=1           divide every message count by 10 (smoke run)
#   REUSE_MSGS=N      M  (default 100000)
#   NEWCONN_MSGS=N    M2 (default 30000; lower it if ephemeral ports run out)
#   BDAT_MSGS=N       M3 (default 500000)
#   RUN_TIMEOUT=S     upper bound for each generator run (default 300)
#   BUILD_RETRIES=N   retry a failing `cargo build --release --workspace` N
#                     times, BUILD_RETRY_WAIT seconds apart (defaults 2 and 60)
#
# Installs Debian's postfix package when smtp-sink/smtp-source are missing
# (without leaving a Postfix master daemon running), builds the workspace with
# `cargo build --release --workspace`, and stops only the server processes it
# started. Loopback only; every run is bounded; the script ends by itself.

set -euo pipefail

LIB_TAG=loadgen
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

REUSE_MSGS=${REUSE_MSGS:-100000}
NEWCONN_MSGS=${NEWCONN_MSGS:-30000}
BDAT_MSGS=${BDAT_MSGS:-500000}
SETTLE_S=1

require_uint ROUNDS QUICK REUSE_MSGS NEWCONN_MSGS BDAT_MSGS RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((RUN_TIMEOUT >= 1)) || die "RUN_TIMEOUT must be at least 1"

ensure_postfix
ensure_tools
build_release

make_work loadgen
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p -- "$RESULTS_DIR"
REPORT=$RESULTS_DIR/loadgen-$STAMP.md
TSV=$RESULTS_DIR/loadgen-$STAMP.tsv

# -------------------------------------------------------------- workloads ----

div=1
if ((QUICK)); then div=10; fi
M=$((REUSE_MSGS / div))
M2=$((NEWCONN_MSGS / div))
M3=$((BDAT_MSGS / div))
((M >= 1 && M2 >= 1 && M3 >= 1)) || die "message counts must stay >= 1 after QUICK"

# One entry per generator case: workload, generator label, messages, options.
# Generators whose label starts with "smtpload" run $SMTPLOAD_BIN (with -q and
# --json added); "smtp-source" runs $SOURCE.
C_WL=(reuse reuse reuse newconn newconn bdat)
C_GEN=(smtp-source smtpload smtpload-nopipe smtp-source smtpload smtpload-bdat)
C_MSGS=("$M" "$M" "$M" "$M2" "$M2" "$M3")
C_ARGS=(
    "-s 50 -m $M -l 1024 -d"
    "-c 50 -m $M -s 1024"
    "-c 50 -m $M -s 1024 --no-pipelining"
    "-s 50 -m $M2 -l 1024"
    "-c 50 -m $M2 -s 1024 --per-connection 1"
    "-c 50 -m $M3 -s 1024 --bdat --window 16"
)
WL_NAMES=(reuse newconn bdat)
WL_DESC=(
    "1 KiB, 50 connections, reused"
    "1 KiB, 50 concurrent, a new connection per message"
    "1 KiB, 50 connections, BDAT, 16 transactions in flight per connection"
)

# ---------------------------------------------------------------- servers ----

SERVERS=(smtp-sink smtpsink)
read -r -a ports < <(free_ports 2)
for i in "${!SERVERS[@]}"; do
    start_server "${SERVERS[i]}" "${ports[i]}"
done
# Which sinks offer PIPELINING / CHUNKING (the bdat case needs CHUNKING).
for server in "${SERVERS[@]}"; do
    server_caps "$server"
done
SKIPPED=()
FAILED_RUNS=0

# run_one ROUND CASE_INDEX SERVER [record]: one generator run.
run_one() {
    local round=$1 ci=$2 server=$3 record=${4:-record}
    local wl=${C_WL[ci]} gen=${C_GEN[ci]} msgs=${C_MSGS[ci]} genlog
    genlog=$WORK/gen-$round-$wl-$gen-$server.log
    gen_run "$gen" "$msgs" "${C_ARGS[ci]}" "$server" "$genlog"
    if [[ $record == record ]]; then
        ((RUN_OK)) || FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            "$round" "$wl" "$gen" "$server" "$msgs" "$RUN_RC" "$RUN_OK" "$RUN_WALL" "$RUN_USR" "$RUN_SYS" \
            "$RUN_TICKS" "$RUN_RATE" "$RUN_NOTE" >>"$TSV"
        if ((!RUN_OK)); then
            note_failed_run "round $round, $wl, $gen -> $server (exit $RUN_RC, $RUN_NOTE)" "$genlog"
        fi
        log "$(python3 -c '
import sys
r, wl, gen, srv, m, w, u, s, t, clk = sys.argv[1:]
m, w = int(m), float(w)
print(f"round {r} {wl:<8} {gen:<16} -> {srv:<9} {m:>7} msgs {w:8.3f}s {m/max(w,1e-9):9.0f} msg/s"
      f"  gen {(float(u)+float(s))/m*1e4:.3f}  server {int(t)/int(clk)/m*1e4:.3f} CPU s/10k")
' "$round" "$wl" "$gen" "$server" "$msgs" "$RUN_WALL" "$RUN_USR" "$RUN_SYS" "$RUN_TICKS" "$CLK_TCK")"
    elif ((!RUN_OK)); then
        die "warm-up $wl/$gen against $server failed"
    fi
    sleep "$SETTLE_S"
}

# Case indices of workload WL that run against SERVER.
cases_for() {
    local wl=$1 server=$2 ci
    for ci in "${!C_WL[@]}"; do
        [[ ${C_WL[ci]} == "$wl" ]] || continue
        if [[ $wl == bdat ]] && ! offers "$server" CHUNKING; then continue; fi
        echo "$ci"
    done
}

for server in "${SERVERS[@]}"; do
    if [[ -z $(cases_for bdat "$server") ]]; then
        SKIPPED+=("bdat against $server: it does not offer CHUNKING in its EHLO reply (offers: ${CAPS[$server]:-none of PIPELINING/CHUNKING})")
        log "skipping bdat against $server (no CHUNKING)"
    fi
done

# ---------------------------------------------------------------- measure ----

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
printf 'round\tworkload\tgenerator\tserver\tmsgs\trc\tok\twall_s\tgen_user_s\tgen_sys_s\tserver_ticks\tgen_reported_msgs_per_s\tnote\n' >"$TSV"

# Unrecorded warm-up: a tenth of the reuse workload, each generator, each sink.
WARM_MSGS=$((M / 10 > 0 ? M / 10 : 1))
NCASES=${#C_WL[@]}
C_WL+=(warmup warmup)
C_GEN+=(smtp-source smtpload)
C_MSGS+=("$WARM_MSGS" "$WARM_MSGS")
C_ARGS+=("-s 50 -m $WARM_MSGS -l 1024 -d" "-c 50 -m $WARM_MSGS -s 1024")
for server in "${SERVERS[@]}"; do
    log "warm-up: $WARM_MSGS messages to $server from each generator"
    run_one 0 "$NCASES" "$server" norecord
    run_one 0 $((NCASES + 1)) "$server" norecord
done
C_WL=("${C_WL[@]:0:NCASES}")
C_GEN=("${C_GEN[@]:0:NCASES}")
C_MSGS=("${C_MSGS[@]:0:NCASES}")
C_ARGS=("${C_ARGS[@]:0:NCASES}")

START_S=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=(smtp-sink smtpsink); else order=(smtpsink smtp-sink); fi
    for wl in "${WL_NAMES[@]}"; do
        for server in "${order[@]}"; do
            mapfile -t cis < <(cases_for "$wl" "$server")
            n=${#cis[@]}
            ((n)) || continue
            # Rotate the generator order by one position every round.
            for ((k = 0; k < n; k++)); do
                run_one "$round" "${cis[(k + round - 1) % n]}" "$server"
            done
        done
    done
done
ELAPSED_S=$((SECONDS - START_S))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Stop the servers now: smtpsink prints its final statistics on SIGTERM.
stop_server smtpsink
stop_server smtp-sink

# ----------------------------------------------------------------- report ----

smtpload_ver=$("$SMTPLOAD_BIN" --version 2>/dev/null || echo smtpload)

# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# Load generators: smtpload vs Postfix smtp-source\n\n'
    printf '## Machine\n\n'
    machine_md
    printf -- '- load average before/after: %s / %s\n' "$LOAD_BEFORE" "$LOAD_AFTER"
    printf -- '- generators: %s; `smtp-source`; timeout %ss per run\n' "$smtpload_ver" "$RUN_TIMEOUT"
    printf -- '- sinks: `%s` (offers %s); `%s` (offers %s)\n' \
        "$(server_desc smtp-sink)" "${CAPS[smtp-sink]:-neither}" \
        "$(server_desc smtpsink)" "${CAPS[smtpsink]:-neither}"
    printf -- '- rounds: %s (generator order rotated, sink order swapped every round), QUICK=%s, measuring took %ss\n\n' \
        "$ROUNDS" "$QUICK" "$ELAPSED_S"
    printf '## Workloads\n\n| Workload | What | Generator | Command line (before HOST:PORT) |\n|---|---|---|---|\n'
    for wi in "${!WL_NAMES[@]}"; do
        for ci in "${!C_WL[@]}"; do
            [[ ${C_WL[ci]} == "${WL_NAMES[wi]}" ]] || continue
            if [[ ${C_GEN[ci]} == smtp-source ]]; then pre=smtp-source; else pre='smtpload -q --json F'; fi
            printf '| %s | %s | %s | `%s %s` |\n' "${WL_NAMES[wi]}" "${WL_DESC[wi]}" "${C_GEN[ci]}" "$pre" "${C_ARGS[ci]}"
        done
    done
    printf '\n'
    python3 - "$TSV" "$CLK_TCK" <<'PY'
import csv, statistics, sys

tsv, clk = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
order = []   # (workload, generator, server) in first-seen order, sorted below
runs = {}    # key -> {round: (msgs/s, gen CPU s/10k, server CPU s/10k, reported msgs/s)}
tries = {}
for r in rows:
    key = (r["workload"], r["generator"], r["server"])
    if key not in tries:
        order.append(key)
    tries[key] = tries.get(key, 0) + 1
    runs.setdefault(key, {})
    if r["ok"] != "1":
        continue
    msgs, wall = int(r["msgs"]), float(r["wall_s"])
    gen = float(r["gen_user_s"]) + float(r["gen_sys_s"])
    srv = int(r["server_ticks"]) / clk
    rep = float(r["gen_reported_msgs_per_s"]) if r["gen_reported_msgs_per_s"] not in ("", "-") else None
    runs[key][r["round"]] = (msgs / max(wall, 1e-9), gen / msgs * 1e4, srv / msgs * 1e4, rep)

WL = ["reuse", "newconn", "bdat"]
GEN = ["smtp-source", "smtpload", "smtpload-nopipe", "smtpload-bdat"]
SRV = ["smtp-sink", "smtpsink"]
order.sort(key=lambda k: (WL.index(k[0]), SRV.index(k[2]), GEN.index(k[1])))

def stat(key, i):
    v = [x[i] for x in runs.get(key, {}).values() if x[i] is not None]
    return (statistics.median(v), min(v), max(v)) if v else None

def cell(t, spec):
    if t is None:
        return "n/a"
    return f"{format(t[0], spec)} ({format(t[1], spec)}–{format(t[2], spec)})"

print("## Results (median over rounds, min–max in parentheses)\n")
print("msgs/s = messages ÷ wall seconds of the generator process. CPU = user+sys seconds per 10k messages.\n")
print("| Workload | Generator | Sink | msgs/s | generator CPU s/10k | sink CPU s/10k | smtpload's own msgs/s | runs ok |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for k in order:
    n = len(runs.get(k, {}))
    rep = stat(k, 3)
    print(f"| {k[0]} | {k[1]} | {k[2]} | {cell(stat(k, 0), '.0f')} | {cell(stat(k, 1), '.3f')} "
          f"| {cell(stat(k, 2), '.3f')} | {'–' if rep is None else format(rep[0], '.0f')} | {n}/{tries[k]} |")

METRIC = {"gen": (1, "generator CPU/msg"), "rate": (0, "msgs/s"), "srv": (2, "sink CPU/msg")}

def ratio_row(num, den, metric, target=None):
    i, mname = METRIC[metric]
    a, b = stat(num, i), stat(den, i)
    med = a[0] / b[0] if a and b and b[0] else None
    ra, rb = runs.get(num, {}), runs.get(den, {})
    paired = [ra[r][i] / rb[r][i] for r in ra if r in rb and rb[r][i]]
    rng = f"{min(paired):.2f}–{max(paired):.2f}" if paired else "n/a"
    met = "–"
    if target is not None:
        op, val = target
        if med is None:
            met = "n/a"
        else:
            met = "yes" if (med <= val if op == "<=" else med >= val) else "**no**"
    tgt = "–" if target is None else f"{'≤' if target[0] == '<=' else '≥'} {target[1]:g}"
    name = lambda k: f"{k[1]} → {k[2]} ({k[0]})"
    medtxt = "n/a" if med is None else f"{med:.2f}"
    return f"| {mname} | {name(num)} | {name(den)} | {medtxt} | {rng} | {tgt} | {met} |"

def has(k):
    return k in tries

hdr = ("| Metric | Numerator | Denominator | ratio of medians | per-round | target | met |\n"
       "|---|---|---|---:|---:|---:|---:|")
print("\n## Headline ratios\n")
print("Per-round: range of the ratios of runs paired by round.\n")
print(hdr)
src_pf = ("reuse", "smtp-source", "smtp-sink")
print(ratio_row(("reuse", "smtpload", "smtp-sink"), src_pf, "gen", ("<=", 0.5)))
print(ratio_row(("reuse", "smtpload-nopipe", "smtp-sink"), src_pf, "gen", ("<=", 0.9)))
print(ratio_row(("reuse", "smtpload", "smtpsink"), src_pf, "rate", (">=", 3)))
print(ratio_row(("bdat", "smtpload-bdat", "smtpsink"), src_pf, "rate", (">=", 10)))

print("\n## Other combinations (context)\n")
print(hdr)
ctx = []
for s in SRV:
    src = ("reuse", "smtp-source", s)
    for g in ("smtpload", "smtpload-nopipe"):
        for m in ("gen", "rate", "srv"):
            if not (s == "smtp-sink" and m == "gen"):   # those are headline rows
                ctx.append((("reuse", g, s), src, m))
    for m in ("gen", "rate", "srv"):
        ctx.append((("newconn", "smtpload", s), ("newconn", "smtp-source", s), m))
    if has(("bdat", "smtpload-bdat", s)):
        for m in ("gen", "rate", "srv"):
            ctx.append((("bdat", "smtpload-bdat", s), src, m))
ctx.append((("reuse", "smtpload-nopipe", "smtpsink"), src_pf, "rate"))
ctx.append((("newconn", "smtpload", "smtpsink"), ("newconn", "smtp-source", "smtp-sink"), "rate"))
ctx.append((("reuse", "smtp-source", "smtpsink"), src_pf, "rate"))
seen = set()
for num, den, m in ctx:
    if (num, den, m) in seen or not has(num) or not has(den):
        continue
    if (num, den, m) == (("reuse", "smtpload", "smtpsink"), src_pf, "rate"):
        continue
    seen.add((num, den, m))
    print(ratio_row(num, den, m))
print()
PY
    printf '## Notes\n\n'
    printf -- '- Generator CPU is user+sys of the generator process (bash `time` around `timeout`); sink CPU is utime+stime of the sink process over the run (/proc/PID/stat, %s ticks/s). Both share the %s CPUs, so wall-clock rates are bounded by their sum.\n' "$CLK_TCK" "$(nproc)"
    printf -- '- msgs/s includes generator start-up and connection set-up; "smtpload'"'"'s own msgs/s" is the rate smtpload reports for its measured interval.\n'
    for s in "${SKIPPED[@]}"; do
        printf -- '- Skipped: %s.\n' "$s"
    done
    report_tail
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw data: $TSV"
