"""HTTP through the lab's VIP, as the namespace tests use it (one copy for all of them)."""
from __future__ import annotations

import re

from lb.lab import VIP


def get(lab, n=1, vip=VIP):
    """n HTTP/1.0 requests, each on a new connection to the VIP; the reply bodies, in order."""
    bodies = []
    for _ in range(n):
        status, body = lab.http_get("client", vip, 80, "/", timeout=3.0)
        assert status == 200
        bodies.append(body.strip())
    return bodies


def request(sock):
    """One HTTP/1.1 keep-alive request on an open socket; the body of the reply."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    for _ in range(64):  # bounded; each recv is bounded by the socket timeout
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)\r?$", head)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert m, head
            if len(rest) >= int(m.group(1)):
                return rest[: int(m.group(1))].decode().strip()
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed by peer after {buf!r}")
        buf += chunk
    raise AssertionError(f"no complete HTTP reply: {buf!r}")
