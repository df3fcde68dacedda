"""Byte-exact ``ipvsadm -L -n`` style listings.

A pure formatter: no BPF, no I/O.  It formats the records a data plane reads
back (lb/dataplane/records.py, re-exported here) and returns strings.  The
layouts follow the printf formats of ipvsadm 1.31 (ipvsadm.c:
print_service_entry, print_conn, print_largenum); every line, including the
trailing spaces left by ``%-10u`` after InActConn, matches what ipvsadm prints
with ``-n`` (tests/golden/listing/ holds the expected bytes, written from
those formats; the IPVS VM suite compares ``lb list`` with the kernel's
``ipvsadm -L``).

Public API
----------
- the records :class:`Stats`, :class:`RealRow`, :class:`ServiceRow`, :class:`ConnRow`
- :func:`format_services`  -- ``ipvsadm -L -n [--stats|--rate|--thresholds|
  --persistent-conn|--tun-info] [--exact] [--nosort]``
- :func:`format_connections` -- ``ipvsadm -L -n -c``
- :func:`format_timeout`   -- ``ipvsadm -L --timeout``
- :func:`format_save`      -- ``ipvsadm -S -n`` (rules ``ipvsadm -R`` reads back)
- :func:`largenum`         -- ipvsadm's number formatter for stats columns
- :func:`addrport`         -- one ``ADDR:PORT`` as the listings print it (``[v6]:port``)
- :func:`to_json`          -- the ``lb list --json`` document (shape below)
- :func:`json_chunks`      -- that document as ``json.dumps(..., indent=2)`` text, in pieces
- :data:`MODES`, :data:`JSON_SCHEMA_VERSION`

Where ipvsadm's behaviour is accidental, this module documents its choice:

- ipvsadm compares fwmarks and addresses by subtracting two unsigned 32-bit
  values into an ``int``, so values more than 2^31 apart can sort "backwards"
  (and qsort then sees an inconsistent order).  Here the order is the
  intended one: numeric fwmark and address order.
- ipvsadm's ``-c`` reads the kernel's hash table order and never sorts; with
  ``sort=True`` :func:`format_connections` orders rows by protocol, then
  client, virtual and destination address/port.

JSON shape (``to_json``), all addresses as strings (IPv6 without brackets)::

    {
      "schema": 1,
      "services": [
        {
          "kind": "addr" | "fwmark",
          "protocol": "TCP" | "UDP" | "SCTP" | null,  # null for fwmark services
          "address": "192.0.2.10" | null,             # null for fwmark services
          "port": 80 | null,                          # null for fwmark services
          "fwmark": 0,                                # 0 unless kind == "fwmark"
          "family": 4 | 6,
          "name": "TCP  192.0.2.10:80",               # the listing's first column
          "scheduler": "wlc",
          "sched_flags": ["sh-fallback", "sh-port"],
          "persistent": 360 | null,                   # timeout (s); null = not persistent
          "netmask": "255.255.255.0" | 64 | null,     # IPv4 dotted / IPv6 prefix; null unless persistent
          "ops": false,
          "stats": {"conns", "inpkts", "outpkts", "inbytes", "outbytes"},
          "rate":  {"cps", "inpps", "outpps", "inbps", "outbps"},
          "reals": [
            {
              "address": "198.51.100.2", "port": 80, "family": 4,
              "forward": "Route", "weight": 1,
              "active": 3, "inactive": 12, "persist": 0,
              "u_threshold": 0, "l_threshold": 0, "tunnel_info": "n/a",
              "stats": {...}, "rate": {...}           # same keys as above
            }
          ]
        }
      ],
      "connections": [                                # present only when conns is given
        {"protocol": "TCP", "expire": 897, "state": "ESTABLISHED",
         "client":  {"address": "203.0.113.20", "port": 55746},
         "virtual": {"address": "192.0.2.10",   "port": 80},
         "dest":    {"address": "198.51.100.2", "port": 80}}
      ]
    }

Services and reals in the JSON follow the same order as the table
(``sort=True`` by default); connections keep the given order.  Keys are never removed within a schema version;
new keys may be added.
"""

from __future__ import annotations

import itertools
import json
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Iterable, Iterator

from lb.dataplane.records import ConnRow, IPAddress, RealRow, ServiceRow, Stats

__all__ = [
    "Stats",
    "RealRow",
    "ServiceRow",
    "ConnRow",
    "MODES",
    "JSON_SCHEMA_VERSION",
    "format_services",
    "format_connections",
    "format_timeout",
    "format_counters",
    "format_save",
    "largenum",
    "addrport",
    "to_json",
    "json_chunks",
]

MODES = ("default", "stats", "rate", "thresholds", "persistent", "tun")
JSON_SCHEMA_VERSION = 1

# IANA protocol numbers: ipvsadm sorts by the number, not the name.
_PROTO_NUM = {"TCP": 6, "UDP": 17, "SCTP": 132}

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


# --------------------------------------------------------------------------
# data model: the data plane's records (lb/dataplane/records.py)
# --------------------------------------------------------------------------

# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _u32(n: int) -> int:
    """Value as C's ``%u`` of an unsigned 32-bit field would show it."""
    return int(n) & _U32


def _u64(n: int) -> int:
    """Value as C's ``%llu`` of an unsigned 64-bit field would show it."""
    return int(n) & _U64


def _inet_ntop6(addr: IPv6Address) -> str:
    """glibc ``inet_ntop(AF_INET6)``.

    Differs from ``str(IPv6Address)`` (Python < 3.13) for IPv4-mapped and
    IPv4-compatible addresses, which glibc prints with a dotted quad.
    """
    packed = addr.packed
    words = [(packed[i] << 8) | packed[i + 1] for i in range(0, 16, 2)]
    # longest run of zero words, first one wins ties, only runs >= 2 count
    best_base, best_len = -1, 0
    cur_base, cur_len = -1, 0
    for i, w in enumerate(words + [1]):  # sentinel closes a trailing run
        if w == 0:
            if cur_base == -1:
                cur_base, cur_len = i, 1
            else:
                cur_len += 1
        elif cur_base != -1:
            if best_base == -1 or cur_len > best_len:
                best_base, best_len = cur_base, cur_len
            cur_base = -1
    if best_base != -1 and best_len < 2:
        best_base = -1

    out: list[str] = []
    i = 0
    while i < 8:
        if best_base != -1 and best_base <= i < best_base + best_len:
            if i == best_base:
                out.append(":")
            i += 1
            continue
        if i != 0:
            out.append(":")
        if i == 6 and best_base == 0 and (
            best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)
        ):
            out.append(".".join(str(b) for b in packed[12:]))
            break
        out.append(format(words[i], "x"))
        i += 1
    if best_base != -1 and best_base + best_len == 8:
        out.append(":")
    return "".join(out)


def _addr_str(addr: IPAddress) -> str:
    if isinstance(addr, IPv6Address):
        return _inet_ntop6(addr)
    return str(addr)


def _addrport(addr: IPAddress, port: int) -> str:
    """ipvsadm's numeric ``addrport_to_anyname``: ``a.b.c.d:p`` / ``[v6]:p``."""
    if isinstance(addr, IPv6Address):
        return "[%s]:%u" % (_inet_ntop6(addr), int(port) & 0xFFFF)
    return "%s:%u" % (addr, int(port) & 0xFFFF)


def addrport(addr: IPAddress | str, port: int) -> str:
    """ADDR:PORT as the listings print it (``a.b.c.d:p``, ``[v6]:p``); addr an address or its
    text (`lb status` prints its endpoints so, and `lb weight` takes them back)."""
    return _addrport(ip_address(addr) if isinstance(addr, str) else addr, port)


def _c_cut(name: str, n: int) -> str:
    """``name[n] = '\\0'``: ipvsadm cuts IPv4 names to fit their column."""
    return name[:n]


def _service_family(svc: ServiceRow) -> int:
    if svc.fwmark:
        fam = svc.family
    elif svc.address is None:
        raise ValueError("a service without fwmark needs an address")
    else:
        fam = svc.address.version
    if fam not in (4, 6):
        raise ValueError(f"family must be 4 or 6, got {fam!r}")
    return fam


def _service_name(svc: ServiceRow) -> str:
    """First column: ``FWM  %u [IPv6]`` or ``%-4s addr:port`` (IPv4 cut at 33)."""
    fam = _service_family(svc)
    if svc.fwmark:
        name = "FWM  %u" % _u32(svc.fwmark)
        if fam == 6:
            name += " IPv6"
        return name
    assert svc.address is not None
    name = "%-4s %s" % (svc.protocol, _addrport(svc.address, svc.port))
    if fam != 6:
        name = _c_cut(name, 33)
    return name


def _real_name(real: RealRow) -> str:
    name = _addrport(real.address, real.port)
    if not isinstance(real.address, IPv6Address):
        name = _c_cut(name, 28)
    return name


def _mask_text(svc: ServiceRow, fam: int) -> str | None:
    """The text after `` mask `` or None when ipvsadm prints no mask."""
    m = svc.netmask
    if m is None:
        return None
    if fam == 4:
        if isinstance(m, int):
            if not 0 <= m <= 32:
                raise ValueError(f"IPv4 prefix length out of range: {m}")
            mask = IPv4Address((_U32 << (32 - m)) & _U32)
        else:
            mask = IPv4Address(str(m))
        if int(mask) == _U32:
            return None
        return str(mask)
    plen = int(m)
    if plen == 128:
        return None
    return "%i" % plen


def _service_line_default(svc: ServiceRow) -> str:
    fam = _service_family(svc)
    parts = ["%s %s" % (_service_name(svc), svc.scheduler)]
    if svc.sched_flags:
        parts.append(" (%s)" % ",".join(svc.sched_flags))
    if svc.persistent is not None:
        parts.append(" persistent %u" % _u32(svc.persistent))
        mask = _mask_text(svc, fam)
        if mask is not None:
            parts.append(" mask %s" % mask)
    if svc.ops:
        parts.append(" ops")
    return "".join(parts) + "\n"


def largenum(n: int, exact: bool = False) -> str:
    """ipvsadm's ``print_largenum``: always at least 9 characters wide.

    - exact: ``%*llu`` with width 9, or digits+1 when there are more than 8
      digits (so there is always a separating space);
    - otherwise: ``%9llu`` below 10^8, then ``%8llu`` + K (/10^3) below 10^9,
      M (/10^6) below 10^11, G (/10^9) below 10^14, T (/10^12) above.
    """
    i = _u64(n)
    if exact:
        digits = len(str(i))
        width = 9 if digits <= 8 else digits + 1
        return "%*d" % (width, i)
    if i < 100_000_000:
        return "%9d" % i
    if i < 1_000_000_000:
        return "%8dK" % (i // 1_000)
    if i < 100_000_000_000:
        return "%8dM" % (i // 1_000_000)
    if i < 100_000_000_000_000:
        return "%8dG" % (i // 1_000_000_000)
    return "%8dT" % (i // 1_000_000_000_000)


def _five(s: Stats, exact: bool) -> str:
    return "".join(
        largenum(v, exact) for v in (s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)
    )


def _addr_key(addr: IPAddress | None) -> tuple[int, int]:
    if addr is None:
        return (0, 0)
    return (addr.version, int(addr))


def _service_sort_key(svc: ServiceRow) -> tuple:
    # ipvs_cmp_services: fwmark, af, protocol number, address, port.
    fam = _service_family(svc)
    if svc.fwmark:
        return (_u32(svc.fwmark), fam, 0, 0, 0)
    assert svc.address is not None
    return (
        0,
        fam,
        _PROTO_NUM.get(svc.protocol.upper(), 256),
        int(svc.address),
        int(svc.port),
    )


def _real_sort_key(real: RealRow) -> tuple:
    # ipvs_cmp_dests: address, then port.
    return (*_addr_key(real.address), int(real.port))


def _ordered_services(services: Iterable[ServiceRow], sort: bool) -> list[ServiceRow]:
    services = list(services)
    return sorted(services, key=_service_sort_key) if sort else services


def _ordered_reals(svc: ServiceRow, sort: bool) -> list[RealRow]:
    return sorted(svc.reals, key=_real_sort_key) if sort else list(svc.reals)


# --------------------------------------------------------------------------
# listings
# --------------------------------------------------------------------------

_TITLES = {
    "default": "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
    "stats": "%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n"
    % ("Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"),
    "rate": "%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n"
    % ("Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"),
    "thresholds": "%-33s %-10s %-10s %-10s %-10s\n  -> RemoteAddress:Port\n"
    % ("Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"),
    "persistent": "%-33s %-9s %-11s %-10s %-10s\n  -> RemoteAddress:Port\n"
    % ("Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"),
    "tun": "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n",
}


def _real_line(real: RealRow, mode: str, exact: bool) -> str:
    name = _real_name(real)
    if mode == "stats":
        return "  -> %-28s%s\n" % (name, _five(real.stats, exact))
    if mode == "rate":
        r = real.rate
        return "  -> %-28s %8d %8d %8d%s%s\n" % (
            name,
            _u64(r.conns),
            _u64(r.inpkts),
            _u64(r.outpkts),
            largenum(r.inbytes, exact),
            largenum(r.outbytes, exact),
        )
    if mode == "thresholds":
        return "  -> %-28s %-10d %-10d %-10d %-10d\n" % (
            name,
            _u32(real.u_threshold),
            _u32(real.l_threshold),
            _u32(real.active),
            _u32(real.inactive),
        )
    if mode == "persistent":
        return "  -> %-28s %-9d %-11d %-10d %-10d\n" % (
            name,
            _u32(real.weight),
            _u32(real.persist),
            _u32(real.active),
            _u32(real.inactive),
        )
    if mode == "tun":
        return "  -> %-28s %-7s %-13s %-6d %-10d %-10d\n" % (
            name,
            real.forward,
            real.tunnel_info or "n/a",
            int(real.weight),
            _u32(real.active),
            _u32(real.inactive),
        )
    return "  -> %-28s %-7s %-6d %-10d %-10d\n" % (
        name,
        real.forward,
        int(real.weight),
        _u32(real.active),
        _u32(real.inactive),
    )


def _service_line(svc: ServiceRow, mode: str, exact: bool) -> str:
    if mode == "stats":
        return "%-33s%s\n" % (_service_name(svc), _five(svc.stats, exact))
    if mode == "rate":
        return "%-33s%s\n" % (_service_name(svc), _five(svc.rate, exact))
    return _service_line_default(svc)


def format_services(
    services: list[ServiceRow],
    *,
    mode: str = "default",
    exact: bool = False,
    sort: bool = True,
    header: bool = True,
    size: int = 4096,
    version: str = "1.2.1",
) -> str:
    """The ``ipvsadm -L -n`` table.

    mode: "default", "stats" (--stats), "rate" (--rate), "thresholds"
    (--thresholds), "persistent" (--persistent-conn), "tun" (--tun-info).
    exact: --exact (only affects the largenum columns of stats/rate).
    sort: ipvsadm's default ordering; False keeps the given order (--nosort).
    header: print the "IP Virtual Server version ..." line.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    out: list[str] = []
    if header:
        out.append("IP Virtual Server version %s (size=%d)\n" % (version, int(size)))
    out.append(_TITLES[mode])
    for svc in _ordered_services(services, sort):
        out.append(_service_line(svc, mode, exact))
        for real in _ordered_reals(svc, sort):
            out.append(_real_line(real, mode, exact))
    return "".join(out)


def _conn_sort_key(c: ConnRow) -> tuple:
    return (
        _PROTO_NUM.get(c.protocol.upper(), 256),
        *_addr_key(c.client[0]),
        int(c.client[1]),
        *_addr_key(c.virtual[0]),
        int(c.virtual[1]),
        *_addr_key(c.dest[0]),
        int(c.dest[1]),
    )


def format_connections(conns: list[ConnRow], *, sort: bool = False, pe: bool = False) -> str:
    """The ``ipvsadm -L -n -c`` listing.

    ipvsadm prints connections in kernel order; sort=True orders them by
    protocol, client, virtual, destination (this module's choice).
    pe: ``--persistent-conn`` (ipvsadm's list_conn then titles two more columns, "pe name"
    and "pe_data", filled only for entries with persistence-engine data: none here).
    """
    rows = sorted(conns, key=_conn_sort_key) if sort else list(conns)
    if pe:
        title = "pro expire %-11s %-18s %-18s %-18s %-16s %s\n" % (
            "state", "source", "virtual", "destination", "pe name", "pe_data")
    else:
        title = "pro expire %-11s %-18s %-18s %s\n" % ("state", "source", "virtual", "destination")
    out = ["IPVS connection entries\n", title]
    for c in rows:
        expires = max(0, int(c.expire))
        expire_str = "%02d:%02d" % (expires // 60, expires % 60)
        out.append(
            "%-3s %-6s %-11s %-18s %-18s %s\n"
            % (
                c.protocol,
                expire_str,
                c.state,
                _addrport(*c.client),
                _addrport(*c.virtual),
                _addrport(*c.dest),
            )
        )
    return "".join(out)


def format_timeout(tcp: int, tcpfin: int, udp: int) -> str:
    """``ipvsadm -L --timeout``."""
    return "Timeout (tcp tcpfin udp): %d %d %d\n" % (int(tcp), int(tcpfin), int(udp))


# --------------------------------------------------------------------------
# ipvsadm -S -n
# --------------------------------------------------------------------------

# ipvsadm's fwd_switch(): the option of each forwarding method (Local is written as -g)
_FWD_SWITCH = {"Masq": "-m", "Tunnel": "-i", "Route": "-g", "Local": "-g"}
_PROTO_SWITCH = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}


def _rule_service(svc: ServiceRow) -> str:
    """The service part of a rule: ``-t addr:port``, ``-u ...``, ``-f MARK`` (``-f MARK -6``)."""
    fam = _service_family(svc)
    if svc.fwmark:
        return "-f %u" % _u32(svc.fwmark) + (" -6" if fam == 6 else "")
    assert svc.address is not None
    return "%s %s" % (_PROTO_SWITCH[svc.protocol.upper()], _addrport(svc.address, svc.port))


def format_save(services: list[ServiceRow], *, sort: bool = True) -> str:
    """``ipvsadm -S -n`` as Debian's ipvsadm prints it (checked against it in the IPVS VM): one
    ``-A`` line per service (scheduler, ``-p`` timeout and ``-M`` mask when persistent, then
    ``-o``, then ``-b`` flags), then one ``-a`` line per real server (``-r``, its method, ``-w``);
    no header.  ipvsadm's save carries no thresholds (``-x``/``-y``), so neither does this one.
    ``ipvsadm -R`` reads it back: the way from lb to plain IPVS."""
    out: list[str] = []
    for svc in _ordered_services(services, sort):
        name = _rule_service(svc)
        line = "-A %s -s %s" % (name, svc.scheduler)
        if svc.persistent is not None:
            line += " -p %u" % _u32(svc.persistent)
            mask = _mask_text(svc, _service_family(svc))
            if mask is not None:
                line += " -M %s" % mask
        # ipvsadm 1.31 print_service_entry (FMT_RULE): -p, -M, --pe, then -o, then -b
        if svc.ops:
            line += " -o"
        if svc.sched_flags:
            line += " -b %s" % ",".join(svc.sched_flags)
        out.append(line + "\n")
        for real in _ordered_reals(svc, sort):
            out.append("-a %s -r %s %s -w %d%s\n" % (name, _addrport(real.address, real.port),
                                                     _FWD_SWITCH.get(real.forward, "-g"), int(real.weight),
                                                     _tunnel_rule(real) if real.forward == "Tunnel" else ""))
    return "".join(out)


# --tun-info's checksum flag -> ipvsadm's option for it
_TUN_CSUM_OPTS = {"-c": "--tun-nocsum", "+c": "--tun-csum", "r+c": "--tun-remcsum"}


def _tunnel_rule(real) -> str:
    """ipvsadm 1.31's -S options of a tunnel: --tun-type ipip; gue with its port and checksum;
    gre with its checksum (so that ipvsadm -R makes the same tunnel); none for an unknown one."""
    kind, _, rest = (real.tunnel_info or "").partition(":")
    if kind == "ipip":
        return " --tun-type ipip"
    if kind == "gue":
        port, _, csum = rest.partition(":")
        return f" --tun-type gue --tun-port {port} {_TUN_CSUM_OPTS.get(csum, '--tun-nocsum')}"
    if kind == "gre":
        return f" --tun-type gre {_TUN_CSUM_OPTS.get(rest, '--tun-nocsum')}"
    return ""


# --------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------


# what the connection tables' tallies (lb_ct_events) are called in `lb list --counters`
CT_EVENT_TEXT = {"embryo_new": "embryonic entries made", "embryo_promoted": "embryonic entries established",
                 "embryo_gone": "embryonic entries expired"}


def format_counters(counters: dict[str, int], events: dict[str, int], exact: bool = False) -> str:
    """`lb list --counters`: the data path's event counters (packets passed, dropped or answered
    for a reason, inserts refused) and the connection tables' tallies, in the layout of
    `lb list --stats` (a 33-column name, ipvsadm's largenum)."""
    lines = ["%-33s %8s\n" % ("Data path event", "Packets")]
    lines += ["%-33s%s\n" % (name, largenum(v, exact)) for name, v in counters.items()]
    if events:
        lines.append("%-33s %8s\n" % ("Connection tables", "Count"))
        lines += ["%-33s%s\n" % (CT_EVENT_TEXT.get(name, name), largenum(v, exact)) for name, v in events.items()]
    return "".join(lines)


def _stats_json(s: Stats) -> dict[str, int]:
    return {
        "conns": int(s.conns),
        "inpkts": int(s.inpkts),
        "outpkts": int(s.outpkts),
        "inbytes": int(s.inbytes),
        "outbytes": int(s.outbytes),
    }


def _rate_json(s: Stats) -> dict[str, int]:
    return {
        "cps": int(s.conns),
        "inpps": int(s.inpkts),
        "outpps": int(s.outpkts),
        "inbps": int(s.inbytes),
        "outbps": int(s.outbytes),
    }


def _endpoint_json(ep: tuple[IPAddress, int]) -> dict[str, Any]:
    return {"address": _addr_str(ep[0]), "port": int(ep[1])}


def _netmask_json(svc: ServiceRow, fam: int) -> str | int | None:
    if svc.persistent is None or svc.netmask is None:
        return None
    if fam == 4:
        text = _mask_text(svc, 4)
        return text if text is not None else "255.255.255.255"
    return int(svc.netmask)


def _real_json(r: RealRow) -> dict[str, Any]:
    return {
        "address": _addr_str(r.address),
        "port": int(r.port),
        "family": r.address.version,
        "forward": r.forward,
        "weight": int(r.weight),
        "active": int(r.active),
        "inactive": int(r.inactive),
        "persist": int(r.persist),
        "u_threshold": int(r.u_threshold),
        "l_threshold": int(r.l_threshold),
        "tunnel_info": r.tunnel_info,
        "stats": _stats_json(r.stats),
        "rate": _rate_json(r.rate),
    }


def _service_json(svc: ServiceRow, sort: bool) -> dict[str, Any]:
    fam = _service_family(svc)
    fw = bool(svc.fwmark)
    return {
        "kind": "fwmark" if fw else "addr",
        "protocol": None if fw else svc.protocol,
        "address": None if fw else _addr_str(svc.address),  # type: ignore[arg-type]
        "port": None if fw else int(svc.port),
        "fwmark": int(svc.fwmark),
        "family": fam,
        "name": _service_name(svc),
        "scheduler": svc.scheduler,
        "sched_flags": list(svc.sched_flags),
        "persistent": None if svc.persistent is None else int(svc.persistent),
        "netmask": _netmask_json(svc, fam),
        "ops": bool(svc.ops),
        "stats": _stats_json(svc.stats),
        "rate": _rate_json(svc.rate),
        "reals": [_real_json(r) for r in _ordered_reals(svc, sort)],
    }


def _conn_json_text(c: ConnRow) -> str:
    """One connection of to_json's "connections" as json.dumps(indent=2) lays it out inside the
    document (4 spaces in): addresses and numbers need no escaping, the two names are dumped."""
    return _CONN_JSON % (
        json.dumps(c.protocol), int(c.expire), json.dumps(c.state),
        _addr_str(c.client[0]), int(c.client[1]), _addr_str(c.virtual[0]), int(c.virtual[1]),
        _addr_str(c.dest[0]), int(c.dest[1]))


_CONN_JSON = "\n".join((
    "    {",
    '      "protocol": %s,',
    '      "expire": %d,',
    '      "state": %s,',
    '      "client": {', '        "address": "%s",', '        "port": %d', "      },",
    '      "virtual": {', '        "address": "%s",', '        "port": %d', "      },",
    '      "dest": {', '        "address": "%s",', '        "port": %d', "      }",
    "    }"))


def json_chunks(
    services: list[ServiceRow],
    conns: Iterable[ConnRow] | None = None,
    *,
    sort: bool = True,
) -> Iterator[str]:
    """``json.dumps(to_json(services, conns, sort=sort), indent=2)`` in pieces, the connections
    formatted as they come (``conns`` may be a generator): `lb list -c --json` of a million
    connections neither holds their dicts nor one text of them all."""
    head = json.dumps(to_json(services, sort=sort), indent=2)
    if conns is None:
        yield head
        return
    assert head.endswith("\n}")
    # the first connection read before anything is given out: a table that cannot be read at
    # once (maps of another lb version) is said with nothing printed, as without streaming
    it = iter(conns)
    first = next(it, None)
    yield head[:-2] + ',\n  "connections": ['
    sep, buf = "\n", []
    for c in it if first is None else itertools.chain((first,), it):
        buf.append(sep + _conn_json_text(c))
        sep = ",\n"
        if len(buf) >= 4096:
            yield "".join(buf)
            buf.clear()
    yield "".join(buf) + ("]\n}" if sep == "\n" else "\n  ]\n}")


def to_json(
    services: list[ServiceRow],
    conns: list[ConnRow] | None = None,
    *,
    sort: bool = True,
) -> dict[str, Any]:
    """The ``lb list --json`` document; see the module docstring for the shape."""
    doc: dict[str, Any] = {
        "schema": JSON_SCHEMA_VERSION,
        "services": [_service_json(s, sort) for s in _ordered_services(services, sort)],
    }
    if conns is not None:
        doc["connections"] = [
            {
                "protocol": c.protocol,
                "expire": int(c.expire),
                "state": c.state,
                "client": _endpoint_json(c.client),
                "virtual": _endpoint_json(c.virtual),
                "dest": _endpoint_json(c.dest),
            }
            for c in conns
        ]
    return doc


