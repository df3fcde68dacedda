"""The daemon's configuration requests (the control socket's "config", "config-put", "table",
"web"): what the web console edits through, and what the backup director applies its peer's
configuration through (lb.ha.configsync).

An edit is all or nothing:

1. it names the file version it was made on: another version now (a save from another browser,
   a hand edit) refuses it, with ``conflict`` set, and nothing changes;
2. the document is checked by the one validator, as `lb check` checks a file (issues by field);
   a change that only a restart can make (instance, tables, network, dataplane, public_interface,
   in NAT private_interface and nat_router_device, [ha], [bgp] beyond its [[bgp.vip]]
   attributes: what a reload refuses) is refused unless the request says ``restart`` (then the file is saved and the
   reply says it takes effect at the next start);
3. the file is written atomically in its own format (lb.config.store), the previous version kept
   as <file>.prev, serial_no + 1;
4. the daemon reloads it (its own reload, queued on the run loop); a refused reload puts the file
   back as it was, so the file and the running table stay as they were.

A director whose HA role is not active refuses console edits: the active one pushes its
configuration there (lb.ha.configsync) and would undo them.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from lb.bgp.announcer import reload_problem
from lb import control
from lb.config import store

log = logging.getLogger("lb.confedit")


def restart_needed(old, new) -> list[str]:
    """What differs between two configurations that a reload cannot change (lb.engine's reload
    refuses these): instance, tables, network, dataplane, public_interface, in NAT the
    private_interface and the interface of nat_router (nat_router_device), [ha], [bgp] but for
    its [[bgp.vip]] attributes.  (`lb run --dataplane` overrides the file's dataplane apart: the
    engine keeps it, Engine.run_dataplane, and every load checks for it.)  The interfaces:
    lb's programs are attached to them at start, and a reload does not move them."""
    out = []
    for name in ("instance", "tables", "network", "dataplane", "public_interface"):
        if getattr(old, name) != getattr(new, name):
            out.append(name)
    if new.network == "nat":
        if old.private_interface != new.private_interface:
            out.append("private_interface")
        if old.nat_device != new.nat_device and old.nat_router_device != new.nat_router_device:
            out.append("nat_router_device")
    if (old.ha is None) != (new.ha is None) or (new.ha is not None and new.ha != old.ha):
        if old.ha is not None and new.ha is not None and old.ha == replace(new.ha, script_user=old.ha.script_user) \
                and new.ha.script_user == new.script_user and old.ha.script_user == old.script_user:
            # only the user its notify programs run as, which [ha] takes from [global]: say that
            out.append("[ha] (its script_user, which it takes from [global] script_user)")
        else:
            out.append("[ha]")
    if reload_problem(old.bgp, new.bgp):
        out.append("[bgp]")
    return out


def keep_running(running, new, *, dataplane: str | None = None):
    """``new`` with what only a restart changes (restart_needed) as ``running`` has it: what a
    reload applies while changes saved for the next start wait in the file (which keeps them).
    Checked by the one validator, for ``dataplane`` (`lb run --dataplane`; None: the file's):
    ConfigError when the rest of ``new`` is no configuration with the running values (a virtual
    server that needs the new network, say)."""
    needs = restart_needed(running, new)
    doc, run = store.plain_document(new), store.plain_document(running)
    for key in ("instance", "network", "dataplane", "public_interface", "private_interface", "nat_router_device"):
        if key in needs:
            doc["global"].pop(key, None)
            if key in run["global"]:
                doc["global"][key] = run["global"][key]
    tables = {"tables": "tables" in needs, "ha": any(n.startswith("[ha]") for n in needs), "bgp": "[bgp]" in needs}
    vips = (doc.get("bgp") or {}).get("vip")
    for table in (t for t, changed in tables.items() if changed):
        doc.pop(table, None)
        if table in run:
            doc[table] = run[table]
    if tables["ha"] and running.ha is not None:
        # its own user: else it follows [global] script_user, which a reload may change
        doc["ha"]["script_user"] = running.ha.script_user
    if tables["bgp"] and "bgp" in doc:
        # but for the [[bgp.vip]] attributes, which a reload changes
        doc["bgp"].pop("vip", None)
        if vips:
            doc["bgp"]["vip"] = vips
    return store.validate(doc, new.path, dataplane=dataplane)


def root_only_changes(old, new) -> list[str]:
    """What differs between two configurations that only root may change over the control
    socket: the programs the daemon (root) runs and the user they run as -- monitor and load
    monitor programs, HA notify programs, every script_user -- and [control], which says who
    may edit.  An editor in admin_group (the web console's user, not root) could otherwise make
    the daemon run a command of its choosing as root."""
    out = []
    if old.script_user != new.script_user:
        out.append("global.script_user")
    if old.control != new.control:
        out.append("[control]")

    def notify(ha):           # what [ha] runs: nothing without notify programs
        return (ha.notify, ha.script_user) if ha is not None and ha.notify else ()
    if notify(new.ha) and notify(old.ha) != notify(new.ha):
        out.append("[ha] notify / script_user")

    def runs(vs):
        # whatever the kind: a program kept under kind "tcp" is root's all the same, and comes back
        # unchanged when the kind does
        mon, load = vs.monitor, vs.load_monitor
        return ((mon.program, mon.script_user) if mon.program else None,
                (load.program, load.script_user) if load is not None and load.program else None)

    # a service is matched by its name or by its key (protocol, address, port or its fwmark: a
    # rename keeps it); what it runs may stay as either had it
    by_name = {vs.name: runs(vs) for vs in old.virtual_servers}
    by_key = {vs.key: runs(vs) for vs in old.virtual_servers}
    for vs in new.virtual_servers:
        now = runs(vs)
        was = [by_name.get(vs.name, (None, None)), by_key.get(vs.key, (None, None))]
        for i, what in enumerate(("monitor", "load_monitor")):
            if now[i] and all(w[i] != now[i] for w in was):
                out.append(f"virtual_server '{vs.name}' {what}.program / script_user")
    return out


def issues_json(issues) -> list[dict]:
    return [{"path": i.path, "line": i.line, "field": i.field, "message": i.message} for i in issues]


class ConfigRequests:
    """Bound to one engine: ``engine.cfg`` (the running configuration), ``engine.run_dataplane``
    (`lb run --dataplane`: the file is read and edits checked for it), ``engine.control`` (its
    reload), ``engine.role()``, ``engine.dp.read_services`` (the table)."""

    def __init__(self, engine):
        self.engine = engine
        self._lock: asyncio.Lock | None = None
        self.on_applied = []            # callbacks after a configuration was applied (HA push)
        self.last_edit: dict | None = None

    # ---- what the file and the running configuration are ----
    def info(self, snap: store.Snapshot | None = None) -> dict[str, Any]:
        cfg = self.engine.cfg
        out: dict[str, Any] = {"path": str(cfg.path), "serial_no": cfg.serial_no, "identity": store.identity(cfg)}
        if cfg.path is None:
            return out
        try:
            snap = snap or store.read(cfg.path, dataplane=self.engine.run_dataplane)
        except OSError as e:
            out["error"] = f"{cfg.path}: {e.strerror or e}"
            return out
        out.update(format=snap.format, writable=snap.format in store.WRITABLE, version=snap.version)
        if snap.cfg is None:
            out["error"] = str(snap.error)
            out["file_differs"] = True
        else:
            out["file_serial_no"] = snap.cfg.serial_no
            # the identity leaves each director's own interfaces out (config sync): a hand edit of
            # a virtual server's device is a difference here all the same
            out["file_differs"] = store.identity(snap.cfg) != out["identity"] or \
                [(vs.name, vs.device) for vs in snap.cfg.virtual_servers] != \
                [(vs.name, vs.device) for vs in cfg.virtual_servers]
            out["restart_needed"] = restart_needed(cfg, snap.cfg)
        if self.last_edit is not None:
            out["last_edit"] = self.last_edit
        return out

    async def request(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "config":
            # the file read and parsed (~0.3 s for 4,000 real servers): in a worker thread, not
            # on the loop the health checks and heartbeats run on
            return await asyncio.get_running_loop().run_in_executor(None, self.get)
        if cmd == "config-put":
            return await self.put(req.get("document"), req.get("version"), restart=req.get("restart") is True,
                                  who=str(req.get("who") or "control socket")[:200],
                                  root=req.get(control.PEER_IS_ROOT, True) is not False)
        if cmd == "table":
            return await self.table()
        if cmd == "web":
            return self.web()
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def get(self) -> dict:
        path = self.engine.cfg.path
        if path is None:
            return {"ok": False, "error": "the daemon runs without a configuration file"}
        try:
            snap = store.read(path, dataplane=self.engine.run_dataplane)
        except OSError as e:
            return {"ok": False, "error": f"{path}: {e.strerror or e}"}
        reply: dict[str, Any] = {"ok": True, "config": self.info(snap), "text": snap.text}
        if snap.cfg is not None:
            reply["document"] = snap.document()
        else:
            reply["issues"] = issues_json(snap.error.issues if snap.error else ())
        return reply

    def web(self) -> dict:
        cfg = self.engine.cfg
        w = cfg.web
        return {"ok": True, "instance": cfg.instance, "config": str(cfg.path),
                "web": {"enabled": w.enabled, "address": str(w.address), "port": w.port, "listen": w.listen,
                        "password_file": str(w.password_path(cfg.instance)),
                        "tls_cert": None if w.tls_cert is None else str(w.tls_cert),
                        "tls_key": None if w.tls_key is None else str(w.tls_key),
                        "allowed_hosts": list(w.allowed_hosts),
                        "trusted_proxies": [str(n) for n in w.trusted_proxies],
                        "session_lifetime": w.session_lifetime, "hsts": w.hsts}}

    async def table(self) -> dict:
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(None, self.engine.dp.read_services)
        return {"ok": True, "services": [_row(r) for r in rows]}

    # ---- edits ----
    async def put(self, document, version, *, restart: bool = False, who: str = "control socket",
                  serial: int | None = None, from_peer: bool = False, root: bool = True) -> dict:
        """``root``: the editor is root (or the daemon's user); else ([control] admin_group, the web
        console's user) the edit may not change what only root may (root_only_changes)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                return await self._put(document, version, restart, who, serial, from_peer, root)
            except store.EditRefused as e:
                reply = {"ok": False, "error": str(e), "issues": issues_json(e.issues), "conflict": e.conflict}
                log.warning("configuration edit from %s refused: %s", who, e)
                return reply

    async def _put(self, document, version, restart, who, serial, from_peer, root=True) -> dict:
        eng = self.engine
        path = eng.cfg.path
        if path is None:
            raise store.EditRefused("the daemon runs without a configuration file")
        if not from_peer and eng.role() not in ("active", "starting"):
            raise store.EditRefused(f"this director is the {eng.role()} one: edit the configuration on the "
                                    f"active director, which pushes it here")
        loop = asyncio.get_running_loop()
        snap = await loop.run_in_executor(None, lambda: store.read(path, dataplane=eng.run_dataplane))
        if version is not None and version != snap.version:
            raise store.EditRefused(f"{path} changed since this edit began (version {version}, now {snap.version}: "
                                    f"saved from elsewhere or edited by hand); nothing was changed: reload the "
                                    f"page and edit again", conflict=True)
        new = store.prepare(snap, document, serial=serial, dataplane=eng.run_dataplane)
        if not root:
            # against the file, or, when it does not load (root's edit half done), what runs
            changed = root_only_changes(snap.cfg if snap.cfg is not None else eng.cfg, new.cfg)
            if changed:
                raise store.EditRefused(f"{', '.join(changed)}: only root changes these (the daemon runs "
                                        f"programs as root's choice of user): edit {path} on the director as "
                                        f"root; nothing was changed")
        needs = restart_needed(eng.cfg, new.cfg)
        # changes saved for the next start wait in the file: an edit that leaves them as they are
        # (another page's) is applied, those keeping their running values (keep_running)
        waiting = needs if needs and snap.cfg is not None and not restart_needed(snap.cfg, new.cfg) else []
        if waiting:
            needs = []
        if needs and not restart:
            raise store.EditRefused(f"{', '.join(needs)} can change only when lb restarts; nothing was changed "
                                    f"(save it for the next start, or keep the running values)")
        undo = await loop.run_in_executor(None, store.write, snap, new.data)
        log.info("configuration %s written by %s: serial_no %d, version %s (previous kept as %s)", path, who,
                 new.cfg.serial_no, new.version, store.prev_path(undo.path))
        if needs:
            self.last_edit = {"by": who, "version": new.version, "serial_no": new.cfg.serial_no, "applied": False}
            return {"ok": True, "applied": False, "version": new.version, "serial_no": new.cfg.serial_no,
                    "message": f"saved {path} (serial_no {new.cfg.serial_no}); {', '.join(needs)} take effect when "
                               f"lb restarts: the running configuration is unchanged until then"}
        reply = await eng.control({"cmd": "reload", "keep_restart_only": True} if waiting else {"cmd": "reload"})
        if not reply.get("ok"):
            await loop.run_in_executor(None, store.restore, undo)
            log.error("configuration from %s: the reload refused it (%s); %s is back as it was", who,
                      reply.get("error"), path)
            # the reload says what it left running (Engine._reload_reply: "changed")
            running = {False: "the running configuration is unchanged",
                       True: "the data plane could not be fully restored and holds part of the new "
                             "configuration: fix the cause and reload, or restart lb"}.get(
                reply.get("changed", False), "what the data plane holds is not known: see the daemon's log")
            return {"ok": False, "error": f"{reply.get('error')} -- {path} was put back as it was; {running}",
                    "issues": reply.get("issues") or []}
        self.last_edit = {"by": who, "version": new.version, "serial_no": new.cfg.serial_no, "applied": True}
        for fn in self.on_applied:
            fn()
        out = {"ok": True, "applied": True, "version": new.version, "serial_no": new.cfg.serial_no,
               "message": f"saved {path} (serial_no {new.cfg.serial_no}) and applied: {reply.get('message')}"}
        if waiting:
            out["waiting"] = waiting
            out["message"] += (f"; {', '.join(waiting)}, saved earlier, still wait for lb to restart (they run "
                               f"as before until then)")
        return out


def _row(r) -> dict:
    """A ServiceRow as JSON: the keys the console matches status() with, counts and rates."""
    def stats(s):
        return {"conns": s.conns, "inpkts": s.inpkts, "outpkts": s.outpkts, "inbytes": s.inbytes,
                "outbytes": s.outbytes}
    return {"protocol": r.protocol.lower(), "address": None if r.address is None else str(r.address),
            "port": r.port, "fwmark": r.fwmark, "scheduler": r.scheduler, "stats": stats(r.stats),
            "rate": stats(r.rate),
            "reals": [{"address": str(x.address), "port": x.port, "weight": x.weight, "active": x.active,
                       "inactive": x.inactive, "forward": x.forward, "stats": stats(x.stats),
                       "rate": stats(x.rate)} for x in r.reals]}

