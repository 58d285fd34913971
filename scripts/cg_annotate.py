#!/usr/bin/env python3
"""Self Ir per function from a `callgrind_annotate --auto=no` listing,
summed over the file:function lines that inlining splits one function into.
Shared by scripts/profile.sh (hot-spot tables) and
scripts/rules_bench_report.py (where instructions moved between builds).

    callgrind_annotate --auto=no --threshold=100 FILE | cg_annotate.py hotspots TOP
prints Markdown table rows of the TOP functions by self Ir."""

import collections
import os
import re
import sys

LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*\S)\s*$")


def aggregate(lines):
    """(self Ir by function, PROGRAM TOTALS or None, object file by function)."""
    total, agg, objs = None, collections.Counter(), {}
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        ir, rest = int(m.group(1).replace(",", "")), m.group(2)
        if rest == "PROGRAM TOTALS":
            total = ir
            continue
        obj = re.search(r" \[([^\]]*)\]$", rest)
        if obj:
            rest = rest[: obj.start()]
        _, _, fn = rest.partition(":")
        fn = fn or rest
        agg[fn] += ir
        if obj:
            objs.setdefault(fn, os.path.basename(obj.group(1)))
    return agg, total, objs


def hotspots(top):
    agg, total, objs = aggregate(sys.stdin)
    if not total:
        sys.exit("no PROGRAM TOTALS in callgrind_annotate output")
    print("| # | self Ir | share | cumulative | function | object |")
    print("|---:|---:|---:|---:|---|---|")
    cum = 0
    for i, (fn, ir) in enumerate(agg.most_common(top), 1):
        cum += ir
        name = fn if len(fn) <= 110 else fn[:107] + "..."
        name = name.replace("|", "\\|")
        obj = objs.get(fn, "?")
        print(f"| {i} | {ir:,} | {100 * ir / total:.1f}% | {100 * cum / total:.1f}% | `{name}` | {obj} |")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "hotspots":
        sys.exit(__doc__)
    hotspots(int(sys.argv[2]))
