"""Background tasks that never die silently, and log lines that cannot flood the journal.

``supervise(name, run)`` runs ``await run()`` as a task; when it raises (anything but
cancellation) the exception is logged with the task's name, its context and the traceback, and
``run`` is started again after a backoff (``min_backoff`` doubling up to ``max_backoff``; back to
``min_backoff`` once a run has lasted ``healthy_after`` seconds).  A run that returns ends the task.
A task that fails the same way again and again (a bug hit at every run: a restart every
``max_backoff`` seconds, for months) is logged with its traceback the first time, then at most
once every ``repeat_every`` seconds, in one line saying how many failures were held back.
``spawn(name, coro)`` is the one-shot kind (a notify program): its exception is logged, and the
task is referenced until it ends (asyncio keeps only weak references to tasks).

Every supervised task's restarts are also counted by kind (its name up to the first space:
"health", "load", "pulse-heartbeats", "bgp-lease", ...) in ``RESTARTS``, for the metrics.

``RateLimitedLog`` logs one line per key at most every ``interval`` seconds and says how many
were held back, for events an outsider can trigger at packet rate (refused heartbeats).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

__all__ = ["TaskStats", "supervise", "spawn", "cancel_and_wait", "RateLimitedLog", "RESTARTS"]

log = logging.getLogger("lb.tasks")

_running: set[asyncio.Task] = set()      # spawned tasks, referenced until they end
RESTARTS: dict[str, int] = {}             # task kind -> restarts in this process (0 once started)


@dataclass
class TaskStats:
    """What a supervised task went through (for status pages)."""

    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None   # time.time()


def supervise(name: str, run: Callable[[], Awaitable[None]], *, logger: logging.Logger = log,
              context: str | Callable[[], str] = "", stats: TaskStats | None = None,
              min_backoff: float = 0.5, max_backoff: float = 30.0,
              healthy_after: float = 60.0, repeat_every: float = 600.0,
              clock: Callable[[], float] = time.monotonic) -> asyncio.Task:
    """``run()`` as a task on the running loop, restarted after a backoff whenever it raises."""
    stats = stats if stats is not None else TaskStats()
    kind = name.split(" ", 1)[0]
    RESTARTS.setdefault(kind, 0)
    said: dict[str, tuple[float, int]] = {}    # error text -> (when last logged, failures held back since)

    async def supervisor() -> None:
        backoff = min_backoff
        while True:
            started = clock()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if clock() - started >= healthy_after:
                    backoff = min_backoff
                stats.restarts += 1
                RESTARTS[kind] += 1
                stats.last_error = f"{type(e).__name__}: {e}"
                stats.last_error_at = time.time()
                now = clock()
                last, held = said.get(stats.last_error, (None, 0))
                if last is not None and now - last < repeat_every:
                    said[stats.last_error] = (last, held + 1)       # said already: counted, not logged
                else:
                    said.pop(stats.last_error, None)
                    said[stats.last_error] = (now, 0)
                    while len(said) > 32:                    # errors whose text changes at each run
                        del said[next(iter(said))]
                    where = context() if callable(context) else context
                    more = f" ({held} more like it in the last {now - last:.0f}s)" if held else ""
                    # the traceback once: a repeat says only that it goes on
                    logger.error("task %s%s failed (%s); restart %d in %.1fs%s", name,
                                 f" ({where})" if where else "", stats.last_error, stats.restarts, backoff, more,
                                 exc_info=True if last is None else None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    return asyncio.get_running_loop().create_task(supervisor(), name=name)


async def cancel_and_wait(*tasks: asyncio.Task | None, retry: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every ``retry`` seconds:
    on Python 3.11, asyncio.wait_for drops a cancellation that arrives as the future it waits
    for completes (gh-86296), and the task goes on as if never cancelled -- a stop that awaited
    it once waited for ever.  The tasks' own errors are theirs (supervise logs them): taken
    here, not raised."""
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        done, pending = await asyncio.wait(pending, timeout=retry)
        for t in done:
            if not t.cancelled():
                t.exception()


def spawn(name: str, coro: Awaitable[None], *, logger: logging.Logger = log) -> asyncio.Task:
    """A one-shot task whose exception is logged (never lost) and that is kept alive until done."""

    async def guarded() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("task %s failed", name)

    task = asyncio.get_running_loop().create_task(guarded(), name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


class RateLimitedLog:
    """``log(key, level, msg, *args)``: the first event of a key is logged, then at most one per
    ``interval`` seconds, with the count of the events held back in between.  ``most``: the keys
    remembered at most, for keys an outsider chooses (a client's address): past that, those not
    logged within ``interval`` go (their next event is logged anyway), then the oldest."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, most: int | None = None):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.most = most
        self._last: dict = {}          # key -> (time logged, events held back since)

    def log(self, key, level: int, msg: str, *args, exc_info=False) -> bool:
        now = self.clock()
        last, held = self._last.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            msg += f" ({held} more like it in the last {now - last:.0f}s)"
        self.logger.log(level, msg, *args, exc_info=exc_info or None)
        if self.most is not None and len(self._last) > self.most:
            for k in [k for k, (t, _) in self._last.items() if now - t >= self.interval]:
                del self._last[k]
            while len(self._last) > self.most:
                del self._last[next(iter(self._last))]
        return True


class Slots:
    """Connections served at once: at most ``total``, and ``per_key`` of them for one key (a
    client's address, a peer's uid), so that one cannot take every slot.  Not locked: a
    threaded server takes its own lock around take/give."""

    def __init__(self, total: int, per_key: int | None = None):
        self.total, self.per_key = total, per_key
        self.open = 0
        self.by_key: dict = {}

    def take(self, key, capped: bool = True) -> str | None:
        """None once ``key`` holds a slot; else the limit that refused it: "key" or "total".
        capped=False: only the total bounds it (a trusted proxy's many clients)."""
        if capped and self.per_key is not None and self.by_key.get(key, 0) >= self.per_key:
            return "key"
        if self.open >= self.total:
            return "total"
        self.open += 1
        self.by_key[key] = self.by_key.get(key, 0) + 1
        return None

    def give(self, key) -> None:
        self.open -= 1
        n = self.by_key.pop(key, 1) - 1
        if n > 0:
            self.by_key[key] = n

    def held(self, key) -> int:
        return self.by_key.get(key, 0)
