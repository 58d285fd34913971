#!/usr/bin/env bash
# mta-rules.sh: a real MTA meets a misbehaving sink. A private Postfix relays
# everything to an smtpsink whose rules refuse or defer some recipients at
# RCPT; the script checks that Postfix bounces the refused ones (and sends
# the bounce DSNs, which reach the sink too) and keeps the deferred ones in
# its queue with the sink's reply as the reason:
#   mta_rules_check.py inject -> Postfix (private instance)
#       -> smtpsink --rules FILE --maildir DIR --control IP:PORT --json FILE
# all on loopback.
#
# Postfix is set up exactly as scripts/mta-bench.sh sets it up (this script
# sources it with MTA_BENCH_SOURCED=1 for its setup: a private instance in
# its own PID and mount namespace with a private /etc, relaying everything,
# bounces included, to the sink by IP literal; a private network namespace
# with only loopback where the kernel allows). Then:
#   1. the sink starts with a rules file: recipients bounce-*@ get
#      "550 5.1.1 No such user (smtpsink rule)", defer-*@ get
#      "451 4.3.0 Try again later (smtpsink rule)", both at RCPT; with
#      MAGIC=1 (default) magic addresses too: reject553-*@ get 553,
#      tempfail-*@ get 451; everyone else (ok-*@, and the senders the
#      bounces go to) is accepted and stored in the Maildir
#   2. MSGS messages go to Postfix over SMTP, a fixed mix of shapes (one
#      recipient of a kind, or several of different kinds: see SHAPES in
#      scripts/mta_rules_check.py), each recipient address unique; Postfix
#      must accept every one (250)
#   3. the wait, polling, at most DRAIN_TIMEOUT s: until the Maildir holds
#      the expected files (originals with an ok recipient + one DSN per
#      message with a refused recipient), Postfix's incoming and active
#      queues are empty and its deferred queue holds the expected messages,
#      all of that unchanged for SETTLE s
#   4. postqueue -j and -p of the private instance; Postfix is stopped; the
#      sink's GET /stats (rule hits, replies by code); the sink is stopped
#   5. mta_rules_check.py check, with exact counts from the mix: each ok
#      recipient stored exactly once; each refused recipient logged
#      status=bounced with the sink's reply and named in exactly one DSN
#      (null sender, to the message's sender); each deferred recipient in
#      postqueue -j with the sink's 451 as its delay reason and never
#      delivered; the sink's rule hits equal the RCPT attempts in Postfix's
#      log (deferred recipients are not retried within a run: Postfix's
#      minimal backoff is 300 s; a retry would be counted from the log)
#
# Usage: scripts/mta-rules.sh
# Environment:
#   MSGS=N            messages injected (default 60; QUICK: 24)
#   MAGIC=0           leave out the magic-address recipients (and magic
#                     addresses in the rules file)
#   DRAIN_TIMEOUT=S   most seconds to wait for the outcome (default 60)
#   SETTLE=S          seconds the outcome must stay unchanged (default 2)
#   RUN_TIMEOUT=S     bound of the injection (default 300)
#   SMTPSINK_BIN=P    use this smtpsink instead of building the workspace
#                     (smtpload is not used here; SMTPLOAD_BIN may be left
#                     unset)
#   NETNS=0, BUILD_RETRIES, BUILD_RETRY_WAIT: as in mta-bench.sh
#   KEEP_LOGS=1       keep the rules file, the mix, the Maildir, postqueue's
#                     output, /stats, the sink's and Postfix's logs and
#                     configuration in results/mta-rules-<date>-logs/
#
# Needs root (as mta-bench.sh). Prints a summary table and one line per
# check; writes nothing else unless KEEP_LOGS=1. Exits 1 when a check
# failed. Takes 10-15 s after the build.

set -euo pipefail

if [[ ${QUICK:-0} == 1 ]]; then : "${MSGS:=24}"; fi
: "${MSGS:=60}"
: "${MAGIC:=1}"
: "${DRAIN_TIMEOUT:=60}"
: "${SETTLE:=2}"

# mta-bench.sh's setup, Postfix only, no baseline. It wants both binaries or
# neither; smtpload is not used here, so with SMTPSINK_BIN alone any
# executable stands in for it.
if [[ -n ${SMTPSINK_BIN:-} && -z ${SMTPLOAD_BIN:-} ]]; then SMTPLOAD_BIN=$SMTPSINK_BIN; fi
# (The SC2034 and SC1091 directives keep a plain `shellcheck` quiet; with
# `shellcheck -x` it follows mta-bench.sh and lib.sh, which read these.)
# shellcheck disable=SC2034
MTAS=postfix BASELINE=0 MTA_BENCH_SOURCED=1
# shellcheck source=scripts/mta-bench.sh disable=SC1091
source "$(dirname -- "${BASH_SOURCE[0]}")/mta-bench.sh"
# shellcheck disable=SC2034
LIB_TAG=mta-rules

require_uint MSGS MAGIC SETTLE
((MSGS >= 1)) || die "MSGS must be at least 1"
[[ -z ${SKIP[postfix]:-} ]] || die "postfix cannot be set up: ${SKIP[postfix]}"
for opt in --rules --maildir --control; do
    "$SMTPSINK_BIN" --help 2>/dev/null | grep -q -- "$opt" || die "$SMTPSINK_BIN has no $opt"
done
command -v postqueue >/dev/null 2>&1 || die "postqueue (postfix) is required"

CHECK_PY=$LIB_DIR/mta_rules_check.py
BASE=$RESULTS_DIR/mta-rules-$STAMP     # KEEP_LOGS=1 keeps $BASE-logs
D=$WORK/steps/rules
mkdir -p -- "$D"
START_S=$SECONDS

# ---------------------------------------------------------------- the sink ----

{
    printf '# mta-rules.sh: refuse bounce-*, defer defer-*, at RCPT; accept the rest.\n'
    printf 'seed = 1\n'
    if ((MAGIC)); then printf 'magic_addresses = true   # reject553-*@ and tempfail-*@ too\n'; fi
    printf '\n[[rule]]\nname = "bounce"\nstage = "rcpt"\naddress = "bounce-*@*"\n'
    printf 'reply = "550 5.1.1 No such user (smtpsink rule)"\n'
    printf '\n[[rule]]\nname = "defer"\nstage = "rcpt"\naddress = "defer-*@*"\n'
    printf 'reply = "451 4.3.0 Try again later (smtpsink rule)"\n'
} >"$D/rules.toml"

read -r SINK_PORT PF_PORT CTL_PORT < <(free_ports 3)
postfix_instance "$PF_PORT"

log "starting smtpsink on 127.0.0.1:$SINK_PORT (rules: $D/rules.toml, control on 127.0.0.1:$CTL_PORT)"
start_bg "$D/sink.out" "$D/sink.err" "${WRAP[@]}" "$SMTPSINK_BIN" --listen "127.0.0.1:$SINK_PORT" \
    --hostname sink.mta-rules.test --rules "$D/rules.toml" --maildir "$D/maildir" \
    --control "127.0.0.1:$CTL_PORT" --json "$D/sink.json"
SINK_PID=$LAST_PID
ns_greeting smtpsink "$SINK_PID" "$SINK_PORT" "$D/sink.err" 10 || die "smtpsink did not start"
mta_start postfix "$SINK_PORT" || die "postfix did not start: $(tail -n 3 "${MTA_DIR[postfix]}/mta.err" 2>/dev/null)"

# ------------------------------------------------------------ the messages ----

read -r EXP_FILES EXP_DEFERRED < <(python3 "$CHECK_PY" plan --messages "$MSGS" --magic "$MAGIC" --out "$D/plan.json")
log "injecting $MSGS messages into postfix; expecting $EXP_FILES files at the sink and $EXP_DEFERRED messages left deferred"
setpriv --pdeathsig KILL timeout "$RUN_TIMEOUT" "${WRAP[@]}" python3 "$CHECK_PY" inject \
    --plan "$D/plan.json" --port "$PF_PORT" >"$D/inject.out" 2>&1 ||
    die "the injection failed: $(tail -n 3 "$D/inject.out" | tr '\n' ' ')"
T_INJECTED=$EPOCHREALTIME

# The wait: the expected files in new/, nothing in flight at Postfix, the
# expected messages in its deferred queue; unchanged for SETTLE s.
postfix_settle "$EXP_FILES" "$EXP_DEFERRED"
files=$FILES_NOW busy=$BUSY deferred=$DEFERRED_NOW end=$END
WAIT_S=$(awk -v a="$T_INJECTED" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "wait ended ($end) after ${WAIT_S}s: $files files in new/ (expected $EXP_FILES), postfix in flight $busy, deferred $deferred (expected $EXP_DEFERRED)"

# ------------------------------------------------------------- the checks ----

# postqueue talks to the instance's showq over its spool's public/ socket.
timeout 30 postqueue -c "$PF_CONF" -j >"$D/queue.json" 2>"$D/queue.err" ||
    log "postqueue -j failed: $(tail -n 2 "$D/queue.err" | tr '\n' ' ')"
timeout 30 postqueue -c "$PF_CONF" -p >"$D/queue.txt" 2>>"$D/queue.err" ||
    log "postqueue -p failed: $(tail -n 2 "$D/queue.err" | tr '\n' ' ')"
mta_stop postfix
cp -- "$(postfix_log)" "$D/maillog" 2>/dev/null || : >"$D/maillog"
"${NSX[@]}" timeout 30 python3 "$CHECK_PY" fetch "http://127.0.0.1:$CTL_PORT/stats" "$D/stats.json" ||
    log "GET /stats failed"
stop_pid "$SINK_PID"

RC=0
python3 "$CHECK_PY" check --plan "$D/plan.json" --maildir "$D/maildir" --maillog "$D/maillog" \
    --queue-json "$D/queue.json" --queue-text "$D/queue.txt" --stats "$D/stats.json" \
    --sink-json "$D/sink.json" --json "$D/check.json" || RC=$?
printf '\npostfix %s (private instance), %s; wait %s (%ss after the injection); took %ss in all\n' \
    "${MTA_VERSION[postfix]:-unknown}" "$(basename -- "$SMTPSINK_BIN")" "$end" "$WAIT_S" "$((SECONDS - START_S))"
if ((RC != 0)); then
    if ((KEEP_LOGS)); then
        die "a check failed; the Maildir, maillog, queue.json and stats.json are kept in $BASE-logs/steps/rules"
    fi
    die "a check failed; run with KEEP_LOGS=1 to keep the Maildir, maillog, queue.json and stats.json"
fi
