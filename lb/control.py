"""The daemon's control socket: /run/lb/<instance>.sock.

Root only (mode 0600, in /run/lb, 0700).  When the config's [control] names groups, the daemon
also listens on /run/lb-control/<instance>.sock (the directory 0755, the socket 0666), where each
connection's peer credentials (SO_PEERCRED, SO_PEERGROUPS) decide what it may ask: root and the
daemon's own user everything, members of ``admin_group`` everything (the web console's user),
members of ``read_group`` the read requests (READ_COMMANDS), anyone else nothing (refused with a
reply that says why, and closed at once: a refused peer holds no slot).  The groups' gids are
looked up by name in a thread (at start, at each reload, and again GROUP_TTL seconds after the
last lookup, peers judged by the last one found meanwhile): an NSS lookup that hangs (LDAP,
sssd) must not stop the daemon's loop.  `lb web` connects there, and so does :func:`request`
(`lb status` ...) for a user who may not open the root socket.

Each socket serves at most MAX_CLIENTS connections at once, the shared one at most MAX_PER_UID of
them for one uid; a connection past that is answered "busy" and closed, so no local user can take
root's slots.  A client that has not taken its reply within WRITE_TIMEOUT is cut (it would hold its
slot for as long as it stays connected), and stop() cuts what is still open STOP_GRACE after the
sockets close (since Python 3.12 wait_closed() waits for every connection).  Refusals are counted
and logged at most once per REFUSED_LOG_EVERY seconds.

One JSON request per connection, one JSON reply, each a single line (a request of at most
MAX_REQUEST bytes and MAX_DEPTH levels of nesting; anything else is answered "bad request"; a
reply of at most MAX_REPLY bytes, a JSON object whose "ok" is true or false, else the client
raises BadReply):

    {"cmd": "status"}  -> {"ok": true, "status": {...}}        (what `lb status` prints)
    {"cmd": "reload"}  -> {"ok": true, "message": "..."} or
                          {"ok": false, "error": "...", "issues": [{"path", "line", "field", "message"}]}
                          ("keep_restart_only": true, a console edit's: what only a restart changes
                          keeps its running value, the rest of the file applies: Engine.reload_config)
    {"cmd": "weight", "service": "web", "server": "rs1", "weight": 0}
                       -> {"ok": true, "message": "..."} once the table is applied, or
                          {"ok": false, "error": "..."} (unknown service or server, bad weight)
    {"cmd": "table"}   -> {"ok": true, "services": [...]}  the data plane's table: connection
                          counts and rates per service and real server (what `lb list --rate` reads)
    {"cmd": "web"}     -> {"ok": true, "instance": ..., "web": {...}}  the [web] settings `lb web` runs with
    {"cmd": "config"}  -> {"ok": true, "config": {path, format, version, serial_no, identity, ...},
                           "document": {...}, "text": "..."}  the file, for the console's forms
    {"cmd": "config-put", "document": {...}, "version": "<the version it was edited from>"}
                       -> {"ok": true, "message", "version", "serial_no"} once written and reloaded, or
                          {"ok": false, "error", "issues": [...], "conflict": bool}: nothing changed
                          (lb.confedit has the rules)

    {"cmd": "zero", "service": ["tcp", "198.18.0.10", 80] | ["fwmark", 21] | ["fwmark", 21, 6] | null}
                       -> {"ok": true, "message": "..."}: ipvsadm -Z (`lb zero`)

"weight" is the operator's override of one real server's weight (`lb weight`, `lb quiesce`,
`lb activate`): service by name (or VIP:PORT), server by name, ADDR or ADDR:PORT, weight
0..65535 (0 quiesces: open connections go on, no new ones) or null to clear it.  It lives in
the daemon: it wins over the configured and the load monitor's weight, survives reloads for
real servers the new file still has, and never brings back a server its health checks took out.

The server runs on the engine's asyncio loop (lb.engine.Engine.run); :func:`request` is the
blocking client `lb status`, `lb reload` and `lb weight` use.
"""
from __future__ import annotations

import asyncio
import errno
import grp
import json
import logging
import os
import socket
import struct
import threading
import time

from lb import files
from lb.tasks import RateLimitedLog, Slots

log = logging.getLogger("lb.control")

RUN_DIR = "/run/lb"
SHARED_DIR = "/run/lb-control"   # the sockets [control]'s groups reach (/run/lb stays root's)
MAX_REQUEST = 2 * 1024 * 1024   # a configuration document (the file is at most 1 MiB) and then some
MAX_DEPTH = 32                   # the deepest configuration document needs 6
MAX_CLIENTS = 32                 # connections served at once on each socket; more are answered "busy"
MAX_PER_UID = 8                  # ... of them from one uid on the shared socket
MAX_LOOKUP_WAITING = 256         # connections waiting for a lookup of [control]'s groups; more: "busy"
READ_TIMEOUT = 10.0              # seconds a served connection has to send its request line
WRITE_TIMEOUT = 60.0             # seconds a client has to take its reply (tens of MiB: a big status)
STOP_GRACE = 2.0                 # seconds stop() lets the replies under way go out, then cuts them
REFUSED_LOG_EVERY = 10.0         # a refused peer can connect in a loop: one line per this many seconds
READ_COMMANDS = frozenset({"status", "table", "web", "config"})
PEER_IS_ROOT = "_peer_is_root"   # set on each request by the server from the peer's credentials
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
CLIENT_TIMEOUT = 60.0        # a reload may compile nothing but can resolve many next hops
# the longest reply :func:`request` reads: the largest is "status", about 1.4 KiB per real server
# when every detail it carries is at its longest, and a configuration (at most 1 MiB) names at
# most some 50000 real servers (20 bytes each at the least): some 70 MiB, with room to spare
MAX_REPLY = 256 * 1024 * 1024
PROBE_TIMEOUT = 1.0          # seconds answering() waits for each socket to accept


class NotRunning(Exception):
    """No daemon answers on the instance's socket."""


class BadReply(ValueError):
    """The daemon's reply is not one: not JSON, not an object, cut short, too long, or without a
    field the caller needs.  The message names the instance and the socket."""

    def __init__(self, instance: str, path: str, why: str):
        self.instance, self.path, self.why = instance, path, why
        super().__init__(f"instance {instance!r}: bad reply from the daemon on {path}: {why}")


_group_log = RateLimitedLog(log, 60.0)   # asked at every connection: one line a minute per group


def socket_path(instance: str, run_dir: str = RUN_DIR) -> str:
    return os.path.join(run_dir, f"{instance}.sock")


def shared_socket_path(instance: str, shared_dir: str = SHARED_DIR) -> str:
    return os.path.join(shared_dir, f"{instance}.sock")


class BadRequest(ValueError):
    pass


def parse_request(line: bytes) -> dict:
    """One request line as a dict; BadRequest (never another exception) for anything else."""
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"longer than {MAX_REQUEST} bytes")
    try:
        req = json.loads(line)
    except RecursionError:
        raise BadRequest(f"nested more than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(str(e)) from None
    if not isinstance(req, dict):
        raise BadRequest("a request is a JSON object")
    if depth(req) > MAX_DEPTH:
        raise BadRequest(f"nested more than {MAX_DEPTH} levels")
    if not isinstance(req.get("cmd"), str):
        raise BadRequest('no "cmd" (a string)')
    return req


def depth(value) -> int:
    """How deeply lists and objects nest in ``value`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def peer_credentials(sock: socket.socket) -> tuple[int, int, set[int]]:
    """(pid, uid, every gid) of the process at the other end of a unix socket."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    groups = {gid}
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
    except OSError as e:
        # more than 256 groups (ERANGE: a user of a directory with hundreds of groups): Python's
        # getsockopt takes at most 1024 bytes, libc's as many as the kernel has (NGROUPS_MAX)
        raw = _peer_groups_libc(sock.fileno()) if e.errno == errno.ERANGE else b""
        # (else a kernel before 4.13: the groups it had when it connected are not kept)
    groups.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    return pid, uid, groups


def _peer_groups_libc(fd: int) -> bytes:
    """SO_PEERGROUPS through libc, with room for NGROUPS_MAX (65536) groups; b"" if that fails."""
    import ctypes

    size = ctypes.c_uint32(4 * 65536)
    buf = ctypes.create_string_buffer(size.value)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.getsockopt(fd, socket.SOL_SOCKET, SO_PEERGROUPS, buf, ctypes.byref(size)) != 0:
            return b""
    except (OSError, AttributeError):
        return b""
    return buf.raw[: size.value]


GROUP_TTL = 10.0    # seconds a [control] group's gid, looked up by name, is used before it is looked up again
_gids: dict[str, tuple[float, int | None]] = {}     # group name -> (time.monotonic() looked up, gid or None)


def group_gid(name: str) -> int | None:
    """The gid of group ``name`` (None: no such group), looked up at most once per GROUP_TTL
    (NSS: each getgrnam reads /etc/group, or asks LDAP or sssd)."""
    if _fresh(name):
        return _gids[name][1]
    now = time.monotonic()
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        gid = None
    _gids[name] = (now, gid)
    return gid


def _fresh(name: str) -> bool:
    """``name`` looked up within GROUP_TTL."""
    hit = _gids.get(name)
    return hit is not None and time.monotonic() - hit[0] < GROUP_TTL


def _group_names(settings) -> list[str]:
    return [n for n in (getattr(settings, "admin_group", None), getattr(settings, "read_group", None)) if n]


def access_level(uid: int, groups: set[int], settings, cached: bool = False) -> str | None:
    """"admin", "read" or None for a peer, by [control] (lb.config.model.Control).  cached: the
    groups' gids as last looked up, however long ago (the caller has them looked up again)."""
    if uid in (0, os.geteuid()):
        return "admin"
    for level, name in (("admin", getattr(settings, "admin_group", None)),
                        ("read", getattr(settings, "read_group", None))):
        if not name:
            continue
        gid = _gids[name][1] if cached and name in _gids else group_gid(name)
        if gid is None:
            _group_log.log((level, name), logging.WARNING,
                           "control socket: [control] %s_group %r is not a group on this host", level, name)
        elif gid in groups:
            return level
    return None


def _unlink_stale(path: str) -> None:
    """A socket file left by a crashed daemon; a live one means another daemon runs."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another lb daemon answers on this control socket")


def _in_thread(fn, *args) -> asyncio.Future:
    """fn(*args) in a daemon thread of its own: one that never returns (an NSS lookup hung on its
    directory server) holds up neither the loop nor the process's exit, as an executor's would."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def work() -> None:
        try:
            ok, value = True, fn(*args)
        except Exception as e:  # noqa: BLE001 - the awaiting coroutine gets it
            ok, value = False, e
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:     # the loop is closed: the daemon has stopped
            pass

    threading.Thread(target=work, name="lb-control-groups", daemon=True).start()
    return fut


class ControlServer:
    """Answers requests with ``handler(request dict) -> reply dict`` (a coroutine); ``access()``
    gives the [control] settings (lb.config.model.Control, or None: root only)."""

    def __init__(self, path: str, handler, access=None, shared_path: str | None = None):
        self.path = path
        self.shared_path = shared_path
        self.handler = handler
        self.access = access or (lambda: None)
        self.server: asyncio.base_events.Server | None = None
        self.shared: asyncio.base_events.Server | None = None
        # connections served, by socket (shared or not); on the shared one, by peer uid too
        self._slots = {False: Slots(MAX_CLIENTS), True: Slots(MAX_CLIENTS, MAX_PER_UID)}
        self.refused = 0                        # connections refused for their credentials
        self.busy = 0                           # connections answered "busy" (no slot)
        self._ratelog = RateLimitedLog(log, REFUSED_LOG_EVERY, most=256)   # (keys a client's request names)
        self._writers = {False: set(), True: set()}   # the connections being served, by socket
        self.unread = 0                         # replies cut: the client took none within WRITE_TIMEOUT
        self.failed = 0                         # requests whose handler raised (a bug)
        self._traced: set[tuple] = set()        # (command, error type) whose traceback is logged
        self._looking = 0                       # connections waiting for their peer's group lookup
        self._lookup: asyncio.Future | None = None   # the lookup of [control]'s groups under way

    def _look_up(self, names) -> None:
        """[control]'s groups ``names`` looked up again, once GROUP_TTL has passed, in a thread
        (NSS: with LDAP or sssd, a directory server that does not answer holds the call for its
        timeout): the peers are let in or refused by what the last lookup found meanwhile."""
        stale = [n for n in names if not _fresh(n)]
        if stale and (self._lookup is None or self._lookup.done()):
            self._lookup = _in_thread(lambda: [group_gid(n) for n in stale])
            self._lookup.add_done_callback(lambda f: f.cancelled() or f.exception())   # (its errors: none)

    async def start(self) -> None:
        files.ensure_private_dir(os.path.dirname(self.path))     # root's, 0700: no one plants a link
        self.server = await self._listen(self.path, 0o600, shared=False)
        log.info("control socket %s", self.path)
        await self.refresh()

    async def _listen(self, path: str, mode: int, shared: bool):
        _unlink_stale(path)
        old = os.umask(0o177)            # the socket is born 0600: no window with wider access
        try:
            server = await asyncio.start_unix_server(lambda r, w: self._serve(r, w, shared), path=path,
                                                     limit=MAX_REQUEST + 1)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        return server

    def grouped(self) -> bool:
        a = self.access()
        return a is not None and bool(a.admin_group or a.read_group)

    async def refresh(self) -> None:
        """The shared socket (0666, each peer's credentials decide) while [control] names groups."""
        if self.shared_path is None:
            return
        self._look_up(_group_names(self.access()))      # before the first peer comes
        if self.grouped() and self.shared is None:
            files.ensure_private_dir(os.path.dirname(self.shared_path), 0o755)   # root's, no link
            self.shared = await self._listen(self.shared_path, 0o666, shared=True)
            log.info("control socket for [control]'s groups: %s", self.shared_path)
        elif not self.grouped() and self.shared is not None:
            await self._close_shared()

    async def _close_shared(self) -> None:
        """The shared socket goes (a reload took [control]'s groups away): no new connection; those
        being served are answered (the request that made the reload is one of them: waiting for
        it here, as wait_closed() does since Python 3.12, would wait for ever)."""
        self.shared.close()
        self.shared = None
        try:
            os.unlink(self.shared_path)
        except FileNotFoundError:
            pass

    async def stop(self) -> None:
        """Both sockets closed, and the connections they serve: those still open STOP_GRACE
        later (a client that never reads its reply, one that sends nothing) are cut.  A stop
        never waits on a client (since Python 3.12, wait_closed() waits for every connection)."""
        server = self.server
        if self.shared is not None:
            await self._close_shared()
        if server is not None:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE
        while (self._writers[False] or self._writers[True]) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for w in [*self._writers[False], *self._writers[True]]:
            w.transport.abort()
        if server is not None:
            await server.wait_closed()
            self.server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shared: bool) -> None:
        # the credentials first: a peer refused, or past its slots, is answered and closed at once
        try:
            pid, uid, groups = peer_credentials(writer.get_extra_info("socket"))
        except (OSError, AttributeError, struct.error) as e:
            self._close(writer, {"ok": False, "error": f"refused: no peer credentials ({e})"})
            return
        settings = self.access()
        names = _group_names(settings) if uid not in (0, os.geteuid()) else []
        self._look_up(names)
        if not all(n in _gids for n in names):
            # a group never looked up yet (the first peer since [control] named it): its lookup
            # is waited for -- in its thread: the daemon's loop goes on however long it takes
            if self._looking >= MAX_LOOKUP_WAITING:     # held up by it: no queue without bound
                self.busy += 1
                self._close(writer, {"ok": False, "error": "busy: the daemon is looking up [control]'s groups: "
                                                           "try again"})
                return
            self._looking += 1
            try:
                await asyncio.shield(self._lookup)
            except Exception:       # noqa: BLE001 - access_level looks up (and says) what is missing
                pass
            finally:
                self._looking -= 1
        level = access_level(uid, groups, settings, cached=True)
        if level is None:
            self.refused += 1
            self._ratelog.log("refused", logging.WARNING, "control socket: refused uid %d (pid %d): neither root nor "
                              "in [control]'s groups (%d refused since start)", uid, pid, self.refused)
            self._close(writer, {"ok": False, "error": f"refused: uid {uid} may not use this control socket (root, "
                                                       f"or a member of [control] admin_group or read_group)",
                                 "refused": True})
            return
        slots = self._slots[shared]
        if slots.take(uid) is not None:
            self.busy += 1
            self._ratelog.log(("busy", shared), logging.WARNING, "control socket %s: uid %d (pid %d) answered busy: "
                              "%d connections served (%d answered busy since start)",
                              self.shared_path if shared else self.path, uid, pid, slots.open, self.busy)
            self._close(writer, {"ok": False, "error": f"busy: {slots.open} requests are being served "
                                                       f"(uid {uid}: {slots.held(uid)}): try again"})
            return
        self._writers[shared].add(writer)
        try:
            reply = await self._answer(reader, uid, level)
            writer.write(json.dumps(reply).encode() + b"\n")
            # a client that never reads its reply would hold its slot, and the reply's memory, for
            # as long as it is connected: WRITE_TIMEOUT, then the connection is cut
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except asyncio.TimeoutError:
            self.unread += 1
            self._ratelog.log(("unread", shared), logging.WARNING, "control socket %s: uid %d (pid %d) took "
                              "no reply within %.0f s: connection cut (%d since start)",
                              self.shared_path if shared else self.path, uid, pid, WRITE_TIMEOUT, self.unread)
            writer.transport.abort()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers[shared].discard(writer)
            slots.give(uid)
            writer.close()

    @staticmethod
    def _close(writer: asyncio.StreamWriter, reply: dict) -> None:
        """One reply without reading the request (the client reads it even if its write failed)."""
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
        except (ConnectionError, RuntimeError):
            pass
        writer.close()

    async def _answer(self, reader: asyncio.StreamReader, uid: int, level: str) -> dict:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            req = parse_request(line)
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"bad request: nothing received within {READ_TIMEOUT:.0f} s"}
        except (BadRequest, ValueError, asyncio.LimitOverrunError) as e:  # readline: ValueError past the limit
            return {"ok": False, "error": f"bad request: {e}"}
        if level != "admin" and req["cmd"] not in READ_COMMANDS:
            return {"ok": False, "error": f"refused: {req['cmd']!r} needs [control] admin_group (uid {uid} may "
                                          f"read only: {', '.join(sorted(READ_COMMANDS))})", "refused": True}
        # whether the peer is root (or the daemon's user): set here, whatever the request said,
        # for what only root may change (lb.confedit: programs the daemon runs, [control])
        req[PEER_IS_ROOT] = uid in (0, os.geteuid())
        try:
            return await self.handler(req)
        except Exception as e:  # the daemon goes on; the caller learns why
            # a bug every request hits (the console asks for the status every few seconds): its
            # traceback once, then a line at most every REFUSED_LOG_EVERY seconds with the count
            self.failed += 1
            what = (str(req.get("cmd"))[:32], type(e).__name__)
            first = what not in self._traced and len(self._traced) < 64
            if first:
                self._traced.add(what)
            self._ratelog.log(("failed", *what), logging.ERROR, "control request %r failed (%d so far): %s: %s",
                              req.get("cmd"), self.failed, type(e).__name__, e, exc_info=first)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}


async def arequest(path: str, cmd: str, timeout: float = CLIENT_TIMEOUT, **args) -> dict:
    """The asyncio twin of :func:`request` on the socket at ``path`` (the web console's), its reply
    checked as request's (BadReply).  A line of up to MAX_REPLY bytes: a status of a big table
    (1000 services x 64 real servers) is tens of MiB, and a 4 MiB limit left the console without
    its status page."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=MAX_REPLY), timeout)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise NotRunning(f"the daemon is not running (nothing answers on {path}: {e.strerror})") from None
    try:
        writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        try:
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass                # the daemon answered at once (refused, busy): its reply says why
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    if not line:
        raise NotRunning(f"the daemon closed {path} without a reply")
    return parse_reply(line, os.path.basename(path).removesuffix(".sock"), path)


class Reply(dict):
    """A reply (a dict), with the instance asked (.instance) and the socket it came on (.path)."""

    instance = ""
    path = ""


def request(instance: str, cmd: str, timeout: float = CLIENT_TIMEOUT, run_dir: str = RUN_DIR,
            shared_dir: str = SHARED_DIR, **args) -> Reply:
    """Send one request to a running daemon; raises NotRunning when nothing answers.  A user who may
    not open the root socket asks on the shared one, where [control]'s groups decide; PermissionError
    when there is none (no [control] groups).

    The reply is checked here, for every caller: a JSON object of at most MAX_REPLY bytes with
    "ok" true or false, else BadReply; :func:`checked` is the caller's look at the fields it
    needs."""
    path = socket_path(instance, run_dir)
    try:
        return _request(path, instance, cmd, timeout, args)
    except PermissionError:
        try:
            return _request(shared_socket_path(instance, shared_dir), instance, cmd, timeout, args)
        except (NotRunning, PermissionError):
            pass
        raise


def _request(path: str, instance: str, cmd: str, timeout: float, args: dict) -> Reply:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NotRunning(f"instance {instance!r} is not running (nothing answers on {path}: "
                             f"{e.strerror})") from None
        try:
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                # the daemon answered at once (refused, busy): its reply says why
        buf = bytearray()
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REPLY:
                raise BadReply(instance, path, f"longer than {_size(MAX_REPLY)}")
            if chunk.endswith(b"\n"):
                break
    finally:
        s.close()
    if not buf:
        raise NotRunning(f"instance {instance!r}: the daemon closed {path} without a reply")
    return parse_reply(bytes(buf), instance, path)


def parse_reply(data: bytes, instance: str, path: str) -> Reply:
    """A reply line as a dict (see :func:`request`); BadReply for anything else."""
    if not data.endswith(b"\n"):
        raise BadReply(instance, path, f"cut short (the connection closed after {len(data)} bytes, "
                                       f"before the end of the reply)")
    try:
        reply = json.loads(data)
    except RecursionError:
        raise BadReply(instance, path, "nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadReply(instance, path, f"not JSON ({e})") from None
    if not isinstance(reply, dict):
        raise BadReply(instance, path, f"a JSON {_json_type(reply)}, not an object")
    if not isinstance(reply.get("ok"), bool):
        raise BadReply(instance, path, '"ok" is not true or false' if "ok" in reply else 'no "ok" in it')
    reply = Reply(reply)
    reply.instance, reply.path = instance, path
    return reply


def checked(reply: dict, fn):
    """``fn(reply)``: what a caller makes of the fields of a reply it needs (`lb status`'s
    lines); a KeyError, TypeError, ValueError, AttributeError or IndexError out of it -- the
    reply lacks a field, or holds another type -- is a BadReply naming the reply's instance and
    socket."""
    instance, path = getattr(reply, "instance", "") or "?", getattr(reply, "path", "") or "its control socket"
    try:
        return fn(reply)
    except KeyError as e:
        raise BadReply(instance, path, f"no {e.args[0]!r} in it") from None
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise BadReply(instance, path, f"unexpected content ({e})") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"


def _json_type(value) -> str:
    return {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
            list: "array"}.get(type(value), type(value).__name__)


def answering(shared_dir: str | None = None) -> list[str]:
    """The instances whose daemon accepts a connection on its shared socket (SHARED_DIR: the
    daemons whose [control] names groups), for a user who may not read /run/lb.  A lone socket
    is not probed: the request itself says whether its daemon runs and takes this user, and a
    probe of a daemon whose groups this user is not in costs it a refusal and a warning in its
    log.  Several are each connected to (which does cost that, once per command)."""
    from lb.config.toml import INSTANCE_RE

    shared_dir = SHARED_DIR if shared_dir is None else shared_dir
    try:
        names = os.listdir(shared_dir)
    except OSError:
        return []
    insts = []
    for name in sorted(names):
        inst, dot, ext = name.rpartition(".")
        if dot and ext == "sock" and INSTANCE_RE.fullmatch(inst):
            insts.append((inst, name))
    if len(insts) == 1:
        return [insts[0][0]]
    out = []
    for inst, name in insts:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(PROBE_TIMEOUT)
        try:
            s.connect(os.path.join(shared_dir, name))
        except OSError:
            continue            # a crashed daemon's socket file, or not ours to open
        finally:
            s.close()
        out.append(inst)
    return out
