"""The HA lease (bpf/lb_lease.h) through BPF_PROG_TEST_RUN: while the daemon's lease holds (or
without [ha], no lease at all) ARP and neighbour solicitations pass to the kernel and packets to
the VIPs are forwarded; once it has run out, every program attached to an interface drops ARP
requests and neighbour solicitations for the covered addresses (the VIPs and nat_router) and
packets addressed to them, counted, and lets everything else through."""
from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from packets_util import CLIENT_MAC, PUB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, loaded_dataplane, run

ip = ipaddress.ip_address
VIP, VIP6, ROUTER, DIRECTOR = "198.18.0.10", "2001:2::10", "198.18.1.254", "198.18.0.1"
BCAST = "ff:ff:ff:ff:ff:ff"


@pytest.fixture(scope="module")
def dp():
    table = TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1, "dr"),), "web"),
                       ServiceSpec("tcp", ip(VIP6), 80, "rr", (RealSpec(ip("2001:2:0:1::11"), 80, 1, "dr"),),
                                   "web6")))
    with loaded_dataplane("lease", table=table) as d:
        d.claim({ip(VIP): "vip", ip(VIP6): "vip", ip(ROUTER): "router"})
        yield d


def arp(target, op="who-has", vlan=None):
    l2 = Ether(src=CLIENT_MAC, dst=BCAST)
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return l2 / ARP(op=op, hwsrc=CLIENT_MAC, psrc="198.18.0.2", pdst=target)


def ns(target):
    # to the target's solicited-node multicast address, as a real solicitation goes
    t = ipaddress.ip_address(target).packed
    mcast = ipaddress.ip_address(b"\xff\x02" + bytes(9) + b"\x01\xff" + t[-3:])
    return Ether(src=CLIENT_MAC, dst="33:33:ff:" + t[-3:].hex(":")) / \
        IPv6(src="2001:2::2", dst=str(mcast)) / ICMPv6ND_NS(tgt=target)


def syn(dst=VIP, sport=41000):
    l3 = IPv6(src="2001:2::2", dst=dst) if ":" in dst else IP(src="198.18.0.2", dst=dst)
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / l3 / TCP(sport=sport, dport=80, flags="S")


def verdicts(dp, prog="lb_xdp_public") -> dict:
    pkts = {"arp vip": arp(VIP), "arp router": arp(ROUTER), "arp director": arp(DIRECTOR),
            "arp reply vip": arp(VIP, op="is-at"), "arp vip vlan": arp(VIP, vlan=7), "ns vip6": ns(VIP6),
            "ns other": ns("2001:2::1"), "syn vip": syn(), "syn vip6": syn(VIP6)}
    return {name: run(dp, prog, p)[0] for name, p in pkts.items()}


PASSING = {"arp vip": XDP_PASS, "arp router": XDP_PASS, "arp director": XDP_PASS, "arp reply vip": XDP_PASS,
           "arp vip vlan": XDP_PASS, "ns vip6": XDP_PASS, "ns other": XDP_PASS,
           "syn vip": XDP_REDIRECT, "syn vip6": XDP_REDIRECT}
LAPSED = {**PASSING, "arp vip": XDP_DROP, "arp router": XDP_DROP, "arp vip vlan": XDP_DROP, "ns vip6": XDP_DROP,
          "syn vip": XDP_DROP, "syn vip6": XDP_DROP}


def test_without_a_lease_everything_is_as_before(dp):
    dp.lease(None)
    assert dp.lease_left() is None
    assert verdicts(dp) == PASSING


def test_a_fresh_lease_passes_and_an_expired_one_drops(dp):
    coarse = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)           # the clock lease() stamps with
    before = time.clock_gettime_ns(coarse)
    dp.lease(30.0)
    left = dp.lease_left()
    after = time.clock_gettime_ns(coarse)
    # 30 s, less only the moment between the two (however long a loaded machine made it)
    assert left <= 30 and left + (after - before) / 1e9 >= 30, left
    assert verdicts(dp) == PASSING
    before = dp.counters().get("lease_lapsed", 0)
    dp.lease(0)
    assert dp.lease_left() < 0
    assert verdicts(dp) == LAPSED
    assert dp.counters()["lease_lapsed"] == before + 6
    dp.lease(30.0)                      # refreshed again (a restarted daemon): claimed again
    assert verdicts(dp) == PASSING


def test_a_lease_runs_out_by_itself(dp):
    dp.lease(0.3)
    assert verdicts(dp) == PASSING
    for _ in range(100):                # the clock, not a write, ends it (bounded wait)
        if dp.lease_left() < 0:
            break
        time.sleep(0.05)
    assert verdicts(dp) == LAPSED


@pytest.mark.parametrize("prog", ["lb_xdp_private", "lb_xdp_guard"])
def test_the_private_and_guard_programs_check_the_lease_too(dp, prog):
    """nat_router lives on the private side: the NAT program checks it there, and in direct
    routing a program of its own does (lb_xdp_guard, everything else to the kernel)."""
    dp.lease(30.0)
    assert run(dp, prog, arp(ROUTER))[0] == XDP_PASS
    dp.lease(0)
    assert run(dp, prog, arp(ROUTER))[0] == XDP_DROP
    assert run(dp, prog, ns(VIP6))[0] == XDP_DROP
    assert run(dp, prog, arp("198.18.1.1"))[0] == XDP_PASS
    dp.lease(None)
    assert run(dp, prog, arp(ROUTER))[0] == XDP_PASS


def test_claim_writes_exactly_the_given_addresses(dp):
    dp.claim({ip(VIP): "vip"})
    dp.lease(0)
    try:
        assert run(dp, "lb_xdp_public", arp(ROUTER))[0] == XDP_PASS
        assert run(dp, "lb_xdp_public", arp(VIP))[0] == XDP_DROP
        assert len(dp.maps["lb_lease_addrs"].items(batch=False)) == 1
    finally:
        dp.claim({ip(VIP): "vip", ip(VIP6): "vip", ip(ROUTER): "router"})
        dp.lease(None)
