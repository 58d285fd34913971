#!/usr/bin/env python3
"""slow_server.py PORT EOD_SECONDS: a fake SMTP server on 127.0.0.1:PORT that
answers every command at once except the end of data (DATA's final dot, BDAT
LAST), which it answers exactly EOD_SECONDS after reading it. Offers
PIPELINING and CHUNKING; TCP_NODELAY, so no Nagle delay of its own. A way to
see that smtpload charges such a delay to the data phase alone:

    python3 scripts/slow_server.py 2801 0.2 &
    smtpload -q -c 2 -m 20 127.0.0.1:2801     # data and message ~200 ms, envelope ~0

Runs until killed. Loopback only.
"""
import socket, sys, threading, time
EOD = float(sys.argv[2]); PORT = int(sys.argv[1])
def serve(c):
    f = c.makefile('rb'); c.sendall(b"220 fake ESMTP\r\n")
    while True:
        line = f.readline()
        if not line: return
        v = line.split()[0].upper() if line.split() else b""
        if v == b"EHLO": c.sendall(b"250-fake\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
        elif v == b"DATA":
            c.sendall(b"354 go\r\n")
            while f.readline() != b".\r\n": pass
            time.sleep(EOD); c.sendall(b"250 queued\r\n")
        elif v == b"BDAT":
            n = int(line.split()[1]); f.read(n)
            if line.split()[-1].upper() == b"LAST": time.sleep(EOD); c.sendall(b"250 queued\r\n")
            else: c.sendall(b"250 chunk\r\n")
        elif v == b"QUIT": c.sendall(b"221 bye\r\n"); return
        else: c.sendall(b"250 ok\r\n")
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT)); s.listen(128)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); threading.Thread(target=serve, args=(c,), daemon=True).start()
