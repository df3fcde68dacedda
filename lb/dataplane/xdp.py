"""The XDP data plane: the Dataplane the engine drives by default.  A thin facade; each job has
its module:

    program.py    compile bpf/ with bcc, load, wire tail calls, open or adopt the pinned maps
    txn.py        the staged map writes of one apply, flushed in dependency order
    services.py   the service / real-server writer (apply, drains, next hops, scheduler tables)
    conntable.py  the connection table: sweep and recount, HA export/import, quiesce baseline
    defense.py    IPVS's defenses against floods (drop_entry, drop_packet, secure_tcp), counter watch
    rates.py      IPVS's rate estimator
    lblc.py       lblc / lblcr expiry
    attach.py     XDP attach / detach on an interface
    reader.py     the pinned maps read back as records (also `lb list` without a daemon)

Nothing else writes these maps.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time

from . import layout as L
from . import reader
from .attach import XDP_FLAGS_SKB_MODE, HeldProgram, attach_xdp, attached_prog_id, detach_xdp
from .base import Dataplane
from .conntable import CLOCK_MONOTONIC_COARSE, ConnTable, SchedBaseline
from .defense import Defender
from .errors import DataplaneError
from .lblc import LblcExpiry
from .maps import PIN_ROOT, ConnTables, PinnedMaps, have_batch, pin_dir
from .mhtable import MhTables
from . import nexthop
from .nexthop import NextHopError, resolve
from .program import Program, Sizes
from .rates import RateEstimator
from .resize import Resize, old_dir, open_dir
from .services import ServiceTable, key_of
from .spec import ServiceSpec, TableSpec
from .txn import MapTxn

log = logging.getLogger("lb.dataplane")

__all__ = ["DataplaneError", "Sizes", "XdpDataplane"]

# after a resize's attach, how long the replaced programs still get what the new maps do not
# know: the handshakes the old programs began finish meanwhile (a round trip)
RESIZE_GRACE = 2.0


def _counted(late: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(late.items()) if n) or "nothing"


class XdpDataplane(Dataplane):
    kind = "xdp"

    def __init__(self, instance: str, sizes: Sizes, pin_root: str = PIN_ROOT, resolver=resolve, *,
                 cache=True, keep_bcc: bool = False, status=None, nat: bool = False, ipv6: bool = False):
        self.instance = instance
        self.sizes = sizes
        self.pin_root = pin_root
        self.pin = pin_dir(instance, pin_root)
        self.program = Program(sizes, self.pin, cache=cache, keep_bcc=keep_bcc, status=status, nat=nat,
                               ipv6=ipv6)
        self.maps = self.program.maps           # by name, shared by every part below
        self.txn = MapTxn(self.maps, have_batch())
        self.rates = RateEstimator(self.maps, self.txn)
        self.lblc = LblcExpiry(self.maps, self.txn)
        self.baseline = SchedBaseline(self.maps, self.txn)
        self.resolver = resolver
        self.table = ServiceTable(self.maps, self.txn, sizes, self._mapping(resolver), self.rates, self.lblc,
                                  self.baseline)
        self.conns = ConnTable(self.maps, self.txn, self.table)
        self.defender = Defender(self.maps, self.txn, self.conns, sizes.embryo)
        self.attached: dict[str, int] = {}      # ifname -> xdp flags
        # attached interfaces where keep_attached found lb's program not there (gone and not
        # attached again, another in its place, the interface missing): not forwarding
        self.displaced: set[str] = set()
        self.sides: dict[str, str] = {}         # ifname -> the program's side (public, private, guard)
        self.adopted = False
        self.resize: Resize | None = None       # new [tables]: the old maps until finish_resize
        self.created = False     # this instance made the pin directory (a failed start removes it)
        self.tx_mapped: set[int] = set()        # ifindexes in lb_tx_ports
        # next hops' (ifname, ifindex) map_tx_port could not map, tried once per apply or
        # refresh: not once per real server behind them (an apply of 64,000 made 64,000 lookups)
        self.tx_tried: set[tuple[str, int]] = set()
        self._nh_cursor = 0     # where the next refresh's resolution starts (resolve_nexthops)

    # ---- the parts' state, by the names tests and tools use ----
    @property
    def bpf(self):
        """bcc's module of the compiled programs (None unless loaded with keep_bcc)."""
        return self.program.bpf

    @property
    def fns(self) -> dict:
        return self.program.fns

    @property
    def services(self) -> dict:
        return self.table.services

    @property
    def reals(self) -> dict:
        return self.table.reals

    @property
    def draining(self) -> set:
        return self.table.draining

    @property
    def ranges(self) -> dict:
        return self.table.ranges

    @property
    def mh(self) -> MhTables | None:
        return self.table.mh

    @property
    def sched_base(self) -> dict:
        return self.baseline.sched_base

    @property
    def writes(self) -> int:
        return self.txn.writes

    @property
    def batch_writes(self) -> bool:
        return self.txn.batch

    @batch_writes.setter
    def batch_writes(self, on: bool) -> None:
        self.txn.batch = on

    # ---- lifecycle ----
    def load(self) -> None:
        self.resize = Resize.recover(self.pin)
        self.adopted, differ = self.program.check_pins()
        self.created = not os.path.isdir(self.pin)
        if differ:
            self._load_resized(differ)
        else:
            self.program.load(self.adopted)
        self.table.mh = MhTables(self.maps["lb_mh_tables"], self.maps["lb_mh_last"], self.sizes.svc_reals)
        if self.adopted:
            self.table.adopt()
            self.baseline.reset(self.table.reals)
            self.conns.est_rebuild()     # the table may come from a version without the filter
            log.info("adopted %d services and %d real servers from %s", len(self.services),
                     sum(len(s.dests) for s in self.services.values()), self.pin)

    def _load_resized(self, differ: dict[str, tuple[int, int]]) -> None:
        """The running instance's maps are of other sizes (new [tables]): the programs loaded
        against maps of the new sizes, filled from the old ones, which keep serving until the
        engine attaches the new programs (lb/dataplane/resize.py)."""
        if self.resize is not None:
            # an unfinished resize's old maps: what they hold into the instance's, which go on
            # into the new sizes below (the filter is rebuilt from those once adopted)
            pinned = open_dir(self.pin)
            if "lb_conns4" in pinned and "lb_conns6" in pinned:
                pinned["lb_conns"] = ConnTables(pinned["lb_conns4"], pinned["lb_conns6"])
            try:
                self.resize.finish(pinned, lambda keys: None, counters=False)
            finally:
                for m in pinned.values():
                    m.close()
            self.resize = None
        rs = Resize(self.pin)
        want = self.sizes.expected()
        # the [tables] keys, as the running maps' sizes tell them
        keys = (("connections", "lb_conns4", 0, 1), ("connections_ipv6", "lb_conns6", 0, 1),
                ("embryonic", "lb_conns_embryo", 0, 1),
                ("services", "lb_svc", 0, 1), ("real_servers", "lb_reals", 0, 1),
                ("reals_per_service", "lb_svc_dests", 1, L.DEST.size))
        changes = [f"{key} {differ[m][i] // unit} -> {want[m][i] // unit}" for key, m, i, unit in keys
                   if m in differ and differ[m][i] != want[m][i]]
        if "lb_conns" in differ:
            changes.append(f"an older lb's one connection table of {differ['lb_conns'][0]} entries -> "
                           f"IPv4 {want['lb_conns4'][0]} and IPv6 {want['lb_conns6'][0]}")
        log.info("[tables] changed (%s): moving the running instance's maps into maps of the new sizes",
                 ", ".join(changes) or "map sizes")
        rs.check(want, self.sizes.svc_reals)         # (Resize.recover removed any staging directory)
        try:
            self.program.load(True, pin_dir=rs.staging)
            rs.copy(self.maps)
            rs.swap()
        except (DataplaneError, OSError) as e:
            self.program.close()
            rs.abandon()
            why = str(e) if isinstance(e, DataplaneError) else f"moving the maps into the new sizes: {e}"
            raise DataplaneError(f"{why} (the running instance's maps and programs are left as they were)") from None
        except BaseException:
            self.program.close()
            rs.abandon()
            raise
        sized_by = {"lb_conns4": "connections", "lb_conns6": "connections_ipv6", "lb_conns_embryo": "embryonic"}
        for name, n in sorted(rs.dropped.items()):
            key = f"; [tables] {sized_by[name]} sizes it" if name in sized_by else ""
            log.warning("%s: %d entries did not fit the new size and were left out (the least recently "
                        "used%s)", name, n, key)
        log.info("copied %s into the new maps; the old ones serve until the programs are attached",
                 rs.summary())
        self.resize = rs

    def _keep_previous(self, ifname: str, side: str) -> None:
        """The lb program this attach replaces on ifname goes into lb_progs_prev: until the
        resize finishes, a packet the new maps know nothing of goes to it (a connection the old
        programs made after the copy: the new programs would hand it to the kernel, which
        resets it)."""
        from .bpfsys import prog_fd_by_id, prog_name

        try:
            prev = attached_prog_id(ifname)
            if prev is None or prog_name(prev) != self._SIDES[side]:
                return
            fd = prog_fd_by_id(prev)
            try:
                self._hand_over(side, fd)
            finally:
                os.close(fd)               # the program array holds it now
        except OSError as e:               # gone meanwhile, or refused: the attach goes on without
            log.warning("resize: the program replaced on %s cannot take what the new maps do not know "
                        "yet (%s): a connection the old programs made since the copy may be reset", ifname, e)

    def _hand_over(self, side: str, prog_fd: int) -> None:
        """The replaced program (prog_fd) into lb_progs_prev, which is pinned beside the old maps
        until the resize finishes: the kernel empties a program array once no process and no pin
        holds it, so without the pin a daemon killed within the grace would leave the new
        programs nothing to hand the old connections to; with it the old programs serve them
        until the next start, which finishes the resize (Resize.recover).  Each start pins its
        own (a start after such a kill hands over to the killed one's programs, which hand over
        in turn); finish removes them with the old maps."""
        from .bpfsys import obj_pin

        self.program.prev_progs().set(L.U32.pack(L.PREV_SLOTS[side]), L.U32.pack(prog_fd))
        self.resize.handed_over = True
        if self.resize.prev_pin is not None:
            return
        try:
            taken = set(os.listdir(self.resize.old_path))
            path = os.path.join(self.resize.old_path,
                                next(n for n in (f"lb_progs_prev_{i}" for i in range(1, 1 << 16)) if n not in taken))
            obj_pin(self.program.loaded.map_fds["lb_progs_prev"], path)
        except OSError as e:
            log.warning("resize: cannot pin lb_progs_prev in %s (%s): if this daemon is killed before the "
                        "resize finishes, connections the old programs made since the copy may be reset",
                        self.resize.old_path, e)
            return
        self.resize.prev_pin = path

    def finish_resize(self) -> bool:
        """After the attach: while the old programs may still be finishing handshakes they began
        (RESIZE_GRACE), the new programs send them what the new maps do not know, and this
        returns True (call it again later; the start's READY does not wait for a copy).  Then
        the new maps are caught up with what the old programs did since the copy (Resize.catch_up),
        the old programs are let go, a last catch-up is made (counters included), the old maps
        removed and the real servers' counts taken from the tables (the sweep)."""
        rs = self.resize
        if rs is None:
            return False
        now = time.monotonic()
        if rs.handed_over and rs.attached_at is None:
            rs.attached_at = now
            return True
        if rs.handed_over and now - rs.attached_at < RESIZE_GRACE:
            return True
        if rs.handed_over:
            try:
                late = rs.catch_up(self.maps, self.conns._est_add)   # the old programs still in hand
                log.info("resize: %s the old programs made since the copy copied", _counted(late))
            finally:                      # let them go even so: their maps grow stale from here
                prev = self.program.prev_progs()
                for slot in L.PREV_SLOTS.values():
                    prev.delete(L.U32.pack(slot))
                rs.handed_over = False
        late = rs.finish(self.maps, self.conns._est_add)
        # the counts from the tables as they are now (finish added what the old programs counted
        # since the copy, of entries the new programs may have kept against them): the sweep's census
        self.sweep()
        log.info("resize finished: %s made meanwhile copied; %s changed meanwhile updated, %s ended meanwhile "
                 "removed; the old maps removed, the counts taken from the tables", _counted(late),
                 _counted(rs.updated), _counted(rs.removed))
        self.resize = None
        return False

    def settle_resize(self) -> None:
        """A resize not finished when the daemon stops and keeps its data plane (an upgrade's
        restart within RESIZE_GRACE of its start): the grace waited out and the resize finished
        now, so the next start is a plain adoption and the old programs and maps are let go here.
        (Left unfinished -- a daemon killed -- the pinned lb_progs_prev keeps the old programs
        serving and the next start finishes it: _hand_over.)"""
        deadline = time.monotonic() + RESIZE_GRACE + 1.0
        while self.resize is not None and self.finish_resize() and time.monotonic() < deadline:
            time.sleep(0.05)

    _SIDES = {"public": "lb_xdp_public", "private": "lb_xdp_private", "guard": "lb_xdp_guard"}

    def attach(self, ifname: str, side: str = "public", mode: str = "native") -> str:
        fn = self.fns[self._SIDES[side]]
        if self.resize is not None and side in L.PREV_SLOTS:
            self._keep_previous(ifname, side)
        else:
            self._refuse_foreign(ifname)
        name, flags = attach_xdp(ifname, fn, mode)
        self.attached[ifname] = flags
        self.displaced.discard(ifname)
        self.sides[ifname] = side
        log.info("attached %s XDP program to %s (%s mode)", side, ifname, name)
        self.map_tx_port(ifname)
        return name

    def _refuse_foreign(self, ifname: str) -> None:
        """DataplaneError when ifname runs an XDP program that is not this instance's -- another
        tool's, or another lb instance's -- rather than replace it without a word (and, at this
        instance's stop, take the interface's program away from under the other).  This
        instance's own, left by its previous process (an upgrade, a crash), uses maps pinned
        under its pin directory, and is replaced as before."""
        from .bpfsys import map_info, obj_get, prog_map_ids, prog_name

        try:
            have = attached_prog_id(ifname)
        except DataplaneError:
            return                      # attach_xdp says the interface is missing
        if have is None:
            return
        try:
            uses = set(prog_map_ids(have))
        except OSError:
            return                      # gone meanwhile
        pinned = set()
        # ... and under the directory a resize moved the previous maps to: the previous
        # process's programs on the other interfaces (the guards) use only those
        places = [self.pin, old_dir(self.pin)]
        for top, _dirs, files in (w for place in places for w in os.walk(place)):
            for f in files:
                try:
                    fd = obj_get(os.path.join(top, f))
                except OSError:
                    continue
                try:
                    pinned.add(map_info(fd).id)
                except OSError:         # a pinned program, not a map
                    pass
                finally:
                    os.close(fd)
        if uses & pinned:
            return
        try:
            other = prog_name(have)
        except OSError:
            other = "?"
        raise DataplaneError(f"another XDP program is attached to {ifname} (id {have}, {other}), not this "
                             f"instance's (another lb instance's, or another tool's): lb does not replace it; "
                             f"`ip link set dev {ifname} xdp off` removes it")

    def map_tx_port(self, ifname: str, ifindex: int | None = None) -> None:
        """ifname into lb_tx_ports, its ifindex looked up here (a devmap entry names a device of
        the writer's namespace, which is the daemon's): the programs redirect to it through the
        devmap.  Where that cannot be, they redirect with bpf_redirect(), counted as
        redirect_unmapped -- slower, not wrong.  ifindex: what a next hop's resolution said; an
        interface here by that name with another index is not it (a resolver of another
        namespace, as the benchmarks' and tests' are), and is left out."""
        try:
            idx = socket.if_nametoindex(ifname)
        except OSError as e:
            if ifindex is None:
                log.warning("redirects to %s go without lb_tx_ports (bpf_redirect() instead): %s", ifname, e)
            return
        if ifindex is not None and idx != ifindex:
            return
        if idx >= L.TX_PORTS:
            log.info("%s (ifindex %d) is redirected to without lb_tx_ports (ifindexes below %d): "
                     "bpf_redirect() instead", ifname, idx, L.TX_PORTS)
            return
        try:
            self.program.tx_ports().set(L.U32.pack(idx), L.U32.pack(idx))
        except OSError as e:             # gone meanwhile, or refused
            log.warning("redirects to %s go without lb_tx_ports (bpf_redirect() instead): %s", ifname, e)
            return
        self.tx_mapped.add(idx)

    def _mapping(self, resolver):
        """resolver, and each next hop's interface into lb_tx_ports the first time it is named
        (a DR or tunnel real server's interface need not be one lb is attached to).  An
        interface made again gets another ifindex, so a new entry; the kernel takes a deleted
        one's entry out itself."""
        def resolve_and_map(addr, need_onlink=False):
            nh = resolver(addr, need_onlink=need_onlink)
            self._map_nexthop(nh)
            return nh
        resolve_and_map.ask = getattr(resolver, "ask", None)
        return resolve_and_map

    def _map_nexthop(self, nh) -> None:
        if nh.ifindex not in self.tx_mapped and (nh.ifname, nh.ifindex) not in self.tx_tried:
            self.tx_tried.add((nh.ifname, nh.ifindex))
            self.map_tx_port(nh.ifname, nh.ifindex)

    def keep_attached(self) -> list[tuple[str, str, str]]:
        """Each program still on its interface: one gone -- the interface deleted and made again
        (a VLAN, a bond, a hot-plugged NIC), `ip link set dev X xdp off` -- is attached again in
        its mode; another program found in its place is left there (two tools fighting over an
        interface would swap programs forever) and reported, and so is a missing interface."""
        from .bpfsys import prog_info, prog_name

        notes = []
        for ifname, flags in list(self.attached.items()):
            fn = self.fns[self._SIDES[self.sides[ifname]]]
            try:
                have = attached_prog_id(ifname)
            except DataplaneError:
                self.displaced.add(ifname)
                notes.append(("missing", ifname, f"{ifname}, where the {self.sides[ifname]} XDP program was "
                              f"attached, does not exist"))
                continue
            if have == prog_info(fn.fd).id:
                self.displaced.discard(ifname)
                continue
            if have is not None:
                try:
                    other = prog_name(have)
                except OSError:
                    other = "?"
                self.displaced.add(ifname)
                notes.append(("other", ifname, f"another XDP program is attached to {ifname} (id {have}, {other}) "
                              f"in place of lb's {self.sides[ifname]} program: left there"))
                continue
            mode = "generic" if flags & XDP_FLAGS_SKB_MODE else "native"
            try:
                name, self.attached[ifname] = attach_xdp(ifname, fn, mode, only_if_none=True)
            except DataplaneError as e:
                self.displaced.add(ifname)
                notes.append(("failed", ifname, f"the {self.sides[ifname]} XDP program was gone from "
                              f"{ifname}: {e}"))
                continue
            self.displaced.discard(ifname)
            self.map_tx_port(ifname)     # made again: another ifindex (the kernel took the old one out)
            notes.append(("attached", ifname, f"the {self.sides[ifname]} XDP program was gone from {ifname}: "
                          f"attached again ({name} mode)"))
        return notes

    def held_programs(self) -> list[HeldProgram]:
        from .bpfsys import prog_info

        out = []
        for ifname, flags in sorted(self.attached.items()):
            name = self._SIDES[self.sides[ifname]]
            try:
                ifindex = socket.if_nametoindex(ifname)
            except OSError:               # gone: recorded by name (detach_held looks it up again)
                ifindex = 0
            out.append(HeldProgram(ifname, ifindex, name, prog_info(self.fns[name].fd).id, flags))
        return out

    def detach_all(self) -> None:
        for ifname, flags in list(self.attached.items()):
            try:
                detach_xdp(ifname, flags)
                log.info("detached XDP from %s", ifname)
            except Exception as e:
                log.warning("detaching XDP from %s: %s", ifname, e)
            del self.attached[ifname]
            self.displaced.discard(ifname)
            self.sides.pop(ifname, None)

    def unpin(self) -> None:
        if self.mh is not None:
            self.mh.close()
        self.program.unpin()
        if self.resize is not None:       # a clean stop before a resize's finish
            self.resize.close_old()
            shutil.rmtree(self.resize.old_path, ignore_errors=True)
            self.resize = None

    def close(self) -> None:
        if self.mh is not None:
            self.mh.close()
        self.conns.close()
        self.program.close()

    # ---- the table ----
    def plan(self, table: TableSpec) -> None:
        self.table.plan(table)

    def apply(self, table: TableSpec, nexthops: dict | None = None) -> int:
        """Make the maps forward `table`; returns the number of map writes it took.  The
        programs of the schedulers it uses are loaded first (Program.ensure), and with IPv6
        services the IPv6 fragments' (Program.ensure_ipv6).  nexthops: resolve_ahead's."""
        self.program.ensure({s.scheduler for s in table.services})
        if any(getattr(s.address, "version", 4) == 6 for s in table.services):
            self.program.ensure_ipv6()
        self.tx_tried.clear()
        for nh in (nexthops or {}).values():
            if not isinstance(nh, NextHopError):
                self._map_nexthop(nh)       # as the resolver the apply calls does (_mapping)
        n = self.table.apply(table, nexthops)
        self.defender.configure(table.defense)   # after: a failed apply leaves the defenses as they were
        return n

    def finish_drains(self) -> int:
        return self.table.finish_drains()

    def nexthop_work(self) -> list:
        return self.table.nexthop_work()

    def nexthop_errors(self) -> dict:
        return dict(self.table.nexthop_errors)

    def nexthops_ahead(self, table: TableSpec) -> list:
        if not self.maps:       # not loaded: its apply fails before it resolves anything
            return []
        return self.table.nexthops_ahead(table)

    def resolve_ahead(self, pairs: list) -> dict:
        """Every next hop of pairs (nexthops_ahead's), for an apply: the MACs the kernel lacks
        asked for all at once, their answers waited for together (one timeout for the lot).
        Only netlink, as resolve_nexthops: the caller need not hold the data plane's lock."""
        with nexthop.session():
            ask = getattr(self.resolver, "ask", None)
            if ask is not None:
                ask(pairs)
            return self._resolve_each(pairs)

    def _resolve_each(self, pairs, deadline: float | None = None) -> dict:
        """{(address, onlink): NextHop or NextHopError} of pairs (an iterable), in the caller's
        session, in order, stopping after the one that ends past ``deadline`` (monotonic)"""
        out: dict = {}
        for pair in pairs:
            try:
                out[pair] = self.resolver(pair[0], need_onlink=pair[1])
            except NextHopError as e:
                out[pair] = e
            if deadline is not None and time.monotonic() >= deadline:
                break
        return out

    def resolve_nexthops(self, work: list, budget: float | None = None) -> dict:
        """Round robin: from where the last call stopped, as many of work's next hops as
        ``budget`` seconds allow (all without one), in one nexthop.session().  Only netlink: no
        map or table state is read or written (the caller need not hold the data plane's
        lock), and the tx ports are mapped by refresh_nexthops."""
        if not work:
            return {}
        start = self._nh_cursor % len(work)
        deadline = None if budget is None else time.monotonic() + budget
        with nexthop.session(read_tables=False):     # (a part of them: one neighbour at a time)
            out = self._resolve_each((work[(start + k) % len(work)] for k in range(len(work))), deadline)
        self._nh_cursor = (start + len(out)) % len(work)
        return out

    def refresh_nexthops(self, resolved: dict | None = None) -> int:
        self.tx_tried.clear()
        for nh in (resolved or {}).values():
            if not isinstance(nh, NextHopError):
                self._map_nexthop(nh)
        return self.table.refresh_nexthops(resolved)

    # ---- housekeeping ----
    def sweep(self, now_ns: int | None = None) -> int:
        return self.sweep_end(self.sweep_scan(self.sweep_begin(now_ns)))

    # the sweep's parts (ConnTable's): the scan, the long one, reads only the connection and
    # template tables, and runs without the engine's lock
    def sweep_begin(self, now_ns: int | None = None):
        return self.conns.sweep_begin(now_ns)

    def sweep_scan(self, sp):
        return self.conns.sweep_scan(sp)

    def sweep_end(self, sp) -> int:
        n = self.conns.sweep_end(sp)
        self.table.sync_overload()
        self.lblc_check_expire(sp.now)
        return n

    def defend(self) -> None:
        self.defender.tick()

    def defense_status(self) -> dict | None:
        return self.defender.status()

    def lblc_check_expire(self, now_ns: int | None = None, force: bool = False) -> int:
        return self.lblc.check_expire(self.table.lblc_users(), now_ns, force)

    def estimate(self, now: float | None = None) -> int:
        return self.rates.estimate(self.table.stat_id_lists(), self.adopted, now)

    # ---- quiesce_server ----
    def restart_sched_counts(self, spec: ServiceSpec) -> int:
        st = self.services.get(key_of(spec))
        if st is None:
            return 0
        return self.baseline.restart({rid for _, rid in st.dests}, self.reals)

    def sched_base_pending(self) -> bool:
        return bool(self.baseline.sched_base)

    def refresh_sched_base(self, rids=None) -> int:
        return self.baseline.refresh(self.reals, rids)

    # ---- reading ----
    def read_services(self) -> list:
        with PinnedMaps(self.instance, self.pin_root) as maps:
            return reader.read_services(maps)

    def read_connections(self) -> list:
        with PinnedMaps(self.instance, self.pin_root) as maps:
            return reader.read_connections(maps)

    def counters(self) -> dict[str, int]:
        """The data path's event counters (lb_counters: packets passed, dropped or answered for a
        reason an operator may want to see), summed over CPUs."""
        return reader.read_counters(self.maps)

    def zero_stats(self, service: tuple | None = None) -> int:
        chosen = [st for k, st in self.services.items()
                  if service is None or reader.is_service(k, k.addr.version, service)]
        if service is not None and not chosen:
            raise LookupError("no such service")
        ids = {("lb_svc_stats", st.id) for st in chosen} | {("lb_real_stats", rid) for st in chosen
                                                             for _, rid in st.dests}
        self.rates.zero(ids)
        return len(chosen)

    # ---- HA lease (bpf/lb_lease.h) ----
    def lease(self, seconds: float | None) -> None:
        now = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        expires = 0 if seconds is None else 1 if seconds <= 0 else now + int(seconds * 1e9)
        self.maps["lb_lease"].set(L.U32.pack(0), L.LEASE.pack(expires))

    def lease_left(self) -> float | None:
        raw = self.maps["lb_lease"].get(L.U32.pack(0))
        expires = L.LEASE.unpack(raw)[0] if raw else 0
        if not expires:
            return None
        return (expires - time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)) / 1e9

    def claim(self, addrs: dict) -> None:
        m = self.maps["lb_lease_addrs"]
        want = {L.ADDR_KEY.pack(L.pack_addr(a), L.family_of(a), bytes(3)):
                L.U32.pack(L.LEASE_ROUTER if kind == "router" else L.LEASE_VIP) for a, kind in addrs.items()}
        have = dict(m.items(batch=False))
        for k, v in want.items():             # new ones first: no moment covers fewer
            if have.get(k) != v:
                m.set(k, v)
        for k in have.keys() - want.keys():
            m.delete(k)

    # ---- HA connection sync: lb/ha/sync.py carries what these export and import ----
    def export_conns(self, now_ns: int | None = None) -> tuple[list, list]:
        return self.conns.export_conns(now_ns)

    def import_conns(self, conns: list, temps: list, ifindex: int, local_mac: bytes,
                     now_ns: int | None = None, owned_since_ns: int | None = None) -> tuple[int, int]:
        return self.conns.import_conns(conns, temps, ifindex, local_mac, now_ns, owned_since_ns)

    def start_sync(self, role: str, ifname: str, syncid: int) -> None:
        """No kernel sync daemon: the XDP data plane's connections travel by lb/ha/sync.py."""

    def stop_sync(self) -> None:
        pass


def zero_pinned(instance: str, service: tuple | None = None, pin_root: str | None = None) -> int:
    """`lb zero` of an instance whose daemon does not answer (stopped with --keep-dataplane):
    the pinned maps' counters and rates; returns the services zeroed (LookupError; maps.MapError
    for maps this lb cannot read)."""
    from .rates import zero_counters

    with PinnedMaps(instance, pin_root) as maps:
        maps.check_layout()             # another lb version's maps: LayoutError, nothing written
        ids = reader.stat_ids(maps, service)
        zero_counters(maps, ids)
    return sum(1 for m, _ in ids if m == "lb_svc_stats")
