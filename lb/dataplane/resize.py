"""New [tables] for an instance that keeps its data plane: the running instance's pinned maps are
moved into maps of the new sizes, so a restart that grows (or shrinks) the connection table, the
services' or the real servers' keeps every connection, persistence template, count and
statistic, as any other restart does.

How (XdpDataplane.load, then XdpDataplane.finish_resize once the engine attached the programs):

1. check(): do the entries fit the new sizes -- the service and real-server ids in use, each
   service's real-server list, the other hash tables' entries?  Asked before anything changes; a
   refusal names the size that is too small and what needs it.
2. The programs of the new sizes are loaded against a staging directory beside the instances'
   root (fresh maps pinned there), and copy() fills their maps from the running instance's while
   its programs go on forwarding with those.  A map the two differ on in anything but its size
   is refused here, as adoption refuses one (another version of lb).
3. swap(): two renames -- the instance's directory aside (``lb-resized-<instance>``), the
   staging one (``lb-resize-<instance>``) in its place.
4. The engine applies its table and attaches the new programs (atomically, interface by
   interface); until then the old programs forward with the old maps.  Each attach puts the
   program it replaces in the new programs' lb_progs_prev: a packet the new maps know nothing
   of (a connection the old programs made after the copy; a NAT reply whose reverse entry the
   copy found without its connection's, the two moved into lb_conns as the copy walked it) goes
   on to it instead of the kernel, which would reset it.  lb_progs_prev is pinned in the old
   directory (``lb_progs_prev_<n>``), so that it outlives a daemon killed before 5.
5. A grace period after the attach (XdpDataplane.finish_resize; the handshakes the old programs
   began have ended), catch_up(): the new tables brought up to date with what the old programs
   did since the copy -- connections and templates made copied, entries moved on (a reset's
   CLOSE) updated, entries ended removed -- where the new programs have not written them since
   (last_ns); then, lb_progs_prev emptied, finish(): a last catch_up, what the old programs
   added to the counters and statistics added to the new ones, the old directory removed (the
   old maps go with the last program that holds them); the data plane then recounts the real
   servers' connections from the tables (its sweep).

A start that dies part-way leaves the running data plane alone: before 3 the instance's
directory is untouched (the next start removes the staging one); between 3's two renames the
next start puts the old directory back; after 3 it adopts the new maps and does 5 (its attach
hands the killed daemon's programs over, which still hand over to the old ones), telling the
copy's entries by the copy's end, which 3 pinned beside the old maps (COPIED_AT).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import time

from . import bpfsys
from . import layout as L
from .errors import DataplaneError
from .maps import BpfMap, ConnTables
from .mhtable import open_table

log = logging.getLogger("lb.dataplane")

CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)   # the data path's clock (lb_clock.h)

ARRAY_OF_MAPS = 12
ARRAYS = (bpfsys.BPF_MAP_TYPE_ARRAY, bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY)

# tables packets fill: copied entry by entry; the most recently used first when they no longer
# all fit (their values begin with last_ns, the last packet's time, as lb_conn and lb_persist do)
# (lb_conns: an older lb's one established table, both families in it, which the new maps'
# ConnTables view splits into lb_conns4 and lb_conns6)
FLOWS = ("lb_conns", "lb_conns4", "lb_conns6", "lb_conns_embryo", "lb_persist", "lb_persist_embryo",
         "lb_lblc", "lb_lblcr")
LAST_NS_FIRST = ("lb_conns", "lb_conns4", "lb_conns6", "lb_conns_embryo", "lb_persist", "lb_persist_embryo")
# the established tables: what goes into them is marked in the established filter first
ESTABLISHED = ("lb_conns", "lb_conns4", "lb_conns6")
# connection tables whose NAT connections are two entries (the client's and the reverse one):
# trimmed connection by connection, so no half of a pair is kept without the other
PAIRED = ("lb_conns", "lb_conns4", "lb_conns6", "lb_conns_embryo")
# the connection tables (lb_conn values); an entry in one of these states is closing: the old
# programs delete it when a client's SYN reuses its key (lb_conn_reusable)
CONN_TABLES = PAIRED
CLOSING = (L.TCP_S["TIME_WAIT"], L.TCP_S["CLOSE"])
CONN_HEAD = struct.Struct("=QIIIIBB")     # last_ns, real, svc, timeout, client_ifindex, state, flags
# how far along its life a TCP connection in each state is: every move of IPVS's state tables
# (both, all three directions) but a SYN's goes to a state of this rank or a later one
# (tests/test_resize.py checks it against program.TCP_FSM and TCP_FSM_SECURE); a SYN may go
# back to a handshake, as a client reusing its port does
_S = L.TCP_S
PROGRESS = {_S["NONE"]: 0, _S["LISTEN"]: 0, _S["SYN_SENT"]: 1, _S["SYN_RECV"]: 2, _S["SYNACK"]: 2,
            _S["ESTABLISHED"]: 3, _S["FIN_WAIT"]: 4, _S["CLOSE_WAIT"]: 4, _S["LAST_ACK"]: 5,
            _S["TIME_WAIT"]: 6, _S["CLOSE"]: 7}
HANDSHAKE = (_S["SYN_SENT"], _S["SYN_RECV"], _S["SYNACK"])
_VADDR = dict((n, o) for n, o, _ in L.CONN.fields)["vaddr"]
_VPORT = dict((n, o) for n, o, _ in L.CONN.fields)["vport"]
_TIMEOUT, _STATE, _FLAGS = (dict((n, o) for n, o, _ in L.CONN.fields)[f] for f in ("timeout", "state", "flags"))


def _connection_of(name: str, key: bytes, value: bytes) -> bytes:
    """The client -> VIP lb_conn_key of an entry: its own key, or a NAT reverse entry's
    (real -> client) connection, from the client in its key and the VIP in its value"""
    wide = L.conn_key_of4(key) if name == "lb_conns4" else key
    if not wide[L.CONN_KEY_DIR]:
        return wide
    k = L.CONN_KEY.unpack(wide)          # saddr daddr sport dport proto family dir pad
    return L.CONN_KEY.pack(k[1], value[_VADDR:_VADDR + 16], k[3], value[_VPORT:_VPORT + 2], k[4], k[5], 0, 0)


def _newest_connections(name: str, items: list[tuple[bytes, bytes]], room: int) -> list[tuple[bytes, bytes]]:
    """The entries of the most recently used connections that fit in room, newest first, a
    connection's entries kept or left out together"""
    groups: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for k, v in items:
        groups.setdefault(_connection_of(name, k, v), []).append((k, v))
    ranked = sorted(groups.values(), key=lambda g: max(struct.unpack_from("=Q", v)[0] for _, v in g), reverse=True)
    kept: list[tuple[bytes, bytes]] = []
    for g in ranked:
        if len(kept) + len(g) > room:
            break
        kept.extend(sorted(g, key=lambda kv: struct.unpack_from("=Q", kv[1])[0], reverse=True))
    return kept
# the new programs' own: their tail calls, per-CPU scratch and clock, the TCP state tables (written
# at every load), the established filter (rebuilt from lb_conns by the adoption) and the datagrams
# in fragments (remembered for two seconds)
FRESH = ("lb_progs", "lb_scratch", "lb_csum_buf", "lb_clock", "lb_mh_walk", "lb_tcp_fsm",
         "lb_tcp_fsm_secure", "lb_est_filter", "lb_frags4", "lb_frags6", "lb_frag6_scratch",
         "lb_frag6_progs", "lb_icmp_progs", "lb_public_progs")
# counters the programs add to: finish() adds what the old programs counted after the copy
# (struct format of the counting part of each value: per-CPU u64s, lb_real_conns' three u32s)
COUNTERS = {"lb_svc_stats": "Q", "lb_real_stats": "Q", "lb_counters": "Q", "lb_ct_events": "Q",
            "lb_real_conns": "III"}
# values holding one slot per position in a service's real-server list (reals_per_service)
PER_SVC_REAL = ("lb_svc_dests", "lb_mh_last")


# pinned in the old directory by the swap: an array holding the copy's end (copied_at) and its
# beginning (copy_began; an older pin has one entry),
# for a start that finishes a resize another process copied (Resize.recover)
COPIED_AT = "lb_resize_copied_at"


def staging_dir(pin: str) -> str:
    """Beside the instances' root, as the compile's scratch: never taken for an instance (and
    bpffs names take no dots)."""
    return os.path.join(os.path.dirname(os.path.dirname(pin)), f"lb-resize-{os.path.basename(pin)}")


def old_dir(pin: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(pin)), f"lb-resized-{os.path.basename(pin)}")


def open_dir(path: str) -> dict[str, BpfMap]:
    out = {}
    for name in sorted(os.listdir(path)):
        if name.startswith("lb_progs_prev"):
            continue                    # a resize's handed-over programs (XdpDataplane._hand_over)
        try:
            out[name] = BpfMap.open_pinned(os.path.join(path, name))
        except bpfsys.BpfError:
            continue                    # not a map (nothing else is pinned there today)
    return out


def _u32(raw: bytes) -> int:
    return L.U32.unpack_from(raw)[0]


def _zero(raw: bytes) -> bool:
    return not any(raw)


def _stamp(value: bytes) -> int:
    """A FLOWS entry's last_ns (lastuse_ns): the u64 its value begins with"""
    return L.U64.unpack_from(value)[0]


def _ahead(old: bytes, new: bytes) -> bytes | None:
    """An lb_conn value both tables hold, the new one stamped later (the new programs' packet):
    when the old programs moved the connection further along (PROGRESS) -- a FIN or a reset
    they saw between the copy and the attach, which the new programs, judging the copy, did
    not see -- the new value with the old one's state, its timeout and INACTIVE flag (the state
    the connection would be in had one program seen both; its timer runs from the new
    programs' packet, as IPVS's from each packet); else None, the new value stands.  Not when
    the new programs' state is a handshake's: a SYN moved it there, a client reusing its port
    after the old programs closed it (a new connection)."""
    was, now = old[_STATE], new[_STATE]
    if was == now or was not in PROGRESS or now not in PROGRESS or now in HANDSHAKE:
        return None
    if PROGRESS[was] <= PROGRESS[now]:
        return None
    out = bytearray(new)
    out[_TIMEOUT:_TIMEOUT + 4] = old[_TIMEOUT:_TIMEOUT + 4]
    out[_STATE] = was
    out[_FLAGS] = (new[_FLAGS] & ~L.CONN_F_INACTIVE) | (old[_FLAGS] & L.CONN_F_INACTIVE)
    return bytes(out)


class Resize:
    """One instance's move into maps of new sizes (see the module's text)."""

    def __init__(self, pin: str):
        self.pin = pin
        self.staging = staging_dir(pin)
        self.old_path = old_dir(pin)
        self.old: dict[str, BpfMap] = {}          # the running instance's maps
        self.snapshot: dict[str, dict[bytes, bytes]] = {}   # COUNTERS as copied
        self.copied: dict[str, int] = {}
        self.seen: dict[str, set[bytes]] = {}     # FLOWS: every key the copy found (left out or not)
        self.dropped: dict[str, int] = {}
        self.handed_over = False                  # the old programs are in lb_progs_prev
        self.prev_pin: str | None = None          # where this start pinned its lb_progs_prev (in old_path)
        self.attached_at: float | None = None     # finish_resize's first call after the attach: the grace's start
        self.copied_at: int | None = None         # the data path's clock once the copy was made (catch_up)
        self.copy_began: int | None = None        # ... before its first read (catch_up's _ahead)
        self.updated: dict[str, int] = {}         # FLOWS: entries catch_up updated from the old ones
        self.removed: dict[str, int] = {}         # ... and removed, the old programs having deleted them

    # ---- a start after one that died part-way ----
    @classmethod
    def recover(cls, pin: str) -> "Resize | None":
        """Put things where a resize that died left them: the old directory back if the swap
        stopped between its renames, the staging directory removed; a Resize whose finish() is
        still to do when the old directory is there beside the new one."""
        rs = cls(pin)
        if os.path.isdir(rs.staging):
            if not os.path.isdir(pin) and os.path.isdir(rs.old_path):
                os.rename(rs.old_path, pin)
                log.warning("a resize of %s stopped half-way through its swap: the old maps are back", pin)
            shutil.rmtree(rs.staging, ignore_errors=True)
        if not os.path.isdir(rs.old_path):
            return None
        if not os.path.isdir(pin):
            shutil.rmtree(rs.old_path, ignore_errors=True)       # the instance itself is gone (stopped)
            return None
        log.warning("the resize of %s was not finished: its connections made meanwhile are copied once "
                    "the programs are attached", pin)
        rs.old = open_dir(rs.old_path)
        marker = rs.old.pop(COPIED_AT, None)
        if marker is not None:
            try:
                end, began = (marker.get(L.U32.pack(i)) if i < marker.max_entries else None for i in (0, 1))
            finally:
                marker.close()
            rs.copied_at, rs.copy_began = (L.U64.unpack(raw)[0] if raw is not None and len(raw) == 8 else None
                                           for raw in (end, began))
        return rs

    # ---- 1: will it fit ----
    def check(self, expected: dict[str, tuple[int, int]], svc_reals: int) -> None:
        """DataplaneError, before anything changed, when the running instance's entries do not
        fit maps of these sizes."""
        self.old = open_dir(self.pin)
        try:
            self._check(expected, svc_reals)
        except BaseException:
            self.close_old()
            raise

    def _check(self, expected: dict[str, tuple[int, int]], svc_reals: int) -> None:
        old = self.old

        def refuse(key: str, size: int, what: str, need: int) -> DataplaneError:
            return DataplaneError(f"[tables] {key} = {size} is too small for the running instance {self.pin}: "
                                  f"{what}: keep {key} at least {need}, or stop the instance (lb stop, which "
                                  f"drops its connections) to start it with the smaller table")

        sids = set()
        for name in ("lb_services", "lb_fwm_services"):
            if name in old:
                sids.update(_u32(v) for _, v in old[name].items())
        services = expected["lb_svc"][0]
        if sids and max(sids) >= services:
            raise refuse("services", services, f"it holds {len(sids)} virtual services, with ids up to "
                         f"{max(sids)}", max(sids) + 1)
        reals = expected["lb_reals"][0]
        if "lb_reals" in old:
            used = [_u32(k) for k, v in old["lb_reals"].items() if not _zero(v)]
            if used and max(used) >= reals:
                raise refuse("real_servers", reals, f"it holds {len(used)} real servers, with ids up to "
                             f"{max(used)}", max(used) + 1)
        if "lb_svc_dests" in old:
            keep = L.DEST.size * svc_reals
            for k, v in old["lb_svc_dests"].items():
                if _u32(k) in sids and not _zero(v[keep:]):
                    last = max(i for i in range(len(v) // L.DEST.size)
                               if not _zero(v[i * L.DEST.size:(i + 1) * L.DEST.size]))
                    raise refuse("reals_per_service", svc_reals, f"its virtual service id {_u32(k)} lists "
                                 f"real servers up to position {last + 1}", last + 1)
        for name, m in old.items():
            if (name in expected and name not in FLOWS and m.type not in ARRAYS + (ARRAY_OF_MAPS,)
                    and m.type != bpfsys.BPF_MAP_TYPE_PROG_ARRAY):
                n = len(m.items())
                if n > expected[name][0]:
                    raise DataplaneError(f"[tables] too small for the running instance {self.pin}: its "
                                         f"{name} holds {n} entries, the new size {expected[name][0]}: keep "
                                         f"[tables] as they were, or stop the instance (lb stop, which drops "
                                         f"its connections) to start it with the smaller tables")

    # ---- 2: the copy ----
    def copy(self, new: dict[str, BpfMap]) -> None:
        """Every entry of the old maps into the new ones (the staging directory's, not yet in use),
        after checking that each pair differs in nothing but its size."""
        # an entry stamped before this the old programs left as the copy found it (catch_up's _ahead)
        self.copy_began = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        pairs = []
        for name, src in self.old.items():
            dst = new.get(name)
            if dst is None or name in FRESH:
                continue                  # gone in this version, or the new programs' own
            if (src.type, src.key_size) != (dst.type, dst.key_size) or (
                    src.value_size != dst.value_size and name not in PER_SVC_REAL):
                raise DataplaneError(
                    f"pinned map {os.path.join(self.pin, name)} is (type, key, value) "
                    f"{(src.type, src.key_size, src.value_size)}, the programs need "
                    f"{(dst.type, dst.key_size, dst.value_size)}: the running instance's maps come from "
                    f"another version of lb and cannot be moved into the new [tables]. Stop it (lb stop) "
                    f"or remove {self.pin} to start afresh.")
            pairs.append((name, src, dst))
        for name, src, dst in pairs:
            if src.type in ARRAYS:
                n = self._copy_array(name, src, dst)
            elif src.type == ARRAY_OF_MAPS:
                n = self._copy_outer(src, dst)
            elif src.type == bpfsys.BPF_MAP_TYPE_PROG_ARRAY:
                continue
            else:
                n = self._copy_hash(name, src, dst)
            self.copied[name] = n
        # every entry copied was read before this: one stamped later was written since
        self.copied_at = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)

    def _convert(self, name: str, raw: bytes, size: int) -> bytes:
        if name in PER_SVC_REAL:
            return raw[:size].ljust(size, b"\0")
        return raw

    def _copy_array(self, name: str, src: BpfMap, dst: BpfMap) -> int:
        n = min(src.max_entries, dst.max_entries)
        keys = [L.U32.pack(i) for i in range(n)]
        if src.percpu:
            raws = src.get_many_raw(keys)
            if name in COUNTERS:
                self.snapshot[name] = {k: r for k, r in zip(keys, raws) if r is not None}
            done = 0
            for k, r in zip(keys, raws):
                if r is not None and not _zero(r):
                    dst.set_raw(k, r)
                    done += 1
            return done
        within = [(k, v) for k, v in src.items() if _u32(k) < n]
        if name in COUNTERS:
            self.snapshot[name] = dict(within)
        items = [(k, self._convert(name, v, dst.value_size)) for k, v in within if not _zero(v)]
        dst.set_many([k for k, _ in items], [v for _, v in items])
        return len(items)

    def _copy_outer(self, src: BpfMap, dst: BpfMap) -> int:
        """lb_mh_tables: the same inner tables (the service's Maglev lookup table), by id"""
        done = 0
        for i in range(min(src.max_entries, dst.max_entries)):
            raw = src.get(L.U32.pack(i))
            if raw is None:
                continue
            inner = open_table(_u32(raw))
            try:
                dst.set(L.U32.pack(i), L.U32.pack(inner.fd))
            finally:
                inner.close()
            done += 1
        return done

    @staticmethod
    def _parts(name: str, items: list[tuple[bytes, bytes]], dst):
        """(name, items, map) to copy items of the old map `name` into: the map itself, but an
        older lb's one lb_conns goes into lb_conns4 and lb_conns6 (the new maps' ConnTables),
        each family into its own table, trimmed and counted against that table's size"""
        if name == "lb_conns" and isinstance(dst, ConnTables):
            return dst.parts(items)
        return [(name, items, dst)]

    def _copy_hash(self, name: str, src: BpfMap, dst: BpfMap) -> int:
        n = 0
        for part, items, into in self._parts(name, src.items(), dst):
            done = self._copy_items(part, items, into)
            if part == name:
                n = done
            else:
                self.copied[part] = done
        return n

    def _copy_items(self, name: str, items: list[tuple[bytes, bytes]], dst: BpfMap) -> int:
        room = dst.max_entries
        if name in FLOWS:
            self.seen[name] = {k for k, _ in items}
        if name in FLOWS and len(items) > room:
            if name in PAIRED:
                kept = _newest_connections(name, items, room)
            else:
                if name in LAST_NS_FIRST:
                    items.sort(key=lambda kv: struct.unpack_from("=Q", kv[1])[0], reverse=True)
                kept = items[:room]
            self.dropped[name] = len(items) - len(kept)
            items = kept
            items.reverse()               # the most recent written last: an LRU keeps those
        items = [(k, self._convert(name, v, dst.value_size)) for k, v in items]
        dst.set_many([k for k, _ in items], [v for _, v in items])
        return len(items)

    # ---- 3: the swap ----
    def swap(self) -> None:
        if os.path.isdir(self.old_path):
            shutil.rmtree(self.old_path, ignore_errors=True)     # an older resize's, finished before this one began
        os.rename(self.pin, self.old_path)
        os.rename(self.staging, self.pin)
        self._pin_copied_at()

    def _pin_copied_at(self) -> None:
        """The copy's end pinned beside the old maps (COPIED_AT): a start that finishes this
        resize after this process was killed tells by it which entries of the new tables the copy
        wrote and the new programs never did (catch_up's removals)."""
        if self.copied_at is None:
            return
        try:
            fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_ARRAY, 4, 8, 2, 0, "lb_copied_at")
            try:
                bpfsys.update(fd, L.U32.pack(0), L.U64.pack(self.copied_at))
                if self.copy_began is not None:
                    bpfsys.update(fd, L.U32.pack(1), L.U64.pack(self.copy_began))
                bpfsys.obj_pin(fd, os.path.join(self.old_path, COPIED_AT))
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("resize: cannot pin the copy's time in %s (%s): if this daemon is killed before the "
                        "resize finishes, the next start leaves what the old programs ended meanwhile to "
                        "its timeout", self.old_path, e)

    def abandon(self) -> None:
        """The resize given up before its swap: the staging directory goes, the old maps stay."""
        self.close_old()
        shutil.rmtree(self.staging, ignore_errors=True)

    # ---- 5: what the old programs did since ----
    def catch_up(self, new: dict[str, BpfMap], mark_established) -> dict[str, int]:
        """The new tables brought up to date with what the old programs did since the copy, for
        the entries the new programs have not written since (an entry's last_ns tells which
        wrote it last: the old programs get only the packets the new maps know nothing of once
        the new ones are attached).  Each old table is compared with its new one directly, a
        chunk of entries at a time (nothing of the copy is kept but the keys it found, seen):

        - an entry the old table holds and the new one does not (made by the old programs since
          the copy, or since the last catch_up): copied;
        - an entry both hold, the old one's last_ns later than the new one's (a state the old
          programs moved it to -- CLOSE, TIME_WAIT, INACTIVE -- or a later packet): the new one
          updated from it; a connection whose new entry is the later but whose old one is
          further along (a FIN or reset the old programs saw, the new programs judging the
          copy): the old one's state taken (_ahead);
        - an entry of the copy the old table no longer holds and the new programs never wrote
          (last_ns before the copy's end): removed from the new table when the old programs'
          delete was theirs to make -- it expired, was closing (TIME_WAIT or CLOSE: a client's
          new SYN reuses its key), an embryonic entry that moved to the established table, or a
          template or lblc entry (those tables never evict) -- and kept when it can only have
          been the old LRU table's eviction of a live connection, which the new table has room
          for.

        The real servers' counts are not touched here: finish() adds what the old programs
        counted since the copy (lb_real_conns), and the data plane then recounts ActiveConn,
        InActConn and PersistConn from the tables as the sweep does (XdpDataplane.finish_resize):
        an entry the new programs kept against the old programs' change (counted by both) or an
        entry the copy's counts and entries disagree on (the old programs forwarded during the
        copy) is counted as the tables hold it.  The established filter's bits of keys copied
        into lb_conns are set first (mark_established(keys), lb_conn_keys).  Returns {map:
        entries copied}; the updates and removals are added up in .updated and .removed."""
        late: dict[str, int] = {}
        now = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        for whole in FLOWS:
            src, into = self.old.get(whole), new.get(whole)
            if src is None or into is None:
                continue
            parts = ([("lb_conns4", into.v4, L.conn_key_of4), ("lb_conns6", into.v6, None)]
                     if whole == "lb_conns" and isinstance(into, ConnTables) else [(whole, into, None)])
            fresh = {name: name not in self.seen for name, _, _ in parts}   # a resize another process copied
            sizes = {}
            for name, dst, wide in parts:
                sizes[name] = self._remove_ended(name, src, dst, wide, now)
            room: dict[str, int] = {}
            oldest: dict[str, int | None] = {}
            if any(fresh.values()):
                total = {name: 0 for name, _, _ in parts}
                for chunk in src.chunks():
                    for name, items, dst in self._parts(whole, chunk, into):
                        if fresh[name]:          # the old entries the new table lacks
                            total[name] += dst.get_many_raw([k for k, _ in items]).count(None)
                for name, dst, _ in parts:
                    have, low = sizes[name]
                    if fresh[name] and have + total[name] > dst.max_entries:
                        # what the other process left out is missing too: only what is more
                        # recent than anything kept can be new since, as much as there is room for
                        room[name] = max(0, dst.max_entries - have)
                        oldest[name] = low if name in LAST_NS_FIRST else None
            for chunk in src.chunks():
                for name, items, dst in self._parts(whole, chunk, into):
                    seen = self.seen.setdefault(name, set())
                    done = self._refresh(name, items, dst, None if fresh[name] else seen, room, oldest,
                                         mark_established)
                    seen.update(k for k, _ in items)
                    if done:
                        late[name] = late.get(name, 0) + done
        return late

    def _remove_ended(self, name: str, src: BpfMap, dst: BpfMap, wide, now: int) -> tuple[int, int | None]:
        """The entries of the copy in dst (a new table) that src (its old one) no longer holds
        and the new programs never wrote, removed where the old programs' delete was theirs to
        make (catch_up); wide: the old table's key of a new key (an older lb's one lb_conns).
        A resize another process copied (no keys seen yet: its daemon was killed, this start
        finishes it) has only the copy's end (COPIED_AT) to tell by: any entry stamped before
        it, and only where the entry's timer or the old tables show the delete (_ended's strict).
        Returns (entries dst held, the oldest last_ns among them)."""
        have, low = 0, None
        seen, cut = self.seen.get(name), self.copied_at
        for chunk in dst.chunks():
            have += len(chunk)
            stamps = [_stamp(v) for _, v in chunk]
            if stamps:
                low = min(stamps) if low is None else min(low, *stamps)
            if cut is None:
                continue            # a resize another process copied, its time unknown: nothing to tell by
            # in the copy, and not written since by the new programs (which stamp at least the attach)
            cand = [(k, v) for (k, v), t in zip(chunk, stamps)
                    if (seen is None or k in seen) and L.elapsed_ns(cut, t) > 0]
            if not cand:
                continue
            olds = src.get_many_raw([wide(k) if wide else k for k, _ in cand])
            ended = [(k, v) for (k, v), o in zip(cand, olds)
                     if o is None and self._ended(name, k, v, now, strict=seen is None)]
            if not ended:
                continue
            # as the sweep: not an entry changed since this read (a packet of the new programs')
            for (k, v), c in zip(ended, dst.get_many_raw([k for k, _ in ended])):
                if c == v and dst.delete(k):
                    self.removed[name] = self.removed.get(name, 0) + 1
        return have, low

    def _ended(self, name: str, key: bytes, value: bytes, now: int, strict: bool = False) -> bool:
        """Whether the old programs' delete of this entry (value: as the copy left it) was
        theirs to make -- the connection or template ended, moved on or was made again --
        rather than their LRU table's eviction of a live one (catch_up).  strict: only where the
        entry's own timer or the old tables show it (an entry not known to be the copy's may be
        one the HA sync imported, which the old tables never held: not a closing state, not a
        table without eviction)."""
        if name in ("lb_persist", "lb_lblc", "lb_lblcr"):
            return not strict                   # tables without eviction: every delete is meant
        if name == "lb_persist_embryo":
            last, _, timeout = L.PERSIST.unpack(value)
            timeout &= L.PERSIST_TIMEOUT        # seconds, without LB_PERSIST_F_IDLE
            # expired, or moved to lb_persist with its connection
            return L.elapsed_ns(now, last) > timeout * 1_000_000_000 or self._old_get("lb_persist", key)
        last, _, _, timeout, _, state, _ = CONN_HEAD.unpack_from(value)
        if L.elapsed_ns(now, last) > timeout * 1_000_000_000 or (state in CLOSING and not strict):
            return True
        wide = L.conn_key_of4(key) if name == "lb_conns4" else key
        if name == "lb_conns_embryo":
            return self._old_get("lb_conns", wide)          # promoted
        return self._old_get("lb_conns_embryo", wide)       # a client's SYN made it again there

    def _old_get(self, name: str, key: bytes) -> bool:
        """Whether the old table ``name`` holds key (lb_conns: an lb_conn_key, looked up in the
        old lb_conns4 or lb_conns6 by its family, or in an older lb's one lb_conns)"""
        if name == "lb_conns" and "lb_conns" not in self.old:
            four = key[L.CONN_KEY_FAMILY] == L.AF_INET
            m = self.old.get("lb_conns4" if four else "lb_conns6")
            key = L.conn_key4(key) if four else key
        else:
            m = self.old.get(name)
        return m is not None and m.get(key) is not None

    def _refresh(self, name: str, items: list[tuple[bytes, bytes]], dst, seen: set[bytes] | None,
                 room: dict[str, int], oldest: dict[str, int | None], mark_established) -> int:
        """One chunk of an old table's entries (items, keyed as dst is) against dst: the missing
        copied, the older updated (catch_up).  seen: the keys the copy (or an earlier catch_up)
        found, not copied again (left out on purpose, or gone from dst since); None for a resize
        another process copied.  Returns the count copied."""
        cur = dst.get_many_raw([k for k, _ in items])
        missing, newer = [], []
        for (k, v), c in zip(items, cur):
            if c is None:
                if seen is None or k not in seen:
                    missing.append((k, v))
            elif c != v and L.elapsed_ns(_stamp(v), _stamp(c)) > 0:
                newer.append((k, v, c))
            elif c != v and name in CONN_TABLES and (
                    self.copy_began is None or L.elapsed_ns(_stamp(v), self.copy_began) >= 0):
                # refreshed by the new programs from a stale copy: the old programs moved it
                # since the copy began (stamped before, it is as the copy found it -- a port
                # reused on the new programs after a close the copy holds is a new connection)
                merged = _ahead(v, c)
                if merged is not None:
                    newer.append((k, merged, c))
        for (k, v, c), again in zip(newer, dst.get_many_raw([k for k, _, _ in newer])):
            if again == c:                         # not written by the new programs meanwhile
                try:
                    dst.set(k, v, bpfsys.BPF_EXIST)
                except bpfsys.BpfError as e:
                    if e.errno != errno.ENOENT:
                        raise
                    continue
                self.updated[name] = self.updated.get(name, 0) + 1
        if name in room:
            low = oldest.get(name)
            if low is not None:
                missing = [(k, v) for k, v in missing if L.elapsed_ns(_stamp(v), low) > 0]
            missing = missing[:room[name]]
            room[name] -= len(missing)
        if not missing:
            return 0
        if name in ESTABLISHED:             # client -> VIP keys, as lb_conn_keys
            wide = [L.conn_key_of4(k) for k, _ in missing] if name == "lb_conns4" else [k for k, _ in missing]
            mark_established([k for k in wide if not k[L.CONN_KEY_DIR]])
        done = 0
        for k, v in missing:
            try:
                dst.set(k, v, bpfsys.BPF_NOEXIST)
                done += 1
            except bpfsys.BpfError as e:
                if e.errno not in (errno.EEXIST, errno.E2BIG, errno.ENOMEM):
                    raise
        return done

    def finish(self, new: dict[str, BpfMap], mark_established, counters: bool = True) -> dict[str, int]:
        """The last catch_up (the old programs get no more packets), what they added to the
        counters since the copy added to the new ones (counters), and the old maps let go."""
        late = self.catch_up(new, mark_established)
        for name, fmt in COUNTERS.items():
            before = self.snapshot.get(name)
            src, dst = self.old.get(name), new.get(name)
            if not counters or before is None or src is None or dst is None:
                continue
            for k, was in before.items():
                if _u32(k) >= dst.max_entries:
                    continue
                now = src.get_raw(k)
                if now is None or now == was:
                    continue
                self._add(dst, k, fmt, was, now)
        self.close_old()
        shutil.rmtree(self.old_path, ignore_errors=True)
        return late

    @staticmethod
    def _add(dst: BpfMap, key: bytes, fmt: str, was: bytes, now: bytes) -> None:
        """dst[key] += now - was, field by field (fmt: the counting fields, all of one width;
        modular: lb_real_conns' counts also fall); a per-CPU map CPU by CPU"""
        cur = dst.get_raw(key)
        if cur is None:
            return
        code = "=" + fmt[0]
        width = struct.calcsize(code)
        mask = (1 << (8 * width)) - 1
        if dst.percpu:
            offsets = [c * dst._slot + o for c in range(dst.ncpus) for o in range(0, dst.value_size, width)]
        else:
            offsets = range(0, struct.calcsize("=" + fmt), width)
        out = bytearray(cur)
        for o in offsets:
            d = struct.unpack_from(code, now, o)[0] - struct.unpack_from(code, was, o)[0]
            if d:
                struct.pack_into(code, out, o, (struct.unpack_from(code, out, o)[0] + d) & mask)
        dst.set_raw(key, bytes(out))

    def close_old(self) -> None:
        for m in self.old.values():
            m.close()
        self.old = {}

    def summary(self) -> str:
        moved = ", ".join(f"{self.copied[n]} {n}" for n in FLOWS if self.copied.get(n))
        return moved or "no connections"
