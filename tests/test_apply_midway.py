"""What the data path sees while an apply is under way: a service the apply has already walked
forwards its new connections all through the rest of the apply (another service's real server
that takes seconds to answer ARP, say), not only once the last map is flushed.  The data path
runs while the control plane writes; the test runs packets from inside the apply (the resolver
of a later service's new real server) and looks at every client's pick."""
from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, age, loaded_dataplane, real_mac, run

ip = ipaddress.ip_address
CLIENTS = [f"198.18.{4 + i // 250}.{1 + i % 250}" for i in range(200)]
_sport = iter(range(20000, 60000))


def rs(*octets) -> tuple[RealSpec, ...]:
    return tuple(RealSpec(ip(f"198.18.1.{o}"), 80, 1, "dr") for o in octets)


def table(a_sched: str, a_reals, b_reals) -> TableSpec:
    return TableSpec((ServiceSpec("tcp", ip("198.18.0.10"), 80, a_sched, rs(*a_reals), "a", mh_size=251),
                      ServiceSpec("tcp", ip("198.18.0.11"), 80, "rr", rs(*b_reals), "b")))


def picks(dp) -> dict[str, str | int]:
    """Each client's SYN to service a: the real server it went to, else the XDP action."""
    macs = {real_mac(ip(f"198.18.1.{o}")): f"198.18.1.{o}" for o in range(1, 40)}
    out = {}
    for c in CLIENTS:
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=c, dst="198.18.0.10") / \
            TCP(sport=next(_sport), dport=80, flags="S")
        rc, raw = run(dp, "lb_xdp_public", pkt)
        out[c] = macs.get(Ether(raw).dst, rc) if rc == XDP_REDIRECT else rc
    return out


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("midway") as d:
        yield d


def apply_watching(dp, t: TableSpec, slow: str) -> dict:
    """apply t; while the next hop of real server `slow` (of service b) is resolved, service a's
    picks"""
    seen = {}
    resolver = dp.table.resolver

    def hooked(addr, need_onlink=False):
        if str(addr) == slow:
            seen.update(picks(dp))
        return resolver(addr, need_onlink=need_onlink)

    dp.table.resolver = hooked
    try:
        dp.apply(t)
    finally:
        dp.table.resolver = resolver
    assert seen
    return seen


def test_an_mh_service_keeps_forwarding_while_the_rest_of_the_apply_runs(dp):
    dp.apply(table("mh", (11, 12), (21,)))
    assert set(picks(dp).values()) == {"198.18.1.11", "198.18.1.12"}
    # a real server joins the mh service; another service's new server is slow to resolve
    during = apply_watching(dp, table("mh", (11, 12, 13), (21, 22)), "198.18.1.22")
    assert set(during.values()) <= {"198.18.1.11", "198.18.1.12", "198.18.1.13"}, \
        sorted(c for c, p in during.items() if not isinstance(p, str))
    assert set(picks(dp).values()) == {"198.18.1.11", "198.18.1.12", "198.18.1.13"}
    # and leaves mh for rr
    during = apply_watching(dp, table("rr", (11, 12, 13), (21, 22, 23)), "198.18.1.23")
    assert set(during.values()) <= {"198.18.1.11", "198.18.1.12", "198.18.1.13"}, \
        sorted(c for c, p in during.items() if not isinstance(p, str))
    assert set(picks(dp).values()) == {"198.18.1.11", "198.18.1.12", "198.18.1.13"}


def conn(dp, vip: str, sport: int, flags: str) -> tuple[int, str | None]:
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=vip) / TCP(sport=sport, dport=80, flags=flags)
    rc, raw = run(dp, "lb_xdp_public", pkt)
    macs = {real_mac(ip(f"198.18.1.{o}")): f"198.18.1.{o}" for o in range(1, 40)}
    return rc, macs.get(Ether(raw).dst) if rc == XDP_REDIRECT else None


def test_a_server_whose_overload_ends_during_an_apply_gets_connections_again(dp):
    """u_threshold 2: two connections overload 198.18.1.31 (the data path sets OVERLOAD in the
    service's list); one of them ends while the apply that adds a server to its service runs.
    The list that apply writes must not bring OVERLOAD back (read before the connection ended):
    the data path clears it only once, so the server would get no new connection until the next
    change of its service -- idle, weight 1 in `lb list`."""
    def t(a_reals, b_reals):
        a = tuple(RealSpec(ip(f"198.18.1.{o}"), 80, 1, "dr", u_threshold=2 if o == 31 else 0) for o in a_reals)
        return TableSpec((ServiceSpec("tcp", ip("198.18.0.12"), 80, "rr", a, "c"),
                          ServiceSpec("tcp", ip("198.18.0.13"), 80, "rr", rs(*b_reals), "d")))

    dp.apply(t((31,), (36,)))
    for sport in (41000, 41001):
        assert conn(dp, "198.18.0.12", sport, "S") == (XDP_REDIRECT, "198.18.1.31")
        assert conn(dp, "198.18.0.12", sport, "A") == (XDP_REDIRECT, "198.18.1.31")
    assert conn(dp, "198.18.0.12", 41002, "S")[0] != XDP_REDIRECT        # overloaded: no server

    resolver = dp.table.resolver

    def hooked(addr, need_onlink=False):
        if str(addr) == "198.18.1.37":
            age(dp, 1000)                     # both connections' time is up; one packet ends one:
            conn(dp, "198.18.0.12", 41000, "A")   # 1 left, below 3/4 of 2: OVERLOAD cleared
        return resolver(addr, need_onlink=need_onlink)

    dp.table.resolver = hooked
    try:
        dp.apply(t((31, 32), (36, 37)))
    finally:
        dp.table.resolver = resolver
    dp.sweep()                                # the other one goes too: 198.18.1.31 is idle
    got = {conn(dp, "198.18.0.12", sport, "S")[1] for sport in range(41010, 41016)}
    assert got == {"198.18.1.31", "198.18.1.32"}


def test_a_retired_real_server_still_in_the_list_gets_no_new_connection(dp):
    """An apply retires a leaving real server in lb_reals (family 0) before it writes the list
    without it (txn.py's order): in between, a pick of that server makes no connection -- the SYN
    goes to the director's stack (which answers it), not to a server whose packets would drop."""
    dp.apply(TableSpec((ServiceSpec("tcp", ip("198.18.0.14"), 80, "rr", rs(38, 39), "e"),)))
    rid = next(r for r, real in dp.table.reals.items()
               if str(real.addr) == "198.18.1.39" and real.family and real.svc != L.LB_NONE)
    seen = {conn(dp, "198.18.0.14", sport, "S") for sport in range(42000, 42004)}
    assert {p for _, p in seen} == {"198.18.1.38", "198.18.1.39"}
    retired = dataclasses.replace(dp.table.reals[rid], family=0, weight=0)
    dp.maps["lb_reals"].set(L.U32.pack(rid), retired.pack())    # the list still names it
    seen = [conn(dp, "198.18.0.14", sport, "S") for sport in range(42010, 42014)]
    assert (XDP_REDIRECT, "198.18.1.38") in seen and (XDP_PASS, None) in seen, seen
    assert all(p != "198.18.1.39" for _, p in seen), seen
    made = [c for c in dp.read_connections() if c.virtual[0] == ip("198.18.0.14") and c.client[1] in range(42010, 42014)]
    assert [c.dest[0] for c in made] == [ip("198.18.1.38")] * len(made), made
