#!/usr/bin/env python3
"""idle_conns.py: hold N idle SMTP connections open (for compare.sh).

Usage: idle_conns.py PORT N READY_FILE DONE_FILE

Opens N connections to 127.0.0.1:PORT, reads each one's greeting and sends
nothing. Then it writes "GREETED OPEN" to READY_FILE (connections that got a
220 greeting, connections open) and holds them until DONE_FILE exists, at
most 120 s after it started; then it closes them and exits. On failure it
writes "0 0 REASON" to READY_FILE and exits 1.
"""

import os
import selectors
import socket
import sys
import time


def main() -> int:
    port, n, ready, done = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    start = time.monotonic()
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            socks.append(s)
    except OSError as e:
        with open(ready, "w") as f:
            f.write(f"0 {len(socks)} connect:{type(e).__name__}\n")
        return 1

    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    greeted, pending = 0, len(socks)
    deadline = start + 60
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            bufs[s] += data
            if not data or b"\r\n" in bufs[s]:
                sel.unregister(s)
                pending -= 1
                if bufs[s].startswith(b"220"):
                    greeted += 1
    with open(ready + ".tmp", "w") as f:
        f.write(f"{greeted} {len(socks)}\n")
    os.replace(ready + ".tmp", ready)

    while not os.path.exists(done) and time.monotonic() < start + 120:
        time.sleep(0.05)
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
