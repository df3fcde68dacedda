"""The real servers' side of tunnel mode: `lb decap attach DEV` loads bpf/lb_decap.c and attaches
it to DEV, so that the packets the director sends inside IPIP / IPv6-in-IPv6 reach the real
server's stack as the client sent them (the kernel's ipip module would do the same; this kernel
has none).  The program stays attached after the command exits; `lb decap detach DEV` removes it.
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging

from pyroute2 import IPRoute

from .attach import MODES, attach_xdp, detach_xdp
from .errors import DataplaneError
from .layout import BPF_DIR

log = logging.getLogger("lb.decap")

SOURCE = BPF_DIR / "lb_decap.c"


class DecapError(Exception):
    pass


def local_addresses(ifname: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses on ifname that a tunnel can be addressed to (global IPv4 and IPv6)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise DecapError(f"interface {ifname} does not exist")
        out = []
        for a in ipr.get_addr(index=idx[0]):
            addr = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
            if not addr.is_link_local and not addr.is_loopback:
                out.append(addr)
        return out


def _key(addr) -> bytes:
    return addr.packed.ljust(16, b"\0") + bytes([4 if addr.version == 4 else 6, 0, 0, 0])


def load(addresses):
    """The compiled decap program decapsulating for `addresses`: (bcc BPF object, function)."""
    from bcc import BPF

    b = BPF(text=SOURCE.read_text().encode())
    fn = b.load_func(b"lb_xdp_decap", BPF.XDP)
    table = b[b"lb_decap_dst"]
    for a in addresses:
        table[table.Key.from_buffer_copy(_key(a))] = ctypes.c_uint32(1)
    return b, fn


def attach(ifname: str, addresses=(), mode: str = "native") -> tuple[str, list]:
    """Load and attach; returns (mode used, the addresses it decapsulates for).  The attachment
    outlives this process (the kernel holds the program)."""
    addrs = list(addresses) or local_addresses(ifname)
    if not addrs:
        raise DecapError(f"{ifname} has no address to receive tunnels on: give --address")
    _b, fn = load(addrs)
    try:
        name, _flags = attach_xdp(ifname, fn, mode)
    except DataplaneError as e:
        raise DecapError(f"the decap program: {e}") from None
    log.info("attached decap to %s (%s mode) for %s", ifname, name, ", ".join(map(str, addrs)))
    return name, addrs


def attached(ifname: str) -> str | None:
    """The name of the XDP program on ifname ("lb_xdp_decap" when `lb decap attach` put it
    there), None without one; DecapError when ifname does not exist."""
    from .bpfsys import prog_name

    with IPRoute() as ipr:
        links = ipr.get_links(ifname=ifname) if ipr.link_lookup(ifname=ifname) else []
    if not links:
        raise DecapError(f"interface {ifname} does not exist")
    xdp = links[0].get_attr("IFLA_XDP")
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp is not None else None
    return prog_name(prog_id) if prog_id else None


def detach(ifname: str) -> None:
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=ifname):
            raise DecapError(f"interface {ifname} does not exist")
    for _mode, flags in MODES:
        try:
            detach_xdp(ifname, flags)
        except Exception as e:
            log.debug("remove_xdp %s flags %d: %s", ifname, flags, e)
