"""Attaching and detaching XDP programs on an interface, over rtnetlink (pyroute2's IFLA_XDP):
the director's programs (lb/dataplane/xdp.py) and the real servers' decapsulation
(lb/dataplane/decap.py).  No bcc: a program loaded from the compile cache or the package's
shipped instructions attaches without it."""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from .errors import DataplaneError

log = logging.getLogger("lb.dataplane")

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0   # linux/if_link.h: refuse (EBUSY) where a program is attached
XDP_FLAGS_SKB_MODE = 1 << 1        # generic XDP
XDP_FLAGS_DRV_MODE = 1 << 2        # native (driver) XDP
MODES = (("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE))


def _set_xdp(ifname: str, fd: int, flags: int) -> None:
    """IFLA_XDP {FD, FLAGS} on ifname (fd -1 removes the program attached with those flags)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise DataplaneError(f"interface {ifname} does not exist")
        ipr.link("set", index=idx[0], xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})


def _reason(e: Exception) -> str:
    from pyroute2.netlink.exceptions import NetlinkError

    if isinstance(e, NetlinkError):
        return f"{e.args[1] if len(e.args) > 1 else e} (errno {e.code})"
    return str(e)


def attach_xdp(ifname: str, fn, mode: str = "native", only_if_none: bool = False) -> tuple[str, int]:
    """Attach a loaded XDP program (anything with .fd) to ifname: native (driver) mode, falling
    back to generic, or generic only; ``only_if_none``: never in place of a program attached
    there.  Returns (the mode used, its flags); DataplaneError when neither works."""
    tries = MODES[1:] if mode == "generic" else MODES
    last = None
    for name, flags in tries:
        try:
            _set_xdp(ifname, fn.fd, flags | (XDP_FLAGS_UPDATE_IF_NOEXIST if only_if_none else 0))
            return name, flags
        except DataplaneError:
            raise
        except Exception as e:  # NetlinkError: the driver or kernel refused this mode
            last = _reason(e)
            log.warning("cannot attach XDP to %s in %s mode: %s", ifname, name, last)
    raise DataplaneError(f"cannot attach XDP to {ifname}: {last} (this kernel or interface has no XDP "
                         f"support in {' or '.join(n for n, _ in tries)} mode)")


def detach_xdp(ifname: str, flags: int) -> None:
    """Remove the XDP program attached to ifname with `flags` (the netlink error, if any, propagates)."""
    _set_xdp(ifname, -1, flags)


def attached_prog_id(ifname: str) -> int | None:
    """The id of the XDP program attached to ifname, None without one; DataplaneError when
    ifname does not exist.  One RTM_GETLINK for ifname by its name: pyroute2's link_lookup
    dumps every link and parses each (a director with hundreds of VLANs)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            links = ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            raise DataplaneError(f"interface {ifname} does not exist") from None
        raise
    if not links:
        raise DataplaneError(f"interface {ifname} does not exist")
    xdp = links[0].get_attr("IFLA_XDP")
    return (xdp.get_attr("IFLA_XDP_PROG_ID") or None) if xdp is not None else None


@dataclass(frozen=True)
class HeldProgram:
    """An XDP program an instance left attached on purpose (a stop that keeps the data plane):
    the interface (its name and index then), the program's name and id, the attach flags (the
    mode: a detach must name it)."""
    ifname: str
    ifindex: int
    program: str
    prog_id: int
    flags: int


def _xdp_prog_id(link) -> int | None:
    xdp = link.get_attr("IFLA_XDP")
    return (xdp.get_attr("IFLA_XDP_PROG_ID") or None) if xdp is not None else None


def detach_held(held: HeldProgram) -> tuple[str, str]:
    """Detach a program an earlier run of the instance left attached, only if it is still that
    one: the interface of that index (else, made again, of that name) carries the program of
    that id.  Returns (what, text): "detached", "gone" (no such interface, or no program on it
    any more: nothing to do), "other" (another program is attached there: left alone), or
    "failed" (the kernel refused the detach)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    where = f"{held.ifname} (ifindex {held.ifindex})"
    others = []
    with IPRoute() as ipr:
        links = []
        if held.ifindex > 0:
            try:
                links += ipr.get_links(held.ifindex)
            except NetlinkError:            # no interface of that index now
                pass
        idx = ipr.link_lookup(ifname=held.ifname)       # made again since: another index
        if idx and idx[0] != held.ifindex:
            links += ipr.get_links(idx[0])
        for link in links:
            name = link.get_attr("IFLA_IFNAME") or held.ifname
            have = _xdp_prog_id(link)
            if have is None:
                continue
            if have != held.prog_id:
                others.append(f"{name} carries another XDP program (id {have}) than the {held.program} "
                              f"(id {held.prog_id}) lb left there: left alone")
                continue
            try:
                ipr.link("set", index=link["index"],
                         xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", held.flags)]})
            except NetlinkError as e:
                return "failed", f"detaching the {held.program} XDP program (id {held.prog_id}) from {name}: {_reason(e)}"
            return "detached", f"detached the {held.program} XDP program (id {held.prog_id}) from {name}"
    if others:
        return "other", others[0]
    if not links:
        return "gone", f"{where} no longer exists: its {held.program} XDP program went with it"
    return "gone", f"the {held.program} XDP program (id {held.prog_id}) is no longer on {where}"
