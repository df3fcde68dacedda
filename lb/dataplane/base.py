"""The one interface of a data plane: what the engine (and only the engine) calls.

Two backends implement it: XdpDataplane (lb/dataplane/xdp.py: BPF maps, the default) and
IpvsDataplane (lb/dataplane/ipvs.py: kernel IPVS over netlink, the fallback).  A backend with
nothing to do for a call (IPVS sweeps, schedules and estimates in the kernel; XDP has no kernel
sync daemon) implements it as a no-op, so the engine never asks which backend it holds.

The engine hands a data plane TableSpecs (lb/dataplane/spec.py: plain values) and reads back
plain records (lb/dataplane/records.py); formatting them is lb.listing's business.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping

from .spec import ServiceSpec, TableSpec


class Dataplane(abc.ABC):
    #: "xdp" | "ipvs": shown by `lb status`; never a reason for the engine to branch
    kind: str = ""
    #: set by load(): the forwarding state of a previous run was found and kept (pinned maps,
    #: or the kernel's services of this instance)
    adopted: bool = False
    #: set by load(): this run made the instance's state (a failed start removes it again)
    created: bool = False
    #: the virtual services as applied, by key
    services: Mapping
    #: (service key, (addr, port)) of real servers removed while connections still use them
    draining: set
    #: the interfaces this instance serves now (ifname -> the backend's note: XDP flags, or side)
    attached: Mapping

    # ---- lifecycle ----
    @abc.abstractmethod
    def load(self) -> None:
        """Make the data plane usable, adopting what a previous run left (DataplaneError)."""

    @abc.abstractmethod
    def attach(self, ifname: str, side: str = "public", mode: str = "native") -> str:
        """Serve ifname ("public": the VIPs' side, "private": NAT replies); returns the mode."""

    @abc.abstractmethod
    def detach_all(self) -> None:
        """Stop forwarding on every interface this instance serves."""

    def keep_attached(self) -> list[tuple[str, str, str]]:
        """Serve the interfaces still: what went missing under this instance (an XDP program gone
        from a re-created interface) is put back.  (what, ifname, text) of what was done or found
        -- "attached", "missing", "other", "failed" -- for the engine's log.  Nothing to do for a
        backend the kernel hooks by itself."""
        return []

    def held_programs(self) -> list:
        """The XDP programs this instance has attached (attach.HeldProgram each: interface and
        index, program name and id, flags), which a stop that keeps the data plane leaves
        behind: the engine records them (lb/held.py) so that the next start can detach those its
        configuration no longer names.  [] for a backend without programs."""
        return []

    def held_sync(self) -> list[tuple[str, str, int]]:
        """(state, interface, SyncID) of each kernel IPVS sync daemon this instance runs, which
        a stop that keeps the data plane leaves running (recorded as held_programs are)."""
        return []

    def release_sync(self, daemons: list[tuple[str, str, int]], keep: bool) -> list[tuple[str, str, int]]:
        """The sync daemons an earlier run left running (held_sync's, from its record): with
        ``keep`` (this run syncs in kernel IPVS too) the backend takes those still running as
        recorded as its own (its role's own start_sync, and its clean stop, stop them); else
        they are stopped -- each only while the kernel runs it as recorded.  Returns those that
        could not be stopped."""
        from .ipvs import stop_recorded_sync

        return stop_recorded_sync(daemons)

    def finish_resize(self) -> bool:
        """Once the programs are attached: what the old maps of a resized instance (new
        [tables]) got since they were copied, copied too, and the old programs and maps let
        go; True while there is more to do (call again, a second later).  Nothing to do for a
        backend without sizes."""
        return False

    @abc.abstractmethod
    def unpin(self) -> None:
        """Forget the instance's kept state (pins, state file): the next start is a fresh one."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this process's handles; forwarding goes on as it is (an upgrade)."""

    # ---- the table ----
    @abc.abstractmethod
    def plan(self, table: TableSpec) -> None:
        """Check, writing nothing, that apply(table) can be carried out: every table's capacity
        (draining real servers keep their slots), ids, schedulers.  errors.TableDoesNotFit
        names what does not fit."""

    @abc.abstractmethod
    def apply(self, table: TableSpec, nexthops: dict | None = None) -> int:
        """Forward `table`: write the difference, all or nothing; returns the number of writes
        it took.  A write that fails part-way raises errors.ApplyFailed once the previous
        table is written back (``restored``: whether that worked).  nexthops: resolve_ahead's
        answers, taken as they are."""

    def nexthop_errors(self) -> dict:
        """{(address, onlink): (why, kept)} of the real servers' next hops that do not resolve:
        ``kept``, their real servers forward to the one resolved before; else they get no new
        connections until it answers.  A data plane whose kernel resolves them: none."""
        return {}

    def nexthops_ahead(self, table: TableSpec) -> list:
        """The next hops apply(table) would resolve (the real servers it adds), (address, onlink)
        each once: read under the data plane's lock, resolved outside it (resolve_ahead), handed
        to apply under it again -- a data plane whose kernel resolves them: none."""
        return []

    def resolve_ahead(self, pairs: list) -> dict:
        """Resolve every next hop of pairs (netlink alone: the caller need not hold the lock):
        {(address, onlink): NextHop or NextHopError}."""
        return {}

    @abc.abstractmethod
    def finish_drains(self) -> int:
        """Remove draining real servers whose connections have all ended; returns how many."""

    def nexthop_work(self) -> list:
        """The real servers' next hops to resolve, (address, onlink) each once: read under the
        data plane's lock, resolved outside it (resolve_nexthops), written under it again
        (refresh_nexthops)."""
        return []

    def resolve_nexthops(self, work: list, budget: float | None = None) -> dict:
        """Resolve work's next hops (netlink alone: the caller need not hold the lock), as many as
        ``budget`` seconds allow, the rest at the next calls: {(address, onlink): NextHop or
        NextHopError}."""
        return {}

    @abc.abstractmethod
    def refresh_nexthops(self, resolved: dict | None = None) -> int:
        """Re-resolve real servers' next hops -- with ``resolved`` (resolve_nexthops'), those
        real servers' alone, from it; returns the updates made."""

    # ---- housekeeping ----
    @abc.abstractmethod
    def sweep(self, now_ns: int | None = None) -> int:
        """Expire connections and templates nobody visits; returns the connections removed."""

    # sweep() in three parts, for the engine to run the middle one, which only reads the
    # connection tables, without its lock (the XDP data plane's scan of 1M connections: ~0.5 s).
    # Here the whole sweep is the last part's.
    def sweep_begin(self, now_ns: int | None = None):
        return now_ns

    def sweep_scan(self, sp):
        return sp

    def sweep_end(self, sp) -> int:
        return self.sweep(sp)

    @abc.abstractmethod
    def estimate(self, now: float | None = None) -> int:
        """One step of IPVS's rate estimator (every 2 s); returns the entries written."""

    # ---- quiesce_server ----
    @abc.abstractmethod
    def restart_sched_counts(self, spec: ServiceSpec) -> int:
        """The schedulers of spec's service count only connections made from now on; returns
        the connections left out."""

    @abc.abstractmethod
    def sched_base_pending(self) -> bool:
        """Some connections are still left out of the schedulers' counts (refresh_sched_base)."""

    @abc.abstractmethod
    def refresh_sched_base(self, rids=None) -> int:
        """Follow the left-out connections as they end; returns how many are still left out."""

    # ---- reading (what `lb list`, `lb status` and the web console show) ----
    @abc.abstractmethod
    def read_services(self) -> list:
        """The services as the data plane holds them: lb.dataplane.records.ServiceRow."""

    def read_own_services(self) -> list:
        """read_services() of this instance's services alone (lb.metrics, which names them by
        the configuration): the XDP data plane's table is the instance's own."""
        return self.read_services()

    @abc.abstractmethod
    def read_connections(self) -> list:
        """The connection entries: lb.dataplane.records.ConnRow."""

    @abc.abstractmethod
    def counters(self) -> dict[str, int]:
        """The data path's event counters by name (empty where the backend has none).  A name
        ending in _entries, _max, _capacity, _fill or _ratio is a level (table fill), not a count
        (lb.metrics exports it as a gauge)."""

    @abc.abstractmethod
    def zero_stats(self, service: tuple | None = None) -> int:
        """ipvsadm -Z: the packet, byte and connection counters and the rate estimator of one
        service and its real servers (``("tcp", address, port)`` or ``("fwmark", mark)``), or
        of every service; returns the services zeroed (LookupError: no such service)."""

    # ---- defenses against floods ----
    def defend(self) -> None:
        """Once a second: IPVS's defense_work (the kernel runs its own in IPVS mode)."""

    def defense_status(self) -> dict | None:
        """The defenses' state for `lb status` (None where the kernel keeps it)."""
        return None

    # ---- HA lease: a gone daemon's addresses are not claimed (bpf/lb_lease.h) ----
    @abc.abstractmethod
    def lease(self, seconds: float | None) -> None:
        """[ha]: this director claims the addresses of claim() for `seconds` from now (refreshed
        with every heartbeat; 0: no longer, at once); None: no lease (no [ha]: always claimed).
        Once it runs out the data plane drops neighbour requests for them and packets to them."""

    @abc.abstractmethod
    def lease_left(self) -> float | None:
        """Seconds the lease still runs (below 0: ran out), None without a lease."""

    @abc.abstractmethod
    def claim(self, addrs: dict) -> None:
        """The addresses the lease covers: {ip address: "vip" | "router"}."""

    # ---- HA connection sync ----
    @abc.abstractmethod
    def export_conns(self, now_ns: int | None = None) -> tuple[list, list]:
        """(connections, templates) for lb/ha/sync.py to send to the backup."""

    @abc.abstractmethod
    def import_conns(self, conns: list, temps: list, ifindex: int, local_mac: bytes,
                     now_ns: int | None = None, owned_since_ns: int | None = None) -> tuple[int, int]:
        """Install what the active exported; returns (installed, skipped).  ``owned_since_ns``:
        this director has been active since then (None: it is not) -- its own entries stamped
        since are kept, the peer's records of them skipped."""

    @abc.abstractmethod
    def start_sync(self, role: str, ifname: str, syncid: int) -> None:
        """The kernel's own sync daemon in `role` ("master" | "backup") on ifname."""

    @abc.abstractmethod
    def stop_sync(self) -> None:
        """Stop the sync daemons start_sync started."""
