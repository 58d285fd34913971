#!/usr/bin/env bash
# profile.sh: instructions per message of smtpsink vs Postfix's smtp-sink, and
# where smtpsink spends them.
#
# 1. Instruction counts (deterministic, unaffected by a noisy machine): each
#    server runs under `valgrind --tool=callgrind` on a free 127.0.0.1 port and
#    receives a fixed number of messages; SIGTERM stops it and callgrind writes
#    its totals. The per-message cost is the difference between a full run and
#    a small baseline run (same generator, same sessions) divided by the
#    difference in messages, which cancels start-up, shutdown and connection
#    set-up. Workloads:
#      pipelined  smtpload -q -c 10 -m MSGS -s 1024           (1 KiB, PIPELINING)
#      lockstep   smtp-source -s 10 -m MSGS -l 1024 -d         (1 KiB, one command at a time)
#      1mib       smtpload -q -c 10 -m BIG_MSGS -s 1048576     (1 MiB, PIPELINING)
#    Reported: Ir (instructions executed in user space) per message and per
#    body byte, and the ratio smtpsink / smtp-sink (target: <= 0.10 for the
#    pipelined 1 KiB workload).
# 2. Hot spots: the top functions of smtpsink by self Ir (callgrind_annotate,
#    summed over inlined call sites) for the pipelined and 1 MiB runs; and,
#    natively (not under valgrind), a `perf record -g` profile of smtpsink
#    during a pipelined smtpload run (`perf report --stdio --no-children
#    --sort symbol`), skipped with a message where `perf stat -e instructions
#    true` fails. Where the hardware counts instructions, `perf stat` also
#    gives native user+kernel instructions per message for both servers.
# 3. A Markdown report (tables, hot spots, machine, exact commands) on stdout
#    and in results/profile-<date>.md; the smtpsink callgrind files go to
#    results/profile-<date>/ for callgrind_annotate or kcachegrind.
#
# Usage: scripts/profile.sh
# Environment:
#   MSGS=N            messages of the 1 KiB workloads (default 20000)
#   BASE_MSGS=N       messages of their baseline runs (default 200)
#   BIG_MSGS=N        messages of the 1 MiB workload, 0 to skip it (default 200)
#   BIG_BASE_MSGS=N   messages of its baseline run (default 20)
#   SESSIONS=N        concurrent sessions of every generator (default 10)
#   PERF=0            skip the perf part
#   PERF_MSGS=N       messages of each native perf run (default 300000)
#   TOP=N             functions per hot-spot list (default 15)
#   RUN_TIMEOUT=S     bound of each generator run (default 300); a server is
#                     bounded by 2*RUN_TIMEOUT+120 s
#   BUILD_RETRIES=N   retry a failing `cargo build --release --workspace` N
#                     times, BUILD_RETRY_WAIT seconds apart (defaults 3, 60)
#
# Needs valgrind, callgrind_annotate, python3, timeout, cargo, Postfix's
# smtp-sink and smtp-source in /usr/sbin, and, when run as root, setpriv or
# runuser: smtp-sink refuses to run as root, and `smtp-sink -u nobody` would
# drop privileges before callgrind writes its file, so under valgrind the
# whole process runs as nobody instead. Builds once, then profiles copies of
# the binaries (others may rebuild meanwhile). Loopback only; every run is
# bounded; stops only the processes it started. Logging, clean-up (EXIT
# trap), the build and free ports come from scripts/lib.sh.

set -euo pipefail

BUILD_RETRIES=${BUILD_RETRIES:-3} # before lib.sh, whose default is 2
LIB_TAG=profile
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

MSGS=${MSGS:-20000}
BASE_MSGS=${BASE_MSGS:-200}
BIG_MSGS=${BIG_MSGS:-200}
BIG_BASE_MSGS=${BIG_BASE_MSGS:-20}
SESSIONS=${SESSIONS:-10}
PERF=${PERF:-1}
PERF_MSGS=${PERF_MSGS:-300000}
TOP=${TOP:-15}
SMALL_SIZE=1024
BIG_SIZE=1048576
STOP_WAIT_S=120 # a server under valgrind may take a while to dump and exit

require_uint MSGS BASE_MSGS BIG_MSGS BIG_BASE_MSGS SESSIONS PERF PERF_MSGS TOP RUN_TIMEOUT \
    BUILD_RETRIES BUILD_RETRY_WAIT
((MSGS > BASE_MSGS)) || die "MSGS must be larger than BASE_MSGS"
((BIG_MSGS == 0 || BIG_MSGS > BIG_BASE_MSGS)) || die "BIG_MSGS must be 0 or larger than BIG_BASE_MSGS"
((SESSIONS >= 1 && PERF_MSGS >= 1 && TOP >= 1 && RUN_TIMEOUT >= 1)) ||
    die "SESSIONS, PERF_MSGS, TOP and RUN_TIMEOUT must be at least 1"
SERVER_TIMEOUT=$((2 * RUN_TIMEOUT + 120))

# ---------------------------------------------------------------- cleanup ----

SRV_PID=   # the `timeout` wrapper of the running server (we started it)
SRV_CHILD= # the server process itself (child of SRV_PID)

# Stop the running server: SIGTERM to its timeout wrapper (which passes it on),
# up to STOP_WAIT_S seconds, then SIGKILL to the server and the wrapper.
stop_profiled() {
    local pid=$SRV_PID child=$SRV_CHILD
    SRV_PID=
    SRV_CHILD=
    stop_pid "$pid" "$STOP_WAIT_S" "$child"
}
cleanup_hook() { stop_profiled; } # run by lib.sh's EXIT trap

# ------------------------------------------------------------ environment ----

for tool in valgrind callgrind_annotate python3 timeout cargo; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
[[ -x $SINK && -x $SOURCE ]] ||
    die "$SINK and $SOURCE are required (Debian: apt-get install postfix, or run scripts/compare.sh once)"

# Under valgrind, smtp-sink runs as nobody from the start (see the header).
AS_NOBODY=()
SINK_NATIVE_ARGS=()
if ((EUID == 0)); then
    nobody_gid=$(id -g nobody 2>/dev/null) || die "no user 'nobody' to run smtp-sink as"
    if command -v setpriv >/dev/null 2>&1; then
        AS_NOBODY=(setpriv --reuid=nobody "--regid=$nobody_gid" --clear-groups)
    elif command -v runuser >/dev/null 2>&1; then
        AS_NOBODY=(runuser -u nobody --)
    else
        die "running as root: setpriv or runuser is needed to run smtp-sink under valgrind as nobody"
    fi
    SINK_NATIVE_ARGS=(-u nobody)
fi

build_release

make_work profile
chmod 0711 "$WORK" # let nobody reach $WORK/cg
BIN=$WORK/bin
CG=$WORK/cg
mkdir -p -- "$BIN" "$CG"
if ((EUID == 0)); then chown nobody "$CG"; fi
cp -- "$SMTPSINK_BIN" "$SMTPLOAD_BIN" "$BIN/"
SMTPSINK_BIN=$BIN/smtpsink
SMTPLOAD_BIN=$BIN/smtpload
GIT_REV=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
BIN_SHA=$(sha256sum "$SMTPSINK_BIN" | cut -c1-12)

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p -- "$RESULTS_DIR"
REPORT=$RESULTS_DIR/profile-$STAMP.md
ARTIFACTS=$RESULTS_DIR/profile-$STAMP

# Commands as run, for the report: paths shown relative to the repository.
COMMANDS=()
show_cmd() {
    local s
    s=$(printf '%q ' "$@")
    s=${s//"$BIN"/target/release}
    s=${s//"$CG"/CGDIR}
    s=${s//"$WORK"/WORKDIR}
    printf '%s' "${s% }"
}

# ---------------------------------------------------------------- servers ----

# start_profiled SERVER MODE PORT PREFIX: MODE is callgrind or native; writes
# PREFIX.stdout/.stderr (and PREFIX.cg under callgrind); sets SRV_PID,
# SRV_CHILD. Waits (up to 120 s) for the greeting: probes of up to 5 s that
# also read the reply to QUIT. Every run gets exactly one successful probe,
# so it cancels out of the differences.
start_profiled() {
    local server=$1 mode=$2 port=$3 prefix=$4
    local -a cmd=() vg=()
    if [[ $mode == callgrind ]]; then
        vg=(valgrind --tool=callgrind --vgdb=no "--callgrind-out-file=$prefix.cg")
    fi
    case $server in
    smtpsink) cmd=("${vg[@]}" "$SMTPSINK_BIN" --listen "127.0.0.1:$port") ;;
    smtp-sink)
        if [[ $mode == callgrind ]]; then
            cmd=("${AS_NOBODY[@]}" "${vg[@]}" "$SINK" "127.0.0.1:$port" 256)
        else
            cmd=("$SINK" "${SINK_NATIVE_ARGS[@]}" "127.0.0.1:$port" 256)
        fi
        ;;
    *) die "unknown server $server" ;;
    esac
    COMMANDS+=("$(show_cmd timeout -k 10 "$SERVER_TIMEOUT" "${cmd[@]}") &")
    start_bg "$prefix.stdout" "$prefix.stderr" timeout -k 10 "$SERVER_TIMEOUT" "${cmd[@]}"
    SRV_PID=$LAST_PID
    wait_greeting "$server" "$SRV_PID" "$port" "$prefix.stderr" 120 5 1
    SRV_CHILD=$(pgrep -P "$SRV_PID" | head -n 1 || true)
    [[ -n $SRV_CHILD ]] || die "cannot find the $server process under its timeout wrapper (pid $SRV_PID)"
}

# gen_cmd WORKLOAD COUNT PORT: the generator command, into the array GEN.
GEN=()
gen_cmd() {
    local wl=$1 count=$2 port=$3
    case $wl in
    pipelined) GEN=("$SMTPLOAD_BIN" -q -c "$SESSIONS" -m "$count" -s "$SMALL_SIZE" "127.0.0.1:$port") ;;
    lockstep) GEN=("$SOURCE" -s "$SESSIONS" -m "$count" -l "$SMALL_SIZE" -d "127.0.0.1:$port") ;;
    1mib) GEN=("$SMTPLOAD_BIN" -q -c "$SESSIONS" -m "$count" -s "$BIG_SIZE" "127.0.0.1:$port") ;;
    *) die "unknown workload $wl" ;;
    esac
}

# check_gen WORKLOAD COUNT LOG: did the generator deliver COUNT messages?
check_gen() {
    local wl=$1 count=$2 glog=$3 got
    if [[ $wl == lockstep ]]; then
        if grep -qiE 'fatal|warning|error' "$glog"; then
            die "smtp-source reported problems: $(head -n 5 "$glog" | tr '\n' ' ')"
        fi
    else
        got=$(awk '$1 == "messages" { print $2 " " $4; exit }' "$glog")
        [[ $got == "$count 0" ]] ||
            die "smtpload: expected $count accepted and 0 failed, got '${got:-nothing}': $(tail -n 5 "$glog" | tr '\n' ' ')"
    fi
}

# ---------------------------------------------------------- callgrind runs ----

declare -A IR=() SMSGS=() SBYTES=() SSYSCALLS=()

# cg_run SERVER WORKLOAD COUNT: one server start under callgrind, COUNT
# messages of WORKLOAD (none for "idle"), SIGTERM, read the totals.
cg_run() {
    local server=$1 wl=$2 count=$3 port prefix ir rc t0
    port=$(free_ports 1)
    prefix=$CG/$server-$wl-$count
    t0=$SECONDS
    log "callgrind: $server, $wl, $count messages (port $port)"
    start_profiled "$server" callgrind "$port" "$prefix"
    if [[ $wl != idle ]]; then
        gen_cmd "$wl" "$count" "$port"
        COMMANDS+=("$(show_cmd timeout "$RUN_TIMEOUT" "${GEN[@]}")")
        if timeout "$RUN_TIMEOUT" "${GEN[@]}" >"$prefix.gen" 2>&1; then rc=0; else rc=$?; fi
        ((rc != 124)) || die "$wl against $server timed out after ${RUN_TIMEOUT}s"
        ((rc == 0)) || die "$wl against $server: generator exit $rc: $(tail -n 5 "$prefix.gen" | tr '\n' ' ')"
        check_gen "$wl" "$count" "$prefix.gen"
    fi
    kill -0 "$SRV_PID" 2>/dev/null || die "$server died during $wl: $(tail -n 5 "$prefix.stderr")"
    COMMANDS+=("kill -TERM <server>   # callgrind writes $(show_cmd "$prefix.cg") on exit")
    stop_profiled
    # A complete callgrind file ends with its totals line.
    ir=$(awk '/^totals:/ { print $2; exit }' "$prefix.cg" 2>/dev/null || true)
    [[ $ir =~ ^[0-9]+$ ]] ||
        die "$server: callgrind output $prefix.cg is missing or incomplete: $(tail -n 5 "$prefix.stderr")"
    IR[$server/$wl/$count]=$ir
    if [[ $server == smtpsink ]]; then
        SMSGS[$wl/$count]=$(awk '$1 == "messages" { print $2; exit }' "$prefix.stdout")
        SBYTES[$wl/$count]=$(awk '$1 == "body" && $2 == "bytes" { print $3; exit }' "$prefix.stdout")
        SSYSCALLS[$wl/$count]=$(awk '$1 == "syscalls" { print $2 " " $3; exit }' "$prefix.stdout")
        [[ ${SMSGS[$wl/$count]} =~ ^[0-9]+$ && ${SBYTES[$wl/$count]} =~ ^[0-9]+$ ]] ||
            die "smtpsink printed no final statistics: $(tail -n 5 "$prefix.stderr")"
    fi
    log "  Ir $ir ($((SECONDS - t0)) s)"
}

WORKLOADS=(pipelined lockstep)
((BIG_MSGS == 0)) || WORKLOADS+=(1mib)
declare -A WL_BASE=([pipelined]=$BASE_MSGS [lockstep]=$BASE_MSGS [1mib]=$BIG_BASE_MSGS)
declare -A WL_FULL=([pipelined]=$MSGS [lockstep]=$MSGS [1mib]=$BIG_MSGS)
declare -A WL_GEN=(
    [pipelined]="smtpload -q -c $SESSIONS -m N -s $SMALL_SIZE"
    [lockstep]="smtp-source -s $SESSIONS -m N -l $SMALL_SIZE -d"
    [1mib]="smtpload -q -c $SESSIONS -m N -s $BIG_SIZE"
)
declare -A WL_DESC=(
    [pipelined]="1 KiB, PIPELINING, $SESSIONS sessions"
    [lockstep]="1 KiB, lock-step, $SESSIONS sessions"
    [1mib]="1 MiB, PIPELINING, $SESSIONS sessions"
)

CG_START=$SECONDS
for server in smtpsink smtp-sink; do
    cg_run "$server" idle 0
    for wl in "${WORKLOADS[@]}"; do
        cg_run "$server" "$wl" "${WL_BASE[$wl]}"
        cg_run "$server" "$wl" "${WL_FULL[$wl]}"
    done
done
CG_ELAPSED=$((SECONDS - CG_START))

# smtpsink must have counted exactly the messages the generators sent.
for wl in "${WORKLOADS[@]}"; do
    for n in "${WL_BASE[$wl]}" "${WL_FULL[$wl]}"; do
        [[ ${SMSGS[$wl/$n]} == "$n" ]] ||
            die "smtpsink counted ${SMSGS[$wl/$n]} messages in the $wl run of $n"
    done
done

mkdir -p -- "$ARTIFACTS"
for f in "$CG"/smtpsink-*.cg; do
    cp -- "$f" "$ARTIFACTS/$(basename "${f%.cg}").callgrind.out"
done

# Self Ir per function, summed over the file:function lines that inlining
# splits one function into. Prints Markdown table rows.
hotspots() {
    local file=$1 top=$2
    callgrind_annotate --auto=no --threshold=100 "$file" 2>/dev/null |
        python3 "$(dirname -- "${BASH_SOURCE[0]}")/cg_annotate.py" hotspots "$top"
}

# ------------------------------------------------------------- perf runs ----

PERF_NOTE=
PERF_HW=0
PERF_STAT_ROWS=()
PERF_SYMBOLS=
PERF_DSOS=
PERF_HEADER=
if ((PERF == 0)); then
    PERF_NOTE="skipped (PERF=0)"
elif ! command -v perf >/dev/null 2>&1; then
    PERF_NOTE="skipped: perf is not installed"
elif ! perf stat -e instructions true >/dev/null 2>"$WORK/perf-check.err"; then
    PERF_NOTE="skipped: \`perf stat -e instructions true\` failed: $(tail -n 2 "$WORK/perf-check.err" | tr '\n' ' ')"
else
    hw_check=$(perf stat -x, -e instructions true 2>&1 || true)
    if grep -qE '^[0-9]+,' <<<"$hw_check"; then PERF_HW=1; fi
fi

# perf_stat_run SERVER: native user/kernel instructions per message.
perf_stat_run() {
    local server=$1 port prefix iu ik
    port=$(free_ports 1)
    prefix=$WORK/perfstat-$server
    log "perf stat: $server natively, pipelined, $PERF_MSGS messages (port $port)"
    start_profiled "$server" native "$port" "$prefix"
    gen_cmd pipelined "$PERF_MSGS" "$port"
    local -a pcmd=(perf stat "-x," -o "$prefix.csv" -e "instructions:u,instructions:k" -p "$SRV_CHILD" -- "${GEN[@]}")
    COMMANDS+=("$(show_cmd timeout "$RUN_TIMEOUT" "${pcmd[@]}")")
    timeout "$RUN_TIMEOUT" "${pcmd[@]}" >"$prefix.gen" 2>&1 ||
        die "perf stat run against $server failed: $(tail -n 5 "$prefix.gen" | tr '\n' ' ')"
    check_gen pipelined "$PERF_MSGS" "$prefix.gen"
    stop_profiled
    iu=$(awk -F, '$3 ~ /^instructions:u/ { print $1; exit }' "$prefix.csv")
    ik=$(awk -F, '$3 ~ /^instructions:k/ { print $1; exit }' "$prefix.csv")
    if [[ $iu =~ ^[0-9]+$ && $ik =~ ^[0-9]+$ ]]; then
        PERF_STAT_ROWS+=("$(awk -v s="$server" -v u="$iu" -v k="$ik" -v n="$PERF_MSGS" \
            'BEGIN { printf "| %s | %d | %.0f | %.0f | %.0f |", s, n, u / n, k / n, (u + k) / n }')")
    else
        PERF_STAT_ROWS+=("| $server | $PERF_MSGS | n/a | n/a | n/a |")
    fi
}

if [[ -z $PERF_NOTE ]]; then
    if ((PERF_HW)); then
        perf_stat_run smtpsink
        perf_stat_run smtp-sink
    fi
    port=$(free_ports 1)
    prefix=$WORK/perfrec
    log "perf record: smtpsink natively, pipelined, $PERF_MSGS messages (port $port)"
    start_profiled smtpsink native "$port" "$prefix"
    gen_cmd pipelined "$PERF_MSGS" "$port"
    pcmd=(perf record -g -o "$prefix.data" -p "$SRV_CHILD" -- "${GEN[@]}")
    COMMANDS+=("$(show_cmd timeout "$RUN_TIMEOUT" "${pcmd[@]}")")
    if timeout "$RUN_TIMEOUT" "${pcmd[@]}" >"$prefix.gen" 2>"$prefix.err"; then
        check_gen pipelined "$PERF_MSGS" "$prefix.gen"
        stop_profiled
        COMMANDS+=("perf report -i perf.data --stdio --no-children --sort symbol -g none")
        PERF_HEADER=$(perf report -i "$prefix.data" --stdio --no-children --sort symbol -g none 2>/dev/null |
            grep -E '^# (Samples|Event count)' | sed 's/^# //' | paste -sd ';' - | sed 's/;/; /' || true)
        PERF_SYMBOLS=$(perf report -i "$prefix.data" --stdio --no-children --sort symbol -g none \
            --percent-limit 0.5 2>/dev/null | grep -vE '^#|^[[:space:]]*$' | head -n 30 |
            sed -E 's/([[:space:]]+-)+[[:space:]]*$//; s/[[:space:]]*$//' || true)
        PERF_DSOS=$(perf report -i "$prefix.data" --stdio --no-children --sort dso -g none \
            --percent-limit 0.5 2>/dev/null | grep -vE '^#|^[[:space:]]*$' | head -n 10 |
            sed -E 's/([[:space:]]+-)+[[:space:]]*$//; s/[[:space:]]*$//' || true)
    else
        stop_profiled
        PERF_NOTE="perf record failed: $(tail -n 3 "$prefix.err" | tr '\n' ' ')"
    fi
fi

# ----------------------------------------------------------------- report ----

# Per-workload figures: "ir_per_msg ir_per_byte bytes_per_msg" for a server.
per_msg() {
    local server=$1 wl=$2 b=${WL_BASE[$2]} f=${WL_FULL[$2]}
    awk -v i0="${IR[$server/$wl/$b]}" -v i1="${IR[$server/$wl/$f]}" -v n0="$b" -v n1="$f" \
        -v b0="${SBYTES[$wl/$b]}" -v b1="${SBYTES[$wl/$f]}" \
        'BEGIN { m = (i1 - i0) / (n1 - n0); bpm = (b1 - b0) / (n1 - n0); printf "%.0f %.3f %.0f\n", m, m / bpm, bpm }'
}

cpu_model=$(sed -nE 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
os_name=$(sed -nE 's/^PRETTY_NAME="?([^"]*)"?$/\1/p' /etc/os-release 2>/dev/null | head -n 1)
postfix_ver=$(dpkg-query -W -f='${Version}' postfix 2>/dev/null || echo unknown)

# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# smtpsink instruction profile (%s)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"

    printf '## Instructions per message (callgrind, user-space Ir)\n\n'
    printf 'Per message = (Ir of the full run - Ir of the baseline run) / (messages - baseline messages);\n'
    printf 'start-up, shutdown and the %s session set-ups cancel out. Body bytes per message as counted\n' "$SESSIONS"
    printf 'by smtpsink (`body bytes`), the same for smtp-sink (same generator). Ratio: smtpsink / smtp-sink.\n\n'
    printf '| Workload | Generator | Messages (baseline) | Body B/msg | smtpsink Ir/msg | smtp-sink Ir/msg | Ratio | smtpsink Ir/body B | smtp-sink Ir/body B |\n'
    printf '|---|---|---:|---:|---:|---:|---:|---:|---:|\n'
    declare -A RATIO=()
    for wl in "${WORKLOADS[@]}"; do
        read -r a_msg a_byte bpm < <(per_msg smtpsink "$wl")
        read -r b_msg b_byte _ < <(per_msg smtp-sink "$wl")
        RATIO[$wl]=$(awk -v a="$a_msg" -v b="$b_msg" 'BEGIN { printf "%.3f", a / b }')
        printf '| %s (%s) | `%s` | %s (%s) | %s | %s | %s | **%s** (1/%s) | %s | %s |\n' \
            "$wl" "${WL_DESC[$wl]}" "${WL_GEN[$wl]}" "${WL_FULL[$wl]}" "${WL_BASE[$wl]}" "$bpm" \
            "$a_msg" "$b_msg" "${RATIO[$wl]}" "$(awk -v r="${RATIO[$wl]}" 'BEGIN { printf "%.1f", 1 / r }')" \
            "$a_byte" "$b_byte"
        if [[ $wl == pipelined ]]; then SINK_PIPE_MSG=$b_msg; fi
        if [[ $wl == 1mib ]]; then SINK_BIG_BYTE=$b_byte; fi
    done
    printf '\n'
    target_verdict=$(awk -v r="${RATIO[pipelined]}" 'BEGIN { print (r <= 0.1 ? "meets" : "misses") }')
    printf -- '- Target (pipelined 1 KiB, smtpsink / smtp-sink <= 0.10): **%s** (ratio %s).\n' \
        "$target_verdict" "${RATIO[pipelined]}"
    printf -- '- Reference from the issue: smtp-sink ~60k Ir per 1 KiB message, ~50 Ir per body byte; measured %s Ir/msg (pipelined)%s.\n' \
        "$SINK_PIPE_MSG" "${SINK_BIG_BYTE:+ and $SINK_BIG_BYTE Ir/body byte (1 MiB)}"
    printf -- '- callgrind counts user-space instructions only; the kernel (TCP, syscalls) is not included (see perf below).\n\n'

    printf '### Raw callgrind totals\n\n'
    printf 'Syscalls: smtpsink'"'"'s own count (final statistics); how many messages one read carries\n'
    printf 'depends on timing, so Ir can move slightly between runs (repeat runs agreed within 0.01%%).\n\n'
    printf '| Server | Run | Messages | Ir total | smtpsink syscalls |\n|---|---|---:|---:|---|\n'
    for server in smtpsink smtp-sink; do
        printf '| %s | idle (start, greeting probe, stop) | 0 | %s | |\n' "$server" "${IR[$server/idle/0]}"
        for wl in "${WORKLOADS[@]}"; do
            for n in "${WL_BASE[$wl]}" "${WL_FULL[$wl]}"; do
                sc=
                if [[ $server == smtpsink ]]; then sc=${SSYSCALLS[$wl/$n]:-}; fi
                printf '| %s | %s | %s | %s | %s |\n' "$server" "$wl" "$n" "${IR[$server/$wl/$n]}" "$sc"
            done
        done
    done
    printf '\nThe callgrind runs took %s s in all.\n\n' "$CG_ELAPSED"

    printf '## Hot spots: smtpsink under callgrind (self Ir, inlined code summed per function)\n\n'
    printf '### pipelined 1 KiB, %s messages (share of the whole run)\n\n' "$MSGS"
    hotspots "$CG/smtpsink-pipelined-$MSGS.cg" "$TOP"
    if ((BIG_MSGS > 0)); then
        printf '\n### 1 MiB, %s messages\n\n' "$BIG_MSGS"
        hotspots "$CG/smtpsink-1mib-$BIG_MSGS.cg" 10
    fi
    printf '\n### For context: smtp-sink, pipelined 1 KiB, %s messages (stripped binary)\n\n' "$MSGS"
    hotspots "$CG/smtp-sink-pipelined-$MSGS.cg" 10
    printf '\nFull files: `%s/smtpsink-*.callgrind.out` (`callgrind_annotate --inclusive=yes FILE`, kcachegrind).\n\n' \
        "${ARTIFACTS#"$REPO_ROOT"/}"

    printf '## perf (native, not under valgrind)\n\n'
    if [[ -n $PERF_NOTE ]]; then
        printf '%s\n\n' "$PERF_NOTE"
    fi
    if [[ -z $PERF_NOTE || -n $PERF_SYMBOLS ]]; then
        if ((PERF_HW)); then
            printf '### Instructions per message, user and kernel (`perf stat`, pipelined 1 KiB)\n\n'
            printf '| Server | Messages | user instr/msg | kernel instr/msg | total instr/msg |\n|---|---:|---:|---:|---:|\n'
            printf '%s\n' "${PERF_STAT_ROWS[@]}"
            printf '\n'
        else
            printf 'No hardware instruction counter here (`perf stat -e instructions` says `<not supported>`):\n'
            printf 'no native instruction counts; `perf record` samples a software clock instead.\n\n'
        fi
        printf '### smtpsink profile (`perf record -g`, pipelined 1 KiB, %s messages)\n\n' "$PERF_MSGS"
        printf '%s\n\nBy object (`--sort dso`):\n\n```\n%s\n```\n\n' "${PERF_HEADER:-}" "$PERF_DSOS"
        printf 'Top symbols (`perf report --stdio --no-children --sort symbol`, >= 0.5%%; `[k]` kernel, `[.]` user):\n\n```\n%s\n```\n\n' \
            "$PERF_SYMBOLS"
    fi

    printf '## Machine\n\n'
    printf -- '- CPU: %s, nproc %s, memory %s\n' "${cpu_model:-unknown}" "$(nproc)" "$mem_total"
    printf -- '- OS: %s, kernel %s\n' "${os_name:-unknown}" "$(uname -srm)"
    printf -- '- smtpsink: git %s, binary sha256 %s..., %s, release profile\n' "$GIT_REV" "$BIN_SHA" "$(rustc -V 2>/dev/null || echo 'rustc unknown')"
    printf -- '- Postfix smtp-sink/smtp-source: %s\n' "$postfix_ver"
    printf -- '- %s; perf: %s\n' "$(valgrind --version)" "$(perf --version 2>/dev/null || echo none)"
    printf -- '- user: %s (smtp-sink under valgrind runs as nobody when root)\n\n' "$(id -un)"

    printf '## Commands\n\n'
    printf 'Build: `cargo build --release --workspace`; the binaries are copied to a work directory\n'
    printf 'first (shown as target/release). Ports are free 127.0.0.1 ports picked per run; before each\n'
    printf 'generator run one connection reads the greeting and sends QUIT (readiness probe).\n\n```\n'
    printf '%s\n' "${COMMANDS[@]}"
    printf '```\n\nReproduce: `MSGS=%s BASE_MSGS=%s BIG_MSGS=%s BIG_BASE_MSGS=%s SESSIONS=%s PERF_MSGS=%s scripts/profile.sh`\n' \
        "$MSGS" "$BASE_MSGS" "$BIG_MSGS" "$BIG_BASE_MSGS" "$SESSIONS" "$PERF_MSGS"
} >"$WORK/report.md"

cp -- "$WORK/report.md" "$REPORT"
cat "$REPORT"
log "report: $REPORT"
log "callgrind files: $ARTIFACTS/"
