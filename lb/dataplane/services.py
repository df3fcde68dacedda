"""The XDP data plane's service writer: the in-memory view of the services and real servers
it has written (ids, list order), and apply(), which turns a TableSpec into the writes that make
the maps forward it -- services, real servers and their next hops, dest lists, scheduler
tables (dh/sh buckets, mh via lb/dataplane/mhtable.py, the rr/wrr state), thresholds,
draining, firewall-mark port ranges, timeouts and globals.

Real server list order and scheduler state follow IPVS: each added real server goes to the
front of its service's list, and the rr cursor / wrr mark change on every add, delete and
weight update exactly as ip_vs_rr.c / ip_vs_wrr.c change them (lb.sched.model holds the rules).
The writes go through a MapTxn (lb/dataplane/txn.py), which orders them for the data path.
apply() walks only the services whose spec differs from the one last applied (or that have
draining real servers); see ServiceTable._unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import ipaddress
import logging
import math
from dataclasses import dataclass, field

from lb.sched import model as sched_model

from . import layout as L
from .errors import ApplyFailed, DataplaneError, TableDoesNotFit
from .lblc import LblcExpiry
from .mhtable import MhTables
from . import nexthop
from .nexthop import NextHopError
from .program import Sizes, state_timeouts
from .rates import RateEstimator
from .spec import RealSpec, ServiceSpec, TableSpec
from .txn import MapTxn, UndoLog

log = logging.getLogger("lb.dataplane")


@dataclass
class _SvcState:
    id: int
    key: L.SvcKey
    sched: str
    dests: list[tuple[tuple, int]] = field(default_factory=list)   # [((addr, port), real id)] list order
    name: str = ""


class ServiceTable:
    """What the data plane has written, and the writer.  Other parts are told when an id
    starts afresh: the rate estimator, lblc expiry and the quiesce_server baseline."""

    def __init__(self, maps: dict, txn: MapTxn, sizes: Sizes, resolver, rates: RateEstimator,
                 lblc: LblcExpiry, baseline):
        self.maps = maps
        self.txn = txn
        self.sizes = sizes
        self.resolver = resolver                # addr, need_onlink=bool -> NextHop
        self.rates = rates
        self.lblc = lblc
        self.baseline = baseline                # conntable.SchedBaseline
        self.services: dict[L.SvcKey, _SvcState] = {}
        self.reals: dict[int, L.Real] = {}      # every id ever handed out and not reusable yet
        # removed real servers a re-add takes back, connections and counters and all (IPVS's
        # trash: ip_vs_trash_get_dest): (service id, packed address, port, forward) -> id
        self.retired: dict[tuple, int] = {}
        self.free_svc_ids: list[int] = []
        self.next_svc_id = 0
        self.next_real_id = 0
        self.draining: set[tuple] = set()   # (service key, (addr, port)) removed but still active
        self.last_table: TableSpec | None = None
        # service key -> the ServiceSpec its entries were last written from, by an apply that
        # succeeded (or is under way: _snapshot / _restore keep it with the rest); see _unchanged
        self.applied: dict = {}
        self._nh_cache: dict = {}
        self._nh_index: dict | None = None      # _nexthop_index's, until the next apply
        # (address, onlink) -> (why, kept) of each next hop the last apply or refresh that
        # resolved it could not: kept, its real servers forward to the next hop resolved before;
        # else they get no new connections (REAL_F_NO_NEXTHOP) until it answers (`lb status`)
        self.nexthop_errors: dict[tuple, tuple[str, bool]] = {}
        self.ranges: dict[bytes, bytes] = {}    # lb_fwm_ranges as written
        self.mh: MhTables | None = None         # mh services' Maglev tables, made at load
        self._snap_reals: dict | None = None    # during apply: the reals as they were (_own_real)
        self._snap_svcs: dict | None = None     # during apply: copies of the services it changes (_own_svc)
        self._local_left = 0                    # the director's own addresses lb_local_addrs had no room for

    def stat_id_lists(self) -> dict[str, list[int]]:
        """{stats map: [id, ...]} of every service and real server in use (the rate estimator's,
        every 2 s: lists, not a tuple per id)."""
        reals: list[int] = []
        for st in self.services.values():
            reals.extend(rid for _, rid in st.dests)
        return {"lb_svc_stats": [st.id for st in self.services.values()], "lb_real_stats": list(dict.fromkeys(reals))}

    def lblc_users(self) -> dict[int, str]:
        """service id -> scheduler of the lblc / lblcr services."""
        return {st.id: st.sched for st in self.services.values() if st.sched in L.LBLC_SCHEDULERS}

    def adopt(self) -> None:
        """Rebuild the in-memory view from the pinned maps of a previous instance."""
        self._nh_index = None
        m = self.maps
        used_svc = set()
        weights: dict[int, int] = {}     # real id -> its weight, from its service's dest list
        # the arrays in one dump each, not a lookup per entry (64,000 real servers)
        reals = {L.U32.unpack(k)[0]: v for k, v in m["lb_reals"].items()}
        svcs = dict(m["lb_svc"].items())
        dests = dict(m["lb_svc_dests"].items())
        for k, v in m["lb_services"].items(batch=False):
            sid = L.U32.unpack(v)[0]
            self._adopt_service(L.SvcKey.unpack(k), sid, weights, svcs, dests, reals)
            used_svc.add(sid)
        for k, v in m["lb_fwm_services"].items(batch=False):
            fwmark, sid = L.U32.unpack(k)[0], L.U32.unpack(v)[0]
            svc = L.Svc.unpack(svcs[L.U32.pack(sid)])
            self._adopt_service(L.FwmKey(fwmark, addr=svc.addr), sid, weights, svcs, dests,
                                reals)   # the family's zero address
            used_svc.add(sid)
        for k, v in m["lb_fwm_ranges"].items(batch=False):
            self.ranges[k] = v
        self.next_svc_id = max(used_svc) + 1 if used_svc else 0
        self.free_svc_ids = [i for i in range(self.next_svc_id) if i not in used_svc]
        for rid in range(self.sizes.reals):
            raw = reals[rid]
            if raw != b"\0" * len(raw):
                self.reals[rid] = L.Real.unpack(raw, weights.get(rid, 0))   # a retired one's is 0
                self.next_real_id = rid + 1
                a, p, fam, fwd, *_rest = L.REAL.unpack(raw)
                if fam == 0 and self.reals[rid].svc in used_svc:
                    self.retired[(self.reals[rid].svc, a, p, fwd)] = rid

    def _adopt_service(self, key, sid: int, weights: dict[int, int], svcs: dict, dests: dict, reals: dict) -> None:
        svc = L.Svc.unpack(svcs[L.U32.pack(sid)])
        st = _SvcState(sid, key, L.SCHEDULER_NAMES.get(svc.sched, "wlc"))
        for rid, weight, _f in L.unpack_dests(dests[L.U32.pack(sid)], svc.nreals):
            weights[rid] = weight
            real = L.Real.unpack(reals[rid])
            st.dests.append(((real.addr, real.port), rid))
        self.services[key] = st
        if st.sched == "mh":
            self.mh.adopt(st.id, svc.mh_size, [rid for _, rid in st.dests])

    def _alloc_svc(self) -> int:
        if self.free_svc_ids:
            return self.free_svc_ids.pop(0)
        if self.next_svc_id >= self.sizes.services:
            raise DataplaneError(f"no free service slot (tables.services = {self.sizes.services})")
        self.next_svc_id += 1
        return self.next_svc_id - 1

    def real_conns(self, rid: int) -> tuple[int, int]:
        k = L.U32.pack(rid)
        return L.real_counts(self.txn.get("lb_real_conns", k), self.txn.get("lb_real_swept", k))

    def _alloc_real(self) -> int:
        if self.next_real_id < self.sizes.reals:
            self.next_real_id += 1
            rid = self.next_real_id - 1
        else:
            # reuse a removed real server's id once no connection points at it any more
            in_use = {r for s in self.services.values() for _, r in s.dests}
            for rid, real in self.reals.items():
                if rid not in in_use and real.family == 0 and self.real_conns(rid) == (0, 0, 0):
                    break
            else:
                raise DataplaneError(f"no free real server slot (tables.real_servers = {self.sizes.reals})")
            key = self._retired_key(real)
            if self.retired.get(key) == rid:    # another server's now: not to be taken back
                del self.retired[key]
        self.baseline.forget(rid)
        self.rates.forget("lb_real_stats", rid)
        self.txn.new_real(rid)                    # its counters start from zero
        return rid

    def _resolve(self, addr, onlink: bool):
        """Next hop of addr, once per address per apply/refresh (services share servers)."""
        return nexthop.cached(self._nh_cache, (addr, onlink), lambda: self.resolver(addr, need_onlink=onlink))

    def _real_entry(self, spec: RealSpec, svc_id: int, old: L.Real | None, resolve: bool = True) -> L.Real:
        """The lb_reals entry for spec.  resolve=False keeps old's next hop (applies that only
        change weights do no netlink work; refresh_nexthops re-resolves on its own schedule)."""
        real = L.Real(spec.address, spec.port, L.FORWARDS[spec.forward], spec.weight, svc=svc_id,
                      family=L.family_of(spec.address), u_threshold=spec.u_threshold, l_threshold=spec.l_threshold)
        if old is not None:
            real.pos = old.pos
        if not resolve and old is not None and old.family and old.fwd == real.fwd:
            _keep_nexthop(real, old)
            real.flags |= old.flags & L.REAL_F_NO_NEXTHOP
            return real
        return self._with_nexthop(real, old)

    def _with_nexthop(self, real: L.Real, old: L.Real | None) -> L.Real:
        """real with its next hop resolved (and, for a tunnel, our source address toward it and
        the link's MTU); when that fails, old's next hop if it had one, else no new connections
        (REAL_F_NO_NEXTHOP) until it answers."""
        key = (real.addr, real.fwd == L.FWD_DR)
        try:
            nh = self._resolve(*key)
            real.ifindex, real.mac, real.src_mac = nh.ifindex, nh.mac, nh.src_mac
            if real.fwd == L.FWD_TUNNEL:
                if nh.src_addr is None:
                    raise NextHopError(f"real server {real.addr}: no source address of ours toward it "
                                       f"(on {nh.ifname}) for the tunnel's outer header")
                real.tun_src = L.pack_addr(nh.src_addr)
                real.mtu = nh.mtu
        except NextHopError as e:
            if old is not None and old.family and not old.flags & L.REAL_F_NO_NEXTHOP:
                _keep_nexthop(real, old)
                self.nexthop_errors[key] = (str(e), True)
            else:
                log.warning("%s; it gets no new connections until it answers", e)
                real.flags |= L.REAL_F_NO_NEXTHOP
                self.nexthop_errors[key] = (str(e), False)
        else:
            if self.nexthop_errors:
                self.nexthop_errors.pop(key, None)
        return real

    def apply(self, table: TableSpec, nexthops: dict | None = None) -> int:
        """Make the maps forward `table`, all or nothing; returns the number of map writes it
        took.  When a write fails part-way, every entry written is written back (the undo log,
        lb/dataplane/txn.py) and the in-memory view goes back to what it was: ApplyFailed says
        what failed and whether the previous table is back.  plan() first keeps the failures
        that can be foreseen (a full table) from getting that far.  nexthops: {(address,
        onlink): NextHop or NextHopError} resolved beforehand, outside the data plane's lock
        (nexthops_ahead): taken as they are; any other next hop is resolved here."""
        self._nh_index = None
        snap = self._snapshot()
        self._snap_reals, self._snap_svcs = snap[1], snap[-1]
        undo = self.txn.undo = UndoLog()
        self.txn.fresh_ids = (self.next_real_id, self.next_svc_id)
        mh_snap = self.mh.begin(undo)
        try:
            with nexthop.session():           # one read of each neighbour table for the whole apply
                n = self._apply(table, nexthops)
        except Exception as e:
            self.txn.abort()
            what = str(e) if isinstance(e, DataplaneError) else f"{type(e).__name__}: {e}"
            try:
                undo.restore()
                self.mh.rollback(mh_snap)
            except Exception as e2:
                self._restore(snap)
                self.applied = {}       # the maps hold part of each table: nothing is known unchanged
                log.error("applying the table failed (%s) and so did writing the previous one back: %s",
                          what, e2)
                raise ApplyFailed(f"{what}; writing the previous table back failed too ({e2}): the maps "
                                  f"hold part of each (lb list shows them)", restored=False) from e
            self._restore(snap)
            log.error("applying the table failed (%s): the previous table is back", what)
            raise ApplyFailed(f"{what}; the previous table is back", restored=True) from e
        else:
            self.mh.commit()
        finally:
            self.txn.undo = None
            self.rates.dropped = None
            self._snap_reals = self._snap_svcs = None
        return n

    def _snapshot(self) -> tuple:
        """The in-memory view, for _restore after a failed apply: the containers are copied;
        the Real entries and the _SvcStates are shared, which is why apply replaces a Real it
        changes (_own_real) instead of changing it in place, and keeps a copy of a service
        before it changes it (_own_svc; the last item, filled during the apply): an apply that
        changes one service copies one."""
        return (dict(self.services), dict(self.reals), list(self.free_svc_ids), self.next_svc_id,
                self.next_real_id, set(self.draining), self.last_table, dict(self.ranges), dict(self.lblc.tables),
                dict(self.lblc.expiration), self.rates.journal(), dict(self.baseline.sched_base),
                dict(self.applied), dict(self.retired), {})

    def _restore(self, snap: tuple) -> None:
        (self.services, self.reals, self.free_svc_ids, self.next_svc_id, self.next_real_id, self.draining,
         self.last_table, self.ranges, self.lblc.tables, self.lblc.expiration, rates,
         self.baseline.sched_base, self.applied, self.retired, svcs) = snap
        self.services.update(svcs)
        self.rates.restore(rates)
        self._snap_reals = self._snap_svcs = None

    def _own_svc(self, key, st: _SvcState) -> None:
        """st (self.services[key]) is about to change: keep a copy of it as it was for _restore."""
        if self._snap_svcs is not None and key not in self._snap_svcs:
            self._snap_svcs[key] = dataclasses.replace(st, dests=list(st.dests))

    def _own_real(self, rid: int) -> L.Real:
        """reals[rid], safe to change in place: a copy when the entry predates this apply."""
        real = self.reals[rid]
        if self._snap_reals is not None and self._snap_reals.get(rid) is real:
            real = copy.copy(real)
            self.reals[rid] = real
        return real

    def _apply(self, table: TableSpec, nexthops: dict | None = None) -> int:
        before = self.txn.writes
        self.last_table = table
        self._nh_cache = dict(nexthops or {})
        want = {key_of(s): s for s in table.services}
        # the VIP filter lets through the addresses of the services there are and will be, until
        # the table is written; then only those there are
        self._write_filter("lb_vip_filter", self._vip_addrs() | {s.address for s in table.services if not s.fwmark}
                          | {g.address for s in table.services if s.fwmark for g in s.groups})
        # a removed firewall-mark service stops matching before its slot is freed
        self._sync_ranges({k: s for k, s in want.items() if isinstance(k, L.FwmKey) and k in self.services})
        # removals: each service's lb_services / lb_fwm_services entry goes at once, its parts
        # (flushed in reverse stage order) after; see lb/dataplane/txn.py
        self.txn.begin()
        for key in [k for k in self.services if k not in want]:
            self._remove_service(key)
        self.txn.end(reverse=True)
        self.draining = {d for d in self.draining if d[0] in want}
        # additions and changes, flushed map by map in txn.STAGES order: every service is whole
        # before its lb_services / lb_fwm_services entry is written.  A service unchanged since
        # the last apply is skipped (_unchanged): a one-server change walks one service
        self.txn.begin()
        applied = self.applied
        changed = [(key, spec) for key, spec in want.items() if not self._unchanged(key, spec)]
        self._ask_nexthops(changed)
        walked = 0
        for key, spec in changed:
            walked += 1
            drains = self._drains(key, spec)
            self._apply_service(key, spec, drains)
            if drains:
                applied.pop(key, None)      # walked again next time: drains end with their connections
            else:
                applied[key] = spec
        self.txn.end()
        self._sync_ranges(want)
        self._write_filter("lb_vip_filter", self._vip_addrs())
        self._sync_addrs("lb_vip_addrs", self._vip_addrs())
        self._sync_local_addrs(table.local_addrs)
        self._apply_timeouts(table.timeouts)
        self._apply_icmp_limit(table.defense)
        g = L.U32.pack(L.G_EXPIRE_NODEST)
        if self.maps["lb_globals"].get(g) != L.U32.pack(int(table.expire_nodest_conn)):
            self.txn.set("lb_globals", g, L.U32.pack(int(table.expire_nodest_conn)))
        self.lblc.expiration = {"lblc": table.lblc_expiration, "lblcr": table.lblcr_expiration}
        g = L.U32.pack(L.G_LBLCR_EXPIRATION)
        if self.maps["lb_globals"].get(g) != L.U32.pack(table.lblcr_expiration):
            self.txn.set("lb_globals", g, L.U32.pack(table.lblcr_expiration))
        n = self.txn.writes - before
        log.info("applied %d services (%d walked, the rest unchanged): %d map writes", len(want), walked, n)
        return n

    def _ask_nexthops(self, changed: list) -> None:
        """Before the services that changed are written: the next hops of the real servers they
        add (and that were not resolved ahead) asked for all at once (the resolver's ask, where
        it has one), so that those whose MAC the kernel does not know yet are waited for
        together, not one timeout each."""
        ask = getattr(self.resolver, "ask", None)
        if ask is None:
            return
        pairs = self._added_nexthops(changed) - self._nh_cache.keys()
        if pairs:
            ask(pairs)

    def _added_nexthops(self, changed: list) -> set:
        """(address, onlink) of the next hops the real servers that ``changed`` ((key, spec) of
        the services an apply walks) add: a server new to its service, or with another
        forwarding method -- what the apply resolves; a server that stays keeps its next hop."""
        pairs = set()
        for key, spec in changed:
            st = self.services.get(key)
            have = {(self.reals[rid].addr, self.reals[rid].fwd) for _, rid in st.dests} if st else set()
            for r in spec.reals:
                if (r.address, L.FORWARDS[r.forward]) not in have:
                    pairs.add((r.address, r.forward == "dr"))
        return pairs

    def nexthops_ahead(self, table: TableSpec) -> list:
        """The next hops apply(table) would resolve, (address, onlink) each once, for the caller
        to resolve before it takes the data plane's lock and hand to apply: an apply adding real
        servers not up yet waited under the lock for their ARP answers (up to 3 s), and ~0.4 ms
        an address for the others; an HA import and the sweep's end waited with it.  Reads the
        in-memory view only (the caller holds the lock)."""
        changed = [(key_of(s), s) for s in table.services if not self._unchanged(key_of(s), s)]
        return sorted(self._added_nexthops(changed), key=lambda p: (p[0].version, p[0], p[1]))

    def _unchanged(self, key, spec: ServiceSpec) -> bool:
        """Whether _apply_service(key, spec) would write nothing, known without reading a map
        or a real server: spec is the one the service was last written from (or equal to it:
        ServiceSpec.same_as), and that apply left it no draining real server (applied has no
        entry for a service written with drains: their connection counts decide when they go,
        so it stays on the full path until they have).  Nothing else _apply_service reads
        moves between applies: the service's lb_svc, lb_reals and dest list are written only by
        apply, by refresh_nexthops (next hops, which apply keeps for a real server that stays)
        and by the sweep's write_dests (overload flags, as apply would write them); the rr
        cursor and wrr mark (the data path moves them), the mh last weights and the overload
        state are read only to write a service that changed."""
        old = self.applied.get(key)
        return old is not None and old.same_as(spec)

    def _drains(self, key: L.SvcKey, spec: ServiceSpec) -> set[tuple]:
        """The real servers of the service that leave it but stay, at weight 0, until the last
        connection pointing at them has ended or expired: removal drains instead of cutting
        (IPVS drops such packets at once).  Half-open and closing connections count too, so a
        client between SYN and ACK is not cut off."""
        st = self.services.get(key)
        if st is None:
            return set()
        drains = self._drain_set(st, spec)
        for rkey, _ in st.dests:
            n = drains.get(rkey)
            if n is None:
                if self.draining:
                    self.draining.discard((key, rkey))
            elif (key, rkey) not in self.draining:
                log.info("draining real server %s:%d of %s: weight 0 until its %d connections end",
                         rkey[0], rkey[1], _svc_name(key), n)
                self.draining.add((key, rkey))
        return set(drains)

    def _drain_set(self, st: _SvcState, spec: ServiceSpec) -> dict[tuple, int]:
        """The real servers of st that spec leaves out but that stay, draining: (addr, port) ->
        their connections (kept or dead servers do not drain; idle ones just leave)."""
        wanted = {r.key for r in spec.reals}
        dead = set(spec.dead)
        out = {}
        for rkey, rid in st.dests:
            if rkey in wanted or rkey in dead:
                continue
            active, inactive, _ = self.real_conns(rid)
            if active + inactive:
                out[rkey] = active + inactive
        return out

    def plan(self, table: TableSpec) -> None:
        """What apply(table) would need, checked against what the maps can hold, writing
        nothing: service ids, each service's real server slots (its draining servers keep
        theirs until their connections end), real server ids (the same allocation as apply,
        in the same order: a removed server's id is free once no connection counts against
        it), firewall-mark port ranges, schedulers.  TableDoesNotFit names every problem."""
        sz = self.sizes
        want = {key_of(s): s for s in table.services}
        problems = []
        if len(want) > sz.services:
            problems.append(f"{len(want)} virtual services, but tables.services is {sz.services}")
        idle = lambda rid: self.real_conns(rid) == (0, 0, 0)      # noqa: E731 (_alloc_real's test)
        # ids free for reuse, counted (which ones does not matter here): those removals free, and
        # the removed servers' of earlier applies, scanned for only once the fresh ids run out
        free = 0
        retired_counted = False
        # removed servers a re-add takes back (their own ids, not free for others)
        revive = {self.retired[k] for key, spec in want.items() if self.retired and key in self.services
                  for r in spec.reals if (k := self._revivable(self.services[key], r)) in self.retired} \
            if self.retired else set()
        for key, st in self.services.items():
            if key not in want:
                free += sum(1 for _, rid in st.dests if idle(rid))
        fresh = sz.reals - self.next_real_id
        adds = short = 0
        for key, spec in want.items():
            if self._unchanged(key, spec):
                continue        # fits as it is: no server to add, none leaving, no drain
            name = f"virtual service {spec.name} ({_svc_name(key)})" if spec.name else \
                f"virtual service {_svc_name(key)}"
            if spec.scheduler not in L.SCHEDULERS:
                problems.append(f"{name}: unknown scheduler {spec.scheduler!r}")
            wanted = {r.key for r in spec.reals}
            st = self.services.get(key)
            drains = self._drain_set(st, spec) if st is not None else {}
            if len(wanted) + len(drains) > sz.svc_reals:
                problems.append(
                    f"{name}: {len(wanted)} real servers + {len(drains)} draining "
                    f"({', '.join(f'{a}:{p}' for a, p in sorted(drains, key=str))}: they keep their slot until "
                    f"their connections end) > tables.reals_per_service = {sz.svc_reals}")
            need = len(wanted)
            if st is not None:
                need -= sum(1 for rkey, _ in st.dests if rkey in wanted)
                need -= sum(1 for r in spec.reals if self._revivable(st, r) in revive)   # taken back: no new id
                free += sum(1 for rkey, rid in st.dests if rkey not in wanted and rkey not in drains and idle(rid))
            adds += need
            take = min(need, fresh)
            fresh -= take
            if need > take and not retired_counted:
                in_use = {rid for st in self.services.values() for _, rid in st.dests}
                free += sum(1 for rid, real in self.reals.items()
                            if real.family == 0 and rid not in in_use and rid not in revive and idle(rid))
                retired_counted = True
            take2 = min(need - take, free)
            free -= take2
            short += need - take - take2
        if short:
            problems.append(f"no free real server slot for {short} of the {adds} real servers to add: "
                            f"tables.real_servers = {sz.reals}, and a removed server's slot is free only "
                            f"once its connections have ended")
        ranges: dict[tuple, int] = {}
        for key, spec in want.items():
            if isinstance(key, L.FwmKey):
                for g in spec.groups:
                    ranges[(g.protocol, g.address)] = ranges.get((g.protocol, g.address), 0) + 1
        for (proto, addr), n in sorted(ranges.items(), key=str):
            if n > L.FWM_RANGES:
                problems.append(f"{proto.upper()} {addr}: {n} port ranges of firewall-mark services, at most "
                                f"{L.FWM_RANGES} per address and protocol")
        if len(ranges) > sz.services:
            problems.append(f"{len(ranges)} (address, protocol) pairs of firewall-mark services, but "
                            f"tables.services is {sz.services}")
        if problems:
            raise TableDoesNotFit("\n".join(problems))

    def finish_drains(self) -> int:
        """Remove draining real servers whose connections have all ended or expired."""
        done = 0
        for key, rkey in self.draining:
            st = self.services.get(key)
            rid = next((r for k, r in st.dests if k == rkey), None) if st else None
            if rid is None or sum(self.real_conns(rid)[:2]) == 0:
                done += 1
        if done and self.last_table is not None:
            self.apply(self.last_table)
        return done

    def _vip_addrs(self) -> set:
        """Every address a written service listens on: address/port services' VIPs and the
        firewall-mark port groups' addresses."""
        out = {key.addr for key in self.services if isinstance(key, L.SvcKey)}
        out |= {L.SvcKey.unpack(k).addr for k in self.ranges}
        return out

    def _write_filter(self, mapname: str, addrs) -> None:
        """A filter of hashed addresses (lb_vip_filter: lb_xdp_public's first test; lb_local_filter)
        with the bits of addrs set"""
        value = L.pack_vip_filter(addrs)
        key = L.U32.pack(0)
        if self.maps[mapname].get(key) != value:
            self.txn.set(mapname, key, value)

    def _sync_addrs(self, mapname: str, addrs) -> None:
        """A filter's addresses exactly (lb_vip_addrs, lb_local_addrs), each with a bit per
        family (1 << LB_AF_*; its key is the 16 bytes, which an IPv4 address and an IPv6 one can
        share), for BPF's lb_from_a_vip and lb_from_the_director.  Read back each apply (a few
        entries, one batch), so a map this lb adopted from an older one, which had none, is
        filled; the stale ones go first, so the map never holds more than its size."""
        want: dict[bytes, int] = {}
        for a in addrs:
            k = L.pack_addr(a)
            want[k] = want.get(k, 0) | 1 << L.family_of(a)
        have = dict(self.maps[mapname].items())
        for k in sorted(have.keys() - want.keys()):
            self.txn.delete(mapname, k)
        for k, fams in sorted(want.items()):
            if have.get(k) != L.U32.pack(fams):
                self.txn.set(mapname, k, L.U32.pack(fams))

    def _sync_local_addrs(self, addrs) -> None:
        """The director's own addresses (TableSpec.local_addrs) into lb_local_addrs, then
        lb_local_filter's bits (a bit whose entry is missing costs a lookup that misses): BPF's
        lb_from_the_director schedules no new connection from one.  Up to LB_LOCAL_ADDRS keys,
        IPv4 first, the rest left out (said when their number changes)."""
        keys: set[bytes] = set()
        kept, left = [], 0
        for a in sorted(addrs, key=lambda a: (a.version, a)):
            k = L.pack_addr(a)
            if k not in keys and len(keys) >= L.LOCAL_ADDRS:
                left += 1
                continue
            keys.add(k)
            kept.append(a)
        self._sync_addrs("lb_local_addrs", kept)
        self._write_filter("lb_local_filter", kept)
        if left != self._local_left:
            self._local_left = left
            if left:
                log.warning("the director has %d addresses more than lb_local_addrs holds (%d): a new "
                            "connection forged from one of those is scheduled", left, L.LOCAL_ADDRS)

    def _apply_icmp_limit(self, defense) -> None:
        """The tunnel's too-big answers: ns between two (LB_NONE: none) and the burst"""
        rate = defense.icmp_msgs_per_sec
        for g, v in ((L.G_ICMP_INTERVAL, L.LB_NONE if rate == 0 else max(1, 1_000_000_000 // rate)),
                     (L.G_ICMP_BURST, defense.icmp_msgs_burst)):
            k = L.U32.pack(g)
            if self.maps["lb_globals"].get(k) != L.U32.pack(v):
                self.txn.set("lb_globals", k, L.U32.pack(v))

    def _apply_timeouts(self, timeouts) -> None:
        for i, v in enumerate(state_timeouts(*timeouts)):
            k = L.U32.pack(i)
            if self.maps["lb_timeouts"].get(k) != L.U32.pack(v):
                self.txn.set("lb_timeouts", k, L.U32.pack(v))

    def _sync_ranges(self, want: dict) -> None:
        """lb_fwm_ranges from the firewall-mark services in `want` that have a slot: one value
        per (VIP, protocol) with its ranges in port order; lb_globals[G_FWM_KEYS] says whether
        the data path needs to look at all."""
        by_vip: dict[bytes, list[tuple[int, int, int]]] = {}
        for key, spec in want.items():
            if not isinstance(key, L.FwmKey):
                continue
            st = self.services.get(key)
            if st is None:
                continue
            for g in spec.groups:
                vk = L.SvcKey(L.PROTO_NUMBERS[g.protocol], g.address, 0).pack()
                by_vip.setdefault(vk, []).append((g.low, g.high, st.id))
        new = {k: L.pack_ranges(sorted(v)) for k, v in by_vip.items()}
        g = L.U32.pack(L.G_FWM_KEYS)
        if len(new) > len(self.ranges):       # the count goes up before entries appear
            self.txn.set("lb_globals", g, L.U32.pack(len(new)))
        for k, v in new.items():
            if self.ranges.get(k) != v:
                self.txn.set("lb_fwm_ranges", k, v)
        for k in [k for k in self.ranges if k not in new]:
            self.txn.delete_now("lb_fwm_ranges", k)
            self.txn.writes += 1
        if self.maps["lb_globals"].get(g) != L.U32.pack(len(new)):
            self.txn.set("lb_globals", g, L.U32.pack(len(new)))
        self.ranges = new

    def _remove_service(self, key) -> None:
        st = self.services.pop(key)
        self.applied.pop(key, None)
        if isinstance(key, L.FwmKey):
            self.txn.delete_now("lb_fwm_services", L.U32.pack(key.fwmark))
        else:
            self.txn.delete_now("lb_services", key.pack())
        self.txn.writes += 1
        # its id goes to the next new service: none of its servers is taken back there, neither
        # those it has nor those retired earlier (a failed health check) as revivable in it
        for _, rid in st.dests:
            self._retire_real(rid, revivable=False)
        for k in [k for k in self.retired if k[0] == st.id]:
            self._retire_real(self.retired.pop(k), revivable=False)
        self.txn.set("lb_svc", L.U32.pack(st.id), L.Svc(key.addr, key.port, key.proto, 0).pack())
        self.lblc.flush(st.id)
        self._mh_drop(st.id)
        self.free_svc_ids.append(st.id)
        log.info("removed virtual service %s", _svc_name(key))

    @staticmethod
    def _retired_key(real: L.Real) -> tuple:
        return (real.svc, L.pack_addr(real.addr), L.pack_port(real.port), real.fwd)

    @staticmethod
    def _revivable(st: _SvcState, r: RealSpec) -> tuple:
        """The retired key a real server of st's spec would be taken back by."""
        return (st.id, L.pack_addr(r.address), L.pack_port(r.port), L.FORWARDS[r.forward])

    def _retire_real(self, rid: int, revivable: bool = True) -> None:
        # family 0: packets of its remaining connections drop (IPVS expire_nodest_conn = 0)
        real = self._own_real(rid)
        if revivable:
            self.retired[self._retired_key(real)] = rid
        else:
            # no service: its id may go to the next new service, and a restart's adopt() takes a
            # retired server of a live service id as revivable (its counts would come back)
            real.svc = L.LB_NONE
        real.family = 0
        real.weight = 0
        self.mh.last.pop(rid, None)         # a reused id starts with a new last weight
        self.txn.set("lb_reals", L.U32.pack(rid), real.pack())

    def _apply_service(self, key: L.SvcKey, spec: ServiceSpec, drains: set[tuple] = frozenset()) -> None:
        """Write one service: spec's real servers, plus `drains` (real servers it keeps at
        weight 0 while their connections last)."""
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
            self._own_svc(key, st)
            cl, cw = L.SCHED_STATE.unpack(self.txn.get("lb_sched_state", L.U32.pack(st.id)))
            cursor = None if cl == L.POS_HEAD or cl >= len(st.dests) else cl
            mark = sched_model.WrrMark(cursor, cw, 0, 1)
            if st.sched != spec.scheduler:
                # a new scheduler starts from its own initial state, as ipvsadm -E does
                cursor, mark = None, sched_model.wrr_init(self._weights(st))
                st.sched = spec.scheduler
                sched_changed = True
                self.lblc.flush(st.id)     # ip_vs_lblc_done_svc: the old table goes
        wanted = {r.key: r for r in spec.reals} if st.dests else {}    # (a new list needs none)
        for rkey in drains:
            wanted[rkey] = _DRAIN
        changed = sched_changed
        dests_touched = False       # a real server added, removed or edited (IPVS's upd_dest)

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
                changed = dests_touched = True
                log.info("removed real server %s:%d from %s", rkey[0], rkey[1], name)
        # 2. updates of existing real servers (Real's == compares every packed field: the
        # same as comparing the packed entries, without packing both; the weight is not one
        # of them: it lives in the dest list only)
        kept.reverse()
        for (rkey, rid), spec_r in zip(st.dests, kept):
            old = self.reals[rid]
            if spec_r is _DRAIN:
                real = dataclasses.replace(old, weight=0, svc=st.id, family=L.family_of(old.addr),
                                           flags=L.REAL_F_DRAINING | old.flags & L.REAL_F_NO_NEXTHOP)
            else:
                real = self._real_entry(spec_r, st.id, old, resolve=False)
            if real != old or real.weight != old.weight:
                self.reals[rid] = real
                changed = dests_touched = True
            if real != old:
                self.txn.set("lb_reals", L.U32.pack(rid), real.pack())
                if (real.u_threshold, real.l_threshold) != (old.u_threshold, old.l_threshold):
                    self._thresholds_changed(rid, real)
            if real.weight != old.weight:
                dest_changed()
                log.info("real server %s:%d of %s: weight %d -> %d", rkey[0], rkey[1],
                         name, old.weight, real.weight)
        # 3. additions, in config order, each to the front of the list; the wrr mark follows
        # each one (wrr_dest_changed), its max weight and gcd kept as they grow (WrrGrow)
        # (every real server left is wanted and they are distinct: as many as wanted, none to add)
        if not st.dests:
            have = set()
        else:
            have = {rkey for rkey, _ in st.dests} if len(st.dests) < len(wanted) else None
        grow = None
        for spec_r in spec.reals if have is not None else ():
            if have and spec_r.key in have:
                continue
            real = self._real_entry(spec_r, st.id, None)
            # a server this service had (a failed health check removed it): its id back, and
            # with it the connections still pointing there and its counters, as IPVS takes a
            # dest back from its trash -- they forward again instead of dropping until expiry
            rid = self.retired.pop(self._retired_key(real), None)
            if rid is None:
                rid = self._alloc_real()
            else:
                log.info("real server %s:%d of %s back: its %d connections forward again", spec_r.address,
                         spec_r.port, name, sum(self.real_conns(rid)[:2]))
            self.reals[rid] = real
            self.txn.set("lb_reals", L.U32.pack(rid), real.pack())
            st.dests.insert(0, (spec_r.key, rid))
            if cursor is not None:
                cursor += 1
            if grow is None:
                grow = WrrGrow(self._weights(st)[1:], mark.cw)
            grow.add(real.weight)
            changed = dests_touched = True
            log.info("added real server %s:%d to %s (%s, weight %d)", spec_r.address, spec_r.port,
                     name, L.FORWARD_NAMES[real.fwd], real.weight)
        if grow is not None:
            mark = grow.mark()
        family = L.family_of(key.addr)
        persist = (spec.persistent, L.pack_mask(spec.pmask, family) if spec.persistent else bytes(16))
        flags = L.sched_flag_bits(f for f in spec.sched_flags if L.SCHED_FLAGS[f][0] == st.sched)
        flags |= L.SVC_F_SLOPPY if spec.sloppy else 0
        if not new:
            cur = L.Svc.unpack(self.txn.get("lb_svc", L.U32.pack(st.id)))
            if (cur.persist_timeout, cur.persist_mask) != persist:
                changed = True
                log.info("virtual service %s: persistence %d s mask %s", name, spec.persistent,
                         L.unpack_mask(persist[1], family))
            if cur.flags != flags or (st.sched == "mh" and cur.mh_size != spec.mh_size):
                changed = True
        if not (new or changed):
            return
        sid = L.U32.pack(st.id)
        self.write_dests(st)
        self._set_buckets(st, spec.sloppy)
        # the mh table before lb_svc only when lb_svc is to name one that is not there yet (a
        # new mh service, a change to mh or to another size); else after it: _set_mh's flush
        # then writes this service's lb_svc with its list, so the rest of the apply (seconds,
        # when a later real server does not answer ARP) never runs with the new list and the
        # old lb_svc (the list's last servers out of reach, or lb_svc naming a dropped table)
        table_first = st.sched == "mh" and (new or sched_changed or cur.mh_size != spec.mh_size)
        if table_first:
            self._set_mh(st, spec, new)
        mw, di = sched_model.wrr_params(self._weights(st))
        fwmark = key.fwmark if isinstance(key, L.FwmKey) else 0
        svc = L.Svc(key.addr, key.port, key.proto, L.SCHEDULERS[st.sched], len(st.dests), flags, mw, di,
                    persist[0], fwmark, spec.mh_size if st.sched == "mh" else 0, persist[1])
        self.txn.set("lb_svc", sid, svc.pack())
        cl = L.POS_HEAD
        if st.sched == "rr" and cursor is not None:
            cl = cursor
        elif st.sched == "wrr" and cursor is not None and not (dests_touched or sched_changed):
            cl = cursor             # a service-only edit (persistence): IPVS's wrr keeps its place
        self.txn.set("lb_sched_state", sid, L.SCHED_STATE.pack(cl, mark.cw))
        if not table_first:
            self._set_mh(st, spec, new)
        elif not new:
            self.txn.flush()        # lb_svc right after the table it names
        if new:
            self.txn.set("lb_svc_stats", sid, L.STATS.pack(0, 0, 0, 0, 0))
            self.txn.set("lb_svc_rates", sid, L.RATES.pack(0, 0, 0, 0, 0))
            self.rates.forget("lb_svc_stats", st.id)
            if fwmark:
                self.txn.set("lb_fwm_services", L.U32.pack(fwmark), L.U32.pack(st.id))
            else:
                self.txn.set("lb_services", key.pack(), L.U32.pack(st.id))

    def _canonical(self, members: list[int], rid_of) -> list[int]:
        """Active-active (sloppy): the hash tables are built from the real servers in one order
        every director shares -- by address and port, highest first (a fresh start's list order
        for servers written in ascending order) -- not from the list order, which a removal and
        re-add (a health check that failed on one director only) changes on that director alone
        and for good: its sh/dh buckets and mh slots then sent flows ECMP moved to it elsewhere."""
        def key(m):
            r = self.reals[rid_of(m)]
            a = ipaddress.ip_address(r.addr)
            return (a.version, int(a), r.port)
        return sorted(members, key=key, reverse=True)

    def _set_buckets(self, st: _SvcState, canonical: bool = False) -> None:
        """dh / sh: the 256-bucket table of list positions (a pure function of the list and
        its weights, as ip_vs_dh_reassign / ip_vs_sh_reassign rebuild it on every change),
        written before lb_svc names the scheduler.  Draining real servers are left out, as
        IPVS has deleted them (a quiesced one, weight 0 in the config, stays, as in IPVS):
        their buckets go to the others instead of sending new clients nowhere for the whole
        drain.  lb_sched_buckets is an array (an inlined lookup for dh's and sh's SYNs):
        another scheduler's entry, or a removed service's, is left as it is -- the data path
        reads it only while lb_svc names dh or sh."""
        sid = L.U32.pack(st.id)
        if st.sched not in L.BUCKET_SCHEDULERS:
            return
        members = [p for p, (_, rid) in enumerate(st.dests) if not self.reals[rid].flags & L.REAL_F_DRAINING]
        if canonical:
            members = self._canonical(members, lambda p: st.dests[p][1])
        if st.sched == "dh":
            table = sched_model.dh_table(len(members))
        else:
            weights = self._weights(st)
            table = sched_model.sh_table([weights[p] for p in members])
        self.txn.set("lb_sched_buckets", sid,
                     L.SCHED_BUCKETS.pack(*(L.LB_NONE if p is None else members[p] for p in table)))

    def _set_mh(self, st: _SvcState, spec: ServiceSpec, new: bool = False) -> None:
        """ip_vs_mh_dest_changed: rebuild the table from the list (draining real servers left
        out: IPVS has deleted them) and each server's last non-zero weight; write what changed.
        mhtable writes at once: for a service the data path can see (not new), apply's pending
        writes (its lb_reals and lb_svc_dests, and its lb_svc when staged: _apply_service) go
        first."""
        rids = [rid for _, rid in st.dests]
        last = {rid: self.mh.last_weight(rid, self.reals[rid].weight) for rid in rids}
        if st.sched != "mh":
            if st.id in self.mh.tables and not new:
                self.txn.flush()
            self._mh_drop(st.id)
            return
        if not new:
            self.txn.flush()
        members = [rid for rid in rids if not self.reals[rid].flags & L.REAL_F_DRAINING]
        if spec.sloppy:
            members = self._canonical(members, lambda rid: rid)
        table = sched_model.mh_table([(self.reals[r].addr, self.reals[r].port, last[r]) for r in members],
                                     spec.mh_size)
        before = self.mh.writes
        self.mh.write(st.id, spec.mh_size, [L.LB_NONE if p is None else members[p] for p in table], rids)
        self.txn.writes += self.mh.writes - before

    def _mh_drop(self, sid: int) -> None:
        before = self.mh.writes
        self.mh.drop(sid, forget=True)
        self.txn.writes += self.mh.writes - before

    def _weights(self, st: _SvcState) -> list[int]:
        return [self.reals[rid].weight for _, rid in st.dests]

    def _nexthop_index(self) -> dict:
        """(address, onlink) -> [(service key, real id), ...] of every real server in a list,
        kept from one apply to the next (an apply, and adopt, drop it: a refresh changes MACs,
        not addresses) -- hashing 64,000 addresses took 0.15 s under the lock at every refresh."""
        if self._nh_index is None:
            index: dict = {}
            for key, st in self.services.items():
                for _, rid in st.dests:
                    r = self.reals[rid]
                    index.setdefault((r.addr, r.fwd == L.FWD_DR), []).append((key, rid))
            self._nh_index = index
        return self._nh_index

    def nexthop_work(self) -> list:
        """(address, onlink) of every real server's next hop, each once (services share servers),
        for a refresh resolved outside the data plane's lock."""
        return list(self._nexthop_index())

    def refresh_nexthops(self, resolved: dict | None = None) -> int:
        """Re-resolve real servers whose MAC is unknown (or changed); returns updates made.
        resolved: {(address, onlink): NextHop or NextHopError} made beforehand (resolve_nexthops):
        the real servers behind those alone, nothing resolved here."""
        with nexthop.session():               # one read of each neighbour table for the whole pass
            return self._refresh_nexthops(resolved)

    def _refresh_nexthops(self, resolved: dict | None) -> int:
        self._nh_cache = {} if resolved is None else dict(resolved)
        if resolved is None:
            todo = [(st, rid) for st in self.services.values() for _, rid in st.dests]
        else:                                    # the servers behind those next hops alone
            index = self._nexthop_index()
            todo = [(self.services[key], rid) for pair in resolved for key, rid in index.get(pair, ())]
        n, touched = 0, {}
        for st, rid in todo:
            old = self.reals[rid]
            if self._same_nexthop(old, st.id):
                continue
            real = self._with_nexthop(L.Real(old.addr, old.port, old.fwd, old.weight, svc=st.id,
                                             family=L.family_of(old.addr), u_threshold=old.u_threshold,
                                             l_threshold=old.l_threshold, pos=old.pos,
                                             flags=old.flags & L.REAL_F_DRAINING), old)
            if real != old:                      # (Real's == is its lb_reals entry's: weight aside)
                self.reals[rid] = real
                self.txn.set("lb_reals", L.U32.pack(rid), real.pack())
                touched[st.id] = st
                n += 1
                log.info("real server %s:%d next hop now %s", old.addr, old.port, real.mac.hex(":"))
        for st in touched.values():
            self.write_dests(st)
        return n

    def _same_nexthop(self, old: L.Real, svc_id: int) -> bool:
        """refresh_nexthops' common case without building the entry again: old is what
        _with_nexthop would make of it (the next hop it holds is the one resolved now).  Anything
        else -- a lookup that fails, a flag to clear -- takes the full way.  Building and comparing
        every Real took most of 0.4 s every 10 s at 1000 x 64 servers."""
        if old.flags & ~L.REAL_F_DRAINING or old.svc != svc_id or old.family != L.family_of(old.addr):
            return False
        try:
            nh = self._resolve(old.addr, old.fwd == L.FWD_DR)
        except NextHopError:
            return False
        if self.nexthop_errors:              # it answers again (and its entry had kept the last one)
            self.nexthop_errors.pop((old.addr, old.fwd == L.FWD_DR), None)
        if nh.ifindex != old.ifindex or nh.mac != old.mac or nh.src_mac != old.src_mac:
            return False
        if old.fwd == L.FWD_TUNNEL:
            return nh.src_addr is not None and L.pack_addr(nh.src_addr) == old.tun_src and nh.mtu == old.mtu
        return not old.mtu and old.tun_src == _NO_TUN_SRC

    def write_dests(self, st: _SvcState) -> None:
        """lb_svc_dests of a service: each real server's weight and flags, plus OVERLOAD as BPF
        keeps it (lb_real_overload); each real server learns its position, where BPF sets and
        clears OVERLOAD in place."""
        dests = []
        for pos, (_, rid) in enumerate(st.dests):
            real = self.reals[rid]
            if real.pos != pos:
                real = self._own_real(rid)
                real.pos = pos
                self.txn.set("lb_reals", L.U32.pack(rid), real.pack())
            flags = real.flags
            if real.u_threshold and self.txn.get("lb_real_overload", L.U32.pack(rid)) != L.U32.pack(0):
                flags |= L.REAL_F_OVERLOAD
            dests.append((rid, real.weight, flags))
        self.txn.set("lb_svc_dests", L.U32.pack(st.id), L.pack_dests(dests, self.sizes.svc_reals))

    def sync_overload(self) -> int:
        """OVERLOAD in each service's list as lb_real_overload has it now (the sweep's): a list
        written from lb_real_overload read before BPF set or cleared it (the rest of an apply
        runs between the two) keeps the old flag, and BPF changes the flag only along with
        lb_real_overload -- a server kept from new connections for good, or scheduled past its
        u_threshold.  Returns the lists written again."""
        zero, n = L.U32.pack(0), 0
        for st in self.services.values():
            if not any(self.reals[rid].u_threshold for _, rid in st.dests):
                continue
            for rid, _w, flags in L.unpack_dests(self.txn.get("lb_svc_dests", L.U32.pack(st.id)), len(st.dests)):
                if self.reals[rid].u_threshold and bool(flags & L.REAL_F_OVERLOAD) != \
                        (self.txn.get("lb_real_overload", L.U32.pack(rid)) != zero):
                    self.write_dests(st)
                    n += 1
                    break
        return n

    def _thresholds_changed(self, rid: int, real: L.Real) -> None:
        """IPVS __ip_vs_update_dest: OVERLOAD goes when u_threshold is now 0 or above the total."""
        key = L.U32.pack(rid)
        act, inact, _ = self.real_conns(rid)
        if not real.u_threshold or real.u_threshold > act + inact:
            if self.txn.get("lb_real_overload", key) != L.U32.pack(0):
                self.txn.set("lb_real_overload", key, L.U32.pack(0))


# _apply_service's mark of a real server kept draining (in place of its RealSpec)
_DRAIN = object()


_NO_TUN_SRC = bytes(16)


def _keep_nexthop(real: L.Real, old: L.Real) -> None:
    real.ifindex, real.mac, real.src_mac, real.tun_src, real.mtu = old.ifindex, old.mac, old.src_mac, old.tun_src, old.mtu


def key_of(spec: ServiceSpec):
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


class WrrGrow:
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

