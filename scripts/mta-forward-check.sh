#!/usr/bin/env bash
# mta-forward-check.sh: a real Postfix delivering into smtpsink over LMTP and
# over SMTP with XFORWARD (issue 12), checked with exact counts:
#   smtpload -> Postfix (private instance) --lmtp--> smtpsink --listen-lmtp
#                                          --smtp + XFORWARD--> smtpsink --xforward
# all on loopback, every message stored with smtpsink --maildir.
#
# Postfix is set up as scripts/mta-bench.sh sets it up (this script sources it
# with MTA_BENCH_SOURCED=1: a private instance in its own PID and mount
# namespace with a private /etc; a private network namespace with only
# loopback where the kernel allows), plus a transport map:
#   lmtp.test  -> lmtp:inet:127.0.0.1:LMTP_PORT  (lmtp_send_xforward_command = no)
#   smtp.test  -> smtp:[127.0.0.1]:SMTP_PORT     (smtp_send_xforward_command = yes)
# The sink: smtpsink --listen 127.0.0.1:SMTP_PORT --listen-lmtp
# 127.0.0.1:LMTP_PORT --xforward --maildir DIR, with rules at the end of
# data that LMTP asks once per recipient: rcpt1-*@ get "452 4.2.2 Mailbox
# full", rcpt2-*@ get "550 5.1.1 No such user"; everyone else 250.
#   1. LMTP path: smtpload -m LMTP_MSGS -r 3 --to rcpt{r}-{seq}@lmtp.test
#      --from sender-{seq}@lmtp.test. Per message Postfix must get 250
#      (rcpt0, delivered), 452 (rcpt1, deferred: it stays in the deferred
#      queue, no retry within the run) and 550 (rcpt2, bounced: one DSN to
#      the sender, delivered over LMTP again).
#   2. XFORWARD path: smtpload -m SMTP_MSGS --bind 127.0.0.5,127.0.0.6
#      --helo xforward-client.test --to xf-{seq}@smtp.test: Postfix relays
#      with XFORWARD, so smtpsink's Received field must name the original
#      client (client5.xforward.test [127.0.0.5] or client6... [127.0.0.6]:
#      Postfix finds the names in its private /etc/hosts; the one Postfix's
#      own Received field names in that very message) and its HELO, not
#      Postfix's 127.0.0.1; the two clients share Postfix's cached
#      connections, so XFORWARD must hold for its one transaction only.
#   3. the wait, polling, at most DRAIN_TIMEOUT s: the Maildir holds the
#      expected files (LMTP_MSGS originals + LMTP_MSGS DSNs + SMTP_MSGS),
#      Postfix's incoming and active queues are empty and its deferred
#      queue holds LMTP_MSGS messages, all unchanged for SETTLE s
#   4. postqueue -j of the private instance, Postfix's log; both stopped
#   5. scripts/mta_forward_check.py: exact counts per path from the
#      Maildir (each original once, byte-exact body), Postfix's log
#      (status=sent/deferred/bounced per recipient, with the sink's reply)
#      and queue (each deferred message holds exactly its rcpt1 recipient
#      with the 452 as the reason), the trace fields (XFORWARD's client and
#      HELO on the SMTP path; Postfix itself, with LMTP, on the LMTP path)
#
# Usage: scripts/mta-forward-check.sh
# Environment:
#   LMTP_MSGS=N       messages over LMTP (default 20)
#   SMTP_MSGS=N       messages over SMTP with XFORWARD (default 20)
#   DRAIN_TIMEOUT=S   most seconds to wait for the outcome (default 60)
#   SETTLE=S          seconds the outcome must stay unchanged (default 2)
#   KNOWN_BUGS=A,B    checks reported KNOWN, not FAIL, when they fail (for a
#                     reported bug; default none)
#   RUN_TIMEOUT=S     bound of each smtpload run (default 300)
#   SMTPSINK_BIN=P, SMTPLOAD_BIN=P
#                     use these binaries (both) instead of building the
#                     workspace (cargo build --release --workspace)
#   NETNS=0, BUILD_RETRIES, BUILD_RETRY_WAIT: as in mta-bench.sh
#   KEEP_LOGS=1       keep the rules file, the Maildir, postqueue's output,
#                     the sink's and Postfix's logs and configuration in
#                     results/mta-forward-<date>-logs/
#
# Needs root (as mta-bench.sh) and an installed Postfix (installed with
# apt-get, no service starts, when missing). Prints one line per check and
# a summary; writes nothing else unless KEEP_LOGS=1. Exits 1 when a check
# failed. Takes about 10 s after the build.

set -euo pipefail

: "${LMTP_MSGS:=20}"
: "${SMTP_MSGS:=20}"
: "${DRAIN_TIMEOUT:=60}"
: "${SETTLE:=2}"
# Checks that fail for a reported smtpsink bug (see mta_forward_check.py
# --known); none today.
: "${KNOWN_BUGS=}"

# mta-bench.sh's setup, Postfix only, no baseline.
# (The SC2034 and SC1091 directives keep a plain `shellcheck` quiet; with
# `shellcheck -x` it follows mta-bench.sh and lib.sh, which read these.)
# shellcheck disable=SC2034
MTAS=postfix BASELINE=0 MTA_BENCH_SOURCED=1
# shellcheck source=scripts/mta-bench.sh disable=SC1091
source "$(dirname -- "${BASH_SOURCE[0]}")/mta-bench.sh"
# shellcheck disable=SC2034
LIB_TAG=mta-forward

require_uint LMTP_MSGS SMTP_MSGS DRAIN_TIMEOUT SETTLE
((LMTP_MSGS >= 1 && SMTP_MSGS >= 1)) || die "LMTP_MSGS and SMTP_MSGS must be at least 1"
[[ -z ${SKIP[postfix]:-} ]] || die "postfix cannot be set up: ${SKIP[postfix]}"
for opt in --listen-lmtp --xforward --rules --maildir; do
    "$SMTPSINK_BIN" --help 2>/dev/null | grep -q -- "$opt" || die "$SMTPSINK_BIN has no $opt"
done
"$SMTPLOAD_BIN" --help 2>/dev/null | grep -q -- '--bind' || die "$SMTPLOAD_BIN has no --bind"
command -v postqueue >/dev/null 2>&1 || die "postqueue (postfix) is required"

CHECK_PY=$LIB_DIR/mta_forward_check.py
BASE=$RESULTS_DIR/mta-forward-$STAMP     # KEEP_LOGS=1 keeps $BASE-logs
D=$WORK/steps/forward
mkdir -p -- "$D"
START_S=$SECONDS

SINK_HOST=sink.mta-forward.test
CLIENT_ADDRS=127.0.0.5,127.0.0.6
CLIENT_NAMES=127.0.0.5=client5.xforward.test,127.0.0.6=client6.xforward.test
CLIENT_HELO=xforward-client.test
LMTP_HELO=lmtp-client.test

# ---------------------------------------------------------------- the sink ----

cat >"$D/rules.toml" <<'EOF'
# mta-forward-check.sh: LMTP asks the end-of-data rules once per recipient.
[[rule]]
name = "full"
stage = "end"
address = "rcpt1-*@*"
reply = "452 4.2.2 Mailbox full"

[[rule]]
name = "gone"
stage = "end"
address = "rcpt2-*@*"
reply = "550 5.1.1 No such user"
EOF

read -r SMTP_PORT LMTP_PORT PF_PORT < <(free_ports 3)
postfix_instance "$PF_PORT"

log "starting smtpsink: SMTP+XFORWARD on 127.0.0.1:$SMTP_PORT, LMTP on 127.0.0.1:$LMTP_PORT"
start_bg "$D/sink.out" "$D/sink.err" "${WRAP[@]}" "$SMTPSINK_BIN" --listen "127.0.0.1:$SMTP_PORT" \
    --listen-lmtp "127.0.0.1:$LMTP_PORT" --xforward --hostname "$SINK_HOST" \
    --rules "$D/rules.toml" --maildir "$D/maildir" --json "$D/sink.json"
SINK_PID=$LAST_PID
ns_greeting smtpsink "$SINK_PID" "$SMTP_PORT" "$D/sink.err" 10 || die "smtpsink did not start"
ns_greeting "smtpsink (LMTP)" "$SINK_PID" "$LMTP_PORT" "$D/sink.err" 10 || die "smtpsink's LMTP listener did not answer"

# ----------------------------------------------------------------- Postfix ----

# Names for the XFORWARD clients in Postfix's private /etc/hosts, so that its
# smtpd finds one (peername lookup on: files, then a resolver at 127.0.0.1
# that nobody answers) and XFORWARD has a NAME to pass on.
tr ',=' '\n\t' <<<"$CLIENT_NAMES" >>"$NSROOT/etc/hosts"
# The two paths by domain; relayhost (the SMTP listener) gets nothing else.
printf 'lmtp.test lmtp:inet:127.0.0.1:%s\nsmtp.test smtp:[127.0.0.1]:%s\n' \
    "$LMTP_PORT" "$SMTP_PORT" >"${MTA_DIR[postfix]}/transport"
# shellcheck disable=SC2034 # read by postfix_start
POSTFIX_MAIN_EXTRA="# mta-forward-check.sh: one domain per path.
transport_maps = texthash:${MTA_DIR[postfix]}/transport
smtp_send_xforward_command = yes
lmtp_send_xforward_command = no
lmtp_lhlo_name = $LMTP_HELO
smtpd_peername_lookup = yes"
# shellcheck disable=SC2034 # read by postfix_start
POSTFIX_MASTER_EXTRA="lmtp       unix  - - n - - lmtp"
mta_start postfix "$SMTP_PORT" || die "postfix did not start: $(tail -n 3 "${MTA_DIR[postfix]}/mta.err" 2>/dev/null)"

# ------------------------------------------------------------ the messages ----

# load NAME ARGS...: one bounded smtpload run into Postfix; every message
# must be accepted there.
load() {
    local name=$1 rc=0
    shift
    # --max-errors 0: a message Postfix did not take fails the run here,
    # named, rather than as a missing file later.
    setpriv --pdeathsig KILL timeout "$RUN_TIMEOUT" "${WRAP[@]}" "$SMTPLOAD_BIN" -q -s 2000 \
        --max-errors 0 --json "$D/$name.json" "$@" "127.0.0.1:$PF_PORT" >"$D/$name.out" 2>&1 || rc=$?
    ((rc == 0)) || die "smtpload ($name) exited $rc: $(tail -n 3 "$D/$name.out" | tr '\n' ' ')"
}
log "LMTP path: $LMTP_MSGS messages, 3 recipients each (250, 452, 550 at the sink)"
load lmtp -c 2 -m "$LMTP_MSGS" -r 3 --to 'rcpt{r}-{seq}@lmtp.test' --from 'sender-{seq}@lmtp.test'
log "XFORWARD path: $SMTP_MSGS messages from $CLIENT_ADDRS, HELO $CLIENT_HELO"
load xforward -c 2 -m "$SMTP_MSGS" --bind "$CLIENT_ADDRS" --helo "$CLIENT_HELO" \
    --to 'xf-{seq}@smtp.test' --from 'xf-sender-{seq}@smtp.test'
T_INJECTED=$EPOCHREALTIME

# The wait: the expected files in new/, nothing in flight at Postfix, the
# LMTP messages in its deferred queue; unchanged for SETTLE s.
EXP_FILES=$((2 * LMTP_MSGS + SMTP_MSGS))
postfix_settle "$EXP_FILES" "$LMTP_MSGS"
files=$FILES_NOW busy=$BUSY deferred=$DEFERRED_NOW end=$END
WAIT_S=$(awk -v a="$T_INJECTED" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "wait ended ($end) after ${WAIT_S}s: $files files in new/ (expected $EXP_FILES), postfix in flight $busy, deferred $deferred (expected $LMTP_MSGS)"

# ------------------------------------------------------------- the checks ----

# postqueue talks to the instance's showq over its spool's public/ socket.
timeout 30 postqueue -c "$PF_CONF" -j >"$D/queue.json" 2>"$D/queue.err" ||
    log "postqueue -j failed: $(tail -n 2 "$D/queue.err" | tr '\n' ' ')"
mta_stop postfix
cp -- "$(postfix_log)" "$D/maillog" 2>/dev/null || : >"$D/maillog"
stop_pid "$SINK_PID"

RC=0
python3 "$CHECK_PY" --maildir "$D/maildir" --maillog "$D/maillog" --queue-json "$D/queue.json" \
    --lmtp-msgs "$LMTP_MSGS" --smtp-msgs "$SMTP_MSGS" --sink-host "$SINK_HOST" \
    --clients "$CLIENT_NAMES" --client-helo "$CLIENT_HELO" --lmtp-helo "$LMTP_HELO" \
    --smtp-port "$SMTP_PORT" --lmtp-port "$LMTP_PORT" --sink-json "$D/sink.json" \
    --known "$KNOWN_BUGS" || RC=$?
printf '\npostfix %s (private instance), %s; wait %s (%ss after the injection); took %ss in all\n' \
    "${MTA_VERSION[postfix]:-unknown}" "$(basename -- "$SMTPSINK_BIN")" "$end" "$WAIT_S" "$((SECONDS - START_S))"
if ((RC != 0)); then
    if ((KEEP_LOGS)); then
        die "a check failed; the Maildir, maillog and queue.json are kept in $BASE-logs/steps/forward"
    fi
    die "a check failed; run with KEEP_LOGS=1 to keep the Maildir, maillog and queue.json"
fi
