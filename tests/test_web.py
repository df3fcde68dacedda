"""The web console (lb.web, `lb web`) over a real Engine's control requests: login (user name,
per-client throttling), sessions (absolute lifetime), Host allow-list, trusted proxies (a TLS
reverse proxy), CSRF and Origin (every state-changing POST, and a cross-origin login), 400 for
bad parameters; every screen's edit through the daemon (validated as `lb check`, written in the
file's format with the previous version kept, applied with the reload, a refused one leaving
file and running config as they were, concurrent edits refused); `lb passwd` with a user name;
the [web] table; and a fuzzer of the form posts."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import re
import stat
import sys
import types
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lb import config as lbconfig
from lb.cli.main import main as lb_main
from lb.config import store
from lb.engine import Engine, ReloadRefused
from lb.web import app as webapp
from lb.web import password
from fuzzseed import SEED, named

PASSWORD = "correct horse battery"
USER = "operator"

CONFIG = """
[global]
instance = "webtest"
public_interface = "eth0"

[[virtual_server]]
name = "{name}"
address = "198.18.0.10"
port = 80
scheduler = "rr"
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"
  weight = {weight}
  [[virtual_server.real_server]]
  name = "rs2"
  address = "198.18.1.12"
{web}
"""


def write_config(path: Path, name: str = "web", weight: str = "3", web: str = "") -> Path:
    path.write_text(CONFIG.format(name=name, weight=weight, web=web))
    return path


class DaemonEngine(Engine):
    """A real Engine answering the control requests (status, config, config-put, weight ...),
    never started: its reload takes the file's configuration as the daemon does (Engine.reload_config:
    a bad file, or a change only a restart makes, is refused with the daemon's own reply) but has no
    data plane to apply to; "table" gives fixed counts."""

    def __init__(self, cfg_path: Path):
        super().__init__(lbconfig.load(cfg_path))
        self.requests: list[dict] = []

    async def control(self, req: dict) -> dict:
        self.requests.append(req)
        cmd = req.get("cmd")
        if cmd == "reload":
            keep = req.get("keep_restart_only") is True
            try:
                new = self.reload_config(keep)
            except ReloadRefused:
                return self._reload_reply(keep)
            self.cfg = new
            return {"ok": True, "message": f"reloaded {self.cfg.path}"}
        if cmd == "table":
            return {"ok": True, "services": [{"protocol": "tcp", "address": "198.18.0.10", "port": 80, "fwmark": 0,
                                              "rate": {"conns": 12, "inpkts": 40, "outpkts": 38, "inbytes": 4000,
                                                       "outbytes": 52000},
                                              "reals": [{"address": "198.18.1.11", "port": 80, "active": 3,
                                                         "inactive": 7, "rate": {"conns": 12, "inbytes": 4000,
                                                                                 "outbytes": 52000}}]}]}
        return await super().control(req)

    async def __call__(self, cmd, **args):
        """As over the control socket: JSON both ways."""
        req = json.loads(json.dumps({"cmd": cmd, **args}))
        return json.loads(json.dumps(await self.control(req)))


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / "web.passwd"
    password.write(p, PASSWORD, USER)
    return p


def make_console(tmp_path, pwfile, config_text: str | None = None, **settings):
    path = tmp_path / "lb.toml"
    if config_text is None:
        write_config(path)
    else:
        path.write_text(config_text)
    eng = DaemonEngine(path)
    return webapp.Console(eng, pwfile, webapp.Settings(instance="webtest", **settings), fail_delay=0.05)


@pytest.fixture
def console(tmp_path, pwfile):
    return make_console(tmp_path, pwfile)


def run(console, body):
    async def go():
        client = TestClient(TestServer(console.app()))
        await client.start_server()
        try:
            return await body(client)
        finally:
            await client.close()
    return asyncio.run(go())


async def login(client, pw=PASSWORD, user=USER, headers=None):
    return await client.post("/login", data={"user": user, "password": pw}, allow_redirects=False, headers=headers)


async def form_of(client, path) -> dict:
    """The csrf and version of the form on ``path``."""
    text = await (await client.get(path)).text()
    out = dict(re.findall(r'name=(csrf|version) value="([^"]*)"', text))
    assert "csrf" in out, text
    return out


def own_origin(client) -> str:
    """The console's own origin, as a browser on its pages sends it in Origin."""
    return str(client.make_url("")).rstrip("/")


def engine(console) -> DaemonEngine:
    return console.daemon


# ---- login, sessions, CSRF, Host, proxies ---------------------------------------------------

def test_every_page_redirects_to_login_without_a_session(console):
    async def body(client):
        for path in ("/", "/status", "/global", "/redundancy", "/virtual", "/virtual/edit", "/config", "/password"):
            r = await client.get(path, allow_redirects=False)
            assert (r.status, r.headers.get("Location")) == (303, "/login"), path
        r = await client.get("/api/status", allow_redirects=False)
        assert r.status == 401
        for path in ("/reload", "/logout", "/global", "/virtual/edit"):
            r = await client.post(path, data={"csrf": "x"}, allow_redirects=False)
            assert (r.status, r.headers.get("Location")) == (303, "/login"), path
        r = await client.get("/login")
        assert r.status == 200 and 'type="password"' in await r.text() and 'name="user"' in await r.text()
        r = await client.get("/static/console.css")
        assert r.status == 200 and "font" in await r.text()
    run(console, body)
    assert engine(console).requests == []


def test_user_name_and_password_both_count(console, caplog):
    async def body(client):
        r = await login(client, user="root")
        assert r.status == 401 and "Wrong user name or password" in await r.text()
        assert "Set-Cookie" not in r.headers
        await asyncio.sleep(0.1)
        r = await login(client)
        assert (r.status, r.headers["Location"]) == (303, "/status")
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("lb_session_webtest=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie      # plain HTTP
        r = await client.get("/status", allow_redirects=False)
        assert r.status == 200 and "Control/Monitoring" in await r.text()
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    with caplog.at_level(logging.WARNING, logger="lb.web"):
        run(console, body)
    assert "failed login from 127.0.0.1 (user 'root';" in caplog.text


def test_two_instances_consoles_on_one_host_keep_their_own_sessions(tmp_path, pwfile):
    """A browser sends a host's cookies to every port of it: with both consoles' cookie named
    lb_session, logging in to instance b's console (port 3637) replaced instance a's (3636)
    cookie, and a's next page was the login page.  Each instance has its own cookie now."""
    import aiohttp
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    consoles = {name: webapp.Console(DaemonEngine(write_config(tmp_path / name / "lb.toml")), pwfile,
                                     webapp.Settings(instance=name), fail_delay=0.05) for name in ("a", "b")}

    async def go():
        servers = {name: TestServer(c.app(), host="127.0.0.1") for name, c in consoles.items()}
        for server in servers.values():
            await server.start_server()
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                for name in ("a", "b"):
                    r = await browser.post(servers[name].make_url("/login"), data={"user": USER, "password": PASSWORD},
                                           allow_redirects=False)
                    assert r.status == 303, await r.text()
                    await asyncio.sleep(0.1)
                return {name: (await browser.get(servers[name].make_url("/status"), allow_redirects=False)).status
                        for name in ("a", "b")}
        finally:
            for server in servers.values():
                await server.close()
    assert asyncio.run(go()) == {"a": 200, "b": 200}


def test_login_throttling_is_per_client_not_global(tmp_path, pwfile):
    """An attacker's failures make the attacker wait, not the administrator on another address."""
    console = make_console(tmp_path, pwfile, trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))
    console.throttle.base = 30.0
    attacker, admin = {"X-Forwarded-For": "198.18.0.66"}, {"X-Forwarded-For": "198.18.0.2"}

    async def body(client):
        r = await login(client, "guess-1", headers=attacker)
        assert r.status == 401
        r = await login(client, PASSWORD, headers=attacker)       # even the right one: not checked now
        assert r.status == 429 and "try again in" in await r.text()
        r = await login(client, PASSWORD, headers=admin)
        assert r.status == 303
    run(console, body)
    assert list(console.throttle.clients) == ["198.18.0.66"]


def test_behind_a_tls_reverse_proxy_login_works_and_the_cookie_is_secure(tmp_path, pwfile):
    proxy = {"X-Forwarded-For": "198.18.0.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "lb.example.com",
             "Origin": "https://lb.example.com"}
    console = make_console(tmp_path, pwfile, allowed_hosts=("lb.example.com",),
                           trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))

    async def body(client):
        r = await login(client, headers=proxy)
        assert r.status == 303, await r.text()
        assert "Secure" in r.headers["Set-Cookie"]        # so the test client (plain HTTP) keeps it back:
        cookie = {**proxy, "Cookie": f"lb_session_webtest={next(iter(console.sessions))}"}   # the browser's, by hand
        page = await (await client.get("/global", headers=cookie)).text()
        token = re.search(r'name=csrf value="([^"]*)"', page).group(1)
        r = await client.post("/reload", data={"csrf": token}, headers=cookie, allow_redirects=False)
        assert (r.status, r.headers["Location"]) == (303, "/status")
    run(console, body)
    assert next(iter(console.sessions.values())).remote == "198.18.0.7"
    # the same headers from an address that is not a trusted proxy are not believed
    untrusted = make_console(tmp_path, pwfile, allowed_hosts=("lb.example.com",))

    async def body2(client):
        r = await login(client, headers=proxy)
        assert r.status == 403                  # X-Forwarded-* ignored: https://lb.example.com is not its origin
    run(untrusted, body2)


def test_strict_transport_security_only_over_https_and_when_asked(tmp_path, pwfile):
    """With [web] hsts, HSTS on every answer the browser gets over HTTPS (here through a trusted
    TLS proxy; the console's own TLS in test_web_process), never over plain HTTP nor on an
    untrusted client's say; without it (the default), never: browsers apply it to every port of
    the host name, the plain-HTTP metrics endpoint's too."""
    console = make_console(tmp_path, pwfile, allowed_hosts=("lb.example.com",), hsts=True,
                           trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))
    https = {"X-Forwarded-For": "198.18.0.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "lb.example.com"}

    async def body(client):
        for path in ("/login", "/status", "/static/console.css", "/nowhere"):
            r = await client.get(path, headers=https, allow_redirects=False)
            assert r.headers.get("Strict-Transport-Security") == "max-age=31536000", (path, r.status)
            r = await client.get(path, headers={**https, "X-Forwarded-Proto": "http"}, allow_redirects=False)
            assert "Strict-Transport-Security" not in r.headers, path
    run(console, body)
    untrusted = make_console(tmp_path, pwfile, allowed_hosts=("lb.example.com",), hsts=True)

    async def body2(client):
        r = await client.get("/login", headers=https)
        assert r.status == 200 and "Strict-Transport-Security" not in r.headers
    run(untrusted, body2)
    default = make_console(tmp_path, pwfile, allowed_hosts=("lb.example.com",),
                           trusted_proxies=(webapp.ipaddress.ip_network("127.0.0.1/32"),))

    async def body3(client):
        for path in ("/login", "/status", "/static/console.css", "/nowhere"):
            r = await client.get(path, headers=https, allow_redirects=False)
            assert "Strict-Transport-Security" not in r.headers, path
    run(default, body3)
    # the daemon's [web] hsts reaches `lb web` in its "web" reply
    for web, hsts in (("", False), ("[web]\nhsts = true\n", True)):
        eng = DaemonEngine(write_config(tmp_path / "hsts.toml", web=web))
        assert webapp.Settings.from_reply(asyncio.run(eng("web"))).hsts is hsts


def test_host_allow_list_stops_dns_rebinding(console):
    async def body(client):
        r = await client.get("/login", headers={"Host": "attacker.example"})
        assert r.status == 421
        r = await client.post("/login", data={"user": USER, "password": PASSWORD}, headers={"Host": "attacker.example"})
        assert r.status == 421
        assert (await client.get("/login", headers={"Host": "localhost:3636"})).status == 200
    run(console, body)
    assert console.sessions == {}


def test_allowed_hosts_match_ip_literals_as_addresses_and_names_in_any_case(tmp_path, pwfile):
    """[web] allowed_hosts as the config takes them: an IPv6 literal with or without brackets, in
    any spelling, matches the Host a browser sends ("[2001:2::7]:3636"); a name in any case."""
    console = make_console(tmp_path, pwfile, listen_host="2001:2::1",
                           allowed_hosts=("[2001:2::6]", "2001:2:0:0::7", "198.18.0.9", "lb.example.com"))

    async def body(client):
        for host in ("[2001:2::6]:3636", "[2001:2::6]", "[2001:2::7]:3636", "[2001:2:0::7]", "198.18.0.9:3636",
                     "LB.Example.COM:3636", "lb.example.com.", "[2001:2:0:0:0:0:0:1]:3636", "[::1]:3636"):
            assert (await client.get("/login", headers={"Host": host})).status == 200, host
        for host in ("[2001:2::8]:3636", "198.18.0.90", "lb.example.org", "[2001:2::6", "[lb.example.com]x"):
            assert (await client.get("/login", headers={"Host": host})).status == 421, host
    run(console, body)


def test_sessions_end_at_their_lifetime_however_busy(tmp_path, pwfile):
    console = make_console(tmp_path, pwfile, session_lifetime=3600.0)
    now = [1000.0]
    console.clock = lambda: now[0]

    async def body(client):
        await login(client)
        for _ in range(5):                      # the page's auto-update keeps it busy
            now[0] += 700
            assert (await client.get("/status?part=live", allow_redirects=False)).status == 200
        now[0] += 200                           # 3700 s after login
        r = await client.get("/status", allow_redirects=False)
        assert (r.status, r.headers["Location"]) == (303, "/login")
    run(console, body)


@pytest.mark.parametrize("query", ["refresh=%C2%B2", "refresh=7", "refresh=-1", "refresh=", "part=x",
                                   "refresh=" + "1" * 5000],          # int() refuses over 4,300 digits
                         ids=lambda q: q if len(q) < 40 else f"{q[:12]}...({len(q)} chars)")
def test_bad_parameters_are_400(console, query):
    async def body(client):
        await login(client)
        r = await client.get(f"/status?{query}", allow_redirects=False)
        assert r.status == 400 and "bad request" in await r.text()
        r = await client.get("/virtual/real", allow_redirects=False)
        assert r.status == 400
        r = await client.get("/virtual/edit?vs=nope", allow_redirects=False)
        assert r.status == 404
    run(console, body)


# ---- CONTROL/MONITORING ---------------------------------------------------------------------

def test_status_page_table_with_counts_rates_and_auto_update(console):
    async def body(client):
        await login(client)
        return await (await client.get("/status")).text(), await (await client.get("/status?part=live")).text()
    page, live = run(console, body)
    assert '<option value="10" selected>10 s</option>' in page and 'id="now"' in page
    assert '<script src="/static/console.js" defer></script>' in page
    assert '<noscript><meta http-equiv="refresh" content="10"></noscript>' in page
    row = re.search(r'<tr data-rs="rs1">(.*?)</tr>', live).group(1)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
    # name, address, weight, health, ActiveConn, InActConn, CPS, InBPS, OutBPS
    assert cells[:9] == ["rs1", "198.18.1.11:80", "3", "unmonitored", "3", "7", "12", "4.0k", "52.0k"]
    assert "12 conn/s" in live and "serial_no 0" in live


def test_status_page_says_whose_next_hop_does_not_resolve(tmp_path, pwfile):
    """rs1's next hop does not resolve (lb.dataplane.services' nexthop_errors): its Reason cell
    says why and that it gets no new connections, as `lb status` does"""
    console = make_console(tmp_path, pwfile)
    eng = console.daemon
    loop_part = eng._status_of_the_loop

    def with_error():
        doc = loop_part()
        doc["services"][0]["real_servers"][0]["nexthop_error"] = {
            "reason": "real server 198.18.1.11: no ARP/ND answer from 198.18.1.11 on priv0", "kept": False}
        return doc
    eng._status_of_the_loop = with_error

    async def body(client):
        await login(client)
        return await (await client.get("/status?part=live")).text()
    row = re.search(r'<tr data-rs="rs1">(.*?)</tr>', run(console, body)).group(1)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
    assert cells[10] == ("next hop: real server 198.18.1.11: no ARP/ND answer from 198.18.1.11 on priv0; "
                         "NO NEW CONNECTIONS until it answers"), cells


# ---- edits ---------------------------------------------------------------------------------

def post_form(client, path, data):
    return client.post(path, data=data, allow_redirects=False)


async def edit_rs1(client, weight: str):
    """rs1's edit form (the fixture's web service) posted with this weight, the rest as it is"""
    f = await form_of(client, "/virtual/real/edit?vs=web&rs=rs1")
    return await post_form(client, "/virtual/real/edit", {**f, "vs": "web", "rs": "rs1", "rs.name": "rs1",
                                                          "rs.address": "198.18.1.11", "rs.weight": weight,
                                                          "rs.active": "on"})


# the [global] screen's fields of the fixture's file, as its form posts them
GLOBAL_FORM = {"global.public_interface": "eth0", "global.network": "direct", "global.dataplane": "xdp",
               "global.lblc_expiration": "86400", "global.lblcr_expiration": "86400"}


def test_edit_global_saves_toml_keeps_previous_and_reloads(console):
    path = engine(console).cfg.path
    before = path.read_bytes()

    async def body(client):
        await login(client)
        f = await form_of(client, "/global")
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "timeouts.tcp": "600"})
        assert (r.status, r.headers["Location"]) == (303, "/global"), await r.text()
        return await (await client.get("/global")).text()
    page = run(console, body)
    assert "applied" in page
    cfg = engine(console).cfg
    assert cfg.timeouts.tcp == 600 and cfg.serial_no == 1
    assert store.prev_path(path).read_bytes() == before
    assert lbconfig.load(path) == cfg and "serial_no = 1" in path.read_text()


def test_an_edit_keeps_the_global_keys_it_does_not_show_changed(tmp_path, pwfile):
    """A real server's weight edited in a file that sets the four [global] keys lb added to
    Piranha's (dataplane, expire_nodest_conn, lblc_expiration, lblcr_expiration): the file written
    and the running configuration keep them (the console's document left them out, so every save
    turned expire_nodest_conn off and the next start ran the default data plane)."""
    text = CONFIG.format(name="web", weight="3", web="").replace(
        'public_interface = "eth0"\n', 'public_interface = "eth0"\ndataplane = "auto"\nexpire_nodest_conn = true\n'
                                        'lblc_expiration = 600\nlblcr_expiration = 700\n')
    console = make_console(tmp_path, pwfile, text)
    eng = engine(console)
    assert (eng.cfg.dataplane, eng.cfg.expire_nodest_conn, eng.cfg.lblc_expiration) == ("auto", True, 600)

    async def body(client):
        await login(client)
        r = await edit_rs1(client, "5")
        assert r.status == 303, await r.text()
        return await (await client.get("/global")).text()
    page = run(console, body)
    cfg = engine(console).cfg
    assert cfg.serial_no == 1 and cfg.virtual_servers[0].real_servers[0].weight == 5
    assert (cfg.dataplane, cfg.expire_nodest_conn, cfg.lblc_expiration, cfg.lblcr_expiration) == ("auto", True, 600, 700)
    assert lbconfig.load(cfg.path) == cfg
    # and the [global] screen shows them: its form posts them back as they are
    assert '<option value="auto" selected>' in page and 'value="600"' in page and 'value="700"' in page


def test_bad_value_is_shown_next_to_its_field_and_changes_nothing(console):
    path = engine(console).cfg.path
    before, cfg_before = path.read_bytes(), engine(console).cfg

    async def body(client):
        await login(client)
        r = await edit_rs1(client, "heavy")
        return r.status, await r.text()
    status, page = run(console, body)
    assert status == 400
    # the validator's message, `lb check`'s, next to the weight field
    m = re.search(r'<div class="fielderr" data-for="rs.weight">([^<]*)</div>', page)
    assert m and m.group(1) == 'expected an integer, got string &quot;heavy&quot;'
    assert 'value="heavy"' in page                        # the user's input is kept
    assert path.read_bytes() == before and engine(console).cfg is cfg_before
    assert not store.prev_path(path).exists()


def test_concurrent_edit_is_detected_not_overwritten(console):
    path = engine(console).cfg.path

    async def body(client):
        await login(client)
        f = await form_of(client, "/virtual/real/edit?vs=web&rs=rs2")
        hand = path.read_text().replace('name = "rs2"', 'name = "rs2-by-hand"')   # a hand edit meanwhile
        path.write_text(hand)
        r = await post_form(client, "/virtual/real/edit", {**f, "vs": "web", "rs": "rs2", "rs.name": "rs2",
                                                           "rs.address": "198.18.1.12", "rs.weight": "5",
                                                           "rs.active": "on"})
        return r.status, await r.text(), hand
    status, page, hand = run(console, body)
    assert status == 409 and "changed since this page was loaded" in page
    assert path.read_text() == hand


def test_a_stale_lists_button_says_the_list_is_current_not_your_input_is_below(console):
    """Delete on a Virtual servers or Real servers list loaded before a hand edit: refused, and
    the list it goes back to (the current configuration) said "Your input is below: reload the
    page", the edit forms' words, though there was no input and the page was the current one."""
    path = engine(console).cfg.path

    async def body(client):
        await login(client)
        pages = []
        for lst, action, fields in (("/virtual", "/virtual/action", {"vs": "web"}),
                                    ("/virtual/real?vs=web", "/virtual/real/action", {"vs": "web", "rs": "rs2"})):
            f = await form_of(client, lst)
            path.write_text(path.read_text() + "\n# a hand edit\n")
            r = await post_form(client, action, {**f, **fields, "action": "delete"})
            assert r.status == 303
            pages.append(await (await client.get(r.headers["Location"])).text())
        return pages
    for page in run(console, body):
        flash = re.search(r'<div class="flash bad" id="flash">(.*?)</div>', page).group(1)
        assert "changed since this page was loaded" in flash and "nothing was changed" in flash
        assert "The list below is the current configuration" in flash and "input" not in flash
    assert 'name = "rs2"' in path.read_text()


def test_add_virtual_server_with_real_servers_and_http_monitor(console):
    eng = engine(console)

    async def body(client):
        await login(client)
        f = await form_of(client, "/virtual/edit")
        r = await post_form(client, "/virtual/edit", {**f, "vs": "", "match": "address", "vs.name": "api",
                                                      "vs.active": "on", "vs.address": "198.18.0.20", "vs.port": "8080",
                                                      "vs.protocol": "tcp", "vs.scheduler": "wlc", "vs.persistent": "",
                                                      "vs.sorry_server": "198.18.1.99"})
        assert r.status == 303, await r.text()
        for name, addr in (("a1", "198.18.1.11"), ("a2", "198.18.1.12")):
            f = await form_of(client, "/virtual/real/edit?vs=api")
            r = await post_form(client, "/virtual/real/edit", {**f, "vs": "api", "rs": "", "rs.name": name,
                                                               "rs.address": addr, "rs.weight": "2", "rs.active": "on"})
            assert r.status == 303, await r.text()
        f = await form_of(client, "/virtual/monitor?vs=api")
        r = await post_form(client, "/virtual/monitor", {**f, "vs": "api", "monitor.kind": "http", "monitor.path": "/health",
                                                         "monitor.status": "200-299", "monitor.interval": "1.5",
                                                         "monitor.timeout": "6", "monitor.reentry": "10",
                                                         "monitor.tls_verify": "on", "load.kind": "none"})
        assert r.status == 303, await r.text()
        f = await form_of(client, "/virtual/real?vs=api")
        r = await post_form(client, "/virtual/real/action", {**f, "vs": "api", "rs": "a2", "action": "deactivate"})
        assert r.status == 303
        flash = await (await client.get("/virtual/real?vs=api")).text()
        assert 'id="flash"' in flash and "flash bad" not in flash, flash
        return await (await client.get("/virtual")).text()
    page = run(console, body)
    api = next(vs for vs in eng.cfg.virtual_servers if vs.name == "api")
    assert (str(api.address), api.port, str(api.sorry_server[0])) == ("198.18.0.20", 8080, "198.18.1.99")
    assert [(r.name, r.weight, r.active) for r in api.real_servers] == [("a1", 2, True), ("a2", 2, False)]
    assert (api.monitor.kind, api.monitor.path, api.monitor.status, api.monitor.interval) == ("http", "/health",
                                                                                             (200, 299), 1.5)
    assert eng.cfg.serial_no == 5 and 'data-vs="api"' in page


def test_restart_only_changes_need_the_restart_box(console):
    async def body(client):
        await login(client)
        base = {**GLOBAL_FORM, "tables.connections": "131072"}
        f = await form_of(client, "/global")
        r = await post_form(client, "/global", {**f, **base})
        assert r.status == 400 and "can change only when lb restarts" in await r.text()
        r = await post_form(client, "/global", {**f, **base, "restart": "on"})
        assert r.status == 303
        return await (await client.get("/global")).text()
    page = run(console, body)
    assert "take effect when lb restarts" in page
    assert engine(console).cfg.tables.connections == 65536       # running: unchanged
    assert lbconfig.load(engine(console).cfg.path).tables.connections == 131072


def test_a_change_saved_for_the_next_start_does_not_block_the_other_pages(console):
    """After a "save for the next start" ([tables] here), every other page's save was refused
    ("tables can change only when lb restarts") until lb restarted.  An edit that leaves the
    waiting change as it is goes through: applied, the waiting values kept in the file and
    running as before, and the page says that a change waits for a restart."""
    eng = engine(console)
    path = eng.cfg.path
    waits = "tables, saved earlier, still wait for lb to restart (they run as before until then)"

    async def flash(client, page):
        text = await (await client.get(page)).text()
        m = re.search(r'<div class="([^"]*)" id="flash">([^<]*)</div>', text)
        assert m, text
        return m.groups()

    async def body(client):
        await login(client)
        f = await form_of(client, "/global")
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "tables.connections": "131072", "restart": "on"})
        assert r.status == 303, await r.text()
        seen = []
        r = await edit_rs1(client, "7")                                             # real server
        assert r.status == 303, await r.text()
        seen.append(await flash(client, "/virtual"))
        f = await form_of(client, "/virtual/edit?vs=web")
        r = await post_form(client, "/virtual/edit", {**f, "vs": "web", "match": "address", "vs.name": "web",
                                                      "vs.active": "on", "vs.address": "198.18.0.10", "vs.port": "80",
                                                      "vs.protocol": "tcp", "vs.scheduler": "wlc"})   # virtual server
        assert r.status == 303, await r.text()
        seen.append(await flash(client, "/virtual"))
        f = await form_of(client, "/virtual/monitor?vs=web")
        r = await post_form(client, "/virtual/monitor", {**f, "vs": "web", "monitor.kind": "tcp",
                                                         "monitor.interval": "4", "load.kind": "none"})   # monitoring
        assert r.status == 303, await r.text()
        seen.append(await flash(client, "/virtual"))
        f = await form_of(client, "/global")                    # [global] itself, tables as the file has them
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "tables.connections": "131072",
                                                "timeouts.tcp": "600"})
        assert r.status == 303, await r.text()
        seen.append(await flash(client, "/global"))
        for action in ("deactivate", "delete"):                 # the buttons
            f = await form_of(client, "/virtual/real?vs=web")
            r = await post_form(client, "/virtual/real/action", {**f, "vs": "web", "rs": "rs2", "action": action})
            assert r.status == 303
            seen.append(await flash(client, "/virtual/real?vs=web"))
            f = await form_of(client, "/virtual")
            r = await post_form(client, "/virtual/action", {**f, "vs": "web", "action": action})
            assert r.status == 303
            seen.append(await flash(client, "/virtual"))
        return seen
    seen = run(console, body)
    for cls, message in seen:
        assert cls == "flash warn" and "and applied" in message and message.endswith(waits), (cls, message)
    assert eng.cfg.tables.connections == 65536 and eng.cfg.virtual_servers == ()     # running: applied but tables
    assert eng.cfg.timeouts.tcp == 600 and eng.cfg.serial_no == 9
    saved = lbconfig.load(path)
    assert saved.tables.connections == 131072 and saved.virtual_servers == () and saved.timeouts.tcp == 600


def test_a_change_that_would_undo_the_waiting_one_still_needs_the_box(console):
    """An edit of a restart-only value that waits in the file is no other page's: it needs the
    box again; and a page shown again after a refusal keeps the user's tick."""
    eng = engine(console)

    async def body(client):
        await login(client)
        f = await form_of(client, "/global")
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "tables.connections": "131072", "restart": "on"})
        assert r.status == 303
        f = await form_of(client, "/global")
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "tables.connections": "262144"})
        refused = r.status, await r.text()
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "tables.connections": "262144",
                                                "timeouts.tcp": "soon", "restart": "on"})
        ticked = r.status, await r.text()
        f = await form_of(client, "/redundancy")
        r = await post_form(client, "/redundancy", {**f, "ha_enabled": "on", "ha.primary": "198.18.0.1",
                                                    "ha.backup": "nowhere", "ha.key_file": "/etc/lb/ha.key",
                                                    "restart": "on"})
        return refused, ticked, (r.status, await r.text())
    refused, ticked, redundancy = run(console, body)
    assert refused[0] == 400 and "tables can change only when lb restarts" in refused[1]
    assert '<input type=checkbox id="restart" name="restart">' in refused[1]
    for status, page in (ticked, redundancy):
        assert status == 400 and '<input type=checkbox id="restart" name="restart" checked>' in page, page
    assert lbconfig.load(eng.cfg.path).tables.connections == 131072 and eng.cfg.tables.connections == 65536


def test_the_daemon_applies_the_rest_of_the_file_with_the_waiting_values_as_they_run(tmp_path):
    """Engine.reload_config with keep_restart_only (a console edit's reload): the file's
    restart-only changes keep their running values (instance, network, interfaces, [tables],
    [ha], [bgp] but for its [[bgp.vip]]), the rest is the file's; without it, refused as
    before; and a rest that does not go with the running values is refused."""
    key = tmp_path / "ha.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    path = tmp_path / "lb.toml"
    path.write_text(CONFIG.format(name="web", weight="3", web=BGP))
    eng = DaemonEngine(path)
    running = eng.cfg
    path.write_text(CONFIG.format(name="web", weight="5", web=BGP.replace("65001", "65002") + f"""
[[bgp.vip]]
address = "198.18.0.10"
med = 7
[tables]
connections = 131072
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
key_file = "{key}"
""").replace('public_interface = "eth0"', 'public_interface = "eth1"\nscript_user = "daemon"'))
    with pytest.raises(ReloadRefused, match="needs a restart"):
        eng.reload_config()
    new = eng.reload_config(keep_restart_only=True)
    assert (new.public_interface, new.tables, new.ha, new.bgp.local_as) == (running.public_interface, running.tables,
                                                                          None, 65001)
    assert new.virtual_servers[0].real_servers[0].weight == 5 and new.script_user == "daemon"
    assert [v.med for v in new.bgp.vips] == [7]
    nat = CONFIG.format(name="web", weight="5", web="").replace(
        'public_interface = "eth0"', 'public_interface = "eth0"\nnetwork = "nat"\nprivate_interface = "eth1"\n'
                                     'nat_router = "198.18.1.254/24"')
    path.write_text(nat)
    new = eng.reload_config(keep_restart_only=True)
    assert new.network == running.network and new.virtual_servers[0].real_servers[0].weight == 5
    path.write_text(nat.replace('address = "198.18.1.11"', 'address = "198.18.1.11"\n  port = 8080'))
    with pytest.raises(ReloadRefused, match=r"do not go with the running network.*\n.*direct routing cannot change the "
                                            r"destination port"):
        eng.reload_config(keep_restart_only=True)


def test_delete_and_deactivate_virtual_server(console):
    async def body(client):
        await login(client)
        f = await form_of(client, "/virtual")
        r = await post_form(client, "/virtual/action", {**f, "vs": "web", "action": "deactivate"})
        assert r.status == 303
        assert engine(console).cfg.virtual_servers[0].active is False
        f = await form_of(client, "/virtual")
        r = await post_form(client, "/virtual/action", {**f, "vs": "web", "action": "delete"})
        assert r.status == 303
    run(console, body)
    assert engine(console).cfg.virtual_servers == ()


def test_lvscf_is_written_as_lvscf(tmp_path, pwfile):
    cf = tmp_path / "lvs.cf"
    cf.write_text("serial_no = 4\nnetwork = direct\n\nvirtual web {\n     active = 1\n     address = 198.18.0.10 eth0\n"
                  "     port = 80\n     scheduler = wlc\n     protocol = tcp\n\n     server rs1 {\n"
                  "         address = 198.18.1.11\n         active = 1\n         weight = 1\n     }\n}\n")
    eng = DaemonEngine(cf)
    console = webapp.Console(eng, pwfile, webapp.Settings(instance="default"), fail_delay=0.05)

    async def body(client):
        await login(client)
        r = await edit_rs1(client, "9")
        assert r.status == 303, await r.text()
    run(console, body)
    text = cf.read_text()
    assert text.startswith("serial_no = 5\n") and "server rs1 {" in text and "weight = 9" in text
    assert eng.cfg.virtual_servers[0].real_servers[0].weight == 9


def test_password_change_with_user_name_then_login(console):
    async def body(client):
        await login(client)
        f = await form_of(client, "/password")
        r = await post_form(client, "/password", {"csrf": f["csrf"], "user": "piranha", "current": "wrong one",
                                                  "new": "new secret 123", "again": "new secret 123"})
        assert r.status == 400 and "not the current password" in await r.text()
        await asyncio.sleep(0.1)
        r = await post_form(client, "/password", {"csrf": f["csrf"], "user": "piranha", "current": PASSWORD,
                                                  "new": "new secret 123", "again": "new secret 123"})
        assert r.status == 303
        client.session.cookie_jar.clear()
        assert (await login(client)).status == 401
        await asyncio.sleep(0.1)
        assert (await login(client, "new secret 123", "piranha")).status == 303
    run(console, body)
    line = console.password_file.read_text()
    assert line.startswith("piranha:scrypt$") and stat.S_IMODE(console.password_file.stat().st_mode) == 0o600


def test_a_password_file_the_unit_keeps_read_only_says_where_it_may_write(console, monkeypatch):
    """lb-web@.service makes the system read-only (ProtectSystem=strict) but for /etc/lb: a
    [web] password_file elsewhere could not be changed from the Password page, which said only
    "Read-only file system".  It says what the unit allows, and the drop-in that widens it."""
    import errno

    from lb.web import app as webapp

    def read_only(*_a, **_kw):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(webapp.password, "write", read_only)

    async def body(client):
        await login(client)
        f = await form_of(client, "/password")
        r = await post_form(client, "/password", {"csrf": f["csrf"], "user": USER, "current": PASSWORD,
                                                  "new": "new secret 123", "again": "new secret 123"})
        return r.status, await r.text()
    status, page = run(console, body)
    assert status == 500 and "Read-only file system" in page, page
    assert "ReadWritePaths=" in page and "/etc/lb" in page, page


def test_a_password_file_in_a_directory_the_console_may_not_write_is_kept(console, monkeypatch):
    """The console's user may write the password file but not create one beside it (lb-web's
    file in root's /etc/lb): the page refused nothing and rewrote the file in place, where a
    crash or a full disk mid-write locked the operator out.  It says what to do, and the old
    password still logs in."""
    import errno

    def no_new_file(*_a, **_kw):          # what creating a file in a directory the user may not write gives
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(password.tempfile, "mkstemp", no_new_file)
    before = console.password_file.read_bytes()

    async def body(client):
        await login(client)
        f = await form_of(client, "/password")
        r = await post_form(client, "/password", {"csrf": f["csrf"], "user": USER, "current": PASSWORD,
                                                  "new": "new secret 123", "again": "new secret 123"})
        page = await r.text()
        client.session.cookie_jar.clear()
        await asyncio.sleep(0.1)
        return r.status, page, (await login(client)).status
    status, page, relogin = run(console, body)
    d = console.password_file.resolve().parent
    assert status == 500, page
    assert f"cannot create a file in {d} (Permission denied)" in page, page
    assert "nothing changed, the old password still valid" in page, page
    assert f"make {d} writable by" in page and "or set [web] password_file to a file in a directory" in page, page
    assert console.password_file.read_bytes() == before and relogin == 303


def test_config_page_shows_the_file(console):
    async def body(client):
        await login(client)
        return await (await client.get("/config")).text()
    page = run(console, body)
    assert 'id="config-text"' in page and "name = &quot;rs1&quot;" in page
    assert store.read(engine(console).cfg.path).version in page


# ---- a fuzzer of the form posts ------------------------------------------------------------

FORMS = [
    ("/global", {**GLOBAL_FORM, "timeouts.tcp": "900", "web.listen": "127.0.0.1:3636"}),
    ("/redundancy", {"ha_enabled": "on", "ha.primary": "198.18.0.1", "ha.backup": "198.18.0.3",
                     "ha.key_file": "/etc/lb/ha.key", "ha.keepalive": "2", "ha.deadtime": "6"}),
    ("/virtual/edit", {"vs": "", "match": "address", "vs.name": "n", "vs.address": "198.18.0.30", "vs.port": "80",
                       "vs.protocol": "tcp", "vs.scheduler": "rr", "vs.active": "on"}),
    ("/virtual/real/edit", {"vs": "web", "rs": "rs1", "rs.name": "rs1", "rs.address": "198.18.1.11", "rs.weight": "2",
                            "rs.active": "on"}),
    ("/virtual/monitor", {"vs": "web", "monitor.kind": "http", "monitor.status": "200-399", "load.kind": "agent",
                          "load.port": "4444"}),
    ("/virtual/action", {"vs": "web", "action": "deactivate"}),
    ("/virtual/real/action", {"vs": "web", "rs": "rs2", "action": "delete"}),
    ("/weight", {"service": "web", "server": "rs1", "action": "quiesce"}),
    ("/password", {"user": "x", "current": "y", "new": "z", "again": "z"}),
]
NASTY = ["", " ", "0", "-1", "65536", "99999999999999999999999", "1e309", "nan", "inf", "x" * 5000, "[[[[",
         '"', "\\", "\x00", "\r\nInjected: 1", "é", "198.18.0.10:80", "::1", "tcp 198.18.0.10 21\nudp x y",
         "on", "off", "true", "200-", "2.5", "/etc/passwd", "<script>", "%h %p", "../..", "a,b,,c"]


APPLIED = {"/global": {"timeouts.tcp": "600"},      # a change from the fixture's file
           "/redundancy": {"restart": "on"}}         # [ha] changes when lb restarts: saved for then
# every POST a session makes that changes something: the daemon's running state, the file, the
# password file or the session itself; each with a form that is applied when it is let through
SESSION_POSTS = [("/reload", {}), ("/logout", {}),
                 *((page, {**data, **APPLIED.get(page, {})}) for page, data in FORMS if page != "/password"),
                 ("/password", {"user": USER, "current": PASSWORD, "new": "another horse battery",
                                "again": "another horse battery"})]
READS = {"status", "config", "table"}          # control requests that change nothing


def console_state(console) -> tuple:
    """What a POST of the console can change: the daemon's requests that change something, the
    configuration file and the running configuration, the password file, the sessions."""
    eng = engine(console)
    return ([q for q in eng.requests if q.get("cmd") not in READS], eng.cfg.path.read_bytes(), eng.cfg,
            console.password_file.read_bytes(), {t: s.csrf for t, s in console.sessions.items()})


@pytest.mark.parametrize("page, data", SESSION_POSTS, ids=[p for p, _ in SESSION_POSTS])
def test_a_post_without_the_sessions_csrf_token_or_from_another_origin_changes_nothing(console, page, data):
    """Refused (403) without the session's CSRF token, with a wrong one, and with the right one
    from another Origin (or a sandboxed page's "null"); nothing changes, the session stays; the
    same post with the token from the console's own origin is applied (so the check above sees
    a change when there is one)."""
    async def body(client):
        await login(client)
        f = await form_of(client, "/global")
        token, form = f["csrf"], {**data, "version": f["version"]}
        own = own_origin(client)
        before = console_state(console)
        for csrf, origin, why in ((None, None, "CSRF"), ("not-the-token", None, "CSRF"), ("", own, "CSRF"),
                                  (token, "http://evil.example", "cross-origin"), (token, "null", "cross-origin")):
            sent = form if csrf is None else {**form, "csrf": csrf}
            r = await client.post(page, data=sent, headers={"Origin": origin} if origin else None,
                                  allow_redirects=False)
            assert r.status == 403 and why in await r.text(), (page, csrf, origin, r.status)
            assert console_state(console) == before, (page, csrf, origin)
        r = await client.get("/status", allow_redirects=False)       # the session is still valid
        assert r.status == 200 and "Control/Monitoring" in await r.text()
        assert console_state(console) == before
        r = await client.post(page, data={**form, "csrf": token}, headers={"Origin": own}, allow_redirects=False)
        assert r.status == 303, (page, r.status, (await r.text())[:500])
        assert console_state(console) != before, page
    run(console, body)


def test_a_cross_origin_login_is_refused_and_changes_nothing(console):
    """A login form posted from another site (login CSRF: the victim logged in as the attacker)
    is refused before the password is looked at: no session, no cookie, no throttling; with a
    session already open, it is neither replaced nor ended."""
    async def body(client):
        for origin in ("http://evil.example", "null"):
            r = await login(client, headers={"Origin": origin})
            assert r.status == 403 and "cross-origin" in await r.text(), origin
            assert "Set-Cookie" not in r.headers and console.sessions == {}
        assert console.throttle.clients == {}
        await login(client)
        before = console_state(console)
        r = await login(client, headers={"Origin": "http://evil.example"})
        assert r.status == 403 and "Set-Cookie" not in r.headers
        assert console_state(console) == before
        assert (await client.get("/status", allow_redirects=False)).status == 200
        r = await login(client, headers={"Origin": own_origin(client)})
        assert r.status == 303 and console_state(console)[-1].keys() != before[-1].keys()   # a new session
    run(console, body)


def mutate(rng: random.Random, data: dict) -> dict:
    out = dict(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        keys = list(out) or ["x"]
        k = rng.choice(keys)
        if op < 0.45:
            out[k] = rng.choice(NASTY)
        elif op < 0.6:
            out.pop(k, None)
        elif op < 0.75:
            out[rng.choice(["vs", "rs", "action", "match", "load.kind", "monitor.kind", "ha_enabled", "restart"])] = \
                rng.choice(NASTY + ["web", "rs1", "delete", "fwmark", "program", "none"])
        elif op < 0.9:
            out[k] = out.get(k, "") + rng.choice(NASTY)
        else:
            out["vs.fwmark" if rng.random() < 0.5 else "vs.port_group"] = rng.choice(NASTY)
    return out


def test_fuzzed_form_posts_answer_cleanly_and_change_nothing_when_refused(console, caplog):
    """1,000+ mutated form posts: each is applied (303) or refused with a clear status (400, 404,
    409, 429); never a 500 or a traceback; a refused one leaves the file and the running
    configuration exactly as they were.  Seeded by LB_FUZZ_SEED (tests/fuzzseed.py)."""
    eng = engine(console)
    path = eng.cfg.path
    rng = random.Random(SEED)
    seen: dict[int, int] = {}

    async def body(client):
        await login(client)
        n = 0
        while n < 1050:
            page, data = rng.choice(FORMS)
            f = await form_of(client, "/global")
            before, cfg_before = path.read_bytes(), eng.cfg
            r = await post_form(client, page, {**f, **mutate(rng, data)})
            text = await r.text()
            seen[r.status] = seen.get(r.status, 0) + 1
            assert r.status in (303, 400, 404, 409, 429), (page, r.status, text[:500])
            assert "Traceback" not in text
            if r.status != 303 or (page != "/password" and "flash bad" in text):
                assert path.read_bytes() == before and eng.cfg is cfg_before, (page, r.status)
            if page == "/password":
                console.throttle.clients.clear()
            n += 1
            if n % 150 == 0:                    # start again from the fixture's file now and then
                write_config(path)
                eng.cfg = lbconfig.load(path)
    with named(), caplog.at_level(logging.ERROR):
        run(console, body)
        assert sum(seen.values()) >= 1000 and seen.get(303) and seen.get(400), seen
        assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


# bodies aiohttp's request.post() cannot read, each with its own exception (not only ValueError)
UNREADABLE_BODIES = [
    ("application/x-www-form-urlencoded; charset=nosuch", b"user=a&password=b"),          # LookupError
    ("multipart/form-data; boundary=XyZ",                                                 # RuntimeError
     b'--XyZ\r\nContent-Disposition: form-data; name="user"\r\nContent-Transfer-Encoding: bogus\r\n\r\n'
     b"a\r\n--XyZ--\r\n"),
    ("multipart/form-data; boundary=XyZ",                                                 # LookupError
     b'--XyZ\r\nContent-Disposition: form-data; name="user"\r\nContent-Type: text/plain; charset=nosuch\r\n'
     b"\r\na\r\n--XyZ--\r\n"),
]


@pytest.mark.parametrize("ctype, data", UNREADABLE_BODIES, ids=["charset", "transfer-encoding", "part-charset"])
def test_form_bodies_aiohttp_cannot_read_are_400_not_500(console, caplog, ctype, data):
    """A body aiohttp cannot decode (an unknown charset, an unknown transfer encoding) is a 400,
    to the login page (no session needed) and to a logged-in session's POST, never a 500 with a
    traceback in the log; nothing changes."""
    before = console_state(console)

    async def body(client):
        r = await client.post("/login", data=data, headers={"Content-Type": ctype}, allow_redirects=False)
        assert r.status == 400 and "unreadable form" in await r.text()
        await login(client)
        r = await client.post("/global", data=data, headers={"Content-Type": ctype}, allow_redirects=False)
        assert r.status == 400 and "unreadable form" in await r.text()
    with caplog.at_level(logging.ERROR):
        run(console, body)
        assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
    assert console_state(console)[:4] == before[:4]


GET_PAGES = ["/", "/status", "/global", "/redundancy", "/virtual", "/virtual/edit", "/virtual/real",
             "/virtual/real/edit", "/virtual/monitor", "/config", "/password", "/api/status", "/login"]


def test_fuzzed_page_queries_answer_cleanly_and_change_nothing(console, caplog):
    """Every page of the console asked with mutated query strings (the parameters it reads and
    others, values from the form fuzzer's list, raw bytes percent-encoded): 200, a redirect, 400 or
    404, never a 500 or a traceback, and nothing changed.  Seeded by LB_FUZZ_SEED."""
    eng = engine(console)
    rng = random.Random(SEED)
    seen: dict[int, int] = {}

    async def body(client):
        await login(client)
        before = (eng.cfg.path.read_bytes(), eng.cfg)
        for _ in range(1000):
            query = {}
            for _ in range(rng.randint(0, 4)):
                k = rng.choice(["vs", "rs", "part", "refresh", "name", "x", "vs[]", ""])
                query[k] = str(rng.choice(NASTY + ["web", "rs1", "live", "5", "0"]))
            qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
            if rng.random() < 0.2:
                qs += "&" + "".join(f"%{b:02X}" for b in rng.randbytes(rng.randrange(1, 12)))
            page = rng.choice(GET_PAGES)
            r = await client.get(f"{page}?{qs}", allow_redirects=False)
            text = await r.text(errors="replace")
            seen[r.status] = seen.get(r.status, 0) + 1
            assert r.status in (200, 303, 400, 404), (page, qs[:300], r.status, text[:300])
            assert "Traceback" not in text
        assert (eng.cfg.path.read_bytes(), eng.cfg) == before

    with named(), caplog.at_level(logging.ERROR):
        run(console, body)
        assert seen.get(200) and seen.get(400) and seen.get(404), seen
        assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


def test_requests_aiohttp_cannot_parse_are_one_counted_line_not_a_traceback_each(console, caplog):
    """A request line over 8 KiB (or a bad header) is answered 400 by aiohttp, which logs it at
    ERROR with a traceback: anyone who reaches the port could fill the log with them.  One warning
    line at most every 10 s, the rest counted."""
    caplog.set_level(logging.WARNING)
    counted = webapp.filter_malformed_requests()
    before = counted.count

    async def body(client):
        for _ in range(3):
            r = await client.get("/status?x=" + "y" * 9000, allow_redirects=False)
            assert r.status == 400
        assert (await client.get("/login")).status == 200        # the console still answers
    run(console, body)
    assert counted.count - before == 3
    lines = [r for r in caplog.records if r.name in ("lb.web", "aiohttp.server")]
    assert len(lines) <= 1 and not any(r.exc_info for r in lines), [r.getMessage() for r in lines]
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text

def test_bodies_aiohttp_cannot_decode_are_400_and_one_counted_line(console, caplog):
    """Before any login, a POST whose body aiohttp cannot decode -- a multipart part with a bad
    header line, a Content-Encoding: gzip body that is no gzip, a chunked body with a bad chunk --
    was answered 500 "Internal Server Error" with a traceback logged at ERROR each time (the gzip
    one twice: aiohttp read the broken body again after the answer, "Unhandled exception").  Now
    400 saying why, the connection closed, at most one warning line, the rest counted."""
    caplog.set_level(logging.WARNING)
    counted = webapp.filter_malformed_requests()
    bodies = [({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\nfoo\r\n\r\nuser\r\n--x--\r\n"),
              ({"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"}, b"user=a&password=b"),
              ({"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "deflate"}, b"not deflate")]

    async def body(client):
        for headers, data in bodies * 2:
            r = await client.post("/login", data=data, headers=headers, allow_redirects=False)
            text = await r.text()
            assert r.status == 400 and "unreadable request body" in text, (headers, r.status, text)
            assert r.headers.get("Connection", "").lower() == "close"
        # a bad chunk size, as raw bytes
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nuser=\r\nzz\r\nabc\r\n0\r\n\r\n")
        head = await asyncio.wait_for(reader.read(200), 10)
        writer.close()
        assert head.split(b" ")[1] == b"400", head
        assert (await client.get("/login")).status == 200        # the console still answers
        await asyncio.sleep(0.1)
    before = counted.count
    run(console, body)
    assert counted.count - before == len(bodies) * 2 + 1      # each one, the chunked one aiohttp's own
    lines = [r for r in caplog.records if r.name in ("lb.web", "aiohttp.server")]
    assert len(lines) <= 1 and not any(r.exc_info for r in lines), [r.getMessage() for r in lines]
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
    assert "Unhandled exception" not in caplog.text


def test_a_form_value_that_is_half_a_surrogate_pair_is_400_not_a_500(console, caplog):
    """A form in a charset that decodes "\\ud800" to half a surrogate pair (raw_unicode_escape, for
    the body or one multipart part): the login page that shows the user name again could not be
    encoded, a 500 and a traceback for each, before any login and past the throttling (the
    "try again in" page shows it too).  Now 400, and an edit form's the same, the file as it was."""
    path = engine(console).cfg.path
    before = path.read_bytes()
    odd = {"Content-Type": "application/x-www-form-urlencoded; charset=raw_unicode_escape"}
    part = (b'--x\r\nContent-Disposition: form-data; name="user"\r\nContent-Type: text/plain; '
            b'charset=raw_unicode_escape\r\n\r\n\\ud800\r\n--x\r\nContent-Disposition: form-data; '
            b'name="password"\r\n\r\nx\r\n--x--\r\n')

    async def body(client):
        out = []
        for _ in range(2):
            r = await client.post("/login", data=b"user=\\ud800&password=x", headers=odd, allow_redirects=False)
            out.append((r.status, await r.text()))
            r = await client.post("/login", data=part, headers={"Content-Type": "multipart/form-data; boundary=x"},
                                  allow_redirects=False)
            out.append((r.status, await r.text()))
        await asyncio.sleep(1.0)            # (without the check they were failed logins: throttled)
        assert (await login(client)).status == 303
        f = await form_of(client, "/virtual/edit?vs=web")
        form = (f"csrf={f['csrf']}&version={f['version']}&vs=web&match=address&vs.name=web\\ud800&"
                f"vs.address=198.18.0.10&vs.port=80&vs.protocol=tcp&vs.scheduler=rr&vs.active=on")
        r = await client.post("/virtual/edit", data=form.encode(), headers=odd, allow_redirects=False)
        out.append((r.status, await r.text()))
        return out
    with caplog.at_level(logging.WARNING):
        for status, text in run(console, body):
            assert status == 400 and "not Unicode text" in text, (status, text[:300])
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
    assert path.read_bytes() == before


# ---- lb passwd --------------------------------------------------------------------------------

def _passwd(monkeypatch, capsys, argv, stdin):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = lb_main(["passwd", *argv])
    return rc, capsys.readouterr()


def test_passwd_writes_user_and_salted_scrypt_line_0600(tmp_path, monkeypatch, capsys):
    target = tmp_path / "etc" / "console.passwd"
    target.parent.mkdir()              # lb passwd makes no directory (a mistyped path is refused)
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin", "--user", "piranha"], PASSWORD + "\n")
    assert rc == 0 and f"{target}: password set for user piranha" in out.out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    text = target.read_text()
    assert re.fullmatch(r"piranha:scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}\n", text)
    assert password.verify(PASSWORD, text, "piranha") and not password.verify(PASSWORD, text, "admin")
    assert not password.verify(PASSWORD + "x", text, "piranha")
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin"], "short\n")
    assert rc == 1 and "at least 8 characters" in out.err and target.read_text() == text
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin", "--user", "bad user"], PASSWORD + "\n")
    assert rc == 1 and "user name" in out.err and target.read_text() == text


def _no_user(monkeypatch):
    """pwd as on a host without the user "nosuchuser" (and with "lb-web", uid 4242)."""
    import pwd

    real = pwd.getpwnam

    def getpwnam(name):
        if name == "lb-web":
            return types.SimpleNamespace(pw_uid=4242, pw_gid=4343)
        if name == "nosuchuser":
            raise KeyError(name)
        return real(name)
    monkeypatch.setattr(pwd, "getpwnam", getpwnam)


def test_passwd_owner_unknown_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """--owner that names no user: refused before the file is written (it was written, then
    the user looked up, and the file left root's)."""
    _no_user(monkeypatch)
    target = tmp_path / "console.passwd"
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin", "--owner", "nosuchuser"],
                      PASSWORD + "\n")
    assert (rc, out.out) == (1, "")
    assert out.err == "lb: --owner nosuchuser: no such user; nothing changed\n"
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # a file there already: left as it was
    password.write(target, "the old password")
    before = target.read_text()
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin", "--owner", "nosuchuser"],
                      PASSWORD + "\n")
    assert rc == 1 and target.read_text() == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_passwd_keeps_the_files_owner_and_gives_it_to_owner(tmp_path, monkeypatch, capsys):
    """A password file the console's user owns stays its user's when root sets a new password
    without --owner (the file is replaced by a new one: it became root's, and the console could
    no longer change it); --owner gives it to that user from its creation."""
    _no_user(monkeypatch)
    target = tmp_path / "console.passwd"
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin", "--owner", "lb-web"], PASSWORD + "\n")
    assert rc == 0, out.err
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o600)
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin"], PASSWORD + "2\n")
    assert rc == 0, out.err
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o600)
    assert password.verify(PASSWORD + "2", target.read_text())
    # through a symlink: the target is written, the link kept (and 0600, as lb web wants it)
    os.chmod(target, 0o644)
    link = tmp_path / "link.passwd"
    link.symlink_to(target)
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(link), "--stdin"], PASSWORD + "3\n")
    assert rc == 0, out.err
    assert link.is_symlink() and password.verify(PASSWORD + "3", target.read_text())
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o600)
    # a new file without --owner: the writer's
    other = tmp_path / "new.passwd"
    assert _passwd(monkeypatch, capsys, ["--file", str(other), "--stdin"], PASSWORD + "\n")[0] == 0
    assert (other.stat().st_uid, other.stat().st_gid) == (os.geteuid(), os.getegid())


def test_passwd_in_a_directory_the_user_may_not_write_is_refused_and_the_file_kept(request):
    """As lb-web is: the password file its own, its directory root's (/etc/lb).  The file was
    rewritten in place there, so a crash or a full disk mid-write left it cut short or empty and
    the console locked out.  Now the change is refused, saying what to do, the file as it was
    and its password still valid; in a directory the user may write it is replaced."""
    import shutil
    import subprocess
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lb-passwd-", dir="/tmp"))     # root's, 0755: nobody may not create here
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    d.chmod(0o755)
    target = d / "console.passwd"
    password.write(target, PASSWORD, USER)
    os.chown(target, 65534, 65534)
    before = target.read_bytes()

    def passwd_as_nobody(new):
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               "import sys; from lb.cli.main import main; sys.exit(main(sys.argv[1:]))",
                               "passwd", "--file", str(target), "--stdin", "--user", USER],
                              input=new + "\n", capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[1])

    p = passwd_as_nobody("the new password 1")
    assert (p.returncode, p.stdout) == (1, ""), p.stderr
    assert p.stderr.startswith(f"lb: {target}: cannot create a file in {d} (Permission denied) to replace "
                               f"console.passwd with: nothing changed, the old password still valid"), p.stderr
    assert f"make {d} writable by uid 65534" in p.stderr or f"make {d} writable by user " in p.stderr, p.stderr
    assert "or set [web] password_file to a file in a directory" in p.stderr, p.stderr
    assert target.read_bytes() == before and password.verify(PASSWORD, password.read(target), USER)
    assert sorted(d.iterdir()) == [target]
    # the directory the user's: replaced, the file still the user's and 0600
    os.chown(d, 65534, 65534)
    p = passwd_as_nobody("the new password 1")
    assert p.returncode == 0, p.stderr
    assert password.verify("the new password 1", password.read(target), USER)
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
    assert sorted(d.iterdir()) == [target]


def test_passwd_refuses_a_directory_that_does_not_exist(tmp_path, monkeypatch, capsys):
    """--file in a directory that does not exist (a typo): refused, nothing made (the
    directories were created silently)."""
    target = tmp_path / "no" / "such" / "x.passwd"
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin"], PASSWORD + "\n")
    assert (rc, out.out) == (1, "")
    assert out.err == f"lb: {target}: no such directory: {target.parent} (create it first); nothing changed\n"
    assert not (tmp_path / "no").exists()
    with pytest.raises(FileNotFoundError, match="no such directory"):
        password.write(target, PASSWORD)
    assert not (tmp_path / "no").exists()


def test_an_old_password_line_is_the_admin_users(tmp_path):
    p = tmp_path / "pw"
    p.write_text(password.hash_password(PASSWORD) + "\n")
    line = password.read(p)
    assert password.verify(PASSWORD, line, "admin") and not password.verify(PASSWORD, line, "root")


def test_password_file_format_errors(tmp_path):
    p = tmp_path / "pw"
    p.write_text("plaintext\n")
    with pytest.raises(password.PasswordFileError, match=rf"{p}: not an lb password file"):
        password.read(p)
    p.write_text("scrypt$3$8$1$AAAA$AAAA\n")
    with pytest.raises(password.PasswordFileError, match="out of range"):
        password.read(p)


# ---- [web] in the config --------------------------------------------------------------------

BASE = '[global]\ninstance = "edge"\npublic_interface = "eth0"\n'


def test_web_config_defaults_and_forms(tmp_path):
    cfg = lbconfig.loads(BASE)
    assert (cfg.web.enabled, cfg.web.listen) == (False, "127.0.0.1:3636")
    assert cfg.web.password_path(cfg.instance) == Path("/etc/lb/edge.passwd")
    cfg = lbconfig.loads(BASE + '[web]\nenabled = true\nlisten = "[::1]:8443"\n')
    assert (cfg.web.enabled, str(cfg.web.address), cfg.web.port, cfg.web.listen) == (True, "::1", 8443, "[::1]:8443")
    f = tmp_path / "lb.toml"
    f.write_text(BASE + '[web]\nlisten = "198.18.0.1:80"\npassword_file = "pw"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n')
    cfg = lbconfig.load(f)
    assert cfg.web.password_path(cfg.instance) == tmp_path / "pw" and cfg.web.tls_key == tmp_path / "k.pem"


@pytest.mark.parametrize("web, line, message", [
    ('enabled = "yes"', 5, 'web.enabled: expected a boolean (true or false), got string "yes"'),
    ('listen = "localhost:8080"', 5, "web.listen: 'localhost' is not an IP address"),
    ('listen = "127.0.0.1"', 5, 'web.listen: expected ADDRESS:PORT'),
    ('password_file = ""', 5, "web.password_file: must name the file"),
    ('password_file = "/etc/lb/a\\u0000b"', 5, r"web.password_file: '/etc/lb/a\x00b': a file name cannot hold a NUL"),
    ('tls_cert = "c.pem"', 5, "web.tls_cert: tls_cert and tls_key go together"),
    ('allowed_hosts = ["bad host"]', 5, "web.allowed_hosts[0]: 'bad host' is not a host name"),
    ('trusted_proxies = ["10.0.0.300"]', 5, "web.trusted_proxies[0]: '10.0.0.300' is not an IP address or network"),
    ('session_lifetime = 5', 5, "web.session_lifetime: must be between 60 and 604800 seconds"),
    ('pasword_file = "x"', 5, "web.pasword_file: unknown key 'pasword_file' (did you mean 'password_file'?)"),
])
def test_web_config_errors_name_file_line_field(tmp_path, web, line, message):
    f = tmp_path / "lb.toml"
    f.write_text(BASE + "[web]\n" + web + "\n")
    with pytest.raises(lbconfig.ConfigError) as e:
        lbconfig.load(f)
    assert f"{f}:{line}: {message}" in str(e.value)


def test_session_lifetime_takes_its_whole_documented_range():
    """example.toml: session_lifetime 60 .. 604800 (a week).  Past a day it was refused all the
    same, as "must be between 0 and 86400 seconds" (the general range of seconds, checked first)."""
    for days in (1.5, 7):
        cfg = lbconfig.loads(BASE + f"[web]\nsession_lifetime = {int(days * 86400)}\n")
        assert cfg.web.session_lifetime == days * 86400
    for bad in (59, 604801):
        with pytest.raises(lbconfig.ConfigError) as e:
            lbconfig.loads(BASE + f"[web]\nsession_lifetime = {bad}\n", "lb.toml")
        assert [str(i) for i in e.value.issues] == [
            f"lb.toml:5: web.session_lifetime: must be between 60 and 604800 seconds, got {bad}"]


def test_a_file_name_with_a_nul_is_refused_next_to_its_field_and_the_file_kept(console):
    """[web] password_file (or a TLS file) holding a NUL was taken by `lb check` and saved by the
    console; lb web then stopped at start with a ValueError traceback (embedded null byte), the
    console locked out until the file was fixed by hand.  Now refused as `lb check` refuses it."""
    path = engine(console).cfg.path
    before = path.read_bytes()

    async def body(client):
        await login(client)
        f = await form_of(client, "/global")
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "web.enabled": "on",
                                                "web.password_file": "/etc/lb/web\x00.passwd"})
        return r.status, await r.text()
    status, page = run(console, body)
    assert status == 400
    assert re.search(r'data-for="web.password_file">[^<]*a file name cannot hold a NUL character', page), page
    assert path.read_bytes() == before
    # the Redundancy screen's key file: the same (no file has that name)
    ha = '[ha]\nprimary = "198.18.0.1"\nbackup = "198.18.0.2"\nkey_file = "/etc/lb/ha\\u0000.key"\n'
    with pytest.raises(lbconfig.ConfigError, match=r"ha.key_file: '/etc/lb/ha\\x00.key': a file name cannot hold a NUL"):
        lbconfig.loads(BASE + ha)


def test_control_config_errors(tmp_path):
    f = tmp_path / "lb.toml"
    f.write_text(BASE + '[control]\nadmin_group = "Bad Group"\n')
    with pytest.raises(lbconfig.ConfigError, match=r"control.admin_group: 'Bad Group' is not a group name"):
        lbconfig.load(f)



def test_script_users_and_sync_port_are_edited_like_any_key(console):
    """harden-ctl's keys on the console: [global] script_user, a monitor's and a load monitor's,
    [ha] sync_port; a user that does not exist here is refused next to its field."""
    eng = engine(console)

    async def body(client):
        await login(client)
        f = await form_of(client, "/global")
        r = await post_form(client, "/global", {**f, **GLOBAL_FORM, "global.script_user": "daemon"})
        assert r.status == 303, await r.text()
        f = await form_of(client, "/virtual/monitor?vs=web")
        mon = {"vs": "web", "monitor.kind": "program", "monitor.program": "/bin/true %h %p", "load.kind": "program",
               "load.program": "/bin/echo 1", "load.script_user": "nobody"}
        r = await post_form(client, "/virtual/monitor", {**f, **mon, "monitor.script_user": "no-such-user-lb"})
        refused = r.status, await r.text()
        f = await form_of(client, "/virtual/monitor?vs=web")
        r = await post_form(client, "/virtual/monitor", {**f, **mon, "monitor.script_user": "root"})
        assert r.status == 303, await r.text()
        f = await form_of(client, "/redundancy")
        r = await post_form(client, "/redundancy", {**f, "ha_enabled": "on", "ha.primary": "198.18.0.1",
                                                    "ha.backup": "198.18.0.3", "ha.key_file": "/etc/lb/ha.key",
                                                    "ha.heartbeat_port": "539", "ha.sync_port": "7000",
                                                    "ha.script_user": "daemon", "restart": "on"})
        assert r.status == 303, await r.text()
        return refused
    status, page = run(console, body)
    assert status == 400
    m = re.search(r'<div class="fielderr" data-for="monitor.script_user">([^<]*)</div>', page)
    assert m and m.group(1).startswith("no user &#x27;no-such-user-lb&#x27; on this machine"), m and m.group(1)
    vs = eng.cfg.virtual_servers[0]
    assert eng.cfg.script_user == "daemon"
    assert (vs.monitor.kind, vs.monitor.script_user, vs.load_monitor.script_user) == ("program", "root", "nobody")
    saved = lbconfig.load(eng.cfg.path)      # [ha] is saved for the next start
    assert (saved.ha.sync_port, saved.ha.script_user) == (7000, "daemon")


BGP = """
[bgp]
mode = "announce"
local_as = 65001
router_id = "198.18.0.2"
  [[bgp.neighbor]]
  address = "198.18.0.254"
  peer_as = 65000
  local_address = "198.18.0.2"
"""


def test_control_page_shows_bgp_sessions_and_pulse_warnings(tmp_path, pwfile):
    """The console shows what `lb status` prints of [bgp] (the speaker, each neighbor, the
    routes) and pulse's warnings (here: a peer heard with another key)."""
    from lb.bgp import Announcer
    from lb.ha import heartbeat as hb
    from test_ha_unit import Pair

    console = make_console(tmp_path, pwfile, CONFIG.format(name="web", weight="3", web=BGP))
    eng = engine(console)
    eng.bgp = Announcer(eng.cfg)            # never started: no speaker runs for this instance

    async def body(client):
        await login(client)
        return await (await client.get("/status?part=live")).text()
    live = run(console, body)
    assert re.search(r"bgp announce  AS 65001  router id \S+  hold 9s  speaker exabgp NOT RUNNING", live), live
    assert "neighbor 198.18.0.254 AS 65000 from 198.18.0.2: down" in live
    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    backup.keys = (b"another-key-entirely-0123456789",)
    pair.run(3.0)
    html = webapp._ha_summary(primary.status())
    assert "<th>WARNING</th><td>public channel: datagrams from the peer 198.18.0.3 are refused (bad MAC" in html, html

def test_forms_show_the_models_defaults_for_keys_the_file_leaves_out(console):
    async def body(client):
        await login(client)
        return (await (await client.get("/virtual/real/edit?vs=web&rs=rs2")).text(),
                await (await client.get("/virtual/monitor?vs=web")).text())
    real, monitor = run(console, body)
    assert '<input type=checkbox id="rs.active" name="rs.active" checked>' in real      # active = true by default
    assert 'id="rs.weight" name="rs.weight" value="1"' in real
    assert '<input type=checkbox id="monitor.tls_verify" name="monitor.tls_verify" checked>' in monitor


@pytest.mark.parametrize("reply, says", [
    ({"ok": False, "error": "lb_reals: no free real server slot", "changed": False},
     "Nothing was changed: the running configuration stays as it was."),
    ({"ok": False, "error": "lb_svc_dests: write failed: ENOMEM", "changed": False, "rolled_back": True},
     "Nothing was changed: what had been written was undone, the previous configuration runs."),
    ({"ok": False, "error": "lb_svc_dests: write failed: ENOMEM; undo failed", "changed": True},
     "The previous configuration could not be fully restored: the data plane holds part of the new one"),
], ids=["refused", "rolled-back", "left-half"])
def test_a_failed_reload_says_what_the_daemon_left_in_place(console, reply, says):
    """The daemon's reload reply (Engine._reload_reply: changed, rolled_back) reaches the operator
    as it is: the error, and whether the previous configuration still runs."""
    eng = engine(console)
    answer = eng.control

    async def control(req):
        if req.get("cmd") == "reload":
            eng.requests.append(req)
            return reply
        return await answer(req)
    eng.control = control

    async def body(client):
        await login(client)
        token = (await form_of(client, "/global"))["csrf"]
        r = await client.post("/reload", data={"csrf": token}, allow_redirects=False,
                              headers={"Origin": own_origin(client)})
        assert (r.status, r.headers["Location"]) == (303, "/status")
        text = await (await client.get("/status")).text()
        assert reply["error"] in text and says in text, text
        assert [q["cmd"] for q in eng.requests].count("reload") == 1
    run(console, body)


def test_a_save_the_daemon_answers_too_late_is_not_shown_as_refused(console, tmp_path):
    """The daemon's reply to a save comes after the console's timeout: the page said "control
    socket X: " (asyncio.TimeoutError has no text on 3.11), as if refused, while the daemon went
    on and applied it."""
    from lb import control
    from lb.web import main as webmain
    eng = engine(console)
    done = asyncio.Event()

    async def slow(req):        # the daemon, over a real control socket; its saves take long
        if req["cmd"] == "config-put":
            await asyncio.sleep(3)
        reply = json.loads(json.dumps(await eng.control(req)))
        if req["cmd"] == "config-put":
            done.set()
        return reply
    path = control.socket_path("slow", str(tmp_path / "run"))
    # the page's reads (login, the form) must not time out on a loaded CI machine: 1 s for
    # them, the save 3 s late
    console.daemon = webmain.Daemon(path, timeout=1.0)

    async def body(client):
        server = control.ControlServer(path, slow)
        await server.start()
        try:
            await login(client)
            r = await edit_rs1(client, "7")
            page = r.status, await r.text()
            await asyncio.wait_for(done.wait(), 10)
            return page
        finally:
            await server.stop()
    status, page = run(console, body)
    assert status == 504, page
    assert re.search(r'<div class="flash warn" id="flash"><b>the daemon did not answer within 1 s \(control socket '
                     r'[^)]*\): the change was not refused and may have been applied all the same; reload the page to '
                     r'see</b>', page), page
    assert 'value="7"' in page                                   # the input is kept
    assert eng.cfg.virtual_servers[0].real_servers[0].weight == 7     # the daemon applied it


def test_the_notify_field_says_what_the_loader_takes(console):
    """The Redundancy screen's help for notify said "a program's arguments may hold commas", but
    the loader takes an absolute path without arguments (pulse runs PROG NEW OLD INSTANCE): an
    operator who followed it was refused.  The help says so now, and the refusal stands."""
    async def body(client):
        await login(client)
        page = await (await client.get("/redundancy")).text()
        f = await form_of(client, "/redundancy")
        r = await post_form(client, "/redundancy", {**f, "ha_enabled": "on", "ha.primary": "198.18.0.1",
                                                    "ha.backup": "198.18.0.3", "ha.key_file": "/etc/lb/ha.key",
                                                    "ha.notify": "/usr/local/sbin/role-changed --mail ops",
                                                    "restart": "on"})
        return page, r.status, await r.text()
    page, status, refused = run(console, body)
    help_ = re.search(r'name="ha.notify"[^>]*>[^<]*</textarea><div class="help">([^<]*)</div>', page)
    assert help_ and "no arguments" in help_.group(1) and "arguments may" not in help_.group(1), help_
    assert status == 400
    assert re.search(r'data-for="ha.notify">[^<]*expected a program&#x27;s absolute path without spaces', refused)
