"""What the data path sees while an apply is under way: a service the apply has already walked
forwards its new connections all through the rest of the apply (another service's real server
that takes seconds to answer ARP, say), not only once the last map is flushed.  The data path
runs while the control plane writes; the test runs packets from inside the apply (the resolver
of a later service's new real server) and looks at every client's pick."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, loaded_dataplane, real_mac, run

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
