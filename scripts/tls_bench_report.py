#!/usr/bin/env python3
"""tls_bench_report.py: the Python side of tls-bench.sh.

Subcommands:
  ticks PID
        CPU clock ticks of PID and every process below it, "USER SYSTEM":
        utime+cutime and stime+cstime (/proc/P/stat fields 14-17, all
        threads) summed over the live tree. A child that exited and was waited for is in its
        parent's cutime/cstime, so the sum only grows, however the tree
        changes (Postfix forks and reaps its daemons).
  row --raw TSV --part P --variant V --round R --json FILE --rc N [--set K=V ...]
        Appends one smtpload run (its --json report) to the raw TSV and
        prints "ok RATE msg/s, ..." or "bad REASON". A run is ok when
        smtpload exited 0, accepted at least one message and reported no
        failed message, no error and no abort.
  stats URL
        GET smtpsink's /stats (--control): a one-line JSON of the counters
        tls-bench.sh compares before and after a postal run.
  postal-row --raw TSV --mode M --before JSON --after JSON --seconds S
             --wall S --ticks N --rc N --out FILE
        Appends one postal run (smtpsink's counters before and after, and
        what postal printed) to the raw TSV; prints a summary.
  perf-rows --raw TSV --part P --variant V --units N --ticks T --file REPORT
        Appends the symbols of a `perf report --stdio --sort sym` listing
        (share of the samples) and the run's server CPU ticks to the raw TSV.
  report --raw TSV --meta FILE --commands FILE --machine FILE --annot-dir DIR
         --failed FILE --server-json FILE --server-final FILE --tsv-out FILE
        The Markdown report on stdout and the TSV (raw rows plus derived
        rows) in --tsv-out.

Raw rows (tab-separated): kind, part, variant, round, metric, value; kind is
run (an smtpload run), order (a round's order), postal, or cg (variant
VARIANT@MESSAGES, round = repeat).
Standard library only.
"""

import argparse
import collections
import json
import os
import re
import statistics
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cg_annotate  # noqa: E402  (beside this script)

# ------------------------------------------------------------------- ticks ----


def proc_stat(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()  # fields from 3 on
    ppid = int(rest[1])
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return ppid, utime + cutime, stime + cstime


def cmd_ticks(a):
    kids = collections.defaultdict(list)
    ticks = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid, u, k = proc_stat(int(name))
        except (OSError, ValueError, IndexError):
            continue
        kids[ppid].append(int(name))
        ticks[int(name)] = (u, k)
    if a.pid not in ticks:
        print(f"no process {a.pid}", file=sys.stderr)
        return 1
    user = system = 0
    todo = [a.pid]
    while todo:
        p = todo.pop()
        u, k = ticks.get(p, (0, 0))
        user, system = user + u, system + k
        todo.extend(kids.get(p, []))
    print(user, system)
    return 0


# --------------------------------------------------------------------- row ----


def raw_append(path, rows):
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write("\t".join(str(x) for x in r) + "\n")


def cmd_row(a):
    why = []
    j = None
    try:
        with open(a.json, encoding="utf-8") as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        why.append(f"no-json:{type(e).__name__}")
    if a.rc:
        why.append("timeout" if a.rc == 124 else f"exit-{a.rc}")
    vals = {}
    if j is not None:
        m = j.get("messages", {})
        errs = sum(int(e.get("count", 1)) for e in j.get("errors") or [])
        tls = j.get("tls") or {}
        lat = (j.get("latency") or {}).get("tls") or {}
        vals = {
            "accepted": int(m.get("accepted", 0)),
            "failed": int(m.get("failed", 0)),
            "errors": errs,
            "rate": float(j.get("throughput", {}).get("messages_per_s", 0.0)),
            "mb_per_s": float(j.get("throughput", {}).get("mb_per_s", 0.0)),
            "measured_s": float(j.get("measured_s", 0.0)),
            "connections": j.get("connections", 0),
            "tls_handshakes": int(tls.get("handshakes", 0)),
            "tls_resumed": int(tls.get("resumed", 0)),
            "tls_versions": ",".join(f"{k}={v}" for k, v in sorted((tls.get("versions") or {}).items())) or "-",
            "tls_p50_us": lat.get("p50_us", "-"),
            "message_bytes": (j.get("run") or {}).get("message_bytes", 0),
        }
        if errs:
            why.append(f"errors={errs}")
        if vals["failed"]:
            why.append(f"failed={vals['failed']}")
        if vals["accepted"] == 0:
            why.append("accepted=0")
        if j.get("aborted"):
            why.append("aborted=" + str(j["aborted"]).replace(" ", "_"))
    for kv in a.set or []:
        k, _, v = kv.partition("=")
        vals[k] = v
    vals["ok"] = 0 if why else 1
    vals["note"] = ",".join(why) or "-"
    raw_append(a.raw, [("run", a.part, a.variant, a.round, k, v) for k, v in vals.items()])
    if why:
        print("bad " + ",".join(why))
    else:
        print(f"ok {vals['rate']:.1f} msg/s, {vals['accepted']} accepted, "
              f"{vals['tls_handshakes']} TLS handshakes ({vals['tls_resumed']} resumed)")
    return 0


# ------------------------------------------------------------ stats/postal ----


def cmd_stats(a):
    try:
        with urllib.request.urlopen(a.url, timeout=5) as r:
            j = json.load(r)
    except (OSError, ValueError) as e:
        print(f"{type(e).__name__}: {e}")
        return 1
    c, t = j.get("counters", {}), j.get("tls", {})
    print(json.dumps({
        "messages": c.get("messages", 0), "connections": c.get("connections", 0),
        "body_bytes": c.get("body_bytes", 0), "handshakes": t.get("handshakes", 0),
        "resumed": t.get("resumed", 0), "failures": t.get("failures", {}),
        "versions": t.get("versions", {}),
    }, separators=(",", ":")))
    return 0


POSTAL_LINE = re.compile(r"^\d\d:\d\d,(\d+),(\d+),(\d+),(\d+),(\d+)\s*$")


def cmd_postal_row(a):
    b, e = json.loads(a.before), json.loads(a.after)
    d = {k: e[k] - b[k] for k in ("messages", "connections", "body_bytes", "handshakes", "resumed")}
    fails = collections.Counter(e.get("failures") or {})
    fails.subtract(b.get("failures") or {})
    fails = {k: v for k, v in fails.items() if v}
    own = [0, 0, 0, 0, 0]
    complaints = collections.Counter()
    try:
        with open(a.out, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = POSTAL_LINE.match(line)
                if m:
                    own = [x + int(y) for x, y in zip(own, m.groups())]
                elif line.strip() and not line.startswith("time,"):
                    complaints[line.strip()[:80]] += 1
    except OSError:
        pass
    wall = float(a.wall)
    rows = {
        "rc": a.rc, "seconds": a.seconds, "wall": f"{wall:.3f}", "srv_ticks": a.ticks,
        "messages": d["messages"], "connections": d["connections"], "body_bytes": d["body_bytes"],
        "handshakes": d["handshakes"], "resumed": d["resumed"],
        "tls_failures": ",".join(f"{k}={v}" for k, v in sorted(fails.items())) or "-",
        "rate": f"{d['messages'] / wall:.1f}" if wall > 0 else "0",
        "postal_messages": own[0], "postal_errors": own[2], "postal_connections": own[3],
        "postal_ssl_connections": own[4],
        "postal_complaints": "; ".join(f"{k} (x{v})" for k, v in complaints.most_common(4)) or "-",
    }
    raw_append(a.raw, [("postal", "postal", a.mode, "1", k, v) for k, v in rows.items()])
    print(f"{d['messages']} messages ({rows['rate']}/s), {d['handshakes']} handshakes, "
          f"TLS failures {rows['tls_failures']}; postal says: {rows['postal_complaints']}")
    return 0


# --------------------------------------------------------------- perf-rows ----

PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+\[([.k])\]\s+(.*\S)\s*$")


def cmd_perf_rows(a):
    """`perf report --stdio --sort sym` lines -> rows: symbol share (%) per
    symbol ([k] kernel or [.] user, in the metric), and the run's ticks and
    units."""
    rows = [("perfmeta", a.part, a.variant, a.units, "ticks", a.ticks)]
    try:
        with open(a.file, encoding="utf-8", errors="replace") as f:
            for line in f:
                ev = re.match(r"^# Event count \(approx\.\): (\d+)", line)
                if ev:  # cpu-clock: nanoseconds of CPU time sampled
                    rows.append(("perfmeta", a.part, a.variant, a.units, "cpu_clock_ns", ev.group(1)))
                m = PERF_LINE.match(line)
                if m:
                    pct, where, sym = m.groups()
                    sym = sym.replace("\t", " ")
                    rows.append(("perf", a.part, a.variant, a.units, f"[{where}] {sym}", pct))
    except OSError:
        pass
    raw_append(a.raw, rows)
    return 0


# ------------------------------------------------------------------ report ----


def read_raw(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            parts += [""] * (6 - len(parts))
            rows.append(tuple(parts[:6]))
    return rows


def read_meta(path):
    meta, notes = {}, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            k, sep, v = line.rstrip("\n").partition("=")
            if not sep:
                continue
            if k == "NOTE":
                notes.append(v)
            else:
                meta[k] = v
    meta["_notes"] = notes
    return meta


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def spread(xs):
    """(max - min) / median, or nan."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return float("nan")
    m = med(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


def fmt(x, d=0):
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:,.{d}f}"


def short(fn, n=100):
    fn = fn.replace("|", "\\|")
    return fn if len(fn) <= n else fn[: n - 3] + "..."


def annot_functions(path):
    if not os.path.exists(path):
        return collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        agg, _, _ = cg_annotate.aggregate(f)
    return agg


def per_unit(full, base, units):
    out = collections.Counter()
    for fn in set(full) | set(base):
        out[fn] = (full.get(fn, 0) - base.get(fn, 0)) / units
    return out


def diff_table(new, old, top, unit, old_name, new_name):
    delta = {fn: new.get(fn, 0) - old.get(fn, 0) for fn in set(new) | set(old)}
    items = sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top]
    lines = [f"| function | {old_name} Ir/{unit} | {new_name} Ir/{unit} | change |", "|---|---:|---:|---:|"]
    for fn, d in items:
        if abs(d) < 0.5:
            continue
        lines.append(f"| `{short(fn)}` | {old.get(fn, 0):,.1f} | {new.get(fn, 0):,.1f} | {d:+,.1f} |")
    s_new, s_old = sum(new.values()), sum(old.values())
    lines.append(f"| **all functions** | {s_old:,.1f} | {s_new:,.1f} | {s_new - s_old:+,.1f} |")
    return "\n".join(lines)


def top_table(costs, top, unit):
    items = sorted(costs.items(), key=lambda kv: -kv[1])[:top]
    tot = sum(costs.values())
    lines = [f"| function | Ir/{unit} | share |", "|---|---:|---:|"]
    for fn, v in items:
        if v < 0.5:
            continue
        share = f"{100 * v / tot:.1f}%" if tot else ""
        lines.append(f"| `{short(fn)}` | {v:,.0f} | {share} |")
    lines.append(f"| **all functions** | {tot:,.0f} | |")
    return "\n".join(lines)


def verdict(ok, inconclusive=False):
    if ok is None:
        return "not measured"
    s = "**met**" if ok else "**missed**"
    return s + (" (the rounds straddle the limit)" if inconclusive else "")


class Runs:
    """The smtpload runs of the raw TSV: (part, variant, round) -> metrics."""

    def __init__(self, rows, clk):
        self.clk = clk
        self.m = collections.defaultdict(dict)
        self.order = {}
        for kind, part, variant, rnd, metric, value in rows:
            if kind == "run":
                self.m[(part, variant, rnd)][metric] = value
            elif kind == "order":
                self.order[(part, rnd)] = value

    def rounds(self, part):
        return sorted({int(r) for (p, _, r) in self.m if p == part and r.isdigit()})

    def get(self, part, variant, rnd, metric):
        return num(self.m.get((part, variant, str(rnd)), {}).get(metric))

    def ok(self, part, variant, rnd):
        return self.get(part, variant, rnd, "ok") == 1

    def cpu_s(self, part, variant, rnd):
        t = self.get(part, variant, rnd, "srv_ticks")
        return t / self.clk if t is not None else None

    def per(self, part, variant, rnd, unit, field="srv_ticks"):
        """Server CPU microseconds per unit: handshake, msg or MiB (field:
        srv_ticks, srv_user or srv_sys)."""
        if not self.ok(part, variant, rnd):
            return None
        t = self.get(part, variant, rnd, field)
        cpu = t / self.clk if t is not None else None
        if unit == "handshake":
            n = self.get(part, variant, rnd, "tls_handshakes")
        elif unit == "msg":
            n = self.get(part, variant, rnd, "accepted")
        else:
            n = (self.get(part, variant, rnd, "accepted") or 0) * (self.get(part, variant, rnd, "message_bytes") or 0) / 2**20
        return 1e6 * cpu / n if cpu is not None and n else None

    def util(self, part, variant, rnd, who):
        w = self.get(part, variant, rnd, "wall")
        if not w or not self.ok(part, variant, rnd):
            return None
        if who == "server":
            return 100 * self.cpu_s(part, variant, rnd) / w
        return 100 * ((self.get(part, variant, rnd, "gen_usr") or 0) + (self.get(part, variant, rnd, "gen_sys") or 0)) / w

    def series(self, part, variant, fn):
        return [fn(part, variant, r) for r in self.rounds(part) if self.ok(part, variant, r)]


def cmd_report(a):
    rows = read_raw(a.raw)
    meta = read_meta(a.meta)
    clk = int(meta.get("CLK_TCK", "100"))
    runs = Runs(rows, clk)
    derived = []
    out = []
    p = out.append
    quick = meta.get("QUICK") == "1"

    def D(part, variant, rnd, metric, value):
        derived.append(("derived", part, variant, str(rnd), metric, value))

    rate = lambda part, v, r: runs.get(part, v, r, "rate")  # noqa: E731
    server_json = {}
    if a.server_json and os.path.exists(a.server_json) and os.path.getsize(a.server_json):
        with open(a.server_json, encoding="utf-8") as f:
            server_json = json.load(f)
    server_ciphers = list(((server_json.get("tls") or {}).get("ciphers") or {}).keys())
    hs_servers = meta.get("HS_SERVERS", "smtpsink").split()

    # ---------------- part 1
    hs = {}
    for s in hs_servers:
        rates = runs.series("hs", s, rate)
        cpu = runs.series("hs", s, lambda pt, v, r: runs.per(pt, v, r, "handshake"))
        hs[s] = {"rates": rates, "cpu": cpu, "rate": med(rates), "cpu_med": med(cpu),
                 "srv_util": med(runs.series("hs", s, lambda pt, v, r: runs.util(pt, v, r, "server"))),
                 "gen_util": med(runs.series("hs", s, lambda pt, v, r: runs.util(pt, v, r, "gen"))),
                 "tls_p50": med(runs.series("hs", s, lambda pt, v, r: runs.get(pt, v, r, "tls_p50_us")))}
        D("hs", s, "median", "msgs_per_s", f"{hs[s]['rate']:.1f}")
        D("hs", s, "median", "server_cpu_us_per_handshake", f"{hs[s]['cpu_med']:.1f}")
    hs_rounds = runs.rounds("hs")

    def pair_ratios(part, a_v, b_v, fn):
        """Per round: fn(b) / fn(a), rounds where both ran ok."""
        out_ = []
        for r in runs.rounds(part):
            if runs.ok(part, a_v, r) and runs.ok(part, b_v, r):
                x, y = fn(part, a_v, r), fn(part, b_v, r)
                if x and y is not None:
                    out_.append(y / x)
        return out_

    t1 = None
    if "node" in hs and hs["node"]["rates"] and hs["smtpsink"]["rates"]:
        t1 = hs["smtpsink"]["rate"] / hs["node"]["rate"]
        t1_pairs = pair_ratios("hs", "node", "smtpsink", rate)
        D("hs", "smtpsink/node", "median", "rate_ratio_of_medians", f"{t1:.3f}")

    # ---------------- parts 2 and 3
    def ab(part, unit):
        res = {}
        for v in ("plain", "tls"):
            res[v] = runs.series(part, v, lambda pt, vv, r: runs.per(pt, vv, r, unit))
            res[v + "_rate"] = runs.series(part, v, rate)
            res[v + "_mb"] = runs.series(part, v, lambda pt, vv, r: runs.get(pt, vv, r, "mb_per_s"))
            res[v + "_srv"] = runs.series(part, v, lambda pt, vv, r: runs.util(pt, vv, r, "server"))
            res[v + "_gen"] = runs.series(part, v, lambda pt, vv, r: runs.util(pt, vv, r, "gen"))
            res[v + "_ticks"] = runs.series(part, v, lambda pt, vv, r: runs.get(pt, vv, r, "srv_ticks"))
            res[v + "_user"] = runs.series(part, v, lambda pt, vv, r: runs.per(pt, vv, r, unit, "srv_user"))
            res[v + "_sys"] = runs.series(part, v, lambda pt, vv, r: runs.per(pt, vv, r, unit, "srv_sys"))
        res["ratio"] = med(res["tls"]) / med(res["plain"]) if res["tls"] and res["plain"] else None
        res["pairs"] = pair_ratios(part, "plain", "tls", lambda pt, vv, r: runs.per(pt, vv, r, unit))
        if res["ratio"] is not None:
            D(part, "tls/plain", "median", f"server_cpu_per_{unit}_ratio", f"{res['ratio']:.3f}")
            for v in ("plain", "tls"):
                D(part, v, "median", f"server_cpu_us_per_{unit}", f"{med(res[v]):.3f}")
        return res

    syscalls = collections.defaultdict(lambda: collections.defaultdict(dict))  # part -> variant -> name -> per unit
    for kind, part, variant, rnd, metric, value in rows:
        if kind == "syscalls" and num(value) is not None and num(rnd):
            syscalls[part][variant][metric] = num(value) / num(rnd)
    sc_big = syscalls.get("big", {})
    # native profiles: part -> variant -> symbol -> us per unit
    prof = collections.defaultdict(lambda: collections.defaultdict(dict))
    prof_cpu = {}  # (part, variant) -> (server CPU us of the profiled run, units, how)
    for kind, part, variant, rnd, metric, value in rows:
        if kind == "perfmeta" and metric == "ticks" and num(value) and num(rnd) and (part, variant) not in prof_cpu:
            prof_cpu[(part, variant)] = (num(value) * 1e6 / clk, num(rnd), "ticks")
    for kind, part, variant, rnd, metric, value in rows:
        if kind == "perfmeta" and metric == "cpu_clock_ns" and num(value) and num(rnd):
            prof_cpu[(part, variant)] = (num(value) / 1e3, num(rnd), "cpu-clock")
    for kind, part, variant, rnd, metric, value in rows:
        if kind == "perf" and (part, variant) in prof_cpu and num(value) is not None:
            us, units, _ = prof_cpu[(part, variant)]
            prof[part][variant][metric] = num(value) / 100 * us / units
    reuse = ab("reuse", "msg")
    big = ab("big", "MiB")

    # ---------------- part 4
    cg = collections.defaultdict(dict)       # (variant, count) -> {rep: Ir}
    cg_hs = {}
    for kind, _, variant, rnd, metric, value in rows:
        if kind != "cg":
            continue
        v, _, n = variant.partition("@")
        if metric == "ir":
            cg[(v, int(n))][rnd] = int(value)
        elif metric == "handshakes":
            cg_hs[(v, int(n))] = value
    msgs, base_msgs = int(meta.get("MSGS", "0")), int(meta.get("BASE_MSGS", "0"))
    hs_msgs, hs_base = int(meta.get("HS_CG_MSGS", "0")), int(meta.get("HS_CG_BASE", "0"))

    def ir_per(variant, full_n, base_n):
        full, base = cg.get((variant, full_n), {}), cg.get((variant, base_n), {})
        return {r: (full[r] - base[r]) / (full_n - base_n) for r in sorted(full) if r in base}

    per = {}
    for v in ("base", "old", "cur", "tls"):
        x = ir_per(v, msgs, base_msgs)
        if x:
            per[v] = x
    for v in ("conn", "hs"):
        x = ir_per(v, hs_msgs, hs_base)
        if x:
            per[v] = x
    big_msgs, big_base = int(meta.get("BIG_CG_MSGS", "0")), int(meta.get("BIG_CG_BASE", "0"))
    big_mib = int(meta.get("BIG_SIZE", "1048576")) / 2**20
    for v in ("big", "bigtls"):
        if big_msgs > big_base:
            x = ir_per(v, big_msgs, big_base)
            if x:
                per[v] = {r: y / big_mib for r, y in x.items()}  # Ir per MiB
    medv = {v: med(list(x.values())) for v, x in per.items()}
    for v, x in per.items():
        for r, y in x.items():
            D("cg", v, r, "ir_per_msg", f"{y:.1f}")
        D("cg", v, "median", "ir_per_msg", f"{medv[v]:.1f}")
    t4 = medv["cur"] / medv["base"] if "cur" in medv and "base" in medv else None
    t4_old = medv["cur"] / medv["old"] if "cur" in medv and "old" in medv else None
    if t4 is not None:
        D("cg", "cur/base", "median", "ir_ratio", f"{t4:.4f}")
    if t4_old is not None:
        D("cg", "cur/old", "median", "ir_ratio", f"{t4_old:.4f}")
    ir_hs = medv["hs"] - medv["conn"] if "hs" in medv and "conn" in medv else None

    # ---------------- summary
    p("# TLS benchmark: smtpsink's TLS cost, and smtpsink vs other SMTP servers over TLS\n")
    p(f"{meta.get('DATE')}, smtpsink {meta.get('CUR_REV')} (binary sha256 {meta.get('CUR_SHA')}); "
      f"{'**QUICK=1 smoke run: short runs, coarse figures.** ' if quick else ''}"
      f"Runtime {meta.get('RUNTIME_S')} s.\n")
    p("## Targets\n")
    p("| # | What | Measured | Limit | Verdict |")
    p("|---|---|---:|---:|---|")
    if t1 is not None:
        inc = bool(t1_pairs) and (min(t1_pairs) < 2.0 <= max(t1_pairs) or max(t1_pairs) < 2.0 <= min(t1_pairs))
        p(f"| 1 | Full STARTTLS handshakes/s, a connection per 1 KiB message: smtpsink / node smtp-server "
          f"(ratio of medians; per round {fmt(min(t1_pairs), 2)}-{fmt(max(t1_pairs), 2)}) "
          f"| {t1:.2f}x ({fmt(hs['smtpsink']['rate'])} vs {fmt(hs['node']['rate'])} /s) | >= 2x | {verdict(t1 >= 2.0, inc)} |")
    else:
        p(f"| 1 | Full STARTTLS handshakes/s: smtpsink / node smtp-server | - | >= 2x | not measured: "
          f"{meta.get('SKIP_node') or 'node was not among the peers'} |")
    for num_, res, what, lim, unit in (
            ("2", reuse, "Reused TLS connections, 1 KiB pipelined: smtpsink server CPU per message, TLS / plaintext", 1.5, "msg"),
            ("3", big, "1 MiB messages: smtpsink server CPU per MiB, TLS / plaintext", 2.0, "MiB")):
        if res["ratio"] is not None:
            pr = res["pairs"]
            inc = bool(pr) and (min(pr) <= lim < max(pr))
            p(f"| {num_} | {what} (ratio of medians; per round {fmt(min(pr), 2)}-{fmt(max(pr), 2)}) "
              f"| {res['ratio']:.2f}x ({fmt(med(res['tls']), 2)} vs {fmt(med(res['plain']), 2)} us/{unit}) "
              f"| <= {lim:g}x | {verdict(res['ratio'] <= lim, inc)} |")
        else:
            p(f"| {num_} | {what} | - | <= {lim:g}x | not measured (failed runs) |")
    if t4 is not None:
        p(f"| 4 | Plaintext path, callgrind Ir/msg: current / {meta.get('BASE_REV')} (pre-TLS) "
          f"| {t4:.4f}x ({fmt(medv['cur'], 1)} vs {fmt(medv['base'], 1)}) | <= 1.02x | {verdict(t4 <= 1.02)} |")
    else:
        p("| 4 | Plaintext path, callgrind Ir/msg: current / pre-TLS | - | <= 1.02x | not measured (CG=0) |")
    if t4_old is not None:
        p(f"| 4b | The same vs {meta.get('OLD_REV')} (older baseline; no target of its own) "
          f"| {t4_old:.4f}x ({fmt(medv['cur'], 1)} vs {fmt(medv['old'], 1)}) | (1.02x) | "
          f"{'within' if t4_old <= 1.02 else 'above'} 1.02x |")
    elif meta.get("CG") == "1":
        p(f"| 4b | The same vs {meta.get('OLD_REV')} | - | (1.02x) | not measured: {meta.get('OLD_WHY')} |")
    p("")

    # ---------------- part 1 detail
    p("## 1. Full TLS handshakes per second (STARTTLS, a new connection per message)\n")
    p(f"Generator: `smtpload -q -c {meta.get('HS_CONNS')} -d {meta.get('HS_SECONDS')} -s 1024 --per-connection 1 "
      f"--starttls --insecure --no-resumption` (every message a new connection with one full handshake; "
      f"`--insecure` skips the certificate check but not the signature check). All servers hold the same "
      f"self-signed ECDSA P-256 certificate. "
      + (f"Servers pinned to CPU {meta.get('SRV_CPU')}, the generator to CPU {meta.get('GEN_CPU')} (taskset). "
         if meta.get("PIN") == "1" else "No CPU pinning. ")
      + f"{len(hs_rounds)} rounds, the order reversed every other round; msgs/s is smtpload's own figure "
      f"(= full handshakes/s); server CPU from /proc/PID/stat (utime+stime of the server's process tree, "
      f"{clk} ticks/s) before and after each run; each server had an unrecorded {meta.get('WARMUP_SECONDS')} s "
      f"warm-up first.\n")
    p("| Server | Version | msgs/s = handshakes/s, median (min-max) | spread | server CPU us/handshake, median (min-max) "
      "| server CPU, % of a core | generator CPU, % of a core | client TLS phase p50 | vs smtpsink (msgs/s) | CPU/handshake vs smtpsink |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_rate = hs.get("smtpsink", {}).get("rate")
    base_cpu = hs.get("smtpsink", {}).get("cpu_med")
    for s in hs_servers:
        h = hs[s]
        if not h["rates"]:
            p(f"| {s} | {meta.get('VERSION_' + s, '')} | all runs failed | | | | | | | |")
            continue
        p(f"| {s} | {meta.get('VERSION_' + s, '')} | {fmt(h['rate'])} ({fmt(min(h['rates']))}-{fmt(max(h['rates']))}) "
          f"| {100 * spread(h['rates']):.1f}% | {fmt(h['cpu_med'])} ({fmt(min(h['cpu']))}-{fmt(max(h['cpu']))}) "
          f"| {fmt(h['srv_util'])}% | {fmt(h['gen_util'])}% | {fmt(h['tls_p50'] / 1000 if h['tls_p50'] == h['tls_p50'] else None, 2)} ms "
          f"| {h['rate'] / base_rate:.3f}x | {h['cpu_med'] / base_cpu:.2f}x |")
    p("")
    for s in hs_servers:
        if s == "smtpsink" or not hs[s]["rates"] or not hs["smtpsink"]["rates"]:
            continue
        pr = pair_ratios("hs", s, "smtpsink", rate)
        cr = pair_ratios("hs", "smtpsink", s, lambda pt, v, r: runs.per(pt, v, r, "handshake"))
        p(f"- smtpsink / {s}: handshakes/s **{hs['smtpsink']['rate'] / hs[s]['rate']:.2f}x** (per round "
          f"{', '.join(f'{x:.2f}' for x in pr)}); {s} spends **{hs[s]['cpu_med'] / base_cpu:.1f}x** smtpsink's "
          f"server CPU per handshake (per round {', '.join(f'{x:.1f}' for x in cr)}).")
    p("")
    # Checks: a full handshake per message, no resumption.
    chk = []
    for s in hs_servers:
        for r in hs_rounds:
            if not runs.ok("hs", s, r):
                continue
            acc, n, res_ = (runs.get("hs", s, r, k) for k in ("accepted", "tls_handshakes", "tls_resumed"))
            if res_:
                chk.append(f"{s} round {r}: {res_:.0f} resumed handshakes")
            if acc and n and abs(n - acc) > max(2, 0.01 * acc) + float(meta.get("HS_CONNS", "10")):
                chk.append(f"{s} round {r}: {n:.0f} handshakes for {acc:.0f} messages")
    p("- Check: every run reported (smtpload's JSON) one full TLS handshake per message and no resumed "
      "handshake." if not chk else "- **Check failed**: " + "; ".join(chk) + ".")
    if "smtpsink" in hs and hs["smtpsink"]["gen_util"] == hs["smtpsink"]["gen_util"] and hs["smtpsink"]["gen_util"] > 85:
        p(f"- Against smtpsink the generator used {hs['smtpsink']['gen_util']:.0f}% of its core while the server "
          f"used {hs['smtpsink']['srv_util']:.0f}% of its own: smtpsink's handshakes/s is bounded by the "
          f"generator here (smtpload is single-threaded and does the client's half of every handshake: an X25519 "
          f"key exchange and an ECDSA signature check), so the msgs/s ratios understate smtpsink's capacity; the "
          f"server CPU per handshake is the capacity figure (1e6 / us per handshake = connection-per-message "
          f"sessions/s of one saturated core: smtpsink {1e6 / base_cpu:,.0f}/s"
          + "".join(f", {s} {1e6 / hs[s]['cpu_med']:,.0f}/s" for s in hs_servers if s != "smtpsink" and hs[s]["rates"])
          + ").")
    p("")
    p("Per round (msgs/s; order as run):\n")
    p("| Round | Order | " + " | ".join(hs_servers) + " |")
    p("|---:|---|" + "---:|" * len(hs_servers))
    for r in hs_rounds:
        cells = []
        for s in hs_servers:
            x = runs.get("hs", s, r, "rate")
            cpu = runs.per("hs", s, r, "handshake")
            cells.append(f"{fmt(x)} ({fmt(cpu)} us/hs)" if runs.ok("hs", s, r)
                         else f"failed ({runs.m.get(('hs', s, str(r)), {}).get('note', '?')})")
        p(f"| {r} | {runs.order.get(('hs', str(r)), '?')} | " + " | ".join(cells) + " |")
    p("")
    p("Peers:\n")
    for s in hs_servers:
        p(f"- {s}: `{meta.get('DESC_' + s, '')}`")
    for s in meta.get("PEERS", "").split():
        if meta.get("SKIP_" + s):
            p(f"- **{s}: not measured**: {meta['SKIP_' + s]}")
    if "node" in hs_servers:
        p("- node smtp-server waits a fixed 100 ms after every accept before it greets (its \"early talker\" "
          "check, not an option). With a connection per message that wait, not CPU, would cap it at "
          f"{meta.get('HS_CONNS')} x 10 = {int(meta.get('HS_CONNS', '10')) * 10} handshakes/s here; "
          + ("scripts/tls_node_sink.js takes it out (the rest of the library untouched), so node is measured "
             "at its CPU limit." if meta.get("EARLY_TALKER_DELAY") != "1" else
             "EARLY_TALKER_DELAY=1 kept it, so node's figure is bounded by that wait."))
    if "postfix" in hs_servers:
        p("- Postfix: a private instance (own config, spool and PID namespace), smtpd with "
          "`smtpd_tls_security_level = may` and the certificate, tlsmgr running, every address to the "
          "`discard` transport. It is a whole MTA: per message smtpd, cleanup (a queue file), qmgr and discard "
          "work, and smtpd processes are recycled every 100 sessions (max_use), each new one loading its TLS "
          "state again; its CPU per handshake is that of all its processes together.")
    if "aiosmtpd" in hs_servers:
        p("- aiosmtpd: asyncio, Python's ssl module (OpenSSL) via `tls_context`, `require_starttls=False`, "
          "one event loop; the handler discards the message.")
    p("")

    # postal
    p("### postal as a second generator\n")
    post = collections.defaultdict(dict)
    for kind, part, variant, rnd, metric, value in rows:
        if kind == "postal":
            post[variant][metric] = value
    if meta.get("POSTAL_WHY"):
        p(f"Not run: {meta['POSTAL_WHY']}.\n")
    elif post:
        p(f"{meta.get('VERSION_postal')} (links {meta.get('POSTAL_LIB') or '?'}), "
          f"`postal -t {meta.get('POSTAL_THREADS')} -c 1 -m 1 -M 1 -s PCT -r 100000000 -p PORT 127.0.0.1 USERS` "
          f"against a separate smtpsink (same certificate, `--control`) for {meta.get('POSTAL_SECONDS')} s each "
          f"(then SIGINT: postal stops sending but does not exit, so SIGKILL follows 3 s later). Its own "
          f"figures are per clock minute, so the counts come from smtpsink's `GET /stats` before and after.\n")
        p("| postal | messages at smtpsink | msgs/s | TLS handshakes (resumed) | TLS failures at smtpsink "
          "| server CPU us/msg | server CPU, % of a core | postal's own output |")
        p("|---|---:|---:|---:|---|---:|---:|---|")
        for mode in ("tls", "plain"):
            x = post.get(mode)
            if not x:
                continue
            n = int(x.get("messages", "0"))
            cpu = 1e6 * int(x.get("srv_ticks", "0")) / clk / n if n else None
            util = 100 * int(x.get("srv_ticks", "0")) / clk / float(x.get("wall", "1") or 1)
            p(f"| `-s {'100' if mode == 'tls' else '0'}` ({mode}) | {n} | {x.get('rate')} | {x.get('handshakes')} "
              f"({x.get('resumed')}) | {x.get('tls_failures')} | {fmt(cpu, 1)} | {util:.0f}% | {x.get('postal_complaints')} |")
        pl = post.get("plain", {})
        if pl and num(pl.get("rate")):
            per_msg = 1000 * int(meta.get("POSTAL_THREADS", "10")) / num(pl["rate"])
            p(f"\nPlaintext, postal's {meta.get('POSTAL_THREADS')} threads took {per_msg:.0f} ms per message each "
              f"(a new connection per message) while the server was mostly idle: postal, not smtpsink, sets that "
              f"pace, so its rate says little about the server.")
        p("")
        t = post.get("tls", {})
        if t and int(t.get("handshakes", "0") or 0) == 0:
            p(f"postal could not complete a single TLS handshake with smtpsink (smtpsink classed the attempts "
              f"as `{t.get('tls_failures')}`). Why: postal 0.7x's TLS client is GnuTLS with *anonymous* "
              f"credentials only (`gnutls_anon_allocate_client_credentials`, priority string "
              f"`{meta.get('POSTAL_PRIORITY') or '?'}`; credential calls in the binary: `{meta.get('POSTAL_CREDS') or '?'}`) and no certificate credentials, so "
              f"the only key exchanges it can finish are anonymous Diffie-Hellman (TLS 1.2 ANON-DH) ones, "
              f"which rustls does not implement (nor does node's or Python's OpenSSL by default, nor any "
              f"server with a certificate). postal therefore measures nothing over TLS here; its plaintext run "
              f"above (a connection per message, {meta.get('POSTAL_THREADS')} threads) is the only figure "
              f"it gives.\n")
        elif t:
            p(f"postal completed {t.get('handshakes')} TLS handshakes with smtpsink.\n")
    else:
        p("Not run.\n")

    # ---------------- parts 2 and 3 detail
    def ab_section(title, part, res, unit, conns, secs, size_desc, lim):
        p(title)
        p(f"One smtpsink (the part-1 server: `smtpsink --listen ... --tls-cert ... --tls-key ...`), "
          f"`smtpload -q -c {conns} -d {secs} -s {size_desc}` (pipelined, connections reused for the whole run) "
          f"without (plain) and with `--starttls --insecure` (tls); {len(runs.rounds(part))} rounds, order "
          f"alternating (plain/tls, tls/plain, ...). Server CPU per {unit} = (utime+stime) / "
          + ("accepted messages" if unit == "msg" else "(accepted messages x message size / 2^20)") + ".\n")
        p(f"| Round | Order | plain msgs/s | tls msgs/s | plain MB/s | tls MB/s | plain CPU us/{unit} | tls CPU us/{unit} | tls/plain | plain server CPU ticks | tls server CPU ticks |")
        p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in runs.rounds(part):
            cp, ct = runs.per(part, "plain", r, unit), runs.per(part, "tls", r, unit)
            p(f"| {r} | {runs.order.get((part, str(r)), '?')} | {fmt(runs.get(part, 'plain', r, 'rate'))} "
              f"| {fmt(runs.get(part, 'tls', r, 'rate'))} | {fmt(runs.get(part, 'plain', r, 'mb_per_s'), 1)} "
              f"| {fmt(runs.get(part, 'tls', r, 'mb_per_s'), 1)} | {fmt(cp, 2)} | {fmt(ct, 2)} "
              f"| {fmt(ct / cp if cp and ct else None, 3)} | {fmt(runs.get(part, 'plain', r, 'srv_ticks'))} "
              f"| {fmt(runs.get(part, 'tls', r, 'srv_ticks'))} |")
        p("")
        if res["ratio"] is None:
            p("Not enough successful runs for a ratio.\n")
            return
        p(f"| | plain | tls | tls/plain |")
        p("|---|---:|---:|---:|")
        p(f"| server CPU us/{unit}, median (min-max) | {fmt(med(res['plain']), 2)} ({fmt(min(res['plain']), 2)}-{fmt(max(res['plain']), 2)}) "
          f"| {fmt(med(res['tls']), 2)} ({fmt(min(res['tls']), 2)}-{fmt(max(res['tls']), 2)}) | **{res['ratio']:.3f}** |")
        p(f"| per-round tls/plain, median (min-max) | | | {med(res['pairs']):.3f} ({min(res['pairs']):.3f}-{max(res['pairs']):.3f}) |")
        p(f"| of which user / system, median | {fmt(med(res['plain_user']), 2)} / {fmt(med(res['plain_sys']), 2)} "
          f"| {fmt(med(res['tls_user']), 2)} / {fmt(med(res['tls_sys']), 2)} "
          f"| {fmt(med(res['tls_user']) / med(res['plain_user']) if med(res['plain_user']) else None, 2)} / "
          f"{fmt(med(res['tls_sys']) / med(res['plain_sys']) if med(res['plain_sys']) else None, 2)} |")
        sc = syscalls.get(part)
        if sc and sc.get("plain") and sc.get("tls"):
            for name in sorted(set(sc["plain"]) | set(sc["tls"])):
                x, y = sc["plain"].get(name), sc["tls"].get(name)
                p(f"| `{name}` system calls per {unit} (perf, one run each) | {fmt(x, 2)} | {fmt(y, 2)} "
                  f"| {fmt(y / x if x and y is not None else None, 2)} |")
        p(f"| msgs/s, median | {fmt(med(res['plain_rate']))} | {fmt(med(res['tls_rate']))} | {med(res['tls_rate']) / med(res['plain_rate']):.3f} |")
        p(f"| server CPU, % of a core, median | {fmt(med(res['plain_srv']))}% | {fmt(med(res['tls_srv']))}% | |")
        p(f"| generator CPU, % of a core, median | {fmt(med(res['plain_gen']))}% | {fmt(med(res['tls_gen']))}% | |")
        p("")
        if (sc and sc.get("plain", {}).get("recvfrom") and sc.get("tls", {}).get("recvfrom") and unit == "msg"
                and sc["tls"]["recvfrom"] > 1.5 * sc["plain"]["recvfrom"]):
            p(f"- System calls: over TLS the server made {sc['tls']['recvfrom']:.2f} `recvfrom` per message against "
              f"{sc['plain']['recvfrom']:.2f} in plaintext: `Tls::read` (src/net/transport.rs) calls `read_tls` "
              f"again after the records it got until the socket answers WouldBlock, so every read event costs one "
              f"more `recvfrom`; writes are one `writev` (rustls's records) instead of one `sendto` per message.")
        pf = prof.get(part)
        if pf and pf.get("plain") and pf.get("tls"):
            pl, tl = pf["plain"], pf["tls"]
            tp, up = prof_cpu[(part, "plain")], prof_cpu[(part, "tls")]
            p(f"\nNative profile (`perf record -e cpu-clock -F {meta.get('PERF_FREQ')}` on the server during one "
              f"extra run each, `perf report --sort sym`; a symbol's share of the samples x the CPU time sampled "
              f"({tp[2]}), {tp[0] / tp[1]:.2f} us/{unit} plain and {up[0] / up[1]:.2f} us/{unit} TLS in these runs; "
              f"[k] kernel, [.] user space; symbols under 0.2% of the samples are left out). Largest changes:\n")
            p(f"| symbol | plain us/{unit} | TLS us/{unit} | change |")
            p("|---|---:|---:|---:|")
            delta = {k: tl.get(k, 0) - pl.get(k, 0) for k in set(pl) | set(tl)}
            for k, d in sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:int(meta.get("TOP", "12"))]:
                p(f"| `{short(k, 90)}` | {pl.get(k, 0):.2f} | {tl.get(k, 0):.2f} | {d:+.2f} |")
            kern = sum(v for k, v in delta.items() if k.startswith("[k]"))
            user = sum(v for k, v in delta.items() if not k.startswith("[k]"))
            p(f"| **all listed symbols** ([k] {kern:+.2f}, [.] {user:+.2f}) | {sum(pl.values()):.2f} | {sum(tl.values()):.2f} | {kern + user:+.2f} |")
            p("")
        sp = max(spread(res["plain"]), spread(res["tls"]))
        tk = min(res["plain_ticks"] + res["tls_ticks"] or [0])
        p(f"- Noise: server CPU per {unit} spread over {100 * spread(res['plain']):.1f}% (plain) and "
          f"{100 * spread(res['tls']):.1f}% (tls) of the median across rounds; the smallest run measured "
          f"{tk:.0f} ticks ({100 / tk if tk else float('nan'):.1f}% resolution). "
          + (f"The ratio's margin to the {lim:g}x limit ({100 * abs(lim - res['ratio']) / lim:.0f}%) is "
             f"{'larger' if abs(lim - res['ratio']) / lim > sp else 'not larger'} than that spread." if sp == sp else ""))
        gen = med(res["tls_gen"])
        srv = med(res["tls_srv"])
        if gen == gen and srv == srv and gen > 85 and srv < 90:
            p(f"- Over TLS the generator used {gen:.0f}% of its core and the server {srv:.0f}% of its own: the "
              f"generator sets the pace, which does not change CPU per {unit} much but means the server is "
              f"not saturated.")
        p("")

    ab_section("## 2. Reused TLS connections vs plaintext, 1 KiB messages\n", "reuse", reuse, "msg",
               meta.get("REUSE_CONNS"), meta.get("REUSE_SECONDS"), "1024", 1.5)
    if meta.get("DIAG_WHY"):
        p(f"(No system call counts or native profiles: {meta['DIAG_WHY']}.)\n")
    ab_section("## 3. 1 MiB messages, TLS vs plaintext\n", "big", big, "MiB",
               meta.get("BIG_CONNS"), meta.get("BIG_SECONDS"), meta.get("BIG_SIZE"), 2.0)
    if big["ratio"] is not None:
        added = med(big["tls"]) - med(big["plain"])
        budget = med(big["plain"])  # what TLS may add at 2x
        p(f"What TLS adds per MiB: **{added:,.0f} us** (user {med(big['tls_user']) - med(big['plain_user']):+,.0f} us, "
          f"system {med(big['tls_sys']) - med(big['plain_sys']):+,.0f} us); the 2x target allows {budget:,.0f} us "
          f"(the plaintext cost once more)."
          + (f" The server made {sc_big['tls']['recvfrom']:,.0f} `recvfrom` calls per MiB over TLS against "
             f"{sc_big['plain']['recvfrom']:,.0f} in plaintext: rustls's `read_tls` reads at most 4 KiB beyond "
             f"what it already holds (its `READ_SIZE`; records are up to 16 KiB), where the plaintext path reads "
             f"into a 64 KiB buffer; these extra, smaller reads account for much of the extra system time."
             if sc_big.get("tls", {}).get("recvfrom") and sc_big.get("plain", {}).get("recvfrom")
             and sc_big["tls"]["recvfrom"] > 2 * sc_big["plain"]["recvfrom"] else ""))
        pf = prof.get("big", {})
        if pf.get("plain") and pf.get("tls"):
            pl, tl = pf["plain"], pf["tls"]
            cats = {"AES-GCM (ring)": lambda k: re.search(r"aes|gcm|ghash|clmul", k, re.I),
                    "memcpy/memmove (user)": lambda k: k.startswith("[.]") and re.search(r"mem(cpy|move)", k),
                    "kernel": lambda k: k.startswith("[k]"),
                    "rustls and the rest of user space": lambda k: True}
            seen, parts_ = set(), []
            for name, test in cats.items():
                keys = [k for k in set(pl) | set(tl) if k not in seen and test(k)]
                seen.update(keys)
                parts_.append((name, sum(tl.get(k, 0) - pl.get(k, 0) for k in keys)))
            tot = sum(x for _, x in parts_)
            p("By the native profile, TLS adds per MiB: " + "; ".join(
                f"{name} **{x:+,.0f} us** ({100 * x / tot:.0f}%)" for name, x in parts_) + ".")
            d = dict(parts_)
            aes, rest = d.get("AES-GCM (ring)", 0), d.get("rustls and the rest of user space", 0)
            cp, kern = d.get("memcpy/memmove (user)", 0), d.get("kernel", 0)
            rc = (sc_big["tls"]["recvfrom"] / sc_big["plain"]["recvfrom"]
                  if sc_big.get("tls", {}).get("recvfrom") and sc_big.get("plain", {}).get("recvfrom") else None)
            if aes > 0:
                est = (med(big["plain"]) + aes + max(rest, 0)) / med(big["plain"])
                p(f"AES-GCM decryption alone ({aes:,.0f} us/MiB) is {'within' if aes <= budget else 'beyond'} the "
                  f"budget of {budget:,.0f} us. The user-space copies ({cp:+,.0f} us of memcpy/memmove that the "
                  f"plaintext path does not have: rustls 0.23 copies each decrypted record into a buffer of its own "
                  f"(`take_received_plaintext`), which its unbuffered API hands out; see src/net/transport.rs) "
                  f"and the kernel ({kern:+,.0f} us"
                  + (f"; {rc:.1f}x the `recvfrom` calls" if rc else "") + ") are the rest. "
                  f"Without those two the ratio would be about {est:.2f}x (an estimate: the timed plaintext figure "
                  f"plus the profile's AES-GCM and other user-space increase).")

        p("")

    # ---------------- part 4 detail
    p("## 4. Instructions per message (callgrind)\n")
    if meta.get("CG") != "1":
        p("Not run (CG=0).\n")
    else:
        dm = msgs - base_msgs
        p(f"Method of scripts/rules-bench.sh: the server under `valgrind --tool=callgrind`, "
          f"`smtpload -q -c {meta.get('SESSIONS')} -m N -s 1024` (pipelined), SIGTERM; "
          f"Ir/msg = (Ir(N={msgs}) - Ir(N={base_msgs})) / {dm}; each variant {meta.get('CG_REPEAT')} time(s) "
          f"(a fresh server each), median. Baseline {meta.get('BASE_REV')} (pre-TLS; sha256 {meta.get('BASE_SHA')}, "
          f"{meta.get('BASE_FROM')}); current: the part-1 flags (`--tls-cert/--tls-key`, STARTTLS offered; the "
          f"client does not use it). The same current smtpload drives every server.\n")
        names = {"base": f"{meta.get('BASE_REV')} (pre-TLS)", "old": f"{meta.get('OLD_REV')} (older baseline)",
                 "cur": "current, plaintext client", "tls": "current, STARTTLS, connections reused",
                 "conn": "current, plaintext, a connection per message", "hs": "current, full STARTTLS handshake per message",
                 "big": "current, 1 MiB messages, plaintext (Ir per MiB)",
                 "bigtls": "current, 1 MiB messages, STARTTLS (Ir per MiB)"}
        p("| Variant | Ir/msg (median) | vs pre-TLS | Ir/msg per repeat | N / base N |")
        p("|---|---:|---:|---|---|")
        for v in ("base", "old", "cur", "tls", "conn", "hs", "big", "bigtls"):
            if v not in medv:
                continue
            fn, bn = ((hs_msgs, hs_base) if v in ("conn", "hs") else
                      (big_msgs, big_base) if v in ("big", "bigtls") else (msgs, base_msgs))
            rel = f"{medv[v] / medv['base']:.4f}" if "base" in medv and v in ("base", "old", "cur", "tls") else ""
            p(f"| {names[v]} | {medv[v]:,.1f} | {rel} | {', '.join(f'{x:,.1f}' for _, x in sorted(per[v].items()))} | {fn} / {bn} |")
        p("")
        if "tls" in medv and "cur" in medv:
            p(f"- TLS on a reused connection adds **{medv['tls'] - medv['cur']:+,.0f} Ir/msg** "
              f"({medv['tls'] / medv['cur']:.2f}x the plaintext path) in user space: record decryption and "
              f"encryption (AES-GCM in ring's assembly) and rustls's buffering; the kernel's share is not in "
              f"callgrind's count (see part 2's system calls and native profile).")
        if ir_hs is not None:
            p(f"- A full STARTTLS handshake costs **{ir_hs:,.0f} Ir** in smtpsink (Ir/msg with a full handshake per "
              f"connection {medv['hs']:,.0f} minus plaintext with a connection per message {medv['conn']:,.0f}); "
              f"smtpsink's final statistics counted {cg_hs.get(('hs', hs_msgs), '?')} handshakes for "
              f"{hs_msgs} messages.")
        p("")
        if "bigtls" in medv and "big" in medv:
            p(f"- 1 MiB messages: TLS adds **{medv['bigtls'] - medv['big']:+,.0f} Ir per MiB** "
              f"({medv['bigtls'] / medv['big']:.2f}x the plaintext path's {medv['big']:,.0f}); the table below says "
              f"where. Instruction counts weigh AES-NI code and `rep movsb` copies very differently from their "
              f"native cost (and valgrind hides VAES, so ring runs its AES-NI code, not the VAES code it uses "
              f"natively): for CPU time see part 3's native profile.")
            p("")
        raw_cg = sorted(cg.items(), key=lambda kv: (["base", "old", "cur", "tls", "conn", "hs", "big", "bigtls"].index(kv[0][0]), kv[0][1]))
        if raw_cg:
            reps = sorted({r for _, x in raw_cg for r in x})
            p("Raw callgrind totals (Ir):\n")
            p("| Variant | Messages | " + " | ".join(f"repeat {r}" for r in reps) + " |")
            p("|---|---:|" + "---:|" * len(reps))
            for (v, n), x in raw_cg:
                p(f"| {v} | {n} | " + " | ".join(fmt(x.get(r)) for r in reps) + " |")
            p("")
        ad = a.annot_dir
        fnc = {}
        for v in ("base", "old", "cur", "tls"):
            for n in (base_msgs, msgs):
                fnc[(v, n)] = annot_functions(os.path.join(ad, f"{v}-{n}.annot"))
        for v in ("conn", "hs"):
            for n in (hs_base, hs_msgs):
                fnc[(v, n)] = annot_functions(os.path.join(ad, f"{v}-{n}.annot"))
        for v in ("big", "bigtls"):
            for n in (big_base, big_msgs):
                fnc[(v, n)] = annot_functions(os.path.join(ad, f"{v}-{n}.annot"))
        top = int(meta.get("TOP", "12"))
        pm = {}
        for v in ("base", "old", "cur", "tls"):
            if fnc[(v, msgs)] and fnc[(v, base_msgs)]:
                pm[v] = per_unit(fnc[(v, msgs)], fnc[(v, base_msgs)], dm)
        for v in ("conn", "hs"):
            if fnc[(v, hs_msgs)] and fnc[(v, hs_base)]:
                pm[v] = per_unit(fnc[(v, hs_msgs)], fnc[(v, hs_base)], hs_msgs - hs_base)
        for v in ("big", "bigtls"):
            if big_msgs > big_base and fnc[(v, big_msgs)] and fnc[(v, big_base)]:
                pm[v] = per_unit(fnc[(v, big_msgs)], fnc[(v, big_base)], (big_msgs - big_base) * big_mib)
        p("### Where the instructions go (callgrind_annotate, self Ir, repeat 1)\n")
        p("Per function: (self Ir of the full run - self Ir of the base run) / messages, inlined code summed per "
          "function. Functions renamed or inlined differently between builds show up as one going down and "
          "another going up.\n")
        if "cur" in pm and "base" in pm:
            p(f"Plaintext path, current vs {meta.get('BASE_REV')} (largest changes):\n")
            p(diff_table(pm["cur"], pm["base"], top, "msg", meta.get("BASE_REV"), "current"))
            p("")
        if "tls" in pm and "cur" in pm:
            p("\nReused TLS connection vs plaintext, current binary (largest changes per message):\n")
            p(diff_table(pm["tls"], pm["cur"], top, "msg", "plaintext", "TLS"))
            p("")
        if "hs" in pm and "conn" in pm:
            p("\nA full handshake: per message with a handshake per connection minus plaintext with a connection "
              "per message (top functions):\n")
            p(top_table(per_unit(pm["hs"], pm["conn"], 1), top, "handshake"))
            p("")
            p("valgrind reports a CPU with fewer features than the real one to the program, so ring may pick "
              "other code paths under callgrind than natively (here, e.g., the generic X25519 code instead of "
              "the ADX/BMI2 one); the per-handshake split shows what the handshake consists of, not its native "
              "cycle shares.\n")
        if "bigtls" in pm and "big" in pm:
            p("\n1 MiB messages, TLS vs plaintext (largest changes per MiB):\n")
            p(diff_table(pm["bigtls"], pm["big"], top, "MiB", "plaintext", "TLS"))
            p("")
            mc = pm["bigtls"].get("__memcpy_avx_unaligned_erms", 0) - pm["big"].get("__memcpy_avx_unaligned_erms", 0)
            aes = sum(v for k, v in pm["bigtls"].items() if re.search(r"aes|gcm|ghash", k, re.I))
            p(f"AES-GCM code (functions matching aes/gcm/ghash): {aes:,.0f} Ir/MiB. memcpy adds {mc:,.0f} Ir/MiB; "
              f"glibc copies large blocks with `rep movsb` here, which callgrind counts once per byte, so that is "
              f"about {mc / 2**20:.1f} extra copies of every byte in user space (rustls 0.23 copies each "
              f"decrypted record into `received_plaintext`; with its buffered API, which smtpsink used up to "
              f"6e90e71, also the ciphertext into its deframer buffer and `reader().read()` into smtpsink's "
              f"buffer; see src/net/transport.rs); the plaintext path has the kernel's copy only.\n")

    # ---------------- noise, notes, machine, commands
    p("## Noise\n")
    lines = []
    for s in hs_servers:
        if hs[s]["rates"]:
            lines.append(f"part 1 {s}: msgs/s spread {100 * spread(hs[s]['rates']):.1f}%, CPU/handshake "
                         f"{100 * spread(hs[s]['cpu']):.1f}%")
    for part, res in (("part 2", reuse), ("part 3", big)):
        if res["plain"] and res["tls"]:
            lines.append(f"{part}: CPU/unit spread plain {100 * spread(res['plain']):.1f}%, tls {100 * spread(res['tls']):.1f}%; "
                         f"per-round ratios {min(res['pairs']):.3f}-{max(res['pairs']):.3f}")
    if "cur" in per and len(per["cur"]) > 1:
        for v in ("base", "old", "cur"):
            if v in per:
                lines.append(f"callgrind {v}: Ir/msg spread {100 * spread(list(per[v].values())):.2f}% over "
                             f"{len(per[v])} repeats")
    p("Spread = (max - min) / median over the rounds. " + "; ".join(lines) + ".")
    # Other processes' CPU use during each timed run (% of the whole machine).
    fo = collections.defaultdict(list)
    busy_runs = []
    for (part, variant, rnd), m in runs.m.items():
        if rnd == "w" or num(m.get("foreign_pct")) is None:
            continue
        f = num(m["foreign_pct"])
        fo[part].append(f)
        if f > float(meta.get("BUSY_PCT", "10")):
            busy_runs.append(f"{part} {variant} round {rnd} ({f:.0f}%)")
    if fo:
        p("\nOther processes' share of the machine's CPU time during the timed runs (its busy time less the "
          "server's and the generator's; median, max): "
          + "; ".join(f"part {({'hs': '1', 'reuse': '2', 'big': '3'}).get(k, k)}: {med(v):.1f}%, {max(v):.1f}%"
                      for k, v in sorted(fo.items(), key=lambda kv: ["hs", "reuse", "big"].index(kv[0])
                                         if kv[0] in ("hs", "reuse", "big") else 9))
          + f". {meta.get('REDOS', '0')} run(s) were repeated because others used more than "
          f"{meta.get('BUSY_PCT', '10')}% during them (the repeat is what counts)"
          + (f"; still above it: {', '.join(sorted(busy_runs))}." if busy_runs else "."))
    p(f"\nMachine before the timed parts (all CPUs, over one second): {meta.get('QUIET') or '-'}; load average "
      f"at the end {meta.get('LOAD_END')}.")
    p(f"\nThis is a {meta.get('NPROC')}-CPU machine shared with other work; "
      "server and generator each had a CPU of their own when pinned, but nothing else was kept off them. "
      "CPU times come in 1/" + str(clk) + " s ticks. Instruction counts do not depend on the machine's load.")
    fr = int(meta.get("FAILED_RUNS", "0"))
    p(f"\n- {fr} measured run(s) failed and are left out of the medians." if fr else "\n- All measured runs succeeded.")
    for n in meta.get("_notes", []):
        p(f"- {n}")
    p("")
    if server_json:
        sj = server_json
        t = sj.get("tls", {})
        c = sj.get("counters", {})
        p("## smtpsink's own view (final statistics of the part 1-3 server, `--json`)\n")
        p(f"- messages {c.get('messages')}, connections {c.get('connections')}, TLS handshakes "
          f"{t.get('handshakes')} (resumed {t.get('resumed')}), versions {t.get('versions')}, ciphers "
          f"{t.get('ciphers')}, failures {t.get('failures') or 'none'}")
        hl = t.get("handshake_latency", {})
        p(f"- handshake latency (from the 220 to STARTTLS to the handshake's end, as the server sees it): "
          f"p50 {hl.get('p50_us')} us, p90 {hl.get('p90_us')} us, p99 {hl.get('p99_us')} us, max {hl.get('max_us')} us")
        p("")
    if a.failed and os.path.exists(a.failed) and os.path.getsize(a.failed):
        p("## Output of failed runs\n")
        with open(a.failed, encoding="utf-8") as f:
            p(f.read())
    p("## Machine\n")
    with open(a.machine, encoding="utf-8") as f:
        p(f.read().rstrip("\n"))
    p(f"- {meta.get('VALGRIND')}; {meta.get('OPENSSL')}")
    p("")
    p("## Commands\n")
    p("Binaries are copied to a work directory first (`bin/`); WORKDIR is the script's temporary directory; "
      "ports are free 127.0.0.1 ports. Under callgrind one connection reads the greeting and sends QUIT before "
      "the generator starts (readiness; it cancels out of the differences). Before part 1 every server also got "
      "one plaintext and one STARTTLS test message.\n")
    p("```")
    with open(a.commands, encoding="utf-8") as f:
        p(f.read().rstrip("\n"))
    p("```\n")
    p(f"Reproduce: `{meta.get('REPRODUCE')}`")

    with open(a.tsv_out, "w", encoding="utf-8") as f:
        f.write("kind\tpart\tvariant\tround\tmetric\tvalue\n")
        for r in rows + derived:
            f.write("\t".join(r) + "\n")
    print("\n".join(out))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("ticks")
    t.add_argument("pid", type=int)
    r = sub.add_parser("row")
    for opt in ("--raw", "--part", "--variant", "--round", "--json"):
        r.add_argument(opt, required=True)
    r.add_argument("--rc", type=int, default=0)
    r.add_argument("--set", action="append")
    s = sub.add_parser("stats")
    s.add_argument("url")
    pr = sub.add_parser("perf-rows")
    for opt in ("--raw", "--part", "--variant", "--units", "--ticks", "--file"):
        pr.add_argument(opt, required=True)
    q = sub.add_parser("postal-row")
    for opt in ("--raw", "--mode", "--before", "--after", "--seconds", "--wall", "--ticks", "--rc", "--out"):
        q.add_argument(opt, required=True)
    rep = sub.add_parser("report")
    for opt in ("--raw", "--meta", "--commands", "--machine", "--annot-dir", "--tsv-out"):
        rep.add_argument(opt, required=True)
    for opt in ("--failed", "--server-json", "--server-final"):
        rep.add_argument(opt)
    a = ap.parse_args()
    return {"ticks": cmd_ticks, "row": cmd_row, "stats": cmd_stats, "postal-row": cmd_postal_row,
            "perf-rows": cmd_perf_rows, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
