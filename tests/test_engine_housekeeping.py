"""The run loop's housekeeping (lb.engine.Engine.run): each step on its own.  One that fails at
every turn -- a map the kernel refuses, a bug -- is counted (`lb status`'s housekeeping_errors)
and logged at most once a minute, and the steps after it still run: the sweep, the addresses
put back, XDP attached again.  A table apply that fails, whatever the error, is tried again."""
from __future__ import annotations

import asyncio
import functools
import logging

import pytest

from lb import control
from lb import engine as lbengine
from lb.ha import addresses
from test_override import RecordingDataplane, drive, key, make_engine, table, write

STEPS = ("sweep", "defend", "estimate", "keep_attached", "refresh_nexthops")


class CountingDataplane(RecordingDataplane):
    """Counts the loop's calls of each housekeeping step; ``fail`` (step -> exception) raises."""

    def __init__(self, fail=None):
        super().__init__()
        self.fail = dict(fail or {})
        self.calls = dict.fromkeys(STEPS + ("finish_drains",), 0)

    def _step(self, name, result=None):
        self.calls[name] += 1
        if name in self.fail:
            raise self.fail[name]
        return result

    def finish_drains(self):
        return self._step("finish_drains", 0)

    def sweep(self):
        return self._step("sweep", 0)

    def defend(self):
        return self._step("defend")

    def estimate(self):
        return self._step("estimate", 0)

    def keep_attached(self):
        return self._step("keep_attached", [])

    def refresh_nexthops(self, resolved=None):
        return self._step("refresh_nexthops", 0)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(addresses, "take", lambda addrs: list(addrs))
    monkeypatch.setattr(addresses, "release", lambda addrs: None)
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    for interval in ("SWEEP_INTERVAL", "NEXTHOP_INTERVAL", "ESTIMATE_INTERVAL", "DEFENSE_INTERVAL",
                     "OWNERSHIP_INTERVAL"):
        monkeypatch.setattr(lbengine, interval, 0.0)       # every step at every turn
    # ... the XDP programs' look too, which waits for a link change or FULL_CHECK otherwise
    monkeypatch.setattr(addresses.Watch, "FULL_CHECK", 0.0)
    return tmp_path


TURNS = 6


def turn(eng, n=TURNS):
    """The loop's turns, woken one after the other (not a second apart)."""
    async def body(call):
        for _ in range(n):
            eng._wake.set()
            await asyncio.sleep(0.05)
    return body


@pytest.mark.parametrize("error, traceback", [(OSError(28, "No space left on device"), False),
                                              (TypeError("a bug"), True)])
def test_a_step_failing_at_every_turn_starves_none_of_the_others(run_dir, caplog, error, traceback):
    """finish_drains fails at every turn: the steps after it run all the same, each failure is
    counted, and the log says it once (in a minute), with the traceback only of a bug."""
    eng = make_engine(write(run_dir / "lb.toml", instance="hk"))
    eng.dp = CountingDataplane(fail={"finish_drains": error})
    eng.dp.draining = True
    with caplog.at_level(logging.ERROR, logger="lb.engine"):
        drive(eng, str(run_dir), turn(eng))
    turns = eng.dp.calls["finish_drains"]
    assert turns >= TURNS
    assert all(eng.dp.calls[s] >= turns for s in STEPS), eng.dp.calls
    assert eng.housekeeping_errors == {"finish_drains": turns}
    assert eng.status(counters=False)["housekeeping_errors"] == {"finish_drains": turns}
    # and `lb status` says so (it was only in --json and the log, once a minute)
    from lb.cli.main import _status_lines
    doc = eng.status(counters=False)
    doc["task_restarts"] = {"health": 2, "pulse-decide": 0}     # (the process's: other tests' too)
    lines = _status_lines(doc)
    assert [s for s in lines if s.startswith("errors")] == [f"errors (see the log): finish_drains failed {turns} "
                                                            f"times, health restarted 2 times"], lines
    said = [r for r in caplog.records if "finishing the drains" in r.getMessage()]
    text = f"{error}" if not traceback else f"TypeError: {error}"
    assert said[0].getMessage() == ("housekeeping: finishing the drains of removed real servers failed (tried "
                                    f"again at its next turn; 1 failures so far): {text}"), caplog.text
    assert [bool(r.exc_info) for r in said] == ([False, True] if traceback else [False]), caplog.text


def test_a_bug_at_every_turn_logs_its_traceback_once(run_dir, caplog):
    """A bug in a step, hit at every turn for months: its line once a minute (with the count),
    and its traceback once -- it came with every one of those lines, a traceback a minute."""
    from lb.tasks import RateLimitedLog
    eng = make_engine(write(run_dir / "lb.toml", instance="hkbug"))
    eng.dp = CountingDataplane(fail={"sweep": TypeError("a bug")})
    clock = [0.0]
    eng._housekeeping_log = RateLimitedLog(lbengine.log, 60.0, clock=lambda: clock[0])

    def minutes(n):
        async def body(call):
            for _ in range(n):
                clock[0] += 61.0             # each turn a minute after the last
                eng._wake.set()
                await asyncio.sleep(0.05)
        return body

    with caplog.at_level(logging.ERROR, logger="lb.engine"):
        drive(eng, str(run_dir), minutes(4))
    said = [r for r in caplog.records if "sweeping expired" in r.getMessage()]
    assert len(said) >= 4 + 1, caplog.text          # a line a minute, and one traceback
    assert sum(bool(r.exc_info) for r in said) == 1, caplog.text


def test_an_apply_that_fails_with_any_error_is_tried_again(run_dir):
    """Not only the data plane's own errors: whatever apply_health raises, the change (a health
    verdict is reported once) stays to be applied, at the next turn."""
    class Once(RecordingDataplane):
        fail_next = False

        def apply(self, table, nexthops=None):
            if self.fail_next:
                self.fail_next = False
                raise OSError(12, "Cannot allocate memory")
            super().apply(table)

    eng = make_engine(write(run_dir / "lb.toml", instance="hkapply"))
    eng.dp = Once()
    eng.apply_health()

    async def body(call):
        eng.dp.fail_next = True
        eng._health_changed(key(eng, "rs2"), False, "connection refused")
        await turn(eng)(call)

    drive(eng, str(run_dir), body)
    assert table(eng) == {"rs1": 5, "rs3": 1}
    assert eng.housekeeping_errors == {"apply": 1}


def test_a_health_monitor_that_keeps_failing_is_named_in_lb_status(run_dir, monkeypatch):
    """A bug in rs1's check: its monitor is restarted after each failure, and its verdict is
    whatever it was before -- `lb status` showed the server "up" as if checked, the restarts
    counted only by kind in --json.  Now its line says the monitor keeps being restarted, and why."""
    from lb.cli.main import _status_lines
    from lb.health import monitor as monitor_mod

    async def broken(spec):
        raise KeyError("a bug in a check")
    monkeypatch.setattr(monitor_mod, "run_check", broken)
    eng = make_engine(write(run_dir / "lb.toml", instance="hkmon", monitor="tcp"))

    async def body(call):
        mon = eng.monitors[key(eng, "rs1")][2]
        for _ in range(300):
            if mon.supervision.restarts >= 2:
                break
            await asyncio.sleep(0.01)
        return eng.status(counters=False)

    doc = drive(eng, str(run_dir), body)
    rs1 = doc["services"][0]["real_servers"][0]
    assert rs1["monitor_restarts"] >= 2 and rs1["monitor_error"] == "KeyError: 'a bug in a check'", rs1
    lines = _status_lines(doc)
    i = next(i for i, line in enumerate(lines) if line.startswith("  -> rs1 "))
    said = [line for line in lines[i + 1:] if line.startswith("     health monitor restarted")]
    assert said and said[0].endswith("times after an error (see the log), the last: "
                                     "KeyError: 'a bug in a check'"), lines


def test_a_step_that_does_not_end_is_said_while_it_lasts(run_dir, caplog, monkeypatch):
    """A step that hangs (a netlink call that never returns, in the executor) holds the loop:
    health changes, reloads, the sweep wait behind it.  Under lb@.service the watchdog aborts
    lb; run any other way nothing said so.  The log says it while it lasts, and when it ends."""
    import time
    monkeypatch.setattr(lbengine, "HOUSEKEEPING_SLOW", 0.1)

    class Slow(CountingDataplane):
        def sweep(self):
            if self.calls["sweep"] == 0:
                time.sleep(0.5)
            return super().sweep()

    eng = make_engine(write(run_dir / "lb.toml", instance="hkslow"))
    eng.dp = Slow()
    with caplog.at_level(logging.WARNING, logger="lb.engine"):
        drive(eng, str(run_dir), turn(eng, 3))
    said = [r.getMessage() for r in caplog.records if "sweeping expired connections" in r.getMessage()]
    assert len(said) >= 3 and "still running after 0 s" in said[0] and "still running" in said[1], said
    assert said[-1].startswith("housekeeping: sweeping expired connections done after"), said
    assert eng.dp.calls["sweep"] >= 1 and not eng.housekeeping_errors
    # what it took, in `lb status --json` (lb_housekeeping_last_seconds): the half second at least
    spent = eng.status(counters=False, configuration=False)["housekeeping_seconds"]["sweep"]
    assert spent["runs"] == eng.dp.calls["sweep"] and spent["seconds"] >= 0.5 and spent["last"] > 0, spent


def test_the_directors_own_addresses_follow_its_interfaces_into_the_xdp_table(run_dir, monkeypatch):
    """The run loop reads the director's addresses at its sweeps; a change goes into the next
    table the data plane is given (TableSpec.local_addrs: the XDP data plane schedules no new
    connection from one), an address that goes leaves it, and no change applies nothing.
    Kernel IPVS is not given them: the kernel drops a packet from its own address before IPVS
    sees it."""
    import ipaddress
    d4, d6 = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("2001:2::1")
    have = [{d4, d6}]
    monkeypatch.setattr(addresses, "local_addresses", lambda: set(have[0]))
    eng = make_engine(write(run_dir / "lb.toml", instance="hkown"))
    eng.dp = CountingDataplane()
    eng.dp.kind = "xdp"
    seen = []

    async def body(call):
        for step in range(3):
            for _ in range(TURNS):
                eng._wake.set()
                await asyncio.sleep(0.05)
            seen.append((eng.dp.applied[-1].local_addrs, len(eng.dp.applied)))
            have[0] = {d4}                  # d6 leaves the director's interfaces

    drive(eng, str(run_dir), body)
    assert [addrs for addrs, _ in seen] == [{d4, d6}, {d4}, {d4}]
    assert seen[2][1] == seen[1][1]         # nothing changed since: nothing applied

    ipvs = make_engine(write(run_dir / "lb2.toml", instance="hkown2"))
    ipvs.dp = CountingDataplane()
    ipvs._dirty = True                      # an apply to look at (a health change's)
    drive(ipvs, str(run_dir), turn(ipvs))
    assert ipvs.dp.applied and all(t.local_addrs == frozenset() for t in ipvs.dp.applied)



def test_an_address_the_director_gains_is_read_when_rtnetlink_tells_not_at_the_next_sweep(run_dir, monkeypatch):
    """Between sweeps (5 s apart) an address added to a director interface -- a source forged
    from it scheduled meanwhile -- is read as soon as the address watch tells of it: the turn
    it wakes reads the addresses and the next applies them, no sweep between."""
    import ipaddress
    d4, new = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.9")
    monkeypatch.setattr(addresses, "local_addresses", lambda: {d4, new})
    monkeypatch.setattr(lbengine, "SWEEP_INTERVAL", 3600.0)     # no sweep in the test's time
    eng = make_engine(write(run_dir / "lb.toml", instance="hkowntold"))
    eng.dp = CountingDataplane()
    eng.dp.kind = "xdp"
    seen = []

    async def body(call):
        eng._dirty = True                   # an apply to look at (a health change's)
        for _ in range(TURNS):              # turns, untold: the addresses wait for a sweep
            eng._wake.set()
            await asyncio.sleep(0.05)
        seen.append(set(eng.dp.applied[-1].local_addrs))
        eng._address_watch._told_own()      # as the watch's thread does at an RTM_NEWADDR
        for _ in range(40):                 # bounded; no wake of the test's: the watch's own
            await asyncio.sleep(0.05)
            if eng.dp.applied[-1].local_addrs:
                break
        seen.append(set(eng.dp.applied[-1].local_addrs))

    drive(eng, str(run_dir), body)
    assert seen == [set(), {d4, new}], seen
    assert eng.dp.calls["sweep"] == 0, eng.dp.calls


class _Held:
    """A data plane whose long part of one step (``part``: the sweep's scan, the next hops'
    resolution) waits until the test releases it, saying when it has begun."""

    def __init__(self, part: str):
        import threading
        self.part, self.begun, self.release = part, threading.Event(), threading.Event()

    def dataplane(self):
        held = self

        class Held(CountingDataplane):
            def sweep_scan(self, sp):
                if held.part == "sweep":
                    held.hold()
                return sp

            def resolve_nexthops(self, work, budget=None):
                if held.part == "refresh_nexthops":
                    held.hold()
                return {}
        return Held()

    def hold(self):
        self.begun.set()
        self.release.wait(30)


@pytest.mark.parametrize("step", ["sweep", "refresh_nexthops"])
def test_a_weight_change_is_applied_while_a_step_beside_the_turns_runs(run_dir, step):
    """The sweep's scan (the dumps of the connection tables, ~0.5 s at 1M connections) and the
    next hops' resolution (up to NEXTHOP_BUDGET, 1 s, a turn at thousands of real servers) run
    beside the run loop's turns and without the data plane's lock: an `lb weight` asked while one
    runs is answered, applied, before it ends (it waited for the whole step)."""
    held = _Held(step)
    eng = make_engine(write(run_dir / "lb.toml", instance=f"hkbeside{step[:3]}"))
    eng.dp = held.dataplane()
    inst = eng.cfg.instance

    async def body(call):
        try:
            eng._wake.set()
            assert await asyncio.get_running_loop().run_in_executor(None, held.begun.wait, 30)
            reply = await asyncio.wait_for(
                call(lambda: control.request(inst, "weight", service="web", server="rs1", weight=0)), 20)
            assert reply["ok"] and table(eng) == {"rs1": 0, "rs2": 1, "rs3": 1}, reply
            assert not held.release.is_set() and eng.dp.calls[step] == 0      # the step still runs
        finally:
            held.release.set()
        for _ in range(100):                      # and the step ends, its last part under the lock
            if eng.dp.calls[step]:
                break
            await asyncio.sleep(0.05)

    drive(eng, str(run_dir), body)
    assert eng.dp.calls[step] >= 1 and not eng.housekeeping_errors
