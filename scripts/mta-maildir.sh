#!/usr/bin/env bash
# mta-maildir.sh: a real MTA delivering into smtpsink --maildir, checked
# message by message:
#   smtpload -> Postfix (private instance) -> smtpsink --maildir DIR [--fsync]
# all on loopback, then scripts/maildir_check.py DIR.
#
# Postfix is set up exactly as scripts/mta-bench.sh sets it up (this script
# sources it with MTA_BENCH_SOURCED=1 for its setup: a private instance in
# its own PID and mount namespace with a private /etc, relaying everything to
# the sink by IP literal; a private network namespace with only loopback
# where the kernel allows). For each mode (MODES, default "nofsync fsync"):
#   1. a fresh Postfix (empty spool) and a fresh sink:
#      smtpsink --maildir DIR [--fsync] --json FILE
#   2. one bounded run: smtpload -c CONNS -m MSGS -s SIZE --summary FILE
#      (the run summary lists exactly which messages Postfix acknowledged)
#   3. the wait: until DIR/new holds as many files as Postfix acknowledged
#      and Postfix's queue is empty; or until the queue has stayed empty for
#      LINGER s with files still missing; at most DRAIN_TIMEOUT s
#   4. the sink is stopped (its final statistics), Postfix is stopped, and
#      maildir_check.py DIR --expect ACKNOWLEDGED --summary FILE checks that
#      every acknowledged message arrived exactly once, byte-exact (body
#      CRC), that every file begins with the prepended Return-Path, and that
#      nothing is left in tmp/.
#
# Usage: scripts/mta-maildir.sh
# Environment:
#   MSGS=N            messages per mode (default 2000; QUICK: 200)
#   CONNS=N           smtpload connections to Postfix (default 20)
#   SIZE=BYTES        message size (default 1024)
#   MODES="..."       of "nofsync fsync" (default both)
#   LINGER=S          seconds Postfix's queue must stay empty, with files
#                     still missing, before they count as lost (default 10)
#   DRAIN_TIMEOUT=S   most seconds to wait after the load (default 120)
#   RUN_TIMEOUT=S     bound of the smtpload run (default 300)
#   NETNS=0, SMTPSINK_BIN=P, SMTPLOAD_BIN=P, BUILD_RETRIES,
#   BUILD_RETRY_WAIT, KEEP_LOGS=1: as in mta-bench.sh
#
# Needs root (as mta-bench.sh). Writes results/mta-maildir-<date>.md (also
# printed) and results/mta-maildir-<date>.tsv. Exits 1 when a check failed.

set -euo pipefail

: "${MODES:=nofsync fsync}"
if [[ ${QUICK:-0} == 1 ]]; then : "${MSGS:=200}"; fi
: "${MSGS:=2000}"
read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
    [[ $m =~ ^(nofsync|fsync)$ ]] || { echo "mta-maildir: unknown mode '$m' in MODES (nofsync, fsync)" >&2; exit 1; }
done

# mta-bench.sh's setup, Postfix only, no baseline.
MTAS=postfix
BASELINE=0
MTA_BENCH_SOURCED=1
# shellcheck source=scripts/mta-bench.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/mta-bench.sh"
LIB_TAG=mta-maildir

require_uint MSGS
((MSGS >= 1)) || die "MSGS must be at least 1"
[[ -z ${SKIP[postfix]:-} ]] || die "postfix cannot be set up: ${SKIP[postfix]}"
[[ $IFACE == summary ]] || die "these binaries lack smtpload --summary"
"$SMTPSINK_BIN" --help 2>/dev/null | grep -q -- '--maildir' || die "$SMTPSINK_BIN has no --maildir"

CHECK_PY=$LIB_DIR/maildir_check.py
BASE=$RESULTS_DIR/mta-maildir-$STAMP     # KEEP_LOGS=1 keeps $BASE-logs
REPORT=$BASE.md
TSV=$BASE.tsv
mkdir -p -- "$WORK/steps"

FS_LINE=$(df -hT -- "$WORK" | awk 'NR == 2 { print $1 " (" $2 "), mounted on " $7 }')
printf 'mode\trc\taccepted\tfailed\taccepted_per_s\tacknowledged\tfiles\twait_end\tdrain_s\tsink_messages\tstored\tstore_errors\tfsync_batches\tmsgs_per_batch\tstore_p50_us\tstore_p99_us\tpostfix_sent\tpostfix_deferred\tintact\tcorrupted\tduplicates\tmissing\ttmp_files\tno_return_path\tcheck\n' >"$TSV"

declare -A CHECK_OUT=()
ANY_FAILED=0

# run_mode MODE: one fresh Postfix and sink, one run, the wait, the check.
run_mode() {
    local mode=$1 d=$WORK/steps/$1 spid rc=0 t1 last=0 end=cut quiet=0 deadline n q ack sink_args
    local port sink_port
    LAST_ARRIVAL=
    mkdir -p -- "$d"
    # A Postfix directory per mode: its maillog counts this mode's deliveries.
    MTA_DIR[postfix]=$WORK/postfix-$mode
    mkdir -p -- "${MTA_DIR[postfix]}"
    read -r sink_port port < <(free_ports 2)
    MTA_PORT[postfix]=$port
    sink_args=(--listen "127.0.0.1:$sink_port" --maildir "$d/maildir" --json "$d/sink.json")
    [[ $mode != fsync ]] || sink_args+=(--fsync)
    start_bg "$d/sink.out" "$d/sink.err" "${WRAP[@]}" "$SMTPSINK_BIN" "${sink_args[@]}"
    spid=$LAST_PID
    ns_greeting "sink ($mode)" "$spid" "$sink_port" "$d/sink.err" 10 || die "smtpsink did not start"
    mta_start postfix "$sink_port" || die "postfix did not start: $(tail -n 3 "${MTA_DIR[postfix]}/mta.err" 2>/dev/null)"

    log "$mode: smtpload -c $CONNS -m $MSGS -s $SIZE -> postfix -> smtpsink --maildir$([[ $mode != fsync ]] || echo ' --fsync')"
    setpriv --pdeathsig KILL timeout "$RUN_TIMEOUT" "${WRAP[@]}" "$SMTPLOAD_BIN" -q -c "$CONNS" -m "$MSGS" \
        -s "$SIZE" --summary "$d/summary.json" --json "$d/load.json" "127.0.0.1:$port" >"$d/load.out" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    ((rc == 0)) || log "smtpload exited $rc: $(tail -n 3 "$d/load.out" | tr '\n' ' ')"
    ack=$(python3 -c 'import json, sys
try: print(json.load(open(sys.argv[1]))["acknowledged"])
except Exception: print(-1)' "$d/summary.json")
    ((ack >= 0)) || log "no run summary from smtpload"

    # The wait: everything acknowledged in new/ and the queue empty; or the
    # queue empty for LINGER s; or DRAIN_TIMEOUT.
    deadline=$((SECONDS + DRAIN_TIMEOUT))
    while ((SECONDS < deadline)); do
        n=$(find "$d/maildir/new" -type f 2>/dev/null | wc -l)
        q=$(postfix_queue)
        ((n == last)) || { last=$n; LAST_ARRIVAL=$EPOCHREALTIME; }
        if ((q == 0)); then
            if ((ack >= 0 && n >= ack)); then end=complete; break; fi
            quiet=$((quiet + 1))
            if ((quiet > LINGER * 10)); then end=queue-empty; break; fi
        else
            quiet=0
        fi
        sleep 0.1
    done
    log "$mode: $n files in new/, postfix queue $q ($end)"
    stop_pid "$spid"
    mta_stop postfix

    local plog sent deferred
    plog=$(postfix_log)
    sent=$(grep -c 'status=sent' "$plog" 2>/dev/null || true)
    deferred=$(grep -cE 'status=(deferred|bounced)' "$plog" 2>/dev/null || true)
    cp -- "$plog" "$d/maillog" 2>/dev/null || true

    local cargs=("$d/maildir" --json "$d/check.json")
    if ((ack >= 0)); then cargs+=(--expect "$ack" --summary "$d/summary.json"); fi
    if python3 "$CHECK_PY" "${cargs[@]}" >"$d/check.out" 2>&1; then
        log "$mode: maildir_check OK"
    else
        ANY_FAILED=1
        log "$mode: maildir_check FAILED: $(tail -n 4 "$d/check.out" | tr '\n' ' ')"
    fi
    CHECK_OUT[$mode]=$d/check.out
    python3 - "$mode" "$rc" "$d" "$end" "$t1" "${LAST_ARRIVAL:-}" "$sent" "$deferred" "$ack" >>"$TSV" <<'PY'
import json, sys
mode, rc, d, end, t1, last, sent, deferred, ack = sys.argv[1:]
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return {}
lj, sj, cj = load(f"{d}/load.json"), load(f"{d}/sink.json"), load(f"{d}/check.json")
m = lj.get("messages", {})
md = sj.get("maildir", {})
lat = md.get("store_latency", {})
runs = cj.get("runs", [])
r = next((x for x in runs if "expected" in x), runs[0] if runs else {})
drain = f"{max(0.0, float(last) - float(t1)):.2f}" if last else "-"
def g(dct, k):
    v = dct.get(k)
    return "-" if v is None else str(v)
row = [mode, rc, g(m, "accepted"), g(m, "failed"),
       f"{lj.get('throughput', {}).get('messages_per_s', 0):.0f}" if lj else "-", ack,
       g(cj, "files"), end, drain, g(sj.get("counters", {}), "messages"), g(md, "stored"),
       g(md, "errors"), g(md, "fsync_batches"),
       f"{md['messages_per_batch']:.1f}" if md.get("messages_per_batch") else "-",
       g(lat, "p50_us"), g(lat, "p99_us"), sent, deferred, g(r, "intact"), g(r, "corrupted"),
       g(r, "duplicates"), g(r, "missing"), g(cj, "tmp_files"), g(cj, "no_return_path"),
       "ok" if cj.get("ok") else "FAILED"]
print("\t".join(map(str, row)))
PY
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START_S=$SECONDS
for mode in "${MODE_LIST[@]}"; do
    run_mode "$mode"
done
ELAPSED_S=$((SECONDS - START_S))

# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# A real MTA delivering into smtpsink --maildir (loopback)\n\n'
    printf '## Machine\n\n'
    machine_md
    printf -- '- load average before: %s; took %ss\n' "$LOAD_BEFORE" "$ELAPSED_S"
    printf -- '- postfix %s, set up as scripts/mta-bench.sh does (private instance, relayhost = the sink)\n' "${MTA_VERSION[postfix]:-unknown}"
    printf -- '- Maildirs under %s: %s\n' "$WORK" "$FS_LINE"
    printf -- '- load: `smtpload -c %s -m %s -s %s --summary FILE` into Postfix; sink: `smtpsink --maildir DIR [--fsync] --json FILE`\n\n' "$CONNS" "$MSGS" "$SIZE"
    printf '## Results\n\n'
    python3 - "$TSV" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| Mode | smtpload accepted / failed | accepted msgs/s at Postfix | acknowledged | files in new/ | wait ended | drain s | Postfix status=sent / deferred+bounced | sink stored (errors) | fsync batches | msgs per batch | store p50 / p99 µs |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['mode']} | {r['accepted']} / {r['failed']} | {r['accepted_per_s']} | {r['acknowledged']} | {r['files']} "
          f"| {r['wait_end']} | {r['drain_s']} | {r['postfix_sent']} / {r['postfix_deferred']} "
          f"| {r['stored']} ({r['store_errors']}) | {r['fsync_batches']} | {r['msgs_per_batch']} "
          f"| {r['store_p50_us']} / {r['store_p99_us']} |")
print()
print("| Mode | intact | corrupted | duplicates | missing (acknowledged, not in new/) | files in tmp/ | files without Return-Path | maildir_check |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    res = "OK" if r["check"] == "ok" else "**FAILED**"
    print(f"| {r['mode']} | {r['intact']} | {r['corrupted']} | {r['duplicates']} | {r['missing']} "
          f"| {r['tmp_files']} | {r['no_return_path']} | {res} |")
print()
PY
    printf '## Notes\n\n'
    printf -- '- Each mode: a fresh Postfix (empty spool) and sink. The wait ended when new/ held as many files as Postfix had acknowledged and its queue was empty (complete), or when the queue had stayed empty for %s s (queue-empty), or %s s after the load (cut). Drain: last new file seen - end of the smtpload run (0.1 s polls).\n' "$LINGER" "$DRAIN_TIMEOUT"
    printf -- '- maildir_check.py DIR --expect ACKNOWLEDGED --summary FILE: each acknowledged message (by X-Smtpload-Run/Seq) exactly once, its body CRC-32 equal to X-Smtpload-Hash (byte-exact after Postfix), each file beginning with Return-Path, nothing in tmp/. Postfix adds its own Received field; that is header, not body.\n'
    printf -- '- Postfix status counts are from its maillog (one line per delivery).\n'
    for n in "${NOTES[@]}"; do printf -- '- %s.\n' "$n"; done
    for mode in "${MODE_LIST[@]}"; do
        printf '\n## maildir_check.py (%s)\n\n```\n' "$mode"
        cat -- "${CHECK_OUT[$mode]}"
        printf '```\n'
    done
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw data: $TSV"
((!ANY_FAILED)) || die "a maildir check failed"
