#!/usr/bin/env python3
"""mta_report.py: the data side of mta-bench.sh.

Subcommands:
  header          the TSV header line (the columns of `row`)
  row ...         one TSV line for one step, from smtpload's JSON report
                  (--load), its run summary (--summary), the sink's JSON
                  (--sink-json) or, failing that, the sink's final report
                  (--sink-out), and the script's own clock readings
  field TSV SYSTEM STEP COLUMN
                  one value of the TSV (empty when absent)
  report --tsv F [--plot SVG]
                  the Markdown tables on stdout; with --plot an SVG (needs
                  matplotlib; without it, a line in the Markdown says so)

Only the standard library is needed except for the plot.
"""

import argparse
import csv
import json
import math
import re
import sys

COLUMNS = [
    "system", "step", "loop", "offered_per_s", "conns", "duration_s", "rc", "sink_end",
    "accepted", "failed", "accepted_per_s", "accept_p99_us", "achieved_per_s", "kept_up",
    "acknowledged", "delivered", "delivered_per_s", "intact", "corrupted", "duplicated",
    "lost", "in_flight", "unverifiable", "complete", "started_unix", "ended_unix",
    "measured_s", "stretched", "greeted", "errors", "last_arrival_unix", "drain_s", "transit_count", "transit_p50_us", "transit_p90_us",
    "transit_p99_us", "transit_p999_us", "transit_max_us", "unacknowledged", "clock_skewed",
    "queue_left", "iface", "note",
]
SYSTEM_LABEL = {
    "direct": "direct (no MTA)",
    "postfix": "Postfix",
    "exim": "Exim",
    "opensmtpd": "OpenSMTPD",
}


def load_json(path):
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def sink_verify_line(path):
    """key=value pairs of the `verify ...` line of the sink's final report."""
    if not path:
        return {}
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return {}
    m = None
    for m in re.finditer(r"^\s*verify\s+(.*)$", text, re.M):
        pass
    if not m:
        return {}
    return {k: v for k, v in re.findall(r"(\w+)=(\S+)", m.group(1))}


def num(v):
    """int or float from JSON or text, or None."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return None


def fmt(v, digits=None):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and digits is not None:
        return f"{v:.{digits}f}"
    return str(v)


def cmd_row(a):
    load = load_json(a.load) or {}
    summ = load_json(a.summary) or {}
    sink = load_json(a.sink_json) or {}
    ver = sink.get("verify") or {}
    line = sink_verify_line(a.sink_out)

    def v(key):
        """A verify counter: the sink's JSON first, then its report line."""
        x = num(ver.get(key))
        return x if x is not None else num(line.get(key))

    msgs = load.get("messages") or {}
    run = load.get("run") or {}
    accepted = num(msgs.get("accepted"))
    failed = num(msgs.get("failed"))
    accepted_per_s = num((load.get("throughput") or {}).get("messages_per_s"))
    accept_p99 = num(((load.get("latency") or {}).get("message") or {}).get("p99_us"))
    acknowledged = num(summ.get("acknowledged"))
    if acknowledged is None:
        acknowledged = accepted
    started = num(summ.get("started_unix")) or num(run.get("started_unix")) or a.t0
    ended = num(summ.get("ended_unix")) or num(run.get("ended_unix")) or a.t1
    measured = num(load.get("measured_s"))
    # A timed run ends DURATION seconds after its start, plus the messages in
    # flight. One that lasted far longer waited for something else (say a
    # connection that never got a greeting, until smtpload's --timeout):
    # then the load stopped at start + DURATION, and the accepted rate is
    # taken over that window rather than smtpload's diluted one.
    load_end, stretched = ended, False
    if a.duration and started and ended and ended - started > float(a.duration) + 5:
        load_end, stretched = started + float(a.duration), True
        if accepted is not None:
            accepted_per_s = accepted / float(a.duration)
    greeted = num(((load.get("latency") or {}).get("greeting") or {}).get("count"))
    errors = ", ".join(
        f"{e.get('code') or e.get('stage')}{'@' + e['stage'] if e.get('code') and e.get('stage') else ''}"
        f"×{e.get('count', 1)}" for e in (load.get("errors") or []))
    last = num(ver.get("last_arrival_unix"))
    if last is None and a.t_empty:
        last = a.t_empty  # legacy sink: when the MTA's queue was first seen empty
    intact, corrupted = v("intact"), v("corrupted")
    delivered = None if intact is None else intact + (corrupted or 0)
    delivered_per_s = None
    if delivered is not None and last is not None and started and last > started:
        delivered_per_s = delivered / (last - started)
    drain = None if last is None or load_end is None else last - load_end
    lost = v("lost")
    if a.sink_end == "queue-empty":
        # The MTA's queue stayed empty: nothing still missing will come. The
        # stopped sink counts those as in flight (the old one only counts
        # gaps below the highest number seen); they are lost.
        if a.iface == "legacy" and acknowledged is not None and delivered is not None:
            lost = max(lost or 0, acknowledged - delivered)
        else:
            lost = (lost or 0) + (v("in_flight") or 0)
    tr = ver.get("transit") or ver.get("transit_us") or {}

    def t(key):
        """A transit percentile in microseconds (`p99_us`, or `p99` under transit_us)."""
        x = num(tr.get(key + "_us"))
        return x if x is not None else num(tr.get(key))
    kept_up = run.get("kept_up")
    row = {
        "system": a.system, "step": a.step, "loop": a.loop,
        "offered_per_s": a.rate or "", "conns": a.conns, "duration_s": a.duration,
        "rc": a.rc, "sink_end": a.sink_end,
        "accepted": fmt(accepted), "failed": fmt(failed),
        "accepted_per_s": fmt(accepted_per_s, 1), "accept_p99_us": fmt(accept_p99),
        "achieved_per_s": fmt(num(run.get("achieved_rate")), 1),
        "kept_up": "" if kept_up is None else fmt(bool(kept_up)),
        "acknowledged": fmt(acknowledged), "delivered": fmt(delivered),
        "delivered_per_s": fmt(delivered_per_s, 1),
        "intact": fmt(intact), "corrupted": fmt(corrupted), "duplicated": fmt(v("duplicated")),
        "lost": fmt(lost), "in_flight": fmt(v("in_flight")), "unverifiable": fmt(v("unverifiable")),
        "complete": "" if ver.get("complete") is None else fmt(bool(ver.get("complete"))),
        "started_unix": fmt(started, 3), "ended_unix": fmt(ended, 3),
        "measured_s": fmt(measured, 3), "stretched": fmt(stretched), "greeted": fmt(greeted),
        "errors": errors,
        "last_arrival_unix": fmt(last, 3), "drain_s": fmt(drain, 3),
        "transit_count": fmt(num(tr.get("count"))),
        "transit_p50_us": fmt(t("p50")), "transit_p90_us": fmt(t("p90")),
        "transit_p99_us": fmt(t("p99")), "transit_p999_us": fmt(t("p999")),
        "transit_max_us": fmt(t("max")),
        "unacknowledged": fmt(v("unacknowledged")), "clock_skewed": fmt(v("clock_skewed")),
        "queue_left": a.queue_left, "iface": a.iface, "note": a.note.replace("\t", " "),
    }
    print("\t".join(str(row[c]) for c in COLUMNS))
    # One human line for the log.
    parts = [f"{a.system} {a.step}:"]
    if a.rate:
        parts.append(f"offered {a.rate}/s")
    parts.append(f"accepted {fmt(accepted)} ({fmt(accepted_per_s, 1) or '?'}/s)")
    parts.append(f"delivered {fmt(delivered) or '?'} ({fmt(delivered_per_s, 1) or '?'}/s)")
    if t("p99") is not None:
        parts.append(f"transit p50 {ms(t('p50'))} p99 {ms(t('p99'))} ms")
    parts.append(f"lost {fmt(lost) or '?'} dup {fmt(v('duplicated')) or '?'} corrupt {fmt(corrupted) or '?'}")
    if drain is not None:
        parts.append(f"drain {max(drain, 0):.2f}s")
    parts.append(f"sink end: {a.sink_end}")
    if a.note:
        parts.append(f"({a.note})")
    print(" ".join(parts), file=sys.stderr)


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def cmd_field(a):
    for r in read_tsv(a.tsv):
        if r["system"] == a.system and r["step"] == a.step:
            print(r.get(a.column, ""))
            return


def f(r, k):
    """float of column k, or None."""
    x = r.get(k, "")
    try:
        return float(x) if x not in ("", None) else None
    except ValueError:
        return None


def ms(us):
    """microseconds as milliseconds, 2-3 significant digits."""
    if us is None:
        return "n/a"
    m = us / 1000
    if m >= 100:
        return f"{m:.0f}"
    if m >= 10:
        return f"{m:.1f}"
    if m >= 1:
        return f"{m:.2f}"
    return f"{m:.3f}"


def rate(x):
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def intc(r, k):
    x = f(r, k)
    return "n/a" if x is None else f"{x:.0f}"


def step_label(r):
    if r["loop"] == "closed":
        return f"max (closed loop, {r['conns']} conns)"
    return r["step"]


def offered(r):
    """The offered rate: the requested one, or for the closed loop what was accepted."""
    return f(r, "offered_per_s") if r["loop"] == "open" else f(r, "accepted_per_s")


ENDED = ("complete", "queue-empty")


def lost_cell(r):
    if r["sink_end"] not in ENDED:
        ack, dlv = f(r, "acknowledged"), f(r, "delivered")
        if ack is not None and dlv is not None:
            return f"({ack - dlv:.0f} cut)"
        return "n/a"
    return intc(r, "lost")


def drain_cell(r):
    d = f(r, "drain_s")
    if d is None:
        return "n/a"
    s = f"{d:.2f}" if d >= 0.005 else "0.00"
    return s if r["sink_end"] in ENDED else f"≥{s} (cut)"


def notes(r):
    out = []
    if r["rc"] not in ("0", ""):
        out.append(f"smtpload exit {r['rc']}")
    if r.get("failed") not in ("", "0", None):
        out.append(f"{r['failed']} refused or failed at the MTA ({r.get('errors') or '?'})")
    g, c = f(r, "greeted"), f(r, "conns")
    if g is not None and c and g < c:
        out.append(f"only {g:.0f} of {c:.0f} connections got a greeting")
    if r.get("stretched") == "1":
        out.append(f"smtpload ran {f(r, 'measured_s') or 0:.0f} s, not {r['duration_s']} (waiting until its --timeout): "
                   "accepted msg/s and drain taken over the first DURATION s")
    if r.get("kept_up") == "0":
        ach = f(r, "achieved_per_s")
        out.append(f"smtpload could not keep up ({rate(ach)}/s achieved)" if ach else "smtpload could not keep up")
    if r["sink_end"] == "cut":
        out.append("drain cut at DRAIN_TIMEOUT")
    elif r["sink_end"] == "no-summary":
        out.append("smtpload wrote no run summary")
    if r.get("unacknowledged") not in ("", "0", None):
        out.append(f"{r['unacknowledged']} arrived that smtpload saw fail")
    if r.get("clock_skewed") not in ("", "0", None):
        out.append(f"{r['clock_skewed']} with a skewed send stamp")
    if r.get("unverifiable") not in ("", "0", None):
        out.append(f"{r['unverifiable']} unverifiable (bounces, notices)")
    if r.get("queue_left") not in ("", "0", None):
        out.append(f"{r['queue_left']} left in the queue (MTA restarted clean)")
    if r.get("note"):
        out.append(r["note"])
    return "; ".join(out) or "–"


def cmd_report(a):
    rows = [r for r in read_tsv(a.tsv) if r["step"] != "warmup"]
    warm = [r for r in read_tsv(a.tsv) if r["step"] == "warmup"]
    systems = []
    for r in rows:
        if r["system"] not in systems:
            systems.append(r["system"])
    by = {s: [r for r in rows if r["system"] == s] for s in systems}

    print("## Summary (side by side)\n")
    print("Max = the closed-loop step; transit = time from smtpload handing the message to the "
          "MTA to its arrival at the sink; lost/duplicated/corrupted summed over all steps of "
          "that system.\n")
    print("| | " + " | ".join(SYSTEM_LABEL.get(s, s) for s in systems) + " |")
    print("|---|" + "---:|" * len(systems))
    mx = {s: next((r for r in by[s] if r["loop"] == "closed"), None) for s in systems}
    direct_max = mx.get("direct")

    def line(title, fn):
        print(f"| {title} | " + " | ".join(fn(s) for s in systems) + " |")

    line("accepted msg/s at max", lambda s: rate(f(mx[s], "accepted_per_s")) if mx[s] else "n/a")
    line("delivered msg/s at max", lambda s: rate(f(mx[s], "delivered_per_s")) if mx[s] else "n/a")
    if direct_max and f(direct_max, "delivered_per_s"):
        base = f(direct_max, "delivered_per_s")
        line("delivered at max vs direct",
             lambda s: f"{f(mx[s], 'delivered_per_s') / base:.3g}" if mx[s] and f(mx[s], "delivered_per_s") else "n/a")
    line("transit p50 / p99 at max, ms",
         lambda s: f"{ms(f(mx[s], 'transit_p50_us'))} / {ms(f(mx[s], 'transit_p99_us'))}" if mx[s] else "n/a")
    line("drain after max, s", lambda s: drain_cell(mx[s]) if mx[s] else "n/a")
    ladder_steps = []
    for r in rows:
        if r["loop"] == "open" and r["step"] not in ladder_steps:
            ladder_steps.append(r["step"])
    for st in ladder_steps:
        def cell(s, st=st):
            r = next((x for x in by[s] if x["step"] == st), None)
            if not r:
                return "–"
            return f"{rate(f(r, 'offered_per_s'))}/s: {ms(f(r, 'transit_p50_us'))} / {ms(f(r, 'transit_p99_us'))}"
        line(f"{st}: offered; transit p50 / p99 ms", cell)

    def total(s, k):
        vals = [f(r, k) for r in by[s]]
        if any(x is None for x in vals):
            known = [x for x in vals if x is not None]
            return f"{sum(known):.0f}+?" if known else "n/a"
        return f"{sum(vals):.0f}"
    line("lost", lambda s: total(s, "lost"))
    line("duplicated", lambda s: total(s, "duplicated"))
    line("corrupted", lambda s: total(s, "corrupted"))
    print()

    print("## All steps\n")
    print("| System | Step | Offered msg/s | Accepted msg/s | Delivered msg/s | Transit p50 ms | p99 | p99.9 | max "
          "| Lost | Dup | Corrupt | Drain s | Notes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in systems:
        for r in by[s]:
            print(f"| {SYSTEM_LABEL.get(s, s)} | {step_label(r)} | "
                  f"{rate(f(r, 'offered_per_s')) if r['loop'] == 'open' else '(closed)'} | "
                  f"{rate(f(r, 'accepted_per_s'))} | {rate(f(r, 'delivered_per_s'))} | "
                  f"{ms(f(r, 'transit_p50_us'))} | {ms(f(r, 'transit_p99_us'))} | "
                  f"{ms(f(r, 'transit_p999_us'))} | {ms(f(r, 'transit_max_us'))} | "
                  f"{lost_cell(r)} | {intc(r, 'duplicated')} | {intc(r, 'corrupted')} | "
                  f"{drain_cell(r)} | {notes(r)} |")
    print()
    bad_warm = [w for w in warm if w["sink_end"] not in ENDED or w.get("lost") not in ("0", "")]
    if warm:
        print("Warm-up (unrecorded, each MTA before its steps): " + "; ".join(
            f"{SYSTEM_LABEL.get(w['system'], w['system'])} {w['delivered'] or '?'}/{w['acknowledged'] or '?'} delivered"
            for w in warm) + (" – see notes" if bad_warm else "") + ".\n")

    if a.plot:
        plot(a.plot, systems, by)


def plot(path, systems, by):
    try:
        import matplotlib
        matplotlib.use("Agg")
        matplotlib.rcParams["svg.hashsalt"] = "mta-bench"
        import matplotlib.pyplot as plt
    except ImportError:
        print("No plot: matplotlib is not installed.\n")
        return
    colors = {"direct": "#555555", "postfix": "#1f77b4", "exim": "#d62728", "opensmtpd": "#2ca02c"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    have_transit = False
    lo, hi = math.inf, 0.0
    for s in systems:
        every = [(offered(r), r) for r in by[s] if offered(r)]
        if not every:
            continue
        # Lines join the open-loop ladder; the closed-loop max is a star.
        pts = sorted(((x, r) for x, r in every if r["loop"] == "open"), key=lambda p: p[0])
        mxr = [(x, r) for x, r in every if r["loop"] == "closed"]
        c = colors.get(s)
        label = SYSTEM_LABEL.get(s, s)
        xs = [x for x, _ in every]
        lo, hi = min(lo, min(xs)), max(hi, max(xs))
        for key, style, suffix in (("transit_p99_us", "-", " p99"), ("transit_p50_us", "--", " p50")):
            tp = [(x, f(r, key) / 1000) for x, r in pts if f(r, key)]
            if tp:
                have_transit = True
                ax1.plot([x for x, _ in tp], [y for _, y in tp], style, marker="o", color=c,
                         label=label + suffix, markersize=4)
        dp = [(x, f(r, "delivered_per_s")) for x, r in pts if f(r, "delivered_per_s")]
        if dp:
            ax2.plot([x for x, _ in dp], [y for _, y in dp], "-", marker="o", color=c, label=label, markersize=4)
        for x, r in mxr:
            if f(r, "delivered_per_s"):
                ax2.plot([x], [f(r, "delivered_per_s")], marker="*", color=c, markersize=12, linestyle="none")
            if f(r, "transit_p99_us"):
                ax1.plot([x], [f(r, "transit_p99_us") / 1000], marker="*", color=c, markersize=12,
                         linestyle="none")
    if hi > 0:
        ax2.plot([lo * 0.8, hi * 1.2], [lo * 0.8, hi * 1.2], ":", color="#999999", label="delivered = offered")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered msgs/s (lines: open-loop ladder; ★: closed-loop max, at its accepted rate)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax1.set_ylabel("transit latency, ms (smtpload → MTA → sink)")
    ax1.set_title("Transit latency p99 (solid) and p50 (dashed)")
    if not have_transit:
        ax1.text(0.5, 0.5, "no transit latency\n(the sink did not report it)", ha="center", va="center",
                 transform=ax1.transAxes)
    ax2.set_ylabel("delivered msgs/s (at the sink)")
    ax2.set_title("Delivered vs offered")
    fig.suptitle("smtpload → MTA → smtpsink --verify, loopback")
    fig.tight_layout()
    fmt_ = "png" if path.endswith(".png") else "svg"
    fig.savefig(path, format=fmt_, metadata={"Date": None} if fmt_ == "svg" else None)
    print(f"Plot: `{path.rsplit('/', 1)[-1]}` (beside this report).\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("header")
    r = sub.add_parser("row")
    for k in ("system", "step", "loop", "rate", "conns", "duration", "rc", "sink-end",
              "load", "summary", "sink-json", "sink-out", "queue-left", "iface", "note"):
        r.add_argument("--" + k, default="")
    for k in ("t0", "t1", "t-empty"):
        r.add_argument("--" + k, type=lambda x: float(x) if x else None, default=None)
    fl = sub.add_parser("field")
    for k in ("tsv", "system", "step", "column"):
        fl.add_argument(k)
    rp = sub.add_parser("report")
    rp.add_argument("--tsv", required=True)
    rp.add_argument("--plot", default="")
    a = ap.parse_args()
    if a.cmd == "header":
        print("\t".join(COLUMNS))
    elif a.cmd == "row":
        cmd_row(a)
    elif a.cmd == "field":
        cmd_field(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
