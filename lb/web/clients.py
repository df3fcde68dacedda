"""Whom the console (its connection caps, its login throttling) and the metrics endpoint count as
one client.  No aiohttp here: lb.metrics, in the daemon, imports it.

An IPv4 client is its address.  An IPv6 client is its /64 (one site's, often one host's: anyone
holds many of its addresses), and for the connection caps each /64 is also counted against its
/48, a site's (one host commonly holds a /56, a site a /48: 256 or 65,536 /64s), so that handing
out a cap per /64 does not hand out a cap per address of the site.  Login throttling is per
client only (``client_key``): a /48's would let one host lock its whole site out.
"""
from __future__ import annotations

import ipaddress

SITE_PREFIX = 48


def plain_address(address: str) -> str:
    """An IPv4 client's address as such, not as the IPv4-mapped IPv6 address ("::ffff:198.18.0.7")
    that a socket listening on [::] (both families) gives."""
    try:
        mapped = ipaddress.IPv6Address(address.partition("%")[0]).ipv4_mapped
    except ValueError:
        return address
    return address if mapped is None else str(mapped)


def client_keys(address: str) -> tuple[str, ...]:
    """The keys one client is counted under, finest first: ("198.18.0.7",), or an IPv6 client's
    ("2001:db8:1:2::/64", "2001:db8:1::/48"); text that is no address is its own key."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return (address,)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return (str(ip),)
    return tuple(str(ipaddress.ip_network(f"{ip}/{bits}", strict=False)) for bits in (64, SITE_PREFIX))


def client_key(address: str) -> str:
    """The finest of ``client_keys``: an address, or an IPv6 /64."""
    return client_keys(address)[0]


def is_local(address: str) -> bool:
    """A loopback address (the director itself: an ssh tunnel's, a local browser's)."""
    try:
        return ipaddress.ip_address(plain_address(address).partition("%")[0]).is_loopback
    except ValueError:
        return False
