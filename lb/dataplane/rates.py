"""IPVS's rate estimator (net/netfilter/ipvs/ip_vs_est.c) for the XDP data plane: the per-CPU
counters of services and real servers become the smoothed per-second rates of `lb list --rate`
(lb_svc_rates / lb_real_rates)."""
from __future__ import annotations

import time

from . import layout as L
from .txn import MapTxn

# fixed-point scale of the estimator's averages per lb_stats field (ip_vs_est.c: conns and
# packets x 2^10, bytes x 2^5)
EST_SHIFT = (10, 10, 10, 5, 5)

RATES_OF = {"lb_svc_stats": "lb_svc_rates", "lb_real_stats": "lb_real_rates"}


def zero_counters(maps, ids) -> None:
    """ipvsadm -Z's writes: each (stats map, id)'s per-CPU counters and its rates set to zero
    (a packet counted meanwhile on another CPU may be lost, as in IPVS)."""
    for mapname, i in ids:
        key = L.U32.pack(i)
        maps[mapname].set(key, L.STATS.pack(0, 0, 0, 0, 0))
        maps[RATES_OF[mapname]].set(key, L.RATES.pack(0, 0, 0, 0, 0))


class RateEstimator:
    def __init__(self, maps: dict, txn: MapTxn):
        self.maps = maps
        self.txn = txn
        # (stats map, id) -> (counters, smoothed rates, shown 0 and settled, the raw per-CPU
        # counters), as the last pass (at last_ns) read them
        self.est: dict[tuple[str, int], tuple[tuple, list[int], bool, bytes]] = {}
        self.last_ns: int | None = None
        self.seeded = False
        self.dropped: dict | None = None    # during an apply: the estimates forget() dropped

    def journal(self) -> dict:
        """An apply starts: from here on forget() keeps what it drops in the dict returned (put
        back into est if the apply fails), so an apply need not copy every estimate."""
        self.dropped = {}
        return self.dropped

    def forget(self, mapname: str, i: int) -> None:
        """A new (or reused) id: its rate starts afresh."""
        old = self.est.pop((mapname, i), None)
        if old is not None and self.dropped is not None:
            self.dropped.setdefault((mapname, i), old)

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

        Each stats map is read whole in a few syscalls (not one per id) and the rates written in
        one batch; an id whose counters have not moved since a pass that showed it 0 (an idle
        server: its rate stays 0) is neither computed nor written.  A pass over 1000 services of
        64 servers took 0.8 s of a core every 2 s, one lookup and one write per id."""
        now_ns = int((time.monotonic() if now is None else now) * 1_000_000_000)
        seed = adopted and not self.seeded
        self.seeded = True
        # every entry of est was sampled at the last pass (each pass visits every id in use, and
        # drops the rest): one interval for all
        last_ns = self.last_ns
        restart = last_ns is None or now_ns <= last_ns
        try:
            n = self._pass(ids, now_ns, last_ns, restart, seed)
        except BaseException:
            # est half updated: the next pass starts afresh (as every id would be new) rather
            # than take two intervals' deltas over one
            self.est.clear()
            self.last_ns = None
            raise
        self.last_ns = now_ns
        return n

    def _pass(self, ids: dict[str, list[int]], now_ns: int, last_ns: int | None, restart: bool, seed: bool) -> int:
        out: dict[str, tuple[list[bytes], list[bytes]]] = {r: ([], []) for r in RATES_OF.values()}
        zero = L.RATES.pack(0, 0, 0, 0, 0)
        inuse = {name: set(idl) for name, idl in ids.items()}
        for gone in [k for k in self.est if k[1] not in inuse.get(k[0], ())]:
            del self.est[gone]
            keys, values = out[RATES_OF[gone[0]]]
            keys.append(L.U32.pack(gone[1]))
            values.append(zero)
        est, size, unpack = self.est, L.STATS.size, L.STATS.unpack
        for mapname, idl in ids.items():
            m = self.maps[mapname]
            keys = [L.U32.pack(i) for i in idl]
            slot = m.slot
            w_keys, w_values = out[RATES_OF[mapname]]
            for i, key, raw in zip(idl, keys, m.get_many_raw(keys)):
                raw = raw or b""
                prev = est.get((mapname, i))
                if prev is not None and prev[2] and not restart and raw == prev[3]:
                    continue                       # idle, shown 0: stays so
                tot = [0] * 5
                for c in range(0, len(raw), slot):
                    for j, x in enumerate(unpack(raw[c:c + size])):
                        tot[j] += x
                cur = tuple(tot)
                if prev is None or restart or any(c < p for c, p in zip(cur, prev[0])):
                    avg = [0] * 5
                    if seed and prev is None:      # a restarted daemon carries on from the pinned rates
                        pinned = self.maps[RATES_OF[mapname]].get(key)
                        if pinned is not None:
                            avg = [r << s for r, s in zip(L.RATES.unpack(pinned), EST_SHIFT)]
                    est[(mapname, i)] = (cur, avg, False, raw)
                    continue
                last, avg = prev[0], prev[1]
                dt = now_ns - last_ns
                for j in range(5):
                    rate = ((cur[j] - last[j]) << EST_SHIFT[j]) * 1_000_000_000 // dt
                    avg[j] += (rate - avg[j]) >> 2
                shown = [(a + (1 << (s - 1)) - 1) >> s if a > 0 else 0 for a, s in zip(avg, EST_SHIFT)]
                est[(mapname, i)] = (cur, avg, not any(avg), raw)   # all 0: so is what is shown
                w_keys.append(key)
                w_values.append(L.RATES.pack(*shown))
        n = 0
        for rates, (keys, values) in out.items():
            if keys:
                self.txn.set_many(rates, keys, values)
                n += len(keys)
        return n
