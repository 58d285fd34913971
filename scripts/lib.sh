# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are read by the scripts that source it
# lib.sh: code shared by the benchmark scripts (compare.sh, loadgen.sh,
# loadtest.sh, profile.sh). Source it from a bash script that runs under
# `set -euo pipefail`, after setting LIB_TAG (the log prefix):
#
#   LIB_TAG=compare
#   source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
#
# Sourcing it installs an EXIT/INT/TERM trap that stops every process started
# with start_bg (by PID: SIGTERM, then SIGKILL after 10 s), removes $WORK and
# removes a policy-rc.d that ensure_postfix created. A script that needs more
# clean-up defines a function cleanup_hook; it runs first.
#
# What it provides:
#   log/die, require_uint             logging; integer checks of variables
#   start_bg, stop_pid, stop_all      background processes stopped by PID
#   make_work                         the script's temporary folder $WORK
#   ensure_postfix, apt_install,      smtp-sink/smtp-source (no Postfix master
#   apt_install_nostart, ensure_tools daemon left running); packages installed
#                                     without service starts; python3, timeout, cargo
#   ensure_venv                       a Python venv with pip packages (aiosmtpd, ...)
#   build_release                     cargo build --release --workspace, retried
#   results_files NAME, meta, raw     this run's report paths; KEY=VALUE and TSV rows for its report
#   use_binaries                      SMTPSINK_BIN/SMTPLOAD_BIN given, or build
#   free_ports                        free loopback ports, released before use
#   server_argv, server_desc,         the sinks (smtpsink, smtp-sink, aiosmtpd):
#   start_server, stop_server,        command line, start, greeting probe and a
#   wait_ready, ehlo_keywords,        test message, EHLO keywords
#   server_caps, offers
#   probe_greeting, wait_greeting     the 220 greeting of any server
#   cpu_ticks, status_kib, reset_hwm, /proc: CPU ticks, VmRSS/VmHWM, peak reset,
#   cpu_busy_pct                      how busy the machine is
#   check_json, gen_run               one bounded generator run, measured
#   machine_md, sent_note,            report parts: the machine; smtpsink's count;
#   note_failed_run, report_tail      failed runs; the closing notes
#   smtpsink_counted                  the count in smtpsink's final statistics

[[ -n ${LIB_SH_LOADED:-} ]] && return 0
LIB_SH_LOADED=1

LIB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$LIB_DIR/.." && pwd)

SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX_MASTER=/usr/lib/postfix/sbin/master
SMTPSINK_BIN=$REPO_ROOT/target/release/smtpsink
SMTPLOAD_BIN=$REPO_ROOT/target/release/smtpload
RESULTS_DIR=$REPO_ROOT/results
CLK_TCK=$(getconf CLK_TCK)
ROUNDS=${ROUNDS:-3}                 # rounds of the scripts that alternate
QUICK=${QUICK:-0}                   # 1: smoke run, message counts / 10
RUN_TIMEOUT=${RUN_TIMEOUT:-300}     # seconds, the bound of each generator run
BUILD_RETRIES=${BUILD_RETRIES:-2}
BUILD_RETRY_WAIT=${BUILD_RETRY_WAIT:-60}
BENCH_VENV=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/smtpsink-bench/venv}
VENV_PY=

WORK=
LIB_PIDS=()
POLICY_RC_CREATED=0
declare -A SERVER_PID=() SERVER_PORT=() CAPS=() SENT=()

log() { printf '[%s] %s\n' "${LIB_TAG:-bench}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# require_uint VAR...: each named variable holds a non-negative integer.
require_uint() {
    local v
    for v; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
    done
}

# ------------------------------------------------------------- processes ----

# start_bg OUT ERR CMD...: start CMD in the background (stdin /dev/null) and
# remember its PID for the clean-up; the PID is left in LAST_PID. Call it
# directly, not in $(...), or the PID is lost.
LAST_PID=
start_bg() {
    local out=$1 err=$2
    shift 2
    "$@" >"$out" 2>"$err" </dev/null &
    LAST_PID=$!
    LIB_PIDS+=("$LAST_PID")
}

# stop_pid PID [SECONDS [CHILD...]]: SIGTERM, up to SECONDS (default 10),
# then SIGKILL to each CHILD (say the process under a `timeout` wrapper PID)
# and to PID; reap it; forget it.
stop_pid() {
    local pid=$1 secs=${2:-10} i keep=() p
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < secs * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM; sending SIGKILL"
            for p in "${@:3}"; do
                [[ -z $p ]] || kill -KILL "$p" 2>/dev/null || true
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for p in "${LIB_PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    LIB_PIDS=("${keep[@]}")
}

# stop_all: every process start_bg started and nobody stopped yet, newest first.
stop_all() {
    local i
    for ((i = ${#LIB_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${LIB_PIDS[i]}"
    done
}

lib_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if declare -F cleanup_hook >/dev/null; then cleanup_hook || true; fi
    stop_all
    if ((POLICY_RC_CREATED)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# make_work NAME: a fresh temporary folder in WORK, removed at exit.
make_work() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/smtpsink-$1.XXXXXX")
}

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

# apt_install_nostart PACKAGE...: apt_install with service starts forbidden
# for the install (a policy-rc.d that exits 101, unless one exists already;
# removed again afterwards, or at exit if the install dies). Returns
# apt_install's status.
apt_install_nostart() {
    local rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    apt_install "$@" || rc=$?
    if ((POLICY_RC_CREATED)); then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
    return "$rc"
}

# use_binaries SINK LOAD: the smtpsink and smtpload the script runs: these
# two paths when given (both, or neither), else the workspace built here.
use_binaries() {
    if [[ -n $1 || -n $2 ]]; then
        [[ -x $1 && -x $2 ]] ||
            die "set both SMTPSINK_BIN and SMTPLOAD_BIN to executables (or neither)"
        SMTPSINK_BIN=$1
        SMTPLOAD_BIN=$2
        log "using $SMTPSINK_BIN and $SMTPLOAD_BIN (not building)"
    else
        ensure_tools
        build_release
    fi
}

# ensure_postfix: Debian's postfix package for smtp-sink and smtp-source,
# installed without leaving a Postfix master daemon running.
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
    apt_install_nostart postfix
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

# ensure_tools: python3, timeout and cargo.
ensure_tools() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is required"
    command -v cargo >/dev/null 2>&1 || die "cargo is required to build smtpsink and smtpload"
}

# ensure_venv PACKAGE...: a virtual environment at $BENCH_VENV in which each
# PACKAGE imports (installed with pip when not); sets VENV_PY. Returns 1,
# after a log line, when that fails (no network, no venv module, ...).
ensure_venv() {
    local pkg missing=()
    if [[ ! -x $BENCH_VENV/bin/python ]]; then
        log "creating a Python venv in $BENCH_VENV"
        mkdir -p -- "$(dirname -- "$BENCH_VENV")"
        timeout 120 python3 -m venv "$BENCH_VENV" >&2 || { log "python3 -m venv failed"; return 1; }
    fi
    for pkg; do
        "$BENCH_VENV/bin/python" -c "import $pkg" 2>/dev/null || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "pip install ${missing[*]} (into $BENCH_VENV)"
        timeout 600 "$BENCH_VENV/bin/python" -m pip install -q "${missing[@]}" >&2 ||
            { log "pip install ${missing[*]} failed"; return 1; }
    fi
    VENV_PY=$BENCH_VENV/bin/python
}

# write_ns_init FILE: the init (PID 1) of an MTA's private PID (and mount)
# namespace, run as `bash FILE [SRC DST]... -- CMD...`: bind-mount each SRC
# DST pair, run CMD as its child, pass SIGTERM on to it and wait for it. It
# stays root, so it keeps unshare's parent-death signal that an MTA dropping
# privileges loses: if the script that started it dies, even by SIGKILL,
# unshare dies with it (setpriv --pdeathsig), the init dies with unshare
# (--kill-child), and the kernel kills everything else in the namespace
# with the init. As PID 1 it also reaps the MTA's orphaned children.
write_ns_init() {
    cat >"$1" <<'EOF'
while [[ $1 != -- ]]; do mount --bind "$1" "$2" || exit 97; shift 2; done
shift
child='' term=''
trap 'term=1; [[ -z $child ]] || kill -TERM "$child" 2>/dev/null' TERM INT
"$@" &
child=$!
[[ -z $term ]] || kill -TERM "$child" 2>/dev/null
rc=0
while kill -0 "$child" 2>/dev/null; do wait "$child" && rc=0 || rc=$?; done
exit "$rc"
EOF
}

# build_rev REV WORKTREE TARGET_DIR: smtpsink of REV, built in a git
# worktree (made when missing, left in place) into TARGET_DIR; its path in
# BUILT_BIN.
build_rev() {
    local rev=$1 wt=$2 tdir=$3 commit have attempt
    commit=$(git -C "$REPO_ROOT" rev-parse --verify --quiet "$rev^{commit}") ||
        die "$rev is not a commit of $REPO_ROOT"
    if [[ -e $wt ]]; then
        have=$(git -C "$wt" rev-parse HEAD 2>/dev/null) ||
            die "$wt exists but is not a git worktree"
        [[ $have == "$commit" ]] || die "$wt is at $have, not $rev ($commit); set its *_WORKTREE or remove it"
        [[ -z $(git -C "$wt" status --porcelain --untracked-files=no) ]] || die "$wt has local changes"
    else
        log "git worktree add --detach $wt $rev"
        git -C "$REPO_ROOT" worktree add --detach "$wt" "$commit" >&2
    fi
    for ((attempt = 0; ; attempt++)); do
        log "$rev: cargo build --release -p smtpsink (in $wt, target $tdir)"
        if (cd -- "$wt" && CARGO_TARGET_DIR=$tdir cargo build --release -p smtpsink >&2); then
            break
        fi
        ((attempt < BUILD_RETRIES)) || die "build of $rev failed"
        sleep "$BUILD_RETRY_WAIT"
    done
    BUILT_BIN=$tdir/release/smtpsink
    [[ -x $BUILT_BIN ]] || die "$BUILT_BIN not found after the build of $rev"
}

# build_release: cargo build --release --workspace, BUILD_RETRIES more tries
# BUILD_RETRY_WAIT seconds apart (another change may be half-way in).
build_release() {
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

# free_ports N: N distinct free 127.0.0.1 ports below the ephemeral range (so
# generators' source ports never collide with them), on one line.
free_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
ports, socks = [], []
while len(ports) < n:
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
}

# ---------------------------------------------------------------- servers ----

# server_argv NAME PORT: the command line of sink NAME on 127.0.0.1:PORT in
# SERVER_ARGV. smtp-sink refuses to run as root without -u; its -m raises the
# connection cap. aiosmtpd needs ensure_venv aiosmtpd first.
server_argv() {
    local name=$1 port=$2
    case $name in
        smtpsink)
            SERVER_ARGV=("$SMTPSINK_BIN" --listen "127.0.0.1:$port")
            # SMTPSINK_ARGS: more options, whitespace-separated (threads-bench.sh).
            if [[ -n ${SMTPSINK_ARGS:-} ]]; then
                local extra
                read -r -a extra <<<"$SMTPSINK_ARGS"
                SERVER_ARGV+=("${extra[@]}")
            fi
            ;;
        smtp-sink)
            SERVER_ARGV=("$SINK")
            ((EUID != 0)) || SERVER_ARGV+=(-u nobody)
            SERVER_ARGV+=(-m 1024 "127.0.0.1:$port" 1024)
            ;;
        aiosmtpd)
            [[ -n $VENV_PY ]] || die "aiosmtpd needs ensure_venv aiosmtpd first"
            SERVER_ARGV=("$VENV_PY" -m aiosmtpd -n -l "127.0.0.1:$port" -c aiosmtpd.handlers.Sink)
            ;;
        *) die "unknown server $name" ;;
    esac
}

# server_desc NAME: its command line for a report, port as PORT.
server_desc() {
    local SERVER_ARGV
    server_argv "$1" PORT
    SERVER_ARGV[0]=$(basename -- "${SERVER_ARGV[0]}")
    echo "${SERVER_ARGV[*]}"
}

# start_server NAME PORT [KEY]: start sink NAME on 127.0.0.1:PORT, known as KEY
# (default NAME) in SERVER_PID and SERVER_PORT, output in
# $WORK/KEY.out and .err; returns once it accepted a test message.
start_server() {
    local name=$1 port=$2 key=${3:-$1} SERVER_ARGV
    server_argv "$name" "$port"
    log "starting $key on 127.0.0.1:$port"
    start_bg "$WORK/$key.out" "$WORK/$key.err" "${SERVER_ARGV[@]}"
    SERVER_PID[$key]=$LAST_PID
    SERVER_PORT[$key]=$port
    SENT[$key]=0
    wait_ready "$key"
}

stop_server() {
    stop_pid "${SERVER_PID[$1]:-}"
    SERVER_PID[$1]=
}

# probe_greeting PORT [SECONDS [REPLY]]: the 220 greeting on 127.0.0.1:PORT,
# read over bash's /dev/tcp within SECONDS (default 2), then QUIT; with
# REPLY=1 it also reads the reply to QUIT (the server finishes the session).
probe_greeting() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout "${2:-2}" bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r line <&3 || exit 1
        printf "QUIT\r\n" >&3
        if (($2)); then IFS= read -r _ <&3 || true; fi
        [[ $line == 220* ]]' _ "$1" "${3:-0}" 2>/dev/null
}

# wait_greeting NAME PID PORT ERR [SECONDS [PROBE_ARGS...]]: probe_greeting
# PORT PROBE_ARGS every 0.1 s until it succeeds, for up to SECONDS (default
# 10); dies, quoting the file ERR, when PID exits first.
wait_greeting() {
    local name=$1 pid=$2 port=$3 err=$4 secs=${5:-10} i
    shift $(($# < 5 ? $# : 5))
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at startup: $(tail -n 5 "$err")"
        probe_greeting "$port" "$@" && break
        sleep 0.1
    done
    ((i < secs * 10)) || die "$name gave no 220 greeting on 127.0.0.1:$port within $secs s"
}

# wait_ready KEY: a 220 greeting within 10 s, then one test message (counted
# in SENT[KEY]) sent by smtpload within 30 s.
wait_ready() {
    local key=$1 pid=${SERVER_PID[$1]} port=${SERVER_PORT[$1]}
    wait_greeting "$key" "$pid" "$port" "$WORK/$key.err"
    timeout 30 "$SMTPLOAD_BIN" -q -c 1 -m 1 "127.0.0.1:$port" >"$WORK/$key.probe" 2>&1 ||
        die "$key did not accept a test message on 127.0.0.1:$port: $(tail -n 3 "$WORK/$key.probe")"
    SENT[$key]=$((${SENT[$key]:-0} + 1))
    log "$key (pid $pid) answers on 127.0.0.1:$port"
}

# ehlo_keywords PORT: the EHLO keywords a server offers, one a line (upper
# case), within 5 s.
ehlo_keywords() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r line <&3 || exit 1
        [[ $line == 220* ]] || exit 1
        printf "EHLO bench.localhost\r\n" >&3
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

# server_caps KEY: which of PIPELINING and CHUNKING server KEY offers, into
# CAPS[KEY] (comma-separated, maybe empty).
server_caps() {
    local kws
    kws=$(ehlo_keywords "${SERVER_PORT[$1]}") || die "EHLO probe of $1 failed"
    CAPS[$1]=$(grep -xE 'PIPELINING|CHUNKING' <<<"$kws" | sort | paste -sd, - || true)
    log "$1 offers: ${CAPS[$1]:-neither PIPELINING nor CHUNKING}"
}
offers() { [[ ,${CAPS[$1]}, == *",$2,"* ]]; }

# ------------------------------------------------------------------ /proc ----

# cpu_ticks PID: utime+stime (fields 14 and 15 of /proc/PID/stat, all
# threads) in clock ticks (CLK_TCK a second).
cpu_ticks() {
    local stat fields
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }          # drop "pid (comm) ": fields now start at 3
    read -r -a fields <<<"$stat"
    echo $((fields[11] + fields[12]))
}

# status_kib PID FIELD: a kB field of /proc/PID/status (VmRSS, VmHWM, ...).
status_kib() {
    awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status"
}

# reset_hwm PID: restart VmHWM (peak RSS) from the current RSS, so that it
# reads the peak of what comes next; fails where clear_refs is not writable.
reset_hwm() {
    { echo 5 >"/proc/$1/clear_refs"; } 2>/dev/null
}

# ------------------------------------------------------------- generators ----

# check_json FILE MSGS: prints "ok ACCEPTED RATE" when smtpload's JSON report
# shows all MSGS messages accepted with no errors and no abort, else
# "bad REASON".
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

# gen_run GEN MSGS ARGS KEY LOG [PREFIX...]: one generator run against
# server KEY, bounded by RUN_TIMEOUT. GEN is smtp-source or a label that
# starts with smtpload (run with -q --json LOG.json); ARGS its options
# before HOST:PORT, as one string; PREFIX a command to run it under (taskset).
# Sets RUN_RC, RUN_OK (1/0), RUN_NOTE (- or why it failed), RUN_WALL,
# RUN_USR, RUN_SYS (generator seconds), RUN_TICKS (server CPU ticks),
# RUN_HWM (server peak RSS in KiB during the run, or over its life where the
# peak cannot be reset) and RUN_RATE (smtpload's own msgs/s, or -).
gen_run() {
    local gen=$1 msgs=$2 argstr=$3 key=$4 genlog=$5
    shift 5
    local pid=${SERVER_PID[$key]} port=${SERVER_PORT[$key]} args cmd c0 c1 verdict
    local json=$genlog.json
    read -r -a args <<<"$argstr"
    if [[ $gen == smtp-source ]]; then
        cmd=("$SOURCE" "${args[@]}" "127.0.0.1:$port")
    else
        rm -f -- "$json"
        cmd=("$SMTPLOAD_BIN" -q --json "$json" "${args[@]}" "127.0.0.1:$port")
    fi
    kill -0 "$pid" 2>/dev/null || die "$key (pid $pid) is no longer running"
    reset_hwm "$pid" || true
    c0=$(cpu_ticks "$pid")
    local TIMEFORMAT='%3R %3U %3S'
    if { time timeout "$RUN_TIMEOUT" "$@" "${cmd[@]}" >"$genlog" 2>&1; } 2>"$WORK/time"; then
        RUN_RC=0
    else
        RUN_RC=$?
    fi
    kill -0 "$pid" 2>/dev/null || die "$key (pid $pid) died during a $gen run: $(tail -n 5 "$genlog")"
    c1=$(cpu_ticks "$pid")
    RUN_TICKS=$((c1 - c0))
    RUN_HWM=$(status_kib "$pid" VmHWM)
    read -r RUN_WALL RUN_USR RUN_SYS <"$WORK/time"
    SENT[$key]=$((${SENT[$key]:-0} + msgs))
    RUN_OK=1 RUN_NOTE=- RUN_RATE=-
    if ((RUN_RC != 0)); then
        RUN_OK=0
        if ((RUN_RC == 124)); then RUN_NOTE=timeout; else RUN_NOTE=exit-$RUN_RC; fi
    fi
    if [[ $gen != smtp-source ]]; then
        read -r -a verdict <<<"$(check_json "$json" "$msgs")"
        if [[ ${verdict[0]} == ok ]]; then
            RUN_RATE=${verdict[2]}
        else
            RUN_OK=0
            if [[ $RUN_NOTE == - ]]; then RUN_NOTE=${verdict[1]}; else RUN_NOTE+=,${verdict[1]}; fi
        fi
    fi
    if ((!RUN_OK)); then
        log "$gen -> $key FAILED ($RUN_NOTE): $(tail -n 3 "$genlog" | tr '\n' ' ')"
    fi
    return 0
}

# smtpsink_counted FILE: the "messages" count of smtpsink's final statistics
# (printed on SIGTERM) in FILE, or nothing.
smtpsink_counted() {
    sed -nE 's/^[[:space:]]*messages[[:space:]]+([0-9]+).*/\1/p' "$1" | head -n 1
}

# ---------------------------------------------------------------- machine ----

# machine_md: the machine as Markdown bullets (no heading).
machine_md() {
    local cpu_model mem_kib
    cpu_model=$(sed -nE 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
    mem_kib=$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)
    printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf -- '- CPU: %s, nproc %s (affinity %s)\n' "${cpu_model:-unknown}" "$(nproc --all)" \
        "$(taskset -pc $$ 2>/dev/null | sed 's/.*: //' || echo unknown)"
    printf -- '- memory: %s MiB\n' "$((${mem_kib:-0} / 1024))"
    printf -- '- kernel: %s\n' "$(uname -srm)"
    printf -- '- load average now: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- smtpsink/smtpload: git %s, %s\n' \
        "$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
        "$(rustc --version 2>/dev/null || echo 'rustc unknown')"
    if [[ -x $SOURCE ]]; then
        printf -- '- postfix (smtp-sink, smtp-source): %s\n' \
            "$(dpkg-query -W -f='${Version}' postfix 2>/dev/null || echo unknown)"
    fi
    printf -- '- python3: %s\n' "$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unknown)"
}

# sent_note KEY: a Markdown bullet comparing smtpsink KEY's final message
# count (it must have been stopped) with what the generators sent it.
sent_note() {
    local counted
    counted=$(smtpsink_counted "$WORK/$1.out")
    if [[ -n $counted ]]; then
        printf -- '- %s counted %s messages in its final statistics; the generators sent it %s (incl. probe and warm-up).\n' \
            "$1" "$counted" "${SENT[$1]}"
    else
        printf -- '- %s final statistics had no "messages" line; the generators sent it %s messages.\n' "$1" "${SENT[$1]}"
    fi
}

# note_failed_run TITLE LOG: keep the tail of a failed run's output for the
# report's "Output of failed runs" (see report_tail).
note_failed_run() {
    [[ -s $2 ]] || return 0
    { printf '### %s\n\n```\n' "$1"
      tail -n 20 "$2"
      printf '```\n\n'; } >>"$WORK/genlogs.md"
}

# report_tail: the closing Markdown of a report: the bounds, smtpsink's count
# against what it was sent, failed runs (FAILED_RUNS, note_failed_run), QUICK,
# and smtpsink's final statistics (it must have been stopped).
report_tail() {
    # shellcheck disable=SC2016 # backticks are Markdown code spans
    printf -- '- Every run was bounded by `timeout %s`; a run counts only if the generator exited 0 (smtpload: and its JSON shows all messages accepted, no errors, no abort).\n' "$RUN_TIMEOUT"
    sent_note smtpsink
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
}

# cpu_busy_pct SECONDS: how busy all CPUs were over the next SECONDS, in
# percent (user+nice+system+irq+softirq+steal of /proc/stat).
cpu_busy_pct() {
    local a b
    a=$(awk '$1 == "cpu" { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
    sleep "$1"
    b=$(awk '$1 == "cpu" { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]
        printf "%.0f\n", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}

# results_files NAME: this run's results (REPORT, TSV and the ARTIFACTS
# folder, under results/NAME-<stamp>) and, in $WORK, the META (KEY=VALUE
# lines, written by meta) and RAW (tab-separated rows, written by raw) files
# a report helper reads.
results_files() {
    STAMP=$(date +%Y%m%d-%H%M%S)
    mkdir -p -- "$RESULTS_DIR"
    REPORT=$RESULTS_DIR/$1-$STAMP.md
    TSV=$RESULTS_DIR/$1-$STAMP.tsv
    ARTIFACTS=$RESULTS_DIR/$1-$STAMP
    RAW=$WORK/raw.tsv
    META=$WORK/meta
    : >"$RAW"
    : >"$META"
}
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }
raw() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$RAW"
}
