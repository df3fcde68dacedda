"""A health verdict (reported once, at its transition) whose apply the data plane refuses once
(ApplyFailed, the previous table written back) is applied at a later turn of the run loop: the
dead server does not keep taking new connections while `lb status` says it is down."""
from __future__ import annotations

import asyncio
import functools
import time

import pytest

from lb import control
from lb import engine as lbengine
from lb.dataplane.errors import ApplyFailed
from lb.ha import addresses
from test_override import RecordingDataplane, drive, key, make_engine, table, write


class FlakyDataplane(RecordingDataplane):
    """Refuses the next apply (as a map write that fails part-way and is written back)."""
    fail_next = False

    def apply(self, table, nexthops=None):
        if self.fail_next:
            self.fail_next = False
            raise ApplyFailed("writing lb_svc_dests: [Errno 12] Cannot allocate memory; the previous table is back",
                              restored=True)
        super().apply(table)

    def finish_drains(self):
        return 0

    def sched_base_pending(self):
        return False


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(addresses, "take", lambda addrs: list(addrs))
    monkeypatch.setattr(addresses, "release", lambda addrs: None)
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    return tmp_path


def test_a_health_verdict_whose_apply_failed_is_applied_later(run_dir):
    eng = make_engine(write(run_dir / "lb.toml", instance="retry"))
    eng.dp = FlakyDataplane()
    eng.apply_health()
    assert table(eng) == {"rs1": 5, "rs2": 1, "rs3": 1}

    async def body(call):
        eng.dp.fail_next = True
        eng._health_changed(key(eng, "rs2"), False, "connection refused")
        deadline = time.monotonic() + 10
        while "rs2" in table(eng) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    drive(eng, str(run_dir), body)
    assert table(eng) == {"rs1": 5, "rs3": 1}
