"""ICMP and ICMPv6 errors about tracked connections (bpf/lb_icmp.h), through the loaded XDP
programs with BPF_PROG_TEST_RUN: exact bytes out, compared with packets scapy builds, and every
checksum recomputed by scapy.

A router's "fragmentation needed" (ICMP 3/4) or Packet Too Big (ICMPv6 2) about a real server's
reply comes back to the VIP; the director relays it to that real server (DR: as is; NAT: outer
and quoted addresses rewritten, as IPVS's ip_vs_in_icmp), and a NAT real server's errors about
the director's packets go to the client from the VIP (ip_vs_out_icmp).  Everything else ICMP
passes to the director's kernel untouched.  Nothing leaves the kernel's test harness."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6PacketTooBig,
                                ICMPv6TimeExceeded, IPerror6, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.maps import PinnedMaps

from packets_util import (CLIENT_MAC, PRIV_ADDR, PRIV_MAC, PUB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
                           loaded_dataplane, real_mac, run)

ip = ipaddress.ip_address
ROUTER_MAC = CLIENT_MAC           # the client's side: its first hop delivers the router's error

V4 = dict(client="198.18.0.2", router="198.18.0.254", dr="198.18.0.10", nat="198.18.0.20", tun="198.18.0.40",
          reals=["198.18.1.11", "198.18.1.12", "198.18.1.13"], priv_router="198.18.1.254")
V6 = dict(client="2001:2:0:9::2", router="2001:2:0:9::fe", dr="2001:2::10", nat="2001:2::20", tun="2001:2::40",
          reals=["2001:2:0:1::11", "2001:2:0:1::12", "2001:2:0:1::13"], priv_router="2001:2:0:1::fe")
FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]
_sport = itertools.count(33000)


def _svcs(f):
    def svc(proto, vip, port, fwd, rport):
        return ServiceSpec(proto, ip(vip), port, "rr", tuple(RealSpec(ip(a), rport, 1, fwd) for a in f["reals"]))
    return (svc("tcp", f["dr"], 80, "dr", 80), svc("tcp", f["nat"], 80, "nat", 8080),
            svc("udp", f["nat"], 53, "nat", 5353), svc("tcp", f["tun"], 80, "tunnel", 80))


TABLE = TableSpec(_svcs(V4) + _svcs(V6))


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("icmp", table=TABLE) as d:
        yield d


def _ip(f, ttl=64, **kw):
    return IPv6(hlim=ttl, **kw) if ":" in f["client"] else IP(id=1, ttl=ttl, **kw)


def _quoted_ip(f, src, dst):
    """The header of the packet an error quotes: an IPv4 one claims more bytes than are quoted."""
    return IPerror6(src=src, dst=dst, hlim=63, plen=1460) if ":" in f["client"] else \
        IPerror(src=src, dst=dst, id=77, ttl=63, flags="DF", len=1500)


def _frag_needed(f, mtu=1400):
    """ICMP "fragmentation needed" or ICMPv6 Packet Too Big"""
    return ICMPv6PacketTooBig(mtu=mtu) if ":" in f["client"] else ICMP(type=3, code=4, nexthopmtu=mtu)


def _tcp_q(sport, dport, chksum=None):
    return TCPerror(sport=sport, dport=dport, flags="A", seq=5000, ack=1001, window=502, chksum=chksum)


def _connect(dp, f, vip, dport=80, proto="tcp"):
    """A new connection from the client: its source port and the real server it went to."""
    sport = next(_sport)
    l4 = TCP(sport=sport, dport=dport, flags="S", seq=1000) if proto == "tcp" else UDP(sport=sport, dport=dport)
    rc, out = run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / _ip(f, src=f["client"], dst=vip) / l4)
    assert rc == XDP_REDIRECT
    return sport, {real_mac(a): a for a in f["reals"]}[Ether(out).dst]


def _error_to_vip(f, vip, quoted, icmp=None, src=None):
    """An error a router on the client's side sends back to the VIP about `quoted`."""
    return Ether(src=ROUTER_MAC, dst=PUB_MAC) / _ip(f, src=src or f["router"], dst=vip, ttl=250) / \
        (icmp if icmp is not None else _frag_needed(f)) / quoted


def _checksums_ok(raw: bytes) -> None:
    """Every checksum the director may touch is what scapy computes afresh: the outer IPv4 header,
    the ICMP/ICMPv6 message (with its pseudo header), the quoted IPv4 header."""
    p = Ether(raw)
    fresh = p.copy()
    if IP in fresh:
        del fresh[IP].chksum
        del fresh[ICMP].chksum
        del fresh[IPerror].chksum
    else:
        del fresh[IPv6].payload.cksum
    fresh = Ether(bytes(fresh))
    if IP in p:
        assert (p[IP].chksum, p[ICMP].chksum, p[IPerror].chksum) == \
            (fresh[IP].chksum, fresh[ICMP].chksum, fresh[IPerror].chksum)
    else:
        assert p[IPv6].payload.cksum == fresh[IPv6].payload.cksum


def _stats(dp, vip, port, real):
    with PinnedMaps(dp.instance) as maps:
        svc = next(s for s in reader.read_services(maps) if str(s.address) == vip and s.port == port)
    return svc.stats, next(r.stats for r in svc.reals if str(r.address) == real)


# ---- public side: to the real server

@pytest.mark.parametrize("f", FAMILIES)
def test_dr_frag_needed_goes_to_the_connections_real_server(dp, f):
    """DR: the router's error about a real server's reply reaches that real server unchanged but
    for the MACs (its kernel lowers the path MTU to the client), counted as IPVS counts it."""
    sport, rs = _connect(dp, f, f["dr"])
    for _ in range(2):                      # other connections move rr on: the error follows its flow
        _connect(dp, f, f["dr"])
    err = _error_to_vip(f, f["dr"], _quoted_ip(f, f["dr"], f["client"]) / _tcp_q(80, sport) / (b"d" * 32))
    svc_before, real_before = _stats(dp, f["dr"], 80, rs)
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_REDIRECT
    expected = err.copy()
    expected[Ether].src, expected[Ether].dst = PRIV_MAC, real_mac(rs)
    assert out == bytes(expected)
    # IPVS ip_vs_in_stats: one packet in, its IP length, no new connection
    size = len(bytes(err)) - 14
    svc_after, real_after = _stats(dp, f["dr"], 80, rs)
    for before, after in ((svc_before, svc_after), (real_before, real_after)):
        assert (after.inpkts - before.inpkts, after.inbytes - before.inbytes, after.conns - before.conns) == \
            (1, size, 0)


@pytest.mark.parametrize("f", FAMILIES)
def test_tunnel_frag_needed_goes_to_the_real_server_in_the_tunnel(dp, f):
    """Tunnel: the error travels as the connection's packets do, inside an outer IPv4 (IPIP) or
    IPv6 (IPv6-in-IPv6) header from our address to the real server."""
    sport, rs = _connect(dp, f, f["tun"])
    err = _error_to_vip(f, f["tun"], _quoted_ip(f, f["tun"], f["client"]) / _tcp_q(80, sport) / (b"t" * 20))
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_REDIRECT
    inner = Ether(bytes(err)).payload
    # (IPv4: the outer id is the inner's without DF, which may be fragmented on the way; 0 with it)
    outer = IPv6(src=str(PRIV_ADDR[6]), dst=rs, nh=41, hlim=64) if ":" in f["client"] else \
        IP(src=str(PRIV_ADDR[4]), dst=rs, proto=4, ttl=64, id=0 if int(inner.flags) & 2 else inner.id)
    assert out == bytes(Ether(src=PRIV_MAC, dst=real_mac(rs)) / outer / inner)


@pytest.mark.parametrize("f", FAMILIES)
def test_error_too_big_for_the_tunnel_is_dropped_never_answered(dp, f):
    """An ICMP error the tunnel cannot carry (too big once encapsulated) is dropped and counted:
    never an ICMP error about an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4(e)), whatever its
    source claims (the guard used to read the ICMP header as ports)."""
    sport, _rs = _connect(dp, f, f["tun"])
    err = _error_to_vip(f, f["tun"], _quoted_ip(f, f["tun"], f["client"]) / _tcp_q(80, sport) / (b"t" * 1500))
    before = dp.counters()
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_DROP
    after = dp.counters()
    assert after["too_big_unanswered"] == before["too_big_unanswered"] + 1
    assert after["icmp_rate_limited"] == before["icmp_rate_limited"]


@pytest.mark.parametrize("f", FAMILIES)
def test_nat_frag_needed_is_rewritten_for_the_real_server(dp, f):
    """NAT: outer destination VIP -> real server, quoted source VIP:80 -> real:8080, checksums
    right (ICMPv6's over its pseudo header); the quoted TCP checksum stays as it was (IPVS)."""
    sport, rs = _connect(dp, f, f["nat"])
    quoted_tcp = _tcp_q(80, sport)
    err = _error_to_vip(f, f["nat"], _quoted_ip(f, f["nat"], f["client"]) / quoted_tcp / (b"n" * 24))
    tcp_sum = Ether(bytes(err))[TCPerror].chksum
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_REDIRECT
    expected = Ether(src=PRIV_MAC, dst=real_mac(rs)) / _ip(f, src=f["router"], dst=rs, ttl=250) / _frag_needed(f) / \
        _quoted_ip(f, rs, f["client"]) / _tcp_q(8080, sport, chksum=tcp_sum) / (b"n" * 24)
    assert out == bytes(expected)
    _checksums_ok(out)


@pytest.mark.parametrize("f", FAMILIES)
def test_nat_udp_port_unreachable_is_rewritten(dp, f):
    """A UDP flow's error (here: time exceeded), the quoted UDP header 8 bytes long and no more."""
    sport, rs = _connect(dp, f, f["nat"], 53, proto="udp")
    icmp = ICMPv6TimeExceeded() if ":" in f["client"] else ICMP(type=11, code=0)
    err = _error_to_vip(f, f["nat"], _quoted_ip(f, f["nat"], f["client"]) / UDPerror(sport=53, dport=sport, len=40,
                                                                                     chksum=0x1234), icmp=icmp)
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_REDIRECT
    expected = Ether(src=PRIV_MAC, dst=real_mac(rs)) / _ip(f, src=f["router"], dst=rs, ttl=250) / icmp / \
        _quoted_ip(f, rs, f["client"]) / UDPerror(sport=5353, dport=sport, len=40, chksum=0x1234)
    assert out == bytes(expected)
    _checksums_ok(out)


@pytest.mark.parametrize("f", FAMILIES)
def test_ipv4_options_and_ipv6_extension_headers_in_the_quote(dp, f):
    sport, rs = _connect(dp, f, f["nat"])
    if ":" in f["client"]:
        q, eq = (IPerror6(src=f["nat"], dst=f["client"], plen=1460) / IPv6ExtHdrDestOpt(nh=6),
                 IPerror6(src=rs, dst=f["client"], plen=1460) / IPv6ExtHdrDestOpt(nh=6))
    else:
        opts = b"\x94\x04\x00\x00"                  # router alert: an IHL of 6
        q, eq = (IPerror(src=f["nat"], dst=f["client"], id=3, len=1500, options=opts),
                 IPerror(src=rs, dst=f["client"], id=3, len=1500, options=opts))
    err = _error_to_vip(f, f["nat"], q / _tcp_q(80, sport))
    tcp_sum = int.from_bytes(bytes(err)[-20 + 16:-20 + 18], "big")      # the quoted TCP header ends it
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_REDIRECT
    expected = Ether(src=PRIV_MAC, dst=real_mac(rs)) / _ip(f, src=f["router"], dst=rs, ttl=250) / _frag_needed(f) / \
        eq / _tcp_q(8080, sport, chksum=tcp_sum)
    assert out == bytes(expected)
    _checksums_ok(out)


def _flow_error(dp, f):
    """A frag-needed about a live DR flow: what is relayed when it is whole"""
    sport, _ = _connect(dp, f, f["dr"])
    return sport, _error_to_vip(f, f["dr"], _quoted_ip(f, f["dr"], f["client"]) / _tcp_q(80, sport))


def _cut(raw: bytes, n: int) -> bytes:
    """The first n bytes of a frame, its IP length saying so (as a sender's cut quote would:
    a length past the frame is the kernel's to drop, and lb passes it untouched for that)."""
    import struct

    out = bytearray(raw[:n])
    if out[12:14] == b"\x86\xdd":
        out[18:20] = struct.pack("!H", n - 54)
    else:
        out[16:18] = struct.pack("!H", n - 14)
        out[24:26] = b"\0\0"
        s = sum(struct.unpack("!10H", bytes(out[14:34])))
        s = (s & 0xFFFF) + (s >> 16)
        out[24:26] = struct.pack("!H", ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF)
    return bytes(out)


def _passes(dp, prog, pkt):
    rc, out = run(dp, prog, pkt)
    assert rc == XDP_PASS
    assert out == bytes(pkt)


@pytest.mark.parametrize("f", FAMILIES)
def test_errors_about_unknown_flows_pass_untouched(dp, f):
    for vip, port in ((f["dr"], 80), (f["nat"], 80), (f["dr"], 443)):
        _passes(dp, "lb_xdp_public", _error_to_vip(f, vip, _quoted_ip(f, vip, f["client"]) / _tcp_q(port, 1)))
    # UDP: the quoted protocol is part of the flow
    sport, _ = _connect(dp, f, f["nat"])
    _passes(dp, "lb_xdp_public", _error_to_vip(f, f["nat"], _quoted_ip(f, f["nat"], f["client"]) /
                                               UDPerror(sport=80, dport=sport)))


@pytest.mark.parametrize("f", FAMILIES)
def test_errors_not_about_the_vip_they_are_sent_to_pass(dp, f):
    """The outer destination must be the VIP the quoted packet came from."""
    sport, _ = _connect(dp, f, f["dr"])
    err = _error_to_vip(f, f["nat"], _quoted_ip(f, f["dr"], f["client"]) / _tcp_q(80, sport))
    _passes(dp, "lb_xdp_public", err)


def test_echo_requests_and_neighbour_discovery_pass(dp):
    for pkt in (Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=V4["client"], dst=V4["dr"]) / ICMP(),
                Ether(src=CLIENT_MAC, dst=PUB_MAC) / IPv6(src=V6["client"], dst=V6["dr"]) / ICMPv6EchoRequest(),
                Ether(src=CLIENT_MAC, dst="33:33:ff:00:00:10") /
                IPv6(src=V6["client"], dst="ff02::1:ff00:10", hlim=255) / ICMPv6ND_NS(tgt=V6["dr"])):
        _passes(dp, "lb_xdp_public", pkt)
        _passes(dp, "lb_xdp_private", pkt)


def test_ipv4_types_ipvs_does_not_relay_pass(dp):
    """IPVS relays destination unreachable, source quench and time exceeded; not e.g. parameter
    problem or redirect, even about a live flow."""
    sport, _ = _connect(dp, V4, V4["dr"])
    for icmp in (ICMP(type=12, code=0, ptr=8), ICMP(type=5, code=1, gw=V4["router"])):
        _passes(dp, "lb_xdp_public", _error_to_vip(V4, V4["dr"], _quoted_ip(V4, V4["dr"], V4["client"]) /
                                                   _tcp_q(80, sport), icmp=icmp))
    rc, _ = run(dp, "lb_xdp_public", _error_to_vip(V4, V4["dr"], _quoted_ip(V4, V4["dr"], V4["client"]) /
                                                   _tcp_q(80, sport), icmp=ICMP(type=4, code=0)))
    assert rc == XDP_REDIRECT                          # source quench is relayed


def test_icmpv6_parameter_problem_and_dest_unreach_are_relayed(dp):
    """IPVS relays every ICMPv6 error (types below 128)."""
    from scapy.layers.inet6 import ICMPv6ParamProblem
    sport, rs = _connect(dp, V6, V6["dr"])
    for icmp in (ICMPv6DestUnreach(code=3), ICMPv6ParamProblem(code=0, ptr=6)):
        rc, out = run(dp, "lb_xdp_public", _error_to_vip(V6, V6["dr"], _quoted_ip(V6, V6["dr"], V6["client"]) /
                                                         _tcp_q(80, sport), icmp=icmp))
        assert rc == XDP_REDIRECT and Ether(out).dst == real_mac(rs)


@pytest.mark.parametrize("f", FAMILIES)
def test_truncated_errors_pass_untouched(dp, f):
    sport, err = _flow_error(dp, f)
    raw = bytes(err)
    l3 = 40 if ":" in f["client"] else 20
    icmp_at = 14 + l3
    quote_l4 = icmp_at + 8 + l3
    for cut in (icmp_at + 4,                         # the ICMP header
                icmp_at + 8 + 12,                    # the quoted IP header
                quote_l4 + 4,                        # only the ports of the quoted TCP header
                quote_l4 + 7):
        _passes(dp, "lb_xdp_public", _cut(raw, cut))
    assert run(dp, "lb_xdp_public", _cut(raw, quote_l4 + 8))[0] == XDP_REDIRECT   # 8 bytes are enough


def test_errors_quoting_a_later_fragment_pass_untouched(dp):
    """A later fragment has no ports: nothing names the flow."""
    sport, _ = _connect(dp, V4, V4["dr"])
    q = IPerror(src=V4["dr"], dst=V4["client"], len=1500, frag=185) / _tcp_q(80, sport)
    _passes(dp, "lb_xdp_public", _error_to_vip(V4, V4["dr"], q))
    sport, _ = _connect(dp, V6, V6["dr"])
    q = IPerror6(src=V6["dr"], dst=V6["client"]) / IPv6ExtHdrFragment(nh=6, m=1, offset=185, id=9) / \
        _tcp_q(80, sport)
    _passes(dp, "lb_xdp_public", _error_to_vip(V6, V6["dr"], q))


def _first_fragment_q(f, src, dst, nh=17):
    """The quoted first fragment of a datagram in fragments (IPv4: MF, offset 0; IPv6: a
    fragment header, offset 0, M set), as a real server's large UDP reply is sent."""
    if ":" in f["client"]:
        return IPerror6(src=src, dst=dst, hlim=63, plen=1240) / IPv6ExtHdrFragment(nh=nh, m=1, id=0x1234)
    return IPerror(src=src, dst=dst, id=77, ttl=63, flags="MF", len=1500)


@pytest.mark.parametrize("f", FAMILIES)
def test_dr_error_quoting_a_first_fragment_goes_to_the_real_server(dp, f):
    """A Packet Too Big (or an unreachable) about the first fragment of a real server's reply in
    fragments -- a large DNS answer over a path with a smaller MTU -- reaches that real server,
    as IPVS relays it (it reads a first fragment's ports): passed to the director's own kernel,
    the real server never learnt the path MTU and every large answer to that client was lost."""
    sport, rs = _connect(dp, f, f["dr"])
    for _ in range(2):                      # other connections move rr on: the error follows its flow
        _connect(dp, f, f["dr"])
    icmp = ICMPv6PacketTooBig(mtu=1280) if ":" in f["client"] else ICMP(type=3, code=1)
    err = _error_to_vip(f, f["dr"], _first_fragment_q(f, f["dr"], f["client"], nh=6) / _tcp_q(80, sport) /
                        (b"a" * 24), icmp=icmp)
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_REDIRECT
    expected = err.copy()
    expected[Ether].src, expected[Ether].dst = PRIV_MAC, real_mac(rs)
    assert out == bytes(expected)


def test_ipv6_quote_with_options_before_the_fragment_header(dp):
    """The fragment header may follow other extension headers in the quote (ipv6_find_hdr steps
    over them all): a first fragment's error is relayed, a later one's passes."""
    sport, rs = _connect(dp, V6, V6["dr"])
    for offset, relayed in ((0, True), (185, False)):
        q = IPerror6(src=V6["dr"], dst=V6["client"]) / IPv6ExtHdrDestOpt(nh=44) / \
            IPv6ExtHdrFragment(nh=6, m=1, offset=offset, id=7) / _tcp_q(80, sport)
        err = _error_to_vip(V6, V6["dr"], q)
        if relayed:
            rc, out = run(dp, "lb_xdp_public", err)
            assert rc == XDP_REDIRECT and Ether(out).dst == real_mac(rs)
        else:
            _passes(dp, "lb_xdp_public", err)


@pytest.mark.parametrize("f", FAMILIES)
def test_nat_error_quoting_a_first_fragment_is_rewritten_both_ways(dp, f):
    """NAT, both sides: an error about a reply's first fragment goes to the real server with the
    quoted source VIP:53 -> real:5353; one about a request's first fragment (from a router on the
    real servers' side) goes to the client with the quoted destination real:5353 -> VIP:53;
    every checksum right."""
    sport, rs = _connect(dp, f, f["nat"], 53, proto="udp")
    icmp = ICMPv6PacketTooBig(mtu=1280) if ":" in f["client"] else ICMP(type=3, code=1)
    udp_q = dict(len=3000, chksum=0x4321)
    err = _error_to_vip(f, f["nat"], _first_fragment_q(f, f["nat"], f["client"]) /
                        UDPerror(sport=53, dport=sport, **udp_q) / (b"b" * 24), icmp=icmp)
    rc, out = run(dp, "lb_xdp_public", err)
    assert rc == XDP_REDIRECT
    expected = Ether(src=PRIV_MAC, dst=real_mac(rs)) / _ip(f, src=f["router"], dst=rs, ttl=250) / icmp / \
        _first_fragment_q(f, rs, f["client"]) / UDPerror(sport=5353, dport=sport, **udp_q) / (b"b" * 24)
    assert out == bytes(expected)
    _checksums_ok(out)

    err = Ether(src=real_mac(rs), dst=PRIV_MAC) / _ip(f, src=f["priv_router"], dst=f["client"]) / icmp / \
        _first_fragment_q(f, f["client"], rs) / UDPerror(sport=sport, dport=5353, **udp_q) / (b"c" * 24)
    rc, out = run(dp, "lb_xdp_private", err)
    assert rc == XDP_TX
    expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / _ip(f, src=f["nat"], dst=f["client"]) / icmp / \
        _first_fragment_q(f, f["client"], f["nat"]) / UDPerror(sport=sport, dport=53, **udp_q) / (b"c" * 24)
    assert out == bytes(expected)
    _checksums_ok(out)


def test_fragmented_icmp_passes_and_is_counted(dp):
    sport, err = _flow_error(dp, V4)
    err[IP].flags = "MF"
    idx = L.COUNTER_NAMES.index("fragment")
    before = sum(L.U64.unpack(v)[0] for v in dp.maps["lb_counters"].get_percpu(L.U32.pack(idx)))
    _passes(dp, "lb_xdp_public", err)
    assert sum(L.U64.unpack(v)[0] for v in dp.maps["lb_counters"].get_percpu(L.U32.pack(idx))) == before + 1


# ---- private side (NAT): a real server's errors to the client

@pytest.mark.parametrize("f", FAMILIES)
@pytest.mark.parametrize("sender", ["real", "router"])
def test_nat_real_servers_error_goes_to_the_client_from_the_vip(dp, f, sender):
    """ip_vs_out_icmp: outer source (the real server, or a router on its side) -> VIP, quoted
    destination real:8080 -> VIP:80, out where the client's packets came in."""
    sport, rs = _connect(dp, f, f["nat"])
    src = rs if sender == "real" else f["priv_router"]
    quoted_tcp = TCPerror(sport=sport, dport=8080, flags="A", seq=1001, ack=5001)
    err = Ether(src=real_mac(rs), dst=PRIV_MAC) / _ip(f, src=src, dst=f["client"], ttl=64) / _frag_needed(f, 1300) / \
        _quoted_ip(f, f["client"], rs) / quoted_tcp / (b"q" * 16)
    tcp_sum = Ether(bytes(err))[TCPerror].chksum
    svc_before, real_before = _stats(dp, f["nat"], 80, rs)
    rc, out = run(dp, "lb_xdp_private", err)
    assert rc == XDP_TX
    expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / _ip(f, src=f["nat"], dst=f["client"], ttl=64) / \
        _frag_needed(f, 1300) / _quoted_ip(f, f["client"], f["nat"]) / \
        TCPerror(sport=sport, dport=80, flags="A", seq=1001, ack=5001, chksum=tcp_sum) / (b"q" * 16)
    assert out == bytes(expected)
    _checksums_ok(out)
    # IPVS ip_vs_out_stats: one packet out
    svc_after, real_after = _stats(dp, f["nat"], 80, rs)
    for before, after in ((svc_before, svc_after), (real_before, real_after)):
        assert (after.outpkts - before.outpkts, after.outbytes - before.outbytes, after.inpkts - before.inpkts) == \
            (1, len(bytes(err)) - 14, 0)


@pytest.mark.parametrize("f", FAMILIES)
def test_private_side_errors_about_unknown_flows_pass(dp, f):
    sport, rs = _connect(dp, f, f["nat"])
    other = next(a for a in f["reals"] if a != rs)
    for q in (_quoted_ip(f, f["client"], other) / TCPerror(sport=sport, dport=8080),     # another real server
              _quoted_ip(f, f["client"], rs) / TCPerror(sport=sport + 1, dport=8080),    # another port
              _quoted_ip(f, f["client"], rs) / UDPerror(sport=sport, dport=8080)):       # another protocol
        _passes(dp, "lb_xdp_private",
                Ether(src=real_mac(rs), dst=PRIV_MAC) / _ip(f, src=rs, dst=f["client"]) / _frag_needed(f) / q)
    # addressed to someone other than the quoted packet's source
    _passes(dp, "lb_xdp_private", Ether(src=real_mac(rs), dst=PRIV_MAC) / _ip(f, src=rs, dst=f["router"]) /
            _frag_needed(f) / _quoted_ip(f, f["client"], rs) / TCPerror(sport=sport, dport=8080))
