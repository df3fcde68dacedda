"""What the kernel drops before IPVS would see it is not balanced: a length past the frame or
short of its headers, a martian source (0/8, 127/8, multicast, class E, broadcast; IPv6 ::,
::1, ff00::/8, ::ffff:0:0/96; the VIP the packet is sent to, another address the director's
services listen on, or one of the director's own interface addresses).  lb passes it to the kernel, makes no connection and counts `not_routable`
(they went to real servers, two entries a NAT flow, inflating Conns).  And a tunnel's outer
IPv4 header carries an id of its own when DF is clear (RFC 6864: it may be fragmented on the
way; every outer header had id 0)."""
from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.xdp import XdpDataplane
from packets_util import (CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, conn_items, fake_resolver, loaded_dataplane,
                          run)

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


# ---- a source that is another address of this director's virtual services ----
# A (V4, V6) is the service the SYNs go to; B another VIP of the director, G a firewall-mark
# service's port-group address.  The kernel drops a packet from its own address as a martian
# (IPv4: fib_validate_source) before IPVS sees it; lb passes it to the kernel and counts it, as
# it does the packet from the VIP it is sent to.
B4, B6, G4 = "198.18.0.30", "2001:2::30", "198.18.0.60"
USED = {V4, V6, B4, B6, G4, "198.18.1.11", "198.18.1.12", "198.18.1.21", "198.18.1.31", "2001:2:0:1::11",
        "2001:2:0:1::12", "2001:2:0:1::21"}


def collider(vip: str) -> str:
    """An address (no VIP, no real server, no martian) whose bit of lb_vip_filter is vip's: a
    SYN from it passes the source's bit test, and only the exact lookup (lb_vip_addrs) tells it
    from the VIP"""
    want, v = L.vip_filter_bit(ip(vip)), ip(vip)
    for n in range(1, 1 << 20):
        a = v + n
        if L.vip_filter_bit(a) == want and str(a) not in USED:
            return str(a)
    raise AssertionError(f"no address shares {vip}'s bit")


X4 = collider(V4)        # another VIP, in vips_table(with_b): its bit stays set (A's) once it goes
USED.add(X4)


def vips_table(with_b: bool = True) -> TableSpec:
    out = [svc(V4, ["198.18.1.11", "198.18.1.12"], "nat", port=80, rport=8080, proto="tcp"),
           svc(V4, ["198.18.1.11", "198.18.1.12"], "nat"),
           svc(V6, ["2001:2:0:1::11", "2001:2:0:1::12"], "nat", port=80, rport=8080, proto="tcp"),
           ServiceSpec("tcp", ip(G4), 0, "rr", (RealSpec(ip("198.18.1.31"), 0, 1, "nat"),), name="ftp", fwmark=21,
                       groups=(PortGroup("tcp", ip(G4), 21, 21),))]
    if with_b:
        out += [svc(b, [real], "dr", port=443, rport=443, proto="tcp")
                for b, real in ((B4, "198.18.1.21"), (B6, "2001:2:0:1::21"), (X4, "198.18.1.21"))]
    return TableSpec(tuple(out))


def syn(src, dst, dport, sport):
    l3 = IP(src=src, dst=dst) if ip(src).version == 4 else IPv6(src=src, dst=dst)
    return pub(l3, TCP(sport=sport, dport=dport, flags="S"))


FROM_A_VIP = [
    ("SYN from another VIP", lambda sp: syn(B4, V4, 80, sp)),
    ("SYN from another VIP sharing A's bit", lambda sp: syn(X4, V4, 80, sp)),
    ("UDP from another VIP", lambda sp: pub(IP(src=B4, dst=V4), UDP(sport=sp, dport=53))),
    ("SYN from a port group's address", lambda sp: syn(G4, V4, 80, sp)),
    ("SYN from a VIP to a DR service", lambda sp: syn(V4, B4, 443, sp)),
    ("SYN from a VIP to a firewall-mark service", lambda sp: syn(V4, G4, 21, sp)),
    ("IPv6 SYN from another VIP", lambda sp: syn(B6, V6, 80, sp)),
    ("IPv6 SYN from a VIP to a DR service", lambda sp: syn(V6, B6, 443, sp)),
]


def refused(dp, name, pkt) -> None:
    before, counted = len(conn_items(dp.maps)), dp.counters().get("not_routable", 0)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_PASS and out == bytes(pkt), name
    assert len(conn_items(dp.maps)) == before, name              # no connection made
    assert dp.counters()["not_routable"] == counted + 1, name


def scheduled(dp, name, pkt) -> None:
    rc, _ = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT, name


def test_a_new_connection_from_a_vip_of_this_director_is_passed_to_the_kernel():
    ports = itertools.count(31000)
    with loaded_dataplane("fromvip", table=vips_table()) as dp:
        for name, make in FROM_A_VIP:
            refused(dp, name, make(next(ports)))
        # ordinary clients are scheduled, and so are those whose source shares a VIP's bit
        for src in (CLIENT, collider(B4), collider(G4), collider(X4)):
            scheduled(dp, f"SYN from {src}", syn(src, V4, 80, next(ports)))
            scheduled(dp, f"SYN from {src} to B", syn(src, B4, 443, next(ports)))
        for src in ("2001:2::2", collider(B6)):
            scheduled(dp, f"SYN from {src}", syn(src, V6, 80, next(ports)))


def test_the_vip_addresses_follow_the_table_and_an_older_instances_pins_are_filled():
    """A VIP removed is a client like any other; one added is refused at once.  An instance whose
    pins predate lb_vip_addrs is adopted: the load creates the map, the first apply fills it."""
    ports = itertools.count(32000)
    with loaded_dataplane("vipaddrs", table=vips_table(with_b=False)) as dp:
        scheduled(dp, "B not a VIP", syn(B4, V4, 80, next(ports)))
        dp.apply(vips_table())
        refused(dp, "B a VIP", syn(B4, V4, 80, next(ports)))
        dp.apply(vips_table(with_b=False))
        scheduled(dp, "B removed", syn(B4, V4, 80, next(ports)))
        scheduled(dp, "B removed, IPv6", syn(B6, V6, 80, next(ports)))
        scheduled(dp, "X removed, its bit still set", syn(X4, V4, 80, next(ports)))
        dp.apply(vips_table())
        os.unlink(os.path.join(dp.pin, "lb_vip_addrs"))          # as an older lb pinned its maps
        again = XdpDataplane(dp.instance, dp.sizes, resolver=fake_resolver)
        try:
            again.load()
            assert again.adopted and os.path.exists(os.path.join(dp.pin, "lb_vip_addrs"))
            again.apply(vips_table())
            for name, make in FROM_A_VIP:
                refused(again, name, make(next(ports)))
            scheduled(again, "a client", syn(CLIENT, V4, 80, next(ports)))
        finally:
            again.close()


# ---- a source that is one of the director's own addresses, not a VIP ----
# D4 and D6: the director's interface addresses, as the engine reads them (TableSpec.local_addrs).
# A packet from one is forged -- XDP sees only what arrives -- and the kernel drops it as a martian;
# scheduled, the real server answered the director, and forged SYNs had the real servers talk to it.
D4, D6 = "198.18.0.1", "2001:2::1"
USED.update({D4, D6})


def test_a_new_connection_from_the_directors_own_address_is_passed_to_the_kernel():
    """Refused while the address is the director's, scheduled once it is not; a source that
    shares its bit of lb_local_filter is scheduled; an instance whose pins predate lb_local_addrs
    is adopted (the load makes the maps, the first apply fills them)."""
    ports = itertools.count(33000)
    plain = vips_table(with_b=False)
    own = dataclasses.replace(plain, local_addrs=frozenset({ip(D4), ip(D6)}))
    cases = [("SYN from the director", lambda sp: syn(D4, V4, 80, sp)),
             ("UDP from the director", lambda sp: pub(IP(src=D4, dst=V4), UDP(sport=sp, dport=53))),
             ("IPv6 SYN from the director", lambda sp: syn(D6, V6, 80, sp))]
    with loaded_dataplane("fromself", table=own) as dp:
        for name, make in cases:
            refused(dp, name, make(next(ports)))
        for src in (CLIENT, collider(D4)):
            scheduled(dp, f"SYN from {src}", syn(src, V4, 80, next(ports)))
        scheduled(dp, "IPv6 SYN from a source sharing the director's bit", syn(collider(D6), V6, 80, next(ports)))
        dp.apply(plain)                          # the address gone from the director's interfaces
        for name, make in cases:
            rc, _ = run(dp, "lb_xdp_public", make(next(ports)))
            assert rc == XDP_REDIRECT, f"{name}, no longer the director's"
        for name in ("lb_local_addrs", "lb_local_filter"):
            os.unlink(os.path.join(dp.pin, name))                 # as an older lb pinned its maps
        again = XdpDataplane(dp.instance, dp.sizes, resolver=fake_resolver)
        try:
            again.load()
            assert again.adopted and os.path.exists(os.path.join(dp.pin, "lb_local_addrs"))
            again.apply(own)
            for name, make in cases:
                refused(again, f"{name}, adopted", make(next(ports)))
            scheduled(again, "a client, adopted", syn(CLIENT, V4, 80, next(ports)))
        finally:
            again.close()
