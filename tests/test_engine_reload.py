"""What a reload leaves behind, seen by the operator: the table the data plane holds (a recording
data plane), `lb status`, the reply `lb reload` gets and the daemon's log.  A health check dropped
from a service brings back the server it had taken out; an interface lb's programs are attached
to can change only with a restart; a step after the reload that fails is said in the reply (which
always comes); a refused reload says nothing about sorry servers."""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from lb import config as lbconfig
from lb import control
from lb import engine as lbengine
from lb.engine import ReloadRefused
from lb.ha import addresses
from test_override import drive, make_engine, table

GLOBAL_DIRECT = """
public_interface = "lo"
network = "direct"
"""

GLOBAL_NAT = """
public_interface = "lo"
network = "nat"
private_interface = "lo"
nat_router = "198.18.1.254/24"
"""

CONFIG = """
[global]
instance = "{instance}"
{glob}
[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "wrr"
{sorry}
  [virtual_server.monitor]
  kind = "{kind}"
  quiesce = {quiesce}
{monitor}
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"
  weight = {w1}
  [[virtual_server.real_server]]
  name = "rs2"
  address = "198.18.1.12"
  weight = {w2}
{extra}
"""

# rs1 passes, rs2 fails: the program is run for each server with its address
PROGRAM = """  program = "sh -c 'test %h = 198.18.1.11'"
  timeout = 0
  interval = 0.2
  reentry = 0
"""


@pytest.fixture
def no_addresses(monkeypatch):
    """A reload must not add or remove addresses on this host's interfaces."""
    monkeypatch.setattr(addresses, "take", lambda addrs: list(addrs))
    monkeypatch.setattr(addresses, "release", lambda addrs: None)


def write(path: Path, *, instance="rld", glob=GLOBAL_DIRECT, kind="none", quiesce=False, w1=1, w2=1,
          sorry=False, extra="") -> Path:
    path.write_text(CONFIG.format(instance=instance, glob=glob, kind=kind, quiesce=str(quiesce).lower(),
                                  monitor=PROGRAM if kind == "program" else "", w1=w1, w2=w2,
                                  sorry='sorry_server = "198.18.1.99"' if sorry else "", extra=extra))
    return path


def rs_status(status: dict, name: str) -> dict:
    return next(r for r in status["services"][0]["real_servers"] if r["name"] == name)


@pytest.fixture
def loop(tmp_path, monkeypatch, no_addresses):
    """run(eng, body): Engine.run (its real loop, control socket in tmp_path) around ``body(call)``;
    ``call(fn)`` runs a blocking client (control.request) in a worker thread."""
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))

    return lambda eng, body: drive(eng, str(tmp_path), body)


async def until(cond, seconds=10.0):
    """Wait (bounded) until cond() is true; the assertion that follows says what was expected."""
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# ---- a health check dropped: the servers it had down come back ----------------------------------

@pytest.mark.parametrize("quiesce", [False, True])
def test_a_dropped_health_check_brings_back_the_server_it_had_down(tmp_path, loop, quiesce):
    """rs2 is down (out of the table, or at weight 0 where the service quiesces dead servers); a
    reload makes the monitor "none": rs2 is unmonitored, so up -- and back in the table at its
    weight (it stayed out while `lb status` showed it in)."""
    path = write(tmp_path / "lb.toml", instance=f"rld{threading.get_ident() % 10000}", kind="program",
                 quiesce=quiesce)
    eng = make_engine(path)
    down = {"rs1": 1, "rs2": 0} if quiesce else {"rs1": 1}

    async def body(call):
        await until(lambda: table(eng) == down)
        assert table(eng) == down
        write(path, instance=eng.cfg.instance, kind="none", quiesce=quiesce)
        reply = await call(lambda: control.request(eng.cfg.instance, "reload", timeout=10))
        assert reply["ok"], reply
        await until(lambda: table(eng) == {"rs1": 1, "rs2": 1})
        assert table(eng) == {"rs1": 1, "rs2": 1}
        status = (await call(lambda: control.request(eng.cfg.instance, "status")))["status"]
        assert (rs_status(status, "rs2")["health"], rs_status(status, "rs2")["weight"]) == ("unmonitored", 1)

    loop(eng, body)


# ---- interfaces: restart only ------------------------------------------------------------------

@pytest.mark.parametrize("glob, new, field", [
    (GLOBAL_DIRECT, GLOBAL_DIRECT.replace('public_interface = "lo"', 'public_interface = "lbnew0"'),
     "public_interface"),
    (GLOBAL_NAT, GLOBAL_NAT.replace('public_interface = "lo"', 'public_interface = "lbnew0"'), "public_interface"),
    (GLOBAL_NAT, GLOBAL_NAT.replace('private_interface = "lo"', 'private_interface = "lbnew0"'),
     "private_interface"),
    (GLOBAL_NAT, GLOBAL_NAT + 'nat_router_device = "lbnew0"\n', "nat_router_device"),
], ids=["public", "nat-public", "nat-private", "nat-router-device"])
def test_a_reload_refuses_a_new_interface(tmp_path, monkeypatch, no_addresses, glob, new, field):
    """lb's programs stay on the interfaces they were attached to at start: a reload naming
    another (one this host has) is refused, as the other restart-only keys are, and the
    running table and configuration stay."""
    monkeypatch.setattr(addresses, "interface_exists", lambda name: True)
    monkeypatch.setattr(addresses, "check", lambda addrs: None)
    path = write(tmp_path / "lb.toml", glob=glob)
    eng = make_engine(path)
    cfg, applied = eng.cfg, len(eng.dp.applied)
    write(path, glob=new)
    with pytest.raises(ReloadRefused) as e:
        eng.reload_or_raise()
    assert str(e.value) == f"reload refused: {field} changed, which needs a restart"
    assert eng.cfg is cfg and len(eng.dp.applied) == applied


def test_the_console_saves_a_new_interface_only_for_the_next_start(tmp_path, monkeypatch, no_addresses):
    monkeypatch.setattr(addresses, "interface_exists", lambda name: True)
    monkeypatch.setattr(addresses, "check", lambda addrs: None)
    path = write(tmp_path / "lb.toml")
    eng = make_engine(path)
    before = path.read_text()
    got = eng.configs.get()
    doc = got["document"]
    doc["global"]["public_interface"] = "lbnew0"
    reply = asyncio.run(eng.configs.put(doc, got["config"]["version"]))
    assert reply["ok"] is False and reply["error"] == (
        "public_interface can change only when lb restarts; nothing was changed (save it for the next start, "
        "or keep the running values)")
    assert path.read_text() == before
    reply = asyncio.run(eng.configs.put(doc, got["config"]["version"], restart=True))
    assert reply["ok"] and reply["applied"] is False, reply
    assert lbconfig.load(path).public_interface == "lbnew0" and eng.cfg.public_interface == "lo"
    assert eng.configs.info()["restart_needed"] == ["public_interface"]


# ---- a step after the reload fails: the reply comes all the same, and says so -------------------

def test_a_failure_after_the_reload_is_in_its_reply(tmp_path, monkeypatch, loop, caplog):
    """The reload adds [control]'s admin_group, whose socket directory is writable by everyone:
    the control socket cannot follow.  The new configuration is applied; `lb reload` (and a
    console save waiting on it) gets a reply that says what did not follow -- it used to get
    none, and every later console edit waited forever behind it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setattr(lbengine, "SHARED_DIR", str(shared))
    path = write(tmp_path / "lb.toml", instance=f"rld{threading.get_ident() % 10000}")
    eng = make_engine(path)
    inst = eng.cfg.instance

    async def body(call):
        write(path, instance=inst, w2=3, extra='[control]\nadmin_group = "root"\n')
        with caplog.at_level(logging.ERROR, logger="lb.engine"):
            reply = await call(lambda: control.request(inst, "reload", timeout=10))
        assert reply["ok"] is True and reply["changed"] is True, reply
        want = f"[control] not brought up to date: {shared} is writable by others (mode 0777)"
        assert len(reply["warnings"]) == 1 and reply["warnings"][0].startswith(want), reply
        assert reply["message"].startswith(f"reloaded {path}; but {want}"), reply
        assert reply["message"].endswith("(see the daemon's log)"), reply
        assert f"after the reload of {path}: {want}" in caplog.text
        assert table(eng) == {"rs1": 1, "rs2": 3} and eng.cfg.control.admin_group == "root"
        # the loop goes on answering: a second reload gets its reply too
        again = await call(lambda: control.request(inst, "reload", timeout=10))
        assert again["ok"] is True and again["warnings"][0].startswith(want), again

    loop(eng, body)


# ---- a refused reload switches nothing, sorry servers included ------------------------------------

def test_a_refused_reload_says_nothing_of_the_sorry_server(tmp_path, monkeypatch, no_addresses, caplog):
    """The new file leaves web no usable real server, but the reload is refused (an address it
    cannot take): nothing changed, so nothing is logged of the sorry server; the reload that
    goes through logs the switch once."""
    path = write(tmp_path / "lb.toml", sorry=True)
    eng = make_engine(path)
    write(path, sorry=True, w1=0, w2=0)

    def refuse(addrs):
        raise addresses.AddressError("address 198.18.0.10/32: interface lo does not exist")
    monkeypatch.setattr(addresses, "check", refuse)
    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        with pytest.raises(ReloadRefused, match="interface lo does not exist"):
            eng.reload_or_raise()
    assert "sorry server" not in caplog.text
    assert eng.status()["services"][0]["on_sorry_server"] is False and table(eng) == {"rs1": 1, "rs2": 1}

    monkeypatch.setattr(addresses, "check", lambda addrs: None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        eng.reload_or_raise()
    assert [r.getMessage() for r in caplog.records if "sorry server" in r.getMessage()] == [
        "virtual service web: no usable real server, new connections go to the sorry server 198.18.1.99"]
    assert eng.status()["services"][0]["on_sorry_server"] is True and table(eng) == {"198.18.1.99": 1}


def test_a_global_script_user_change_names_why_ha_needs_a_restart() -> None:
    """[ha]'s notify programs run as [global] script_user unless [ha] names one: a change of the
    global user changes [ha], which a reload cannot (pulse keeps running); the refusal says that
    this is what changed, not a bare "[ha]" the operator never touched."""
    from lb.config.toml import loads
    from lb.confedit import restart_needed

    base = ('[global]\npublic_interface = "eth0"\n{user}[ha]\nprimary = "198.18.0.1"\nbackup = "198.18.0.3"\n'
            'key_file = "/etc/lb/ha.key"\n{ha_user}[[virtual_server]]\nname = "web"\naddress = "198.18.0.10"\n'
            'port = 80\n')
    old = loads(base.format(user="", ha_user=""))
    assert restart_needed(old, loads(base.format(user='script_user = "daemon"\n', ha_user=""))) == \
        ["[ha] (its script_user, which it takes from [global] script_user)"]
    # [ha]'s own user named: the global one is not its, and a change of [ha]'s own is plain [ha]
    assert restart_needed(old, loads(base.format(user='script_user = "daemon"\n', ha_user='script_user = "nobody"\n'))) == []
    assert restart_needed(old, loads(base.format(user="", ha_user='script_user = "daemon"\n'))) == ["[ha]"]


# ---- quiesce_server's restart of the counts fails after the table is in place -------------------

API = """
[[virtual_server]]
name = "api"
address = "198.18.0.20"
port = 443
  [virtual_server.monitor]
  kind = "none"
  [[virtual_server.real_server]]
  name = "a1"
  address = "198.18.1.31"
"""

RS3 = """  [[virtual_server.real_server]]
  name = "rs3"
  address = "198.18.1.13"
"""


def test_a_failed_restart_of_the_counts_does_not_undo_a_reload_the_data_plane_applied(tmp_path, monkeypatch,
                                                                                      caplog):
    """web restarts its schedulers' counts when a server joins (quiesce_server); that write fails
    (injected) after the data plane has taken the new table (rs3 and the api service).  The
    table is in place, so the reload is: its new VIP stays on the interface, `lb status` shows
    the new configuration, and the next health change keeps rs3 and api in the table -- not a
    reply that says the reload failed while the data plane forwards the new table to a VIP that
    was just removed, and the next apply silently going back to the old file."""
    from lb.dataplane.errors import DataplaneError
    from test_override import RecordingDataplane

    class RefusingRestart(RecordingDataplane):
        def restart_sched_counts(self, spec):
            raise DataplaneError("writing lb_real_base: [Errno 12] Cannot allocate memory")

    on = set()
    monkeypatch.setattr(addresses, "take", lambda addrs: [a for a in addrs if a not in on and not on.add(a)])
    monkeypatch.setattr(addresses, "release", lambda addrs: on.difference_update(addrs))
    path = write(tmp_path / "lb.toml", instance="rldq")
    path.write_text(path.read_text().replace('scheduler = "wrr"', 'scheduler = "wrr"\nquiesce_server = true'))
    eng = make_engine(path)
    eng.dp = RefusingRestart()
    eng.owned = addresses.wanted_addresses(eng.cfg)
    addresses.take(eng.owned)
    eng.apply_health()
    path.write_text(path.read_text().replace('  weight = 1\n\n', f'  weight = 1\n{RS3}\n', 1)
                    .rstrip() + "\n" + API)
    assert "rs3" in path.read_text().split("api")[0]

    with caplog.at_level(logging.ERROR, logger="lb.engine"):
        reply = eng._reload_reply()
    assert reply["ok"] is True, reply
    assert "writing lb_real_base: [Errno 12] Cannot allocate memory" in caplog.text
    assert "198.18.0.20" in {str(a.address.ip) for a in on}
    assert [vs.name for vs in eng.cfg.virtual_servers] == ["web", "api"]
    eng.health[lbengine.real_key(eng.cfg.virtual_servers[0], eng.cfg.virtual_servers[0].real_servers[1])] = False
    eng.apply_health()
    assert {s.name: sorted(str(r.address) for r in s.reals) for s in eng.dp.applied[-1].services} == \
        {"web": ["198.18.1.11", "198.18.1.13"], "api": ["198.18.1.31"]}


# ---- a reload adding a real server that is not up yet ------------------------------------------

RS3_NOT_UP = """
  [[virtual_server.real_server]]
  name = "rs3"
  address = "198.18.1.13"
"""


def test_a_server_a_reload_adds_has_its_arp_answer_awaited_without_the_data_planes_lock(tmp_path, loop):
    """The reload adds rs3, whose ARP does not answer yet (the kernel's resolution waits up to
    3 s for it).  Its next hop is resolved before the data plane's lock is taken: `lb zero`,
    which writes the maps under that lock as an HA import and the sweep's end do, is answered
    while the reload still waits -- it waited for the answer, under the lock -- and the apply
    takes the next hop so resolved."""
    from test_override import RecordingDataplane

    begun, release = threading.Event(), threading.Event()
    rs3 = ipaddress.ip_address("198.18.1.13")

    class NotUpYet(RecordingDataplane):
        def __init__(self):
            super().__init__()
            self.nexthops, self.zeroed = [], 0

        def nexthops_ahead(self, table):
            assert eng._dp_lock.locked()
            have = {r.address for t in self.applied for s in t.services for r in s.reals}
            return [(r.address, True) for s in table.services for r in s.reals if r.address not in have]

        def resolve_ahead(self, pairs):
            if (rs3, True) in pairs:
                begun.set()
                release.wait(30)
            return {p: f"next hop of {p[0]}" for p in pairs}

        def apply(self, table, nexthops=None):
            super().apply(table)
            self.nexthops.append(nexthops)

        def zero_stats(self, service=None):
            self.zeroed += 1
            return 0

    path = write(tmp_path / "lb.toml", instance=f"rlda{threading.get_ident() % 10000}")
    eng = make_engine(path)
    eng.dp = NotUpYet()
    inst = eng.cfg.instance

    async def body(call):
        eng.apply_health()
        assert eng.dp.nexthops == [{(ipaddress.ip_address(a), True): f"next hop of {a}"
                                    for a in ("198.18.1.11", "198.18.1.12")}]
        write(path, instance=inst, extra=RS3_NOT_UP)
        reload = asyncio.ensure_future(call(lambda: control.request(inst, "reload", timeout=40)))
        try:
            assert await asyncio.get_running_loop().run_in_executor(None, begun.wait, 30)
            reply = await asyncio.wait_for(call(lambda: control.request(inst, "zero", service=None)), 20)
            assert reply["ok"] and eng.dp.zeroed == 1 and not release.is_set(), reply
        finally:
            release.set()
        reply = await reload
        assert reply["ok"], reply
        assert table(eng) == {"rs1": 1, "rs2": 1, "rs3": 1}
        assert eng.dp.nexthops[-1] == {(rs3, True): "next hop of 198.18.1.13"}

    loop(eng, body)
