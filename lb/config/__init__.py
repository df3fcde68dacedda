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
from . import lvscf
from . import toml as _toml
from .toml import loads


def load(path: str | os.PathLike[str]) -> Config:
    """Load a config file: Piranha lvs.cf (name ends in ``.cf`` or the first
    non-comment line is an lvs.cf key / ``virtual NAME {``) or native TOML."""
    if os.fspath(path).endswith(".cf"):
        return lvscf.load(path)
    try:
        with open(path, "rb") as f:
            head = f.read(65536).decode("utf-8", "replace")
    except OSError:
        head = ""
    if lvscf.looks_like_lvscf(head):
        return lvscf.load(path)
    return _toml.load(path)


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
    "load",
    "loads",
    "lvscf",
]
