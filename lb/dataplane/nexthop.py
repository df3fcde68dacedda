"""Next hops for real servers: egress interface, the server's MAC, our MAC (pyroute2).

Resolved in the control plane and kept in the maps, so the data path never calls the FIB
(bpf_fib_lookup costs ~6x a MAC rewrite here)."""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

from pyroute2 import IPRoute

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


def _lookup_neigh(ipr: IPRoute, ifindex: int, addr: str) -> bytes | None:
    for n in ipr.get_neighbours(ifindex=ifindex):
        if n.get_attr("NDA_DST") == addr and n["state"] & _NUD_OK and n.get_attr("NDA_LLADDR"):
            return _mac(n.get_attr("NDA_LLADDR"))
    return None


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
    with IPRoute() as ipr:
        oif, gw, src = _route(ipr, addr)
        if need_onlink and gw is not None:
            raise NextHopError(f"real server {addr} is reached through gateway {gw}: direct routing "
                               "needs it on a directly connected network")
        hop = gw or str(addr)
        link = ipr.get_links(oif)[0]
        ifname = link.get_attr("IFLA_IFNAME")
        src_mac = _mac(link.get_attr("IFLA_ADDRESS"))
        mac = _lookup_neigh(ipr, oif, hop)
        deadline = time.monotonic() + timeout
        kicked = False
        while mac is None and time.monotonic() < deadline:
            if not kicked:
                try:
                    _kick_resolution(hop, ifname)
                except OSError as e:
                    # an output filter that drops it (EPERM), say: this server gets no new
                    # connections until it answers, as when nothing answers -- not a failed apply
                    raise NextHopError(f"real server {addr}: cannot make the kernel ask for {hop}'s MAC on "
                                       f"{ifname}: {e.strerror or e}") from None
                kicked = True
            time.sleep(0.05)
            mac = _lookup_neigh(ipr, oif, hop)
        if mac is None:
            raise NextHopError(f"real server {addr}: no ARP/ND answer from {hop} on {ifname}")
        return NextHop(oif, ifname, mac, src_mac, gw is None, ipaddress.ip_address(src) if src else None,
                       link.get_attr("IFLA_MTU") or 0)
