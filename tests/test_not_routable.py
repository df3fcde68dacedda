"""What the kernel drops before IPVS would see it is not balanced: a length past the frame or
short of its headers, a martian source (0/8, 127/8, multicast, class E, broadcast; IPv6 ::,
::1, ff00::/8, ::ffff:0:0/96; the VIP the packet is sent to).  lb passes it to the kernel, makes no connection and counts `not_routable`
(they went to real servers, two entries a NAT flow, inflating Conns).  And a tunnel's outer
IPv4 header carries an id of its own when DF is clear (RFC 6864: it may be fragmented on the
way; every outer header had id 0)."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, conn_items, loaded_dataplane, run

ip = ipaddress.ip_address
CLIENT, V4, V6 = "198.18.0.2", "198.18.0.20", "2001:2::20"


def svc(vip, reals, fwd, port=53, rport=5353, proto="udp"):
    return ServiceSpec(proto, ip(vip), port, "rr", tuple(RealSpec(ip(a), rport, 1, fwd) for a in reals))


def pub(l3, l4=None):
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / l3 / (l4 if l4 is not None else UDP(dport=53))


NOT_ROUTABLE = [
    ("IPv4 length past the frame", pub(IP(src=CLIENT, dst=V4, len=1500))),
    ("IPv4 length short of the UDP header", pub(IP(src=CLIENT, dst=V4, len=20))),
    # a SYN whose IP length holds 12 of its TCP header's 20 bytes (the rest in the frame's
    # padding): IPVS's tcp_conn_schedule drops it
    ("IPv4 length short of the TCP header", pub(IP(src=CLIENT, dst=V4, len=32), TCP(dport=53, flags="S"))),
    ("IPv6 payload short of the TCP header", pub(IPv6(src="2001:2::2", dst=V6, plen=12), TCP(dport=53, flags="S"))),
    ("source 0.0.0.0", pub(IP(src="0.0.0.0", dst=V4))),
    ("source 127.0.0.1", pub(IP(src="127.0.0.1", dst=V4))),
    ("source 224.0.0.1", pub(IP(src="224.0.0.1", dst=V4))),
    ("source 240.0.0.1", pub(IP(src="240.0.0.1", dst=V4))),
    ("source 255.255.255.255", pub(IP(src="255.255.255.255", dst=V4))),
    ("IPv6 payload past the frame", pub(IPv6(src="2001:2::2", dst=V6, plen=1400))),
    ("source ::", pub(IPv6(src="::", dst=V6))),
    ("source ::1", pub(IPv6(src="::1", dst=V6))),
    ("source ff02::1", pub(IPv6(src="ff02::1", dst=V6))),
    ("source ::ffff:127.0.0.1 (IPv4-mapped)", pub(IPv6(src="::ffff:127.0.0.1", dst=V6))),
    ("source ::ffff:198.18.0.2 (IPv4-mapped)", pub(IPv6(src="::ffff:198.18.0.2", dst=V6))),
    # the VIP itself (a LAND attack's packet): scheduled, its NAT reply left from the VIP to the
    # VIP and came back through the router as a packet of the same connection
    ("source the VIP itself", pub(IP(src=V4, dst=V4))),
    ("source the VIP itself, TCP", pub(IP(src=V4, dst=V4), TCP(dport=53, flags="S"))),
    ("source the IPv6 VIP itself", pub(IPv6(src=V6, dst=V6))),
]


@pytest.fixture(scope="module")
def nat_dp():
    table = TableSpec(tuple(svc(vip, reals, "nat", proto=proto) for proto in ("udp", "tcp")
                            for vip, reals in ((V4, ["198.18.1.11", "198.18.1.12"]),
                                               (V6, ["2001:2:0:1::11", "2001:2:0:1::12"]))))
    with loaded_dataplane("notroutable", table=table) as dp:
        yield dp


def test_what_the_kernel_drops_is_passed_to_it_and_makes_nothing(nat_dp):
    ports = itertools.count(30000)
    for name, pkt in NOT_ROUTABLE:
        (pkt[UDP] if UDP in pkt else pkt[TCP]).sport = next(ports)
        before, counted = len(conn_items(nat_dp.maps)), nat_dp.counters().get("not_routable", 0)
        rc, _ = run(nat_dp, "lb_xdp_public", pkt)
        assert rc == XDP_PASS, name
        assert len(conn_items(nat_dp.maps)) == before, name
        assert nat_dp.counters()["not_routable"] == counted + 1, name
    # and the same flows from real sources are balanced (the checks refuse only the above)
    for pkt in (pub(IP(src=CLIENT, dst=V4), UDP(sport=next(ports), dport=53)),
                pub(IPv6(src="2001:2::2", dst=V6), UDP(sport=next(ports), dport=53)),
                pub(IP(src=CLIENT, dst=V4), TCP(sport=next(ports), dport=53, flags="S")),
                pub(IPv6(src="2001:2::2", dst=V6), TCP(sport=next(ports), dport=53, flags="S")),
                # a frame padded past the IP length (a short frame's Ethernet padding) is fine
                pub(IP(src=CLIENT, dst=V4), UDP(sport=next(ports), dport=53)) / (b"\0" * 12)):
        rc, _ = run(nat_dp, "lb_xdp_public", pkt)
        assert rc == XDP_REDIRECT, pkt.summary()


@pytest.mark.parametrize("flags, want_id", [(0, 4242), (2, 0)], ids=["DF clear", "DF set"])
def test_a_tunnels_outer_header_has_an_id_of_its_own_without_df(flags, want_id):
    table = TableSpec((svc("198.18.0.40", ["198.18.1.11"], "tunnel", port=53, rport=53),))
    with loaded_dataplane("tunid", table=table) as dp:
        rc, out = run(dp, "lb_xdp_public", pub(IP(src=CLIENT, dst="198.18.0.40", id=4242, flags=flags),
                                               UDP(sport=30001, dport=53) / (b"q" * 100)))
        assert rc == XDP_REDIRECT
        outer = Ether(out)[IP]
        assert outer.proto == 4 and outer.id == want_id and int(outer.flags) == flags
        fresh = IP(bytes(outer))
        del fresh.chksum                                  # scapy computes it again
        assert outer.chksum == IP(bytes(fresh)).chksum and outer.payload.id == 4242
