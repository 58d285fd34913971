#!/usr/bin/env bash
# mta-bench.sh: benchmark real MTAs end to end:
#   smtpload -> MTA under test -> smtpsink --verify, all on loopback.
#
# For each MTA (Postfix; Exim and OpenSMTPD from Debian's packages) the
# script sets up a throwaway private instance under $WORK: its own
# configuration, spool and log, listening on 127.0.0.1 on a free port and
# relaying everything (bounces and delay notices included) to smtpsink on
# 127.0.0.1 -- no DNS, no MX lookups. Each instance runs in its own PID and
# mount namespace (so it dies as a whole: nothing outlives the script) with
# a private copy of /etc (its users, /etc/hosts, and an /etc/resolv.conf
# whose only name server is 127.0.0.1); where the kernel allows it, the
# MTAs, the sinks and smtpload all run in one private network namespace that
# has nothing but a loopback interface, so nothing can leave the machine.
#
# Per MTA, after an unrecorded warm-up (a few messages that must all arrive):
#   max     closed loop: smtpload -c CONNS -d DURATION
#   ladder  open loop: smtpload -c CONNS --rate R -d DURATION for R = each
#           LADDER percentage of the max step's delivered msgs/s
# and the same steps for the baseline "direct": smtpload -> smtpsink with no
# MTA between them, so the MTA's own cost shows. Each step gets a fresh sink
# (smtpsink --verify --run-summary FILE --json FILE) that exits by itself once
# every message smtpload had acknowledged (smtpload --summary FILE) has
# arrived. The MTA's queue decides when nothing more will come: once it has
# stayed empty for LINGER seconds the sink is stopped and what is missing is
# lost (the sink's own --linger is set beyond DRAIN_TIMEOUT, so that an MTA
# that pauses between deliveries is not taken for one that lost mail). The
# next step starts on an empty queue (when it does not empty within the
# bounds, the MTA is restarted with a clean spool and the step says so).
# Reported per step: accepted msgs/s at the MTA (smtpload's JSON), delivered
# msgs/s at the sink (messages delivered / (last arrival - smtpload's
# start)), transit latency p50/p99/p99.9/max (the sink's JSON),
# lost/duplicated/corrupted, and the drain time (the sink's last arrival -
# smtpload's end).
#
# With binaries that lack smtpload --summary / smtpsink --run-summary the
# script still runs: it then waits for the MTA's queue to empty, stops the
# sink and reads its "verify" line (no transit latency; drain time from the
# queue polls).
#
# Usage: scripts/mta-bench.sh
# Environment:
#   MTAS="..."        MTAs to run (default "postfix exim opensmtpd")
#   BASELINE=0        leave out the direct smtpload -> smtpsink row
#   CONNS=N           smtpload connections, every step (default 20)
#   DURATION=S        seconds of load per step (default 20; QUICK: 3)
#   LADDER="..."      open-loop steps in % of the max (default "25 50 75 100";
#                     QUICK: "50 100")
#   SIZE=BYTES        message size (default 1024)
#   WARMUP_MSGS=N     warm-up messages per MTA (default 50)
#   LINGER=S          seconds an MTA's queue must stay empty, with messages
#                     still missing at the sink, before they count as lost
#                     (default 10; QUICK: 5)
#   DRAIN_TIMEOUT=S   most seconds to wait after a step's load for the sink
#                     to see everything (default 120; QUICK: 30); past it
#                     the step is cut (what is missing is not called lost)
#                     and the MTA restarted clean
#   QUEUE_TIMEOUT=S   most seconds to wait for an empty MTA queue after the
#                     sink finished (default 30)
#   RUN_TIMEOUT=S     bound of each smtpload run (default 300)
#   QUICK=1           smoke run (the QUICK defaults above); the plot goes to
#                     results/ only, docs/mta-bench.svg is left alone
#   NETNS=0           do not use a private network namespace
#   KEEP_LOGS=1       keep each step's files (smtpload and sink JSON, run
#                     summary, outputs) and each MTA's configuration and
#                     logs in results/mta-bench-<date>-logs/
#   SMTPSINK_BIN=P, SMTPLOAD_BIN=P
#                     use these binaries instead of building the workspace
#   MTA_CACHE=DIR     where downloaded .debs are kept (default
#                     ~/.cache/smtpsink-bench/debs)
#   BUILD_RETRIES, BUILD_RETRY_WAIT, BENCH_VENV: as in lib.sh
#
# Installs Debian's postfix package when missing (no service starts) and
# downloads exim4-daemon-light and opensmtpd with `apt-get download`: they
# conflict with postfix (all three provide mail-transport-agent), so they are
# only unpacked (dpkg -x) under $WORK and run from there; only their missing
# library dependencies are installed with apt (no service starts). An MTA
# that cannot be set up is skipped, and the report says why. Needs root
# (private namespaces, MTA users). Plots with matplotlib from the venv of
# lib.sh's ensure_venv (without it: no plot).
#
# Writes results/mta-bench-<date>.md (the report, also printed),
# results/mta-bench-<date>.tsv (one line a step, all measured values),
# results/mta-bench-<date>.svg and, unless QUICK=1, docs/mta-bench.svg.

set -euo pipefail

# Binary overrides must be read before lib.sh sets its defaults.
ENV_SMTPSINK_BIN=${SMTPSINK_BIN:-}
ENV_SMTPLOAD_BIN=${SMTPLOAD_BIN:-}

LIB_TAG=mta-bench
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if ((QUICK)); then
    : "${DURATION:=3}" "${LADDER:=50 100}" "${LINGER:=5}" "${DRAIN_TIMEOUT:=30}"
fi
: "${MTAS:=postfix exim opensmtpd}"
: "${BASELINE:=1}"
: "${CONNS:=20}"
: "${DURATION:=20}"
: "${LADDER:=25 50 75 100}"
: "${SIZE:=1024}"
: "${WARMUP_MSGS:=50}"
: "${LINGER:=10}"
: "${DRAIN_TIMEOUT:=120}"
: "${QUEUE_TIMEOUT:=30}"
: "${NETNS:=1}"
: "${KEEP_LOGS:=0}"
: "${MTA_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/smtpsink-bench/debs}"
read -r -a MTA_LIST <<<"$MTAS"
read -r -a LADDER_PCTS <<<"$LADDER"

require_uint QUICK BASELINE CONNS DURATION SIZE WARMUP_MSGS LINGER DRAIN_TIMEOUT QUEUE_TIMEOUT \
    RUN_TIMEOUT NETNS KEEP_LOGS BUILD_RETRIES BUILD_RETRY_WAIT
for p in "${LADDER_PCTS[@]}"; do
    if [[ ! $p =~ ^[0-9]+$ ]] || ((p == 0)); then die "LADDER must be positive integers (got '$LADDER')"; fi
done
for m in "${MTA_LIST[@]}"; do
    [[ $m =~ ^(postfix|exim|opensmtpd)$ ]] || die "unknown MTA '$m' in MTAS (postfix, exim, opensmtpd)"
done
((CONNS >= 1 && DURATION >= 1 && WARMUP_MSGS >= 1)) || die "CONNS, DURATION and WARMUP_MSGS must be at least 1"
((RUN_TIMEOUT >= DURATION + 30)) || die "RUN_TIMEOUT ($RUN_TIMEOUT) must be at least DURATION + 30"
((EUID == 0)) || die "run as root: private namespaces, MTA users and spools need it"
for t in unshare nsenter setpriv pgrep dpkg-deb; do
    command -v "$t" >/dev/null 2>&1 || die "$t is required"
done

declare -A SKIP=()       # MTA -> why it was left out
declare -A MTA_UPID=()   # MTA -> PID of its `unshare` (its namespace init is the only child)
declare -A MTA_PORT=() MTA_DIR=() MTA_VERSION=() MEASURED=()
NOTES=()
REPORT_PY=$LIB_DIR/mta_report.py

# ------------------------------------------------------------ binaries ----

ensure_postfix
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is required"
use_binaries "$ENV_SMTPSINK_BIN" "$ENV_SMTPLOAD_BIN"

# The run-summary interface: smtpload --summary and smtpsink --run-summary.
IFACE=legacy
if "$SMTPLOAD_BIN" --help 2>/dev/null | grep -q -- '--summary' &&
    "$SMTPSINK_BIN" --help 2>/dev/null | grep -q -- '--run-summary'; then
    IFACE=summary
else
    log "these smtpload/smtpsink lack --summary/--run-summary: falling back to queue polling (no transit latency)"
    NOTES+=("the binaries had no smtpload --summary / smtpsink --run-summary: each step waited for the MTA's queue to empty, then stopped the sink; no transit latency, drain time from 0.1 s queue polls, lost = acknowledged - delivered")
fi

# Only the benchmark plots: the scripts that source this file for its setup
# need no venv (and no pip download on a fresh machine).
PLOT_PY=
if [[ -n ${MTA_BENCH_SOURCED:-} ]]; then
    :
elif ensure_venv matplotlib; then
    PLOT_PY=$VENV_PY
else
    NOTES+=("matplotlib could not be installed (pip into $BENCH_VENV failed): no plot")
fi

make_work mta-bench
# The MTAs' unprivileged users must be able to reach their spools below it.
chmod 755 "$WORK"
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p -- "$RESULTS_DIR"
BASE=$RESULTS_DIR/mta-bench-$STAMP
REPORT=$BASE.md
TSV=$BASE.tsv
SVG=$BASE.svg
DOCS_SVG=$REPO_ROOT/docs/mta-bench.svg

# ----------------------------------------------------- Debian packages ----

# deb_unpack PKG: download PKG's .deb into MTA_CACHE (once), install the
# library packages it depends on that are missing (no service starts), and
# unpack it under $WORK/pkg/PKG; sets DEB_ROOT and DEB_VERSION. Returns 1
# with DEB_WHY set when that fails.
deb_unpack() {
    local pkg=$1 deb deps dep name missing=()
    DEB_WHY='' DEB_ROOT=$WORK/pkg/$pkg
    mkdir -p -- "$MTA_CACHE"
    deb=$(find "$MTA_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
    if [[ -z $deb ]]; then
        log "apt-get download $pkg (into $MTA_CACHE)"
        if ! (cd -- "$MTA_CACHE" && timeout 300 apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2); then
            log "apt-get download $pkg failed; running apt-get update and retrying"
            timeout 300 apt-get -q update >&2 || true
            (cd -- "$MTA_CACHE" && timeout 300 apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2) ||
                { DEB_WHY="apt-get download $pkg failed"; return 1; }
        fi
        deb=$(find "$MTA_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
        [[ -n $deb ]] || { DEB_WHY="apt-get download $pkg left no .deb"; return 1; }
    fi
    DEB_VERSION=$(dpkg-deb -f "$deb" Version)
    # Its libraries only: the other dependencies (exim4-base, adduser, ...)
    # belong to the package's system integration, which is not used here.
    deps=$(dpkg-deb -f "$deb" Depends Pre-Depends | tr ',' '\n')
    while read -r dep; do
        name=${dep%%[ (|]*}
        [[ $name == lib* ]] || continue
        dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q 'install ok installed' || missing+=("$name")
    done <<<"$deps"
    if ((${#missing[@]})) && ! apt_install_nostart "${missing[@]}"; then
        DEB_WHY="apt-get install ${missing[*]} (libraries $pkg needs) failed"
        return 1
    fi
    rm -rf -- "$DEB_ROOT"
    mkdir -p -- "$DEB_ROOT"
    dpkg-deb -x "$deb" "$DEB_ROOT" || { DEB_WHY="dpkg-deb -x $deb failed"; return 1; }
    chmod 755 "$WORK/pkg" "$DEB_ROOT"
}

# check_libs BINARY: every shared library BINARY needs resolves (else DEB_WHY).
check_libs() {
    local nf
    nf=$(ldd "$1" 2>&1 | awk '/not found/ { print $1 }' | paste -sd' ' -)
    [[ -z $nf ]] || { DEB_WHY="$(basename -- "$1") needs libraries that are not installed: $nf"; return 1; }
}

EXIM_BIN='' SMTPD_BIN=
for m in "${MTA_LIST[@]}"; do
    case $m in
        postfix)
            [[ -x /usr/sbin/postfix && -x $POSTFIX_MASTER ]] || SKIP[postfix]="postfix is installed but /usr/sbin/postfix or $POSTFIX_MASTER is missing"
            MTA_VERSION[postfix]=$(dpkg-query -W -f='${Version}' postfix 2>/dev/null || echo unknown)
            ;;
        exim)
            if deb_unpack exim4-daemon-light && check_libs "$DEB_ROOT/usr/sbin/exim4"; then
                EXIM_BIN=$DEB_ROOT/usr/sbin/exim4
                MTA_VERSION[exim]="exim4-daemon-light $DEB_VERSION"
            else
                SKIP[exim]=$DEB_WHY
            fi
            ;;
        opensmtpd)
            if deb_unpack opensmtpd && check_libs "$DEB_ROOT/usr/sbin/smtpd"; then
                SMTPD_BIN=$DEB_ROOT/usr/sbin/smtpd
                MTA_VERSION[opensmtpd]="opensmtpd $DEB_VERSION"
            else
                SKIP[opensmtpd]=$DEB_WHY
            fi
            ;;
    esac
    if [[ -n ${SKIP[$m]:-} ]]; then log "skipping $m: ${SKIP[$m]}"; fi
done

# --------------------------------------------------------- namespaces ----

# WRAP: the prefix of every sink, generator and MTA command: SIGKILL when
# this script dies (even by SIGKILL), and the private network namespace.
WRAP=(setpriv --pdeathsig KILL)
NSX=()
if ((NETNS)); then
    start_bg "$WORK/netns.out" "$WORK/netns.err" setpriv --pdeathsig KILL unshare --net sleep infinity
    NETNS_PID=$LAST_PID
    # Wait until the holder is in its own namespace (not still ours).
    for ((i = 0; i < 50; i++)); do
        [[ $(readlink "/proc/$NETNS_PID/ns/net" 2>/dev/null) == "$(readlink /proc/self/ns/net)" ]] || break
        sleep 0.1
    done
    if kill -0 "$NETNS_PID" 2>/dev/null &&
        [[ $(readlink "/proc/$NETNS_PID/ns/net") != "$(readlink /proc/self/ns/net)" ]] &&
        nsenter "--net=/proc/$NETNS_PID/ns/net" ip link set lo up 2>"$WORK/netns.ip"; then
        NSX=(nsenter "--net=/proc/$NETNS_PID/ns/net")
        WRAP+=("${NSX[@]}")
        log "private network namespace (loopback only) held by pid $NETNS_PID"
    else
        log "no private network namespace ($(cat "$WORK/netns.err" "$WORK/netns.ip" 2>/dev/null | tail -n 1)); relying on the MTA configurations alone"
        NOTES+=("no private network namespace could be made: loopback-only rests on the MTA configurations and their private /etc/resolv.conf")
        stop_pid "$NETNS_PID" 1
    fi
else
    NOTES+=("NETNS=0: no private network namespace; loopback-only rests on the MTA configurations and their private /etc/resolv.conf")
fi

# The MTAs' private /etc: a copy of this one with their users added (where
# the system lacks them), /etc/hosts with only loopback names, and a
# resolv.conf whose only server is 127.0.0.1 (nothing answers there).
NSROOT=$WORK/ns
MTA_DOMAIN=mta-bench.localhost
mkdir -p -- "$NSROOT"
cp -a /etc "$NSROOT/etc"
rm -f -- "$NSROOT/etc/resolv.conf" "$NSROOT/etc/hosts" "$NSROOT/etc/mailname"
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$NSROOT/etc/resolv.conf"
printf '127.0.0.1\tlocalhost %s postfix.%s exim.%s opensmtpd.%s\n::1\tlocalhost\n' \
    "$MTA_DOMAIN" "$MTA_DOMAIN" "$MTA_DOMAIN" "$MTA_DOMAIN" >"$NSROOT/etc/hosts"
printf 'opensmtpd.%s\n' "$MTA_DOMAIN" >"$NSROOT/etc/mailname"
NEXT_ID=60100
# ns_user NAME: NAME's uid:gid in the private /etc into NS_IDS; a user and
# group of that name with an id unused on this system are added there when
# the system has none (nothing is added to the real /etc).
ns_user() {
    local ent
    if ent=$(getent passwd "$1"); then
        NS_IDS=$(cut -d: -f3,4 <<<"$ent")
        return
    fi
    while getent passwd "$NEXT_ID" >/dev/null || getent group "$NEXT_ID" >/dev/null; do
        NEXT_ID=$((NEXT_ID + 1))
    done
    printf '%s:x:%d:%d:mta-bench:/nonexistent:/usr/sbin/nologin\n' "$1" "$NEXT_ID" "$NEXT_ID" >>"$NSROOT/etc/passwd"
    printf '%s:x:%d:\n' "$1" "$NEXT_ID" >>"$NSROOT/etc/group"
    NS_IDS=$NEXT_ID:$NEXT_ID
    NEXT_ID=$((NEXT_ID + 1))
}
ns_user Debian-exim   # Exim's compiled-in user; its deliveries run as it
EXIM_IDS=$NS_IDS
ns_user opensmtpd     # OpenSMTPD's privilege-separation users
ns_user opensmtpq

# The namespace init (see write_ns_init in lib.sh).
NS_INIT=$WORK/ns-init.sh
write_ns_init "$NS_INIT"

# ns_start MTA MOUNTS... -- CMD...: start CMD (in the foreground) under the
# namespace init of a new PID and mount namespace with the private /etc and
# MOUNTS (pairs SRC DST) bound in; output in MTA_DIR/mta.out and .err.
ns_start() {
    local m=$1
    shift
    start_bg "${MTA_DIR[$m]}/mta.out" "${MTA_DIR[$m]}/mta.err" "${WRAP[@]}" \
        unshare --fork --pid --kill-child=SIGKILL --mount --propagation private \
        bash "$NS_INIT" "$NSROOT/etc" /etc "$@"
    MTA_UPID[$m]=$LAST_PID
}

# mta_stop MTA: SIGTERM to its namespace init, SIGKILL (the whole
# namespace) after 15 s.
mta_stop() {
    local m=$1 upid=${MTA_UPID[$1]:-} init i
    [[ -n $upid ]] || return 0
    init=$(pgrep -P "$upid" | head -n 1 || true)
    if [[ -n $init ]]; then
        kill -TERM "$init" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            kill -0 "$upid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$upid" 2>/dev/null; then
            log "$m (namespace init $init) ignored SIGTERM; killing its namespace"
            kill -KILL "$init" 2>/dev/null || true
        fi
    fi
    stop_pid "$upid" 5
    MTA_UPID[$m]=
}

cleanup_hook() {
    local m
    for m in "${!MTA_UPID[@]}"; do
        mta_stop "$m"
    done
    # KEEP_LOGS=1: each step's files and each MTA's configuration and log.
    if ((KEEP_LOGS)) && [[ -n ${BASE:-} && -n $WORK && -d $WORK ]]; then
        mkdir -p -- "$BASE-logs"
        [[ ! -d $WORK/steps ]] || cp -a -- "$WORK/steps" "$BASE-logs/"
        for m in "${!MTA_DIR[@]}"; do
            mkdir -p -- "$BASE-logs/$m"
            find "${MTA_DIR[$m]}" -maxdepth 2 -type f \( -name '*.cf' -o -name '*.conf' -o -name 'mta.*' \
                -o -name maillog -o -name '*log' \) -exec cp -- {} "$BASE-logs/$m/" \; 2>/dev/null || true
        done
        log "logs kept in $BASE-logs"
    fi
}

# ns_greeting NAME PID PORT ERR SECS: a 220 greeting on 127.0.0.1:PORT (in
# the network namespace) within SECS; returns 1, with a log line quoting
# ERR, when PID exits first or SECS pass.
ns_greeting() {
    local name=$1 pid=$2 port=$3 err=$4 secs=$5 i
    for ((i = 0; i < secs * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited at startup: $(tail -n 5 "$err" 2>/dev/null | tr '\n' ' ')"
            return 1
        fi
        # shellcheck disable=SC2016 # expanded by the inner bash
        if "${NSX[@]}" timeout 2 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
            IFS= read -r line <&3 || exit 1
            printf "QUIT\r\n" >&3
            [[ $line == 220* ]]' _ "$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "$name gave no 220 greeting on 127.0.0.1:$port within $secs s"
    return 1
}

# ----------------------------------------------------------------- MTAs ----
# mta_start MTA SINK_PORT: a fresh instance (empty spool) relaying to the
# sink's port; returns 1 when it does not greet within 30 s.
# queue_count MTA: messages (files) in its queue.

# postfix_start SINK_PORT: POSTFIX_MAIN_EXTRA and POSTFIX_MASTER_EXTRA, when
# set, are appended to main.cf and master.cf (scripts/mta-forward-check.sh:
# transport_maps, an lmtp service).
postfix_start() {
    local d=${MTA_DIR[postfix]} port=${MTA_PORT[postfix]} sport=$1
    rm -rf -- "$d/spool" "$d/data"
    mkdir -p -- "$d/conf" "$d/spool" "$d/data"
    chown postfix: "$d/data"
    cat >"$d/conf/main.cf" <<EOF
# mta-bench: a private Postfix instance that relays everything to the sink.
compatibility_level = 3.6
queue_directory = $d/spool
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.$MTA_DOMAIN
mydomain = $MTA_DOMAIN
myorigin = \$myhostname
# Nothing is local: every address, bounces and notices to postmaster
# included, goes to the relay host, the sink.
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:$sport
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
maillog_file = $d/maillog
maillog_file_prefixes = $d
${POSTFIX_MAIN_EXTRA:-}
EOF
    # Debian's master.cf, minus chroot and the services this needs not.
    cat >"$d/conf/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
proxywrite unix  - - n - 1 proxymap
smtp       unix  - - n - - smtp
relay      unix  - - n - - smtp
showq      unix  n - n - - showq
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
${POSTFIX_MASTER_EXTRA:-}
EOF
    # What `postfix start` checks first (it also makes the queue directories),
    # then the master in the foreground.
    /usr/sbin/postfix -c "$d/conf" check >>"$d/check.log" 2>&1 || {
        log "postfix -c $d/conf check failed: $(tail -n 3 "$d/check.log" | tr '\n' ' ')"
        return 1
    }
    ns_start postfix -- "$POSTFIX_MASTER" -c "$d/conf" -s
}
postfix_queue() {
    find "${MTA_DIR[postfix]}/spool"/{maildrop,incoming,active,deferred,hold} -type f 2>/dev/null | wc -l
}
postfix_log() { echo "${MTA_DIR[postfix]}/maillog"; }

exim_start() {
    local d=${MTA_DIR[exim]} port=${MTA_PORT[exim]} sport=$1
    rm -rf -- "$d/spool"
    mkdir -p -- "$d/spool" "$d/log"
    chown "$EXIM_IDS" "$d/spool" "$d/log"
    cat >"$d/exim.conf" <<EOF
# mta-bench: a private Exim instance that relays everything to the sink.
primary_hostname = exim.$MTA_DOMAIN
qualify_domain = $MTA_DOMAIN
spool_directory = $d/spool
log_file_path = $d/log/%slog
exim_path = $EXIM_BIN
daemon_smtp_ports = $port
local_interfaces = 127.0.0.1
disable_ipv6 = true
keep_environment =
tls_advertise_hosts =
# No reverse or ident lookups of clients.
host_lookup =
rfc1413_hosts =
rfc1413_query_timeout = 0s
smtp_accept_max = 200
# Deliver every message at once, however many arrive on one connection
# (the default queues all after the 10th for the next queue run).
smtp_accept_queue_per_connection = 0
domainlist local_domains =
hostlist relay_from_hosts = 127.0.0.1
acl_smtp_rcpt = acl_check_rcpt
timeout_frozen_after = 1m

begin acl
acl_check_rcpt:
  accept hosts = +relay_from_hosts
  deny message = relay not permitted

begin routers
# Every address, bounces included, to the sink: an IP literal, no DNS.
to_sink:
  driver = manualroute
  transport = sink_smtp
  route_list = * 127.0.0.1
  self = send

begin transports
sink_smtp:
  driver = smtp
  port = $sport
  allow_localhost
  hosts_avoid_tls = *

begin retry
* * F,5m,10s
EOF
    chmod 644 "$d/exim.conf"
    # A trusted configuration (the private /etc's TRUSTED_CONFIG_LIST), so
    # that -C does not make Exim drop root and panic-log in every process.
    mkdir -p -- "$NSROOT/etc/exim4"
    chmod 755 "$NSROOT/etc/exim4"
    echo "$d/exim.conf" >"$NSROOT/etc/exim4/trusted_configs"
    chmod 644 "$NSROOT/etc/exim4/trusted_configs"
    ns_start exim -- "$EXIM_BIN" -C "$d/exim.conf" -bdf -q10s
}
exim_queue() {
    find "${MTA_DIR[exim]}/spool/input" -name '*-H' 2>/dev/null | wc -l
}
exim_log() { echo "${MTA_DIR[exim]}/log/mainlog"; }

opensmtpd_start() {
    local d=${MTA_DIR[opensmtpd]} port=${MTA_PORT[opensmtpd]} sport=$1
    rm -rf -- "$d/spool" "$d/run" "$d/varlib"
    mkdir -p -- "$d/spool" "$d/run" "$d/varlib/opensmtpd/empty"
    chmod 755 "$d/spool" "$d/run" "$d/varlib" "$d/varlib/opensmtpd" "$d/varlib/opensmtpd/empty"
    cat >"$d/smtpd.conf" <<EOF
# mta-bench: a private OpenSMTPD instance that relays everything to the sink.
listen on 127.0.0.1 port $port hostname opensmtpd.$MTA_DOMAIN
action "sink" relay host smtp://127.0.0.1:$sport helo opensmtpd.$MTA_DOMAIN
match from any for any action "sink"
EOF
    # Its spool (/var/spool/smtpd), control socket (/run/smtpd.sock) and
    # chroot (/var/lib/opensmtpd/empty) are compiled in: private
    # directories are bound over /var/spool, /run and /var/lib in its
    # namespace.
    ns_start opensmtpd "$d/spool" /var/spool "$d/run" /run "$d/varlib" /var/lib -- \
        "$SMTPD_BIN" -d -f "$d/smtpd.conf"
}
opensmtpd_queue() {
    find "${MTA_DIR[opensmtpd]}/spool/smtpd"/{incoming,queue} -type f 2>/dev/null | wc -l
}
opensmtpd_log() { echo "${MTA_DIR[opensmtpd]}/mta.err"; }

mta_start() {
    local m=$1 f
    # Keep the output of an earlier instance (a restart) for KEEP_LOGS.
    for f in mta.out mta.err; do
        [[ ! -s ${MTA_DIR[$m]}/$f ]] || cat -- "${MTA_DIR[$m]}/$f" >>"${MTA_DIR[$m]}/$f.before-restart"
    done
    log "starting $m on 127.0.0.1:${MTA_PORT[$m]} (relay to the sink on 127.0.0.1:$2)"
    "${m}_start" "$2"
    ns_greeting "$m" "${MTA_UPID[$m]}" "${MTA_PORT[$m]}" "${MTA_DIR[$m]}/mta.err" 30
}
queue_count() {
    if [[ $1 == direct ]]; then echo 0; else "${1}_queue"; fi
}

# mta_restart MTA SINK_PORT: stop it, then start it with an empty spool.
mta_restart() {
    mta_stop "$1"
    mta_start "$1" "$2"
}

# postfix_instance PORT: the check scripts' private Postfix (mta-rules.sh,
# mta-forward-check.sh) under $WORK/postfix, listening on PORT; sets PF_CONF
# and PF_SPOOL.
# shellcheck disable=SC2034 # MTA_PORT is read by mta_start, PF_CONF by the caller
postfix_instance() {
    MTA_DIR[postfix]=$WORK/postfix
    MTA_PORT[postfix]=$1
    mkdir -p -- "${MTA_DIR[postfix]}"
    PF_CONF=${MTA_DIR[postfix]}/conf
    PF_SPOOL=${MTA_DIR[postfix]}/spool
}

# postfix_settle FILES DEFERRED: the check scripts' wait (mta-rules.sh,
# mta-forward-check.sh): until the sink's Maildir has FILES files, nothing is
# in flight at the private Postfix and DEFERRED messages sit in its deferred
# queue, unchanged for SETTLE s, or DRAIN_TIMEOUT s passed. Reads PF_SPOOL,
# SINK_PID and D; sets END (settled or cut), FILES_NOW, BUSY, DEFERRED_NOW.
# shellcheck disable=SC2034 # END, BUSY, ...: read by the caller
postfix_settle() {
    local want_files=$1 want_deferred=$2 deadline=$((SECONDS + DRAIN_TIMEOUT)) stable=0 prev='' now
    END='cut'
    while ((SECONDS < deadline)); do
        kill -0 "$SINK_PID" 2>/dev/null || die "smtpsink exited: $(tail -n 3 "$D/sink.err" | tr '\n' ' ')"
        FILES_NOW=$(find "$D/maildir/new" -type f 2>/dev/null | wc -l)
        BUSY=$(($(spool_files maildrop) + $(spool_files incoming) + $(spool_files active)))
        DEFERRED_NOW=$(spool_files deferred)
        now="$FILES_NOW $BUSY $DEFERRED_NOW"
        if ((FILES_NOW >= want_files && BUSY == 0 && DEFERRED_NOW >= want_deferred)) && [[ $now == "$prev" ]]; then
            stable=$((stable + 1))
            if ((stable >= ${SETTLE:-2} * 10)); then END='settled'; return; fi
        else
            stable=0
        fi
        prev=$now
        sleep 0.1
    done
}
spool_files() { find "$PF_SPOOL/$1" -type f 2>/dev/null | wc -l; }

# scripts/mta-maildir.sh sources this file with MTA_BENCH_SOURCED=1 for the
# setup above (binaries, namespaces, private /etc, the MTA functions) and
# runs steps of its own.
if [[ -n ${MTA_BENCH_SOURCED:-} ]] && (return 0 2>/dev/null); then return 0; fi

# -------------------------------------------------------------- steps ----

printf '%s\n' "$(python3 "$REPORT_PY" header)" >"$TSV"

# run_step SYS STEP LOOP RATE CONNS LOAD_ARGS...: one step: a fresh sink, one
# smtpload run into SYS, the wait for the sink (and the MTA's queue), one
# TSV line. Uses SINK_PORT and TARGET_PORT. An MTA that a step left with mail
# in its queue is restarted with a clean spool before the next step; when
# that fails, STEP_FATAL=1.
STEP_FATAL=0
declare -A NEED_RESTART=()
run_step() {
    local sys=$1 step=$2 loop=$3 rate=$4 conns=$5
    shift 5
    local d=$WORK/steps/$sys-$step spid rc=0 t0 t1 t_empty='' sink_end i q deadline
    local sink_args load_args dur=$DURATION quiet=0 settle
    [[ $step != warmup ]] || dur=''
    mkdir -p -- "$d"
    if ((${NEED_RESTART[$sys]:-0})); then
        NEED_RESTART[$sys]=0
        if ! mta_restart "$sys" "$SINK_PORT"; then
            STEP_FATAL=1
            SKIP[$sys]="it did not restart with a clean spool before $step (its results up to there are kept)"
            return 0
        fi
    fi
    sink_args=(--listen "127.0.0.1:$SINK_PORT" --verify)
    load_args=(-q -c "$conns" -s "$SIZE" "$@" --json "$d/load.json")
    settle=5   # old binaries: 0.5 s of empty queue, then the sink is stopped
    if [[ $IFACE == summary ]]; then
        # The sink's own linger is only a backstop: the MTA's queue decides.
        sink_args+=(--run-summary "$d/summary.json" --linger "$((DRAIN_TIMEOUT + LINGER))" --json "$d/sink.json")
        load_args+=(--summary "$d/summary.json")
        settle=$((LINGER * 10))
    fi
    start_bg "$d/sink.out" "$d/sink.err" "${WRAP[@]}" "$SMTPSINK_BIN" "${sink_args[@]}"
    spid=$LAST_PID
    ns_greeting "sink for $sys $step" "$spid" "$SINK_PORT" "$d/sink.err" 10 || die "smtpsink did not start"

    t0=$EPOCHREALTIME
    setpriv --pdeathsig KILL timeout "$RUN_TIMEOUT" "${WRAP[@]}" "$SMTPLOAD_BIN" "${load_args[@]}" "127.0.0.1:$TARGET_PORT" \
        >"$d/load.out" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
        log "smtpload -> $sys ($step) exited $rc: $(tail -n 3 "$d/load.out" | tr '\n' ' ')"
    fi

    # Wait for the delivery. The sink ends by itself once every message
    # smtpload had acknowledged has arrived ("complete"). An MTA whose queue
    # stays empty for LINGER s (old binaries: 0.5 s) has nothing left to
    # deliver: the sink is stopped and whatever is missing is lost
    # ("queue-empty"). DRAIN_TIMEOUT s after the load: "cut".
    if [[ $IFACE == summary && ! -s $d/summary.json ]]; then
        log "smtpload wrote no run summary; stopping the sink"
        sink_end=no-summary
    else
        sink_end='cut'
        deadline=$((SECONDS + DRAIN_TIMEOUT))
        while ((SECONDS < deadline)); do
            if ! kill -0 "$spid" 2>/dev/null; then
                sink_end=complete
                break
            fi
            if (($(queue_count "$sys") > 0)); then
                quiet=0
            else
                ((quiet > 0)) || t_empty=$EPOCHREALTIME
                quiet=$((quiet + 1))
                if ((quiet > settle)); then
                    sink_end=queue-empty
                    break
                fi
            fi
            sleep 0.1
        done
    fi
    stop_pid "$spid"

    # The next step starts on an empty queue: wait for stragglers (bounces,
    # notices) after a complete run; after a cut one, restart the MTA clean.
    q=0
    if [[ $sys != direct ]]; then
        deadline=$((SECONDS + QUEUE_TIMEOUT))
        while q=$(queue_count "$sys"); ((q > 0)) && [[ $sink_end == complete ]] && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if ((q > 0)); then
            log "$sys still has $q queue files: it will be restarted with a clean spool"
            NEED_RESTART[$sys]=1
        fi
    fi
    python3 "$REPORT_PY" row --system "$sys" --step "$step" --loop "$loop" --rate "$rate" \
        --conns "$conns" --duration "$dur" --rc "$rc" --sink-end "$sink_end" \
        --load "$d/load.json" --summary "$d/summary.json" --sink-json "$d/sink.json" \
        --sink-out "$d/sink.out" --t0 "$t0" --t1 "$t1" --t-empty "$t_empty" \
        --queue-left "$q" --iface "$IFACE" >>"$TSV"
}

field() { python3 "$REPORT_PY" field "$TSV" "$1" "$2" "$3"; }

# run_system SYS: warm-up (MTAs), the closed-loop max and the ladder.
run_system() {
    local sys=$1 base pct r delivered acked intact end
    STEP_FATAL=0
    if [[ $sys != direct ]]; then
        run_step "$sys" warmup closed "" 2 -m "$WARMUP_MSGS"
        ((!STEP_FATAL)) || return 0
        delivered=$(field "$sys" warmup delivered)
        intact=$(field "$sys" warmup intact)
        acked=$(field "$sys" warmup acknowledged)
        end=$(field "$sys" warmup sink_end)
        if [[ -z $intact || $intact != "$acked" || $delivered != "$acked" || $acked == 0 ||
            ! $end =~ ^(complete|queue-empty)$ ]]; then
            SKIP[$sys]="the warm-up did not arrive intact: ${intact:-?} intact of ${acked:-?} acknowledged (sink end: $end); last lines of its log: $(tail -n 3 "$("${sys}_log")" 2>/dev/null | tr '\n' ' ')"
            log "skipping $sys: ${SKIP[$sys]}"
            return 0
        fi
    fi
    log "$sys: closed loop, $CONNS connections, $DURATION s"
    run_step "$sys" max closed "" "$CONNS" -d "$DURATION"
    MEASURED[$sys]=1
    ((!STEP_FATAL)) || return 0
    base=$(field "$sys" max delivered_per_s)
    [[ -n $base ]] || base=$(field "$sys" max accepted_per_s)
    if [[ -z $base ]] || ! awk -v b="$base" 'BEGIN { exit !(b >= 1) }'; then
        NOTES+=("$sys: no ladder, the max step measured no rate (${base:-none})")
        return 0
    fi
    for pct in "${LADDER_PCTS[@]}"; do
        r=$(awk -v b="$base" -v p="$pct" 'BEGIN { r = int(b * p / 100 + 0.5); print (r < 1 ? 1 : r) }')
        log "$sys: open loop at $r msgs/s ($pct% of $base)"
        run_step "$sys" "$pct%" open "$r" "$CONNS" --rate "$r" -d "$DURATION"
        ((!STEP_FATAL)) || return 0
    done
}

SYSTEMS=()
((BASELINE)) && SYSTEMS+=(direct)
for m in "${MTA_LIST[@]}"; do
    [[ -n ${SKIP[$m]:-} ]] || SYSTEMS+=("$m")
done
((${#SYSTEMS[@]})) || die "nothing to run: ${!SKIP[*]} skipped"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START_S=$SECONDS
for sys in "${SYSTEMS[@]}"; do
    read -r SINK_PORT port < <(free_ports 2)
    if [[ $sys == direct ]]; then
        TARGET_PORT=$SINK_PORT
    else
        MTA_DIR[$sys]=$WORK/$sys
        MTA_PORT[$sys]=$port
        TARGET_PORT=$port
        mkdir -p -- "${MTA_DIR[$sys]}"
        if ! mta_start "$sys" "$SINK_PORT"; then
            SKIP[$sys]="it did not start: $(tail -n 3 "${MTA_DIR[$sys]}/mta.err" 2>/dev/null | tr '\n' ' ')"
            mta_stop "$sys"
            continue
        fi
    fi
    run_system "$sys"
    if [[ $sys != direct ]]; then
        mta_stop "$sys"
    fi
done
ELAPSED_S=$((SECONDS - START_S))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------- report ----

# shellcheck disable=SC2016 # backticks below are Markdown code spans
{
    printf '# MTA benchmark: smtpload -> MTA -> smtpsink --verify (loopback)\n\n'
    printf '## Machine\n\n'
    machine_md
    printf -- '- load average before/after: %s / %s; measuring took %ss\n' "$LOAD_BEFORE" "$LOAD_AFTER" "$ELAPSED_S"
    for m in "${MTA_LIST[@]}"; do
        if [[ -n ${SKIP[$m]:-} && -n ${MEASURED[$m]:-} ]]; then
            printf -- '- %s: %s; **stopped early**: %s\n' "$m" "${MTA_VERSION[$m]:-unknown}" "${SKIP[$m]}"
        elif [[ -n ${SKIP[$m]:-} ]]; then
            printf -- '- %s: **skipped**: %s\n' "$m" "${SKIP[$m]}"
        else
            printf -- '- %s: %s\n' "$m" "${MTA_VERSION[$m]:-unknown}"
        fi
    done
    printf -- '- steps: warm-up of %s messages (2 connections) per MTA; max = `smtpload -c %s -s %s -d %s`; ladder = `--rate R` at %s%% of the max step'"'"'s delivered msgs/s; QUICK=%s\n' \
        "$WARMUP_MSGS" "$CONNS" "$SIZE" "$DURATION" "${LADDER// /, }" "$QUICK"
    printf -- '- sink per step: `smtpsink --verify%s`\n\n' \
        "$([[ $IFACE == summary ]] && echo " --run-summary FILE --linger $((DRAIN_TIMEOUT + LINGER)) --json FILE")"
    "${PLOT_PY:-python3}" "$REPORT_PY" report --tsv "$TSV" ${PLOT_PY:+--plot "$SVG"}
    printf '## Notes\n\n'
    printf -- '- Accepted msgs/s: smtpload'"'"'s own rate (messages the MTA answered 250 to, per measured second; over the first DURATION s where smtpload ran far longer, see the step'"'"'s notes). Delivered msgs/s: messages that reached the sink / (last arrival - smtpload'"'"'s start), so a queue that drains after the load counts against it. Drain: last arrival - smtpload'"'"'s end (0 when the MTA kept up). Transit: from the message'"'"'s start at smtpload to its arrival at the sink (the sink'"'"'s histogram); in open-loop steps a late generator adds to it.\n'
    printf -- '- When the sink has not seen every acknowledged message, the MTA'"'"'s queue decides: once it has stayed empty for %s s, the missing messages are lost. A step still delivering %s s after its load is cut: "Lost" then shows how many were still missing ("cut"), not mail lost by the MTA, and the MTA is restarted with an empty spool before the next step.\n' \
        "$([[ $IFACE == summary ]] && echo "$LINGER" || echo 0.5)" "$DRAIN_TIMEOUT"
    printf -- '- MTA setup: each MTA runs as the init of its own PID and mount namespace (so it is torn down as a whole), with a private copy of /etc (its users; /etc/hosts with loopback names only; /etc/resolv.conf pointing at 127.0.0.1), its spool and logs under a temporary directory, listening on 127.0.0.1 and relaying every message, bounces included, to the sink by IP literal (no DNS or MX lookups). Near-default settings otherwise: Postfix main.cf/master.cf without chroot, relayhost=[127.0.0.1]:PORT, smtp_dns_support_level=disabled; Exim manualroute to 127.0.0.1 with smtp_accept_queue_per_connection=0 (else it only queues after 10 messages a connection) and smtp_accept_max=200, started with -bdf -q10s; OpenSMTPD `action relay host smtp://127.0.0.1:PORT`, its compiled-in spool, socket and chroot paths bound to private directories. Every MTA logs to a file, as in production; all of them fsync their queue files.\n'
    printf -- '- Generator, MTA and sink share this machine'"'"'s %s CPUs: the MTA figures include the cost of the other two (see the direct row for what they take alone).\n' "$(nproc)"
    if [[ " ${SYSTEMS[*]} " == *" opensmtpd "* ]]; then
        printf -- '- OpenSMTPD 6.8 listens with a compiled-in backlog of 5: of CONNS connections opened at once, some wait for a SYN retransmit (connect takes 1 s) and some may get no greeting before smtpload'"'"'s --timeout. Its client writes the final "." of a message in a separate small segment without TCP_NODELAY: with Nagle'"'"'s algorithm and the receiver'"'"'s delayed ACK (about 40 ms on Linux) each message it relays costs about 40 ms per connection (seen with strace), and it relays over few connections, so it delivers a few dozen messages a second here; under a closed loop it answers 452 at MAIL once its queue is busy.\n'
    fi
    for n in "${NOTES[@]}"; do
        printf -- '- %s.\n' "$n"
    done
} >"$REPORT"

cat "$REPORT"
log "report: $REPORT"
log "raw data: $TSV"
if [[ -n $PLOT_PY && -s $SVG ]]; then
    if ((QUICK)); then
        log "plot: $SVG (QUICK: docs/mta-bench.svg left alone)"
    else
        cp -- "$SVG" "$DOCS_SVG"
        log "plot: $SVG, copied to $DOCS_SVG"
    fi
fi
