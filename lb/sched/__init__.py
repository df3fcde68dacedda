"""Scheduling: a reference model of the IPVS rr, wrr and wlc schedulers (lb.sched.model)."""

from lb.sched.model import (
    SCHEDULERS,
    Dest,
    Service,
    WrrMark,
    overhead,
    pick_rr,
    pick_wlc,
    pick_wrr,
    rr_cursor_after_add,
    rr_cursor_after_delete,
    wrr_dest_changed,
    wrr_init,
    wrr_params,
)

__all__ = [
    "SCHEDULERS",
    "Dest",
    "Service",
    "WrrMark",
    "overhead",
    "pick_rr",
    "pick_wlc",
    "pick_wrr",
    "rr_cursor_after_add",
    "rr_cursor_after_delete",
    "wrr_dest_changed",
    "wrr_init",
    "wrr_params",
]
