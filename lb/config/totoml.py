"""The configuration model as native TOML text: what `lb import` prints for an lvs.cf or a
keepalived.conf, and what lb.config.load reads back to the same model.

    text = lb.config.totoml.dumps(cfg, header=["Converted from lvs.cf by `lb import`."])
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from .model import (DEFAULT_MH_SIZE, DEFAULT_SCRIPT_USER, HA, Bgp, Config, Control, Defense, LoadMonitor, Metrics,
                    Monitor, Tables, Timeouts, Web, sorry_text)

__all__ = ["dumps", "document", "web_document", "metrics_document", "control_document", "emit", "keep_comments"]

# Monitor fields in seconds: written as integers when whole
MONITOR_SECONDS = ("interval", "timeout", "reentry", "connect_timeout")



def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    return _toml_str(str(v))


def emit(doc: dict[str, Any]) -> str:
    """Render the loader's document shape (tables of scalars, virtual_server/real_server arrays)."""
    out: list[str] = []
    for section in ("global", "tables", "timeouts", "defense", "ha", "web", "metrics", "control"):
        if section in doc:
            out.append(f"[{section}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in doc[section].items()]
            out.append("")
    if "bgp" in doc:
        out.append("[bgp]")
        out += [f"{k} = {_toml_value(v)}" for k, v in doc["bgp"].items() if k not in ("neighbor", "vip")]
        out.append("")
        for sub in ("neighbor", "vip"):
            for t in doc["bgp"].get(sub, []):
                out.append(f"  [[bgp.{sub}]]")
                out += [f"  {k} = {_toml_value(v)}" for k, v in t.items()]
                out.append("")
    for vs in doc.get("virtual_server", []):
        out.append("[[virtual_server]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in vs.items()
                if k not in ("real_server", "monitor", "port_group", "load_monitor")]
        out.append("")
        for g in vs.get("port_group", []):
            out.append("  [[virtual_server.port_group]]")
            out += [f"  {k} = {_toml_value(v)}" for k, v in g.items()]
            out.append("")
        for sub in ("monitor", "load_monitor"):
            if sub in vs:
                out.append(f"  [virtual_server.{sub}]")
                out += [f"  {k} = {_toml_value(v)}" for k, v in vs[sub].items()]
                out.append("")
        for rs in vs.get("real_server", []):
            out.append("  [[virtual_server.real_server]]")
            out += [f"  {k} = {_toml_value(v)}" for k, v in rs.items()]
            out.append("")
    return "\n".join(out)


def ha_default(ha: HA, user: str) -> HA:
    """What an [ha] table with only ha's addresses and key file reads as, but for the defaults that
    follow other keys: sync_port (ha's heartbeat_port + 1) and script_user (the global ``user``)."""
    return HA(primary=ha.primary, backup=ha.backup, key_file=ha.key_file, sync_port=ha.heartbeat_port + 1,
              script_user=user)


def _ha_document(ha: HA, user: str) -> dict[str, Any]:
    """The [ha] table of ``ha``: the addresses and key file always, the rest when not the default."""
    d = ha_default(ha, user)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(HA):
        v = getattr(ha, f.name)
        if f.name in ("primary", "backup", "key_file", "primary_private", "backup_private"):
            if v is not None:
                out[f.name] = str(v)
        elif v != getattr(d, f.name):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _listener_document(obj: Web | Metrics, default: Web | Metrics) -> dict[str, Any]:
    """``enabled`` and ``listen`` of a server of lb's when they are not the default."""
    out: dict[str, Any] = {}
    if obj.enabled != default.enabled:
        out["enabled"] = obj.enabled
    if obj.listen != default.listen:
        out["listen"] = obj.listen
    return out


def web_document(web: Web) -> dict[str, Any]:
    """The [web] keys that are not the default (lvs.cf: the same as lb_web_*)."""
    d = Web()
    out = _listener_document(web, d)
    for key in ("password_file", "tls_cert", "tls_key"):
        if getattr(web, key) is not None:
            out[key] = str(getattr(web, key))
    if web.allowed_hosts:
        out["allowed_hosts"] = list(web.allowed_hosts)
    if web.trusted_proxies:
        out["trusted_proxies"] = [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
                                  for n in web.trusted_proxies]
    if web.session_lifetime != d.session_lifetime:
        v = web.session_lifetime
        out["session_lifetime"] = int(v) if float(v).is_integer() else v
    if web.hsts != d.hsts:
        out["hsts"] = web.hsts
    return out


def control_document(control: Control) -> dict[str, Any]:
    """The [control] keys that are set (lvs.cf: lb_control_*)."""
    return {k: getattr(control, k) for k in ("admin_group", "read_group") if getattr(control, k) is not None}


def _bgp_document(bgp: Bgp) -> dict[str, Any]:
    """The [bgp] table of ``bgp``: local_as and the neighbors always, the rest when not the default."""
    d = Bgp(local_as=bgp.local_as, neighbors=())
    out: dict[str, Any] = {}
    for key in ("mode", "local_as", "router_id", "hold_time", "lease", "drain", "settle"):
        v = getattr(bgp, key)
        if key == "local_as" or (v is not None and v != getattr(d, key)):
            out[key] = int(v) if isinstance(v, float) and v.is_integer() else v if isinstance(v, (int, float)) else str(v)
    out["neighbor"] = [{"address": str(n.address), "peer_as": n.peer_as,
                        **({"local_address": str(n.local_address)} if n.local_address else {})} for n in bgp.neighbors]
    if bgp.vips:
        out["vip"] = [{"address": str(v.address), **({"med": v.med} if v.med is not None else {}),
                       **({"communities": list(v.communities)} if v.communities else {})} for v in bgp.vips]
    return out


def metrics_document(metrics: Metrics) -> dict[str, Any]:
    """The [metrics] keys that are not the default (lvs.cf: the same as lb_metrics_*)."""
    return _listener_document(metrics, Metrics())


def document(cfg: Config) -> dict[str, Any]:
    """The document tomllib would give for the TOML text of ``cfg`` (defaults left out)."""
    glob: dict[str, Any] = {"instance": cfg.instance}
    if cfg.serial_no:
        glob["serial_no"] = cfg.serial_no
    glob["public_interface"] = cfg.public_interface
    if cfg.private_interface is not None:
        glob["private_interface"] = cfg.private_interface
    glob["network"] = cfg.network
    if cfg.nat_router is not None:
        glob["nat_router"] = str(cfg.nat_router)
    if cfg.nat_router_device is not None:
        glob["nat_router_device"] = cfg.nat_router_device
    defaults = Config(public_interface=cfg.public_interface)
    for key in ("dataplane", "expire_nodest_conn", "lblc_expiration", "lblcr_expiration"):
        if getattr(cfg, key) != getattr(defaults, key):
            glob[key] = getattr(cfg, key)
    if cfg.script_user != DEFAULT_SCRIPT_USER:
        glob["script_user"] = cfg.script_user
    doc: dict[str, Any] = {"global": glob}
    tables = {f.name: getattr(cfg.tables, f.name) for f in dataclasses.fields(Tables)
              if getattr(cfg.tables, f.name) != getattr(Tables(), f.name)}
    if tables:
        doc["tables"] = tables
    defense = {f.name: getattr(cfg.defense, f.name) for f in dataclasses.fields(Defense)
               if getattr(cfg.defense, f.name) != getattr(Defense(), f.name)}
    if defense:
        doc["defense"] = defense
    timeouts = {k: getattr(cfg.timeouts, k) for k in ("tcp", "tcpfin", "udp")
                if getattr(cfg.timeouts, k) != getattr(Timeouts(), k)}
    if timeouts:
        doc["timeouts"] = timeouts
    if cfg.ha is not None:
        doc["ha"] = _ha_document(cfg.ha, cfg.script_user)
    web = web_document(cfg.web)
    if web:
        doc["web"] = web
    metrics = metrics_document(cfg.metrics)
    if metrics:
        doc["metrics"] = metrics
    control = control_document(cfg.control)
    if control:
        doc["control"] = control
    if cfg.bgp is not None:
        doc["bgp"] = _bgp_document(cfg.bgp)
    vss = []
    for vs in cfg.virtual_servers:
        if vs.fwmark:
            d: dict[str, Any] = {"name": vs.name, "fwmark": vs.fwmark, "scheduler": vs.scheduler}
            d["port_group"] = [{"address": str(g.address), "protocol": g.protocol,
                                "ports": str(g.low) if g.low == g.high else f"{g.low}-{g.high}"}
                               for g in vs.port_groups]
        else:
            d = {"name": vs.name, "address": str(vs.address), "port": vs.port,
                 "protocol": vs.protocol, "scheduler": vs.scheduler}
        if vs.scheduler_flags:
            d["scheduler_flags"] = list(vs.scheduler_flags)
        if vs.scheduler == "mh" and vs.mh_size != DEFAULT_MH_SIZE:
            d["mh_size"] = vs.mh_size
        if vs.persistent:
            d["persistent"] = vs.persistent
        if vs.pmask is not None:
            d["pmask"] = vs.pmask
        if vs.sorry_server is not None:
            d["sorry_server"] = sorry_text(vs.sorry_server)
        if not vs.active:
            d["active"] = False
        if vs.device is not None:
            d["device"] = vs.device
        monitor = {f.name: getattr(vs.monitor, f.name) for f in dataclasses.fields(Monitor)
                   if getattr(vs.monitor, f.name) != getattr(Monitor(script_user=cfg.script_user), f.name)}
        for k in MONITOR_SECONDS:
            if k in monitor and float(monitor[k]).is_integer():
                monitor[k] = int(monitor[k])
        if monitor:
            d["monitor"] = monitor
        if vs.quiesce_server:
            d["quiesce_server"] = True
        if vs.load_monitor is not None:
            lm = {f.name: getattr(vs.load_monitor, f.name) for f in dataclasses.fields(LoadMonitor)
                  if f.name == "kind" or getattr(vs.load_monitor, f.name)
                  != getattr(LoadMonitor(script_user=cfg.script_user), f.name)}
            for k in ("interval", "timeout"):
                if k in lm and float(lm[k]).is_integer():
                    lm[k] = int(lm[k])
            d["load_monitor"] = lm
        reals = []
        for rs in vs.real_servers:
            r: dict[str, Any] = {"name": rs.name, "address": str(rs.address)}
            if rs.port is not None:
                r["port"] = rs.port
            r["weight"] = rs.weight
            if not rs.active:
                r["active"] = False
            if rs.u_threshold:
                r["u_threshold"] = rs.u_threshold
            if rs.l_threshold:
                r["l_threshold"] = rs.l_threshold
            reals.append(r)
        if reals:
            d["real_server"] = reals
        vss.append(d)
    if vss:
        doc["virtual_server"] = vss
    return doc


def _comment(line: str) -> str:
    """``line`` as one comment line: TOML allows no control character but tab in a comment (a
    source file's quoted word may hold a line break), so they are escaped as Python does."""
    return "".join(ch.encode("unicode_escape").decode() if (ord(ch) < 0x20 and ch != "\t") or ch == "\x7f"
                   else ch for ch in line)


def dumps(cfg: Config, header: list[str] | None = None) -> str:
    """``cfg`` as TOML text, after ``header`` lines written as comments."""
    head = "".join(f"# {_comment(line)}\n" if line else "#\n" for line in header or [])
    return (head + "\n" if head else "") + emit(document(cfg))


def warning_lines(cfg: Config) -> list[str]:
    """Comment lines listing the warnings of ``cfg`` (what the source file said that lb does not do
    as written), for the header of an imported file."""
    if not cfg.warnings:
        return []
    return ["", "lb check warned (the source file's line):"] + [f"  {w.as_warning()}" for w in cfg.warnings]


# --- a console save keeps the file's comments ---------------------------------------------------

_HEADER_RE = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*(\]\]?)\s*(#.*)?")
_KEY_RE = re.compile(r"\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=\s*(.*)")
_OWN_HEADER = ("# Written by lb (serial_no ", "# Check a hand edit with `lb check`.")


def _trailing_comment(value: str) -> tuple[str, str | None]:
    """(the value, its trailing ``# comment`` or None) of a one-line TOML value; None for the
    comment too when the value's quotes or brackets do not close on the line."""
    quote, depth, i = "", 0, 0
    while i < len(value):
        ch = value[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif value.startswith(('"""', "'''"), i):
            return value, None            # a multi-line string: not handled, left alone
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "#":
            return value[:i].rstrip(), value[i:] if depth == 0 else None
        i += 1
    return value, None


def _toml_lines(lines: list[str]) -> list[tuple]:
    """What each line is: ("comment",), ("blank",), ("header", path, is_array), ("key", key,
    trailing comment or None), ("other",) (inside a multi-line value: left alone)."""
    out: list[tuple] = []
    open_value = 0   # brackets still open (a multi-line array or inline table)
    ml: str | None = None
    for raw in lines:
        s = raw.strip()
        if ml is not None:
            out.append(("other",))
            if raw.count(ml) % 2 == 1:
                ml = None
            continue
        if open_value > 0:
            out.append(("other",))
            open_value += raw.count("[") + raw.count("{") - raw.count("]") - raw.count("}")
            continue
        if not s:
            out.append(("blank",))
        elif s.startswith("#"):
            out.append(("comment",))
        elif (h := _HEADER_RE.fullmatch(raw)) and len(h.group(1)) == len(h.group(3)):
            out.append(("header", h.group(2), h.group(1) == "[["))
        elif k := _KEY_RE.fullmatch(raw):
            value = k.group(2)
            for q in ('"""', "'''"):
                if value.count(q) % 2 == 1:
                    ml = q
            if ml is None:
                value, comment = _trailing_comment(value)
                open_value = max(value.count("[") + value.count("{") - value.count("]") - value.count("}"), 0)
            else:
                comment = None
            out.append(("key", re.sub(r"\s+", "", k.group(1)), comment))
        else:
            out.append(("other",))
    return out


def _anchored(lines: list[str], kinds: list[tuple]) -> list[tuple | None]:
    """Each line's anchor: a header's (section identity, None), a key's (section identity, key);
    None for the rest.  A section is identified by its path with, for an array of tables, the
    entry's ``name`` (else its ordinal), under its parent entry: a virtual server's real servers
    are told apart by name whatever their order."""
    # the name of each array-of-tables entry (its own `name = "..."` key)
    names: dict[int, str] = {}
    start = None
    for i, (raw, kind) in enumerate(zip(lines, kinds)):
        if kind[0] == "header":
            start = i
        elif kind[0] == "key" and kind[1] == "name" and start is not None and start not in names:
            m = re.fullmatch(r'\s*name\s*=\s*"([^"\\]*)"\s*(#.*)?', raw)
            names[start] = m.group(1) if m else f"#{i}"
    current: dict[str, tuple] = {}   # array-of-tables path -> the identity of its latest entry
    count: dict[tuple, int] = {}
    section: tuple = ("",)
    out: list[tuple | None] = []
    for i, kind in enumerate(kinds):
        if kind[0] == "header":
            path = kind[1]
            parts = path.split(".")
            parent: tuple = ()
            for j in range(len(parts) - 1, 0, -1):
                if ".".join(parts[:j]) in current:
                    parent = current[".".join(parts[:j])]
                    break
            if kind[2]:
                n = count.get((parent, path), 0)
                count[(parent, path)] = n + 1
                section = (parent, path, names.get(i, n))
                current[path] = section
                for p in [p for p in current if p.startswith(path + ".")]:
                    del current[p]
            else:
                section = (parent, path)
            out.append((section, None))
        elif kind[0] == "key":
            out.append((section, kind[1]))
        else:
            out.append(None)
    return out


def keep_comments(old: str, new: str) -> str:
    """``new`` (TOML :func:`dumps` wrote for the file that held ``old``) with the comments of
    ``old`` put back: each run of comment lines before the line it preceded (the same key of the
    same table, or the same table's header; a key gone: at the end of its table; a table gone: its
    comments too), a key's trailing comment after the same key, the file's own header below the
    one lb writes and the comments after the last line at the end.  Only where the result is the
    same TOML as ``new``; otherwise ``new`` as it is."""
    import tomllib

    old_lines, new_lines = old.splitlines(), new.splitlines()
    old_kinds, new_kinds = _toml_lines(old_lines), _toml_lines(new_lines)
    old_at, new_at = _anchored(old_lines, old_kinds), _anchored(new_lines, new_kinds)
    where = {a: i for i, a in enumerate(new_at) if a is not None}
    section_end: dict[tuple, int] = {}  # a section's last line in new
    for i, a in enumerate(new_at):
        if a is not None:
            section_end[a[0]] = i
    before: dict[int, list[str]] = {}
    after: dict[int, list[str]] = {}    # a key gone: its comments after its section's last line
    trailing: dict[int, str] = {}
    head: list[str] = []
    run: list[str] = []
    seen = False
    for raw, kind, a in zip(old_lines, old_kinds, old_at):
        if kind[0] == "comment":
            run.append(raw)
            continue
        if a is None:
            continue
        if kind[0] == "key" and kind[2] and a in where:
            trailing[where[a]] = kind[2]
        if run and not seen:
            head = [line for line in run if not line.strip().startswith(_OWN_HEADER)]
        elif run and a in where:
            before.setdefault(where[a], []).extend(run)
        elif run and a[0] in section_end:
            after.setdefault(section_end[a[0]], []).extend(run)
        run, seen = [], True
    tail = run
    if not (before or after or trailing or head or tail):
        return new
    out: list[str] = []
    i = 0
    if head:   # below lb's own header comment (and its blank line), above the first table
        while i < len(new_lines) and new_kinds[i][0] in ("comment", "blank"):
            out.append(new_lines[i])
            i += 1
        out.extend(head)
        if out and out[-1].strip():
            out.append("")
    for j in range(i, len(new_lines)):
        out.extend(before.get(j, ()))
        line = new_lines[j]
        if j in trailing and new_kinds[j][0] == "key" and new_kinds[j][2] is None:
            line = f"{line}  {trailing[j]}"
        out.append(line)
        out.extend(after.get(j, ()))
    out.extend(tail)
    text = "\n".join(out) + "\n"
    try:
        if tomllib.loads(text) == tomllib.loads(new):
            return text
    except tomllib.TOMLDecodeError:
        pass
    return new
