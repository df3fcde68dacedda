"""The configuration model as native TOML text: what `lb import` prints for an lvs.cf or a
keepalived.conf, and what lb.config.load reads back to the same model.

    text = lb.config.totoml.dumps(cfg, header=["Converted from lvs.cf by `lb import`."])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .model import DEFAULT_MH_SIZE, HA, Config, LoadMonitor, Metrics, Monitor, Tables, Timeouts, Web, sorry_text

__all__ = ["dumps", "document", "metrics_document", "web_document"]

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


def _emit(doc: dict[str, Any]) -> str:
    """Render the loader's document shape (tables of scalars, virtual_server/real_server arrays)."""
    out: list[str] = []
    for section in ("global", "tables", "timeouts", "ha", "web", "metrics"):
        if section in doc:
            out.append(f"[{section}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in doc[section].items()]
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


def _ha_document(ha: HA) -> dict[str, Any]:
    """The [ha] table of ``ha``: the addresses and key file always, the rest when not the default."""
    d = HA(primary=ha.primary, backup=ha.backup, key_file=ha.key_file)
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
    out = _listener_document(web, Web())
    if web.password_file is not None:
        out["password_file"] = str(web.password_file)
    return out


def metrics_document(metrics: Metrics) -> dict[str, Any]:
    """The [metrics] keys that are not the default (lvs.cf: the same as lb_metrics_*)."""
    return _listener_document(metrics, Metrics())


def document(cfg: Config) -> dict[str, Any]:
    """The document tomllib would give for the TOML text of ``cfg`` (defaults left out)."""
    glob: dict[str, Any] = {"instance": cfg.instance, "public_interface": cfg.public_interface}
    if cfg.private_interface is not None:
        glob["private_interface"] = cfg.private_interface
    glob["network"] = cfg.network
    if cfg.nat_router is not None:
        glob["nat_router"] = str(cfg.nat_router)
    if cfg.nat_router_device is not None:
        glob["nat_router_device"] = cfg.nat_router_device
    doc: dict[str, Any] = {"global": glob}
    tables = {k: getattr(cfg.tables, k) for k in ("connections", "services", "real_servers", "reals_per_service")
              if getattr(cfg.tables, k) != getattr(Tables(), k)}
    if tables:
        doc["tables"] = tables
    timeouts = {k: getattr(cfg.timeouts, k) for k in ("tcp", "tcpfin", "udp")
                if getattr(cfg.timeouts, k) != getattr(Timeouts(), k)}
    if timeouts:
        doc["timeouts"] = timeouts
    if cfg.ha is not None:
        doc["ha"] = _ha_document(cfg.ha)
    web = web_document(cfg.web)
    if web:
        doc["web"] = web
    metrics = metrics_document(cfg.metrics)
    if metrics:
        doc["metrics"] = metrics
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
                   if getattr(vs.monitor, f.name) != getattr(Monitor(), f.name)}
        for k in MONITOR_SECONDS:
            if k in monitor and float(monitor[k]).is_integer():
                monitor[k] = int(monitor[k])
        if monitor:
            d["monitor"] = monitor
        if vs.quiesce_server:
            d["quiesce_server"] = True
        if vs.load_monitor is not None:
            lm = {f.name: getattr(vs.load_monitor, f.name) for f in dataclasses.fields(LoadMonitor)
                  if f.name == "kind" or getattr(vs.load_monitor, f.name) != getattr(LoadMonitor(), f.name)}
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


def dumps(cfg: Config, header: list[str] | None = None) -> str:
    """``cfg`` as TOML text, after ``header`` lines written as comments."""
    head = "".join(f"# {line}\n" if line else "#\n" for line in header or [])
    return (head + "\n" if head else "") + _emit(document(cfg))


def warning_lines(cfg: Config) -> list[str]:
    """Comment lines listing the warnings of ``cfg`` (what the source file said that lb does not do
    as written), for the header of an imported file."""
    if not cfg.warnings:
        return []
    return ["", "lb check warned (the source file's line):"] + [f"  {w.as_warning()}" for w in cfg.warnings]
