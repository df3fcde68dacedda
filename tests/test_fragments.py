"""IPv4 datagrams in fragments (bpf/lb_frag.h), through the programs as BPF_PROG_TEST_RUN runs
them: every fragment of a client's datagram reaches the real server its first fragment went to
(DR untouched, NAT with the real server's address and, in the first, its port; tunnel inside
the outer header), and every fragment of a NAT reply goes back to the client from the VIP.
The fragments put together again at the far end make the datagram with a right checksum.
Fragments used to be passed to the director's kernel, which answered the requests itself (port
unreachable, a RST) and routed a NAT reply's on with the real server's address."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, loaded_dataplane,
                          real_mac, run)

ip = ipaddress.ip_address
CLIENT = "198.18.0.2"
DR_VIP, NAT_VIP, TUN_VIP = "198.18.0.30", "198.18.0.31", "198.18.0.32"
DR_REAL, NAT_REAL, TUN_REAL = "198.18.1.21", "198.18.1.22", "198.18.1.23"
TABLE = TableSpec((
    ServiceSpec("udp", ip(DR_VIP), 53, "rr", (RealSpec(ip(DR_REAL), 53, 1, "dr"),)),
    ServiceSpec("udp", ip(NAT_VIP), 53, "rr", (RealSpec(ip(NAT_REAL), 5353, 1, "nat"),)),
    ServiceSpec("tcp", ip(NAT_VIP), 80, "rr", (RealSpec(ip(NAT_REAL), 8080, 1, "nat"),)),
    ServiceSpec("udp", ip(TUN_VIP), 53, "rr", (RealSpec(ip(TUN_REAL), 53, 1, "tunnel"),)),
))
PAYLOAD = bytes(range(256)) * 12            # 3,072 bytes: three fragments of 1,400


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("frags", table=TABLE) as d:
        yield d


def fragments(src_mac, dst_mac, l3, l4, ident):
    datagram = IP(src=l3[0], dst=l3[1], id=ident) / l4 / Raw(PAYLOAD)
    return [Ether(src=src_mac, dst=dst_mac) / f for f in fragment(datagram, fragsize=1400)]


def whole(frames: list[bytes], skip_l2: int = 14) -> IP:
    """The datagram the receiver's kernel puts together from the frames (the IP header's
    checksum checked in each), its L4 checksum left as it came"""
    parts, head = [], None
    for fr in frames:
        p = IP(fr[skip_l2:])
        raw = bytes(p)
        want = p.chksum
        p.chksum = None
        assert IP(bytes(p)).chksum == want, "IP header checksum"
        parts.append(((p.frag * 8), bytes(p.payload)))
        if p.frag == 0:
            head = raw
    data = b"".join(d for _off, d in sorted(parts))
    hdr = IP(head)
    return IP(bytes(IP(src=hdr.src, dst=hdr.dst, id=hdr.id, proto=hdr.proto, ttl=hdr.ttl) / Raw(data)))


def l4_checksum_ok(p: IP) -> bool:
    l4 = p.payload
    got = l4.chksum
    l4.chksum = None
    return IP(bytes(p))[l4.__class__].chksum == got


def test_nat_request_fragments_all_reach_the_real_server_and_its_reply_fragments_the_client(dp):
    before = dp.counters()
    out = []
    for f in fragments(CLIENT_MAC, PUB_MAC, (CLIENT, NAT_VIP), UDP(sport=40000, dport=53), 7001):
        rc, o = run(dp, "lb_xdp_public", f)
        assert rc == XDP_REDIRECT
        assert Ether(o).dst == real_mac(NAT_REAL) and IP(o[14:]).dst == NAT_REAL
        out.append(o)
    got = whole(out)
    assert got[UDP].dport == 5353 and got[UDP].sport == 40000 and bytes(got[UDP].payload) == PAYLOAD
    assert l4_checksum_ok(got)
    after = dp.counters()
    assert after["fragment_forwarded"] - before.get("fragment_forwarded", 0) == 2
    assert after.get("fragment", 0) == before.get("fragment", 0)
    # the real server's answer, in fragments: from the VIP, to the client
    back = []
    for f in fragments(real_mac(NAT_REAL), PRIV_MAC, (NAT_REAL, CLIENT), UDP(sport=5353, dport=40000), 9001):
        rc, o = run(dp, "lb_xdp_private", f)
        assert rc == XDP_TX, rc                      # the client is where the request came in
        assert Ether(o).dst == CLIENT_MAC and IP(o[14:]).src == NAT_VIP
        back.append(o)
    got = whole(back)
    assert got[UDP].sport == 53 and got[UDP].dport == 40000 and l4_checksum_ok(got)


def test_a_tcp_segment_in_fragments_goes_whole_to_the_real_servers_port(dp):
    # a connection first (SYN, ACK), then a segment sent without DF, in fragments
    for flags in ("S", "A"):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=NAT_VIP) / TCP(sport=40100, dport=80, flags=flags)
        assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT
    out = []
    for f in fragments(CLIENT_MAC, PUB_MAC, (CLIENT, NAT_VIP), TCP(sport=40100, dport=80, flags="PA"), 7002):
        rc, o = run(dp, "lb_xdp_public", f)
        assert rc == XDP_REDIRECT
        out.append(o)
    got = whole(out)
    assert got.dst == NAT_REAL and got[TCP].dport == 8080 and l4_checksum_ok(got)
    assert bytes(got[TCP].payload) == PAYLOAD


def test_dr_fragments_go_untouched_to_the_real_server(dp):
    frames = fragments(CLIENT_MAC, PUB_MAC, (CLIENT, DR_VIP), UDP(sport=40200, dport=53), 7003)
    for f in frames:
        rc, o = run(dp, "lb_xdp_public", f)
        assert rc == XDP_REDIRECT and Ether(o).dst == real_mac(DR_REAL)
        assert o[14:] == bytes(f)[14:]


def test_tunnel_fragments_go_inside_the_outer_header(dp):
    frames = fragments(CLIENT_MAC, PUB_MAC, (CLIENT, TUN_VIP), UDP(sport=40300, dport=53), 7004)
    ids = set()
    for f in frames:
        rc, o = run(dp, "lb_xdp_public", f)
        assert rc == XDP_REDIRECT
        outer = IP(o[14:])
        assert outer.proto == 4 and outer.dst == TUN_REAL and o[34:] == bytes(f)[14:]
        ids.add(outer.id)
    # outer packets without DF may be fragmented on the way: one datagram's pieces, one id each
    assert len(ids) == len(frames)


def test_tunnel_fragments_too_big_for_the_outer_header_are_dropped_not_counted_forwarded(dp):
    """A sender's fragments fill its path MTU (1500 here, the real servers' link's too): with the
    outer header they no longer fit, and without DF they are dropped, as any such packet (XDP
    cannot fragment), counted tunnel_too_big; only the short last one goes."""
    before = dp.counters()
    datagram = IP(src=CLIENT, dst=TUN_VIP, id=7010) / UDP(sport=40600, dport=53) / Raw(PAYLOAD)
    frames = [Ether(src=CLIENT_MAC, dst=PUB_MAC) / f for f in fragment(datagram, fragsize=1480)]
    assert [len(bytes(f)) - 14 for f in frames][:2] == [1500, 1500]
    assert [run(dp, "lb_xdp_public", f)[0] for f in frames] == [XDP_DROP, XDP_DROP, XDP_REDIRECT]
    after = dp.counters()
    assert after["tunnel_too_big"] - before.get("tunnel_too_big", 0) == 2
    assert after["fragment_forwarded"] - before.get("fragment_forwarded", 0) == 1


def test_fragments_without_a_forwarded_first_are_passed_and_counted(dp):
    before = dp.counters().get("fragment", 0)
    # the first fragment never came (or came after): the rest are the kernel's
    _first, *rest = fragments(CLIENT_MAC, PUB_MAC, (CLIENT, NAT_VIP), UDP(sport=40400, dport=53), 7005)
    for f in rest:
        assert run(dp, "lb_xdp_public", f)[0] == XDP_PASS
    # a datagram to a port of the VIP no service has: its first is passed, and so is the rest
    frames = fragments(CLIENT_MAC, PUB_MAC, (CLIENT, NAT_VIP), UDP(sport=40500, dport=54), 7006)
    for f in frames:
        assert run(dp, "lb_xdp_public", f)[0] == XDP_PASS
    # a reply's fragments that no NAT connection knows
    for f in fragments(real_mac(NAT_REAL), PRIV_MAC, (NAT_REAL, CLIENT), UDP(sport=5353, dport=40999), 9002)[1:]:
        assert run(dp, "lb_xdp_private", f)[0] == XDP_PASS
    # (the port-54 datagram's first fragment is passed as any packet for no service: not counted)
    assert dp.counters()["fragment"] - before == len(rest) + len(frames) - 1 + 2
