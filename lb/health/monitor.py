"""Nanny: one monitor per real server per virtual service.

State machine (Piranha's nanny):

* A server starts "up" (optimistic) unless ``initial_up=False``.
* While up it goes down once no check has succeeded for ``policy.timeout`` seconds, counted from
  the start of the last successful check (its end less its duration: a slow success must not
  put the down one check later).  Before any success, a check is taken to have passed one
  interval before the first observation: a server dead from the start goes down at the same
  failed check in a row, the ceil(timeout / interval)-th, as one that was up and died (counted
  from the first observation itself it went down one check later than that, later than the
  keepalived import's promise).  With timeout > interval a single failed check therefore does
  not take it down; timeout <= 0 means the first failure does.
* While down it comes back up only after checks have succeeded continuously for
  ``policy.reentry`` seconds, counted from the first success of the current run; any failure
  restarts that clock.  reentry <= 0 means the first success brings it back.
* A check the director could not run (``CheckResult.not_run``: out of file descriptors, memory
  or processes here) is no observation of the server: its state stays, the time until the next
  real observation counts neither as silence (timeout) nor as being alive (reentry), and it is
  counted (``not_run``) and logged at most once a minute for all monitors together.

:meth:`Monitor.observe` is the state machine (no I/O: it takes the time explicitly); on a
transition it logs (logger ``lb.health``; not with ``log_changes=False``: lb.engine's on_change
logs it in service terms), counts and calls ``on_change(key, up, reason)``.
:meth:`Monitor.run` drives it: a check every ``policy.interval`` seconds until cancelled, the
first at ``first_offset(key, interval)`` (the real server's place in [0, interval), the same at
every start: a thousand monitors started together spread their checks over the interval instead
of connecting or forking all at once every interval, as keepalived's checkers spread theirs over
``warmup`` (by default over delay_loop); with timeout > 0 a server's first verdict comes no
later for it, the check before the first counting as passed; with timeout 0 up to one interval
later, at its offset);
:meth:`Monitor.start` runs it under lb.tasks.supervise, so an unexpected error is logged with the
monitor's key and check, and the monitor restarts instead of silently stopping.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from lb.tasks import RateLimitedLog, TaskStats, supervise

from .checks import CheckResult, CheckSpec, run_check

__all__ = ["NannyPolicy", "Monitor", "first_offset"]

log = logging.getLogger("lb.health")
# one line a minute for every monitor's checks that could not run (a director out of file
# descriptors has them all fail at once)
_not_run_log = RateLimitedLog(log, 60.0)


def first_offset(key: Any, interval: float) -> float:
    """When in [0, interval) the first check (or ask) of ``key``'s monitor comes: spread evenly
    over the real servers by a hash of the key, and the same at every start and reload."""
    if not interval > 0:
        return 0.0
    h = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "big")
    return interval * h / 2.0 ** 64


@dataclass(frozen=True)
class NannyPolicy:
    interval: float = 2.0     # seconds between the starts of two checks
    timeout: float = 10.0     # dead after this many seconds without a successful check
    reentry: float = 180.0    # must be alive this long (continuously) before it returns


class Monitor:
    def __init__(self, key: Any, spec: CheckSpec, policy: NannyPolicy,
                 on_change: Callable[[Any, bool, str], None] | None,
                 clock: Callable[[], float] = time.monotonic, *, initial_up: bool = True,
                 log_changes: bool = True):
        self.key = key
        self.spec = spec
        self.policy = policy
        self.on_change = on_change
        self.clock = clock
        self.up = bool(initial_up)
        self.log_changes = log_changes
        self.last: CheckResult | None = None
        self.changes = 0                     # number of transitions so far
        self.downs = 0                       # ... of them to down
        self.ups = 0                         # ... of them back up
        self.since: float | None = None      # clock time of the last transition
        self.since_wall: float | None = None  # time.time() of the last transition
        self.reason: str | None = None       # why the last transition happened
        self.checks = 0                      # number of results observed
        self.failures = 0                    # ... of them failed
        self._ref: float | None = None       # last success's start (or one interval before the first observation): timeout base
        self._ok_since: float | None = None  # first success of the current run of successes
        self._seen: float | None = None      # the last result, run or not
        self._passed = False                 # a check of this monitor has succeeded
        self._failed_run = 0                 # failed checks in a row
        self.not_run = 0                     # checks the director could not run (no observation)
        self.last_not_run: CheckResult | None = None
        self.supervision = TaskStats()       # restarts after an unexpected error
        self.offset = first_offset(key, policy.interval)  # run(): the first check's delay
        self._waited = False                 # ... waited already (a restart does not wait again)

    # what a monitor has counted and last said: a reload that changes the check hands it on
    TALLIES = ("changes", "downs", "ups", "checks", "failures", "not_run", "last_not_run", "since", "since_wall",
               "reason", "last")

    def carry(self, old: Monitor) -> None:
        """Take over ``old``'s tallies (a reload changed its check): `lb status`'s counts and the
        metrics' counters (lb_real_server_health_checks_total, ...) go on from where they were
        instead of falling back to 0, and the last transition keeps its time and reason."""
        for name in self.TALLIES:
            setattr(self, name, getattr(old, name))

    @property
    def state(self) -> str:
        return "up" if self.up else "down"

    def __repr__(self):
        return f"<Monitor {self.key!r} {self.spec.kind} {self.spec.host}:{self.spec.port} {self.state}>"

    def observe(self, result: CheckResult, now: float | None = None) -> bool | None:
        """Feed one result at time `now` (default: clock()); return the new up/down on a transition, else None."""
        if now is None:
            now = self.clock()
        if result.not_run:
            return self._not_run(result, now)
        self._seen = now
        self.last = result
        self.checks += 1
        # the silence runs from the start of a check (checks start every interval; their ends
        # drift with each one's duration): a slow success must not put the down a check later
        started = now - max(0.0, result.duration)
        if self._ref is None:       # the check before the first: as if it had passed (docstring)
            self._ref = started - max(0.0, self.policy.interval)
        if result.ok:
            self._ref = started
            self._passed = True
            self._failed_run = 0
            if self._ok_since is None:
                self._ok_since = now
        else:
            self._ok_since = None
            self.failures += 1
            self._failed_run += 1

        if self.up and not result.ok:
            silent = now - self._ref
            if silent >= self.policy.timeout:
                if self._passed:
                    why = f"no successful check for {silent:.1f}s"
                else:               # the silence counts a check that did not run: say what did
                    n = self._failed_run
                    why = f"no successful check since the first, {n} failed check{'s' * (n != 1)} in a row"
                return self._transition(False, now, f"{why} (timeout {self.policy.timeout:g}s): {result.detail}")
        elif not self.up and result.ok:
            alive = now - self._ok_since
            if alive >= self.policy.reentry:
                return self._transition(True, now, f"checks succeeded for {alive:.1f}s "
                                        f"(reentry {self.policy.reentry:g}s): {result.detail}")
        return None

    def _not_run(self, result: CheckResult, now: float) -> None:
        """No observation: the time since the last result is taken off both clocks."""
        if self._seen is not None:
            blind = max(0.0, now - self._seen)
            if self._ref is not None:
                self._ref += blind
            if self._ok_since is not None:
                self._ok_since += blind
        self._seen = now
        self.not_run += 1
        self.last_not_run = result
        _not_run_log.log(result.detail, logging.WARNING, "health checks %s (%s and others): the real servers "
                         "keep their states until their checks run again", result.detail, self.key)
        return None

    def _transition(self, up: bool, now: float, reason: str) -> bool:
        old = self.state
        self.up = up
        self.changes += 1
        if up:
            self.ups += 1
        else:
            self.downs += 1
        self.since = now
        self.since_wall = time.time()
        self.reason = reason
        if self.log_changes:
            log.log(logging.INFO if up else logging.WARNING, "%s (%s %s:%s): %s -> %s: %s", self.key,
                    self.spec.kind, self.spec.host, self.spec.port, old, self.state, reason)
        if self.on_change is not None:
            try:
                self.on_change(self.key, up, reason)
            except Exception:
                log.exception("%s: on_change callback failed", self.key)
        return up

    async def run(self) -> None:
        """Check every policy.interval seconds, forever, the first after ``offset``; cancel the
        task to stop."""
        loop = asyncio.get_running_loop()
        if not self._waited:
            self._waited = True
            await asyncio.sleep(self.offset)
        while True:
            started = loop.time()
            result = await run_check(self.spec)
            self.observe(result, self.clock())
            await asyncio.sleep(max(0.0, self.policy.interval - (loop.time() - started)))

    def start(self) -> asyncio.Task:
        """run() as a supervised task on the running loop (see the module docstring)."""
        return supervise(f"health {self.key!r}", self.run, logger=log, context=repr(self),
                         stats=self.supervision)
