"""`lb stop -c FILE` and `lb status --config FILE` need only the instance the file names: a file with
errors elsewhere (a typo in a real server's weight) still tells it, read alone, with a note; one
that cannot tell it says to name it with --instance."""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

from lb import control, instance
from lb.cli.main import main
from control_util import one_reply_daemon

REPO = Path(__file__).resolve().parents[1]

TOML = """\
[global]
instance = "edge1"
public_interface = "pub0"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
  [[virtual_server.real_server]]
  address = "198.18.1.11"
  weight = "heavy"
"""

LVSCF = """\
network = direct
lb_instance = edge2
lb_public_interface = pub0

virtual web {
     address = 198.18.0.10 pub0
     port = 80
     scheduler = nope
     server rs1 {
          address = 198.18.1.11
     }
}
"""

KEEPALIVED = """\
global_defs {
    router_id EDGE3
    lb_public_interface pub0
}
virtual_server 198.18.0.10 80 {
    lb_algo nope
    lb_kind DR
    protocol TCP
    real_server 198.18.1.11 80 { }
}
"""


@pytest.fixture
def asked(monkeypatch):
    """The instances lb stop and lb status turned to (none runs)."""
    seen: list[tuple[str, str]] = []

    def pid(inst, *a, **k):
        seen.append(("stop", inst))
        raise instance.NotRunning(f"instance {inst!r} is not running")

    def request(inst, cmd, **k):
        seen.append((cmd, inst))
        raise control.NotRunning(f"instance {inst!r} is not running")
    monkeypatch.setattr(instance, "running_pid", pid)
    monkeypatch.setattr(control, "request", request)
    return seen


@pytest.mark.parametrize("name, text, inst, key", [
    ("lb.toml", TOML, "edge1", "[global] instance"),
    ("lvs.cf", LVSCF, "edge2", "lb_instance"),
    ("keepalived.conf", KEEPALIVED, "edge3", "global_defs router_id"),
])
def test_a_file_with_errors_still_names_its_instance(tmp_path, asked, capsys, name, text, inst, key):
    path = tmp_path / name
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 2
    capsys.readouterr()
    assert main(["stop", "--config", str(path)]) == 1
    assert main(["status", "--config", str(path)]) == 1
    assert asked == [("stop", inst), ("status", inst)]
    err = capsys.readouterr().err
    assert f"has errors (`lb check -c {path}`); instance {inst!r} read from its {key} alone" in err
    assert "Traceback" not in err


def test_a_file_that_cannot_tell_its_instance_says_use_instance(tmp_path, asked, capsys):
    path = tmp_path / "lb.toml"
    path.write_text(TOML.replace('instance = "edge1"', 'instance = "edge1'))   # not TOML
    assert main(["stop", "--config", str(path)]) == 2
    assert asked == []
    err = capsys.readouterr().err
    assert "its [global] instance cannot be read alone: name the instance with --instance" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace('"edge1"', '"../edge1"'))
    assert main(["status", "--config", str(bad)]) == 2 and asked == []


@pytest.mark.parametrize("command", ["stop", "status", "reload", "weight"])
def test_help_says_config_only_names_the_instance(command, capsys):
    """`lb reload --config new.toml` re-reads the daemon's own file, not new.toml; the help said
    nothing of --config (nor --instance), so an operator could take it for the file to load."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--config CONFIG a config file, read only for the instance it names; the daemon keeps the file it " \
           "was started with (lb reload re-reads that one)" in text
    assert "--instance INSTANCE the daemon's instance (default: the one running, else default)" in text


@pytest.mark.parametrize("argv", [["status"], ["stop"], ["reload"], ["list"], ["zero"], ["check", "--config", "x.toml"]])
@pytest.mark.parametrize("name", ["../x", "Edge1", "a b", "x" * 33])
def test_an_instance_that_is_no_instance_name_is_refused(asked, capsys, argv, name):
    """--instance names a path (/run/lb/NAME.sock, /sys/fs/bpf/lb/NAME): `lb status --instance
    ../x` asked /run/lb/../x.sock.  A name [global] instance would refuse is a usage error."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--instance", name])
    assert e.value.code == 2 and asked == []
    err = capsys.readouterr().err
    assert f"argument --instance: {name!r} is not an instance name" in err and "Traceback" not in err


@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "-inf", "soon"])
def test_status_wait_takes_a_finite_number_of_seconds(asked, capsys, wait):
    """`lb status --wait nan` waited for ever (no deadline compares true with nan): refused by
    the command line, exit 2, before anything is asked."""
    with pytest.raises(SystemExit) as e:
        main(["status", "--instance", "edge1", f"--wait={wait}"])
    assert e.value.code == 2 and asked == []
    err = capsys.readouterr().err
    assert f"argument --wait: '{wait}'" in err and "Traceback" not in err


def test_status_pid_without_wait_is_a_usage_error(asked, capsys):
    """`lb status --pid PID` (no --wait) asked once and ignored --pid without a word: refused by
    the command line, exit 2, before anything is asked."""
    with pytest.raises(SystemExit) as e:
        main(["status", "--instance", "edge1", "--pid", str(os.getpid())])
    assert e.value.code == 2 and asked == []
    err = capsys.readouterr().err
    assert "usage: lb status" in err and "argument --pid: only with --wait" in err and "Traceback" not in err


@pytest.mark.parametrize("pid", ["0", "-1", "me"])
def test_status_pid_is_a_process_id(asked, capsys, pid):
    """--pid 0 was taken as no --pid (and -1 as a process that always runs)."""
    with pytest.raises(SystemExit) as e:
        main(["status", "--instance", "edge1", "--wait", "5", f"--pid={pid}"])
    assert e.value.code == 2 and asked == []
    assert f"argument --pid: '{pid}'" in capsys.readouterr().err


def test_status_wait_0_with_pid_says_the_process_exited(asked, capsys):
    """`--wait 0 --pid PID`: one ask, and --pid honoured (it was ignored with --wait 0)."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(p.stdout)
    assert main(["status", "--instance", "edge1", "--wait", "0", "--pid", str(gone)]) == 1
    assert asked == [("status", "edge1")]
    assert f"process {gone} exited before it was ready" in capsys.readouterr().err


# ---- which instance: the running daemons first ---------------------------------------------

@pytest.fixture
def host(tmp_path, monkeypatch, asked):
    """/run/lb, /run/lb-control and /sys/fs/bpf/lb moved into tmp_path: ``run(name)`` makes a
    daemon of that instance (its pid file locked by this process, as `lb run` holds it),
    ``pin(name)`` a pin directory (an XDP data plane's, its daemon running or not)."""
    from lb.dataplane import maps

    d = types.SimpleNamespace(run_dir=tmp_path / "run", shared=tmp_path / "shared", pins=tmp_path / "bpf" / "lb",
                              held=[])
    for p in (d.run_dir, d.shared, d.pins):
        p.mkdir(parents=True)
    monkeypatch.setattr(instance, "RUN_DIR", str(d.run_dir))
    monkeypatch.setattr(control, "SHARED_DIR", str(d.shared))
    monkeypatch.setattr(maps, "PIN_ROOT", str(d.pins))

    def run(name):
        fd = os.open(d.run_dir / f"{name}.pid", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        d.held.append(fd)

    d.run = run
    d.pin = lambda name: (d.pins / name).mkdir()
    d.asked = asked
    yield d
    for fd in d.held:
        os.close(fd)


def test_an_ipvs_daemon_is_found_without_pinned_maps(host, capsys):
    """Discovery looked at /sys/fs/bpf/lb only: a daemon of the ipvs data plane (nothing pinned)
    was "instance 'default' is not running" while instance "web" ran."""
    host.run("web")
    assert main(["status"]) == 1           # asked "web" (the stand-in says it is not running)
    assert host.asked == [("status", "web")]
    assert "instance 'web' is not running" in capsys.readouterr().err


def test_discovery_never_locks_a_pid_file(host, monkeypatch):
    """Discovery reads /proc/locks: a lock of its own on a pid file, however short, could make a
    daemon starting at that moment (`lb run` then `lb status --wait`) find its lock taken."""
    host.run("web")

    def flock(fd, op):
        raise AssertionError("discovery took a lock")
    monkeypatch.setattr(instance.fcntl, "flock", flock)
    assert instance.running_instances(str(host.run_dir)) == ["web"]
    assert main(["status"]) == 1 and host.asked == [("status", "web")]


def test_the_running_pid_is_found_without_locking_its_file(tmp_path, monkeypatch):
    """`lb stop`, `lb reload --signal` and `lb list --rate` asked the pid file's lock itself (a
    shared lock, taken if free): a daemon starting at that instant -- systemd's restart while a
    monitoring script runs `lb list --rate` -- found its lock taken, refused to start
    ("already running") and the unit failed.  /proc/locks says who holds it instead."""
    run_dir = str(tmp_path / "run")
    lock = instance.InstanceLock("t", run_dir).acquire()

    def flock(fd, op):
        raise AssertionError("running_pid took a lock")
    try:
        monkeypatch.setattr(instance.fcntl, "flock", flock)
        assert instance.running_pid("t", run_dir) == os.getpid()
    finally:
        monkeypatch.undo()
        lock.release(unlink=False)
    monkeypatch.setattr(instance.fcntl, "flock", flock)
    with pytest.raises(instance.NotRunning, match="no lb holds it: a stale file"):
        instance.running_pid("t", run_dir)               # the file left, its lock not held
    # no /proc/locks: the lock is asked, as before
    monkeypatch.undo()
    monkeypatch.setattr(instance, "_flock_holders", lambda: None)
    with pytest.raises(instance.NotRunning, match="no lb holds it: a stale file"):
        instance.running_pid("t", run_dir)
    lock = instance.InstanceLock("t", run_dir).acquire()
    try:
        assert instance.running_pid("t", run_dir) == os.getpid()
    finally:
        lock.release()


def test_a_pin_directory_without_its_daemon_is_not_running(host, capsys):
    """A pin directory left by a crashed or --keep-dataplane instance counted as running:
    "several instances are running (old, web)" beside the one daemon."""
    host.run("web")
    host.pin("web")
    host.pin("old")
    (host.run_dir / "gone.pid").write_text("999999\n")     # a pid file nobody holds: stale
    (host.run_dir / "web.exabgp.pid").write_text("1\n")   # the BGP speaker's, not an instance
    assert main(["status"]) == 1 and main(["stop"]) == 1
    assert host.asked == [("status", "web"), ("stop", "web")]
    # lb list reads the running daemon's maps
    from lb.cli import main as cli

    assert cli._map_instances() == (["web"], True)
    assert cli._instance(types.SimpleNamespace(), maps=True) == "web"


def test_several_daemons_say_pick_one(host):
    host.run("a")
    host.run("b")
    with pytest.raises(SystemExit, match=r"several instances are running \(a, b\): pick one with --instance"):
        main(["status"])
    assert host.asked == []


def test_no_daemon_status_asks_default_and_list_reads_the_pinned_maps(host, capsys):
    """With no daemon, `lb status` asks "default" (not a pin directory's instance), and `lb
    list` reads the maps a daemon left (the one reader of a data plane whose daemon is gone)."""
    from lb.cli import main as cli

    host.pin("kept")
    assert main(["status"]) == 1 and host.asked == [("status", "default")]
    assert cli._map_instances() == (["kept"], False)
    assert cli._instance(types.SimpleNamespace(), maps=True) == "kept"
    host.pin("other")
    with pytest.raises(SystemExit, match=r"several instances have pinned maps, and no daemon runs \(kept, other\)"):
        cli._instance(types.SimpleNamespace(), maps=True)


def test_status_wait_finds_a_daemon_that_starts_meanwhile(host, capsys, monkeypatch):
    """`lb status --wait` without --instance looks for the instance again while it waits: a
    daemon started just before takes its pid file a moment later."""
    seen = []

    def request(inst, cmd, **k):
        seen.append(inst)
        if len(seen) == 2:
            host.run("web")
        if inst == "web":
            return {"ok": True, "status": {"instance": "web", "pid": 1, "role": "active", "config": "x",
                                           "services": []}}
        raise control.NotRunning(f"instance {inst!r} is not running")
    monkeypatch.setattr(control, "request", request)
    assert main(["status", "--wait", "5"]) == 0
    assert seen[:2] == ["default", "default"] and seen[-1] == "web"
    assert capsys.readouterr().out.startswith("instance web  pid 1")


def test_a_user_who_may_not_read_run_lb_finds_the_daemons_shared_socket(host, capsys, monkeypatch):
    """/run/lb is root's (0700): a read_group member's `lb status` found nothing (a PermissionError
    traceback from /sys/fs/bpf); the daemons' shared sockets that answer name the instance."""
    def denied(run_dir=None):
        raise PermissionError(13, "Permission denied", run_dir)
    monkeypatch.setattr(instance, "running_instances", denied)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(host.shared / "dead.sock"))        # a crashed daemon's socket file
    stale.close()
    # alone, it is not probed (a probe costs a daemon that refuses this user a warning): the
    # request says it
    assert main(["status"]) == 1
    assert capsys.readouterr().err.startswith("lb: instance 'dead' is not running")
    (host.shared / "dead.sock").unlink()
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err == (f"lb: cannot tell which instance runs: {host.run_dir}: permission denied, and no daemon "
                   f"answers in {host.shared} (where [control]'s groups reach it): run as root, or name the "
                   f"instance with --instance\n")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(host.shared / "dead.sock"))        # beside a live one: probed, and left out
    stale.close()
    host.asked.clear()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(host.shared / "web.sock"))
    live.listen(4)
    try:
        assert main(["status"]) == 1 and host.asked == [("status", "web")]
    finally:
        live.close()


# ---- as a user who is not root ----------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
HARNESS = """
import sys
from lb import control, instance
from lb.dataplane import maps
run_dir, shared, pins = sys.argv[1:4]
instance.RUN_DIR, control.SHARED_DIR, maps.PIN_ROOT = run_dir, shared, pins
control.request.__defaults__ = (5.0, run_dir, shared)
from lb.cli.main import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="switching to uid nobody needs root")
def test_not_root_one_line_and_the_shared_socket(tmp_path, request):
    """As uid nobody, with /run/lb and /sys/fs/bpf root's (0700): `lb status` reaches the daemon
    on its shared socket ([control] read_group), `lb list`/`lb zero` say that the pinned maps
    need root, and with no daemon that answers every command says what it cannot tell: one line,
    exit 1 (a PermissionError or BpfError EPERM traceback)."""
    run_dir, bpf = tmp_path / "run", tmp_path / "bpf"       # tmp_path is root's, 0700
    for p in (run_dir, bpf / "lb" / "web"):
        p.mkdir(parents=True)
    shared = Path(tempfile.mkdtemp(prefix="lb-control-"))     # /run/lb-control: 0755, nobody reaches it
    os.chmod(shared, 0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    pins = str(bpf / "lb")

    def lb(*argv):
        p = subprocess.run([*NOBODY, sys.executable, "-c", HARNESS, str(run_dir), str(shared), pins, *argv],
                           capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
        assert "Traceback" not in p.stderr, p.stderr
        return p.returncode, p.stdout, p.stderr

    cannot_tell = (f"lb: cannot tell which instance runs: {run_dir}: permission denied, and no daemon answers in "
                   f"{shared} (where [control]'s groups reach it): run as root, or name the instance with "
                   f"--instance\n")
    maps_need_root = f"lb: cannot read lb's pinned maps in {pins}: permission denied (run as root)\n"
    for argv in (["status"], ["stop"], ["reload"], ["weight", "web", "rs1", "2"]):
        assert lb(*argv) == (1, "", cannot_tell), argv
    for argv in (["list", "-n"], ["list", "-c"], ["zero"], ["list", "--instance", "web"]):
        assert lb(*argv) == (1, "", maps_need_root), argv

    # a daemon whose [control] read_group lets the user in: its shared socket answers
    status = {"instance": "web", "pid": 7, "role": "active", "config": "/etc/lb/web.toml", "services": []}
    srv = one_reply_daemon(shared / "web.sock", {"ok": True, "status": status})
    try:
        rc, out, err = lb("status")
        assert (rc, err) == (0, "") and out.startswith("instance web  pid 7  role active"), err
        assert lb("list", "-n") == (1, "", maps_need_root)
    finally:
        srv.close()


def test_status_wait_reads_a_config_once(tmp_path, asked, capsys):
    """`lb status --wait -c FILE` with errors in FILE: its note once, not at every 0.1 s try."""
    path = tmp_path / "lb.toml"
    path.write_text(TOML)
    assert main(["status", "--config", str(path), "--wait", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.count("has errors") == 1 and "instance 'edge1' not ready within 0.5 s" in err, err
    assert len(asked) > 1 and set(asked) == {("status", "edge1")}


def test_a_lone_shared_socket_is_not_probed_several_are(tmp_path):
    """A probe of a daemon whose [control] groups the user is not in costs that daemon a refusal
    and a warning in its log: with one shared socket the request itself tells, so none is made."""
    import socket

    from lb import control

    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "web.sock").write_bytes(b"")            # not even a socket: never connected to
    assert control.answering(str(lone)) == ["web"]
    several = tmp_path / "several"
    several.mkdir()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(several / "a.sock"))
    live.listen(1)
    (several / "b.sock").write_bytes(b"")           # a crashed daemon's leftover: refused
    try:
        assert control.answering(str(several)) == ["a"]
    finally:
        live.close()
