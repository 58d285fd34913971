"""aiosmtpd_maildir.py: an aiosmtpd handler that stores every message with
Python's mailbox.Maildir -- the Python baseline of store-bench.sh.

  PYTHONPATH=scripts python -m aiosmtpd -n -l 127.0.0.1:PORT \\
      -c aiosmtpd_maildir.MaildirHandler DIR [nosync|fsync]

Each message is stored as received (raw bytes, CRLF line ends kept, no
parsing into email.message objects), with the trace fields smtpsink
--maildir prepends: Return-Path and one X-Original-To per recipient
(smtpsink also adds a Received field). The 250 is sent once
mailbox.Maildir.add has returned, i.e. the file is in new/.

Modes:
  nosync (default)  no fsync at all: mailbox.Maildir.add normally fsyncs
                    every message file (mailbox._sync_close); that is
                    replaced by a plain flush and close, so this compares
                    with smtpsink --maildir without --fsync
  fsync             an fsync per message: the file (mailbox.Maildir.add's
                    own fsync, before it is linked into new/) and then the
                    new/ directory, before the 250 -- the baseline for
                    smtpsink --maildir --fsync's group commit

aiosmtpd runs the handler on its one asyncio loop, so each message's writes
and syncs block the server (like a single-threaded server with no group
commit).
"""

import mailbox
import os


def _close_nosync(f):
    f.flush()
    f.close()


class MaildirHandler:
    def __init__(self, path, mode="nosync"):
        if mode not in ("nosync", "fsync"):
            raise ValueError(f"mode must be nosync or fsync, not {mode!r}")
        self.fsync = mode == "fsync"
        if not self.fsync:
            # Module-level helper used by Maildir.add: no fsync of the file.
            mailbox._sync_close = _close_nosync
        # Maildir(create=True) makes tmp/, new/ and cur/ only when the
        # directory itself is new.
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
        self.md = mailbox.Maildir(path, factory=None, create=False)
        self.new_fd = os.open(os.path.join(path, "new"), os.O_RDONLY | os.O_DIRECTORY)

    @classmethod
    def from_cli(cls, parser, *args):
        if not 1 <= len(args) <= 2:
            parser.error("usage: -c aiosmtpd_maildir.MaildirHandler DIR [nosync|fsync]")
        try:
            return cls(*args)
        except ValueError as e:
            parser.error(str(e))

    async def handle_DATA(self, server, session, envelope):
        trace = [b"Return-Path: <" + envelope.mail_from.encode("utf-8", "surrogateescape") + b">\r\n"]
        for rcpt in envelope.rcpt_tos:
            trace.append(b"X-Original-To: <" + rcpt.encode("utf-8", "surrogateescape") + b">\r\n")
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        try:
            self.md.add(b"".join(trace) + content)
            if self.fsync:
                os.fsync(self.new_fd)
        except OSError as e:
            return f"451 4.3.0 storing failed: {e.strerror}"
        return "250 2.0.0 OK stored"
