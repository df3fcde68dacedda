"""Byte layouts and ids of the BPF maps, from bpf/lb_consts.h and bpf/lb_structs.h.

The C headers are the one source.  Every id, flag and count below is read from lb_consts.h at
import (its integer #defines and enums), never written here.  The structs are described field
by field (Layout) because Python packs them by position; tests/test_layout.py holds every
Layout to the header: the same field names, offsets and sizes as gcc compiles lb_structs.h
(which cext/bpfbatch.c includes) and as bcc compiles the maps of bpf/lb.c.
"""
from __future__ import annotations

import ast
import ipaddress
import operator
import re
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


def _bpf_dir() -> Path:
    """bpf/, the programs' C sources: shipped in the package as lb/bpf (setup.py copies it into
    a wheel), else a checkout's bpf/ beside lb/ (an editable install)."""
    try:
        shipped = Path(str(resources.files("lb") / "bpf"))
        if (shipped / "lb.c").is_file():
            return shipped
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "bpf"


BPF_DIR = _bpf_dir()


# ---- lb_consts.h ----

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.floordiv, ast.Mod: operator.mod, ast.LShift: operator.lshift,
           ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_,
           ast.BitXor: operator.xor}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _c_int(expr: str, known: dict[str, int]) -> int | None:
    """The value of a C integer constant expression made of numbers, names in `known` and
    + - * / % << >> | & ^ (no casts); None for anything else (strings, unknown names)."""
    text = re.sub(r"\b(0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]+\b", r"\1", expr.strip())

    def ev(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
            return _UNOPS[type(node.op)](ev(node.operand))
        raise ValueError(expr)

    try:
        return ev(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError):
        return None


def read_consts(path: Path) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """A header's integer #defines (for `#ifndef X / #define X v`, the default v) and its enums
    ({enum name: {member: value}}; members are also in the first dict)."""
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", "", text).replace("\\\n", " ")
    consts: dict[str, int] = {}
    enums: dict[str, dict[str, int]] = {}
    pos = 0
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([^\n]+)$|\benum[ \t]+(\w+)\s*\{([^}]*)\}",
                         text, re.M):
        if m.group(1):
            value = _c_int(m.group(2), consts)
            if value is not None:
                consts[m.group(1)] = value
            continue
        members: dict[str, int] = {}
        for item in (i.strip() for i in m.group(4).split(",")):
            if not item:
                continue
            name, eq, expr = (x.strip() for x in item.partition("="))
            value = _c_int(expr, consts) if eq else pos
            if value is None:
                raise ValueError(f"{path}: enum {m.group(3)}: cannot read the value of {name}")
            members[name] = consts[name] = value
            pos = value + 1
        enums[m.group(3)] = members
    return consts, enums


C, ENUMS = read_consts(BPF_DIR / "lb_consts.h")


def _prefixed(prefix: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """lb_consts.h's names starting with prefix (prefix dropped), in value order"""
    out = {k[len(prefix):]: v for k, v in C.items() if k.startswith(prefix) and k not in skip}
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


LB_NONE = C["LB_NONE"]
POS_HEAD = C["LB_POS_HEAD"]
AF_INET, AF_INET6 = C["LB_AF_INET"], C["LB_AF_INET6"]
FWD_NAT, FWD_LOCAL, FWD_TUNNEL, FWD_DR = C["LB_FWD_NAT"], C["LB_FWD_LOCAL"], C["LB_FWD_TUNNEL"], C["LB_FWD_DR"]
FORWARD_NAMES = {FWD_NAT: "Masq", FWD_LOCAL: "Local", FWD_TUNNEL: "Tunnel", FWD_DR: "Route"}
FORWARDS = {"nat": FWD_NAT, "dr": FWD_DR, "tunnel": FWD_TUNNEL}    # RealSpec.forward -> lb_real.fwd
FORWARD_OF = {v: k for k, v in FORWARDS.items()}
REAL_F_OVERLOAD = C["LB_REAL_F_OVERLOAD"]
REAL_F_NO_NEXTHOP = C["LB_REAL_F_NO_NEXTHOP"]
REAL_F_DRAINING = C["LB_REAL_F_DRAINING"]   # removed from the config, draining: its templates are invalid
SVC_F_SCHED_FALLBACK, SVC_F_SCHED_PORT = C["LB_SVC_F_SCHED_FALLBACK"], C["LB_SVC_F_SCHED_PORT"]
SVC_F_SLOPPY = C["LB_SVC_F_SLOPPY"]   # lb_sloppy.h: a TCP packet without an entry is scheduled too (active-active)
# scheduler flag name -> (scheduler, lb_svc.flags bit), as ipvsadm spells them
SCHED_FLAGS = {"sh-fallback": ("sh", SVC_F_SCHED_FALLBACK), "sh-port": ("sh", SVC_F_SCHED_PORT),
               "mh-fallback": ("mh", SVC_F_SCHED_FALLBACK), "mh-port": ("mh", SVC_F_SCHED_PORT)}
FWM_RANGES = C["LB_FWM_RANGES"]             # port ranges per (VIP, protocol)
G_FWM_KEYS, G_EXPIRE_NODEST, G_LBLCR_EXPIRATION = C["LB_G_FWM_KEYS"], C["LB_G_EXPIRE_NODEST"], C["LB_G_LBLCR_EXPIRATION"]
# the defenses (lb/dataplane/defense.py) and the tunnel's too-big answers' rate limit
G_DEFENSE, G_DROP_RATE = C["LB_G_DEFENSE"], C["LB_G_DROP_RATE"]
G_ICMP_INTERVAL, G_ICMP_BURST = C["LB_G_ICMP_INTERVAL"], C["LB_G_ICMP_BURST"]
DEF_SECURE_TCP = C["LB_DEF_SECURE_TCP"]
VIP_FILTER_BITS, VIP_FILTER_WORDS, VIP_HASH_MUL = C["LB_VIP_FILTER_BITS"], C["LB_VIP_FILTER_WORDS"], C["LB_VIP_HASH_MUL"]
LOCAL_ADDRS = C["LB_LOCAL_ADDRS"]           # lb_local_addrs' size: the director's own addresses kept
N_GLOBALS = C["LB_GLOBALS"]                 # lb_globals entries
# the established filter (lb_embryo.h): bitmaps, the census's slot, the first promotions' slot
EST_BITMAPS, EST_CENSUS, EST_MARKS = C["LB_EST_BITMAPS"], C["LB_EST_CENSUS"], C["LB_EST_MARKS"]
G_EST_WRITE, EST_HASH_MUL = C["LB_G_EST_WRITE"], C["LB_EST_HASH_MUL"]
LBLCR_EXPIRATION_DEFAULT = C["LB_LBLCR_EXPIRATION_DEFAULT"]   # BPF's lblcr_expiration while the global is 0
CONN_F_INACTIVE, CONN_F_OUT, CONN_F_PERSIST = C["LB_CONN_F_INACTIVE"], C["LB_CONN_F_OUT"], C["LB_CONN_F_PERSIST"]
CONN_F_EST_REPLY = C["LB_CONN_F_EST_REPLY"]   # lb_reply.h: a reverse entry whose replies' ACKs need only it
TEMPLATE_LATER_S = C["LB_TEMPLATE_LATER_S"]    # a template kept past its timeout: its timeout from then on
# lb_persist.timeout: seconds (PERSIST_TIMEOUT's bits) | PERSIST_F_IDLE (the last sweep found no
# live connection the template controls: past its timeout, the data path takes it for absent)
PERSIST_TIMEOUT, PERSIST_F_IDLE = C["LB_PERSIST_TIMEOUT"], C["LB_PERSIST_F_IDLE"]

# scheduler name -> LB_SCHED_* (also the tail-call slot LB_PROG_SCHED_BASE + value), id order
SCHEDULERS = {name.lower(): v for name, v in sorted(
    ((k.removeprefix("LB_SCHED_"), v) for k, v in ENUMS["lb_sched_id"].items()), key=lambda kv: kv[1])}
# schedulers with an entry per (service, destination address) in lb_lblc / lb_lblcr
LBLC_SCHEDULERS = ("lblc", "lblcr")
LBLCR_SET_SIZE = C["LB_LBLCR_SET_SIZE"]     # members of an lblcr server set
# schedulers whose service has a lb_sched_buckets entry (LB_SCHED_BUCKETS list positions)
BUCKET_SCHEDULERS = ("dh", "sh")
SCHEDULER_NAMES = {v: k for k, v in SCHEDULERS.items()}
PROG_NEW_CONN = C["LB_PROG_NEW_CONN"]
PROG_SCHED_BASE = C["LB_PROG_SCHED_BASE"]
PROG_MAX = C["LB_PROG_MAX"]
PROG_PERSIST = C["LB_PROG_PERSIST"]
FRAG6_SLOTS = {"lb_xdp_frag6_public": C["LB_FRAG6_PUBLIC"],      # lb_frag6_progs: an IPv6 fragment's
               "lb_xdp_frag6_private": C["LB_FRAG6_PRIVATE"]}   # programs (lb_frag.h)
ICMP_TUNNEL_SLOT = C["LB_ICMP_TUNNEL"]       # lb_icmp_progs: an ICMP error about the tunnel's packets
PUBLIC_FULL_SLOT = C["LB_PUBLIC_FULL"]       # lb_public_progs: the public side past lb_xdp_public's short way
PREV_SLOTS = {"public": C["LB_PREV_PUBLIC"], "private": C["LB_PREV_PRIVATE"]}   # lb_progs_prev
TX_PORTS = C["LB_TX_PORTS"]                 # lb_tx_ports' size: ifindexes below it

# ipvsadm's state names are the C names: LB_TCP_S_<NAME>, numbered as IP_VS_TCP_S_*
TCP_S = _prefixed("LB_TCP_S_", skip=("LB_TCP_S_LAST",))
TCP_STATES = list(TCP_S)
UDP_S_NORMAL = C["LB_UDP_S_NORMAL"]
N_TIMEOUTS = C["LB_TIMEOUTS"]
FSM_SIZE = C["LB_FSM_SIZE"]                 # lb_tcp_fsm entries

# lb_counters index (LB_CNT_*) -> the name `lb status` and the API show
_COUNTER_NAMES = {"NO_REAL": "no_real_server", "NOT_SYN": "tcp_not_syn", "FRAGMENT": "fragment",
                  "BAD_REAL": "real_server_gone", "CONN_FULL": "conn_table_full",
                  "TAIL_CALL": "tail_call_failed", "TOO_BIG": "tunnel_too_big",
                  "SYN_INVALID": "tcp_syn_invalid", "DROP_PACKET": "drop_packet",
                  "PERSIST_FULL": "persist_table_full", "ICMP_LIMITED": "icmp_rate_limited",
                  "TOO_BIG_UNANSWERED": "too_big_unanswered", "XMIT_FAILED": "xmit_failed",
                  "LEASE_LAPSED": "lease_lapsed", "CSUM_COMPLETED": "partial_checksum_completed",
                  "CSUM_UNCOMPLETED": "partial_checksum_uncompleted", "TX_UNMAPPED": "redirect_unmapped",
                  "NOT_ROUTABLE": "not_routable", "FRAG_FORWARDED": "fragment_forwarded",
                  "UDP6_CSUM_FILLED": "udp6_checksum_filled", "TUNNEL_ERROR": "tunnel_error_relayed"}
_CNT = _prefixed("LB_CNT_", skip=("LB_CNT_MAX",))
COUNTER_NAMES = [_COUNTER_NAMES.get(k, k.lower()) for k in _CNT]
N_COUNTERS = C["LB_COUNTERS"]               # lb_counters entries (LB_CNT_MAX of them used)
# lb_ct_events index (LB_CTE_*): the connection tables' tallies the defenses poll
CT_EVENTS = {k.lower(): v for k, v in _prefixed("LB_CTE_", skip=("LB_CTE_MAX",)).items()}
N_CT_EVENTS = C["LB_CTE_MAX"]


def _check_ids() -> None:
    """What the parsing above relies on, said by name when a header change breaks it."""
    problems = []
    if list(TCP_S.values()) != list(range(C["LB_TCP_S_LAST"])):
        problems.append("LB_TCP_S_* are not 0..LB_TCP_S_LAST-1")
    if list(_CNT.values()) != list(range(C["LB_CNT_MAX"])) or C["LB_CNT_MAX"] > C["LB_COUNTERS"]:
        problems.append("LB_CNT_* are not 0..LB_CNT_MAX-1, or more than LB_COUNTERS")
    if set(_CNT) != set(_COUNTER_NAMES):
        problems.append(f"counters without a name in layout._COUNTER_NAMES (or gone): "
                        f"{sorted(set(_CNT) ^ set(_COUNTER_NAMES))}")
    if len(set(SCHEDULERS.values())) != len(SCHEDULERS) or min(SCHEDULERS.values()) < 0 or \
            PROG_SCHED_BASE + max(SCHEDULERS.values()) >= PROG_PERSIST:
        problems.append("scheduler ids must be distinct, >= 0, and their tail-call slots "
                        "(LB_PROG_SCHED_BASE + id) below LB_PROG_PERSIST")
    if problems:
        raise RuntimeError(f"{BPF_DIR / 'lb_consts.h'}: " + "; ".join(problems))


_check_ids()


# ---- lb_structs.h ----

class Layout(struct.Struct):
    """A struct.Struct ("=", no implicit padding) for one C struct of lb_structs.h, with its
    field names: c_name is the struct's name, fields its (name, offset, size) in order.
    prefix: the fields are only the struct's first ones (a partial read)."""
    __slots__ = ("c_name", "fields", "prefix")


def _layout(c_name: str, spec: str, prefix: bool = False) -> Layout:
    """spec: "name:format ..." in the C struct's field order (format: a struct module code)"""
    fmt, fields, off = "=", [], 0
    for item in spec.split():
        name, code = item.split(":")
        size = struct.calcsize("=" + code)
        fields.append((name, off, size))
        fmt += code
        off += size
    lay = Layout(fmt)
    lay.c_name, lay.fields, lay.prefix = c_name, tuple(fields), prefix
    return lay


SVC_KEY = _layout("lb_svc_key", "addr:16s port:2s proto:B family:B")
SVC = _layout("lb_svc", "addr:16s port:2s proto:B family:B sched:I nreals:I flags:I wrr_mw:I wrr_di:I "
                        "persist_timeout:I fwmark:I mh_size:I persist_mask:16s")
SCHED_STATE = _layout("lb_sched_state", "cl:I cw:i")
DEST = _layout("lb_dest", "real:I weight:I flags:I")
REAL = _layout("lb_real", "addr:16s port:2s family:B fwd:B flags:I ifindex:I mac:6s src_mac:6s "
                          "svc:I u_threshold:I l_threshold:I pos:I tun_src:16s mtu:I")
REAL_COUNTS = _layout("lb_real_counts", "active:I inactive:I persist:I pad:I")
# BPF's counts, then the schedulers' offsets (sched_off: a REAL_COUNTS, the control plane's)
REAL_CONNS = _layout("lb_real_conns", "active:I inactive:I persist:I pad:I sched_off:16s")
REAL_SCHED_OFF = REAL_CONNS.fields[-1][1]        # its offset in the entry
PERSIST_KEY = _layout("lb_persist_key", "caddr:16s vaddr:16s vport:2s proto:B family:B fwmark:I")
PERSIST = _layout("lb_persist", "last_ns:Q real:I timeout:I")
CONN_KEY = _layout("lb_conn_key", "saddr:16s daddr:16s sport:2s dport:2s proto:B family:B dir:B pad:B")
CONN_KEY_DIR = dict((n, o) for n, o, _ in CONN_KEY.fields)["dir"]   # key[CONN_KEY_DIR]: 1 for a NAT reply's
CONN_KEY_FAMILY = dict((n, o) for n, o, _ in CONN_KEY.fields)["family"]   # key[CONN_KEY_FAMILY]: AF_INET / AF_INET6
# lb_conns4's key: an IPv4 connection's (lb_conn_key without the family and the addresses' padding)
CONN_KEY4 = _layout("lb_conn_key4", "saddr:4s daddr:4s sport:2s dport:2s proto:B dir:B pad:2s")
CONN = _layout("lb_conn", "last_ns:Q real:I svc:I timeout:I client_ifindex:I state:B flags:B pad:2s "
                          "client_mac:6s local_mac:6s vaddr:16s vport:2s pad2:6s")
# the head of lb_conn that the expiry sweep reads
CONN_HEAD = _layout("lb_conn", "last_ns:Q real:I svc:I timeout:I client_ifindex:I state:B flags:B", prefix=True)
STATS = _layout("lb_stats", "conns:Q inpkts:Q outpkts:Q inbytes:Q outbytes:Q")
RATES = _layout("lb_rates", "cps:Q inpps:Q outpps:Q inbps:Q outbps:Q")
SCHED_BUCKETS = _layout("lb_sched_buckets", f"pos:{C['LB_SCHED_BUCKETS']}I")
PORT_RANGE = _layout("lb_port_range", "lo:H hi:H svc:I")     # host byte order ports
PORT_RANGES = _layout("lb_port_ranges", f"n:I pad:I r:{PORT_RANGE.size * FWM_RANGES}s")
LBLC_KEY = _layout("lb_lblc_key", "svc:I family:B pad:3s addr:16s")
LBLC = _layout("lb_lblc", "lastuse_ns:Q real:I pad:I")
LBLCR = _layout("lb_lblcr", f"lastuse_ns:Q lastmod_ns:Q n:I pad:I real:{LBLCR_SET_SIZE}I")
LEASE = _layout("lb_lease", "expires_ns:Q")
ADDR_KEY = _layout("lb_addr_key", "addr:16s family:B pad:3s")
ADDR16 = _layout("lb_addr16", "addr:16s")
LEASE_VIP, LEASE_ROUTER = C["LB_LEASE_VIP"], C["LB_LEASE_ROUTER"]
VIP_FILTER = _layout("lb_vip_filter", f"bits:{VIP_FILTER_WORDS}Q")
EST_WORD = _layout("lb_est_word", "w:4Q")     # lb_est_filter value: word i of each bitmap, padded
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")


def elapsed_ns(now: int, last: int) -> int:
    """How long ago a timestamp of the data path's clock was, as the data path reckons it
    (lb_conn_expired): the signed 64-bit difference.  A stamp ahead of the clock (written from
    the precise clock) is that much in the future, not expired; one older than the machine's
    uptime (an imported connection, on a director just booted) wraps below zero as a u64 and
    is still that old."""
    d = (now - last) & 0xFFFF_FFFF_FFFF_FFFF
    return d - (1 << 64) if d >> 63 else d


def stamp_ago(now: int, ns: int) -> int:
    """The data path's timestamp of a moment ns before now (negative ns: after), modulo 2^64
    as elapsed_ns reckons it back: below the clock's zero it wraps"""
    return (now - ns) & 0xFFFF_FFFF_FFFF_FFFF

# key and value layout of every map the control plane reads or writes (lb_maps.h)
MAPS: dict[str, tuple[struct.Struct, struct.Struct]] = {
    "lb_services": (SVC_KEY, U32), "lb_fwm_ranges": (SVC_KEY, PORT_RANGES), "lb_fwm_services": (U32, U32),
    "lb_globals": (U32, U32), "lb_svc": (U32, SVC), "lb_sched_state": (U32, SCHED_STATE),
    "lb_reals": (U32, REAL), "lb_real_conns": (U32, REAL_CONNS), "lb_real_overload": (U32, U32),
    "lb_real_swept": (U32, REAL_COUNTS), "lb_real_base": (U32, REAL_COUNTS),
    "lb_conns4": (CONN_KEY4, CONN), "lb_conns6": (CONN_KEY, CONN),
    "lb_conns": (CONN_KEY, CONN),     # both, as lb/dataplane/maps.py ConnTables shows them
    "lb_conns_embryo": (CONN_KEY, CONN), "lb_persist": (PERSIST_KEY, PERSIST),
    "lb_persist_embryo": (PERSIST_KEY, PERSIST), "lb_tcp_fsm": (U32, U32), "lb_tcp_fsm_secure": (U32, U32),
    "lb_timeouts": (U32, U32), "lb_ct_events": (U32, U64), "lb_vip_filter": (U32, VIP_FILTER),
    "lb_est_filter": (U32, EST_WORD),
    "lb_svc_stats": (U32, STATS), "lb_real_stats": (U32, STATS), "lb_svc_rates": (U32, RATES),
    "lb_real_rates": (U32, RATES), "lb_counters": (U32, U64), "lb_progs": (U32, U32),
    "lb_progs_prev": (U32, U32), "lb_tx_ports": (U32, U32), "lb_frag6_progs": (U32, U32), "lb_icmp_progs": (U32, U32),
    "lb_public_progs": (U32, U32),
    "lb_lblc": (LBLC_KEY, LBLC), "lb_lblcr": (LBLC_KEY, LBLCR), "lb_sched_buckets": (U32, SCHED_BUCKETS),
    "lb_mh_tables": (U32, U32), "lb_lease": (U32, LEASE), "lb_lease_addrs": (ADDR_KEY, U32),
    "lb_vip_addrs": (ADDR16, U32), "lb_local_filter": (U32, VIP_FILTER), "lb_local_addrs": (ADDR16, U32),
}
# maps whose value holds one entry per list position (LB_MAX_SVC_REALS of them, a -D size)
LIST_MAPS: dict[str, struct.Struct] = {"lb_svc_dests": DEST, "lb_mh_last": U32}
# maps only the BPF programs use (scratch space, the clock's cache, the mh inner map's type template,
# the buffer a partial checksum is completed through, the datagrams in fragments)
BPF_ONLY_MAPS = ("lb_scratch", "lb_clock", "lb_mh_walk", "lb_mh_inner", "lb_icmp_bucket", "lb_csum_buf",
                 "lb_frags4", "lb_frags6", "lb_frag6_scratch")


def pack_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return addr.packed.ljust(16, b"\0")


def vip_filter_bit(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The bit of lb_vip_filter an address sets: BPF's lb_vip_maybe, which folds the 16-byte
    address's four (host order) words by XOR and multiplies."""
    a, b, c, d = struct.unpack("=4I", pack_addr(addr))
    return (((a ^ b ^ c ^ d) * VIP_HASH_MUL) & 0xFFFFFFFF) >> (32 - VIP_FILTER_BITS)


_ZERO12 = bytes(12)


def conn_key4(key: bytes) -> bytes:
    """lb_conns4's key of an IPv4 lb_conn_key (bpf/lb_conntrack.h lb_conn_key4_of)"""
    return key[0:4] + key[16:20] + key[32:37] + key[38:39] + b"\0\0"


def conn_key_of4(k4: bytes) -> bytes:
    """The lb_conn_key of a lb_conns4 key"""
    return k4[0:4] + _ZERO12 + k4[4:8] + _ZERO12 + k4[8:13] + bytes((AF_INET,)) + k4[13:14] + b"\0"


def est_filter_bit(key: bytes, bits: int) -> int:
    """The bit of lb_est_filter a connection key (lb_conn_key, 40 bytes) sets: BPF's lb_est_bit,
    which folds each address's four (host order) words by XOR and multiplies in the ports and
    the last word"""
    w = struct.unpack("=10I", key)
    m = 0xFFFFFFFF
    h = w[0] ^ w[1] ^ w[2] ^ w[3]
    h = ((h * EST_HASH_MUL) & m) ^ w[4] ^ w[5] ^ w[6] ^ w[7]
    h = ((h * EST_HASH_MUL) & m) ^ w[8]
    h = ((h * EST_HASH_MUL) & m) ^ w[9]
    return ((h * EST_HASH_MUL) & m) >> (32 - bits)


def pack_vip_filter(addrs) -> bytes:
    """lb_vip_filter's value with the bits of addrs set"""
    words = [0] * VIP_FILTER_WORDS
    for a in addrs:
        bit = vip_filter_bit(a)
        words[bit >> 6] |= 1 << (bit & 63)
    return VIP_FILTER.pack(*words)


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
    # the weight goes to the server's lb_svc_dests slot only (the pick loops' view), not to
    # lb_reals: a Real equal but for its weight has the same lb_reals entry
    weight: int = field(compare=False)
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
                         self.flags, self.ifindex, self.mac, self.src_mac, self.svc,
                         self.u_threshold, self.l_threshold, self.pos, self.tun_src, self.mtu)

    @classmethod
    def unpack(cls, raw: bytes, weight: int = 0, family: int = AF_INET) -> "Real":
        """weight: the server's lb_svc_dests slot's (lb_reals does not hold it); family: its
        address's family when the entry says none (a removed real server keeps its address)"""
        a, p, fam, fwd, flags, ifindex, mac, src, svc, ut, lt, pos, tsrc, mtu = REAL.unpack(raw)
        addr = unpack_addr(a, fam if fam else family)
        return cls(addr, unpack_port(p), fwd, weight, flags, ifindex, mac, src, svc, fam, ut, lt, pos, tsrc, mtu)


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

    def reverse(self, real: "Real") -> "ConnKey":
        """The NAT reverse entry's key (real server -> client) of this client -> VIP connection
        to `real`, as bpf/lb_embryo.h's lb_conn_key_reverse: real port 0 keeps the packet's."""
        return ConnKey(real.addr, self.saddr, real.port or self.dport, self.sport, self.proto, 1)


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
    a, i, p, _, _ = REAL_CONNS.unpack(conns)
    sa, si, sp, _ = REAL_COUNTS.unpack(swept)
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
