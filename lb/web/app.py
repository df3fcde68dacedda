"""The web console (`lb web`): the Piranha Configuration Tool's screens over lb's model.

It is its own unprivileged process; everything it knows and changes goes through the daemon's
control socket (``daemon(cmd, **args)``, lb.control): "status" and "table" for CONTROL/
MONITORING, "config" for the forms, "config-put" for every save (validated, written in the
file's own format with the previous version kept, reloaded, all or nothing: lb.confedit),
"weight" and "reload".  It never touches BPF maps, addresses or the configuration file itself.

Pages (all behind a login; without a session a page redirects to /login and /api/ answers 401):

    /status       CONTROL/MONITORING: role, peer, configuration versions, the table with each real
                  server's weight, health and last check, connections and rates; updates itself
                  every 10 s (choose 5/10/30/60 s or off; "Update now"), Quiesce/Activate overrides
    /global       GLOBAL SETTINGS ([global], [timeouts], [tables], [web], [control])
    /redundancy   REDUNDANCY ([ha]) and the peer's state
    /virtual      VIRTUAL SERVERS: add, edit, delete, activate, deactivate; each with its
                  VIRTUAL SERVER (/virtual/edit), REAL SERVER (/virtual/real) and MONITORING
                  SCRIPTS (/virtual/monitor) subsections
    /config       the effective configuration file, its version and the peer's
    /password     change the user name and password

Every edit form carries the file version it was built from; a save made on another version (a
second browser, a hand edit) is refused and shown again with the user's input, never silently
applied over the other change.  Errors are the validator's (`lb check`'s), each shown next to
its field.

Hardening: a Host allow-list (the listen address, localhost and [web] allowed_hosts: no DNS
rebinding), X-Forwarded-For/-Proto/-Host believed only from [web] trusted_proxies, every POST
with the session's CSRF token and, when the browser sends one, an Origin of the console's own
(forwarded) scheme and host; login attempts throttled per client (an address; an IPv6 /64: each
failure doubles that client's wait, up to a minute, never another's; a bounded number of password
checks at once, the others waiting their turn, fewer failures first), never with a global lock; sessions end
``session_lifetime`` after login however busy (and after an hour idle), and when the password
file's line changes (`lb passwd`); the cookie is Secure whenever the browser reached the console
over HTTPS; bad parameters are answered 400, and a body that does not decode (then the connection
is closed); a request body not received within BODY_TIMEOUT seconds 408, and one whose client
left is not answered (counted in ``counts``).  What anyone who
reaches the port can cause at will (a foreign Host, a cross-origin POST, failed or throttled
logins) is counted in ``counts`` and logged at most once per LOG_EVERY seconds (failed logins
once per LOG_EVERY per client, with its address), header values cut at 100
characters: never a line per request.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import errno
import hashlib
import heapq
import hmac
import html
import ipaddress
import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from lb import weight as lbweight
from lb.config.model import endpoint_text as _endpoint
from lb.config.store import utf8_text
from lb.tasks import RateLimitedLog
from lb.web import assets, forms, password
from lb.web.clients import client_key, plain_address

log = logging.getLogger("lb.web")


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a line over 8 KiB, a bad header: anyone who reaches
    the port can send one) at ERROR with its traceback, once per request.  On "aiohttp.server" this
    filter makes that a counted warning of one line, at most one per 10 s (the client got its 400)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.limit = RateLimitedLog(log, 10.0)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, web.RequestPayloadError):
            # a body that does not decode (its Content-Encoding), which aiohttp reads again after
            # the answer and logs as "Unhandled exception": counted as the console read it (_form)
            return False
        if not isinstance(exc, HttpProcessingError):
            return True
        self.note(record.args[0] if isinstance(record.args, tuple) and record.args else "?", str(exc))
        return False

    def note(self, peer, what: str) -> None:
        """Count one malformed request from ``peer``; a line at most every 10 s."""
        self.count += 1
        what = " ".join(what.split())
        self.limit.log("malformed", logging.WARNING, "web: refused a malformed HTTP request from %s: %s",
                       peer, what if len(what) <= 200 else what[:200] + "...")


def filter_malformed_requests() -> MalformedRequests:
    """The process's one MalformedRequests on aiohttp's server logger (added at the first call)"""
    server_log = logging.getLogger("aiohttp.server")
    for f in server_log.filters:
        if isinstance(f, MalformedRequests):
            return f
    f = MalformedRequests()
    server_log.addFilter(f)
    return f


COOKIE = "lb_session"       # + "_" + the instance: a browser sends a host's cookies to every port of it
IDLE_TIMEOUT = 3600.0
MAX_SESSIONS = 32
REFRESH_CHOICES = (0, 5, 10, 30, 60)
DEFAULT_REFRESH = 10
FAIL_DELAY = 1.0          # a client's first failed login: this long before its next try
FAIL_DELAY_MAX = 60.0
MAX_LOGIN_CHECKS = 4      # password checks (scrypt) running at once; more wait their turn ...
CHECK_WAIT = 20.0         # ... at most this long (the connection limits of lb.web.main bound the queue)
THROTTLE_CLIENTS = 16384  # clients remembered for throttling (fewest failures forgotten first)
BODY_TIMEOUT = 15.0       # seconds to receive a request's body (the headers: lb.web.main.HEADER_TIMEOUT)
PASSWORD_RECHECK = 1.0    # seconds between reads of the password file for the sessions' sake

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",   # no-referrer would make browsers send "Origin: null" with our own POSTs
    "Cache-Control": "no-store",
}
# over HTTPS (directly, or through a trusted TLS proxy) with [web] hsts: the browser asks no more by
# plain HTTP, where a man in the middle could keep it from ever reaching the HTTPS console.  Opt-in:
# browsers apply it to the whole host name, every port (RFC 6797 8.3), so they would also take the
# plain-HTTP metrics endpoint (or another instance's console) on the same name to HTTPS for a year.
HSTS = {"Strict-Transport-Security": "max-age=31536000"}

SESSION = web.RequestKey("session", object) if hasattr(web, "RequestKey") else "session"
CLIENT = web.RequestKey("client", object) if hasattr(web, "RequestKey") else "client"

NAV = (("/status", "Control/Monitoring"), ("/global", "Global settings"), ("/redundancy", "Redundancy"),
       ("/virtual", "Virtual servers"), ("/config", "Config file"), ("/password", "Password"))


# "body timeouts", "clients left" (mid-request); what anyone who reaches the port can make happen
# at will, each logged at most once per LOG_EVERY (Console._log): "refused hosts", "cross-origin
# posts", "failed logins", "logins not checked" (throttled or busy), "unreadable password file"
counts: collections.Counter = collections.Counter()
LOG_EVERY = 10.0
FAILED_LOG_CLIENTS = 4096      # clients whose failed logins the trail remembers (their lines rate-limited)
_slow_log = RateLimitedLog(log, 10.0)


def h(value) -> str:
    """Escaped text of any value (None as "-")."""
    return "-" if value is None else html.escape(str(value), quote=True)


class BadRequest(web.HTTPBadRequest):
    def __init__(self, why: str):
        super().__init__(text=f"bad request: {why}\n")


@dataclass
class Settings:
    """What the console runs with (the daemon's [web], from its "web" reply)."""

    instance: str = "default"
    listen_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple = ()
    session_lifetime: float = 8 * 3600.0
    tls: bool = False
    hsts: bool = False          # Strict-Transport-Security over HTTPS ([web] hsts)

    @classmethod
    def from_reply(cls, reply: dict) -> "Settings":
        w = reply["web"]
        return cls(instance=reply.get("instance", "default"), listen_host=w["address"],
                   allowed_hosts=tuple(w.get("allowed_hosts") or ()),
                   trusted_proxies=tuple(ipaddress.ip_network(p, strict=False) for p in w.get("trusted_proxies") or ()),
                   session_lifetime=float(w.get("session_lifetime") or 8 * 3600.0), tls=bool(w.get("tls_cert")),
                   hsts=bool(w.get("hsts")))

    def trusts(self, address) -> bool:
        """Whether ``address`` (text or an address) is one of [web] trusted_proxies."""
        try:
            ip = address if not isinstance(address, str) else ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped             # an IPv4 proxy's connection to [::]
        return any(ip in n for n in self.trusted_proxies)

    def host_allowed(self, host: str) -> bool:
        """Whether a request's Host (or X-Forwarded-Host) is the console's: localhost, the listen
        address, [web] allowed_hosts; an IP literal compared as an address (with or without its
        brackets, any spelling: "[2001:2:0:0::7]" is 2001:2::7), a name without regard to case."""
        name = _host_key(host)
        if name in ("localhost", ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
                    _host_key(self.listen_host)):
            return True
        if any(name == _host_key(allowed, port=False) for allowed in self.allowed_hosts):
            return True
        try:   # listening on every address: any literal address of this host reaches it by IP, not name
            return ipaddress.ip_address(self.listen_host).is_unspecified and not isinstance(name, str)
        except ValueError:
            return False


def _host_key(host: str, port: bool = True) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A Host as compared: an IP literal as its address, a name in lower case without its final
    dot; without the port (``port``: a request's Host, which may have one; else an allowed_hosts
    entry, whose IPv6 literal may come with or without brackets)."""
    name = host.strip().lower()
    if not port:
        name = name.strip("[]")
    elif name.startswith("["):
        inside, closed, rest = name[1:].partition("]")
        if not closed or rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return name             # "[2001:2::6", "[x]y": nothing's
        name = inside
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return name


@dataclass
class Client:
    """Who asks, after [web] trusted_proxies: address, scheme and host as the browser used them."""

    address: str
    scheme: str
    host: str


@dataclass
class Session:
    token: str
    csrf: str
    user: str
    remote: str
    created: float
    last: float
    flash: dict | None = field(default=None)
    password: str = ""          # digest of the password line it logged in with


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


class Throttle:
    """Per-client login throttling (a client: ``client_key``, an address or an IPv6 /64): each
    failure doubles the client's wait (FAIL_DELAY up to FAIL_DELAY_MAX); one attempt per client at
    a time; at most MAX_LOGIN_CHECKS password checks at once, the other clients waiting their turn
    (fewer failures first, then first come) at most CHECK_WAIT seconds.  A busy attacker slows
    only itself: a client without failures waits behind the checks running, never behind an
    attacker's queue, and never waits for another client's failures (nor its IPv6 /48's: the
    bound on checks at once bounds what a site's many /64s can guess)."""

    def __init__(self, base: float = FAIL_DELAY, cap: float = FAIL_DELAY_MAX, checks: int = MAX_LOGIN_CHECKS,
                 wait: float = CHECK_WAIT):
        self.base, self.cap, self.checks, self.wait = base, cap, checks, wait
        self.clients: dict[str, tuple[int, float]] = {}   # client -> (failures, end of its wait)
        self.inflight: set[str] = set()                    # clients with an attempt being checked
        self.running = 0                                   # checks running
        self.queue: list = []                              # heap of (failures, arrival, future) waiting
        self._arrivals = itertools.count()

    def refuse(self, client: str, now: float) -> str | None:
        if client in self.inflight:
            return "a login from your address is being checked: wait for it"
        until = self.clients.get(client, (0, 0.0))[1]
        if now < until:
            return f"too many failed logins from your address: try again in {until - now:.0f} s"
        return None

    async def take(self, client: str) -> bool:
        """Wait for a check slot (``end`` gives it back); False when none came within ``wait``."""
        self.inflight.add(client)
        if self.running < self.checks:      # then no one waits but clients that left
            self.queue.clear()
            self.running += 1
            return True
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self.queue, (self.clients.get(client, (0, 0.0))[0], next(self._arrivals), turn))
        try:
            await asyncio.wait((turn,), timeout=self.wait)
        except BaseException:
            self._leave(client, turn)
            raise
        if turn.done():
            return True
        self._leave(client, turn)
        return False

    def _leave(self, client: str, turn: asyncio.Future) -> None:
        self.inflight.discard(client)
        if turn.done() and not turn.cancelled():
            self._release()                 # given the slot as it left: the next one's
        turn.cancel()

    def _release(self) -> None:
        while self.queue:
            turn = heapq.heappop(self.queue)[2]
            if not turn.done():
                turn.set_result(None)       # the slot passes on
                return
        self.running -= 1

    def end(self, client: str, ok: bool, now: float) -> None:
        self.inflight.discard(client)
        self._release()
        if ok:
            self.clients.pop(client, None)
            return
        fails = self.clients.get(client, (0, 0.0))[0] + 1
        self.clients[client] = (fails, now + min(self.base * 2 ** (fails - 1), self.cap))
        while len(self.clients) > THROTTLE_CLIENTS:
            # forget the one with the fewest failures, the soonest free: never a long wait for
            # the sake of fresh addresses (they would clear their owner's wait)
            del self.clients[min((c for c in self.clients if c != client), key=self.clients.__getitem__)]


class Console:
    """The application's state: sessions, throttling, the password file, the daemon it asks."""

    def __init__(self, daemon, password_file: str | os.PathLike, settings: Settings | None = None, *,
                 fail_delay: float = FAIL_DELAY, idle_timeout: float = IDLE_TIMEOUT, clock=time.monotonic):
        self.daemon = daemon
        self.password_file = Path(password_file)
        self.settings = settings or Settings()
        # one cookie per instance: two instances' consoles on one host (ports 3636, 3637) are one
        # cookie host to a browser, and a login to one replaced the other's session cookie
        self.cookie = f"{COOKIE}_{self.settings.instance}"
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.throttle = Throttle(base=fail_delay)
        # lb.web.main's Connections.admit(transport, has a session): whether a request is served
        # (one on a reserved slot needs a session); None: every one (no connection limits here)
        self.admit = None
        self._log = RateLimitedLog(log, LOG_EVERY)
        # the failed logins' trail: each client's lines with its address; the clients remembered bounded
        self._failed_log = RateLimitedLog(log, LOG_EVERY, most=FAILED_LOG_CLIENTS)
        self._password: tuple[float, str | None] | None = None   # (read at, digest of the line)

    # ---- the application ----
    def app(self) -> web.Application:
        filter_malformed_requests()
        app = web.Application(middlewares=[self._guard], client_max_size=256 * 1024)
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/static/console.css", self.css)
        r.add_get("/static/console.js", self.js)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/status", self.status_page)
        r.add_post("/reload", self.reload)
        r.add_post("/weight", self.weight)
        r.add_get("/global", self.global_page)
        r.add_post("/global", self.global_save)
        r.add_get("/redundancy", self.redundancy_page)
        r.add_post("/redundancy", self.redundancy_save)
        r.add_get("/virtual", self.virtual_page)
        r.add_post("/virtual/action", self.virtual_action)
        r.add_get("/virtual/edit", self.virtual_edit)
        r.add_post("/virtual/edit", self.virtual_save)
        r.add_get("/virtual/real", self.real_page)
        r.add_post("/virtual/real/action", self.real_action)
        r.add_get("/virtual/real/edit", self.real_edit)
        r.add_post("/virtual/real/edit", self.real_save)
        r.add_get("/virtual/monitor", self.monitor_edit)
        r.add_post("/virtual/monitor", self.monitor_save)
        r.add_get("/config", self.config_page)
        r.add_get("/password", self.password_page)
        r.add_post("/password", self.password_save)
        r.add_get("/api/status", self.api_status)
        return app

    # ---- who asks ----
    def _client(self, request: web.Request) -> Client:
        remote = plain_address(request.remote or "?")
        scheme, host = request.scheme, request.host
        if self.settings.trusts(remote):
            chain = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
            # the nearest address no trusted proxy added is the client's
            for addr in reversed(chain):
                try:
                    ip = ipaddress.ip_address(addr)
                except ValueError:
                    break
                remote = addr
                if not self.settings.trusts(ip):
                    break
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
            fhost = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
            if fhost:
                host = fhost
        return Client(remote, scheme, host)

    # ---- sessions ----
    def _password_digest(self) -> str | None:
        """The digest of the password file's line (None: unreadable), read at most once per
        PASSWORD_RECHECK: a new password (`lb passwd`) ends the sessions of the old one."""
        now = self.clock()
        if self._password is None or not 0 <= now - self._password[0] < PASSWORD_RECHECK:
            try:
                self._password = (now, _digest(password.read(self.password_file)))
            except password.PasswordFileError:
                self._password = (now, None)
        return self._password[1]

    def _session(self, request: web.Request) -> Session | None:
        now = self.clock()
        current = self._password_digest() if self.sessions else None
        for token, s in list(self.sessions.items()):
            if now - s.created > self.settings.session_lifetime or now - s.last > self.idle_timeout:
                why = "its lifetime ended" if now - s.created > self.settings.session_lifetime else "idle"
            elif s.password != current:
                why = "the password file changed"
            else:
                continue
            log.info("web console: session of %s from %s ended (%s)", s.user, s.remote, why)
            del self.sessions[token]
        token = request.cookies.get(self.cookie, "")
        for known, sess in self.sessions.items():
            if hmac.compare_digest(known.encode(), token.encode("utf-8", "replace")):
                return sess
        return None

    def _new_session(self, user: str, remote: str, line: str) -> Session:
        if len(self.sessions) >= MAX_SESSIONS:
            oldest = min(self.sessions.values(), key=lambda s: s.last)
            del self.sessions[oldest.token]
        now = self.clock()
        sess = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, remote, now, now,
                       password=_digest(line))
        self.sessions[sess.token] = sess
        self._password = (now, sess.password)      # the line just read is the file's
        return sess

    async def _verify(self, address: str, given: str, user: str) -> tuple[str | None, str | None, int]:
        """(the password line, None, 200) when ``user`` and ``given`` match it; else (None, why not,
        HTTP status): throttled per client, the check queued for a slot.  PasswordFileError."""
        client = client_key(address)
        why = self.throttle.refuse(client, self.clock())
        if why:
            return None, why, 429
        if not await self.throttle.take(client):
            return None, "the console is busy checking other logins: try again in a moment", 503
        ok = False
        try:
            loop = asyncio.get_running_loop()
            line = await loop.run_in_executor(None, password.read, self.password_file)
            ok = await loop.run_in_executor(None, password.verify, given, line, user)
        finally:
            self.throttle.end(client, ok, self.clock())
        return (line, None, 200) if ok else (None, "Wrong user name or password.", 401)

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        try:
            resp = await self._guarded(request, handler)
        except web.HTTPException as e:   # 400, 404, 405 ... as plain responses with our headers
            keep = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
            resp = web.Response(status=e.status, text=e.text, headers=keep)
            if e.status == 408 or isinstance(e, UnreadableBody):
                resp.force_close()      # the rest of the body is not read
        client = request.get(CLIENT)
        https = (client.scheme if client is not None else request.scheme) == "https"
        return _finish(resp, https and self.settings.hsts)

    async def _guarded(self, request: web.Request, handler):
        client = self._client(request)
        request[CLIENT] = client
        sess = self._session(request)
        request[SESSION] = sess
        if self.admit is not None and not self.admit(request.transport, sess is not None):
            resp = web.Response(status=503, headers={"Retry-After": "10"},
                                text="the console is busy: only a logged-in browser is served now\n")
            resp.force_close()
            return resp
        if not self.settings.host_allowed(client.host):
            counts["refused hosts"] += 1
            self._log.log("host", logging.WARNING, "web console: refused Host %.100r from %s (not the listen "
                          "address, localhost or [web] allowed_hosts; %d since start)", client.host, client.address,
                          counts["refused hosts"])
            return web.Response(status=421, text="this console does not answer to that host name\n")
        if request.method not in ("GET", "HEAD", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        if request.path.startswith("/static/"):
            return await handler(request)
        if request.method == "POST" and not _same_origin(request, client):
            counts["cross-origin posts"] += 1
            self._log.log("origin", logging.WARNING, "web console: refused a cross-origin POST %.100r from %s "
                          "(Origin %.100r; %d since start)", request.path, client.address,
                          request.headers.get("Origin"), counts["cross-origin posts"])
            return web.Response(status=403, text="cross-origin request refused\n")
        if request.path != "/login":
            if sess is None:
                if request.path.startswith("/api/") or request.query.get("part"):
                    return web.json_response({"error": "login required"}, status=401)
                return _see_other("/login")
            sess.last = self.clock()
            if request.method == "POST":
                form = await _form(request)
                sent = str(form.get("csrf") or request.headers.get("X-CSRF-Token", ""))
                if not hmac.compare_digest(sent.encode("utf-8", "replace"), sess.csrf.encode()):
                    log.warning("web console: refused POST %s from %s without a valid CSRF token",
                                request.path, client.address)
                    return web.Response(status=403, text="missing or wrong CSRF token: reload the page\n")
        return await handler(request)

    async def root(self, request: web.Request) -> web.StreamResponse:
        return _see_other("/status")

    async def css(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=assets.CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def js(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=assets.JS, content_type="application/javascript",
                            headers={"Cache-Control": "max-age=300"})

    # ---- login ----
    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if request[SESSION] is not None:
            return _see_other("/status")
        return self._login_page()

    def _login_page(self, error: str | None = None, status: int = 200, user: str = "") -> web.Response:
        err = f'<p class="err">{h(error)}</p>' if error else ""
        body = (f'<main><div class="card" style="max-width:26em;margin:3em auto"><h1>lb web console</h1>'
                f'<p class="note">instance {h(self.settings.instance)}</p>{err}'
                f'<form method="post" action="/login" class="edit">'
                f'<div class="row"><label for="user">User name</label><input type="text" id="user" name="user" '
                f'value="{h(user) if user else ""}" autocomplete="username" required autofocus></div>'
                f'<div class="row"><label for="password">Password</label><input type="password" id="password" '
                f'name="password" autocomplete="current-password" required></div>'
                f'<div class="actions"><button type="submit" class="primary">Log in</button></div></form></div></main>')
        return _page("Log in", body, status=status)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        user = str(form.get("user", ""))[:100]
        given = str(form.get("password", ""))
        client = request[CLIENT]
        try:
            line, why, status = await self._verify(client.address, given, user)
        except password.PasswordFileError as e:
            counts["unreadable password file"] += 1
            self._log.log("pwfile", logging.ERROR, "web console: login from %s refused: %s (%d since start)",
                          client.address, e, counts["unreadable password file"])
            return self._login_page("The password file cannot be read: see the console's log.", 503, user)
        if status == 401:
            counts["failed logins"] += 1
            self._failed_log.log(client_key(client.address), logging.WARNING, "web console: failed login "
                                 "from %s (user %.100r; %d since start)", client.address, user, counts["failed logins"])
        elif why:
            counts["logins not checked"] += 1
            self._log.log("unchecked", logging.WARNING, "web console: login from %s not checked: %s (%d since "
                          "start)", client.address, why, counts["logins not checked"])
        if why:
            return self._login_page(why, status, user)
        old = request[SESSION]
        if old is not None:
            self.sessions.pop(old.token, None)
        sess = self._new_session(user, client.address, line)
        log.info("web console: login of %s from %s", user, client.address)
        resp = _see_other("/status")
        resp.set_cookie(self.cookie, sess.token, httponly=True, samesite="Strict", path="/",
                        secure=client.scheme == "https")
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        sess = request[SESSION]
        self.sessions.pop(sess.token, None)
        log.info("web console: logout of %s from %s", sess.user, request[CLIENT].address)
        resp = _see_other("/login")
        resp.del_cookie(self.cookie, path="/")
        return resp

    # ---- talking to the daemon ----
    async def _ask(self, cmd: str, **args) -> dict:
        try:
            reply = await self.daemon(cmd, **args)
        except Exception as e:   # the console goes on and says why
            log.warning("web console: control request %s failed: %s", cmd, e)
            return {"ok": False, "error": f"the daemon did not answer: {e}"}
        return reply if isinstance(reply, dict) else {"ok": False, "error": "the daemon's reply is not an object"}

    def _who(self, request: web.Request) -> str:
        return f"web console user {request[SESSION].user} from {request[CLIENT].address}"

    # ---- actions on the running daemon ----
    async def reload(self, request: web.Request) -> web.StreamResponse:
        log.info("web console: reload requested by %s", self._who(request))
        request[SESSION].flash = await self._ask("reload")
        return _see_other("/status")

    async def weight(self, request: web.Request) -> web.StreamResponse:
        """Quiesce (override weight 0) or Activate (clear the override) one real server."""
        sess = request[SESSION]
        form = await _form(request)
        action, service, server = (str(form.get(k, "")) for k in ("action", "service", "server"))
        if action not in ("quiesce", "activate"):
            raise BadRequest(f"action {action!r} (quiesce, activate)")
        log.info("web console: %s real server %s of %s by %s", action, server, service, self._who(request))
        sess.flash = await self._ask("weight", service=service, server=server,
                                     weight=0 if action == "quiesce" else None)
        return _see_other("/status")

    async def api_status(self, request: web.Request) -> web.StreamResponse:
        reply = await self._ask("status")
        if not reply.get("ok"):
            return web.json_response({"error": reply.get("error")}, status=503)
        return web.json_response(reply["status"])

    # ---- layout ----
    def _layout(self, request: web.Request, title: str, body: str, here: str, head: str = "",
                status: int = 200) -> web.Response:
        sess = request[SESSION]
        links = "".join(f'<a href="{path}"{" class=on" if path == here else ""}>{h(name)}</a>' for path, name in NAV)
        flash = ""
        if sess.flash is not None:
            flash = _flash(sess.flash)
            sess.flash = None
        top = (f'<header><span class="brand">lb · {h(self.settings.instance)}</span><nav>{links}</nav>'
               f'<form method=post action=/logout><input type=hidden name=csrf value="{h(sess.csrf)}">'
               f'<button type=submit title="{h(sess.user)}">Log out</button></form></header>')
        return _page(title, top + f"<main><h1>{h(title)}</h1>{flash}{body}</main>", head=head, status=status)

    def _down(self, request, title: str, here: str, reply: dict) -> web.Response:
        return self._layout(request, title, f'<div class="flash bad">{h(reply.get("error"))}</div>', here, status=503)

    # ---- CONTROL/MONITORING ----
    async def status_page(self, request: web.Request) -> web.StreamResponse:
        refresh = _choice(request, "refresh", REFRESH_CHOICES, DEFAULT_REFRESH)
        part = request.query.get("part")
        if part not in (None, "live"):
            raise BadRequest("part: only 'live'")
        status, table = await asyncio.gather(self._ask("status"), self._ask("table"))
        if not status.get("ok"):
            if part:
                return web.Response(text=f'<div class="flash bad">{h(status.get("error"))}</div>', content_type="text/html")
            return self._down(request, "Control/Monitoring", "/status", status)
        live = _live(status["status"], table, request[SESSION].csrf)
        if part:
            return web.Response(text=live, content_type="text/html")
        doc = status["status"]
        sess = request[SESSION]
        opts = "".join(f'<option value="{n}"{" selected" if n == refresh else ""}>{f"{n} s" if n else "off"}</option>'
                       for n in REFRESH_CHOICES)
        controls = (f'<div class="bar"><form id="refresh-form" method=get action=/status class=inline>'
                    f'<label>Update every <select id="every" name="refresh">{opts}</select></label> '
                    f'<noscript><button type=submit>Set</button></noscript></form>'
                    f'<a id="now" class="button" href="/status?refresh={refresh}">Update now</a>'
                    f'<span class="note">updated <span id="when">{h(_clock(doc.get("at")))}</span></span>'
                    f'<form method=post action=/reload class=inline><input type=hidden name=csrf value="{h(sess.csrf)}">'
                    f'<button type=submit title="re-read {h(doc.get("config"))} (as lb reload)">Reload config file'
                    f'</button></form></div>')
        head = (f'<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>' if refresh else "") + \
            '<script src="/static/console.js" defer></script>'
        return self._layout(request, "Control/Monitoring", controls + f'<div id="live">{live}</div>', "/status",
                            head=head)

    # ---- the configuration, for the forms ----
    async def _config(self) -> dict:
        return await self._ask("config")

    async def _save(self, request: web.Request, form, mutate) -> dict:
        """Apply ``mutate(document, form)`` to the configuration the form was built on and save it
        through the daemon; the daemon's reply (conflict, issues, or applied)."""
        version = str(form.get("version", ""))
        cur = await self._config()
        if not cur.get("ok"):
            return cur
        if "document" not in cur:
            return {"ok": False, "error": f"{cur['config'].get('path')} does not load; fix it first",
                    "issues": cur.get("issues") or []}
        if cur["config"].get("version") != version:
            return {"ok": False, "conflict": True,
                    "error": "the configuration file changed since this page was loaded (saved from another browser, "
                             "or edited by hand); nothing was changed. Your input is below: reload the page to see the "
                             "current configuration and edit again."}
        doc = copy.deepcopy(cur["document"])
        mutate(doc, form)
        reply = await self._ask("config-put", document=doc, version=version, who=self._who(request),
                                restart=form.get("restart") == "on")
        if reply.get("ok"):
            log.info("web console: %s: %s", self._who(request), reply.get("message"))
        elif reply.get("timeout"):
            # the daemon goes on with the save: not refused, perhaps applied
            reply = {**reply, "error": f"{reply.get('error')}: the change was not refused and may have been "
                                       f"applied all the same; reload the page to see"}
        return reply

    async def _doc_or_404(self, request, title, here):
        cur = await self._config()
        if not cur.get("ok"):
            return None, self._down(request, title, here, cur)
        if "document" not in cur:
            issues = "".join(f"<li>{h(_issue_text(i))}</li>" for i in cur.get("issues") or [])
            return None, self._layout(request, title, f'<div class="flash bad">The configuration file does not load; '
                                                      f'fix it first (lb check):<ul>{issues}</ul></div>', here, status=503)
        return cur, None

    def _form_page(self, request, title, here, action, sections, version, *, values=None, errors=None,
                   general=None, hidden=(), extra="", note="", status=200):
        """A form of ``sections`` [(heading, fields, prefix, document table or None)]."""
        sess = request[SESSION]
        errors = errors or {}
        rows = []
        for heading, fields, prefix, table in sections:
            if heading:
                rows.append(f"<h2>{h(heading)}</h2>")
            for f in fields:
                name = f.name(prefix)
                if values is not None:
                    text = str(values.get(name, "")) if f.kind != "bool" else ("on" if values.get(name) == "on" else "")
                else:
                    text = forms.text_of(f, (table or {}).get(f.key))
                rows.append(_row(f, name, text, errors.get(name)))
        head = ""
        if general:
            head = _flash(general)
        hid = "".join(f'<input type=hidden name="{h(k)}" value="{h(v)}">' for k, v in hidden)
        body = (f'{head}{note}<form method=post action="{h(action)}" class="edit card">'
                f'<input type=hidden name=csrf value="{h(sess.csrf)}"><input type=hidden name=version value="{h(version)}">'
                f'{hid}{"".join(rows)}{extra}<div class="actions"><button type=submit class="primary" id="save">Accept'
                f'</button><a class="button" href="{h(here)}">Cancel</a></div></form>')
        return self._layout(request, title, body, here, status=status)

    def _after(self, request, reply: dict, back: str):
        """A successful save: the message, then back to ``back``."""
        request[SESSION].flash = reply
        return _see_other(back)

    def _refused(self, request, title, here, action, sections, form, reply, fieldmap, hidden=(), extra="", note=""):
        errors, rest = forms.place(reply.get("issues") or [], fieldmap)
        general = {"ok": False, "error": reply.get("error"), "issues": rest, "timeout": reply.get("timeout")}
        return self._form_page(request, title, here, action, sections, str(form.get("version", "")),
                               values={k: form.get(k) for k in form}, errors=errors, general=general, hidden=hidden,
                               extra=extra, note=note,
                               status=409 if reply.get("conflict") else 504 if reply.get("timeout") else 400)

    # ---- GLOBAL SETTINGS ----
    GLOBAL_SECTIONS = (("[global]", forms.GLOBAL, "global"), ("[timeouts]", forms.TIMEOUTS, "timeouts"),
                       ("[tables] (take effect when lb restarts)", forms.TABLES, "tables"),
                       ("[defense] (floods)", forms.DEFENSE, "defense"),
                       ("[web] (take effect when lb web restarts)", forms.WEB, "web"),
                       ("[control]", forms.CONTROL, "control"))

    def _global_sections(self, doc):
        return [(title, fields, prefix, doc.get(prefix) if doc else None)
                for title, fields, prefix in self.GLOBAL_SECTIONS]

    def _global_note(self, cur):
        c = cur.get("config", {})
        return (f'<p class="note">Instance <b>{h(c.get("instance") or self.settings.instance)}</b> · file '
                f'{h(c.get("path"))} ({h(c.get("format"))}) · serial_no {h(c.get("file_serial_no"))} · version '
                f'{h(c.get("version"))}. Changes are checked as <code>lb check</code> checks the file, saved, and applied '
                f'with a reload; instance, tables, network, data plane, interfaces, [ha] and [bgp] need a restart: tick "save for the next start" '
                f'to save them anyway.</p>')

    _RESTART = ('<div class="row"><label for="restart">Save for the next start</label><div><input type=checkbox '
                'id="restart" name="restart"{checked}> <span class="help">when a change needs lb to restart (tables, '
                'network, interfaces, [ha]): save the file now, apply at the next start</span></div></div>')

    def _restart_box(self, form=None) -> str:
        """The "save for the next start" box: a page shown again keeps the user's tick."""
        ticked = form is not None and form.get("restart") == "on"
        return self._RESTART.replace("{checked}", " checked" if ticked else "")

    async def global_page(self, request: web.Request) -> web.StreamResponse:
        cur, err = await self._doc_or_404(request, "Global settings", "/global")
        if err:
            return err
        return self._form_page(request, "Global settings", "/global", "/global",
                               self._global_sections(cur["document"]), cur["config"]["version"],
                               extra=self._restart_box(), note=self._global_note(cur))

    async def global_save(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)

        def mutate(doc, form):
            for _title, fields, prefix in self.GLOBAL_SECTIONS:
                table = doc.setdefault(prefix, {})
                forms.apply(table, fields, form, prefix)
                if not table and prefix != "global":
                    del doc[prefix]
        reply = await self._save(request, form, mutate)
        if reply.get("ok"):
            return self._after(request, reply, "/global")
        fieldmap = {}
        for _t, fields, prefix in self.GLOBAL_SECTIONS:
            fieldmap.update(forms.paths(fields, (prefix,), prefix))
        return self._refused(request, "Global settings", "/global", "/global", self._global_sections(None), form,
                             reply, fieldmap, extra=self._restart_box(form))

    # ---- REDUNDANCY ----
    _HA_ON = ('<div class="row"><label for="ha_enabled">Redundancy (a backup director)</label><div><input type=checkbox '
              'id="ha_enabled" name="ha_enabled"{checked}> <span class="help">off: this director runs alone, '
              'always active</span></div></div>')

    async def redundancy_page(self, request: web.Request) -> web.StreamResponse:
        cur, err = await self._doc_or_404(request, "Redundancy", "/redundancy")
        if err:
            return err
        status = await self._ask("status")
        ha = cur["document"].get("ha")
        live = ""
        if status.get("ok"):
            doc = status["status"]
            live = "<h2>Now</h2>" + (_ha_summary(doc["ha"]) if doc.get("ha") else
                                     "<p>This director runs alone (no [ha]): always active.</p>") + \
                _versions(doc.get("configuration") or {})
        extra = self._HA_ON.replace("{checked}", " checked" if ha is not None else "") + self._restart_box()
        page = self._form_page(request, "Redundancy", "/redundancy", "/redundancy", [(None, forms.HA, "ha", ha)],
                               cur["config"]["version"], extra=extra,
                               note='<p class="note">The [ha] settings take effect when lb restarts on both directors '
                                    '(tick "save for the next start"). The active director pushes its configuration to '
                                    'the backup.</p>')
        page.text = page.text.replace("</main>", f"{live}</main>")
        return page

    async def redundancy_save(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)

        def mutate(doc, form):
            if form.get("ha_enabled") != "on":
                doc.pop("ha", None)
                return
            forms.apply(doc.setdefault("ha", {}), forms.HA, form, "ha")
        reply = await self._save(request, form, mutate)
        if reply.get("ok"):
            return self._after(request, reply, "/redundancy")
        extra = self._HA_ON.replace("{checked}", " checked" if form.get("ha_enabled") == "on" else "") + \
            self._restart_box(form)
        return self._refused(request, "Redundancy", "/redundancy", "/redundancy", [(None, forms.HA, "ha", None)], form,
                             reply, forms.paths(forms.HA, ("ha",), "ha"), extra=extra)

    # ---- VIRTUAL SERVERS ----
    async def virtual_page(self, request: web.Request) -> web.StreamResponse:
        cur, err = await self._doc_or_404(request, "Virtual servers", "/virtual")
        if err:
            return err
        csrf, version = request[SESSION].csrf, cur["config"]["version"]
        rows = []
        for vs in cur["document"].get("virtual_server", []):
            name = str(vs.get("name"))
            active = vs.get("active", True)
            where = (f"FWM {vs.get('fwmark')}" if vs.get("fwmark") else
                     f"{str(vs.get('protocol', 'tcp')).upper()} {_endpoint(vs.get('address'), vs.get('port'))}")
            q = quote(name)
            rows.append(
                f'<tr data-vs="{h(name)}"><td><b>{h(name)}</b></td><td class="{"up" if active else "inactive"}">'
                f'{"up" if active else "down"}</td><td>{h(where)}</td><td>{h(vs.get("scheduler", "wlc"))}</td>'
                f'<td class=num>{len(vs.get("real_server", []))}</td>'
                f'<td class="hide-narrow">{h((vs.get("monitor") or {}).get("kind", "tcp"))}</td><td>'
                f'<a class=button href="/virtual/edit?vs={q}">Edit</a> <a class=button href="/virtual/real?vs={q}">Real '
                f'servers</a> <a class=button href="/virtual/monitor?vs={q}">Monitoring</a> '
                + _action_form("/virtual/action", csrf, version, (("vs", name),),
                               (("deactivate", "Deactivate") if active else ("activate", "Activate"),
                                ("delete", "Delete")))
                + "</td></tr>")
        table = ('<div class="scroll"><table id="virtual"><tr><th>Name</th><th>Status</th><th>Address</th><th>Scheduler'
                 '</th><th class=num>Real servers</th><th class="hide-narrow">Monitor</th><th></th></tr>'
                 + "".join(rows) + "</table></div>") if rows else "<p>No virtual servers are configured.</p>"
        body = f'<div class="bar"><a class="button primary" id="add-virtual" href="/virtual/edit">Add virtual server</a>' \
               f'</div><div class="card">{table}</div>'
        return self._layout(request, "Virtual servers", body, "/virtual")

    async def virtual_action(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        action, name = str(form.get("action", "")), str(form.get("vs", ""))
        if action not in ("activate", "deactivate", "delete"):
            raise BadRequest(f"action {action!r} (activate, deactivate, delete)")

        def mutate(doc, form):
            vss = doc.get("virtual_server", [])
            i = _index(vss, name)
            if action == "delete":
                del vss[i]
                if not vss:
                    doc.pop("virtual_server", None)
            else:
                vss[i]["active"] = action == "activate"
        reply = await self._save(request, form, mutate)
        request[SESSION].flash = _listed(reply)
        return _see_other("/virtual")

    VS_MATCH = ('<div class="row"><label for="vs.match">Match packets by</label><select id="vs.match" name="match">'
                '<option value="address"{a}>virtual IP address and port</option><option value="fwmark"{f}>firewall mark '
                '(port groups)</option></select></div>')

    def _vs_sections(self, vs):
        return [(None, forms.VIRTUAL, "vs", vs)]

    async def virtual_edit(self, request: web.Request) -> web.StreamResponse:
        cur, err = await self._doc_or_404(request, "Virtual server", "/virtual")
        if err:
            return err
        name = request.query.get("vs")
        vs = {"active": True, "protocol": "tcp", "scheduler": "wlc"} if name is None else \
            _find(cur["document"].get("virtual_server", []), name)
        fw = bool(vs.get("fwmark"))
        extra = self.VS_MATCH.format(a="" if fw else " selected", f=" selected" if fw else "")
        return self._form_page(request, "Virtual server" if name else "Add a virtual server", "/virtual", "/virtual/edit",
                               self._vs_sections(vs), cur["config"]["version"], hidden=(("vs", name or ""),),
                               extra=extra)

    async def virtual_save(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        name = str(form.get("vs", ""))
        match = str(form.get("match", "address"))
        if match not in ("address", "fwmark"):
            raise BadRequest("match: address or fwmark")
        index = [None]

        def mutate(doc, form):
            vss = doc.setdefault("virtual_server", [])
            if name:
                i = _index(vss, name)
            else:
                vss.append({})
                i = len(vss) - 1
            index[0] = i
            table = vss[i]
            forms.apply(table, forms.VIRTUAL, form, "vs")
            drop = ("fwmark", "port_group") if match == "address" else ("address", "port", "protocol")
            for key in drop:
                table.pop(key, None)
        reply = await self._save(request, form, mutate)
        if reply.get("ok"):
            return self._after(request, reply, "/virtual")
        base = ("virtual_server", index[0] if index[0] is not None else 0)
        extra = self.VS_MATCH.format(a=" selected" if match == "address" else "", f=" selected" if match == "fwmark" else "")
        return self._refused(request, "Virtual server", "/virtual", "/virtual/edit", self._vs_sections(None), form, reply,
                             forms.paths(forms.VIRTUAL, base, "vs"), hidden=(("vs", name),), extra=extra)

    # ---- REAL SERVER ----
    async def real_page(self, request: web.Request) -> web.StreamResponse:
        cur, err = await self._doc_or_404(request, "Real servers", "/virtual")
        if err:
            return err
        name = _required(request, "vs")
        vs = _find(cur["document"].get("virtual_server", []), name)
        csrf, version = request[SESSION].csrf, cur["config"]["version"]
        q = quote(name)
        rows = []
        for rs in vs.get("real_server", []):
            rname = str(rs.get("name", rs.get("address")))
            active = rs.get("active", True)
            rows.append(
                f'<tr data-rs="{h(rname)}"><td><b>{h(rname)}</b></td><td class="{"up" if active else "inactive"}">'
                f'{"up" if active else "down"}</td><td>{h(rs.get("address"))}</td><td class=num>{h(rs.get("port"))}</td>'
                f'<td class=num>{h(rs.get("weight", 1))}</td><td><a class=button href="/virtual/real/edit?vs={q}&rs='
                f'{quote(rname)}">Edit</a> '
                + _action_form("/virtual/real/action", csrf, version, (("vs", name), ("rs", rname)),
                               (("deactivate", "Deactivate") if active else ("activate", "Activate"),
                                ("delete", "Delete")))
                + "</td></tr>")
        table = ('<div class="scroll"><table id="real"><tr><th>Name</th><th>Status</th><th>Address</th><th class=num>Port'
                 '</th><th class=num>Weight</th><th></th></tr>' + "".join(rows) + "</table></div>") if rows else \
            "<p>No real servers yet.</p>"
        body = (f'<p><a href="/virtual">Virtual servers</a> › <b>{h(name)}</b> · <a href="/virtual/edit?vs={q}">virtual '
                f'server</a> · <a href="/virtual/monitor?vs={q}">monitoring scripts</a></p>'
                f'<div class="bar"><a class="button primary" id="add-real" href="/virtual/real/edit?vs={q}">Add real server'
                f'</a></div><div class="card">{table}</div>')
        return self._layout(request, f"Real servers of {name}", body, "/virtual")

    async def real_action(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        action, name, rname = str(form.get("action", "")), str(form.get("vs", "")), str(form.get("rs", ""))
        if action not in ("activate", "deactivate", "delete"):
            raise BadRequest(f"action {action!r} (activate, deactivate, delete)")

        def mutate(doc, form):
            vs = doc.get("virtual_server", [])[_index(doc.get("virtual_server", []), name)]
            reals = vs.get("real_server", [])
            j = _index(reals, rname)
            if action == "delete":
                del reals[j]
                if not reals:
                    vs.pop("real_server", None)
            else:
                reals[j]["active"] = action == "activate"
        reply = await self._save(request, form, mutate)
        request[SESSION].flash = _listed(reply)
        return _see_other(f"/virtual/real?vs={quote(name)}")

    async def real_edit(self, request: web.Request) -> web.StreamResponse:
        cur, err = await self._doc_or_404(request, "Real server", "/virtual")
        if err:
            return err
        name = _required(request, "vs")
        vs = _find(cur["document"].get("virtual_server", []), name)
        rname = request.query.get("rs")
        rs = {"active": True, "weight": 1} if rname is None else _find(vs.get("real_server", []), rname)
        return self._form_page(request, f"Real server of {name}", f"/virtual/real?vs={quote(name)}", "/virtual/real/edit",
                               [(None, forms.REAL, "rs", rs)], cur["config"]["version"],
                               hidden=(("vs", name), ("rs", rname or "")))

    async def real_save(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        name, rname = str(form.get("vs", "")), str(form.get("rs", ""))
        where = [0, 0]

        def mutate(doc, form):
            vss = doc.get("virtual_server", [])
            i = _index(vss, name)
            reals = vss[i].setdefault("real_server", [])
            if rname:
                j = _index(reals, rname)
            else:
                reals.append({})
                j = len(reals) - 1
            where[:] = [i, j]
            forms.apply(reals[j], forms.REAL, form, "rs")
        reply = await self._save(request, form, mutate)
        back = f"/virtual/real?vs={quote(name)}"
        if reply.get("ok"):
            return self._after(request, reply, back)
        return self._refused(request, f"Real server of {name}", back, "/virtual/real/edit", [(None, forms.REAL, "rs", None)],
                             form, reply, forms.paths(forms.REAL, ("virtual_server", where[0], "real_server", where[1]), "rs"),
                             hidden=(("vs", name), ("rs", rname)))

    # ---- MONITORING SCRIPTS ----
    def _monitor_sections(self, vs):
        mon = None if vs is None else vs.get("monitor", {})
        load = None if vs is None else (vs.get("load_monitor") or {"kind": "none"})
        return [("Health check", forms.MONITOR, "monitor", mon), ("Load monitor (dynamic weight)", forms.LOAD, "load", load)]

    async def monitor_edit(self, request: web.Request) -> web.StreamResponse:
        cur, err = await self._doc_or_404(request, "Monitoring scripts", "/virtual")
        if err:
            return err
        name = _required(request, "vs")
        vs = _find(cur["document"].get("virtual_server", []), name)
        return self._form_page(request, f"Monitoring scripts of {name}", "/virtual", "/virtual/monitor",
                               self._monitor_sections(vs), cur["config"]["version"], hidden=(("vs", name),))

    async def monitor_save(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        name = str(form.get("vs", ""))
        where = [0]

        def mutate(doc, form):
            vss = doc.get("virtual_server", [])
            i = _index(vss, name)
            where[0] = i
            vs = vss[i]
            mon = vs.setdefault("monitor", {})
            forms.apply(mon, forms.MONITOR, form, "monitor")
            if not mon:
                del vs["monitor"]
            if form.get("load.kind", "none") == "none":
                vs.pop("load_monitor", None)
            else:
                forms.apply(vs.setdefault("load_monitor", {}), forms.LOAD, form, "load")
        reply = await self._save(request, form, mutate)
        if reply.get("ok"):
            return self._after(request, reply, "/virtual")
        base = ("virtual_server", where[0])
        fieldmap = {**forms.paths(forms.MONITOR, base + ("monitor",), "monitor"),
                    **forms.paths(forms.LOAD, base + ("load_monitor",), "load")}
        return self._refused(request, f"Monitoring scripts of {name}", "/virtual", "/virtual/monitor",
                             self._monitor_sections(None), form, reply, fieldmap, hidden=(("vs", name),))

    # ---- the effective configuration file ----
    async def config_page(self, request: web.Request) -> web.StreamResponse:
        cur, status = await asyncio.gather(self._config(), self._ask("status"))
        if not cur.get("ok"):
            return self._down(request, "Configuration file", "/config", cur)
        c = cur["config"]
        rows = [("file", c.get("path")), ("format", c.get("format")), ("version (file hash)", c.get("version")),
                ("serial_no (file)", c.get("file_serial_no")), ("serial_no (running)", c.get("serial_no")),
                ("identity (running)", c.get("identity")),
                ("file differs from the running configuration", c.get("file_differs"))]
        if c.get("restart_needed"):
            rows.append(("changes waiting for a restart", ", ".join(c["restart_needed"])))
        versions = _versions(status["status"].get("configuration") or {}) if status.get("ok") else ""
        body = ('<div class="card"><table class="kv">' + "".join(f"<tr><th>{h(k)}</th><td>{h(v)}</td></tr>" for k, v in rows)
                + f'</table></div>{versions}<h2>{h(c.get("path"))}</h2><pre class="config" id="config-text">'
                f'{h(cur.get("text"))}</pre>')
        return self._layout(request, "Configuration file", body, "/config")

    # ---- password ----
    PW_FIELDS = (("user", "User name", "text", "username"), ("current", "Current password", "password", "current-password"),
                 ("new", "New password", "password", "new-password"), ("again", "New password again", "password",
                                                                          "new-password"))

    def _password_form(self, request, errors=None, error=None, status=200, user=None):
        sess = request[SESSION]
        rows = []
        for name, label, kind, auto in self.PW_FIELDS:
            value = f' value="{h(user if user is not None else sess.user)}"' if name == "user" else ""
            msg = (errors or {}).get(name)
            rows.append(f'<div class="row{" bad" if msg else ""}"><label for="pw-{name}">{h(label)}</label><div>'
                        f'<input type="{kind}" id="pw-{name}" name="{name}" autocomplete="{auto}"{value}>'
                        + (f'<div class="fielderr">{h(msg)}</div>' if msg else "") + "</div></div>")
        head = f'<div class="flash bad">{h(error)}</div>' if error else ""
        body = (f'{head}<form method=post action=/password class="edit card"><input type=hidden name=csrf '
                f'value="{h(sess.csrf)}">{"".join(rows)}<div class="actions"><button type=submit class=primary '
                f'id="save">Change password</button></div></form><p class="note">The console\'s one login, kept in '
                f'{h(self.password_file)} (as <code>lb passwd</code> writes it).</p>')
        return self._layout(request, "Change password", body, "/password", status=status)

    async def password_page(self, request: web.Request) -> web.StreamResponse:
        return self._password_form(request)

    async def password_save(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        sess, client = request[SESSION], request[CLIENT]
        user, current, new, again = (str(form.get(k, "")) for k in ("user", "current", "new", "again"))
        errors = {}
        try:
            password.check_user(user)
        except ValueError as e:
            errors["user"] = str(e)
        if new != again:
            errors["again"] = "the two new passwords differ"
        elif len(new) < password.MIN_LENGTH:
            errors["new"] = f"at least {password.MIN_LENGTH} characters"
        elif len(new) > password.MAX_PASSWORD:
            errors["new"] = f"at most {password.MAX_PASSWORD} characters"
        try:
            line, why, status = await self._verify(client.address, current, sess.user)
        except password.PasswordFileError as e:
            return self._password_form(request, errors, f"the password file cannot be read: {e}", 503, user)
        if status in (429, 503):
            return self._password_form(request, errors, why, status, user)
        if why:
            errors["current"] = "not the current password"
        if errors:
            return self._password_form(request, errors, "Nothing was changed.", 400, user)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, password.write, self.password_file, new, user)
            line = await loop.run_in_executor(None, password.read, self.password_file)
        except (OSError, ValueError, password.PasswordFileError) as e:
            why = getattr(e, "strerror", None) or e
            if isinstance(e, OSError) and e.errno == errno.EROFS:
                # lb-web@.service: ProtectSystem=strict, ReadWritePaths= the config directory only
                why = (f"{why} (lb-web@.service may write only under its ReadWritePaths=, the config directory "
                       f"/etc/lb as installed by default: keep the password file there, or name its directory "
                       f"in ReadWritePaths= in a drop-in)")
            return self._password_form(request, errors, f"cannot write {self.password_file}: {why}", 500, user)
        log.info("web console: %s changed the login to user %s", self._who(request), user)
        # every other session of the old login ends
        for token in [t for t, s in self.sessions.items() if s is not sess]:
            del self.sessions[token]
        sess.user, sess.password = user, _digest(line)
        self._password = (self.clock(), sess.password)
        sess.flash = {"ok": True, "message": f"password changed for user {user}"}
        return _see_other("/status")


# ---- helpers ----

class ClientLeft(web.HTTPBadRequest):
    """The client closed its connection mid-request: the answer goes nowhere (aiohttp drops it)."""


async def _form(request: web.Request):
    form = await _read_form(request)
    for key, value in form.items():
        # a charset such as raw_unicode_escape (the body's, or a multipart part's) decodes "\ud800"
        # to half a surrogate pair, which no page can be encoded with: the page that shows the
        # input again (the login page, before any login) was a 500 and a traceback each time
        if any(isinstance(t, str) and not utf8_text(t) for t in (key, value)):
            raise BadRequest("unreadable form: a value is not Unicode text (half a surrogate pair)")
    return form


async def _read_form(request: web.Request):
    try:
        return await asyncio.wait_for(request.post(), BODY_TIMEOUT)
    except asyncio.TimeoutError:    # a body that never comes would hold the connection for ever
        counts["body timeouts"] += 1
        _slow_log.log("body", logging.WARNING, "web console: no whole request body from %s within %.0f s "
                      "(answered 408; %d since start)", request.remote, BODY_TIMEOUT, counts["body timeouts"])
        raise web.HTTPRequestTimeout(text=f"request body not received within {BODY_TIMEOUT:.0f} s\n") from None
    except ConnectionError:
        counts["clients left"] += 1
        log.debug("web console: %s left mid-request (%d since start)", request.remote, counts["clients left"])
        raise ClientLeft() from None
    except (ValueError, LookupError, RuntimeError) as e:
        # aiohttp's own errors for a body it cannot read: ValueError (UnicodeDecodeError is one),
        # LookupError for an unknown charset, RuntimeError for an unknown transfer encoding
        raise BadRequest(f"unreadable form: {e}") from None
    except (HttpProcessingError, web.RequestPayloadError) as e:
        # a multipart part with a bad header line, a body its Content-Encoding (gzip, deflate ...)
        # or chunked encoding does not decode: anyone's, before a login.  Not a 500 with a
        # traceback; the connection is closed (the rest of the body is not read: aiohttp would
        # read it again after the answer, and log the same error as "Unhandled exception")
        why = " ".join(str(e).split()).removeprefix(f"{getattr(e, 'code', 400)}, message: ")[:200]
        filter_malformed_requests().note(request.remote, why)
        raise UnreadableBody(why) from None


class UnreadableBody(BadRequest):
    """A request body aiohttp cannot decode (answered 400, the connection closed)."""

    def __init__(self, why: str):
        super().__init__(f"unreadable request body: {why}")


def _choice(request: web.Request, key: str, choices, default):
    raw = request.query.get(key)
    if raw is None:
        return default
    if raw not in {str(c) for c in choices}:      # not int(raw): 5,000 digits make int() raise
        raise BadRequest(f"{key} must be one of {', '.join(map(str, choices))}")
    return int(raw)


def _required(request: web.Request, key: str) -> str:
    value = request.query.get(key)
    if not value:
        raise BadRequest(f"{key} is required")
    return value


def _find(items, name: str) -> dict:
    return items[_index(items, name)]


def _index(items, name: str) -> int:
    for i, item in enumerate(items or []):
        if isinstance(item, dict) and str(item.get("name", item.get("address"))) == name:
            return i
    raise web.HTTPNotFound(text=f"no {name!r} in the configuration (changed meanwhile?)\n")


def _page(title: str, body: str, status: int = 200, head: str = "") -> web.Response:
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
           f'content="width=device-width,initial-scale=1"><title>{h(title)} - lb</title>'
           f'<link rel="stylesheet" href="/static/console.css">{head}</head><body>{body}</body></html>')
    return web.Response(text=doc, content_type="text/html", status=status)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _finish(resp: web.StreamResponse, hsts: bool = False) -> web.StreamResponse:
    for k, v in (SECURITY_HEADERS | HSTS if hsts else SECURITY_HEADERS).items():
        if k == "Cache-Control" and k in resp.headers:
            continue
        resp.headers.setdefault(k, v)
    return resp


_PORTS = {"http": 80, "https": 443}


def _origin_key(scheme: str, netloc: str) -> tuple | None:
    try:
        u = urlsplit(f"{scheme}://{netloc}")
        return scheme, (u.hostname or "").lower(), u.port or _PORTS.get(scheme)
    except ValueError:
        return None


def _same_origin(request: web.Request, client: Client) -> bool:
    """The browser's Origin is the console as the browser reached it (through a trusted proxy's
    X-Forwarded-Proto/-Host when there is one)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True                       # not sent (e.g. scripts): the CSRF token decides
    try:
        o = urlsplit(origin)
        mine = _origin_key(client.scheme, client.host)
        return mine is not None and (o.scheme, (o.hostname or "").lower(), o.port or _PORTS.get(o.scheme)) == mine
    except ValueError:
        return False


def _clock(t) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else None


def _issue_text(i: dict) -> str:
    where = f"{i.get('path')}" + ("" if i.get("line") is None else f":{i.get('line')}")
    return f"{where}: {i.get('field') + ': ' if i.get('field') else ''}{i.get('message')}"


def _flash(reply: dict) -> str:
    if reply.get("ok"):
        # saved, not applied; or applied with changes that wait for a restart
        cls = "flash" if reply.get("applied", True) and not reply.get("waiting") else "flash warn"
        return f'<div class="{cls}" id="flash">{h(reply.get("message", "done"))}</div>'
    items = "".join(f"<li>{h(i.get('field') + ': ' if i.get('field') else '')}{h(i.get('message'))}</li>"
                    for i in reply.get("issues") or [])
    cls = "flash warn" if reply.get("timeout") else "flash bad"      # no answer: not a refusal
    return f'<div class="{cls}" id="flash"><b>{h(reply.get("error", "failed"))}</b>' \
           + (f"<ul>{items}</ul>" if items else "") + _left_in_place(reply) + "</div>"


def _listed(reply: dict) -> dict:
    """A list's button (activate, deactivate, delete) refused for a stale page: the page it goes
    back to shows the current configuration, not "your input" (the edit forms' conflict message)."""
    if not reply.get("conflict"):
        return reply
    return {**reply, "error": "the configuration file changed since this page was loaded (saved from another "
                              "browser, or edited by hand); nothing was changed. The list below is the current "
                              "configuration: check it and try again."}


def _left_in_place(reply: dict) -> str:
    """A failed reload: what the engine left in place (Engine._reload_reply: "changed")."""
    if "changed" not in reply:
        return ""
    changed = reply["changed"]
    if changed is False:
        after = "Nothing was changed: the running configuration stays as it was."
        if reply.get("rolled_back"):
            after = "Nothing was changed: what had been written was undone, the previous configuration runs."
    elif changed is True:
        after = "The previous configuration could not be fully restored: the data plane holds part of the " \
                "new one (see the error). Fix the cause and reload, or restart lb."
    else:
        after = "What was changed is not known: see the daemon's log."
    return f"<p>{h(after)}</p>"


def _row(f: forms.Field, name: str, text: str, errors) -> str:
    ident = h(name)
    if f.kind == "bool":
        control = f'<input type=checkbox id="{ident}" name="{ident}"{" checked" if text == "on" else ""}>'
    elif f.kind == "select":
        opts = list(f.choices)
        if text and text not in opts:
            opts.append(text)
        control = f'<select id="{ident}" name="{ident}">' + "".join(
            f'<option value="{h(c)}"{" selected" if c == text else ""}>{h(c)}</option>' for c in opts) + "</select>"
    elif f.kind in ("groups", "lines"):
        control = f'<textarea id="{ident}" name="{ident}" rows=3>{h(text)}</textarea>'
    else:
        mode = ' inputmode="numeric"' if f.kind == "int" else ' inputmode="decimal"' if f.kind == "number" else ""
        control = f'<input type=text id="{ident}" name="{ident}" value="{h(text)}"{mode} autocomplete="off">'
    help_ = f'<div class="help">{h(f.help)}</div>' if f.help else ""
    err = "".join(f'<div class="fielderr" data-for="{ident}">{h(m)}</div>' for m in errors or [])
    return f'<div class="row{" bad" if errors else ""}"><label for="{ident}">{h(f.label)}</label><div>{control}' \
           f'{help_}{err}</div></div>'


def _action_form(action: str, csrf: str, version: str, fields, buttons) -> str:
    hid = "".join(f'<input type=hidden name="{h(k)}" value="{h(v)}">' for k, v in fields)
    btns = "".join(f'<button type=submit name=action value="{a}"{" class=danger" if a == "delete" else ""}>{h(label)}'
                   f'</button> ' for a, label in buttons)
    return (f'<form method=post action="{action}" class=inline><input type=hidden name=csrf value="{h(csrf)}">'
            f'<input type=hidden name=version value="{h(version)}">{hid}{btns}</form>')


def _ha_summary(ha: dict) -> str:
    peer = ha.get("peer") or {}
    rows = [("this node", ha.get("node")), ("role", ha.get("role")),
            ("in this role for", None if ha.get("since_s") is None else f"{ha['since_s']:.0f} s"),
            ("peer", f"{peer.get('state')} ({'alive' if peer.get('alive') else 'not heard'})"),
            ("peer last heard", None if peer.get("last_heard_s") is None else f"{peer['last_heard_s']:.1f} s ago")]
    for name, ch in (ha.get("channels") or {}).items():
        last = ch.get("last_heartbeat_s")
        rows.append((f"channel {name}", f"{ch.get('local')} → {ch.get('peer')}:{ch.get('port')}, last heartbeat "
                     + ("never" if last is None else f"{last:.1f} s ago")))
    for warning in ha.get("warnings") or ():    # a peer heard but refused, a skewed clock (Pulse.warnings)
        rows.append(("WARNING", warning))
    return '<div class="card scroll"><table class="kv" id="ha">' + "".join(
        f"<tr><th>{h(k)}</th><td>{h(v)}</td></tr>" for k, v in rows) + "</table></div>"


def _versions(c: dict) -> str:
    """This director's configuration version and the peer's, and whether they are the same."""
    if not c:
        return ""
    rows = [("this director", f"serial_no {c.get('serial_no')} · {c.get('identity')}")]
    if c.get("file_differs"):
        why = ", ".join(c.get("restart_needed") or []) or "not reloaded"
        rows.append(("configuration file", f"differs from the running configuration ({why})"))
    peer = c.get("peer")
    if peer is not None:
        same = peer.get("same")
        state = "same configuration" if same else "unknown yet" if same is None else "DIFFERENT configuration"
        cls = "up" if same else "down" if same is False else "note"
        rows.append(("peer director", f"serial_no {peer.get('peer_serial_no')} · {peer.get('peer_identity')}"))
        rows.append(("peers compared", f'<span class="{cls}" id="same">{h(state)}</span>'))
        if peer.get("last_result"):
            rows.append(("last exchange", f"{peer.get('last_result')}" + (f": {peer['last_error']}" if peer.get("last_error")
                                                                         else "")))
    return '<div class="card scroll"><table class="kv" id="versions">' + "".join(
        f"<tr><th>{h(k)}</th><td>{v if k == 'peers compared' else h(v)}</td></tr>" for k, v in rows) + "</table></div>"


def _rate(v) -> str:
    if v is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.1f}{unit}"
    return str(int(v))


def _weight_cell(r: dict) -> str:
    w = lbweight.from_status(r)
    if w.source == lbweight.CONFIGURED:
        return f"<td class=num>{h(w.value)}</td>"
    cls = "override" if w.source == lbweight.OVERRIDE else "note"
    return f'<td class="num {cls}" title="{h(w.text())}">{h(w.text().removeprefix("weight "))}</td>'


def _table_index(table: dict) -> dict:
    """{(service key, real address, port): real row} of the "table" reply."""
    out = {}
    for s in table.get("services", []) if table.get("ok") else []:
        key = ("fwm", s["fwmark"]) if s.get("fwmark") else (s["protocol"], s["address"], s["port"])
        out[key] = s
        for r in s.get("reals", []):
            out[(key, r["address"], r["port"])] = r
    return out


def _live(doc: dict, table: dict, csrf: str) -> str:
    """The part of CONTROL/MONITORING the page updates in place."""
    out = [f'<p class="note">instance <b>{h(doc.get("instance"))}</b> · pid {h(doc.get("pid"))} · role '
           f'<b id="role">{h(doc.get("role"))}</b> · data plane <b>{h(doc.get("dataplane"))}</b> · config '
           f'{h(doc.get("config"))} · at {h(_clock(doc.get("at")))}</p>']
    if doc.get("ha"):
        out.append(_ha_summary(doc["ha"]))
    out.append(_versions(doc.get("configuration") or {}))
    if doc.get("bgp"):     # lb.bgp: the sessions and routes, as `lb status` prints them
        from lb.bgp import format_status
        out.append(f'<div class="card scroll"><pre id="bgp">{h(chr(10).join(format_status(doc["bgp"])))}</pre></div>')
    if not table.get("ok"):
        out.append(f'<p class="err">connection counts unavailable: {h(table.get("error"))}</p>')
    idx = _table_index(table)
    if not doc.get("services"):
        out.append("<p>No virtual services are configured.</p>")
    for s in doc.get("services", []):
        key = ("fwm", s["fwmark"]) if s.get("fwmark") else (s["protocol"], s["address"], s["port"])
        where = f"FWM {s['fwmark']}" if s.get("fwmark") else f"{s['protocol'].upper()} {_endpoint(s['address'], s['port'])}"
        srow = idx.get(key) or {}
        notes = [f"scheduler {s.get('scheduler')}", f"monitor {s.get('monitor')}"]
        if not s.get("active", True):
            notes.append("INACTIVE")
        if s.get("sorry_server"):
            notes.append(f"sorry server {s['sorry_server']}" + (" (IN USE)" if s.get("on_sorry_server") else ""))
        if s.get("waiting"):     # engine.HeldBack: the weights shown are wanted, not yet forwarded
            notes.append(f"WAITING: a health, weight or override change {s['waiting']}")
        rate = srow.get("rate") or {}
        if rate:
            notes.append(f"{_rate(rate.get('conns'))} conn/s · {_rate(rate.get('inpkts'))} pkt/s in · "
                         f"{_rate(rate.get('outpkts'))} pkt/s out")
        rows = []
        for r in s.get("real_servers", []):
            health = r.get("health", "-") if r.get("active", True) else "inactive"
            cls = "up" if health == "up" else "down" if health == "down" else "note"
            t = idx.get((key, r["address"], r["port"] if not s.get("fwmark") else 0)) or {}
            rr = t.get("rate") or {}
            last = r.get("last_check")
            check = "-" if not last else f"{'ok' if last.get('ok') else 'FAIL'} {_clock(last.get('at'))}: {last.get('detail')}"
            # and, when the data plane cannot resolve its next hop, that (as `lb status` says it)
            reason = "; ".join(filter(None, [r.get("reason"), lbweight.nexthop_text(r)])) or None
            rows.append(
                f'<tr data-rs="{h(r.get("name"))}"><td>{h(r.get("name"))}</td><td>{h(_endpoint(r["address"], r["port"]))}'
                f'</td>{_weight_cell(r)}<td class="{cls}">{h(health)}</td><td class=num>{h(t.get("active"))}</td>'
                f'<td class=num>{h(t.get("inactive"))}</td><td class=num>{_rate(rr.get("conns") if t else None)}</td>'
                f'<td class=num>{_rate(rr.get("inbytes") if t else None)}</td>'
                f'<td class=num>{_rate(rr.get("outbytes") if t else None)}</td>'
                f'<td class="wrap">{h(check)}</td><td class="wrap">{h(reason)}</td>'
                f'{_maintenance(s, r, csrf)}</tr>')
        table_html = ('<div class="scroll"><table class="live"><tr><th>Real server</th><th>Address</th><th class=num>Weight'
                      '</th><th>Health</th><th class=num>ActiveConn</th><th class=num>InActConn</th><th class=num>CPS</th>'
                      '<th class=num>InBPS</th><th class=num>OutBPS</th><th>Last check</th><th>Reason</th><th>Maintenance'
                      '</th></tr>' + "".join(rows) + "</table></div>") if rows else "<p>No real servers.</p>"
        out.append(f'<div class="card" data-vs="{h(s.get("name"))}"><h2>{h(s.get("name"))}: {h(where)}</h2>'
                   f'<p class="note">{h(" · ".join(notes))}</p>{table_html}</div>')
    return "".join(out)


def _maintenance(s: dict, r: dict, csrf: str) -> str:
    """Quiesce / Activate (the running daemon's override, as lb quiesce / lb activate)."""
    if not s.get("active", True) or not r.get("active", True):
        return "<td class=note>inactive in the file</td>"
    override = r.get("override")
    hidden = (f'<input type=hidden name=csrf value="{h(csrf)}"><input type=hidden name=service '
              f'value="{h(s.get("name"))}"><input type=hidden name=server value="{h(r.get("name"))}">')
    return (f"<td><form method=post action=/weight class=inline>{hidden}"
            f"<button type=submit name=action value=quiesce {'disabled ' if override == 0 else ''}title='weight 0: open "
            f"connections go on, no new ones'>Quiesce</button> "
            f"<button type=submit name=action value=activate {'disabled ' if override is None else ''}title='clear the "
            f"override: back to the configured weight'>Activate</button></form></td>")
