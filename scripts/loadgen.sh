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

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

ROUNDS=${ROUNDS:-3}
QUICK=${QUICK:-0}
REUSE_MSGS=${REUSE_MSGS:-100000}
NEWCONN_MSGS=${NEWCONN_MSGS:-30000}
BDAT_MSGS=${BDAT_MSGS:-500000}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
BUILD_RETRIES=${BUILD_RETRIES:-2}
BUILD_RETRY_WAIT=${BUILD_RETRY_WAIT:-60}
SETTLE_S=1

SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
SMTPSINK_BIN=$REPO_ROOT/target/release/smtpsink
SMTPLOAD_BIN=$REPO_ROOT/target/release/smtpload
RESULTS_DIR=$REPO_ROOT/results
POSTFIX_MASTER=/usr/lib/postfix/sbin/master

SMTPSINK_PID=
POSTFIX_SINK_PID=
POLICY_RC_CREATED=0
WORK=

log() { printf '[loadgen] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in ROUNDS QUICK REUSE_MSGS NEWCONN_MSGS BDAT_MSGS RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((RUN_TIMEOUT >= 1)) || die "RUN_TIMEOUT must be at least 1"

# ---------------------------------------------------------------- cleanup ----

# Stop one server we started: SIGTERM, up to 10 s, then SIGKILL; reap it.
stop_pid() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

stop_servers() {
    stop_pid "$SMTPSINK_PID"
    SMTPSINK_PID=
    stop_pid "$POSTFIX_SINK_PID"
    POSTFIX_SINK_PID=
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_servers
    if ((POLICY_RC_CREATED)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ environment ----

SUDO=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
fi

postfix_master_running() {
    pgrep -f "^$POSTFIX_MASTER" >/dev/null 2>&1
}

apt_install() {
    log "installing: $*"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        "${SUDO[@]}" apt-get update >&2
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2
    fi
}

ensure_postfix() {
    [[ -x $SINK && -x $SOURCE ]] && return 0
    command -v apt-get >/dev/null 2>&1 || die "$SINK/$SOURCE missing and no apt-get to install postfix"

    local master_before=0
    postfix_master_running && master_before=1
    # Keep the package from configuring and starting a mail system: choose
    # "No configuration" and, for the install only, forbid service starts.
    if command -v debconf-set-selections >/dev/null 2>&1; then
        echo 'postfix postfix/main_mailer_type select No configuration' |
            "${SUDO[@]}" debconf-set-selections
    fi
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    apt_install postfix
    if ((POLICY_RC_CREATED)); then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
    # If the install started a master daemon anyway, stop it again.
    if ((!master_before)) && postfix_master_running; then
        log "postfix install started a master daemon; stopping it"
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postfix 2>/dev/null; then
            "${SUDO[@]}" systemctl stop postfix || true
        fi
        postfix_master_running && { "${SUDO[@]}" postfix stop >&2 || true; }
        sleep 1
        postfix_master_running && die "a Postfix master daemon is still running; stop it by hand"
    fi
    [[ -x $SINK && -x $SOURCE ]] || die "postfix installed but $SINK/$SOURCE are missing"
}

ensure_postfix
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is required"
command -v cargo >/dev/null 2>&1 || die "cargo is required to build smtpsink and smtpload"

build_workspace() {
    local attempt
    for ((attempt = 0; ; attempt++)); do
        log "cargo build --release --workspace (in $REPO_ROOT)"
        if (cd -- "$REPO_ROOT" && cargo build --release --workspace >&2); then
            break
        fi
        ((attempt < BUILD_RETRIES)) || die "cargo build --release --workspace failed"
        log "build failed; retrying in ${BUILD_RETRY_WAIT}s ($((attempt + 1))/$BUILD_RETRIES)"
        sleep "$BUILD_RETRY_WAIT"
    done
    [[ -x $SMTPSINK_BIN ]] || die "$SMTPSINK_BIN not found after build"
    [[ -x $SMTPLOAD_BIN ]] || die "$SMTPLOAD_BIN not found after build"
}
build_workspace

WORK=$(mktemp -d "${TMPDIR:-/tmp}/smtpsink-loadgen.XXXXXX")
CLK_TCK=$(getconf CLK_TCK)
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

# Two distinct free ports below the ephemeral range, so the generators'
# source ports never collide with them.
read -r PORT_SMTPSINK PORT_POSTFIX < <(python3 - <<'PY'
import random, socket
ports, socks = [], []
while len(ports) < 2:
    p = random.randint(20000, 32000)
    if p in ports:
        continue
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    socks.append(s)
    ports.append(p)
# Release the ports before printing them: the caller starts the servers as
# soon as it has read this line, possibly before this process has exited.
for s in socks:
    s.close()
print(*ports, flush=True)
PY
)

# smtp-sink refuses to run as root without -u; -m raises its connection cap.
SINK_ARGS=()
if ((EUID == 0)); then
    SINK_ARGS+=(-u nobody)
fi
SINK_ARGS+=(-m 1024 "127.0.0.1:$PORT_POSTFIX" 1024)
SMTPSINK_ARGS=(--listen "127.0.0.1:$PORT_SMTPSINK")

log "starting smtpsink on 127.0.0.1:$PORT_SMTPSINK"
"$SMTPSINK_BIN" "${SMTPSINK_ARGS[@]}" >"$WORK/smtpsink.out" 2>"$WORK/smtpsink.err" </dev/null &
SMTPSINK_PID=$!
log "starting smtp-sink on 127.0.0.1:$PORT_POSTFIX"
"$SINK" "${SINK_ARGS[@]}" >"$WORK/smtp-sink.out" 2>"$WORK/smtp-sink.err" </dev/null &
POSTFIX_SINK_PID=$!

# The 220 greeting, read over bash's /dev/tcp within 2 s.
probe_greeting() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r line <&3 || exit 1
        printf "QUIT\r\n" >&3
        [[ $line == 220* ]]' _ "$1" 2>/dev/null
}

# The EHLO keywords a server offers, one a line (upper case), within 5 s.
ehlo_keywords() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r line <&3 || exit 1
        [[ $line == 220* ]] || exit 1
        printf "EHLO loadgen.localhost\r\n" >&3
        first=1
        while IFS= read -r line <&3; do
            line=${line%$'"'"'\r'"'"'}
            [[ $line == 250* ]] || exit 1
            if ((first)); then first=0; else
                kw=${line:4}; kw=${kw%% *}; printf "%s\n" "${kw^^}"; fi
            [[ ${line:3:1} == " " ]] && break
        done
        printf "QUIT\r\n" >&3' _ "$1" 2>/dev/null
}

PROBE_MSGS=0
wait_ready() {
    local name=$1 pid=$2 port=$3 errlog=$4 i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at startup: $(tail -n 5 "$errlog")"
        probe_greeting "$port" && break
        sleep 0.1
    done
    ((i < 100)) || die "$name gave no 220 greeting on 127.0.0.1:$port within 10 s"
    timeout 30 "$SOURCE" -m 1 -l 1024 "127.0.0.1:$port" >&2 ||
        die "$name did not accept a test message on 127.0.0.1:$port"
    log "$name (pid $pid) answers on 127.0.0.1:$port"
}
wait_ready smtpsink "$SMTPSINK_PID" "$PORT_SMTPSINK" "$WORK/smtpsink.err"
wait_ready smtp-sink "$POSTFIX_SINK_PID" "$PORT_POSTFIX" "$WORK/smtp-sink.err"
PROBE_MSGS=1

SERVERS=(smtp-sink smtpsink)
server_pid() { if [[ $1 == smtpsink ]]; then echo "$SMTPSINK_PID"; else echo "$POSTFIX_SINK_PID"; fi; }
server_port() { if [[ $1 == smtpsink ]]; then echo "$PORT_SMTPSINK"; else echo "$PORT_POSTFIX"; fi; }

# Which sinks offer PIPELINING / CHUNKING (the bdat case needs CHUNKING).
declare -A CAPS=()
for server in "${SERVERS[@]}"; do
    kws=$(ehlo_keywords "$(server_port "$server")") || die "EHLO probe of $server failed"
    CAPS[$server]=$(grep -xE 'PIPELINING|CHUNKING' <<<"$kws" | sort | paste -sd, -)
    log "$server offers: ${CAPS[$server]:-neither PIPELINING nor CHUNKING}"
done
SKIPPED=()
offers() { [[ ,${CAPS[$1]}, == *",$2,"* ]]; }

# utime+stime (fields 14 and 15 of /proc/PID/stat) in clock ticks.
cpu_ticks() {
    local stat fields
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }          # drop "pid (comm) ": fields now start at 3
    read -r -a fields <<<"$stat"
    echo $((fields[11] + fields[12]))
}

# Checks an smtpload JSON report: prints "ok ACCEPTED RATE" when all MSGS
# messages were accepted with no errors and no abort, else "bad REASON".
check_json() {
    python3 - "$1" "$2" <<'PY'
import json, sys
path, msgs = sys.argv[1], int(sys.argv[2])
try:
    j = json.load(open(path))
except Exception as e:
    print(f"bad no-json:{type(e).__name__}")
    sys.exit(0)
m = j.get("messages", {})
errs = sum(int(e.get("count", 1)) for e in j.get("errors") or [])
acc = int(m.get("accepted", 0))
rate = j.get("throughput", {}).get("messages_per_s", 0.0)
why = []
if errs:
    why.append(f"errors={errs}")
if m.get("failed"):
    why.append(f"failed={m['failed']}")
if acc != msgs:
    why.append(f"accepted={acc}/{msgs}")
if j.get("aborted"):
    why.append("aborted=" + str(j["aborted"]).replace(" ", "_"))
print(("bad " + ",".join(why)) if why else f"ok {acc} {rate:.1f}")
PY
}

SMTPSINK_SENT=$PROBE_MSGS
FAILED_RUNS=0

# run_one ROUND CASE_INDEX SERVER [record]: one generator run.
run_one() {
    local round=$1 ci=$2 server=$3 record=${4:-record}
    local pid port wl gen msgs args cmd c0 c1 rc wall usr sys genlog json ok=1 note=- rate=-
    pid=$(server_pid "$server")
    port=$(server_port "$server")
    wl=${C_WL[ci]}
    gen=${C_GEN[ci]}
    msgs=${C_MSGS[ci]}
    read -r -a args <<<"${C_ARGS[ci]}"
    genlog=$WORK/gen-$round-$wl-$gen-$server.log
    json=$WORK/gen-$round-$wl-$gen-$server.json
    if [[ $gen == smtp-source ]]; then
        cmd=("$SOURCE" "${args[@]}" "127.0.0.1:$port")
    else
        rm -f -- "$json"
        cmd=("$SMTPLOAD_BIN" -q --json "$json" "${args[@]}" "127.0.0.1:$port")
    fi

    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) is no longer running"
    c0=$(cpu_ticks "$pid")
    local TIMEFORMAT='%3R %3U %3S'
    if { time timeout "$RUN_TIMEOUT" "${cmd[@]}" >"$genlog" 2>&1; } 2>"$WORK/time"; then
        rc=0
    else
        rc=$?
    fi
    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) died during $wl/$gen: $(tail -n 5 "$genlog")"
    c1=$(cpu_ticks "$pid")
    read -r wall usr sys <"$WORK/time"
    if [[ $server == smtpsink ]]; then SMTPSINK_SENT=$((SMTPSINK_SENT + msgs)); fi

    if ((rc != 0)); then
        ok=0
        if ((rc == 124)); then note=timeout; else note=exit-$rc; fi
    fi
    if [[ $gen != smtp-source ]]; then
        local verdict
        read -r -a verdict <<<"$(check_json "$json" "$msgs")"
        if [[ ${verdict[0]} == ok ]]; then
            rate=${verdict[2]}
        else
            ok=0
            if [[ $note == - ]]; then note=${verdict[1]}; else note+=,${verdict[1]}; fi
        fi
    fi
    if ((!ok)); then
        log "round $round $wl $gen -> $server FAILED ($note): $(tail -n 3 "$genlog" | tr '\n' ' ')"
    fi
    if [[ $record == record ]]; then
        ((ok)) || FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            "$round" "$wl" "$gen" "$server" "$msgs" "$rc" "$ok" "$wall" "$usr" "$sys" \
            "$((c1 - c0))" "$rate" "$note" >>"$TSV"
        if ((!ok)) && [[ -s $genlog ]]; then
            { printf '### round %s, %s, %s -> %s (exit %s, %s)\n\n```\n' "$round" "$wl" "$gen" "$server" "$rc" "$note"
              tail -n 20 "$genlog"
              printf '```\n\n'; } >>"$WORK/genlogs.md"
        fi
        log "$(python3 -c '
import sys
r, wl, gen, srv, m, w, u, s, t, clk = sys.argv[1:]
m, w = int(m), float(w)
print(f"round {r} {wl:<8} {gen:<16} -> {srv:<9} {m:>7} msgs {w:8.3f}s {m/max(w,1e-9):9.0f} msg/s"
      f"  gen {(float(u)+float(s))/m*1e4:.3f}  server {int(t)/int(clk)/m*1e4:.3f} CPU s/10k")
' "$round" "$wl" "$gen" "$server" "$msgs" "$wall" "$usr" "$sys" "$((c1 - c0))" "$CLK_TCK")"
    elif ((!ok)); then
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
stop_servers
SMTPSINK_COUNTED=$(sed -nE 's/^[[:space:]]*messages[[:space:]]+([0-9]+).*/\1/p' "$WORK/smtpsink.out" | head -n 1)

# ----------------------------------------------------------------- report ----

cpu_model=$(sed -nE 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
[[ -n $cpu_model ]] || cpu_model=unknown
git_rev=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
postfix_ver=$(dpkg-query -W -f='${Version}' postfix 2>/dev/null || echo unknown)
smtpload_ver=$("$SMTPLOAD_BIN" --version 2>/dev/null || echo smtpload)

# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# Load generators: smtpload vs Postfix smtp-source\n\n'
    printf '## Machine\n\n'
    printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf -- '- CPU: %s, nproc %s\n' "$cpu_model" "$(nproc)"
    printf -- '- kernel: %s\n' "$(uname -srm)"
    printf -- '- load average before/after: %s / %s\n' "$LOAD_BEFORE" "$LOAD_AFTER"
    printf -- '- generators: %s (git %s); `smtp-source` (postfix %s); timeout %ss per run\n' \
        "$smtpload_ver" "$git_rev" "$postfix_ver" "$RUN_TIMEOUT"
    printf -- '- sinks: `%s` (offers %s); `%s` (offers %s)\n' \
        "smtp-sink ${SINK_ARGS[*]}" "${CAPS[smtp-sink]:-neither}" \
        "smtpsink ${SMTPSINK_ARGS[*]}" "${CAPS[smtpsink]:-neither}"
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
    printf -- '- Every run was bounded by `timeout %s`; a run counts only if the generator exited 0 (smtpload: and its JSON shows all messages accepted, no errors, no abort).\n' "$RUN_TIMEOUT"
    for s in "${SKIPPED[@]}"; do
        printf -- '- Skipped: %s.\n' "$s"
    done
    if [[ -n $SMTPSINK_COUNTED ]]; then
        printf -- '- smtpsink counted %s messages in its final statistics; the generators sent it %s (incl. probe and warm-up).\n' \
            "$SMTPSINK_COUNTED" "$SMTPSINK_SENT"
    else
        printf -- '- smtpsink final statistics had no "messages" line; the generators sent it %s messages.\n' "$SMTPSINK_SENT"
    fi
    if ((FAILED_RUNS)); then
        printf -- '- %s run(s) failed and are excluded from the medians (output below).\n' "$FAILED_RUNS"
    else
        printf -- '- All runs succeeded.\n'
    fi
    if ((QUICK)); then
        printf -- '- QUICK=1: message counts divided by 10; CPU figures are coarse.\n'
    fi
    if [[ -s $WORK/genlogs.md ]]; then
        printf '\n## Output of failed runs\n\n'
        cat "$WORK/genlogs.md"
    fi
    printf '\n## smtpsink final statistics\n\n```\n'
    cat "$WORK/smtpsink.out"
    printf '```\n'
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw data: $TSV"
