"""An apply costs what changed (issue 16): a service whose spec is the one last applied, with no
draining real server, is skipped (ServiceTable._unchanged, ServiceSpec.digest).  Checked by what
the maps hold: after each one-server change every map the control plane writes, the mh tables
and `lb list` are byte for byte those of a data plane that walks every service (the skip turned
off), the write counts are the same, and only the changed service was walked; a draining server
of an unchanged spec still leaves once idle; a failed apply leaves nothing the next apply of the
same table would skip."""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os

import pytest
from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane.bpfsys import BpfError
from lb.dataplane.errors import ApplyFailed, TableDoesNotFit
from lb.dataplane.maps import PinnedMaps
from lb.dataplane.services import key_of
from lb.dataplane.xdp import Sizes
from packets_util import connect, lb_list, loaded_dataplane, maps_now

ip = ipaddress.ip_address
SIZES = Sizes(16, 256, 8, 4096)
SCHEDULERS = ("wlc", "wrr", "rr", "mh", "sh", "rr")     # service 5 is a firewall-mark service


def reals_of(s: int, octets=None, weights: dict | None = None) -> tuple[RealSpec, ...]:
    """Service s's real servers 198.18.1.<10 s + 1 ..> (octets: their last octets' offsets)."""
    weights = weights or {}
    return tuple(RealSpec(ip(f"198.18.1.{10 * s + o}"), 0 if s == 5 else 80, weights.get(o, 1 + o % 3))
                 for o in ((1, 2, 3, 4) if octets is None else octets))


def service(s: int, reals: tuple[RealSpec, ...] | None = None) -> ServiceSpec:
    vip = ip(f"198.18.0.{10 + s}")
    spec = ServiceSpec("tcp", vip, 80, SCHEDULERS[s], reals_of(s) if reals is None else reals, f"s{s}",
                       mh_size=251)
    if s == 5:
        spec = dataclasses.replace(spec, port=0, fwmark=5, groups=(PortGroup("tcp", vip, 8000, 8010),))
    return spec


def table(changed: dict | None = None, extra=()) -> TableSpec:
    """Services 0-5, each built afresh (as the engine does: equal specs, not the same objects);
    changed: service index -> its real servers."""
    changed = changed or {}
    return TableSpec(tuple(service(s, changed.get(s)) for s in range(6)) + tuple(extra))


def walked(monkeypatch, dp) -> list:
    """The services apply walks from here on (the keys _apply_service is called with)."""
    seen = []
    inner = dp.table._apply_service

    def spy(key, spec, drains=frozenset()):
        seen.append(key)
        return inner(key, spec, drains)

    monkeypatch.setattr(dp.table, "_apply_service", spy)
    return seen


def weights(dp) -> dict:
    """(VIP or fwmark, real server) -> weight, from the maps as `lb list` reads them"""
    with PinnedMaps(dp.instance) as maps:
        return {(str(svc.address) if not svc.fwmark else svc.fwmark, str(r.address)): r.weight
                for svc in reader.read_services(maps) for r in svc.reals}


@pytest.fixture
def pair():
    """(data plane, reference data plane that walks every service on every apply)"""
    with loaded_dataplane("chg", SIZES) as dp, loaded_dataplane("chgref", SIZES) as ref:
        ref.table._unchanged = lambda key, spec: False
        yield dp, ref


# each step: the table, the service (index) it changes, and what `lb list` then shows for it
STEPS = [
    ("a weight", table({1: reals_of(1, weights={2: 9})}), 1,
     lambda w: w[("198.18.0.11", "198.18.1.12")] == 9),
    ("a removal", table({1: reals_of(1, weights={2: 9}), 3: reals_of(3, (2, 3, 4))}), 3,
     lambda w: ("198.18.0.13", "198.18.1.31") not in w and ("198.18.0.13", "198.18.1.32") in w),
    ("nothing (equal specs, new objects)", table({1: reals_of(1, weights={2: 9}), 3: reals_of(3, (2, 3, 4))}),
     None, lambda w: len(w) == 23),
    ("an addition", table({1: reals_of(1, weights={2: 9}), 3: reals_of(3, (2, 3, 4, 5))}), 3,
     lambda w: w[("198.18.0.13", "198.18.1.35")] == 3),
    ("a firewall-mark service's weight", table({1: reals_of(1, weights={2: 9}), 3: reals_of(3, (2, 3, 4, 5)),
                                                5: reals_of(5, weights={4: 7})}), 5,
     lambda w: w[(5, "198.18.1.54")] == 7),
]


def test_one_server_changes_reach_the_maps(pair, monkeypatch):
    """The same table steps applied to both data planes: after each, the maps, mh tables, `lb list`
    and the write count are the reference's, `lb list` shows the change, and only the changed
    service was walked (the rest were skipped, so the skip is what is being checked)."""
    dp, ref = pair
    base = table()
    assert dp.apply(base) == ref.apply(base)
    seen = walked(monkeypatch, dp)
    for what, tab, changed, shows in STEPS:
        seen.clear()
        n = dp.apply(tab)
        assert n == ref.apply(tab), what
        assert maps_now(dp) == maps_now(ref), what
        assert lb_list(dp) == lb_list(ref), what
        assert shows(weights(dp)), (what, lb_list(dp))
        assert seen == ([] if changed is None else [key_of(tab.services[changed])]), what
        assert (n == 0) == (changed is None), what
    # back to the first table: the three changed services are walked, the maps are the reference's
    seen.clear()
    assert dp.apply(base) == ref.apply(base)
    assert maps_now(dp) == maps_now(ref) and lb_list(dp) == lb_list(ref)
    assert sorted(seen, key=str) == sorted((key_of(base.services[s]) for s in (1, 3, 5)), key=str)
    assert weights(dp)[("198.18.0.11", "198.18.1.12")] == 3


def test_a_changed_scheduler_or_service_setting_is_written(pair, monkeypatch):
    """Not only real servers: a scheduler, persistence and a scheduler flag are in the spec too."""
    dp, ref = pair
    base = table()
    dp.apply(base)
    ref.apply(base)
    seen = walked(monkeypatch, dp)
    for what, s, change in (("scheduler", 0, {"scheduler": "rr"}), ("persistence", 2, {"persistent": 300}),
                            ("flag", 4, {"sched_flags": ("sh-port",)})):
        seen.clear()
        services = list(base.services)
        services[s] = dataclasses.replace(services[s], **change)
        base = dataclasses.replace(base, services=tuple(services))
        assert dp.apply(base) == ref.apply(base) > 0, what
        assert maps_now(dp) == maps_now(ref) and lb_list(dp) == lb_list(ref), what
        assert seen == [key_of(services[s])], what
    assert "TCP  198.18.0.10:80 rr" in lb_list(dp) and "persistent 300" in lb_list(dp)


def rows(dp, vip: str) -> dict:
    with PinnedMaps(dp.instance) as maps:
        [svc] = [s for s in reader.read_services(maps) if str(s.address) == vip]
    return {str(r.address): (r.weight, r.active) for r in svc.reals}


def test_a_draining_server_of_an_unchanged_spec_leaves_once_idle(monkeypatch):
    """Service 2 (rr) loses the server holding a connection: it drains (weight 0).  The same
    table applied again -- the spec is the one last applied -- keeps it draining while the
    connection lasts, and removes it from the maps once the connection has gone."""
    with loaded_dataplane("chgdrain", SIZES) as dp:
        dp.apply(table())
        server = connect(dp, "198.18.0.12", 41000)
        keep = tuple(o for o in (1, 2, 3, 4) if f"198.18.1.{20 + o}" != server)
        tab = table({2: reals_of(2, keep)})
        dp.apply(tab)
        assert rows(dp, "198.18.0.12")[server] == (0, 1)           # draining: weight 0, its connection
        seen = walked(monkeypatch, dp)
        assert dp.apply(tab) == 0
        assert rows(dp, "198.18.0.12")[server] == (0, 1)

        dp.maps["lb_conns"].delete_many([k for k, _ in dp.maps["lb_conns"].items()])
        dp.sweep()                                                  # the connection has gone
        assert dp.apply(tab) > 0
        assert server not in rows(dp, "198.18.0.12") and len(rows(dp, "198.18.0.12")) == 3
        assert f"198.18.1.{20 + keep[0]}:80" in lb_list(dp) and f"{server}:80" not in lb_list(dp)
        assert seen == [key_of(tab.services[2])] * 2                # walked both times: it had a drain
        seen.clear()
        assert dp.apply(tab) == 0 and seen == []                    # and from then on it is skipped


def test_plan_skips_unchanged_services_and_still_counts_every_slot():
    """32 real server ids: 24 in use, service 3's 4 removed (their ids free again, no
    connection), 4 never handed out.  plan() of a table adding 12 servers to other services
    passes and apply writes it; one more does not fit, and apply fails the same way."""
    with loaded_dataplane("chgplan", Sizes(16, 32, 16, 4096)) as dp:
        dp.apply(table())
        dp.apply(table({3: reals_of(3, ())}))
        fits = table({3: reals_of(3, ()), 0: reals_of(0, range(1, 10)), 2: reals_of(2, range(1, 10)),
                      4: reals_of(4, range(1, 7))})
        more = table({3: reals_of(3, ()), 0: reals_of(0, range(1, 10)), 2: reals_of(2, range(1, 10)),
                      4: reals_of(4, range(1, 8))})
        with pytest.raises(TableDoesNotFit, match="no free real server slot for 1 of the 13 real servers to add: "
                                                  "tables.real_servers = 32"):
            dp.plan(more)
        before = lb_list(dp)
        with pytest.raises(ApplyFailed, match="no free real server slot"):
            dp.apply(more)
        assert lb_list(dp) == before
        dp.plan(fits)
        dp.apply(fits)
        w = weights(dp)
        assert len(w) == 32 and w[("198.18.0.10", "198.18.1.9")] == 1 and w[("198.18.0.14", "198.18.1.46")] == 1


@pytest.mark.parametrize("failing", ["lb_reals", "lb_svc_dests", "lb_services"])
def test_a_failed_apply_leaves_nothing_skipped(pair, failing):
    """A change (a weight in wrr service 1, a server added to mh service 3, a new service) fails
    on one map's write (injected): the previous table is back; the same TableSpec applied again
    then writes all of it: the maps are the reference's and `lb list` shows the change."""
    dp, ref = pair
    base = table()
    dp.apply(base)
    ref.apply(base)
    before = maps_now(dp), lb_list(dp)
    new = table({1: reals_of(1, weights={2: 9}), 3: reals_of(3, (1, 2, 3, 4, 5))},
                extra=(ServiceSpec("tcp", ip("198.18.0.30"), 443, "wlc", reals_of(7), "s7"),))
    m = dp.maps[failing]

    def refuse(*a, **kw):
        raise BpfError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    m.set_many = m.set = refuse             # the instance's: the class's come back below
    try:
        with pytest.raises(ApplyFailed) as e:
            dp.apply(new)
    finally:
        del m.set_many, m.set
    assert e.value.restored and f"writing {failing}" in str(e.value)
    assert (maps_now(dp), lb_list(dp)) == before

    assert dp.apply(new) == ref.apply(new)
    assert maps_now(dp) == maps_now(ref) and lb_list(dp) == lb_list(ref)
    w = weights(dp)
    assert w[("198.18.0.11", "198.18.1.12")] == 9 and w[("198.18.0.13", "198.18.1.35")] == 3
    assert w[("198.18.0.30", "198.18.1.71")] == 2


def same(a: ServiceSpec, b: ServiceSpec) -> bool:
    """a.same_as(b) of fresh copies both ways it can go: by == (no digest yet) and by digests
    (made first); the two must agree with each other and with ==."""
    by_eq = dataclasses.replace(a).same_as(dataclasses.replace(b))
    a2, b2 = dataclasses.replace(a), dataclasses.replace(b)
    assert a2.digest is not b2.digest
    by_digest = a2.same_as(b2)
    assert by_eq == by_digest == (a == b), (a, b)
    return by_eq


def test_same_as_is_equality():
    """ServiceSpec.same_as is ==: every field of a service and of a real server counts, an IPv4
    and an IPv6 address of the same integer differ, and so do IPv6 scopes."""
    a = service(1)
    assert same(a, service(1)) and a.same_as(a)
    r0 = a.reals[0]
    for f in dataclasses.fields(RealSpec):
        v = getattr(r0, f.name)
        other = {"address": ip("198.18.9.9"), "forward": "nat", "weight_source": "override",
                 "configured_weight": 4}.get(f.name, (v or 0) + 1 if isinstance(v, int) else None)
        assert not same(a, dataclasses.replace(a, reals=(dataclasses.replace(r0, **{f.name: other}),) + a.reals[1:])), \
            f.name
    for f in dataclasses.fields(ServiceSpec):
        other = {"protocol": "udp", "address": ip("198.18.0.99"), "scheduler": "wlc", "reals": a.reals[1:],
                 "name": "x", "pmask": "255.255.255.0", "groups": (PortGroup("tcp", a.address, 1, 2),),
                 "sched_flags": ("sh-port",), "dead": ((ip("198.18.9.9"), 80),), "sloppy": True}.get(f.name)
        if other is None:
            other = getattr(a, f.name) + 1
        assert not same(a, dataclasses.replace(a, **{f.name: other})), f.name
    v4 = ServiceSpec("tcp", ip("198.18.0.1"), 80, "rr", (RealSpec(ip("0.0.0.1"), 80, 1),))
    assert not same(v4, dataclasses.replace(v4, reals=(RealSpec(ip("::1"), 80, 1),)))
    scoped = [dataclasses.replace(v4, reals=(RealSpec(ipaddress.IPv6Address(f"fe80::1%{i}"), 80, 1),))
              for i in (1, 2, 1)]
    assert not same(scoped[0], scoped[1]) and same(scoped[0], scoped[2])
    # equal specs end up sharing one digest: the next comparison is an identity test
    b, c = service(1), service(1)
    assert b.same_as(c) and b.digest is c.digest


def test_a_next_hop_interface_it_cannot_map_is_looked_up_once_an_apply(monkeypatch):
    """lb_tx_ports takes a next hop's interface once its index is found here; the interface of a
    next hop it cannot take (a resolver of another namespace, an interface gone) was looked up
    again for every real server behind it: 64,000 lookups in an apply of 1,000 x 64.  Now once an
    apply (and once a next-hop refresh), and tried again at the next."""
    import ipaddress
    import socket

    from lb.dataplane import RealSpec, ServiceSpec, TableSpec
    from packets_util import loaded_dataplane

    looked = []
    real_lookup = socket.if_nametoindex

    def counting(name):
        looked.append(name)
        return real_lookup(name)

    def table(n):
        reals = tuple(RealSpec(ipaddress.ip_address(f"198.18.1.{10 + i}"), 80, 1, "dr") for i in range(n))
        return TableSpec((ServiceSpec("tcp", ipaddress.ip_address("198.18.0.10"), 80, "rr", reals, "web"),))

    with loaded_dataplane("txtried") as dp:      # its resolver names priv0, no interface here
        monkeypatch.setattr(socket, "if_nametoindex", counting)
        dp.apply(table(12))
        assert looked == ["priv0"], looked
        dp.apply(table(14))                      # two more servers behind the same next hop
        assert looked == ["priv0", "priv0"], looked
        dp.refresh_nexthops()
        assert looked == ["priv0"] * 3, looked
