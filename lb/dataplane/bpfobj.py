"""A compiled BPF object, kept so that it loads with bpf(2) alone.

bcc compiles C into instructions in memory and creates the maps as it goes: each map reference
in a program becomes a `ld_imm64` whose immediate is the map's fd (BPF_PSEUDO_MAP_FD).  An
`Object` is what that compile produced, without the fds: every program's instructions with
the places that name a map (relocations), and every map's definition (type, sizes, flags,
inner map template, pinned or not).  `load` gives it new maps (or the pinned ones) and loads
the programs -- no compiler, no kernel headers, no bcc.

Used for:
- the compile cache (`Cache`, lb/dataplane/program.py): a warm `lb run` loads the director's
  programs from /var/cache/lb in a fraction of a second instead of compiling for seconds;
- lb_decap's shipped instructions (lb/dataplane/decap.py), so real servers need no compiler.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import importlib.util
import json
import logging
import os
import re
import struct
from dataclasses import dataclass, field

from . import bpfsys
from .errors import DataplaneError

log = logging.getLogger("lb.dataplane")

FORMAT = 1
_LD_IMM64 = 0x18                  # BPF_LD | BPF_IMM | BPF_DW
_MAP_IN_MAP = {12, 13}            # BPF_MAP_TYPE_ARRAY_OF_MAPS, HASH_OF_MAPS
_DEVMAPS = {14, 25}               # BPF_MAP_TYPE_DEVMAP, DEVMAP_HASH
_F_RDONLY_PROG = 1 << 7           # the kernel sets it on a devmap itself, and refuses it at creation


@dataclass(frozen=True)
class MapDef:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    inner: str | None = None      # map-in-map: the template map the kernel copies the inner type from
    pinned: bool = False          # pinned under the load's pin directory by its name


@dataclass(frozen=True)
class ProgDef:
    name: str
    insns: bytes                  # map fd immediates zeroed
    relocs: tuple[tuple[int, str], ...]   # (instruction index, map name)


@dataclass
class Object:
    maps: dict[str, MapDef]
    progs: dict[str, ProgDef]
    license: str = "GPL"
    prog_type: int = bpfsys.BPF_PROG_TYPE_XDP

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "license": self.license, "prog_type": self.prog_type,
            "maps": [vars(m) for m in self.maps.values()],
            "progs": [{"name": p.name, "insns": base64.b64encode(p.insns).decode(),
                       "relocs": [list(r) for r in p.relocs]} for p in self.progs.values()]},
            indent=0, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Object":
        """ValueError for anything that is not an object of this format."""
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
            maps = {m["name"]: MapDef(**m) for m in doc["maps"]}
            progs = {}
            for p in doc["progs"]:
                insns = base64.b64decode(p["insns"], validate=True)
                relocs = tuple((int(i), str(n)) for i, n in p["relocs"])
                if len(insns) % 8 or any(n not in maps or not 0 <= i < len(insns) // 8 for i, n in relocs):
                    raise ValueError(f"program {p['name']}: bad instructions or relocations")
                progs[p["name"]] = ProgDef(p["name"], insns, relocs)
            return cls(maps, progs, str(doc["license"]), int(doc["prog_type"]))
        except (KeyError, TypeError, AttributeError, struct.error) as e:
            raise ValueError(f"not a compiled BPF object: {e}") from None


def _inner_maps(source: str) -> dict[str, str]:
    """outer map -> its template, from bcc's `BPF_TABLE*("array_of_maps$inner", k, v, outer, ...)`"""
    return {m.group(2): m.group(1)
            for m in re.finditer(r'"\w+_of_maps\$(\w+)"\s*,\s*[^,]+,\s*[^,]+,\s*(\w+)', source)}


def extract(bpf, source: str, functions, pin_dir: str | None = None) -> Object:
    """The Object of a bcc BPF module: `functions`' instructions and every map they may name.
    A map is pinned when it sits under pin_dir by its name (lb_maps.h's LB_PIN)."""
    import ctypes

    from bcc.libbcc import lib

    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_fd_id.restype = ctypes.c_int
    lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    inner = _inner_maps(source)
    by_fd: dict[int, str] = {}
    maps: dict[str, MapDef] = {}
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i).decode()
        fd = lib.bpf_table_fd_id(bpf.module, i)
        info = bpfsys.map_info(fd)
        pinned = pin_dir is not None and os.path.exists(os.path.join(pin_dir, name))
        by_fd[fd] = name
        flags = info.map_flags & ~_F_RDONLY_PROG if info.type in _DEVMAPS else info.map_flags
        maps[name] = MapDef(name, info.type, info.key_size, info.value_size, info.max_entries, flags,
                            inner.get(name) if info.type in _MAP_IN_MAP else None, pinned)
    progs = {}
    for fname in functions:
        start = lib.bpf_function_start(bpf.module, fname.encode())
        if not start:
            raise DataplaneError(f"the compiled object has no program {fname}")
        insns = bytearray(ctypes.string_at(start, lib.bpf_function_size(bpf.module, fname.encode())))
        relocs = []
        for idx in range(len(insns) // 8):
            code, regs, _off, imm = struct.unpack_from("<BBhi", insns, idx * 8)
            if code == _LD_IMM64 and regs >> 4 == bpfsys.BPF_PSEUDO_MAP_FD:
                if imm not in by_fd:
                    raise DataplaneError(f"{fname}: instruction {idx} names fd {imm}, not a map of the object")
                relocs.append((idx, by_fd[imm]))
                struct.pack_into("<i", insns, idx * 8 + 4, 0)
        progs[fname] = ProgDef(fname, bytes(insns), tuple(relocs))
    lic = lib.bpf_module_license(bpf.module)
    return Object(maps, progs, lic.decode() if lic else "GPL")


def compile_bcc(source: str, cflags: list[str], functions, pin_dir: str | None = None,
                keep: bool = False):
    """Compile with bcc and extract: (Object, the bcc module if keep else None).  With pin_dir,
    bcc creates (or reuses) the pinned maps there, as BPF_TABLE_PINNED says."""
    from bcc import BPF  # only a compile needs bcc (and the kernel's headers)

    b = BPF(text=source.encode(), cflags=cflags)
    try:
        obj = extract(b, source, functions, pin_dir)
    except BaseException:
        b.cleanup()
        raise
    if keep:
        return obj, b
    b.cleanup()
    return obj, None


@dataclass
class Prog:
    """A loaded program (attach_xdp and BPF_PROG_TEST_RUN use its fd)."""
    name: str
    fd: int


@dataclass
class Loaded:
    map_fds: dict[str, int] = field(default_factory=dict)
    progs: dict[str, Prog] = field(default_factory=dict)

    def close(self) -> None:
        for fd in [*self.map_fds.values(), *(p.fd for p in self.progs.values())]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.map_fds.clear()
        self.progs.clear()


def _open_map(m: MapDef, pin_dir: str | None, fds: dict[str, int]) -> int:
    path = os.path.join(pin_dir, m.name) if m.pinned and pin_dir else None
    if path is not None:
        try:
            fd = bpfsys.obj_get(path)
        except FileNotFoundError:
            pass
        else:
            info = bpfsys.map_info(fd)
            got = (info.type, info.key_size, info.value_size, info.max_entries)
            if got != (m.type, m.key_size, m.value_size, m.max_entries):
                os.close(fd)
                raise DataplaneError(f"pinned map {path} is (type, key, value, entries) {got}, the programs "
                                     f"need {(m.type, m.key_size, m.value_size, m.max_entries)}: the running "
                                     f"instance's maps come from another version of lb and "
                                     f"cannot be adopted. Stop it (lb stop) or remove {pin_dir} to start afresh.")
            return fd
    try:
        fd = bpfsys.map_create(m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.name,
                               fds[m.inner] if m.inner else 0)
    except OSError as e:
        # memory the kernel will not give ([tables] too big for this machine), or a limit
        raise DataplaneError(f"the kernel refused to create map {m.name} ({m.max_entries} entries of "
                             f"{m.key_size} + {m.value_size} bytes): {e.strerror or e}"
                             + (": a [tables] size too big for this machine's memory?"
                                if e.errno in (errno.ENOMEM, errno.E2BIG) else "")) from None
    if path is not None:
        try:
            bpfsys.obj_pin(fd, path)
        except OSError as e:
            os.close(fd)
            raise DataplaneError(f"cannot pin map {m.name} at {path}: {e.strerror or e}") from None
    return fd


def _why(obj: Object, name: str, insns: bytes, err: OSError) -> str:
    """The verifier's last lines for a refused program (loaded again with a log; a log too
    small for the whole verification is refused with ENOSPC: then only the first error)."""
    try:
        fd = bpfsys.prog_load(obj.prog_type, insns, obj.license, name, log_size=16 << 20)
    except bpfsys.BpfError as e:
        return e.strerror if e.errno != errno.ENOSPC else (err.strerror or str(err))
    os.close(fd)
    return err.strerror or str(err)


def load(obj: Object, pin_dir: str | None = None, programs=None) -> Loaded:
    """Open (pinned) or create every map, then load `programs` (default all) with their map fds
    in place.  DataplaneError when the kernel refuses, with the verifier's last lines."""
    out = Loaded()
    try:
        for m in sorted(obj.maps.values(), key=lambda m: m.inner is not None):   # templates first
            out.map_fds[m.name] = _open_map(m, pin_dir, out.map_fds)
        load_programs(obj, out, list(obj.progs if programs is None else programs))
    except BaseException:
        out.close()
        raise
    return out


def load_programs(obj: Object, loaded: Loaded, names: list[str]) -> None:
    """Load more of obj's programs into `loaded` (whose maps are open).  The verifier's work is
    most of a load and each program's is independent: they load in parallel, a thread per CPU."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> Prog:
        p = obj.progs[name]
        insns = bytearray(p.insns)
        for idx, mname in p.relocs:
            struct.pack_into("<i", insns, idx * 8 + 4, loaded.map_fds[mname])
        try:
            return Prog(name, bpfsys.prog_load(obj.prog_type, bytes(insns), obj.license, name))
        except bpfsys.BpfError as e:
            raise DataplaneError(f"the kernel refused program {name}: {_why(obj, name, bytes(insns), e)}") from None

    if not names:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1, 4))) as pool:
        futures = [(n, pool.submit(one, n)) for n in names]
    errors = []
    for name, fut in futures:
        try:
            loaded.progs[name] = fut.result()
        except BaseException as e:   # every future is done: keep the loaded ones' fds for close()
            errors.append(e)
    if errors:
        raise errors[0]


# ---- the compile cache ----

CACHE_DIR = "/var/cache/lb"


def _bcc_version() -> str:
    """bcc's version without importing it (a warm start never loads libbcc)."""
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return "none"
    for d in spec.submodule_search_locations:
        with contextlib.suppress(OSError):
            with open(os.path.join(d, "version.py")) as f:
                m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
                if m:
                    return m.group(1)
    return "unknown"


def build_identity() -> dict[str, str]:
    """What a compile's output depends on besides the source and flags: the running kernel, the
    headers bcc compiles against, and bcc's version."""
    rel = os.uname().release
    headers = os.environ.get("BCC_KERNEL_SOURCE") or os.path.realpath(f"/lib/modules/{rel}/build")
    return {"kernel": rel, "headers": headers, "bcc": _bcc_version(), "machine": os.uname().machine}


def cache_key(source: str, cflags: list[str], functions) -> str:
    doc = {"format": FORMAT, "source": hashlib.sha256(source.encode()).hexdigest(), "cflags": list(cflags),
           "functions": list(functions), **build_identity()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


class Cache:
    """Compiled objects by key, one file each in a root-only directory (0700); written
    atomically, read without following symlinks; a file that does not parse is a miss."""

    KEEP = 32     # entries kept (the newest); each is a few hundred KB

    def __init__(self, directory: str | None = None):
        self.dir = directory or os.environ.get("LB_CACHE_DIR") or CACHE_DIR

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, f"{key}.json")

    def get(self, key: str) -> Object | None:
        from lb import files

        try:
            text = files.read_private(self._path(key))
        except FileNotFoundError:
            return None
        except (OSError, files.UnsafePath) as e:
            log.warning("compile cache: %s: %s", self._path(key), e)
            return None
        try:
            return Object.from_json(text)
        except ValueError as e:
            log.warning("compile cache: %s: %s (compiling afresh)", self._path(key), e)
            return None

    def put(self, key: str, obj: Object) -> None:
        from lb import files

        try:
            files.ensure_private_dir(self.dir)
            files.write_private(self._path(key), obj.to_json())
            self._prune()
        except (OSError, files.UnsafePath) as e:
            log.warning("compile cache: cannot keep the compiled programs in %s: %s", self.dir, e)

    def drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))

    def _prune(self) -> None:
        entries = []
        for name in os.listdir(self.dir):
            if name.endswith(".json"):
                with contextlib.suppress(OSError):
                    entries.append((os.lstat(os.path.join(self.dir, name)).st_mtime, name))
        for _, name in sorted(entries, reverse=True)[self.KEEP:]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.dir, name))
