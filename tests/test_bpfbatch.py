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


def test_pure_python_lookup_missing_key(conns: BpfMap):
    assert bpfsys.lookup(conns.fd, _key(999999), conns.value_size) is None
    assert bpfsys.delete(conns.fd, _key(999999)) is False
