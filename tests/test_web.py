"""The web console (lb.web): login, sessions, CSRF, the pages, reload, /api/status; `lb passwd`;
the [web] config table; and one `lb run` in the lab director serving it on 127.0.0.1."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from lb import config as lbconfig
from lb.cli.main import main as lb_main
from lb.engine import Engine
from lb.web import app as webapp
from lb.web import password

PASSWORD = "correct horse battery"

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


class FakeEngine:
    """What the console needs of lb.engine.Engine: cfg, status(), control().  status() is the real
    Engine's (built, never started); a reload of a bad file goes through the real
    Engine._reload_reply, so its refusal is exactly what the daemon answers."""

    def __init__(self, cfg_path: Path):
        self.real = Engine(lbconfig.load(cfg_path))
        self.requests: list[dict] = []

    @property
    def cfg(self):
        return self.real.cfg

    def status(self) -> dict:
        return self.real.status()

    async def control(self, req: dict) -> dict:
        self.requests.append(req)
        try:
            lbconfig.load(self.cfg.path)
        except lbconfig.ConfigError:
            return self.real._reload_reply()
        return {"ok": True, "message": f"reloaded {self.cfg.path}"}


def counts():
    return {(("tcp", "198.18.0.10", 80), "198.18.1.11", 80): (3, 7)}


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / "web.passwd"
    password.write(p, PASSWORD)
    return p


@pytest.fixture
def console(tmp_path, pwfile):
    eng = FakeEngine(write_config(tmp_path / "lb.toml"))
    return webapp.Console(eng, pwfile, counts=counts, fail_delay=0.05)


def run(console, body):
    """body(client) on an aiohttp test client of the console's app."""
    async def go():
        client = TestClient(TestServer(console.app()))
        await client.start_server()
        try:
            return await body(client)
        finally:
            await client.close()
    return asyncio.run(go())


async def login(client, pw=PASSWORD):
    return await client.post("/login", data={"password": pw}, allow_redirects=False)


async def csrf_of(client) -> str:
    text = await (await client.get("/status")).text()
    m = re.search(r'name=csrf value="([^"]+)"', text)
    assert m, text
    return m.group(1)


# ---- login, sessions, CSRF ------------------------------------------------------------------

def test_every_page_redirects_to_login_without_a_session(console):
    async def body(client):
        for path in ("/", "/status", "/global", "/redundancy", "/virtual", "/nonexistent"):
            r = await client.get(path, allow_redirects=False)
            assert (r.status, r.headers.get("Location")) == (303, "/login"), path
        r = await client.get("/api/status", allow_redirects=False)
        assert r.status == 401 and await r.json() == {"error": "login required"}
        for path in ("/reload", "/logout"):
            r = await client.post(path, data={"csrf": "x"}, allow_redirects=False)
            assert (r.status, r.headers.get("Location")) == (303, "/login"), path
        r = await client.get("/login")
        assert r.status == 200 and 'type="password"' in await r.text()
    run(console, body)
    assert console.engine.requests == []


def test_wrong_password_is_refused_logged_and_slowed(console, caplog):
    console.fail_delay = 1.0
    async def body(client):
        t0 = time.monotonic()
        r = await login(client, "wrong password")
        took = time.monotonic() - t0
        assert r.status == 401 and "Wrong password" in await r.text()
        assert "Set-Cookie" not in r.headers
        assert took >= 0.95
        r = await client.get("/status", allow_redirects=False)
        assert r.status == 303
    with caplog.at_level(logging.WARNING, logger="lb.web"):
        run(console, body)
    assert "failed login from 127.0.0.1" in caplog.text
    assert console.sessions == {}


def test_right_password_gives_a_session_cookie(console):
    async def body(client):
        r = await login(client)
        assert (r.status, r.headers["Location"]) == (303, "/status")
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("lb_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        r = await client.get("/status", allow_redirects=False)
        assert r.status == 200 and "Control/Monitoring" in await r.text()
        assert r.headers["X-Frame-Options"] == "DENY" and "default-src 'none'" in r.headers["Content-Security-Policy"]
        r = await client.get("/login", allow_redirects=False)
        assert (r.status, r.headers["Location"]) == (303, "/status")
    run(console, body)
    assert len(console.sessions) == 1


def test_post_needs_the_sessions_csrf_token(console):
    async def body(client):
        await login(client)
        r = await client.post("/reload", data={}, allow_redirects=False)
        assert r.status == 403 and "CSRF" in await r.text()
        r = await client.post("/reload", data={"csrf": "forged"}, allow_redirects=False)
        assert r.status == 403
        assert console.engine.requests == []
        token = await csrf_of(client)
        r = await client.post("/reload", data={"csrf": token}, headers={"Origin": "http://evil.example"},
                              allow_redirects=False)
        assert r.status == 403 and console.engine.requests == []
        r = await client.post("/reload", data={"csrf": token}, allow_redirects=False)
        assert (r.status, r.headers["Location"]) == (303, "/status")
        assert console.engine.requests == [{"cmd": "reload"}]
        assert "reloaded" in await (await client.get("/status")).text()
    run(console, body)


def test_logout_ends_the_session(console):
    async def body(client):
        await login(client)
        token = await csrf_of(client)
        cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["lb_session"].value
        r = await client.post("/logout", data={"csrf": token}, allow_redirects=False)
        assert (r.status, r.headers["Location"]) == (303, "/login")
        r = await client.get("/status", allow_redirects=False)
        assert r.status == 303
        # the old cookie, replayed, is worth nothing
        r = await client.get("/status", allow_redirects=False, cookies={"lb_session": cookie})
        assert (r.status, r.headers["Location"]) == (303, "/login")
    run(console, body)
    assert console.sessions == {}


def test_session_expires_after_8_hours_idle(console):
    now = [1000.0]
    console.clock = lambda: now[0]
    async def body(client):
        await login(client)
        now[0] += 7.9 * 3600
        assert (await client.get("/status", allow_redirects=False)).status == 200   # and this use renews it
        now[0] += 7.9 * 3600
        assert (await client.get("/status", allow_redirects=False)).status == 200
        now[0] += 8 * 3600 + 1
        r = await client.get("/status", allow_redirects=False)
        assert (r.status, r.headers["Location"]) == (303, "/login")
    run(console, body)


def test_a_missing_password_file_refuses_every_login(console, caplog):
    os.unlink(console.password_file)
    async def body(client):
        r = await login(client)
        assert r.status == 503 and "password file" in await r.text()
        assert (await client.get("/status", allow_redirects=False)).status == 303
    with caplog.at_level(logging.ERROR, logger="lb.web"):
        run(console, body)
    assert "no such file (create it with `lb passwd`)" in caplog.text


# ---- pages --------------------------------------------------------------------------------

def test_status_page_shows_each_real_server_line(console):
    async def body(client):
        await login(client)
        return await (await client.get("/status")).text()
    page = run(console, body)
    assert "role <b>active</b>" in page and "data plane <b>xdp</b>" in page
    assert "<h2>web: TCP 198.18.0.10:80</h2>" in page
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", page)
    cells = [r.split("</td><td") for r in rows]
    rs1 = next(c for c in cells if c[0] == "rs1")
    # name, address, weight, health, ActiveConn, InActConn
    assert [re.sub(r"^[^>]*>", "", c) for c in rs1[:6]] == ["rs1", "198.18.1.11:80", "3", "unmonitored", "3", "7"]
    rs2 = next(c for c in cells if c[0] == "rs2")
    assert [re.sub(r"^[^>]*>", "", c) for c in rs2[:6]] == ["rs2", "198.18.1.12:80", "1", "unmonitored", "-", "-"]
    assert "edited in the file" in page and "applied with reload" in page


def test_auto_refresh_is_an_option(console):
    async def body(client):
        await login(client)
        plain = await (await client.get("/status")).text()
        every5 = await (await client.get("/status?refresh=5")).text()
        odd = await (await client.get("/status?refresh=1")).text()
        return plain, every5, odd
    plain, every5, odd = run(console, body)
    assert 'http-equiv="refresh"' not in plain and 'href="/status?refresh=5"' in plain
    assert '<meta http-equiv="refresh" content="5">' in every5
    assert 'http-equiv="refresh"' not in odd


def test_config_pages_show_the_running_config_escaped(tmp_path, pwfile):
    eng = FakeEngine(write_config(tmp_path / "lb.toml", name="<i>web</i>"))
    console = webapp.Console(eng, pwfile, counts=counts)
    async def body(client):
        await login(client)
        return {p: await (await client.get(p)).text() for p in ("/status", "/global", "/redundancy", "/virtual")}
    pages = run(console, body)
    for text in pages.values():
        assert "<i>web</i>" not in text
    assert "&lt;i&gt;web&lt;/i&gt;" in pages["/status"] and "&lt;i&gt;web&lt;/i&gt;" in pages["/virtual"]
    assert "<th>public_interface</th><td>eth0</td>" in pages["/global"]
    assert "single director" in pages["/redundancy"]
    virtual = pages["/virtual"]
    assert "<td>rs1</td><td>198.18.1.11:80</td><td>3</td>" in virtual
    assert "<th>kind</th><td>tcp</td>" in virtual and "<th>interval</th><td>2 s</td>" in virtual


def test_reload_refused_shows_file_line_and_field(console):
    cfg_path = console.engine.cfg.path
    write_config(cfg_path, weight='"heavy"')
    line = next(i for i, ln in enumerate(cfg_path.read_text().splitlines(), 1) if '"heavy"' in ln)
    async def body(client):
        await login(client)
        token = await csrf_of(client)
        r = await client.post("/reload", data={"csrf": token})       # follows to /status
        return await r.text()
    page = run(console, body)
    assert f"{cfg_path}:{line}: virtual_server[0].real_server[0].weight: expected an integer, " \
           f"got string &quot;heavy&quot;" in page
    assert "reload refused, nothing changed" in page
    # shown once: the next look at the page has no stale message
    assert console.engine.requests == [{"cmd": "reload"}]


def test_api_status_is_engine_status(console):
    async def body(client):
        await login(client)
        r = await client.get("/api/status")
        assert r.content_type == "application/json"
        return await r.json()
    doc = run(console, body)
    want = console.engine.status()
    for d in (doc, want):
        d.pop("at")
    assert doc == want
    assert doc["services"][0]["real_servers"][0]["address"] == "198.18.1.11"


# ---- serving: start() on the engine's loop --------------------------------------------------

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_start_serves_and_refuses_without_password_file_or_address(tmp_path, pwfile, caplog):
    port = _free_port()
    web = f'[web]\nenabled = true\nlisten = "127.0.0.1:{port}"\npassword_file = "{pwfile.name}"\n'
    eng = FakeEngine(write_config(tmp_path / "lb.toml", web=web))
    assert eng.cfg.web.password_path(eng.cfg.instance) == pwfile

    async def go():
        running = await webapp.start(eng)
        assert running is not None and running.url == f"http://127.0.0.1:{port}/"
        try:
            async with ClientSession() as s:
                r = await s.get(f"http://127.0.0.1:{port}/status", allow_redirects=False)
                assert r.status == 303
                r = await s.post(f"http://127.0.0.1:{port}/login", data={"password": PASSWORD},
                                 allow_redirects=False)
                assert r.status == 303
            # the port is taken now: a second console says so and does not start
            assert await webapp.start(eng) is None
        finally:
            await running.stop()
        os.unlink(pwfile)
        assert await webapp.start(eng) is None

    with caplog.at_level(logging.INFO, logger="lb.web"):
        asyncio.run(go())
    assert f"web console on http://127.0.0.1:{port}/" in caplog.text
    assert f"web console not started: cannot listen on 127.0.0.1:{port}" in caplog.text
    assert f"web console not started: {pwfile}: no such file (create it with `lb passwd`)" in caplog.text


# ---- lb passwd --------------------------------------------------------------------------------

def _passwd(monkeypatch, capsys, argv, stdin):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = lb_main(["passwd", *argv])
    return rc, capsys.readouterr()


def test_passwd_stdin_writes_a_salted_scrypt_line_0600(tmp_path, monkeypatch, capsys):
    target = tmp_path / "etc" / "console.passwd"
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin"], PASSWORD + "\n")
    assert rc == 0 and f"{target}: password set" in out.out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    text = target.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}\n", text)
    assert password.verify(PASSWORD, text) and not password.verify(PASSWORD + "x", text)
    # again: a new salt, so a new line; nothing but the file is left in the directory
    rc, _ = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin"], PASSWORD + "\n")
    assert rc == 0 and target.read_text() != text and password.verify(PASSWORD, target.read_text())
    assert os.listdir(target.parent) == ["console.passwd"]
    # too short: refused, the file is unchanged
    before = target.read_text()
    rc, out = _passwd(monkeypatch, capsys, ["--file", str(target), "--stdin"], "short\n")
    assert rc == 1 and "at least 8 characters" in out.err and target.read_text() == before


def test_passwd_config_writes_the_webs_password_file(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "lb.toml", web='[web]\npassword_file = "secret/web.pw"\n')
    rc, _ = _passwd(monkeypatch, capsys, ["--config", str(cfg), "--stdin"], PASSWORD + "\n")
    assert rc == 0 and password.verify(PASSWORD, (tmp_path / "secret" / "web.pw").read_text())
    bad = write_config(tmp_path / "bad.toml", web='[web]\npassword_file = 7\n')
    rc, out = _passwd(monkeypatch, capsys, ["--config", str(bad), "--stdin"], PASSWORD + "\n")
    assert rc == 2 and f"{bad}:" in out.err and "web.password_file: expected a string" in out.err


def test_passwd_prompts_twice(tmp_path, monkeypatch, capsys):
    import getpass
    answers = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    target = tmp_path / "p"
    assert lb_main(["passwd", "--file", str(target)]) == 1
    assert "differ" in capsys.readouterr().err and not target.exists()
    answers = iter([PASSWORD, PASSWORD])
    assert lb_main(["passwd", "--file", str(target)]) == 0 and password.verify(PASSWORD, target.read_text())


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


def test_web_config_defaults_and_listen_forms(tmp_path):
    cfg = lbconfig.loads(BASE)
    assert (cfg.web.enabled, cfg.web.listen) == (False, "127.0.0.1:8080")
    assert cfg.web.password_path(cfg.instance) == Path("/etc/lb/edge.passwd")
    cfg = lbconfig.loads(BASE + '[web]\nenabled = true\nlisten = "[::1]:8443"\n')
    assert (cfg.web.enabled, str(cfg.web.address), cfg.web.port, cfg.web.listen) == (True, "::1", 8443, "[::1]:8443")
    f = tmp_path / "lb.toml"
    f.write_text(BASE + '[web]\nlisten = "198.18.0.1:80"\npassword_file = "pw"\n')
    cfg = lbconfig.load(f)
    assert cfg.web.listen == "198.18.0.1:80" and cfg.web.password_path(cfg.instance) == tmp_path / "pw"


@pytest.mark.parametrize("web, line, message", [
    ('enabled = "yes"', 5, 'web.enabled: expected a boolean (true or false), got string "yes"'),
    ('listen = "localhost:8080"', 5, "web.listen: 'localhost' is not an IP address"),
    ('listen = "::1:8080"', 5, 'web.listen: an IPv6 address goes in brackets, e.g. "[::1]:8080"'),
    ('listen = "127.0.0.1"', 5, 'web.listen: expected ADDRESS:PORT'),
    ('listen = "127.0.0.1:99999"', 5, 'web.listen: port must be between 1 and 65535, got "99999"'),
    ('listen = 8080', 5, "web.listen: expected a string, got integer 8080"),
    ('password_file = ""', 5, "web.password_file: must name the file"),
    ('pasword_file = "x"', 5, "web.pasword_file: unknown key 'pasword_file' (did you mean 'password_file'?)"),
])
def test_web_config_errors_name_file_line_field(tmp_path, web, line, message):
    f = tmp_path / "lb.toml"
    f.write_text(BASE + "[web]\n" + web + "\n")
    with pytest.raises(lbconfig.ConfigError) as e:
        lbconfig.load(f)
    assert f"{f}:{line}: {message}" in str(e.value)


# ---- the lab: `lb run` with [web] in the director namespace ---------------------------------

LAB_CONFIG = """
[global]
instance = "lab"
public_interface = "pub0"
private_interface = "priv0"
network = "nat"
nat_router = "198.18.1.254/24"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "rr"
  [virtual_server.monitor]
  kind = "none"
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"

[web]
enabled = true
listen = "127.0.0.1:8099"
password_file = "{pwfile}"
"""

# runs inside the director namespace: log in over loopback, then /api/status and /status
LAB_CLIENT = r"""
import http.cookiejar, json, sys, urllib.parse, urllib.request
base = "http://127.0.0.1:8099"
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
page = opener.open(base + "/login", timeout=10).read().decode()
assert 'type="password"' in page, page
opener.open(base + "/login", data=urllib.parse.urlencode({"password": sys.argv[1]}).encode(), timeout=10)
api = json.loads(opener.open(base + "/api/status", timeout=10).read().decode())
page = opener.open(base + "/status", timeout=10).read().decode()
print(json.dumps({"api": api, "page": page}))
"""

LAB_NETWORK = "nat"


def test_lab_lb_run_serves_the_console_on_loopback(lab, lb_runner, tmp_path):
    pw = tmp_path / "web.passwd"
    password.write(pw, PASSWORD)
    cfg = tmp_path / "lb.toml"
    cfg.write_text(LAB_CONFIG.format(pwfile=pw))
    proc = lb_runner.start(cfg)
    proc.wait_log("web console on http://127.0.0.1:8099/")
    out = lab.run("director", [sys.executable, "-c", LAB_CLIENT, PASSWORD], timeout=30)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    doc = got["api"]
    assert doc["instance"] == "lab" and doc["role"] == "active"
    svc = doc["services"][0]
    assert (svc["name"], svc["address"], svc["port"]) == ("web", "198.18.0.10", 80)
    assert svc["real_servers"][0]["address"] == "198.18.1.11"
    # the status page's counts come from the running table (ActiveConn 0, InActConn 0: no traffic)
    assert "<td>rs1</td><td>198.18.1.11:80</td><td>1</td><td class=''>unmonitored</td><td>0</td><td>0</td>" \
        in got["page"], got["page"]
