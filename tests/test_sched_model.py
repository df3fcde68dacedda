"""Tests for lb.sched.model, the reference model of the IPVS rr/wrr/wlc schedulers.

The fixed sequences come from a real kernel IPVS (6.1, see
/work/shared/reference/ipvs-semantics.md section 2): reals rs1, rs2, rs3 added in
that order, so the IPVS list is rs3, rs2, rs1.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.sched import (
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
from lb.sched.model import (dh_hash, dh_table, hash_32, pick_dh, pick_fo, pick_lc, pick_nq,
                            pick_ovf, pick_sed, pick_sh, sh_hash, sh_table)


def build(scheduler: str, config: list[tuple[str, int]]) -> Service:
    """A service with reals added in config order (as the lvs daemon does)."""
    s = Service(scheduler)
    for name, weight in config:
        s.add(name, weight)
    return s


def dests(weights, overloaded=None) -> list[Dest]:
    overloaded = overloaded or [False] * len(weights)
    return [Dest(f"d{i}", w, o) for i, (w, o) in enumerate(zip(weights, overloaded))]


weight_lists = st.lists(st.integers(0, 20), min_size=1, max_size=8)
positive_weight_lists = weight_lists.filter(lambda ws: any(ws))


# ------------------------------------------------------------- observed on a kernel


def test_kernel_rr_three_servers():
    s = build("rr", [("rs1", 1), ("rs2", 1), ("rs3", 1)])
    assert s.names == ["rs3", "rs2", "rs1"]
    got = []
    for _ in range(12):  # sequential short connections: each closes (TIME_WAIT) before the next
        name = s.schedule()
        assert s.dest(name).active == 1  # counted active from its SYN
        got.append(name)
        s.deactivate(name)
    assert got == ["rs3", "rs2", "rs1"] * 4
    assert [(d.active, d.inactive) for d in s.dests] == [(0, 4)] * 3


def test_kernel_wrr_3_2_1():
    s = build("wrr", [("rs1", 3), ("rs2", 2), ("rs3", 1)])
    # after rs1 alone: di=3, mw=1, cw=1; later adds keep cw=1, so the first pass runs with cw=1
    assert s.mark == WrrMark(cl=None, cw=1, mw=3, di=1)
    cycle = ["rs3", "rs2", "rs1", "rs1", "rs2", "rs1"]
    assert [s.schedule() for _ in range(12)] == cycle * 2


def test_kernel_wlc_2000_1000_1000():
    s = build("wlc", [("rs1", 2000), ("rs2", 1000), ("rs3", 1000)])
    got = []
    for _ in range(12):
        # a short connection: active from its SYN, inactive (TIME_WAIT) once it has closed,
        # which happens before the next one is scheduled
        name = s.schedule()
        assert s.dest(name).active == 1
        got.append(name)
        s.deactivate(name)
    assert got == ["rs3", "rs2", "rs1", "rs1"] * 3
    assert Counter(got) == {"rs1": 6, "rs2": 3, "rs3": 3}
    assert {d.name: (d.active, d.inactive) for d in s.dests} == {
        "rs1": (0, 6), "rs2": (0, 3), "rs3": (0, 3)}


# ----------------------------------------------------------------------------- rr


def test_rr_skips_weight_zero_and_overloaded():
    ds = [Dest("a", 1), Dest("b", 0), Dest("c", 5, overloaded=True), Dest("d", 2)]
    assert pick_rr(ds, None) == (0, 0)
    assert pick_rr(ds, 0) == (3, 3)
    assert pick_rr(ds, 3) == (0, 0)
    assert pick_rr(ds, 1) == (3, 3)  # cursor may sit on a since-quiesced dest


def test_rr_cursor_element_is_checked_last():
    ds = [Dest("a", 0), Dest("b", 1), Dest("c", 0)]
    assert pick_rr(ds, 1) == (1, 1)


@pytest.mark.parametrize("cursor", [None, 0, 1, 2])
def test_rr_nothing_usable_keeps_cursor(cursor):
    ds = [Dest("a", 0), Dest("b", 3, overloaded=True), Dest("c", 0)]
    assert pick_rr(ds, cursor) == (None, cursor)


def test_rr_empty():
    assert pick_rr([], None) == (None, None)
    assert Service("rr").schedule() is None


def test_rr_rejects_bad_cursor():
    with pytest.raises(ValueError):
        pick_rr([Dest("a", 1)], 1)


@given(weight_lists, st.lists(st.booleans(), min_size=8, max_size=8), st.none() | st.integers(0, 7))
def test_rr_picks_next_usable_cyclically(weights, overloaded, cursor):
    ds = dests(weights, overloaded[: len(weights)])
    if cursor is not None:
        cursor %= len(ds)
    pos, new = pick_rr(ds, cursor)
    usable = [i for i, d in enumerate(ds) if d.weight > 0 and not d.overloaded]
    if not usable:
        assert (pos, new) == (None, cursor)
        return
    start = -1 if cursor is None else cursor
    expected = min(usable, key=lambda i: (i - start - 1) % len(ds))
    assert pos == new == expected


@given(weight_lists)
def test_rr_visits_every_usable_once_per_round(weights):
    ds = dests(weights)
    usable = [i for i, w in enumerate(weights) if w > 0]
    cursor = None
    picks = []
    for _ in range(2 * len(usable)):
        pos, cursor = pick_rr(ds, cursor)
        picks.append(pos)
    assert picks == usable * 2


def test_rr_cursor_after_delete_table():
    assert rr_cursor_after_delete(None, 0) is None
    assert rr_cursor_after_delete(None, 3) is None
    assert rr_cursor_after_delete(0, 0) is None  # was first -> head
    assert rr_cursor_after_delete(2, 2) == 1  # -> previous element
    assert rr_cursor_after_delete(1, 3) == 1  # earlier element: unchanged
    assert rr_cursor_after_delete(3, 1) == 2  # later element shifts down
    with pytest.raises(ValueError):
        rr_cursor_after_delete(0, -1)


def test_rr_cursor_after_add():
    assert rr_cursor_after_add(None) is None
    assert rr_cursor_after_add(0) == 1


def test_rr_add_keeps_cursor_element():
    s = build("rr", [("rs1", 1), ("rs2", 1), ("rs3", 1)])
    assert [s.schedule(), s.schedule()] == ["rs3", "rs2"]
    assert (s.cursor, s.cursor_name) == (1, "rs2")
    s.add("rs4", 1)
    assert s.names == ["rs4", "rs3", "rs2", "rs1"]
    assert (s.cursor, s.cursor_name) == (2, "rs2")
    assert [s.schedule() for _ in range(4)] == ["rs1", "rs4", "rs3", "rs2"]


def test_rr_add_with_cursor_at_head():
    s = build("rr", [("rs1", 1), ("rs2", 1)])
    s.add("rs3", 1)
    assert s.cursor is None
    assert s.schedule() == "rs3"


def test_rr_remove_cursor_dest_moves_to_previous():
    s = build("rr", [("rs1", 1), ("rs2", 1), ("rs3", 1)])  # rs3 rs2 rs1
    assert [s.schedule(), s.schedule()] == ["rs3", "rs2"]
    s.remove("rs2")
    assert (s.cursor, s.cursor_name) == (0, "rs3")
    assert s.schedule() == "rs1"


def test_rr_remove_first_cursor_dest_goes_to_head():
    s = build("rr", [("rs1", 1), ("rs2", 1), ("rs3", 1)])
    assert s.schedule() == "rs3"
    s.remove("rs3")
    assert s.cursor is None
    assert [s.schedule() for _ in range(3)] == ["rs2", "rs1", "rs2"]


@given(
    st.lists(st.integers(1, 5), min_size=2, max_size=8),
    st.integers(0, 20),
    st.integers(0, 7),
)
def test_rr_after_delete_continues_after_removed(weights, npicks, victim):
    """After any delete, the next pick is the first usable element that followed
    the removed one (cyclically), or the one after the cursor when another dest
    was removed."""
    s = Service("rr")
    for i, w in enumerate(weights):
        s.add(f"r{i}", w)
    for _ in range(npicks):
        s.schedule()
    before = s.names
    cur = s.cursor
    victim %= len(before)
    name = before[victim]
    s.remove(name)
    new = s.names
    if cur is None:
        expected = new[0]
    elif before[cur] == name:  # cursor was on the victim: continue with its successor
        expected = new[victim % len(new)]
    else:
        expected = new[(new.index(before[cur]) + 1) % len(new)]
    assert s.schedule() == expected


# ---------------------------------------------------------------------------- wrr


def test_wrr_params():
    assert wrr_params([]) == (0, 1)
    assert wrr_params([0, 0]) == (0, 1)
    assert wrr_params([3, 2, 1]) == (3, 1)
    assert wrr_params([4, 8, 0]) == (5, 4)  # mw = 8 - (4 - 1)
    assert wrr_params([6]) == (1, 6)
    with pytest.raises(ValueError):
        wrr_params([1, -1])


def test_wrr_init():
    assert wrr_init([]) == WrrMark(cl=None, cw=0, mw=0, di=1)
    assert wrr_init([3, 2, 1]) == WrrMark(cl=None, cw=3, mw=3, di=1)
    assert wrr_init([4, 8]) == WrrMark(cl=None, cw=5, mw=5, di=4)


def test_wrr_dest_changed_rules():
    # cw > mw -> clamp to mw; cl always back to head
    assert wrr_dest_changed(WrrMark(2, 9, 9, 1), [3, 1]) == WrrMark(None, 3, 3, 1)
    # cw == 0 (service created empty) -> mw
    assert wrr_dest_changed(WrrMark(None, 0, 0, 1), [3]) == WrrMark(None, 1, 1, 3)
    # di == 1 and cw within range -> unchanged
    assert wrr_dest_changed(WrrMark(1, 2, 3, 1), [3, 2, 1, 5]) == WrrMark(None, 2, 5, 1)
    # di > 1 -> (cw // di) * di + 1
    assert wrr_dest_changed(WrrMark(0, 2, 3, 1), [2, 4, 6]) == WrrMark(None, 3, 5, 2)
    assert wrr_dest_changed(WrrMark(0, 4, 5, 1), [6, 12]) == WrrMark(None, 1, 7, 6)
    assert wrr_dest_changed(WrrMark(0, 9, 10, 1), [3, 9, 12]) == WrrMark(None, 10, 10, 3)
    # everything removed / zeroed -> mw 0, cw 0
    assert wrr_dest_changed(WrrMark(0, 2, 3, 1), []) == WrrMark(None, 0, 0, 1)
    assert wrr_dest_changed(WrrMark(0, 2, 3, 1), [0, 0]) == WrrMark(None, 0, 0, 1)


def test_wrr_service_hooks():
    s = build("wrr", [("a", 4)])
    assert s.mark == WrrMark(None, 1, 1, 4)
    s.add("b", 8)  # di 4, mw 5; cw 1 -> (1 // 4) * 4 + 1 = 1
    assert s.mark == WrrMark(None, 1, 5, 4)
    assert s.schedule() == "b"  # list b a, cw 1
    s.set_weight("b", 12)  # upd_dest
    assert s.mark == WrrMark(None, 1, 9, 4)
    s.schedule()
    s.remove("a")  # del_dest: di 12, mw 1
    assert s.mark == WrrMark(None, 1, 1, 12)


def test_wrr_all_zero_unchanged_mark():
    ds = dests([0, 0, 0])
    mark = WrrMark(1, 0, 0, 1)
    assert pick_wrr(ds, mark) == (None, mark)
    assert Service("wrr").schedule() is None


@pytest.mark.parametrize("cl", [None, 0, 1, 2])
@pytest.mark.parametrize("weights", [[3, 2, 1], [4, 4, 4], [2, 6, 0]])
def test_wrr_all_overloaded(cl, weights):
    ds = dests(weights, [True] * 3)
    mw, di = wrr_params(weights)
    for cw in range(1, mw + 1, di):
        pos, mark = pick_wrr(ds, WrrMark(cl, cw, mw, di))
        assert pos is None
        assert mark.mw == mw and mark.di == di and 1 <= mark.cw <= mw


def test_wrr_does_not_mutate_inputs():
    ds = dests([3, 2, 1])
    mark = wrr_init([3, 2, 1])
    pos, new = pick_wrr(ds, mark)
    assert mark == WrrMark(None, 3, 3, 1)
    assert (pos, new) == (0, WrrMark(0, 3, 3, 1))


def wrr_cycle(weights: list[int]) -> list[int]:
    """One cycle as the kernel's comment describes it: passes cw = mw, mw - di, ..., 1,
    each choosing, in list order, the dests with weight >= cw."""
    mw, di = wrr_params(weights)
    return [i for cw in range(mw, 0, -di) for i, w in enumerate(weights) if w >= cw]


@given(positive_weight_lists)
def test_wrr_cycle_from_init(weights):
    ds = dests(weights)
    mark = wrr_init(weights)
    g = math.gcd(*weights)
    cycle = sum(weights) // g
    picks = []
    for _ in range(2 * cycle):
        pos, mark = pick_wrr(ds, mark)
        picks.append(pos)
    assert picks[:cycle] == picks[cycle:] == wrr_cycle(weights)
    counts = Counter(picks[:cycle])
    assert all(counts[i] == w // g for i, w in enumerate(weights))  # weight 0 -> never


@given(positive_weight_lists)
def test_wrr_service_proportions_after_warmup(weights):
    """A service built add by add starts mid-cycle; from the first wrap on, every
    cycle picks each server weight/gcd times and weight-0 servers never."""
    s = Service("wrr")
    for i, w in enumerate(weights):
        s.add(f"r{i}", w)
    g = math.gcd(*weights)
    cycle = sum(weights) // g
    picks = [s.schedule() for _ in range(3 * cycle)]
    assert None not in picks
    for k in (1, 2):
        counts = Counter(picks[k * cycle : (k + 1) * cycle])
        assert counts == {f"r{i}": w // g for i, w in enumerate(weights) if w > 0}
    assert all(s.dest(f"r{i}").inactive == 0 for i, w in enumerate(weights) if w == 0)


@given(
    weight_lists,
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.none() | st.integers(0, 7),
    st.integers(0, 40),
)
def test_wrr_finds_a_usable_dest_from_any_valid_mark(weights, overloaded, cl, cwi):
    ds = dests(weights, overloaded[: len(weights)])
    mw, di = wrr_params(weights)
    cl = None if cl is None else cl % len(ds)
    cw = 0 if mw == 0 else 1 + (cwi % ((mw - 1) // di + 1)) * di  # valid: 1 <= cw <= mw, cw = 1 mod di
    pos, mark = pick_wrr(ds, WrrMark(cl, cw, mw, di))
    usable = [d.weight > 0 and not d.overloaded for d in ds]
    if pos is None:
        assert not any(usable)
    else:
        assert usable[pos]
        assert mark.cl == pos and ds[pos].weight >= mark.cw
    if mw:
        assert 1 <= mark.cw <= mw and mark.cw % di == 1 % di
    assert (mark.mw, mark.di) == (mw, di)


# ---------------------------------------------------------------------------- wlc


def test_overhead():
    assert overhead(Dest("a", 1, active=2, inactive=5)) == 2 * 256 + 5


def test_wlc_basic():
    assert pick_wlc([]) is None
    assert pick_wlc([Dest("a", 0), Dest("b", 1, overloaded=True)]) is None
    # weight 0 never wins even with no connections
    assert pick_wlc([Dest("a", 1, inactive=50), Dest("b", 0)]) == 0
    # one active outweighs 255 inactive
    assert pick_wlc([Dest("a", 1, active=1), Dest("b", 1, inactive=255)]) == 1
    assert pick_wlc([Dest("a", 1, active=1), Dest("b", 1, inactive=256)]) == 0  # tie -> first
    # overloaded skipped even when least loaded
    assert pick_wlc([Dest("a", 1, overloaded=True), Dest("b", 1, inactive=9)]) == 1


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.booleans(), st.integers(0, 5), st.integers(0, 600)),
        max_size=8,
    )
)
def test_wlc_minimises_overhead_per_weight(rows):
    ds = [Dest(f"d{i}", w, o, a, n) for i, (w, o, a, n) in enumerate(rows)]
    got = pick_wlc(ds)
    cands = [(Fraction(overhead(d), d.weight), i) for i, d in enumerate(ds) if d.weight > 0 and not d.overloaded]
    assert got == (min(cands)[1] if cands else None)


def test_wlc_counts_active_connections():
    s = build("wlc", [("rs1", 1), ("rs2", 1)])  # list rs2 rs1
    assert s.schedule() == "rs2"  # a long connection: stays active
    got = []
    for _ in range(3):  # short connections that close (TIME_WAIT, inactive) before the next
        got.append(s.schedule())
        s.deactivate(got[-1])
    # one active connection weighs 256 inactive ones: rs2's overhead 256 > rs1's 0, 1, 2
    assert got == ["rs1", "rs1", "rs1"]
    assert [(d.name, d.active, d.inactive) for d in s.dests] == [("rs2", 1, 0), ("rs1", 0, 3)]


# ------------------------------------------------------------- lc, sed, nq, fo, ovf

conn_rows = st.lists(
    st.tuples(st.integers(0, 20), st.booleans(), st.integers(0, 30), st.integers(0, 600)),
    max_size=8,
)


def _rows(rows):
    return [Dest(f"d{i}", w, o, a, n) for i, (w, o, a, n) in enumerate(rows)]


def _usable(ds):
    return [(i, d) for i, d in enumerate(ds) if d.weight > 0 and not d.overloaded]


def test_lc_basic():
    assert pick_lc([]) is None
    assert pick_lc([Dest("a", 0), Dest("b", 3, overloaded=True)]) is None
    # weight only gates: a heavier server with more overhead loses
    assert pick_lc([Dest("a", 100, inactive=2), Dest("b", 1, inactive=1)]) == 1
    assert pick_lc([Dest("a", 1, active=1), Dest("b", 1, inactive=255)]) == 1
    assert pick_lc([Dest("a", 1, active=1), Dest("b", 1, inactive=256)]) == 0   # tie -> first
    assert pick_lc([Dest("a", 0), Dest("b", 1, inactive=9)]) == 1


@given(conn_rows)
def test_lc_least_overhead_first(rows):
    ds = _rows(rows)
    cands = [(overhead(d), i) for i, d in _usable(ds)]
    assert pick_lc(ds) == (min(cands)[1] if cands else None)


def test_sed_basic():
    assert pick_sed([]) is None
    # inactive connections are ignored
    assert pick_sed([Dest("a", 1, inactive=1000), Dest("b", 1)]) == 0
    # (0+1)/1 vs (2+1)/4: b
    assert pick_sed([Dest("a", 1), Dest("b", 4, active=2)]) == 1
    # (1+1)/2 == (0+1)/1: tie -> first
    assert pick_sed([Dest("a", 2, active=1), Dest("b", 1)]) == 0
    assert pick_sed([Dest("a", 0), Dest("b", 1, active=5, overloaded=True)]) is None


@given(conn_rows)
def test_sed_minimises_active_plus_one_per_weight(rows):
    ds = _rows(rows)
    cands = [(Fraction(d.active + 1, d.weight), i) for i, d in _usable(ds)]
    assert pick_sed(ds) == (min(cands)[1] if cands else None)


def test_nq_basic():
    # the first idle usable server wins, whatever its weight
    assert pick_nq([Dest("a", 10, active=1), Dest("b", 1), Dest("c", 1)]) == 1
    # an idle server with weight 0 or overloaded does not count
    assert pick_nq([Dest("a", 10, active=1), Dest("b", 0), Dest("c", 1, overloaded=True)]) == 0
    # nobody idle: sed
    assert pick_nq([Dest("a", 1, active=1), Dest("b", 4, active=2)]) == 1
    assert pick_nq([Dest("a", 0)]) is None


@given(conn_rows)
def test_nq_idle_first_else_sed(rows):
    ds = _rows(rows)
    idle = [i for i, d in _usable(ds) if d.active == 0]
    assert pick_nq(ds) == (idle[0] if idle else pick_sed(ds))


def test_fo_basic():
    assert pick_fo([]) is None
    assert pick_fo([Dest("a", 1), Dest("b", 5), Dest("c", 5)]) == 1
    assert pick_fo([Dest("a", 1), Dest("b", 5, overloaded=True)]) == 0
    assert pick_fo([Dest("a", 0)]) is None
    # connections do not matter
    assert pick_fo([Dest("a", 1), Dest("b", 2, active=100)]) == 1


@given(conn_rows)
def test_fo_highest_weight_first(rows):
    ds = _rows(rows)
    cands = [(-d.weight, i) for i, d in _usable(ds)]
    assert pick_fo(ds) == (min(cands)[1] if cands else None)


def test_ovf_basic():
    assert pick_ovf([Dest("a", 1), Dest("b", 3, active=3)]) == 1      # active == weight still fits
    assert pick_ovf([Dest("a", 1), Dest("b", 3, active=4)]) == 0      # overflow to the next
    assert pick_ovf([Dest("a", 1, active=2), Dest("b", 3, active=4)]) is None
    assert pick_ovf([Dest("a", 2, inactive=500), Dest("b", 2)]) == 0  # inactive ignored, tie -> first
    assert pick_ovf([Dest("a", 0), Dest("b", 9, overloaded=True)]) is None


@given(conn_rows)
def test_ovf_highest_weight_not_overflowed(rows):
    ds = _rows(rows)
    cands = [(-d.weight, i) for i, d in _usable(ds) if d.active <= d.weight]
    assert pick_ovf(ds) == (min(cands)[1] if cands else None)


def test_service_ovf_sequence():
    s = build("ovf", [("rs1", 2), ("rs2", 3)])  # list rs2 rs1
    got = []
    for _ in range(8):
        got.append(s.schedule())  # each one counts active from its SYN
    assert got == ["rs2"] * 4 + ["rs1"] * 3 + [None]
    assert [(d.name, d.active, d.inactive) for d in s.dests] == [("rs2", 4, 0), ("rs1", 3, 0)]


def test_service_nq_sequence():
    s = build("nq", [("rs1", 10), ("rs2", 1), ("rs3", 1)])  # list rs3 rs2 rs1
    got = []
    for _ in range(5):
        got.append(s.schedule())  # each one counts active from its SYN
    assert [(d.name, d.active, d.inactive) for d in s.dests] == [
        ("rs3", 1, 0), ("rs2", 1, 0), ("rs1", 3, 0)]
    # each idle server once (list order), then sed: rs1 (2/10) beats rs2, rs3 (2/1)
    assert got == ["rs3", "rs2", "rs1", "rs1", "rs1"]


# ------------------------------------------------------------------------ dh, sh


def test_hash_32():
    # include/linux/hash.h: (val * 0x61C88647) >> (32 - bits), 32-bit arithmetic
    assert hash_32(0) == 0
    assert hash_32(1) == 0x61
    assert hash_32(0xFFFFFFFF) == ((0xFFFFFFFF * 0x61C88647) & 0xFFFFFFFF) >> 24
    assert dh_hash(0xC612001E) == hash_32(0xC612001E)
    assert sh_hash(5, 7) == hash_32(12) and sh_hash(5, 0, 3) == (hash_32(5) + 3) % 256


def test_dh_table():
    assert dh_table(0) == [None] * 256
    assert dh_table(3)[:7] == [0, 1, 2, 0, 1, 2, 0]
    assert dh_table(1) == [0] * 256


def test_sh_table_weights():
    assert sh_table([]) == [None] * 256
    # weight w fills w consecutive buckets, weight 0 still one; the walk wraps round the list
    assert sh_table([2, 0, 1])[:8] == [0, 0, 1, 2, 0, 0, 1, 2]
    t = sh_table([3, 1])
    assert Counter(t) == {0: 192, 1: 64}


@given(weight_lists, st.integers(0, 2**32 - 1))
def test_dh_pick_is_bucket_if_usable(weights, daddr):
    ds = dests(weights)
    pos = dh_hash(daddr) % len(ds)
    assert pick_dh(ds, daddr) == (pos if weights[pos] > 0 else None)


@given(weight_lists, st.lists(st.booleans(), min_size=8, max_size=8), st.integers(0, 2**32 - 1),
       st.integers(0, 65535))
def test_sh_fallback_finds_a_usable_one(weights, overloaded, saddr, port):
    ds = dests(weights, overloaded[:len(weights)])
    plain = pick_sh(ds, saddr, port)
    fb = pick_sh(ds, saddr, port, fallback=True)
    if plain is not None:
        assert fb == plain
    usable_in_table = {p for p in sh_table(weights) if ds[p].usable}
    # the probes (k + 2 * ihash) mod 256 visit every bucket
    assert (fb is None) == (not usable_in_table)


def test_service_dh_sh():
    s = build("sh", [("rs1", 1), ("rs2", 1)])   # list rs2 rs1: buckets alternate rs2, rs1
    for saddr in (0, 1, 2, 0x0A000001):
        want = ["rs2", "rs1"][hash_32(saddr) % 2]
        assert s.schedule(saddr=saddr) == want
    s.set_weight("rs1", 0)
    assert {s.schedule(saddr=a) for a in range(50)} == {"rs2", None}
    d = build("dh", [("rs1", 1)])
    assert d.schedule(daddr=1234) == "rs1"


# ------------------------------------------------------------ Service bookkeeping


def test_service_validation():
    with pytest.raises(ValueError):
        Service("fastest")
    s = build("rr", [("a", 1)])
    with pytest.raises(ValueError):
        s.add("a", 2)
    with pytest.raises(ValueError):
        s.add("b", -1)
    with pytest.raises(ValueError):
        s.set_weight("a", -1)
    with pytest.raises(KeyError):
        s.remove("zz")
    with pytest.raises(ValueError):
        s.establish("a")  # no connection yet
    with pytest.raises(ValueError):
        s.close("a", was_active=False)


def test_connection_lifecycle():
    s = build("rr", [("a", 1)])
    assert s.schedule() == "a"
    d = s.dest("a")
    assert (d.active, d.inactive) == (1, 0)  # a TCP connection is active from its SYN (SYN_RECV)
    s.deactivate("a")  # e.g. FIN_WAIT
    assert (d.active, d.inactive) == (0, 1)
    s.establish("a")  # back into an active state
    assert (d.active, d.inactive) == (1, 0)
    s.close("a", was_active=True)
    assert (d.active, d.inactive) == (0, 0)
    with pytest.raises(ValueError):
        s.deactivate("a")
    assert s.schedule(active=False) == "a"  # UDP: always inactive
    assert (d.active, d.inactive) == (0, 1)
    with pytest.raises(ValueError):
        s.close("a", was_active=True)
    s.close("a", was_active=False)
    assert (d.active, d.inactive) == (0, 0)


def test_removed_dest_keeps_counters_until_readded():
    s = build("wlc", [("a", 1), ("b", 1)])
    assert s.schedule() == "b"  # active from its SYN
    assert s.schedule() == "a"
    s.deactivate("a")  # a's connection closed
    assert (s.dest("b").active, s.dest("b").inactive) == (1, 0)
    s.remove("b")
    assert s.names == ["a"]
    assert s.dest("b").active == 1  # still referenced by its connection
    s.add("b", 3)
    assert s.names == ["b", "a"] and s.dest("b").active == 1 and s.dest("b").weight == 3
    s.close("b", was_active=True)
    s.remove("b")
    with pytest.raises(KeyError):
        s.dest("b")  # nothing left referencing it
    s.add("b", 1)
    assert (s.dest("b").active, s.dest("b").inactive) == (0, 0)


def test_weight_zero_quiesces():
    for sched in ("rr", "wrr", "wlc"):
        s = build(sched, [("a", 1), ("b", 1)])
        s.set_weight("b", 0)
        assert [s.schedule() for _ in range(4)] == ["a"] * 4, sched
        s.set_overloaded("a")
        assert s.schedule() is None, sched
        s.set_overloaded("a", False)
        s.set_weight("b", 2)
        assert "b" in [s.schedule() for _ in range(3)], sched


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 5), st.integers(0, 6)),
        st.tuples(st.just("remove"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("weight"), st.integers(0, 5), st.integers(0, 6)),
        st.tuples(st.just("overload"), st.integers(0, 5), st.integers(0, 1)),
        # v = 1: a UDP connection, counted inactive from the start (a TCP one is active)
        st.tuples(st.just("schedule"), st.just(0), st.integers(0, 1)),
        st.tuples(st.just("establish"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("deactivate"), st.integers(0, 5), st.just(0)),     # a FIN: active -> inactive
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(st.sampled_from(["rr", "wrr", "wlc"]), ops)
def test_random_operations_keep_invariants(sched, program):
    s = Service(sched)
    for op, k, v in program:
        name = f"r{k}"
        present = name in s.names
        if op == "add" and not present:
            s.add(name, v)
        elif op == "remove" and present:
            s.remove(name)
        elif op == "weight" and present:
            s.set_weight(name, v)
        elif op == "overload" and present:
            s.set_overloaded(name, bool(v))
        elif op in ("establish", "deactivate"):
            # one of the servers holding a connection it can move (r{k} alone would seldom be one)
            holding = [d.name for d in s.dests if (d.inactive if op == "establish" else d.active)]
            if holding:
                name = holding[k % len(holding)]
                a, i = s.dest(name).active, s.dest(name).inactive
                if op == "establish":
                    s.establish(name)
                    assert (s.dest(name).active, s.dest(name).inactive) == (a + 1, i - 1)
                else:
                    s.deactivate(name)
                    assert (s.dest(name).active, s.dest(name).inactive) == (a - 1, i + 1)
        elif op == "schedule":
            usable = [d.name for d in s.dests if d.weight > 0 and not d.overloaded]
            counts = {d.name: (d.active, d.inactive) for d in s.dests}
            got = s.schedule(active=not v)
            assert (got is None) == (not usable)
            assert got is None or got in usable
            if got is not None:         # the new connection is counted on its server, and only there
                a, i = counts[got]
                counts[got] = (a + 1, i) if not v else (a, i + 1)
            assert {d.name: (d.active, d.inactive) for d in s.dests} == counts
        # scheduler state stays within the list
        n = len(s.dests)
        assert s.cursor is None or 0 <= s.cursor < n
        m = s.mark
        assert m.cl is None or 0 <= m.cl < n
        assert (m.mw, m.di) == wrr_params([d.weight for d in s.dests])
        if m.mw:
            assert 1 <= m.cw <= m.mw and m.cw % m.di == 1 % m.di
