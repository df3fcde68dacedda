"""The configuration file as the daemon edits it for the web console and the backup director.

    snap = store.read(path)                 # text, format, version (a hash of the bytes), Config;
                                            # the same Snapshot while the file is unchanged
    new = store.prepare(snap, document)     # validated as `lb check` validates, rendered, serial + 1
    undo = store.write(snap, new.text)      # atomic; the previous version kept as <file>.prev
    store.restore(undo)                     # a refused reload: the file as it was

A version is the SHA-256 of the file's bytes (its first 16 hex digits): an edit carries the
version it was made on, and one made on an older version (another browser's save, a hand edit)
is refused instead of overwriting it.  The document is the one the TOML loader validates (what
tomllib would give), built from the model for any format, so the console edits one shape and its
issues name TOML's fields (``virtual_server[0].real_server[1].weight``).  The file is written in
the format it was read in: TOML, or Piranha's lvs.cf with the keys lvs.cf keeps beside the model
(its extras); a keepalived.conf is never rewritten.  serial_no counts the saves (lvs.cf's own
key); :func:`identity` names a configuration's content whatever its format, instance name,
serial or file, so two directors can tell whether they run the same one.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import ipaddress
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import format_of, keepalived, lvscf, totoml
from . import toml as _toml
from .locate import FieldPath
from .model import Config, ConfigError, ConfigIssue

WRITABLE = ("toml", "lvscf")
PREV_SUFFIX = ".prev"


class EditRefused(Exception):
    """An edit that changed nothing: ``conflict`` when the file moved on since the edit's version,
    ``issues`` (ConfigIssue) when the document is not a valid configuration."""

    def __init__(self, message: str, issues=(), conflict: bool = False):
        super().__init__(message)
        self.issues = list(issues)
        self.conflict = conflict


@dataclass(frozen=True)
class Snapshot:
    path: Path
    format: str            # toml | lvscf | keepalived
    data: bytes
    version: str
    cfg: Config | None     # None when the file does not load (error says why)
    error: ConfigError | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    def document(self) -> dict[str, Any]:
        """The document of the file's configuration, as the TOML loader validates it."""
        if self.cfg is None:
            raise EditRefused(f"{self.path} does not load: fix it first", self.error.issues if self.error else ())
        return plain_document(self.cfg)


@dataclass(frozen=True)
class Prepared:
    cfg: Config
    text: str
    data: bytes
    version: str


@dataclass(frozen=True)
class Undo:
    path: Path
    data: bytes                  # the file before the write
    prev: bytes | None           # <file>.prev before the write (None: there was none)
    mode: int
    uid: int = -1                # the file's owner and group, kept as they were (-1: unchanged)
    gid: int = -1


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def prev_path(path: str | os.PathLike) -> Path:
    """<file>.prev, beside the file a symbolic link leads to (the file :func:`write` replaces)"""
    target = Path(os.path.realpath(path))
    return target.with_name(target.name + PREV_SUFFIX)


# The last snapshots read, by path and the data plane they were checked for (`lb run
# --dataplane`; None: the file's): (the stamps of what each read, the keepalived config id it
# was read with, the snapshot).  Each status and config request of the control socket reads the
# file (does it still hold the running configuration?), on the daemon's event loop: parsing a
# large one every time (12k real servers: 0.35 s) held up the heartbeats that run there.
_CACHE: dict[tuple[str, str | None], tuple[dict[str, tuple[int, ...] | None], str | None, Snapshot]] = {}
_CACHE_MAX = 8
_CACHE_LOCK = threading.Lock()      # read() runs on the event loop and in its executor
# A file written twice within its file system's timestamp granularity may keep its stamp: one
# changed this recently (ns) is not kept (git's "racy" entries); the next read parses it again.
RACY_NS = 2_000_000_000
HOST_FILES = ("/etc/passwd", "/etc/group")   # what a file's meaning depends on besides its own text


def read(path: str | os.PathLike, *, dataplane: str | None = None) -> Snapshot:
    """The file now: its bytes, version and Config (or the reason it does not load), checked for
    ``dataplane`` (the daemon's `lb run --dataplane`; None: the file's).  A file unchanged since
    the last read for the same data plane (its stamp: lb.config.toml.file_stamp, and a
    keepalived.conf's includes' and their directories') is not read again: the same Snapshot
    comes back."""
    path = Path(path)
    key = os.fspath(path)
    with _CACHE_LOCK:
        hit = _CACHE.get((key, dataplane))
    if hit is not None:
        stamps, config_id, snap = hit
        if _config_id(snap.format) == config_id and all(_toml.file_stamp(p) == st for p, st in stamps.items()):
            return snap
    started = time.time_ns()
    stamp = _toml.file_stamp(path)        # before the read: a change after it is a change next time
    host = {p: _toml.file_stamp(p) for p in HOST_FILES}     # (the users the loader checks: the same)
    fmt = format_of(path)
    with open(path, "rb") as f:
        data = f.read(_toml.MAX_FILE_BYTES + 1)
    watch = keepalived.Watched() if fmt == "keepalived" else None
    try:
        cfg = load_bytes(data, fmt, path, watch, dataplane=dataplane)
        err = None
    except ConfigError as e:
        cfg, err = None, e
    snap = Snapshot(path, fmt, data, version_of(data), cfg, err)
    stamps: dict[str, tuple[int, ...] | None] | None = {key: stamp}
    if watch is not None:
        # keepalived.conf is read again by its own reader, with its includes: keep it only when
        # it read what this stamp is of, and every directory its includes searched is known
        if watch.complete and watch.stamps.get(key, stamp) == stamp:
            stamps = {**watch.stamps, key: stamp}
        else:
            stamps = None
    keep = err is None and stamps is not None and all(st is not None and st[3] < started - RACY_NS
                                                      for st in stamps.values())
    if stamps is not None:
        # the loader checks users too (script_user): a useradd changes what the file means
        stamps.update(host)
        keep = keep and all(st is None or st[3] < started - RACY_NS for st in host.values())
    with _CACHE_LOCK:
        _CACHE.pop((key, dataplane), None)
        if keep:
            assert stamps is not None
            _CACHE[key, dataplane] = (stamps, _config_id(fmt), snap)
            while len(_CACHE) > _CACHE_MAX:
                del _CACHE[next(iter(_CACHE))]
    return snap


def _config_id(fmt: str) -> str | None:
    """What a keepalived.conf's meaning depends on besides its files: its @ID lines' config id."""
    return keepalived.default_config_id() if fmt == "keepalived" else None


def load_bytes(data: bytes, fmt: str, path: Path, watch: keepalived.Watched | None = None, *,
               dataplane: str | None = None) -> Config:
    """The Config of ``data`` as if read from ``path`` (relative files relative to it), checked
    for ``dataplane`` (as :func:`read`); a keepalived.conf is read from ``path`` itself, what it
    read collected in ``watch``."""
    display = str(path)
    _toml.check_size(data, display)
    try:
        text = _toml.without_bom(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigIssue(display, data[: e.start].count(b"\n") + 1, "", "file is not valid UTF-8")]) \
            from None
    if fmt == "lvscf":
        return lvscf._parse(text, display, path, dataplane=dataplane)[0]
    if fmt == "keepalived":
        return keepalived.load(path, watch=watch, dataplane=dataplane)
    return _toml._load_text(text, display, path, dataplane=dataplane)


class DocPositions(_toml.Positions):
    """A document's fields have no line: issues name the field (TOML's path) alone."""

    def where(self, path: FieldPath) -> tuple[int | None, str]:
        return None, _toml.field_name(path)


def validate(document: dict[str, Any], path: Path, *, dataplane: str | None = None) -> Config:
    """``document`` checked by the one validator (ConfigError with every issue, by field), for
    ``dataplane`` (as :func:`read`)."""
    return _toml.validate(document, str(path), DocPositions(), path, dataplane=dataplane)


def prepare(snap: Snapshot, document: dict[str, Any], *, serial: int | None = None,
            dataplane: str | None = None) -> Prepared:
    """The file ``document`` would make, checked (for ``dataplane``, as :func:`read`): the
    validator's issues, then the rendered text read back to the same model.  serial_no becomes
    ``serial`` (default: the file's + 1)."""
    if snap.format not in WRITABLE:
        raise EditRefused(f"{snap.path} is a {snap.format} file, which lb reads but does not write: convert it "
                          f"with `lb import` and run lb from the TOML file to edit it here")
    if not isinstance(document, dict):
        raise EditRefused("the configuration must be a document (a JSON object)")
    bad = _not_utf8(document, ())
    if bad is not None:
        # a lone surrogate ("\ud800" in JSON) is no text a file can hold: the checks and the
        # writer would fail on it (UnicodeEncodeError) instead of refusing the edit
        raise EditRefused(f"{_toml.field_name(bad) or 'a key'}: not valid Unicode text (a lone surrogate "
                          f"such as \\ud800); nothing was changed")
    doc = copy.deepcopy(document)
    glob = doc.get("global")
    if isinstance(glob, dict):
        old = snap.cfg.serial_no if snap.cfg is not None else 0
        glob["serial_no"] = old + 1 if serial is None else serial
    try:
        cfg = validate(doc, snap.path, dataplane=dataplane)
    except ConfigError as e:
        raise EditRefused("the configuration has errors; nothing was changed", e.issues) from None
    text = render(cfg, snap, dataplane=dataplane)
    data = text.encode("utf-8")
    try:
        again = load_bytes(data, snap.format, snap.path, dataplane=dataplane)
    except ConfigError as e:   # a writer that cannot say what the model holds: never write it
        raise EditRefused(f"{snap.format} cannot hold this configuration", e.issues) from None
    if _plain(again) != _plain(cfg):
        raise EditRefused(f"{snap.format} cannot hold this configuration exactly (it would read back otherwise)")
    return Prepared(cfg, text, data, version_of(data))


def _not_utf8(value: Any, path: tuple) -> tuple | None:
    """The path of the first key or string in ``value`` that UTF-8 cannot encode (a lone
    surrogate), else None.  Iterative: a document nested deep stays no recursion."""
    stack: list[tuple[Any, tuple]] = [(value, path)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            if not utf8_text(v):
                return at
        elif isinstance(v, dict):
            for k, item in v.items():
                if isinstance(k, str) and not utf8_text(k):
                    return at + (k.encode("utf-8", "backslashreplace").decode("ascii"),)
                stack.append((item, at + (k,)))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, at + (i,)) for i, item in enumerate(v))
    return None


def utf8_text(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogate, as a JSON "\\ud800" or an odd charset
    makes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(cfg: Config) -> Config:
    return dataclasses.replace(cfg, path=None, warnings=())


def render(cfg: Config, snap: Snapshot, *, dataplane: str | None = None) -> str:
    """``cfg`` in the snapshot's format, the current file's comments kept (lvs.cf: its extras too,
    the file read for ``dataplane`` as the snapshot was)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    if snap.format == "lvscf":
        extras = None
        if snap.cfg is not None:
            with contextlib.suppress(ConfigError):
                extras = lvscf._parse(snap.text, str(snap.path), snap.path, dataplane=dataplane)[1]
        return lvscf.keep_comments(snap.text, lvscf.dumps(cfg, extras))  # the operator's comments stay
    return totoml.keep_comments(snap.text, totoml.dumps(cfg, header=[
        f"Written by lb (serial_no {cfg.serial_no}) on {stamp}; the previous version is {prev_path(snap.path).name}.",
        "Check a hand edit with `lb check`."]))  # the operator's comments stay


def write(snap: Snapshot, data: bytes) -> Undo:
    """Replace the file with ``data`` atomically (same mode), the current bytes kept as <file>.prev;
    EditRefused (nothing written) when the file changed since ``snap`` was read.  A symbolic link
    stays one: its target is the file replaced (and <target>.prev kept beside it); the file keeps
    its owner and group as well as its mode."""
    path = Path(os.path.realpath(snap.path))
    st = os.stat(path)
    with open(path, "rb") as f:
        if version_of(f.read(_toml.MAX_FILE_BYTES + 1)) != snap.version:
            raise EditRefused(f"{path} changed while this edit was being made; nothing was changed", conflict=True)
    prev = prev_path(path)
    try:
        old_prev = prev.read_bytes()
    except FileNotFoundError:
        old_prev = None
    _atomic(prev, snap.data, st.st_mode, st.st_uid, st.st_gid)
    _atomic(path, data, st.st_mode, st.st_uid, st.st_gid)
    return Undo(path, snap.data, old_prev, st.st_mode, st.st_uid, st.st_gid)


def restore(undo: Undo) -> None:
    """The file (and <file>.prev) as they were before :func:`write`."""
    _atomic(undo.path, undo.data, undo.mode, undo.uid, undo.gid)
    prev = prev_path(undo.path)
    if undo.prev is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(prev)
    else:
        _atomic(prev, undo.prev, undo.mode, undo.uid, undo.gid)


def _atomic(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if (uid, gid) != (-1, -1):
            # the replaced file's owner and group (a group that may read it); a daemon that may not
            # give them (not root) writes the file as its own, as before
            with contextlib.suppress(PermissionError):
                os.chown(tmp, uid, gid)
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# Per-director keys: each director keeps its own when the configuration comes from its peer (the
# lab runs both directors on one host, as instances lab and lab2), and they are not part of what
# "the same configuration" means.
# The data plane is the director's own too: it depends on its host (an XDP driver, the IPVS
# module), and it changes only with a restart, so a push of the peer's would be refused.
# And so are its interfaces' names (eth0 here, ens3 there): a push of the peer's names was
# refused at every push (they change only with a restart), or, where the backup happened to
# have an interface of that name, put the real servers' gateway on the wrong one.
LOCAL_KEYS = (("global", "instance"), ("global", "serial_no"), ("global", "dataplane"),
              ("global", "public_interface"), ("global", "private_interface"), ("global", "nat_router_device"),
              # each host's own addresses: the active's would have the backup listen where it cannot
              ("web", "listen"), ("metrics", "listen"))
# Per-director tables, kept whole: [bgp] is this director's own sessions with its router (its
# router_id, each neighbor's local_address), and a change of it needs a restart anyway, so the
# active's [bgp] would either break the backup's sessions or be refused at every push.  Its
# [[bgp.vip]] attributes follow the virtual servers, though: a VIP the pushed document no longer
# has loses its entry here (else every push after a renumbering was refused: "not the address
# of any virtual_server").
LOCAL_TABLES = ("bgp",)


def plain_document(cfg: Config) -> dict[str, Any]:
    """totoml.document(cfg) in JSON's types (arrays as lists), as it crosses the control socket."""
    return json.loads(json.dumps(totoml.document(cfg)))


def shared_document(cfg: Config) -> dict[str, Any]:
    """The document of ``cfg`` without the per-director keys and tables.  A virtual server's
    `device` is an interface name too: one that is this director's public interface is left out
    (the peer's own is the default there); another stays, for a service the peer does not have
    yet (localize keeps the peer's own device of a service it has)."""
    doc = plain_document(cfg)
    for vs in doc.get("virtual_server", ()):
        if vs.get("device") == cfg.public_interface:
            del vs["device"]
    for table, key in LOCAL_KEYS:
        doc.get(table, {}).pop(key, None)
    for table in LOCAL_TABLES:
        doc.pop(table, None)
    return doc


# The identities of the last configurations asked about, by object (a Config does not change):
# the running one's is asked at every status request and every peer exchange.
_IDENTITIES: list[tuple[Config, str]] = []
_IDENTITIES_MAX = 8


def identity(cfg: Config) -> str:
    """A short hash of what ``cfg`` configures (not its instance, serial, file, format, [bgp] or
    the virtual servers' interfaces)."""
    with _CACHE_LOCK:
        for known, ident in _IDENTITIES:
            if known is cfg:
                return ident
    doc = shared_document(cfg)
    for vs in doc.get("virtual_server", ()):
        vs.pop("device", None)
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    ident = hashlib.sha256(canon.encode()).hexdigest()[:16]
    with _CACHE_LOCK:
        _IDENTITIES.insert(0, (cfg, ident))
        del _IDENTITIES[_IDENTITIES_MAX:]
    return ident


def localize(shared: dict[str, Any], cfg: Config | None) -> dict[str, Any]:
    """A peer's shared document with this director's own per-director keys and tables."""
    doc = copy.deepcopy(shared)
    if not isinstance(doc, dict):
        return doc
    for table in LOCAL_TABLES:
        doc.pop(table, None)
    if cfg is None:
        return doc
    glob = doc.setdefault("global", {})
    own = plain_document(cfg)
    if isinstance(glob, dict):
        glob["instance"] = cfg.instance
        for table, key in LOCAL_KEYS:
            if table != "global" or key in ("instance", "serial_no"):
                continue
            glob.pop(key, None)
            if key in own["global"]:
                glob[key] = own["global"][key]
    for table, key in LOCAL_KEYS:
        if table == "global" or not isinstance(doc.get(table, {}), dict):
            continue
        doc.get(table, {}).pop(key, None)
        if key in own.get(table, {}):
            doc.setdefault(table, {})[key] = own[table][key]
        if doc.get(table) == {}:
            del doc[table]
    for table in LOCAL_TABLES:
        if table in own:
            doc[table] = own[table]
    # each virtual server this director has keeps its own interface (eth0.100 here, ens3.100
    # there), matched by name; a new one takes the peer's, or this director's public interface
    devices = {vs["name"]: vs.get("device") for vs in own.get("virtual_server", ())}
    for vs in doc.get("virtual_server", ()) if isinstance(doc.get("virtual_server"), list) else ():
        if isinstance(vs, dict) and isinstance(vs.get("name"), str) and vs["name"] in devices:
            vs.pop("device", None)
            if devices[vs["name"]] is not None:
                vs["device"] = devices[vs["name"]]
    bgp = doc.get("bgp")
    if isinstance(bgp, dict) and isinstance(bgp.get("vip"), list):
        vips = _vips(doc)
        bgp["vip"] = [v for v in bgp["vip"] if not isinstance(v, dict) or _addr(v.get("address")) in vips]
        if not bgp["vip"]:
            del bgp["vip"]
    return doc


def _addr(text):
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        # a list or an object where an address goes (a peer's push): no address, and no
        # unhashable value for the set it is looked up in
        return repr(text) if isinstance(text, (list, dict)) else text


def _vips(doc: dict) -> set:
    """The addresses a document's virtual servers answer on (their own, or their port groups')."""
    out = set()
    vss = doc.get("virtual_server")
    for vs in vss if isinstance(vss, list) else ():
        if not isinstance(vs, dict):
            continue
        groups = vs.get("port_group")
        for g in groups if isinstance(groups, list) and groups else [vs]:
            if isinstance(g, dict):
                out.add(_addr(g.get("address")))
    return out
