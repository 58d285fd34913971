#!/usr/bin/env python3
"""maildir_check.py: verify a Maildir of smtpload messages, file by file.

smtpload puts X-Smtpload-Run (16 hex digits), X-Smtpload-Seq (decimal) and
X-Smtpload-Hash (crc32:<8 hex>, the CRC-32 of the body: everything after
the first empty line, CRLF CRLF) in every message it sends. For every file in
DIR/new this script finds those fields anywhere in the header block (trace
fields such as Return-Path and Received, which a delivery agent prepends,
come first), computes zlib.crc32 of the body and reports, per run:

  files         files of that run in new/
  intact        body CRC matches X-Smtpload-Hash
  corrupted     body CRC differs
  duplicates    extra copies of a sequence number (2 files of seq 7: 1)
  missing       sequence numbers absent below the highest one seen; with
                --expect or --summary: acknowledged messages that never
                arrived, listed exactly (as ranges)
  unverifiable  the run is known but the Seq or Hash field is missing or
                malformed (files with no X-Smtpload-Run at all are counted
                apart, as "no smtpload fields")

It also checks the Maildir itself: every file in new/ must begin with
"Return-Path: " (the trace fields are prepended), and tmp/ must be empty
(a file left there is a message whose storing never finished).

Usage:
  maildir_check.py DIR [--expect N] [--summary FILE] [--run ID]
                       [--json FILE] [--list N]
Options:
  --expect N      N messages were acknowledged (smtpload's "accepted"):
                  sequence numbers 0..N-1 of the run must each be there once
  --summary FILE  smtpload's run summary (--summary FILE): its run and its
                  acknowledged sequence numbers are the ones expected (with
                  --expect too, both must agree on the count)
  --run ID        the run --expect applies to (16 hex digits); needed only
                  when DIR holds several runs and no --summary names one
  --json FILE     also write the figures as JSON
  --list N        name at most N files of each kind of problem (default 5)

Exit status: 0 when all is well; 1 when any file is corrupted or duplicated,
a file lacks the Return-Path trace, tmp/ is not empty, or (with --expect or
--summary) an acknowledged message is missing; 2 for a usage error or a
DIR that is not a Maildir. Unverifiable files and files without smtpload
fields (say an MTA's bounce) are reported but do not fail the check.

Standard library only.
"""

import argparse
import json
import os
import sys
import zlib

FIELDS = {b"x-smtpload-run": "run", b"x-smtpload-seq": "seq", b"x-smtpload-hash": "hash"}


def header_fields(head):
    """The smtpload fields of a header block (bytes, without the empty line),
    unfolded; the first occurrence of each wins."""
    found = {}
    name, value = None, None

    def flush():
        if name is not None:
            key = FIELDS.get(name.strip().lower())
            if key and key not in found:
                found[key] = value.strip()

    for line in head.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line[:1] in (b" ", b"\t") and name is not None:
            value += b" " + line.strip()
            continue
        flush()
        colon = line.find(b":")
        if colon <= 0:
            name, value = None, None
            continue
        name, value = line[:colon], line[colon + 1:]
    flush()
    return found


def parse_file(data):
    """(run, seq, verdict) of one stored message; verdict is intact,
    corrupted, unverifiable or nofields; run/seq may be None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        head, body = data, b""
    else:
        head, body = data[:end], data[end + 4:]
    f = header_fields(head)
    run = seq = None
    try:
        if "run" in f:
            run = int(f["run"], 16)
    except ValueError:
        run = None
    if run is None:
        return None, None, "nofields"
    try:
        seq = int(f["seq"]) if "seq" in f else None
    except ValueError:
        seq = None
    h = f.get("hash", b"")
    if seq is None or not h.lower().startswith(b"crc32:"):
        return run, seq, "unverifiable"
    try:
        want = int(h[6:], 16)
    except ValueError:
        return run, seq, "unverifiable"
    got = zlib.crc32(body) & 0xFFFFFFFF
    return run, seq, ("intact" if got == want else "corrupted")


def ranges(nums):
    """Sorted ints as [[first, last], ...]."""
    out = []
    for n in nums:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def ranges_text(rs, limit=20):
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in rs[:limit]]
    if len(rs) > limit:
        parts.append(f"... ({len(rs) - limit} more ranges)")
    return ", ".join(parts)


def load_summary(path):
    with open(path, "rb") as f:
        j = json.load(f)
    if j.get("format") != "smtpload-run-summary":
        raise ValueError(f"{path}: not an smtpload run summary")
    run = int(j["run"], 16)
    acked = [(int(a), int(b)) for a, b in j["acked"]]
    return run, acked, int(j.get("acknowledged", sum(b - a + 1 for a, b in acked)))


def in_ranges(seq, acked):
    # acked is short (one range when nothing was refused): a linear scan.
    return any(a <= seq <= b for a, b in acked)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--expect", type=int)
    ap.add_argument("--summary")
    ap.add_argument("--run")
    ap.add_argument("--json")
    ap.add_argument("--list", type=int, default=5)
    a = ap.parse_args()
    if a.expect is not None and a.expect < 0:
        ap.error("--expect must be >= 0")

    new, tmp = os.path.join(a.dir, "new"), os.path.join(a.dir, "tmp")
    if not os.path.isdir(new):
        print(f"maildir_check: {a.dir} is not a Maildir (no new/)", file=sys.stderr)
        return 2

    want_run, acked = None, None
    if a.run is not None:
        try:
            want_run = int(a.run, 16)
        except ValueError:
            ap.error("--run must be hex")
    if a.summary:
        try:
            srun, acked, sack = load_summary(a.summary)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"maildir_check: cannot read the run summary: {e}", file=sys.stderr)
            return 2
        if want_run is not None and want_run != srun:
            ap.error("--run differs from the summary's run")
        want_run = srun
        if a.expect is not None and a.expect != sack:
            print(f"maildir_check: --expect {a.expect} but the summary acknowledged {sack}", file=sys.stderr)
            return 2
    elif a.expect is not None:
        acked = [(0, a.expect - 1)] if a.expect > 0 else []

    runs = {}          # run -> {"seqs": {seq: [verdicts]}, counts...}
    nofields, notrace, unreadable = [], [], []
    total = 0
    names = sorted(os.listdir(new))
    for name in names:
        path = os.path.join(new, name)
        if not os.path.isfile(path):
            continue
        total += 1
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            unreadable.append(f"{name} ({e.strerror})")
            continue
        if not data.startswith(b"Return-Path: "):
            notrace.append(name)
        run, seq, verdict = parse_file(data)
        if verdict == "nofields":
            nofields.append(name)
            continue
        r = runs.setdefault(run, {"files": 0, "intact": 0, "corrupted": 0, "unverifiable": 0,
                                  "seqs": {}, "bad": []})
        r["files"] += 1
        r[verdict] += 1
        if verdict == "corrupted":
            r["bad"].append(name)
        if seq is not None:
            r["seqs"].setdefault(seq, []).append(name)

    tmp_files = []
    if os.path.isdir(tmp):
        tmp_files = sorted(n for n in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, n)))
    cur = os.path.join(a.dir, "cur")
    cur_files = len(os.listdir(cur)) if os.path.isdir(cur) else 0

    if acked is not None and want_run is None:
        if len(runs) == 1:
            want_run = next(iter(runs))
        elif not runs:
            want_run = -1   # nothing arrived: every expected message is missing
        else:
            print("maildir_check: DIR holds several runs "
                  f"({', '.join(f'{r:016x}' for r in runs)}); say which with --run or --summary",
                  file=sys.stderr)
            return 2

    report = {"dir": a.dir, "files": total, "tmp_files": len(tmp_files), "cur_files": cur_files,
              "no_return_path": len(notrace), "no_smtpload_fields": len(nofields),
              "unreadable": len(unreadable), "runs": []}
    failed = bool(tmp_files or notrace or unreadable)
    run_ids = sorted(runs)
    if want_run is not None and want_run not in runs and want_run != -1:
        run_ids.append(want_run)
    for run in run_ids:
        r = runs.get(run, {"files": 0, "intact": 0, "corrupted": 0, "unverifiable": 0, "seqs": {}, "bad": []})
        seqs = r["seqs"]
        dups = sum(len(v) - 1 for v in seqs.values())
        dup_seqs = sorted(s for s, v in seqs.items() if len(v) > 1)
        top = max(seqs) if seqs else None
        gaps = (top + 1 - len(seqs)) if top is not None else 0
        entry = {"run": f"{run:016x}", "files": r["files"], "intact": r["intact"],
                 "corrupted": r["corrupted"], "duplicates": dups, "unverifiable": r["unverifiable"],
                 "distinct_seqs": len(seqs), "max_seq": top, "missing_below_max": gaps,
                 "corrupted_files": r["bad"][:a.list], "duplicate_seqs": dup_seqs[:a.list]}
        if run == want_run and acked is not None:
            expected = sum(b - x + 1 for x, b in acked)
            missing = []
            for x, b in acked:
                missing.extend(s for s in range(x, b + 1) if s not in seqs)
            beyond = sorted(s for s in seqs if not in_ranges(s, acked))
            entry.update({"expected": expected, "missing": len(missing),
                          "missing_ranges": ranges(missing),
                          "not_acknowledged_but_stored": len(beyond)})
            failed |= bool(missing)
        failed |= bool(r["corrupted"] or dups)
        report["runs"].append(entry)
    if acked is not None and want_run == -1:
        expected = sum(b - x + 1 for x, b in acked)
        report["runs"].append({"run": "?", "files": 0, "intact": 0, "corrupted": 0, "duplicates": 0,
                               "unverifiable": 0, "distinct_seqs": 0, "max_seq": None,
                               "missing_below_max": 0, "expected": expected, "missing": expected,
                               "missing_ranges": [[x, b] for x, b in acked]})
        failed |= expected > 0
    report["ok"] = not failed

    # ---- human-readable
    print(f"maildir {a.dir}: {total} files in new/, {len(tmp_files)} in tmp/, {cur_files} in cur/")
    for e in report["runs"]:
        line = (f"  run {e['run']}: files {e['files']}, intact {e['intact']}, corrupted {e['corrupted']}, "
                f"duplicates {e['duplicates']}, missing below max {e['missing_below_max']}, "
                f"unverifiable {e['unverifiable']}")
        if "expected" in e:
            line += f"; expected {e['expected']}: missing {e['missing']}"
            if e.get("not_acknowledged_but_stored"):
                line += f", stored but not acknowledged {e['not_acknowledged_but_stored']}"
        print(line)
        if e.get("missing"):
            print(f"    missing seqs: {ranges_text(e['missing_ranges'])}")
        if e["corrupted"]:
            print(f"    corrupted files: {', '.join(e['corrupted_files'])}")
        if e["duplicates"]:
            print(f"    duplicated seqs: {', '.join(map(str, e['duplicate_seqs']))}")
    if nofields:
        print(f"  no smtpload fields (not counted in any run): {len(nofields)}: {', '.join(nofields[:a.list])}")
    if notrace:
        print(f"  PROBLEM: {len(notrace)} files do not begin with 'Return-Path: ': {', '.join(notrace[:a.list])}")
    if tmp_files:
        print(f"  PROBLEM: {len(tmp_files)} files left in tmp/: {', '.join(tmp_files[:a.list])}")
    if unreadable:
        print(f"  PROBLEM: {len(unreadable)} unreadable files: {', '.join(unreadable[:a.list])}")
    print("  result: " + ("OK" if not failed else "FAILED"))

    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
