#!/usr/bin/env bash
# rules-bench.sh: what reply rules and the /metrics endpoint cost smtpsink,
# against the code before the rules work (BASE_REV, default c12c671).
#
# 1. No rules: callgrind instructions per message of the current binary vs
#    the baseline binary (target: at most 1.02x).
# 2. Ten rules spread over the stages (connect, helo, mail, rcpt, end, any;
#    client networks, address and domain globs, first/every/probability,
#    replies, greylist, delay, drop) that match none of smtpload's traffic:
#    Ir/msg vs the baseline (target: at most 1.10x). That nothing matched is
#    checked on a native server with the same rules (`GET /stats`: every
#    hit count 0), and that the rules are live by one message to an address
#    the first RCPT rule refuses (its hit count must become 1).
# 3. Scraping `GET /metrics` every SCRAPE_INTERVAL (0.1 s) during load costs
#    under 1% of throughput:
#    a. natively: one server with --control, closed-loop smtpload -c 50 -s
#       1024 -m LOAD_MSGS (sized to last ~LOAD_SECONDS), without (A) and with
#       (B) the scraper, ROUNDS rounds in alternating order (AB, BA, ...);
#       medians, min-max, per-round pairs, server CPU per message; then
#       BURST scrapes back to back: the server's CPU time per scrape;
#    b. in instructions: the control-endpoint server under callgrind, the
#       same run as 1-2 without and with the scraper (Ir/msg both ways), and
#       with CG_BURST scrapes back to back after the load: Ir per scrape,
#       and the share of the server's instructions that scrapes every
#       SCRAPE_INTERVAL add at the native msgs/s of 3a.
#
# Callgrind method as scripts/profile.sh: the server runs under `valgrind
# --tool=callgrind`, receives `smtpload -q -c SESSIONS -m N -s 1024`
# (pipelined), is stopped with SIGTERM; Ir per message = (Ir(N=MSGS) -
# Ir(N=BASE_MSGS)) / (MSGS - BASE_MSGS), which cancels start-up, shutdown
# and session set-up. Each variant runs CG_REPEAT times (median). The same
# current smtpload drives every server. callgrind_annotate then gives, per
# function, where the instructions per message (and per scrape) changed.
#
# Builds: the current tree with `cargo build --release --workspace` into
# CARGO_TARGET_DIR (default target/); the baseline from a git worktree of
# BASE_REV at BASE_WORKTREE (created when missing, left in place for the
# next run; `git worktree remove` it when done) with `cargo build --release
# -p smtpsink` into BASE_TARGET_DIR (default: CARGO_TARGET_DIR with "-base"
# appended, or target/rules-bench-base). Binaries are copied to a work
# directory before use (others may rebuild meanwhile).
#
# Output: a Markdown report on stdout and in results/rules-bench-<date>.md,
# a TSV (raw rows and derived rows) in results/rules-bench-<date>.tsv, and
# the first repeat's callgrind files in results/rules-bench-<date>/.
#
# Usage: scripts/rules-bench.sh
# Environment:
#   MSGS=N              messages of the full callgrind runs (default 20000)
#   BASE_MSGS=N         messages of their base runs (default 200)
#   CG_REPEAT=N         runs of each callgrind variant (default 3)
#   SESSIONS=N          smtpload connections under callgrind (default 10)
#   ROUNDS=N            native A/B rounds (default 5)
#   LOAD_CONNS=N        smtpload connections of the native runs (default 50)
#   LOAD_MSGS=N         messages per native run (default: from a calibration
#                       run of CAL_MSGS, to last about LOAD_SECONDS)
#   LOAD_SECONDS=S      (default 7)   CAL_MSGS=N  (default 100000)
#   SCRAPE_INTERVAL=S   seconds between scrapes (default 0.1)
#   SCRAPE_KEEPALIVE=1  reuse one connection for the scrapes (default 0: a
#                       new connection per scrape, as curl in a loop)
#   CG_BURST=N          scrapes back to back after the load under callgrind,
#                       for Ir per scrape (default 50; 0: skip)
#   BURST=N             scrapes back to back after the rounds, for the
#                       server's CPU per scrape natively (default 1000; 0: skip)
#   VERIFY_MSGS=N       messages of the native rule check (default MSGS)
#   TOP=N               functions per callgrind_annotate table (default 15)
#   QUICK=1             message counts / 10 (smoke run)
#   BASE_REV=REV        baseline commit (default c12c671)
#   BASE_WORKTREE=DIR   its worktree (default ${TMPDIR:-/tmp}/base-<rev>)
#   BASE_TARGET_DIR=DIR its cargo target directory (see above)
#   BASE_SMTPSINK_BIN=P use this baseline smtpsink, build nothing for it
#   SMTPSINK_BIN=P, SMTPLOAD_BIN=P  use these current binaries (both), no build
#   RUN_TIMEOUT=S       bound of each generator run (default 300); servers
#                       are bounded too, the scraper by RUN_TIMEOUT+60 s
#   BUILD_RETRIES, BUILD_RETRY_WAIT: as in lib.sh (defaults 3, 60)
#
# Needs valgrind, callgrind_annotate, python3, timeout, git and cargo.
# Loopback only; every run is bounded; it stops only the processes it
# started (by PID). Logging, clean-up (EXIT trap), builds, free ports and
# the native generator runs come from scripts/lib.sh.

set -euo pipefail

ENV_SMTPSINK_BIN=${SMTPSINK_BIN:-}
ENV_SMTPLOAD_BIN=${SMTPLOAD_BIN:-}
BUILD_RETRIES=${BUILD_RETRIES:-3} # before lib.sh, whose defaults are 2 and 3
ROUNDS=${ROUNDS:-5}
LIB_TAG=rules-bench
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

MSGS=${MSGS:-20000}
BASE_MSGS=${BASE_MSGS:-200}
CG_REPEAT=${CG_REPEAT:-3}
SESSIONS=${SESSIONS:-10}
LOAD_CONNS=${LOAD_CONNS:-50}
LOAD_MSGS=${LOAD_MSGS:-}
LOAD_SECONDS=${LOAD_SECONDS:-7}
CAL_MSGS=${CAL_MSGS:-100000}
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-0.1}
SCRAPE_KEEPALIVE=${SCRAPE_KEEPALIVE:-0}
TOP=${TOP:-15}
BURST=${BURST:-1000}
CG_BURST=${CG_BURST:-50}
BASE_REV=${BASE_REV:-c12c671}
BASE_WORKTREE=${BASE_WORKTREE:-${TMPDIR:-/tmp}/base-$BASE_REV}
BASE_SMTPSINK_BIN=${BASE_SMTPSINK_BIN:-}
SIZE=1024
STOP_WAIT_S=120 # a server under valgrind may take a while to dump and exit

if ((QUICK)); then
    MSGS=$((MSGS / 10))
    CAL_MSGS=$((CAL_MSGS / 10))
    if [[ -n $LOAD_MSGS ]]; then LOAD_MSGS=$((LOAD_MSGS / 10)); fi
fi
VERIFY_MSGS=${VERIFY_MSGS:-$MSGS}
require_uint MSGS BASE_MSGS CG_REPEAT SESSIONS ROUNDS LOAD_CONNS LOAD_SECONDS CAL_MSGS \
    VERIFY_MSGS TOP BURST CG_BURST RUN_TIMEOUT BUILD_RETRIES BUILD_RETRY_WAIT SCRAPE_KEEPALIVE
[[ -z $LOAD_MSGS ]] || require_uint LOAD_MSGS
if ! [[ $SCRAPE_INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] ||
    ! awk -v s="$SCRAPE_INTERVAL" 'BEGIN { exit !(s >= 0.01) }'; then
    die "SCRAPE_INTERVAL must be a number of seconds, at least 0.01"
fi
((MSGS > BASE_MSGS)) || die "MSGS must be larger than BASE_MSGS"
((CG_REPEAT >= 1 && SESSIONS >= 1 && ROUNDS >= 1 && LOAD_CONNS >= 1 && CAL_MSGS >= 1 &&
    VERIFY_MSGS >= 1 && LOAD_SECONDS >= 1 && RUN_TIMEOUT >= 1)) ||
    die "CG_REPEAT, SESSIONS, ROUNDS, LOAD_CONNS, CAL_MSGS, VERIFY_MSGS, LOAD_SECONDS and RUN_TIMEOUT must be at least 1"
SERVER_TIMEOUT=$((2 * RUN_TIMEOUT + 120))
NATIVE_TIMEOUT=$(((2 * ROUNDS + 2) * (RUN_TIMEOUT + 30) + 120))

for tool in valgrind callgrind_annotate python3 timeout git; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
HELPER=$LIB_DIR/rules_bench_report.py
[[ -f $HELPER ]] || die "$HELPER is missing"
T_START=$SECONDS

# ---------------------------------------------------------------- cleanup ----

SRV_PID=      # the `timeout` wrapper of the running server (we started it)
SRV_CHILD=    # the server process itself (child of SRV_PID)
SCRAPER_PID=  # the `timeout` wrapper of the running scraper

stop_server_now() {
    local pid=$SRV_PID child=$SRV_CHILD
    SRV_PID=
    SRV_CHILD=
    stop_pid "$pid" "$STOP_WAIT_S" "$child"
}
stop_scraper() {
    local pid=$SCRAPER_PID
    SCRAPER_PID=
    stop_pid "$pid" 10
}
cleanup_hook() { # run by lib.sh's EXIT trap, before stop_all
    stop_scraper
    stop_server_now
}

# ----------------------------------------------------------------- builds ----

if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    CUR_TARGET_DIR=$CARGO_TARGET_DIR
    BASE_TARGET_DIR=${BASE_TARGET_DIR:-${CARGO_TARGET_DIR%/}-base}
else
    CUR_TARGET_DIR=$REPO_ROOT/target
    BASE_TARGET_DIR=${BASE_TARGET_DIR:-$REPO_ROOT/target/rules-bench-base}
fi
export CARGO_TARGET_DIR=$CUR_TARGET_DIR
SMTPSINK_BIN=$CUR_TARGET_DIR/release/smtpsink
SMTPLOAD_BIN=$CUR_TARGET_DIR/release/smtpload
use_binaries "$ENV_SMTPSINK_BIN" "$ENV_SMTPLOAD_BIN"

# build_base: the baseline smtpsink from a worktree of BASE_REV, into BASE_BIN.
build_base() {
    if [[ -n $BASE_SMTPSINK_BIN ]]; then
        [[ -x $BASE_SMTPSINK_BIN ]] || die "BASE_SMTPSINK_BIN=$BASE_SMTPSINK_BIN is not executable"
        BASE_BIN=$BASE_SMTPSINK_BIN
        log "baseline: using $BASE_BIN (not building)"
        return 0
    fi
    build_rev "$BASE_REV" "$BASE_WORKTREE" "$BASE_TARGET_DIR"
    BASE_BIN=$BUILT_BIN
}
BASE_BIN=
build_base

make_work rules-bench
BIN=$WORK/bin
CG=$WORK/cg
ANNOT=$WORK/annot
mkdir -p -- "$BIN" "$CG" "$ANNOT"
cp -- "$SMTPSINK_BIN" "$BIN/smtpsink"
cp -- "$SMTPLOAD_BIN" "$BIN/smtpload"
cp -- "$BASE_BIN" "$BIN/smtpsink-base"
SMTPSINK_BIN=$BIN/smtpsink
SMTPLOAD_BIN=$BIN/smtpload
BASE_BIN=$BIN/smtpsink-base
CUR_REV=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
CUR_SHA=$(sha256sum "$SMTPSINK_BIN" | cut -c1-12)
BASE_SHA=$(sha256sum "$BASE_BIN" | cut -c1-12)

results_files rules-bench

# Commands as run, for the report: paths shown relative to the work folder.
COMMANDS=()
show_cmd() {
    local s
    s=$(printf '%q ' "$@")
    s=${s//"$BIN"/bin}
    s=${s//"$HELPER"/scripts/rules_bench_report.py}
    s=${s//"$WORK"/WORKDIR}
    printf '%s' "${s% }"
}
note_cmd() { COMMANDS+=("$*"); }

# ------------------------------------------------------------- rule set ----

# Ten rules, none of which matches smtpload's traffic: client 127.0.0.1,
# EHLO smtpload.localhost, MAIL FROM smtpload@example.test, RCPT TO
# sink0@example.test (loadtest/src/main.rs defaults). Their actions would
# show in the hit counts, the replies or the message counts if they did.
RULES=$WORK/rules.toml
cat >"$RULES" <<'TOML'
# rules-bench.sh: ten rules over the stages, none matching smtpload's traffic
seed = 42

[[rule]]
name = "blocked-net"
stage = "connect"
client = "198.51.100.0/24"
reply = "554 5.7.1 Your network is blocked"

[[rule]]
name = "spam-helo"
stage = "helo"
domain = "*.spam"
reply = "550 5.7.1 Bad HELO"

[[rule]]
name = "internal-sender"
stage = "mail"
client = "10.0.0.0/8"
reply = "451 4.7.1 Try again later"

[[rule]]
name = "spammer-every-2nd"
stage = "mail"
address = "*@spammer.invalid"
every = 2
reply = "550 5.7.1 Sender refused"

[[rule]]
name = "bounce-rcpt"
stage = "rcpt"
address = "bounce-*@example.invalid"
reply = "550 5.1.1 No such user"

[[rule]]
name = "invalid-domain"
stage = "rcpt"
domain = "*.invalid"
probability = 0.5
reply = "550 5.1.2 Bad destination domain"

[[rule]]
name = "grey-rcpt"
stage = "rcpt"
address = "grey-*@example.test"
greylist = "60s"

[[rule]]
name = "slow-rcpt"
stage = "rcpt"
address = "slow-*@example.test"
transaction = "2-"
probability = 0.1
delay = "100ms..1s"

[[rule]]
name = "drop-test-net"
stage = "end"
client = "192.0.2.0/24"
drop = true

[[rule]]
name = "nobody-any"
stage = "any"
address = "nobody@nowhere.invalid"
first = 3
reply = "550 5.7.1 Nobody here"
TOML
RULE_COUNT=$(grep -c '^\[\[rule\]\]' "$RULES")

# ---------------------------------------------------------------- servers ----

# start_server_bg MODE PORT PREFIX CMD...: CMD (a server) under `timeout`,
# under callgrind when MODE is callgrind (output PREFIX.cg), stdout/stderr in
# PREFIX.stdout/.stderr; sets SRV_PID and SRV_CHILD; waits (up to 120 s) for
# the greeting: probes of up to 5 s that also read the reply to QUIT. Every
# run gets exactly one successful probe, so it cancels out of the
# differences.
start_server_bg() {
    local mode=$1 port=$2 prefix=$3 limit
    shift 3
    local -a cmd=("$@")
    limit=$SERVER_TIMEOUT
    if [[ $mode == callgrind ]]; then
        cmd=(valgrind --tool=callgrind --vgdb=no "--callgrind-out-file=$prefix.cg" "${cmd[@]}")
    else
        limit=$NATIVE_TIMEOUT
    fi
    note_cmd "$(show_cmd timeout -k 10 "$limit" "${cmd[@]}") &"
    start_bg "$prefix.stdout" "$prefix.stderr" timeout -k 10 "$limit" "${cmd[@]}"
    SRV_PID=$LAST_PID
    wait_greeting "$(basename -- "$prefix")" "$SRV_PID" "$port" "$prefix.stderr" 120 5 1
    SRV_CHILD=$(pgrep -P "$SRV_PID" | head -n 1 || true)
    [[ -n $SRV_CHILD ]] || die "cannot find the server under its timeout wrapper (pid $SRV_PID)"
}

# start_scraper CPORT OUT: the scraper against 127.0.0.1:CPORT/metrics;
# returns after its first good scrape (within 30 s), so that Python's
# start-up is not part of the measured run.
start_scraper() {
    local i
    local -a cmd=(python3 "$HELPER" scrape --url "http://127.0.0.1:$1/metrics" --out "$2"
        --ready "$2.ready" --interval "$SCRAPE_INTERVAL" --max-seconds "$((RUN_TIMEOUT + 30))")
    ((SCRAPE_KEEPALIVE == 0)) || cmd+=(--keepalive)
    note_cmd "$(show_cmd timeout -k 5 "$((RUN_TIMEOUT + 60))" "${cmd[@]}") &   # stopped by SIGTERM after the run"
    start_bg "$2.stdout" "$2.stderr" timeout -k 5 "$((RUN_TIMEOUT + 60))" "${cmd[@]}"
    SCRAPER_PID=$LAST_PID
    for ((i = 0; i < 300; i++)); do
        [[ -e $2.ready ]] && return 0
        kill -0 "$SCRAPER_PID" 2>/dev/null ||
            die "the scraper exited at start: $(tail -n 3 "$2.stderr" | tr '\n' ' ')"
        sleep 0.1
    done
    die "the scraper made no good scrape within 30 s: $(tail -n 3 "$2.stderr" | tr '\n' ' ')"
}

# scraper_result OUT: stop the scraper; its JSON into SCR_OK, SCR_BAD and
# SCR_CPU; dies when a scrape failed or none succeeded.
SCR_OK=0 SCR_BAD=0 SCR_CPU=0
scraper_result() {
    local res first
    stop_scraper
    res=$(python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
print(j["ok"], j["bad"], j["cpu_s"], (j["first_bad"] or "-").replace(" ", "_"))' "$1") ||
        die "the scraper left no result: $(tail -n 3 "$1.stderr" 2>/dev/null | tr '\n' ' ')"
    read -r SCR_OK SCR_BAD SCR_CPU first <<<"$res"
    ((SCR_BAD == 0)) || die "$SCR_BAD scrape(s) failed (first: $first)"
    ((SCR_OK > 0)) || die "the scraper made no successful scrape"
}

# check_gen COUNT LOG: did smtpload deliver COUNT messages?
check_gen() {
    local got
    got=$(awk '$1 == "messages" { print $2 " " $4; exit }' "$2")
    [[ $got == "$1 0" ]] ||
        die "smtpload: expected $1 accepted and 0 failed, got '${got:-nothing}': $(tail -n 5 "$2" | tr '\n' ' ')"
}

# check_final PREFIX COUNT: smtpsink's final statistics (PREFIX.stdout)
# count COUNT messages and no 4xx/5xx reply.
check_final() {
    local got replies
    got=$(awk '$1 == "messages" { print $2; exit }' "$1.stdout")
    replies=$(awk '$1 == "replies" { print $4 " " $5; exit }' "$1.stdout")
    [[ $got == "$2" ]] || die "smtpsink counted '${got:-nothing}' messages, expected $2 ($1.stdout)"
    [[ $replies == "4xx=0 5xx=0" ]] || die "smtpsink sent refusals: $replies ($1.stdout)"
}

# ------------------------------------------------------------ rule check ----

log "rule check: $RULE_COUNT rules, native server, $VERIFY_MSGS messages"
read -r vport vcport < <(free_ports 2)
start_server_bg native "$vport" "$WORK/verify" "$SMTPSINK_BIN" --listen "127.0.0.1:$vport" \
    --rules "$RULES" --control "127.0.0.1:$vcport"
grep -q "smtpsink: $RULE_COUNT rule(s)" "$WORK/verify.stderr" ||
    die "smtpsink did not report $RULE_COUNT rules: $(head -n 3 "$WORK/verify.stderr")"
vgen=("$SMTPLOAD_BIN" -q -c "$SESSIONS" -m "$VERIFY_MSGS" -s "$SIZE" "127.0.0.1:$vport")
note_cmd "$(show_cmd timeout "$RUN_TIMEOUT" "${vgen[@]}")"
timeout "$RUN_TIMEOUT" "${vgen[@]}" >"$WORK/verify.gen" 2>&1 ||
    die "smtpload against the rule set failed: $(tail -n 5 "$WORK/verify.gen" | tr '\n' ' ')"
check_gen "$VERIFY_MSGS" "$WORK/verify.gen"
vcheck=(python3 "$HELPER" rules-check --url "http://127.0.0.1:$vcport/stats" --rules "$RULE_COUNT")
note_cmd "$(show_cmd "${vcheck[@]}")"
RULES_CHECK=$(timeout 30 "${vcheck[@]}") || die "rule check: $RULES_CHECK"
log "rule check: $RULES_CHECK"
pgen=("$SMTPLOAD_BIN" -q -c 1 -m 1 --to 'bounce-{r}@example.invalid' "127.0.0.1:$vport")
note_cmd "$(show_cmd timeout 30 "${pgen[@]}")   # refused with 550 on purpose"
timeout 30 "${pgen[@]}" >"$WORK/verify-positive.gen" 2>&1 || true
pcheck=(python3 "$HELPER" rules-check --url "http://127.0.0.1:$vcport/stats" --rules "$RULE_COUNT"
    --expect-hit bounce-rcpt=1)
note_cmd "$(show_cmd "${pcheck[@]}")"
RULES_POSITIVE=$(timeout 30 "${pcheck[@]}") || die "positive rule check: $RULES_POSITIVE"
log "positive control: $RULES_POSITIVE"
stop_server_now
meta RULES_CHECK "$RULES_CHECK"
meta RULES_POSITIVE "$RULES_POSITIVE"

# ---------------------------------------------------------- callgrind runs ----

# cg_run VARIANT COUNT REP: one server under callgrind, COUNT pipelined
# messages, SIGTERM, read the totals. VARIANT: base (baseline binary), cur,
# rules (--rules), control (--control), scrape (--control, the timed scraper
# running during the generator run), burst (--control, CG_BURST scrapes back
# to back after the generator run: every one sees the filled histogram).
cg_run() {
    local variant=$1 count=$2 rep=$3 port cport prefix ir rc t0
    read -r port cport < <(free_ports 2)
    prefix=$CG/$variant-$count-r$rep
    local -a srv gen
    case $variant in
    base) srv=("$BASE_BIN" --listen "127.0.0.1:$port") ;;
    cur) srv=("$SMTPSINK_BIN" --listen "127.0.0.1:$port") ;;
    rules) srv=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --rules "$RULES") ;;
    control | scrape | burst) srv=("$SMTPSINK_BIN" --listen "127.0.0.1:$port" --control "127.0.0.1:$cport") ;;
    *) die "unknown variant $variant" ;;
    esac
    t0=$SECONDS
    log "callgrind: $variant, $count messages, repeat $rep (port $port)"
    start_server_bg callgrind "$port" "$prefix" "${srv[@]}"
    if [[ $variant == scrape ]]; then start_scraper "$cport" "$prefix.scrape"; fi
    gen=("$SMTPLOAD_BIN" -q -c "$SESSIONS" -m "$count" -s "$SIZE" "127.0.0.1:$port")
    note_cmd "$(show_cmd timeout "$RUN_TIMEOUT" "${gen[@]}")"
    if timeout "$RUN_TIMEOUT" "${gen[@]}" >"$prefix.gen" 2>&1; then rc=0; else rc=$?; fi
    ((rc != 124)) || die "smtpload against $variant timed out after ${RUN_TIMEOUT}s"
    ((rc == 0)) || die "smtpload against $variant: exit $rc: $(tail -n 5 "$prefix.gen" | tr '\n' ' ')"
    check_gen "$count" "$prefix.gen"
    if [[ $variant == scrape ]]; then scraper_result "$prefix.scrape"; fi
    if [[ $variant == burst ]]; then
        local -a bcmd=(python3 "$HELPER" burst --url "http://127.0.0.1:$cport/metrics" --count "$CG_BURST")
        ((SCRAPE_KEEPALIVE == 0)) || bcmd+=(--keepalive)
        note_cmd "$(show_cmd timeout "$RUN_TIMEOUT" "${bcmd[@]}")"
        local bres
        bres=$(timeout "$RUN_TIMEOUT" "${bcmd[@]}") || die "burst of scrapes under callgrind failed: $bres"
        read -r SCR_OK SCR_BAD _ <<<"$bres"
    fi
    kill -0 "$SRV_PID" 2>/dev/null || die "$variant server died: $(tail -n 5 "$prefix.stderr")"
    note_cmd "kill -TERM <server>   # callgrind writes $(show_cmd "$prefix.cg") on exit"
    stop_server_now
    ir=$(awk '/^totals:/ { print $2; exit }' "$prefix.cg" 2>/dev/null || true)
    [[ $ir =~ ^[0-9]+$ ]] || die "$variant: callgrind output $prefix.cg is missing or incomplete"
    check_final "$prefix" "$count"
    raw cg "$variant" "$rep" "$count" ir "$ir"
    if [[ $variant == scrape || $variant == burst ]]; then
        raw cg "$variant" "$rep" "$count" scrapes_ok "$SCR_OK"
        raw cg "$variant" "$rep" "$count" scrapes_bad "$SCR_BAD"
        [[ $variant == burst ]] || raw cg "$variant" "$rep" "$count" scraper_cpu_s "$SCR_CPU"
        log "  Ir $ir, $SCR_OK scrapes ($((SECONDS - t0)) s)"
    else
        log "  Ir $ir ($((SECONDS - t0)) s)"
    fi
}

CG_START=$SECONDS
for ((rep = 1; rep <= CG_REPEAT; rep++)); do
    for variant in base cur rules control; do
        cg_run "$variant" "$BASE_MSGS" "$rep"
        cg_run "$variant" "$MSGS" "$rep"
    done
    cg_run scrape "$MSGS" "$rep"
    ((CG_BURST == 0)) || cg_run burst "$MSGS" "$rep"
done
CG_ELAPSED=$((SECONDS - CG_START))

mkdir -p -- "$ARTIFACTS"
for f in "$CG"/*-r1.cg; do
    name=$(basename -- "${f%-r1.cg}")
    callgrind_annotate --auto=no --threshold=100 "$f" >"$ANNOT/$name.annot" 2>/dev/null ||
        log "callgrind_annotate failed on $f"
    cp -- "$f" "$ARTIFACTS/$name.callgrind.out"
done
cp -- "$RULES" "$ARTIFACTS/rules.toml"

# -------------------------------------------------------------- native A/B ----

NAT_START=$SECONDS
read -r nport ncport < <(free_ports 2)
log "native: smtpsink --control on 127.0.0.1:$ncport, $ROUNDS rounds"
start_server_bg native "$nport" "$WORK/smtpsink" "$SMTPSINK_BIN" --listen "127.0.0.1:$nport" \
    --control "127.0.0.1:$ncport"
# lib.sh's gen_run measures SERVER_PID[smtpsink]: the server, not its wrapper.
SERVER_PID[smtpsink]=$SRV_CHILD
SERVER_PORT[smtpsink]=$nport
SENT[smtpsink]=0
wait_ready smtpsink

# schedstat_ns PID: CPU time of PID's main thread in ns, or - .
schedstat_ns() {
    local v
    v=$(awk '{ print $1 }' "/proc/$1/schedstat" 2>/dev/null || true)
    if [[ $v =~ ^[0-9]+$ ]]; then echo "$v"; else echo -; fi
}

# native_run MSGS NAME [NOTE]: one gen_run of MSGS messages (log
# $WORK/native-NAME), its command kept for the report.
native_run() {
    local argstr="-c $LOAD_CONNS -s $SIZE -m $1"
    local -a shown
    read -r -a shown <<<"$argstr"
    note_cmd "$(show_cmd timeout "$RUN_TIMEOUT" "$SMTPLOAD_BIN" -q --json "$WORK/native-$2.json" \
        "${shown[@]}" "127.0.0.1:$nport")${3:+   # $3}"
    gen_run smtpload "$1" "$argstr" smtpsink "$WORK/native-$2"
}

log "native: calibration/warm-up run, $CAL_MSGS messages"
native_run "$CAL_MSGS" cal "calibration and warm-up"
((RUN_OK)) || die "calibration run failed ($RUN_NOTE): $(tail -n 3 "$WORK/native-cal" | tr '\n' ' ')"
CAL_RATE=$RUN_RATE
if [[ -z $LOAD_MSGS ]]; then
    LOAD_MSGS=$(awk -v r="$CAL_RATE" -v s="$LOAD_SECONDS" -v q="$QUICK" 'BEGIN {
        n = r * s; if (q) n = n / 10; step = (n >= 100000 ? 10000 : 1000)
        n = int(n / step + 0.5) * step; if (n < step) n = step; print n }')
fi
log "native: $CAL_RATE msg/s in calibration; $LOAD_MSGS messages per run"

FAILED_RUNS=0
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order=(A B); else order=(B A); fi
    for v in "${order[@]}"; do
        log "native round $r: $v"
        if [[ $v == B ]]; then start_scraper "$ncport" "$WORK/native-$r.scrape"; fi
        native_run "$LOAD_MSGS" "$v-$r" "round $r, $v"
        if [[ $v == B ]]; then scraper_result "$WORK/native-$r.scrape"; fi
        if ((!RUN_OK)); then FAILED_RUNS=$((FAILED_RUNS + 1)); fi
        raw native "$v" "$r" "$LOAD_MSGS" ok "$RUN_OK"
        raw native "$v" "$r" "$LOAD_MSGS" order "${order[0]}${order[1]}"
        raw native "$v" "$r" "$LOAD_MSGS" rate "$RUN_RATE"
        raw native "$v" "$r" "$LOAD_MSGS" wall "$RUN_WALL"
        raw native "$v" "$r" "$LOAD_MSGS" server_ticks "$RUN_TICKS"
        if [[ $v == B ]]; then
            raw native "$v" "$r" "$LOAD_MSGS" scrapes_ok "$SCR_OK"
            raw native "$v" "$r" "$LOAD_MSGS" scrapes_bad "$SCR_BAD"
            raw native "$v" "$r" "$LOAD_MSGS" scraper_cpu_s "$SCR_CPU"
            log "  $RUN_RATE msg/s, server $RUN_TICKS ticks, $SCR_OK scrapes (scraper CPU $SCR_CPU s)"
        else
            log "  $RUN_RATE msg/s, server $RUN_TICKS ticks"
        fi
    done
done
# Server CPU per scrape natively: BURST scrapes back to back against the
# idle server (its histogram filled by the runs above); CPU time of its
# thread from /proc/PID/schedstat (ns), or CPU ticks where that is missing.
if ((BURST > 0)); then
    log "native: $BURST scrapes back to back"
    bcmd=(python3 "$HELPER" burst --url "http://127.0.0.1:$ncport/metrics" --count "$BURST")
    ((SCRAPE_KEEPALIVE == 0)) || bcmd+=(--keepalive)
    note_cmd "$(show_cmd timeout "$RUN_TIMEOUT" "${bcmd[@]}")   # server CPU per scrape"
    ns0=$(schedstat_ns "$SRV_CHILD")
    k0=$(cpu_ticks "$SRV_CHILD")
    bres=$(timeout "$RUN_TIMEOUT" "${bcmd[@]}") || die "burst of scrapes failed: $bres"
    ns1=$(schedstat_ns "$SRV_CHILD")
    k1=$(cpu_ticks "$SRV_CHILD")
    read -r bok _ bwall <<<"$bres"
    raw native burst 1 "$BURST" scrapes_ok "$bok"
    raw native burst 1 "$BURST" wall "$bwall"
    raw native burst 1 "$BURST" server_ticks "$((k1 - k0))"
    if [[ $ns0 != - && $ns1 != - ]]; then raw native burst 1 "$BURST" server_ns "$((ns1 - ns0))"; fi
    if [[ $ns0 != - && $ns1 != - ]]; then
        log "  $bok scrapes in $bwall s; server CPU $(((ns1 - ns0) / 1000)) us"
    else
        log "  $bok scrapes in $bwall s; server CPU $((k1 - k0)) ticks"
    fi
fi
stop_server_now
NATIVE_COUNTED=$(smtpsink_counted "$WORK/smtpsink.stdout")
[[ $NATIVE_COUNTED == "${SENT[smtpsink]}" ]] ||
    log "warning: the native server counted '${NATIVE_COUNTED:-nothing}' messages, the generators sent ${SENT[smtpsink]}"
NAT_ELAPSED=$((SECONDS - NAT_START))

# ----------------------------------------------------------------- report ----

RUNTIME=$((SECONDS - T_START))
meta DATE "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta MSGS "$MSGS"
meta BASE_MSGS "$BASE_MSGS"
meta CG_REPEAT "$CG_REPEAT"
meta SESSIONS "$SESSIONS"
meta LOAD_CONNS "$LOAD_CONNS"
meta LOAD_MSGS "$LOAD_MSGS"
meta LOAD_SECONDS "$LOAD_SECONDS"
meta CAL_RATE "$CAL_RATE"
meta SCRAPE_INTERVAL "$SCRAPE_INTERVAL"
meta SCRAPE_KEEPALIVE "$SCRAPE_KEEPALIVE"
meta CLK_TCK "$CLK_TCK"
meta NPROC "$(nproc)"
meta TOP "$TOP"
meta CUR_REV "$CUR_REV"
meta CUR_BIN_SHA "$CUR_SHA"
meta BASE_REV "$BASE_REV"
meta BASE_BIN_SHA "$BASE_SHA"
meta RULES_FILE "$RULES"
meta RUNTIME_S "$RUNTIME (callgrind $CG_ELAPSED s, native $NAT_ELAPSED s)"
meta VALGRIND "$(valgrind --version)"
meta REPRODUCE "CARGO_TARGET_DIR=$CUR_TARGET_DIR BASE_TARGET_DIR=$BASE_TARGET_DIR BASE_REV=$BASE_REV MSGS=$MSGS BASE_MSGS=$BASE_MSGS CG_REPEAT=$CG_REPEAT ROUNDS=$ROUNDS LOAD_MSGS=$LOAD_MSGS SCRAPE_KEEPALIVE=$SCRAPE_KEEPALIVE scripts/rules-bench.sh"
meta NATIVE_NOTE "the native server counted ${NATIVE_COUNTED:-no} messages; the generators sent it ${SENT[smtpsink]} (probe and calibration included); $FAILED_RUNS failed run(s)"

machine_md >"$WORK/machine.md"
printf '%s\n' "${COMMANDS[@]}" >"$WORK/commands.txt"
python3 "$HELPER" report --raw "$RAW" --meta "$META" --commands "$WORK/commands.txt" \
    --machine "$WORK/machine.md" --annot-dir "$ANNOT" --tsv-out "$TSV" >"$WORK/report.md" ||
    die "the report failed (raw data: $RAW)"
cp -- "$WORK/report.md" "$REPORT"
cat "$REPORT"
log "report: $REPORT"
log "TSV: $TSV"
log "callgrind files: $ARTIFACTS/"
