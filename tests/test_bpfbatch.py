"""The cffi batch module (cext/) against the pure-Python syscalls it replaces: same entries."""
from __future__ import annotations


import pytest

from lb.dataplane import bpfsys
from lb.dataplane import layout as L
from lb.dataplane.maps import BpfMap, have_batch
from packets_util import loaded_dataplane
from lb.dataplane.xdp import Sizes


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("batch", Sizes(16, 64, 16, 20000)) as d:
        yield d


@pytest.fixture(scope="module")
def conns(dp):
    return dp.maps["lb_conns"]


def test_cffi_module_is_built():
    # built by `pip install -e .` (setup.py cffi_modules), never by hand
    assert have_batch()


def test_cffi_module_reads_the_data_planes_structs(dp):
    """bpfbatch.c formats lb_conns and lb_reals entries through bpf/lb_structs.h itself: its
    structs are the maps' (a module built from an older header shows here, as it would to
    `lb list -c`); tests/test_layout.py holds the header and layout.py to the same offsets"""
    from lb import _bpfbatch
    lib = _bpfbatch.lib
    conns, reals = dp.maps["lb_conns"], dp.maps["lb_reals"]
    assert (lib.bb_sizeof_conn_key(), lib.bb_sizeof_conn(), lib.bb_sizeof_real()) == (
        conns.key_size, conns.value_size, reals.value_size) == (L.CONN_KEY.size, L.CONN.size, L.REAL.size)


def _key(i: int) -> bytes:
    return L.CONN_KEY.pack(i.to_bytes(4, "big").ljust(16, b"\0"), bytes(16), b"\0\1", b"\0\2", 6, 4, 0, 0)


def test_dump_equals_pure_python_and_delete_many(conns: BpfMap):
    n = 12345
    for i in range(n):
        conns.set(_key(i), L.CONN.pack(i, i % 7, 0, 900, 1, 1, 0, b"\0\0", bytes(6), bytes(6), bytes(16), b"\0\0", bytes(6)))
    fast = dict(conns.items(batch=True))
    slow = dict(conns.items(batch=False))
    assert len(fast) == n
    assert fast == slow
    assert L.CONN.unpack(fast[_key(77)])[0] == 77
    gone = [_key(i) for i in range(0, n, 2)]
    assert conns.delete_many(gone) == len(gone)
    left = dict(conns.items(batch=True))
    assert len(left) == n - len(gone) and _key(1) in left and _key(0) not in left


def test_pure_python_lookup_missing_key(dp):
    four = dp.maps["lb_conns4"]
    assert bpfsys.lookup(four.fd, L.conn_key4(_key(999999)), four.value_size) is None
    assert bpfsys.delete(four.fd, L.conn_key4(_key(999999))) is False


def _key6(i: int) -> bytes:
    return L.CONN_KEY.pack(b"\x20\x01\0\x02" + bytes(8) + i.to_bytes(4, "big"), b"\x20\x01\0\x02" + bytes(11) + b"\1",
                           b"\0\1", b"\0\2", 6, 6, i & 1, 0)


def test_lb_conns_is_one_table_per_family(dp, conns):
    """lb_conns reads as one table of lb_conn_keys; an IPv4 entry lives in lb_conns4 under its
    16-byte key, an IPv6 one in lb_conns6 under the 40-byte key"""
    four, six = dp.maps["lb_conns4"], dp.maps["lb_conns6"]
    assert (four.key_size, six.key_size) == (L.CONN_KEY4.size, L.CONN_KEY.size) == (16, 40)
    conns.delete_many([k for k, _ in conns.items()])
    val = L.CONN.pack(5, 1, 0, 900, 1, 1, 0, b"\0\0", bytes(6), bytes(6), bytes(16), b"\0\0", bytes(6))
    keys = [_key(i) for i in range(300)] + [_key6(i) for i in range(200)]
    conns.set_many(keys, [val] * len(keys))
    assert len(four.items()) == 300 and len(six.items()) == 200
    assert four.get(L.CONN_KEY4.pack(bytes((0, 0, 0, 7)), bytes(4), b"\0\1", b"\0\2", 6, 0, b"\0\0")) == val
    assert six.get(_key6(7)) == val and conns.get(_key6(7)) == val and conns.get(_key(7)) == val
    fast, slow = dict(conns.items(batch=True)), dict(conns.items(batch=False))
    assert fast == slow and set(fast) == set(keys)
    assert conns.get_many_raw([_key(3), _key6(4), _key(999)]) == [val, val, None]
    assert conns.delete(_key(3)) and conns.delete(_key6(4)) and not conns.delete(_key6(4))
    left = [k for k in keys if k not in (_key(3), _key6(4))]
    assert conns.delete_many(left) == len(left) and conns.items() == []


def test_dump_of_a_table_holding_more_than_the_buffer_returns_what_fits():
    """A dump walks a busy hash bucket by bucket: entries the data path adds behind the walk
    while it evicts from the buckets already read make more than max_entries come by.  The
    dump then stops with its buffer full -- whole buckets, no entry twice -- instead of failing
    with ENOSPC (which made the sweep, `lb list -c` and an adoption's filter rebuild fail on a
    full, busy connection table).  Here a buffer smaller than the table stands for that."""
    import os

    from lb import _bpfbatch
    ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, 4, 8, 64)
    try:
        entries = {i.to_bytes(4, "little"): (i * 3).to_bytes(8, "little") for i in range(64)}
        for k, v in entries.items():
            bpfsys.update(fd, k, v)
        for cap in range(1, 64):
            keys, values = ffi.new("char[]", cap * 4), ffi.new("char[]", cap * 8)
            n = lib.bb_dump(fd, 4, 8, keys, values, cap, 8192)
            assert 0 <= n <= cap, (cap, os.strerror(-n) if n < 0 else n)
            kb, vb = ffi.buffer(keys, n * 4)[:], ffi.buffer(values, n * 8)[:]
            got = {kb[i * 4:i * 4 + 4]: vb[i * 8:i * 8 + 8] for i in range(n)}
            assert len(got) == n and all(entries[k] == v for k, v in got.items())
    finally:
        os.close(fd)


def test_test_run_loop_refuses_no_packets():
    """bb_test_run_loop (the bench's and lb/lab/flood.py's loop) asked to run over 0 packets
    took i % 0: SIGFPE, the whole Python process gone without a word.  Now -EINVAL, before any
    run (no program needed: the fd is never used).  In a child process, so that a module built
    without the fix fails this test rather than killing pytest."""
    import errno
    import os
    import subprocess
    import sys

    code = ("from lb import _bpfbatch as b\n"
            "rc = b.ffi.new('unsigned *')\n"
            "print(b.lib.bb_test_run_loop(-1, b.ffi.NULL, 64, 0, 5, rc),"
            " b.lib.bb_test_run_loop(-1, b.ffi.NULL, 0, 3, 5, rc), rc[0])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert p.stdout.split() == [str(-errno.EINVAL), str(-errno.EINVAL), "0"]


@pytest.fixture
def small_hash():
    """A plain hash of u32 keys 0..9 (8-byte values), its own map: no data plane needed"""
    import os
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, 4, 8, 64)
    m = BpfMap(fd, "h7_small")
    try:
        for i in range(10):
            m.set(i.to_bytes(4, "little"), bytes(8))
        yield m
    finally:
        os.close(fd)


def _left(m: BpfMap) -> list[int]:
    return sorted(int.from_bytes(k, "little") for k, _ in m.items(batch=False))


def test_delete_many_counts_only_what_it_deleted(small_hash):
    """bb_delete skips a key that is not there (gone under the walk) and went on; it counted
    the skipped key as deleted, so the C path said 3 where the pure-Python path (one delete
    each, False for an absent key) says 2"""
    k = [i.to_bytes(4, "little") for i in (1, 50, 2)]       # 50 is not in the map
    assert small_hash.delete_many(k) == 2
    assert _left(small_hash) == [0, 3, 4, 5, 6, 7, 8, 9]


def test_delete_many_refuses_keys_of_another_size(small_hash):
    """delete_many handed the joined keys and their number to C, which had the kernel read
    key_size bytes per key: 2-byte keys for a 4-byte-key map made it read past the buffer and
    delete whatever those bytes named (here key 0, besides key 5); an 8-byte key deleted its
    first half's key.  Now a ValueError, as set_many and get_many_raw give, nothing deleted."""
    for keys in ([b"\x05\0", b"\0\0"], [(3).to_bytes(4, "little") + (4).to_bytes(4, "little")]):
        with pytest.raises(ValueError, match="keys of 4 bytes"):
            small_hash.delete_many(keys)
    assert _left(small_hash) == list(range(10))


def test_est_bitmap_refuses_keys_and_bitmaps_c_would_overrun():
    """est_bitmap gave C the joined keys, their number and the words: keys shorter than an
    lb_conn_key made it hash bytes past the buffer (the Python path's struct.unpack refuses
    them), a bitmap smaller than 1 << bits made it set bits past the array.  Now ValueError."""
    from array import array

    from lb.dataplane.conntable import est_bitmap
    key = L.CONN_KEY.pack(bytes(16), bytes(16), b"\0\1", b"\0\2", 6, 6, 0, 0)
    bits = 10
    want = array("Q", bytes((1 << bits) // 8))
    b = L.est_filter_bit(key, bits)
    want[b >> 6] |= 1 << (b & 63)
    assert est_bitmap([key] * 4, bits, array("Q", bytes((1 << bits) // 8))) == want
    with pytest.raises(ValueError, match="40 bytes"):
        est_bitmap([key[:16]] * 4, bits, array("Q", bytes((1 << bits) // 8)))
    with pytest.raises(ValueError, match="bitmap"):
        est_bitmap([key] * 4, bits, array("Q", bytes(8)))
