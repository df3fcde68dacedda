"""A reload that changes a real server's check keeps what its monitor counted: `lb status`'s
checks, failures and transitions, and the metrics' counters of them, go on from where they were
(they fell back to 0: a Prometheus counter going backwards at every such reload)."""
from __future__ import annotations

import asyncio

from prometheus_client.core import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lb import config as lbconfig
from lb import metrics
from lb.engine import Engine, real_key
from lb.health import CheckResult

CONFIG = """
[global]
instance = "reloadcounts"
public_interface = "lo"
network = "direct"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
monitor = { kind = "tcp", interval = INTERVAL, timeout = 0, reentry = 0 }
real_server = [{ name = "rs1", address = "198.18.1.11" }]
"""


class Source:
    def __init__(self, eng):
        self.eng = eng

    def status(self):
        return self.eng.status(counters=False)

    def services(self):
        return []

    def counters(self):
        return {}

    def defense(self):
        return None


def scrape(eng) -> dict:
    reg = CollectorRegistry()
    reg.register(metrics.Collector(Source(eng)))
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            if s.labels.get("server") == "rs1":
                out[(s.name, s.labels.get("to", ""))] = s.value
    return out


def test_a_reload_that_changes_the_check_keeps_its_counts() -> None:
    eng = Engine(lbconfig.loads(CONFIG.replace("INTERVAL", "2")), dataplane="ipvs")
    vs = eng.cfg.virtual_servers[0]
    key = real_key(vs, vs.real_servers[0])

    async def main():
        eng.sync_monitors()
        mon, task = eng.monitors[key][2:]
        task.cancel()                                   # no check runs: the results are fed below
        mon.observe(CheckResult(ok=True, detail="connected", duration=0.0, at=0.0), 1.0)
        mon.observe(CheckResult(ok=False, detail="connection refused", duration=0.0, at=0.0), 2.0)
        mon.observe(CheckResult(ok=True, detail="connected", duration=0.0, at=0.0), 3.0)
        before_status = eng.status(counters=False)["services"][0]["real_servers"][0]
        before = scrape(eng)
        eng.cfg = lbconfig.loads(CONFIG.replace("INTERVAL", "3"))     # what a reload sets, then:
        eng.sync_monitors()
        new, task = eng.monitors[key][2:]
        task.cancel()
        assert new is not mon                           # the check changed: a new monitor
        after_status = eng.status(counters=False)["services"][0]["real_servers"][0]
        return before_status, before, after_status, scrape(eng)

    before_status, before, after_status, after = asyncio.run(main())
    for k in ("checks", "failures", "downs", "ups", "changes", "since", "reason"):
        assert after_status[k] == before_status[k], k
    assert (after_status["checks"], after_status["failures"], after_status["downs"]) == (3, 1, 1)
    for name in ("lb_real_server_health_checks_total", "lb_real_server_health_check_failures_total"):
        assert after[(name, "")] == before[(name, "")] > 0, name
    for to in ("down", "up"):
        assert after[("lb_real_server_health_transitions_total", to)] == 1
