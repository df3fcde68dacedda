"""One daemon per instance: its pid file is also its lock.

`lb run` opens /run/lb/<instance>.pid (no symlink followed), takes an exclusive flock on it and
writes its pid; the lock lives as long as the process (the kernel drops it however the
process ends, kill -9 included).  A second `lb run` of the instance finds the lock taken and
refuses, naming the pid that holds it.  `lb stop` signals the pid only when that pid holds the
lock (/proc/locks says who holds which file), so a stale pid file never makes it signal an
unrelated process that reused the number.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

from lb import files

RUN_DIR = "/run/lb"


class AlreadyRunning(Exception):
    def __init__(self, instance: str, pid: int | None, path: str):
        self.instance, self.pid, self.path = instance, pid, path
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"instance {instance!r} is already running ({who} holds {path}): stop it first "
                         f"(lb stop --instance {instance}), or give this config another [global] instance")


def pidfile(instance: str, run_dir: str = RUN_DIR) -> str:
    return os.path.join(run_dir, f"{instance}.pid")


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


class InstanceLock:
    """The pid file, locked: acquire() or AlreadyRunning; release() (or process exit) frees it."""

    def __init__(self, instance: str, run_dir: str = RUN_DIR):
        self.instance = instance
        self.path = pidfile(instance, run_dir)
        self.run_dir = run_dir
        self.fd: int | None = None

    def acquire(self) -> "InstanceLock":
        files.ensure_private_dir(self.run_dir)
        for _ in range(10):
            fd = files.open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunning(self.instance, pid, self.path) from None
            except BaseException:
                os.close(fd)
                raise
            # the holder before us may have unlinked the file after we opened it: the lock must
            # be on the file the path names now, or a third process could lock a new one
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return self
            os.close(fd)
        raise OSError(errno.EAGAIN, f"{self.path} keeps changing under lb")

    def release(self, unlink: bool = True) -> None:
        if self.fd is None:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def _flock_holders() -> dict[tuple[int, int, int], set[int]] | None:
    """(device major, minor, inode) -> the pids holding a flock on that file, from /proc/locks;
    None when it cannot be read."""
    out: dict[tuple[int, int, int], set[int]] = {}
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if "->" in parts:              # a waiter, not a holder
                    continue
                if len(parts) < 6 or parts[1] != "FLOCK":
                    continue
                dev_ino = parts[5].split(":")
                if len(dev_ino) != 3:
                    continue
                try:
                    key = (int(dev_ino[0], 16), int(dev_ino[1], 16), int(dev_ino[2]))
                    out.setdefault(key, set()).add(int(parts[4]))
                except ValueError:
                    continue
    except OSError:
        return None
    return out


def _file_key(st: os.stat_result) -> tuple[int, int, int]:
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


class NotRunning(Exception):
    pass


def running_pid(instance: str, run_dir: str = RUN_DIR) -> int:
    """The pid of the daemon of `instance`, checked: its pid file is locked, and by that pid.
    NotRunning (saying why) otherwise: nothing to signal."""
    return _locked_pid(instance, run_dir)


def _locked_pid(instance: str, run_dir: str) -> int:
    path = pidfile(instance, run_dir)
    try:
        fd = files.open_nofollow(path)
    except FileNotFoundError:
        raise NotRunning(f"instance {instance!r} is not running (no {path})") from None
    except OSError as e:
        raise NotRunning(f"instance {instance!r}: {path}: {e.strerror}") from None
    try:
        pid = _read_pid(fd)
        # /proc/locks says who holds it, looked at and not locked: a probe's lock of its own,
        # however short, made a daemon starting at that moment (a restart while `lb list --rate`
        # or `lb stop` runs) find its lock taken and refuse to start ("already running");
        # without /proc/locks, the lock itself is asked
        found = _flock_holders()
        if found is not None:
            holders = set(found.get(_file_key(os.fstat(fd)), ()))
            locked = bool(holders)
        else:
            holders = set()
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                locked = False
            except BlockingIOError:
                locked = True               # a daemon holds it
        if not locked:
            raise NotRunning(f"instance {instance!r} is not running ({path} names pid {pid}, but no lb "
                             f"holds it: a stale file, nothing signalled)")
    finally:
        os.close(fd)
    if pid is None:
        raise NotRunning(f"instance {instance!r}: {path} holds no pid (the daemon is starting?)")
    if holders and pid not in holders:
        raise NotRunning(f"instance {instance!r}: {path} names pid {pid}, which is not the lb holding it "
                         f"(pid {', '.join(map(str, sorted(holders)))}); nothing signalled")
    return pid


def running_instances(run_dir: str | None = None) -> list[str]:
    """The instances whose daemon runs: each <instance>.pid of run_dir that a process holds
    locked.  /proc/locks says so, looked at and never locked here (a probe's lock, however
    short, could make a daemon starting at that moment find its lock taken); without
    /proc/locks, the lock itself is asked (running_pid).  PermissionError when run_dir cannot
    be listed (/run/lb is root's, 0700); none when it does not exist."""
    from lb.config.toml import INSTANCE_RE

    run_dir = RUN_DIR if run_dir is None else run_dir
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    holders = _flock_holders()
    out = []
    for name in sorted(names):
        inst, dot, ext = name.rpartition(".")
        # <instance>.pid only (not <instance>.exabgp.pid, the BGP speaker's)
        if not (dot and ext == "pid" and INSTANCE_RE.fullmatch(inst)):
            continue
        if holders is None:
            try:
                _locked_pid(inst, run_dir)
            except NotRunning:
                continue
        else:
            try:
                st = os.lstat(os.path.join(run_dir, name))
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not holders.get(_file_key(st)):
                continue
        out.append(inst)
    return out
