"""lb.tasks: supervised background tasks (logged and restarted, never lost) and rate-limited logs."""
import asyncio
import logging

from lb.tasks import RateLimitedLog, TaskStats, spawn, supervise

log = logging.getLogger("lb.test")


def test_a_failing_task_is_logged_with_its_context_and_restarted(caplog):
    runs = []

    async def work():
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError(f"bug number {len(runs)}")
        # the third run ends normally: so does the task

    async def main():
        stats = TaskStats()
        task = supervise("pulse-sync-in", work, logger=log, context="backup node", stats=stats,
                         min_backoff=0.01, max_backoff=0.02)
        await asyncio.wait_for(task, 5)
        return stats

    with caplog.at_level(logging.ERROR, logger="lb.test"):
        stats = asyncio.run(main())
    assert len(runs) == 3 and stats.restarts == 2 and stats.last_error == "RuntimeError: bug number 2"
    lines = [r for r in caplog.records if r.name == "lb.test"]
    assert [r.getMessage() for r in lines] == [
        "task pulse-sync-in (backup node) failed (RuntimeError: bug number 1); restart 1 in 0.0s",
        "task pulse-sync-in (backup node) failed (RuntimeError: bug number 2); restart 2 in 0.0s",
    ]
    assert all(r.exc_info is not None for r in lines)      # with the traceback


def test_a_task_failing_the_same_way_at_every_run_is_logged_once_then_rarely(caplog):
    """A bug hit at every run restarts the task every max_backoff seconds for as long as lb runs:
    each restart used to log its traceback (two a minute, per task: a thousand health monitors
    hitting one bug filled the journal).  The first is logged with its traceback; the same
    failure again is counted, and said once every repeat_every seconds with the count held back;
    another failure is logged at once."""
    clock = [1000.0]
    runs = []

    async def work():
        runs.append(1)
        clock[0] += 100.0                            # each run (and its backoff) takes 100 s
        if len(runs) == 9:
            raise KeyError("another bug")
        if len(runs) <= 10:
            raise RuntimeError("the same bug")

    async def main():
        stats = TaskStats()
        task = supervise("health 'rs1'", work, logger=log, stats=stats, min_backoff=0.001, max_backoff=0.001,
                         repeat_every=600.0, clock=lambda: clock[0])
        await asyncio.wait_for(task, 5)
        return stats

    with caplog.at_level(logging.ERROR, logger="lb.test"):
        stats = asyncio.run(main())
    assert len(runs) == 11 and stats.restarts == 10
    lines = [r for r in caplog.records if r.name == "lb.test"]
    assert [r.getMessage() for r in lines] == [
        "task health 'rs1' failed (RuntimeError: the same bug); restart 1 in 0.0s",
        "task health 'rs1' failed (RuntimeError: the same bug); restart 7 in 0.0s (5 more like it in the last 600s)",
        "task health 'rs1' failed (KeyError: 'another bug'); restart 9 in 0.0s",
    ], caplog.text
    assert [r.exc_info is not None for r in lines] == [True, False, True]


def test_cancelling_a_supervised_task_stops_it():
    async def forever():
        await asyncio.sleep(3600)

    async def main():
        task = supervise("t", forever, logger=log)
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(main())


def test_spawned_task_exception_is_logged(caplog):
    async def boom():
        raise ValueError("notify went wrong")

    async def main():
        t = spawn("notify /x", boom(), logger=log)
        await t

    with caplog.at_level(logging.ERROR, logger="lb.test"):
        asyncio.run(main())
    assert "task notify /x failed" in caplog.text and "ValueError: notify went wrong" in caplog.text


def test_rate_limited_log(caplog):
    t = [0.0]
    rl = RateLimitedLog(log, 10.0, clock=lambda: t[0])
    with caplog.at_level(logging.WARNING, logger="lb.test"):
        for i in range(1000):
            t[0] = i * 0.01                       # 1000 events in 10 s
            rl.log("k", logging.WARNING, "refused %d", i)
        t[0] = 10.5
        rl.log("k", logging.WARNING, "refused %d", 1000)
        rl.log("other", logging.WARNING, "other")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1000 (999 more like it in the last 10s)", "other"]
