#!/usr/bin/env python3
"""rules_bench_report.py: the Python side of rules-bench.sh.

Subcommands:
  scrape --url URL --out FILE [--ready FILE] [--interval S]
         [--max-seconds S] [--keepalive]
        GET URL every S seconds (default 0.1, on a fixed schedule) until
        SIGTERM/SIGINT or --max-seconds; a scrape counts as ok when the
        status is 200 and the body holds "smtpsink_messages_total". Creates
        the --ready file after the first good scrape (so a caller can start
        its load once Python's start-up is over). Writes {"ok", "bad",
        "first_bad", "elapsed_s", "bytes", "cpu_s" (the scraper's own CPU
        since ready)} to FILE at exit. Without --keepalive every scrape is a
        new connection (Connection: close), as `curl` in a loop does; with
        it, one connection is reused (as Prometheus does).
  burst --url URL --count N [--keepalive]
        N scrapes back to back, checked as above; prints "OK BAD SECONDS".
  rules-check --url URL --rules N [--expect-hit NAME=COUNT ...]
        GET URL (/stats): the set in force has N rules; every rule's hit
        count is 0 except those named (which must equal COUNT); no rate
        limit refusal, greylisting or magic address acted; no 4xx/5xx
        reply. Prints "ok ..." (exit 0) or "bad ..." (exit 1).
  report --raw TSV --meta FILE --commands FILE --machine FILE
         --annot-dir DIR --tsv-out FILE
        The Markdown report on stdout and the TSV (raw rows plus derived
        rows) in --tsv-out.

Standard library only.
"""

import argparse
import collections
import http.client
import json
import os
import re
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cg_annotate  # noqa: E402  (beside this script)
import urllib.parse

# ------------------------------------------------------------------ scrape ----


class Scraper:
    """GET one URL, again and again; counts good and bad answers."""

    def __init__(self, host, port, path, keepalive):
        self.host, self.port, self.path, self.keepalive = host, port, path, keepalive
        self.ok = self.bad = self.nbytes = 0
        self.first_bad = None
        self.conn = None

    def once(self):
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
            headers = {} if self.keepalive else {"Connection": "close"}
            self.conn.request("GET", self.path, headers=headers)
            resp = self.conn.getresponse()
            body = resp.read()
            self.nbytes += len(body)
            if resp.status == 200 and b"smtpsink_messages_total" in body:
                self.ok += 1
            else:
                self.bad += 1
                self.first_bad = self.first_bad or f"status {resp.status}, {len(body)} bytes"
            if not self.keepalive or resp.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as e:
            self.bad += 1
            self.first_bad = self.first_bad or f"{type(e).__name__}: {e}"
            self.close()

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def split_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port or 80, u.path or "/"


def cmd_burst(a):
    sc = Scraper(*split_url(a.url), a.keepalive)
    t0 = time.monotonic()
    for _ in range(a.count):
        sc.once()
    sc.close()
    print(sc.ok, sc.bad, f"{time.monotonic() - t0:.3f}")
    return 0 if sc.bad == 0 else 1


def cmd_scrape(a):
    stop = False

    def on_signal(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port, path = split_url(a.url)
    sc = Scraper(host, port, path, a.keepalive)
    t0 = time.monotonic()
    nxt = t0
    cpu0 = None
    while not stop and time.monotonic() - t0 < a.max_seconds:
        sc.once()
        if cpu0 is None and sc.ok:
            t = os.times()
            cpu0 = t.user + t.system
            if a.ready:
                with open(a.ready, "w", encoding="utf-8") as f:
                    f.write("ready\n")
        nxt += a.interval
        now = time.monotonic()
        if nxt < now:  # fell behind: keep the cadence, skip the missed ticks
            nxt = now + a.interval - ((now - nxt) % a.interval)
        while not stop and time.monotonic() < nxt:
            time.sleep(min(0.02, max(0.0, nxt - time.monotonic())))
    sc.close()
    t = os.times()
    out = {
        "ok": sc.ok,
        "bad": sc.bad,
        "first_bad": sc.first_bad,
        "elapsed_s": round(time.monotonic() - t0, 3),
        "bytes": sc.nbytes,
        "cpu_s": round(t.user + t.system - (cpu0 or 0.0), 3),
        "keepalive": bool(a.keepalive),
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f)
        f.write("\n")


# ------------------------------------------------------------- rules-check ----


def cmd_rules_check(a):
    expect = {}
    for e in a.expect_hit or []:
        name, _, n = e.partition("=")
        expect[name] = int(n or 1)
    u = urllib.parse.urlsplit(a.url)
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5.0)
        conn.request("GET", u.path or "/stats", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as e:
        print(f"bad GET {a.url}: {type(e).__name__}: {e}")
        return 1
    if resp.status != 200:
        print(f"bad GET {a.url}: status {resp.status}")
        return 1
    j = json.loads(body)
    why = []
    r = j.get("rules")
    if not isinstance(r, dict):
        print("bad /stats has no \"rules\" object (no rule set in force?)")
        return 1
    if r.get("rules") != a.rules:
        why.append(f"rules={r.get('rules')} (expected {a.rules})")
    hits = r.get("hits", {})
    if len(hits) != a.rules:
        why.append(f"{len(hits)} hit counters (expected {a.rules})")
    for name, n in hits.items():
        want = expect.get(name, 0)
        if n != want:
            why.append(f"hits[{name}]={n} (expected {want})")
    for name in expect:
        if name not in hits:
            why.append(f"no rule named {name}")
    limited = sum(sum(row) for row in r.get("rate_limited", {}).values())
    for key, val in (("rate_limited", limited), ("greylisted", r.get("greylisted")),
                     ("greylist_passed", r.get("greylist_passed")), ("magic", r.get("magic"))):
        if val:
            why.append(f"{key}={val}")
    c = j.get("counters", {})
    replies = c.get("replies", {})
    if not expect and (replies.get("4xx") or replies.get("5xx")):
        why.append(f"replies 4xx={replies.get('4xx')} 5xx={replies.get('5xx')}")
    hit_txt = ",".join(f"{k}={v}" for k, v in hits.items())
    summary = (f"rules={r.get('rules')} messages={c.get('messages')} "
               f"replies={replies} hits[{hit_txt}]")
    if why:
        print("bad " + "; ".join(why) + " | " + summary)
        return 1
    print("ok " + summary)
    return 0


# ------------------------------------------------------------------ report ----

def read_raw(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("part\t"):
                continue
            part, variant, rnd, msgs, metric, value = line.split("\t")
            rows.append((part, variant, rnd, msgs, metric, value))
    return rows


def read_meta(path):
    meta = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            k, sep, v = line.rstrip("\n").partition("=")
            if sep:
                meta[k] = v
    return meta


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_int(x):
    return f"{x:,.0f}"


def annot_functions(path):
    """Self Ir per function from a callgrind_annotate listing (as
    profile.sh's hot-spot lists: scripts/cg_annotate.py)."""
    if not os.path.exists(path):
        return collections.Counter(), None
    with open(path, encoding="utf-8", errors="replace") as f:
        agg, total, _ = cg_annotate.aggregate(f)
    return agg, total


def short(fn, n=100):
    fn = fn.replace("|", "\\|")
    return fn if len(fn) <= n else fn[: n - 3] + "..."


def per_unit(full, base, units):
    out = collections.Counter()
    for fn in set(full) | set(base):
        out[fn] = (full.get(fn, 0) - base.get(fn, 0)) / units
    return out


def diff_table(new, old, top, unit):
    """Markdown rows of the functions whose cost per unit changed most."""
    delta = {fn: new.get(fn, 0) - old.get(fn, 0) for fn in set(new) | set(old)}
    items = sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top]
    lines = [f"| function | old Ir/{unit} | new Ir/{unit} | change |", "|---|---:|---:|---:|"]
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
        lines.append(f"| `{short(fn)}` | {v:,.0f} | {100 * v / tot:.1f}% |" if tot else
                     f"| `{short(fn)}` | {v:,.0f} | |")
    lines.append(f"| **all functions** | {tot:,.0f} | |")
    return "\n".join(lines)


def cmd_report(a):
    rows = read_raw(a.raw)
    meta = read_meta(a.meta)
    out = []
    derived = []
    p = out.append

    msgs, base_msgs = int(meta["MSGS"]), int(meta["BASE_MSGS"])
    dm = msgs - base_msgs

    # ---- callgrind: Ir per message per variant and repeat
    ir = collections.defaultdict(dict)      # (variant, count) -> {rep: Ir}
    scrapes = {}                            # rep -> ok scrapes of the scrape run
    bursts = {}                             # rep -> scrapes of the burst run
    for part, variant, rnd, n, metric, value in rows:
        if part == "cg" and metric == "ir":
            ir[(variant, int(n))][rnd] = int(value)
        if part == "cg" and variant == "scrape" and metric == "scrapes_ok":
            scrapes[rnd] = int(value)
        if part == "cg" and variant == "burst" and metric == "scrapes_ok":
            bursts[rnd] = int(value)

    def ir_per_msg(variant, base_variant=None):
        """Per repeat: (Ir(full) - Ir(base run)) / (MSGS - BASE_MSGS)."""
        bv = base_variant or variant
        full, base = ir.get((variant, msgs), {}), ir.get((bv, base_msgs), {})
        return {r: (full[r] - base[r]) / dm for r in sorted(full) if r in base}

    cg_variants = [v for v in ("base", "cur", "rules", "control") if (v, msgs) in ir]
    per = {v: ir_per_msg(v) for v in cg_variants}
    medv = {v: med(list(per[v].values())) for v in cg_variants}
    for v in cg_variants:
        for r, x in per[v].items():
            derived.append(("derived", v, r, str(msgs), "ir_per_msg", f"{x:.1f}"))
        derived.append(("derived", v, "median", str(msgs), "ir_per_msg", f"{medv[v]:.1f}"))
    ratio = {v: medv[v] / medv["base"] for v in cg_variants if "base" in medv}
    for v, x in ratio.items():
        derived.append(("derived", v, "median", str(msgs), "ir_ratio_vs_base", f"{x:.4f}"))

    # ---- scraping, callgrind view
    scrape_full = ir.get(("scrape", msgs), {})
    ctrl_full = ir.get(("control", msgs), {})
    per_scrape = {}
    scrape_msg = {}
    for r, x in scrape_full.items():
        n = scrapes.get(r, 0)
        if n and ctrl_full:
            per_scrape[r] = (x - med(list(ctrl_full.values()))) / n
        cbase = ir.get(("control", base_msgs), {})
        if r in cbase:
            scrape_msg[r] = (x - cbase[r]) / dm
    for r, x in per_scrape.items():
        derived.append(("derived", "scrape", r, str(msgs), "ir_per_scrape", f"{x:.0f}"))
        derived.append(("derived", "scrape", r, str(msgs), "ir_per_msg_under_valgrind", f"{scrape_msg.get(r, float('nan')):.1f}"))
    per_burst = {}
    for r, x in ir.get(("burst", msgs), {}).items():
        if bursts.get(r) and ctrl_full:
            per_burst[r] = (x - med(list(ctrl_full.values()))) / bursts[r]
            derived.append(("derived", "burst", r, str(msgs), "ir_per_scrape", f"{per_burst[r]:.0f}"))
    # The burst figure when there is one: every scrape of it sees the filled
    # histogram (the timed scraper's first scrape comes before any message).
    ir_scrape = med(list((per_burst or per_scrape).values()))

    # ---- native A/B
    nat = collections.defaultdict(dict)     # (variant, round) -> {metric: value}
    for part, variant, rnd, n, metric, value in rows:
        if part == "native":
            nat[(variant, rnd)][metric] = value
            nat[(variant, rnd)]["msgs"] = n
    rounds = sorted({int(r) for (v, r) in nat if v in "AB" and r.isdigit()})
    clk = int(meta.get("CLK_TCK", "100"))

    def nget(v, r, m):
        x = nat.get((v, str(r)), {}).get(m)
        try:
            return float(x)
        except (TypeError, ValueError):
            return None

    ok_rounds = [r for r in rounds if nget("A", r, "ok") == 1 and nget("B", r, "ok") == 1]
    a_rates = [nget("A", r, "rate") for r in ok_rounds]
    b_rates = [nget("B", r, "rate") for r in ok_rounds]
    pair_ratios = [b / a for a, b in zip(a_rates, b_rates)]

    def cpu_us(v, r):
        t, n = nget(v, r, "server_ticks"), nget(v, r, "msgs")
        return 1e6 * t / clk / n if t is not None and n else None

    a_cpu = [cpu_us("A", r) for r in ok_rounds]
    b_cpu = [cpu_us("B", r) for r in ok_rounds]
    nat_ratio = med(b_rates) / med(a_rates) if ok_rounds else float("nan")
    nat_pair_ratio = med(pair_ratios)
    for r, x in zip(ok_rounds, pair_ratios):
        derived.append(("derived", "B/A", str(r), meta.get("LOAD_MSGS", ""), "rate_ratio", f"{x:.4f}"))
    derived.append(("derived", "A", "median", meta.get("LOAD_MSGS", ""), "rate", f"{med(a_rates):.1f}"))
    derived.append(("derived", "B", "median", meta.get("LOAD_MSGS", ""), "rate", f"{med(b_rates):.1f}"))
    derived.append(("derived", "B/A", "median", meta.get("LOAD_MSGS", ""), "rate_ratio_of_medians", f"{nat_ratio:.4f}"))
    derived.append(("derived", "B/A", "median", meta.get("LOAD_MSGS", ""), "median_of_pair_ratios", f"{nat_pair_ratio:.4f}"))

    interval = float(meta.get("SCRAPE_INTERVAL", "0.1"))
    per_s = 1.0 / interval
    native_rate = med(a_rates) if ok_rounds else float("nan")
    ctrl_msg = medv.get("control", float("nan"))
    projected = per_s * ir_scrape / (native_rate * ctrl_msg) if ok_rounds else float("nan")
    breakeven = per_s * ir_scrape / (0.01 * ctrl_msg)
    derived.append(("derived", "scrape", "median", str(msgs), "ir_per_scrape", f"{ir_scrape:.0f}"))
    derived.append(("derived", "scrape", "median", str(msgs), "projected_overhead_pct", f"{100 * projected:.4f}"))
    derived.append(("derived", "scrape", "median", str(msgs), "rate_at_1pct_overhead", f"{breakeven:.0f}"))

    # ---- summary
    def verdict(ok):
        return "**met**" if ok else "**MISSED**"

    p(f"# smtpsink: cost of rules and of /metrics scraping ({meta.get('DATE', '')})\n")
    p(f"Current: git {meta.get('CUR_REV')} (`{meta.get('CUR_BIN_SHA')}`); baseline: {meta.get('BASE_REV')} "
      f"(`{meta.get('BASE_BIN_SHA')}`), the code before the rules work, built from a git worktree. "
      f"The same (current) smtpload drives both. Runtime of the whole script: {meta.get('RUNTIME_S')} s.\n")
    p("## Targets\n")
    p("| # | Target | Measured | Limit | Verdict |")
    p("|---|---|---:|---:|---|")
    if "cur" in ratio:
        p(f"| 1 | no rules: Ir/msg current / baseline (callgrind) | {ratio['cur']:.4f} | <= 1.02 | {verdict(ratio['cur'] <= 1.02)} |")
    if "rules" in ratio:
        p(f"| 2 | 10 non-matching rules: Ir/msg / baseline (callgrind) | {ratio['rules']:.4f} | <= 1.10 | {verdict(ratio['rules'] <= 1.10)} |")
    a_spread = (max(a_rates) - min(a_rates)) / med(a_rates) if ok_rounds else float("nan")
    if ok_rounds:
        v3a = verdict(nat_ratio >= 0.99)
        if a_spread > 0.02:
            v3a += f" but inconclusive: the A runs alone spread {100 * a_spread:.0f}%"
        p(f"| 3a | /metrics every {interval * 1000:.0f} ms: native msgs/s with / without (ratio of medians; median of the per-round ratios {nat_pair_ratio:.4f}) "
          f"| {nat_ratio:.4f} | >= 0.99 | {v3a} |")
    if (per_burst or per_scrape) and ok_rounds:
        p(f"| 3b | /metrics every {interval * 1000:.0f} ms: server user-space instructions added at the native rate ({fmt_int(native_rate)} msg/s), "
          f"callgrind Ir/scrape x {per_s:.0f}/s / (Ir/msg x msgs/s) "
          f"| {100 * projected:.3f}% | < 1% | {verdict(projected < 0.01)} |")
    bt = nat.get(("burst", "1"), {})
    scrape_us = share = None
    if bt and ok_rounds:
        nb = float(bt.get("scrapes_ok", "0"))
        if "server_ns" in bt:
            scrape_us = float(bt["server_ns"]) / 1e3 / nb
            how = "its main thread's CPU time from /proc/PID/schedstat"
        else:
            scrape_us = float(bt.get("server_ticks", "0")) * 1e6 / clk / nb
            how = f"CPU ticks from /proc/PID/stat ({clk}/s, coarse)"
        load_cpu = med(a_cpu) * med(a_rates)    # server CPU us per second of load (A)
        share = per_s * scrape_us / load_cpu
        derived.append(("derived", "burst", "1", bt.get("msgs", ""), "server_us_per_scrape", f"{scrape_us:.1f}"))
        derived.append(("derived", "burst", "1", bt.get("msgs", ""), "scrape_share_of_server_cpu_pct", f"{100 * share:.3f}"))
        p(f"| 3c | /metrics every {interval * 1000:.0f} ms: server CPU time (user+kernel) per scrape natively x {per_s:.0f}/s, "
          f"share of the server's CPU time under load (A) | {100 * share:.3f}% | < 1% | {verdict(share < 0.01)} |")
    p("")

    # ---- section 1/2
    p("## 1-2. Instructions per message (callgrind)\n")
    p(f"Method of scripts/profile.sh: the server runs under `valgrind --tool=callgrind`, receives "
      f"`smtpload -q -c {meta.get('SESSIONS')} -m N -s 1024` (pipelined), is stopped by SIGTERM; "
      f"Ir/msg = (Ir(N={msgs}) - Ir(N={base_msgs})) / {dm}. Each variant ran {meta.get('CG_REPEAT')} time(s) "
      f"(fresh server each); the table shows the median and every repeat.\n")
    p("| Variant | Server flags | Ir/msg (median) | vs baseline | Ir/msg per repeat |")
    p("|---|---|---:|---:|---|")
    flags = {"base": "(baseline binary) none", "cur": "none", "rules": "`--rules RULES.toml` (10 rules, none match)",
             "control": "`--control 127.0.0.1:PORT` (not scraped)"}
    names = {"base": f"baseline {meta.get('BASE_REV')}", "cur": "current, no rules", "rules": "current, 10 rules",
             "control": "current, control endpoint"}
    for v in cg_variants:
        reps = ", ".join(f"{x:,.1f}" for _, x in sorted(per[v].items()))
        p(f"| {names[v]} | {flags[v]} | {medv[v]:,.1f} | {ratio.get(v, float('nan')):.4f} | {reps} |")
    p("")
    if "rules" in medv and "cur" in medv:
        p(f"- The 10 rules cost {medv['rules'] - medv['cur']:+,.1f} Ir/msg over the current binary without rules "
          f"({medv['rules'] / medv['cur']:.4f}x); the no-rules path costs {medv['cur'] - medv['base']:+,.1f} Ir/msg over the baseline.")
    p(f"- Rule set check (native run, same workload, then `GET /stats`): {meta.get('RULES_CHECK', 'not run')}")
    p(f"- Positive control (one message to `bounce-1@example.invalid`, which rule `bounce-rcpt` must refuse): "
      f"{meta.get('RULES_POSITIVE', 'not run')}")
    p("- In every callgrind run smtpload reported all messages accepted, and smtpsink's final statistics "
      "counted exactly N messages with no 4xx/5xx reply.\n")
    p("Raw callgrind totals (Ir):\n")
    p("| Variant | Messages | " + " | ".join(f"repeat {r}" for r in sorted(next(iter(ir.values()), {}))) + " |")
    p("|---|---:|" + "---:|" * len(next(iter(ir.values()), {})))
    for (v, n), reps in sorted(ir.items(), key=lambda kv: (["base", "cur", "rules", "control", "scrape", "burst"].index(kv[0][0]), kv[0][1])):
        p(f"| {v} | {n} | " + " | ".join(fmt_int(reps[r]) for r in sorted(reps)) + " |")
    p("")
    p("The rule set (`RULES.toml`):\n")
    p("```toml")
    with open(meta["RULES_FILE"], encoding="utf-8") as f:
        p(f.read().rstrip("\n"))
    p("```\n")

    # where the instructions go (first repeat of each)
    ad = a.annot_dir
    fn = {}
    for v in ("base", "cur", "rules", "control", "scrape", "burst"):
        for n in (base_msgs, msgs):
            fn[(v, n)] = annot_functions(os.path.join(ad, f"{v}-{n}.annot"))[0]
    top = int(meta.get("TOP", "15"))
    if fn[("base", msgs)] and fn[("cur", msgs)]:
        pm = {v: per_unit(fn[(v, msgs)], fn[(v, base_msgs)], dm) for v in ("base", "cur", "rules")}
        p("### Where the instructions per message go (callgrind_annotate, self Ir, repeat 1)\n")
        p("Per function: (self Ir of the full run - self Ir of the base run) / messages, inlined code summed "
          "per function. Functions renamed or inlined differently between the builds show up as one "
          "going down and another going up.\n")
        p("Current without rules vs baseline (largest changes):\n")
        p(diff_table(pm["cur"], pm["base"], top, "msg"))
        p("")
        if fn[("rules", msgs)]:
            p("\n10 rules vs current without rules (largest changes):\n")
            p(diff_table(pm["rules"], pm["cur"], top, "msg"))
            p("")
        p("\nCurrent, no rules: the top functions per message:\n")
        p(top_table(pm["cur"], top, "msg"))
        p("")

    # ---- section 3
    p("\n## 3. Scraping /metrics during load\n")
    ka = meta.get("SCRAPE_KEEPALIVE") == "1"
    p(f"Scraper: `scripts/rules_bench_report.py scrape` (Python http.client), `GET /metrics` every "
      f"{interval * 1000:.0f} ms on a fixed schedule, "
      + ("one kept-alive connection (as Prometheus)" if ka else "a new connection per scrape (`Connection: close`, as curl in a loop)")
      + "; a scrape counts when the status is 200 and the body contains `smtpsink_messages_total`.\n")
    p("### Native throughput, A/B\n")
    p(f"One server `smtpsink --listen 127.0.0.1:PORT --control 127.0.0.1:CPORT` (native, no valgrind) for all runs; "
      f"closed loop `smtpload -q -c {meta.get('LOAD_CONNS')} -s 1024 -m {meta.get('LOAD_MSGS')}` "
      f"(N from a calibration run at {meta.get('CAL_RATE')} msg/s to last ~{meta.get('LOAD_SECONDS')} s); "
      f"A: no scraper, B: scraper running for the whole run. {len(rounds)} rounds, the order alternating "
      f"(AB, BA, ...). msgs/s is smtpload's own figure; server CPU per message from /proc (utime+stime, "
      f"{clk} ticks/s).\n")
    p("| Round | Order | A msgs/s | B msgs/s | B/A | A server CPU us/msg | B server CPU us/msg | scrapes ok/bad | scraper CPU s | A wall s | B wall s |")
    p("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rounds:
        a_ok, b_ok = nget("A", r, "ok") == 1, nget("B", r, "ok") == 1
        ar, br = nget("A", r, "rate"), nget("B", r, "rate")
        ratio_s = f"{br / ar:.4f}" if a_ok and b_ok else "failed"
        ca, cb = cpu_us("A", r), cpu_us("B", r)
        p(f"| {r} | {nat.get(('B', str(r)), {}).get('order', '?')} | {ar or 0:,.0f}{'' if a_ok else ' (failed)'} "
          f"| {br or 0:,.0f}{'' if b_ok else ' (failed)'} | {ratio_s} | {ca or 0:.2f} | {cb or 0:.2f} "
          f"| {nget('B', r, 'scrapes_ok') or 0:.0f}/{nget('B', r, 'scrapes_bad') or 0:.0f} "
          f"| {nget('B', r, 'scraper_cpu_s') or 0:.2f} | {nget('A', r, 'wall') or 0:.2f} | {nget('B', r, 'wall') or 0:.2f} |")
    p("")
    if ok_rounds:
        p("| | A (no scraper) | B (scraper) | B/A |")
        p("|---|---:|---:|---:|")
        p(f"| msgs/s median (min-max) | {fmt_int(med(a_rates))} ({fmt_int(min(a_rates))}-{fmt_int(max(a_rates))}) "
          f"| {fmt_int(med(b_rates))} ({fmt_int(min(b_rates))}-{fmt_int(max(b_rates))}) | **{nat_ratio:.4f}** |")
        p(f"| per-round B/A: median (min-max) | | | {nat_pair_ratio:.4f} ({min(pair_ratios):.4f}-{max(pair_ratios):.4f}) |")
        p(f"| server CPU us/msg median (min-max) | {med(a_cpu):.2f} ({min(a_cpu):.2f}-{max(a_cpu):.2f}) "
          f"| {med(b_cpu):.2f} ({min(b_cpu):.2f}-{max(b_cpu):.2f}) | {med(b_cpu) / med(a_cpu):.4f} |")
        p("")
        p(f"- The A runs alone spread over {100 * a_spread:.1f}% of their median: on this {meta.get('NPROC')}-CPU machine "
          f"(shared with other work; server, smtpload and the scraper compete for the CPUs) a 1% difference "
          f"in msgs/s is {'within' if a_spread >= 0.01 else 'outside'} the run-to-run noise. The CPU time per "
          f"scrape and the instruction counts below are the steadier checks.")
        p(f"- Counts: {meta.get('NATIVE_NOTE', '?')}.")
        bad_runs = len(rounds) - len(ok_rounds)
        if bad_runs:
            p(f"- {bad_runs} round(s) had a failed run and are left out of the medians.")
        p("")
    if scrape_us is not None:
        p(f"Server CPU per scrape natively: {nb:.0f} scrapes back to back against the idle server after the rounds "
          f"(its histogram filled), in {float(bt.get('wall', 0)):.2f} s; {how}, kernel time included: "
          f"**{scrape_us:,.0f} us per scrape**. At {per_s:.0f} scrapes/s that is {per_s * scrape_us / 1e3:.2f} ms of CPU "
          f"per second, **{100 * share:.2f}%** of the server's CPU during an A run "
          f"({med(a_cpu):.2f} us/msg x {fmt_int(med(a_rates))} msg/s = {load_cpu / 1e4:.0f}% of a core).\n")
    p("### Instruction count of scraping (callgrind)\n")
    if per_scrape or per_burst:
        n_list = ", ".join(f"{scrapes[r]}" for r in sorted(scrapes))
        p(f"The control-endpoint server under callgrind, the same {msgs}-message pipelined run: without "
          f"scraping; with the timed scraper running during the load (scrapes per repeat: {n_list}); and "
          f"without it but with {med(list(bursts.values())) if bursts else 0:.0f} scrapes back to back after the "
          f"load (so that every scrape sees the filled latency histogram; the timed scraper's first scrape comes "
          f"before the first message). Ir per scrape = (Ir(run) - median Ir(no scraping)) / scrapes; it varies "
          f"between repeats because part of it (`Histogram::mean`, iterating the recorded values) grows with the "
          f"number of distinct latencies the histogram holds, which under valgrind differs from run to run. Under "
          f"valgrind the server is ~50x slower, so the timed scraper gets far more scrapes per message than "
          f"natively; the native share is projected from Ir/scrape (burst) at {per_s:.0f} scrapes/s and the "
          f"native msgs/s measured above.\n")
        p("| Figure | Value |")
        p("|---|---:|")
        p(f"| Ir/msg, control endpoint, no scraper | {ctrl_msg:,.1f} |")
        if scrape_msg:
            sm = med(list(scrape_msg.values()))
            spm = med([scrapes[r] for r in scrapes]) / msgs
            vs_native = f", {spm / (per_s / native_rate):.0f}x as many per message as natively" if ok_rounds else ""
            p(f"| Ir/msg with the timed scraper under valgrind ({spm:.5f} scrapes/msg{vs_native}) | {sm:,.1f} ({sm / ctrl_msg:.4f}x) |")
        if per_scrape:
            p(f"| Ir per scrape, timed scraper (per repeat: {', '.join(fmt_int(x) for _, x in sorted(per_scrape.items()))}) | {fmt_int(med(list(per_scrape.values())))} |")
        if per_burst:
            p(f"| **Ir per scrape, burst after the load** (per repeat: {', '.join(fmt_int(x) for _, x in sorted(per_burst.items()))}) | **{fmt_int(med(list(per_burst.values())))}** |")
        if ok_rounds:
            p(f"| scrapes per message natively: {per_s:.0f}/s / {fmt_int(native_rate)} msg/s | {per_s / native_rate:.6f} |")
            p(f"| **projected Ir/msg added natively** | {per_s * ir_scrape / native_rate:,.2f} (**{100 * projected:.3f}%**) |")
        p(f"| msgs/s below which {per_s:.0f} scrapes/s would add 1% of the instructions | {fmt_int(breakeven)} |")
        p(f"| control endpoint open but not scraped, Ir/msg vs current without it | {ctrl_msg / medv.get('cur', float('nan')):.4f}x |")
        p("")
        p("callgrind counts user-space instructions of the server only: the kernel's share of a scrape "
          "(accept, the HTTP response write, close) is not in it; the native A/B includes everything.\n")
        cf, bf = fn[("control", msgs)], fn[("burst", msgs)]
        if cf and bf and bursts.get("1"):
            p(f"Per scrape, by function (repeat 1: (burst run - control run) / {bursts['1']} scrapes, largest first):\n")
            p(top_table(per_unit(bf, cf, bursts["1"]), top, "scrape"))
            p("")
    else:
        p("not measured\n")

    # ---- machine, commands
    p("\n## Machine\n")
    with open(a.machine, encoding="utf-8") as f:
        p(f.read().rstrip("\n"))
    p(f"- {meta.get('VALGRIND')}")
    p("")
    p("## Commands\n")
    p("Binaries are copied to a work directory first (shown as `bin/`); ports are free 127.0.0.1 ports "
      "picked per run. Under callgrind one connection reads the greeting and sends QUIT before the "
      "generator starts (readiness; it cancels out of the differences).\n")
    p("```")
    with open(a.commands, encoding="utf-8") as f:
        p(f.read().rstrip("\n"))
    p("```\n")
    p(f"Reproduce: `{meta.get('REPRODUCE')}`")

    with open(a.tsv_out, "w", encoding="utf-8") as f:
        f.write("part\tvariant\tround\tmessages\tmetric\tvalue\n")
        for r in rows + derived:
            f.write("\t".join(r) + "\n")
    print("\n".join(out))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scrape")
    s.add_argument("--url", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--interval", type=float, default=0.1)
    s.add_argument("--max-seconds", type=float, default=600.0)
    s.add_argument("--keepalive", action="store_true")
    s.add_argument("--ready")
    b = sub.add_parser("burst")
    b.add_argument("--url", required=True)
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--keepalive", action="store_true")
    c = sub.add_parser("rules-check")
    c.add_argument("--url", required=True)
    c.add_argument("--rules", type=int, required=True)
    c.add_argument("--expect-hit", action="append")
    r = sub.add_parser("report")
    for opt in ("--raw", "--meta", "--commands", "--machine", "--annot-dir", "--tsv-out"):
        r.add_argument(opt, required=True)
    a = ap.parse_args()
    if a.cmd == "scrape":
        cmd_scrape(a)
        return 0
    if a.cmd == "burst":
        return cmd_burst(a)
    if a.cmd == "rules-check":
        return cmd_rules_check(a)
    return cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
