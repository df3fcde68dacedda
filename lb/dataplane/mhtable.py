"""The mh (Maglev) tables of the XDP data plane.

Every mh service has a table of its own: an array map of `mh_size` slots holding real ids
(bpf/lb_sched.h), created here with BPF_F_INNER_MAP so each service can have its own prime
size, and reached by the programs through the pinned array of maps lb_mh_tables (index =
service id).  Services that do not use mh have no table, so they cost no memory.  The table's
content is lb.sched.model.mh_table(), built from each real server's last non-zero weight (IPVS's
dest->last_weight), which lb_mh_last keeps for a restarted daemon.  A rebuild writes only the
slots that changed.
"""
from __future__ import annotations

import ctypes

from . import bpfsys
from . import layout as L
from .maps import BpfMap

BPF_MAP_CREATE = 0
BPF_MAP_GET_FD_BY_ID = 14
BPF_F_INNER_MAP = 1 << 12


class _CreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16)]


class _GetFdAttr(ctypes.Structure):
    _fields_ = [("map_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def create_table(size: int) -> BpfMap:
    """A new table of `size` slots (zero: to be filled before the programs can see it)."""
    fd = bpfsys._sys(BPF_MAP_CREATE, _CreateAttr(map_type=bpfsys.BPF_MAP_TYPE_ARRAY, key_size=4,
                                                 value_size=4, max_entries=size,
                                                 map_flags=BPF_F_INNER_MAP, map_name=b"lb_mh_table"))
    return BpfMap(fd, "lb_mh_table")


def open_table(map_id: int) -> BpfMap:
    return BpfMap(bpfsys._sys(BPF_MAP_GET_FD_BY_ID, _GetFdAttr(map_id=map_id)), "lb_mh_table")


class MhTables:
    """Tables and last weights of the mh services, as written to lb_mh_tables / lb_mh_last."""

    def __init__(self, outer: BpfMap, last: BpfMap, svc_reals: int):
        self.outer = outer
        self.last_map = last
        self.svc_reals = svc_reals
        self.tables: dict[int, tuple[BpfMap, list[int]]] = {}   # service id -> (map, slots)
        self.last: dict[int, int] = {}                           # real id -> last weight
        self.writes = 0
        # during an all-or-nothing apply (begin .. commit / rollback): the undo log of the slot
        # and last-weight writes, the service ids whose lb_mh_tables entry changed, and the
        # tables replaced or dropped, kept open until the apply is through
        self.undo = None
        self._touched: set[int] | None = None
        self._retired: list[BpfMap] = []

    def close(self) -> None:
        for m, _ in self.tables.values():
            m.close()
        self.tables.clear()

    def begin(self, undo) -> tuple[dict, dict]:
        """An apply starts: returns what rollback() needs to put the tables back."""
        self.undo, self._touched, self._retired = undo, set(), []
        return dict(self.tables), dict(self.last)

    def commit(self) -> None:
        live = {id(m) for m, _ in self.tables.values()}
        for m in self._retired:
            if id(m) not in live:
                m.close()
        self.undo, self._touched, self._retired = None, None, []

    def rollback(self, snap: tuple[dict, dict]) -> None:
        """After the undo log was written back: lb_mh_tables points at the tables it did before
        (kept open since), and the tables made in this apply are closed."""
        tables, last = snap
        for sid in sorted(self._touched or ()):
            key = L.U32.pack(sid)
            old = tables.get(sid)
            if old is not None:
                self.outer.set(key, L.U32.pack(old[0].fd))
            else:
                self.outer.delete(key)
        kept = {id(m) for m, _ in tables.values()}
        for m, _ in self.tables.values():
            if id(m) not in kept:
                m.close()
        self.tables, self.last = tables, last
        self.undo, self._touched, self._retired = None, None, []

    def _retire(self, m: BpfMap) -> None:
        if self._touched is None:
            m.close()
        else:
            self._retired.append(m)

    def last_weight(self, rid: int, weight: int) -> int:
        """__ip_vs_update_dest: the last weight is set when a real server is added (even to 0)
        and whenever its weight changes to a non-zero value."""
        if rid not in self.last or weight != 0:
            self.last[rid] = weight
        return self.last[rid]

    def adopt(self, sid: int, size: int, rids: list[int]) -> None:
        """Take over the table and the last weights a previous instance left for service sid
        (whose real servers are `rids`, in list order)."""
        raw = self.last_map.get(L.U32.pack(sid))
        if raw is not None:
            for pos, rid in enumerate(rids[:self.svc_reals]):
                self.last[rid] = L.U32.unpack_from(raw, 4 * pos)[0]
        raw = self.outer.get(L.U32.pack(sid))
        if raw is None:
            return
        m = open_table(L.U32.unpack(raw)[0])
        if m.max_entries != size:
            m.close()
            return
        slots = [L.U32.unpack(m.get(L.U32.pack(i)))[0] for i in range(size)]
        self.tables[sid] = (m, slots)

    def write(self, sid: int, size: int, slots: list[int], rids: list[int]) -> None:
        """Make service sid's table hold `slots` (real ids, LB_NONE when empty): only the slots
        that differ are written; a new size gets a new table, filled before it replaces the
        old one.  `rids` (list order) index the last weights saved in lb_mh_last."""
        last = b"".join(L.U32.pack(self.last.get(r, 0)) for r in rids[:self.svc_reals])
        last = last.ljust(4 * self.svc_reals, b"\0")
        key = L.U32.pack(sid)
        if self.last_map.get(key) != last:
            if self.undo is not None:
                self.undo.remember(self.last_map, key)
            self.last_map.set(key, last)
            self.writes += 1
        cur = self.tables.get(sid)
        if all(s == L.LB_NONE for s in slots):
            self.drop(sid)              # no weight anywhere: the kernel resets the table
            return
        fresh = cur is None or len(cur[1]) != size
        if fresh:
            m, old = create_table(size), [None] * size      # every slot gets written
        else:
            m, old = cur
        undo = None if fresh else self.undo      # a new table is not visible before it is whole
        for i, (a, b) in enumerate(zip(old, slots)):
            if a != b:
                if undo is not None:
                    undo.remember(m, L.U32.pack(i), L.U32.pack(a))
                m.set(L.U32.pack(i), L.U32.pack(b))
                self.writes += 1
        if fresh:
            if self._touched is not None:
                self._touched.add(sid)
            self.outer.set(key, L.U32.pack(m.fd))
            self.writes += 1
            if cur is not None:
                self._retire(cur[0])
        self.tables[sid] = (m, list(slots))

    def drop(self, sid: int, forget: bool = False) -> None:
        """Service sid has no table (any more); with forget, no last weights either."""
        key = L.U32.pack(sid)
        cur = self.tables.pop(sid, None)
        if self._touched is not None:
            self._touched.add(sid)
        if self.outer.delete(key):
            self.writes += 1
        if cur is not None:
            self._retire(cur[0])
        if forget:
            if self.undo is not None:
                self.undo.remember(self.last_map, key)
            if self.last_map.delete(key):
                self.writes += 1

    def slots(self, sid: int) -> list[int] | None:
        cur = self.tables.get(sid)
        return None if cur is None else list(cur[1])

