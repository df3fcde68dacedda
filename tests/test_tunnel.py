"""Tunnel mode (network = "tunnel", IPVS's ipip forwarding) through the loaded XDP programs
(BPF_PROG_TEST_RUN: exact bytes out), and the real servers' decap program taking the outer
header off again."""
from __future__ import annotations

import dataclasses
import ipaddress
import itertools

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, PadN
from scapy.layers.l2 import Dot1Q, Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import decap
from lb.dataplane.bpfsys import prog_test_run
from lb.dataplane.maps import PinnedMaps
from lb import listing

from packets_util import (CLIENT_MAC, PRIV_ADDR, PRIV_MAC, PRIV_MTU, PUB_MAC, XDP_DROP, XDP_PASS,
                           XDP_REDIRECT, XDP_TX, loaded_dataplane, real_mac, run)

ip = ipaddress.ip_address
VIP, VIP6 = "198.18.0.40", "2001:2::40"
REALS = ["198.18.5.11", "198.18.5.12"]         # reached through a router in real life: any address
REALS6 = ["2001:2:0:5::11", "2001:2:0:5::12"]
# a tunnel packet as it reaches a real server: explicit MACs (an Ether() without them makes
# scapy resolve a destination MAC with ARP / ND on the host's own network)
TO_REAL = {"src": PRIV_MAC, "dst": real_mac(REALS[0])}
_sport = itertools.count(50000)

TABLE = TableSpec((
    ServiceSpec("tcp", ip(VIP), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "tunnel") for a in REALS)),
    ServiceSpec("udp", ip(VIP), 53, "rr", tuple(RealSpec(ip(a), 53, 1, "tunnel") for a in REALS)),
    ServiceSpec("tcp", ip(VIP6), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "tunnel") for a in REALS6)),
))


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("tun", table=TABLE) as d:
        yield d


DIRECTORS = [PRIV_ADDR[4], PRIV_ADDR[6]]       # the tunnels' outer sources: ours toward the reals


@pytest.fixture(scope="module")
def decapper():
    loaded, fn = decap.load([ip(a) for a in REALS + REALS6], DIRECTORS)
    try:
        yield loaded, fn
    finally:
        loaded.close()


def _inner(vip, dport=80, flags="S", proto="tcp", tos=0, df=True):
    sport = next(_sport)
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=7) if proto == "tcp" else UDP(sport=sport, dport=dport)
    if ":" in vip:
        return IPv6(src="2001:2:0:9::2", dst=vip, tc=tos, hlim=60) / l4 / b"payload"
    return IP(src="198.18.0.2", dst=vip, tos=tos, ttl=60, id=99, flags="DF" if df else 0) / l4 / b"payload"


def test_ipv4_in_ipv4(dp):
    inner = _inner(VIP, tos=0x10)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / inner)
    assert rc == XDP_REDIRECT
    p = Ether(out)
    real = p[IP].dst
    assert real in REALS
    expected = Ether(src=PRIV_MAC, dst=real_mac(real)) / \
        IP(src=str(PRIV_ADDR[4]), dst=real, proto=4, ttl=64, id=0, flags="DF", tos=0x10) / inner
    assert out == bytes(expected)          # scapy computed the outer checksum: ours is the same
    # the flow's next packet goes the same way; without DF the outer header has none either
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / _inner_ack(inner))
    assert rc == XDP_REDIRECT and Ether(out)[IP].dst == real
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / _inner(VIP, 53, proto="udp", df=False))
    assert rc == XDP_REDIRECT and Ether(out)[IP].flags == 0 and Ether(out)[IP].proto == 4


def _inner_ack(syn):
    ack = syn.copy()
    ack[TCP].flags = "A"
    del ack[TCP].chksum
    return ack


def test_vlan_tag_is_not_sent_on(dp):
    inner = _inner(VIP)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / Dot1Q(vlan=7) / inner)
    assert rc == XDP_REDIRECT
    p = Ether(out)
    assert Dot1Q not in p and p.type == 0x0800 and p[IP].proto == 4
    assert bytes(p[IP].payload) == bytes(inner)


def test_ipv6_in_ipv6(dp):
    inner = _inner(VIP6, tos=0x20)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / inner)
    assert rc == XDP_REDIRECT
    p = Ether(out)
    real = p[IPv6].dst
    assert real in REALS6
    expected = Ether(src=PRIV_MAC, dst=real_mac(real)) / \
        IPv6(src=str(PRIV_ADDR[6]), dst=real, nh=41, hlim=64, tc=0x20, fl=0) / inner
    assert out == bytes(expected)


def test_decap_gives_back_the_clients_packet(dp, decapper):
    _b, fn = decapper
    for vip in (VIP, VIP6):
        inner = _inner(vip)
        rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / inner)
        assert rc == XDP_REDIRECT
        rc, back, _ = prog_test_run(fn.fd, out)
        assert rc == XDP_PASS
        assert back == bytes(Ether(src=PRIV_MAC, dst=Ether(out).dst) / inner)


def test_decap_leaves_other_packets_alone(decapper):
    b, fn = decapper
    not_ours = Ether(**TO_REAL) / IP(src="198.18.1.1", dst="198.18.5.99", proto=4) / _inner(VIP)
    plain = Ether(**TO_REAL) / _inner(REALS[0])
    v6_not_ours = Ether(**TO_REAL) / IPv6(src="2001:2:0:1::1", dst="2001:2:0:5::99", nh=41) / _inner(VIP6)
    frag = Ether(**TO_REAL) / IP(src="198.18.1.1", dst=REALS[0], proto=4, flags="MF") / _inner(VIP)
    before = decap.counters(b)["not_for_us"]
    for pkt in (not_ours, plain, v6_not_ours, frag, bytes(not_ours)[:20]):
        rc, out, _ = prog_test_run(fn.fd, bytes(pkt))
        assert rc == XDP_PASS and out == bytes(pkt)
    assert decap.counters(b)["not_for_us"] == before + 2    # the two not addressed to us


def test_decap_drops_tunnels_not_from_a_director(decapper):
    """Anyone who reaches a real server could otherwise hand its stack any packet (any inner
    source, to the VIP) past the filters written for a tunnel device: only the directors'
    addresses (--from) are tunnel sources; the rest is dropped and counted, both families."""
    b, fn = decapper
    forged = [Ether(**TO_REAL) / IP(src="198.18.1.66", dst=REALS[0], proto=4) / _inner(VIP),
              Ether(**TO_REAL) / IPv6(src="2001:2:0:1::66", dst=REALS6[0], nh=41) / _inner(VIP6),
              # a director's IPv4 address in an IPv6 tunnel's source is still not a director's
              Ether(**TO_REAL) / IPv6(src="::ffff:198.18.1.1", dst=REALS6[0], nh=41) / _inner(VIP6)]
    before = decap.counters(b)
    for pkt in forged:
        rc, _out, _ = prog_test_run(fn.fd, bytes(pkt))
        assert rc == XDP_DROP
    after = decap.counters(b)
    assert after["not_from_a_director"] == before["not_from_a_director"] + 3
    assert after["decapsulated"] == before["decapsulated"]
    # from a director: taken off; an IPIP header around an IPv6 packet is malformed: dropped
    for src, dst, inner in ((str(PRIV_ADDR[4]), REALS[0], _inner(VIP)), (str(PRIV_ADDR[6]), REALS6[0], _inner(VIP6))):
        outer = IPv6(src=src, dst=dst, nh=41) if ":" in dst else IP(src=src, dst=dst, proto=4)
        rc, out, _ = prog_test_run(fn.fd, bytes(Ether(**TO_REAL) / outer / inner))
        assert rc == XDP_PASS and out[14:] == bytes(inner)
    bad = Ether(**TO_REAL) / IP(src=str(PRIV_ADDR[4]), dst=REALS[0], proto=4) / _inner(VIP6)
    assert prog_test_run(fn.fd, bytes(bad))[0] == XDP_DROP
    assert decap.counters(b)["bad_inner_header"] == before["bad_inner_header"] + 1
    assert decap.counters(b)["decapsulated"] == before["decapsulated"] + 2


def test_decap_attach_needs_the_directors():
    with pytest.raises(decap.DecapError, match="--from"):
        decap.attach("lo", [ip(REALS[0])], sources=[])


def test_listing_says_tunnel(dp):
    with PinnedMaps(dp.instance) as maps:
        text = listing.format_services(reader.read_services(maps))
    assert "  -> %-28s %-7s %-6d " % (f"{REALS[0]}:80", "Tunnel", 1) in text
    assert "  -> %-28s %-7s %-6d " % (f"[{REALS6[0]}]:80", "Tunnel", 1) in text


def _counter(dp, name):
    return dp.counters()[name]


def _established(dp, vip, dport=80, **kw):
    """A flow's SYN (forwarded), then the same flow's data packet of a given size (kw to _inner)."""
    syn = _inner(vip, dport, **kw)
    assert run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / syn)[0] == XDP_REDIRECT
    return syn


def _big(syn, payload_len):
    big = syn.copy()
    big[TCP].flags = "A"
    big[TCP].remove_payload()
    big = big / (b"z" * payload_len)
    if IP in big:
        del big[IP].len, big[IP].chksum
    else:
        del big[IPv6].plen
    del big[TCP].chksum
    return big.__class__(bytes(big))


def test_too_big_once_encapsulated_ipv4_gets_fragmentation_needed(dp):
    syn = _established(dp, VIP)
    fits = _big(syn, PRIV_MTU - 20 - 40)                 # 1480 bytes: 1500 with the outer header
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / fits)
    assert rc == XDP_REDIRECT and len(Ether(out)[IP]) == PRIV_MTU
    before = _counter(dp, "tunnel_too_big")
    big = _big(syn, PRIV_MTU - 20 - 40 + 1)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / big)
    assert rc == XDP_TX
    expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / IP(src=VIP, dst=big[IP].src, ttl=64, id=0, flags=0) / \
        ICMP(type=3, code=4, nexthopmtu=PRIV_MTU - 20) / bytes(big)[:28]
    assert out == bytes(expected)          # scapy's checksums: the IP header's and the ICMP one
    assert _counter(dp, "tunnel_too_big") == before + 1
    # without DF the director cannot fragment in XDP: dropped, counted
    syn = _established(dp, VIP, df=False)
    big = _big(syn, PRIV_MTU)
    assert run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / big)[0] == XDP_DROP
    assert _counter(dp, "tunnel_too_big") == before + 2


def test_too_big_once_encapsulated_ipv6_gets_packet_too_big(dp):
    syn = _established(dp, VIP6)
    fits = _big(syn, PRIV_MTU - 40 - 40 - 20)            # 1420 + 40 inner + 40 outer = 1500
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / fits)
    assert rc == XDP_REDIRECT and len(Ether(out)[IPv6]) == PRIV_MTU
    big = _big(syn, PRIV_MTU - 40 - 40 - 20 + 1)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / big)
    assert rc == XDP_TX
    expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / IPv6(src=VIP6, dst=big[IPv6].src, hlim=64) / \
        ICMPv6PacketTooBig(mtu=PRIV_MTU - 40) / bytes(big)[:48]
    assert out == bytes(expected)


def _reset_icmp_bucket(dp):
    """a full token bucket (lb_icmp_bucket is the data path's own: tests reach it by its pin)"""
    import os
    from lb.dataplane.maps import BpfMap
    m = BpfMap.open_pinned(os.path.join(dp.pin, "lb_icmp_bucket"))
    try:
        m.set(bytes(4), bytes(8))
    finally:
        m.close()


def test_too_big_answers_are_rate_limited(dp):
    """One token bucket for the director (the kernel's icmp_msgs_per_sec / icmp_msgs_burst):
    spoofed large packets get at most the burst of answers, then one per interval; the rest are
    dropped, counted."""
    from lb.config.model import Defense

    dp.apply(dataclasses.replace(TABLE, defense=Defense(icmp_msgs_per_sec=1, icmp_msgs_burst=3)))
    try:
        _reset_icmp_bucket(dp)
        before = dp.counters()
        rcs = []
        for _ in range(10):
            syn = _established(dp, VIP)
            rcs.append(run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / _big(syn, PRIV_MTU))[0])
        assert rcs == [XDP_TX] * 3 + [XDP_DROP] * 7
        after = dp.counters()
        assert after["icmp_rate_limited"] == before["icmp_rate_limited"] + 7
        assert after["tunnel_too_big"] == before["tunnel_too_big"] + 10
        # icmp_msgs_per_sec = 0: no answers at all
        dp.apply(dataclasses.replace(TABLE, defense=Defense(icmp_msgs_per_sec=0)))
        _reset_icmp_bucket(dp)
        syn = _established(dp, VIP6)
        assert run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / _big(syn, PRIV_MTU))[0] == XDP_DROP
    finally:
        dp.apply(TABLE)
        _reset_icmp_bucket(dp)


def test_too_big_answer_is_small_and_quotes_the_headers(dp):
    """The answer never exceeds 576 bytes (IPv4) or 1280 (IPv6), whatever came in, and quotes the
    packet's IP header (options, extension headers) and 8 bytes after it; extension headers too
    long to quote get no answer (counted)."""
    _reset_icmp_bucket(dp)
    syn = _established(dp, VIP)
    opt = IP(src=syn[IP].src, dst=VIP, flags="DF", options=[IPOption_NOP()] * 40, ttl=60) / \
        TCP(sport=syn[TCP].sport, dport=80, flags="A") / (b"z" * 1440)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / opt)
    assert rc == XDP_TX
    ans = Ether(out)[IP]
    assert len(bytes(ans)) <= 576 and ans[ICMP].type == 3 and ans[ICMP].code == 4
    assert bytes(ans[ICMP].payload) == bytes(opt)[:60 + 8]
    syn6 = _established(dp, VIP6)
    hbh = IPv6(src=syn6[IPv6].src, dst=VIP6) / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * 4)]) / \
        TCP(sport=syn6[TCP].sport, dport=80, flags="A") / (b"z" * 1440)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / hbh)
    assert rc == XDP_TX
    ans = Ether(out)[IPv6]
    assert len(bytes(ans)) <= 1280 and bytes(ans[ICMPv6PacketTooBig].payload) == bytes(hbh)[:40 + 8 + 8]
    long_ext = IPv6(src=syn6[IPv6].src, dst=VIP6) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 94)]) / \
        TCP(sport=syn6[TCP].sport, dport=80, flags="A") / (b"z" * 1400)
    before = dp.counters()["too_big_unanswered"]
    assert run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / long_ext)[0] == XDP_DROP
    assert dp.counters()["too_big_unanswered"] == before + 1


def test_too_big_answer_goes_back_on_the_clients_vlan(dp):
    """A client behind an 802.1Q tag gets its "fragmentation needed" / Packet Too Big with the
    tag it came with, as the kernel's icmp_send answers from the VLAN device: untagged, the
    answer lands on another L2 segment and the client's path MTU discovery never hears of it."""
    _reset_icmp_bucket(dp)
    for vip, n in ((VIP, PRIV_MTU - 20 - 40 + 1), (VIP6, PRIV_MTU - 40 - 40 - 20 + 1)):
        big = _big(_established(dp, vip), n)
        rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / Dot1Q(vlan=42, prio=3) / big)
        assert rc == XDP_TX
        if IP in big:
            ans = IP(src=VIP, dst=big[IP].src, ttl=64, id=0, flags=0) / \
                ICMP(type=3, code=4, nexthopmtu=PRIV_MTU - 20) / bytes(big)[:28]
        else:
            ans = IPv6(src=VIP6, dst=big[IPv6].src, hlim=64) / ICMPv6PacketTooBig(mtu=PRIV_MTU - 40) / bytes(big)[:48]
        assert out == bytes(Ether(src=PUB_MAC, dst=CLIENT_MAC) / Dot1Q(vlan=42, prio=3) / ans)


ROUTER = {4: "198.18.5.1", 6: "2001:2:0:5::1"}     # a router between the director and the reals


def _tunneled(dp, vip, *args, **kw):
    """A new flow's first packet through lb_xdp_public: (the client's packet, the outer packet
    lb sent the real server)."""
    syn = _inner(vip, *args, **kw)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / syn)
    assert rc == XDP_REDIRECT
    return syn, bytes(Ether(out).payload)


def _error_about(outer: bytes, v6: bool, dst=None, **icmp):
    """A router's ICMP error about the tunnel packet `outer`, to the director's tunnel source (or
    dst), quoting as much of it as Linux does (576 bytes in all, IPv6 1280)."""
    if v6:
        ip6 = IPv6(outer)
        err = IPv6(src=ROUTER[6], dst=dst or ip6.src, hlim=250) / icmp.pop("layer") / outer[:1280 - 48]
    else:
        ip4 = IP(outer)
        err = IP(src=ROUTER[4], dst=dst or ip4.src, ttl=250) / ICMP(**icmp) / outer[:576 - 28]
    return Ether(src=real_mac(REALS[0]), dst=PRIV_MAC) / err


def _relayed(dp, prog, err):
    before = dp.counters()["tunnel_error_relayed"]
    rc, out = run(dp, prog, err)
    assert rc == XDP_TX, rc                 # back where the client came in (one interface here)
    assert dp.counters()["tunnel_error_relayed"] == before + 1
    return out


@pytest.mark.parametrize("prog", ["lb_xdp_private", "lb_xdp_public"])   # two-armed, one-armed
def test_fragmentation_needed_about_a_tunnel_packet_goes_on_to_the_client(dp, prog):
    """A router on the way to a tunnel real server (or the real server) says the outer packet
    did not fit: IPVS tells the client, from the VIP, with the MTU less the outer header; left to
    the director's kernel the client never learns it, and its large packets vanish in the tunnel
    for the connection's life."""
    _reset_icmp_bucket(dp)
    for mtu, told in ((1400, 1380), (9000, PRIV_MTU - 20), (0, PRIV_MTU - 20)):   # none, or above the link's
        syn, outer = _tunneled(dp, VIP)
        out = _relayed(dp, prog, _error_about(outer, False, type=3, code=4, nexthopmtu=mtu))
        expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / IP(src=VIP, dst=syn[IP].src, ttl=64, id=0, flags=0) / \
            ICMP(type=3, code=4, nexthopmtu=told) / bytes(syn)[:28]
        assert out == bytes(expected)          # scapy's checksums
    # any other error IPVS relays goes on too, as it came: a time exceeded
    syn, outer = _tunneled(dp, VIP, 53, proto="udp")
    out = _relayed(dp, prog, _error_about(outer, False, type=11, code=0))
    assert out == bytes(Ether(src=PUB_MAC, dst=CLIENT_MAC) / IP(src=VIP, dst=syn[IP].src, ttl=64, id=0, flags=0) /
                        ICMP(type=11, code=0) / bytes(syn)[:28])


@pytest.mark.parametrize("prog", ["lb_xdp_private", "lb_xdp_public"])
def test_packet_too_big_about_a_tunnel_packet_goes_on_to_the_client(dp, prog):
    _reset_icmp_bucket(dp)
    for mtu, told in ((1400, 1360), (1300, 1280), (0, PRIV_MTU - 40)):   # never below IPv6's 1280
        syn, outer = _tunneled(dp, VIP6)
        out = _relayed(dp, prog, _error_about(outer, True, layer=ICMPv6PacketTooBig(mtu=mtu)))
        expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / IPv6(src=VIP6, dst=syn[IPv6].src, hlim=64) / \
            ICMPv6PacketTooBig(mtu=told) / bytes(syn)[:48]
        assert out == bytes(expected)


def test_tunnel_errors_lb_does_not_relay_pass_untouched(dp):
    """What is not an error about one of this connection's tunnel packets stays the director
    kernel's, byte for byte."""
    from scapy.layers.inet6 import ICMPv6ParamProblem
    _reset_icmp_bucket(dp)

    def passes(err):
        for prog in ("lb_xdp_private", "lb_xdp_public"):
            rc, out = run(dp, prog, err)
            assert (rc, out) == (XDP_PASS, bytes(err)), prog

    syn, outer = _tunneled(dp, VIP, 53, proto="udp", df=False)
    passes(_error_about(outer, False, type=3, code=4, nexthopmtu=1400))      # no DF: no PMTU discovery
    syn, outer = _tunneled(dp, VIP)
    passes(_error_about(outer, False, dst="198.18.1.99", type=3, code=4, nexthopmtu=1400))   # not to our source
    other = IP(outer)
    other.dst = REALS[1] if other.dst == REALS[0] else REALS[0]              # not the connection's real server
    del other.chksum
    passes(_error_about(bytes(other), False, type=3, code=4, nexthopmtu=1400))
    gone = IP(outer)
    gone[TCP].sport += 1                                                      # no such connection
    passes(_error_about(bytes(gone), False, type=3, code=4, nexthopmtu=1400))
    passes(_error_about(outer, False, type=12, code=0))                      # parameter problem (IPVS too)
    syn, outer = _tunneled(dp, VIP6)
    passes(_error_about(outer, True, layer=ICMPv6ParamProblem(ptr=6)))        # its pointer is into our header


def test_tunnel_error_relays_share_the_answers_rate_limit(dp):
    from lb.config.model import Defense

    dp.apply(dataclasses.replace(TABLE, defense=Defense(icmp_msgs_per_sec=1, icmp_msgs_burst=2)))
    try:
        _reset_icmp_bucket(dp)
        before = dp.counters()
        rcs = []
        for _ in range(4):
            syn, outer = _tunneled(dp, VIP)
            rcs.append(run(dp, "lb_xdp_private", _error_about(outer, False, type=3, code=4, nexthopmtu=1400))[0])
        assert rcs == [XDP_TX] * 2 + [XDP_DROP] * 2
        after = dp.counters()
        assert after["icmp_rate_limited"] == before["icmp_rate_limited"] + 2
        assert after["tunnel_error_relayed"] == before["tunnel_error_relayed"] + 2
    finally:
        dp.apply(TABLE)
        _reset_icmp_bucket(dp)


def test_no_answer_for_an_ip_length_past_the_frame(dp):
    """A short frame whose IP header claims 64 KiB is no packet too big for the tunnel: the
    kernel (ip_rcv, ipv6_rcv) drops it before IPVS, which never answers it.  Dropped unanswered
    (counted), not an XDP_TX answer to a frame that claims what it does not carry."""
    _reset_icmp_bucket(dp)
    for vip in (VIP, VIP6):
        ack = _big(_established(dp, vip), 10)
        if IP in ack:
            ack[IP].len = 65535
            del ack[IP].chksum
        else:
            ack[IPv6].plen = 65535
        before = dp.counters()
        rc, _out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / ack)
        assert rc == XDP_DROP
        after = dp.counters()
        assert after["too_big_unanswered"] == before["too_big_unanswered"] + 1
        assert after["icmp_rate_limited"] == before["icmp_rate_limited"]


def test_decap_carries_congestion_experienced_to_the_inner_header(decapper):
    """ECN across the tunnel as the kernel's ipip / ip6_tunnel decapsulate it (RFC 6040 4.2): a
    router's Congestion Experienced on the outer header goes onto an ECN-capable inner packet
    (IPv4: its header checksum follows), and a not-ECN-capable one is dropped, counted.  Lost, the
    real server never slows down for the congestion between director and real server."""
    b, fn = decapper
    for inner_ecn in (1, 2, 3):
        for src, dst, vip in ((str(PRIV_ADDR[4]), REALS[0], VIP), (str(PRIV_ADDR[6]), REALS6[0], VIP6)):
            inner = _inner(vip, tos=inner_ecn)
            outer = IPv6(src=src, dst=dst, nh=41, tc=3) if ":" in dst else IP(src=src, dst=dst, proto=4, tos=3)
            rc, out, _ = prog_test_run(fn.fd, bytes(Ether(**TO_REAL) / outer / inner))
            ce = inner.copy()
            if IP in ce:
                ce[IP].tos |= 3
                del ce[IP].chksum
            else:
                ce[IPv6].tc |= 3
            assert rc == XDP_PASS and out[14:] == bytes(ce)
    before = decap.counters(b)
    for src, dst, vip in ((str(PRIV_ADDR[4]), REALS[0], VIP), (str(PRIV_ADDR[6]), REALS6[0], VIP6)):
        outer = IPv6(src=src, dst=dst, nh=41, tc=3) if ":" in dst else IP(src=src, dst=dst, proto=4, tos=3)
        assert prog_test_run(fn.fd, bytes(Ether(**TO_REAL) / outer / _inner(vip, tos=0)))[0] == XDP_DROP
    assert decap.counters(b)["ce_not_ect"] == before["ce_not_ect"] + 2


def test_attached_decap_says_its_directors():
    """`lb realserver check|setup --from` compare the directors with those the lb decap on DEV
    takes tunnels from, read back from the attached program (a veth in the suite's namespace)."""
    from pyroute2 import IPRoute

    dev = "lbdecap0"
    with IPRoute() as ipr:
        ipr.link("add", ifname=dev, kind="veth", peer="lbdecap1")
    try:
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], state="up")
        assert decap.attached_sources(dev) is None and decap.attached_vips(dev) is None
        decap.attach(dev, [ip(REALS[0])], "generic", sources=DIRECTORS)
        assert decap.attached_sources(dev) == set(DIRECTORS)
        assert decap.attached_vips(dev) == {decap.ANY}                               # no --vip
        decap.attach(dev, [ip(REALS[0])], "generic", sources=[ip("198.18.1.3")], vips=[ip(VIP), ip(VIP6)])
        assert decap.attached_sources(dev) == {ip("198.18.1.3")}                     # replaced
        assert decap.attached_vips(dev) == {ip(VIP), ip(VIP6)}
        assert decap.detach(dev) and decap.attached_sources(dev) is None
    finally:
        with IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=dev)[0])


@pytest.fixture(scope="module")
def vip_decapper():
    """lb decap as `lb realserver setup` attaches it: for the VIPs alone (--vip)"""
    loaded, fn = decap.load([ip(a) for a in REALS + REALS6], DIRECTORS, [ip(VIP), ip(VIP6)])
    try:
        yield loaded, fn
    finally:
        loaded.close()


def test_decap_lets_in_only_packets_to_a_vip(vip_decapper, decapper):
    """A director tunnels only packets to a VIP.  One from a forged director source (anyone on
    the path can write the outer source) to any other address -- the real server's own, a host
    behind it (with ip_forward on: a relay past the network's filters) -- is dropped, counted,
    with --vip; without it (the decapper fixture, as before --vip) any address is let in."""
    b, fn = vip_decapper
    outer4 = IP(src=str(PRIV_ADDR[4]), dst=REALS[0], proto=4)
    outer6 = IPv6(src=str(PRIV_ADDR[6]), dst=REALS6[0], nh=41)
    before = decap.counters(b)
    for outer, inner in ((outer4, _inner(VIP)), (outer6, _inner(VIP6))):
        rc, out, _ = prog_test_run(fn.fd, bytes(Ether(**TO_REAL) / outer / inner))
        assert rc == XDP_PASS and out == bytes(Ether(**TO_REAL) / inner)
    elsewhere = [(outer4, _inner(REALS[0])), (outer4, _inner("198.18.7.7")), (outer4, _inner("127.0.0.1")),
                 (outer6, _inner(REALS6[0])), (outer6, _inner("2001:2:0:7::7")),
                 (outer4, _inner("198.18.0.41", dport=53, proto="udp"))]       # a neighbour of the VIP
    for outer, inner in elsewhere:
        pkt = bytes(Ether(**TO_REAL) / outer / inner)
        rc, out, _ = prog_test_run(fn.fd, pkt)
        assert (rc, out) == (XDP_DROP, pkt), inner.dst
    after = decap.counters(b)
    assert after["not_to_a_vip"] == before["not_to_a_vip"] + len(elsewhere)
    assert after["decapsulated"] == before["decapsulated"] + 2
    # an inner header too short to say where it goes: dropped as a bad inner header
    short = bytes(Ether(**TO_REAL) / outer4) + bytes(_inner(VIP))[:19]
    assert prog_test_run(fn.fd, short)[0] == XDP_DROP
    assert decap.counters(b)["bad_inner_header"] == after["bad_inner_header"] + 1
    # lb decap without --vip: any inner destination, as before
    any_b, any_fn = decapper
    inner = _inner("198.18.7.7")
    rc, out, _ = prog_test_run(any_fn.fd, bytes(Ether(**TO_REAL) / outer4 / inner))
    assert rc == XDP_PASS and out == bytes(Ether(**TO_REAL) / inner)
