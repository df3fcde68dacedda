"""The web console's password file: one line ``USER:scrypt$n$r$p$salt_b64$hash_b64`` (stdlib only).

Written by `lb passwd` and by the console's password page (mode 0600), always replaced atomically
(a new file, then renamed over it): a writer that may not create files in its directory is
refused, the old file kept, never rewritten in place (a crash or a full disk mid-write left it cut
short, and the console locked out); read at every login, so a new password takes effect without a restart.  A line without ``USER:``
(lb before user names) is the user DEFAULT_USER's.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import os
import tempfile
from pathlib import Path

N, R, P = 2 ** 14, 8, 1          # scrypt cost: ~16 MiB and a few tens of ms per check
SALT_BYTES = 16
HASH_BYTES = 32
MIN_LENGTH = 8
MAX_N = 2 ** 20                  # a file asking for more memory than this is refused
DEFAULT_USER = "admin"
MAX_PASSWORD = 1024              # characters hashed at most (scrypt's cost does not depend on it)
USER_RE = __import__("re").compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")


def check_user(user: str) -> str:
    """A user name (letters, digits, '_', '.', '@', '-'; at most 64), or ValueError."""
    if not USER_RE.fullmatch(user):
        raise ValueError(f"user name {user!r}: letters, digits, '_', '.', '@' and '-', at most 64, "
                         f"not starting with '.', '@' or '-'")
    return user


class PasswordFileError(Exception):
    """The password file is missing, unreadable or not in the expected format."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _maxmem(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2) + (1 << 20)


def hash_password(password: str, *, salt: bytes | None = None, n: int = N, r: int = R, p: int = P) -> str:
    """The password file's line (without the newline) for ``password``."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                            maxmem=_maxmem(n, r, p))
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def split_user(line: str) -> tuple[str, str]:
    """(user, hash line) of a password line."""
    line = line.strip()
    user, sep, rest = line.partition(":")
    return (user, rest) if sep else (DEFAULT_USER, line)


def parse(line: str, where: str = "<password>") -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, hash) of a password line; PasswordFileError naming ``where`` if malformed."""
    user, line = split_user(line)
    if not USER_RE.fullmatch(user):
        raise PasswordFileError(f"{where}: malformed user name")
    parts = line.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise PasswordFileError(f"{where}: not an lb password file (expected one line "
                                f"scrypt$n$r$p$salt$hash, as `lb passwd` writes it)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise PasswordFileError(f"{where}: malformed scrypt parameters or base64") from None
    if n < 2 or n & (n - 1) or n > MAX_N or not 1 <= r <= 64 or not 1 <= p <= 16 or not salt or len(digest) < 16:
        raise PasswordFileError(f"{where}: scrypt parameters out of range (n={n} r={r} p={p})")
    return n, r, p, salt, digest


def read(path: str | os.PathLike) -> str:
    """The password line of ``path``, checked; PasswordFileError when missing or malformed."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise PasswordFileError(f"{path}: no such file (create it with `lb passwd`)") from None
    except (OSError, ValueError) as e:        # ValueError: not ASCII, or a NUL in the name
        raise PasswordFileError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    line = text.strip()
    parse(line, str(path))
    return line


def user_of(line: str) -> str:
    return split_user(line)[0]


def verify(password: str, line: str, user: str | None = None) -> bool:
    """Whether ``password`` (and ``user``, when given) match the password line (constant time:
    the hash is computed whatever the user name)."""
    n, r, p, salt, digest = parse(line)
    got = hashlib.scrypt(password[:MAX_PASSWORD].encode("utf-8", "replace"), salt=salt, n=n, r=r, p=p,
                         dklen=len(digest), maxmem=_maxmem(n, r, p))
    ok_user = user is None or hmac.compare_digest(user.encode("utf-8", "replace"), user_of(line).encode())
    return hmac.compare_digest(got, digest) and ok_user


def write(path: str | os.PathLike, password: str, user: str = DEFAULT_USER,
          owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``user`` and the hash of ``password``, mode 0600 from its creation,
    atomically (a new file in its directory, renamed over it).  A writer that may not create a
    file there is refused (PermissionError saying what to do), the old file unchanged: it is never
    rewritten in place, where a crash or a full disk mid-write would cut it short.
    ``owner`` (uid, gid): whose the file is (`lb passwd --owner`); without it a file that exists
    keeps its owner and group (the console's user's), a new one is the writer's; 0600 either way
    (lb web warns of more).  A symlink's target is written, the link kept.  Its directory must exist
    (FileNotFoundError): a mistyped path is not made."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"the password must have at most {MAX_PASSWORD} characters")
    check_user(user)
    path = Path(os.path.realpath(path))       # a symlink: its target is the file
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"no such directory: {path.parent} (create it first)",
                                str(path.parent))
    line = f"{user}:{hash_password(password)}\n"
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)   # mkstemp: 0600
    except PermissionError as e:
        raise PermissionError(e.errno, _not_replaceable(path, e.strerror, old is not None), str(path.parent)) from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            # whose the file is, before it takes the name: no moment where it is another's
            want = owner if owner is not None else (old.st_uid, old.st_gid) if old is not None else None
            if want is not None and want != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(f.fileno(), *want)
                except PermissionError:
                    if owner is not None:
                        raise           # asked for: said; the old owner's, kept when this user may
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _not_replaceable(path: Path, why: str, exists: bool) -> str:
    """What a writer that may not create files beside ``path`` is told."""
    import pwd

    uid = os.geteuid()
    try:
        who = f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        who = f"uid {uid}"
    kept = ", the old password still valid" if exists else ""
    return (f"cannot create a file in {path.parent} ({why}) to replace {path.name} with: nothing changed{kept} "
            f"(the file is replaced, never rewritten in place, which a crash or a full disk would leave cut "
            f"short); make {path.parent} writable by {who}, or set [web] password_file to a file in a "
            f"directory {who} may write")
