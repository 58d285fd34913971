#!/usr/bin/env bash
# store-bench.sh: benchmark smtpsink's Maildir storage (--maildir DIR
# [--fsync]) against its peers, side by side in one run, on the disk the
# repository lives on.
#
# Every run gets a fresh server and a fresh, empty directory: the server
# starts, smtpload sends its messages, the server is stopped (smtpsink then
# writes its --json statistics) and the files are counted. A run counts only
# when smtpload's JSON shows every message accepted with no error AND the
# directory holds exactly one file per message (none in tmp/; smtpsink: its
# own "stored" count agrees, no store errors). In the first round (CHECK=all:
# every round) each Maildir is also checked by scripts/maildir_check.py
# --expect N (bodies byte-exact by CRC, no duplicates, none missing). Before
# each run `sync` flushes what the last one left dirty, outside the measured
# time. The run directories are all removed at the end, not between runs:
# on ext4 without a journal, creating files right after many were deleted
# is several times slower (the allocator skips inodes freed in the last
# 1-6 minutes, fs/ext4/ialloc.c recently_deleted()), which would charge one
# run's clean-up to the next; for the same reason the script first waits
# (SETTLE_MAX) until creating 3000 files is fast. Cases of a workload run in
# an order rotated every round; an unrecorded warm-up (a tenth of each case)
# comes first. Reported: medians over rounds, min-max as the noise, ratios
# against the targets.
#
# Workloads (smtpload pipelined where the server offers PIPELINING):
#   1 store    1 KiB, 50 connections
#       discard           smtpsink (no --maildir)                 -m DISCARD_MSGS
#       maildir           smtpsink --maildir DIR                  -m MAILDIR_MSGS
#       smtp-sink-dump    smtp-sink -d DIR/%H%M%S/ (one dump file
#                         per message; -u nobody as root)         -m DUMP_MSGS
#       aiosmtpd-maildir  aiosmtpd + scripts/aiosmtpd_maildir.py
#                         (mailbox.Maildir, its fsync disabled)   -m PYMD_MSGS
#       fs-floor          no server: one thread creates MAILDIR_MSGS files
#                         as a Maildir delivery does (open O_CREAT|O_EXCL in
#                         tmp/, write 1277 bytes, close, rename to new/): the
#                         kernel's own cost per stored message
#     targets: maildir/discard msgs/s >= 0.5; maildir/smtp-sink-dump >= 3
#   2 durable  1 KiB
#       group-commit      smtpsink --maildir DIR --fsync, 50 connections
#                                                                 -m GROUP_MSGS
#       fsync-per-msg     the same server, smtpload -c 1 --no-pipelining:
#                         one message per fsync batch             -m LOCKSTEP_MSGS
#       aiosmtpd-fsync    aiosmtpd + mailbox.Maildir, fsync of the file and
#                         of new/ per message, 50 connections     -m PYFSYNC_MSGS
#     target: group-commit >= 5x the msgs/s of an fsync per message
#     (messages per fsync batch from the sink's JSON for each smtpsink run)
#   3 big      1 MiB (-s 1048576), 10 connections, -m BIG_MSGS
#       maildir-1mib      smtpsink --maildir DIR: server CPU s per MiB stored
#       cp, cat, dd, cp-files
#                         copying a file of the same total size into the
#                         same filesystem (cp, cat > FILE, dd bs=64K through
#                         a user buffer) and cp -r of BIG_MSGS files of 1 MiB
#     target: smtpsink CPU per MiB within 2x of cp's (user+sys)
#
# Usage: scripts/store-bench.sh
# Environment:
#   ROUNDS=N          alternating rounds (default 3)
#   QUICK=1           divide every message count by 10 (smoke run)
#   WORKLOADS="..."   which of "store durable big" to run (default all)
#   DISCARD_MSGS=N    default 200000     MAILDIR_MSGS=N   default 50000
#   DUMP_MSGS=N       default 50000      PYMD_MSGS=N      default 10000
#   GROUP_MSGS=N      default 30000      LOCKSTEP_MSGS=N  default 3000
#   PYFSYNC_MSGS=N    default 3000       BIG_MSGS=N       default 500
#   CHECK=first|all|none
#                     when to run maildir_check.py on the Maildirs (default
#                     first: round 1)
#   STORE_PARENT=DIR  where the scratch directories go (default results/ of
#                     the repository: the disk the repository is on; it must
#                     not be tmpfs -- the report names the filesystem)
#   RUN_TIMEOUT=S     bound of each generator run and copy (default 300)
#   SETTLE_MAX=S      most seconds to wait, before the runs, for file
#                     creation to be fast again (default 420)
#   SMTPSINK_BIN=P, SMTPLOAD_BIN=P
#                     use these binaries instead of building the workspace
#   BUILD_RETRIES, BUILD_RETRY_WAIT, BENCH_VENV: as in lib.sh
#
# Installs Debian's postfix package when smtp-sink is missing (no Postfix
# master daemon left running) and aiosmtpd into lib.sh's venv (the aiosmtpd
# cases are skipped, and the report says so, when that fails). Loopback
# only; every run is bounded; stops only the processes it started; removes
# its scratch directories at exit (up to ~14 GiB and ~400k files with the
# defaults; checked against the free space first).
#
# Writes results/store-bench-<date>.md (the report, also printed) and
# results/store-bench-<date>.tsv (one line a run).

set -euo pipefail

# Binary overrides must be read before lib.sh sets its defaults.
ENV_SMTPSINK_BIN=${SMTPSINK_BIN:-}
ENV_SMTPLOAD_BIN=${SMTPLOAD_BIN:-}

LIB_TAG=store-bench
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

: "${WORKLOADS:=store durable big}"
: "${DISCARD_MSGS:=200000}"
: "${MAILDIR_MSGS:=50000}"
: "${DUMP_MSGS:=50000}"
: "${PYMD_MSGS:=10000}"
: "${GROUP_MSGS:=30000}"
: "${LOCKSTEP_MSGS:=3000}"
: "${PYFSYNC_MSGS:=3000}"
: "${BIG_MSGS:=500}"
: "${CHECK:=first}"
: "${STORE_PARENT:=$RESULTS_DIR}"
CONNS=50
SIZE=1024
BIG_CONNS=10
BIG_SIZE=1048576
SETTLE_S=1
REPORT_PY=$LIB_DIR/store_report.py
CHECK_PY=$LIB_DIR/maildir_check.py

require_uint ROUNDS QUICK DISCARD_MSGS MAILDIR_MSGS DUMP_MSGS PYMD_MSGS GROUP_MSGS LOCKSTEP_MSGS \
    PYFSYNC_MSGS BIG_MSGS RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((RUN_TIMEOUT >= 1)) || die "RUN_TIMEOUT must be at least 1"
[[ $CHECK =~ ^(first|all|none)$ ]] || die "CHECK must be first, all or none (got '$CHECK')"
read -r -a WL_LIST <<<"$WORKLOADS"
for w in "${WL_LIST[@]}"; do
    [[ $w =~ ^(store|durable|big)$ ]] || die "unknown workload '$w' in WORKLOADS (store, durable, big)"
done
wl_on() { [[ " ${WL_LIST[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------ binaries ----

ensure_postfix
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is required"
use_binaries "$ENV_SMTPSINK_BIN" "$ENV_SMTPLOAD_BIN"
"$SMTPSINK_BIN" --help 2>/dev/null | grep -q -- '--maildir' || die "$SMTPSINK_BIN has no --maildir"

NOTES=()
SKIPPED=()
HAVE_AIO=0
if ensure_venv aiosmtpd; then
    HAVE_AIO=1
else
    SKIPPED+=("the aiosmtpd cases: aiosmtpd could not be installed into $BENCH_VENV")
fi

make_work store-bench
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p -- "$RESULTS_DIR" "$STORE_PARENT"
REPORT=$RESULTS_DIR/store-bench-$STAMP.md
TSV=$RESULTS_DIR/store-bench-$STAMP.tsv
# The scratch directories: on the filesystem under test, removed at exit.
STORE=$(mktemp -d "$STORE_PARENT/.store-bench.XXXXXX")
chmod 755 "$STORE"   # smtp-sink writes as nobody
cleanup_hook() {
    [[ -z ${STORE:-} || ! -d $STORE ]] || rm -rf -- "$STORE"
}
FS_TYPE=$(df -PT -- "$STORE" | awk 'NR == 2 { print $2 }')
FS_LINE=$(df -hT -- "$STORE" | awk 'NR == 2 { print $1 " (" $2 "), mounted on " $7 ", " $5 " free of " $3 }')
FS_OPTS=$(findmnt -n -o OPTIONS -T "$STORE" 2>/dev/null || echo unknown)
FS_DEV=$(df -P -- "$STORE" | awk 'NR == 2 { print $1 }')
FS_JOURNAL=
if [[ $FS_TYPE == ext[34] ]]; then
    if compgen -G "/proc/fs/jbd2/$(basename -- "$FS_DEV")-*" >/dev/null; then
        FS_JOURNAL="with a journal (jbd2)"
    else
        FS_JOURNAL="**without a journal** (no /proc/fs/jbd2 entry for $(basename -- "$FS_DEV"))"
    fi
fi
if [[ $FS_TYPE == tmpfs || $FS_TYPE == ramfs ]]; then
    NOTES+=("**the scratch directory is on $FS_TYPE, not a disk: fsync costs nothing there** (set STORE_PARENT)")
fi
log "scratch directories in $STORE: $FS_LINE"

# -------------------------------------------------------------- cases ----

div=1
if ((QUICK)); then div=10; fi
q() { local n=$(($1 / div)); echo $((n > 0 ? n : 1)); }

# One entry per case: workload, name, server kind, messages, generator
# options (before HOST:PORT; -m is added).
C_WL=() C_NAME=() C_KIND=() C_MSGS=() C_ARGS=()
add_case() { C_WL+=("$1") C_NAME+=("$2") C_KIND+=("$3") C_MSGS+=("$4") C_ARGS+=("$5"); }
if wl_on store; then
    add_case store discard smtpsink "$(q "$DISCARD_MSGS")" "-c $CONNS -s $SIZE"
    add_case store maildir smtpsink-md "$(q "$MAILDIR_MSGS")" "-c $CONNS -s $SIZE"
    add_case store smtp-sink-dump smtp-sink-d "$(q "$DUMP_MSGS")" "-c $CONNS -s $SIZE"
    if ((HAVE_AIO)); then
        add_case store aiosmtpd-maildir aiosmtpd-md "$(q "$PYMD_MSGS")" "-c $CONNS -s $SIZE"
    fi
    add_case store fs-floor copy "$(q "$MAILDIR_MSGS")" ""
fi
if wl_on durable; then
    add_case durable group-commit smtpsink-fsync "$(q "$GROUP_MSGS")" "-c $CONNS -s $SIZE"
    add_case durable fsync-per-msg smtpsink-fsync "$(q "$LOCKSTEP_MSGS")" "-c 1 -s $SIZE --no-pipelining"
    if ((HAVE_AIO)); then
        add_case durable aiosmtpd-fsync aiosmtpd-fsync "$(q "$PYFSYNC_MSGS")" "-c $CONNS -s $SIZE"
    fi
fi
BIG_N=$(q "$BIG_MSGS")
if wl_on big; then
    add_case big maildir-1mib smtpsink-md "$BIG_N" "-c $BIG_CONNS -s $BIG_SIZE"
    for c in cp cat dd cp-files; do add_case big "$c" copy "$BIG_N" ""; done
fi
((${#C_NAME[@]})) || die "no cases to run"

# case_argv KIND PORT DIR JSON: the server's command line in SERVER_ARGV.
case_argv() {
    local kind=$1 port=$2 dir=$3 json=$4
    case $kind in
        smtpsink) SERVER_ARGV=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --json "$json") ;;
        smtpsink-md) SERVER_ARGV=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --maildir "$dir" --json "$json") ;;
        smtpsink-fsync)
            SERVER_ARGV=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --maildir "$dir" --fsync --json "$json") ;;
        smtp-sink-d)
            # %H%M%S/: a directory a second, so that the 32-bit random file
            # names (appended to the template) rarely collide.
            SERVER_ARGV=("$SINK")
            ((EUID != 0)) || SERVER_ARGV+=(-u nobody)
            SERVER_ARGV+=(-d "$dir/%H%M%S/" -m 1024 "127.0.0.1:$port" 1024)
            ;;
        aiosmtpd-md | aiosmtpd-fsync)
            local mode=nosync
            [[ $kind == aiosmtpd-md ]] || mode=fsync
            SERVER_ARGV=(env "PYTHONPATH=$LIB_DIR" "$VENV_PY" -m aiosmtpd -n -l "127.0.0.1:$port"
                -c aiosmtpd_maildir.MaildirHandler "$dir" "$mode")
            ;;
        *) die "unknown server kind $kind" ;;
    esac
}

# case_desc KIND: the command line for the report.
case_desc() {
    local SERVER_ARGV
    case_argv "$1" PORT DIR FILE
    SERVER_ARGV[0]=$(basename -- "${SERVER_ARGV[0]}")
    [[ ${SERVER_ARGV[0]} != env ]] || SERVER_ARGV=(PYTHONPATH=scripts python "${SERVER_ARGV[@]:3}")
    echo "${SERVER_ARGV[*]}"
}

# ------------------------------------------------ disk space and settling ----

# Nothing is deleted before the script ends: every run stores into a new
# directory. On ext4 a file creation skips inodes freed in the last minute
# (up to 6 minutes while their inode table block is dirty; fs/ext4/ialloc.c
# recently_deleted(), which applies when the filesystem has no journal), and
# checking each costs a buffer lookup under the directory's lock: right after
# 100k files were deleted, creating files is many times slower. Deleting
# between runs would charge that to whichever run came next.
need_kib=0
for ci in "${!C_NAME[@]}"; do
    case ${C_WL[ci]} in
        big) per=$((BIG_SIZE / 1024 + 4)) ;;
        *) per=4 ;;
    esac
    [[ ${C_KIND[ci]} != smtpsink ]] || per=0
    need_kib=$((need_kib + C_MSGS[ci] * per * (ROUNDS + 1)))
done
if wl_on big; then need_kib=$((need_kib + 2 * BIG_N * (BIG_SIZE / 1024 + 4))); fi
need_kib=$((need_kib + 1024 * 1024))   # 1 GiB to spare
avail_kib=$(df -Pk -- "$STORE" | awk 'NR == 2 { print $4 }')
((avail_kib >= need_kib)) ||
    die "$STORE: $((avail_kib / 1024)) MiB free, the runs keep about $((need_kib / 1024)) MiB until the end (lower the message counts or ROUNDS)"
log "the runs keep about $((need_kib / 1024 - 1024)) MiB until the end ($((avail_kib / 1024)) MiB free)"

# fs_settle: wait (up to SETTLE_MAX s) until creating files in a new
# directory under $STORE runs at full speed again: 3000 empty files in less
# than 0.3 s (normally ~0.05 s; just after a mass deletion, several seconds).
SETTLE_MAX=${SETTLE_MAX:-420}
require_uint SETTLE_MAX
SETTLE_WAITED=0
fs_settle() {
    local t0=$SECONDS secs i=0
    while :; do
        i=$((i + 1))
        secs=$(python3 - "$STORE/settle-$i" <<'PY'
import os, sys, time
d = sys.argv[1]
os.makedirs(d)
t = time.perf_counter()
for n in range(3000):
    os.close(os.open(os.path.join(d, str(n)), os.O_CREAT | os.O_WRONLY, 0o600))
print(f"{time.perf_counter() - t:.3f}")
PY
)
        if awk -v s="$secs" 'BEGIN { exit !(s < 0.3) }'; then
            break
        fi
        if ((SECONDS - t0 >= SETTLE_MAX)); then
            log "file creation is still slow (${secs}s for 3000) after ${SETTLE_MAX}s; going on"
            NOTES+=("file creation on $FS_DEV was still slow when the runs began (${secs} s for 3000 empty files after waiting ${SETTLE_MAX} s): another process may be deleting many files")
            break
        fi
        log "creating 3000 files took ${secs}s: the filesystem still skips recently deleted inodes; waiting 15 s"
        sleep 15
    done
    SETTLE_WAITED=$((SECONDS - t0))
}
fs_settle

# ------------------------------------------------------- the copy source ----

SRC_FILE=$STORE/src.bin
SRC_DIR=$STORE/src-files
if wl_on big; then
    log "making the copy source: $BIG_N x $BIG_SIZE bytes (one file, and $BIG_N files)"
    head -c "$((BIG_N * BIG_SIZE))" /dev/urandom >"$SRC_FILE"
    mkdir -p -- "$SRC_DIR"
    (cd -- "$SRC_DIR" && split -b "$BIG_SIZE" -a 6 -- "$SRC_FILE" part.)
    cat -- "$SRC_FILE" "$SRC_DIR"/* >/dev/null   # into the page cache
    sync
fi

# ------------------------------------------------------------ one run ----

printf '%s\n' "$(python3 "$REPORT_PY" header)" >"$TSV"
FAILED_RUNS=0
RUN_DIR=

# count_files KIND DIR: "FILES TMPFILES BYTES" the run left.
count_files() {
    local kind=$1 dir=$2 top=$2/new tmpn=0
    case $kind in
        smtpsink) echo "0 0 0"; return ;;
        smtp-sink-d) top=$dir ;;
        *) [[ ! -d $dir/tmp ]] || tmpn=$(find "$dir/tmp" -type f | wc -l) ;;
    esac
    find "$top" -type f -printf '%s\n' 2>/dev/null |
        awk -v t="$tmpn" '{ n++; b += $1 } END { printf "%d %d %d\n", n, t, b }'
}

# shellcheck disable=SC2016 # expanded by sh
CAT_TO='exec cat -- "$1" >"$2"'
# The floor: what one Maildir delivery costs the kernel here, with no server
# and one thread: create in tmp/, write FLOOR_BYTES (about what smtpsink
# stores for a 1 KiB message, trace fields included), close, rename to new/.
FLOOR_BYTES=1277
FLOOR_PY='
import os, sys, time
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tmp, new = os.path.join(d, "tmp"), os.path.join(d, "new")
os.makedirs(tmp)
os.makedirs(new)
data = b"x" * (size - 2) + b"\r\n"
t0, c0 = time.perf_counter(), os.times()
for i in range(n):
    name = f"{i}.floor"
    fd = os.open(os.path.join(tmp, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, data)
    os.close(fd)
    os.rename(os.path.join(tmp, name), os.path.join(new, name))
c1 = os.times()
print(f"{time.perf_counter() - t0:.3f} {c1.user - c0.user:.3f} {c1.system - c0.system:.3f}")
'
# run_copy CASE MSGS: one timed copy of the source (or the floor loop);
# sets RUN_* like gen_run, and CNT_*.
run_copy() {
    local c=$1 msgs=$2 dst=$RUN_DIR/dst TIMEFORMAT='%3R %3U %3S' cmd want=$((BIG_N * BIG_SIZE))
    case $c in
        cp) cmd=(cp -- "$SRC_FILE" "$dst") ;;
        cat) cmd=(sh -c "$CAT_TO" _ "$SRC_FILE" "$dst") ;;
        dd) cmd=(dd "if=$SRC_FILE" "of=$dst" bs=64K status=none) ;;
        cp-files) cmd=(cp -r -- "$SRC_DIR" "$dst") ;;
        fs-floor)
            cmd=(python3 -c "$FLOOR_PY" "$dst" "$msgs" "$FLOOR_BYTES")
            want=$((msgs * FLOOR_BYTES))
            ;;
    esac
    RUN_RC=0
    { time timeout "$RUN_TIMEOUT" "${cmd[@]}" >"$WORK/copy.out" 2>&1; } 2>"$WORK/time" || RUN_RC=$?
    read -r RUN_WALL RUN_USR RUN_SYS <"$WORK/time"
    # The floor times its loop itself (no interpreter start-up).
    [[ $c != fs-floor ]] || read -r RUN_WALL RUN_USR RUN_SYS <"$WORK/copy.out" || true
    RUN_TICKS=- RUN_RATE=- RUN_OK=1 RUN_NOTE=-
    if ((RUN_RC != 0)); then RUN_OK=0 RUN_NOTE=exit-$RUN_RC; fi
    local b
    b=$(find "$dst" -type f -printf '%s\n' 2>/dev/null | awk '{ b += $1 } END { print b + 0 }')
    CNT_FILES=$(find "$dst" -type f 2>/dev/null | wc -l) CNT_TMP=0 CNT_BYTES=$b
    if ((RUN_OK && b != want)); then RUN_OK=0 RUN_NOTE=wrote-$b-bytes; fi
}

# run_case CI ROUND [record]: one run of case CI.
run_case() {
    local ci=$1 round=$2 record=${3:-record}
    local wl=${C_WL[ci]} name=${C_NAME[ci]} kind=${C_KIND[ci]} msgs=${C_MSGS[ci]}
    local d=$WORK/r$round-$name json port SERVER_ARGV check=- key=srv
    local s_msgs=- s_stored=- s_bytes=- s_err=- s_batches=- s_mpb=- s_p50=- s_p99=-
    mkdir -p -- "$d"
    json=$d/sink.json
    # A new directory every run; none is removed before the end (see
    # fs_settle).
    RUN_DIR=$STORE/runs/r$round-$name
    [[ ! -e $RUN_DIR ]] || RUN_DIR=$RUN_DIR-$RANDOM
    mkdir -p -- "$RUN_DIR"
    [[ $kind != smtp-sink-d ]] || chown nobody "$RUN_DIR" 2>/dev/null || chmod 777 "$RUN_DIR"
    sync
    if [[ $kind == copy ]]; then
        run_copy "$name" "$msgs"
    else
        read -r port < <(free_ports 1)
        case_argv "$kind" "$port" "$RUN_DIR" "$json"
        start_bg "$d/server.out" "$d/server.err" "${SERVER_ARGV[@]}"
        SERVER_PID[srv]=$LAST_PID
        SERVER_PORT[srv]=$port
        wait_greeting "$name" "$LAST_PID" "$port" "$d/server.err" 20
        gen_run "smtpload-$name" "$msgs" "${C_ARGS[ci]} -m $msgs" "$key" "$d/gen.log"
        stop_server "$key"
        read -r CNT_FILES CNT_TMP CNT_BYTES < <(count_files "$kind" "$RUN_DIR")
        if [[ $kind == smtpsink* ]]; then
            read -r s_msgs s_stored s_bytes s_err s_batches s_mpb s_p50 s_p99 < <(python3 "$REPORT_PY" sinkjson "$json")
            [[ $kind == smtpsink ]] || CNT_BYTES=$s_bytes
        fi
        # The run counts only when everything was stored.
        local why=()
        if [[ $kind != smtpsink ]]; then
            ((CNT_FILES == msgs)) || why+=("files=$CNT_FILES/$msgs")
            ((CNT_TMP == 0)) || why+=("tmp=$CNT_TMP")
        fi
        if [[ $kind == smtpsink* ]]; then
            [[ $s_msgs == "$msgs" ]] || why+=("sink-messages=$s_msgs")
            if [[ $kind != smtpsink ]]; then
                [[ $s_stored == "$msgs" ]] || why+=("stored=$s_stored")
                [[ $s_err == 0 ]] || why+=("store-errors=$s_err")
            fi
        fi
        if ((${#why[@]})); then
            local w
            w=$(IFS=,; echo "${why[*]}")
            RUN_OK=0
            if [[ $RUN_NOTE == - ]]; then RUN_NOTE=$w; else RUN_NOTE+=,$w; fi
            log "$name: not everything was stored ($w)"
        fi
        # Byte-exact? (Maildirs only: smtp-sink's dump files are no Maildir.)
        if [[ $record == record && $kind != smtpsink && $kind != smtp-sink-d ]] &&
            [[ $CHECK == all || ($CHECK == first && $round == 1) ]]; then
            if python3 "$CHECK_PY" "$RUN_DIR" --expect "$msgs" >"$d/check.out" 2>&1; then
                check=ok
            else
                check=FAILED
                RUN_OK=0
                if [[ $RUN_NOTE == - ]]; then RUN_NOTE="check-failed"; else RUN_NOTE+=",check-failed"; fi
                note_failed_run "round $round, $name: maildir_check.py" "$d/check.out"
            fi
            log "$name: maildir_check: $(tail -n 1 "$d/check.out" | sed 's/^ *//')"
        fi
    fi
    if [[ $record != record ]]; then
        ((RUN_OK)) || log "warm-up of $name failed ($RUN_NOTE)"
        return 0
    fi
    ((RUN_OK)) || FAILED_RUNS=$((FAILED_RUNS + 1))
    if ((!RUN_OK)) && [[ -s $d/gen.log ]]; then
        note_failed_run "round $round, $name (exit $RUN_RC, $RUN_NOTE)" "$d/gen.log"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$wl" "$name" "$kind" "$msgs" "$RUN_RC" "$RUN_OK" "$RUN_WALL" "$RUN_USR" "$RUN_SYS" \
        "$RUN_TICKS" "$RUN_RATE" "$CNT_FILES" "$CNT_BYTES" "$s_err" "$s_batches" "$s_mpb" "$s_p50" \
        "$s_p99" "$check" "$RUN_NOTE" >>"$TSV"
    local cpu
    if [[ $RUN_TICKS == - ]]; then
        cpu=$(awk -v u="$RUN_USR" -v s="$RUN_SYS" 'BEGIN { printf "%.3f", u + s }')
    else
        cpu=$(awk -v t="$RUN_TICKS" -v c="$CLK_TCK" 'BEGIN { printf "%.3f", t / c }')
    fi
    log "$(printf 'round %s %-8s %-17s %7s msgs %8.3fs %9.0f msg/s  CPU %ss%s  %s' "$round" "$wl" "$name" \
        "$msgs" "$RUN_WALL" "$(awk -v m="$msgs" -v w="$RUN_WALL" 'BEGIN { print m / (w > 0 ? w : 1e-9) }')" \
        "$cpu" "$([[ $s_batches == - || $s_batches == 0 ]] || printf '  %.1f msgs/batch' "$s_mpb")" \
        "$( ((RUN_OK)) && echo ok || echo "FAILED ($RUN_NOTE)")")"
    sleep "$SETTLE_S"
}

# ------------------------------------------------------------ measure ----

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# Unrecorded warm-up: a tenth of every case.
SAVE_MSGS=("${C_MSGS[@]}")
for ci in "${!C_NAME[@]}"; do
    [[ ${C_KIND[ci]} != copy ]] || continue
    C_MSGS[ci]=$((C_MSGS[ci] / 10 > 0 ? C_MSGS[ci] / 10 : 1))
    log "warm-up: ${C_NAME[ci]} (${C_MSGS[ci]} messages)"
    run_case "$ci" 0 norecord
done
C_MSGS=("${SAVE_MSGS[@]}")

START_S=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    for wl in store durable big; do
        cis=()
        for ci in "${!C_NAME[@]}"; do
            [[ ${C_WL[ci]} != "$wl" ]] || cis+=("$ci")
        done
        n=${#cis[@]}
        ((n)) || continue
        # Rotate the order of the cases by one position every round.
        for ((k = 0; k < n; k++)); do
            run_case "${cis[(k + round - 1) % n]}" "$round"
        done
    done
done
ELAPSED_S=$((SECONDS - START_S))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------- report ----

smtpload_ver=$("$SMTPLOAD_BIN" --version 2>/dev/null || echo smtpload)
# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# Storage benchmark: smtpsink --maildir vs its peers\n\n'
    printf '## Machine\n\n'
    machine_md
    printf -- '- load average before/after: %s / %s; measuring took %ss (plus warm-up)\n' "$LOAD_BEFORE" "$LOAD_AFTER" "$ELAPSED_S"
    printf -- '- filesystem under test: %s%s; options %s; device %s%s\n' "$FS_LINE" "${FS_JOURNAL:+, $FS_JOURNAL}" "$FS_OPTS" "$FS_DEV" \
        "$([[ -e /sys/block/$(basename -- "$FS_DEV")/queue/rotational ]] && printf ' (rotational=%s)' "$(cat "/sys/block/$(basename -- "$FS_DEV")/queue/rotational")")"
    printf -- '- scratch directory: %s (the repository is at %s)\n' "$STORE" "$REPO_ROOT"
    printf -- '- generator: %s; rounds: %s (case order rotated every round), QUICK=%s, CHECK=%s; timeout %ss per run\n\n' \
        "$smtpload_ver" "$ROUNDS" "$QUICK" "$CHECK" "$RUN_TIMEOUT"
    printf '## Cases\n\n| Workload | Case | Server (DIR: a fresh empty directory every run) | smtpload options (before HOST:PORT) |\n|---|---|---|---|\n'
    for ci in "${!C_NAME[@]}"; do
        if [[ ${C_KIND[ci]} == copy ]]; then
            case ${C_NAME[ci]} in
                cp) what='cp SRC DST' ;; cat) what='cat SRC > DST' ;; dd) what='dd if=SRC of=DST bs=64K' ;;
                cp-files) what="cp -r SRCDIR DSTDIR ($BIG_N files of $BIG_SIZE bytes)" ;;
                fs-floor)
                    printf '| %s | %s | no server: one Python thread creates %s files of %s bytes: open(tmp/F, O_CREAT\\|O_EXCL), write, close, rename to new/F | – |\n' \
                        "${C_WL[ci]}" "${C_NAME[ci]}" "${C_MSGS[ci]}" "$FLOOR_BYTES"
                    continue
                    ;;
            esac
            printf '| %s | %s | `%s` (SRC: %s bytes, in the page cache) | – |\n' "${C_WL[ci]}" "${C_NAME[ci]}" "$what" "$((BIG_N * BIG_SIZE))"
        else
            printf '| %s | %s | `%s` | `-q --json F %s -m %s` |\n' "${C_WL[ci]}" "${C_NAME[ci]}" \
                "$(case_desc "${C_KIND[ci]}")" "${C_ARGS[ci]}" "${C_MSGS[ci]}"
        fi
    done
    printf '\n'
    python3 "$REPORT_PY" report --tsv "$TSV" --clk "$CLK_TCK"
    printf '## Notes\n\n'
    printf -- '- Each run stored into a new, empty directory; none was removed before the end of the script (all are then), because on ext4 a file creation skips inodes freed in the last 1-6 minutes at a cost under the directory lock (fs/ext4/ialloc.c recently_deleted(), used when there is no journal): right after 100k files were deleted, smtpsink --maildir stored ~10x slower here, all of it kernel time. Before the runs the script waited until 3000 empty files could be created in under 0.3 s (waited %ss).\n' "$SETTLE_WAITED"
    printf -- '- Every run had a fresh server; it counts only if smtpload exited 0 with every message accepted and no error (its JSON), and the directory then held exactly one file per message and nothing in tmp/ (smtpsink: its JSON'"'"'s stored = messages, 0 store errors). `sync` ran before each run, outside the measured time.\n'
    printf -- '- Server CPU is utime+stime of the server process, all threads (/proc/PID/stat, %s ticks/s), over the generator run; the kernel'"'"'s background writeback (flusher threads) is in nobody'"'"'s figure. Generator, server and copies share the %s CPUs.\n' "$CLK_TCK" "$(nproc)"
    printf -- '- aiosmtpd does not offer PIPELINING: smtpload runs lock-step against it (still 50 connections). Python'"'"'s mailbox.Maildir.add fsyncs every message file by default; the aiosmtpd-maildir case replaces that with a plain close (scripts/aiosmtpd_maildir.py, mode nosync) so that it compares with smtpsink --maildir without --fsync; aiosmtpd-fsync keeps it and also fsyncs new/.\n'
    printf -- '- smtp-sink -d writes one dump file per message (its own headers, then the message with LF line ends) and has no fsync; the template %%H%%M%%S/ makes a directory a second.\n'
    printf -- '- smtpsink --fsync group commit: each batch is one syncfs(2) of the filesystem (data of every message in the batch), the renames into new/, one fsync of new/. The fsync-per-msg case runs the same server with one connection in lock-step, so every batch holds one message.\n'
    printf -- '- coreutils cp and cat copy with copy_file_range(2) (an in-kernel copy); dd bs=64K reads and writes through a user buffer, as a server does.\n'
    for s in "${SKIPPED[@]}"; do printf -- '- Skipped: %s.\n' "$s"; done
    for n in "${NOTES[@]}"; do printf -- '- %s.\n' "$n"; done
    if ((FAILED_RUNS)); then
        printf -- '- %s run(s) failed and are excluded from the medians (output below).\n' "$FAILED_RUNS"
    else
        printf -- '- All runs succeeded.\n'
    fi
    if ((QUICK)); then printf -- '- QUICK=1: message counts divided by 10; CPU figures are coarse.\n'; fi
    if [[ -s $WORK/genlogs.md ]]; then
        printf '\n## Output of failed runs\n\n'
        cat "$WORK/genlogs.md"
    fi
    last=$(find "$WORK" -path '*r1-maildir/check.out' 2>/dev/null | head -n 1)
    if [[ -n $last ]]; then
        printf '\n## maildir_check.py, round 1, smtpsink --maildir\n\n```\n'
        cat -- "$last"
        printf '```\n'
    fi
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw data: $TSV"
