"""Load monitors: dynamic weights (the seeds' rup/ruptime load monitoring, done the modern way).

Every ``interval`` seconds each real server of a service with a load monitor is asked for its
load, either

* by an **agent**: a TCP connection to the real server's agent port, which answers one line and
  closes (HAProxy's agent-check), or
* by a **program**: argv with %h (address) and %p (port), run through lb.programs (never a
  shell; as ``LoadSpec.user``; PATH, LANG, ``LB_HOST`` and ``LB_PORT`` only), killed (with its
  process group and every process below it, ``setsid`` ones too) after ``timeout`` or once it prints more than REPLY_LIMIT bytes.

The reply sets the real server's weight within [min_weight, its configured weight]:

* ``75%``         -> 75 % of the configured weight (rounded)
* ``weight 3``    -> 3
* ``load 0.7``, or uptime's / rup's ``load average: 0.70, 0.50, 0.40`` -> configured / (1 + load)

* HAProxy's agent-check state words, each reply read by itself (lb keeps no state between
  replies; agents repeat theirs, ``drain 99%``): ``drain``, ``maint``, ``down``, ``fail`` or
  ``stopped`` (a ``#description`` after it allowed) -> weight 0, whatever else the line says and
  below ``min_weight`` too: the server is quiesced (no new connections, its connections go on).
  Dead or alive stays the health monitor's call: lb does not take a server out of the table on
  an agent's word.  ``up`` or ``ready`` -> its percentage if the line has one, else the
  configured weight (HAProxy's ready ends a drain or maint).  ``maxconn:N`` is ignored.

The reply's first line is kept as
the monitor's detail (``lb status``), its unprintable characters escaped (``\\x1b``).  A reply
that cannot be read, an agent that does not answer or a program that fails keeps the last
weight: deciding that a server is dead is the health monitors' job.  So does a number that is not one (``load nan``, ``inf``).

``LoadMonitorTask.start`` runs it under lb.tasks.supervise: whatever escapes a poll is logged
with the real server's key and the task restarts (it cannot silently stop asking).
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from lb import programs
from lb.tasks import TaskStats, supervise

from .checks import CheckSpec, _snip, program_argv
from .monitor import first_offset

__all__ = ["LoadSpec", "LoadMonitorTask", "parse_report", "dynamic_weight", "ask"]

log = logging.getLogger("lb.health.load")

REPLY_LIMIT = 4096

_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
# HAProxy agent-check words (its "agent-check" reply): these quiesce the server (weight 0) ...
STOP_WORDS = ("drain", "maint", "down", "fail", "stopped")
# ... these bring it back to its configured weight when the line names no other
READY_WORDS = ("up", "ready")
_LOAD_AVERAGE = re.compile(r"load averages?:\s*(\d+(?:[.,]\d+)?)", re.I)


@dataclass(frozen=True)
class LoadSpec:
    kind: str               # "agent" | "program"
    host: str
    port: int               # agent: its port; program: the real server's port (for %p)
    program: str = ""
    timeout: float = 2.0
    user: str | None = None  # program: run as this user (None: the daemon's own)


def _finite(value: float, word: str) -> float:
    """value, unless its digits overflowed a float (310 of them: inf), which no weight comes from"""
    if not math.isfinite(value):
        raise ValueError(f"{_snip(word)} out of range")
    return value


def parse_report(text: str) -> tuple[str, float]:
    """("percent", p) | ("weight", n) | ("load", l) from an agent's line or a program's output,
    or (word, 0.0) for one of HAProxy's STOP_WORDS (weight 0); ValueError when none is found."""
    m = _LOAD_AVERAGE.search(text)
    if m:
        return "load", _finite(float(m.group(1).replace(",", ".")), m.group(1))
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    # HAProxy: "down#the reason" -- what follows a # is a description
    words = [w for w in re.split(r"[\s,;]+", line.split("#", 1)[0].strip().lower()) if w]
    stop = next((w for w in words if w in STOP_WORDS), None)
    if stop is not None:                 # drain wins over a percentage given with it ("drain 99%")
        return stop, 0.0
    number = _number(words)
    if number is not None:
        return number
    if any(w in READY_WORDS for w in words) and not any(w in ("weight", "load") or w.endswith("%") for w in words):
        return "percent", 100.0          # "up" / "ready" alone (no unreadable number): configured weight
    raise ValueError(f"no load or weight in {_snip(text)} (expected e.g. '75%', 'weight 3', 'load 0.7', "
                     f"'load average: 0.70, ...' or an agent's drain / down / ready)")


def _number(words: list[str]) -> tuple[str, float] | None:
    """The line's first percentage, `weight N` or `load L`; None when it has none."""
    for i, w in enumerate(words):
        pm = _PERCENT.match(w)
        if pm:
            return "percent", _finite(float(pm.group(1)), w)
        if w in ("weight", "load") and i + 1 < len(words):
            try:
                value = float(words[i + 1])
            except ValueError:
                break
            if not math.isfinite(value) or value < 0 or (w == "weight" and not value.is_integer()):
                break
            return w, value
    return None


def dynamic_weight(report: tuple[str, float], configured: int, min_weight: int) -> int:
    """The weight a report asks for, within [min_weight, configured] (configured wins when
    min_weight is above it); 0 for an agent's drain, maint, down, fail or stopped."""
    kind, value = report
    if kind in STOP_WORDS:
        return 0
    if kind == "percent":
        w = configured * value / 100.0
    elif kind == "weight":
        w = value
    else:
        w = configured / (1.0 + value)
    # min() first: a percentage of 1e308 overflows to inf, which int() refuses
    return max(min(min_weight, configured), int(min(w, configured) + 0.5))


async def _ask_agent(spec: LoadSpec) -> str:
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    try:
        data = b""
        while b"\n" not in data and len(data) < REPLY_LIMIT:
            chunk = await reader.read(REPLY_LIMIT - len(data))
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", errors="replace")
    finally:
        writer.close()


async def _ask_program(spec: LoadSpec) -> str:
    argv = program_argv(CheckSpec(kind="program", host=spec.host, port=spec.port, program=spec.program))
    if not argv:
        raise ValueError("no program given")
    try:
        res = await programs.run(argv, user=spec.user, timeout=spec.timeout, limit=REPLY_LIMIT,
                                 env={"LB_HOST": spec.host, "LB_PORT": str(spec.port)})
    except programs.ProgramError as e:
        raise RuntimeError(str(e)) from None
    out = bytes(res.stdout)
    if res.killed == "timeout":
        raise TimeoutError
    if res.killed == "output":
        raise RuntimeError(f"{argv[0]} printed more than {REPLY_LIMIT} bytes; killed")
    if res.returncode is None:     # SIGKILL did not end it: uninterruptible (a hung NFS mount, say)
        raise RuntimeError(f"{argv[0]} did not end when killed (stuck in the kernel?)")
    if res.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with status {res.returncode}; stdout {_snip(out)}")
    return out.decode("utf-8", errors="replace")


async def ask(spec: LoadSpec) -> str:
    """The agent's line or the program's output; raises on failure or after spec.timeout."""
    async with asyncio.timeout(spec.timeout):
        return await (_ask_agent(spec) if spec.kind == "agent" else _ask_program(spec))


class LoadMonitorTask:
    """Asks one real server every ``interval`` seconds; calls ``on_weight(key, weight, detail)``
    when the weight it should have changes."""

    def __init__(self, key: Any, spec: LoadSpec, interval: float, configured: int, min_weight: int,
                 on_weight: Callable[[Any, int, str], None] | None):
        self.key = key
        self.spec = spec
        self.interval = interval
        self.configured = configured
        self.min_weight = min_weight
        self.on_weight = on_weight
        self.weight: int | None = None      # None until a first readable reply
        self.detail: str | None = None      # the last reply, or why there was none
        self.ok: bool | None = None
        self.at: float | None = None        # time.time() of the last ask
        self.supervision = TaskStats()      # restarts after an unexpected error
        self.offset = first_offset(key, interval)  # run(): the first ask's delay (monitor.first_offset)
        self._waited = False

    async def poll(self) -> None:
        """One ask (never raises other than CancelledError)."""
        try:
            text = await ask(self.spec)
            report = parse_report(text)
            weight = dynamic_weight(report, self.configured, self.min_weight)
        except TimeoutError:
            self.ok, self.detail = False, f"no answer within {self.spec.timeout:g}s; weight kept"
        except (OSError, ValueError, RuntimeError, ArithmeticError) as e:
            why = "connection refused" if isinstance(e, ConnectionRefusedError) else str(e) or type(e).__name__
            self.ok, self.detail = False, f"{why}; weight kept"
        else:
            # the agent's words, as `lb status` prints them to the operator's terminal: what is not
            # printable (an escape sequence that would clear it or retitle it) is written escaped
            line = text.strip().splitlines()[0][:120] if text.strip() else ""
            self.ok, self.detail = True, "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
            if weight != self.weight:
                self.weight = weight
                if self.on_weight is not None:
                    try:
                        self.on_weight(self.key, weight, self.detail)
                    except Exception:
                        log.exception("%s: on_weight callback failed", self.key)
        self.at = time.time()

    async def run(self) -> None:
        """Ask every interval, the first after ``offset`` (spread over the real servers)."""
        loop = asyncio.get_running_loop()
        if not self._waited:
            self._waited = True
            await asyncio.sleep(self.offset)
        while True:
            started = loop.time()
            await self.poll()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    def start(self) -> asyncio.Task:
        """run() as a supervised task: an unexpected error is logged and the task restarted."""
        spec = self.spec
        return supervise(f"load {self.key!r}", self.run, logger=log, stats=self.supervision,
                         context=f"{spec.kind} {spec.program or ''} {spec.host}:{spec.port}".replace("  ", " "))
