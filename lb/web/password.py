"""The web console's password file: one line ``scrypt$n$r$p$salt_b64$hash_b64`` (stdlib only).

Written by `lb passwd` (mode 0600, replaced atomically); read by the console at every login, so
a new password takes effect without a restart.
"""
from __future__ import annotations

import base64
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


def parse(line: str, where: str = "<password>") -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, hash) of a password line; PasswordFileError naming ``where`` if malformed."""
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
    except (OSError, UnicodeDecodeError) as e:
        raise PasswordFileError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    line = text.strip()
    parse(line, str(path))
    return line


def verify(password: str, line: str) -> bool:
    """Whether ``password`` matches the password line (the comparison takes constant time)."""
    n, r, p, salt, digest = parse(line)
    got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                         maxmem=_maxmem(n, r, p))
    return hmac.compare_digest(got, digest)


def write(path: str | os.PathLike, password: str) -> None:
    """Replace ``path`` atomically with the hash of ``password``, mode 0600 from its creation."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"the password must have at least {MIN_LENGTH} characters")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = hash_password(password) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)   # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
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
