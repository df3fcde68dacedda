"""Read keepalived.conf: its LVS part (virtual servers, real servers, checkers) and the VRRP
instances that move its addresses, as lb's configuration.

    cfg = lb.config.load("/etc/keepalived/keepalived.conf")       # dispatches here
    cfg = lb.config.keepalived.load("keepalived.conf", config_id="lb1")
    text = lb.config.totoml.dumps(cfg)                             # `lb import keepalived.conf`

The file is read as keepalived reads it: blocks in ``{ }`` (a ``{`` may also open the next
line), comments from an unquoted ``#`` or ``!`` to the end of the line, strings in ``"`` or ``'``
with keepalived's escapes, ``include`` (globs with csh-style {a,b} groups, relative to the
including file), conditional lines (``@ID`` / ``@^ID`` against the config id: by default the
host name's first label, as keepalived's ``-i``), ``$NAME=VALUE`` parameters as keepalived's
check_definition reads them (``$NAME`` / ``${NAME}``; the line decommented first; no blank before
``=``, which is an error, as keepalived refuses the line; the value's leading blanks dropped; an
empty value an empty parameter; multi-line definitions ending in ``\\``, ended by an empty
line or the file's end, comment and blank-only lines skipped, expanded only at the end of a
line; ``${_HASH}``, ``${_BANG}``, ``$_PWD``, ``$_INSTANCE`` standard, a file's own definition
winning; ``$_RANDOM`` an error) and ``~SEQ(VAR, [START,] [STEP,] END) TEXT`` lines (``~SEQx``: the values in hex), TEXT
once per value with $VAR set, as keepalived's read_line (one that keepalived refuses is an
error).  Bounded: file sizes, include depth and count, block nesting, line length, parameter
and ~SEQ expansion; any input gives a Config or a ConfigError whose issues name file:line and field.

What it becomes is the document the TOML loader validates (lb.config.toml.validate), with the
keepalived.conf file, line and keyword of each field, so every rule is the TOML loader's and its
messages name keepalived.conf's lines (``virtual_server[198.18.0.10 80].real_server[...].weight``).
Everything accepted without being carried out exactly is a warning (Config.warnings) naming its
line and why; what lb cannot do at all is an error.  So is a keyword that lb reads given twice
in one block, also under its other name (``lb_algo``/``lvs_sched``, ``lb_kind``/``lvs_method``,
``unicast_src_ip``/``mcast_src_ip``): keepalived takes the last one, which may not be what was
meant; the error names both lines.

Mapping (keepalived.conf(5) -> lb):

* ``global_defs``: ``router_id`` -> instance (lower-cased, when a valid instance name);
  ``lvs_timeouts`` -> [timeouts]; ``vrrp_garp_master_repeat`` / ``vrrp_garp_interval`` /
  ``vrrp_gna_interval`` / ``vrrp_garp_master_refresh`` -> [ha] garp_count / garp_interval /
  garp_refresh; e-mail, SNMP, script-security and daemon tunables: warnings (no effect).
  lb's own keywords (keepalived logs them as unknown and goes on): ``lb_public_interface IF``,
  ``lb_private_interface IF``, ``lb_nat_router ADDR/PREFIX [IF]``, ``lb_ha_key_file PATH``.
* ``virtual_server IP PORT`` / ``fwmark N`` / ``group NAME`` (``virtual_server_group``: one lb
  virtual server per address, address range and port of the group) -> [[virtual_server]] named
  ``ADDRESS:PORT`` (``tcp/`` and ``udp/ADDRESS:PORT`` where both protocols use it) or ``fwmarkN``:
  ``lb_algo``/``lvs_sched`` -> scheduler, ``sh-port``/``sh-fallback``/``mh-*``/``flag-1``/``flag-2``
  -> scheduler_flags, ``lb_kind``/``lvs_method`` NAT|DR|TUN -> [global] network (one for every
  virtual server: lb forwards all the same way; TUN: ipip only), ``protocol`` TCP|UDP,
  ``persistence_timeout`` [N] (360 without N) -> persistent, ``persistence_granularity`` -> pmask
  (alone: persistent 360 too, as keepalived),
  ``sorry_server IP [PORT]`` -> sorry_server, ``ip_family`` checked against the address (an
  error where it differs: keepalived ignores it there, or drops the other family's real servers), ``virtualhost`` -> the HTTP checks' Host.  A
  firewall-mark service needs lb's ``lb_port_group PROTO VIP PORT[-PORT]`` lines (lb matches the
  ports itself; an iptables rule set keepalived's marks).
* ``real_server IP [PORT]``: ``weight``, ``uthreshold``/``lthreshold`` -> u_/l_threshold,
  ``inhibit_on_failure`` -> monitor.quiesce.  A firewall-mark service's real servers take each
  connection's own port: a PORT is an error in NAT (IPVS sends there), a warning in DR and TUN.
* Checkers -> the virtual server's one monitor (lb checks every real server of a service the
  same way: the first real server's first checker, a warning where another differs):
  TCP_CHECK -> tcp; HTTP_GET / SSL_GET -> http / https (the first ``url``: path, ``digest``,
  ``status_code`` (one range; default 200-299), ``regex`` -> body_regex; SSL_GET does not verify
  the certificate, as keepalived); MISC_CHECK -> program (``misc_path``, the real server's address
  written %h; ``misc_timeout`` -> connect_timeout; ``misc_dynamic``: exit 2-255 up too, at the
  configured weight); UDP_CHECK -> udp (``payload`` and ``require_reply`` hex strings, the reply
  matched byte by byte: reply_encoding latin-1); DNS_CHECK -> udp sending the query (``type``,
  ``name``) and expecting its id, QR set, RCODE 0 and its question back; SMTP_CHECK ->
  send_expect reading the 220 greeting.
  Timing: interval = ``delay_loop`` (60), connect_timeout (5), back at the first success (reentry 0).
  keepalived takes a real server down after ``retry`` + 1 failed checks (``retry`` or its old name
  ``nb_get_retry``, of the checker, else the real server, else the virtual server; default 1,
  MISC_CHECK 0, DNS_CHECK 3), the first at most delay_loop after the last success, then one each
  ``delay_before_retry`` (1).  lb checks every interval only, so it takes the server down at the
  last of its checks that fit into keepalived's soonest (delay_loop + retry x delay_before_retry):
  n = 1 + floor(retry x delay_before_retry / delay_loop) failed checks in a row, timeout =
  n x delay_loop (0 when n = 1: the first failed check), never later than
  keepalived; with retry > 0 a warning at its line says so.
* ``vrrp_instance`` -> [ha]: lb's heartbeat is not VRRP (signed unicast datagrams, no virtual
  router id, no priorities, no multicast): both directors move to lb together.  The instance that
  carries the virtual servers' VIPs gives primary and backup from ``unicast_src_ip`` and its one
  ``unicast_peer`` (the lower address is the primary, the same on both directors), keepalive =
  ``advert_int``, deadtime = 3 x advert_int, monitor_links from ``track_interface``,
  preempt_delay from ``preempt_delay`` (preempt stays off: lb's pair does not preempt); a second
  instance on another interface with unicast addresses gives the private channel.  Its
  ``virtual_ipaddress`` entries give the VIPs' devices and, on another interface, the real servers'
  gateway (nat_router).  VRRP over multicast (no unicast_peer) is an error: lb must know the peer.
"""

from __future__ import annotations

import glob
import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import toml as _toml
from .locate import FieldPath
from .model import (
    DEFAULT_HA_KEY_FILE,
    SCHEDULER_FLAGS,
    Config,
    ConfigError,
    ConfigIssue,
    IPAddress,
    key_file_warning,
)

__all__ = ["load", "loads", "looks_like_keepalived", "default_config_id"]

# --- limits: any input gives a Config or a ConfigError ---------------------------------------------

MAX_INCLUDE_DEPTH = 8
MAX_FILES = 64
MAX_TOTAL_BYTES = 4 * _toml.MAX_FILE_BYTES
MAX_NESTING = 16  # blocks inside blocks (keepalived's deepest is 4: virtual_server, real_server, checker, url)
MAX_LINE = 8192
MAX_PARAM_ROUNDS = 32  # substitutions of $NAME in one line
MAX_GROUP_ADDRESSES = 256  # addresses one virtual_server_group range may expand to
MAX_SEQ_LINES = 65536  # lines all ~SEQ lines of keepalived.conf and its includes may make
MAX_SEQ_DEPTH = 4  # ~SEQ lines whose text is a ~SEQ line
MAX_BRACE_PATTERNS = 64  # patterns an include's {a,b} groups may expand to

INCLUDES = ("include", "includer", "includem", "includew", "includeb", "includea")

# keepalived.conf's defaults (keepalived.conf(5))
DELAY_LOOP = 60.0
CONNECT_TIMEOUT = 5.0
RETRY = {"MISC_CHECK": 0, "DNS_CHECK": 3}  # the others: 1
DELAY_BEFORE_RETRY = 1.0
PERSISTENCE_TIMEOUT = 360
HTTP_STATUS = (200, 299)
ADVERT_INT = 1.0

METHODS = {"NAT": "nat", "DR": "direct", "TUN": "tunnel"}
CHECKERS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "UDP_CHECK", "DNS_CHECK", "SMTP_CHECK",
            "PING_CHECK", "BFD_CHECK", "FILE_CHECK")
DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}
DNS_ID = b"LB"  # the query id lb's DNS check sends and expects back

def _digits(text: str) -> bool:
    """``text`` is a number int() reads: ASCII digits (str.isdigit also takes "²"), at most
    MAX_INT_DIGITS of them (Python reads no more than 4300)."""
    return text.isascii() and text.isdigit() and len(text) <= _toml.MAX_INT_DIGITS


_BOOL = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}

NO_MAIL = "no effect: lb sends no e-mail (role changes run [ha] notify programs; every transition is logged)"
NO_SNMP = "no effect: lb has no SNMP agent (`lb status --json`, `lb list --json`)"
NO_SCRIPT_SECURITY = ("no effect: lb always runs check, load and notify programs as [global] script_user "
                      "(nobody unless the config says otherwise), with a minimal environment")
DAEMON = "no effect: a setting of the keepalived daemon that lb has no counterpart for"

GLOBAL_NO_EFFECT = {
    **dict.fromkeys(("notification_email", "notification_email_from", "smtp_server", "smtp_helo_name",
                     "smtp_connect_timeout", "smtp_alert", "smtp_alert_vrrp", "smtp_alert_checker",
                     "no_email_faults", "email_faults"), NO_MAIL),
    "enable_script_security": NO_SCRIPT_SECURITY,
    **dict.fromkeys(("enable_snmp_vrrp", "enable_snmp_checker", "enable_snmp_rfc", "enable_snmp_rfcv2",
                     "enable_snmp_rfcv3", "enable_traps", "snmp_socket", "enable_snmp_keepalived"), NO_SNMP),
    "lvs_flush": "no effect: lb programs its own table; entries it did not make are not its to flush",
    "lvs_flush_onstop": "no effect: `lb stop` removes what lb made (`--keep-dataplane` keeps it)",
    "vrrp_garp_master_delay": "no effect: lb announces at takeover and every [ha] garp_refresh seconds",
    "vrrp_garp_master_refresh_repeat": "no effect: lb sends one announcement per address at each garp_refresh",
    "vrrp_garp_lower_prio_delay": "no effect: lb's heartbeat has no priorities",
    "vrrp_garp_lower_prio_repeat": "no effect: lb's heartbeat has no priorities",
    "checker_log_all_failures": "no effect: lb logs each real server's transitions; `lb status` shows the "
                                "last check of each",
}

TOP_NOT_LVS = {
    "vrrp_script": "lb's HA runs no track scripts: a director fails over when its heartbeats stop (or "
                   "its public link goes down, [ha] monitor_links)",
    "vrrp_track_process": "lb's HA tracks no processes (see vrrp_script)",
    "track_file": "lb's HA tracks no files (see vrrp_script)",
    "bfd_instance": "lb has no BFD",
    "static_ipaddress": "lb owns only the virtual servers' addresses and nat_router: configure static "
                        "addresses in the system's network configuration",
    "static_routes": "lb adds no routes: configure them in the system's network configuration",
    "static_rules": "lb adds no routing rules: configure them in the system's network configuration",
    "static_track_group": "lb's HA tracks no groups",
    "linkbeat_interfaces": "lb watches the public link itself ([ha] monitor_links)",
    "interface_up_down_delays": "lb's HA has no link debouncing",
    "garp_group": "lb announces each address [ha] garp_count times at takeover",
    "SSL": "lb's SSL_GET checks (https) present no client certificate and verify no server certificate",
    "net_namespace": "run lb inside the namespace itself (e.g. ip netns exec NAME lb run ...)",
    "net_namespace_ipvs": "run lb inside the namespace itself",
    "namespace_with_ipsets": DAEMON, "instance": DAEMON, "use_pid_dir": DAEMON,
    "linkbeat_use_polling": DAEMON, "child_wait_time": DAEMON,
}

VS_NO_EFFECT = {
    "ha_suspend": "no effect: the active director holds every VIP, so its checks always run",
    "alpha": "no effect: lb counts every real server up at start and takes it out after its failed checks",
    "omega": "no effect: lb runs no quorum scripts",
    "quorum": "no effect: lb has no quorum; a sorry_server takes the connections while no real server is up",
    "hysteresis": "no effect: lb has no quorum",
    "quorum_up": "no effect: lb runs no quorum scripts",
    "quorum_down": "no effect: lb runs no quorum scripts",
    "smtp_alert": NO_MAIL,
    "snmp_name": NO_SNMP,
    "ops": "not supported: lb has no one-packet scheduling; each UDP flow is a connection",
    "persistence_engine": "not supported: lb has no persistence engines (sip); persistence is by client address",
    "sorry_server_inhibit": "no effect: lb's sorry server is used only while no real server is usable",
    "nat_mask": "no effect: an obsolete keyword",
    "warmup": "no effect: lb starts each real server's checks at its own offset within delay_loop "
              "(keepalived's default warmup), whatever warmup says",
}
RS_NO_EFFECT = {
    "notify_up": "no effect: lb runs no per-server scripts; each transition is logged and shown by `lb status`",
    "notify_down": "no effect: lb runs no per-server scripts; each transition is logged and shown by `lb status`",
    "smtp_alert": NO_MAIL,
    "snmp_name": NO_SNMP,
    "alpha": VS_NO_EFFECT["alpha"],
    "warmup": VS_NO_EFFECT["warmup"],
}
CHECKER_NO_EFFECT = {
    "bindto": "no effect: lb's checks leave from the director's own address toward the real server",
    "bind_port": "no effect: lb's checks use any source port",
    "bind_if": "no effect: lb's checks leave by the route to the real server",
    "fwmark": "no effect: lb does not mark its checks' packets",
    "log_all_failures": "no effect: lb logs each real server's transitions",
    "warmup": VS_NO_EFFECT["warmup"],
    "alpha": VS_NO_EFFECT["alpha"],
    "http_protocol": "no effect: lb's HTTP checks send HTTP/1.1 with Connection: close",
    "fast_recovery": "no effect: lb checks one url",
    "enable_sni": "no effect: lb's https checks send the virtualhost (or the address) as SNI",
    "sni_name": "no effect: lb's https checks send the virtualhost (or the address) as SNI",
    "tls_compliant": "no effect",
    "helo_name": "no effect: lb's SMTP check reads the 220 greeting and sends no HELO",
    "min_reply_length": "no effect: lb's UDP check compares the reply's start with require_reply",
    "max_reply_length": "no effect: lb's UDP check compares the reply's start with require_reply",
}
URL_NO_EFFECT = {
    "regex_no_match": "not supported: lb's body_regex must match",
    "regex_options": "no effect: lb's body_regex is a Python regular expression without options",
    "regex_stack": "no effect", "regex_min_offset": "no effect", "regex_max_offset": "no effect",
    "tls_compliant": "no effect",
}
VRRP_NO_EFFECT = {
    **dict.fromkeys(("notify_master", "notify_backup", "notify_fault", "notify_stop", "notify",
                     "notify_deleted", "notify_master_rx_lower_pri"),
                    "not mapped: lb's [ha] notify programs are run with ROLE OLD INSTANCE, not keepalived's "
                    "arguments; add them to [ha] notify after adapting them"),
    "track_script": "no effect: lb's HA runs no track scripts",
    "track_process": "no effect: lb's HA tracks no processes",
    "track_file": "no effect: lb's HA tracks no files",
    "track_bfd": "no effect: lb has no BFD",
    "authentication": "no effect: lb's heartbeats are signed (HMAC-SHA256) with the key in [ha] key_file; "
                      "VRRP's auth_type and auth_pass are not used",
    "garp_master_delay": GLOBAL_NO_EFFECT["vrrp_garp_master_delay"],
    "garp_master_refresh_repeat": GLOBAL_NO_EFFECT["vrrp_garp_master_refresh_repeat"],
    "smtp_alert": NO_MAIL,
    "virtual_routes": "no effect: lb adds no routes",
    "virtual_rules": "no effect: lb adds no routing rules",
    "lvs_sync_daemon_interface": "lb syncs connections to the backup over its own heartbeat channel "
                                 "([ha] sync), not IPVS's sync daemon",
}
VRRP_MAPPED = ("interface", "state", "priority", "virtual_router_id", "advert_int", "unicast_src_ip",
               "unicast_peer", "mcast_src_ip", "virtual_ipaddress", "virtual_ipaddress_excluded",
               "nopreempt", "preempt_delay", "track_interface", "garp_master_repeat", "garp_interval",
               "gna_interval", "garp_master_refresh", "version")


# --- reading: text -> lines of tokens ------------------------------------------------------------


@dataclass
class _Tok:
    text: str
    brace: str = ""  # "{" or "}" for an unquoted brace, else ""


@dataclass
class _Line:
    file: str
    line: int
    toks: list[_Tok]


@dataclass
class Stmt:
    """One keyword with its arguments and, when it opens one, its block."""

    key: str
    args: list[str]
    file: str
    line: int
    block: list[Stmt] | None = None

    def where(self) -> str:
        return f"{self.file}:{self.line}"


_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
# keepalived's check_definition: $NAME=VALUE, no blank before '=', the value's leading blanks not
# part of it (the line decommented first: _decomment)
_PARAM_DEF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)=[ \t]*(.*)", re.S)
_PARAM_DEF_BLANK = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)[ \t]+=")
# keepalived's standard definitions (set_std_definitions) that are text; a file's own definition
# of the same name wins, as there.  _PWD and _INSTANCE are added per file and config id.
_STD_PARAMS = {"_HASH": "#", "_BANG": "!"}
_RANDOM_USE = re.compile(r"\$(?:\{_RANDOM[ 0-9]*\}|_RANDOM(?=[\s,)]|$))")
# $NAME ends at a blank, ',' or ')' (keepalived's find_definition), ${NAME} anywhere
_PARAM_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)(?=[\s,)]|$)")
# ~SEQ(VAR, numbers) TEXT, as keepalived's add_seq: the name ends at a blank, ',' or ')'
_SEQ = re.compile(r"~SEQ(x?)[ \t]*\([ \t]*([^ \t,)]+)[ \t]*,([^)]*)\)(.*)", re.S)
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*)[ \t]*")
LONG_MAX = 2**63 - 1


def _decomment(s: str) -> tuple[str, bool]:
    """keepalived's decomment() of one line: leading and trailing blanks, and a comment (``#`` or
    ``!`` outside double quotes) removed, ``\\#`` and ``\\!`` outside quotes made ``#`` and ``!``,
    a final ``\\`` (even after a comment: it continues a multi-line definition) kept as the
    last character, blanks before it removed.  Second: a double quote left open (keepalived's
    'Unterminated quote')."""
    s = s.lstrip(" \t")
    out: list[str] = []
    quote = comment = cont = False
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            if i + 1 == len(s):
                cont = True
                break
            if not comment:
                out.append(s[i + 1] if not quote and s[i + 1] in "#!" else s[i:i + 2])
            i += 2
            continue
        if ch == '"' and not comment:
            quote = not quote
        elif ch in "#!" and not quote and not comment:
            comment = True
        if not comment:
            out.append(ch)
        i += 1
    text = "".join(out).rstrip(" \t")
    return (text + "\\" if cont else text), quote


def _strtol(text: str) -> int | None:
    """C's strtol(text, &end, 0) where all of ``text`` (but blanks) must be the number, clamped to
    a long as strtol; None when it is not one (keepalived: 'Invalid ~SEQ definition')."""
    if not text.strip(" \t\n\v\f\r"):
        return 0  # no number: strtol's 0 (keepalived takes "~SEQ(i, , 3)" as 0, 1, 2, 3)
    m = _STRTOL.fullmatch(text)
    if m is None:
        return None
    digits = m.group(2)
    if len(digits) > 64:  # beyond a long whatever its base: strtol's LONG_MAX (int() reads no more than 4300)
        digits = str(LONG_MAX + 1)
    v = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits.startswith("0") else int(digits)
    v = -v if m.group(1) == "-" else v
    return max(-LONG_MAX - 1, min(LONG_MAX, v))


def default_config_id() -> str:
    """keepalived's default config id: the first label of the host name."""
    return socket.gethostname().split(".", 1)[0]


class Watched:
    """What a read of keepalived.conf depended on (lb.config.store keeps the parsed file while
    these stay as they were): each file read and each directory an include searched, with its
    stamp (lb.config.toml.file_stamp) taken before it was read; ``complete`` is False when an
    include's directory is itself a pattern (no fixed set of directories to watch for a new
    file)."""

    def __init__(self) -> None:
        self.stamps: dict[str, tuple[int, ...] | None] = {}
        self.complete = True

    def add(self, path: str) -> None:
        self.stamps.setdefault(path, _toml.file_stamp(path))


class _Reader:
    """keepalived.conf and its includes, as lines of tokens (file, line)."""

    def __init__(self, config_id: str, issues: list[ConfigIssue], warnings: list[ConfigIssue],
                 watch: Watched | None = None) -> None:
        self.config_id = config_id
        self.watch = watch
        self.issues = issues
        self.warnings = warnings
        self.params: dict[str, str] = {}
        self.multiline: set[str] = set()       # the parameters defined over several lines
        self.files = 0
        self.total = 0
        self.seq_lines = 0  # lines ~SEQ made (MAX_SEQ_LINES)
        self.seq_chars = 0  # and their characters (MAX_TOTAL_BYTES)
        self.lines: list[_Line] = []

    def error(self, file: str, line: int | None, message: str) -> None:
        self.issues.append(ConfigIssue(file, line, "", message))

    def read_file(self, path: str, display: str, depth: int, chain: tuple[str, ...], text: str | None = None) -> None:
        if text is None:
            if self.watch is not None:
                self.watch.add(path)
            text = _toml.read_text(path, display)  # ConfigError: unreadable, too large, not UTF-8
        self.files += 1
        self.total += len(text)
        if self.total > MAX_TOTAL_BYTES:
            raise ConfigError([ConfigIssue(display, None, "", f"keepalived.conf and its includes are larger than "
                                                              f"{MAX_TOTAL_BYTES >> 20} MiB")])
        raw = text.split("\n")
        if raw[-1] == "":
            raw.pop()           # the last line's newline: no empty line after it
        n = 0
        pending: tuple[str, list[str]] | None = None  # a multi-line $NAME= definition being read
        while n < len(raw):
            line = raw[n].rstrip("\r\n")
            n += 1
            if len(line) > MAX_LINE:
                self.error(display, n, f"line longer than {MAX_LINE} characters")
                continue
            if pending is not None:
                # keepalived's read_line: an empty line ends the definition (and is not part of it);
                # a line of blanks or a comment is skipped; each line decommented, its final
                # backslash (blanks before it removed) continuing the definition
                if not line:
                    self._define(*pending)
                    pending = None
                    continue
                d, _ = _decomment(line)
                if not d:
                    continue
                more = d.endswith("\\")
                d = d[:-1].rstrip(" \t") if more else d
                if d:
                    pending[1].append(d)
                if not more:
                    self._define(*pending)
                    pending = None
                continue
            pending = self._line(line.strip(), path, display, n, depth, chain, 0)
        if pending is not None and depth == 0:
            self._define(*pending)      # keepalived: the file's end ends the definition
        elif pending is not None:
            self.error(display, n, f"multi-line parameter ${pending[0]} not finished at the end of this included "
                                   f"file: keepalived would read the including file's next lines into it; end "
                                   f"its last line without a backslash")

    def _define(self, name: str, lines: list[str]) -> None:
        """A multi-line definition read: its lines (none: an empty, one-line parameter)."""
        self.params[name] = "\n".join(lines)
        if lines:
            self.multiline.add(name)
        else:
            self.multiline.discard(name)

    def _line(self, s: str, path: str, display: str, n: int, depth: int, chain: tuple[str, ...],
              seq: int) -> tuple[str, list[str]] | None:
        """One line of the file (or of a ~SEQ's expansion, ``seq`` deep): a multi-line $NAME=
        definition it begins, else None."""
        if not s:
            return None
        if s[0] == "@":  # conditional configuration: @ID or @^ID
            word, *rest = s.split(None, 1)
            negate = word.startswith("@^")
            wanted = word[2:] if negate else word[1:]
            if not rest or (wanted == self.config_id) == negate:
                return None
            s = rest[0].strip()
        if s.startswith("$"):
            d, open_quote = _decomment(s)
            m = _PARAM_DEF.fullmatch(d)
            if m and open_quote:
                self.error(display, n, f"unterminated quote in the definition of ${m.group(1)} (keepalived refuses "
                                       f"it)")
                return None
            if m:
                name, value = m.groups()
                if value.endswith("\\"):
                    first = value[:-1].rstrip(" \t")
                    return (name, [first] if first else [])
                self.params[name] = value
                self.multiline.discard(name)
                return None
            blank = _PARAM_DEF_BLANK.match(d)
            if blank:
                self.error(display, n, f"not a parameter definition: keepalived takes ${blank.group(1)}=VALUE with "
                                       f"no blank before '=' (it reads this line as the keyword "
                                       f"'${blank.group(1)}', which it refuses); write ${blank.group(1)}={d[blank.end():].lstrip(' ')}")
                return None
        if s.startswith("~SEQ"):
            self._seq(s, path, display, n, depth, chain, seq)
            return None
        text = self._substitute(s, display, n, os.path.dirname(path))
        if seq:
            self.seq_chars += len(text)
            if self.seq_chars > MAX_TOTAL_BYTES:
                if self.seq_chars - len(text) <= MAX_TOTAL_BYTES:
                    self.error(display, n, f"~SEQ lines expand to more than {MAX_TOTAL_BYTES >> 20} MiB")
                return None
        for piece in text.split("\n"):
            if piece.lstrip().startswith("~SEQ"):
                self.error(display, n, "a ~SEQ line made by a parameter's value is not supported: write the ~SEQ "
                                       "line itself")
                continue
            toks = self._tokens(piece, display, n)
            if not toks:
                continue
            if toks[0].text in INCLUDES and not toks[0].brace:
                # keepalived reads an include line before it splits braces off: {a,b} is a glob's
                self._include(self._tokens(piece, display, n, braces=False), path, display, n, depth, chain)
            else:
                self.lines.append(_Line(display, n, toks))
        return None

    def _seq(self, s: str, path: str, display: str, n: int, depth: int, chain: tuple[str, ...], seq: int) -> None:
        """keepalived's ``~SEQ(VAR, [START,] [STEP,] END) TEXT`` (``~SEQx``: the values in hex): TEXT
        once for each value, with $VAR (a parameter, left set) that value, as keepalived's
        read_line/add_seq: one number END (1..END, or -1..END when END < 0, 1, 0 when END is 0),
        two START, END (step 1 or -1), three START, STEP, END (STEP not 0, towards END); the
        numbers as C's strtol base 0 (0x.. hex, 0.. octal), $NAME parameters in them replaced."""
        if seq >= MAX_SEQ_DEPTH:
            self.error(display, n, f"~SEQ nested deeper than {MAX_SEQ_DEPTH}")
            return
        m = _SEQ.match(s)
        if m is None:
            self.error(display, n, "invalid ~SEQ line: expected '~SEQ(VARIABLE, [START,] [STEP,] END) TEXT'")
            return
        hexa, var, args, text = m.group(1) == "x", m.group(2), m.group(3), m.group(4).lstrip(" \t")
        known = {**_STD_PARAMS, "_PWD": os.path.dirname(path) or ".", "_INSTANCE": self.config_id, **self.params}
        missing: list[str] = []

        def value(p: re.Match[str]) -> str:
            name = p.group(1) or p.group(2)
            if name not in known:
                missing.append(name)
                return p.group(0)
            return known[name]
        args = _PARAM_USE.sub(value, args)
        if "\n" in args:
            self.error(display, n, "a ~SEQ number is a multi-line parameter")
            return
        nums = [_strtol(a) for a in args.split(",")]
        if missing or len(nums) > 3 or None in nums:
            why = f"${missing[0]} is not defined" if missing else f"'{args}' is not 1 to 3 numbers"
            self.error(display, n, f"invalid ~SEQ line: {why}")
            return
        if len(nums) == 1:
            end = nums[0]
            start, step = (-1 if end < 0 else 1), (-1 if end < 1 else 1)
        elif len(nums) == 2:
            start, end = nums
            step = 1 if start <= end else -1
        else:
            start, step, end = nums
            if step == 0 or (start < end and step < 0) or (start > end and step > 0):
                self.error(display, n, f"invalid ~SEQ values: {start}, {step}, {end} (the step must go from "
                                       f"the start towards the end)")
                return
        if hexa and (start < 0 or end < 0):
            self.error(display, n, "~SEQx is only for numbers not below 0")
            return
        count = (end - start) // step + 1
        if count > MAX_SEQ_LINES - self.seq_lines:
            self.error(display, n, f"~SEQ lines expand to more than {MAX_SEQ_LINES} lines")
            self.seq_lines = MAX_SEQ_LINES
            return
        self.seq_lines += count
        for k in range(count):
            v = start + k * step
            self.params[var] = format(v, "x") if hexa else str(v)
            if self._line(text, path, display, n, depth, chain, seq + 1) is not None:
                self.error(display, n, "a ~SEQ line cannot begin a multi-line parameter")
                return

    def _substitute(self, s: str, display: str, n: int, pwd: str) -> str:
        if "$" not in s:
            return s
        known = {**_STD_PARAMS, "_PWD": pwd or ".", "_INSTANCE": self.config_id, **self.params}
        spread: list[str] = []

        def value(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            rest = m.string[m.end():].lstrip(" \t")
            if name in self.multiline and rest and rest[0] not in "#!":
                spread.append(name)         # keepalived expands it only at the end of a line
                return m.group(0)
            return known.get(name, m.group(0))
        for _ in range(MAX_PARAM_ROUNDS):
            if "_RANDOM" not in self.params and _RANDOM_USE.search(s):
                self.error(display, n, "$_RANDOM (keepalived's random number, another at each load) is not "
                                       "supported: write the number")
                return ""
            out = _PARAM_USE.sub(value, s)
            if spread:
                self.error(display, n, f"${spread[0]} is a multi-line parameter: keepalived expands one only at the "
                                       f"end of a line (it leaves ${spread[0]} here as written)")
                return ""
            if out == s:
                return s
            if len(out) > MAX_LINE * 4:
                break
            s = out
        self.error(display, n, f"parameter substitution does not end (more than {MAX_PARAM_ROUNDS} rounds or "
                               f"{MAX_LINE * 4} characters)")
        return ""

    def _tokens(self, s: str, display: str, n: int, braces: bool = True) -> list[_Tok]:
        """Split a line as keepalived does: whitespace, quotes (" or ') joined to their word, escapes
        in quotes, an unquoted # or ! starts a comment, unquoted braces are tokens of their own
        (but for ``braces`` False: an include's pattern)."""
        brace = "{}" if braces else ""
        toks: list[_Tok] = []
        cur: list[str] = []
        in_word = False
        i = 0
        while i < len(s):
            ch = s[i]
            if ch in "\"'":
                end = i + 1
                text = []
                while end < len(s) and s[end] != ch:
                    if s[end] == "\\" and end + 1 < len(s):
                        end, piece = _escape(s, end + 1)
                        text.append(piece)
                        continue
                    text.append(s[end])
                    end += 1
                if end >= len(s):
                    self.error(display, n, f"unterminated {ch}quoted{ch} string")
                    return []
                cur.append("".join(text))
                in_word = True
                i = end + 1
                continue
            if ch.isspace() or ch in "#!" or ch in brace:
                if in_word:
                    toks.append(_Tok("".join(cur)))
                    cur, in_word = [], False
                if ch in "#!":
                    break
                if ch in brace:
                    toks.append(_Tok(ch, ch))
                i += 1
                continue
            cur.append(ch)
            in_word = True
            i += 1
        if in_word:
            toks.append(_Tok("".join(cur)))
        return toks

    def _include(self, toks: list[_Tok], path: str, display: str, n: int, depth: int,
                 chain: tuple[str, ...]) -> None:
        if len(toks) != 2 or toks[1].brace:
            self.error(display, n, f"expected '{toks[0].text} FILENAME'")
            return
        if depth >= MAX_INCLUDE_DEPTH:
            self.error(display, n, f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
            return
        base = os.path.dirname(display)
        patterns = _braces(toks[1].text)
        if patterns is None:
            self.error(display, n, f"{toks[1].text}: a '{{' without its '}}', or more than {MAX_BRACE_PATTERNS} "
                                   f"patterns in its {{a,b}} groups")
            return
        names: list[str] = []
        for pattern in patterns:
            shown = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
            full = os.path.join(os.path.dirname(path), pattern) if not os.path.isabs(pattern) else pattern
            if self.watch is not None:
                # a file added to (or taken from) the directory changes what this include reads
                if glob.has_magic(os.path.dirname(full)):
                    self.watch.complete = False
                else:
                    self.watch.add(os.path.dirname(full) or ".")
            found = sorted(glob.glob(full))  # each {a,b} alternative's sorted, in order (glibc's GLOB_BRACE)
            if not found and not glob.has_magic(pattern):
                self.error(display, n, f"cannot read {shown}: no such file")
                return
            names.extend(found)
        for name in names:
            if os.path.isdir(name):
                continue
            real = os.path.realpath(name)
            if real in chain:
                self.error(display, n, f"{name} includes itself")
                continue
            if self.files >= MAX_FILES:
                self.error(display, n, f"more than {MAX_FILES} files included")
                return
            rel = name if os.path.isabs(pattern) else os.path.join(base, os.path.relpath(name, os.path.dirname(path)))
            self.read_file(name, rel, depth + 1, chain + (real,))


def _braces(pattern: str) -> list[str] | None:
    """An include pattern's csh-style {a,b} groups expanded, as glibc's glob(GLOB_BRACE), which
    keepalived uses: "{a,b/{c,d}}.conf" -> a.conf, b/c.conf, b/d.conf (a group without a comma is
    its text); None for a '{' without its '}' or more than MAX_BRACE_PATTERNS patterns."""
    out: list[str] = []
    todo = [pattern]
    while todo:
        p = todo.pop(0)
        start = p.find("{")
        if start < 0:
            out.append(p)
            if len(out) > MAX_BRACE_PATTERNS:
                return None
            continue
        level, parts, last = 0, [], start + 1
        for i in range(start, len(p)):
            if p[i] == "{":
                level += 1
            elif p[i] == "}":
                level -= 1
                if level == 0:
                    parts.append(p[last:i])
                    break
            elif p[i] == "," and level == 1:
                parts.append(p[last:i])
                last = i + 1
        else:
            return None
        if len(out) + len(todo) + len(parts) > MAX_BRACE_PATTERNS:
            return None
        todo[:0] = [p[:start] + part + p[i + 1:] for part in parts]
    return out


def _escape(s: str, i: int) -> tuple[int, str]:
    """keepalived's escape after a backslash at i - 1: the next index and the text."""
    ch = s[i]
    if ch in _ESCAPES:
        return i + 1, _ESCAPES[ch]
    if ch == "x":
        m = re.match(r"[0-9A-Fa-f]{1,2}", s[i + 1:])
        if m:
            return i + 1 + m.end(), chr(int(m.group(0), 16))
    if ch in "01234567":
        m = re.match(r"[0-7]{1,3}", s[i:])
        assert m is not None
        return i + m.end(), chr(int(m.group(0), 8) & 0xFF)
    if ch == "c" and i + 1 < len(s):
        return i + 2, chr(ord(s[i + 1].upper()) ^ 0x40)
    return i + 1, ch


def _tree(lines: list[_Line], issues: list[ConfigIssue]) -> list[Stmt]:
    """Lines of tokens -> statements with their blocks."""
    top: list[Stmt] = []
    stack: list[tuple[list[Stmt], Stmt | None]] = [(top, None)]
    for ln in lines:
        cur: Stmt | None = None
        for tok in ln.toks:
            body = stack[-1][0]
            if tok.brace == "{":
                owner = cur
                if owner is None and body and body[-1].block is None and body[-1].line < ln.line:
                    owner = body[-1]  # "keyword args" then "{" on the next line
                if owner is None or owner.block is not None:
                    issues.append(ConfigIssue(ln.file, ln.line, "", "unexpected '{' (no keyword opens it)"))
                    raise ConfigError(issues)
                if len(stack) > MAX_NESTING:
                    issues.append(ConfigIssue(ln.file, ln.line, "", f"blocks nested deeper than {MAX_NESTING}"))
                    raise ConfigError(issues)
                owner.block = []
                stack.append((owner.block, owner))
                cur = None
            elif tok.brace == "}":
                if len(stack) == 1:
                    issues.append(ConfigIssue(ln.file, ln.line, "", "unexpected '}' (no block is open)"))
                    raise ConfigError(issues)
                stack.pop()
                cur = None
            elif cur is None:
                cur = Stmt(tok.text, [], ln.file, ln.line)
                body.append(cur)
            else:
                cur.args.append(tok.text)
    if len(stack) > 1:
        opened = stack[-1][1]
        assert opened is not None
        last = lines[-1] if lines else None
        issues.append(ConfigIssue(last.file if last else opened.file, last.line if last else opened.line, "",
                                  f"missing '}}': end of file inside {opened.key} (opened at {opened.where()})"))
        raise ConfigError(issues)
    return top


# --- positions of the built document -------------------------------------------------------------


class _Positions(_toml.Positions):
    """Where each field of the built document is written in keepalived.conf: its file, line and
    keyword path (``virtual_server[198.18.0.10 80].real_server[198.18.1.11 80].weight``)."""

    def __init__(self) -> None:
        self.notes: dict[FieldPath, tuple[str, int | None, str]] = {}

    def _find(self, path: FieldPath) -> tuple[FieldPath, tuple[str, int | None, str]] | None:
        p = path
        while p:
            if p in self.notes:
                return p, self.notes[p]
            p = p[:-1]
        return None

    def where(self, path: FieldPath) -> tuple[int | None, str]:
        found = self._find(path)
        if found is None:
            return None, _toml.field_name(path)
        p, (_, line, name) = found
        tail = path[len(p):]
        if not tail:
            return line, name
        rest = _toml.field_name(tail)
        return line, name + (rest if rest.startswith("[") else "." + rest)

    def file(self, path: FieldPath) -> str | None:
        found = self._find(path)
        return found[1][0] if found else None


# --- small value readers --------------------------------------------------------------------------


def _hex_bytes(words: list[str]) -> tuple[list[int | None], list[int | None]] | None:
    """keepalived's HEX_STR ("Ab12f 3 456" = AB 12 0F 03 45 06): the bytes and, for require_reply's
    X nibbles, a mask per byte (None: exact); None when not hexadecimal."""
    values: list[int | None] = []
    masks: list[int | None] = []
    for w in words:
        if not re.fullmatch(r"[0-9A-Fa-fXx]+", w):
            return None
        pairs = [w[i:i + 2] for i in range(0, len(w), 2)]
        for p in pairs:
            p = p.rjust(2, "0")
            mask = (0xF0 if p[0] in "Xx" else 0) | (0x0F if p[1] in "Xx" else 0)
            fixed = int(p.replace("X", "0").replace("x", "0"), 16)
            values.append(fixed)
            masks.append(None if mask == 0 else mask)
    return values, masks


# --- the builder ----------------------------------------------------------------------------------


@dataclass
class _Checker:
    kind: str
    stmt: Stmt
    opts: dict[str, Stmt] = field(default_factory=dict)
    urls: list[Stmt] = field(default_factory=list)
    hosts: list[Stmt] = field(default_factory=list)  # SMTP_CHECK's host blocks (one or more)


@dataclass
class _Real:
    stmt: Stmt
    label: str
    address: str
    port: int | None
    opts: dict[str, Stmt] = field(default_factory=dict)
    checkers: list[_Checker] = field(default_factory=list)


@dataclass
class _Virtual:
    stmt: Stmt
    label: str
    opts: dict[str, Stmt] = field(default_factory=dict)
    reals: list[_Real] = field(default_factory=list)
    groups: list[Stmt] = field(default_factory=list)  # lb_port_group lines


@dataclass
class _Vrrp:
    stmt: Stmt
    opts: dict[str, Stmt] = field(default_factory=dict)
    vips: list[tuple[Stmt, ipaddress.IPv4Interface | ipaddress.IPv6Interface, str | None]] = field(default_factory=list)
    peers: list[Stmt] = field(default_factory=list)
    track: list[Stmt] = field(default_factory=list)


class _Builder:
    def __init__(self, display: str, issues: list[ConfigIssue], warnings: list[ConfigIssue]) -> None:
        self.display = display
        self.issues = issues
        self.warnings = warnings
        self.positions = _Positions()
        self.globals: dict[str, Stmt] = {}
        self.global_defs: Stmt | None = None    # the first global_defs: where a missing global goes
        self.vrrps: list[_Vrrp] = []
        self.groups: dict[str, Stmt] = {}
        self.virtuals: list[_Virtual] = []
        self.timing: dict[int, ConfigIssue] = {}  # id(checker) -> what lb does of its retries

    # -- reporting
    def error(self, st: Stmt, fld: str, message: str) -> None:
        self.issues.append(ConfigIssue(st.file, st.line, fld, message))

    def warn(self, st: Stmt, fld: str, message: str) -> None:
        self.warnings.append(ConfigIssue(st.file, st.line, fld, message))

    def note(self, path: FieldPath, st: Stmt | None, name: str) -> None:
        self.positions.notes[path] = (st.file if st else self.display, st.line if st else None, name)

    # -- typed arguments
    def one(self, st: Stmt, fld: str) -> str | None:
        if len(st.args) != 1 or st.block is not None:
            self.error(st, fld, f"expected '{st.key} VALUE'")
            return None
        return st.args[0]

    def integer(self, st: Stmt, fld: str, lo: int = 0, hi: int = 2**31 - 1) -> int | None:
        v = self.one(st, fld)
        if v is None:
            return None
        if not re.fullmatch(r"[0-9]{1,10}", v) or not lo <= int(v) <= hi:
            self.error(st, fld, f"expected an integer {lo}..{hi}, got {v!r}")
            return None
        return int(v)

    def timer(self, st: Stmt, fld: str) -> float | None:
        v = self.one(st, fld)
        if v is None:
            return None
        if not re.fullmatch(r"[0-9]{1,7}(\.[0-9]{1,6})?", v):
            self.error(st, fld, f"expected a number of seconds, got {v!r}")
            return None
        return float(v)

    def boolean(self, st: Stmt, fld: str) -> bool | None:
        if not st.args:
            return True  # a bare flag keyword
        if len(st.args) == 1 and st.args[0].lower() in _BOOL:
            return _BOOL[st.args[0].lower()]
        self.error(st, fld, f"expected {st.key} [on|off|true|false|yes|no], got {' '.join(st.args)!r}")
        return None

    # -- pass 1: collect
    def collect(self, top: list[Stmt]) -> None:
        for st in top:
            if st.key == "global_defs":
                self.global_defs = self.global_defs or st
            if st.key == "global_defs" and st.block is not None:
                for g in st.block:
                    if g.key in GLOBAL_MAPPED and g.key in self.globals:
                        self._twice(g, f"global_defs.{g.key}", self.globals[g.key])
                    self.globals.setdefault(g.key, g)
                    if g.key in GLOBAL_NO_EFFECT:
                        self.warn(g, f"global_defs.{g.key}", GLOBAL_NO_EFFECT[g.key])
                    elif g.key not in GLOBAL_MAPPED and not g.key.startswith("vrrp_"):
                        self.warn(g, f"global_defs.{g.key}", DAEMON)
                    elif g.key.startswith("vrrp_") and g.key not in GLOBAL_MAPPED:
                        self.warn(g, f"global_defs.{g.key}", "no effect: lb's heartbeat is not VRRP")
            elif st.key == "vrrp_instance":
                self._vrrp(st)
            elif st.key == "vrrp_sync_group":
                for g in st.block or []:
                    if g.key != "group":
                        self.warn(g, f"vrrp_sync_group[{' '.join(st.args)}].{g.key}",
                                  VRRP_NO_EFFECT.get(g.key, "no effect: lb moves every address with one role"))
            elif st.key == "virtual_server_group":
                if len(st.args) != 1 or st.block is None:
                    self.error(st, "virtual_server_group", "expected 'virtual_server_group NAME {'")
                else:
                    self.groups[st.args[0]] = st
            elif st.key == "virtual_server":
                self._virtual(st)
            elif st.key in TOP_NOT_LVS:
                self.warn(st, st.key, "not part of lb's configuration: " + TOP_NOT_LVS[st.key])
            else:
                self.warn(st, st.key, "unknown keyword (keepalived would report it too): ignored")

    def _vrrp(self, st: Stmt) -> None:
        name = " ".join(st.args)
        label = f"vrrp_instance[{name}]"
        v = _Vrrp(st)
        for o in st.block or []:
            fld = f"{label}.{o.key}"
            if o.key in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
                for a in o.block or []:
                    words = [a.key, *a.args]
                    try:
                        iface = ipaddress.ip_interface(words[0])
                    except ValueError:
                        self.error(a, fld, f"'{words[0]}' is not an address (ADDRESS[/PREFIX] [dev IF] ...)")
                        continue
                    dev = words[words.index("dev") + 1] if "dev" in words[:-1] else None
                    v.vips.append((a, iface, dev))
            elif o.key == "unicast_peer":
                v.peers.extend(o.block or [])
            elif o.key == "track_interface":
                v.track.extend(o.block or [])
            elif o.key in VRRP_NO_EFFECT:
                self.warn(o, fld, VRRP_NO_EFFECT[o.key])
            elif o.key not in VRRP_MAPPED:
                self.warn(o, fld, "no effect: lb's heartbeat is not VRRP")
            elif o.key in v.opts:
                self._twice(o, fld, v.opts[o.key])
            elif VRRP_ALIASES.get(o.key) in v.opts:
                first = v.opts[VRRP_ALIASES[o.key]]
                self.error(o, fld, f"{o.key} given twice (as {first.key}, first at {first.where()})")
            v.opts.setdefault(o.key, o)
        self.vrrps.append(v)

    def _virtual(self, st: Stmt) -> None:
        label = f"virtual_server[{' '.join(st.args)}]"
        if st.block is None:
            self.error(st, label, "expected 'virtual_server ADDRESS PORT {' (or fwmark N, group NAME)")
            return
        vs = _Virtual(st, label)
        for o in st.block:
            if o.key == "real_server":
                self._real(vs, o)
            elif o.key == "lb_port_group":
                vs.groups.append(o)
            elif o.key in VS_KEYS:
                if o.key in vs.opts:
                    self._twice(o, f"{label}.{o.key}", vs.opts[o.key])
                elif VS_ALIASES.get(o.key) in vs.opts:     # keepalived's two names of one keyword
                    first = vs.opts[VS_ALIASES[o.key]]
                    self.error(o, f"{label}.{o.key}", f"{o.key} given twice (as {first.key}, first at {first.where()})")
                vs.opts.setdefault(o.key, o)
            elif o.key in VS_NO_EFFECT:
                self.warn(o, f"{label}.{o.key}", VS_NO_EFFECT[o.key])
            else:
                self.warn(o, f"{label}.{o.key}", "unknown keyword (keepalived would report it too): ignored")
        self.virtuals.append(vs)

    def _twice(self, st: Stmt, fld: str, first: Stmt) -> None:
        """A keyword given twice in one block: keepalived takes the last, lb's first was taken
        before (a silently other weight or timeout); which one was meant is the file's to say."""
        self.error(st, fld, f"{st.key} given twice (first at {first.where()})")

    def _real(self, vs: _Virtual, st: Stmt) -> None:
        label = f"{vs.label}.real_server[{' '.join(st.args)}]"
        port: int | None = None
        if not 1 <= len(st.args) <= 2:
            self.error(st, label, "expected 'real_server ADDRESS [PORT] {'")
            return
        if len(st.args) == 2:
            if not _digits(st.args[1]):
                self.error(st, label, f"'{st.args[1]}' is not a port")
                return
            port = int(st.args[1])
        rs = _Real(st, label, st.args[0], port)
        for o in st.block or []:
            if o.key in CHECKERS:
                rs.checkers.append(self._checker(label, o))
            elif o.key in RS_KEYS:
                if o.key in rs.opts:
                    self._twice(o, f"{label}.{o.key}", rs.opts[o.key])
                rs.opts.setdefault(o.key, o)
            elif o.key in RS_NO_EFFECT:
                self.warn(o, f"{label}.{o.key}", RS_NO_EFFECT[o.key])
            else:
                self.warn(o, f"{label}.{o.key}", "unknown keyword (keepalived would report it too): ignored")
        vs.reals.append(rs)

    def _checker(self, label: str, st: Stmt) -> _Checker:
        c = _Checker(st.key, st)
        for o in st.block or []:
            fld = f"{label}.{st.key}.{o.key}"
            if o.key == "url":
                c.urls.append(o)
            elif o.key == "host":
                c.hosts.append(o)
            elif o.key in CHECKER_KEYS:
                if o.key in c.opts:
                    self._twice(o, fld, c.opts[o.key])
                c.opts.setdefault(o.key, o)
            elif o.key in CHECKER_NO_EFFECT:
                self.warn(o, fld, CHECKER_NO_EFFECT[o.key])
            else:
                self.warn(o, fld, "unknown keyword (keepalived would report it too): ignored")
        return c

    # -- pass 2: the document
    def build(self) -> dict[str, Any]:
        glob_: dict[str, Any] = {}
        doc: dict[str, Any] = {"global": glob_}
        self.note(("global",), None, "global_defs")
        rid = self.globals.get("router_id")
        if rid is not None:
            name = (self.one(rid, "global_defs.router_id") or "").lower()
            if _toml.INSTANCE_RE.fullmatch(name):
                glob_["instance"] = name
                self.note(("global", "instance"), rid, "global_defs.router_id")
            else:
                self.warn(rid, "global_defs.router_id", "not an lb instance name ([a-z0-9][a-z0-9_-]{0,31}, "
                                                        "lower-cased): the instance is \"default\"")
        su = self.globals.get("script_user")
        if su is not None:      # keepalived's `script_user USER [GROUP]`: lb runs programs as USER
            user = su.args[0] if su.args else None
            if user is not None:
                glob_["script_user"] = user
                self.note(("global", "script_user"), su, "global_defs.script_user")
            if len(su.args) > 1:
                self.warn(su, "global_defs.script_user", "the group has no effect: programs run with the user's "
                                                         "own groups")
        to = self.globals.get("lvs_timeouts")
        if to is not None:
            self._timeouts(doc, to)
        vss = self._virtual_servers()
        network, net_stmt = self._network()
        if network is not None:
            glob_["network"] = network
            self.note(("global", "network"), net_stmt, (self._label_of(net_stmt) + ".lb_kind") if net_stmt else "")
        vip_dev = {str(iface.ip): (dev or self._vrrp_if(v), a, v) for v in self.vrrps for a, iface, dev in v.vips}
        self._interfaces(glob_, vss, vip_dev)
        self._nat_router(glob_, vss, vip_dev, network)
        ha = self._ha(glob_, vss)
        if ha is not None:
            doc["ha"] = ha
        for vs in vss:
            dev = vs.pop("_device", None)
            if dev is not None and dev != glob_.get("public_interface"):
                vs["device"] = dev
        if vss:
            doc["virtual_server"] = vss
        return doc

    def _label_of(self, st: Stmt) -> str:
        for vs in self.virtuals:
            if vs.stmt is st or st in (vs.stmt.block or []):
                return vs.label
        return st.key

    def _timeouts(self, doc: dict[str, Any], st: Stmt) -> None:
        words = st.args
        table: dict[str, Any] = {}
        if len(words) % 2 or not words:
            self.error(st, "global_defs.lvs_timeouts", "expected 'lvs_timeouts [tcp N] [tcpfin N] [udp N]'")
            return
        for k, v in zip(words[::2], words[1::2]):
            if k not in ("tcp", "tcpfin", "udp") or not _digits(v):
                self.error(st, "global_defs.lvs_timeouts", f"expected tcp, tcpfin or udp and seconds, got {k} {v}")
                continue
            table[k] = int(v)
            self.note(("timeouts", k), st, f"global_defs.lvs_timeouts {k}")
        if table:
            doc["timeouts"] = table

    def _network(self) -> tuple[str | None, Stmt | None]:
        """lb forwards every virtual server one way ([global] network): the method of all of them."""
        first: tuple[str, Stmt | None] | None = None
        for vs in self.virtuals:
            st = vs.opts.get("lb_kind") or vs.opts.get("lvs_method")
            method = self._method(st, vs.label) if st is not None else "nat"  # keepalived's default
            if method is None:
                continue
            for rs in vs.reals:
                rst = rs.opts.get("lvs_method")
                if rst is not None and self._method(rst, rs.label) not in (None, method):
                    self.error(rst, f"{rs.label}.lvs_method", f"lb forwards to every real server of a virtual "
                                                              f"server the same way: this one differs from its "
                                                              f"virtual server's ({method})")
            sst = vs.opts.get("sorry_server_lvs_method")
            if sst is not None and self._method(sst, vs.label) not in (None, method):
                self.error(sst, f"{vs.label}.sorry_server_lvs_method", "lb forwards to the sorry server as to "
                                                                      "the real servers")
            if first is None:
                first = (method, st)
            elif method != first[0]:
                where = first[1].where() if first[1] is not None else "keepalived's default, NAT"
                self.error(st or vs.stmt, f"{vs.label}.lb_kind",
                           f"lb forwards every virtual server the same way ([global] network): this one is "
                           f"{_METHOD_NAMES[method]}, the first ({where}) {_METHOD_NAMES[first[0]]}")
        return (first[0], first[1]) if first else (None, None)

    def _method(self, st: Stmt, label: str) -> str | None:
        words = st.args
        fld = f"{label}.{st.key}"
        if not words or words[0].upper() not in METHODS:
            self.error(st, fld, f"expected NAT, DR or TUN, got {' '.join(words)!r}")
            return None
        rest = [w.lower() for w in words[1:]]
        if words[0].upper() == "TUN" and rest and rest[:2] != ["type", "ipip"]:
            self.error(st, fld, "lb tunnels with IPIP only (type gue and gre are not supported)")
            return None
        if words[0].upper() != "TUN" and rest:
            self.error(st, fld, f"unexpected {' '.join(words[1:])!r} after {words[0]}")
        return METHODS[words[0].upper()]

    def _vrrp_if(self, v: _Vrrp) -> str | None:
        st = v.opts.get("interface")
        return st.args[0] if st is not None and st.args else None

    def _interfaces(self, glob_: dict[str, Any], vss: list[dict[str, Any]],
                    vip_dev: dict[str, tuple[str | None, Stmt, _Vrrp]]) -> None:
        pub = self.globals.get("lb_public_interface")
        if pub is not None:
            name = self.one(pub, "global_defs.lb_public_interface")
            if name is not None:
                glob_["public_interface"] = name
            self.note(("global", "public_interface"), pub, "global_defs.lb_public_interface")
        for vs in vss:
            vip = vs.get("address") or next((g["address"] for g in vs.get("port_group", [])), None)
            found = vip_dev.get(str(vip)) if vip is not None else None
            if found is not None and found[0] is not None:
                vs["_device"] = found[0]
                if "public_interface" not in glob_:
                    glob_["public_interface"] = found[0]
                    self.note(("global", "public_interface"), found[1], f"vrrp_instance[{' '.join(found[2].stmt.args)}]"
                                                                      f".virtual_ipaddress")
        if "public_interface" not in glob_ and self.vrrps and self._vrrp_if(self.vrrps[0]):
            v = self.vrrps[0]
            glob_["public_interface"] = self._vrrp_if(v)
            self.note(("global", "public_interface"), v.opts["interface"],
                      f"vrrp_instance[{' '.join(v.stmt.args)}].interface")
        if "public_interface" not in glob_:
            # the first virtual server's line (what needs the interface), else global_defs' (where it goes)
            st = self.virtuals[0].stmt if self.virtuals else self.global_defs
            self.note(("global", "public_interface"), st, "global_defs.public_interface")
            self.issues.append(ConfigIssue(st.file if st else self.display, st.line if st else None,
                               "global_defs.public_interface",
                               "cannot tell the public interface (the one that carries the VIPs): keepalived.conf "
                               "names it only in a vrrp_instance holding the VIPs; add `lb_public_interface IF` "
                               "to global_defs (keepalived ignores it, with a warning)"))
        priv = self.globals.get("lb_private_interface")
        if priv is not None:
            name = self.one(priv, "global_defs.lb_private_interface")
            if name is not None:
                glob_["private_interface"] = name
            self.note(("global", "private_interface"), priv, "global_defs.lb_private_interface")

    def _nat_router(self, glob_: dict[str, Any], vss: list[dict[str, Any]],
                    vip_dev: dict[str, tuple[str | None, Stmt, _Vrrp]], network: str | None) -> None:
        """The real servers' gateway: lb_nat_router, else a VRRP address on another interface than
        the public one whose subnet holds a real server (NAT needs one)."""
        ext = self.globals.get("lb_nat_router")
        fields = ("nat_router", "nat_router_device", "private_interface")
        if ext is not None:
            # first: every issue of these fields names this line (lb_private_interface keeps its own)
            for f in fields if "lb_private_interface" not in self.globals else fields[:2]:
                self.note(("global", f), ext, "global_defs.lb_nat_router")
            if not 1 <= len(ext.args) <= 2:
                self.error(ext, "global_defs.lb_nat_router", "expected 'lb_nat_router ADDRESS/PREFIX [IF]'")
                return
            glob_["nat_router"] = ext.args[0]
            if len(ext.args) == 2:
                glob_["nat_router_device"] = ext.args[1]
                glob_.setdefault("private_interface", ext.args[1])
            elif network == "nat" and "private_interface" not in glob_:
                self.error(ext, "global_defs.lb_nat_router",
                           "names no interface: NAT needs the director's interface toward the real servers (where "
                           "lb adds this gateway): write `lb_nat_router ADDRESS/PREFIX IF` (e.g. `lb_nat_router "
                           f"{ext.args[0]} eth1`) or add `lb_private_interface IF` to global_defs")
            return
        vips = {str(vs.get("address")) for vs in vss} | {str(g["address"]) for vs in vss for g in vs.get("port_group", [])}
        reals = []
        for vs in vss:
            for r in vs.get("real_server", []):
                try:
                    reals.append(ipaddress.ip_address(r["address"]))
                except ValueError:
                    pass
        pub = glob_.get("public_interface")
        chosen = None
        for v in self.vrrps:
            for st, iface, dev in v.vips:
                d = dev or self._vrrp_if(v)
                if str(iface.ip) in vips:
                    continue
                gateway = d != pub and any(r in iface.network for r in reals if r.version == iface.version)
                if gateway and chosen is None:
                    chosen = (st, iface, d, v)
                elif gateway:
                    self.warn(st, f"vrrp_instance[{' '.join(v.stmt.args)}].virtual_ipaddress",
                              f"{iface}: lb owns only one real servers' gateway (nat_router, of one address "
                              f"family): {chosen[1]} is it, this address is not added")
                else:
                    self.warn(st, f"vrrp_instance[{' '.join(v.stmt.args)}].virtual_ipaddress",
                              f"{iface}: lb brings up only the virtual servers' addresses and the real servers' "
                              f"gateway (nat_router): this address is not added")
        if chosen is not None:
            st, iface, d, v = chosen
            if network == "nat" or any(x.peers for x in self.vrrps):
                glob_["nat_router"] = str(iface)
                glob_["nat_router_device"] = d
                glob_.setdefault("private_interface", d)
                for f in fields:
                    self.note(("global", f), st, f"vrrp_instance[{' '.join(v.stmt.args)}].virtual_ipaddress")
        elif network == "nat":
            st = self.virtuals[0].stmt if self.virtuals else None
            for f in fields:
                self.note(("global", f), st, "global_defs.nat_router")
            self.issues.append(ConfigIssue(st.file if st else self.display, st.line if st else None,
                               "global_defs.nat_router", "NAT: lb owns the real servers' gateway (nat_router) and keepalived.conf does not "
                               "say it: with VRRP it is a virtual_ipaddress on the real servers' side (e.g. "
                               "10.0.0.254/24 dev eth1); without, add `lb_nat_router ADDRESS/PREFIX IF` to "
                               "global_defs (keepalived ignores it, with a warning)"))
        if network == "nat" and ("global", "private_interface") not in self.positions.notes and self.virtuals:
            # never a message without a line: NAT came from the first virtual server
            self.note(("global", "private_interface"), self.virtuals[0].stmt, "global_defs.lb_private_interface")

    def _ha(self, glob_: dict[str, Any], vss: list[dict[str, Any]]) -> dict[str, Any] | None:
        """vrrp_instance -> [ha]: the instance holding the VIPs is the public channel; another one with
        unicast addresses on another interface the private channel."""
        if not self.vrrps:
            for k in ("lvs_sync_daemon", "vrrp_garp_master_repeat", "vrrp_garp_interval", "vrrp_gna_interval",
                      "vrrp_garp_master_refresh"):
                if k in self.globals:
                    self.warn(self.globals[k], f"global_defs.{k}", "no effect without a pair of directors (a "
                                                                   "vrrp_instance)")
            return None
        pub = glob_.get("public_interface")
        vips = {str(vs.get("address")) for vs in vss} | {str(g["address"]) for vs in vss
                                                          for g in vs.get("port_group", [])}
        main = next((v for v in self.vrrps if any(str(i.ip) in vips for _, i, _ in v.vips)), self.vrrps[0])
        label = f"vrrp_instance[{' '.join(main.stmt.args)}]"
        pair = self._pair(main, label)
        if pair is None:
            return None
        me, peer = pair
        primary, backup = sorted((me, peer), key=lambda a: (a.version, a))
        ha: dict[str, Any] = {"primary": str(primary), "backup": str(backup)}
        self.note(("ha",), main.stmt, label)
        src = main.opts.get("unicast_src_ip") or main.opts.get("mcast_src_ip")
        for k in ("primary", "backup"):
            self.note(("ha", k), src, f"{label}.unicast_src_ip")
        priv = next((v for v in self.vrrps if v is not main and self._vrrp_if(v) != self._vrrp_if(main)
                     and v.peers and (v.opts.get("unicast_src_ip") or v.opts.get("mcast_src_ip"))), None)
        if priv is not None:
            plabel = f"vrrp_instance[{' '.join(priv.stmt.args)}]"
            ppair = self._pair(priv, plabel)
            if ppair is not None:
                pme, ppeer = ppair
                ha["primary_private"], ha["backup_private"] = (str(pme), str(ppeer)) if me == primary else \
                    (str(ppeer), str(pme))
                for k in ("primary_private", "backup_private"):
                    self.note(("ha", k), priv.opts.get("unicast_src_ip") or priv.stmt, f"{plabel}.unicast_src_ip")
                self.warn(priv.stmt, plabel, f"mapped to [ha]'s private channel: primary_private "
                                             f"{ha['primary_private']}, backup_private {ha['backup_private']}; its "
                                             f"other settings have no effect (one role moves every address)")
        adv = main.opts.get("advert_int")
        advert = (self.timer(adv, f"{label}.advert_int") if adv is not None else None) or ADVERT_INT
        ha["keepalive"] = advert
        ha["deadtime"] = 3 * advert
        for k in ("keepalive", "deadtime"):
            self.note(("ha", k), adv or main.stmt, f"{label}.advert_int")
        for t in main.track:
            if t.key == pub:
                ha["monitor_links"] = True
                self.note(("ha", "monitor_links"), t, f"{label}.track_interface")
            else:
                self.warn(t, f"{label}.track_interface", f"no effect: lb watches only the public link "
                                                         f"({pub}, [ha] monitor_links)")
        self._garp(ha, main, label)
        pd = main.opts.get("preempt_delay")
        if pd is not None:
            # [ha] preempt_delay, keepalived's meaning (a returning primary waits that long as
            # backup); preempt itself stays off (below), so the loader says it has no effect
            # until [ha] preempt is set
            delay = self.timer(pd, f"{label}.preempt_delay")
            if delay is not None:
                ha["preempt_delay"] = delay
                self.note(("ha", "preempt_delay"), pd, f"{label}.preempt_delay")
        kf = self.globals.get("lb_ha_key_file")
        if kf is not None:
            ha["key_file"] = self.one(kf, "global_defs.lb_ha_key_file") or ""
            self.note(("ha", "key_file"), kf, "global_defs.lb_ha_key_file")
        else:
            ha["key_file"] = str(DEFAULT_HA_KEY_FILE)
            self.note(("ha", "key_file"), main.stmt, label)
            self.warn(main.stmt, label, key_file_warning("global_defs.lb_ha_key_file"))
        unused = [k for k in ("state", "priority", "virtual_router_id", "version") if k in main.opts]
        self.warn(main.stmt, label,
                  f"mapped to [ha]: primary {primary}, backup {backup} (the lower address is the primary, "
                  f"on both directors), keepalive {advert:g} s (advert_int), deadtime {3 * advert:g} s; lb's "
                  f"heartbeat is not VRRP (signed unicast datagrams to UDP port 539, no virtual router id, no "
                  f"priorities, no multicast), so both directors move to lb together"
                  + (f"; {', '.join(unused)}: no effect" if unused else "")
                  + ("; preempt is off: the active director keeps the addresses until it fails"))
        for v in self.vrrps:
            if v is not main and v is not priv:
                self.warn(v.stmt, f"vrrp_instance[{' '.join(v.stmt.args)}]",
                          "its addresses move with the other instances' (lb has one role per director); its "
                          "own advertisement settings have no effect")
        return ha

    def _pair(self, v: _Vrrp, label: str) -> tuple[IPAddress, IPAddress] | None:
        src = v.opts.get("unicast_src_ip") or v.opts.get("mcast_src_ip")
        if src is None or not v.peers:
            self.error(v.stmt, label, "lb's heartbeat goes between the two directors' addresses, and this VRRP "
                                      "instance advertises by multicast without naming its peer: give "
                                      "unicast_src_ip (this director's address) and unicast_peer { PEER } "
                                      "(keepalived accepts both)")
            return None
        if len(v.peers) != 1:
            self.error(v.peers[1], f"{label}.unicast_peer", f"lb's HA is a pair of directors: "
                                                            f"{len(v.peers)} unicast peers")
            return None
        try:
            me = ipaddress.ip_address(src.args[0]) if len(src.args) == 1 else None
            peer = ipaddress.ip_address(v.peers[0].key)  # later words (min_ttl ...) do not matter here
        except ValueError:
            me = peer = None
        if me is None or peer is None:
            self.error(src, f"{label}.{src.key}", "expected one address each in unicast_src_ip and unicast_peer")
            return None
        if me.version != peer.version or me == peer:
            self.error(v.peers[0], f"{label}.unicast_peer", "the peer's address must differ from unicast_src_ip, "
                                                            "in the same family")
            return None
        return me, peer

    def _garp(self, ha: dict[str, Any], main: _Vrrp, label: str) -> None:
        for key, gkey, conv in (("garp_count", "garp_master_repeat", int), ("garp_interval", "garp_interval", float),
                                ("garp_interval", "gna_interval", float), ("garp_refresh", "garp_master_refresh", float)):
            st = main.opts.get(gkey) or self.globals.get(f"vrrp_{gkey}")
            if st is None or key in ha:
                continue
            fld = f"{label}.{gkey}" if st.key == gkey else f"global_defs.{st.key}"
            value = self.timer(st, fld)
            if value is not None:
                ha[key] = conv(value)
                self.note(("ha", key), st, fld)

    # -- virtual servers
    def _virtual_servers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for vs in self.virtuals:
            ends = self._endpoints(vs)
            for key, addr, port, fwmark in ends:
                label = vs.label if len(ends) == 1 else f"{vs.label}[{key}]"
                d = self._one_virtual(vs, len(out), label, key, addr, port, fwmark)
                if d is not None:
                    out.append(d)
        # TCP and UDP on one ADDRESS PORT (DNS) are two services: their names say which (the
        # others keep ADDRESS:PORT)
        protocols: dict[str, set[str]] = {}
        for d in out:
            protocols.setdefault(d["name"], set()).add(d.get("protocol", "tcp"))
        for d in out:
            if len(protocols[d["name"]]) > 1:
                d["name"] = f"{d.get('protocol', 'tcp')}/{d['name']}"
        return out

    def _endpoints(self, vs: _Virtual) -> list[tuple[str, str | None, int | None, int | None]]:
        """(name, address, port, fwmark) of each lb virtual server ``vs`` stands for."""
        a = vs.stmt.args
        if len(a) == 2 and a[0] == "fwmark":
            if not _digits(a[1]):
                self.error(vs.stmt, vs.label, f"'{a[1]}' is not a firewall mark")
                return []
            return [(f"fwmark{a[1]}", None, None, int(a[1]))]
        if len(a) == 2 and a[0] == "group":
            g = self.groups.get(a[1])
            if g is None:
                self.error(vs.stmt, vs.label, f"no virtual_server_group {a[1]}")
                return []
            out = self._group(vs, g)
            if not out:
                self.warn(vs.stmt, vs.label, f"virtual_server_group {a[1]} gives no 'ADDRESS PORT' entry lb can use: "
                                             f"this virtual_server (its real servers and checkers) is left out")
            return out
        if len(a) == 2:
            return [(f"{a[0]}:{a[1]}" if ":" not in a[0] else f"[{a[0]}]:{a[1]}", a[0], self._port(vs.stmt, a[1],
                                                                                              vs.label), None)]
        if len(a) == 1:
            self.error(vs.stmt, vs.label, "a virtual server without a port (IPVS's persistent port-0 service) is "
                                          "not supported: give the port, or make it a firewall-mark service "
                                          "(fwmark N with lb_port_group lines)")
            return []
        self.error(vs.stmt, vs.label, "expected 'virtual_server ADDRESS PORT {' (or fwmark N, group NAME)")
        return []

    def _ip_family(self, vs: _Virtual, label: str, addr: str | None) -> None:
        """``ip_family inet|inet6`` against the virtual server's address or its lb_port_group
        addresses: keepalived ignores one that conflicts with the address (a log line), and a
        firewall-mark service of one family leaves out the real servers of the other; which
        family was meant is the file's to say."""
        st = vs.opts.get("ip_family")
        if st is None:
            return
        fld = f"{label}.ip_family"
        fam = self.one(st, fld)
        if fam is None:
            return
        version = {"inet": 4, "inet6": 6}.get(fam)
        if version is None:
            self.error(st, fld, f"'{fam}' is not an address family: inet or inet6")
            return
        given: list[tuple[Stmt, str]] = []
        if addr is not None:
            given.append((vs.stmt, addr))
        else:
            given.extend((g, g.args[1]) for g in vs.groups if len(g.args) == 3)
        for where, text in given:
            try:
                other = ipaddress.ip_address(text)
            except ValueError:
                continue  # the address's own check says so
            if other.version != version:
                what = "the virtual server's address" if addr is not None else "the lb_port_group address"
                self.error(st, fld, f"ip_family {fam}, but {what} {text} ({where.where()}) is IPv{other.version}"
                                    f": make them agree")
                return

    def _port(self, st: Stmt, text: str, label: str) -> int | None:
        if not _digits(text) or not 1 <= int(text) <= 65535:
            self.error(st, label, f"'{text}' is not a port (1..65535)")
            return None
        return int(text)

    def _group(self, vs: _Virtual, g: Stmt) -> list[tuple[str, str | None, int | None, int | None]]:
        out: list[tuple[str, str | None, int | None, int | None]] = []
        glabel = f"virtual_server_group[{g.args[0]}]"
        for e in g.block or []:
            words = [e.key, *e.args]
            if words[0] == "fwmark":
                self.warn(e, glabel, "not supported in a group: write virtual_server fwmark N with lb_port_group "
                                     "lines for it")
                continue
            if len(words) != 2:
                self.error(e, glabel, "expected 'ADDRESS PORT' or 'ADDRESS-RANGE PORT' (lb needs the port)")
                continue
            port = self._port(e, words[1], glabel)
            addrs = self._range(e, words[0], glabel)
            if port is None or addrs is None:
                continue
            for addr in addrs:
                name = f"{addr}:{port}" if addr.version == 4 else f"[{addr}]:{port}"
                out.append((name, str(addr), port, None))
        return out

    def _range(self, st: Stmt, text: str, label: str) -> list[IPAddress] | None:
        """192.0.2.1, 192.0.2.1-10, 192.0.2.250-192.0.3.10, 192.0.2.8/29 (bounded)."""
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                if net.num_addresses > MAX_GROUP_ADDRESSES:
                    raise OverflowError
                return list(net) if net.num_addresses <= 2 else list(net.hosts())
            if "-" in text:
                lo_text, hi_text = text.split("-", 1)
                lo = ipaddress.ip_address(lo_text)
                if ":" in hi_text or "." in hi_text:
                    hi = ipaddress.ip_address(hi_text)
                else:  # the last part only: 192.0.2.3-10, 2001:2::1-ff
                    sep = "." if lo.version == 4 else ":"
                    head = lo_text.rsplit(sep, 1)[0]
                    hi = ipaddress.ip_address(head + sep + hi_text)
                if hi.version != lo.version or int(hi) < int(lo):
                    raise ValueError
                if int(hi) - int(lo) >= MAX_GROUP_ADDRESSES:
                    raise OverflowError
                return [ipaddress.ip_address(int(lo) + k) if lo.version == 4 else ipaddress.IPv6Address(int(lo) + k)
                        for k in range(int(hi) - int(lo) + 1)]
            return [ipaddress.ip_address(text)]
        except OverflowError:
            self.error(st, label, f"{text}: more than {MAX_GROUP_ADDRESSES} addresses")
        except ValueError:
            self.error(st, label, f"'{text}' is not an address or address range")
        return None

    def _one_virtual(self, vs: _Virtual, i: int, label: str, name: str, addr: str | None, port: int | None,
                     fwmark: int | None) -> dict[str, Any] | None:
        tf: FieldPath = ("virtual_server", i)
        self.note(tf, vs.stmt, label)
        d: dict[str, Any] = {"name": name}
        if fwmark is not None:
            d["fwmark"] = fwmark
            self.note(tf + ("fwmark",), vs.stmt, label)
            groups = []
            for k, g in enumerate(vs.groups):
                if len(g.args) != 3:
                    self.error(g, f"{label}.lb_port_group", "expected 'lb_port_group PROTOCOL ADDRESS PORT[-PORT]'")
                    continue
                groups.append({"protocol": g.args[0].lower(), "address": g.args[1], "ports": g.args[2]})
                self.note(tf + ("port_group", len(groups) - 1), g, f"{label}.lb_port_group")
            if not vs.groups:
                self.error(vs.stmt, f"{label}.lb_port_group",
                           f"lb matches a firewall-mark service's ports itself (no iptables rule marks the packets): "
                           f"list the ports your rules marked with {fwmark} in this block, one `lb_port_group "
                           f"PROTOCOL VIP PORT[-PORT]` line each (e.g. lb_port_group tcp 192.0.2.10 21); keepalived "
                           f"ignores them, with a warning")
                return None
            if groups:
                d["port_group"] = groups
        else:
            d["address"] = addr
            if port is not None:
                d["port"] = port
            for k in ("address", "port", "name"):
                self.note(tf + (k,), vs.stmt, label)
            if vs.groups:
                self.error(vs.groups[0], f"{label}.lb_port_group", "lb_port_group belongs to a virtual_server fwmark N")
        self._ip_family(vs, label, addr)
        o = vs.opts
        proto = o.get("protocol")
        if proto is not None:
            p = (self.one(proto, f"{label}.protocol") or "").upper()
            if p == "SCTP":
                self.error(proto, f"{label}.protocol", "SCTP is not supported (lb balances TCP and UDP)")
            elif p in ("TCP", "UDP"):
                if fwmark is None:
                    d["protocol"] = p.lower()
            else:
                self.error(proto, f"{label}.protocol", f"expected TCP or UDP, got {p!r}")
            self.note(tf + ("protocol",), proto, f"{label}.protocol")
        sched = o.get("lb_algo") or o.get("lvs_sched")
        if sched is not None:
            d["scheduler"] = (self.one(sched, f"{label}.{sched.key}") or "").lower()
            self.note(tf + ("scheduler",), sched, f"{label}.{sched.key}")
        flags = []
        for f in ("sh-port", "sh-fallback", "mh-port", "mh-fallback", "flag-1", "flag-2", "flag-3"):
            st = o.get(f)
            if st is None:
                continue
            if f.startswith("flag-"):
                s = d.get("scheduler", "")
                named = {"flag-1": "fallback", "flag-2": "port"}.get(f)
                if named is None or f"{s}-{named}" not in SCHEDULER_FLAGS:
                    self.warn(st, f"{label}.{f}", f"no effect: lb knows no {f} for scheduler {s or 'wlc'}")
                    continue
                f = f"{s}-{named}"
            flags.append(f)
            self.note(tf + ("scheduler_flags",), st, f"{label}.{st.key}")
        if flags:
            d["scheduler_flags"] = flags
        pt = o.get("persistence_timeout")
        if pt is not None:
            if pt.args:
                value = self.integer(pt, f"{label}.persistence_timeout", 0, _toml.PERSISTENT_RANGE[1])
            else:
                value = PERSISTENCE_TIMEOUT
            if value is not None:
                d["persistent"] = value
            self.note(tf + ("persistent",), pt, f"{label}.persistence_timeout")
        pg = o.get("persistence_granularity")
        if pg is not None and pt is None:  # keepalived's pgr_handler turns persistence on: 360 s
            d["persistent"] = PERSISTENCE_TIMEOUT
            self.note(tf + ("persistent",), pg, f"{label}.persistence_granularity")
        if pg is not None:
            mask = self.one(pg, f"{label}.persistence_granularity")
            if mask is not None:
                d["pmask"] = int(mask) if _digits(mask) else mask
            self.note(tf + ("pmask",), pg, f"{label}.persistence_granularity")
        sorry = o.get("sorry_server")
        if sorry is not None:
            if not 1 <= len(sorry.args) <= 2:
                self.error(sorry, f"{label}.sorry_server", "expected 'sorry_server ADDRESS [PORT]'")
            else:
                sa = sorry.args[0]
                sp = sorry.args[1] if len(sorry.args) == 2 else None
                if sp is not None and port is not None and sp == str(port):
                    sp = None
                d["sorry_server"] = sa if sp is None else (f"[{sa}]:{sp}" if ":" in sa else f"{sa}:{sp}")
            self.note(tf + ("sorry_server",), sorry, f"{label}.sorry_server")
        reals = []
        seen: dict[str, int] = {}
        for rs in vs.reals:
            seen[rs.address] = seen.get(rs.address, 0) + 1
        for j, rs in enumerate(vs.reals):
            rf = tf + ("real_server", j)
            self.note(rf, rs.stmt, rs.label)
            r: dict[str, Any] = {"address": rs.address}
            if seen[rs.address] > 1:
                r["name"] = f"{rs.address}:{rs.port}" if ":" not in rs.address else f"[{rs.address}]:{rs.port}"
            if rs.port is not None and fwmark is None and rs.port != port:
                r["port"] = rs.port
            elif rs.port and fwmark is not None:
                self._fwmark_real_port(vs, rs)
            w = rs.opts.get("weight")
            if w is not None:
                wv = self.integer(w, f"{rs.label}.weight", 0, 65535)
                if wv is not None:
                    r["weight"] = wv
                self.note(rf + ("weight",), w, f"{rs.label}.weight")
            for k, lk in (("uthreshold", "u_threshold"), ("lthreshold", "l_threshold")):
                st = rs.opts.get(k)
                if st is not None:
                    v = self.integer(st, f"{rs.label}.{k}")
                    if v is not None:
                        r[lk] = v
                    self.note(rf + (lk,), st, f"{rs.label}.{k}")
            reals.append(r)
        if reals:
            d["real_server"] = reals
        monitor = self._monitor(vs, tf + ("monitor",), label, port)
        if monitor is not None:
            d["monitor"] = monitor
        return d

    def _fwmark_real_port(self, vs: _Virtual, rs: _Real) -> None:
        """A port on a firewall-mark service's real server: IPVS NATs to it, lb has no such port
        (each connection keeps its own); DR and TUN ignore it in IPVS too."""
        st = vs.opts.get("lb_kind") or vs.opts.get("lvs_method")
        method = "nat" if st is None else METHODS.get(st.args[0].upper()) if st.args else None
        if method == "nat":
            self.error(rs.stmt, rs.label, f"keepalived NATs this firewall-mark service's connections to port "
                                          f"{rs.port}; lb sends each to the port it came to (the lb_port_group "
                                          f"ports): omit the port if the real server listens on those, else "
                                          f"write a virtual_server ADDRESS PORT for it")
        elif method is not None:  # a wrong lb_kind: reported by _network
            self.warn(rs.stmt, rs.label, f"port {rs.port}: no effect: {_METHOD_NAMES[method]} keeps each "
                                         f"connection's own port (in keepalived too)")

    # -- checkers -> monitor
    def _setting(self, key: str, *stmts_opts: dict[str, Stmt]) -> Stmt | None:
        """The innermost of checker, real server, virtual server that sets ``key``."""
        for opts in stmts_opts:
            if key in opts:
                return opts[key]
        return None

    def _retry(self, *stmts_opts: dict[str, Stmt]) -> Stmt | None:
        """``retry`` or its old name ``nb_get_retry`` (HTTP_GET, SSL_GET): the innermost of checker, real
        server, virtual server that sets either; at one level both set the same count, the later wins
        (opts are in the order they are written)."""
        for opts in stmts_opts:
            found = [st for key, st in opts.items() if key in ("retry", "nb_get_retry")]
            if found:
                return found[-1]
        return None

    def _monitor(self, vs: _Virtual, mf: FieldPath, label: str, vport: int | None) -> dict[str, Any] | None:
        chosen: list[tuple[_Real, _Checker | None, dict[str, Any]]] = []
        for rs in vs.reals:
            usable = [c for c in rs.checkers if c.kind not in ("PING_CHECK", "BFD_CHECK", "FILE_CHECK")]
            for c in rs.checkers:
                if c.kind in ("PING_CHECK", "BFD_CHECK", "FILE_CHECK"):
                    self.warn(c.stmt, f"{rs.label}.{c.kind}", f"not supported: lb has no {c.kind.split('_')[0]} "
                                                              f"check" + ("; the real server is not checked"
                                                                          if not usable else ""))
            for c in usable[1:]:
                self.warn(c.stmt, f"{rs.label}.{c.kind}", f"no effect: lb runs one check per real server, its "
                                                          f"first ({usable[0].kind} at line {usable[0].stmt.line})")
            c = usable[0] if usable else None
            m = self._check(vs, rs, c, vport) if c is not None else None
            chosen.append((rs, c, m or {}))
        checked = [(rs, c, m) for rs, c, m in chosen if c is not None and m]
        if not checked:
            if vs.reals:
                self.note(mf, vs.stmt, label)
                return {"kind": "none"}  # keepalived: a real server without a checker is always up
            return None
        rs0, c0, m0 = checked[0]
        self.note(mf, c0.stmt, f"{rs0.label}.{c0.kind}")
        timing = self.timing.get(id(c0))  # said once, for the checker lb uses
        if timing is not None and timing not in self.warnings:
            self.warnings.append(timing)
        for rs, c, m in chosen:
            if c is None:
                self.warn(rs.stmt, rs.label, f"this real server has no checker (always up in keepalived); lb checks "
                                             f"it as the others ({c0.kind} of {rs0.label})")
            elif m and m != m0:
                diff = sorted(k for k in set(m) | set(m0) if m.get(k) != m0.get(k))
                self.warn(c.stmt, f"{rs.label}.{c.kind}", f"lb checks every real server of a virtual server the "
                                                          f"same way: {rs0.label}'s {c0.kind} "
                                                          f"({c0.stmt.where()}) is used here; this one differs "
                                                          f"in {', '.join(diff)}")
        inhibit = [rs for rs in vs.reals if self._inhibit(vs, rs)]
        if inhibit:
            m0 = {**m0, "quiesce": True}
            if len(inhibit) != len(vs.reals):
                rs = next(r for r in vs.reals if r not in inhibit)
                self.warn(rs.stmt, rs.label, "inhibit_on_failure is set for some real servers of this virtual "
                                             "server: lb quiesces them all (weight 0) when they fail")
        for k in m0:
            self.note(mf + (k,), c0.stmt, f"{rs0.label}.{c0.kind}")
        return m0

    def _inhibit(self, vs: _Virtual, rs: _Real) -> bool:
        st = self._setting("inhibit_on_failure", rs.opts, vs.opts)
        return bool(st is not None and self.boolean(st, f"{rs.label}.inhibit_on_failure"))

    def _check(self, vs: _Virtual, rs: _Real, c: _Checker, vport: int | None) -> dict[str, Any] | None:
        fld = f"{rs.label}.{c.kind}"
        opts = (c.opts, rs.opts, vs.opts)
        m: dict[str, Any] = {}
        loop = self._setting("delay_loop", *opts)
        interval = self.timer(loop, f"{fld}.delay_loop") if loop is not None else None
        if interval == 0:
            self.warn(loop, f"{fld}.delay_loop", f"0: lb checks every {DELAY_LOOP:g} s (its default), not without pause")
        interval = interval or DELAY_LOOP
        ct = self._setting("connect_timeout", *opts)
        connect = self.timer(ct, f"{fld}.connect_timeout") if ct is not None else None
        rt = self._retry(*opts)
        retry = self.integer(rt, self._field(rt, vs, rs, c), 0, 1000) if rt is not None else None
        if retry is None:
            retry = RETRY.get(c.kind, 1)
        dbr = self._setting("delay_before_retry", *opts)
        pause = self.timer(dbr, self._field(dbr, vs, rs, c)) if dbr is not None else None
        if pause is None:
            pause = DELAY_BEFORE_RETRY
        m["interval"] = interval
        m["timeout"] = 0.0  # below, once connect_timeout is known
        m["reentry"] = 0
        m["connect_timeout"] = connect if connect is not None else CONNECT_TIMEOUT
        cip = c.opts.get("connect_ip")
        if cip is not None and cip.args != [rs.address]:
            self.warn(cip, f"{fld}.connect_ip", "not supported: lb checks the real server's own address")
        cport = c.opts.get("connect_port")
        check_port = rs.port
        if cport is not None:
            check_port = self._port(cport, cport.args[0] if len(cport.args) == 1 else "", f"{fld}.connect_port")
        own = rs.port if rs.port is not None else vport
        is_fwmark = vs.stmt.args[:1] == ["fwmark"]
        if check_port is not None and (is_fwmark or check_port != own):
            m["port"] = check_port
        host_st = self._setting("virtualhost", c.opts, rs.opts, vs.opts)
        kind = c.kind
        if kind == "TCP_CHECK":
            m["kind"] = "tcp"
        elif kind in ("HTTP_GET", "SSL_GET"):
            m["kind"] = "http" if kind == "HTTP_GET" else "https"
            if kind == "SSL_GET":
                m["tls_verify"] = False  # keepalived does not verify the real server's certificate
            m.update(self._url(c, fld, host_st))
        elif kind == "MISC_CHECK":
            path = c.opts.get("misc_path")
            if path is None or len(path.args) < 1:
                self.error(c.stmt, fld, "a MISC_CHECK needs misc_path")
                return None
            text = " ".join(path.args).replace("%", "%%")
            m["kind"] = "program"
            m["program"] = re.sub(rf"(?<![0-9A-Fa-f.:]){re.escape(rs.address)}(?![0-9A-Fa-f.:])", "%h", text)
            mt = c.opts.get("misc_timeout")
            timeout = self.timer(mt, f"{fld}.misc_timeout") if mt is not None else None
            if timeout == 0:
                self.warn(mt, f"{fld}.misc_timeout", f"0: the program gets the check's interval, {interval:g} s")
            m["connect_timeout"] = timeout or interval
            mu = c.opts.get("user")
            if mu is not None and mu.args:       # MISC_CHECK's `user USER [GROUP]`
                m["script_user"] = mu.args[0]
            md = c.opts.get("misc_dynamic")
            if md is not None:
                m["misc_dynamic"] = True
                self.warn(md, f"{fld}.misc_dynamic", "lb does not set weights from a program's exit status: exit "
                                                     "2-255 keeps the real server up at its configured weight; a "
                                                     "load monitor ([virtual_server.load_monitor] kind = \"program\") "
                                                     "sets weights from its output")
        elif kind == "UDP_CHECK":
            m["kind"] = "udp"
            m.update(self._udp(c, fld))
        elif kind == "DNS_CHECK":
            m["kind"] = "udp"
            m.update(self._dns(c, fld))
        elif kind == "SMTP_CHECK":
            m.update(kind="send_expect", expect="^220", use_regex=True)
            for h in (h for hb in c.hosts for h in hb.block or []):
                self.warn(h, f"{fld}.host", "not supported: lb checks the real server's own address")
        if kind in ("TCP_CHECK", "SMTP_CHECK") and (vs.opts.get("protocol") and
                                                    (vs.opts["protocol"].args or [""])[0].upper() == "UDP"):
            self.warn(c.stmt, fld, "lb checks the real servers of a UDP service in datagrams (a UDP check: an "
                                   "empty datagram, down on an ICMP error), not with a TCP connection; use "
                                   "UDP_CHECK or DNS_CHECK, or MISC_CHECK for a TCP probe")
        checks, m["timeout"] = _down_after(interval, retry, pause, m["connect_timeout"])
        if retry > 0:
            st = rt or dbr or c.stmt
            soonest = interval + retry * pause
            self.timing[id(c)] = ConfigIssue(
                st.file, st.line, self._field(st, vs, rs, c) if st is not c.stmt else fld,
                f"keepalived takes the real server down after {retry + 1} failed checks, retried {pause:g} s apart "
                f"(at the soonest {soonest:g} s after the last success); lb checks every {interval:g} s only, so it "
                f"takes it down at the " + ("first failed check (timeout 0)" if checks == 1 else
                                            f"{_ordinal(checks)} failed check in a row (timeout {m['timeout']:g} s)")
                + ", never later than keepalived")
        return m

    @staticmethod
    def _field(st: Stmt, vs: _Virtual, rs: _Real, c: _Checker) -> str:
        """The name of a checker setting where it is written: the checker, its real server or the virtual server."""
        if c.opts.get(st.key) is st:
            return f"{rs.label}.{c.kind}.{st.key}"
        return f"{rs.label}.{st.key}" if rs.opts.get(st.key) is st else f"{vs.label}.{st.key}"

    def _url(self, c: _Checker, fld: str, host_st: Stmt | None) -> dict[str, Any]:
        m: dict[str, Any] = {}
        if host_st is not None and host_st.args:
            m["host"] = host_st.args[0]
        if not c.urls:
            m["status"] = list(HTTP_STATUS)
            return m
        for extra in c.urls[1:]:
            self.warn(extra, f"{fld}.url", f"no effect: lb checks one url, the first ({c.urls[0].where()})")
        u = c.urls[0]
        opts: dict[str, Stmt] = {}
        for o in u.block or []:
            if o.key in URL_NO_EFFECT:
                self.warn(o, f"{fld}.url.{o.key}", URL_NO_EFFECT[o.key])
            elif o.key in ("path", "digest", "status_code", "virtualhost", "regex"):
                if o.key in opts:
                    self._twice(o, f"{fld}.url.{o.key}", opts[o.key])
                opts.setdefault(o.key, o)
            else:
                self.warn(o, f"{fld}.url.{o.key}", "unknown keyword (keepalived would report it too): ignored")
        if "path" in opts and opts["path"].args:
            m["path"] = opts["path"].args[0]
        if "virtualhost" in opts and opts["virtualhost"].args:
            m["host"] = opts["virtualhost"].args[0]
        if "digest" in opts:
            m["digest"] = self.one(opts["digest"], f"{fld}.url.digest") or ""
        if "regex" in opts and opts["regex"].args:
            m["body_regex"] = " ".join(opts["regex"].args)
        sc = opts.get("status_code")
        status = list(HTTP_STATUS)
        if sc is not None:
            ranges = []
            for w in sc.args:
                mm = re.fullmatch(r"(\d{3})(?:-(\d{3}))?", w)
                if not mm:
                    self.error(sc, f"{fld}.url.status_code", f"expected status codes or ranges (200, 200-299), "
                                                             f"got {w!r}")
                    ranges = []
                    break
                ranges.append((int(mm.group(1)), int(mm.group(2) or mm.group(1))))
            if ranges:
                status = [min(lo for lo, _ in ranges), max(hi for _, hi in ranges)]
                if len(ranges) > 1:
                    self.warn(sc, f"{fld}.url.status_code", f"lb accepts one range of status codes: "
                                                            f"{status[0]}-{status[1]}")
        m["status"] = status
        return m

    def _udp(self, c: _Checker, fld: str) -> dict[str, Any]:
        m: dict[str, Any] = {}
        payload = c.opts.get("payload")
        if payload is not None:
            hx = _hex_bytes(payload.args)
            if hx is None or any(mask is not None for mask in hx[1]):
                self.error(payload, f"{fld}.payload", "expected hexadecimal digits (e.g. payload 0a1b 2c)")
            elif any(b is not None and b >= 0x80 for b in hx[0]):
                self.error(payload, f"{fld}.payload", "lb's UDP check sends text: bytes 00-7f only")
            else:
                m["send"] = "".join("\\\\" if b == 0x5C else chr(b) for b in hx[0] if b is not None)
        else:
            self.warn(c.stmt, fld, "no payload: lb's UDP check sends an empty datagram (keepalived a random one)")
        rr = c.opts.get("require_reply")
        if rr is not None and rr.args:
            hx = _hex_bytes(rr.args)
            if hx is None:
                self.error(rr, f"{fld}.require_reply", "expected hexadecimal digits, X for any nibble")
            else:
                parts = []
                for b, mk in zip(hx[0], hx[1]):
                    assert b is not None
                    if mk is None:
                        parts.append(re.escape(chr(b)) if b < 0x80 else f"\\x{b:02x}")
                    else:  # X nibbles: every byte they allow
                        parts.append("[" + "".join(f"\\x{v:02x}" for v in range(256) if v & ~mk == b & ~mk) + "]")
                # matched on bytes: the check reads the reply one character a byte
                m.update(expect="\\A" + "".join(parts), use_regex=True, reply_encoding="latin-1")
        return m

    def _dns(self, c: _Checker, fld: str) -> dict[str, Any]:
        t = c.opts.get("type")
        qtype = (self.one(t, f"{fld}.type") or "SOA").upper() if t is not None else "SOA"
        if qtype not in DNS_TYPES:
            self.error(t or c.stmt, f"{fld}.type", f"expected one of {', '.join(DNS_TYPES)}, got {qtype!r}")
            return {}
        n = c.opts.get("name")
        name = (self.one(n, f"{fld}.name") or ".") if n is not None else "."
        labels = [x for x in name.strip(".").split(".") if x]
        if any(not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", x) for x in labels) or len(name) > 253:
            self.error(n or c.stmt, f"{fld}.name", f"'{name}' is not a domain name lb can ask for")
            return {}
        question = b"".join(bytes([len(x)]) + x.encode() for x in labels) + b"\0" + \
            DNS_TYPES[qtype].to_bytes(2, "big") + b"\0\1"
        query = DNS_ID + b"\1\0\0\1\0\0\0\0\0\0" + question
        # the reply, as keepalived's check_dns takes it: our id; QR set (a reply, not the query
        # echoed); any opcode and flags but RCODE 0 (not SERVFAIL, REFUSED...); the counts; the
        # question as asked.  Matched on bytes (latin-1: one character a byte)
        rcode_0 = "".join(f"\\x{v:02x}" for v in range(0, 256, 16))
        return {"send": query.decode("ascii"), "expect": "\\A" + re.escape(DNS_ID.decode()) + "[\\x80-\\xff]["
                + rcode_0 + "][\\s\\S]{8}" + re.escape(question.decode("ascii")), "use_regex": True,
                "reply_encoding": "latin-1"}


def _down_after(interval: float, retry: int, pause: float, connect_timeout: float) -> tuple[int, float]:
    """(checks, timeout): keepalived takes a real server down after retry + 1 failed checks, the first
    at most delay_loop after the last success, then one each delay_before_retry (``pause``, plus the
    check's own time).  lb checks every ``interval`` and goes down once no check has succeeded for
    ``timeout`` s: the checks that fit into keepalived's soonest (interval + retry x pause), the
    last of them failing takes it down.  The nanny counts the silence from the start of the last
    successful check (before any, one interval before the first check: a server dead from the
    start goes down at the same n-th failed check), and checks start every interval: at the end of the n-th failed one it is
    n x interval plus that check's own time, at the end of the one before less than n x interval
    (a check's time, connect_timeout at most, being shorter than the interval): that is the
    timeout; one check needs none (0: the first failure)."""
    checks = 1 + math.floor(retry * pause / interval + 1e-9)
    if checks == 1:
        return 1, 0.0
    return checks, round(checks * interval, 6)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


_METHOD_NAMES = {"nat": "NAT", "direct": "DR", "tunnel": "TUN"}
GLOBAL_MAPPED = ("router_id", "lvs_timeouts", "lvs_sync_daemon", "lb_public_interface", "lb_private_interface",
                 "lb_nat_router", "lb_ha_key_file", "vrrp_garp_master_repeat", "vrrp_garp_interval",
                 "vrrp_gna_interval", "vrrp_garp_master_refresh", "script_user")
VS_KEYS = ("lb_algo", "lvs_sched", "lb_kind", "lvs_method", "protocol", "persistence_timeout",
           "persistence_granularity", "sorry_server", "sorry_server_lvs_method", "virtualhost", "delay_loop",
           "connect_timeout", "retry", "delay_before_retry", "inhibit_on_failure", "ip_family", "sh-port",
           "sh-fallback", "mh-port", "mh-fallback", "flag-1", "flag-2", "flag-3")
# keepalived's old and new names of one keyword (one handler: the later one written wins there)
VS_ALIASES = {"lb_algo": "lvs_sched", "lvs_sched": "lb_algo", "lb_kind": "lvs_method", "lvs_method": "lb_kind"}
VRRP_ALIASES = {"unicast_src_ip": "mcast_src_ip", "mcast_src_ip": "unicast_src_ip"}
RS_KEYS = ("weight", "lvs_method", "uthreshold", "lthreshold", "inhibit_on_failure", "virtualhost",
           "connect_timeout", "retry", "delay_before_retry", "delay_loop")
CHECKER_KEYS = ("connect_ip", "connect_port", "connect_timeout", "retry", "nb_get_retry", "delay_before_retry",
                "delay_loop", "misc_path", "misc_timeout", "misc_dynamic", "user", "payload", "require_reply", "type",
                "name", "virtualhost", "host")


# --- public API -----------------------------------------------------------------------------------


def _parse(text: str | None, display: str, path: Path | None, config_id: str | None,
           watch: Watched | None = None, *, dataplane: str | None = None) -> Config:
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    reader = _Reader(config_id if config_id is not None else default_config_id(), issues, warnings, watch)
    real = os.path.realpath(path) if path is not None else display
    reader.read_file(os.fspath(path) if path is not None else display, display, 0, (real,), text)
    if issues:
        raise ConfigError(issues)
    top = _tree(reader.lines, issues)
    b = _Builder(display, issues, warnings)
    b.collect(top)
    doc = b.build()
    cfg: Config | None = None
    try:
        cfg = _toml.validate(doc, display, b.positions, path, _sorted(warnings, display), dataplane=dataplane)
    except ConfigError as e:
        seen = {(i.path, i.line, i.field) for i in issues}
        fields = {i.field for i in issues}
        issues.extend(i for i in e.issues if (i.path, i.line, i.field) not in seen and i.field not in fields)
    if issues:
        raise ConfigError(_sorted(issues, display))
    assert cfg is not None
    return cfg


def _positions(path: str | os.PathLike[str]) -> _toml.Positions:
    """Where each field of the keepalived.conf at ``path`` (default config id) is written, for
    messages about a configuration already loaded from it (`lb export`)."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    display = os.fspath(path)
    reader = _Reader(default_config_id(), issues, warnings)
    reader.read_file(display, display, 0, (os.path.realpath(path),))
    b = _Builder(display, issues, warnings)
    b.collect(_tree(reader.lines, issues))
    b.build()
    return b.positions


def _sorted(items: list[ConfigIssue], display: str) -> list[ConfigIssue]:
    """The main file's issues first, then each included file's, each in line order; each once
    (a statement in a virtual_server group's block is read once per member of the group)."""
    return sorted(dict.fromkeys(items), key=lambda i: (i.path != display, i.path, i.line or 0))


def load(path: str | os.PathLike[str], config_id: str | None = None, watch: Watched | None = None, *,
         dataplane: str | None = None) -> Config:
    """Read keepalived.conf at ``path`` (and its includes); ``config_id`` selects its @ID lines
    (default: the host name's first label, as keepalived).  ``watch`` collects what was read
    (even when it raises ConfigError).  ``dataplane``: the data plane it is checked for
    (`lb run --dataplane`; None: the file's)."""
    return _parse(None, os.fspath(path), Path(path), config_id, watch, dataplane=dataplane)


def instance_only(path: str | os.PathLike[str]) -> str | None:
    """The instance the keepalived.conf at ``path`` names (its first global_defs router_id,
    lower-cased, as load() reads it; "default" without one), read alone: for `lb stop` / `lb status
    --config` of a file with errors elsewhere.  None when its blocks cannot be read."""
    display = os.fspath(path)
    issues: list[ConfigIssue] = []
    reader = _Reader(default_config_id(), issues, [])
    try:
        reader.read_file(display, display, 0, (os.path.realpath(path),))
        top = _tree(reader.lines, issues)
    except ConfigError:
        return None
    for st in top:
        if st.key != "global_defs":
            continue
        for g in st.block or ():
            if g.key == "router_id":
                if len(g.args) != 1 or g.block is not None:
                    return None
                name = g.args[0].lower()
                return name if _toml.INSTANCE_RE.fullmatch(name) else "default"
    return "default"


def loads(text: str, path: str = "<string>", config_id: str | None = None, *,
          dataplane: str | None = None) -> Config:
    """Parse keepalived.conf ``text`` (includes relative to the current directory; ``dataplane``
    as load's)."""
    _toml.check_size(text, path)
    return _parse(text, path, None, config_id, dataplane=dataplane)


_TOP = ("global_defs", "vrrp_instance", "vrrp_sync_group", "vrrp_script", "virtual_server", "virtual_server_group",
        "static_ipaddress", "static_routes", "static_rules", "net_namespace", "linkbeat_interfaces", "SSL",
        "vrrp_track_process", "track_file", "bfd_instance", "garp_group") + INCLUDES


def looks_like_keepalived(text: str) -> bool:
    """True when the first line that is not a comment (# or !) starts with a keepalived top-level
    keyword (not followed by '='), a conditional @ line or a $ parameter."""
    for raw in text.splitlines():
        s = raw.strip()
        if not s or s[0] == "#":
            continue
        if s[0] in "!@$":
            return True
        word = re.match(r"[A-Za-z_]+", s)
        return bool(word and word.group(0) in _TOP and not s[word.end():].lstrip().startswith("="))
    return False
