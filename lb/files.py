"""The daemon's own files (/run/lb, /var/cache/lb): directories root's and private, files opened
without following symlinks, written atomically.

The daemon runs as root; a directory another user can write, or a symlink planted where lb
writes, would let that user have root write (or read) a file of their choosing."""
from __future__ import annotations

import contextlib
import os
import stat


class UnsafePath(OSError):
    """A path lb will not use (wrong owner, writable by others, not a directory); the message
    says what to do."""


def ensure_private_dir(path: str, mode: int = 0o700) -> None:
    """Create path (mode 0700) if missing, else check it: a real directory (not a symlink),
    owned by us (root), writable by nobody else.  A directory only readable by others (0755, as
    older versions of lb made /run/lb) is tightened to `mode`."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory ({'a symlink' if stat.S_ISLNK(st.st_mode) else 'a file'}): "
                         f"remove it, lb creates it")
    if st.st_uid != os.geteuid():
        raise UnsafePath(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()} (root): remove it or "
                         f"chown root {path}")
    if st.st_mode & 0o022:
        raise UnsafePath(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                         f"chmod {mode:04o} {path}")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def open_nofollow(path: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """os.open with O_NOFOLLOW | O_CLOEXEC: a symlink at path raises OSError (ELOOP)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def read_private(path: str, limit: int = 64 << 20) -> str:
    """A regular file's text, not through a symlink, owned by us; at most `limit` bytes."""
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UnsafePath(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}: not trusted")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(f"{path} is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


def write_private(path: str, text: str) -> None:
    """Atomically replace path with text, mode 0600 (a temporary file beside it, renamed)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
