"""The XDP data plane's connection table (lb_conns, lb_persist) seen from the control plane:
the sweep that expires what no packet visits and recounts ActiveConn/InActConn, the HA export
and import of connections and templates (lb/ha/sync.py carries them), and quiesce_server's
baseline of connections the schedulers leave out."""
from __future__ import annotations

import errno
import ipaddress
import mmap
import struct
import time
from array import array
from dataclasses import dataclass, field

from . import layout as L
from .bpfsys import BpfError
from .maps import map_shared
from .reader import read_ct_events as ct_events
from .services import ServiceTable
from .txn import MapTxn

try:
    from lb import _bpfbatch  # built by the package install (cext/build_bpfbatch.py)
except ImportError:  # pragma: no cover - exercised only where the build is missing
    _bpfbatch = None

CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)   # linux/time.h

# 64-bit words per lb_est_filter entry (struct lb_est_word)
EST_STRIDE = L.EST_WORD.size // 8
# the head of lb_conn the sweep reads: last_ns, real, svc, timeout, client_ifindex, state, flags
CONN_HEAD = struct.Struct("=QIIIIBB")
# ip_vs_conn_expire: a template whose timer runs out while it still controls connections lives
# 60 s more, and 60 s is its timeout from then on (checked against kernel IPVS: tests/vm/oracle.py;
# bpf/lb_consts.h LB_TEMPLATE_LATER_S: the data path re-arms one it meets past its timeout so)
TEMPLATE_LATER_S = L.TEMPLATE_LATER_S
# the sweep's "no connection of this template's" (bb_sweep_controlling's INT64_MIN)
NO_CONNECTION = -(1 << 63)


def write_sched_off(txn: MapTxn, rids, swept: dict | None = None, base: dict | None = None) -> None:
    """lb_real_sched_off = lb_real_swept + lb_real_base for these real ids: what the schedulers
    take off BPF's counts (bpf/lb_sched.h), kept in the same lb_real_conns entry as the counts
    (maps.ArrayField) so their loops read one entry per server.  Called wherever either changes
    (as the pending writes leave them).  swept, base: those maps already read, {key: value}
    (many real servers at once: no lookup each)."""
    m, zero = 0xFFFFFFFF, L.REAL_COUNTS.pack(0, 0, 0, 0)
    for rid in rids:
        k = L.U32.pack(rid)
        sa, si, _, _ = L.REAL_COUNTS.unpack((txn.get("lb_real_swept", k) if swept is None else swept.get(k)) or zero)
        ba, bi, _, _ = L.REAL_COUNTS.unpack((txn.get("lb_real_base", k) if base is None else base.get(k)) or zero)
        value = L.REAL_COUNTS.pack((sa + ba) & m, (si + bi) & m, 0, 0)
        if txn.get("lb_real_sched_off", k) != value:
            txn.set("lb_real_sched_off", k, value)


def est_bitmap(keys: list[bytes], bits: int, words: array) -> array:
    """words (a bitmap of 1 << bits, array("Q")) with the established filter's bits of the
    connection keys set: in C (lb._bpfbatch) where built, else layout.est_filter_bit"""
    if not 0 < bits <= 32 or len(words) * 64 < 1 << bits:
        raise ValueError(f"est_bitmap: a bitmap of 1 << {bits} bits in {len(words)} words")
    kb = b"".join(keys)
    if len(kb) != len(keys) * L.CONN_KEY.size:     # (C reads 40 bytes per key)
        raise ValueError(f"est_bitmap: connection keys of {L.CONN_KEY.size} bytes expected")
    if _bpfbatch is not None and keys:
        ffi = _bpfbatch.ffi
        _bpfbatch.lib.bb_est_census(ffi.from_buffer(kb), len(keys), bits,
                                    ffi.from_buffer("uint64_t[]", words, require_writable=True))
        return words
    for k in keys:
        b = L.est_filter_bit(k, bits)
        words[b >> 6] |= 1 << (b & 63)
    return words


# the maps a sweep reads and writes
SWEPT_MAPS = ("lb_conns", "lb_conns_embryo", "lb_persist", "lb_persist_embryo")


@dataclass
class SweepPass:
    """One sweep between its parts (ConnTable.sweep_begin, sweep_scan, sweep_end)"""
    now: int
    rids: list[int]
    persistent: dict[int, tuple[int, bytes]]      # _persistent_services()
    tables: dict[str, object]                     # SWEPT_MAPS as the begin found them
    count_writes: int                             # MapTxn.count_writes at the begin, before S0
    marked: int                                   # the marks bitmap est_switch let go
    before: dict[int, tuple[int, int, int]] = field(default_factory=dict)   # S0, read before the dumps
    census: dict[int, list[int]] = field(default_factory=dict)   # W: per real, [active, inactive, persist]
    templates: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    in_c: dict | None = None                      # _c_controlling's, when C maps the templates
    scans: list[tuple] = field(default_factory=list)    # (table, *_sweep_scan's)
    embryo_before: tuple = ()                     # (lb_ct_events, embryo_deleted) before its dump
    corrections: dict[int, list[int]] = field(default_factory=dict)  # S0 - W per real, where not 0


class ConnTable:
    def __init__(self, maps: dict, txn: MapTxn, table: ServiceTable):
        self.maps = maps
        self.txn = txn
        self.table = table
        # the last census of the embryonic table: (entries, lb_ct_events before its dump, when,
        # embryo_deleted before its dump)
        self.embryo_census: tuple[int, dict[str, int], int, int] | None = None
        # entries the control plane deleted from lb_conns_embryo (the sweep, drop_entry): BPF's
        # tallies (lb_ct_events) count only the data path's own deletions
        self.embryo_deleted = 0
        self._est_mmap: mmap.mmap | None = None
        self._est_view: memoryview | None = None

    # ---- the established filter (bpf/lb_embryo.h) ----
    # lb_est_filter interleaves the three bitmaps word by word (struct lb_est_word: the census's
    # word, then the two marks bitmaps', then a pad), so a SYN reads one cache line.  BPF sets
    # bits in the marks words atomically while the control plane writes the census words: the
    # control plane writes its words one 8-byte store at a time through a shared mapping of the
    # array (BPF_F_MMAPABLE), never a whole entry, which would overwrite a mark set meanwhile.
    def _est_words(self) -> memoryview:
        """lb_est_filter as 64-bit words, 4 per entry (w[bitmap]), mapped shared"""
        if self._est_view is None:
            self._est_mmap, view = map_shared(self.maps["lb_est_filter"])
            self._est_view = view.cast("Q")
            view.release()
        return self._est_view

    def close(self) -> None:
        """Unmap the established filter (the mapping holds the map)"""
        if self._est_view is not None:
            self._est_view.release()
            self._est_view = None
            self._est_mmap.close()
            self._est_mmap = None

    def _est_bits(self) -> int:
        """LB_EST_FILTER_BITS: log2 of the bits in each bitmap (64 per entry)"""
        return (self.maps["lb_est_filter"].max_entries * 64).bit_length() - 1

    def _est_write(self) -> int:
        """the bitmap BPF's promotions mark now: 0 or 1 (lb_globals[LB_G_EST_WRITE])"""
        raw = self.maps["lb_globals"].get(L.U32.pack(L.G_EST_WRITE))
        return (L.U32.unpack(raw)[0] & 1) if raw else 0

    def est_switch(self) -> int:
        """Point BPF's promotions at the other bitmap, before a census: every key promoted
        from now on is in it.  Returns the bitmap they marked until now (the census clears it)."""
        old = self._est_write()
        self.maps["lb_globals"].set(L.U32.pack(L.G_EST_WRITE), L.U32.pack(1 - old))
        return old

    @staticmethod
    def _c_layouts_match(conns) -> bool:
        """bb_sweep_scan and bb_sweep_controlling read struct lb_conn_key, lb_conn and
        lb_persist_key: the maps' and the module's (built from the same header, unless an older
        build is installed) sizes must be layout's"""
        if _bpfbatch is None or getattr(conns, "dump", None) is None:
            return False
        lib = _bpfbatch.lib
        return (conns.key_size == L.CONN_KEY.size and conns.value_size == L.CONN.size
                and lib.bb_sizeof_conn_key() == L.CONN_KEY.size and lib.bb_sizeof_conn() == L.CONN.size
                and hasattr(lib, "bb_sweep_controlling") and lib.bb_sizeof_persist_key() == L.PERSIST_KEY.size)

    @staticmethod
    def _c_controlling(templates: list, persistent: dict) -> dict:
        """The templates and the persistent services as bb_sweep_controlling reads them, and
        its answer: left[i], the latest moment one of templates[i]'s connections runs out
        (INT64_MIN: none)"""
        nsvc = max(persistent) + 1
        rest_len = L.PERSIST_KEY.size - 16
        masks, rest, on = bytearray(16 * nsvc), bytearray(rest_len * nsvc), bytearray(nsvc)
        for sid, (mask, after) in persistent.items():
            masks[16 * sid:16 * (sid + 1)] = mask.to_bytes(16, "big")
            rest[rest_len * sid:rest_len * (sid + 1)] = after
            on[sid] = 1
        nslots = 1 << (2 * len(templates)).bit_length()     # over twice the templates: short probes
        return {"tkeys": b"".join(k for _, k, _ in templates),
                "treal": array("I", (L.PERSIST.unpack(v)[1] for _, _, v in templates)),
                "masks": bytes(masks), "rest": bytes(rest), "on": bytes(on), "nsvc": nsvc,
                "left": array("q", [NO_CONNECTION]) * len(templates), "nslots": nslots}

    def _sweep_scan(self, conns, now: int, persist: bool, census: dict, est: bool, rids, controlling=None,
                    counts=None):
        """The sweep's pass over one connection table.  Every client entry (not a NAT reply's
        reverse one) is counted in census[real][class] (for the real ids rids at least: the
        sweep reads no other), or with counts (the C pass only: _c_recount's) in counts[2 * real +
        class], for bb_sweep_recount.  Returns (the entries read, the (key, value) pairs the sweep must
        look at itself: the expired ones and, with persist, the client entries LB_CONN_F_PERSIST
        marks, and with est the established filter's census bitmap of the live client keys, else
        None, and whether the persistent ones were mapped to their templates here).  In C
        (cext/bpfbatch.c bb_sweep_scan) where built: in Python the pass over 1M entries took ~3 s
        of a core every 5 s; tests/test_sweep_scan.py holds the two to the same result.  With
        controlling (_c_controlling's) the C pass also maps each persistent connection to its
        templates (bb_sweep_controlling: ~1.8 s at 1M in Python) and gives back the expired ones
        alone."""
        bits = self._est_bits() if est else 0
        nwords = len(self._est_words()) // EST_STRIDE if est else 0
        if self._c_layouts_match(conns):
            if est and not (0 < bits <= 32 and nwords * 64 >= 1 << bits):
                raise ValueError(f"sweep: an established filter of 1 << {bits} bits in {nwords} words")
            ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
            keys, values, n = conns.dump()
            nreals = self.maps["lb_reals"].max_entries
            shared = counts is not None
            if not shared:
                counts = ffi.new("uint32_t[]", 2 * nreals)
            idx = ffi.new("uint32_t[]", max(n, 1))
            words = array("Q", bytes(8 * nwords)) if est else None
            mapped = controlling is not None            # given only while there are templates
            m = lib.bb_sweep_scan(keys, values, n, now & 0xFFFF_FFFF_FFFF_FFFF, counts, nreals,
                                  int(persist and not mapped), bits,
                                  ffi.from_buffer("uint64_t[]", words, require_writable=True) if est else ffi.NULL,
                                  idx)
            if mapped:
                c = controlling
                lib.bb_sweep_controlling(keys, values, n, now & 0xFFFF_FFFF_FFFF_FFFF, c["tkeys"],
                                         ffi.from_buffer("uint32_t[]", c["treal"]), len(c["treal"]), c["masks"],
                                         c["rest"], c["on"], c["nsvc"],
                                         ffi.from_buffer("int64_t[]", c["left"], require_writable=True),
                                         ffi.new("uint32_t[]", c["nslots"]), c["nslots"])
            ks, vs = conns.key_size, conns.value_size
            kb, vb = ffi.buffer(keys, n * ks), ffi.buffer(values, n * vs)
            look = [(kb[i * ks:(i + 1) * ks], vb[i * vs:(i + 1) * vs]) for i in ffi.unpack(idx, m)]
            for rid in rids if not shared else ():
                if rid < nreals and (counts[2 * rid] or counts[2 * rid + 1]):
                    c = census.setdefault(rid, [0, 0, 0])
                    c[0] += counts[2 * rid]
                    c[1] += counts[2 * rid + 1]
            return n, look, words, mapped
        entries = conns.items()
        look, live = [], []
        for k, v in entries:
            last, real, _svc, timeout, _ifx, _state, flags = CONN_HEAD.unpack_from(v)
            out = flags & L.CONN_F_OUT
            if not out:
                census.setdefault(real, [0, 0, 0])[1 if flags & L.CONN_F_INACTIVE else 0] += 1
            expired = L.elapsed_ns(now, last) > timeout * 1_000_000_000
            if expired or (persist and not out and flags & L.CONN_F_PERSIST):
                look.append((k, v))
                if expired:
                    continue
            if est and not out:
                live.append(k)
        return len(entries), look, est_bitmap(live, bits, array("Q", bytes(8 * nwords))) if est else None, False

    def est_census_words(self, words: array, done_with: int | None) -> None:
        """As est_census, the census bitmap given (est_bitmap's, or the sweep scan's)"""
        view = self._est_words()
        n = len(view) // EST_STRIDE
        view[L.EST_CENSUS::EST_STRIDE] = words
        if done_with is not None:
            view[L.EST_MARKS + done_with::EST_STRIDE] = array("Q", bytes(8 * n))

    def est_census(self, keys, done_with: int | None) -> None:
        """The census bitmap rebuilt from keys (every client -> VIP key lb_conns held when a walk
        that began after est_switch read it), then the bitmap the promotions marked before the
        switch (done_with) cleared.  A live entry's bit stays set throughout: until the census
        is written it is in the old census or a marks bitmap; after, in the new census (it was
        there for the walk) or in the marks bitmap of now (promoted since the switch).  Word by
        word: a SYN reading meanwhile sees each word old or new, and both have a live entry's
        bit.  done_with None: no bitmap is cleared."""
        n = len(self._est_words()) // EST_STRIDE
        self.est_census_words(est_bitmap(keys, self._est_bits(), array("Q", bytes(8 * n))), done_with)

    def est_rebuild(self) -> None:
        """The whole filter from lb_conns (a daemon adopting a table, which an older version's
        programs may have filled without marking)"""
        old = self.est_switch()
        d = L.CONN_KEY_DIR                  # the key's byte, not ConnKey.unpack: a million keys
        self.est_census([k for k, _ in self.maps["lb_conns"].items() if not k[d]], old)

    def _est_add(self, keys: list[bytes]) -> None:
        """Mark keys in the census before they go into lb_conns (imports)"""
        if not keys:
            return
        view = self._est_words()
        words = est_bitmap(keys, self._est_bits(), array("Q", bytes(8 * (len(view) // EST_STRIDE))))
        for i, w in enumerate(words):
            if w:
                view[i * EST_STRIDE + L.EST_CENSUS] |= w

    def sweep(self, now_ns: int | None = None) -> int:
        """Remove expired connections and templates (both tables of each: established and
        embryonic, lb_embryo.h), take them off their real servers' counters, and bring
        ActiveConn/InActConn/PersistConn back to what is in the tables (LRU eviction drops
        entries that nobody uncounts).

        The data path expires entries it meets; this catches the ones no packet visits.  A
        delete that succeeds is ours alone to uncount (the data path uncounts only what its own
        delete removed).

        Reconciliation: S0 = lb_real_conns - lb_real_swept is read per real server just before
        the dumps, W counts the dumps' client -> VIP entries (and templates) per real server and
        class, and swept moves by S0 - W (plus what this sweep deletes).  The count becomes
        (lb_real_conns now - lb_real_conns at S0) + W - deleted: whatever BPF did after the
        snapshot (new connections, state changes, its own expiries) is kept, and everything
        before it is replaced by the tables' own census.  Entries created or removed between
        the snapshot and the moment the dump reads their bucket are off by one each, but that
        error is not carried over: the next sweep measures afresh, so it never accumulates
        the way eviction leaks did, and on a quiet table the counters are exact.

        The embryonic table's census (its entries, and lb_ct_events and embryo_deleted just before
        its dump) is kept in ``embryo_census`` for the defenses' fill estimate: what this sweep
        deletes from the table after the dump is in embryo_deleted."""
        return self.sweep_end(self.sweep_scan(self.sweep_begin(now_ns)))

    # The sweep in three parts, so that its long middle one -- S0, the tables' dumps and their
    # scan, ~0.5 s at 1M connections -- can run without the data plane's lock (lb.engine's
    # sweep): an apply, a weight or an HA import does not wait for it.  The begin and the end run
    # under it, and do little (an apply asked during a sweep waits for them: at 64,000 real
    # servers, the per-server work of S0 and of S0 - W under the lock was 0.1-0.2 s of it).
    # What the scan reads while others write: entries made or removed meanwhile are each off by
    # one in the census, as the data path's are (above); a write to a real server's counters or
    # to lb_reals after the begin (an apply, an import: MapTxn.count_writes), S0 included, makes
    # the end leave ActiveConn / InActConn's recount and the established filter's census to the
    # next sweep, and tables replaced meanwhile (new [tables]) make it leave them alone.
    def sweep_begin(self, now_ns: int | None = None) -> "SweepPass":
        """The sweep's first part, under the lock: what the scan must know of the table"""
        now = time.monotonic_ns() if now_ns is None else now_ns
        self._est_words()       # its shared mapping made here, not in the scan's thread
        return SweepPass(now=now, rids=list(self.table.reals), persistent=self._persistent_services(),
                         tables={name: self.maps[name] for name in SWEPT_MAPS},
                         count_writes=self.txn.count_writes, marked=self.est_switch())

    def sweep_scan(self, sp: "SweepPass") -> "SweepPass":
        """The sweep's long part, which reads the counters and the tables and writes no map: S0,
        the templates, the census (W: per real, [active, inactive, persist]), S0 - W, and what
        sweep_end must look at of each connection table"""
        recount = self._c_recount(sp.rids)               # S0, read before the dumps, in C
        if recount is None:
            sp.before = self.counts_snapshot(sp.rids)    # ... or in Python
        # templates, counted; each is decided after the connections: one whose timeout has passed
        # is kept when a connection it controls was still there when it ran out
        # (ip_vs_conn_expire), and each of lb_persist is marked idle (LB_PERSIST_F_IDLE) when no
        # live connection it controls is left -- past its timeout, the data path then takes it
        # for absent, as IPVS frees it (bpf/lb_persist.h lb_persist_gone)
        for name in ("lb_persist", "lb_persist_embryo"):
            for k, v in sp.tables[name].items():
                real = L.PERSIST.unpack(v)[1]
                if recount is None:
                    sp.census.setdefault(real, [0, 0, 0])[2] += 1
                elif real < recount["nreals"]:
                    recount["persist"][real] += 1
                sp.templates.append((name, k, v))
        persistent = sp.persistent if sp.templates else {}
        sp.in_c = (self._c_controlling(sp.templates, persistent)
                   if persistent and self._c_layouts_match(sp.tables["lb_conns"]) else None)
        for name in ("lb_conns", "lb_conns_embryo"):
            conns = sp.tables[name]
            if name == "lb_conns_embryo":
                sp.embryo_before = (ct_events(self.maps), self.embryo_deleted)
            # the census of the client entries and the established filter's bitmap of the live
            # ones are taken by the scan; what it gives back -- expired entries, and persistent
            # ones while there are templates unless C mapped them to theirs -- is looked at by
            # sweep_end
            sp.scans.append((name, *self._sweep_scan(conns, sp.now, bool(persistent), sp.census,
                                                     name == "lb_conns", sp.rids, sp.in_c,
                                                     None if recount is None else recount["census"])))
        if recount is not None:
            ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
            n = len(sp.rids)
            out_rid, out_d = ffi.new("uint32_t[]", max(n, 1)), ffi.new("int64_t[]", 3 * max(n, 1))
            m = lib.bb_sweep_recount(recount["conns"], recount["swept"], recount["by_index"], recount["census"],
                                     recount["persist"], recount["nreals"], recount["rids"], n, out_rid, out_d)
            d = ffi.unpack(out_d, 3 * m)
            sp.corrections = {rid: d[3 * i:3 * i + 3] for i, rid in enumerate(ffi.unpack(out_rid, m))}
            return sp
        # S0 - W for each real server of rids; where both are 0 (left out of before, not in
        # census) there is nothing to correct
        inuse = set(sp.rids)
        for rid in sp.before.keys() | {r for r in sp.census if r in inuse}:
            s0, w = sp.before.get(rid, (0, 0, 0)), sp.census.get(rid, (0, 0, 0))
            d = [s0[i] - w[i] for i in range(3)]
            if any(d):
                sp.corrections[rid] = d
        return sp

    def sweep_end(self, sp: "SweepPass") -> int:
        """The sweep's last part, under the lock: remove what expired (each entry only if it is
        as the scan read it), decide the templates, recount.  Returns the connections removed."""
        if any(self.maps[name] is not m for name, m in sp.tables.items()):
            return 0        # the tables were replaced while the scan ran: the next sweep's
        # nothing wrote a real server's counters since the begin: the recount and the census hold
        settled = self.txn.count_writes == sp.count_writes
        now, templates = sp.now, sp.templates
        persistent = sp.persistent if templates else {}
        swept: dict[int, list[int]] = {}
        # (template key, real) -> the latest moment, in ns from now, one of its connections runs
        # out (negative: already ran out).  A template is kept when a connection it controls was
        # still there when the template ran out -- which may be before this sweep, not only when
        # it is alive now (ip_vs_conn_expire checks n_control at the template's expiry)
        controlling: dict[tuple[bytes, int], int] = {}
        n = 0
        for name, total, look, est_words, mapped in sp.scans:
            conns = sp.tables[name]
            for k, v in look:
                last, real, svc, timeout, _ifx, _state, flags = CONN_HEAD.unpack_from(v)
                out = flags & L.CONN_F_OUT
                cls = 1 if flags & L.CONN_F_INACTIVE else 0
                left = timeout * 1_000_000_000 - L.elapsed_ns(now, last)
                if (persistent and not mapped and flags & L.CONN_F_PERSIST and not out
                        and svc in persistent):
                    tk = (self._template_key(persistent[svc], k), real)
                    if left > controlling.get(tk, NO_CONNECTION):
                        controlling[tk] = left
                if left >= 0:
                    continue
                if conns.get(k) != v:
                    # changed since the dump read it (seconds ago, in a big table): used again, or
                    # expired by the data path and made again under the same key (a client reusing
                    # its port) -- live, not ours to remove
                    continue
                if out:
                    kept = self._reply_entry_kept(k, v, now)
                    if kept is not None:
                        conns.set(k, kept)
                        continue
                if not conns.delete(k):
                    continue
                if name == "lb_conns_embryo":
                    self.embryo_deleted += 1
                if out:
                    continue
                self.drop_reply_entry(k, real)
                n += 1
                swept.setdefault(real, [0, 0, 0])[cls] += 1
            if name == "lb_conns_embryo":
                events, deleted = sp.embryo_before
                self.embryo_census = (total, events, now, deleted)
            elif settled:
                self.est_census_words(est_words, sp.marked)
            # else an import's keys may be missing from the scan's census: the filter keeps the
            # census it has and both marks bitmaps (more 'maybe's, none lost) until the next sweep
        sp.scans.clear()
        if sp.in_c is not None:
            for (_name, k, v), left in zip(templates, sp.in_c["left"]):
                tk = (k, L.PERSIST.unpack(v)[1])
                if left != NO_CONNECTION and left > controlling.get(tk, NO_CONNECTION):
                    controlling[tk] = left
        for name, k, v in templates:
            last, real, raw = L.PERSIST.unpack(v)
            timeout, idle = raw & L.PERSIST_TIMEOUT, bool(raw & L.PERSIST_F_IDLE)
            conn_left = controlling.get((k, real))
            live = conn_left is not None and conn_left >= 0    # a connection it controls lives
            # lb_persist_embryo's are not marked: an update of an LRU entry takes a new one,
            # which in a full table (a flood) evicts another, uncounted
            mark = L.PERSIST_F_IDLE if not live and name == "lb_persist" else 0
            t_left = timeout * 1_000_000_000 - L.elapsed_ns(now, last)
            table = sp.tables[name]
            if t_left >= 0:
                if idle == bool(mark):
                    continue             # marked right
                if table.get(k) == v:    # not used or made again since the dump (as below)
                    table.set(k, L.PERSIST.pack(last, real, timeout | mark))
                continue
            if table.get(k) != v:
                continue                 # used or made again since the dump (as connections above)
            # each time its timer runs out while a connection it controls is still there, it
            # restarts where it ran out, for 60 s; the first time none is, it goes
            kept = False
            while conn_left is not None and t_left < 0 and conn_left > t_left:
                last = L.stamp_ago(last, -timeout * 1_000_000_000)
                timeout = TEMPLATE_LATER_S
                t_left += TEMPLATE_LATER_S * 1_000_000_000
                kept = True
            if kept and t_left >= 0:
                table.set(k, L.PERSIST.pack(last, real, timeout | mark))
            elif table.delete(k):
                swept.setdefault(real, [0, 0, 0])[2] += 1
        # S0 - W, the scan's.  Not when a real server's counters were written since the begin
        # (settled false): S0 - W would carry that write's change; the entries removed here are
        # taken off either way, and the next sweep recounts
        for rid, d in sp.corrections.items() if settled else ():
            cnt = swept.setdefault(rid, [0, 0, 0])
            for i in range(3):
                cnt[i] += d[i]
        self.add_swept(swept)
        return n

    def _reply_entry_kept(self, k: bytes, v: bytes, now: int) -> bytes | None:
        """A NAT reverse entry (real server -> client) whose own timer ran out lives on while its
        connection's entry (client -> VIP) does: made at the SYN, it keeps SYN_RECV's timeout
        (60 s) when the connection moves on to ESTABLISHED's (900 s), so a connection quiet for a
        minute would lose its replies' way (the director's stack would get them, un-NATed) long
        before IPVS expires it.  Returns the entry to write back, with the connection's
        timestamp and timeout; None when the connection is gone or expired too (then it goes)."""
        key, rev = L.ConnKey.unpack(k), L.Conn.unpack(v)
        vaddr = L.unpack_addr(rev.vaddr, L.family_of(key.saddr))
        _name, fv = self._find(L.ConnKey(key.daddr, vaddr, key.dport, rev.vport, key.proto).pack())
        if fv is None:
            return None
        flast, freal, _svc, ftimeout = CONN_HEAD.unpack_from(fv)[:4]
        if freal != rev.real or L.elapsed_ns(now, flast) > ftimeout * 1_000_000_000:
            return None
        # the connection's timestamp (newer than its own, which ran out) and timeout
        rev.last_ns, rev.timeout = flast, ftimeout
        return rev.pack()

    def drop_reply_entry(self, k: bytes, rid: int) -> bool:
        """The NAT reverse entry of a connection removed here (the sweep's, drop_entry's) goes
        with it (kept alive by _reply_entry_kept, it would otherwise stay until its own timer ran
        out), unless it is another connection's: a later one from the same client port, through
        another VIP, to the same real server (the data path writes a reverse entry over the one
        under its key).  True when it was deleted (by this delete: counted in embryo_deleted when
        it was embryonic)."""
        real = self.table.reals.get(rid)
        if real is None or real.fwd != L.FWD_NAT:
            return False
        key = L.ConnKey.unpack(k)
        rk = key.reverse(real).pack()
        name, rv = self._find(rk)
        if rv is None:
            return False
        rev = L.Conn.unpack(rv)
        if (rev.real, rev.vaddr, rev.vport) != (rid, L.pack_addr(key.daddr), key.dport):
            return False
        if not self.maps[name].delete(rk):
            return False
        if name == "lb_conns_embryo":
            self.embryo_deleted += 1
        return True

    def _find(self, k: bytes) -> tuple[str | None, bytes | None]:
        """(table, value) of a connection key in lb_conns or lb_conns_embryo (as BPF's lb_conn_find)"""
        for name in ("lb_conns", "lb_conns_embryo"):
            v = self.maps[name].get(k)
            if v is not None:
                return name, v
        return None, None

    def add_swept(self, swept: dict[int, list[int]]) -> None:
        """Take (active, inactive, persist) per real id off the counters (lb_real_swept, the
        control plane's side of them), and clear OVERLOAD where that brings a real server below
        its threshold (IPVS ip_vs_unbind_dest)."""
        m = 0xFFFFFFFF
        rewrite: set[int] = set()
        for rid, (a, i, p) in swept.items():
            key = L.U32.pack(rid)
            sa, si, sp, _ = L.REAL_COUNTS.unpack(self.maps["lb_real_swept"].get(key))
            self.txn.set("lb_real_swept", key, L.REAL_COUNTS.pack((sa + a) & m, (si + i) & m, (sp + p) & m, 0))
            write_sched_off(self.txn, (rid,))
            # the sweep unbinds connections too (IPVS ip_vs_unbind_dest)
            real = self.table.reals.get(rid)
            if real is not None and a + i > 0 and self.maps["lb_real_overload"].get(key) != L.U32.pack(0):
                act, inact, _ = self.table.real_conns(rid)
                if L.overload_cleared(act + inact, real.u_threshold, real.l_threshold):
                    self.txn.set("lb_real_overload", key, L.U32.pack(0))
                    rewrite.add(real.svc)
        for st in self.table.services.values():
            if st.id in rewrite:
                self.table.write_dests(st)

    def _persistent_services(self) -> dict[int, tuple[int, bytes]]:
        """service id -> (its persistence mask as an integer, the rest of its templates' keys
        after the client address), for the persistent services: what _template_key needs."""
        out = {}
        for st in self.table.services.values():
            raw = self.maps["lb_svc"].get(L.U32.pack(st.id))
            if raw is not None:
                svc = L.Svc.unpack(raw)
                if svc.persist_timeout:
                    family = L.SVC.unpack(raw)[3]
                    if svc.fwmark:
                        key = L.PERSIST_KEY.pack(bytes(16), bytes(16), b"\0\0", 0, family, svc.fwmark)
                    else:
                        key = L.PERSIST_KEY.pack(bytes(16), L.pack_addr(svc.addr), L.pack_port(svc.port), svc.proto,
                                                 family, 0)
                    out[st.id] = (int.from_bytes(svc.persist_mask, "big"), key[16:])
        return out

    @staticmethod
    def _template_key(mask_rest: tuple[int, bytes], conn_key: bytes) -> bytes:
        """The template key of a connection of a persistent service, as bpf/lb_persist.h
        lb_persist_key_of makes it: <client & netmask, VIP, port, protocol>, or for a
        firewall-mark service <client & netmask, fwmark> (mask_rest: _persistent_services')."""
        mask, rest = mask_rest
        return (int.from_bytes(conn_key[:16], "big") & mask).to_bytes(16, "big") + rest

    def _c_recount(self, rids: list[int]) -> dict | None:
        """S0 for cext/bpfbatch.c bb_sweep_recount -- lb_real_conns and lb_real_swept of the
        real ids rids, read now, as C buffers -- and the census buffers the scan fills, or None
        where the module is not built (or an older build) or the connection table's layout is not
        the module's: the Python pass (counts_snapshot, census dicts) then."""
        lib = getattr(_bpfbatch, "lib", None)
        if (not hasattr(lib, "bb_sweep_recount") or lib.bb_sizeof_real_conns() != L.REAL_CONNS.size
                or lib.bb_sizeof_real_counts() != L.REAL_COUNTS.size
                or not all(self._c_layouts_match(self.maps[name]) for name in ("lb_conns", "lb_conns_embryo"))):
            return None
        ffi, n = _bpfbatch.ffi, len(rids)
        ids = array("I", rids)
        keys = ids.tobytes()              # U32 keys: native order, as array's
        conns, by_index, found = self.maps["lb_real_conns"].values_raw(keys, n)
        swept, by_index_s, found_s = self.maps["lb_real_swept"].values_raw(keys, n)
        if by_index != by_index_s or (not by_index and n and (b"\0" in ffi.buffer(found, n)[:]
                                                               or b"\0" in ffi.buffer(found_s, n)[:])):
            return None                  # an id past the arrays: counts_snapshot leaves it out
        nreals = self.maps["lb_reals"].max_entries
        return {"conns": conns, "swept": swept, "by_index": int(by_index), "nreals": nreals,
                "rids": ffi.from_buffer("uint32_t[]", ids), "ids": ids,
                "census": ffi.new("uint32_t[]", 2 * nreals), "persist": ffi.new("uint32_t[]", nreals)}

    def counts_snapshot(self, rids: list[int]) -> dict[int, tuple[int, int, int]]:
        """(active, inactive, persist) = lb_real_conns - lb_real_swept of the given real ids; a
        real server whose three are 0 (as many are: 64,000 servers every sweep) is left out."""
        keys = [L.U32.pack(rid) for rid in rids]
        # get_many_raw: arrays read whole in a few syscalls when the ids are many, one lookup each
        # when few (no (key, value) tuple per entry of the array)
        raw = zip(rids, self.maps["lb_real_conns"].get_many_raw(keys), self.maps["lb_real_swept"].get_many_raw(keys))
        out = {}
        n = L.REAL_COUNTS.size - 4      # (active, inactive, persist) lead both layouts
        for rid, c, sw in raw:
            if c is not None and sw is not None and c[:n] != sw[:n]:
                # u32 arithmetic: a leak the other way (more uncounts than counts) reads as a
                # huge number; as a signed value it is corrected like any other difference
                out[rid] = tuple(x - (1 << 32) if x >= 1 << 31 else x for x in L.real_counts(c, sw))
        return out

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
            real = self.table.reals.get(c.real)
            if real is None or not real.family or c.flags & L.CONN_F_OUT:
                continue
            flags = c.flags & (L.CONN_F_INACTIVE | L.CONN_F_PERSIST)
            conns.append((k, c.last_ns, (key.proto, key.saddr, key.sport, key.daddr, key.dport, real.addr,
                                         real.port, c.state, flags, max(0, L.elapsed_ns(now, c.last_ns)), c.timeout,
                                         c.client_mac)))
        for k, v in self.maps["lb_persist"].items():
            caddr, vaddr, vport, proto, fam, fwmark = L.PERSIST_KEY.unpack(k)
            last, rid, timeout = L.PERSIST.unpack(v)
            timeout &= L.PERSIST_TIMEOUT        # seconds (LB_PERSIST_F_IDLE is this director's)
            real = self.table.reals.get(rid)
            if real is None or not real.family or not fam:
                continue
            temps.append((k, last, (proto, L.unpack_addr(caddr, fam), L.unpack_addr(vaddr, fam),
                                    L.unpack_port(vport), fwmark, real.addr, real.port, max(0, L.elapsed_ns(now, last)),
                                    timeout)))
        return conns, temps

    def svc_of(self, proto: int, vaddr, vport: int, fwmark: int = 0):
        """The service a synced entry belongs to: by its VIP:port, else (a firewall-mark
        service's connection) the port range of its VIP that holds the port, or (a template)
        the mark."""
        if fwmark:
            return self.table.services.get(L.FwmKey(fwmark, addr=ipaddress.ip_address(0 if vaddr.version == 4 else "::")))
        st = self.table.services.get(L.SvcKey(proto, vaddr, vport))
        if st is not None:
            return st
        raw = self.table.ranges.get(L.SvcKey(proto, vaddr, 0).pack())
        if raw is None:
            return None
        for lo, hi, sid in L.unpack_ranges(raw):
            if lo <= vport <= hi:
                return next((s for s in self.table.services.values() if s.id == sid), None)
        return None

    def rid_of(self, proto: int, vaddr, vport: int, raddr, rport: int, fwmark: int = 0):
        st = self.svc_of(proto, vaddr, vport, fwmark)
        if st is None:
            return None, None
        for (addr, port), rid in st.dests:
            if addr == raddr and port == rport:
                return st, rid
        return st, None

    def import_conns(self, conns: list, temps: list, ifindex: int, local_mac: bytes,
                     now_ns: int | None = None, owned_since_ns: int | None = None) -> tuple[int, int]:
        """Install connections and templates exported by the peer (records as export_conns
        makes them).  Each is counted on its real server as the data path would have counted it
        (through lb_real_swept, the control plane's side of the counters), so ActiveConn/InActConn
        are right on the backup and stay right when the entry later expires either way.  Entries
        whose service or real server this director does not have are skipped, and so are
        templates a full lb_persist (no eviction) cannot take.  ``owned_since_ns`` (this
        director active since then, on the data path's clock; None: a backup, which takes
        every record): a record whose connection or template this director has, embryonic or
        not, stamped at or after it is skipped -- the entry is this data plane's own (a packet
        made or moved it since the takeover), and the old active's record of it is older news
        (IPVS's master does not take sync messages).  Returns (installed, skipped)."""
        # the coarse clock BPF reads (bpf_ktime_get_coarse_ns): a timestamp from the precise one
        # can lie a tick ahead of it
        now = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE) if now_ns is None else now_ns
        cm, pm = self.maps["lb_conns"], self.maps["lb_persist"]
        delta: dict[int, list[int]] = {}

        def count(rid: int, idx: int, d: int) -> None:
            delta.setdefault(rid, [0, 0, 0])[idx] += d

        # the established filter first: a SYN must not skip an entry already there
        self._est_add([L.ConnKey(c[1], c[3], c[2], c[4], c[0]).pack() for c in conns])
        def owned(last_ns: int) -> bool:
            # stamped at or after the takeover: by this data plane's packets (a new connection, a
            # state change), or by a record installed since (a later one of the same entry waits
            # for the entry's next change here, as a packet's)
            return owned_since_ns is not None and L.elapsed_ns(last_ns, owned_since_ns) >= 0

        done = skipped = 0
        for proto, caddr, cport, vaddr, vport, raddr, rport, state, flags, age, timeout, cmac in conns:
            st, rid = self.rid_of(proto, vaddr, vport, raddr, rport)
            if rid is None:
                skipped += 1
                continue
            ck = L.ConnKey(caddr, vaddr, cport, vport, proto)
            key = ck.pack()
            if owned_since_ns is not None:
                _, mine = self._find(key)
                if mine is not None and owned(L.Conn.unpack(mine).last_ns):
                    skipped += 1
                    continue
            old = cm.get(key)
            if old is not None:
                oc = L.Conn.unpack(old)
                if not oc.flags & L.CONN_F_OUT:
                    count(oc.real, 1 if oc.flags & L.CONN_F_INACTIVE else 0, -1)
            c = L.Conn(L.stamp_ago(now, age), rid, st.id, timeout, ifindex, state, flags, cmac, local_mac)
            if hasattr(c, "vaddr"):             # the VIP:port NAT replies are rewritten back to
                c.vaddr, c.vport = L.pack_addr(vaddr), vport
            cm.set(key, c.pack())
            count(rid, 1 if flags & L.CONN_F_INACTIVE else 0, 1)
            if self.table.reals[rid].fwd == L.FWD_NAT:
                c.flags = L.CONN_F_OUT
                # as the data path keys it: a real server of port 0 (firewall-mark services)
                # answers from the port the client asked for, not from 0
                cm.set(ck.reverse(self.table.reals[rid]).pack(), c.pack())
            done += 1
        for proto, caddr, vaddr, vport, fwmark, raddr, rport, age, timeout in temps:
            st, rid = self.rid_of(proto, vaddr, vport, raddr, rport, fwmark)
            if rid is None:
                skipped += 1
                continue
            key = L.PERSIST_KEY.pack(L.pack_addr(caddr), L.pack_addr(vaddr), L.pack_port(vport), proto,
                                     L.family_of(caddr), fwmark)
            old = pm.get(key)
            if owned_since_ns is not None:
                mine = old if old is not None else self.maps["lb_persist_embryo"].get(key)
                if mine is not None and owned(L.PERSIST.unpack(mine)[0]):
                    skipped += 1
                    continue
            try:
                # not idle: this director's next sweep looks at the connections it controls
                pm.set(key, L.PERSIST.pack(L.stamp_ago(now, age), rid, timeout & L.PERSIST_TIMEOUT))
            except BpfError as e:
                # lb_persist has no eviction: full, the template stays out (as the data path's
                # persist_table_full), and the rest of the batch goes on
                if e.errno not in (errno.E2BIG, errno.ENOMEM):
                    raise
                skipped += 1
                continue
            if old is not None:
                count(L.PERSIST.unpack(old)[1], 2, -1)
            count(rid, 2, 1)
            done += 1
        m = 0xFFFFFFFF
        for rid, (a, i, p) in delta.items():
            if not (a or i or p):
                continue
            k = L.U32.pack(rid)
            sa, si, sp, _ = L.REAL_COUNTS.unpack(self.maps["lb_real_swept"].get(k))
            # counts = lb_real_conns - lb_real_swept: counting one more takes one off swept
            self.txn.set("lb_real_swept", k, L.REAL_COUNTS.pack((sa - a) & m, (si - i) & m, (sp - p) & m, 0))
            write_sched_off(self.txn, (rid,))
        self.txn.writes += done
        return done, skipped


class SchedBaseline:
    """quiesce_server: per real server, the connections its lb_real_base leaves out of the
    schedulers' counts (real id -> their lb_conns keys)."""

    def __init__(self, maps: dict, txn: MapTxn):
        self.maps = maps
        self.txn = txn
        self.sched_base: dict[int, set[bytes]] = {}

    def forget(self, rid: int) -> None:
        """A new (or reused) real server id has no baseline."""
        self.sched_base.pop(rid, None)

    def reset(self, rids) -> None:
        """At adoption: which connections a quiesce_server baseline left out died with the old
        daemon, so the schedulers go back to the true counts."""
        zero = L.REAL_COUNTS.pack(0, 0, 0, 0)
        base = dict(self.maps["lb_real_base"].items())      # one dump, not a lookup per real server
        for rid in rids:
            if base.get(L.U32.pack(rid)) not in (None, zero):
                self.maps["lb_real_base"].set(L.U32.pack(rid), zero)
        # and the schedulers' offsets (lb_real_sched_off) from lb_real_swept alone
        write_sched_off(self.txn, rids, swept=dict(self.maps["lb_real_swept"].items()), base={})

    def restart(self, rids: set[int], reals) -> int:
        """Every real server in rids (one service's) gets as baseline (lb_real_base) the
        connections it has now: lc/wlc/sed/nq/ovf count only newer ones, so a joining server
        is not flooded.  lb list, thresholds and draining keep the true counts.  The baseline
        follows those old connections as they end (refresh).  Returns how many were left out."""
        snap: dict[int, set[bytes]] = {rid: set() for rid in rids}
        for k, v in self.maps["lb_conns"].items():
            c = L.Conn.unpack(v)
            if c.real in rids and not c.flags & L.CONN_F_OUT and not L.ConnKey.unpack(k).dir:
                snap[c.real].add(k)
        for rid, keys in snap.items():
            self.sched_base[rid] = keys
        self.refresh(reals, rids)
        return sum(len(k) for k in snap.values())

    def refresh(self, reals, rids=None) -> int:
        """Lower the baselines by the connections that have ended since (or changed between
        active and inactive); returns the connections still left out.  ``reals``: the real
        servers in use (a baseline of any other id is dropped once written)."""
        cm = self.maps["lb_conns"]
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
            value = L.REAL_COUNTS.pack(act, inact, 0, 0)
            key = L.U32.pack(rid)
            if self.maps["lb_real_base"].get(key) != value:
                self.txn.set("lb_real_base", key, value)
                write_sched_off(self.txn, (rid,))
            if not keys or rid not in reals:
                self.sched_base.pop(rid, None)
            left += act + inact
        return left
