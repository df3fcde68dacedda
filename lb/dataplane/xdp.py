"""The XDP data plane: compiles bpf/ with bcc, adopts or creates the pinned maps, attaches the
programs, and applies TableSpecs as deltas.  Nothing else writes these maps.

Real server list order and scheduler state follow IPVS: each added real server goes to the
front of its service's list, and the rr cursor / wrr mark change on every add, delete and
weight update exactly as ip_vs_rr.c / ip_vs_wrr.c change them (lb.sched.model holds the rules).
"""
from __future__ import annotations

import ctypes
import ipaddress
import dataclasses
import logging
import math
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from lb.sched import model as sched_model

from . import layout as L
from .maps import PIN_ROOT, BpfMap, have_batch, pin_dir
from .mhtable import MhTables
from .nexthop import NextHopError, resolve
from .reader import read_counters
from .spec import RealSpec, ServiceSpec, TableSpec

log = logging.getLogger("lb.dataplane")

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

PROGRAMS = ("lb_xdp_public", "lb_xdp_private", "lb_xdp_new_conn", "lb_xdp_persist",
            *(f"lb_sched_{n}" for n in L.SCHEDULERS))

# IPVS TCP timeouts (s) by state; tcp/tcpfin/udp from the config replace ESTABLISHED/FIN_WAIT/UDP
DEFAULT_TIMEOUTS = [2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120, 300]

# IPVS tcp_states: [table][event][state] for tables INPUT, OUTPUT, INPUT-ONLY and events
# syn, fin, ack, rst (net/netfilter/ipvs/ip_vs_proto_tcp.c)
_S = {"NO": 0, "ES": 1, "SS": 2, "SR": 3, "FW": 4, "TW": 5, "CL": 6, "CW": 7, "LA": 8, "LI": 9, "SA": 10}
_FSM_TEXT = """
SR ES ES SR SR SR SR SR SR SR SR
CL CW SS TW TW TW CL CW LA LI TW
CL ES SS ES FW TW CL CW CL LI ES
CL CL CL SR CL CL CL CL LA LI SR
SS ES SS SR SS SS SS SS SS LI SR
TW FW SS TW FW TW CL TW LA LI TW
ES ES SS ES FW TW CL CW LA ES ES
CL CL SS CL CL TW CL CL CL CL CL
SR ES ES SR SR SR SR SR SR SR SR
CL FW SS TW FW TW CL CW LA LI TW
CL ES SS ES FW TW CL CW CL LI ES
CL CL CL SR CL CL CL CL LA LI CL
"""
TCP_FSM = [_S[t] for t in _FSM_TEXT.split()]   # index (table * 4 + event) * 11 + state


class DataplaneError(Exception):
    pass


# ---- the write order of apply ----
# apply() does not write entry by entry: its writes are collected per map and flushed one map
# at a time (BPF_MAP_UPDATE_BATCH, one syscall per map; single writes where lb._bpfbatch is not
# built or the kernel refuses the batch op).  The data plane of a running director stays
# consistent at every moment because the maps are flushed in dependency order, the order the
# per-entry code has always written one service in:
#
#   a real server's counters (a new or reused id starts from zero)  ->  lb_reals
#     ->  lb_svc_dests  ->  lb_sched_buckets  ->  [mh table]  ->  lb_svc  ->  lb_sched_state
#     ->  lb_svc_stats / lb_svc_rates  ->  lb_services / lb_fwm_services (the service is visible)
#   and only then lb_fwm_ranges (the firewall-mark ports that lead to it).
#
# So a service's real servers, its dest list and its scheduler tables are in place before the
# entry that makes it visible, and a changed service gets each map's new content in the same
# order as before (so a real server leaving a service that stays is retired in lb_reals before
# the dest list without it is written, as it always was: BPF skips a dest whose lb_reals entry
# has family 0).  Removed services go the other way: their lb_fwm_ranges and then their
# lb_services / lb_fwm_services entries go first, at once and unbuffered; their lblc and mh
# tables after that (also at once: nothing leads to them any more), and then their parts,
# flushed in reverse stage order, before any addition is flushed (a freed service or real id
# can be reused by the additions).  An mh table is written by lb/dataplane/mhtable.py straight
# away: for a service the data path can already see, whatever is pending is flushed first, so
# its slots never name a real server that is not yet in lb_reals.  A write to a map outside
# these stages flushes what is pending and goes straight through.  Reads in apply go through
# _get, which sees the pending writes.  self.writes counts the same logical writes as the
# entry-by-entry code did (a key written twice in one apply counts twice although the batch
# writes it once, with its last value).
_STAGES = (
    ("lb_real_conns", "lb_real_swept", "lb_real_base", "lb_real_overload", "lb_real_stats", "lb_real_rates"),
    ("lb_reals",),
    ("lb_svc_dests",),
    ("lb_sched_buckets",),
    ("lb_svc",),
    ("lb_sched_state",),
    ("lb_svc_stats", "lb_svc_rates"),
    ("lb_services", "lb_fwm_services"),
)
_STAGE_MAPS = tuple(name for stage in _STAGES for name in stage)


@dataclass(frozen=True)
class Sizes:
    services: int = 256
    reals: int = 4096
    svc_reals: int = 64
    connections: int = 65536

    @classmethod
    def from_tables(cls, t) -> "Sizes":
        return cls(t.services, t.real_servers, t.reals_per_service, t.connections)

    @property
    def persist(self) -> int:
        """persistence templates: a quarter of the connection table (allocated as used)"""
        return max(1024, self.connections // 4)

    @property
    def lblc(self) -> int:
        """lblc / lblcr entries, all services together: as many as persistence templates"""
        return self.persist

    def cflags(self, pin: str) -> list[str]:
        return [f"-DLB_MAX_SERVICES={self.services}", f"-DLB_MAX_REALS={self.reals}",
                f"-DLB_PERSIST_TABLE_SIZE={self.persist}",
                f"-DLB_MAX_SVC_REALS={self.svc_reals}", f"-DLB_CONN_TABLE_SIZE={self.connections}",
                f"-DLB_LBLC_TABLE_SIZE={self.lblc}", f"-DLB_LBLCR_SET_SIZE={L.LBLCR_SET_SIZE}",
                f'-DLB_PIN_DIR="{pin}"']

    def expected(self) -> dict[str, tuple[int, int]]:
        """map name -> (max_entries, value_size) as the programs will create them"""
        return {
            "lb_services": (self.services, 4),
            "lb_svc": (self.services, L.SVC.size),
            "lb_sched_state": (self.services, L.SCHED_STATE.size),
            "lb_svc_dests": (self.services, L.DEST.size * self.svc_reals),
            "lb_sched_buckets": (self.services, L.SCHED_BUCKETS.size),
            "lb_mh_tables": (self.services, 4),
            "lb_mh_last": (self.services, 4 * self.svc_reals),
            "lb_reals": (self.reals, L.REAL.size),
            "lb_real_conns": (self.reals, L.REAL_CONNS.size),
            "lb_real_swept": (self.reals, L.REAL_CONNS.size),
            "lb_real_base": (self.reals, L.REAL_CONNS.size),
            "lb_real_overload": (self.reals, 4),
            "lb_conns": (self.connections, L.CONN.size),
            "lb_persist": (self.persist, L.PERSIST.size),
            "lb_svc_stats": (self.services, L.STATS.size),
            "lb_fwm_ranges": (self.services, L.PORT_RANGES.size),
            "lb_fwm_services": (self.services, 4),
            "lb_globals": (L.N_GLOBALS, 4),
            "lb_real_stats": (self.reals, L.STATS.size),
            "lb_svc_rates": (self.services, L.RATES.size),
            "lb_real_rates": (self.reals, L.RATES.size),
            "lb_lblc": (self.lblc, L.LBLC.size),
            "lb_lblcr": (self.lblc, L.LBLCR.size),
        }


# what a new (or reused) real server id starts with, in this order
_NEW_REAL = (("lb_real_conns", L.REAL_CONNS.pack(0, 0, 0, 0)), ("lb_real_swept", L.REAL_CONNS.pack(0, 0, 0, 0)),
             ("lb_real_base", L.REAL_CONNS.pack(0, 0, 0, 0)), ("lb_real_overload", L.U32.pack(0)),
             ("lb_real_stats", L.STATS.pack(0, 0, 0, 0, 0)), ("lb_real_rates", L.RATES.pack(0, 0, 0, 0, 0)))
assert all(name in _STAGE_MAPS for name, _ in _NEW_REAL)


def attach_xdp(ifname: str, fn, mode: str = "native") -> tuple[str, int]:
    """Attach a loaded XDP function to ifname: native (driver) mode, falling back to generic,
    or generic only.  Returns (the mode used, its flags); DataplaneError when neither works."""
    from bcc import BPF

    tries = [("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE)]
    if mode == "generic":
        tries = tries[1:]
    last = None
    for name, flags in tries:
        try:
            BPF.attach_xdp(ifname.encode(), fn, flags)
            return name, flags
        except Exception as e:  # bcc raises a plain Exception
            last = e
            log.warning("cannot attach XDP to %s in %s mode: %s", ifname, name, e)
    raise DataplaneError(f"cannot attach XDP to {ifname}: {last}")


def bpf_source(path: Path = BPF_DIR / "lb.c") -> str:
    """lb.c with its local headers inlined: bcc rewrites map calls (map.lookup()) only in the
    main file, so the headers must become part of it."""
    seen: set[Path] = set()

    def expand(p: Path) -> str:
        out = []
        for line in p.read_text().splitlines(keepends=True):
            m = re.match(r'\s*#include "([^"]+)"', line)
            if m:
                inc = (p.parent / m.group(1)).resolve()
                if inc not in seen:
                    seen.add(inc)
                    out.append(f"/* ---- {m.group(1)} ---- */\n")
                    out.append(expand(inc))
                continue
            out.append(line)
        return "".join(out)

    return expand(path)


@dataclass
class _SvcState:
    id: int
    key: L.SvcKey
    sched: str
    dests: list[tuple[tuple, int]] = field(default_factory=list)   # [((addr, port), real id)] list order
    name: str = ""


class XdpDataplane:
    def __init__(self, instance: str, sizes: Sizes, pin_root: str = PIN_ROOT, resolver=resolve):
        self.instance = instance
        self.resolver = resolver                # addr, need_onlink=bool -> NextHop
        self.sizes = sizes
        self.pin = pin_dir(instance, pin_root)
        self.bpf = None
        self.fns: dict[str, object] = {}
        self.maps: dict[str, BpfMap] = {}
        self.attached: dict[str, int] = {}      # ifname -> xdp flags
        self.services: dict[L.SvcKey, _SvcState] = {}
        self.reals: dict[int, L.Real] = {}      # every id ever handed out and not reusable yet
        self.free_svc_ids: list[int] = []
        self.next_svc_id = 0
        self.next_real_id = 0
        self.draining: set[tuple] = set()   # (service key, (addr, port)) removed but still active
        self.last_table: TableSpec | None = None
        self._nh_cache: dict = {}
        self.ranges: dict[bytes, bytes] = {}    # lb_fwm_ranges as written
        # lblc / lblcr expiry: the kernel's per-service timer state (tick counter) and settings
        self._lblc_tables: dict[int, sched_model.LblcTable] = {}
        self._lblc_last_tick: int | None = None
        self.lblc_expiration = {"lblc": 86400, "lblcr": 86400}
        self.adopted = False
        self.created = False     # this instance made the pin directory (a failed start removes it)
        self.writes = 0
        # apply's pending writes, per staged map {key: value} (None: writes go out at once),
        # and pending deletes {key: already counted}
        self._pending: dict[str, dict[bytes, bytes]] | None = None
        self._pending_dels: dict[str, dict[bytes, bool]] = {}
        self.batch_writes = have_batch()        # False: the single-write path (tests compare both)
        # rate estimator (estimate()): (map, id) -> (time_ns, counters, smoothed rates)
        self._est: dict[tuple[str, int], tuple[int, tuple, list[int]]] = {}
        self._est_seeded = False
        self.mh: MhTables | None = None         # mh services' Maglev tables (lb/dataplane/mhtable.py)
        # quiesce_server: real id -> keys of the connections its lb_real_base leaves out
        self.sched_base: dict[int, set[bytes]] = {}

    # ---- loading ----
    def check_pins(self) -> bool:
        """True when compatible pinned maps exist (a running or crashed instance to adopt)."""
        if not os.path.isdir(self.pin):
            return False
        from . import bpfsys
        found = False
        for name, (entries, vsize) in self.sizes.expected().items():
            path = os.path.join(self.pin, name)
            if not os.path.exists(path):
                continue
            found = True
            fd = bpfsys.obj_get(path)
            try:
                info = bpfsys.map_info(fd)
            finally:
                os.close(fd)
            if info.max_entries != entries or info.value_size != vsize:
                raise DataplaneError(
                    f"pinned map {path} holds {info.max_entries} entries of {info.value_size} bytes but "
                    f"the config (and this version of lb) needs {entries} of {vsize}: table sizes and "
                    f"layouts cannot change while an instance "
                    f"keeps its connections. Stop it (lb stop) or remove {self.pin} to start afresh.")
        return found

    def load(self) -> None:
        from bcc import BPF  # imported here: `lb list` and config checks must not need bcc

        self.adopted = self.check_pins()
        self.created = not os.path.isdir(self.pin)
        os.makedirs(self.pin, exist_ok=True)
        t0 = time.monotonic()
        try:
            self.bpf = BPF(text=bpf_source().encode(),
                           cflags=self.sizes.cflags(self.pin) + ["-Wno-macro-redefined"])
            for name in PROGRAMS:
                self.fns[name] = self.bpf.load_func(name.encode(), BPF.XDP)
        except Exception as e:
            raise DataplaneError(f"cannot build or load the XDP programs: {e}") from e
        log.info("compiled and loaded %d XDP programs in %.2f s (%s maps in %s)", len(PROGRAMS),
                 time.monotonic() - t0, "adopted" if self.adopted else "new", self.pin)
        progs = self.bpf[b"lb_progs"]
        progs[ctypes.c_int(L.PROG_NEW_CONN)] = ctypes.c_int(self.fns["lb_xdp_new_conn"].fd)
        progs[ctypes.c_int(L.PROG_PERSIST)] = ctypes.c_int(self.fns["lb_xdp_persist"].fd)
        for sname, idx in L.SCHEDULERS.items():
            progs[ctypes.c_int(L.PROG_SCHED_BASE + idx)] = ctypes.c_int(self.fns[f"lb_sched_{sname}"].fd)
        for name in self.sizes.expected().keys() | {"lb_tcp_fsm", "lb_timeouts", "lb_counters"}:
            self.maps[name] = BpfMap.open_pinned(os.path.join(self.pin, name))
        for i, v in enumerate(TCP_FSM):
            self.maps["lb_tcp_fsm"].set(L.U32.pack(i), L.U32.pack(v))
        self.mh = MhTables(self.maps["lb_mh_tables"], self.maps["lb_mh_last"], self.sizes.svc_reals)
        if self.adopted:
            self._adopt()

    def _adopt(self) -> None:
        """Rebuild the in-memory view from the pinned maps of a previous instance."""
        m = self.maps
        used_svc = set()
        for k, v in m["lb_services"].items(batch=False):
            key = L.SvcKey.unpack(k)
            sid = L.U32.unpack(v)[0]
            svc = L.Svc.unpack(m["lb_svc"].get(L.U32.pack(sid)))
            raw = m["lb_svc_dests"].get(L.U32.pack(sid))
            st = _SvcState(sid, key, L.SCHEDULER_NAMES.get(svc.sched, "wlc"))
            for rid, _w, _f in L.unpack_dests(raw, svc.nreals):
                real = L.Real.unpack(m["lb_reals"].get(L.U32.pack(rid)))
                st.dests.append(((real.addr, real.port), rid))
            self.services[key] = st
            used_svc.add(sid)
            self._adopt_mh(st, svc)
        for k, v in m["lb_fwm_services"].items(batch=False):
            fwmark, sid = L.U32.unpack(k)[0], L.U32.unpack(v)[0]
            svc = L.Svc.unpack(m["lb_svc"].get(L.U32.pack(sid)))
            key = L.FwmKey(fwmark, addr=svc.addr)   # the family's zero address
            st = _SvcState(sid, key, L.SCHEDULER_NAMES.get(svc.sched, "wlc"))
            for rid, _w, _f in L.unpack_dests(m["lb_svc_dests"].get(L.U32.pack(sid)), svc.nreals):
                real = L.Real.unpack(m["lb_reals"].get(L.U32.pack(rid)))
                st.dests.append(((real.addr, real.port), rid))
            self.services[key] = st
            used_svc.add(sid)
            self._adopt_mh(st, svc)
        for k, v in m["lb_fwm_ranges"].items(batch=False):
            self.ranges[k] = v
        self.next_svc_id = max(used_svc) + 1 if used_svc else 0
        self.free_svc_ids = [i for i in range(self.next_svc_id) if i not in used_svc]
        for rid in range(self.sizes.reals):
            raw = m["lb_reals"].get(L.U32.pack(rid))
            real = L.Real.unpack(raw)
            if raw != b"\0" * len(raw):
                self.reals[rid] = real
                self.next_real_id = rid + 1
        # which connections a quiesce_server baseline left out died with the old daemon: the
        # schedulers go back to the true counts
        zero = L.REAL_CONNS.pack(0, 0, 0, 0)
        for rid in self.reals:
            if m["lb_real_base"].get(L.U32.pack(rid)) not in (None, zero):
                m["lb_real_base"].set(L.U32.pack(rid), zero)
        log.info("adopted %d services and %d real servers from %s", len(self.services),
                 sum(len(s.dests) for s in self.services.values()), self.pin)

    # ---- attach ----
    def attach(self, ifname: str, side: str = "public", mode: str = "native") -> str:
        fn = self.fns["lb_xdp_public" if side == "public" else "lb_xdp_private"]
        name, flags = attach_xdp(ifname, fn, mode)
        self.attached[ifname] = flags
        log.info("attached %s XDP program to %s (%s mode)", side, ifname, name)
        return name

    def detach_all(self) -> None:
        from bcc import BPF

        for ifname, flags in list(self.attached.items()):
            try:
                BPF.remove_xdp(ifname.encode(), flags)
                log.info("detached XDP from %s", ifname)
            except Exception as e:
                log.warning("detaching XDP from %s: %s", ifname, e)
            del self.attached[ifname]

    def counters(self) -> dict[str, int]:
        """The data path's event counters (lb_counters: packets passed, dropped or answered for a
        reason an operator may want to see), summed over CPUs."""
        return read_counters(self.maps)

    def unpin(self) -> None:
        if self.mh is not None:
            self.mh.close()
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        shutil.rmtree(self.pin, ignore_errors=True)
        log.info("removed pinned maps %s", self.pin)

    def close(self) -> None:
        if self.mh is not None:
            self.mh.close()
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    # ---- writes ----
    def _set(self, mapname: str, key: bytes, value: bytes) -> None:
        p = self._pending
        if p is None:
            self.maps[mapname].set(key, value)
        elif mapname in p:
            if self._pending_dels[mapname]:
                self._undelete(mapname, key)
            p[mapname][key] = value
        else:                       # not a staged map: keep the order by flushing first
            self._flush()
            self.maps[mapname].set(key, value)
        self.writes += 1

    def _undelete(self, mapname: str, key: bytes) -> None:
        """A write replaces a pending delete of the same key: count the delete if it would
        have removed an entry (as it did when every write went out at once)."""
        counted = self._pending_dels[mapname].pop(key, None)
        if counted is False and self.maps[mapname].get(key) is not None:
            self.writes += 1

    def _delete(self, mapname: str, key: bytes) -> None:
        """Delete key; counted as a write when it removes an entry."""
        p = self._pending
        if p is None or mapname not in p:
            if p is not None:
                self._flush()
            if self.maps[mapname].delete(key):
                self.writes += 1
            return
        dels = self._pending_dels[mapname]
        if p[mapname].pop(key, None) is not None:
            # written earlier in this batch: the entry exists by then, so the delete removes it
            self.writes += 1
            dels[key] = True
        else:
            dels.setdefault(key, False)     # False: count it at the flush if it removes one

    def _get(self, mapname: str, key: bytes) -> bytes | None:
        """A map entry as apply's pending writes leave it."""
        p = self._pending
        if p is not None and mapname in p:
            v = p[mapname].get(key)
            if v is not None:
                return v
            if key in self._pending_dels[mapname]:
                return None
        return self.maps[mapname].get(key)

    def _begin(self) -> None:
        """From here on _set / _delete of the staged maps collect their writes until _end."""
        if self._pending is None:
            self._pending = {name: {} for name in _STAGE_MAPS}
            self._pending_dels = {name: {} for name in _STAGE_MAPS}

    def _end(self, reverse: bool = False) -> None:
        try:
            self._flush(reverse)
        finally:
            self._pending = None

    def _flush(self, reverse: bool = False) -> None:
        """Write what is pending, map by map in _STAGES order (reverse: removals); in a map,
        the writes (one batch) and then the deletes."""
        p, pd = self._pending, self._pending_dels
        if p is None:
            return
        self._pending = {name: {} for name in _STAGE_MAPS}
        self._pending_dels = {name: {} for name in _STAGE_MAPS}
        for name in reversed(_STAGE_MAPS) if reverse else _STAGE_MAPS:
            d, dels = p[name], pd[name]
            if not (d or dels):
                continue
            m = self.maps[name]
            if d:
                m.set_many(list(d), list(d.values()), batch=self.batch_writes)
            for k, counted in dels.items():
                if m.delete(k) and not counted:
                    self.writes += 1

    def _alloc_svc(self) -> int:
        if self.free_svc_ids:
            return self.free_svc_ids.pop(0)
        if self.next_svc_id >= self.sizes.services:
            raise DataplaneError(f"no free service slot (tables.services = {self.sizes.services})")
        self.next_svc_id += 1
        return self.next_svc_id - 1

    def _real_conns(self, rid: int) -> tuple[int, int]:
        k = L.U32.pack(rid)
        return L.real_counts(self._get("lb_real_conns", k), self._get("lb_real_swept", k))

    def _alloc_real(self) -> int:
        if self.next_real_id < self.sizes.reals:
            self.next_real_id += 1
            rid = self.next_real_id - 1
        else:
            # reuse a removed real server's id once no connection points at it any more
            in_use = {r for s in self.services.values() for _, r in s.dests}
            for rid, real in self.reals.items():
                if rid not in in_use and real.family == 0 and self._real_conns(rid) == (0, 0, 0):
                    break
            else:
                raise DataplaneError(f"no free real server slot (tables.real_servers = {self.sizes.reals})")
        k = L.U32.pack(rid)
        self.sched_base.pop(rid, None)
        self._est.pop(("lb_real_stats", rid), None)
        p = self._pending
        if p is None:
            for mapname, value in _NEW_REAL:      # its counters start from zero
                self._set(mapname, k, value)
        else:                                     # the same, without a call per entry
            dels = self._pending_dels
            for mapname, value in _NEW_REAL:
                if dels[mapname]:
                    self._undelete(mapname, k)
                p[mapname][k] = value
            self.writes += len(_NEW_REAL)
        return rid

    def _resolve(self, addr, onlink: bool):
        """Next hop of addr, once per address per apply/refresh (services share servers)."""
        key = (addr, onlink)
        hit = self._nh_cache.get(key)
        if hit is None:
            try:
                hit = self.resolver(addr, need_onlink=onlink)
            except NextHopError as e:
                hit = e
            self._nh_cache[key] = hit
        if isinstance(hit, NextHopError):
            raise hit
        return hit

    def _nexthop_real(self, spec: RealSpec, svc_id: int, old: L.Real | None, draining: bool = False,
                      resolve: bool = True) -> L.Real:
        """The lb_reals entry for spec.  resolve=False keeps old's next hop (applies that only
        change weights do no netlink work; refresh_nexthops re-resolves on its own schedule)."""
        fwd = L.FORWARDS[spec.forward]
        real = L.Real(spec.address, spec.port, fwd, spec.weight, svc=svc_id, family=L.family_of(spec.address),
                      u_threshold=spec.u_threshold, l_threshold=spec.l_threshold)
        if old is not None:
            real.pos = old.pos
        if draining:
            real.flags |= L.REAL_F_DRAINING
        if not resolve and old is not None and old.family and old.fwd == fwd:
            real.ifindex, real.mac, real.src_mac, real.tun_src = old.ifindex, old.mac, old.src_mac, old.tun_src
            real.mtu = old.mtu
            real.flags |= old.flags & L.REAL_F_NO_NEXTHOP
            return real
        try:
            nh = self._resolve(spec.address, fwd == L.FWD_DR)
            real.ifindex, real.mac, real.src_mac = nh.ifindex, nh.mac, nh.src_mac
            if fwd == L.FWD_TUNNEL:
                if nh.src_addr is None:
                    raise NextHopError(f"real server {spec.address}: no source address of ours toward it "
                                       f"(on {nh.ifname}) for the tunnel's outer header")
                real.tun_src = L.pack_addr(nh.src_addr)
                real.mtu = nh.mtu
        except NextHopError as e:
            if old is not None and old.family and not old.flags & L.REAL_F_NO_NEXTHOP:
                real.ifindex, real.mac, real.src_mac, real.tun_src = old.ifindex, old.mac, old.src_mac, old.tun_src
                real.mtu = old.mtu
            else:
                log.warning("%s; it gets no new connections until it answers", e)
                real.flags |= L.REAL_F_NO_NEXTHOP
        return real

    def apply(self, table: TableSpec) -> int:
        """Make the maps forward `table`; returns the number of map writes it took."""
        before = self.writes
        self.last_table = table
        self._nh_cache = {}
        want = {_key_of(s): s for s in table.services}
        # a removed firewall-mark service stops matching before its slot is freed
        self._sync_ranges({k: s for k, s in want.items() if k in self.services})
        # removals: each service's lb_services / lb_fwm_services entry goes at once, its parts
        # (flushed in reverse stage order) after; see _STAGES
        self._begin()
        try:
            for key in [k for k in self.services if k not in want]:
                self._remove_service(key)
        finally:
            self._end(reverse=True)
        self.draining = {d for d in self.draining if d[0] in want}
        # additions and changes, flushed map by map in _STAGES order: every service is whole
        # before its lb_services / lb_fwm_services entry is written
        self._begin()
        try:
            for key, spec in want.items():
                self._apply_service(key, self._with_drains(key, spec))
        finally:
            self._end()
        self._sync_ranges(want)
        self._apply_timeouts(table.timeouts)
        g = L.U32.pack(L.G_EXPIRE_NODEST)
        if self.maps["lb_globals"].get(g) != L.U32.pack(int(table.expire_nodest_conn)):
            self._set("lb_globals", g, L.U32.pack(int(table.expire_nodest_conn)))
        self.lblc_expiration = {"lblc": table.lblc_expiration, "lblcr": table.lblcr_expiration}
        g = L.U32.pack(L.G_LBLCR_EXPIRATION)
        if self.maps["lb_globals"].get(g) != L.U32.pack(table.lblcr_expiration):
            self._set("lb_globals", g, L.U32.pack(table.lblcr_expiration))
        n = self.writes - before
        log.info("applied %d services: %d map writes", len(want), n)
        return n

    def _with_drains(self, key: L.SvcKey, spec: ServiceSpec) -> ServiceSpec:
        """A real server leaving a service while connections still point at it stays, at weight
        0, until the last one has ended or expired: removal drains instead of cutting (IPVS
        drops such packets at once).  Half-open and closing connections count too, so a client
        between SYN and ACK is not cut off."""
        st = self.services.get(key)
        if st is None:
            return spec
        wanted = {r.key for r in spec.reals}
        dead = set(spec.dead)
        extra = []
        for rkey, rid in st.dests:
            if rkey in wanted or rkey in dead:      # kept, or dead: no draining
                if self.draining:
                    self.draining.discard((key, rkey))
                continue
            active, inactive, _ = self._real_conns(rid)
            if active + inactive == 0:
                self.draining.discard((key, rkey))
                continue
            if (key, rkey) not in self.draining:
                log.info("draining real server %s:%d of %s: weight 0 until its %d connections end",
                         rkey[0], rkey[1], _svc_name(key), active + inactive)
                self.draining.add((key, rkey))
            real = self.reals[rid]
            extra.append(RealSpec(real.addr, real.port, 0, L.FORWARD_OF[real.fwd],
                                  real.u_threshold, real.l_threshold))
        if not extra:
            return spec
        return dataclasses.replace(spec, reals=spec.reals + tuple(extra))

    def finish_drains(self) -> int:
        """Remove draining real servers whose connections have all ended or expired."""
        done = 0
        for key, rkey in self.draining:
            st = self.services.get(key)
            rid = next((r for k, r in st.dests if k == rkey), None) if st else None
            if rid is None or sum(self._real_conns(rid)[:2]) == 0:
                done += 1
        if done and self.last_table is not None:
            self.apply(self.last_table)
        return done

    def _apply_timeouts(self, timeouts) -> None:
        t = list(DEFAULT_TIMEOUTS)
        t[L.TCP_S["ESTABLISHED"]], t[L.TCP_S["FIN_WAIT"]], t[L.UDP_S_NORMAL] = timeouts
        for i, v in enumerate(t):
            k = L.U32.pack(i)
            if self.maps["lb_timeouts"].get(k) != L.U32.pack(v):
                self._set("lb_timeouts", k, L.U32.pack(v))

    def _sync_ranges(self, want: dict) -> None:
        """lb_fwm_ranges from the firewall-mark services in `want` that have a slot: one value
        per (VIP, protocol) with its ranges in port order; lb_globals[G_FWM_KEYS] says whether
        the data path needs to look at all."""
        by_vip: dict[bytes, list[tuple[int, int, int]]] = {}
        for key, spec in want.items():
            st = self.services.get(key)
            if not isinstance(key, L.FwmKey) or st is None:
                continue
            for g in spec.groups:
                vk = L.SvcKey(L.PROTO_NUMBERS[g.protocol], g.address, 0).pack()
                by_vip.setdefault(vk, []).append((g.low, g.high, st.id))
        new = {k: L.pack_ranges(sorted(v)) for k, v in by_vip.items()}
        m = self.maps["lb_fwm_ranges"]
        g = L.U32.pack(L.G_FWM_KEYS)
        if len(new) > len(self.ranges):       # the count goes up before entries appear
            self._set("lb_globals", g, L.U32.pack(len(new)))
        for k, v in new.items():
            if self.ranges.get(k) != v:
                self._set("lb_fwm_ranges", k, v)
        for k in [k for k in self.ranges if k not in new]:
            m.delete(k)
            self.writes += 1
        if self.maps["lb_globals"].get(g) != L.U32.pack(len(new)):
            self._set("lb_globals", g, L.U32.pack(len(new)))
        self.ranges = new

    def _remove_service(self, key) -> None:
        st = self.services.pop(key)
        if isinstance(key, L.FwmKey):
            self.maps["lb_fwm_services"].delete(L.U32.pack(key.fwmark))
        else:
            self.maps["lb_services"].delete(key.pack())
        self.writes += 1
        for _, rid in st.dests:
            self._retire_real(rid)
        self._set("lb_svc", L.U32.pack(st.id), L.Svc(key.addr, key.port, key.proto, 0).pack())
        self._delete("lb_sched_buckets", L.U32.pack(st.id))
        self._lblc_flush(st.id)
        self._mh_drop(st.id)
        self.free_svc_ids.append(st.id)
        log.info("removed virtual service %s", _svc_name(key))

    def _retire_real(self, rid: int) -> None:
        # family 0: packets of its remaining connections drop (IPVS expire_nodest_conn = 0)
        real = self.reals[rid]
        real.family = 0
        real.weight = 0
        self.mh.last.pop(rid, None)         # a reused id starts with a new last weight
        self._set("lb_reals", L.U32.pack(rid), real.pack())

    def _apply_service(self, key: L.SvcKey, spec: ServiceSpec) -> None:
        new = key not in self.services
        sched_changed = False
        name = _SvcName(key)        # formatted only when a line is logged
        if new:
            st = _SvcState(self._alloc_svc(), key, spec.scheduler, name=spec.name)
            self.services[key] = st
            cursor, mark = None, sched_model.wrr_init([])
            log.info("adding virtual service %s %s", name, spec.scheduler)
        else:
            st = self.services[key]
            cl, cw = L.SCHED_STATE.unpack(self._get("lb_sched_state", L.U32.pack(st.id)))
            cursor = None if cl == L.POS_HEAD or cl >= len(st.dests) else cl
            mark = sched_model.WrrMark(cursor, cw, 0, 1)
            if st.sched != spec.scheduler:
                # a new scheduler starts from its own initial state, as ipvsadm -E does
                cursor, mark = None, sched_model.wrr_init(self._weights(st))
                st.sched = spec.scheduler
                sched_changed = True
                self._lblc_flush(st.id)     # ip_vs_lblc_done_svc: the old table goes
        wanted = {r.key: r for r in spec.reals} if st.dests else {}    # (a new list needs none)
        changed = sched_changed

        def dest_changed():
            nonlocal mark
            mark = sched_model.wrr_dest_changed(mark, self._weights(st))

        # 1. removals (the rr cursor steps back to the previous element); kept[i]: the spec of
        # the real server left at position i
        kept = []
        for pos in reversed(range(len(st.dests))):
            rkey, rid = st.dests[pos]
            spec_r = wanted.get(rkey)
            if spec_r is not None:
                kept.append(spec_r)
            else:
                del st.dests[pos]
                cursor = sched_model.rr_cursor_after_delete(cursor, pos)
                self._retire_real(rid)
                dest_changed()
                changed = True
                log.info("removed real server %s:%d from %s", rkey[0], rkey[1], name)
        # 2. updates of existing real servers (Real's == compares every packed field: the
        # same as comparing the packed entries, without packing both)
        draining = self.draining
        kept.reverse()
        for (rkey, rid), spec_r in zip(st.dests, kept):
            old = self.reals[rid]
            drains = bool(draining) and (key, rkey) in draining
            real = self._nexthop_real(spec_r, st.id, old, drains, resolve=False)
            if real != old:
                self.reals[rid] = real
                self._set("lb_reals", L.U32.pack(rid), real.pack())
                if (real.u_threshold, real.l_threshold) != (old.u_threshold, old.l_threshold):
                    self._thresholds_changed(rid, real)
                if real.weight != old.weight:
                    dest_changed()
                    log.info("real server %s:%d of %s: weight %d -> %d", rkey[0], rkey[1],
                             name, old.weight, real.weight)
                changed = True
        # 3. additions, in config order, each to the front of the list; the wrr mark follows
        # each one (wrr_dest_changed), its max weight and gcd kept as they grow (_WrrGrow)
        # (every real server left is wanted and they are distinct: as many as wanted, none to add)
        if not st.dests:
            have = set()
        else:
            have = {rkey for rkey, _ in st.dests} if len(st.dests) < len(wanted) else None
        grow = None
        for spec_r in spec.reals if have is not None else ():
            if have and spec_r.key in have:
                continue
            rid = self._alloc_real()
            real = self._nexthop_real(spec_r, st.id, None)
            self.reals[rid] = real
            self._set("lb_reals", L.U32.pack(rid), real.pack())
            st.dests.insert(0, (spec_r.key, rid))
            if cursor is not None:
                cursor += 1
            if grow is None:
                grow = _WrrGrow(self._weights(st)[1:], mark.cw)
            grow.add(real.weight)
            changed = True
            log.info("added real server %s:%d to %s (%s, weight %d)", spec_r.address, spec_r.port,
                     name, L.FORWARD_NAMES[real.fwd], real.weight)
        if grow is not None:
            mark = grow.mark()
        family = L.family_of(key.addr)
        persist = (spec.persistent, L.pack_mask(spec.pmask, family) if spec.persistent else bytes(16))
        flags = L.sched_flag_bits(f for f in spec.sched_flags if L.SCHED_FLAGS[f][0] == st.sched)
        flags |= L.SVC_F_SLOPPY if spec.sloppy else 0
        if not new:
            cur = L.Svc.unpack(self._get("lb_svc", L.U32.pack(st.id)))
            if (cur.persist_timeout, cur.persist_mask) != persist:
                changed = True
                log.info("virtual service %s: persistence %d s mask %s", name, spec.persistent,
                         L.unpack_mask(persist[1], family))
            if cur.flags != flags or (st.sched == "mh" and cur.mh_size != spec.mh_size):
                changed = True
        if not (new or changed):
            return
        sid = L.U32.pack(st.id)
        self._write_dests(st)
        self._set_buckets(st)
        self._set_mh(st, spec, new)
        mw, di = sched_model.wrr_params(self._weights(st))
        fwmark = key.fwmark if isinstance(key, L.FwmKey) else 0
        svc = L.Svc(key.addr, key.port, key.proto, L.SCHEDULERS[st.sched], len(st.dests), flags, mw, di,
                    persist[0], fwmark, spec.mh_size if st.sched == "mh" else 0, persist[1])
        self._set("lb_svc", sid, svc.pack())
        cl = L.POS_HEAD
        if st.sched == "rr" and cursor is not None:
            cl = cursor
        self._set("lb_sched_state", sid, L.SCHED_STATE.pack(cl, mark.cw))
        if new:
            self._set("lb_svc_stats", sid, L.STATS.pack(0, 0, 0, 0, 0))
            self._set("lb_svc_rates", sid, L.RATES.pack(0, 0, 0, 0, 0))
            self._est.pop(("lb_svc_stats", st.id), None)
            if fwmark:
                self._set("lb_fwm_services", L.U32.pack(fwmark), L.U32.pack(st.id))
            else:
                self._set("lb_services", key.pack(), L.U32.pack(st.id))

    def _set_buckets(self, st: _SvcState) -> None:
        """dh / sh: the 256-bucket table of list positions (a pure function of the list and
        its weights, as ip_vs_dh_reassign / ip_vs_sh_reassign rebuild it on every change);
        other schedulers have no entry, so they pay no memory for it."""
        sid = L.U32.pack(st.id)
        if st.sched not in L.BUCKET_SCHEDULERS:
            self._delete("lb_sched_buckets", sid)
            return
        if st.sched == "dh":
            table = sched_model.dh_table(len(st.dests))
        else:
            table = sched_model.sh_table(self._weights(st))
        self._set("lb_sched_buckets", sid,
                  L.SCHED_BUCKETS.pack(*(L.LB_NONE if p is None else p for p in table)))

    # ---- mh: the Maglev table of each mh service (lb/dataplane/mhtable.py) ----
    def _set_mh(self, st: _SvcState, spec: ServiceSpec, new: bool = False) -> None:
        """ip_vs_mh_dest_changed: rebuild the table from the list (draining real servers left
        out: IPVS has deleted them) and each server's last non-zero weight; write what changed.
        mhtable writes at once: for a service the data path can see (not new), apply's pending
        writes (its lb_reals and lb_svc_dests) go first."""
        rids = [rid for _, rid in st.dests]
        last = {rid: self.mh.last_weight(rid, self.reals[rid].weight) for rid in rids}
        if st.sched != "mh":
            if st.id in self.mh.tables and not new:
                self._flush()
            self._mh_drop(st.id)
            return
        if not new:
            self._flush()
        members = [rid for rid in rids if not self.reals[rid].flags & L.REAL_F_DRAINING]
        table = sched_model.mh_table([(self.reals[r].addr, self.reals[r].port, last[r]) for r in members],
                                     spec.mh_size)
        before = self.mh.writes
        self.mh.write(st.id, spec.mh_size, [L.LB_NONE if p is None else members[p] for p in table], rids)
        self.writes += self.mh.writes - before

    def _mh_drop(self, sid: int) -> None:
        before = self.mh.writes
        self.mh.drop(sid, forget=True)
        self.writes += self.mh.writes - before

    def _adopt_mh(self, st: _SvcState, svc: L.Svc) -> None:
        rids = [rid for _, rid in st.dests]
        if st.sched == "mh":
            self.mh.adopt(st.id, svc.mh_size, rids)

    def _weights(self, st: _SvcState) -> list[int]:
        return [self.reals[rid].weight for _, rid in st.dests]

    def refresh_nexthops(self) -> int:
        """Re-resolve real servers whose MAC is unknown (or changed); returns updates made."""
        n = 0
        self._nh_cache = {}
        for st in self.services.values():
            touched = False
            for rkey, rid in st.dests:
                old = self.reals[rid]
                spec = RealSpec(old.addr, old.port, old.weight, L.FORWARD_OF[old.fwd],
                                old.u_threshold, old.l_threshold)
                real = self._nexthop_real(spec, st.id, old, bool(old.flags & L.REAL_F_DRAINING))
                if real.pack() != old.pack():
                    self.reals[rid] = real
                    self._set("lb_reals", L.U32.pack(rid), real.pack())
                    touched = True
                    n += 1
                    log.info("real server %s:%d next hop now %s", rkey[0], rkey[1], real.mac.hex(":"))
            if touched:
                self._write_dests(st)
        return n

    def _write_dests(self, st: _SvcState) -> None:
        """lb_svc_dests of a service: each real server's weight and flags, plus OVERLOAD as BPF
        keeps it (lb_real_overload); each real server learns its position, where BPF sets and
        clears OVERLOAD in place."""
        dests = []
        for pos, (_, rid) in enumerate(st.dests):
            real = self.reals[rid]
            if real.pos != pos:
                real.pos = pos
                self._set("lb_reals", L.U32.pack(rid), real.pack())
            flags = real.flags
            if real.u_threshold and self._get("lb_real_overload", L.U32.pack(rid)) != L.U32.pack(0):
                flags |= L.REAL_F_OVERLOAD
            dests.append((rid, real.weight, flags))
        self._set("lb_svc_dests", L.U32.pack(st.id), L.pack_dests(dests, self.sizes.svc_reals))

    # ---- connection sync (lb/ha/sync.py): the active exports, the backup imports ----
    def export_conns(self, now_ns: int | None = None) -> tuple[list, list]:
        """Client -> VIP connections and persistence templates with real ids resolved to
        addresses (ids differ between directors).  Connections: (raw key, last_ns, record) with
        record = (proto, caddr, cport, vaddr, vport, raddr, rport, state, flags, age_ns, timeout,
        client_mac); templates: (raw key, last_ns, (proto, caddr, vaddr, vport, fwmark, raddr,
        rport, age_ns, timeout)).  NAT reverse entries are not exported: the importer rebuilds
        them."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        conns, temps = [], []
        for k, v in self.maps["lb_conns"].items():
            key = L.ConnKey.unpack(k)
            if key.dir:
                continue
            c = L.Conn.unpack(v)
            real = self.reals.get(c.real)
            if real is None or not real.family or c.flags & L.CONN_F_OUT:
                continue
            flags = c.flags & (L.CONN_F_INACTIVE | L.CONN_F_PERSIST)
            conns.append((k, c.last_ns, (key.proto, key.saddr, key.sport, key.daddr, key.dport, real.addr,
                                         real.port, c.state, flags, max(0, now - c.last_ns), c.timeout,
                                         c.client_mac)))
        for k, v in self.maps["lb_persist"].items():
            caddr, vaddr, vport, proto, fam, fwmark = L.PERSIST_KEY.unpack(k)
            last, rid, timeout = L.PERSIST.unpack(v)
            real = self.reals.get(rid)
            if real is None or not real.family or not fam:
                continue
            temps.append((k, last, (proto, L.unpack_addr(caddr, fam), L.unpack_addr(vaddr, fam),
                                    L.unpack_port(vport), fwmark, real.addr, real.port, max(0, now - last),
                                    timeout)))
        return conns, temps

    def _svc_of(self, proto: int, vaddr, vport: int, fwmark: int = 0):
        """The service a synced entry belongs to: by its VIP:port, else (a firewall-mark
        service's connection) the port range of its VIP that holds the port, or (a template)
        the mark."""
        if fwmark:
            return self.services.get(L.FwmKey(fwmark, addr=ipaddress.ip_address(0 if vaddr.version == 4 else "::")))
        st = self.services.get(L.SvcKey(proto, vaddr, vport))
        if st is not None:
            return st
        raw = self.ranges.get(L.SvcKey(proto, vaddr, 0).pack())
        if raw is None:
            return None
        for lo, hi, sid in L.unpack_ranges(raw):
            if lo <= vport <= hi:
                return next((s for s in self.services.values() if s.id == sid), None)
        return None

    def _rid_of(self, proto: int, vaddr, vport: int, raddr, rport: int, fwmark: int = 0):
        st = self._svc_of(proto, vaddr, vport, fwmark)
        if st is None:
            return None, None
        for (addr, port), rid in st.dests:
            if addr == raddr and port == rport:
                return st, rid
        return st, None

    def import_conns(self, conns: list, temps: list, ifindex: int, local_mac: bytes,
                     now_ns: int | None = None) -> tuple[int, int]:
        """Install connections and templates exported by the peer (records as export_conns
        makes them).  Each is counted on its real server as the data path would have counted it
        (through lb_real_swept, the control plane's side of the counters), so ActiveConn/InActConn
        are right on the backup and stay right when the entry later expires either way.  Entries
        whose service or real server this director does not have are skipped.  Returns
        (installed, skipped)."""
        # the coarse clock BPF reads (bpf_ktime_get_coarse_ns): a timestamp from the precise one
        # can lie a tick ahead of it
        now = time.clock_gettime_ns(_CLOCK_MONOTONIC_COARSE) if now_ns is None else now_ns
        cm, pm = self.maps["lb_conns"], self.maps["lb_persist"]
        delta: dict[int, list[int]] = {}

        def count(rid: int, idx: int, d: int) -> None:
            delta.setdefault(rid, [0, 0, 0])[idx] += d

        done = skipped = 0
        for proto, caddr, cport, vaddr, vport, raddr, rport, state, flags, age, timeout, cmac in conns:
            st, rid = self._rid_of(proto, vaddr, vport, raddr, rport)
            if rid is None:
                skipped += 1
                continue
            key = L.ConnKey(caddr, vaddr, cport, vport, proto).pack()
            old = cm.get(key)
            if old is not None:
                oc = L.Conn.unpack(old)
                if not oc.flags & L.CONN_F_OUT:
                    count(oc.real, 1 if oc.flags & L.CONN_F_INACTIVE else 0, -1)
            c = L.Conn(now - age, rid, st.id, timeout, ifindex, state, flags, cmac, local_mac)
            if hasattr(c, "vaddr"):             # the VIP:port NAT replies are rewritten back to
                c.vaddr, c.vport = L.pack_addr(vaddr), vport
            cm.set(key, c.pack())
            count(rid, 1 if flags & L.CONN_F_INACTIVE else 0, 1)
            if self.reals[rid].fwd == L.FWD_NAT:
                c.flags = L.CONN_F_OUT
                cm.set(L.ConnKey(raddr, caddr, rport, cport, proto, 1).pack(), c.pack())
            done += 1
        for proto, caddr, vaddr, vport, fwmark, raddr, rport, age, timeout in temps:
            st, rid = self._rid_of(proto, vaddr, vport, raddr, rport, fwmark)
            if rid is None:
                skipped += 1
                continue
            key = L.PERSIST_KEY.pack(L.pack_addr(caddr), L.pack_addr(vaddr), L.pack_port(vport), proto,
                                     L.family_of(caddr), fwmark)
            old = pm.get(key)
            if old is not None:
                count(L.PERSIST.unpack(old)[1], 2, -1)
            pm.set(key, L.PERSIST.pack(now - age, rid, timeout))
            count(rid, 2, 1)
            done += 1
        m = 0xFFFFFFFF
        for rid, (a, i, p) in delta.items():
            if not (a or i or p):
                continue
            k = L.U32.pack(rid)
            sa, si, sp, _ = L.REAL_CONNS.unpack(self.maps["lb_real_swept"].get(k))
            # counts = lb_real_conns - lb_real_swept: counting one more takes one off swept
            self._set("lb_real_swept", k, L.REAL_CONNS.pack((sa - a) & m, (si - i) & m, (sp - p) & m, 0))
        self.writes += done
        return done, skipped

    # ---- quiesce_server: the schedulers' counts restart from zero when a server joins ----
    def restart_sched_counts(self, spec: ServiceSpec) -> int:
        """Every real server of the service gets as baseline (lb_real_base) the connections it
        has now: lc/wlc/sed/nq/ovf count only newer ones, so a joining server is not flooded.
        lb list, thresholds and draining keep the true counts.  The baseline follows those old
        connections as they end (refresh_sched_base).  Returns how many were left out."""
        st = self.services.get(_key_of(spec))
        if st is None:
            return 0
        rids = {rid for _, rid in st.dests}
        snap: dict[int, set[bytes]] = {rid: set() for rid in rids}
        for k, v in self.maps["lb_conns"].items():
            c = L.Conn.unpack(v)
            if c.real in rids and not c.flags & L.CONN_F_OUT and not L.ConnKey.unpack(k).dir:
                snap[c.real].add(k)
        for rid, keys in snap.items():
            self.sched_base[rid] = keys
        self.refresh_sched_base(rids)
        return sum(len(k) for k in snap.values())

    def refresh_sched_base(self, rids=None) -> int:
        """Lower the baselines by the connections that have ended since (or changed between
        active and inactive); returns the connections still left out."""
        cm, zero = self.maps["lb_conns"], L.REAL_CONNS.pack(0, 0, 0, 0)
        left = 0
        for rid in list(self.sched_base if rids is None else rids):
            keys = self.sched_base.get(rid, set())
            act = inact = 0
            for k in list(keys):
                raw = cm.get(k)
                c = None if raw is None else L.Conn.unpack(raw)
                if c is None or c.real != rid:
                    keys.discard(k)
                elif c.flags & L.CONN_F_INACTIVE:
                    inact += 1
                else:
                    act += 1
            value = L.REAL_CONNS.pack(act, inact, 0, 0)
            key = L.U32.pack(rid)
            if self.maps["lb_real_base"].get(key) != value:
                self._set("lb_real_base", key, value)
            if not keys or rid not in self.reals:
                self.sched_base.pop(rid, None)
            left += act + inact
        return left

    # ---- rates ----
    def estimate(self, now: float | None = None) -> int:
        """IPVS's rate estimator (net/netfilter/ipvs/ip_vs_est.c), run every 2 s: per service
        and per real server in use, the counter deltas since the last sample become per-second
        rates in fixed point (conns and packets x 2^10, bytes x 2^5), smoothed as
        avg += (rate - avg) / 4, and written rounded to lb_svc_rates / lb_real_rates.  The
        interval is the measured one (exactly IPVS's shifts when it is 2 s).  A new id, or one
        whose counters went backwards, starts from its current counters with no rate yet.
        Returns the number of entries written."""
        now_ns = int((time.monotonic() if now is None else now) * 1_000_000_000)
        ids = {("lb_svc_stats", st.id) for st in self.services.values()}
        ids |= {("lb_real_stats", rid) for st in self.services.values() for _, rid in st.dests}
        rates_of = {"lb_svc_stats": "lb_svc_rates", "lb_real_stats": "lb_real_rates"}
        seed = self.adopted and not self._est_seeded
        self._est_seeded = True
        n = 0
        for gone in [k for k in self._est if k not in ids]:
            del self._est[gone]
            self._set(rates_of[gone[0]], L.U32.pack(gone[1]), L.RATES.pack(0, 0, 0, 0, 0))
            n += 1
        for mapname, i in ids:
            key = L.U32.pack(i)
            tot = [0] * 5
            for v in self.maps[mapname].get_percpu(key):
                for j, x in enumerate(L.STATS.unpack(v)):
                    tot[j] += x
            cur = tuple(tot)
            prev = self._est.get((mapname, i))
            if prev is None or any(c < p for c, p in zip(cur, prev[1])) or now_ns <= prev[0]:
                avg = [0] * 5
                if seed and prev is None:      # a restarted daemon carries on from the pinned rates
                    raw = self.maps[rates_of[mapname]].get(key)
                    if raw is not None:
                        avg = [r << s for r, s in zip(L.RATES.unpack(raw), _EST_SHIFT)]
                self._est[(mapname, i)] = (now_ns, cur, avg)
                continue
            t0, last, avg = prev
            dt = now_ns - t0
            for j in range(5):
                rate = ((cur[j] - last[j]) << _EST_SHIFT[j]) * 1_000_000_000 // dt
                avg[j] += (rate - avg[j]) >> 2
            self._est[(mapname, i)] = (now_ns, cur, avg)
            shown = [(a + (1 << (s - 1)) - 1) >> s if a > 0 else 0 for a, s in zip(avg, _EST_SHIFT)]
            self._set(rates_of[mapname], key, L.RATES.pack(*shown))
            n += 1
        return n

    # ---- expiry ----
    def sweep(self, now_ns: int | None = None) -> int:
        """Remove expired connections, take them off their real servers' counters, and bring
        ActiveConn/InActConn back to what is in the table (LRU eviction drops entries that
        nobody uncounts).

        The data path expires entries it meets; this catches the ones no packet visits.  A
        delete that succeeds is ours alone to uncount (the data path uncounts only what its own
        delete removed).

        Reconciliation: S0 = lb_real_conns - lb_real_swept is read per real server just before
        the dump of lb_conns, W counts the dump's client -> VIP entries per real server and
        class, and swept moves by S0 - W (plus what this sweep deletes).  The count becomes
        (lb_real_conns now - lb_real_conns at S0) + W - deleted: whatever BPF did after the
        snapshot (new connections, state changes, its own expiries) is kept, and everything
        before it is replaced by the table's own census.  Entries created or removed between
        the snapshot and the moment the dump reads their bucket are off by one each, but that
        error is not carried over: the next sweep measures afresh, so it never accumulates
        the way eviction leaks did, and on a quiet table the counters are exact."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        conns = self.maps["lb_conns"]
        rids = list(self.reals)
        before = self._counts_snapshot(rids)                 # S0, read before the dump
        entries = conns.items()
        census: dict[int, list[int]] = {}                     # W: per real, [active, inactive]
        swept: dict[int, list[int]] = {}
        n = 0
        for k, v in entries:
            last, real, _svc, timeout, _ifx, _state, flags = _CONN_HEAD.unpack_from(v)
            out = flags & L.CONN_F_OUT
            cls = 1 if flags & L.CONN_F_INACTIVE else 0
            if not out:
                census.setdefault(real, [0, 0])[cls] += 1
            if now - last <= timeout * 1_000_000_000:
                continue
            if not conns.delete(k) or out:
                continue
            n += 1
            swept.setdefault(real, [0, 0, 0])[cls] += 1
        del entries
        for rid in rids:
            s0, w = before.get(rid, (0, 0)), census.get(rid, (0, 0))
            da, di = s0[0] - w[0], s0[1] - w[1]
            if da or di:
                cnt = swept.setdefault(rid, [0, 0, 0])
                cnt[0] += da
                cnt[1] += di
        templates = self.maps["lb_persist"]
        for k, v in templates.items():
            last, real, timeout = L.PERSIST.unpack(v)
            if now - last > timeout * 1_000_000_000 and templates.delete(k):
                swept.setdefault(real, [0, 0, 0])[2] += 1
        m = 0xFFFFFFFF
        rewrite: set[int] = set()
        for rid, (a, i, p) in swept.items():
            key = L.U32.pack(rid)
            sa, si, sp, _ = L.REAL_CONNS.unpack(self.maps["lb_real_swept"].get(key))
            self._set("lb_real_swept", key, L.REAL_CONNS.pack((sa + a) & m, (si + i) & m, (sp + p) & m, 0))
            # the sweep unbinds connections too (IPVS ip_vs_unbind_dest)
            real = self.reals.get(rid)
            if real is not None and a + i > 0 and self.maps["lb_real_overload"].get(key) != L.U32.pack(0):
                act, inact, _ = self._real_conns(rid)
                if L.overload_cleared(act + inact, real.u_threshold, real.l_threshold):
                    self._set("lb_real_overload", key, L.U32.pack(0))
                    rewrite.add(real.svc)
        for st in self.services.values():
            if st.id in rewrite:
                self._write_dests(st)
        self.lblc_check_expire(now)
        return n

    def _lblc_flush(self, sid: int) -> int:
        """ip_vs_lblc_flush / ip_vs_lblcr_flush: drop a service's lblc and lblcr entries."""
        self._lblc_tables.pop(sid, None)
        n = 0
        for mapname in ("lb_lblc", "lb_lblcr"):
            m = self.maps[mapname]
            keys = [k for k, _ in m.items() if L.LBLC_KEY.unpack(k)[0] == sid]
            n += m.delete_many(keys) if keys else 0
        self.writes += n
        return n

    def lblc_check_expire(self, now_ns: int | None = None, force: bool = False) -> int:
        """The lblc / lblcr periodic timer (ip_vs_lblc_check_expire), once per
        CHECK_EXPIRE_INTERVAL (60 s) from the sweep, or at once with `force`: each service's
        tick counter decides between a full check (entries unused for lblc_expiration /
        lblcr_expiration go) and, when it has too many entries, dropping old ones.  The rules
        are lb.sched.model.LblcTable's.  Returns the entries deleted."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if not force and self._lblc_last_tick is not None and \
                now - self._lblc_last_tick < sched_model.CHECK_EXPIRE_INTERVAL * 1_000_000_000:
            return 0
        self._lblc_last_tick = now
        users = {st.id: st.sched for st in self.services.values() if st.sched in L.LBLC_SCHEDULERS}
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
                table = self._lblc_tables.setdefault(sid, sched_model.LblcTable())
                table.entries = by_svc.get(sid, {})
                before = dict(table.entries)
                table.check_expire(now / 1e9, self.lblc_expiration[sched])
                for k, e in before.items():
                    if k in table.entries:
                        continue
                    v = m.get(k)     # used again since we read it: it stays
                    if v is not None and L.U64.unpack_from(v)[0] / 1e9 == e.lastuse and m.delete(k):
                        n += 1
        self.writes += n
        return n

    def _counts_snapshot(self, rids: list[int]) -> dict[int, tuple[int, int]]:
        """(active, inactive) = lb_real_conns - lb_real_swept of the given real ids, read in
        two batch dumps when the table is big (one lookup pair each when small)."""
        if len(rids) > 256:
            cm = dict(self.maps["lb_real_conns"].items())
            sm = dict(self.maps["lb_real_swept"].items())
            raw = {rid: (cm.get(L.U32.pack(rid)), sm.get(L.U32.pack(rid))) for rid in rids}
        else:
            raw = {rid: (self.maps["lb_real_conns"].get(L.U32.pack(rid)), self.maps["lb_real_swept"].get(L.U32.pack(rid)))
                   for rid in rids}
        out = {}
        for rid, (c, sw) in raw.items():
            if c is not None and sw is not None:
                a, i, _p = L.real_counts(c, sw)
                # u32 arithmetic: a leak the other way (more uncounts than counts) reads as a
                # huge number; as a signed value it is corrected like any other difference
                out[rid] = (a - (1 << 32) if a >= 1 << 31 else a, i - (1 << 32) if i >= 1 << 31 else i)
        return out

    def _thresholds_changed(self, rid: int, real: L.Real) -> None:
        """IPVS __ip_vs_update_dest: OVERLOAD goes when u_threshold is now 0 or above the total."""
        key = L.U32.pack(rid)
        act, inact, _ = self._real_conns(rid)
        if not real.u_threshold or real.u_threshold > act + inact:
            if self._get("lb_real_overload", key) != L.U32.pack(0):
                self._set("lb_real_overload", key, L.U32.pack(0))


_CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)   # linux/time.h

# the head of lb_conn the sweep reads: last_ns, real, svc, timeout, client_ifindex, state, flags
_CONN_HEAD = struct.Struct("=QIIIIBB")

# fixed-point scale of the estimator's averages per lb_stats field (ip_vs_est.c: conns and
# packets x 2^10, bytes x 2^5)
_EST_SHIFT = (10, 10, 10, 5, 5)


def _key_of(spec: ServiceSpec):
    if spec.fwmark:
        v6 = bool(spec.groups) and spec.groups[0].address.version == 6
        return L.FwmKey(spec.fwmark, addr=ipaddress.IPv6Address(0) if v6 else ipaddress.IPv4Address(0))
    return L.SvcKey(L.PROTO_NUMBERS[spec.protocol], spec.address, spec.port)


class _SvcName:
    """_svc_name(key) for log lines, formatted when (and if) a line is emitted."""
    __slots__ = ("key", "text")

    def __init__(self, key):
        self.key, self.text = key, None

    def __str__(self) -> str:
        if self.text is None:
            self.text = _svc_name(self.key)
        return self.text


class _WrrGrow:
    """sched_model.wrr_dest_changed once per real server added to a list that only grows:
    wrr_params (max weight, gcd of the positive weights) kept up to date per added weight
    instead of recomputed over the whole list, so adding n real servers costs O(n), not O(n^2).
    Same marks (mark() after the last add), same weight check."""
    __slots__ = ("max", "gcd", "cw")

    def __init__(self, weights: list[int], cw: int):
        self.max, self.gcd, self.cw = 0, 0, cw
        for w in weights:
            self._take(w)

    def _take(self, w: int) -> None:
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise ValueError(f"weight must be a non-negative int, got {w!r}")
        if w > self.max:
            self.max = w
        if w > 0:
            self.gcd = math.gcd(self.gcd, w)

    def add(self, w: int) -> None:
        """wrr_dest_changed after w was added"""
        self._take(w)
        di = self.gcd or 1
        mw = self.max - (di - 1)
        cw = self.cw
        if cw > mw or cw == 0:
            self.cw = mw
        elif di > 1:
            self.cw = (cw // di) * di + 1

    def mark(self) -> sched_model.WrrMark:
        di = self.gcd or 1
        return sched_model.WrrMark(cl=None, cw=self.cw, mw=self.max - (di - 1), di=di)


def _svc_name(key) -> str:
    if isinstance(key, L.FwmKey):
        return f"FWM {key.fwmark}"
    return f"{L.PROTO_NAMES.get(key.proto, key.proto)} {key.addr}:{key.port}"

