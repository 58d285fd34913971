#!/usr/bin/env bash
# tls-bench.sh: what TLS costs smtpsink, and how its TLS compares with other
# SMTP servers, side by side in one run, reported as ratios against targets.
#
# 1. Full TLS handshakes per second: a new connection per message, 1 KiB
#    messages, STARTTLS, no session resumption:
#      smtpload -q -c HS_CONNS -d HS_SECONDS -s 1024 --per-connection 1
#               --starttls --insecure --no-resumption
#    against smtpsink and its peers, all holding the same self-signed ECDSA
#    P-256 certificate (made here with openssl; smtpsink's own self-signed
#    certificate is P-256 too): node's `smtp-server` package (npm, installed
#    into the work directory; scripts/tls_node_sink.js), aiosmtpd with
#    `tls_context` (pip, lib.sh's venv; scripts/tls_aiosmtpd_sink.py) and a
#    private Postfix smtpd (smtpd_tls_security_level=may, the discard
#    transport; its own PID namespace, as scripts/mta-bench.sh runs MTAs).
#    Per run: smtpload's msgs/s (= full handshakes/s: every message is a new
#    connection with one full handshake, checked in its JSON) and the
#    server's CPU time per handshake: utime+stime(+cutime+cstime) of the
#    server's process tree from /proc/PID/stat before and after the run,
#    user and system time also apart (Postfix: master and every smtpd,
#    cleanup, qmgr, tlsmgr, ... it forked). Target: smtpsink >= 2x node
#    smtp-server's handshakes/s.
#    Debian's `postal` (installed with apt when missing) is tried as a
#    second TLS-capable generator against smtpsink (postal -s 100), and run
#    plaintext (-s 0) for comparison; what it measured comes from
#    smtpsink's own counters (GET /stats of --control) before and after.
# 2. Reused TLS connections, 1 KiB messages pipelined:
#      smtpload -q -c REUSE_CONNS -d REUSE_SECONDS -s 1024 [--starttls --insecure]
#    smtpsink's server CPU per message over TLS vs plaintext. Target <= 1.5x.
# 3. 1 MiB messages: the same with -s 1048576 (-c BIG_CONNS -d BIG_SECONDS):
#    smtpsink's server CPU per MiB over TLS vs plaintext. Target <= 2x.
# 4. The plaintext path's instructions per message with callgrind, current
#    vs the pre-TLS commit BASE_REV (65742e0), method of scripts/rules-bench.sh:
#    the server under `valgrind --tool=callgrind`, `smtpload -q -c 10 -m N
#    -s 1024` (pipelined), SIGTERM; Ir/msg = (Ir(N=MSGS) - Ir(N=BASE_MSGS)) /
#    (MSGS - BASE_MSGS), CG_REPEAT times (median). Target <= 1.02x. Also vs
#    OLD_REV (c12c671) when its binary is at hand. With CG_TLS=1 the TLS
#    path is counted the same way: Ir/msg over reused TLS connections
#    (--starttls; the handshakes cancel out), and Ir per full handshake
#    ((Ir(HS_CG_MSGS) - Ir(HS_CG_BASE)) / difference, a connection per
#    message, minus the same for plaintext connections), and Ir per MiB of
#    1 MiB messages over TLS and plaintext (BIG_CG_MSGS vs BIG_CG_BASE);
#    callgrind_annotate says where the instructions go.
# Diagnostics for parts 2 and 3 (one extra, untimed run each, plaintext
# and TLS, against the same smtpsink): its system calls (`perf stat` on the
# syscalls:sys_enter_* tracepoints) and a native profile (`perf record -e
# cpu-clock`, `perf report --sort sym`: each symbol's share of the samples
# times the CPU time sampled, per message or MiB), so the report says
# natively where TLS's extra CPU goes.
#
# Timing: servers run on CPU SRV_CPU, generators on GEN_CPU (taskset; PIN=0
# turns that off). Every timed comparison runs ROUNDS rounds, the order
# reversed every other round (A B / B A, ...: A/B/B/A); medians, min-max,
# the spread and the per-round ratios are reported. Every peer server runs
# for the whole of part 1 (idle when not measured). Each server gets an
# unrecorded warm-up run (WARMUP_SECONDS) before its first measured one.
#
# Output: a Markdown report on stdout and in results/tls-bench-<date>.md, a
# TSV (raw rows and derived rows) in results/tls-bench-<date>.tsv, and the
# first repeat's callgrind files in results/tls-bench-<date>/.
#
# Usage: scripts/tls-bench.sh
# Environment:
#   ROUNDS=N            rounds of each timed comparison (default 5; QUICK: 2)
#   HS_CONNS=N          connections of part 1 (default 10)
#   HS_SECONDS=S        seconds per part-1 run (default 5; QUICK: 1)
#   REUSE_CONNS=N       connections of part 2 (default 10)
#   REUSE_SECONDS=S     seconds per part-2 run (default 5; QUICK: 1)
#   BIG_CONNS=N         connections of part 3 (default 10)
#   BIG_SECONDS=S       seconds per part-3 run (default 5; QUICK: 1)
#   WARMUP_SECONDS=S    warm-up run per server and part (default 1)
#   PEERS="..."         peers of part 1 (default "node aiosmtpd postfix")
#   POSTAL=0            skip postal; POSTAL_SECONDS=S (default 10; QUICK: 2)
#                       per postal run, POSTAL_THREADS=N (default 10)
#   NODE_SMTP_SERVER=V  npm version spec of smtp-server (default 3)
#   EARLY_TALKER_DELAY=1  keep smtp-server's fixed 100 ms wait before each
#                       greeting (default: taken out, see tls_node_sink.js)
#   CG=0                skip part 4; MSGS (20000), BASE_MSGS (200), CG_REPEAT
#                       (3; QUICK: 1), SESSIONS (10) as in rules-bench.sh
#   CG_TLS=0            skip the TLS-path callgrind runs; HS_CG_MSGS (1000),
#                       HS_CG_BASE (100): their connection-per-message runs;
#                       BIG_CG_MSGS (40; 0 skips), BIG_CG_BASE (10): their
#                       1 MiB runs
#   DIAG=0              skip the diagnostics (perf stat, perf record); their
#                       runs: SC_MSGS (100000) 1 KiB and SC_BIG_MSGS (1000)
#                       1 MiB messages, plain and TLS; PERF_FREQ (2999 Hz)
#   TOP=N               functions per callgrind_annotate table (default 12)
#   PIN=0               no CPU pinning; SRV_CPU (0), GEN_CPU (1)
#   QUIET_WAIT=S        before parts 1 and 2-3, wait up to S s (default 120)
#                       for the machine to be under QUIET_PCT% busy (25)
#   BUSY_PCT=P          a timed run during which other processes used more
#                       than P% of the machine's CPU time (default 10) is run
#                       once more (after a quiet wait), at most REDO_MAX (8)
#                       times in all; each run's figure is in the report
#   QUICK=1             smoke run: the QUICK defaults above, MSGS / 10
#   BASE_REV=REV        pre-TLS baseline (default 65742e0), built from a git
#                       worktree BASE_WORKTREE (default /tmp/base-<rev>) into
#                       BASE_TARGET_DIR (default CARGO_TARGET_DIR + "-base");
#                       BASE_SMTPSINK_BIN=P: use this binary instead
#   OLD_REV=REV         older baseline (default c12c671); OLD_SMTPSINK_BIN=P
#                       its binary; without one it is measured only when
#                       OLD_TARGET_DIR (default CARGO_TARGET_DIR + "-old")
#                       already holds release/smtpsink, or with OLD_BUILD=1
#                       (built from a worktree OLD_WORKTREE, /tmp/base-<rev>)
#   SMTPSINK_BIN=P, SMTPLOAD_BIN=P  use these current binaries (both), no build;
#                       CUR_REV=TEXT names them in the report
#   CARGO_TARGET_DIR    where the current tree is built (default target/)
#   RUN_TIMEOUT=S       bound of each generator run (default 300)
#   BUILD_RETRIES, BUILD_RETRY_WAIT, BENCH_VENV: as in lib.sh
#
# Needs python3, timeout, taskset, pgrep, unshare (Postfix), openssl, git,
# cargo, valgrind and callgrind_annotate (part 4), perf (diagnostics,
# optional); installs nodejs/npm, postal and Postfix with apt when missing
# (no service starts), aiosmtpd with pip. A
# peer that cannot be set up is skipped and the report says why. Loopback
# only; every process is bounded by `timeout` and stopped by PID. Logging,
# clean-up (EXIT trap), builds, free ports, greeting probes and the machine
# description come from scripts/lib.sh.

set -euo pipefail

ENV_SMTPSINK_BIN=${SMTPSINK_BIN:-}
ENV_SMTPLOAD_BIN=${SMTPLOAD_BIN:-}
BUILD_RETRIES=${BUILD_RETRIES:-3} # before lib.sh, whose defaults are 2 and 3
if [[ ${QUICK:-0} == 1 ]]; then ROUNDS=${ROUNDS:-2}; else ROUNDS=${ROUNDS:-5}; fi
LIB_TAG=tls-bench
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if ((QUICK)); then
    : "${HS_SECONDS:=1}" "${REUSE_SECONDS:=1}" "${BIG_SECONDS:=1}" "${POSTAL_SECONDS:=2}"
    : "${CG_REPEAT:=1}"
fi
HS_CONNS=${HS_CONNS:-10}
HS_SECONDS=${HS_SECONDS:-5}
REUSE_CONNS=${REUSE_CONNS:-10}
REUSE_SECONDS=${REUSE_SECONDS:-5}
BIG_CONNS=${BIG_CONNS:-10}
BIG_SECONDS=${BIG_SECONDS:-5}
WARMUP_SECONDS=${WARMUP_SECONDS:-1}
PEERS=${PEERS:-node aiosmtpd postfix}
POSTAL=${POSTAL:-1}
POSTAL_SECONDS=${POSTAL_SECONDS:-10}
POSTAL_THREADS=${POSTAL_THREADS:-10}
NODE_SMTP_SERVER=${NODE_SMTP_SERVER:-3}
EARLY_TALKER_DELAY=${EARLY_TALKER_DELAY:-0}
CG=${CG:-1}
CG_TLS=${CG_TLS:-1}
MSGS=${MSGS:-20000}
BASE_MSGS=${BASE_MSGS:-200}
CG_REPEAT=${CG_REPEAT:-3}
SESSIONS=${SESSIONS:-10}
HS_CG_MSGS=${HS_CG_MSGS:-1000}
HS_CG_BASE=${HS_CG_BASE:-100}
BIG_CG_MSGS=${BIG_CG_MSGS:-40}
BIG_CG_BASE=${BIG_CG_BASE:-10}
DIAG=${DIAG:-1}
SC_MSGS=${SC_MSGS:-100000}
SC_BIG_MSGS=${SC_BIG_MSGS:-1000}
PERF_FREQ=${PERF_FREQ:-2999}
QUIET_WAIT=${QUIET_WAIT:-120}
QUIET_PCT=${QUIET_PCT:-25}
BUSY_PCT=${BUSY_PCT:-10}
TOP=${TOP:-12}
PIN=${PIN:-1}
SRV_CPU=${SRV_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
BASE_REV=${BASE_REV:-65742e0}
BASE_WORKTREE=${BASE_WORKTREE:-${TMPDIR:-/tmp}/base-$BASE_REV}
BASE_SMTPSINK_BIN=${BASE_SMTPSINK_BIN:-}
OLD_REV=${OLD_REV:-c12c671}
OLD_WORKTREE=${OLD_WORKTREE:-${TMPDIR:-/tmp}/base-$OLD_REV}
OLD_SMTPSINK_BIN=${OLD_SMTPSINK_BIN:-}
OLD_BUILD=${OLD_BUILD:-0}
SIZE=1024
BIG_SIZE=1048576
STOP_WAIT_S=120 # a server under valgrind may take a while to dump and exit

if ((QUICK)); then
    MSGS=$((MSGS / 10))
    HS_CG_MSGS=$((HS_CG_MSGS / 2))
    SC_MSGS=$((SC_MSGS / 10))
    SC_BIG_MSGS=$((SC_BIG_MSGS / 10))
fi
require_uint ROUNDS HS_CONNS HS_SECONDS REUSE_CONNS REUSE_SECONDS BIG_CONNS BIG_SECONDS \
    WARMUP_SECONDS POSTAL POSTAL_SECONDS POSTAL_THREADS EARLY_TALKER_DELAY CG CG_TLS MSGS \
    BASE_MSGS CG_REPEAT SESSIONS HS_CG_MSGS HS_CG_BASE BIG_CG_MSGS BIG_CG_BASE DIAG SC_MSGS SC_BIG_MSGS PERF_FREQ QUIET_WAIT QUIET_PCT BUSY_PCT TOP PIN SRV_CPU GEN_CPU OLD_BUILD \
    RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT QUICK
((ROUNDS >= 1 && HS_CONNS >= 1 && HS_SECONDS >= 1 && REUSE_CONNS >= 1 && REUSE_SECONDS >= 1 &&
    BIG_CONNS >= 1 && BIG_SECONDS >= 1 && CG_REPEAT >= 1 && SESSIONS >= 1 && POSTAL_SECONDS >= 1 &&
    POSTAL_THREADS >= 1)) ||
    die "ROUNDS, *_CONNS, *_SECONDS, CG_REPEAT, SESSIONS and POSTAL_THREADS must be at least 1"
((MSGS > BASE_MSGS)) || die "MSGS must be larger than BASE_MSGS"
((HS_CG_MSGS > HS_CG_BASE)) || die "HS_CG_MSGS must be larger than HS_CG_BASE"
((BIG_CG_MSGS == 0 || BIG_CG_MSGS > BIG_CG_BASE)) || die "BIG_CG_MSGS must be 0 or larger than BIG_CG_BASE"
((RUN_TIMEOUT >= HS_SECONDS + 30 && RUN_TIMEOUT >= REUSE_SECONDS + 30 && RUN_TIMEOUT >= BIG_SECONDS + 30)) ||
    die "RUN_TIMEOUT ($RUN_TIMEOUT) must be at least 30 s more than every *_SECONDS"
read -r -a PEER_LIST <<<"$PEERS"
for p in "${PEER_LIST[@]}"; do
    [[ $p =~ ^(node|aiosmtpd|postfix)$ ]] || die "unknown peer '$p' in PEERS (node, aiosmtpd, postfix)"
done
for tool in python3 timeout taskset openssl git pgrep; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
if ((CG)); then
    for tool in valgrind callgrind_annotate; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is required for part 4 (CG=0 skips it)"
    done
fi
if ((PIN)); then
    ncpu=$(nproc)
    if ((SRV_CPU >= ncpu || GEN_CPU >= ncpu || SRV_CPU == GEN_CPU)); then
        log "PIN: SRV_CPU=$SRV_CPU/GEN_CPU=$GEN_CPU do not fit $ncpu CPUs; not pinning"
        PIN=0
    fi
fi
HELPER=$LIB_DIR/tls_bench_report.py
NODE_SINK=$LIB_DIR/tls_node_sink.js
AIO_SINK=$LIB_DIR/tls_aiosmtpd_sink.py
for f in "$HELPER" "$NODE_SINK" "$AIO_SINK"; do
    [[ -f $f ]] || die "$f is missing"
done
T_START=$SECONDS
SERVER_TIMEOUT=$((4 * RUN_TIMEOUT + 600)) # the peers live through all of part 1
CG_SERVER_TIMEOUT=$((2 * RUN_TIMEOUT + 120))
SRV_PREFIX=()
GEN_PREFIX=()
if ((PIN)); then
    SRV_PREFIX=(taskset -c "$SRV_CPU")
    GEN_PREFIX=(taskset -c "$GEN_CPU")
fi

declare -A SKIP=()          # peer -> why it is not measured
declare -A VERSION=()       # server -> version text
declare -A SRV_PID=()       # key -> PID of its `timeout` wrapper (the root of its tree)
declare -A SRV_PORTS=()     # key -> port
declare -A SRV_DESC=()      # key -> its command line for the report
NOTES=()

# ---------------------------------------------------------------- cleanup ----

CG_PID=   # the `timeout` wrapper of the running callgrind server
CG_CHILD= # valgrind under it

# srv_stop KEY: stop server KEY (Postfix: SIGTERM to its namespace init,
# which passes it to the master; the kernel kills what is left with the
# init), SIGKILL after 15 s.
srv_stop() {
    local key=$1 pid=${SRV_PID[$1]:-} kids init
    [[ -n $pid ]] || return 0
    SRV_PID[$key]=
    if [[ $key == postfix ]]; then
        # timeout -> unshare -> bash init (PID 1 of the namespace) -> master
        kids=$(pgrep -P "$pid" | head -n 1 || true)
        init=
        [[ -z $kids ]] || init=$(pgrep -P "$kids" | head -n 1 || true)
        if [[ -n $init ]]; then
            kill -TERM "$init" 2>/dev/null || true
            local i
            for ((i = 0; i < 150; i++)); do
                kill -0 "$init" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$init" 2>/dev/null && kill -KILL "$init" 2>/dev/null
        fi
    fi
    stop_pid "$pid" 15 "$(pgrep -P "$pid" | head -n 1 || true)"
}
cg_stop() {
    local pid=$CG_PID child=$CG_CHILD
    CG_PID=
    CG_CHILD=
    stop_pid "$pid" "$STOP_WAIT_S" "$child"
}
cleanup_hook() { # run by lib.sh's EXIT trap, before stop_all
    local k
    cg_stop
    for k in "${!SRV_PID[@]}"; do
        srv_stop "$k"
    done
}

# apt_get PACKAGE...: apt-get install without service starts, waiting up to
# 5 min for a dpkg lock that someone else holds (lib.sh's apt_install_nostart
# fails at once then); one apt-get update and retry on failure.
apt_get() {
    local rc=0 created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created=1
        POLICY_RC_CREATED=1
    fi
    log "apt-get install $*"
    if ! timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 \
        install -y "$@" >>"$WORK/apt.log" 2>&1; then
        log "apt-get install $* failed; apt-get update and retrying"
        timeout 300 apt-get -q -o DPkg::Lock::Timeout=300 update >>"$WORK/apt.log" 2>&1 || true
        timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 \
            install -y "$@" >>"$WORK/apt.log" 2>&1 || rc=$?
    fi
    if ((created)); then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
    return "$rc"
}

# ----------------------------------------------------------------- builds ----

if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    CUR_TARGET_DIR=$CARGO_TARGET_DIR
else
    CUR_TARGET_DIR=$REPO_ROOT/target
fi
BASE_TARGET_DIR=${BASE_TARGET_DIR:-${CUR_TARGET_DIR%/}-base}
OLD_TARGET_DIR=${OLD_TARGET_DIR:-${CUR_TARGET_DIR%/}-old}
export CARGO_TARGET_DIR=$CUR_TARGET_DIR
SMTPSINK_BIN=$CUR_TARGET_DIR/release/smtpsink
SMTPLOAD_BIN=$CUR_TARGET_DIR/release/smtpload
use_binaries "$ENV_SMTPSINK_BIN" "$ENV_SMTPLOAD_BIN"


BASE_BIN="" OLD_BIN="" OLD_WHY=""
if ((CG)); then
    if [[ -n $BASE_SMTPSINK_BIN ]]; then
        [[ -x $BASE_SMTPSINK_BIN ]] || die "BASE_SMTPSINK_BIN=$BASE_SMTPSINK_BIN is not executable"
        BASE_BIN=$BASE_SMTPSINK_BIN
    else
        build_rev "$BASE_REV" "$BASE_WORKTREE" "$BASE_TARGET_DIR"
        BASE_BIN=$BUILT_BIN
    fi
    if [[ -n $OLD_SMTPSINK_BIN ]]; then
        if [[ -x $OLD_SMTPSINK_BIN ]]; then OLD_BIN=$OLD_SMTPSINK_BIN; else OLD_WHY="OLD_SMTPSINK_BIN=$OLD_SMTPSINK_BIN is not executable"; fi
    elif [[ -x $OLD_TARGET_DIR/release/smtpsink ]]; then
        OLD_BIN=$OLD_TARGET_DIR/release/smtpsink
    elif ((OLD_BUILD)); then
        build_rev "$OLD_REV" "$OLD_WORKTREE" "$OLD_TARGET_DIR"
        OLD_BIN=$BUILT_BIN
    else
        OLD_WHY="no binary of $OLD_REV at hand (set OLD_SMTPSINK_BIN, or OLD_BUILD=1 to build it)"
    fi
fi

make_work tls-bench
chmod 755 "$WORK" # Postfix's unprivileged processes read the certificate below it
BIN=$WORK/bin
CGD=$WORK/cg
ANNOT=$WORK/annot
mkdir -p -- "$BIN" "$CGD" "$ANNOT"
cp -- "$SMTPSINK_BIN" "$BIN/smtpsink"
cp -- "$SMTPLOAD_BIN" "$BIN/smtpload"
SMTPSINK_BIN=$BIN/smtpsink
SMTPLOAD_BIN=$BIN/smtpload
if [[ -n $BASE_BIN ]]; then cp -- "$BASE_BIN" "$BIN/smtpsink-base"; BASE_BIN=$BIN/smtpsink-base; fi
if [[ -n $OLD_BIN ]]; then cp -- "$OLD_BIN" "$BIN/smtpsink-old"; OLD_BIN=$BIN/smtpsink-old; fi
if [[ -z ${CUR_REV:-} ]]; then
    CUR_REV=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
    [[ -z $ENV_SMTPSINK_BIN ]] || CUR_REV="$ENV_SMTPSINK_BIN (given; the tree here is $CUR_REV)"
fi

results_files tls-bench

COMMANDS=()
show_cmd() {
    local s
    s=$(printf '%q ' "$@")
    s=${s//"$BIN"/bin}
    s=${s//"$LIB_DIR"/scripts}
    s=${s//"$WORK"/WORKDIR}
    printf '%s' "${s% }"
}
note_cmd() { COMMANDS+=("$*"); }

# --------------------------------------------------------- certificate ----

CERT=$WORK/tls/cert.pem
KEY=$WORK/tls/key.pem
mkdir -p -- "$WORK/tls"
chmod 755 "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$KEY" -out "$CERT" >"$WORK/tls/openssl.log" 2>&1 ||
    die "openssl could not make a certificate: $(tail -n 3 "$WORK/tls/openssl.log")"
chmod 644 "$KEY" "$CERT" # a throwaway key; Postfix's smtpd reads it
note_cmd "$(show_cmd openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$KEY" -out "$CERT")"

# ------------------------------------------------------------- the peers ----

NODE_DIR=$WORK/node
setup_node() {
    local v
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_get nodejs npm || { SKIP[node]="node/npm missing and apt-get install nodejs npm failed (see the apt log)"; return 1; }
    fi
    VERSION[node]="node $(node --version 2>/dev/null)"
    mkdir -p -- "$NODE_DIR"
    log "npm install smtp-server@$NODE_SMTP_SERVER (into $NODE_DIR)"
    if ! timeout 300 npm install --prefix "$NODE_DIR" --no-audit --no-fund --prefer-offline \
        --loglevel=error "smtp-server@$NODE_SMTP_SERVER" >"$WORK/npm.log" 2>&1; then
        SKIP[node]="npm install smtp-server@$NODE_SMTP_SERVER failed: $(tail -n 2 "$WORK/npm.log" | tr '\n' ' ')"
        return 1
    fi
    v=$(node -p "require('$NODE_DIR/node_modules/smtp-server/package.json').version" 2>/dev/null || echo unknown)
    VERSION[node]+=", smtp-server $v"
}
setup_aiosmtpd() {
    if ! ensure_venv aiosmtpd; then
        SKIP[aiosmtpd]="pip install aiosmtpd into $BENCH_VENV failed"
        return 1
    fi
    VERSION[aiosmtpd]="aiosmtpd $("$VENV_PY" -c 'import aiosmtpd; print(aiosmtpd.__version__)' 2>/dev/null), Python $("$VENV_PY" -c 'import platform; print(platform.python_version())')"
}
setup_postfix() {
    ((EUID == 0)) || { SKIP[postfix]="not root: a private Postfix instance needs root"; return 1; }
    command -v unshare >/dev/null 2>&1 || { SKIP[postfix]="unshare (util-linux) is missing"; return 1; }
    if [[ ! -x $POSTFIX_MASTER ]]; then
        if command -v debconf-set-selections >/dev/null 2>&1; then
            echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
        fi
        apt_get postfix || { SKIP[postfix]="postfix is not installed and apt-get install postfix failed"; return 1; }
    fi
    [[ -x $POSTFIX_MASTER && -x /usr/sbin/postfix ]] || { SKIP[postfix]="$POSTFIX_MASTER or /usr/sbin/postfix missing"; return 1; }
    getent passwd postfix >/dev/null || { SKIP[postfix]="no postfix user"; return 1; }
    VERSION[postfix]="Postfix $(dpkg-query -W -f='${Version}' postfix 2>/dev/null || echo unknown)"
}

# postfix_config DIR PORT: a private Postfix that offers STARTTLS with the
# certificate and discards everything it accepts (discard transport for
# every address class; queue, cleanup and qmgr as always).
postfix_config() {
    local d=$1 port=$2
    rm -rf -- "$d"
    mkdir -p -- "$d/conf" "$d/spool" "$d/data"
    chmod 755 "$d"
    chown postfix: "$d/data"
    cat >"$d/conf/main.cf" <<EOF
# tls-bench: a private Postfix instance that offers STARTTLS and discards mail.
compatibility_level = 3.6
queue_directory = $d/spool
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.tls-bench.localhost
mydomain = tls-bench.localhost
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
default_transport = discard:tls-bench
relay_transport = discard:tls-bench
local_transport = discard:tls-bench
virtual_transport = discard:tls-bench
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = may
smtpd_tls_cert_file = $CERT
smtpd_tls_key_file = $KEY
smtpd_tls_loglevel = 0
smtp_tls_security_level = none
message_size_limit = 67108864
biff = no
append_dot_mydomain = no
maillog_file = $d/maillog
maillog_file_prefixes = $d
EOF
    cat >"$d/conf/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
showq      unix  n - n - - showq
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
    /usr/sbin/postfix -c "$d/conf" check >"$d/check.log" 2>&1 || {
        SKIP[postfix]="postfix -c DIR check failed: $(tail -n 2 "$d/check.log" | tr '\n' ' ')"
        return 1
    }
}

# The namespace init of Postfix's PID namespace (write_ns_init in lib.sh;
# no bind mounts: `--` at once).
NS_INIT=$WORK/ns-init.sh
write_ns_init "$NS_INIT"

# server_cmd KEY PORT: the command line of server KEY in CMD.
server_cmd() {
    local key=$1 port=$2
    case $key in
    smtpsink) CMD=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --tls-cert "$CERT" --tls-key "$KEY"
        --json "$WORK/smtpsink.json") ;;
    node) CMD=(env "NODE_PATH=$NODE_DIR/node_modules" "EARLY_TALKER_DELAY=$EARLY_TALKER_DELAY"
        node "$NODE_SINK" --listen "127.0.0.1:$port" --cert "$CERT" --key "$KEY") ;;
    aiosmtpd) CMD=("$VENV_PY" "$AIO_SINK" --listen "127.0.0.1:$port" --cert "$CERT" --key "$KEY") ;;
    postfix) CMD=(unshare --fork --pid --kill-child=SIGKILL bash "$NS_INIT" --
        "$POSTFIX_MASTER" -c "$WORK/postfix/conf") ;;
    postal-sink) CMD=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --tls-cert "$CERT" --tls-key "$KEY"
        --control "127.0.0.1:$3") ;;
    *) die "unknown server $key" ;;
    esac
}

# srv_start KEY PORT [EXTRA]: start server KEY on 127.0.0.1:PORT under
# `timeout` (on SRV_CPU when pinning); wait for its greeting (30 s), then one
# plaintext and one STARTTLS message must be accepted. Returns 1 (SKIP[KEY]
# set, server stopped) when that fails.
srv_start() {
    local key=$1 port=$2 i why=''
    local -a CMD
    if [[ $key == postfix ]]; then
        postfix_config "$WORK/postfix" "$port" || return 1
    fi
    server_cmd "$key" "$port" "${3:-}"
    note_cmd "$(show_cmd "${SRV_PREFIX[@]}" timeout -k 10 "$SERVER_TIMEOUT" "${CMD[@]}") &"
    SRV_DESC[$key]=$(show_cmd "${CMD[@]}")
    log "starting $key on 127.0.0.1:$port"
    start_bg "$WORK/$key.out" "$WORK/$key.err" "${SRV_PREFIX[@]}" timeout -k 10 "$SERVER_TIMEOUT" "${CMD[@]}"
    SRV_PID[$key]=$LAST_PID
    SRV_PORTS[$key]=$port
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$LAST_PID" 2>/dev/null; then
            why="it exited at start: $(tail -n 3 "$WORK/$key.err" "$WORK/postfix/maillog" 2>/dev/null | tr '\n' ' ')"
            break
        fi
        probe_greeting "$port" 2 1 && break
        sleep 0.1
    done
    ((i < 300)) || why="no 220 greeting on 127.0.0.1:$port within 30 s"
    if [[ -z $why ]] &&
        ! timeout 30 "$SMTPLOAD_BIN" -q -c 1 -m 1 "127.0.0.1:$port" >"$WORK/$key.probe" 2>&1; then
        why="a plaintext test message failed: $(tail -n 3 "$WORK/$key.probe" | tr '\n' ' ')"
    fi
    if [[ -z $why ]] &&
        ! timeout 30 "$SMTPLOAD_BIN" -q -c 1 -m 1 --starttls --insecure --no-resumption \
            "127.0.0.1:$port" >"$WORK/$key.probe-tls" 2>&1; then
        why="a STARTTLS test message failed: $(tail -n 3 "$WORK/$key.probe-tls" | tr '\n' ' ')"
    fi
    if [[ -n $why ]]; then
        SKIP[$key]=$why
        log "$key: $why"
        srv_stop "$key"
        return 1
    fi
    log "$key (pid ${SRV_PID[$key]}) answers on 127.0.0.1:$port, STARTTLS works"
}

# ticks PID: "USER SYSTEM" CPU ticks of PID's process tree; tick_sum: their sum.
ticks() { python3 "$HELPER" ticks "$1"; }
tick_sum() { local u s; read -r u s <<<"$(ticks "$1")"; echo $((u + s)); }

# load_run PART VARIANT ROUND KEY ARGS...: one smtpload run (GEN_CPU) against
# server KEY with ARGS (before HOST:PORT), bounded by RUN_TIMEOUT; the
# server's CPU ticks (its process tree) before and after; rows into RAW
# (round "w": a warm-up, not reported). Sets RUN_OK.
FAILED_RUNS=0
# busy_jiffies: the machine's busy CPU time so far (all CPUs; /proc/stat
# user+nice+system+irq+softirq+steal, in USER_HZ ticks).
busy_jiffies() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
REDOS=0
REDO_LEFT=${REDO_MAX:-8}
load_run() {
    local part=$1 variant=$2 round=$3 key=$4 rc u0 s0 u1 s1 b0 b1 wall usr sys res foreign attempt
    shift 4
    local pid=${SRV_PID[$key]} port=${SRV_PORTS[$key]}
    local json=$WORK/runs/$part-$variant-$round.json
    local -a cmd=("$SMTPLOAD_BIN" -q --json "$json" "$@" "127.0.0.1:$port")
    mkdir -p -- "$WORK/runs"
    [[ $round == w ]] || note_cmd "$(show_cmd "${GEN_PREFIX[@]}" timeout "$RUN_TIMEOUT" "${cmd[@]}")   # part $part, $variant, round $round"
    local TIMEFORMAT='%3R %3U %3S'
    for ((attempt = 0; ; attempt++)); do
        rm -f -- "$json"
        rc=0
        kill -0 "$pid" 2>/dev/null || die "$key (pid $pid) is no longer running"
        read -r u0 s0 <<<"$(ticks "$pid")"
        b0=$(busy_jiffies)
        { time "${GEN_PREFIX[@]}" timeout "$RUN_TIMEOUT" "${cmd[@]}" >"${json%.json}.out" 2>&1 || rc=$?; } 2>"$WORK/time"
        b1=$(busy_jiffies)
        read -r u1 s1 <<<"$(ticks "$pid")"
        kill -0 "$pid" 2>/dev/null || die "$key (pid $pid) died during a run: $(tail -n 5 "$WORK/$key.err" | tr '\n' ' ')"
        read -r wall usr sys <"$WORK/time"
        # CPU time others used during the run, in % of the whole machine:
        # the machine's busy time less the server's and the generator's.
        foreign=$(awk -v b="$((b1 - b0))" -v s="$((u1 + s1 - u0 - s0))" -v u="$usr" -v y="$sys" -v w="$wall" \
            -v hz="$CLK_TCK" -v n="$(nproc)" 'BEGIN { f = b - s - (u + y) * hz; if (f < 0) f = 0
                printf "%.1f", (w > 0 ? 100 * f / (w * hz * n) : 0) }')
        if [[ $round != w ]] && ((attempt == 0 && REDO_LEFT > 0)) &&
            awk -v f="$foreign" -v m="$BUSY_PCT" 'BEGIN { exit !(f > m) }'; then
            REDO_LEFT=$((REDO_LEFT - 1))
            REDOS=$((REDOS + 1))
            log "  $part $variant r$round: others used ${foreign}% of the machine during the run; once more"
            wait_quiet redo quiet
            continue
        fi
        break
    done
    res=$(python3 "$HELPER" row --raw "$RAW" --part "$part" --variant "$variant" --round "$round" \
        --json "$json" --rc "$rc" --set "srv_ticks=$((u1 + s1 - u0 - s0))" --set "srv_user=$((u1 - u0))" \
        --set "srv_sys=$((s1 - s0))" --set "wall=$wall" --set "gen_usr=$usr" --set "gen_sys=$sys" \
        --set "foreign_pct=$foreign" --set "attempts=$((attempt + 1))")
    if [[ $res == ok* ]]; then
        RUN_OK=1
    else
        RUN_OK=0
        if [[ $round != w ]]; then
            FAILED_RUNS=$((FAILED_RUNS + 1))
            { printf '### part %s, %s, round %s\n\n```\n' "$part" "$variant" "$round"
              tail -n 20 "${json%.json}.out"
              printf '```\n\n'; } >>"$WORK/failed.md"
        fi
    fi
    log "  $part $variant r$round: $res; server $((u1 + s1 - u0 - s0)) ticks ($((u1 - u0)) user); others ${foreign}%"
}

# rounds PART KEYS ARGS...: ROUNDS rounds over the variants in KEYS (a
# space-separated list of VARIANT:SERVER[:EXTRA_ARG...]), the order reversed
# in every even round; each variant runs smtpload ARGS plus its extra args.
rounds() {
    local part=$1 keys=$2 r i
    shift 2
    local -a items order extra
    read -r -a items <<<"$keys"
    for ((r = 1; r <= ROUNDS; r++)); do
        order=()
        if ((r % 2)); then
            order=("${items[@]}")
        else
            for ((i = ${#items[@]} - 1; i >= 0; i--)); do order+=("${items[i]}"); done
        fi
        raw order "$part" - "$r" order "$(printf '%s ' "${order[@]%%:*}" | sed 's/ $//')"
        for i in "${order[@]}"; do
            IFS=: read -r -a extra <<<"$i"
            load_run "$part" "${extra[0]}" "$r" "${extra[1]}" "$@" "${extra[@]:2}"
        done
    done
}

# wait_quiet LABEL [quiet]: before a timed part, wait (up to QUIET_WAIT s)
# until the machine's CPUs are under QUIET_PCT% busy over a second (others
# share it); what was seen goes into the report (not with "quiet").
QUIET_LOG=()
wait_quiet() {
    local label=$1 t0=$SECONDS busy
    while :; do
        busy=$(cpu_busy_pct 1)
        ((busy < QUIET_PCT || SECONDS - t0 >= QUIET_WAIT)) && break
        log "machine ${busy}% busy before $label; waiting (up to ${QUIET_WAIT}s)"
        sleep 4
    done
    [[ -n ${2:-} ]] || QUIET_LOG+=("before $label: ${busy}% busy (waited $((SECONDS - t0)) s)")
}

# -------------------------------------------------- part 1: handshakes ----

P1_START=$SECONDS
for p in "${PEER_LIST[@]}"; do
    "setup_$p" || log "skipping $p: ${SKIP[$p]}"
done
HS_SERVERS=(smtpsink)
read -r -a ports < <(free_ports 6)
srv_start smtpsink "${ports[0]}" || die "smtpsink: ${SKIP[smtpsink]}"
VERSION[smtpsink]="smtpsink $CUR_REV (rustls, ring)"
pi=1
for p in "${PEER_LIST[@]}"; do
    if [[ -z ${SKIP[$p]:-} ]] && srv_start "$p" "${ports[pi]}"; then
        HS_SERVERS+=("$p")
    fi
    pi=$((pi + 1))
done
if [[ -n ${SRV_PID[node]:-} ]]; then
    VERSION[node]+=", early-talker delay $(grep -o 'early-talker-delay: [a-z]*' "$WORK/node.err" | head -n 1 | sed 's/.*: //')"
fi

HS_ARGS=(-c "$HS_CONNS" -s "$SIZE" --per-connection 1 --starttls --insecure --no-resumption)
wait_quiet "part 1"
for s in "${HS_SERVERS[@]}"; do
    log "part 1: warm-up of $s"
    load_run hs "$s" w "$s" "${HS_ARGS[@]}" -d "$WARMUP_SECONDS"
done
HS_KEYS=""
for s in "${HS_SERVERS[@]}"; do HS_KEYS+="$s:$s "; done
log "part 1: full handshakes, ${HS_SERVERS[*]}, $ROUNDS rounds of $HS_SECONDS s"
rounds hs "$HS_KEYS" "${HS_ARGS[@]}" -d "$HS_SECONDS"
for p in "${HS_SERVERS[@]}"; do
    [[ $p == smtpsink ]] || srv_stop "$p"
done
P1_ELAPSED=$((SECONDS - P1_START))

# --------------------------------------------- parts 2 and 3: TLS vs plain ----

P23_START=$SECONDS
R_ARGS=(-c "$REUSE_CONNS" -s "$SIZE")
wait_quiet "parts 2-3"
log "part 2: reused connections, 1 KiB, TLS vs plaintext"
load_run reuse plain w smtpsink "${R_ARGS[@]}" -d "$WARMUP_SECONDS"
load_run reuse tls w smtpsink "${R_ARGS[@]}" -d "$WARMUP_SECONDS" --starttls --insecure
rounds reuse "plain:smtpsink tls:smtpsink:--starttls:--insecure" "${R_ARGS[@]}" -d "$REUSE_SECONDS"
B_ARGS=(-c "$BIG_CONNS" -s "$BIG_SIZE")
log "part 3: 1 MiB messages, TLS vs plaintext"
load_run big plain w smtpsink "${B_ARGS[@]}" -d "$WARMUP_SECONDS"
load_run big tls w smtpsink "${B_ARGS[@]}" -d "$WARMUP_SECONDS" --starttls --insecure
rounds big "plain:smtpsink tls:smtpsink:--starttls:--insecure" "${B_ARGS[@]}" -d "$BIG_SECONDS"

# diag_run PART VARIANT MSGS ARGS...: one untimed smtpload run of MSGS
# messages against smtpsink under `perf stat` (its system calls), then one
# under `perf record` (a native profile; the server's CPU ticks of that run
# scale it); rows into RAW.
SC_EVENTS=(recvfrom sendto writev epoll_wait)
diag_run() {
    local part=$1 variant=$2 msgs=$3 out=$WORK/diag-$1-$2 spid ppid i u0 s0 u1 s1 ev
    shift 3
    spid=$(pgrep -P "${SRV_PID[smtpsink]}" | head -n 1)
    local -a gen=("${GEN_PREFIX[@]}" timeout "$RUN_TIMEOUT" "$SMTPLOAD_BIN" -q "$@" -m "$msgs"
        "127.0.0.1:${SRV_PORTS[smtpsink]}")
    local -a evs=()
    for ev in "${SC_EVENTS[@]}"; do evs+=(-e "syscalls:sys_enter_$ev"); done
    local -a stat=(perf stat -x ',' -o "$out.stat" "${evs[@]}" -p "$spid")
    local -a rec=(perf record -q -e cpu-clock -F "$PERF_FREQ" -o "$out.data" -p "$spid")
    local tool
    for tool in stat rec; do
        if [[ $tool == stat ]]; then
            note_cmd "$(show_cmd "${stat[@]}") &   # SIGINT after:"
            start_bg "$out.$tool.out" "$out.$tool.err" timeout -s INT "$RUN_TIMEOUT" "${stat[@]}"
        else
            note_cmd "$(show_cmd "${rec[@]}") &   # SIGINT after:"
            start_bg "$out.$tool.out" "$out.$tool.err" timeout -s INT "$RUN_TIMEOUT" "${rec[@]}"
        fi
        ppid=$LAST_PID
        sleep 0.5
        note_cmd "$(show_cmd "${gen[@]}")"
        read -r u0 s0 <<<"$(ticks "$spid")"
        "${gen[@]}" >"$out.$tool.gen" 2>&1 || log "diagnostic run $part $variant ($tool) failed: $(tail -n 2 "$out.$tool.gen" | tr '\n' ' ')"
        read -r u1 s1 <<<"$(ticks "$spid")"
        kill -INT "$(pgrep -P "$ppid" | head -n 1)" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$ppid" 2>/dev/null || break
            sleep 0.1
        done
        stop_pid "$ppid" 5
    done
    for ev in "${SC_EVENTS[@]}"; do
        raw syscalls "$part" "$variant" "$msgs" "$ev" \
            "$(awk -F, -v e="syscalls:sys_enter_$ev" '$3 == e { print $1 }' "$out.stat" 2>/dev/null)"
    done
    timeout 120 perf report -i "$out.data" --stdio --sort sym --percent-limit 0.2 >"$out.report" 2>/dev/null ||
        log "perf report failed for $part $variant"
    python3 "$HELPER" perf-rows --raw "$RAW" --part "$part" --variant "$variant" --units "$msgs" \
        --ticks "$((u1 + s1 - u0 - s0))" --file "$out.report"
}
DIAG_WHY=""
if ((DIAG)); then
    if ! command -v perf >/dev/null 2>&1; then
        DIAG_WHY="perf is not installed"
    elif ! timeout 20 perf stat -e syscalls:sys_enter_recvfrom true >/dev/null 2>&1; then
        DIAG_WHY="perf cannot count the syscalls:sys_enter_* tracepoints here"
    else
        log "diagnostics: system calls and native profiles (perf)"
        diag_run reuse plain "$SC_MSGS" "${R_ARGS[@]}"
        diag_run reuse tls "$SC_MSGS" "${R_ARGS[@]}" --starttls --insecure
        diag_run big plain "$SC_BIG_MSGS" "${B_ARGS[@]}"
        diag_run big tls "$SC_BIG_MSGS" "${B_ARGS[@]}" --starttls --insecure
    fi
else
    DIAG_WHY="DIAG=0"
fi
srv_stop smtpsink
P23_ELAPSED=$((SECONDS - P23_START))
sed -n '/^smtpsink/,$p' "$WORK/smtpsink.out" >"$WORK/smtpsink.final" 2>/dev/null || true

# ----------------------------------------------------------- postal ----

# postal_run MODE SSL_PCT SECONDS: postal (GEN_CPU) against the postal sink
# for SECONDS, then SIGINT (postal stops sending but does not exit) and
# SIGKILL 3 s later; smtpsink's /stats before and after into RAW.
postal_run() {
    local mode=$1 pct=$2 secs=$3 port=${SRV_PORTS[postal-sink]} t0 t1 s0 s1 w0 w1 ppid child i
    local -a cmd=(postal -t "$POSTAL_THREADS" -c 1 -m 1 -M 1 -s "$pct" -r 100000000 -p "$port"
        127.0.0.1 "$WORK/postal-users")
    note_cmd "$(show_cmd "${GEN_PREFIX[@]}" "${cmd[@]}") &   # postal, $mode: SIGINT after $secs s, SIGKILL 3 s later"
    s0=$(python3 "$HELPER" stats "http://127.0.0.1:$POSTAL_CPORT/stats") || die "GET /stats failed: $s0"
    t0=$(tick_sum "${SRV_PID[postal-sink]}")
    w0=$EPOCHREALTIME
    # postal writes postal.log (a line per message) into its working
    # directory; `timeout` is only a backstop (SIGKILL 30 s after the end).
    start_bg "$WORK/postal-$mode.out" "$WORK/postal-$mode.out" "${GEN_PREFIX[@]}" \
        timeout -s KILL "$((secs + 30))" env -C "$WORK" "${cmd[@]}"
    ppid=$LAST_PID
    sleep "$secs"
    child=$(pgrep -P "$ppid" | head -n 1 || true)
    [[ -z $child ]] || kill -INT "$child" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$ppid" 2>/dev/null || break
        sleep 0.1
    done
    w1=$EPOCHREALTIME
    [[ -z $child ]] || kill -KILL "$child" 2>/dev/null || true
    stop_pid "$ppid" 5 2>/dev/null # no "Killed" line from bash
    t1=$(tick_sum "${SRV_PID[postal-sink]}")
    s1=$(python3 "$HELPER" stats "http://127.0.0.1:$POSTAL_CPORT/stats") || die "GET /stats failed: $s1"
    python3 "$HELPER" postal-row --raw "$RAW" --mode "$mode" --before "$s0" --after "$s1" \
        --seconds "$secs" --wall "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')" \
        --ticks "$((t1 - t0))" --rc 0 --out "$WORK/postal-$mode.out" >"$WORK/postal-$mode.row"
    log "  postal $mode: $(cat "$WORK/postal-$mode.row")"
}

POSTAL_WHY=
if ((POSTAL)); then
    if ! command -v postal >/dev/null 2>&1; then
        apt_get postal || POSTAL_WHY="apt-get install postal failed (see the apt log)"
    fi
    if [[ -z $POSTAL_WHY ]] && command -v postal >/dev/null 2>&1; then
        VERSION[postal]="postal $(dpkg-query -W -f='${Version}' postal 2>/dev/null || echo unknown)"
        echo "postal@example.test" >"$WORK/postal-users"
        read -r pport POSTAL_CPORT < <(free_ports 2)
        srv_start postal-sink "$pport" "$POSTAL_CPORT" || die "the postal sink did not start: ${SKIP[postal-sink]}"
        log "postal: TLS (-s 100), $POSTAL_SECONDS s"
        postal_run tls 100 "$POSTAL_SECONDS"
        log "postal: plaintext (-s 0), $POSTAL_SECONDS s"
        postal_run plain 0 "$POSTAL_SECONDS"
        srv_stop postal-sink
        # What postal's TLS client offers (it links GnuTLS; the priority
        # string and credential calls are in the binary).
        meta POSTAL_PRIORITY "$(strings "$(command -v postal)" 2>/dev/null |
            grep -E '^(NORMAL|SECURE|PERFORMANCE)' | paste -sd' ' - || true)"
        meta POSTAL_CREDS "$(strings "$(command -v postal)" 2>/dev/null |
            grep -E '^gnutls_[a-z]+_allocate_client_credentials$' | paste -sd' ' - || true)"
        meta POSTAL_LIB "$(ldd "$(command -v postal)" 2>/dev/null | awk '/tls|ssl/ { print $1 }' | paste -sd' ' -)"
    elif [[ -z $POSTAL_WHY ]]; then
        POSTAL_WHY="postal is not installed"
    fi
else
    POSTAL_WHY="POSTAL=0"
fi

# --------------------------------------------------- part 4: callgrind ----

# cg_run VARIANT COUNT REP: one server under callgrind, COUNT messages,
# SIGTERM, read the totals (as rules-bench.sh). Variants: base (BASE_REV),
# old (OLD_REV), cur (plaintext client), tls (--starttls, connections
# reused), conn (plaintext, a connection per message), hs (--starttls
# --no-resumption, a connection per message).
cg_run() {
    local variant=$1 count=$2 rep=$3 port prefix ir rc t0 got
    read -r port < <(free_ports 1)
    prefix=$CGD/$variant-$count-r$rep
    local -a srv gen=("$SMTPLOAD_BIN" -q -c "$SESSIONS" -m "$count")
    if [[ $variant == big* ]]; then gen+=(-s "$BIG_SIZE"); else gen+=(-s "$SIZE"); fi
    case $variant in
    base) srv=("$BASE_BIN" --listen "127.0.0.1:$port") ;;
    old) srv=("$OLD_BIN" --listen "127.0.0.1:$port") ;;
    cur | tls | conn | hs | big | bigtls) srv=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --tls-cert "$CERT" --tls-key "$KEY") ;;
    *) die "unknown variant $variant" ;;
    esac
    case $variant in
    tls | bigtls) gen+=(--starttls --insecure) ;;
    conn) gen+=(--per-connection 1) ;;
    hs) gen+=(--per-connection 1 --starttls --insecure --no-resumption) ;;
    esac
    gen+=("127.0.0.1:$port")
    t0=$SECONDS
    log "callgrind: $variant, $count messages, repeat $rep"
    local -a cmd=(valgrind --tool=callgrind --vgdb=no "--callgrind-out-file=$prefix.cg" "${srv[@]}")
    note_cmd "$(show_cmd timeout -k 10 "$CG_SERVER_TIMEOUT" "${cmd[@]}") &"
    start_bg "$prefix.stdout" "$prefix.stderr" timeout -k 10 "$CG_SERVER_TIMEOUT" "${cmd[@]}"
    CG_PID=$LAST_PID
    # One probe that reads the greeting and the reply to QUIT: the same in
    # every run, so it cancels out of the differences.
    wait_greeting "$variant" "$CG_PID" "$port" "$prefix.stderr" 120 5 1
    CG_CHILD=$(pgrep -P "$CG_PID" | head -n 1 || true)
    note_cmd "$(show_cmd timeout "$RUN_TIMEOUT" "${gen[@]}")"
    if timeout "$RUN_TIMEOUT" "${gen[@]}" >"$prefix.gen" 2>&1; then rc=0; else rc=$?; fi
    ((rc == 0)) || die "smtpload against $variant: exit $rc: $(tail -n 5 "$prefix.gen" | tr '\n' ' ')"
    got=$(awk '$1 == "messages" { print $2 " " $4; exit }' "$prefix.gen")
    [[ $got == "$count 0" ]] || die "smtpload against $variant: expected $count accepted, 0 failed; got '$got'"
    kill -0 "$CG_PID" 2>/dev/null || die "$variant server died: $(tail -n 5 "$prefix.stderr")"
    note_cmd "kill -TERM <server>   # callgrind writes $(show_cmd "$prefix.cg") on exit"
    cg_stop
    ir=$(awk '/^totals:/ { print $2; exit }' "$prefix.cg" 2>/dev/null || true)
    [[ $ir =~ ^[0-9]+$ ]] || die "$variant: callgrind output $prefix.cg is missing or incomplete"
    got=$(awk '$1 == "messages" { print $2; exit }' "$prefix.stdout")
    [[ $got == "$count" ]] || die "$variant: smtpsink counted '${got:-nothing}' messages, expected $count"
    raw cg cg "$variant@$count" "$rep" ir "$ir"
    if [[ $variant == tls || $variant == hs ]]; then
        got=$(awk '$1 == "tls" { print $2; exit }' "$prefix.stdout")
        raw cg cg "$variant@$count" "$rep" handshakes "${got:-?}"
    fi
    log "  Ir $ir ($((SECONDS - t0)) s)"
}

CG_START=$SECONDS
if ((CG)); then
    CG_VARIANTS=(base cur)
    [[ -z $OLD_BIN ]] || CG_VARIANTS=(base old cur)
    for ((rep = 1; rep <= CG_REPEAT; rep++)); do
        for v in "${CG_VARIANTS[@]}"; do
            cg_run "$v" "$BASE_MSGS" "$rep"
            cg_run "$v" "$MSGS" "$rep"
        done
    done
    if ((CG_TLS)); then
        cg_run tls "$BASE_MSGS" 1
        cg_run tls "$MSGS" 1
        for v in conn hs; do
            cg_run "$v" "$HS_CG_BASE" 1
            cg_run "$v" "$HS_CG_MSGS" 1
        done
        if ((BIG_CG_MSGS > 0)); then
            for v in big bigtls; do
                cg_run "$v" "$BIG_CG_BASE" 1
                cg_run "$v" "$BIG_CG_MSGS" 1
            done
        fi
    fi
    mkdir -p -- "$ARTIFACTS"
    for f in "$CGD"/*-r1.cg; do
        name=$(basename -- "${f%-r1.cg}")
        callgrind_annotate --auto=no --threshold=100 "$f" >"$ANNOT/$name.annot" 2>/dev/null ||
            log "callgrind_annotate failed on $f"
        cp -- "$f" "$ARTIFACTS/$name.callgrind.out"
    done
fi
CG_ELAPSED=$((SECONDS - CG_START))

# ----------------------------------------------------------------- report ----

RUNTIME=$((SECONDS - T_START))
for s in smtpsink "${PEER_LIST[@]}" postal; do
    meta "VERSION_$s" "${VERSION[$s]:-}"
    meta "DESC_$s" "${SRV_DESC[$s]:-}"
done
for p in "${PEER_LIST[@]}"; do
    meta "SKIP_$p" "${SKIP[$p]:-}"
done
meta DATE "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta HS_SERVERS "${HS_SERVERS[*]}"
meta PEERS "$PEERS"
meta ROUNDS "$ROUNDS"
meta HS_CONNS "$HS_CONNS"
meta HS_SECONDS "$HS_SECONDS"
meta REUSE_CONNS "$REUSE_CONNS"
meta REUSE_SECONDS "$REUSE_SECONDS"
meta BIG_CONNS "$BIG_CONNS"
meta BIG_SECONDS "$BIG_SECONDS"
meta BIG_SIZE "$BIG_SIZE"
meta WARMUP_SECONDS "$WARMUP_SECONDS"
meta PIN "$PIN"
meta SRV_CPU "$SRV_CPU"
meta GEN_CPU "$GEN_CPU"
meta CLK_TCK "$CLK_TCK"
meta NPROC "$(nproc)"
meta QUICK "$QUICK"
meta EARLY_TALKER_DELAY "$EARLY_TALKER_DELAY"
meta POSTAL_WHY "$POSTAL_WHY"
meta DIAG_WHY "$DIAG_WHY"
meta POSTAL_SECONDS "$POSTAL_SECONDS"
meta POSTAL_THREADS "$POSTAL_THREADS"
meta CG "$CG"
meta CG_TLS "$CG_TLS"
meta MSGS "$MSGS"
meta BASE_MSGS "$BASE_MSGS"
meta HS_CG_MSGS "$HS_CG_MSGS"
meta HS_CG_BASE "$HS_CG_BASE"
meta BIG_CG_MSGS "$BIG_CG_MSGS"
meta BIG_CG_BASE "$BIG_CG_BASE"
meta PERF_FREQ "$PERF_FREQ"
meta CG_REPEAT "$CG_REPEAT"
meta SESSIONS "$SESSIONS"
meta TOP "$TOP"
meta CUR_REV "$CUR_REV"
meta CUR_SHA "$(sha256sum "$SMTPSINK_BIN" | cut -c1-12)"
meta BASE_REV "$BASE_REV"
meta BASE_SHA "$([[ -z $BASE_BIN ]] || sha256sum "$BASE_BIN" | cut -c1-12)"
meta BASE_FROM "${BASE_SMTPSINK_BIN:-built from $BASE_WORKTREE into $BASE_TARGET_DIR}"
meta OLD_REV "$OLD_REV"
meta OLD_SHA "$([[ -z $OLD_BIN ]] || sha256sum "$OLD_BIN" | cut -c1-12)"
meta OLD_FROM "${OLD_SMTPSINK_BIN:-$OLD_TARGET_DIR/release/smtpsink}"
meta OLD_WHY "$OLD_WHY"
meta VALGRIND "$(valgrind --version 2>/dev/null || echo none)"
meta OPENSSL "$(openssl version)"
meta RUNTIME_S "$RUNTIME (part 1: $P1_ELAPSED s, parts 2-3: $P23_ELAPSED s, callgrind: $CG_ELAPSED s)"
meta FAILED_RUNS "$FAILED_RUNS"
meta REDOS "$REDOS"
meta BUSY_PCT "$BUSY_PCT"
meta REPRODUCE "${ENV_SMTPSINK_BIN:+SMTPSINK_BIN=$ENV_SMTPSINK_BIN SMTPLOAD_BIN=$ENV_SMTPLOAD_BIN }CARGO_TARGET_DIR=$CUR_TARGET_DIR BASE_TARGET_DIR=$BASE_TARGET_DIR${OLD_SMTPSINK_BIN:+ OLD_SMTPSINK_BIN=$OLD_SMTPSINK_BIN} ROUNDS=$ROUNDS HS_SECONDS=$HS_SECONDS REUSE_SECONDS=$REUSE_SECONDS BIG_SECONDS=$BIG_SECONDS QUICK=$QUICK scripts/tls-bench.sh"
for n in "${NOTES[@]}"; do meta NOTE "$n"; done
meta QUIET "$(printf '%s; ' "${QUIET_LOG[@]}" | sed 's/; $//')"
meta LOAD_END "$(cut -d' ' -f1-3 /proc/loadavg)"

machine_md >"$WORK/machine.md"
printf -- '- node: %s\n- smtpsink/smtpload measured: %s\n' "$(node --version 2>/dev/null || echo none)" \
    "$CUR_REV" >>"$WORK/machine.md"
printf '%s\n' "${COMMANDS[@]}" >"$WORK/commands.txt"
touch "$WORK/failed.md" "$WORK/smtpsink.final"
python3 "$HELPER" report --raw "$RAW" --meta "$META" --commands "$WORK/commands.txt" \
    --machine "$WORK/machine.md" --annot-dir "$ANNOT" --failed "$WORK/failed.md" \
    --server-json "$WORK/smtpsink.json" --server-final "$WORK/smtpsink.final" \
    --tsv-out "$TSV" >"$WORK/report.md" || die "the report failed (raw data: $RAW)"
cp -- "$WORK/report.md" "$REPORT"
cat "$REPORT"
log "report: $REPORT"
log "TSV: $TSV"
if ((CG)); then log "callgrind files: $ARTIFACTS/"; fi
