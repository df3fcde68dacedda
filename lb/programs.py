"""External programs the daemon runs: health check programs, load-monitor programs and HA
notify programs.

The daemon runs as root and holds the VIPs; a program it starts gets none of that:

* never a shell: argv as given;
* as ``user`` (the config's ``script_user``, "nobody" by default; root only when the config
  says "root"), with that user's primary group and no supplementary groups;
* with a minimal environment: ``PATH`` and ``LANG`` only, plus the ``LB_*`` variables of its
  kind (documented where the kind is: lb.health.checks, lb.health.load, lb.ha.pulse); working
  directory ``/``, stdin ``/dev/null``, its own session (so its whole process group can be killed),
  and a child subreaper (prctl PR_SET_CHILD_SUBREAPER, kept across its exec): what it starts
  stays below it while it runs, even what left its process group (``setsid``, ``setpgid``) or
  was orphaned on the way (a daemon's double fork), which would otherwise go to init;
* bounded: at most ``limit`` bytes of stdout and of stderr are read -- a program that prints
  more is killed at once -- and at most ``timeout`` seconds, then it is killed with every
  process below it (``kill_tree``: stopped, found again until no new one appears, then
  SIGKILLed; only its process group was, and a setsid'd helper survived, one more at every
  check) and its process group.  Cancelled (a
  monitor stopped), it is killed and reaped too: nothing is left behind.  The killed
  processes below it are reaped by init (or the nearest subreaper above lb): only the program
  is lb's child -- lb is no subreaper itself, or ExaBGP's daemon and every orphan of its
  children would be lb's to reap.
* its result is its own exit status, as soon as it exits: what it left running in the background
  (``sleep 30 & echo ok``, holding stdout open) is killed with its process group then, and the
  output read until then is what it printed.  What a program that exited on its own moved out
  of its process group (``setsid``: a daemon it meant to start) is left running, as keepalived
  leaves it (it kills a timed-out MISC_CHECK's process group only): once the program has
  exited, nothing tells its orphans from the rest of the machine's.  A check program must not
  leave one.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import pwd
import signal
from dataclasses import dataclass, field

__all__ = ["DEFAULT_USER", "PATH", "OUTPUT_LIMIT", "ProgramError", "ProgramResult", "environment", "kill_tree",
           "run"]

DEFAULT_USER = "nobody"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_LIMIT = 64 * 1024     # bytes read from each of stdout and stderr
_READ = 16 * 1024
DRAIN = 1.0                  # seconds to read what an exited program printed, once its group is killed
SPAWN_WAIT = 5.0             # seconds a cancelled start may take to finish, so that its group is killed
TREE_ROUNDS = 100            # kill_tree: rounds of stopping what appeared below the program since the last

PR_SET_CHILD_SUBREAPER = 36
# looked up once, here: the program's child calls it between fork and exec (no dlopen there)
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int
except (OSError, AttributeError):     # no prctl: not Linux; kill_tree still finds what stayed below
    _prctl = None


def _subreaper() -> None:
    """The program's preexec_fn: it becomes a child subreaper, so that its orphaned descendants
    are reparented to it, not to init (a failure leaves it as it was: nothing to report from
    between fork and exec)."""
    if _prctl is not None:
        _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


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


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (of each of its threads: an orphan goes to one thread of its
    subreaper); [] when it is gone."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:     # the thread ended -- or no CONFIG_PROC_CHILDREN: scan /proc
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue
            return _children_by_scan(pid)
        except (OSError, ValueError):
            continue
    return out


def _children_by_scan(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            if int(fields[1]) == pid:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _signal(pid: int, fd: int | None, sig: int) -> None:
    try:
        if fd is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(fd, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int) -> int:
    """SIGKILL ``pid`` and every process below it; how many were found below it.  Each one
    found is stopped (SIGSTOP: it forks no more), and the tree is walked again until no new one
    appears; then all are killed.  Signals go through pidfds opened while the process was
    still below ``pid`` (a pid reused meanwhile is not signalled).  ``pid`` must be an unreaped
    child of lb's, so that its own pid is not reused under us."""
    found: dict[int, int | None] = {}           # pid -> its pidfd (None: no pidfds)
    tree = [pid]
    try:
        for _ in range(TREE_ROUNDS):
            again = False
            for parent in tree:
                for child in _children(parent):
                    if child in found:
                        continue
                    again = True
                    try:
                        fd = os.pidfd_open(child)
                    except ProcessLookupError:
                        continue                    # gone already
                    except OSError:                 # no pidfd_open (Linux < 5.3)
                        fd = None
                    if fd is not None and child not in _children(parent):
                        # ended and its pid reused, or orphaned up to pid meanwhile: the next
                        # round sees it where it is now, if anywhere below pid
                        os.close(fd)
                        continue
                    found[child] = fd
                    _signal(child, fd, signal.SIGSTOP)
            if not again:
                break
            tree = [pid, *found]                    # walk all again: an orphan goes up to pid
    finally:                                        # (never one left stopped)
        _signal(pid, None, signal.SIGKILL)
        for child, fd in found.items():
            _signal(child, fd, signal.SIGKILL)
            if fd is not None:
                os.close(fd)
    return len(found)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:               # not reaped yet: its pid is still its own
        kill_tree(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the program runs in its own session/process group
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def _kill_cancelled_start(spawn: asyncio.Future) -> None:
    """A start cancelled while asyncio set the program's pipes up: the program may run already,
    and asyncio's own clean-up would kill it alone, not what it started in the background (its
    process group) -- so let the start finish (bounded), then kill the group."""
    try:
        transport, _ = await asyncio.wait_for(spawn, SPAWN_WAIT)
    except BaseException:         # it failed, or did not finish: asyncio cleaned up what it could
        return
    if transport.get_returncode() is None:
        kill_tree(transport.get_pid())
    try:
        os.killpg(transport.get_pid(), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    transport.close()


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's, and ``exited``: done once the program itself has exited.  (proc.wait() (3.11)
    returns only once every pipe is closed too: never while a child it left behind holds one.)"""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=limit, loop=loop)
        self.exited = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _read(stream: asyncio.StreamReader, into: bytearray, limit: int, over) -> None:
    """Up to ``limit`` bytes into ``into``; past it, over() kills the program and the rest is
    read and dropped until EOF: a pipe whose reader stopped with data still buffered never
    closes (asyncio (3.11) then never finishes the process: proc.wait() hung)."""
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
    loop = asyncio.get_running_loop()
    # asyncio.create_subprocess_exec with a protocol that says when the program exits
    spawn = asyncio.ensure_future(loop.subprocess_exec(
        lambda: _Protocol(2 ** 16, loop), *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True, cwd="/",
        preexec_fn=_subreaper, env=environment(env), **creds))
    try:
        try:
            transport, protocol = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            await _kill_cancelled_start(spawn)
            raise
    except PermissionError as e:
        if creds and e.filename is None:          # setuid/setgid refused, not the program's mode
            raise ProgramError(f"cannot run as {user!r}: {e.strerror}") from None
        raise
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    res = ProgramResult(None)

    def over() -> None:
        if res.killed is None:
            res.killed = "output"
            _kill_group(proc)

    readers = [asyncio.ensure_future(_read(proc.stdout, res.stdout, limit, over)),
               asyncio.ensure_future(_read(proc.stderr, res.stderr, limit, over))]
    cancelled = None
    try:
        # asyncio.wait: the futures are never cancelled nor left holding an unretrieved error
        done, _ = await asyncio.wait([protocol.exited], timeout=timeout)
        if not done and res.killed is None:
            res.killed = "timeout"
    finally:                      # done, timed out, over the limit, or cancelled: kill and reap
        # what it left behind in its process group (a helper in the background) goes with it,
        # and, while it runs (timed out, over the limit, cancelled), all that is below it;
        # its pipes then close, and what it printed is read to the end (bounded: a pipe may be
        # held by what left the process group of a program that exited)
        _kill_group(proc)
        try:
            await asyncio.wait([protocol.exited], timeout=2)
            if protocol.exited.done():
                await asyncio.wait(readers, timeout=DRAIN)
        except asyncio.CancelledError as e:     # a cancel meanwhile is kept, not swallowed
            cancelled = e
        for r in readers:
            r.cancel()
            if r.done() and not r.cancelled():
                r.exception()                   # retrieved: a broken pipe is no program's result
        # close the pipes now: left to the garbage collector, a transport whose output was not
        # read to its end outlives its event loop
        transport.close()
        if cancelled is not None:
            raise cancelled
    res.returncode = proc.returncode
    return res
