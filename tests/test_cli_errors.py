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


def test_ctrl_c_while_waiting_is_quiet_exit_130(monkeypatch, capsys):
    """Ctrl-C during `lb status --wait 60` (a daemon that does not come up; `lb stop` waiting
    for one to exit alike): a KeyboardInterrupt traceback; now nothing said and 130, the
    status of a command SIGINT ended, as ipvsadm's."""
    import types

    import lb.cli.main as cli_main

    def interrupted(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "time", types.SimpleNamespace(monotonic=cli_main.time.monotonic,
                                                                sleep=interrupted))
    monkeypatch.setattr(control, "request", lambda inst, cmd, **k: (_ for _ in ()).throw(
        control.NotRunning(f"instance {inst!r} is not running")))
    rc = main(["status", "--wait", "60", "--instance", "nowhere"])
    out, err = capsys.readouterr()
    assert (rc, out, err) == (130, "", "")


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


# ---- maps of another lb version ----------------------------------------------------------------

class FakeMap:
    """A pinned map as lb.dataplane.maps.BpfMap reads it, from a dict of entries."""

    def __init__(self, name, key_size, value_size, percpu=False, entries=None):
        self.name, self.key_size, self.value_size, self.percpu = name, key_size, value_size, percpu
        self.entries = dict(entries or {})
        self.max_entries = max(len(self.entries), 1)
        self.type = 6 if percpu else 1
        self.closed = False

    def get(self, key):
        return self.entries.get(key)

    def get_percpu(self, key):
        v = self.entries.get(key)
        return [] if v is None else [v, v]

    # the raw reads (every CPU's value, padded to 8), one by one or many (lb list reads ahead)
    @property
    def ncpus(self):
        return 2 if self.percpu else 1

    @property
    def slot(self):
        return (self.value_size + 7) & ~7 if self.percpu else self.value_size

    def get_raw(self, key):
        v = self.entries.get(key)
        return None if v is None else v.ljust(self.slot, b"\0") * self.ncpus

    def get_many_raw(self, keys):
        return [self.get_raw(k) for k in keys]

    def items(self, batch=None):
        return list(self.entries.items())

    def dump(self):
        from lb.dataplane.maps import _bpfbatch

        ffi = _bpfbatch.ffi
        keys = b"".join(self.entries) or b"\0"
        values = b"".join(self.entries.values()) or b"\0"
        return ffi.new("char[]", keys), ffi.new("char[]", values), len(self.entries)

    def close(self):
        self.closed = True


PERCPU = ("lb_svc_stats", "lb_real_stats", "lb_counters", "lb_ct_events")


def fake_maps(**override):
    """Every map `lb list` opens, empty but for lb_timeouts, in this lb's layout; ``override``:
    name -> (key size, value size) of another lb version, or a FakeMap."""
    from lb.dataplane import layout as L
    from lb.dataplane.maps import MAP_NAMES

    out = {}
    for name in (*MAP_NAMES, "lb_conns"):
        if name in L.MAPS:
            k, v = L.MAPS[name][0].size, L.MAPS[name][1].size
        elif name in L.LIST_MAPS:
            k, v = 4, L.LIST_MAPS[name].size * 64
        else:
            k, v = 4, 64
        entries = {}
        if name == "lb_timeouts":
            entries = {L.U32.pack(i): L.U32.pack(900) for i in range(L.N_TIMEOUTS)}
        m = override.get(name)
        out[name] = m if isinstance(m, FakeMap) else FakeMap(name, *(m or (k, v)), name in PERCPU, entries)
    return out


@pytest.fixture
def pinned(tmp_path, monkeypatch):
    """Instance "web"'s pin directory in tmp_path, its maps FakeMaps: ``pinned(**override)``."""
    from lb.dataplane import maps

    root = tmp_path / "bpf" / "lb"
    (root / "web").mkdir(parents=True)
    monkeypatch.setattr(maps, "PIN_ROOT", str(root))
    monkeypatch.setattr(control, "request", lambda inst, cmd, **k: (_ for _ in ()).throw(
        control.NotRunning(f"instance {inst!r} is not running")))
    held = {}

    def setup(**override):
        held.clear()
        held.update(fake_maps(**override))
        for name in held:
            (root / "web" / name).touch()
        return held
    monkeypatch.setattr(maps.BpfMap, "open_pinned", classmethod(lambda cls, path: held[os.path.basename(path)]))
    setup.dir = root / "web"
    return setup


LIST_COMMANDS = {
    "list": ["list", "-n"], "list -c": ["list", "-c"], "list -c --json": ["list", "-c", "--json"],
    "list --stats": ["list", "--stats"], "list --counters": ["list", "--counters"], "list --save": ["list", "--save"],
    "list --timeout": ["list", "--timeout"], "zero": ["zero"], "zero -f": ["zero", "-f", "21"],
}


@pytest.mark.parametrize("command", LIST_COMMANDS)
@pytest.mark.parametrize("override, differs", [
    ({"lb_svc": (4, 80)}, "lb_svc: values of 80 bytes, not 68"),
    ({"lb_services": (36, 4)}, "lb_services: keys of 36 bytes, not 20"),
    ({"lb_conns": (40, 56)}, "lb_conns: values of 56 bytes, not 64"),
    ({"lb_svc_dests": (4, 100)}, "lb_svc_dests: values of 100 bytes, not a multiple of 12"),
    ({"lb_counters": (8, 4)}, "lb_counters: keys of 8 bytes, not 4 and values of 4 bytes, not 8"),
], ids=["svc", "services-key", "conns", "dests", "counters"])
def test_maps_of_another_lb_version_are_named_not_a_traceback(pinned, capsys, command, override, differs):
    """`lb list` (and `lb zero`) on maps pinned by another lb version unpacked values without a
    size check (struct.error), or raised RuntimeError("...layout differs...") from the C
    listing: now one line naming the map and what differs, exit 1, nothing listed."""
    held = pinned(**override)
    rc = main(LIST_COMMANDS[command] + ["--instance", "web", "--dataplane", "xdp"])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err == (f"lb: {pinned.dir}/{differs} as this lb reads it: the maps were pinned by another lb version "
                   f"(list them with that version's lb, or restart the instance with this one)\n")
    assert all(m.closed for name, m in held.items() if name != "lb_progs")      # (lb_progs is never opened)


def test_maps_in_this_lb_layout_list(pinned, capsys):
    pinned()
    assert main(["list", "-n", "--instance", "web", "--dataplane", "xdp"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("IP Virtual Server version")


def _conn_to_real(real: int) -> tuple[bytes, bytes]:
    import ipaddress
    import time

    from lb.dataplane import layout as L

    key = L.ConnKey(ipaddress.ip_address("198.18.0.4"), ipaddress.ip_address("198.18.0.10"), 40000, 80, 6).pack()
    value = L.Conn(time.monotonic_ns(), real, 0, 900, 0, 3, 0, bytes(6), bytes(6)).pack()
    return key, value


@pytest.mark.parametrize("fast", [False, True], ids=["python", "c"])
def test_a_connection_to_a_real_server_outside_lb_reals_is_named(pinned, capsys, monkeypatch, fast):
    """An out-of-range real server id in a connection: ValueError from the C listing, a
    TypeError (None unpacked) from the Python one; now one line naming the map, exit 1."""
    from lb.dataplane import layout as L
    from lb.dataplane import maps

    if fast and not maps.have_batch():
        pytest.skip("lb._bpfbatch is not built")
    monkeypatch.setattr(maps, "have_batch", lambda: fast)
    reals = {L.U32.pack(i): bytes(L.REAL.size) for i in range(2)}
    k, v = _conn_to_real(99)
    pinned(lb_conns=FakeMap("lb_conns", 40, 64, entries={k: v}), lb_reals=FakeMap("lb_reals", 4, 76, entries=reals))
    rc = main(["list", "-c", "--instance", "web", "--dataplane", "xdp"] + ([] if fast else ["--json"]))
    out, err = capsys.readouterr()
    assert rc == 1
    if fast:     # the header was out before the entry was read
        assert out == "IPVS connection entries\npro expire state       source             virtual            destination\n"
        assert err == ("lb: lb_conns entry 0 names real server id 99, outside lb_reals (2 entries): the maps are "
                       "not lb's as this version writes them\n")
    else:
        assert out == ""
        assert err == ("lb: a connection names lb_reals entry 99, which lb_reals lacks: the maps are not lb's "
                       "as this version writes them\n")


def test_a_service_without_its_lb_svc_entry_is_named(pinned, capsys):
    from lb.dataplane import layout as L

    svc_key = bytes(L.SVC_KEY.size)
    pinned(lb_services=FakeMap("lb_services", 20, 4, entries={svc_key: L.U32.pack(7)}))
    rc = main(["list", "-n", "--instance", "web", "--dataplane", "xdp"])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err == ("lb: lb_services names lb_svc entry 7, which lb_svc lacks: the maps are not lb's as this "
                   "version writes them\n")


def test_the_daemons_stdout_is_not_guarded(monkeypatch):
    """lb run and lb web are event loops: a stdout error in one of their tasks must not become a
    BaseException that stops the loop (they log to stderr); the commands that print and exit
    are guarded."""
    from lb.cli import main as cli

    seen = []
    monkeypatch.setattr(cli, "_main", lambda argv: seen.append(isinstance(sys.stdout, cli._Guarded)) or 0)
    for argv in (["run", "--config", "x.toml"], ["web", "--instance", "web"], ["status", "--instance", "web"],
                 ["list", "-n"]):
        assert cli.main(argv) == 0
    assert seen == [False, False, True, True]
