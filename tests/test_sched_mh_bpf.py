"""lb_sched_mh picks the same real server as the Python model of ip_vs_mh (lb.sched.model),
SYN by SYN through BPF_PROG_TEST_RUN; its Maglev table lives only where mh is used, and a
weight change rewrites only the slots that changed."""
from __future__ import annotations

import dataclasses
import ipaddress
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.mhtable import open_table
from lb.dataplane.xdp import XdpDataplane
from lb.sched import model
from packets_util import (CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, client6, fake_resolver, loaded_dataplane,
                          real_mac, run)

VIP = ipaddress.ip_address("198.18.0.40")
_ports = itertools.count(2000)
_sports = itertools.count(20000)
# clients' addresses: no martian (0/8, 127/8, multicast, class E; IPv6 ::, ::1, ff00::/8), which
# the kernel drops before IPVS and lb passes to it (not_routable)
_addrs = st.integers(min_value=1 << 24, max_value=(224 << 24) - 1).map(
    lambda n: str(ipaddress.IPv4Address(n if n >> 24 != 127 else n + (1 << 24))))


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("mh") as d:
        yield d


def _reals(n, family=4):
    if family == 6:
        return [ipaddress.ip_address(f"2001:2:0:2::{i + 1:x}") for i in range(n)]
    return [ipaddress.ip_address(f"198.18.2.{i + 1}") for i in range(n)]


class Case:
    """One mh service in both the data plane and the model, driven the same way."""

    def __init__(self, dp, weights, flags=(), size=model.MH_DEFAULT_SIZE, thresholds=(), port=None, vip=VIP):
        self.dp, self.flags, self.size, self.vip = dp, tuple(flags), size, vip
        self.port = next(_ports) if port is None else port
        self.addrs = _reals(len(weights), vip.version)
        self.th = list(thresholds) + [(0, 0)] * (len(weights) - len(thresholds))
        self.m = model.Service("mh", flags, mh_size=size)
        for a, w, t in zip(self.addrs, weights, self.th):    # config order
            self.m.add(str(a), w, u_threshold=t[0], l_threshold=t[1], port=80)
        self.writes = self.apply(weights)

    def spec(self, weights):
        return ServiceSpec("tcp", self.vip, self.port, "mh",
                           tuple(RealSpec(a, 80, w, "dr", *t) for a, w, t in zip(self.addrs, weights, self.th)),
                           sched_flags=self.flags, mh_size=self.size)

    def apply(self, weights):
        return self.dp.apply(TableSpec((self.spec(weights),)))

    def set_weights(self, weights):
        for a, w in zip(self.addrs, weights):
            if self.m.dest(str(a)).weight != w:
                self.m.set_weight(str(a), w)
        return self.apply(weights)

    def syn(self, client, sport=None):
        """(XDP's pick, the model's pick) for a new connection from client."""
        sport = next(_sports) % 65536 or 1 if sport is None else sport
        ip = IPv6 if self.vip.version == 6 else IP
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / ip(src=client, dst=str(self.vip)) / TCP(
            sport=sport, dport=self.port, flags="S")
        rc, out = run(self.dp, "lb_xdp_public", pkt)
        assert rc in (XDP_REDIRECT, XDP_PASS)
        by_mac = {real_mac(a): str(a) for a in self.addrs}
        got = by_mac.get(Ether(out).dst) if rc == XDP_REDIRECT else None
        return got, self.m.schedule(saddr=model.addr_fold(client), sport=sport)

    def table(self):
        """The table as the programs see it: real server addresses per slot, from the map."""
        sid = self.dp.services[L.SvcKey(6, self.vip, self.port)].id
        raw = self.dp.maps["lb_mh_tables"].get(L.U32.pack(sid))
        if raw is None:
            return None
        t = open_table(L.U32.unpack(raw)[0])
        try:
            ids = [L.U32.unpack(t.get(L.U32.pack(i)))[0] for i in range(t.max_entries)]
        finally:
            t.close()
        return [str(self.dp.reals[r].addr) for r in ids]

    def model_table(self):
        return [self.m.names[p] for p in self.m.mh_table]


def _clients(n, seed=1):
    return [str(ipaddress.IPv4Address(0x0A000000 + (seed * 104729 + i * 7919) % 2**24)) for i in range(n)]


def test_table_in_the_map_is_the_models(dp):
    c = Case(dp, [1, 2, 0, 3])
    assert c.table() == c.model_table()
    picks = [c.syn(cl) for cl in _clients(300)]
    assert [g for g, _ in picks] == [w for _, w in picks]
    assert {g for g, _ in picks} == {"198.18.2.1", "198.18.2.2", "198.18.2.4"}   # weight 0: no slot


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(weights=st.lists(st.integers(0, 70), min_size=1, max_size=10),
       flags=st.sampled_from([(), ("mh-port",), ("mh-fallback",), ("mh-fallback", "mh-port")]),
       size=st.sampled_from([251, 1021, 4093]),
       clients=st.lists(_addrs, min_size=1, max_size=16),
       quiesce=st.lists(st.booleans(), max_size=10),
       thresholds=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)).map(
           lambda t: (t[0], min(t[0], t[1]) if t[0] else 0)), max_size=10))
def test_bpf_matches_model(dp, weights, flags, size, clients, quiesce, thresholds):
    c = Case(dp, weights, flags, size, thresholds[:len(weights)])
    got, want = zip(*(c.syn(cl) for cl in clients))
    assert got == want
    # quiesce some (weight 0 keeps the slots), then schedule again
    c.set_weights([0 if q else w for w, q in itertools.zip_longest(weights, quiesce[:len(weights)])][:len(weights)])
    assert c.table() == (None if c.m.mh_table[0] is None else c.model_table())
    got, want = zip(*(c.syn(cl) for cl in clients))
    assert got == want


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(weights=st.lists(st.integers(0, 70), min_size=1, max_size=10),
       flags=st.sampled_from([(), ("mh-port",), ("mh-fallback",), ("mh-fallback", "mh-port")]),
       clients=st.lists(st.integers(2, (0xFF << 120) - 1).map(client6),
                        min_size=1, max_size=16))
def test_bpf_matches_model_ipv6(dp, weights, flags, clients):
    """IPv6: the table's permutations hash the real servers' folded IPv6 addresses, the pick the
    client's (IPVS ip_vs_mh_hashkey)."""
    c = Case(dp, weights, flags, 251, vip=ipaddress.ip_address("2001:2::30"))
    assert c.table() == (None if c.m.mh_table[0] is None else c.model_table())
    got, want = zip(*(c.syn(cl) for cl in clients))
    assert got == want


def test_fallback_walk_longer_than_one_run(dp):
    """One usable server with a tiny share (the rest quiesced): many clients' walks pass
    LB_MH_PROBES (512) probes, so lb_sched_mh goes on in a tail call of itself."""
    weights = [1] + [63] * 15
    c = Case(dp, weights, ("mh-fallback",))
    c.set_weights([1] + [0] * 15)
    lone = c.m.position("198.18.2.1")
    clients = _clients(120, seed=7)
    long_walks = 0
    for cl in clients:
        saddr = int(ipaddress.ip_address(cl))
        ihash = model.mh_hashkey(saddr, 0) % c.size
        k = next((k for k in range(c.size)
                  if c.m.mh_table[model.mh_probe(saddr, 0, c.size, ihash, k)] == lone), None)
        long_walks += k is not None and k >= 512
        got, want = c.syn(cl)
        assert got == want, (cl, k)
    assert long_walks >= 10


def test_nothing_usable_and_empty_table(dp):
    c = Case(dp, [2, 3], ("mh-fallback",))
    c.set_weights([0, 0])
    assert c.table() == c.model_table()             # quiesced: the slots stay
    assert all(c.syn(cl) == (None, None) for cl in _clients(20))
    e = Case(dp, [0, 0])                            # added at weight 0: no table at all
    assert e.table() is None
    assert all(e.syn(cl) == (None, None) for cl in _clients(5))


def test_weight_change_rewrites_only_changed_slots(dp):
    c = Case(dp, [3, 1, 2, 5, 1, 1])
    assert c.dp.mh.writes  # the first table: every slot
    before = c.model_table()
    mh_before, all_before = dp.mh.writes, dp.writes
    c.set_weights([3, 1, 4, 5, 1, 1])
    after = c.model_table()
    changed = sum(a != b for a, b in zip(before, after))
    assert 0 < changed < c.size // 2
    # the changed slots plus the saved last weights, nothing else of the table
    assert dp.mh.writes - mh_before == changed + 1
    assert dp.writes - all_before == changed + 1 + 3  # + lb_svc_dests (the weight), lb_svc, lb_sched_state
    assert c.table() == after
    # quiescing keeps the table: no slot written
    mh_before = dp.mh.writes
    c.set_weights([3, 1, 4, 0, 1, 1])
    assert dp.mh.writes == mh_before and c.table() == after


def test_table_only_for_mh_services(dp):
    port = next(_ports)
    reals = tuple(RealSpec(a, 80, 1, "dr") for a in _reals(3))
    tables = dp.maps["lb_mh_tables"]
    dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, "wlc", reals),)))
    sid = L.U32.pack(dp.services[L.SvcKey(6, VIP, port)].id)
    assert tables.get(sid) is None and dp.maps["lb_mh_last"].get(sid) is None
    dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, "mh", reals),)))
    assert tables.get(sid) is not None
    dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, "mh", reals, mh_size=251),)))   # a new size
    assert open_table(L.U32.unpack(tables.get(sid))[0]).max_entries == 251
    dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, "sh", reals),)))
    assert tables.get(sid) is None and dp.maps["lb_mh_last"].get(sid) is None
    dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, "mh", reals),)))
    dp.apply(TableSpec(()))
    assert tables.get(sid) is None and dp.maps["lb_mh_last"].get(sid) is None


def test_restart_adopts_table_and_last_weights(dp):
    """A restarted daemon finds the table and each server's last weight in the pins: a
    quiesced server keeps its slots across the restart, and the next change is a delta."""
    c = Case(dp, [2, 2, 2])
    c.set_weights([2, 0, 2])
    before = c.table()
    again = XdpDataplane(dp.instance, dp.sizes, resolver=fake_resolver)
    again.load()
    try:
        c.dp = again
        assert again.adopted and c.table() == before
        w0 = again.mh.writes
        c.set_weights([2, 0, 3])
        assert c.table() == c.model_table()
        assert again.mh.writes - w0 == sum(a != b for a, b in zip(before, c.table())) + 1
        assert all(g == w for g, w in (c.syn(cl) for cl in _clients(60)))
    finally:
        again.close()
        c.dp = dp
        dp.apply(TableSpec(()))


def test_lb_list_shows_mh_as_ipvsadm(dp):
    """ipvsadm prints the scheduler and its flags as "mh (mh-fallback,mh-port)"."""
    from lb import listing
    from lb.dataplane import reader
    from lb.dataplane.maps import PinnedMaps

    c = Case(dp, [1, 2], ("mh-port", "mh-fallback"))
    p = Case(dp, [1], ("mh-port",))
    dp.apply(TableSpec((c.spec([1, 2]), p.spec([1]))))
    with PinnedMaps(dp.instance) as maps:
        text = listing.format_services(reader.read_services(maps))
    assert f"TCP  {VIP}:{c.port} mh (mh-fallback,mh-port)\n" in text
    assert f"TCP  {VIP}:{p.port} mh (mh-port)\n" in text
    assert "  -> %-28s %-7s %-6d %-10d %-10d\n" % ("198.18.2.2:80", "Route", 2, 0, 0) in text
    dp.apply(TableSpec(()))


def test_removed_server_leaves_the_table_while_it_drains(dp):
    """The config removes a server that still has a connection: lb keeps it (weight 0) until
    the connection ends, but the Maglev table is rebuilt without it at once, as IPVS's
    del_dest rebuilds it; its clients move to the others."""
    c = Case(dp, [1, 1, 1])
    gone = "198.18.2.2"
    client = next(cl for cl in _clients(200) if c.syn(cl)[0] == gone)
    c.m.remove(gone)
    keep = [a for a in c.addrs if str(a) != gone]
    spec = ServiceSpec("tcp", VIP, c.port, "mh", tuple(RealSpec(a, 80, 1, "dr") for a in keep))
    dp.apply(TableSpec((spec,)))
    st = dp.services[L.SvcKey(6, VIP, c.port)]
    assert [str(a) for (a, _), _ in st.dests].count(gone) == 1          # still there, draining
    assert c.table() == c.model_table() and gone not in c.table()
    assert c.syn(client)[0] in {str(a) for a in keep}
    dp.apply(TableSpec(()))


def test_persistent_mh_service_walks_through_the_template_program(dp):
    """A persistent service reaches lb_sched_mh through lb_xdp_persist (one tail call more):
    long fallback walks still end in the model's pick, and the template then holds it."""
    c = Case(dp, [1] + [63] * 15, ("mh-fallback",))
    c.set_weights([1] + [0] * 15)
    spec = c.spec([1] + [0] * 15)
    dp.apply(TableSpec((dataclasses.replace(spec, persistent=300),)))
    for cl in _clients(40, seed=11):
        got, want = c.syn(cl)
        assert got == want
        if want is not None:
            assert c.syn(cl)[0] == got          # the template: same server for its next SYN
            c.m.close(want, was_active=True)    # (the model has no templates: undo its count)
    dp.apply(TableSpec(()))
