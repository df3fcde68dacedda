"""The web console: aiohttp on the engine's asyncio loop, server-rendered HTML, one password.

Pages (all behind a login; without a session a page redirects to /login and /api/ answers 401):

    GET  /login, POST /login     the password form (failed attempts are logged and slowed)
    POST /logout
    GET  /status                 control/monitoring: role, data plane, services, real servers,
                                 weight, health, ActiveConn/InActConn; ?refresh=N reloads the page
    GET  /global, /redundancy, /virtual   the running configuration, read-only
    POST /reload                 Engine.control({"cmd": "reload"}), the path `lb reload` takes
    POST /weight                 Quiesce / Activate one real server: Engine.control({"cmd": "weight",
                                 ...}), the path `lb quiesce` / `lb activate` take
    GET  /api/status             Engine.status() as JSON (what `lb status --json` prints)

Every POST carries the session's CSRF token (form field ``csrf`` or header X-CSRF-Token) and,
when the browser sends one, an Origin of this very host.  The engine object needs ``cfg``,
``status()`` and ``async control(request)``; connection counts come from ``counts()``
(default: the instance's table, read as `lb list` reads it).
"""
from __future__ import annotations

import asyncio
import hmac
import html
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from lb import weight as lbweight
from lb.config.model import endpoint_text as _endpoint
from lb.config.model import sorry_text
from lb.web import password

log = logging.getLogger("lb.web")

COOKIE = "lb_session"
IDLE_TIMEOUT = 8 * 3600.0
MAX_SESSIONS = 32
FAIL_DELAY = 1.0
REFRESH_CHOICES = (5, 10, 30, 60)
COUNTS_TIMEOUT = 5.0

# no scripts at all; the one stylesheet is inline; forms post to this origin only
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STYLE = """
body{font-family:sans-serif;margin:0 1.5em 2em;color:#222}
nav{background:#333;margin:0 -1.5em 1em;padding:.5em 1.5em}
nav a{color:#fff;margin-right:1.2em;text-decoration:none}nav a.on{text-decoration:underline}
nav form{display:inline;float:right}
table{border-collapse:collapse;margin:.3em 0 1.2em}th,td{border:1px solid #bbb;padding:.2em .6em;text-align:left}
th{background:#eee}.up{color:#080}.down,.err{color:#b00}.note{color:#555}.override{font-weight:bold;color:#a60}
td form{display:inline;margin:0}
.box{border:1px solid #999;padding:.5em 1em;margin:.8em 0}.ok{border-color:#080}.bad{border-color:#b00}
"""

# request storage of the middleware's session lookup (a typed key where aiohttp has them)
SESSION = web.RequestKey("session", object) if hasattr(web, "RequestKey") else "session"

NAV = (("/status", "Control/Monitoring"), ("/global", "Global settings"), ("/redundancy", "Redundancy"),
       ("/virtual", "Virtual servers"))


def h(value) -> str:
    """Escaped text of any value (None as "-")."""
    return "-" if value is None else html.escape(str(value), quote=True)


@dataclass
class Session:
    token: str
    csrf: str
    remote: str
    last: float
    flash: dict | None = field(default=None)


class Console:
    """The application's state: sessions, the password file, the engine it shows."""

    def __init__(self, engine, password_file: str | os.PathLike, *, counts=None,
                 fail_delay: float = FAIL_DELAY, idle_timeout: float = IDLE_TIMEOUT, clock=time.monotonic):
        self.engine = engine
        self.password_file = Path(password_file)
        self.counts = counts if counts is not None else (lambda: read_counts(engine))
        self.fail_delay = fail_delay
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self._login_lock = asyncio.Lock()    # one password check (and failure delay) at a time

    # ---- the application ----
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self.root)
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/status", self.status_page)
        app.router.add_get("/global", self.global_page)
        app.router.add_get("/redundancy", self.redundancy_page)
        app.router.add_get("/virtual", self.virtual_page)
        app.router.add_post("/reload", self.reload)
        app.router.add_post("/weight", self.weight)
        app.router.add_get("/api/status", self.api_status)
        return app

    # ---- sessions ----
    def _session(self, request: web.Request) -> Session | None:
        now = self.clock()
        for token in [t for t, s in self.sessions.items() if now - s.last > self.idle_timeout]:
            log.info("web console: session from %s expired after %.0f h idle", self.sessions[token].remote,
                     self.idle_timeout / 3600)
            del self.sessions[token]
        token = request.cookies.get(COOKIE, "")
        for known, sess in self.sessions.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return sess
        return None

    def _new_session(self, remote: str) -> Session:
        if len(self.sessions) >= MAX_SESSIONS:
            oldest = min(self.sessions.values(), key=lambda s: s.last)
            del self.sessions[oldest.token]
        sess = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), remote, self.clock())
        self.sessions[sess.token] = sess
        return sess

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        sess = self._session(request)
        request[SESSION] = sess
        if request.method not in ("GET", "HEAD", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        if request.method == "POST" and not _same_origin(request):
            log.warning("web console: refused a cross-origin POST %s from %s (Origin %s)", request.path,
                        request.remote, request.headers.get("Origin"))
            return _finish(web.Response(status=403, text="cross-origin request refused"))
        if request.path != "/login":
            if sess is None:
                if request.path.startswith("/api/"):
                    return _finish(web.json_response({"error": "login required"}, status=401))
                return _finish(_see_other("/login"))
            sess.last = self.clock()
            if request.method == "POST":
                form = await request.post()
                sent = str(form.get("csrf") or request.headers.get("X-CSRF-Token", ""))
                if not hmac.compare_digest(sent.encode(), sess.csrf.encode()):
                    log.warning("web console: refused POST %s from %s without a valid CSRF token",
                                request.path, request.remote)
                    return _finish(web.Response(status=403, text="missing or wrong CSRF token: reload the page"))
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = e
        return _finish(resp)

    async def root(self, request: web.Request) -> web.StreamResponse:
        return _see_other("/status")

    # ---- login ----
    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if request[SESSION] is not None:
            return _see_other("/status")
        return self._login_page()

    def _login_page(self, error: str | None = None, status: int = 200) -> web.Response:
        body = ["<h1>lb web console</h1>"]
        if error:
            body.append(f'<p class="err">{h(error)}</p>')
        body.append(f'<p class="note">instance {h(self.engine.cfg.instance)}</p>'
                    '<form method="post" action="/login">'
                    '<label>Password <input type="password" name="password" autofocus required></label> '
                    '<button type="submit">Log in</button></form>')
        return _page("Log in", "".join(body), status=status)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = str(form.get("password", ""))
        remote = request.remote or "?"
        async with self._login_lock:
            loop = asyncio.get_running_loop()
            try:
                line = await loop.run_in_executor(None, password.read, self.password_file)
                ok = await loop.run_in_executor(None, password.verify, given, line)
            except password.PasswordFileError as e:
                log.error("web console: login from %s refused: %s", remote, e)
                await asyncio.sleep(self.fail_delay)
                return self._login_page("The password file cannot be read: see the daemon's log.", 503)
            if not ok:
                log.warning("web console: failed login from %s", remote)
                await asyncio.sleep(self.fail_delay)
                return self._login_page("Wrong password.", 401)
        old = request[SESSION]
        if old is not None:
            self.sessions.pop(old.token, None)
        sess = self._new_session(remote)
        log.info("web console: login from %s", remote)
        resp = _see_other("/status")
        resp.set_cookie(COOKIE, sess.token, httponly=True, samesite="Strict", path="/")
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        sess = request[SESSION]
        self.sessions.pop(sess.token, None)
        log.info("web console: logout from %s", request.remote)
        resp = _see_other("/login")
        resp.del_cookie(COOKIE, path="/")
        return resp

    # ---- actions ----
    async def reload(self, request: web.Request) -> web.StreamResponse:
        sess = request[SESSION]
        log.info("web console: reload requested from %s", request.remote)
        try:
            reply = await self.engine.control({"cmd": "reload"})
        except Exception as e:   # the console goes on and says why
            log.exception("web console: reload failed")
            reply = {"ok": False, "error": f"reload failed: {type(e).__name__}: {e}"}
        sess.flash = reply
        return _see_other("/status")

    async def weight(self, request: web.Request) -> web.StreamResponse:
        """Quiesce (override weight 0) or Activate (clear the override) one real server."""
        sess = request[SESSION]
        form = await request.post()
        action, service, server = (str(form.get(k, "")) for k in ("action", "service", "server"))
        if action not in ("quiesce", "activate"):
            sess.flash = {"ok": False, "error": f"unknown action {action!r} (quiesce, activate)"}
            return _see_other("/status")
        log.info("web console: %s real server %s of %s requested from %s", action, server, service, request.remote)
        try:
            reply = await self.engine.control({"cmd": "weight", "service": service, "server": server,
                                               "weight": 0 if action == "quiesce" else None})
        except Exception as e:   # the console goes on and says why
            log.exception("web console: %s failed", action)
            reply = {"ok": False, "error": f"{action} failed: {type(e).__name__}: {e}"}
        sess.flash = reply
        return _see_other("/status")

    async def api_status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.engine.status())

    # ---- pages ----
    def _layout(self, request: web.Request, title: str, body: str, here: str, head: str = "") -> web.Response:
        sess = request[SESSION]
        links = "".join(f'<a href="{path}"{" class=on" if path == here else ""}>{h(name)}</a>'
                        for path, name in NAV)
        nav = (f"<nav>{links}<form method=post action=/logout>"
               f'<input type=hidden name=csrf value="{h(sess.csrf)}"><button type=submit>Log out</button></form></nav>')
        return _page(title, nav + f"<h1>{h(title)}</h1>" + body, head=head)

    async def status_page(self, request: web.Request) -> web.StreamResponse:
        sess = request[SESSION]
        refresh = request.query.get("refresh", "")
        refresh_s = int(refresh) if refresh.isdigit() and int(refresh) in REFRESH_CHOICES else 0
        doc = self.engine.status()
        counts, counts_error = await self._counts()
        out = []
        if sess.flash is not None:
            out.append(_reload_result(sess.flash))
            sess.flash = None
        out.append(f'<p>instance <b>{h(doc.get("instance"))}</b> &middot; pid {h(doc.get("pid"))} &middot; '
                   f'role <b>{h(doc.get("role"))}</b> &middot; data plane <b>{h(doc.get("dataplane"))}</b>'
                   f' &middot; config {h(doc.get("config"))} &middot; at {h(_clock(doc.get("at")))}</p>')
        choices = " ".join(
            f'<a href="/status?refresh={n}">{n} s</a>' if n != refresh_s else f"<b>{n} s</b>"
            for n in REFRESH_CHOICES)
        off = '<a href="/status">off</a>' if refresh_s else "<b>off</b>"
        out.append(f'<p>auto-refresh: {off} {choices}</p>')
        out.append(f'<form method=post action=/reload><input type=hidden name=csrf value="{h(sess.csrf)}">'
                   f'<button type=submit>Reload config</button> <span class=note>The configuration is edited '
                   f'in the file {h(doc.get("config"))} and applied with reload (or <code>lb reload</code>); '
                   f'a file with errors is refused and changes nothing. For maintenance, Quiesce takes a real '
                   f'server out (weight 0: open connections go on, no new ones) and Activate puts it back '
                   f'(<code>lb quiesce</code> / <code>lb activate</code>); this override lives in the running daemon: '
                   f'it survives reloads, not a restart.</span></form>')
        ha = doc.get("ha")
        if ha:
            out.append(_ha_summary(ha))
        if counts_error:
            out.append(f'<p class="err">connection counts unavailable: {h(counts_error)}</p>')
        if not doc.get("services"):
            out.append("<p>No virtual services are configured.</p>")
        for s in doc.get("services", []):
            out.append(_service_status(s, counts, sess.csrf))
        head = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
        return self._layout(request, "Control/Monitoring", "".join(out), "/status", head=head)

    async def _counts(self) -> tuple[dict, str | None]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, self.counts), COUNTS_TIMEOUT), None
        except asyncio.TimeoutError:
            return {}, f"reading the table took more than {COUNTS_TIMEOUT:g} s"
        except Exception as e:
            return {}, f"{type(e).__name__}: {e}"

    async def global_page(self, request: web.Request) -> web.StreamResponse:
        cfg = self.engine.cfg
        t, to = cfg.tables, cfg.timeouts
        rows = [("instance", cfg.instance), ("config file", cfg.path), ("public_interface", cfg.public_interface),
                ("private_interface", cfg.private_interface), ("network", cfg.network),
                ("dataplane", cfg.dataplane), ("nat_router", cfg.nat_router),
                ("nat_router_device", cfg.nat_router_device), ("expire_nodest_conn", cfg.expire_nodest_conn),
                ("lblc_expiration", cfg.lblc_expiration), ("lblcr_expiration", cfg.lblcr_expiration)]
        body = [_note_readonly(cfg), "<h2>[global]</h2>", _kv(rows),
                "<h2>[timeouts]</h2>", _kv([("tcp", to.tcp), ("tcpfin", to.tcpfin), ("udp", to.udp)]),
                "<h2>[tables]</h2>", _kv([("connections", t.connections), ("services", t.services),
                                          ("real_servers", t.real_servers),
                                          ("reals_per_service", t.reals_per_service)]),
                "<h2>[web]</h2>", _kv([("enabled", cfg.web.enabled), ("listen", cfg.web.listen),
                                       ("password_file", cfg.web.password_path(cfg.instance))])]
        return self._layout(request, "Global settings", "".join(body), "/global")

    async def redundancy_page(self, request: web.Request) -> web.StreamResponse:
        cfg = self.engine.cfg
        ha = cfg.ha
        body = [_note_readonly(cfg)]
        if ha is None:
            body.append("<p>No [ha] table: this is a single director, always active.</p>")
        else:
            body.append(_kv([("primary", ha.primary), ("backup", ha.backup),
                             ("primary_private", ha.primary_private), ("backup_private", ha.backup_private),
                             ("heartbeat_port", ha.heartbeat_port), ("keepalive", f"{ha.keepalive:g} s"),
                             ("deadtime", f"{ha.deadtime:g} s"), ("preempt", ha.preempt),
                             ("monitor_links", ha.monitor_links), ("key_file", ha.key_file),
                             ("garp_count", ha.garp_count), ("garp_interval", f"{ha.garp_interval:g} s"),
                             ("garp_refresh", f"{ha.garp_refresh:g} s"), ("sync", ha.sync),
                             ("sync_interval", f"{ha.sync_interval:g} s"), ("sync_rate", ha.sync_rate),
                             ("max_skew", f"{ha.max_skew:g} s"), ("notify", " ".join(ha.notify) or None)]))
            live = self.engine.status().get("ha")
            if live:
                body.append("<h2>Now</h2>" + _ha_summary(live))
        return self._layout(request, "Redundancy", "".join(body), "/redundancy")

    async def virtual_page(self, request: web.Request) -> web.StreamResponse:
        cfg = self.engine.cfg
        body = [_note_readonly(cfg)]
        if not cfg.virtual_servers:
            body.append("<p>No virtual servers are configured.</p>")
        for vs in cfg.virtual_servers:
            body.append(_virtual_server(vs))
        return self._layout(request, "Virtual servers", "".join(body), "/virtual")


# ---- rendering helpers ----

def _page(title: str, body: str, status: int = 200, head: str = "") -> web.Response:
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{h(title)} - lb</title>'
           f"{head}<style>{STYLE}</style></head><body>{body}</body></html>")
    return web.Response(text=doc, content_type="text/html", status=status)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _finish(resp: web.StreamResponse) -> web.StreamResponse:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True                       # not sent (e.g. scripts): the CSRF token decides
    return origin == f"{request.scheme}://{request.host}"


def _clock(t) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else None


def _kv(rows) -> str:
    return "<table>" + "".join(f"<tr><th>{h(k)}</th><td>{h(v)}</td></tr>" for k, v in rows) + "</table>"


def _note_readonly(cfg) -> str:
    return (f'<p class="note">Read from the running configuration. To change it, edit {h(cfg.path)} and '
            f'apply it with "Reload config" on the Control/Monitoring page (or <code>lb reload</code>).</p>')


def _reload_result(reply: dict) -> str:
    if reply.get("ok"):
        return f'<div class="box ok">{h(reply.get("message", "reloaded"))}</div>'
    items = []
    for i in reply.get("issues") or []:
        where = h(i.get("path")) + ("" if i.get("line") is None else f":{h(i.get('line'))}")
        fld = f" {h(i.get('field'))}:" if i.get("field") else ""
        items.append(f"<li><code>{where}:{fld} {h(i.get('message'))}</code></li>")
    issues = f"<ul>{''.join(items)}</ul>" if items else ""
    # the engine's reply says what it left in place (Engine._reload_reply: "changed")
    changed = reply.get("changed", False)
    if changed is False:
        after = "Nothing was changed: the running configuration stays as it was."
        if reply.get("rolled_back"):
            after = "Nothing was changed: what had been written was undone, the previous configuration runs."
    elif changed is True:
        after = "The previous configuration could not be fully restored: the data plane holds part of the " \
                "new one (see the error). Fix the cause and reload, or restart lb."
    else:
        after = "What was changed is not known: see the daemon's log."
    return f'<div class="box bad"><b>{h(reply.get("error", "reload failed"))}</b>{issues}<p>{h(after)}</p></div>'


def _ha_summary(ha: dict) -> str:
    peer = ha.get("peer") or {}
    rows = [("this node", ha.get("node")), ("role", ha.get("role")),
            ("in this role for", None if ha.get("since_s") is None else f"{ha['since_s']:.0f} s"),
            ("role changes", ha.get("role_changes")), ("peer", peer.get("state")),
            ("peer alive", peer.get("alive")),
            ("peer last heard", None if peer.get("last_heard_s") is None else f"{peer['last_heard_s']:.1f} s ago")]
    for name, ch in (ha.get("channels") or {}).items():
        last = ch.get("last_heartbeat_s")
        rows.append((f"channel {name}", f"{ch.get('local')} -> {ch.get('peer')}:{ch.get('port')}, last heartbeat "
                     + ("never" if last is None else f"{last:.1f} s ago")
                     + f", rx {ch.get('rx')} tx {ch.get('tx')}"))
    return _kv(rows)


def service_key(s: dict) -> tuple:
    """The key of a status() service that read_counts uses."""
    return ("fwm", s["fwmark"]) if s.get("fwmark") else (s["protocol"], s["address"], s["port"])


def _weight_cell(r: dict) -> str:
    """The weight column: the effective weight, and why when it is not the configured one (the
    operator's override, the load monitor's, health) -- lb.weight's text, as `lb status` says it."""
    w = lbweight.from_status(r)
    if w.source == lbweight.CONFIGURED:
        return f"<td>{h(w.value)}</td>"
    cls = " class=override" if w.source == lbweight.OVERRIDE else ""
    return f"<td{cls}>{h(w.text().removeprefix('weight '))}</td>"


def _maintenance(s: dict, r: dict, csrf: str | None) -> str:
    """Quiesce / Activate buttons of one real server (none for inactive ones: the file rules)."""
    if csrf is None:
        return ""
    if not s.get("active", True) or not r.get("active", True):
        return "<td class=note>inactive in the file</td>"
    override = r.get("override")
    hidden = (f'<input type=hidden name=csrf value="{h(csrf)}"><input type=hidden name=service '
              f'value="{h(s.get("name"))}"><input type=hidden name=server value="{h(r.get("name"))}">')
    quiesce = "disabled " if override == 0 else ""
    activate = "disabled " if override is None else ""
    return (f"<td><form method=post action=/weight>{hidden}"
            f"<button type=submit name=action value=quiesce {quiesce}title='weight 0: open connections go on, "
            f"no new ones'>Quiesce</button> "
            f"<button type=submit name=action value=activate {activate}title='clear the override: back to the "
            f"configured weight'>Activate</button></form></td>")


def _service_status(s: dict, counts: dict, csrf: str | None = None) -> str:
    where = f"FWM {s['fwmark']}" if s.get("fwmark") else \
        f"{s['protocol'].upper()} {_endpoint(s['address'], s['port'])}"
    notes = [f"scheduler {s.get('scheduler')}", f"monitor {s.get('monitor')}"]
    if not s.get("active", True):
        notes.append("INACTIVE")
    if s.get("sorry_server"):
        notes.append(f"sorry server {s['sorry_server']}" + (" (IN USE)" if s.get("on_sorry_server") else ""))
    key = service_key(s)
    rows = []
    for r in s.get("real_servers", []):
        health = r.get("health", "-") if r.get("active", True) else "inactive"
        cls = "up" if health == "up" else "down" if health == "down" else ""
        active, inactive = counts.get((key, r["address"], r["port"]), (None, None))
        last = r.get("last_check")
        check = "-" if not last else f"{'ok' if last.get('ok') else 'FAIL'} {_clock(last.get('at'))}: {last.get('detail')}"
        rows.append(f"<tr><td>{h(r.get('name'))}</td><td>{h(_endpoint(r['address'], r['port']))}</td>"
                    f"{_weight_cell(r)}<td class='{cls}'>{h(health)}</td><td>{h(active)}</td>"
                    f"<td>{h(inactive)}</td><td>{h(check)}</td><td>{h(r.get('reason'))}</td>"
                    f"{_maintenance(s, r, csrf)}</tr>")
    table = ("<table><tr><th>Real server</th><th>Address</th><th>Weight</th><th>Health</th>"
             "<th>ActiveConn</th><th>InActConn</th><th>Last check</th><th>Reason</th>"
             + ("<th>Maintenance</th>" if csrf is not None else "") + "</tr>"
             + "".join(rows) + "</table>") if rows else "<p>No real servers.</p>"
    return f"<h2>{h(s.get('name'))}: {h(where)}</h2><p>{h(' · '.join(notes))}</p>{table}"


def _virtual_server(vs) -> str:
    where = f"FWM {vs.fwmark}" if vs.fwmark else f"{vs.protocol.upper()} {_endpoint(vs.address, vs.port)}"
    rows = [("address", where), ("active", vs.active), ("scheduler", vs.scheduler),
            ("scheduler_flags", " ".join(vs.scheduler_flags) or None),
            ("persistent", f"{vs.persistent} s" if vs.persistent else "off"), ("pmask", vs.pmask),
            ("device", vs.device), ("sorry_server", None if vs.sorry_server is None else sorry_text(vs.sorry_server)),
            ("quiesce_server", vs.quiesce_server)]
    if vs.scheduler == "mh":
        rows.append(("mh_size", vs.mh_size))
    for g in vs.port_groups:
        rows.append(("port_group", f"{g.protocol} {g.address} {g.low}-{g.high}"))
    m = vs.monitor
    mon = [("kind", m.kind)]
    if m.kind != "none":
        if m.kind in ("send_expect", "udp"):
            mon += [("send", repr(m.send)), ("expect", repr(m.expect)), ("use_regex", m.use_regex)]
        if m.kind in ("http", "https"):
            mon += [("path", m.path), ("host", m.host), ("status", f"{m.status[0]}-{m.status[1]}"),
                    ("body_regex", m.body_regex)]
            if m.kind == "https":
                mon.append(("tls_verify", m.tls_verify))
        if m.kind == "program":
            mon.append(("program", m.program))
        mon += [("port", m.port or "the real server's"), ("interval", f"{m.interval:g} s"),
                ("timeout", f"{m.timeout:g} s (dead after this long without success)"),
                ("reentry", f"{m.reentry:g} s (alive this long before it returns)"),
                ("connect_timeout", f"{m.connect_timeout:g} s"),
                ("quiesce", "weight 0 when dead" if m.quiesce else "removed when dead")]
    lm = vs.load_monitor
    load = "" if lm is None else "<h3>Load monitor</h3>" + _kv(
        [("kind", lm.kind), ("port" if lm.kind == "agent" else "program", lm.port if lm.kind == "agent" else lm.program),
         ("interval", f"{lm.interval:g} s"), ("timeout", f"{lm.timeout:g} s"), ("min_weight", lm.min_weight)])
    reals = "".join(
        f"<tr><td>{h(r.name)}</td><td>{h(_endpoint(r.address, r.effective_port(vs)))}</td><td>{h(r.weight)}</td>"
        f"<td>{h(r.active)}</td><td>{h(r.u_threshold or None)}</td><td>{h(r.l_threshold or None)}</td></tr>"
        for r in vs.real_servers)
    reals_table = ("<table><tr><th>Real server</th><th>Address</th><th>Weight</th><th>Active</th>"
                   "<th>u_threshold</th><th>l_threshold</th></tr>" + reals + "</table>") if reals else \
        "<p>No real servers.</p>"
    return (f"<h2>{h(vs.name)}</h2>" + _kv(rows) + "<h3>Real servers</h3>" + reals_table
            + "<h3>Monitor</h3>" + _kv(mon) + load)


# ---- connection counts (ActiveConn / InActConn), read as `lb list` reads them ----

def read_counts(engine) -> dict:
    """{(service key, real address, port): (active, inactive)} from the running table."""
    rows = engine.dp.read_services()
    out = {}
    for row in rows:
        skey = ("fwm", row.fwmark) if row.fwmark else (row.protocol.lower(), str(row.address), row.port)
        for r in row.reals:
            out[(skey, str(r.address), r.port)] = (r.active, r.inactive)
    return out


# ---- serving it on the engine's loop ----

class Running:
    """A console that listens; ``stop()`` on shutdown."""

    def __init__(self, runner: web.AppRunner, console: Console, settings, url: str):
        self.runner = runner
        self.console = console
        self.settings = settings
        self.url = url

    def reloaded(self, cfg) -> None:
        """After a reload: [web] changes take effect at the next start."""
        if cfg.web != self.settings:
            log.warning("web console: the [web] settings changed; they take effect when lb restarts "
                        "(the console goes on as %s)", self.url)

    async def stop(self) -> None:
        await self.runner.cleanup()
        log.info("web console stopped")


async def start(engine) -> Running | None:
    """Serve the console of ``engine`` on its [web] address; None (after a log line) when it cannot:
    no usable password file (the console never runs open), or the address cannot be bound."""
    cfg = engine.cfg
    settings = cfg.web
    pwfile = settings.password_path(cfg.instance)
    try:
        password.read(pwfile)
    except password.PasswordFileError as e:
        log.error("web console not started: %s", e)
        return None
    mode = stat.S_IMODE(os.stat(pwfile).st_mode)
    if mode & 0o077:
        log.warning("web console: %s is readable by others (mode %04o): `lb passwd` writes it 0600", pwfile, mode)
    console = Console(engine, pwfile)
    runner = web.AppRunner(console.app(), access_log=None, handle_signals=False)
    await runner.setup()
    host = str(settings.address)
    try:
        site = web.TCPSite(runner, host, settings.port)
        await site.start()
    except OSError as e:
        await runner.cleanup()
        log.error("web console not started: cannot listen on %s: %s", settings.listen, e.strerror or e)
        return None
    url = f"http://{settings.listen}/"
    log.info("web console on %s (password file %s)", url, pwfile)
    return Running(runner, console, settings, url)
