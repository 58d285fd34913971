#!/usr/bin/env python3
"""store_report.py: the data side of store-bench.sh.

Subcommands:
  sinkjson FILE   smtpsink's --json FILE as one line: "messages stored
                  bytes_written errors fsync_batches messages_per_batch
                  store_p50_us store_p99_us" (- for what is absent)
  header          the TSV header line
  report --tsv F --clk N
                  the Markdown tables and ratios on stdout: medians over
                  rounds, min-max in parentheses, ratios against targets

Standard library only.
"""

import argparse
import csv
import json
import statistics
import sys

COLUMNS = [
    "round", "workload", "case", "server", "msgs", "rc", "ok", "wall_s", "gen_user_s", "gen_sys_s",
    "server_ticks", "gen_rate", "files", "bytes", "store_errors", "fsync_batches",
    "msgs_per_batch", "store_p50_us", "store_p99_us", "check", "note",
]
MIB = 1 << 20

# Case -> (label in the tables, what it is).
CASES = {
    "discard": ("smtpsink (discard)", "smtpsink, no --maildir: reads and discards"),
    "maildir": ("smtpsink --maildir", "one file per message in DIR/new, no fsync"),
    "smtp-sink-dump": ("smtp-sink -d", "Postfix smtp-sink, -d DIR/%H%M%S/: one dump file per message"),
    "aiosmtpd-maildir": ("aiosmtpd + mailbox.Maildir", "aiosmtpd handler, Python mailbox.Maildir.add, its fsync disabled"),
    "fs-floor": ("floor: create+write+rename, 1 thread, no server",
                 "the kernel's cost of a Maildir delivery: open(O_CREAT\\|O_EXCL) in tmp/, write 1277 B, close, rename to new/"),
    "group-commit": ("smtpsink --maildir --fsync, 50 conns", "group commit: one syncfs + one fsync of new/ per batch"),
    "fsync-per-msg": ("smtpsink --maildir --fsync, -c 1 lock-step", "same server, one message in flight: one batch per message"),
    "aiosmtpd-fsync": ("aiosmtpd + mailbox.Maildir + fsync", "fsync of the file and of new/ for every message"),
    "maildir-1mib": ("smtpsink --maildir (1 MiB messages)", "server CPU while storing"),
    "cp": ("cp FILE", "one file of the same total size (coreutils cp: copy_file_range)"),
    "cat": ("cat FILE > FILE2", "(coreutils cat: copy_file_range)"),
    "dd": ("dd bs=64K", "read(2)/write(2) through a user buffer"),
    "cp-files": ("cp -r DIR (N files of 1 MiB)", "as many files as messages"),
}
WL_ORDER = ["store", "durable", "big"]


def sinkjson(path):
    try:
        j = json.load(open(path))
    except Exception:
        print("- - - - - - - -")
        return
    m = j.get("maildir") or {}
    lat = m.get("store_latency") or {}
    c = j.get("counters") or {}

    def g(d, k):
        v = d.get(k)
        return "-" if v is None else str(v)

    print(" ".join([g(c, "messages"), g(m, "stored"), g(m, "bytes_written"), g(m, "errors"),
                    g(m, "fsync_batches"), g(m, "messages_per_batch"), g(lat, "p50_us"), g(lat, "p99_us")]))


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def mmm(values):
    v = [x for x in values if x is not None]
    return (statistics.median(v), min(v), max(v)) if v else None


def cell(t, spec, unit=""):
    if t is None:
        return "n/a"
    if t[1] == t[2]:
        return f"{format(t[0], spec)}{unit}"
    return f"{format(t[0], spec)}{unit} ({format(t[1], spec)}–{format(t[2], spec)})"


def report(tsv, clk):
    rows = list(csv.DictReader(open(tsv), delimiter="\t"))
    tries, ok = {}, {}
    for r in rows:
        k = r["case"]
        tries.setdefault(k, []).append(r)
        if r["ok"] == "1":
            ok.setdefault(k, []).append(r)

    def per_round(case, fn):
        return {r["round"]: fn(r) for r in ok.get(case, [])}

    def rate(r):
        return int(r["msgs"]) / max(float(r["wall_s"]), 1e-9)

    def srv_cpu(r):
        """Server (or copy command) CPU seconds."""
        if r["server_ticks"] not in ("", "-"):
            return int(r["server_ticks"]) / clk
        return float(r["gen_user_s"]) + float(r["gen_sys_s"])

    def cpu10k(r):
        return srv_cpu(r) / int(r["msgs"]) * 1e4

    def cpu_mib(r):
        b = num(r["bytes"])
        return srv_cpu(r) / (b / MIB) if b else None

    def mibs(r):
        b = num(r["bytes"])
        return (b / MIB) / max(float(r["wall_s"]), 1e-9) if b else None

    def stat(case, fn):
        return mmm(list(per_round(case, fn).values()))

    def ratio(num_case, den_case, fn, target=None, higher=True, label=""):
        a, b = stat(num_case, fn), stat(den_case, fn)
        med = a[0] / b[0] if a and b and b[0] else None
        ra, rb = per_round(num_case, fn), per_round(den_case, fn)
        paired = [ra[k] / rb[k] for k in ra if k in rb and ra[k] is not None and rb[k]]
        rng = f"{min(paired):.2f}–{max(paired):.2f}" if paired else "n/a"
        if target is None:
            tgt, met = "–", "–"
        else:
            tgt = f"{'≥' if higher else '≤'} {target:g}"
            met = "n/a" if med is None else ("yes" if (med >= target if higher else med <= target) else "**no**")
        medtxt = "n/a" if med is None else f"{med:.2f}"
        return (f"| {label} | {CASES[num_case][0]} | {CASES[den_case][0]} | {medtxt} | {rng} | {tgt} | {met} |")

    def runs_ok(case):
        return f"{len(ok.get(case, []))}/{len(tries.get(case, []))}"

    def checks(case):
        c = [r["check"] for r in tries.get(case, []) if r["check"] not in ("", "-")]
        if not c:
            return "–"
        bad = [x for x in c if x != "ok"]
        return f"{len(c) - len(bad)}/{len(c)} ok" + (f" ({', '.join(sorted(set(bad)))})" if bad else "")

    def cases_of(wl):
        seen = []
        for r in rows:
            if r["workload"] == wl and r["case"] not in seen:
                seen.append(r["case"])
        return [c for c in CASES if c in seen]

    hdr = ("| Metric | Numerator | Denominator | ratio of medians | per-round | target | met |\n"
           "|---|---|---|---:|---:|---:|---:|")
    out = []
    p = out.append

    # ---- 1: storage, no fsync
    w1 = cases_of("store")
    if w1:
        p("## 1. Storing 1 KiB messages (50 connections, pipelined where offered; no fsync)\n")
        p("msgs/s = messages ÷ wall seconds of the generator. Server CPU = utime+stime of the server "
          "process (all its threads) over the run, per 10k messages. Files = files the run left "
          "(must equal the messages sent). Check = scripts/maildir_check.py --expect N "
          "(byte-exact bodies, no duplicates, nothing missing, nothing in tmp/).\n")
        p("The floor row is no server: its msgs/s are files/s of one thread, its CPU is that "
          "process's user+sys.\n")
        p("| Case | What | msgs/run | msgs/s | server CPU s/10k | MiB stored/run | runs ok | check |")
        p("|---|---|---:|---:|---:|---:|---:|---|")
        for c in w1:
            msgs = tries[c][0]["msgs"]
            mib = stat(c, lambda r: (num(r["bytes"]) or 0) / MIB)
            p(f"| {CASES[c][0]} | {CASES[c][1]} | {msgs} | {cell(stat(c, rate), '.0f')} | "
              f"{cell(stat(c, cpu10k), '.3f')} | {cell(mib, '.1f')} | {runs_ok(c)} | {checks(c)} |")
        p("\n" + hdr)
        # (numerator, denominator, metric, target, label), in report order.
        for num_c, den_c, metric, tgt, label in (
            ("maildir", "discard", rate, 0.5, "msgs/s"),
            ("maildir", "smtp-sink-dump", rate, 3, "msgs/s"),
            ("maildir", "aiosmtpd-maildir", rate, None, "msgs/s"),
            ("maildir", "discard", cpu10k, None, "server CPU/msg"),
            ("maildir", "smtp-sink-dump", cpu10k, None, "server CPU/msg"),
            ("maildir", "aiosmtpd-maildir", cpu10k, None, "server CPU/msg"),
            ("maildir", "fs-floor", cpu10k, None, "server CPU/msg"),
            ("fs-floor", "discard", rate, None, "msgs/s"),
        ):
            if num_c in w1 and den_c in w1:
                p(ratio(num_c, den_c, metric, tgt, True, label))
        p("")

    # ---- 2: durable
    w2 = cases_of("durable")
    if w2:
        p("## 2. Durable storing: group commit vs an fsync per message (1 KiB)\n")
        p("Messages per batch = the sink's fsync_batches / stored (its JSON); store latency = end of "
          "data to durable in new/ (the sink's histogram).\n")
        p("| Case | What | msgs/run | msgs/s | server CPU s/10k | msgs per fsync batch | store p50 / p99 µs | runs ok | check |")
        p("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for c in w2:
            msgs = tries[c][0]["msgs"]
            mpb = stat(c, lambda r: num(r["msgs_per_batch"]))
            batches = stat(c, lambda r: num(r["fsync_batches"]))
            p50 = stat(c, lambda r: num(r["store_p50_us"]))
            p99 = stat(c, lambda r: num(r["store_p99_us"]))
            if mpb is None and c.startswith("aiosmtpd"):
                mpbtxt = "1 (by design)"
            else:
                mpbtxt = cell(mpb, ".1f") + (f" ({batches[0]:.0f} batches)" if batches else "")
            lat = "–" if p50 is None else f"{p50[0]:.0f} / {p99[0]:.0f}"
            p(f"| {CASES[c][0]} | {CASES[c][1]} | {msgs} | {cell(stat(c, rate), '.0f')} | "
              f"{cell(stat(c, cpu10k), '.3f')} | {mpbtxt} | {lat} | {runs_ok(c)} | {checks(c)} |")
        p("\n" + hdr)
        for den in ("fsync-per-msg", "aiosmtpd-fsync"):
            if "group-commit" in w2 and den in w2:
                p(ratio("group-commit", den, rate, 5, True, "msgs/s"))
        if "group-commit" in w2 and "fsync-per-msg" in w2:
            p(ratio("group-commit", "fsync-per-msg", cpu10k, None, True, "server CPU/msg"))
        p("")

    # ---- 3: big
    w3 = cases_of("big")
    if w3:
        p("## 3. 1 MiB messages: CPU per MiB stored vs copying the same bytes\n")
        p("smtpsink: server CPU (utime+stime of all its threads) over the run ÷ MiB written to its "
          "files (its JSON's bytes_written, trace fields included). Copies: user+sys of the command "
          "(bash `time`), source in the page cache, destination on the same filesystem. Neither counts "
          "the kernel's background writeback.\n")
        p("| Case | What | MiB/run | CPU s per MiB | MiB/s (wall) | runs ok | check |")
        p("|---|---|---:|---:|---:|---:|---|")
        for c in w3:
            mib = stat(c, lambda r: (num(r["bytes"]) or 0) / MIB)
            p(f"| {CASES[c][0]} | {CASES[c][1]} | {cell(mib, '.0f')} | {cell(stat(c, cpu_mib), '.5f')} | "
              f"{cell(stat(c, mibs), '.0f')} | {runs_ok(c)} | {checks(c)} |")
        p("\n" + hdr)
        if "maildir-1mib" in w3:
            for den, tgt in (("cp", 2), ("cat", 2), ("dd", None), ("cp-files", None)):
                if den in w3:
                    p(ratio("maildir-1mib", den, cpu_mib, tgt, False, "CPU per MiB"))
        p("")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sinkjson")
    s.add_argument("file")
    sub.add_parser("header")
    r = sub.add_parser("report")
    r.add_argument("--tsv", required=True)
    r.add_argument("--clk", type=int, required=True)
    a = ap.parse_args()
    if a.cmd == "sinkjson":
        sinkjson(a.file)
    elif a.cmd == "header":
        print("\t".join(COLUMNS))
    else:
        report(a.tsv, a.clk)


if __name__ == "__main__":
    sys.exit(main())
