"""The web console against clients that would take it down or lock the operator out (lb.web):
connection limits (in all, per client, per IPv6 /48; reserved slots a crowd without a session
cannot use), header and body deadlines, out of file descriptors as one counted line, a client
leaving mid-body as nothing to log, refusals anyone can cause counted rather than logged each;
login checks queued rather than refused, throttling per client (an IPv6 /64) that fresh
addresses cannot clear; `lb passwd` ending the
sessions of the old password.  `lb web` itself (lb.web.main.serve) where the listening socket is
what is tested."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import io
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lb.cli.main import main as lb_main
from lb.web import app as webapp
from lb.web import main as webmain
from lb.web import password
from test_web import PASSWORD, USER, login, make_console, run
from test_web_process import daemon, make_cert, settings

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "lb" / "systemd" / "lb-web@.service"

STALLED_LOGIN = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 100000\r\n\r\nuser=")


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / "web.passwd"
    password.write(p, PASSWORD, USER)
    return p


# ---- `lb web`'s listening socket ---------------------------------------------------------------

@contextlib.asynccontextmanager
async def lb_web(tmp_path):
    """`lb web` (serve()) on this loop, its daemon's control socket in a thread; yields the port."""
    web = settings(tmp_path)
    loop, t = daemon(tmp_path, web)
    task = asyncio.create_task(webmain.serve("t", str(tmp_path)))
    try:
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", web["port"])
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield web["port"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_a_stalled_body_is_answered_408_and_stalled_headers_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(webapp, "BODY_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(webmain, "HEADER_TIMEOUT", 0.5, raising=False)
    counts = webapp.__dict__.setdefault("counts", collections.Counter())

    async def go():
        async with lb_web(tmp_path) as port:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(STALLED_LOGIN)
            status = await asyncio.wait_for(r.readline(), 30)
            assert status.startswith(b"HTTP/1.1 408"), status
            assert b"request body not received within" in await asyncio.wait_for(r.read(), 30)   # and closed
            w.close()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n")                # headers never ended
            assert await asyncio.wait_for(r.read(), 30) == b""                      # closed, no answer
            w.close()

    before = counts["body timeouts"]
    asyncio.run(go())
    assert counts["body timeouts"] == before + 1


def test_a_login_cut_off_mid_body_is_not_an_error(tmp_path, caplog):
    """The client sends half its form and closes: nothing to answer, nothing at ERROR, counted."""
    counts = webapp.__dict__.setdefault("counts", collections.Counter())
    before = counts["clients left"]

    async def go():
        async with lb_web(tmp_path) as port:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(STALLED_LOGIN.replace(b"100000", b"100"))
            await w.drain()
            w.close()
            for _ in range(200):        # until the console has seen it leave (or logged an error)
                if counts["clients left"] > before or any(x.levelno >= logging.ERROR for x in caplog.records):
                    break
                await asyncio.sleep(0.05)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(r.readline(), 30)).startswith(b"HTTP/1.1 200")
            w.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    errors = [x.getMessage() for x in caplog.records if x.levelno >= logging.ERROR]
    assert errors == [] and "Traceback" not in caplog.text
    assert counts["clients left"] == before + 1


def test_listening_on_every_ipv6_address_is_every_ipv4_address_too(tmp_path, pwfile):
    """[web] listen = "[::]:PORT" answers on 127.0.0.1 as on ::1 (asyncio's own socket for "::"
    is IPv6 only); the IPv4 client is itself there, not ::ffff:127.0.0.1: as a trusted proxy its
    X-Forwarded-Proto is believed (HSTS), the one of ::1 (not trusted) is not."""
    console = make_console(tmp_path, pwfile, listen_host="::", hsts=True,
                           trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))

    # the host's lack of IPv6 is the one reason not to run this (the next test is that host's);
    # an OSError out of lb's own listen() is a failure, not a skip
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 on this host")

    async def go():
        run_ = webmain.runner(console)
        await run_.setup()
        try:
            server, _ = await webmain.listen(run_, "::", 0, trusts=console.settings.trusts)
        except BaseException:
            await run_.cleanup()
            raise
        port = server.sockets[0].getsockname()[1]
        try:
            for host, name in (("127.0.0.1", b"127.0.0.1"), ("::1", b"[::1]")):
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                w.write(b"GET /login HTTP/1.1\r\nHost: " + name + b"\r\nX-Forwarded-Proto: https\r\n"
                        b"Connection: close\r\n\r\n")
                reply = await asyncio.wait_for(r.read(), 10)
                w.close()
                assert reply.startswith(b"HTTP/1.1 200"), (host, reply[:200])
                assert (b"Strict-Transport-Security" in reply) == (host == "127.0.0.1"), host
        finally:
            server.close()
            await run_.cleanup()
            await server.wait_closed()

    asyncio.run(go())
    assert console.settings.trusts("::ffff:127.0.0.1") and webapp.plain_address("::ffff:127.0.0.1") == "127.0.0.1"


def test_every_address_on_a_host_without_ipv6_is_every_ipv4_address(tmp_path, pwfile, monkeypatch, caplog):
    """[web] listen = "[::]:PORT" where the kernel has no IPv6 (socket.create_server's dual stack
    raises ValueError there, which serve() did not catch: a traceback): 0.0.0.0, with a warning."""
    monkeypatch.setattr(webmain.socket, "has_dualstack_ipv6", lambda: False)
    console = make_console(tmp_path, pwfile, listen_host="::")

    async def go():
        run_ = webmain.runner(console)
        await run_.setup()
        server, _ = await webmain.listen(run_, "::", 0)
        try:
            assert server.sockets[0].family == socket.AF_INET
            port = server.sockets[0].getsockname()[1]
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = await asyncio.wait_for(r.read(), 10)
            w.close()
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        finally:
            server.close()
            await run_.cleanup()
            await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger="lb.web"):
        asyncio.run(go())
    assert "no IPv6 on this host: listening on 0.0.0.0:0" in caplog.text


async def exchange(r, w, path: str, cookie: str | None = None) -> bytes:
    """GET ``path`` (keep-alive) on a connection: the answer's status line, its body read."""
    w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + (f"Cookie: lb_session_webtest={cookie}\r\n".encode() if cookie else b"") + b"\r\n")
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    length = int(next(x.split(b":")[1] for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")))
    await asyncio.wait_for(r.readexactly(length), 10)
    return head.split(b"\r\n")[0]


def test_a_crowd_without_a_session_does_not_lock_out_a_logged_in_operator(tmp_path, pwfile, monkeypatch):
    """The open slots all held by a crowd's keep-alive connections: a connection with a valid
    session (and one from loopback) still gets a reserved slot; one without a session gets a
    503 there, and a client holds at most MAX_ON_PROBATION reserved ones before it shows one."""
    for name, value in (("MAX_CONNECTIONS", 8), ("MAX_PER_CLIENT", 4), ("RESERVED", 4), ("MAX_ON_PROBATION", 2)):
        monkeypatch.setattr(webmain, name, value, raising=False)
    monkeypatch.setattr(webmain.clients, "is_local", lambda address: address == "127.0.0.9", raising=False)
    console = make_console(tmp_path, pwfile)

    async def connect_from(port, source):
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10)

    async def go():
        run_ = webmain.runner(console)
        await run_.setup()
        server, connections = await webmain.listen(run_, "127.0.0.1", 0, console=console)
        port = server.sockets[0].getsockname()[1]
        held = []
        try:
            r, w = await connect_from(port, "127.0.0.3")     # the operator logs in while all is quiet
            form = f"user={USER}&password={PASSWORD.replace(' ', '+')}".encode()
            w.write(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(form), form))
            answer = await asyncio.wait_for(r.read(), 10)
            w.close()
            assert answer.startswith(b"HTTP/1.1 303"), answer[:300]
            cookie = next(iter(console.sessions))
            for source in ("127.0.0.1", "127.0.0.2"):          # the crowd: every open slot, kept alive
                for _ in range(4):
                    r, w = await connect_from(port, source)
                    held.append(w)
                    assert await exchange(r, w, "/login") == b"HTTP/1.1 200 OK"
            r, w = await connect_from(port, "127.0.0.4")        # one more of it, on a reserved slot: 503
            held.append(w)
            assert (await exchange(r, w, "/login")).startswith(b"HTTP/1.1 503")
            assert await asyncio.wait_for(r.read(), 10) == b""  # and closed
            for _ in range(2):                                   # silent ones: on probation ...
                held.append((await connect_from(port, "127.0.0.5"))[1])
            r, w = await connect_from(port, "127.0.0.5")         # ... two at most
            held.append(w)
            assert await asyncio.wait_for(r.read(), 10) == b""
            r, w = await connect_from(port, "127.0.0.3")         # the operator, with its session
            held.append(w)
            assert await exchange(r, w, "/status", cookie) == b"HTTP/1.1 200 OK"
            assert await exchange(r, w, "/status?part=live", cookie) == b"HTTP/1.1 200 OK"
            r, w = await connect_from(port, "127.0.0.9")         # loopback: no session needed
            held.append(w)
            assert await exchange(r, w, "/login") == b"HTTP/1.1 200 OK"
            assert connections.sessionless == 1 and connections.refused == 1
        finally:
            for w in held:
                w.close()
            server.close()
            await run_.cleanup()
            await server.wait_closed()

    asyncio.run(go())


def test_over_https_connections_are_capped_before_their_tls_handshake(tmp_path, pwfile, monkeypatch):
    """With [web] tls_cert, asyncio made the handshake before the connection reached the caps:
    connections still in it -- a client that connects and sends nothing, for 15 s each -- were
    neither counted nor capped, so one client could hold thousands, until no file descriptor was
    left for the operator.  Now a connection takes its slot first: past its client's caps it is
    closed at once, and HTTPS, a login and the reserved slots work as over plain HTTP."""
    crt, key = make_cert(tmp_path)
    for name, value in (("MAX_CONNECTIONS", 8), ("MAX_PER_CLIENT", 4), ("RESERVED", 4), ("MAX_ON_PROBATION", 2)):
        monkeypatch.setattr(webmain, name, value, raising=False)
    monkeypatch.setattr(webmain.clients, "is_local", lambda address: False, raising=False)
    console = make_console(tmp_path, pwfile)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(crt), str(key))
    client_tls = ssl.create_default_context(cafile=str(crt))
    client_tls.check_hostname = False

    async def go():
        run_ = webmain.runner(console)
        await run_.setup()
        server, connections = await webmain.listen(run_, "127.0.0.1", 0, tls, console=console)
        port = server.sockets[0].getsockname()[1]
        held = []
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0),
                                                                  ssl=client_tls), 10)
            form = f"user={USER}&password={PASSWORD.replace(' ', '+')}".encode()
            w.write(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(form), form))
            answer = await asyncio.wait_for(r.read(), 10)
            w.close()
            assert answer.startswith(b"HTTP/1.1 303"), answer[:300]
            cookie = next(iter(console.sessions))
            silent = []
            for _ in range(40):             # one client's silent connections: no TLS hello
                silent.append(await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port,
                                                                             local_addr=("127.0.0.2", 0)), 10))
            held += [w for _, w in silent]
            await asyncio.sleep(0.5)
            still = 0
            for r, _ in silent:
                try:
                    still += await asyncio.wait_for(r.read(1), 0.05) != b""
                except asyncio.TimeoutError:
                    still += 1
            assert still == 4 + 2, still            # its open slots, and two on probation
            assert connections.refused == 40 - still
            for _ in range(6):                      # another's: every open slot taken, all reserved on probation
                held.append((await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port,
                                                                            local_addr=("127.0.0.5", 0)), 10))[1])

            async def https(source):                # the oldest silent one makes way for it
                return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0),
                                                                      ssl=client_tls), 10)
            r, w = await https("127.0.0.6")         # on probation without a session: 503, as over HTTP
            held.append(w)
            assert (await exchange(r, w, "/login")).startswith(b"HTTP/1.1 503")
            r, w = await https("127.0.0.4")         # the operator, with its session: served
            held.append(w)
            assert await exchange(r, w, "/status", cookie) == b"HTTP/1.1 200 OK"
            assert connections.sessionless == 1 and connections.evicted >= 1
        finally:
            for w in held:
                w.close()
            server.close()
            await run_.cleanup()
            await server.wait_closed()

    asyncio.run(go())


class FakeTransport:
    """A connection as Connections sees it: its peer, and whether it was aborted (asyncio then
    calls connection_lost soon after)."""

    def __init__(self, address: str):
        self.address = address
        self.aborted = False
        self.protocol = None

    def get_extra_info(self, name, default=None):
        return (self.address, 40000) if name == "peername" else default

    def abort(self):
        self.aborted = True


class Inner(asyncio.Protocol):
    lost = 0

    def connection_lost(self, exc):
        Inner.lost += 1


def connect_fake(connections, address: str) -> FakeTransport:
    t = FakeTransport(address)
    t.protocol = connections()
    t.protocol.connection_made(t)
    return t


def test_a_crowd_that_holds_the_reserved_slots_on_probation_gives_way_to_newer_connections():
    """16 IPv4 addresses hold the open pool, 32 more every reserved slot with two silent
    connections each (reconnecting within the keep-alive timeout, they held them for good): the
    logged-in operator's connection takes the slot of the oldest one still on probation, which is
    aborted; one that showed its session is not.  A trusted proxy's connections, its clients',
    are not capped as one client's: only the totals bound them."""
    connections = webmain.Connections(Inner, trusts=lambda address: address == "192.0.2.80")
    crowd = [connect_fake(connections, f"203.0.113.{a + 1}") for a in range(16) for _ in range(16)]
    assert all(t.protocol.slot.pool == "open" for t in crowd)
    silent = [connect_fake(connections, f"198.51.100.{a + 1}") for a in range(32) for _ in range(2)]
    assert [t.protocol.slot.pool for t in silent] == ["probation"] * webmain.RESERVED
    operator = connect_fake(connections, "192.0.2.7")
    assert operator.protocol.slot.pool == "probation" and not operator.aborted
    assert [t.aborted for t in silent[:2]] == [True, False] and connections.evicted == 1
    assert connections.admit(operator, True) and operator.protocol.slot.pool == "reserved"
    silent[0].protocol.connection_lost(None)            # asyncio's, after the abort: given back once only
    assert connections.pools["reserved"][0].open == webmain.RESERVED
    newer = [connect_fake(connections, f"198.18.{i}.1") for i in range(webmain.RESERVED - 1)]
    assert all(t.aborted for t in silent) and not any(t.aborted for t in newer + [operator])
    last = [connect_fake(connections, "198.18.200.1") for _ in range(3)]
    assert [t.aborted for t in last] == [False, False, True]        # its own cap: no one aborted for the third
    assert [t.aborted for t in newer[:3]] == [True, True, False] and connections.evicted == webmain.RESERVED + 2
    for t in crowd + silent + newer + last + [operator]:
        t.protocol.connection_lost(None)
    assert all(not slots.by_key and not slots.open for pool in connections.pools.values() for slots in pool)
    assert not connections.on_probation
    proxied = [connect_fake(connections, "192.0.2.80") for _ in range(webmain.MAX_CONNECTIONS + webmain.RESERVED)]
    assert collections.Counter(t.protocol.slot.pool for t in proxied) == {"open": webmain.MAX_CONNECTIONS,
                                                                          "probation": webmain.RESERVED}


def test_an_ipv6_site_is_capped_per_48_only_when_the_open_slots_run_short():
    """A /48's /64s take open slots as any client while half the pool is free (a host elsewhere in
    the operator's /48 holding MAX_PER_SITE locked out the operator's own /64, 190 slots free);
    past half, 16 /64s of one /48 (a host with a /56 has 256) do not take 16 x MAX_PER_CLIENT:
    the /48 gets no more open ones, and MAX_ON_PROBATION_SITE on probation; another /48 is served."""
    connections = webmain.Connections(lambda: None)
    neighbour = [connections.take(f"2001:db8:1:{n:x}::{i + 1:x}") for n in range(4) for i in range(16)]
    neighbour += [connections.take("2001:db8:1:ff::1"), connections.take("2001:db8:1:ff::2")]
    assert all(s.pool == "open" for s in neighbour)
    operator = connections.take("2001:db8:1:100::10")
    assert operator is not None and operator.pool == "open"
    for s in neighbour + [operator]:
        connections.give(s)
    slots = [connections.take(f"2001:db8:1:{i:x}::{j + 1:x}") for i in range(16) for j in range(16)]
    pools = collections.Counter(s.pool if s is not None else None for s in slots)
    half = webmain.MAX_CONNECTIONS // 2
    on_probation = webmain.MAX_ON_PROBATION_SITE
    assert pools == {"open": half, "probation": on_probation, None: 256 - half - on_probation}, pools
    other = connections.take("2001:db8:2::1")
    assert other is not None and other.pool == "open"
    for s in slots:
        if s is not None:
            connections.give(s)
    connections.give(other)
    assert all(not slots.by_key for pool in connections.pools.values() for slots in pool)


def test_one_site_cannot_take_every_probation_slot_and_evict_an_operator():
    """The open slots full (16 IPv4 hosts x 16), a logged-in operator's new connection waits on
    probation for its first request; 64 connections from 64 /64s of one other /48 each took a
    probation slot (a /64 holding none yet was not capped per /48) and the last evicted the
    operator's.  A /48 holds MAX_ON_PROBATION_SITE there."""
    class Transport:
        def __init__(self):
            self.aborted = False

        def abort(self):
            self.aborted = True
    connections = webmain.Connections(lambda: None)
    crowd = [connections.take(f"198.18.{h}.{i + 1}", Transport()) for h in range(16) for i in range(16)]
    assert all(s.pool == "open" for s in crowd)
    operator = Transport()
    assert connections.take("2001:db8:aaaa:1::5", operator).pool == "probation"
    site = [connections.take(f"2001:db8:bbbb:{i:x}::1", Transport()) for i in range(64)]
    assert sum(s is not None for s in site) == webmain.MAX_ON_PROBATION_SITE
    assert not operator.aborted and connections.evicted == 0


# `lb web` in a process of its own with few file descriptors; its log on stderr
SERVER = r"""
import asyncio, json, logging, resource, sys
from lb import control
from lb.web import main as webmain
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[3]), int(sys.argv[3])))
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
web = json.loads(sys.argv[2])

async def handler(req):
    return {"ok": True, "instance": "t", "config": "/x", "web": web}

async def main():
    server = control.ControlServer(control.socket_path("t", sys.argv[1]), handler)
    await server.start()
    return await webmain.serve("t", sys.argv[1])

sys.exit(asyncio.run(main()))
"""


def connect(port: int, source: str, data: bytes, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):    # closed at once: state() says so
        s.sendall(data)
    return s


def get_login(port: int, source: str) -> bytes:
    """The status line of GET /login from ``source`` (10 s at most for the answer)."""
    with connect(port, source, b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") as s:
        return s.makefile("rb").readline()


def up(port: int, p: subprocess.Popen) -> None:
    """Once GET /login from the operator's address (127.0.0.2) is answered 200."""
    for _ in range(300):
        assert p.poll() is None, "lb web exited"
        with contextlib.suppress(OSError):
            if get_login(port, "127.0.0.2").startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    pytest.fail("lb web does not answer")


def state(s: socket.socket) -> str:
    """What the console did with a connection: "held" (no answer yet), "closed" or "answered"."""
    s.setblocking(False)
    try:
        return "answered" if s.recv(65536) else "closed"
    except BlockingIOError:
        return "held"
    except ConnectionResetError:
        return "closed"


def test_one_client_cannot_take_the_console_nor_flood_its_log(tmp_path):
    """`lb web` with 128 file descriptors.  1) 300 stalled login POSTs from one address: the
    console holds MAX_PER_CLIENT of them, and as many reserved ones (a loopback address's), and
    closes the rest at once; the operator on another address is answered.  2) 200 connections from as many addresses: accepts fail (EMFILE), which
    is one log line, no traceback; once they are gone the operator is answered again."""
    web = settings(tmp_path)
    port = web["port"]
    p = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path), json.dumps(web), "128"], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log_lines: list[str] = []
    out_of_fds = threading.Event()

    def read_log():
        for line in p.stderr:
            log_lines.append(line)
            if "cannot accept connections" in line or "out of system resource" in line:
                out_of_fds.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    attackers: list[socket.socket] = []
    try:
        up(port, p)
        attackers = [connect(port, "127.0.0.1", STALLED_LOGIN) for _ in range(300)]
        assert get_login(port, "127.0.0.2").startswith(b"HTTP/1.1 200")      # accepted after all 300
        states = [state(s) for s in attackers]
        assert states.count("closed") == 300 - 2 * webmain.MAX_PER_CLIENT, states
        for s in attackers:
            s.close()
        attackers = []
        for i in range(200):
            with contextlib.suppress(OSError):   # the listen backlog may be full: then connect fails
                attackers.append(connect(port, f"127.1.{i // 250}.{i % 250 + 1}",
                                         b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        assert out_of_fds.wait(30), "".join(log_lines[-20:])
        for s in attackers:
            s.close()
        attackers = []
        up(port, p)                              # asyncio tries accept() again each second
    finally:
        for s in attackers:
            s.close()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        reader.join(10)
    text = "".join(log_lines)
    assert "Traceback" not in text and "out of system resource" not in text, text[-3000:]
    told = [x for x in log_lines if "cannot accept connections" in x]
    assert 1 <= len(told) <= 4 and "Too many open files" in told[0], told
    assert ("closed a connection from 127.0.0.1: 16 connections of this client open, and 16 connections of "
            "this client in the reserved slots") in text


def test_the_unit_has_room_for_the_connection_limit():
    limit = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("LimitNOFILE=")]
    assert limit and int(limit[0]) >= 4 * (webmain.MAX_CONNECTIONS + webmain.RESERVED), limit


def test_accept_errors_are_counted_other_loop_errors_go_on_as_before(caplog):
    loop = asyncio.new_event_loop()
    try:
        handler = webmain.AcceptErrors().install(loop)
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(errno.EMFILE, os.strerror(errno.EMFILE))})
            loop.call_exception_handler({"message": "something else broke"})
    finally:
        loop.close()
    assert handler.count == 1000
    lines = [x.getMessage() for x in caplog.records]
    assert lines[0].startswith("web console: cannot accept connections: Too many open files (1 failed")
    assert lines[1:] == ["something else broke"], lines


# ---- login checks and throttling ------------------------------------------------------------------

def test_other_clients_failing_logins_queue_the_operator_not_refuse_it(tmp_path, pwfile, monkeypatch):
    """8 clients (fresh addresses) post wrong passwords while the checks are slow: the operator's
    correct login from another address waits for a check slot and logs in (no 429 "busy")."""
    console = make_console(tmp_path, pwfile, trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))
    gate = threading.Event()
    verify = password.verify

    def slow_verify(given, line, user=None):
        if given != PASSWORD:
            gate.wait(30)
        return verify(given, line, user)

    monkeypatch.setattr(password, "verify", slow_verify)

    async def body(client):
        attackers = [asyncio.create_task(login(client, "guess", headers={"X-Forwarded-For": f"198.18.7.{i}"}))
                     for i in range(8)]
        operator = None
        try:
            for _ in range(600):                 # until the operator waits behind 8 checks (or was sent away)
                if operator is None and len(console.throttle.inflight) + sum(a.done() for a in attackers) == 8:
                    operator = asyncio.create_task(login(client))
                if operator is not None and (operator.done() or len(console.throttle.inflight) == 9):
                    break
                await asyncio.sleep(0.02)
        finally:
            gate.set()
        r = await operator
        assert (r.status, r.headers.get("Location")) == (303, "/status"), await r.text()
        assert [(await a).status for a in attackers] == [401] * 8

    run(console, body)


def test_an_ipv6_client_is_throttled_per_64_and_no_one_else(tmp_path, pwfile, monkeypatch):
    """A failure makes its /64 wait (a fresh address of it is no fresh try), not the other /64s of
    its /48 (their operator's own, say): they log in at once, as while one of the /64 is being
    checked (a /48 level locked a whole site out of logging in)."""
    console = make_console(tmp_path, pwfile, trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))
    console.throttle.base = 30.0
    gate = threading.Event()
    verify = password.verify

    def slow_verify(given, line, user=None):
        if given == "slow":
            gate.wait(30)
        return verify(given, line, user)

    monkeypatch.setattr(password, "verify", slow_verify)

    async def body(client):
        for _ in range(3):
            r = await login(client, "guess", headers={"X-Forwarded-For": "2001:db8:1:ff::666"})
            assert r.status in (401, 429)
        r = await login(client, headers={"X-Forwarded-For": "2001:db8:1:ff:ffff::99"})    # same /64
        assert r.status == 429 and "from your address: try again in 30 s" in await r.text()
        r = await login(client, headers={"X-Forwarded-For": "2001:db8:1:2::10"})          # another /64, same /48
        assert (r.status, r.headers.get("Location")) == (303, "/status")
        slow = asyncio.create_task(login(client, "slow", headers={"X-Forwarded-For": "2001:db8:2:1::1"}))
        try:
            for _ in range(500):
                if "2001:db8:2:1::/64" in console.throttle.inflight:
                    break
                await asyncio.sleep(0.01)
            r = await login(client, headers={"X-Forwarded-For": "2001:db8:2:1::2"})       # the same /64 at once
            assert r.status == 429 and "a login from your address is being checked" in await r.text()
            r = await login(client, headers={"X-Forwarded-For": "2001:db8:2:7::1"})       # the same /48 at once
            assert r.status == 303
        finally:
            gate.set()
        assert (await slow).status == 401

    run(console, body)
    assert set(console.throttle.clients) == {"2001:db8:1:ff::/64", "2001:db8:2:1::/64"}


def test_fresh_addresses_do_not_clear_a_clients_wait(tmp_path, pwfile, monkeypatch):
    """The throttle remembers THROTTLE_CLIENTS clients: failures from more fresh addresses forget
    those with fewest failures, not the client that failed most (its wait goes on)."""
    monkeypatch.setattr(webapp, "THROTTLE_CLIENTS", 8)
    console = make_console(tmp_path, pwfile, trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))
    console.throttle.base = 30.0
    now = [1000.0]
    console.clock = lambda: now[0]
    attacker = {"X-Forwarded-For": "198.18.0.66"}

    async def body(client):
        assert (await login(client, "guess-1", headers=attacker)).status == 401    # wait 30 s
        now[0] += 31
        assert (await login(client, "guess-2", headers=attacker)).status == 401    # wait 60 s
        for i in range(20):
            assert (await login(client, "guess", headers={"X-Forwarded-For": f"198.18.9.{i}"})).status == 401
        now[0] += 10
        r = await login(client, PASSWORD, headers=attacker)
        assert r.status == 429 and "try again in 50 s" in await r.text()

    run(console, body)
    assert len(console.throttle.clients) == 8


def test_what_a_client_without_a_session_can_cause_is_counted_not_a_line_each(tmp_path, pwfile, caplog):
    """Foreign Hosts (4 KB each), cross-origin POSTs, throttled logins: each kind counted and
    logged once (per LOG_EVERY), values cut at 100 characters; failed logins once per client."""
    console = make_console(tmp_path, pwfile, trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))
    console.throttle.base = 30.0
    counts = webapp.counts
    before = collections.Counter(counts)
    n = 300

    async def body(client):
        for _ in range(n):
            r = await client.get("/login", headers={"Host": "h" * 4000})
            assert r.status == 421
        for _ in range(n):
            r = await client.post("/" + "p" * 4000, data={"user": USER, "password": PASSWORD},
                                  headers={"Origin": "https://" + "o" * 4000}, allow_redirects=False)
            assert r.status == 403
        assert (await login(client, "guess", user="u" * 1000, headers={"X-Forwarded-For": "198.18.0.66"})).status == 401
        for _ in range(n):
            r = await login(client, headers={"X-Forwarded-For": "198.18.0.66"})
            assert r.status == 429
        for i in range(10):
            r = await login(client, "guess", headers={"X-Forwarded-For": f"198.18.1.{i}"})
            assert r.status == 401

    with caplog.at_level(logging.DEBUG, logger="lb.web"):
        run(console, body)
    got = {k: counts[k] - before[k] for k in ("refused hosts", "cross-origin posts", "logins not checked",
                                              "failed logins")}
    assert got == {"refused hosts": n, "cross-origin posts": n, "logins not checked": n, "failed logins": 11}
    lines = [x.getMessage() for x in caplog.records]
    assert len(lines) == 14 and len(caplog.text) < 6000, lines
    assert [x.split(" (")[0] for x in lines[4:]] == [f"web console: failed login from 198.18.1.{i}" for i in range(10)]
    assert "refused Host 'hhhh" in lines[0] and "h" * 101 not in lines[0]
    assert lines[0].endswith(f"; {before['refused hosts'] + 1} since start)")
    assert "POST '/ppp" in lines[1] and "Origin 'https://ooo" in lines[1]
    assert "o" * 100 not in lines[1] and "p" * 100 not in lines[1]
    assert lines[2].startswith("web console: failed login from 198.18.0.66 (user 'uuu") and "u" * 100 not in lines[2]
    assert lines[3].startswith("web console: login from 198.18.0.66 not checked: too many failed logins")


def test_each_clients_failed_logins_are_logged_with_its_address(tmp_path, pwfile, caplog):
    """The failed logins' trail: one line per client at most every LOG_EVERY seconds, with its
    address (one shared key logged only the first client's in each 10 s); the clients it
    remembers for that are bounded."""
    console = make_console(tmp_path, pwfile, trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))
    console.throttle.base = 0.0                  # no waits: every attempt is checked
    sources = ("203.0.113.5", "198.51.100.9", "2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:3::1")

    async def body(client):
        for _ in range(3):
            for a in sources:
                assert (await login(client, "wrong", headers={"X-Forwarded-For": a})).status == 401

    with caplog.at_level(logging.WARNING, logger="lb.web"):
        run(console, body)
    told = [x.getMessage().split(" (")[0] for x in caplog.records]
    assert told == [f"web console: failed login from {a}" for a in sources if a != "2001:db8:1:2::2"], told
    trail = webapp.RateLimitedLog(logging.getLogger("lb.web.test"), 10.0, most=8, clock=lambda: 0.0)
    for i in range(100):
        assert trail.log(f"198.18.0.{i}", logging.DEBUG, "x")
    assert len(trail._last) == 8 and "198.18.0.99" in trail._last


# ---- sessions and the password file -----------------------------------------------------------------

def test_lb_passwd_ends_the_sessions_of_the_old_password(tmp_path, pwfile, monkeypatch, capsys):
    console = make_console(tmp_path, pwfile)
    now = [1000.0]
    console.clock = lambda: now[0]

    async def body(client):
        assert (await login(client)).status == 303
        r = await client.get("/password", allow_redirects=False)
        assert r.status == 200
        now[0] += 5
        monkeypatch.setattr(sys, "stdin", io.StringIO("a new password here\n"))
        assert lb_main(["passwd", "--file", str(pwfile), "--stdin", "--user", USER]) == 0
        now[0] += getattr(webapp, "PASSWORD_RECHECK", 1.0)
        r = await client.get("/password", allow_redirects=False)
        assert (r.status, r.headers.get("Location")) == (303, "/login")
        assert (await login(client, "a new password here")).status == 303
        assert (await client.get("/password", allow_redirects=False)).status == 200

    run(console, body)
    assert "password set for user operator" in capsys.readouterr().out
