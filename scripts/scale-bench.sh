#!/usr/bin/env bash
# scale-bench.sh: what many connections cost smtpsink, side by side.
#
#   idle    C_BIG connections held almost idle (one message a second over all
#           of them): the sink's RSS per connection, and how long accepting
#           and greeting them took (smtpload's connect and greeting phases)
#   active  C_SMALL and then C_BIG connections at the same fixed total rate
#           (open loop, --rate RATE): message latency p50/p99/p99.9 from the
#           scheduled start (coordinated omission corrected), the
#           generator's start lag, the sink's peak RSS
#
# Connections come from four loopback addresses (--bind), which spares the
# kernel's local-port search; both programs raise their open-files limit
# themselves (the hard limit must allow C_BIG + 64). The C_SMALL and C_BIG
# runs alternate within each round, so a slow moment of a shared machine
# does not fall on one of them only.
#
# Usage: scripts/scale-bench.sh
# Environment:
#   C_SMALL=N, C_BIG=N   connection counts (default 1000, 19000)
#   RATE=N               messages/s of the active runs (default 2000)
#   DURATION=S           seconds per active run, after a 5 s warm-up (default 20)
#   ROUNDS=N             rounds (default 3)
#   SMTPSINK_BIN=P, SMTPLOAD_BIN=P   use these instead of building
#
# Loopback only; every run is bounded by timeout and kills only what it
# started. Prints a Markdown table.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

: "${C_SMALL:=1000}" "${C_BIG:=19000}" "${RATE:=2000}" "${DURATION:=20}" "${ROUNDS:=3}"
if [[ -z ${SMTPSINK_BIN:-} || -z ${SMTPLOAD_BIN:-} ]]; then
    cargo build --release --workspace >&2
    SMTPSINK_BIN=target/release/smtpsink SMTPLOAD_BIN=target/release/smtpload
fi
WORK=$(mktemp -d)
SINK_PID=
cleanup() {
    if [[ -n $SINK_PID ]]; then kill "$SINK_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
BIND=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run C RATE SECS WARMUP: one sink, one smtpload run; prints
# "p50 p99 p999 lag99 rss_kib connect99 greeting99" (latencies in us).
run() {
    local c=$1 rate=$2 secs=$3 warmup=$4 port rss
    port=$(free_port)
    "$SMTPSINK_BIN" --listen "127.0.0.1:$port" --max-connections $((c + 100)) --backlog 4096 \
        >"$WORK/sink.out" 2>&1 &
    SINK_PID=$!
    for _ in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    timeout $((secs + warmup + 120)) "$SMTPLOAD_BIN" -q -c "$c" --rate "$rate" -d $((secs + warmup)) \
        --warmup "$warmup" --bind "$BIND" --json "$WORK/load.json" "127.0.0.1:$port" >/dev/null
    rss=$(awk '/VmHWM/ { print $2 }' "/proc/$SINK_PID/status")
    kill -INT "$SINK_PID"
    wait "$SINK_PID" || true
    SINK_PID=
    python3 - "$WORK/load.json" "$rss" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
m, lat = d["latency"]["message"], d["latency"]
print(m["p50_us"], m["p99_us"], m["p999_us"], d["schedule"]["start_lag"]["p99_us"], sys.argv[2],
      lat["connect"]["p99_us"], lat["greeting"]["p99_us"])
PY
}

echo "# smtpsink with many connections ($(date -u +%F), $(nproc) cores)"
echo
echo "- active: smtpload -c C --rate $RATE -d $((DURATION + 5)) --warmup 5 --bind $BIND; idle: -c $C_BIG --rate 1"
echo
echo "| round | run | connections | message p50 | p99 | p99.9 | start lag p99 | sink peak RSS | greeting p99 |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
    for c in "$C_SMALL" "$C_BIG"; do
        read -r p50 p99 p999 lag rss _ _ < <(run "$c" "$RATE" "$DURATION" 5)
        # (The connections open during the warm-up: no greeting figure.)
        echo "| $round | active | $c | ${p50} us | ${p99} us | ${p999} us | ${lag} us | ${rss} KiB | - |"
    done
done
read -r _ _ _ _ rss_big _ greet < <(run "$C_BIG" 1 10 0)
read -r _ _ _ _ rss_small _ _ < <(run "$C_SMALL" 1 10 0)
per=$(awk -v a="$rss_small" -v b="$rss_big" -v n=$((C_BIG - C_SMALL)) 'BEGIN { printf "%.2f", (b - a) / n }')
echo "| - | idle | $C_SMALL / $C_BIG | | | | | $rss_small / $rss_big KiB ($per KiB per connection) | $greet us |"
