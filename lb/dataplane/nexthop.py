"""Next hops for real servers: egress interface, the server's MAC, our MAC (pyroute2).

Resolved in the control plane and kept in the maps, so the data path never calls the FIB
(bpf_fib_lookup costs ~6x a MAC rewrite here)."""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("lb.nexthop")

# NUD states with a usable lladdr
_NUD_OK = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80   # REACHABLE STALE DELAY PROBE NOARP PERMANENT


class NextHopError(Exception):
    pass


@dataclass(frozen=True)
class NextHop:
    ifindex: int
    ifname: str
    mac: bytes        # the real server's (or gateway's) MAC
    src_mac: bytes    # ours on ifindex
    onlink: bool      # True when the real server itself is the next hop
    # our source address toward the server (the route's preferred source): a tunnel's outer source
    src_addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    mtu: int = 0      # the egress link's MTU (a tunnel's outer header must fit in it)


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _route(ipr: IPRoute, addr) -> tuple[int, str | None, str | None]:
    try:
        routes = ipr.route("get", dst=str(addr))
    except Exception as e:  # pyroute2 raises NetlinkError
        raise NextHopError(f"no route to real server {addr}: {e}") from None
    r = routes[0]
    if r.get("type", 1) == 2 or r.get_attr("RTA_OIF") is None:   # RTN_LOCAL
        raise NextHopError(f"real server {addr} is an address of this director")
    return r.get_attr("RTA_OIF"), r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_PREFSRC")


def cached(cache: dict, key, fn):
    """fn() once per key in cache: its answer, or its NextHopError raised again each time."""
    hit = cache.get(key)
    if hit is None:
        try:
            hit = fn()
        except NextHopError as e:
            hit = e
        cache[key] = hit
    if isinstance(hit, NextHopError):
        raise hit
    return hit


class _Session:
    """What resolve() calls share inside session(): one netlink socket (opened on first use), and
    each interface's attributes and neighbour table as first read -- every resolve() of its own
    dumped the whole neighbour table of its interface, 55-77 ms a server with 1,000 neighbours
    there (a pass over 1,000 real servers: over a minute of a core, every 10 s)."""

    def __init__(self, read_tables: bool = True):
        self.read_tables = read_tables
        self._ipr: IPRoute | None = None
        self.links: dict[int, tuple[str, bytes, int]] = {}
        self.neighbours: dict[int, dict[str, bytes]] = {}
        self.routes: dict = {}                  # address -> _route's answer (or its NextHopError)
        self.asked: dict[str, float] = {}       # next hop -> when the kernel was asked for its MAC

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def route(self, addr) -> tuple[int, str | None, str | None]:
        return cached(self.routes, addr, lambda: _route(self.ipr, addr))

    def ask(self, addr, hop: str, ifname: str) -> float:
        """When the kernel was asked for hop's MAC this session: now, if it was not yet."""
        t = self.asked.get(hop)
        if t is None:
            try:
                _kick_resolution(hop, ifname)
            except OSError as e:
                # an output filter that drops it (EPERM), say: this server gets no new
                # connections until it answers, as when nothing answers -- not a failed apply
                raise NextHopError(f"real server {addr}: cannot make the kernel ask for {hop}'s MAC on "
                                   f"{ifname}: {e.strerror or e}") from None
            t = self.asked[hop] = time.monotonic()
        return t

    def link(self, ifindex: int) -> tuple[str, bytes, int]:
        """(name, MAC, MTU) of an interface."""
        hit = self.links.get(ifindex)
        if hit is None:
            link = self.ipr.get_links(ifindex)[0]
            hit = self.links[ifindex] = (link.get_attr("IFLA_IFNAME"), _mac(link.get_attr("IFLA_ADDRESS")),
                                         link.get_attr("IFLA_MTU") or 0)
        return hit

    def neighbour(self, ifindex: int, addr: str) -> bytes | None:
        """addr's MAC in the interface's neighbour table as read once this session (None: no
        usable entry then) -- or, in a session that does not read whole tables, as the kernel
        holds it now."""
        table = self.neighbours.get(ifindex)
        if table is None and not self.read_tables:
            return self.neighbour_now(ifindex, addr)
        if table is None:
            table = self.neighbours[ifindex] = {}
            for n in self.ipr.get_neighbours(ifindex=ifindex):
                dst, lladdr = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
                if dst is not None and n["state"] & _NUD_OK and lladdr:
                    table[dst] = _mac(lladdr)
        return table.get(addr)

    def neighbour_now(self, ifindex: int, addr: str) -> bytes | None:
        """addr's MAC as the kernel holds it now: one RTM_GETNEIGH for it (a kernel before 4.18
        has no such request: the table read again)."""
        try:
            got = self.ipr.neigh("get", dst=addr, ifindex=ifindex)
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return None
            if e.code not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            self.neighbours.pop(ifindex, None)
            self.read_tables = True
            return self.neighbour(ifindex, addr)
        mac = None
        for n in got:
            if n["state"] & _NUD_OK and n.get_attr("NDA_LLADDR"):
                mac = _mac(n.get_attr("NDA_LLADDR"))
        if mac is not None and ifindex in self.neighbours:
            self.neighbours[ifindex][addr] = mac
        return mac


_local = threading.local()


@contextmanager
def session(read_tables: bool = True):
    """resolve() calls inside (in this thread) share one netlink socket and one read of each
    interface and of its neighbour table: a pass over many real servers (an apply) reads the
    neighbour table once, not once per server.  read_tables=False: each neighbour is asked for
    by itself instead (RTM_GETNEIGH) -- for a pass that resolves a part of the servers (the
    refresh, round robin under a time budget), where reading a table of 64,000 neighbours would
    take longer than the budget.  Nested: the outer one."""
    if getattr(_local, "session", None) is not None:
        yield
        return
    s = _local.session = _Session(read_tables)
    try:
        yield
    finally:
        _local.session = None
        s.close()


def _kick_resolution(addr: str, ifname: str) -> None:
    """Make the kernel resolve addr: one empty datagram to the discard port on that link."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            s.sendto(b"", (addr, 9))
        except OSError as e:
            if e.errno not in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN):
                raise


def resolve(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, timeout: float = 3.0,
            need_onlink: bool = False) -> NextHop:
    s = getattr(_local, "session", None)
    if s is None:
        with session():
            return resolve(addr, timeout, need_onlink)
    oif, gw, src = s.route(addr)
    if need_onlink and gw is not None:
        raise NextHopError(f"real server {addr} is reached through gateway {gw}: direct routing "
                           "needs it on a directly connected network")
    hop = gw or str(addr)
    ifname, src_mac, mtu = s.link(oif)
    mac = s.neighbour(oif, hop)
    if mac is None:
        # asked for by ask() already, with others: their answers are waited for together
        deadline = s.ask(addr, hop, ifname) + timeout
        while mac is None and time.monotonic() < deadline:
            time.sleep(0.05)
            mac = s.neighbour_now(oif, hop)
    if mac is None:
        raise NextHopError(f"real server {addr}: no ARP/ND answer from {hop} on {ifname}")
    return NextHop(oif, ifname, mac, src_mac, gw is None, ipaddress.ip_address(src) if src else None, mtu)


def ask(pairs) -> int:
    """In a session(): the kernel asked at once for the MAC of each next hop of pairs ((address,
    onlink) each) that its neighbour tables lack, so that the resolve() calls that follow wait
    for the answers together -- one timeout for the lot, not one each after the other (an apply
    adding 20 real servers not up yet waited a minute, holding the data plane's lock).  Errors
    are left to resolve() to say.  Returns the next hops asked for."""
    s = getattr(_local, "session", None)
    if s is None:
        return 0
    n = 0
    for addr, onlink in pairs:
        try:
            oif, gw, _ = s.route(addr)
            hop = gw or str(addr)
            if (onlink and gw is not None) or hop in s.asked or s.neighbour(oif, hop) is not None:
                continue
            s.ask(addr, hop, s.link(oif)[0])
            n += 1
        except (NextHopError, NetlinkError, OSError):
            continue
    return n


resolve.ask = ask       # (a resolver that can ask ahead: ServiceTable looks for it)
