"""The control socket (lb.control): one JSON request, one JSON reply, root-only socket."""
from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading

import pytest

from lb import control


@pytest.fixture
def served(tmp_path):
    """A ControlServer on its own loop in a thread; yields (run_dir, requests seen)."""
    seen = []

    async def handler(req):
        seen.append(req)
        if req.get("cmd") == "boom":
            raise RuntimeError("kaput")
        return {"ok": True, "echo": req}

    loop = asyncio.new_event_loop()
    server = control.ControlServer(control.socket_path("t", str(tmp_path)), handler)
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield str(tmp_path), seen
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def test_request_and_reply(served):
    run_dir, seen = served
    reply = control.request("t", "status", run_dir=run_dir, verbose=True)
    assert reply == {"ok": True, "echo": {"cmd": "status", "verbose": True}}
    assert seen == [{"cmd": "status", "verbose": True}]


def test_socket_is_root_only(served):
    run_dir, _ = served
    mode = os.stat(control.socket_path("t", run_dir)).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_handler_error_and_bad_request_are_replies(served):
    run_dir, _ = served
    assert control.request("t", "boom", run_dir=run_dir) == {"ok": False, "error": "RuntimeError: kaput"}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(control.socket_path("t", run_dir))
    s.sendall(b"not json\n")
    reply = s.makefile().readline()
    s.close()
    assert '"ok": false' in reply and "bad request" in reply


def test_not_running(tmp_path):
    with pytest.raises(control.NotRunning, match=r"instance 'nope' is not running"):
        control.request("nope", "status", run_dir=str(tmp_path))


def test_stale_socket_is_replaced_and_removed_on_stop(tmp_path):
    path = control.socket_path("t", str(tmp_path))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)              # a socket file nobody listens on: a crashed daemon's
    dead.close()

    async def main():
        async def handler(req):
            return {"ok": True}
        server = control.ControlServer(path, handler)
        await server.start()
        reply = await asyncio.get_running_loop().run_in_executor(
            None, lambda: control.request("t", "status", run_dir=str(tmp_path)))
        # a second daemon must not steal a live socket
        with pytest.raises(OSError, match="another lb daemon"):
            await control.ControlServer(path, handler).start()
        await server.stop()
        return reply

    assert asyncio.run(main()) == {"ok": True}
    assert not os.path.exists(path)
