"""A timeout changed while connections live ([timeouts] at a reload, ipvsadm --set) applies to a
connection from its next packet, as IPVS's set_tcp_state re-reads the state's timeout at every
packet: an ESTABLISHED TCP connection as well as a UDP flow, in DR and through NAT replies."""
from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_REDIRECT, XDP_TX, age, loaded_dataplane, real_mac, run,
                          seconds_since)

ip = ipaddress.ip_address
VIP, CLIENT, NAT_REAL = "198.18.0.10", "198.18.0.2", "198.18.1.21"
DR = ServiceSpec("tcp", ip(VIP), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1, "dr"),))
NAT = ServiceSpec("tcp", ip(VIP), 81, "rr", (RealSpec(ip(NAT_REAL), 8081, 1, "nat"),))
UDPS = ServiceSpec("udp", ip(VIP), 53, "rr", (RealSpec(ip("198.18.1.11"), 53, 1, "dr"),))
SERVICES = (DR, NAT, UDPS)


@pytest.fixture
def dp():
    with loaded_dataplane("tmochange", table=TableSpec(SERVICES)) as d:
        yield d


def client(dport, sport, flags=None):
    l4 = UDP(sport=sport, dport=dport) if flags is None else TCP(sport=sport, dport=dport, flags=flags)
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP) / l4


def expires(dp):
    return {c.client[1]: (c.state, c.expire) for c in reader.read_connections(dp.maps)}


def test_a_lower_tcp_timeout_applies_from_the_next_packet(dp):
    t0 = time.monotonic()
    for flags in ("S", "A"):
        assert run(dp, "lb_xdp_public", client(80, 41000, flags))[0] == XDP_REDIRECT
    run(dp, "lb_xdp_public", client(53, 41001))
    state, left = expires(dp)[41000]
    assert state == "ESTABLISHED" and left <= 899 and left + seconds_since(t0) >= 899, left
    dp.apply(TableSpec(SERVICES, timeouts=(60, 120, 30)))
    age(dp, 1)
    t0 = time.monotonic()
    run(dp, "lb_xdp_public", client(80, 41000, "PA"))
    run(dp, "lb_xdp_public", client(53, 41001))
    e, late = expires(dp), seconds_since(t0)
    # 59 and 29 whole seconds left (fewer only by what a loaded machine took since the packets)
    assert e[41000][0] == "ESTABLISHED" and e[41000][1] <= 59 and e[41000][1] + late >= 59, e
    assert e[41001][1] <= 29 and e[41001][1] + late >= 29, e


def test_a_higher_tcp_timeout_applies_through_nat_replies(dp):
    t0 = time.monotonic()
    run(dp, "lb_xdp_public", client(81, 42000, "S"))
    rep = Ether(src=real_mac(NAT_REAL), dst=PRIV_MAC) / IP(src=NAT_REAL, dst=CLIENT) / TCP(sport=8081, dport=42000,
                                                                                         flags="SA")
    assert run(dp, "lb_xdp_private", rep)[0] == XDP_TX
    run(dp, "lb_xdp_public", client(81, 42000, "A"))
    state, left = expires(dp)[42000]
    assert state == "ESTABLISHED" and left <= 899 and left + seconds_since(t0) >= 899, left
    dp.apply(TableSpec(SERVICES, timeouts=(3600, 120, 300)))
    age(dp, 1)
    rep[TCP].flags = "A"
    assert run(dp, "lb_xdp_private", rep)[0] == XDP_TX
    state, left = expires(dp)[42000]
    assert state == "ESTABLISHED" and left > 3000
