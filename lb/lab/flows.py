"""Long-lived connections from a lab node: HTTP/1.1 keep-alive requests on many TCP connections
at once, each answer naming the real server ("rsN", the lab's nginx) -- so a test sees whether a
connection still works and still talks to the same real server after directors come and go.

    flows = Flows("client", "198.18.10.10", 80, 300, sources=scaleout.CLIENT_SOURCES)
    first = flows.round()            # {i: "rs2", ...}, or an exception per connection that failed
    ...
    later = flows.round(timeout=20)  # the same connections again
    flows.close()

Bounded: one request per connection per round, rounds end at their timeout, at most 4096
connections; every address is checked against the lab's range."""
from __future__ import annotations

import select
import socket
import time

from .nsutil import check_lab_addr, in_netns

MAX_FLOWS = 4096
MAX_RESPONSE = 64 * 1024


class FlowError(Exception):
    pass


def _response(buf: bytes) -> tuple[str, int] | None:
    """(body, bytes used) of the first complete HTTP response in ``buf``, None while incomplete."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if len(rest) < length:
        return None
    status = head.split(b" ", 2)[1] if b" " in head else b"?"
    if status != b"200":
        raise FlowError(f"HTTP {status.decode(errors='replace')}")
    return rest[:length].decode(errors="replace").strip(), len(head) + 4 + length


class Flows:
    """``n`` keep-alive connections from ``node`` to ``vip``:``port``, from ``sources`` in turn
    (the kernel picks each source port)."""

    def __init__(self, node: str, vip: str, port: int, n: int, sources, connect_timeout: float = 5.0):
        if not 0 < n <= MAX_FLOWS:
            raise ValueError(f"1 .. {MAX_FLOWS} connections, not {n}")
        self.vip, self.port = check_lab_addr(vip), int(port)
        sources = [check_lab_addr(s) for s in sources]
        self.request = f"GET / HTTP/1.1\r\nHost: {vip}\r\nUser-Agent: lb-lab-flows\r\n\r\n".encode()

        def open_all() -> list[socket.socket]:
            out = []
            try:
                for i in range(n):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    out.append(s)
                    s.bind((sources[i % len(sources)], 0))
                    s.settimeout(connect_timeout)
                    s.connect((self.vip, self.port))
                    s.setblocking(False)
            except BaseException:
                for s in out:
                    s.close()
                raise
            return out

        self.socks: list[socket.socket | None] = list(in_netns(node, open_all, timeout=connect_timeout * n + 30))
        self.clients = [s.getsockname() for s in self.socks]      # (source address, port) of each
        self.errors: dict[int, Exception] = {}

    def round(self, timeout: float = 10.0) -> dict[int, str | Exception]:
        """One request on every connection still open; each one's answer (the real server's name)
        or what went wrong.  A connection that fails is closed and stays failed."""
        out: dict[int, str | Exception] = dict(self.errors)
        pending: dict[int, bytes] = {}
        for i, s in enumerate(self.socks):
            if s is None:
                continue
            try:
                s.sendall(self.request)
                pending[i] = b""
            except OSError as e:
                self._fail(i, e, out)
        by_fd = {self.socks[i].fileno(): i for i in pending}
        poll = select.poll()            # not select(): a test process may hold fds above 1024
        for fd in by_fd:
            poll.register(fd, select.POLLIN)

        def finish(fd: int, result: str | Exception) -> None:
            i = by_fd[fd]
            poll.unregister(fd)
            pending.pop(i)
            if isinstance(result, Exception):
                self._fail(i, result, out)
            else:
                out[i] = result

        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                for fd in [fd for fd, i in by_fd.items() if i in pending]:
                    finish(fd, TimeoutError(f"no answer within {timeout:g} s"))
                break
            for fd, _ev in poll.poll(min(left, 0.5) * 1000):
                i = by_fd[fd]
                try:
                    data = self.socks[i].recv(65536)
                except OSError as e:
                    finish(fd, e)
                    continue
                if not data:
                    finish(fd, ConnectionResetError("closed by the peer"))
                    continue
                buf = pending[i] + data
                try:
                    got = _response(buf)
                except (FlowError, ValueError) as e:
                    finish(fd, e)
                    continue
                if got is not None:
                    finish(fd, got[0])
                elif len(buf) > MAX_RESPONSE:
                    finish(fd, FlowError("answer too long"))
                else:
                    pending[i] = buf
        return out

    def _fail(self, i: int, err: Exception, out: dict) -> None:
        s = self.socks[i]
        if s is not None:
            s.close()
        self.socks[i] = None
        self.errors[i] = out[i] = err

    def close(self) -> None:
        for i, s in enumerate(self.socks):
            if s is not None:
                s.close()
                self.socks[i] = None

    def __enter__(self) -> "Flows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_connections(node: str, vip: str, port: int, sources, count: int, timeout: float = 3.0) -> dict:
    """``count`` short connections (one request each, closed), from ``sources`` in turn:
    {"ok": n, "failed": [(source, error), ...], "servers": {name: n}}."""
    vip = check_lab_addr(vip)
    request = f"GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n".encode()

    def run() -> dict:
        res = {"ok": 0, "failed": [], "servers": {}}
        for i in range(count):
            src = check_lab_addr(sources[i % len(sources)])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((src, 0))
                    s.settimeout(timeout)
                    s.connect((vip, port))
                    s.sendall(request)
                    buf = b""
                    while (got := _response(buf)) is None and len(buf) <= MAX_RESPONSE:
                        data = s.recv(65536)
                        if not data:
                            raise ConnectionResetError("closed before the answer")
                        buf += data
                    if got is None:
                        raise FlowError("answer too long")
                res["ok"] += 1
                res["servers"][got[0]] = res["servers"].get(got[0], 0) + 1
            except (OSError, FlowError, ValueError) as e:
                res["failed"].append((src, repr(e)))
        return res

    return in_netns(node, run, timeout=count * (timeout + 1) + 30)
