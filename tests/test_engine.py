"""build_table: the desired table from a config and the health of its real servers."""
from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest

from lb.config import Config, RealServer, VirtualServer
from lb.config.model import Monitor
from lb.engine import Engine, build_table, real_key

SORRY = IPv4Address("10.9.1.99")


def _cfg(quiesce: bool = False, weights=(1, 1), sorry=(SORRY, None), network="direct") -> Config:
    reals = tuple(RealServer(f"r{i}", IPv4Address(f"10.9.1.{i + 1}"), weight=w) for i, w in enumerate(weights))
    vs = VirtualServer(name="web", address=IPv4Address("10.9.0.1"), port=80, real_servers=reals,
                       monitor=Monitor(quiesce=quiesce), sorry_server=sorry)
    return Config(public_interface="eth0", network=network, virtual_servers=(vs,))


def _reals(cfg, health):
    sorry: set = set()
    (svc,) = build_table(cfg, health, sorry).services
    return {(str(r.address), r.port, r.weight, r.forward) for r in svc.reals}, sorry


def _health(cfg, *up):
    vs = cfg.virtual_servers[0]
    return {real_key(vs, rs): ok for rs, ok in zip(vs.real_servers, up)}


def test_all_dead_gives_only_the_sorry_server() -> None:
    cfg = _cfg()
    reals, sorry = _reals(cfg, _health(cfg, False, False))
    assert reals == {("10.9.1.99", 80, 1, "dr")}
    assert sorry == {cfg.virtual_servers[0].key}


def test_one_back_drops_the_sorry_server() -> None:
    cfg = _cfg()
    reals, sorry = _reals(cfg, _health(cfg, False, True))
    assert reals == {("10.9.1.2", 80, 1, "dr")} and sorry == set()
    reals, sorry = _reals(cfg, _health(cfg, True, True))
    assert reals == {("10.9.1.1", 80, 1, "dr"), ("10.9.1.2", 80, 1, "dr")} and sorry == set()


def test_quiesced_dead_servers_count_as_unusable() -> None:
    cfg = _cfg(quiesce=True)
    reals, sorry = _reals(cfg, _health(cfg, False, False))
    assert reals == {("10.9.1.99", 80, 1, "dr")} and sorry
    reals, sorry = _reals(cfg, _health(cfg, False, True))
    assert reals == {("10.9.1.1", 80, 0, "dr"), ("10.9.1.2", 80, 1, "dr")} and not sorry


def test_weight_zero_and_inactive_servers_are_unusable() -> None:
    cfg = _cfg(weights=(0, 0))
    reals, sorry = _reals(cfg, {})
    assert reals == {("10.9.1.99", 80, 1, "dr")} and sorry
    cfg = _cfg(weights=(0, 2))
    assert _reals(cfg, {})[0] == {("10.9.1.1", 80, 0, "dr"), ("10.9.1.2", 80, 2, "dr")}
    vs = cfg.virtual_servers[0]
    inactive = dataclasses.replace(vs, real_servers=tuple(dataclasses.replace(r, active=False)
                                                          for r in vs.real_servers))
    cfg = dataclasses.replace(cfg, virtual_servers=(inactive,))
    assert _reals(cfg, {})[0] == {("10.9.1.99", 80, 1, "dr")}


def test_no_sorry_server_leaves_the_service_empty() -> None:
    cfg = _cfg(sorry=None)
    reals, sorry = _reals(cfg, _health(cfg, False, False))
    assert reals == set() and sorry == set()


def test_sorry_server_port_and_nat_forwarding() -> None:
    cfg = _cfg(sorry=(SORRY, 8080), network="nat")
    reals, _ = _reals(cfg, _health(cfg, False, False))
    assert reals == {("10.9.1.99", 8080, 1, "nat")}


class _RecordingDataplane:
    """Stands in for a data plane: records applies and counter restarts."""

    def __init__(self):
        self.applied, self.restarted = [], []

    def plan(self, table):
        pass

    def apply(self, table, nexthops=None):
        self.applied.append(table)

    def restart_sched_counts(self, spec):
        self.restarted.append(spec.name)
        return 0

    def nexthops_ahead(self, table):     # (base.Dataplane's: no next hop of its own)
        return []

    def nexthop_errors(self):
        return {}


def _engine(cfg):
    from lb.engine import Engine

    eng = Engine(cfg, dataplane="ipvs")      # the constructor touches nothing in the kernel
    eng.dp = _RecordingDataplane()
    return eng


def test_quiesce_server_restarts_counts_when_a_server_joins() -> None:
    cfg = _cfg()
    vs = dataclasses.replace(cfg.virtual_servers[0], quiesce_server=True, sorry_server=None)
    cfg = dataclasses.replace(cfg, virtual_servers=(vs,))
    eng = _engine(cfg)
    r0, r1 = (real_key(vs, rs) for rs in vs.real_servers)
    eng.health = {r0: True, r1: False}
    eng._apply(eng._table(cfg), cfg)             # the first table: nobody joins
    eng._apply(eng._table(cfg), cfg)             # nothing changed
    assert eng.dp.restarted == []
    eng.health[r1] = True                        # back after reentry
    eng._apply(eng._table(cfg), cfg)
    assert eng.dp.restarted == ["web"]
    eng.health[r0] = False                       # leaving is no join
    eng._apply(eng._table(cfg), cfg)
    assert eng.dp.restarted == ["web"]
    added = dataclasses.replace(vs, real_servers=vs.real_servers + (
        RealServer("r9", IPv4Address("10.9.1.9")),))
    cfg2 = dataclasses.replace(cfg, virtual_servers=(added,))
    eng._apply(eng._table(cfg2), cfg2)           # a reload adds a server
    assert eng.dp.restarted == ["web", "web"]


def test_without_quiesce_server_a_join_restarts_nothing() -> None:
    cfg = _cfg(sorry=None)
    vs = cfg.virtual_servers[0]
    eng = _engine(cfg)
    r1 = real_key(vs, vs.real_servers[1])
    eng.health = {r1: False}
    eng._apply(eng._table(cfg), cfg)
    eng.health[r1] = True
    eng._apply(eng._table(cfg), cfg)
    assert len(eng.dp.applied) == 2 and eng.dp.restarted == []


def test_each_real_server_is_one_record_with_its_own_thresholds_and_weight_source() -> None:
    """build_table makes one RealSpec per configured (address, port), from that server's own
    entry: thresholds, forward mode, the effective weight with its source and the configured one."""
    reals = (RealServer("a", IPv4Address("10.9.1.5"), port=8080, weight=3, u_threshold=100),
             RealServer("b", IPv4Address("10.9.1.5"), port=8081, weight=2, u_threshold=7, l_threshold=3))
    vs = VirtualServer(name="web", address=IPv4Address("10.9.0.1"), port=80, real_servers=reals,
                       sorry_server=(IPv4Address("10.9.1.5"), 9000))
    cfg = Config(public_interface="eth0", network="nat", virtual_servers=(vs,))
    a, b = (real_key(vs, rs) for rs in reals)
    (svc,) = build_table(cfg, weights={b: 1}, overrides={a: 0}).services
    got = {r.key: (r.u_threshold, r.l_threshold, r.forward, r.weight, r.weight_source, r.configured_weight)
           for r in svc.reals}
    assert got == {(IPv4Address("10.9.1.5"), 8080): (100, 0, "nat", 0, "override", 3),
                   (IPv4Address("10.9.1.5"), 8081): (7, 3, "nat", 1, "load_monitor", 2)}
    # both down: the sorry server alone, with no thresholds of the servers on its address
    (svc,) = build_table(cfg, health={a: False, b: False}).services
    assert [(r.key, r.u_threshold, r.l_threshold, r.weight, r.weight_source, r.configured_weight)
            for r in svc.reals] == [((IPv4Address("10.9.1.5"), 9000), 0, 0, 1, "sorry_server", None)]
    assert svc.dead == ((IPv4Address("10.9.1.5"), 8080), (IPv4Address("10.9.1.5"), 8081))


def test_a_firewall_mark_services_real_servers_have_port_zero() -> None:
    from lb.config.model import PortGroup

    reals = (RealServer("a", IPv4Address("10.9.1.5"), u_threshold=4),)
    vs = VirtualServer(name="ftp", address=IPv4Address("10.9.0.1"), port=21, fwmark=21, real_servers=reals,
                       port_groups=(PortGroup(IPv4Address("10.9.0.1"), "tcp", 21, 21),))
    cfg = Config(public_interface="eth0", network="direct", virtual_servers=(vs,))
    (svc,) = build_table(cfg).services
    assert [(r.key, r.u_threshold, r.forward) for r in svc.reals] == [((IPv4Address("10.9.1.5"), 0), 4, "dr")]
    (svc,) = build_table(cfg, health={real_key(vs, reals[0]): False}).services
    assert svc.reals == () and svc.dead == ((IPv4Address("10.9.1.5"), 0),)


def test_the_effective_weight_says_why() -> None:
    """lb.weight: one rule and one text for `lb status`, the control socket and the console."""
    from lb import weight

    assert weight.effective(3, override=0).text() == "weight 0: quiesced by operator; configured 3"
    assert weight.effective(3).text() == "weight 3: configured"
    assert weight.effective(3, load=2, override=5).text() == "weight 5: set by operator; configured 3, load monitor 2"
    assert weight.effective(3, load=2).text() == "weight 2: set by its load monitor; configured 3"
    down = weight.effective(3, up=False, override=5)
    assert (down.value, down.in_table) == (0, False)
    assert down.text() == "weight 0: down, out of the table until its health checks pass; configured 3, " \
                          "operator override 5"
    quiesced = weight.effective(3, up=False, quiesce=True)
    assert (quiesced.value, quiesced.in_table, quiesced.source) == (0, True, "down_quiesced")
    assert weight.effective(3, active=False).in_table is False
    assert weight.sorry_server().text() == "weight 1: sorry server, standing in for a pool with no usable real server"
    status = {"weight": 0, "weight_source": "override", "configured_weight": 3, "dynamic_weight": None,
              "override": 0}
    assert weight.from_status(status).text() == "weight 0: quiesced by operator; configured 3"


def _two_services_engine():
    base = _cfg().virtual_servers[0]
    other = dataclasses.replace(base, name="mail", address=IPv4Address("10.9.0.2"), port=25)
    cfg = Config(public_interface="eth0", network="direct", virtual_servers=(base, other))
    return cfg, _engine(cfg)


def test_a_one_server_change_rebuilds_only_its_service() -> None:
    """The engine keeps each service's spec while nothing of it changed (SpecCache): after a
    health change the other service's spec is the very object applied before (the data plane
    skips it by identity), and the changed one is right."""
    cfg, eng = _two_services_engine()
    web, mail = cfg.virtual_servers
    first = eng._table(cfg).services
    again = eng._table(cfg).services
    assert [a is b for a, b in zip(first, again)] == [True, True]
    eng.health[real_key(web, web.real_servers[0])] = False          # a check fails
    t = eng._table(cfg).services
    assert t[1] is first[1] and t[0] is not first[0]
    assert [str(r.address) for r in t[0].reals] == ["10.9.1.2"]
    eng.overrides[real_key(mail, mail.real_servers[1])] = 0          # lb quiesce
    t2 = eng._table(cfg).services
    assert t2[0] is t[0] and t2[1] is not t[1]
    assert {str(r.address): r.weight for r in t2[1].reals} == {"10.9.1.1": 1, "10.9.1.2": 0}
    eng.weights.pop(real_key(mail, mail.real_servers[0]), None)      # even a no-op pop marks it
    eng.health = {}                                                  # a new dict: nothing is reused
    t3 = eng._table(cfg).services
    assert not any(a is b for a, b in zip(t3, t2))
    assert [str(r.address) for r in t3[0].reals] == ["10.9.1.1", "10.9.1.2"]


def test_a_change_during_a_build_is_not_lost(monkeypatch) -> None:
    """A health change that lands while a table is being built (the engine builds in a worker
    thread), after the build read that server's state, makes the next build rebuild its
    service, though this build cached the old state."""
    import lb.engine

    cfg, eng = _two_services_engine()
    web = cfg.virtual_servers[0]
    key = real_key(web, web.real_servers[0])
    real_weight = lb.engine.effective_weight
    landed = []

    def weight_then_a_change(vs, rs, *a, **kw):
        w = real_weight(vs, rs, *a, **kw)
        if real_key(vs, rs) == key and not landed:
            eng.health[key] = False           # the check fails just after the build read "up"
            landed.append(1)
        return w

    monkeypatch.setattr(lb.engine, "effective_weight", weight_then_a_change)
    t = eng._table(cfg).services
    assert landed and [str(r.address) for r in t[0].reals] == ["10.9.1.1", "10.9.1.2"]
    t = eng._table(cfg).services
    assert [str(r.address) for r in t[0].reals] == ["10.9.1.2"]


def test_an_address_that_could_not_be_put_back_is_tried_again_at_the_next_check(monkeypatch) -> None:
    """A VIP gone from its interface that cannot be added back yet (the interface refuses it for
    a moment) is tried again a second later, not after addresses.Watch.FULL_CHECK (30 s): the
    rtnetlink notification that made the first try is not repeated."""
    import ipaddress

    import lb.engine
    from lb.ha import addresses

    eng = _engine(_cfg())
    eng.dp.keep_attached = lambda: []
    eng.active = eng._taken = True
    eng.owned = [addresses.OwnedAddress("eth0", ipaddress.ip_interface("198.18.0.9/32"))]
    tries = []

    def restore(owned):
        tries.append(len(tries))
        if len(tries) == 1:
            return [], ["adding address 198.18.0.9/32 to eth0 again: Cannot assign requested address"]
        return list(owned), []
    monkeypatch.setattr(lb.engine.addresses, "restore", restore)
    monkeypatch.setattr(eng, "announce", lambda *a, **kw: None)
    eng.keep_ownership(100.0)            # the first look (a watch starts "changed")
    eng.keep_ownership(101.0)            # no notification since: looked again, as the first failed
    eng.keep_ownership(102.0)            # put back: nothing more to look for
    assert tries == [0, 1]
    assert eng.ownership["addresses_restored"] == 1


def test_the_programs_are_looked_for_when_a_link_changed_and_again_while_one_is_missing(monkeypatch) -> None:
    """The ownership check asks the data plane for its programs on their interfaces (two netlink
    requests each second were most of an idle daemon's CPU) only when rtnetlink told of a link
    change -- removing an XDP program is one -- or FULL_CHECK seconds after the last look, and
    again a second later while a look finds one missing (or another program in its place)."""
    from lb.ha import addresses

    eng = _engine(_cfg())
    found: list = [[]]
    looks = []

    def keep_attached():
        looks.append(len(looks))
        return found[0]
    eng.dp.keep_attached = keep_attached
    eng.keep_ownership(100.0)            # the first look
    eng.keep_ownership(101.0)            # nothing told since: no look
    assert looks == [0]
    eng._address_watch.links_again()             # as the watch's thread tells of an RTM_NEWLINK
    found[0] = [("missing", "eth9", "eth9, where the public XDP program was attached, does not exist")]
    eng.keep_ownership(102.0)
    eng.keep_ownership(103.0)            # still missing: looked at again
    found[0] = []
    eng.keep_ownership(104.0)            # the look after it finds all well
    eng.keep_ownership(105.0)
    assert looks == [0, 1, 2, 3]
    eng.keep_ownership(104.0 + addresses.Watch.FULL_CHECK)     # a notification may be lost
    assert looks == [0, 1, 2, 3, 4]
    assert eng.ownership["xdp_attached"] == 0


def test_a_takeover_s_addresses_are_lb_s_even_when_the_ownership_check_runs_first(monkeypatch) -> None:
    """on_role sets `active` and then takes the addresses in a worker; the ownership check, run
    in between, put them back as "gone" first, take() then found them there, and the engine took
    its own addresses for the operator's: left out of the held record, so a kept restart whose
    config dropped them never released them (test_restart_held_lab, in CI).  The check now puts
    back only addresses the role has taken."""
    import ipaddress

    import lb.engine
    from lb.ha import addresses

    eng = _engine(_cfg())
    eng.dp.keep_attached = lambda: []
    eng.owned = [addresses.OwnedAddress("eth0", ipaddress.ip_interface("198.18.0.9/32"))]
    on_link: list = []
    monkeypatch.setattr(lb.engine.addresses, "restore",
                        lambda owned: ([a for a in owned if a not in on_link and not on_link.append(a)], []))
    monkeypatch.setattr(lb.engine.addresses, "take",
                        lambda owned: [a for a in owned if a not in on_link and not on_link.append(a)])
    monkeypatch.setattr(eng, "announce", lambda *a, **kw: None)
    monkeypatch.setattr(eng, "_write_held", lambda *a, **kw: None)
    eng.active = True                    # on_role, before its take
    eng.keep_ownership(100.0)
    assert on_link == [] and eng.ownership["addresses_restored"] == 0
    eng._take_addresses()
    assert on_link == eng.owned and eng._ours(eng.owned) == eng.owned     # lb's: recorded, released
    on_link.clear()                      # `ip addr del`: put back now
    eng.keep_ownership(101.0)
    assert on_link == eng.owned and eng.ownership["addresses_restored"] == 1


@pytest.mark.parametrize("job, kind", [("stop", "clean"), ("start", "clean"), ("restart", "keep"),
                                       ("try-restart", "keep"), ("reload", "keep"), (None, "keep")])
def test_a_sigterm_under_the_unit_stops_as_systemds_job_says(monkeypatch, job, kind) -> None:
    """lb@.service runs `lb run --on-sigterm systemd --unit %n`: at SIGTERM the daemon asks which
    job systemd runs on its unit -- a stop (also of a unit still starting, when systemd sends
    SIGTERM without any ExecStop) is clean, and so is a start whose TimeoutStartSec= ran out (the
    unit fails: no VIPs left behind it); a restart or reload keeps the data plane for the next
    daemon, and a SIGTERM with no job (systemctl kill) keeps it, as a crash does."""
    import lb.engine

    eng = _engine(_cfg())
    asked = []
    monkeypatch.setattr(lb.engine.sdnotify, "systemd_job", lambda unit: asked.append(unit) or job)
    eng._stop = "systemd:lb@web.service"
    assert eng._systemd_stop_kind() == kind and asked == ["lb@web.service"]


def test_the_data_planes_housekeeping_holds_the_lock_every_map_writer_takes() -> None:
    """Drain completion, next-hop refresh and a resize's finish write the maps from a worker
    thread, as pulse's connection imports do from theirs: each under the engine's data-plane lock
    (an import that landed inside a drain's table apply lost its counts until the next sweep)."""
    eng = _engine(_cfg())
    held = []
    eng.dp.finish_drains = lambda: held.append(eng._dp_lock.locked()) or 0
    eng.dp.nexthop_work = lambda: held.append(eng._dp_lock.locked()) or [("a", True)]
    eng.dp.refresh_nexthops = lambda resolved: held.append((eng._dp_lock.locked(), resolved)) or 0
    eng.dp.finish_resize = lambda: held.append(eng._dp_lock.locked()) or False
    # the resolution itself (netlink, no map) goes without it: an apply does not wait behind it
    eng.dp.resolve_nexthops = lambda work, budget: held.append((eng._dp_lock.locked(), work, budget)) or {"r": 1}
    eng.finish_drains(), eng.refresh_nexthops(), eng._finish_resize()
    from lb.engine import NEXTHOP_BUDGET
    assert held == [True, True, (False, [("a", True)], NEXTHOP_BUDGET), (True, {"r": 1}), True]


def test_an_engine_whose_data_plane_is_not_loaded_resolves_no_next_hop() -> None:
    """A never-started engine (the web console's tests run one) asked to apply: its XDP data plane
    is not loaded, so the apply fails -- before it, nothing is resolved ahead: netlink on this
    host, and the datagram that makes the kernel ask for a MAC, were for a loaded data plane only"""
    from lb.dataplane.program import Sizes
    from lb.dataplane.xdp import XdpDataplane

    asked = []
    eng = Engine(_cfg(), dataplane="ipvs")
    eng.dp = XdpDataplane("notloaded", Sizes(16, 64, 16, 4096), resolver=lambda a, **kw: asked.append(a))
    eng.dp.resolver.ask = lambda pairs: asked.append(pairs)
    with pytest.raises(Exception):
        eng.apply_health()
    assert asked == []


def test_lb_status_says_whose_next_hop_does_not_resolve() -> None:
    """The data plane cannot resolve r0's next hop and had none before (no new connections),
    nor r1's, whose last one it keeps: `lb status` says so under each, in its JSON and its text."""
    from lb.cli.main import _status_text

    cfg = _cfg()
    eng = _engine(cfg)
    eng.dp.kind = "xdp"
    eng.dp.nexthop_errors = lambda: {
        (IPv4Address("10.9.1.1"), True): ("real server 10.9.1.1: no ARP/ND answer from 10.9.1.1 on eth1", False),
        (IPv4Address("10.9.1.2"), True): ("real server 10.9.1.2: no ARP/ND answer from 10.9.1.2 on eth1", True),
        (IPv4Address("10.9.1.9"), True): ("real server 10.9.1.9: not this instance's", False)}
    eng._apply(eng._table(cfg), cfg)
    doc = eng.status(counters=False, configuration=False)
    r0, r1 = doc["services"][0]["real_servers"]
    assert r0["nexthop_error"] == {"reason": "real server 10.9.1.1: no ARP/ND answer from 10.9.1.1 on eth1",
                                   "kept": False}
    assert r1["nexthop_error"]["kept"] is True
    text = _status_text(doc, False)
    assert ("     next hop: real server 10.9.1.1: no ARP/ND answer from 10.9.1.1 on eth1; NO NEW CONNECTIONS until "
            "it answers") in text.splitlines()
    assert ("     next hop: real server 10.9.1.2: no ARP/ND answer from 10.9.1.2 on eth1; new connections go to "
            "the one resolved before") in text.splitlines()
    eng.dp.nexthop_errors = lambda: {}
    doc = eng.status(counters=False, configuration=False)
    assert [r["nexthop_error"] for r in doc["services"][0]["real_servers"]] == [None, None]
    assert "next hop" not in _status_text(doc, False)


def test_a_health_change_resolves_the_next_hops_it_adds_before_it_takes_the_lock() -> None:
    """r0 back from a failed check (out of the table while it was down): the next hop of a real
    server the table adds is resolved without the data plane's lock -- one whose ARP does not
    answer yet held that lock up to 3 s, and an HA import or the sweep's end with it -- and
    handed to the apply; a change that adds none resolves nothing."""
    cfg = _cfg()
    eng = _engine(cfg)
    vs = cfg.virtual_servers[0]
    r0 = real_key(vs, vs.real_servers[0])
    eng.health = {r0: False}
    calls = []

    def ahead(table):
        have = {r.address for t in eng.dp.applied[-1:] for s in t.services for r in s.reals}
        calls.append(("ahead", eng._dp_lock.locked()))
        return [(r.address, True) for s in table.services for r in s.reals if r.address not in have]

    def resolve(pairs):
        calls.append(("resolve", eng._dp_lock.locked(), pairs))
        return {p: f"next hop of {p[0]}" for p in pairs}

    def apply(table, nexthops=None):
        eng.dp.applied.append(table)
        calls.append(("apply", eng._dp_lock.locked(), nexthops))
    eng.dp.nexthops_ahead, eng.dp.resolve_ahead, eng.dp.apply = ahead, resolve, apply
    r0_pair, r1_pair = (IPv4Address("10.9.1.1"), True), (IPv4Address("10.9.1.2"), True)
    eng.apply_health()
    eng.health[r0] = True
    eng.apply_health()
    eng.apply_health()                          # nothing added
    assert calls == [("ahead", True), ("resolve", False, [r1_pair]), ("apply", True, {r1_pair: "next hop of 10.9.1.2"}),
                     ("ahead", True), ("resolve", False, [r0_pair]), ("apply", True, {r0_pair: "next hop of 10.9.1.1"}),
                     ("ahead", True), ("apply", True, None)]
