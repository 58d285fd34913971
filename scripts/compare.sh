#!/usr/bin/env bash
# compare.sh: the benchmark matrix: load generators x SMTP sinks x workloads.
#
# Generators: Postfix's smtp-source (lock-step) and smtpload (this workspace;
# pipelined when the server offers PIPELINING). Servers: smtpsink, Postfix's
# smtp-sink and Python's aiosmtpd (handler aiosmtpd.handlers.Sink), all
# running at once, each on its own free 127.0.0.1 port.
#
# Workloads (1 KiB = smtp-source -l 1024 / smtpload -s 1024):
#   1conn-pinned  1 KiB, 1 connection reused; server pinned to one CPU and
#                 generator to another (taskset) for the run
#   1conn-samecore  the same, both pinned to one CPU
#   1conn         the same, not pinned (the scheduler places both; on two
#                 cores the figure swings between the two above)
#   50conn        1 KiB, 50 connections reused
#   50new         1 KiB, 50 concurrent, a new connection per message
#   1mib          1 MiB messages, 10 connections reused
#   rcpt10        1 KiB, 10 recipients per message, 50 connections reused
#   idle1000      memory: a fresh server, IDLE_CONNS connections that only
#                 read the greeting (held by scripts/idle_conns.py); KiB per
#                 connection = (VmRSS with them - VmRSS before) / IDLE_CONNS
#   tcp-copy      the physical limit for 1mib: the same bytes over 10 plain
#                 loopback TCP connections into scripts/tcp_copy.rs (built
#                 with rustc; a thread a connection, blocking 64 KiB reads,
#                 data discarded); its CPU seconds per MiB
#
# aiosmtpd is much slower: it gets a tenth of every message count
# (AIOSMTPD_DIV). Runs alternate: for each workload and generator the servers
# run back to back, and the server and generator orders rotate every round.
# For each run the script records the generator's wall time (msgs/s) and
# CPU (bash `time`), the server's CPU (utime+stime from /proc/PID/stat before
# and after) and its peak RSS during the run (VmHWM of /proc/PID/status,
# reset through /proc/PID/clear_refs before the run). It reports medians over
# rounds with min-max as noise and ratios to smtpsink, as Markdown, printed
# and written to results/compare-<date>.md, with a plot
# (results/compare-<date>.png and .svg; needs matplotlib) and the raw data
# (results/compare-<date>.tsv, -idle.tsv, -tcpcopy.tsv).
#
# Usage: scripts/compare.sh
# Environment:
#   ROUNDS=N          rounds (default 3)
#   QUICK=1           divide every message count by 10 (smoke run)
#   CONN1_MSGS=N      messages per run of the 1conn workloads (default 20000)
#   REUSE_MSGS=N      of 50conn (default 50000)
#   NEWCONN_MSGS=N    of 50new (default 20000; lower it if ephemeral ports run out)
#   BIG_MSGS=N        of 1mib, in MiB (default 2000)
#   RCPT_MSGS=N       of rcpt10 (default 20000)
#   AIOSMTPD_DIV=N    aiosmtpd gets the counts divided by N (default 10)
#   IDLE_CONNS=N      idle connections of idle1000 (default 1000)
#   SERVERS="..."     servers to run (default "smtpsink smtp-sink aiosmtpd";
#                     smtpsink must be one)
#   SETTLE_MS=N       pause after each run (default 300)
#   RUN_TIMEOUT=S     upper bound for each generator run (default 300)
#   BUILD_RETRIES=N   retry a failing `cargo build --release --workspace` N
#                     times, BUILD_RETRY_WAIT seconds apart (defaults 2 and 60)
#   BENCH_VENV=DIR    venv for aiosmtpd and matplotlib (default
#                     ~/.cache/smtpsink-bench/venv; created with pip)
#
# Installs Debian's postfix package when smtp-sink/smtp-source are missing
# (without leaving a Postfix master daemon running), aiosmtpd and matplotlib
# into the venv when missing (without them: no aiosmtpd column, no plot),
# builds the workspace in release mode, and stops every process it started by
# PID. Loopback only; every run is bounded; the script ends by itself.

set -euo pipefail
shopt -s extglob

LIB_TAG=compare
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

: "${CONN1_MSGS:=20000}"
: "${REUSE_MSGS:=50000}"
: "${NEWCONN_MSGS:=20000}"
: "${BIG_MSGS:=2000}"
: "${RCPT_MSGS:=20000}"
: "${AIOSMTPD_DIV:=10}"
: "${IDLE_CONNS:=1000}"
: "${SETTLE_MS:=300}"
read -r -a SERVERS <<<"${SERVERS:-smtpsink smtp-sink aiosmtpd}"

require_uint ROUNDS QUICK CONN1_MSGS REUSE_MSGS NEWCONN_MSGS BIG_MSGS RCPT_MSGS AIOSMTPD_DIV \
    IDLE_CONNS SETTLE_MS RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((RUN_TIMEOUT >= 1)) || die "RUN_TIMEOUT must be at least 1"
((AIOSMTPD_DIV >= 1)) || die "AIOSMTPD_DIV must be at least 1"
[[ " ${SERVERS[*]} " == *" smtpsink "* ]] || die "SERVERS must include smtpsink"
SETTLE_S=$(printf '%d.%03d' $((SETTLE_MS / 1000)) $((SETTLE_MS % 1000)))

NOTES=()
ensure_postfix
ensure_tools
command -v taskset >/dev/null 2>&1 || die "taskset (util-linux) is required"
build_release

PLOT_PY=
if [[ " ${SERVERS[*]} " == *" aiosmtpd "* ]] && ! ensure_venv aiosmtpd; then
    NOTES+=("aiosmtpd could not be installed (pip into $BENCH_VENV failed): it was left out")
    read -r -a SERVERS <<<"$(tr ' ' '\n' <<<"${SERVERS[*]}" | grep -vx aiosmtpd | paste -sd' ' -)"
fi
if ensure_venv matplotlib; then
    PLOT_PY=$VENV_PY
else
    NOTES+=("matplotlib could not be installed (pip into $BENCH_VENV failed): no plot")
fi

# 1000 idle connections and the holder's 1000 sockets need descriptors;
# servers started below inherit the limit.
if (($(ulimit -n) < 4 * IDLE_CONNS + 64)); then
    ulimit -n $((4 * IDLE_CONNS + 64)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

make_work compare
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p -- "$RESULTS_DIR"
BASE=$RESULTS_DIR/compare-$STAMP
REPORT=$BASE.md
TSV=$BASE.tsv
IDLE_TSV=$BASE-idle.tsv
COPY_TSV=$BASE-tcpcopy.tsv

# -------------------------------------------------------------- workloads ----

div=1
if ((QUICK)); then div=10; fi
WL_NAMES=(1conn-pinned 1conn-samecore 1conn 50conn 50new 1mib rcpt10)
declare -A WL_MSGS=(
    [1conn-pinned]=$((CONN1_MSGS / div)) [1conn-samecore]=$((CONN1_MSGS / div)) [1conn]=$((CONN1_MSGS / div))
    [50conn]=$((REUSE_MSGS / div)) [50new]=$((NEWCONN_MSGS / div))
    [1mib]=$((BIG_MSGS / div)) [rcpt10]=$((RCPT_MSGS / div))
)
declare -A WL_DESC=(
    [1conn-pinned]="1 KiB, 1 connection reused; server on one CPU, generator on another"
    [1conn-samecore]="1 KiB, 1 connection reused; server and generator on the same CPU"
    [1conn]="1 KiB, 1 connection reused; not pinned"
    [50conn]="1 KiB, 50 connections reused"
    [50new]="1 KiB, 50 concurrent, a new connection per message"
    [1mib]="1 MiB, 10 connections reused"
    [rcpt10]="1 KiB, 10 recipients per message, 50 connections reused"
)
# Generator options (before HOST:PORT) for workload WL, MSGS messages.
declare -A SRC_OPTS=(
    [1conn]="-s 1 -l 1024 -d" [50conn]="-s 50 -l 1024 -d" [50new]="-s 50 -l 1024"
    [1mib]="-s 10 -l 1048576 -d" [rcpt10]="-s 50 -l 1024 -d -r 10"
)
declare -A LOAD_OPTS=(
    [1conn]="-c 1 -s 1024" [50conn]="-c 50 -s 1024" [50new]="-c 50 -s 1024 --per-connection 1"
    [1mib]="-c 10 -s 1048576" [rcpt10]="-c 50 -s 1024 -r 10"
)
gen_opts() {
    local wl=${1%-@(pinned|samecore)} gen=$2 msgs=$3
    if [[ $gen == smtp-source ]]; then echo "${SRC_OPTS[$wl]} -m $msgs"; else echo "${LOAD_OPTS[$wl]} -m $msgs"; fi
}
msgs_for() {
    local n=${WL_MSGS[$1]}
    [[ $2 == aiosmtpd ]] && n=$((n / AIOSMTPD_DIV))
    echo $((n > 0 ? n : 1))
}
GENS=(smtp-source smtpload)
NCPU=$(nproc)
# The first two CPUs this script may use: the server's and the generator's.
read -r CPU_A CPU_B < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0))[:2])')
if [[ -z ${CPU_B:-} ]]; then
    WL_NAMES=("${WL_NAMES[@]:2}")
    NOTES+=("1conn-pinned and 1conn-samecore skipped: one CPU available to this process")
fi

# ---------------------------------------------------------------- servers ----

read -r -a ports < <(free_ports "${#SERVERS[@]}")
for i in "${!SERVERS[@]}"; do
    start_server "${SERVERS[i]}" "${ports[i]}"
done
for s in "${SERVERS[@]}"; do
    server_caps "$s"
done

FAILED_RUNS=0
printf 'round\tworkload\tgenerator\tserver\tmsgs\trc\tok\twall_s\tgen_user_s\tgen_sys_s\tserver_ticks\tserver_hwm_kib\tgen_reported_msgs_per_s\tnote\n' >"$TSV"
printf 'round\tserver\tconns\tgreeted\trss_before_kib\trss_idle_kib\n' >"$IDLE_TSV"
printf 'round\tconns\tbytes\tcpu_s\twall_s\n' >"$COPY_TSV"

# rotate N ITEM...: the items rotated left by N.
rotate() {
    local n=$1
    shift
    local a=("$@")
    n=$((n % ${#a[@]}))
    echo "${a[@]:n}" "${a[@]:0:n}"
}

# run_one ROUND WORKLOAD GENERATOR SERVER [record]: one generator run.
run_one() {
    local round=$1 wl=$2 gen=$3 server=$4 record=${5:-record}
    local msgs pid mask='' genlog prefix=()
    msgs=$(msgs_for "$wl" "$server")
    pid=${SERVER_PID[$server]}
    genlog=$WORK/gen-$round-$wl-$gen-$server.log
    if [[ $wl == *-pinned || $wl == *-samecore ]]; then
        mask=$(taskset -p "$pid" | sed 's/.*: //')
        taskset -a -p -c "$CPU_A" "$pid" >/dev/null
        if [[ $wl == *-pinned ]]; then prefix=(taskset -c "$CPU_B"); else prefix=(taskset -c "$CPU_A"); fi
    fi
    gen_run "$gen" "$msgs" "$(gen_opts "$wl" "$gen" "$msgs")" "$server" "$genlog" "${prefix[@]}"
    if [[ -n $mask ]]; then
        taskset -a -p "$mask" "$pid" >/dev/null
    fi
    if [[ $record == record ]]; then
        ((RUN_OK)) || FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            "$round" "$wl" "$gen" "$server" "$msgs" "$RUN_RC" "$RUN_OK" "$RUN_WALL" "$RUN_USR" "$RUN_SYS" \
            "$RUN_TICKS" "$RUN_HWM" "$RUN_RATE" "$RUN_NOTE" >>"$TSV"
        if ((!RUN_OK)); then
            note_failed_run "round $round, $wl, $gen -> $server (exit $RUN_RC, $RUN_NOTE)" "$genlog"
        fi
        log "$(awk -v r="$round" -v wl="$wl" -v g="$gen" -v s="$server" -v m="$msgs" -v w="$RUN_WALL" \
            -v t="$RUN_TICKS" -v clk="$CLK_TCK" -v h="$RUN_HWM" 'BEGIN {
            printf "round %s %-12s %-11s -> %-9s %6d msgs %7.3fs %8.0f msg/s  server %.3f CPU s/10k, peak %.1f MiB",
                r, wl, g, s, m, w, m / (w > 0 ? w : 1e-9), t / clk / m * 1e4, h / 1024 }')"
    elif ((!RUN_OK)); then
        die "warm-up $wl/$gen against $server failed"
    fi
    sleep "$SETTLE_S"
}

# wait_file FILE PID SECONDS: FILE is not empty, within SECONDS, while PID lives.
wait_file() {
    local i
    for ((i = 0; i < $3 * 20; i++)); do
        [[ -s $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || { [[ -s $1 ]]; return; }
        sleep 0.05
    done
    return 1
}

# wait_exit PID SECONDS: PID has exited, within SECONDS.
wait_exit() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# idle_one ROUND SERVER: memory of IDLE_CONNS idle connections on a fresh
# instance of SERVER.
idle_one() {
    local round=$1 name=$2 key=idle-$2 port pid before with holder got ready=$WORK/idle.ready done=$WORK/idle.done
    read -r port < <(free_ports 1)
    start_server "$name" "$port" "$key"
    pid=${SERVER_PID[$key]}
    sleep 0.3
    before=$(status_kib "$pid" VmRSS)
    rm -f -- "$ready" "$done"
    start_bg "$WORK/idle.out" "$WORK/idle.err" timeout 150 python3 "$LIB_DIR/idle_conns.py" \
        "$port" "$IDLE_CONNS" "$ready" "$done"
    holder=$LAST_PID
    wait_file "$ready" "$holder" 120 || die "idle connections to $key: no report ($(tail -n 3 "$WORK/idle.err"))"
    sleep 0.5
    with=$(status_kib "$pid" VmRSS)
    read -r -a got <"$ready"
    touch -- "$done"
    wait_exit "$holder" 10 || true
    stop_pid "$holder"
    stop_server "$key"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$IDLE_CONNS" "${got[0]}" "$before" "$with" >>"$IDLE_TSV"
    log "$(awk -v r="$round" -v s="$name" -v n="$IDLE_CONNS" -v g="${got[0]}" -v b="$before" -v w="$with" 'BEGIN {
        printf "round %s idle%-8s %-9s %d/%d greeted, RSS %d -> %d KiB: %.1f KiB per connection", r, n, s, g, n, b, w, (w - b) / n }')"
    ((got[0] == IDLE_CONNS)) || NOTES+=("round $round: only ${got[0]} of $IDLE_CONNS idle connections to $name got a greeting")
}

# copy_one ROUND: the 1mib bytes over 10 plain loopback TCP connections.
COPY_CONNS=10
TCP_COPY=$WORK/tcp_copy
log "rustc -O scripts/tcp_copy.rs"
rustc -O --edition 2021 -o "$TCP_COPY" "$LIB_DIR/tcp_copy.rs" >&2 || die "rustc scripts/tcp_copy.rs failed"
copy_one() {
    local round=$1 port rx ready=$WORK/copy.ready per
    per=$((WL_MSGS[1mib] * 1048576 / COPY_CONNS))
    read -r port < <(free_ports 1)
    rm -f -- "$ready"
    start_bg "$WORK/copy.out" "$WORK/copy.err" "$TCP_COPY" recv "$port" "$COPY_CONNS" "$ready"
    rx=$LAST_PID
    wait_file "$ready" "$rx" 10 || die "tcp_copy recv did not start: $(tail -n 3 "$WORK/copy.err")"
    timeout "$RUN_TIMEOUT" "$TCP_COPY" send "$port" "$COPY_CONNS" "$per" >&2 ||
        die "tcp_copy send failed"
    wait_exit "$rx" "$RUN_TIMEOUT" || true
    stop_pid "$rx"
    local out
    read -r -a out <"$WORK/copy.out" || die "tcp_copy recv reported nothing: $(tail -n 3 "$WORK/copy.err")"
    ((out[1] == per * COPY_CONNS)) || die "tcp_copy recv read ${out[1]} of $((per * COPY_CONNS)) bytes"
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$COPY_CONNS" "${out[1]}" "${out[0]}" "${out[2]}" >>"$COPY_TSV"
    log "$(awk -v r="$round" -v c="${out[0]}" -v b="${out[1]}" -v w="${out[2]}" 'BEGIN {
        printf "round %s tcp-copy     %d MiB %.3fs  receiver %.4f CPU ms/MiB", r, b / 1048576, w, c / (b / 1048576) * 1000 }')"
    sleep "$SETTLE_S"
}

# ---------------------------------------------------------------- measure ----

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
check_idle() {
    local busy
    busy=$(cpu_busy_pct 2)
    if ((busy > 10)); then
        log "warning: the CPUs were ${busy}% busy $1 while this script's servers were idle: figures will be noisy"
        NOTES+=("other processes kept the CPUs ${busy}% busy $1 (2 s sample, servers idle): the figures are noisier than on an idle machine")
    fi
}
check_idle "before the rounds"

# Unrecorded warm-up: each generator, each server, a tenth of 50conn.
WL_MSGS[warmup]=$((WL_MSGS[50conn] / 10 > 0 ? WL_MSGS[50conn] / 10 : 1))
SRC_OPTS[warmup]=${SRC_OPTS[50conn]}
LOAD_OPTS[warmup]=${LOAD_OPTS[50conn]}
for s in "${SERVERS[@]}"; do
    log "warm-up: each generator against $s"
    for g in "${GENS[@]}"; do
        run_one 0 warmup "$g" "$s" norecord
    done
done

START_S=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    read -r -a sorder <<<"$(rotate $((round - 1)) "${SERVERS[@]}")"
    read -r -a gorder <<<"$(rotate $((round - 1)) "${GENS[@]}")"
    for wl in "${WL_NAMES[@]}"; do
        for g in "${gorder[@]}"; do
            for s in "${sorder[@]}"; do
                run_one "$round" "$wl" "$g" "$s"
            done
        done
        if [[ $wl == 1mib ]]; then copy_one "$round"; fi
    done
    for s in "${sorder[@]}"; do
        idle_one "$round" "$s"
    done
done
ELAPSED_S=$((SECONDS - START_S))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
check_idle "after the rounds"

# Stop the servers now: smtpsink prints its final statistics on SIGTERM.
for s in "${SERVERS[@]}"; do
    stop_server "$s"
done

# ----------------------------------------------------------------- report ----

# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# Benchmark matrix: smtpsink vs Postfix smtp-sink vs aiosmtpd\n\n'
    printf '## Machine\n\n'
    machine_md
    printf -- '- load average before/after the rounds: %s / %s\n' "$LOAD_BEFORE" "$LOAD_AFTER"
    for s in "${SERVERS[@]}"; do
        printf -- '- server %s: `%s` (offers %s)\n' "$s" "$(server_desc "$s")" "${CAPS[$s]:-neither PIPELINING nor CHUNKING}"
    done
    if [[ -n $VENV_PY ]]; then
        printf -- '- venv %s: %s\n' "$BENCH_VENV" "$("$VENV_PY" -m pip list --format=freeze 2>/dev/null |
            grep -iE '^(aiosmtpd|matplotlib)==' | paste -sd' ' - || echo '?')"
    fi
    printf -- '- generators: `smtp-source` (lock-step), %s (pipelined where offered); timeout %ss per run\n' \
        "$("$SMTPLOAD_BIN" --version 2>/dev/null || echo smtpload)" "$RUN_TIMEOUT"
    printf -- '- rounds: %s (server and generator order rotated every round), QUICK=%s, measuring took %ss\n\n' \
        "$ROUNDS" "$QUICK" "$ELAPSED_S"
    printf '## Workloads\n\n'
    printf '| Workload | What | smtp-source | smtpload | msgs per run (aiosmtpd) |\n|---|---|---|---|---:|\n'
    for wl in "${WL_NAMES[@]}"; do
        printf '| %s | %s | `%s` | `%s` | %s (%s) |\n' "$wl" "${WL_DESC[$wl]}" \
            "$(gen_opts "$wl" smtp-source "${WL_MSGS[$wl]}")" "$(gen_opts "$wl" smtpload "${WL_MSGS[$wl]}")" \
            "${WL_MSGS[$wl]}" "$(msgs_for "$wl" aiosmtpd)"
    done
    printf '| idle%s | a fresh server; %s connections that read the greeting and stay idle | – | `scripts/idle_conns.py` | – |\n' \
        "$IDLE_CONNS" "$IDLE_CONNS"
    printf '| tcp-copy | the 1mib bytes (%s MiB) over %s plain loopback TCP connections, read in 64 KiB and discarded | – | `scripts/tcp_copy.rs` | – |\n\n' \
        "${WL_MSGS[1mib]}" "$COPY_CONNS"
    "${PLOT_PY:-python3}" "$LIB_DIR/compare_report.py" --clk-tck "$CLK_TCK" --runs "$TSV" --idle "$IDLE_TSV" \
        --copy "$COPY_TSV" --plot "${PLOT_PY:+$BASE}" --workloads "${WL_NAMES[*]}" --servers "${SERVERS[*]}"
    printf '## Notes\n\n'
    printf -- '- msgs/s = messages / wall seconds of the generator process (start-up and connection set-up included). Server CPU = utime+stime of the server process over the run (/proc/PID/stat, all threads, %s ticks/s); generator CPU = user+sys from bash `time`. Generator and server share the %s CPUs, so wall-clock rates are bounded by their sum.\n' "$CLK_TCK" "$NCPU"
    printf -- '- aiosmtpd got 1/%s of every message count (it is about ten times slower); its rates and per-message CPU compare, its totals do not.\n' "$AIOSMTPD_DIV"
    printf -- '- 1conn-pinned: `taskset -a -p -c %s` on the server for the run (restored after), generator under `taskset -c %s`; 1conn-samecore: both on CPU %s; 1conn: no pinning, so the figure depends on where the scheduler puts the two.\n' "$CPU_A" "$CPU_B" "$CPU_A"
    printf -- '- Peak RSS: VmHWM after resetting it (`echo 5 > /proc/PID/clear_refs`) before each run, i.e. the peak during the run; the maximum over rounds.\n'
    for n in "${NOTES[@]}"; do
        printf -- '- %s.\n' "$n"
    done
    report_tail
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw data: $TSV $IDLE_TSV $COPY_TSV"
if [[ -n $PLOT_PY ]]; then log "plot: $BASE.png $BASE.svg"; fi
