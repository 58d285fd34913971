#!/usr/bin/env bash
# compare.sh: benchmark smtpsink against Postfix's smtp-sink, side by side.
#
# Both servers run at once, each on its own free 127.0.0.1 port. Postfix's
# smtp-source generates the load. Runs alternate A/B, and the order is swapped
# every round to cancel drift. For each run the script records:
#   - smtp-source wall time            -> messages/s
#   - server CPU (utime+stime, /proc)  -> server CPU seconds per 10k messages
#   - smtp-source CPU (bash `time`)    -> generator CPU seconds per 10k messages
# It reports the median over rounds (min-max as noise) and the smtpsink/smtp-sink
# ratios as Markdown: printed on stdout and written to
# results/compare-<date>.md (raw per-run data in results/compare-<date>.tsv).
#
# Workloads (smtp-source options; 1 KiB = -l 1024):
#   reuse    -s 50 -m 100000 -l 1024 -d          (-d: keep the connection, send the next message on it)
#   newconn  -s 50 -m 100000 -l 1024             (a new connection per message)
#   rcpt10   -s 50 -m 100000 -l 1024 -d -r 10    (10 recipients per message)
#   1mib     -s 10 -m 2000 -l 1048576 -d         (1 MiB messages)
#
# Usage: scripts/compare.sh
# Environment:
#   ROUNDS=N          alternating rounds (default 3)
#   QUICK=1           divide every message count by 10 (smoke run)
#   NEWCONN_MSGS=N    message count of the newconn workload before QUICK
#                     (default 100000; lower it if ephemeral ports run out)
#   RUN_TIMEOUT=S     upper bound for each smtp-source run (default 300)
#   BUILD_RETRIES=N   retry a failing `cargo build --release` N times,
#                     BUILD_RETRY_WAIT seconds apart (defaults 0 and 60)
#
# Installs Debian's postfix package when smtp-sink/smtp-source are missing
# (without leaving a Postfix master daemon running), builds smtpsink with
# `cargo build --release`, and stops only the server processes it started.
# Loopback only; every run is bounded; the script ends by itself.

set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

ROUNDS=${ROUNDS:-3}
QUICK=${QUICK:-0}
NEWCONN_MSGS=${NEWCONN_MSGS:-100000}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
BUILD_RETRIES=${BUILD_RETRIES:-0}
BUILD_RETRY_WAIT=${BUILD_RETRY_WAIT:-60}
SETTLE_S=1

SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
SMTPSINK_BIN=$REPO_ROOT/target/release/smtpsink
RESULTS_DIR=$REPO_ROOT/results
POSTFIX_MASTER=/usr/lib/postfix/sbin/master

SMTPSINK_PID=
POSTFIX_SINK_PID=
POLICY_RC_CREATED=0
WORK=

log() { printf '[compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in ROUNDS NEWCONN_MSGS RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"

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
command -v cargo >/dev/null 2>&1 || die "cargo is required to build smtpsink"

build_smtpsink() {
    local attempt
    for ((attempt = 0; ; attempt++)); do
        log "cargo build --release (in $REPO_ROOT)"
        if (cd -- "$REPO_ROOT" && cargo build --release >&2); then
            break
        fi
        ((attempt < BUILD_RETRIES)) || die "cargo build --release failed"
        log "build failed; retrying in ${BUILD_RETRY_WAIT}s ($((attempt + 1))/$BUILD_RETRIES)"
        sleep "$BUILD_RETRY_WAIT"
    done
    [[ -x $SMTPSINK_BIN ]] || die "$SMTPSINK_BIN not found after build"
}
build_smtpsink

WORK=$(mktemp -d "${TMPDIR:-/tmp}/smtpsink-compare.XXXXXX")
CLK_TCK=$(getconf CLK_TCK)
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p -- "$RESULTS_DIR"
REPORT=$RESULTS_DIR/compare-$STAMP.md
TSV=$RESULTS_DIR/compare-$STAMP.tsv

# -------------------------------------------------------------- workloads ----

div=1
if ((QUICK)); then div=10; fi
M_REUSE=$((100000 / div))
M_NEWCONN=$((NEWCONN_MSGS / div))
M_RCPT=$((100000 / div))
M_BIG=$((2000 / div))

WL_NAMES=(reuse newconn rcpt10 1mib)
WL_MSGS=("$M_REUSE" "$M_NEWCONN" "$M_RCPT" "$M_BIG")
WL_ARGS=(
    "-s 50 -m $M_REUSE -l 1024 -d"
    "-s 50 -m $M_NEWCONN -l 1024"
    "-s 50 -m $M_RCPT -l 1024 -d -r 10"
    "-s 10 -m $M_BIG -l 1048576 -d"
)
WL_DESC=(
    "1 KiB, 50 sessions, connections reused"
    "1 KiB, 50 sessions, new connection per message"
    "1 KiB, 10 recipients/message, 50 sessions, reused"
    "1 MiB, 10 sessions, connections reused"
)

# ---------------------------------------------------------------- servers ----

# Two distinct free ports below the ephemeral range, so the generator's
# source ports never collide with them.
read -r PORT_SMTPSINK PORT_POSTFIX < <(python3 - <<'PY'
import random, socket
ports, socks = [], []
while len(ports) < 2:
    p = random.randint(20000, 32000)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    socks.append(s)
    ports.append(p)
print(*ports)
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

# utime+stime (fields 14 and 15 of /proc/PID/stat) in clock ticks.
cpu_ticks() {
    local stat fields
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }          # drop "pid (comm) ": fields now start at 3
    read -r -a fields <<<"$stat"
    echo $((fields[11] + fields[12]))
}

server_pid() { if [[ $1 == smtpsink ]]; then echo "$SMTPSINK_PID"; else echo "$POSTFIX_SINK_PID"; fi; }
server_port() { if [[ $1 == smtpsink ]]; then echo "$PORT_SMTPSINK"; else echo "$PORT_POSTFIX"; fi; }

SMTPSINK_SENT=$PROBE_MSGS
FAILED_RUNS=0

# run_one ROUND WORKLOAD_INDEX SERVER [record]: one smtp-source run.
run_one() {
    local round=$1 wi=$2 server=$3 record=${4:-record}
    local pid port name msgs args c0 c1 rc wall usr sys genlog
    pid=$(server_pid "$server")
    port=$(server_port "$server")
    name=${WL_NAMES[wi]}
    msgs=${WL_MSGS[wi]}
    read -r -a args <<<"${WL_ARGS[wi]}"
    genlog=$WORK/gen-$round-$name-$server.log

    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) is no longer running"
    c0=$(cpu_ticks "$pid")
    local TIMEFORMAT='%3R %3U %3S'
    if { time timeout "$RUN_TIMEOUT" "$SOURCE" "${args[@]}" "127.0.0.1:$port" \
        >"$genlog" 2>&1; } 2>"$WORK/time"; then
        rc=0
    else
        rc=$?
    fi
    kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) died during $name: $(tail -n 5 "$genlog")"
    c1=$(cpu_ticks "$pid")
    read -r wall usr sys <"$WORK/time"
    if [[ $server == smtpsink ]]; then SMTPSINK_SENT=$((SMTPSINK_SENT + msgs)); fi

    if ((rc != 0)); then
        if ((rc == 124)); then
            log "round $round $name $server: TIMEOUT after ${RUN_TIMEOUT}s"
        else
            log "round $round $name $server: smtp-source exit $rc: $(tail -n 3 "$genlog" | tr '\n' ' ')"
        fi
    fi
    if [[ $record == record ]]; then
        ((rc == 0)) || FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            "$round" "$name" "$server" "$msgs" "$rc" "$wall" "$usr" "$sys" "$((c1 - c0))" >>"$TSV"
        if [[ -s $genlog ]]; then
            { printf '### round %s, %s, %s (exit %s)\n\n```\n' "$round" "$name" "$server" "$rc"
              head -n 20 "$genlog"
              printf '```\n\n'; } >>"$WORK/genlogs.md"
        fi
        log "$(printf 'round %s %-8s %-10s %7s msgs  %8.3fs  %9.0f msg/s  server %.2f CPU s' \
            "$round" "$name" "$server" "$msgs" "$wall" \
            "$(python3 -c "print($msgs/max($wall,1e-9))")" \
            "$(python3 -c "print(($c1-$c0)/$CLK_TCK)")")"
    fi
    sleep "$SETTLE_S"
}

# ---------------------------------------------------------------- measure ----

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
printf 'round\tworkload\tserver\tmsgs\trc\twall_s\tgen_user_s\tgen_sys_s\tserver_ticks\n' >"$TSV"

# Unrecorded warm-up: a tenth of the reuse workload against each server.
WARM_MSGS=$((M_REUSE / 10 > 0 ? M_REUSE / 10 : 1))
for server in smtpsink smtp-sink; do
    log "warm-up: $WARM_MSGS messages to $server"
    timeout "$RUN_TIMEOUT" "$SOURCE" -s 50 -m "$WARM_MSGS" -l 1024 -d \
        "127.0.0.1:$(server_port "$server")" >&2 || die "warm-up against $server failed"
    if [[ $server == smtpsink ]]; then SMTPSINK_SENT=$((SMTPSINK_SENT + WARM_MSGS)); fi
done

START_S=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=(smtpsink smtp-sink); else order=(smtp-sink smtpsink); fi
    for wi in "${!WL_NAMES[@]}"; do
        for server in "${order[@]}"; do
            run_one "$round" "$wi" "$server"
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

# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# smtpsink vs Postfix smtp-sink\n\n'
    printf '## Machine\n\n'
    printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf -- '- CPU: %s, nproc %s\n' "$cpu_model" "$(nproc)"
    printf -- '- kernel: %s\n' "$(uname -srm)"
    printf -- '- load average before/after: %s / %s\n' "$LOAD_BEFORE" "$LOAD_AFTER"
    printf -- '- smtpsink: %s (git %s), `%s`\n' "$(basename "$SMTPSINK_BIN")" "$git_rev" \
        "smtpsink ${SMTPSINK_ARGS[*]}"
    printf -- '- smtp-sink: postfix %s, `%s`\n' "$postfix_ver" "smtp-sink ${SINK_ARGS[*]}"
    printf -- '- generator: `smtp-source` (postfix %s), timeout %ss per run\n' "$postfix_ver" "$RUN_TIMEOUT"
    printf -- '- rounds: %s (order swapped every round), QUICK=%s, measuring took %ss\n\n' \
        "$ROUNDS" "$QUICK" "$ELAPSED_S"
    printf '## Workloads\n\n| Workload | What | smtp-source options |\n|---|---|---|\n'
    for wi in "${!WL_NAMES[@]}"; do
        printf '| %s | %s | `%s` |\n' "${WL_NAMES[wi]}" "${WL_DESC[wi]}" "${WL_ARGS[wi]}"
    done
    printf '\n'
    python3 - "$TSV" "$CLK_TCK" "${WL_NAMES[@]}" <<'PY'
import csv, statistics, sys

tsv, clk = sys.argv[1], int(sys.argv[2])
workloads = sys.argv[3:]
servers = ["smtpsink", "smtp-sink"]
rows = list(csv.DictReader(open(tsv), delimiter="\t"))

runs = {}  # (workload, server) -> {round: (msgs/s, srv cpu s/10k, gen cpu s/10k)}
fails = {}
for r in rows:
    key = (r["workload"], r["server"])
    runs.setdefault(key, {})
    if r["rc"] != "0":
        fails[key] = fails.get(key, 0) + 1
        continue
    msgs, wall = int(r["msgs"]), float(r["wall_s"])
    gen = float(r["gen_user_s"]) + float(r["gen_sys_s"])
    srv = int(r["server_ticks"]) / clk
    runs[key][r["round"]] = (msgs / max(wall, 1e-9), srv / msgs * 1e4, gen / msgs * 1e4)

def med(key, i):
    v = [x[i] for x in runs.get(key, {}).values()]
    return (statistics.median(v), min(v), max(v)) if v else None

def fmt(t, spec):
    if t is None:
        return "n/a", "n/a"
    return format(t[0], spec), f"{format(t[1], spec)}–{format(t[2], spec)}"

print("## Results (median over rounds; min–max as noise)\n")
print("| Workload | Server | msgs/s | msgs/s min–max | server CPU s/10k msgs | min–max | smtp-source CPU s/10k msgs | runs ok |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for w in workloads:
    for s in servers:
        k = (w, s)
        rate, rate_r = fmt(med(k, 0), ".0f")
        cpu, cpu_r = fmt(med(k, 1), ".3f")
        gen, _ = fmt(med(k, 2), ".3f")
        n = len(runs.get(k, {}))
        print(f"| {w} | {s} | {rate} | {rate_r} | {cpu} | {cpu_r} | {gen} | {n}/{n + fails.get(k, 0)} |")

def ratio(a, b):
    return a / b if a is not None and b else None

def rfmt(x):
    return "n/a" if x is None else f"{x:.2f}"

print("\n## Ratios smtpsink / smtp-sink\n")
print("msgs/s ratio > 1: smtpsink is faster. CPU ratio < 1: smtpsink uses less server CPU per message.")
print("Ratio of the medians; per-round: range of the ratios of runs paired by round.\n")
print("| Workload | msgs/s ratio | per-round | server CPU/msg ratio | per-round |")
print("|---|---:|---:|---:|---:|")
for w in workloads:
    a, b = runs.get((w, "smtpsink"), {}), runs.get((w, "smtp-sink"), {})
    cells = []
    for i in (0, 1):
        ma, mb = med((w, "smtpsink"), i), med((w, "smtp-sink"), i)
        m = ratio(ma[0] if ma else None, mb[0] if mb else None)
        paired = [ratio(a[r][i], b[r][i]) for r in a if r in b]
        paired = [p for p in paired if p is not None]
        rng = f"{min(paired):.2f}–{max(paired):.2f}" if paired else "n/a"
        cells += [rfmt(m), rng]
    print(f"| {w} | " + " | ".join(cells) + " |")
print()
PY
    printf '## Notes\n\n'
    printf -- '- Server CPU is utime+stime of the server process over the run (/proc/PID/stat, %s ticks/s).\n' "$CLK_TCK"
    printf -- '- smtp-source CPU is user+sys of the generator (it shares the %s CPUs with the server).\n' "$(nproc)"
    if [[ -n $SMTPSINK_COUNTED ]]; then
        printf -- '- smtpsink counted %s messages in its final statistics; smtp-source sent it %s (incl. probe and warm-up).\n' \
            "$SMTPSINK_COUNTED" "$SMTPSINK_SENT"
    else
        printf -- '- smtpsink final statistics had no "messages" line; smtp-source sent it %s messages.\n' "$SMTPSINK_SENT"
    fi
    if ((FAILED_RUNS)); then
        printf -- '- %s run(s) failed (exit status != 0) and are excluded from the medians.\n' "$FAILED_RUNS"
    fi
    if ((QUICK)); then
        printf -- '- QUICK=1: message counts divided by 10; CPU figures are coarse.\n'
    fi
    if [[ -s $WORK/genlogs.md ]]; then
        printf '\n## smtp-source output\n\n'
        cat "$WORK/genlogs.md"
    fi
    printf '\n## smtpsink final statistics\n\n```\n'
    cat "$WORK/smtpsink.out"
    printf '```\n'
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw data: $TSV"
