"""Ownership of the virtual IPs and the real servers' floating gateway (nat_router), via pyroute2.

The active director holds them and a clean stop gives them back.  Without [ha] the one director is
always active; with [ha] pulse (lb.ha.pulse) decides the role and the engine takes or releases
these addresses on each role change, announcing them with gratuitous ARP / unsolicited neighbour
advertisements (lb.ha.announce)."""
from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("lb.ha")

_IFA_F_NODAD = 0x02     # linux/if_addr.h
_FOREVER = 0xFFFFFFFF   # INFINITY_LIFE_TIME: a valid lifetime without end
_IFF_UP = 0x1           # linux/if.h


class AddressError(Exception):
    """An address could not be added (or cannot be, as check() finds); the message names it."""


@dataclass(frozen=True)
class OwnedAddress:
    ifname: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    label: str = ""


def wanted_addresses(cfg) -> list[OwnedAddress]:
    """The addresses the active director must hold for a config."""
    out: list[OwnedAddress] = []
    seen = set()
    for vs in cfg.virtual_servers:
        if not vs.active:
            continue
        for vip in vs.vips:          # a firewall-mark service's port groups may name several
            plen = 32 if vip.version == 4 else 128
            a = OwnedAddress(cfg.vip_device(vs), ipaddress.ip_interface(f"{vip}/{plen}"))
            if (a.ifname, a.address.ip) not in seen:
                seen.add((a.ifname, a.address.ip))
                out.append(a)
    # NAT: the real servers' gateway (replies must come back to be un-NATed).  Direct routing with
    # [ha]: the real servers may route their replies through the director too, so the gateway
    # floats with the VIPs; without [ha] a direct-routing nat_router is ignored (as in Piranha).
    if cfg.nat_router is not None and (cfg.network == "nat" or cfg.ha is not None):
        out.append(OwnedAddress(cfg.nat_device, cfg.nat_router))
    return out


def _ifindex(ipr: IPRoute, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise LookupError(f"interface {ifname} does not exist")
    return idx[0]


def local_addresses() -> set:
    """Every address of this network namespace, on any interface."""
    with IPRoute() as ipr:
        return {ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}


def interface_exists(ifname: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def _key(address: str, prefixlen: int) -> tuple:
    """What makes an address the same one on an interface: IPv4 the address and its prefix (one
    address may be there under several), IPv6 the address alone -- the kernel keeps one copy of
    it whatever the prefix (another is EEXIST), so one there with another prefix (put by hand)
    is held already: not added, and not removed on release either (a delete names the prefix)."""
    return (address,) if ":" in address else (address, prefixlen)


def _there(ipr: IPRoute, idx: int, addr) -> int | None:
    """The prefix length under which addr is on the interface (see _key), None if it is not."""
    fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    want = _key(str(addr.ip), addr.network.prefixlen)
    for a in ipr.get_addr(family=fam, index=idx):
        if _key(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) == want:
            return a["prefixlen"]
    return None


def _has(ipr: IPRoute, idx: int, addr) -> bool:
    return _there(ipr, idx, addr) is not None


def present(addrs: list[OwnedAddress]) -> list[OwnedAddress]:
    """Those of addrs that are on their interfaces."""
    with IPRoute() as ipr:
        out = []
        for a in addrs:
            idx = ipr.link_lookup(ifname=a.ifname)
            if idx and _has(ipr, idx[0], a.address):
                out.append(a)
        return out


def check(addrs: list[OwnedAddress]) -> None:
    """What take() needs, checked before anything is written (a reload's plan): every
    interface exists, and carries IPv6 where an IPv6 address goes.  AddressError otherwise."""
    with IPRoute() as ipr:
        for a in addrs:
            if not ipr.link_lookup(ifname=a.ifname):
                raise AddressError(f"address {a.address}: interface {a.ifname} does not exist")
            if a.address.version == 6:
                try:
                    with open(f"/proc/sys/net/ipv6/conf/{a.ifname}/disable_ipv6") as f:
                        off = f.read().strip() == "1"
                except OSError:
                    off = True
                if off:
                    raise AddressError(f"address {a.address}: IPv6 is disabled on {a.ifname} "
                                       f"(net.ipv6.conf.{a.ifname}.disable_ipv6)")


def _add(ipr: IPRoute, idx: int, a: OwnedAddress) -> None:
    # IPv6 without duplicate address detection: a VIP (or the real servers' gateway) taken over
    # from a failed director must answer at once, not after DAD's second.  And deprecated
    # (preferred_lft 0, valid forever, as keepalived and kube-vip add theirs): it still takes
    # packets and answers neighbour solicitations, but is the source of the director's own
    # traffic only when no other address will do (RFC 6724 rule 3).  Else a /128 VIP matches a
    # destination of its /64 longer than the director's own /64 address (rule 8): health checks
    # to real servers holding the VIP on lo would leave from it and be answered on the real
    # server itself, a tunnel's outer header and BGP's local address would take it, and the
    # floating gateway's own connections would end at a takeover.  pyroute2 0.7 reads the
    # lifetimes from cacheinfo's keys, later ones from the arguments: both given.
    kw = {}
    if a.address.version == 6:
        kw = {"flags": _IFA_F_NODAD, "preferred": 0, "valid": _FOREVER,
              "cacheinfo": {"preferred": 0, "valid": _FOREVER}}
    ipr.addr("add", index=idx, address=str(a.address.ip), prefixlen=a.address.network.prefixlen, **kw)


def take(addrs: list[OwnedAddress]) -> list[OwnedAddress]:
    """Add the addresses not yet there; returns the ones added.  All or nothing: when one
    cannot be added, those added by this call are removed again and AddressError says which
    one failed and why."""
    added: list[OwnedAddress] = []
    with IPRoute() as ipr:
        for a in addrs:
            try:
                idx = _ifindex(ipr, a.ifname)
                plen = _there(ipr, idx, a.address)
                if plen is not None:
                    log.info("address %s already on %s%s", a.address, a.ifname,
                             "" if plen == a.address.network.prefixlen else f" as /{plen}")
                    continue
                _add(ipr, idx, a)
            except (LookupError, NetlinkError) as e:
                if added:
                    release(added)
                why = e if isinstance(e, LookupError) else os.strerror(e.code) if e.code else e
                raise AddressError(f"adding address {a.address} to {a.ifname}: {why}") from None
            added.append(a)
            log.info("added address %s to %s", a.address, a.ifname)
    return added


def restore(addrs: list[OwnedAddress]) -> tuple[list[OwnedAddress], list[str]]:
    """Those of addrs gone from their interfaces, added back: a link that went down and up has
    lost its IPv6 addresses (net.ipv6.conf.*.keep_addr_on_down is 0 by default), an interface
    deleted and made again all of them, and a hand may have run `ip addr del`.  An interface
    that does not exist or is down is left for later (nothing reaches the address there).  One
    dump of each interface's addresses (a thousand VIPs: one dump, not a thousand).  Returns (the
    addresses added back, why others could not be)."""
    back: list[OwnedAddress] = []
    errors: list[str] = []
    by_if: dict[str, list[OwnedAddress]] = {}
    for a in addrs:
        by_if.setdefault(a.ifname, []).append(a)
    with IPRoute() as ipr:
        for ifname, mine in by_if.items():
            idx = ipr.link_lookup(ifname=ifname)
            links = ipr.get_links(idx[0]) if idx else []
            if not links or not links[0]["flags"] & _IFF_UP:
                continue
            there = {_key(x.get_attr("IFA_ADDRESS"), x["prefixlen"]) for x in ipr.get_addr(index=idx[0])}
            for a in mine:
                if _key(str(a.address.ip), a.address.network.prefixlen) in there:
                    continue
                try:
                    _add(ipr, idx[0], a)
                except NetlinkError as e:
                    errors.append(f"adding address {a.address} to {a.ifname} again: "
                                  f"{os.strerror(e.code) if e.code else e}")
                    continue
                back.append(a)
    return back, errors


class _Look:
    """When to look again at one kind of thing the watch hears of: at once when told, else
    `every` seconds after the last look (a notification can be lost)."""

    def __init__(self, every: float):
        self.every = every
        self.told = threading.Event()
        self.told.set()                     # the first look at once
        self.last: float | None = None

    def due(self, now: float) -> bool:
        """Look now?  Told, or `every` passed (cleared before the look, so a change during it
        makes another)."""
        if self.told.is_set() or self.last is None or now - self.last >= self.every:
            self.told.clear()
            self.last = now
            return True
        return False


class Watch:
    """When to look for lost addresses: rtnetlink tells of each address removed and each link
    change (its multicast groups, read in a thread of its own), and restore() runs only after one
    -- or FULL_CHECK seconds after the last look, in case a notification was lost (a socket
    buffer that overflowed).  A dump of a thousand addresses takes ~85 ms: once a second for
    nothing would be a core's tenth.

    The same notifications say when the director's own addresses changed (one added or removed
    anywhere: own_changed()), which the engine reads again then rather than at its next sweep;
    on_own_change, when set, is called from the watch's thread at each such notification.  And
    when a link changed (links_due()): attaching or removing an XDP program is one (RTM_NEWLINK),
    so the data plane looks for its programs gone from their interfaces then, or FULL_CHECK
    seconds after its last look, not every second (a look every second was most of an idle
    daemon's CPU)."""

    FULL_CHECK = 30.0

    def __init__(self):
        self._addresses = _Look(self.FULL_CHECK)   # an address removed, a link changed
        self._links = _Look(self.FULL_CHECK)       # a link changed (an XDP program attached or removed)
        self._own_changed = threading.Event()
        self.on_own_change = None           # callable, from the watch's thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lb-address-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A plain netlink socket read to its end at each wake, parsed by pyroute2: pyroute2's
        # IPRoute reads its socket into a queue of its own, so select() on it can say "nothing"
        # while a removal waits behind a burst of older notifications (seen: a VIP gone 15 s).
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            sock.setblocking(False)
        except OSError as e:                # looked at every FULL_CHECK seconds only
            log.warning("no rtnetlink notifications (%s): lost addresses and XDP programs are looked for every %.0f s",
                        e, self.FULL_CHECK)
            return
        marshal = MarshalRtnl()
        # poll(), not select(): lb raises its open-file limit for its health checks, and select()
        # refuses a descriptor past 1023 (ValueError) -- the thread died with a traceback, lost
        # addresses looked for only every FULL_CHECK seconds from then on
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(500):
                    continue
                try:
                    while True:             # every datagram there, not one a wake
                        data = sock.recv(1 << 16)
                        try:
                            events = {m["event"] for m in marshal.parse(data)}
                        except Exception:   # unreadable: look rather than miss a removal
                            events = {"RTM_DELADDR", "RTM_NEWLINK"}
                        if events & {"RTM_DELADDR", "RTM_NEWLINK", "RTM_DELLINK"}:
                            self._addresses.told.set()
                        if events & {"RTM_NEWLINK", "RTM_DELLINK"}:
                            self._links.told.set()
                        if events & {"RTM_NEWADDR", "RTM_DELADDR"}:
                            self._told_own()
                except BlockingIOError:
                    pass
                except OSError:             # ENOBUFS: notifications were lost; look
                    self._addresses.told.set()
                    self._links.told.set()
                    self._told_own()
                    self._stop.wait(0.5)
        finally:
            sock.close()

    def _told_own(self) -> None:
        self._own_changed.set()
        if self.on_own_change is not None:
            try:
                self.on_own_change()
            except Exception:               # (an event loop closed under it): the flag stays
                log.debug("address watch: the change could not be told", exc_info=True)

    def own_changed(self) -> bool:
        """Did an address of the director's come or go since the last call?  (cleared by it)"""
        if self._own_changed.is_set():
            self._own_changed.clear()
            return True
        return False

    def due(self, now: float) -> bool:
        """Look for lost addresses now?  A change was told, or FULL_CHECK passed."""
        return self._addresses.due(now)

    def again(self) -> None:
        """Look at the next check too (a restore that failed is tried again in a second, not at
        the next FULL_CHECK)."""
        self._addresses.told.set()

    def links_due(self, now: float) -> bool:
        """Look at the links now (the XDP programs on their interfaces)?  A link changed, or
        FULL_CHECK passed."""
        return self._links.due(now)

    def links_again(self) -> None:
        """Look at the links at the next check too (what the last look found still wrong)."""
        self._links.told.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def release(addrs: list[OwnedAddress]) -> None:
    with IPRoute() as ipr:
        for a in addrs:
            try:
                idx = _ifindex(ipr, a.ifname)
                ipr.addr("del", index=idx, address=str(a.address.ip), prefixlen=a.address.network.prefixlen)
                log.info("removed address %s from %s", a.address, a.ifname)
            except (LookupError, NetlinkError) as e:
                log.info("address %s on %s: %s", a.address, a.ifname, e)
