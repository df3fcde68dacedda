"""The daemon's control socket: /run/lb/<instance>.sock (mode 0600, root only).

One JSON request per connection, one JSON reply, each a single line:

    {"cmd": "status"}  -> {"ok": true, "status": {...}}        (what `lb status` prints)
    {"cmd": "reload"}  -> {"ok": true, "message": "..."} or
                          {"ok": false, "error": "...", "issues": [{"path", "line", "field", "message"}]}
    {"cmd": "weight", "service": "web", "server": "rs1", "weight": 0}
                       -> {"ok": true, "message": "..."} once the table is applied, or
                          {"ok": false, "error": "..."} (unknown service or server, bad weight)

    {"cmd": "zero", "service": ["tcp", "198.18.0.10", 80] | ["fwmark", 21] | null}
                       -> {"ok": true, "message": "..."}: ipvsadm -Z (`lb zero`)

"weight" is the operator's override of one real server's weight (`lb weight`, `lb quiesce`,
`lb activate`): service by name (or VIP:PORT), server by name, ADDR or ADDR:PORT, weight
0..65535 (0 quiesces: open connections go on, no new ones) or null to clear it.  It lives in
the daemon: it wins over the configured and the load monitor's weight, survives reloads for
real servers the new file still has, and never brings back a server its health checks took out.

The server runs on the engine's asyncio loop (lb.engine.Engine.run); :func:`request` is the
blocking client `lb status`, `lb reload` and `lb weight` use.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket

log = logging.getLogger("lb.control")

RUN_DIR = "/run/lb"
MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 60.0        # a reload may compile nothing but can resolve many next hops


class NotRunning(Exception):
    """No daemon answers on the instance's socket."""


def socket_path(instance: str, run_dir: str = RUN_DIR) -> str:
    return os.path.join(run_dir, f"{instance}.sock")


class ControlServer:
    """Answers requests with ``handler(request dict) -> reply dict`` (a coroutine)."""

    def __init__(self, path: str, handler):
        self.path = path
        self.handler = handler
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._unlink_stale()
        old = os.umask(0o177)            # the socket is born 0600: no window with wider access
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.info("control socket %s", self.path)

    def _unlink_stale(self) -> None:
        """A socket file left by a crashed daemon; a live one means another daemon runs."""
        if not os.path.exists(self.path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise OSError(f"{self.path}: another lb daemon answers on this control socket")

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10.0)
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except (ValueError, asyncio.LimitOverrunError, asyncio.TimeoutError) as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            else:
                try:
                    reply = await self.handler(req)
                except Exception as e:  # the daemon goes on; the caller learns why
                    log.exception("control request %r failed", req.get("cmd"))
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def request(instance: str, cmd: str, timeout: float = CLIENT_TIMEOUT, run_dir: str = RUN_DIR, **args) -> dict:
    """Send one request to a running daemon; raises NotRunning when nothing answers."""
    path = socket_path(instance, run_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NotRunning(f"instance {instance!r} is not running (nothing answers on {path}: "
                             f"{e.strerror})") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise NotRunning(f"instance {instance!r}: the daemon closed {path} without a reply")
    return json.loads(buf)
