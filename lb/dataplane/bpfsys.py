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

_NR_BPF = 321  # x86_64

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TEST_RUN = 10

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


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _sys(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


class _GetByIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def prog_name(prog_id: int) -> str:
    """The name of the loaded program with this id (bpf_prog_info.name, 16 bytes at offset 64)."""
    fd = _sys(BPF_PROG_GET_FD_BY_ID, _GetByIdAttr(id=prog_id))
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
    out = []
    key = None
    seen = 0
    while True:
        key = next_key(fd, key, key_size)
        if key is None:
            break
        value = lookup(fd, key, value_size)
        if value is not None:
            out.append((key, value))
        seen += 1
        if seen > 1 << 27:  # a hash being rewritten under us could cycle; never loop forever
            break
    return out


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
