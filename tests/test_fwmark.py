"""Firewall-mark services matched in XDP (no iptables): port groups, persistence across the
group, NAT replies back to the port the client used, and what `lb list` shows."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from lb import listing
from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.maps import PinnedMaps
from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, XDP_TX, conn_items,
                          loaded_dataplane, real_mac, run, template_items)

ip = ipaddress.ip_address
VIP = "198.18.0.40"
REALS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
_sport = itertools.count(30000)


def ftp_service(fwd="nat", persistent=300, groups=((21, 21), (40000, 40099)), mark=21, sched="rr"):
    reals = tuple(RealSpec(ip(a), 0, 1, fwd) for a in REALS)
    g = tuple(PortGroup("tcp", ip(VIP), lo, hi) for lo, hi in groups)
    return ServiceSpec("tcp", ip(VIP), groups[0][0], sched, reals, "ftp", persistent,
                       "255.255.255.255" if persistent else None, fwmark=mark, groups=g)


def web_service():
    reals = tuple(RealSpec(ip(a), 80, 1, "dr") for a in REALS)
    return ServiceSpec("tcp", ip(VIP), 80, "rr", reals, "web")


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("fwm") as d:
        yield d


def syn(dport, client="198.18.0.2", sport=None, flags="S"):
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst=VIP, id=3) / \
        TCP(sport=sport or next(_sport), dport=dport, flags=flags, seq=100)


def dest_of(out) -> str:
    return {real_mac(a): a for a in REALS}[Ether(out).dst]


def test_group_ports_share_one_template_and_nat_keeps_the_port(dp):
    dp.apply(TableSpec((ftp_service(), web_service())))
    rc, out = run(dp, "lb_xdp_public", syn(21, sport=5001))
    assert rc == XDP_REDIRECT
    ctl = dest_of(out)
    assert (Ether(out)[IP].dst, Ether(out)[TCP].dport) == (ctl, 21)
    # the passive data connection, on another port of the group: the same real server, its
    # destination port kept (real servers of a firewall-mark service have port 0)
    for port in (40000, 40050, 40099):
        rc, out = run(dp, "lb_xdp_public", syn(port, sport=5002 + port % 7))
        assert rc == XDP_REDIRECT
        p = Ether(out)
        assert (p[IP].dst, p[TCP].dport) == (ctl, port)
    # another client: scheduled (rr moves on), then sticks too
    rc, out = run(dp, "lb_xdp_public", syn(21, client="198.18.0.3"))
    other = dest_of(out)
    assert other != ctl
    rc, out = run(dp, "lb_xdp_public", syn(40001, client="198.18.0.3"))
    assert dest_of(out) == other
    # the NAT reply of the data connection goes back from VIP:40050
    reply = Ether(src=real_mac(ctl), dst=PRIV_MAC) / IP(src=ctl, dst="198.18.0.2", id=9) / \
        TCP(sport=40050, dport=5002 + 40050 % 7, flags="SA", seq=7, ack=101)
    rc, out = run(dp, "lb_xdp_private", reply)
    assert rc == XDP_TX
    p = Ether(out)
    assert (p[IP].src, p[TCP].sport, p[IP].dst) == (VIP, 40050, "198.18.0.2")
    fresh = Ether(bytes(p))
    del fresh[IP].chksum
    del fresh[TCP].chksum
    fresh = Ether(bytes(fresh))
    assert (fresh[IP].chksum, fresh[TCP].chksum) == (p[IP].chksum, p[TCP].chksum)
    # templates are keyed <client, fwmark>: one per client
    with PinnedMaps(dp.instance) as maps:
        marks = [L.PERSIST_KEY.unpack(k)[5] for k, _ in template_items(maps)]
    assert sorted(marks) == [21, 21]


@pytest.mark.parametrize("port", [20, 22, 39999, 40100, 443])
def test_ports_outside_the_groups_pass(dp, port):
    dp.apply(TableSpec((ftp_service(), web_service())))
    pkt = syn(port)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_PASS and out == bytes(pkt)


def test_udp_to_a_tcp_group_passes_and_exact_services_still_win(dp):
    dp.apply(TableSpec((ftp_service(groups=((21, 21), (40000, 40099), (70, 90))), web_service())))
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=VIP) / UDP(sport=1, dport=21)
    assert run(dp, "lb_xdp_public", pkt)[0] == XDP_PASS
    # port 80 is in 70-90 but web owns VIP:80 exactly: web's real port 80 under DR (MAC only)
    rc, out = run(dp, "lb_xdp_public", syn(80))
    assert rc == XDP_REDIRECT
    sid = dp.services[L.SvcKey(6, ip(VIP), 80)].id
    with PinnedMaps(dp.instance) as maps:
        conns = [L.Conn.unpack(v) for k, v in conn_items(maps) if L.ConnKey.unpack(k).dport == 80]
    assert conns and all(c.svc == sid for c in conns)


def test_dr_fwmark_and_listing(dp):
    dp.apply(TableSpec((ftp_service(fwd="dr", mark=80, sched="wlc", persistent=0),)))
    pkt = syn(40007)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    assert bytes(Ether(out)[IP]) == bytes(pkt[IP])          # DR: only the MACs change
    with PinnedMaps(dp.instance) as maps:
        rows = reader.read_services(maps)
    text = listing.format_services(rows)
    assert "FWM  80 wlc\n" in text
    # the SYN put the connection in SYN_RECV, an active state (tcp_state_active), as in IPVS
    assert "  -> %-28s %-7s %-6d %-10d %-10d\n" % ("198.18.1.13:0", "Route", 1, 1, 0) in text
    assert [r.fwmark for r in rows] == [80]


def test_removing_the_service_stops_matching(dp):
    dp.apply(TableSpec((ftp_service(),)))
    assert L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_FWM_KEYS)))[0] == 1
    dp.apply(TableSpec((web_service(),)))
    assert dp.maps["lb_fwm_ranges"].items(batch=False) == []
    assert dp.maps["lb_fwm_services"].items(batch=False) == []
    assert L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_FWM_KEYS)))[0] == 0
    assert run(dp, "lb_xdp_public", syn(21))[0] == XDP_PASS
    # and back, with another group layout: only the changed ranges are written
    dp.apply(TableSpec((ftp_service(groups=((2121, 2121),)), web_service())))
    assert run(dp, "lb_xdp_public", syn(2121))[0] == XDP_REDIRECT
    assert run(dp, "lb_xdp_public", syn(21))[0] == XDP_PASS


def test_adopt_rebuilds_fwmark_services(dp):
    from lb.dataplane.xdp import XdpDataplane
    from packets_util import fake_resolver

    dp.apply(TableSpec((ftp_service(), web_service())))
    other = XdpDataplane(dp.instance, dp.sizes, resolver=fake_resolver)
    other.load()
    try:
        assert other.adopted
        assert set(other.services) == set(dp.services)
        assert other.ranges == dp.ranges
        assert other.apply(TableSpec((ftp_service(), web_service()))) == 0
    finally:
        other.close()
