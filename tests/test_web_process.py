"""`lb web` as a process of its own (lb.web.main): it takes its [web] settings from the daemon's
control socket (reading no configuration file), serves HTTPS when [web] has a certificate, and
does nothing when [web] enabled is false."""
from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading

import pytest
from aiohttp import ClientSession

from lb import control
from lb.web import main as webmain
from lb.web import password
from control_util import one_reply_daemon
from ports import held_port

PASSWORD = "a password for tls"


@pytest.fixture
def cert(tmp_path):
    return make_cert(tmp_path)


def make_cert(tmp_path):
    """A self-signed certificate and its key for 127.0.0.1 (skips the test without openssl)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl makes the test certificate")
    crt, key = tmp_path / "web.crt", tmp_path / "web.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    return crt, key


def daemon(tmp_path, web: dict):
    """A control socket answering "web" (and "status") as the daemon would."""
    async def handler(req):
        if req["cmd"] == "web":
            return {"ok": True, "instance": "t", "config": "/x", "web": web}
        return {"ok": True, "status": {"instance": "t", "services": []}}

    loop = asyncio.new_event_loop()
    server = control.ControlServer(control.socket_path("t", str(tmp_path)), handler)
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    return loop, t


def settings(tmp_path, **over):
    pw = tmp_path / "pw"
    password.write(pw, PASSWORD, "admin")
    port = held_port()
    web = {"enabled": True, "address": "127.0.0.1", "port": port, "listen": f"127.0.0.1:{port}",
           "password_file": str(pw), "tls_cert": None, "tls_key": None, "allowed_hosts": [], "trusted_proxies": [],
           "session_lifetime": 3600}
    web.update(over)
    return web


def test_lb_web_serves_https_with_the_daemons_settings(tmp_path, cert):
    crt, key = cert
    web = settings(tmp_path, tls_cert=str(crt), tls_key=str(key), hsts=True)
    loop, t = daemon(tmp_path, web)

    async def go():
        task = asyncio.create_task(webmain.serve("t", str(tmp_path)))
        ctx = ssl.create_default_context(cafile=str(crt))
        ctx.check_hostname = False
        base = f"https://127.0.0.1:{web['port']}"
        async with ClientSession() as s:
            for _ in range(100):
                try:
                    r = await s.get(base + "/login", ssl=ctx)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            assert r.status == 200 and "Log in" in await r.text()
            assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
            r = await s.post(base + "/login", data={"user": "admin", "password": PASSWORD}, ssl=ctx,
                             allow_redirects=False, headers={"Origin": base})
            assert r.status == 303 and "Secure" in r.headers["Set-Cookie"]
            with pytest.raises(Exception):          # no plain HTTP on that port
                await s.get(f"http://127.0.0.1:{web['port']}/login")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(go())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_lb_web_does_nothing_when_disabled(tmp_path):
    loop, t = daemon(tmp_path, settings(tmp_path, enabled=False))
    try:
        assert webmain.run("t", str(tmp_path)) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_lb_web_waiting_for_a_socket_that_is_not_there_names_the_control_setting(tmp_path, caplog):
    """A daemon whose [control] names no group never opens /run/lb-control/<instance>.sock: lb-web@
    waited saying only "the daemon is not running" while `systemctl status lb@...` said it ran.
    The line says the other cause too, and what to set."""
    import logging

    async def go():
        task = asyncio.create_task(webmain.serve("t", str(tmp_path)))
        for _ in range(100):                 # bounded: up to 10 s for the first line
            if "waiting for the daemon" in caplog.text:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="lb.web"):
        asyncio.run(go())
    line = next(r.getMessage() for r in caplog.records if "waiting for the daemon" in r.getMessage())
    assert str(tmp_path / "t.sock") in line, line
    assert "[control]" in line and 'admin_group = "lb-web"' in line, line


def test_lb_web_as_its_units_user_on_a_privileged_port_says_what_it_lacks(tmp_path):
    """lb-web@.service runs the console without capabilities (CapabilityBoundingSet= empty): a
    [web] listen on port 443 failed with "Permission denied" alone, and Restart=on-failure tried
    again every 2 s.  The line now says what the port needs.  As a user without privileges
    (nobody), asking a daemon's socket it may reach, as lb-web asks /run/lb-control's."""
    import os
    import sys
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="lbweb-", dir="/tmp"))
    try:
        d.chmod(0o755)
        pw = d / "pw"
        password.write(pw, PASSWORD, "admin")
        os.chown(pw, 65534, 65534)
        port = 443 if _free(443) else next(p for p in range(400, 1000) if _free(p))
        web = dict(settings(tmp_path), port=port, listen=f"127.0.0.1:{port}", password_file=str(pw))
        server = one_reply_daemon(d / "t.sock", {"ok": True, "instance": "t", "config": "/x", "web": web})
        repo = Path(__file__).resolve().parents[1]
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            f"import sys; from lb.web import main; sys.exit(main.run('t', {str(d)!r}))"],
                           env=dict(os.environ, PYTHONPATH=str(repo)), cwd="/", capture_output=True, text=True,
                           timeout=60)
        server.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert p.returncode == 1, p
    assert f"cannot listen on 127.0.0.1:{port}" in p.stderr and "permission denied" in p.stderr.lower(), p.stderr
    assert "CAP_NET_BIND_SERVICE" in p.stderr and "AmbientCapabilities=" in p.stderr, p.stderr


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
