"""Director configuration: typed model plus the TOML loader.

    from lb.config import load, ConfigError
    cfg = load("configs/lab-dr.toml")   # raises ConfigError listing every problem
"""

from .model import (
    NETWORKS,
    PROTOCOLS,
    SCHEDULERS_IMPLEMENTED,
    SCHEDULERS_IPVS,
    Config,
    ConfigError,
    ConfigIssue,
    RealServer,
    Tables,
    Timeouts,
    VirtualServer,
)
from .toml import load, loads

__all__ = [
    "NETWORKS",
    "PROTOCOLS",
    "SCHEDULERS_IMPLEMENTED",
    "SCHEDULERS_IPVS",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "RealServer",
    "Tables",
    "Timeouts",
    "VirtualServer",
    "load",
    "loads",
]
