"""The real servers' side of tunnel mode: `lb decap attach DEV` loads bpf/lb_decap.c and attaches
it to DEV, so that the packets the director sends inside IPIP / IPv6-in-IPv6 reach the real
server's stack as the client sent them (the kernel's ipip module would do the same; this kernel
has none).  Only tunnels from the directors' addresses (`--from`, each director's source toward
the real server) are taken off; any other tunnel to us is dropped and counted.  The program
stays attached after the command exits; `lb decap detach DEV` removes it.
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


# lb_decap_count: what each index counts
COUNTERS = ("decapsulated", "not_for_us", "not_from_a_director", "bad_inner_header")


def load(addresses, sources):
    """The compiled decap program decapsulating tunnels to `addresses` from `sources` (the
    directors): (bcc BPF object, function)."""
    from bcc import BPF

    b = BPF(text=SOURCE.read_text().encode())
    fn = b.load_func(b"lb_xdp_decap", BPF.XDP)
    for name, addrs in ((b"lb_decap_dst", addresses), (b"lb_decap_src", sources)):
        table = b[name]
        for a in addrs:
            table[table.Key.from_buffer_copy(_key(a))] = ctypes.c_uint32(1)
    return b, fn


def counters(b) -> dict[str, int]:
    """lb_decap_count of a loaded program, by name, summed over CPUs"""
    table = b[b"lb_decap_count"]
    return {name: sum(table[ctypes.c_int(i)]) for i, name in enumerate(COUNTERS)}


def attach(ifname: str, addresses=(), mode: str = "native", sources=()) -> tuple[str, list]:
    """Load and attach; returns (mode used, the addresses it decapsulates for).  The attachment
    outlives this process (the kernel holds the program).  `sources`: the directors' addresses,
    the only tunnel sources accepted (at least one)."""
    sources = list(sources)
    if not sources:
        raise DecapError("give the directors' addresses with --from ADDR (tunnels from any other "
                         "source are dropped)")
    addrs = list(addresses) or local_addresses(ifname)
    if not addrs:
        raise DecapError(f"{ifname} has no address to receive tunnels on: give --address")
    if len(addrs) > 64 or len(sources) > 64:
        raise DecapError("at most 64 --address and 64 --from addresses")
    _b, fn = load(addrs, sources)
    try:
        name, _flags = attach_xdp(ifname, fn, mode)
    except DataplaneError as e:
        raise DecapError(f"the decap program: {e}") from None
    log.info("attached decap to %s (%s mode) for %s from %s", ifname, name, ", ".join(map(str, addrs)),
             ", ".join(map(str, sources)))
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
