"""What a user sees when the CLI's surroundings fail: a stdout that cannot be written, a daemon
whose reply is not one, instances that cannot be told, maps of another lb version.  One line
on stderr and an exit status, never a traceback.  No daemon, no BPF: the failing parts are
stood in for (a stream, a socket server, pid files, fake maps)."""
from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lb import control
from lb.cli.main import main

REPO = Path(__file__).resolve().parents[1]


# ---- stdout --------------------------------------------------------------------------------

class FullStream(io.StringIO):
    """A stdout on a full disk: every write fails with ENOSPC."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @property
    def buffer(self):
        return self


def test_a_full_stdout_is_one_line_exit_1(monkeypatch, capsys):
    """`lb import x.cf > /dev/full`: an OSError traceback; now "lb: stdout: ..." and exit 1."""
    monkeypatch.setattr(sys, "stdout", FullStream())
    rc = main(["import", str(REPO / "configs" / "example-lvs.cf")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.splitlines()[-1] == "lb: stdout: No space left on device"
    assert "Traceback" not in err


def test_dev_full_from_a_shell(tmp_path):
    """The same through a real file descriptor: /dev/full, as the reviewer ran it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    code = "import sys; from lb.cli.main import main; sys.exit(main())"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for argv in (["import", str(REPO / "configs" / "example-lvs.cf")], ["--version"]):
        with open("/dev/full", "w") as full:
            p = subprocess.run([sys.executable, "-c", code, *argv], stdout=full, stderr=subprocess.PIPE,
                               text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
        assert p.returncode == 1, p.stderr
        assert p.stderr.splitlines()[-1] == "lb: stdout: No space left on device", p.stderr
        assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr


# ---- the daemon's reply ----------------------------------------------------------------------

class FakeDaemon:
    """A control socket that answers every request with ``reply`` (bytes, sent as they are) and
    closes: a daemon of another version, a broken one, one that dies mid-reply."""

    def __init__(self, run_dir: Path):
        self.path = str(run_dir / "fake.sock")
        self.reply = b""
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(5)
                try:
                    self.requests.append(c.makefile("rb").readline())
                    c.sendall(self.reply)
                except OSError:
                    pass             # the client gave up reading (a reply past its cap)

    def close(self):
        self.sock.close()


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    """The instance "fake"'s daemon, on tmp_path (control.request's sockets moved there)."""
    real = control.request
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(control, "request", lambda inst, cmd, **k: real(
        inst, cmd, timeout=5, run_dir=str(tmp_path), shared_dir=str(shared), **k))
    d = FakeDaemon(tmp_path)
    yield d
    d.close()


COMMANDS = {
    "status": ["status"],
    "status --json": ["status", "--json"],
    "status --wait": ["status", "--wait", "2"],
    "reload": ["reload"],
    "weight": ["weight", "web", "rs1", "3"],
    "zero": ["zero", "--dataplane", "xdp"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("reply, why", [
    (b"garbage\n", "not JSON (Expecting value: line 1 column 1 (char 0))"),
    (b'{"ok": true, "stat', "cut short (the connection closed after 18 bytes, before the end of the reply)"),
    (b"[1, 2]\n", "a JSON array, not an object"),
    (b"null\n", "a JSON null, not an object"),
    (b'"ok"\n', "a JSON string, not an object"),
    (b'{"status": {}}\n', 'no "ok" in it'),
    (b'{"ok": "yes"}\n', '"ok" is not true or false'),
    (b"[" * 100000 + b"\n", "nested too deeply"),
], ids=["garbage", "cut-short", "array", "null", "string", "no-ok", "ok-string", "deep"])
def test_a_reply_that_is_not_one_is_a_bad_reply(daemon, capsys, command, reply, why):
    """Garbage, a reply cut short, JSON that is not an object: JSONDecodeError and
    AttributeError tracebacks (or, for null, exit 1 and nothing said); now one line naming the
    instance and the socket, exit 1."""
    daemon.reply = reply
    rc = main(COMMANDS[command] + ["--instance", "fake"])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err == f"lb: instance 'fake': bad reply from the daemon on {daemon.path}: {why}\n"


STATUS = {"instance": "fake", "pid": 42, "role": "active", "dataplane": "xdp", "config": "/etc/lb/fake.toml",
          "services": [{"name": "web", "protocol": "tcp", "address": "198.18.0.10", "port": 80, "scheduler": "wlc",
                        "active": True, "fwmark": None, "monitor": "http",
                        "real_servers": [{"name": "rs1", "address": "198.18.1.11", "port": 80, "weight": 1,
                                          "health": "up", "changes": 0}]}]}


def _without(doc: dict, *path):
    """doc without the key at path (dicts and list indexes)"""
    doc = json.loads(json.dumps(doc))
    at = doc
    for k in path[:-1]:
        at = at[k]
    del at[path[-1]]
    return doc


@pytest.mark.parametrize("command", ["status", "status --wait"])
@pytest.mark.parametrize("status, why", [
    (None, "no 'status' in it"),
    ("running", "unexpected content (its status is not an object)"),
    (_without(STATUS, "pid"), "no 'pid' in it"),
    (_without(STATUS, "services"), "no 'services' in it"),
    (_without(STATUS, "services", 0, "real_servers", 0, "changes"), "no 'changes' in it"),
    (dict(STATUS, services=[dict(STATUS["services"][0], port="eighty", protocol=7)]),
     "unexpected content ('int' object has no attribute 'upper')"),
    (dict(STATUS, ownership={"last": "x", "at": 1e300, "addresses_restored": 0, "xdp_attached": 0}),
     "unexpected content (1e+300 is not a time)"),
], ids=["none", "string", "no-pid", "no-services", "no-changes", "types", "time"])
def test_a_status_without_what_lb_status_prints_is_a_bad_reply(daemon, capsys, command, status, why):
    """{"ok": true} alone, or a status without a key `lb status` prints: a KeyError traceback
    (after some of the status printed); now one line, nothing on stdout, exit 1."""
    daemon.reply = json.dumps({"ok": True} if status is None else {"ok": True, "status": status}).encode() + b"\n"
    rc = main(COMMANDS[command] + ["--instance", "fake"])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err == f"lb: instance 'fake': bad reply from the daemon on {daemon.path}: {why}\n"


def test_a_whole_status_is_printed(daemon, capsys):
    daemon.reply = json.dumps({"ok": True, "status": STATUS}).encode() + b"\n"
    assert main(["status", "--instance", "fake"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[0].startswith("instance fake  pid 42  role active")
    assert "  -> rs1" in out
    assert main(["status", "--instance", "fake", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("reply, message", [
    ({"ok": False}, "lb: the daemon refused the request (no reason given)"),
    ({"ok": False, "error": None}, "lb: the daemon refused the request (no reason given)"),
    ({"ok": False, "error": ""}, "lb: the daemon refused the request (no reason given)"),
    ({"ok": False, "error": "refused: uid 65534 may not use this control socket"},
     "lb: refused: uid 65534 may not use this control socket"),
], ids=["no-error", "null-error", "empty-error", "error"])
def test_a_refusal_says_why_or_that_no_reason_was_given(daemon, capsys, command, reply, message):
    """{"ok": false} without an error printed "lb: None"."""
    daemon.reply = json.dumps(reply).encode() + b"\n"
    rc = main(COMMANDS[command] + ["--instance", "fake"])
    out, err = capsys.readouterr()
    assert (rc, out, err) == (1, "", message + "\n")


def test_a_reply_past_the_cap_is_refused_not_read_for_ever(daemon, capsys, monkeypatch):
    """The client read a reply without a bound; now at most control.MAX_REPLY bytes."""
    monkeypatch.setattr(control, "MAX_REPLY", 4 << 20)
    daemon.reply = b'{"ok": true, "status": "' + b"x" * (8 << 20) + b'"}\n'
    rc = main(["status", "--instance", "fake"])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err == f"lb: instance 'fake': bad reply from the daemon on {daemon.path}: longer than 4 MiB\n"
    assert control.MAX_REPLY == 4 << 20 and control._size(256 << 20) == "256 MiB"


def test_the_reply_cap_holds_the_largest_status():
    """MAX_REPLY against the largest `lb status` reply a configuration can ask for: every real
    server's status at its longest (details quoting SNIP characters of a reply), as many real
    servers as the largest configuration file can name."""
    from lb.config.toml import MAX_FILE_BYTES
    from lb.health.checks import SNIP

    detail = "HTTP 503 from [2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535: expected 200; reply began " + "x" * SNIP
    real = {"name": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "address": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "port": 65535, "active": True, "weight": 65535, "weight_source": "load monitor",
            "configured_weight": 65535, "health": "unmonitored", "changes": 10 ** 9, "downs": 10 ** 9,
            "ups": 10 ** 9, "checks": 10 ** 9, "failures": 10 ** 9, "not_run": 10 ** 9,
            "last_not_run": {"detail": "not run on this director: " + detail, "at": 1.7e9},
            "reason": detail, "dynamic_weight": 65535, "override": 65535,
            "load": {"kind": "snmp", "ok": False, "detail": detail, "at": 1.7e9, "weight": 65535},
            "since": 1.7e9, "last_check": {"ok": False, "detail": detail, "at": 1.7e9, "duration": 1.234567}}
    per_real = len(json.dumps(real)) + 2
    # the shortest real server a file can name: {address="1.1.1.1"}, (TOML's inline tables)
    most_reals = MAX_FILE_BYTES // len('{address="1.1.1.1"},')
    assert per_real * most_reals < control.MAX_REPLY / 2, (per_real, most_reals)
