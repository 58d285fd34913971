#!/usr/bin/env python3
"""mta_forward_check.py: the checks of scripts/mta-forward-check.sh (a
private Postfix delivering into smtpsink over LMTP, and over SMTP with
XFORWARD), exact counts from the two smtpload runs:

  LMTP path   N messages, seq 0..N-1, sender sender-SEQ@lmtp.test,
              recipients rcpt0-SEQ, rcpt1-SEQ, rcpt2-SEQ @lmtp.test; the
              sink's end-of-data rules answer them 250, 452 and 550
  XFORWARD    M messages, seq 0..M-1, to xf-SEQ@smtp.test, from the
              client addresses of --clients (ADDR=NAME,...; Postfix finds
              NAME in its private /etc/hosts) with HELO --client-helo

CHECKS:
  maildir     new/ holds exactly N LMTP originals (one per seq), N DSNs and
              M XFORWARD originals, nothing else; tmp/ is empty; each
              original's body CRC equals its X-Smtpload-Hash, its
              X-Smtpload-Seq matches its recipients
  lmtp-rcpts  each LMTP original lists exactly the recipient that got 250
              (X-Original-To: rcpt0-SEQ), not the ones refused at the end
  lmtp-trace  each LMTP original and DSN: smtpsink's Received names
              Postfix's own client (LHLO --lmtp-helo, [127.0.0.1]) with
              LMTP: no XFORWARD on this path
  xforward    each XFORWARD original: smtpsink's Received is
              "from CLIENT_HELO (NAME [ADDR])" with ADDR one of --clients
              and NAME its name, the very client Postfix's own Received
              field in that message names, "with ESMTP"; every client
              address is seen
  dsn         exactly one DSN (Return-Path <>) per LMTP message, to its
              sender, naming rcpt2-SEQ alone as failed with the sink's 550
  maillog     per recipient, one status line: rcpt0 and xf sent (relay the
              LMTP / SMTP port), rcpt1 deferred with the sink's 452 (in reply
              to end of DATA), rcpt2 bounced with its 550, each DSN sent;
              nothing else
  queue       postqueue -j: exactly N messages, all deferred, each holding
              rcpt1-SEQ alone with the sink's 452 as delay_reason
  sink        the sink's --json: messages accepted = files stored

--known NAME,... names checks that fail today for a reported smtpsink bug:
their failure prints KNOWN (with what was found) and does not fail the run;
their passing says the bug is gone. Prints one line per check and a
summary; exit 0 when all pass. Standard library only.
"""

import argparse
import email
import email.policy
import json
import os
import re
import sys
import zlib

LMTP_RCPT = re.compile(r"^rcpt([0-2])-(\d+)@lmtp\.test$")
XF_RCPT = re.compile(r"^xf-(\d+)@smtp\.test$")
SENDER = re.compile(r"^sender-(\d+)@lmtp\.test$")
FULL = "452 4.2.2 Mailbox full"
GONE = "550 5.1.1 No such user"
# smtpsink's trace field: from HELO [(NAME [ADDR])] by HOST (smtpsink) with PROTO id ...
SINK_RCV = re.compile(
    r"^from (?P<helo>\S+)(?: \((?:(?P<name>\S+) )?\[(?P<addr>[^\]]+)\]\))?\s+"
    r"by (?P<by>\S+) \(smtpsink\) with (?P<with>\S+) id ")
# Postfix's own: from HELO (NAME [ADDR]) by HOST (Postfix) with ...
POSTFIX_RCV = re.compile(r"^from \S+ \((?P<name>\S+) \[(?P<addr>[^\]]+)\]\)\s+by \S+ \(Postfix\)")
LOG_RE = re.compile(
    r"postfix/(?P<svc>[\w/-]+)\[\d+\]: (?P<qid>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>,"
    r"(?: orig_to=<[^>]*>,)? relay=(?P<relay>\S+), .*? status=(?P<status>\w+) \((?P<why>.*)\)\s*$")


class Checks:
    def __init__(self, limit, known):
        self.results = []   # (name, "ok" | "FAIL" | "KNOWN", detail)
        self.limit = limit
        self.known = known

    def add(self, name, problems, ok_detail):
        if problems:
            more = f" (+{len(problems) - self.limit} more)" if len(problems) > self.limit else ""
            verdict = "KNOWN" if name in self.known else "FAIL"
            self.results.append((name, verdict, f"{len(problems)} problems: "
                                 + "; ".join(problems[:self.limit]) + more))
        elif name in self.known:
            self.results.append((name, "ok", ok_detail + " (listed in --known: the bug is gone)"))
        else:
            self.results.append((name, "ok", ok_detail))


def unfold(v):
    return " ".join(str(v).split())


def angle(v):
    v = str(v).strip()
    return v[1:-1] if v.startswith("<") and v.endswith(">") else v


def body_crc_ok(data, msg):
    h = msg.get("X-Smtpload-Hash")
    sep = data.find(b"\r\n\r\n")
    if h is None or sep < 0 or not str(h).strip().lower().startswith("crc32:"):
        return False
    return f"{zlib.crc32(data[sep + 4:]) & 0xFFFFFFFF:08x}" == str(h).strip()[6:].lower()


def dsn_failed(msg):
    """[(final recipient, action, diagnostic)] of a DSN."""
    out = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        for g in (payload[1:] if isinstance(payload, list) else []):
            fr = unfold(g.get("Final-Recipient", ""))
            out.append((fr.split(";", 1)[-1].strip(), unfold(g.get("Action", "")),
                        unfold(g.get("Diagnostic-Code", ""))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--maillog", required=True)
    ap.add_argument("--queue-json", required=True)
    ap.add_argument("--sink-json")
    ap.add_argument("--lmtp-msgs", type=int, required=True)
    ap.add_argument("--smtp-msgs", type=int, required=True)
    ap.add_argument("--sink-host", required=True)
    ap.add_argument("--clients", required=True, help="ADDR=NAME,... of the XFORWARD clients")
    ap.add_argument("--client-helo", required=True)
    ap.add_argument("--lmtp-helo", required=True)
    ap.add_argument("--lmtp-port", required=True)
    ap.add_argument("--smtp-port", required=True)
    ap.add_argument("--list", type=int, default=3, help="problems named per check")
    ap.add_argument("--known", default="", help="checks that fail for a reported bug (NAME,...)")
    a = ap.parse_args()
    n, m = a.lmtp_msgs, a.smtp_msgs
    clients = dict(c.split("=", 1) for c in a.clients.split(","))
    C = Checks(a.list, set(filter(None, a.known.split(","))))

    # ---- the Maildir
    new, tmp = os.path.join(a.maildir, "new"), os.path.join(a.maildir, "tmp")
    files = sorted(os.listdir(new)) if os.path.isdir(new) else []
    lmtp_seen, xf_seen, dsn_seen = {}, {}, {}
    clients_seen = {}
    md_p, rc_p, lt_p, xf_p, dsn_p = [], [], [], [], []
    for f in files:
        with open(os.path.join(new, f), "rb") as fh:
            data = fh.read()
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        rp = angle(msg.get("Return-Path", "?"))
        to = [angle(v) for v in msg.get_all("X-Original-To") or []]
        rcv = [unfold(v) for v in msg.get_all("Received") or []]
        sink = SINK_RCV.match(rcv[0]) if rcv else None
        if not sink or sink["by"] != a.sink_host:
            md_p.append(f"{f}: no smtpsink Received field first ({rcv[:1]})")
            continue
        if rp == "":
            # A DSN: to the sender of one LMTP message, over LMTP.
            s = SENDER.match(to[0]) if len(to) == 1 else None
            if not s:
                dsn_p.append(f"{f}: DSN to {to}, expected one sender-SEQ@lmtp.test")
                continue
            seq = int(s[1])
            dsn_seen[seq] = dsn_seen.get(seq, 0) + 1
            failed = dsn_failed(msg)
            want = [(f"rcpt2-{seq}@lmtp.test", "failed")]
            if [(r, act) for r, act, _ in failed] != want or GONE not in failed[0][2]:
                dsn_p.append(f"{f}: DSN for seq {seq} names {failed}, expected rcpt2-{seq} failed with {GONE!r}")
            if (sink["helo"], sink["addr"], sink["with"]) != (a.lmtp_helo, "127.0.0.1", "LMTP"):
                lt_p.append(f"{f} (DSN {seq}): Received {rcv[0]!r}")
            continue
        seq_h = msg.get("X-Smtpload-Seq")
        seq = int(str(seq_h).strip()) if seq_h is not None and str(seq_h).strip().isdigit() else None
        if not body_crc_ok(data, msg):
            md_p.append(f"{f}: body CRC differs from X-Smtpload-Hash (or no hash)")
        kinds = [LMTP_RCPT.match(t) for t in to]
        if to and all(kinds):
            # An LMTP original.
            seqs = {int(k[2]) for k in kinds}
            if seqs != {seq} or rp != f"sender-{seq}@lmtp.test":
                md_p.append(f"{f}: X-Smtpload-Seq {seq}, Return-Path {rp}, recipients {to}: do not agree")
                continue
            lmtp_seen[seq] = lmtp_seen.get(seq, 0) + 1
            if to != [f"rcpt0-{seq}@lmtp.test"]:
                rc_p.append(f"seq {seq}: X-Original-To {', '.join(to)}; only rcpt0-{seq} got 250")
            if (sink["helo"], sink["addr"], sink["with"]) != (a.lmtp_helo, "127.0.0.1", "LMTP"):
                lt_p.append(f"{f} (LMTP {seq}): Received {rcv[0]!r}")
            continue
        x = XF_RCPT.match(to[0]) if len(to) == 1 else None
        if not x or int(x[1]) != seq:
            md_p.append(f"{f}: unexpected file: Return-Path <{rp}>, X-Original-To {to}, seq {seq}")
            continue
        xf_seen[seq] = xf_seen.get(seq, 0) + 1
        pf = POSTFIX_RCV.match(rcv[1]) if len(rcv) > 1 else None
        orig = (pf["name"], pf["addr"]) if pf else None
        clients_seen[sink["addr"]] = clients_seen.get(sink["addr"], 0) + 1
        if (sink["helo"] != a.client_helo or sink["addr"] not in clients or sink["with"] != "ESMTP"
                or (sink["name"], sink["addr"]) != orig or sink["name"] != clients[sink["addr"]]):
            xf_p.append(f"{f} (seq {seq}): smtpsink's Received {rcv[0]!r}; Postfix's names {orig}; "
                        f"expected from {a.client_helo} (NAME [ADDR]) with ESMTP, one of {a.clients}")
    for name, seen, want in (("LMTP original", lmtp_seen, n), ("XFORWARD original", xf_seen, m),
                             ("DSN", dsn_seen, n)):
        missing = [s for s in range(want) if s not in seen]
        if missing:
            md_p.append(f"{name}s missing for seq {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        dups = sorted(s for s, c in seen.items() if c > 1)
        if dups:
            md_p.append(f"{name}s stored more than once: seq {dups[:10]}")
        extra = sorted(s for s in seen if s >= want)
        if extra:
            md_p.append(f"{name}s with unexpected seq {extra[:10]}")
    left = os.listdir(tmp) if os.path.isdir(tmp) else []
    if left:
        md_p.append(f"{len(left)} files left in tmp/")
    if len(files) != 2 * n + m:
        md_p.append(f"{len(files)} files in new/, expected {2 * n + m}")
    missing_clients = sorted(set(clients) - set(clients_seen))
    if missing_clients:
        xf_p.append(f"no message from {', '.join(missing_clients)} (XFORWARD per transaction untested)")
    C.add("maildir", md_p + dsn_p,
          f"{len(files)} files = {len(lmtp_seen)} LMTP originals + {len(dsn_seen)} DSNs + "
          f"{len(xf_seen)} XFORWARD originals, each once, bodies intact; tmp/ empty")
    C.add("lmtp-rcpts", rc_p, f"{len(lmtp_seen)} LMTP originals list only their delivered recipient")
    C.add("lmtp-trace", lt_p,
          f"{len(lmtp_seen) + len(dsn_seen)} LMTP files: Received from {a.lmtp_helo} ([127.0.0.1]) with LMTP")
    C.add("xforward", xf_p,
          f"{len(xf_seen)} files: Received from {a.client_helo} (NAME [ADDR]) with ESMTP = Postfix's client: "
          + ", ".join(f"{clients.get(k, '?')} [{k}] x{v}" for k, v in sorted(clients_seen.items())))
    C.add("dsn", dsn_p, f"{len(dsn_seen)} DSNs, each naming rcpt2-SEQ alone as failed with {GONE!r}")

    # ---- Postfix's log
    lines = {}
    with open(a.maillog, errors="replace") as fh:
        for line in fh:
            mm = LOG_RE.search(line)
            if mm:
                lines.setdefault(mm["to"], []).append((mm["status"], mm["relay"], mm["why"]))
    lmtp_relay = f"127.0.0.1[127.0.0.1]:{a.lmtp_port}"
    smtp_relay = f"127.0.0.1[127.0.0.1]:{a.smtp_port}"
    want = {}
    for s in range(n):
        want[f"rcpt0-{s}@lmtp.test"] = ("sent", lmtp_relay, "250")
        want[f"rcpt1-{s}@lmtp.test"] = ("deferred", lmtp_relay, FULL)
        want[f"rcpt2-{s}@lmtp.test"] = ("bounced", lmtp_relay, GONE)
        want[f"sender-{s}@lmtp.test"] = ("sent", lmtp_relay, "250")
    for s in range(m):
        want[f"xf-{s}@smtp.test"] = ("sent", smtp_relay, "250")
    log_p = []
    count = {}
    for to, (status, relay, text) in sorted(want.items()):
        got = lines.get(to, [])
        ok = (len(got) == 1 and got[0][0] == status and got[0][1] == relay and text in got[0][2]
              and (status == "sent" or "in reply to end of DATA command" in got[0][2]))
        if not ok:
            log_p.append(f"{to}: logged {got}, expected one status={status} via {relay} with {text!r}")
        count[status] = count.get(status, 0) + 1
    extra = sorted(set(lines) - set(want))
    if extra:
        log_p.append(f"status lines for unexpected recipients: {extra[:10]}")
    C.add("maillog", log_p, ", ".join(f"status={k} {v}" for k, v in sorted(count.items()))
          + f" (LMTP relay :{a.lmtp_port}, SMTP relay :{a.smtp_port}), one line per recipient")

    # ---- postqueue -j
    q_p = []
    entries = []
    try:
        with open(a.queue_json) as fh:
            entries = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as e:
        q_p.append(f"cannot read {a.queue_json}: {e}")
    held = {}
    for e in entries:
        rc = e.get("recipients", [])
        addrs = [r.get("address") for r in rc]
        mm = LMTP_RCPT.match(addrs[0]) if len(addrs) == 1 else None
        if e.get("queue_name") != "deferred" or not mm or mm[1] != "1":
            q_p.append(f"{e.get('queue_id')}: {e.get('queue_name')} queue, recipients {addrs}")
            continue
        held[int(mm[2])] = held.get(int(mm[2]), 0) + 1
        if FULL not in rc[0].get("delay_reason", ""):
            q_p.append(f"{addrs[0]}: delay_reason {rc[0].get('delay_reason')!r} lacks {FULL!r}")
    if sorted(held) != list(range(n)) or any(c != 1 for c in held.values()):
        q_p.append(f"deferred rcpt1 seqs {sorted(held)[:10]}..., expected each of 0..{n - 1} once")
    C.add("queue", q_p, f"{len(entries)} messages, all deferred, each holding rcpt1-SEQ alone with {FULL!r}")

    # ---- the sink's own count
    s_p = []
    if a.sink_json:
        try:
            with open(a.sink_json) as fh:
                sj = json.load(fh)
            stored = sj.get("maildir", {}).get("stored")
            if stored != len(files):
                s_p.append(f"the sink's maildir.stored is {stored}, {len(files)} files in new/")
        except (OSError, ValueError) as e:
            s_p.append(f"cannot read {a.sink_json}: {e}")
        C.add("sink", s_p, f"the sink's --json: maildir.stored = {len(files)}")

    print(f"LMTP path: {n} messages x 3 recipients (250 / 452 / 550 at the sink's end of data); "
          f"XFORWARD path: {m} messages from {', '.join(sorted(clients))}")
    for name, verdict, detail in C.results:
        print(f"  {verdict:<5} {name:<11} {detail}")
    return 1 if any(r[1] == "FAIL" for r in C.results) else 0


if __name__ == "__main__":
    sys.exit(main())
