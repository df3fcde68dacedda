"""Pinned BPF maps of one lb instance, opened by path: used by the XDP data plane and by
`lb list` (which needs no daemon).  Batch dumps go through the cffi module lb._bpfbatch when it
is built, else through the pure-Python syscalls in bpfsys."""
from __future__ import annotations

import errno
import mmap
import os
import stat

from . import bpfsys
from . import layout as _L

try:
    from lb import _bpfbatch  # built by the package install (cext/build_bpfbatch.py)
except ImportError:  # pragma: no cover - exercised only where the build is missing
    _bpfbatch = None

_new_raw = _bpfbatch.ffi.new_allocator(should_clear_after_alloc=False) if _bpfbatch else None

PIN_ROOT = "/sys/fs/bpf/lb"

MAP_NAMES = ("lb_services", "lb_svc", "lb_sched_state", "lb_svc_dests", "lb_reals",
             "lb_real_conns", "lb_real_swept", "lb_tcp_fsm", "lb_timeouts",
             "lb_svc_stats", "lb_real_stats", "lb_counters", "lb_progs", "lb_scratch", "lb_persist",
             "lb_svc_rates", "lb_real_rates", "lb_conns_embryo", "lb_persist_embryo", "lb_ct_events")
# maps newer than some running instances: opened when present, not required (`lb list` of an
# instance started before they existed shows zero rates rather than failing)
OPTIONAL_MAPS = ("lb_svc_rates", "lb_real_rates", "lb_conns_embryo", "lb_persist_embryo", "lb_ct_events")


def pin_dir(instance: str, root: str | None = None) -> str:
    return os.path.join(PIN_ROOT if root is None else root, instance)


class PinAccessError(PermissionError):
    """The pinned maps cannot be read by this user (/sys/fs/bpf is root's, 0700; the maps need
    CAP_BPF or root): the message says so."""

    def __init__(self, where: str):
        super().__init__(f"cannot read lb's pinned maps in {where}: permission denied (run as root)")


class MapError(Exception):
    """Pinned maps this lb cannot read as it reads its own: another lb version's, or entries
    that name what is not there.  The message names the map and what differs."""


class LayoutError(MapError):
    """A pinned map's key or value size is not the one this lb reads."""


def is_pinned(instance: str, root: str | None = None) -> bool:
    """Whether the instance has a pin directory; PinAccessError when this user cannot tell."""
    path = pin_dir(instance, root)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        raise PinAccessError(os.path.dirname(path)) from None
    return stat.S_ISDIR(st.st_mode)


def expected_layout(name: str) -> tuple[int, int | None, int | None] | None:
    """(key size, value size or None, value size's divisor or None) this lb reads a map of that
    name with (layout.MAPS, LIST_MAPS: a list map's values are whole entries); None for a map
    it does not read."""
    if name in _L.MAPS:
        key, value = _L.MAPS[name]
        return key.size, value.size, None
    if name in _L.LIST_MAPS:
        return _L.U32.size, None, _L.LIST_MAPS[name].size
    return None


def check_layout(m, where: str) -> None:
    """LayoutError when map ``m`` (a BpfMap; a ConnTables, each of its two) has other key or
    value sizes than this lb reads its name with; ``where`` is its pin directory."""
    if isinstance(m, ConnTables):
        for part, name in ((m.v4, "lb_conns4"), (m.v6, "lb_conns6")):
            _check_sizes(part, name, where)
    else:
        _check_sizes(m, m.name, where)


def _check_sizes(m, name: str, where: str) -> None:
    want = expected_layout(name)
    if want is None:
        return
    key, value, per = want
    differ = []
    if m.key_size != key:
        differ.append(f"keys of {m.key_size} bytes, not {key}")
    if value is not None and m.value_size != value:
        differ.append(f"values of {m.value_size} bytes, not {value}")
    if per is not None and (m.value_size == 0 or m.value_size % per):
        differ.append(f"values of {m.value_size} bytes, not a multiple of {per}")
    if differ:
        raise LayoutError(f"{os.path.join(where, name)}: {' and '.join(differ)} as this lb reads it: the maps "
                          f"were pinned by another lb version (list them with that version's lb, or restart "
                          f"the instance with this one)")


def have_batch() -> bool:
    return _bpfbatch is not None


# errnos of a kernel (or map type) without BPF_MAP_UPDATE_BATCH: EINVAL (before 5.6), EOPNOTSUPP,
# and the kernel-internal ENOTSUPP (524) that a map type without the op returns
_BATCH_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, 524}


def _update_batch(fd: int, key_size: int, value_size: int, keys: bytes, values: bytes, n: int) -> int:
    """bb_update: n (key, value) pairs in order, BPF_MAP_UPDATE_BATCH; the count or -errno."""
    ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
    return lib.bb_update(fd, key_size, value_size, ffi.from_buffer(keys), ffi.from_buffer(values), n)


class BpfMap:
    """One map by fd.  Per-CPU maps read as a list of per-CPU values."""

    def __init__(self, fd: int, name: str = "", owned: bool = True):
        self.fd = fd
        self.name = name
        self._owned = owned
        info = bpfsys.map_info(fd)
        self.type = info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.percpu = info.type in bpfsys.PERCPU_TYPES
        self.ncpus = bpfsys.possible_cpus() if self.percpu else 1
        # the kernel rounds each per-CPU value up to 8 bytes
        self._slot = (self.value_size + 7) & ~7 if self.percpu else self.value_size
        self.batch_update = True    # False once the kernel refused BPF_MAP_UPDATE_BATCH here

    @property
    def slot(self) -> int:
        """The bytes of one CPU's value in get_raw's bytes of a per-CPU map (the value padded
        to 8); the value's size otherwise."""
        return self._slot

    @classmethod
    def open_pinned(cls, path: str) -> "BpfMap":
        fd = bpfsys.obj_get(path)
        try:
            return cls(fd, os.path.basename(path))
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # single entries
    def get(self, key: bytes) -> bytes | None:
        raw = bpfsys.lookup(self.fd, key, self._slot * self.ncpus)
        if raw is None or not self.percpu:
            return raw
        return raw[: self.value_size]

    def get_percpu(self, key: bytes) -> list[bytes]:
        raw = bpfsys.lookup(self.fd, key, self._slot * self.ncpus)
        if raw is None:
            return []
        return [raw[i * self._slot: i * self._slot + self.value_size] for i in range(self.ncpus)]

    def get_raw(self, key: bytes) -> bytes | None:
        """The entry as the kernel holds it (a per-CPU map: every CPU's value, padded), for
        set_raw to write back exactly."""
        return bpfsys.lookup(self.fd, key, self._slot * self.ncpus)

    def set_raw(self, key: bytes, raw: bytes) -> None:
        bpfsys.update(self.fd, key, raw)

    def get_many_raw(self, keys: list[bytes]) -> list[bytes | None]:
        """get_raw of every key (None: absent), in one C loop where lb._bpfbatch is built."""
        if _bpfbatch is None or len(keys) < 4:
            return [self.get_raw(k) for k in keys]
        n, vsize = len(keys), self._slot * self.ncpus
        values, by_index, found = self.values_raw(b"".join(keys), n)
        if by_index:
            cap = self.max_entries
            vb = _bpfbatch.ffi.buffer(values, cap * vsize)[:]
            idx = [int.from_bytes(k, "little") for k in keys]
            return [vb[i * vsize:i * vsize + vsize] if i < cap else None for i in idx]
        vb = _bpfbatch.ffi.buffer(values, n * vsize)[:]
        fb = _bpfbatch.ffi.buffer(found, n)[:]
        return [vb[i * vsize:i * vsize + vsize] if fb[i] else None for i in range(n)]

    def values_raw(self, keys: bytes, n: int) -> tuple:
        """The raw values (per-CPU ones: ncpus slots of ``slot`` bytes) of n keys given back to
        back, read in C (lb._bpfbatch must be built): (values, True, None) -- the whole array,
        max_entries values in index order -- where the keys are a good part of an array
        (reading all of it takes a few syscalls, not one per key), else (values, False, found),
        the k-th key's value k-th, found[k] 0 where it is absent."""
        ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
        vsize = self._slot * self.ncpus
        if len(keys) != n * self.key_size:
            raise ValueError(f"{self.name}: keys of {self.key_size} bytes expected")
        if self.type in (bpfsys.BPF_MAP_TYPE_ARRAY, bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY) and 4 * n >= self.max_entries:
            cap = self.max_entries
            kbuf, vbuf = _new_raw("char[]", cap * 4), _new_raw("char[]", cap * vsize)
            if lib.bb_dump(self.fd, 4, vsize, kbuf, vbuf, cap, 8192) == cap:
                return vbuf, True, None
        values = _new_raw("char[]", max(n, 1) * vsize)
        found = _new_raw("unsigned char[]", max(n, 1))
        rc = lib.bb_lookup(self.fd, self.key_size, vsize, ffi.from_buffer(keys), values, found, n)
        if rc < 0:
            raise bpfsys.BpfError(-rc, os.strerror(-rc))
        return values, False, found

    def set(self, key: bytes, value: bytes, flags: int = bpfsys.BPF_ANY) -> None:
        if self.percpu:
            value = b"".join(value.ljust(self._slot, b"\0") for _ in range(self.ncpus))
        bpfsys.update(self.fd, key, value, flags)

    def delete(self, key: bytes) -> bool:
        return bpfsys.delete(self.fd, key)

    def set_many(self, keys: list[bytes], values: list[bytes], batch: bool = True) -> None:
        """keys[i] = values[i] for every i, in order (a key given twice ends with its last
        value): BPF_MAP_UPDATE_BATCH through lb._bpfbatch when it is built, `batch` is true and
        the kernel takes it for this map; else one BPF_MAP_UPDATE_ELEM per entry.  A batch the
        kernel refuses part-way is written again entry by entry from the start (the same values
        in the same order: the end state is the same), so a real error (a full hash) raises
        from the single write that meets it, as it would have without batching."""
        n = len(keys)
        if n != len(values):
            raise ValueError(f"{self.name}: {n} keys but {len(values)} values")
        if not n:
            return
        if self.percpu:
            values = [b"".join(v.ljust(self._slot, b"\0") for _ in range(self.ncpus)) for v in values]
        if batch and self.batch_update and _bpfbatch is not None and n > 1:
            vsize = self._slot * self.ncpus if self.percpu else self.value_size
            kb, vb = b"".join(keys), b"".join(values)
            if len(kb) != n * self.key_size or len(vb) != n * vsize:
                raise ValueError(f"{self.name}: keys of {self.key_size} and values of {vsize} bytes expected")
            rc = _update_batch(self.fd, self.key_size, vsize, kb, vb, n)
            if rc == n:
                return
            if rc < 0 and -rc in _BATCH_UNSUPPORTED:
                self.batch_update = False
        update, fd = bpfsys.update, self.fd
        for k, v in zip(keys, values):
            update(fd, k, v)

    # whole tables
    def items(self, batch: bool | None = None) -> list[tuple[bytes, bytes]]:
        """Every (key, value).  batch=None: the cffi batch path when available."""
        if batch is None:
            batch = _bpfbatch is not None and not self.percpu
        if not batch:
            return bpfsys.items(self.fd, self.key_size, self._slot * self.ncpus if self.percpu else self.value_size)
        keys, values, n = self.dump()
        ffi = _bpfbatch.ffi
        kb = ffi.buffer(keys, n * self.key_size)[:]
        vb = ffi.buffer(values, n * self.value_size)[:]
        ks, vs = self.key_size, self.value_size
        return [(kb[i * ks:(i + 1) * ks], vb[i * vs:(i + 1) * vs]) for i in range(n)]

    def chunks(self, chunk: int = 4096):
        """The entries a chunk (a list of (key, value)) at a time, never the whole table at once
        (bpfsys.chunks; not per-CPU maps)"""
        if self.percpu:
            raise RuntimeError(f"{self.name}: chunks of a per-CPU map")
        return bpfsys.chunks(self.fd, self.key_size, self.value_size, chunk)

    def dump(self):
        """(keys, values, n): the whole table in two C buffers (cffi path only, not per-CPU maps).
        For readers that decode in C (reader.connection_lines) and never need Python objects
        per entry."""
        if _bpfbatch is None or self.percpu:
            raise RuntimeError(f"{self.name}: batch dump needs lb._bpfbatch and a plain map")
        lib = _bpfbatch.lib
        cap = self.max_entries
        # not zeroed: the kernel writes the first n entries, nothing reads past them (zeroing
        # 200 MB for a 2M-entry table costs more than the dump)
        keys = _new_raw("char[]", cap * self.key_size)
        values = _new_raw("char[]", cap * self.value_size)
        n = lib.bb_dump(self.fd, self.key_size, self.value_size, keys, values, cap, 8192)
        if n < 0:
            raise bpfsys.BpfError(-n, os.strerror(-n))
        return keys, values, n

    def delete_many(self, keys: list[bytes]) -> int:
        """Delete every key; the number that were there (absent keys are skipped)."""
        if not keys:
            return 0
        if _bpfbatch is None:
            return sum(1 for k in keys if self.delete(k))
        ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
        kb = b"".join(keys)
        if len(kb) != len(keys) * self.key_size:   # (C reads key_size bytes per key)
            raise ValueError(f"{self.name}: keys of {self.key_size} bytes expected")
        n = lib.bb_delete(self.fd, self.key_size, ffi.from_buffer(kb), len(keys))
        if n < 0:
            raise bpfsys.BpfError(-n, os.strerror(-n))
        return n


class ConnTables:
    """lb_conns, the established connections: the programs keep them in two tables, lb_conns4
    (IPv4, a 16-byte key: bpf/lb_structs.h lb_conn_key4) and lb_conns6 (lb_conn_key), seen here
    as one table keyed by lb_conn_key (40 bytes, as every other connection table): reads give
    both tables' entries, writes and deletes go to the key's family's table."""

    name = "lb_conns"
    percpu = False

    def __init__(self, v4: BpfMap, v6: BpfMap):
        self.v4, self.v6 = v4, v6
        self.type = v6.type
        self.key_size, self.value_size = v6.key_size, v6.value_size
        self.max_entries = v4.max_entries + v6.max_entries

    @staticmethod
    def _is4(key: bytes) -> bool:
        return key[_L.CONN_KEY_FAMILY] == _L.AF_INET

    def parts(self, items: list[tuple[bytes, bytes]]) -> list[tuple[str, list[tuple[bytes, bytes]], BpfMap]]:
        """(table name, its entries, its map) of (lb_conn_key, value) pairs: each family's, the
        IPv4 keys made lb_conns4's (a resize trims and counts each table on its own)"""
        return [("lb_conns4", [(_L.conn_key4(k), v) for k, v in items if self._is4(k)], self.v4),
                ("lb_conns6", [(k, v) for k, v in items if not self._is4(k)], self.v6)]

    def _at(self, key: bytes) -> tuple[BpfMap, bytes]:
        if len(key) != self.key_size:
            raise ValueError(f"lb_conns: keys of {self.key_size} bytes expected")
        return (self.v4, _L.conn_key4(key)) if self._is4(key) else (self.v6, key)

    def close(self) -> None:
        self.v4.close()
        self.v6.close()

    def get(self, key: bytes) -> bytes | None:
        m, k = self._at(key)
        return m.get(k)

    get_raw = get

    def set(self, key: bytes, value: bytes, flags: int = bpfsys.BPF_ANY) -> None:
        m, k = self._at(key)
        m.set(k, value, flags)

    set_raw = set

    def delete(self, key: bytes) -> bool:
        m, k = self._at(key)
        return m.delete(k)

    def _split(self, keys: list[bytes]) -> tuple[list[int], list[int]]:
        for k in keys:
            if len(k) != self.key_size:
                raise ValueError(f"lb_conns: keys of {self.key_size} bytes expected")
        four = [i for i, k in enumerate(keys) if self._is4(k)]
        six = [i for i, k in enumerate(keys) if not self._is4(k)]
        return four, six

    def get_many_raw(self, keys: list[bytes]) -> list[bytes | None]:
        four, six = self._split(keys)
        out: list[bytes | None] = [None] * len(keys)
        for m, idx, conv in ((self.v4, four, _L.conn_key4), (self.v6, six, None)):
            if idx:
                got = m.get_many_raw([conv(keys[i]) if conv else keys[i] for i in idx])
                for i, v in zip(idx, got):
                    out[i] = v
        return out

    def set_many(self, keys: list[bytes], values: list[bytes], batch: bool = True) -> None:
        if len(keys) != len(values):
            raise ValueError(f"lb_conns: {len(keys)} keys but {len(values)} values")
        self._split(keys)                    # (checks the keys' size)
        for _, pairs, m in self.parts(list(zip(keys, values))):
            m.set_many([k for k, _ in pairs], [v for _, v in pairs], batch)

    def delete_many(self, keys: list[bytes]) -> int:
        four, six = self._split(keys)
        return (self.v4.delete_many([_L.conn_key4(keys[i]) for i in four])
                + self.v6.delete_many([keys[i] for i in six]))

    def items(self, batch: bool | None = None) -> list[tuple[bytes, bytes]]:
        if batch is None:
            batch = _bpfbatch is not None
        if not batch:
            return [(_L.conn_key_of4(k), v) for k, v in self.v4.items(False)] + self.v6.items(False)
        keys, values, n = self.dump()
        ffi = _bpfbatch.ffi
        ks, vs = self.key_size, self.value_size
        kb, vb = ffi.buffer(keys, n * ks)[:], ffi.buffer(values, n * vs)[:]
        return [(kb[i * ks:(i + 1) * ks], vb[i * vs:(i + 1) * vs]) for i in range(n)]

    def dump(self):
        """(keys, values, n) of both tables in two C buffers, lb_conns4's keys made lb_conn_keys
        (in C: cext/bpfbatch.c bb_widen_conn_keys4), as BpfMap.dump gives one table's"""
        if _bpfbatch is None:
            raise RuntimeError("lb_conns: batch dump needs lb._bpfbatch")
        ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
        k4, v4, n4 = self.v4.dump()
        k6, v6, n6 = self.v6.dump()
        ks, vs, n = self.key_size, self.value_size, n4 + n6
        keys = _new_raw("char[]", max(n, 1) * ks)
        values = _new_raw("char[]", max(n, 1) * vs)
        lib.bb_widen_conn_keys4(k4, keys, n4)
        ffi.memmove(keys + n4 * ks, k6, n6 * ks)
        ffi.memmove(values, v4, n4 * vs)
        ffi.memmove(values + n4 * vs, v6, n6 * vs)
        return keys, values, n


def array_stride(m: BpfMap) -> int:
    """The distance between an array map's values in its memory (the kernel rounds to 8)"""
    return (m.value_size + 7) & ~7


def map_shared(m: BpfMap) -> tuple[mmap.mmap, memoryview]:
    """An array map created with BPF_F_MMAPABLE, mapped shared: (the mapping, a view of its
    max_entries values, array_stride apart).  The mapping holds the map; release the view, then
    close it."""
    length = m.max_entries * array_stride(m)
    mp = mmap.mmap(m.fd, (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE,
                   mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return mp, memoryview(mp)[:length]


class ArrayField:
    """A slice of every value of an array map (BPF_F_MMAPABLE) -- bytes [offset, offset + size)
    of each entry -- as a map of its own, read and written in place through a shared mapping:
    the control plane's part of an entry whose other fields BPF changes atomically, which a
    whole-value update would overwrite.  The BpfMap calls MapTxn and UndoLog make (u32 keys);
    its entries cannot be deleted.  Stores are plain: BPF only reads these bytes."""

    percpu = False
    key_size = 4

    def __init__(self, m: BpfMap, name: str, offset: int, size: int):
        if m.type != bpfsys.BPF_MAP_TYPE_ARRAY or offset + size > m.value_size:
            raise ValueError(f"{name}: bytes {offset}..{offset + size} of {m.name}'s values")
        self.name = name
        self.value_size, self.max_entries = size, m.max_entries
        self._stride, self._offset = array_stride(m), offset
        self._mmap, self._view = map_shared(m)

    def _at(self, key: bytes) -> int | None:
        i = int.from_bytes(key, "little")
        return i * self._stride + self._offset if len(key) == 4 and i < self.max_entries else None

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
            self._mmap.close()

    def get(self, key: bytes) -> bytes | None:
        at = self._at(key)
        return None if at is None else bytes(self._view[at:at + self.value_size])

    get_raw = get

    def get_many_raw(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.get(k) for k in keys]

    def set(self, key: bytes, value: bytes, flags: int = bpfsys.BPF_ANY) -> None:
        at = self._at(key)
        if at is None:
            raise bpfsys.BpfError(errno.E2BIG, f"{self.name}: no entry {key.hex()}")
        if len(value) != self.value_size:
            raise ValueError(f"{self.name}: values of {self.value_size} bytes expected")
        self._view[at:at + self.value_size] = value

    set_raw = set

    def set_many(self, keys: list[bytes], values: list[bytes], batch: bool = True) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{self.name}: {len(keys)} keys but {len(values)} values")
        for k, v in zip(keys, values):
            self.set(k, v)

    def delete(self, key: bytes) -> bool:
        raise bpfsys.BpfError(errno.EINVAL, f"{self.name}: an array's entries cannot be deleted")


class PinnedMaps:
    """All maps of an instance, opened from their pins (read-mostly users such as `lb list`).
    FileNotFoundError when the instance has none (or lacks some), PinAccessError when this user
    may not open them."""

    def __init__(self, instance: str, root: str | None = None):
        self.dir = pin_dir(instance, root)
        if not is_pinned(instance, root):
            raise FileNotFoundError(f"no lb instance {instance!r}: {self.dir} does not exist")
        self.maps: dict[str, BpfMap] = {}
        try:
            self._open_all(instance)
        except BaseException:
            self.close()
            raise

    def _open_all(self, instance: str) -> None:
        for name in MAP_NAMES:
            path = os.path.join(self.dir, name)
            if os.path.exists(path) and name != "lb_progs":
                self.maps[name] = self.open(name)
        # the established connections: lb_conns4 and lb_conns6, or the one lb_conns of an instance
        # an older lb started (both families in it)
        four, six, one = (os.path.join(self.dir, n) for n in ("lb_conns4", "lb_conns6", "lb_conns"))
        if os.path.exists(four) and os.path.exists(six):
            v4 = self.open("lb_conns4")
            try:
                v6 = self.open("lb_conns6")
            except BaseException:
                v4.close()
                raise
            self.maps["lb_conns"] = ConnTables(v4, v6)
        elif os.path.exists(one):
            self.maps["lb_conns"] = self.open("lb_conns")
        missing = [n for n in MAP_NAMES + ("lb_conns",)
                   if n not in self.maps and n != "lb_progs" and n not in OPTIONAL_MAPS]
        if missing:
            raise FileNotFoundError(f"lb instance {instance!r} at {self.dir} lacks maps: {', '.join(missing)}")

    def open(self, name: str) -> BpfMap:
        """The pinned map ``name`` of this instance, opened (not kept: the caller closes it);
        PinAccessError when this user may not."""
        try:
            return BpfMap.open_pinned(os.path.join(self.dir, name))
        except PermissionError:
            raise PinAccessError(self.dir) from None
        except bpfsys.BpfError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                raise PinAccessError(self.dir) from None
            raise

    def check_layout(self) -> None:
        """LayoutError when a map opened has other key or value sizes than this lb reads."""
        for m in self.maps.values():
            check_layout(m, self.dir)

    def __getitem__(self, name: str) -> BpfMap:
        return self.maps[name]

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def instances(root: str | None = None) -> list[str]:
    """The instances with a pin directory; PinAccessError when this user cannot list them."""
    root = PIN_ROOT if root is None else root
    try:
        return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError:
        raise PinAccessError(root) from None
