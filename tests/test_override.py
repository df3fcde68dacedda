"""The operator's weight override (`lb weight`, `lb quiesce`, `lb activate`): held by the running
daemon, applied through build_table like every other change, shown by `lb status` and the web
console; and one `lb run` in the DR lab taking a real server out and back."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import ipaddress
import json
import logging
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from lb import config as lbconfig
from lb import control
from lb import engine as lbengine
from lb.cli.main import main as lb_main
from lb.engine import Engine, real_key
from lb.ha import addresses

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")

CONFIG = """
[global]
instance = "{instance}"
public_interface = "lo"
network = "nat"
private_interface = "lo"
nat_router = "198.18.1.254/24"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "wrr"
  [virtual_server.monitor]
  kind = "{monitor}"
  quiesce = {quiesce}
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"
  weight = 5
  [[virtual_server.real_server]]
  name = "rs2"
  address = "198.18.1.12"
  weight = {rs2_weight}
{extra}
"""

RS3 = """
  [[virtual_server.real_server]]
  name = "rs3"
  address = "198.18.1.12"
  port = 8080
"""

OFF = """
  [[virtual_server.real_server]]
  name = "off"
  address = "198.18.1.14"
  active = false
"""


def write(path: Path, instance="ovr", monitor="none", quiesce="false", rs2_weight=1, extra=RS3 + OFF) -> Path:
    path.write_text(CONFIG.format(instance=instance, monitor=monitor, quiesce=quiesce, rs2_weight=rs2_weight,
                                  extra=extra))
    return path


class RecordingDataplane:
    """Stands in for a data plane: records every table applied (and does the loop's chores)."""

    kind = "recording"
    draining = False

    def __init__(self):
        self.applied = []

    def plan(self, table):
        pass

    def apply(self, table, nexthops=None):
        self.applied.append(table)

    def restart_sched_counts(self, spec):
        return 0

    def sweep(self):
        return 0

    # the engine sweeps in three parts (lb.dataplane.base): here all of it in the last
    def sweep_begin(self):
        return None

    def sweep_scan(self, sp):
        return sp

    def sweep_end(self, sp):
        return self.sweep()

    def estimate(self):
        return 0

    def nexthop_work(self):
        return []

    def nexthops_ahead(self, table):     # (base.Dataplane's: no next hop of its own)
        return []

    def nexthop_errors(self):
        return {}

    def resolve_nexthops(self, work, budget=None):
        return {}

    def refresh_nexthops(self, resolved=None):
        return None

    def defend(self):
        return None

    def defense_status(self):
        return None

    def keep_attached(self):
        return []

    def finish_drains(self):
        return 0

    def sched_base_pending(self):
        return False

    def held_programs(self):         # (lb/dataplane/base.py's defaults: the engine calls them)
        return []

    def held_sync(self):
        return []


@pytest.fixture
def no_addresses(monkeypatch):
    """A reload must not add or remove addresses on this host's interfaces."""
    taken = []
    monkeypatch.setattr(addresses, "take", lambda addrs: taken.extend(addrs) or list(addrs))
    monkeypatch.setattr(addresses, "release", lambda addrs: None)
    return taken


def make_engine(path: Path) -> Engine:
    eng = Engine(lbconfig.load(path), dataplane="ipvs")    # the constructor touches nothing in the kernel
    eng.dp = RecordingDataplane()
    eng.apply_health()
    return eng


def table(eng) -> dict:
    """{real server name: weight} of the last table applied; absent servers are not in it."""
    names = {(rs.address, rs.effective_port(vs)): rs.name for vs in eng.cfg.virtual_servers for rs in vs.real_servers}
    (svc,) = eng.dp.applied[-1].services
    return {names.get((r.address, r.port), str(r.address)): r.weight for r in svc.reals}


def key(eng, name):
    vs = eng.cfg.virtual_servers[0]
    return real_key(vs, next(rs for rs in vs.real_servers if rs.name == name))


def weight(eng, server, w, service="web"):
    """The control request, as the socket hands it to the engine (not running the loop: applied at once)."""
    return asyncio.run(eng.control({"cmd": "weight", "service": service, "server": server, "weight": w}))


@pytest.fixture
def eng(tmp_path):
    return make_engine(write(tmp_path / "lb.toml"))


# ---- the engine ------------------------------------------------------------------------------

def test_override_replaces_the_configured_weight_and_clears(eng):
    assert table(eng) == {"rs1": 5, "rs2": 1, "rs3": 1}
    reply = weight(eng, "rs1", 0)
    assert reply["ok"], reply
    assert reply["message"] == ("rs1 (198.18.1.11:80) of web: weight 0: quiesced by operator; configured 5; "
                                "open connections go on, no new ones")
    # quiesced stays in the table at weight 0 (IPVS's weight 0: its connections go on)
    assert table(eng) == {"rs1": 0, "rs2": 1, "rs3": 1}
    assert weight(eng, "rs2", 7)["ok"]
    assert table(eng) == {"rs1": 0, "rs2": 7, "rs3": 1}
    reply = weight(eng, "rs1", None)
    assert reply == {"ok": True, "message": "rs1 (198.18.1.11:80) of web: override cleared; weight 5: configured"}
    assert table(eng) == {"rs1": 5, "rs2": 7, "rs3": 1}
    assert weight(eng, "rs1", None)["message"].startswith("rs1 (198.18.1.11:80) of web: no override to clear")
    assert eng.overrides == {key(eng, "rs2"): 7}


def test_override_beats_the_load_monitor(eng):
    k1 = key(eng, "rs1")
    eng._weight_changed(k1, 3, "load 0.6")
    eng.apply_health()
    assert table(eng)["rs1"] == 3
    reply = weight(eng, "rs1", 0)
    assert "weight 0: quiesced by operator; configured 5, load monitor 3;" in reply["message"]
    assert table(eng)["rs1"] == 0
    eng._weight_changed(k1, 4, "load 0.2")         # the monitor goes on asking; the override stays
    eng.apply_health()
    assert table(eng)["rs1"] == 0
    reply = weight(eng, "rs1", None)
    assert reply["message"].endswith("override cleared; weight 4: set by its load monitor; configured 5")
    assert table(eng)["rs1"] == 4                   # back to the monitor's weight


def test_a_dead_server_stays_out_and_comes_back_with_the_override(tmp_path):
    eng = make_engine(write(tmp_path / "lb.toml"))
    k1 = key(eng, "rs1")
    eng._health_changed(k1, False, "connect refused")
    eng.apply_health()
    assert "rs1" not in table(eng)
    reply = weight(eng, "rs1", 9)
    assert reply["message"].endswith("weight 0: down, out of the table until its health checks pass; "
                                     "configured 5, operator override 9")
    assert "rs1" not in table(eng)                  # the override does not bring it back
    eng._health_changed(k1, True, "connect ok")
    eng.apply_health()
    assert table(eng)["rs1"] == 9                   # back, at the operator's weight
    # a service that quiesces dead servers: weight 0 while dead, whatever the override
    eng = make_engine(write(tmp_path / "q.toml", quiesce="true"))
    k1 = key(eng, "rs1")
    weight(eng, "rs1", 9)
    eng._health_changed(k1, False, "timeout")
    eng.apply_health()
    assert table(eng)["rs1"] == 0
    eng._health_changed(k1, True, "ok")
    eng.apply_health()
    assert table(eng)["rs1"] == 9


def test_all_quiesced_sends_new_connections_to_the_sorry_server(tmp_path):
    path = write(tmp_path / "lb.toml", extra="")
    path.write_text(path.read_text().replace('scheduler = "wrr"', 'scheduler = "wrr"\nsorry_server = "198.18.1.99"'))
    eng = make_engine(path)
    weight(eng, "rs1", 0)
    assert table(eng) == {"rs1": 0, "rs2": 1}
    weight(eng, "rs2", 0)
    assert table(eng) == {"198.18.1.99": 1}
    assert eng.status()["services"][0]["on_sorry_server"] is True
    weight(eng, "rs2", None)
    assert table(eng) == {"rs1": 0, "rs2": 1}


def test_servers_by_name_address_and_address_port(eng):
    assert weight(eng, "198.18.1.11", 2)["ok"]
    assert eng.overrides == {key(eng, "rs1"): 2}
    assert weight(eng, "198.18.1.12:8080", 3)["ok"]
    assert eng.overrides[key(eng, "rs3")] == 3
    assert weight(eng, "rs1", 4, service="198.18.0.10:80")["ok"]
    assert eng.overrides[key(eng, "rs1")] == 4
    reply = weight(eng, "198.18.1.12", 0)           # rs2 (port 80) and rs3 (port 8080)
    assert reply == {"ok": False, "error": "server '198.18.1.12' is ambiguous in virtual server web (rs2, rs3): "
                                           "use its name or ADDR:PORT"}


@pytest.mark.parametrize("req, error", [
    ({"service": "api", "server": "rs1", "weight": 0},
     r"^no virtual server 'api' in .*lb\.toml \(virtual servers: web\)$"),
    ({"service": "web", "server": "rs9", "weight": 0},
     r"^virtual server web has no real server 'rs9' \(real servers: rs1, rs2, rs3, off\)$"),
    ({"service": "web", "server": "198.18.1.99", "weight": 0}, r"has no real server '198\.18\.1\.99'"),
    ({"service": "web", "server": "rs1", "weight": -1}, r"^weight: -1 is out of range 0\.\.65535"),
    ({"service": "web", "server": "rs1", "weight": 65536}, r"^weight: 65536 is out of range 0\.\.65535"),
    ({"service": "web", "server": "rs1", "weight": "3"}, r"^weight: '3' is not a whole number 0\.\.65535"),
    ({"service": "web", "server": "rs1", "weight": True}, r"^weight: True is not a whole number"),
    ({"service": "web", "server": "rs1", "weight": 1.5}, r"^weight: 1\.5 is not a whole number"),
    ({"service": "web", "server": "rs1"}, r"^weight: missing \(0\.\.65535, or null to clear the override\)$"),
    ({"server": "rs1", "weight": 0}, r"^service: missing"),
    ({"service": "web", "weight": 0}, r"^server: missing"),
    ({"service": "web", "server": "off", "weight": 0},
     r"^real server off \(198\.18\.1\.14:80\) of web is inactive \(active = false in .*lb\.toml\)"),
])
def test_bad_requests_are_refused_and_change_nothing(eng, req, error):
    weight(eng, "rs2", 4)
    applied = len(eng.dp.applied)
    reply = asyncio.run(eng.control({"cmd": "weight", **req}))
    assert reply["ok"] is False and re.search(error, reply["error"]), reply
    assert eng.overrides == {key(eng, "rs2"): 4}
    assert len(eng.dp.applied) == applied


def test_an_override_planned_across_a_reload_is_checked_against_the_config_it_left(eng):
    """`lb weight` whose plan (a worker thread) ran while a reload replaced the running config:
    the request is checked and planned again against the new one -- here rs3 left it, so it is
    refused as for any server the config does not have, and nothing is set (an override kept for
    a server gone from the running config, which the reload's sync_overrides had passed).
    Planned against the config it was checked with alone, it was answered "ok"."""
    path = Path(eng.cfg.path)
    write(path, extra=OFF)                    # rs3 leaves the file
    reloaded = lbconfig.load(path)
    plan = eng.dp.plan

    def reload_meanwhile(table):              # the reload's swap, as its worker makes it
        eng.cfg = reloaded
        return plan(table)
    eng.dp.plan = reload_meanwhile
    reply = weight(eng, "rs3", 6)
    assert reply["ok"] is False and "rs3" in reply["error"], reply
    assert eng.overrides == {}


class LockThen:
    """The data plane's lock, calling ``after()`` each time it is left (a test's moment to go on)"""

    def __init__(self, lock, after):
        self.lock, self.after = lock, after

    def __enter__(self):
        return self.lock.__enter__()

    def __exit__(self, *exc):
        self.lock.__exit__(*exc)
        self.after()


def set_when_taken(eng, decided) -> None:
    """eng's next override set (_take_override) sets ``decided`` first"""
    take_override = eng._take_override

    def take(request):
        decided.set()
        return take_override(request)
    eng._take_override = take


def test_an_override_planned_while_a_reload_swaps_the_config_waits_for_the_new_one(eng, no_addresses, caplog):
    """`lb weight rs3 6` whose plan comes while a reload that removes rs3 has applied its new
    table but not yet put its config in place (it changes the addresses in between): the plan
    was of the old config's table, against the data plane holding the new one, and the request,
    finding the old config still there, was answered "ok" -- its override then dropped by the
    reload with a warning.  Now the plan waits for the new config and the request is refused as
    for any server it does not have.  (The reload waits in its address step until the request
    has either set its override or left the data plane's lock without planning.)"""
    path = Path(eng.cfg.path)
    write(path, extra=OFF)                    # rs3 leaves the file
    in_gap, decided = threading.Event(), threading.Event()
    requester: list = []                      # the request's thread
    planned_in_gap: list = []

    release_ours = eng._release_ours

    def between_apply_and_swap(addrs):        # the reload's address step, after its apply
        in_gap.set()
        assert decided.wait(10)
        release_ours(addrs)
    eng._release_ours = between_apply_and_swap

    set_when_taken(eng, decided)

    plan = eng.dp.plan

    def watched_plan(table):
        if threading.current_thread() in requester:
            planned_in_gap.append(table)
        return plan(table)
    eng.dp.plan = watched_plan

    def left():                               # the data plane's lock, left by the request's thread
        if threading.current_thread() in requester and not planned_in_gap:
            decided.set()
    eng._dp_lock = LockThen(eng._dp_lock, left)

    results = {}

    def run(name, fn):
        t = threading.Thread(target=lambda: results.__setitem__(name, fn()), daemon=True)
        if name == "weight":
            requester.append(t)
        t.start()
        return t

    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        reload = run("reload", eng.reload_or_raise)
        assert in_gap.wait(10)
        request = run("weight", lambda: weight(eng, "rs3", 6))
        reload.join(20)
        request.join(20)
        assert results.get("reload") == f"reloaded {path}"
        eng.sync_overrides()                  # as the run loop does after a reload
    reply = results.get("weight")
    assert reply is not None and reply["ok"] is False and "no real server 'rs3'" in reply["error"], reply
    assert eng.overrides == {}
    assert "dropped" not in caplog.text
    eng.apply_health()
    assert table(eng) == {"rs1": 5, "rs2": 1}


def test_the_override_survives_a_reload_and_leaves_with_its_server(tmp_path, eng, no_addresses, caplog):
    path = Path(eng.cfg.path)
    weight(eng, "rs1", 0)
    weight(eng, "rs3", 6)
    write(path, rs2_weight=2)                        # rs2's weight changes, every server stays
    assert eng.reload_or_raise() == f"reloaded {path}"
    eng.sync_overrides()
    eng.apply_health()
    assert table(eng) == {"rs1": 0, "rs2": 2, "rs3": 6}
    assert eng.overrides == {key(eng, "rs1"): 0, key(eng, "rs3"): 6}
    # rs3 leaves the file: its override is dropped, with a log line; rs1's stays
    write(path, rs2_weight=2, extra=OFF)
    k3 = key(eng, "rs3")
    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        eng.reload_or_raise()
        eng.sync_overrides()
    eng.apply_health()
    assert "operator override weight 6 of real server 198.18.1.12:8080 (TCP 198.18.0.10:80) dropped" in caplog.text
    assert eng.overrides == {key(eng, "rs1"): 0} and k3 not in eng.overrides
    assert table(eng) == {"rs1": 0, "rs2": 2}
    # rs3 comes back in a later reload: at its configured weight, the old override is gone
    write(path, rs2_weight=2)
    eng.reload_or_raise()
    eng.sync_overrides()
    eng.apply_health()
    assert table(eng) == {"rs1": 0, "rs2": 2, "rs3": 1}


def test_status_shows_the_override(eng):
    weight(eng, "rs1", 0)
    reals = {r["name"]: r for r in eng.status()["services"][0]["real_servers"]}
    assert {k: reals["rs1"][k] for k in ("override", "weight", "weight_source", "configured_weight")} == \
        {"override": 0, "weight": 0, "weight_source": "override", "configured_weight": 5}
    assert (reals["rs2"]["override"], reals["rs2"]["weight"], reals["rs2"]["weight_source"]) == (None, 1, "configured")


def test_status_shows_checks_not_run(eng, monkeypatch, capsys):
    """A check the director could not run (out of file descriptors) is in the status, `lb
    status` and not in the server's failures; the server stays up."""
    from lb.cli import main as cli_main
    from lb.health import CheckResult, CheckSpec, Monitor, NannyPolicy

    k1 = key(eng, "rs1")
    mon = Monitor(k1, CheckSpec("tcp", "198.18.1.11", 80), NannyPolicy(timeout=0), None, lambda: 5.0)
    mon.observe(CheckResult(True, "connected", 0.001, 1000.0))
    for _ in range(3):
        mon.observe(CheckResult(False, "not run on this director: Too many open files", 0.0, 1002.0, not_run=True))
    eng.monitors[k1] = (mon.spec, mon.policy, mon, None)
    doc = eng.status()
    rs1 = doc["services"][0]["real_servers"][0]
    assert (rs1["health"], rs1["checks"], rs1["failures"], rs1["not_run"]) == ("up", 1, 0, 3)
    assert rs1["last_not_run"] == {"detail": "not run on this director: Too many open files", "at": 1002.0}
    assert rs1["last_check"]["ok"] is True
    monkeypatch.setattr(cli_main, "_control", lambda args, what: {"ok": True, "status": doc})
    rc, out, _ = cli(capsys, "status")
    lines = out.splitlines()
    at = next(i for i, li in enumerate(lines) if "-> rs1" in li)
    assert "last check ok" in lines[at] and any(
        re.fullmatch(r" +3 checks not run \(the director's own resources\), the last \S+: not run on this "
                     r"director: Too many open files", li) for li in lines[at + 1:at + 4]), out


# ---- the control socket, the run loop and the CLI ---------------------------------------------

@pytest.fixture
def running(tmp_path, monkeypatch, no_addresses):
    """Engine.run (its real loop, control socket in tmp_path) over a recording data plane, in
    this thread; ``call(fn)`` runs a blocking client (control.request, the CLI) in a worker."""
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    cfg_path = write(tmp_path / "lb.toml", instance=f"ovr{threading.get_ident() % 10000}")
    eng = make_engine(cfg_path)
    return eng, functools.partial(drive, eng, str(tmp_path))


def drive(eng, run_dir: str, body):
    """Engine.run in this thread (its control socket in run_dir) around ``await body(call)``,
    then a clean stop; ``call(fn)`` runs a blocking client in a worker thread."""
    async def main():
        task = asyncio.create_task(eng.run())
        sock = Path(control.socket_path(eng.cfg.instance, run_dir))
        for _ in range(500):
            if sock.exists():
                break
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        # the clients' threads apart from the daemon's workers (the default executor), as their
        # processes are: a client waiting for its reply never holds up the work that answers it
        with concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="client") as clients:
            try:
                return await body(lambda fn: loop.run_in_executor(clients, fn))
            finally:
                eng._stop = "clean"
                eng._wake.set()
                await task
    return asyncio.run(main())


def test_control_socket_round_trip_through_the_run_loop(running):
    eng, drive = running
    inst = eng.cfg.instance

    async def body(call):
        reply = await call(lambda: control.request(inst, "weight", service="web", server="rs1", weight=0))
        # the reply comes once the run loop has applied the table
        assert reply["ok"] and table(eng) == {"rs1": 0, "rs2": 1, "rs3": 1}, reply
        status = await call(lambda: control.request(inst, "status"))
        assert [r["override"] for r in status["status"]["services"][0]["real_servers"]] == [0, None, None, None]
        reply = await call(lambda: control.request(inst, "weight", service="web", server="rs9", weight=0))
        assert reply == {"ok": False, "error": "virtual server web has no real server 'rs9' "
                                               "(real servers: rs1, rs2, rs3, off)"}
        reply = await call(lambda: control.request(inst, "weight", service="web", server="rs1", weight=None))
        assert reply["ok"] and table(eng)["rs1"] == 5
        # an override survives `lb reload` through the loop
        await call(lambda: control.request(inst, "weight", service="web", server="rs2", weight=0))
        reply = await call(lambda: control.request(inst, "reload"))
        assert reply["ok"], reply
        assert table(eng) == {"rs1": 5, "rs2": 0, "rs3": 1}
        reply = await call(lambda: control.request(inst, "nope"))
        assert reply == {"ok": False, "error": "unknown command 'nope' (status, reload, weight, zero, table, web, "
                                         "config, config-put)"}

    drive(body)


def quiesced(table, address) -> bool:
    """Whether ``table`` (the one service of these tests) has the real server at ``address`` at weight 0."""
    (svc,) = table.services
    return any(r.address == ipaddress.ip_address(address) and r.weight == 0 for r in svc.reals)


def quiesce_rs1_then_rs2(running, plan, status: bool = False) -> tuple:
    """`lb quiesce rs1` and `lb quiesce rs2` at once, rs2's request reaching the daemon while the
    data plane plans rs1's: ``plan(table, pause)`` is the data plane's plan, and ``pause()``
    holds it there until rs2's request is in.  The replies (and `lb status` after them)."""
    eng, drive = running
    inst = eng.cfg.instance
    planning, second_in = threading.Event(), threading.Event()

    def pause():
        planning.set()
        second_in.wait(10)

    class Tight(RecordingDataplane):
        def plan(self, table):
            plan(table, pause)
    eng.dp = Tight()
    eng.apply_health()
    handler = eng.control

    async def arrives(req):        # (the control socket's handler, looked up when it starts)
        if req.get("server") == "rs2":
            second_in.set()
        return await handler(req)
    eng.control = arrives

    async def body(call):
        first = call(lambda: control.request(inst, "weight", service="web", server="rs1", weight=0))
        assert await call(lambda: planning.wait(10))
        second = call(lambda: control.request(inst, "weight", service="web", server="rs2", weight=0))
        first, second = await first, await second
        if not status:
            return first, second
        return first, second, await call(lambda: control.request(inst, "status"))

    return drive(body)


def test_concurrent_overrides_never_undo_each_other(running):
    """Two `lb quiesce` at once (a script quiescing a pool in parallel) when the data plane cannot
    hold the first (here: the table never fits with rs1 quiesced): the refused one put back every
    override that differed from the ones it started from -- the other's too -- and the other,
    planned with the first's change in its table, was refused as well and put the first's back:
    rs1 ended quiesced though its caller was told nothing changed, and rs2 was not though it was
    fine.  Now each request is planned in turn: rs1 refused, rs2 quiesced.  (The plan of rs1's
    change waits until rs2's request has reached the daemon: it comes in meanwhile.)"""
    from lb.dataplane.errors import TableDoesNotFit

    def plan(table, pause):
        if quiesced(table, "198.18.1.11"):
            pause()
            raise TableDoesNotFit("no room for the sorry server")

    eng = running[0]
    first, second = quiesce_rs1_then_rs2(running, plan)
    assert first["ok"] is False and "nothing changed" in first["error"], first
    assert second["ok"] is True, second
    assert eng.overrides == {key(eng, "rs2"): 0}
    assert table(eng) == {"rs1": 5, "rs2": 0, "rs3": 1}


def test_concurrent_overrides_each_is_planned_with_those_before_it(running):
    """Two `lb quiesce` at once that the data plane holds each alone but not both: the one that
    comes second is planned with the first's override set, and refused -- not both answered
    "ok" (each planned alone) and then held back together, waiting, by the run loop."""
    from lb.dataplane.errors import TableDoesNotFit

    def plan(table, pause):
        if quiesced(table, "198.18.1.11") and not quiesced(table, "198.18.1.12"):
            pause()
        if quiesced(table, "198.18.1.11") and quiesced(table, "198.18.1.12"):
            raise TableDoesNotFit("no room for the sorry server")

    eng = running[0]
    first, second, status = quiesce_rs1_then_rs2(running, plan, status=True)
    assert first["ok"] is True, first
    assert second["ok"] is False and "nothing changed" in second["error"], second
    assert eng.overrides == {key(eng, "rs1"): 0}
    assert table(eng) == {"rs1": 0, "rs2": 1, "rs3": 1}
    assert status["status"]["services"][0]["waiting"] is None, status


def test_concurrent_overrides_an_override_being_planned_is_in_no_other_table(running):
    """`lb quiesce rs2` answered while the run loop applies it, and `lb quiesce rs1` (which the
    data plane cannot hold) planned meanwhile: rs1's override was set before its plan, so `lb
    status` showed rs1 quiesced by the operator and the loop's table had it too -- rs2's change
    waited with it as not fitting ("WAITING" in `lb status`), its caller was told it was applied,
    and it was not until the loop's next turn (a stop before that: never).  Now an override is
    set once its plan says it fits: rs2's change is applied when its caller hears so."""
    from lb.dataplane.errors import TableDoesNotFit
    eng, drive = running
    inst = eng.cfg.instance
    planning, applying, looked = threading.Event(), threading.Event(), threading.Event()

    class Tight(RecordingDataplane):
        def plan(self, table):
            if quiesced(table, "198.18.1.11"):
                planning.set()
                looked.wait(10)          # until the status below is taken
                raise TableDoesNotFit("no room for the sorry server")
    eng.dp = Tight()
    eng.apply_health()
    apply_health = eng.apply_health

    def apply_once_rs1_is_planned():      # the loop's apply of rs2's change, from rs1's plan on
        if eng.overrides.get(key(eng, "rs2")) == 0:
            applying.set()
            planning.wait(10)
        apply_health()
    eng.apply_health = apply_once_rs1_is_planned

    def rs1(status):
        return status["status"]["services"][0]["real_servers"][0]

    async def body(call):
        second = call(lambda: control.request(inst, "weight", service="web", server="rs2", weight=0))
        assert await call(lambda: applying.wait(10))
        first = call(lambda: control.request(inst, "weight", service="web", server="rs1", weight=0))
        try:
            assert await call(lambda: planning.wait(10))
            during = await call(lambda: control.request(inst, "status"))
        finally:
            looked.set()
        assert (rs1(during)["override"], rs1(during)["weight"]) == (None, 5), rs1(during)
        second = await second
        assert second["ok"] is True, second
        assert table(eng) == {"rs1": 5, "rs2": 0, "rs3": 1}        # applied, as its reply says
        after = await call(lambda: control.request(inst, "status"))
        assert after["status"]["services"][0]["waiting"] is None, after
        return await first

    first = drive(body)
    assert first["ok"] is False and "nothing changed" in first["error"], first
    assert eng.overrides == {key(eng, "rs2"): 0}
    assert table(eng) == {"rs1": 5, "rs2": 0, "rs3": 1}


def weight_while_a_reload_plans(running, server, rs2_weight=1) -> tuple:
    """`lb reload` of a file that no longer has rs3 (and gives rs2 ``rs2_weight``), held while it
    plans -- its file read, nothing applied yet -- and `lb weight web SERVER 0` sent meanwhile.
    The reload goes on once the request has either set its override or stopped to wait for the
    reload (left the data plane's lock without planning).  (the weight reply, the reload's,
    `lb status` after both)."""
    eng, drive = running
    inst = eng.cfg.instance
    write(Path(eng.cfg.path), instance=inst, rs2_weight=rs2_weight, extra=OFF)
    planning, decided = threading.Event(), threading.Event()
    reloader: list = []                       # the reload's thread
    planned: list = []                        # threads whose plan came while the reload was held

    reload_config = eng.reload_config

    def held_while_planning(keep=False):
        new = reload_config(keep)
        reloader.append(threading.current_thread())
        planning.set()
        assert decided.wait(10)
        return new
    eng.reload_config = held_while_planning

    set_when_taken(eng, decided)

    plan = eng.dp.plan

    def watched_plan(table):
        if planning.is_set() and not decided.is_set() and threading.current_thread() not in reloader:
            planned.append(threading.current_thread())
        return plan(table)
    eng.dp.plan = watched_plan

    def left():                               # the data plane's lock, left by the request's thread
        me = threading.current_thread()
        if planning.is_set() and me not in reloader and me not in planned:
            decided.set()
    eng._dp_lock = LockThen(eng._dp_lock, left)

    async def body(call):
        reloaded = call(lambda: control.request(inst, "reload"))
        assert await call(lambda: planning.wait(10))
        reply = await call(lambda: control.request(inst, "weight", service="web", server=server, weight=0))
        return reply, await reloaded, await call(lambda: control.request(inst, "status"))

    return drive(body)


def overrides_shown(status) -> dict:
    """{real server name: its override} as `lb status` shows them."""
    return {r["name"]: r["override"] for r in status["status"]["services"][0]["real_servers"]}


def test_an_override_sent_while_a_reload_plans_for_a_server_it_removes_is_refused(running, caplog):
    """`lb quiesce web rs3` sent while a reload that removes rs3 is still planning (its file read,
    nothing applied): the request was checked and set against the old config and answered "ok"
    -- after the reload had dropped its override with a warning.  Now it waits for the reload and
    is checked against the config that runs then: refused, naming the server; nothing is set,
    kept for a restart or shown by `lb status`."""
    eng = running[0]
    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        reply, reloaded, status = weight_while_a_reload_plans(running, "rs3")
    assert reloaded["ok"], reloaded
    assert reply == {"ok": False, "error": "virtual server web has no real server 'rs3' "
                                           "(real servers: rs1, rs2, off)"}, reply
    assert eng.overrides == {}
    assert overrides_shown(status) == {"rs1": None, "rs2": None, "off": None}
    assert not Path(lbengine.overrides_file(eng.cfg.instance)).exists()     # nothing for a restart
    assert "dropped" not in caplog.text
    assert table(eng) == {"rs1": 5, "rs2": 1}


def test_an_override_sent_while_a_reload_plans_for_a_server_it_keeps_is_in_force_after_it(running):
    """`lb quiesce web rs2` sent while a reload that keeps rs2 (at a new weight) plans: answered
    "ok" once the reload is done, and in force in the new config's table and `lb status`."""
    eng = running[0]
    reply, reloaded, status = weight_while_a_reload_plans(running, "rs2", rs2_weight=2)
    assert reloaded["ok"], reloaded
    assert reply["ok"] and reply["message"] == ("rs2 (198.18.1.12:80) of web: weight 0: quiesced by operator; "
                                                "configured 2; open connections go on, no new ones"), reply
    assert eng.overrides == {key(eng, "rs2"): 0}
    assert overrides_shown(status) == {"rs1": None, "rs2": 0, "off": None}
    assert table(eng) == {"rs1": 5, "rs2": 0}


def test_a_reload_between_an_override_and_its_apply_that_removes_the_server_is_in_the_answer(running, caplog):
    """`lb quiesce web rs3` set, and `lb reload` of a file without rs3 reaching the daemon before
    the run loop applies the override (the loop's turn reloads first, and drops the override):
    its caller heard "ok" for an override no longer in force.  Now the answer says the reload
    removed the server."""
    eng, drive = running
    inst = eng.cfg.instance
    path = Path(eng.cfg.path)
    write(path, instance=inst, extra=OFF)
    reloads: list = []
    take_override = eng._take_override

    def take_then_reload(request):
        message = take_override(request)
        # the control socket's `reload` request, handled right after this one's set
        fut = asyncio.get_running_loop().create_future()
        eng._reload_waiters.append(fut)
        reloads.append(fut)
        return message
    eng._take_override = take_then_reload

    async def body(call):
        reply = await call(lambda: control.request(inst, "weight", service="web", server="rs3", weight=0))
        return reply, await reloads[0], await call(lambda: control.request(inst, "status"))

    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        reply, reloaded, status = drive(body)
    assert reloaded["ok"], reloaded
    assert reply == {"ok": False, "error": f"real server rs3 (198.18.1.12:8080) of web: a reload of {path} since "
                                           f"this request removed it (or made it inactive): no override of it is "
                                           f"in force"}, reply
    assert "dropped: the reloaded config no longer has it" in caplog.text
    assert eng.overrides == {}
    assert overrides_shown(status) == {"rs1": None, "rs2": None, "off": None}
    assert table(eng) == {"rs1": 5, "rs2": 1}


def test_an_override_waits_for_a_reload_no_longer_than_reload_wait(eng, no_addresses, monkeypatch):
    """A reload that does not end (here: held while it plans) does not hold an `lb weight` for
    ever: after RELOAD_WAIT seconds its caller is told to try again, and nothing is set; once the
    reload is done a request is planned against the new config."""
    monkeypatch.setattr(lbengine, "RELOAD_WAIT", 0.0)
    path = Path(eng.cfg.path)
    write(path, rs2_weight=2, extra=OFF)
    planning, answered = threading.Event(), threading.Event()
    reload_config = eng.reload_config

    def held_while_planning(keep=False):
        new = reload_config(keep)
        planning.set()
        assert answered.wait(10)
        return new
    eng.reload_config = held_while_planning
    results = {}
    reload = threading.Thread(target=lambda: results.__setitem__("reload", eng.reload_or_raise()), daemon=True)
    reload.start()
    try:
        assert planning.wait(10)
        reply = weight(eng, "rs2", 0)
    finally:
        answered.set()
    reload.join(20)
    assert results.get("reload") == f"reloaded {path}"
    assert reply == {"ok": False, "error": f"a reload of {path} is still under way after 0 s; nothing changed: "
                                           f"try again once it is done"}, reply
    assert eng.overrides == {}
    eng.sync_overrides()                      # as the run loop does after a reload
    assert weight(eng, "rs2", 0)["ok"]
    assert table(eng) == {"rs1": 5, "rs2": 0}


def cli(capsys, *argv):
    rc = lb_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_weight_quiesce_activate_and_status(running, capsys):
    eng, drive = running
    inst = ["--instance", eng.cfg.instance]

    async def body(call):
        rc, out, err = await call(lambda: cli(capsys, "quiesce", "web", "rs1", *inst))
        assert (rc, err) == (0, "")
        assert out == ("rs1 (198.18.1.11:80) of web: weight 0: quiesced by operator; configured 5; "
                       "open connections go on, no new ones\n")
        assert table(eng)["rs1"] == 0
        rc, out, _ = await call(lambda: cli(capsys, "status", *inst))
        assert rc == 0
        lines = out.splitlines()
        at = next(i for i, li in enumerate(lines) if "-> rs1" in li)
        assert re.search(r"-> rs1 +198\.18\.1\.11:80 +weight 0 ", lines[at]), out
        assert lines[at + 1] == "     weight 0: quiesced by operator; configured 5", out
        rc, out, _ = await call(lambda: cli(capsys, "status", "--json", *inst))
        assert json.loads(out)["services"][0]["real_servers"][0]["override"] == 0
        rc, out, err = await call(lambda: cli(capsys, "weight", "web", "198.18.1.12", "3", *inst))
        assert rc == 1 and out == "" and err.startswith("lb: server '198.18.1.12' is ambiguous")
        rc, out, err = await call(lambda: cli(capsys, "weight", "web", "rs2", "70000", *inst))
        assert (rc, out) == (1, "") and err == "lb: weight: 70000 is out of range 0..65535 (0 quiesces: " \
                                               "open connections go on, no new ones)\n"
        rc, out, err = await call(lambda: cli(capsys, "weight", "web", "rs2", "-1", *inst))
        assert rc == 1 and "weight: -1 is out of range" in err
        rc, out, err = await call(lambda: cli(capsys, "quiesce", "nosuch", "rs1", *inst))
        assert rc == 1 and err.startswith("lb: no virtual server 'nosuch'")
        rc, out, _ = await call(lambda: cli(capsys, "weight", "web", "198.18.1.12:80", "4", *inst))
        assert rc == 0 and "weight 4: set by operator; configured 1" in out
        rc, out, _ = await call(lambda: cli(capsys, "activate", "web", "rs1", *inst))
        assert (rc, out) == (0, "rs1 (198.18.1.11:80) of web: override cleared; weight 5: configured\n")
        assert table(eng) == {"rs1": 5, "rs2": 4, "rs3": 1}

    drive(body)


def test_cli_not_running_says_what_lb_status_says(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    rc, _, status_err = cli(capsys, "status", "--instance", "gone")
    assert rc == 1 and "instance 'gone' is not running" in status_err
    for argv in (["quiesce", "web", "rs1"], ["activate", "web", "rs1"], ["weight", "web", "rs1", "2"]):
        assert cli(capsys, *argv, "--instance", "gone") == (1, "", status_err)


def test_cli_weight_must_be_a_number(capsys):
    with pytest.raises(SystemExit) as e:
        lb_main(["weight", "web", "rs1", "lots", "--instance", "x"])
    assert e.value.code == 2 and "'lots' is not a whole number" in capsys.readouterr().err


# ---- the web console ------------------------------------------------------------------------

class ConsoleDaemon:
    """The console's control socket, answered by a real Engine over a recording data plane (JSON
    both ways, as over the socket); records the requests that change something."""

    def __init__(self, eng):
        self.real = eng
        self.requests = []

    async def __call__(self, cmd, **args):
        req = json.loads(json.dumps({"cmd": cmd, **args}))
        if cmd == "table":
            return {"ok": True, "services": []}
        if cmd not in ("status", "config"):
            self.requests.append(req)
        return json.loads(json.dumps(await self.real.control(req)))


@pytest.fixture
def console(eng, tmp_path):
    from lb.web import app as webapp
    from lb.web import password

    pw = tmp_path / "web.passwd"
    password.write(pw, "pw for the test")
    return webapp.Console(ConsoleDaemon(eng), pw, webapp.Settings(), fail_delay=0.01)


def web(console, body):
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        client = TestClient(TestServer(console.app()))
        await client.start_server()
        try:
            await client.post("/login", data={"user": "admin", "password": "pw for the test"}, allow_redirects=False)
            return await body(client)
        finally:
            await client.close()
    return asyncio.run(go())


def rows(page: str) -> dict:
    """{real server name: its status table row's HTML}"""
    return {m.group(1): m.group(0) for m in re.finditer(r'<tr data-rs="(\w+)">.*?</tr>', page, re.S)}


def test_web_quiesce_and_activate_buttons(console, eng):
    async def body(client):
        page = await (await client.get("/status")).text()
        r = rows(page)
        assert re.search(r"name=action value=quiesce (?!disabled)", r["rs1"])
        assert re.search(r"name=action value=activate disabled", r["rs1"])     # nothing to clear yet
        assert "inactive in the file" in r["off"] and "<button" not in r["off"]
        csrf = re.search(r'name=csrf value="([^"]+)"', page).group(1)
        form = {"service": "web", "server": "rs1", "action": "quiesce"}
        resp = await client.post("/weight", data=form, allow_redirects=False)
        assert resp.status == 403 and console.daemon.requests == []             # no CSRF token
        resp = await client.post("/weight", data={**form, "csrf": csrf}, allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/status")
        assert console.daemon.requests == [{"cmd": "weight", "service": "web", "server": "rs1", "weight": 0}]
        assert table(eng)["rs1"] == 0
        page = await (await client.get("/status")).text()
        assert "rs1 (198.18.1.11:80) of web: weight 0: quiesced by operator; configured 5" in page   # the flash
        r = rows(page)
        assert re.search(r'<td class="num override"[^>]*>0: quiesced by operator; configured 5</td>', r["rs1"])
        assert re.search(r"name=action value=quiesce disabled", r["rs1"])
        assert "<td class=num>1</td>" in r["rs2"]
        resp = await client.post("/weight", data={**form, "action": "activate", "csrf": csrf}, allow_redirects=False)
        assert resp.status == 303 and table(eng)["rs1"] == 5
        page = await (await client.get("/status")).text()
        assert "override cleared; weight 5: configured" in page and "num override" not in page
        # a refusal is shown, and nothing changes
        await client.post("/weight", data={**form, "server": "rs9", "csrf": csrf}, allow_redirects=False)
        page = await (await client.get("/status")).text()
        assert "virtual server web has no real server &#x27;rs9&#x27;" in page and eng.overrides == {}

    web(console, body)


# ---- the lab: `lb run` on the DR lab --------------------------------------------------------

LAB_VIP = "198.18.0.10"


def curl(lab, n):
    bodies = []
    for _ in range(n):
        p = lab.run("client", ["curl", "-sS", "--noproxy", "*", "-m", "3", f"http://{LAB_VIP}/"],
                    check=False, timeout=10)
        assert p.returncode == 0, p.stderr
        bodies.append(p.stdout.strip())
    return bodies


def lb_cmd(*argv):
    return subprocess.run([LB, *argv, "--instance", "lab"], capture_output=True, text=True, timeout=30)


def test_lab_quiesce_and_activate_a_real_server(lab, lb_module_runner, tmp_path):
    config = tmp_path / "lab-dr.toml"
    shutil.copyfile(REPO / "configs" / "lab-dr.toml", config)
    lb_module_runner.start(config)
    assert collections.Counter(curl(lab, 6)) == {"rs1": 2, "rs2": 2, "rs3": 2}

    p = lb_cmd("quiesce", "web", "rs1")
    assert p.returncode == 0 and "weight 0: quiesced by operator; configured 1" in p.stdout, p.stderr
    assert set(curl(lab, 6)) == {"rs2", "rs3"}
    listing = lb_cmd("list", "-n")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^  -> 198\.18\.1\.11:80 +Route +0 ", listing.stdout, re.M), listing.stdout
    assert re.search(r"^  -> 198\.18\.1\.12:80 +Route +1 ", listing.stdout, re.M), listing.stdout
    status = lb_cmd("status")
    assert "     weight 0: quiesced by operator; configured 1\n" in status.stdout, status.stdout

    p = lb_cmd("activate", "web", "rs1")
    assert p.returncode == 0 and "override cleared; weight 1: configured" in p.stdout, p.stderr
    assert "rs1" in curl(lab, 6)                    # the reply came once the table was applied
    assert re.search(r"^  -> 198\.18\.1\.11:80 +Route +1 ", lb_cmd("list", "-n").stdout, re.M)


def test_lab_override_survives_a_restart_of_lb(lab, lb_module_runner, tmp_path):
    """rs1 quiesced by the operator; `lb run` stops (SIGTERM) and starts again on the same
    config: rs1 is still at weight 0 (an override, said so by lb status) and gets no new
    connection, until the operator activates it."""
    config = tmp_path / "lab-dr.toml"
    shutil.copyfile(REPO / "configs" / "lab-dr.toml", config)
    for p in lb_module_runner.procs:           # this module's earlier `lb run`, if any
        p.close()
    first = lb_module_runner.start(config)
    try:
        p = lb_cmd("quiesce", "web", "rs1")
        assert p.returncode == 0, p.stderr
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.log()
        assert lb_cmd("status").returncode != 0          # really gone

        second = lb_module_runner.start(config)
        assert second.pid != first.pid
        assert re.search(r"^  -> 198\.18\.1\.11:80 +Route +0 ", lb_cmd("list", "-n").stdout, re.M)
        assert "     weight 0: quiesced by operator; configured 1\n" in lb_cmd("status").stdout
        assert set(curl(lab, 6)) == {"rs2", "rs3"}
    finally:
        lb_cmd("activate", "web", "rs1")
    assert re.search(r"^  -> 198\.18\.1\.11:80 +Route +1 ", lb_cmd("list", "-n").stdout, re.M)


def test_overrides_file_restores_them_into_a_new_engine(tmp_path, monkeypatch, caplog):
    """What a restart of lb restores (test_lab_override_survives_a_restart_of_lb restarts it
    for real): the overrides are kept in /run/lb/<instance>.overrides.json (0600) and a new
    engine restores them for the servers the config still has; a server the new config lacks
    loses its override, with a warning; a damaged file is ignored."""
    import os
    import stat

    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    cfg_path = write(tmp_path / "lb.toml")
    eng = make_engine(cfg_path)
    eng._restore_overrides()                 # what start() does: nothing to restore yet
    eng.set_override("web", "rs1", 0)
    eng.set_override("web", "rs2", 7)
    f = Path(lbengine.overrides_file(eng.cfg.instance))
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600

    again = make_engine(cfg_path)
    again._restore_overrides()
    again.apply_health()
    assert table(again) == {"rs1": 0, "rs2": 7, "rs3": 1}
    again.set_override("web", "rs2", None)   # cleared: gone from the file too
    third = make_engine(write(tmp_path / "lb2.toml", extra=OFF))    # rs3 no longer in the config
    third._restore_overrides()
    third.apply_health()
    assert table(third) == {"rs1": 0, "rs2": 1}

    again.set_override("web", "rs3", 0)      # an override for rs3 is in the file now
    with caplog.at_level("WARNING"):
        fourth = make_engine(tmp_path / "lb2.toml")
        fourth._restore_overrides()
    assert "does not have: dropped" in caplog.text
    assert fourth.overrides == {key(fourth, "rs1"): 0}

    fourth.set_override("web", "rs1", None)  # nothing overridden: no file left behind
    assert not f.exists()
    f.write_text("{not json")
    fifth = make_engine(cfg_path)
    fifth._restore_overrides()               # a damaged file is ignored, with a warning
    assert fifth.overrides == {}


def test_a_load_that_moves_at_every_poll_logs_a_line_a_minute(eng, caplog):
    """An agent whose answer changes at every poll (a busy server's load average, or one that
    answers 1% and 100% by turns) wrote a line per real server every interval; now the first
    change is logged, then one a minute per real server with the count of the others (the
    weight itself follows every answer)."""
    k1, k2 = key(eng, "rs1"), key(eng, "rs2")
    with caplog.at_level(logging.INFO, logger="lb.engine"):
        for i in range(20):
            eng._weight_changed(k1, 1 + i % 5, f"load {i}")
            eng._weight_changed(k2, 1 + i % 3, f"load {i}")
    lines = [r.getMessage() for r in caplog.records if "load monitor sets weight" in r.getMessage()]
    assert len(lines) == 2 and "198.18.1.11:80" in lines[0] and "198.18.1.12:80" in lines[1], lines
    assert eng.weights[k1] == 5 and eng.weights[k2] == 2
    eng.apply_health()
    assert table(eng)["rs1"] == 5
