"""The real servers' side of tunnel mode: `lb decap attach DEV` loads bpf/lb_decap.c and attaches
it to DEV, so that the packets the director sends inside IPIP / IPv6-in-IPv6 reach the real
server's stack as the client sent them (the kernel's ipip module would do the same; this kernel
has none).  Only tunnels from the directors' addresses (`--from`, each director's source toward
the real server) are taken off; any other tunnel to us is dropped and counted.  With `--vip`
(`lb realserver setup` gives its VIPs), only an inner packet to one of those VIPs is let in: a
director tunnels nothing else, and a forged director source could otherwise hand the stack a
packet to any address (the server's other addresses, or with ip_forward on, any host behind it:
the real server as a relay past the network's filters); dropped, counted.  The program stays
attached after the command exits; `lb decap detach DEV` removes it.

A real server needs no compiler, no kernel headers and no bcc for it: the package ships
lb_decap's compiled instructions (lb/dataplane/objects/lb_decap.json, a bpfobj.Object), loaded
with bpf(2).  They do not depend on the kernel's headers: the program reads only packet bytes
(the UAPI Ethernet/IP/IPv6 headers, fixed by the wire) and its own five maps, and calls only
helpers whose numbers the kernel never changes.  `python -m lb.dataplane.decap --build`
compiles it again with bcc; tests/test_service.py holds the shipped file to a fresh compile.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import sys
from importlib import resources

from pyroute2 import IPRoute

from . import bpfobj
from .attach import MODES, attach_xdp, attached_prog_id, detach_xdp
from .errors import DataplaneError
from .layout import BPF_DIR
from .maps import BpfMap

log = logging.getLogger("lb.decap")

SOURCE = BPF_DIR / "lb_decap.c"
PROGRAM = "lb_xdp_decap"
SHIPPED = resources.files("lb.dataplane") / "objects" / "lb_decap.json"


class DecapError(Exception):
    pass


NEEDS_ROOT = "needs root (CAP_SYS_ADMIN/CAP_BPF)"     # what a user without them is told


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


ANY_KEY = bytes(20)          # lb_decap_vip's key of family 0: an inner packet to any address
ANY = "any"                  # attached_vips' word for it

# lb_decap_count: what each index counts
COUNTERS = ("decapsulated", "not_for_us", "not_from_a_director", "bad_inner_header", "ce_not_ect",
            "not_to_a_vip")


def compile_object() -> bpfobj.Object:
    """lb_decap.c compiled afresh with bcc (needs bcc and kernel headers)."""
    return bpfobj.compile_bcc(SOURCE.read_text(), [], [PROGRAM])[0]


def shipped_object() -> bpfobj.Object:
    return bpfobj.Object.from_json(SHIPPED.read_text())


def load(addresses, sources, vips=()) -> tuple[bpfobj.Loaded, bpfobj.Prog]:
    """The decap program, loaded from the shipped instructions, decapsulating tunnels to
    `addresses` from `sources` (the directors) whose inner packet is to one of `vips` (none:
    any address): (the loaded object -- close() it to drop this process's references --, the
    program)."""
    try:
        obj = shipped_object()
    except (OSError, ValueError) as e:
        raise DecapError(f"the package's compiled decap program {SHIPPED}: {e}") from None
    try:
        loaded = bpfobj.load(obj)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            raise DecapError(f"loading the decap program {NEEDS_ROOT}") from None
        raise DecapError(f"cannot load the decap program: {e}") from None
    except DataplaneError as e:
        hint = f" (loading it {NEEDS_ROOT})" if os.geteuid() != 0 else ""
        raise DecapError(f"cannot load the decap program: {e}{hint}") from None
    for name, addrs in (("lb_decap_dst", addresses), ("lb_decap_src", sources)):
        table = BpfMap(loaded.map_fds[name], name, owned=False)
        for a in addrs:
            table.set(_key(a), (1).to_bytes(4, sys.byteorder))
    table = BpfMap(loaded.map_fds["lb_decap_vip"], "lb_decap_vip", owned=False)
    for key in [_key(v) for v in vips] or [ANY_KEY]:
        table.set(key, (1).to_bytes(4, sys.byteorder))
    if not vips:                   # the data path's own test of "any" (lb_decap_vip's key: the report)
        BpfMap(loaded.map_fds["lb_decap_any"], "lb_decap_any", owned=False).set(
            bytes(4), (1).to_bytes(4, sys.byteorder))
    return loaded, loaded.progs[PROGRAM]


def counters(loaded: bpfobj.Loaded) -> dict[str, int]:
    """lb_decap_count of a loaded program, by name, summed over CPUs"""
    table = BpfMap(loaded.map_fds["lb_decap_count"], "lb_decap_count", owned=False)
    return {name: sum(int.from_bytes(v, sys.byteorder) for v in table.get_percpu(i.to_bytes(4, sys.byteorder)))
            for i, name in enumerate(COUNTERS)}


def attach(ifname: str, addresses=(), mode: str = "native", sources=(), vips=()) -> tuple[str, list]:
    """Load and attach; returns (mode used, the addresses it decapsulates for).  The attachment
    outlives this process (the kernel holds the program).  `sources`: the directors' addresses,
    the only tunnel sources accepted (at least one); `vips`: the only inner destinations let in
    (none: any)."""
    sources, vips = list(sources), list(dict.fromkeys(vips))
    if not sources:
        raise DecapError("give the directors' addresses with --from ADDR (tunnels from any other "
                         "source are dropped)")
    prog = attached(ifname)
    if prog not in (None, PROGRAM):
        # the director's own program, say: never replaced
        raise DecapError(f"{ifname} runs another XDP program ({prog}): not replaced")
    addrs = list(addresses) or local_addresses(ifname)
    if not addrs:
        raise DecapError(f"{ifname} has no address to receive tunnels on: give --address")
    if len(addrs) > 64 or len(sources) > 64 or len(vips) > 256:
        raise DecapError("at most 64 --address, 64 --from and 256 --vip addresses")
    loaded, fn = load(addrs, sources, vips)
    try:
        # in place of an earlier lb decap (new addresses), else only where none is attached
        name, _flags = attach_xdp(ifname, fn, mode, only_if_none=prog is None)
    except DataplaneError as e:
        raise DecapError(f"the decap program: {e}") from None
    finally:
        loaded.close()             # attached, the kernel holds the program and its maps
    log.info("attached decap to %s (%s mode) for %s from %s, to %s", ifname, name, ", ".join(map(str, addrs)),
             ", ".join(map(str, sources)), ", ".join(map(str, vips)) or "any address")
    return name, addrs


def attached(ifname: str) -> str | None:
    """The name of the XDP program on ifname ("lb_xdp_decap" when `lb decap attach` put it
    there), None without one; DecapError when ifname does not exist, or the program cannot be
    looked at (its name needs root)."""
    from .bpfsys import BpfError, prog_name

    try:
        prog_id = attached_prog_id(ifname)
    except DataplaneError:
        raise DecapError(f"interface {ifname} does not exist") from None
    if not prog_id:
        return None
    try:
        return prog_name(prog_id)
    except BpfError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            raise DecapError(f"{ifname} has an XDP program (id {prog_id}); telling whether it is lb decap "
                             f"{NEEDS_ROOT}") from None
        raise DecapError(f"{ifname}'s XDP program (id {prog_id}): {e.strerror or e}") from None


def _address(key: bytes):
    return ipaddress.ip_address(key[:4] if key[16] == 4 else key[:16])


def _attached_keys(ifname: str, name: str, what: str) -> set | None:
    """The keys of the map `name` of the lb decap on ifname; None when ifname runs no lb decap,
    KeyError when its program has no such map (an older lb's)."""
    from .bpfsys import map_fd_by_id, map_info, prog_map_ids

    if attached(ifname) != PROGRAM:
        return None
    try:
        for map_id in prog_map_ids(attached_prog_id(ifname)):
            fd = map_fd_by_id(map_id)
            try:
                if map_info(fd).name == name.encode():
                    return {k for k, _v in BpfMap(fd, name, owned=False).items()}
            finally:
                os.close(fd)
    except OSError as e:
        raise DecapError(f"{ifname}'s lb decap: reading its {what}: {e.strerror or e}") from None
    raise KeyError(name)


def attached_sources(ifname: str) -> set | None:
    """The directors' addresses (--from) the lb decap on ifname accepts tunnels from; None when
    ifname runs no lb decap.  DecapError as attached(), or when its map cannot be read."""
    try:
        keys = _attached_keys(ifname, "lb_decap_src", "--from addresses")
    except KeyError:
        raise DecapError(f"{ifname}'s lb decap has no lb_decap_src map: detach it and attach it again") from None
    return None if keys is None else {_address(k) for k in keys}


def attached_vips(ifname: str) -> set | None:
    """The VIPs (--vip) the lb decap on ifname lets inner packets in to, ANY among them when it
    lets in any address (no --vip, or an lb decap of before --vip); None when ifname runs no lb
    decap.  DecapError as attached()."""
    try:
        keys = _attached_keys(ifname, "lb_decap_vip", "--vip addresses")
    except KeyError:
        return {ANY}
    return None if keys is None else {ANY if k == ANY_KEY else _address(k) for k in keys}


def detach(ifname: str) -> bool:
    """Remove lb decap from ifname: True when it was there, False when no program is;
    DecapError when ifname does not exist or runs another XDP program (left in place)."""
    prog = attached(ifname)
    if prog is None:
        return False
    if prog != PROGRAM:
        raise DecapError(f"{ifname} runs another XDP program ({prog}), not lb decap: not removed")
    for _mode, flags in MODES:
        try:
            detach_xdp(ifname, flags)
        except Exception as e:
            log.debug("remove_xdp %s flags %d: %s", ifname, flags, e)
    return True


if __name__ == "__main__":
    # python -m lb.dataplane.decap --build: compile bpf/lb_decap.c and write the shipped object
    if sys.argv[1:] != ["--build"]:
        sys.exit("usage: python -m lb.dataplane.decap --build")
    out = SHIPPED
    text = compile_object().to_json() + "\n"
    with resources.as_file(out) as path:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
