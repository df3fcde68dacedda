"""A real server's up/down transition is logged once: the engine's line ("real server ADDR:PORT
of PROTO VIP:PORT is down: REASON"), not a second one from its monitor (lb.health)."""
from __future__ import annotations

import asyncio
import logging

from lb import config as lbconfig
from lb.engine import Engine, real_key
from lb.health import CheckResult

CONFIG = """
[global]
instance = "logonce"
public_interface = "lo"
network = "direct"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
monitor = { kind = "tcp", timeout = 0, reentry = 0 }     # down at the first failure, up at the first success
real_server = [{ address = "198.18.1.11" }]
"""


def test_each_transition_is_logged_once(caplog) -> None:
    eng = Engine(lbconfig.loads(CONFIG), dataplane="ipvs")    # the constructor touches nothing in the kernel
    vs = eng.cfg.virtual_servers[0]
    key = real_key(vs, vs.real_servers[0])

    async def main():
        eng.sync_monitors()
        mon, task = eng.monitors[key][2:]
        task.cancel()                                   # no check runs: the results are fed below
        with caplog.at_level(logging.INFO, logger="lb"):
            mon.observe(CheckResult(ok=False, detail="connection refused", duration=0.0, at=0.0), 1.0)
            mon.observe(CheckResult(ok=True, detail="connected", duration=0.0, at=0.0), 2.0)

    asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if "198.18.1.11" in r.getMessage()]
    assert said == ["real server 198.18.1.11:80 of TCP 198.18.0.10:80 is down: no successful check since the "
                    "first, 1 failed check in a row (timeout 0s): connection refused",
                    "real server 198.18.1.11:80 of TCP 198.18.0.10:80 is up: checks succeeded for 0.0s "
                    "(reentry 0s): connected"], said
