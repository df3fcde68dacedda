"""`lb web`: the console as its own process (lb-web@<instance>.service, an unprivileged user).

It asks the daemon for its [web] settings over the control socket (so it reads no configuration
file), waits for the daemon when it is not up yet, and serves the console on [web] listen, with
TLS when [web] has a certificate.  It exits when [web] enabled is false (status 0: nothing to do)
and on SIGTERM/SIGINT.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import stat

from aiohttp import web

from lb import control
from lb.web import app as webapp
from lb.web import password

log = logging.getLogger("lb.web")

WAIT_LOG_EVERY = 30.0


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
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            return {"ok": False, "error": f"control socket {self.path}: {getattr(e, 'strerror', None) or e or 'timeout'}"}


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
            log.warning("web console: waiting for the daemon: %s", reply.get("error"))
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
    console = webapp.Console(daemon, pwfile, webapp.Settings.from_reply(reply))
    runner = web.AppRunner(console.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, w["address"], w["port"], ssl_context=tls).start()
    except OSError as e:
        await runner.cleanup()
        log.error("web console not started: cannot listen on %s: %s", w["listen"], e.strerror or e)
        return 1
    log.info("web console on %s://%s/ for instance %s (uid %d, password file %s)", "https" if tls else "http",
             w["listen"], instance, os.geteuid(), pwfile)
    if os.geteuid() == 0:
        log.warning("web console: running as root; it needs no privilege (lb-web@.service runs it as its own user)")
    await stop.wait()
    await runner.cleanup()
    log.info("web console stopped")
    return 0


def run(instance: str, shared_dir: str = control.SHARED_DIR) -> int:
    return asyncio.run(serve(instance, shared_dir))
