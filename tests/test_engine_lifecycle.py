"""`lb run` from start to stop (lb.engine.run) on a recording data plane, with this host's
addresses and neighbours left alone: what a stop leaves behind whatever happens meanwhile -- a
second signal during the teardown, a part of the start that fails once the data plane is
attached, a start that fails with a VIP that was on the interface before lb -- and what the
daemon answers while it stops."""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lb import config as lbconfig
from lb import engine as lbengine
from lb.ha import addresses
from lb.ha import announce as ha_announce
from test_override import RecordingDataplane, write

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

EVENTS: list[str] = []       # what the data plane and the addresses went through, in order


class StartingDataplane(RecordingDataplane):
    """A recording data plane that can also be started and stopped: load, attach, detach, unpin."""

    adopted = False
    created = True
    displaced = ()

    def __init__(self, *_a, **_kw):
        super().__init__()
        self.attached: dict = {}
        self.services = ()

    def load(self):
        EVENTS.append("load")

    def attach(self, ifname, side, mode):
        EVENTS.append(f"attach {ifname}")
        self.attached[ifname] = side

    def detach_all(self):
        EVENTS.append("detach_all")
        self.attached = {}

    def unpin(self):
        EVENTS.append("unpin")

    def close(self):
        EVENTS.append("close")

    def lease(self, seconds):
        pass

    def lease_left(self):
        return None

    def claim(self, addrs):
        pass

    def finish_resize(self):
        return False

    def finish_drains(self):
        return 0

    def sched_base_pending(self):
        return False

    def counters(self):
        return {}


def patch_host(setattr_, run_dir: str, dataplane=StartingDataplane) -> None:
    """The engine's reach into this host, replaced (``setattr_``: monkeypatch.setattr, or the
    builtin in a child process): its run directory, its data plane, the addresses it takes and
    the neighbours it tells."""
    EVENTS.clear()
    setattr_(lbengine, "RUN_DIR", run_dir)
    setattr_(lbengine, "SHARED_DIR", os.path.join(run_dir, "shared"))
    setattr_(lbengine, "IpvsDataplane", dataplane)
    setattr_(addresses, "check", lambda addrs: None)
    setattr_(addresses, "take", lambda addrs: EVENTS.append(f"take {sorted(str(a.address) for a in addrs)}")
             or list(addrs))
    setattr_(addresses, "release", lambda addrs: EVENTS.append(
        f"release {sorted(str(a.address) for a in addrs)}"))
    setattr_(addresses, "restore", lambda addrs: ([], []))
    setattr_(addresses, "present", lambda addrs: [])
    setattr_(ha_announce, "warm_up_in_background", lambda: None)
    setattr_(ha_announce, "warm_up", lambda: None)
    setattr_(ha_announce, "announce", lambda *a, **kw: 0)


# ---- a second signal while stopping ----------------------------------------------------------

def second_signal_child(run_dir: str, config: str, signame: str) -> int:
    """In a process of its own: `lb run` asked to stop (SIGINT) while it starts, and sent
    ``signame`` again while the stop detaches the data plane."""
    import logging
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    second = signal.Signals[signame]

    class Dataplane(StartingDataplane):
        def load(self):
            super().load()
            os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C while starting: stop once started

        def detach_all(self):
            os.kill(os.getpid(), second)            # and again while stopping
            time.sleep(0.1)                         # (its handler runs now)
            super().detach_all()

    patch_host(setattr, run_dir, Dataplane)
    rc = lbengine.run(lbconfig.load(config), dataplane="ipvs")
    print("EVENTS", EVENTS, flush=True)
    return rc


def change_of_mind_child(run_dir: str, config: str, first: str, second: str) -> int:
    """In a process of its own: `lb run` asked to stop (``first``) while it starts, and sent
    ``second`` while the loop's own parts stop (the BGP drain, metrics, pulse ...)."""
    import asyncio
    import logging
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")

    class Dataplane(StartingDataplane):
        def load(self):
            super().load()
            os.kill(os.getpid(), signal.Signals[first])

    stop_running = lbengine.Engine._stop_running

    async def late(self, blocking, started):
        os.kill(os.getpid(), signal.Signals[second])
        await asyncio.sleep(0.1)                    # (its handler runs now)
        await stop_running(self, blocking, started)
    lbengine.Engine._stop_running = late
    patch_host(setattr, run_dir, Dataplane)
    rc = lbengine.run(lbconfig.load(config), dataplane="ipvs")
    print("EVENTS", EVENTS, flush=True)
    return rc


@pytest.mark.parametrize("first, second, kept", [("SIGINT", "SIGUSR2", False), ("SIGUSR2", "SIGINT", True)])
def test_the_first_stop_asked_for_decides_its_kind(tmp_path, first, second, kept):
    """`lb stop` then `lb stop --keep-dataplane` (or the other way) while the loop's parts stop:
    the second changed the kind half-way -- a restart that was to keep every connection became
    a clean stop, or a clean stop left XDP attached.  The first decides; the second is said."""
    config = write(tmp_path / "lb.toml", instance=f"mind{os.getpid() % 10000}")
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]; import test_engine_lifecycle as t; "
            f"sys.exit(t.change_of_mind_child({str(tmp_path)!r}, {str(config)!r}, {first!r}, {second!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}"))
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Traceback" not in out, out
    assert "a second request" in out and "is ignored" in out, out
    events = out.split("EVENTS ", 1)[1]
    assert ("'detach_all'" in events) is not kept and ("'unpin'" in events) is not kept, out


@pytest.mark.parametrize("second", ["SIGINT", "SIGHUP", "SIGTERM", "SIGUSR2"])
def test_a_second_signal_during_the_stop_lets_it_complete(tmp_path, second):
    """The first signal stops lb; a second one (Ctrl-C twice, a SIGHUP, systemd's SIGTERM) while
    the data plane is being detached is said once in the log and the stop completes: XDP
    detached, addresses released, maps unpinned, exit 0.  It used to kill lb half-way (asyncio,
    closing its loop, had put back SIGTERM's and SIGHUP's default action, and SIGINT's
    KeyboardInterrupt)."""
    config = write(tmp_path / "lb.toml", instance=f"sig{os.getpid() % 10000}")
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]; import test_engine_lifecycle as t; "
            f"sys.exit(t.second_signal_child({str(tmp_path)!r}, {str(config)!r}, {second!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}"))
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "Traceback" not in out, out
    assert out.count("is stopping already") == 1, out
    assert f"is stopping already: {second} ignored" in out, out
    events = out.split("EVENTS ", 1)[1]
    assert "'detach_all', \"release ['198.18.0.10/32', '198.18.1.254/24']\", 'unpin', 'close'" in events, out


# ---- a part of the start made in the loop fails ----------------------------------------------

@pytest.fixture
def signals():
    """lb.engine.run sets the process's signal handlers: the test's are put back after."""
    saved = {sig: signal.getsignal(sig) for sig in lbengine.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


HA = """
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
key_file = "{key}"
heartbeat_port = {port}
sync = false
"""

IP_FREEBIND = 15


def assert_stopped_cleanly(caplog, released="['198.18.0.10/32', '198.18.1.254/24']") -> None:
    """The data plane detached, the addresses released (those this start added), the maps
    unpinned; no traceback."""
    assert EVENTS[-4:] == ["detach_all", f"release {released}", "unpin", "close"], EVENTS
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO], caplog.text


def test_a_heartbeat_port_held_by_another_program_stops_lb_cleanly(tmp_path, monkeypatch, signals, caplog):
    """Piranha's pulse still holds the heartbeat port: `lb run` says so in one line naming
    [ha] heartbeat_port, exits 2, and the data plane it had attached and pinned goes (it used
    to die of the OSError's traceback, leaving it all behind), but not the addresses it did not
    add (the failed start released every VIP of the config, Piranha's too)."""
    from lb.ha import pulse
    patch_host(monkeypatch.setattr, str(tmp_path))
    monkeypatch.setattr(pulse, "local_addresses", lambda: {ipaddress.ip_address("198.18.0.1")})
    key = tmp_path / "ha.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:       # no SO_REUSEADDR: as pulse
        other.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)                    # (the address is not here)
        other.bind(("198.18.0.1", 0))
        port = other.getsockname()[1]
        path = write(tmp_path / "lb.toml", instance="hbport", extra=HA.format(key=key, port=port))
        with caplog.at_level(logging.INFO, logger="lb"):
            rc = lbengine.run(lbconfig.load(path), dataplane="ipvs")
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    line = path.read_text().splitlines().index(f"heartbeat_port = {port}") + 1     # file:line: field
    assert errors == [f"{path}:{line}: ha.heartbeat_port: {port}: 198.18.0.1:{port}/udp: cannot bind: Address "
                      f"already in use (another program holds the port: Piranha's pulse?)"], caplog.text
    assert "attach lo" in EVENTS
    # with [ha] the start takes no address (the role does): none is removed -- the VIPs Piranha's
    # pulse may still hold, as the active director, stay where they are
    assert not [e for e in EVENTS if e.startswith("take")]
    assert_stopped_cleanly(caplog, released="[]")
    assert not os.path.exists(lbengine.pidfile("hbport"))        # the lock is released


def test_any_part_of_the_loops_start_that_fails_stops_lb_cleanly(tmp_path, monkeypatch, signals, caplog):
    """The metrics server (or the health checks, the configuration sync ...) failing at start:
    one line, exit 2, the clean stop."""
    from lb import metrics
    patch_host(monkeypatch.setattr, str(tmp_path))

    async def broken(engine):
        raise RuntimeError("no metrics today")
    monkeypatch.setattr(metrics, "start", broken)
    path = write(tmp_path / "lb.toml", instance="loopfail")
    with caplog.at_level(logging.INFO, logger="lb"):
        rc = lbengine.run(lbconfig.load(path), dataplane="ipvs")
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{path}: starting: RuntimeError: no metrics today"], caplog.text
    assert_stopped_cleanly(caplog)


# ---- a failed start leaves the operator's addresses ------------------------------------------

def test_a_failed_start_removes_only_the_addresses_it_added(tmp_path, monkeypatch, signals, caplog):
    """The VIP was on the interface before lb started (take() left it): a start that fails
    after taking the addresses (here: XDP cannot attach) removes the NAT router address it added,
    not the operator's VIP."""
    from lb.dataplane.errors import DataplaneError
    patch_host(monkeypatch.setattr, str(tmp_path))

    def take(addrs):      # 198.18.0.10 is there already
        added = [a for a in addrs if str(a.address) != "198.18.0.10/32"]
        EVENTS.append(f"take {sorted(str(a.address) for a in added)}")
        return added
    monkeypatch.setattr(addresses, "take", take)

    def attach(self, ifname, side, mode):
        raise DataplaneError(f"attaching to {ifname}: Device or resource busy")
    monkeypatch.setattr(StartingDataplane, "attach", attach)
    path = write(tmp_path / "lb.toml", instance="failstart")
    with caplog.at_level(logging.INFO, logger="lb"):
        assert lbengine.run(lbconfig.load(path), dataplane="ipvs") == 2
    assert EVENTS == ["load", "take ['198.18.1.254/24']", "detach_all", "release ['198.18.1.254/24']", "unpin",
                      "close"], EVENTS
    assert "attaching to lo: Device or resource busy" in caplog.text


@pytest.mark.parametrize("error", [OSError(28, "No space left on device", "/run/lb/full.ipvs.json"),
                                   RuntimeError("a bug")])
def test_any_error_of_the_start_after_the_addresses_undoes_it(tmp_path, monkeypatch, signals, caplog, error):
    """/run full as the data plane records its state (ENOSPC), or any error start() did not
    expect, once the addresses are taken: one line, exit 2, and what the start added goes.  It
    used to be a traceback out of `lb run`, leaving the VIPs up and the pid file behind, with no
    daemon."""
    patch_host(monkeypatch.setattr, str(tmp_path))

    def apply(self, table, nexthops=None):
        raise error
    monkeypatch.setattr(StartingDataplane, "apply", apply)
    path = write(tmp_path / "lb.toml", instance="full")
    with caplog.at_level(logging.INFO, logger="lb"):
        assert lbengine.run(lbconfig.load(path), dataplane="ipvs") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    what = "[Errno 28] No space left on device: '/run/lb/full.ipvs.json'" if isinstance(error, OSError) \
        else "RuntimeError: a bug"
    assert errors == [f"{path}: starting: {what}"], caplog.text
    assert EVENTS == ["load", "take ['198.18.0.10/32', '198.18.1.254/24']", "detach_all",
                      "release ['198.18.0.10/32', '198.18.1.254/24']", "unpin", "close"], EVENTS
    assert_stopped_cleanly(caplog)
    assert not os.path.exists(lbengine.pidfile("full"))


class StopOnceStarted(StartingDataplane):
    """`lb stop` (SIGINT) while the start loads: the daemon stops as soon as it has started."""

    def load(self):
        super().load()
        os.kill(os.getpid(), signal.SIGINT)


def test_a_stop_asked_for_while_starting_starts_nothing_more(tmp_path, monkeypatch, signals, caplog):
    """`lb stop` while the data plane loads (a cold start compiles for seconds): once the start
    is done the daemon stops -- it used to start its health checks, metrics, pulse and control
    socket and announce the VIPs to its neighbours first, only to stop them and take the VIPs
    away at once (with [ha], pulse could even take the active role from the peer meanwhile)."""
    from lb import metrics
    patch_host(monkeypatch.setattr, str(tmp_path), StopOnceStarted)
    called = []

    async def start(engine):
        called.append("metrics")
    monkeypatch.setattr(metrics, "start", start)

    async def announce(self):
        called.append("announce")
    monkeypatch.setattr(lbengine.Engine, "_announce_before_ready", announce)
    monkeypatch.setattr(lbengine.Engine, "sync_monitors", lambda self: called.append("health checks"))
    path = write(tmp_path / "lb.toml", instance="stopstart")
    with caplog.at_level(logging.INFO, logger="lb"):
        assert lbengine.run(lbconfig.load(path), dataplane="ipvs") == 0
    assert called == [], called
    assert "asked to stop while starting" in caplog.text
    assert_stopped_cleanly(caplog)
    assert not os.path.exists(lbengine.pidfile("stopstart"))


def test_a_step_of_the_stop_that_fails_leaves_the_others_done(tmp_path, monkeypatch, signals, caplog):
    """The addresses cannot be removed at the stop (netlink: out of file descriptors), and the
    metrics endpoint fails to stop: each is said in one line, and the rest of the stop is done --
    the control socket closed, the maps unpinned, the lock freed, exit 0 -- and the addresses
    left up are in the record, for the next start to know them for this instance's.  The first
    error used to end the stop there, with a traceback: the maps stayed pinned, the rest not done."""
    import asyncio
    from lb import held, metrics
    patch_host(monkeypatch.setattr, str(tmp_path))

    def release(addrs):
        if "detach_all" in EVENTS:
            raise OSError(24, "Too many open files")
        EVENTS.append(f"release {sorted(str(a.address) for a in addrs)}")
    monkeypatch.setattr(addresses, "release", release)

    class Metrics:
        def stop(self):
            raise RuntimeError("a bug in its stop")

    async def start(engine):
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGINT)     # `lb stop`, running
        return Metrics()
    monkeypatch.setattr(metrics, "start", start)
    path = write(tmp_path / "lb.toml", instance="stopfail")
    with caplog.at_level(logging.INFO, logger="lb"):
        assert lbengine.run(lbconfig.load(path), dataplane="ipvs") == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["stopping: stopping the metrics endpoint failed: RuntimeError: a bug in its stop",
                      "stopping: removing the virtual addresses failed: [Errno 24] Too many open files"], caplog.text
    assert EVENTS[-3:] == ["detach_all", "unpin", "close"], EVENTS
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO], caplog.text
    assert not os.path.exists(lbengine.pidfile("stopfail"))
    assert not os.path.exists(os.path.join(tmp_path, "stopfail.sock"))         # the control socket closed
    record = held.read(held.path(str(tmp_path), "stopfail"))
    assert sorted(str(a.address) for a in record.addresses) == ["198.18.0.10/32", "198.18.1.254/24"]


def test_a_stop_ends_the_announcement_burst(tmp_path, monkeypatch):
    """A takeover's burst (garp_count rounds, garp_interval apart: up to 100 x 10 s) went on in
    its worker thread after `lb stop`: the stopping director kept claiming the addresses the
    peer, told "leaving", had taken over, and the stop waited for the burst's end (the loop's
    executor) before it released them.  A stop asked for ends it within a pause step."""
    import threading
    from test_override import make_engine
    sent = []

    class Sock:
        def __init__(self, **_kw):
            pass

        def send(self, frame):
            sent.append(time.monotonic())

        def close(self):
            pass
    monkeypatch.setattr(ha_announce, "warm_up", lambda: type("sa", (), {"conf": type("c", (), {"L2socket": Sock})}))
    monkeypatch.setattr(ha_announce, "_mac", lambda ifname: "02:00:00:00:00:01")
    monkeypatch.setattr(ha_announce, "frames", lambda ifname, address, mac=None: [b"garp"])
    monkeypatch.setattr(ha_announce, "COUNT", 50)
    monkeypatch.setattr(ha_announce, "INTERVAL", 0.1)              # a 5 s burst
    eng = make_engine(write(tmp_path / "lb.toml", instance="garpstop"))
    eng.owned = [addresses.OwnedAddress("lo", ipaddress.ip_interface("198.18.0.10/32"))]
    burst = threading.Thread(target=eng.announce, args=(True,))
    start = time.monotonic()
    burst.start()
    time.sleep(0.35)
    eng._stop = "clean"                       # `lb stop`
    asked = time.monotonic()
    burst.join(10)
    assert not burst.is_alive()
    # nothing claimed after the stop was asked, and the burst's 50 rounds cut to the few before it
    assert sent and max(sent) <= asked + 0.01 and len(sent) <= 5, (len(sent), time.monotonic() - start)


# ---- control requests while the daemon stops -------------------------------------------------

def test_a_request_that_would_change_something_is_refused_while_stopping(tmp_path, monkeypatch):
    """Between the end of the loop and the control socket's close (the BGP drain alone is 2 s):
    `lb weight` is refused before anything is done -- it used to save the override, never apply
    it, and leave its caller without a reply --, as `lb reload` and `lb zero` are; `lb status`
    still answers."""
    import asyncio
    import functools
    import threading

    from lb import control
    from test_override import make_engine
    patch_host(monkeypatch.setattr, str(tmp_path))
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    eng = make_engine(write(tmp_path / "lb.toml", instance="stopwin"))
    eng._overrides_file = lbengine.overrides_file("stopwin")
    stopping, go_on = threading.Event(), threading.Event()

    class SlowWatch(addresses.Watch):         # the stop's first step, held until the requests are in
        def start(self):
            pass

        def stop(self):
            stopping.set()
            go_on.wait(10)
    eng._address_watch = SlowWatch()
    replies = {}

    async def main():
        task = asyncio.create_task(eng.run())
        sock = Path(control.socket_path("stopwin", str(tmp_path)))
        while not sock.exists():
            await asyncio.sleep(0.01)
        eng._stop = "clean"
        eng._wake.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stopping.wait, 10)
        for name, args in (("weight", dict(service="web", server="rs1", weight=0)), ("reload", {}),
                           ("zero", dict(service=None)), ("status", {})):
            replies[name] = await loop.run_in_executor(
                None, lambda: control.request("stopwin", name, timeout=10, **args))
        go_on.set()
        await task
    asyncio.run(main())
    for name in ("weight", "reload", "zero"):
        assert replies[name] == {"ok": False, "error": "the daemon is stopping"}, replies
    assert replies["status"]["ok"] is True
    assert eng.overrides == {} and not os.path.exists(eng._overrides_file)


def test_a_weight_request_planned_as_the_stop_comes_is_answered_and_put_back(tmp_path, monkeypatch):
    """`lb quiesce` whose plan (the data plane's, in a worker) was under way when the stop came:
    the loop ended without applying it, the request waited for an apply that never came -- its
    caller without a reply until the socket closed, the override saved all the same for the next
    start.  Now it is answered "the daemon is stopping" and put back, as one that comes later."""
    import asyncio
    import functools
    import threading

    from lb import control
    from test_override import make_engine
    patch_host(monkeypatch.setattr, str(tmp_path))
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    eng = make_engine(write(tmp_path / "lb.toml", instance="stopplan"))
    eng._overrides_file = lbengine.overrides_file("stopplan")
    planning, planned, stopping, go_on = (threading.Event() for _ in range(4))

    class SlowPlan(type(eng.dp)):
        def plan(self, table):
            planning.set()
            planned.wait(10)
    eng.dp = SlowPlan()

    class SlowWatch(addresses.Watch):         # the stop's first step, held until the reply is in
        def start(self):
            pass

        def stop(self):
            stopping.set()
            go_on.wait(10)
    eng._address_watch = SlowWatch()

    def ask():
        try:
            return control.request("stopplan", "weight", timeout=10, service="web", server="rs1", weight=0)
        except (control.NotRunning, OSError) as e:
            return repr(e)

    async def main():
        task = asyncio.create_task(eng.run())
        sock = Path(control.socket_path("stopplan", str(tmp_path)))
        while not sock.exists():
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        reply = loop.run_in_executor(None, ask)
        await loop.run_in_executor(None, planning.wait, 10)
        eng._stop = "clean"
        eng._wake.set()
        await loop.run_in_executor(None, stopping.wait, 10)     # the loop has ended
        planned.set()
        got = await reply
        go_on.set()
        await task
        return got
    reply = asyncio.run(main())
    assert reply == {"ok": False, "error": "the daemon is stopping"}
    assert eng.overrides == {} and not os.path.exists(eng._overrides_file)


# ---- systemd's STATUS= follows the HA role ---------------------------------------------------

HA_ROLE = """
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
key_file = "{key}"
sync = false
"""


def test_the_status_line_follows_the_ha_role(tmp_path, monkeypatch):
    """`systemctl status` says the role pulse decided: it said "starting" from READY on, whatever
    happened after."""
    import asyncio

    from lb import sdnotify
    from lb.ha.pulse import ACTIVE, BACKUP
    from test_override import make_engine
    patch_host(monkeypatch.setattr, str(tmp_path))
    said = []
    monkeypatch.setattr(sdnotify, "status", said.append)
    key = tmp_path / "ha.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    eng = make_engine(write(tmp_path / "lb.toml", instance="role", extra=HA_ROLE.format(key=key)))
    eng.dp = StartingDataplane()
    eng.owned = addresses.wanted_addresses(eng.cfg)
    asyncio.run(eng.on_role(ACTIVE, BACKUP))
    assert said == ["running: 1 virtual services, recording data plane, active"]
    asyncio.run(eng.on_role(BACKUP, ACTIVE))
    assert said[-1] == "running: 1 virtual services, recording data plane, backup"
    eng._stop = "clean"                       # stopping: the stop's own line stays
    asyncio.run(eng.on_role(BACKUP, ACTIVE))
    assert len(said) == 2


# ---- a BGP lease write that fails after the table is applied ---------------------------------

def test_a_lease_write_failing_after_the_apply_does_not_fail_the_reload(tmp_path, monkeypatch, caplog):
    """The reload's table is applied; writing the BGP lease then fails (/run is full): the reload
    stands -- new table, new config, addresses kept -- and the failure is a warning, said once
    a minute (the lease's renewal writes the routes again each second).  It used to be a failed
    reload: the new addresses removed and the old config kept while the data plane ran the new
    table."""
    import errno

    from test_override import OFF, make_engine, table
    patch_host(monkeypatch.setattr, str(tmp_path))
    updates = []

    class Lease:                              # lb.bgp.Announcer's update, its lease write failing
        bgp = None

        def update(self, table=None, **kw):
            updates.append(table)
            if table is not None and len(table.services[0].reals) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", "/run/lb/lease.bgp-lease.json")

    path = write(tmp_path / "lb.toml", instance="lease")
    eng = make_engine(path)
    eng.bgp = Lease()
    eng.dp.attached = {"lo": "public"}
    write(path, instance="lease", extra=OFF)               # the reload removes rs3
    EVENTS.clear()
    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        reply = eng._reload_reply()
        eng.apply_health()                                  # and again at the next apply
    assert reply["ok"] is True, reply
    assert table(eng) == {"rs1": 5, "rs2": 1}
    assert [rs.name for rs in eng.cfg.virtual_servers[0].real_servers] == ["rs1", "rs2", "off"]
    assert not [e for e in EVENTS if e.startswith("release") and e != "release []"], EVENTS
    assert len(updates) == 2
    said = [r.getMessage() for r in caplog.records if "BGP" in r.getMessage()]
    assert said == ["BGP: the lease's routes are not written yet (the renewal tries again each second): [Errno 28] "
                    "No space left on device: '/run/lb/lease.bgp-lease.json'"], caplog.text


def test_the_stop_signals_never_pass_through_their_default_action():
    """hold_signals took the loop's handlers off (remove_signal_handler puts back SIG_DFL) before
    setting its own: a SIGTERM in between, taken by any thread (the executor's workers too),
    killed lb half-way through its stop.  Its own handler now goes in first; after the loop has
    closed, a stop signal is said and ignored."""
    code = r"""
import asyncio, os, signal, sys, time
from lb import engine
class E:
    class cfg:
        instance = "x"
set_to = []
real = signal.signal
def recording(sig, handler):
    set_to.append((signal.Signals(sig).name, handler))
    return real(sig, handler)
async def main():
    loop = asyncio.get_running_loop()
    for sig in engine.STOP_SIGNALS:
        loop.add_signal_handler(sig, lambda: None)
    await loop.run_in_executor(None, time.sleep, 0.01)
    signal.signal = recording
    try:
        engine.hold_signals(E, loop)
    finally:
        signal.signal = real
asyncio.run(main())
assert set_to and all(h not in (signal.SIG_DFL, signal.default_int_handler) for _, h in set_to), set_to
os.kill(os.getpid(), signal.SIGTERM)
os.kill(os.getpid(), signal.SIGHUP)
time.sleep(0.1)
print("survived", flush=True)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}"))
    assert p.returncode == 0 and "survived" in p.stdout, p.stdout + p.stderr
    assert "Exception ignored" not in p.stderr, p.stderr            # no write to the closed wake-up socket


# ---- a reload asked for as the loop takes over the signals --------------------------------------

def reload_in_the_window_child(run_dir: str, config: str) -> int:
    """In a process of its own: `lb reload` (SIGHUP) arriving as the run loop puts in its own
    SIGHUP handler -- after start() is done, just before the loop's handler is in."""
    import asyncio
    import logging
    import threading
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    loop_class = asyncio.get_event_loop_policy()._loop_factory
    add_signal_handler = loop_class.add_signal_handler

    def add(self, sig, callback, *args):
        if sig == signal.SIGHUP:
            os.kill(os.getpid(), signal.SIGHUP)     # the start's handler takes it
        return add_signal_handler(self, sig, callback, *args)
    loop_class.add_signal_handler = add

    def reload_reply(self, keep_restart_only=False):
        EVENTS.append("reload")
        os.kill(os.getpid(), signal.SIGINT)         # done: stop
        return {"ok": False, "error": "not this time", "changed": None}
    lbengine.Engine._reload_reply = reload_reply
    # a reload that never comes: stop all the same, after a while
    threading.Timer(10, os.kill, (os.getpid(), signal.SIGINT)).start()
    patch_host(setattr, run_dir, StartingDataplane)
    rc = lbengine.run(lbconfig.load(config), dataplane="ipvs")
    print("EVENTS", EVENTS, flush=True)
    os._exit(rc)


def test_a_reload_asked_for_as_the_loop_takes_over_is_done(tmp_path):
    """`lb reload` (SIGHUP) between the loop's read of the start's note (_reload_at_start) and
    its own SIGHUP handler: the note comes too late, but the signal also reaches the loop's
    wake-up fd (set with its first handler, SIGTERM's) and is dispatched once the handler is in
    -- the reload is done, not lost.  A guard: moving the handlers about must keep it so."""
    config = write(tmp_path / "lb.toml", instance=f"hup{os.getpid() % 10000}")
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]; import test_engine_lifecycle as t; "
            f"sys.exit(t.reload_in_the_window_child({str(tmp_path)!r}, {str(config)!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}"))
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Traceback" not in out, out
    events = out.split("EVENTS ", 1)[1]
    assert "'reload'" in events, out


# ---- a stop asked for while the unit starts, as systemd sees it --------------------------------


def notified_child(call: str) -> tuple[str, list]:
    """``t.<call>`` (a ``*_child`` function of this file, its arguments written out) in a Python
    of its own under a NOTIFY_SOCKET: (its stdout and stderr, the notify messages it sent);
    it must exit 0 without a traceback."""
    from lb.sdnotify import Listener
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]; import test_engine_lifecycle as t; "
            f"sys.exit(t.{call})")
    listener = Listener()
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}", **listener.env()))
        listener.poll(0.5)
        messages = [f for _, f in listener.messages]
    finally:
        listener.close()
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Traceback" not in out, (p.returncode, out)
    return out, messages

def stop_while_starting_child(run_dir: str, config: str, wait_interfaces: float) -> int:
    """In a process of its own, under a NOTIFY_SOCKET: `lb stop` (SIGINT) while the start loads
    the data plane, or (wait_interfaces) while it waits for a missing interface."""
    import logging
    import threading
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")

    class Dataplane(StartingDataplane):
        def load(self):
            super().load()
            os.kill(os.getpid(), signal.SIGINT)

    if wait_interfaces:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    patch_host(setattr, run_dir, Dataplane)
    return lbengine.run(lbconfig.load(config), dataplane="ipvs", wait_interfaces=wait_interfaces)


@pytest.mark.parametrize("where", ["loading", "waiting for an interface"])
def test_a_stop_while_starting_is_a_stop_to_systemd(tmp_path, where):
    """`lb stop` while lb@.service still starts: lb stopped cleanly and exited 0 without ever
    sending READY=1 -- systemd takes a Type=notify service that exits before READY=1 as failed
    (result "protocol", whatever the exit status) and Restart=on-failure started it again: the
    stop asked for did not hold.  Now READY=1, then STOPPING=1 (in datagrams of their own:
    systemd acts on STOPPING=1 only once running): the unit goes deactivating, then inactive."""
    config = write(tmp_path / "lb.toml", instance=f"sws{os.getpid() % 10000}")
    wait = 0.0
    if where != "loading":
        config.write_text(config.read_text().replace('public_interface = "lo"', 'public_interface = "lbnosuch0"'))
        wait = 30.0
    out, messages = notified_child(f"stop_while_starting_child({str(tmp_path)!r}, {str(config)!r}, {wait!r})")
    ready = [i for i, f in enumerate(messages) if f.get("READY") == "1"]
    stopping = [i for i, f in enumerate(messages) if f.get("STOPPING") == "1"]
    assert ready and stopping and ready[0] < stopping[0], messages
    assert "STOPPING" not in messages[ready[0]], messages


def early_signal_child(run_dir: str, config: str, signame: str) -> int:
    """In a process of its own, under a NOTIFY_SOCKET: `lb run` (the command, lb.cli.main) sent
    ``signame`` as it loads its config file, before lb.engine.run took the signals over."""
    import logging
    from lb.cli import main as cli
    load = lbconfig.load

    def load_then_signal(path, **kw):
        cfg = load(path, **kw)
        os.kill(os.getpid(), signal.Signals[signame])
        return cfg

    patch_host(setattr, run_dir, StartingDataplane)
    lbconfig.load = load_then_signal
    rc = cli.main(["run", "--config", config, "--dataplane", "ipvs"])
    logging.getLogger("lb").info("EVENTS %s", EVENTS)
    return rc


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_before_the_engine_runs_is_a_stop_once_started(tmp_path, signame):
    """A SIGTERM in `lb run`'s first second (its imports, the config's load) killed it with
    Python's default action (a SIGINT ended it in KeyboardInterrupt): a `systemctl stop` just
    after a `systemctl restart` left the data plane that restart kept behind an inactive unit,
    and no READY=1/STOPPING=1 ever came.  Now it is kept and carried out as a stop asked for
    while starting is: the start finishes, then the clean stop, exit 0."""
    config = write(tmp_path / "lb.toml", instance=f"es{os.getpid() % 10000}")
    out, messages = notified_child(f"early_signal_child({str(tmp_path)!r}, {str(config)!r}, {signame!r})")
    events = out.split("EVENTS ", 1)[1]
    assert "'load'" in events and "'detach_all'" in events and "'unpin'" in events, out     # started, then a clean stop
    ready = [i for i, f in enumerate(messages) if f.get("READY") == "1"]
    stopping = [i for i, f in enumerate(messages) if f.get("STOPPING") == "1"]
    assert ready and stopping and ready[0] < stopping[0], messages


# ---- systemd's watchdog: pinged by a loop that makes turns, only --------------------------------

def hung_step_child(run_dir: str, config: str) -> int:
    """In a process of its own, under a NOTIFY_SOCKET and WATCHDOG_USEC: lb running, until a
    housekeeping step in the executor hangs (a netlink call that never returns) -- said first
    with a STATUS= line, "test: hung"."""
    import logging
    import threading
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    from lb import sdnotify
    turns = []

    class Dataplane(StartingDataplane):
        def sched_base_pending(self):
            turns.append(1)
            return len(turns) > 4                   # a few turns of the loop, then the step

    def refresh_sched_base(self):
        sdnotify.status("test: hung")
        threading.Event().wait()                    # never returns
    lbengine.Engine.refresh_sched_base = refresh_sched_base
    patch_host(setattr, run_dir, Dataplane)
    return lbengine.run(lbconfig.load(config), dataplane="ipvs")


def watched_until_hung(tmp_path, child: str, instance: str, wait: float) -> tuple[list, str, float]:
    """Run this module's ``child`` (hung_step_child, hung_beside_child) in a process of its own
    under a NOTIFY_SOCKET and a 0.2 s WATCHDOG_USEC until it says "test: hung", ``wait`` seconds
    more; returns the notifications ((time.monotonic(), fields) each), its log and when the wait
    ended."""
    from lb.sdnotify import Listener
    config = write(tmp_path / "lb.toml", instance=instance)
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]; import test_engine_lifecycle as t; "
            f"sys.exit(t.{child}({str(tmp_path)!r}, {str(config)!r}))")
    listener = Listener()
    log = open(tmp_path / "child.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}",
                                     WATCHDOG_USEC="200000", **listener.env()))
    try:
        listener.wait_for("STATUS", "test: hung", 60, alive=lambda: proc.poll() is None)
        time.sleep(wait)
        end = time.monotonic()
        messages = list(listener.messages)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
        listener.close()
    return messages, (tmp_path / "child.log").read_text(), end


def test_watchdog_pings_stop_when_a_step_hangs(tmp_path):
    """lb@.service has WatchdogSec=: the run loop sends WATCHDOG=1 as it makes its turns, and
    a step that hangs in the executor -- the loop awaiting it, SIGTERM's handling too, until
    systemd's SIGKILL, with nothing noticing -- ends the pings, so that systemd aborts lb and
    starts it again.  (Before, no WATCHDOG=1 at all.)"""
    # the watchdog's interval (0.2 s) many times over: a ping now would be a thread's
    timed, out, _ = watched_until_hung(tmp_path, "hung_step_child", f"wd{os.getpid() % 10000}", 1.5)
    messages = [f for _, f in timed]
    ready = next(i for i, f in enumerate(messages) if f.get("READY") == "1")
    hung = next(i for i, f in enumerate(messages) if f.get("STATUS") == "test: hung")
    pings = [i for i, f in enumerate(messages) if f.get("WATCHDOG") == "1"]
    assert [i for i in pings if ready < i < hung], (messages, out)      # the loop's turns pinged
    assert not [i for i in pings if i > hung], (messages, out)          # the hung loop does not


def hung_beside_child(run_dir: str, config: str) -> int:
    """As hung_step_child, the step that hangs one that runs beside the loop's turns (the next
    hops' refresh, every turn here): the loop goes on making turns."""
    import logging
    import threading
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    from lb import sdnotify
    calls = []

    def refresh_nexthops(self):
        calls.append(1)
        if len(calls) > 3:                          # a few refreshes, then one that never returns
            sdnotify.status("test: hung")
            threading.Event().wait()
        return 0
    lbengine.Engine.refresh_nexthops = refresh_nexthops
    lbengine.NEXTHOP_INTERVAL = 0.0
    patch_host(setattr, run_dir, StartingDataplane)
    return lbengine.run(lbconfig.load(config), dataplane="ipvs")


def test_watchdog_pings_stop_when_a_step_beside_the_turns_hangs(tmp_path):
    """The sweep and the next hops' refresh run beside the loop's turns (Engine._beside): one
    that hangs no longer holds the loop, which goes on pinging -- so the loop stops its pings
    once such a step has run for longer than the watchdog's interval, and systemd aborts lb
    as for a step that holds the loop."""
    # the interval (0.2 s) and a turn (at most 1 s) many times over
    messages, out, end = watched_until_hung(tmp_path, "hung_beside_child", f"wb{os.getpid() % 10000}", 3.0)
    fields = [f for _, f in messages]
    ready = next(i for i, f in enumerate(fields) if f.get("READY") == "1")
    hung = next(i for i, f in enumerate(fields) if f.get("STATUS") == "test: hung")
    pings = [(i, t) for i, (t, f) in enumerate(messages) if f.get("WATCHDOG") == "1"]
    assert [i for i, _ in pings if ready < i < hung], (messages, out)     # the loop's turns pinged
    assert not [t for _, t in pings if t > end - 1.5], (messages, out)   # not once the step hung


def stop_after_ready_child(run_dir: str, config: str) -> int:
    """In a process of its own, under a NOTIFY_SOCKET: `lb stop` once running; the loop's parts
    (the BGP drain, metrics, pulse ...) say "test: parts stopping" as they stop."""
    import logging
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    from lb import sdnotify
    ready = sdnotify.ready
    stop_running = lbengine.Engine._stop_running

    def ready_then_stop(text):
        ready(text)
        os.kill(os.getpid(), signal.SIGINT)
    sdnotify.ready = ready_then_stop

    async def late(self, blocking, started):
        sdnotify.status("test: parts stopping")
        await stop_running(self, blocking, started)
    lbengine.Engine._stop_running = late
    patch_host(setattr, run_dir, StartingDataplane)
    return lbengine.run(lbconfig.load(config), dataplane="ipvs")


def test_stopping_is_said_as_the_loop_ends(tmp_path):
    """STOPPING=1 went out only once the loop's parts had stopped (a BGP drain takes seconds):
    until then systemd had the unit running, its watchdog on and no pings coming -- a long
    drain after `lb stop` was aborted as a hung daemon.  Now it goes as the loop ends."""
    config = write(tmp_path / "lb.toml", instance=f"sal{os.getpid() % 10000}")
    out, messages = notified_child(f"stop_after_ready_child({str(tmp_path)!r}, {str(config)!r})")
    parts = next(i for i, f in enumerate(messages) if f.get("STATUS") == "test: parts stopping")
    assert [f for f in messages[:parts] if f.get("STOPPING") == "1"], messages


def refused_reload_child(run_dir: str, config: str) -> int:
    """In a process of its own, under a NOTIFY_SOCKET: once running, the file broken and SIGHUP
    (a reload the file makes fail); `lb stop` (SIGINT) as that reload is refused."""
    import logging
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    from lb import sdnotify
    ready = sdnotify.ready
    reload_reply = lbengine.Engine._reload_reply

    def ready_then_reload(text):
        ready(text)
        if not hasattr(ready_then_reload, "done"):
            ready_then_reload.done = True
            with open(config, "a") as f:
                f.write("\n[[virtual_server]]\nname = 7\n")           # lb check refuses it
            os.kill(os.getpid(), signal.SIGHUP)

    def refused_then_stop(self, keep):
        try:
            return reload_reply(self, keep)
        finally:
            os.kill(os.getpid(), signal.SIGINT)
    sdnotify.ready = ready_then_reload
    lbengine.Engine._reload_reply = refused_then_stop
    patch_host(setattr, run_dir, StartingDataplane)
    return lbengine.run(lbconfig.load(config), dataplane="ipvs")


def test_a_refused_reload_ends_with_ready(tmp_path):
    """A reload tells systemd RELOADING=1 (with MONOTONIC_USEC=, which systemd 253 and later go
    by) and, refused or not, READY=1 after it: without that READY=1 a unit whose reload the
    daemon began itself (SIGHUP, `lb reload`, a console save) would stay "reloading" until
    TimeoutStartSec= ran out."""
    config = write(tmp_path / "lb.toml", instance=f"rr{os.getpid() % 10000}")
    out, messages = notified_child(f"refused_reload_child({str(tmp_path)!r}, {str(config)!r})")
    assert "reload refused, nothing changed" in out and "expected a string" in out, out
    reloading = next(i for i, f in enumerate(messages) if f.get("RELOADING") == "1")
    assert messages[reloading].get("MONOTONIC_USEC", "").isdigit(), messages
    stopping = next(i for i, f in enumerate(messages) if f.get("STOPPING") == "1")
    assert [f for f in messages[reloading + 1:stopping] if f.get("READY") == "1"], messages


# ---- read requests on a large table: off the loop ----------------------------------------------

def test_status_and_config_requests_read_the_file_off_the_loop(tmp_path, monkeypatch):
    """`lb status` and `lb config` (a [control] read_group member may ask again and again) read
    and parse the configuration file -- ~0.3 s each for 200 services x 20 real servers on a busy
    2-CPU host -- and the status the data plane's counters: they did it on the event loop, where
    the health checks, pulse's heartbeats and the run loop wait meanwhile.  Now in a worker
    thread; the replies are the same."""
    import asyncio
    import threading

    from lb.config import store
    from test_override import make_engine
    patch_host(monkeypatch.setattr, str(tmp_path))
    services = "".join(
        f'\n[[virtual_server]]\nname = "vs{v}"\naddress = "198.18.0.{v % 250 + 1}"\nport = {1000 + v}\n'
        f'scheduler = "wrr"\n' + "".join(f'  [[virtual_server.real_server]]\n  name = "rs{r}"\n'
                                        f'  address = "198.19.0.{r + 1}"\n  port = {2000 + r}\n' for r in range(20))
        for v in range(200))
    eng = make_engine(write(tmp_path / "lb.toml", instance="bigread", extra=services))
    eng.dp = StartingDataplane()
    eng.dp.counters = lambda: (where.append(("counters", threading.current_thread())), {"rx": 1})[1]
    where = []
    read = store.read

    def recorded_read(path, **kw):
        where.append(("read", threading.current_thread()))
        return read(path, **kw)
    monkeypatch.setattr(store, "read", recorded_read)
    monkeypatch.setattr(lbengine.time, "time", lambda: 1.0)       # status's "at"

    async def ask():
        return await eng.control({"cmd": "status"}), await eng.control({"cmd": "config"})
    status, config = asyncio.run(ask())
    assert len(status["status"]["services"]) == 201
    assert where and all(t is not threading.main_thread() for _, t in where), where
    assert {w for w, _ in where} == {"read", "counters"}
    assert status == {"ok": True, "status": eng.status()}       # the reply as it was, on the loop
    assert config == eng.configs.get()



# ---- a bug in the run loop's own code --------------------------------------------------------

class FaultyLoop(StartingDataplane):
    """The run loop's own code fails at its first ``faults`` turns, at ``where``: the data
    plane's ``draining``, which the loop reads between its guarded steps (a bug in the loop), or
    a sweep whose future comes back cancelled (a CancelledError, which the steps' guard let
    through).  ``swept``: the sweeps that ran."""

    where, error, faults = "draining", RuntimeError, 2

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.failed = self.swept = 0

    def _fault(self, here):
        if here == self.where and self.failed < self.faults:
            self.failed += 1
            raise self.error("a bug in the loop")

    @property
    def draining(self):
        self._fault("draining")
        return False

    def sweep(self):
        self._fault("sweep")
        self.swept += 1
        return 0


# what the start did (lo: both sides)
STARTED = ["load", "take ['198.18.0.10/32', '198.18.1.254/24']", "attach lo", "attach lo"]


def faulty_run(tmp_path, monkeypatch, instance, until, **faulty):
    """lbengine.run over a FaultyLoop (``faulty``: its class attributes), the loop woken every
    50 ms; once ``until(engine)`` holds, its status over the control socket and the data plane's
    EVENTS so far are taken and `lb stop` (SIGINT) asked.  (exit status, status reply, EVENTS
    then, STOPPING= lines sent)"""
    import asyncio
    import functools

    from lb import control, metrics, sdnotify
    patch_host(monkeypatch.setattr, str(tmp_path), type("Faulty", (FaultyLoop,), faulty))
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    monkeypatch.setattr(lbengine, "SWEEP_INTERVAL", 0.0)          # a sweep at every turn
    monkeypatch.setattr(lbengine, "RUN_LOOP_PAUSE", 0.01)
    stopping = []
    monkeypatch.setattr(sdnotify, "stopping", lambda text: stopping.append(text))
    seen, tasks = {}, []

    async def client(engine):
        loop = asyncio.get_running_loop()
        sock = Path(control.socket_path(instance, str(tmp_path)))
        for _ in range(400):
            engine._wake.set()
            await asyncio.sleep(0.05)
            if sock.exists() and until(engine):
                seen["status"] = await loop.run_in_executor(None, lambda: control.request(instance, "status",
                                                                                            timeout=10))
                break
        seen["events"] = list(EVENTS)
        os.kill(os.getpid(), signal.SIGINT)                         # `lb stop`

    async def start(engine):
        tasks.append(asyncio.get_running_loop().create_task(client(engine)))
    monkeypatch.setattr(metrics, "start", start)
    path = write(tmp_path / "lb.toml", instance=instance)
    rc = lbengine.run(lbconfig.load(path), dataplane="ipvs")
    return rc, seen.get("status"), seen.get("events"), stopping


@pytest.mark.parametrize("where, error", [("draining", RuntimeError), ("sweep", __import__("asyncio").CancelledError)])
def test_a_bug_in_the_run_loops_own_code_leaves_the_data_plane_forwarding(tmp_path, monkeypatch, signals, caplog,
                                                                            where, error):
    """The run loop's own code raises at two turns (outside its guarded steps, or a CancelledError
    a step let through): it ended the loop, and `lb run`'s stop tore the data plane down -- XDP
    detached, the VIPs released, the maps unpinned: every connection lost to a control-plane bug.
    Now the data plane forwards on, the loop goes on (its steps run again), the daemon answers
    `lb status`, which counts the errors as the failing steps' (and so does
    lb_housekeeping_errors_total), the log says it with one traceback; `lb stop` is as before."""
    from lb import tasks
    from lb.cli.main import _status_lines
    from test_metrics import Source, scrape, value
    # the background tasks' restarts are counted per process: other modules' tests on this
    # worker (CI's xdist) left theirs, which `lb status` shows on the same line
    monkeypatch.setattr(tasks, "RESTARTS", {})
    with caplog.at_level(logging.INFO, logger="lb"):
        rc, status, events, stopping = faulty_run(
            tmp_path, monkeypatch, "loopbug", lambda eng: eng.dp.failed == 2 and eng.dp.swept >= 1,
            where=where, error=error)
    assert status is not None, (events, caplog.text)
    assert status["ok"] is True
    doc = status["status"]
    assert doc["housekeeping_errors"] == {"run_loop": 2}, doc["housekeeping_errors"]
    assert [s for s in _status_lines(doc) if s.startswith("errors")] == [
        "errors (see the log): run_loop failed 2 times"]
    samples = scrape(Source(doc=doc, services=[], counters={}, defense=None))
    assert value(samples, "lb_housekeeping_errors_total", step="run_loop") == 2
    # nothing of the data plane touched while it ran: attached, its addresses up, its maps pinned
    assert events == STARTED, events
    said = [r for r in caplog.records if "the run loop's own code" in r.getMessage()]
    assert said[0].getMessage() == ("housekeeping: the run loop's own code failed (the data plane forwards on; "
                                    f"tried again at its next turn; 1 failures so far): {error.__name__}: a bug "
                                    "in the loop"), caplog.text
    assert sum(bool(r.exc_info) for r in said) == 1, caplog.text      # the traceback once
    assert len(said) == 2, caplog.text                                # the second failure held back
    # `lb stop` then: the clean stop, as before
    assert rc == 0
    assert stopping == ["stopping", "stopping"]
    assert EVENTS[-4:] == ["detach_all", "release ['198.18.0.10/32', '198.18.1.254/24']", "unpin", "close"], EVENTS


def test_a_run_loop_that_fails_at_every_turn_exits_1_and_keeps_the_data_plane(tmp_path, monkeypatch, signals,
                                                                               caplog):
    """The loop's own code fails at every turn (none of its steps runs any more: no sweep, no
    health change applied): after RUN_LOOP_GIVE_UP turns in a row it gives up -- one critical
    line, and the stop `lb stop --keep-dataplane` makes: XDP attached, the VIPs up, the maps
    pinned, the record written for the next start; exit 1 and no STOPPING=1 (a failure, which
    lb@.service's Restart=on-failure follows with a start, adopting the data plane)."""
    from lb import held
    monkeypatch.setattr(lbengine, "RUN_LOOP_GIVE_UP", 3)
    with caplog.at_level(logging.INFO, logger="lb"):
        rc, status, events, stopping = faulty_run(tmp_path, monkeypatch, "loopdead", lambda eng: False,
                                                  faults=10 ** 9)
    assert rc == 1
    assert EVENTS == STARTED + ["close"], EVENTS       # (its file descriptors closed: what is pinned stays)
    assert stopping == []
    critical = [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert critical == ["the run loop's own code failed at each of its last 3 turns, the last time: RuntimeError: a "
                        "bug in the loop: giving up -- the daemon exits (status 1), leaving the data plane (XDP "
                        "programs, maps, addresses) forwarding, as `lb stop --keep-dataplane` does, for the next "
                        "start to adopt (lb@.service: Restart=on-failure)"], caplog.text
    record = held.read(held.path(str(tmp_path), "loopdead"))
    assert sorted(str(a.address) for a in record.addresses) == ["198.18.0.10/32", "198.18.1.254/24"]
    assert not os.path.exists(lbengine.pidfile("loopdead"))


def test_an_error_that_ends_the_loop_keeps_the_data_plane(tmp_path, monkeypatch, signals, caplog):
    """An error that leaves Engine.run all the same (here: in the READY=1 sent once it runs,
    before the loop's first turn): `lb run` logs it with its traceback and exits 1, leaving
    the data plane forwarding as a crash does; it used to tear it down."""
    patch_host(monkeypatch.setattr, str(tmp_path))

    def ready(self):
        raise RuntimeError("a bug before the loop")
    monkeypatch.setattr(lbengine.Engine, "_ready", ready)
    path = write(tmp_path / "lb.toml", instance="loopend")
    with caplog.at_level(logging.INFO, logger="lb"):
        assert lbengine.run(lbconfig.load(path), dataplane="ipvs") == 1
    assert EVENTS == STARTED + ["close"], EVENTS       # (its file descriptors closed: what is pinned stays)
    critical = [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert [r.getMessage() for r in critical] == [
        "lb instance 'loopend': the run loop ended in an error: RuntimeError: a bug before the loop -- leaving "
        "the data plane (XDP programs, maps, addresses) forwarding for the next start to adopt; exit 1"], caplog.text
    assert critical[0].exc_info
