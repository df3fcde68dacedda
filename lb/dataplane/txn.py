"""The XDP data plane's map writes: one apply is one staged transaction, flushed map by map in
dependency order, so the data path of a running director sees a consistent table at every
moment while the writes go out in batches.

---- the write order of apply ----
apply() does not write entry by entry: its writes are collected per map and flushed one map
at a time (BPF_MAP_UPDATE_BATCH, one syscall per map; single writes where lb._bpfbatch is not
built or the kernel refuses the batch op).  The data plane of a running director stays
consistent at every moment because the maps are flushed in dependency order, the order the
per-entry code has always written one service in:

  a real server's counters (a new or reused id starts from zero)  ->  lb_reals
    ->  lb_svc_dests  ->  lb_sched_buckets  ->  [mh table]  ->  lb_svc  ->  lb_sched_state
    ->  lb_svc_stats / lb_svc_rates  ->  lb_services / lb_fwm_services (the service is visible)
  and only then lb_fwm_ranges (the firewall-mark ports that lead to it).

So a service's real servers, its dest list and its scheduler tables are in place before the
entry that makes it visible, and a changed service gets each map's new content in the same
order as before (so a real server leaving a service that stays is retired in lb_reals before
the dest list without it is written, as it always was: BPF makes no connection to a real
server whose lb_reals entry has family 0, lb_conn_new, and passes that SYN to the stack).  Removed services go the other way: their lb_fwm_ranges and then their
lb_services / lb_fwm_services entries go first, at once and unbuffered; their lblc and mh
tables after that (also at once: nothing leads to them any more), and then their parts,
flushed in reverse stage order, before any addition is flushed (a freed service or real id
can be reused by the additions).  An mh table is written by lb/dataplane/mhtable.py straight
away: for a service the data path can already see, whatever is pending is flushed first, so
its slots never name a real server that is not yet in lb_reals -- and, unless lb_svc is to name
a table that is not there yet (a change to mh, or to another size), that includes the service's
own lb_svc: the rest of the apply never runs with a new list under the old lb_svc.  A write to a map outside
these stages flushes what is pending and goes straight through.  Reads in apply go through
MapTxn.get, which sees the pending writes.  MapTxn.writes counts the same logical writes as
the entry-by-entry code did (a key written twice in one apply counts twice although the batch
writes it once, with its last value).

---- all or nothing ----
While an UndoLog is set (ServiceTable.apply sets one), every entry is read just before its
first write or delete (per map, in one C loop, lb._bpfbatch's bb_lookup) and kept; when the
apply fails part-way, UndoLog.restore writes every kept entry back, newest first: the data path
sees the additions go before what they lead to is taken away, as with removals above.  abort()
drops what is still pending instead of flushing it.
"""
from __future__ import annotations

from . import layout as L
from .errors import DataplaneError
from .maps import BpfMap

STAGES = (
    ("lb_real_conns", "lb_real_swept", "lb_real_base", "lb_real_sched_off", "lb_real_overload", "lb_real_stats",
     "lb_real_rates"),
    ("lb_reals",),
    ("lb_svc_dests",),
    ("lb_sched_buckets",),
    ("lb_svc",),
    ("lb_sched_state",),
    ("lb_svc_stats", "lb_svc_rates"),
    ("lb_services", "lb_fwm_services"),
)
STAGE_MAPS = tuple(name for stage in STAGES for name in stage)

# what a new (or reused) real server id starts with, in this order
NEW_REAL = (("lb_real_conns", bytes(L.REAL_CONNS.size)), ("lb_real_swept", bytes(L.REAL_COUNTS.size)),
            ("lb_real_base", bytes(L.REAL_COUNTS.size)), ("lb_real_sched_off", bytes(L.REAL_COUNTS.size)),
            ("lb_real_overload", L.U32.pack(0)),
            ("lb_real_stats", L.STATS.pack(0, 0, 0, 0, 0)), ("lb_real_rates", L.RATES.pack(0, 0, 0, 0, 0)))
assert all(name in STAGE_MAPS for name, _ in NEW_REAL)
# array maps indexed by real server id, and by service id: an id never handed out (at or above
# ServiceTable's next id) has never been written, so its entries are zero (the undo log need
# not read them: a big first apply costs no lookups)
REAL_ARRAYS = (*(name for name, _ in NEW_REAL), "lb_reals")
# what a sweep's recount of ActiveConn/InActConn reads (lb/dataplane/conntable.py): a write to one
# of these while the sweep's scan ran without the lock makes its recount wait for the next sweep
COUNT_MAPS = frozenset(("lb_reals", "lb_real_conns", "lb_real_swept"))
SVC_ARRAYS = ("lb_svc", "lb_sched_state", "lb_svc_dests", "lb_sched_buckets", "lb_svc_stats", "lb_svc_rates")


_UNREAD = object()


class UndoLog:
    """The previous content of every map entry one apply wrote or deleted, to write back when
    the apply fails part-way.  Keyed by map object: mh tables are maps of their own.  Kept in
    chunks (one per map flush), so a big first apply costs one C loop of lookups per map."""

    def __init__(self):
        self.chunks: list[tuple[BpfMap, list[bytes], list]] = []   # (map, keys, old raw or None)
        self._seen: dict[int, set[bytes]] = {}

    def remember(self, m: BpfMap, key: bytes, old=_UNREAD) -> None:
        """Keep key's content before its first change (``old``: the raw value when the caller
        has it, None for absent)."""
        seen = self._seen.setdefault(id(m), set())
        if key in seen:
            return
        seen.add(key)
        self.chunks.append((m, [key], [m.get_raw(key) if old is _UNREAD else old]))

    def remember_many(self, m: BpfMap, keys: list[bytes], zero_from: int | None = None) -> None:
        """remember() of every key; with zero_from (an array of u32 keys), keys from that
        index on are known to be zero and not read."""
        seen = self._seen.setdefault(id(m), set())
        new = [k for k in keys if k not in seen] if seen else keys
        if not new:
            return
        seen.update(new)
        if zero_from is not None:
            fresh = [k for k in new if int.from_bytes(k, "little") >= zero_from]
            if fresh:
                self.chunks.append((m, fresh, [bytes(m.value_size if not m.percpu else m._slot * m.ncpus)]
                                    * len(fresh)))
                new = [k for k in new if int.from_bytes(k, "little") < zero_from]
                if not new:
                    return
        self.chunks.append((m, new, m.get_many_raw(new)))

    def restore(self) -> None:
        """Write every kept entry back, newest first; every entry is tried, then the first
        errors are raised as one DataplaneError."""
        errors = []
        for m, keys, olds in reversed(self.chunks):
            for key, old in zip(reversed(keys), reversed(olds)):
                try:
                    if old is None:
                        m.delete(key)
                    else:
                        m.set_raw(key, old)
                except OSError as e:
                    errors.append(f"{m.name}: {e}")
        self.chunks.clear()
        self._seen.clear()
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise DataplaneError(f"writing back {'; '.join(errors[:3])}{more}")


def _write_error(name: str, e: Exception) -> DataplaneError:
    return DataplaneError(f"writing {name}: {e}")


class MapTxn:
    """Writes to the instance's maps: straight through, or (between begin and end) staged per
    map and flushed in STAGES order.  `writes` counts every logical write."""

    def __init__(self, maps: dict[str, BpfMap], batch: bool):
        self.maps = maps
        self.batch = batch          # False: the single-write path (tests compare both)
        self.writes = 0
        # pending writes per staged map {key: value} (None: writes go out at once), and
        # pending deletes {key: already counted}
        self._pending: dict[str, dict[bytes, bytes]] | None = None
        self._pending_dels: dict[str, dict[bytes, bool]] = {}
        self.undo: UndoLog | None = None     # set for the length of an all-or-nothing apply
        self.fresh_ids = (0, 0)              # (real, service) ids never handed out start here
        self.count_writes = 0                # set / delete calls on COUNT_MAPS (ConnTable.sweep_end)

    def _set_now(self, mapname: str, key: bytes, value: bytes) -> None:
        m = self.maps[mapname]
        if self.undo is not None:
            self.undo.remember(m, key)
        try:
            m.set(key, value)
        except (OSError, ValueError) as e:
            raise _write_error(mapname, e) from e

    def delete_now(self, mapname: str, key: bytes) -> bool:
        """Delete key at once, whatever is pending (not counted: the caller counts)."""
        if mapname in COUNT_MAPS:
            self.count_writes += 1
        m = self.maps[mapname]
        if self.undo is not None:
            self.undo.remember(m, key)
        try:
            return m.delete(key)
        except OSError as e:
            raise _write_error(mapname, e) from e

    def set(self, mapname: str, key: bytes, value: bytes) -> None:
        if mapname in COUNT_MAPS:
            self.count_writes += 1
        p = self._pending
        if p is None:
            self._set_now(mapname, key, value)
        elif mapname in p:
            if self._pending_dels[mapname]:
                self._undelete(mapname, key)
            p[mapname][key] = value
        else:                       # not a staged map: keep the order by flushing first
            self.flush()
            self._set_now(mapname, key, value)
        self.writes += 1

    def set_many(self, mapname: str, keys: list[bytes], values: list[bytes]) -> None:
        """set() of each (key, value), in order; outside an apply's staging, one batch write
        (the rate estimator's thousands of entries every 2 s)."""
        if mapname in COUNT_MAPS:
            self.count_writes += 1
        if self._pending is not None:
            for k, v in zip(keys, values):
                self.set(mapname, k, v)
            return
        m = self.maps[mapname]
        if self.undo is not None:
            self.undo.remember_many(m, list(keys))
        try:
            m.set_many(list(keys), list(values), batch=self.batch)
        except (OSError, ValueError) as e:
            raise _write_error(mapname, e) from e
        self.writes += len(keys)

    def _undelete(self, mapname: str, key: bytes) -> None:
        """A write replaces a pending delete of the same key: count the delete if it would
        have removed an entry (as it did when every write went out at once)."""
        counted = self._pending_dels[mapname].pop(key, None)
        if counted is False and self.maps[mapname].get(key) is not None:
            self.writes += 1

    def delete(self, mapname: str, key: bytes) -> None:
        """Delete key; counted as a write when it removes an entry."""
        if mapname in COUNT_MAPS:
            self.count_writes += 1
        p = self._pending
        if p is None or mapname not in p:
            if p is not None:
                self.flush()
            if self.delete_now(mapname, key):
                self.writes += 1
            return
        dels = self._pending_dels[mapname]
        if p[mapname].pop(key, None) is not None:
            # written earlier in this batch: the entry exists by then, so the delete removes it
            self.writes += 1
            dels[key] = True
        else:
            dels.setdefault(key, False)     # False: count it at the flush if it removes one

    def get(self, mapname: str, key: bytes) -> bytes | None:
        """A map entry as the pending writes leave it."""
        p = self._pending
        if p is not None and mapname in p:
            v = p[mapname].get(key)
            if v is not None:
                return v
            if key in self._pending_dels[mapname]:
                return None
        return self.maps[mapname].get(key)

    def new_real(self, rid: int) -> None:
        """A new or reused real server id: its counters start from zero (NEW_REAL)."""
        self.count_writes += 1
        k = L.U32.pack(rid)
        p = self._pending
        if p is None:
            for mapname, value in NEW_REAL:
                self.set(mapname, k, value)
            return
        dels = self._pending_dels           # the same as set(), without a call per entry
        for mapname, value in NEW_REAL:
            if dels[mapname]:
                self._undelete(mapname, k)
            p[mapname][k] = value
        self.writes += len(NEW_REAL)

    def begin(self) -> None:
        """From here on set / delete of the staged maps collect their writes until end."""
        if self._pending is None:
            self._pending = {name: {} for name in STAGE_MAPS}
            self._pending_dels = {name: {} for name in STAGE_MAPS}

    def end(self, reverse: bool = False) -> None:
        try:
            self.flush(reverse)
        finally:
            self._pending = None

    def abort(self) -> None:
        """A failed apply: what is pending is dropped, not written."""
        self._pending = None
        self._pending_dels = {}

    def flush(self, reverse: bool = False) -> None:
        """Write what is pending, map by map in STAGES order (reverse: removals); in a map,
        the writes (one batch) and then the deletes."""
        p, pd = self._pending, self._pending_dels
        if p is None:
            return
        self._pending = {name: {} for name in STAGE_MAPS}
        self._pending_dels = {name: {} for name in STAGE_MAPS}
        for name in reversed(STAGE_MAPS) if reverse else STAGE_MAPS:
            d, dels = p[name], pd[name]
            if not (d or dels):
                continue
            m = self.maps[name]
            if self.undo is not None:
                zero_from = self.fresh_ids[0] if name in REAL_ARRAYS else \
                    self.fresh_ids[1] if name in SVC_ARRAYS else None
                self.undo.remember_many(m, [*d, *(k for k in dels if k not in d)], zero_from)
            try:
                if d:
                    m.set_many(list(d), list(d.values()), batch=self.batch)
                for k, counted in dels.items():
                    if m.delete(k) and not counted:
                        self.writes += 1
            except (OSError, ValueError) as e:
                raise _write_error(name, e) from e
