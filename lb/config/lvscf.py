"""Read and write Piranha's ``/etc/sysconfig/ha/lvs.cf``.

An lvs.cf written for Piranha's ``lvs``/``pulse`` runs unchanged::

    cfg = lb.config.load("/etc/sysconfig/ha/lvs.cf")          # dispatches here
    cfg, extras = lb.config.lvscf.load_with_extras("lvs.cf")   # keep HA keys etc.
    text = lb.config.lvscf.dumps(cfg, extras)                  # back to lvs.cf
    text = lb.config.lvscf.export(cfg, extras)                 # ... read back: ConfigError if it differs
    toml = lb.config.lvscf.dumps_toml(cfg)                     # native TOML (``lb import``)

Format: ``key = value`` lines, full-line ``#`` comments, ``virtual NAME {`` (or Piranha's other
form, ``virtual server NAME {``) ... ``}`` blocks holding ``server NAME {`` ... ``}`` blocks.  A value may be
wrapped in double quotes (they are removed; nothing inside is unescaped, as
in Piranha: ``send = "GET / HTTP/1.0\\r\\n\\r\\n"`` keeps its backslashes); an opening quote
without its closing one at the end of the line is an error.

Numbers are read as Piranha's lvsconfig.c read them (getNum: C's ``strtol(tok, &end, 0)`` on
the whole token, :func:`c_integer`): ``0x50`` is 80, ``010`` is 8 (octal), ``08`` is refused as
Piranha refused it; a boolean is such a number, 0 or 1 (getBoolean); a port a number, else a
service name (getPort; ``heartbeat_port`` too).  Where Piranha's getHostname read an address
(``primary``, ``backup``, their ``_private``, a virtual's and a server's ``address``,
``nat_router``) a host name is looked up at each load as its gethostbyname did
(:func:`resolve_host`, IPv4; a warning names the address, which :func:`dumps` writes; a name
without one is an error at its line); inet_aton's other forms of an address (``010.0.0.1``,
which Piranha took as 8.0.0.1, ``10.1``, ``0x0a000001``) are refused, naming the address
Piranha used.  ``sorry_server``, ``pmask``, ``nat_nmask`` and ``vip_nmask`` Piranha read with
inet_aton alone (no host names there): its forms are taken there as the address Piranha took, in
dotted form, with a warning naming it (``10.1`` is 10.0.0.1, ``10.1.2`` 10.1.0.2, ``167772161``
10.0.0.1, ``0x0a.0.0.1`` and ``012.0.0.1`` 10.0.0.1, ``0xffffff00`` 255.255.255.0); what
inet_aton refused (a part out of range, ``08``, ``0x`` without a digit, words after the value) is
refused, and a netmask must still be a contiguous one (``255.255.255`` is 255.255.0.255: refused,
naming it).  An IPv4 ``pmask`` of 0.0.0.0 (``0``, ``0x0`` ...) is no pmask, one persistence
template per client, with a warning: Piranha's lvs gave ipvsadm ``-M`` only for a non-zero pmask
(0.0.0.0 was ipvsadm's default, 255.255.255.255); ``pmask = /0`` (lb's; inet_aton refused it) is one
template for all clients, as :func:`dumps` writes a 0.0.0.0 one.  ``sorry_server = ADDR:PORT`` is lb's: its address is dotted (or IPv6).  An IPv6
service's ``pmask`` is a prefix length (``64``, not inet_aton's 0.0.0.64).

Mapping onto :class:`~lb.config.model.Config`:

* ``public_interface``: the device of the first virtual whose ``address = IP DEV[:N]`` names one
  (the ``:N`` alias suffix is stripped, and kept in the extras for writing back); a virtual
  without a device uses it.
* ``port``: a number or a service name as /etc/services gives it (``port = http``; a built-in
  table of the well-known names where the host has no /etc/services); absent, Piranha's 80.
* ``network``: as written; **absent, Piranha's default nat** (its console writes the line only for
  direct and tunnel), so without ``nat_router`` the file is refused (never read as direct routing).
* ``private_interface`` and ``nat_router_device``: the device of ``nat_router = IP DEV[:N]``.
* ``nat_router``: its IP with the prefix of ``nat_nmask``; **/24 when nat_nmask
  is absent** (Piranha's own default, 255.255.255.0); shorter than /8 (IPv6 /16) is refused.
* ``instance``: ``"default"``.
* ``virtual`` -> VirtualServer (``device`` is None when it is the public interface),
  ``server`` -> RealServer; ``active = 1|0``, **absent 0 as in Piranha** (its lvs starts neither a
  virtual nor a server without ``active = 1``; a warning names the block); ``tcp_timeout``/``tcpfin_timeout``/
  ``udp_timeout`` -> Timeouts (0, ipvsadm --set's "unchanged": IPVS's default, 900/120/300);
  a server's ``weight`` as written: an active server's ``weight = 0`` is a warning (Piranha's nanny
  added it at weight 1, the weight it starts a server at never being below 1; lb's 0 takes no new
  connections); an active server block without a port of its own above the virtual's ``port``
  line is a warning when that port is not 80 (lvsconfig.c gave the block the port read so far,
  80: nanny checked it there, NAT sent it there; lb gives it the virtual's port).

* Health checks -> VirtualServer.monitor (:class:`~lb.config.model.Monitor`):
  ``send_program`` (non-empty) -> kind "program" with program = its value (``%h``
  and ``%p`` kept); else ``send`` or ``expect`` (non-empty) -> kind "send_expect";
  else, on a TCP virtual on port 80, nanny's own HTTP check (send ``GET / HTTP/1.0\\r\\n\\r\\n``,
  expect ``HTTP``; ``lb_monitor_kind = tcp`` keeps a TCP connect); else kind "tcp".  send/expect/use_regex/timeout/reentry map to the fields of the
  same name (``send_program`` -> ``program``; ``reentry = 0`` is nanny's 180 s, with a warning);
  send/expect are kept raw (the checker
  decodes send's escapes; expect is matched as written, a regular expression's own escapes
  with use_regex, whose POSIX classes ``[[:digit:]]`` -- nanny's regcomp -- become Python's ``[0-9]``;
  ``expect = "*"``, nanny's wildcard for any reply, becomes the regular expression ``(?s).``); the interval is Piranha's 2 s.

* HA (pulse): ``backup_active = 1`` (there is a backup director) makes the ``[ha]`` model
  (:class:`~lb.config.model.HA`) from ``primary``, ``primary_private``, ``backup``,
  ``backup_private``, ``heartbeat_port``, ``keepalive``, ``deadtime`` (absent: pulse's 5 s, not lb's
  6) and ``monitor_links``;
  ``heartbeat`` must then be 1 (or absent); ``lb_ha_key_file`` names the shared key of lb's signed
  heartbeats (a relative path is relative to the lvs.cf; absent: /etc/lb/ha.key, with a warning).  :func:`dumps` writes all of
  Piranha's HA keys back (``backup_active = 1``, ``heartbeat = 1``).  With ``backup_active = 0``
  or absent (one director) the HA keys are extras, as Piranha's own ``lvs`` ignores them.

IPv6 (Piranha never had it; the syntax is lvs.cf's own): a virtual's ``address = 2001:2::10 eth0``,
a server's ``address``, ``sorry_server = [2001:2::99]:80`` and ``lb_port_groups`` entries may be
IPv6, one family per virtual (the TOML loader's rules).  The value of ``pmask`` then is a prefix
length (``pmask = 64`` or ``/64``), and so is ``nat_nmask`` of an IPv6 ``nat_router`` (required
then: Piranha's default 255.255.255.0 is IPv4's) and an IPv6 virtual's ``vip_nmask`` (no effect,
as IPv4's: a warning unless 128).

``sorry_server = ADDR`` (or ``ADDR:PORT``) is VirtualServer.sorry_server.
``quiesce_server`` is VirtualServer.quiesce_server (the schedulers' connection counts restart
when a server joins, as Red Hat's documentation describes it) and, unless ``lb_monitor_quiesce``
says otherwise, Monitor.quiesce: Piranha's nanny (-q) gave a server that failed its check weight 0
instead of removing it.  ``load_monitor = uptime`` becomes a program
load monitor running ``RSH_COMMAND %h uptime`` (rsh_command, default rsh), ``rup`` one running
``rup %h``; ``ruptime`` is accepted with a warning and no load monitor (rwhod names hosts, not
addresses: the weights stay as configured); ``none`` is no load monitor.  lb extensions ``lb_load_monitor_kind`` (agent | program), ``_port``, ``_program``
(quoted), ``_interval``, ``_timeout`` (decimal seconds), ``_min_weight`` and ``_script_user`` set the rest.
``serial_no`` is Config.serial_no (each save of lb's web console adds one; the active director's
configuration goes to the backup when newer).  Keys the model cannot hold (HA keys without a backup, debug_level, syncdaemon,
syncd_iface, syncd_id, reservation_conflict_action, vip_nmask, a firewall-mark virtual's address,
port and protocol; Red Hat Piranha's hard_shutdown, active_cmd, inactive_cmd, ipvsadm, sync,
primary_shared, backup_shared and, in a virtual block, client_monitor, master, dirs
(``[ ENTRY ... ]``), start_cmd, stop_cmd, which lb has no equivalent for) are type-checked and
returned in ``extras`` (see :func:`load_with_extras`) so :func:`dumps` writes them back (a command
with a blank quoted, as Piranha read it); each that has no effect is a warning (Config.warnings)
naming its line and saying what Piranha did with it: they did something in Piranha.  A firewall-mark virtual needs ``lb_port_groups`` (lb matches
the ports itself; Piranha's iptables rule did): without it the file is refused with an example.
Its ``port`` is where Piranha's nanny checked the real servers: when it is not the first port group's
port (which lb's checks take otherwise) it becomes Monitor.port, unless ``lb_monitor_port`` is given.
``service = fos`` is rejected as not supported yet.

lb extensions (written by :func:`dumps` only when the model needs them to
round-trip; Piranha never writes them): global ``lb_instance``, ``lb_dataplane`` (xdp | ipvs |
auto: [global] dataplane), ``lb_public_interface``, ``lb_private_interface``, ``lb_script_user`` (the user check, load and
notify programs run as), ``lb_table_connections``,
``lb_table_services``, ``lb_table_real_servers``, ``lb_table_reals_per_service``,
``lb_table_embryonic``, ``lb_table_connections_ipv6``; ``[defense]`` as ``lb_drop_entry``, ``lb_drop_packet``, ``lb_secure_tcp``,
``lb_amemthresh``, ``lb_am_droprate``, ``lb_icmp_msgs_per_sec``, ``lb_icmp_msgs_burst``;
``port`` inside a ``server`` block (RealServer.port, NAT port mapping); in a
``virtual`` block the Monitor fields Piranha lacks or cannot express:
``lb_monitor_kind`` (overrides the kind the Piranha keys imply),
``lb_monitor_path``/``_host``/``_body_regex``/``_digest`` (quoted strings),
``lb_monitor_status = 200-399``, ``lb_monitor_tls_verify``/``_quiesce = 0|1``,
``lb_monitor_port``, ``lb_monitor_script_user``, ``lb_monitor_interval``/``_connect_timeout`` (seconds,
decimals allowed), ``lb_monitor_timeout``/``_reentry`` (decimal seconds; they win
over Piranha's integer ``timeout``/``reentry``, which are written rounded up, timeout at least 1:
``lb_monitor_timeout = 0`` is the first failed check), and
``lb_monitor_escaped = 1``: the block's quoted monitor strings use the escapes
``\\\\ \\n \\r \\t \\" \\' \\uXXXX`` (written when a string holds a line break,
e.g. a TOML ``send = "...\\r\\n"``); with ``backup_active = 1`` the HA fields Piranha lacks:
``lb_ha_key_file`` (quoted path, always written), ``lb_ha_preempt``/``_sync = 0|1``,
``lb_ha_garp_count``, ``lb_ha_sync_rate``, ``lb_ha_sync_port``, ``lb_ha_script_user``, ``lb_ha_preempt_delay``/``_garp_interval``/``_garp_refresh``/
``_sync_interval``/``_max_skew`` (decimal seconds), ``lb_ha_keepalive``/``_deadtime`` (decimal
seconds; they win over Piranha's integer ``keepalive``/``deadtime``, which are written rounded
up) and ``lb_ha_notify = "/path/a, /path/b"`` (quoted, comma-separated program paths); the web
console's ``[web]``: ``lb_web_enabled = 0|1``, ``lb_web_listen = ADDRESS:PORT``,
``lb_web_password_file``, ``lb_web_tls_cert``, ``lb_web_tls_key`` (quoted paths, relative to the
lvs.cf when relative), ``lb_web_allowed_hosts`` and ``lb_web_trusted_proxies`` (comma-separated),
``lb_web_session_lifetime`` (seconds), ``lb_web_hsts = 0|1``; the control socket's ``[control]``:
``lb_control_admin_group`` and ``lb_control_read_group``; the Prometheus endpoint's
``[metrics]``: ``lb_metrics_enabled = 0|1`` and ``lb_metrics_listen = ADDRESS:PORT``.

Validation is the TOML loader's: the lvs.cf is turned into the document tomllib would give for
the same configuration, with the lvs.cf line and key of each of its fields, and handed to
:func:`lb.config.toml.validate`, whose issues then name the lvs.cf's line and key
(``virtual[web].server[web1].weight``).  Comments and key order are not preserved by :func:`dumps`;
:func:`keep_comments` puts an old file's comments back into what it wrote (the console's saves).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import toml as _toml
from . import totoml
from .locate import FieldPath
from .model import (
    Bgp,
    DEFAULT_DATAPLANE,
    DEFAULT_LBLC_EXPIRATION,
    DEFAULT_HA_KEY_FILE,
    DEFAULT_MH_SIZE,
    DEFAULT_SCRIPT_USER,
    HA,
    NETWORKS,
    Config,
    ConfigError,
    ConfigIssue,
    LoadMonitor,
    Monitor,
    Defense,
    Tables,
    Timeouts,
    parse_netmask,
    key_file_warning,
    parse_prefix_length,
    service_port,
    sorry_text,
)

__all__ = [
    "load", "loads", "load_with_extras", "loads_with_extras",
    "dumps", "dumps_toml", "export", "looks_like_lvscf",
]

# --- key tables -------------------------------------------------------------------

# kind of each extras key: "int:lo:hi", "bool", "ip", "mask", "str", or a tuple of allowed words
_INT = "int"
GLOBAL_EXTRAS: dict[str, Any] = {
    "primary": "ip",
    "primary_private": "ip",
    "service": ("lvs",),
    "backup_active": "bool",
    "backup": "ip",
    "backup_private": "ip",
    "heartbeat": "bool",
    "heartbeat_port": "port",
    "keepalive": (_INT, 1, 2147483),
    "deadtime": (_INT, 1, 2147483),
    "debug_level": "debug",
    "monitor_links": "bool",
    "syncdaemon": "bool",
    "syncd_iface": "str",
    "syncd_id": (_INT, 0, 255),
    "rsh_command": ("rsh", "ssh"),
    "reservation_conflict_action": ("nothing", "preempt"),
    # Red Hat Piranha's (lvsconfig.c, piranha 0.8.6) that lb has no equivalent for: kept, a warning
    "hard_shutdown": "bool",
    "active_cmd": "str",
    "inactive_cmd": "str",
    "ipvsadm": "str",
    "sync": "bool",
    "primary_shared": "str",
    "backup_shared": "str",
}
# Piranha's HA keys: with backup_active = 1 they make the [ha] model (lb.config.model.HA);
# otherwise (no backup director) they are extras, kept for writing back
HA_CF = ("primary", "primary_private", "backup_active", "backup", "backup_private", "heartbeat",
         "heartbeat_port", "keepalive", "deadtime", "monitor_links")
# lb-only HA keys (the HA fields Piranha lacks); lb_ha_keepalive/_deadtime: decimal seconds, they
# win over Piranha's integer keepalive/deadtime (written rounded up)
LB_HA_SECONDS = ("keepalive", "deadtime", "preempt_delay", "garp_interval", "garp_refresh", "sync_interval",
                 "max_skew")
LB_HA_KEYS = tuple(f"lb_ha_{k}" for k in (
    "key_file", "preempt", "garp_count", *LB_HA_SECONDS, "sync", "sync_rate", "sync_port", "notify",
    "script_user"))
VIRTUAL_EXTRAS: dict[str, Any] = {
    "vip_nmask": "mask",
    # Red Hat Piranha's, without an lb equivalent (as the global ones above); master was read with
    # getHostname, kept here as written (no lookup: it did nothing)
    "client_monitor": "str",
    "master": "str",
    "dirs": "list",
    "start_cmd": "str",
    "stop_cmd": "str",
}
# the extras written back quoted when their value has a blank (Piranha's parser took one word
# after '=', or one quoted string)
QUOTED_IF_BLANK = ("active_cmd", "inactive_cmd", "ipvsadm", "primary_shared", "backup_shared",
                   "client_monitor", "start_cmd", "stop_cmd")
# load_monitor = uptime | rup: Piranha's load monitors, run as lb program load monitors (argv,
# no shell): uptime over rsh_command (rsh, or ssh), rup asks the real server's rpc.rstatd
LOAD_MONITOR_WORDS = ("none", "uptime", "rup", "ruptime")
LOAD_MONITOR_RUP = "rup %h"
# lb-only keys for the LoadMonitor fields (lb_load_monitor_kind = agent | program)
LB_LOAD_MONITOR_FIELDS = ("kind", "port", "program", "interval", "timeout", "min_weight", "script_user")
LB_LOAD_MONITOR_KEYS = tuple(f"lb_load_monitor_{k}" for k in LB_LOAD_MONITOR_FIELDS)
# Piranha's health-check keys, mapped onto VirtualServer.monitor
MONITOR_CF = ("send", "expect", "use_regex", "send_program", "timeout", "reentry")
# lb-only keys for the Monitor fields Piranha lacks (written only when needed)
LB_MONITOR_SECONDS = ("interval", "timeout", "reentry", "connect_timeout")
LB_MONITOR_STRINGS = ("path", "host", "body_regex", "digest")
LB_MONITOR_KEYS = tuple(f"lb_monitor_{k}" for k in (
    "kind", *LB_MONITOR_STRINGS, "status", "tls_verify", "port", *LB_MONITOR_SECONDS, "quiesce", "escaped",
    "script_user"))
# lb-only keys of [defense] (IPVS's sysctls, which Piranha left to the administrator)
DEFENSE_CF = {f"lb_{k}": k for k in _toml.DEFENSE_KEYS}
# lb-only keys of the web console ([web]; Piranha's was a separate program)
LB_WEB_KEYS = {f"lb_web_{k}": k for k in _toml.WEB_KEYS}
# lists in one value, comma-separated (as lb_ha_notify)
LB_WEB_LISTS = ("allowed_hosts", "trusted_proxies")
# lb-only keys of the Prometheus endpoint ([metrics])
LB_METRICS_KEYS = {f"lb_metrics_{k}": k for k in _toml.METRICS_KEYS}
# the control socket's groups ([control])
LB_CONTROL_KEYS = {f"lb_control_{k}": k for k in _toml.CONTROL_KEYS}
# lb-only keys of [bgp] (scale-out; Piranha had none): the scalars, then the neighbors and the VIPs'
# attributes as comma-separated lists:
#   lb_bgp_neighbors = "198.18.0.254 as 65000 local 198.18.0.1, 198.18.0.253 as 65000"
#   lb_bgp_vips = "198.18.0.10 med 10 community 65000:100 community no-export, 198.18.0.11 med 5"
LB_BGP_SCALARS = {f"lb_bgp_{k}": k for k in ("mode", "local_as", "router_id", "hold_time", "lease", "drain", "settle")}
LB_BGP_KEYS = (*LB_BGP_SCALARS, "lb_bgp_neighbors", "lb_bgp_vips")
GLOBAL_MODEL = (
    "serial_no",
    "network", "nat_router", "nat_nmask", "tcp_timeout", "tcpfin_timeout", "udp_timeout",
    "lb_instance", "lb_dataplane", "lb_public_interface", "lb_private_interface", "lb_expire_nodest_conn",
    "lb_lblc_expiration", "lb_lblcr_expiration", "lb_script_user",
    "lb_table_connections", "lb_table_services", "lb_table_real_servers", "lb_table_reals_per_service",
    "lb_table_embryonic", "lb_table_connections_ipv6",
) + tuple(DEFENSE_CF) + LB_HA_KEYS + tuple(LB_WEB_KEYS) + tuple(LB_METRICS_KEYS) + tuple(LB_CONTROL_KEYS) + LB_BGP_KEYS
VIRTUAL_MODEL = ("address", "active", "port", "protocol", "scheduler", "persistent", "pmask", "fwmark",
                 "lb_port_groups", "lb_scheduler_flags", "sorry_server", "lb_mh_size", "quiesce_server",
                 "load_monitor") + LB_LOAD_MONITOR_KEYS
SERVER_KEYS = ("address", "active", "weight", "port", "lb_u_threshold", "lb_l_threshold")
GLOBAL_KEYS = tuple(GLOBAL_EXTRAS) + GLOBAL_MODEL
VIRTUAL_KEYS = VIRTUAL_MODEL + MONITOR_CF + LB_MONITOR_KEYS + tuple(VIRTUAL_EXTRAS)
QUOTED = ("send", "expect", "send_program", "lb_ha_key_file", "lb_ha_notify", "lb_load_monitor_program",
          "lb_web_password_file", "lb_web_tls_cert", "lb_web_tls_key", "lb_bgp_neighbors", "lb_bgp_vips") + tuple(
    f"lb_monitor_{k}" for k in LB_MONITOR_STRINGS)
TIMEOUT_KEYS = {"tcp_timeout": "tcp", "tcpfin_timeout": "tcpfin", "udp_timeout": "udp"}
TABLE_KEYS = {f"lb_table_{k}": k for k in ("connections", "services", "real_servers", "reals_per_service",
                                            "embryonic", "connections_ipv6")}
DEFAULT_NAT_NMASK = "255.255.255.0"
DEFAULT_PORT = 80  # Piranha's port for a virtual that names none
ZERO_ADDRESS = ipaddress.IPv4Address(0)  # a pmask of 0.0.0.0: Piranha's lvs passed no -M (per client)
# nanny's check of a port-80 virtual without send, expect or send_program (nanny.c's http_send_str,
# http_recv_str); send as lvs.cf writes it, its escapes decoded by the checker
NANNY_HTTP_SEND = "GET / HTTP/1.0\\r\\n\\r\\n"
NANNY_HTTP_EXPECT = "HTTP"
DEFAULT_REENTRY = Monitor().reentry  # 180 s: nanny's default, and what it made of reentry = 0
ANY_REPLY = "(?s)."  # expect = "*" (nanny's wildcard) as the regular expression lb matches
PULSE_DEADTIME = 5  # pulse's deadtime when the file names none (lvsconfig.c; keepalive's 2 is lb's too)

# TOML key -> lvs.cf key, for messages about keys that were not written
_TOML_TO_CF = {
    "real_server": "server", "tcp": "tcp_timeout", "tcpfin": "tcpfin_timeout", "udp": "udp_timeout",
    "device": "address", "nat_router_device": "nat_router", "private_interface": "nat_router",
    "public_interface": "lb_public_interface", "instance": "lb_instance", "dataplane": "lb_dataplane",
    **{v: k for k, v in TABLE_KEYS.items()},
    **{v: k for k, v in DEFENSE_CF.items()},
}


# --- lexical structure ----------------------------------------------------------------


@dataclass
class _Entry:
    key: str
    value: str
    line: int


@dataclass
class _Block:
    kind: str  # "" (top level), "virtual", "server"
    name: str
    line: int
    entries: list[_Entry] = field(default_factory=list)
    children: list[_Block] = field(default_factory=list)


# ``virtual NAME {`` and Piranha's other form ``virtual server NAME {``; ``server NAME {``
_BLOCK_RE = re.compile(r"(virtual|server|failover)\s+(\S+)(?:\s+(\S+))?\s*\{")
_KEY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


class _Issues:
    def __init__(self, display: str, resolve: bool = True) -> None:
        self.display = display
        self.items: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []       # Config.warnings (the builder's too)
        self.resolve = resolve                      # look host names up (not when only lines are wanted)

    def add(self, line: int | None, fld: str, message: str) -> None:
        self.items.append(ConfigIssue(self.display, line, fld, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(sorted(self.items, key=lambda i: i.line or 0))


def _label(block: _Block) -> str:
    return f"{block.kind}[{block.name}]"


def _parse_blocks(text: str, issues: _Issues) -> _Block:
    top = _Block("", "", 0)
    stack = [top]
    lines = text.splitlines()
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if len(s) > MAX_LINE:
            issues.add(n, "", f"line longer than {MAX_LINE} characters")
            continue
        cur = stack[-1]
        m = _BLOCK_RE.fullmatch(s)
        if m and m.group(3) is not None and not (m.group(1) == "virtual" and m.group(2) == "server"):
            issues.add(n, "", f"expected '{m.group(1)} NAME {{'" + (" or 'virtual server NAME {'"
                              if m.group(1) == "virtual" else "") + f", got {s!r}")
            m = None
            stack.append(_Block("?", "?", n))  # its '}' closes it: the rest still parses
            continue
        if m:
            kind, name = m.group(1), m.group(3) or m.group(2)
            if kind == "failover":
                issues.add(n, f"failover[{name}]", "failover services (service = fos) are not supported yet")
                block = _Block(kind, name, n)  # parsed for structure, then ignored
            else:
                block = _Block(kind, name, n)
                want_parent = "" if kind == "virtual" else "virtual"
                if cur.kind != want_parent:
                    if kind == "virtual":
                        issues.add(n, f"virtual[{name}]", f"missing '}}': virtual '{name}' starts inside "
                                   f"{cur.kind} '{cur.name}' (opened at line {cur.line})")
                        # recover: close everything open
                        del stack[1:]
                        cur = top
                    else:
                        issues.add(n, f"server[{name}]", "a server block must be inside a virtual block"
                                   if cur.kind == "" else
                                   f"missing '}}': server '{name}' starts inside server '{cur.name}' "
                                   f"(opened at line {cur.line})")
                        if cur.kind == "server":
                            stack.pop()
                            cur = stack[-1]
            if kind != "failover" and cur.kind in ("", "virtual"):
                cur.children.append(block)
            stack.append(block)
            continue
        if s == "}":
            if len(stack) == 1:
                issues.add(n, "", "unexpected '}' (no block is open)")
            else:
                stack.pop()
            continue
        m = _KEY_RE.fullmatch(s)
        if m:
            value = m.group(2).strip()
            if value.startswith('"') and (len(value) == 1 or not value.endswith('"')):
                # kept, the quote would be sent or run as part of the value
                issues.add(n, ".".join([_label(b) for b in stack[1:]] + [m.group(1)]),
                           "unterminated quoted value (no closing '\"' at the end of the line)")
                continue
            cur.entries.append(_Entry(m.group(1), _unquote(value), n))
            continue
        if s.startswith(("virtual", "server")) and not s.endswith("{"):
            issues.add(n, "", f"expected '{{' at the end of the line: {s!r}")
        else:
            issues.add(n, "", f"cannot parse line (expected 'key = value', 'virtual NAME {{', "
                       f"'server NAME {{' or '}}'): {s!r}")
    if len(stack) > 1:
        last = len(lines)
        open_ = stack[-1]
        issues.add(last, ".".join(_label(b) for b in stack[1:]), f"missing '}}': end of file inside {open_.kind} '{open_.name}' "
                   f"(opened at line {open_.line})")
    return top


def instance_only(text: str) -> str | None:
    """The instance ``text`` names in lb_instance (default "default"), read alone: for `lb stop` /
    `lb status --config` of a file with errors elsewhere.  None when the key is given twice or is not a
    valid instance name."""
    names = [e.value for e in _parse_blocks(text, _Issues("")).entries if e.key == "lb_instance"]
    if len(names) > 1:
        return None
    name = names[0] if names else "default"
    return name if _toml.INSTANCE_RE.fullmatch(name) else None


# --- value checks -------------------------------------------------------------------------


_INT_RE = re.compile(r"[+-]?[0-9]+")
# an integer as C's strtol(text, &end, 0) reads a whole token -- Piranha's getNum, for every number
# of lvs.cf (its ports, booleans, weights, timeouts, serial_no ...): 0x50 is 80, a leading 0 octal
_C_INT_RE = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_OCTAL_TRAP_RE = re.compile(r"[+-]?0[0-9]+")


def c_integer(text: str) -> int | None:
    """``text`` as Piranha's lvsconfig.c read a number (getNum: strtol with base 0, the whole
    token): decimal, 0x hexadecimal or 0 octal (``010`` is 8), an optional sign; None when it
    is not one (Piranha refused it: LVS_ERROR_INTEXPECTED), as ``08``, or is longer than any
    number a key takes (MAX_INT_DIGITS: the callers say so)."""
    if len(text) > _toml.MAX_INT_DIGITS + 3:        # sign and 0x
        return None
    m = _C_INT_RE.fullmatch(text)
    if m is None:
        return None
    sign, digits = m.groups()
    n = int(digits[2:], 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits[0] == "0" else int(digits)
    return -n if sign == "-" else n


# Piranha's getHostname (primary, backup, their _private, a virtual's and a server's address,
# nat_router): inet_aton, else gethostbyname.  inet_aton's forms other than a.b.c.d in decimal
# (010.0.0.1 is 8.0.0.1, 0x0a000001 and 10.1 are 10.0.0.1) are refused, naming the address
# Piranha used: a zero-padded address was octal to it, and rarely what its author meant.
# sorry_server, pmask, nat_nmask and vip_nmask Piranha read with inet_aton alone (no host names):
# there its forms are taken as the address Piranha took, with a warning (_Scope.aton)
_ATON_PART_RE = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_ATON_RULE = ("inet_aton: a leading 0 makes a part octal, 0x hexadecimal, and fewer than four parts fill "
              "the last one: 10.1 is 10.0.0.1")
_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?")


def inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """``text`` as glibc's inet_aton reads it (1 to 4 parts, each decimal, 0x hexadecimal or 0
    octal; the last fills the bytes left: 10.1 is 10.0.0.1); None when it is not one.  Unlike
    the C function (and socket.inet_aton) nothing may follow: glibc's ignores what follows a
    blank, which an lvs.cf token never held (Piranha refused the words after the value)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_ATON_PART_RE.fullmatch(p) for p in parts) or len(text) > 64:
        return None
    nums = [int(p[2:] or "0", 16) if p[:2] in ("0x", "0X") else int(p, 8) if p[0] == "0" else int(p)
            for p in parts]
    *head, last = nums
    if any(n > 255 for n in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = last
    for i, n in enumerate(head):
        value |= n << (24 - 8 * i)
    return ipaddress.IPv4Address(value)


def resolve_host(name: str) -> str | None:
    """The IPv4 address of host name ``name`` as Piranha's getHostname took it (gethostbyname:
    /etc/hosts, then DNS, as nsswitch.conf says; its first address); None when there is none.
    Called only for a name (never an address) in one of getHostname's keys, at each load; tests
    replace it (tests/conftest.py: no test looks a name up)."""
    import socket

    try:
        return socket.gethostbyname(name)
    except (OSError, UnicodeError, ValueError):
        return None


def _not_an_integer(text: str) -> str:
    if _OCTAL_TRAP_RE.fullmatch(text):
        return (f"expected an integer, got {text!r}: lvs.cf numbers are read as Piranha's (C's strtol), where a "
                f"leading 0 makes an octal number (010 is 8), and 8 and 9 are no octal digits; write it "
                f"without the leading 0")
    return f"expected an integer, got {text!r}"
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
# one line holds one key: a value as long as the TOML loader's longest string, and then some
MAX_LINE = 2 * _toml.MAX_STRING


def _web_value(g: _Scope, cf: str, key: str) -> Any:
    """An lb_web_* value as the [web] table holds it."""
    if key in ("enabled", "hsts"):
        return g.boolean(cf)
    if key == "session_lifetime":
        return _seconds(g, cf)
    text = g.text(cf)
    if text is not None and key in LB_WEB_LISTS:
        return [p.strip() for p in text.split(",") if p.strip()]
    return text


def _seconds(scope: _Scope, key: str) -> int | float | None:
    """A number of seconds (integer or decimal); range checks are the TOML loader's."""
    e = scope.entries.get(key)
    if e is None:
        return None
    if c_integer(e.value) is not None or _INT_RE.fullmatch(e.value):
        return scope.integer(key)       # as Piranha's strtol: 010 is 8 (08 refused, as there)
    if not _NUM_RE.fullmatch(e.value):
        scope.error(e, f"expected a number of seconds, got {e.value!r}")
        return None
    return float(e.value)


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _vip_prefix6(v: _Scope) -> str | None:
    """vip_nmask of an IPv6 virtual: a prefix length (64 or /64), kept as its number."""
    e = v.entries["vip_nmask"]
    prefix = parse_prefix_length(e.value)
    if prefix is None and "." in e.value:
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{e.value}")
            return e.value      # an IPv4 netmask (a block copied from an IPv4 one): no effect, kept
        except ValueError:
            pass
    if prefix is None:
        v.error(e, f"expected an IPv6 prefix length 1..128 (64 or /64), got {e.value!r}")
        return None
    return str(prefix)


def _port(scope: _Scope, key: str, protocol: str) -> int | None:
    """A port as Piranha took it (getPort): a number (c_integer), or a service name as
    /etc/services gives it (http)."""
    e = scope.entries.get(key)
    if e is None or c_integer(e.value) is not None or _INT_RE.fullmatch(e.value):
        return scope.integer(key)  # the range is the TOML loader's check
    port = service_port(e.value, protocol if protocol in ("tcp", "udp") else "tcp")
    if port is None:
        scope.error(e, f"unknown service name {e.value!r} (not in /etc/services): give the port number")
    return port


def _port_number(text: str, protocol: str) -> int | None:
    """A port as :func:`_port` reads it, without reporting (None: not one)."""
    n = c_integer(text)
    if n is not None or _INT_RE.fullmatch(text):
        return n
    return service_port(text, protocol if protocol in ("tcp", "udp") else "tcp")


# POSIX character classes (regcomp, as Piranha's nanny matched expect with use_regex) as the
# ranges Python's re takes inside a bracket expression
_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "xdigit": "0-9A-Fa-f", "space": r" \t\n\r\f\v", "blank": r" \t", "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e", "graph": r"\x21-\x7e", "punct": r"!-/:-@\[-`{-~",
}


def posix_classes(rx: str) -> str:
    """``rx`` with the POSIX classes of its bracket expressions (``[[:digit:]]``, ``[^[:space:]]``)
    written as Python's re reads them (``[0-9]``); re would take ``[[:digit:]]`` as a set of the
    characters ``[:digt`` and a literal ``]``.  Anything else is left as it is."""
    out: list[str] = []
    i, n, inside = 0, len(rx), False
    while i < n:
        ch = rx[i]
        if not inside:
            if ch == "\\":
                out.append(rx[i:i + 2])
                i += 2
                continue
            out.append(ch)
            i += 1
            if ch == "[":
                inside = True
                if rx.startswith("^", i):        # [^ ... ]
                    out.append("^")
                    i += 1
                if rx.startswith("]", i):        # a leading ] is a member
                    out.append("]")
                    i += 1
            continue
        m = re.match(r"\[:([a-z]+):\]", rx[i:])
        if m and m.group(1) in _POSIX_CLASSES:
            out.append(_POSIX_CLASSES[m.group(1)])
            i += m.end()
        elif ch == "\\":
            out.append(rx[i:i + 2])
            i += 2
        else:
            out.append(ch)
            inside = ch != "]"
            i += 1
    return "".join(out)


def _fmt_seconds(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# lb_monitor_escaped = 1: the quoted monitor strings of the block use these escapes, so that
# strings holding line breaks (e.g. a TOML send = "...\r\n") fit on an lvs.cf line.
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
_ESCAPE = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    return (ord(ch) < 0x20 and ch != "\t") or ch in "\x7f\x85\u2028\u2029"


def _needs_escape(s: str) -> bool:
    return any(_unsafe(ch) for ch in s)


def _escape(s: str) -> str:
    return "".join(_ESCAPE.get(ch) or (f"\\u{ord(ch):04x}" if _unsafe(ch) else ch) for ch in s)


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if ch == "\\" and nxt in _UNESCAPE:
            out.append(_UNESCAPE[nxt])
            i += 2
        elif ch == "\\" and nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", s[i + 2:i + 6]):
            out.append(chr(int(s[i + 2:i + 6], 16)))
            i += 6
        else:  # any other backslash is kept, as Piranha does
            out.append(ch)
            i += 1
    return "".join(out)


class _Scope:
    """The entries of one block, with typed getters that report to issues."""

    def __init__(self, block: _Block, known: tuple[str, ...], prefix: str, issues: _Issues) -> None:
        self.block = block
        self.prefix = prefix
        self.issues = issues
        self.entries: dict[str, _Entry] = {}
        where = "the global section" if not block.kind else f"a {block.kind} block"
        for e in block.entries:
            if e.key not in known:
                close = difflib.get_close_matches(e.key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.error(e, f"unknown key '{e.key}' in {where}{hint}")
            elif e.key in self.entries:
                self.error(e, f"duplicate key '{e.key}' (already set at line {self.entries[e.key].line})")
            else:
                self.entries[e.key] = e

    def fld(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, e: _Entry, message: str) -> None:
        self.issues.add(e.line, self.fld(e.key), message)

    def line(self, key: str) -> int | None:
        e = self.entries.get(key)
        return e.line if e else None

    def text(self, key: str) -> str | None:
        e = self.entries.get(key)
        return e.value if e else None

    def integer(self, key: str, lo: int | None = None, hi: int | None = None) -> int | None:
        e = self.entries.get(key)
        if e is None:
            return None
        if len(e.value.lstrip("+-")) > _toml.MAX_INT_DIGITS:  # Python reads at most 4300 digits
            if _C_INT_RE.fullmatch(e.value):
                self.error(e, _toml.int_too_large(_toml.MAX_INT_DIGITS))
            else:
                self.error(e, _not_an_integer(e.value))
            return None
        n = c_integer(e.value)
        if n is None:
            self.error(e, _not_an_integer(e.value))
            return None
        if lo is not None and hi is not None and not lo <= n <= hi:
            self.error(e, f"must be between {lo} and {hi}, got {n}")
            return None
        return n

    def host(self, key: str, text: str | None = None) -> str | None:
        """The address of ``key`` (``text``: its address part) as Piranha's getHostname read it: an
        IP address as written; a host name looked up (resolve_host), with a warning; None, said
        at the key's line, for a name that has no address or an address in one of inet_aton's
        other forms.  Text that is neither is returned as written: the TOML loader refuses it."""
        e = self.entries[key]
        text = e.value if text is None else text
        try:
            ipaddress.ip_address(text)
            return text
        except ValueError:
            pass
        aton = inet_aton(text)
        if aton is not None:
            self.error(e, f"{text!r} is {aton} as Piranha read it ({_ATON_RULE}): "
                          f"write {aton} if that is the address meant, else the address in four decimal parts")
            return None
        if not _HOSTNAME_RE.fullmatch(text) or text.replace(".", "").isdigit():
            return text
        if not self.issues.resolve:
            return text
        addr = resolve_host(text)
        if addr is None:
            self.error(e, f"{text!r} is not an IP address, and this machine finds no address for it as a host "
                          f"name (Piranha looked names up with gethostbyname: /etc/hosts, then DNS)")
            return None
        self.issues.warnings.append(ConfigIssue(
            self.issues.display, e.line, self.fld(key),
            f"host name {text!r} is {addr}: looked up at each load, as Piranha did at each start (a reload "
            f"looks it up again); lb export and the console's saves write the address"))
        return addr

    def aton(self, key: str) -> ipaddress.IPv4Address | None:
        """The address inet_aton read from ``key``'s value when it is one of inet_aton's forms other
        than the dotted decimal lb reads (10.1, 10.1.2, 167772161, 0x0a.0.0.1, 012.0.0.1); None
        for any other value (the caller's checks take it as written).  For sorry_server, pmask,
        nat_nmask and vip_nmask, which Piranha read with inet_aton alone."""
        text = self.entries[key].value
        try:
            ipaddress.ip_address(text)
            return None
        except ValueError:
            return inet_aton(text)

    def read_as(self, key: str, value: str) -> None:
        """The warning that ``key``'s value in inet_aton's form (:meth:`aton`) is taken as ``value``."""
        e = self.entries[key]
        self.issues.warnings.append(ConfigIssue(
            self.issues.display, e.line, self.fld(key),
            f"{e.value!r} is {value} as Piranha read it ({_ATON_RULE}); lb export and the console's saves "
            f"write {value}"))

    def aton_mask(self, key: str) -> str | None:
        """``key``'s IPv4 netmask, dotted: as parse_netmask reads it, else in one of inet_aton's forms
        (:meth:`aton`; a warning says which mask), which must be a contiguous one too; None, said at
        the key's line, when it is not one."""
        e = self.entries[key]
        m = parse_netmask(e.value)
        if m is not None:
            return m
        aton = self.aton(key)
        if aton is None:
            self.error(e, f"'{e.value}' is not a contiguous IPv4 netmask (e.g. 255.255.255.0)")
            return None
        m = parse_netmask(str(aton))
        if m is None:
            self.error(e, f"{e.value!r} is {aton} as Piranha read it ({_ATON_RULE}), not a contiguous IPv4 "
                          f"netmask (e.g. 255.255.255.0 or /24)")
            return None
        self.read_as(key, m)
        return m

    def boolean(self, key: str) -> bool | None:
        e = self.entries.get(key)
        if e is None:
            return None
        n = c_integer(e.value)
        if n not in (0, 1):    # Piranha's getBoolean: a number (00, 0x1 ...), 0 or 1
            self.error(e, f"expected 0 or 1, got {e.value!r}")
            return None
        return n == 1

    def extra(self, key: str, kind: Any) -> Any:
        e = self.entries.get(key)
        if e is None:
            return None
        v = e.value
        if isinstance(kind, tuple) and kind and kind[0] == _INT:
            return self.integer(key, kind[1], kind[2])
        if isinstance(kind, tuple):
            if v not in kind:
                self.error(e, f"expected one of {', '.join(kind)}, got {v!r}")
                return None
            return v
        if kind == "bool":
            return self.boolean(key)
        if kind == "port":
            port = _port(self, key, "tcp")     # Piranha's getPort: a number or a tcp service name
            if port is not None and not 1 <= port <= 65535:
                self.error(e, f"must be between 1 and 65535, got {port}")
                return None
            return port
        if kind == "ip":
            v = self.host(key)      # Piranha's getHostname: a host name too
            if v is None:
                return None
            try:
                return str(ipaddress.ip_address(v))
            except ValueError:
                self.error(e, f"'{v}' is not a valid IP address")
                return None
        if kind == "mask":
            return self.aton_mask(key)      # Piranha's inet_aton: 0xffffff00 is 255.255.255.0
        if kind == "list":   # Piranha's getList: '[', the entries, ']', each a word of its own
            words = v.split()
            if len(words) < 2 or words[0] != "[" or words[-1] != "]" or "[" in words[1:] or "]" in words[:-1]:
                self.error(e, f"expected a list '[ ENTRY ENTRY ... ]' (the brackets words of their own), "
                              f"got {v!r}")
                return None
            return " ".join(words)
        if kind == "debug":
            if v.upper() in ("NONE", "LOW", "HIGH") or (v.isdigit()):
                return v
            self.error(e, f"expected NONE, LOW, HIGH or a number, got {v!r}")
            return None
        return v  # str

    def addr_dev(self, key: str) -> tuple[str, str | None, str | None] | None:
        """``IP [DEV[:N]]`` -> (ip text, device without alias, device as written)."""
        e = self.entries.get(key)
        if e is None:
            return None
        parts = e.value.split()
        if not parts or len(parts) > 2:
            self.error(e, f"expected 'IP [DEVICE[:N]]', got {e.value!r}")
            return None
        if len(parts) == 1:
            return parts[0], None, None
        dev = parts[1]
        base = dev.split(":", 1)[0]
        if not base or dev.endswith(":"):
            self.error(e, f"'{dev}' is not a valid device (expected DEVICE or DEVICE:N)")
            return None
        return parts[0], base, dev


# --- lvs.cf -> document ---------------------------------------------------------------------


class _Positions(_toml.Positions):
    """Where each field of the document built from an lvs.cf is written: its line in the lvs.cf and
    the lvs.cf's own name for it (``virtual[web].server[web1].weight``, ``lb_table_services``)."""

    def __init__(self) -> None:
        self.notes: dict[FieldPath, tuple[int | None, str]] = {}

    def where(self, path: FieldPath) -> tuple[int | None, str]:
        known = self.notes.get(path)
        if known is not None and known[0] is not None:
            return known
        # a key that was not written (or an index past the end): the closest enclosing entry's line
        tail: list[str] = []
        p = path
        while len(p) > 1:
            last, p = p[-1], p[:-1]
            if isinstance(last, str):
                tail.insert(0, _TOML_TO_CF.get(last, last))
            line, cf = self.notes.get(p, (None, ""))
            if line is not None:
                name = known[1] if known is not None and known[1] else ".".join([cf] + tail if cf else tail)
                return line, name
        if known is not None:
            return None, known[1]
        return None, ".".join(tail) if tail else _toml.field_name(path)


class _Builder:
    """Turns parsed blocks into the document the TOML loader validates (the dict tomllib would
    give for the same configuration), the extras and the position of each field."""

    def __init__(self, issues: _Issues) -> None:
        self.issues = issues
        self.positions = _Positions()
        self.extras: dict[str, Any] = {"global": {}, "virtual": {}}
        self.warnings = issues.warnings

    def warn(self, scope: _Scope, key: str, message: str) -> None:
        """``key`` of ``scope`` is accepted but does not do what it did in Piranha."""
        self.warnings.append(ConfigIssue(self.issues.display, scope.line(key), scope.fld(key), message))

    def note(self, path: FieldPath, line: int | None, cf_field: str) -> None:
        self.positions.notes[path] = (line, cf_field)

    def build(self, top: _Block) -> dict[str, Any]:
        g = _Scope(top, GLOBAL_KEYS, "", self.issues)
        gx = self.extras["global"]
        ba = g.entries.get("backup_active")
        with_ha = ba is not None and c_integer(ba.value) == 1    # 1, 01, 0x1: Piranha's getBoolean
        for key, kind in GLOBAL_EXTRAS.items():
            if with_ha and key in HA_CF:
                continue
            v = g.extra(key, kind)
            if v is not None:
                gx[key] = v
        if "service" in g.entries and g.entries["service"].value == "fos":
            self.issues.items.pop()  # replace the generic message
            g.error(g.entries["service"], "service = fos (failover services) is not supported yet")
        self._global_warnings(g, top, with_ha)

        glob: dict[str, Any] = {}
        doc: dict[str, Any] = {"global": glob}
        self.note(("global",), None, "")

        network = g.entries.get("network")
        if network is not None:
            if network.value not in NETWORKS:
                g.error(network, f"unknown network {network.value!r} "
                                 f"(expected {', '.join(NETWORKS[:-1])} or {NETWORKS[-1]})")
            else:
                glob["network"] = network.value
            self.note(("global", "network"), network.line, "network")

        nat = g.addr_dev("nat_router")
        nmask_e = g.entries.get("nat_nmask")
        nat_line = g.line("nat_router")
        nat6 = nat is not None and ":" in nat[0]  # an IPv6 nat_router: nat_nmask is a prefix length
        nmask = self._nat_prefix6(g) if nat6 else g.extra("nat_nmask", "mask")
        if nat is not None:
            ip, dev, raw = nat
            host = g.host("nat_router", ip)
            if dev is None:
                g.error(g.entries["nat_router"], "expected 'IP DEVICE[:N]' (the device is required)")
            else:
                if nat6:  # a bad or missing nat_nmask is reported already: /128 stands in
                    prefix = nmask or 128
                else:
                    prefix = ipaddress.IPv4Network(f"0.0.0.0/{nmask or DEFAULT_NAT_NMASK}").prefixlen
                if host is not None:
                    glob["nat_router"] = f"{host}/{prefix}"
                glob["nat_router_device"] = dev
                glob["private_interface"] = dev
                if raw != dev:
                    gx["nat_router_alias"] = raw
            for f in ("nat_router", "nat_router_device", "private_interface"):
                self.note(("global", f), nat_line, "nat_router")
        elif nmask_e is not None and nmask is not None:
            gx["nat_nmask"] = nmask
        if network is not None and network.value == "nat" and nat is None:
            self.issues.add(network.line, "nat_router",
                            "network = nat requires nat_router = IP DEVICE (e.g. nat_router = 10.0.0.254 eth1)")
            self.note(("global", "nat_router"), network.line, "nat_router")
            self.note(("global", "private_interface"), network.line, "nat_router")
        elif network is None:
            # Piranha's lvs forwards by NAT when the file names no network (lvsconfig.c's default;
            # its console writes the line only for direct and tunnel): never lb's own default
            if nat is not None:
                glob["network"] = "nat"
                self.note(("global", "network"), nat_line, "nat_router")
            else:
                first = top.entries[0].line if top.entries else top.children[0].line if top.children else None
                self.issues.add(first, "network",
                                "no 'network' line: Piranha forwards by NAT then (its default), and lb's NAT "
                                "needs nat_router = IP DEVICE[:N]; add network = nat with nat_router, or "
                                "network = direct or network = tunnel, as the real servers are set up")

        instance = g.entries.get("lb_instance")
        glob["instance"] = instance.value if instance else "default"
        self.note(("global", "instance"), g.line("lb_instance"), "lb_instance")
        dataplane = g.entries.get("lb_dataplane")
        if dataplane is not None:  # the TOML loader checks the word
            glob["dataplane"] = dataplane.value
        self.note(("global", "dataplane"), g.line("lb_dataplane"), "lb_dataplane")
        end = g.boolean("lb_expire_nodest_conn")
        if end is not None:
            glob["expire_nodest_conn"] = end
            self.note(("global", "expire_nodest_conn"), g.line("lb_expire_nodest_conn"), "lb_expire_nodest_conn")
        for key in ("lblc_expiration", "lblcr_expiration"):
            secs = g.integer(f"lb_{key}", *_toml.EXPIRATION_RANGE)
            if secs is not None:
                glob[key] = secs
                self.note(("global", key), g.line(f"lb_{key}"), f"lb_{key}")
        user = g.entries.get("lb_script_user")
        if user is not None:
            glob["script_user"] = user.value
        self.note(("global", "script_user"), g.line("lb_script_user"), "lb_script_user")
        priv = g.entries.get("lb_private_interface")
        if priv is not None:
            glob["private_interface"] = priv.value
            self.note(("global", "private_interface"), priv.line, "lb_private_interface")

        self._table(doc, "tables", g, TABLE_KEYS, lambda cf, _: g.integer(cf))
        # 0 is Piranha's "leave the kernel's timeout" (ipvsadm --set takes 0 as unchanged): IPVS's default
        self._table(doc, "timeouts", g, TIMEOUT_KEYS, lambda cf, _: g.integer(cf) or None)
        self._table(doc, "defense", g, DEFENSE_CF, lambda cf, _: g.integer(cf))
        if with_ha:
            doc["ha"] = self._ha(g)
        else:
            for key in LB_HA_KEYS:
                if key in g.entries:
                    g.error(g.entries[key], f"{key} needs backup_active = 1 (a backup director)")
        self._table(doc, "web", g, LB_WEB_KEYS, lambda cf, key: _web_value(g, cf, key))
        self._table(doc, "metrics", g, LB_METRICS_KEYS,
                    lambda cf, key: g.boolean(cf) if key == "enabled" else g.text(cf))
        self._table(doc, "control", g, LB_CONTROL_KEYS, lambda cf, _: g.text(cf))
        serial = g.integer("serial_no")
        if serial is not None:
            glob["serial_no"] = serial
        self.note(("global", "serial_no"), g.line("serial_no"), "serial_no")
        if any(k in g.entries for k in LB_BGP_KEYS):
            doc["bgp"] = self._bgp(g)

        vss = []
        first_dev: tuple[str, int, str] | None = None  # the public interface: the first device named
        marks: dict[int, _Block] = {}  # Piranha's pattern: one fwmark, a virtual block per port
        for i, vb in enumerate(top.children):
            vs, dev = self._virtual(i, vb)
            vss.append(vs)
            if first_dev is None and dev is not None:
                first_dev = dev
            mark = vs.get("fwmark")
            if isinstance(mark, int) and mark:
                if mark in marks:
                    first = marks[mark]
                    line = next((e.line for e in vb.entries if e.key == "fwmark"), vb.line)
                    vip = next((e.value.split()[0] for e in vb.entries if e.key == "address" and e.value.split()),
                               "VIP")
                    self.issues.add(line, f"{_label(vb)}.fwmark",
                                    f"fwmark {mark} is also {_label(first)}'s (line {first.line}): Piranha ran one "
                                    f"IPVS service for a mark, whatever the blocks; in lb write one virtual "
                                    f"block for it with every port in its lb_port_groups (e.g. tcp {vip} 80, "
                                    f"tcp {vip} 443)")
                else:
                    marks[mark] = vb
        pub = g.entries.get("lb_public_interface")
        if pub is not None:
            glob["public_interface"] = pub.value
            self.note(("global", "public_interface"), pub.line, "lb_public_interface")
        elif first_dev is not None:
            glob["public_interface"] = first_dev[0]
            self.note(("global", "public_interface"), first_dev[1], first_dev[2])
        else:
            line = top.children[0].line if top.children else None
            fld = f"virtual[{top.children[0].name}].address" if top.children else "virtual"
            self.issues.add(line, fld, "cannot tell the public interface: give a virtual's "
                            "device (address = IP DEVICE[:N]) or set lb_public_interface")
            self.note(("global", "public_interface"), line, fld)
        for vs in vss:
            if vs.get("device") is not None and vs["device"] == glob.get("public_interface"):
                del vs["device"]
        if vss:
            doc["virtual_server"] = vss
        return doc

    def _global_warnings(self, g: _Scope, top: _Block, with_ha: bool) -> None:
        """The global keys lb accepts (they are written back by dumps) but that do nothing here."""
        sync = ("lb syncs connections to the backup over its own heartbeat channel (lb_ha_sync, on by "
                "default)" if with_ha else "connection sync needs a backup director (backup_active = 1)")
        no_effect = {
            "debug_level": "no effect: lb logs to stderr (the journal under systemd); `lb run -v` adds "
                           "debug messages",
            "reservation_conflict_action": "no effect: a setting of clumanager's shared SCSI disks, not of LVS",
            **{k: f"no effect: {sync}; IPVS's sync daemon is not used" for k in ("syncdaemon", "syncd_iface",
                                                                                "syncd_id")},
            "hard_shutdown": "no effect: Piranha's lvsd stopped every virtual service when a nanny (the "
                             "process checking one real server) died (1, its default), or logged it and "
                             "ran on (0); lb checks the real servers itself, with no nanny processes",
            "active_cmd": "no effect: Piranha's pulse ran this command (split at blanks, no shell) when the "
                          "director became active; lb runs [ha] notify programs on role changes instead "
                          "(lb_ha_notify, with backup_active = 1), the new role their first argument",
            "inactive_cmd": "no effect: Piranha's pulse ran this command (split at blanks, no shell) at its "
                            "start and when the director became inactive; lb runs [ha] notify programs on "
                            "role changes instead (lb_ha_notify, with backup_active = 1), the new role their "
                            "first argument",
            "ipvsadm": "no effect: the ipvsadm program Piranha's lvsd, nanny and pulse ran; lb programs the "
                       "XDP data plane, or IPVS over netlink (lb_dataplane = ipvs), itself",
            "sync": "no effect: Piranha read it (syncing files over rsh_command) but never used it; lb's "
                    "backup director takes the active one's configuration when it is newer (serial_no)",
            **{k: "no effect: the shared SCSI device of Piranha's failover services (service = fos), "
                  "which lb does not run" for k in ("primary_shared", "backup_shared")},
        }
        for key, message in no_effect.items():
            if key in g.entries:
                self.warn(g, key, message)
        if "rsh_command" in g.entries and not any(
                e.key == "load_monitor" and e.value == "uptime" for vb in top.children for e in vb.entries):
            self.warn(g, "rsh_command", "no effect: only load_monitor = uptime runs a command over it, and "
                                        "no virtual has it")
        if not with_ha:
            keys = sorted((k for k in HA_CF if k != "backup_active" and k in g.entries),
                          key=lambda k: g.entries[k].line)
            if keys:
                also = f" (nor have {', '.join(keys[1:])})" if keys[1:] else ""
                self.warn(g, keys[0], f"no effect without backup_active = 1{also}: this director runs alone, "
                                      f"always active, without heartbeats; for a pair of directors set "
                                      f"backup_active = 1 and lb_ha_key_file")

    def _table(self, doc: dict[str, Any], name: str, g: _Scope, keys: dict[str, str],
               read: Callable[[str, str], Any]) -> None:
        """doc[name] from the global keys ``keys`` (lvs.cf key -> its key there), each read by
        ``read(lvs.cf key, key)``; no table when none is set."""
        table: dict[str, Any] = {}
        for cf, key in keys.items():
            value = read(cf, key)
            if value is not None:
                table[key] = value
            self.note((name, key), g.line(cf), cf)
        if table:
            doc[name] = table

    def _nat_prefix6(self, g: _Scope) -> int | None:
        """nat_nmask of an IPv6 nat_router: a prefix length (64 or /64), required (Piranha's
        default, 255.255.255.0, is an IPv4 netmask)."""
        e = g.entries.get("nat_nmask")
        if e is None:
            nat = g.entries["nat_router"]
            self.issues.add(nat.line, "nat_nmask", "an IPv6 nat_router needs nat_nmask = PREFIX LENGTH "
                            "(e.g. nat_nmask = 64): Piranha's default 255.255.255.0 is an IPv4 netmask")
            return None
        prefix = parse_prefix_length(e.value)
        if prefix is None:
            g.error(e, f"'{e.value}' is an IPv4 netmask but nat_router is IPv6: give a prefix length "
                       f"1..128 (e.g. 64)" if "." in e.value else
                       f"expected an IPv6 prefix length 1..128 (64 or /64), got {e.value!r}")
        return prefix

    def _ha(self, g: _Scope) -> dict[str, Any]:
        """backup_active = 1: Piranha's HA keys plus lb_ha_* -> the [ha] table."""
        ha: dict[str, Any] = {}
        self.note(("ha",), g.line("backup_active"), "backup_active")

        def take(key: str, cf: str, value: Any) -> None:
            if value is not None:
                ha[key] = value
            self.note(("ha", key), g.line(cf), cf)

        for key in ("primary", "primary_private", "backup", "backup_private"):
            take(key, key, g.extra(key, "ip"))
        hb_on = g.boolean("heartbeat")
        if hb_on is False:
            g.error(g.entries["heartbeat"], "heartbeat = 0 with backup_active = 1: lb's failover needs heartbeats")
        take("heartbeat_port", "heartbeat_port", _port(g, "heartbeat_port", "tcp"))
        for key in ("keepalive", "deadtime"):
            exact = _seconds(g, f"lb_ha_{key}")
            piranha = _seconds(g, key)  # type-checked even where lb_ha_* wins
            if exact is None and piranha is None and key == "deadtime" and key not in g.entries:
                piranha = PULSE_DEADTIME  # pulse's own default, not lb's [ha] one
            take(key, f"lb_ha_{key}" if exact is not None else key, exact if exact is not None else piranha)
        take("monitor_links", "monitor_links", g.boolean("monitor_links"))
        kf = g.entries.get("lb_ha_key_file")
        take("key_file", "lb_ha_key_file", kf.value if kf is not None else str(DEFAULT_HA_KEY_FILE))
        if kf is None:
            self.note(("ha", "key_file"), g.line("backup_active"), "lb_ha_key_file")
            self.warn(g, "backup_active", key_file_warning("lb_ha_key_file"))
        take("preempt", "lb_ha_preempt", g.boolean("lb_ha_preempt"))
        take("sync", "lb_ha_sync", g.boolean("lb_ha_sync"))
        take("garp_count", "lb_ha_garp_count", g.integer("lb_ha_garp_count"))
        take("sync_rate", "lb_ha_sync_rate", g.integer("lb_ha_sync_rate"))
        take("sync_port", "lb_ha_sync_port", g.integer("lb_ha_sync_port"))
        take("script_user", "lb_ha_script_user", g.text("lb_ha_script_user"))
        for key in LB_HA_SECONDS:
            if key not in ("keepalive", "deadtime"):
                take(key, f"lb_ha_{key}", _seconds(g, f"lb_ha_{key}"))
        notify = g.entries.get("lb_ha_notify")
        take("notify", "lb_ha_notify",
             [p.strip() for p in notify.value.split(",") if p.strip()] if notify is not None else None)
        return ha

    def _bgp(self, g: _Scope) -> dict[str, Any]:
        """lb_bgp_* -> the [bgp] table (values as written: the validator checks them)."""
        bgp: dict[str, Any] = {}
        self.note(("bgp",), next(g.line(k) for k in LB_BGP_KEYS if k in g.entries), "lb_bgp_local_as")
        for cf, key in LB_BGP_SCALARS.items():
            if key in ("local_as", "hold_time"):
                value: Any = g.integer(cf)
            elif key in ("lease", "drain", "settle"):
                value = _seconds(g, cf)
            else:
                value = g.text(cf)
            if value is not None:
                bgp[key] = value
            self.note(("bgp", key), g.line(cf), cf)
        for cf, key, parse in (("lb_bgp_neighbors", "neighbor", _bgp_neighbor), ("lb_bgp_vips", "vip", _bgp_vip)):
            e = g.entries.get(cf)
            self.note(("bgp", key), e.line if e else g.line("lb_bgp_local_as"), cf)
            items = []
            for item in (x.strip() for x in (e.value.split(",") if e else ()) if x.strip()):
                parsed = parse(item)
                if isinstance(parsed, str):
                    g.error(e, parsed)
                    continue
                self.note(("bgp", key, len(items)), e.line, cf)
                items.append(parsed)
            if items:
                bgp[key] = items
        return bgp

    def _virtual(self, i: int, vb: _Block) -> tuple[dict[str, Any], tuple[str, int, str] | None]:
        label = _label(vb)
        v = _Scope(vb, VIRTUAL_KEYS, label, self.issues)
        tf: FieldPath = ("virtual_server", i)
        self.note(tf, vb.line, label)
        self.note(tf + ("name",), vb.line, label)
        out: dict[str, Any] = {"name": vb.name}
        vx: dict[str, Any] = {}
        addr = v.entries.get("address")
        v6 = addr is not None and _is_ipv6((addr.value.split() or [""])[0])
        for key, kind in VIRTUAL_EXTRAS.items():
            if key == "vip_nmask" and v6 and key in v.entries:
                val = _vip_prefix6(v)   # an IPv6 VIP's is a prefix length, as pmask and nat_nmask
            else:
                val = v.extra(key, kind)
            if val is not None:
                vx[key] = val
        if v6 and "." in str(vx.get("vip_nmask", "")):
            self.warn(v, "vip_nmask", f"no effect: an IPv4 netmask ({vx['vip_nmask']}) on an IPv6 virtual "
                                      f"server; lb adds the VIP as a host address (/128)")
        elif v6 and vx.get("vip_nmask", "128") != "128":
            self.warn(v, "vip_nmask", f"no effect: lb adds the VIP as a host address (/128), not with "
                                      f"prefix length {vx['vip_nmask']}")
        elif not v6 and vx.get("vip_nmask", "255.255.255.255") != "255.255.255.255":
            self.warn(v, "vip_nmask", f"no effect: lb adds the VIP as a host address (/32), not with "
                                      f"netmask {vx['vip_nmask']}")
        if "client_monitor" in vx:
            self.warn(v, "client_monitor", f"no effect: the program Piranha's lvsd ran, with nanny's "
                                           f"options, to check each real server ({vx['client_monitor']}; "
                                           f"/usr/sbin/nanny unless set); lb checks them itself as the "
                                           f"block's send, expect and send_program say")
        for key in ("master", "dirs"):
            if key in vx:
                self.warn(v, key, "no effect: Piranha read it (the node and the files of a mirroring it "
                                  "never did, left out of its lvs.cf(5)) but never used it")
        for key, what in (("start_cmd", "start"), ("stop_cmd", "stop")):
            if key in vx:
                self.warn(v, key, f"no effect: Piranha's fos ran it to {what} a failover service (a "
                                  f"failover block, service = fos); in a virtual block its lvsd ignored it, "
                                  f"as lb does")
        # firewall-mark services: Piranha's fwmark (iptables marked the packets); lb matches the
        # ports itself, listed in lb_port_groups = "tcp 198.18.0.11 21, tcp 198.18.0.11 10000-10100"
        if "fwmark" in v.entries:
            fwm = v.integer("fwmark")
            # refused, still a firewall-mark service: as written, so that the validator's error is
            # the fwmark's (dropped as said already), not address, port or lb_port_groups ones
            out["fwmark"] = fwm if fwm is not None else v.entries["fwmark"].value
            self.note(tf + ("fwmark",), v.line("fwmark"), v.fld("fwmark"))
            groups = []
            for item in (v.entries["lb_port_groups"].value.split(",") if "lb_port_groups" in v.entries else []):
                words = item.split()
                if len(words) != 3:
                    v.error(v.entries["lb_port_groups"], f"expected 'protocol address ports', got {item.strip()!r}")
                    continue
                groups.append({"protocol": words[0], "address": words[1], "ports": words[2]})
            if groups:
                out["port_group"] = groups
            self.note(tf + ("port_group",), v.line("lb_port_groups"), v.fld("lb_port_groups"))
        elif "lb_port_groups" in v.entries:
            v.error(v.entries["lb_port_groups"], "lb_port_groups needs fwmark")
        if "lb_scheduler_flags" in v.entries:
            out["scheduler_flags"] = [f.strip() for f in v.entries["lb_scheduler_flags"].value.split(",") if f.strip()]
            self.note(tf + ("scheduler_flags",), v.line("lb_scheduler_flags"), v.fld("lb_scheduler_flags"))
        if "lb_mh_size" in v.entries:
            size = v.integer("lb_mh_size")
            if size is not None:
                out["mh_size"] = size
            self.note(tf + ("mh_size",), v.line("lb_mh_size"), v.fld("lb_mh_size"))
        dev_info = None
        fwm = "fwmark" in v.entries
        ad = v.addr_dev("address")
        if ad is not None:
            ip, dev, raw = ad
            line = v.line("address")
            host = v.host("address", ip)
            if fwm:  # Piranha wrote the VIP of a firewall-mark virtual too: its device is the one used
                if host is not None:
                    vx["address"] = host
            else:
                if host is not None:
                    out["address"] = host
                self.note(tf + ("address",), line, v.fld("address"))
            if dev is not None:
                out["device"] = dev
                self.note(tf + ("device",), line, v.fld("address"))
                dev_info = (dev, line, v.fld("address"))
                if raw != dev:
                    vx["address_alias"] = raw
        proto = v.entries["protocol"].value if "protocol" in v.entries else "tcp"
        check_port = None
        if fwm:
            check_port = self._fwmark_piranha_keys(v, vx, proto, out.get("port_group", []))
        elif "port" not in v.entries:
            out["port"] = DEFAULT_PORT  # Piranha's when a virtual names no port
        for key, getter in (("port", lambda: None if fwm else _port(v, "port", proto)),
                            ("persistent", lambda: v.integer("persistent")),
                            ("active", lambda: v.boolean("active"))):
            val = getter()
            if val is not None:
                out[key] = val
            self.note(tf + (key,), v.line(key), v.fld(key))
        self._active_default(out, v, "virtual")
        # an IPv4 service's pmask (an IPv6 one's is a prefix length: 64, not inet_aton's 0.0.0.64)
        groups = out.get("port_group", [])
        v4 = not v6 and (not fwm or (bool(groups) and not any(":" in g["address"] for g in groups)))
        for key in ("protocol", "scheduler", "pmask", "sorry_server"):
            if key == "pmask" and v4 and key in v.entries and inet_aton(v.entries[key].value) == ZERO_ADDRESS:
                # lvs passed -M only for a non-zero pmask: 0.0.0.0 (or 0, as inet_aton read it) was
                # ipvsadm's default, one template per client -- not one shared by every client
                self.warn(v, key, f"{v.entries[key].value!r} is one persistence template per client, as in "
                                  f"Piranha (lvs passed ipvsadm no -M for a zero pmask: its default, "
                                  f"255.255.255.255); pmask = /0 is one template for all clients")
                self.note(tf + (key,), v.line(key), v.fld(key))
                continue
            if key in v.entries and not (fwm and key == "protocol"):
                out[key] = v.entries[key].value
                if key == "pmask" and v4 and parse_netmask(out[key]) is None and v.aton(key) is not None:
                    mask = v.aton_mask(key)     # Piranha's inet_aton: 0xffffff00 is 255.255.255.0
                    if mask is None:
                        del out[key]            # said already
                    else:
                        out[key] = mask
                elif key == "sorry_server" and (aton := v.aton(key)) is not None:
                    out[key] = str(aton)        # Piranha's inet_aton: 10.1 is 10.0.0.1
                    v.read_as(key, out[key])
            self.note(tf + (key,), v.line(key), v.fld(key))
        qs = v.boolean("quiesce_server")
        if qs is not None:
            out["quiesce_server"] = qs
        self.note(tf + ("quiesce_server",), v.line("quiesce_server"), v.fld("quiesce_server"))
        # nanny's own check for a port-80 virtual that names none: its HTTP request (lvs passes the
        # virtual's port; a firewall-mark virtual's only where it names port 80: without a port line
        # its checks go to the first port group's port, see _fwmark_piranha_keys)
        port_e = v.entries.get("port")
        check80 = proto == "tcp" and (_port_number(port_e.value, proto) if port_e is not None
                                      else None if fwm else DEFAULT_PORT) == 80
        monitor = self._monitor(tf + ("monitor",), v, check80)
        if check_port is not None:
            monitor["port"] = check_port
            self.note(tf + ("monitor", "port"), v.line("port"), v.fld("port"))
        if monitor:
            out["monitor"] = monitor
        lm = self._load_monitor(tf + ("load_monitor",), v, vx)
        if lm:
            out["load_monitor"] = lm
        reals = []
        for j, sb in enumerate(vb.children):
            reals.append(self._server(tf + ("real_server", j), label, sb, proto))
            port_line = v.line("port")
            if (not fwm and port_line is not None and port_line > sb.line and reals[-1].get("active")
                    and "port" not in reals[-1] and out.get("port") not in (None, DEFAULT_PORT)):
                # lvsconfig.c gave a server block the virtual's port as read so far: 80 before the line
                self.warnings.append(ConfigIssue(
                    self.issues.display, sb.line, f"{label}.{_label(sb)}.port",
                    f"this server block comes before the virtual's port line (line {port_line}): Piranha gave "
                    f"it port {DEFAULT_PORT}, the virtual's port so far (nanny checked it there; with NAT its "
                    f"connections went there too); lb gives it the virtual's port, {out['port']}"))
        if reals:
            out["real_server"] = reals
        if vx:
            self.extras["virtual"][vb.name] = vx
        return out, dev_info

    def _active_default(self, out: dict[str, Any], scope: _Scope, kind: str) -> None:
        """No ``active`` line: Piranha's default, 0 (lvsconfig.c zeroes the block; lvs starts neither a
        virtual nor a real server without active = 1), said with the block's line."""
        if "active" in scope.entries:
            return
        out["active"] = False
        what = ("lvs does not start a virtual server" if kind == "virtual" else
                "lvs does not add a real server")
        self.warnings.append(ConfigIssue(self.issues.display, scope.block.line, scope.fld("active"),
                                         f"no 'active' line: off, as in Piranha ({what} without active = 1); "
                                         f"add active = 1 to run it"))

    def _monitor(self, mf: FieldPath, v: _Scope, port80: bool = False) -> dict[str, Any]:
        """The ``[virtual_server.monitor]`` table of one virtual block (empty: the default monitor);
        ``port80``: a TCP virtual on port 80, which nanny checks with an HTTP request when the block
        names no check of its own."""
        self.note(mf, v.block.line, v.prefix)
        escaped = bool(v.boolean("lb_monitor_escaped"))

        def text(key: str) -> str | None:
            e = v.entries.get(key)
            if e is None:
                return None
            return _unescape(e.value) if escaped else e.value

        m: dict[str, Any] = {}

        def take(fld: str, key: str, value: Any) -> None:
            self.note(mf + (fld,), v.line(key), v.fld(key))
            if value is not None:
                m[fld] = value

        program, send, expect = text("send_program"), text("send"), text("expect")
        if port80 and not (program or send or expect) and "lb_monitor_kind" not in v.entries:
            send, expect = NANNY_HTTP_SEND, NANNY_HTTP_EXPECT
            for key in ("send", "expect", "kind"):
                self.note(mf + (key,), v.line("port") or v.block.line, v.fld("port"))
        use_regex = v.boolean("use_regex")
        if use_regex and expect:
            expect = posix_classes(expect)  # nanny's regcomp took [[:digit:]]; Python's re does not
        elif expect == "*" and not program:
            # nanny's wildcard: any reply at all (it reads one byte and takes it); as a literal '*'
            # no real server would ever pass
            expect, use_regex = ANY_REPLY, True
        take("program", "send_program", program)
        take("send", "send", send)
        take("expect", "expect", expect)
        take("use_regex", "use_regex", use_regex)
        implied = "program" if program else "send_expect" if send or expect else "tcp"
        kind = v.entries.get("lb_monitor_kind")
        take("kind", "lb_monitor_kind", kind.value if kind is not None else None if implied == "tcp" else implied)
        if kind is None and implied != "tcp":  # errors about the kind belong to the key that implied it
            key = "send_program" if implied == "program" else "send" if send else "expect"
            self.note(mf + ("kind",), v.line(key), v.fld(key))
        for k in LB_MONITOR_STRINGS:
            take(k, f"lb_monitor_{k}", text(f"lb_monitor_{k}"))
        for k in ("timeout", "reentry"):  # Piranha's integers; lb_monitor_* (any number) wins
            lb_value = _seconds(v, f"lb_monitor_{k}")
            if f"lb_monitor_{k}" in v.entries:
                take(k, f"lb_monitor_{k}", lb_value)
                v.integer(k)  # still type-check the Piranha key
            elif k == "reentry" and v.integer(k) == 0:
                # nanny takes -a 0 as its default, 180 s: a server came back after 180 s, not at once
                take(k, k, DEFAULT_REENTRY)
                self.warn(v, k, f"reentry = 0 is {DEFAULT_REENTRY:g} s, as in Piranha (nanny took 0 as its "
                                f"default); lb_monitor_reentry = 0 takes a server back at its first "
                                f"successful check")
            else:
                take(k, k, v.integer(k))
        for k in ("interval", "connect_timeout"):
            take(k, f"lb_monitor_{k}", _seconds(v, f"lb_monitor_{k}"))
        take("port", "lb_monitor_port", v.integer("lb_monitor_port"))
        take("tls_verify", "lb_monitor_tls_verify", v.boolean("lb_monitor_tls_verify"))
        quiesce = v.boolean("lb_monitor_quiesce")
        if quiesce is None and v.boolean("quiesce_server"):
            # nanny -q: a server that fails its check gets weight 0 (its connections stay) instead of
            # being removed -- lb's Monitor.quiesce; lb_monitor_quiesce = 0 says otherwise
            m["quiesce"] = True
            self.note(mf + ("quiesce",), v.line("quiesce_server"), v.fld("quiesce_server"))
        else:
            take("quiesce", "lb_monitor_quiesce", quiesce)
        take("script_user", "lb_monitor_script_user", v.text("lb_monitor_script_user"))
        status = v.entries.get("lb_monitor_status")
        pair = None
        if status is not None:
            sm = re.fullmatch(r"(\d{1,3})\s*-\s*(\d{1,3})", status.value)
            if sm and 100 <= int(sm.group(1)) <= int(sm.group(2)) <= 599:
                pair = [int(sm.group(1)), int(sm.group(2))]
            else:
                v.error(status, f"expected LOWEST-HIGHEST HTTP status (100..599), e.g. 200-399, got {status.value!r}")
        take("status", "lb_monitor_status", pair)
        return m

    def _fwmark_piranha_keys(self, v: _Scope, vx: dict[str, Any], proto: str,
                             groups: list[dict[str, Any]]) -> int | None:
        """A firewall-mark virtual as Piranha wrote it: address, port and protocol beside fwmark (an
        iptables rule marked the packets).  lb matches the ports of lb_port_groups itself: the three
        are kept for writing back; without lb_port_groups the file is refused with an example.
        Piranha's nanny checked the real servers on ``port``: when it is not the first port group's
        (the port lb's checks take), it is returned, the monitor's port (unless lb_monitor_port)."""
        keys = [k for k in ("address", "port", "protocol") if k in v.entries]
        check = None
        if "port" in v.entries and "lb_monitor_port" not in v.entries and groups:
            low = str(groups[0]["ports"]).split("-")[0].strip()
            port = _port(v, "port", proto)
            if port is not None and low.isdigit() and int(low) != port:
                check = port
                keys.remove("port")
        for k in ("port", "protocol"):
            if k in v.entries:
                vx[k] = v.entries[k].value
        if "lb_port_groups" not in v.entries:
            port = _port(v, "port", proto) if "port" in v.entries else None
            example = f"{proto} {vx.get('address', 'VIP')} {port or 'PORT'}"
            self.issues.add(v.line("fwmark"), v.fld("lb_port_groups"),
                            f"lb matches a firewall-mark service's ports itself (no iptables rule marks the "
                            f"packets): list the ports your iptables rules marked with fwmark "
                            f"{v.entries['fwmark'].value} in lb_port_groups, e.g. lb_port_groups = "
                            f"{example}, {proto} {vx.get('address', 'VIP')} LOW-HIGH")
        elif keys:
            self.warn(v, keys[0], f"{', '.join(keys)}: no effect on a firewall-mark service: lb matches the "
                                  f"ports of lb_port_groups" + ("; the address's device carries the VIPs"
                                                                if "address" in keys else ""))
        return check

    def _load_monitor(self, lf: FieldPath, v: _Scope, vx: dict[str, Any]) -> dict[str, Any]:
        """``[virtual_server.load_monitor]`` from load_monitor = uptime|rup and lb_load_monitor_*."""
        lm: dict[str, Any] = {}
        self.note(lf, v.line("load_monitor") or v.block.line, v.fld("load_monitor"))
        word = v.entries.get("load_monitor")
        if word is not None:
            if word.value not in LOAD_MONITOR_WORDS:
                v.error(word, f"expected one of {', '.join(LOAD_MONITOR_WORDS)}, got {word.value!r}")
            elif word.value == "ruptime":
                # accepted, so that the file runs: only the weights stop following the servers' load
                vx["load_monitor"] = "ruptime"
                self.warn(v, "load_monitor", "ruptime has no effect: rwhod reports hosts by name, not by the "
                          "real server's address, so the configured weights stay; for load-based weights use "
                          "uptime (over rsh_command), rup (rpc.rstatd) or an agent (lb_load_monitor_kind = "
                          "agent, lb_load_monitor_port = PORT)")
            elif word.value == "uptime":
                rsh = self.extras["global"].get("rsh_command", "rsh")
                lm.update(kind="program", program=f"{rsh} %h uptime")
            elif word.value == "rup":
                lm.update(kind="program", program=LOAD_MONITOR_RUP)
            for k in ("kind", "program"):
                self.note(lf + (k,), word.line, v.fld("load_monitor"))
        for k in LB_LOAD_MONITOR_FIELDS:
            key = f"lb_load_monitor_{k}"
            if key not in v.entries:
                continue
            if k in ("port", "min_weight"):
                val: Any = v.integer(key)
            elif k in ("interval", "timeout"):
                val = _seconds(v, key)
            else:
                val = v.entries[key].value
            if val is not None:
                lm[k] = val
            self.note(lf + (k,), v.line(key), v.fld(key))
        return lm

    def _server(self, tf: FieldPath, vlabel: str, sb: _Block, proto: str) -> dict[str, Any]:
        label = f"{vlabel}.{_label(sb)}"
        s = _Scope(sb, SERVER_KEYS, label, self.issues)
        self.note(tf, sb.line, label)
        self.note(tf + ("name",), sb.line, label)
        out: dict[str, Any] = {"name": sb.name}
        host = s.host("address") if "address" in s.entries else None
        if host is not None:
            out["address"] = host
        self.note(tf + ("address",), s.line("address"), s.fld("address"))
        for key, val in (("port", _port(s, "port", proto)), ("weight", s.integer("weight")),
                         ("active", s.boolean("active"))):
            if val is not None:
                out[key] = val
            self.note(tf + (key,), s.line(key), s.fld(key))
        self._active_default(out, s, "server")
        if out.get("weight") == 0 and out.get("active"):
            # nanny's first weight for a server that passes its check is weight >> 5, at least 1
            self.warn(s, "weight", "weight = 0: Piranha's nanny still added this server, at weight 1 (the "
                                   "weight it starts a server at is never below 1); lb gives it weight 0, no "
                                   "new connections (a sorry server stands in when no server has a weight): "
                                   "write weight = 1 to run it as Piranha did")
        for key in ("u_threshold", "l_threshold"):
            val = s.integer(f"lb_{key}")
            if val is not None:
                out[key] = val
            self.note(tf + (key,), s.line(f"lb_{key}"), s.fld(f"lb_{key}"))
        return out


def _parse(text: str, display: str, path: Path | None = None, *,
           dataplane: str | None = None) -> tuple[Config, dict[str, Any]]:
    _toml.check_size(text, display)
    issues = _Issues(display)
    top = _parse_blocks(text, issues)
    issues.raise_if_any()  # the block structure is unreliable: report it alone, like a syntax error
    b = _Builder(issues)
    doc = b.build(top)
    cfg: Config | None = None
    try:
        cfg = _toml.validate(doc, display, b.positions, path,
                             sorted(b.warnings, key=lambda w: w.line or 0), dataplane=dataplane)
    except ConfigError as e:
        # a value this reader refused is missing from the document: one message per field
        seen = {i.field for i in issues.items}
        for issue in e.issues:
            if issue.field not in seen:
                issues.items.append(issue)
                seen.add(issue.field)
    issues.raise_if_any()
    assert cfg is not None
    return cfg, b.extras


# --- public API --------------------------------------------------------------------------


def loads_with_extras(text: str, path: str = "<string>", *,
                      dataplane: str | None = None) -> tuple[Config, dict[str, Any]]:
    """Parse lvs.cf ``text`` (for ``dataplane``: `lb run --dataplane`; None: the file's); return
    the Config and the keys the model cannot hold.

    extras = {"global": {key: value}, "virtual": {virtual name: {key: value}}};
    values are int, bool (for 0/1 keys) or str.  ``nat_router_alias`` /
    ``address_alias`` keep a device alias such as ``eth1:1``.
    """
    return _parse(text, path, dataplane=dataplane)


def load_with_extras(path: str | os.PathLike[str], *,
                     dataplane: str | None = None) -> tuple[Config, dict[str, Any]]:
    """Read ``path`` (an lvs.cf); see :func:`loads_with_extras`."""
    display = os.fspath(path)
    text = _toml.read_text(path, display)
    # relative key and password files: relative to it
    return _parse(text, display, Path(path), dataplane=dataplane)


def loads(text: str, path: str = "<string>", *, dataplane: str | None = None) -> Config:
    """Parse lvs.cf ``text`` (``path`` only names it in messages; ``dataplane`` as load's)."""
    return _parse(text, path, dataplane=dataplane)[0]


def load(path: str | os.PathLike[str], *, dataplane: str | None = None) -> Config:
    """Read and validate the lvs.cf at ``path`` for ``dataplane`` (`lb run --dataplane`; None:
    the file's lb_dataplane); raises ConfigError."""
    return load_with_extras(path, dataplane=dataplane)[0]


_CF_FIRST = re.compile(r"(?:%s)\s*=|(?:virtual|failover)\s+(?:server\s+)?\S+\s*\{" % "|".join(GLOBAL_KEYS))


def looks_like_lvscf(text: str) -> bool:
    """True when the first non-comment line is an lvs.cf global key or a virtual block."""
    for raw in text.splitlines():
        s = raw.strip()
        if s and not s.startswith("#"):
            return bool(_CF_FIRST.match(s))
    return False


def _bgp_words(item: str, usage: str, first: str, keys: dict[str, str]) -> dict[str, Any] | str:
    """'ADDRESS key value key value ...' -> {first: ADDRESS, keys[key]: value} (a repeated
    "community" collects a list); integers as int, the validator checks the rest."""
    words = item.split()
    if len(words) % 2 == 0:
        return f"expected {usage}, got {item!r}"
    out: dict[str, Any] = {first: words[0]}
    for key, value in zip(words[1::2], words[2::2]):
        fld = keys.get(key)
        if fld is None:
            return f"unknown word {key!r} in {item!r} (expected {usage})"
        v: Any = int(value) if _INT_RE.fullmatch(value) and len(value) <= _toml.MAX_INT_DIGITS else value
        if fld == "communities":
            out.setdefault(fld, []).append(value)
        elif fld in out:
            return f"{key!r} is given twice in {item!r}"
        else:
            out[fld] = v
    return out


def _bgp_neighbor(item: str) -> dict[str, Any] | str:
    return _bgp_words(item, "'ADDRESS as AS [local ADDRESS]'", "address", {"as": "peer_as", "local": "local_address"})


def _bgp_vip(item: str) -> dict[str, Any] | str:
    return _bgp_words(item, "'VIP [med N] [community ASN:VALUE]...'", "address", {"med": "med", "community": "communities"})


def _bgp_cf(bgp: Bgp) -> dict[str, Any]:
    """lvs.cf keys that read back as ``bgp`` (the scalars when not the default)."""
    d = Bgp(local_as=bgp.local_as, neighbors=())
    out: dict[str, Any] = {}
    for cf, key in LB_BGP_SCALARS.items():
        v = getattr(bgp, key)
        if key == "local_as" or (v is not None and v != getattr(d, key)):
            out[cf] = _fmt_seconds(v) if isinstance(v, float) else str(v) if key == "router_id" else v
    out["lb_bgp_neighbors"] = ", ".join(
        f"{n.address} as {n.peer_as}" + (f" local {n.local_address}" if n.local_address else "") for n in bgp.neighbors)
    if bgp.vips:
        out["lb_bgp_vips"] = ", ".join(
            " ".join([str(v.address)] + ([f"med {v.med}"] if v.med is not None else [])
                     + [f"community {c}" for c in v.communities]) for v in bgp.vips)
    return out


# --- model -> lvs.cf --------------------------------------------------------------------------


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if key in QUOTED or (key in QUOTED_IF_BLANK and any(ch.isspace() for ch in str(value))):
        return f'"{value}"'
    return str(value)


def _monitor_cf(m: Monitor, user: str, quiesce_server: bool = False, port80: bool = False) -> dict[str, Any]:
    """lvs.cf keys (formatted values) that read back as ``m``: Piranha's, then lb_monitor_* as needed
    (``user``: the global script_user the monitor's defaults to; ``quiesce_server``: the virtual's,
    which makes quiesce the default, as nanny -q; ``port80``: the block reads as a TCP port-80
    virtual, whose check without send/expect is nanny's HTTP request)."""
    d = Monitor(script_user=user, quiesce=quiesce_server)
    strings = {"send_program": m.program, "send": m.send, "expect": m.expect,
               "lb_monitor_path": m.path if m.path != d.path else "",
               "lb_monitor_host": m.host, "lb_monitor_body_regex": m.body_regex,
               "lb_monitor_digest": m.digest or None}
    escaped = any(_needs_escape(v) for v in strings.values() if v)
    out: dict[str, Any] = {}
    for key in ("send", "expect"):
        if strings[key]:
            out[key] = _escape(strings[key]) if escaped else strings[key]
    if m.use_regex:
        out["use_regex"] = True
    if m.program:
        out["send_program"] = _escape(m.program) if escaped else m.program
    lb: dict[str, Any] = {}
    for key in ("timeout", "reentry"):
        value = getattr(m, key)
        if value != getattr(d, key):
            out[key] = max(math.ceil(value), 1 if key == "timeout" else 0)  # Piranha wants integers
            # a fraction, timeout 0 (the first failed check: Piranha's least is 1) or reentry 0 (which
            # Piranha's key reads as 180 s)
            if out[key] != value or value == 0:
                lb[f"lb_monitor_{key}"] = _fmt_seconds(value)
    implied = "program" if m.program else "send_expect" if m.send or m.expect else "tcp"
    if m.kind != implied or (port80 and implied == "tcp"):  # else read back as nanny's HTTP check
        lb["lb_monitor_kind"] = m.kind
    for key in LB_MONITOR_STRINGS:
        v = strings[f"lb_monitor_{key}"]
        if v is not None and (key != "path" or m.path != d.path):
            lb[f"lb_monitor_{key}"] = _escape(v) if escaped else v
    if m.status != d.status:
        lb["lb_monitor_status"] = f"{m.status[0]}-{m.status[1]}"
    if m.tls_verify != d.tls_verify:
        lb["lb_monitor_tls_verify"] = m.tls_verify
    if m.port is not None:
        lb["lb_monitor_port"] = m.port
    for key in ("interval", "connect_timeout"):
        if getattr(m, key) != getattr(d, key):
            lb[f"lb_monitor_{key}"] = _fmt_seconds(getattr(m, key))
    if m.quiesce != d.quiesce:
        lb["lb_monitor_quiesce"] = m.quiesce
    if m.script_user != d.script_user:
        lb["lb_monitor_script_user"] = m.script_user
    if escaped:
        lb["lb_monitor_escaped"] = True
    return {**out, **dict(sorted(lb.items(), key=lambda kv: LB_MONITOR_KEYS.index(kv[0])))}


def _load_monitor_cf(lm: LoadMonitor | None, rsh: str, user: str) -> dict[str, Any]:
    """load_monitor = uptime|rup when the program is Piranha's, plus lb_load_monitor_* for the rest
    (``user``: the global script_user)."""
    if lm is None:
        return {}
    out: dict[str, Any] = {}
    base = LoadMonitor(kind=lm.kind, script_user=user)
    if lm.kind == "program" and lm.program in (f"{rsh} %h uptime", LOAD_MONITOR_RUP):
        out["load_monitor"] = "rup" if lm.program == LOAD_MONITOR_RUP else "uptime"
        base = LoadMonitor(kind="program", program=lm.program, script_user=user)
    else:
        out["lb_load_monitor_kind"] = lm.kind
    for f in LB_LOAD_MONITOR_FIELDS[1:]:
        value = getattr(lm, f)
        if value != getattr(base, f):
            out[f"lb_load_monitor_{f}"] = _fmt_seconds(value) if f in ("interval", "timeout") else value
    return out


def _ha_cf(ha: HA, path: Path | None, user: str) -> dict[str, Any]:
    """lvs.cf keys that read back as ``ha``: Piranha's (always), lb_ha_* when not the default
    (``user``: the global script_user)."""
    d = totoml.ha_default(ha, user)
    out: dict[str, Any] = {"primary": str(ha.primary)}
    if ha.primary_private is not None:
        out["primary_private"] = str(ha.primary_private)
    out.update(backup_active=True, backup=str(ha.backup))
    if ha.backup_private is not None:
        out["backup_private"] = str(ha.backup_private)
    out.update(heartbeat=True, heartbeat_port=ha.heartbeat_port, monitor_links=ha.monitor_links)
    lb: dict[str, Any] = {"lb_ha_key_file": str(ha.key_file)}
    for key in ("keepalive", "deadtime"):
        value = getattr(ha, key)
        out[key] = max(math.ceil(value), 1)  # Piranha wants integers
        if not float(value).is_integer():
            lb[f"lb_ha_{key}"] = _fmt_seconds(value)
    for key in ("preempt", "sync", "garp_count", "sync_rate", "sync_port", "script_user"):
        if getattr(ha, key) != getattr(d, key):
            lb[f"lb_ha_{key}"] = getattr(ha, key)
    for key in LB_HA_SECONDS:
        if key not in ("keepalive", "deadtime") and getattr(ha, key) != getattr(d, key):
            lb[f"lb_ha_{key}"] = _fmt_seconds(getattr(ha, key))
    if ha.notify:
        if any("," in p for p in ha.notify):
            raise ConfigError([ConfigIssue(str(path or "<config>"), None, "ha.notify",
                                           "lvs.cf's lb_ha_notify is comma-separated: a notify path "
                                           "with ',' cannot be written")])
        lb["lb_ha_notify"] = ", ".join(ha.notify)
    return {**out, **dict(sorted(lb.items(), key=lambda kv: LB_HA_KEYS.index(kv[0])))}


def dumps(cfg: Config, extras: dict[str, Any] | None = None) -> str:
    """Render ``cfg`` (plus ``extras`` from :func:`load_with_extras`) as lvs.cf text; ConfigError
    when lvs.cf cannot say it."""
    extras = extras or {}
    gx: dict[str, Any] = dict(extras.get("global", {}))
    vxs: dict[str, dict[str, Any]] = extras.get("virtual", {})
    out: list[str] = []

    def put(indent: str, key: str, value: Any) -> None:
        out.append(f"{indent}{key} = {_fmt(key, value)}")

    def dev_text(dev: str, alias: str | None) -> str:
        return alias if alias and alias.split(":", 1)[0] == dev else dev

    if cfg.serial_no:
        put("", "serial_no", cfg.serial_no)
    order = ("primary", "primary_private", "service", "backup_active", "backup",
             "backup_private", "heartbeat", "heartbeat_port", "keepalive", "deadtime")
    ha_cf = _ha_cf(cfg.ha, cfg.path, cfg.script_user) if cfg.ha is not None else {}
    if ha_cf:
        gx = {k: v for k, v in gx.items() if k not in HA_CF}
    for key in order:
        if key in ha_cf:
            put("", key, ha_cf[key])
        elif key in gx:
            put("", key, gx[key])
    put("", "network", cfg.network)
    nat_dev = cfg.nat_device
    if cfg.nat_router is not None and nat_dev is not None:
        put("", "nat_router", f"{cfg.nat_router.ip} {dev_text(nat_dev, gx.get('nat_router_alias'))}")
        # IPv4: Piranha's dotted netmask; IPv6: the prefix length (as an IPv6 service's pmask)
        put("", "nat_nmask", cfg.nat_router.netmask if cfg.nat_router.version == 4
            else cfg.nat_router.network.prefixlen)
    elif "nat_nmask" in gx:
        put("", "nat_nmask", gx["nat_nmask"])
    for key in ("debug_level", "monitor_links", "syncdaemon", "syncd_iface", "syncd_id", "rsh_command",
                "reservation_conflict_action", "hard_shutdown", "active_cmd", "inactive_cmd", "ipvsadm", "sync",
                "primary_shared", "backup_shared"):
        if key in ha_cf:
            put("", key, ha_cf[key])
        elif key in gx:
            put("", key, gx[key])
    for cf, key in TIMEOUT_KEYS.items():
        if getattr(cfg.timeouts, key) != getattr(Timeouts(), key):
            put("", cf, getattr(cfg.timeouts, key))
    # lb extensions, only when the plain lvs.cf mapping would not give the model back
    if cfg.instance != "default":
        put("", "lb_instance", cfg.instance)
    if cfg.dataplane != DEFAULT_DATAPLANE:
        put("", "lb_dataplane", cfg.dataplane)
    if cfg.expire_nodest_conn:
        put("", "lb_expire_nodest_conn", 1)
    if cfg.script_user != DEFAULT_SCRIPT_USER:
        put("", "lb_script_user", cfg.script_user)
    for key in ("lblc_expiration", "lblcr_expiration"):
        if getattr(cfg, key) != DEFAULT_LBLC_EXPIRATION:
            put("", f"lb_{key}", getattr(cfg, key))
    first_dev = cfg.virtual_servers[0].device if cfg.virtual_servers else None
    if not cfg.virtual_servers or cfg.virtual_servers[0].fwmark or (
            first_dev is not None and first_dev != cfg.public_interface):
        put("", "lb_public_interface", cfg.public_interface)
    derived_priv = nat_dev if cfg.nat_router is not None else None
    if cfg.private_interface is not None and cfg.private_interface != derived_priv:
        put("", "lb_private_interface", cfg.private_interface)
    for cf, key in TABLE_KEYS.items():
        if getattr(cfg.tables, key) != getattr(Tables(), key):
            put("", cf, getattr(cfg.tables, key))
    for cf, key in DEFENSE_CF.items():
        if getattr(cfg.defense, key) != getattr(Defense(), key):
            put("", cf, getattr(cfg.defense, key))
    for key in LB_HA_KEYS:
        if key in ha_cf:
            put("", key, ha_cf[key])
    for cf, value in totoml.web_document(cfg.web).items():
        put("", f"lb_web_{cf}", ", ".join(value) if cf in LB_WEB_LISTS else value)
    for cf, value in totoml.metrics_document(cfg.metrics).items():
        put("", f"lb_metrics_{cf}", value)
    for cf, value in totoml.control_document(cfg.control).items():
        put("", f"lb_control_{cf}", value)
    for cf, value in (_bgp_cf(cfg.bgp) if cfg.bgp is not None else {}).items():
        put("", cf, value)

    for vs in cfg.virtual_servers:
        vx = vxs.get(vs.name, {})
        # Piranha's port line of a firewall-mark virtual, where it is written (see below)
        fw_port = vx.get("port") if vs.fwmark and "port" in vx and not (
            vs.monitor.port is None and vs.port_groups and
            _port_number(vx["port"], vs.protocol) != vs.port_groups[0].low) else None
        proto = vx.get("protocol", "tcp") if vs.fwmark else vs.protocol
        port80 = proto == "tcp" and ((_port_number(fw_port, proto) if fw_port is not None else None)
                                     if vs.fwmark else vs.port) == 80
        mon = _monitor_cf(vs.monitor, cfg.script_user, vs.quiesce_server, port80)
        out.append("")
        out.append(f"virtual {vs.name} {{")
        ind = "     "
        dev = cfg.vip_device(vs)
        put(ind, "active", vs.active)
        if vs.fwmark:
            if "address" in vx or vs.device is not None:  # Piranha's VIP line, for its device
                put(ind, "address", f"{vx.get('address', vs.address)} {dev_text(dev, vx.get('address_alias'))}")
            # Piranha's port is the checks' port unless lb_monitor_port is written or it is the
            # first group's (the loader's rule): left out where it would read back as another
            if fw_port is not None:
                put(ind, "port", fw_port)
            if "protocol" in vx:
                put(ind, "protocol", vx["protocol"])
            put(ind, "fwmark", vs.fwmark)
            put(ind, "lb_port_groups", ", ".join(
                f"{g.protocol} {g.address} {g.low if g.low == g.high else f'{g.low}-{g.high}'}"
                for g in vs.port_groups))
        else:
            put(ind, "address", f"{vs.address} {dev_text(dev, vx.get('address_alias'))}")
        if "vip_nmask" in vx:
            put(ind, "vip_nmask", vx["vip_nmask"])
        for key in ("client_monitor", "master", "dirs", "start_cmd", "stop_cmd"):
            if key in vx:
                put(ind, key, vx[key])
        if not vs.fwmark:
            put(ind, "port", vs.port)
        if vs.persistent:
            put(ind, "persistent", vs.persistent)
        if vs.pmask is not None:
            # one template for all clients: /0, as pmask = 0.0.0.0 is Piranha's per-client (no -M)
            put(ind, "pmask", "/0" if vs.pmask == "0.0.0.0" else vs.pmask)
        if vs.sorry_server is not None:
            put(ind, "sorry_server", sorry_text(vs.sorry_server))
        elif "sorry_server" in vx:
            put(ind, "sorry_server", vx["sorry_server"])
        for key in ("send", "expect", "use_regex", "send_program"):
            if key in mon:
                put(ind, key, mon[key])
        for key, value in _load_monitor_cf(vs.load_monitor, gx.get("rsh_command", "rsh"), cfg.script_user).items():
            put(ind, key, value)
        if vs.load_monitor is None and "load_monitor" in vx:
            put(ind, "load_monitor", vx["load_monitor"])
        put(ind, "scheduler", vs.scheduler)
        if vs.scheduler_flags:
            put(ind, "lb_scheduler_flags", ",".join(vs.scheduler_flags))
        if vs.scheduler == "mh" and vs.mh_size != DEFAULT_MH_SIZE:
            put(ind, "lb_mh_size", vs.mh_size)
        if not vs.fwmark:
            put(ind, "protocol", vs.protocol)
        for key in ("timeout", "reentry"):
            if key in mon:
                put(ind, key, mon[key])
        if vs.quiesce_server:
            put(ind, "quiesce_server", True)
        for key, value in mon.items():
            if key.startswith("lb_monitor_"):
                put(ind, key, value)
        for rs in vs.real_servers:
            out.append("")
            out.append(f"{ind}server {rs.name} {{")
            ind2 = ind * 2
            put(ind2, "address", rs.address)
            put(ind2, "active", rs.active)
            if rs.port is not None:
                put(ind2, "port", rs.port)
            put(ind2, "weight", rs.weight)
            if rs.u_threshold:
                put(ind2, "lb_u_threshold", rs.u_threshold)
            if rs.l_threshold:
                put(ind2, "lb_l_threshold", rs.l_threshold)
            out.append(f"{ind}}}")
        out.append("}")
    return "\n".join(out) + "\n"


def _anchors(lines: list[str]) -> list[tuple | None]:
    """What each line of an lvs.cf is, for :func:`keep_comments`: ("key", blocks, key), ("block",
    blocks), ("close", blocks) (blocks: the (kind, name) path of the block it is in or opens), None
    for a comment or blank line, ("other",) for what does not parse."""
    out: list[tuple | None] = []
    path: list[tuple[str, str]] = []
    for raw in lines:
        s = raw.strip()
        if not s or s.startswith("#"):
            out.append(None)
            continue
        m = _BLOCK_RE.fullmatch(s)
        if m:
            path.append((m.group(1), m.group(3) or m.group(2)))
            out.append(("block", tuple(path)))
        elif s == "}":
            out.append(("close", tuple(path)))
            if path:
                path.pop()
        else:
            k = _KEY_RE.fullmatch(s)
            out.append(("key", tuple(path), k.group(1)) if k else ("other",))
    return out


def keep_comments(old: str, new: str) -> str:
    """``new`` (an lvs.cf :func:`dumps` wrote for the file that held ``old``) with the comment lines
    of ``old`` put back, each run before the line it preceded there: the same key of the same block,
    the same block or its closing brace (a key gone: before its block's closing brace; a block
    gone: its comments too); the comments after the last line at the end.  Piranha's console kept
    an lvs.cf's comments when it saved (lvsMergeConfig); so does lb's."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    old_ids, new_ids = _anchors(old_lines), _anchors(new_lines)
    before: dict[tuple, list[str]] = {}  # a new line's anchor -> the comment lines to put before it
    head: list[str] = []  # the comments above the first line: the file's own, kept on top
    run: list[str] = []
    seen = False
    where = {a: i for i, a in enumerate(new_ids) if a is not None}
    for raw, a in zip(old_lines, old_ids):
        if a is None:
            if raw.strip():
                run.append(raw)
            continue
        if run and not seen:
            head = run
        elif run:
            target = a if a in where else ("close", a[1]) if a[0] == "key" and ("close", a[1]) in where else None
            if target is not None:
                before.setdefault(target, []).extend(run)
        run, seen = [], True
    tail = run
    if not before and not head and not tail:
        return new
    out: list[str] = list(head)
    for raw, a in zip(new_lines, new_ids):
        if a is not None and a in before:
            out.extend(before.pop(a))
        out.append(raw)
    out.extend(tail)
    return "\n".join(out) + "\n"


def export(cfg: Config, extras: dict[str, Any] | None = None) -> str:
    """:func:`dumps`, read back (`lb export`): ConfigError naming the source's file, line and field
    of each value the lvs.cf would not give back as it is, as store.prepare refuses a save: a
    director moved to the exported file must run what the source said."""
    text = dumps(cfg, extras)
    src = os.fspath(cfg.path) if cfg.path is not None else "<string>"
    try:
        again = _parse(text, src, cfg.path)[0]  # relative files: relative to the source, as the model has them
    except ConfigError as e:
        raise ConfigError([ConfigIssue(src, None, i.field, f"lvs.cf cannot hold this configuration: the exported "
                                                           f"file would not load (its line {i.line}: {i.message})")
                           for i in e.issues]) from None
    if _settled(again) == _settled(cfg):
        return text
    where = _source_positions(cfg.path)
    issues = []
    for path, mine, theirs in _differences(totoml.document(_settled(cfg)), totoml.document(_settled(again)), ()):
        line, name = where.where(path)
        said = "the default" if theirs is _UNSET else json.dumps(theirs)
        meant = "the default" if mine is _UNSET else json.dumps(mine)
        issues.append(ConfigIssue(where.file(path) or src, line, name, f"lvs.cf cannot hold this exactly: the "
                                                                       f"exported file would read back {said}, "
                                                                       f"not {meant}"))
    if not issues:
        issues.append(ConfigIssue(src, None, "", "lvs.cf cannot hold this configuration exactly (it would read "
                                                 "back otherwise)"))
    raise ConfigError(sorted(issues, key=lambda i: i.line or 0))


_UNSET = object()  # a key the document leaves out: the model's default


def _settled(cfg: Config) -> Config:
    """``cfg`` as a director runs it: a VIP's device or nat_router's that is the interface it would
    default to (lvs.cf leaves those out) is that interface; no file, no warnings."""
    return dataclasses.replace(
        cfg, path=None, warnings=(),
        nat_router_device=cfg.nat_device if cfg.nat_router is not None else cfg.nat_router_device,
        virtual_servers=tuple(dataclasses.replace(vs, device=cfg.vip_device(vs)) for vs in cfg.virtual_servers))


def _differences(a: Any, b: Any, path: FieldPath) -> list[tuple[FieldPath, Any, Any]]:
    """The paths where two documents (totoml.document) differ, with the two values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in [*a, *(k for k in b if k not in a)]
                for d in _differences(a.get(k, _UNSET), b.get(k, _UNSET), path + (k,))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, path + (i,))]
    return [] if a == b else [(path, a, b)]


class _Bare(_toml.Positions):
    """No file to look in: the field's name alone."""

    def where(self, path: FieldPath) -> tuple[int | None, str]:
        return None, _toml.field_name(path)


def _source_positions(path: Path | None) -> _toml.Positions:
    """Where each field of the document is written in the file ``path`` (TOML, lvs.cf or keepalived.conf)."""
    from . import format_of, keepalived

    if path is None:
        return _Bare()
    try:
        fmt = format_of(path)
        if fmt == "keepalived":
            return keepalived._positions(path)
        text = _toml.read_text(path, os.fspath(path))
    except ConfigError:  # changed since it was loaded: name the fields alone
        return _Bare()
    if fmt == "toml":
        return _toml.TomlPositions(text)
    issues = _Issues(os.fspath(path), resolve=False)     # the lines only: no name looked up
    b = _Builder(issues)
    b.build(_parse_blocks(text, issues))
    return b.positions


def dumps_toml(cfg: Config, extras: dict[str, Any] | None = None, *, source: str | None = None) -> str:
    """Render ``cfg`` as native TOML; ``extras`` (keys TOML cannot hold) and the warnings become comments."""
    head = []
    if source:
        head.append(f"Converted from {source} by `lb import`.")
    # not the *_alias entries: those are the device labels (eth0:1) of keys lb did take, and lb adds
    # its addresses without a label
    unused = [f"  {k} = {_fmt(k, v)}" for k, v in (extras or {}).get("global", {}).items()
              if not k.endswith("_alias")]
    unused += [f"  virtual {name}: {k} = {_fmt(k, v)}" for name, vx in (extras or {}).get("virtual", {}).items()
               for k, v in vx.items() if not k.endswith("_alias")]
    if unused:
        head.append("lvs.cf keys lb cannot use yet (kept here for reference only):")
        head += unused
    return totoml.dumps(cfg, head + totoml.warning_lines(cfg))
