"""lblc / lblcr expiry for the XDP data plane: the kernel's per-service timer
(ip_vs_lblc_check_expire) over lb_lblc / lb_lblcr, with lb.sched.model.LblcTable's rules, and
the flush of a service's entries when it goes or changes scheduler."""
from __future__ import annotations

import time
from types import SimpleNamespace

from lb.config.model import DEFAULT_LBLC_EXPIRATION
from lb.sched import model as sched_model

from . import layout as L
from .txn import MapTxn


class LblcExpiry:
    def __init__(self, maps: dict, txn: MapTxn):
        self.maps = maps
        self.txn = txn
        # the IPVS sysctls lblc_expiration / lblcr_expiration (s), from the applied table
        self.expiration = {"lblc": DEFAULT_LBLC_EXPIRATION, "lblcr": DEFAULT_LBLC_EXPIRATION}
        # the kernel's per-service timer state (tick counter)
        self.tables: dict[int, sched_model.LblcTable] = {}
        self.last_tick: int | None = None

    def flush(self, sid: int) -> int:
        """ip_vs_lblc_flush / ip_vs_lblcr_flush: drop a service's lblc and lblcr entries."""
        self.tables.pop(sid, None)
        n = 0
        for mapname in ("lb_lblc", "lb_lblcr"):
            m = self.maps[mapname]
            found = [(k, v) for k, v in m.items() if L.LBLC_KEY.unpack(k)[0] == sid]
            if self.txn.undo is not None:
                for k, v in found:
                    self.txn.undo.remember(m, k, v)
            n += m.delete_many([k for k, _ in found]) if found else 0
        self.txn.writes += n
        return n

    def check_expire(self, users: dict[int, str], now_ns: int | None = None, force: bool = False) -> int:
        """The periodic timer over `users` (service id -> its scheduler, lblc or lblcr), once
        per CHECK_EXPIRE_INTERVAL (60 s), or at once with `force`: each service's tick counter
        decides between a full check (entries unused for lblc_expiration / lblcr_expiration
        go) and, when it has too many entries, dropping old ones.  Returns the entries
        deleted."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if not force and self.last_tick is not None and \
                now - self.last_tick < sched_model.CHECK_EXPIRE_INTERVAL * 1_000_000_000:
            return 0
        self.last_tick = now
        if not users:
            return 0
        n = 0
        for sched in L.LBLC_SCHEDULERS:
            m = self.maps[f"lb_{sched}"]
            by_svc: dict[int, dict] = {}
            for k, v in m.items():
                sid = L.LBLC_KEY.unpack(k)[0]
                if users.get(sid) == sched:
                    by_svc.setdefault(sid, {})[k] = SimpleNamespace(lastuse=L.U64.unpack_from(v)[0] / 1e9)
            for sid, s in users.items():
                if s != sched:
                    continue
                table = self.tables.setdefault(sid, sched_model.LblcTable())
                table.entries = by_svc.get(sid, {})
                before = dict(table.entries)
                table.check_expire(now / 1e9, self.expiration[sched])
                for k, e in before.items():
                    if k in table.entries:
                        continue
                    v = m.get(k)     # used again since we read it: it stays
                    if v is not None and L.U64.unpack_from(v)[0] / 1e9 == e.lastuse and m.delete(k):
                        n += 1
        self.txn.writes += n
        return n
