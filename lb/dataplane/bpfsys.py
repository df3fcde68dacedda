"""The bpf(2) map commands over ctypes: open pinned maps, read and write entries.

This is what `lb list` uses to read the pinned tables without the daemon and without
compiling anything, and the pure-Python fallback (and test oracle) for the batch operations
of the cffi module lb._bpfbatch.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform

# bpf(2) has no libc wrapper: its number by architecture (the kernel's syscall tables).  lb is
# built and tested on x86-64; the others are the kernel's numbers, so the map and program
# commands work there too (untested).
_NR_BPF_BY_MACHINE = {"x86_64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280, "loongarch64": 280,
                      "ppc64le": 361, "ppc64": 361, "s390x": 351, "i686": 357, "i386": 357, "armv7l": 386}
SUPPORTED_MACHINES = ("x86_64",)           # where the project's tests run


class UnsupportedArchitecture(OSError):
    pass


def _nr_bpf(machine: str) -> int:
    try:
        return _NR_BPF_BY_MACHINE[machine]
    except KeyError:
        raise UnsupportedArchitecture(
            f"lb does not know the bpf(2) system call number of this architecture ({machine}); it runs on "
            f"{', '.join(sorted(set(_NR_BPF_BY_MACHINE)))} (tested on x86_64)") from None


_MACHINE = platform.machine()
_NR_BPF = _NR_BPF_BY_MACHINE.get(_MACHINE)    # None: _sys raises UnsupportedArchitecture

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TEST_RUN = 10

BPF_PROG_TYPE_XDP = 6
BPF_PSEUDO_MAP_FD = 1        # src_reg of a ld_imm64 whose immediate is a map's fd
BPF_OBJ_NAME_LEN = 16

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, 10}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    pass


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjGetAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


def _sys(cmd: int, attr: ctypes.Structure) -> int:
    # The kernel accepts an attr shorter than union bpf_attr and zero-fills the rest.
    if _NR_BPF is None:
        _nr_bpf(_MACHINE)
    rc = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return rc


def obj_get(path: str) -> int:
    """File descriptor of a pinned object; raises FileNotFoundError when it is not pinned."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(p))
    try:
        return _sys(BPF_OBJ_GET, attr)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, "no pinned BPF object", path) from None
        raise


def obj_pin(fd: int, path: str) -> None:
    """Pin a map or program at path (bpffs); FileExistsError when something is pinned there."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(p), bpf_fd=fd)
    try:
        _sys(BPF_OBJ_PIN, attr)
    except BpfError as e:
        if e.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "a BPF object is pinned there", path) from None
        raise


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("numa_node", ctypes.c_uint32),
                ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               name: str = "", inner_map_fd: int = 0) -> int:
    """BPF_MAP_CREATE: a new map's fd (no BTF: lb reads its maps by its own layouts)."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size, max_entries=max_entries,
                          map_flags=flags, inner_map_fd=inner_map_fd,
                          map_name=name.encode()[: BPF_OBJ_NAME_LEN - 1])
    return _sys(BPF_MAP_CREATE, attr)


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", name: str = "", kern_version: int = 0,
              log_size: int = 0) -> int:
    """BPF_PROG_LOAD: the program's fd.  A refusal raises BpfError; with log_size its message
    carries the end of the verifier's log."""
    buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(buf),
                         license=ctypes.addressof(lic), kern_version=kern_version,
                         prog_name=name.encode()[: BPF_OBJ_NAME_LEN - 1],
                         log_level=1 if log else 0, log_size=log_size,
                         log_buf=ctypes.addressof(log) if log else 0)
    try:
        return _sys(BPF_PROG_LOAD, attr)
    except BpfError as e:
        if log is None:
            raise
        tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise BpfError(e.errno, f"{e.strerror}: {' / '.join(tail)}") from None


class ProgInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


def prog_info(fd: int) -> ProgInfo:
    """A loaded program's id, tag (the kernel's hash of its instructions, map fds left out) and name."""
    info = ProgInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _sys(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _sys(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


class _GetByIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd of the loaded program with this id (the caller closes it)."""
    return _sys(BPF_PROG_GET_FD_BY_ID, _GetByIdAttr(id=prog_id))


def map_fd_by_id(map_id: int) -> int:
    """A new fd of the map with this id (the caller closes it)."""
    return _sys(BPF_MAP_GET_FD_BY_ID, _GetByIdAttr(id=map_id))


def prog_map_ids(prog_id: int, most: int = 64) -> list[int]:
    """The ids of the maps the loaded program with this id uses (at most ``most``)."""
    fd = prog_fd_by_id(prog_id)
    try:
        ids = (ctypes.c_uint32 * most)()
        info = ProgInfo(nr_map_ids=most, map_ids=ctypes.addressof(ids))
        _sys(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)))
        return list(ids[:min(info.nr_map_ids, most)])
    finally:
        os.close(fd)


def prog_name(prog_id: int) -> str:
    """The name of the loaded program with this id (bpf_prog_info.name, 16 bytes at offset 64)."""
    fd = prog_fd_by_id(prog_id)
    try:
        buf = ctypes.create_string_buffer(256)
        _sys(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=len(buf), info=ctypes.addressof(buf)))
        return buf.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def possible_cpus() -> int:
    """Number of possible CPUs: the per-CPU value count the kernel uses."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
    try:
        _sys(BPF_MAP_LOOKUP_ELEM, attr)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v), flags=flags)
    _sys(BPF_MAP_UPDATE_ELEM, attr)


def delete(fd: int, key: bytes) -> bool:
    """True when this call removed the entry (False: it was not there)."""
    k = ctypes.create_string_buffer(key, len(key))
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k))
    try:
        _sys(BPF_MAP_DELETE_ELEM, attr)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    nk = ctypes.create_string_buffer(key_size)
    if key is None:
        attr = _MapElemAttr(map_fd=fd, key=0, value=ctypes.addressof(nk))
    else:
        k = ctypes.create_string_buffer(key, len(key))
        attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(nk))
    try:
        _sys(BPF_MAP_GET_NEXT_KEY, attr)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return nk.raw


def items(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value), one syscall pair per entry: the slow path and the oracle."""
    return [kv for part in _chunks_by_key(fd, key_size, value_size, 4096) for kv in part]


BPF_MAP_LOOKUP_BATCH = 24


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64), ("keys", ctypes.c_uint64),
                ("values", ctypes.c_uint64), ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def chunks(fd: int, key_size: int, value_size: int, chunk: int = 4096):
    """The table's (key, value) pairs a chunk at a time (BPF_MAP_LOOKUP_BATCH; one
    GET_NEXT_KEY and lookup per entry where the kernel has no batch for the map): yields lists
    of at most about ``chunk`` pairs, so a walk of a big table never holds more than one chunk.
    A table written meanwhile gives each entry as it was when its bucket was read."""
    if _NR_BPF is None:
        _nr_bpf(_MACHINE)
    cursor_in = ctypes.create_string_buffer(max(8, key_size))
    cursor_out = ctypes.create_string_buffer(max(8, key_size))
    first = True
    while True:
        keys = ctypes.create_string_buffer(chunk * key_size)
        values = ctypes.create_string_buffer(chunk * value_size)
        attr = _BatchAttr(in_batch=0 if first else ctypes.addressof(cursor_in),
                          out_batch=ctypes.addressof(cursor_out), keys=ctypes.addressof(keys),
                          values=ctypes.addressof(values), count=chunk, map_fd=fd)
        rc = _libc.syscall(_NR_BPF, BPF_MAP_LOOKUP_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
        err = ctypes.get_errno() if rc < 0 else 0
        if err == errno.ENOSPC and attr.count == 0:
            chunk *= 2                   # a bucket of more entries than the chunk holds
            continue
        if err in (errno.EINVAL, errno.EOPNOTSUPP, 524) and first:
            yield from _chunks_by_key(fd, key_size, value_size, chunk)
            return
        if err and err != errno.ENOENT:
            raise BpfError(err, f"bpf(BPF_MAP_LOOKUP_BATCH): {os.strerror(err)}")
        n = attr.count
        if n:
            kb, vb = keys.raw[:n * key_size], values.raw[:n * value_size]
            yield [(kb[i * key_size:(i + 1) * key_size], vb[i * value_size:(i + 1) * value_size])
                   for i in range(n)]
        if err == errno.ENOENT:
            return
        ctypes.memmove(cursor_in, cursor_out, len(cursor_out))
        first = False


def _chunks_by_key(fd: int, key_size: int, value_size: int, chunk: int):
    out = []
    key = None
    for _ in range(1 << 27):             # a hash rewritten under the walk could cycle
        key = next_key(fd, key, key_size)
        if key is None:
            break
        value = lookup(fd, key, value_size)
        if value is not None:
            out.append((key, value))
        if len(out) >= chunk:
            yield out
            out = []
    if out:
        yield out


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int = 4096) -> tuple[int, bytes, int]:
    """BPF_PROG_TEST_RUN: (return code, packet out, mean duration ns).  The kernel does not
    reset the packet between repeats, so a rewriting program needs repeat=1 for exact bytes."""
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(out_size)
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=out_size,
                        data_in=ctypes.addressof(din), data_out=ctypes.addressof(dout), repeat=repeat)
    _sys(BPF_PROG_TEST_RUN, attr)
    return attr.retval, dout.raw[: attr.data_size_out], attr.duration
