"""Load and validate the native TOML configuration format.

Validation does not stop at the first problem: every field is checked and
every problem is collected as a :class:`ConfigIssue` (with the source line,
found by :mod:`lb.config.locate`), then raised together in one
:class:`ConfigError`.  Cross-field checks (duplicates, counts, direct routing
port rules) only look at fields that were valid themselves, so one mistake
does not cascade into a screen of follow-up errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import json
import os
import pwd
import re
import shlex
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any, Final, TypeVar

from .locate import FieldPath, Locator
from .model import endpoint_text as _endpoint
from .model import (
    DATAPLANES,
    DEFAULT_DATAPLANE,
    DEFAULT_LBLC_EXPIRATION,
    DEFAULT_MH_SIZE,
    DEFAULT_NETWORK,
    DEFAULT_PROTOCOL,
    DEFAULT_SCHEDULER,
    DEFAULT_SCRIPT_USER,
    MONITOR_KINDS,
    REPLY_ENCODINGS,
    NETWORKS,
    PORT_RANGE,
    PROTOCOLS,
    SCHEDULERS,
    Config,
    ConfigError,
    Control,
    ConfigIssue,
    HA,
    BGP_MODES,
    BGP_WELL_KNOWN_COMMUNITIES,
    DEFAULT_BGP_MODE,
    HASH_SCHEDULERS,
    Bgp,
    BgpNeighbor,
    BgpVip,
    IPAddress,
    LOAD_MONITOR_KINDS,
    LoadMonitor,
    Metrics,
    Monitor,
    PortGroup,
    RealServer,
    SCHEDULER_FLAGS,
    Defense,
    Tables,
    Timeouts,
    VirtualServer,
    Web,
    embryonic_size,
    ipv6_connections_size,
    tables_memory,
    CONN4_ENTRY_BYTES,
    CONN6_ENTRY_BYTES,
    PERSIST_EMBRYO_ENTRY_BYTES,
    parse_endpoint,
    parse_netmask,
    parse_port,
    parse_prefix_length,
    split_endpoint,
)

__all__ = ["load", "loads", "validate", "Positions", "SCHEMA"]

T = TypeVar("T")


class _Invalid(enum.Enum):
    """Marker for a field whose problem has already been reported."""

    INVALID = 0


INVALID: Final = _Invalid.INVALID
_ABSENT: Final = object()

# --- limits ------------------------------------------------------------------

INSTANCE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
IFNAMSIZ: Final = 16  # kernel limit, including the terminating NUL
NAME_MAX: Final = 64
WEIGHT_RANGE: Final = (0, 65535)
# IPVS keeps timeouts as jiffies in an int; ipvsadm caps them at
# INT_MAX / HZ(1000) seconds so they cannot overflow.
TIMEOUT_RANGE: Final = (1, 2147483)
PERSISTENT_RANGE: Final = (0, 2147483)
_DEFAULT_TABLES: Final = Tables()
_DEFAULT_TIMEOUTS: Final = Timeouts()
_DEFAULT_DEFENSE: Final = Defense()
TABLE_RANGES: Final[dict[str, tuple[int, int]]] = {
    "connections": (1024, 67108864),
    "services": (1, 65536),
    "real_servers": (1, 1048576),
    "reals_per_service": (1, 512),  # the BPF verifier accepts the scheduler loops up to 512
    "embryonic": (1024, 67108864),  # absent: a quarter of connections (at least 1024)
    "connections_ipv6": (1024, 67108864),  # absent: a quarter of connections (at least 1024)
}
# [defense]: IPVS's strategy modes (0 never, 1/2 automatic, 3 always) and their thresholds, and
# the too-big answers' rate limit
DEFENSE_RANGES: Final[dict[str, tuple[int, int]]] = {
    "drop_entry": (0, 3), "drop_packet": (0, 3), "secure_tcp": (0, 3),
    "amemthresh": (0, 67108864), "am_droprate": (1, 0x7FFFFFFF),
    "icmp_msgs_per_sec": (0, 1_000_000), "icmp_msgs_burst": (1, 1_000_000),
}

# lblc_expiration / lblcr_expiration, seconds (the kernel's sysctls are int jiffies)
EXPIRATION_RANGE: Final = (1, 2_000_000)

# --- known keys (order matters only for messages) ------------------------------

TOP_KEYS: Final = ("global", "tables", "timeouts", "defense", "virtual_server", "ha", "web", "metrics", "control", "bgp")
GLOBAL_KEYS: Final = (
    "instance", "serial_no", "public_interface", "private_interface",
    "network", "nat_router", "nat_router_device",
    "dataplane", "expire_nodest_conn", "lblc_expiration", "lblcr_expiration", "script_user",
)
TABLES_KEYS: Final = tuple(TABLE_RANGES)
TIMEOUTS_KEYS: Final = ("tcp", "tcpfin", "udp")
DEFENSE_KEYS: Final = tuple(DEFENSE_RANGES)
VS_KEYS: Final = (
    "name", "address", "port", "protocol", "scheduler",
    "persistent", "pmask", "active", "device", "real_server", "monitor",
    "fwmark", "port_group", "scheduler_flags", "sorry_server", "mh_size", "quiesce_server",
    "load_monitor",
)
MONITOR_KEYS: Final = tuple(f.name for f in dataclasses.fields(Monitor))
LOAD_MONITOR_KEYS: Final = tuple(f.name for f in dataclasses.fields(LoadMonitor))
# A monitor's keys that only some kinds read (lb/health/checks.py); the rest (port, interval,
# timeout, reentry, connect_timeout, quiesce) every kind but "none" uses.
MONITOR_KIND_KEYS: Final = {
    "send": ("send_expect", "udp"), "expect": ("send_expect", "udp", "program"),
    "use_regex": ("send_expect", "udp", "program"), "reply_encoding": ("udp",),
    "path": ("http", "https"), "host": ("http", "https"), "status": ("http", "https"),
    "body_regex": ("http", "https"), "digest": ("http", "https"), "tls_verify": ("https",),
    "program": ("program",), "misc_dynamic": ("program",), "script_user": ("program",),
}
# ... and a load monitor's (lb.engine: an agent's port; a program's argv and user)
LOAD_MONITOR_KIND_KEYS: Final = {"port": ("agent",), "program": ("program",), "script_user": ("program",)}
RS_KEYS: Final = ("name", "address", "port", "weight", "active", "u_threshold", "l_threshold")
PORT_GROUP_KEYS: Final = ("address", "protocol", "ports")
FWMARK_RANGE: Final = (1, 0xFFFFFFFF)
THRESHOLD_RANGE: Final = (0, 0x7FFFFFFF)
FWM_RANGES_PER_VIP: Final = 16  # lb_fwm_ranges holds 16 port ranges per (VIP, protocol)
HA_KEYS: Final = tuple(f.name for f in dataclasses.fields(HA))
WEB_KEYS: Final = ("enabled", "listen", "password_file", "tls_cert", "tls_key", "allowed_hosts", "trusted_proxies",
                   "session_lifetime", "hsts")
METRICS_KEYS: Final = ("enabled", "listen")
CONTROL_KEYS: Final = ("admin_group", "read_group")
SERIAL_RANGE: Final = (0, 2**63 - 1)
SESSION_LIFETIME_RANGE: Final = (60.0, 7 * 86400.0)
MAX_LIST: Final = 64  # entries of allowed_hosts, trusted_proxies
BGP_KEYS: Final = ("mode", "local_as", "router_id", "hold_time", "lease", "drain", "settle", "neighbor", "vip")
BGP_NEIGHBOR_KEYS: Final = ("address", "peer_as", "local_address")
BGP_VIP_KEYS: Final = ("address", "med", "communities")

# Every table the loader reads, by its path without array indexes, with the keys it takes: the one
# list of what a configuration may say (example.toml is tested against it).
SCHEMA: Final[dict[tuple[str, ...], tuple[str, ...]]] = {
    (): TOP_KEYS,
    ("global",): GLOBAL_KEYS,
    ("tables",): TABLES_KEYS,
    ("timeouts",): TIMEOUTS_KEYS,
    ("defense",): DEFENSE_KEYS,
    ("ha",): HA_KEYS,
    ("web",): WEB_KEYS,
    ("metrics",): METRICS_KEYS,
    ("control",): CONTROL_KEYS,
    ("bgp",): BGP_KEYS,
    ("bgp", "neighbor"): BGP_NEIGHBOR_KEYS,
    ("bgp", "vip"): BGP_VIP_KEYS,
    ("virtual_server",): VS_KEYS,
    ("virtual_server", "monitor"): MONITOR_KEYS,
    ("virtual_server", "load_monitor"): LOAD_MONITOR_KEYS,
    ("virtual_server", "port_group"): PORT_GROUP_KEYS,
    ("virtual_server", "real_server"): RS_KEYS,
}


def schema_of(path: FieldPath) -> tuple[str, ...]:
    """The keys the table at ``path`` (e.g. ("virtual_server", 0, "monitor")) takes."""
    return SCHEMA[tuple(p for p in path if isinstance(p, str))]


# --- limits on any input: every file gives a Config or a ConfigError, never another exception --

MAX_FILE_BYTES: Final = 1 << 20  # a configuration is a few KiB; nothing larger is read
MAX_STRING: Final = 4096  # characters of one string value (a program line, a regular expression)
MAX_KEY: Final = 128  # characters of one key
MAX_NESTING: Final = 8  # tables and arrays inside each other (the schema needs 5)
MAX_INT_DIGITS: Final = 19  # an integer fits 64 bits (and prints: Python bounds int <-> str)
MIN_CHECK_INTERVAL: Final = 0.01  # seconds between a monitor's (or load monitor's) checks, at least


def read_text(path: str | os.PathLike[str], display: str) -> str:
    """The text of the file at ``path``; ConfigError when it cannot be read, is larger than
    MAX_FILE_BYTES or is not UTF-8 (both loaders read through here)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError([ConfigIssue(display, None, "", f"cannot read file: {reason}")]) from None
    check_size(data, display)
    try:
        return without_bom(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(display, line, "", "file is not valid UTF-8")]) from None


def without_bom(text: str) -> str:
    """``text`` without the byte order mark an editor (Windows Notepad) may put first: every
    format read it as part of the first line ("TOML syntax error: Invalid statement")."""
    return text[1:] if text.startswith("\ufeff") else text


def file_stamp(path: str | os.PathLike[str]) -> tuple[int, int, int, int, int] | None:
    """What changes when the file (or directory) at ``path`` does: its device, inode, mtime,
    ctime (a chmod, an in-place write) and size; None when it cannot be stat'ed.  lb.config.store
    keeps a parsed file while the stamps of what it read stay the same."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def instance_only(text: str) -> str | None:
    """The instance ``text`` names in [global] instance (default "default"), read alone: for `lb
    stop` / `lb status --config` of a file with errors elsewhere.  None when TOML cannot parse the file
    or the name is not a valid instance name."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    glob = doc.get("global", {})
    name = glob.get("instance", "default") if isinstance(glob, dict) else None
    return name if isinstance(name, str) and INSTANCE_RE.fullmatch(name) else None


def check_size(data: str | bytes, display: str) -> None:
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([ConfigIssue(display, None, "", f"larger than {MAX_FILE_BYTES >> 10} KiB: "
                                                          f"not a configuration file")])


def int_too_large(digits: int) -> str:
    return f"integer too large (more than {digits} digits)"


# --- public API ----------------------------------------------------------------


# ``dataplane`` (the loaders' keyword, down to validate): `lb run --dataplane`'s choice, the data
# plane the command line runs instead of the file's [global] dataplane.  Every configuration the
# daemon validates (the one `lb run` starts with, each reload's, the console's and the peer's
# edits: the engine keeps the choice, Engine.run_dataplane) is checked for the data plane that will
# run it (kernel IPVS's local node, [tables] against memory, [bgp] active-active, the keys without
# effect), not for the one the file names.  None: the file's.  Config.dataplane stays the file's
# (an edit writes the file's value back).


def check_dataplane(choice: str | None) -> str | None:
    """``choice`` (xdp, ipvs, auto or None), else ValueError."""
    if choice is not None and choice not in DATAPLANES:
        raise ValueError(f"dataplane must be one of {', '.join(DATAPLANES)}, got {choice!r}")
    return choice


def load(path: str | os.PathLike[str], *, dataplane: str | None = None) -> Config:
    """Read, parse and validate the configuration file at ``path``, for the data plane
    ``dataplane`` (`lb run --dataplane`; None: the file's).

    Raises ConfigError listing every problem found (including an unreadable
    file, which is reported as an issue naming the path).
    """
    display = os.fspath(path)
    return _load_text(read_text(path, display), display, Path(path), dataplane=dataplane)


def loads(text: str, path: str = "<string>", *, dataplane: str | None = None) -> Config:
    """Parse and validate configuration ``text`` (for ``dataplane``, as :func:`load`).

    ``path`` is only used in messages; the returned Config has ``path=None``
    because nothing was read from a file.
    """
    check_size(text, path)
    return _load_text(text, path, None, dataplane=dataplane)


# --- helpers -------------------------------------------------------------------


def field_name(path: FieldPath) -> str:
    """Render ("virtual_server", 1, "weight") as "virtual_server[1].weight"."""
    out = ""
    for elem in path:
        if isinstance(elem, int):
            out += f"[{elem}]"
        else:
            out += f".{elem}" if out else elem
    return out


def _header(path: FieldPath) -> str:
    """The TOML table header of ``path``: ("virtual_server", 0, "real_server") is written
    [[virtual_server.real_server]] (under the latest [[virtual_server]]), without the index."""
    return ".".join(p for p in path if isinstance(p, str))


def _describe(value: Any) -> str:
    """A TOML-flavoured description of a value for type errors."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"date/time {value}"


def _is_table_like(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )


def _valid(value: T | _Invalid) -> T:
    """Narrow a checked field; only called once no issue has been recorded."""
    assert not isinstance(value, _Invalid), "building a Config from an invalid field"
    return value


def _valid_int(value: int | None | _Invalid) -> int:
    """Narrow a checked integer field that has a default."""
    assert isinstance(value, int), "building a Config from an invalid field"
    return value


def _valid_address(value: IPAddress | _Invalid) -> IPAddress:
    # Separate from _valid: mypy would join IPv4Address | IPv6Address to _BaseAddress.
    assert not isinstance(value, _Invalid), "building a Config from an invalid field"
    return value


def _ifname_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name (the kernel's dev_valid_name rules), if it can't."""
    if not name:
        return "interface name must not be empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"interface name '{name}' is longer than {IFNAMSIZ - 1} characters"
    if name in (".", ".."):
        return f"'{name}' is not a valid interface name"
    for ch in name:
        if ch == "/" or ch == ":" or ch.isspace() or not ch.isprintable():
            return f"interface name {name!r} must not contain {ch!r}"
    return None


def _name_problem(name: str) -> str | None:
    if not name:
        return "name must not be empty"
    if len(name) > NAME_MAX:
        return f"name is longer than {NAME_MAX} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        return f"name {name!r} must not contain whitespace or control characters"
    return None


def _unicast_problem(addr: IPAddress, *, link_local: bool = False) -> str | None:
    """Why ``addr`` cannot be a service or backend address, if it can't.

    An IPv6 link-local address (fe80::/10) is refused unless ``link_local``: it means nothing
    without an interface (a zone), which an address of this file does not carry; the gateway
    nat_router, owned on its own device, may be one."""
    if isinstance(addr, IPv6Address):
        if addr.scope_id is not None:
            return f"{addr} carries a zone (%{addr.scope_id}): write the address alone"
        if addr.ipv4_mapped is not None:
            return f"{addr} is an IPv4-mapped IPv6 address: write the IPv4 address {addr.ipv4_mapped}"
        if addr.is_link_local and not link_local:
            return f"{addr} is an IPv6 link-local address, not usable without an interface"
    for kind, bad in (
        ("unspecified", addr.is_unspecified),
        ("multicast", addr.is_multicast),
        ("loopback", addr.is_loopback),
        ("broadcast", addr == IPv4Address("255.255.255.255")),
    ):
        if bad:
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{addr} is {article} {kind} address, not a usable unicast address"
    return None


USER_RE: Final = re.compile(r"[a-z_][a-z0-9_.-]{0,31}", re.IGNORECASE)


def _user_problem(name: str) -> str | None:
    """Why ``name`` cannot be script_user: not a user name, or no such account here."""
    if not USER_RE.fullmatch(name):
        return f"{name!r} is not a user name"
    try:
        pwd.getpwnam(name)
    except KeyError:
        return (f"no user '{name}' on this machine (programs run as an existing account; "
                f"\"root\" only where they need it)")
    return None


def _request_problem(what: str) -> Callable[[str], str | None]:
    """An HTTP check's path or Host header: a space or a control character (CR, LF) would split
    the request line or inject a header, so neither is taken."""

    def problem(value: str) -> str | None:
        bad = next((c for c in value if c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F), None)
        if bad is not None:
            return f"the {what} must not contain {bad!r} (no spaces or control characters)"
        return None

    return problem


def _program_problem(value: str) -> str | None:
    """A check or load program: split into its argv as the checks split it (lb.health.checks
    program_argv), so a quote left open fails here, not at every check."""
    if not value:
        return None  # absent or "": the monitor kind says whether one is needed
    try:
        argv = shlex.split(value)
    except ValueError as e:
        return f"cannot be split into arguments (shell quoting): {e}"
    if not argv:
        return "names no program to run (expected its path and arguments, e.g. \"/usr/local/bin/check %h %p\")"
    return None


_SHELL_WORD = re.compile(r"\|\|?|&&?|;|<<?|[0-9]?>>?(&[0-9]|\S+)?|2>&1")


def _shell_words(value: str) -> list[str]:
    """The arguments of a program's argv that only a shell reads (a pipe, a redirection, ``&&``):
    lb runs programs without one, so they reach the program as arguments -- the check of
    ``check %h | grep OK`` is check's exit status, with "|", "grep" and "OK" for arguments."""
    try:
        argv = shlex.split(value)
    except ValueError:
        return []
    return [a for a in argv[1:] if _SHELL_WORD.fullmatch(a)]


def _warn_shell_words(tbl, key: str, value) -> None:
    if isinstance(value, str) and value:
        words = _shell_words(value)
        if words:
            tbl.chk.warn(tbl.at(key), f"{', '.join(repr(w) for w in dict.fromkeys(words))} reach the program as "
                                      f"arguments: lb runs programs without a shell (for a pipe or a "
                                      f"redirection, run one: \"/bin/sh -c '...'\", with %h and %p inside)")


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


# --- the checker ---------------------------------------------------------------


class Positions:
    """Where each field of a document is written: the validator's messages name that line and
    field.  TOML's are below; the lvs.cf reader has its own (lvscf._Positions)."""

    def where(self, path: FieldPath) -> tuple[int | None, str]:
        """(line or None, field name) of ``path``, e.g. ("virtual_server", 0, "port")."""
        raise NotImplementedError

    def file(self, path: FieldPath) -> str | None:
        """The file ``path`` is written in, when not the one being loaded (an included file)."""
        return None


class TomlPositions(Positions):
    """A TOML file's: the line of the key (found only once an issue needs it), the field as its
    path ("virtual_server[0].port")."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._locator: Locator | None = None  # built on the first issue: valid files never pay for it

    def where(self, path: FieldPath) -> tuple[int | None, str]:
        if self._locator is None:
            self._locator = Locator(self.text)
        return self._locator.line(path), field_name(path)


class _Checker:
    """Collects issues, attaching the line (and the name) each field path is written with."""

    def __init__(self, display: str, positions: Positions) -> None:
        self.display = display
        self.positions = positions
        self.issues: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []

    def error(self, path: FieldPath, message: str) -> _Invalid:
        line, name = self.positions.where(path)
        self.issues.append(ConfigIssue(self.positions.file(path) or self.display, line, name, message))
        return INVALID

    def name(self, path: FieldPath) -> str:
        """The field at ``path`` as the file names it (virtual_server[0] in TOML, virtual[web] in an
        lvs.cf, virtual_server[198.18.0.10 80] in a keepalived.conf): for messages that refer to
        another field than their own."""
        return self.positions.where(path)[1]

    def warn(self, path: FieldPath, message: str) -> None:
        """A key accepted that changes nothing (Config.warnings: `lb check` and the log say it)"""
        line, name = self.positions.where(path)
        self.warnings.append(ConfigIssue(self.positions.file(path) or self.display, line, name, message))


class _Keep:
    """keep(value) hands back a checked value and remembers whether any was INVALID, so a table
    is built only when all of its fields are valid (their issues are reported already)."""

    def __init__(self) -> None:
        self.bad = False

    def __call__(self, value: T) -> T:
        if isinstance(value, _Invalid):
            self.bad = True
        return value


class _Table:
    """One TOML table under validation: unknown-key check plus typed getters.

    Getters return the value, the default when the key is absent, or INVALID
    after recording an issue.
    """

    def __init__(self, chk: _Checker, path: FieldPath, data: dict[str, Any], *, broken: bool = False) -> None:
        known = schema_of(path)
        self.chk = chk
        self.path = path
        self.data = data
        # A stand-in for a table that was not a table at all (already
        # reported): its required keys are then not reported as missing.
        self.broken = broken
        for key, value in data.items():
            if key not in known:
                chk.error(path + (key,), self._unknown(key, value, known))

    def _unknown(self, key: str, value: Any, known: Sequence[str]) -> str:
        kind = "table" if _is_table_like(value) else "key"
        if self.path == () and key == "real_server":
            return (
                f"unknown table '{key}' "
                "(real servers belong to a virtual server: write [[virtual_server.real_server]])"
            )
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown {kind} '{key}' (did you mean '{close[0]}'?)"
        return f"unknown {kind} '{key}' (expected one of: {', '.join(known)})"

    def at(self, key: str) -> FieldPath:
        return self.path + (key,)

    def _fetch(self, key: str, required: bool) -> object:
        value = self.data.get(key, _ABSENT)
        if value is _ABSENT and required:
            return INVALID if self.broken else self.chk.error(self.at(key), "required key is missing")
        return value

    def string(self, key: str, *, required: bool = False) -> str | None | _Invalid:
        value = self._fetch(key, required)
        if value is _ABSENT:
            return None
        if value is INVALID:
            return INVALID
        if isinstance(value, str):
            return value
        return self.chk.error(self.at(key), f"expected a string, got {_describe(value)}")

    def integer(
        self, key: str, bounds: tuple[int, int], *, required: bool = False, default: int | None = None
    ) -> int | None | _Invalid:
        value = self._fetch(key, required)
        if value is _ABSENT:
            return default
        if value is INVALID:
            return INVALID
        # bool is a subclass of int in Python, but `true` is not a number in TOML.
        if not isinstance(value, int) or isinstance(value, bool):
            return self.chk.error(self.at(key), f"expected an integer, got {_describe(value)}")
        number: int = value
        lo, hi = bounds
        if not lo <= number <= hi:
            return self.chk.error(self.at(key), f"must be between {lo} and {hi}, got {number}")
        return number

    def choice(self, key: str, choices: Sequence[str], default: str, what: str) -> str | _Invalid:
        """A string among ``choices`` (``default`` when absent); ``what`` names it in the message."""
        value = self.string(key)
        if value is None:
            return default
        if isinstance(value, _Invalid) or value in choices:
            return value
        return self.chk.error(self.at(key), f"unknown {what} '{value}' (expected one of: {', '.join(choices)})")

    def boolean(self, key: str, default: bool) -> bool | _Invalid:
        value = self.data.get(key, _ABSENT)
        if value is _ABSENT:
            return default
        if not isinstance(value, bool):
            return self.chk.error(self.at(key), f"expected a boolean (true or false), got {_describe(value)}")
        return value

    def _text(self, key: str, problem: Callable[[str], str | None], required: bool) -> str | None | _Invalid:
        """A string that ``problem`` finds nothing wrong with."""
        value = self.string(key, required=required)
        if isinstance(value, str):
            why = problem(value)
            if why:
                return self.chk.error(self.at(key), why)
        return value

    def ifname(self, key: str, *, required: bool = False) -> str | None | _Invalid:
        return self._text(key, _ifname_problem, required)

    def name(self, key: str, *, required: bool = False) -> str | None | _Invalid:
        return self._text(key, _name_problem, required)

    def address(self, key: str) -> IPAddress | _Invalid:
        """A required IP address (either family; callers check the family)."""
        value = self.string(key, required=True)
        if not isinstance(value, str):
            return INVALID
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            endpoint = parse_endpoint(value)
            if endpoint is not None and endpoint[1] is not None and "port" in schema_of(self.path):
                # ipvsadm's -t ADDR:PORT / -r ADDR:PORT habit: the port has a key of its own here
                return self.chk.error(self.at(key), f"'{value}' is not a valid IP address: write the port in its "
                                                    f"own key (address = \"{endpoint[0]}\", port = {endpoint[1]})")
            if any(c.isalpha() for c in value) and _HOST_RE.fullmatch(value) and ":" not in value:
                # a host name: resolved when? (at each start, to what?) -- lb takes the address
                return self.chk.error(self.at(key), f"'{value}' is a host name, not an IP address: lb takes "
                                                    f"addresses (write the one it resolves to)")
            return self.chk.error(self.at(key), f"'{value}' is not a valid IP address")
        problem = _unicast_problem(addr)
        if problem:
            return self.chk.error(self.at(key), problem)
        return addr

    def table(self, key: str) -> _Table | _Invalid:
        """An optional sub-table; absent gives an empty one (so defaults apply)."""
        value = self.data.get(key, _ABSENT)
        if value is _ABSENT:
            return _Table(self.chk, self.at(key), {})
        if not isinstance(value, dict):
            return self.chk.error(self.at(key), f"expected a table ([{_header(self.at(key))}]), "
                                                f"got {_describe(value)}")
        return _Table(self.chk, self.at(key), value)

    def tables(self, key: str) -> list[_Table | _Invalid]:
        """An optional array of tables ([[key]]); absent gives []."""
        value = self.data.get(key, _ABSENT)
        if value is _ABSENT:
            return []
        header = _header(self.at(key))
        if not isinstance(value, list):
            self.chk.error(
                self.at(key),
                f"expected an array of tables ([[{header}]]), got {_describe(value)}",
            )
            return []
        out: list[_Table | _Invalid] = []
        for i, item in enumerate(value):
            path = self.at(key) + (i,)
            if isinstance(item, dict):
                out.append(_Table(self.chk, path, item))
            else:
                out.append(self.chk.error(path, f"expected a table, got {_describe(item)}"))
        return out


# --- drafts: checked fields, possibly INVALID, before the model is built ---------


@dataclass
class _RealDraft:
    path: FieldPath
    name: str | None | _Invalid  # None: default to the address
    address: IPAddress | _Invalid
    port: int | None | _Invalid
    weight: int | None | _Invalid
    active: bool | _Invalid
    u_threshold: int | None | _Invalid = 0
    l_threshold: int | None | _Invalid = 0

    @property
    def effective_name(self) -> str | None:
        if isinstance(self.name, str):
            return self.name
        if self.name is None and not isinstance(self.address, _Invalid):
            return str(self.address)
        return None

    def build(self) -> RealServer:
        name = self.effective_name
        assert name is not None  # defaults to the address
        return RealServer(
            name=name,
            address=_valid_address(self.address),
            port=_valid(self.port),
            weight=_valid_int(self.weight),
            active=_valid(self.active),
            u_threshold=_valid_int(self.u_threshold),
            l_threshold=_valid_int(self.l_threshold),
        )


@dataclass
class _VirtualDraft:
    path: FieldPath
    name: str | None | _Invalid
    address: IPAddress | _Invalid
    port: int | None | _Invalid
    protocol: str | _Invalid
    scheduler: str | _Invalid
    persistent: int | None | _Invalid
    pmask: str | int | None | _Invalid
    active: bool | _Invalid
    device: str | None | _Invalid
    monitor: Monitor | _Invalid = field(default_factory=Monitor)
    reals: list[_RealDraft | _Invalid] = field(default_factory=list)
    fwmark: int | _Invalid = 0
    groups: list[PortGroup | _Invalid] = field(default_factory=list)
    sched_flags: tuple[str, ...] | _Invalid = ()
    sorry: tuple[IPAddress, int | None] | None | _Invalid = None
    mh_size: int | _Invalid = DEFAULT_MH_SIZE
    quiesce_server: bool | _Invalid = False
    load_monitor: LoadMonitor | None | _Invalid = None

    def build(self) -> VirtualServer:
        name = _valid(self.name)
        assert name is not None  # required
        return VirtualServer(
            name=name,
            address=_valid_address(self.address),
            port=_valid_int(self.port),
            protocol=_valid(self.protocol),
            scheduler=_valid(self.scheduler),
            persistent=_valid_int(self.persistent),
            pmask=_valid(self.pmask),
            active=_valid(self.active),
            device=_valid(self.device),
            real_servers=tuple(_valid(r).build() for r in self.reals),
            monitor=_valid(self.monitor),
            fwmark=_valid_int(self.fwmark),
            port_groups=tuple(_valid(g) for g in self.groups),
            scheduler_flags=_valid(self.sched_flags),
            sorry_server=_valid(self.sorry),
            mh_size=_valid_int(self.mh_size),
            quiesce_server=_valid(self.quiesce_server),
            load_monitor=_valid(self.load_monitor),
        )


# --- sections --------------------------------------------------------------------


def _check_nat_router(g: _Table) -> IPv4Interface | IPv6Interface | None | _Invalid:
    value = g.string("nat_router")
    if not isinstance(value, str):
        return value
    path = g.at("nat_router")
    if "/" not in value:
        example = f"{value}/64" if ":" in value else f"{value}/24"
        return g.chk.error(path, f"'{value}' must carry a prefix length, e.g. '{example}'")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        return g.chk.error(path, f"'{value}' is not a valid interface address (address/prefix)")
    # the interface keeps a zone (fe80::1%priv0/64) its .ip drops: check the address as written
    problem = _unicast_problem(ipaddress.ip_address(value.split("/", 1)[0]), link_local=True)
    if problem:
        return g.chk.error(path, problem)
    net = iface.network
    # its prefix becomes a connected route on the private interface: /0 there would take over
    # the director's default route
    shortest = 8 if iface.version == 4 else 16
    if net.prefixlen < shortest:
        mask = f" (netmask {iface.netmask})" if iface.version == 4 else ""
        example = f"{iface.ip}/24" if iface.version == 4 else f"{iface.ip}/64"
        return g.chk.error(path, f"prefix length {net.prefixlen}{mask} is shorter than /{shortest}: lb would "
                                 f"route {net} to the private interface; give the real servers' subnet, "
                                 f"e.g. '{example}'")
    if isinstance(iface, IPv6Interface):
        # No broadcast in IPv6; the all-zero host address is the Subnet-Router anycast address
        # (RFC 4291 2.6.1), which routers of the prefix answer: not a gateway one director owns.
        # /127 and /128 have none (RFC 6164).
        if net.prefixlen <= 126 and iface.ip == net.network_address:
            return g.chk.error(path, f"{iface.ip} is the Subnet-Router anycast address of {net}, "
                                     f"not a host address")
        return iface
    # /31 and /32 have no network or broadcast address (RFC 3021).
    if net.prefixlen <= 30 and iface.ip in (net.network_address, net.broadcast_address):
        kind = "network" if iface.ip == net.network_address else "broadcast"
        return g.chk.error(path, f"{iface.ip} is the {kind} address of {net}, not a host address")
    return iface


def _check_scheduler(vs: _Table) -> str | _Invalid:
    value = vs.string("scheduler")
    if value is None:
        return DEFAULT_SCHEDULER
    if isinstance(value, _Invalid) or value in SCHEDULERS:
        return value
    return vs.chk.error(vs.at("scheduler"), f"unknown scheduler '{value}' (valid: {', '.join(SCHEDULERS)})")


def _check_protocol(vs: _Table) -> str | _Invalid:
    value = vs.string("protocol")
    if value is None:
        return DEFAULT_PROTOCOL
    if isinstance(value, _Invalid) or value in PROTOCOLS:
        return value
    return vs.chk.error(vs.at("protocol"), f"unknown protocol '{value}' (expected 'tcp' or 'udp')")


def _check_pmask(vs: _Table, version: int | None) -> str | int | None | _Invalid:
    """The persistence netmask, by the service's family (``version``; None when its address is
    invalid, already reported): IPv4 a dotted netmask or "/N", normalised to the dotted form;
    IPv6 a prefix length 1..128 (64, "64" or "/64")."""
    value = vs.data.get("pmask", _ABSENT)
    if value is _ABSENT:
        return None
    path = vs.at("pmask")
    if not vs.data.get("persistent"):
        vs.chk.warn(path, "no effect without persistent (the persistence timeout)")
    if version == 6:
        prefix = parse_prefix_length(value)
        if prefix is not None:
            return prefix
        if isinstance(value, str) and _is_ipv4(value):
            return vs.chk.error(path, f"'{value}' is an IPv4 netmask but the virtual server is IPv6: "
                                      f"give a prefix length 1..128 (e.g. 64)")
        digits = value[1:] if isinstance(value, str) and value.startswith("/") else value
        if isinstance(digits, str) and digits.isascii() and digits.isdigit():
            digits = int(digits)
        if isinstance(digits, int) and not isinstance(digits, bool):
            return vs.chk.error(path, f"an IPv6 prefix length must be between 1 and 128, got {digits}")
        return vs.chk.error(path, f"expected an IPv6 prefix length 1..128 (64, \"64\" or \"/64\"), "
                                  f"got {_describe(value)}")
    if version is None:
        # The family is unknown (the address was wrong): report only what neither family takes.
        if (isinstance(value, str) and parse_netmask(value) is not None) or parse_prefix_length(value) is not None:
            return INVALID
        return vs.chk.error(path, f"expected an IPv4 netmask (e.g. '255.255.255.0') or an IPv6 prefix "
                                  f"length (e.g. 64), got {_describe(value)}")
    if not isinstance(value, str):
        return vs.chk.error(path, f"expected a string (an IPv4 netmask such as '255.255.255.0' or '/24'), "
                                  f"got {_describe(value)}")
    mask = parse_netmask(value)
    if mask is None:
        if value.startswith("/") and value[1:].isascii() and value[1:].isdigit():
            return vs.chk.error(path, f"an IPv4 prefix length must be between 0 and 32, got {value[1:]}")
        return vs.chk.error(path, f"'{value}' is not a contiguous IPv4 netmask (e.g. '255.255.255.0')")
    return mask


def _check_real(rs: _Table, vip: IPAddress | _Invalid, vs_name: str | None) -> _RealDraft:
    address = rs.address("address")
    if not isinstance(address, _Invalid) and not isinstance(vip, _Invalid) and address.version != vip.version:
        address = rs.chk.error(
            rs.at("address"),
            f"real server address {address} is IPv{address.version} but virtual server "
            f"'{vs_name or '?'}' is IPv{vip.version}",
        )
    u_threshold = rs.integer("u_threshold", THRESHOLD_RANGE, default=0)
    l_threshold = rs.integer("l_threshold", THRESHOLD_RANGE, default=0)
    if isinstance(u_threshold, int) and isinstance(l_threshold, int) and u_threshold and l_threshold > u_threshold:
        l_threshold = rs.chk.error(rs.at("l_threshold"),
                                   f"must not be above u_threshold ({l_threshold} > {u_threshold})")
    elif u_threshold == 0 and isinstance(l_threshold, int) and l_threshold:
        rs.chk.warn(rs.at("l_threshold"), "no effect without u_threshold (the server is never overloaded)")
    return _RealDraft(
        path=rs.path,
        name=rs.name("name"),
        address=address,
        port=rs.integer("port", PORT_RANGE),
        weight=rs.integer("weight", WEIGHT_RANGE, default=1),
        active=rs.boolean("active", True),
        u_threshold=u_threshold,
        l_threshold=l_threshold,
    )


def parse_sorry(text: str) -> tuple[IPAddress, int | None] | str:
    """``ADDR``, ``ADDR:PORT`` or ``[ADDR6]:PORT`` -> (address, port or None); a message if bad."""
    text = text.strip()
    parts = split_endpoint(text)
    if parts is None:
        return f"'{text}' is not an address, ADDR:PORT or [ADDR6]:PORT"
    host, port_text, _ = parts
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"'{host}' is not a valid IP address"
    port = None
    if port_text is not None:
        port = parse_port(port_text)
        if port is None:
            return f"port must be between {PORT_RANGE[0]} and {PORT_RANGE[1]}, got {port_text!r}"
    problem = _unicast_problem(addr)
    if problem:
        return problem
    return addr, port


def _check_sorry(vs: _Table, vip: IPAddress | _Invalid, fwmark: bool) -> tuple[IPAddress, int | None] | None | _Invalid:
    value = vs.string("sorry_server")
    if not isinstance(value, str):
        return value
    parsed = parse_sorry(value)
    if isinstance(parsed, str):
        return vs.chk.error(vs.at("sorry_server"), parsed)
    addr, port = parsed
    if not isinstance(vip, _Invalid) and addr.version != vip.version:
        return vs.chk.error(vs.at("sorry_server"),
                            f"sorry server address {addr} is IPv{addr.version} but the virtual server is "
                            f"IPv{vip.version}")
    if fwmark and port is not None:
        return vs.chk.error(vs.at("sorry_server"), "the sorry server of a firewall-mark service takes each "
                                                   "connection's own port: omit :PORT")
    return parsed


def _check_sched_flags(vs: _Table, scheduler: str | _Invalid) -> tuple[str, ...] | _Invalid:
    value = vs.data.get("scheduler_flags", _ABSENT)
    if value is _ABSENT:
        return ()
    path = vs.at("scheduler_flags")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return vs.chk.error(path, f"expected an array of strings, e.g. [\"sh-port\"], got {_describe(value)}")
    for f in value:
        if f not in SCHEDULER_FLAGS:
            return vs.chk.error(path, f"unknown scheduler flag '{f}' (expected one of: {', '.join(SCHEDULER_FLAGS)})")
        if isinstance(scheduler, str) and SCHEDULER_FLAGS[f] != scheduler:
            return vs.chk.error(path, f"flag '{f}' belongs to scheduler '{SCHEDULER_FLAGS[f]}', not '{scheduler}'")
    return tuple(f for f in SCHEDULER_FLAGS if f in value)   # ipvsadm's order


# mh's Maglev table: a prime (the permutation's step must be coprime with it), from the kernel's
# smallest choice (CONFIG_IP_VS_MH_TAB_INDEX 8) up to what one service's table should cost
MH_SIZE_RANGE: Final = (251, 65521)


def _check_mh_size(vs: _Table, scheduler: str | _Invalid) -> int | _Invalid:
    if "mh_size" not in vs.data:
        return DEFAULT_MH_SIZE
    size = vs.integer("mh_size", MH_SIZE_RANGE)
    if not isinstance(size, int):
        return INVALID if size is None else size
    path = vs.at("mh_size")
    if isinstance(scheduler, str) and scheduler != "mh":
        return vs.chk.error(path, f"mh_size is the table size of scheduler 'mh', not '{scheduler}'")
    if any(size % p == 0 for p in range(2, int(size ** 0.5) + 1)):
        return vs.chk.error(path, f"must be a prime (e.g. {DEFAULT_MH_SIZE}, the kernel's default), got {size}")
    nreal = len(vs.data.get("real_server", ())) if isinstance(vs.data.get("real_server"), list) else 0
    if nreal > size:
        return vs.chk.error(path, f"the table needs at least one slot per real server ({nreal}), got {size}")
    return size


def _parse_ports(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d{1,5}\s*(-\s*\d{1,5}\s*)?", value):
        lo_s, _, hi_s = value.partition("-")
        lo = int(lo_s)
        hi = int(hi_s) if hi_s else lo
    else:
        return None
    if not (PORT_RANGE[0] <= lo <= hi <= PORT_RANGE[1]):
        return None
    return lo, hi


def _check_port_group(g: _Table) -> PortGroup | _Invalid:
    address = g.address("address")
    protocol = _check_protocol(g)
    ports = g.data.get("ports", _ABSENT)
    rng: tuple[int, int] | _Invalid
    if ports is _ABSENT:
        rng = INVALID if g.broken else g.chk.error(g.at("ports"), "required key is missing")
    else:
        parsed = _parse_ports(ports)
        rng = parsed if parsed is not None else g.chk.error(
            g.at("ports"), f"expected a port or a range like \"10000-10100\" (1-65535), got {_describe(ports)}")
    if isinstance(address, _Invalid) or isinstance(protocol, _Invalid) or isinstance(rng, _Invalid):
        return INVALID
    return PortGroup(address, protocol, rng[0], rng[1])


def _check_fwmark_virtual(vs: _Table, name: str | None | _Invalid, user: str) -> _VirtualDraft:
    """A firewall-mark service: fwmark plus port groups instead of address/port/protocol."""
    fwmark = vs.integer("fwmark", FWMARK_RANGE, required=True)
    for k in ("address", "port", "protocol"):
        if k in vs.data:
            vs.chk.error(vs.at(k), f"a firewall-mark service is matched by its port_group entries; "
                                   f"remove '{k}' (put it in a [[virtual_server.port_group]])")
    groups: list[PortGroup | _Invalid] = [
        g if isinstance(g, _Invalid) else _check_port_group(g) for g in vs.tables("port_group")
    ]
    if not groups and "port_group" not in vs.data:
        vs.chk.error(vs.at("port_group"), "a firewall-mark service needs at least one port group "
                                          "(address, protocol, ports)")
    first = groups[0] if groups and isinstance(groups[0], PortGroup) else None
    # One family per firewall-mark service (IPVS keeps one per service, -f with or without -6):
    # the first valid group sets it for the other groups, the real servers and the sorry server.
    ref = next((g for g in groups if isinstance(g, PortGroup)), None)
    for i, g in enumerate(groups):
        if isinstance(g, PortGroup) and ref is not None and g.address.version != ref.address.version:
            groups[i] = vs.chk.error(
                vs.at("port_group") + (i, "address"),
                f"port group address {g.address} is IPv{g.address.version} but "
                f"{vs.chk.name(vs.at('port_group') + (groups.index(ref),))} ({ref.address}) is IPv{ref.address.version}: "
                f"the port groups of a firewall-mark service are all one address family")
    ref_addr: IPAddress | _Invalid = ref.address if ref is not None else INVALID
    scheduler = _check_scheduler(vs)
    draft = _VirtualDraft(
        path=vs.path,
        name=name,
        address=first.address if first else INVALID,
        port=first.low if first else INVALID,
        protocol=first.protocol if first else INVALID,
        scheduler=scheduler,
        persistent=vs.integer("persistent", PERSISTENT_RANGE, default=0),
        pmask=_check_pmask(vs, None if isinstance(ref_addr, _Invalid) else ref_addr.version),
        active=vs.boolean("active", True),
        device=vs.ifname("device"),
        fwmark=INVALID if fwmark is None else fwmark,
        groups=groups,
        sched_flags=_check_sched_flags(vs, scheduler),
        mh_size=_check_mh_size(vs, scheduler),
    )
    if any(isinstance(g, _Invalid) for g in groups):
        draft.fwmark = INVALID
    draft.sorry = _check_sorry(vs, ref_addr, True)
    draft.quiesce_server = vs.boolean("quiesce_server", False)
    draft.load_monitor = _check_load_monitor(vs, user)
    draft.monitor = _check_monitor(vs, user)
    vs_name = name if isinstance(name, str) else None
    for rs in vs.tables("real_server"):
        if isinstance(rs, _Invalid):
            draft.reals.append(rs)
            continue
        rd = _check_real(rs, ref_addr, vs_name)
        if isinstance(rd.port, int):
            rd.port = rs.chk.error(rs.at("port"), "real servers of a firewall-mark service take each "
                                                  "connection's own port: omit port")
        draft.reals.append(rd)
    return draft


def _check_virtual(vs: _Table, user: str) -> _VirtualDraft:
    """One [[virtual_server]]; ``user``: the global script_user its monitors default to."""
    name = vs.name("name", required=True)
    if "fwmark" in vs.data:
        return _check_fwmark_virtual(vs, name, user)
    if "port_group" in vs.data:
        vs.chk.error(vs.at("port_group"), "port groups belong to a firewall-mark service: set fwmark")
    address = vs.address("address")
    vip = address  # its family is the service's: real servers and sorry server are checked against it
    port: int | None | _Invalid
    if type(vs.data.get("port")) is int and vs.data["port"] == 0:
        # ipvsadm's port 0 is a persistent service of every port of the VIP (-p required)
        port = vs.chk.error(vs.at("port"), "port 0 (IPVS's persistent service of every port) is not supported: "
                                           "make it a firewall-mark service (fwmark, persistent, and a port "
                                           "group of this address with ports 1-65535; its health checks then "
                                           "need the monitor's port) or give the port")
    else:
        port = vs.integer("port", PORT_RANGE, required=True)
    draft = _VirtualDraft(
        path=vs.path,
        name=name,
        address=address,
        port=port,
        protocol=_check_protocol(vs),
        scheduler=_check_scheduler(vs),
        persistent=vs.integer("persistent", PERSISTENT_RANGE, default=0),
        pmask=_check_pmask(vs, None if isinstance(vip, _Invalid) else vip.version),
        active=vs.boolean("active", True),
        device=vs.ifname("device"),
    )
    draft.sched_flags = _check_sched_flags(vs, draft.scheduler)
    draft.mh_size = _check_mh_size(vs, draft.scheduler)
    draft.sorry = _check_sorry(vs, vip, False)
    draft.quiesce_server = vs.boolean("quiesce_server", False)
    draft.load_monitor = _check_load_monitor(vs, user)
    draft.monitor = _check_monitor(vs, user)
    vs_name = name if isinstance(name, str) else None
    for rs in vs.tables("real_server"):
        draft.reals.append(rs if isinstance(rs, _Invalid) else _check_real(rs, vip, vs_name))
    return draft


SECONDS_RANGE: Final = (0.0, 86400.0)


def _seconds(m: _Table, key: str, default: float,
             rng: tuple[float, float] = SECONDS_RANGE) -> float | _Invalid:
    value = m.data.get(key, _ABSENT)
    if value is _ABSENT:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return m.chk.error(m.at(key), f"expected a number of seconds, got {_describe(value)}")
    lo, hi = rng
    if not lo <= value <= hi:
        return m.chk.error(m.at(key), f"must be between {lo:g} and {hi:g} seconds, got {value}")
    return float(value)


def _script_user(t: _Table, default: str) -> str | _Invalid:
    value = t._text("script_user", _user_problem, False)
    return default if value is None else value


def _check_monitor(vs: _Table, user: str) -> Monitor | _Invalid:
    m = vs.table("monitor")
    if isinstance(m, _Invalid):
        return m
    d = Monitor()
    keep = _Keep()
    kind = keep(m.choice("kind", MONITOR_KINDS, d.kind, "monitor kind"))
    strings = {k: keep(m.string(k)) for k in ("send", "expect", "digest")}
    strings["program"] = keep(m._text("program", _program_problem, False))
    _warn_shell_words(m, "program", strings["program"])
    if isinstance(strings["digest"], str) and strings["digest"]:
        if not re.fullmatch(r"[0-9A-Fa-f]{32}", strings["digest"]):
            strings["digest"] = keep(m.chk.error(m.at("digest"), "expected the body's MD5 digest: 32 hexadecimal "
                                                                 "digits (as keepalived's genhash prints it)"))
        else:
            strings["digest"] = strings["digest"].lower()
    strings["path"] = keep(m._text("path", _request_problem("path"), False))
    host = keep(m._text("host", _request_problem("Host header"), False))
    script_user = keep(_script_user(m, user))
    body_regex = keep(m.string("body_regex"))
    use_regex = keep(m.boolean("use_regex", d.use_regex))
    reply_encoding = keep(m.choice("reply_encoding", REPLY_ENCODINGS, d.reply_encoding, "reply encoding"))
    tls_verify = keep(m.boolean("tls_verify", d.tls_verify))
    misc_dynamic = keep(m.boolean("misc_dynamic", d.misc_dynamic))
    quiesce = keep(m.boolean("quiesce", d.quiesce))
    port = keep(m.integer("port", PORT_RANGE))
    times = {k: keep(_seconds(m, k, getattr(d, k))) for k in ("interval", "timeout", "reentry", "connect_timeout")}
    status = m.data.get("status", _ABSENT)
    if status is _ABSENT:
        status = d.status
    elif not (isinstance(status, list) and len(status) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in status)
              and 100 <= status[0] <= status[1] <= 599):
        status = keep(m.chk.error(m.at("status"), "expected [lowest, highest] HTTP status, e.g. [200, 399]"))
    else:
        status = (status[0], status[1])
    for rx_key, is_rx in (("expect", use_regex is True), ("body_regex", True)):
        rx = strings.get(rx_key) if rx_key == "expect" else body_regex
        if is_rx and isinstance(rx, str):
            try:
                re.compile(rx)
            except re.error as e:
                keep(m.chk.error(m.at(rx_key), f"not a valid regular expression: {e}"))
            except (RecursionError, OverflowError) as e:  # groups nested too deeply, a{huge}
                keep(m.chk.error(m.at(rx_key), f"not a usable regular expression: {e}"))
    if kind == "program" and not strings["program"]:
        keep(m.chk.error(m.at("program"), "a program monitor needs `program` (argv with %h and %p)"))
    for key in ("interval", "connect_timeout"):
        if isinstance(times[key], float) and times[key] <= 0:
            keep(m.chk.error(m.at(key), "must be more than 0 seconds"))
    if isinstance(times["interval"], float) and 0 < times["interval"] < MIN_CHECK_INTERVAL:
        keep(m.chk.error(m.at("interval"), f"must be at least {MIN_CHECK_INTERVAL} seconds "
                                           "(checks would run back to back)"))
    if keep.bad:
        return INVALID
    mon = Monitor(kind=kind, send=strings["send"] or "", expect=strings["expect"] or "", use_regex=use_regex,
                   reply_encoding=reply_encoding,
                   path=strings["path"] or d.path, host=host, status=status, body_regex=body_regex,
                   digest=strings["digest"] or "", tls_verify=tls_verify, program=strings["program"] or "",
                   misc_dynamic=misc_dynamic, port=port, quiesce=quiesce, script_user=script_user, **times)
    # A key set to other than its default that this kind never reads is a mistake worth a word
    # (example.toml's full list of defaults is not).
    # the kind the checks run: a UDP service's tcp / send_expect monitor sends and expects in
    # datagrams (lb.engine.check_spec)
    runs = "udp" if kind in ("tcp", "send_expect") and vs.data.get("protocol") == "udp" else kind
    for key, kinds in MONITOR_KIND_KEYS.items():
        default = user if key == "script_user" else getattr(d, key)
        if key in m.data and runs not in kinds and getattr(mon, key) != default:
            m.chk.warn(m.at(key), f"no effect with kind \"{kind}\" (used by: {', '.join(kinds)})")
    # a check ends at connect_timeout at the latest, and the verdict comes at a check's end: a
    # server that hangs is taken down connect_timeout after the check began, past `timeout`
    # (timeout 0, the first failure, waits for the check's end by definition)
    if kind != "none" and 0 < mon.timeout < mon.connect_timeout:
        key = "connect_timeout" if "connect_timeout" in m.data or "timeout" not in m.data else "timeout"
        m.chk.warn(m.at(key), f"connect_timeout {mon.connect_timeout:g} s is longer than timeout "
                              f"{mon.timeout:g} s: a real server that hangs is taken down when its check "
                              f"gives up, up to {mon.connect_timeout:g} s after the check began, not after "
                              f"{mon.timeout:g} s (make connect_timeout at most timeout)")
    return mon


def _check_load_monitor(vs: _Table, user: str) -> LoadMonitor | None | _Invalid:
    """[virtual_server.load_monitor]: absent means the configured weights stay as they are."""
    if "load_monitor" not in vs.data:
        return None
    m = vs.table("load_monitor")
    if isinstance(m, _Invalid):
        return m
    d = LoadMonitor()
    kind = m.string("kind", required=True)
    if isinstance(kind, str) and kind not in LOAD_MONITOR_KINDS:
        kind = m.chk.error(m.at("kind"), f"unknown load monitor kind '{kind}' (expected one of: "
                                         f"{', '.join(LOAD_MONITOR_KINDS)})")
    port = m.integer("port", PORT_RANGE)
    program = m._text("program", _program_problem, False)
    _warn_shell_words(m, "program", program)
    interval = _seconds(m, "interval", d.interval)
    timeout = _seconds(m, "timeout", d.timeout)
    min_weight = m.integer("min_weight", WEIGHT_RANGE, default=d.min_weight)
    script_user = _script_user(m, user)
    if kind == "agent" and port is None:
        port = m.chk.error(m.at("port"), "an agent load monitor needs `port` (the agent's TCP port on "
                                         "each real server)")
    if kind == "program" and not program:
        program = m.chk.error(m.at("program"), "a program load monitor needs `program` (argv with %h and %p)")
    if isinstance(interval, float) and interval <= 0:
        interval = m.chk.error(m.at("interval"), "must be more than 0 seconds")
    elif isinstance(interval, float) and interval < MIN_CHECK_INTERVAL:
        interval = m.chk.error(m.at("interval"), f"must be at least {MIN_CHECK_INTERVAL} seconds "
                                                 "(polls would run back to back)")
    if isinstance(timeout, float) and timeout <= 0:
        timeout = m.chk.error(m.at("timeout"), "must be more than 0 seconds")
    values = (kind, port, program, interval, timeout, min_weight, script_user)
    if any(isinstance(v, _Invalid) for v in values):
        return INVALID
    lm = LoadMonitor(kind=kind, port=port, program=program or "", interval=interval, timeout=timeout,
                     min_weight=min_weight, script_user=script_user)
    # a key this kind never reads, set to other than its default, is a mistake worth a word (as
    # the monitor's): an agent's program is not run, a program's port not asked
    for key, kinds in LOAD_MONITOR_KIND_KEYS.items():
        default = user if key == "script_user" else getattr(d, key)
        if key in m.data and kind not in kinds and getattr(lm, key) != default:
            m.chk.warn(m.at(key), f"no effect with kind \"{kind}\" (used by: {', '.join(kinds)})")
    return lm


# --- cross-field checks ----------------------------------------------------------


def _check_nat_families(chk: _Checker, drafts: list[_VirtualDraft | _Invalid],
                        nat_router: IPv4Interface | IPv6Interface) -> None:
    """NAT with [ha]: the real servers reply through nat_router, the one gateway lb moves with
    the active role, of one address family; a virtual server of the other family has real
    servers without it after a failover (a warning: their replies may reach the director
    another way, e.g. a route of their own)."""
    for vs in drafts:
        if isinstance(vs, _Invalid) or isinstance(vs.address, _Invalid):
            continue
        v = vs.address.version
        if v == nat_router.version:
            continue
        if vs.groups:
            first = next(i for i, g in enumerate(vs.groups) if isinstance(g, PortGroup))
            where: FieldPath = vs.path + ("port_group", first, "address")
        else:
            where = vs.path + ("address",)
        chk.warn(where, f"NAT: this IPv{v} virtual server's real servers have no gateway that moves with the "
                        f"active director: nat_router ({nat_router}) is IPv{nat_router.version}, and lb owns one "
                        f"nat_router (one address family); their replies must reach the active director by a "
                        f"route of their own")


def _check_reals_of(chk: _Checker, vs: _VirtualDraft, network: str | _Invalid) -> None:
    """Per-service checks: direct-routing ports, duplicate addresses and names."""
    vs_label = vs.name if isinstance(vs.name, str) else chk.name(vs.path)
    seen_addr: dict[tuple[IPAddress, int], FieldPath] = {}
    seen_name: dict[str, FieldPath] = {}
    vs_port = vs.port if isinstance(vs.port, int) else None
    sorry = vs.sorry
    # direct routing and tunneling hand the client's packet on as it came: its port stays
    method = {"direct": "direct routing", "tunnel": "tunneling"}.get(network) if isinstance(network, str) else None
    if (method and isinstance(sorry, tuple) and sorry[1] is not None and vs_port is not None
            and sorry[1] != vs_port and vs.fwmark == 0):
        chk.error(vs.path + ("sorry_server",),
                  f"{method} cannot change the destination port (sorry server port {sorry[1]}, "
                  f"virtual server port {vs_port}); omit :PORT or use network = \"nat\"")
    for rs in vs.reals:
        if isinstance(rs, _Invalid):
            continue
        port_ok = not isinstance(rs.port, _Invalid)
        if method and isinstance(rs.port, int) and vs_port is not None and rs.port != vs_port:
            chk.error(
                rs.path + ("port",),
                f"{method} cannot change the destination port "
                f"(real server port {rs.port}, virtual server port {vs_port}); "
                f"omit port or use network = \"nat\"",
            )
            port_ok = False
        eff_port = rs.port if isinstance(rs.port, int) else vs_port
        if not isinstance(rs.address, _Invalid) and port_ok and eff_port is not None:
            key = (rs.address, eff_port)
            if key in seen_addr:
                # a firewall-mark service's real servers have no port of their own (each
                # connection keeps its own): the address is the real server
                what = str(rs.address) if vs.fwmark else _endpoint(rs.address, eff_port)
                chk.error(
                    rs.path + ("address",),
                    f"duplicate real server {what} in virtual server "
                    f"'{vs_label}' (already defined by {chk.name(seen_addr[key])})",
                )
                if rs.name is None:
                    continue  # its defaulted name clashes too: don't report the same mistake twice
            else:
                seen_addr[key] = rs.path
        name = rs.effective_name
        if name is not None:
            if name in seen_name:
                hint = ""
                if rs.name is None:
                    hint = "; the name defaults to the address, set name = \"...\" to tell them apart"
                chk.error(
                    rs.path + ("name",),
                    f"duplicate real server name '{name}' in virtual server '{vs_label}' "
                    f"(already used by {chk.name(seen_name[name])}){hint}",
                )
            else:
                seen_name[name] = rs.path


SH_BUCKETS: Final = 256  # IP_VS_SH_TAB_SIZE


def _warn_sh_weights(chk: _Checker, vs: _VirtualDraft) -> None:
    """sh fills its 256 buckets walking the list of real servers, each taking `weight`
    consecutive ones (ip_vs_sh_reassign; weight 0 takes one): weights that sum beyond 256 leave
    the servers last in the list fewer buckets than their share, or none."""
    if vs.scheduler != "sh":
        return
    reals = [r for r in vs.reals if isinstance(r, _RealDraft) and r.active is True and isinstance(r.weight, int)]
    total = sum(max(1, r.weight) for r in reals if isinstance(r.weight, int))
    if total > SH_BUCKETS:
        chk.warn(vs.path + ("scheduler",), f"sh fills its {SH_BUCKETS} buckets with each real server's weight in "
                                           f"turn (as IPVS): the weights sum to {total}, so the servers last in its "
                                           f"list get fewer buckets than their weight's share, or none; scale the "
                                           f"weights down (their ratios are what count)")


def _check_services(chk: _Checker, drafts: list[_VirtualDraft | _Invalid]) -> None:
    """Duplicate virtual server keys and names."""
    seen_key: dict[tuple[str, IPAddress, int], FieldPath] = {}
    seen_name: dict[str, FieldPath] = {}
    for vs in drafts:
        if isinstance(vs, _Invalid):
            continue
        if vs.fwmark == 0 and isinstance(vs.protocol, str) and not isinstance(vs.address, _Invalid) and isinstance(vs.port, int):
            key = (vs.protocol, vs.address, vs.port)
            if key in seen_key:
                chk.error(
                    vs.path + ("address",),
                    f"duplicate virtual server {vs.protocol} {_endpoint(vs.address, vs.port)} "
                    f"(already defined by {chk.name(seen_key[key])})",
                )
            else:
                seen_key[key] = vs.path
        if isinstance(vs.name, str):
            if vs.name in seen_name:
                chk.error(
                    vs.path + ("name",),
                    f"duplicate virtual server name '{vs.name}' (already used by {chk.name(seen_name[vs.name])})",
                )
            else:
                seen_name[vs.name] = vs.path
    _check_fwmarks(chk, drafts, seen_key)


def _check_vip_devices(chk: _Checker, drafts: list[_VirtualDraft | _Invalid], public: str | None | _Invalid) -> None:
    """One interface per VIP: the director adds and announces a VIP on each device a service
    gives it (device, else public_interface)."""
    if not isinstance(public, str):
        return
    seen: dict[IPAddress, tuple[str, FieldPath, str]] = {}
    for vs in drafts:
        if isinstance(vs, _Invalid) or isinstance(vs.device, _Invalid):
            continue
        dev = vs.device or public
        said = vs.device or f"{public} (public_interface)"
        vips = [g.address for g in vs.groups if isinstance(g, PortGroup)] if vs.groups else [vs.address]
        for vip in dict.fromkeys(v for v in vips if not isinstance(v, _Invalid)):
            first_dev, first, first_said = seen.setdefault(vip, (dev, vs.path, said))
            if first_dev != dev:
                chk.error(vs.path + ("device",), f"VIP {vip} on {said}, but {chk.name(first)} puts it on "
                                                 f"{first_said}: a VIP is on one interface (lb would add and "
                                                 f"announce it on both)")
                break


def _check_own_addresses(chk: _Checker, drafts: list[_VirtualDraft | _Invalid],
                         nat_router: IPv4Interface | IPv6Interface | None, local_node: bool,
                         chosen: str | None = None) -> None:
    """The addresses the director holds (the VIPs, and nat_router where it is owned) are nobody
    else's: with the XDP data plane a real server or a sorry server at a VIP would have the
    director send the connections back to itself (kernel IPVS serves them locally, its local
    node: ``local_node``), and a nat_router at a VIP or at a real server's address would put one
    address on two hosts or two interfaces.  ``nat_router``: None when it is absent or not owned
    (direct routing without [ha]).  ``chosen``: the command line's --dataplane, said so, when it
    is not the file's."""
    vips: dict[IPAddress, FieldPath] = {}
    for vs in drafts:
        if isinstance(vs, _Invalid):
            continue
        addrs = [g.address for g in vs.groups if isinstance(g, PortGroup)] if vs.groups else [vs.address]
        for a in addrs:
            if not isinstance(a, _Invalid):
                vips.setdefault(a, vs.path)
    reals: dict[IPAddress, FieldPath] = {}
    for vs in drafts:
        if isinstance(vs, _Invalid):
            continue
        local = "kernel IPVS's local node: dataplane = \"ipvs\" only"
        if chosen is not None:
            local = f"kernel IPVS's local node: --dataplane ipvs only, and this is {chosen}"
        if isinstance(vs.sorry, tuple) and vs.sorry[0] in vips and not local_node:
            chk.error(vs.path + ("sorry_server",),
                      f"{vs.sorry[0]} is the VIP of {chk.name(vips[vs.sorry[0]])}, an address of this "
                      f"director: the sorry server must be another host (the XDP data plane would send "
                      f"the connections back to itself; {local})")
        for rs in vs.reals:
            if isinstance(rs, _Invalid) or isinstance(rs.address, _Invalid):
                continue
            if rs.address in vips:
                if not local_node:
                    chk.error(rs.path + ("address",),
                              f"{rs.address} is the VIP of {chk.name(vips[rs.address])}, an address of this "
                              f"director: a real server must be another host (the XDP data plane would send "
                              f"the connections back to itself; {local})")
                continue
            reals.setdefault(rs.address, rs.path)
    if nat_router is None:
        return
    gw = nat_router.ip
    if gw in vips:
        chk.error(("global", "nat_router"), f"{gw} is the VIP of {chk.name(vips[gw])}: the real servers' "
                                            f"gateway needs an address of its own")
    elif gw in reals:
        chk.error(("global", "nat_router"), f"{gw} is the address of {chk.name(reals[gw])}: the real "
                                            f"servers' gateway is the director's, not a real server's")


def _check_fwmarks(chk: _Checker, drafts: list[_VirtualDraft | _Invalid], services: dict) -> None:
    """Firewall-mark services: distinct marks; no port in two groups, nor in a group and an
    address/port service; at most FWM_RANGES_PER_VIP groups per VIP and protocol."""
    seen_mark: dict[int, tuple[FieldPath, IPAddress | _Invalid]] = {}
    ranges: dict[tuple[str, IPAddress], list[tuple[int, int, FieldPath]]] = {}
    for vs in drafts:
        if isinstance(vs, _Invalid) or not vs.fwmark:
            continue
        if isinstance(vs.fwmark, int):
            if vs.fwmark in seen_mark:
                first, addr = seen_mark[vs.fwmark]
                why = ""
                if not isinstance(addr, _Invalid) and not isinstance(vs.address, _Invalid) \
                        and addr.version != vs.address.version:
                    # ipvsadm -A -f 1 and -A -f 1 -6 are two services; lb keys a service by its mark
                    why = (f": IPVS keeps one service per mark and address family, lb one per mark "
                           f"(the IPv{addr.version} and IPv{vs.address.version} services need marks of their own)")
                chk.error(vs.path + ("fwmark",), f"duplicate fwmark {vs.fwmark} (already used by "
                                                 f"{chk.name(first)}){why}")
            else:
                seen_mark[vs.fwmark] = (vs.path, vs.address)
        for i, g in enumerate(vs.groups):
            if isinstance(g, _Invalid):
                continue
            path = vs.path + ("port_group", i)
            here = ranges.setdefault((g.protocol, g.address), [])
            clash = next((p for lo, hi, p in here if lo <= g.high and g.low <= hi), None)
            if clash is not None:
                chk.error(path + ("ports",), f"ports {g.low}-{g.high} of {g.protocol} {g.address} overlap "
                                             f"{chk.name(clash)}")
                continue
            taken = next((port for (proto, addr, port) in services
                          if proto == g.protocol and addr == g.address and g.low <= port <= g.high), None)
            if taken is not None:
                chk.error(path + ("ports",), f"port {taken} of {g.protocol} {g.address} is already a virtual "
                                             f"server of its own ({chk.name(services[(g.protocol, g.address, taken)])})")
                continue
            if len(here) >= FWM_RANGES_PER_VIP:
                chk.error(path, f"more than {FWM_RANGES_PER_VIP} port groups for {g.protocol} {g.address}")
                continue
            here.append((g.low, g.high, path))


def _check_counts(
    chk: _Checker,
    drafts: list[_VirtualDraft | _Invalid],
    services: int | None | _Invalid,
    per_service: int | None | _Invalid,
    total_limit: int | None | _Invalid,
) -> None:
    """Compare entry counts with the BPF map sizes; each issue points at the first entry that does not fit."""
    if isinstance(services, int) and len(drafts) > services:
        chk.error(
            ("virtual_server", services),
            f"too many virtual servers: {len(drafts)} defined but tables.services is {services}",
        )
    elif isinstance(services, int):
        # the firewall-mark services' port ranges are kept per (address, protocol), in a table of
        # tables.services entries too (lb_fwm_ranges): groups on many VIPs can outgrow it
        pairs: dict[tuple[str, IPAddress], FieldPath] = {}
        for vs in drafts:
            if isinstance(vs, _Invalid) or not vs.fwmark:
                continue
            for i, g in enumerate(vs.groups):
                if isinstance(g, PortGroup) and (g.protocol, g.address) not in pairs:
                    pairs[(g.protocol, g.address)] = vs.path + ("port_group", i)
                    if len(pairs) == services + 1:
                        chk.error(vs.path + ("port_group", i, "address"),
                                  f"too many (address, protocol) pairs in the port groups of firewall-mark "
                                  f"services: more than tables.services ({services}), which also sizes their "
                                  f"table of port ranges")
    total = sum(len(vs.reals) for vs in drafts if not isinstance(vs, _Invalid))
    running = 0
    for i, vs in enumerate(drafts):
        if isinstance(vs, _Invalid):
            continue
        n = len(vs.reals)
        label = vs.name if isinstance(vs.name, str) else chk.name(vs.path)
        if isinstance(per_service, int) and n > per_service:
            chk.error(
                ("virtual_server", i, "real_server", per_service),
                f"too many real servers in virtual server '{label}': {n} defined "
                f"but tables.reals_per_service is {per_service}",
            )
        elif isinstance(per_service, int) and n == per_service and isinstance(vs.sorry, tuple):
            # the sorry server takes a slot of the list while the dead servers drain (their
            # connections end): a full list cannot switch to it until one has drained
            chk.warn(
                vs.path + ("sorry_server",),
                f"virtual server '{label}' has {n} real servers, tables.reals_per_service: its sorry "
                f"server needs a slot more to take over while they drain (raise tables.reals_per_service)",
            )
        if isinstance(total_limit, int) and running <= total_limit < running + n:
            chk.error(
                ("virtual_server", i, "real_server", total_limit - running),
                f"too many real servers in total: {total} defined but tables.real_servers is {total_limit}",
            )
        running += n


def _check_amemthresh(chk: _Checker, de: _Table | _Invalid, amemthresh: int | None | _Invalid,
                      tables: dict[str, int | None | _Invalid]) -> None:
    """amemthresh counts free entries of the embryonic table: at or above its size the automatic
    defenses would never disengage."""
    conns, emb = tables.get("connections"), tables.get("embryonic")
    if isinstance(de, _Invalid) or not isinstance(amemthresh, int) or not isinstance(conns, int) \
            or not isinstance(emb, int):
        return
    size = embryonic_size(conns, emb)
    if amemthresh and amemthresh >= size:
        chk.error(de.at("amemthresh"), f"must be below the embryonic table's size ({size} entries: "
                  f"tables.embryonic, or a quarter of tables.connections), got {amemthresh}")


def _warn_ipvs_no_effect(chk: _Checker, top: _Table, drafts: list[_VirtualDraft | _Invalid],
                         chosen: str | None = None) -> None:
    """dataplane = "ipvs" (or the command line's --dataplane ipvs: ``chosen``): the keys only the XDP
    data plane reads, written in the file, are warned of (kernel IPVS has its own sizes, limits and
    table sizes, and no way to restart a server's counts); "auto" may run either, so it is not."""
    said = "no effect with " + (chosen or 'dataplane = "ipvs"')
    for table, keys, why in (
            ("tables", TABLES_KEYS, "kernel IPVS sizes its own connection table (the ip_vs module's conn_tab_bits)"),
            ("defense", ("amemthresh",), "kernel IPVS engages its defenses by its own free memory (its "
                                         "amemthresh sysctl)"),
            ("defense", ("icmp_msgs_per_sec", "icmp_msgs_burst"), "the kernel's own ICMP rate limit "
                                                                   "(net.ipv4.icmp_msgs_per_sec) applies")):
        t = top.data.get(table)
        for key in keys:
            if isinstance(t, dict) and key in t:
                chk.warn((table, key), f"{said}: {why}")
    for vs in drafts:
        if isinstance(vs, _Invalid):
            continue
        data = top.data["virtual_server"][vs.path[1]]
        if "mh_size" in data and isinstance(vs.mh_size, int) and vs.mh_size != DEFAULT_MH_SIZE:
            chk.warn(vs.path + ("mh_size",), f"{said}: kernel IPVS's mh uses its compiled-in table size "
                                             f"(CONFIG_IP_VS_MH_TAB_INDEX, {DEFAULT_MH_SIZE} on most kernels)")
        if vs.quiesce_server is True:
            chk.warn(vs.path + ("quiesce_server",), f"{said}: kernel IPVS cannot restart a server's "
                                                    f"connection counts")


MEMINFO: Final = "/proc/meminfo"


def mem_total() -> int | None:
    """This machine's memory in bytes (MemTotal), None when /proc/meminfo does not say."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


PROC_CGROUP: Final = "/proc/self/cgroup"
CGROUP_ROOT: Final = "/sys/fs/cgroup"
NO_CGROUP_LIMIT: Final = 1 << 62


def cgroup_memory_limit(proc_cgroup: str | None = None, root: str | None = None) -> tuple[int, str] | None:
    """The smallest memory limit of the cgroups this process is in, and the file that sets it:
    cgroup v2's ``memory.max`` (``max``: none) of its cgroup and of each parent up to the root,
    under ``root`` (/sys/fs/cgroup); cgroup v1's ``memory.limit_in_bytes`` alike, under
    ``root``/memory.  A container's or a unit's MemoryMax= is one of these: tables that fit the
    host but not it are killed by the OOM killer as they fill.  A cgroup whose directory is not
    there is skipped (a container without its own cgroup namespace sees its cgroup at the root).
    None: no limit, or /proc/self/cgroup unreadable.  ``proc_cgroup`` and ``root`` default to
    PROC_CGROUP and CGROUP_ROOT, read at each call."""
    root = root or CGROUP_ROOT
    try:
        with open(proc_cgroup or PROC_CGROUP) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        if "." in parts or ".." in parts:
            continue
        for n in range(len(parts), -1, -1):
            file = os.path.join(base, *parts[:n], name)
            try:
                with open(file) as f:
                    text = f.read(64).strip()
            except OSError:
                continue
            # v1's "no limit" is the page counter's maximum (9223372036854771712 with 4 KiB pages)
            if text.isdigit() and int(text) < NO_CGROUP_LIMIT and (best is None or int(text) < best[0]):
                best = (int(text), file)
    return best


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _check_tables_memory(chk: _Checker, t: _Table | _Invalid, tables: dict[str, int | None | _Invalid],
                         dataplane: str | None | _Invalid, chosen: str | None = None) -> None:
    """The XDP data plane preallocates its tables: sizes this machine's memory cannot hold would
    stop `lb run` at its map creation, after the compile, with no line of the file to fix; past
    half of it, a restart that changes [tables] (the old maps kept beside the new ones while their
    entries move) may not find room.  The memory is the machine's (MemTotal), or the memory
    cgroup's limit over this process when that is less (a container: the maps are created within
    it and the OOM killer ends the load as they fill).  Kernel IPVS (dataplane = "ipvs") has no
    such tables."""
    sizes = {k: v for k, v in tables.items() if isinstance(v, int)}
    if isinstance(t, _Invalid) or dataplane == "ipvs" or len(sizes) != len(tables):
        return
    need = tables_memory(**sizes, cpus=os.cpu_count() or 1)
    total = mem_total()
    has, half = f"this machine has ({_gib(total or 0)})", f"this machine's {_gib(total or 0)}"
    limit = cgroup_memory_limit()
    if limit is not None and (total is None or limit[0] < total):
        # a container's, or the unit's MemoryMax=: the kernel's OOM killer holds lb to it
        total = limit[0]
        has = f"this process's memory cgroup allows ({_gib(total)}: {limit[1]})"
        half = f"the {_gib(total)} this process's memory cgroup allows ({limit[1]})"
    if total is None or need <= total // 2:
        return
    # name the key that asks for the most (the connections, unless set apart)
    conns = sizes["connections"]
    parts = {"connections": conns * CONN4_ENTRY_BYTES,
             "connections_ipv6": ipv6_connections_size(conns, sizes["connections_ipv6"]) * CONN6_ENTRY_BYTES,
             "embryonic": embryonic_size(conns, sizes["embryonic"]) * (CONN6_ENTRY_BYTES + PERSIST_EMBRYO_ENTRY_BYTES)}
    given = [k for k in parts if k in t.data] or ["connections"]
    key = max(given, key=lambda k: parts[k])
    said = f"the [tables] sizes need about {_gib(need)} of memory for the data plane's tables"
    lower = f"lower {key} (connections_ipv6 and embryonic default to a quarter of connections)"
    if need > total and dataplane == "auto":
        # auto gives way to kernel IPVS when the XDP data plane cannot start (Engine._fall_back)
        auto = chosen or 'dataplane "auto"'
        chk.warn(t.at(key), f"{said}, more than {has}: {auto} will run kernel IPVS; {lower}")
    elif need > total:
        chk.error(t.at(key), f"{said}, more than {has}: {lower}")
    else:
        chk.warn(t.at(key), f"{said}, more than half of {half}: a restart that changes [tables] holds the "
                            f"old tables beside the new ones while it moves their entries")


# --- driver ------------------------------------------------------------------------


# HA's defaults, as the model declares them (HA has required fields: no HA() to read them from)
_HA_DEFAULTS: Final = {f.name: f.default for f in dataclasses.fields(HA) if f.default is not dataclasses.MISSING}


def _check_ha(top: _Table, base: Path | None, user: str) -> HA | None | _Invalid:
    """[ha]: two directors (pulse).  Absent: one director, always active.  ``user``: the global
    script_user its notify programs default to."""
    if "ha" not in top.data:
        return None
    h = top.table("ha")
    if isinstance(h, _Invalid):
        return h
    keep = _Keep()

    def opt_addr(key: str):
        if key not in h.data:
            return None
        return keep(h.address(key))

    primary = keep(h.address("primary"))
    backup = keep(h.address("backup"))
    primary_private = opt_addr("primary_private")
    backup_private = opt_addr("backup_private")
    if not keep.bad and primary == backup:
        keep(h.chk.error(h.at("backup"), "must differ from primary"))
    if (primary_private is None) != (backup_private is None):
        keep(h.chk.error(h.at("backup_private" if primary_private is not None else "primary_private"),
                         "primary_private and backup_private go together (the private channel)"))
    # each channel's two ends talk over one socket of one family: an IPv4 end cannot reach an
    # IPv6 one (both directors would hear nothing and both go active)
    for a, b, near, far in ((primary, backup, "primary", "backup"),
                            (primary_private, backup_private, "primary_private", "backup_private")):
        if isinstance(a, (IPv4Address, IPv6Address)) and isinstance(b, (IPv4Address, IPv6Address)) \
                and a.version != b.version:
            keep(h.chk.error(h.at(far), f"must be of {near}'s address family (IPv{a.version} {a}, IPv{b.version} {b}): "
                                        f"the two ends of one channel"))
    # four addresses, each one director's on one channel: a private end that is a public one
    # makes a director hold both roles' addresses (which node it is comes from them) or binds
    # one address twice
    publics = {primary: "primary", backup: "backup"}
    for key, addr in (("primary_private", primary_private), ("backup_private", backup_private)):
        if isinstance(addr, (IPv4Address, IPv6Address)) and addr in publics:
            keep(h.chk.error(h.at(key), f"{addr} is already {publics[addr]}: the private channel's ends are "
                                        f"other addresses of the directors (those of the private network)"))
    if primary_private is not None and primary_private == backup_private:
        keep(h.chk.error(h.at("backup_private"), "must differ from primary_private"))
    key_file = keep(h.string("key_file", required=True))
    if isinstance(key_file, str):
        if not key_file:
            key_file = keep(h.chk.error(h.at("key_file"), "must name the file holding the shared key"))
        elif "\0" in key_file:
            key_file = keep(h.chk.error(h.at("key_file"), f"{key_file!r}: a file name cannot hold a NUL character"))
        else:
            kf = Path(key_file)
            if not kf.is_absolute() and base is not None:
                kf = base.parent / kf
            key_file = kf
    d = _HA_DEFAULTS
    port = keep(h.integer("heartbeat_port", PORT_RANGE, default=d["heartbeat_port"]))
    sync_port = keep(h.integer("sync_port", PORT_RANGE))
    if sync_port is None and isinstance(port, int):
        if port == PORT_RANGE[1]:
            sync_port = keep(h.chk.error(h.at("heartbeat_port"), f"{port} leaves no port for the default "
                                                                 f"sync_port (heartbeat_port + 1): set sync_port"))
        else:
            sync_port = port + 1
    elif isinstance(sync_port, int) and sync_port == port:
        sync_port = keep(h.chk.error(h.at("sync_port"), f"must differ from heartbeat_port ({port}): "
                                                        f"heartbeats have a socket of their own"))
    keepalive = keep(_seconds(h, "keepalive", d["keepalive"]))
    deadtime = keep(_seconds(h, "deadtime", d["deadtime"]))
    if isinstance(keepalive, float) and keepalive < 0.01:
        keepalive = keep(h.chk.error(h.at("keepalive"), "must be at least 0.01 seconds"))
    if isinstance(keepalive, float) and isinstance(deadtime, float) and deadtime < 2 * keepalive:
        keep(h.chk.error(h.at("deadtime"), f"must be at least twice keepalive ({2 * keepalive:g} s), got {deadtime:g}"))
    elif isinstance(keepalive, float) and isinstance(deadtime, float) and deadtime < 3 * keepalive * (1 - 1e-9):
        # allowed (a fast failover on a quiet link), but one heartbeat lost plus a little jitter
        # is then a failover with the peer alive: two actives for a keepalive, the VIPs moved
        # twice (keepalived's master-down interval is 3 x advert_int plus skew)
        h.chk.warn(h.at("deadtime"), f"{deadtime:g} s is less than 3 x keepalive ({3 * keepalive:g} s): one lost "
                                     f"heartbeat and a little delay make the backup take over from a live "
                                     f"active (keepalived waits 3 advert intervals); {3 * keepalive:g} or more "
                                     f"is safer")
    garp_count = keep(h.integer("garp_count", (0, 100), default=d["garp_count"]))
    sync_rate = keep(h.integer("sync_rate", (100, 10_000_000), default=d["sync_rate"]))
    values = {key: keep(h.boolean(key, d[key])) for key in ("preempt", "monitor_links", "sync")}
    values.update({key: keep(_seconds(h, key, d[key]))
                   for key in ("preempt_delay", "garp_interval", "garp_refresh", "sync_interval", "max_skew")})
    if values["preempt"] is False and isinstance(values["preempt_delay"], float) and values["preempt_delay"] > 0:
        h.chk.warn(h.at("preempt_delay"), "no effect without preempt (the primary never takes the addresses back "
                                          "from a live active)")
    for key in ("sync_interval", "max_skew"):
        if isinstance(values[key], float) and values[key] <= 0:
            values[key] = keep(h.chk.error(h.at(key), "must be more than 0 seconds"))
    refresh = values["garp_refresh"]
    if isinstance(refresh, float) and 0 < refresh < 1:
        # each refresh is a broadcast frame per address on the LAN, sent back to back at 0.01
        # (keepalived's garp_master_refresh is whole seconds too)
        values["garp_refresh"] = keep(h.chk.error(h.at("garp_refresh"), f"must be 0 (never) or at least 1 second, "
                                                                          f"got {refresh:g}"))
    script_user = keep(_script_user(h, user))
    notify = h.data.get("notify", [])
    if isinstance(notify, str):
        notify = [notify]
    if not isinstance(notify, list) or not all(isinstance(n, str) and n for n in notify):
        keep(h.chk.error(h.at("notify"), "expected a program path or a list of them"))
        notify = []
    for n in notify:  # pulse runs each as argv [PROG, NEW, OLD, INSTANCE] in /: no arguments of its own
        if not n.startswith("/") or any(ch.isspace() or not ch.isprintable() for ch in n):
            keep(h.chk.error(h.at("notify"), f"{n!r}: expected a program's absolute path without spaces (it runs "
                                             f"as PROG NEW_ROLE OLD_ROLE INSTANCE, no shell): put arguments "
                                             f"in a script"))
            break
    if keep.bad:
        return INVALID
    return HA(primary=primary, backup=backup, key_file=key_file, primary_private=primary_private,
              backup_private=backup_private, heartbeat_port=port, sync_port=sync_port, keepalive=keepalive,
              deadtime=deadtime, garp_count=garp_count, sync_rate=sync_rate, notify=tuple(notify),
              script_user=script_user, **values)


def _check_vips_not_heartbeat_addresses(chk: _Checker, drafts: list[_VirtualDraft | _Invalid], ha: HA,
                                        nat_router: IPv4Interface | IPv6Interface | None = None) -> None:
    """A VIP moves to whichever director is active, and so does nat_router (with [ha] it is
    owned whatever the network); a heartbeat address is a director's own."""
    own = {ha.primary: "primary", ha.backup: "backup", ha.primary_private: "primary_private",
           ha.backup_private: "backup_private"}
    if nat_router is not None and nat_router.ip in own:
        chk.error(("global", "nat_router"), f"{nat_router.ip} is [ha] {own[nat_router.ip]}, a director's own "
                                            f"address: nat_router moves to the active director, so it cannot be "
                                            f"one of theirs")
    for vs in drafts:
        if not isinstance(vs, _Invalid) and isinstance(vs.address, (IPv4Address, IPv6Address)) and vs.address in own:
            chk.error(vs.path + ("address",), f"is [ha] {own[vs.address]}, a director's own address: a VIP "
                                              f"moves to the active director, so it cannot be one of theirs")


def _check_web(top: _Table, base: Path | None) -> Web | _Invalid:
    """[web]: the web console.  Absent: disabled.  Without password_file: None, which means
    /etc/lb/<instance>.passwd (Web.password_path).  Relative files are relative to the config."""
    if "web" not in top.data:
        return Web()
    w = top.table("web")
    if isinstance(w, _Invalid):
        return w
    keep = _Keep()
    d = Web()
    enabled, address, port, keep.bad = _enabled_listen(w, d)
    files: dict[str, Path | None] = {}
    for key, what in (("password_file", "the console's password hash"), ("tls_cert", "the TLS certificate (PEM)"),
                      ("tls_key", "the TLS certificate's private key (PEM)")):
        value = keep(w.string(key))
        files[key] = None
        if isinstance(value, str):
            if not value:
                keep(w.chk.error(w.at(key), f"must name the file holding {what}"))
            elif "\0" in value:     # no file's name: lb web would stop at start on the open's ValueError
                keep(w.chk.error(w.at(key), f"{value!r}: a file name cannot hold a NUL character"))
            else:
                f = Path(value)
                files[key] = base.parent / f if not f.is_absolute() and base is not None else f
    if ("tls_cert" in w.data) != ("tls_key" in w.data):
        given = "tls_cert" if "tls_cert" in w.data else "tls_key"
        keep(w.chk.error(w.at(given), "tls_cert and tls_key go together (the certificate and its private key)"))
    hosts = keep(_string_list(w, "allowed_hosts", _host_problem))
    proxies = keep(_string_list(w, "trusted_proxies", _network_problem))
    # its own range, past _seconds' default one day (a week was refused as "between 0 and 86400")
    lifetime = keep(_seconds(w, "session_lifetime", d.session_lifetime, SESSION_LIFETIME_RANGE))
    hsts = keep(w.boolean("hsts", d.hsts))
    if keep.bad:
        return INVALID
    if enabled is True and not address.is_loopback and files["tls_cert"] is None and not proxies:
        w.chk.warn(w.at("listen" if "listen" in w.data else "enabled"),
                   f"the console listens on {_endpoint(address, port)}, beyond this host, over plain HTTP: its "
                   f"password and session cookie would cross the network in clear; set tls_cert and tls_key, "
                   f"or listen on 127.0.0.1 behind a TLS proxy (trusted_proxies)")
    return Web(enabled=enabled, address=address, port=port, password_file=files["password_file"],
               tls_cert=files["tls_cert"], tls_key=files["tls_key"],
               allowed_hosts=tuple(h.lower().rstrip(".") for h in hosts),
               trusted_proxies=tuple(ipaddress.ip_network(p, strict=False) for p in proxies),
               session_lifetime=lifetime, hsts=hsts)


_HOST_RE: Final = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


def _host_problem(text: str) -> str | None:
    """Why ``text`` is not a host name or an IP address as a browser sends it in Host."""
    try:
        ipaddress.ip_address(text.strip("[]"))
        return None
    except ValueError:
        pass
    if not _HOST_RE.fullmatch(text):
        return f"'{text}' is not a host name (letters, digits, '-' and '.') or an IP address"
    return None


def _network_problem(text: str) -> str | None:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"'{text}' is not an IP address or network (e.g. \"198.18.0.5\" or \"10.0.0.0/8\")"
    return None


def _string_list(t: _Table, key: str, problem: Callable[[str], str | None]) -> tuple[str, ...] | _Invalid:
    """An optional array of strings (a single string is a list of one), each checked by ``problem``."""
    value = t.data.get(key, _ABSENT)
    if value is _ABSENT:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return t.chk.error(t.at(key), f"expected an array of strings, got {_describe(value)}")
    if len(value) > MAX_LIST:
        return t.chk.error(t.at(key), f"more than {MAX_LIST} entries")
    for i, v in enumerate(value):
        why = problem(v)
        if why:
            return t.chk.error(t.at(key) + ((i,) if isinstance(t.data.get(key), list) else ()), why)
    return tuple(value)


_GROUP_RE: Final = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")


def _group_problem(name: str) -> str | None:
    if not _GROUP_RE.fullmatch(name):
        return (f"'{name}' is not a group name (lower case letters, digits, '_', '-' and '.', "
                f"at most 32 characters)")
    return None


def _check_control(top: _Table) -> Control | _Invalid:
    """[control]: the control socket's groups.  Absent: root only."""
    if "control" not in top.data:
        return Control()
    c = top.table("control")
    if isinstance(c, _Invalid):
        return c
    keep = _Keep()
    admin, read = (keep(c._text(key, _group_problem, False)) for key in CONTROL_KEYS)
    if not keep.bad and admin is not None and admin == read:
        keep(c.chk.error(c.at("read_group"), "must differ from admin_group (whose members may already read)"))
    return INVALID if keep.bad else Control(admin_group=admin, read_group=read)


# --- [bgp]: route announcement and active-active scale-out (lb.bgp) ----------------------------

AS_RANGE: Final = (1, 4294967295)  # 4-byte AS numbers (RFC 6793); 0 is reserved
MED_RANGE: Final = (0, 4294967295)
HOLD_TIME_RANGE: Final = (3, 65535)  # RFC 4271: 0 (no keepalives, no failure detection) or >= 3
LEASE_RANGE: Final = (2.0, 3600.0)  # lb renews the lease every second
DRAIN_RANGE: Final = (0.0, 20.0)  # well within `lb stop`'s wait (STOP_WAIT_S)
SETTLE_RANGE: Final = (0.0, 600.0)
_COMMUNITY_RE: Final = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")


def _community_problem(text: str) -> str | None:
    if text in BGP_WELL_KNOWN_COMMUNITIES:
        return None
    m = _COMMUNITY_RE.fullmatch(text)
    if m is None or int(m.group(1)) > 65535 or int(m.group(2)) > 65535:
        return (f"'{text}' is not a BGP community: ASN:VALUE with both 0..65535 (e.g. \"65000:100\"), "
                f"or one of {', '.join(BGP_WELL_KNOWN_COMMUNITIES)}")
    return None


def _check_bgp_neighbor(n: _Table) -> BgpNeighbor | _Invalid:
    address = n.address("address")
    peer_as = n.integer("peer_as", AS_RANGE, required=True)
    local: IPAddress | None | _Invalid = None
    if "local_address" in n.data:
        local = n.address("local_address")
        if not isinstance(local, _Invalid) and not isinstance(address, _Invalid) and local.version != address.version:
            local = n.chk.error(n.at("local_address"), f"{local} is IPv{local.version} but the neighbor "
                                                       f"{address} is IPv{address.version}")
    if isinstance(address, _Invalid) or isinstance(local, _Invalid) or not isinstance(peer_as, int):
        return INVALID
    return BgpNeighbor(address, peer_as, local)


def _check_bgp_vip(v: _Table, vips: set[IPAddress]) -> BgpVip | _Invalid:
    address = v.address("address")
    if not isinstance(address, _Invalid) and vips and address not in vips:
        address = v.chk.error(v.at("address"), f"{address} is not the address of any virtual_server "
                                               f"(VIPs: {', '.join(str(a) for a in sorted(vips, key=str))})")
    med = v.integer("med", MED_RANGE)
    raw = v.data.get("communities", [])
    communities: tuple[str, ...] | _Invalid = ()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        communities = v.chk.error(v.at("communities"), f"expected an array of strings, e.g. [\"65000:100\"], "
                                                       f"got {_describe(raw)}")
    else:
        for c in raw:
            why = _community_problem(c)
            if why:
                communities = v.chk.error(v.at("communities"), why)
                break
        else:
            communities = tuple(dict.fromkeys(raw))
    if isinstance(address, _Invalid) or isinstance(med, _Invalid) or isinstance(communities, _Invalid):
        return INVALID
    return BgpVip(address, med, communities)


def _check_bgp(top: _Table, drafts: list[_VirtualDraft | _Invalid], network: str | _Invalid,
               dataplane: str | None | _Invalid, chosen: str | None = None) -> Bgp | None | _Invalid:
    """[bgp]: the VIPs announced through ExaBGP.  Absent: no announcement.  mode = "active-active"
    makes every director of the group forward, which needs a scheduler every director agrees on,
    replies that do not come back through a director, and no pulse roles."""
    if "bgp" not in top.data:
        return None
    b = top.table("bgp")
    if isinstance(b, _Invalid):
        return b
    chk = b.chk
    keep = _Keep()
    mode = keep(b.choice("mode", BGP_MODES, DEFAULT_BGP_MODE, "mode"))
    local_as = keep(b.integer("local_as", AS_RANGE, required=True))
    router_id = None
    if "router_id" in b.data:
        router_id = keep(b.address("router_id"))
        if isinstance(router_id, IPv6Address):
            router_id = keep(chk.error(b.at("router_id"), f"a BGP router id is a dotted IPv4 address, got {router_id}"))
    d = Bgp(local_as=1, neighbors=())
    hold_time = keep(b.integer("hold_time", HOLD_TIME_RANGE, default=d.hold_time))

    def seconds(key: str, default: float, rng: tuple[float, float]) -> float | _Invalid:
        """_seconds, with this key's own range in the message (beyond _seconds' 0..86400, or NaN,
        it named that range instead: a lease of 100000 s was told 0..86400, 5000 then 2..3600)"""
        value, (lo, hi) = b.data.get(key), rng
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not lo <= value <= hi:
            return chk.error(b.at(key), f"must be between {lo:g} and {hi:g} seconds, got {value:g}")
        return _seconds(b, key, default)

    lease = keep(seconds("lease", d.lease, LEASE_RANGE))
    drain = keep(seconds("drain", d.drain, DRAIN_RANGE))
    settle = keep(seconds("settle", d.settle, SETTLE_RANGE))
    if not b.data.get("neighbor"):
        keep(chk.error(b.at("neighbor"), "at least one [[bgp.neighbor]] is required (the router: address, peer_as)"))
    vs_ok = [vs for vs in drafts if not isinstance(vs, _Invalid)]
    known = {a for vs in vs_ok for a in ([g.address for g in vs.groups if isinstance(g, PortGroup)]
                                         if vs.groups else [vs.address]) if not isinstance(a, _Invalid)}

    def unique(key: str, what: str, check: Callable[[_Table], Any]) -> list:
        """The valid entries of [[bgp.KEY]], each address once."""
        out, seen = [], {}
        for i, t in enumerate(b.tables(key)):
            item = keep(t if isinstance(t, _Invalid) else check(t))
            if isinstance(item, _Invalid):
                continue
            if item.address in seen:
                keep(chk.error(b.at(key) + (i, "address"),
                               f"{what} {item.address} is listed twice (also {key}[{seen[item.address]}])"))
            seen.setdefault(item.address, i)
            out.append(item)
        return out

    neighbors = unique("neighbor", "neighbor", _check_bgp_neighbor)
    vips = unique("vip", "VIP", lambda t: _check_bgp_vip(t, known))
    # each session carries its own address family (lb's ExaBGP configuration): a VIP of a family
    # no neighbor has would be "announced" and reach no router
    families = {n.address.version for n in neighbors}
    if router_id is None and neighbors and 4 not in families:
        # the default is our address toward an IPv4 neighbor (lb.bgp.announcer): with none, lb
        # run would stop at start, after attaching its programs
        keep(chk.error(b.at("router_id"), "required when no [[bgp.neighbor]] is IPv4 (a BGP router id is a "
                                          "dotted IPv4 address, by default ours toward the first IPv4 "
                                          "neighbor)"))
    if neighbors:
        for vs in vs_ok:
            addrs = [g.address for g in vs.groups if isinstance(g, PortGroup)] if vs.groups else [vs.address]
            for a in addrs:
                if isinstance(a, (IPv4Address, IPv6Address)) and a.version not in families:
                    keep(chk.error(vs.path + ("address",) if not vs.groups else vs.path,
                                   f"VIP {a} is IPv{a.version} and no [[bgp.neighbor]] is: add an IPv{a.version} "
                                   f"neighbor (each BGP session carries its own address family)"))
                    break
    if mode == "active-active":
        why = "every director of an active-active group forwards"
        if "ha" in top.data:
            keep(chk.error(b.at("mode"), f'[ha] (pulse: one active director, one backup) and [bgp] mode = '
                                         f'"active-active" ({why}) exclude each other: drop [ha], or use '
                                         f'mode = "announce" to announce from the active director only'))
        if network == "nat":
            keep(chk.error(("global", "network"), 'NAT cannot run with [bgp] mode = "active-active": a real '
                                                  "server's replies go to its one gateway, which does not hold "
                                                  'the connections the other directors made; use "direct" '
                                                  'or "tunnel"'))
        why_xdp = ('[bgp] mode = "active-active" needs the XDP data plane (it schedules mid-flow packets '
                   "after an ECMP change, as IPVS's sloppy_tcp, which lb does not set for kernel IPVS)")
        if dataplane in ("ipvs", "auto") and chosen is not None:
            # the command line's choice: the file's dataplane line is not what to fix
            keep(chk.error(b.at("mode"), f'{why_xdp}, and this is {chosen}: use --dataplane xdp, '
                                         f'or mode = "announce"'))
        elif dataplane in ("ipvs", "auto"):
            keep(chk.error(("global", "dataplane"), f'{why_xdp}; got "{dataplane}"'))
        for vs in vs_ok:
            if isinstance(vs.scheduler, str) and vs.scheduler not in HASH_SCHEDULERS:
                keep(chk.error(vs.path + ("scheduler",),
                               f"scheduler '{vs.scheduler}' picks by this director's own state, so another "
                               f"director would send the same flow elsewhere after an ECMP change; with [bgp] "
                               f'mode = "active-active" use mh (recommended: Maglev hashing, fewest flows '
                               f"move when a real server comes or goes), sh or dh"))
    if keep.bad or not isinstance(local_as, int):
        return INVALID
    return Bgp(local_as=local_as, neighbors=tuple(neighbors), mode=mode, router_id=router_id,
               hold_time=_valid_int(hold_time), lease=lease, drain=drain, settle=settle, vips=tuple(vips))


def _enabled_listen(t: _Table, default) -> tuple[bool | _Invalid, IPAddress, int, bool]:
    """The ``enabled`` and ``listen`` keys of a table for a server of lb's ([web], [metrics]):
    (enabled, address, port, bad), ``default``'s where a key is absent."""
    enabled = t.boolean("enabled", default.enabled)
    bad = isinstance(enabled, _Invalid)
    address: IPAddress = default.address
    port = default.port
    listen = t.string("listen")
    if isinstance(listen, _Invalid):
        bad = True
    elif isinstance(listen, str):
        parsed = _parse_listen(listen)
        if isinstance(parsed, str):
            t.chk.error(t.at("listen"), parsed)
            bad = True
        else:
            address, port = parsed
    return enabled, address, port, bad


def _check_metrics(top: _Table, web: Web | _Invalid) -> Metrics | _Invalid:
    """[metrics]: the Prometheus endpoint.  Absent: off."""
    if "metrics" not in top.data:
        return Metrics()
    m = top.table("metrics")
    if isinstance(m, _Invalid):
        return m
    enabled, address, port, bad = _enabled_listen(m, Metrics())
    if bad:
        return INVALID
    # the console (`lb web`) and the daemon's endpoint cannot both listen there: one would not start
    if enabled is True and isinstance(web, Web) and web.enabled and web.port == port and (
            web.address == address or web.address.is_unspecified or address.is_unspecified):
        m.chk.error(m.at("listen" if "listen" in m.data else "enabled"),
                    f"[web] listens on {_endpoint(web.address, web.port)} already: give [metrics] another port")
        return INVALID
    # every address at once (a management address of its own is the documented setup: not warned of)
    if enabled is True and address.is_unspecified:
        m.chk.warn(m.at("listen" if "listen" in m.data else "enabled"),
                   f"the endpoint listens on {_endpoint(address, port)}, every address of this host, and has "
                   f"no authentication: listen on the management address and open it only to the Prometheus "
                   f"server (a firewall rule), or on 127.0.0.1")
    return Metrics(enabled=_valid(enabled), address=address, port=port)


def _parse_listen(text: str) -> tuple[IPAddress, int] | str:
    """ "ADDRESS:PORT" or "[IPv6]:PORT" -> (address, port); a message when it is not one."""
    usage = f'expected ADDRESS:PORT (e.g. "127.0.0.1:8080", or "[::1]:8080" for IPv6), got "{text}"'
    brackets = f'an IPv6 address goes in brackets, e.g. "[::1]:8080", got "{text}"'
    parts = split_endpoint(text)
    if parts is None or not parts[0]:
        return usage
    host, port_text, bracketed = parts
    if port_text is None:
        return brackets if ":" in host and not bracketed else usage
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host and not bracketed:
            return brackets
        return f"'{host}' is not an IP address (lb listens on an address, not a host name)"
    if addr.version == 6 and not bracketed:
        return brackets
    if addr.version == 4 and bracketed:
        return usage
    if isinstance(addr, IPv6Address) and addr.scope_id is not None:
        return f"{addr} carries a zone (%{addr.scope_id}): link-local addresses are not supported"
    if addr.is_multicast:
        return f"{addr} is a multicast address"
    port = parse_port(port_text)
    if port is None:
        return f"port must be between {PORT_RANGE[0]} and {PORT_RANGE[1]}, got \"{port_text}\""
    return addr, port


def _syntax_issue(text: str, display: str, exc: tomllib.TOMLDecodeError) -> ConfigIssue:
    message = str(exc)
    m = re.search(r"\(at line (\d+), column \d+\)", message)
    if m:
        line: int | None = int(m.group(1))
    elif "end of document" in message:
        line = text.rstrip().count("\n") + 1  # the last line with content
    else:
        line = None
    return ConfigIssue(display, line, "", f"TOML syntax error: {message}")


def _load_text(text: str, display: str, path: Path | None, *, dataplane: str | None = None) -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_issue(text, display, e)]) from None
    except (RecursionError, ValueError) as e:
        # tomllib recurses into nested arrays and converts integers of any length (Python refuses
        # more than 4300 digits): name the line that asked for it
        raise ConfigError([_limit_issue(text, display, e)]) from None
    return validate(doc, display, TomlPositions(text), path, dataplane=dataplane)


def _limit_issue(text: str, display: str, exc: Exception) -> ConfigIssue:
    loc = Locator(text)
    if isinstance(exc, RecursionError):
        return ConfigIssue(display, loc.deepest_line, "",
                           f"arrays or inline tables nested too deeply (at most {MAX_NESTING} levels)")
    return ConfigIssue(display, loc.longest_word_line, "", int_too_large(MAX_INT_DIGITS))


def _check_sizes(chk: _Checker, doc: dict[str, Any]) -> None:
    """Report strings, keys and integers beyond the limits, and nesting deeper than MAX_NESTING
    (before any other check, so that no message quotes such a value)."""
    stack: list[tuple[FieldPath, Any, int]] = [((), doc, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                chk.error(path, f"string longer than {MAX_STRING} characters")
        elif isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 10 ** MAX_INT_DIGITS:
                chk.error(path, int_too_large(MAX_INT_DIGITS))
        elif isinstance(value, (dict, list)):
            if depth >= MAX_NESTING:
                chk.error(path, f"tables and arrays nested too deeply (at most {MAX_NESTING} levels)")
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and len(key) > MAX_KEY:
                    chk.error(path, f"a key is longer than {MAX_KEY} characters")
                else:
                    stack.append((path + (key,), item, depth + 1))


def validate(doc: dict[str, Any], display: str, positions: Positions, path: Path | None = None,
             warnings: Sequence[ConfigIssue] = (), *, dataplane: str | None = None) -> Config:
    """Check a document shaped as tomllib returns it and build the Config; ConfigError lists every
    problem, each at the line and field ``positions`` gives for its path.  ``path``: the file
    (Config.path; relative key_file and password_file are relative to it).  ``warnings``: what the
    reader that built the document accepted without carrying it out (Config.warnings).
    ``dataplane``: the data plane that runs it when not the file's (`lb run --dataplane`)."""
    run_dataplane = check_dataplane(dataplane)
    chk = _Checker(display, positions)
    _check_sizes(chk, doc)
    if chk.issues:
        raise ConfigError(sorted(chk.issues, key=lambda i: i.line or 0))
    top = _Table(chk, (), doc)

    # [global] is required only through its required key, public_interface:
    # a missing section then yields the one useful message.
    g = top.table("global")
    if isinstance(g, _Invalid):
        g = _Table(chk, ("global",), {}, broken=True)
    instance = g.string("instance")
    if isinstance(instance, str) and not INSTANCE_RE.fullmatch(instance):
        instance = chk.error(
            g.at("instance"),
            f"invalid instance name '{instance}': must match [a-z0-9][a-z0-9_-]{{0,31}} "
            f"(it names the pin directory /sys/fs/bpf/lb/<instance>)",
        )
    serial_no = g.integer("serial_no", SERIAL_RANGE, default=0)
    public_interface = g.ifname("public_interface", required=True)
    private_interface = g.ifname("private_interface")
    network = g.choice("network", NETWORKS, DEFAULT_NETWORK, "network")
    file_dataplane = g.choice("dataplane", DATAPLANES, DEFAULT_DATAPLANE, "dataplane")
    # the checks that depend on the data plane are the one's that runs (lb run --dataplane)
    dataplane = run_dataplane or file_dataplane
    chosen = f"--dataplane {dataplane} (the command line's)" \
        if run_dataplane is not None and run_dataplane != file_dataplane else None
    expire_nodest_conn = g.boolean("expire_nodest_conn", False)
    lblc_expiration = g.integer("lblc_expiration", EXPIRATION_RANGE, default=DEFAULT_LBLC_EXPIRATION)
    lblcr_expiration = g.integer("lblcr_expiration", EXPIRATION_RANGE, default=DEFAULT_LBLC_EXPIRATION)
    nat_router = _check_nat_router(g)
    nat_router_device = g.ifname("nat_router_device")
    script_user = _script_user(g, DEFAULT_SCRIPT_USER)
    # monitors and [ha] default to it (to the default when it is itself wrong: reported already)
    user = script_user if isinstance(script_user, str) else DEFAULT_SCRIPT_USER
    if network == "nat":
        if private_interface is None:
            chk.error(g.at("private_interface"), 'required when network = "nat"')
        if nat_router is None:
            chk.error(g.at("nat_router"), 'required when network = "nat" (e.g. "198.18.1.254/24")')

    t = top.table("tables")
    table_values: dict[str, int | None | _Invalid] = {}
    for key, bounds in TABLE_RANGES.items():
        table_values[key] = INVALID if isinstance(t, _Invalid) else t.integer(
            key, bounds, default=getattr(_DEFAULT_TABLES, key)
        )

    to = top.table("timeouts")
    timeout_values: dict[str, int | None | _Invalid] = {}
    for key in TIMEOUTS_KEYS:
        timeout_values[key] = INVALID if isinstance(to, _Invalid) else to.integer(
            key, TIMEOUT_RANGE, default=getattr(_DEFAULT_TIMEOUTS, key)
        )

    de = top.table("defense")
    defense_values: dict[str, int | None | _Invalid] = {}
    for key, bounds in DEFENSE_RANGES.items():
        defense_values[key] = INVALID if isinstance(de, _Invalid) else de.integer(
            key, bounds, default=getattr(_DEFAULT_DEFENSE, key)
        )
    _check_amemthresh(chk, de, defense_values["amemthresh"], table_values)
    _check_tables_memory(chk, t, table_values, dataplane, chosen)

    drafts: list[_VirtualDraft | _Invalid] = [
        vs if isinstance(vs, _Invalid) else _check_virtual(vs, user)
        for vs in top.tables("virtual_server")
    ]
    for vs in drafts:
        if not isinstance(vs, _Invalid):
            _check_reals_of(chk, vs, network)
            _warn_sh_weights(chk, vs)
    # with [ha] the real servers' gateway must float (nat_router); alone, the director's own
    # private address of the other family is a gateway as good
    if network == "nat" and isinstance(nat_router, (IPv4Interface, IPv6Interface)) and "ha" in top.data:
        _check_nat_families(chk, drafts, nat_router)
    _check_services(chk, drafts)
    _check_vip_devices(chk, drafts, public_interface)
    # nat_router is the director's where it is owned (lb.ha.addresses): NAT, or any network with [ha]
    owned_router = nat_router if isinstance(nat_router, (IPv4Interface, IPv6Interface)) and (
        network == "nat" or "ha" in top.data) else None
    _check_own_addresses(chk, drafts, owned_router, dataplane == "ipvs", chosen)
    # lb.ha.addresses adds nat_router only for NAT or with [ha] (NAT without one is an error above)
    if isinstance(network, str) and network != "nat":
        if isinstance(nat_router, (IPv4Interface, IPv6Interface)) and "ha" not in top.data:
            chk.warn(g.at("nat_router"), f'no effect with network = "{network}" without [ha] (lb adds the '
                                         f'real servers\' gateway for NAT, or with [ha] for replies routed '
                                         f'through the active director)')
        elif nat_router is None and "nat_router_device" in g.data:
            chk.warn(g.at("nat_router_device"), "no effect without nat_router")
    if dataplane == "ipvs":
        _warn_ipvs_no_effect(chk, top, drafts, chosen)
    _check_counts(
        chk, drafts, table_values["services"], table_values["reals_per_service"], table_values["real_servers"]
    )

    # relative key and password files are relative to the config's directory, whatever the
    # current one: the model holds them absolute, so that `lb import`/`lb export` write (and a
    # reader elsewhere reads) the same files
    base = Path(os.path.abspath(path)) if path is not None else None
    ha = _check_ha(top, base, user)
    web = _check_web(top, base)
    metrics = _check_metrics(top, web)
    if isinstance(ha, HA):
        _check_vips_not_heartbeat_addresses(chk, drafts, ha, nat_router if isinstance(
            nat_router, (IPv4Interface, IPv6Interface)) else None)
    control = _check_control(top)
    bgp = _check_bgp(top, drafts, network, dataplane, chosen)

    if chk.issues:
        # Report in file order; issues without a line (a missing [global]) first.
        raise ConfigError(sorted(chk.issues, key=lambda i: i.line or 0))

    pub = _valid(public_interface)
    assert pub is not None  # required
    return Config(
        path=path,
        instance=_valid(instance) or "default",
        public_interface=pub,
        private_interface=_valid(private_interface),
        network=_valid(network),
        dataplane=_valid(file_dataplane),
        expire_nodest_conn=_valid(expire_nodest_conn),
        lblc_expiration=_valid_int(lblc_expiration),
        lblcr_expiration=_valid_int(lblcr_expiration),
        script_user=_valid(script_user),
        nat_router=_valid(nat_router),
        nat_router_device=_valid(nat_router_device),
        tables=Tables(**{k: _valid_int(v) for k, v in table_values.items()}),
        timeouts=Timeouts(**{k: _valid_int(v) for k, v in timeout_values.items()}),
        defense=Defense(**{k: _valid_int(v) for k, v in defense_values.items()}),
        virtual_servers=tuple(_valid(vs).build() for vs in drafts),
        ha=_valid(ha),
        web=_valid(web),
        metrics=_valid(metrics),
        control=_valid(control),
        bgp=_valid(bgp),
        serial_no=_valid_int(serial_no),
        warnings=tuple(warnings) + tuple(chk.warnings),
    )
