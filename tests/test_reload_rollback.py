"""A reload is all or nothing (issue 15): what can fail is checked before the first write
(Dataplane.plan: every table's capacity, draining real servers' slots included), and a write
that still fails part-way has the data plane write its previous table back and the reload's new
addresses removed.  Checked on a loaded XDP data plane (fake next hops) with a fake address
layer, by what an operator would compare: every map the control plane writes, `lb list`, and the
interface's addresses, before and after."""
from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

import pytest
from lb import config as lbconfig
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane.bpfsys import BpfError
from lb.dataplane.errors import ApplyFailed, TableDoesNotFit
from lb.dataplane.xdp import Sizes
from lb.engine import Engine
from lb.ha import addresses
from packets_util import connect, lb_list, loaded_dataplane, maps_now

ip = ipaddress.ip_address
PER_SERVICE = 4

CONFIG = """
[global]
instance = "{instance}"
public_interface = "lo"
network = "direct"

[tables]
services = 16
real_servers = 64
reals_per_service = {per_service}
connections = 4096

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "rr"
  [virtual_server.monitor]
  kind = "none"
{web}

[[virtual_server]]
name = "cache"
address = "198.18.0.11"
port = 80
scheduler = "mh"
  [virtual_server.monitor]
  kind = "none"
{cache}
{extra}
"""

NEW_SERVICE = """
[[virtual_server]]
name = "api"
address = "198.18.0.20"
port = 443
scheduler = "wlc"
  [virtual_server.monitor]
  kind = "none"
  [[virtual_server.real_server]]
  address = "198.18.1.31"
"""


def reals(*last_octets, weight=1) -> str:
    return "".join(f'  [[virtual_server.real_server]]\n  address = "198.18.1.{n}"\n  weight = {weight}\n'
                   for n in last_octets)


def write(path: Path, instance: str, web=(11, 12, 13, 14), cache=(21, 22), cache_weight=1, extra="") -> Path:
    path.write_text(CONFIG.format(instance=instance, per_service=PER_SERVICE, web=reals(*web),
                                  cache=reals(*cache, weight=cache_weight), extra=extra))
    return path


class FakeAddresses:
    """The address layer (lb.ha.addresses) over a dict instead of the host's interfaces."""

    def __init__(self, fail_on: str | None = None):
        self.on: dict[str, set] = {}
        self.fail_on = fail_on

    def check(self, addrs):
        pass

    def take(self, addrs):
        added = []
        for a in addrs:
            if str(a.address.ip) == self.fail_on:
                self.release(added)
                raise addresses.AddressError(f"adding address {a.address} to {a.ifname}: File exists")
            have = self.on.setdefault(a.ifname, set())
            if a.address not in have:
                have.add(a.address)
                added.append(a)
        return added

    def release(self, addrs):
        for a in addrs:
            self.on.get(a.ifname, set()).discard(a.address)

    def snapshot(self) -> dict:
        return {k: sorted(map(str, v)) for k, v in self.on.items() if v}


@pytest.fixture
def fake_addresses(monkeypatch):
    fake = FakeAddresses()
    for name in ("check", "take", "release"):
        monkeypatch.setattr(addresses, name, getattr(fake, name))
    return fake


@pytest.fixture
def engine(tmp_path, fake_addresses):
    """An engine running the config of write() on a loaded XDP data plane, its addresses taken."""
    with loaded_dataplane("rollback", Sizes(16, 64, PER_SERVICE, 4096)) as dp:
        path = write(tmp_path / "lb.toml", dp.instance)
        eng = Engine(lbconfig.load(path))
        eng.dp.close()
        eng.dp = dp
        eng.owned = addresses.wanted_addresses(eng.cfg)
        addresses.take(eng.owned)
        eng.apply_health()
        yield eng


def state(eng, fake) -> tuple:
    return maps_now(eng.dp), lb_list(eng.dp), fake.snapshot(), [str(a.address) for a in eng.owned]


def test_a_reload_that_does_not_fit_with_draining_servers_changes_nothing(engine, fake_addresses):
    """web has reals_per_service (4) servers; one of them holds a connection.  A reload that
    drops it for a new one (and adds a service with a new VIP) needs 5 slots while it drains:
    refused before anything is written, with what does not fit; maps, `lb list` and addresses
    as before, and a clean stop still removes every address."""
    eng = engine
    server = connect(eng.dp)
    keep = [n for n in (11, 12, 13, 14) if f"198.18.1.{n}" != server]
    before = state(eng, fake_addresses)
    write(Path(eng.cfg.path), eng.dp.instance, web=(*keep, 15), extra=NEW_SERVICE)

    reply = eng._reload_reply()
    assert reply["ok"] is False and reply["changed"] is False, reply
    assert "nothing changed" in reply["error"]
    assert f"virtual service web (TCP 198.18.0.10:80): 4 real servers + 1 draining ({server}:80" in reply["error"]
    assert "tables.reals_per_service = 4" in reply["error"]
    assert state(eng, fake_addresses) == before
    assert "198.18.0.20/32" not in str(fake_addresses.snapshot())

    # once its connection is gone the same reload fits, and is applied
    eng.dp.maps["lb_conns"].delete_many([k for k, _ in eng.dp.maps["lb_conns"].items()])
    eng.dp.sweep()
    assert eng._reload_reply()["ok"] is True
    assert "198.18.0.20/32" in str(fake_addresses.snapshot())
    assert "198.18.1.15:80" in lb_list(eng.dp) and f"{server}:80" not in lb_list(eng.dp)
    eng.stop()
    assert fake_addresses.snapshot() == {}


def test_plan_counts_every_slot_a_reload_would_need(engine):
    """Dataplane.plan by itself: the real server ids of the whole table, 16 services x 4 in
    place of the 6 servers there: 64 ids, tables.real_servers, but the one holding a connection
    keeps its id until the connection ends; nothing written."""
    dp = engine.dp
    connect(dp)
    before = maps_now(dp)
    many = tuple(ServiceSpec("tcp", ip(f"198.18.0.{30 + s}"), 80, "wlc",
                             tuple(RealSpec(ip(f"198.18.2.{s * 4 + r}"), 80, 1) for r in range(4)), f"s{s}")
                 for s in range(16))
    with pytest.raises(TableDoesNotFit) as e:
        dp.plan(TableSpec(many))
    assert "no free real server slot for 1 of the 64 real servers to add: tables.real_servers = 64" in str(e.value)
    dp.plan(TableSpec(many[:-1] + (ServiceSpec("tcp", ip("198.18.0.99"), 80, "wlc", many[-1].reals[:3]),)))
    with pytest.raises(TableDoesNotFit, match="17 virtual services, but tables.services is 16"):
        dp.plan(TableSpec(many + (ServiceSpec("udp", ip("198.18.0.99"), 53, "rr"),)))
    assert maps_now(dp) == before


def test_apply_that_fails_part_way_writes_the_previous_table_back(engine):
    """Without the plan, the same table fails in the data plane itself (web's dest list does
    not fit its map) after other maps were written: the undo log writes them back."""
    eng = engine
    server = connect(eng.dp)
    before = maps_now(eng.dp), lb_list(eng.dp)
    write(Path(eng.cfg.path), eng.dp.instance, web=[n for n in (11, 12, 13, 14) if f"198.18.1.{n}" != server] + [15],
          extra=NEW_SERVICE)
    new = eng._table(lbconfig.load(eng.cfg.path))
    with pytest.raises(ApplyFailed) as e:
        eng.dp.apply(new)
    assert e.value.restored and "writing lb_svc_dests" in str(e.value) and "the previous table is back" in str(e.value)
    assert (maps_now(eng.dp), lb_list(eng.dp)) == before
    # and the in-memory view went back with the maps: the next change applies as usual
    assert connect(eng.dp, sport=40001) in {f"198.18.1.{n}" for n in (11, 12, 13, 14)}


@pytest.mark.parametrize("failing", ["lb_services", "lb_svc", "lb_reals"])
def test_a_write_failing_midway_is_rolled_back_with_the_new_addresses(engine, fake_addresses, failing):
    """A reload that changes weights (wrr and the mh table), adds a real server and a service
    with a new VIP; the kernel refuses one map's write (injected): the reply says what failed
    and that the previous state is back, and maps, mh tables, `lb list` and addresses are."""
    eng = engine
    connect(eng.dp)
    before = state(eng, fake_addresses)
    write(Path(eng.cfg.path), eng.dp.instance, web=(11, 12, 13), cache=(21, 22, 23), cache_weight=3,
          extra=NEW_SERVICE)
    m = eng.dp.maps[failing]

    def refuse(*a, **kw):
        raise BpfError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    m.set_many = m.set = refuse             # the instance's: the class's come back below
    try:
        reply = eng._reload_reply()
    finally:
        del m.set_many, m.set
    assert reply["ok"] is False and reply["changed"] is False and reply["rolled_back"] is True, reply
    assert f"writing {failing}: [Errno 12] Cannot allocate memory" in reply["error"]
    assert "the previous table is back" in reply["error"] and "removed again: nothing changed" in reply["error"]
    assert state(eng, fake_addresses) == before
    # the config is still the old one; the same reload now goes through
    assert eng._reload_reply()["ok"] is True
    assert "198.18.0.20:443" in lb_list(eng.dp) and "198.18.1.23:80" in lb_list(eng.dp)


def test_a_scheduler_program_the_kernel_refuses_fails_the_reload_with_nothing_changed(engine, fake_addresses,
                                                                                       monkeypatch):
    """A reload adds a wlc service, whose program loads with the first table that uses it; the
    kernel refuses it (injected): nothing of the table was written, the new VIP is removed
    again, and the reply says that nothing changed."""
    from lb.dataplane import bpfobj
    from lb.dataplane.errors import DataplaneError

    eng = engine
    assert "lb_sched_wlc" not in eng.dp.program.fns
    before = state(eng, fake_addresses)
    write(Path(eng.cfg.path), eng.dp.instance, web=(11, 12, 13), extra=NEW_SERVICE)
    load_programs = bpfobj.load_programs

    def refuse(obj, loaded, names):
        raise DataplaneError(f"the kernel refused program {names[0]}: processed 1000001 insns")

    monkeypatch.setattr(bpfobj, "load_programs", refuse)
    reply = eng._reload_reply()
    assert reply["ok"] is False and reply["changed"] is False and reply["rolled_back"] is True, reply
    assert "the kernel refused program lb_sched_wlc" in reply["error"] and "nothing changed" in reply["error"]
    assert state(eng, fake_addresses) == before
    monkeypatch.setattr(bpfobj, "load_programs", load_programs)
    assert eng._reload_reply()["ok"] is True
    assert "198.18.0.20:443 wlc" in lb_list(eng.dp)


def test_an_address_that_cannot_be_added_refuses_the_reload(engine, fake_addresses):
    eng = engine
    before = state(eng, fake_addresses)
    fake_addresses.fail_on = "198.18.0.20"
    write(Path(eng.cfg.path), eng.dp.instance, extra=NEW_SERVICE)
    reply = eng._reload_reply()
    assert reply["ok"] is False and reply["changed"] is False, reply
    assert "reload refused, nothing changed: adding address 198.18.0.20/32 to lo" in reply["error"]
    assert state(eng, fake_addresses) == before
