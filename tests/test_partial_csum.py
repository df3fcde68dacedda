"""Partial checksums (bpf/lb_csum.h): a sender whose stack leaves the TCP/UDP checksum to the
device (tx checksum offload, CHECKSUM_PARTIAL) puts only the pseudo header's sum in the field.
On a veth lb's native XDP program sees the frame so, and a frame it forwards leaves the skb that
said "partial" behind: lb completes the checksum before forwarding.  Bytes out of the programs
(BPF_PROG_TEST_RUN), checked against the checksums scapy computes."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec

from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_REDIRECT, XDP_TX, csum_fold, loaded_dataplane,
                          pseudo_sum, real_mac, run)

CLIENT, CLIENT6 = "198.18.0.2", "2001:2::2"
VIP_DR, VIP_NAT, VIP6_DR = "198.18.0.10", "198.18.0.20", "2001:2::10"
REAL, REAL6 = "198.18.1.11", "2001:2:0:1::11"
ip = ipaddress.ip_address

VIP6_NAT = "2001:2::20"
TABLE = TableSpec((
    ServiceSpec("tcp", ip(VIP_DR), 80, "rr", (RealSpec(ip(REAL), 80, 1, "dr"),)),
    ServiceSpec("tcp", ip(VIP_NAT), 80, "rr", (RealSpec(ip(REAL), 8080, 1, "nat"),)),
    ServiceSpec("udp", ip(VIP_NAT), 53, "rr", (RealSpec(ip(REAL), 5353, 1, "nat"),)),
    ServiceSpec("tcp", ip(VIP6_DR), 80, "rr", (RealSpec(ip(REAL6), 80, 1, "dr"),)),
    ServiceSpec("udp", ip(VIP6_NAT), 53, "rr", (RealSpec(ip(REAL6), 5353, 1, "nat"),)),
    ServiceSpec("udp", ip(VIP6_DR), 53, "rr", (RealSpec(ip(REAL6), 53, 1, "dr"),)),
))

# segment lengths that reach every part of the completion: none, the odd tail bytes, the
# 256..4-byte pieces, one and several 512-byte chunks, a full 1500-byte frame's
PAYLOADS = (0, 1, 2, 3, 5, 259, 511, 512, 513, 1025, 1460)


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("pcsum", table=TABLE) as d:
        yield d


def pseudo_sum_of(pkt) -> int:
    """the pseudo header's sum of a scapy packet's segment (packets_util.pseudo_sum)"""
    l3 = pkt[IP] if IP in pkt else pkt[IPv6]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    return pseudo_sum(ip(l3.src).packed, ip(l3.dst).packed, 6 if TCP in pkt else 17, len(bytes(l4)))


def partial(pkt) -> bytes:
    """pkt's bytes as a sender with tx offload sends them"""
    p = Ether(bytes(pkt))
    (p[TCP] if TCP in p else p[UDP]).chksum = pseudo_sum_of(p)
    return bytes(p)


def checksum_ok(raw: bytes) -> bool:
    p = Ether(raw)
    l4 = TCP if TCP in p else UDP
    fresh = p.copy()
    del fresh[l4].chksum
    return Ether(bytes(fresh))[l4].chksum == p[l4].chksum


def counters(dp) -> tuple[int, int]:
    c = dp.counters()
    return c["partial_checksum_completed"], c["partial_checksum_uncompleted"]


def payload(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def client(dst, dport, sport, flags="S", n=0, proto="tcp", src=CLIENT):
    l3 = IP(src=src, dst=dst, id=7) if ":" not in dst else IPv6(src=src, dst=dst)
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=0 if flags == "S" else 1) if proto == "tcp" \
        else UDP(sport=sport, dport=dport)
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / l3 / l4 / payload(n)


@pytest.mark.parametrize("n", PAYLOADS)
def test_dr_completes_a_partial_checksum(dp, n):
    sport = 30000 + n
    syn = client(VIP_DR, 80, sport)
    assert run(dp, "lb_xdp_public", partial(syn))[0] == XDP_REDIRECT
    before = counters(dp)
    pkt = client(VIP_DR, 80, sport, flags="PA", n=n)
    rc, out = run(dp, "lb_xdp_public", partial(pkt))
    assert rc == XDP_REDIRECT
    want = pkt.copy()
    want[Ether].src, want[Ether].dst = PRIV_MAC, real_mac(REAL)
    assert out == bytes(want)                    # scapy's whole checksum, nothing else moved
    assert counters(dp) == (before[0] + 1, before[1])


def test_ipv6_dr_completes_a_partial_checksum(dp):
    for flags, n in (("S", 0), ("PA", 1001)):
        pkt = client(VIP6_DR, 80, 30999, flags=flags, n=n, src=CLIENT6)
        rc, out = run(dp, "lb_xdp_public", partial(pkt))
        assert rc == XDP_REDIRECT
        assert out[14:] == bytes(pkt)[14:]           # scapy's whole checksum, nothing else moved


def test_nat_completes_before_rewriting_both_ways(dp):
    req = client(VIP_NAT, 80, 31000, n=333)
    rc, out = run(dp, "lb_xdp_public", partial(req))
    assert rc == XDP_REDIRECT
    p = Ether(out)
    assert (p[IP].dst, p[TCP].dport, bytes(p[TCP].payload)) == (REAL, 8080, payload(333))
    assert checksum_ok(out)
    # the real server's reply, partial too (its own tx offload): completed, then rewritten
    reply = Ether(src=real_mac(REAL), dst=PRIV_MAC) / IP(src=REAL, dst=CLIENT, id=9) / \
        TCP(sport=8080, dport=31000, flags="SA", seq=5000, ack=1001) / payload(77)
    before = counters(dp)
    rc, out = run(dp, "lb_xdp_private", partial(reply))
    assert rc == XDP_TX
    p = Ether(out)
    assert (p[IP].src, p[TCP].sport) == (VIP_NAT, 80)
    assert checksum_ok(out)
    assert counters(dp) == (before[0] + 1, before[1])


def test_nat_udp_partial_checksum(dp):
    req = client(VIP_NAT, 53, 31100, proto="udp", n=45)
    rc, out = run(dp, "lb_xdp_public", partial(req))
    assert rc == XDP_REDIRECT
    p = Ether(out)
    assert (p[IP].dst, p[UDP].dport) == (REAL, 5353)
    assert checksum_ok(out)


def test_a_whole_checksum_is_left_alone(dp):
    """Whole checksums pass as they are and are not counted, also the one in 65,536 that equals
    the pseudo header's sum (made here by choosing two payload bytes)"""
    pkt = client(VIP_DR, 80, 31200, flags="S")
    assert run(dp, "lb_xdp_public", partial(pkt))[0] == XDP_REDIRECT
    pkt = client(VIP_DR, 80, 31200, flags="PA", n=40)
    before = counters(dp)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT and Ether(out)[TCP].chksum == Ether(bytes(pkt))[TCP].chksum
    # two payload bytes that make the whole checksum equal the pseudo header's sum
    want = pseudo_sum_of(pkt)
    raw = bytearray(bytes(pkt))
    raw[-2:] = b"\0\0"
    p = Ether(bytes(raw))
    del p[TCP].chksum
    c0 = Ether(bytes(p))[TCP].chksum      # with the two bytes 0: ~S
    # the sum must grow by d = ~want - ~c0 (one's complement) so the checksum becomes want
    d = csum_fold((~want & 0xFFFF) + (c0 & 0xFFFF))
    raw[-2:] = struct.pack("!H", d)
    p = Ether(bytes(raw))
    del p[TCP].chksum
    coincident = Ether(bytes(p))
    assert coincident[TCP].chksum == want and checksum_ok(bytes(coincident))
    rc, out = run(dp, "lb_xdp_public", bytes(coincident))
    assert rc == XDP_REDIRECT
    assert Ether(out)[TCP].chksum == want and checksum_ok(out)
    assert counters(dp) == before


def test_a_segment_past_the_frame_is_counted_and_sent_as_it_is(dp):
    pkt = client(VIP_DR, 80, 31300, flags="S")
    assert run(dp, "lb_xdp_public", partial(pkt))[0] == XDP_REDIRECT
    pkt = client(VIP_DR, 80, 31300, flags="PA", n=100)
    raw = bytearray(partial(pkt))
    # the IP header says 100 bytes more than the frame holds (its checksum fixed to match)
    ipb = IP(bytes(raw[14:]))
    ipb.len += 100
    del ipb.chksum
    hdr = bytes(IP(bytes(ipb)))[:20]
    raw[14:34] = hdr
    # the field is the pseudo header's sum for the length the IP header claims
    field = pseudo_sum(ip(CLIENT).packed, ip(VIP_DR).packed, 6, ipb.len - 20)
    raw[14 + 20 + 16:14 + 20 + 18] = struct.pack("!H", field)
    before = counters(dp)
    rc, out = run(dp, "lb_xdp_public", bytes(raw))
    assert rc == XDP_REDIRECT
    assert out[14:] == bytes(raw[14:])
    assert counters(dp) == (before[0], before[1] + 1)


def zero_checksum(pkt) -> bytes:
    p = Ether(bytes(pkt))
    p[UDP].chksum = 0
    return bytes(p)


@pytest.mark.parametrize("n", (0, 1, 45, 513))
def test_an_ipv6_udp_datagram_without_a_checksum_is_forwarded_with_a_whole_one(dp, n):
    """An IPv6 UDP datagram with checksum 0 (which its receiver discards, RFC 8200) went through
    NAT with 0 -- rewritten, the field untouched -- and the real server dropped it.  IPVS's NAT
    computes a whole checksum when the field is 0 (udp_dnat_handler, udp_snat_handler): lb does,
    both ways, and by direct routing too (where IPVS sends the 0 on, for the real server to drop);
    counted.  IPv4's 0 (valid there: no checksum) is kept."""
    sport = 32000 + n
    req = client(VIP6_NAT, 53, sport, proto="udp", n=n, src=CLIENT6)
    before = dp.counters()["udp6_checksum_filled"]
    rc, out = run(dp, "lb_xdp_public", zero_checksum(req))
    assert rc == XDP_REDIRECT
    p = Ether(out)
    assert (p[IPv6].dst, p[UDP].dport, bytes(p[UDP].payload)) == (REAL6, 5353, payload(n))
    assert p[UDP].chksum != 0 and checksum_ok(out)
    # the real server's answer, without a checksum too: back from the VIP with a whole one
    reply = Ether(src=real_mac(REAL6), dst=PRIV_MAC) / IPv6(src=REAL6, dst=CLIENT6) / \
        UDP(sport=5353, dport=sport) / payload(n + 7)
    rc, out = run(dp, "lb_xdp_private", zero_checksum(reply))
    assert rc == XDP_TX
    p = Ether(out)
    assert (p[IPv6].src, p[UDP].sport, bytes(p[UDP].payload)) == (VIP6_NAT, 53, payload(n + 7))
    assert p[UDP].chksum != 0 and checksum_ok(out)
    # direct routing: the same bytes, with the whole checksum scapy computes
    dr = client(VIP6_DR, 53, sport, proto="udp", n=n, src=CLIENT6)
    rc, out = run(dp, "lb_xdp_public", zero_checksum(dr))
    assert rc == XDP_REDIRECT and out[14:] == bytes(dr)[14:]
    assert dp.counters()["udp6_checksum_filled"] == before + 3
    # IPv4 keeps "no checksum"
    req4 = zero_checksum(client(VIP_NAT, 53, sport, proto="udp", n=n))
    rc, out = run(dp, "lb_xdp_public", req4)
    assert rc == XDP_REDIRECT and Ether(out)[UDP].chksum == 0
    assert dp.counters()["udp6_checksum_filled"] == before + 3
