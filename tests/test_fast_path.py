"""The short way of an established connection's commonest packet (bpf/lb_fast.h): lb_xdp_public
forwards a client's TCP ACK of an ESTABLISHED DR or NAT connection, and a UDP flow's datagram once
its entry is in lb_conns4 / lb_conns6, IPv4 and IPv6, itself, and tail-calls lb_xdp_public_full for
everything else.  Two things a user relies on: the short way's bytes and
counts are the full program's, and nothing that needs the full program is taken the short way
(shown by unwiring lb_xdp_public_full: what still forwards took the short way, what is passed
and counted as a failed tail call would have gone on)."""
from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.maps import BpfMap

from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, age, loaded_dataplane,
                          pseudo_sum, real_mac, run)

CLIENT, CLIENT6 = "198.18.0.2", "2001:2::2"
VIP_DR, VIP_NAT, VIP_TUN = "198.18.0.10", "198.18.0.20", "198.18.0.30"
VIP6_DR, VIP6_NAT = "2001:2::10", "2001:2::20"
REAL, REAL6 = "198.18.1.11", "2001:2:0:1::11"
VIPS = (VIP_DR, VIP_NAT, VIP6_DR, VIP6_NAT)
ip = ipaddress.ip_address

TABLE = TableSpec((
    ServiceSpec("tcp", ip(VIP_DR), 80, "rr", (RealSpec(ip(REAL), 80, 1, "dr"),)),
    ServiceSpec("tcp", ip(VIP_NAT), 80, "rr", (RealSpec(ip(REAL), 8080, 1, "nat"),)),
    ServiceSpec("tcp", ip(VIP_TUN), 80, "rr", (RealSpec(ip(REAL), 80, 1, "tunnel"),)),
    ServiceSpec("udp", ip(VIP_DR), 53, "rr", (RealSpec(ip(REAL), 53, 1, "dr"),)),
    ServiceSpec("udp", ip(VIP_NAT), 53, "rr", (RealSpec(ip(REAL), 5353, 1, "nat"),)),
    ServiceSpec("tcp", ip(VIP6_DR), 80, "rr", (RealSpec(ip(REAL6), 80, 1, "dr"),)),
    ServiceSpec("tcp", ip(VIP6_NAT), 80, "rr", (RealSpec(ip(REAL6), 8080, 1, "nat"),)),
    ServiceSpec("udp", ip(VIP6_DR), 53, "rr", (RealSpec(ip(REAL6), 53, 1, "dr"),)),
    ServiceSpec("udp", ip(VIP6_NAT), 53, "rr", (RealSpec(ip(REAL6), 5353, 1, "nat"),)),
))
_sport = itertools.count(41000)


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("fast", table=TABLE) as d:
        yield d


def v6(vip) -> bool:
    return ":" in vip


def client(vip, sport, flags="A", payload=b"", proto="tcp", dport=None, ext=None):
    l4 = TCP(sport=sport, dport=dport or 80, flags=flags, seq=1000, ack=1) if proto == "tcp" \
        else UDP(sport=sport, dport=dport or 53)
    l3 = IPv6(src=CLIENT6, dst=vip) if v6(vip) else IP(src=CLIENT, dst=vip, id=7)
    if ext is not None:
        l3 = l3 / ext
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / l3 / l4 / Raw(payload)


def l3_of(vip):
    """the packet's IP layer, the real server, the client: by the VIP's family"""
    return (IPv6, REAL6, CLIENT6) if v6(vip) else (IP, REAL, CLIENT)


def fresh_sums(out, vip, l4):
    """(IP header checksum or None, L4 checksum) of out as scapy computes them afresh"""
    fresh = out.copy()
    if not v6(vip):
        del fresh[IP].chksum
    del fresh[l4].chksum
    fresh = Ether(bytes(fresh))
    return (None if v6(vip) else fresh[IP].chksum), fresh[l4].chksum


def established(dp, vip) -> int:
    """a new connection to vip:80 through SYN and ACK: its client port"""
    sport = next(_sport)
    for flags in ("S", "A"):
        rc, _ = run(dp, "lb_xdp_public", client(vip, sport, flags))
        assert rc == XDP_REDIRECT
    return sport


def udp_flow(dp, vip) -> int:
    """a UDP flow to vip:53 past its first two datagrams (the second moves its entry from the
    embryonic table to lb_conns4 or lb_conns6): its client port"""
    sport = next(_sport)
    for _ in range(2):
        rc, _ = run(dp, "lb_xdp_public", client(vip, sport, proto="udp"))
        assert rc == XDP_REDIRECT
    return sport


def stats(dp, vip, port=80) -> tuple[int, int]:
    """(inpkts, inbytes) of the service at vip:port and of its real server, summed: `lb list --stats`'s"""
    from lb.dataplane import reader
    from lb.dataplane.maps import PinnedMaps

    with PinnedMaps(dp.instance) as maps:
        [svc] = [s for s in reader.read_services(maps) if str(s.address) == vip and s.port == port]
    [real] = svc.reals
    return svc.stats.inpkts, svc.stats.inbytes, real.stats.inpkts, real.stats.inbytes


@contextlib.contextmanager
def full_program_unwired(dp):
    """lb_public_progs without lb_xdp_public_full: lb_xdp_public's tail call fails, and what it
    would have handed on is passed untouched and counted (tail_call_failed)"""
    progs = BpfMap.open_pinned(os.path.join(dp.pin, "lb_public_progs"))
    progs.delete(L.U32.pack(L.PUBLIC_FULL_SLOT))
    try:
        yield
    finally:
        progs.set(L.U32.pack(L.PUBLIC_FULL_SLOT), L.U32.pack(dp.fns["lb_xdp_public_full"].fd))
        progs.close()


def failed(dp) -> int:
    return dp.counters().get("tail_call_failed", 0)


@pytest.mark.parametrize("vip", VIPS)
def test_short_way_gives_the_full_programs_bytes_and_counts(dp, vip):
    sport = established(dp, vip)
    for pkt in (client(vip, sport), client(vip, sport, "PA", b"GET / HTTP/1.1\r\n\r\n" * 3),
                client(vip, sport, "A", b"\x00" * 1000), client(vip, sport, "UAP", b"x")):
        before = stats(dp, vip)
        short = run(dp, "lb_xdp_public", pkt)
        mid = stats(dp, vip)
        full = run(dp, "lb_xdp_public_full", pkt)
        after = stats(dp, vip)
        assert short == full
        l3, real, _ = l3_of(vip)
        assert short[0] == XDP_REDIRECT and Ether(short[1]).dst == real_mac(real) and Ether(short[1]).src == PRIV_MAC
        length = len(pkt) - 14
        assert [m - b for m, b in zip(mid, before)] == [1, length, 1, length]
        assert [a - m for a, m in zip(after, mid)] == [1, length, 1, length]
    out = Ether(short[1])
    if vip in (VIP_NAT, VIP6_NAT):
        assert (out[l3].dst, out[TCP].dport) == (real, 8080)
        assert ((None if v6(vip) else out[IP].chksum), out[TCP].chksum) == fresh_sums(out, vip, TCP)
    else:
        assert bytes(out[l3]) == bytes(pkt[l3])


def ones_sum(b: bytes) -> int:
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def zero_summing_payload(src: str, sport: int, dst: str, dport: int) -> bytes:
    """two bytes that make the datagram src:sport -> dst:dport sum to 0xffff (its checksum 0,
    which UDP sends as 0xffff, RFC 768); the pseudo header's words sum alike in both families"""
    pseudo = ip(src).packed + ip(dst).packed + struct.pack("!HH", 17, 8 + 2)
    s = ones_sum(pseudo + struct.pack("!HHHH", sport, dport, 8 + 2, 0))
    return struct.pack("!H", 0xFFFF - s)


@pytest.mark.parametrize("vip", VIPS)
def test_udp_short_way_gives_the_full_programs_bytes_and_counts(dp, vip):
    """an IPv6 datagram without a checksum goes the full way, which gives it one: the same bytes"""
    l3, real, src = l3_of(vip)
    sport = udp_flow(dp, vip)
    unsummed = client(vip, sport, proto="udp", payload=b"q" * 30)
    unsummed[UDP].chksum = 0                                   # no checksum
    zero_after_nat = client(vip, sport, proto="udp", payload=zero_summing_payload(src, sport, real, 5353))
    cases = {"summed": client(vip, sport, proto="udp", payload=b"\x12\x34\x01\x00" + b"q" * 40),
             "long": client(vip, sport, proto="udp", payload=b"\x00" * 1200),
             "unsummed": Ether(bytes(unsummed)), "zero after NAT": zero_after_nat}
    for what, pkt in cases.items():
        before = stats(dp, vip, 53)
        short = run(dp, "lb_xdp_public", pkt)
        mid = stats(dp, vip, 53)
        full = run(dp, "lb_xdp_public_full", pkt)
        after = stats(dp, vip, 53)
        assert short == full, what
        out = Ether(short[1])
        assert short[0] == XDP_REDIRECT and out.dst == real_mac(real) and out.src == PRIV_MAC, what
        length = len(pkt) - 14
        assert [m - b for m, b in zip(mid, before)] == [1, length, 1, length], what
        assert [a - m for a, m in zip(after, mid)] == [1, length, 1, length], what
        ip_sum, udp_sum = fresh_sums(out, vip, UDP)
        if not v6(vip):
            assert out[IP].chksum == ip_sum, what
        # IPv4 keeps "no checksum"; IPv6 has none such: the full way gives it one
        want = {"zero after NAT": 0xFFFF, "unsummed": udp_sum if v6(vip) else 0}.get(what, udp_sum)
        if vip in (VIP_DR, VIP6_DR):
            if what == "unsummed" and v6(vip):
                assert out[UDP].chksum == udp_sum
            else:
                assert bytes(out[l3]) == bytes(Ether(bytes(pkt))[l3]), what
            continue
        assert (out[l3].dst, out[UDP].dport) == (real, 5353), what
        assert out[UDP].chksum == want, what


def test_a_udp_flow_whose_timeout_changed_goes_the_full_way(dp):
    """a UDP entry takes the current timeout at every datagram: after a change the full way
    writes it, and the short way takes the flow again from the next datagram"""
    sport = udp_flow(dp, VIP_DR)
    pkt = client(VIP_DR, sport, proto="udp")
    timeouts, key = dp.maps["lb_timeouts"], L.U32.pack(L.UDP_S_NORMAL)
    was = timeouts.get(key)
    timeouts.set(key, L.U32.pack(L.U32.unpack(was)[0] + 60))
    try:
        with full_program_unwired(dp):
            n = failed(dp)
            assert run(dp, "lb_xdp_public", pkt) == (XDP_PASS, bytes(pkt))
            assert failed(dp) == n + 1
        assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT
        with full_program_unwired(dp):
            n = failed(dp)
            assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT
            assert failed(dp) == n
    finally:
        timeouts.set(key, was)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("vip", VIPS)
def test_an_established_packet_needs_no_full_program(dp, vip, proto):
    """a TCP ACK of an ESTABLISHED connection; a UDP datagram of a flow past its second"""
    if proto == "tcp":
        pkt = client(vip, established(dp, vip), "PA", b"data")
    else:
        pkt = client(vip, udp_flow(dp, vip), proto="udp", payload=b"query")
    expected = run(dp, "lb_xdp_public_full", pkt)
    n = failed(dp)
    with full_program_unwired(dp):
        assert run(dp, "lb_xdp_public", pkt) == expected
    assert failed(dp) == n


def test_everything_else_goes_on_to_the_full_program(dp):
    dr, nat, tun = established(dp, VIP_DR), established(dp, VIP_NAT), established(dp, VIP_TUN)
    tagged = Ether(src=CLIENT_MAC, dst=PUB_MAC) / Dot1Q(vlan=5) / client(VIP_DR, dr)[IP]
    options = client(VIP_DR, dr)
    options[IP].options = b"\x01\x01\x01\x00"              # NOPs and an end: a 24-byte header
    partial = client(VIP_DR, dr, "A", b"abcd")
    partial[TCP].chksum = pseudo_sum(ip(CLIENT).packed, ip(VIP_DR).packed, 6, 20 + 4)
    first_frag = client(VIP_DR, dr, "A", b"x" * 64)
    first_frag[IP].flags = "MF"
    udp = udp_flow(dp, VIP_DR)
    udp_partial = client(VIP_DR, udp, proto="udp", payload=b"abcd")
    udp_partial[UDP].chksum = pseudo_sum(ip(CLIENT).packed, ip(VIP_DR).packed, 17, 8 + 4)
    udp_young = next(_sport)
    assert run(dp, "lb_xdp_public", client(VIP_DR, udp_young, proto="udp"))[0] == XDP_REDIRECT
    dr6, udp6 = established(dp, VIP6_DR), udp_flow(dp, VIP6_DR)
    udp6_unsummed = client(VIP6_DR, udp6, proto="udp", payload=b"abcd")
    udp6_unsummed[UDP].chksum = 0
    partial6 = client(VIP6_DR, dr6, "A", b"abcd")
    partial6[TCP].chksum = pseudo_sum(ip(CLIENT6).packed, ip(VIP6_DR).packed, 6, 20 + 4)
    passed = {
        "a new connection's SYN": client(VIP_DR, next(_sport), "S"),
        "a FIN": client(VIP_DR, dr, "FA"),
        "a RST": client(VIP_DR, dr, "RA"),
        "a SYN on the connection": client(VIP_DR, dr, "S"),
        "a VLAN tag": tagged,
        "IP options": Ether(bytes(options)),
        "a partial checksum": partial,
        "a first fragment": Ether(bytes(first_frag)),
        "a UDP flow's first datagram": client(VIP_DR, next(_sport), proto="udp", dport=53),
        "a UDP flow's second datagram (its entry embryonic)": client(VIP_DR, udp_young, proto="udp"),
        "a UDP datagram with a partial checksum": udp_partial,
        "IPv6: an extension header": client(VIP6_DR, dr6, ext=IPv6ExtHdrHopByHop()),
        "IPv6: a fragment": client(VIP6_DR, dr6, ext=IPv6ExtHdrFragment(m=1, id=5)),
        "IPv6: a datagram without a checksum": Ether(bytes(udp6_unsummed)),
        "IPv6: a partial checksum": Ether(bytes(partial6)),
        "IPv6: a FIN": client(VIP6_DR, dr6, "FA"),
        "IPv6's EtherType, version 4 in the header": Ether(bytes(client(VIP6_DR, dr6))[:14] + b"\x46"
                                                          + bytes(client(VIP6_DR, dr6))[15:]),
        "a tunnel's connection": client(VIP_TUN, tun),
        "an ACK of no connection": client(VIP_DR, next(_sport)),
    }
    with full_program_unwired(dp):
        for what, pkt in passed.items():
            n = failed(dp)
            assert run(dp, "lb_xdp_public", pkt) == (XDP_PASS, bytes(pkt)), what
            assert failed(dp) == n + 1, what
        # an entry whose timestamp is older than LB_TOUCH_NS: the full way refreshes it
        age(dp, 1)
        aged = (client(VIP_DR, dr), client(VIP_NAT, nat), client(VIP_DR, udp, proto="udp"), client(VIP6_DR, dr6),
                client(VIP6_DR, udp6, proto="udp"))
        for pkt in aged:
            n = failed(dp)
            assert run(dp, "lb_xdp_public", pkt) == (XDP_PASS, bytes(pkt))
            assert failed(dp) == n + 1
    # and with it wired, the full program forwards them (the aged ones too, refreshing them)
    for pkt in aged:
        assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT
    with full_program_unwired(dp):
        for pkt in aged:
            assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT


def test_a_connection_whose_real_server_record_is_gone_goes_the_full_way(dp):
    """its entry names a real server lb_reals no longer holds: the full way counts it and drops it
    (expire_nodest_conn 0), as before the short way"""
    import struct

    sport = established(dp, VIP_DR)
    conns = dp.maps["lb_conns4"]
    [(key, value)] = [(k, v) for k, v in conns.items(batch=False)
                      if struct.unpack_from("!H", k, 8)[0] == sport]
    conns.set(key, value[:8] + struct.pack("=I", 4000) + value[12:])     # no such real server
    pkt = client(VIP_DR, sport)
    with full_program_unwired(dp):
        n = failed(dp)
        assert run(dp, "lb_xdp_public", pkt) == (XDP_PASS, bytes(pkt))
        assert failed(dp) == n + 1
    before = dp.counters().get("real_server_gone", 0)
    assert run(dp, "lb_xdp_public", pkt) == (XDP_DROP, bytes(pkt))
    assert dp.counters().get("real_server_gone", 0) == before + 1
