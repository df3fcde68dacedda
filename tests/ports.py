"""Ports a test holds from the moment it picks them (docs/testing.md: ports held by the test, no
pick-then-bind race with another process)."""
from __future__ import annotations

import socket

_held: list[socket.socket] = []


def held_port() -> int:
    """A TCP port kept bound on the wildcard address, never listening, for the rest of the run,
    with SO_REUSEADDR: a server that sets SO_REUSEADDR too (asyncio's start_server and aiohttp's
    TCPSite do) binds and listens on it on any address; nothing else can bind it meanwhile and
    the kernel never hands it out as another socket's ephemeral port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    _held.append(s)
    return s.getsockname()[1]
