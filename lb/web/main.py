"""`lb web`: the console as its own process (lb-web@<instance>.service, an unprivileged user).

It asks the daemon for its [web] settings over the control socket (so it reads no configuration
file), waits for the daemon when it is not up yet, and serves the console on [web] listen
("[::]:PORT": every address of both families; on a host without IPv6, with a warning, every IPv4
address), with TLS when [web] has a certificate.  It exits
when [web] enabled is false (status 0: nothing to do) and on SIGTERM/SIGINT.

Whoever reaches the port cannot take the console down, nor lock a logged-in operator out: at most
MAX_CONNECTIONS connections at once, MAX_PER_CLIENT of them from one client (an address, an IPv6
/64) and, once half of them are taken, MAX_PER_SITE from one IPv6 /48 (a trusted proxy's are not
counted per client); RESERVED
more for connections whose requests show a valid session, or from loopback (Connections: one
without a session yet holds its reserved slot only until a newer connection needs it); the
rest closed as they come (lb.metrics caps its own the same way); over HTTPS the TLS handshake
is made on the connection's slot, within TLS_HANDSHAKE_TIMEOUT; a request's line and headers
must come within HEADER_TIMEOUT (the idle keep-alive too), its body within app.BODY_TIMEOUT; an
accept that fails for want of file descriptors (EMFILE) is counted and logged at most once every
ACCEPT_LOG_EVERY seconds, not a traceback each (asyncio's).
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import socket
import ssl
import stat
from dataclasses import dataclass

from aiohttp import web

from lb import control
from lb.tasks import RateLimitedLog, Slots
from lb.web import app as webapp
from lb.web import clients, password

log = logging.getLogger("lb.web")

WAIT_LOG_EVERY = 30.0
MAX_CONNECTIONS = 256       # connections anyone may hold at once (lb-web@.service's LimitNOFILE holds them) ...
MAX_PER_CLIENT = 16         # ... from one client (an address, an IPv6 /64): a browser opens 6
MAX_PER_SITE = 64           # ... from one IPv6 /48 (a site's: it holds 65,536 /64s), once half are taken
RESERVED = 64               # more, for connections with a valid session (or from loopback) only
MAX_ON_PROBATION = 2        # reserved ones a client holds before a request shows its session ...
MAX_ON_PROBATION_SITE = 8   # ... and an IPv6 /48 (its other /64s included): one site cannot hold them all
HEADER_TIMEOUT = 15.0       # seconds for a request's line and headers, and a connection idle
LINGER = 2.0                # seconds to read the rest of a body the console did not want
TLS_HANDSHAKE_TIMEOUT = 15.0
BACKLOG = 128
ACCEPT_LOG_EVERY = 10.0


class Daemon:
    """The control socket, one request per call."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.path = path
        self.timeout = timeout

    async def __call__(self, cmd: str, **args) -> dict:
        try:
            return await control.arequest(self.path, cmd, timeout=self.timeout, **args)
        except control.NotRunning as e:
            return {"ok": False, "error": str(e)}
        except asyncio.TimeoutError:
            # not a refusal: the daemon may yet do what was asked (on 3.11 this is an OSError
            # without strerror or text, and was shown as an empty reason)
            return {"ok": False, "timeout": True,
                    "error": f"the daemon did not answer within {self.timeout:g} s (control socket {self.path})"}
        except (OSError, ValueError) as e:
            return {"ok": False, "error": f"control socket {self.path}: {getattr(e, 'strerror', None) or e or 'timeout'}"}


@dataclass
class Slot:
    """A connection's slot: in the open pool, or a reserved one (``probation`` until its first
    request shows a session); None once given back."""

    pool: str | None                # "open", "reserved" or "probation"
    keys: tuple[str, ...]           # what it counts against: lb.web.clients.client_keys
    address: str
    transport: object = None        # the connection's, while on probation (to abort it)


class Connections:
    """The protocol factory of the console's listening socket.  Anyone's connection takes one of
    the MAX_CONNECTIONS open slots, at most MAX_PER_CLIENT per client and, once half the slots
    are taken, MAX_PER_SITE per IPv6 /48 (lb.web.clients: one host of a site does not lock out
    the site's other /64s while there is room); past those, one of RESERVED more (as capped per
    client and /48), which a connection from loopback holds as it comes and any other on
    probation -- MAX_ON_PROBATION per client, MAX_ON_PROBATION_SITE per /48 -- until its first
    request shows a valid session (``admit``,
    which the console asks; else it is answered 503 and closed).  When every reserved slot is
    taken, a newcomer that its caps let in takes the one of the oldest connection still on
    probation, which is aborted: a silent connection holds a reserved slot only until a newer one
    needs it, not for the keep-alive timeout, so a crowd of clients without a session that holds
    every open slot and reconnects does not lock out a logged-in operator.  Past all that the
    connection is closed at once.  The others go to aiohttp's handler (``runner.server``).  A
    trusted proxy's connections carry its clients': they are not capped as one client's, only by
    the totals, in every pool (on probation like anyone's until a request shows a session)."""

    def __init__(self, factory, trusts=lambda address: False, total: int | None = None,
                 per_client: int | None = None, reserved: int | None = None, tls: ssl.SSLContext | None = None):
        self.factory = factory
        # HTTPS: the TLS handshake is made here, after a connection took its slot (asyncio's own,
        # create_server(ssl=...), makes the protocol's connection_made wait for the handshake:
        # connections still in it were neither counted nor capped, one client could hold
        # thousands, each TLS_HANDSHAKE_TIMEOUT, until no file descriptor was left)
        self.tls = tls
        self.trusts = trusts            # a trusted proxy's address? (Settings.trusts)
        self.total = MAX_CONNECTIONS if total is None else total
        self.per_client_max = MAX_PER_CLIENT if per_client is None else per_client
        self.reserved = RESERVED if reserved is None else reserved
        caps = (self.per_client_max, MAX_PER_SITE)          # per client_keys level
        self.caps = {"open": caps, "reserved": caps, "probation": (MAX_ON_PROBATION, MAX_ON_PROBATION_SITE)}
        # one Slots per pool and key level: the first level counts every connection (the total)
        self.pools = {"open": [Slots(self.total, c) for c in caps],
                      "reserved": [Slots(self.reserved, c) for c in caps],
                      "probation": [Slots(self.reserved, c) for c in self.caps["probation"]]}
        self.on_probation: dict = {}    # transport -> its Slot, oldest first, until a request shows a session
        self.refused = 0                # connections closed for want of a slot
        self.sessionless = 0            # ... on probation, their request without a session
        self.evicted = 0                # ... on probation, aborted for a newer one
        self._log = RateLimitedLog(log, 10.0)

    def __call__(self) -> asyncio.Protocol:
        return _Counted(self)

    def take(self, address: str, transport=None) -> Slot | None:
        """The connection's slot; None (the connection to close) when it has none.  ``transport``:
        the connection's, which a newer one may abort while it is on probation."""
        proxy = self.trusts(address)
        # a proxy's connections are its clients': only the totals bound them
        keys, capped = (("",), False) if proxy else (clients.client_keys(address), True)
        full = self._take("open", keys, capped)
        if full is None:
            return Slot("open", keys, address)
        local = clients.is_local(address) and not proxy
        why = self._take("reserved", keys, capped)
        # every reserved slot taken: the oldest on probation makes way, if this one's caps let it in
        if why == "total" and (local or not self._at_cap("probation", keys, capped)) and self._evict():
            why = self._take("reserved", keys, capped)
        if why is None:
            if local:
                return Slot("reserved", keys, address)
            why = self._take("probation", keys, capped)
            if why is None:
                slot = Slot("probation", keys, address, transport)
                if transport is not None:
                    self.on_probation[transport] = slot
                return slot
            self._give("reserved", keys)
            why += " yet to show a session"
        full = f"{self.total} connections" if full == "total" else full
        why = f"{self.reserved} connections" if why == "total" else why
        return self._refuse(address, f"{full} open, and {why} in the reserved slots")

    def _capped(self, pool: str, capped: bool) -> tuple[bool, bool]:
        """Whether each key level's cap applies (before this connection takes a slot): a client's
        always; an IPv6 /48's on probation always (MAX_ON_PROBATION_SITE: one site's /64s cannot
        take every probation slot and evict a logged-in operator's new connection), elsewhere
        only once the pool is half full (a host of the site holding its cap does not lock out
        another of its /64s while the pool has room)."""
        if pool == "probation":
            return capped, capped
        slots = self.pools[pool][0]
        return capped, capped and slots.open >= slots.total // 2

    def _take(self, pool: str, keys: tuple[str, ...], capped: bool = True) -> str | None:
        """None once ``keys`` hold a slot of ``pool`` at every level; else why not: "total" (the
        pool is full), or the client's cap met."""
        caps = self._capped(pool, capped)
        for level, key in enumerate(keys):
            full = self.pools[pool][level].take(key, caps[level])
            if full is not None:
                for done in range(level):
                    self.pools[pool][done].give(keys[done])
                if full == "total":
                    return "total"
                return f"{self.caps[pool][level]} connections of this client" + ("'s /48" if level else "")
        return None

    def _at_cap(self, pool: str, keys: tuple[str, ...], capped: bool = True) -> bool:
        """Whether ``keys`` hold as many slots of ``pool`` as their caps allow, at some level."""
        caps = self._capped(pool, capped)
        return any(caps[level] and self.pools[pool][level].held(key) >= self.caps[pool][level]
                   for level, key in enumerate(keys))

    def _evict(self) -> bool:
        """Abort the oldest connection on probation, giving its slot back at once; False: none is."""
        if not self.on_probation:
            return False
        transport, slot = next(iter(self.on_probation.items()))
        self.give(slot)
        self.evicted += 1
        self._log.log("evicted", logging.WARNING, "web console: closed a connection from %s that showed no session "
                      "yet: every reserved slot was taken, and a newer connection needed one (%d closed since "
                      "start)", slot.address, self.evicted)
        transport.abort()
        return True

    def _give(self, pool: str, keys: tuple[str, ...]) -> None:
        for level, key in enumerate(keys):
            self.pools[pool][level].give(key)

    def _refuse(self, address: str, why: str) -> None:
        self.refused += 1
        self._log.log("refused", logging.WARNING, "web console: closed a connection from %s: %s "
                      "(%d closed since start)", address, why, self.refused)
        return None

    def give(self, slot: Slot) -> None:
        """Give a connection's slot back (once: an aborted one's is given back already)."""
        if slot.pool is None:
            return
        if slot.pool == "probation":
            self.on_probation.pop(slot.transport, None)
            self._give("probation", slot.keys)
        self._give("open" if slot.pool == "open" else "reserved", slot.keys)
        slot.pool = None

    def retransport(self, slot: Slot, transport) -> None:
        """The connection of ``slot`` now goes on over ``transport`` (its TLS one): the one a
        request shows (``admit``) and an eviction aborts; its place among the oldest kept."""
        if slot.pool == "probation" and slot.transport in self.on_probation:
            old = slot.transport
            self.on_probation = {(transport if t is old else t): sl for t, sl in self.on_probation.items()}
        slot.transport = transport

    def admit(self, transport, session: bool) -> bool:
        """Whether a request on ``transport`` is served: always, but on probation without a
        session; one with a session ends the connection's probation."""
        slot = self.on_probation.get(transport)
        if slot is None:
            return True
        if not session:
            self.sessionless += 1
            self._log.log("sessionless", logging.WARNING, "web console: answered 503 to %s and closed: no open "
                          "slot was left for it, and a reserved one serves a logged-in session only (%d since "
                          "since start)", slot.address, self.sessionless)
            return False
        del self.on_probation[transport]
        self._give("probation", slot.keys)
        slot.pool = "reserved"
        return True


class _Counted(asyncio.Protocol):
    """One connection: counted, then aiohttp's protocol (or closed at once)."""

    def __init__(self, connections: Connections):
        self.connections = connections
        self.inner: asyncio.Protocol | None = None
        self.slot: Slot | None = None
        self.early: list[bytes] | None = None   # HTTPS: what came with the handshake, before inner
        self.early_eof = False
        self.handshake: asyncio.Task | None = None
        self.slot_address = "?"

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self.slot_address = clients.plain_address(str(peer[0])) if peer else "?"
        self.slot = self.connections.take(self.slot_address, transport)
        if self.slot is None:
            transport.abort()
            return
        if self.connections.tls is not None:
            self.early = []
            self.handshake = asyncio.get_running_loop().create_task(self._start_tls(transport))
            return
        self.inner = self.connections.factory()
        self.inner.connection_made(transport)

    async def _start_tls(self, transport) -> None:
        """The TLS handshake on the connection's slot; then aiohttp's protocol on the TLS transport."""
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(transport, self, self.connections.tls, server_side=True,
                                       ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except BaseException as e:
            # no handshake (a silent client, a bad hello, evicted, gone): start_tls closed it
            self._give()
            if not isinstance(e, Exception):
                raise
            log.debug("web console: no TLS handshake with %s: %s", self.slot_address, e)
            return
        if self.slot is None or tls is None:    # lost as the handshake ended
            return
        self.connections.retransport(self.slot, tls)
        self.inner = self.connections.factory()
        self.inner.connection_made(tls)
        early, self.early = self.early or [], None
        for data in early:
            self.inner.data_received(data)
        if self.early_eof:
            self.inner.eof_received()

    def _give(self) -> None:
        if self.slot is not None:
            self.connections.give(self.slot)
            self.slot = None

    def connection_lost(self, exc) -> None:
        self._give()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
        elif self.early is not None:
            self.early.append(data)

    def eof_received(self):
        if self.inner is None:
            self.early_eof = True
            return None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class AcceptErrors:
    """The loop's exception handler: asyncio reports every accept() that fails for want of file
    descriptors (EMFILE, ENFILE ...) with a traceback, over and over while it lasts; these are
    counted and logged at most once every ACCEPT_LOG_EVERY seconds, anything else as asyncio would."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self):
        self.count = 0
        self._log = RateLimitedLog(log, ACCEPT_LOG_EVERY)

    def install(self, loop: asyncio.AbstractEventLoop) -> "AcceptErrors":
        loop.set_exception_handler(self)
        return self

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") != self.MESSAGE:
            loop.default_exception_handler(context)
            return
        self.count += 1
        exc = context.get("exception")
        self._log.log("accept", logging.WARNING, "web console: cannot accept connections: %s (%d failed accepts "
                      "since start; asyncio retries each second)", getattr(exc, "strerror", None) or exc, self.count)


def runner(console: webapp.Console) -> web.AppRunner:
    """The console's aiohttp runner: no access log, HEADER_TIMEOUT for headers and idle keep-alive."""
    return web.AppRunner(console.app(), access_log=None, handle_signals=False, keepalive_timeout=HEADER_TIMEOUT,
                         lingering_time=LINGER)


async def listen(run: web.AppRunner, host: str, port: int, tls=None, trusts=lambda address: False,
                 console: webapp.Console | None = None) -> tuple[asyncio.AbstractServer, Connections]:
    """The console's listening socket over ``run`` (set up), with the connection limits
    (``trusts``: Settings.trusts, whose proxies only the totals bound); ``console``, the one
    ``run`` serves, asks them whether a request is served (Connections.admit)."""
    connections = Connections(run.server, trusts, tls=tls)      # which makes the TLS handshakes
    if console is not None:
        console.admit = connections.admit
    options = dict(backlog=BACKLOG)
    loop = asyncio.get_running_loop()
    if _every_address(host) and not socket.has_dualstack_ipv6():
        # a kernel without IPv6 (ipv6.disable=1): "[::]:PORT" is then every address it has
        log.warning("web console: no IPv6 on this host: listening on 0.0.0.0:%d (every IPv4 address) "
                    "for [web] listen [::]:%d", port, port)
        host = "0.0.0.0"
    if _every_address(host):
        # "[::]:PORT" is every address, IPv4's too (as the metrics endpoint's, and as Settings.host_allowed
        # takes it): asyncio's own socket for "::" would be IPv6 only (IPV6_V6ONLY)
        sock = socket.create_server(("::", port), family=socket.AF_INET6, backlog=BACKLOG, dualstack_ipv6=True)
        try:
            server = await loop.create_server(connections, sock=sock, **options)
        except BaseException:
            sock.close()
            raise
    else:
        server = await loop.create_server(connections, host, port, reuse_address=True, **options)
    return server, connections


def _every_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


async def _settings(daemon: Daemon, stop: asyncio.Event) -> dict | None:
    waited = None
    while not stop.is_set():
        reply = await daemon("web")
        if reply.get("ok"):
            return reply
        if "refused" in reply:
            log.error("web console: the daemon refuses this user: %s", reply.get("error"))
            return None
        loop = asyncio.get_running_loop()
        if waited is None or loop.time() - waited >= WAIT_LOG_EVERY:
            waited = loop.time()
            why = reply.get("error")
            if not os.path.exists(daemon.path):
                # a daemon that runs opens this socket only while [control] names a group: "not
                # running" alone sent the operator of a running one looking in the wrong place
                why = (f"no {daemon.path}: the daemon is not running, or its [control] names no group (it "
                       f"opens that socket only while admin_group or read_group is set: admin_group = "
                       f"\"lb-web\" for lb-web@.service, whose user must be in it)")
            log.warning("web console: waiting for the daemon: %s", why)
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except asyncio.TimeoutError:
            pass
    return None


async def serve(instance: str, shared_dir: str = control.SHARED_DIR) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(control.shared_socket_path(instance, shared_dir))
    reply = await _settings(daemon, stop)
    if reply is None:
        return 0 if stop.is_set() else 1
    w = reply["web"]
    if not w.get("enabled"):
        log.info("web console: [web] enabled is false for instance %s: nothing to serve", instance)
        return 0
    pwfile = w["password_file"]
    try:
        password.read(pwfile)
    except password.PasswordFileError as e:
        log.error("web console not started: %s", e)
        return 1
    mode = stat.S_IMODE(os.stat(pwfile).st_mode)
    if mode & 0o077:
        log.warning("web console: %s is readable by others (mode %04o): `lb passwd` writes it 0600", pwfile, mode)
    tls = None
    if w.get("tls_cert"):
        try:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            tls.load_cert_chain(w["tls_cert"], w["tls_key"])
        except (OSError, ssl.SSLError) as e:
            log.error("web console not started: TLS certificate %s / key %s: %s", w["tls_cert"], w["tls_key"], e)
            return 1
    AcceptErrors().install(loop)
    settings = webapp.Settings.from_reply(reply)
    console = webapp.Console(daemon, pwfile, settings)
    run = runner(console)
    await run.setup()
    try:
        server, _ = await listen(run, w["address"], w["port"], tls, settings.trusts, console)
    except OSError as e:
        await run.cleanup()
        hint = ""
        if e.errno == errno.EACCES and w["port"] < 1024:
            # lb-web@.service gives no capability: a privileged port needs one, from a drop-in
            hint = (" (a port below 1024 needs CAP_NET_BIND_SERVICE, which lb-web@.service does not give: "
                    "a drop-in with AmbientCapabilities=CAP_NET_BIND_SERVICE and "
                    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE, or a port from 1024 behind a proxy)")
        log.error("web console not started: cannot listen on %s: %s%s", w["listen"], e.strerror or e, hint)
        return 1
    log.info("web console on %s://%s/ for instance %s (uid %d, password file %s)", "https" if tls else "http",
             w["listen"], instance, os.geteuid(), pwfile)
    if os.geteuid() == 0:
        log.warning("web console: running as root; it needs no privilege (lb-web@.service runs it as its own user)")
    try:
        await stop.wait()
    finally:                        # cancelled too: nothing left listening
        server.close()
        await run.cleanup()         # closes the connections, which wait_closed waits for
        await server.wait_closed()
    log.info("web console stopped")
    return 0


def run(instance: str, shared_dir: str = control.SHARED_DIR) -> int:
    return asyncio.run(serve(instance, shared_dir))
