#!/usr/bin/env python3
"""tls_aiosmtpd_sink.py: a discarding aiosmtpd server that offers STARTTLS,
a peer for scripts/tls-bench.sh.

  python tls_aiosmtpd_sink.py --listen 127.0.0.1:PORT --cert CERT.pem --key KEY.pem

aiosmtpd's SMTP class with `tls_context` (STARTTLS offered after EHLO),
`require_starttls=False` (plaintext clients are served too, as smtpsink's
default), no AUTH, and a handler whose DATA hook throws the message away
and answers 250. One asyncio event loop in the main thread (no Controller
thread); the host name is fixed, so there is no DNS lookup at start.
SIGTERM or SIGINT closes the listener and exits. Prints "ready HOST:PORT"
on stdout once listening. Needs aiosmtpd (lib.sh's ensure_venv).
"""

import argparse
import asyncio
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP


class Discard:
    """Accepts every message and keeps nothing."""

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        return "250 2.0.0 Message discarded"


async def main(a):
    host, _, port = a.listen.rpartition(":")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    handler = Discard()
    loop = asyncio.get_running_loop()

    def factory():
        return SMTP(handler, hostname="aiosmtpd.localhost", tls_context=ctx,
                    require_starttls=False, data_size_limit=64 * 1024 * 1024,
                    auth_require_tls=True)

    server = await loop.create_server(factory, host=host, port=int(port), backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), 1.0)
    except asyncio.TimeoutError:
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    asyncio.run(main(ap.parse_args()))
    sys.exit(0)
