"""A stand-in for a daemon's control socket, for tests that run lb as an unprivileged user."""
from __future__ import annotations

import json
import os
import socket
import threading


def one_reply_daemon(path, reply: dict) -> socket.socket:
    """A Unix socket at ``path``, mode 0666 (any user reaches it, as [control]'s groups let the
    console and read-only users reach /run/lb-control), answering each connection's request line
    with ``reply`` as one JSON line, from a daemon thread; a client that connects and goes (the
    instance discovery's probe) is let go.  The caller closes it (the thread ends then)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    os.chmod(path, 0o666)
    srv.listen(8)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                try:
                    c.makefile("rb").readline()
                    c.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass         # connected, and gone
    threading.Thread(target=serve, daemon=True).start()
    return srv
