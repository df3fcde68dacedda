"""IPv4 datagrams in fragments (bpf/lb_frag.h), through the programs as BPF_PROG_TEST_RUN runs
them: every fragment of a client's datagram reaches the real server its first fragment went to
(DR untouched, NAT with the real server's address and, in the first, its port; tunnel inside
the outer header), and every fragment of a NAT reply goes back to the client from the VIP.
The fragments put together again at the far end make the datagram with a right checksum.
Fragments used to be passed to the director's kernel, which answered the requests itself (port
unreachable, a RST) and routed a NAT reply's on with the real server's address."""
from __future__ import annotations

import ipaddress
from typing import Callable, NamedTuple

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, loaded_dataplane,
                          real_mac, run)

ip = ipaddress.ip_address
CLIENT = "198.18.0.2"
DR_VIP, NAT_VIP, TUN_VIP = "198.18.0.30", "198.18.0.31", "198.18.0.32"
DR_REAL, NAT_REAL, TUN_REAL = "198.18.1.21", "198.18.1.22", "198.18.1.23"
CLIENT6 = "2001:2::2"
DR_VIP6, NAT_VIP6, TUN_VIP6 = "2001:2::30", "2001:2::31", "2001:2::32"
DR_REAL6, NAT_REAL6, TUN_REAL6 = "2001:2:0:1::21", "2001:2:0:1::22", "2001:2:0:1::23"
TABLE = TableSpec((
    ServiceSpec("udp", ip(DR_VIP), 53, "rr", (RealSpec(ip(DR_REAL), 53, 1, "dr"),)),
    ServiceSpec("udp", ip(NAT_VIP), 53, "rr", (RealSpec(ip(NAT_REAL), 5353, 1, "nat"),)),
    ServiceSpec("tcp", ip(NAT_VIP), 80, "rr", (RealSpec(ip(NAT_REAL), 8080, 1, "nat"),)),
    ServiceSpec("udp", ip(TUN_VIP), 53, "rr", (RealSpec(ip(TUN_REAL), 53, 1, "tunnel"),)),
    ServiceSpec("udp", ip(DR_VIP6), 53, "rr", (RealSpec(ip(DR_REAL6), 53, 1, "dr"),)),
    ServiceSpec("udp", ip(NAT_VIP6), 53, "rr", (RealSpec(ip(NAT_REAL6), 5353, 1, "nat"),)),
    ServiceSpec("tcp", ip(NAT_VIP6), 80, "rr", (RealSpec(ip(NAT_REAL6), 8080, 1, "nat"),)),
    ServiceSpec("udp", ip(TUN_VIP6), 53, "rr", (RealSpec(ip(TUN_REAL6), 53, 1, "tunnel"),)),
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


# ---- IPv6: a fragment header after the fixed one (and any hop-by-hop, routing, destination
# options headers); the first fragment of a flow that has a connection, and every one after it,
# go where the flow goes; a datagram that would make a new connection is the kernel's ----

def fragments6(src_mac, dst_mac, l3, l4, ident, size=1400):
    datagram = IPv6(src=l3[0], dst=l3[1]) / IPv6ExtHdrFragment(id=ident) / l4 / Raw(PAYLOAD)
    return [Ether(src=src_mac, dst=dst_mac) / f for f in fragment6(datagram, size)]


def whole6(frames: list[bytes], skip_l2: int = 14) -> IPv6:
    """The datagram the receiver puts together: the fragments' data by offset behind the first's
    addresses, its L4 checksum left as it came"""
    parts, head = [], None
    for fr in frames:
        p = IPv6(fr[skip_l2:])
        fh = p[IPv6ExtHdrFragment]
        parts.append((fh.offset * 8, bytes(fh.payload)))
        if fh.offset == 0:
            head = p
    data = b"".join(d for _off, d in sorted(parts))
    return IPv6(bytes(IPv6(src=head.src, dst=head.dst, nh=head[IPv6ExtHdrFragment].nh) / Raw(data)))


def l4_checksum_ok6(p: IPv6) -> bool:
    l4 = p.payload
    got = l4.chksum
    l4.chksum = None
    return IPv6(bytes(p))[l4.__class__].chksum == got


def first_packet6(vip, l4):
    """A flow's first datagram, whole: it makes the connection"""
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / IPv6(src=CLIENT6, dst=vip) / l4 / Raw(b"q")


class Family(NamedTuple):
    l3: type
    client: str
    nat_vip: str
    nat_real: str
    cut: Callable          # a datagram into frames of fragments
    join: Callable         # frames back into the datagram
    csum_ok: Callable      # its L4 checksum right
    sport: int


FAMILIES = {4: Family(IP, CLIENT, NAT_VIP, NAT_REAL, fragments, whole, l4_checksum_ok, 40000),
            6: Family(IPv6, CLIENT6, NAT_VIP6, NAT_REAL6, fragments6, whole6, l4_checksum_ok6, 41000)}


@pytest.mark.parametrize("family", [4, 6])
def test_nat_request_fragments_all_reach_the_real_server_and_its_reply_fragments_the_client(dp, family):
    f = FAMILIES[family]
    if family == 6:             # an IPv6 first fragment follows a connection, makes none
        rc, o = run(dp, "lb_xdp_public", first_packet6(NAT_VIP6, UDP(sport=f.sport, dport=53)))
        assert rc == XDP_REDIRECT and IPv6(o[14:]).dst == NAT_REAL6
    before = dp.counters()
    out = []
    frames = f.cut(CLIENT_MAC, PUB_MAC, (f.client, f.nat_vip), UDP(sport=f.sport, dport=53), 7001)
    assert len(frames) == 3
    for fr in frames:
        rc, o = run(dp, "lb_xdp_public", fr)
        assert rc == XDP_REDIRECT, rc
        assert Ether(o).dst == real_mac(f.nat_real) and f.l3(o[14:]).dst == f.nat_real
        out.append(o)
    got = f.join(out)
    assert got[UDP].dport == 5353 and got[UDP].sport == f.sport and bytes(got[UDP].payload) == PAYLOAD
    assert f.csum_ok(got)
    after = dp.counters()
    assert after["fragment_forwarded"] - before.get("fragment_forwarded", 0) == 2
    assert after.get("fragment", 0) == before.get("fragment", 0)
    assert after.get("tail_call_failed", 0) == before.get("tail_call_failed", 0)
    # the real server's answer, in fragments: from the VIP, to the client
    back = []
    for fr in f.cut(real_mac(f.nat_real), PRIV_MAC, (f.nat_real, f.client), UDP(sport=5353, dport=f.sport), 9001):
        rc, o = run(dp, "lb_xdp_private", fr)
        assert rc == XDP_TX, rc                      # the client is where the request came in
        assert Ether(o).dst == CLIENT_MAC and f.l3(o[14:]).src == f.nat_vip
        back.append(o)
    got = f.join(back)
    assert got[UDP].sport == 53 and got[UDP].dport == f.sport and f.csum_ok(got)
    assert bytes(got[UDP].payload) == PAYLOAD


@pytest.mark.parametrize("family", [4, 6])
def test_a_tcp_segment_in_fragments_goes_whole_to_the_real_servers_port(dp, family):
    # a connection first (SYN, ACK), then a segment sent without DF, in fragments
    f = FAMILIES[family]
    sport = f.sport + 100
    for flags in ("S", "A"):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / f.l3(src=f.client, dst=f.nat_vip) / TCP(sport=sport, dport=80, flags=flags)
        assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT
    out = []
    for fr in f.cut(CLIENT_MAC, PUB_MAC, (f.client, f.nat_vip), TCP(sport=sport, dport=80, flags="PA"), 7002):
        rc, o = run(dp, "lb_xdp_public", fr)
        assert rc == XDP_REDIRECT
        out.append(o)
    got = f.join(out)
    assert got.dst == f.nat_real and got[TCP].dport == 8080 and f.csum_ok(got)
    assert bytes(got[TCP].payload) == PAYLOAD


def test_ipv6_dr_fragments_go_untouched_to_the_real_server(dp):
    assert run(dp, "lb_xdp_public", first_packet6(DR_VIP6, UDP(sport=41200, dport=53)))[0] == XDP_REDIRECT
    for f in fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, DR_VIP6), UDP(sport=41200, dport=53), 8003):
        rc, o = run(dp, "lb_xdp_public", f)
        assert rc == XDP_REDIRECT and Ether(o).dst == real_mac(DR_REAL6)
        assert o[14:] == bytes(f)[14:]


def test_ipv6_tunnel_fragments_go_inside_the_outer_header(dp):
    assert run(dp, "lb_xdp_public", first_packet6(TUN_VIP6, UDP(sport=41300, dport=53)))[0] == XDP_REDIRECT
    for f in fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, TUN_VIP6), UDP(sport=41300, dport=53), 8004, size=1300):
        rc, o = run(dp, "lb_xdp_public", f)
        assert rc == XDP_REDIRECT
        outer = IPv6(o[14:])
        assert outer.nh == 41 and outer.dst == TUN_REAL6 and o[54:] == bytes(f)[14:]


def test_ipv6_tunnel_fragments_too_big_get_a_packet_too_big_for_the_first_and_drop_the_rest(dp):
    """Fragments that fill the 1500-byte path do not fit with the outer header: the first draws
    a Packet Too Big from the VIP (quoting the fragment header), the later ones are dropped
    unanswered; the short last one goes."""
    assert run(dp, "lb_xdp_public", first_packet6(TUN_VIP6, UDP(sport=41400, dport=53)))[0] == XDP_REDIRECT
    before = dp.counters()
    frames = fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, TUN_VIP6), UDP(sport=41400, dport=53), 8005, size=1500)
    assert [len(bytes(f)) - 14 for f in frames][:2] == [1496, 1496]
    results = [run(dp, "lb_xdp_public", f) for f in frames]
    assert [rc for rc, _o in results] == [XDP_TX, XDP_DROP, XDP_REDIRECT]
    answer = Ether(results[0][1])
    assert answer[IPv6].src == TUN_VIP6 and answer[IPv6].dst == CLIENT6
    assert answer[ICMPv6PacketTooBig].mtu == 1500 - 40
    quoted = IPv6(bytes(answer[ICMPv6PacketTooBig].payload))
    assert quoted[IPv6ExtHdrFragment].id == 8005
    after = dp.counters()
    assert after["tunnel_too_big"] - before.get("tunnel_too_big", 0) == 2
    assert after["too_big_unanswered"] - before.get("too_big_unanswered", 0) == 1
    assert after["fragment_forwarded"] - before.get("fragment_forwarded", 0) == 1


def test_ipv6_fragments_of_no_connection_are_passed_and_counted(dp):
    before = dp.counters().get("fragment", 0)
    # a new flow whose first datagram comes in fragments: the kernel's, every fragment
    new = fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, NAT_VIP6), UDP(sport=41500, dport=53), 8006)
    # a connection's later fragments whose first never came
    assert run(dp, "lb_xdp_public", first_packet6(NAT_VIP6, UDP(sport=41600, dport=53)))[0] == XDP_REDIRECT
    _first, *rest = fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, NAT_VIP6), UDP(sport=41600, dport=53), 8007)
    # a reply's fragments that no NAT connection knows
    reply = fragments6(real_mac(NAT_REAL6), PRIV_MAC, (NAT_REAL6, CLIENT6), UDP(sport=5353, dport=41999), 9102)
    for f in new + rest:
        assert run(dp, "lb_xdp_public", f)[0] == XDP_PASS
    for f in reply:
        assert run(dp, "lb_xdp_private", f)[0] == XDP_PASS
    assert dp.counters()["fragment"] - before == len(new) + len(rest) + len(reply)


def test_an_ipv6_first_fragment_moves_its_connections_state_as_a_whole_segment_would(dp):
    """A FIN in a TCP segment sent in fragments: its first fragment takes the connection's way
    (lb_flow.h), so the connection leaves ESTABLISHED as `lb list -c` shows it, as IPVS's state
    machine has it for the reassembled segment (it stayed ESTABLISHED when a first fragment only
    followed the connection)."""
    sport = 41700

    def state():
        rows = [r for r in dp.read_connections() if r.client == (ip(CLIENT6), sport) and r.protocol == "TCP"]
        assert len(rows) == 1, rows
        return rows[0].state

    for flags in ("S", "A"):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IPv6(src=CLIENT6, dst=NAT_VIP6) / TCP(sport=sport, dport=80, flags=flags)
        assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT
    assert state() == "ESTABLISHED"
    for fr in fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, NAT_VIP6), TCP(sport=sport, dport=80, flags="FA"), 8008):
        assert run(dp, "lb_xdp_public", fr)[0] == XDP_REDIRECT
    assert state() == "CLOSE_WAIT"          # IPVS's INPUT table: a client's FIN in ESTABLISHED


def test_the_ipv6_fragments_program_loads_with_the_first_table_that_has_ipv6_services():
    """lb_xdp_frag6_public (~216,000 verified instructions) only for a table with IPv6 services:
    an IPv4 table's data plane has none in its slot (an IPv6 fragment is the kernel's, as no
    service is its); the first apply with an IPv6 service loads it before writing, and that
    service's fragments go where its flow goes"""
    from lb.dataplane import program
    v4 = TableSpec(tuple(s for s in TABLE.services if s.address.version == 4))
    with loaded_dataplane("frag6lazy", table=v4) as d:
        assert "lb_xdp_frag6_public" not in d.program.loaded.progs
        frame = fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, DR_VIP6), UDP(sport=41300, dport=53), 8100)[0]
        assert run(d, "lb_xdp_public", frame)[0] == XDP_PASS
        d.apply(TABLE)
        assert set(program.IPV6_PROGRAMS) <= set(d.program.loaded.progs)
        assert run(d, "lb_xdp_public", first_packet6(DR_VIP6, UDP(sport=41300, dport=53)))[0] == XDP_REDIRECT
        for f in fragments6(CLIENT_MAC, PUB_MAC, (CLIENT6, DR_VIP6), UDP(sport=41300, dport=53), 8101):
            rc, o = run(d, "lb_xdp_public", f)
            assert rc == XDP_REDIRECT and Ether(o).dst == real_mac(DR_REAL6)
