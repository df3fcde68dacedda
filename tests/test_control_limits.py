"""The control socket's limits against local users (lb.control): a peer [control] refuses holds no
slot and is closed at once, the root socket has slots of its own, one uid holds at most
MAX_PER_UID of the shared socket's; refusals are counted, not logged one line each; a member of
[control]'s groups reaches the daemon with control.request (the CLI's) over the shared socket."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lb import control
from lb.config.model import Control
from test_control import serve

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid nobody needs root")

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
REPO = Path(__file__).resolve().parent.parent

# N connections to a socket, held sending nothing; on a line from stdin, what each has received
HOLDER = r"""
import json, socket, sys
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    socks.append(s)
print("connected", flush=True)
sys.stdin.readline()
got = []
for s in socks:
    s.setblocking(False)
    try:
        data = s.recv(65536)
    except BlockingIOError:
        got.append("waiting"); continue
    got.append(json.loads(data)["error"].partition(":")[0] if data else "closed")
print(json.dumps(got), flush=True)
"""

# N requests, one after the other, each reply read
ASKER = r"""
import json, socket, sys
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    try:
        s.sendall(b'{"cmd": "status"}\n')
    except BrokenPipeError:
        pass
    assert json.loads(s.makefile().readline())["refused"] is True
    s.close()
"""


@pytest.fixture
def dirs(tmp_path):
    shared = tempfile.mkdtemp(prefix="lb-control-")
    os.chmod(shared, 0o711)          # nobody reaches the shared socket; tmp_path (0700) stays root's
    try:
        yield str(tmp_path), shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def daemon(dirs):
    """start(settings) -> the ControlServer, served on its own loop in a thread."""
    run_dir, shared_dir = dirs
    running = []

    async def handler(req):
        return {"ok": True, "did": req["cmd"]}

    def start(settings):
        loop, t, server = serve(run_dir, shared_dir, settings, handler)
        running.append((loop, t))
        return server

    yield start
    for loop, t in running:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def hold(path: str, n: int) -> subprocess.Popen:
    p = subprocess.Popen([*AS_NOBODY, "/usr/bin/python3", "-c", HOLDER, path, str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "connected\n", p.stderr.read()
    return p


def received(p: subprocess.Popen) -> list:
    out, err = p.communicate("\n", timeout=30)
    assert p.returncode == 0, err
    return json.loads(out)


def test_a_refused_local_user_cannot_take_roots_control_slots(dirs, daemon):
    """uid nobody, in none of [control]'s groups, opens 40 connections to the shared socket and
    sends nothing: each is refused and closed at once, and root is answered."""
    run_dir, shared_dir = dirs
    daemon(Control(admin_group="adm"))
    p = hold(control.shared_socket_path("t", shared_dir), 40)
    try:
        assert control.request("t", "reload", run_dir=run_dir) == {"ok": True, "did": "reload"}
    finally:
        got = received(p)
    assert got == ["refused"] * 40


def test_one_group_member_holds_at_most_its_share_of_the_shared_socket(dirs, daemon):
    """uid nobody in read_group holds 40 silent connections: MAX_PER_UID of them are served (they
    wait for their request), the rest answered "busy"; root is answered on either socket."""
    run_dir, shared_dir = dirs
    server = daemon(Control(read_group="nogroup"))
    shared = control.shared_socket_path("t", shared_dir)
    p = hold(shared, 40)
    try:
        assert control.request("t", "reload", run_dir=run_dir) == {"ok": True, "did": "reload"}
        root_on_shared = control._request(shared, "t", "status", 10.0, {})
    finally:
        got = received(p)
    assert root_on_shared == {"ok": True, "did": "status"}
    # (which of them: those that came while [control]'s groups were looked up wait for it, and
    # may come after ones that came once it was known)
    assert sorted(got) == ["busy"] * (40 - control.MAX_PER_UID) + ["waiting"] * control.MAX_PER_UID
    assert server.busy == 40 - control.MAX_PER_UID


def test_refused_peers_are_counted_and_logged_once_not_each(dirs, daemon, caplog):
    """A local user connecting in a loop gets its refusal every time, and the daemon's log one line
    (as does a [control] group this host does not have)."""
    run_dir, shared_dir = dirs
    server = daemon(Control(admin_group="no-such-group-fx", read_group="nogroup-not-either-fx"))
    with caplog.at_level(logging.WARNING, logger="lb.control"):
        p = subprocess.run([*AS_NOBODY, "/usr/bin/python3", "-c", ASKER, control.shared_socket_path("t", shared_dir),
                            "50"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    lines = [r.getMessage() for r in caplog.records if r.name == "lb.control"]
    assert len([m for m in lines if "refused uid 65534" in m]) == 1, lines
    assert len([m for m in lines if "'no-such-group-fx' is not a group" in m]) == 1, lines
    assert len([m for m in lines if "'nogroup-not-either-fx' is not a group" in m]) == 1, lines
    assert server.refused == 50


ASK = ("import json, sys; from lb import control\n"
       "try:\n"
       "    print(json.dumps(control.request('t', sys.argv[3], run_dir=sys.argv[1], shared_dir=sys.argv[2])))\n"
       "except PermissionError as e:\n"
       "    print(json.dumps({'PermissionError': e.strerror}))\n")


def ask(run_dir: str, shared_dir: str, cmd: str) -> dict:
    """control.request(cmd) in a process of uid nobody (gid nogroup, no other group)."""
    p = subprocess.run([*AS_NOBODY, sys.executable, "-c", ASK, run_dir, shared_dir, cmd], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_a_read_group_member_reaches_the_daemon_with_the_clis_request(dirs, daemon):
    """control.request (`lb status`'s) as uid nobody in read_group: the root socket refuses it
    (EACCES), the shared one answers, as [control] read_group allows."""
    run_dir, shared_dir = dirs
    daemon(Control(read_group="nogroup"))
    assert ask(run_dir, shared_dir, "status") == {"ok": True, "did": "status"}
    reply = ask(run_dir, shared_dir, "reload")
    assert reply["refused"] is True and "needs [control] admin_group" in reply["error"]


def test_without_control_groups_a_user_is_still_refused_the_root_socket(dirs, daemon):
    """No shared socket: PermissionError, which `lb status` reports as the root socket's."""
    run_dir, shared_dir = dirs
    daemon(None)
    assert ask(run_dir, shared_dir, "status") == {"PermissionError": "Permission denied"}
