#!/usr/bin/env python3
"""mta_rules_check.py: the plan, the injection and the checks of
scripts/mta-rules.sh (a private Postfix relaying to an smtpsink whose rules
refuse or defer some recipients).

Subcommands:
  plan   --messages N --magic 0|1 --out PLAN
         Writes the mix: message i has sender sender-i@origin.mta-rules.test
         and the recipients of shape i % len(SHAPES), each address
         KIND-i-j@rcpt.mta-rules.test (unique). Prints the numbers the
         script waits for: "FILES DEFERRED_MESSAGES" (Maildir files expected
         at the sink: originals with at least one ok recipient plus one
         bounce DSN per message with a refused recipient; messages expected
         to stay in Postfix's deferred queue).
  inject --plan PLAN --port P
         Sends every message of the plan to 127.0.0.1:P over one SMTP
         session (all recipients must get 250 from Postfix) and records
         Postfix's queue id of each in PLAN.
  fetch  URL OUT
         GET URL (the sink's /stats) into OUT.
  check  --plan PLAN --maildir DIR --maillog FILE --queue-json FILE
         --queue-text FILE --stats FILE [--sink-json FILE] [--json OUT]
         The checks, exact counts from the plan (see CHECKS below); prints
         a summary table and one line per check. Exit 0 when all pass.

Kinds of recipients (the sink's rules file and --magic-addresses decide):
  ok         accepted (250): stored exactly once
  bounce     rule "bounce": 550 5.1.1 at RCPT: Postfix bounces it
  defer      rule "defer": 451 4.3.0 at RCPT: stays in Postfix's deferred queue
  reject553  magic address (reject553-...): 553 at RCPT: bounced
  tempfail   magic address (tempfail-...): 451 at RCPT: deferred

CHECKS:
  maildir    each ok recipient in exactly one stored original (X-Original-To),
             with the original's Return-Path and X-Mta-Rules-Seq; no refused
             or deferred recipient stored; nothing else stored; tmp/ empty
  dsn        exactly one bounce DSN (Return-Path <>) per message with refused
             recipients, to its sender, naming exactly those recipients
             (Final-Recipient, Action failed) with the sink's reply as
             Diagnostic-Code
  maillog    per recipient: ok -> one status=sent; refused -> one
             status=bounced with the sink's text (in reply to RCPT TO);
             deferred -> status=deferred with the sink's text, no other
             status; each DSN -> one status=sent to the sender; nothing else
  queue      postqueue -j: exactly the messages with deferred recipients,
             in the deferred queue, listing exactly those recipients, each
             with the sink's reply (in reply to RCPT TO) as delay_reason;
             postqueue -p names each of them too
  hits       the sink's /stats: rule hits bounce and defer, and magic
             decisions, equal the RCPT attempts Postfix logged for them
             (deferred recipients: every logged attempt, retries included);
             replies by code agree; the sink's message count = files stored

Standard library only.
"""

import argparse
import email
import email.policy
import email.utils
import json
import os
import re
import smtplib
import sys
import time
import urllib.request
import uuid

RCPT_DOMAIN = "rcpt.mta-rules.test"
SENDER_DOMAIN = "origin.mta-rules.test"
REASON_TAIL = "(in reply to RCPT TO command)"

# kind -> (fate, reply text the sink gives at RCPT or None, what counts it in /stats)
KINDS = {
    "ok": ("sent", None, None),
    "bounce": ("bounced", "550 5.1.1 No such user (smtpsink rule)", "rule:bounce"),
    "defer": ("deferred", "451 4.3.0 Try again later (smtpsink rule)", "rule:defer"),
    "reject553": ("bounced", "553 5.0.0 Refused by magic address reject553", "magic"),
    "tempfail": ("deferred", "451 4.0.0 Refused by magic address tempfail", "magic"),
}
MAGIC_KINDS = {"reject553", "tempfail"}
SHAPES = [
    ("ok",),
    ("bounce",),
    ("defer",),
    ("ok", "bounce"),
    ("ok", "defer"),
    ("bounce", "defer"),
    ("ok", "bounce", "defer"),
    ("ok", "ok", "bounce", "bounce"),
    ("reject553",),
    ("ok", "tempfail"),
    ("defer", "defer", "ok"),
    ("ok", "reject553", "tempfail", "bounce", "defer"),
]


def shapes(magic):
    if magic:
        return SHAPES
    return [s for s in SHAPES if not MAGIC_KINDS.intersection(s)]


def kind_of(addr):
    local = addr.split("@", 1)[0]
    return local.split("-", 1)[0]


# ------------------------------------------------------------------ plan ----

def make_plan(n, magic):
    run = uuid.uuid4().hex[:16]
    sh = shapes(magic)
    msgs = []
    for i in range(n):
        kinds = sh[i % len(sh)]
        rcpts = [f"{k}-{i}-{j}@{RCPT_DOMAIN}" for j, k in enumerate(kinds)]
        msgs.append({"seq": i, "sender": f"sender-{i}@{SENDER_DOMAIN}", "rcpts": rcpts, "qid": None})
    return {"format": "mta-rules-plan", "run": run, "magic": bool(magic), "messages": msgs}


def expectations(plan):
    """What the plan leads to: per message, the recipients by fate."""
    exp = {"originals": [], "dsn": [], "deferred_msgs": [], "by_kind": {k: [] for k in KINDS}}
    for m in plan["messages"]:
        fates = {"sent": [], "bounced": [], "deferred": []}
        for r in m["rcpts"]:
            k = kind_of(r)
            fates[KINDS[k][0]].append(r)
            exp["by_kind"][k].append(r)
        m["fates"] = fates
        if fates["sent"]:
            exp["originals"].append(m)
        if fates["bounced"]:
            exp["dsn"].append(m)
        if fates["deferred"]:
            exp["deferred_msgs"].append(m)
    return exp


def message_bytes(plan, m):
    lines = [
        f"From: <{m['sender']}>",
        "To: " + ", ".join(f"<{r}>" for r in m["rcpts"]),
        f"Subject: mta-rules message {m['seq']}",
        f"Message-ID: <mta-rules-{plan['run']}-{m['seq']}@inject.mta-rules.test>",
        "Date: " + email.utils.formatdate(localtime=False),
        f"X-Mta-Rules-Run: {plan['run']}",
        f"X-Mta-Rules-Seq: {m['seq']}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"Message {m['seq']} of mta-rules run {plan['run']}.",
        "Recipients: " + " ".join(m["rcpts"]),
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def cmd_plan(a):
    plan = make_plan(a.messages, a.magic)
    exp = expectations(plan)
    for m in plan["messages"]:
        m.pop("fates", None)
    with open(a.out, "w") as f:
        json.dump(plan, f, indent=1)
    print(len(exp["originals"]) + len(exp["dsn"]), len(exp["deferred_msgs"]))
    return 0


def cmd_inject(a):
    plan = json.load(open(a.plan))
    s = smtplib.SMTP("127.0.0.1", a.port, local_hostname="inject.mta-rules.test", timeout=60)
    try:
        s.ehlo()
        for m in plan["messages"]:
            code, resp = s.mail(m["sender"])
            if code != 250:
                raise SystemExit(f"inject: MAIL FROM:<{m['sender']}> got {code} {resp!r}")
            for r in m["rcpts"]:
                code, resp = s.rcpt(r)
                if code != 250:
                    raise SystemExit(f"inject: RCPT TO:<{r}> got {code} {resp!r}")
            code, resp = s.data(message_bytes(plan, m))
            if code != 250:
                raise SystemExit(f"inject: message {m['seq']}: DATA got {code} {resp!r}")
            q = re.search(rb"queued as ([0-9A-Za-z]+)", resp)
            m["qid"] = q.group(1).decode() if q else None
        s.quit()
    finally:
        s.close()
    with open(a.plan, "w") as f:
        json.dump(plan, f, indent=1)
    n = len(plan["messages"])
    print(f"inject: {n} messages, {sum(len(m['rcpts']) for m in plan['messages'])} recipients, all accepted by Postfix")
    return 0


def cmd_fetch(a):
    last = None
    for _ in range(20):
        try:
            with urllib.request.urlopen(a.url, timeout=5) as r:
                data = r.read()
            with open(a.out, "wb") as f:
                f.write(data)
            return 0
        except OSError as e:
            last = e
            time.sleep(0.25)
    print(f"fetch {a.url}: {last}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------- check ----

LOG_RE = re.compile(
    r"postfix/(?P<svc>[\w/-]+)\[\d+\]: (?P<qid>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>,"
    r"(?: orig_to=<[^>]*>,)? .*? status=(?P<status>\w+) \((?P<why>.*)\)\s*$")


def parse_log(path):
    out = []   # (qid, to, status, why)
    with open(path, errors="replace") as f:
        for line in f:
            m = LOG_RE.search(line)
            if m:
                out.append((m["qid"], m["to"], m["status"], m["why"]))
    return out


def header_values(msg, name):
    return [str(v).strip() for v in (msg.get_all(name) or [])]


def strip_angle(s):
    s = s.strip()
    return s[1:-1] if s.startswith("<") and s.endswith(">") else s


def dsn_parts(msg):
    """(per-recipient groups of the message/delivery-status part, the
    X-Mta-Rules-Seq of the returned headers or None)."""
    groups, seq = None, None
    for part in msg.walk():
        ct = part.get_content_type()
        if ct == "message/delivery-status" and groups is None:
            payload = part.get_payload()
            # compat32: a list of Message objects, the per-message group first
            if isinstance(payload, list):
                groups = payload[1:]
        elif ct in ("text/rfc822-headers", "message/rfc822") and seq is None:
            text = part.get_payload(decode=True) or b""
            if isinstance(part.get_payload(), list):
                inner = part.get_payload()[0]
                v = inner.get("X-Mta-Rules-Seq")
            else:
                h = email.message_from_bytes(text, policy=email.policy.compat32)
                v = h.get("X-Mta-Rules-Seq")
            if v is not None:
                try:
                    seq = int(str(v).strip())
                except ValueError:
                    pass
    return groups or [], seq


class Checks:
    def __init__(self, limit):
        self.results = []   # (name, ok, detail)
        self.limit = limit

    def add(self, name, problems, ok_detail):
        if problems:
            shown = problems[:self.limit]
            more = f" (+{len(problems) - self.limit} more)" if len(problems) > self.limit else ""
            self.results.append((name, False, "; ".join(shown) + more))
        else:
            self.results.append((name, True, ok_detail))

    def ok(self):
        return all(r[1] for r in self.results)


def cmd_check(a):
    plan = json.load(open(a.plan))
    exp = expectations(plan)
    by_seq = {m["seq"]: m for m in plan["messages"]}
    by_sender = {m["sender"]: m for m in plan["messages"]}
    all_rcpts = {r: m for m in plan["messages"] for r in m["rcpts"]}
    C = Checks(a.list)
    fig = {}

    # ---- the Maildir
    new = os.path.join(a.maildir, "new")
    tmp = os.path.join(a.maildir, "tmp")
    files = sorted(os.listdir(new)) if os.path.isdir(new) else []
    stored = {}                 # ok rcpt -> times stored
    dsn_seen = {}               # seq -> count of DSNs
    maildir_p, dsn_p = [], []
    originals = dsns = 0
    dsn_rcpts_named = 0
    for name in files:
        data = open(os.path.join(new, name), "rb").read()
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        rp = header_values(msg, "Return-Path")
        to = [strip_angle(v) for v in header_values(msg, "X-Original-To")]
        if not rp:
            maildir_p.append(f"{name}: no Return-Path")
            continue
        sender = strip_angle(rp[0])
        if sender == "":
            dsns += 1
            if len(to) != 1 or to[0] not in by_sender:
                dsn_p.append(f"{name}: DSN to {to}, not to one sender of the plan")
                continue
            m = by_sender[to[0]]
            groups, seq = dsn_parts(msg)
            if seq is not None and seq != m["seq"]:
                dsn_p.append(f"{name}: DSN to {to[0]} returns the headers of message {seq}")
            dsn_seen[m["seq"]] = dsn_seen.get(m["seq"], 0) + 1
            named = {}
            for g in groups:
                fr = str(g.get("Final-Recipient", "")).split(";", 1)[-1].strip()
                named[strip_angle(fr)] = (str(g.get("Action", "")).strip(),
                                          str(g.get("Diagnostic-Code", "")).strip())
            dsn_rcpts_named += len(named)
            want = set(m["fates"]["bounced"])
            if set(named) != want:
                dsn_p.append(f"{name}: DSN for message {m['seq']} names {sorted(named)}, expected {sorted(want)}")
            for r, (action, diag) in named.items():
                if r not in want:
                    continue
                text = KINDS[kind_of(r)][1]
                if action.lower() != "failed":
                    dsn_p.append(f"{name}: {r}: Action {action!r}, expected failed")
                if text not in " ".join(diag.split()):
                    dsn_p.append(f"{name}: {r}: Diagnostic-Code {diag!r} lacks {text!r}")
            continue
        originals += 1
        seqv = header_values(msg, "X-Mta-Rules-Seq")
        runv = header_values(msg, "X-Mta-Rules-Run")
        if not seqv or not runv or runv[0] != plan["run"]:
            maildir_p.append(f"{name}: not a message of this run (Return-Path {sender})")
            continue
        m = by_seq.get(int(seqv[0]))
        if m is None or m["sender"] != sender:
            maildir_p.append(f"{name}: Return-Path {sender} does not match X-Mta-Rules-Seq {seqv[0]}")
            continue
        if not to:
            maildir_p.append(f"{name}: no X-Original-To")
        for r in to:
            if r not in m["fates"]["sent"]:
                maildir_p.append(f"{name}: stored for {r} ({kind_of(r)}), which the sink should not have accepted")
            else:
                stored[r] = stored.get(r, 0) + 1
    for m in exp["originals"]:
        for r in m["fates"]["sent"]:
            n = stored.get(r, 0)
            if n != 1:
                maildir_p.append(f"{r}: stored {n} times, expected once")
    tmp_files = os.listdir(tmp) if os.path.isdir(tmp) else []
    if tmp_files:
        maildir_p.append(f"{len(tmp_files)} files left in tmp/")
    want_files = len(exp["originals"]) + len(exp["dsn"])
    if len(files) != want_files:
        maildir_p.append(f"{len(files)} files in new/, expected {want_files} "
                         f"({len(exp['originals'])} originals + {len(exp['dsn'])} DSNs)")
    if originals != len(exp["originals"]):
        maildir_p.append(f"{originals} originals stored, expected {len(exp['originals'])}")
    n_ok = len(exp["by_kind"]["ok"])
    C.add("maildir", maildir_p,
          f"{len(files)} files = {originals} originals + {dsns} DSNs; {sum(stored.values())}/{n_ok} ok recipients stored exactly once; tmp/ empty")
    for m in exp["dsn"]:
        n = dsn_seen.get(m["seq"], 0)
        if n != 1:
            dsn_p.append(f"message {m['seq']}: {n} DSNs, expected 1")
    n_bounced = sum(len(m["fates"]["bounced"]) for m in exp["dsn"])
    if dsns != len(exp["dsn"]):
        dsn_p.append(f"{dsns} DSNs stored, expected {len(exp['dsn'])}")
    C.add("dsn", dsn_p,
          f"{dsns} DSNs (null sender), one per message with refused recipients, naming exactly the {dsn_rcpts_named}/{n_bounced} refused recipients with the sink's reply")
    fig.update(files=len(files), originals=originals, dsns=dsns, ok_stored=sum(stored.values()))

    # ---- Postfix's log
    log = parse_log(a.maillog)
    per = {}                    # address -> [(status, why)]
    qids = set()
    for qid, to, status, why in log:
        per.setdefault(to, []).append((status, why))
        qids.add(qid)
    log_p = []
    attempts = {k: 0 for k in KINDS}
    for r, m in all_rcpts.items():
        k = kind_of(r)
        fate, text, _ = KINDS[k]
        entries = per.get(r, [])
        sts = [s for s, _ in entries]
        if fate == "sent":
            if sts != ["sent"]:
                log_p.append(f"{r}: logged {sts}, expected one status=sent")
        elif fate == "bounced":
            if sts != ["bounced"]:
                log_p.append(f"{r}: logged {sts}, expected one status=bounced")
        else:
            if not sts or any(s != "deferred" for s in sts):
                log_p.append(f"{r}: logged {sts}, expected status=deferred only")
        if fate != "sent":
            for s, why in entries:
                if text not in why or REASON_TAIL not in why:
                    log_p.append(f"{r}: status={s} ({why}) lacks {text!r} {REASON_TAIL}")
        attempts[k] += len(entries)
    dsn_sent = 0
    for m in exp["dsn"]:
        sts = [s for s, _ in per.get(m["sender"], [])]
        if sts != ["sent"]:
            log_p.append(f"DSN to {m['sender']}: logged {sts}, expected one status=sent")
        else:
            dsn_sent += 1
    dsn_senders = {m["sender"] for m in exp["dsn"]}
    for to in per:
        if to not in all_rcpts and to not in dsn_senders:
            log_p.append(f"unexpected delivery to <{to}>: {[s for s, _ in per[to]]}")
    retries = {k: attempts[k] - len(exp["by_kind"][k]) for k in KINDS}
    statuses = {}
    for _, _, s, _ in log:
        statuses[s] = statuses.get(s, 0) + 1
    C.add("maillog", log_p,
          "status=" + ", status=".join(f"{s} {n}" for s, n in sorted(statuses.items()))
          + f" ({dsn_sent} of the sent are the DSNs); every refusal/deferral carries the sink's RCPT reply; "
          + f"retries of deferred recipients: {retries['defer'] + retries['tempfail']}")
    fig.update(log_statuses=statuses, attempts=attempts)

    # ---- Postfix's queue
    q_p = []
    entries = []
    with open(a.queue_json) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    q_p.append(f"postqueue -j line not JSON: {line[:80]}")
    queued = {}                 # rcpt -> reason
    seen_msgs = set()
    for e in entries:
        m = by_sender.get(e.get("sender", ""))
        if m is None:
            q_p.append(f"queue entry {e.get('queue_id')} from <{e.get('sender')}>: not a message of the plan")
            continue
        seen_msgs.add(m["seq"])
        if e.get("queue_name") != "deferred":
            q_p.append(f"message {m['seq']} ({e.get('queue_id')}) in queue {e.get('queue_name')!r}, expected deferred")
        if m.get("qid") and e.get("queue_id") != m["qid"]:
            q_p.append(f"message {m['seq']}: queue id {e.get('queue_id')}, injected as {m['qid']}")
        got = [r.get("address") for r in e.get("recipients", [])]
        if sorted(got) != sorted(m["fates"]["deferred"]):
            q_p.append(f"message {m['seq']}: queue lists {got}, expected {m['fates']['deferred']}")
        for r in e.get("recipients", []):
            addr, why = r.get("address"), r.get("delay_reason", "")
            queued[addr] = why
            if addr in all_rcpts:
                text = KINDS[kind_of(addr)][1]
                if text is None or text not in why or REASON_TAIL not in why:
                    q_p.append(f"{addr}: delay_reason {why!r} lacks {text!r} {REASON_TAIL}")
    want_msgs = {m["seq"] for m in exp["deferred_msgs"]}
    if seen_msgs != want_msgs or len(entries) != len(want_msgs):
        q_p.append(f"{len(entries)} queue entries, expected {len(want_msgs)}; messages missing from the queue: "
                   f"{sorted(want_msgs - seen_msgs)}, not expected there: {sorted(seen_msgs - want_msgs)}")
    text = open(a.queue_text, errors="replace").read()
    want_deferred = [r for m in exp["deferred_msgs"] for r in m["fates"]["deferred"]]
    missing_p = [r for r in want_deferred if r not in text]
    if missing_p:
        q_p.append(f"postqueue -p does not name {len(missing_p)} deferred recipients, e.g. {missing_p[0]}")
    reasons_p = {k: text.count(KINDS[k][1]) for k in ("defer", "tempfail")}
    C.add("queue", q_p,
          f"postqueue -j: {len(entries)} deferred messages, {len(queued)}/{len(want_deferred)} recipients, each with the sink's 451 reply; postqueue -p names all")
    fig.update(queue_messages=len(entries), queue_recipients=len(queued))

    # ---- the sink's counts
    h_p = []
    try:
        st = json.load(open(a.stats))
    except (OSError, ValueError) as e:
        st = {}
        h_p.append(f"no /stats: {e}")
    rules = st.get("rules", {})
    hits = rules.get("hits", {})
    want_hits = {
        "bounce": attempts["bounce"],
        "defer": attempts["defer"],
    }
    for name, n in want_hits.items():
        if hits.get(name) != n:
            h_p.append(f"rule {name}: {hits.get(name)} hits, Postfix logged {n} RCPT attempts")
    want_magic = attempts["reject553"] + attempts["tempfail"]
    if rules.get("magic", 0) != want_magic:
        h_p.append(f"magic decisions {rules.get('magic')}, Postfix logged {want_magic} RCPT attempts of magic recipients")
    codes = st.get("counters", {}).get("replies_by_code", {})
    want_codes = {"550": attempts["bounce"], "553": attempts["reject553"],
                  "451": attempts["defer"] + attempts["tempfail"]}
    for c, n in want_codes.items():
        if codes.get(c, 0) != n:
            h_p.append(f"replies {c}: {codes.get(c, 0)}, expected {n}")
    counters = st.get("counters", {})
    sink_msgs = counters.get("messages")
    if sink_msgs != len(files):
        h_p.append(f"the sink counted {sink_msgs} messages, {len(files)} files stored")
    # Accepted recipients: the ok ones and the senders the DSNs went to.
    want_rcpts = n_ok + len(exp["dsn"])
    if counters.get("recipients") != want_rcpts:
        h_p.append(f"the sink counted {counters.get('recipients')} accepted recipients, expected {want_rcpts} "
                   f"({n_ok} ok + {len(exp['dsn'])} DSN recipients)")
    if a.sink_json:
        try:
            sj = json.load(open(a.sink_json))
            s2 = sj.get("maildir", {}).get("stored")
            if s2 is not None and s2 != len(files):
                h_p.append(f"--json maildir.stored {s2}, {len(files)} files stored")
        except (OSError, ValueError) as e:
            h_p.append(f"--json unreadable: {e}")
    C.add("hits", h_p,
          f"/stats rule hits bounce {hits.get('bounce')}, defer {hits.get('defer')}, magic {rules.get('magic', 0)} "
          f"= RCPT attempts in Postfix's log; replies 550/553/451 {codes.get('550', 0)}/{codes.get('553', 0)}/{codes.get('451', 0)}; "
          f"messages {sink_msgs} = files; accepted recipients {counters.get('recipients')} = ok + DSN recipients")
    fig.update(hits=hits, magic=rules.get("magic", 0), replies_by_code=codes)

    # ---- the summary
    n_msgs = len(plan["messages"])
    print(f"mta-rules: {n_msgs} messages, {len(all_rcpts)} recipients injected into Postfix (run {plan['run']})")
    print()
    hdr = ("kind", "sink reply at RCPT", "rcpts", "stored", "bounced", "in DSNs", "queued", "tries (log)", "sink count")
    rows = []
    dsn_named = {}
    for m in exp["dsn"]:
        if dsn_seen.get(m["seq"]) == 1:
            for r in m["fates"]["bounced"]:
                dsn_named[r] = True
    for k, (fate, text, counter) in KINDS.items():
        rs = exp["by_kind"][k]
        if not rs and k in MAGIC_KINDS:
            continue
        if counter is None:
            cnt = "-"
        elif counter == "magic":
            cnt = f"magic {rules.get('magic', 0)} (both)"
        else:
            cnt = f"{counter.split(':')[1]} {hits.get(counter.split(':')[1])}"
        bounced = sum(1 for r in rs if [s for s, _ in per.get(r, [])] == ["bounced"])
        rows.append((k, text or "250", str(len(rs)), str(sum(stored.get(r, 0) for r in rs)), str(bounced),
                     str(sum(1 for r in rs if r in dsn_named)), str(sum(1 for r in rs if r in queued)),
                     str(attempts[k]), cnt))
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    fmt = "  ".join(f"{{:<{x}}}" if i < 2 else f"{{:>{x}}}" for i, x in enumerate(w))
    print(fmt.format(*hdr))
    for r in rows:
        print(fmt.format(*r))
    print()
    print(f"Maildir: {len(files)} files = {originals} originals + {dsns} bounce DSNs; "
          f"Postfix queue: {len(entries)} deferred messages")
    print(f"sink: {counters.get('connections')} connections, {counters.get('transactions')} transactions; "
          f"{codes.get('503', 0)} DATA refused with 503 (Postfix pipelines DATA after its RCPTs, "
          f"{sum(1 for m in plan['messages'] if not m['fates']['sent'])} messages had every recipient refused or deferred)")
    print()
    for name, ok, detail in C.results:
        print(f"{'OK  ' if ok else 'FAIL'} {name:<8} {detail}")
    print()
    print("mta-rules: " + ("all checks passed" if C.ok() else "CHECKS FAILED"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ok": C.ok(), "checks": [{"name": n, "ok": o, "detail": d} for n, o, d in C.results],
                       "figures": fig}, f, indent=1)
            f.write("\n")
    return 0 if C.ok() else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--magic", type=int, default=1)
    p.add_argument("--out", required=True)
    p = sub.add_parser("inject")
    p.add_argument("--plan", required=True)
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("fetch")
    p.add_argument("url")
    p.add_argument("out")
    p = sub.add_parser("check")
    for o in ("--plan", "--maildir", "--maillog", "--queue-json", "--queue-text", "--stats"):
        p.add_argument(o, required=True)
    p.add_argument("--sink-json")
    p.add_argument("--json")
    p.add_argument("--list", type=int, default=5)
    a = ap.parse_args()
    if a.cmd == "plan" and a.messages < 1:
        ap.error("--messages must be at least 1")
    return {"plan": cmd_plan, "inject": cmd_inject, "fetch": cmd_fetch, "check": cmd_check}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
