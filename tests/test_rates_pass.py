"""The rate estimator's pass runs in C (cext/bpfbatch.c bb_estimate: 0.4 s of a core every 2 s
in Python over 1000 x 64 servers with every counter moving).  Two estimators get the same
counters pass after pass -- ids new, moving, idle until settled at 0, going backwards, absent,
leaving and coming back, a restart, a daemon seeded from pinned rates, counters past 2^64 / 2^10
per interval -- and one runs in C, the other in Python (estimate_py): the rates written and the
state left come out the same, and both follow IPVS's estimator (tests/test_rates.py holds the
loaded data plane to it)."""
from __future__ import annotations

import random
import struct

from lb import _bpfbatch
from lb.dataplane import layout as L
from lb.dataplane.rates import VALID, EstState, estimate_c, estimate_py

NCPU = 3
SLOT = L.STATS.size              # 40: already a multiple of 8
NIDS = 40
SEC = 1_000_000_000


def _raw(per_cpu: list[tuple]) -> bytes:
    return b"".join(L.STATS.pack(*c) for c in per_cpu)


def _by_position(ids, raws):
    """values as BpfMap.values_raw gives them for a lookup by key: k-th value k-th, found[k]."""
    ffi = _bpfbatch.ffi
    vsize = SLOT * NCPU
    buf = ffi.new("char[]", max(len(ids), 1) * vsize)
    found = ffi.new("unsigned char[]", max(len(ids), 1))
    for k, raw in enumerate(raws):
        if raw is not None:
            ffi.memmove(buf + k * vsize, raw, vsize)
            found[k] = 1
    return buf, False, 0, found


def _by_id(ids, raws, nvalues):
    """values as a whole array's read gives them: id i at i (an id at or past nvalues: absent)."""
    ffi = _bpfbatch.ffi
    vsize = SLOT * NCPU
    buf = ffi.new("char[]", nvalues * vsize)
    for i, raw in zip(ids, raws):
        if raw is not None and i < nvalues:
            ffi.memmove(buf + i * vsize, raw, vsize)
    return buf, True, nvalues, None


def _both(c_st, py_st, ids, raws, dt, restart=False, pinned=None, by_id=False, nvalues=0):
    for st in (c_st, py_st):
        st.grow(max(ids, default=-1) + 1)
    values, flag, nv, found = _by_id(ids, raws, nvalues) if by_id else _by_position(ids, raws)
    c_ids, c_rates = estimate_c(c_st, ids, values, SLOT * NCPU, flag, nv, found, NCPU, SLOT, dt, restart, pinned)
    py_raws = [r if r is not None and (not by_id or i < nvalues) else None for i, r in zip(ids, raws)]
    p_ids, p_rates = estimate_py(py_st, ids, py_raws, SLOT, dt, restart, pinned)
    got_c = sorted(zip(c_ids, (tuple(c_rates[5 * k:5 * k + 5]) for k in range(len(c_ids)))))
    got_py = sorted(zip(p_ids, p_rates))
    assert got_c == got_py
    assert (c_st.last, c_st.avg, c_st.flags) == (py_st.last, py_st.avg, py_st.flags)
    return dict(got_c)


def test_one_server_follows_ipvs_and_settles():
    c_st, py_st = EstState(), EstState()
    counters = [(0, 0, 0, 0, 0)] * NCPU
    assert _both(c_st, py_st, [7], [_raw(counters)], 2 * SEC) == {}          # new: no rate yet
    counters = [(10, 100, 50, 10000, 5000), (10, 100, 50, 10000, 5000), (0, 0, 0, 0, 0)]
    got = _both(c_st, py_st, [7], [_raw(counters)], 2 * SEC)
    # 200 packets in 2 s: 100/s x 2^10, a quarter of it averaged, shown rounded
    assert got[7][1] == ((((200 << 10) // 2) >> 2) + (1 << 9) - 1) >> 10 == 25
    written = []
    for _ in range(60):                                    # idle: decays, then is not written
        written.append(len(_both(c_st, py_st, [7], [_raw(counters)], 2 * SEC)))
    assert written[0] == 1 and written[-1] == 0
    assert c_st.flags[7] & VALID


def test_random_passes_agree():
    rnd = random.Random(16)
    c_st, py_st = EstState(), EstState()
    counters = {i: [[0] * 5 for _ in range(NCPU)] for i in range(NIDS)}
    for step in range(400):
        ids = sorted(rnd.sample(range(NIDS), rnd.randint(0, NIDS)) if step % 37 else range(NIDS))
        raws = []
        for i in ids:
            cpu = counters[i]
            kind = rnd.random()
            if kind < 0.5:
                pass                                       # idle
            elif kind < 0.9:                               # moving
                for c in cpu:
                    for j in range(5):
                        c[j] += rnd.choice((0, 1, 7, 1500, 2**40))
            elif kind < 0.95:                              # zeroed: backwards
                counters[i] = cpu = [[0] * 5 for _ in range(NCPU)]
            else:
                raws.append(None)                          # absent from the map
                continue
            raws.append(_raw([tuple(c) for c in cpu]))
        pinned = [None if rnd.random() < 0.3 else tuple(rnd.randrange(2**32) for _ in range(5)) for _ in ids] \
            if step % 50 == 0 else None
        dt = rnd.choice((2 * SEC, 2 * SEC + 12345, SEC // 3, 1))
        _both(c_st, py_st, ids, raws, dt, restart=step % 90 == 89, pinned=pinned,
              by_id=step % 3 == 0, nvalues=rnd.choice((NIDS, NIDS - 5)))


def test_huge_deltas_do_not_wrap():
    """2^60 bytes in a nanosecond is far past u64 in fixed point: C's 128-bit arithmetic and
    Python's integers both clamp the rate at 2^62."""
    c_st, py_st = EstState(), EstState()
    _both(c_st, py_st, [0], [_raw([(0, 0, 0, 0, 0)] * NCPU)], SEC)
    got = _both(c_st, py_st, [0], [_raw([(1, 1, 1, 2**60, 2**60)] + [(0, 0, 0, 0, 0)] * (NCPU - 1))], 1)
    assert got[0][3] == (((1 << 62) >> 2) + (1 << 4) - 1) >> 5
    assert struct.pack("=q", c_st.avg[3])                  # fits a signed 64-bit average


def test_ids_that_leave_are_written_zero_and_dropped():
    c_st, py_st = EstState(), EstState()
    raws = [_raw([(1, 1, 1, 1, 1)] * NCPU)] * 3
    _both(c_st, py_st, [1, 2, 3], raws, 2 * SEC)
    got = _both(c_st, py_st, [2], raws[:1], 2 * SEC)
    # 1 and 3 gone, 2 idle: its first rate, 0
    assert got == {1: (0, 0, 0, 0, 0), 2: (0, 0, 0, 0, 0), 3: (0, 0, 0, 0, 0)}
    assert c_st.held() == [2] == py_st.held()
    assert _both(c_st, py_st, [2], raws[:1], 2 * SEC) == {}      # settled at 0: left alone


def test_an_apply_that_fails_gives_back_the_estimates_it_dropped():
    """An apply forgets the estimates of the ids it hands out afresh (journal() keeps them); when
    it fails and the previous table is back, so are they (ServiceTable._restore): the rates go on
    from where they were, not from nothing."""
    from lb.dataplane.rates import RateEstimator

    est = RateEstimator({}, None)
    st = est.state["lb_real_stats"] = EstState()
    other = EstState()
    counters = [_raw([(i, 10 * i, i, 100 * i, i) for _ in range(NCPU)]) for i in range(6)]
    _both(st, other, list(range(6)), counters, 2 * SEC)
    _both(st, other, list(range(6)), [_raw([(2 * i, 20 * i, 2 * i, 200 * i, 2 * i)] * NCPU) for i in range(6)],
          2 * SEC)
    before = (st.last.tobytes(), st.avg.tobytes(), bytes(st.flags))
    dropped = est.journal()
    est.forget("lb_real_stats", 3)
    est.forget("lb_real_stats", 3)               # (twice: the first drop is kept)
    est.forget("lb_real_stats", 99)              # never held
    est.forget("lb_svc_stats", 0)
    assert est.held() == {("lb_real_stats", i) for i in (0, 1, 2, 4, 5)}
    est.restore(dropped)
    assert (st.last.tobytes(), st.avg.tobytes(), bytes(st.flags)) == before
    assert est.held() == {("lb_real_stats", i) for i in range(6)}
