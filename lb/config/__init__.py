"""Director configuration: typed model plus the TOML and lvs.cf loaders.

    from lb.config import load, ConfigError
    cfg = load("configs/lab-dr.toml")   # raises ConfigError listing every problem
"""

import os

from .model import (
    NETWORKS,
    PROTOCOLS,
    SCHEDULERS,
    Config,
    ConfigError,
    ConfigIssue,
    Defense,
    RealServer,
    Tables,
    Timeouts,
    VirtualServer,
)
from . import keepalived, lvscf
from . import toml as _toml
from .toml import loads


def format_of(path: str | os.PathLike[str]) -> str:
    """Which format the file at ``path`` is written in: "lvscf" (Piranha's lvs.cf: the name ends in
    ``.cf``, or the first line that is not a comment is an lvs.cf key or ``virtual NAME {``),
    "keepalived" (keepalived.conf: it starts with a keepalived keyword such as global_defs,
    vrrp_instance or virtual_server, or a ``!`` comment) or "toml" (lb's own)."""
    if os.fspath(path).endswith(".cf"):
        return "lvscf"
    try:
        with open(path, "rb") as f:
            head = _toml.without_bom(f.read(65536).decode("utf-8", "replace"))
    except OSError:
        head = ""
    if lvscf.looks_like_lvscf(head):
        return "lvscf"
    if keepalived.looks_like_keepalived(head):
        return "keepalived"
    return "toml"


def issue_at(path: str | os.PathLike[str] | None, field: tuple, message: str) -> ConfigIssue:
    """An issue about ``field`` (its path in the TOML document, e.g. ("ha", "key_file")) of the
    configuration loaded from ``path``, found after loading (a key file, an interface, a port):
    the line and the name it has in the file's own format (lvs.cf's key, keepalived.conf's block);
    the field's TOML name alone when the file cannot tell (no file, or changed since)."""
    from pathlib import Path

    display = "<config>" if path is None else os.fspath(path)
    try:
        positions = lvscf._source_positions(None if path is None else Path(path))
        line, name = positions.where(field)
        return ConfigIssue(positions.file(field) or display, line, name, message)
    except (ConfigError, OSError, ValueError):
        return ConfigIssue(display, None, _toml.field_name(field), message)


def load(path: str | os.PathLike[str], *, dataplane: str | None = None) -> Config:
    """Load a config file in any of the formats format_of() tells apart, checked for the data
    plane ``dataplane`` (`lb run --dataplane`, which the daemon keeps for its later loads: each
    reload's, each edit's; None: the one the file names)."""
    fmt = format_of(path)
    if fmt == "lvscf":
        return lvscf.load(path, dataplane=dataplane)
    if fmt == "keepalived":
        return keepalived.load(path, dataplane=dataplane)
    return _toml.load(path, dataplane=dataplane)


__all__ = [
    "NETWORKS",
    "PROTOCOLS",
    "SCHEDULERS",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Defense",
    "RealServer",
    "Tables",
    "Timeouts",
    "VirtualServer",
    "format_of",
    "issue_at",
    "keepalived",
    "load",
    "loads",
    "lvscf",
]
