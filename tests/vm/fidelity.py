"""Scheduler fidelity cases shared by the VM side (kernel IPVS, the oracle) and the host side
(the XDP data plane through BPF_PROG_TEST_RUN): the same service, the same real servers added
in the same order, the same sequence of new connections -> the same real server each time.

A case is a service (scheduler, weights in config order, VIP, port) and a list of flows
(client address, source port, whether an ACK follows the SYN).  Under direct routing a SYN
alone leaves the connection SYN_RECV and an ACK makes it ESTABLISHED: both count as active
(tcp_state_active() in ip_vs_proto_tcp.c) -- both data planes use IPVS's INPUT-ONLY state
table and count the same states active, so lc/wlc/sed/nq see the same counts.

Everything stays in 198.18.0.0/15.  Real servers 198.18.1.21.. do not exist: under direct
routing the connection entry (which is what is compared) is made before the packet leaves.
"""
from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass

from lb.lab.flood import internet_checksum

SCHEDULERS = ("rr", "wrr", "wlc", "lc", "sh", "dh", "mh", "fo", "ovf")
# Kernel IPVS (6.1, tcp_state_active()) counts SYN_SENT, SYN_RECV, ESTABLISHED and SYNACK
# connections in ActiveConn, and so does lb's XDP data plane.  Cases whose picks would differ
# if only ESTABLISHED connections counted as active (half-open ones inactive): lc/wlc with some
# connections ACKed and some not, and sed/nq (which look at active connections only) whenever
# connections are still half-open.  tests/vm/test_ipvs_vm.py checks those separately.
STATE_SCHEDULERS = ("sed", "nq")
# lblc / lblcr: one destination address per case (the VIP), so one table entry that the busy
# servers' activeconns move (is_overloaded) and, for lblcr, a server set that grows
LOCALITY_SCHEDULERS = ("lblc", "lblcr")
REAL_BASE = 21                       # real servers 198.18.1.21, .22, ... (IPv6: 2001:2:0:1::21, ...)
DEFAULT_VIP = "198.18.0.30"
DEFAULT_VIP6 = "2001:2:0:10::30"     # IPv6 cases: 2001:2::/48 (RFC 5180) only


@dataclass(frozen=True)
class Flow:
    client: str
    sport: int
    ack: bool = False


@dataclass(frozen=True)
class Case:
    id: str
    sched: str
    weights: tuple[int, ...]
    vip: str
    port: int
    flows: tuple[Flow, ...]
    flags: tuple[str, ...] = ()          # scheduler flags (mh-fallback, mh-port)
    then: tuple[int, ...] | None = None  # weights set after the servers were added (quiesce)

    @property
    def v6(self) -> bool:
        return ":" in self.vip

    @property
    def reals(self) -> list[str]:
        if self.v6:
            return [f"2001:2:0:1::{REAL_BASE + i}" for i in range(len(self.weights))]
        return [f"198.18.1.{REAL_BASE + i}" for i in range(len(self.weights))]

    def tables(self) -> list:
        """The TableSpecs to apply in order before the flows: the service as configured, then
        (with `then`) the same with new weights, as an edit (ipvsadm -e) does it.  mh uses the
        kernel's table size (CONFIG_IP_VS_MH_TAB_INDEX 12: 4093, as Debian builds it)."""
        from lb.dataplane import RealSpec, ServiceSpec, TableSpec

        ip = ipaddress.ip_address

        def table(weights):
            reals = tuple(RealSpec(ip(a), 80, w, "dr") for a, w in zip(self.reals, weights))
            return TableSpec((ServiceSpec("tcp", ip(self.vip), self.port, self.sched, reals,
                                          sched_flags=self.flags, mh_size=4093),))

        return [table(self.weights)] + ([table(self.then)] if self.then is not None else [])


def _client(rng: random.Random) -> str:
    # 198.18.32.0 - 198.19.255.255: clear of the lab's 198.18.0.0/24 and 198.18.1.0/24
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.32.0")) + rng.randrange(2**17 - 2**13 - 1) + 1))


def _client6(rng: random.Random) -> str:
    # 2001:2:0:20:: - 2001:2:0:ffff:: (clear of the lab's /64s), every 32-bit word varied: IPVS
    # hashes an IPv6 address folded to 32 bits (the XOR of its four words)
    return str(ipaddress.IPv6Address((0x2001_0002_0000 << 80) | (rng.randrange(0x20, 0x10000) << 64)
                                     | rng.getrandbits(64)))


def _vip6(rng: random.Random) -> str:
    # 2001:2:0:10::/64 (dh hashes the destination)
    return str(ipaddress.IPv6Address((0x2001_0002_0000_0010 << 64) | rng.getrandbits(64) | 1))


def _vip(rng: random.Random) -> str:
    # 198.18.64.0/18 (dh hashes the destination: one service per VIP)
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.64.0")) + rng.randrange(1, 2**14 - 1)))


def cases() -> list[Case]:
    rng = random.Random(20261123)
    ports = iter(range(1000, 60000))
    sports = iter(range(10000, 60000))
    out: list[Case] = []

    def add(cid, sched, weights, n, acks=(), clients=("198.18.0.2",), vip=DEFAULT_VIP):
        flows = []
        for i in range(n):
            ack = acks if isinstance(acks, bool) else (i < len(acks) and acks[i])
            flows.append(Flow(clients[i % len(clients)], next(sports), bool(ack)))
        out.append(Case(cid, sched, tuple(weights), vip, next(ports), tuple(flows)))

    # the reference's observed sequences and the XDP suite's fixed cases
    add("rr-equal", "rr", [1, 1, 1], 9)
    add("rr-zero", "rr", [2, 0, 1, 3], 10)
    add("wrr-321", "wrr", [3, 2, 1], 12)
    add("wlc-2000", "wlc", [2000, 1000, 1000], 12)
    add("wlc-active", "wlc", [1, 2, 3], 15, acks=[True, False, True, True, False, True, True])
    add("lc-zero", "lc", [5, 1, 0, 2], 9)
    add("lc-active", "lc", [1, 1, 1], 12, acks=[True, False, False, True, True])
    clients = [_client(rng) for _ in range(256)]
    add("sh-weights", "sh", [3, 1, 0, 2], len(clients), clients=clients)
    add("sh-sticky", "sh", [3, 1, 0, 2], 20, clients=clients[:5])
    for i in range(12):
        add(f"dh-vip{i}", "dh", [1, 2, 0], 3, clients=(clients[i], clients[i + 1]), vip=_vip(rng))
    add("sed-syn", "sed", [1, 1], 5)
    add("sed-syn-weights", "sed", [1, 2, 4], 8)
    add("nq-syn", "nq", [10, 1, 1], 6)
    add("lblc-41", "lblc", [4, 1], 8)
    add("lblc-121", "lblc", [1, 2, 1], 12, acks=[True, False, True, True])
    add("lblcr-111", "lblcr", [1, 1, 1], 10)
    add("lblcr-3121", "lblcr", [3, 1, 2, 1], 14, acks=[False, True, True, False, True])
    # random ones
    for sched in SCHEDULERS:
        if sched in ("mh", "fo", "ovf"):
            continue                  # _mh_cases, _more_cases: flags and weight edits too
        for i in range(4):
            n = rng.randint(1, 8)
            weights = [rng.randint(0, 6) for _ in range(n)]
            if sched in ("sh", "dh"):
                cl = [_client(rng) for _ in range(rng.randint(1, 24))]
                vip = _vip(rng) if sched == "dh" else DEFAULT_VIP
                add(f"{sched}-random{i}", sched, weights, len(cl) if sched == "sh" else 4, clients=cl, vip=vip)
            else:
                acks = [rng.random() < 0.5 for _ in range(3 * n + 5)] if sched in ("wlc", "lc") else ()
                add(f"{sched}-random{i}", sched, weights, 3 * n + 5, acks=acks)
    out.extend(_mh_cases(ports, sports))
    out.extend(_more_cases(ports, sports))
    return out


def _more_cases(ports, sports) -> list[Case]:
    """fo and ovf with fixed weights (ties, weight 0, ovf's activeconns <= weight), sh's flags
    (sh-port, sh-fallback, quiesced servers with and without fallback) and IPv6 address hashing
    (sh, dh, mh, lblc over IPv6 clients and VIPs).  Their own random stream, so the other cases
    stay as they were."""
    rng = random.Random(5180)
    out: list[Case] = []

    def add(cid, sched, weights, clients, flags=(), then=None, vip=DEFAULT_VIP, acks=()):
        flows = tuple(Flow(c, next(sports), i < len(acks) and acks[i]) for i, c in enumerate(clients))
        out.append(Case(cid, sched, tuple(weights), vip, next(ports), flows, tuple(flags),
                        None if then is None else tuple(then)))

    one = ["198.18.0.2"]
    add("fo-ties", "fo", [3, 5, 5, 1], one * 6)
    add("fo-zero", "fo", [0, 2, 1], one * 4)
    add("fo-quiesce", "fo", [1, 4, 2], one * 4, then=[1, 0, 2])
    add("ovf-321", "ovf", [3, 2, 1], one * 10, acks=[True, False] * 5)
    add("ovf-zero", "ovf", [2, 0, 1], one * 6)
    add("ovf-equal", "ovf", [1, 1, 1, 1], one * 8)
    many = [_client(rng) for _ in range(128)]
    add("sh-port", "sh", [1, 1, 1, 1], ["198.18.0.2"] * 40, flags=("sh-port",))
    add("sh-quiesce", "sh", [1, 1, 1], many[:64], then=[1, 0, 1])
    add("sh-quiesce-fallback", "sh", [1, 1, 1], many[:64], flags=("sh-fallback",), then=[1, 0, 1])
    add("sh-fallback-port", "sh", [2, 1, 3, 1], many[:48], flags=("sh-fallback", "sh-port"), then=[0, 1, 0, 1])
    many6 = [_client6(rng) for _ in range(128)]
    add("sh-v6", "sh", [3, 1, 0, 2], many6, vip=DEFAULT_VIP6)
    add("sh-v6-fallback-port", "sh", [1, 2, 1], many6[:48], flags=("sh-fallback", "sh-port"), then=[1, 0, 1],
        vip=DEFAULT_VIP6)
    add("mh-v6", "mh", [3, 1, 0, 2], many6, vip=DEFAULT_VIP6)
    add("mh-v6-fallback", "mh", [1, 1, 1], many6[:64], flags=("mh-fallback",), then=[1, 0, 1], vip=DEFAULT_VIP6)
    for i in range(8):
        add(f"dh-v6-vip{i}", "dh", [1, 2, 0], many6[i:i + 2], vip=_vip6(rng))
    add("lblc-v6", "lblc", [4, 1], many6[:8], vip=_vip6(rng))
    for i in range(3):
        n = rng.randint(1, 6)
        add(f"fo-random{i}", "fo", [rng.randint(0, 6) for _ in range(n)], one * (n + 3))
        add(f"ovf-random{i}", "ovf", [rng.randint(0, 4) for _ in range(n)], one * (3 * n + 4))
    return out


def _mh_cases(ports, sports) -> list[Case]:
    """mh: weights (and the gcd/shift of large ones), mh-port, quiesced servers (weight 0 after
    they were added keeps their slots) with and without mh-fallback, and fallback walks long
    enough to take the XDP program several runs.  Its own random stream, so the other
    schedulers' cases stay as they were."""
    rng = random.Random(4093)
    out: list[Case] = []

    def add(cid, weights, clients, flags=(), then=None):
        flows = tuple(Flow(c, next(sports)) for c in clients)
        out.append(Case(cid, "mh", tuple(weights), DEFAULT_VIP, next(ports), flows, tuple(flags),
                        None if then is None else tuple(then)))

    many = [_client(rng) for _ in range(256)]
    add("mh-weights", [3, 1, 0, 2], many)
    add("mh-sticky", [3, 1, 0, 2], many[:5] * 4)
    add("mh-big-weights", [100, 3, 64, 1, 1000], many[:128])          # shifted turns
    add("mh-port", [1, 1, 1, 1], ["198.18.0.2"] * 40, flags=("mh-port",))
    add("mh-quiesce", [1, 1, 1], many[:96], then=[1, 0, 1])
    add("mh-quiesce-fallback", [1, 1, 1], many[:96], flags=("mh-fallback",), then=[1, 0, 1])
    add("mh-fallback-port", [2, 1, 3, 1], many[:64], flags=("mh-fallback", "mh-port"), then=[0, 1, 0, 1])
    add("mh-long-walks", [1] + [63] * 15, many[:48], flags=("mh-fallback",), then=[1] + [0] * 15)
    for i in range(6):
        n = rng.randint(1, 8)
        weights = [rng.randint(0, 6) for _ in range(n)]
        then = [w if rng.random() < 0.6 else 0 for w in weights] if rng.random() < 0.5 else None
        flags = rng.choice([(), ("mh-port",), ("mh-fallback",), ("mh-fallback", "mh-port")])
        add(f"mh-random{i}", weights, [_client(rng) for _ in range(rng.randint(1, 24))], flags, then)
    return out


# ---- raw TCP segments (the guest sends them with IP_HDRINCL; scapy is slow to import there)

def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: str, seq: int = 0, ack: int = 0) -> bytes:
    """IPv4 + TCP (no options, no payload), checksums filled: what scapy's
    IP(src, dst)/TCP(sport, dport, flags, seq, ack) gives."""
    bits = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
    fl = sum(bits[c] for c in flags)
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, fl, 8192, 0, 0)
    c = internet_checksum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return ip + tcp


def tcp6_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, sport: int, dport: int, flags: str,
               seq: int = 0, ack: int = 0) -> bytes:
    """Ethernet + IPv6 + TCP (no options, no payload), checksum filled: what scapy's
    Ether()/IPv6(src, dst)/TCP(...) gives.  The guest sends it from an AF_PACKET socket."""
    bits = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
    fl = sum(bits[c] for c in flags)
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, fl, 8192, 0, 0)
    c = internet_checksum(s + d + struct.pack("!IxxxB", len(tcp), 6) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, s, d)
    return dst_mac + src_mac + b"\x86\xdd" + ip6 + tcp


# ---- the hashes in question (dh/sh), for precise reports

def hash_32(val: int, bits: int = 8) -> int:
    """include/linux/hash.h hash_32 (lb's choice, and ip_vs_sh's since 2013)."""
    return ((val * 0x61C88647) & 0xFFFFFFFF) >> (32 - bits)


def mult_hash(val: int) -> int:
    """(val * 2654435761) & 255 (the reference's rule for dh)."""
    return (val * 2654435761) & 255


def state_sensitive(case: Case) -> bool:
    """True when the pick could depend on whether a half-open (SYN_RECV) connection counts as
    active: see STATE_SCHEDULERS."""
    if case.sched in STATE_SCHEDULERS:
        return True
    return case.sched in ("lc", "wlc") and any(f.ack for f in case.flows) and not all(f.ack for f in case.flows)
