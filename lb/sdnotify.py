"""The service manager's side: sd_notify(3) over $NOTIFY_SOCKET, and log lines for journald.

Type=notify units (lb@.service) learn from these messages when lb is ready (READY=1: programs
attached, table applied, control socket answering), what it is doing meanwhile (STATUS=), and
when it reloads or stops.  Without NOTIFY_SOCKET every call is a no-op.  The variable is taken
out of the environment at the first call, so check, load-monitor and notify programs do not
inherit it (systemd's NotifyAccess=main would ignore them anyway).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time

_UNSET = object()
_address: object = _UNSET
_dropped = 0          # messages the manager's full queue refused
_watchdog: object = _UNSET    # WatchdogSec= in seconds, or None: watchdog_interval()
_ready_sent = False   # READY=1 went out (stopping() owes one before STOPPING=1 otherwise)
# READY=1, RELOADING=1, STOPPING=1 and MAINPID= change the unit's state: lost, it would stay
# "activating" or "reloading" until its timeout.  Those wait this long for room in a full queue
# (PID 1 busy at boot); a STATUS= alone is dropped at once.
MUST_ARRIVE = ("READY=", "RELOADING=", "STOPPING=", "MAINPID=")
RETRY_SECONDS = 5.0


def _socket_address() -> str | None:
    global _address
    if _address is _UNSET:
        watchdog_interval()                          # its variables leave the environment too
        addr = os.environ.pop("NOTIFY_SOCKET", None)
        if addr and addr.startswith("@"):            # abstract namespace
            addr = "\0" + addr[1:]
        _address = addr or None
    return _address  # type: ignore[return-value]


def notify(*fields: str) -> bool:
    """Send "KEY=value" fields in one datagram; False when there is no service manager or it
    cannot be reached (lb goes on either way)."""
    addr = _socket_address()
    if addr is None:
        return False
    global _dropped
    must = any(f.startswith(MUST_ARRIVE) for f in fields)
    try:
        # a manager that does not read (its queue holds net.unix.max_dgram_qlen datagrams, 10 by
        # default) must not stop the daemon's event loop in a send: STATUS= alone is sent
        # non-blocking, a state change waits RETRY_SECONDS at most (woken as soon as there is room)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
            s.connect(addr)
            if must:
                s.settimeout(RETRY_SECONDS)
            s.sendall("\n".join(fields).encode())
        return True
    except TimeoutError:
        logging.getLogger("lb").warning("sd_notify: the service manager took no message for %g s: %s lost "
                                        "(systemd goes by the unit's timeouts instead)", RETRY_SECONDS,
                                        ", ".join(fields))
        return False
    except BlockingIOError:
        _dropped += 1
        if _dropped == 1 or _dropped % 100 == 0:
            logging.getLogger("lb").warning("sd_notify: the service manager's queue is full: %s dropped "
                                            "(%d so far)", ", ".join(fields), _dropped)
        return False
    except OSError as e:
        logging.getLogger("lb").debug("sd_notify %s: %s", fields, e)
        return False


def watchdog_interval() -> float | None:
    """WatchdogSec= of the unit, in seconds, as systemd passes it (WATCHDOG_USEC, meant for the
    process WATCHDOG_PID names); None without one.  Taken out of the environment at the first
    call, as NOTIFY_SOCKET, so that the programs lb starts do not inherit it."""
    global _watchdog
    if _watchdog is _UNSET:
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        try:
            _watchdog = int(usec) / 1e6 if usec and int(usec) > 0 and (not pid or int(pid) == os.getpid()) \
                else None
        except ValueError:
            _watchdog = None
    return _watchdog  # type: ignore[return-value]


def watchdog() -> bool:
    """WATCHDOG=1: the daemon's loop made a turn.  Sent non-blocking, as STATUS=: a ping the
    manager's full queue refuses is followed by the next."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def ready(text: str) -> bool:
    global _ready_sent
    _ready_sent = True
    return notify("READY=1", f"STATUS={text}", f"MAINPID={os.getpid()}")


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC= (CLOCK_MONOTONIC, when it was sent), as sd_notify(3) asks:
    systemd >= 253 goes by it to tell a reload from an earlier one -- under Type=notify-reload
    (a drop-in's) a RELOADING=1 without it is not the answer to systemd's SIGHUP.  READY=1 ends
    the reload (Engine's do_reload sends it whether the reload succeeded or not)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                  "STATUS=reloading the configuration")


def stopping(text: str) -> bool:
    """STOPPING=1: a stop asked for (`lb stop`, a signal), not a failure.  Asked while the unit
    still starts, READY=1 goes first, in a datagram of its own: systemd takes a Type=notify
    service whose main process exits without READY=1 -- exit status 0 or not -- as a failure
    (result "protocol") and Restart=on-failure starts it again; a STOPPING=1 alone is not
    acted on before READY=1 (it is, after: the unit goes "deactivating", the exit that follows
    is the stop's).  Where systemd is stopping the unit itself (`systemctl stop` while it
    starts) the READY=1 is ignored."""
    if not _ready_sent and _socket_address() is not None:
        ready(text)
    return notify("STOPPING=1", f"STATUS={text}")


# ---- logs ----

def under_journald(stream=None) -> bool:
    """True when stream (stderr) is the journal's: JOURNAL_STREAM names its device and inode."""
    stream = stream or sys.stderr
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(value) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """journald stamps every line itself: no time here, and the syslog priority as a "<N>"
    prefix (SyslogLevelPrefix=, on by default), so `journalctl -p warning` filters lb's lines."""

    PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def __init__(self):
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6 if record.levelno > logging.DEBUG else 7)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str = "info", stream=None) -> None:
    """The root logger to stream (stderr): journald's format under journald, else with times."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if under_journald(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


# ---- which job systemd is running on a unit (lb@.service's ExecStop) ----

def own_unit(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """The systemd service this process runs in ("lb@web.service"), from its cgroup's path
    (.../system-lb.slice/lb@web.service); None outside a service."""
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith(".service"):
                return part
    return None


# the jobs after which the unit runs again: a SIGTERM during one keeps the data plane for the next
# daemon.  Any other -- "stop" (a shutdown's too), "start" (TimeoutStartSec= ran out on a start
# that never got ready) -- is the clean stop: a unit that ends stopped, or failed by that timeout,
# leaves no VIPs (a restart whose next start fails leaves the kept data plane, as a crash does).
KEEP_JOBS = ("restart", "try-restart", "reload", "try-reload", "reload-or-start")


def systemd_job(unit: str, timeout: float = 10.0) -> str | None:
    """The type of the job systemd runs on `unit` now ("stop", "restart", ...), from
    `systemctl list-jobs`; None when it has none or cannot say.  During ExecStop of
    `systemctl restart` the job is still "restart" (systemd turns it into a start only once the
    unit is down); of `systemctl stop` (or a shutdown) it is "stop"."""
    import subprocess

    try:
        p = subprocess.run(["systemctl", "list-jobs", "--no-legend", "--no-pager", "--full", unit],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == unit:
            return parts[2]
    return None


# ---- the service manager's end (tests, bench/, scripts that start `lb run` themselves) ----

class Listener:
    """What systemd does for a Type=notify unit: a datagram socket whose path goes to the daemon
    as NOTIFY_SOCKET, and the messages it receives.  A short path under /tmp (a unix socket's
    path is limited to 107 bytes); close() removes it."""

    def __init__(self, directory: str = "/tmp"):
        import tempfile
        import threading

        self.dir = tempfile.mkdtemp(prefix="lb-notify-", dir=directory)
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []    # (time.monotonic(), fields)
        self._returned = 0                  # messages poll() has handed out
        self._cond = threading.Condition()
        self._closed = False
        # read at once, as systemd does: the daemon's queue to us (10 datagrams) never fills
        self._reader = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import time

        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path}

    def poll(self, timeout: float) -> list[dict[str, str]]:
        """The messages received since the last poll, waiting up to timeout for one."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) > self._returned, timeout)
            got = [f for _, f in self.messages[self._returned:]]
            self._returned = len(self.messages)
        return got

    def wait_for(self, key: str, value: str = "1", timeout: float = 120.0, alive=lambda: True) -> float:
        """The monotonic time the first key=value arrived (TimeoutError after timeout, or
        ChildProcessError once alive() is false)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            for t, fields in list(self.messages):
                if fields.get(key) == value:
                    return t
            if not alive():
                self.poll(0.3)
                if not any(f.get(key) == value for _, f in list(self.messages)):
                    raise ChildProcessError(f"the daemon exited before {key}={value}")
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key}={value} within {timeout:.0f}s")
            self.poll(min(0.2, max(0.0, deadline - time.monotonic())))

    def statuses(self) -> list[str]:
        return [f["STATUS"] for _, f in self.messages if "STATUS" in f]

    def close(self) -> None:
        import shutil

        self._closed = True
        self._reader.join(1.0)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
