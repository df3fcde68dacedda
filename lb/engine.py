"""The lvs daemon: config (+ health, + HA role later) -> desired table -> data plane.

The engine is the only writer of the data plane.  It computes a TableSpec from the config and
asks the data plane to apply it; a reload computes a new one and the data plane applies only
the difference.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from lb import config as lbconfig
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane.xdp import DataplaneError, Sizes, XdpDataplane
from lb.ha import addresses

log = logging.getLogger("lb.engine")

RUN_DIR = "/run/lb"
SWEEP_INTERVAL = 5.0
NEXTHOP_INTERVAL = 10.0


class StartupError(Exception):
    pass


def build_table(cfg) -> TableSpec:
    forward = "nat" if cfg.network == "nat" else "dr"
    services = []
    for vs in cfg.virtual_servers:
        if not vs.active:
            continue
        reals = tuple(RealSpec(rs.address, rs.effective_port(vs), rs.weight, forward)
                      for rs in vs.real_servers if rs.active)
        services.append(ServiceSpec(vs.protocol, vs.address, vs.port, vs.scheduler, reals, vs.name))
    t = cfg.timeouts
    return TableSpec(tuple(services), (t.tcp, t.tcpfin, t.udp))


def pidfile(instance: str) -> str:
    return os.path.join(RUN_DIR, f"{instance}.pid")


def check_interfaces(cfg) -> None:
    names = {cfg.public_interface}
    if cfg.network == "nat":
        names.add(cfg.private_interface)
        if cfg.nat_device:
            names.add(cfg.nat_device)
    names |= {cfg.vip_device(vs) for vs in cfg.virtual_servers}
    missing = sorted(n for n in names if n and not addresses.interface_exists(n))
    if missing:
        where = cfg.path or "<config>"
        raise StartupError(f"{where}: interface(s) not found: {', '.join(missing)}")


class Engine:
    def __init__(self, cfg, *, xdp_mode: str = "native"):
        self.cfg = cfg
        self.xdp_mode = xdp_mode
        self.dp = XdpDataplane(cfg.instance, Sizes.from_tables(cfg.tables))
        self.owned: list[addresses.OwnedAddress] = []
        self._stop = None            # "clean" | "keep"
        self._wake: asyncio.Event | None = None

    # ---- lifecycle ----
    def start(self) -> None:
        check_interfaces(self.cfg)
        self.dp.load()
        self.owned = addresses.wanted_addresses(self.cfg)
        addresses.take(self.owned)
        self.dp.apply(build_table(self.cfg))
        self.dp.attach(self.cfg.public_interface, "public", self.xdp_mode)
        if self.cfg.network == "nat":
            self.dp.attach(self.cfg.private_interface, "private", self.xdp_mode)
        os.makedirs(RUN_DIR, exist_ok=True)
        with open(pidfile(self.cfg.instance), "w") as f:
            f.write(f"{os.getpid()}\n")
        log.info("lb instance %r running: %d virtual services", self.cfg.instance,
                 len(self.dp.services))

    def stop(self, keep_dataplane: bool = False) -> None:
        if keep_dataplane:
            log.info("leaving the data plane, its maps and addresses in place for an upgrade")
            self.dp.close()
        else:
            self.dp.detach_all()
            addresses.release(self.owned)
            self.dp.unpin()
            self.dp.close()
        try:
            os.unlink(pidfile(self.cfg.instance))
        except FileNotFoundError:
            pass
        log.info("lb instance %r stopped", self.cfg.instance)

    def reload(self) -> bool:
        """Validate the config file again and apply the difference; a bad file changes nothing."""
        path = self.cfg.path
        try:
            new = lbconfig.load(path)
        except lbconfig.ConfigError as e:
            log.error("reload refused, nothing changed:\n%s", e)
            return False
        if new.instance != self.cfg.instance or new.tables != self.cfg.tables or new.network != self.cfg.network:
            log.error("reload refused: instance, tables and network need a restart")
            return False
        try:
            check_interfaces(new)
        except StartupError as e:
            log.error("reload refused: %s", e)
            return False
        want = addresses.wanted_addresses(new)
        addresses.take([a for a in want if a not in self.owned])
        self.dp.apply(build_table(new))
        addresses.release([a for a in self.owned if a not in want])
        self.owned, self.cfg = want, new
        log.info("reloaded %s", path)
        return True

    # ---- the loop ----
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()

        def request(kind):
            self._stop = kind
            self._wake.set()

        loop.add_signal_handler(signal.SIGTERM, request, "clean")
        loop.add_signal_handler(signal.SIGINT, request, "clean")
        loop.add_signal_handler(signal.SIGUSR2, request, "keep")
        reload_pending = False

        def request_reload():
            nonlocal reload_pending
            reload_pending = True
            self._wake.set()

        loop.add_signal_handler(signal.SIGHUP, request_reload)
        # pyroute2's synchronous API runs its own event loop, so every step that may use netlink
        # runs in a worker thread, one at a time.
        blocking = lambda fn: loop.run_in_executor(None, fn)  # noqa: E731
        last_sweep = last_nh = loop.time()
        while self._stop is None:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            now = loop.time()
            try:
                if reload_pending:
                    reload_pending = False
                    await blocking(self.reload)
                if now - last_sweep >= SWEEP_INTERVAL:
                    last_sweep = now
                    n = await blocking(self.dp.sweep)
                    if n:
                        log.debug("swept %d expired connections", n)
                if now - last_nh >= NEXTHOP_INTERVAL:
                    last_nh = now
                    await blocking(self.dp.refresh_nexthops)
            except Exception:  # the daemon keeps forwarding whatever a housekeeping step does
                log.exception("housekeeping failed")


def run(cfg, *, xdp_mode: str = "native") -> int:
    eng = Engine(cfg, xdp_mode=xdp_mode)
    try:
        eng.start()
    except (StartupError, DataplaneError, LookupError) as e:
        log.error("%s", e)
        # nothing may stay attached or half-programmed after a failed start of a new instance
        if not eng.dp.adopted:
            eng.dp.detach_all()
            addresses.release(eng.owned)
            if eng.dp.created:
                eng.dp.unpin()
        eng.dp.close()
        return 2
    asyncio.run(eng.run())
    eng.stop(keep_dataplane=(eng._stop == "keep"))
    return 0
