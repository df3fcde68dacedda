"""External programs the daemon runs: health check programs, load-monitor programs and HA
notify programs.

The daemon runs as root and holds the VIPs; a program it starts gets none of that:

* never a shell: argv as given;
* as ``user`` (the config's ``script_user``, "nobody" by default; root only when the config
  says "root"), with that user's primary group and no supplementary groups;
* with a minimal environment: ``PATH`` and ``LANG`` only, plus the ``LB_*`` variables of its
  kind (documented where the kind is: lb.health.checks, lb.health.load, lb.ha.pulse); working
  directory ``/``, stdin ``/dev/null``, its own session (so its whole process group can be killed);
* bounded: at most ``limit`` bytes of stdout and of stderr are read -- a program that prints
  more is killed at once -- and at most ``timeout`` seconds, then its process group is killed.
  Cancelled (a monitor stopped), it is killed and reaped too: nothing is left behind.
"""
from __future__ import annotations

import asyncio
import os
import pwd
import signal
from dataclasses import dataclass, field

__all__ = ["DEFAULT_USER", "PATH", "OUTPUT_LIMIT", "ProgramError", "ProgramResult", "environment", "run"]

DEFAULT_USER = "nobody"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_LIMIT = 64 * 1024     # bytes read from each of stdout and stderr
_READ = 16 * 1024


class ProgramError(Exception):
    """The program could not be started (no such user, no permission to switch to it...)."""


@dataclass
class ProgramResult:
    returncode: int | None            # negative: killed by that signal
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    killed: str | None = None         # why lb killed it: "timeout" | "output"

    @property
    def ok(self) -> bool:
        return self.killed is None and self.returncode == 0


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """PATH, LANG (the daemon's, else C.UTF-8) and ``extra`` -- nothing else of the daemon's."""
    env = {"PATH": PATH, "LANG": os.environ.get("LANG") or "C.UTF-8"}
    env.update(extra or {})
    return env


def _credentials(user: str | None) -> dict:
    """Popen arguments that switch to ``user`` (None: stay who the daemon is)."""
    if user is None:
        return {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ProgramError(f"no such user {user!r} (script_user)") from None
    if pw.pw_uid == os.geteuid() and pw.pw_gid == os.getegid():
        return {}
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the program runs in its own session/process group
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def _read(stream: asyncio.StreamReader, into: bytearray, limit: int, over) -> None:
    """Up to ``limit`` bytes into ``into``; past it, over() kills the program and the rest is
    read and dropped until EOF: asyncio (3.11) wakes proc.wait() only once every pipe is closed,
    and a pipe whose reader stopped with data still buffered never closes (wait() then hung
    until the timeout, one run in a few)."""
    while True:
        chunk = await stream.read(_READ)
        if not chunk:
            return
        room = limit - len(into)
        if room > 0:
            into += chunk[:room]
        if len(chunk) > room:
            over()


async def run(argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None,
              timeout: float, limit: int = OUTPUT_LIMIT) -> ProgramResult:
    """Run ``argv`` as described in the module docstring.  Raises ProgramError when it cannot be
    started as ``user``, OSError when it cannot be executed (missing, not executable)."""
    creds = _credentials(user)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, cwd="/", env=environment(env), **creds)
    except PermissionError as e:
        if creds and e.filename is None:          # setuid/setgid refused, not the program's mode
            raise ProgramError(f"cannot run as {user!r}: {e.strerror}") from None
        raise
    res = ProgramResult(None)

    def over() -> None:
        if res.killed is None:
            res.killed = "output"
            _kill_group(proc)

    readers = [asyncio.ensure_future(_read(proc.stdout, res.stdout, limit, over)),
               asyncio.ensure_future(_read(proc.stderr, res.stderr, limit, over))]
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*readers)
            await proc.wait()
    except TimeoutError:
        if res.killed is None:
            res.killed = "timeout"
    finally:                      # timed out, over the limit, or cancelled: kill and reap
        for r in readers:
            r.cancel()
        cancelled = None
        if proc.returncode is None:
            _kill_group(proc)
            try:
                await asyncio.wait_for(proc.wait(), 2)
            except asyncio.CancelledError as e:     # a cancel meanwhile is kept, not swallowed
                cancelled = e
            except TimeoutError:
                pass
        else:
            # the program is done; what it left behind in its process group (a helper in the
            # background) goes with it, as a timed-out one's does
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        # close the pipes now: left to the garbage collector, a transport whose output was not
        # read to its end outlives its event loop
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()
        if cancelled is not None:
            raise cancelled
    res.returncode = proc.returncode
    return res
