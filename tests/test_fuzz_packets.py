"""The packet fuzzer: 1,000,000 packets (LB_FUZZ_PACKETS) through every XDP program -- the
director's public and private sides, its guard and the real servers' decap -- with BPF_PROG_TEST_RUN, each
verdict and output held to a Python model of what the program may do.

Packets are scapy-built valid ones (TCP with every flag combination, UDP, ICMP errors quoting
tracked flows and anything else, IPv4 options, IPv6 extension-header chains and loops, fragments,
VLAN tags, IPIP and IPv6-in-IPv6 nests, NAT replies, packets too big for the tunnel; and, in
each batch after the first, routers' ICMP errors about the tunnel packets lb sent in the batch
before (or earlier): IPv4's and IPv6's error and informational types, frag needed / Packet Too
Big with MTUs about every bound, to our tunnel source or elsewhere, quoting the outer packet
whole or cut anywhere, its outer addresses, inner addresses, ports, protocol, DF or offset now and
then altered), then
mutated: truncated at every offset, bad IHL and versions, lengths, checksums, flipped bytes, random
flags, partial checksums (a sender's tx offload: lb completes them), and plain random bytes.  The model (no packet to a real server the model would not send
there; no change to a packet not for a virtual service; no verifier error, XDP_ABORTED or
refused run):

- public: not addressed to a virtual service's address -> XDP_PASS, the same bytes.  Otherwise
  XDP_PASS (same bytes) is always allowed; XDP_REDIRECT only to a real server of the service the
  packet's 5-tuple names, as DR (MACs), NAT (destination address/port and checksums) or tunnel
  (an outer header from our address, the packet inside) would send it, a partial checksum
  completed (lb_csum.h), and a TCP packet that is
  not a pure SYN (and an ICMP error, through its quote) only along a flow an earlier forwarded
  packet opened, to that flow's real server; XDP_TX only as a "fragmentation needed" / Packet Too
  Big answer (never about ICMP, at most 576 / 1280 bytes) to a packet too big for a tunnel;
  XDP_DROP only for such packets.  A new connection is never made (nor answered) for what the
  kernel drops before IPVS: a length past the frame or short of the L4 header, a martian
  source, a source that is its destination (a LAND attack's: lb_from_itself) or another
  address of the virtual services (lb_from_a_vip).
- private: XDP_PASS unchanged, or XDP_TX of a NAT flow's reply (from a real server the flow
  went to) rewritten to come from its VIP:port, to the MACs the flow's client used.
- both, an ICMP error quoting a tunnel header (lb_icmp_tunnel): XDP_TX exactly as relayed() builds
  it (to the client's MAC from PUB_MAC, from the VIP to the client, the same type and code, the
  MTU less the outer header -- the link's when 0 or larger; IPv6 at least 1280 --, the inner IP
  headers and 8 bytes quoted, valid checksums) when the quote's outer header is from our tunnel
  source, where the error is addressed, to the real server of a tunnel flow the model saw
  forwarded, the inner packet that flow's, the type one lb relays (IPv4 3, 4, 11; IPv6 below
  128 but 4) and frag needed only about a packet with DF; XDP_DROP then only as the rate limit's
  (each batch's drops within icmp_rate_limited's count, its relays exactly tunnel_error_relayed's);
  XDP_PASS then only when the model cannot be sure the connection is there (a packet of the flow
  not forwarded since, or forwarded TUNNEL_CERTAIN_S or more ago); any other such error: XDP_PASS,
  the same bytes.
- guard (lb_xdp_guard, on other interfaces holding an address under [ha]): with the lease live
  (here: none armed, as without [ha]) XDP_PASS, the same bytes, whatever the packet.
- decap: exactly lb_decap.c's rule (a tunnel to a real server from a director, its inner packet
  to a VIP (--vip): inner packet out; from anyone else, to another address, or a bad inner
  header: dropped; anything else: unchanged).

Seeded: LB_FUZZ_SEED sets the seed (a random one otherwise); every failure names it."""
from __future__ import annotations

import ipaddress
import os
import random
import struct
import time

import pytest
from scapy.layers.inet import (ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, IPerror, TCPerror, UDPerror,
                               fragment)
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPerror6, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
                                PadN, fragment6)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec
from lb.dataplane import decap
from lb.dataplane import layout as L
from lb.dataplane.xdp import Sizes

from fuzzseed import SEED
from packets_util import (CLIENT_MAC, PRIV_ADDR, PRIV_MAC, PRIV_MTU, PUB_MAC, XDP_ABORTED, XDP_DROP, XDP_PASS,
                          XDP_REDIRECT, XDP_TX, csum_fold, loaded_dataplane, pseudo_sum, real_mac)

ip = ipaddress.ip_address
N = int(os.environ.get("LB_FUZZ_PACKETS", "1000000"))
BATCH = 4000
OUT_CAP = 4096
TUNNEL_CERTAIN_S = 8        # a connection forwarded to less than this ago is alive (CLOSE's 10 s)
TUNNEL_ERRORS = 0.06        # of each batch after the first: errors about the tunnel's packets

# every real server has its own last byte, so its MAC (packets_util.real_mac) names it
V4 = dict(dr="198.18.0.10", nat="198.18.0.20", tun="198.18.0.40", per="198.18.0.50", fwm="198.18.0.60",
          dr_r=["198.18.1.11", "198.18.1.12"], nat_r=["198.18.1.21", "198.18.1.22"],
          tun_r=["198.18.5.31", "198.18.5.32"], per_r=["198.18.1.41", "198.18.1.42"],
          fwm_r=["198.18.1.51", "198.18.1.52"], client="198.18.0.2", other="198.18.0.1")
V6 = dict(dr="2001:2::10", nat="2001:2::20", tun="2001:2::40",
          dr_r=["2001:2:0:1::61", "2001:2:0:1::62"], nat_r=["2001:2:0:1::71", "2001:2:0:1::72"],
          tun_r=["2001:2:0:5::81", "2001:2:0:5::82"], client="2001:2:0:9::2", other="2001:2::1")
DIRECTORS = [PRIV_ADDR[4], PRIV_ADDR[6]]
ROUTER = {4: "198.18.5.1", 6: "2001:2:0:5::1"}      # between the director and the tunnel's real servers
DECAP_DSTS = sorted({ip(a) for a in V4["tun_r"] + V6["tun_r"] + V4["dr_r"][:1]}, key=str)   # decap's own addresses
DECAP_VIPS = [ip(V4["tun"]), ip(V6["tun"])]         # its --vip: the inner destinations let in
DECAP_SEEN = {"not_to_a_vip": 0}                   # what the model said of the decap side


def _svc(proto, vip, port, reals, fwd, rport=None, sched="rr", **kw):
    return ServiceSpec(proto, ip(vip), port, sched, tuple(RealSpec(ip(a), rport if rport is not None else port, 1, fwd)
                                                          for a in reals), **kw)


# the schedulers lb_xdp_public runs in place (dh, sh, mh, rr's next server; persistence's
# templates) beside tail-called ones (wlc; rr's walk at its list's end), so hostile packets reach
# both paths
SERVICES = (
    _svc("tcp", V4["dr"], 80, V4["dr_r"], "dr"), _svc("udp", V4["dr"], 53, V4["dr_r"], "dr", sched="dh"),
    _svc("tcp", V4["nat"], 80, V4["nat_r"], "nat", 8080, sched="mh"),
    _svc("udp", V4["nat"], 53, V4["nat_r"], "nat", 5353, sched="wlc"),
    _svc("tcp", V4["tun"], 80, V4["tun_r"], "tunnel", sched="sh", sched_flags=("sh-fallback",)),
    _svc("udp", V4["tun"], 53, V4["tun_r"], "tunnel"),
    _svc("tcp", V4["per"], 80, V4["per_r"], "dr", name="per", persistent=300, pmask="255.255.255.0"),
    _svc("tcp", V4["fwm"], 21, V4["fwm_r"], "nat", 0, name="ftp", fwmark=21, persistent=300,
         groups=(PortGroup("tcp", ip(V4["fwm"]), 21, 21), PortGroup("tcp", ip(V4["fwm"]), 30000, 30009))),
    _svc("tcp", V6["dr"], 80, V6["dr_r"], "dr", sched="sh"),
    _svc("tcp", V6["nat"], 80, V6["nat_r"], "nat", 8080), _svc("udp", V6["nat"], 53, V6["nat_r"], "nat", 5353),
    _svc("tcp", V6["tun"], 80, V6["tun_r"], "tunnel", sched="wlc"),
)
TABLE = TableSpec(SERVICES)


class Service:
    """What the model knows of a service: its addresses, ports and real servers (and how it
    forwards to them)."""

    def __init__(self, spec: ServiceSpec):
        self.spec = spec
        self.proto = 6 if spec.protocol == "tcp" else 17
        self.fwd = spec.reals[0].forward
        self.reals = {r.address.packed: r for r in spec.reals}   # packed address -> RealSpec
        self.macs = {bytes.fromhex(real_mac(r.address).replace(":", "")): r for r in spec.reals}


SVCS = [Service(s) for s in SERVICES]


def _lookup_service(proto: int, daddr: bytes, dport: int) -> Service | None:
    """the service of (proto, VIP, port): address/port services first, then port groups (as
    lb_lookup_svc does)"""
    for s in SVCS:
        if not s.spec.fwmark and s.proto == proto and s.spec.address.packed == daddr and s.spec.port == dport:
            return s
    for s in SVCS:
        for g in s.spec.groups:
            if g.address.packed == daddr and (6 if g.protocol == "tcp" else 17) == proto and g.low <= dport <= g.high:
                return s
    return None


VIP_ADDRS = {s.spec.address.packed for s in SVCS if not s.spec.fwmark} | \
    {g.address.packed for s in SVCS for g in s.spec.groups}
REAL_OF_MAC = {m: r.address.packed for s in SVCS for m, r in s.macs.items()}   # MAC -> real address


# ---- the model's parser: what lb_parse.h reads -----------------------------------------------

class Parsed:
    __slots__ = ("l3", "fam", "saddr", "daddr", "proto", "l4", "sport", "dport", "flags", "iplen", "ok",
                 "icmp", "vlan", "frag")

    def __init__(self):
        self.ok = False
        self.icmp = None
        self.fam = self.l3 = self.l4 = None
        self.saddr = self.daddr = None
        self.proto = self.sport = self.dport = self.flags = self.iplen = None
        self.vlan = False
        self.frag = None        # a TCP/UDP fragment: ("first" | "later", its datagram's key)


EXT = (0, 43, 60)       # hop-by-hop, routing, destination options: what lb_ipv6_skip_ext steps over


def skip_ext(b: bytes, nh: int, cur: int, frag: bool = False) -> tuple[int | None, int]:
    """lb_ipv6_skip_ext: up to 4 hop-by-hop / routing / destination options headers (frag: an
    ICMP error's quote, also a first fragment's fragment header, 8 bytes); (next header, its
    offset), or (None, 0) when one runs past the packet, is a routing header with segments left
    (hops_left) or (frag) is a later fragment's"""
    for _ in range(4):
        if nh not in EXT and not (frag and nh == 44):
            break
        if cur + 4 > len(b):
            return None, 0
        if nh == 43 and b[cur + 3]:
            return None, 0
        if nh == 44:
            if struct.unpack_from("!H", b, cur + 2)[0] & 0xFFF8:
                return None, 0
            nh, cur = b[cur], cur + 8
            continue
        nh, cur = b[cur], cur + (b[cur + 1] + 1) * 8
    return nh, cur


def _ethertype(b: bytes) -> tuple[int | None, int]:
    """(ethertype, offset of the L3 header) after one 802.1Q/802.1ad tag at most"""
    if len(b) < 14:
        return None, 0
    et, off = struct.unpack_from("!H", b, 12)[0], 14
    if et in (0x8100, 0x88A8):
        if len(b) < 18:
            return None, 0
        et, off = struct.unpack_from("!H", b, 16)[0], 18
    return et, off


def not_routable(b: bytes, p: Parsed) -> bool:
    """lb_not_routable: what the kernel drops before IPVS, never a new connection."""
    l4len = (p.iplen - (p.l4 - p.l3)) & 0xFFFF
    if l4len < (20 if p.proto == 6 else 8) or p.l4 + l4len > len(b):
        return True
    if p.fam == 4:
        return p.saddr[0] in (0, 127) or p.saddr[0] >= 224
    return p.saddr[0] == 0xFF or (p.saddr[:15] == bytes(15) and p.saddr[15] in (0, 1)) or \
        p.saddr[:12] == bytes(10) + b"\xff\xff"


def from_itself(p: Parsed) -> bool:
    """lb_from_itself: a packet from the address it is sent to (a LAND attack's), which the
    kernel drops as a martian before IPVS: never a new connection (passed, counted not_routable);
    and lb_from_a_vip's, from another address a virtual service listens on"""
    return p.saddr == p.daddr or p.saddr in VIP_ADDRS


def parse(b: bytes) -> Parsed:
    """lb_parse's reading of b: ok when it would go on to the connection lookup (TCP or UDP,
    no fragment); icmp set to the ICMP header's offset when it stopped at an ICMP packet."""
    p = Parsed()
    et, off = _ethertype(b)
    p.l3, p.vlan = off, off == 18
    if et == 0x0800:
        if len(b) < off + 20:
            return p
        p.fam, p.saddr, p.daddr = 4, b[off + 12:off + 16], b[off + 16:off + 20]
        if b[off] >> 4 != 4 or b[off] & 15 < 5:
            return p
        ihl = (b[off] & 15) * 4
        if off + ihl > len(b):
            return p
        p.iplen = struct.unpack_from("!H", b, off + 2)[0]
        frag_off = struct.unpack_from("!H", b, off + 6)[0]
        if frag_off & 0x3FFF:
            # lb_frag.h: a TCP/UDP fragment follows its datagram, the first parsed as any packet
            if b[off + 9] not in (6, 17):
                return p
            key = (p.saddr, p.daddr, b[off + 4:off + 6], b[off + 9])
            if frag_off & 0x1FFF:
                p.frag, p.proto = ("later", key), b[off + 9]
                return p
            p.frag = ("first", key)
        nh, cur = b[off + 9], off + ihl
    elif et == 0x86DD:
        if len(b) < off + 40:
            return p
        p.fam, p.saddr, p.daddr = 6, b[off + 8:off + 24], b[off + 24:off + 40]
        if b[off] >> 4 != 6:
            return p
        p.iplen = struct.unpack_from("!H", b, off + 4)[0] + 40
        nh, cur = skip_ext(b, b[off + 6], off + 40)
        if nh is None:
            return p
        if nh == 44:
            # lb_frag.h: a TCP/UDP fragment follows its datagram; the first only along a flow's
            # connection (Model.public), parsed past the fragment header
            if cur + 8 > len(b) or b[cur] not in (6, 17):
                return p
            key = (p.saddr, p.daddr, b[cur + 4:cur + 8], b[cur])
            if struct.unpack_from("!H", b, cur + 2)[0] & 0xFFF8:
                p.frag, p.proto = ("later", key), b[cur]
                return p
            p.frag = ("first", key)
            nh, cur = b[cur], cur + 8
    else:
        return p
    p.proto, p.l4 = nh, cur
    if nh == 6:
        if cur + 20 > len(b):
            return p
        p.sport, p.dport = struct.unpack_from("!HH", b, cur)
        p.flags = b[cur + 13]
        p.ok = True
    elif nh == 17:
        if cur + 8 > len(b):
            return p
        p.sport, p.dport = struct.unpack_from("!HH", b, cur)
        p.ok = True
    elif nh in (1, 58):
        p.icmp = cur
    return p


def completed(b: bytes, p: Parsed) -> bytes:
    """lb_csum.h: b as lb forwards it, a partial TCP/UDP checksum completed -- one whose field is
    the pseudo header's sum for the segment the IP header claims (a sender's tx offload), the
    segment within the frame and at most 4 KiB; any other packet as it is"""
    if not p.ok or p.frag:      # a fragment's sum is whole (and its l4len its own)
        return b
    at = p.l4 + (16 if p.proto == 6 else 6)
    if at + 2 > len(b):
        return b
    field = struct.unpack_from("!H", b, at)[0]
    seg = (p.iplen - (p.l4 - p.l3)) & 0xFFFF
    if p.proto == 17 and field == 0:
        return b
    if field != pseudo_sum(p.saddr, p.daddr, p.proto, seg) or seg > 4096 or p.l4 + seg > len(b):
        return b
    data = b[p.l4:p.l4 + seg] + b"\0" * (seg & 1)
    full = ~csum_fold(sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF
    if p.proto == 17 and full == 0:
        full = 0xFFFF
    return b[:at] + struct.pack("!H", full) + b[at + 2:]


def dest_of(b: bytes) -> bytes | None:
    """the destination address lb_vip_maybe reads (None: not IPv4/IPv6 with a whole fixed header)"""
    et, off = _ethertype(b)
    if et == 0x0800 and len(b) >= off + 20:
        return b[off + 16:off + 20]
    if et == 0x86DD and len(b) >= off + 40:
        return b[off + 24:off + 40]
    return None


def icmp_quote(b: bytes, p: Parsed):
    """lb_parse_icmp_err: (proto, quoted saddr, daddr, sport, dport) of an error IPVS relays, or None"""
    ic = p.icmp
    if ic is None or ic + 8 > len(b):
        return None
    t = b[ic]
    cur = ic + 8
    if p.fam == 4:
        if p.proto != 1 or t not in (3, 4, 11) or cur + 20 > len(b):
            return None
        v = b[cur]
        if v >> 4 != 4 or v & 15 < 5 or struct.unpack_from("!H", b, cur + 6)[0] & 0x1FFF:
            return None         # a later fragment (a first one, MF alone, has its ports)
        s, d, nh, cur = b[cur + 12:cur + 16], b[cur + 16:cur + 20], b[cur + 9], cur + (v & 15) * 4
    else:
        if p.proto != 58 or t & 0x80 or cur + 40 > len(b) or b[cur] >> 4 != 6:
            return None
        s, d = b[cur + 8:cur + 24], b[cur + 24:cur + 40]
        nh, cur = skip_ext(b, b[cur + 6], cur + 40, frag=True)
    if nh not in (6, 17) or cur + 8 > len(b):
        return None
    sport, dport = struct.unpack_from("!HH", b, cur)
    return nh, s, d, sport, dport


def inet_csum(data: bytes) -> int:
    """the Internet checksum of data (complemented, as it is sent)"""
    if len(data) & 1:
        data += b"\0"
    return ~csum_fold(sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF


VIP_FILTER = {L.vip_filter_bit(a) for s in SERVICES if not s.fwmark for a in [s.address]} | \
    {L.vip_filter_bit(g.address) for s in SERVICES for g in s.groups}


def vip_maybe(b: bytes) -> bool:
    """lb_vip_maybe: lb_xdp_public looks further at an ICMP/ICMPv6 packet (the fixed header's
    protocol / next header) or one whose destination's bit of lb_vip_filter is set"""
    et, off = _ethertype(b)
    if et == 0x0800 and len(b) >= off + 20:
        return b[off + 9] in (1, 58) or L.vip_filter_bit(ip(b[off + 16:off + 20])) in VIP_FILTER
    if et == 0x86DD and len(b) >= off + 40:
        return b[off + 6] in (1, 58) or L.vip_filter_bit(ip(b[off + 24:off + 40])) in VIP_FILTER
    return False


class TunnelError:
    """What lb_icmp_tunnel reads of an ICMP error whose quote is a tunnel header: the quoted outer
    header's addresses, the inner packet's flow and where its quote starts and ends, and the
    answer lb would send (relayed(): bytes)"""
    __slots__ = ("fam", "type", "code", "rest", "osrc", "odst", "flow", "inner", "q", "df")


def tunnel_error(b: bytes, p: Parsed) -> TunnelError | str | None:
    """lb_icmp_tunnel_call + lb_icmp_tunnel's parsing: None when the packet never reaches
    lb_xdp_icmp_tunnel's checks (not an ICMP error quoting 40 bytes of a tunnel header: the
    other ICMP paths' business), a str saying why lb must pass it, or a TunnelError to look up"""
    ic = p.icmp
    if ic is None or ic + 8 + 40 > len(b):
        return None
    o = ic + 8
    if b[o + (9 if p.fam == 4 else 6)] not in (4, 41):
        return None
    t, code = b[ic], b[ic + 1]
    if p.fam == 4 and (p.proto != 1 or t not in (3, 4, 11)):
        return f"ICMP type {t} (proto {p.proto}): not an error IPVS relays"
    if p.fam == 6 and (p.proto != 58 or t & 0x80):
        return f"ICMPv6 type {t} (next header {p.proto}): not an error"
    e = TunnelError()
    e.fam, e.type, e.code, e.rest = p.fam, t, code, struct.unpack_from("!I", b, ic + 4)[0]
    if p.fam == 4:
        if b[o] >> 4 != 4 or b[o] & 15 < 5 or b[o + 9] != 4 or struct.unpack_from("!H", b, o + 6)[0] & 0x1FFF:
            return "the quote is no IPIP header (version, IHL, protocol, a later fragment)"
        e.osrc, e.odst, inner = b[o + 12:o + 16], b[o + 16:o + 20], o + (b[o] & 15) * 4
        if inner + 20 > len(b):
            return "the inner header is cut short"
        v = b[inner]
        if v >> 4 != 4 or v & 15 < 5 or struct.unpack_from("!H", b, inner + 6)[0] & 0x1FFF:
            return "the inner header is no IPv4 header with ports (version, IHL, a later fragment)"
        nh, cur = b[inner + 9], inner + (v & 15) * 4
        e.df = bool(b[inner + 6] & 0x40)
        s, d = b[inner + 12:inner + 16], b[inner + 16:inner + 20]
    else:
        if b[o] >> 4 != 6 or b[o + 6] != 41 or t == 4:
            return "the quote is no IPv6-in-IPv6 header (version, next header), or a parameter problem"
        e.osrc, e.odst, inner = b[o + 8:o + 24], b[o + 24:o + 40], o + 40
        if inner + 40 > len(b) or b[inner] >> 4 != 6:
            return "the inner header is cut short or not IPv6"
        nh, cur = skip_ext(b, b[inner + 6], inner + 40, frag=True)
        e.df = True
        s, d = b[inner + 8:inner + 24], b[inner + 24:inner + 40]
    if nh not in (6, 17) or cur + 8 > len(b):
        return "the inner packet's ports are not quoted (not TCP/UDP, extension headers, cut short)"
    if e.osrc != p.daddr:
        return "the quote's outer source is not where the error is addressed"
    sport, dport = struct.unpack_from("!HH", b, cur)
    e.flow, e.inner, e.q = (nh, s, sport, d, dport), inner, cur - inner + 8
    return e


def tunnel_header(fam: int, real: bytes) -> bytes:
    """an outer header as lb's tunnel writes it, from our tunnel source to real (lengths aside)"""
    if fam == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 64, 4, 0, PRIV_ADDR[4].packed, real)
    return struct.pack("!IHBB", 0x60000000, 0, 41, 64) + PRIV_ADDR[6].packed + real


def relayed(b: bytes, e: TunnelError) -> bytes:
    """The error lb_icmp_tunnel relays to the client: from PUB_MAC to the client's MAC, from the
    VIP to the client, the same type and code, the MTU less the outer header (the link's when
    none or a larger one is reported; IPv6: at least 1280), quoting the inner packet's IP header
    (and IPv6's extension headers) and 8 bytes"""
    rest = e.rest
    if e.fam == 4 and (e.type, e.code) == (3, 4):
        mtu = rest & 0xFFFF
        mtu = PRIV_MTU if not mtu or mtu > PRIV_MTU else mtu
        rest = mtu - 20 if mtu > 88 else mtu
    elif e.fam == 6 and e.type == 2:
        mtu = PRIV_MTU if not rest or rest > PRIV_MTU else rest
        rest = mtu - 40 if mtu > 1280 + 40 else 1280
    quote = b[e.inner:e.inner + e.q]
    client, vip = e.flow[1], e.flow[3]
    icmp = bytes((e.type, e.code)) + b"\0\0" + struct.pack("!I", rest) + quote
    macs = bytes.fromhex(CLIENT_MAC.replace(":", "") + PUB_MAC.replace(":", ""))
    if e.fam == 4:
        icmp = icmp[:2] + struct.pack("!H", inet_csum(icmp)) + icmp[4:]
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + e.q, 0, 0, 64, 1, 0, vip, client)
        hdr = hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:]
        return macs + b"\x08\x00" + hdr + icmp
    pseudo = vip + client + struct.pack("!II", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", inet_csum(pseudo + icmp)) + icmp[4:]
    return macs + b"\x86\xdd" + struct.pack("!IHBB", 0x60000000, len(icmp), 58, 64) + vip + client + icmp


# ---- the model -----------------------------------------------------------------------------

class Model:
    def __init__(self, seed: int):
        self.seed = seed
        # (proto, caddr, cport, vaddr, vport) -> (Service, real packed, or None: a real of it the
        # model did not see, the flow's first packet having been answered or dropped as too big)
        self.flows: dict[tuple, tuple] = {}
        self.nat: dict[tuple, tuple] = {}       # (proto, real, rport, caddr, cport) -> (vaddr, vport)
        # lb_frags4: (datagram key, direction) -> what its first fragment did: (service, real address)
        # of a client's, (vaddr, vport) of a NAT reply's
        self.frags: dict[tuple, tuple] = {}
        self.seen = {"pass": 0, "redirect": 0, "tx": 0, "drop": 0}
        self.land_passed = 0                    # new connections' packets from their destination, passed
        self.from_vip_passed = 0                # ... from another VIP (lb_from_a_vip), passed
        self.later_forwarded = {4: 0, 6: 0}     # later fragments forwarded, by family
        # tunnel flows whose connection lb certainly holds, to the real server self.flows names:
        # flow -> when the batch that last forwarded one of its packets began (time.monotonic()).
        # A packet of the flow not forwarded may have ended its connection (expired, a reused
        # port's SYN the kernel's), or made one to a real server the model did not see: the flow
        # leaves it till its next packet forwarded.  Past TUNNEL_CERTAIN_S the connection may
        # have expired (IPVS's shortest state timeout, CLOSE's, is 10 s): lb may pass its errors.
        self.tun_live: dict[tuple, float] = {}
        self.batch_t0 = 0.0
        self.outers: list[bytes] = []           # this batch's tunnel packets (IP header on), as lb sent them
        self.others: list[bytes] = []           # ... and its DR / NAT flows' packets, in a tunnel header
        # errors about the tunnel's own packets: relayed (XDP_TX), dropped (the rate limit), or
        # passed when the model could not be sure of the connection; by (program, family); and
        # this batch's relays and drops, held to lb's counters (tunnel_error_relayed, icmp_rate_limited)
        self.tun_seen: dict[tuple, int] = {}
        self.batch_relayed = self.batch_limited = 0

    def fail(self, prog: str, i: int, pkt: bytes, why: str):
        raise AssertionError(f"fuzz seed {self.seed} (LB_FUZZ_SEED={self.seed} to repeat), {prog}, "
                             f"packet {i}: {why}\n  in:  {pkt.hex()}")

    def _tunnel_error(self, prog: str, i: int, pkt: bytes, p: Parsed, rc: int, out: bytes) -> bool:
        """An ICMP error about a packet lb tunneled (lb_icmp_tunnel, either program): True when
        the packet is one lb_xdp_icmp_tunnel looks at, its verdict and bytes checked.  XDP_TX
        exactly as relayed() says when the quote is of a tunnel flow the model saw forwarded,
        from our tunnel source (where the error is addressed) to that flow's real server, with a
        relayable type (frag needed only with DF on the inner header); XDP_DROP then only as the
        rate limit's (the batch's counted); anything else passed untouched."""
        e = tunnel_error(pkt, p)
        if e is None:
            return False
        if prog == "public" and not vip_maybe(pkt):
            e = "lb_vip_maybe: neither ICMP in the fixed header nor a VIP's filter bit"
        why, sure = None, False
        if isinstance(e, str):
            why = e
        else:
            known = self.flows.get(e.flow)
            svc, real = known if known else (None, None)
            live = e.flow in self.tun_live and time.monotonic() - self.tun_live[e.flow] < TUNNEL_CERTAIN_S
            sure = live and real is not None
            if svc is None or svc.fwd != "tunnel":
                why = "the inner packet is of no tunnel flow the model saw forwarded"
            elif e.osrc != PRIV_ADDR[e.fam].packed:
                why = f"the quote's outer source {ip(e.osrc)} is not our tunnel source"
            elif (real if sure else e.odst if e.odst in svc.reals else None) != e.odst:
                why = f"the quote's outer destination {ip(e.odst)} is not the flow's real server " \
                      f"({ip(real) if real else 'not known'})"
            elif e.fam == 4 and (e.type, e.code) == (3, 4) and not e.df:
                why = "fragmentation needed about a client's packet without DF"
            elif e.q > 128:
                why = f"the inner headers and 8 bytes ({e.q}) exceed LB_QUOTE_MAX"
        key = (prog, p.fam, "pass" if why else {XDP_TX: "tx", XDP_DROP: "drop"}.get(rc, "unsure"))
        self.tun_seen[key] = self.tun_seen.get(key, 0) + 1
        if why:
            if rc != XDP_PASS or out != pkt:
                self.fail(prog, i, pkt, f"an ICMP error quoting a tunnel header lb must pass untouched ({why}), "
                          f"but verdict {rc}, out {out.hex()}")
            return True
        want = relayed(pkt, e)
        if rc == XDP_TX:
            if (e.fam, e.type, e.code) in ((4, 3, 4), (6, 2, 0)):
                self.tun_seen[(prog, e.fam, "mtu")] = self.tun_seen.get((prog, e.fam, "mtu"), 0) + 1
            if out != want:
                self.fail(prog, i, pkt, f"an ICMP error about a packet lb tunneled, relayed wrong:\n  out: "
                          f"{out.hex()}\n  the model's: {want.hex()}")
            self.batch_relayed += 1
        elif rc == XDP_DROP:
            self.batch_limited += 1     # held to icmp_rate_limited after the batch
        elif rc != XDP_PASS or out != pkt or sure:
            self.fail(prog, i, pkt, f"an ICMP error about a packet lb tunneled to {ip(e.odst)} (flow "
                      f"{e.flow[0]} {ip(e.flow[1])}:{e.flow[2]} -> {ip(e.flow[3])}:{e.flow[4]}, forwarded there "
                      f"{time.monotonic() - self.tun_live[e.flow]:.1f} s ago) not relayed: verdict {rc}, out "
                      f"{out.hex()}; the model's answer: {want.hex()}" if sure else
                      f"verdict {rc}, out {out.hex()} for an ICMP error about a packet lb tunneled")
        return True

    # public
    def public(self, i: int, pkt: bytes, rc: int, out: bytes) -> None:
        self.seen[{XDP_PASS: "pass", XDP_REDIRECT: "redirect", XDP_TX: "tx", XDP_DROP: "drop"}.get(rc, "pass")] += 1
        p = parse(pkt)
        if p.ok and rc != XDP_REDIRECT:
            # its connection may have gone (or come to another real server) unseen
            self.tun_live.pop((p.proto, p.saddr, p.sport, p.daddr, p.dport), None)
        if self._tunnel_error("public", i, pkt, p, rc, out):
            return
        dst = dest_of(pkt)
        if dst is None or dst not in VIP_ADDRS:
            if rc != XDP_PASS or out != pkt:
                self.fail("public", i, pkt, f"not for a virtual service, but rc {rc}, out {out.hex()}")
            return
        if rc == XDP_PASS:
            if out != pkt:
                self.fail("public", i, pkt, f"XDP_PASS with changed bytes: {out.hex()}")
            p = parse(pkt)
            if p.ok and not p.frag and from_itself(p) and (p.proto, p.saddr, p.sport, p.daddr, p.dport) not in self.flows:
                if p.saddr == p.daddr:
                    self.land_passed += 1
                else:
                    self.from_vip_passed += 1
            return
        p = parse(pkt)
        if p.frag and p.frag[0] == "first" and p.ok:
            # noted on its way to a real server (lb_forward_to_real), whatever comes of it then
            flow = (p.proto, p.saddr, p.sport, p.daddr, p.dport)
            self.frags[(p.frag[1], 0)] = flow
        if p.frag and p.frag[0] == "later" and rc != XDP_REDIRECT:
            # too big for its datagram's tunnel: dropped, or (DF) answered as any packet is
            flow = self.frags.get((p.frag[1], 0))
            known = flow and self.flows.get(flow)
            if rc not in (XDP_TX, XDP_DROP) or not known or known[0].fwd != "tunnel" \
                    or p.iplen + (20 if p.fam == 4 else 40) <= PRIV_MTU or (rc == XDP_TX and p.fam == 6):
                self.fail("public", i, pkt, f"verdict {rc} for a later fragment not too big for a tunnel "
                          "(IPv6's: dropped, unanswered)")
            if rc == XDP_TX and (ICMP not in Ether(out) or (Ether(out)[ICMP].type, Ether(out)[ICMP].code) != (3, 4)):
                self.fail("public", i, pkt, f"a wrong fragmentation-needed answer: {out.hex()}")
        elif rc == XDP_REDIRECT and p.frag and p.frag[0] == "later":
            self._later_forwarded(i, pkt, p, out)
        elif rc == XDP_REDIRECT:
            self._forwarded(i, pkt, p, out)
        elif rc in (XDP_TX, XDP_DROP):
            self._too_big(i, pkt, p, rc, out)
        else:
            self.fail("public", i, pkt, f"verdict {rc}")

    def _later_forwarded(self, i, pkt, p: Parsed, out: bytes) -> None:
        """A fragment after the first: where its datagram's first fragment's flow goes, its L4
        bytes untouched (NAT: the address and the IP header's checksum only)"""
        flow = self.frags.get((p.frag[1], 0))
        known = flow and self.flows.get(flow)
        addr = REAL_OF_MAC.get(out[:6])
        self.later_forwarded[p.fam] += 1
        if not known or addr is None or known[1] not in (None, addr):
            self.fail("public", i, pkt, f"a later fragment forwarded to {addr and ip(addr)}, not where its "
                      f"datagram's first went ({known and known[1] and ip(known[1])})")
        svc = known[0]
        if svc.fwd == "dr" and out[12:] != pkt[12:]:
            self.fail("public", i, pkt, f"DR changed more than the MACs of a fragment: {out.hex()}")
        if svc.fwd == "nat":
            a, alen = (p.l3 + 16, 4) if p.fam == 4 else (p.l3 + 24, 16)
            same = set(range(12, len(pkt))) - set(range(a, a + alen)) - ({p.l3 + 10, p.l3 + 11} if p.fam == 4 else set())
            if len(out) != len(pkt) or out[a:a + alen] != addr or any(out[k] != pkt[k] for k in same):
                self.fail("public", i, pkt, f"NAT of a fragment: not only its address to {ip(addr)}: {out.hex()}")
        if svc.fwd == "tunnel" and out[14 + (20 if p.fam == 4 else 40):] != pkt[p.l3:]:
            self.fail("public", i, pkt, f"tunnel: the inner fragment changed: {out.hex()}")

    def _service_flow(self, p: Parsed):
        svc = _lookup_service(p.proto, p.daddr, p.dport)
        return svc, (p.proto, p.saddr, p.sport, p.daddr, p.dport)

    def _forwarded(self, i, pkt, p: Parsed, out: bytes) -> None:
        addr = REAL_OF_MAC.get(out[:6])
        if addr is None or out[6:12] != bytes.fromhex(PRIV_MAC.replace(":", "")):
            self.fail("public", i, pkt, f"XDP_REDIRECT to an unknown MAC: {out[:12].hex()}")
        if p.ok:
            svc, flow = self._service_flow(p)
            if svc is None:
                self.fail("public", i, pkt, "forwarded, but no service has its proto/address/port")
            if p.fam == 6 and p.frag and flow not in self.flows:
                self.fail("public", i, pkt, "an IPv6 first fragment made a new connection (the kernel's)")
            real = svc.reals.get(addr)
            if real is None:
                self.fail("public", i, pkt, f"forwarded to {ip(addr)}, not a real server of its service")
            pure_syn = p.proto == 6 and p.flags & 0x17 == 0x02
            if flow not in self.flows and (not_routable(pkt, p) or from_itself(p)):
                self.fail("public", i, pkt, "a new connection made for what the kernel drops before IPVS "
                          "(a length past the frame or short of the L4 header, a martian source, a "
                          "source that is its destination or another VIP)")
            if p.proto == 6 and not pure_syn:
                known = self.flows.get(flow)
                if known is None or known[1] not in (None, real.address.packed):
                    self.fail("public", i, pkt, f"a TCP packet (flags {p.flags:#x}) without a pure SYN forwarded "
                              f"to {real.address}; the flow's real server: {known and ip(known[1])}")
            self.flows[flow] = (svc, real.address.packed)
            if svc.fwd == "tunnel":
                self.tun_live[flow] = self.batch_t0
                self.outers.append(out[14:])
            elif len(self.others) < 50:
                # as if tunneled: what lb_icmp_tunnel must not take for its own (not a tunnel flow)
                self.others.append(tunnel_header(p.fam, real.address.packed) + pkt[p.l3:])
            if svc.fwd == "nat":
                rport = real.port or p.dport
                self.nat[(p.proto, real.address.packed, rport, p.saddr, p.sport)] = (p.daddr, p.dport)
            self._check_bytes(i, pkt, p, out, svc, real, p.dport)
            return
        q = icmp_quote(pkt, p)
        if q is None:
            self.fail("public", i, pkt, "forwarded a packet the parser stops at (no TCP/UDP, no ICMP error)")
        proto, qs, qd, qsport, qdport = q
        known = self.flows.get((proto, qd, qdport, qs, qsport))
        if qs != p.daddr or known is None or known[1] not in (None, addr) or addr not in known[0].reals:
            self.fail("public", i, pkt, f"an ICMP error about an unknown flow (or another real server) "
                      f"forwarded to {ip(addr)}")
        svc = known[0]
        if len(out) != len(pkt) + (0 if svc.fwd != "tunnel" else (20 if p.fam == 4 else 40) - (4 if p.vlan else 0)):
            self.fail("public", i, pkt, f"relayed ICMP error of a wrong length: {out.hex()}")

    def _check_bytes(self, i, pkt, p: Parsed, out: bytes, svc: Service, real: RealSpec, dport: int) -> None:
        whole = completed(pkt, p)
        if svc.fwd == "dr":
            if out[12:] != whole[12:]:
                self.fail("public", i, pkt, f"DR changed more than the MACs: {out.hex()}")
        elif svc.fwd == "nat":
            if len(out) != len(pkt):
                self.fail("public", i, pkt, "NAT changed the length")
            a = p.l3 + (16 if p.fam == 4 else 24)
            alen = 4 if p.fam == 4 else 16
            rport = real.port or dport
            if out[a:a + alen] != real.address.packed or struct.unpack_from("!H", out, p.l4 + 2)[0] != rport:
                self.fail("public", i, pkt, f"NAT: not to {real.address}:{rport}: {out.hex()}")
            csum = p.l4 + (16 if p.proto == 6 else 6)
            same = set(range(12, len(pkt))) - set(range(a, a + alen)) - {p.l4 + 2, p.l4 + 3, csum, csum + 1} \
                - ({p.l3 + 10, p.l3 + 11} if p.fam == 4 else set())
            if any(out[k] != pkt[k] for k in same):
                self.fail("public", i, pkt, f"NAT changed other bytes: {out.hex()}")
        else:
            ohl = 20 if p.fam == 4 else 40
            if out[14 + ohl:] != whole[p.l3:]:
                self.fail("public", i, pkt, f"tunnel: the inner packet changed: {out.hex()}")
            if p.fam == 4:
                osrc, odst, proto = out[26:30], out[30:34], out[23]
                ok = out[12:14] == b"\x08\x00" and proto == 4
            else:
                osrc, odst, proto = out[22:38], out[38:54], out[20]
                ok = out[12:14] == b"\x86\xdd" and proto == 41
            if not ok or osrc != PRIV_ADDR[p.fam].packed or odst != real.address.packed:
                self.fail("public", i, pkt, f"tunnel: a wrong outer header: {out.hex()}")

    def _too_big(self, i, pkt, p: Parsed, rc: int, out: bytes) -> None:
        svc = _lookup_service(p.proto, p.daddr, p.dport) if p.ok else None
        if p.ok:
            tunnel = svc is not None and svc.fwd == "tunnel"
            flow = (p.proto, p.saddr, p.sport, p.daddr, p.dport)
            if p.fam == 6 and p.frag and flow not in self.flows:
                self.fail("public", i, pkt, f"verdict {rc} for an IPv6 first fragment of no connection (the kernel's)")
            if flow not in self.flows and from_itself(p):
                self.fail("public", i, pkt, f"verdict {rc} for a packet from its own destination or another VIP "
                          "of no connection (lb_from_itself, lb_from_a_vip: the kernel's, untouched)")
            # a new connection was made (or an old one's port reused) before the answer: its real
            # server is one the model did not see
            if tunnel and (p.proto == 6 and p.flags & 0x17 == 0x02 or p.proto == 17 and flow not in self.flows):
                self.flows[flow] = (svc, None)
        else:
            q = icmp_quote(pkt, p)
            known = q and self.flows.get((q[0], q[2], q[4], q[1], q[3]))
            tunnel = bool(known) and known[0].fwd == "tunnel"
        if not tunnel or p.iplen is None or p.iplen + (20 if p.fam == 4 else 40) <= PRIV_MTU:
            self.fail("public", i, pkt, f"verdict {rc} for a packet that is not too big for a tunnel")
        if rc == XDP_DROP:
            return
        if not p.ok:
            self.fail("public", i, pkt, "an ICMP error answered with an ICMP error")
        o = Ether(out)
        if p.fam == 4:
            ans = o[IP]
            if len(bytes(ans)) > 576 or ICMP not in ans or (ans[ICMP].type, ans[ICMP].code) != (3, 4) \
                    or ans.dst != str(ip(p.saddr)) or ans.src != str(ip(p.daddr)):
                self.fail("public", i, pkt, f"a wrong fragmentation-needed answer: {out.hex()}")
            quote = bytes(ans[ICMP].payload)
        else:
            ans = o[IPv6]
            if len(bytes(ans)) > 1280 or ICMPv6PacketTooBig not in ans or ans.dst != str(ip(p.saddr)) \
                    or ans.src != str(ip(p.daddr)):
                self.fail("public", i, pkt, f"a wrong Packet Too Big answer: {out.hex()}")
            quote = bytes(ans[ICMPv6PacketTooBig].payload)
        if quote != completed(pkt, p)[p.l3:p.l3 + len(quote)] or len(quote) < p.l4 - p.l3 + 8:
            self.fail("public", i, pkt, f"the answer does not quote the packet's headers: {out.hex()}")

    # private
    def private(self, i: int, pkt: bytes, rc: int, out: bytes) -> None:
        if self._tunnel_error("private", i, pkt, parse(pkt), rc, out):
            return
        if rc == XDP_PASS:
            if out != pkt:
                self.fail("private", i, pkt, f"XDP_PASS with changed bytes: {out.hex()}")
            return
        if rc != XDP_TX:
            self.fail("private", i, pkt, f"verdict {rc}")
        p = parse(pkt)
        if out[:6] != bytes.fromhex(CLIENT_MAC.replace(":", "")) or out[6:12] != bytes.fromhex(PUB_MAC.replace(":", "")):
            self.fail("private", i, pkt, f"a reply to MACs no client used: {out[:12].hex()}")
        if p.frag and p.frag[0] == "later":
            vip = self.frags.get((p.frag[1], 1))
            a, alen = (p.l3 + 12, 4) if p.fam == 4 else (p.l3 + 8, 16)
            same = set(range(12, len(pkt))) - set(range(a, a + alen)) - ({p.l3 + 10, p.l3 + 11} if p.fam == 4 else set())
            if vip is None or out[a:a + alen] != vip[0] or any(out[k] != pkt[k] for k in same):
                self.fail("private", i, pkt, f"a later fragment of no NAT reply's datagram, or not from its "
                          f"VIP: {out.hex()}")
            return
        if p.ok:
            vip = self.nat.get((p.proto, p.saddr, p.sport, p.daddr, p.dport))
            if vip is None:
                self.fail("private", i, pkt, "a reply of no NAT flow (or from another real server) sent to the client")
            a = p.l3 + (12 if p.fam == 4 else 8)
            alen = 4 if p.fam == 4 else 16
            if out[a:a + alen] != vip[0] or struct.unpack_from("!H", out, p.l4)[0] != vip[1] or len(out) != len(pkt):
                self.fail("private", i, pkt, f"the reply is not from the flow's VIP:port: {out.hex()}")
            if p.frag:
                self.frags[(p.frag[1], 1)] = vip
            return
        q = icmp_quote(pkt, p)
        # a real server's error about a packet the director sent it: quoted client -> real
        if q is None or (q[0], q[2], q[4], q[1], q[3]) not in self.nat:
            self.fail("private", i, pkt, "an ICMP error about no NAT flow sent to the client")


def decap_model(pkt: bytes) -> tuple[int, bytes | None]:
    """lb_decap.c's verdict and output (None: the same bytes)"""
    if len(pkt) < 14:
        return XDP_PASS, None
    et = struct.unpack_from("!H", pkt, 12)[0]
    if et == 0x0800:
        if len(pkt) < 34 or pkt[14] >> 4 != 4 or pkt[14] & 15 < 5:
            return XDP_PASS, None
        if pkt[23] != 4 or struct.unpack_from("!H", pkt, 20)[0] & 0x3FFF:
            return XDP_PASS, None
        outer, src, dst, inner_v, fam = (pkt[14] & 15) * 4, pkt[26:30], pkt[30:34], 4, 4
    elif et == 0x86DD:
        if len(pkt) < 54 or pkt[14] >> 4 != 6 or pkt[20] != 41:
            return XDP_PASS, None
        outer, src, dst, inner_v, fam = 40, pkt[22:38], pkt[38:54], 6, 6
    else:
        return XDP_PASS, None
    if dst not in {a.packed for a in DECAP_DSTS}:
        return XDP_PASS, None
    if src not in {d.packed for d in DIRECTORS if d.version == fam}:
        return XDP_DROP, None
    inner = 14 + outer
    if inner + (20 if inner_v == 4 else 40) > len(pkt) or pkt[inner] >> 4 != inner_v:
        return XDP_DROP, None
    # to a VIP (--vip) only: a tunnel from a forged director source to any other address is dropped
    vip = pkt[inner + 16:inner + 20] if inner_v == 4 else pkt[inner + 24:inner + 40]
    if vip not in {v.packed for v in DECAP_VIPS}:
        DECAP_SEEN["not_to_a_vip"] += 1
        return XDP_DROP, None
    # RFC 6040: the outer header's Congestion Experienced onto an ECN-capable inner header
    # (IPv4 with an incremental update of its checksum), a not-ECN-capable one dropped
    outer_ecn = pkt[15] & 3 if fam == 4 else (pkt[15] >> 4) & 3
    b = bytearray(pkt)
    if outer_ecn == 3:
        if inner_v == 4:
            if inner + 20 > len(b) or b[inner + 1] & 3 == 0:
                return XDP_DROP, None
            if b[inner + 1] & 3 != 3:
                old = struct.unpack_from("!H", b, inner)[0]
                b[inner + 1] |= 3
                new = struct.unpack_from("!H", b, inner)[0]
                total = (~struct.unpack_from("!H", b, inner + 10)[0] & 0xFFFF) + (~old & 0xFFFF) + new
                total = (total & 0xFFFF) + (total >> 16)
                total = (total & 0xFFFF) + (total >> 16)
                struct.pack_into("!H", b, inner + 10, ~total & 0xFFFF)
        else:
            if inner + 2 > len(b) or b[inner + 1] & 0x30 == 0:
                return XDP_DROP, None
            b[inner + 1] |= 0x30
    if len(b) - outer < 14:                    # bpf_xdp_adjust_head refuses: not decapsulated
        return XDP_PASS, None if b == pkt else bytes(b)
    return XDP_PASS, bytes(b[:12]) + (b"\x08\x00" if inner_v == 4 else b"\x86\xdd") + bytes(b[inner:])


# ---- the packets ------------------------------------------------------------------------------

C_MAC, P_MAC = CLIENT_MAC, PUB_MAC


class Gen:
    """Valid packets (scapy) and their mutations."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.bases = self._bases()

    def _l3(self, fam, src, dst, **kw):
        return IP(src=src, dst=dst, **kw) if fam == 4 else IPv6(src=src, dst=dst, **{k: v for k, v in kw.items()
                                                                                      if k in ("hlim", "tc")})

    def _bases(self) -> list[bytes]:
        r = self.rng
        out = []
        e = Ether(src=C_MAC, dst=P_MAC)
        clients4 = [V4["client"], "198.18.0.3", "198.18.0.4"]
        clients6 = [V6["client"], "2001:2:0:9::3"]
        flags = ["S", "A", "PA", "F", "FA", "R", "RA", "SA", "SR", "SF", "SEC", "U", "", "SAFRPU"]
        for fam, v, clients in ((4, V4, clients4), (6, V6, clients6)):
            for key in ("dr", "nat", "tun", "per", "fwm", "other"):
                if key not in v:
                    continue
                vip = v[key]
                ports = [80, 81, 53, 21, 30005, 22] if key != "other" else [22, 80]
                for c in clients:
                    for port in ports:
                        for sp in (40000, 40001):
                            for f in flags:
                                out.append(bytes(e / self._l3(fam, c, vip) / TCP(sport=sp, dport=port, flags=f) / b"x"))
                            out.append(bytes(e / self._l3(fam, c, vip) / UDP(sport=sp, dport=port) / b"q"))
                            if fam == 4 and key == "tun":        # DF: a client doing path MTU discovery
                                for f in ("S", "A", "PA"):
                                    out.append(bytes(e / IP(src=c, dst=vip, flags="DF") /
                                                     TCP(sport=sp, dport=port, flags=f) / b"x"))
                                out.append(bytes(e / IP(src=c, dst=vip, flags="DF") / UDP(sport=sp, dport=port) / b"q"))
                # too big for a tunnel (and the same with and without DF)
                for c in clients[:1]:
                    big = TCP(sport=40000, dport=80, flags="A") / (b"z" * 1490)
                    out.append(bytes(e / self._l3(fam, c, vip, **({"flags": "DF"} if fam == 4 else {})) / big))
                    out.append(bytes(e / self._l3(fam, c, vip) / big))
                    out.append(bytes(e / self._l3(fam, c, vip) / UDP(sport=40000, dport=53) / (b"z" * 1490)))
        # from the VIP to itself (a LAND attack's: lb_from_itself), TCP SYNs and UDP, and too big
        # for a tunnel
        for fam, v in ((4, V4), (6, V6)):
            for key in ("dr", "nat", "tun", "per", "fwm"):
                if key not in v:
                    continue
                vip = v[key]
                for port in (80, 53, 21, 30005):
                    out.append(bytes(e / self._l3(fam, vip, vip) / TCP(sport=port, dport=port, flags="S") / b"x"))
                    out.append(bytes(e / self._l3(fam, vip, vip) / UDP(sport=40000, dport=port) / b"q"))
            out.append(bytes(e / self._l3(fam, v["tun"], v["tun"], **({"flags": "DF"} if fam == 4 else {})) /
                             TCP(sport=40000, dport=80, flags="S") / (b"z" * 1490)))
            # from another VIP of the director's (lb_from_a_vip): the same, and too big for a tunnel
            keys = [k for k in ("dr", "nat", "tun", "per", "fwm") if k in v]
            for src in keys:
                for dst in keys:
                    if src != dst:
                        for port in (80, 53, 21):
                            out.append(bytes(e / self._l3(fam, v[src], v[dst]) / TCP(sport=41000, dport=port, flags="S")
                                             / b"x"))
                            out.append(bytes(e / self._l3(fam, v[src], v[dst]) / UDP(sport=41000, dport=port) / b"q"))
            out.append(bytes(e / self._l3(fam, v["dr"], v["tun"], **({"flags": "DF"} if fam == 4 else {})) /
                             TCP(sport=41001, dport=80, flags="S") / (b"z" * 1490)))
        # IPv4 options, VLAN tags, fragments, ARP, echo
        for vip in (V4["dr"], V4["nat"], V4["tun"]):
            out.append(bytes(e / IP(src=V4["client"], dst=vip, options=[IPOption_NOP()] * 4 + [IPOption_RR()]) /
                             TCP(sport=40000, dport=80, flags="S")))
            out.append(bytes(Ether(src=C_MAC, dst=P_MAC) / Dot1Q(vlan=5) / IP(src=V4["client"], dst=vip) /
                             TCP(sport=40000, dport=80, flags="S")))
            out.append(bytes(Ether(src=C_MAC, dst=P_MAC) / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP(src=V4["client"], dst=vip) /
                             TCP(sport=40000, dport=80, flags="S")))
            out.append(bytes(e / IP(src=V4["client"], dst=vip, flags="MF") / TCP(sport=40000, dport=80, flags="S")))
            out.append(bytes(e / IP(src=V4["client"], dst=vip, frag=8) / b"fragment"))
            # a datagram in fragments (lb_frag.h): the rest follow the first where it came first
            for l4 in (UDP(sport=40000, dport=53), TCP(sport=40000, dport=80, flags="PA")):
                for f in fragment(IP(src=V4["client"], dst=vip, id=4242) / l4 / (b"f" * 3000), fragsize=1400):
                    out.append(bytes(e / f))
            out.append(bytes(e / IP(src=V4["client"], dst=vip) / ICMP(type=8) / b"ping"))
        out.append(bytes(Ether(src=C_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=V4["dr"])))
        # IPv6 extension-header chains, loops (each header naming another hop-by-hop), fragments
        for vip in (V6["dr"], V6["nat"], V6["tun"]):
            tcp = TCP(sport=40000, dport=80, flags="S")
            for chain in ([IPv6ExtHdrHopByHop()], [IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting()],
                          [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt()],
                          [IPv6ExtHdrHopByHop()] * 5, [IPv6ExtHdrFragment()], [IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment()],
                          [IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 200)])]):
                pkt = IPv6(src=V6["client"], dst=vip)
                for h in chain:
                    pkt = pkt / h
                out.append(bytes(e / pkt / tcp))
            out.append(bytes(e / IPv6(src=V6["client"], dst=vip) / ICMPv6EchoRequest()))
            # a datagram in fragments: a flow's first packet whole, then one in fragments (an IPv6
            # first fragment follows only a connection), and one of a new flow in fragments
            for l4 in (UDP(sport=40000, dport=53), TCP(sport=40000, dport=80, flags="PA")):
                for sport, ident in ((40000, 5252), (40002, 5353)):
                    l4.sport = sport
                    if sport == 40000 and isinstance(l4, UDP):
                        out.append(bytes(e / IPv6(src=V6["client"], dst=vip) / l4 / b"q"))
                    for f in fragment6(IPv6(src=V6["client"], dst=vip) / IPv6ExtHdrFragment(id=ident) / l4 /
                                       (b"f" * 3000), 1400):
                        out.append(bytes(e / f))
        # ICMP errors about the flows above (quoted VIP:vport -> client:cport) and about anything
        for fam, v, clients in ((4, V4, clients4), (6, V6, clients6)):
            for key in ("dr", "nat", "tun"):
                vip = v[key]
                for c in clients:
                    for sp in (40000, 40001):
                        for qproto in ("tcp", "udp"):
                            port = 80 if qproto == "tcp" else 53
                            if fam == 4:
                                q = IPerror(src=vip, dst=c, flags="DF") / (TCPerror(sport=port, dport=sp) if qproto == "tcp"
                                                                           else UDPerror(sport=port, dport=sp))
                                for t, code in ((3, 4), (3, 3), (11, 0), (4, 0), (12, 0)):
                                    out.append(bytes(e / IP(src="198.18.0.254", dst=vip) / ICMP(type=t, code=code) / q))
                                out.append(bytes(e / IP(src="198.18.0.254", dst=vip) / ICMP(type=3, code=4) / q /
                                                 (b"t" * 1480)))
                            else:
                                q = IPerror6(src=vip, dst=c) / (TCPerror(sport=port, dport=sp) if qproto == "tcp"
                                                                else UDPerror(sport=port, dport=sp))
                                out.append(bytes(e / IPv6(src="2001:2:0:9::fe", dst=vip) / ICMPv6PacketTooBig() / q))
                                out.append(bytes(e / IPv6(src="2001:2:0:9::fe", dst=vip) / ICMPv6DestUnreach() / q))
                                out.append(bytes(e / IPv6(src="2001:2:0:9::fe", dst=vip) / ICMPv6PacketTooBig() / q /
                                                 (b"t" * 1400)))
                            # errors quoting a datagram's first fragment (relayed) and a later one (not)
                            l4q = TCPerror(sport=port, dport=sp) if qproto == "tcp" else UDPerror(sport=port, dport=sp)
                            if fam == 4:
                                for fr in (dict(flags="MF"), dict(frag=185)):
                                    out.append(bytes(e / IP(src="198.18.0.254", dst=vip) / ICMP(type=3, code=1) /
                                                     IPerror(src=vip, dst=c, **fr) / l4q))
                            else:
                                nh = 6 if qproto == "tcp" else 17
                                for fo in (0, 185):
                                    for pre in ([], [IPv6ExtHdrDestOpt(nh=44)]):
                                        hdrs = IPerror6(src=vip, dst=c)
                                        for h in pre:
                                            hdrs = hdrs / h
                                        out.append(bytes(e / IPv6(src="2001:2:0:9::fe", dst=vip) /
                                                         ICMPv6PacketTooBig() / hdrs /
                                                         IPv6ExtHdrFragment(nh=nh, m=1, offset=fo, id=99) / l4q))
        # NAT replies (real -> client) and real servers' errors, for the private side
        for fam, v, clients in ((4, V4, clients4), (6, V6, clients6)):
            for real in v["nat_r"] + v["dr_r"]:
                for c in clients:
                    for sp in (40000, 40001):
                        for f in ("SA", "A", "FA", "R"):
                            out.append(bytes(Ether(src=real_mac(real), dst=PRIV_MAC) / self._l3(fam, real, c) /
                                             TCP(sport=8080, dport=sp, flags=f) / b"reply"))
                        out.append(bytes(Ether(src=real_mac(real), dst=PRIV_MAC) / self._l3(fam, real, c) /
                                         UDP(sport=5353, dport=sp) / b"reply"))
                        if fam == 4 and sp == 40000:      # an answer in fragments
                            for f in fragment(IP(src=real, dst=c, id=4343) / UDP(sport=5353, dport=sp) / (b"r" * 3000),
                                              fragsize=1400):
                                out.append(bytes(Ether(src=real_mac(real), dst=PRIV_MAC) / f))
                        if fam == 6 and sp == 40000:
                            for f in fragment6(IPv6(src=real, dst=c) / IPv6ExtHdrFragment(id=4343) /
                                               UDP(sport=5353, dport=sp) / (b"r" * 3000), 1400):
                                out.append(bytes(Ether(src=real_mac(real), dst=PRIV_MAC) / f))
                        quote = (IPerror(src=c, dst=real) / TCPerror(sport=sp, dport=8080)) if fam == 4 else \
                            (IPerror6(src=c, dst=real) / TCPerror(sport=sp, dport=8080))
                        icmp = ICMP(type=3, code=4) if fam == 4 else ICMPv6PacketTooBig()
                        out.append(bytes(Ether(src=real_mac(real), dst=PRIV_MAC) / self._l3(fam, real, c) / icmp / quote))
                        # about a request's first fragment (relayed as a whole one's) and a later one's (not)
                        for first in (True, False):
                            fq = (IPerror(src=c, dst=real, flags="MF", frag=0 if first else 185) if fam == 4 else
                                  IPerror6(src=c, dst=real) / IPv6ExtHdrFragment(nh=17, m=1, offset=0 if first else 185))
                            out.append(bytes(Ether(src=real_mac(real), dst=PRIV_MAC) / self._l3(fam, real, c) / icmp /
                                             fq / UDPerror(sport=sp, dport=5353)))
        # tunnels to the real servers (the decap side), from directors and from others, and nests
        for fam, v in ((4, V4), (6, V6)):
            for real in v["tun_r"] + v["dr_r"][:1]:
                for src in (str(PRIV_ADDR[fam]), v["other"], v["client"]):
                    for inner_fam, iv in ((4, V4), (6, V6)):
                        inner = self._l3(inner_fam, iv["client"], iv["tun"]) / TCP(sport=40000, dport=80, flags="S")
                        outer = IP(src=src, dst=real, proto=4) if fam == 4 else IPv6(src=src, dst=real, nh=41)
                        out.append(bytes(Ether(src=PRIV_MAC, dst=real_mac(real)) / outer / inner))
                        out.append(bytes(Ether(src=PRIV_MAC, dst=real_mac(real)) / outer / outer / inner))
                        # to another address than a VIP (the real server's own, another host's)
                        for elsewhere in (iv["other"], iv["tun_r"][0]):
                            stray = self._l3(inner_fam, iv["client"], elsewhere) / TCP(sport=40000, dport=80, flags="S")
                            out.append(bytes(Ether(src=PRIV_MAC, dst=real_mac(real)) / outer / stray))
                        # Congestion Experienced on the outer header, the inner ECN-capable or not
                        ce = IP(src=src, dst=real, proto=4, tos=3) if fam == 4 else IPv6(src=src, dst=real, nh=41, tc=3)
                        for ecn in (0, 2):
                            l3 = IP(src=iv["client"], dst=iv["tun"], tos=ecn) if inner_fam == 4 else \
                                IPv6(src=iv["client"], dst=iv["tun"], tc=ecn)
                            out.append(bytes(Ether(src=PRIV_MAC, dst=real_mac(real)) / ce / l3 /
                                             TCP(sport=40000, dport=80, flags="S")))
                # a tunnel to a VIP (public side: not TCP/UDP, passes)
                out.append(bytes(e / (IP(src=v["client"], dst=v["dr"], proto=4) if fam == 4 else
                                      IPv6(src=v["client"], dst=v["dr"], nh=41)) /
                                 self._l3(fam, v["client"], v["dr"]) / TCP(sport=40000, dport=80, flags="S")))
        r.shuffle(out)
        return out

    def mutate(self, b: bytes) -> bytes:
        r = self.rng
        k = r.randrange(12)
        b = bytearray(b)
        if k == 0 and len(b) > 14:
            return bytes(b[:r.randrange(14, len(b))])                     # truncated
        if k == 1 and len(b) > 34:
            off = 18 if b[12:14] in (b"\x81\x00", b"\x88\xa8") else 14
            b[off] = (b[off] & 0xF0) | r.randrange(16)                    # IHL (or IPv6's traffic class)
            return bytes(b)
        if k == 2 and len(b) > 20:
            off = 18 if b[12:14] in (b"\x81\x00", b"\x88\xa8") else 14
            b[off] = (r.randrange(16) << 4) | (b[off] & 15)               # version
            return bytes(b)
        if k == 3 and len(b) > 60:
            for _ in range(r.randrange(1, 5)):
                b[r.randrange(12, min(len(b), 120))] = r.randrange(256)   # header bytes (not the MACs)
            return bytes(b)
        if k == 4 and len(b) > 60:
            for off in (34 + 13, 54 + 13, 38 + 13):                        # the TCP flags byte's places
                if off < len(b):
                    b[off] = r.randrange(256)
            return bytes(b)
        if k == 5 and len(b) > 40:
            for off in (16, 17, 18, 19, 24, 25):                          # lengths, checksums
                b[off] = r.randrange(256)
            return bytes(b)
        if k == 6:
            return bytes(r.randrange(256) for _ in range(r.randrange(14, 200)))   # random bytes
        if k == 7 and len(b) > 14:
            return bytes(b[:14]) + bytes(r.randrange(256) for _ in range(r.randrange(0, 200)))
        if k == 8 and len(b) > 54:
            b[20] = r.choice([0, 43, 60, 44, 6, 17, 58, 41, 59])          # IPv6 next header
            if len(b) > 55:
                b[54 + 1] = r.randrange(256)                              # an extension's length
            return bytes(b)
        if k == 9:
            return self.partial(bytes(b))
        return bytes(b)                                                   # as built

    def partial(self, b: bytes) -> bytes:
        """b as a sender with tx checksum offload sends it: the L4 checksum field holds only the
        pseudo header's sum (lb completes it before forwarding); now and then for a segment
        the IP header makes longer than the frame (lb must send that one as it is, on a flow it
        knows; a new connection's is the kernel's to drop: not_routable)"""
        p = parse(b)
        if not p.ok or p.l4 + (18 if p.proto == 6 else 8) > len(b):
            return b
        b = bytearray(b)
        if self.rng.random() < 0.2:
            at = p.l3 + (2 if p.fam == 4 else 4)
            struct.pack_into("!H", b, at, (struct.unpack_from("!H", b, at)[0] + self.rng.choice((1, 2, 64, 3000))) & 0xFFFF)
            p = parse(bytes(b))
        seg = (p.iplen - (p.l4 - p.l3)) & 0xFFFF
        struct.pack_into("!H", b, p.l4 + (16 if p.proto == 6 else 6), pseudo_sum(p.saddr, p.daddr, p.proto, seg))
        return bytes(b)

    MTU4 = (0, 1, 68, 88, 89, 108, 576, 1279, 1280, 1400, 1480, 1499, 1500, 1501, 9000, 65535)
    MTU6 = (0, 1, 1279, 1280, 1281, 1320, 1321, 1400, 1460, 1500, 1501, 9000, 65535, 0xFFFFFFFF)

    def tunnel_error(self, outer: bytes) -> bytes:
        """A router's (or the real server's) ICMP error about `outer`, a packet lb tunneled (its IP
        header on, as lb sent it): to our tunnel source mostly, else to another address; quoting
        it whole or cut anywhere; now and then its outer source or destination, or the inner
        packet's addresses, ports, protocol, DF or offset altered; any error type and code (IPv4's
        frag needed, IPv6's Packet Too Big with MTUs around every bound) or an informational one;
        then sometimes one of the usual mutations."""
        r = self.rng
        fam = 4 if outer[0] >> 4 == 4 else 6
        v = V4 if fam == 4 else V6
        o = bytearray(outer)
        addrs = [ip(a).packed for a in (v["client"], v["other"], v["tun"], v["dr"], *v["tun_r"], *v["dr_r"])] + \
            [PRIV_ADDR[fam].packed]
        pick = r.random
        if fam == 4:
            if pick() < 0.05:
                o[12:16] = r.choice(addrs)                                # the outer source
            if pick() < 0.08:
                o[16:20] = r.choice(addrs)                                # the outer destination
            if pick() < 0.03:
                o[9] = r.choice((41, 6, 17, 47))                          # not IPIP
            if pick() < 0.03:
                o[6:8] = struct.pack("!H", r.choice((0x2000, 0x00B9, 0x4000)))   # MF, an offset, DF
            if pick() < 0.03:                                             # options on the outer header
                o = bytearray(bytes([o[0] + 1])) + o[1:20] + b"\x01\x01\x01\x00" + o[20:]
            inner = (o[0] & 15) * 4
            ihl = (o[inner] & 15) * 4
            if pick() < 0.5:
                o[inner + 6] |= 0x40                                      # DF (a client doing PMTU discovery)
            if pick() < 0.08:
                o[inner + 6] &= ~0x40 & 0xFF                              # no DF
            if pick() < 0.03:
                o[inner + 6:inner + 8] = struct.pack("!H", r.choice((0x2000, 0x00B9, 0x40B9)))
            if pick() < 0.03:
                o[inner + 9] = r.choice((6, 17, 1, 4))
            if pick() < 0.05:
                o[inner + 12:inner + 16] = r.choice(addrs)
            if pick() < 0.05:
                o[inner + 16:inner + 20] = r.choice(addrs)
            l4 = inner + ihl
        else:
            if pick() < 0.05:
                o[8:24] = r.choice(addrs)
            if pick() < 0.08:
                o[24:40] = r.choice(addrs)
            if pick() < 0.03:
                o[6] = r.choice((4, 6, 17, 0))
            inner = 40
            if pick() < 0.05:
                o[inner + 8:inner + 24] = r.choice(addrs)
            if pick() < 0.05:
                o[inner + 24:inner + 40] = r.choice(addrs)
            if pick() < 0.03:
                o[inner + 6] = r.choice((6, 17, 0, 44, 58))
            nh, cur = skip_ext(bytes(o), o[inner + 6], inner + 40, frag=True)
            l4 = cur if nh is not None else inner + 40
        if l4 + 4 <= len(o) and pick() < 0.1:                            # ports: another flow's, or none's
            at = l4 + r.choice((0, 2))
            o[at:at + 2] = struct.pack("!H", r.choice((40000, 40001, 40002, 80, 53, 22, r.randrange(65536))))
        quote = bytes(o) if pick() < 0.6 else bytes(o[:r.randrange(len(o) + 1)])
        # the error
        if fam == 4:
            k = pick()
            if k < 0.4:
                t, code, rest = 3, 4, r.choice(self.MTU4) | (r.randrange(65536) << 16 if pick() < 0.1 else 0)
            elif k < 0.55:
                t, code, rest = 3, r.randrange(16), 0
            elif k < 0.62:
                t, code, rest = 4, 0, 0
            elif k < 0.75:
                t, code, rest = 11, r.randrange(2), 0
            elif k < 0.82:
                t, code, rest = 12, r.randrange(3), 20 << 24
            else:
                t, code, rest = r.choice((0, 5, 8, 13, 14, 17, 40, r.randrange(256))), r.randrange(3), r.randrange(1 << 32)
            if pick() < 0.1:
                rest = r.randrange(1 << 32)
        else:
            k = pick()
            if k < 0.4:
                t, code, rest = 2, 0, r.choice(self.MTU6)
            elif k < 0.6:
                t, code, rest = 1, r.randrange(8), 0
            elif k < 0.72:
                t, code, rest = 3, r.randrange(2), 0
            elif k < 0.8:
                t, code, rest = 4, r.randrange(4), r.choice((6, 8, 24, 40))
            else:
                t, code, rest = r.choice((128, 129, 133, 134, 135, 136, 137, 143, r.randrange(256))), 0, r.randrange(1 << 32)
            if pick() < 0.1:
                rest = r.randrange(1 << 32)
        icmp = bytes((t, code)) + b"\0\0" + struct.pack("!I", rest) + quote
        # to our tunnel source mostly, else anywhere; when the quote's outer source was altered,
        # often to that address (lb_icmp_tunnel checks both against the real server's tunnel source)
        osrc = bytes(o[12:16] if fam == 4 else o[8:24])
        dst = osrc if osrc != PRIV_ADDR[fam].packed and pick() < 0.5 else \
            PRIV_ADDR[fam].packed if pick() < 0.8 else r.choice(addrs)
        src = ip(ROUTER[fam]).packed if pick() < 0.7 else outer[16:20] if fam == 4 else outer[24:40]
        if fam == 4:
            icmp = icmp[:2] + struct.pack("!H", inet_csum(icmp)) + icmp[4:]
            opts = b"\x01\x01\x01\x00" if pick() < 0.05 else b""
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45 + len(opts) // 4, 0, 20 + len(opts) + len(icmp), 0, 0, 250, 1, 0,
                              src, dst) + opts
            hdr = hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:]
            l3, et = hdr + icmp, b"\x08\x00"
        else:
            icmp = icmp[:2] + struct.pack("!H", inet_csum(src + dst + struct.pack("!II", len(icmp), 58) + icmp)) + icmp[4:]
            ext = b"\x3a\x00\x01\x04\x00\x00\x00\x00" if pick() < 0.05 else b""   # a hop-by-hop header
            l3 = struct.pack("!IHBB", 0x60000000, len(ext) + len(icmp), 0 if ext else 58, 250) + src + dst + ext + icmp
            et = b"\x86\xdd"
        eth = bytes.fromhex(PRIV_MAC.replace(":", "")) + bytes.fromhex(real_mac(ip(outer[16:20] if fam == 4 else outer[24:40]))
                                                                       .replace(":", ""))
        if pick() < 0.05:
            eth += b"\x81\x00\x00\x05"                                   # a VLAN tag
        b = eth + et + l3
        return b if pick() < 0.6 else self.mutate(b)

    def packets(self, n: int):
        """n packets: every truncation of some base packets, then mutations and bases"""
        r = self.rng
        out = []
        for base in self.bases[:60]:
            out += [base[:k] for k in range(14, len(base))]
        while len(out) < n:
            base = r.choice(self.bases)
            out.append(base if r.random() < 0.25 else self.mutate(base))
        return out[:n]


# ---- running -----------------------------------------------------------------------------------

def run_each(prog_fd: int, pkts: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(errno, XDP action, output) of each packet, one BPF_PROG_TEST_RUN each (lb._bpfbatch)"""
    from lb import _bpfbatch

    ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
    n = len(pkts)
    blob = ffi.from_buffer(b"".join(pkts))
    lens = ffi.new("unsigned[]", [len(p) for p in pkts])
    out = ffi.new("char[]", n * OUT_CAP)
    olens = ffi.new("unsigned[]", n)
    rcs = ffi.new("unsigned[]", n)
    errs = ffi.new("int[]", n)
    lib.bb_test_run_each(prog_fd, blob, lens, n, out, OUT_CAP, olens, rcs, errs)
    buf = ffi.buffer(out, n * OUT_CAP)
    return [(errs[i], rcs[i], bytes(buf[i * OUT_CAP:i * OUT_CAP + olens[i]])) for i in range(n)]


@pytest.fixture(scope="module")
def programs():
    with loaded_dataplane("fuzz", sizes=Sizes(16, 256, 16, 65536, 65536), table=TABLE) as dp:
        b, fn = decap.load(DECAP_DSTS, DIRECTORS, DECAP_VIPS)
        try:
            yield dp, fn
        finally:
            b.close()


def test_fuzz_every_program(programs):
    dp, decap_fn = programs
    rng = random.Random(SEED)
    gen = Gen(rng)
    model = Model(SEED)
    pkts = gen.packets(N)
    t0 = time.monotonic()
    outers: list[bytes] = []         # the tunnel packets lb sent: the last batch's, and a pool of older ones
    others: list[bytes] = []         # the last batch's DR / NAT flows' packets, put in a tunnel header
    pool: list[bytes] = []
    for lo in range(0, N, BATCH):
        batch = pkts[lo:lo + BATCH]
        if outers or pool:
            # errors about the tunnel's packets of the batch before (and older ones; a few about DR
            # and NAT flows' packets, put in a tunnel header)
            for j in rng.sample(range(len(batch)), int(len(batch) * TUNNEL_ERRORS)):
                k = rng.random()
                batch[j] = pkts[lo + j] = gen.tunnel_error(rng.choice(
                    others if others and k < 0.08 else outers if outers and k < 0.85 else pool or outers))
        before = dp.counters()
        model.batch_t0 = time.monotonic()
        model.batch_relayed = model.batch_limited = 0
        pub = run_each(dp.fns["lb_xdp_public"].fd, batch)
        priv = run_each(dp.fns["lb_xdp_private"].fd, batch)
        dec = run_each(decap_fn.fd, batch)
        grd = run_each(dp.fns["lb_xdp_guard"].fd, batch)
        # checked in the order the programs ran: the whole batch's public side (which opens the
        # flows), then its private side, then decap, then the guard
        for name, results in (("public", pub), ("private", priv), ("decap", dec), ("guard", grd)):
            for j, (err, rc, _out) in enumerate(results):
                if err:
                    model.fail(name, lo + j, batch[j], f"BPF_PROG_TEST_RUN refused the run: {os.strerror(err)}")
                if rc == XDP_ABORTED:
                    model.fail(name, lo + j, batch[j], "XDP_ABORTED")
        for j, pkt in enumerate(batch):
            model.public(lo + j, pkt, pub[j][1], pub[j][2])
        for j, pkt in enumerate(batch):
            model.private(lo + j, pkt, priv[j][1], priv[j][2])
        for j, pkt in enumerate(batch):
            i = lo + j
            want_rc, want_out = decap_model(pkt)
            if dec[j][1] != want_rc or dec[j][2] != (pkt if want_out is None else want_out):
                model.fail("decap", i, pkt, f"verdict {dec[j][1]}, output {dec[j][2].hex()}; the model says "
                           f"{want_rc}, {(want_out or pkt).hex()}")
            if grd[j][1] != XDP_PASS or grd[j][2] != pkt:
                model.fail("guard", i, pkt, f"verdict {grd[j][1]}, output {grd[j][2].hex()}; with a live "
                           "lease (none armed) the model says XDP_PASS, the same bytes")
        # every tunnel error relayed was one the model says is, and every one dropped was the rate
        # limit's (which the too-big answers share)
        after = dp.counters()
        relayed_n = after["tunnel_error_relayed"] - before["tunnel_error_relayed"]
        limited_n = after["icmp_rate_limited"] - before["icmp_rate_limited"]
        assert relayed_n == model.batch_relayed and limited_n >= model.batch_limited, \
            (f"fuzz seed {SEED}, packets {lo}..{lo + len(batch)}: tunnel_error_relayed +{relayed_n}, "
             f"icmp_rate_limited +{limited_n}; the model saw {model.batch_relayed} relayed, "
             f"{model.batch_limited} dropped")
        outers, others = model.outers, model.others
        pool = (pool + outers)[-3000:]
        model.outers, model.others = [], []
    # the run exercised what it claims: packets of every kind were forwarded, answered and dropped
    s = model.seen
    assert s["redirect"] > 1000 and s["tx"] > 0 and s["drop"] > 0 and s["pass"] > N // 4, (SEED, s)
    assert len(model.flows) > 50 and len(model.nat) > 10, SEED
    c = dp.counters()            # partial checksums completed, and sent as they were past the frame
    assert c["partial_checksum_completed"] > 0 and c["partial_checksum_uncompleted"] > 0, (SEED, c)
    assert c["fragment_forwarded"] > 0, (SEED, c)       # later fragments followed their first
    assert model.later_forwarded[4] > 0 and model.later_forwarded[6] > 0, (SEED, model.later_forwarded)
    assert DECAP_SEEN["not_to_a_vip"] > 0, SEED
    assert model.land_passed > 0 and c["not_routable"] > 0, (SEED, model.land_passed, c)   # lb_from_itself's
    assert model.from_vip_passed > 0, (SEED, model.from_vip_passed)                        # lb_from_a_vip's
    # errors about the tunnel's packets were relayed, by both programs, in both families
    ts = model.tun_seen
    assert all(ts.get((prog, fam, kind), 0) > 20 for prog in ("public", "private") for fam in (4, 6)
               for kind in ("tx", "mtu")), (SEED, ts)
    assert c["xmit_failed"] == 0, (SEED, c)
    print(f"fuzz seed {SEED}: {N} packets x 4 programs in {time.monotonic() - t0:.1f} s, {s}; tunnel errors {ts}")
