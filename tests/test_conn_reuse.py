"""IPVS conn_reuse_mode 1: a client's SYN into its old connection left in TIME_WAIT or CLOSE
expires that entry and is scheduled afresh (short connections reuse client ports quickly);
a SYN into a live connection is not."""
from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.maps import PinnedMaps
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, conn_get, loaded_dataplane, real_mac, run

ip = ipaddress.ip_address
REALS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
VIP, CLIENT = "198.18.0.10", "198.18.0.2"


@pytest.fixture
def dp():
    with loaded_dataplane("reuse") as d:
        reals = tuple(RealSpec(ip(a), 80, 1, "dr") for a in REALS)
        d.apply(TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr", reals, "web"),)))
        yield d


def send(dp, sport: int, flags: str) -> tuple[int, str | None]:
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags=flags)
    rc, out = run(dp, "lb_xdp_public", pkt)
    return rc, {real_mac(a): a for a in REALS}.get(Ether(out).dst)


def counts(dp) -> dict[str, tuple[int, int]]:
    with PinnedMaps(dp.instance) as maps:
        [svc] = reader.read_services(maps)
    return {str(r.address): (r.active, r.inactive) for r in svc.reals}


def state_of(dp, sport: int) -> str:
    raw = conn_get(dp.maps, L.ConnKey(ip(CLIENT), ip(VIP), sport, 80, 6).pack())
    return L.Conn.unpack(raw).state_name(6)


def test_syn_into_closed_connection_is_scheduled_afresh(dp):
    rc, first = send(dp, 41000, "S")
    assert rc == XDP_REDIRECT
    send(dp, 41000, "A")
    assert send(dp, 41000, "S") == (XDP_REDIRECT, first)   # a SYN inside a live connection: same server
    assert state_of(dp, 41000) != "CLOSE"
    send(dp, 41000, "R")
    assert state_of(dp, 41000) == "CLOSE"
    assert counts(dp)[first] == (0, 1)

    rc, second = send(dp, 41000, "S")                      # the port reused: a new connection
    assert rc == XDP_REDIRECT and second != first          # rr moved on: it was scheduled
    assert state_of(dp, 41000) == "SYN_RECV"
    c = counts(dp)
    assert c[first] == (0, 0) and c[second] == (1, 0)      # the old one uncounted, the new counted


def test_syn_into_time_wait_is_scheduled_afresh(dp):
    _, first = send(dp, 42000, "S")
    send(dp, 42000, "A")
    send(dp, 42000, "R")
    # TIME_WAIT (inactive, like CLOSE): what a NAT connection closed by FINs ends in
    m, key = dp.maps["lb_conns"], L.ConnKey(ip(CLIENT), ip(VIP), 42000, 80, 6).pack()
    m.set(key, dataclasses.replace(L.Conn.unpack(m.get(key)), state=L.TCP_S["TIME_WAIT"]).pack())
    assert send(dp, 42000, "SA")[1] == first               # not a new connection's SYN: no reuse
    m.set(key, dataclasses.replace(L.Conn.unpack(m.get(key)), state=L.TCP_S["TIME_WAIT"]).pack())
    # nor a SYN|FIN, which makes no connection: it goes along the old one, whose entry stays
    # (it was removed, and the SYN|FIN passed to the director's kernel)
    assert send(dp, 42000, "SF") == (XDP_REDIRECT, first)
    assert m.get(key) is not None
    m.set(key, dataclasses.replace(L.Conn.unpack(m.get(key)), state=L.TCP_S["TIME_WAIT"]).pack())
    _, second = send(dp, 42000, "S")
    assert second != first and state_of(dp, 42000) == "SYN_RECV"
    assert sum(a + i for a, i in counts(dp).values()) == 1
