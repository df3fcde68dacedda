"""IPVS's rate estimator (net/netfilter/ipvs/ip_vs_est.c) for the XDP data plane: the per-CPU
counters of services and real servers become the smoothed per-second rates of `lb list --rate`
(lb_svc_rates / lb_real_rates)."""
from __future__ import annotations

import time
from array import array

from . import layout as L
from .txn import MapTxn

try:
    from lb import _bpfbatch  # built by the package install (cext/build_bpfbatch.py)
except ImportError:  # pragma: no cover - a source tree without the cffi module built
    _bpfbatch = None

# fixed-point scale of the estimator's averages per lb_stats field (ip_vs_est.c: conns and
# packets x 2^10, bytes x 2^5)
EST_SHIFT = (10, 10, 10, 5, 5)

RATES_OF = {"lb_svc_stats": "lb_svc_rates", "lb_real_stats": "lb_real_rates"}

# an id's flags in EstState (cext/bpfbatch.c BB_EST_*)
VALID, SETTLED, SEEN = 1, 2, 4


def zero_counters(maps, ids) -> None:
    """ipvsadm -Z's writes: each (stats map, id)'s per-CPU counters and its rates set to zero
    (a packet counted meanwhile on another CPU may be lost, as in IPVS)."""
    for mapname, i in ids:
        key = L.U32.pack(i)
        maps[mapname].set(key, L.STATS.pack(0, 0, 0, 0, 0))
        maps[RATES_OF[mapname]].set(key, L.RATES.pack(0, 0, 0, 0, 0))


class EstState:
    """One stats map's estimates, indexed by id (what cext/bpfbatch.c bb_estimate reads and
    writes): last[5 * id] the counters summed over CPUs at the last pass, avg[5 * id] the
    smoothed rates in fixed point, flags[id] VALID (an estimate is held), SETTLED (every average
    0: shown 0), SEEN (during a pass)."""

    def __init__(self):
        self.cap = 0
        self.last = array("Q")
        self.avg = array("q")
        self.flags = bytearray()

    def grow(self, cap: int) -> None:
        if cap > self.cap:
            cap = max(cap, 2 * self.cap, 64)
            more = cap - self.cap
            self.last.frombytes(bytes(40 * more))
            self.avg.frombytes(bytes(40 * more))
            self.flags.extend(bytes(more))
            self.cap = cap

    def held(self) -> list[int]:
        return [i for i, f in enumerate(self.flags) if f & VALID]

    def take(self, i: int):
        """id i's estimate, dropped: (last, avg, flags), or None if none is held."""
        if i >= self.cap or not self.flags[i] & VALID:
            return None
        old = (self.last[5 * i:5 * i + 5], self.avg[5 * i:5 * i + 5], self.flags[i] & ~SEEN)
        self.flags[i] = 0
        return old

    def put(self, i: int, old) -> None:
        self.grow(i + 1)
        self.last[5 * i:5 * i + 5], self.avg[5 * i:5 * i + 5], self.flags[i] = old


def estimate_py(st: EstState, ids: list[int], raws: list, slot: int, dt_ns: int, restart: bool,
                pinned: list | None) -> tuple[list[int], list[tuple]]:
    """bb_estimate in Python (where lb._bpfbatch is not built; the tests hold the two to the same
    result): raws[k] the k-th id's raw per-CPU lb_stats (None: absent), pinned[k] the rates it
    showed (or None) for a daemon that carries on from them.  Returns the ids and rates to write."""
    out_ids, out_rates = [], []
    size, unpack = L.STATS.size, L.STATS.unpack
    last, avg, flags = st.last, st.avg, st.flags
    for k, (i, raw) in enumerate(zip(ids, raws)):
        if i >= st.cap:
            continue
        tot = [0] * 5
        for c in range(0, len(raw or b""), slot):
            for j, x in enumerate(unpack(raw[c:c + size])):
                tot[j] += x
        f, o = flags[i], 5 * i
        prev = last[o:o + 5]
        if f & VALID and f & SETTLED and not restart and list(prev) == tot:
            flags[i] = f | SEEN                   # idle, shown 0: stays so
            continue
        if not f & VALID or restart or any(c < p for c, p in zip(tot, prev)):
            seed = pinned[k] if pinned is not None and not f & VALID else None
            last[o:o + 5] = array("Q", tot)
            avg[o:o + 5] = array("q", [r << s for r, s in zip(seed, EST_SHIFT)] if seed else [0] * 5)
            flags[i] = VALID | SEEN
            continue
        shown = []
        for j, s in enumerate(EST_SHIFT):
            rate = min(((tot[j] - prev[j]) << s) * 1_000_000_000 // dt_ns, 1 << 62)
            avg[o + j] += (rate - avg[o + j]) >> 2
            shown.append((avg[o + j] + (1 << (s - 1)) - 1) >> s if avg[o + j] > 0 else 0)
        last[o:o + 5] = array("Q", tot)
        flags[i] = VALID | SEEN | (0 if any(avg[o:o + 5]) else SETTLED)
        out_ids.append(i)
        out_rates.append(tuple(shown))
    for i, f in enumerate(flags):
        if f & (VALID | SEEN) == VALID:
            flags[i] = 0                          # no longer in use: its rates to 0
            out_ids.append(i)
            out_rates.append((0, 0, 0, 0, 0))
        else:
            flags[i] = f & ~SEEN
    return out_ids, out_rates


def estimate_c(st: EstState, ids: list[int], values, vsize: int, by_id: bool, nvalues: int, found, ncpu: int,
               slot: int, dt_ns: int, restart: bool, pinned: list | None) -> tuple[array, array]:
    """bb_estimate over values as BpfMap.values_raw reads them: the ids (array "I") and their
    rates (array "Q", five each) to write."""
    ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
    n = len(ids)
    ida = array("I", ids)
    out_ids = array("I", bytes(4 * (n + st.cap)))
    out_rates = array("Q", bytes(40 * (n + st.cap)))
    pin = pin_found = ffi.NULL
    if pinned is not None:
        pin = ffi.from_buffer("uint64_t[]", array("Q", [x for p in pinned for x in (p or (0, 0, 0, 0, 0))]))
        pin_found = ffi.from_buffer(bytes(1 if p else 0 for p in pinned))
    m = lib.bb_estimate(ffi.from_buffer("uint32_t[]", ida), n, values, vsize, int(by_id), nvalues,
                        found if found is not None else ffi.NULL, ncpu, slot,
                        ffi.from_buffer("uint64_t[]", st.last, require_writable=True),
                        ffi.from_buffer("int64_t[]", st.avg, require_writable=True),
                        ffi.from_buffer("uint8_t[]", st.flags, require_writable=True), st.cap,
                        max(dt_ns, 1), int(restart), pin, pin_found,
                        ffi.from_buffer("uint32_t[]", out_ids, require_writable=True),
                        ffi.from_buffer("uint64_t[]", out_rates, require_writable=True))
    del out_ids[m:]
    del out_rates[5 * m:]
    return out_ids, out_rates


class RateEstimator:
    def __init__(self, maps: dict, txn: MapTxn):
        self.maps = maps
        self.txn = txn
        # stats map -> its ids' estimates, as the last pass (at last_ns) left them
        self.state: dict[str, EstState] = {}
        self.last_ns: int | None = None
        self.seeded = False
        self.dropped: dict | None = None    # during an apply: the estimates forget() dropped

    def held(self) -> set[tuple[str, int]]:
        """(stats map, id) of every estimate held."""
        return {(name, i) for name, st in self.state.items() for i in st.held()}

    def journal(self) -> dict:
        """An apply starts: from here on forget() keeps what it drops in the dict returned (given
        back to restore() if the apply fails), so an apply need not copy every estimate."""
        self.dropped = {}
        return self.dropped

    def forget(self, mapname: str, i: int) -> None:
        """A new (or reused) id: its rate starts afresh."""
        st = self.state.get(mapname)
        old = st.take(i) if st is not None else None
        if old is not None and self.dropped is not None:
            self.dropped.setdefault((mapname, i), old)

    def restore(self, dropped: dict) -> None:
        """A failed apply: the estimates it dropped (journal()'s dict) are back."""
        for (mapname, i), old in dropped.items():
            self.state.setdefault(mapname, EstState()).put(i, old)

    def zero(self, ids) -> None:
        """Counters and rates of ``ids`` to zero; the estimator starts afresh from there (IPVS's
        ip_vs_zero_estimator)."""
        zero_counters(self.maps, ids)
        for mapname, i in ids:
            self.forget(mapname, i)

    def estimate(self, ids: dict[str, list[int]], adopted: bool, now: float | None = None) -> int:
        """Run every 2 s: for each stats map's ids in use ({stats map: [id, ...]}), the counter
        deltas since the last pass become per-second rates in fixed point (conns and packets x
        2^10, bytes x 2^5), smoothed as avg += (rate - avg) / 4, and written rounded to
        lb_svc_rates / lb_real_rates.  The interval is the measured one (exactly IPVS's shifts
        when it is 2 s).  A new id, or one whose counters went backwards, starts from its
        current counters with no rate yet; an adopted instance's first pass carries on from the
        pinned rates.  Returns the number of entries written.

        Each stats map is read whole in a few syscalls (not one per id), the pass is C's
        (cext/bpfbatch.c bb_estimate) where lb._bpfbatch is built, and the rates are written in
        one batch; an id whose counters have not moved since a pass that showed it 0 (an idle
        server: its rate stays 0) is neither computed nor written.  A pass over 1000 services of
        64 servers took 0.8 s of a core every 2 s with one lookup and one write per id, 0.4 s
        with every counter moving in Python."""
        now_ns = int((time.monotonic() if now is None else now) * 1_000_000_000)
        seed = adopted and not self.seeded
        self.seeded = True
        # every id held was sampled at the last pass (each pass visits every id in use, and
        # drops the rest): one interval for all
        last_ns = self.last_ns
        restart = last_ns is None or now_ns <= last_ns
        try:
            n = self._pass(ids, now_ns - (last_ns or 0), restart, seed)
        except BaseException:
            # the estimates half updated: the next pass starts afresh (as every id would be new)
            # rather than take two intervals' deltas over one
            self.state.clear()
            self.last_ns = None
            raise
        self.last_ns = now_ns
        return n

    def _pass(self, ids: dict[str, list[int]], dt_ns: int, restart: bool, seed: bool) -> int:
        n = 0
        for mapname in set(ids) | set(self.state):
            idl = ids.get(mapname, [])
            st = self.state.setdefault(mapname, EstState())
            st.grow(max(idl, default=-1) + 1)
            m = self.maps[mapname]
            pinned = None
            if seed:                             # a restarted daemon carries on from the pinned rates
                got = self.maps[RATES_OF[mapname]].get_many_raw([L.U32.pack(i) for i in idl])
                pinned = [L.RATES.unpack(v) if v is not None else None for v in got]
            if _bpfbatch is not None:
                raw, by_id, found = m.values_raw(array("I", idl).tobytes(), len(idl))
                out_ids, out_rates = estimate_c(st, idl, raw, m.slot * m.ncpus, by_id, m.max_entries, found,
                                                m.ncpus, m.slot, dt_ns, restart, pinned)
                kb, vb, size = out_ids.tobytes(), out_rates.tobytes(), L.RATES.size   # (RATES: 5 x u64)
                keys = [kb[o:o + 4] for o in range(0, len(kb), 4)]
                values = [vb[o:o + size] for o in range(0, len(vb), size)]
            else:
                out_ids, rates = estimate_py(st, idl, m.get_many_raw([L.U32.pack(i) for i in idl]), m.slot,
                                             dt_ns, restart, pinned)
                keys = [L.U32.pack(i) for i in out_ids]
                values = [L.RATES.pack(*r) for r in rates]
            if keys:
                self.txn.set_many(RATES_OF[mapname], keys, values)
                n += len(keys)
        return n
