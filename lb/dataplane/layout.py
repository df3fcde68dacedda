"""Byte layouts of the BPF maps: a mirror of bpf/lb_structs.h and bpf/lb_consts.h.

tests/test_layout.py checks every size and field offset against the structs bcc compiles.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# lb_consts.h
LB_NONE = 0xFFFFFFFF
POS_HEAD = 0xFFFFFFFF
AF_INET, AF_INET6 = 4, 6
FWD_NAT, FWD_LOCAL, FWD_TUNNEL, FWD_DR = 0, 1, 2, 3
FORWARD_NAMES = {FWD_NAT: "Masq", FWD_LOCAL: "Local", FWD_TUNNEL: "Tunnel", FWD_DR: "Route"}
FORWARDS = {"nat": FWD_NAT, "dr": FWD_DR, "tunnel": FWD_TUNNEL}    # RealSpec.forward -> lb_real.fwd
FORWARD_OF = {v: k for k, v in FORWARDS.items()}
REAL_F_OVERLOAD = 0x1
REAL_F_NO_NEXTHOP = 0x2
REAL_F_DRAINING = 0x4        # removed from the config, draining: its templates are invalid
SVC_F_SCHED_FALLBACK, SVC_F_SCHED_PORT = 0x1, 0x2   # lb_svc.flags (IP_VS_SVC_F_SCHED1/2)
SVC_F_SLOPPY = 0x4           # lb_sloppy.h: a TCP packet without an entry is scheduled too (active-active)
# scheduler flag name -> (scheduler, lb_svc.flags bit), as ipvsadm spells them
SCHED_FLAGS = {"sh-fallback": ("sh", SVC_F_SCHED_FALLBACK), "sh-port": ("sh", SVC_F_SCHED_PORT),
               "mh-fallback": ("mh", SVC_F_SCHED_FALLBACK), "mh-port": ("mh", SVC_F_SCHED_PORT)}
FWM_RANGES = 16              # LB_FWM_RANGES: port ranges per (VIP, protocol)
G_FWM_KEYS, G_EXPIRE_NODEST, N_GLOBALS = 0, 1, 8     # lb_globals
G_LBLCR_EXPIRATION = 2       # lb_globals: lblcr_expiration, seconds
CONN_F_INACTIVE, CONN_F_OUT, CONN_F_PERSIST = 0x1, 0x2, 0x4

# scheduler name -> LB_SCHED_* (also the tail-call slot LB_PROG_SCHED_BASE + value)
SCHEDULERS = {"rr": 0, "wrr": 1, "wlc": 2, "lc": 3, "sed": 4, "nq": 5, "fo": 6, "ovf": 7,
              "dh": 8, "sh": 9, "mh": 10, "lblc": 11, "lblcr": 12, "twos": 13}
# schedulers with an entry per (service, destination address) in lb_lblc / lb_lblcr
LBLC_SCHEDULERS = ("lblc", "lblcr")
LBLCR_SET_SIZE = 8           # LB_LBLCR_SET_SIZE: members of an lblcr server set
# schedulers whose service has a lb_sched_buckets entry (256 list positions, lb_sched.h)
BUCKET_SCHEDULERS = ("dh", "sh")
SCHEDULER_NAMES = {v: k for k, v in SCHEDULERS.items()}
PROG_NEW_CONN = 0
PROG_SCHED_BASE = 1
PROG_MAX = 16
PROG_PERSIST = PROG_MAX - 1

TCP_STATES = ["NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK"]
TCP_S = {name: i for i, name in enumerate(TCP_STATES)}
UDP_S_NORMAL = 11
N_TIMEOUTS = 12

COUNTER_NAMES = ["no_real_server", "tcp_not_syn", "fragment", "real_server_gone", "conn_table_full",
                 "tail_call_failed", "tunnel_too_big"]

# lb_structs.h
SVC_KEY = struct.Struct("=16s2sBB")                 # lb_svc_key
SVC = struct.Struct("=16s2sBB8I16s")                # lb_svc
SCHED_STATE = struct.Struct("=Ii")                  # lb_sched_state
DEST = struct.Struct("=3I")                         # lb_dest
REAL = struct.Struct("=16s2sBBIII6s6sIIII16sI")     # lb_real
REAL_CONNS = struct.Struct("=IIII")                 # lb_real_conns: active, inactive, persist, pad
PERSIST_KEY = struct.Struct("=16s16s2sBBI")          # lb_persist_key
PERSIST = struct.Struct("=QII")                     # lb_persist
CONN_KEY = struct.Struct("=16s16s2s2sBBBB")         # lb_conn_key
CONN = struct.Struct("=QIIIIBB2s6s6s16s2s6s")       # lb_conn
STATS = struct.Struct("=5Q")                        # lb_stats
RATES = struct.Struct("=5Q")                        # lb_rates: cps, inpps, outpps, inbps, outbps
SCHED_BUCKETS = struct.Struct("=256I")             # lb_sched_buckets (lb_sched.h)
PORT_RANGE = struct.Struct("=HHI")                  # lb_port_range (host byte order ports)
PORT_RANGES = struct.Struct(f"=II{PORT_RANGE.size * FWM_RANGES}s")   # lb_port_ranges
LBLC_KEY = struct.Struct("=IB3s16s")                # lb_lblc_key: svc, family, pad, addr
LBLC = struct.Struct("=QII")                        # lb_lblc: lastuse_ns, real, pad
LBLCR = struct.Struct(f"=QQII{LBLCR_SET_SIZE}I")    # lb_lblcr: lastuse_ns, lastmod_ns, n, pad, real[]
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")


def pack_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return addr.packed.ljust(16, b"\0")


def unpack_addr(raw: bytes, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw[:16])


def family_of(addr) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def pack_port(port: int) -> bytes:
    return port.to_bytes(2, "big")


def unpack_port(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


PROTO_NUMBERS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {6: "TCP", 17: "UDP"}


@dataclass(frozen=True)
class SvcKey:
    proto: int
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def pack(self) -> bytes:
        return SVC_KEY.pack(pack_addr(self.addr), pack_port(self.port), self.proto, family_of(self.addr))

    @classmethod
    def unpack(cls, raw: bytes) -> "SvcKey":
        a, p, proto, fam = SVC_KEY.unpack(raw)
        return cls(proto, unpack_addr(a, fam), unpack_port(p))


@dataclass
class Svc:
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    proto: int
    sched: int
    nreals: int = 0
    flags: int = 0
    wrr_mw: int = 0
    wrr_di: int = 1
    persist_timeout: int = 0
    fwmark: int = 0
    mh_size: int = 0
    persist_mask: bytes = bytes(16)   # pack_mask(): the netmask or prefix as 16 bytes

    def pack(self) -> bytes:
        return SVC.pack(pack_addr(self.addr), pack_port(self.port), self.proto, family_of(self.addr),
                        self.sched, self.nreals, self.flags, self.wrr_mw, self.wrr_di,
                        self.persist_timeout, self.fwmark, self.mh_size, self.persist_mask)

    @classmethod
    def unpack(cls, raw: bytes) -> "Svc":
        a, p, proto, fam, sched, nreals, flags, mw, di, pt, fwm, mhs, pm = SVC.unpack(raw)
        return cls(unpack_addr(a, fam) if fam else ipaddress.IPv4Address(0), unpack_port(p), proto,
                   sched, nreals, flags, mw, di, pt, fwm, mhs, pm)


@dataclass
class Real:
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    fwd: int
    weight: int
    flags: int = 0
    ifindex: int = 0
    mac: bytes = b"\0" * 6
    src_mac: bytes = b"\0" * 6
    svc: int = 0
    family: int = AF_INET  # 0 marks a removed real server: its connections' packets drop
    u_threshold: int = 0
    l_threshold: int = 0
    pos: int = 0           # position in its service's lb_svc_dests (BPF sets OVERLOAD there)
    tun_src: bytes = bytes(16)   # tunnel: the outer source address (ours toward the server), packed
    mtu: int = 0                 # tunnel: the egress link's MTU (0: unknown, not checked)

    def pack(self) -> bytes:
        return REAL.pack(pack_addr(self.addr), pack_port(self.port), self.family, self.fwd,
                         self.weight, self.flags, self.ifindex, self.mac, self.src_mac, self.svc,
                         self.u_threshold, self.l_threshold, self.pos, self.tun_src, self.mtu)

    @classmethod
    def unpack(cls, raw: bytes) -> "Real":
        a, p, fam, fwd, w, flags, ifindex, mac, src, svc, ut, lt, pos, tsrc, mtu = REAL.unpack(raw)
        addr = unpack_addr(a, fam if fam else AF_INET)
        return cls(addr, unpack_port(p), fwd, w, flags, ifindex, mac, src, svc, fam, ut, lt, pos, tsrc, mtu)


def pack_dests(dests: list[tuple[int, int, int]], max_svc_reals: int) -> bytes:
    """lb_svc_dests value: (real id, weight, flags) per position, the rest zero (unusable)."""
    body = b"".join(DEST.pack(*d) for d in dests)
    return body.ljust(DEST.size * max_svc_reals, b"\0")


def unpack_dests(raw: bytes, n: int) -> list[tuple[int, int, int]]:
    return [DEST.unpack_from(raw, i * DEST.size) for i in range(n)]


@dataclass(frozen=True)
class ConnKey:
    saddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int
    proto: int
    dir: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> "ConnKey":
        s, d, sp, dp, proto, fam, dir_, _ = CONN_KEY.unpack(raw)
        return cls(unpack_addr(s, fam), unpack_addr(d, fam), unpack_port(sp), unpack_port(dp), proto, dir_)

    def pack(self) -> bytes:
        return CONN_KEY.pack(pack_addr(self.saddr), pack_addr(self.daddr), pack_port(self.sport),
                             pack_port(self.dport), self.proto, family_of(self.saddr), self.dir, 0)


@dataclass
class Conn:
    last_ns: int
    real: int
    svc: int
    timeout: int
    client_ifindex: int
    state: int
    flags: int
    client_mac: bytes
    local_mac: bytes
    vaddr: bytes = b"\0" * 16
    vport: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> "Conn":
        last, real, svc, timeout, ifx, state, flags, _pad, cmac, lmac, va, vp, _ = CONN.unpack(raw)
        return cls(last, real, svc, timeout, ifx, state, flags, cmac, lmac, va, unpack_port(vp))

    def pack(self) -> bytes:
        return CONN.pack(self.last_ns, self.real, self.svc, self.timeout, self.client_ifindex,
                         self.state, self.flags, b"\0\0", self.client_mac, self.local_mac,
                         self.vaddr, pack_port(self.vport), b"\0" * 6)

    def state_name(self, proto: int) -> str:
        if proto != 6:
            return "UDP"
        return TCP_STATES[self.state] if self.state < len(TCP_STATES) else "ERR!"


def pack_mask(mask: str | int | None, family: int = AF_INET) -> bytes:
    """lb_svc.persist_mask: the client mask of a persistent service as 16 bytes in network
    order, as IPVS's svc->netmask: an IPv4 netmask (dotted; None is /32) in the first 4 bytes, or
    an IPv6 prefix length (None is /128)."""
    if family == AF_INET6:
        plen = 128 if mask is None else int(mask)
        if not 0 <= plen <= 128:
            raise ValueError(f"IPv6 prefix length {plen} out of 0..128")
        return ((1 << 128) - (1 << (128 - plen))).to_bytes(16, "big")
    return ipaddress.IPv4Address(mask or "255.255.255.255").packed + bytes(12)


def unpack_mask(raw: bytes, family: int = AF_INET) -> str | int:
    """pack_mask's inverse: a dotted IPv4 netmask, or an IPv6 prefix length."""
    if family == AF_INET6:
        return bin(int.from_bytes(raw, "big")).count("1")
    return str(ipaddress.IPv4Address(raw[:4]))


def real_counts(conns: bytes, swept: bytes) -> tuple[int, int, int]:
    """(active, inactive, persist) of a real server: what BPF counted minus what the control
    plane's sweep took off."""
    a, i, p, _ = REAL_CONNS.unpack(conns)
    sa, si, sp, _ = REAL_CONNS.unpack(swept)
    m = 0xFFFFFFFF
    return (a - sa) & m, (i - si) & m, (p - sp) & m


@dataclass(frozen=True)
class FwmKey:
    """A firewall-mark service's identity in the data plane (it has no lb_services entry)."""
    fwmark: int
    proto: int = 0
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(0)  # its family's 0
    port: int = 0


def pack_ranges(ranges: list[tuple[int, int, int]]) -> bytes:
    """lb_port_ranges value: (lo, hi, service id) sorted by port, at most FWM_RANGES."""
    if len(ranges) > FWM_RANGES:
        raise ValueError(f"at most {FWM_RANGES} port ranges per VIP and protocol")
    body = b"".join(PORT_RANGE.pack(*r) for r in ranges).ljust(PORT_RANGE.size * FWM_RANGES, b"\0")
    return PORT_RANGES.pack(len(ranges), 0, body)


def unpack_ranges(raw: bytes) -> list[tuple[int, int, int]]:
    n, _, body = PORT_RANGES.unpack(raw)
    return [PORT_RANGE.unpack_from(body, i * PORT_RANGE.size) for i in range(min(n, FWM_RANGES))]


def sched_flag_bits(flags) -> int:
    bits = 0
    for f in flags:
        bits |= SCHED_FLAGS[f][1]
    return bits


def sched_flag_names(sched: str, bits: int) -> tuple[str, ...]:
    """ipvsadm's order: fallback, then port"""
    return tuple(name for name, (s, bit) in SCHED_FLAGS.items() if s == sched and bits & bit)


def overload_cleared(total: int, u_threshold: int, l_threshold: int) -> bool:
    """IPVS ip_vs_unbind_dest's rule: OVERLOAD goes once the total is below l_threshold, or
    (l_threshold 0) below 3/4 of u_threshold."""
    if l_threshold:
        return total < l_threshold
    if u_threshold:
        return total * 4 < u_threshold * 3
    return True
