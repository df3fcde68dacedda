"""lb.ha.addresses against a fake of the kernel's address table behind pyroute2's IPRoute: no
interface is touched.  Each request is built by the installed pyroute2 itself (its argument
filters, as IPRoute.addr would send it), so an argument pyroute2 drops without a word shows
here; the fake then does with it what Linux's addrconf/devinet do (RTM_NEWADDR, RTM_DELADDR)."""
from __future__ import annotations

import errno
import ipaddress
import socket

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from lb.config import load
from lb.ha import addresses
from lb.ha.addresses import OwnedAddress

IFA_F_NODAD = 0x02          # linux/if_addr.h
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80
FOREVER = 0xFFFFFFFF        # INFINITY_LIFE_TIME


def pyroute2_request(**kw) -> ifaddrmsg:
    """The RTM_NEWADDR message the installed pyroute2 makes of IPRoute.addr("add", **kw)."""
    msg = ifaddrmsg()
    try:                                    # pyroute2 0.8 and later
        from pyroute2.iproute.linux import get_arguments_processor
    except ImportError:                     # 0.7: IPRoute.addr's own steps
        from pyroute2.requests.address import AddressFieldFilter, AddressIPRouteFilter
        from pyroute2.requests.main import RequestProcessor
        request = (RequestProcessor(context=kw, prime=kw).apply_filter(AddressFieldFilter())
                   .apply_filter(AddressIPRouteFilter("add")).finalize())
        for field in msg.fields:
            if field[0] != "flags":         # 0.7 sends the flags as IFA_FLAGS
                msg[field[0]] = request.pop(field[0], 0)
        for key, value in request.items():
            nla = ifaddrmsg.name2nla(key)
            if msg.valid_nla(nla) and value is not None:
                msg["attrs"].append([nla, value])
    else:
        for key, value in dict(get_arguments_processor("addr", "add", dict(kw))).items():
            if key in dict(msg.fields):
                msg[key] = value
            else:
                msg["attrs"].append([ifaddrmsg.name2nla(key), value])
    msg.encode()
    sent = ifaddrmsg(msg.data)
    sent.decode()
    return sent


class Addr(dict):
    """One address as get_addr() returns it."""

    def __init__(self, index: int, address: str, prefixlen: int, flags: int, cacheinfo: dict):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        super().__init__(family=family, prefixlen=prefixlen, flags=flags & 0xFF, index=index)
        self.attrs = {"IFA_ADDRESS": address, "IFA_FLAGS": flags, "IFA_CACHEINFO": cacheinfo}

    def get_attr(self, name):
        return self.attrs.get(name)


class Kernel:
    """The address table of two interfaces, pub0 (7) and priv0 (8), both up."""

    def __init__(self):
        self.links = {"pub0": 7, "priv0": 8}
        self.addrs: list[Addr] = []

    def on(self, ifname: str, address: str) -> list[Addr]:
        return [a for a in self.addrs if a["index"] == self.links[ifname] and a.get_attr("IFA_ADDRESS") == address]

    def put(self, ifname: str, cidr: str, flags: int = IFA_F_PERMANENT) -> None:
        """An address put there by someone else (`ip addr add`)."""
        i = ipaddress.ip_interface(cidr)
        self.addrs.append(Addr(self.links[ifname], str(i.ip), i.network.prefixlen, flags,
                               {"ifa_preferred": FOREVER, "ifa_valid": FOREVER}))

    def drop(self, ifname: str, address: str) -> None:
        for a in self.on(ifname, address):
            self.addrs.remove(a)

    def ipr(self):
        kernel = self

        class IPRoute:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def link_lookup(self, ifname):
                return [kernel.links[ifname]] if ifname in kernel.links else []

            def get_links(self, index):
                return [{"index": index, "flags": 0x1}]

            def get_addr(self, family=None, index=None):
                return [a for a in kernel.addrs if (family is None or a["family"] == family)
                        and (index is None or a["index"] == index)]

            def addr(self, command, **kw):
                if command == "add":
                    return kernel.add(pyroute2_request(**kw))
                if command == "del":
                    return kernel.delete(kw["index"], kw["address"], kw["prefixlen"])
                raise AssertionError(f"addr {command}")
        return IPRoute

    def add(self, msg: ifaddrmsg) -> list:
        # net/ipv6/addrconf.c inet6_rtm_newaddr / inet6_addr_add, net/ipv4/devinet.c
        address, plen, index = msg.get_attr("IFA_ADDRESS"), msg["prefixlen"], msg["index"]
        flags = msg["flags"] | (msg.get_attr("IFA_FLAGS") or 0)
        ci = msg.get_attr("IFA_CACHEINFO")
        valid, preferred = (ci["ifa_valid"], ci["ifa_preferred"]) if ci else (FOREVER, FOREVER)
        if not valid or preferred > valid:
            raise NetlinkError(errno.EINVAL, "Invalid argument")
        for a in self.addrs:
            # IPv6: one copy of an address on an interface, whatever its prefix
            # (ipv6_add_addr_hash); IPv4: address and prefix
            if a["index"] == index and a.get_attr("IFA_ADDRESS") == address and (
                    ":" in address or a["prefixlen"] == plen):
                raise NetlinkError(errno.EEXIST, "File exists")
        if valid == FOREVER:
            flags |= IFA_F_PERMANENT
        if ":" in address and preferred == 0:
            flags |= IFA_F_DEPRECATED
        self.addrs.append(Addr(index, address, plen, flags, {"ifa_preferred": preferred, "ifa_valid": valid}))
        return []

    def delete(self, index: int, address: str, plen: int) -> list:
        for a in self.addrs:
            if a["index"] == index and a.get_attr("IFA_ADDRESS") == address and a["prefixlen"] == plen:
                self.addrs.remove(a)
                return []
        raise NetlinkError(errno.EADDRNOTAVAIL, "Cannot assign requested address")


@pytest.fixture
def kernel(monkeypatch):
    k = Kernel()
    monkeypatch.setattr(addresses, "IPRoute", k.ipr())
    return k


def test_ipv6_addresses_are_added_deprecated_so_the_director_never_sends_from_them(kernel):
    """An IPv6 VIP (a /128) and the NAT router address are added with preferred_lft 0: they take
    packets and answer neighbour solicitations, but Linux never picks them as a source (RFC 6724
    rule 3 before rule 8) -- a /128 VIP would otherwise be the source of the director's health
    checks to real servers of its /64.  IPv4 addresses are left as they were.  The deprecated
    flag the kernel then shows changes nothing: present, take and restore see them as held."""
    owned = [*addresses.wanted_addresses(load("configs/ipv6-nat.toml")),
             OwnedAddress("pub0", ipaddress.ip_interface("198.18.0.10/32"))]
    assert [str(a.address) for a in owned] == ["2001:2::10/128", "2001:2:0:1::fffe/64", "198.18.0.10/32"]
    assert addresses.take(owned) == owned
    for a in owned[:2]:
        (there,) = kernel.on(a.ifname, str(a.address.ip))
        assert there.get_attr("IFA_FLAGS") == IFA_F_NODAD | IFA_F_DEPRECATED | IFA_F_PERMANENT
        assert there.get_attr("IFA_CACHEINFO") == {"ifa_preferred": 0, "ifa_valid": FOREVER}
    (v4,) = kernel.on("pub0", "198.18.0.10")
    assert v4.get_attr("IFA_FLAGS") == IFA_F_PERMANENT

    assert addresses.present(owned) == owned
    assert addresses.take(owned) == []
    assert addresses.restore(owned) == ([], [])

    # a link down and up drops IPv6 addresses: added back deprecated too
    kernel.drop("pub0", "2001:2::10")
    assert addresses.restore(owned) == ([owned[0]], [])
    (there,) = kernel.on("pub0", "2001:2::10")
    assert there.get_attr("IFA_FLAGS") & IFA_F_DEPRECATED
    assert there.get_attr("IFA_CACHEINFO")["ifa_preferred"] == 0

    addresses.release(owned)
    assert kernel.addrs == []


def test_an_ipv6_address_already_there_with_another_prefix_is_held_not_added(kernel, caplog):
    """The kernel keeps one copy of an IPv6 address on an interface whatever its prefix: the VIP
    put on pub0 by hand as a /64 is there, so taking the /128 adds nothing (it was "File exists",
    and the start or the takeover failed), a look for lost addresses finds nothing to add back
    (it was "File exists" every second), and releasing leaves the hand's address where it was.
    IPv4 is address and prefix, as before: a /32 beside the same address as a /24 is added."""
    kernel.put("pub0", "2001:2::10/64")
    kernel.put("pub0", "198.18.0.10/24")
    owned = [OwnedAddress("pub0", ipaddress.ip_interface("2001:2::10/128")),
             OwnedAddress("pub0", ipaddress.ip_interface("198.18.0.10/32"))]
    caplog.set_level("INFO", logger="lb.ha")
    assert addresses.take(owned) == owned[1:]
    assert "address 2001:2::10/128 already on pub0 as /64" in caplog.text
    assert addresses.present(owned) == owned
    assert addresses.restore(owned) == ([], [])

    addresses.release(owned)
    assert [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in kernel.addrs] == [("2001:2::10", 64),
                                                                                  ("198.18.0.10", 24)]
