"""The console's forms over the configuration document (the one lb.config.toml validates).

Each screen edits one table of the document (``[global]``, ``[ha]``, one ``[[virtual_server]]``,
its monitor, one real server ...).  A form field holds a key's value as text; :func:`apply` puts
the submitted text back into the document as the type the key takes -- or, when the text is not
one (``weight = "heavy"``), as the string itself, so that the validator refuses it with the very
message `lb check` gives for the file.  The validator's issues name fields by their TOML path
(``virtual_server[2].real_server[0].weight``); :func:`place` gives each issue to the form field
it is about, and the ones no field shows to the form's head.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from lb.config import toml as _toml
from lb.config.model import (DATAPLANES, LOAD_MONITOR_KINDS, MONITOR_KINDS, NETWORKS, PROTOCOLS, SCHEDULER_FLAGS,
                             SCHEDULERS)

_INT = re.compile(r"[+-]?[0-9]{1,19}")
_NUM = re.compile(r"[+-]?(?:[0-9]{1,19}(?:\.[0-9]{0,19})?|\.[0-9]{1,19})")


@dataclass(frozen=True)
class Field:
    key: str
    label: str
    kind: str = "text"          # text | int | number | bool | select | list | lines | status | groups | textarea
    choices: tuple[str, ...] = ()
    help: str = ""
    keep_empty: bool = False    # an empty text is "" (kept), not "absent"
    default: Any = None         # shown when the document leaves the key out (the model's default)
    escapes: bool = False       # shown and read with backslash escapes (escape, unescape: monitor send, expect)

    def name(self, prefix: str) -> str:
        return f"{prefix}.{self.key}"


# ---- the screens' fields, in Piranha's order where it had them ----

GLOBAL = (
    Field("public_interface", "Public interface", help="where clients reach the VIPs; XDP attaches here"),
    Field("network", "Network (LVS type)", "select", NETWORKS, "direct routing, NAT or tunneling"),
    Field("private_interface", "Private interface", help="facing the real servers (required with NAT)"),
    Field("nat_router", "NAT router IP/prefix", help="the real servers' floating gateway, e.g. 198.18.1.254/24"),
    Field("nat_router_device", "NAT router device", help="default: the private interface"),
    Field("dataplane", "Data plane", "select", DATAPLANES, "xdp, kernel ipvs, or auto (restart to change)"),
    Field("expire_nodest_conn", "Expire connections of removed real servers", "bool"),
    Field("lblc_expiration", "lblc expiration (s)", "int"),
    Field("lblcr_expiration", "lblcr expiration (s)", "int"),
    Field("script_user", "Script user", help="the user check, load-monitor and notify programs run as (default nobody)"),
)
TIMEOUTS = (
    Field("tcp", "TCP timeout (s)", "int"), Field("tcpfin", "TCP FIN timeout (s)", "int"),
    Field("udp", "UDP timeout (s)", "int"),
)
TABLES = (
    Field("connections", "Connections (IPv4)", "int", help="restart to change"),
    Field("connections_ipv6", "Connections (IPv6)", "int", help="default: a quarter of the IPv4 connections"),
    Field("services", "Services", "int"),
    Field("real_servers", "Real servers (total)", "int"), Field("reals_per_service", "Real servers per service", "int"),
    Field("embryonic", "Embryonic connections", "int",
          help="new connections before they are established (default: a quarter of connections)"),
)
DEFENSE = (
    Field("drop_entry", "drop_entry", "int", help="0 never, 1-2 while the embryonic table is nearly full, 3 always"),
    Field("drop_packet", "drop_packet", "int", help="as drop_entry"),
    Field("secure_tcp", "secure_tcp", "int", help="as drop_entry"),
    Field("amemthresh", "amemthresh (free embryonic entries)", "int", help="default: an eighth of the table"),
    Field("am_droprate", "am_droprate", "int", help="drop_packet 3: 1 in this many new connections' packets"),
    Field("icmp_msgs_per_sec", "Too-big answers per second", "int", help="tunnel; 0: none"),
    Field("icmp_msgs_burst", "Too-big answers' burst", "int"),
)
WEB = (
    Field("enabled", "Console enabled", "bool"),
    Field("listen", "Listen on", help="ADDRESS:PORT (default 127.0.0.1:3636)"),
    Field("password_file", "Password file"),
    Field("tls_cert", "TLS certificate"), Field("tls_key", "TLS key"),
    Field("allowed_hosts", "Allowed host names", "list", help="comma-separated"),
    Field("trusted_proxies", "Trusted proxies", "list", help="addresses or networks, comma-separated"),
    Field("session_lifetime", "Session lifetime (s)", "number"),
    Field("hsts", "Strict-Transport-Security", "bool",
          help="over HTTPS; browsers then use HTTPS for every port of the host name"),
)
CONTROL = (
    Field("admin_group", "Admin group", help="may edit through the control socket"),
    Field("read_group", "Read-only group"),
)
HA = (
    Field("primary", "Primary server public IP"), Field("backup", "Backup server public IP"),
    Field("primary_private", "Primary server private IP", help="the second heartbeat channel (optional)"),
    Field("backup_private", "Backup server private IP"),
    Field("key_file", "Shared key file", help="HMAC key both directors hold (mode 600)"),
    Field("heartbeat_port", "Heartbeat port", "int"),
    Field("sync_port", "Connection sync port", "int", help="UDP; default: the heartbeat port + 1"),
    Field("keepalive", "Heartbeat interval (s)", "number"), Field("deadtime", "Assume dead after (s)", "number"),
    Field("preempt", "Primary takes the VIPs back", "bool"),
    Field("preempt_delay", "Preempt delay (s)", "number",
          help="with preempt: how long a returning primary stays backup first (connections synced, checks run)"),
    Field("monitor_links", "Monitor NIC links", "bool"),
    Field("garp_count", "Gratuitous ARPs at takeover", "int"), Field("garp_interval", "GARP interval (s)", "number"),
    Field("garp_refresh", "GARP refresh (s)", "number"),
    Field("sync", "Connection sync", "bool", default=True), Field("sync_interval", "Sync interval (s)", "number"),
    Field("sync_rate", "Sync rate (entries/s)", "int"), Field("max_skew", "Max clock skew (s)", "number"),
    Field("notify", "Notify programs", "lines", help="run on role changes: an absolute path per line, no arguments "
                                                    "(each runs as PROG NEW_ROLE OLD_ROLE INSTANCE)"),
    Field("script_user", "Notify programs' user", help="default: [global] script_user"),
)
VIRTUAL = (
    Field("name", "Name"),
    Field("active", "Active", "bool", default=True),
    Field("address", "Virtual IP address"), Field("port", "Application port", "int"),
    Field("protocol", "Protocol", "select", PROTOCOLS),
    Field("fwmark", "Firewall mark", "int", help="0 or empty: matched by address and port"),
    Field("port_group", "Port groups (firewall mark)", "groups",
          help="one per line: PROTOCOL ADDRESS PORTS, e.g. tcp 198.18.0.10 21 and tcp 198.18.0.10 30000-30099"),
    Field("device", "Device", help="interface holding the VIP (default: the public interface)"),
    Field("scheduler", "Scheduling", "select", SCHEDULERS),
    Field("scheduler_flags", "Scheduler flags", "list", help=", ".join(SCHEDULER_FLAGS)),
    Field("mh_size", "mh table size", "int"),
    Field("persistent", "Persistence (s)", "int", help="0: none"),
    Field("pmask", "Persistence network mask", help="e.g. 255.255.255.0, or a prefix length for IPv6"),
    Field("sorry_server", "Sorry server", help="ADDR or ADDR:PORT: takes new connections when no real server can"),
    Field("quiesce_server", "Quiesce server (restart lc counts when a server joins)", "bool"),
)
REAL = (
    Field("name", "Name"), Field("address", "Address"), Field("port", "Port", "int", help="NAT only; default the VIP's"),
    Field("weight", "Weight", "int"), Field("active", "Active", "bool", default=True),
    Field("u_threshold", "Upper connection threshold", "int", help="0: none"),
    Field("l_threshold", "Lower connection threshold", "int"),
)
ESCAPES_HELP = r"escapes \n \r \t \\ \' \" \uXXXX are decoded"
MONITOR = (
    Field("kind", "Monitor", "select", MONITOR_KINDS),
    Field("send", "Send", keep_empty=True, escapes=True,
          help=ESCAPES_HELP + "; the check decodes the file's own again"),
    Field("expect", "Expect", keep_empty=True, escapes=True, help=ESCAPES_HELP),
    Field("use_regex", "Treat expect string as a regular expression", "bool"),
    Field("path", "HTTP path"), Field("host", "HTTP Host header"),
    Field("status", "HTTP status accepted", "status", help="LOW-HIGH, e.g. 200-399"),
    Field("body_regex", "Body regular expression"), Field("digest", "Body MD5 digest"),
    Field("tls_verify", "Verify TLS certificates", "bool", default=True),
    Field("program", "Sending program", help="argv with %h (address) and %p (port), run without a shell"),
    Field("script_user", "Program's user", help="the sending program runs as (default: [global] script_user)"),
    Field("port", "Check port", "int", help="default: the real server's"),
    Field("interval", "Interval (s)", "number"),
    Field("timeout", "Load/service timeout (s)", "number", help="dead after this long without success"),
    Field("reentry", "Re-entry time (s)", "number", help="alive this long before it returns"),
    Field("connect_timeout", "Connect timeout (s)", "number"),
    Field("quiesce", "Quiesce dead servers (weight 0) instead of removing them", "bool"),
)
LOAD = (
    Field("kind", "Load monitor", "select", ("none",) + LOAD_MONITOR_KINDS),
    Field("port", "Agent port", "int"), Field("program", "Program", help="argv with %h and %p"),
    Field("script_user", "Program's user", help="default: [global] script_user"),
    Field("interval", "Interval (s)", "number"), Field("timeout", "Timeout (s)", "number"),
    Field("min_weight", "Lowest weight", "int"),
)


# ---- document <-> form text ----

def text_of(f: Field, value: Any) -> str:
    """The form text of a document value (the field's default when the key is left out)."""
    if value is None:
        value = f.default
    if value is None:
        return ""
    if f.kind == "bool":
        return "on" if value is True else ""
    if f.kind == "list":
        return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if f.kind == "lines":
        return "\n".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if f.kind == "status":
        return f"{value[0]}-{value[1]}" if isinstance(value, list) and len(value) == 2 else str(value)
    if f.kind == "groups":
        if not isinstance(value, list):
            return str(value)
        return "\n".join(f"{g.get('protocol', 'tcp')} {g.get('address', '')} {g.get('ports', '')}"
                         for g in value if isinstance(g, dict))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float) and "e" in repr(value):
        # 5e-05 as 0.00005: the form reads back no exponent (a number field's text "5e-05" was
        # refused as no number, an untouched form with it could not be saved)
        return format(Decimal(repr(value)), "f")
    if f.escapes and isinstance(value, str):
        return escape(value)
    return str(value)


# A one-line text input cannot hold every character: browsers strip CR and LF from its value and
# make a NUL U+FFFD.  A monitor's send and expect are shown with escapes (lb.health.decode_escapes'
# and \uXXXX) and read back through them, so that an untouched form saves them as they were.
_SHOWN = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_DECODED = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _control(ch: str) -> bool:
    return ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F


def escape(value: str) -> str:
    """``value`` as form text that :func:`unescape` reads back to it: control characters as
    escapes; a backslash doubled only where it would start one (a regular expression's \\d or
    \\. shows as written)."""
    out = []
    for i, ch in enumerate(value):
        nxt = value[i + 1:i + 2]
        if ch in _SHOWN:
            out.append(_SHOWN[ch])
        elif _control(ch):
            out.append(f"\\u{ord(ch):04x}")
        elif ch == "\\" and nxt and (nxt in _DECODED or nxt == "u" or _control(nxt)):
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> str:
    """Form text with its escapes decoded (\\n \\r \\t \\\\ \\' \\" \\uXXXX); any other backslash is kept."""
    out, i = [], 0
    while i < len(text):
        ch, nxt, code = text[i], text[i + 1:i + 2], text[i + 2:i + 6]
        if ch == "\\" and nxt and nxt in _DECODED:
            out.append(_DECODED[nxt])
            i += 2
        elif ch == "\\" and nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", code) \
                and not 0xD800 <= int(code, 16) <= 0xDFFF:     # (half a surrogate pair: no file holds it)
            out.append(chr(int(code, 16)))
            i += 6
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def value_of(f: Field, raw: str | None) -> tuple[bool, Any]:
    """(present, document value) of a form field's text ``raw`` (None: not submitted)."""
    if f.kind == "bool":
        return True, raw == "on"
    text = (raw or "").strip() if f.kind != "textarea" and not f.keep_empty else (raw or "")
    if text == "":
        return (f.keep_empty and raw is not None), ""
    if f.kind == "int":
        return True, int(text) if _INT.fullmatch(text) else text
    if f.kind == "number":
        if _INT.fullmatch(text):
            return True, int(text)
        return True, float(text) if _NUM.fullmatch(text) else text
    if f.kind == "list":
        return True, [p.strip() for p in re.split(r"[,\n]", text) if p.strip()]
    if f.kind == "lines":      # one item a line: an item may hold a comma (a program's arguments)
        return True, [p.strip() for p in text.splitlines() if p.strip()]
    if f.kind == "status":
        m = re.fullmatch(r"([0-9]{1,3})\s*-\s*([0-9]{1,3})", text)
        return True, [int(m.group(1)), int(m.group(2))] if m else text
    if f.kind == "groups":
        out: list[Any] = []
        for line in text.splitlines():
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 3:
                ports: Any = int(parts[2]) if _INT.fullmatch(parts[2]) else parts[2]
                out.append({"protocol": parts[0], "address": parts[1], "ports": ports})
            else:
                out.append(line.strip())     # the validator says what a port group is
        return True, out
    return True, unescape(text) if f.escapes else text


def apply(table: dict[str, Any], fields, form, prefix: str) -> None:
    """Put the submitted ``form`` values of ``fields`` into ``table`` (absent keys removed)."""
    for f in fields:
        raw = form.get(f.name(prefix))
        if f.kind != "bool" and raw is None:
            continue
        present, value = value_of(f, None if raw is None else str(raw))
        if present:
            table[f.key] = value
        else:
            table.pop(f.key, None)


def place(issues, fields_by_path: dict[str, str]) -> tuple[dict[str, list[str]], list[dict]]:
    """({form field name: [messages]}, issues no field shows): each issue goes to the field whose
    TOML path is the longest prefix of the issue's field."""
    by_field: dict[str, list[str]] = {}
    rest = []
    for issue in issues:
        name = issue.get("field") or ""
        best = None
        for path in fields_by_path:
            if name == path or name.startswith(path + ".") or name.startswith(path + "["):
                if best is None or len(path) > len(best):
                    best = path
        if best is None:
            rest.append(issue)
        else:
            by_field.setdefault(fields_by_path[best], []).append(issue.get("message") or "")
    return by_field, rest


def paths(fields, base: tuple, prefix: str) -> dict[str, str]:
    """{TOML field path: form field name} of ``fields`` in the table at ``base``."""
    return {_toml.field_name(base + (f.key,)): f.name(prefix) for f in fields}
