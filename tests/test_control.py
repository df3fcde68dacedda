"""The control socket (lb.control): one JSON request, one JSON reply, root-only socket."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from lb import control
from lb.config.model import Control


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
    # the server adds whether the peer is root (it is, here)
    req = {"cmd": "status", "verbose": True, control.PEER_IS_ROOT: True}
    assert reply == {"ok": True, "echo": req}
    assert seen == [req]


def test_socket_is_root_only_without_control_groups(served):
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


def test_a_request_that_fails_at_every_call_logs_its_traceback_once(served, caplog):
    """A bug the status request hits: the web console asks every few seconds, and each request
    logged its traceback.  Each caller still hears the error; the log says it once (with the
    traceback), then at most once every REFUSED_LOG_EVERY seconds."""
    run_dir, _ = served
    with caplog.at_level(logging.ERROR, logger="lb.control"):
        for _ in range(5):
            assert control.request("t", "boom", run_dir=run_dir) == {"ok": False, "error": "RuntimeError: kaput"}
    said = [r for r in caplog.records if "control request 'boom' failed" in r.getMessage()]
    assert [r.getMessage() for r in said] == ["control request 'boom' failed (1 so far): RuntimeError: kaput"]
    assert said[0].exc_info


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


# ---- bounded requests -----------------------------------------------------------------------

def raw(run_dir, data: bytes) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(control.socket_path("t", run_dir))
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = s.makefile("rb").readline()
    s.close()
    return json.loads(reply)


def test_deep_or_long_requests_are_bad_requests_not_recursion_errors(served, caplog):
    run_dir, seen = served
    with caplog.at_level(logging.ERROR):
        reply = raw(run_dir, b"[" * 65536 + b"\n")
        assert reply["ok"] is False and "bad request" in reply["error"]
        reply = raw(run_dir, b'{"cmd": "status", "x": ' + b"[" * 40 + b"]" * 40 + b"}\n")
        assert reply == {"ok": False, "error": f"bad request: nested more than {control.MAX_DEPTH} levels"}
        reply = raw(run_dir, b'{"cmd": "' + b"x" * (control.MAX_REQUEST + 10) + b'"}\n')
        assert reply["ok"] is False and "bad request" in reply["error"]
        reply = raw(run_dir, b'{"cmd": 7}\n')
        assert reply == {"ok": False, "error": 'bad request: no "cmd" (a string)'}
        reply = raw(run_dir, b"\xff\xfe\n")
        assert reply["ok"] is False and "bad request" in reply["error"]
    assert seen == [] and "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    # and the server still answers
    assert control.request("t", "status", run_dir=run_dir)["ok"] is True


# ---- who may ask: peer credentials against [control]'s groups -------------------------------

CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except (PermissionError, FileNotFoundError):
    print(json.dumps({"connect": "EACCES"})); sys.exit(0)
try:
    s.sendall(json.dumps({"cmd": sys.argv[2]}).encode() + b"\n")
except BrokenPipeError:     # a refused peer is answered and closed at once: the reply is there to read
    pass
print(s.makefile().readline().strip())
"""
NOBODY = 65534


def as_nobody(path, cmd) -> dict:
    """One request from uid/gid 65534 (nobody/nogroup), no supplementary groups."""
    p = subprocess.run(["/usr/bin/python3", "-c", CLIENT, path, cmd], user=NOBODY, group=NOBODY, extra_groups=[],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture
def shared_dir():
    d = tempfile.mkdtemp(prefix="lb-control-")
    os.chmod(d, 0o711)              # nobody may reach the socket (its mode decides the rest)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def serve(run_dir, shared_dir, settings, handler):
    """A ControlServer of instance "t" (its root socket in run_dir, the shared one in
    shared_dir) served on a loop of its own in a thread: (loop, thread, server)."""
    loop = asyncio.new_event_loop()
    server = control.ControlServer(control.socket_path("t", run_dir), handler, access=lambda: settings,
                                   shared_path=control.shared_socket_path("t", shared_dir))
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
    return loop, t, server


def serve_with(run_dir, shared_dir, settings):
    seen = []

    async def handler(req):
        seen.append(req["cmd"])
        return {"ok": True, "did": req["cmd"]}

    loop, t, _server = serve(run_dir, shared_dir, settings, handler)
    return loop, t, seen


def stop(loop, t):
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    loop.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid nobody needs root")
@pytest.mark.parametrize("settings, status, reload", [
    (None, "absent", "absent"),                                               # root only: no shared socket
    (Control(read_group="nogroup"), "ok", "refused"),                         # read-only client
    (Control(admin_group="nogroup"), "ok", "ok"),                             # the console's group
    (Control(admin_group="daemon", read_group="sys"), "refused", "refused"),  # in neither group
])
def test_unauthenticated_and_read_only_clients_are_refused(tmp_path, shared_dir, settings, status, reload):
    loop, t, seen = serve_with(str(tmp_path), shared_dir, settings)
    path = control.shared_socket_path("t", shared_dir)
    try:
        root_only = control.socket_path("t", str(tmp_path))
        assert stat.S_IMODE(os.stat(root_only).st_mode) == 0o600        # root's socket, whatever [control] says
        assert as_nobody(root_only, "status") == {"connect": "EACCES"}
        if settings is None:
            assert not os.path.exists(path)
        else:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        got = {}
        for cmd in ("status", "reload"):
            reply = as_nobody(path, cmd) if os.path.exists(path) else {"connect": "absent"}
            if "connect" in reply:
                got[cmd] = reply["connect"]
            elif reply.get("ok"):
                got[cmd] = "ok"
            else:
                assert reply.get("refused") is True and reply["error"].startswith("refused: "), reply
                got[cmd] = "refused"
        assert got == {"status": status, "reload": reload}
        assert seen == [cmd for cmd, v in got.items() if v == "ok"]
        # root is always the admin
        assert control.request("t", "reload", run_dir=str(tmp_path)) == {"ok": True, "did": "reload"}
    finally:
        stop(loop, t)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid nobody needs root")
def test_the_server_says_whether_the_peer_is_root_whatever_the_request_says(tmp_path, shared_dir):
    """lb.confedit lets only root change the programs the daemon runs (a console user in
    admin_group could make it run one as root): the server marks each request with whether
    its peer is root, overwriting what the client wrote there."""
    got = []

    async def handler(req):
        got.append(req.get(control.PEER_IS_ROOT))
        return {"ok": True}
    loop, t, _server = serve(str(tmp_path), shared_dir, Control(admin_group="nogroup"), handler)
    try:
        forged = json.dumps({"cmd": "reload", control.PEER_IS_ROOT: True})
        client = CLIENT.replace('json.dumps({"cmd": sys.argv[2]}).encode()', "sys.argv[2].encode()")
        p = subprocess.run(["/usr/bin/python3", "-c", client, control.shared_socket_path("t", shared_dir), forged],
                           user=NOBODY, group=NOBODY, extra_groups=[65534], capture_output=True, text=True,
                           timeout=30)
        assert json.loads(p.stdout) == {"ok": True}, p.stderr
        assert control.request("t", "reload", run_dir=str(tmp_path)) == {"ok": True}
    finally:
        stop(loop, t)
    assert got == [False, True]


def test_the_consoles_client_takes_a_big_tables_status_and_refuses_what_is_no_reply(tmp_path):
    """control.arequest (the web console's): a status of tens of MiB (1000 x 64 real servers)
    used to be over its 4 MiB line limit; a reply that is not one is BadReply, as request's."""
    import asyncio

    big = {"ok": True, "status": {"services": [{"reals": ["x" * 300] * 64}] * 400}}
    replies = [json.dumps(big).encode() + b"\n", b"[]\n", b'{"ok": tr']

    async def main():
        sock = str(tmp_path / "t.sock")

        async def serve(reader, writer):
            await reader.readline()
            writer.write(replies.pop(0))
            await writer.drain()
            writer.close()
        server = await asyncio.start_unix_server(serve, sock)
        async with server:
            got = await control.arequest(sock, "status")
            assert len(json.dumps(got)) > 6 * 1024 * 1024 and got == big
            with pytest.raises(control.BadReply, match="a JSON array, not an object"):
                await control.arequest(sock, "status")
            with pytest.raises(control.BadReply, match="cut short"):
                await control.arequest(sock, "status")
    asyncio.run(main())


# ---- a client that never reads its reply --------------------------------------------------

def never_reading(path: str) -> socket.socket:
    """A client that asks for a big reply and never reads it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    s.sendall(b'{"cmd": "status"}\n')
    return s


def test_a_client_that_never_reads_its_reply_loses_its_slot(tmp_path, monkeypatch):
    """A client that asked for a status (megabytes on a big table) and never read it held its
    slot, and the reply's memory, for as long as it stayed connected: MAX_CLIENTS of them and
    every later request, root's too, was answered "busy" for good.  Now the connection is cut
    once WRITE_TIMEOUT has passed and the slot serves the next request."""
    monkeypatch.setattr(control, "MAX_CLIENTS", 2)
    monkeypatch.setattr(control, "WRITE_TIMEOUT", 0.5, raising=False)
    big = "x" * (8 << 20)

    async def handler(req):
        return {"ok": True, "status": big}
    loop, t, server = serve(str(tmp_path), "/nonexistent", None, handler)
    path = control.socket_path("t", str(tmp_path))
    holders = [never_reading(path) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while True:
            reply = control.request("t", "status", run_dir=str(tmp_path))
            if reply["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert reply == {"ok": True, "status": big}
        assert server.unread == 2
    finally:
        for s in holders:
            s.close()
        stop(loop, t)


def test_stop_does_not_wait_for_a_client_that_never_reads(tmp_path):
    """Since Python 3.12 a server's wait_closed() waits for every connection it serves: the
    daemon's stop (SIGTERM, `systemctl stop`) hung on a client that never read its reply until
    systemd's TimeoutStopSec killed it, the data plane never taken down.  Now the connections
    still open STOP_GRACE after the socket closes are cut."""
    big = "x" * (8 << 20)

    async def handler(req):
        return {"ok": True, "status": big}

    async def main():
        path = control.socket_path("t", str(tmp_path))
        server = control.ControlServer(path, handler)
        await server.start()
        s = await asyncio.get_running_loop().run_in_executor(None, never_reading, path)
        try:
            while not server._slots[False].open:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)                     # its reply is being written
            await asyncio.wait_for(server.stop(), 60)
            s.setblocking(False)
            got, ended = b"", False
            deadline = time.monotonic() + 30
            while not ended and time.monotonic() < deadline:    # the connection is cut: what the
                try:                                            # client reads ends, short
                    chunk = s.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.05)
                    continue
                except ConnectionResetError:
                    chunk = b""
                ended = not chunk
                got += chunk
            assert ended and len(got) < len(big)
        finally:
            s.close()
    asyncio.run(main())


def test_a_reload_that_takes_controls_groups_away_answers_the_request_that_made_it(tmp_path, shared_dir):
    """A reload asked for on the shared socket (an admin_group member's `lb reload`, the web
    console's save) whose new file names no [control] groups: the shared socket is closed
    while that very request waits for the reload's end.  Closing it waited for its
    connections (Server.wait_closed() does since Python 3.12), the reload for the close: the
    daemon's loop hung for good.  Now the socket goes at once and the request is answered."""
    settings = {"now": Control(admin_group="nogroup")}
    holder = {}

    async def handler(req):
        if req["cmd"] == "reload":
            settings["now"] = None
            await holder["server"].refresh()
        return {"ok": True, "did": req["cmd"]}

    loop = asyncio.new_event_loop()
    server = holder["server"] = control.ControlServer(
        control.socket_path("t", str(tmp_path)), handler, access=lambda: settings["now"],
        shared_path=control.shared_socket_path("t", shared_dir))
    asyncio.set_event_loop(None)
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
        shared = control.shared_socket_path("t", shared_dir)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(shared)
        s.sendall(b'{"cmd": "reload"}\n')
        reply = s.makefile("rb").readline()
        s.close()
        assert json.loads(reply) == {"ok": True, "did": "reload"}
        assert not os.path.exists(shared)
        assert control.request("t", "status", run_dir=str(tmp_path)) == {"ok": True, "did": "status"}
    finally:
        stop(loop, t)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid nobody needs root")
def test_a_group_lookup_that_hangs_does_not_stop_the_daemon_answering(tmp_path, shared_dir, monkeypatch):
    """[control]'s groups are looked up by name at each connection of a user who is not root
    (NSS: with LDAP or sssd, a directory server that does not answer holds the call for its
    timeout).  That ran on the daemon's loop: any local user connecting to the shared socket
    (0666) stopped everything the loop does -- health checks, HA heartbeats, root's requests --
    for as long as the lookup hung.  Now it runs in a thread of its own (one for all the
    connections waiting), and its answer is kept for GROUP_TTL."""
    import grp

    asked, release = threading.Event(), threading.Event()
    real = grp.getgrnam

    def hung(name):
        asked.set()
        release.wait(60)
        return real(name)
    monkeypatch.setattr(grp, "getgrnam", hung)
    monkeypatch.setattr(control, "_gids", {}, raising=False)     # nothing looked up yet
    loop, t, seen = serve_with(str(tmp_path), shared_dir, Control(admin_group="nogroup"))
    p = subprocess.Popen(["/usr/bin/python3", "-c", CLIENT, control.shared_socket_path("t", shared_dir), "status"],
                         user=NOBODY, group=NOBODY, extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert asked.wait(30)                           # nobody's connection: its lookup hangs
        try:                                            # root asks meanwhile
            reply = control.request("t", "status", run_dir=str(tmp_path), timeout=10)
        except OSError as e:
            reply = repr(e)
    finally:
        release.set()
        out, err = p.communicate(timeout=30)
        stop(loop, t)
    assert reply == {"ok": True, "did": "status"}
    assert json.loads(out) == {"ok": True, "did": "status"}, err     # and nobody's is answered once it returns


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid nobody needs root")
def test_a_member_of_hundreds_of_groups_is_let_in_by_its_group(tmp_path, shared_dir):
    """A user of a directory (Active Directory, LDAP) is often in hundreds of groups: with more
    than 256, the peer's groups did not fit the 1024 bytes Python's getsockopt reads (ERANGE),
    only its primary group counted, and a member of [control] read_group was refused.  All of
    them count now (read through libc)."""
    import grp

    group = grp.getgrgid(3).gr_name                     # "sys", in none of nobody's own groups
    loop, t, seen = serve_with(str(tmp_path), shared_dir, Control(read_group=group))
    try:
        p = subprocess.run(["/usr/bin/python3", "-c", CLIENT, control.shared_socket_path("t", shared_dir), "status"],
                           user=NOBODY, group=NOBODY, extra_groups=[*range(50000, 50299), 3], capture_output=True,
                           text=True, timeout=30)
    finally:
        stop(loop, t)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"ok": True, "did": "status"}
