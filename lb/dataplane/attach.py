"""Attaching and detaching XDP programs on an interface (bcc): the director's programs
(lb/dataplane/xdp.py) and the real servers' decapsulation (lb/dataplane/decap.py)."""
from __future__ import annotations

import logging

from .errors import DataplaneError

log = logging.getLogger("lb.dataplane")

XDP_FLAGS_SKB_MODE = 1 << 1        # linux/if_link.h: generic XDP
XDP_FLAGS_DRV_MODE = 1 << 2        # native (driver) XDP
MODES = (("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE))


def attach_xdp(ifname: str, fn, mode: str = "native") -> tuple[str, int]:
    """Attach a loaded XDP function to ifname: native (driver) mode, falling back to generic,
    or generic only.  Returns (the mode used, its flags); DataplaneError when neither works."""
    from bcc import BPF  # imported here: `lb list` and config checks must not need bcc

    tries = MODES[1:] if mode == "generic" else MODES
    last = None
    for name, flags in tries:
        try:
            BPF.attach_xdp(ifname.encode(), fn, flags)
            return name, flags
        except Exception as e:  # bcc raises a plain Exception
            last = e
            log.warning("cannot attach XDP to %s in %s mode: %s", ifname, name, e)
    raise DataplaneError(f"cannot attach XDP to {ifname}: {last}")


def detach_xdp(ifname: str, flags: int) -> None:
    """Remove the XDP program attached to ifname with `flags` (bcc's error, if any, propagates)."""
    from bcc import BPF

    BPF.remove_xdp(ifname.encode(), flags)
