"""Next hops at scale.  Each resolve() used to dump its interface's whole neighbour table: 55 ms a
real server with 1,000 neighbours there, so the refresh every 10 s of 1,000 real servers took 55 s
of a core, under the data plane's lock.  Now a pass shares one netlink socket and one read of each
neighbour table (nexthop.session), and the engine's refresh resolves outside the lock, a time
budget a turn, round robin over the real servers."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.nexthop import NextHop, NextHopError
from packets_util import fake_resolver, loaded_dataplane

ip = ipaddress.ip_address
REALS = [f"198.18.1.{10 + i}" for i in range(12)]
TABLE = TableSpec((ServiceSpec("tcp", ip("198.18.0.10"), 80, "wlc", tuple(RealSpec(ip(a), 80, 1, "dr") for a in REALS)),
                   ServiceSpec("tcp", ip("198.18.0.10"), 443, "wlc", tuple(RealSpec(ip(a), 443, 1, "dr") for a in REALS))))
NEW_MAC = bytes.fromhex("02aabbccdd01")


def _macs(dp) -> dict[str, set[bytes]]:
    """Each real server's MAC in lb_reals, as the XDP programs rewrite to (both services' entries)."""
    out: dict[str, set[bytes]] = {}
    for k, v in dp.maps["lb_reals"].items():
        r = L.Real.unpack(v)
        if r.family:
            out.setdefault(str(r.addr), set()).add(r.mac)
    return out


def test_a_refresh_resolves_round_robin_within_its_budget():
    """Every server got a new MAC (swapped NICs).  With no time to spare each turn resolves one
    next hop -- each address once for both its services -- and writes that server's two entries
    alone; twelve turns cover all twelve, and the thirteenth starts over."""
    with loaded_dataplane("nhrr", table=TABLE) as dp:
        asked = []

        def moved(addr, need_onlink=False):
            asked.append(str(addr))
            nh = fake_resolver(addr, need_onlink)
            return NextHop(nh.ifindex, nh.ifname, NEW_MAC, nh.src_mac, True, nh.src_addr, nh.mtu)
        dp.resolver = moved
        work = dp.nexthop_work()
        assert sorted(str(a) for a, _ in work) == sorted(REALS) and all(onlink for _, onlink in work)
        for turn in range(12):
            resolved = dp.resolve_nexthops(work, budget=0)
            assert len(resolved) == 1
            assert dp.refresh_nexthops(resolved) == 2          # its entry in each service
            assert sum(m == {NEW_MAC} for m in _macs(dp).values()) == turn + 1
        assert sorted(asked) == sorted(REALS)
        dp.resolve_nexthops(work, budget=0)
        assert asked[12] == asked[0]
        # without a budget, one call takes them all; nothing left to write
        assert len(dp.resolve_nexthops(work)) == 12
        assert dp.refresh_nexthops(dp.resolve_nexthops(work)) == 0


@pytest.fixture
def two_hosts():
    """A director namespace and a server namespace joined by a veth: the director's link holds
    300 IPv4 and 100 IPv6 permanent neighbours; the server answers ARP and ND for one address of
    each family that is in no neighbour table yet."""
    d, s = f"lbnhd{os.getpid()}", f"lbnhs{os.getpid()}"
    for ns in (d, s):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def sh(ns, *cmd, **kw):
            subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], check=True, capture_output=True, **kw)
        sh(d, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", s)
        sh(d, "ip", "addr", "add", "198.18.0.1/16", "dev", "v0")
        sh(d, "ip", "addr", "add", "2001:2::1/64", "dev", "v0", "nodad")
        sh(d, "ip", "link", "set", "v0", "up")
        sh(s, "ip", "addr", "add", "198.18.200.1/16", "dev", "v1")
        sh(s, "ip", "addr", "add", "2001:2::200/64", "dev", "v1", "nodad")
        sh(s, "ip", "link", "set", "v1", "up")
        batch = [f"neigh add 198.18.{1 + i // 250}.{1 + i % 250} lladdr 02:00:00:00:{i >> 8:02x}:{i & 255:02x} "
                 f"dev v0 nud permanent" for i in range(300)]
        batch += [f"neigh add 2001:2::1:{i:x} lladdr 02:00:00:01:{i >> 8:02x}:{i & 255:02x} dev v0 nud permanent"
                  for i in range(100)]
        sh(d, "ip", "-batch", "-", input="\n".join(batch) + "\n", text=True)
        yield d, s
    finally:
        for ns in (d, s):
            subprocess.run(["ip", "netns", "del", ns], check=False)


CHECK = r"""
import ipaddress, json, sys
from lb.dataplane import nexthop
reads = []
class Counting(nexthop.IPRoute):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        real = self.get_neighbours
        self.get_neighbours = lambda **kw: reads.append(kw.get("ifindex")) or real(**kw)
nexthop.IPRoute = Counting
v4 = [ipaddress.ip_address(f"198.18.{1 + i // 250}.{1 + i % 250}") for i in range(300)]
v6 = [ipaddress.ip_address(f"2001:2::1:{i:x}") for i in range(100)]
out = {}
with nexthop.session():
    hops = [nexthop.resolve(a, need_onlink=True) for a in v4 + v6]
    out["reads_in_session"] = len(reads)
    out["v4_ok"] = all(h.mac == bytes([2, 0, 0, 0, i >> 8, i & 255]) for i, h in enumerate(hops[:300]))
    out["v6_ok"] = all(h.mac == bytes([2, 0, 0, 1, i >> 8, i & 255]) for i, h in enumerate(hops[300:]))
    # in no table when the session read it: asked for (ARP / ND), the answer found by a get
    out["answered"] = [nexthop.resolve(ipaddress.ip_address(a), timeout=5).mac.hex(":")
                       for a in ("198.18.200.1", "2001:2::200")]
    out["reads_after_answers"] = len(reads)
before = len(reads)
nexthop.resolve(v4[0])
out["reads_alone"] = len(reads) - before
before = len(reads)
with nexthop.session(read_tables=False):        # a refresh turn: a part of the servers
    hops = [nexthop.resolve(a) for a in v4[:20] + v6[:20]]
out["reads_in_part"] = len(reads) - before
out["part_ok"] = all(h.mac == bytes([2, 0, 0, i // 20, 0, i % 20]) for i, h in enumerate(hops))
print(json.dumps(out))
"""


def test_a_session_reads_each_neighbour_table_once(two_hosts):
    d, s = two_hosts
    r = subprocess.run(["nsenter", f"--net=/run/netns/{d}", sys.executable, "-c", CHECK],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    link = subprocess.run(["nsenter", f"--net=/run/netns/{s}", "ip", "-j", "link", "show", "v1"],
                          capture_output=True, text=True, check=True).stdout
    peer = json.loads(link)[0]["address"]
    assert out["v4_ok"] and out["v6_ok"], out
    assert out["reads_in_session"] == 1, out       # 400 servers, one read of v0's table
    assert out["answered"] == [peer, peer], out
    assert out["reads_after_answers"] == 1, out    # the answers came by RTM_GETNEIGH, no dump
    assert out["reads_alone"] == 1, out            # a resolve outside a session: its own session
    assert out["reads_in_part"] == 0 and out["part_ok"], out    # each neighbour asked for by itself


ASK = r"""
import ipaddress, json, time
from lb.dataplane import nexthop
waits = []
real_sleep = time.sleep
time.sleep = lambda d: waits.append(d) or real_sleep(d)
dead = [ipaddress.ip_address(f"198.18.250.{i}") for i in range(1, 7)]     # nobody answers for them
out = {}
with nexthop.session():
    out["asked"] = nexthop.ask([(a, True) for a in dead] + [(ipaddress.ip_address("198.18.1.1"), True)])
    errors = []
    for a in dead:
        try:
            nexthop.resolve(a, timeout=0.5, need_onlink=True)
        except nexthop.NextHopError as e:
            errors.append(str(e))
    out["errors"], out["waits_asked"] = errors, len(waits)
waits.clear()
with nexthop.session():
    for a in dead:
        try:
            nexthop.resolve(a, timeout=0.5, need_onlink=True)
        except nexthop.NextHopError:
            pass
out["waits_one_by_one"] = len(waits)
print(json.dumps(out))
"""


def test_servers_not_up_yet_are_asked_for_together(two_hosts):
    """An apply adding six real servers that do not answer ARP: asked for all at once
    (nexthop.ask, which ServiceTable calls before it writes), their resolutions wait one timeout
    between them -- not six, one after the other, with the data plane's lock held."""
    d, _ = two_hosts
    r = subprocess.run(["nsenter", f"--net=/run/netns/{d}", sys.executable, "-c", ASK],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["asked"] == 6, out                   # 198.18.1.1 is in the neighbour table
    assert out["errors"] == [f"real server 198.18.250.{i}: no ARP/ND answer from 198.18.250.{i} on v0"
                             for i in range(1, 7)], out
    steps = 0.5 / 0.05                              # resolve() looks again every 50 ms
    assert out["waits_asked"] <= steps + 2, out     # one timeout for the six
    assert out["waits_one_by_one"] >= 6 * (steps - 2), out


def test_an_apply_asks_ahead_for_the_servers_it_adds_only():
    with loaded_dataplane("nhask") as dp:
        asked = []
        dp.table.resolver.ask = lambda pairs: asked.append(sorted((str(a), o) for a, o in pairs))
        dp.apply(TABLE)
        assert asked == [sorted((a, True) for a in REALS)]          # each address once
        dp.apply(TABLE)
        assert len(asked) == 1                                        # nothing changed: nothing asked
        more = TableSpec((TABLE.services[0],
                          ServiceSpec("tcp", ip("198.18.0.10"), 443, "wlc",
                                      TABLE.services[1].reals + (RealSpec(ip("198.18.1.99"), 443, 1, "nat"),))))
        dp.apply(more)
        assert asked[1:] == [[("198.18.1.99", False)]]


def test_an_apply_takes_the_next_hops_resolved_ahead_as_they_are():
    """The real servers a table adds (nexthops_ahead: each next hop once, none for a server that
    stays) resolved before the data plane's lock is taken (resolve_ahead: asked for together)
    and handed to the apply: it resolves and asks for none of them again -- lb_reals holds the
    MAC resolved ahead, and a server whose ARP did not answer then gets no new connections until
    it does -- and resolves itself only what the answers lack (the table moved between)."""
    def spec(*extra):
        return TableSpec((TABLE.services[0], ServiceSpec("tcp", ip("198.18.0.10"), 443, "wlc",
                                                         TABLE.services[1].reals + extra)))
    up, not_up, late = (RealSpec(ip("198.18.1.98"), 443, 1, "dr"), RealSpec(ip("198.18.1.99"), 443, 1, "nat"),
                        RealSpec(ip("198.18.1.97"), 443, 1, "dr"))
    with loaded_dataplane("nhahead", table=TABLE) as dp:
        assert dp.nexthops_ahead(TABLE) == []
        pairs = dp.nexthops_ahead(spec(up, not_up))
        assert pairs == [(up.address, True), (not_up.address, False)]
        asked = []

        def ahead(addr, need_onlink=False):
            if addr == not_up.address:
                raise NextHopError(f"real server {addr}: no ARP/ND answer from {addr} on priv0")
            nh = fake_resolver(addr, need_onlink)
            return NextHop(nh.ifindex, nh.ifname, NEW_MAC, nh.src_mac, True, nh.src_addr, nh.mtu)
        ahead.ask = lambda pairs: asked.append(sorted(pairs))
        dp.resolver = ahead
        resolved = dp.resolve_ahead(pairs)
        assert asked == [pairs] and resolved[(up.address, True)].mac == NEW_MAC
        in_apply = []

        def resolver(addr, need_onlink=False):
            in_apply.append(str(addr))
            return fake_resolver(addr, need_onlink)
        resolver.ask = lambda pairs: in_apply.append(sorted(pairs))
        dp.table.resolver = resolver
        dp.apply(spec(up, not_up), nexthops=resolved)
        assert in_apply == []
        reals = {str(r.addr): r for r in (L.Real.unpack(v) for _, v in dp.maps["lb_reals"].items()) if r.family}
        assert reals["198.18.1.98"].mac == NEW_MAC and not reals["198.18.1.98"].flags & L.REAL_F_NO_NEXTHOP
        assert reals["198.18.1.99"].flags & L.REAL_F_NO_NEXTHOP
        assert _macs(dp)["198.18.1.10"] == {fake_resolver(ip("198.18.1.10")).mac}     # stayed: not resolved
        dp.apply(spec(up, not_up, late), nexthops={})
        assert in_apply == [[(late.address, True)], "198.18.1.97"]


def test_a_next_hop_that_does_not_resolve_is_said_until_it_does():
    """A real server added whose ARP is not answered: no new connections (its lb_reals entry's
    REAL_F_NO_NEXTHOP, which every scheduler skips) and nexthop_errors says why (`lb status`,
    the metrics); one whose next hop stops answering keeps the one resolved before ("kept");
    both leave nexthop_errors once they answer."""
    late = RealSpec(ip("198.18.1.97"), 443, 1, "dr")
    more = TableSpec((TABLE.services[0], ServiceSpec("tcp", ip("198.18.0.10"), 443, "wlc",
                                                     TABLE.services[1].reals + (late,))))
    silent = NextHopError("real server 198.18.1.97: no ARP/ND answer from 198.18.1.97 on priv0")

    def flags(dp):
        return {str(r.addr): r.flags for r in (L.Real.unpack(v) for _, v in dp.maps["lb_reals"].items()) if r.family}
    with loaded_dataplane("nherr", table=TABLE) as dp:
        assert dp.nexthop_errors() == {}
        dp.apply(more, nexthops={(late.address, True): silent})
        assert dp.nexthop_errors() == {(late.address, True): (str(silent), False)}
        assert flags(dp)["198.18.1.97"] & L.REAL_F_NO_NEXTHOP and not flags(dp)["198.18.1.10"] & L.REAL_F_NO_NEXTHOP

        def gone(addr, need_onlink=False):          # 198.18.1.10 stops answering too
            if str(addr) in ("198.18.1.10", "198.18.1.97"):
                raise NextHopError(f"real server {addr}: no ARP/ND answer")
            return fake_resolver(addr, need_onlink)
        dp.resolver = gone
        dp.refresh_nexthops(dp.resolve_nexthops(dp.nexthop_work()))
        assert dp.nexthop_errors() == {(late.address, True): ("real server 198.18.1.97: no ARP/ND answer", False),
                                       (ip("198.18.1.10"), True): ("real server 198.18.1.10: no ARP/ND answer", True)}
        assert not flags(dp)["198.18.1.10"] & L.REAL_F_NO_NEXTHOP     # the MAC resolved before, kept
        dp.resolver = fake_resolver                   # both answer
        assert dp.refresh_nexthops(dp.resolve_nexthops(dp.nexthop_work())) == 1   # .97's entry: flag cleared
        assert dp.nexthop_errors() == {} and not flags(dp)["198.18.1.97"] & L.REAL_F_NO_NEXTHOP


def test_a_tunnels_new_mtu_or_source_is_written_by_the_refresh():
    """A tunnel's next hop is more than a MAC: the egress link's MTU and our source address for the
    outer header.  A refresh that finds either moved writes the server's entry; one that finds
    nothing moved writes nothing."""
    tun = TableSpec((ServiceSpec("tcp", ip("198.18.0.30"), 80, "rr",
                                 (RealSpec(ip("198.18.1.40"), 80, 1, "tunnel"),)),))
    with loaded_dataplane("nhtun", table=tun) as dp:
        assert dp.refresh_nexthops(dp.resolve_nexthops(dp.nexthop_work())) == 0
        base = fake_resolver(ip("198.18.1.40"))
        for change in ({"mtu": 1400}, {"src_addr": ip("198.18.1.2")}):
            dp.resolver = lambda addr, need_onlink=False, change=change: NextHop(**{**vars(base), **change})
            assert dp.refresh_nexthops(dp.resolve_nexthops(dp.nexthop_work())) == 1
            (real,) = [r for r in (L.Real.unpack(v) for _, v in dp.maps["lb_reals"].items()) if r.family]
            assert real.mtu == change.get("mtu", base.mtu)
            if "src_addr" in change:
                assert real.tun_src == L.pack_addr(change["src_addr"])
            assert dp.refresh_nexthops(dp.resolve_nexthops(dp.nexthop_work())) == 0
