"""The lvs daemon: config (+ health, + HA role later) -> desired table -> data plane.

The engine is the only writer of the data plane.  It computes a TableSpec from the config and
asks the data plane to apply it; a reload computes a new one and the data plane applies only
the difference.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback

from lb import config as lbconfig
from lb import control, files, held, sdnotify
from lb.confedit import ConfigRequests, keep_running, restart_needed
from lb import weight as lbweight
from lb.config.model import FORWARD_OF_NETWORK
from lb.config.model import endpoint_text as _endpoint
from lb.config.model import parse_endpoint as _parse_endpoint
from lb.config.model import sorry_text
from lb.config.toml import WEIGHT_RANGE
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import attach as dpattach
from lb.dataplane.errors import ApplyFailed, DataplaneError, ProgramLoadFailed, TableDoesNotFit
from lb.dataplane.ipvs import IpvsDataplane
from lb.dataplane.program import Sizes
from lb.dataplane.xdp import XdpDataplane
from lb.ha import addresses
from lb.ha import announce as ha_announce
from lb.health import CheckSpec, LoadMonitorTask, LoadSpec, Monitor, NannyPolicy
from lb.instance import AlreadyRunning, InstanceLock
from lb.instance import pidfile as _pidfile
from lb import tasks
from lb.tasks import RateLimitedLog, spawn, supervise

log = logging.getLogger("lb.engine")

RUN_DIR = "/run/lb"            # root's, 0700 (lb.files.ensure_private_dir)
SHARED_DIR = control.SHARED_DIR
SWEEP_INTERVAL = 5.0
NEXTHOP_INTERVAL = 10.0
NEXTHOP_BUDGET = 1.0           # s of next-hop resolution after which a refresh turn ends (round robin)
ESTIMATE_INTERVAL = 2.0       # IPVS's rate estimator period (ip_vs_est.c)
DEFENSE_INTERVAL = 1.0        # IPVS's defense_work period (DEFENSE_TIMER_PERIOD)
OWNERSHIP_INTERVAL = 1.0      # how often the held addresses and attached programs are checked
HOUSEKEEPING_SLOW = 30.0      # a step still running this long is said (again at 2x, 4x ... as long)
RUN_LOOP_PAUSE = 1.0          # after a turn whose own code failed, before the next (Engine._loop_failed)
RELOAD_WAIT = 30.0            # the longest an `lb weight` request waits for a reload under way (under CLIENT_TIMEOUT)
RUN_LOOP_GIVE_UP = 60         # turns in a row whose own code failed: the daemon exits 1, data plane kept


# the run loop's housekeeping steps, as the log names them (`lb status`: housekeeping_errors)
HOUSEKEEPING = {
    "reload": "reloading the configuration",
    "apply": "applying the table after a health, weight or override change",
    "finish_drains": "finishing the drains of removed real servers",
    "finish_resize": "finishing the move into the new [tables] sizes",
    "sched_base": "refreshing the schedulers' base",
    "sweep": "sweeping expired connections",
    "local_addresses": "reading the director's own addresses",
    "defend": "the defense strategies' check",
    "estimate": "the rate estimator",
    "keep_ownership": "keeping the addresses and XDP programs in place",
    "refresh_nexthops": "refreshing the next hops",
    # not a step: the loop's own code between them (Engine._loop_failed)
    "run_loop": "the run loop's own code",
}


class StartupError(Exception):
    pass


class StartCancelled(StartupError):
    """A stop asked for while the start waited (for interfaces): nothing was touched."""


def real_key(vs, rs) -> tuple:
    """Identity of one real server of one virtual service (what a nanny watches)."""
    return (vs.key, rs.address, rs.effective_port(vs))


class SpecCache:
    """The ServiceSpec last built for each virtual service, reused by build_table while nothing
    it was made of has changed: the same config object (a reload parses new ones), the same
    forwarding and sloppy flag, and no change since to the health, load weight or override of
    any of its real servers (RealState marks its service).  A one-server change then builds one
    service afresh, and the data plane's apply finds every other spec the very object it applied
    (ServiceSpec.same_as) instead of comparing 64,000 real servers field by field.

    Marks and builds are ordered by one clock, so a change that lands while a table is being
    built (the engine builds in a worker thread) is never lost: an entry is used only if it was
    started after its service's last mark."""

    def __init__(self) -> None:
        self._clock = itertools.count(1)
        self._marked: dict[tuple, int] = {}      # service key -> clock at its last change
        self._reset = 0                          # clock at the last change of every service
        self._built: dict[tuple, tuple] = {}     # service key -> (vs, forward, sloppy, started, spec, sorry)

    def mark(self, vs_key) -> None:
        self._marked[vs_key] = next(self._clock)

    def reset(self) -> None:
        """Every service changed (a whole new state was assigned)."""
        self._reset = next(self._clock)

    def start(self) -> int:
        return next(self._clock)

    def get(self, vs, forward: str, sloppy: bool) -> tuple | None:
        """The entry (vs, forward, sloppy, started, spec, went to its sorry server) built from
        this very config entry and the current state, or None."""
        e = self._built.get(vs.key)
        if e is None or e[0] is not vs or e[1] != forward or e[2] != sloppy or \
                e[3] <= max(self._reset, self._marked.get(vs.key, 0)):
            return None
        return e

    def keep(self, built: dict) -> None:
        """The entries of one build (service key -> entry); the others (services gone) go."""
        self._built = built


class RealState(dict):
    """real_key -> one real server's health, load weight or operator override: every change
    marks its virtual service in the SpecCache (after the change: see SpecCache)."""

    def __init__(self, cache: SpecCache, items=()):
        super().__init__(items)
        self._cache = cache

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._cache.mark(key[0])

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self._cache.mark(key[0])

    def pop(self, key, *default):
        value = super().pop(key, *default)
        self._cache.mark(key[0])
        return value

    def setdefault(self, key, default=None):
        value = super().setdefault(key, default)
        self._cache.mark(key[0])
        return value

    def popitem(self):
        key, value = super().popitem()
        self._cache.mark(key[0])
        return key, value

    def update(self, *a, **kw) -> None:
        super().update(*a, **kw)
        self._cache.reset()

    def clear(self) -> None:
        super().clear()
        self._cache.reset()


class RealStates:
    """An Engine attribute (health, weights, overrides) that is a RealState of the engine's
    SpecCache whatever is assigned to it: a plain dict assigned (a test, a restore) is wrapped,
    and counts as a change of every service."""

    def __set_name__(self, owner, name) -> None:
        self.attr = "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj, value) -> None:
        setattr(obj, self.attr, RealState(obj.specs, value))
        obj.specs.reset()


def sorry_endpoint(vs) -> tuple:
    """The table entry (address, port) of vs's sorry server: its port, else the service's (0 in a
    firewall-mark service, whose connections keep the port they came to)."""
    addr, port = vs.sorry_server
    return addr, 0 if vs.fwmark else vs.port if port is None else port


def _endpoint_doc(endpoint: tuple) -> list:
    addr, port = endpoint
    return [str(addr), port]


def build_table(cfg, health: dict | None = None, sorry: set | None = None,
                weights: dict | None = None, overrides: dict | None = None,
                cache: SpecCache | None = None, trial: set | None = None) -> TableSpec:
    """The desired table: active services and real servers, minus the ones their monitor says
    are dead (or at weight 0 when the service quiesces dead servers); ``weights`` (real_key ->
    weight) are the load monitors' dynamic weights, which replace the configured ones;
    ``overrides`` (real_key -> weight) are the operator's (`lb weight`/`lb quiesce`), which
    replace both -- but never bring back a server its monitor says is dead (lb.weight has the
    rule).  Each real server's RealSpec is built here, once, from its own configured entry.

    A service with a sorry server and no usable real server (all dead, inactive or at weight 0)
    gets the sorry server as its only real server; the keys of those services are added to
    ``sorry`` when it is given.

    ``cache`` (the engine's SpecCache, with health, weights and overrides its RealStates): the
    services nothing changed for keep the spec built last time.  ``trial`` (virtual server keys):
    a table to plan only, whose ``overrides`` are not the cache's (an `lb weight` request's, not
    set yet): those services are built afresh, the others taken from the cache, which is left
    as it was."""
    forward = FORWARD_OF_NETWORK[cfg.network]
    # lb.bgp active-active: every service schedules mid-flow TCP packets (ECMP moved the flow here)
    sloppy = cfg.bgp is not None and cfg.bgp.active_active
    health = health or {}
    weights = weights or {}
    overrides = overrides or {}
    services = []
    built: dict[tuple, tuple] = {}
    for vs in cfg.virtual_servers:
        if not vs.active:
            continue
        if cache is not None and (trial is None or vs.key not in trial):
            hit = cache.get(vs, forward, sloppy)
            if hit is not None:
                services.append(hit[4])
                built[vs.key] = hit
                if hit[5] and sorry is not None:
                    sorry.add(vs.key)
                continue
        if cache is not None:
            started = cache.start()      # before its state is read (SpecCache)
        reals, dead = [], []
        for rs in vs.real_servers:
            key = real_key(vs, rs)
            w = effective_weight(vs, rs, health.get(key, True), weights.get(key), overrides.get(key))
            # a firewall-mark service's connections keep the port they came to (IPVS does the same)
            port = 0 if vs.fwmark else rs.effective_port(vs)
            if w.in_table:
                reals.append(RealSpec(rs.address, port, w.value, forward, rs.u_threshold, rs.l_threshold,
                                      w.source, rs.weight))
            elif w.source == lbweight.DOWN:
                dead.append((rs.address, port))
        on_sorry = False
        if vs.sorry_server is not None and not any(r.weight > 0 for r in reals):
            addr, port = sorry_endpoint(vs)
            w = lbweight.sorry_server()
            # the pool's entries leave the table (the data plane drains them); the sorry server
            # has no thresholds of its own
            reals = [RealSpec(addr, port, w.value, forward, weight_source=w.source)]
            on_sorry = True
            if sorry is not None:
                sorry.add(vs.key)
        spec = ServiceSpec.from_config(vs, reals, dead)
        if sloppy:
            spec = dataclasses.replace(spec, sloppy=True)
        services.append(spec)
        if cache is not None:
            built[vs.key] = (vs, forward, sloppy, started, spec, on_sorry)
    if cache is not None and trial is None:
        cache.keep(built)
    t = cfg.timeouts
    # active-active: a packet of an entry whose real server has left (its health check failed
    # while this director was cut off, say) expires the entry, and the client's next packet is
    # scheduled afresh -- sloppy, so mid-flow too -- to the server every director picks
    return TableSpec(tuple(services), (t.tcp, t.tcpfin, t.udp), cfg.expire_nodest_conn or sloppy,
                     lblc_expiration=cfg.lblc_expiration, lblcr_expiration=cfg.lblcr_expiration,
                     defense=cfg.defense)


def effective_weight(vs, rs, up: bool = True, load: int | None = None, override: int | None = None) -> lbweight.Weight:
    """rs's effective weight in vs and why (lb.weight.effective with the config's part)."""
    return lbweight.effective(rs.weight, active=vs.active and rs.active, up=up, quiesce=vs.monitor.quiesce,
                              load=load, override=override)


class OverrideError(ValueError):
    """A refused `lb weight` request (unknown service or server, bad weight); nothing changed."""


def find_service(cfg, text) -> object:
    """A virtual server by name, or by VIP:PORT; OverrideError when there is no such one."""
    if not isinstance(text, str) or not text:
        raise OverrideError("service: missing (a virtual server's name, or VIP:PORT)")
    for vs in cfg.virtual_servers:
        if vs.name == text:
            return vs
    where = _parse_endpoint(text)
    if where is not None and where[1] is not None:
        found = [vs for vs in cfg.virtual_servers if not vs.fwmark and (vs.address, vs.port) == where]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise OverrideError(f"service {text!r} is ambiguous ({', '.join(vs.name for vs in found)}): "
                                f"use its name")
    names = ", ".join(vs.name for vs in cfg.virtual_servers) or "none"
    raise OverrideError(f"no virtual server {text!r} in {cfg.path or '<config>'} (virtual servers: {names})")


def find_real(vs, text) -> object:
    """A real server of ``vs`` by name, ADDR or ADDR:PORT (of a firewall-mark service, PORT 0 as
    `lb list` shows it, or its health checks' port); OverrideError when there is no such one."""
    if not isinstance(text, str) or not text:
        raise OverrideError("server: missing (a real server's name, ADDR or ADDR:PORT)")
    for rs in vs.real_servers:
        if rs.name == text:
            return rs
    where = _parse_endpoint(text)
    if where is None and vs.fwmark and text.endswith(":0"):
        # ADDR:0 / [ADDR]:0: a firewall-mark service's real server as `lb list` and `lb status`
        # print it (port 0 in the table: each connection keeps the port it came to)
        host = text[:-2]
        bare = _parse_endpoint(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        where = (bare[0], 0) if bare is not None and bare[1] is None else None
    if where is not None:
        addr, port = where
        found = [rs for rs in vs.real_servers if rs.address == addr and (
            port is None or rs.effective_port(vs) == port or (vs.fwmark and port == 0))]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise OverrideError(f"server {text!r} is ambiguous in virtual server {vs.name} "
                                f"({', '.join(rs.name for rs in found)}): use its name or ADDR:PORT")
    names = ", ".join(rs.name for rs in vs.real_servers) or "none"
    raise OverrideError(f"virtual server {vs.name} has no real server {text!r} (real servers: {names})")


def check_weight(value) -> int | None:
    """An override's weight: a whole number within the config's weight range, or None (clear)."""
    lo, hi = WEIGHT_RANGE
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OverrideError(f"weight: {value!r} is not a whole number {lo}..{hi} (or null to clear the override)")
    if not lo <= value <= hi:
        raise OverrideError(f"weight: {value} is out of range {lo}..{hi} (0 quiesces: open connections go "
                            f"on, no new ones)")
    return value


def override_keys(cfg) -> dict:
    """real_key -> (vs, rs) of every real server an override may apply to: the active real
    servers of the active services."""
    return {real_key(vs, rs): (vs, rs) for vs in cfg.virtual_servers if vs.active
            for rs in vs.real_servers if rs.active}


def pidfile(instance: str) -> str:
    """The instance's pid file, which is also its lock (lb.instance)."""
    return _pidfile(instance, RUN_DIR)


def overrides_file(instance: str) -> str:
    """The operator's weight overrides, kept across restarts of lb (not across a reboot: /run)."""
    return os.path.join(RUN_DIR, f"{instance}.overrides.json")


class ReloadRefused(Exception):
    """A reload that changed nothing; ``issues`` (lb.config ConfigIssue) when the file is bad."""

    def __init__(self, message: str, issues=()):
        super().__init__(message)
        self.issues = list(issues)


class ReloadFailed(Exception):
    """A reload whose writes failed part-way: ``restored`` when the previous table and
    addresses are back (nothing changed), else the data plane holds part of each."""

    def __init__(self, message: str, restored: bool):
        super().__init__(message)
        self.restored = restored


class HeldBack(TableDoesNotFit):
    """apply_health: the services whose change fits are applied; the others' changes do not fit
    the data plane and wait (Engine.waiting names them)."""


def _config_key(spec) -> tuple:
    """The configured virtual server's key (VirtualServer.key) of a ServiceSpec: the engine's
    bookkeeping (on_sorry, waiting) is by configured service."""
    return ("fwm", spec.fwmark, 0) if spec.fwmark else spec.key


def _why_waits(err: TableDoesNotFit) -> str:
    """`lb status`'s note on a service whose change waits: the data plane's refusal, one line."""
    return "does not fit the data plane: " + "; ".join(ln.strip() for ln in str(err).splitlines() if ln.strip())


def _names(specs) -> str:
    return ", ".join(s.name or str(s.key) for s in specs)


def check_spec(vs, rs) -> tuple[CheckSpec, NannyPolicy]:
    m = vs.monitor
    kind = m.kind
    if kind in ("tcp", "send_expect") and vs.protocol == "udp":
        kind = "udp"            # a UDP service cannot be connect-checked: send/expect goes in datagrams
    spec = CheckSpec(kind=kind, host=str(rs.address), port=m.port or rs.effective_port(vs), send=m.send,
                     expect=m.expect, use_regex=m.use_regex, reply_encoding=m.reply_encoding, path=m.path,
                     host_header=m.host, status=m.status, body_regex=m.body_regex, digest=m.digest,
                     tls_verify=m.tls_verify, program=m.program, misc_dynamic=m.misc_dynamic,
                     connect_timeout=m.connect_timeout, user=m.script_user)
    return spec, NannyPolicy(interval=m.interval, timeout=m.timeout, reentry=m.reentry)


def log_warnings(cfg) -> None:
    """The config's warnings (keys accepted without effect, mappings from lvs.cf or keepalived.conf),
    once per load: at start and at each reload."""
    for w in cfg.warnings:
        log.warning("config: %s", w.as_warning())


def interface_field(cfg, name: str) -> tuple:
    """The configuration's field (its path in the TOML document) that names interface ``name``:
    the first of public_interface, private_interface, nat_router_device and the virtual servers'
    devices that does."""
    if name == cfg.public_interface:
        return ("global", "public_interface")
    if name == cfg.nat_router_device:
        return ("global", "nat_router_device")
    if name == cfg.private_interface:
        return ("global", "private_interface")
    for i, vs in enumerate(cfg.virtual_servers):
        if vs.device == name:
            return ("virtual_server", i, "device")
    return ("global", "public_interface")


def missing_interfaces(cfg) -> list[str]:
    names = {cfg.public_interface}
    if cfg.network == "nat":
        names.add(cfg.private_interface)
        if cfg.nat_device:
            names.add(cfg.nat_device)
    names |= {cfg.vip_device(vs) for vs in cfg.virtual_servers}
    return sorted(n for n in names if n and not addresses.interface_exists(n))


def check_interfaces(cfg, missing: list[str] | None = None, waited: float = 0.0) -> None:
    missing = missing_interfaces(cfg) if missing is None else missing
    if missing:
        # the line and field of the first (file:line: field: ..., as the loader's issues)
        raise StartupError(str(lbconfig.issue_at(cfg.path, interface_field(cfg, missing[0]),
                                                 f"interface(s) not found: {', '.join(missing)}"
                                                 + (f" (waited {waited:g} s for them)" if waited else ""))))


def _stop_step(what: str, fn, *args, **kw) -> bool:
    """One step of a stop: False, said in one line (the traceback at debug level), when it
    raises -- the stop goes on with its next steps."""
    try:
        fn(*args, **kw)
        return True
    except Exception as e:  # noqa: BLE001 - whatever it is, the other steps still run
        _stop_failed(what, e)
        return False


def _stop_failed(what: str, e: Exception) -> None:
    log.debug("stopping: %s", what, exc_info=e)
    log.error("stopping: %s failed: %s", what, str(e) if isinstance(e, OSError) and str(e)
              else f"{type(e).__name__}: {e}")


class Engine:
    # real_key -> up / the load monitor's weight / the operator's weight: RealStates of specs
    health = RealStates()
    weights = RealStates()
    overrides = RealStates()

    def __init__(self, cfg, *, xdp_mode: str = "native", dataplane: str | None = None, on_sigterm: str = "clean",
                 wait_interfaces: float = 0.0):
        self.cfg = cfg
        self.wait_interfaces = wait_interfaces      # seconds start() waits for a missing interface
        self._reload_at_start = False               # a SIGHUP during start(): reload once running
        self.xdp_mode = xdp_mode
        self.on_sigterm = on_sigterm                    # "clean" | "keep" | "systemd:UNIT" (lb@.service; see stop())
        self.dataplane = dataplane or cfg.dataplane     # xdp | ipvs | auto
        # `lb run --dataplane` (None: the file's): every later load of the file -- each reload,
        # the console's and the peer's edits -- is checked for it, as the start's was
        self.run_dataplane = dataplane
        if self.dataplane == "ipvs":
            self.dp = IpvsDataplane(cfg.instance)
        else:
            # NAT's reply programs loaded with the rest (in parallel) where the private side is
            # attached, and the IPv6 fragments' where there are IPv6 services
            self.dp = XdpDataplane(cfg.instance, Sizes.from_tables(cfg.tables), status=sdnotify.status,
                                   nat=cfg.network == "nat",
                                   ipv6=any(vs.address.version == 6 for vs in cfg.virtual_servers))
        self.lock = InstanceLock(cfg.instance, RUN_DIR)
        self.owned: list[addresses.OwnedAddress] = []
        self.added_at_start: list[addresses.OwnedAddress] = []   # what start() added (a failed start removes them)
        self._role_added: list | None = []  # ... and what a takeover added before the start was done (the same)
        self._stop = None            # "clean" | "keep" | "systemd:UNIT" (decided as the loop ends)
        self._wake: asyncio.Event | None = None
        self.specs = SpecCache()                     # build_table's, kept current by the three below
        self.health: dict[tuple, bool] = {}          # real_key -> up
        self.monitors: dict[tuple, tuple] = {}       # real_key -> (spec, policy, Monitor, task)
        self.loads: dict[tuple, tuple] = {}          # real_key -> (spec, bounds, LoadMonitorTask, task)
        self.weights: dict[tuple, int] = {}          # real_key -> weight its load monitor set
        self.overrides: dict[tuple, int] = {}        # real_key -> the operator's weight (lb weight/quiesce)
        self._overrides_file: str | None = None      # where they are kept; set by start()
        # (future, reply, real_key, its name) of `lb weight` callers: answered after the apply (_answer)
        self._apply_waiters: list[tuple] = []
        self._weight_lock: asyncio.Lock | None = None   # `lb weight` requests, one at a time to their plan
        self._dirty = False                          # health changed: reconcile the data plane
        self._local_addrs: frozenset = frozenset()   # the director's own (refresh_local_addresses)
        self._weight_log = RateLimitedLog(log, 60.0)  # by real server: its load monitor's weight changes
        self._housekeeping_log = RateLimitedLog(log, 60.0)   # by step: a failing one is retried each turn
        self.housekeeping_errors: dict[str, int] = {}       # the run loop's steps that failed, by step
        # ... and what each took: {step: {"runs", "seconds" (summed), "last" (the last run's)}}
        self.housekeeping_seconds: dict[str, dict] = {}
        self._housekeeping_traced: set[tuple] = set()   # (step, error type[, file, line]) whose traceback is logged
        # why the run loop gave up (its own code failed at RUN_LOOP_GIVE_UP turns in a row, or an
        # error ended run()): lb.engine.run keeps the data plane and exits 1
        self.failed: str | None = None
        self.on_sorry: set[tuple] = set()            # keys of the services sent to their sorry server
        self._applied_table: TableSpec | None = None  # the last table the data plane took
        # virtual server key -> why its health, weight or override change waits (HeldBack): `lb status`
        # says so, with the weights the data plane still has
        self.waiting: dict[tuple, str] = {}
        # HA (lb.ha.pulse): without an [ha] table the one director is always active
        self.pulse = None
        self.active = cfg.ha is None
        self._dp_lock = threading.Lock()             # data plane writes from worker threads, one at a time
        # set from a reload's start (before it reads the file) until self.cfg is its config or
        # it gave up (the old config stays), then set: an `lb weight` plan waits for it
        # (_plan_override), up to RELOAD_WAIT seconds
        self._cfg_pending: threading.Event | None = None
        self._reload_waiters: list[asyncio.Future] = []   # `lb reload` callers on the control socket
        self._reload_keep = False     # one of them keeps the restart-only changes as they run (reload_config)
        self._usable: dict[tuple, set] = {}          # service key -> real servers taking new connections
        self._fell_back = False                      # auto: XDP gave way to kernel IPVS
        # [ha]: the data plane's lease is refreshed with every heartbeat once pulse has decided a
        # role and the addresses follow it (lb/ha/pulse.py, bpf/lb_lease.h)
        self._lease_armed = False
        self._lease_log = RateLimitedLog(log, 10.0)
        self._bgp_log = RateLimitedLog(log, 60.0)      # a BGP lease write that failed (_bgp_update)
        # what the director holds stays held (keep_ownership): addresses and XDP programs put
        # back after an interface lost them, and the last thing found or done
        self._addr_lock = threading.Lock()           # role changes vs keep_ownership's restore
        self.ownership: dict = {"addresses_restored": 0, "xdp_attached": 0, "last": None, "at": None}
        self._resizing = False       # a move into new [tables] sizes has more to do (finish_resize)
        # the run loop's steps that run beside its turns (the sweep, the next hops' refresh), and
        # when each began (Engine._beside_hung)
        self._beside_tasks: dict[str, asyncio.Future] = {}
        self._beside_started: dict[str, float] = {}
        self._ownership_log = RateLimitedLog(log, 60.0)
        self._address_watch = addresses.Watch()      # when to look for lost addresses
        # what this run holds, recorded across runs (lb/held.py): what the earlier run's record
        # names and this run has not released yet, and the earlier run's addresses this config
        # names still, held before pulse decides a role
        self._held_lock = threading.Lock()
        self._held_log = RateLimitedLog(log, 60.0)
        self._stale = held.Held()
        self._carried: list[addresses.OwnedAddress] = []
        # addresses take() found on their interface already and no earlier run of this instance
        # recorded: the operator's (or another program's), left where they are at a stop or a
        # reload that drops them, and not in the record (_found_there, _ours)
        self._found: set[addresses.OwnedAddress] = set()
        # the active role's addresses are taken (at the start, or by a takeover's take): only then
        # does keep_ownership put back one that went.  Between on_role's `active = True` and its
        # take, a restore added them first, take found them there, and _found_there took lb's own
        # addresses for the operator's (left out of the record: a kept restart never released them)
        self._taken = False
        # reloads by result (ok, refused, failed), the last one's, and when the running config was loaded
        self.reloads: dict = {"ok": 0, "refused": 0, "failed": 0, "last_ok": True, "loaded_at": time.time()}
        self.takeovers = 0                           # HA: times this director became active
        self.configs = ConfigRequests(self)          # the control socket's configuration requests
        self.configsync = None                       # HA: lb.ha.configsync (the config push)
        self.bgp = None                              # lb.bgp.Announcer with [bgp]: the VIPs announced

    # ---- lifecycle ----
    def start(self) -> None:
        try:
            self.lock.acquire()        # before anything is touched: a second `lb run` refuses here
        except (AlreadyRunning, files.UnsafePath) as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"{RUN_DIR}: {e.strerror or e}") from None
        log.info("lb instance %r starting (config %s, %s data plane)", self.cfg.instance,
                 self.cfg.path or "<config>", self.dataplane)
        self._stale = held.read(self._held_path())     # what an earlier run left (a kept data plane)
        self._wait_for_interfaces()
        if self.cfg.bgp is not None:
            from lb.bgp import Announcer
            self.bgp = Announcer(self.cfg)
            # an upgrade's kept routes are this start's from now on: the data plane's load can
            # outlast their lease (a cold start compiles), and a start that dies withdraws them
            self.bgp.claim_kept()
        else:
            from lb.bgp.announcer import stop_leftover
            stop_leftover(self.cfg.instance)      # [bgp] gone: the ExaBGP a restart kept goes too
        ha_announce.warm_up_in_background()     # beside the data plane's load: READY waits for both
        if self.cfg.ha is not None:
            from lb.ha.pulse import KeyFileError, Pulse
            try:
                self.pulse = Pulse(self.cfg.ha, self.cfg.instance, self.on_role, sync_source=self.sync_export,
                                   sync_sink=self.sync_import, announce=self.announce,
                                   public_interface=self.cfg.public_interface, on_heartbeat=self.refresh_lease,
                                   guard_file=os.path.join(self.lock.run_dir, f"{self.cfg.instance}.ha-guard"))
            except KeyFileError as e:
                raise StartupError(str(lbconfig.issue_at(self.cfg.path, ("ha", "key_file"), e.reason))) from None
            except (OSError, ValueError) as e:
                raise StartupError(f"{self.cfg.path or '<config>'}: [ha] {e}") from None
        self._restore_overrides()
        sdnotify.status("loading the data plane")
        self._load_dataplane()
        self.owned = addresses.wanted_addresses(self.cfg)
        recorded = {(a.ifname, a.address) for a in self._stale.addresses}
        self._carried = [a for a in self.owned if (a.ifname, a.address) in recorded]
        self._start_lease()
        try:
            self._local_addrs = self._own_addresses()     # the table below takes them
        except Exception as e:  # noqa: BLE001 - netlink's errors; the sweep reads them again
            log.warning("reading the director's own addresses: %s (read again at the next sweep; until "
                        "then a new connection from one of them is scheduled)", e)
        sorry: set[tuple] = set()
        table = self._table(self.cfg, sorry)
        self.dp.plan(table)             # a table that cannot fit takes no address
        addresses.check(self.owned)
        if self.active:
            self.added_at_start = addresses.take(self.owned)
            self._found_there(self.owned, self.added_at_start)
            self._taken = True
        else:
            # HA: the addresses come with the active role (pulse decides); the data plane is
            # loaded and attached anyway so that a takeover only adds addresses
            log.info("HA: starting without the virtual addresses until pulse decides the role")
        sdnotify.status("applying the table")
        try:
            self._apply(table, self.cfg, planned=True, sorry=sorry)
        except ProgramLoadFailed as e:      # a scheduler's program: nothing written, nothing attached
            if not self._fall_back(e):
                raise
            self._apply_on_fallback()
        sdnotify.status("attaching XDP" if self.dp.kind == "xdp" else "attaching")
        self._attach_dataplane()
        self._release_held(self.owned, sync=self.cfg.ha is not None and self.cfg.ha.sync)
        self._write_held()
        self._resizing = self._finish_resize()
        if self.bgp is not None:
            from lb.bgp import BgpError
            try:
                self.bgp.start()
            except BgpError as e:
                raise StartupError(f"{self.cfg.path or '<config>'}: {e}") from None
            self._bgp_update(attached=self._attached(), active=self.active)
        log.info("lb instance %r running: %d virtual services", self.cfg.instance,
                 len(self.dp.services))

    def _finish_resize(self) -> bool:
        """dp.finish_resize (new [tables]: the old maps' last connections copied, the old
        programs and maps let go); True while it has more to do (the run loop calls it again)."""
        try:
            with self._dp_lock:             # pulse's imports write the same maps from their thread
                return self.dp.finish_resize()
        except (DataplaneError, OSError) as e:
            # the new maps serve; only what the old programs made during the start is missing
            log.error("finishing the move into the new [tables] sizes: %s", e)
            return False

    def _wait_for_interfaces(self, poll: float = 0.5) -> None:
        """Up to wait_interfaces seconds for the interfaces the config names (a VLAN, a bond or a
        NIC that comes up later at boot than lb@.service), saying so in STATUS= and the log; a
        stop asked for meanwhile ends the wait (StartCancelled).  StartupError if they stay
        missing."""
        deadline = time.monotonic() + self.wait_interfaces
        waiting = False
        while True:
            missing = missing_interfaces(self.cfg)
            if not missing:
                if waiting:
                    log.info("interface(s) there: starting")
                return
            if self._stop is not None:
                raise StartCancelled(f"stopped while waiting for interface(s) {', '.join(missing)}")
            if time.monotonic() >= deadline:
                check_interfaces(self.cfg, missing, self.wait_interfaces)     # raises
            if not waiting:
                waiting = True
                log.warning("waiting up to %g s for interface(s) %s", self.wait_interfaces, ", ".join(missing))
            sdnotify.status(f"waiting for interface(s) {', '.join(missing)}")
            time.sleep(poll)

    def _table(self, cfg, sorry: set | None = None) -> TableSpec:
        """build_table for the current health; the keys of the services it sends to their sorry
        server are added to ``sorry`` (for _apply, which logs the switches once it is applied).
        The XDP data plane's also names the director's own addresses (the kernel's martian test,
        which IPVS has before it)."""
        table = build_table(cfg, self.health, sorry, self.weights, self.overrides, self.specs)
        if self._local_addrs:
            table = dataclasses.replace(table, local_addrs=self._local_addrs)
        return table

    def refresh_local_addresses(self) -> None:
        """The director's own addresses (every interface's), read at start, at each sweep and when
        rtnetlink tells of one added or removed (addresses.Watch); a change goes into the table
        at the run loop's next apply: the XDP data plane schedules no
        new connection from one (a forged source -- XDP sees only what arrives -- and a martian
        the kernel drops; kernel IPVS never sees one)."""
        addrs = self._own_addresses()
        if addrs != self._local_addrs:
            self._local_addrs = addrs
            self._dirty = True

    def _own_addresses(self) -> frozenset:
        """Every address of the director's interfaces, for the XDP data plane (none for IPVS)"""
        if self.dp.kind != "xdp":
            return frozenset()
        return frozenset(addresses.local_addresses())

    def _nexthops_ahead(self, table: TableSpec) -> dict:
        """The next hops of the real servers ``table`` adds (dp.nexthops_ahead's, read under the
        lock), resolved without the data plane's lock, for the apply that follows to take:
        netlink, ~0.4 ms an address, and up to 3 s for servers whose ARP does not answer yet
        (added before they are up) -- which an HA import, the sweep's end and the next hops'
        refresh waited behind.  A table that adds none: {}, no netlink.  What the data plane
        moves meanwhile the apply resolves itself, as before."""
        with self._dp_lock:
            pairs = self.dp.nexthops_ahead(table)
        return self.dp.resolve_ahead(pairs) if pairs else {}

    def _trial_table(self, overrides: dict, key) -> TableSpec:
        """The table the overrides ``overrides`` -- the current ones with ``key``'s changed (an
        `lb weight` request's) -- would make, to plan: its service built afresh, the others as
        the cache has them; nothing of the engine's changes."""
        return build_table(self.cfg, self.health, None, self.weights, overrides, self.specs, trial={key[0]})

    def _sorry_switch(self, cfg, sorry: set) -> None:
        """Each service's switch to or from its sorry server, logged once: when the table that
        makes it is applied (a refused reload switched nothing)."""
        names = {vs.key: vs for vs in cfg.virtual_servers}
        for key in sorted(sorry - self.on_sorry, key=str):
            vs = names[key]
            log.warning("virtual service %s: no usable real server, new connections go to the sorry "
                        "server %s", vs.name, sorry_text(vs.sorry_server))
        for key in sorted(self.on_sorry - sorry, key=str):
            vs = names.get(key)
            if vs is not None and vs.active:
                log.warning("virtual service %s: a real server is usable again, leaving the sorry server",
                            vs.name)
        self.on_sorry = sorry

    def _apply(self, table: TableSpec, cfg, planned: bool = False, sorry: set | None = None,
               nexthops: dict | None = None) -> None:
        """dp.plan (unless the caller did) and dp.apply (with ``nexthops``: _nexthops_ahead's),
        then the switches to and from the sorry servers (``sorry``: _table's) and
        quiesce_server: a service that gained a usable real server (added, back after reentry,
        or out of weight 0) has its schedulers' counts restarted."""
        if not planned:
            self.dp.plan(table)
        self.dp.apply(table, nexthops=nexthops)
        self._applied_table = table
        if sorry is not None:
            self._sorry_switch(cfg, sorry)
        usable = {s.key: {r.key for r in s.reals if r.weight > 0} for s in table.services}
        quiesce = {vs.name for vs in cfg.virtual_servers if vs.quiesce_server}
        for svc in table.services:
            old = self._usable.get(svc.key)
            joined = usable[svc.key] - old if old is not None else set()
            if svc.name in quiesce and joined:
                try:
                    n = self.dp.restart_sched_counts(svc)
                except (DataplaneError, OSError) as e:
                    # the table is in place: failing here would undo the reload's addresses and
                    # keep the old config beside a data plane that forwards the new one
                    log.error("quiesce_server: restarting the schedulers' connection counts of virtual "
                              "service %s failed (%s): they count its existing connections too", svc.name, e)
                    continue
                log.info("quiesce_server: %s joined virtual service %s: the schedulers' connection counts "
                         "restart from zero (%d existing connections left out)",
                         ", ".join(f"{a}:{p}" for a, p in sorted(joined, key=str)), svc.name, n)
        self._usable = usable
        if self.bgp is not None:
            self._bgp_update(table, attached=self._attached(), active=self.active)

    def _bgp_update(self, table=None, **kw) -> None:
        """bgp.update, which writes the BGP lease when its routes change.  A write that fails (a
        full /run) does not undo what is done -- the table applied, the role taken --: it is
        said (at most once a minute) and the lease's renewal (Announcer.run) writes the routes
        again each second."""
        try:
            self.bgp.update(table, **kw)
        except OSError as e:
            self._bgp_log.log("lease", logging.WARNING, "BGP: the lease's routes are not written yet (the "
                              "renewal tries again each second): %s", e)

    def _attached(self) -> bool:
        """lb's program on the public interface, forwarding: announced over BGP only then"""
        pub = self.cfg.public_interface
        return pub in self.dp.attached and pub not in getattr(self.dp, "displaced", ())

    def refresh_sched_base(self) -> int:
        with self._dp_lock:
            return self.dp.refresh_sched_base()

    # ---- the data plane's choice: xdp, ipvs, or auto (xdp, else kernel IPVS) ----
    def _load_dataplane(self) -> None:
        try:
            self.dp.load()
        except (DataplaneError, ImportError) as e:
            if not self._fall_back(e):
                raise
            self.dp.load()
        log.info("data plane: %s", self.dp.kind)

    def _attach_dataplane(self) -> None:
        try:
            # NAT: the replies' side first, so no reply of a connection the public program has
            # just made meets a program that knows nothing of it (the previous run's, whose maps
            # a resize has left behind; or none at a first start) and goes out untranslated
            if self.cfg.network == "nat":
                self.dp.attach(self.cfg.private_interface, "private", self.xdp_mode)
            self.dp.attach(self.cfg.public_interface, "public", self.xdp_mode)
            self._attach_guards()
        except DataplaneError as e:
            if not self._fall_back(e):
                raise
            self._apply_on_fallback()
            self._attach_dataplane()

    def _apply_on_fallback(self) -> None:
        """After _fall_back: kernel IPVS loaded, planned and given the table."""
        self._load_dataplane()
        sorry: set[tuple] = set()
        self._apply(self._table(self.cfg, sorry), self.cfg, sorry=sorry)

    def _fall_back(self, err: Exception) -> bool:
        """auto: give up XDP (leaving nothing of it behind) for kernel IPVS -- not when it adopted
        the previous run's programs, which forward still: IPVS behind them would see nothing,
        and they would go on from maps nobody updates (the start fails instead, and they serve
        on, as after any failed start of an adopted data plane)."""
        if self.dataplane != "auto" or self._fell_back:
            return False
        old = self.dp
        if old.adopted:
            log.error("XDP data plane unavailable (%s), and the previous run's XDP programs forward still: "
                      "not falling back to kernel IPVS behind them (`lb stop` them first, then start)", err)
            return False
        self._fell_back = True
        log.warning("XDP data plane unavailable, falling back to kernel IPVS: %s", err)
        old.detach_all()
        if old.created:
            old.unpin()
        old.close()
        self.dp = IpvsDataplane(self.cfg.instance)
        return True

    # ---- what this run holds, recorded across runs (lb/held.py) ----
    def _held_path(self) -> str:
        return held.path(self.lock.run_dir, self.cfg.instance)

    def _held_addresses(self) -> list[addresses.OwnedAddress]:
        """The addresses this run holds as its own: the active director's; before pulse has
        decided a role, those of the earlier run's that this config names still (left up)."""
        if self.active:
            return self._ours(self.owned)
        return [a for a in self._carried if a in self.owned]

    def _found_there(self, wanted: list[addresses.OwnedAddress], added: list[addresses.OwnedAddress]) -> None:
        """After take(wanted) added ``added``: the others were there already -- an earlier run's
        (the record names them: this instance's) or someone else's, put by hand (self._found)."""
        carried = set(self._carried)
        for a in wanted:
            if a in added:
                self._found.discard(a)
            elif a not in carried:
                self._found.add(a)

    def _ours(self, addrs: list[addresses.OwnedAddress]) -> list[addresses.OwnedAddress]:
        """Those of addrs this instance put on their interfaces (not found there: self._found)."""
        return [a for a in addrs if a not in self._found]

    def _release_ours(self, addrs: list[addresses.OwnedAddress]) -> None:
        """Remove those of addrs this instance put there; one found there is left (said)."""
        for a in addrs:
            if a in self._found:
                log.info("address %s left on %s: it was there before lb took it", a.address, a.ifname)
        addresses.release(self._ours(addrs))
        self._found.difference_update(addrs)

    def _held_now(self, addrs: list[addresses.OwnedAddress]) -> held.Held:
        """What this run holds (its XDP programs, ``addrs``, its kernel sync daemons), and what
        the earlier run's record names that is not released yet."""
        programs = tuple(self.dp.held_programs())
        sync = tuple(held.HeldSync(*d) for d in self.dp.held_sync())
        return held.Held(programs, tuple(held.HeldAddress(a.ifname, a.address) for a in addrs),
                         sync).merged(self._stale)

    def _write_held(self, what: held.Held | None = None, addrs: list | None = None) -> None:
        """The record made current (``what``, else _held_now of ``addrs`` or of the addresses
        held): after the start, each reload and role change, and at a stop that keeps the data
        plane -- so that a daemon killed meanwhile leaves it current too.  Only a daemon that holds its instance's
        lock writes it; a write that fails is said (at most once a minute) and changes nothing
        else."""
        if self.lock.fd is None:
            return
        path = self._held_path()
        with self._held_lock:
            try:
                if what is None:
                    what = self._held_now(self._held_addresses() if addrs is None else addrs)
                held.write(path, what, self.cfg.instance)
            except OSError as e:
                self._held_log.log("write", logging.ERROR, "%s: cannot record what this run holds (%s): a "
                                   "restart whose configuration no longer names an interface or an address may "
                                   "leave it behind", path, e.strerror or e)

    def _release_held(self, want: list[addresses.OwnedAddress], sync: bool) -> None:
        """What the earlier run's record names (self._stale) and this run does not use, released
        once this start's own attach and addresses are done (and at a clean stop, what could not
        be then): an XDP program on an interface this run has no program on, detached if the
        one there is still the recorded one; an address not in ``want``, removed if it is on its
        interface; a kernel sync daemon, stopped unless this run syncs in kernel IPVS too
        (``sync``: it takes it over).  A program whose detach the kernel refused, and a sync
        daemon it would not stop, stay in self._stale (the record keeps them)."""
        stale = self._stale
        if not stale:
            return
        ours = self.dp.held_programs()
        in_use = {p.ifname for p in ours} | {p.ifindex for p in ours if p.ifindex}
        programs_left, detached = [], []
        for p in stale.programs:
            if p.ifname in in_use or (p.ifindex and p.ifindex in in_use):
                continue                    # this run's own program took its place there
            try:
                what, text = dpattach.detach_held(p)
            except Exception as e:  # noqa: BLE001 - netlink unusable: tried again at the next start
                what, text = "failed", f"detaching the {p.program} XDP program from {p.ifname}: {e}"
            if what == "detached":
                detached.append(p.ifname)
                log.info("%s: this configuration no longer uses it", text)
            elif what == "failed":
                programs_left.append(p)
                log.error("%s", text)
            elif what == "other":
                log.warning("%s", text)
            else:
                log.info("%s", text)
        keep = {(a.ifname, a.address) for a in want}
        drop = [addresses.OwnedAddress(a.ifname, a.address) for a in stale.addresses
                if (a.ifname, a.address) not in keep]
        there = addresses.present(drop) if drop else []
        if there:
            addresses.release(there)        # (each removal logged)
        sync_left = []
        if stale.sync:
            sync_left = self.dp.release_sync([(d.state, d.ifname, d.syncid) for d in stale.sync], sync)
        self._stale = held.Held(tuple(programs_left), (), tuple(held.HeldSync(*d) for d in sync_left))
        if detached or there:
            log.info("%s: released what the earlier run held and this configuration no longer names: %s",
                     self._held_path(), "; ".join(
                         ([f"XDP on {', '.join(detached)}"] if detached else [])
                         + ([f"address{'es' if len(there) > 1 else ''} "
                             f"{', '.join(f'{a.address} on {a.ifname}' for a in there)}"] if there else [])))

    def stop(self, keep_dataplane: bool = False) -> None:
        """keep_dataplane: the programs stay attached, the maps pinned and the addresses up, for
        the next `lb run` to adopt (an upgrade, `systemctl restart`); otherwise everything goes
        (`systemctl stop`, `lb stop`).  lb@.service runs `lb run --on-sigterm systemd`: at SIGTERM
        the job systemd is running (stop or restart) picks one (_systemd_stop_kind).  After the
        run loop gave up (``failed``) no STOPPING=1: the exit that follows is a failure."""
        if self.failed is None:
            sdnotify.stopping("stopping (data plane kept for the next start)" if keep_dataplane else "stopping")
        if keep_dataplane:
            log.info("leaving the data plane, its maps and addresses in place for %s",
                     "an upgrade" if self.failed is None else "the next start")
            settle = getattr(self.dp, "settle_resize", None)      # the XDP data plane's
            if settle is not None:
                try:
                    settle()
                except Exception as e:  # noqa: BLE001 - the stop goes on; the next start catches up
                    log.error("finishing the resize before the stop failed (%s): the next start catches "
                              "up what the old maps hold", e)
            self._write_held()              # for the next start: what it must release if unnamed
            _stop_step("closing the data plane", self.dp.close)
        else:
            # each step on its own: one that fails (netlink out of file descriptors, say) is said,
            # and the others -- the maps unpinned, ExaBGP stopped, the lock freed -- are done
            _stop_step("detaching the data plane", self.dp.detach_all)
            released = _stop_step("removing the virtual addresses", self._release_ours, self.owned)
            _stop_step("releasing what the earlier run left", self._release_held, [], sync=False)
            if released:
                self._write_held(self._stale)        # (nothing, as a rule: the record goes)
            else:                                    # still up: the next start knows them for ours
                self._write_held(addrs=self._ours(self.owned))
            _stop_step("removing the pinned maps", self.dp.unpin)
            _stop_step("closing the data plane", self.dp.close)
        if self.bgp is not None:
            _stop_step("stopping the BGP speaker", self.bgp.close, keep=keep_dataplane)
        self.lock.release()
        if self.failed is None:
            log.info("lb instance %r stopped", self.cfg.instance)
        else:
            log.error("lb instance %r exits after a failure (%s); its data plane forwards on", self.cfg.instance,
                      self.failed)

    def stop_failed_start(self) -> None:
        """After a start that failed (in start(), or in the run loop's own start: pulse's port
        held by Piranha's pulse, say): nothing may stay attached or half-programmed of a new
        instance; an adopted data plane serves on as the previous run left it, with its
        addresses -- and, when the start got as far as applying the new table, with that table,
        as after a kill -9 of a running daemon: no health checks until a start succeeds, and with
        [ha] its lease runs out and the backup takes over.  Only the addresses this start added
        go: a VIP that was on the interface before (take() left it) is the operator's, or the
        other program's that still serves it."""
        if not self.dp.adopted:
            _stop_step("detaching the data plane", self.dp.detach_all)
        gone = self.added_at_start + (self._role_added or [])
        if not _stop_step("removing the addresses this start added", addresses.release, gone):
            gone = []                               # still up: recorded as this instance's
        # what stays: an adopted data plane's programs, the earlier run's addresses this start
        # found up, and what of the earlier run's record was not released yet
        self._write_held(addrs=[a for a in self._carried if a in self.owned and a not in gone]
                         + [a for a in self.added_at_start + (self._role_added or []) if a not in gone])
        if not self.dp.adopted and self.dp.created:
            _stop_step("removing the pinned maps", self.dp.unpin)
        _stop_step("closing the data plane", self.dp.close)
        if self.bgp is not None:
            _stop_step("stopping the BGP speaker", self.bgp.close, keep=False)
        self.lock.release()

    def reload(self) -> bool:
        """Validate the config file again and apply the difference; a bad file changes nothing."""
        try:
            log.info("%s", self.reload_or_raise())
            return True
        except (ReloadRefused, ReloadFailed) as e:
            log.error("%s", e)
            return False

    def reload_config(self, keep_restart_only: bool = False):
        """The configuration a reload applies: the file's, ReloadRefused when it does not load or
        changes what only a restart can -- unless ``keep_restart_only`` (a console edit while
        such changes wait in the file for the next start: lb.confedit), which keeps those as they
        run (confedit.keep_running) and applies the rest."""
        path = self.cfg.path
        try:
            new = lbconfig.load(path, dataplane=self.run_dataplane)
        except lbconfig.ConfigError as e:
            raise ReloadRefused(f"reload refused, nothing changed:\n{e}", e.issues) from None
        needs = restart_needed(self.cfg, new)
        if needs and keep_restart_only:
            try:
                new = keep_running(self.cfg, new, dataplane=self.run_dataplane)
            except lbconfig.ConfigError as e:
                raise ReloadRefused(f"reload refused, nothing changed: the file's other changes do not go with "
                                    f"the running {', '.join(needs)} (saved for the next start):\n{e}",
                                    e.issues) from None
            log.info("reload: %s in %s wait for lb to restart; they run as before until then", ", ".join(needs), path)
            needs = restart_needed(self.cfg, new)
        if needs:
            raise ReloadRefused(f"reload refused: {', '.join(needs)} changed, which needs a restart"
                                + (" (a restart keeps the connections)" if "tables" in needs else ""))
        return new

    def reload_or_raise(self, keep_restart_only: bool = False) -> str:
        """reload(), raising ReloadRefused (with the file's issues) instead of logging.

        From its start until the new config runs (or the reload gives up, the old one running
        on) ``_cfg_pending`` says a reload is under way: an `lb weight` request waits for it and
        is then checked and planned against the config that runs (_plan_override) -- set
        against the old config meanwhile, its caller was told "ok" for an override the reload
        then dropped (its server gone from the file)."""
        swapped = self._cfg_pending = threading.Event()
        try:
            return self._reload_or_raise(keep_restart_only, swapped)
        finally:
            if self._cfg_pending is swapped:
                self._cfg_pending = None
            swapped.set()

    def _reload_or_raise(self, keep_restart_only: bool, swapped: threading.Event) -> str:
        path = self.cfg.path
        new = self.reload_config(keep_restart_only)
        try:
            check_interfaces(new)
        except StartupError as e:
            raise ReloadRefused(f"reload refused: {e}") from None
        keys = None
        if self.pulse is not None:
            # the HA keyring, read again: a new first key signs from now on (docs/architecture.md,
            # "Changing the HA key"); a file that no longer holds a good keyring refuses the reload
            try:
                keys = self.pulse.reload_keys(new.ha.key_file)
            except (OSError, ValueError) as e:
                why = f"HA key file {e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
                # file:line: field, as the loader's issues
                raise ReloadRefused(f"reload refused, nothing changed: "
                                    f"{lbconfig.issue_at(path, ('ha', 'key_file'), why)}") from None
        log_warnings(new)
        # all or nothing: everything that can be checked is, before the first write (the data
        # plane's plan: every table's capacity, draining servers' slots included; the new
        # addresses' interfaces); then the addresses, then the table: a write that still fails
        # has the data plane write its previous table back and the new addresses removed
        want = addresses.wanted_addresses(new)
        sorry: set[tuple] = set()
        table = self._table(new, sorry)
        held: list = []                  # ServiceSpecs whose waiting change still does not fit
        why = ""                         # ... and why (`lb status`)
        ahead = self._nexthops_ahead(table)     # the servers it adds: before the lock
        with self._dp_lock:
            try:
                try:
                    self.dp.plan(table)
                except TableDoesNotFit as e:
                    # a health, weight or override change waiting since it does not fit
                    # (apply_health), of a service this reload leaves as it runs, keeps waiting:
                    # it does not refuse the reload.  The reload's own changes must fit.
                    table, sorry, held, _ = self._fitting_part(table, sorry, e, only=self._same_services(new))
                    why = _why_waits(e)
                addresses.check(want)
            except TableDoesNotFit as e:
                lines = "".join(f"\n  {p}" for p in str(e).splitlines())
                raise ReloadRefused(f"reload refused, nothing changed: {path}: the data plane cannot hold "
                                    f"the new table:{lines}") from None
            except addresses.AddressError as e:
                raise ReloadRefused(f"reload refused, nothing changed: {path}: {e}") from None
            added = []
            old_bgp = self.bgp.bgp if self.bgp is not None else None
            try:
                with self._addr_lock:       # the role cannot change between the test and the take
                    if self.active:
                        new_ones = [a for a in want if a not in self.owned]
                        added = addresses.take(new_ones)
                        self._found_there(new_ones, added)
                if self.bgp is not None:
                    self.bgp.bgp = new.bgp           # [[bgp.vip]]: _apply's update announces them
                self._apply(table, new, planned=True, sorry=sorry, nexthops=ahead)
            except addresses.AddressError as e:     # take() removed what it had added
                raise ReloadRefused(f"reload refused, nothing changed: {e}") from None
            except Exception as e:
                if self.bgp is not None:
                    self.bgp.bgp = old_bgp           # a failed reload announces as before
                addresses.release(added)
                if isinstance(e, ApplyFailed) and e.restored or isinstance(e, ProgramLoadFailed):
                    raise ReloadFailed(f"reload failed and was undone: {e}; the {len(added)} addresses this "
                                       f"reload added were removed again: nothing changed", restored=True) from None
                if isinstance(e, DataplaneError):
                    raise ReloadFailed(f"reload failed: {e}; the {len(added)} addresses this reload added were "
                                       f"removed again", restored=False) from None
                raise
        try:
            with self._addr_lock:
                # pulse may have changed the role while the table was applied: a step-down released
                # only the addresses owned before this reload, a takeover took only those
                if self.active:
                    self._release_ours([a for a in self.owned if a not in want])
                    missing = [a for a in want if a not in self.owned and a not in added]
                    try:
                        more = addresses.take(missing) if missing else []
                        self._found_there(missing, more)
                        added += more
                    except addresses.AddressError as e:    # keep_ownership's restore tries again
                        log.error("HA: taking the addresses this reload added: %s", e)
                else:
                    addresses.release(added)
                    added = []
                self.owned, self.cfg = want, new
        finally:
            # the config swapped (or the reload given up): `lb weight` plans go on (_plan_override)
            # now, not after the announcements and the lease's addresses below
            if self._cfg_pending is swapped:
                self._cfg_pending = None
            swapped.set()
        self.announce(True, added)               # the VIPs this reload added: neighbours learn them now
        if new.ha is not None:              # the lease covers the new addresses (bpf/lb_lease.h)
            try:
                self.dp.claim(self._claims(want))
                self._attach_guards()
            except (DataplaneError, OSError) as e:
                log.error("HA: the lease's addresses after the reload: %s", e)
        self._write_held()
        keys_changed = self.pulse.set_keys(keys) if keys is not None else None
        waits = ""
        self.waiting = {_config_key(h): why for h in held}
        if held:
            self._dirty = True           # the run loop tries them again at its next turns
            waits = (f"; the health, weight or override change of virtual service(s) {_names(held)} "
                     f"still does not fit the data plane and waits")
            log.warning("reload: %s", waits[2:])
        return f"reloaded {path}" + (f"; {keys_changed}" if keys_changed else "") + waits

    # ---- health (nanny) ----
    def sync_monitors(self) -> None:
        """One monitor per active real server of each active service; unchanged ones keep their
        state across reloads.  A server whose monitor goes (kind "none" now) counts as up: one
        its monitor had down comes back into the table (or out of weight 0)."""
        wanted = {}
        for vs in self.cfg.virtual_servers:
            if not vs.active or vs.monitor.kind == "none":
                continue
            for rs in vs.real_servers:
                if rs.active:
                    wanted[real_key(vs, rs)] = (vs, rs)
        for key in [k for k in self.monitors if k not in wanted]:
            self.monitors.pop(key)[3].cancel()
            if not self.health.pop(key, True):
                self._dirty = True
        for key, (vs, rs) in wanted.items():
            spec, policy = check_spec(vs, rs)
            old = self.monitors.get(key)
            if old and old[0] == spec and old[1] == policy:
                continue
            if old:
                old[3].cancel()
            # _health_changed logs each transition: the monitor does not too
            mon = Monitor(key, spec, policy, self._health_changed, initial_up=self.health.get(key, True),
                          log_changes=False)
            if old:                     # the same server, checked another way: its counts go on
                mon.carry(old[2])
            self.monitors[key] = (spec, policy, mon, mon.start())
        if self._dirty and self._wake is not None:
            self._wake.set()

    def sync_load_monitors(self) -> None:
        """One load monitor per active real server of each service that has one; unchanged ones
        keep their weight across reloads.  Without a load monitor the configured weight rules."""
        wanted = {}
        for vs in self.cfg.virtual_servers:
            lm = vs.load_monitor
            if not vs.active or lm is None:
                continue
            for rs in vs.real_servers:
                if not rs.active:
                    continue
                port = lm.port if lm.kind == "agent" else rs.effective_port(vs)
                spec = LoadSpec(lm.kind, str(rs.address), port, lm.program, lm.timeout, lm.script_user)
                wanted[real_key(vs, rs)] = (spec, (lm.interval, rs.weight, lm.min_weight))
        for key in [k for k in self.loads if k not in wanted]:
            self.loads.pop(key)[3].cancel()
            if self.weights.pop(key, None) is not None:
                self._dirty = True
        for key, (spec, bounds) in wanted.items():
            old = self.loads.get(key)
            if old and old[0] == spec and old[1] == bounds:
                continue
            if old:
                old[3].cancel()
            if self.weights.pop(key, None) is not None:   # new bounds: the configured weight until asked
                self._dirty = True
            task = LoadMonitorTask(key, spec, bounds[0], bounds[1], bounds[2], self._weight_changed)
            self.loads[key] = (spec, bounds, task, task.start())
        if self._dirty and self._wake is not None:
            self._wake.set()

    def _weight_changed(self, key, weight: int, detail: str) -> None:
        (proto, vip, vport), addr, port = key
        old = self.weights.get(key)
        if old == weight:
            return
        # a load that moves with every poll (or an agent that answers 1% and 100% by turns) would
        # write a line per real server every interval: one a minute each, counting the others
        self._weight_log.log(key, logging.INFO, "real server %s:%d of %s %s:%d: load monitor sets weight %d "
                             "(was %s): %r", addr, port, proto.upper(), vip, vport, weight,
                             "configured" if old is None else old, detail)
        self.weights[key] = weight
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

    def _health_changed(self, key, up: bool, reason: str) -> None:
        (proto, vip, vport), addr, port = key
        log.warning("real server %s:%d of %s %s:%d is %s: %s", addr, port, proto.upper(), vip, vport,
                    "up" if up else "down", reason)
        self.health[key] = up
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

    def apply_health(self) -> None:
        """The table for the current health, load weights and overrides.  When the data plane
        cannot hold it (TableDoesNotFit: a sorry server taking over while every server of a full
        pool drains, say), the services whose change fits are applied and those whose change does
        not keep what was applied last: HeldBack (a TableDoesNotFit) names them; the run loop tries
        them again at its next turns.  (All or nothing, one service's verdict that did not fit
        kept every other real server's health, weight and override out of the table.)"""
        ahead: dict | None = None
        while True:
            sorry: set[tuple] = set()
            with self._dp_lock:
                table = self._table(self.cfg, sorry)
                pairs = self.dp.nexthops_ahead(table) if ahead is None else None
                if not pairs:
                    return self._apply_fitting(table, sorry, ahead)
            # real servers to add: their next hops resolved without the lock (_nexthops_ahead), the
            # table built again with it (health may have moved meanwhile: what that adds is
            # resolved in the apply)
            ahead = self.dp.resolve_ahead(pairs)

    def _apply_fitting(self, table: TableSpec, sorry: set, nexthops: dict | None) -> None:
        """apply_health's, under the data plane's lock."""
        try:
            self.dp.plan(table)
        except TableDoesNotFit as e:
            table, sorry, held, taken = self._fitting_part(table, sorry, e)
            if taken:
                self._apply(table, self.cfg, planned=True, sorry=sorry, nexthops=nexthops)
            if not held:             # (the data plane's state moved between the plans)
                self.waiting = {}
                return
            self.waiting = {_config_key(h): _why_waits(e) for h in held}
            lines = "".join(f"\n  {p}" for p in str(e).splitlines())
            raise HeldBack(f"the change of virtual service(s) {_names(held)} does not fit the data plane "
                           f"and waits (the other services' changes are applied):{lines}") from None
        self._apply(table, self.cfg, planned=True, sorry=sorry, nexthops=nexthops)
        self.waiting = {}

    def _fitting_part(self, table: TableSpec, sorry: set, err: TableDoesNotFit,
                      only: set | None = None) -> tuple[TableSpec, set, list, bool]:
        """``table`` with the services whose change since the last applied table does not fit put
        back as they were applied (``only``: of those services (virtual server keys) only; the
        others' changes must fit): (that table, its sorry set, the ServiceSpecs held back,
        whether any of those changes was taken).  Raises ``err`` when that table does not fit
        either, or no such service changed."""
        last = self._applied_table
        if last is None:
            raise err
        old = {s.key: s for s in last.services}
        new = list(table.services)
        changed = [i for i, s in enumerate(new) if s.key in old and old[s.key] != s
                   and (only is None or _config_key(s) in only)]
        if not changed:
            raise err
        mixed = [old[s.key] if i in changed else s for i, s in enumerate(new)]

        def fits(services) -> bool:
            try:
                self.dp.plan(dataclasses.replace(table, services=tuple(services)))
            except TableDoesNotFit:
                return False
            return True

        if not fits(mixed):
            raise err
        taken = []
        for i in changed:
            trial = list(mixed)
            trial[i] = new[i]
            if fits(trial):
                mixed, taken = trial, taken + [i]
        held = [i for i in changed if i not in taken]
        held_keys = {_config_key(new[i]) for i in held}
        sorry = {k for k in sorry if k not in held_keys} | (self.on_sorry & held_keys)
        return dataclasses.replace(table, services=tuple(mixed)), sorry, [new[i] for i in held], bool(taken)

    def _same_services(self, new) -> set:
        """The keys of the virtual servers ``new`` (a reloaded config) leaves as they run:
        what differs in their specs is their real servers' health, weights and overrides."""
        if FORWARD_OF_NETWORK[new.network] != FORWARD_OF_NETWORK[self.cfg.network] or \
                (new.bgp is not None and new.bgp.active_active) != \
                (self.cfg.bgp is not None and self.cfg.bgp.active_active):
            return set()
        running = {vs.key: vs for vs in self.cfg.virtual_servers}
        return {vs.key for vs in new.virtual_servers if running.get(vs.key) == vs}

    # ---- the operator's weight overrides (`lb weight`, `lb quiesce`, `lb activate`) ----
    def set_override(self, service, server, weight) -> str:
        """Set (weight 0..65535) or clear (None) the override of one real server; the caller
        re-applies the table.  OverrideError, changing nothing, for a bad request."""
        return self._take_override(self._override_request(service, server, weight))

    def _override_request(self, service, server, weight) -> tuple:
        """An `lb weight` request checked against the running config, nothing changed: (vs, rs,
        its real_key, the weight or None); OverrideError for a bad one."""
        vs = find_service(self.cfg, service)
        rs = find_real(vs, server)
        weight = check_weight(weight)
        if not vs.active or not rs.active:
            what = f"virtual server {vs.name}" if not vs.active else f"real server {self._where(vs, rs)}"
            raise OverrideError(f"{what} is inactive (active = false in {self.cfg.path or '<config>'}): "
                                f"it takes no connections whatever its weight")
        return vs, rs, real_key(vs, rs), weight

    @staticmethod
    def _where(vs, rs) -> str:
        # as `lb list` and `lb status` show it: a firewall-mark service's real server has port 0
        # (each connection keeps the port it came to)
        return f"{rs.name} ({_endpoint(rs.address, 0 if vs.fwmark else rs.effective_port(vs))}) of {vs.name}"

    def _with_override(self, key, weight) -> dict:
        """The overrides with ``key``'s set to ``weight`` (None: cleared); self.overrides unchanged."""
        overrides = dict(self.overrides)
        if weight is None:
            overrides.pop(key, None)
        else:
            overrides[key] = weight
        return overrides

    def _take_override(self, request: tuple) -> str:
        """The override of a checked request (_override_request) set and saved; its reply message."""
        vs, rs, key, weight = request
        where = self._where(vs, rs)
        old = self.overrides.get(key)
        if weight is None:
            self.overrides.pop(key, None)
            self._save_overrides()
            if old is not None:
                log.info("operator override of real server %s cleared (was weight %d)", where, old)
            return f"{where}: {'override cleared' if old is not None else 'no override to clear'}; " \
                   f"{self.weight_of(vs, rs).text()}"
        self.overrides[key] = weight
        self._save_overrides()
        if old != weight:
            log.info("operator override: real server %s weight %d (was %s)", where, weight,
                     "not overridden" if old is None else old)
        w = self.weight_of(vs, rs)
        quiet = "; open connections go on, no new ones" if w.source == lbweight.OVERRIDE and w.value == 0 else ""
        return f"{where}: {w.text()}{quiet}"

    def weight_of(self, vs, rs) -> lbweight.Weight:
        """rs's effective weight now, and why: what the table gives it (lb.weight's rule)."""
        key = real_key(vs, rs)
        return effective_weight(vs, rs, self.health.get(key, True), self.weights.get(key), self.overrides.get(key))

    @staticmethod
    def _override_id(key) -> list:
        (k0, k1, k2), addr, port = key
        return [str(k0), str(k1), int(k2), str(addr), int(port)]

    def _save_overrides(self) -> None:
        """Written at every change, so a restarted lb (an upgrade, a crash) keeps a server in
        maintenance out of the rotation; atomic, 0600."""
        if self._overrides_file is None:
            return
        if not self.overrides:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._overrides_file)
            return
        doc = [{"server": self._override_id(k), "weight": w} for k, w in self.overrides.items()]
        try:
            files.write_private(self._overrides_file, json.dumps(doc))
        except OSError as e:
            log.warning("cannot keep the operator overrides in %s: %s", self._overrides_file, e)

    def _restore_overrides(self) -> None:
        """At start: the overrides a previous lb run of this instance left, for the real servers
        this config still has (active); the others are dropped with a warning."""
        self._overrides_file = overrides_file(self.cfg.instance)
        try:
            doc = json.loads(files.read_private(self._overrides_file, limit=16 << 20))
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError, files.UnsafePath) as e:
            log.warning("ignoring %s: %s", self._overrides_file, e)
            return
        if not isinstance(doc, list):
            log.warning("ignoring %s: not a list of overrides", self._overrides_file)
            return
        known = {tuple(self._override_id(k)): k for k in override_keys(self.cfg)}
        for entry in doc:
            ident = entry.get("server") if isinstance(entry, dict) else None
            try:
                # [proto, vip, vport, address, port]: anything else is not ours to guess at
                if not (isinstance(ident, list) and [type(x) for x in ident] == [str, str, int, str, int]):
                    raise ValueError("server")
                if entry.get("weight") is None:        # the file holds set overrides only
                    raise ValueError("weight")
                ident, weight = tuple(ident), check_weight(entry["weight"])
            except (ValueError, OverrideError):
                log.warning("ignoring a malformed entry of %s: %.200r", self._overrides_file, entry)
                continue
            key = known.get(ident)
            if key is None or weight is None:
                log.warning("operator override %.200r of a real server this config does not have: dropped", entry)
                continue
            self.overrides[key] = weight
            log.info("operator override restored: real server %s weight %d", _endpoint(key[1], key[2]), weight)
        self._save_overrides()

    def sync_overrides(self) -> None:
        """After a reload: overrides of real servers the new config removed (or made inactive)
        are dropped; the others stay."""
        keep = override_keys(self.cfg)
        for key in [k for k in self.overrides if k not in keep]:
            (proto, vip, vport), addr, port = key
            log.warning("operator override weight %d of real server %s (%s %s) dropped: the reloaded "
                        "config no longer has it as an active real server", self.overrides.pop(key),
                        _endpoint(addr, port), proto.upper(), _endpoint(vip, vport))
            self._dirty = True
            self._save_overrides()

    async def _weight_reply(self, req: dict) -> dict:
        if "weight" not in req:
            return {"ok": False, "error": f"weight: missing ({WEIGHT_RANGE[0]}..{WEIGHT_RANGE[1]}, or null to "
                                          f"clear the override)"}
        # one at a time from the request to its plan, and set only once its plan says the data
        # plane holds it: an override set before its plan was in every table built meanwhile
        # (the loop's apply of another request's change held back with it, that caller told it
        # was applied; `lb status` showed it), and two under way at once put back each other's
        # changes (an override answered "ok" gone, one answered "nothing changed" kept)
        if self._weight_lock is None:
            self._weight_lock = asyncio.Lock()
        async with self._weight_lock:
            while True:
                cfg = self.cfg
                try:
                    request = self._override_request(req.get("service"), req.get("server"), req["weight"])
                except OverrideError as e:
                    return {"ok": False, "error": str(e)}
                refused = await self._plan_override(request[2], request[3])
                if refused is not None:
                    return {"ok": False, "error": refused}
                if self.cfg is cfg and self._cfg_pending is None:
                    break
                # a reload during the plan (or begun since): the request is checked and planned
                # again against the config that runs once it is done (its server may be gone, or
                # its service changed) -- not set against the old one, and answered "ok" for an
                # override the reload drops
            if self._stop is not None:
                # a stop asked for during the plan: the loop that would apply it ends (it may
                # have ended already, and its caller would wait for ever) -- not set, as a
                # request that comes during the stop is refused
                return {"ok": False, "error": "the daemon is stopping"}
            reply = {"ok": True, "message": self._take_override(request)}
            where = self._where(request[0], request[1])
        if self._wake is None:           # not running the loop (tests): apply here
            try:
                self.apply_health()
            except HeldBack:             # another service's change waits; this one is applied
                self._dirty = True
            return reply
        fut = asyncio.get_running_loop().create_future()
        self._apply_waiters.append((fut, reply, request[2], where))
        self._wake.set()
        return await fut

    async def _plan_override(self, key, weight) -> str | None:
        """The data plane's plan of the table with ``key``'s override set to ``weight`` (None:
        cleared), nothing set yet: None when it holds it, else the refusal (a sorry server taking
        over while every server of the pool drains, say) -- set, the change would keep every
        later one from applying -- or that a reload under way did not end within RELOAD_WAIT
        seconds (its caller is told to try again)."""
        deadline = time.monotonic() + RELOAD_WAIT

        def plan():
            while True:
                with self._dp_lock:
                    # a reload under way (from its start to its swap of self.cfg): a table of
                    # self.cfg, the config the reload replaces, is no answer -- planned while the
                    # reload reads its file, or against the data plane that holds the new table
                    # already, and set, its caller heard "ok" for an override the new config
                    # drops, or one that does not fit beside the new table.  Wait for the swap
                    # (a reload that gives up keeps the old config); the handler then checks and
                    # plans the request again against the config that runs.
                    pending = self._cfg_pending
                    if pending is None:
                        table = self._trial_table(self._with_override(key, weight), key)
                        try:
                            self.dp.plan(table)
                        except TableDoesNotFit as e:
                            # another service's change that waits (apply_health) refuses no
                            # override: only one whose own service's change does not fit
                            _, _, held, _ = self._fitting_part(table, set(), e)
                            if key[0] in {_config_key(h) for h in held}:
                                raise e from None
                        return None
                if not pending.wait(max(0.0, deadline - time.monotonic())):
                    # (a reload that hangs: the watchdog's to end; this caller hears now)
                    return (f"a reload of {self.cfg.path or '<config>'} is still under way after "
                            f"{RELOAD_WAIT:g} s; nothing changed: try again once it is done")

        try:
            if self._wake is None:
                return plan()
            return await asyncio.get_running_loop().run_in_executor(None, plan)
        except TableDoesNotFit as e:
            lines = "".join(f"\n  {p}" for p in str(e).splitlines())
            log.error("operator override refused: the data plane cannot hold the table with it:%s", lines)
            return f"the data plane cannot hold the table with this override; nothing changed:{lines}"

    def _answer(self, waiter: tuple, reply: dict) -> None:
        """An `lb weight` caller waiting for the loop's apply (_apply_waiters) hears ``reply`` --
        unless a reload that came between its override's set and this apply (a `lb reload`
        right behind it: the loop's turn reloads before it applies) removed its real server:
        the override was dropped (sync_overrides), and "ok" would be a lie."""
        fut, _, key, where = waiter
        if fut.done():
            return
        if key not in override_keys(self.cfg):
            reply = {"ok": False, "error": f"real server {where}: a reload of {self.cfg.path or '<config>'} "
                                           f"since this request removed it (or made it inactive): no "
                                           f"override of it is in force"}
        fut.set_result(reply)

    # ---- HA (pulse) ----
    # ---- HA lease (bpf/lb_lease.h): a director whose daemon is gone stops claiming its
    # addresses within deadtime: the data plane drops neighbour requests for them and packets
    # to them once the lease, refreshed with every heartbeat, has run out ----
    def _claims(self, owned) -> dict:
        """{address: "vip" | "router"} of what the active director holds (the lease covers it)."""
        router = self.cfg.nat_router
        return {a.address.ip: "router" if router is not None and a.address == router else "vip" for a in owned}

    def _start_lease(self) -> None:
        """At start, before any address is touched.  Without [ha]: no lease.  With [ha]: the
        addresses it covers; and when an earlier run of ours died and its lease ran out, the
        peer may hold the addresses now: they go first of all (a hitless restart within the
        lease keeps them until pulse decides)."""
        if self.cfg.ha is None:
            self.dp.lease(None)
            self.dp.claim({})
            return
        self.dp.claim(self._claims(self.owned))
        left = self.dp.lease_left()
        if left is not None and left < 0:
            log.warning("HA: the lease of an earlier run of this instance ran out %.1f s ago (its daemon died): "
                        "releasing its addresses until pulse decides the role", -left)
            addresses.release(addresses.present(self.owned))
            self._carried = []

    def _attach_guards(self) -> None:
        """[ha]: every other interface holding one of the addresses (nat_router on the private
        side in direct routing) gets the lease's check, lb_xdp_guard."""
        if self.cfg.ha is None:
            return
        served = {self.cfg.public_interface} | ({self.cfg.private_interface} if self.cfg.network == "nat" else set())
        for dev in sorted({a.ifname for a in self.owned} - served - set(self.dp.attached)):
            self.dp.attach(dev, "guard", self.xdp_mode)

    def _renew_lease(self) -> None:
        self.dp.lease(self.cfg.ha.deadtime)
        if not self._lease_armed and self.dp.lease_left() is None:
            log.warning("HA: the %s data plane has no lease: should this daemon die, its addresses stay claimed "
                        "until it is restarted", self.dp.kind)
        self._lease_armed = True

    def refresh_lease(self) -> None:
        """Pulse, just before each heartbeat: the lease runs deadtime from now, so it runs out
        no later than the peer takes over after the last heartbeat."""
        if not self._lease_armed:
            return
        try:
            self.dp.lease(self.cfg.ha.deadtime)
        except Exception as e:     # the lease runs out: this director stops claiming, as it should
            self._lease_log.log("lease", logging.ERROR, "HA: cannot refresh the lease: %s", e)

    def _end_lease(self) -> None:
        """Stopping with [ha]: pulse told the peer, which took over at once, so this director
        stops claiming now, after its [bgp] drain if any (the addresses too stay with
        --keep-dataplane)."""
        self._lease_armed = False
        try:
            self.dp.lease(0)
        except Exception as e:
            log.warning("HA: cannot end the lease: %s", e)

    def _take_addresses(self) -> None:
        with self._addr_lock:
            try:
                added = addresses.take(self.owned)
                self._found_there(self.owned, added)
                self._taken = True
                if self._role_added is not None:         # the start is not done: a failure undoes them
                    self._role_added += added
            finally:
                self._carried = []          # the role decides from now on
                self._write_held()

    def _release_addresses(self) -> None:
        with self._addr_lock:         # after on_role cleared self.active: no restore adds them back
            # all of them, also one found there (put by hand): the peer holds them now
            addresses.release(self.owned)
            self._found.clear()
            self._taken = False
            self._carried = []
            self._write_held()

    def keep_ownership(self, now: float | None = None) -> None:
        """What the director holds stays held, checked every OWNERSHIP_INTERVAL: an address of
        the active director gone from its interface (a link down and up drops IPv6 addresses; a
        re-created interface all of them; `ip addr del`) is added back and announced -- looked
        for when rtnetlink told of a change (addresses.Watch) --, an XDP program gone from its
        interface is attached again (dp.keep_attached).  Each event is logged (a repeat at most
        once a minute) and counted (`lb status`, the metrics).  The programs too are looked for
        only when rtnetlink told of a link change -- a program attached or removed is one -- or
        FULL_CHECK seconds after the last look (addresses.Watch.links_due), and every second while
        a look finds one still missing, displaced or refused."""
        now = time.monotonic() if now is None else now
        watch = self._address_watch
        notes: list = []
        if watch.links_due(now):
            try:
                with self._dp_lock:
                    notes = self.dp.keep_attached()
            except BaseException:
                watch.links_again()          # the look failed: the next turn looks again
                raise
            if any(what != "attached" for what, _, _ in notes):
                watch.links_again()
        back: list = []
        with self._addr_lock:
            if self.active and self._taken and self.owned and watch.due(now):
                back, errors = addresses.restore(self.owned)
                self._found.difference_update(back)     # gone, and added again: lb's now
                notes += [("failed", "addresses", e) for e in errors]
                if errors:
                    self._address_watch.again()
        for a in back:
            notes.append(("restored", a.ifname, f"address {a.address} was gone from {a.ifname}: added again"))
        for what, where, text in notes:
            if what == "attached":
                self.ownership["xdp_attached"] += 1
            elif what == "restored":
                self.ownership["addresses_restored"] += 1
            self.ownership["last"], self.ownership["at"] = text, time.time()
            level = logging.WARNING if what in ("attached", "restored") else logging.ERROR
            self._ownership_log.log((what, where, text), level, "%s", text)
        if back:
            self.announce(False, back)      # neighbours that dropped the address learn it again
        if any(what == "attached" for what, _, _ in notes):
            self._write_held()              # a re-created interface: another ifindex
        if self.bgp is not None:
            # a VIP stays announced only while lb's program forwards on the public interface
            self._bgp_update(attached=self._attached())

    def announce(self, burst: bool = True, addrs=None, first_sent=None) -> None:
        """Gratuitous ARP / unsolicited NA for the addresses this director holds (or ``addrs``),
        with or without [ha]: at start (its first round before READY), when a reload adds a VIP,
        at a takeover (a burst, cut short by a step-down) and every garp_refresh while active
        (one round).  ``first_sent``: as lb.ha.announce.announce's."""
        ha = self.cfg.ha
        addrs = self.owned if addrs is None else addrs
        if not self.active or not addrs:
            if first_sent is not None:
                first_sent()
            return
        count, interval = (ha.garp_count, ha.garp_interval) if ha else (ha_announce.COUNT, ha_announce.INTERVAL)
        # each round only while still active and no stop is asked for: a quick step-down ends the
        # burst, and so does a stop (the peer, told "leaving", takes the addresses over: a
        # takeover's burst, garp_count x garp_interval, went on claiming them for the stopping
        # director, and the stop waited for its end before it released them)
        n = ha_announce.announce(addrs, count if burst else 1, interval, first_sent=first_sent,
                                 going=lambda: self.active and self._stop is None)
        log.info("announced %d addresses (%d frames)", len(addrs), n)

    async def _announce_before_ready(self) -> None:
        """The start's burst in a worker thread, returning once its first round is out: READY
        waits for the neighbours to hear of the addresses, not for the repeats (garp_interval
        apart, against frames lost on the way), which go on by themselves."""
        loop = asyncio.get_running_loop()
        first = loop.create_future()

        def first_sent() -> None:
            loop.call_soon_threadsafe(lambda: first.done() or first.set_result(None))
        burst = loop.run_in_executor(None, lambda: self.announce(True, first_sent=first_sent))
        spawn("announce", burst, logger=log)      # a failure is logged, never lost
        await asyncio.wait([first, burst], return_when=asyncio.FIRST_COMPLETED)

    async def on_role(self, new: int, old: int) -> None:
        from lb.ha.pulse import ACTIVE, NAMES
        loop = asyncio.get_running_loop()
        if new == ACTIVE:
            self.active = True
            self.takeovers += 1
            await loop.run_in_executor(None, self._renew_lease)     # before the addresses answer
            await loop.run_in_executor(None, self._take_addresses)
            loop.run_in_executor(None, self.announce, True)    # the burst runs on by itself
        else:
            if self.active or old == 0:
                self.active = False
                await loop.run_in_executor(None, self._release_addresses)
            await loop.run_in_executor(None, self._renew_lease)     # after: no second claimant
        if self.bgp is not None:
            self._bgp_update(active=self.active)
        await loop.run_in_executor(None, self._kernel_sync, new == ACTIVE)
        if self._stop is None:       # (a stop's STATUS= stays)
            sdnotify.status(self._status_text(NAMES[new]))

    def _kernel_sync(self, active: bool) -> None:
        """The data plane's kernel sync daemon follows the role: master on the active director,
        backup on the standby, over the heartbeat's private channel when there is one (kernel
        IPVS syncs its connections so; the XDP data plane has none, its connections travel by
        lb/ha/sync.py through sync_export / sync_import)."""
        ha = self.cfg.ha
        if ha is None or not ha.sync:
            return
        from lb.dataplane.ipvs import sync_id
        ifname = self.cfg.private_interface if ha.primary_private and self.cfg.private_interface \
            else self.cfg.public_interface
        try:
            with self._dp_lock:
                self.dp.start_sync("master" if active else "backup", ifname, sync_id(ha))
        except DataplaneError as e:
            log.error("IPVS connection sync: %s", e)

    def sync_export(self):
        with self._dp_lock:
            return self.dp.export_conns()

    def sync_import(self, conns, temps, owned_since_ns=None):
        dev = self.cfg.public_interface
        ifindex = socket.if_nametoindex(dev)
        mac = bytes.fromhex(ha_announce._mac(dev).replace(":", ""))
        with self._dp_lock:
            return self.dp.import_conns(conns, temps, ifindex, mac, owned_since_ns=owned_since_ns)

    def sweep(self) -> int:
        # its scan -- the dumps of the connection tables, ~0.5 s at 1M connections -- without the
        # lock: an apply after a health change, a weight or an HA import does not wait for it
        # (what ConnTable.sweep_end does with writes made meanwhile: lb/dataplane/conntable.py)
        with self._dp_lock:
            sp = self.dp.sweep_begin()
        sp = self.dp.sweep_scan(sp)
        with self._dp_lock:
            return self.dp.sweep_end(sp)

    # the data plane's own housekeeping, each under the lock every writer of its maps takes
    # (an HA import in pulse's thread staged its counts into a table apply's transaction and
    # lost them: `lb list` short until the next sweep)
    def finish_drains(self) -> int:
        with self._dp_lock:
            return self.dp.finish_drains()

    def refresh_nexthops(self) -> int:
        # the next hops resolved outside the lock (netlink, ~0.5 ms an address: an apply must
        # not wait behind thousands of them), a turn ending once NEXTHOP_BUDGET s have passed,
        # the rest at the next turns; the changes written under it
        with self._dp_lock:
            work = self.dp.nexthop_work()
        resolved = self.dp.resolve_nexthops(work, NEXTHOP_BUDGET)
        with self._dp_lock:
            return self.dp.refresh_nexthops(resolved)

    def estimate(self) -> int:
        with self._dp_lock:
            return self.dp.estimate()

    def defend(self) -> None:
        with self._dp_lock:
            self.dp.defend()

    def status(self, counters: bool = True, configuration: bool = True) -> dict:
        """What `lb status` shows (the control socket's "status" reply); without the data path's
        counters when ``counters`` is false (lb.metrics reads them in its own thread), and
        without what the configuration file says (configs.info: the file read and parsed again)
        when ``configuration`` is false (lb.metrics exports none of it): then it only copies
        Python state, fit for the loop."""
        doc = self._status_of_the_loop()
        return self._status_completed(doc, self.configs.info() if configuration else {},
                                      self._status_counters() if counters else {})

    async def status_off_the_loop(self, counters: bool = True) -> dict:
        """status(), its slow parts in a worker thread: the configuration file read and parsed
        again (configs.info: ~0.3 s for 4,000 real servers on a busy 2-CPU host) and the data
        plane's counters (map reads).  What the loop changes (monitors, weights, pulse) is read on
        the loop; the reply is status()'s.  The control socket's "status" and lb.metrics' use it:
        a read_group member asking again and again no longer holds the health checks and
        heartbeats for as long."""
        doc = self._status_of_the_loop()
        info, more = await asyncio.get_running_loop().run_in_executor(
            None, lambda: (self.configs.info(), self._status_counters() if counters else {}))
        return self._status_completed(doc, info, more)

    def _status_counters(self) -> dict:
        """status()'s "counters" and "defense" (either may be absent)."""
        more = {}
        try:
            counters = self.dp.counters()
            if counters:
                more["counters"] = counters
            defense = self.dp.defense_status()
            if defense is not None:
                more["defense"] = defense
        except Exception as e:  # a status must come back whatever the maps say
            log.warning("reading the data plane's counters: %s", e)
        return more

    def _status_completed(self, doc: dict, info: dict, more: dict) -> dict:
        doc["configuration"] = info
        if self.configsync is not None:
            doc["configuration"]["peer"] = self.configsync.status()
        if self.bgp is not None:
            doc["bgp"] = self.bgp.status()
        doc.update(more)
        return doc

    def _status_of_the_loop(self) -> dict:
        """status() up to its "configuration": what the run loop's tasks change."""
        services = []
        applied = {_config_key(s): s for s in self._applied_table.services} if self._applied_table is not None else {}
        nh_errors = self.dp.nexthop_errors()       # (rarely any: a pass over the table only then)
        for vs in self.cfg.virtual_servers:
            reals = []
            waits = self.waiting.get(vs.key)
            # a change that waits: the weights the data plane still has (None: not in its table)
            in_dp = {r.key: r.weight for r in applied[vs.key].reals} if waits is not None and vs.key in applied else None
            # the next hops the data plane cannot resolve, by real server (address, port) in its table
            nh_of = {} if not nh_errors or vs.key not in applied else {
                r.key: nh_errors[(r.address, r.forward == "dr")] for r in applied[vs.key].reals
                if (r.address, r.forward == "dr") in nh_errors}
            for rs in vs.real_servers:
                key = real_key(vs, rs)
                nh_error = nh_of.get((rs.address, 0 if vs.fwmark else rs.effective_port(vs))) if nh_of else None
                entry = self.monitors.get(key)
                mon = entry[2] if entry else None
                last = mon.last if mon else None
                w = self.weight_of(vs, rs)
                reals.append({"name": rs.name, "address": str(rs.address), "port": rs.effective_port(vs),
                              "active": rs.active, "weight": w.value, "weight_source": w.source,
                              "configured_weight": rs.weight,
                              "health": "unmonitored" if mon is None else mon.state,
                              "changes": mon.changes if mon else 0,
                              "downs": mon.downs if mon else 0, "ups": mon.ups if mon else 0,
                              "checks": mon.checks if mon else 0,
                              "failures": mon.failures if mon else 0,
                              "not_run": mon.not_run if mon else 0,
                              "last_not_run": None if mon is None or mon.last_not_run is None else
                              {"detail": mon.last_not_run.detail, "at": mon.last_not_run.at},
                              "reason": mon.reason if mon else None,
                              # its health monitor restarted after an error: its verdict may be stale
                              "monitor_restarts": mon.supervision.restarts if mon else 0,
                              "monitor_error": mon.supervision.last_error if mon else None,
                              "dynamic_weight": self.weights.get(key),
                              "override": self.overrides.get(key),
                              "load": self._load_status(key),
                              "since": mon.since_wall if mon else None,
                              **({} if in_dp is None else {"dataplane_weight": in_dp.get(
                                  (rs.address, 0 if vs.fwmark else rs.effective_port(vs)))}),
                              # its next hop unresolved: new connections to the one resolved
                              # before ("kept"), or none until it answers
                              "nexthop_error": None if nh_error is None else
                              {"reason": nh_error[0], "kept": nh_error[1]},
                              "last_check": None if last is None else
                              {"ok": last.ok, "detail": last.detail, "at": last.at,
                               "duration": round(last.duration, 6)}})
            services.append({"name": vs.name, "protocol": vs.protocol, "address": str(vs.address),
                             "port": vs.port, "scheduler": vs.scheduler, "active": vs.active,
                             "fwmark": vs.fwmark,
                             "monitor": vs.monitor.kind, "real_servers": reals,
                             "sorry_server": None if vs.sorry_server is None else sorry_text(vs.sorry_server),
                             "on_sorry_server": vs.key in self.on_sorry,
                             "waiting": waits,
                             # its table entry while it stands in (lb.metrics labels that row)
                             "sorry_real": _endpoint_doc(sorry_endpoint(vs)) if vs.key in self.on_sorry
                             else None})
        doc = {"instance": self.cfg.instance, "pid": os.getpid(),
               "role": self.pulse.role if self.pulse is not None else ("active" if self.active else "starting"),
               "config": str(self.cfg.path), "dataplane": self.dp.kind,
               "at": time.time(), "services": services, "reloads": dict(self.reloads),
               "config_warnings": len(self.cfg.warnings), "ownership": dict(self.ownership),
               "task_restarts": dict(tasks.RESTARTS), "housekeeping_errors": dict(self.housekeeping_errors),
               "housekeeping_seconds": {k: dict(v) for k, v in self.housekeeping_seconds.items()}}
        if self.pulse is not None:
            doc["ha"] = dict(self.pulse.status(), takeovers=self.takeovers)
            try:
                left = self.dp.lease_left()
            except Exception:
                left = None
            doc["ha"]["lease_s"] = None if left is None else round(left, 3)
            doc["ha"]["lease_armed"] = self._lease_armed
        return doc

    def _reload_reply(self, keep_restart_only: bool = False) -> dict:
        """The control socket's reply to a reload: ``changed`` says what the caller may rely
        on: false (refused, or failed and undone: the running state is the previous one), true
        (failed and not fully undone), null (an unexpected error: see the log)."""
        try:
            msg = self.reload_or_raise(keep_restart_only)
        except ReloadRefused as e:
            log.error("%s", e)
            self._count_reload("refused")
            return {"ok": False, "error": str(e), "changed": False,
                    "issues": [{"path": i.path, "line": i.line, "field": i.field, "message": i.message}
                               for i in e.issues]}
        except ReloadFailed as e:
            log.error("%s", e)
            self._count_reload("failed")
            return {"ok": False, "error": str(e), "changed": not e.restored, "rolled_back": e.restored}
        except Exception as e:     # a bug: the caller must know it is not a refusal
            log.exception("reload failed")
            self._count_reload("failed")
            return {"ok": False, "error": f"reload failed: {type(e).__name__}: {e} (what was changed is not "
                                          f"known: see the log)", "changed": None}
        log.info("%s", msg)
        self._count_reload("ok")
        return {"ok": True, "message": msg, "changed": True}

    async def _after_reload(self, reply: dict, blocking, metrics, server) -> None:
        """What follows an applied reload: monitors, load monitors, overrides, [metrics] and
        [control] catch up with the new configuration.  The new table is in place whatever they
        do, so a step that fails is logged and said in ``reply`` (its "warnings" and message),
        and the next steps run all the same."""
        async def refresh_control():
            if server.server is not None:
                await server.refresh()          # [control]'s groups: their socket

        steps = (("health checks", self.sync_monitors),
                 ("load monitors", self.sync_load_monitors),
                 ("operator overrides", self.sync_overrides),
                 ("[metrics]", lambda: blocking(lambda: metrics.reconfigure(self.cfg.metrics))),
                 ("[control]", refresh_control))
        warnings = []
        for what, step in steps:
            try:
                done = step()
                if done is not None:
                    await done
            except Exception as e:
                text = f"{what} not brought up to date: {e or type(e).__name__}"
                log.error("after the reload of %s: %s", self.cfg.path or "<config>", text)
                warnings.append(text)
        if warnings:
            reply["warnings"] = warnings
            reply["message"] = f"{reply.get('message')}; but {'; '.join(warnings)} (see the daemon's log)"

    def _count_reload(self, result: str) -> None:
        self.reloads[result] += 1
        self.reloads["last_ok"] = result == "ok"
        if result == "ok":
            self.reloads["loaded_at"] = time.time()

    def _load_status(self, key) -> dict | None:
        entry = self.loads.get(key)
        if entry is None:
            return None
        t = entry[2]
        return {"kind": t.spec.kind, "ok": t.ok, "detail": t.detail, "at": t.at, "weight": t.weight,
                "restarts": t.supervision.restarts, "error": t.supervision.last_error}

    async def control(self, req: dict) -> dict:
        """A control socket request (lb.control)."""
        cmd = req.get("cmd")
        if self._stop is not None and cmd not in control.READ_COMMANDS:   # (those change nothing)
            # the loop that would apply it has ended: refused before anything is done (an
            # override saved but never applied, a caller never answered)
            return {"ok": False, "error": "the daemon is stopping"}
        if cmd == "status":
            return {"ok": True, "status": await self.status_off_the_loop()}
        if cmd == "reload":
            fut = asyncio.get_running_loop().create_future()
            self._reload_waiters.append(fut)
            # a console edit's (lb.confedit); the reload it shares with others keeps them as well
            self._reload_keep = self._reload_keep or req.get("keep_restart_only") is True
            self._wake.set()
            return await fut
        if cmd == "weight":
            return await self._weight_reply(req)
        if cmd == "zero":
            return await self._zero_reply(req.get("service"))
        if cmd in ("config", "config-put", "table", "web"):
            return await self.configs.request(req)
        return {"ok": False, "error": f"unknown command {cmd!r} (status, reload, weight, zero, table, web, "
                                     f"config, config-put)"}

    def role(self) -> str:
        """This director's HA role ("active" without [ha])."""
        if self.pulse is not None:
            return self.pulse.role
        return "active" if self.active else "starting"

    def _ready(self) -> None:
        """READY=1 to the service manager: called once forwarding works (programs attached, table
        applied: start() is done) and the control socket answers; again after each reload."""
        sdnotify.ready(self._status_text(self.pulse.role if self.pulse is not None else None))

    def _status_text(self, role: str | None) -> str:
        """systemd's STATUS= line while running (`systemctl status`); ``role``: HA's."""
        return (f"running: {len(self.cfg.virtual_servers)} virtual services, {self.dp.kind} data plane"
                + (f", {role}" if role is not None else ""))

    async def _zero_reply(self, service) -> dict:
        """`lb zero`: the data plane's counters and rates of one service (["tcp", VIP, PORT] or
        ["fwmark", MARK] or ["fwmark", MARK, 4|6]: ipvsadm -f MARK [-6]) or of all (null), as
        ipvsadm -Z."""
        try:
            key = None if service is None else (
                (("fwmark", int(service[1])) + ((int(service[2]),) if len(service) > 2 else ()))
                if service[0] == "fwmark"
                else (str(service[0]), ipaddress.ip_address(service[1]), int(service[2])))
            if key is not None and len(key) == 3 and key[0] == "fwmark" and key[2] not in (4, 6):
                raise ValueError(key)
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):   # (JSON 1e400: inf)
            return {"ok": False, "error": f"service: {service!r} is not [protocol, address, port] or "
                                          f"[\"fwmark\", mark] or [\"fwmark\", mark, 4 or 6]"}

        def zero():
            with self._dp_lock:
                return self.dp.zero_stats(key)
        try:
            n = await asyncio.get_running_loop().run_in_executor(None, zero)
        except LookupError:
            return {"ok": False, "error": "no such service"}
        return {"ok": True, "message": f"counters of {n} virtual service{'' if n == 1 else 's'} zeroed"}

    def _systemd_stop_kind(self) -> str:
        """SIGTERM under lb@.service (--on-sigterm systemd): the job systemd runs on the unit says
        which stop -- "restart" (an upgrade) or a reload keeps the data plane for the next daemon
        to adopt (sdnotify.KEEP_JOBS); any other ("stop", a shutdown's, or "start" when
        TimeoutStartSec= runs out) is the clean stop; no job (`systemctl kill`) keeps it, as a
        crash would.  Asked here rather than in an ExecStop, which systemd skips for a unit still
        starting or reloading."""
        unit = self._stop.split(":", 1)[1]
        job = sdnotify.systemd_job(unit)
        if job is None:
            log.info("no systemd job on %s (systemctl kill?): keeping the data plane, as a crash would", unit)
            return "keep"
        if job not in sdnotify.KEEP_JOBS:
            log.info("systemd job on %s: %s: a clean stop", unit, job)
            return "clean"
        log.info("systemd job on %s: %s: keeping the data plane for the next start", unit, job)
        return "keep"

    # ---- the loop ----
    async def run(self) -> None:
        """The daemon's loop, from the start of what runs in it (health checks, metrics, pulse,
        the configuration sync, the control socket) to their stop.  When one of those cannot
        start, those started are stopped again and StartupError says why: the caller (run())
        stops the data plane cleanly."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        # an address of the director's added or removed: a turn now (refresh_local_addresses)
        self._address_watch.on_own_change = lambda: loop.call_soon_threadsafe(self._wake.set)

        def request(kind):
            if self._stop is not None:        # the first stop asked for decides its kind
                log.warning("lb instance %r is stopping already (%s): a second request (%s) is ignored",
                            self.cfg.instance, self._stop, kind)
                return
            self._stop = kind
            self._wake.set()

        # SIGINT: clean stop, SIGUSR2: keep the data plane (lb stop [--keep-dataplane]); SIGTERM:
        # as --on-sigterm says (clean by default; lb@.service: as systemd's job on the unit)
        loop.add_signal_handler(signal.SIGTERM, request, self.on_sigterm)
        loop.add_signal_handler(signal.SIGINT, request, "clean")
        loop.add_signal_handler(signal.SIGUSR2, request, "keep")
        reload_pending = self._reload_at_start

        def request_reload():
            nonlocal reload_pending
            reload_pending = True
            self._wake.set()

        loop.add_signal_handler(signal.SIGHUP, request_reload)
        # pyroute2's synchronous API runs its own event loop, so every step that may use netlink
        # runs in a worker thread, one at a time.
        blocking = lambda fn: loop.run_in_executor(None, fn)  # noqa: E731
        started = {}          # what the start got to: "metrics", "pulse", "server", "bgp_lease"
        try:
            if self._stop is None:
                await self._start_running(blocking, started)
            else:
                # asked to stop while starting (a cold start compiles for seconds): nothing more is
                # started to be stopped at once -- no health checks, no pulse (which could take the
                # active role, and the VIPs, from the peer for a moment), no announcement of VIPs
                # about to go, no metrics or control socket
                log.info("lb instance %r: asked to stop while starting: stopping", self.cfg.instance)
        except Exception as e:
            # the data plane is attached and pinned: the caller's clean stop takes it down, after
            # what started here (a traceback would skip both)
            self._stop = "clean"
            await self._stop_running(blocking, started)
            if isinstance(e, StartupError):
                raise
            log.debug("starting the daemon's loop", exc_info=e)
            raise StartupError(f"{self.cfg.path or '<config>'}: starting: {type(e).__name__}: {e}") from None
        metrics, server = started.get("metrics"), started.get("server")
        self._role_added = None              # started: a stop from now on is a stop, not an undo
        if self._stop is None:
            self._ready()
        last_sweep = last_nh = last_est = last_def = last_own = last_ping = loop.time()
        # WatchdogSec= (lb@.service): WATCHDOG=1 from this loop only, once per turn at most, a
        # quarter of the interval apart -- a step that hangs (a netlink call that never returns,
        # in the executor) holds the loop (or, beside the turns, runs past the interval:
        # _beside_hung), the pings stop and systemd aborts lb (SIGABRT: every
        # thread's stack to the journal) and starts it again; the data plane forwards meanwhile
        # and is adopted, as after a crash.  Never from a thread of its own, which would ping on.
        watchdog = sdnotify.watchdog_interval()

        async def do_reload():
            nonlocal reload_pending
            reload_pending = False
            waiters, self._reload_waiters = self._reload_waiters, []
            keep, self._reload_keep = self._reload_keep, False
            sdnotify.reloading()
            reply = {"ok": False, "error": "reload failed (what was changed is not known: see the log)",
                     "changed": None}
            try:
                try:
                    reply = await blocking(lambda: self._reload_reply(keep))
                finally:
                    self._ready()
                if reply["ok"]:
                    await self._after_reload(reply, blocking, metrics, server)
            finally:              # the callers (a console save holds its lock) always hear
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(reply)

        async def do_sweep():
            n = await blocking(self.sweep)
            if n:
                log.debug("swept %d expired connections", n)

        async def do_sched_base():
            if self.dp.sched_base_pending():
                await blocking(self.refresh_sched_base)

        async def do_resize():
            self._resizing = await blocking(self._finish_resize)

        failing = 0          # turns in a row whose own code failed (_loop_failed)
        while self._stop is None:
            # the turn's own code -- what is between its guarded steps (and what a step may let
            # through: a CancelledError not of run() itself) -- failing goes to _loop_failed: the
            # data plane forwards on; it used to end run(), and lb.engine.run's stop tore it down
            try:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                for step, task in list(self._beside_tasks.items()):
                    if task.done():
                        # what the step let through (_housekeep's: a CancelledError not of
                        # run()'s) fails this turn, as it did when the turn awaited the step
                        del self._beside_tasks[step]
                        task.result()
                now = loop.time()
                if watchdog is not None and now - last_ping >= watchdog / 4 and not self._beside_hung(watchdog):
                    last_ping = now
                    sdnotify.watchdog()
                # each step on its own: one that fails (every second, say) is counted and logged, and
                # the next ones -- the sweep, the addresses put back, XDP attached again -- still run
                if reload_pending or self._reload_waiters:
                    await self._beside_done("sweep")     # a reload may replace the tables it reads
                    await self._housekeep("reload", do_reload)
                if self._dirty or self._apply_waiters:
                    await self._housekeep("apply", lambda: self._apply_changes(blocking))
                if self.dp.draining:
                    await self._housekeep("finish_drains", lambda: blocking(self.finish_drains))
                if self._resizing:
                    await self._beside_done("sweep")
                    await self._housekeep("finish_resize", do_resize)
                await self._housekeep("sched_base", do_sched_base)
                sweep_due = now - last_sweep >= SWEEP_INTERVAL
                if sweep_due:
                    last_sweep = now
                    self._beside("sweep", do_sweep)     # its scan without the lock: Engine.sweep
                # the director's own addresses: at each sweep, and as soon as rtnetlink tells of
                # one added or removed (a change is applied at the next turn, woken at once)
                if self._address_watch.own_changed() or sweep_due:
                    await self._housekeep("local_addresses", lambda: blocking(self.refresh_local_addresses))
                    if self._dirty:
                        self._wake.set()
                if now - last_def >= DEFENSE_INTERVAL:
                    last_def = now
                    await self._housekeep("defend", lambda: blocking(self.defend))
                if now - last_est >= ESTIMATE_INTERVAL:
                    last_est = now
                    await self._housekeep("estimate", lambda: blocking(self.estimate))
                if now - last_own >= OWNERSHIP_INTERVAL:
                    last_own = now
                    await self._housekeep("keep_ownership", lambda: blocking(lambda: self.keep_ownership(now)))
                if now - last_nh >= NEXTHOP_INTERVAL:
                    last_nh = now
                    # beside the turns: its resolution (up to NEXTHOP_BUDGET s) holds no lock
                    self._beside("refresh_nexthops", lambda: blocking(self.refresh_nexthops))
                failing = 0
            except (Exception, asyncio.CancelledError) as e:
                if isinstance(e, asyncio.CancelledError) and asyncio.current_task().cancelling():
                    raise                            # run() itself cancelled
                failing += 1
                if self._loop_failed(e, failing) or self._stop is not None:
                    break
                await asyncio.sleep(RUN_LOOP_PAUSE)      # never a loop that spins on its error

        await self._beside_done()        # before anything is stopped or torn down
        # the pings end with the loop: STOPPING=1 now, not after the loop's parts have stopped
        # (a BGP drain: seconds), so that systemd's watchdog, on while the unit runs, is off
        # for the stop (TimeoutStopSec= bounds it instead).  Not when the loop gave up: that exit
        # is a failure, which Restart=on-failure follows with a start (STOPPING=1: a stop asked for)
        if self.failed is None:
            sdnotify.stopping("stopping")
        else:
            sdnotify.status("failed: the run loop gave up (see the log); the data plane forwards on")
        if self._stop.startswith("systemd:"):       # lb@.service's SIGTERM: stop or restart?
            self._stop = await blocking(self._systemd_stop_kind)
        for fut in self._reload_waiters:                  # before the server waits for its handlers
            if not fut.done():
                fut.set_result({"ok": False, "error": "the daemon is stopping"})
        for fut, *_ in self._apply_waiters:      # (an override set as the stop came: kept in its file)
            if not fut.done():
                fut.set_result({"ok": False, "error": "the daemon is stopping: the override is recorded, for "
                                                      "its next start, but not applied now"})
        await self._stop_running(blocking, started)

    def _loop_failed(self, e: BaseException, failing: int) -> bool:
        """The run loop's own code (not one of its steps) raised at a turn, the ``failing``-th in
        a row: counted as the step "run_loop" (`lb status`, lb_housekeeping_errors_total), logged
        at most once a minute, the traceback once for each type of error and line that raised it.
        The data plane forwards on, and so do the health checks, pulse and the control socket;
        the loop goes on at its next turn.  True when it gives up (RUN_LOOP_GIVE_UP turns in a row:
        no housekeeping step runs any more): the daemon leaves the data plane as `lb stop
        --keep-dataplane` does, and exits 1 for its service manager to start it again."""
        step = "run_loop"
        n = self.housekeeping_errors[step] = self.housekeeping_errors.get(step, 0) + 1
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        self._housekeeping_log.log(step, logging.ERROR, "housekeeping: %s failed (the data plane forwards on; tried "
                                   "again at its next turn; %d failures so far): %s", HOUSEKEEPING[step], n, text)
        frames = traceback.extract_tb(e.__traceback__)
        where = (type(e).__name__,) + ((frames[-1].filename, frames[-1].lineno) if frames else ())
        if (step, *where) not in self._housekeeping_traced:
            self._housekeeping_traced.add((step, *where))
            log.error("housekeeping: %s: the %s's traceback", HOUSEKEEPING[step], type(e).__name__, exc_info=e)
        if failing < RUN_LOOP_GIVE_UP or self._stop is not None:     # (a stop asked for: as asked)
            return False
        self.failed = f"{HOUSEKEEPING[step]} failed at each of its last {failing} turns, the last time: {text}"
        log.critical("%s: giving up -- the daemon exits (status 1), leaving the data plane (XDP programs, maps, "
                     "addresses) forwarding, as `lb stop --keep-dataplane` does, for the next start to adopt "
                     "(lb@.service: Restart=on-failure)", self.failed)
        self._stop = "keep"
        return True

    def _beside(self, step: str, fn) -> None:
        """Start a housekeeping step that runs beside the loop's turns, so that the next turns --
        an apply after a health check or `lb weight`, a reload -- do not wait for it: one whose
        long part holds no lock (the sweep's scan, the next hops' resolution).  One at a time: a
        due one is skipped while the last still runs."""
        task = self._beside_tasks.get(step)
        if task is None or task.done():
            self._beside_tasks[step] = asyncio.ensure_future(self._housekeep(step, fn))
            self._beside_started[step] = time.monotonic()

    def _beside_hung(self, limit: float) -> bool:
        """Whether a step beside the turns has run for over ``limit`` seconds (the watchdog's
        interval: a netlink call that never returns).  The loop then stops its pings, as when
        such a step held the loop itself, and systemd aborts lb."""
        now = time.monotonic()
        return any(not task.done() and now - self._beside_started[step] > limit
                   for step, task in self._beside_tasks.items())

    async def _beside_done(self, *steps: str) -> None:
        """Wait for those steps (all without any) if they run: the sweep's thread reads the tables
        a reload or a resize may replace, and the stop closes what any of them uses.  Never
        raises (the tasks are _housekeep's; what they let through, the next turn raises)."""
        tasks = {t for step, t in self._beside_tasks.items() if not steps or step in steps}
        if tasks:
            await asyncio.wait(tasks)

    async def _housekeep(self, step: str, fn):
        """await fn(), one step of the run loop's housekeeping: the daemon keeps forwarding, and
        the loop's other steps run, whatever it does.  A failure is counted by step (`lb status`'s
        housekeeping_errors) and logged, a repeat at most once a minute; the traceback of an
        unexpected one (a bug, not the data plane or the kernel refusing) with it, once for each
        step and type of error (a bug hit at every turn: one traceback, not one a minute)."""
        try:
            # a step that does not end (a netlink call that never returns, in the executor) holds
            # the loop: every other step, health changes, reloads wait behind it.  Under
            # lb@.service the watchdog's pings stop and systemd aborts lb; elsewhere nothing said
            # so -- now the log does, while it lasts
            work = asyncio.ensure_future(fn())
            started, wait = time.monotonic(), HOUSEKEEPING_SLOW
            try:
                while not (await asyncio.wait({work}, timeout=wait))[0]:
                    log.warning("housekeeping: %s still running after %.0f s: %s", HOUSEKEEPING[step],
                                time.monotonic() - started,
                                "the stop waits for it" if step == "refresh_nexthops" else
                                "a reload, a resize and the stop wait for it" if step == "sweep" else
                                "the daemon's other steps (health changes, reloads, the sweep) wait for it")
                    wait *= 2
            except asyncio.CancelledError:
                work.cancel()
                raise
            took = time.monotonic() - started
            if wait > HOUSEKEEPING_SLOW:
                log.warning("housekeeping: %s done after %.0f s", HOUSEKEEPING[step], took)
            # what it took, failed or not (`lb status --json`, lb_housekeeping_seconds_total)
            t = self.housekeeping_seconds.setdefault(step, {"runs": 0, "seconds": 0.0, "last": 0.0})
            t["runs"] += 1
            t["seconds"] += took
            t["last"] = took
            return work.result()
        except Exception as e:
            n = self.housekeeping_errors[step] = self.housekeeping_errors.get(step, 0) + 1
            expected = isinstance(e, (DataplaneError, OSError))
            text = str(e) if expected and str(e) else f"{type(e).__name__}: {e}"
            if self._housekeeping_log.log(step, logging.ERROR, "housekeeping: %s failed (tried again at its next "
                                          "turn; %d failures so far): %s", HOUSEKEEPING[step], n, text) \
                    and not expected and (step, type(e).__name__) not in self._housekeeping_traced:
                self._housekeeping_traced.add((step, type(e).__name__))
                log.error("housekeeping: %s: the %s's traceback", HOUSEKEEPING[step], type(e).__name__, exc_info=e)
            return None

    async def _apply_changes(self, blocking) -> None:
        """A health, load weight or override change to the data plane; the `lb weight` callers
        waiting on it hear how it went."""
        self._dirty = False
        applied, self._apply_waiters = self._apply_waiters, []
        try:
            await blocking(self.apply_health)
        except HeldBack:
            # what fits is applied (the overrides waiting here were planned to fit); what does
            # not is tried again at the loop's next turns
            self._dirty = True
            for waiter in applied:
                self._answer(waiter, waiter[1])
            raise
        except BaseException as e:
            # the change (a health verdict is reported once, at its transition) is tried again
            # at the loop's next turn, until the data plane takes it
            self._dirty = True
            for waiter in applied:
                self._answer(waiter, {"ok": False, "error": f"the override is recorded but applying "
                                                            f"the table failed: {type(e).__name__}: {e}"})
            raise
        for waiter in applied:
            self._answer(waiter, waiter[1])

    async def _start_running(self, blocking, started: dict) -> None:
        """What runs beside the data plane, each recorded in ``started`` once it runs."""
        self.sync_monitors()
        self.sync_load_monitors()
        from lb import metrics as lbmetrics
        started["metrics"] = await lbmetrics.start(self)      # serves only when [metrics] enables it
        if self.pulse is not None:
            await blocking(ha_announce.warm_up)      # scapy loads now, not during a takeover
            started["pulse"] = True                  # (a partial start too: its sockets close)
            await self._start_pulse()
            from lb.ha import configsync     # the active pushes its configuration to the backup
            self.configsync = await configsync.start(self)
        else:
            # the one director: before READY its neighbours learn the VIPs' and the NAT
            # gateway's MAC.  A client or real server whose entry is stale (another director's
            # MAC, an earlier run's) or still unresolved from before the address was taken
            # would otherwise lose its first packets: EHOSTUNREACH, or seconds of silence
            await self._announce_before_ready()
        # the control socket answers once the neighbours know the addresses too: `lb status
        # --wait` (the demo's wait) returns when a first request is answered, as READY does
        server = started["server"] = control.ControlServer(
            control.socket_path(self.cfg.instance, RUN_DIR), self.control, access=lambda: self.cfg.control,
            shared_path=control.shared_socket_path(self.cfg.instance, SHARED_DIR))
        try:
            await server.start()
        except OSError as e:         # forwarding goes on; only `lb status`/`lb reload` are missing
            log.error("no control socket: %s", e)
        # the BGP lease's renewal (lb.bgp, not the HA lease of bpf/lb_lease.h), restarted if it raises
        # (a stopped renewal withdraws every route)
        if self.bgp is not None:
            started["bgp_lease"] = supervise("bgp-lease", self.bgp.run, logger=log,
                                             context=f"instance {self.cfg.instance}")
        self._address_watch.start()

    async def _start_pulse(self) -> None:
        """pulse.start(); a socket it cannot bind (another program on the port: Piranha's pulse
        still running) is a StartupError naming the [ha] setting."""
        try:
            await self.pulse.start()
        except OSError as e:
            # the endpoints open in order: the first one without a socket is the one that failed
            ep = next((ep for c in getattr(self.pulse, "channels", ()) for ep in c.endpoints if ep.sock is None),
                      None)
            why = e.strerror or str(e)
            if e.errno == errno.EADDRINUSE:
                why += " (another program holds the port: Piranha's pulse?)"
            if ep is None:
                raise StartupError(f"{self.cfg.path or '<config>'}: [ha] pulse's sockets: cannot bind: {why}") from None
            # file:line: field of the port, as the loader's issues
            key = "heartbeat_port" if ep.kind == "heartbeat" else "sync_port"
            raise StartupError(str(lbconfig.issue_at(self.cfg.path, ("ha", key), f"{ep.port}: "
                                                     f"{_endpoint(ep.local, ep.port)}/udp: cannot bind: {why}"))) from None

    async def _stop_running(self, blocking, started: dict) -> None:
        """What _start_running started (``started``), stopped: at the end of the loop, or after
        a start that failed part-way.  Each on its own: one that raises is said, and the others
        still stop (a pulse that would not stop left the control socket and the metrics serving
        a stopping daemon, and the error's traceback ended `lb run`)."""
        async def step(what, aw) -> None:
            try:
                await aw
            except Exception as e:  # noqa: BLE001 - the next steps still run
                _stop_failed(what, e)

        await step("stopping the address watch", blocking(self._address_watch.stop))
        ha = self.pulse is not None and started.get("pulse")
        if ha:
            # "leaving" first: the peer takes over (and announces) while this one drains; our
            # claim on the addresses (the lease) ends once the drain is done
            await step("stopping pulse", self.pulse.stop())
        if self.bgp is not None:        # withdraw and drain before anything stops
            await tasks.cancel_and_wait(started.get("bgp_lease"))
            await step("the BGP withdrawal", self.bgp.leave(keep=self._stop == "keep"))
        if self.configsync is not None:
            await step("stopping the configuration sync", self.configsync.stop())
        if started.get("metrics") is not None:
            await step("stopping the metrics endpoint", blocking(started["metrics"].stop))
        if started.get("server") is not None:
            await step("closing the control socket", started["server"].stop())
        if ha:
            self._end_lease()
        await tasks.cancel_and_wait(*(m[3] for m in (*self.monitors.values(), *self.loads.values())))


def run(cfg, *, xdp_mode: str = "native", dataplane: str | None = None, on_sigterm: str = "clean",
        wait_interfaces: float = 0.0, signals_before=()) -> int:
    """``signals_before``: the signals that came before this (`lb run`'s first second), in order,
    taken now as if they came during the start."""
    eng = Engine(cfg, xdp_mode=xdp_mode, dataplane=dataplane, on_sigterm=on_sigterm, wait_interfaces=wait_interfaces)
    # a stop asked for while starting (a cold start compiles for seconds) is kept, and carried
    # out once the start is done: never a half-started data plane, never a traceback
    handlers = {}
    for sig, kind in ((signal.SIGTERM, on_sigterm), (signal.SIGINT, "clean"), (signal.SIGUSR2, "keep")):
        handlers[sig] = lambda _s, _f, kind=kind: setattr(eng, "_stop", eng._stop or kind)   # the first wins
    # and a reload asked for then (SIGHUP: its default action would kill the starting daemon,
    # leaving half a data plane) once running
    handlers[signal.SIGHUP] = lambda _s, _f: setattr(eng, "_reload_at_start", True)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    for sig in list(signals_before):
        if sig in handlers:
            handlers[sig](sig, None)
    try:
        eng.start()
    except StartCancelled as e:       # nothing was touched but the lock
        log.info("%s", e)
        sdnotify.stopping("stopping (asked to while starting)")    # a stop, not a failed start
        eng.lock.release()
        return 0
    except (StartupError, DataplaneError, LookupError, addresses.AddressError) as e:
        log.error("%s", e)
        eng.stop_failed_start()
        return 2
    except Exception as e:  # noqa: BLE001 - a full /run (ENOSPC), netlink, a bug: the same clean undo
        # one line (the traceback at debug level, as the loop's own start), and what this start
        # attached, pinned and added goes: a traceback skipped that, leaving the VIPs up with no daemon
        log.debug("starting", exc_info=e)
        why = str(e) if isinstance(e, OSError) and str(e) else f"{type(e).__name__}: {e}"
        log.error("%s: starting: %s", cfg.path or "<config>", why)
        eng.stop_failed_start()
        return 2
    failed = crashed = False
    try:
        asyncio.run(_serve(eng))
    except StartupError as e:         # a part of the start made in the loop (pulse's sockets ...)
        log.error("%s", e)
        failed = True
    except (Exception, asyncio.CancelledError) as e:
        # a bug that ended the loop (its own turns' errors do not: Engine._loop_failed) -- as it
        # ends, in the stop of its parts: the data plane forwards on, as after a crash (it was
        # torn down: every connection lost to a control-plane bug), unless a clean stop was asked
        # for; with --on-sigterm systemd and the job not known yet, kept (no job: kept)
        crashed = True
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if eng._stop == "clean":
            log.error("lb instance %r: the run loop ended in an error (the clean stop asked for goes on): %s",
                      cfg.instance, why, exc_info=e)
        else:
            eng.failed = eng.failed or f"the run loop ended in an error: {why}"
            log.critical("lb instance %r: %s -- leaving the data plane (XDP programs, maps, addresses) forwarding "
                         "for the next start to adopt; exit 1", cfg.instance, eng.failed, exc_info=e)
            eng._stop = "keep"
    finally:                          # whatever happened: never a data plane left half-stopped
        if failed:
            eng.stop_failed_start()
        else:
            eng.stop(keep_dataplane=(eng._stop == "keep"))
    return 2 if failed else 1 if crashed or eng.failed is not None else 0


# the signals that ask a running daemon to stop or reload
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


async def _serve(eng) -> None:
    """eng.run(), then the signals held off until the process ends (hold_signals)."""
    try:
        await eng.run()
    finally:
        hold_signals(eng, asyncio.get_running_loop())


def hold_signals(eng, loop=None) -> None:
    """Once the run loop has ended, a signal -- a second Ctrl-C, a SIGTERM, a SIGHUP -- is said
    once and ignored: the stop (XDP detached, addresses released, maps unpinned) completes.
    The loop's own handlers go first: closing, it would put back the default actions (SIGTERM
    and SIGHUP kill, SIGINT raises KeyboardInterrupt), half-way through stop()."""
    said = []

    def already_stopping(signum, _frame) -> None:
        if not said:
            said.append(signum)
            log.warning("lb instance %r is stopping already: %s ignored (the stop completes first)",
                        eng.cfg.instance, signal.Signals(signum).name)
    # Ours first, then the loop forgets its own without putting back the default action (as
    # remove_signal_handler would): no instant at SIG_DFL -- a signal may be taken by any thread,
    # the executor's workers too, so blocking it in this one would not do.
    handlers = getattr(loop, "_signal_handlers", None) if loop is not None else None
    for sig in STOP_SIGNALS:
        signal.signal(sig, already_stopping)
        if handlers is not None:
            handlers.pop(sig, None)
        elif loop is not None:
            loop.remove_signal_handler(sig)
    if handlers is not None and not handlers:
        signal.set_wakeup_fd(-1)         # the loop's wake-up socket goes with the loop
