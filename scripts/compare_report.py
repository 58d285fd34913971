#!/usr/bin/env python3
"""compare_report.py: the Markdown tables (stdout) and the plot of compare.sh.

Reads the raw data compare.sh writes: --runs (one line a generator run),
--idle (idle-connection memory) and --copy (plain TCP copy). With --plot BASE
it also draws BASE.png and BASE.svg (needs matplotlib; without it, a line
says so). Medians over rounds; min-max as the noise; ratios to smtpsink.
"""

import argparse
import csv
import statistics
import sys

GEN_ORDER = ["smtp-source", "smtpload"]
MIB = 1 << 20


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def mmm(values):
    """(median, min, max) of values, or None."""
    v = [x for x in values if x is not None]
    return (statistics.median(v), min(v), max(v)) if v else None


def cell(t, spec):
    if t is None:
        return "n/a"
    return f"{format(t[0], spec)} ({format(t[1], spec)}–{format(t[2], spec)})"


def ratio_cell(num, den):
    """Ratio of the medians of two {round: value} maps, with the range of the
    ratios of runs paired by round."""
    a, b = mmm(num.values()), mmm(den.values())
    if not a or not b or not b[0]:
        return "n/a"
    paired = [num[r] / den[r] for r in num if r in den and den[r]]
    rng = f" ({min(paired):.2f}–{max(paired):.2f})" if len(paired) > 1 else ""
    return f"{a[0] / b[0]:.2f}{rng}"


class Runs:
    """Per (workload, generator, server): {round: metrics} of the runs that succeeded."""

    def __init__(self, rows, clk):
        self.ok, self.tries, self.msgs = {}, {}, {}
        for r in rows:
            key = (r["workload"], r["generator"], r["server"])
            self.tries[key] = self.tries.get(key, 0) + 1
            self.ok.setdefault(key, {})
            self.msgs[key] = int(r["msgs"])
            if r["ok"] != "1":
                continue
            msgs, wall = int(r["msgs"]), float(r["wall_s"])
            self.ok[key][r["round"]] = {
                "rate": msgs / max(wall, 1e-9),
                "srv": int(r["server_ticks"]) / clk / msgs * 1e4,
                "gen": (float(r["gen_user_s"]) + float(r["gen_sys_s"])) / msgs * 1e4,
                "hwm": int(r["server_hwm_kib"]) / 1024,
                "wall": wall,
            }

    def series(self, key, metric):
        return {rnd: m[metric] for rnd, m in self.ok.get(key, {}).items()}

    def stat(self, key, metric):
        return mmm(self.series(key, metric).values())


def results_table(runs, workloads, servers):
    print("## Results (median over rounds, min–max in parentheses)\n")
    print("vs smtpsink: ratio of the medians to smtpsink's with the same generator and workload "
          "(per-round range in parentheses); msgs/s > 1: faster than smtpsink, CPU > 1: more CPU "
          "per message than smtpsink.\n")
    print("| Workload | Generator | Server | msgs/s | vs smtpsink | server CPU s/10k msgs | vs smtpsink "
          "| generator CPU s/10k msgs | server peak RSS MiB | runs ok |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for wl in workloads:
        for g in GEN_ORDER:
            for s in servers:
                k = (wl, g, s)
                if k not in runs.tries:
                    continue
                ref = (wl, g, "smtpsink")
                hwm = runs.stat(k, "hwm")
                print(f"| {wl} | {g} | {s} | {cell(runs.stat(k, 'rate'), '.0f')} "
                      f"| {ratio_cell(runs.series(k, 'rate'), runs.series(ref, 'rate'))} "
                      f"| {cell(runs.stat(k, 'srv'), '.3f')} "
                      f"| {ratio_cell(runs.series(k, 'srv'), runs.series(ref, 'srv'))} "
                      f"| {cell(runs.stat(k, 'gen'), '.3f')} "
                      f"| {'n/a' if hwm is None else format(hwm[2], '.1f')} "
                      f"| {len(runs.ok[k])}/{runs.tries[k]} |")
    print()


def pinning_table(runs, servers):
    variants = [("1conn-pinned", "server and generator on two CPUs"),
                ("1conn-samecore", "both on one CPU"), ("1conn", "not pinned")]
    variants = [v for v in variants if any(k[0] == v[0] for k in runs.tries)]
    if len(variants) < 2:
        return
    print("## One connection: where server and generator run\n")
    print("msgs/s (min–max); CPU: server CPU s/10k msgs. Lock-step round trips make this workload sensitive to "
          "cross-CPU wake-ups.\n")
    print("| Generator | Server | " + " | ".join(f"{w}: {d}" for w, d in variants) + " |")
    print("|---|---|" + "---:|" * len(variants))
    for g in GEN_ORDER:
        for s in servers:
            cells = []
            for w, _ in variants:
                k = (w, g, s)
                rate, srv = runs.stat(k, "rate"), runs.stat(k, "srv")
                cells.append("n/a" if rate is None else f"{cell(rate, '.0f')}; CPU {srv[0]:.3f}")
            print(f"| {g} | {s} | " + " | ".join(cells) + " |")
    print()


def idle_stats(rows, servers):
    """server -> {"per": {round: KiB/conn}, "before": [...], "with": [...], "greeted": [...], "conns": n}"""
    out = {}
    for r in rows:
        d = out.setdefault(r["server"], {"per": {}, "before": [], "with": [], "greeted": [], "conns": 0})
        n = int(r["conns"])
        d["conns"] = n
        d["per"][r["round"]] = (int(r["rss_idle_kib"]) - int(r["rss_before_kib"])) / n
        d["before"].append(int(r["rss_before_kib"]))
        d["with"].append(int(r["rss_idle_kib"]))
        d["greeted"].append(int(r["greeted"]))
    return {s: out[s] for s in servers if s in out}


def idle_table(idle):
    if not idle:
        return
    n = next(iter(idle.values()))["conns"]
    print(f"## Memory of {n} idle connections (fresh server each round)\n")
    print(f"KiB per connection = (VmRSS with {n} idle connections − VmRSS before) / {n}.\n")
    print(f"| Server | VmRSS before KiB | VmRSS with {n} idle KiB | KiB per connection | vs smtpsink | greeted |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = idle.get("smtpsink", {}).get("per", {})
    for s, d in idle.items():
        print(f"| {s} | {cell(mmm(d['before']), '.0f')} | {cell(mmm(d['with']), '.0f')} "
              f"| {cell(mmm(d['per'].values()), '.1f')} | {ratio_cell(d['per'], ref)} "
              f"| {min(d['greeted'])}/{n} |")
    print()


def copy_stats(rows):
    """{round: CPU s per MiB}, {round: MiB/s} of the plain TCP copy."""
    cpu, rate = {}, {}
    for r in rows:
        mib = int(r["bytes"]) / MIB
        cpu[r["round"]] = float(r["cpu_s"]) / mib
        rate[r["round"]] = mib / max(float(r["wall_s"]), 1e-9)
    return cpu, rate


def copy_table(runs, copy_cpu, copy_rate, servers):
    if not copy_cpu:
        return
    print("## 1 MiB messages vs a plain loopback TCP copy of the same bytes\n")
    print("Receiver CPU per MiB received: the server's CPU in the 1mib workload (one message = 1 MiB) "
          "against `tcp_copy.rs`'s (10 connections, a thread each, blocking 64 KiB reads, data discarded). "
          "Target for smtpsink: within 2× of the copy.\n")
    print("| Receiver | Sender | receiver CPU ms/MiB | × TCP copy | MiB/s |")
    print("|---|---|---:|---:|---:|")
    ms = lambda d: {r: v * 1e3 for r, v in d.items()}
    print(f"| plain TCP copy (`tcp_copy recv`) | `tcp_copy send` | {cell(mmm(ms(copy_cpu).values()), '.3f')} "
          f"| 1 | {cell(mmm(copy_rate.values()), '.0f')} |")
    verdicts = []
    for g in GEN_ORDER:
        for s in servers:
            k = ("1mib", g, s)
            if k not in runs.tries:
                continue
            per_mib = {r: v / 1e4 * 1e3 for r, v in runs.series(k, "srv").items()}  # s/10k msgs -> ms/MiB
            ratio = ratio_cell(per_mib, ms(copy_cpu))
            print(f"| {s} | {g} | {cell(mmm(per_mib.values()), '.3f')} | {ratio} "
                  f"| {cell(runs.stat(k, 'rate'), '.0f')} |")
            if s == "smtpsink" and ratio != "n/a":
                x = float(ratio.split()[0])
                verdicts.append(f"{x:.2f}× with {g} ({'met' if x <= 2 else '**not met**'})")
    print()
    if verdicts:
        print(f"smtpsink vs the TCP copy, target ≤ 2×: {'; '.join(verdicts)}.\n")


def plot(base, runs, workloads, servers, idle, copy_cpu):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("No plot: matplotlib is not installed.\n")
        return
    combos = [(g, s) for g in GEN_ORDER for s in servers]
    colors = {"smtpsink": "#1f77b4", "smtp-sink": "#ff7f0e", "aiosmtpd": "#2ca02c"}
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))

    def bars(ax, metric, title, ylabel):
        width = 0.8 / len(combos)
        for i, (g, s) in enumerate(combos):
            xs, ys, lo, hi = [], [], [], []
            for j, wl in enumerate(workloads):
                t = runs.stat((wl, g, s), metric)
                if t is None:
                    continue
                xs.append(j + (i - (len(combos) - 1) / 2) * width)
                ys.append(t[0])
                lo.append(t[0] - t[1])
                hi.append(t[2] - t[0])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=colors.get(s, "grey"),
                   hatch="" if g == "smtpload" else "//", edgecolor="black", linewidth=0.4,
                   label=f"{g} → {s}")
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(workloads, rotation=15)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)

    bars(axes[0][0], "rate", "Throughput (median, min–max)", "messages/s (log)")
    axes[0][0].legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    bars(axes[0][1], "srv", "Server CPU per message (median, min–max)", "server CPU s per 10k messages (log)")

    ax = axes[1][0]
    names = list(idle)
    if names:
        meds = [mmm(idle[s]["per"].values()) for s in names]
        ax.bar(names, [m[0] for m in meds], yerr=[[m[0] - m[1] for m in meds], [m[2] - m[0] for m in meds]],
               capsize=3, color=[colors.get(s, "grey") for s in names], edgecolor="black", linewidth=0.4)
        for i, m in enumerate(meds):
            ax.annotate(f"{m[0]:.1f}", (i, m[0]), ha="center", va="bottom")
        ax.set_title(f"Memory per idle connection ({idle[names[0]]['conns']} connections)")
        ax.set_ylabel("KiB per connection (RSS delta)")

    ax = axes[1][1]
    if copy_cpu:
        labels, vals = ["TCP copy"], [mmm(copy_cpu.values())[0] * 1e3]
        cols = ["grey"]
        for g in GEN_ORDER:
            for s in servers:
                t = runs.stat(("1mib", g, s), "srv")
                if t is not None:
                    labels.append(f"{s}\n← {g}")
                    vals.append(t[0] / 10)
                    cols.append(colors.get(s, "grey"))
        ax.bar(range(len(vals)), vals, color=cols, edgecolor="black", linewidth=0.4)
        ax.axhline(2 * vals[0], color="red", linestyle="--", linewidth=1, label="2 × TCP copy (target)")
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("receiver CPU ms per MiB (log)")
        ax.set_title("1 MiB messages: receiver CPU vs plain TCP copy")
        ax.legend(fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=100)
    fig.savefig(base + ".svg")
    print(f"Plot: `{base}.png` and `{base}.svg`.\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clk-tck", type=int, required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--idle", required=True)
    ap.add_argument("--copy", required=True)
    ap.add_argument("--plot", default="")
    ap.add_argument("--workloads", required=True)
    ap.add_argument("--servers", required=True)
    a = ap.parse_args()
    workloads, servers = a.workloads.split(), a.servers.split()
    runs = Runs(read_tsv(a.runs), a.clk_tck)
    idle = idle_stats(read_tsv(a.idle), servers)
    copy_cpu, copy_rate = copy_stats(read_tsv(a.copy))
    results_table(runs, workloads, servers)
    pinning_table(runs, servers)
    idle_table(idle)
    copy_table(runs, copy_cpu, copy_rate, servers)
    if a.plot:
        plot(a.plot, runs, workloads, servers, idle, copy_cpu)
    else:
        print("No plot: matplotlib is not available.\n")


if __name__ == "__main__":
    sys.exit(main())
