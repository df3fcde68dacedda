"""Reference model of the IPVS rr, wrr, wlc, lc, sed, nq, fo, ovf, dh, sh, mh, lblc,
lblcr and twos schedulers.

This is the oracle the BPF data plane is tested against, and the control plane
uses :func:`wrr_params` / :func:`wrr_init` / :func:`wrr_dest_changed` to compute
the wrr state it loads into the data plane.  It follows the kernel's rules
(net/netfilter/ipvs/ip_vs_rr.c, ip_vs_wrr.c, ip_vs_wlc.c, ip_vs_lc.c, ip_vs_sed.c,
ip_vs_nq.c, ip_vs_fo.c, ip_vs_ovf.c, ip_vs_dh.c, ip_vs_sh.c, ip_vs_mh.c, ip_vs_lblc.c,
ip_vs_lblcr.c, ip_vs_twos.c, ip_vs_ctl.c):

* A service's destinations form a list.  Every newly added destination is
  inserted at the FRONT of that list, so a service configured as rs1, rs2, rs3
  (added in that order) has the list ``[rs3, rs2, rs1]``.  Positions used here
  are list positions, 0 being the first element.  The list head sentinel that
  the kernel's cursors may point at is represented by ``None``.
* A destination with the OVERLOAD flag is skipped by every scheduler.  Weight 0
  means quiesced: rr, wrr and wlc never pick it for a new connection.
* Connection counting: a new connection is counted inactive on its destination
  and a TCP one moves to active at once with its SYN: SYN_SENT, SYN_RECV, SYNACK
  and ESTABLISHED are active states (tcp_state_active()); leaving them makes it
  inactive again; UDP connections are always inactive (checked against kernel
  IPVS in the VM).

The pure functions never mutate their arguments; :class:`Service` wraps them
in the order of operations IPVS applies when real servers are added, removed,
edited and connections are scheduled.
"""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

# the scheduler names and the kernel's defaults are the configuration's vocabulary, declared once
from lb.config.model import DEFAULT_LBLC_EXPIRATION, DEFAULT_MH_SIZE, SCHEDULERS

__all__ = [
    "HASH_BUCKETS",
    "Dest",
    "dh_hash",
    "dh_table",
    "hash_32",
    "hsiphash",
    "MH_DEFAULT_SIZE",
    "MH_PRIMES",
    "mh_hashkey",
    "mh_table",
    "pick_mh",
    "pick_dh",
    "pick_sh",
    "sh_hash",
    "sh_table",
    "Service",
    "SCHEDULERS",
    "WrrMark",
    "overhead",
    "pick_fo",
    "pick_lc",
    "pick_nq",
    "pick_ovf",
    "pick_rr",
    "pick_sed",
    "pick_wlc",
    "pick_wrr",
    "rr_cursor_after_add",
    "rr_cursor_after_delete",
    "wrr_dest_changed",
    "wrr_init",
    "wrr_params",
    "bind_overload",
    "unbind_overload",
    "LblcEntry",
    "LblcrEntry",
    "LblcTable",
    "lblc_is_overloaded",
    "dest_set_min",
    "dest_set_max",
    "pick_lblc",
    "pick_lblcr",
    "pick_twos",
]



@dataclass
class Dest:
    """One real server of a service, as the schedulers see it."""

    name: str
    weight: int
    overloaded: bool = False
    active: int = 0  # activeconns
    inactive: int = 0  # inactconns
    u_threshold: int = 0  # upper connection threshold (0: none)
    l_threshold: int = 0  # lower threshold (0: 3/4 of the upper)

    @property
    def usable(self) -> bool:
        """Eligible for new connections under every scheduler: weight > 0 and not overloaded."""
        return self.weight > 0 and not self.overloaded

    @property
    def total(self) -> int:
        """ip_vs_dest_totalconns: activeconns + inactconns."""
        return self.active + self.inactive


def bind_overload(d: Dest) -> None:
    """ip_vs_bind_dest: after a connection is counted, OVERLOAD is set when u_threshold != 0
    and active + inactive >= u_threshold."""
    if d.u_threshold and d.total >= d.u_threshold:
        d.overloaded = True


def unbind_overload(d: Dest) -> None:
    """ip_vs_unbind_dest: after a connection is uncounted, OVERLOAD is cleared when the total
    is below l_threshold, or (l_threshold 0) when total * 4 < u_threshold * 3; with neither
    threshold it is cleared at once."""
    if d.l_threshold:
        if d.total < d.l_threshold:
            d.overloaded = False
    elif d.u_threshold:
        if d.total * 4 < d.u_threshold * 3:
            d.overloaded = False
    else:
        d.overloaded = False


def overhead(d: Dest) -> int:
    """ip_vs_dest_conn_overhead: (activeconns << 8) + inactconns."""
    return (d.active << 8) + d.inactive


def _check_weights(weights: Iterable[int]) -> list[int]:
    ws = list(weights)
    for w in ws:
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise ValueError(f"weight must be a non-negative int, got {w!r}")
    return ws


def _check_cursor(cursor: int | None, n: int, what: str = "cursor") -> None:
    if cursor is not None and not 0 <= cursor < n:
        raise ValueError(f"{what} {cursor} out of range for {n} destinations")


# --------------------------------------------------------------------------- rr


def pick_rr(dests: Sequence[Dest], cursor: int | None) -> tuple[int | None, int | None]:
    """ip_vs_rr_schedule.

    Walks from the element after ``cursor`` around the list (the head sentinel
    is skipped) back to and including the cursor's own element; the first
    destination with weight > 0 and not overloaded wins and becomes the new
    cursor.  Returns ``(picked position, new cursor)``; when nothing is usable,
    ``(None, cursor)`` (the cursor does not move).
    """
    n = len(dests)
    _check_cursor(cursor, n)
    start = 0 if cursor is None else cursor + 1
    for k in range(n):
        i = (start + k) % n
        if dests[i].usable:
            return i, i
    return None, cursor


def rr_cursor_after_delete(cursor: int | None, removed_pos: int) -> int | None:
    """ip_vs_rr_del_dest, expressed in positions of the list after the delete.

    If the cursor pointed at the removed destination it moves to the previous
    element (the head, ``None``, if the removed one was first).  A cursor on a
    later element keeps its element, whose position drops by one.
    """
    if removed_pos < 0:
        raise ValueError(f"removed_pos must be >= 0, got {removed_pos}")
    if cursor is None or cursor < removed_pos:
        return cursor
    if cursor == removed_pos:
        return removed_pos - 1 if removed_pos > 0 else None
    return cursor - 1


def rr_cursor_after_add(cursor: int | None) -> int | None:
    """rr has no add_dest hook: the cursor stays on its element, which moves one
    position back because the new destination is inserted at the front."""
    return None if cursor is None else cursor + 1


# -------------------------------------------------------------------------- wrr


@dataclass(frozen=True)
class WrrMark:
    """struct ip_vs_wrr_mark: cl is a list position, or None for the list head."""

    cl: int | None
    cw: int
    mw: int
    di: int


def wrr_params(weights: Iterable[int]) -> tuple[int, int]:
    """Return ``(mw, di)`` for a list of weights.

    di = gcd of the positive weights (1 if there are none);
    mw = max weight (over all weights, 0 if all are zero) - (di - 1).
    """
    ws = _check_weights(weights)
    pos = [w for w in ws if w > 0]
    di = math.gcd(*pos) if pos else 1
    mw = max(ws, default=0) - (di - 1)
    return mw, di


def wrr_init(weights: Iterable[int]) -> WrrMark:
    """ip_vs_wrr_init_svc on the current list: cl = head, cw = mw."""
    mw, di = wrr_params(weights)
    return WrrMark(cl=None, cw=mw, mw=mw, di=di)


def wrr_dest_changed(mark: WrrMark, weights: Iterable[int]) -> WrrMark:
    """ip_vs_wrr_dest_changed (add_dest, del_dest and upd_dest hooks).

    ``weights`` are those of the list after the change.  cl goes back to the
    head; di and mw are recomputed; cw is clamped to mw when it exceeds it (or
    is 0), otherwise, when di > 1, rounded to ``(cw // di) * di + 1``.
    """
    mw, di = wrr_params(weights)
    cw = mark.cw
    if cw > mw or cw == 0:
        cw = mw
    elif di > 1:
        cw = (cw // di) * di + 1
    return WrrMark(cl=None, cw=cw, mw=mw, di=di)


def pick_wrr(dests: Sequence[Dest], mark: WrrMark) -> tuple[int | None, WrrMark]:
    """ip_vs_wrr_schedule (kernel 6.x).  Returns ``(picked position, new mark)``.

    Scans forward from the element after ``mark.cl`` for a destination that is
    not overloaded and has weight >= cw.  Each time the end of the list is
    reached cw drops by di and the scan restarts from the first element; when
    cw falls to 0 or below it wraps to mw.  The walk gives up (``None``) once
    every destination has been checked in a pass with cw <= di; cw keeps
    whatever value the walk left it with and cl is the position it ended on.
    When mw == 0 (all weights zero) nothing is picked and the mark is unchanged.
    """
    n = len(dests)
    _check_cursor(mark.cl, n, "mark.cl")
    cw, mw, di = mark.cw, mark.mw, mark.di
    if mw == 0:
        return None, mark
    if di <= 0:
        raise ValueError(f"mark.di must be positive, got {di}")

    dest = mark.cl  # None = the list head
    last = dest
    stop: int | None = None
    last_pass = False
    restarted = False
    while True:
        # list_for_each_entry_continue: the elements after `dest` to the end.
        for i in range(0 if dest is None else dest + 1, n):
            d = dests[i]
            if not d.overloaded and d.weight >= cw:
                return i, WrrMark(cl=i, cw=cw, mw=mw, di=di)
            if i == stop:
                return None, WrrMark(cl=i, cw=cw, mw=mw, di=di)
        cw -= di
        if cw <= 0:
            cw = mw
            if last_pass or last is None:
                # the walk ended on the head
                return None, WrrMark(cl=None, cw=cw, mw=mw, di=di)
            restarted = True
        last_pass = cw <= di
        if last_pass and restarted and last is not None:
            stop = last
        dest = None  # the next scan starts from the first element


# -------------------------------------------------------------------------- wlc


def pick_wlc(dests: Sequence[Dest]) -> int | None:
    """ip_vs_wlc_schedule: minimise overhead/weight.

    The first destination (list order) that is not overloaded and has
    weight > 0 becomes ``least``; every later destination that is not
    overloaded replaces it when ``loh * w(d) > doh * w(least)`` (the kernel
    compares in 64 bits; Python ints do not overflow).  Ties therefore go to the
    earliest position, and weight 0 never wins.
    """
    least: int | None = None
    loh = 0
    for i, d in enumerate(dests):
        if least is None:
            if d.usable:
                least, loh = i, overhead(d)
            continue
        if d.overloaded:
            continue
        doh = overhead(d)
        if loh * d.weight > doh * dests[least].weight:
            least, loh = i, doh
    return least


# ----------------------------------------------------------- lc, sed, nq, fo, ovf


def pick_lc(dests: Sequence[Dest]) -> int | None:
    """ip_vs_lc_schedule: the usable destination (weight > 0, not overloaded)
    with the least overhead; ties go to the earliest position."""
    least: int | None = None
    loh = 0
    for i, d in enumerate(dests):
        if not d.usable:
            continue
        doh = overhead(d)
        if least is None or doh < loh:
            least, loh = i, doh
    return least


def _sed_overhead(d: Dest) -> int:
    """ip_vs_sed_dest_overhead / ip_vs_nq_dest_overhead: activeconns + 1."""
    return d.active + 1


def pick_sed(dests: Sequence[Dest]) -> int | None:
    """ip_vs_sed_schedule: minimise (activeconns + 1) / weight.

    The first usable destination becomes ``least``; every later destination
    that is not overloaded replaces it when ``loh * w(d) > doh * w(least)``.
    Inactive connections are ignored; weight 0 never wins; ties go to the
    earliest position.
    """
    least: int | None = None
    loh = 0
    for i, d in enumerate(dests):
        if least is None:
            if d.usable:
                least, loh = i, _sed_overhead(d)
            continue
        if d.overloaded:
            continue
        doh = _sed_overhead(d)
        if loh * d.weight > doh * dests[least].weight:
            least, loh = i, doh
    return least


def pick_nq(dests: Sequence[Dest]) -> int | None:
    """ip_vs_nq_schedule: the first usable destination with no active
    connection wins at once; otherwise the sed rule over the usable ones."""
    least: int | None = None
    loh = 0
    for i, d in enumerate(dests):
        if not d.usable:
            continue
        doh = _sed_overhead(d)
        if d.active == 0:
            return i
        if least is None or loh * d.weight > doh * dests[least].weight:
            least, loh = i, doh
    return least


def pick_fo(dests: Sequence[Dest]) -> int | None:
    """ip_vs_fo_schedule: the usable destination with the highest weight;
    ties go to the earliest position."""
    best: int | None = None
    hw = 0
    for i, d in enumerate(dests):
        if not d.overloaded and d.weight > hw:
            best, hw = i, d.weight
    return best


def pick_ovf(dests: Sequence[Dest]) -> int | None:
    """ip_vs_ovf_schedule: the highest weight among destinations that are
    usable and have activeconns <= weight; ties go to the earliest position."""
    best: int | None = None
    hw = 0
    for i, d in enumerate(dests):
        if not d.usable or d.active > d.weight:
            continue
        if best is None or d.weight > hw:
            best, hw = i, d.weight
    return best


# ------------------------------------------------------------------- dh, sh

HASH_BITS = 8
HASH_BUCKETS = 1 << HASH_BITS   # IP_VS_DH_TAB_SIZE / IP_VS_SH_TAB_SIZE (CONFIG_IP_VS_*_TAB_BITS = 8)
GOLDEN_RATIO_32 = 0x61C88647


def hash_32(val: int, bits: int = HASH_BITS) -> int:
    """include/linux/hash.h hash_32: (val * GOLDEN_RATIO_32) mod 2**32, top `bits` bits."""
    return ((val * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def dh_hash(daddr: int) -> int:
    """ip_vs_dh_hashkey for IPv4: hash_32(ntohl(daddr), 8); daddr as a host-order int."""
    return hash_32(daddr & 0xFFFFFFFF)


def sh_hash(saddr: int, port: int = 0, offset: int = 0) -> int:
    """ip_vs_sh_hashkey for IPv4: (offset + hash_32(ntohs(port) + ntohl(saddr), 8)) & 255.
    port is 0 unless the service has the sh-port flag."""
    return (offset + hash_32((port + saddr) & 0xFFFFFFFF)) & (HASH_BUCKETS - 1)


def dh_table(n: int) -> list[int | None]:
    """ip_vs_dh_reassign: bucket i holds list position i mod n (every destination, whatever
    its weight); all None for an empty list."""
    return [i % n if n else None for i in range(HASH_BUCKETS)]


def sh_table(weights: Sequence[int]) -> list[int | None]:
    """ip_vs_sh_reassign: walk the list round and round, each destination filling `weight`
    consecutive buckets (at least one: a weight-0 destination still takes one bucket)."""
    ws = _check_weights(weights)
    if not ws:
        return [None] * HASH_BUCKETS
    out: list[int | None] = []
    p, d_count = 0, 0
    for _ in range(HASH_BUCKETS):
        out.append(p)
        d_count += 1
        if d_count >= ws[p]:
            p, d_count = (p + 1) % len(ws), 0
    return out


def pick_dh(dests: Sequence[Dest], daddr: int) -> int | None:
    """ip_vs_dh_schedule: the bucket's destination if it is usable, else nothing."""
    pos = dh_table(len(dests))[dh_hash(daddr)]
    return pos if pos is not None and dests[pos].usable else None


def _pick_hashed(dests: Sequence[Dest], table: Sequence[int | None], first: int, probes: Iterable[int],
                 fallback: bool) -> int | None:
    """ip_vs_sh_get / ip_vs_mh_get, and their _fallback twins: the destination of slot `first`
    if usable; else, with fallback, the first usable one of the `probes` slots (an empty slot
    ends the walk)."""
    pos = table[first]
    if pos is None:
        return None
    if dests[pos].usable:
        return pos
    if not fallback:
        return None
    for slot in probes:
        pos = table[slot]
        if pos is None:
            break
        if dests[pos].usable:
            return pos
    return None


# ------------------------------------------------------------- lblc, lblcr

LBLC_EXPIRATION = DEFAULT_LBLC_EXPIRATION   # DEFAULT_EXPIRATION: sysctl lblc_expiration / lblcr_expiration
CHECK_EXPIRE_INTERVAL = 60          # the periodic timer, seconds
ENTRY_TIMEOUT = 6 * 60              # entries older than this go when the table is over max_size
COUNT_FOR_FULL_EXPIRATION = 30      # every 30th tick is a full expiration check
LBLC_MAX_SIZE = 16 * 1024           # tbl->max_size = IP_VS_LBLC_TAB_SIZE * 16


@dataclass
class LblcEntry:
    """struct ip_vs_lblc_entry: destination address -> real server (a reference: it survives
    the server's removal, in the trash, as the kernel's refcount keeps it)."""

    dest: Dest
    lastuse: float


@dataclass
class LblcrEntry:
    """struct ip_vs_lblcr_entry: destination address -> server set, newest member first."""

    members: list[Dest]
    lastuse: float
    lastmod: float


class LblcTable:
    """The per-service table of lblc or lblcr (svc->sched_data) and its periodic expiry.
    Keys are destination addresses (host-order ints for IPv4); times are seconds."""

    def __init__(self, max_size: int = LBLC_MAX_SIZE):
        self.entries: dict[int, LblcEntry | LblcrEntry] = {}
        self.max_size = max_size
        self.counter = 1

    def full_check(self, now: float, expiration: float) -> int:
        """ip_vs_lblc_full_check: drop every entry unused for `expiration` seconds."""
        stale = [k for k, e in self.entries.items() if not now < e.lastuse + expiration]
        for k in stale:
            del self.entries[k]
        return len(stale)

    def check_expire(self, now: float, expiration: float) -> int:
        """ip_vs_lblc_check_expire, one tick of the 60 s timer: every 30th tick a full check;
        otherwise, only when there are more than max_size entries, drop entries unused for
        ENTRY_TIMEOUT until (entries - max_size) * 4/3 (at most max_size/2) have gone.
        Returns the number dropped.  (The kernel walks its hash buckets from a rover; here
        entries go oldest first.)"""
        if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
            self.counter = 1
            return self.full_check(now, expiration)
        if len(self.entries) <= self.max_size:
            self.counter += 1
            return 0
        goal = min((len(self.entries) - self.max_size) * 4 // 3, self.max_size // 2)
        gone = 0
        for k, e in sorted(self.entries.items(), key=lambda kv: kv[1].lastuse):
            if goal <= 0:
                break
            if now < e.lastuse + ENTRY_TIMEOUT:
                continue
            del self.entries[k]
            gone += 1
            goal -= 1
        return gone


def _available(d: Dest, dests: Sequence[Dest]) -> bool:
    """IP_VS_DEST_F_AVAILABLE: the destination is in the service's list (not in the trash)."""
    return any(x is d for x in dests)


def lblc_is_overloaded(d: Dest, dests: Sequence[Dest]) -> bool:
    """is_overloaded() of ip_vs_lblc.c / ip_vs_lblcr.c: activeconns > weight, and some
    destination of the service (any: weight, OVERLOAD and availability are not looked at) has
    activeconns * 2 < weight."""
    return d.active > d.weight and any(x.active * 2 < x.weight for x in dests)


def pick_lblc(dests: Sequence[Dest], table: LblcTable, daddr: int, now: float) -> int | None:
    """ip_vs_lblc_schedule.  A cached server is kept when it is available, has weight > 0 and
    is not is_overloaded() (its OVERLOAD flag is not looked at); the lookup alone refreshes
    lastuse.  Otherwise wlc over the service (__ip_vs_lblc_schedule is pick_wlc) picks, and
    the entry is replaced (lastuse = now) or kept when the pick is the cached server."""
    en = table.entries.get(daddr)
    if en is not None:
        assert isinstance(en, LblcEntry)
        en.lastuse = now
        d = en.dest
        if _available(d, dests) and d.weight > 0 and not lblc_is_overloaded(d, dests):
            return next(i for i, x in enumerate(dests) if x is d)
    pos = pick_wlc(dests)
    if pos is None:
        return None
    if en is None or en.dest is not dests[pos]:
        table.entries[daddr] = LblcEntry(dests[pos], now)
    return pos


def dest_set_min(members: Sequence[Dest], dests: Sequence[Dest]) -> Dest | None:
    """ip_vs_dest_set_min: the first member that is not OVERLOADed, has weight > 0 and is
    available, then any later non-OVERLOADed, available member with loh * w > doh * lw."""
    least: Dest | None = None
    loh = 0
    for d in members:
        if d.overloaded:
            continue
        if least is None:
            if d.weight > 0 and _available(d, dests):
                least, loh = d, overhead(d)
            continue
        doh = overhead(d)
        if loh * d.weight > doh * least.weight and _available(d, dests):
            least, loh = d, doh
    return least


def dest_set_max(members: Sequence[Dest]) -> Dest | None:
    """ip_vs_dest_set_max: the first member with weight > 0, then any later member with
    weight > 0 and moh * w < doh * mw (availability and OVERLOAD are not looked at)."""
    most: Dest | None = None
    moh = 0
    for d in members:
        if most is None:
            if d.weight > 0:
                most, moh = d, overhead(d)
            continue
        doh = overhead(d)
        if moh * d.weight < doh * most.weight and d.weight > 0:
            most, moh = d, doh
    return most


def pick_lblcr(dests: Sequence[Dest], table: LblcTable, daddr: int, now: float,
               expiration: float = LBLC_EXPIRATION, max_set: int | None = None) -> int | None:
    """ip_vs_lblcr_schedule.  With an entry: lastuse = now; the set's least loaded member
    (dest_set_min) is chosen first; then, when the set has more than one member and has not
    changed for more than `expiration` seconds (time_after), its most loaded member
    (dest_set_max) leaves it (lastmod = now).  The chosen member serves unless there is none or
    it is_overloaded(); then wlc over the service picks and joins the set at its head (lastmod =
    now) unless already in it.  Without an entry, wlc picks and a one-member set is made.
    max_set bounds the set as the data plane's fixed array does (the oldest member leaves)."""
    en = table.entries.get(daddr)
    if en is not None:
        assert isinstance(en, LblcrEntry)
        en.lastuse = now
        d = dest_set_min(en.members, dests)
        if len(en.members) > 1 and now > en.lastmod + expiration:
            m = dest_set_max(en.members)
            if m is not None:
                del en.members[next(i for i, x in enumerate(en.members) if x is m)]
                en.lastmod = now
        if d is not None and not lblc_is_overloaded(d, dests):
            return next(i for i, x in enumerate(dests) if x is d)
        pos = pick_wlc(dests)
        if pos is None:
            return None
        if not any(x is dests[pos] for x in en.members):
            en.members.insert(0, dests[pos])
            if max_set is not None:
                del en.members[max_set:]
            en.lastmod = now
        return pos
    pos = pick_wlc(dests)
    if pos is None:
        return None
    table.entries[daddr] = LblcrEntry([dests[pos]], now, now)
    return pos


# -------------------------------------------------------------------- twos


def pick_twos(dests: Sequence[Dest], rand1: int, rand2: int) -> int | None:
    """ip_vs_twos_schedule with the two random u32 values it draws.  total = sum of the usable
    weights (not OVERLOADed, weight > 0); rweight_i = rand_i % (total + 1); walking the usable
    destinations, each subtracts its weight and choice_i is the first where rweight_i <= 0.
    choice2 wins when weight2 * overhead1 > weight1 * overhead2 (ties go to choice1)."""
    usable = [i for i, d in enumerate(dests) if not d.overloaded and d.weight > 0]
    if not usable:
        return None
    total = sum(dests[i].weight for i in usable) + 1
    rw1, rw2 = (rand1 & 0xFFFFFFFF) % total, (rand2 & 0xFFFFFFFF) % total
    c1 = c2 = None
    for i in usable:
        rw1 -= dests[i].weight
        rw2 -= dests[i].weight
        if rw1 <= 0 and c1 is None:
            c1 = i
        if rw2 <= 0 and c2 is None:
            c2 = i
        if c1 is not None and c2 is not None:
            break
    assert c1 is not None and c2 is not None    # rweight <= total - 1 < sum of the weights
    if dests[c2].weight * overhead(dests[c1]) > dests[c1].weight * overhead(dests[c2]):
        return c2
    return c1



def pick_sh(dests: Sequence[Dest], saddr: int, port: int = 0, fallback: bool = False) -> int | None:
    """ip_vs_sh_schedule: ip_vs_sh_get, or with sh-fallback ip_vs_sh_get_fallback (which
    probes hashkey(offset = (k + ihash) mod 256) for k = 0..255)."""
    ihash = sh_hash(saddr, port)
    probes = (sh_hash(saddr, port, (k + ihash) % HASH_BUCKETS) for k in range(HASH_BUCKETS))
    return _pick_hashed(dests, sh_table([d.weight for d in dests]), ihash, probes, fallback)

# ------------------------------------------------------------------------- mh
#
# ip_vs_mh.c: Maglev hashing.  Each destination gets a permutation of the table's slots from
# two hashes of its address and port (offset, skip); the table is filled by walking the list
# round and round, each destination taking `turns` slots per visit (its last non-zero weight
# divided by the gcd of those weights, shifted right so that the largest fits in
# IP_VS_MH_TAB_BITS bits).  A lookup hashes the client address (plus its source port with
# mh-port) into the table.

# Table sizes the kernel can be built with: primes[CONFIG_IP_VS_MH_TAB_INDEX - 8]
MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
MH_DEFAULT_SIZE = DEFAULT_MH_SIZE   # CONFIG_IP_VS_MH_TAB_INDEX = 12, the kernel's default
# generate_hash_secret(): hsiphash keys (64-bit longs on a 64-bit kernel)
MH_HASH1 = (2654435761, 2654435761)
MH_HASH2 = (2654446892, 2654446892)

_M64 = (1 << 64) - 1


def _rotl64(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rotl64(v1, 13) ^ v0
    v0 = _rotl64(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl64(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl64(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl64(v1, 17) ^ v2
    v2 = _rotl64(v2, 32)
    return v0, v1, v2, v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """lib/siphash.c hsiphash() on a 64-bit kernel: SipHash-1-3 with two 64-bit key words,
    truncated to 32 bits."""
    k0, k1 = key
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    b = (len(data) & 0xFF) << 56
    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b |= int.from_bytes(data[full:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF


def mh_addr_fold(addr) -> int:
    """ip_vs_mh_hashkey's ntohl(addr_fold): an IPv4 address as a host-order int; an IPv6 one
    folded by XOR of its four 32-bit words.  Accepts an int (IPv4, host order) or anything
    ipaddress.ip_address() takes."""
    if isinstance(addr, int) and not isinstance(addr, bool):
        return addr & 0xFFFFFFFF
    a = ipaddress.ip_address(addr)
    if a.version == 4:
        return int(a)
    n = int(a)
    return (n ^ (n >> 32) ^ (n >> 64) ^ (n >> 96)) & 0xFFFFFFFF


# IPVS's addr_fold, which dh, sh, mh and lblc hash: one name for all of them
addr_fold = mh_addr_fold


def mh_hashkey(addr, port: int, key: tuple[int, int] = MH_HASH1, offset: int = 0) -> int:
    """ip_vs_mh_hashkey: hsiphash of the u32 (offset + port + address), host byte order."""
    v = (offset + port + mh_addr_fold(addr)) & 0xFFFFFFFF
    return hsiphash(v.to_bytes(4, "little"), key)


def mh_check_size(size: int) -> int:
    """A table size must be a prime (the permutation's skip must be coprime with it)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 2 or not _is_prime(size):
        raise ValueError(f"mh table size must be a prime, got {size!r}")
    return size


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13):
        if n % p == 0:
            return n == p
    f = 17
    while f * f <= n:
        if n % f == 0 or n % (f + 2) == 0:
            return False
        f += 6
    return True


def mh_tab_bits(size: int) -> int:
    """IP_VS_MH_TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2, where the kernel's prime for index i
    has i bits (4093 -> 12 -> 6); any other prime gets the same rule from its bit length."""
    return size.bit_length() // 2


def mh_gcd_weight(last_weights: Iterable[int]) -> int:
    """ip_vs_mh_gcd_weight: gcd of the positive last weights, 0 if there is none."""
    pos = [w for w in _check_weights(last_weights) if w > 0]
    return math.gcd(*pos) if pos else 0


def mh_shift_weight(last_weights: Iterable[int], gcd: int, size: int = MH_DEFAULT_SIZE) -> int:
    """ip_vs_mh_shift_weight: how far to shift weight/gcd so the largest one occupies at most
    IP_VS_MH_TAB_BITS bits (fls(max / gcd) - bits, not below 0)."""
    if gcd < 1:
        return 0
    mw = max(_check_weights(last_weights), default=0) // gcd
    return max(mw.bit_length() - mh_tab_bits(size), 0)


def mh_table(dests: Sequence[tuple[object, int, int]], size: int = MH_DEFAULT_SIZE) -> list[int | None]:
    """ip_vs_mh_permutate + ip_vs_mh_populate.  ``dests`` are (address, port, last_weight) in
    list order; the result holds a list position per slot, or None everywhere when no
    destination has a positive last weight (ip_vs_mh_reset)."""
    mh_check_size(size)
    if len(dests) > size:
        raise ValueError(f"{len(dests)} destinations do not fit an mh table of {size}")
    lws = [lw for _, _, lw in dests]
    gcd = mh_gcd_weight(lws)
    if gcd < 1:
        return [None] * size
    rshift = mh_shift_weight(lws, gcd, size)
    perm, skip, turns = [], [], []
    for addr, port, lw in dests:
        perm.append(mh_hashkey(addr, port, MH_HASH1) % size)
        skip.append(mh_hashkey(addr, port, MH_HASH2) % (size - 1) + 1)
        turns.append(((lw // gcd) >> rshift) or (1 if lw != 0 else 0))
    table: list[int | None] = [None] * size
    n = 0
    while True:
        for i in range(len(dests)):        # one visit per destination, in list order
            for _ in range(turns[i]):      # `turns` consecutive slots (none for weight 0)
                c = perm[i]
                while table[c] is not None:
                    c += skip[i]
                    if c >= size:
                        c -= size
                perm[i] = c
                table[c] = i
                n += 1
                if n == size:
                    return table


def mh_probe(saddr, port: int, size: int, ihash: int, k: int) -> int:
    """The slot of ip_vs_mh_get_fallback's k-th probe: hashkey with offset (k + ihash) % size."""
    return mh_hashkey(saddr, port, MH_HASH1, (k + ihash) % size) % size


def pick_mh(dests: Sequence[Dest], table: Sequence[int | None], saddr, port: int = 0,
            fallback: bool = False) -> int | None:
    """ip_vs_mh_schedule: the slot hashkey(saddr, port) % size holds the destination; an
    unusable one (weight 0 or overloaded) means none, unless mh-fallback: then, as
    ip_vs_mh_get_fallback, probe hashkey(offset = (k + ihash) % size) for k = 0..size-1 and
    take the first usable one (an empty slot ends the walk).  ``port`` is the client's source
    port with mh-port, else 0."""
    size = len(table)
    ihash = mh_hashkey(saddr, port) % size
    probes = (mh_probe(saddr, port, size, ihash, k) for k in range(size))
    return _pick_hashed(dests, table, ihash, probes, fallback)

_PICK_STATELESS = {"wlc": pick_wlc, "lc": pick_lc, "sed": pick_sed, "nq": pick_nq,
                   "fo": pick_fo, "ovf": pick_ovf}


# ---------------------------------------------------------------------- Service


class Service:
    """A virtual service as IPVS keeps it: the destination list (newest first),
    the scheduler's state, and the per-destination connection counters.

    Destinations are addressed by name.  A removed destination keeps its
    counters (IPVS moves it to the trash while connections still reference it),
    and re-adding the same name brings those counters back, as
    ip_vs_trash_get_dest does.
    """

    def __init__(self, scheduler: str, flags: Iterable[str] = (), mh_size: int = MH_DEFAULT_SIZE, *,
                 expiration: float = LBLC_EXPIRATION, max_set: int | None = None,
                 rng: random.Random | None = None):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULERS}")
        self.scheduler = scheduler
        self.flags = frozenset(flags)  # "sh-port", "sh-fallback" (ipvsadm --sched-flags)
        # lblc / lblcr: the table, lblc_expiration or lblcr_expiration, the set bound
        self.table = LblcTable()
        self.expiration = expiration
        self.max_set = max_set
        self._rng = rng or random.Random()  # twos: prandom_u32
        self._dests: list[Dest] = []
        self._trash: dict[str, Dest] = {}
        self._cursor: int | None = None  # rr: svc->sched_data
        self._mark: WrrMark = wrr_init([])  # wrr: ip_vs_wrr_init_svc on an empty list
        # mh: each destination's (address, port) and last non-zero weight (dest->last_weight),
        # and the table, rebuilt on every add, delete and edit (ip_vs_mh_dest_changed)
        self.mh_size = mh_check_size(mh_size)
        self._mh_addr: dict[str, tuple[object, int]] = {}
        self._mh_last: dict[str, int] = {}
        self._mh_table: list[int | None] = []

    # -- views ---------------------------------------------------------------

    @property
    def dests(self) -> list[Dest]:
        """The destinations in list order (the reverse of the order they were added)."""
        return list(self._dests)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self._dests]

    @property
    def cursor(self) -> int | None:
        """rr cursor: position of the last pick, None = list head."""
        return self._cursor

    @property
    def cursor_name(self) -> str | None:
        return None if self._cursor is None else self._dests[self._cursor].name

    @property
    def mark(self) -> WrrMark:
        """wrr state (kept up to date for every scheduler; only wrr uses it)."""
        return self._mark

    def dest(self, name: str) -> Dest:
        """The destination called ``name`` (in the list or in the trash)."""
        for d in self._dests:
            if d.name == name:
                return d
        if name in self._trash:
            return self._trash[name]
        raise KeyError(name)

    def position(self, name: str) -> int:
        for i, d in enumerate(self._dests):
            if d.name == name:
                return i
        raise KeyError(name)

    def _weights(self) -> list[int]:
        return [d.weight for d in self._dests]

    # -- configuration ---------------------------------------------------------

    def add(self, name: str, weight: int, overloaded: bool = False, u_threshold: int = 0,
            l_threshold: int = 0, address=None, port: int = 0) -> None:
        """ip_vs_add_dest: insert at the front, then the add_dest hook.  mh hashes ``address``
        (default: the name, which must then be an IP address) and ``port``."""
        _check_weights([weight])
        if any(d.name == name for d in self._dests):
            raise ValueError(f"destination {name!r} already exists")
        d = self._trash.pop(name, None)
        if d is None:
            d = Dest(name, weight, overloaded, u_threshold=u_threshold, l_threshold=l_threshold)
        else:
            d.weight, d.overloaded = weight, overloaded
            d.u_threshold, d.l_threshold = u_threshold, l_threshold
        self._dests.insert(0, d)
        # rr has no add_dest hook: the cursor keeps its element.
        self._cursor = rr_cursor_after_add(self._cursor)
        self._mark = wrr_dest_changed(self._mark, self._weights())
        self._mh_addr[name] = (name if address is None else address, port)
        self._mh_last[name] = weight          # __ip_vs_update_dest: set on add, even to 0
        self._mh_changed()

    def remove(self, name: str) -> None:
        """ip_vs_del_dest: unlink, then the del_dest hook."""
        pos = self.position(name)
        d = self._dests.pop(pos)
        if d.active or d.inactive or self._referenced(d):
            self._trash[name] = d
        self._cursor = rr_cursor_after_delete(self._cursor, pos)
        self._mark = wrr_dest_changed(self._mark, self._weights())
        self._mh_changed()

    def set_weight(self, name: str, weight: int) -> None:
        """ip_vs_edit_dest with a new weight: the upd_dest hook (wrr only)."""
        _check_weights([weight])
        self._dests[self.position(name)].weight = weight
        self._mark = wrr_dest_changed(self._mark, self._weights())
        if weight != 0:                      # last_weight keeps the latest non-zero weight
            self._mh_last[name] = weight
        self._mh_changed()

    def set_thresholds(self, name: str, u_threshold: int, l_threshold: int = 0) -> None:
        """ip_vs_edit_dest (__ip_vs_update_dest): new thresholds; OVERLOAD is cleared when the
        upper one is now 0 or above the current total."""
        d = self._dests[self.position(name)]
        d.u_threshold, d.l_threshold = u_threshold, l_threshold
        if not u_threshold or u_threshold > d.total:
            d.overloaded = False

    def set_overloaded(self, name: str, overloaded: bool = True) -> None:
        """Set or clear the OVERLOAD flag (no scheduler hook runs)."""
        self._dests[self.position(name)].overloaded = overloaded

    @property
    def mh_table(self) -> list[int | None]:
        """mh: list position per slot (empty for other schedulers)."""
        return list(self._mh_table)

    def _mh_changed(self) -> None:
        if self.scheduler == "mh":
            self._mh_table = mh_table([(*self._mh_addr[d.name], self._mh_last[d.name]) for d in self._dests],
                                      self.mh_size)

    # -- scheduling and connections ----------------------------------------------

    def _referenced(self, d: Dest) -> bool:
        """An lblc / lblcr entry holds the destination (ip_vs_dest_hold): a removed one stays
        in the trash, and comes back with its entries when re-added."""
        for en in self.table.entries.values():
            if (en.dest is d) if isinstance(en, LblcEntry) else any(x is d for x in en.members):
                return True
        return False

    def tick(self, now: float) -> int:
        """One run of the lblc / lblcr periodic timer (every CHECK_EXPIRE_INTERVAL seconds);
        returns the entries dropped."""
        return self.table.check_expire(now, self.expiration)

    def pick(self, saddr: int = 0, daddr: int = 0, sport: int = 0, *, now: float = 0.0,
             rand: tuple[int, int] | None = None) -> int | None:
        """Run the scheduler and update its state, without counting a connection.
        dh hashes ``daddr``, sh and mh ``saddr`` (IPv4 addresses as host-order ints) and, with
        the sh-port / mh-port flag, ``sport``; sh-fallback / mh-fallback probe on past an
        unusable server.  lblc and lblcr look ``daddr`` up in their table at time ``now``
        (seconds); twos draws its two random u32s from the service's rng unless ``rand`` gives
        them."""
        if self.scheduler == "lblc":
            return pick_lblc(self._dests, self.table, daddr, now)
        if self.scheduler == "lblcr":
            return pick_lblcr(self._dests, self.table, daddr, now, self.expiration, self.max_set)
        if self.scheduler == "twos":
            if rand is None:
                rand = (self._rng.getrandbits(32), self._rng.getrandbits(32))
            return pick_twos(self._dests, *rand)
        if self.scheduler == "dh":
            return pick_dh(self._dests, daddr)
        if self.scheduler == "sh":
            return pick_sh(self._dests, saddr, sport if "sh-port" in self.flags else 0,
                           "sh-fallback" in self.flags)
        if self.scheduler == "mh":
            return pick_mh(self._dests, self._mh_table, saddr, sport if "mh-port" in self.flags else 0,
                           "mh-fallback" in self.flags)
        if self.scheduler == "rr":
            pos, self._cursor = pick_rr(self._dests, self._cursor)
        elif self.scheduler == "wrr":
            pos, self._mark = pick_wrr(self._dests, self._mark)
        else:
            pos = _PICK_STATELESS[self.scheduler](self._dests)
        return pos

    def schedule(self, saddr: int = 0, daddr: int = 0, sport: int = 0, *, active: bool = True,
                 now: float = 0.0, rand: tuple[int, int] | None = None) -> str | None:
        """Schedule a new connection: pick a destination, count the connection on it and
        return its name (None when nothing is usable).  A TCP connection counts as active from
        its SYN (SYN_RECV is an active state, tcp_state_active() in the kernel); a UDP one
        (active=False) as inactive."""
        pos = self.pick(saddr, daddr, sport, now=now, rand=rand)
        if pos is None:
            return None
        d = self._dests[pos]
        if active:
            d.active += 1
        else:
            d.inactive += 1
        bind_overload(d)
        return d.name

    def establish(self, name: str) -> None:
        """A connection on ``name`` counted inactive became active: inactive -> active."""
        d = self.dest(name)
        if d.inactive <= 0:
            raise ValueError(f"{name}: no inactive connection to establish")
        d.inactive -= 1
        d.active += 1

    def deactivate(self, name: str) -> None:
        """A TCP connection on ``name`` left the active states (FIN_WAIT, CLOSE, ...): active -> inactive."""
        d = self.dest(name)
        if d.active <= 0:
            raise ValueError(f"{name}: no active connection to deactivate")
        d.active -= 1
        d.inactive += 1

    def close(self, name: str, was_active: bool = False) -> None:
        """A connection on ``name`` expired; ``was_active`` says which counter held it."""
        d = self.dest(name)
        if was_active:
            if d.active <= 0:
                raise ValueError(f"{name}: no active connection to close")
            d.active -= 1
        else:
            if d.inactive <= 0:
                raise ValueError(f"{name}: no inactive connection to close")
            d.inactive -= 1
        unbind_overload(d)
        if name in self._trash and not (d.active or d.inactive or self._referenced(d)):
            del self._trash[name]

    def __repr__(self) -> str:
        return f"Service({self.scheduler!r}, dests={self._dests!r})"
